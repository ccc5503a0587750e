//! VMX instructions (exit reasons 19–27, 50, 53). VMX is hidden from the
//! guest (CPUID.1:ECX.VMX = 0), so its instructions are undefined there, as on
//! a CPU without VMX: #UD.

use crate::mm::HostMemory;
use crate::vcpu::{Action, Hw, Stop, Vcpu};
use crate::vmx::exit::InterruptionInfo;

pub fn handle<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    v.inject(InterruptionInfo::ud(), 0)?;
    Ok(Action::Resume)
}
