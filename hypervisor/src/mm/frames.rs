//! Physical frame allocator over the bootloader's usable memory regions.
//!
//! Pure logic: it hands out physical addresses and never touches the memory,
//! so it is tested on the host. The kernel wraps it in a lock.

pub const FRAME: u64 = crate::x86::PAGE_SIZE;
const MAX_REGIONS: usize = 128;
const MAX_FREE: usize = 256;

/// Frames below this address are never handed out: the real-mode area, where
/// the application processors' start-up trampoline and the BIOS live.
pub const LOW_LIMIT: u64 = 0x10_0000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfFrames;

/// A bump allocator over sorted usable ranges, with a small free list for the
/// rare frame that is given back (an EPT table that lost a race).
pub struct FrameAllocator {
    regions: [(u64, u64); MAX_REGIONS],
    nregions: usize,
    current: usize,
    next: u64,
    free: [u64; MAX_FREE],
    nfree: usize,
    allocated: u64,
}

impl FrameAllocator {
    /// Builds the allocator from usable `[start, end)` ranges (any order, any
    /// alignment). Parts below [`LOW_LIMIT`] and partial frames are dropped.
    pub fn new(usable: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let mut a = FrameAllocator {
            regions: [(0, 0); MAX_REGIONS],
            nregions: 0,
            current: 0,
            next: 0,
            free: [0; MAX_FREE],
            nfree: 0,
            allocated: 0,
        };
        for (start, end) in usable {
            let start = start.max(LOW_LIMIT).next_multiple_of(FRAME);
            let end = end & !(FRAME - 1);
            if start < end && a.nregions < MAX_REGIONS {
                a.regions[a.nregions] = (start, end);
                a.nregions += 1;
            }
        }
        a.regions[..a.nregions].sort_unstable();
        a.next = a.regions.first().map_or(0, |r| r.0);
        a
    }

    /// One frame.
    pub fn alloc(&mut self) -> Result<u64, OutOfFrames> {
        if self.nfree > 0 {
            self.nfree -= 1;
            self.allocated += 1;
            return Ok(self.free[self.nfree]);
        }
        self.alloc_contiguous(1)
    }

    /// `n` physically contiguous frames; returns the first one's address.
    pub fn alloc_contiguous(&mut self, n: u64) -> Result<u64, OutOfFrames> {
        self.alloc_aligned(n, FRAME)
    }

    /// `n` physically contiguous frames starting at a multiple of `align`
    /// (a power of two, at least [`FRAME`]), e.g. 2 MiB so that guest RAM
    /// can be mapped with 2 MiB EPT pages. The frames skipped to reach the
    /// alignment stay unused.
    pub fn alloc_aligned(&mut self, n: u64, align: u64) -> Result<u64, OutOfFrames> {
        if !align.is_power_of_two() || align < FRAME {
            return Err(OutOfFrames);
        }
        let bytes = n.checked_mul(FRAME).ok_or(OutOfFrames)?;
        for i in self.current..self.nregions {
            let (start, end) = self.regions[i];
            let from = if i == self.current { self.next } else { start };
            let Some(from) = from.checked_next_multiple_of(align) else {
                continue;
            };
            if from <= end && end - from >= bytes {
                // Regions before `i` keep their tails unused: only the few
                // large runs (guest RAM) made at start-up skip ahead.
                self.current = i;
                self.next = from + bytes;
                self.allocated += n;
                return Ok(from);
            }
        }
        Err(OutOfFrames)
    }

    /// Gives one frame back. A full free list drops it (a leak, not an error).
    pub fn free(&mut self, frame: u64) {
        if self.nfree < MAX_FREE {
            self.free[self.nfree] = frame;
            self.nfree += 1;
            self.allocated -= 1;
        }
    }

    /// Frames currently handed out.
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    /// Bytes that can still be handed out (ignoring the free list).
    pub fn remaining(&self) -> u64 {
        let mut total = 0;
        for (i, &(start, end)) in self.regions[..self.nregions].iter().enumerate() {
            if i > self.current {
                total += end - start;
            } else if i == self.current {
                total += end - self.next;
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_low_memory_and_aligns() {
        let mut a = FrameAllocator::new([(0x1000, 0x9f000), (0x10_0800, 0x10_3000)]);
        assert_eq!(a.alloc(), Ok(0x10_1000));
        assert_eq!(a.alloc(), Ok(0x10_2000));
        assert_eq!(a.alloc(), Err(OutOfFrames));
    }

    #[test]
    fn contiguous_runs_move_to_a_region_that_fits() {
        let mut a = FrameAllocator::new([(0x20_0000, 0x20_2000), (0x10_0000, 0x10_3000)]);
        assert_eq!(a.alloc_contiguous(2), Ok(0x10_0000));
        // Only one frame left in the first region: a run of 2 moves on.
        assert_eq!(a.alloc_contiguous(2), Ok(0x20_0000));
        assert_eq!(a.alloc(), Err(OutOfFrames));
        assert_eq!(a.allocated(), 4);
    }

    #[test]
    fn aligned_runs() {
        const M2: u64 = 0x20_0000;
        let mut a = FrameAllocator::new([(0x10_0000, 0x30_0000), (0x40_1000, 0x90_0000)]);
        assert_eq!(a.alloc(), Ok(0x10_0000));
        // 2 MiB aligned: skips to 0x200000.
        assert_eq!(a.alloc_aligned(256, M2), Ok(M2));
        // The rest of the first region is too small for 2 MiB at 2 MiB.
        assert_eq!(a.alloc_aligned(512, M2), Ok(0x60_0000));
        assert_eq!(a.alloc_aligned(1, 3 * FRAME), Err(OutOfFrames));
        assert_eq!(a.alloc_aligned(1, 0), Err(OutOfFrames));
        assert_eq!(a.alloc_aligned(2048, M2), Err(OutOfFrames));
        assert_eq!(a.alloc(), Ok(0x80_0000));
    }

    #[test]
    fn freed_frames_are_reused() {
        let mut a = FrameAllocator::new([(0x10_0000, 0x10_2000)]);
        let f = a.alloc().unwrap();
        a.free(f);
        assert_eq!(a.alloc(), Ok(f));
        assert_eq!(a.remaining(), 0x1000);
    }

    #[test]
    fn huge_requests_fail_cleanly() {
        let mut a = FrameAllocator::new([(0x10_0000, 0x20_0000)]);
        assert_eq!(a.alloc_contiguous(u64::MAX), Err(OutOfFrames));
        assert_eq!(a.alloc_contiguous(0x101), Err(OutOfFrames));
        // A failed request leaves the allocator as it was.
        assert_eq!(a.alloc_contiguous(0x100), Ok(0x10_0000));
    }
}
