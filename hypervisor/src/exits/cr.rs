//! Control-register accesses (exit reason 28). The guest owns CR0 and CR4
//! except the bits VMX fixes; a write that would change one of those exits
//! here (SDM 26.1.3; read shadows, 25.6.6). We keep the guest's value in the
//! read shadow and the fixed bits in the real register, and switch EFER.LMA
//! and the "IA-32e mode guest" entry control when paging is turned on or off
//! with EFER.LME set (SDM 10.8.5 "Initializing IA-32e Mode").

use crate::mm::HostMemory;
use crate::vcpu::{Action, Stop};
use crate::vcpu::{Hw, Vcpu};
use crate::vmx::controls::{SecondaryProcBased, VmEntryControls};
use crate::vmx::exit::{CrAccess, CrAccessType};
use crate::vmx::fields::{Vmcs32, Vmcs64, VmcsNatural};
use crate::x86::{
    CR0_CD, CR0_DEFINED, CR0_NW, CR0_PE, CR0_PG, CR0_TS, CR4_PAE, CR4_VMXE, EFER_LMA, EFER_LME,
};
use alloc::format;

fn unrestricted<H: Hw, M: HostMemory>(v: &Vcpu<H, M>) -> bool {
    v.vm.controls
        .secondary()
        .contains(SecondaryProcBased::UNRESTRICTED_GUEST)
}

pub fn handle<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    let q = CrAccess::from_qualification(v.vmcs.read_nat(VmcsNatural::ExitQualification)?);
    let gpr = q.gpr.index() as u8;
    match (q.access, q.cr) {
        (CrAccessType::MovToCr, 0) => {
            let value = v.gpr(gpr)?;
            set_cr0(v, value)
        }
        (CrAccessType::MovToCr, 4) => {
            let value = v.gpr(gpr)?;
            set_cr4(v, value)
        }
        (CrAccessType::MovToCr, 3) => {
            let value = v.gpr(gpr)?;
            v.vmcs.write_nat(VmcsNatural::GuestCr3, value)?;
            done(v)
        }
        (CrAccessType::MovFromCr, 3) => {
            let value = v.vmcs.read_nat(VmcsNatural::GuestCr3)?;
            v.set_gpr(gpr, value)?;
            done(v)
        }
        (CrAccessType::Clts, _) => {
            let shadow = v.vmcs.read_nat(VmcsNatural::Cr0ReadShadow)?;
            set_cr0(v, shadow & !CR0_TS)
        }
        (CrAccessType::Lmsw, _) => {
            // LMSW loads PE, MP, EM, TS; it can set PE but never clear it.
            let shadow = v.vmcs.read_nat(VmcsNatural::Cr0ReadShadow)?;
            let src = u64::from(q.lmsw_source) & 0xf;
            set_cr0(v, (shadow & !0xe) | src | (shadow & CR0_PE))
        }
        _ => Err(v.contain("unhandled control-register access", format!("{q}"))),
    }
}

fn done<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    v.skip_instruction()?;
    Ok(Action::Resume)
}

fn set_cr0<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>, value: u64) -> Result<Action, Stop> {
    // SDM: #GP for reserved bits, PG without PE, NW without CD.
    if value & !CR0_DEFINED != 0
        || (value & CR0_PG != 0 && value & CR0_PE == 0)
        || (value & CR0_NW != 0 && value & CR0_CD == 0)
    {
        return v.inject_gp();
    }
    let old = v.vmcs.read_nat(VmcsNatural::Cr0ReadShadow)?;
    let mut efer = v.vmcs.read64(Vmcs64::GuestIa32Efer)?;
    let mut entry = v.vmcs.read32(Vmcs32::VmEntryControls)?;
    if (old ^ value) & CR0_PG != 0 && efer & EFER_LME != 0 {
        if value & CR0_PG != 0 {
            // Entering IA-32e mode needs CR4.PAE.
            if v.vmcs.read_nat(VmcsNatural::Cr4ReadShadow)? & CR4_PAE == 0 {
                return v.inject_gp();
            }
            efer |= EFER_LMA;
            entry |= VmEntryControls::IA32E_MODE_GUEST.bits();
        } else {
            efer &= !EFER_LMA;
            entry &= !VmEntryControls::IA32E_MODE_GUEST.bits();
        }
        v.vmcs.write64(Vmcs64::GuestIa32Efer, efer)?;
        v.vmcs.write32(Vmcs32::VmEntryControls, entry)?;
    }
    let caps = &v.vm.caps;
    let real = caps.apply_guest_cr0(value, unrestricted(v));
    v.vmcs.write_nat(VmcsNatural::Cr0ReadShadow, value)?;
    v.vmcs.write_nat(VmcsNatural::GuestCr0, real)?;
    done(v)
}

fn set_cr4<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>, value: u64) -> Result<Action, Stop> {
    let (_, may_be_one) = v.vm.caps.cr4_fixed();
    // VMX is not offered to the guest: CR4.VMXE is reserved for it. Bits the
    // CPU cannot set are reserved too.
    if value & CR4_VMXE != 0 || value & !may_be_one != 0 {
        return v.inject_gp();
    }
    let efer = v.vmcs.read64(Vmcs64::GuestIa32Efer)?;
    // Clearing PAE in IA-32e mode is a #GP.
    if efer & EFER_LMA != 0 && value & CR4_PAE == 0 {
        return v.inject_gp();
    }
    v.vmcs.write_nat(VmcsNatural::Cr4ReadShadow, value)?;
    v.vmcs
        .write_nat(VmcsNatural::GuestCr4, v.vm.caps.apply_cr4(value))?;
    done(v)
}
