//! MOV to CR0, MOV to CR4 and WRMSR IA32_EFER as the Intel SDM defines them:
//! which values raise #GP, and what the new CR0/CR4/EFER are (the switch of
//! EFER.LMA included). Pure: the exit handlers read the guest's registers,
//! ask here, and write back the answer.
//!
//! Sources: SDM Vol. 2B "MOV—Move to/from Control Registers" (its #GP list),
//! Vol. 3A 2.5 (control registers), 4.1.1 and 10.8.5 (entering and leaving
//! IA-32e mode), 4.4.1 (when PAE paging loads its PDPTEs).

use super::{
    CR0_CD, CR0_DEFINED, CR0_ET, CR0_NW, CR0_PE, CR0_PG, CR0_WP, CR4_PAE, CR4_PGE, CR4_PSE,
    EFER_LMA, EFER_LME, EFER_NXE, EFER_SCE,
};

pub const CR4_VME: u64 = 1 << 0;
pub const CR4_PVI: u64 = 1 << 1;
pub const CR4_TSD: u64 = 1 << 2;
pub const CR4_DE: u64 = 1 << 3;
pub const CR4_MCE: u64 = 1 << 6;
pub const CR4_PCE: u64 = 1 << 8;
pub const CR4_UMIP: u64 = 1 << 11;
pub const CR4_LA57: u64 = 1 << 12;
pub const CR4_FSGSBASE: u64 = 1 << 16;
pub const CR4_PCIDE: u64 = 1 << 17;
pub const CR4_SMEP: u64 = 1 << 20;
pub const CR4_SMAP: u64 = 1 << 21;
pub const CR4_PKE: u64 = 1 << 22;

/// The mode-defining registers of a vCPU, as the guest sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModeRegs {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    /// CS.L: with EFER.LMA, the vCPU is in 64-bit mode (else compatibility).
    pub cs_l: bool,
}

impl ModeRegs {
    /// IA-32e mode and CS.L = 1 (SDM 3.4.5 "L flag").
    pub const fn in_64bit_mode(&self) -> bool {
        self.efer & EFER_LMA != 0 && self.cs_l
    }
    /// PAE paging (not 4-level): its four PDPTEs live in registers that
    /// MOV to CR0/CR3/CR4 load (SDM 4.4.1).
    pub const fn pae_paging(&self) -> bool {
        self.cr0 & CR0_PG != 0 && self.cr4 & CR4_PAE != 0 && self.efer & EFER_LMA == 0
    }
    /// Real-address mode (CR0.PE = 0): exceptions push no error code.
    pub const fn real_mode(&self) -> bool {
        self.cr0 & CR0_PE == 0
    }
    /// The operand of a MOV to a control register: 64 bits in 64-bit mode,
    /// else the low 32 bits of the register (SDM Vol. 2B, MOV CR).
    pub const fn operand(&self, gpr: u64) -> u64 {
        if self.in_64bit_mode() {
            gpr
        } else {
            gpr & 0xffff_ffff
        }
    }
}

/// The operating mode and paging mode, in words, for reports:
/// "64-bit, 4-level paging", "real mode", ... (SDM 2.2, table 4-1).
pub fn describe(m: &ModeRegs, cs_d: bool, rflags_vm: bool) -> (&'static str, &'static str) {
    let mode = if m.cr0 & CR0_PE == 0 {
        "real mode"
    } else if m.efer & EFER_LMA != 0 {
        if m.cs_l {
            "64-bit mode"
        } else {
            "compatibility mode"
        }
    } else if rflags_vm {
        "virtual-8086 mode"
    } else if cs_d {
        "32-bit protected mode"
    } else {
        "16-bit protected mode"
    };
    let paging = if m.cr0 & CR0_PG == 0 {
        "paging off"
    } else if m.efer & EFER_LMA != 0 {
        if m.cr4 & CR4_LA57 != 0 {
            "5-level paging"
        } else {
            "4-level paging"
        }
    } else if m.cr4 & CR4_PAE != 0 {
        "PAE paging"
    } else {
        "32-bit paging"
    };
    (mode, paging)
}

/// The instruction raises #GP(0); nothing changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gp(pub &'static str);

/// An accepted write: the new registers, and what the caller must do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub regs: ModeRegs,
    /// PAE paging is in use afterwards and the PDPTEs must be (re)loaded from
    /// CR3; a PDPTE with reserved bits set makes the instruction #GP.
    pub load_pdptes: bool,
    /// Cached linear translations are no longer valid (SDM 4.10.4.1).
    pub flush_tlb: bool,
    /// EFER.LMA changed: the "IA-32e mode guest" entry control follows it.
    pub lma_changed: bool,
}

/// MOV to CR0 with operand `value` (already cut to the operand size).
pub fn mov_to_cr0(m: &ModeRegs, value: u64) -> Result<Accepted, Gp> {
    // Bits 63:32 are reserved: #GP. Reserved bits in 31:0 are ignored and
    // ET is hardwired to 1 (SDM 2.5).
    if value >> 32 != 0 {
        return Err(Gp("CR0 bits 63:32 are reserved"));
    }
    let cr0 = (value & CR0_DEFINED) | CR0_ET;
    if cr0 & CR0_PG != 0 && cr0 & CR0_PE == 0 {
        return Err(Gp("CR0.PG = 1 with CR0.PE = 0"));
    }
    if cr0 & CR0_NW != 0 && cr0 & CR0_CD == 0 {
        return Err(Gp("CR0.NW = 1 with CR0.CD = 0"));
    }
    let mut efer = m.efer;
    let paging_on = cr0 & CR0_PG != 0 && m.cr0 & CR0_PG == 0;
    let paging_off = cr0 & CR0_PG == 0 && m.cr0 & CR0_PG != 0;
    if paging_on && m.efer & EFER_LME != 0 {
        // Activating IA-32e mode (SDM 10.8.5): PAE must be on, and the
        // code segment may not already be a 64-bit one.
        if m.cr4 & CR4_PAE == 0 {
            return Err(Gp("IA-32e mode activation with CR4.PAE = 0"));
        }
        if m.cs_l {
            return Err(Gp("IA-32e mode activation with CS.L = 1"));
        }
        efer |= EFER_LMA;
    }
    if paging_off && m.efer & EFER_LMA != 0 {
        // Leaving IA-32e mode is allowed from compatibility mode only
        // (SDM 10.8.5.4); in 64-bit mode clearing PG is a #GP.
        if m.cs_l {
            return Err(Gp("clearing CR0.PG in 64-bit mode"));
        }
        efer &= !EFER_LMA;
    }
    let regs = ModeRegs { cr0, efer, ..*m };
    let changed = cr0 ^ m.cr0;
    Ok(Accepted {
        regs,
        load_pdptes: regs.pae_paging() && changed & (CR0_PG | CR0_CD | CR0_NW) != 0,
        flush_tlb: changed & (CR0_PG | CR0_WP | CR0_PE) != 0,
        lma_changed: efer != m.efer,
    })
}

/// The CR4 bits a guest may set, from its CPUID (leaf 1 ECX/EDX, leaf 7
/// EBX/ECX), and what the CPU itself allows (`cpu_may_be_one`, from
/// IA32_VMX_CR4_FIXED1). CR4.VMXE is never offered: the guest has no VMX.
pub fn cr4_allowed(cpuid_1: [u32; 4], cpuid_7: [u32; 4], cpu_may_be_one: u64) -> u64 {
    let [_, _, c1, d1] = cpuid_1;
    let [_, b7, c7, _] = cpuid_7;
    let has = |reg: u32, bit: u32| reg & (1 << bit) != 0;
    let mut ok = CR4_PCE | CR4_PSE | CR4_PAE | CR4_PGE;
    let table: [(bool, u64); 16] = [
        (has(d1, 1), CR4_VME | CR4_PVI),
        (has(d1, 4), CR4_TSD),
        (has(d1, 2), CR4_DE),
        (has(d1, 7), CR4_MCE),
        (has(d1, 24), super::CR4_OSFXSR),
        (has(d1, 25), super::CR4_OSXMMEXCPT),
        (has(c1, 17), CR4_PCIDE),
        (has(c1, 26), super::CR4_OSXSAVE),
        (has(b7, 0), CR4_FSGSBASE),
        (has(b7, 7), CR4_SMEP),
        (has(b7, 20), CR4_SMAP),
        (has(c7, 2), CR4_UMIP),
        (has(c7, 3), CR4_PKE),
        (has(c7, 16), CR4_LA57),
        (true, CR4_PSE),
        (true, CR4_PGE),
    ];
    for (present, bits) in table {
        if present {
            ok |= bits;
        }
    }
    ok & cpu_may_be_one & !super::CR4_VMXE
}

/// MOV to CR4 with operand `value`; `allowed` from [`cr4_allowed`].
pub fn mov_to_cr4(m: &ModeRegs, value: u64, allowed: u64) -> Result<Accepted, Gp> {
    if value & !allowed != 0 {
        return Err(Gp("a reserved CR4 bit (not offered in CPUID)"));
    }
    let lma = m.efer & EFER_LMA != 0;
    if lma && value & CR4_PAE == 0 {
        return Err(Gp("clearing CR4.PAE in IA-32e mode"));
    }
    if lma && (value ^ m.cr4) & CR4_LA57 != 0 {
        return Err(Gp("changing CR4.LA57 in IA-32e mode"));
    }
    if value & CR4_PCIDE != 0 && m.cr4 & CR4_PCIDE == 0 && (!lma || m.cr3 & 0xfff != 0) {
        return Err(Gp(
            "setting CR4.PCIDE outside IA-32e mode or with CR3[11:0] != 0",
        ));
    }
    let regs = ModeRegs { cr4: value, ..*m };
    let changed = value ^ m.cr4;
    let paging = CR4_PAE | CR4_PGE | CR4_PSE | CR4_SMEP | CR4_SMAP | CR4_PCIDE | CR4_PKE | CR4_LA57;
    Ok(Accepted {
        regs,
        load_pdptes: regs.pae_paging() && changed & (CR4_PAE | CR4_PGE | CR4_PSE | CR4_SMEP) != 0,
        flush_tlb: changed & paging != 0,
        lma_changed: false,
    })
}

/// The EFER bits a guest may set, from CPUID 0x8000_0001 EDX (SYSCALL bit 11,
/// NX bit 20, LM bit 29). LMA is read-only but may be written with its value.
pub fn efer_allowed(cpuid_ext1_edx: u32) -> u64 {
    let mut ok = EFER_LMA;
    if cpuid_ext1_edx & (1 << 11) != 0 {
        ok |= EFER_SCE;
    }
    if cpuid_ext1_edx & (1 << 20) != 0 {
        ok |= EFER_NXE;
    }
    if cpuid_ext1_edx & (1 << 29) != 0 {
        ok |= EFER_LME;
    }
    ok
}

/// WRMSR IA32_EFER (SDM Vol. 4 table 2-2; Vol. 3A 10.8.5): reserved bits #GP,
/// LME may not change while paging is on, and LMA keeps its value (it is
/// set and cleared by CR0.PG only).
pub fn write_efer(m: &ModeRegs, value: u64, allowed: u64) -> Result<u64, Gp> {
    if value & !allowed != 0 {
        return Err(Gp("a reserved IA32_EFER bit"));
    }
    if m.cr0 & CR0_PG != 0 && (value ^ m.efer) & EFER_LME != 0 {
        return Err(Gp("changing IA32_EFER.LME with paging on"));
    }
    Ok((value & !EFER_LMA) | (m.efer & EFER_LMA))
}

/// Whether a PAE PDPTE has a reserved bit set (SDM 4.4.1 table 4-8: bits
/// 2:1, 8:5 and those at or above MAXPHYADDR, when present).
pub const fn pdpte_reserved(pdpte: u64, maxphyaddr: u32) -> bool {
    if pdpte & 1 == 0 {
        return false;
    }
    let high = if maxphyaddr >= 64 {
        0
    } else {
        !0u64 << maxphyaddr
    };
    pdpte & (0x1e6 | high) != 0
}

/// XSETBV to XCR0 (SDM Vol. 2C XSETBV, Vol. 1 13.3): `supported` is the
/// XCR0 mask offered in CPUID leaf 0xD. #GP for an unsupported bit, x87
/// cleared, AVX without SSE, AVX-512 state without AVX or not all three, or
/// one of the two MPX bits alone.
pub fn check_xcr0(value: u64, supported: u64) -> Result<(), Gp> {
    const X87: u64 = 1;
    const SSE: u64 = 2;
    const AVX: u64 = 4;
    const MPX: u64 = 0x18;
    const AVX512: u64 = 0xe0;
    if value & !supported != 0 {
        return Err(Gp("an XCR0 bit not offered in CPUID leaf 0xD"));
    }
    if value & X87 == 0 {
        return Err(Gp("XCR0.x87 = 0"));
    }
    if value & AVX != 0 && value & SSE == 0 {
        return Err(Gp("XCR0.AVX = 1 with XCR0.SSE = 0"));
    }
    if value & AVX512 != 0 && (value & AVX512 != AVX512 || value & AVX == 0) {
        return Err(Gp("XCR0 AVX-512 bits not all set, or without AVX"));
    }
    if value & MPX != 0 && value & MPX != MPX {
        return Err(Gp("XCR0 MPX bits BNDREGS and BNDCSR differ"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86::{CR0_NE, CR0_TS, CR4_OSXSAVE, CR4_VMXE};

    const REAL: ModeRegs = ModeRegs {
        cr0: CR0_ET,
        cr3: 0,
        cr4: 0,
        efer: 0,
        cs_l: false,
    };

    fn long64() -> ModeRegs {
        ModeRegs {
            cr0: CR0_PE | CR0_PG | CR0_ET | CR0_NE,
            cr3: 0x1000,
            cr4: CR4_PAE,
            efer: EFER_LME | EFER_LMA,
            cs_l: true,
        }
    }

    #[test]
    fn cr0_reserved_and_invalid_combinations() {
        assert!(mov_to_cr0(&REAL, 1 << 32).is_err());
        // Low reserved bits are ignored; ET reads as 1.
        let a = mov_to_cr0(&REAL, CR0_PE | (1 << 7)).unwrap();
        assert_eq!(a.regs.cr0, CR0_PE | CR0_ET);
        assert!(mov_to_cr0(&REAL, CR0_PG).is_err(), "PG without PE");
        assert!(mov_to_cr0(&REAL, CR0_PE | CR0_NW).is_err(), "NW without CD");
        assert!(mov_to_cr0(&REAL, CR0_PE | CR0_NW | CR0_CD).is_ok());
    }

    #[test]
    fn entering_and_leaving_ia32e_mode() {
        let mut m = REAL;
        m.cr0 = CR0_PE | CR0_ET;
        m.efer = EFER_LME;
        assert_eq!(
            mov_to_cr0(&m, CR0_PE | CR0_PG),
            Err(Gp("IA-32e mode activation with CR4.PAE = 0"))
        );
        m.cr4 = CR4_PAE;
        let a = mov_to_cr0(&m, CR0_PE | CR0_PG).unwrap();
        assert_eq!(a.regs.efer, EFER_LME | EFER_LMA);
        assert!(a.lma_changed && a.flush_tlb && !a.load_pdptes);
        // From 64-bit mode, clearing PG is a #GP; from compatibility mode it
        // leaves IA-32e mode.
        let l = long64();
        assert!(mov_to_cr0(&l, CR0_PE | CR0_ET).is_err());
        let compat = ModeRegs { cs_l: false, ..l };
        let a = mov_to_cr0(&compat, CR0_PE).unwrap();
        assert_eq!(a.regs.efer, EFER_LME);
        assert!(a.lma_changed);
        // Writing CR0 without touching PG in 64-bit mode is fine.
        let a = mov_to_cr0(&l, l.cr0 | CR0_TS).unwrap();
        assert!(!a.lma_changed && !a.flush_tlb);
    }

    #[test]
    fn pae_paging_loads_pdptes() {
        let m = ModeRegs {
            cr0: CR0_PE | CR0_ET,
            cr4: CR4_PAE,
            ..REAL
        };
        let a = mov_to_cr0(&m, CR0_PE | CR0_PG).unwrap();
        assert!(a.load_pdptes && !a.lma_changed);
        let b = mov_to_cr4(&a.regs, CR4_PAE | CR4_PGE, !0).unwrap();
        assert!(b.load_pdptes && b.flush_tlb);
        assert!(pdpte_reserved(1 | (1 << 5), 36));
        assert!(pdpte_reserved(1 | (1 << 40), 36));
        assert!(!pdpte_reserved(1 | 0x1000, 36));
        assert!(!pdpte_reserved(1 << 5, 36), "not present: not checked");
    }

    #[test]
    fn cr4_rules() {
        let all = cr4_allowed([0, 0, 1 << 26, (1 << 24) | (1 << 25)], [0; 4], !0);
        assert_ne!(all & CR4_OSXSAVE, 0);
        assert_eq!(all & CR4_VMXE, 0);
        assert_eq!(all & CR4_SMEP, 0, "not in CPUID");
        assert!(mov_to_cr4(&REAL, CR4_VMXE, all).is_err());
        assert!(mov_to_cr4(&REAL, CR4_SMEP, all).is_err());
        let l = long64();
        assert!(mov_to_cr4(&l, 0, all).is_err(), "PAE off in IA-32e mode");
        let pcid = CR4_PAE | CR4_PCIDE;
        let low_bits = ModeRegs { cr3: 0x2001, ..l };
        assert!(mov_to_cr4(&low_bits, pcid, !0).is_err(), "CR3[11:0] != 0");
        assert!(mov_to_cr4(&l, pcid, !0).is_ok());
        assert!(
            mov_to_cr4(&REAL, CR4_PCIDE, !0).is_err(),
            "PCIDE outside IA-32e"
        );
        assert!(mov_to_cr4(&l, CR4_PAE | CR4_LA57, !0).is_err());
    }

    #[test]
    fn efer_rules() {
        let ok = efer_allowed((1 << 11) | (1 << 20) | (1 << 29));
        assert!(write_efer(&REAL, 1 << 9, ok).is_err(), "reserved bit");
        assert!(write_efer(&REAL, EFER_NXE, efer_allowed(0)).is_err());
        // Clearing LME with paging off is allowed.
        let m = ModeRegs {
            efer: EFER_LME,
            ..REAL
        };
        assert_eq!(write_efer(&m, 0, ok), Ok(0));
        let l = long64();
        assert!(write_efer(&l, EFER_LMA, ok).is_err(), "LME off with paging");
        assert_eq!(
            write_efer(&l, EFER_LME | EFER_NXE, ok),
            Ok(EFER_LME | EFER_LMA | EFER_NXE),
            "LMA keeps its value"
        );
    }

    #[test]
    fn xcr0_rules() {
        assert!(check_xcr0(1, 7).is_ok());
        assert!(check_xcr0(7, 7).is_ok());
        assert!(check_xcr0(0, 7).is_err());
        assert!(check_xcr0(2, 7).is_err());
        assert!(check_xcr0(5, 7).is_err());
        assert!(check_xcr0(0xf, 7).is_err(), "unsupported");
        assert!(check_xcr0(0x27, 0xff).is_err(), "AVX-512 partly");
        assert!(check_xcr0(0xe7, 0xff).is_ok());
        assert!(check_xcr0(0x0b, 0xff).is_err(), "MPX half");
    }

    #[test]
    fn modes_in_words() {
        assert_eq!(describe(&REAL, false, false), ("real mode", "paging off"));
        assert_eq!(
            describe(&long64(), false, false),
            ("64-bit mode", "4-level paging")
        );
        let compat = ModeRegs {
            cs_l: false,
            ..long64()
        };
        assert_eq!(describe(&compat, true, false).0, "compatibility mode");
        let pm = ModeRegs {
            cr0: CR0_PE | CR0_PG,
            cr4: CR4_PAE,
            ..REAL
        };
        assert_eq!(
            describe(&pm, true, false),
            ("32-bit protected mode", "PAE paging")
        );
        assert_eq!(describe(&pm, true, true).0, "virtual-8086 mode");
    }

    #[test]
    fn operand_size_follows_the_mode() {
        assert_eq!(REAL.operand(0xdead_0000_0000_0011), 0x11);
        assert_eq!(long64().operand(1 << 40), 1 << 40);
    }
}
