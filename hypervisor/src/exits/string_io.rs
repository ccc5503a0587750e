//! String port I/O: INS and OUTS, with or without REP (exit reason 30 with
//! the "string" bit, SDM 28.2.1 table "Exit Qualification for I/O
//! Instructions"; Vol. 2B INS/OUTS).
//!
//! The memory operand is ES:[rDI] for INS and seg:[rSI] for OUTS (DS unless
//! overridden), at the instruction's address size. Both come from the
//! VM-exit instruction-information field where the CPU reports it for
//! INS/OUTS (IA32_VMX_BASIC bit 54), else from the code size with DS. Each
//! element is translated through the guest's page tables (`mm::walk`) and
//! read or written through the memslots; RFLAGS.DF picks the direction.
//!
//! With REP, at most [`MAX_PER_EXIT`] elements are moved per exit, and then
//! the instruction is left to run again with RCX and rSI/rDI advanced, as a
//! CPU that takes an interrupt between iterations does (SDM Vol. 2B REP).
//! A page fault on an element is the guest's #PF, delivered with the
//! registers of the iterations completed so far. Segment limits are not
//! checked (flat segments assumed); an element in device memory (no RAM
//! behind it) is contained.

use super::mmio::{inject_pf, paging, Tables};
use crate::mm::memslot::SlotFlags;
use crate::mm::walk::{AccessKind, WalkAccess, WalkError};
use crate::mm::HostMemory;
use crate::vcpu::{Action, Hw, Stop, Vcpu};
use crate::vmx::exit::{IoDirection, IoQualification};
use crate::vmx::fields::{Vmcs32, VmcsNatural};
use crate::x86::CR0_PE;
use alloc::format;

/// Elements moved per exit before the instruction runs again.
pub const MAX_PER_EXIT: u64 = 4096;

/// RFLAGS.DF.
const DF: u64 = 1 << 10;

/// Segment bases in the instruction-information field's order.
const SEG_BASES: [VmcsNatural; 6] = [
    VmcsNatural::GuestEsBase,
    VmcsNatural::GuestCsBase,
    VmcsNatural::GuestSsBase,
    VmcsNatural::GuestDsBase,
    VmcsNatural::GuestFsBase,
    VmcsNatural::GuestGsBase,
];
const ES: usize = 0;
const DS: usize = 3;

/// `new` written into a register at address size `bits`: 64 whole, 32
/// zero-extended, 16 only the low word.
fn merge(old: u64, new: u64, bits: u32) -> u64 {
    match bits {
        64 => new,
        32 => new & 0xffff_ffff,
        _ => (old & !0xffff) | (new & 0xffff),
    }
}

pub fn handle<H: Hw, M: HostMemory>(
    v: &mut Vcpu<H, M>,
    q: &IoQualification,
) -> Result<Action, Stop> {
    let size = u64::from(q.size);
    let port = u64::from(q.port);
    let walk = paging(v)?;
    let h = &v.vmcs;
    let rflags = h.read_nat(VmcsNatural::GuestRflags)?;
    let cs_access = h.read32(Vmcs32::GuestCsAccessRights)?;
    let code_bits = crate::decode::code_bitness(walk.cr0, walk.efer, rflags, cs_access);
    let input = q.direction == IoDirection::In;
    let (addr_bits, seg) = if v.vm.caps.basic.ins_outs_info() {
        let info = h.read32(Vmcs32::VmExitInstructionInfo)?;
        let bits = match (info >> 7) & 7 {
            0 => 16,
            1 => 32,
            _ => 64,
        };
        let seg = ((info >> 15) & 7) as usize;
        (bits, if input { ES } else { seg.min(5) })
    } else {
        (code_bits, if input { ES } else { DS })
    };
    // In 64-bit mode only FS and GS have bases (SDM 3.4.4).
    let base = if code_bits == 64 && seg != 4 && seg != 5 {
        0
    } else {
        h.read_nat(SEG_BASES[seg])?
    };
    let cpl = if walk.cr0 & CR0_PE == 0 {
        0
    } else {
        ((h.read32(Vmcs32::GuestSsAccessRights)? >> 5) & 3) as u8
    };
    let mask = if addr_bits == 64 {
        u64::MAX
    } else {
        (1u64 << addr_bits) - 1
    };
    let mut count = if q.rep { v.regs.rcx & mask } else { 1 };
    let mut index = if input { v.regs.rdi } else { v.regs.rsi } & mask;
    let step = if rflags & DF != 0 {
        size.wrapping_neg()
    } else {
        size
    };
    let access = WalkAccess::new(
        if input {
            AccessKind::Write
        } else {
            AccessKind::Read
        },
        cpl,
    );
    let mut moved = 0;
    let mut fault = None;
    let mut tables = Tables::new(v);
    let mut gm = v.guest_mem();
    while count > 0 && moved < MAX_PER_EXIT {
        let mut la = base.wrapping_add(index);
        if code_bits != 64 {
            la &= 0xffff_ffff;
        }
        // An element may straddle a page: translate byte by byte (at most
        // two distinct pages).
        let mut gpas = [0u64; 4];
        for (i, g) in gpas.iter_mut().enumerate().take(size as usize) {
            match walk.translate(&mut tables, la.wrapping_add(i as u64), access) {
                Ok(t) => *g = t.gpa,
                Err(WalkError::PageFault(pf)) => {
                    fault = Some(pf);
                    break;
                }
                Err(e) => {
                    return Err(v.contain(
                        "string I/O: the guest's memory operand does not translate",
                        format!("port {port:#x} la={la:#x}: {e:?}"),
                    ))
                }
            }
        }
        if fault.is_some() {
            break;
        }
        let mut data = [0u8; 4];
        let data = &mut data[..size as usize];
        if input {
            // A read-only slot takes no write, as the EPT would refuse it.
            let readonly = gpas[..data.len()].iter().any(|&g| {
                gm.slots
                    .lookup(g / 4096, &mut gm.stats)
                    .is_some_and(|s| s.flags().contains(SlotFlags::READONLY))
            });
            if readonly {
                return Err(v.contain(
                    "write to a read-only memslot",
                    format!("INS from port {port:#x} to gpa={:#x}", gpas[0]),
                ));
            }
            v.vm.pio.read(port, data);
            for (i, b) in data.iter().enumerate() {
                if gm.write(gpas[i], core::slice::from_ref(b)).is_err() {
                    return Err(v.contain(
                        "string I/O to memory no memslot backs",
                        format!("INS from port {port:#x} to gpa={:#x}", gpas[i]),
                    ));
                }
                // Written by the hypervisor, not through the EPT: log it.
                v.vm.mark_dirty_gpa(gm.slots, gpas[i]);
            }
        } else {
            for (i, b) in data.iter_mut().enumerate() {
                if gm.read(gpas[i], core::slice::from_mut(b)).is_err() {
                    return Err(v.contain(
                        "string I/O from memory no memslot backs",
                        format!("OUTS to port {port:#x} from gpa={:#x}", gpas[i]),
                    ));
                }
            }
            v.vm.pio.write(port, data);
        }
        index = index.wrapping_add(step) & mask;
        count -= 1;
        moved += 1;
        if !input && super::platform_stop(v.vm).is_some() {
            break;
        }
    }
    if input {
        v.regs.rdi = merge(v.regs.rdi, index, addr_bits);
    } else {
        v.regs.rsi = merge(v.regs.rsi, index, addr_bits);
    }
    if q.rep {
        v.regs.rcx = merge(v.regs.rcx, count, addr_bits);
    }
    if let Some(pf) = fault {
        return inject_pf(v, pf);
    }
    if count == 0 {
        v.skip_instruction()?;
    }
    if let Some(stop) = super::platform_stop(v.vm) {
        v.vm.requests.kick_others(v.id);
        return Err(stop);
    }
    Ok(Action::Resume)
}

#[cfg(test)]
mod tests {
    use super::merge;

    #[test]
    fn registers_update_at_the_address_size() {
        assert_eq!(
            merge(0xffff_ffff_ffff_0000, 0x1_2345, 16),
            0xffff_ffff_ffff_2345
        );
        assert_eq!(merge(0xffff_ffff_0000_0000, 0x1_0000_0004, 32), 4);
        assert_eq!(merge(0, u64::MAX, 64), u64::MAX);
    }
}
