//! External interrupt (exit reason 1). External-interrupt exiting keeps host
//! interrupts out of the guest. The only one the host sends is the kick of
//! `vm::requests` (the PICs are masked): its purpose, leaving the guest, is
//! done. The CPU acknowledged it on exit ("acknowledge interrupt on exit",
//! SDM 25.7.1); end it at the local APIC.

use crate::mm::HostMemory;
use crate::vcpu::{Action, Hw, Stop, Vcpu};
use crate::vmx::exit::InterruptionInfo;
use crate::vmx::fields::Vmcs32;

pub fn external<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    let info = InterruptionInfo::from_raw(v.vmcs.read32(Vmcs32::VmExitInterruptionInfo)?);
    if info.valid {
        v.vmcs.host_eoi();
    }
    Ok(Action::Resume)
}
