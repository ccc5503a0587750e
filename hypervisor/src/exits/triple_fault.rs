//! Triple fault (exit reason 2): the guest shut down, which on a PC resets
//! the machine (the chipset turns the shutdown cycle into a reset). The VM
//! ends with "guest requested reset"; the other vCPUs are kicked and stop
//! with it.

use crate::mm::HostMemory;
use crate::vcpu::{Action, Hw, Stop, Vcpu};
use alloc::format;

pub fn handle<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    Err(v.reset(format!("triple fault at rip={:#x}", v.rip())))
}
