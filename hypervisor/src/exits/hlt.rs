//! HLT (exit reason 12). A vCPU with interrupts enabled sleeps until an
//! interrupt is pending for it: it re-enters in the HLT activity state
//! (SDM 25.4.2), so its core really halts in the guest until a kick (an
//! external-interrupt exit) or its next timer deadline (the
//! VMX-preemption timer) brings it out; the injected interrupt wakes it
//! (`Vcpu::deliver_events`). With interrupts disabled and no NMI pending,
//! only an NMI, INIT or SIPI can end the HLT: the vCPU sleeps so while
//! another vCPU can still send one (Linux halts its other CPUs so before
//! it powers off), and is stopped with a report when none can (it is the
//! last: the run would never end).

use crate::mm::HostMemory;
use crate::vcpu::inject::HLT;
use crate::vcpu::{Action, Hw, Stop, Vcpu};
use crate::vmx::fields::{Vmcs32, VmcsNatural};
use alloc::string::String;

/// RFLAGS.IF.
const IF: u64 = 1 << 9;

/// The report of a vCPU halted with interrupts off that nothing can wake.
pub fn never_to_wake<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Stop {
    v.contain(
        "halted",
        String::from("HLT with interrupts disabled, never to wake"),
    )
}

pub fn handle<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    let rflags = v.vmcs.read_nat(VmcsNatural::GuestRflags)?;
    let pending = v.vm.irq.pending_for(v.id);
    if rflags & IF == 0 && !pending.nmi {
        // Halted first, then look: of two halting at once, one sees the
        // other (`Requests::others_can_run`).
        v.vm.requests.set_halted(v.id, true);
        if !v.vm.requests.others_can_run(v.id) || !v.vm.caps.misc.activity_hlt() {
            return Err(never_to_wake(v));
        }
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
