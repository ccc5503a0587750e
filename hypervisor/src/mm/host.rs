//! Host physical memory for the kernel: the frame allocator behind a lock,
//! the physical-memory mapping the bootloader set up, and the EPT's table
//! memory.

use crate::mm::ept::EptMemory;
use crate::mm::frames::{FrameAllocator, FRAME};
use crate::mm::HostMemory;
use core::sync::atomic::{AtomicU64, Ordering};
use spin::Mutex;

static FRAMES: Mutex<Option<FrameAllocator>> = Mutex::new(None);
static PHYS_OFFSET: AtomicU64 = AtomicU64::new(0);

/// Installs the allocator and the physical-memory offset. Call once.
pub fn init(frames: FrameAllocator, phys_offset: u64) {
    PHYS_OFFSET.store(phys_offset, Ordering::SeqCst);
    *FRAMES.lock() = Some(frames);
}

/// The virtual address at which physical address `phys` is mapped.
pub fn phys_to_virt(phys: u64) -> *mut u8 {
    (PHYS_OFFSET.load(Ordering::Relaxed) + phys) as *mut u8
}

/// `n` contiguous zeroed frames, or `None` when memory is exhausted.
pub fn alloc_zeroed(n: u64) -> Option<u64> {
    let phys = FRAMES.lock().as_mut()?.alloc_contiguous(n).ok()?;
    // SAFETY: the frames were just handed out to us alone and are mapped at
    // the physical-memory offset.
    unsafe { core::ptr::write_bytes(phys_to_virt(phys), 0, (n * FRAME) as usize) };
    Some(phys)
}

/// `n` contiguous frames, not zeroed (the caller fills them).
pub fn alloc_raw(n: u64) -> Option<u64> {
    FRAMES.lock().as_mut()?.alloc_contiguous(n).ok()
}

pub fn free(phys: u64) {
    if let Some(f) = FRAMES.lock().as_mut() {
        f.free(phys);
    }
}

/// Bytes still available.
pub fn remaining() -> u64 {
    FRAMES.lock().as_ref().map_or(0, |f| f.remaining())
}

/// The kernel's host memory: the frame allocator above, reached through the
/// bootloader's physical-memory mapping. EPT tables live here too.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelMemory;

// SAFETY: frames come from the one frame allocator, each handed out once, and
// the whole of physical memory is mapped at the offset.
unsafe impl HostMemory for KernelMemory {
    fn alloc(&self, n: u64) -> Option<u64> {
        alloc_raw(n)
    }
    fn alloc_aligned(&self, n: u64, align: u64) -> Option<u64> {
        FRAMES.lock().as_mut()?.alloc_aligned(n, align).ok()
    }
    fn remaining(&self) -> u64 {
        remaining()
    }
    fn ptr(&self, phys: u64) -> *mut u8 {
        phys_to_virt(phys)
    }
}

// SAFETY: `alloc_table` returns zeroed, 4 KiB-aligned frames that belong to
// the EPT alone until freed; `table` maps exactly such a frame.
unsafe impl EptMemory for KernelMemory {
    fn alloc_table(&self) -> Option<u64> {
        alloc_zeroed(1)
    }
    unsafe fn free_table(&self, phys: u64) {
        free(phys);
    }
    unsafe fn table(&self, phys: u64) -> &[AtomicU64; 512] {
        // SAFETY: the caller passes a frame from `alloc_table`, which stays
        // mapped and owned by the EPT; AtomicU64 has u64's layout.
        unsafe { &*(phys_to_virt(phys) as *const [AtomicU64; 512]) }
    }
}
