//! Per-memslot dirty bitmaps, read with get-and-clear.
//!
//! One bit per 4 KiB page of a slot, page `i` in bit `i % 64` of word
//! `i / 64`. vCPUs set bits with [`DirtyBitmap::mark`] (an atomic `fetch_or`)
//! from the EPT-violation handler; a controller harvests them with
//! [`DirtyBitmap::get_and_clear`] (an atomic `swap(0)` per word). Storage is
//! any `AsRef<[AtomicU64]>`: a `Box<[AtomicU64]>` or `Vec` on the host, a
//! `&'static [AtomicU64]` (static or frame-backed) in the kernel.
//!
//! # The protocol: no write is ever lost
//!
//! This is KVM's `kvm_get_dirty_log_protect` with its lock-free fast path
//! (`fast_pf_fix_direct_spte`). While a slot is logged, every mapped page of
//! it is a 4 KiB EPT leaf, and every leaf that is writable has its bit set
//! or is about to have it set by the vCPU that made it writable.
//!
//! **Enabling logging:** [`DirtyBitmap::clear_all`], then
//! [`Ept::write_protect_range`](crate::mm::ept::Ept::write_protect_range) over the
//! whole slot (this splits 2 MiB leaves), then INVEPT on all cores. Whatever
//! the guest wrote before that is covered by the initial full copy.
//!
//! **vCPU, on an EPT violation caused by a write to a logged slot:**
//! 1. restore write access: [`Ept::make_writable`](crate::mm::ept::Ept::make_writable)
//!    (or, for a page not mapped yet, `map_4k` with WRITE);
//! 2. **then** [`DirtyBitmap::mark`] the page;
//! 3. resume the guest.
//!
//! Marking always (even when `make_writable` returned `false` because another
//! vCPU got there first) is correct; marking only when it returned `true` is
//! correct too, since the vCPU that changed the leaf marks it.
//!
//! **Controller, each round:**
//! 1. [`DirtyBitmap::get_and_clear`], write-protecting each reported page in
//!    `on_page` ([`Ept::write_protect`](crate::mm::ept::Ept::write_protect));
//! 2. INVEPT on every core (and wait until all have done it);
//! 3. only now read (copy) the reported pages.
//!
//! Why nothing is lost: a guest write that does not fault goes through a
//! writable leaf, made writable at some time `t1` by a vCPU that marks the
//! page at `t0 > t1`. Take the first swap `s > t0`; it reports the page and
//! the data is read after that round's flush. If the write came before that
//! flush, the copy sees it. If it came after, the leaf had been protected in
//! that round (after `s > t1`), so the write must have gone through a later
//! `make_writable`, and the same argument applies to that one. A write in the
//! window between a swap and the page's re-protection is thus reported in
//! the current round (its data is read after the call returns); once
//! re-protected, a later write faults and is logged for the next round.
//!
//! **Marking before restoring write access is NOT safe without a lock**:
//! vCPU marks; controller swaps (reports the page), write-protects it (a
//! no-op, it is still read-only) and flushes; vCPU now makes it writable.
//! The page is writable with a clear bit: the guest's later writes are never
//! reported. (KVM's slow path marks first only because it holds `mmu_lock`,
//! which the controller also takes around swap + protect.) The
//! `protocol_*` tests below replay this interleaving.
//!
//! Pausing all vCPUs for a final round requires that none is between steps 1
//! and 2 of its fault path; pause them outside the exit handler.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

/// Number of 64-bit words holding `npages` bits.
pub const fn words_needed(npages: u64) -> usize {
    npages.div_ceil(64) as usize
}

/// Why a [`DirtyBitmap`] call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirtyError {
    /// The storage given to [`DirtyBitmap::new`] has fewer words than needed.
    StorageTooSmall {
        /// Words needed, [`words_needed`]`(npages)`.
        need: usize,
        /// Words given.
        have: usize,
    },
    /// The `out` buffer of [`DirtyBitmap::get_and_clear`] is too small.
    OutTooSmall {
        /// Words needed.
        need: usize,
        /// Words given.
        have: usize,
    },
}

impl fmt::Display for DirtyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirtyError::StorageTooSmall { need, have } => {
                write!(f, "dirty bitmap: storage has {have} words, needs {need}")
            }
            DirtyError::OutTooSmall { need, have } => {
                write!(f, "dirty bitmap: output has {have} words, needs {need}")
            }
        }
    }
}

/// A dirty bitmap for one memslot of `npages` pages.
pub struct DirtyBitmap<S: AsRef<[AtomicU64]>> {
    words: S,
    npages: u64,
}

impl<S: AsRef<[AtomicU64]>> DirtyBitmap<S> {
    /// Number of 64-bit words holding `npages` bits.
    pub const fn words_needed(npages: u64) -> usize {
        words_needed(npages)
    }

    /// Makes a bitmap of `npages` pages in `storage`, which must hold at
    /// least [`words_needed`]`(npages)` words (extra words are unused). All
    /// bits start clear: the used words are zeroed.
    pub fn new(storage: S, npages: u64) -> Result<Self, DirtyError> {
        let need = words_needed(npages);
        let have = storage.as_ref().len();
        if have < need {
            return Err(DirtyError::StorageTooSmall { need, have });
        }
        let bitmap = Self {
            words: storage,
            npages,
        };
        bitmap.clear_all();
        Ok(bitmap)
    }

    /// Pages covered.
    pub fn npages(&self) -> u64 {
        self.npages
    }

    /// The words in use.
    fn words(&self) -> &[AtomicU64] {
        // `new` checked the length.
        &self.words.as_ref()[..words_needed(self.npages)]
    }

    /// Gives the storage back.
    pub fn into_inner(self) -> S {
        self.words
    }

    /// Sets the bit of `page` (an index within the slot). Returns whether
    /// this call set it (it was clear). A page out of range is ignored and
    /// returns `false`; this never panics.
    ///
    /// On the fault path, call this **after** restoring write access (see
    /// the module documentation).
    #[inline]
    pub fn mark(&self, page: u64) -> bool {
        if page >= self.npages {
            return false;
        }
        let bit = 1u64 << (page % 64);
        // AcqRel: orders this after the vCPU's `make_writable` for the
        // controller that swaps this word (see the module documentation).
        self.words()[(page / 64) as usize].fetch_or(bit, Ordering::AcqRel) & bit == 0
    }

    /// Whether the bit of `page` is set (`false` out of range).
    pub fn is_set(&self, page: u64) -> bool {
        page < self.npages
            && self.words()[(page / 64) as usize].load(Ordering::Acquire) & (1 << (page % 64)) != 0
    }

    /// Number of bits set (a snapshot; concurrent marks may or may not be
    /// counted).
    pub fn count(&self) -> u64 {
        self.words()
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }

    /// Clears every bit without reporting them. Only for when the bits do
    /// not matter: before logging starts (then write-protect the whole slot)
    /// or after it stops. Marks made concurrently may be lost.
    pub fn clear_all(&self) {
        for w in self.words() {
            w.store(0, Ordering::Release);
        }
    }

    /// Harvests the log: for each word, atomically swaps it with 0, copies
    /// it to `out[i]` and calls `on_page(page)` for each bit that was set,
    /// in increasing page order. Returns the number of pages reported.
    ///
    /// `on_page` must write-protect the page; after the call the caller
    /// flushes TLBs (INVEPT on all cores) and only then reads the reported
    /// pages (see the module documentation). `out` must hold at least
    /// [`words_needed`]`(npages)` words; nothing is cleared if it does not.
    /// Words beyond that are left alone. A page marked while this runs is
    /// reported now or in the next round, never lost.
    pub fn get_and_clear(
        &self,
        out: &mut [u64],
        mut on_page: impl FnMut(u64),
    ) -> Result<u64, DirtyError> {
        let words = self.words();
        if out.len() < words.len() {
            return Err(DirtyError::OutTooSmall {
                need: words.len(),
                have: out.len(),
            });
        }
        let mut reported = 0;
        for (i, (w, o)) in words.iter().zip(out.iter_mut()).enumerate() {
            // Skipping a word read as 0 is safe: a mark not yet visible is
            // harvested by a later round, as if it had come after the swap.
            let mut bits = if w.load(Ordering::Acquire) == 0 {
                0
            } else {
                w.swap(0, Ordering::AcqRel)
            };
            *o = bits;
            reported += u64::from(bits.count_ones());
            while bits != 0 {
                on_page(i as u64 * 64 + u64::from(bits.trailing_zeros()));
                bits &= bits - 1;
            }
        }
        Ok(reported)
    }

    /// Iterates over the pages whose bit is set, in increasing order,
    /// without clearing them (each word is read once, when reached).
    pub fn iter_set(&self) -> SetPages<'_> {
        SetPages {
            words: self.words(),
            next_word: 0,
            current: 0,
            base: 0,
        }
    }
}

/// Iterator returned by [`DirtyBitmap::iter_set`].
pub struct SetPages<'a> {
    words: &'a [AtomicU64],
    next_word: usize,
    current: u64,
    base: u64,
}

impl Iterator for SetPages<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        while self.current == 0 {
            let w = self.words.get(self.next_word)?;
            self.current = w.load(Ordering::Acquire);
            self.base = self.next_word as u64 * 64;
            self.next_word += 1;
        }
        let page = self.base + u64::from(self.current.trailing_zeros());
        self.current &= self.current - 1;
        Some(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::ept::test_mem::TestMem;
    use crate::mm::ept::{Ept, EptPerms, SIZE_4K};
    use proptest::prelude::*;
    use std::collections::HashSet;
    use std::sync::atomic::AtomicBool;
    use std::sync::RwLock;

    fn storage(words: usize) -> Box<[AtomicU64]> {
        (0..words).map(|_| AtomicU64::new(0)).collect()
    }

    fn bitmap(npages: u64) -> DirtyBitmap<Box<[AtomicU64]>> {
        DirtyBitmap::new(storage(words_needed(npages)), npages).unwrap()
    }

    #[test]
    fn sizes() {
        assert_eq!(words_needed(0), 0);
        assert_eq!(words_needed(1), 1);
        assert_eq!(words_needed(64), 1);
        assert_eq!(words_needed(65), 2);
        assert_eq!(DirtyBitmap::<&[AtomicU64]>::words_needed(128), 2);
        assert_eq!(
            DirtyBitmap::new(storage(1), 65).err(),
            Some(DirtyError::StorageTooSmall { need: 2, have: 1 })
        );
        // Extra words are fine and unused; used words are zeroed.
        let s = storage(4);
        s[0].store(u64::MAX, Ordering::Relaxed);
        s[3].store(u64::MAX, Ordering::Relaxed);
        let b = DirtyBitmap::new(s, 10).unwrap();
        assert_eq!(b.count(), 0);
        assert_eq!(b.iter_set().count(), 0);
        // Works on a &'static slice too.
        static WORDS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
        let b = DirtyBitmap::new(&WORDS[..], 100).unwrap();
        assert!(b.mark(99));
        assert!(WORDS[1].load(Ordering::Relaxed) != 0);
    }

    #[test]
    fn mark_count_out_of_range() {
        let b = bitmap(130);
        assert_eq!(b.npages(), 130);
        assert!(b.mark(0));
        assert!(!b.mark(0), "already set");
        assert!(b.mark(63));
        assert!(b.mark(64));
        assert!(b.mark(129));
        assert!(!b.mark(130), "out of range");
        assert!(!b.mark(u64::MAX), "out of range");
        assert!(!b.is_set(130));
        assert!(b.is_set(129) && b.is_set(64) && !b.is_set(1));
        assert_eq!(b.count(), 4);
        assert_eq!(b.iter_set().collect::<Vec<_>>(), [0, 63, 64, 129]);
        b.clear_all();
        assert_eq!(b.count(), 0);
        let empty = bitmap(0);
        assert!(!empty.mark(0));
        assert_eq!(empty.get_and_clear(&mut [], |_| panic!()), Ok(0));
    }

    #[test]
    fn get_and_clear_reports_and_clears() {
        let b = bitmap(200);
        let marked = [3, 7, 64, 127, 128, 199];
        for p in marked {
            b.mark(p);
        }
        let mut out = [0xdead_u64; 5];
        let mut got = Vec::new();
        assert_eq!(b.get_and_clear(&mut out, |p| got.push(p)), Ok(6));
        assert_eq!(got, marked);
        assert_eq!(out[0], (1 << 3) | (1 << 7));
        assert_eq!(out[1], (1 << 0) | (1 << 63));
        assert_eq!(out[2], 1 << 0);
        assert_eq!(out[3], 1 << (199 - 192));
        assert_eq!(out[4], 0xdead, "words beyond the bitmap untouched");
        assert_eq!(b.count(), 0);
        let mut again = Vec::new();
        assert_eq!(b.get_and_clear(&mut out, |p| again.push(p)), Ok(0));
        assert!(again.is_empty());
        assert_eq!(out[..4], [0; 4]);
        // Too small an output: refused, nothing cleared.
        b.mark(5);
        assert_eq!(
            b.get_and_clear(&mut out[..3], |_| {}),
            Err(DirtyError::OutTooSmall { need: 4, have: 3 })
        );
        assert!(b.is_set(5));
    }

    /// Writers mark pages while a reader harvests: the union of all rounds is
    /// exactly what was marked.
    #[test]
    fn concurrent_mark_and_harvest() {
        const NPAGES: u64 = 4096;
        const WRITERS: u64 = 6;
        const MARKS: u64 = 50_000;
        let b = bitmap(NPAGES);
        let done = AtomicBool::new(false);
        // The writers start with the reader's first round, so that rounds
        // overlap the marks even on a busy host.
        let start = std::sync::Barrier::new(WRITERS as usize + 1);
        let (marked, reported) = std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut out = vec![0; words_needed(NPAGES)];
                let mut all = HashSet::new();
                start.wait();
                loop {
                    let finished = done.load(Ordering::SeqCst);
                    b.get_and_clear(&mut out, |p| {
                        all.insert(p);
                    })
                    .unwrap();
                    if finished {
                        break;
                    }
                }
                all
            });
            let writers: Vec<_> = (0..WRITERS)
                .map(|t| {
                    let (b, start) = (&b, &start);
                    s.spawn(move || {
                        start.wait();
                        let mut mine = HashSet::new();
                        let mut x = t.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                        for _ in 0..MARKS {
                            // xorshift; skewed so pages get re-marked after
                            // being harvested.
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            let page = (x % NPAGES) & !(t % 3);
                            b.mark(page);
                            mine.insert(page);
                        }
                        mine
                    })
                })
                .collect();
            let mut marked = HashSet::new();
            for w in writers {
                marked.extend(w.join().unwrap());
            }
            done.store(true, Ordering::SeqCst);
            (marked, reader.join().unwrap())
        });
        assert_eq!(reported, marked);
        assert_eq!(b.count(), 0);
    }

    /// The whole dirty-logging protocol with a real [`Ept`]: vCPU threads
    /// write to guest pages (a write goes through only if the leaf is
    /// writable, else it "faults" and the handler restores access then
    /// marks); a controller harvests, write-protects, "flushes" and copies
    /// reported pages. After the final round the copy equals the source:
    /// no write was lost.
    ///
    /// The `tlb` RwLock stands in for INVEPT + shootdown: a vCPU holds it for
    /// reading from its permission check to the end of its write (a cached
    /// translation in use); the controller's "flush" takes it for writing,
    /// which waits until no vCPU uses a stale translation.
    #[test]
    fn protocol_no_lost_write_concurrent() {
        const NPAGES: u64 = 256;
        const VCPUS: u64 = 4;
        const WRITES: u64 = 20_000;
        let base_gpa = 0x40_0000u64;
        for _ in 0..4 {
            let mem = TestMem::unlimited();
            let ept = Ept::new(&mem).unwrap();
            // Map the first half up front; the rest is faulted in lazily.
            let rw = EptPerms::READ | EptPerms::WRITE;
            for p in 0..NPAGES / 2 {
                ept.map_4k(base_gpa + p * SIZE_4K, p * SIZE_4K, rw).unwrap();
            }
            let b = bitmap(NPAGES);
            let src: Vec<AtomicU64> = (0..NPAGES).map(|_| AtomicU64::new(0)).collect();
            let mut dst = vec![0u64; NPAGES as usize];
            let tlb = RwLock::new(());
            // Enable logging.
            b.clear_all();
            ept.write_protect_range(base_gpa, NPAGES * SIZE_4K).unwrap();
            drop(tlb.write().unwrap());
            // The vCPUs start writing when the controller starts its first
            // round, so that rounds overlap the writes even on a busy host
            // (where the vCPUs could otherwise finish before it begins).
            let start = std::sync::Barrier::new(VCPUS as usize + 1);
            std::thread::scope(|s| {
                let vcpus: Vec<_> = (0..VCPUS)
                    .map(|t| {
                        let (ept, b, src, tlb, start) = (&ept, &b, &src, &tlb, &start);
                        s.spawn(move || {
                            start.wait();
                            let mut x = (t + 1) * 0x2545_f491_4f6c_dd1d;
                            let mut writes = 0;
                            while writes < WRITES {
                                x ^= x << 13;
                                x ^= x >> 7;
                                x ^= x << 17;
                                let page = x % NPAGES;
                                let gpa = base_gpa + page * SIZE_4K;
                                let guard = tlb.read().unwrap();
                                match ept.translate(gpa) {
                                    Some((_, p, _)) if p.contains(EptPerms::WRITE) => {
                                        src[page as usize].fetch_add(1, Ordering::SeqCst);
                                        writes += 1;
                                        drop(guard);
                                    }
                                    mapping => {
                                        drop(guard);
                                        // EPT violation: restore access, THEN mark.
                                        if mapping.is_none() {
                                            ept.map_4k(gpa, page * SIZE_4K, rw).unwrap();
                                        } else {
                                            ept.make_writable(gpa);
                                        }
                                        b.mark(page);
                                    }
                                }
                            }
                        })
                    })
                    .collect();
                let mut out = vec![0; words_needed(NPAGES)];
                let mut round = |dst: &mut Vec<u64>| {
                    let mut reported = Vec::new();
                    b.get_and_clear(&mut out, |p| {
                        ept.write_protect(base_gpa + p * SIZE_4K);
                        reported.push(p);
                    })
                    .unwrap();
                    drop(tlb.write().unwrap()); // INVEPT on all cores
                    for p in reported {
                        dst[p as usize] = src[p as usize].load(Ordering::SeqCst);
                    }
                };
                let waiter = s.spawn(move || {
                    for v in vcpus {
                        v.join().unwrap();
                    }
                });
                start.wait();
                loop {
                    round(&mut dst);
                    if waiter.is_finished() {
                        break;
                    }
                }
                waiter.join().unwrap();
                round(&mut dst); // final round, vCPUs stopped
            });
            for p in 0..NPAGES as usize {
                assert_eq!(
                    dst[p],
                    src[p].load(Ordering::SeqCst),
                    "write lost on page {p}"
                );
            }
            let total: u64 = src.iter().map(|w| w.load(Ordering::SeqCst)).sum();
            assert_eq!(total, VCPUS * WRITES);
        }
    }

    /// The interleaving that loses a write when the fault handler marks
    /// BEFORE restoring write access, replayed step by step; and the same
    /// steps with the documented order, which loses nothing.
    #[test]
    fn protocol_mark_order_interleaving() {
        let run = |mark_first: bool| -> bool {
            let mem = TestMem::unlimited();
            let ept = Ept::new(&mem).unwrap();
            let b = bitmap(1);
            let mut out = [0u64; 1];
            ept.map_4k(0, 0, EptPerms::READ | EptPerms::WRITE).unwrap();
            ept.write_protect_range(0, SIZE_4K).unwrap(); // logging on
            let mut data = 0u64;
            let mut copy = 0u64;
            let guest_write = |data: &mut u64| {
                if ept.translate(0).unwrap().1.contains(EptPerms::WRITE) {
                    *data += 1;
                    true
                } else {
                    false
                }
            };
            let harvest = |copy: &mut u64, data: u64, out: &mut [u64; 1]| {
                let mut hit = false;
                b.get_and_clear(out, |p| {
                    ept.write_protect(p * SIZE_4K);
                    hit = true;
                })
                .unwrap();
                if hit {
                    *copy = data;
                }
            };
            // vCPU faults on a write; handler step 1...
            assert!(!guest_write(&mut data));
            if mark_first {
                b.mark(0);
            } else {
                ept.make_writable(0);
            }
            // ...controller runs a whole round in between...
            harvest(&mut copy, data, &mut out);
            // ...handler step 2, then the guest writes.
            if mark_first {
                ept.make_writable(0);
            } else {
                b.mark(0);
            }
            assert!(guest_write(&mut data));
            // Final round with the vCPU stopped.
            harvest(&mut copy, data, &mut out);
            copy == data
        };
        assert!(run(false), "documented order must not lose the write");
        assert!(!run(true), "mark-before-make-writable loses it");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Mark(u64),
        IsSet(u64),
        Count,
        Harvest,
        ClearAll,
        Iter,
    }

    fn op_strategy(npages: u64) -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..npages + 70).prop_map(Op::Mark),
            2 => (0..npages + 70).prop_map(Op::IsSet),
            1 => Just(Op::Count),
            1 => Just(Op::Harvest),
            1 => Just(Op::ClearAll),
            1 => Just(Op::Iter),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        #[test]
        fn bitmap_matches_model(
            (npages, ops) in (0..300u64).prop_flat_map(|n| {
                (Just(n), prop::collection::vec(op_strategy(n), 0..200))
            })
        ) {
            let b = bitmap(npages);
            let mut model = HashSet::new();
            let mut out = vec![0u64; words_needed(npages)];
            for op in ops {
                match op {
                    Op::Mark(p) => {
                        let want = p < npages && model.insert(p);
                        prop_assert_eq!(b.mark(p), want);
                    }
                    Op::IsSet(p) => prop_assert_eq!(b.is_set(p), model.contains(&p)),
                    Op::Count => prop_assert_eq!(b.count(), model.len() as u64),
                    Op::Harvest => {
                        let mut got = Vec::new();
                        let n = b.get_and_clear(&mut out, |p| got.push(p)).unwrap();
                        let mut want: Vec<u64> = model.drain().collect();
                        want.sort_unstable();
                        prop_assert_eq!(n, want.len() as u64);
                        prop_assert_eq!(&got, &want);
                        for (i, w) in out.iter().enumerate() {
                            let bits = want
                                .iter()
                                .filter(|&&p| p / 64 == i as u64)
                                .fold(0u64, |acc, p| acc | 1 << (p % 64));
                            prop_assert_eq!(*w, bits);
                        }
                    }
                    Op::ClearAll => {
                        b.clear_all();
                        model.clear();
                    }
                    Op::Iter => {
                        let mut want: Vec<u64> = model.iter().copied().collect();
                        want.sort_unstable();
                        prop_assert_eq!(b.iter_set().collect::<Vec<_>>(), want);
                    }
                }
            }
        }
    }
}
