//! A vCPU's initial CPU state, as a value: the loader fills it in, the VMX
//! code writes it to the VMCS guest-state area. Other entry modes (32-bit
//! protected mode for multiboot, real mode) are other constructors of the
//! same value; the run loop does not change.
//!
//! Segment access rights use the VMCS format (SDM Vol. 3C, 25.4.1 "Guest
//! Register State", table "Format of Access Rights"): type 3:0, S 4, DPL 6:5,
//! P 7, AVL 12, L 13, D/B 14, G 15, unusable 16.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub selector: u16,
    pub base: u64,
    pub limit: u32,
    pub access: u32,
}

impl Segment {
    /// The "unusable" marker (access-rights bit 16).
    pub const UNUSABLE: Segment = Segment {
        selector: 0,
        base: 0,
        limit: 0,
        access: 1 << 16,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorTable {
    pub base: u64,
    pub limit: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestState {
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    /// Every general-purpose register but RSP (which is above): entry
    /// protocols pass values in RAX, RBX, RSI, RDI.
    pub gprs: Gprs,
    /// CR0 and CR4 as the guest sees them. The VMX code adds the bits VMX
    /// fixes and hides them behind read shadows.
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub pat: u64,
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub ss: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub tr: Segment,
    pub ldtr: Segment,
    pub gdtr: DescriptorTable,
    pub idtr: DescriptorTable,
}

/// General-purpose registers other than RSP (that one lives in the VMCS).
/// `repr(C)`: the VM-entry assembly saves and loads them in this order.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gprs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

impl Gprs {
    /// Register by its index in the SDM's encoding (0 = RAX … 15 = R15), as
    /// used in exit qualifications. Index 4 (RSP) lives in the VMCS: `None`.
    pub fn gpr_mut(&mut self, index: u8) -> Option<&mut u64> {
        Some(match index {
            0 => &mut self.rax,
            1 => &mut self.rcx,
            2 => &mut self.rdx,
            3 => &mut self.rbx,
            5 => &mut self.rbp,
            6 => &mut self.rsi,
            7 => &mut self.rdi,
            8 => &mut self.r8,
            9 => &mut self.r9,
            10 => &mut self.r10,
            11 => &mut self.r11,
            12 => &mut self.r12,
            13 => &mut self.r13,
            14 => &mut self.r14,
            15 => &mut self.r15,
            _ => return None,
        })
    }
}

/// Flat 4 GiB data segment: read/write accessed, S, P, D/B, G.
const FLAT_DATA: u32 = 0xc093;
/// Flat 4 GiB 32-bit code segment: execute/read accessed, S, P, D/B, G.
const FLAT_CODE32: u32 = 0xc09b;
/// 64-bit code segment: execute/read accessed, S, P, L, G.
const CODE64: u32 = 0xa09b;
/// Real-mode data/code: accessed read/write data (3) or code (0xb), S, P,
/// 64 KiB limit (SDM 10.1.1 "Processor State After Reset").
const REAL_DATA: u32 = 0x93;
const REAL_CODE: u32 = 0x9b;

impl Segment {
    const fn flat(selector: u16, access: u32) -> Segment {
        Segment {
            selector,
            base: 0,
            limit: 0xffff_ffff,
            access,
        }
    }
    /// A real-mode segment: base = selector × 16, 64 KiB limit.
    pub const fn real(selector: u16, access: u32) -> Segment {
        Segment {
            selector,
            base: (selector as u64) << 4,
            limit: 0xffff,
            access,
        }
    }
}

/// TR must be usable on VM entry (SDM 27.3.1.2): a busy TSS, P.
const fn tr(busy_type: u32) -> Segment {
    Segment {
        selector: 0,
        base: 0,
        limit: 0xffff,
        access: 0x80 | busy_type,
    }
}

impl GuestState {
    /// 64-bit mode with paging on: `cr3` holds the page tables, `gdt` the
    /// GDT, with a 64-bit code segment at `code` and flat data at `data`.
    pub fn long_mode(
        entry: u64,
        rsp: u64,
        cr3: u64,
        gdt: DescriptorTable,
        code: u16,
        data: u16,
    ) -> Self {
        let d = Segment::flat(data, FLAT_DATA);
        GuestState {
            rip: entry,
            rsp,
            rflags: 0x2,
            gprs: Gprs::default(),
            cr0: CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG,
            cr3,
            cr4: CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT,
            efer: EFER_LME | EFER_LMA | EFER_NXE | EFER_SCE,
            pat: PAT_DEFAULT,
            cs: Segment::flat(code, CODE64),
            ds: d,
            es: d,
            ss: d,
            fs: d,
            gs: d,
            // Busy 64-bit TSS.
            tr: Segment {
                limit: 0x67,
                ..tr(0xb)
            },
            ldtr: Segment::UNUSABLE,
            gdtr: gdt,
            // No IDT until the guest loads one.
            idtr: DescriptorTable { base: 0, limit: 0 },
        }
    }

    /// 32-bit protected mode with paging off and flat 4 GiB segments (CS
    /// selector `code`, the others `data`), IF = 0: the multiboot entry
    /// state. GDTR and IDTR are left empty: the guest must load its own
    /// before it reloads a segment register or enables interrupts.
    pub fn protected_mode_flat(entry: u32, code: u16, data: u16) -> Self {
        let d = Segment::flat(data, FLAT_DATA);
        GuestState {
            rip: entry.into(),
            rsp: 0,
            rflags: 0x2,
            gprs: Gprs::default(),
            cr0: CR0_PE | CR0_ET,
            cr3: 0,
            cr4: 0,
            efer: 0,
            pat: PAT_DEFAULT,
            cs: Segment::flat(code, FLAT_CODE32),
            ds: d,
            es: d,
            ss: d,
            fs: d,
            gs: d,
            // Busy 32-bit TSS.
            tr: tr(0xb),
            ldtr: Segment::UNUSABLE,
            gdtr: DescriptorTable { base: 0, limit: 0 },
            idtr: DescriptorTable {
                base: 0,
                limit: 0x3ff,
            },
        }
    }

    /// Real mode, as after INIT-SIPI: CS = `cs` (base `cs` × 16), IP = `ip`,
    /// the other segments 0, CR0 = ET (SDM 10.1.1, table 10-1; 10.4.4.1).
    /// A startup IPI with vector V starts at CS = V × 256, IP = 0.
    pub fn real_mode(cs: u16, ip: u16) -> Self {
        let d = Segment::real(0, REAL_DATA);
        GuestState {
            rip: ip.into(),
            rsp: 0,
            rflags: 0x2,
            gprs: Gprs::default(),
            cr0: CR0_ET,
            cr3: 0,
            cr4: 0,
            efer: 0,
            pat: PAT_DEFAULT,
            cs: Segment::real(cs, REAL_CODE),
            ds: d,
            es: d,
            ss: d,
            fs: d,
            gs: d,
            // Busy 16-bit TSS (type 3).
            tr: tr(0x3),
            ldtr: Segment {
                selector: 0,
                base: 0,
                limit: 0xffff,
                access: 0x82,
            },
            gdtr: DescriptorTable {
                base: 0,
                limit: 0xffff,
            },
            idtr: DescriptorTable {
                base: 0,
                limit: 0xffff,
            },
        }
    }

    /// Whether the state describes IA-32e mode (the VM-entry control
    /// "IA-32e mode guest" must equal EFER.LMA, SDM 27.3.1.1).
    pub fn ia32e(&self) -> bool {
        self.efer & EFER_LMA != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_state_is_consistent() {
        let gdt = DescriptorTable {
            base: 0xfe8,
            limit: 23,
        };
        let s = GuestState::long_mode(0x10_0000, 0x8000, 0x1000, gdt, 8, 16);
        assert!(s.ia32e());
        // SDM 27.3.1.1: IA-32e mode needs CR0.PG, CR4.PAE, EFER.LME and LMA.
        assert_ne!(s.cr0 & CR0_PG, 0);
        assert_ne!(s.cr4 & CR4_PAE, 0);
        assert_ne!(s.efer & EFER_LME, 0);
        // CS.L set and CS.D/B clear for 64-bit code.
        assert_ne!(s.cs.access & (1 << 13), 0);
        assert_eq!(s.cs.access & (1 << 14), 0);
        assert_eq!(s.rsp, 0x8000);
        assert_eq!(s.cs.access & 0x80, 0x80, "present");
        assert_eq!(s.ldtr.access, 1 << 16, "LDTR unusable");
        assert_eq!(s.tr.access & 0xf, 0xb, "busy TSS");
    }

    #[test]
    fn protected_mode_is_flat_32_bit_with_paging_off() {
        let s = GuestState::protected_mode_flat(0x10_000c, 0x08, 0x10);
        assert!(!s.ia32e());
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE);
        assert_eq!(s.rip, 0x10_000c);
        assert_eq!(s.rflags & (1 << 9), 0, "IF = 0");
        // D/B set, L clear, G set, limit 4 GiB, base 0.
        assert_eq!(
            s.cs.access & (1 << 14 | 1 << 13 | 1 << 15),
            1 << 14 | 1 << 15
        );
        assert_eq!((s.cs.base, s.cs.limit), (0, 0xffff_ffff));
        assert_eq!(s.ss.access, s.ds.access);
    }

    #[test]
    fn real_mode_matches_startup_ipi() {
        // SIPI vector 0x9a: CS = 0x9a00, base 0x9a000, IP 0 (SDM 10.4.4.1).
        let s = GuestState::real_mode(0x9a00, 0);
        assert_eq!((s.cs.selector, s.cs.base, s.rip), (0x9a00, 0x9a000, 0));
        assert_eq!(s.cr0 & CR0_PE, 0);
        assert_eq!(s.tr.access & 0xf, 3, "16-bit busy TSS");
        assert_eq!(s.cs.limit, 0xffff);
    }
}
