//! CPUID (exit reason 10): the host's answer, with VMX hidden, the
//! "hypervisor present" bit set, and our signature at leaf 0x4000_0000.

use super::{Action, Stop};
use crate::abi::CPUID_SIGNATURE;
use crate::vcpu::Vcpu;

const VMX: u32 = 1 << 5;
const HYPERVISOR: u32 = 1 << 31;
const HV_BASE: u32 = 0x4000_0000;
/// Highest hypervisor leaf we answer.
const HV_MAX: u32 = HV_BASE;

pub fn handle(v: &mut Vcpu) -> Result<Action, Stop> {
    let leaf = v.regs.rax as u32;
    let sub = v.regs.rcx as u32;
    let (a, b, c, d) = match leaf {
        HV_BASE => {
            let w = |i: usize| {
                u32::from_le_bytes([
                    CPUID_SIGNATURE[i],
                    CPUID_SIGNATURE[i + 1],
                    CPUID_SIGNATURE[i + 2],
                    CPUID_SIGNATURE[i + 3],
                ])
            };
            (HV_MAX, w(0), w(4), w(8))
        }
        0x4000_0001..=0x4fff_ffff => (0, 0, 0, 0),
        _ => {
            let r = core::arch::x86_64::__cpuid_count(leaf, sub);
            let mut r = (r.eax, r.ebx, r.ecx, r.edx);
            if leaf == 1 {
                r.2 = (r.2 & !VMX) | HYPERVISOR;
            }
            r
        }
    };
    v.regs.rax = a.into();
    v.regs.rbx = b.into();
    v.regs.rcx = c.into();
    v.regs.rdx = d.into();
    v.skip_instruction()?;
    Ok(Action::Resume)
}
