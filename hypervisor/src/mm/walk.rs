//! The guest's own page tables, walked in software: linear → guest-physical
//! in every paging mode (Intel SDM Vol. 3A, chapter 4), with the permission
//! checks and the page-fault error code a CPU would produce (4.6, 4.7).
//!
//! Used to fetch the instruction behind an MMIO exit: the VM-exit gives the
//! guest-physical address of the data access, never of the instruction.
//!
//! Modes (table 4-1): paging off (linear = physical, 32 bits); 32-bit paging
//! with 4 MiB pages under CR4.PSE (PSE-36 high address bits included); PAE
//! paging with 2 MiB pages; 4-level paging with 2 MiB and 1 GiB pages.
//! 5-level paging (CR4.LA57) is refused with [`WalkError::Unsupported`].
//!
//! Checked: present, reserved bits (MAXPHYADDR is a parameter; XD is
//! reserved unless EFER.NXE), R/W with CR0.WP, U/S, XD, SMEP and SMAP (with
//! RFLAGS.AC). Not modelled: protection keys (CR4.PKE/PKS), and the implicit
//! supervisor accesses (to the GDT/IDT) that ignore CPL.
//!
//! PAE paging's four PDPTEs are those the CPU loaded at MOV CR3
//! (SDM 4.4.1): the caller passes them (the VMCS holds them under EPT,
//! 25.4.2); without them they are read from memory at CR3.
//!
//! Accessed and dirty flags (4.8): when [`Walk::set_accessed_dirty`] is on,
//! a successful walk sets A in every entry it used and D in the leaf of a
//! write, each with a compare-exchange as the CPU does it atomically; if an
//! entry changed meanwhile, the walk starts over. A faulting walk sets
//! nothing. The instruction fetch for MMIO runs with it on: the CPU itself
//! just fetched the same bytes, so the flags are normally set already;
//! `exits::mmio` logs those writes in dirty-logged slots and leaves tables
//! in read-only slots unwritten.

use crate::x86::{CR0_PG, CR0_WP, CR4_PAE, CR4_PSE, EFER_LMA, EFER_NXE};

/// CR4.SMEP (bit 20), CR4.SMAP (bit 21), CR4.LA57 (bit 12): SDM 2.5.
pub const CR4_SMEP: u64 = 1 << 20;
pub const CR4_SMAP: u64 = 1 << 21;
pub const CR4_LA57: u64 = 1 << 12;

/// Page-fault error code bits (SDM 4.7, figure 4-12).
pub const PF_P: u32 = 1 << 0;
pub const PF_W: u32 = 1 << 1;
pub const PF_U: u32 = 1 << 2;
pub const PF_RSVD: u32 = 1 << 3;
pub const PF_I: u32 = 1 << 4;

/// The kind of access being translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessKind {
    Read,
    Write,
    Fetch,
}

/// One access: its kind, and the privilege it is made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkAccess {
    pub kind: AccessKind,
    /// CPL = 3 (a user-mode access, SDM 4.6).
    pub user: bool,
    /// RFLAGS.AC, for SMAP.
    pub ac: bool,
}

impl WalkAccess {
    pub const fn new(kind: AccessKind, cpl: u8) -> Self {
        WalkAccess {
            kind,
            user: cpl == 3,
            ac: false,
        }
    }
}

/// The registers that select and control paging, and the CPU's facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walk {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    /// The PDPTEs the CPU holds in PAE paging (VMCS guest PDPTE0-3).
    pub pdptes: Option<[u64; 4]>,
    /// CPUID.80000008H:EAX[7:0].
    pub maxphyaddr: u8,
    /// Whether 1 GiB pages exist (CPUID.80000001H:EDX.Page1GB[26]).
    pub gb_pages: bool,
    pub set_accessed_dirty: bool,
}

/// The paging mode the registers select (SDM table 4-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagingMode {
    None,
    Bits32,
    Pae,
    Level4,
}

/// A successful translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    pub gpa: u64,
    /// The size of the page that maps it (4 KiB, 2 MiB, 4 MiB, 1 GiB; the
    /// whole 4 GiB space with paging off).
    pub page_size: u64,
}

/// A #PF as the guest must see it: the error code and CR2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageFault {
    pub error_code: u32,
    pub cr2: u64,
}

/// Why a walk gave no translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkError {
    /// The guest takes a page fault.
    PageFault(PageFault),
    /// A paging-structure entry lies at a guest-physical address no
    /// memslot backs (a real CPU would read a device or all ones there;
    /// the hypervisor refuses to guess).
    Unbacked { gpa: u64 },
    /// The linear address is not canonical: the CPU raises #GP (or #SS),
    /// not #PF, before any walk.
    NonCanonical { la: u64 },
    /// A mode or feature this walker does not model.
    Unsupported(&'static str),
}

impl core::fmt::Display for WalkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WalkError::PageFault(pf) => write!(
                f,
                "page fault at {:#x}, error code {:#x}",
                pf.cr2, pf.error_code
            ),
            WalkError::Unbacked { gpa } => {
                write!(f, "a page-table entry at gpa {gpa:#x} no memslot backs")
            }
            WalkError::NonCanonical { la } => write!(f, "non-canonical address {la:#x}"),
            WalkError::Unsupported(what) => write!(f, "unsupported: {what}"),
        }
    }
}

/// Guest-physical memory as the walker reads and updates it. Entries are
/// 4 bytes (32-bit paging) or 8, little-endian, naturally aligned.
pub trait PageTableMemory {
    /// The entry at `gpa`; `Err(gpa)` if no memslot backs it.
    fn read_entry(&mut self, gpa: u64, wide: bool) -> Result<u64, u64>;
    /// Replaces the entry at `gpa` by `new` if it still holds `old`
    /// (atomically with respect to other vCPUs); `Ok(false)` if it changed.
    fn update_entry(&mut self, gpa: u64, wide: bool, old: u64, new: u64) -> Result<bool, u64>;
}

const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const XD: u64 = 1 << 63;

/// Bits `hi:lo` set (inclusive), empty when `hi < lo`.
const fn bits(hi: u32, lo: u32) -> u64 {
    if hi < lo {
        0
    } else {
        (u64::MAX >> (63 - hi)) & (u64::MAX << lo)
    }
}

/// The most entries one walk uses (4-level: PML4E, PDPTE, PDE, PTE).
const MAX_LEVELS: usize = 4;

/// The entries a walk used, for the A/D update: (gpa, value).
struct Path {
    entries: [(u64, u64); MAX_LEVELS],
    len: usize,
}

impl Path {
    fn push(&mut self, gpa: u64, value: u64) {
        self.entries[self.len] = (gpa, value);
        self.len += 1;
    }
}

impl Walk {
    pub fn mode(&self) -> PagingMode {
        if self.cr0 & CR0_PG == 0 {
            PagingMode::None
        } else if self.cr4 & CR4_PAE == 0 {
            PagingMode::Bits32
        } else if self.efer & EFER_LMA == 0 {
            PagingMode::Pae
        } else {
            PagingMode::Level4
        }
    }

    fn nxe(&self) -> bool {
        self.efer & EFER_NXE != 0
    }

    /// Bits M-1:12 of an entry: the physical address it holds.
    fn addr_mask(&self) -> u64 {
        bits(u32::from(self.maxphyaddr).min(52) - 1, 12)
    }

    /// Translates `la` for `access`, or says why the CPU would not.
    pub fn translate(
        &self,
        mem: &mut impl PageTableMemory,
        la: u64,
        access: WalkAccess,
    ) -> Result<Translation, WalkError> {
        if !(32..=52).contains(&self.maxphyaddr) {
            return Err(WalkError::Unsupported("MAXPHYADDR outside 32..=52"));
        }
        // A few retries when another vCPU changes an entry under the A/D
        // update; a guest that rewrites its tables this fast gets an error.
        for _ in 0..8 {
            let mut path = Path {
                entries: [(0, 0); MAX_LEVELS],
                len: 0,
            };
            let t = match self.mode() {
                PagingMode::None => {
                    return Ok(Translation {
                        gpa: la & 0xffff_ffff,
                        page_size: 1 << 32,
                    })
                }
                PagingMode::Bits32 => self.walk32(mem, la, access, &mut path)?,
                PagingMode::Pae => self.walk_pae(mem, la, access, &mut path)?,
                PagingMode::Level4 => self.walk4(mem, la, access, &mut path)?,
            };
            if !self.set_accessed_dirty || self.update_ad(mem, &path, access)? {
                return Ok(t);
            }
        }
        Err(WalkError::Unsupported(
            "the guest's page tables kept changing during the walk",
        ))
    }

    /// Sets A on the path and D on the leaf of a write; false if an entry
    /// changed since it was read.
    fn update_ad(
        &self,
        mem: &mut impl PageTableMemory,
        path: &Path,
        access: WalkAccess,
    ) -> Result<bool, WalkError> {
        let wide = self.mode() != PagingMode::Bits32;
        for (i, &(gpa, old)) in path.entries[..path.len].iter().enumerate() {
            let leaf = i + 1 == path.len;
            let mut new = old | A;
            if leaf && access.kind == AccessKind::Write {
                new |= D;
            }
            // PAE PDPTEs have no A flag (SDM table 4-8: bit 5 reserved...
            // ignored): the CPU never writes them.
            let pae_pdpte = self.mode() == PagingMode::Pae && i == 0;
            if new != old && !pae_pdpte {
                let done = mem
                    .update_entry(gpa, wide, old, new)
                    .map_err(|gpa| WalkError::Unbacked { gpa })?;
                if !done {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    fn fault(&self, la: u64, access: WalkAccess, mut code: u32) -> WalkError {
        if access.kind == AccessKind::Write {
            code |= PF_W;
        }
        if access.user {
            code |= PF_U;
        }
        // I/D (SDM 4.7): a fetch, reported only with SMEP, or with NXE in
        // PAE or 4-level paging.
        if access.kind == AccessKind::Fetch
            && (self.cr4 & CR4_SMEP != 0 || (self.cr4 & CR4_PAE != 0 && self.nxe()))
        {
            code |= PF_I;
        }
        WalkError::PageFault(PageFault {
            error_code: code,
            cr2: la,
        })
    }

    fn read(
        mem: &mut impl PageTableMemory,
        gpa: u64,
        wide: bool,
        path: &mut Path,
    ) -> Result<u64, WalkError> {
        let e = mem
            .read_entry(gpa, wide)
            .map_err(|gpa| WalkError::Unbacked { gpa })?;
        path.push(gpa, e);
        Ok(e)
    }

    /// 32-bit paging (SDM 4.3).
    fn walk32(
        &self,
        mem: &mut impl PageTableMemory,
        la: u64,
        access: WalkAccess,
        path: &mut Path,
    ) -> Result<Translation, WalkError> {
        let la = la & 0xffff_ffff;
        let pde_at = (self.cr3 & 0xffff_f000) | ((la >> 22) << 2);
        let pde = Self::read(mem, pde_at, false, path)?;
        if pde & P == 0 {
            return Err(self.fault(la, access, 0));
        }
        if pde & PS != 0 && self.cr4 & CR4_PSE != 0 {
            // 4 MiB page (table 4-4): bits 20:13 are physical bits 39:32
            // (PSE-36), those at or above MAXPHYADDR reserved, bit 21 reserved.
            let m = u32::from(self.maxphyaddr).min(40);
            let rsvd = (1 << 21) | bits(20, m - 19);
            if pde & rsvd != 0 {
                return Err(self.fault(la, access, PF_P | PF_RSVD));
            }
            let base = (pde & 0xffc0_0000) | (((pde >> 13) & 0xff) << 32);
            self.check(la, access, pde & RW != 0, pde & US != 0, false)?;
            return Ok(Translation {
                gpa: base | (la & 0x3f_ffff),
                page_size: 4 << 20,
            });
        }
        let pte_at = (pde & 0xffff_f000) | (((la >> 12) & 0x3ff) << 2);
        let pte = Self::read(mem, pte_at, false, path)?;
        if pte & P == 0 {
            return Err(self.fault(la, access, 0));
        }
        self.check(la, access, pde & pte & RW != 0, pde & pte & US != 0, false)?;
        Ok(Translation {
            gpa: (pte & 0xffff_f000) | (la & 0xfff),
            page_size: 4096,
        })
    }

    /// PAE paging (SDM 4.4).
    fn walk_pae(
        &self,
        mem: &mut impl PageTableMemory,
        la: u64,
        access: WalkAccess,
        path: &mut Path,
    ) -> Result<Translation, WalkError> {
        let la = la & 0xffff_ffff;
        let m = u32::from(self.maxphyaddr);
        let xd_rsvd = if self.nxe() { 0 } else { XD };
        let i = (la >> 30) as usize;
        let pdpte = match self.pdptes {
            Some(p) => {
                path.push(0, p[i]);
                p[i]
            }
            None => Self::read(mem, (self.cr3 & 0xffff_ffe0) + 8 * i as u64, true, path)?,
        };
        if pdpte & P == 0 {
            return Err(self.fault(la, access, 0));
        }
        // Table 4-8: bits 2:1, 8:5 and 63:M reserved.
        if pdpte & (bits(2, 1) | bits(8, 5) | bits(63, m)) != 0 {
            return Err(self.fault(la, access, PF_P | PF_RSVD));
        }
        let rsvd = bits(62, m) | xd_rsvd;
        let pde_at = (pdpte & self.addr_mask()) | (((la >> 21) & 0x1ff) << 3);
        let pde = Self::read(mem, pde_at, true, path)?;
        if pde & P == 0 {
            return Err(self.fault(la, access, 0));
        }
        if pde & PS != 0 {
            // 2 MiB page (table 4-9): bits 20:13 reserved.
            if pde & (rsvd | bits(20, 13)) != 0 {
                return Err(self.fault(la, access, PF_P | PF_RSVD));
            }
            self.check(la, access, pde & RW != 0, pde & US != 0, pde & XD != 0)?;
            return Ok(Translation {
                gpa: (pde & self.addr_mask() & !bits(20, 0)) | (la & bits(20, 0)),
                page_size: 2 << 20,
            });
        }
        if pde & rsvd != 0 {
            return Err(self.fault(la, access, PF_P | PF_RSVD));
        }
        let pte_at = (pde & self.addr_mask()) | (((la >> 12) & 0x1ff) << 3);
        let pte = Self::read(mem, pte_at, true, path)?;
        if pte & P == 0 {
            return Err(self.fault(la, access, 0));
        }
        if pte & rsvd != 0 {
            return Err(self.fault(la, access, PF_P | PF_RSVD));
        }
        let (all, xd) = (pde & pte, (pde | pte) & XD != 0);
        self.check(la, access, all & RW != 0, all & US != 0, xd)?;
        Ok(Translation {
            gpa: (pte & self.addr_mask()) | (la & 0xfff),
            page_size: 4096,
        })
    }

    /// 4-level paging (SDM 4.5).
    fn walk4(
        &self,
        mem: &mut impl PageTableMemory,
        la: u64,
        access: WalkAccess,
        path: &mut Path,
    ) -> Result<Translation, WalkError> {
        if self.cr4 & CR4_LA57 != 0 {
            return Err(WalkError::Unsupported("5-level paging (CR4.LA57)"));
        }
        if !crate::x86::is_canonical(la) {
            return Err(WalkError::NonCanonical { la });
        }
        let m = u32::from(self.maxphyaddr);
        // Tables 4-15..4-20: bits 51:M reserved, and XD unless NXE.
        let rsvd = bits(51, m) | if self.nxe() { 0 } else { XD };
        let mut table = self.cr3 & self.addr_mask();
        let (mut rw, mut us, mut xd) = (true, true, false);
        // Levels: PML4 (39), PDPT (30), PD (21), PT (12).
        for shift in [39u32, 30, 21, 12] {
            let at = table | (((la >> shift) & 0x1ff) << 3);
            let e = Self::read(mem, at, true, path)?;
            if e & P == 0 {
                return Err(self.fault(la, access, 0));
            }
            let large = shift != 12 && e & PS != 0;
            let mut bad = e & rsvd;
            match (shift, large) {
                // PML4E: PS reserved (table 4-15).
                (39, true) => bad |= PS,
                // 1 GiB page: bits 29:13 reserved; PS reserved without 1 GiB pages.
                (30, true) if !self.gb_pages => bad |= PS,
                (30, true) => bad |= e & bits(29, 13),
                // 2 MiB page: bits 20:13 reserved.
                (21, true) => bad |= e & bits(20, 13),
                _ => {}
            }
            if bad != 0 {
                return Err(self.fault(la, access, PF_P | PF_RSVD));
            }
            rw &= e & RW != 0;
            us &= e & US != 0;
            xd |= e & XD != 0;
            if shift == 12 || large {
                self.check(la, access, rw, us, xd)?;
                let offset = bits(shift - 1, 0);
                return Ok(Translation {
                    gpa: (e & self.addr_mask() & !offset) | (la & offset),
                    page_size: 1 << shift,
                });
            }
            table = e & self.addr_mask();
        }
        unreachable!("the PT level always returns")
    }

    /// Access rights of a present translation (SDM 4.6).
    fn check(
        &self,
        la: u64,
        access: WalkAccess,
        writable: bool,
        user_page: bool,
        xd: bool,
    ) -> Result<(), WalkError> {
        let denied = match (access.kind, access.user) {
            (_, true) if !user_page => true,
            (AccessKind::Write, true) => !writable,
            (AccessKind::Fetch, _) if xd && self.nxe() => true,
            (AccessKind::Fetch, true) => false,
            // Supervisor fetch from a user page: SMEP.
            (AccessKind::Fetch, false) => user_page && self.cr4 & CR4_SMEP != 0,
            // Supervisor data access to a user page: SMAP unless RFLAGS.AC.
            (_, false) if user_page && self.cr4 & CR4_SMAP != 0 && !access.ac => true,
            (AccessKind::Write, false) => !writable && self.cr0 & CR0_WP != 0,
            (AccessKind::Read, _) => false,
        };
        if denied {
            Err(self.fault(la, access, PF_P))
        } else {
            Ok(())
        }
    }
}

impl<M: super::HostMemory> PageTableMemory for super::guest_mem::GuestMem<'_, M> {
    fn read_entry(&mut self, gpa: u64, wide: bool) -> Result<u64, u64> {
        let mut b = [0u8; 8];
        let n = if wide { 8 } else { 4 };
        self.read(gpa, &mut b[..n])?;
        Ok(u64::from_le_bytes(b))
    }
    fn update_entry(&mut self, gpa: u64, wide: bool, old: u64, new: u64) -> Result<bool, u64> {
        self.compare_exchange(gpa, wide, old, new)
    }
}

#[cfg(test)]
mod tests;
