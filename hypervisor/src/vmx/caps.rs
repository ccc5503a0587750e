//! VMX capability MSRs, decoded, and the VMCS control words derived from them.
//!
//! Intel SDM Vol. 3D, appendix A "VMX Capability Reporting Facility". Nothing
//! here touches the CPU: the arch code reads the MSRs and passes a reader
//! closure to [`VmxCaps::read`]. Every control word the hypervisor writes is
//! computed by [`derive_controls`] from these MSRs, never hard-coded, because
//! CPUs (and Bochs CPU models) differ.

use core::fmt;
use core::marker::PhantomData;

use bitflags::{Flag, Flags};

use super::controls::{
    PinBased, PrimaryProcBased, SecondaryProcBased, VmEntryControls, VmExitControls, WordRequest,
};
use crate::x86::msr::*;
use crate::x86::{CR0_PE, CR0_PG};

// ---------------------------------------------------------------------------
// Bit names.
// ---------------------------------------------------------------------------

bitflags::bitflags! {
    /// IA32_FEATURE_CONTROL bits used by VMXON (SDM 24.7; Vol. 4 table 2-2).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct FeatureControl: u64 {
        /// Lock bit: once set, writes fault until reset.
        const LOCK = 1 << 0;
        /// Enable VMX inside SMX operation.
        const VMX_IN_SMX = 1 << 1;
        /// Enable VMX outside SMX operation.
        const VMX_OUTSIDE_SMX = 1 << 2;
    }
}

/// What to do with IA32_FEATURE_CONTROL before VMXON (SDM 24.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureControlAction {
    /// Locked with VMX outside SMX enabled: nothing to do (the Bochs BIOS does this).
    AlreadyEnabled,
    /// Unlocked: write this value (VMX outside SMX + lock) to the MSR, then VMXON.
    WriteAndLock(u64),
    /// Locked with VMX outside SMX disabled: VMXON would #GP; VMX is off in firmware.
    DisabledByFirmware,
}

impl FeatureControl {
    /// Decide from the current IA32_FEATURE_CONTROL value (SDM 24.7: VMXON #GPs if
    /// the lock bit is 0, or if it is 1 and "enable VMX outside SMX" is 0).
    pub fn action(current: u64) -> FeatureControlAction {
        let fc = FeatureControl::from_bits_retain(current);
        if fc.contains(FeatureControl::LOCK) {
            if fc.contains(FeatureControl::VMX_OUTSIDE_SMX) {
                FeatureControlAction::AlreadyEnabled
            } else {
                FeatureControlAction::DisabledByFirmware
            }
        } else {
            FeatureControlAction::WriteAndLock(
                current | (FeatureControl::LOCK | FeatureControl::VMX_OUTSIDE_SMX).bits(),
            )
        }
    }
}

bitflags::bitflags! {
    /// IA32_VMX_EPT_VPID_CAP (SDM A.10).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct EptVpidCap: u64 {
        /// EPT entries may be execute-only (bits 2:0 = 100b).
        const EXECUTE_ONLY = 1 << 0;
        /// Page-walk length of 4.
        const PAGE_WALK_4 = 1 << 6;
        /// Page-walk length of 5.
        const PAGE_WALK_5 = 1 << 7;
        /// EPTP may use memory type UC for paging structures.
        const MEMTYPE_UC = 1 << 8;
        /// EPTP may use memory type WB for paging structures.
        const MEMTYPE_WB = 1 << 14;
        /// 2-MByte pages (EPT PDE bit 7).
        const PDE_2MB = 1 << 16;
        /// 1-GByte pages (EPT PDPTE bit 7).
        const PDPTE_1GB = 1 << 17;
        /// INVEPT is supported.
        const INVEPT = 1 << 20;
        /// Accessed and dirty flags for EPT.
        const ACCESS_DIRTY = 1 << 21;
        /// Advanced VM-exit information for EPT violations.
        const ADVANCED_EXIT_INFO = 1 << 22;
        /// Supervisor shadow-stack control.
        const SUPERVISOR_SHADOW_STACK = 1 << 23;
        /// Single-context INVEPT type.
        const INVEPT_SINGLE_CONTEXT = 1 << 25;
        /// All-context INVEPT type.
        const INVEPT_ALL_CONTEXT = 1 << 26;
        /// INVVPID is supported.
        const INVVPID = 1 << 32;
        /// Individual-address INVVPID type.
        const INVVPID_INDIVIDUAL_ADDR = 1 << 40;
        /// Single-context INVVPID type.
        const SINGLE_CONTEXT = 1 << 41;
        /// All-context INVVPID type.
        const ALL_CONTEXT = 1 << 42;
        /// Single-context-retaining-globals INVVPID type.
        const SINGLE_CONTEXT_RETAINING_GLOBALS = 1 << 43;
    }
}

/// Writes the names of the set bits of a bitflags type; bits without a name
/// print as `bitN`. Works without allocation, for the boot log and errors.
pub struct FlagNames<F> {
    bits: u64,
    _flags: PhantomData<F>,
}

impl<F> FlagNames<F> {
    /// Names of `bits` as flags of type `F`.
    pub const fn new(bits: u64) -> Self {
        FlagNames {
            bits,
            _flags: PhantomData,
        }
    }
}

impl<F> fmt::Display for FlagNames<F>
where
    F: Flags + 'static,
    F::Bits: Into<u64>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.bits == 0 {
            return f.write_str("(none)");
        }
        let mut rest = self.bits;
        let mut sep = "";
        let flags: &'static [Flag<F>] = F::FLAGS;
        for flag in flags {
            let b: u64 = flag.value().bits().into();
            if b != 0 && self.bits & b == b {
                write!(f, "{sep}{}", flag.name())?;
                sep = " ";
                rest &= !b;
            }
        }
        while rest != 0 {
            let bit = rest.trailing_zeros();
            write!(f, "{sep}bit{bit}")?;
            sep = " ";
            rest &= rest - 1;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// IA32_VMX_BASIC and IA32_VMX_MISC.
// ---------------------------------------------------------------------------

/// IA32_VMX_BASIC (SDM A.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmxBasic(pub u64);

impl VmxBasic {
    /// VMCS revision identifier, bits 30:0; written to the first dword of the
    /// VMXON region and of every VMCS.
    pub const fn revision_id(self) -> u32 {
        (self.0 & 0x7FFF_FFFF) as u32
    }
    /// Bytes to allocate for the VMXON region and each VMCS, bits 44:32 (at most 4096).
    pub const fn vmcs_size(self) -> u32 {
        ((self.0 >> 32) & 0x1FFF) as u32
    }
    /// Bit 48: physical addresses of VMXON region, VMCS and structures they
    /// reference are limited to 32 bits (only on CPUs without Intel 64).
    pub const fn phys_addr_32bit(self) -> bool {
        self.0 & (1 << 48) != 0
    }
    /// Bit 49: dual-monitor treatment of SMIs and SMM is supported.
    pub const fn dual_monitor(self) -> bool {
        self.0 & (1 << 49) != 0
    }
    /// Bits 53:50: memory type for accessing the VMCS and referenced structures
    /// (0 = UC, 6 = WB; SDM table A-1).
    pub const fn memory_type(self) -> u8 {
        ((self.0 >> 50) & 0xF) as u8
    }
    /// Bit 54: INS/OUTS exits report the VM-exit instruction-information field.
    pub const fn ins_outs_info(self) -> bool {
        self.0 & (1 << 54) != 0
    }
    /// Bit 55: default-1 controls may be 0; the IA32_VMX_TRUE_*_CTLS MSRs exist.
    pub const fn true_controls(self) -> bool {
        self.0 & (1 << 55) != 0
    }
    /// Bit 56: VM entry may deliver a hardware exception with or without an
    /// error code regardless of vector.
    pub const fn any_exception_error_code(self) -> bool {
        self.0 & (1 << 56) != 0
    }
}

/// Name of a memory type encoding (SDM table A-1 / 12-8).
pub const fn memory_type_name(t: u8) -> &'static str {
    match t {
        0 => "UC",
        1 => "WC",
        4 => "WT",
        5 => "WP",
        6 => "WB",
        _ => "reserved",
    }
}

/// IA32_VMX_MISC (SDM A.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmxMisc(pub u64);

impl VmxMisc {
    /// Bits 4:0: the preemption timer counts down by 1 each time TSC bit X changes.
    pub const fn preemption_timer_rate(self) -> u8 {
        (self.0 & 0x1F) as u8
    }
    /// Bit 5: VM exits store EFER.LMA into the "IA-32e mode guest" entry control
    /// (set on every CPU that supports unrestricted guest).
    pub const fn stores_lma(self) -> bool {
        self.0 & (1 << 5) != 0
    }
    /// Bit 6: activity state 1 (HLT) is supported.
    pub const fn activity_hlt(self) -> bool {
        self.0 & (1 << 6) != 0
    }
    /// Bit 7: activity state 2 (shutdown) is supported.
    pub const fn activity_shutdown(self) -> bool {
        self.0 & (1 << 7) != 0
    }
    /// Bit 8: activity state 3 (wait-for-SIPI) is supported.
    pub const fn activity_wait_for_sipi(self) -> bool {
        self.0 & (1 << 8) != 0
    }
    /// Bit 14: Intel PT may be used in VMX operation.
    pub const fn pt_in_vmx(self) -> bool {
        self.0 & (1 << 14) != 0
    }
    /// Bits 24:16: number of CR3-target values supported.
    pub const fn cr3_target_count(self) -> u32 {
        ((self.0 >> 16) & 0x1FF) as u32
    }
    /// Bits 27:25 = N: recommended maximum number of MSRs in each MSR list is 512 * (N + 1).
    pub const fn max_msr_list(self) -> u32 {
        512 * ((((self.0 >> 25) & 0x7) as u32) + 1)
    }
    /// Bit 29: VMWRITE may write any supported field, including VM-exit information.
    pub const fn vmwrite_any_field(self) -> bool {
        self.0 & (1 << 29) != 0
    }
    /// Bit 30: VM entry may inject software interrupts/exceptions with instruction length 0.
    pub const fn inject_zero_length(self) -> bool {
        self.0 & (1 << 30) != 0
    }
    /// Bits 63:32: MSEG revision identifier.
    pub const fn mseg_revision(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

// ---------------------------------------------------------------------------
// Allowed settings of a control word (SDM A.3–A.5).
// ---------------------------------------------------------------------------

/// The five VMCS control words that capability MSRs constrain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlWord {
    /// Pin-based VM-execution controls (SDM A.3.1).
    PinBased,
    /// Primary processor-based VM-execution controls (SDM A.3.2).
    PrimaryProcBased,
    /// Secondary processor-based VM-execution controls (SDM A.3.3).
    SecondaryProcBased,
    /// VM-exit controls (SDM A.4).
    VmExit,
    /// VM-entry controls (SDM A.5).
    VmEntry,
}

impl ControlWord {
    /// Human-readable name.
    pub const fn name(self) -> &'static str {
        match self {
            ControlWord::PinBased => "pin-based controls",
            ControlWord::PrimaryProcBased => "primary processor-based controls",
            ControlWord::SecondaryProcBased => "secondary processor-based controls",
            ControlWord::VmExit => "VM-exit controls",
            ControlWord::VmEntry => "VM-entry controls",
        }
    }

    /// Displays `bits` by the SDM names of this word's controls.
    pub const fn names(self, bits: u32) -> WordBits {
        WordBits { word: self, bits }
    }
}

/// Bits of one control word, displayed by name; see [`ControlWord::names`].
#[derive(Debug, Clone, Copy)]
pub struct WordBits {
    word: ControlWord,
    bits: u32,
}

impl fmt::Display for WordBits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.bits as u64;
        match self.word {
            ControlWord::PinBased => fmt::Display::fmt(&FlagNames::<PinBased>::new(b), f),
            ControlWord::PrimaryProcBased => {
                fmt::Display::fmt(&FlagNames::<PrimaryProcBased>::new(b), f)
            }
            ControlWord::SecondaryProcBased => {
                fmt::Display::fmt(&FlagNames::<SecondaryProcBased>::new(b), f)
            }
            ControlWord::VmExit => fmt::Display::fmt(&FlagNames::<VmExitControls>::new(b), f),
            ControlWord::VmEntry => fmt::Display::fmt(&FlagNames::<VmEntryControls>::new(b), f),
        }
    }
}

/// Allowed settings of one control word, from a capability MSR (SDM A.3):
/// bits 31:0 are the allowed 0-settings (a 1 there means the control must be 1),
/// bits 63:32 the allowed 1-settings (a 0 there means the control must be 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowedBits {
    /// Which control word this describes (for names in reports and errors).
    pub word: ControlWord,
    /// Bits that must be 1 (low half of the MSR).
    pub allowed0: u32,
    /// Bits that may be 1 (high half of the MSR).
    pub allowed1: u32,
}

impl AllowedBits {
    /// Splits a capability MSR value into its low and high halves (SDM A.3.1).
    pub const fn from_msr(word: ControlWord, msr: u64) -> Self {
        AllowedBits {
            word,
            allowed0: msr as u32,
            allowed1: (msr >> 32) as u32,
        }
    }

    /// Forces the must-be-1 bits on and the must-be-0 bits off (SDM A.3.1:
    /// "(wanted | allowed0) & allowed1").
    pub const fn adjust(&self, wanted: u32) -> u32 {
        (wanted | self.allowed0) & self.allowed1
    }

    /// Whether every bit of `bits` may be 1.
    pub const fn allows(&self, bits: u32) -> bool {
        bits & !self.allowed1 == 0
    }

    /// Optional controls: may be 0 or 1.
    pub const fn optional(&self) -> u32 {
        self.allowed1 & !self.allowed0
    }

    /// `required` bits must all be allowed-1, else the error names the ones
    /// that are not; `wanted_optional` bits are set where allowed. Must-be-1
    /// bits are always set (SDM A.3).
    pub fn require(&self, required: u32, wanted_optional: u32) -> Result<u32, CapError> {
        let missing = required & !self.allowed1;
        if missing != 0 {
            return Err(CapError::Unsupported {
                word: self.word,
                missing,
                allowed1: self.allowed1,
            });
        }
        Ok(self.adjust(required | (wanted_optional & self.allowed1)))
    }

    /// Applies a [`WordRequest`]: required bits, then the first fully allowed
    /// alternative of `one_of`, then optional bits.
    pub fn apply(&self, req: &WordRequest) -> Result<u32, CapError> {
        let mut required = req.required;
        if !req.one_of.is_empty() {
            match req.one_of.iter().find(|&&alt| self.allows(alt)) {
                Some(&alt) => required |= alt,
                None => {
                    return Err(CapError::NoAlternative {
                        word: self.word,
                        alternatives: req.one_of,
                        allowed1: self.allowed1,
                    })
                }
            }
        }
        self.require(required, req.optional)
    }
}

impl fmt::Display for AllowedBits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "allowed0 {:#010x} allowed1 {:#010x}; optional: {}",
            self.allowed0,
            self.allowed1,
            self.word.names(self.optional())
        )
    }
}

/// Why the wanted controls cannot be used on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapError {
    /// Required controls that the capability MSR does not allow to be 1 (SDM A.3–A.5).
    Unsupported {
        /// The control word.
        word: ControlWord,
        /// The required bits whose allowed-1 setting is 0.
        missing: u32,
        /// The MSR's allowed-1 settings.
        allowed1: u32,
    },
    /// None of several alternative settings is allowed.
    NoAlternative {
        /// The control word.
        word: ControlWord,
        /// The alternatives, in order of preference.
        alternatives: &'static [u32],
        /// The MSR's allowed-1 settings.
        allowed1: u32,
    },
    /// Secondary controls are required but the CPU has none
    /// (bit 63 of IA32_VMX_PROCBASED_CTLS is 0; SDM A.3.2).
    NoSecondaryControls {
        /// The required secondary controls.
        required: u32,
    },
    /// EPT is enabled but IA32_VMX_EPT_VPID_CAP lacks features the hypervisor needs (SDM A.10).
    EptCapability {
        /// The missing capability bits.
        missing: u64,
    },
}

impl fmt::Display for CapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            CapError::Unsupported {
                word,
                missing,
                allowed1,
            } => write!(
                f,
                "{}: required {} not supported by this CPU (allowed-1 settings {allowed1:#010x})",
                word.name(),
                word.names(missing)
            ),
            CapError::NoAlternative {
                word,
                alternatives,
                allowed1,
            } => {
                write!(f, "{}: none of ", word.name())?;
                for (i, alt) in alternatives.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" / ")?;
                    }
                    write!(f, "{{{}}}", word.names(*alt))?;
                }
                write!(
                    f,
                    " is supported by this CPU (allowed-1 settings {allowed1:#010x})"
                )
            }
            CapError::NoSecondaryControls { required } => write!(
                f,
                "secondary processor-based controls required ({}) but this CPU has none \
                 (IA32_VMX_PROCBASED_CTLS bit 63 is 0)",
                ControlWord::SecondaryProcBased.names(required)
            ),
            CapError::EptCapability { missing } => write!(
                f,
                "IA32_VMX_EPT_VPID_CAP lacks {}",
                FlagNames::<EptVpidCap>::new(missing)
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// All capabilities.
// ---------------------------------------------------------------------------

/// The VMX capability MSRs of one CPU, decoded (SDM appendix A).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmxCaps {
    /// IA32_VMX_BASIC.
    pub basic: VmxBasic,
    /// Pin-based controls (from the TRUE MSR when [`Self::true_controls`]).
    pub pin: AllowedBits,
    /// Primary processor-based controls (from the TRUE MSR when [`Self::true_controls`]).
    pub proc: AllowedBits,
    /// Secondary processor-based controls; `None` if the CPU has none.
    pub proc2: Option<AllowedBits>,
    /// VM-exit controls (from the TRUE MSR when [`Self::true_controls`]).
    pub exit: AllowedBits,
    /// VM-entry controls (from the TRUE MSR when [`Self::true_controls`]).
    pub entry: AllowedBits,
    /// IA32_VMX_MISC.
    pub misc: VmxMisc,
    /// IA32_VMX_CR0_FIXED0: CR0 bits that must be 1 in VMX operation.
    pub cr0_fixed0: u64,
    /// IA32_VMX_CR0_FIXED1: CR0 bits that may be 1 in VMX operation.
    pub cr0_fixed1: u64,
    /// IA32_VMX_CR4_FIXED0: CR4 bits that must be 1 in VMX operation.
    pub cr4_fixed0: u64,
    /// IA32_VMX_CR4_FIXED1: CR4 bits that may be 1 in VMX operation.
    pub cr4_fixed1: u64,
    /// IA32_VMX_VMCS_ENUM (SDM A.9): bits 9:1 are the highest field index.
    pub vmcs_enum: u64,
    /// IA32_VMX_EPT_VPID_CAP; `None` if secondary controls allow neither EPT nor VPID.
    pub ept_vpid: Option<EptVpidCap>,
    /// IA32_VMX_BASIC bit 55: the control words come from the TRUE MSRs.
    pub true_controls: bool,
}

impl VmxCaps {
    /// Reads the capability MSRs through `rdmsr`, touching only MSRs that exist
    /// on this CPU (a missing MSR would #GP):
    /// - IA32_VMX_TRUE_*_CTLS only if IA32_VMX_BASIC bit 55 is 1, and then they
    ///   replace the plain MSRs for pin/proc/exit/entry (SDM A.2);
    /// - IA32_VMX_PROCBASED_CTLS2 only if bit 63 of IA32_VMX_PROCBASED_CTLS is 1 (SDM A.3.3);
    /// - IA32_VMX_EPT_VPID_CAP only if secondary controls allow EPT or VPID (SDM A.10).
    ///
    /// The caller must have checked CPUID.1:ECX.VMX\[bit 5\] first: without VMX
    /// none of these MSRs exist.
    pub fn read(mut rdmsr: impl FnMut(u32) -> u64) -> Self {
        let basic = VmxBasic(rdmsr(IA32_VMX_BASIC));
        let true_controls = basic.true_controls();
        let proc_plain = rdmsr(IA32_VMX_PROCBASED_CTLS);
        let (pin, proc, exit, entry) = if true_controls {
            (
                rdmsr(IA32_VMX_TRUE_PINBASED_CTLS),
                rdmsr(IA32_VMX_TRUE_PROCBASED_CTLS),
                rdmsr(IA32_VMX_TRUE_EXIT_CTLS),
                rdmsr(IA32_VMX_TRUE_ENTRY_CTLS),
            )
        } else {
            (
                rdmsr(IA32_VMX_PINBASED_CTLS),
                proc_plain,
                rdmsr(IA32_VMX_EXIT_CTLS),
                rdmsr(IA32_VMX_ENTRY_CTLS),
            )
        };
        let misc = VmxMisc(rdmsr(IA32_VMX_MISC));
        let cr0_fixed0 = rdmsr(IA32_VMX_CR0_FIXED0);
        let cr0_fixed1 = rdmsr(IA32_VMX_CR0_FIXED1);
        let cr4_fixed0 = rdmsr(IA32_VMX_CR4_FIXED0);
        let cr4_fixed1 = rdmsr(IA32_VMX_CR4_FIXED1);
        let vmcs_enum = rdmsr(IA32_VMX_VMCS_ENUM);

        // SDM A.3.3: bit 63 of IA32_VMX_PROCBASED_CTLS is the allowed-1
        // setting of "activate secondary controls".
        let proc2 = (proc_plain & (1 << 63) != 0).then(|| {
            AllowedBits::from_msr(
                ControlWord::SecondaryProcBased,
                rdmsr(IA32_VMX_PROCBASED_CTLS2),
            )
        });
        // SDM A.10: exists if bit 33 (EPT) or bit 37 (VPID) of PROCBASED_CTLS2 is 1.
        let ept_or_vpid = (SecondaryProcBased::ENABLE_EPT | SecondaryProcBased::ENABLE_VPID).bits();
        let ept_vpid = proc2
            .filter(|p2| p2.allowed1 & ept_or_vpid != 0)
            .map(|_| EptVpidCap::from_bits_retain(rdmsr(IA32_VMX_EPT_VPID_CAP)));

        VmxCaps {
            basic,
            pin: AllowedBits::from_msr(ControlWord::PinBased, pin),
            proc: AllowedBits::from_msr(ControlWord::PrimaryProcBased, proc),
            proc2,
            exit: AllowedBits::from_msr(ControlWord::VmExit, exit),
            entry: AllowedBits::from_msr(ControlWord::VmEntry, entry),
            misc,
            cr0_fixed0,
            cr0_fixed1,
            cr4_fixed0,
            cr4_fixed1,
            vmcs_enum,
            ept_vpid,
            true_controls,
        }
    }

    /// Allowed-1 secondary controls (empty if the CPU has none).
    pub fn proc2_allowed1(&self) -> SecondaryProcBased {
        SecondaryProcBased::from_bits_retain(self.proc2.map_or(0, |p| p.allowed1))
    }

    /// Whether "enable EPT" may be 1.
    pub fn ept_supported(&self) -> bool {
        self.proc2_allowed1()
            .contains(SecondaryProcBased::ENABLE_EPT)
    }

    /// Whether "enable VPID" may be 1.
    pub fn vpid_supported(&self) -> bool {
        self.proc2_allowed1()
            .contains(SecondaryProcBased::ENABLE_VPID)
    }

    /// Whether "unrestricted guest" may be 1 (guest may run with CR0.PE or PG clear).
    pub fn unrestricted_guest(&self) -> bool {
        self.proc2_allowed1()
            .contains(SecondaryProcBased::UNRESTRICTED_GUEST)
    }

    /// EPT/VPID capabilities (empty if the MSR does not exist).
    pub fn ept_caps(&self) -> EptVpidCap {
        self.ept_vpid.unwrap_or(EptVpidCap::empty())
    }

    /// CR0 in VMX operation: (bits that must be 1, bits that may be 1) (SDM A.7).
    pub const fn cr0_fixed(&self) -> (u64, u64) {
        (self.cr0_fixed0, self.cr0_fixed1)
    }

    /// CR4 in VMX operation: (bits that must be 1, bits that may be 1) (SDM A.8).
    pub const fn cr4_fixed(&self) -> (u64, u64) {
        (self.cr4_fixed0, self.cr4_fixed1)
    }

    /// A CR0 value made valid for VMX operation (host CR0 before VMXON, host CR0 field).
    pub const fn apply_cr0(&self, value: u64) -> u64 {
        (value | self.cr0_fixed0) & self.cr0_fixed1
    }

    /// A CR4 value made valid for VMX operation (sets CR4.VMXE among others).
    pub const fn apply_cr4(&self, value: u64) -> u64 {
        (value | self.cr4_fixed0) & self.cr4_fixed1
    }

    /// CR0 fixed bits for the guest: with "unrestricted guest" = 1, PE and PG
    /// need not be 1 despite IA32_VMX_CR0_FIXED0 (SDM 27.3.1.1; A.7).
    pub const fn guest_cr0_fixed(&self, unrestricted: bool) -> (u64, u64) {
        let must = if unrestricted {
            self.cr0_fixed0 & !(CR0_PE | CR0_PG)
        } else {
            self.cr0_fixed0
        };
        (must, self.cr0_fixed1)
    }

    /// A guest CR0 value made valid for VM entry; see [`Self::guest_cr0_fixed`].
    pub const fn apply_guest_cr0(&self, value: u64, unrestricted: bool) -> u64 {
        let (must, may) = self.guest_cr0_fixed(unrestricted);
        (value | must) & may
    }

    /// Highest VMCS field index this CPU uses (IA32_VMX_VMCS_ENUM bits 9:1).
    pub const fn max_vmcs_index(&self) -> u32 {
        ((self.vmcs_enum >> 1) & 0x1FF) as u32
    }
}

impl fmt::Display for VmxCaps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yn = |b: bool| if b { "yes" } else { "no" };
        let b = self.basic;
        writeln!(f, "VMX capabilities (Intel SDM Vol. 3D appendix A)")?;
        writeln!(
            f,
            "  IA32_VMX_BASIC {:#018x}: revision {:#x}, VMCS {} bytes, memory type {} ({}), \
             32-bit addresses {}, dual-monitor {}, INS/OUTS info {}, true controls {}",
            b.0,
            b.revision_id(),
            b.vmcs_size(),
            memory_type_name(b.memory_type()),
            b.memory_type(),
            yn(b.phys_addr_32bit()),
            yn(b.dual_monitor()),
            yn(b.ins_outs_info()),
            yn(self.true_controls)
        )?;
        writeln!(f, "  pin-based:     {}", self.pin)?;
        writeln!(f, "  primary proc:  {}", self.proc)?;
        match &self.proc2 {
            Some(p2) => writeln!(f, "  secondary:     {p2}")?,
            None => writeln!(f, "  secondary:     not available")?,
        }
        writeln!(f, "  VM-exit:       {}", self.exit)?;
        writeln!(f, "  VM-entry:      {}", self.entry)?;
        let m = self.misc;
        write!(
            f,
            "  IA32_VMX_MISC {:#018x}: preemption timer = TSC >> {}, stores LMA {}, activity states:",
            m.0,
            m.preemption_timer_rate(),
            yn(m.stores_lma()),
        )?;
        if m.activity_hlt() {
            f.write_str(" HLT")?;
        }
        if m.activity_shutdown() {
            f.write_str(" shutdown")?;
        }
        if m.activity_wait_for_sipi() {
            f.write_str(" wait-for-SIPI")?;
        }
        writeln!(
            f,
            ", CR3 targets {}, max MSR list {}",
            m.cr3_target_count(),
            m.max_msr_list()
        )?;
        match self.ept_vpid {
            Some(c) => writeln!(
                f,
                "  EPT/VPID caps {:#018x}: {}",
                c.bits(),
                FlagNames::<EptVpidCap>::new(c.bits())
            )?,
            None => writeln!(f, "  EPT/VPID caps: not available")?,
        }
        writeln!(
            f,
            "  EPT {}, VPID {}, unrestricted guest {}",
            yn(self.ept_supported()),
            yn(self.vpid_supported()),
            yn(self.unrestricted_guest())
        )?;
        writeln!(
            f,
            "  CR0 fixed0 {:#018x} fixed1 {:#018x}",
            self.cr0_fixed0, self.cr0_fixed1
        )?;
        write!(
            f,
            "  CR4 fixed0 {:#018x} fixed1 {:#018x}",
            self.cr4_fixed0, self.cr4_fixed1
        )
    }
}

/// A Skylake server's capability MSRs and the controls derived for a guest,
/// for host tests elsewhere (exit handlers, the VM).
#[cfg(test)]
pub(crate) fn skylake_for_tests() -> (VmxCaps, super::controls::Controls) {
    tests::skylake()
}

#[cfg(test)]
mod tests {
    use super::super::controls::*;
    extern crate std;
    use super::*;
    use std::format;
    use std::string::String;
    use std::vec::Vec;

    /// A CPU as a list of (MSR, value); reading any other MSR panics, which is
    /// what a #GP would be on the real thing.
    struct Cpu(&'static [(u32, u64)]);

    impl Cpu {
        fn caps(&self) -> (VmxCaps, Vec<u32>) {
            let mut read = Vec::new();
            let caps = VmxCaps::read(|msr| {
                read.push(msr);
                match self.0.iter().find(|(i, _)| *i == msr) {
                    Some((_, v)) => *v,
                    None => panic!("rdmsr({msr:#x}) of an MSR this CPU does not have"),
                }
            });
            (caps, read)
        }
    }

    /// Skylake client (Core i7-6700 class), values as reported by real parts.
    const SKYLAKE: Cpu = Cpu(&[
        (IA32_VMX_BASIC, 0x00da_0400_0000_0004),
        (IA32_VMX_PINBASED_CTLS, 0x0000_007f_0000_0016),
        (IA32_VMX_PROCBASED_CTLS, 0xfff9_fffe_0401_e172),
        (IA32_VMX_EXIT_CTLS, 0x01ff_ffff_0003_6dff),
        (IA32_VMX_ENTRY_CTLS, 0x0003_ffff_0000_11ff),
        (IA32_VMX_MISC, 0x0000_0000_7004_c1e7),
        (IA32_VMX_CR0_FIXED0, 0x8000_0021),
        (IA32_VMX_CR0_FIXED1, 0xffff_ffff),
        (IA32_VMX_CR4_FIXED0, 0x2000),
        (IA32_VMX_CR4_FIXED1, 0x0037_27ff),
        (IA32_VMX_VMCS_ENUM, 0x2e),
        (IA32_VMX_PROCBASED_CTLS2, 0x005f_fcff_0000_0000),
        (IA32_VMX_EPT_VPID_CAP, 0x0000_0f01_0673_4141),
        (IA32_VMX_TRUE_PINBASED_CTLS, 0x0000_007f_0000_0016),
        (IA32_VMX_TRUE_PROCBASED_CTLS, 0xfff9_fffe_0400_6172),
        (IA32_VMX_TRUE_EXIT_CTLS, 0x01ff_ffff_0003_6dfb),
        (IA32_VMX_TRUE_ENTRY_CTLS, 0x0003_ffff_0000_11fb),
    ]);

    /// Haswell (Core i7-4770 class): no XSAVES, no PML, no A/D bits in EPT.
    const HASWELL: Cpu = Cpu(&[
        (IA32_VMX_BASIC, 0x00da_0400_0000_0012),
        (IA32_VMX_PINBASED_CTLS, 0x0000_007f_0000_0016),
        (IA32_VMX_PROCBASED_CTLS, 0xfff9_fffe_0401_e172),
        (IA32_VMX_EXIT_CTLS, 0x007f_ffff_0003_6dff),
        (IA32_VMX_ENTRY_CTLS, 0x0000_ffff_0000_11ff),
        (IA32_VMX_MISC, 0x0000_0000_0000_01e5 | (4 << 16)),
        (IA32_VMX_CR0_FIXED0, 0x8000_0021),
        (IA32_VMX_CR0_FIXED1, 0xffff_ffff),
        (IA32_VMX_CR4_FIXED0, 0x2000),
        (IA32_VMX_CR4_FIXED1, 0x0017_67ff),
        (IA32_VMX_VMCS_ENUM, 0x2a),
        (IA32_VMX_PROCBASED_CTLS2, 0x0000_37ff_0000_0000),
        (IA32_VMX_EPT_VPID_CAP, 0x0000_0f01_0611_4141),
        (IA32_VMX_TRUE_PINBASED_CTLS, 0x0000_007f_0000_0016),
        (IA32_VMX_TRUE_PROCBASED_CTLS, 0xfff9_fffe_0400_6172),
        (IA32_VMX_TRUE_EXIT_CTLS, 0x007f_ffff_0003_6dfb),
        (IA32_VMX_TRUE_ENTRY_CTLS, 0x0000_ffff_0000_11fb),
    ]);

    /// Bochs 2.7 style (bochs cpu/vmx.h formulas): 4 KiB VMCS, WB, INS/OUTS info,
    /// true controls, no dual-monitor; EPT 4-level, WB, 2M pages, INVEPT, VPID.
    const BOCHS: Cpu = Cpu(&[
        (IA32_VMX_BASIC, 0x00d8_1000_0000_0001),
        (IA32_VMX_PINBASED_CTLS, 0x0000_007f_0000_0016),
        (IA32_VMX_PROCBASED_CTLS, 0xfff9_fffe_0401_e172),
        (IA32_VMX_EXIT_CTLS, 0x407f_ffff_0003_6dff),
        (IA32_VMX_ENTRY_CTLS, 0x0000_ffff_0000_11ff),
        (IA32_VMX_MISC, 0x0004_01e0),
        (IA32_VMX_CR0_FIXED0, 0x8000_0021),
        (IA32_VMX_CR0_FIXED1, 0xffff_ffff),
        (IA32_VMX_CR4_FIXED0, 0x2000),
        (IA32_VMX_CR4_FIXED1, 0x0037_27ff),
        (IA32_VMX_VMCS_ENUM, 0x64),
        (IA32_VMX_PROCBASED_CTLS2, 0x0017_7eff_0000_0000),
        (IA32_VMX_EPT_VPID_CAP, 0x0000_0f01_0613_4141),
        (IA32_VMX_TRUE_PINBASED_CTLS, 0x0000_007f_0000_0016),
        (IA32_VMX_TRUE_PROCBASED_CTLS, 0xfff9_fffe_0400_6172),
        (IA32_VMX_TRUE_EXIT_CTLS, 0x407f_ffff_0003_6dfb),
        (IA32_VMX_TRUE_ENTRY_CTLS, 0x0000_ffff_0000_11fb),
    ]);

    /// Nehalem (Core i7-920 class): EPT and VPID but no unrestricted guest
    /// (that came with Westmere).
    const NEHALEM: Cpu = Cpu(&[
        (IA32_VMX_BASIC, 0x00da_0400_0000_000e),
        (IA32_VMX_PINBASED_CTLS, 0x0000_003f_0000_0016),
        (IA32_VMX_PROCBASED_CTLS, 0xfff9_fffe_0401_e172),
        (IA32_VMX_EXIT_CTLS, 0x003f_ffff_0003_6dff),
        (IA32_VMX_ENTRY_CTLS, 0x0000_ffff_0000_11ff),
        (IA32_VMX_MISC, 0x0000_0000_0004_00e5),
        (IA32_VMX_CR0_FIXED0, 0x8000_0021),
        (IA32_VMX_CR0_FIXED1, 0xffff_ffff),
        (IA32_VMX_CR4_FIXED0, 0x2000),
        (IA32_VMX_CR4_FIXED1, 0x0000_67ff),
        (IA32_VMX_VMCS_ENUM, 0x2c),
        (IA32_VMX_PROCBASED_CTLS2, 0x0000_006f_0000_0000),
        (IA32_VMX_EPT_VPID_CAP, 0x0000_0f01_0611_4141),
        (IA32_VMX_TRUE_PINBASED_CTLS, 0x0000_003f_0000_0016),
        (IA32_VMX_TRUE_PROCBASED_CTLS, 0xfff9_fffe_0400_6172),
        (IA32_VMX_TRUE_EXIT_CTLS, 0x003f_ffff_0003_6dfb),
        (IA32_VMX_TRUE_ENTRY_CTLS, 0x0000_ffff_0000_11fb),
    ]);

    /// Core 2 (Merom, 2006): first-generation VT-x. No true controls, no
    /// secondary controls, so no EPT, no VPID; MTF, PAUSE-loop etc. absent.
    /// It has no MSR 0x48B–0x490: reading one panics.
    const MEROM: Cpu = Cpu(&[
        (IA32_VMX_BASIC, 0x001a_0400_0000_000d),
        (IA32_VMX_PINBASED_CTLS, 0x0000_003f_0000_0016),
        (IA32_VMX_PROCBASED_CTLS, 0x77b9_fffe_0401_e172),
        (IA32_VMX_EXIT_CTLS, 0x0003_ffff_0003_6dff),
        (IA32_VMX_ENTRY_CTLS, 0x0000_3fff_0000_11ff),
        (IA32_VMX_MISC, 0x0000_0000_0004_0041),
        (IA32_VMX_CR0_FIXED0, 0x8000_0021),
        (IA32_VMX_CR0_FIXED1, 0xffff_ffff),
        (IA32_VMX_CR4_FIXED0, 0x2000),
        (IA32_VMX_CR4_FIXED1, 0x0000_27ff),
        (IA32_VMX_VMCS_ENUM, 0x2c),
    ]);

    pub(super) fn skylake() -> (VmxCaps, Controls) {
        (SKYLAKE.caps().0, derive(&SKYLAKE).unwrap())
    }

    fn derive(cpu: &Cpu) -> Result<Controls, CapError> {
        derive_controls(&cpu.caps().0, &ControlRequest::default_for_guest())
    }

    /// Every bit an adjusted word sets is allowed-1 and every must-be-1 bit is set.
    fn assert_valid(c: &Controls, caps: &VmxCaps) {
        for (v, a) in [
            (c.pin, caps.pin),
            (c.proc, caps.proc),
            (c.exit, caps.exit),
            (c.entry, caps.entry),
        ] {
            assert_eq!(v & a.allowed0, a.allowed0, "{:?} must-be-1 bits", a.word);
            assert_eq!(v & !a.allowed1, 0, "{:?} must-be-0 bits", a.word);
        }
        if let Some(p2) = caps.proc2 {
            assert_eq!(c.proc2 & !p2.allowed1, 0);
        }
    }

    #[test]
    fn allowed_bits_adjust_and_require() {
        let a = AllowedBits::from_msr(ControlWord::PinBased, 0x0000_007f_0000_0016);
        assert_eq!(a.allowed0, 0x16);
        assert_eq!(a.allowed1, 0x7f);
        // SDM A.3.1: (wanted | allowed0) & allowed1.
        assert_eq!(a.adjust(0), 0x16);
        assert_eq!(a.adjust(0x81), 0x17); // bit 7 (posted interrupts) not allowed
        assert_eq!(a.require(0x1, 0x80), Ok(0x17));
        let err = a.require(0x81, 0).unwrap_err();
        assert_eq!(
            err,
            CapError::Unsupported {
                word: ControlWord::PinBased,
                missing: 0x80,
                allowed1: 0x7f
            }
        );
        let msg = format!("{err}");
        assert!(msg.contains("POSTED_INTERRUPTS"), "{msg}");
        assert!(msg.contains("pin-based"), "{msg}");
    }

    #[test]
    fn flag_names_show_unnamed_bits() {
        let s = format!("{}", FlagNames::<PinBased>::new(0x0000_0049));
        assert_eq!(s, "EXTERNAL_INTERRUPT_EXITING NMI_EXITING PREEMPTION_TIMER");
        let s = format!("{}", FlagNames::<PinBased>::new(0x16));
        assert_eq!(s, "bit1 bit2 bit4");
        assert_eq!(format!("{}", FlagNames::<PinBased>::new(0)), "(none)");
    }

    #[test]
    fn basic_and_misc_fields() {
        let b = VmxBasic(0x00da_0400_0000_0004);
        assert_eq!(b.revision_id(), 4);
        assert_eq!(b.vmcs_size(), 0x400);
        assert!(!b.phys_addr_32bit());
        assert!(b.dual_monitor());
        assert_eq!(b.memory_type(), 6);
        assert_eq!(memory_type_name(b.memory_type()), "WB");
        assert!(b.ins_outs_info());
        assert!(b.true_controls());

        let m = VmxMisc(0x0000_0000_7004_c1e7);
        assert_eq!(m.preemption_timer_rate(), 7);
        assert!(m.stores_lma());
        assert!(m.activity_hlt() && m.activity_shutdown() && m.activity_wait_for_sipi());
        assert!(m.pt_in_vmx());
        assert_eq!(m.cr3_target_count(), 4);
        assert_eq!(m.max_msr_list(), 512);
        assert!(m.vmwrite_any_field());
        assert!(m.inject_zero_length());
    }

    #[test]
    fn feature_control_actions() {
        assert_eq!(
            FeatureControl::action(0x5),
            FeatureControlAction::AlreadyEnabled
        );
        assert_eq!(
            FeatureControl::action(0x1),
            FeatureControlAction::DisabledByFirmware
        );
        assert_eq!(
            FeatureControl::action(0x0),
            FeatureControlAction::WriteAndLock(0x5)
        );
        // Other bits (e.g. SGX enable, bit 18) are preserved.
        assert_eq!(
            FeatureControl::action(1 << 18),
            FeatureControlAction::WriteAndLock((1 << 18) | 0x5)
        );
    }

    #[test]
    fn reads_true_msrs_when_bit55() {
        let (caps, read) = SKYLAKE.caps();
        assert!(caps.true_controls);
        for msr in [
            IA32_VMX_TRUE_PINBASED_CTLS,
            IA32_VMX_TRUE_PROCBASED_CTLS,
            IA32_VMX_TRUE_EXIT_CTLS,
            IA32_VMX_TRUE_ENTRY_CTLS,
            IA32_VMX_PROCBASED_CTLS2,
            IA32_VMX_EPT_VPID_CAP,
        ] {
            assert!(read.contains(&msr), "{msr:#x} not read");
        }
        // The TRUE values are used: CR3-load/store exiting (bits 15, 16) may be 0.
        assert_eq!(caps.proc.allowed0, 0x0400_6172);
        assert_eq!(caps.exit.allowed0, 0x0003_6dfb);
        assert!(caps.ept_supported() && caps.vpid_supported() && caps.unrestricted_guest());
        assert!(caps.ept_caps().contains(EptVpidCap::ACCESS_DIRTY));
        assert_eq!(caps.max_vmcs_index(), 0x17);
    }

    #[test]
    fn merom_reads_only_existing_msrs() {
        // The closure panics on any MSR the CPU lacks; this must not.
        let (caps, read) = MEROM.caps();
        assert!(!caps.true_controls);
        assert_eq!(caps.proc2, None);
        assert_eq!(caps.ept_vpid, None);
        assert!(!caps.ept_supported() && !caps.unrestricted_guest());
        assert!(read.iter().all(|&m| (0x480..=0x48A).contains(&m)));
        // Default-1 controls are still must-be-1 without true controls.
        assert_eq!(caps.proc.allowed0, 0x0401_e172);
    }

    #[test]
    fn no_ept_vpid_msr_without_ept_or_vpid() {
        static NO_EPT: Cpu = Cpu(&[
            (IA32_VMX_BASIC, 0x00da_0400_0000_000e),
            (IA32_VMX_PINBASED_CTLS, 0x0000_003f_0000_0016),
            (IA32_VMX_PROCBASED_CTLS, 0xfff9_fffe_0401_e172),
            (IA32_VMX_EXIT_CTLS, 0x003f_ffff_0003_6dff),
            (IA32_VMX_ENTRY_CTLS, 0x0000_ffff_0000_11ff),
            (IA32_VMX_MISC, 0x0004_00e5),
            (IA32_VMX_CR0_FIXED0, 0x8000_0021),
            (IA32_VMX_CR0_FIXED1, 0xffff_ffff),
            (IA32_VMX_CR4_FIXED0, 0x2000),
            (IA32_VMX_CR4_FIXED1, 0x67ff),
            (IA32_VMX_VMCS_ENUM, 0x2c),
            // Only APIC-access virtualization and RDTSCP.
            (IA32_VMX_PROCBASED_CTLS2, 0x0000_0009_0000_0000),
            (IA32_VMX_TRUE_PINBASED_CTLS, 0x0000_003f_0000_0016),
            (IA32_VMX_TRUE_PROCBASED_CTLS, 0xfff9_fffe_0400_6172),
            (IA32_VMX_TRUE_EXIT_CTLS, 0x003f_ffff_0003_6dfb),
            (IA32_VMX_TRUE_ENTRY_CTLS, 0x0000_ffff_0000_11fb),
        ]);
        let (caps, read) = NO_EPT.caps();
        assert!(caps.proc2.is_some());
        assert_eq!(caps.ept_vpid, None);
        assert!(!read.contains(&IA32_VMX_EPT_VPID_CAP));
    }

    #[test]
    fn derive_skylake() {
        let (caps, _) = SKYLAKE.caps();
        let c = derive(&SKYLAKE).unwrap();
        assert_valid(&c, &caps);
        let p = PrimaryProcBased::from_bits_retain(c.proc);
        assert!(p.contains(
            PrimaryProcBased::HLT_EXITING
                | PrimaryProcBased::USE_MSR_BITMAPS
                | PrimaryProcBased::USE_IO_BITMAPS
                | PrimaryProcBased::ACTIVATE_SECONDARY
        ));
        // I/O bitmaps preferred: unconditional I/O exiting stays off.
        assert!(!p.contains(PrimaryProcBased::UNCONDITIONAL_IO));
        // True controls let CR3-load/store exiting be 0 (EPT guest owns CR3).
        assert!(!p.intersects(PrimaryProcBased::CR3_LOAD | PrimaryProcBased::CR3_STORE));
        assert_eq!(
            c.secondary(),
            SecondaryProcBased::ENABLE_EPT
                | SecondaryProcBased::UNRESTRICTED_GUEST
                | SecondaryProcBased::ENABLE_RDTSCP
                | SecondaryProcBased::ENABLE_INVPCID
                | SecondaryProcBased::ENABLE_VPID
        );
        // External-interrupt exiting and the preemption timer (watchdog),
        // with the default-1 bits 1, 2 and 4.
        assert_eq!(c.pin, 0x57);
        assert_eq!(
            VmExitControls::from_bits_retain(c.exit)
                & (VmExitControls::HOST_ADDRESS_SPACE_SIZE
                    | VmExitControls::SAVE_EFER
                    | VmExitControls::LOAD_EFER
                    | VmExitControls::ACK_INTERRUPT_ON_EXIT
                    | VmExitControls::SAVE_DEBUG_CONTROLS),
            VmExitControls::HOST_ADDRESS_SPACE_SIZE
                | VmExitControls::SAVE_EFER
                | VmExitControls::LOAD_EFER
                | VmExitControls::ACK_INTERRUPT_ON_EXIT
        );
        assert_eq!(c.exit, 0x0033_effb);
        assert_eq!(c.entry, 0x0000_93fb);
    }

    #[test]
    fn derive_haswell_without_xsaves() {
        let (caps, _) = HASWELL.caps();
        let c = derive(&HASWELL).unwrap();
        assert_valid(&c, &caps);
        let s = c.secondary();
        assert!(s.contains(SecondaryProcBased::ENABLE_EPT | SecondaryProcBased::UNRESTRICTED_GUEST));
        assert!(!s.contains(SecondaryProcBased::ENABLE_XSAVES));
        assert!(s.contains(SecondaryProcBased::ENABLE_INVPCID | SecondaryProcBased::ENABLE_VPID));
    }

    #[test]
    fn derive_bochs() {
        let (caps, _) = BOCHS.caps();
        assert_eq!(caps.basic.vmcs_size(), 4096);
        assert!(!caps.basic.dual_monitor());
        let c = derive(&BOCHS).unwrap();
        assert_valid(&c, &caps);
        assert!(c
            .secondary()
            .contains(SecondaryProcBased::ENABLE_EPT | SecondaryProcBased::UNRESTRICTED_GUEST));
    }

    #[test]
    fn nehalem_lacks_unrestricted_guest() {
        let err = derive(&NEHALEM).unwrap_err();
        assert_eq!(
            err,
            CapError::Unsupported {
                word: ControlWord::SecondaryProcBased,
                missing: SecondaryProcBased::UNRESTRICTED_GUEST.bits(),
                allowed1: 0x6f,
            }
        );
        let msg = format!("{err}");
        assert!(msg.contains("UNRESTRICTED_GUEST"), "{msg}");
        assert!(!msg.contains("ENABLE_EPT"), "{msg}");
    }

    #[test]
    fn merom_has_no_secondary_controls() {
        let err = derive(&MEROM).unwrap_err();
        assert_eq!(
            err,
            CapError::NoSecondaryControls {
                required: (SecondaryProcBased::ENABLE_EPT | SecondaryProcBased::UNRESTRICTED_GUEST)
                    .bits()
            }
        );
        let msg = format!("{err}");
        assert!(msg.contains("ENABLE_EPT UNRESTRICTED_GUEST"), "{msg}");

        // Without EPT the same CPU yields valid controls with no secondary word,
        // and default-1 bits (CR3-load/store exiting) forced on.
        let (caps, _) = MEROM.caps();
        let mut want = ControlRequest::default_for_guest();
        want.proc.required &= !PrimaryProcBased::ACTIVATE_SECONDARY.bits();
        want.proc2 = WordRequest {
            required: 0,
            optional: SecondaryProcBased::ENABLE_RDTSCP.bits(),
            one_of: &[],
        };
        let c = derive_controls(&caps, &want).unwrap();
        assert_valid(&c, &caps);
        assert_eq!(c.proc2, 0);
        let p = PrimaryProcBased::from_bits_retain(c.proc);
        assert!(!p.contains(PrimaryProcBased::ACTIVATE_SECONDARY));
        assert!(p.contains(PrimaryProcBased::CR3_LOAD | PrimaryProcBased::CR3_STORE));
        // No LOAD_EFER on this CPU (exit allowed-1 is 0x3ffff): silently off.
        assert_eq!(c.entry & VmEntryControls::LOAD_EFER.bits(), 0);
        assert_eq!(c.exit & VmExitControls::LOAD_EFER.bits(), 0);
    }

    #[test]
    fn io_alternatives() {
        let (mut caps, _) = SKYLAKE.caps();
        // A CPU without I/O bitmaps falls back to unconditional I/O exiting.
        caps.proc.allowed1 &= !PrimaryProcBased::USE_IO_BITMAPS.bits();
        let c = derive_controls(&caps, &ControlRequest::default_for_guest()).unwrap();
        assert_ne!(c.proc & PrimaryProcBased::UNCONDITIONAL_IO.bits(), 0);
        assert_eq!(c.proc & PrimaryProcBased::USE_IO_BITMAPS.bits(), 0);
        // With neither, the error names both.
        caps.proc.allowed1 &= !PrimaryProcBased::UNCONDITIONAL_IO.bits();
        let err = derive_controls(&caps, &ControlRequest::default_for_guest()).unwrap_err();
        let msg = format!("{err}");
        assert!(
            msg.contains("USE_IO_BITMAPS") && msg.contains("UNCONDITIONAL_IO"),
            "{msg}"
        );
    }

    #[test]
    fn ept_caps_checked_and_vpid_needs_invvpid() {
        let (mut caps, _) = SKYLAKE.caps();
        caps.ept_vpid = Some(caps.ept_caps() - EptVpidCap::MEMTYPE_WB);
        let err = derive_controls(&caps, &ControlRequest::default_for_guest()).unwrap_err();
        assert_eq!(
            err,
            CapError::EptCapability {
                missing: EptVpidCap::MEMTYPE_WB.bits()
            }
        );
        assert!(format!("{err}").contains("MEMTYPE_WB"));

        let (mut caps, _) = SKYLAKE.caps();
        caps.ept_vpid = Some(caps.ept_caps() - EptVpidCap::INVVPID);
        let c = derive_controls(&caps, &ControlRequest::default_for_guest()).unwrap();
        assert!(!c.secondary().contains(SecondaryProcBased::ENABLE_VPID));
        assert!(c.secondary().contains(SecondaryProcBased::ENABLE_EPT));
    }

    #[test]
    fn cr_fixed_bits() {
        let (caps, _) = SKYLAKE.caps();
        assert_eq!(caps.cr0_fixed(), (0x8000_0021, 0xffff_ffff));
        assert_eq!(caps.apply_cr0(0x11), 0x8000_0031);
        assert_eq!(caps.apply_cr4(0x20), 0x2020);
        // CR4 bits above fixed1 are cleared (bit 23 is not in 0x3727ff).
        assert_eq!(caps.apply_cr4(1 << 23), 0x2000);
        // Unrestricted guest: PE and PG may be 0, NE still 1.
        assert_eq!(caps.guest_cr0_fixed(true).0, crate::x86::CR0_NE);
        assert_eq!(caps.apply_guest_cr0(0x10, true), 0x30);
        assert_eq!(caps.apply_guest_cr0(0x10, false), 0x8000_0031);
    }

    #[test]
    fn display_report() {
        let (caps, _) = SKYLAKE.caps();
        let s = format!("{caps}");
        for needle in [
            "revision 0x4",
            "VMCS 1024 bytes",
            "memory type WB",
            "true controls yes",
            "allowed0 0x00000016 allowed1 0x0000007f",
            "EXTERNAL_INTERRUPT_EXITING",
            "HLT_EXITING",
            "UNRESTRICTED_GUEST",
            "ENABLE_XSAVES",
            "ACK_INTERRUPT_ON_EXIT",
            "IA32E_MODE_GUEST",
            "PAGE_WALK_4",
            "INVEPT_ALL_CONTEXT",
            "unrestricted guest yes",
            "CR0 fixed0 0x0000000080000021",
            "CR4 fixed0 0x0000000000002000",
            "HLT shutdown wait-for-SIPI",
        ] {
            assert!(s.contains(needle), "missing {needle:?} in:\n{s}");
        }
        let (caps, _) = MEROM.caps();
        let s = format!("{caps}");
        assert!(s.contains("secondary:     not available"), "{s}");
        assert!(s.contains("EPT/VPID caps: not available"), "{s}");
        assert!(s.contains("true controls no"), "{s}");
        assert!(s.contains("unrestricted guest no"), "{s}");

        let c = derive(&SKYLAKE).unwrap();
        let s: String = format!("{c}");
        assert!(s.contains("ENABLE_EPT"), "{s}");
    }
}
