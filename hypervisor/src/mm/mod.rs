//! Memory: guest-physical memory in memslots, the EPT built from them, dirty
//! bitmaps, and host frames. Everything here but `host` and `heap` is pure and
//! tests on the host.

pub mod dirty;
pub mod ept;
pub mod fault;
pub mod frames;
pub mod live;
pub mod memslot;
#[cfg(test)]
mod model;

#[cfg(target_os = "none")]
pub mod heap;
#[cfg(target_os = "none")]
pub mod host;

pub mod guest_mem;
pub mod walk;

/// Host physical memory as a VM uses it: frames for guest RAM, VMX bitmaps
/// and EPT tables, reached through a mapping of physical memory. The kernel
/// implements it over the bootloader's map (`host::KernelMemory`); host
/// tests over leaked heap memory. A handle: cheap to copy.
///
/// # Safety
/// `alloc` must return `n` contiguous 4 KiB-aligned frames that belong to the
/// caller alone until freed, and `ptr(phys)` must be a valid, writable
/// mapping of every byte of every frame it handed out.
pub unsafe trait HostMemory: ept::EptMemory + Clone + Send + Sync {
    /// `n` contiguous frames, not zeroed; `None` when memory is exhausted.
    fn alloc(&self, n: u64) -> Option<u64>;
    /// `n` contiguous frames starting at a multiple of `align` (a power of
    /// two), not zeroed. By default a larger run from [`alloc`](Self::alloc)
    /// whose unaligned head and tail stay unused.
    fn alloc_aligned(&self, n: u64, align: u64) -> Option<u64> {
        let extra = align.checked_div(crate::x86::PAGE_SIZE)?.checked_sub(1)?;
        let run = self.alloc(n.checked_add(extra)?)?;
        run.checked_next_multiple_of(align)
    }
    /// Bytes still available.
    fn remaining(&self) -> u64;
    /// Where host physical address `phys` is mapped.
    fn ptr(&self, phys: u64) -> *mut u8;
}
