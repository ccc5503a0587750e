//! Exit handling: one file per exit reason, one `match` that dispatches.
//!
//! A handler returns `Ok(Action::Resume)` to re-enter the guest, or a
//! [`Stop`] that ends this vCPU with one clear report. Guest behaviour never
//! panics the hypervisor: whatever a guest does ends in `Resume` or `Stop`.
//! MOV DR, INVLPG, INVPCID and WBINVD do not exit (their exiting controls
//! are off): the guest's debug registers and TLB are its own, and the host
//! never uses debug registers.
//! Handlers are generic over the vCPU's [`Hw`] so that host tests run each
//! one against a mock VMCS (`tests`).

mod cache;
mod cpuid;
mod cr;
mod ept;
pub mod hlt;
pub mod interrupt;
mod io;
mod mmio;
mod msr;
mod mwait;
mod rdpmc;
mod string_io;
mod triple_fault;
mod vmcall;
mod vmx_insn;
mod watchdog;
mod xsetbv;

#[cfg(test)]
mod tests;

use crate::devices::PlatformEvent;
use crate::mm::HostMemory;
use crate::vcpu::{Action, Hw, Stop, Vcpu};
use crate::vm::Vm;
use crate::vmx::exit::ExitReason;
use crate::vmx::fields::VmcsNatural;
use alloc::format;
use alloc::string::String;

/// The stop every vCPU takes once a device ended the VM (isa-debug-exit, a
/// reset port, ACPI power-off): checked after each exit, so a vCPU sent out
/// of the guest by a kick stops too. `None` while the VM goes on.
pub fn platform_stop<M: HostMemory>(vm: &Vm<M>) -> Option<Stop> {
    Some(match vm.events.pending()? {
        PlatformEvent::Exit { code } => Stop::GuestExit { code },
        PlatformEvent::Reset => Stop::Reset {
            cause: String::from("a reset port: 0xCF9, the 8042 or port 0x92"),
        },
        PlatformEvent::PowerOff => Stop::PowerOff,
        PlatformEvent::Watchdog { vcpu } => Stop::Watchdog {
            detail: format!("vCPU {vcpu}'s watchdog fired; the VM ended with it"),
        },
    })
}

pub fn dispatch<H: Hw, M: HostMemory>(
    v: &mut Vcpu<H, M>,
    reason: ExitReason,
) -> Result<Action, Stop> {
    // An event whose delivery this exit cut short is delivered again on the
    // next entry (SDM 28.2.4), whatever the handler does.
    v.requeue_vectoring_event()?;
    // The memslots this exit sees, held until it is handled (`mm::live`).
    v.begin_section();
    let result = handle(v, reason);
    v.end_section();
    result
}

fn handle<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>, reason: ExitReason) -> Result<Action, Stop> {
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
        ExitReason::Xsetbv => xsetbv::handle(v),
        ExitReason::PreemptionTimer => watchdog::timer(v),
        // The guest can take the event now: `Vcpu::deliver_events` injects
        // it before the next entry.
        ExitReason::InterruptWindow | ExitReason::NmiWindow => Ok(Action::Resume),
        ExitReason::Invd => cache::invd(v),
        ExitReason::Monitor => mwait::monitor(v),
        ExitReason::Mwait => mwait::mwait(v),
        ExitReason::Rdpmc => rdpmc::handle(v),
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
