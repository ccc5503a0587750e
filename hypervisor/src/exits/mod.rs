//! Exit handling: one handler per exit reason, one `match` that dispatches.
//!
//! A handler returns `Ok(Action::Resume)` to re-enter the guest, or a
//! [`Stop`] that ends this vCPU with one clear report. Guest behaviour never
//! panics the hypervisor: whatever a guest does ends in `Resume` or `Stop`.

mod cpuid;
mod cr;
mod ept;
mod io;
mod msr;
mod vmcall;

use crate::vcpu::Vcpu;
use crate::vmx::exit::{ExitReason, InterruptionInfo};
use crate::vmx::fields::{Vmcs32, VmcsAccess, VmcsError, VmcsNatural};
use alloc::format;
use alloc::string::String;
use core::fmt;

pub enum Action {
    Resume,
}

/// Why a vCPU stopped.
pub enum Stop {
    /// The guest asked to stop (HC_SHUTDOWN) with this status.
    Shutdown { status: u64 },
    /// The guest did something it may not; it was stopped, the host is fine.
    Contained { what: &'static str, detail: String },
    /// The hypervisor could not go on with this vCPU (a bug, or no memory).
    Fatal(String),
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::Shutdown { status } => write!(f, "shutdown, status {status}"),
            Stop::Contained { what, detail } => write!(f, "CONTAINED: {what}: {detail}"),
            Stop::Fatal(s) => write!(f, "FATAL: {s}"),
        }
    }
}

impl From<VmcsError> for Stop {
    fn from(e: VmcsError) -> Self {
        Stop::Fatal(format!("{e}"))
    }
}

/// Stops the vCPU with a containment report naming the guest RIP.
pub fn contain(v: &Vcpu, what: &'static str, detail: String) -> Stop {
    Stop::Contained {
        what,
        detail: format!("{detail} rip={:#x}", v.rip()),
    }
}

pub fn dispatch(v: &mut Vcpu, reason: ExitReason) -> Result<Action, Stop> {
    match reason {
        ExitReason::EptViolation => ept::violation(v),
        ExitReason::EptMisconfig => ept::misconfiguration(v),
        ExitReason::Cpuid => cpuid::handle(v),
        ExitReason::IoInstruction => io::handle(v),
        ExitReason::Vmcall => vmcall::handle(v),
        ExitReason::Hlt => hlt(v),
        ExitReason::Rdmsr => msr::rdmsr(v),
        ExitReason::Wrmsr => msr::wrmsr(v),
        ExitReason::CrAccess => cr::handle(v),
        ExitReason::TripleFault => Err(contain(
            v,
            "triple fault",
            String::from("guest shut down on a triple fault"),
        )),
        // External-interrupt exiting keeps host interrupts out of the guest.
        // The only one the host sends is the dirty-log kick (the PICs are
        // masked): its purpose, leaving the guest, is done. The CPU
        // acknowledged it on exit; end it at the local APIC.
        ExitReason::ExternalInterrupt => {
            let info = InterruptionInfo::from_raw(v.vmcs.read32(Vmcs32::VmExitInterruptionInfo)?);
            if info.valid {
                crate::smp::eoi();
            }
            Ok(Action::Resume)
        }
        // VMX is hidden from the guest (CPUID.1:ECX.VMX = 0), so its
        // instructions are undefined there, as on a CPU without VMX.
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
        | ExitReason::Invvpid => {
            v.inject(InterruptionInfo::ud(), 0)?;
            Ok(Action::Resume)
        }
        other => Err(contain(
            v,
            "unhandled VM exit",
            format!(
                "{other}, qualification {:#x}",
                v.vmcs.read_nat(VmcsNatural::ExitQualification).unwrap_or(0)
            ),
        )),
    }
}

/// HLT. There is no interrupt injection yet, so a guest that halts with
/// interrupts disabled can never run again: it is stopped with a report.
/// With interrupts enabled, HLT returns at once (as if woken).
fn hlt(v: &mut Vcpu) -> Result<Action, Stop> {
    let rflags = v.vmcs.read_nat(VmcsNatural::GuestRflags)?;
    if rflags & (1 << 9) == 0 {
        return Err(contain(
            v,
            "halted",
            String::from("HLT with interrupts disabled, never to wake"),
        ));
    }
    v.skip_instruction()?;
    Ok(Action::Resume)
}
