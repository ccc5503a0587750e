//! Triple fault (exit reason 2): the guest shut down. It is contained.

use crate::mm::HostMemory;
use crate::vcpu::{Action, Hw, Stop, Vcpu};
use alloc::string::String;

pub fn handle<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    Err(v.contain(
        "triple fault",
        String::from("guest shut down on a triple fault"),
    ))
}
