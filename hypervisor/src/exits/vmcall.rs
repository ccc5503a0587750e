//! VMCALL (exit reason 18): the hypercalls of `abi`.

use super::{Action, Stop};
use crate::abi::{HC_CONSOLE_WRITE, HC_ERROR, HC_ITERATION_DONE, HC_OK, HC_REPORT, HC_SHUTDOWN};
use crate::println;
use crate::vcpu::Vcpu;
use crate::vmx::fields::{Vmcs32, VmcsAccess};

/// The most a single console write may carry.
const CONSOLE_MAX: u64 = 4096;

pub fn handle(v: &mut Vcpu) -> Result<Action, Stop> {
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
                if v.line_len > 0 {
                    v.flush_line();
                }
                match a0 {
                    0 => println!("vcpu{}: guest reports PASS, value {a1:#x}", v.id),
                    code => println!(
                        "vcpu{}: guest reports FAIL, code {code:#x}, value {a1:#x}",
                        v.id
                    ),
                }
                HC_OK
            }
            HC_SHUTDOWN => return Err(Stop::Shutdown { status: a0 }),
            HC_ITERATION_DONE => crate::dirtylog::iteration_done(v, a0),
            _ => HC_ERROR,
        }
    };
    v.regs.rax = result;
    v.skip_instruction()?;
    Ok(Action::Resume)
}

fn console_write(v: &mut Vcpu, gpa: u64, len: u64) -> u64 {
    if len > CONSOLE_MAX {
        return HC_ERROR;
    }
    let mut buf = [0u8; CONSOLE_MAX as usize];
    let buf = &mut buf[..len as usize];
    if v.vm.guest_mem().read(gpa, buf).is_err() {
        return HC_ERROR;
    }
    v.console_bytes(buf);
    HC_OK
}
