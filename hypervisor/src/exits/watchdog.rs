//! The watchdog and the timers (exit reason 52, "VMX-preemption timer
//! expired"). Each VM entry starts the VMX-preemption timer at the nearer
//! of the vCPU's next timer deadline and what is left of the watchdog time
//! (`run.rs`; the value is not saved on exit, SDM 26.5.1 and 27.7.4). The
//! watchdog fires when the guest ran that long without any other VM exit. A guest that spins with interrupts off, or waits forever for
//! something that never comes, is reported with where it is and in what
//! mode, and the VM ends, instead of the run hanging until it is killed.

use crate::mm::HostMemory;
use crate::vcpu::{Action, Hw, Stop, Vcpu};
use crate::vmx::fields::{Vmcs32, VmcsNatural};
use crate::x86::control::describe;
use alloc::format;

/// RFLAGS.IF and RFLAGS.VM.
const IF: u64 = 1 << 9;
const VM: u64 = 1 << 17;
/// CS access rights: D/B.
const CS_D: u32 = 1 << 14;

/// The VMX-preemption timer expired: a timer deadline of this vCPU (its
/// APIC timer, the PIT), or the watchdog. The watchdog fires only when the
/// vCPU made no other exit for the watchdog time and is not halted (a vCPU
/// halted with interrupts on waits legitimately).
pub fn timer<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    let halted = v.vmcs.read32(Vmcs32::GuestActivityState)? == crate::vcpu::inject::HLT;
    let quiet = v.vmcs.rdtsc().wrapping_sub(v.last_progress);
    if v.watchdog_tsc == 0 || halted || quiet < v.watchdog_tsc {
        // A deadline: `Vcpu::deliver_events` polls the timers.
        return Ok(Action::Resume);
    }
    fired(v)
}

fn fired<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    let m = v.mode_regs()?;
    let rflags = v.vmcs.read_nat(VmcsNatural::GuestRflags)?;
    let cs_d = v.vmcs.read32(Vmcs32::GuestCsAccessRights)? & CS_D != 0;
    let (mode, paging) = describe(&m, cs_d, rflags & VM != 0);
    let cs = v.vmcs.read16(crate::vmx::fields::Vmcs16::GuestCsSelector)?;
    let detail = format!(
        "vCPU {} made no VM exit for {} ms: rip={:#x} cs={cs:#x} {mode}, {paging}, \
         interrupts {} (RFLAGS {rflags:#x})",
        v.id,
        v.vm.config.watchdog_ms,
        v.rip(),
        if rflags & IF != 0 { "on" } else { "off" },
    );
    v.vm.events.request_watchdog(v.id);
    v.vm.requests.kick_others(v.id);
    Err(Stop::Watchdog { detail })
}
