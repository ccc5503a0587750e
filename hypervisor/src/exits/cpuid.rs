//! CPUID (exit reason 10): the VM's CPUID policy, as this vCPU sees it
//! (`machine::cpuid`), with OSXSAVE and the XSAVE
//! sizes following its CR4 and XCR0.

use crate::machine::cpuid::Live;
use crate::mm::HostMemory;
use crate::vcpu::{Action, Hw, Stop, Vcpu};
use crate::x86::CR4_OSXSAVE;

pub fn handle<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    let live = Live {
        cr4_osxsave: v.guest_cr4()? & CR4_OSXSAVE != 0,
        xcr0: v.xcr0,
    };
    let [a, b, c, d] =
        v.vm.cpuid
            .answer_live(v.id, v.regs.rax as u32, v.regs.rcx as u32, live);
    v.regs.rax = a.into();
    v.regs.rbx = b.into();
    v.regs.rcx = c.into();
    v.regs.rdx = d.into();
    v.skip_instruction()?;
    Ok(Action::Resume)
}
