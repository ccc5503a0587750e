//! XSETBV (exit reason 55; it exits unconditionally, SDM 26.1.2). The CPU
//! has already checked CR4.OSXSAVE (#UD) and CPL 0 (#GP): those faults take
//! priority over the exit (SDM 26.1.1). Here: only XCR0 exists (ECX = 0),
//! and the value must pass the XCR0 rules against what CPUID leaf 0xD
//! offers (`x86::control::check_xcr0`); then it is loaded on this vCPU's
//! core, where it stays (the host uses no extended state).

use crate::mm::HostMemory;
use crate::vcpu::{Action, Hw, Stop, Vcpu};
use crate::x86::control;

pub fn handle<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    let xcr = v.regs.rcx as u32;
    let value = (v.regs.rdx << 32) | (v.regs.rax & 0xffff_ffff);
    if xcr != 0 || control::check_xcr0(value, v.vm.cpuid.xcr0_supported()).is_err() {
        return v.inject_gp();
    }
    v.vmcs.set_xcr0(value);
    v.xcr0 = value;
    v.skip_instruction()?;
    Ok(Action::Resume)
}
