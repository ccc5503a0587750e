//! CPUID (exit reason 10): the VM's CPUID policy, as this vCPU sees it
//! (`machine::cpuid`).

use crate::mm::HostMemory;
use crate::vcpu::{Action, Hw, Stop, Vcpu};

pub fn handle<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    let [a, b, c, d] =
        v.vm.cpuid
            .answer(v.id, v.regs.rax as u32, v.regs.rcx as u32);
    v.regs.rax = a.into();
    v.regs.rbx = b.into();
    v.regs.rcx = c.into();
    v.regs.rdx = d.into();
    v.skip_instruction()?;
    Ok(Action::Resume)
}
