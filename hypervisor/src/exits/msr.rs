//! RDMSR/WRMSR (exit reasons 31, 32). Every MSR access exits (all-ones MSR
//! bitmap). An allow-list is emulated; anything else injects #GP(0), as a
//! CPU does for an MSR it does not have.

use crate::mm::HostMemory;
use crate::vcpu::{Action, Stop};
use crate::vcpu::{Hw, Vcpu};
use crate::vmx::controls::VmEntryControls;
use crate::vmx::fields::{Vmcs32, Vmcs64, VmcsNatural};
use crate::x86::msr;
use crate::x86::{EFER_LMA, EFER_LME, EFER_NXE, EFER_SCE};

use crate::x86::is_canonical as canonical;
use crate::x86::msr::{IA32_APIC_BASE, IA32_TSC};
const APIC_BASE_DEFAULT: u64 = 0xfee0_0000 | (1 << 11);
const APIC_BSP: u64 = 1 << 8;

/// MSRs the guest may use that the host never does and VM exits do not
/// switch: they go straight to the hardware of this vCPU's own core.
const PASS_THROUGH: [u32; 6] = [
    msr::IA32_STAR,
    msr::IA32_LSTAR,
    msr::IA32_CSTAR,
    msr::IA32_FMASK,
    msr::IA32_KERNEL_GS_BASE,
    msr::IA32_TSC_AUX,
];

fn guest_efer<H: Hw, M: HostMemory>(v: &Vcpu<H, M>) -> Result<u64, Stop> {
    Ok(v.vmcs.read64(Vmcs64::GuestIa32Efer)?)
}

pub fn rdmsr<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    let msr = v.regs.rcx as u32;
    let value = match msr {
        msr::IA32_EFER if loads_efer(v) => guest_efer(v)?,
        msr::IA32_PAT => v.vmcs.read64(Vmcs64::GuestIa32Pat)?,
        msr::IA32_FS_BASE => v.vmcs.read_nat(VmcsNatural::GuestFsBase)?,
        msr::IA32_GS_BASE => v.vmcs.read_nat(VmcsNatural::GuestGsBase)?,
        msr::IA32_SYSENTER_CS => v.vmcs.read32(Vmcs32::GuestIa32SysenterCs)?.into(),
        msr::IA32_SYSENTER_ESP => v.vmcs.read_nat(VmcsNatural::GuestIa32SysenterEsp)?,
        msr::IA32_SYSENTER_EIP => v.vmcs.read_nat(VmcsNatural::GuestIa32SysenterEip)?,
        IA32_TSC => v.vmcs.rdtsc(),
        IA32_APIC_BASE => APIC_BASE_DEFAULT | if v.id == 0 { APIC_BSP } else { 0 },
        m if PASS_THROUGH.contains(&m) => v.vmcs.read_msr(m),
        _ => return v.inject_gp(),
    };
    v.regs.rax = value & 0xffff_ffff;
    v.regs.rdx = value >> 32;
    v.skip_instruction()?;
    Ok(Action::Resume)
}

fn loads_efer<H: Hw, M: HostMemory>(v: &Vcpu<H, M>) -> bool {
    v.vm.controls.entry & VmEntryControls::LOAD_EFER.bits() != 0
}

pub fn wrmsr<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    let msr = v.regs.rcx as u32;
    let value = (v.regs.rdx << 32) | (v.regs.rax & 0xffff_ffff);
    match msr {
        msr::IA32_EFER if loads_efer(v) => {
            let old = guest_efer(v)?;
            // Only these bits exist for our guests; LMA is read-only.
            if value & !(EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE) != 0 {
                return v.inject_gp();
            }
            let paging = v.vmcs.read_nat(VmcsNatural::Cr0ReadShadow)? & crate::x86::CR0_PG != 0;
            // SDM: changing LME while paging is on is a #GP.
            if paging && (value ^ old) & EFER_LME != 0 {
                return v.inject_gp();
            }
            v.vmcs.write64(
                Vmcs64::GuestIa32Efer,
                (value & !EFER_LMA) | (old & EFER_LMA),
            )?;
        }
        msr::IA32_PAT => {
            // Each of the 8 entries must be a valid memory type (0,1,4,5,6,7).
            if (0..8).any(|i| matches!((value >> (8 * i)) & 0xff, 2 | 3 | 8..)) {
                return v.inject_gp();
            }
            v.vmcs.write64(Vmcs64::GuestIa32Pat, value)?;
        }
        msr::IA32_FS_BASE
        | msr::IA32_GS_BASE
        | msr::IA32_KERNEL_GS_BASE
        | msr::IA32_LSTAR
        | msr::IA32_CSTAR
            if !canonical(value) =>
        {
            return v.inject_gp();
        }
        msr::IA32_FS_BASE => v.vmcs.write_nat(VmcsNatural::GuestFsBase, value)?,
        msr::IA32_GS_BASE => v.vmcs.write_nat(VmcsNatural::GuestGsBase, value)?,
        msr::IA32_SYSENTER_CS => v.vmcs.write32(Vmcs32::GuestIa32SysenterCs, value as u32)?,
        msr::IA32_SYSENTER_ESP => v.vmcs.write_nat(VmcsNatural::GuestIa32SysenterEsp, value)?,
        msr::IA32_SYSENTER_EIP => v.vmcs.write_nat(VmcsNatural::GuestIa32SysenterEip, value)?,
        msr::IA32_TSC_AUX if value >> 32 != 0 => return v.inject_gp(),
        // The host never uses these MSRs (no SYSCALL, no SWAPGS, no RDTSCP)
        // and VM exits do not depend on them.
        m if PASS_THROUGH.contains(&m) => v.vmcs.write_msr(m, value),
        _ => return v.inject_gp(),
    }
    v.skip_instruction()?;
    Ok(Action::Resume)
}
