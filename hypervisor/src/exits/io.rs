//! Port I/O (exit reason 30). Every port exits (all-ones I/O bitmaps); the
//! VM's port-I/O bus routes the access to a device model. Unclaimed ports read
//! as all ones and ignore writes, like an empty ISA bus: no guest port ever
//! reaches the machine the hypervisor runs on (nor an emulator's own ports,
//! such as Bochs' 0x8900).
//!
//! A write can end the VM (isa-debug-exit, a reset port, ACPI power-off):
//! this vCPU stops after the instruction completes, the others are kicked
//! and stop on their next exit (`super::platform_stop`).

use crate::mm::HostMemory;
use crate::vcpu::{Action, Stop};
use crate::vcpu::{Hw, Vcpu};
use crate::vmx::exit::{IoDirection, IoQualification};
use crate::vmx::fields::VmcsNatural;
use alloc::format;

pub fn handle<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    v.vm.irq.activate();
    let q = IoQualification::from_qualification(v.vmcs.read_nat(VmcsNatural::ExitQualification)?);
    if !matches!(q.size, 1 | 2 | 4) {
        return Err(v.contain(
            "unsupported I/O",
            format!("I/O size {} on port {:#x}", q.size, q.port),
        ));
    }
    if q.string {
        return super::string_io::handle(v, &q);
    }
    let mask = q.value_mask();
    let port = u64::from(q.port);
    let size = usize::from(q.size);
    match q.direction {
        IoDirection::In => {
            let mut data = [0u8; 4];
            // An unclaimed port reads all ones (the bus fills them in).
            v.vm.pio.read(port, &mut data[..size]);
            let value = u32::from_le_bytes(data) & mask;
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
            // An unclaimed port ignores the write.
            v.vm.pio.write(port, &value.to_le_bytes()[..size]);
            if let Some(stop) = super::platform_stop(v.vm) {
                v.skip_instruction()?;
                v.vm.requests.kick_others(v.id);
                return Err(match stop {
                    Stop::Reset { .. } => Stop::Reset {
                        cause: format!("write of {value:#x} to port {port:#x}"),
                    },
                    other => other,
                });
            }
        }
    }
    // The 8259s' programming or an EOI may change what their output
    // drives (SDM-independent: the 8259A datasheet's INT line).
    if matches!(port, 0x20 | 0x21 | 0xa0 | 0xa1 | 0x4d0 | 0x4d1) {
        let kicks = v.vm.irq.after_pic_access();
        v.kick(kicks);
    }
    v.skip_instruction()?;
    Ok(Action::Resume)
}
