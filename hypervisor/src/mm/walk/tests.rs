//! The walker in every mode, against hand-built page tables in a small
//! byte array (1 MiB of "guest memory" for tables; above it is unbacked).

extern crate std;

use super::*;
use crate::x86::{CR0_PE, CR4_PSE};
use std::vec;
use std::vec::Vec;

const MEM: usize = 1 << 20;

struct Mem(Vec<u8>);

impl Mem {
    fn new() -> Self {
        Mem(vec![0; MEM])
    }
    fn set(&mut self, gpa: u64, value: u64, wide: bool) {
        let n = if wide { 8 } else { 4 };
        self.0[gpa as usize..gpa as usize + n].copy_from_slice(&value.to_le_bytes()[..n]);
    }
    fn get(&self, gpa: u64, wide: bool) -> u64 {
        let mut b = [0u8; 8];
        let n = if wide { 8 } else { 4 };
        b[..n].copy_from_slice(&self.0[gpa as usize..gpa as usize + n]);
        u64::from_le_bytes(b)
    }
}

impl PageTableMemory for Mem {
    fn read_entry(&mut self, gpa: u64, wide: bool) -> Result<u64, u64> {
        if gpa as usize + 8 > MEM {
            return Err(gpa);
        }
        Ok(self.get(gpa, wide))
    }
    fn update_entry(&mut self, gpa: u64, wide: bool, old: u64, new: u64) -> Result<bool, u64> {
        if self.read_entry(gpa, wide)? != old {
            return Ok(false);
        }
        self.set(gpa, new, wide);
        Ok(true)
    }
}

const R: WalkAccess = WalkAccess::new(AccessKind::Read, 0);
const W: WalkAccess = WalkAccess::new(AccessKind::Write, 0);
const X: WalkAccess = WalkAccess::new(AccessKind::Fetch, 0);
const UR: WalkAccess = WalkAccess::new(AccessKind::Read, 3);
const UW: WalkAccess = WalkAccess::new(AccessKind::Write, 3);
const UX: WalkAccess = WalkAccess::new(AccessKind::Fetch, 3);

fn walk(cr0: u64, cr4: u64, efer: u64, cr3: u64) -> Walk {
    Walk {
        cr0: cr0 | CR0_PE,
        cr3,
        cr4,
        efer,
        pdptes: None,
        maxphyaddr: 40,
        gb_pages: true,
        set_accessed_dirty: false,
    }
}

fn pf(r: Result<Translation, WalkError>) -> (u32, u64) {
    match r {
        Err(WalkError::PageFault(p)) => (p.error_code, p.cr2),
        other => panic!("expected a page fault, got {other:?}"),
    }
}

fn gpa(r: Result<Translation, WalkError>) -> (u64, u64) {
    let t = r.expect("translates");
    (t.gpa, t.page_size)
}

#[test]
fn paging_off_is_the_identity_on_32_bits() {
    let mut m = Mem::new();
    let w = walk(0, 0, 0, 0);
    assert_eq!(w.mode(), PagingMode::None);
    assert_eq!(gpa(w.translate(&mut m, 0x1234_5678, UW)).0, 0x1234_5678);
    assert_eq!(gpa(w.translate(&mut m, 0x1_0000_0010, X)).0, 0x10);
}

const PG: u64 = CR0_PG;
const RWP: u64 = P | RW;
const URWP: u64 = P | RW | US;

/// 32-bit paging: PD at 0x1000, PT at 0x2000.
fn bits32() -> (Mem, Walk) {
    let mut m = Mem::new();
    // la 0x0040_3000 (PDE 1, PTE 3) → 0x7_7000, user RW.
    m.set(0x1000 + 4, 0x2000 | URWP, false);
    m.set(0x2000 + 3 * 4, 0x7_7000 | URWP, false);
    // PTE 4: supervisor, read-only.
    m.set(0x2000 + 4 * 4, 0x7_8000 | P, false);
    // PDE 2: a 4 MiB page at 0x0c00_0000 with PSE-36 bits 35:32 = 0x3.
    m.set(0x1000 + 2 * 4, 0x0c00_0000 | (0x3 << 13) | PS | URWP, false);
    (m, walk(PG | CR0_WP, CR4_PSE, 0, 0x1000))
}

#[test]
fn bits32_4k_and_4m_pages() {
    let (mut m, w) = bits32();
    assert_eq!(w.mode(), PagingMode::Bits32);
    assert_eq!(gpa(w.translate(&mut m, 0x0040_3abc, UW)), (0x7_7abc, 4096));
    assert_eq!(
        gpa(w.translate(&mut m, 0x0087_6543, R)),
        (0x3_0c07_6543, 4 << 20),
        "4 MiB page with PSE-36 bits"
    );
    // Without CR4.PSE, PS is ignored: the PDE points at a page table
    // (0x0c00_6000 with bits 14:13 now address bits, unbacked here).
    let nopse = Walk { cr4: 0, ..w };
    assert_eq!(
        nopse.translate(&mut m, 0x0087_6543, R),
        Err(WalkError::Unbacked {
            gpa: 0x0c00_6000 | (0x76 << 2)
        })
    );
}

#[test]
fn bits32_faults() {
    let (mut m, w) = bits32();
    // Not present PDE; CR2 is the linear address.
    assert_eq!(pf(w.translate(&mut m, 0x00c0_0000, R)), (0, 0x00c0_0000));
    assert_eq!(
        pf(w.translate(&mut m, 0x00c0_0000, UW)),
        (PF_W | PF_U, 0x00c0_0000)
    );
    // Not present PTE.
    assert_eq!(pf(w.translate(&mut m, 0x0040_5000, UX)).0, PF_U);
    // User read of a supervisor page; supervisor write of a read-only page
    // with CR0.WP; fine with WP clear.
    assert_eq!(pf(w.translate(&mut m, 0x0040_4000, UR)).0, PF_P | PF_U);
    assert_eq!(pf(w.translate(&mut m, 0x0040_4000, W)).0, PF_P | PF_W);
    let nowp = Walk {
        cr0: w.cr0 & !CR0_WP,
        ..w
    };
    assert_eq!(gpa(nowp.translate(&mut m, 0x0040_4000, W)).0, 0x7_8000);
    // 4 MiB PDE: bit 21 is reserved; so are PSE-36 bits above MAXPHYADDR.
    m.set(0x1000 + 3 * 4, (1 << 21) | PS | RWP, false);
    assert_eq!(pf(w.translate(&mut m, 0x00c0_0000, R)).0, PF_P | PF_RSVD);
    let m36 = Walk {
        maxphyaddr: 36,
        ..w
    };
    m.set(0x1000 + 3 * 4, (0x10 << 13) | PS | RWP, false);
    assert_eq!(
        pf(m36.translate(&mut m, 0x00c0_0000, W)).0,
        PF_P | PF_RSVD | PF_W
    );
    assert!(w.translate(&mut m, 0x00c0_0000, W).is_ok());
    // No I/D bit in 32-bit paging without SMEP (SDM 4.7) ...
    m.set(0x2000 + 5 * 4, 0, false);
    assert_eq!(pf(w.translate(&mut m, 0x0040_5000, X)).0, 0);
    // ... and with it.
    let smep = Walk {
        cr4: w.cr4 | CR4_SMEP,
        ..w
    };
    assert_eq!(pf(smep.translate(&mut m, 0x0040_5000, X)).0, PF_I);
    // SMEP: supervisor fetch from a user page.
    assert_eq!(pf(smep.translate(&mut m, 0x0040_3000, X)).0, PF_P | PF_I);
    assert!(smep.translate(&mut m, 0x0040_3000, UX).is_ok());
}

/// PAE: PDPT at 0x1000 (32-byte aligned), PD at 0x2000, PT at 0x3000.
fn pae() -> (Mem, Walk) {
    let mut m = Mem::new();
    // la 0x4020_1000: PDPTE 1, PDE 1, PTE 1.
    m.set(0x1000 + 8, 0x2000 | P, true);
    m.set(0x2000 + 8, 0x3000 | URWP, true);
    m.set(0x3000 + 8, 0x12_3456_7000 | URWP | XD, true);
    // PDE 2: a 2 MiB page at 0x8_0040_0000.
    m.set(0x2000 + 16, 0x8_0040_0000 | PS | RWP, true);
    (m, walk(PG | CR0_WP, CR4_PAE, EFER_NXE, 0x1000))
}

#[test]
fn pae_4k_and_2m_pages() {
    let (mut m, w) = pae();
    assert_eq!(w.mode(), PagingMode::Pae);
    assert_eq!(
        gpa(w.translate(&mut m, 0x4020_1010, UW)),
        (0x12_3456_7010, 4096)
    );
    assert_eq!(
        gpa(w.translate(&mut m, 0x4045_6789, W)),
        (0x8_0045_6789, 2 << 20)
    );
    // The PDPTEs the CPU holds win over memory.
    let held = Walk {
        pdptes: Some([0, 0x2000 | P, 0, 0]),
        cr3: 0xf_0000,
        ..w
    };
    assert_eq!(
        gpa(held.translate(&mut m, 0x4020_1010, R)).0,
        0x12_3456_7010
    );
    assert_eq!(pf(held.translate(&mut m, 0x8000_0000, R)), (0, 0x8000_0000));
}

#[test]
fn pae_faults() {
    let (mut m, w) = pae();
    // XD with NXE: fetch faults with I/D; without NXE bit 63 is reserved.
    assert_eq!(
        pf(w.translate(&mut m, 0x4020_1000, UX)).0,
        PF_P | PF_U | PF_I
    );
    let nonx = Walk { efer: 0, ..w };
    assert_eq!(pf(nonx.translate(&mut m, 0x4020_1000, R)).0, PF_P | PF_RSVD);
    // No I/D without NXE (and no SMEP).
    assert_eq!(pf(nonx.translate(&mut m, 0xc000_0000, X)).0, 0);
    // Not-present PDPTE; reserved PDPTE bits (2:1).
    assert_eq!(pf(w.translate(&mut m, 0xc000_0000, X)).0, PF_I);
    m.set(0x1000 + 24, 0x2000 | P | RW, true);
    assert_eq!(pf(w.translate(&mut m, 0xc000_0000, R)).0, PF_P | PF_RSVD);
    // 2 MiB page: bits 20:13 reserved; user access to a supervisor page.
    assert_eq!(pf(w.translate(&mut m, 0x4040_0000, UR)).0, PF_P | PF_U);
    m.set(0x2000 + 16, 0x8_0040_0000 | (1 << 13) | PS | RWP, true);
    assert_eq!(pf(w.translate(&mut m, 0x4040_0000, R)).0, PF_P | PF_RSVD);
    // An address bit at or above MAXPHYADDR.
    m.set(0x2000 + 16, (1 << 40) | PS | RWP, true);
    assert_eq!(pf(w.translate(&mut m, 0x4040_0000, R)).0, PF_P | PF_RSVD);
}

/// 4-level: PML4 at 0x1000, PDPT 0x2000, PD 0x3000, PT 0x4000.
fn level4() -> (Mem, Walk) {
    let mut m = Mem::new();
    // la 0xffff_8000_4020_3000: PML4E 256, PDPTE 1, PDE 1, PTE 3.
    m.set(0x1000 + 256 * 8, 0x2000 | URWP, true);
    m.set(0x2000 + 8, 0x3000 | URWP, true);
    m.set(0x3000 + 8, 0x4000 | URWP, true);
    m.set(0x4000 + 3 * 8, 0xab_cdef_0000 | URWP, true);
    // PDE 2: 2 MiB page at 0x20_0000, supervisor RW, XD.
    m.set(0x3000 + 16, 0x20_0000 | PS | RWP | XD, true);
    // PDPTE 2: a 1 GiB page at 0x40_0000_0000, user read-only.
    m.set(0x2000 + 16, 0x40_0000_0000 | PS | P | US, true);
    let w = walk(
        PG | CR0_WP,
        CR4_PAE,
        crate::x86::EFER_LME | EFER_LMA | EFER_NXE,
        0x1000,
    );
    (m, w)
}

const L4: u64 = 0xffff_8000_0000_0000;

#[test]
fn level4_4k_2m_and_1g_pages() {
    let (mut m, w) = level4();
    assert_eq!(w.mode(), PagingMode::Level4);
    assert_eq!(
        gpa(w.translate(&mut m, L4 | 0x4020_3123, UX)),
        (0xab_cdef_0123, 4096)
    );
    assert_eq!(
        gpa(w.translate(&mut m, L4 | 0x4045_6789, W)),
        (0x25_6789, 2 << 20)
    );
    assert_eq!(
        gpa(w.translate(&mut m, L4 | 0x8123_4567, UR)),
        (0x40_0123_4567, 1 << 30)
    );
}

#[test]
fn level4_faults() {
    let (mut m, w) = level4();
    let la = L4 | 0x4045_6789;
    // XD 2 MiB page: supervisor fetch faults with I/D; user read faults U/S.
    assert_eq!(pf(w.translate(&mut m, la, X)), (PF_P | PF_I, la));
    assert_eq!(pf(w.translate(&mut m, la, UR)).0, PF_P | PF_U);
    // User write to a read-only 1 GiB page; supervisor write with WP.
    assert_eq!(
        pf(w.translate(&mut m, L4 | 0x8000_0000, UW)).0,
        PF_P | PF_W | PF_U
    );
    assert_eq!(pf(w.translate(&mut m, L4 | 0x8000_0000, W)).0, PF_P | PF_W);
    // Not present at the PML4.
    assert_eq!(pf(w.translate(&mut m, 0x1000, W)), (PF_W, 0x1000));
    // 1 GiB pages not offered: PS in a PDPTE is reserved.
    let no1g = Walk {
        gb_pages: false,
        ..w
    };
    assert_eq!(
        pf(no1g.translate(&mut m, L4 | 0x8000_0000, R)).0,
        PF_P | PF_RSVD
    );
    // PS in a PML4E is reserved.
    m.set(0x1000 + 8, 0x2000 | PS | RWP, true);
    assert_eq!(pf(w.translate(&mut m, 0x80_0000_0000, R)).0, PF_P | PF_RSVD);
    // 1 GiB page: bits 29:13 reserved.
    m.set(0x2000 + 24, 0x40_0000_0000 | (1 << 20) | PS | RWP, true);
    assert_eq!(
        pf(w.translate(&mut m, L4 | 0xc000_0000, R)).0,
        PF_P | PF_RSVD
    );
    // A PTE address bit above MAXPHYADDR (40); XD without NXE.
    m.set(0x4000 + 3 * 8, (1 << 45) | URWP, true);
    assert_eq!(
        pf(w.translate(&mut m, L4 | 0x4020_3000, UR)).0,
        PF_P | PF_RSVD | PF_U
    );
    let nonx = Walk {
        efer: w.efer & !EFER_NXE,
        ..w
    };
    assert_eq!(pf(nonx.translate(&mut m, la, R)).0, PF_P | PF_RSVD);
    // SMAP: supervisor read of a user page, unless RFLAGS.AC.
    let smap = Walk {
        cr4: w.cr4 | CR4_SMAP,
        ..w
    };
    let user_1g = L4 | 0x8000_0000;
    assert_eq!(pf(smap.translate(&mut m, user_1g, R)).0, PF_P);
    let ac = WalkAccess { ac: true, ..R };
    assert!(smap.translate(&mut m, user_1g, ac).is_ok());
}

#[test]
fn level4_refusals_are_clean() {
    let (mut m, w) = level4();
    assert_eq!(
        w.translate(&mut m, 0x8000_0000_0000, R),
        Err(WalkError::NonCanonical {
            la: 0x8000_0000_0000
        })
    );
    let la57 = Walk {
        cr4: w.cr4 | CR4_LA57,
        ..w
    };
    assert!(matches!(
        la57.translate(&mut m, 0, R),
        Err(WalkError::Unsupported(_))
    ));
    // A table no memory backs is an error, not a panic.
    m.set(0x1000, 0x4000_0000 | RWP, true);
    assert_eq!(
        w.translate(&mut m, 0x10, R),
        Err(WalkError::Unbacked { gpa: 0x4000_0000 })
    );
    let huge = Walk {
        maxphyaddr: 60,
        ..w
    };
    assert!(matches!(
        huge.translate(&mut m, 0, R),
        Err(WalkError::Unsupported(_))
    ));
}

#[test]
fn accessed_and_dirty_flags_as_the_cpu_sets_them() {
    let (mut m, w) = level4();
    let w = Walk {
        set_accessed_dirty: true,
        ..w
    };
    let entries = [0x1000 + 256 * 8, 0x2000 + 8, 0x3000 + 8, 0x4000 + 3 * 8];
    // A read sets A everywhere and D nowhere.
    w.translate(&mut m, L4 | 0x4020_3000, R).unwrap();
    for e in entries {
        assert_eq!(m.get(e, true) & (A | D), A, "entry at {e:#x}");
    }
    // A write sets D on the leaf only.
    w.translate(&mut m, L4 | 0x4020_3000, W).unwrap();
    assert_eq!(m.get(entries[3], true) & D, D);
    assert_eq!(m.get(entries[2], true) & D, 0);
    // A faulting walk changes nothing.
    let before = m.get(0x2000 + 16, true);
    pf(w.translate(&mut m, L4 | 0x8000_0000, UW));
    assert_eq!(m.get(0x2000 + 16, true), before);
    // 32-bit entries are updated as 4 bytes.
    let (mut m, w) = bits32();
    let w = Walk {
        set_accessed_dirty: true,
        ..w
    };
    m.set(0x2000 + 3 * 4 + 4, 0x5555_5555, false);
    w.translate(&mut m, 0x0040_3000, W).unwrap();
    assert_eq!(m.get(0x2000 + 3 * 4, false), 0x7_7000 | URWP | A | D);
    assert_eq!(
        m.get(0x2000 + 4 * 4, false),
        0x5555_5555,
        "next entry intact"
    );
}

/// A table store that changes an entry under every update: the walk
/// retries, then gives up with an error (never loops forever).
#[test]
fn tables_changing_under_the_walk_end_in_an_error() {
    struct Racy(Mem);
    impl PageTableMemory for Racy {
        fn read_entry(&mut self, gpa: u64, wide: bool) -> Result<u64, u64> {
            self.0.read_entry(gpa, wide)
        }
        fn update_entry(&mut self, _: u64, _: bool, _: u64, _: u64) -> Result<bool, u64> {
            Ok(false)
        }
    }
    let (m, w) = level4();
    let w = Walk {
        set_accessed_dirty: true,
        ..w
    };
    assert!(matches!(
        w.translate(&mut Racy(m), L4 | 0x4020_3000, R),
        Err(WalkError::Unsupported(_))
    ));
}
