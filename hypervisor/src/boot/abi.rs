//! The guest ABI: the state a guest starts in, the boot-info page, and the
//! hypercalls. One definition shared by the hypervisor and the guest programs
//! (the `guest` crate includes this file with `#[path]`), so the two cannot
//! drift apart. Plain data only: no dependencies.
//!
//! # Entry state
//! Each vCPU enters at the guest ELF's entry point in 64-bit mode, with:
//! - paging on: the first 4 GiB of guest-physical memory identity-mapped with
//!   2 MiB pages (tables built by the hypervisor in guest memory),
//! - interrupts off and no IDT: a guest exception becomes a triple fault, which
//!   the hypervisor contains,
//! - `RSP` = the top of that vCPU's own 16 KiB stack, minus 8 (as after a call),
//! - `RDI` = the guest-physical address of the [`BootInfo`] page.
//!
//! # Hypercalls
//! `VMCALL` with the number in `RAX` and arguments in `RDI`, `RSI`, `RDX`. The
//! result comes back in `RAX`: [`HC_OK`] or [`HC_ERROR`].

/// `BootInfo::magic`.
pub const BOOT_INFO_MAGIC: u64 = u64::from_le_bytes(*b"HVBOOTI1");

/// The CPUID leaf 0x4000_0000 signature (EBX, ECX, EDX).
pub const CPUID_SIGNATURE: &[u8; 12] = b"RustHyperVMX";

/// Write `RSI` bytes at guest-physical `RDI` to the console.
pub const HC_CONSOLE_WRITE: u64 = 1;
/// Report a result: `RDI` = 0 for pass, anything else is a failure code;
/// `RSI` = a value (a checksum, a count) that goes into the run summary.
pub const HC_REPORT: u64 = 2;
/// Stop this vCPU. `RDI` = exit status (0 = success).
pub const HC_SHUTDOWN: u64 = 3;
/// Dirty-log workload: this vCPU finished iteration `RDI`. Returns when the
/// controller starts the next iteration: `RAX` = 0 to go on, 1 to stop.
pub const HC_ITERATION_DONE: u64 = 4;

pub const HC_OK: u64 = 0;
pub const HC_ERROR: u64 = u64::MAX;

/// Stack size of each vCPU.
pub const STACK_SIZE: u64 = 16 * 1024;

/// The page at `RDI` on entry. Read-only for the guest by convention.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct BootInfo {
    pub magic: u64,
    /// Guest RAM is `[0, mem_bytes)` guest-physical.
    pub mem_bytes: u64,
    /// `[free_start, mem_bytes)` is free for the guest: nothing of the image,
    /// page tables, stacks or this page lies there.
    pub free_start: u64,
    pub vcpu_id: u32,
    pub vcpu_count: u32,
    /// Dirty-log workload: this vCPU's region `[region_start, region_start + region_bytes)`.
    pub region_start: u64,
    pub region_bytes: u64,
    /// Dirty-log workload: iterations to run (0 = until told to stop).
    pub iterations: u32,
    pub _reserved: u32,
}
