//! RDMSR/WRMSR (exit reasons 31, 32). Every MSR access exits (all-ones MSR
//! bitmap). An allow-list is emulated; anything else injects #GP(0), as a
//! CPU does for an MSR it does not have.

use super::{Action, Stop};
use crate::guest_state::{EFER_LMA, EFER_LME, EFER_NXE, EFER_SCE};
use crate::vcpu::Vcpu;
use crate::vmx::caps::{self, VmEntryControls};
use crate::vmx::exit::InterruptionInfo;
use crate::vmx::fields::{Vmcs32, Vmcs64, VmcsAccess, VmcsNatural};
use x86_64::registers::model_specific::Msr;

const IA32_TSC: u32 = 0x10;
const IA32_APIC_BASE: u32 = 0x1b;
const APIC_BASE_DEFAULT: u64 = 0xfee0_0000 | (1 << 11);
const APIC_BSP: u64 = 1 << 8;

/// MSRs the guest may use that the host never does and VM exits do not
/// switch: they go straight to the hardware of this vCPU's own core.
const PASS_THROUGH: [u32; 6] = [
    caps::IA32_STAR,
    caps::IA32_LSTAR,
    caps::IA32_CSTAR,
    caps::IA32_FMASK,
    caps::IA32_KERNEL_GS_BASE,
    caps::IA32_TSC_AUX,
];

fn gp(v: &mut Vcpu) -> Result<Action, Stop> {
    v.inject(InterruptionInfo::gp(), 0)?;
    Ok(Action::Resume)
}

fn guest_efer(v: &Vcpu) -> Result<u64, Stop> {
    Ok(v.vmcs.read64(Vmcs64::GuestIa32Efer)?)
}

pub fn rdmsr(v: &mut Vcpu) -> Result<Action, Stop> {
    let msr = v.regs.rcx as u32;
    let value = match msr {
        caps::IA32_EFER if loads_efer(v) => guest_efer(v)?,
        caps::IA32_PAT => v.vmcs.read64(Vmcs64::GuestIa32Pat)?,
        caps::IA32_FS_BASE => v.vmcs.read_nat(VmcsNatural::GuestFsBase)?,
        caps::IA32_GS_BASE => v.vmcs.read_nat(VmcsNatural::GuestGsBase)?,
        caps::IA32_SYSENTER_CS => v.vmcs.read32(Vmcs32::GuestIa32SysenterCs)?.into(),
        caps::IA32_SYSENTER_ESP => v.vmcs.read_nat(VmcsNatural::GuestIa32SysenterEsp)?,
        caps::IA32_SYSENTER_EIP => v.vmcs.read_nat(VmcsNatural::GuestIa32SysenterEip)?,
        IA32_TSC => crate::arch::rdtsc(),
        IA32_APIC_BASE => APIC_BASE_DEFAULT | if v.id == 0 { APIC_BSP } else { 0 },
        m if PASS_THROUGH.contains(&m) => {
            // SAFETY: the MSR exists on every x86_64 CPU with VMX (allow-list)
            // and reading it has no side effects.
            unsafe { Msr::new(m).read() }
        }
        _ => return gp(v),
    };
    v.regs.rax = value & 0xffff_ffff;
    v.regs.rdx = value >> 32;
    v.skip_instruction()?;
    Ok(Action::Resume)
}

fn loads_efer(v: &Vcpu) -> bool {
    v.vm.controls.entry & VmEntryControls::LOAD_EFER.bits() != 0
}

fn canonical(a: u64) -> bool {
    ((a as i64) << 16 >> 16) as u64 == a
}

pub fn wrmsr(v: &mut Vcpu) -> Result<Action, Stop> {
    let msr = v.regs.rcx as u32;
    let value = (v.regs.rdx << 32) | (v.regs.rax & 0xffff_ffff);
    match msr {
        caps::IA32_EFER if loads_efer(v) => {
            let old = guest_efer(v)?;
            // Only these bits exist for our guests; LMA is read-only.
            if value & !(EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE) != 0 {
                return gp(v);
            }
            let paging =
                v.vmcs.read_nat(VmcsNatural::Cr0ReadShadow)? & crate::guest_state::CR0_PG != 0;
            // SDM: changing LME while paging is on is a #GP.
            if paging && (value ^ old) & EFER_LME != 0 {
                return gp(v);
            }
            v.vmcs.write64(
                Vmcs64::GuestIa32Efer,
                (value & !EFER_LMA) | (old & EFER_LMA),
            )?;
        }
        caps::IA32_PAT => {
            // Each of the 8 entries must be a valid memory type (0,1,4,5,6,7).
            if (0..8).any(|i| matches!((value >> (8 * i)) & 0xff, 2 | 3 | 8..)) {
                return gp(v);
            }
            v.vmcs.write64(Vmcs64::GuestIa32Pat, value)?;
        }
        caps::IA32_FS_BASE
        | caps::IA32_GS_BASE
        | caps::IA32_KERNEL_GS_BASE
        | caps::IA32_LSTAR
        | caps::IA32_CSTAR
            if !canonical(value) =>
        {
            return gp(v);
        }
        caps::IA32_FS_BASE => v.vmcs.write_nat(VmcsNatural::GuestFsBase, value)?,
        caps::IA32_GS_BASE => v.vmcs.write_nat(VmcsNatural::GuestGsBase, value)?,
        caps::IA32_SYSENTER_CS => v.vmcs.write32(Vmcs32::GuestIa32SysenterCs, value as u32)?,
        caps::IA32_SYSENTER_ESP => v.vmcs.write_nat(VmcsNatural::GuestIa32SysenterEsp, value)?,
        caps::IA32_SYSENTER_EIP => v.vmcs.write_nat(VmcsNatural::GuestIa32SysenterEip, value)?,
        caps::IA32_TSC_AUX if value >> 32 != 0 => return gp(v),
        m if PASS_THROUGH.contains(&m) => {
            // SAFETY: the host never uses these MSRs (no SYSCALL, no SWAPGS,
            // no RDTSCP) and VM exits do not depend on them; the value was
            // checked where the CPU would #GP.
            unsafe { Msr::new(m).write(value) }
        }
        _ => return gp(v),
    }
    v.skip_instruction()?;
    Ok(Action::Resume)
}
