//! HLT (exit reason 12). A vCPU with interrupts enabled sleeps until an
//! interrupt is pending for it: it re-enters in the HLT activity state
//! (SDM 25.4.2), so its core really halts in the guest until a kick (an
//! external-interrupt exit) or its next timer deadline (the
//! VMX-preemption timer) brings it out; the injected interrupt wakes it
//! (`Vcpu::deliver_events`). With interrupts disabled and nothing that could
//! wake it (no NMI pending), HLT would never end: the vCPU is stopped with a
//! report.

use crate::mm::HostMemory;
use crate::vcpu::inject::HLT;
use crate::vcpu::{Action, Hw, Stop, Vcpu};
use crate::vmx::fields::{Vmcs32, VmcsNatural};
use alloc::string::String;

/// RFLAGS.IF.
const IF: u64 = 1 << 9;

pub fn handle<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    let rflags = v.vmcs.read_nat(VmcsNatural::GuestRflags)?;
    let pending = v.vm.irq.pending_for(v.id);
    if rflags & IF == 0 && !pending.nmi {
        return Err(v.contain(
            "halted",
            String::from("HLT with interrupts disabled, never to wake"),
        ));
    }
    v.skip_instruction()?;
    // HLT completed: an STI or MOV SS shadow it sat in is over, and VM
    // entry refuses the HLT state under one (SDM 27.3.1.5).
    let shadow = v.vmcs.read32(Vmcs32::GuestInterruptibilityState)?;
    if shadow & 0b11 != 0 {
        v.vmcs
            .write32(Vmcs32::GuestInterruptibilityState, shadow & !0b11)?;
    }
    // An idle guest has said what it had to: its unfinished line (a
    // shell's prompt) goes out before it sleeps.
    v.vm.flush_output();
    if !v.vm.irq.has_work(v.id) && v.vm.caps.misc.activity_hlt() {
        v.vmcs.write32(Vmcs32::GuestActivityState, HLT)?;
    }
    Ok(Action::Resume)
}
