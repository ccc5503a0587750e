//! A vCPU's initial CPU state, as a value: the loader fills it in, the VMX
//! code writes it to the VMCS guest-state area. Other entry modes (32-bit
//! protected mode for multiboot, real mode) are other constructors of the
//! same value; the run loop does not change.
//!
//! Segment access rights use the VMCS format (SDM Vol. 3C, 25.4.1 "Guest
//! Register State", table "Format of Access Rights"): type 3:0, S 4, DPL 6:5,
//! P 7, AVL 12, L 13, D/B 14, G 15, unusable 16.

use crate::guest_layout::{self, Layout};

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

pub const CR0_PE: u64 = 1 << 0;
pub const CR0_MP: u64 = 1 << 1;
pub const CR0_ET: u64 = 1 << 4;
pub const CR0_NE: u64 = 1 << 5;
pub const CR0_WP: u64 = 1 << 16;
pub const CR0_PG: u64 = 1 << 31;
pub const CR4_PAE: u64 = 1 << 5;
pub const CR4_PGE: u64 = 1 << 7;
pub const CR4_OSFXSR: u64 = 1 << 9;
pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
pub const EFER_SCE: u64 = 1 << 0;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
pub const EFER_NXE: u64 = 1 << 11;

/// The architectural power-up value of IA32_PAT.
pub const PAT_DEFAULT: u64 = 0x0007_0406_0007_0406;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestState {
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    /// RDI: the one general-purpose register the entry protocols use.
    pub rdi: u64,
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

impl GuestState {
    /// 64-bit mode with paging on, as `abi` describes: the tables and GDT of
    /// `guest_layout`, RSP at vCPU `id`'s stack, RDI at its BootInfo page.
    pub fn long_mode(entry: u64, layout: &Layout, id: u32, boot_info_gpa: u64) -> Self {
        let data = Segment {
            selector: guest_layout::DATA_SELECTOR,
            base: 0,
            limit: 0xffff_ffff,
            // Read/write accessed data, S, P, D/B, G.
            access: 0xc093,
        };
        GuestState {
            rip: entry,
            rsp: layout.stack_top(id),
            rflags: 0x2,
            rdi: boot_info_gpa,
            cr0: CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG,
            cr3: guest_layout::PML4_GPA,
            cr4: CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT,
            efer: EFER_LME | EFER_LMA | EFER_NXE | EFER_SCE,
            pat: PAT_DEFAULT,
            cs: Segment {
                selector: guest_layout::CODE_SELECTOR,
                base: 0,
                limit: 0xffff_ffff,
                // Execute/read accessed code, S, P, L (64-bit), G.
                access: 0xa09b,
            },
            ds: data,
            es: data,
            ss: data,
            fs: data,
            gs: data,
            tr: Segment {
                selector: 0,
                base: 0,
                limit: 0x67,
                // Busy 64-bit TSS, P: TR must be usable on VM entry.
                access: 0x8b,
            },
            ldtr: Segment::UNUSABLE,
            gdtr: DescriptorTable {
                base: guest_layout::GDT_GPA,
                limit: (guest_layout::GDT.len() * 8 - 1) as u32,
            },
            // No IDT: an exception in the guest becomes a triple fault, which
            // the hypervisor contains.
            idtr: DescriptorTable { base: 0, limit: 0 },
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
        let layout = Layout::new(16 << 20, 0x10_5000, 2).unwrap();
        let s = GuestState::long_mode(0x10_0000, &layout, 1, 0x1000);
        assert!(s.ia32e());
        // SDM 27.3.1.1: IA-32e mode needs CR0.PG, CR4.PAE, EFER.LME and LMA.
        assert_ne!(s.cr0 & CR0_PG, 0);
        assert_ne!(s.cr4 & CR4_PAE, 0);
        assert_ne!(s.efer & EFER_LME, 0);
        // CS.L set and CS.D/B clear for 64-bit code.
        assert_ne!(s.cs.access & (1 << 13), 0);
        assert_eq!(s.cs.access & (1 << 14), 0);
        assert_eq!(s.rsp, layout.stack_top(1));
        assert_eq!(s.rdi, 0x1000);
        assert_eq!(s.cs.access & 0x80, 0x80, "present");
        assert_eq!(s.ldtr.access, 1 << 16, "LDTR unusable");
    }
}
