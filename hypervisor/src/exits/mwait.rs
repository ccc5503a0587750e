//! MONITOR and MWAIT (exit reasons 39 and 36; "MONITOR exiting" and "MWAIT
//! exiting" are on, so the guest never arms the host core's monitor or puts
//! it to sleep). CPUID does not offer MONITOR/MWAIT; a guest that uses them
//! anyway gets what KVM gives by default: both complete as no-ops. MWAIT may
//! always return early (SDM Vol. 2B MWAIT: "any interrupt, or other
//! events"), so a guest's MWAIT loop still works, at the cost of spinning.

use crate::mm::HostMemory;
use crate::vcpu::{Action, Hw, Stop, Vcpu};

pub fn monitor<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    v.skip_instruction()?;
    Ok(Action::Resume)
}

pub fn mwait<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    v.skip_instruction()?;
    Ok(Action::Resume)
}
