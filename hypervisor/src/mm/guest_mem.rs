//! Guest-physical memory access through the memslots, for the hypervisor's
//! own reads and writes (the loader, hypercall buffers, instruction fetch,
//! the dirty-log controller). It uses the VM-wide lookup path: no vCPU's
//! cache is touched, and no EPT is involved.

use super::memslot::{LookupStats, Memslots};
use super::HostMemory;
use crate::x86::PAGE_SIZE;

/// The guest-physical memory of one VM.
pub struct GuestMem<'a, M: HostMemory> {
    pub slots: &'a Memslots,
    pub mem: &'a M,
    pub stats: LookupStats,
}

impl<'a, M: HostMemory> GuestMem<'a, M> {
    pub fn new(slots: &'a Memslots, mem: &'a M) -> Self {
        GuestMem {
            slots,
            mem,
            stats: LookupStats::new(),
        }
    }

    /// Runs `f` on each host-mapped piece of `[gpa, gpa + len)`; fails with
    /// the first address no slot backs.
    fn chunks(
        &mut self,
        gpa: u64,
        len: u64,
        mut f: impl FnMut(*mut u8, usize, usize),
    ) -> Result<(), u64> {
        let mut done = 0u64;
        while done < len {
            let at = gpa.checked_add(done).ok_or(gpa)?;
            let gfn = at / PAGE_SIZE;
            let slot = self.slots.lookup(gfn, &mut self.stats).ok_or(at)?;
            let slot_end = slot.end_gfn() * PAGE_SIZE;
            let n = (len - done).min(slot_end - at);
            let host = slot.host_phys(gfn) + at % PAGE_SIZE;
            f(self.mem.ptr(host), done as usize, n as usize);
            done += n;
        }
        Ok(())
    }

    pub fn write(&mut self, gpa: u64, bytes: &[u8]) -> Result<(), u64> {
        self.chunks(gpa, bytes.len() as u64, |dst, off, n| {
            // SAFETY: `dst..dst + n` lies in one slot's host frames, which
            // belong to the guest and are mapped (HostMemory's contract);
            // `bytes[off..off + n]` exists.
            unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr().add(off), dst, n) }
        })
    }

    pub fn read(&mut self, gpa: u64, out: &mut [u8]) -> Result<(), u64> {
        let len = out.len() as u64;
        let base = out.as_mut_ptr();
        self.chunks(gpa, len, |src, off, n| {
            // SAFETY: as in `write`, with the roles swapped. Guest memory may
            // change under us (other vCPUs): the copy is of bytes, so a torn
            // read is only torn data, never unsoundness in the host.
            unsafe { core::ptr::copy_nonoverlapping(src, base.add(off), n) }
        })
    }

    /// Atomically replaces the naturally aligned 8-byte (`wide`) or 4-byte
    /// word at `gpa` by `new` if it holds `old`: how the page walker sets
    /// accessed/dirty flags while other vCPUs run (SDM 4.8). `Ok(false)` if
    /// the word changed; `Err(gpa)` if no slot backs it or it is misaligned.
    pub fn compare_exchange(
        &mut self,
        gpa: u64,
        wide: bool,
        old: u64,
        new: u64,
    ) -> Result<bool, u64> {
        use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
        let size = if wide { 8 } else { 4 };
        if !gpa.is_multiple_of(size) {
            return Err(gpa);
        }
        let mut ok = false;
        self.chunks(gpa, size, |p, _, n| {
            // An aligned word never crosses a page, so it is one chunk.
            debug_assert_eq!(n as u64, size);
            // SAFETY: `p..p + size` lies in one slot's mapped host frames
            // (as in `write`); frames are 4 KiB-aligned and `gpa` is aligned
            // to `size`, so `p` is too. Guest memory is only ever accessed
            // as plain bytes or atomics by the host, never through `&`.
            ok = unsafe {
                if wide {
                    AtomicU64::from_ptr(p as *mut u64)
                        .compare_exchange(old, new, SeqCst, SeqCst)
                        .is_ok()
                } else {
                    AtomicU32::from_ptr(p as *mut u32)
                        .compare_exchange(old as u32, new as u32, SeqCst, SeqCst)
                        .is_ok()
                }
            };
        })?;
        Ok(ok)
    }

    pub fn zero(&mut self, gpa: u64, len: u64) -> Result<(), u64> {
        self.chunks(gpa, len, |dst, _, n| {
            // SAFETY: as in `write`.
            unsafe { core::ptr::write_bytes(dst, 0, n) }
        })
    }
}

impl<M: HostMemory> crate::boot::elf::GuestMemoryWriter for GuestMem<'_, M> {
    type Error = u64;
    fn write(&mut self, gpa: u64, bytes: &[u8]) -> Result<(), u64> {
        GuestMem::write(self, gpa, bytes)
    }
    fn zero(&mut self, gpa: u64, len: u64) -> Result<(), u64> {
        GuestMem::zero(self, gpa, len)
    }
}

/// Host memory for tests: leaked, 4 KiB-aligned heap blocks whose addresses
/// serve as "physical" addresses (an identity mapping); EPT tables from the
/// EPT's own test memory.
#[cfg(test)]
pub(crate) mod test_host {
    use super::super::ept::test_mem::TestMem;
    use super::super::HostMemory;
    use std::alloc::{alloc_zeroed, Layout};

    /// A handle to a leaked [`TestMem`].
    pub(crate) fn memory() -> &'static TestMem {
        Box::leak(Box::new(TestMem::unlimited()))
    }

    // SAFETY: every block is a fresh, 4 KiB-aligned, never-freed allocation,
    // and its address is the identity mapping `ptr` returns.
    unsafe impl HostMemory for &'static TestMem {
        fn alloc(&self, n: u64) -> Option<u64> {
            let layout = Layout::from_size_align((n * 4096) as usize, 4096).ok()?;
            // SAFETY: the layout has a non-zero size (n ≥ 1 at every caller;
            // n = 0 gives a zero size, refused below).
            (n > 0).then(|| unsafe { alloc_zeroed(layout) } as u64)
        }
        fn remaining(&self) -> u64 {
            1 << 40
        }
        fn ptr(&self, phys: u64) -> *mut u8 {
            phys as *mut u8
        }
    }
}
