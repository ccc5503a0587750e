//! Triple fault (exit reason 2): the guest shut down. On a PC the chipset
//! turns the processor's shutdown cycle into a reset; the VM ends with
//! "guest requested reset".

use crate::mm::HostMemory;
use crate::vcpu::{Action, Hw, Stop, Vcpu};

pub fn handle<H: Hw, M: HostMemory>(_: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    Err(Stop::Reset {
        why: "triple fault",
    })
}
