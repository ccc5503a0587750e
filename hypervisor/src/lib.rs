//! The hypervisor library.
//!
//! Pure modules (memslot, ept, dirty, payload, and the decoding parts of vmx)
//! know nothing of the CPU they run on: they build and test on the host. Arch
//! code (`asm!`, MSRs, VMCS access) only builds for `x86_64-unknown-none`.
#![cfg_attr(not(test), no_std)]
#![cfg_attr(target_os = "none", feature(abi_x86_interrupt))]

extern crate alloc;

pub mod abi;
pub mod config;
pub mod dirty;
pub mod ept;
pub mod frames;
pub mod guest_image;
pub mod guest_layout;
pub mod guest_state;
pub mod limits;
pub mod memslot;
pub mod payload;
pub mod report;
pub mod vmx;

// Arch code: only for the kernel target.
#[cfg(target_os = "none")]
pub mod arch;
#[cfg(target_os = "none")]
pub mod console;
#[cfg(target_os = "none")]
pub mod dirtylog;
#[cfg(target_os = "none")]
pub mod exits;
#[cfg(target_os = "none")]
pub mod heap;
#[cfg(target_os = "none")]
pub mod mem;
#[cfg(target_os = "none")]
pub mod smp;
#[cfg(target_os = "none")]
pub mod summary;
#[cfg(target_os = "none")]
pub mod vcpu;
#[cfg(target_os = "none")]
pub mod vm;
