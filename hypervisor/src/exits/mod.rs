//! Exit handling: one file per exit reason, one `match` that dispatches.
//!
//! A handler returns `Ok(Action::Resume)` to re-enter the guest, or a
//! [`Stop`] that ends this vCPU with one clear report. Guest behaviour never
//! panics the hypervisor: whatever a guest does ends in `Resume` or `Stop`.
//! Handlers are generic over the vCPU's [`Hw`] so that host tests run each
//! one against a mock VMCS (`tests`).

mod cpuid;
mod cr;
mod ept;
mod hlt;
mod interrupt;
mod io;
mod mmio;
mod msr;
mod triple_fault;
mod vmcall;
mod vmx_insn;

#[cfg(test)]
mod tests;

use crate::mm::HostMemory;
use crate::vcpu::{Action, Hw, Stop, Vcpu};
use crate::vmx::exit::ExitReason;
use crate::vmx::fields::VmcsNatural;
use alloc::format;

pub fn dispatch<H: Hw, M: HostMemory>(
    v: &mut Vcpu<H, M>,
    reason: ExitReason,
) -> Result<Action, Stop> {
    match reason {
        ExitReason::EptViolation => ept::violation(v),
        ExitReason::EptMisconfig => ept::misconfiguration(v),
        ExitReason::Cpuid => cpuid::handle(v),
        ExitReason::IoInstruction => io::handle(v),
        ExitReason::Vmcall => vmcall::handle(v),
        ExitReason::Hlt => hlt::handle(v),
        ExitReason::Rdmsr => msr::rdmsr(v),
        ExitReason::Wrmsr => msr::wrmsr(v),
        ExitReason::CrAccess => cr::handle(v),
        ExitReason::TripleFault => triple_fault::handle(v),
        ExitReason::ExternalInterrupt => interrupt::external(v),
        ExitReason::Vmclear
        | ExitReason::Vmlaunch
        | ExitReason::Vmptrld
        | ExitReason::Vmptrst
        | ExitReason::Vmread
        | ExitReason::Vmresume
        | ExitReason::Vmwrite
        | ExitReason::Vmxoff
        | ExitReason::Vmxon
        | ExitReason::Invept
        | ExitReason::Invvpid => vmx_insn::handle(v),
        other => Err(v.contain(
            "unhandled VM exit",
            format!(
                "{other}, qualification {:#x}",
                v.vmcs.read_nat(VmcsNatural::ExitQualification).unwrap_or(0)
            ),
        )),
    }
}
