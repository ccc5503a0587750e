//! The VMCS control words (SDM Vol. 3C 25.6 "VM-Execution Control Fields",
//! 25.7 and 25.8 for exit and entry controls) as bitflags, and their
//! derivation from the capability MSRs (`caps`): every word the hypervisor
//! writes is computed here, never hard-coded, because CPUs (and Bochs CPU
//! models) differ. `ControlRequest::hypervisor()` is the hypervisor's policy.

use super::caps::{CapError, ControlWord, EptVpidCap, VmxCaps};
use core::fmt;

bitflags::bitflags! {
    /// Pin-based VM-execution controls (SDM 25.6.1, table 25-5).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct PinBased: u32 {
        const EXTERNAL_INTERRUPT_EXITING = 1 << 0;
        const NMI_EXITING = 1 << 3;
        const VIRTUAL_NMIS = 1 << 5;
        /// "Activate VMX-preemption timer".
        const PREEMPTION_TIMER = 1 << 6;
        /// "Process posted interrupts".
        const POSTED_INTERRUPTS = 1 << 7;
    }
}

bitflags::bitflags! {
    /// Primary processor-based VM-execution controls (SDM 25.6.2, table 25-6).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct PrimaryProcBased: u32 {
        const INTERRUPT_WINDOW_EXITING = 1 << 2;
        const USE_TSC_OFFSETTING = 1 << 3;
        const HLT_EXITING = 1 << 7;
        const INVLPG_EXITING = 1 << 9;
        /// MWAIT exiting.
        const MWAIT = 1 << 10;
        /// RDPMC exiting.
        const RDPMC = 1 << 11;
        /// RDTSC exiting.
        const RDTSC = 1 << 12;
        /// CR3-load exiting.
        const CR3_LOAD = 1 << 15;
        /// CR3-store exiting.
        const CR3_STORE = 1 << 16;
        /// CR8-load exiting.
        const CR8_LOAD = 1 << 19;
        /// CR8-store exiting.
        const CR8_STORE = 1 << 20;
        const USE_TPR_SHADOW = 1 << 21;
        /// NMI-window exiting.
        const NMI_WINDOW = 1 << 22;
        /// MOV-DR exiting.
        const MOV_DR = 1 << 23;
        /// Unconditional I/O exiting.
        const UNCONDITIONAL_IO = 1 << 24;
        const USE_IO_BITMAPS = 1 << 25;
        const MONITOR_TRAP_FLAG = 1 << 27;
        const USE_MSR_BITMAPS = 1 << 28;
        /// MONITOR exiting.
        const MONITOR = 1 << 29;
        /// PAUSE exiting.
        const PAUSE = 1 << 30;
        /// Activate secondary controls.
        const ACTIVATE_SECONDARY = 1 << 31;
    }
}

bitflags::bitflags! {
    /// Secondary processor-based VM-execution controls (SDM 25.6.2, table 25-7).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct SecondaryProcBased: u32 {
        const VIRTUALIZE_APIC_ACCESSES = 1 << 0;
        const ENABLE_EPT = 1 << 1;
        const DESCRIPTOR_TABLE_EXITING = 1 << 2;
        const ENABLE_RDTSCP = 1 << 3;
        const VIRTUALIZE_X2APIC = 1 << 4;
        const ENABLE_VPID = 1 << 5;
        const WBINVD_EXITING = 1 << 6;
        const UNRESTRICTED_GUEST = 1 << 7;
        const APIC_REGISTER_VIRTUALIZATION = 1 << 8;
        const VIRTUAL_INTERRUPT_DELIVERY = 1 << 9;
        const PAUSE_LOOP_EXITING = 1 << 10;
        const RDRAND_EXITING = 1 << 11;
        const ENABLE_INVPCID = 1 << 12;
        const ENABLE_VMFUNC = 1 << 13;
        const VMCS_SHADOWING = 1 << 14;
        const ENCLS_EXITING = 1 << 15;
        const RDSEED_EXITING = 1 << 16;
        /// Enable PML (page-modification logging).
        const ENABLE_PML = 1 << 17;
        /// EPT-violation #VE.
        const EPT_VIOLATION_VE = 1 << 18;
        const CONCEAL_VMX_FROM_PT = 1 << 19;
        /// Enable XSAVES/XRSTORS.
        const ENABLE_XSAVES = 1 << 20;
        /// Mode-based execute control for EPT.
        const MODE_BASED_EPT_EXEC = 1 << 22;
        /// Sub-page write permissions for EPT.
        const SUB_PAGE_WRITE_PERMISSIONS = 1 << 23;
        const PT_USES_GUEST_PHYSICAL = 1 << 24;
        const USE_TSC_SCALING = 1 << 25;
        const ENABLE_USER_WAIT_PAUSE = 1 << 26;
        const ENABLE_PCONFIG = 1 << 27;
        const ENABLE_ENCLV_EXITING = 1 << 28;
        const BUS_LOCK_DETECTION = 1 << 30;
        const INSTRUCTION_TIMEOUT = 1 << 31;
    }
}

bitflags::bitflags! {
    /// Primary VM-exit controls (SDM 25.7.1, table 25-13).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct VmExitControls: u32 {
        const SAVE_DEBUG_CONTROLS = 1 << 2;
        /// Host address-space size: the host is 64-bit after the exit.
        const HOST_ADDRESS_SPACE_SIZE = 1 << 9;
        const LOAD_PERF_GLOBAL_CTRL = 1 << 12;
        const ACK_INTERRUPT_ON_EXIT = 1 << 15;
        const SAVE_PAT = 1 << 18;
        const LOAD_PAT = 1 << 19;
        const SAVE_EFER = 1 << 20;
        const LOAD_EFER = 1 << 21;
        /// Save VMX-preemption timer value.
        const SAVE_PREEMPTION_TIMER = 1 << 22;
        const CLEAR_BNDCFGS = 1 << 23;
        const CONCEAL_VMX_FROM_PT = 1 << 24;
        const CLEAR_RTIT_CTL = 1 << 25;
        const CLEAR_LBR_CTL = 1 << 26;
        const CLEAR_UINV = 1 << 27;
        const LOAD_CET_STATE = 1 << 28;
        const LOAD_PKRS = 1 << 29;
        const SAVE_PERF_GLOBAL_CTRL = 1 << 30;
        const ACTIVATE_SECONDARY = 1 << 31;
    }
}

bitflags::bitflags! {
    /// VM-entry controls (SDM 25.8.1, table 25-15).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct VmEntryControls: u32 {
        const LOAD_DEBUG_CONTROLS = 1 << 2;
        /// IA-32e mode guest: the guest runs in long mode after entry.
        const IA32E_MODE_GUEST = 1 << 9;
        const ENTRY_TO_SMM = 1 << 10;
        const DEACTIVATE_DUAL_MONITOR = 1 << 11;
        const LOAD_PERF_GLOBAL_CTRL = 1 << 13;
        const LOAD_PAT = 1 << 14;
        const LOAD_EFER = 1 << 15;
        const LOAD_BNDCFGS = 1 << 16;
        const CONCEAL_VMX_FROM_PT = 1 << 17;
        const LOAD_RTIT_CTL = 1 << 18;
        const LOAD_UINV = 1 << 19;
        const LOAD_CET_STATE = 1 << 20;
        const LOAD_LBR_CTL = 1 << 21;
        const LOAD_PKRS = 1 << 22;
    }
}

// ---------------------------------------------------------------------------
// Deriving the control words.
// ---------------------------------------------------------------------------

/// What the hypervisor wants of one control word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WordRequest {
    /// Bits that must be 1, or the hypervisor cannot run.
    pub required: u32,
    /// Bits set only where the CPU allows.
    pub optional: u32,
    /// Alternatives in order of preference; the first whose bits are all
    /// allowed-1 is required. Empty: no alternatives.
    pub one_of: &'static [u32],
}

impl WordRequest {
    /// Nothing wanted.
    pub const NONE: WordRequest = WordRequest {
        required: 0,
        optional: 0,
        one_of: &[],
    };

    const fn wants_any(&self) -> bool {
        self.required != 0 || self.optional != 0 || !self.one_of.is_empty()
    }
}

/// The controls the hypervisor wants, per word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlRequest {
    /// Pin-based controls.
    pub pin: WordRequest,
    /// Primary processor-based controls. "Activate secondary controls" is
    /// added as required (or optional) when `proc2` requires (or wants) anything.
    pub proc: WordRequest,
    /// Secondary processor-based controls.
    pub proc2: WordRequest,
    /// VM-exit controls.
    pub exit: WordRequest,
    /// VM-entry controls.
    pub entry: WordRequest,
    /// IA32_VMX_EPT_VPID_CAP bits required when EPT ends up enabled.
    pub ept_required: EptVpidCap,
}

const IO_EXITING_CHOICES: &[u32] = &[
    PrimaryProcBased::USE_IO_BITMAPS.bits(),
    PrimaryProcBased::UNCONDITIONAL_IO.bits(),
];

/// The CR0 guest/host mask: the host owns every CR0 bit but TS, so that
/// paging, protection and caching changes exit (`vcpu::mode`, SDM 25.6.6).
pub const CR0_HOST_OWNED: u64 = !crate::x86::CR0_TS;
/// The CR4 guest/host mask: the host owns all of CR4.
pub const CR4_HOST_OWNED: u64 = !0;

impl ControlRequest {
    /// The controls our hypervisor needs to run a 64-bit guest with EPT that may
    /// later drop to real or protected mode (unrestricted guest):
    /// - pin: external-interrupt exiting; optional VMX-preemption timer;
    /// - proc: HLT, CR8-load/store, MONITOR, MWAIT and RDPMC exiting, TSC
    ///   offsetting, MSR bitmaps, I/O bitmaps (else unconditional I/O
    ///   exiting), secondary controls;
    /// - proc2: EPT and unrestricted guest; optional RDTSCP, INVPCID and
    ///   VPID (XSAVES stays off: it #UDs, as CPUID does not offer it);
    /// - exit: 64-bit host; optional save/load EFER, acknowledge interrupt on exit;
    /// - entry: IA-32e mode guest; optional load EFER;
    /// - EPT: 4-level walk, write-back paging structures, INVEPT.
    pub const fn default_for_guest() -> Self {
        ControlRequest {
            pin: WordRequest {
                required: PinBased::EXTERNAL_INTERRUPT_EXITING.bits(),
                // The watchdog (`exits::watchdog`); off in a run without one.
                optional: PinBased::PREEMPTION_TIMER.bits(),
                one_of: &[],
            },
            proc: WordRequest {
                required: PrimaryProcBased::HLT_EXITING
                    .union(PrimaryProcBased::USE_MSR_BITMAPS)
                    .union(PrimaryProcBased::ACTIVATE_SECONDARY)
                    // The guest's TSC is offset per vCPU; CR8 is the vCPU's
                    // own TPR; MONITOR/MWAIT/RDPMC never reach the host core.
                    .union(PrimaryProcBased::USE_TSC_OFFSETTING)
                    .union(PrimaryProcBased::CR8_LOAD)
                    .union(PrimaryProcBased::CR8_STORE)
                    .union(PrimaryProcBased::MONITOR)
                    .union(PrimaryProcBased::MWAIT)
                    .union(PrimaryProcBased::RDPMC)
                    .bits(),
                optional: 0,
                one_of: IO_EXITING_CHOICES,
            },
            proc2: WordRequest {
                required: SecondaryProcBased::ENABLE_EPT
                    .union(SecondaryProcBased::UNRESTRICTED_GUEST)
                    .bits(),
                optional: SecondaryProcBased::ENABLE_RDTSCP
                    .union(SecondaryProcBased::ENABLE_INVPCID)
                    .union(SecondaryProcBased::ENABLE_VPID)
                    .bits(),
                one_of: &[],
            },
            exit: WordRequest {
                required: VmExitControls::HOST_ADDRESS_SPACE_SIZE.bits(),
                optional: VmExitControls::SAVE_EFER
                    .union(VmExitControls::LOAD_EFER)
                    .union(VmExitControls::ACK_INTERRUPT_ON_EXIT)
                    .bits(),
                one_of: &[],
            },
            entry: WordRequest {
                required: VmEntryControls::IA32E_MODE_GUEST.bits(),
                optional: VmEntryControls::LOAD_EFER.bits(),
                one_of: &[],
            },
            ept_required: EptVpidCap::PAGE_WALK_4
                .union(EptVpidCap::MEMTYPE_WB)
                .union(EptVpidCap::INVEPT),
        }
    }
}

/// The control words to write to the VMCS (SDM 25.6–25.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Controls {
    /// Pin-based VM-execution controls (VMCS 0x4000).
    pub pin: u32,
    /// Primary processor-based VM-execution controls (VMCS 0x4002).
    pub proc: u32,
    /// Secondary processor-based VM-execution controls (VMCS 0x401E); 0 when
    /// "activate secondary controls" is 0 (the CPU then treats them as 0).
    pub proc2: u32,
    /// VM-exit controls (VMCS 0x400C).
    pub exit: u32,
    /// VM-entry controls (VMCS 0x4012).
    pub entry: u32,
}

impl Controls {
    /// Secondary controls as flags.
    pub const fn secondary(&self) -> SecondaryProcBased {
        SecondaryProcBased::from_bits_retain(self.proc2)
    }
}

impl fmt::Display for Controls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  pin   {:#010x}: {}",
            self.pin,
            ControlWord::PinBased.names(self.pin)
        )?;
        writeln!(
            f,
            "  proc  {:#010x}: {}",
            self.proc,
            ControlWord::PrimaryProcBased.names(self.proc)
        )?;
        writeln!(
            f,
            "  proc2 {:#010x}: {}",
            self.proc2,
            ControlWord::SecondaryProcBased.names(self.proc2)
        )?;
        writeln!(
            f,
            "  exit  {:#010x}: {}",
            self.exit,
            ControlWord::VmExit.names(self.exit)
        )?;
        write!(
            f,
            "  entry {:#010x}: {}",
            self.entry,
            ControlWord::VmEntry.names(self.entry)
        )
    }
}

/// Derives the control words from the capability MSRs and a request (SDM A.3–A.5).
///
/// Every must-be-1 bit of each MSR is set, every must-be-0 bit cleared; a
/// required bit that is not allowed-1 fails with an error naming it. Also:
/// - "activate secondary controls" follows `want.proc2` (required if it
///   requires anything), and the secondary word is 0 when it ends up off;
/// - when EPT is on, `want.ept_required` must be in IA32_VMX_EPT_VPID_CAP;
/// - VPID is dropped when INVVPID with a single- or all-context type is
///   missing, since the hypervisor could not flush its translations.
pub fn derive_controls(caps: &VmxCaps, want: &ControlRequest) -> Result<Controls, CapError> {
    let pin = caps.pin.apply(&want.pin)?;

    let mut proc_req = want.proc;
    let activate = PrimaryProcBased::ACTIVATE_SECONDARY.bits();
    if want.proc2.required != 0 || !want.proc2.one_of.is_empty() {
        if caps.proc2.is_none() {
            let required = want.proc2.required | want.proc2.one_of.first().copied().unwrap_or(0);
            return Err(CapError::NoSecondaryControls { required });
        }
        proc_req.required |= activate;
    } else if want.proc2.wants_any() {
        proc_req.optional |= activate;
    }
    let mut proc = caps.proc.apply(&proc_req)?;

    let mut proc2 = match caps.proc2 {
        Some(p2) if proc & activate != 0 => p2.apply(&want.proc2)?,
        _ => 0,
    };

    let ept = SecondaryProcBased::ENABLE_EPT.bits();
    let vpid = SecondaryProcBased::ENABLE_VPID.bits();
    let ept_caps = caps.ept_caps();
    if proc2 & ept != 0 && !ept_caps.contains(want.ept_required) {
        return Err(CapError::EptCapability {
            missing: (want.ept_required - ept_caps).bits(),
        });
    }
    if proc2 & vpid != 0 && want.proc2.required & vpid == 0 {
        let flush = EptVpidCap::SINGLE_CONTEXT | EptVpidCap::ALL_CONTEXT;
        if !ept_caps.contains(EptVpidCap::INVVPID) || !ept_caps.intersects(flush) {
            proc2 = caps.proc2.map_or(0, |p2| p2.adjust(proc2 & !vpid));
        }
    }
    // Secondary controls wanted only optionally and none granted: leave them off.
    if proc2 == 0 && want.proc.required & activate == 0 && caps.proc.allowed0 & activate == 0 {
        proc &= !activate;
    }

    let exit = caps.exit.apply(&want.exit)?;
    let entry = caps.entry.apply(&want.entry)?;
    Ok(Controls {
        pin,
        proc,
        proc2,
        exit,
        entry,
    })
}

/// The hypervisor's control policy: [`ControlRequest::default_for_guest`]
/// plus what the rest of the hypervisor relies on, derived for `caps`.
///
/// - Guest EFER lives in the VMCS ("load IA32_EFER" on entry): CR0.PG and
///   EFER writes are emulated there.
/// - "Acknowledge interrupt on exit": the kick IPI of `vm::requests` is taken
///   on exit and ended with an EOI.
/// - IA32_PAT is switched on entry and exit where the CPU can, in both
///   directions or neither: switched one way only, the guest's PAT would
///   stay in force in the hypervisor after an exit.
pub fn derive_for_hypervisor(caps: &VmxCaps) -> Result<Controls, CapError> {
    let mut request = ControlRequest::default_for_guest();
    request.entry.required |= VmEntryControls::LOAD_EFER.bits();
    request.exit.required |= VmExitControls::ACK_INTERRUPT_ON_EXIT.bits();
    request.entry.optional |= VmEntryControls::LOAD_PAT.bits();
    request.exit.optional |= VmExitControls::LOAD_PAT.bits();
    let mut controls = derive_controls(caps, &request)?;
    let (pat_in, pat_out) = (
        VmEntryControls::LOAD_PAT.bits(),
        VmExitControls::LOAD_PAT.bits(),
    );
    if (controls.entry & pat_in != 0) != (controls.exit & pat_out != 0) {
        controls.entry = caps.entry.adjust(controls.entry & !pat_in);
        controls.exit = caps.exit.adjust(controls.exit & !pat_out);
    }
    Ok(controls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypervisor_policy_loads_efer_acks_interrupts_and_switches_pat_both_ways() {
        let (caps, _) = crate::vmx::caps::skylake_for_tests();
        let c = derive_for_hypervisor(&caps).unwrap();
        assert_ne!(c.entry & VmEntryControls::LOAD_EFER.bits(), 0);
        assert_ne!(c.exit & VmExitControls::ACK_INTERRUPT_ON_EXIT.bits(), 0);
        let pat_in = c.entry & VmEntryControls::LOAD_PAT.bits() != 0;
        let pat_out = c.exit & VmExitControls::LOAD_PAT.bits() != 0;
        assert!(pat_in && pat_out, "Skylake switches PAT both ways");
        // A CPU that can load PAT on entry but not on exit: neither.
        let mut one_way = caps;
        one_way.exit.allowed1 &= !VmExitControls::LOAD_PAT.bits();
        let c = derive_for_hypervisor(&one_way).unwrap();
        assert_eq!(c.entry & VmEntryControls::LOAD_PAT.bits(), 0);
        assert_eq!(c.exit & VmExitControls::LOAD_PAT.bits(), 0);
    }
}
