//! Port I/O (exit reason 30). Every port exits (all-ones I/O bitmaps); a
//! small bus maps port ranges to device models. Unclaimed ports read as
//! all ones and ignore writes, like an empty ISA bus.

use super::{contain, Action, Stop};
use crate::vcpu::Vcpu;
use crate::vmx::exit::{IoDirection, IoQualification};
use crate::vmx::fields::{VmcsAccess, VmcsNatural};
use alloc::format;

/// A device model behind a range of ports.
pub trait PortDevice: Sync {
    fn read(&self, v: &mut Vcpu, port: u16, size: u8) -> u32;
    fn write(&self, v: &mut Vcpu, port: u16, size: u8, value: u32);
}

/// COM1, as far as a polling guest needs it: THR output goes to the
/// hypervisor console (prefixed with the vCPU), LSR always says "ready".
struct Com1;

const COM1: u16 = 0x3f8;
const LSR_THR_EMPTY: u32 = 0x20;
const LSR_TX_IDLE: u32 = 0x40;

impl PortDevice for Com1 {
    fn read(&self, _: &mut Vcpu, port: u16, _: u8) -> u32 {
        match port - COM1 {
            5 => LSR_THR_EMPTY | LSR_TX_IDLE,
            _ => 0,
        }
    }
    fn write(&self, v: &mut Vcpu, port: u16, _: u8, value: u32) {
        if port == COM1 {
            v.console_bytes(&[value as u8]);
        }
    }
}

/// The bus: (first port, last port, device).
static BUS: &[(u16, u16, &dyn PortDevice)] = &[(COM1, COM1 + 7, &Com1)];

pub fn handle(v: &mut Vcpu) -> Result<Action, Stop> {
    let q = IoQualification::from_qualification(v.vmcs.read_nat(VmcsNatural::ExitQualification)?);
    if q.string {
        return Err(contain(
            v,
            "unsupported I/O",
            format!("string I/O (INS/OUTS) on port {:#x}", q.port),
        ));
    }
    if !matches!(q.size, 1 | 2 | 4) {
        return Err(contain(
            v,
            "unsupported I/O",
            format!("I/O size {} on port {:#x}", q.size, q.port),
        ));
    }
    let mask = q.value_mask();
    let dev = BUS
        .iter()
        .find(|(lo, hi, _)| (*lo..=*hi).contains(&q.port))
        .map(|d| d.2);
    match q.direction {
        IoDirection::In => {
            let value = dev.map_or(u32::MAX, |d| d.read(v, q.port, q.size)) & mask;
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
            if let Some(d) = dev {
                d.write(v, q.port, q.size, value);
            }
        }
    }
    v.skip_instruction()?;
    Ok(Action::Resume)
}
