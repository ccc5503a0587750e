//! HLT (exit reason 12). There is no interrupt injection yet, so a guest that
//! halts with interrupts disabled can never run again: it is stopped with a
//! report. With interrupts enabled, HLT returns at once (as if woken).

use crate::mm::HostMemory;
use crate::vcpu::{Action, Hw, Stop, Vcpu};
use crate::vmx::fields::VmcsNatural;
use alloc::string::String;

/// RFLAGS.IF.
const IF: u64 = 1 << 9;

pub fn handle<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    let rflags = v.vmcs.read_nat(VmcsNatural::GuestRflags)?;
    if rflags & IF == 0 {
        return Err(v.contain(
            "halted",
            String::from("HLT with interrupts disabled, never to wake"),
        ));
    }
    v.skip_instruction()?;
    Ok(Action::Resume)
}
