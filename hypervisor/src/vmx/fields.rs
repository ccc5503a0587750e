//! Typed VMCS fields (Intel SDM Vol. 3D appendix B "Field Encoding in VMCS").
//!
//! One enum per field width, so a 16-bit field cannot be written as 64-bit:
//! [`Vmcs16`], [`Vmcs32`], [`Vmcs64`], [`VmcsNatural`]. The discriminant of
//! each variant is its encoding (SDM B.1–B.4; only the "full" encodings of
//! 64-bit fields, since the hypervisor runs in 64-bit mode). The arch code
//! implements [`VmcsAccess`] with VMREAD/VMWRITE; everything else uses the
//! typed methods.
//!
//! Encoding layout (SDM 25.11.2, table 25-21): bit 0 access type (0 = full),
//! bits 9:1 index, bits 11:10 type (control / VM-exit information / guest
//! state / host state), bit 12 reserved, bits 14:13 width.

use core::fmt;

use super::exit::{vm_instruction_error_message, ExitReason};

/// Width of a VMCS field, encoding bits 14:13 (SDM 25.11.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldWidth {
    /// 16-bit (0).
    W16 = 0,
    /// 64-bit (1).
    W64 = 1,
    /// 32-bit (2).
    W32 = 2,
    /// Natural width: 64 bits on Intel 64 (3).
    Natural = 3,
}

/// Kind of a VMCS field, encoding bits 11:10 (SDM 25.11.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// VM-execution, VM-exit and VM-entry control fields (0).
    Control = 0,
    /// Read-only VM-exit information fields (1).
    ExitInfo = 1,
    /// Guest-state fields (2).
    Guest = 2,
    /// Host-state fields (3).
    Host = 3,
}

impl FieldKind {
    /// Human-readable name.
    pub const fn name(self) -> &'static str {
        match self {
            FieldKind::Control => "control",
            FieldKind::ExitInfo => "VM-exit information",
            FieldKind::Guest => "guest state",
            FieldKind::Host => "host state",
        }
    }
}

/// Width encoded in bits 14:13 of `encoding`.
pub const fn width_of(encoding: u32) -> FieldWidth {
    match (encoding >> 13) & 3 {
        0 => FieldWidth::W16,
        1 => FieldWidth::W64,
        2 => FieldWidth::W32,
        _ => FieldWidth::Natural,
    }
}

/// Kind encoded in bits 11:10 of `encoding`.
pub const fn kind_of(encoding: u32) -> FieldKind {
    match (encoding >> 10) & 3 {
        0 => FieldKind::Control,
        1 => FieldKind::ExitInfo,
        2 => FieldKind::Guest,
        _ => FieldKind::Host,
    }
}

/// Whether `encoding` is a well-formed "full" encoding of a field of width
/// `width`: width bits agree, access type 0, reserved bit 12 and bits 31:15 zero.
pub const fn encoding_matches(encoding: u32, width: FieldWidth) -> bool {
    width_of(encoding) as u32 == width as u32 && encoding & 1 == 0 && encoding & !0x6FFE == 0
}

macro_rules! vmcs_fields {
    (
        $(#[$meta:meta])*
        $name:ident, $width:expr, $ty:ty, {
            $( $(#[$vmeta:meta])* $var:ident = $enc:expr, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u32)]
        pub enum $name {
            $( $(#[$vmeta])* $var = $enc, )*
        }

        impl $name {
            /// Every field of this width, in encoding order.
            pub const ALL: &'static [$name] = &[$($name::$var,)*];
            /// Width of every field in this enum.
            pub const WIDTH: FieldWidth = $width;

            /// The field encoding (SDM appendix B).
            pub const fn encoding(self) -> u32 {
                self as u32
            }

            /// Field name, as in this enum.
            pub const fn name(self) -> &'static str {
                match self {
                    $( $name::$var => stringify!($var), )*
                }
            }

            /// Field kind (control, VM-exit information, guest, host).
            pub const fn kind(self) -> FieldKind {
                kind_of(self as u32)
            }

            /// Field of this width with this encoding.
            pub fn from_encoding(encoding: u32) -> Option<Self> {
                Self::ALL.iter().copied().find(|f| f.encoding() == encoding)
            }

            fn read_any(self, v: &(impl VmcsAccess + ?Sized)) -> Result<u64, VmcsError> {
                v.read_raw(self.encoding()).map(|x| x as $ty as u64)
            }
        }
    };
}

vmcs_fields! {
    /// 16-bit VMCS fields (SDM B.1).
    Vmcs16, FieldWidth::W16, u16, {
        // B.1.1 16-bit control fields.
        /// Virtual-processor identifier (VPID).
        Vpid = 0x0000,
        /// Posted-interrupt notification vector.
        PostedInterruptNotificationVector = 0x0002,
        /// EPTP index.
        EptpIndex = 0x0004,
        // B.1.2 16-bit guest-state fields.
        GuestEsSelector = 0x0800,
        GuestCsSelector = 0x0802,
        GuestSsSelector = 0x0804,
        GuestDsSelector = 0x0806,
        GuestFsSelector = 0x0808,
        GuestGsSelector = 0x080A,
        GuestLdtrSelector = 0x080C,
        GuestTrSelector = 0x080E,
        /// Guest interrupt status (virtual-interrupt delivery).
        GuestInterruptStatus = 0x0810,
        /// PML index.
        GuestPmlIndex = 0x0812,
        // B.1.3 16-bit host-state fields.
        HostEsSelector = 0x0C00,
        HostCsSelector = 0x0C02,
        HostSsSelector = 0x0C04,
        HostDsSelector = 0x0C06,
        HostFsSelector = 0x0C08,
        HostGsSelector = 0x0C0A,
        HostTrSelector = 0x0C0C,
    }
}

vmcs_fields! {
    /// 64-bit VMCS fields, "full" encodings (SDM B.2).
    Vmcs64, FieldWidth::W64, u64, {
        // B.2.1 64-bit control fields.
        IoBitmapA = 0x2000,
        IoBitmapB = 0x2002,
        MsrBitmap = 0x2004,
        VmExitMsrStoreAddr = 0x2006,
        VmExitMsrLoadAddr = 0x2008,
        VmEntryMsrLoadAddr = 0x200A,
        ExecutiveVmcsPointer = 0x200C,
        PmlAddress = 0x200E,
        TscOffset = 0x2010,
        VirtualApicAddress = 0x2012,
        ApicAccessAddress = 0x2014,
        PostedInterruptDescAddr = 0x2016,
        VmFunctionControls = 0x2018,
        /// EPT pointer.
        Eptp = 0x201A,
        EoiExitBitmap0 = 0x201C,
        EoiExitBitmap1 = 0x201E,
        EoiExitBitmap2 = 0x2020,
        EoiExitBitmap3 = 0x2022,
        EptpListAddress = 0x2024,
        VmreadBitmapAddress = 0x2026,
        VmwriteBitmapAddress = 0x2028,
        VirtualizationExceptionInfoAddr = 0x202A,
        XssExitingBitmap = 0x202C,
        EnclsExitingBitmap = 0x202E,
        SubPagePermissionTablePointer = 0x2030,
        TscMultiplier = 0x2032,
        // B.2.2 64-bit read-only data field.
        /// Guest-physical address of an EPT violation or misconfiguration.
        GuestPhysicalAddress = 0x2400,
        // B.2.3 64-bit guest-state fields.
        /// VMCS link pointer (all ones unless VMCS shadowing is used).
        VmcsLinkPointer = 0x2800,
        GuestIa32Debugctl = 0x2802,
        GuestIa32Pat = 0x2804,
        GuestIa32Efer = 0x2806,
        GuestIa32PerfGlobalCtrl = 0x2808,
        /// Guest PDPTE0 (PAE paging with EPT).
        GuestPdpte0 = 0x280A,
        GuestPdpte1 = 0x280C,
        GuestPdpte2 = 0x280E,
        GuestPdpte3 = 0x2810,
        GuestIa32Bndcfgs = 0x2812,
        GuestIa32RtitCtl = 0x2814,
        // B.2.4 64-bit host-state fields.
        HostIa32Pat = 0x2C00,
        HostIa32Efer = 0x2C02,
        HostIa32PerfGlobalCtrl = 0x2C04,
    }
}

vmcs_fields! {
    /// 32-bit VMCS fields (SDM B.3).
    Vmcs32, FieldWidth::W32, u32, {
        // B.3.1 32-bit control fields.
        PinBasedControls = 0x4000,
        PrimaryProcBasedControls = 0x4002,
        ExceptionBitmap = 0x4004,
        PageFaultErrorCodeMask = 0x4006,
        PageFaultErrorCodeMatch = 0x4008,
        Cr3TargetCount = 0x400A,
        VmExitControls = 0x400C,
        VmExitMsrStoreCount = 0x400E,
        VmExitMsrLoadCount = 0x4010,
        VmEntryControls = 0x4012,
        VmEntryMsrLoadCount = 0x4014,
        VmEntryInterruptionInfo = 0x4016,
        VmEntryExceptionErrorCode = 0x4018,
        VmEntryInstructionLength = 0x401A,
        TprThreshold = 0x401C,
        SecondaryProcBasedControls = 0x401E,
        PleGap = 0x4020,
        PleWindow = 0x4022,
        // B.3.2 32-bit read-only data fields.
        VmInstructionError = 0x4400,
        ExitReason = 0x4402,
        VmExitInterruptionInfo = 0x4404,
        VmExitInterruptionErrorCode = 0x4406,
        IdtVectoringInfo = 0x4408,
        IdtVectoringErrorCode = 0x440A,
        VmExitInstructionLength = 0x440C,
        VmExitInstructionInfo = 0x440E,
        // B.3.3 32-bit guest-state fields.
        GuestEsLimit = 0x4800,
        GuestCsLimit = 0x4802,
        GuestSsLimit = 0x4804,
        GuestDsLimit = 0x4806,
        GuestFsLimit = 0x4808,
        GuestGsLimit = 0x480A,
        GuestLdtrLimit = 0x480C,
        GuestTrLimit = 0x480E,
        GuestGdtrLimit = 0x4810,
        GuestIdtrLimit = 0x4812,
        GuestEsAccessRights = 0x4814,
        GuestCsAccessRights = 0x4816,
        GuestSsAccessRights = 0x4818,
        GuestDsAccessRights = 0x481A,
        GuestFsAccessRights = 0x481C,
        GuestGsAccessRights = 0x481E,
        GuestLdtrAccessRights = 0x4820,
        GuestTrAccessRights = 0x4822,
        GuestInterruptibilityState = 0x4824,
        GuestActivityState = 0x4826,
        GuestSmbase = 0x4828,
        GuestIa32SysenterCs = 0x482A,
        /// VMX-preemption timer value.
        GuestPreemptionTimerValue = 0x482E,
        // B.3.4 32-bit host-state field.
        HostIa32SysenterCs = 0x4C00,
    }
}

vmcs_fields! {
    /// Natural-width VMCS fields (SDM B.4).
    VmcsNatural, FieldWidth::Natural, u64, {
        // B.4.1 natural-width control fields.
        Cr0GuestHostMask = 0x6000,
        Cr4GuestHostMask = 0x6002,
        Cr0ReadShadow = 0x6004,
        Cr4ReadShadow = 0x6006,
        Cr3Target0 = 0x6008,
        Cr3Target1 = 0x600A,
        Cr3Target2 = 0x600C,
        Cr3Target3 = 0x600E,
        // B.4.2 natural-width read-only data fields.
        ExitQualification = 0x6400,
        IoRcx = 0x6402,
        IoRsi = 0x6404,
        IoRdi = 0x6406,
        IoRip = 0x6408,
        GuestLinearAddress = 0x640A,
        // B.4.3 natural-width guest-state fields.
        GuestCr0 = 0x6800,
        GuestCr3 = 0x6802,
        GuestCr4 = 0x6804,
        GuestEsBase = 0x6806,
        GuestCsBase = 0x6808,
        GuestSsBase = 0x680A,
        GuestDsBase = 0x680C,
        GuestFsBase = 0x680E,
        GuestGsBase = 0x6810,
        GuestLdtrBase = 0x6812,
        GuestTrBase = 0x6814,
        GuestGdtrBase = 0x6816,
        GuestIdtrBase = 0x6818,
        GuestDr7 = 0x681A,
        GuestRsp = 0x681C,
        GuestRip = 0x681E,
        GuestRflags = 0x6820,
        GuestPendingDebugExceptions = 0x6822,
        GuestIa32SysenterEsp = 0x6824,
        GuestIa32SysenterEip = 0x6826,
        // B.4.4 natural-width host-state fields.
        HostCr0 = 0x6C00,
        HostCr3 = 0x6C02,
        HostCr4 = 0x6C04,
        HostFsBase = 0x6C06,
        HostGsBase = 0x6C08,
        HostTrBase = 0x6C0A,
        HostGdtrBase = 0x6C0C,
        HostIdtrBase = 0x6C0E,
        HostIa32SysenterEsp = 0x6C10,
        HostIa32SysenterEip = 0x6C12,
        HostRsp = 0x6C14,
        HostRip = 0x6C16,
    }
}

/// A failed VMREAD or VMWRITE (SDM 31.2 "Conventions": VMfailInvalid / VMfailValid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmcsError {
    /// VMfailInvalid (CF = 1): there is no current VMCS.
    FailInvalid {
        /// The field accessed.
        encoding: u32,
    },
    /// VMfailValid (ZF = 1): the VM-instruction error field holds `error`
    /// (12 = unsupported field, 13 = VMWRITE to a read-only field; SDM 31.4).
    FailValid {
        /// The field accessed.
        encoding: u32,
        /// The VM-instruction error number.
        error: u32,
    },
}

impl fmt::Display for VmcsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            VmcsError::FailInvalid { encoding } => {
                write!(
                    f,
                    "VMCS field {encoding:#06x}: VMfailInvalid (no current VMCS)"
                )
            }
            VmcsError::FailValid { encoding, error } => write!(
                f,
                "VMCS field {encoding:#06x}: VMfailValid, error {error}: {}",
                vm_instruction_error_message(error)
            ),
        }
    }
}

/// Access to the current VMCS. The arch code implements the raw methods with
/// VMREAD/VMWRITE (a 64-bit value for every width; VMWRITE ignores unused
/// high bits and VMREAD zero-extends, SDM 31.3). Use the typed methods.
///
/// A 16-bit field cannot be written as 64-bit:
///
/// ```compile_fail
/// use hypervisor::vmx::fields::{Vmcs16, VmcsAccess, VmcsError};
/// struct V;
/// impl VmcsAccess for V {
///     fn read_raw(&self, _: u32) -> Result<u64, VmcsError> { Ok(0) }
///     fn write_raw(&mut self, _: u32, _: u64) -> Result<(), VmcsError> { Ok(()) }
/// }
/// V.write64(Vmcs16::GuestCsSelector, 0x8).unwrap();
/// ```
pub trait VmcsAccess {
    /// VMREAD of `encoding`.
    fn read_raw(&self, encoding: u32) -> Result<u64, VmcsError>;
    /// VMWRITE of `value` to `encoding`.
    fn write_raw(&mut self, encoding: u32, value: u64) -> Result<(), VmcsError>;

    /// Reads a 16-bit field.
    fn read16(&self, field: Vmcs16) -> Result<u16, VmcsError> {
        self.read_raw(field.encoding()).map(|v| v as u16)
    }
    /// Writes a 16-bit field.
    fn write16(&mut self, field: Vmcs16, value: u16) -> Result<(), VmcsError> {
        self.write_raw(field.encoding(), value.into())
    }
    /// Reads a 32-bit field.
    fn read32(&self, field: Vmcs32) -> Result<u32, VmcsError> {
        self.read_raw(field.encoding()).map(|v| v as u32)
    }
    /// Writes a 32-bit field.
    fn write32(&mut self, field: Vmcs32, value: u32) -> Result<(), VmcsError> {
        self.write_raw(field.encoding(), value.into())
    }
    /// Reads a 64-bit field.
    fn read64(&self, field: Vmcs64) -> Result<u64, VmcsError> {
        self.read_raw(field.encoding())
    }
    /// Writes a 64-bit field.
    fn write64(&mut self, field: Vmcs64, value: u64) -> Result<(), VmcsError> {
        self.write_raw(field.encoding(), value)
    }
    /// Reads a natural-width field.
    fn read_nat(&self, field: VmcsNatural) -> Result<u64, VmcsError> {
        self.read_raw(field.encoding())
    }
    /// Writes a natural-width field.
    fn write_nat(&mut self, field: VmcsNatural, value: u64) -> Result<(), VmcsError> {
        self.write_raw(field.encoding(), value)
    }
}

/// One value line of the dump.
fn dump_line(
    out: &mut impl fmt::Write,
    name: &str,
    encoding: u32,
    width: FieldWidth,
    value: Result<u64, VmcsError>,
) -> fmt::Result {
    write!(out, "  {name:<34} [{encoding:#06x}] ")?;
    match value {
        Ok(v) => match width {
            FieldWidth::W16 => writeln!(out, "{v:#06x}"),
            FieldWidth::W32 => writeln!(out, "{v:#010x}"),
            FieldWidth::W64 | FieldWidth::Natural => writeln!(out, "{v:#018x}"),
        },
        Err(VmcsError::FailValid { error: 12, .. }) => writeln!(out, "(not supported)"),
        Err(e) => writeln!(out, "({e})"),
    }
}

fn dump_kind(v: &impl VmcsAccess, out: &mut impl fmt::Write, kind: FieldKind) -> fmt::Result {
    writeln!(out, "{}:", kind.name())?;
    for f in Vmcs16::ALL.iter().filter(|f| f.kind() == kind) {
        dump_line(out, f.name(), f.encoding(), Vmcs16::WIDTH, f.read_any(v))?;
    }
    for f in Vmcs32::ALL.iter().filter(|f| f.kind() == kind) {
        dump_line(out, f.name(), f.encoding(), Vmcs32::WIDTH, f.read_any(v))?;
    }
    for f in Vmcs64::ALL.iter().filter(|f| f.kind() == kind) {
        dump_line(out, f.name(), f.encoding(), Vmcs64::WIDTH, f.read_any(v))?;
    }
    for f in VmcsNatural::ALL.iter().filter(|f| f.kind() == kind) {
        dump_line(
            out,
            f.name(),
            f.encoding(),
            VmcsNatural::WIDTH,
            f.read_any(v),
        )?;
    }
    Ok(())
}

/// Writes every control, VM-exit information, guest and host field with its
/// name and value: a readable VMCS dump for debugging a failed VM entry.
///
/// The VM-instruction error and exit reason are read and decoded first,
/// because reading a field this CPU does not support (printed as
/// "not supported") is itself a VMfailValid that overwrites the
/// VM-instruction error field (SDM 31.4).
pub fn dump(v: &impl VmcsAccess, out: &mut impl fmt::Write) -> fmt::Result {
    writeln!(out, "VMCS dump")?;
    match v.read32(Vmcs32::VmInstructionError) {
        Ok(e) => writeln!(
            out,
            "  VM-instruction error: {e} ({})",
            vm_instruction_error_message(e)
        )?,
        Err(e) => writeln!(out, "  VM-instruction error: ({e})")?,
    }
    match v.read32(Vmcs32::ExitReason) {
        Ok(raw) => {
            let (reason, entry_failure) = ExitReason::from_raw(raw);
            writeln!(
                out,
                "  exit reason: {raw:#010x} = {reason}{}",
                if entry_failure {
                    " (VM-entry failure)"
                } else {
                    ""
                }
            )?
        }
        Err(e) => writeln!(out, "  exit reason: ({e})")?,
    }
    for kind in [
        FieldKind::Control,
        FieldKind::ExitInfo,
        FieldKind::Guest,
        FieldKind::Host,
    ] {
        dump_kind(v, out, kind)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::String;

    /// A fake VMCS: a small fixed table of (encoding, value); unknown or
    /// `unsupported` encodings fail like the CPU does (VMfailValid 12).
    struct MockVmcs {
        slots: [(u32, u64); 64],
        len: usize,
        unsupported: &'static [u32],
        last_error: core::cell::Cell<u32>,
    }

    impl MockVmcs {
        fn new(unsupported: &'static [u32]) -> Self {
            MockVmcs {
                slots: [(0, 0); 64],
                len: 0,
                unsupported,
                last_error: core::cell::Cell::new(0),
            }
        }
        fn fail(&self, encoding: u32) -> VmcsError {
            self.last_error.set(12);
            VmcsError::FailValid {
                encoding,
                error: 12,
            }
        }
    }

    impl VmcsAccess for MockVmcs {
        fn read_raw(&self, encoding: u32) -> Result<u64, VmcsError> {
            if self.unsupported.contains(&encoding) || !is_known(encoding) {
                return Err(self.fail(encoding));
            }
            if encoding == Vmcs32::VmInstructionError.encoding() {
                return Ok(self.last_error.get().into());
            }
            Ok(self.slots[..self.len]
                .iter()
                .find(|(e, _)| *e == encoding)
                .map_or(0, |(_, v)| *v))
        }
        fn write_raw(&mut self, encoding: u32, value: u64) -> Result<(), VmcsError> {
            if self.unsupported.contains(&encoding) || !is_known(encoding) {
                return Err(self.fail(encoding));
            }
            if kind_of(encoding) == FieldKind::ExitInfo {
                self.last_error.set(13);
                return Err(VmcsError::FailValid {
                    encoding,
                    error: 13,
                });
            }
            // The CPU keeps only the field's width.
            let value = match width_of(encoding) {
                FieldWidth::W16 => value & 0xFFFF,
                FieldWidth::W32 => value & 0xFFFF_FFFF,
                _ => value,
            };
            match self.slots[..self.len]
                .iter_mut()
                .find(|(e, _)| *e == encoding)
            {
                Some(slot) => slot.1 = value,
                None => {
                    self.slots[self.len] = (encoding, value);
                    self.len += 1;
                }
            }
            Ok(())
        }
    }

    fn is_known(encoding: u32) -> bool {
        Vmcs16::from_encoding(encoding).is_some()
            || Vmcs32::from_encoding(encoding).is_some()
            || Vmcs64::from_encoding(encoding).is_some()
            || VmcsNatural::from_encoding(encoding).is_some()
    }

    #[test]
    fn every_encoding_has_the_width_of_its_enum() {
        for f in Vmcs16::ALL {
            assert!(encoding_matches(f.encoding(), Vmcs16::WIDTH), "{f:?}");
        }
        for f in Vmcs32::ALL {
            assert!(encoding_matches(f.encoding(), Vmcs32::WIDTH), "{f:?}");
        }
        for f in Vmcs64::ALL {
            assert!(encoding_matches(f.encoding(), Vmcs64::WIDTH), "{f:?}");
        }
        for f in VmcsNatural::ALL {
            assert!(encoding_matches(f.encoding(), VmcsNatural::WIDTH), "{f:?}");
        }
        assert!(!encoding_matches(0x2001, FieldWidth::W64)); // "high" access
        assert!(!encoding_matches(0x0800, FieldWidth::W32));
    }

    #[test]
    fn names_prefixes_match_kind() {
        // Guest*/Host* names sit in the guest/host areas; nothing else does.
        fn check(name: &str, kind: FieldKind) {
            match kind {
                FieldKind::Guest => assert!(
                    name.starts_with("Guest") && name != "GuestPhysicalAddress"
                        || name == "VmcsLinkPointer",
                    "{name}"
                ),
                FieldKind::Host => assert!(name.starts_with("Host"), "{name}"),
                _ => assert!(
                    !name.starts_with("Host")
                        && (!name.starts_with("Guest")
                            || name == "GuestPhysicalAddress"
                            || name == "GuestLinearAddress"),
                    "{name}"
                ),
            }
        }
        Vmcs16::ALL.iter().for_each(|f| check(f.name(), f.kind()));
        Vmcs32::ALL.iter().for_each(|f| check(f.name(), f.kind()));
        Vmcs64::ALL.iter().for_each(|f| check(f.name(), f.kind()));
        VmcsNatural::ALL
            .iter()
            .for_each(|f| check(f.name(), f.kind()));
    }

    #[test]
    fn encodings_are_unique_and_sorted() {
        fn sorted(e: impl Iterator<Item = u32>) {
            let v: std::vec::Vec<u32> = e.collect();
            assert!(v.windows(2).all(|w| w[0] < w[1]), "{v:x?}");
        }
        sorted(Vmcs16::ALL.iter().map(|f| f.encoding()));
        sorted(Vmcs32::ALL.iter().map(|f| f.encoding()));
        sorted(Vmcs64::ALL.iter().map(|f| f.encoding()));
        sorted(VmcsNatural::ALL.iter().map(|f| f.encoding()));
    }

    #[test]
    fn known_encodings() {
        // Spot checks against SDM appendix B.
        assert_eq!(Vmcs16::Vpid.encoding(), 0x0000);
        assert_eq!(Vmcs16::GuestCsSelector.encoding(), 0x0802);
        assert_eq!(Vmcs16::HostTrSelector.encoding(), 0x0C0C);
        assert_eq!(Vmcs64::MsrBitmap.encoding(), 0x2004);
        assert_eq!(Vmcs64::Eptp.encoding(), 0x201A);
        assert_eq!(Vmcs64::GuestPhysicalAddress.kind(), FieldKind::ExitInfo);
        assert_eq!(Vmcs64::VmcsLinkPointer.encoding(), 0x2800);
        assert_eq!(Vmcs64::HostIa32Efer.encoding(), 0x2C02);
        assert_eq!(Vmcs32::SecondaryProcBasedControls.encoding(), 0x401E);
        assert_eq!(Vmcs32::ExitReason.encoding(), 0x4402);
        assert_eq!(Vmcs32::GuestActivityState.encoding(), 0x4826);
        assert_eq!(Vmcs32::HostIa32SysenterCs.encoding(), 0x4C00);
        assert_eq!(VmcsNatural::ExitQualification.encoding(), 0x6400);
        assert_eq!(VmcsNatural::GuestRip.encoding(), 0x681E);
        assert_eq!(VmcsNatural::HostRip.encoding(), 0x6C16);
        assert_eq!(Vmcs32::from_encoding(0x4402), Some(Vmcs32::ExitReason));
        assert_eq!(Vmcs32::from_encoding(0x0802), None);
    }

    #[test]
    fn typed_access_round_trips() {
        let mut v = MockVmcs::new(&[]);
        v.write16(Vmcs16::GuestCsSelector, 0x8).unwrap();
        v.write32(Vmcs32::GuestCsAccessRights, 0xA09B).unwrap();
        v.write64(Vmcs64::VmcsLinkPointer, u64::MAX).unwrap();
        v.write_nat(VmcsNatural::GuestRip, 0xFFFF_8000_0010_0000)
            .unwrap();
        assert_eq!(v.read16(Vmcs16::GuestCsSelector), Ok(0x8));
        assert_eq!(v.read32(Vmcs32::GuestCsAccessRights), Ok(0xA09B));
        assert_eq!(v.read64(Vmcs64::VmcsLinkPointer), Ok(u64::MAX));
        assert_eq!(v.read_nat(VmcsNatural::GuestRip), Ok(0xFFFF_8000_0010_0000));
        let err = v.write32(Vmcs32::ExitReason, 1).unwrap_err();
        assert_eq!(
            err,
            VmcsError::FailValid {
                encoding: 0x4402,
                error: 13
            }
        );
        let msg = std::format!("{err}");
        assert!(msg.contains("read-only"), "{msg}");
    }

    #[test]
    fn dump_lists_every_field_and_decodes_the_error_first() {
        static UNSUPPORTED: &[u32] = &[0x0002, 0x200E];
        let mut v = MockVmcs::new(UNSUPPORTED);
        v.write16(Vmcs16::GuestCsSelector, 0x10).unwrap();
        v.write_nat(VmcsNatural::HostRip, 0xFFFF_FFFF_8000_1234)
            .unwrap();
        v.last_error.set(7); // VM entry with invalid control fields
        v.slots[v.len] = (Vmcs32::ExitReason.encoding(), 0x8000_0021);
        v.len += 1;
        let mut s = String::new();
        dump(&v, &mut s).unwrap();
        assert!(
            s.contains("VM-instruction error: 7 (VM entry with invalid control field(s))"),
            "{s}"
        );
        assert!(s.contains("(VM-entry failure)"), "{s}");
        assert!(s.contains("VM-entry failure: invalid guest state"), "{s}");
        assert!(s.contains("GuestCsSelector"), "{s}");
        assert!(s.contains("0x0010"), "{s}");
        assert!(s.contains("0xffffffff80001234"), "{s}");
        assert!(s.contains("(not supported)"), "{s}");
        let total =
            Vmcs16::ALL.len() + Vmcs32::ALL.len() + Vmcs64::ALL.len() + VmcsNatural::ALL.len();
        assert_eq!(s.matches("[0x").count(), total);
        for f in Vmcs32::ALL {
            assert!(s.contains(f.name()), "{}", f.name());
        }
        for f in VmcsNatural::ALL {
            assert!(s.contains(f.name()), "{}", f.name());
        }
        let guest = s.find("guest state:").unwrap();
        let host = s.find("host state:").unwrap();
        assert!(guest < s.find("GuestRip").unwrap() && s.find("GuestRip").unwrap() < host);
    }
}
