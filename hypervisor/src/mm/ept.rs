//! EPT paging structures, shared by all vCPUs of a VM.
//!
//! Intel SDM Vol. 3C, chapter 29 "VMX Support for Address Translation"
//! (section numbers of the 2023+ editions; older editions call it chapter 28):
//! - §29.3.2 "EPT Translation Mechanism": a 4-level walk of 512-entry tables
//!   indexed by guest-physical bits 47:39, 38:30, 29:21 and 20:12; the entry
//!   formats are Tables 29-1 to 29-6.
//! - §29.3.3.1 "EPT Misconfigurations": write without read is a
//!   misconfiguration; reserved bits must be 0.
//! - §29.3.7 "EPT and Memory Typing": bits 5:3 of a leaf give its memory type.
//! - §29.4 "Caching Translation Information": the CPU caches translations;
//!   changing an entry does not take effect until INVEPT.
//! - The EPTP is described in Vol. 3C §25.6.11 "Extended-Page-Table Pointer
//!   (EPTP)".
//!
//! The EPT starts empty and every mapping is made on an EPT-violation exit.
//! Several vCPUs may fault and map on the same EPT at the same time, so no
//! lock guards it: each entry is an [`AtomicU64`]; empty entries are filled
//! with `compare_exchange(0, ..)`, and permissions change with `fetch_and` /
//! `fetch_or`. Nothing is ever unmapped while the EPT lives, so a table, once
//! linked, stays valid until [`Ept`] is dropped; that is what makes the
//! lock-free walk sound.
//!
//! **TLBs.** No function here flushes anything. After [`Ept::write_protect`],
//! [`Ept::write_protect_range`] (which may also split 2 MiB leaves) or a
//! permission change, the caller must INVEPT (single-context, with this
//! [`Ept::eptp`]) on every core that may have cached translations for this EPT
//! before it relies on the change. Adding a mapping or a permission
//! (`map_*`, [`Ept::make_writable`]) needs no flush: the CPU does not cache
//! not-present or faulting translations (§29.4.1), though a spurious
//! EPT violation may still arrive and must be tolerated.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use bitflags::bitflags;

/// Guest-physical address width handled by a 4-level walk (§29.3.2).
pub const GPA_BITS: u32 = 48;
/// First guest-physical address a 4-level EPT cannot translate.
pub const GPA_LIMIT: u64 = 1 << GPA_BITS;
/// The entry formats hold physical addresses up to bit 51 (Tables 29-1..29-6).
/// The real limit is MAXPHYADDR (CPUID.80000008H:EAX bits 7:0); the kernel must
/// only hand out frames below it.
pub const HPA_LIMIT: u64 = 1 << 52;

/// 4 KiB.
pub const SIZE_4K: u64 = 1 << 12;
/// 2 MiB.
pub const SIZE_2M: u64 = 1 << 21;
/// Entries per paging structure.
pub const ENTRIES: usize = 512;

// Entry bits (§29.3.2, Tables 29-1..29-6).
const E_READ: u64 = 1 << 0;
const E_WRITE: u64 = 1 << 1;
const E_EXEC: u64 = 1 << 2;
const E_RWX: u64 = E_READ | E_WRITE | E_EXEC;
/// Bits 5:3 of a leaf: EPT memory type (§29.3.7).
const E_MEMTYPE_SHIFT: u32 = 3;
/// Bit 7 of a PDE: the entry maps a 2 MiB page (Table 29-4).
const E_LARGE: u64 = 1 << 7;
/// Bits 8 and 9: accessed / dirty, only written by the CPU when EPTP bit 6 is
/// set, which [`Ept::eptp`] does not do.
const E_ACCESSED: u64 = 1 << 8;
const E_DIRTY: u64 = 1 << 9;
/// Bits 51:12: physical address of the next table or of a 4 KiB page.
const E_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Bits 51:21: physical address of a 2 MiB page (Table 29-4).
const E_ADDR_MASK_2M: u64 = 0x000f_ffff_ffe0_0000;

/// Memory type write-back (§29.3.7; also the EPTP encoding, §25.6.11).
pub const MEMTYPE_WB: u64 = 6;

/// Bits of a leaf holding its attributes (everything but the address, the
/// page-size bit and the A/D flags); a split copies them to every 4 KiB leaf.
const E_LEAF_ATTRS: u64 = !(E_ADDR_MASK | E_LARGE | E_ACCESSED | E_DIRTY);

bitflags! {
    /// Access rights of a leaf: bits 2:0 of an EPT entry (§29.3.2).
    ///
    /// `WRITE` without `READ` is an EPT misconfiguration (§29.3.3.1) and is
    /// refused. `EXEC` alone (execute-only) is accepted here but is only legal
    /// when IA32_VMX_EPT_VPID_CAP bit 0 is set; the kernel must check that
    /// before asking for it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct EptPerms: u64 {
        /// Bit 0: reads allowed.
        const READ = E_READ;
        /// Bit 1: writes allowed.
        const WRITE = E_WRITE;
        /// Bit 2: instruction fetches allowed.
        const EXEC = E_EXEC;
    }
}

impl EptPerms {
    /// Read, write and execute.
    pub const RWX: Self = Self::all();

    fn is_valid_leaf(self) -> bool {
        !self.is_empty() && (!self.contains(Self::WRITE) || self.contains(Self::READ))
    }
}

/// Size of the page a leaf maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PageSize {
    /// A 4 KiB page (PTE, Table 29-6).
    Size4K,
    /// A 2 MiB page (PDE with bit 7 set, Table 29-4).
    Size2M,
}

impl PageSize {
    /// Size in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => SIZE_4K,
            PageSize::Size2M => SIZE_2M,
        }
    }
}

/// Why a mapping was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EptError {
    /// `gpa` or `hpa` is not aligned to the page size asked for.
    Misaligned {
        /// The guest-physical address asked for.
        gpa: u64,
        /// The host-physical address asked for.
        hpa: u64,
        /// The page size asked for.
        size: PageSize,
    },
    /// The guest-physical address is not below [`GPA_LIMIT`].
    GpaTooWide(u64),
    /// The host-physical address is not below [`HPA_LIMIT`].
    HpaTooWide(u64),
    /// Empty, or write without read (§29.3.3.1).
    InvalidPerms(EptPerms),
    /// [`EptMemory::alloc_table`] returned `None`. Tables already linked stay
    /// linked (empty but valid), so the EPT is consistent and a retry may
    /// succeed.
    OutOfMemory,
    /// A mapping of another size covers `gpa`: a 2 MiB leaf where a 4 KiB
    /// page was asked for, or a page table where a 2 MiB leaf was asked for.
    Conflict {
        /// The guest-physical address asked for.
        gpa: u64,
        /// Size of the leaf or table already there (`Size4K` = a page table).
        existing: PageSize,
    },
}

impl fmt::Display for EptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EptError::Misaligned { gpa, hpa, size } => write!(
                f,
                "EPT: gpa {gpa:#x} or hpa {hpa:#x} not aligned to {size:?}"
            ),
            EptError::GpaTooWide(gpa) => {
                write!(f, "EPT: gpa {gpa:#x} beyond the {GPA_BITS}-bit width")
            }
            EptError::HpaTooWide(hpa) => write!(f, "EPT: hpa {hpa:#x} beyond bit 51"),
            EptError::InvalidPerms(p) => write!(f, "EPT: invalid leaf permissions {p:?}"),
            EptError::OutOfMemory => write!(f, "EPT: out of table frames"),
            EptError::Conflict { gpa, existing } => write!(
                f,
                "EPT: gpa {gpa:#x} is covered by an existing {existing:?} structure"
            ),
        }
    }
}

/// Outcome of a successful `map_*` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapResult {
    /// This call installed the leaf.
    Mapped,
    /// A leaf of the same size was already there (typically another vCPU
    /// faulted on the same page first). The page is mapped once; both callers
    /// just resume the guest. `hpa`/`perms` are those of the existing leaf,
    /// which may differ from the ones asked for.
    AlreadyMapped {
        /// Base host-physical address of the existing leaf.
        hpa: u64,
        /// Permissions of the existing leaf.
        perms: EptPerms,
    },
}

/// Where EPT paging structures live.
///
/// # Safety
///
/// Implementors promise that:
/// - [`alloc_table`](Self::alloc_table) returns the physical address of a
///   4 KiB-aligned frame below [`HPA_LIMIT`] (and below the CPU's
///   MAXPHYADDR), filled with zeros, that nothing else uses until it is passed
///   to [`free_table`](Self::free_table);
/// - [`table`](Self::table), given such an address, returns a reference to
///   that very frame, i.e. the memory the CPU's EPT walker reads at that
///   physical address (in the kernel, through the physical-memory offset
///   mapping, cacheable write-back), valid for as long as `&self` is borrowed
///   and the frame is not freed;
/// - the implementation may be called from several cores at once if it is
///   `Sync`.
pub unsafe trait EptMemory {
    /// Allocates a zeroed 4 KiB frame and returns its physical address, or
    /// `None` when out of frames.
    fn alloc_table(&self) -> Option<u64>;

    /// Returns a frame to the allocator.
    ///
    /// # Safety
    ///
    /// `phys` came from [`alloc_table`](Self::alloc_table) of this memory, was
    /// not freed since, is not linked from any EPT entry that a CPU may walk,
    /// and no reference from [`table`](Self::table) to it is used afterwards.
    unsafe fn free_table(&self, phys: u64);

    /// The 512 entries of the frame at `phys`.
    ///
    /// # Safety
    ///
    /// `phys` came from [`alloc_table`](Self::alloc_table) of this memory and
    /// is not freed while the returned reference lives.
    unsafe fn table(&self, phys: u64) -> &[AtomicU64; ENTRIES];
}

// SAFETY: forwards every call to `T`, which upholds the contract.
unsafe impl<T: EptMemory + ?Sized> EptMemory for &T {
    fn alloc_table(&self) -> Option<u64> {
        (**self).alloc_table()
    }

    unsafe fn free_table(&self, phys: u64) {
        // SAFETY: the caller upholds `free_table`'s contract for `T`.
        unsafe { (**self).free_table(phys) }
    }

    unsafe fn table(&self, phys: u64) -> &[AtomicU64; ENTRIES] {
        // SAFETY: the caller upholds `table`'s contract for `T`.
        unsafe { (**self).table(phys) }
    }
}

/// A snapshot of the counters of an [`Ept`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EptStats {
    /// 4 KiB leaves present (including those made by splits).
    pub leaves_4k: u64,
    /// 2 MiB leaves present.
    pub leaves_2m: u64,
    /// Paging structures linked into the EPT, the PML4 included.
    pub tables: u64,
    /// Tables allocated but freed again because another vCPU linked its own
    /// first (or a split lost its race).
    pub tables_raced: u64,
    /// 2 MiB leaves split into 512 4 KiB leaves.
    pub splits: u64,
}

/// One leaf, as reported by [`Ept::for_each_leaf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EptLeaf {
    /// Guest-physical base of the page.
    pub gpa: u64,
    /// Host-physical base of the page.
    pub hpa: u64,
    /// Access rights.
    pub perms: EptPerms,
    /// Page size.
    pub size: PageSize,
    /// The raw entry.
    pub raw: u64,
}

/// An EPT: a PML4 and everything linked below it, shared by all vCPUs of a VM.
///
/// `Ept<M>` is `Sync` when `M` is: every method takes `&self` and may run on
/// several cores at once.
pub struct Ept<M: EptMemory> {
    mem: M,
    pml4: u64,
    leaves_4k: AtomicU64,
    leaves_2m: AtomicU64,
    tables: AtomicU64,
    tables_raced: AtomicU64,
    splits: AtomicU64,
}

/// Paging-structure levels: 4 = PML4, 3 = PDPT, 2 = PD, 1 = PT.
const fn index(gpa: u64, level: u32) -> usize {
    ((gpa >> (12 + 9 * (level - 1))) & 0x1ff) as usize
}

/// Bytes covered by one entry of a table at `level`.
const fn entry_span(level: u32) -> u64 {
    1 << (12 + 9 * (level - 1))
}

fn leaf_entry(hpa: u64, perms: EptPerms) -> u64 {
    hpa | perms.bits() | (MEMTYPE_WB << E_MEMTYPE_SHIFT)
}

fn perms_of(entry: u64) -> EptPerms {
    EptPerms::from_bits_truncate(entry & E_RWX)
}

impl<M: EptMemory> Ept<M> {
    /// Creates an empty EPT: allocates its PML4.
    pub fn new(mem: M) -> Result<Self, EptError> {
        let pml4 = mem.alloc_table().ok_or(EptError::OutOfMemory)?;
        debug_assert!(pml4 % SIZE_4K == 0 && pml4 < HPA_LIMIT);
        Ok(Self {
            mem,
            pml4,
            leaves_4k: AtomicU64::new(0),
            leaves_2m: AtomicU64::new(0),
            tables: AtomicU64::new(1),
            tables_raced: AtomicU64::new(0),
            splits: AtomicU64::new(0),
        })
    }

    /// The EPTP to load into the VMCS (§25.6.11): PML4 address, memory type
    /// WB (bits 2:0 = 6; check IA32_VMX_EPT_VPID_CAP bit 14), page-walk
    /// length 4 − 1 in bits 5:3, accessed/dirty flags off (bit 6 = 0).
    pub fn eptp(&self) -> u64 {
        self.pml4 | MEMTYPE_WB | ((4 - 1) << 3)
    }

    /// Physical address of the PML4.
    pub fn pml4_phys(&self) -> u64 {
        self.pml4
    }

    /// The memory the tables come from.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Current counters.
    pub fn stats(&self) -> EptStats {
        EptStats {
            leaves_4k: self.leaves_4k.load(Ordering::Relaxed),
            leaves_2m: self.leaves_2m.load(Ordering::Relaxed),
            tables: self.tables.load(Ordering::Relaxed),
            tables_raced: self.tables_raced.load(Ordering::Relaxed),
            splits: self.splits.load(Ordering::Relaxed),
        }
    }

    fn table(&self, phys: u64) -> &[AtomicU64; ENTRIES] {
        // SAFETY: every `phys` passed here is the PML4 or an address read
        // from a non-leaf entry, i.e. a frame from `alloc_table` that is
        // linked into this EPT. Linked tables are only freed by `drop`, which
        // holds `&mut self`, so the frame outlives the `&self` borrow.
        unsafe { self.mem.table(phys) }
    }

    /// Returns the table that `slot` (an entry of a table at `level` > 1)
    /// points to, allocating and linking a zeroed one if `slot` is empty.
    fn next_table(&self, slot: &AtomicU64, gpa: u64, level: u32) -> Result<u64, EptError> {
        let mut entry = slot.load(Ordering::Acquire);
        if entry == 0 {
            let new = self.mem.alloc_table().ok_or(EptError::OutOfMemory)?;
            debug_assert!(new % SIZE_4K == 0 && new < HPA_LIMIT);
            // Non-leaf entries grant R+W+X; the leaf decides (§29.3.2: the
            // access rights of a translation are the AND over all levels).
            match slot.compare_exchange(0, new | E_RWX, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.tables.fetch_add(1, Ordering::Relaxed);
                    return Ok(new);
                }
                Err(current) => {
                    // Another vCPU linked its table first: use theirs.
                    // SAFETY: `new` came from `alloc_table`, the failed
                    // exchange means it was never linked, and no reference
                    // to it was taken.
                    unsafe { self.mem.free_table(new) };
                    self.tables_raced.fetch_add(1, Ordering::Relaxed);
                    entry = current;
                }
            }
        }
        if entry & E_LARGE != 0 {
            // Only PDEs can be large here: we never create 1 GiB leaves.
            debug_assert_eq!(level, 2);
            return Err(EptError::Conflict {
                gpa,
                existing: PageSize::Size2M,
            });
        }
        Ok(entry & E_ADDR_MASK)
    }

    fn check(gpa: u64, hpa: u64, perms: EptPerms, size: PageSize) -> Result<(), EptError> {
        if gpa >= GPA_LIMIT {
            return Err(EptError::GpaTooWide(gpa));
        }
        if hpa >= HPA_LIMIT {
            return Err(EptError::HpaTooWide(hpa));
        }
        if (gpa | hpa) & (size.bytes() - 1) != 0 {
            return Err(EptError::Misaligned { gpa, hpa, size });
        }
        if !perms.is_valid_leaf() {
            return Err(EptError::InvalidPerms(perms));
        }
        Ok(())
    }

    /// Walks from the PML4 down to the table at `stop_level`, allocating
    /// missing tables. Returns that table's physical address.
    fn walk_alloc(&self, gpa: u64, stop_level: u32) -> Result<u64, EptError> {
        let mut phys = self.pml4;
        let mut level = 4;
        while level > stop_level {
            let slot = &self.table(phys)[index(gpa, level)];
            phys = self.next_table(slot, gpa, level)?;
            level -= 1;
        }
        Ok(phys)
    }

    /// Maps the 4 KiB page at `gpa` to `hpa` with `perms`, memory type WB
    /// (§29.3.2 Table 29-6, §29.3.7). Missing tables are allocated and linked
    /// with `compare_exchange`; the leaf is installed with
    /// `compare_exchange(0, ..)`.
    pub fn map_4k(&self, gpa: u64, hpa: u64, perms: EptPerms) -> Result<MapResult, EptError> {
        Self::check(gpa, hpa, perms, PageSize::Size4K)?;
        let pt = self.walk_alloc(gpa, 1)?;
        let slot = &self.table(pt)[index(gpa, 1)];
        match slot.compare_exchange(
            0,
            leaf_entry(hpa, perms),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                self.leaves_4k.fetch_add(1, Ordering::Relaxed);
                Ok(MapResult::Mapped)
            }
            Err(existing) => Ok(MapResult::AlreadyMapped {
                hpa: existing & E_ADDR_MASK,
                perms: perms_of(existing),
            }),
        }
    }

    /// Maps the 2 MiB page at `gpa` to `hpa` with `perms`, memory type WB, as
    /// a PDE with bit 7 set (§29.3.2 Table 29-4). Same rules as
    /// [`map_4k`](Self::map_4k); a page table already linked at that PDE is a
    /// [`EptError::Conflict`].
    pub fn map_2m(&self, gpa: u64, hpa: u64, perms: EptPerms) -> Result<MapResult, EptError> {
        Self::check(gpa, hpa, perms, PageSize::Size2M)?;
        let pd = self.walk_alloc(gpa, 2)?;
        let slot = &self.table(pd)[index(gpa, 2)];
        match slot.compare_exchange(
            0,
            leaf_entry(hpa, perms) | E_LARGE,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                self.leaves_2m.fetch_add(1, Ordering::Relaxed);
                Ok(MapResult::Mapped)
            }
            Err(existing) if existing & E_LARGE != 0 => Ok(MapResult::AlreadyMapped {
                hpa: existing & E_ADDR_MASK_2M,
                perms: perms_of(existing),
            }),
            Err(_) => Err(EptError::Conflict {
                gpa,
                existing: PageSize::Size4K,
            }),
        }
    }

    /// Finds the leaf entry translating `gpa`, without allocating.
    fn find_leaf(&self, gpa: u64) -> Option<(&AtomicU64, u64, PageSize)> {
        if gpa >= GPA_LIMIT {
            return None;
        }
        let mut phys = self.pml4;
        for level in (1..=4).rev() {
            let slot = &self.table(phys)[index(gpa, level)];
            let entry = slot.load(Ordering::Acquire);
            if entry == 0 {
                return None;
            }
            if level == 1 {
                return Some((slot, entry, PageSize::Size4K));
            }
            if entry & E_LARGE != 0 {
                // 1 GiB leaves are never created; only a PDE can be large.
                return (level == 2).then_some((slot, entry, PageSize::Size2M));
            }
            phys = entry & E_ADDR_MASK;
        }
        None
    }

    /// Translates `gpa` like the CPU would (§29.3.2): the host-physical
    /// address (page offset included), the leaf's permissions and its size.
    /// `None` if no leaf maps `gpa`.
    pub fn translate(&self, gpa: u64) -> Option<(u64, EptPerms, PageSize)> {
        let (_, entry, size) = self.find_leaf(gpa)?;
        let base = match size {
            PageSize::Size4K => entry & E_ADDR_MASK,
            PageSize::Size2M => entry & E_ADDR_MASK_2M,
        };
        Some((base | (gpa & (size.bytes() - 1)), perms_of(entry), size))
    }

    /// Clears the write permission of the 4 KiB leaf mapping `gpa`. Returns
    /// whether it was writable (i.e. this call changed it). Returns `false`
    /// if `gpa` is unmapped or covered by a 2 MiB leaf, which this function
    /// does not split: use [`write_protect_range`](Self::write_protect_range)
    /// for memory that may hold 2 MiB leaves. The caller must INVEPT.
    pub fn write_protect(&self, gpa: u64) -> bool {
        match self.find_leaf(gpa) {
            Some((slot, _, PageSize::Size4K)) => {
                slot.fetch_and(!E_WRITE, Ordering::AcqRel) & E_WRITE != 0
            }
            _ => false,
        }
    }

    /// Sets the write permission of the 4 KiB leaf mapping `gpa`. Returns
    /// whether it was read-only (i.e. this call changed it). Returns `false`
    /// if `gpa` is unmapped, covered by a 2 MiB leaf, or its leaf lacks
    /// READ (write without read is a misconfiguration, §29.3.3.1). No INVEPT
    /// is needed.
    ///
    /// For dirty logging, mark the page in the dirty bitmap **after** this
    /// call, see [`crate::mm::dirty`].
    pub fn make_writable(&self, gpa: u64) -> bool {
        match self.find_leaf(gpa) {
            // READ is never cleared once set, so checking it first is stable.
            Some((slot, entry, PageSize::Size4K)) if entry & E_READ != 0 => {
                slot.fetch_or(E_WRITE, Ordering::AcqRel) & E_WRITE == 0
            }
            _ => false,
        }
    }

    /// Write-protects every 4 KiB page overlapping `[gpa, gpa + len)`.
    ///
    /// A 2 MiB leaf overlapping the range is first split into 512 4 KiB leaves
    /// with the same attributes (a table is allocated, filled, then swapped in
    /// with `compare_exchange`), so that afterwards no 2 MiB leaf overlaps the
    /// range and every mapped page in it is a read-only 4 KiB leaf. Returns
    /// how many leaves this call made read-only. Unmapped parts are skipped
    /// cheaply. The range is clamped to [`GPA_LIMIT`].
    ///
    /// On [`EptError::OutOfMemory`] (a split needed a frame) the walk stops:
    /// the EPT is consistent, part of the range may be protected, and a retry
    /// is safe. The caller must INVEPT in both cases.
    pub fn write_protect_range(&self, gpa: u64, len: u64) -> Result<u64, EptError> {
        let start = gpa & !(SIZE_4K - 1);
        let end = gpa.saturating_add(len).min(GPA_LIMIT);
        let mut changed = 0;
        if len != 0 && start < end {
            self.protect_level(self.pml4, 4, 0, start, end, &mut changed)?;
        }
        Ok(changed)
    }

    /// Write-protects the pages in `[start, end)` below the table `phys` at
    /// `level`, which translates the region beginning at `base`.
    fn protect_level(
        &self,
        phys: u64,
        level: u32,
        base: u64,
        start: u64,
        end: u64,
        changed: &mut u64,
    ) -> Result<(), EptError> {
        let span = entry_span(level);
        let first = (start.max(base) - base) / span;
        let last = (end.min(base + span * ENTRIES as u64) - 1 - base) / span;
        let table = self.table(phys);
        for i in first..=last {
            let slot = &table[i as usize];
            let mut entry = slot.load(Ordering::Acquire);
            if entry == 0 {
                continue;
            }
            if level == 1 {
                if slot.fetch_and(!E_WRITE, Ordering::AcqRel) & E_WRITE != 0 {
                    *changed += 1;
                }
                continue;
            }
            if entry & E_LARGE != 0 {
                if level != 2 {
                    continue; // no 1 GiB leaves are ever created
                }
                entry = self.split_2m(slot, entry)? | E_RWX;
            }
            let child_base = base + i * span;
            self.protect_level(
                entry & E_ADDR_MASK,
                level - 1,
                child_base,
                start,
                end,
                changed,
            )?;
        }
        Ok(())
    }

    /// Replaces the 2 MiB leaf `entry` in PDE `slot` by a page table of 512
    /// 4 KiB leaves translating the same addresses with the same attributes.
    /// Returns the page table now linked (ours, or another splitter's).
    fn split_2m(&self, slot: &AtomicU64, mut entry: u64) -> Result<u64, EptError> {
        loop {
            if entry & E_LARGE == 0 {
                return Ok(entry & E_ADDR_MASK); // someone else split it
            }
            let new = self.mem.alloc_table().ok_or(EptError::OutOfMemory)?;
            debug_assert!(new % SIZE_4K == 0 && new < HPA_LIMIT);
            let hpa = entry & E_ADDR_MASK_2M;
            let attrs = entry & E_LEAF_ATTRS;
            // SAFETY: `new` came from `alloc_table` and is not freed while
            // `pt` lives (freed below only after its last use).
            let pt = unsafe { self.mem.table(new) };
            for (i, e) in pt.iter().enumerate() {
                e.store((hpa + i as u64 * SIZE_4K) | attrs, Ordering::Relaxed);
            }
            // Release: the 512 stores above are visible to whoever sees the
            // new PDE. The CPU's walker sees either the old 2 MiB leaf or the
            // new table; both translate identically.
            match slot.compare_exchange(entry, new | E_RWX, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.tables.fetch_add(1, Ordering::Relaxed);
                    self.splits.fetch_add(1, Ordering::Relaxed);
                    self.leaves_2m.fetch_sub(1, Ordering::Relaxed);
                    self.leaves_4k.fetch_add(ENTRIES as u64, Ordering::Relaxed);
                    return Ok(new);
                }
                Err(current) => {
                    // SAFETY: never linked (the exchange failed); `pt` is not
                    // used any more.
                    unsafe { self.mem.free_table(new) };
                    self.tables_raced.fetch_add(1, Ordering::Relaxed);
                    entry = current;
                }
            }
        }
    }

    /// Unmaps every page in `[gpa, gpa + len)` (KVM's `kvm_zap_gfn_range`,
    /// for a memslot that is deleted or moved).
    ///
    /// A 2 MiB leaf inside the range is cleared whole; one that straddles an
    /// edge is first split, so that the pages outside the range stay mapped.
    /// Paging structures stay linked (empty tables cost nothing and are
    /// reused). Returns the number of 4 KiB pages unmapped. The range is
    /// clamped to [`GPA_LIMIT`] and widened to whole 4 KiB pages.
    ///
    /// The caller must flush guest-physical mappings on every core (INVEPT,
    /// and wait for it) before the host frames behind the range are reused.
    /// On [`EptError::OutOfMemory`] (a split needed a frame) the walk stops;
    /// a retry is safe.
    pub fn zap_range(&self, gpa: u64, len: u64) -> Result<u64, EptError> {
        let start = gpa & !(SIZE_4K - 1);
        let end = gpa.saturating_add(len).saturating_add(SIZE_4K - 1) & !(SIZE_4K - 1);
        let end = end.min(GPA_LIMIT);
        let mut zapped = 0;
        if len != 0 && start < end {
            self.zap_level(self.pml4, 4, 0, start, end, &mut zapped)?;
        }
        Ok(zapped)
    }

    fn zap_level(
        &self,
        phys: u64,
        level: u32,
        base: u64,
        start: u64,
        end: u64,
        zapped: &mut u64,
    ) -> Result<(), EptError> {
        let span = entry_span(level);
        let first = (start.max(base) - base) / span;
        let last = (end.min(base + span * ENTRIES as u64) - 1 - base) / span;
        let table = self.table(phys);
        for i in first..=last {
            let slot = &table[i as usize];
            let mut entry = slot.load(Ordering::Acquire);
            if entry == 0 {
                continue;
            }
            let child_base = base + i * span;
            if level == 1 {
                if slot.swap(0, Ordering::AcqRel) != 0 {
                    self.leaves_4k.fetch_sub(1, Ordering::Relaxed);
                    *zapped += 1;
                }
                continue;
            }
            if entry & E_LARGE != 0 {
                if level != 2 {
                    continue; // no 1 GiB leaves are ever created
                }
                if start <= child_base && child_base + span <= end {
                    if slot
                        .compare_exchange(entry, 0, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        self.leaves_2m.fetch_sub(1, Ordering::Relaxed);
                        *zapped += ENTRIES as u64;
                        continue;
                    }
                    entry = slot.load(Ordering::Acquire);
                    if entry == 0 {
                        continue;
                    }
                }
                if entry & E_LARGE != 0 {
                    entry = self.split_2m(slot, entry)? | E_RWX;
                }
            }
            self.zap_level(
                entry & E_ADDR_MASK,
                level - 1,
                child_base,
                start,
                end,
                zapped,
            )?;
        }
        Ok(())
    }

    /// Calls `f` for every leaf, in increasing guest-physical order. Leaves
    /// changed concurrently may be seen before or after the change.
    pub fn for_each_leaf(&self, mut f: impl FnMut(EptLeaf)) {
        self.leaves_below(self.pml4, 4, 0, &mut f);
    }

    fn leaves_below(&self, phys: u64, level: u32, base: u64, f: &mut impl FnMut(EptLeaf)) {
        for (i, slot) in self.table(phys).iter().enumerate() {
            let entry = slot.load(Ordering::Acquire);
            if entry == 0 {
                continue;
            }
            let gpa = base + i as u64 * entry_span(level);
            if level == 1 || entry & E_LARGE != 0 {
                let (hpa, size) = if level == 1 {
                    (entry & E_ADDR_MASK, PageSize::Size4K)
                } else {
                    (entry & E_ADDR_MASK_2M, PageSize::Size2M)
                };
                f(EptLeaf {
                    gpa,
                    hpa,
                    perms: perms_of(entry),
                    size,
                    raw: entry,
                });
            } else {
                self.leaves_below(entry & E_ADDR_MASK, level - 1, gpa, f);
            }
        }
    }

    /// Calls `f(phys, level)` for every paging structure linked into the EPT,
    /// the PML4 (level 4) first, parents before children.
    pub fn for_each_table(&self, mut f: impl FnMut(u64, u32)) {
        self.tables_below(self.pml4, 4, &mut f);
    }

    fn tables_below(&self, phys: u64, level: u32, f: &mut impl FnMut(u64, u32)) {
        f(phys, level);
        if level == 1 {
            return;
        }
        for slot in self.table(phys).iter() {
            let entry = slot.load(Ordering::Acquire);
            if entry != 0 && entry & E_LARGE == 0 {
                self.tables_below(entry & E_ADDR_MASK, level - 1, f);
            }
        }
    }

    /// Frees the table at `phys` and everything below it.
    ///
    /// # Safety
    ///
    /// No CPU walks this EPT any more, and nothing uses its tables afterwards.
    unsafe fn free_below(&mut self, phys: u64, level: u32) {
        if level > 1 {
            for i in 0..ENTRIES {
                let entry = self.table(phys)[i].load(Ordering::Acquire);
                if entry != 0 && entry & E_LARGE == 0 {
                    // SAFETY: forwarded from our caller.
                    unsafe { self.free_below(entry & E_ADDR_MASK, level - 1) };
                }
            }
        }
        // SAFETY: `phys` is a linked table (so from `alloc_table`, freed only
        // here, once, since the tree has no shared children), and per our
        // contract nothing walks or references it any more.
        unsafe { self.mem.free_table(phys) };
    }
}

/// Dropping an `Ept` frees all its tables. The kernel must make sure no
/// logical processor still uses its EPTP (every VMCS referencing it is
/// cleared or will never be entered again, and INVEPT ran) before dropping it.
impl<M: EptMemory> Drop for Ept<M> {
    fn drop(&mut self) {
        let pml4 = self.pml4;
        // SAFETY: `&mut self` excludes other users in Rust; that no CPU uses
        // the EPTP any more is the kernel's duty, documented above.
        unsafe { self.free_below(pml4, 4) };
    }
}

/// A host implementation of [`EptMemory`] for tests: leaked, 4 KiB-aligned
/// boxes whose addresses serve as "physical" addresses, with a frame budget.
#[cfg(test)]
pub(crate) mod test_mem {
    use super::{EptMemory, ENTRIES};
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::Mutex;

    #[repr(C, align(4096))]
    struct Frame([AtomicU64; ENTRIES]);

    pub(crate) struct TestMem {
        budget: AtomicUsize,
        live: Mutex<HashSet<u64>>,
        pub(crate) allocs: AtomicU64,
        pub(crate) frees: AtomicU64,
    }

    impl TestMem {
        pub(crate) fn new(budget: usize) -> Self {
            Self {
                budget: AtomicUsize::new(budget),
                live: Mutex::new(HashSet::new()),
                allocs: AtomicU64::new(0),
                frees: AtomicU64::new(0),
            }
        }

        pub(crate) fn unlimited() -> Self {
            Self::new(usize::MAX)
        }

        pub(crate) fn set_budget(&self, frames: usize) {
            self.budget.store(frames, Ordering::SeqCst);
        }

        pub(crate) fn live(&self) -> HashSet<u64> {
            self.live.lock().unwrap().clone()
        }
    }

    // SAFETY: frames are 4 KiB-aligned zeroed boxes, user-space addresses are
    // below 2^47 < HPA_LIMIT, `table` hands out the box itself, and a frame
    // is only deallocated by `free_table`.
    unsafe impl EptMemory for TestMem {
        fn alloc_table(&self) -> Option<u64> {
            let mut budget = self.budget.load(Ordering::SeqCst);
            loop {
                let left = budget.checked_sub(1)?;
                match self
                    .budget
                    .compare_exchange(budget, left, Ordering::SeqCst, Ordering::SeqCst)
                {
                    Ok(_) => break,
                    Err(now) => budget = now,
                }
            }
            let frame = Box::new(Frame(core::array::from_fn(|_| AtomicU64::new(0))));
            let phys = Box::into_raw(frame) as u64;
            assert!(self.live.lock().unwrap().insert(phys));
            self.allocs.fetch_add(1, Ordering::SeqCst);
            Some(phys)
        }

        unsafe fn free_table(&self, phys: u64) {
            assert!(
                self.live.lock().unwrap().remove(&phys),
                "double free or foreign frame {phys:#x}"
            );
            self.frees.fetch_add(1, Ordering::SeqCst);
            // SAFETY: `phys` came from `Box::into_raw` in `alloc_table` and
            // was live (checked above); the caller no longer uses it.
            drop(unsafe { Box::from_raw(phys as *mut Frame) });
        }

        unsafe fn table(&self, phys: u64) -> &[AtomicU64; ENTRIES] {
            // SAFETY: the caller guarantees `phys` is a live frame from
            // `alloc_table`, i.e. a valid `Frame` that outlives the borrow.
            unsafe { &(*(phys as *const Frame)).0 }
        }
    }

    impl Drop for TestMem {
        fn drop(&mut self) {
            for phys in self.live.get_mut().unwrap().drain() {
                // SAFETY: still-live frames from `Box::into_raw`; whoever
                // borrowed `self` is gone.
                drop(unsafe { Box::from_raw(phys as *mut Frame) });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_mem::TestMem;
    use super::*;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};
    use std::sync::Barrier;

    const VALID_PERMS: [EptPerms; 5] = [
        EptPerms::READ,
        EptPerms::READ.union(EptPerms::WRITE),
        EptPerms::READ.union(EptPerms::EXEC),
        EptPerms::RWX,
        EptPerms::EXEC,
    ];

    fn tables_walked<M: EptMemory>(ept: &Ept<M>) -> Vec<u64> {
        let mut v = Vec::new();
        ept.for_each_table(|phys, _| v.push(phys));
        v
    }

    /// Live frames == linked tables == the counter, and no table is linked
    /// twice.
    fn assert_tables_consistent(ept: &Ept<&TestMem>) {
        let walked = tables_walked(ept);
        let unique: HashSet<u64> = walked.iter().copied().collect();
        assert_eq!(unique.len(), walked.len(), "a table is linked twice");
        assert_eq!(unique, ept.memory().live(), "leaked or dangling tables");
        assert_eq!(ept.stats().tables, walked.len() as u64);
    }

    #[test]
    fn empty_ept_translates_nothing() {
        let mem = TestMem::unlimited();
        let ept = Ept::new(&mem).unwrap();
        for gpa in [
            0,
            0x1000,
            0x20_0000,
            0x7fff_ffff_f000,
            GPA_LIMIT - 1,
            GPA_LIMIT,
            u64::MAX,
        ] {
            assert_eq!(ept.translate(gpa), None);
            assert!(!ept.write_protect(gpa));
            assert!(!ept.make_writable(gpa));
        }
        assert_eq!(ept.write_protect_range(0, GPA_LIMIT), Ok(0));
        let mut n = 0;
        ept.for_each_leaf(|_| n += 1);
        assert_eq!(n, 0);
        assert_eq!(
            ept.stats(),
            EptStats {
                tables: 1,
                ..Default::default()
            }
        );
        assert_tables_consistent(&ept);
    }

    #[test]
    fn eptp_format() {
        let mem = TestMem::unlimited();
        let ept = Ept::new(&mem).unwrap();
        let eptp = ept.eptp();
        assert_eq!(eptp & 0b111, 6, "memory type WB");
        assert_eq!((eptp >> 3) & 0b111, 3, "page-walk length 4 - 1");
        assert_eq!(eptp & (1 << 6), 0, "A/D flags off");
        assert_eq!(eptp & !0xfff, ept.pml4_phys());
        assert_eq!(eptp & 0xf80, 0, "reserved bits 11:7");
    }

    #[test]
    fn new_out_of_memory() {
        let mem = TestMem::new(0);
        assert!(matches!(Ept::new(&mem), Err(EptError::OutOfMemory)));
    }

    #[test]
    fn map_translate_4k_all_perms() {
        let mem = TestMem::unlimited();
        let ept = Ept::new(&mem).unwrap();
        for (i, &perms) in VALID_PERMS.iter().enumerate() {
            let gpa = 0x1234_5000 + i as u64 * SIZE_4K;
            let hpa = 0xabc_d000_0000 + i as u64 * 7 * SIZE_4K;
            assert_eq!(ept.map_4k(gpa, hpa, perms), Ok(MapResult::Mapped));
            assert_eq!(ept.translate(gpa), Some((hpa, perms, PageSize::Size4K)));
            assert_eq!(
                ept.translate(gpa + 0xfff),
                Some((hpa + 0xfff, perms, PageSize::Size4K))
            );
            assert_eq!(ept.translate(gpa + SIZE_4K * 100), None);
        }
        let mut leaves = Vec::new();
        ept.for_each_leaf(|l| leaves.push(l));
        assert_eq!(leaves.len(), VALID_PERMS.len());
        for l in &leaves {
            assert_eq!((l.raw >> 3) & 0b111, 6, "memory type WB in bits 5:3");
            assert_eq!(l.raw & (1 << 6), 0, "IPAT clear");
            assert_eq!(l.raw & E_LARGE, 0);
            assert_eq!(l.raw & 0xfff0_0000_0000_0000, 0);
            assert_eq!(l.size, PageSize::Size4K);
        }
        // Non-leaf entries are R+W+X and nothing else (Tables 29-1, 29-3, 29-5).
        ept.for_each_table(|phys, level| {
            if level > 1 {
                // SAFETY: `phys` is a live table of this EPT.
                for e in unsafe { mem.table(phys) }.iter() {
                    let e = e.load(Ordering::Relaxed);
                    assert!(e == 0 || e & !E_ADDR_MASK == E_RWX, "{e:#x}");
                }
            }
        });
        assert_eq!(ept.stats().leaves_4k, VALID_PERMS.len() as u64);
        assert_tables_consistent(&ept);
    }

    #[test]
    fn map_translate_2m_all_perms() {
        let mem = TestMem::unlimited();
        let ept = Ept::new(&mem).unwrap();
        for (i, &perms) in VALID_PERMS.iter().enumerate() {
            let gpa = 0x8000_0000 + i as u64 * SIZE_2M;
            let hpa = 0x40_0000_0000 + i as u64 * 3 * SIZE_2M;
            assert_eq!(ept.map_2m(gpa, hpa, perms), Ok(MapResult::Mapped));
            for off in [0, 0x1000, 0x1f_ffff, 0x12_3456] {
                assert_eq!(
                    ept.translate(gpa + off),
                    Some((hpa + off, perms, PageSize::Size2M))
                );
            }
        }
        let mut n = 0;
        ept.for_each_leaf(|l| {
            n += 1;
            assert_eq!((l.raw >> 3) & 0b111, 6, "memory type WB in bits 5:3");
            assert_ne!(l.raw & E_LARGE, 0, "bit 7 set");
            assert_eq!(l.size, PageSize::Size2M);
        });
        assert_eq!(n, VALID_PERMS.len());
        let s = ept.stats();
        assert_eq!((s.leaves_2m, s.leaves_4k, s.tables), (5, 0, 3));
        assert_tables_consistent(&ept);
    }

    #[test]
    fn intermediate_tables_allocated_once_and_shared() {
        let mem = TestMem::unlimited();
        let ept = Ept::new(&mem).unwrap();
        ept.map_4k(0, 0x10_0000, EptPerms::RWX).unwrap();
        assert_eq!(ept.stats().tables, 4);
        // Same PT.
        for i in 1..512 {
            ept.map_4k(i * SIZE_4K, 0x10_0000, EptPerms::READ).unwrap();
        }
        assert_eq!(ept.stats().tables, 4);
        // Same PD, new PT.
        ept.map_4k(SIZE_2M, 0, EptPerms::READ).unwrap();
        assert_eq!(ept.stats().tables, 5);
        // Same PD, a 2 MiB leaf: no new table.
        ept.map_2m(2 * SIZE_2M, 0, EptPerms::READ).unwrap();
        assert_eq!(ept.stats().tables, 5);
        // Same PDPT, new PD + PT.
        ept.map_4k(1 << 30, 0, EptPerms::READ).unwrap();
        assert_eq!(ept.stats().tables, 7);
        // New PDPT + PD + PT.
        ept.map_4k(1 << 39, 0, EptPerms::READ).unwrap();
        assert_eq!(ept.stats().tables, 10);
        assert_eq!(mem.allocs.load(Ordering::SeqCst), 10);
        assert_eq!(ept.stats().leaves_4k, 515);
        assert_tables_consistent(&ept);
    }

    #[test]
    fn double_map_is_already_mapped() {
        let mem = TestMem::unlimited();
        let ept = Ept::new(&mem).unwrap();
        assert_eq!(
            ept.map_4k(0x5000, 0x9000, EptPerms::READ),
            Ok(MapResult::Mapped)
        );
        assert_eq!(
            ept.map_4k(0x5000, 0xa000, EptPerms::RWX),
            Ok(MapResult::AlreadyMapped {
                hpa: 0x9000,
                perms: EptPerms::READ
            })
        );
        assert_eq!(
            ept.map_2m(0x40_0000, 0x60_0000, EptPerms::RWX),
            Ok(MapResult::Mapped)
        );
        assert_eq!(
            ept.map_2m(0x40_0000, 0x80_0000, EptPerms::READ),
            Ok(MapResult::AlreadyMapped {
                hpa: 0x60_0000,
                perms: EptPerms::RWX
            })
        );
        assert_eq!(
            ept.translate(0x5000),
            Some((0x9000, EptPerms::READ, PageSize::Size4K))
        );
        let s = ept.stats();
        assert_eq!((s.leaves_4k, s.leaves_2m), (1, 1));
    }

    #[test]
    fn conflicting_sizes() {
        let mem = TestMem::unlimited();
        let ept = Ept::new(&mem).unwrap();
        ept.map_2m(0x20_0000, 0, EptPerms::RWX).unwrap();
        assert_eq!(
            ept.map_4k(0x20_3000, 0x3000, EptPerms::RWX),
            Err(EptError::Conflict {
                gpa: 0x20_3000,
                existing: PageSize::Size2M
            })
        );
        ept.map_4k(0x40_0000, 0, EptPerms::RWX).unwrap();
        assert_eq!(
            ept.map_2m(0x40_0000, 0, EptPerms::RWX),
            Err(EptError::Conflict {
                gpa: 0x40_0000,
                existing: PageSize::Size4K
            })
        );
        assert_eq!(
            ept.translate(0x20_3000),
            Some((0x3000, EptPerms::RWX, PageSize::Size2M))
        );
        assert_tables_consistent(&ept);
    }

    #[test]
    fn bad_arguments() {
        let mem = TestMem::unlimited();
        let ept = Ept::new(&mem).unwrap();
        let rw = EptPerms::READ | EptPerms::WRITE;
        assert!(matches!(
            ept.map_4k(0x1001, 0, rw),
            Err(EptError::Misaligned { .. })
        ));
        assert!(matches!(
            ept.map_4k(0x1000, 0x10, rw),
            Err(EptError::Misaligned { .. })
        ));
        assert!(matches!(
            ept.map_2m(0x1000, 0, rw),
            Err(EptError::Misaligned { .. })
        ));
        assert!(matches!(
            ept.map_2m(0, 0x1000, rw),
            Err(EptError::Misaligned { .. })
        ));
        assert_eq!(
            ept.map_4k(GPA_LIMIT, 0, rw),
            Err(EptError::GpaTooWide(GPA_LIMIT))
        );
        assert_eq!(
            ept.map_2m(!(SIZE_2M - 1), 0, rw),
            Err(EptError::GpaTooWide(!(SIZE_2M - 1)))
        );
        assert_eq!(
            ept.map_4k(0, HPA_LIMIT, rw),
            Err(EptError::HpaTooWide(HPA_LIMIT))
        );
        for bad in [
            EptPerms::empty(),
            EptPerms::WRITE,
            EptPerms::WRITE | EptPerms::EXEC,
        ] {
            assert_eq!(ept.map_4k(0, 0, bad), Err(EptError::InvalidPerms(bad)));
            assert_eq!(ept.map_2m(0, 0, bad), Err(EptError::InvalidPerms(bad)));
        }
        // The highest page of the 48-bit space works.
        let top = GPA_LIMIT - SIZE_4K;
        assert_eq!(
            ept.map_4k(top, HPA_LIMIT - SIZE_4K, rw),
            Ok(MapResult::Mapped)
        );
        assert_eq!(
            ept.translate(top + 5),
            Some((HPA_LIMIT - SIZE_4K + 5, rw, PageSize::Size4K))
        );
        // Nothing else was mapped.
        assert_eq!(ept.stats().leaves_4k, 1);
        assert_eq!(ept.stats().leaves_2m, 0);
    }

    #[test]
    fn out_of_frames_leaves_ept_consistent() {
        let mem = TestMem::new(1 + 3);
        let ept = Ept::new(&mem).unwrap();
        ept.map_4k(0x1000, 0x2000, EptPerms::RWX).unwrap();
        // A new 1 GiB region needs a PD and a PT; only none are left.
        assert_eq!(
            ept.map_4k(1 << 30, 0, EptPerms::RWX),
            Err(EptError::OutOfMemory)
        );
        assert_eq!(
            ept.map_2m(1 << 30, 0, EptPerms::RWX),
            Err(EptError::OutOfMemory)
        );
        // One frame: the PD gets linked, the PT fails.
        mem.set_budget(1);
        assert_eq!(
            ept.map_4k(1 << 30, 0, EptPerms::RWX),
            Err(EptError::OutOfMemory)
        );
        assert_tables_consistent(&ept);
        assert_eq!(ept.stats().tables, 5);
        assert_eq!(ept.translate(1 << 30), None);
        assert_eq!(
            ept.translate(0x1000),
            Some((0x2000, EptPerms::RWX, PageSize::Size4K))
        );
        // The 2 MiB leaf needs no more tables now.
        assert_eq!(
            ept.map_2m((1 << 30) + SIZE_2M, 0, EptPerms::RWX),
            Ok(MapResult::Mapped)
        );
        // A split needs a frame.
        assert_eq!(
            ept.write_protect_range((1 << 30) + SIZE_2M, SIZE_2M),
            Err(EptError::OutOfMemory)
        );
        assert_eq!(
            ept.translate((1 << 30) + SIZE_2M).map(|t| t.2),
            Some(PageSize::Size2M)
        );
        mem.set_budget(1);
        assert_eq!(
            ept.map_4k(1 << 30, 0x5000, EptPerms::READ),
            Ok(MapResult::Mapped)
        );
        assert_eq!(ept.stats().leaves_4k, 2);
        assert_tables_consistent(&ept);
        drop(ept);
        assert!(mem.live().is_empty());
    }

    #[test]
    fn write_protect_and_make_writable() {
        let mem = TestMem::unlimited();
        let ept = Ept::new(&mem).unwrap();
        let rw = EptPerms::READ | EptPerms::WRITE;
        ept.map_4k(0x3000, 0x7000, EptPerms::RWX).unwrap();
        assert!(ept.write_protect(0x3000));
        assert!(!ept.write_protect(0x3000), "already read-only");
        assert_eq!(
            ept.translate(0x3abc),
            Some((0x7abc, EptPerms::READ | EptPerms::EXEC, PageSize::Size4K))
        );
        assert!(ept.make_writable(0x3fff));
        assert!(!ept.make_writable(0x3000), "already writable");
        assert_eq!(ept.translate(0x3000).unwrap().1, EptPerms::RWX);
        // Unmapped, 2 MiB, and execute-only leaves are left alone.
        assert!(!ept.write_protect(0x4000));
        assert!(!ept.make_writable(0x4000));
        ept.map_2m(0x20_0000, 0, rw).unwrap();
        assert!(!ept.write_protect(0x20_0000));
        assert_eq!(ept.translate(0x20_0000).unwrap().1, rw);
        ept.map_4k(0x5000, 0, EptPerms::EXEC).unwrap();
        assert!(!ept.make_writable(0x5000));
        assert_eq!(ept.translate(0x5000).unwrap().1, EptPerms::EXEC);
    }

    #[test]
    fn split_preserves_all_512_translations() {
        let mem = TestMem::unlimited();
        let ept = Ept::new(&mem).unwrap();
        let gpa = 0x1_4000_0000;
        let hpa = 0x2_0060_0000;
        ept.map_2m(gpa, hpa, EptPerms::RWX).unwrap();
        ept.map_2m(gpa + SIZE_2M, hpa, EptPerms::READ).unwrap();
        // Protect only the middle of the first 2 MiB page.
        assert_eq!(ept.write_protect_range(gpa + 0x10_0800, 0x2000), Ok(3));
        let s = ept.stats();
        assert_eq!((s.leaves_2m, s.leaves_4k, s.splits), (1, 512, 1));
        for i in 0..512u64 {
            let off = i * SIZE_4K + 0x123;
            let (h, p, size) = ept.translate(gpa + off).unwrap();
            assert_eq!(h, hpa + off);
            assert_eq!(size, PageSize::Size4K);
            let protected = (0x100..=0x102).contains(&i);
            let want = if protected {
                EptPerms::READ | EptPerms::EXEC
            } else {
                EptPerms::RWX
            };
            assert_eq!(p, want, "page {i}");
        }
        let mut n = 0;
        ept.for_each_leaf(|l| {
            if l.size == PageSize::Size4K {
                assert_eq!((l.raw >> 3) & 0b111, 6, "memory type kept by the split");
                n += 1;
            }
        });
        assert_eq!(n, 512);
        // A read-only 2 MiB leaf is split too (a write must be able to fault
        // on, and be made writable on, a single 4 KiB page), changing none.
        assert_eq!(ept.write_protect_range(gpa + SIZE_2M, SIZE_2M), Ok(0));
        assert_eq!(ept.stats().splits, 2);
        assert_eq!(
            ept.translate(gpa + SIZE_2M + 0x5555),
            Some((hpa + 0x5555, EptPerms::READ, PageSize::Size4K))
        );
        // The whole range again: the 509 still-writable leaves change.
        assert_eq!(ept.write_protect_range(gpa, 2 * SIZE_2M), Ok(509));
        assert_eq!(ept.write_protect_range(gpa, 2 * SIZE_2M), Ok(0));
        // Protection does not leak outside the range.
        ept.map_4k(gpa - SIZE_4K, 0, EptPerms::RWX).unwrap();
        ept.map_4k(gpa + 2 * SIZE_2M, 0, EptPerms::RWX).unwrap();
        assert_eq!(ept.write_protect_range(gpa, 2 * SIZE_2M), Ok(0));
        assert!(ept
            .translate(gpa - SIZE_4K)
            .unwrap()
            .1
            .contains(EptPerms::WRITE));
        assert!(ept
            .translate(gpa + 2 * SIZE_2M)
            .unwrap()
            .1
            .contains(EptPerms::WRITE));
        assert_tables_consistent(&ept);
        drop(ept);
        assert!(mem.live().is_empty());
    }

    #[test]
    fn write_protect_range_edges() {
        let mem = TestMem::unlimited();
        let ept = Ept::new(&mem).unwrap();
        let rw = EptPerms::READ | EptPerms::WRITE;
        let top = GPA_LIMIT - SIZE_4K;
        ept.map_4k(top, 0, rw).unwrap();
        ept.map_4k(0, 0, rw).unwrap();
        assert_eq!(ept.write_protect_range(0, 0), Ok(0));
        assert_eq!(ept.write_protect_range(GPA_LIMIT, u64::MAX), Ok(0));
        // Unaligned start and length cover every overlapped page; overflow
        // is clamped.
        assert_eq!(ept.write_protect_range(top + 0xfff, u64::MAX), Ok(1));
        assert_eq!(ept.write_protect_range(0xfff, 1), Ok(1));
        ept.make_writable(0);
        ept.make_writable(top);
        assert_eq!(ept.write_protect_range(0, GPA_LIMIT), Ok(2));
    }

    #[test]
    fn drop_frees_every_table() {
        let mem = TestMem::unlimited();
        {
            let ept = Ept::new(&mem).unwrap();
            for i in 0..64u64 {
                ept.map_4k(
                    (i * 0x1234_5000) & (GPA_LIMIT - 1) & !0xfff,
                    0,
                    EptPerms::READ,
                )
                .unwrap();
            }
            ept.map_2m(0x7000_0000_0000, 0, EptPerms::READ).unwrap();
            ept.write_protect_range(0x7000_0000_0000, SIZE_2M).unwrap();
            assert_tables_consistent(&ept);
        }
        assert!(mem.live().is_empty());
        assert_eq!(
            mem.allocs.load(Ordering::SeqCst),
            mem.frees.load(Ordering::SeqCst)
        );
    }

    /// Several threads map overlapping sets of pages at once: every page is
    /// mapped exactly once, and tables are neither leaked nor linked twice.
    #[test]
    fn concurrent_map() {
        const THREADS: u64 = 8;
        const SHARED: u64 = 2048;
        const OWN: u64 = 512;
        for round in 0..8u64 {
            let mem = TestMem::unlimited();
            let ept = Ept::new(&mem).unwrap();
            let barrier = Barrier::new(THREADS as usize);
            // Pages spread over several PML4/PDPT/PD entries so that tables
            // at every level are raced for.
            let shared_gpa = |i: u64| ((i % 4) << 39) | ((i % 3) << 30) | (i << 12);
            let own_gpa = |t: u64, i: u64| (5 << 39) | (t << 30) | ((i % 2) << 21) | (i << 12);
            let results: Vec<Vec<(u64, MapResult)>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..THREADS)
                    .map(|t| {
                        let (ept, barrier) = (&ept, &barrier);
                        s.spawn(move || {
                            let mut out = Vec::new();
                            barrier.wait();
                            for k in 0..SHARED + OWN {
                                // Each thread walks the shared pages in its
                                // own order, interleaved with its own pages.
                                let gpa = if k % 5 == 4 && k / 5 < OWN {
                                    own_gpa(t, k / 5)
                                } else {
                                    shared_gpa((k * (2 * t + 1) + round) % SHARED)
                                };
                                let hpa = (gpa >> 12 << 12) ^ (7 << 40);
                                let perms = EptPerms::READ | EptPerms::WRITE;
                                out.push((gpa, ept.map_4k(gpa, hpa, perms).unwrap()));
                            }
                            out
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let mut mapped: HashMap<u64, u32> = HashMap::new();
            for (gpa, r) in results.iter().flatten() {
                let e = mapped.entry(*gpa).or_default();
                match r {
                    MapResult::Mapped => *e += 1,
                    MapResult::AlreadyMapped { hpa, .. } => {
                        assert_eq!(*hpa, (gpa >> 12 << 12) ^ (7 << 40));
                    }
                }
            }
            for (gpa, n) in &mapped {
                assert_eq!(*n, 1, "gpa {gpa:#x} mapped {n} times");
                assert!(ept.translate(*gpa).is_some());
            }
            let s = ept.stats();
            assert_eq!(s.leaves_4k, mapped.len() as u64);
            let mut leaves = 0;
            ept.for_each_leaf(|_| leaves += 1);
            assert_eq!(leaves, mapped.len());
            assert_tables_consistent(&ept);
            assert_eq!(mem.allocs.load(Ordering::SeqCst), s.tables + s.tables_raced);
            drop(ept);
            assert!(mem.live().is_empty());
        }
    }

    /// Threads split the same 2 MiB leaves and protect them at once: each is
    /// split once and each 4 KiB leaf is made read-only by exactly one call.
    #[test]
    fn concurrent_split_and_protect() {
        const THREADS: usize = 6;
        const LEAVES: u64 = 16;
        for _ in 0..8 {
            let mem = TestMem::unlimited();
            let ept = Ept::new(&mem).unwrap();
            for i in 0..LEAVES {
                ept.map_2m(i * SIZE_2M, (i + 100) * SIZE_2M, EptPerms::RWX)
                    .unwrap();
            }
            let barrier = Barrier::new(THREADS);
            let total: u64 = std::thread::scope(|s| {
                let handles: Vec<_> = (0..THREADS)
                    .map(|t| {
                        let (ept, barrier) = (&ept, &barrier);
                        s.spawn(move || {
                            barrier.wait();
                            let mut n = 0;
                            for k in 0..LEAVES {
                                let i = (k + t as u64 * 3) % LEAVES;
                                n += ept.write_protect_range(i * SIZE_2M, SIZE_2M).unwrap();
                            }
                            n
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).sum()
            });
            assert_eq!(total, LEAVES * 512);
            let s = ept.stats();
            assert_eq!(
                (s.splits, s.leaves_2m, s.leaves_4k),
                (LEAVES, 0, LEAVES * 512)
            );
            for i in 0..LEAVES * 512 {
                let gpa = i * SIZE_4K;
                assert_eq!(
                    ept.translate(gpa),
                    Some((
                        gpa + 100 * SIZE_2M,
                        EptPerms::READ | EptPerms::EXEC,
                        PageSize::Size4K
                    ))
                );
            }
            assert_tables_consistent(&ept);
            assert_eq!(mem.allocs.load(Ordering::SeqCst), s.tables + s.tables_raced);
        }
    }

    // ---- Property test against a model -------------------------------------

    #[derive(Debug, Clone)]
    enum Op {
        Map4k {
            page: u64,
            hpa: u64,
            perms: EptPerms,
        },
        Map2m {
            region: u64,
            hpa: u64,
            perms: EptPerms,
        },
        WriteProtect {
            page: u64,
        },
        MakeWritable {
            page: u64,
        },
        ProtectRange {
            page: u64,
            npages: u64,
        },
        Translate {
            page: u64,
            off: u64,
        },
    }

    /// Guest pages live in 4 regions of 2 MiB, two of them in another PML4
    /// slot, so the model covers every table level.
    const REGIONS: u64 = 4;
    fn region_base(r: u64) -> u64 {
        [0, SIZE_2M, 3 << 30, (1 << 39) + 5 * SIZE_2M][r as usize]
    }
    fn page_gpa(page: u64) -> u64 {
        region_base(page / 512) + (page % 512) * SIZE_4K
    }

    fn perms_strategy() -> impl Strategy<Value = EptPerms> {
        prop::sample::select(VALID_PERMS.to_vec())
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        let page = 0..REGIONS * 512;
        prop_oneof![
            3 => (page.clone(), 0..1024u64, perms_strategy())
                .prop_map(|(page, h, perms)| Op::Map4k { page, hpa: h * SIZE_4K, perms }),
            1 => (0..REGIONS, 0..64u64, perms_strategy())
                .prop_map(|(region, h, perms)| Op::Map2m { region, hpa: h * SIZE_2M, perms }),
            2 => page.clone().prop_map(|page| Op::WriteProtect { page }),
            2 => page.clone().prop_map(|page| Op::MakeWritable { page }),
            1 => (page.clone(), 0..1100u64)
                .prop_map(|(page, npages)| Op::ProtectRange { page, npages }),
            2 => (page, 0..SIZE_4K).prop_map(|(page, off)| Op::Translate { page, off }),
        ]
    }

    #[derive(Default)]
    struct Model {
        /// 4 KiB leaves: page -> (hpa, perms).
        small: HashMap<u64, (u64, EptPerms)>,
        /// 2 MiB leaves: region -> (hpa, perms).
        large: HashMap<u64, (u64, EptPerms)>,
        /// Regions whose PDE points to a page table.
        has_pt: HashSet<u64>,
    }

    impl Model {
        fn translate(&self, page: u64) -> Option<(u64, EptPerms, PageSize)> {
            if let Some(&(h, p)) = self.large.get(&(page / 512)) {
                return Some((h + (page % 512) * SIZE_4K, p, PageSize::Size2M));
            }
            self.small
                .get(&page)
                .map(|&(h, p)| (h, p, PageSize::Size4K))
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        #[test]
        fn ept_matches_model(ops in prop::collection::vec(op_strategy(), 1..120)) {
            let mem = TestMem::unlimited();
            let ept = Ept::new(&mem).unwrap();
            let mut m = Model::default();
            for op in ops {
                match op {
                    Op::Map4k { page, hpa, perms } => {
                        let r = page / 512;
                        let want = if m.large.contains_key(&r) {
                            Err(EptError::Conflict { gpa: page_gpa(page), existing: PageSize::Size2M })
                        } else if let Some(&(hpa, perms)) = m.small.get(&page) {
                            Ok(MapResult::AlreadyMapped { hpa, perms })
                        } else {
                            m.small.insert(page, (hpa, perms));
                            m.has_pt.insert(r);
                            Ok(MapResult::Mapped)
                        };
                        prop_assert_eq!(ept.map_4k(page_gpa(page), hpa, perms), want);
                    }
                    Op::Map2m { region, hpa, perms } => {
                        let want = if let Some(&(hpa, perms)) = m.large.get(&region) {
                            Ok(MapResult::AlreadyMapped { hpa, perms })
                        } else if m.has_pt.contains(&region) {
                            Err(EptError::Conflict { gpa: region_base(region), existing: PageSize::Size4K })
                        } else {
                            m.large.insert(region, (hpa, perms));
                            Ok(MapResult::Mapped)
                        };
                        prop_assert_eq!(ept.map_2m(region_base(region), hpa, perms), want);
                    }
                    Op::WriteProtect { page } => {
                        let want = match m.small.get_mut(&page) {
                            Some((_, p)) => {
                                let was = p.contains(EptPerms::WRITE);
                                p.remove(EptPerms::WRITE);
                                was
                            }
                            None => false,
                        };
                        prop_assert_eq!(ept.write_protect(page_gpa(page)), want);
                    }
                    Op::MakeWritable { page } => {
                        let want = match m.small.get_mut(&page) {
                            Some((_, p)) if p.contains(EptPerms::READ) => {
                                let was = p.contains(EptPerms::WRITE);
                                p.insert(EptPerms::WRITE);
                                !was
                            }
                            _ => false,
                        };
                        prop_assert_eq!(ept.make_writable(page_gpa(page)), want);
                    }
                    Op::ProtectRange { page, npages } => {
                        // Stay inside the page's region and the next ones.
                        let last = (page + npages).min(REGIONS * 512);
                        let start = page_gpa(page);
                        let len = (last - page) * SIZE_4K;
                        // Model: regions are not contiguous in gpa, so
                        // compute the pages the gpa range covers.
                        let end = start + len;
                        let mut want = 0;
                        for r in 0..REGIONS {
                            let (b, e) = (region_base(r), region_base(r) + SIZE_2M);
                            if len == 0 || b >= end || e <= start {
                                continue;
                            }
                            if let Some((h, p)) = m.large.remove(&r) {
                                for i in 0..512 {
                                    m.small.insert(r * 512 + i, (h + i * SIZE_4K, p));
                                }
                                m.has_pt.insert(r);
                            }
                            for i in 0..512 {
                                let g = b + i * SIZE_4K;
                                if g < start || g >= end {
                                    continue;
                                }
                                if let Some((_, p)) = m.small.get_mut(&(r * 512 + i)) {
                                    if p.contains(EptPerms::WRITE) {
                                        p.remove(EptPerms::WRITE);
                                        want += 1;
                                    }
                                }
                            }
                        }
                        prop_assert_eq!(ept.write_protect_range(start, len), Ok(want));
                    }
                    Op::Translate { page, off } => {
                        let want = m.translate(page).map(|(h, p, s)| (h + off, p, s));
                        prop_assert_eq!(ept.translate(page_gpa(page) + off), want);
                    }
                }
            }
            // Final state: the leaves and counters agree with the model.
            let mut seen = HashMap::new();
            ept.for_each_leaf(|l| { seen.insert(l.gpa, (l.hpa, l.perms, l.size)); });
            let mut want = HashMap::new();
            for (&page, &(h, p)) in &m.small {
                want.insert(page_gpa(page), (h, p, PageSize::Size4K));
            }
            for (&r, &(h, p)) in &m.large {
                want.insert(region_base(r), (h, p, PageSize::Size2M));
            }
            prop_assert_eq!(seen, want);
            let s = ept.stats();
            prop_assert_eq!(s.leaves_4k, m.small.len() as u64);
            prop_assert_eq!(s.leaves_2m, m.large.len() as u64);
            assert_tables_consistent(&ept);
            drop(ept);
            prop_assert!(mem.live().is_empty());
        }
    }
}
