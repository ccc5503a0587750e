//! Entering and leaving VMX operation on the running core.
//! SDM Vol. 3C, 24.6 "Discovering Support for VMX" and 24.7 "Enabling and
//! Entering VMX Operation".

use crate::vmx::caps::{FeatureControl, FeatureControlAction, VmxCaps};
use crate::x86::msr::IA32_FEATURE_CONTROL;
use crate::x86::CR4_VMXE;
use core::fmt;
use x86_64::registers::control::{Cr0, Cr4, Cr4Flags};
use x86_64::registers::model_specific::Msr;

#[derive(Debug)]
pub enum VmxError {
    /// CPUID.1:ECX.VMX is 0.
    NotAvailable {
        vendor: [u8; 12],
        family_model: u32,
    },
    /// IA32_FEATURE_CONTROL is locked with VMX outside SMX off.
    DisabledByFirmware {
        feature_control: u64,
    },
    /// CR4.VMXE may not be set (IA32_VMX_CR4_FIXED1).
    Cr4VmxeNotAllowed,
    OutOfMemory,
    /// VMXON failed (RFLAGS.CF or ZF set).
    VmxonFailed,
}

impl fmt::Display for VmxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmxError::NotAvailable { vendor, family_model } => write!(
                f,
                "VMX is not available on this CPU: CPUID.1:ECX.VMX[bit 5] = 0 (vendor {}, signature {:#x})",
                core::str::from_utf8(vendor).unwrap_or("?"),
                family_model
            ),
            VmxError::DisabledByFirmware { feature_control } => write!(
                f,
                "VMX is disabled by the firmware: IA32_FEATURE_CONTROL = {feature_control:#x} is locked \
                 with VMX outside SMX off; enable Intel VT-x in the firmware setup"
            ),
            VmxError::Cr4VmxeNotAllowed => f.write_str("CR4.VMXE is fixed to 0 (IA32_VMX_CR4_FIXED1)"),
            VmxError::OutOfMemory => f.write_str("no frame for the VMXON region"),
            VmxError::VmxonFailed => f.write_str("VMXON failed"),
        }
    }
}

pub fn rdmsr(msr: u32) -> u64 {
    // SAFETY: callers only read architectural MSRs whose presence they checked
    // (the VMX capability MSRs exist once CPUID reports VMX).
    unsafe { Msr::new(msr).read() }
}

/// Checks CPUID for VMX. Never touches CR4: setting CR4.VMXE where CPUID says
/// no hangs some emulators (QEMU TCG).
pub fn detect() -> Result<(), VmxError> {
    let (l0, l1) = (crate::arch::cpuid(0, 0), crate::arch::cpuid(1, 0));
    if l1[2] & (1 << 5) != 0 {
        return Ok(());
    }
    let mut vendor = [0u8; 12];
    vendor[..4].copy_from_slice(&l0[1].to_le_bytes());
    vendor[4..8].copy_from_slice(&l0[3].to_le_bytes());
    vendor[8..].copy_from_slice(&l0[2].to_le_bytes());
    Err(VmxError::NotAvailable {
        vendor,
        family_model: l1[0],
    })
}

/// Reads the capability MSRs (after `detect`).
pub fn read_caps() -> VmxCaps {
    VmxCaps::read(rdmsr)
}

/// Turns VMX on for the running core: IA32_FEATURE_CONTROL, the CR0/CR4 fixed
/// bits, then VMXON with the VMXON region: a 4 KiB frame, given by its
/// physical address and its first word's writable mapping.
pub fn enable(caps: &VmxCaps, vmxon_phys: u64, vmxon_word: &mut u32) -> Result<(), VmxError> {
    let mut fc = Msr::new(IA32_FEATURE_CONTROL);
    // SAFETY: IA32_FEATURE_CONTROL exists on CPUs with VMX (SDM 24.7).
    let value = unsafe { fc.read() };
    match FeatureControl::action(value) {
        FeatureControlAction::AlreadyEnabled => {}
        // SAFETY: writing the unlocked MSR to enable VMX and lock it is the
        // documented procedure; a locked MSR is never written.
        FeatureControlAction::WriteAndLock(v) => unsafe { fc.write(v) },
        FeatureControlAction::DisabledByFirmware => {
            return Err(VmxError::DisabledByFirmware {
                feature_control: value,
            })
        }
    }

    // SDM 24.8 "Restrictions on VMX Operation" / A.7, A.8: CR0 and CR4 bits
    // fixed to 1 must be set, bits fixed to 0 must be clear.
    let cr4_vmxe = CR4_VMXE;
    if caps.cr4_fixed1 & cr4_vmxe == 0 {
        return Err(VmxError::Cr4VmxeNotAllowed);
    }
    // Also turn caching on (CD = NW = 0) if the firmware left it off, as the
    // Bochs BIOS does: VM entry never loads CR0.CD/NW (SDM 27.3.2.1), so the
    // guest would inherit the host's.
    const CR0_CD_NW: u64 = crate::x86::CR0_CD | crate::x86::CR0_NW;
    let cr0 = caps.apply_cr0(Cr0::read_raw() & !CR0_CD_NW);
    let cr4 = caps.apply_cr4(Cr4::read_raw() | cr4_vmxe);
    // SAFETY: the new values only add bits the CPU requires for VMX operation
    // (paging and protection stay on: they are fixed-1 in VMX).
    unsafe {
        Cr0::write_raw(cr0);
        Cr4::write_raw(cr4);
    }

    *vmxon_word = caps.basic.revision_id();
    // SAFETY: VMX is enabled in CR4 and IA32_FEATURE_CONTROL, and the region is
    // a 4 KiB-aligned frame starting with the revision identifier (SDM 25.11.5).
    unsafe { x86::bits64::vmx::vmxon(vmxon_phys) }.map_err(|_| VmxError::VmxonFailed)
}

/// Leaves VMX operation and clears CR4.VMXE.
pub fn disable() {
    // SAFETY: called in VMX root operation after `enable` succeeded; no VMCS is
    // in use afterwards.
    unsafe {
        let _ = x86::bits64::vmx::vmxoff();
        Cr4::write_raw(Cr4::read_raw() & !Cr4Flags::VIRTUAL_MACHINE_EXTENSIONS.bits());
    }
}
