//! The guest's CR0, CR4 and EFER as it sees them, kept consistent between
//! the VMCS fields and the read shadows.
//!
//! Every CR0 bit but TS, and every CR4 bit, is owned by the host (the
//! guest/host masks, SDM 25.6.6): a guest write to one of them exits, so
//! paging, protection and IA-32e mode change only here, where the SDM's
//! checks run, EFER.LMA and the "IA-32e mode guest" entry control follow
//! (SDM 27.2.1.3 wants them equal), and the PAE PDPTEs are loaded. CR0.TS is
//! the guest's own: what it reads comes from the VMCS's CR0 for guest-owned
//! bits and from the shadow for the others (SDM 26.3 "MOV from CR0").

use super::{Hw, Stop, Vcpu};
use crate::mm::HostMemory;
use crate::vmx::controls::{SecondaryProcBased, VmEntryControls};
use crate::vmx::fields::{Vmcs32, Vmcs64, VmcsNatural};
use crate::x86::control::{pdpte_reserved, Accepted, Gp, ModeRegs};
use crate::x86::EFER_LMA;

/// CS access-rights bit 13: L (64-bit code segment).
const AR_L: u32 = 1 << 13;

impl<H: Hw, M: HostMemory> Vcpu<'_, H, M> {
    /// CR0 as the guest reads it.
    pub fn guest_cr0(&self) -> Result<u64, Stop> {
        let mask = self.vmcs.read_nat(VmcsNatural::Cr0GuestHostMask)?;
        let real = self.vmcs.read_nat(VmcsNatural::GuestCr0)?;
        let shadow = self.vmcs.read_nat(VmcsNatural::Cr0ReadShadow)?;
        Ok((real & !mask) | (shadow & mask))
    }

    /// CR4 as the guest reads it.
    pub fn guest_cr4(&self) -> Result<u64, Stop> {
        let mask = self.vmcs.read_nat(VmcsNatural::Cr4GuestHostMask)?;
        let real = self.vmcs.read_nat(VmcsNatural::GuestCr4)?;
        let shadow = self.vmcs.read_nat(VmcsNatural::Cr4ReadShadow)?;
        Ok((real & !mask) | (shadow & mask))
    }

    /// The registers that define the guest's mode, now.
    pub fn mode_regs(&self) -> Result<ModeRegs, Stop> {
        Ok(ModeRegs {
            cr0: self.guest_cr0()?,
            cr3: self.vmcs.read_nat(VmcsNatural::GuestCr3)?,
            cr4: self.guest_cr4()?,
            efer: self.vmcs.read64(Vmcs64::GuestIa32Efer)?,
            cs_l: self.vmcs.read32(Vmcs32::GuestCsAccessRights)? & AR_L != 0,
        })
    }

    /// The guest's physical-address width (CPUID 0x8000_0008 EAX[7:0]).
    pub fn maxphyaddr(&self) -> u32 {
        match self.vm.cpuid.answer(self.id, 0x8000_0008, 0)[0] & 0xff {
            0 => 36,
            n => n,
        }
    }

    /// Applies a write the SDM accepted: CR0/CR4 (real value and shadow),
    /// EFER and the IA-32e entry control, the PDPTEs, the TLB. A PDPTE with
    /// a reserved bit makes the whole instruction #GP, with nothing changed.
    pub fn apply_mode(&mut self, a: Accepted) -> Result<Result<(), Gp>, Stop> {
        let r = a.regs;
        if a.load_pdptes {
            let mut pdptes = [0u64; 4];
            let mut mem = self.guest_mem();
            let base = r.cr3 & 0xffff_ffe0;
            for (i, p) in pdptes.iter_mut().enumerate() {
                let mut b = [0xffu8; 8];
                // An address no memslot backs reads as all ones, which has
                // reserved bits set: the instruction faults, as on a PC.
                let _ = mem.read(base + 8 * i as u64, &mut b);
                *p = u64::from_le_bytes(b);
            }
            let maxphy = self.maxphyaddr();
            if pdptes.iter().any(|&p| pdpte_reserved(p, maxphy)) {
                return Ok(Err(Gp("a PAE PDPTE with a reserved bit set")));
            }
            let fields = [
                Vmcs64::GuestPdpte0,
                Vmcs64::GuestPdpte1,
                Vmcs64::GuestPdpte2,
                Vmcs64::GuestPdpte3,
            ];
            for (f, p) in fields.into_iter().zip(pdptes) {
                self.vmcs.write64(f, p)?;
            }
        }
        let unrestricted = self
            .vm
            .controls
            .secondary()
            .contains(SecondaryProcBased::UNRESTRICTED_GUEST);
        let caps = &self.vm.caps;
        let (cr0_real, cr4_real) = (
            caps.apply_guest_cr0(r.cr0, unrestricted),
            caps.apply_cr4(r.cr4),
        );
        self.vmcs.write_nat(VmcsNatural::Cr0ReadShadow, r.cr0)?;
        self.vmcs.write_nat(VmcsNatural::GuestCr0, cr0_real)?;
        self.vmcs.write_nat(VmcsNatural::Cr4ReadShadow, r.cr4)?;
        self.vmcs.write_nat(VmcsNatural::GuestCr4, cr4_real)?;
        if a.lma_changed {
            self.vmcs.write64(Vmcs64::GuestIa32Efer, r.efer)?;
            let mut entry = self.vmcs.read32(Vmcs32::VmEntryControls)?;
            let ia32e = VmEntryControls::IA32E_MODE_GUEST.bits();
            if r.efer & EFER_LMA != 0 {
                entry |= ia32e;
                // VM entry wants a 64-bit busy TSS in TR in IA-32e mode
                // (SDM 27.3.1.2), where a CPU takes whatever TR holds until
                // the OS loads its own; a vCPU started by SIPI still has
                // real mode's 16-bit busy TSS (type 3). As KVM's
                // enter_lmode does, the type becomes 11; nothing else of
                // TR changes.
                let tr = self.vmcs.read32(Vmcs32::GuestTrAccessRights)?;
                if tr & 0xf != 11 {
                    self.vmcs
                        .write32(Vmcs32::GuestTrAccessRights, (tr & !0xf) | 11)?;
                }
            } else {
                entry &= !ia32e;
                // Outside IA-32e mode RIP is 32 bits (SDM 27.3.1.4 checks
                // it at entry); in compatibility mode it already is.
                let rip = self.vmcs.read_nat(VmcsNatural::GuestRip)?;
                self.vmcs
                    .write_nat(VmcsNatural::GuestRip, rip & 0xffff_ffff)?;
            }
            self.vmcs.write32(Vmcs32::VmEntryControls, entry)?;
        }
        if a.flush_tlb {
            self.flush_tlb();
        }
        Ok(Ok(()))
    }

    /// Drops this vCPU's cached linear translations. Without VPIDs every VM
    /// entry already does (SDM 29.4.3.1).
    pub fn flush_tlb(&mut self) {
        if self
            .vm
            .controls
            .secondary()
            .contains(SecondaryProcBased::ENABLE_VPID)
        {
            let vpid = self.vpid();
            self.vmcs.flush_guest_linear(vpid, self.vm.invvpid_single);
        }
    }

    /// This vCPU's VPID (0 is the host's).
    pub fn vpid(&self) -> u16 {
        (self.id + 1) as u16
    }
}
