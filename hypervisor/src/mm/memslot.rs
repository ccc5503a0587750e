//! Guest memory slots: which host frames back which guest frames.
//!
//! Guest-physical memory is described by up to [`MAX_SLOTS`] memslots, each a
//! contiguous run of guest frames backed by a contiguous run of host frames.
//! The slots live in a fixed array sorted by `base_gfn`, as in Linux KVM
//! (`include/linux/kvm_host.h`, `struct kvm_memslots`).
//!
//! # Lookup
//! Every EPT violation resolves its gfn to a slot, so the lookup is on the hot
//! path. It follows KVM after Matlack's 2021 series "Improve gfn-to-memslot
//! performance during page faults":
//! 1. the vCPU's own last-used slot index ([`VcpuSlotCache`]): a speculation
//!    mask, one load of the slot and a range compare;
//! 2. a binary search, O(log n), which updates that vCPU's index only.
//!
//! The vCPU path reads and writes nothing shared but the (read-only) slot
//! array, so vCPUs faulting in different slots do not slow each other down.
//! Callers without a vCPU (loader, dirty-log controller) use a VM-wide
//! last-used index instead ([`Memslots::lookup`]). For measurement,
//! [`CacheMode`] also offers KVM's behaviour before the series (VM-wide index
//! only) and no cache at all.
//!
//! # Stale cached indexes
//! Inserting or removing a slot shifts the positions of the slots after it, so
//! a cached index may afterwards name another slot, or no slot at all. That is
//! fine: a cached index is only a hint. It is always re-validated against the
//! gfn range of the slot it names, and first clamped into the array by
//! [`index_nospec`], so a stale index costs a search, never a wrong answer.
//!
//! # Concurrency
//! The slot array only changes through `&mut self` (set up before vCPUs run).
//! At run time, lookups take `&self`; a slot's flags are atomics because dirty
//! logging is switched on and off while vCPUs run. Share the array as a plain
//! `&Memslots`: behind a lock, every lookup would write the lock's shared cache
//! line, which is exactly what the per-vCPU cache avoids.

use core::fmt;
use core::str::FromStr;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// Maximum number of memslots: KVM's `KVM_USER_MEM_SLOTS` on x86 (512 slots
/// less 3 private ones), the figure the 2021 series was measured against.
pub const MAX_SLOTS: usize = 509;

/// Size of a guest or host frame.
pub use crate::x86::PAGE_SIZE;
const PAGE_SHIFT: u32 = 12;

bitflags::bitflags! {
    /// Memslot flags, with KVM's bit values (`include/uapi/linux/kvm.h`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct SlotFlags: u32 {
        /// `KVM_MEM_LOG_DIRTY_PAGES`: writes are logged in the slot's dirty bitmap.
        const DIRTY_LOG = 1 << 0;
        /// `KVM_MEM_READONLY`: guest writes fault (and go to the MMIO path).
        const READONLY = 1 << 1;
    }
}

/// One memslot: guest frames `[base_gfn, base_gfn + npages)` backed by host
/// frames `[host_pfn, host_pfn + npages)`.
///
/// Only the flags change after insertion.
#[derive(Debug)]
pub struct Memslot {
    base_gfn: u64,
    npages: u64,
    /// Host physical frame number of the slot's first page.
    host_pfn: u64,
    flags: AtomicU32,
    /// Stable identity (the position in the array is not stable): indexes the
    /// slot's dirty bitmap.
    id: u16,
}

impl Memslot {
    /// The unused array entry: it contains no gfn (`npages == 0`).
    const fn empty() -> Self {
        Self {
            base_gfn: 0,
            npages: 0,
            host_pfn: 0,
            flags: AtomicU32::new(0),
            id: 0,
        }
    }

    /// Stable id, assigned at insertion: the smallest id not in use.
    #[inline]
    pub fn id(&self) -> u16 {
        self.id
    }

    #[inline]
    pub fn base_gfn(&self) -> u64 {
        self.base_gfn
    }

    #[inline]
    pub fn npages(&self) -> u64 {
        self.npages
    }

    /// The first gfn after the slot (exclusive end). Never overflows: checked
    /// at insertion.
    #[inline]
    pub fn end_gfn(&self) -> u64 {
        self.base_gfn + self.npages
    }

    /// Host physical frame number of the slot's first page.
    #[inline]
    pub fn host_pfn(&self) -> u64 {
        self.host_pfn
    }

    /// Whether `gfn` lies in this slot: `base_gfn <= gfn < end_gfn`.
    ///
    /// KVM's `try_get_memslot()` writes this as two compares. Here the two
    /// bounds fold into one unsigned compare (a gfn below `base_gfn` wraps to a
    /// huge offset), so a cache miss takes one well-predicted branch instead of
    /// two, the first of which would go either way at random on scattered
    /// gfns: measured 1.5x slower on the random-gfn benchmark.
    #[inline(always)]
    pub fn contains(&self, gfn: u64) -> bool {
        gfn.wrapping_sub(self.base_gfn) < self.npages
    }

    /// The host physical address of the page backing `gfn`.
    /// The caller guarantees `self.contains(gfn)`.
    #[inline]
    pub fn host_phys(&self, gfn: u64) -> u64 {
        debug_assert!(
            self.contains(gfn),
            "gfn {gfn:#x} is not in memslot {}",
            self.id
        );
        (self.host_pfn + (gfn - self.base_gfn)) << PAGE_SHIFT
    }

    /// The slot's flags (Acquire: pairs with the SeqCst updates below).
    #[inline]
    pub fn flags(&self) -> SlotFlags {
        SlotFlags::from_bits_retain(self.flags.load(Ordering::Acquire))
    }

    /// Replaces the flags; returns the previous ones.
    pub fn set_flags(&self, flags: SlotFlags) -> SlotFlags {
        SlotFlags::from_bits_retain(self.flags.swap(flags.bits(), Ordering::SeqCst))
    }

    /// Sets `flags` in addition to the current ones; returns the previous ones.
    pub fn insert_flags(&self, flags: SlotFlags) -> SlotFlags {
        SlotFlags::from_bits_retain(self.flags.fetch_or(flags.bits(), Ordering::SeqCst))
    }

    /// Clears `flags`; returns the previous ones.
    pub fn remove_flags(&self, flags: SlotFlags) -> SlotFlags {
        SlotFlags::from_bits_retain(self.flags.fetch_and(!flags.bits(), Ordering::SeqCst))
    }
}

/// Which last-used index a vCPU's lookup tries before the binary search.
/// Chosen at run time, for measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// The vCPU's own last-used index (KVM since Linux 5.17).
    #[default]
    Vcpu,
    /// One VM-wide last-used index (KVM before the 2021 series).
    Vm,
    /// No cache: always search.
    None,
}

impl CacheMode {
    pub const ALL: [CacheMode; 3] = [CacheMode::Vcpu, CacheMode::Vm, CacheMode::None];

    pub const fn as_str(self) -> &'static str {
        match self {
            CacheMode::Vcpu => "vcpu",
            CacheMode::Vm => "vm",
            CacheMode::None => "none",
        }
    }
}

impl fmt::Display for CacheMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown cache mode name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseCacheModeError;

impl fmt::Display for ParseCacheModeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unknown memslot cache mode (expected \"vcpu\", \"vm\" or \"none\")")
    }
}

impl FromStr for CacheMode {
    type Err = ParseCacheModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CacheMode::ALL
            .into_iter()
            .find(|mode| mode.as_str() == s)
            .ok_or(ParseCacheModeError)
    }
}

/// Why a memslot could not be inserted or removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotError {
    ZeroSize,
    UnalignedGuestPhys(u64),
    UnalignedSize(u64),
    UnalignedHostPhys(u64),
    /// `guest_phys + size` does not fit in a u64.
    GuestEndOverflow {
        guest_phys: u64,
        size: u64,
    },
    /// `host_phys + size` does not fit in a u64.
    HostEndOverflow {
        host_phys: u64,
        size: u64,
    },
    /// The new slot overlaps this existing one.
    Overlap {
        id: u16,
        base_gfn: u64,
        end_gfn: u64,
    },
    /// All [`MAX_SLOTS`] slots are in use.
    Full,
    /// No slot has this id.
    NoSuchSlot(u16),
}

impl fmt::Display for SlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SlotError::ZeroSize => f.write_str("memslot size is zero"),
            SlotError::UnalignedGuestPhys(a) => {
                write!(f, "guest-physical address {a:#x} is not 4 KiB aligned")
            }
            SlotError::UnalignedSize(s) => {
                write!(f, "memslot size {s:#x} is not a multiple of 4 KiB")
            }
            SlotError::UnalignedHostPhys(a) => {
                write!(f, "host-physical address {a:#x} is not 4 KiB aligned")
            }
            SlotError::GuestEndOverflow { guest_phys, size } => write!(
                f,
                "guest-physical range {guest_phys:#x} + {size:#x} overflows the address space"
            ),
            SlotError::HostEndOverflow { host_phys, size } => write!(
                f,
                "host-physical range {host_phys:#x} + {size:#x} overflows the address space"
            ),
            SlotError::Overlap {
                id,
                base_gfn,
                end_gfn,
            } => write!(
                f,
                "memslot overlaps memslot {id} (guest-physical {:#x}..{:#x})",
                base_gfn << PAGE_SHIFT,
                end_gfn << PAGE_SHIFT
            ),
            SlotError::Full => write!(f, "all {MAX_SLOTS} memslots are in use"),
            SlotError::NoSuchSlot(id) => write!(f, "no memslot with id {id}"),
        }
    }
}

/// Lookup counters. Every lookup counts in exactly one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LookupStats {
    /// Found through the vCPU's own last-used index.
    pub vcpu_hits: u64,
    /// Found through the VM-wide last-used index.
    pub vm_hits: u64,
    /// Found by binary search.
    pub searches: u64,
    /// No slot contains the gfn.
    pub misses: u64,
}

impl LookupStats {
    pub const fn new() -> Self {
        Self {
            vcpu_hits: 0,
            vm_hits: 0,
            searches: 0,
            misses: 0,
        }
    }

    /// Adds `other`'s counts to these (to sum the vCPUs' stats).
    pub fn add(&mut self, other: &LookupStats) {
        self.vcpu_hits += other.vcpu_hits;
        self.vm_hits += other.vm_hits;
        self.searches += other.searches;
        self.misses += other.misses;
    }

    /// The counts gathered since `earlier` (a snapshot of the same counters).
    pub fn since(&self, earlier: &LookupStats) -> LookupStats {
        LookupStats {
            vcpu_hits: self.vcpu_hits - earlier.vcpu_hits,
            vm_hits: self.vm_hits - earlier.vm_hits,
            searches: self.searches - earlier.searches,
            misses: self.misses - earlier.misses,
        }
    }

    pub fn total(&self) -> u64 {
        self.vcpu_hits + self.vm_hits + self.searches + self.misses
    }
}

impl fmt::Display for LookupStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "vcpu_hits={} vm_hits={} searches={} misses={}",
            self.vcpu_hits, self.vm_hits, self.searches, self.misses
        )
    }
}

/// One vCPU's memslot cache (KVM: `vcpu->last_used_slot`) and its counters.
///
/// The hit path writes nothing: only lookups the cache did not answer are
/// counted (`searches`, `misses`); hits are the caller's lookup count less
/// those ([`VcpuSlotCache::stats`]). Aligned to a cache line so that no two
/// vCPUs' caches share one: the miss path writes it.
#[repr(align(64))]
#[derive(Debug, Clone, Default)]
pub struct VcpuSlotCache {
    /// Array position of the slot this vCPU found last. Only a hint: see the
    /// module docs on stale indexes.
    last_used: usize,
    /// Lookups the cache did not answer and a binary search did.
    pub searches: u64,
    /// Lookups no slot answered.
    pub misses: u64,
}

impl VcpuSlotCache {
    pub const fn new() -> Self {
        Self {
            last_used: 0,
            searches: 0,
            misses: 0,
        }
    }

    /// The cached array position (a hint, possibly stale).
    pub fn last_used(&self) -> usize {
        self.last_used
    }

    /// The counters by level, given the number of lookups made through this
    /// cache in `mode` (the caller counts them: in the kernel, one per EPT
    /// violation). Hits are `lookups - searches - misses`, credited to the
    /// level `mode` uses; in [`CacheMode::None`] there are none.
    pub fn stats(&self, lookups: u64, mode: CacheMode) -> LookupStats {
        let hits = lookups.saturating_sub(self.searches + self.misses);
        let (vcpu_hits, vm_hits) = match mode {
            CacheMode::Vcpu => (hits, 0),
            CacheMode::Vm => (0, hits),
            CacheMode::None => {
                debug_assert_eq!(hits, 0, "no cache, yet {hits} lookups were not counted");
                (0, 0)
            }
        };
        LookupStats {
            vcpu_hits,
            vm_hits,
            searches: self.searches,
            misses: self.misses,
        }
    }
}

/// A cache policy, chosen at compile time: which last-used index a lookup
/// tries before the binary search. [`Memslots::lookup_with`] is generic over
/// it so that the hot loop of a caller that knows its mode holds no `match`
/// on the mode (the kernel dispatches once per fault, in
/// [`Memslots::lookup_vcpu`]).
pub trait CachePolicy {
    /// The run-time name of this policy.
    const MODE: CacheMode;
}

/// [`CacheMode::Vcpu`]: the vCPU's own last-used index.
pub enum VcpuIndex {}
/// [`CacheMode::Vm`]: the VM-wide last-used index.
pub enum VmIndex {}
/// [`CacheMode::None`]: always search.
pub enum NoIndex {}

impl CachePolicy for VcpuIndex {
    const MODE: CacheMode = CacheMode::Vcpu;
}
impl CachePolicy for VmIndex {
    const MODE: CacheMode = CacheMode::Vm;
}
impl CachePolicy for NoIndex {
    const MODE: CacheMode = CacheMode::None;
}

/// Keeps a value alone on its cache line.
#[repr(align(64))]
struct CachePadded<T>(T);

/// The VM's memslots: a fixed array, sorted by `base_gfn`, with no overlaps.
pub struct Memslots {
    /// Number of slots in use: `slots[..len]`. The rest are `Memslot::empty()`.
    len: usize,
    mode: CacheMode,
    /// Ids in use, one bit per id (`MAX_SLOTS` <= 512 bits).
    used_ids: [u64; 8],
    /// Sorted ascending by `base_gfn`; `slots[..len]` do not overlap.
    slots: [Memslot; MAX_SLOTS],
    /// VM-wide last-used index (KVM: `kvm_memslots::last_used_slot`), on its
    /// own cache line so that writing it does not evict `len` and `mode`,
    /// which every lookup reads.
    vm_last_used: CachePadded<AtomicUsize>,
}

impl Memslots {
    /// No slots. Usable in a `static`.
    pub const fn new(mode: CacheMode) -> Self {
        Self {
            len: 0,
            mode,
            used_ids: [0; 8],
            slots: [const { Memslot::empty() }; MAX_SLOTS],
            vm_last_used: CachePadded(AtomicUsize::new(0)),
        }
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The slots, in ascending gfn order.
    pub fn iter(&self) -> core::slice::Iter<'_, Memslot> {
        self.slots[..self.len].iter()
    }

    /// The slot with this id. O(n): not for the fault path.
    pub fn get_by_id(&self, id: u16) -> Option<&Memslot> {
        self.iter().find(|slot| slot.id == id)
    }

    #[inline]
    pub fn mode(&self) -> CacheMode {
        self.mode
    }

    pub fn set_mode(&mut self, mode: CacheMode) {
        self.mode = mode;
    }

    /// Adds a slot mapping guest-physical `[guest_phys, guest_phys + size)` to
    /// host-physical `[host_phys, host_phys + size)`. Returns the new slot's id.
    pub fn insert(
        &mut self,
        guest_phys: u64,
        size: u64,
        host_phys: u64,
        flags: SlotFlags,
    ) -> Result<u16, SlotError> {
        if size == 0 {
            return Err(SlotError::ZeroSize);
        }
        if !guest_phys.is_multiple_of(PAGE_SIZE) {
            return Err(SlotError::UnalignedGuestPhys(guest_phys));
        }
        if !size.is_multiple_of(PAGE_SIZE) {
            return Err(SlotError::UnalignedSize(size));
        }
        if !host_phys.is_multiple_of(PAGE_SIZE) {
            return Err(SlotError::UnalignedHostPhys(host_phys));
        }
        if guest_phys.checked_add(size).is_none() {
            return Err(SlotError::GuestEndOverflow { guest_phys, size });
        }
        if host_phys.checked_add(size).is_none() {
            return Err(SlotError::HostEndOverflow { host_phys, size });
        }
        if self.len == MAX_SLOTS {
            return Err(SlotError::Full);
        }

        let base_gfn = guest_phys >> PAGE_SHIFT;
        let npages = size >> PAGE_SHIFT;
        let end_gfn = base_gfn + npages;
        // Insertion point: the first slot starting at or after the new one.
        // Only its two neighbours can overlap it, as the array is sorted and
        // overlap-free.
        let pos = self.slots[..self.len].partition_point(|s| s.base_gfn < base_gfn);
        let left = pos.checked_sub(1).map(|i| &self.slots[i]);
        let right = self.slots[..self.len].get(pos);
        let overlapping = left
            .filter(|s| s.end_gfn() > base_gfn)
            .or(right.filter(|s| s.base_gfn < end_gfn));
        if let Some(s) = overlapping {
            return Err(SlotError::Overlap {
                id: s.id,
                base_gfn: s.base_gfn,
                end_gfn: s.end_gfn(),
            });
        }

        let id = self.alloc_id();
        self.slots[self.len] = Memslot {
            base_gfn,
            npages,
            host_pfn: host_phys >> PAGE_SHIFT,
            flags: AtomicU32::new(flags.bits()),
            id,
        };
        // Move the new slot from the end to its sorted position.
        self.slots[pos..=self.len].rotate_right(1);
        self.len += 1;
        Ok(id)
    }

    /// Removes the slot with this id. Later slots move down one position;
    /// cached indexes that named them go stale (harmlessly, see module docs).
    pub fn remove(&mut self, id: u16) -> Result<(), SlotError> {
        let pos = self
            .iter()
            .position(|slot| slot.id == id)
            .ok_or(SlotError::NoSuchSlot(id))?;
        self.slots[pos..self.len].rotate_left(1);
        self.len -= 1;
        self.slots[self.len] = Memslot::empty();
        self.used_ids[usize::from(id) / 64] &= !(1 << (id % 64));
        Ok(())
    }

    /// Makes this array a copy of `other` (slots, flags as they are now,
    /// ids, mode); the VM-wide index starts at 0. For the inactive array of
    /// a live update (`mm::live`).
    pub fn copy_from(&mut self, other: &Memslots) {
        let n = self.len.max(other.len);
        for (d, s) in self.slots[..n].iter_mut().zip(&other.slots[..n]) {
            *d = Memslot {
                base_gfn: s.base_gfn,
                npages: s.npages,
                host_pfn: s.host_pfn,
                flags: AtomicU32::new(s.flags.load(Ordering::Acquire)),
                id: s.id,
            };
        }
        self.len = other.len;
        self.mode = other.mode;
        self.used_ids = other.used_ids;
        self.vm_last_used.0.store(0, Ordering::Relaxed);
    }

    /// Moves the slot with this id to guest-physical `guest_phys` (KVM's
    /// `KVM_MR_MOVE`): same size, same host frames, same id and flags. The
    /// slot's old gfns are unbacked afterwards and its contents appear at the
    /// new ones. Positions of other slots may shift (cached indexes go stale,
    /// harmlessly).
    pub fn move_slot(&mut self, id: u16, guest_phys: u64) -> Result<(), SlotError> {
        let pos = self
            .iter()
            .position(|slot| slot.id == id)
            .ok_or(SlotError::NoSuchSlot(id))?;
        if !guest_phys.is_multiple_of(PAGE_SIZE) {
            return Err(SlotError::UnalignedGuestPhys(guest_phys));
        }
        let npages = self.slots[pos].npages;
        let size = npages << PAGE_SHIFT;
        if guest_phys.checked_add(size).is_none() {
            return Err(SlotError::GuestEndOverflow { guest_phys, size });
        }
        let base_gfn = guest_phys >> PAGE_SHIFT;
        let end_gfn = base_gfn + npages;
        if let Some(s) = self
            .iter()
            .find(|s| s.id != id && s.base_gfn < end_gfn && base_gfn < s.end_gfn())
        {
            return Err(SlotError::Overlap {
                id: s.id,
                base_gfn: s.base_gfn,
                end_gfn: s.end_gfn(),
            });
        }
        // Out of the array, then back in at its new sorted position.
        self.slots[pos..self.len].rotate_left(1);
        self.slots[self.len - 1].base_gfn = base_gfn;
        let new_pos = self.slots[..self.len - 1].partition_point(|s| s.base_gfn < base_gfn);
        self.slots[new_pos..self.len].rotate_right(1);
        Ok(())
    }

    /// The smallest unused id. The caller has checked `len < MAX_SLOTS`, so
    /// one exists below `MAX_SLOTS`.
    fn alloc_id(&mut self) -> u16 {
        let (word, bits) = self
            .used_ids
            .iter_mut()
            .enumerate()
            .find(|(_, bits)| **bits != u64::MAX)
            .expect("len < MAX_SLOTS leaves an id free");
        let bit = bits.trailing_ones();
        *bits |= 1 << bit;
        let id = word * 64 + bit as usize;
        debug_assert!(id < MAX_SLOTS);
        id as u16
    }

    /// The hit path shared by every cached lookup: clamp the cached index
    /// without a branch, load that slot, compare the gfn with its range.
    #[inline(always)]
    fn cached_hit(&self, cached: usize, gfn: u64) -> Option<&Memslot> {
        self.view().cached_hit(cached, gfn)
    }

    /// Binary search: the slot with the greatest `base_gfn <= gfn`, if it
    /// contains `gfn`. Returns its array position too, for the caches.
    #[inline]
    fn search(&self, gfn: u64) -> Option<(usize, &Memslot)> {
        search_in(&self.slots, self.len, gfn)
    }

    /// Search, counting the result as a search or a miss.
    #[inline]
    fn search_counted(&self, gfn: u64, stats: &mut LookupStats) -> Option<(usize, &Memslot)> {
        let found = self.search(gfn);
        match found {
            Some(_) => stats.searches += 1,
            None => stats.misses += 1,
        }
        found
    }

    /// The VM-wide index, then a search that updates it.
    #[inline]
    fn lookup_vm_wide(&self, gfn: u64, stats: &mut LookupStats) -> Option<&Memslot> {
        // Relaxed: the index is a hint that is re-validated, and it orders
        // nothing else.
        let cached = self.vm_last_used.0.load(Ordering::Relaxed);
        if let Some(slot) = self.cached_hit(cached, gfn) {
            stats.vm_hits += 1;
            return Some(slot);
        }
        let (idx, slot) = self.search_counted(gfn, stats)?;
        self.vm_last_used.0.store(idx, Ordering::Relaxed);
        Some(slot)
    }

    /// The slot containing `gfn`, for a vCPU (KVM: `kvm_vcpu_gfn_to_memslot()`),
    /// in this array's run-time [`CacheMode`]: one `match`, then
    /// [`lookup_with`](Self::lookup_with).
    #[inline]
    pub fn lookup_vcpu(&self, gfn: u64, cache: &mut VcpuSlotCache) -> Option<&Memslot> {
        match self.mode {
            CacheMode::Vcpu => self.lookup_with::<VcpuIndex>(gfn, cache),
            CacheMode::Vm => self.lookup_with::<VmIndex>(gfn, cache),
            CacheMode::None => self.lookup_with::<NoIndex>(gfn, cache),
        }
    }

    /// The slot containing `gfn`, for a vCPU, with the cache policy `P`
    /// fixed at compile time (whatever [`mode`](Self::mode) says). See
    /// [`SlotsView::lookup_with`]; a loop should take the view once.
    #[inline(always)]
    pub fn lookup_with<P: CachePolicy>(
        &self,
        gfn: u64,
        cache: &mut VcpuSlotCache,
    ) -> Option<&Memslot> {
        self.view().lookup_with::<P>(gfn, cache)
    }

    /// What a lookup reads, in three words a caller keeps in registers: the
    /// array, the slot count and the VM-wide index.
    #[inline(always)]
    pub fn view(&self) -> SlotsView<'_> {
        SlotsView {
            slots: &self.slots,
            len: self.len,
            vm_last_used: &self.vm_last_used.0,
        }
    }

    /// The slot containing `gfn`, for callers without a vCPU (loader,
    /// dirty-log controller; KVM: `gfn_to_memslot()`): the VM-wide index, then
    /// a search that updates it. In [`CacheMode::None`], only the search.
    #[inline]
    pub fn lookup(&self, gfn: u64, stats: &mut LookupStats) -> Option<&Memslot> {
        match self.mode {
            CacheMode::Vcpu | CacheMode::Vm => self.lookup_vm_wide(gfn, stats),
            CacheMode::None => self.search_counted(gfn, stats).map(|(_, slot)| slot),
        }
    }
}

/// A vCPU's handle on the slot array for its lookups ([`Memslots::view`]).
///
/// The slot count is copied in, so a loop that holds a view keeps it in a
/// register instead of reloading it after every call (the array's atomics
/// make it memory the compiler cannot assume unchanged).
#[derive(Clone, Copy)]
pub struct SlotsView<'a> {
    slots: &'a [Memslot; MAX_SLOTS],
    len: usize,
    vm_last_used: &'a AtomicUsize,
}

impl<'a> SlotsView<'a> {
    /// The slot containing `gfn`, with the cache policy `P` fixed at compile
    /// time.
    ///
    /// With [`VcpuIndex`] this reads and writes only `cache` and the
    /// read-only slots, and a hit writes nothing at all: it is the masked
    /// index, one load of the slot and one compare. Misses go out of line. A
    /// gfn that no slot backs (MMIO) leaves the cache as it was.
    #[inline(always)]
    pub fn lookup_with<P: CachePolicy>(
        self,
        gfn: u64,
        cache: &mut VcpuSlotCache,
    ) -> Option<&'a Memslot> {
        match P::MODE {
            CacheMode::Vcpu => match self.cached_hit(cache.last_used, gfn) {
                Some(slot) => Some(slot),
                None => vcpu_miss(self.slots, self.len, gfn, cache),
            },
            CacheMode::Vm => {
                // Relaxed: the index is a hint that is re-validated, and it
                // orders nothing else.
                let cached = self.vm_last_used.load(Ordering::Relaxed);
                match self.cached_hit(cached, gfn) {
                    Some(slot) => Some(slot),
                    None => vm_miss(self.slots, self.len, self.vm_last_used, gfn, cache),
                }
            }
            CacheMode::None => search_miss(self.slots, self.len, gfn, cache),
        }
    }

    /// The number of slots.
    #[inline(always)]
    pub fn len(self) -> usize {
        self.len
    }

    /// Whether there are no slots.
    #[inline(always)]
    pub fn is_empty(self) -> bool {
        self.len == 0
    }

    /// The hit path shared by every cached lookup: clamp the cached index
    /// without a branch, load that slot, compare the gfn with its range.
    #[inline(always)]
    fn cached_hit(self, cached: usize, gfn: u64) -> Option<&'a Memslot> {
        let idx = index_nospec(cached, self.len);
        // SAFETY: `index_nospec` returns `cached` if `cached < len`, else 0.
        // `len <= MAX_SLOTS` and `MAX_SLOTS > 0`, so `idx < MAX_SLOTS` either
        // way. Unchecked, so no bounds-check branch on the index follows the
        // mask. When `len == 0`, slot 0 is `Memslot::empty()`, which contains
        // no gfn.
        let slot = unsafe { self.slots.get_unchecked(idx) };
        if slot.contains(gfn) {
            Some(slot)
        } else {
            None
        }
    }
}

/// Binary search of `slots[..len]`: the slot with the greatest
/// `base_gfn <= gfn`, if it contains `gfn`, and its array position.
#[inline]
fn search_in(slots: &[Memslot], len: usize, gfn: u64) -> Option<(usize, &Memslot)> {
    let slots = &slots[..len];
    let after = slots.partition_point(|s| s.base_gfn <= gfn);
    let idx = after.checked_sub(1)?;
    let slot = &slots[idx];
    slot.contains(gfn).then_some((idx, slot))
}

/// The vCPU index missed: search, and remember where the slot was.
#[cold]
#[inline(never)]
fn vcpu_miss<'a>(
    slots: &'a [Memslot; MAX_SLOTS],
    len: usize,
    gfn: u64,
    cache: &mut VcpuSlotCache,
) -> Option<&'a Memslot> {
    match search_in(slots, len, gfn) {
        Some((idx, slot)) => {
            cache.searches += 1;
            cache.last_used = idx;
            Some(slot)
        }
        None => {
            cache.misses += 1;
            None
        }
    }
}

/// The VM-wide index missed: search, and update the shared index.
#[inline(never)]
fn vm_miss<'a>(
    slots: &'a [Memslot; MAX_SLOTS],
    len: usize,
    vm_last_used: &AtomicUsize,
    gfn: u64,
    cache: &mut VcpuSlotCache,
) -> Option<&'a Memslot> {
    match search_in(slots, len, gfn) {
        Some((idx, slot)) => {
            cache.searches += 1;
            vm_last_used.store(idx, Ordering::Relaxed);
            Some(slot)
        }
        None => {
            cache.misses += 1;
            None
        }
    }
}

/// No cache: search.
#[inline(never)]
fn search_miss<'a>(
    slots: &'a [Memslot; MAX_SLOTS],
    len: usize,
    gfn: u64,
    cache: &mut VcpuSlotCache,
) -> Option<&'a Memslot> {
    match search_in(slots, len, gfn) {
        Some((_, slot)) => {
            cache.searches += 1;
            Some(slot)
        }
        None => {
            cache.misses += 1;
            None
        }
    }
}

impl Default for Memslots {
    fn default() -> Self {
        Self::new(CacheMode::default())
    }
}

impl fmt::Debug for Memslots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Memslots")
            .field("mode", &self.mode)
            .field("vm_last_used", &self.vm_last_used.0)
            .field("slots", &&self.slots[..self.len])
            .finish()
    }
}

/// `index` if `index < len`, else 0, computed without a branch.
///
/// Spectre v1: a cached slot index may be stale, or steered by a guest. If the
/// bounds check were a branch, the CPU could predict it "in range" and load
/// past the array under speculation, leaving a trace in the cache. A clamp
/// made by a data dependency has no prediction to get wrong: the load that
/// follows uses an in-range index even speculatively. This is Linux's
/// `array_index_nospec()` (`include/linux/nospec.h`).
///
/// x86: `cmp index, len` then `cmovae index, zero`. CMOVcc is a data
/// dependency on the flags, never predicted (the property LLVM's speculative
/// load hardening is built on; Intel's bounds-check-bypass guidance lists it
/// with LFENCE as a way to clamp an index). Linux's x86 form,
/// `cmp`/`sbb mask, mask`/`and`, is just as safe, but `sbb r, r` is not
/// dependency-breaking on Intel cores: it reads the mask register's old
/// value, which chained every lookup of a loop to the one before (measured
/// 1.5x a bare cached lookup, against 0.92x with `cmov`). The asm is opaque
/// to the compiler, so it cannot turn the clamp back into a branch.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn index_nospec(index: usize, len: usize) -> usize {
    let clamped: usize;
    // SAFETY: two register-only instructions; they touch no memory and no
    // stack, and clobber only the flags, which `asm!` assumes clobbered.
    unsafe {
        core::arch::asm!(
            "cmp {index}, {len}",
            "cmovae {index}, {zero}",
            index = inout(reg) index => clamped,
            len = in(reg) len,
            zero = in(reg) 0usize,
            options(pure, nomem, nostack),
        );
    }
    clamped
}

/// [`index_nospec`] without x86: Linux's generic mask.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub fn index_nospec(index: usize, len: usize) -> usize {
    index & index_mask_nospec(index, len)
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn index_mask_nospec(index: usize, len: usize) -> usize {
    index_mask_generic(index, len)
}

/// Linux's generic `array_index_mask_nospec()` (`include/linux/nospec.h`):
/// `~(long)(index | (size - 1UL - index)) >> (BITS_PER_LONG - 1)`. The sign
/// bit of `index | (len - 1 - index)` is clear exactly when
/// `index <= len - 1`; the arithmetic shift spreads it to a mask. Valid for
/// `index, len <= isize::MAX`, as in Linux (ours are < `MAX_SLOTS`, or an
/// out-of-range index, which gives 0 as it should).
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline(always)]
fn index_mask_generic(index: usize, len: usize) -> usize {
    let bits = index | len.wrapping_sub(1).wrapping_sub(index);
    (!(bits as isize) >> (usize::BITS - 1)) as usize
}

/// Probe for the disassembly check (`xtask nospec`): exactly
/// [`index_nospec`].
#[no_mangle]
#[inline(never)]
pub extern "C" fn hv_probe_index_nospec(index: usize, len: usize) -> usize {
    index_nospec(index, len)
}

/// Probe for the disassembly check (`xtask nospec`): exactly
/// [`Memslots::lookup_with`]`::<VcpuIndex>` (its hit path inline, the miss
/// path a call), returning whether a slot was found.
#[no_mangle]
#[inline(never)]
pub extern "C" fn hv_probe_lookup_vcpu_hit(
    slots: &Memslots,
    gfn: u64,
    cache: &mut VcpuSlotCache,
) -> bool {
    slots.lookup_with::<VcpuIndex>(gfn, cache).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    fn slots_with(mode: CacheMode, ranges: &[(u64, u64)]) -> Memslots {
        let mut slots = Memslots::new(mode);
        for &(gpa, size) in ranges {
            slots
                .insert(gpa, size, gpa + 0x1_0000_0000, SlotFlags::empty())
                .unwrap();
        }
        slots
    }

    fn gfn(gpa: u64) -> u64 {
        gpa / PAGE_SIZE
    }

    #[test]
    fn usable_in_a_static() {
        static SLOTS: Memslots = Memslots::new(CacheMode::Vm);
        assert!(SLOTS.is_empty());
        assert_eq!(SLOTS.mode(), CacheMode::Vm);
        assert!(SLOTS.lookup(0, &mut LookupStats::new()).is_none());
    }

    #[test]
    fn cache_line_layout() {
        assert_eq!(core::mem::align_of::<VcpuSlotCache>(), 64);
        assert_eq!(core::mem::size_of::<VcpuSlotCache>(), 64);
        assert_eq!(core::mem::size_of::<CachePadded<AtomicUsize>>(), 64);
    }

    #[test]
    fn insert_keeps_sorted_and_assigns_smallest_free_id() {
        let mut slots = Memslots::default();
        assert_eq!(
            slots.insert(8 * MIB, 2 * MIB, 0x40_0000, SlotFlags::empty()),
            Ok(0)
        );
        assert_eq!(slots.insert(0, MIB, 0x80_0000, SlotFlags::READONLY), Ok(1));
        assert_eq!(
            slots.insert(4 * MIB, MIB, 0xc0_0000, SlotFlags::empty()),
            Ok(2)
        );
        let bases: Vec<u64> = slots.iter().map(Memslot::base_gfn).collect();
        assert_eq!(bases, [0, gfn(4 * MIB), gfn(8 * MIB)]);
        let ids: Vec<u16> = slots.iter().map(Memslot::id).collect();
        assert_eq!(ids, [1, 2, 0]);

        slots.remove(1).unwrap();
        assert_eq!(slots.len(), 2);
        assert!(slots.get_by_id(1).is_none());
        assert_eq!(slots.insert(16 * MIB, MIB, 0, SlotFlags::empty()), Ok(1));
        assert_eq!(slots.get_by_id(1).unwrap().base_gfn(), gfn(16 * MIB));

        let slot = slots.get_by_id(0).unwrap();
        assert_eq!(slot.npages(), 512);
        assert_eq!(slot.end_gfn(), gfn(10 * MIB));
        assert_eq!(slot.host_pfn(), 0x400);
        assert_eq!(slot.host_phys(gfn(8 * MIB) + 3), 0x40_0000 + 3 * PAGE_SIZE);
    }

    #[test]
    fn insertion_errors() {
        let mut slots = slots_with(CacheMode::Vcpu, &[(4 * MIB, 2 * MIB)]);
        let e = SlotFlags::empty();
        assert_eq!(slots.insert(0, 0, 0, e), Err(SlotError::ZeroSize));
        assert_eq!(
            slots.insert(0x1001, 4096, 0, e),
            Err(SlotError::UnalignedGuestPhys(0x1001))
        );
        assert_eq!(
            slots.insert(0, 4095, 0, e),
            Err(SlotError::UnalignedSize(4095))
        );
        assert_eq!(
            slots.insert(0, 4096, 0x10, e),
            Err(SlotError::UnalignedHostPhys(0x10))
        );
        let top = u64::MAX - 4095; // the last page
        assert!(slots.insert(top, 4096, 0, e).is_err()); // end would be 2^64
        assert_eq!(
            slots.insert(top, 4096, 0, e),
            Err(SlotError::GuestEndOverflow {
                guest_phys: top,
                size: 4096
            })
        );
        assert_eq!(
            slots.insert(0, 8192, top, e),
            Err(SlotError::HostEndOverflow {
                host_phys: top,
                size: 8192
            })
        );

        let existing = SlotError::Overlap {
            id: 0,
            base_gfn: gfn(4 * MIB),
            end_gfn: gfn(6 * MIB),
        };
        // Same start, inside, straddling either edge, covering.
        for (gpa, size) in [
            (4 * MIB, 4096),
            (5 * MIB, 4096),
            (3 * MIB, 2 * MIB),
            (6 * MIB - 4096, 2 * MIB),
            (0, 16 * MIB),
        ] {
            assert_eq!(
                slots.insert(gpa, size, 0, e),
                Err(existing),
                "{gpa:#x}+{size:#x}"
            );
        }
        // Touching either edge is fine.
        assert_eq!(slots.insert(6 * MIB, MIB, 0, e), Ok(1));
        assert_eq!(slots.insert(3 * MIB, MIB, 0, e), Ok(2));
        // Reports the overlapped slot.
        assert_eq!(
            slots.insert(6 * MIB, 4096, 0, e),
            Err(SlotError::Overlap {
                id: 1,
                base_gfn: gfn(6 * MIB),
                end_gfn: gfn(7 * MIB)
            })
        );

        assert_eq!(slots.remove(7), Err(SlotError::NoSuchSlot(7)));
        assert_eq!(slots.len(), 3);
    }

    #[test]
    fn capacity() {
        let mut slots = Memslots::default();
        for i in 0..MAX_SLOTS as u64 {
            assert_eq!(
                slots.insert(i * PAGE_SIZE, PAGE_SIZE, 0, SlotFlags::empty()),
                Ok(i as u16)
            );
        }
        let past = MAX_SLOTS as u64 * PAGE_SIZE;
        assert_eq!(
            slots.insert(past, PAGE_SIZE, 0, SlotFlags::empty()),
            Err(SlotError::Full)
        );
        slots.remove(100).unwrap();
        assert_eq!(
            slots.insert(past, PAGE_SIZE, 0, SlotFlags::empty()),
            Ok(100)
        );
        assert_eq!(slots.iter().last().unwrap().id(), 100);
    }

    #[test]
    fn errors_display() {
        let text = SlotError::Overlap {
            id: 3,
            base_gfn: 0x10,
            end_gfn: 0x20,
        }
        .to_string();
        assert_eq!(
            text,
            "memslot overlaps memslot 3 (guest-physical 0x10000..0x20000)"
        );
        assert_eq!(SlotError::Full.to_string(), "all 509 memslots are in use");
        assert!(SlotError::UnalignedHostPhys(0x10)
            .to_string()
            .contains("0x10"));
    }

    #[test]
    fn flags_are_atomic_and_independent() {
        let slots = slots_with(CacheMode::Vcpu, &[(0, MIB)]);
        let slot = slots.get_by_id(0).unwrap();
        assert_eq!(slot.flags(), SlotFlags::empty());
        assert_eq!(slot.insert_flags(SlotFlags::DIRTY_LOG), SlotFlags::empty());
        assert_eq!(slot.insert_flags(SlotFlags::READONLY), SlotFlags::DIRTY_LOG);
        assert_eq!(slot.remove_flags(SlotFlags::DIRTY_LOG), SlotFlags::all());
        assert_eq!(slot.flags(), SlotFlags::READONLY);
        assert_eq!(slot.set_flags(SlotFlags::DIRTY_LOG), SlotFlags::READONLY);
        assert_eq!(slot.flags(), SlotFlags::DIRTY_LOG);
    }

    #[test]
    fn cache_mode_names() {
        for mode in CacheMode::ALL {
            assert_eq!(mode.to_string().parse(), Ok(mode));
        }
        assert_eq!(CacheMode::default(), CacheMode::Vcpu);
        assert_eq!("VCPU".parse::<CacheMode>(), Err(ParseCacheModeError));
    }

    /// Three slots with a hole between the 2nd and 3rd: gfn ranges
    /// [0, 256), [256, 512), [1024, 1280).
    fn three() -> [(u64, u64); 3] {
        [(0, MIB), (MIB, MIB), (4 * MIB, MIB)]
    }

    fn stats(vcpu_hits: u64, vm_hits: u64, searches: u64, misses: u64) -> LookupStats {
        LookupStats {
            vcpu_hits,
            vm_hits,
            searches,
            misses,
        }
    }

    #[test]
    fn vcpu_mode_levels_and_stats() {
        let slots = slots_with(CacheMode::Vcpu, &three());
        let mut a = VcpuSlotCache::new();
        let mut b = VcpuSlotCache::new();
        // Cache starts at index 0: slot 0 hits at once.
        assert_eq!(slots.lookup_vcpu(5, &mut a).unwrap().base_gfn(), 0);
        assert_eq!(a.stats(1, CacheMode::Vcpu), stats(1, 0, 0, 0));
        // Another slot: search, which updates only this vCPU's index.
        assert_eq!(slots.lookup_vcpu(1024, &mut a).unwrap().base_gfn(), 1024);
        assert_eq!(a.stats(2, CacheMode::Vcpu), stats(1, 0, 1, 0));
        assert_eq!(a.last_used(), 2);
        assert_eq!(slots.vm_last_used.0.load(Ordering::Relaxed), 0);
        assert_eq!(slots.lookup_vcpu(1279, &mut a).unwrap().base_gfn(), 1024);
        assert_eq!(a.stats(3, CacheMode::Vcpu), stats(2, 0, 1, 0));
        // An unbacked gfn (the hole, past the end) misses and keeps the cache.
        assert!(slots.lookup_vcpu(600, &mut a).is_none());
        assert!(slots.lookup_vcpu(1280, &mut a).is_none());
        assert_eq!(a.stats(5, CacheMode::Vcpu), stats(2, 0, 1, 2));
        assert_eq!(a.last_used(), 2);
        // Caches are independent.
        assert_eq!(slots.lookup_vcpu(300, &mut b).unwrap().base_gfn(), 256);
        assert_eq!(b.stats(1, CacheMode::Vcpu), stats(0, 0, 1, 0));
        assert_eq!((a.last_used(), b.last_used()), (2, 1));
        assert_eq!(a.stats(5, CacheMode::Vcpu).total(), 5);
    }

    #[test]
    fn vm_mode_levels_and_stats() {
        let slots = slots_with(CacheMode::Vm, &three());
        let mut a = VcpuSlotCache::new();
        let mut b = VcpuSlotCache::new();
        assert_eq!(slots.lookup_vcpu(5, &mut a).unwrap().base_gfn(), 0);
        assert_eq!(a.stats(1, CacheMode::Vm), stats(0, 1, 0, 0));
        assert_eq!(slots.lookup_vcpu(300, &mut a).unwrap().base_gfn(), 256);
        assert_eq!(a.stats(2, CacheMode::Vm), stats(0, 1, 1, 0));
        // The VM-wide index moved, the vCPU's did not; b profits from a's search.
        assert_eq!(slots.vm_last_used.0.load(Ordering::Relaxed), 1);
        assert_eq!(a.last_used(), 0);
        assert_eq!(slots.lookup_vcpu(257, &mut b).unwrap().base_gfn(), 256);
        assert_eq!(b.stats(1, CacheMode::Vm), stats(0, 1, 0, 0));
        assert!(slots.lookup_vcpu(512, &mut b).is_none());
        assert_eq!(b.stats(2, CacheMode::Vm), stats(0, 1, 0, 1));
        assert_eq!(slots.vm_last_used.0.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn none_mode_always_searches() {
        let slots = slots_with(CacheMode::None, &three());
        let mut a = VcpuSlotCache::new();
        for _ in 0..3 {
            assert_eq!(slots.lookup_vcpu(5, &mut a).unwrap().base_gfn(), 0);
        }
        assert!(slots.lookup_vcpu(0x1_0000, &mut a).is_none());
        assert_eq!(a.stats(4, CacheMode::None), stats(0, 0, 3, 1));
        let mut s = LookupStats::new();
        assert_eq!(slots.lookup(1100, &mut s).unwrap().base_gfn(), 1024);
        assert_eq!(s, stats(0, 0, 1, 0));
        assert_eq!(slots.vm_last_used.0.load(Ordering::Relaxed), 0);
        assert_eq!(a.last_used(), 0);
    }

    #[test]
    fn lookup_without_vcpu_uses_vm_index() {
        for mode in [CacheMode::Vcpu, CacheMode::Vm] {
            let slots = slots_with(mode, &three());
            let mut s = LookupStats::new();
            assert_eq!(slots.lookup(1, &mut s).unwrap().id(), 0);
            assert_eq!(slots.lookup(1030, &mut s).unwrap().id(), 2);
            assert_eq!(slots.lookup(1031, &mut s).unwrap().id(), 2);
            assert!(slots.lookup(700, &mut s).is_none());
            assert_eq!(s, stats(0, 2, 1, 1), "{mode}");
            assert_eq!(slots.vm_last_used.0.load(Ordering::Relaxed), 2);
        }
        let mut total = stats(1, 2, 3, 4);
        total.add(&stats(10, 20, 30, 40));
        assert_eq!(total, stats(11, 22, 33, 44));
    }

    #[test]
    fn empty_slots_never_match() {
        for mode in CacheMode::ALL {
            let slots = Memslots::new(mode);
            let mut cache = VcpuSlotCache::new();
            let mut s = LookupStats::new();
            for g in [0, 1, u64::MAX] {
                assert!(slots.lookup_vcpu(g, &mut cache).is_none());
                assert!(slots.lookup(g, &mut s).is_none());
            }
            assert_eq!(cache.stats(3, mode), stats(0, 0, 0, 3));
        }
    }

    #[test]
    fn stale_cached_index_is_revalidated() {
        let mut slots = slots_with(CacheMode::Vcpu, &three());
        let mut cache = VcpuSlotCache::new();
        let mut s = LookupStats::new();
        // Cache position 2 (gfn 1024..), VM-wide too.
        assert_eq!(slots.lookup_vcpu(1024, &mut cache).unwrap().id(), 2);
        assert_eq!(slots.lookup(1024, &mut s).unwrap().id(), 2);
        assert_eq!(cache.last_used(), 2);

        // A slot inserted in front shifts slot id 2 to position 3; position 2
        // now holds the new slot, which must not answer for gfn 1024.
        let new = slots.insert(2 * MIB, MIB, 0, SlotFlags::empty()).unwrap();
        assert_eq!(slots.lookup_vcpu(1024, &mut cache).unwrap().id(), 2);
        assert_eq!(cache.searches, 2);
        assert_eq!(cache.last_used(), 3);
        assert_eq!(slots.lookup(1024, &mut s).unwrap().id(), 2);
        assert_eq!(s.searches, 2);

        // The cached position now names the last slot; remove a slot in front
        // of it, and the index points past `len`: masked to 0, re-validated.
        slots.remove(0).unwrap();
        assert_eq!(slots.len(), 3);
        assert!(slots.lookup_vcpu(5, &mut cache).is_none()); // gfn 5 is gone
        assert_eq!(slots.lookup_vcpu(1024, &mut cache).unwrap().id(), 2);
        assert_eq!(cache.last_used(), 2);
        assert_eq!(slots.lookup(600, &mut s).unwrap().id(), new);

        // Remove the cached slot itself: its gfns must miss.
        slots.remove(2).unwrap();
        assert!(slots.lookup_vcpu(1024, &mut cache).is_none());
        assert_eq!(slots.lookup_vcpu(600, &mut cache).unwrap().id(), new);
        slots.remove(1).unwrap();
        slots.remove(new).unwrap();
        assert!(slots.is_empty());
        assert!(slots.lookup_vcpu(600, &mut cache).is_none());
        assert!(slots.lookup(600, &mut s).is_none());
    }

    #[test]
    fn index_nospec_clamps() {
        for f in [index_nospec as fn(usize, usize) -> usize, |i, l| {
            i & index_mask_generic(i, l)
        }] {
            assert_eq!(f(0, 1), 0);
            assert_eq!(f(3, 4), 3);
            assert_eq!(f(508, MAX_SLOTS), 508);
            assert_eq!(f(4, 4), 0); // at len
            assert_eq!(f(5, 4), 0);
            assert_eq!(f(1 << 40, 4), 0); // far out of range
            assert_eq!(f(0, 0), 0); // len 0
            assert_eq!(f(7, 0), 0);
            assert_eq!(f(usize::MAX, 4), 0);
            assert_eq!(f(usize::MAX, MAX_SLOTS), 0);
            assert_eq!(f(usize::MAX, usize::MAX), 0);
            assert_eq!(
                f(isize::MAX as usize - 1, isize::MAX as usize),
                isize::MAX as usize - 1
            );
        }
        // The x86 form has no isize::MAX limit (the generic one, like Linux's,
        // does).
        assert_eq!(index_nospec(5, usize::MAX), 5);
        assert_eq!(index_nospec(usize::MAX - 1, usize::MAX), usize::MAX - 1);
        assert_eq!(hv_probe_index_nospec(2, 3), 2);
        assert_eq!(hv_probe_index_nospec(3, 3), 0);
    }

    #[test]
    fn probe_hit_path() {
        let slots = slots_with(CacheMode::Vcpu, &three());
        let mut cache = VcpuSlotCache::new();
        assert!(hv_probe_lookup_vcpu_hit(&slots, 3, &mut cache));
        assert_eq!((cache.searches, cache.misses), (0, 0));
        assert!(hv_probe_lookup_vcpu_hit(&slots, 300, &mut cache)); // search
        assert_eq!((cache.last_used(), cache.searches), (1, 1));
        assert!(!hv_probe_lookup_vcpu_hit(&slots, 600, &mut cache)); // the hole
        assert_eq!(cache.misses, 1);
        cache.last_used = 1000; // out of range: masked to 0
        assert!(hv_probe_lookup_vcpu_hit(&slots, 3, &mut cache));
        assert_eq!(cache.stats(5, CacheMode::Vcpu), stats(3, 0, 1, 1));
    }

    /// The reference: a linear scan over (base_gfn, npages, id).
    fn model_find(model: &[(u64, u64, u16)], gfn: u64) -> Option<u16> {
        model
            .iter()
            .find(|&&(base, n, _)| gfn >= base && gfn < base + n)
            .map(|&(_, _, id)| id)
    }

    /// Slots laid out from (gap, npages) pairs, in gfns.
    fn layout(parts: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let mut next = 0;
        parts
            .iter()
            .map(|&(gap, n)| {
                let base = next + gap;
                next = base + n;
                (base, n)
            })
            .collect()
    }

    /// Every slot edge, its neighbours, and random gfns over the span.
    fn probe_gfns(ranges: &[(u64, u64)], random: &[u64]) -> Vec<u64> {
        let span = ranges.last().map_or(1, |&(b, n)| b + n + 2);
        let mut gfns: Vec<u64> = random.iter().map(|r| r % span).collect();
        for &(b, n) in ranges {
            gfns.extend([b.wrapping_sub(1), b, b + 1, b + n - 1, b + n]);
        }
        gfns.extend([0, u64::MAX]);
        gfns
    }

    proptest! {
        #[test]
        fn lookups_match_linear_scan(
            parts in prop::collection::vec((0u64..4, 1u64..6), 0..40),
            order_seed in any::<u64>(),
            removals in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
            random in prop::collection::vec(any::<u64>(), 0..64),
            cache_picks in prop::collection::vec(0usize..3, 1..16),
        ) {
            let ranges = layout(&parts);
            // Insert in a scrambled order so positions shift under the caches.
            let mut order: Vec<usize> = (0..ranges.len()).collect();
            let mut x = order_seed | 1;
            for i in (1..order.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                order.swap(i, (x % (i as u64 + 1)) as usize);
            }

            let mut slots = Memslots::new(CacheMode::Vcpu);
            let mut model: Vec<(u64, u64, u16)> = Vec::new();
            let mut caches = [VcpuSlotCache::new(), VcpuSlotCache::new(), VcpuSlotCache::new()];
            let mut vm_stats = LookupStats::new();
            let mut lookups = [0u64; 3];
            let mut vm_lookups = 0u64;

            let mut check = |slots: &mut Memslots, model: &[(u64, u64, u16)]| {
                let all: Vec<(u64, u64)> = model.iter().map(|&(b, n, _)| (b, n)).collect();
                let gfns = probe_gfns(&all, &random);
                for mode in CacheMode::ALL {
                    slots.set_mode(mode);
                    for (i, &g) in gfns.iter().enumerate() {
                        let want = model_find(model, g);
                        let c = cache_picks[i % cache_picks.len()];
                        let got = slots.lookup_vcpu(g, &mut caches[c]);
                        lookups[c] += 1;
                        prop_assert_eq!(got.map(Memslot::id), want, "lookup_vcpu {} gfn {:#x}", mode, g);
                        if let Some(s) = got {
                            prop_assert!(s.contains(g));
                        }
                        prop_assert_eq!(slots.lookup(g, &mut vm_stats).map(Memslot::id), want);
                        vm_lookups += 1;
                    }
                }
                Ok(())
            };

            for (step, &i) in order.iter().enumerate() {
                let (b, n) = ranges[i];
                let id = slots.insert(b * PAGE_SIZE, n * PAGE_SIZE, b * PAGE_SIZE, SlotFlags::empty());
                prop_assert!(id.is_ok());
                model.push((b, n, id.unwrap()));
                if step % 8 == 7 {
                    check(&mut slots, &model)?;
                }
            }
            check(&mut slots, &model)?;
            for r in &removals {
                if model.is_empty() {
                    break;
                }
                let (_, _, id) = model.remove(r.index(model.len()));
                prop_assert!(slots.remove(id).is_ok());
                check(&mut slots, &model)?;
            }

            prop_assert!(slots.iter().zip(slots.iter().skip(1)).all(|(a, b)| a.end_gfn() <= b.base_gfn()));
            for (c, n) in caches.iter().zip(lookups) {
                prop_assert!(c.searches + c.misses <= n);
            }
            prop_assert_eq!(vm_stats.total(), vm_lookups);
        }
    }
}
