//! Port I/O (exit reason 30). Every port exits (all-ones I/O bitmaps); a
//! small bus maps port ranges to device models. Unclaimed ports read as
//! all ones and ignore writes, like an empty ISA bus.

use crate::mm::HostMemory;
use crate::vcpu::{Action, Stop};
use crate::vcpu::{Hw, Vcpu};
use crate::vmx::exit::{IoDirection, IoQualification};
use crate::vmx::fields::VmcsNatural;
use alloc::format;

const COM1: u16 = 0x3f8;
const LSR_THR_EMPTY: u32 = 0x20;
const LSR_TX_IDLE: u32 = 0x40;

/// COM1, as far as a polling guest needs it: THR output goes to the guest
/// console (prefixed with the vCPU), LSR always says "ready".
fn com1_read(port: u16) -> u32 {
    match port - COM1 {
        5 => LSR_THR_EMPTY | LSR_TX_IDLE,
        _ => 0,
    }
}

pub fn handle<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    let q = IoQualification::from_qualification(v.vmcs.read_nat(VmcsNatural::ExitQualification)?);
    if q.string {
        return Err(v.contain(
            "unsupported I/O",
            format!("string I/O (INS/OUTS) on port {:#x}", q.port),
        ));
    }
    if !matches!(q.size, 1 | 2 | 4) {
        return Err(v.contain(
            "unsupported I/O",
            format!("I/O size {} on port {:#x}", q.size, q.port),
        ));
    }
    let mask = q.value_mask();
    let com1 = (COM1..COM1 + 8).contains(&q.port);
    match q.direction {
        IoDirection::In => {
            let value = if com1 { com1_read(q.port) } else { u32::MAX } & mask;
            // IN to AL/AX leaves the rest of RAX; IN to EAX zero-extends.
            let rax = if q.size == 4 {
                u64::from(value)
            } else {
                (v.regs.rax & !u64::from(mask)) | u64::from(value)
            };
            v.regs.rax = rax;
        }
        IoDirection::Out => {
            let value = v.regs.rax as u32 & mask;
            if q.port == COM1 {
                v.console_bytes(&[value as u8]);
            }
        }
    }
    v.skip_instruction()?;
    Ok(Action::Resume)
}
