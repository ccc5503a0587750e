//! VMCALL (exit reason 18): the hypercalls of `abi`.

use crate::boot::abi::{
    HC_CONSOLE_WRITE, HC_ERROR, HC_ITERATION_DONE, HC_OK, HC_REPORT, HC_SHUTDOWN,
};
use crate::mm::HostMemory;
use crate::vcpu::{Action, Stop};
use crate::vcpu::{Hw, Vcpu};
use crate::vmx::fields::Vmcs32;
use alloc::format;

/// The most a single console write may carry.
const CONSOLE_MAX: u64 = 4096;

pub fn handle<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    // Hypercalls are for the guest kernel: from CPL > 0 they fail (the CPL
    // is SS.DPL, SDM 25.4.1).
    let cpl = (v.vmcs.read32(Vmcs32::GuestSsAccessRights)? >> 5) & 3;
    let (nr, a0, a1) = (v.regs.rax, v.regs.rdi, v.regs.rsi);
    let result = if cpl != 0 {
        HC_ERROR
    } else {
        match nr {
            HC_CONSOLE_WRITE => console_write(v, a0, a1),
            HC_REPORT => {
                v.guest_report = Some((a0, a1));
                v.flush_line();
                let text = match a0 {
                    0 => format!("vcpu{}: guest reports PASS, value {a1:#x}", v.id),
                    code => format!(
                        "vcpu{}: guest reports FAIL, code {code:#x}, value {a1:#x}",
                        v.id
                    ),
                };
                v.vm.out.line(None, &text);
                HC_OK
            }
            HC_SHUTDOWN => return Err(Stop::Shutdown { status: a0 }),
            HC_ITERATION_DONE => iteration_done(v, a0),
            _ => HC_ERROR,
        }
    };
    v.regs.rax = result;
    v.skip_instruction()?;
    Ok(Action::Resume)
}

fn console_write<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>, gpa: u64, len: u64) -> u64 {
    if len > CONSOLE_MAX {
        return HC_ERROR;
    }
    let mut buf = [0u8; CONSOLE_MAX as usize];
    let buf = &mut buf[..len as usize];
    if v.guest_mem().read(gpa, buf).is_err() {
        return HC_ERROR;
    }
    v.console_bytes(buf);
    HC_OK
}

/// HC_ITERATION_DONE(pass): tell the VM's workload; without one, stop.
fn iteration_done<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>, pass: u64) -> u64 {
    let Some(w) = v.vm.workload else {
        return 1; // not a workload run: nothing to wait for
    };
    let counters = v.counters();
    // The workload may wait for the controller, which may be changing the
    // memslots: no read section may be open meanwhile.
    v.end_section();
    let r = w.iteration_done(v.id, pass, counters, &mut || v.service_requests());
    v.begin_section();
    r
}
