//! The hypervisor library.
//!
//! The folders show the architecture (see the README's layout section).
//! Pure modules build and test on the host; arch code (`asm!`, MSRs, VMCS
//! access) only builds for `x86_64-unknown-none` and sits in `arch`, `console`,
//! `vmx::hw`, `mm::host` and the run loop.
#![cfg_attr(not(test), no_std)]
#![cfg_attr(target_os = "none", feature(abi_x86_interrupt))]

extern crate alloc;

pub mod boot;
pub mod config;
pub mod decode;
pub mod devices;
pub mod exits;
pub mod limits;
pub mod machine;
pub mod mm;
pub mod report;
pub mod vcpu;
pub mod vm;
pub mod vmx;
pub mod x86;

// Kernel-only: they touch the CPU or depend on what does.
#[cfg(target_os = "none")]
pub mod arch;
#[cfg(target_os = "none")]
pub mod console;
#[cfg(target_os = "none")]
pub mod run;
#[cfg(target_os = "none")]
pub mod workload;
