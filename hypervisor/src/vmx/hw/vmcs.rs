//! The VMCS of the running core: VMREAD/VMWRITE, loading, and writing the
//! control, host-state and guest-state areas (SDM Vol. 3C, chapter 25
//! "Virtual Machine Control Structures"; the checks they must pass are in
//! 27.2 and 27.3 "Checks on ... VM Entry").

use crate::vmx::caps::VmxCaps;
use crate::vmx::controls::{Controls, VmEntryControls, VmExitControls};
use crate::vmx::fields::{Vmcs16, Vmcs32, Vmcs64, VmcsAccess, VmcsError, VmcsNatural};
use crate::x86::state::GuestState;
use x86_64::instructions::tables::{sgdt, sidt};
use x86_64::registers::control::{Cr0, Cr3, Cr4};
use x86_64::registers::model_specific::{Efer, FsBase, GsBase};

/// VMREAD/VMWRITE on the current VMCS of this core.
pub struct CurrentVmcs;

impl VmcsAccess for CurrentVmcs {
    fn read_raw(&self, encoding: u32) -> Result<u64, VmcsError> {
        // SAFETY: VMREAD only reads the current VMCS; failure is reported in
        // RFLAGS, which the x86 crate turns into an error.
        unsafe { x86::bits64::vmx::vmread(encoding) }.map_err(|e| fail(e, encoding))
    }
    fn write_raw(&mut self, encoding: u32, value: u64) -> Result<(), VmcsError> {
        // SAFETY: as above; the VMCS is ours and not in use by another core.
        unsafe { x86::bits64::vmx::vmwrite(encoding, value) }.map_err(|e| fail(e, encoding))
    }
}

fn fail(e: x86::vmx::VmFail, encoding: u32) -> VmcsError {
    match e {
        x86::vmx::VmFail::VmFailInvalid => VmcsError::FailInvalid { encoding },
        x86::vmx::VmFail::VmFailValid => VmcsError::FailValid {
            encoding,
            // SAFETY: after VMfailValid a current VMCS exists to read from.
            error: unsafe { x86::bits64::vmx::vmread(Vmcs32::VmInstructionError as u32) }
                .unwrap_or(0) as u32,
        },
    }
}

/// Makes the VMCS at `phys` (a zeroed 4 KiB frame, first word reachable at
/// `revision_word`) clear and current (SDM 25.11.3 "Initializing a VMCS").
pub fn load(caps: &VmxCaps, phys: u64, revision_word: &mut u32) -> Result<(), &'static str> {
    *revision_word = caps.basic.revision_id();
    // SAFETY: the frame is a VMCS region we own, 4 KiB-aligned, with the
    // revision identifier written; we are in VMX root operation.
    unsafe {
        x86::bits64::vmx::vmclear(phys).map_err(|_| "VMCLEAR failed")?;
        x86::bits64::vmx::vmptrld(phys).map_err(|_| "VMPTRLD failed")?;
    }
    Ok(())
}

/// INVEPT descriptor types (SDM 31.3, "INVEPT").
const INVEPT_SINGLE_CONTEXT: u64 = 1;
const INVEPT_ALL_CONTEXT: u64 = 2;

/// Invalidates guest-physical mappings derived from `eptp` on this core.
/// Falls back to all-context when single-context is not supported.
const INVVPID_SINGLE_CONTEXT: u64 = 1;
const INVVPID_ALL_CONTEXT: u64 = 2;

/// INVVPID: drops the linear and combined mappings of `vpid` (single
/// context), or of every VPID but the host's (all contexts).
pub fn invvpid(vpid: u16, single_context: bool) {
    let descriptor: [u64; 2] = [u64::from(vpid), 0];
    let kind = if single_context {
        INVVPID_SINGLE_CONTEXT
    } else {
        INVVPID_ALL_CONTEXT
    };
    // SAFETY: VMX is on (INVVPID is only reached from an exit handler); the
    // descriptor is a valid 128-bit operand that lives across the call, and
    // the type is one the CPU reported (vm.invvpid_single) or all-context,
    // which VPID's enabling required.
    unsafe {
        core::arch::asm!("invvpid {}, [{}]", in(reg) kind, in(reg) &descriptor, options(nostack));
    }
}

pub fn invept(eptp: u64, single_context: bool) {
    let descriptor: [u64; 2] = [eptp, 0];
    let kind = if single_context {
        INVEPT_SINGLE_CONTEXT
    } else {
        INVEPT_ALL_CONTEXT
    };
    // SAFETY: INVEPT only drops cached translations; the descriptor lives on
    // the stack for the instruction's duration; the type is one the CPU
    // reports as supported (checked by the caller through EPT_VPID_CAP).
    unsafe {
        core::arch::asm!("invept {}, [{}]", in(reg) kind, in(reg) &descriptor, options(nostack));
    }
}

/// What a vCPU's VMCS needs beyond the guest state.
pub struct VmcsConfig {
    pub controls: Controls,
    pub eptp: u64,
    pub msr_bitmap: u64,
    pub io_bitmap_a: u64,
    pub io_bitmap_b: u64,
    pub vpid: u16,
    pub cpu: usize,
    /// The guest's TSC minus the host's ("use TSC offsetting").
    pub tsc_offset: u64,
}

/// Writes controls and host state for this core.
pub fn write_controls_and_host(
    v: &mut impl VmcsAccess,
    caps: &VmxCaps,
    c: &VmcsConfig,
) -> Result<(), VmcsError> {
    let ctl = &c.controls;
    v.write32(Vmcs32::PinBasedControls, ctl.pin)?;
    v.write32(Vmcs32::PrimaryProcBasedControls, ctl.proc)?;
    if caps.proc2.is_some() {
        v.write32(Vmcs32::SecondaryProcBasedControls, ctl.proc2)?;
    }
    v.write32(Vmcs32::VmExitControls, ctl.exit)?;
    v.write32(Vmcs32::VmEntryControls, ctl.entry)?;
    v.write32(Vmcs32::ExceptionBitmap, 0)?;
    v.write32(Vmcs32::PageFaultErrorCodeMask, 0)?;
    v.write32(Vmcs32::PageFaultErrorCodeMatch, 0)?;
    v.write32(Vmcs32::Cr3TargetCount, 0)?;
    v.write32(Vmcs32::VmExitMsrStoreCount, 0)?;
    v.write32(Vmcs32::VmExitMsrLoadCount, 0)?;
    v.write32(Vmcs32::VmEntryMsrLoadCount, 0)?;
    v.write32(Vmcs32::VmEntryInterruptionInfo, 0)?;
    v.write64(Vmcs64::Eptp, c.eptp)?;
    v.write64(Vmcs64::MsrBitmap, c.msr_bitmap)?;
    v.write64(Vmcs64::IoBitmapA, c.io_bitmap_a)?;
    v.write64(Vmcs64::IoBitmapB, c.io_bitmap_b)?;
    v.write64(Vmcs64::VmcsLinkPointer, u64::MAX)?;
    v.write64(Vmcs64::TscOffset, c.tsc_offset)?;
    if c.controls
        .secondary()
        .contains(crate::vmx::controls::SecondaryProcBased::ENABLE_VPID)
    {
        v.write16(Vmcs16::Vpid, c.vpid)?;
    }

    // Host state (SDM 27.2.3): this core's registers as they are now. RSP and
    // RIP are written by `vmx_enter` right before each entry.
    let sel = crate::arch::gdt::selectors(c.cpu);
    v.write_nat(VmcsNatural::HostCr0, Cr0::read_raw())?;
    v.write_nat(
        VmcsNatural::HostCr3,
        Cr3::read_raw().0.start_address().as_u64(),
    )?;
    v.write_nat(VmcsNatural::HostCr4, Cr4::read_raw())?;
    v.write16(Vmcs16::HostCsSelector, sel.code.0)?;
    v.write16(Vmcs16::HostSsSelector, sel.data.0)?;
    v.write16(Vmcs16::HostDsSelector, sel.data.0)?;
    v.write16(Vmcs16::HostEsSelector, sel.data.0)?;
    v.write16(Vmcs16::HostFsSelector, 0)?;
    v.write16(Vmcs16::HostGsSelector, 0)?;
    v.write16(Vmcs16::HostTrSelector, sel.tss.0)?;
    v.write_nat(VmcsNatural::HostFsBase, FsBase::read().as_u64())?;
    v.write_nat(VmcsNatural::HostGsBase, GsBase::read().as_u64())?;
    v.write_nat(VmcsNatural::HostTrBase, crate::arch::gdt::tss_base(c.cpu))?;
    v.write_nat(VmcsNatural::HostGdtrBase, sgdt().base.as_u64())?;
    v.write_nat(VmcsNatural::HostIdtrBase, sidt().base.as_u64())?;
    v.write32(Vmcs32::HostIa32SysenterCs, 0)?;
    v.write_nat(VmcsNatural::HostIa32SysenterEsp, 0)?;
    v.write_nat(VmcsNatural::HostIa32SysenterEip, 0)?;
    if ctl.exit & VmExitControls::LOAD_EFER.bits() != 0 {
        v.write64(Vmcs64::HostIa32Efer, Efer::read_raw())?;
    }
    if ctl.exit & VmExitControls::LOAD_PAT.bits() != 0 {
        // SAFETY: IA32_PAT exists on every CPU with VMX; reading it has no
        // side effects.
        let pat = unsafe {
            x86_64::registers::model_specific::Msr::new(crate::x86::msr::IA32_PAT).read()
        };
        v.write64(Vmcs64::HostIa32Pat, pat)?;
    }
    Ok(())
}

/// Writes the guest-state area from `s`, adding the CR0/CR4 bits VMX fixes
/// (hidden from the guest by the guest/host masks and read shadows), and
/// sets the "IA-32e mode guest" entry control to match EFER.LMA.
pub fn write_guest_state(
    v: &mut impl VmcsAccess,
    caps: &VmxCaps,
    ctl: &Controls,
    s: &GuestState,
) -> Result<(), VmcsError> {
    let unrestricted = ctl
        .secondary()
        .contains(crate::vmx::controls::SecondaryProcBased::UNRESTRICTED_GUEST);
    // The guest owns every CR0/CR4 bit except those VMX fixes: a write that
    // would change one of those exits (SDM 26.3 "Changes to ... CR0 and CR4").
    // The host owns every CR0 bit but TS and all of CR4 (`vcpu::mode`);
    // that includes the fixed bits.
    v.write_nat(
        VmcsNatural::Cr0GuestHostMask,
        crate::vmx::controls::CR0_HOST_OWNED,
    )?;
    v.write_nat(
        VmcsNatural::Cr4GuestHostMask,
        crate::vmx::controls::CR4_HOST_OWNED,
    )?;
    v.write_nat(VmcsNatural::Cr0ReadShadow, s.cr0)?;
    v.write_nat(VmcsNatural::Cr4ReadShadow, s.cr4)?;
    v.write_nat(
        VmcsNatural::GuestCr0,
        caps.apply_guest_cr0(s.cr0, unrestricted),
    )?;
    v.write_nat(VmcsNatural::GuestCr4, caps.apply_cr4(s.cr4))?;
    v.write_nat(VmcsNatural::GuestCr3, s.cr3)?;

    let mut entry = ctl.entry & !VmEntryControls::IA32E_MODE_GUEST.bits();
    if s.ia32e() {
        entry |= VmEntryControls::IA32E_MODE_GUEST.bits();
    }
    v.write32(Vmcs32::VmEntryControls, entry)?;
    if ctl.entry & VmEntryControls::LOAD_EFER.bits() != 0 {
        v.write64(Vmcs64::GuestIa32Efer, s.efer)?;
    }
    // Loaded on entry only with the "load IA32_PAT" control; otherwise the
    // guest runs with the host's PAT and this field only backs RDMSR.
    v.write64(Vmcs64::GuestIa32Pat, s.pat)?;
    v.write64(Vmcs64::GuestIa32Debugctl, 0)?;

    macro_rules! seg {
        ($s:expr, $sel:ident, $base:ident, $limit:ident, $ar:ident) => {
            v.write16(Vmcs16::$sel, $s.selector)?;
            v.write_nat(VmcsNatural::$base, $s.base)?;
            v.write32(Vmcs32::$limit, $s.limit)?;
            v.write32(Vmcs32::$ar, $s.access)?;
        };
    }
    seg!(
        s.cs,
        GuestCsSelector,
        GuestCsBase,
        GuestCsLimit,
        GuestCsAccessRights
    );
    seg!(
        s.ds,
        GuestDsSelector,
        GuestDsBase,
        GuestDsLimit,
        GuestDsAccessRights
    );
    seg!(
        s.es,
        GuestEsSelector,
        GuestEsBase,
        GuestEsLimit,
        GuestEsAccessRights
    );
    seg!(
        s.ss,
        GuestSsSelector,
        GuestSsBase,
        GuestSsLimit,
        GuestSsAccessRights
    );
    seg!(
        s.fs,
        GuestFsSelector,
        GuestFsBase,
        GuestFsLimit,
        GuestFsAccessRights
    );
    seg!(
        s.gs,
        GuestGsSelector,
        GuestGsBase,
        GuestGsLimit,
        GuestGsAccessRights
    );
    seg!(
        s.tr,
        GuestTrSelector,
        GuestTrBase,
        GuestTrLimit,
        GuestTrAccessRights
    );
    seg!(
        s.ldtr,
        GuestLdtrSelector,
        GuestLdtrBase,
        GuestLdtrLimit,
        GuestLdtrAccessRights
    );
    v.write_nat(VmcsNatural::GuestGdtrBase, s.gdtr.base)?;
    v.write32(Vmcs32::GuestGdtrLimit, s.gdtr.limit)?;
    v.write_nat(VmcsNatural::GuestIdtrBase, s.idtr.base)?;
    v.write32(Vmcs32::GuestIdtrLimit, s.idtr.limit)?;

    v.write_nat(VmcsNatural::GuestRip, s.rip)?;
    v.write_nat(VmcsNatural::GuestRsp, s.rsp)?;
    v.write_nat(VmcsNatural::GuestRflags, s.rflags)?;
    v.write_nat(VmcsNatural::GuestDr7, 0x400)?;
    v.write_nat(VmcsNatural::GuestPendingDebugExceptions, 0)?;
    v.write32(Vmcs32::GuestInterruptibilityState, 0)?;
    v.write32(Vmcs32::GuestActivityState, 0)?;
    v.write32(Vmcs32::GuestIa32SysenterCs, 0)?;
    v.write_nat(VmcsNatural::GuestIa32SysenterEsp, 0)?;
    v.write_nat(VmcsNatural::GuestIa32SysenterEip, 0)?;
    Ok(())
}
