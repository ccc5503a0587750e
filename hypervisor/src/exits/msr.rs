//! RDMSR/WRMSR (exit reasons 31, 32). Every MSR access exits (all-ones MSR
//! bitmap). An allow-list is emulated; anything else injects #GP(0), as a
//! CPU does for an MSR it does not have.

use crate::mm::HostMemory;
use crate::vcpu::{Action, Stop};
use crate::vcpu::{Hw, Vcpu};
use crate::vmx::controls::VmEntryControls;
use crate::vmx::fields::{Vmcs32, Vmcs64, VmcsNatural};
use crate::x86::control;
use crate::x86::msr;

use crate::x86::is_canonical as canonical;
use crate::x86::msr::{IA32_APIC_BASE, IA32_TSC};

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
        msr::IA32_DEBUGCTL => v.vmcs.read64(Vmcs64::GuestIa32Debugctl)?,
        // The guest's TSC is the host's plus this vCPU's offset, as RDTSC
        // reads it with "use TSC offsetting" (SDM 26.3 / 27.6.5).
        IA32_TSC => v
            .vmcs
            .rdtsc()
            .wrapping_add(v.vmcs.read64(Vmcs64::TscOffset)?),
        IA32_APIC_BASE => v.apic_base.value(),
        msr::IA32_MISC_ENABLE => MISC_ENABLE,
        // No microcode is loaded; the platform ID is 0.
        msr::IA32_BIOS_SIGN_ID | msr::IA32_PLATFORM_ID => 0,
        m if PASS_THROUGH.contains(&m) => v.vmcs.read_msr(m),
        _ => return v.inject_gp(),
    };
    v.regs.rax = value & 0xffff_ffff;
    v.regs.rdx = value >> 32;
    v.skip_instruction()?;
    Ok(Action::Resume)
}

/// IA32_MISC_ENABLE as the guest reads it: fast strings on, branch-trace
/// and PEBS unavailable (no debug store is offered), CPUID not limited,
/// XD not disabled. Only fast strings (bit 0) may be toggled; the write is
/// accepted and the value kept (it is a performance hint).
const MISC_ENABLE: u64 = 1 | (1 << 11) | (1 << 12);

fn loads_efer<H: Hw, M: HostMemory>(v: &Vcpu<H, M>) -> bool {
    v.vm.controls.entry & VmEntryControls::LOAD_EFER.bits() != 0
}

pub fn wrmsr<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    let msr = v.regs.rcx as u32;
    let value = (v.regs.rdx << 32) | (v.regs.rax & 0xffff_ffff);
    match msr {
        msr::IA32_EFER if loads_efer(v) => {
            let m = v.mode_regs()?;
            let allowed = control::efer_allowed(v.vm.cpuid.answer(v.id, 0x8000_0001, 0)[3]);
            match control::write_efer(&m, value, allowed) {
                Ok(efer) => v.vmcs.write64(Vmcs64::GuestIa32Efer, efer)?,
                Err(_) => return v.inject_gp(),
            }
        }
        msr::IA32_PAT => {
            // Each of the 8 entries must be a valid memory type (0,1,4,5,6,7).
            if (0..8).any(|i| matches!((value >> (8 * i)) & 0xff, 2 | 3 | 8..)) {
                return v.inject_gp();
            }
            v.vmcs.write64(Vmcs64::GuestIa32Pat, value)?;
        }
        // Addresses the CPU checks for canonical form (SDM Vol. 4 table 2-2;
        // a VM entry would fail on a non-canonical one in the VMCS, 27.3.1.1).
        msr::IA32_FS_BASE
        | msr::IA32_GS_BASE
        | msr::IA32_KERNEL_GS_BASE
        | msr::IA32_LSTAR
        | msr::IA32_CSTAR
        | msr::IA32_SYSENTER_ESP
        | msr::IA32_SYSENTER_EIP
            if !canonical(value) =>
        {
            return v.inject_gp();
        }
        msr::IA32_FS_BASE => v.vmcs.write_nat(VmcsNatural::GuestFsBase, value)?,
        msr::IA32_GS_BASE => v.vmcs.write_nat(VmcsNatural::GuestGsBase, value)?,
        msr::IA32_SYSENTER_CS => v.vmcs.write32(Vmcs32::GuestIa32SysenterCs, value as u32)?,
        msr::IA32_SYSENTER_ESP => v.vmcs.write_nat(VmcsNatural::GuestIa32SysenterEsp, value)?,
        msr::IA32_SYSENTER_EIP => v.vmcs.write_nat(VmcsNatural::GuestIa32SysenterEip, value)?,
        // LBR (bit 0) and BTF (bit 1) only; the rest needs features not offered.
        msr::IA32_DEBUGCTL if value & !3 != 0 => return v.inject_gp(),
        msr::IA32_DEBUGCTL => v.vmcs.write64(Vmcs64::GuestIa32Debugctl, value)?,
        IA32_APIC_BASE => {
            let x2apic_offered = v.vm.cpuid.answer(v.id, 1, 0)[2] & (1 << 21) != 0;
            let was_enabled = v.apic_base.enabled();
            let maxphy = v.maxphyaddr() as u8;
            if v.apic_base.write(value, maxphy, x2apic_offered).is_err() {
                return v.inject_gp();
            }
            // A global disable puts the APIC in its power-up state
            // (SDM 11.4.3); the page stops decoding (`exits::mmio`).
            if was_enabled && !v.apic_base.enabled() {
                v.vm.lapics[v.id as usize].lock().reset();
            }
            v.vm.irq.set_apic_enabled(v.id, v.apic_base.enabled());
        }
        // Writing the TSC sets this vCPU's offset (SDM 18.17).
        IA32_TSC => {
            let offset = value.wrapping_sub(v.vmcs.rdtsc());
            v.vmcs.write64(Vmcs64::TscOffset, offset)?;
        }
        msr::IA32_MISC_ENABLE if (value ^ MISC_ENABLE) & !1 != 0 => return v.inject_gp(),
        msr::IA32_MISC_ENABLE => {}
        // Writing 0 before CPUID to read the microcode revision back.
        msr::IA32_BIOS_SIGN_ID => {}
        msr::IA32_TSC_AUX | msr::IA32_FMASK if value >> 32 != 0 => return v.inject_gp(),
        // The host never uses these MSRs (no SYSCALL, no SWAPGS, no RDTSCP)
        // and VM exits do not depend on them.
        m if PASS_THROUGH.contains(&m) => v.vmcs.write_msr(m, value),
        _ => return v.inject_gp(),
    }
    v.skip_instruction()?;
    Ok(Action::Resume)
}
