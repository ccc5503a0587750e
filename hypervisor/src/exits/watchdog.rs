//! The watchdog (exit reason 52, "VMX-preemption timer expired"). Each VM
//! entry starts the VMX-preemption timer from the run's watchdog time (the
//! value is not saved on exit, so it reloads on every entry, SDM 26.5.1 and
//! 27.7.4): it expires only when the guest ran that long without a single
//! VM exit. A guest that spins with interrupts off, or waits forever for
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

pub fn fired<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
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
