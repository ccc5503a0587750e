//! One definition of every limit a run configuration is checked against.
//!
//! xtask depends on this library and checks each option against these
//! values up front, so that an option the hypervisor cannot honour is
//! refused before anything is built or booted.

use crate::boot::native;
pub use crate::mm::memslot::{CacheMode, MAX_SLOTS};

/// Cores the hypervisor drives (per-core tables are this long).
pub const MAX_CPUS: usize = 64;

// Every vCPU has a reader slot in the live memslots.
const _: () = assert!(crate::mm::live::MAX_READERS >= MAX_CPUS);

/// vCPUs a VM can have: one BootInfo per vCPU must fit the guest layout,
/// and a dirty-log run needs one core more than it has vCPUs (the
/// controller).
pub const MAX_VCPUS: u32 = {
    let layout = native::MAX_VCPUS;
    let cores = MAX_CPUS as u32 - 1;
    if layout < cores {
        layout
    } else {
        cores
    }
};

const _: () = assert!(MAX_VCPUS <= native::MAX_VCPUS && (MAX_VCPUS as usize) < MAX_CPUS);

/// Size of a guest page (and of a host frame): 4 KiB.
pub use crate::x86::PAGE_SIZE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpus_fit_layout_and_cores() {
        assert!(crate::boot::native::Layout::new(64 << 20, 0x10_0000, MAX_VCPUS).is_ok());
        assert!(crate::boot::native::Layout::new(64 << 20, 0x10_0000, MAX_VCPUS + 1).is_err());
    }
}
