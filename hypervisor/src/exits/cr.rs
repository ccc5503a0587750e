//! Control-register accesses (exit reason 28): MOV to/from CR0, CR3, CR4,
//! CR8, CLTS and LMSW, each as the SDM defines it (the rules are in
//! `x86::control`; `vcpu::mode` applies them to the VMCS).
//!
//! The host owns every CR0 bit but TS and every CR4 bit (guest/host masks,
//! SDM 25.6.6), so each write that matters exits here. CR8 is TPR[7:4] of
//! the vCPU's own local APIC model (SDM 11.8.6): CR8-load and CR8-store
//! exiting are on, so it never reaches the host core's APIC.

use crate::mm::HostMemory;
use crate::vcpu::{Action, Stop};
use crate::vcpu::{Hw, Vcpu};
use crate::vmx::exit::{CrAccess, CrAccessType};
use crate::vmx::fields::VmcsNatural;
use crate::x86::control::{self, Accepted, Gp};
use crate::x86::{CR0_PE, CR0_TS};
use alloc::format;

pub fn handle<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    let q = CrAccess::from_qualification(v.vmcs.read_nat(VmcsNatural::ExitQualification)?);
    let gpr = q.gpr.index() as u8;
    let m = v.mode_regs()?;
    match (q.access, q.cr) {
        (CrAccessType::MovToCr, 0) => {
            let value = m.operand(v.gpr(gpr)?);
            apply(v, control::mov_to_cr0(&m, value))
        }
        (CrAccessType::MovToCr, 4) => {
            let value = m.operand(v.gpr(gpr)?);
            let allowed = cr4_allowed(v);
            apply(v, control::mov_to_cr4(&m, value, allowed))
        }
        (CrAccessType::MovToCr, 3) => {
            let value = m.operand(v.gpr(gpr)?);
            mov_to_cr3(v, value)
        }
        (CrAccessType::MovFromCr, 3) => {
            let value = v.vmcs.read_nat(VmcsNatural::GuestCr3)?;
            v.set_gpr(gpr, m.operand(value))?;
            done(v)
        }
        (CrAccessType::MovToCr, 8) => {
            // Bits 63:4 are reserved (SDM 10.8.6.1).
            let value = v.gpr(gpr)?;
            if value > 0xf {
                return v.inject_gp();
            }
            v.vm.lapics[v.id as usize]
                .lock()
                .set_tpr((value as u32) << 4);
            done(v)
        }
        (CrAccessType::MovFromCr, 8) => {
            let value = u64::from(v.vm.lapics[v.id as usize].lock().tpr() >> 4);
            v.set_gpr(gpr, value)?;
            done(v)
        }
        (CrAccessType::Clts, _) => apply(v, control::mov_to_cr0(&m, m.cr0 & !CR0_TS)),
        (CrAccessType::Lmsw, _) => {
            // LMSW loads PE, MP, EM, TS; it can set PE but never clear it.
            let src = u64::from(q.lmsw_source) & 0xf;
            let value = (m.cr0 & !0xe) | src | (m.cr0 & CR0_PE);
            apply(v, control::mov_to_cr0(&m, value))
        }
        _ => Err(v.contain("unhandled control-register access", format!("{q}"))),
    }
}

/// The CR4 bits this vCPU's CPUID offers, within what the CPU allows.
fn cr4_allowed<H: Hw, M: HostMemory>(v: &Vcpu<H, M>) -> u64 {
    let (_, may_be_one) = v.vm.caps.cr4_fixed();
    control::cr4_allowed(
        v.vm.cpuid.answer(v.id, 1, 0),
        v.vm.cpuid.answer(v.id, 7, 0),
        may_be_one,
    )
}

fn done<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    v.skip_instruction()?;
    Ok(Action::Resume)
}

fn apply<H: Hw, M: HostMemory>(
    v: &mut Vcpu<H, M>,
    decision: Result<Accepted, Gp>,
) -> Result<Action, Stop> {
    let Ok(accepted) = decision else {
        return v.inject_gp();
    };
    match v.apply_mode(accepted)? {
        Ok(()) => done(v),
        Err(Gp(_)) => v.inject_gp(),
    }
}

/// MOV to CR3, where CR3-load exiting is on (not every CPU can turn it off).
/// Bits above MAXPHYADDR #GP in IA-32e mode; PAE paging reloads its PDPTEs.
fn mov_to_cr3<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>, value: u64) -> Result<Action, Stop> {
    let m = v.mode_regs()?;
    let lma = m.efer & crate::x86::EFER_LMA != 0;
    // With CR4.PCIDE, bit 63 asks not to flush; it is not part of CR3.
    let value = if lma && m.cr4 & control::CR4_PCIDE != 0 {
        value & !(1 << 63)
    } else {
        value
    };
    if lma && value >> v.maxphyaddr() != 0 {
        return v.inject_gp();
    }
    let regs = control::ModeRegs { cr3: value, ..m };
    let accepted = Accepted {
        regs,
        load_pdptes: regs.pae_paging(),
        flush_tlb: true,
        lma_changed: false,
    };
    match v.apply_mode(accepted)? {
        Ok(()) => {
            v.vmcs.write_nat(VmcsNatural::GuestCr3, value)?;
            done(v)
        }
        Err(Gp(_)) => v.inject_gp(),
    }
}
