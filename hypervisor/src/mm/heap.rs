//! The kernel heap: a few MiB of frames behind `linked_list_allocator`, for
//! the `acpi` crate and start-up tables. The fault path never allocates.

use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

pub const HEAP_BYTES: usize = 4 << 20;

/// Hands `[start, start + len)` (a mapped, otherwise unused range) to the heap.
///
/// # Safety
/// The range must be valid, writable memory used by nothing else, forever;
/// call once.
pub unsafe fn init(start: *mut u8, len: usize) {
    // SAFETY: guaranteed by the caller.
    unsafe { HEAP.lock().init(start, len) };
}
