//! VM-exit decoding: exit reasons (Intel SDM Vol. 3D appendix C "VMX Basic
//! Exit Reasons"), exit qualifications (SDM Vol. 3C 28.2.1 "Basic VM-Exit
//! Information", tables "Exit Qualification for ..."), interruption
//! information (SDM 25.8.3, 25.9.2) and VM-instruction error numbers
//! (SDM 31.4). Section numbers follow the 2023+ edition of the SDM.

use core::fmt;

macro_rules! exit_reasons {
    ( $( $(#[$m:meta])* $var:ident = $code:literal, $name:literal; )* ) => {
        /// Basic exit reason, bits 15:0 of the exit-reason field (SDM appendix C).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ExitReason {
            $( $(#[$m])* $var, )*
            /// A basic exit reason this table does not know.
            Unknown(u16),
        }

        impl ExitReason {
            /// Every known exit reason, in code order.
            pub const ALL: &'static [ExitReason] = &[$(ExitReason::$var,)*];

            /// Exit reason from bits 15:0 of the exit-reason field.
            pub const fn from_basic(code: u16) -> Self {
                match code {
                    $( $code => ExitReason::$var, )*
                    other => ExitReason::Unknown(other),
                }
            }

            /// The basic exit reason number.
            pub const fn code(self) -> u16 {
                match self {
                    $( ExitReason::$var => $code, )*
                    ExitReason::Unknown(c) => c,
                }
            }

            /// Name, as in SDM appendix C.
            pub const fn name(self) -> &'static str {
                match self {
                    $( ExitReason::$var => $name, )*
                    ExitReason::Unknown(_) => "unknown exit reason",
                }
            }
        }
    };
}

exit_reasons! {
    /// Exception or non-maskable interrupt (NMI).
    ExceptionOrNmi = 0, "exception or NMI";
    ExternalInterrupt = 1, "external interrupt";
    TripleFault = 2, "triple fault";
    InitSignal = 3, "INIT signal";
    /// Start-up IPI (SIPI).
    StartupIpi = 4, "start-up IPI";
    IoSmi = 5, "I/O SMI";
    OtherSmi = 6, "other SMI";
    InterruptWindow = 7, "interrupt window";
    NmiWindow = 8, "NMI window";
    TaskSwitch = 9, "task switch";
    Cpuid = 10, "CPUID";
    Getsec = 11, "GETSEC";
    Hlt = 12, "HLT";
    Invd = 13, "INVD";
    Invlpg = 14, "INVLPG";
    Rdpmc = 15, "RDPMC";
    Rdtsc = 16, "RDTSC";
    Rsm = 17, "RSM";
    Vmcall = 18, "VMCALL";
    Vmclear = 19, "VMCLEAR";
    Vmlaunch = 20, "VMLAUNCH";
    Vmptrld = 21, "VMPTRLD";
    Vmptrst = 22, "VMPTRST";
    Vmread = 23, "VMREAD";
    Vmresume = 24, "VMRESUME";
    Vmwrite = 25, "VMWRITE";
    Vmxoff = 26, "VMXOFF";
    Vmxon = 27, "VMXON";
    /// Control-register accesses (qualification: [`CrAccess`]).
    CrAccess = 28, "control-register access";
    MovDr = 29, "MOV DR";
    /// I/O instruction (qualification: [`IoQualification`]).
    IoInstruction = 30, "I/O instruction";
    Rdmsr = 31, "RDMSR";
    Wrmsr = 32, "WRMSR";
    /// VM-entry failure due to invalid guest state.
    InvalidGuestState = 33, "VM-entry failure: invalid guest state";
    /// VM-entry failure due to MSR loading.
    MsrLoading = 34, "VM-entry failure: MSR loading";
    Mwait = 36, "MWAIT";
    MonitorTrapFlag = 37, "monitor trap flag";
    Monitor = 39, "MONITOR";
    Pause = 40, "PAUSE";
    /// VM-entry failure due to machine-check event.
    MachineCheck = 41, "VM-entry failure: machine-check event";
    TprBelowThreshold = 43, "TPR below threshold";
    ApicAccess = 44, "APIC access";
    VirtualizedEoi = 45, "virtualized EOI";
    GdtrIdtrAccess = 46, "access to GDTR or IDTR";
    LdtrTrAccess = 47, "access to LDTR or TR";
    /// EPT violation (qualification: [`EptViolation`]).
    EptViolation = 48, "EPT violation";
    EptMisconfig = 49, "EPT misconfiguration";
    Invept = 50, "INVEPT";
    Rdtscp = 51, "RDTSCP";
    PreemptionTimer = 52, "VMX-preemption timer expired";
    Invvpid = 53, "INVVPID";
    /// WBINVD or WBNOINVD.
    Wbinvd = 54, "WBINVD or WBNOINVD";
    Xsetbv = 55, "XSETBV";
    ApicWrite = 56, "APIC write";
    Rdrand = 57, "RDRAND";
    Invpcid = 58, "INVPCID";
    Vmfunc = 59, "VMFUNC";
    Encls = 60, "ENCLS";
    Rdseed = 61, "RDSEED";
    PmlFull = 62, "page-modification log full";
    Xsaves = 63, "XSAVES";
    Xrstors = 64, "XRSTORS";
    Pconfig = 65, "PCONFIG";
    SppEvent = 66, "SPP-related event";
    Umwait = 67, "UMWAIT";
    Tpause = 68, "TPAUSE";
    Loadiwkey = 69, "LOADIWKEY";
    Enclv = 70, "ENCLV";
    SgxConflict = 71, "SGX conflict";
    EnqcmdPasidFailure = 72, "ENQCMD PASID translation failure";
    EnqcmdsPasidFailure = 73, "ENQCMDS PASID translation failure";
    BusLock = 74, "bus lock";
    InstructionTimeout = 75, "instruction timeout";
    Seamcall = 76, "SEAMCALL";
    Tdcall = 77, "TDCALL";
    Rdmsrlist = 78, "RDMSRLIST";
    Wrmsrlist = 79, "WRMSRLIST";
}

impl ExitReason {
    /// Size of a per-reason counter array: every known code is its own index,
    /// and [`ExitReason::Unknown`] shares the last slot.
    pub const COUNT: usize = 81;

    /// Decodes the 32-bit exit-reason field (SDM 25.9.1): bits 15:0 are the
    /// basic reason, bit 31 says the exit is a VM-entry failure.
    pub const fn from_raw(raw: u32) -> (ExitReason, bool) {
        (ExitReason::from_basic(raw as u16), raw & (1 << 31) != 0)
    }

    /// Dense index `< COUNT` for per-reason counters.
    pub const fn as_index(self) -> usize {
        match self {
            ExitReason::Unknown(_) => Self::COUNT - 1,
            known => known.code() as usize,
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

/// Exit qualification of an EPT violation (SDM 28.2.1, table "Exit
/// Qualification for EPT Violations").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EptViolation {
    /// Bit 0: the access was a data read.
    pub read: bool,
    /// Bit 1: the access was a data write.
    pub write: bool,
    /// Bit 2: the access was an instruction fetch.
    pub fetch: bool,
    /// Bit 3: the guest-physical address was readable (AND of bit 0 of
    /// every EPT paging-structure entry on the walk).
    pub readable: bool,
    /// Bit 4: writable (AND of bit 1).
    pub writable: bool,
    /// Bit 5: executable (AND of bit 2; supervisor-mode execute with
    /// mode-based execute control).
    pub executable: bool,
    /// Bit 6: executable for user-mode linear addresses (mode-based execute control only).
    pub user_executable: bool,
    /// Bit 7: the guest linear-address field is valid.
    pub gla_valid: bool,
    /// Bit 8 (if `gla_valid`): the access was to the translation of a linear
    /// address; else to a guest paging-structure entry.
    pub translated: bool,
    /// Bit 12: NMI unblocking due to IRET (re-block NMIs before resuming
    /// when virtual NMIs are used).
    pub nmi_unblocking: bool,
    /// The raw qualification.
    pub raw: u64,
}

impl EptViolation {
    /// Decodes the exit qualification.
    pub const fn from_qualification(q: u64) -> Self {
        EptViolation {
            read: q & (1 << 0) != 0,
            write: q & (1 << 1) != 0,
            fetch: q & (1 << 2) != 0,
            readable: q & (1 << 3) != 0,
            writable: q & (1 << 4) != 0,
            executable: q & (1 << 5) != 0,
            user_executable: q & (1 << 6) != 0,
            gla_valid: q & (1 << 7) != 0,
            translated: q & (1 << 8) != 0,
            nmi_unblocking: q & (1 << 12) != 0,
            raw: q,
        }
    }

    /// Whether the walk found a present entry (any of R/W/X); with empty EPT
    /// tables a first touch is not present, a write to a write-protected
    /// (dirty-logged) page is present.
    pub const fn entry_present(&self) -> bool {
        self.readable || self.writable || self.executable || self.user_executable
    }
}

impl fmt::Display for EptViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        for (on, name) in [
            (self.read, "read"),
            (self.write, "write"),
            (self.fetch, "fetch"),
        ] {
            if on {
                write!(f, "{sep}{name}")?;
                sep = "+";
            }
        }
        if sep.is_empty() {
            f.write_str("no access")?;
        }
        let c = |on: bool, ch: char| if on { ch } else { '-' };
        write!(
            f,
            " (entry: {}{}{})",
            c(self.readable, 'r'),
            c(self.writable, 'w'),
            c(self.executable, 'x')
        )?;
        if self.gla_valid {
            f.write_str(if self.translated {
                ", linear-address access"
            } else {
                ", guest paging-structure access"
            })?;
        }
        if self.nmi_unblocking {
            f.write_str(", NMI unblocked by IRET")?;
        }
        Ok(())
    }
}

/// Direction of an I/O instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoDirection {
    /// OUT/OUTS (bit 3 = 0).
    Out,
    /// IN/INS (bit 3 = 1).
    In,
}

/// Exit qualification of an I/O instruction (SDM 28.2.1, table "Exit
/// Qualification for I/O Instructions").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoQualification {
    /// Access size in bytes: 1, 2 or 4 (bits 2:0 = size - 1).
    pub size: u8,
    /// Bit 3: direction.
    pub direction: IoDirection,
    /// Bit 4: string instruction (INS/OUTS).
    pub string: bool,
    /// Bit 5: REP prefixed.
    pub rep: bool,
    /// Bit 6: port given as an immediate (else in DX).
    pub immediate: bool,
    /// Bits 31:16: port number.
    pub port: u16,
}

impl IoQualification {
    /// Decodes the exit qualification.
    pub const fn from_qualification(q: u64) -> Self {
        IoQualification {
            size: (q & 0x7) as u8 + 1,
            direction: if q & (1 << 3) != 0 {
                IoDirection::In
            } else {
                IoDirection::Out
            },
            string: q & (1 << 4) != 0,
            rep: q & (1 << 5) != 0,
            immediate: q & (1 << 6) != 0,
            port: (q >> 16) as u16,
        }
    }

    /// Mask of the low `size` bytes, for the value in AL/AX/EAX.
    pub const fn value_mask(&self) -> u32 {
        match self.size {
            1 => 0xFF,
            2 => 0xFFFF,
            _ => 0xFFFF_FFFF,
        }
    }
}

impl fmt::Display for IoQualification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = match self.direction {
            IoDirection::In => "in",
            IoDirection::Out => "out",
        };
        write!(f, "{dir} port {:#06x} size {}", self.port, self.size)?;
        if self.string {
            f.write_str(" string")?;
        }
        if self.rep {
            f.write_str(" rep")?;
        }
        if self.immediate {
            f.write_str(" imm")?;
        }
        Ok(())
    }
}

/// General-purpose registers in the SDM's numbering (used by CR-access and
/// instruction-information fields): RAX=0, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Gpr {
    Rax = 0,
    Rcx = 1,
    Rdx = 2,
    Rbx = 3,
    Rsp = 4,
    Rbp = 5,
    Rsi = 6,
    Rdi = 7,
    R8 = 8,
    R9 = 9,
    R10 = 10,
    R11 = 11,
    R12 = 12,
    R13 = 13,
    R14 = 14,
    R15 = 15,
}

impl Gpr {
    /// All sixteen, in SDM order.
    pub const ALL: [Gpr; 16] = [
        Gpr::Rax,
        Gpr::Rcx,
        Gpr::Rdx,
        Gpr::Rbx,
        Gpr::Rsp,
        Gpr::Rbp,
        Gpr::Rsi,
        Gpr::Rdi,
        Gpr::R8,
        Gpr::R9,
        Gpr::R10,
        Gpr::R11,
        Gpr::R12,
        Gpr::R13,
        Gpr::R14,
        Gpr::R15,
    ];

    /// Register from the low 4 bits of `n`.
    pub const fn from_index(n: u8) -> Gpr {
        Self::ALL[(n & 0xF) as usize]
    }

    /// SDM index 0..15.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Lower-case name.
    pub const fn name(self) -> &'static str {
        const NAMES: [&str; 16] = [
            "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11",
            "r12", "r13", "r14", "r15",
        ];
        NAMES[self as usize]
    }
}

/// Access type of a control-register exit, bits 5:4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrAccessType {
    /// MOV to CR (0).
    MovToCr,
    /// MOV from CR (1).
    MovFromCr,
    /// CLTS (2).
    Clts,
    /// LMSW (3).
    Lmsw,
}

/// Exit qualification of a control-register access (SDM 28.2.1, table "Exit
/// Qualification for Control-Register Accesses").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrAccess {
    /// Bits 3:0: the control register (0, 3, 4 or 8; 0 for CLTS and LMSW).
    pub cr: u8,
    /// Bits 5:4: access type.
    pub access: CrAccessType,
    /// Bit 6 (LMSW only): the operand is in memory (else a register).
    pub lmsw_memory: bool,
    /// Bits 11:8 (MOV CR only): the general-purpose register.
    pub gpr: Gpr,
    /// Bits 31:16 (LMSW only): the LMSW source data.
    pub lmsw_source: u16,
}

impl CrAccess {
    /// Decodes the exit qualification.
    pub const fn from_qualification(q: u64) -> Self {
        CrAccess {
            cr: (q & 0xF) as u8,
            access: match (q >> 4) & 3 {
                0 => CrAccessType::MovToCr,
                1 => CrAccessType::MovFromCr,
                2 => CrAccessType::Clts,
                _ => CrAccessType::Lmsw,
            },
            lmsw_memory: q & (1 << 6) != 0,
            gpr: Gpr::from_index(((q >> 8) & 0xF) as u8),
            lmsw_source: (q >> 16) as u16,
        }
    }
}

impl fmt::Display for CrAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.access {
            CrAccessType::MovToCr => write!(f, "mov cr{}, {}", self.cr, self.gpr.name()),
            CrAccessType::MovFromCr => write!(f, "mov {}, cr{}", self.gpr.name(), self.cr),
            CrAccessType::Clts => f.write_str("clts"),
            CrAccessType::Lmsw => write!(
                f,
                "lmsw {:#06x}{}",
                self.lmsw_source,
                if self.lmsw_memory { " (memory)" } else { "" }
            ),
        }
    }
}

/// Interruption type, bits 10:8 of the interruption-information fields
/// (SDM 25.8.3 table "Format of the VM-Entry Interruption-Information Field").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum InterruptionType {
    ExternalInterrupt = 0,
    Reserved = 1,
    /// Non-maskable interrupt.
    Nmi = 2,
    HardwareException = 3,
    SoftwareInterrupt = 4,
    PrivilegedSoftwareException = 5,
    SoftwareException = 6,
    /// Other event (e.g. MTF on entry).
    OtherEvent = 7,
}

impl InterruptionType {
    const fn from_bits(b: u32) -> Self {
        match b & 7 {
            0 => InterruptionType::ExternalInterrupt,
            1 => InterruptionType::Reserved,
            2 => InterruptionType::Nmi,
            3 => InterruptionType::HardwareException,
            4 => InterruptionType::SoftwareInterrupt,
            5 => InterruptionType::PrivilegedSoftwareException,
            6 => InterruptionType::SoftwareException,
            _ => InterruptionType::OtherEvent,
        }
    }
}

/// Exception vectors (SDM Vol. 3A table "Protected-Mode Exceptions and Interrupts").
pub mod vector {
    /// Divide error.
    pub const DE: u8 = 0;
    /// Debug.
    pub const DB: u8 = 1;
    /// NMI.
    pub const NMI: u8 = 2;
    /// Breakpoint.
    pub const BP: u8 = 3;
    /// Overflow.
    pub const OF: u8 = 4;
    /// BOUND range exceeded.
    pub const BR: u8 = 5;
    /// Invalid opcode.
    pub const UD: u8 = 6;
    /// Device not available.
    pub const NM: u8 = 7;
    /// Double fault.
    pub const DF: u8 = 8;
    /// Invalid TSS.
    pub const TS: u8 = 10;
    /// Segment not present.
    pub const NP: u8 = 11;
    /// Stack-segment fault.
    pub const SS: u8 = 12;
    /// General protection.
    pub const GP: u8 = 13;
    /// Page fault.
    pub const PF: u8 = 14;
    /// x87 floating-point error.
    pub const MF: u8 = 16;
    /// Alignment check.
    pub const AC: u8 = 17;
    /// Machine check.
    pub const MC: u8 = 18;
    /// SIMD floating-point exception.
    pub const XM: u8 = 19;
    /// Virtualization exception.
    pub const VE: u8 = 20;
    /// Control-protection exception.
    pub const CP: u8 = 21;
}

/// Whether the exception with this vector pushes an error code in protected
/// mode (#DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP).
pub const fn exception_has_error_code(v: u8) -> bool {
    matches!(v, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21)
}

/// Mnemonic of an exception vector ("#GP"), or "" above 31.
pub const fn exception_mnemonic(v: u8) -> &'static str {
    const M: [&str; 32] = [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#CSO", "#TS", "#NP", "#SS",
        "#GP", "#PF", "#15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "#22", "#23", "#24", "#25",
        "#26", "#27", "#HV", "#VC", "#SX", "#31",
    ];
    if v < 32 {
        M[v as usize]
    } else {
        ""
    }
}

/// VM-exit interruption information, IDT-vectoring information and VM-entry
/// interruption information (SDM 25.8.3, 25.9.2, 25.9.3; same layout):
/// bits 7:0 vector, 10:8 type, 11 error code valid, 12 NMI unblocking due to
/// IRET (exit fields only), 31 valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterruptionInfo {
    /// Vector of the interrupt or exception.
    pub vector: u8,
    /// Interruption type.
    pub kind: InterruptionType,
    /// Bit 11: an error code is delivered (entry) / was pushed (exit); it is
    /// in the matching error-code field.
    pub error_code_valid: bool,
    /// Bit 12 (exit fields only): NMI unblocking due to IRET.
    pub nmi_unblocking: bool,
    /// Bit 31: the field is valid.
    pub valid: bool,
}

impl InterruptionInfo {
    /// Decodes the field.
    pub const fn from_raw(raw: u32) -> Self {
        InterruptionInfo {
            vector: raw as u8,
            kind: InterruptionType::from_bits(raw >> 8),
            error_code_valid: raw & (1 << 11) != 0,
            nmi_unblocking: raw & (1 << 12) != 0,
            valid: raw & (1 << 31) != 0,
        }
    }

    /// Encodes the field.
    pub const fn to_raw(&self) -> u32 {
        self.vector as u32
            | (self.kind as u32) << 8
            | (self.error_code_valid as u32) << 11
            | (self.nmi_unblocking as u32) << 12
            | (self.valid as u32) << 31
    }

    /// A valid hardware exception to inject. With `error_code`, also write the
    /// VM-entry exception error code field. VM entry requires "deliver error
    /// code" to be 0 when the guest has CR0.PE = 0 (real mode under
    /// unrestricted guest) and otherwise to match
    /// [`exception_has_error_code`] (SDM 27.2.1.3).
    pub const fn hardware_exception(vector: u8, error_code: bool) -> Self {
        InterruptionInfo {
            vector,
            kind: InterruptionType::HardwareException,
            error_code_valid: error_code,
            nmi_unblocking: false,
            valid: true,
        }
    }

    /// #GP with an error code, for a protected- or long-mode guest
    /// (error code usually 0).
    pub const fn gp() -> Self {
        Self::hardware_exception(vector::GP, true)
    }

    /// #UD (no error code).
    pub const fn ud() -> Self {
        Self::hardware_exception(vector::UD, false)
    }

    /// An external interrupt to inject.
    pub const fn external_interrupt(vector: u8) -> Self {
        InterruptionInfo {
            vector,
            kind: InterruptionType::ExternalInterrupt,
            error_code_valid: false,
            nmi_unblocking: false,
            valid: true,
        }
    }

    /// An NMI to inject (vector 2).
    pub const fn nmi() -> Self {
        InterruptionInfo {
            vector: vector::NMI,
            kind: InterruptionType::Nmi,
            error_code_valid: false,
            nmi_unblocking: false,
            valid: true,
        }
    }
}

impl fmt::Display for InterruptionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.valid {
            return f.write_str("(not valid)");
        }
        let kind = match self.kind {
            InterruptionType::ExternalInterrupt => "external interrupt",
            InterruptionType::Reserved => "reserved type",
            InterruptionType::Nmi => "NMI",
            InterruptionType::HardwareException => "hardware exception",
            InterruptionType::SoftwareInterrupt => "software interrupt",
            InterruptionType::PrivilegedSoftwareException => "privileged software exception",
            InterruptionType::SoftwareException => "software exception",
            InterruptionType::OtherEvent => "other event",
        };
        let is_exception = matches!(
            self.kind,
            InterruptionType::HardwareException
                | InterruptionType::SoftwareException
                | InterruptionType::PrivilegedSoftwareException
        );
        if is_exception {
            write!(f, "{} ", exception_mnemonic(self.vector))?;
        }
        write!(f, "vector {} {kind}", self.vector)?;
        if self.error_code_valid {
            f.write_str(", error code")?;
        }
        if self.nmi_unblocking {
            f.write_str(", NMI unblocked by IRET")?;
        }
        Ok(())
    }
}

/// Meaning of a VM-instruction error number (SDM 31.4 "VM Instruction Error
/// Numbers"), read from the VM-instruction error field after VMfailValid.
pub const fn vm_instruction_error_message(n: u32) -> &'static str {
    match n {
        0 => "no error",
        1 => "VMCALL executed in VMX root operation",
        2 => "VMCLEAR with invalid physical address",
        3 => "VMCLEAR with VMXON pointer",
        4 => "VMLAUNCH with non-clear VMCS",
        5 => "VMRESUME with non-launched VMCS",
        6 => "VMRESUME after VMXOFF (VMXOFF and VMXON between VMLAUNCH and VMRESUME)",
        7 => "VM entry with invalid control field(s)",
        8 => "VM entry with invalid host-state field(s)",
        9 => "VMPTRLD with invalid physical address",
        10 => "VMPTRLD with VMXON pointer",
        11 => "VMPTRLD with incorrect VMCS revision identifier",
        12 => "VMREAD/VMWRITE from/to unsupported VMCS component",
        13 => "VMWRITE to read-only VMCS component",
        15 => "VMXON executed in VMX root operation",
        16 => "VM entry with invalid executive-VMCS pointer",
        17 => "VM entry with non-launched executive VMCS",
        18 => {
            "VM entry with executive-VMCS pointer not VMXON pointer \
             (when attempting to deactivate the dual-monitor treatment of SMIs and SMM)"
        }
        19 => {
            "VMCALL with non-clear VMCS \
             (when attempting to activate the dual-monitor treatment of SMIs and SMM)"
        }
        20 => "VMCALL with invalid VM-exit control fields",
        22 => {
            "VMCALL with incorrect MSEG revision identifier \
             (when attempting to activate the dual-monitor treatment of SMIs and SMM)"
        }
        23 => "VMXOFF under dual-monitor treatment of SMIs and SMM",
        24 => {
            "VMCALL with invalid SMM-monitor features \
             (when attempting to activate the dual-monitor treatment of SMIs and SMM)"
        }
        25 => {
            "VM entry with invalid VM-execution control fields in executive VMCS \
             (when attempting to return from SMM)"
        }
        26 => "VM entry with events blocked by MOV SS",
        28 => "invalid operand to INVEPT/INVVPID",
        _ => "unknown VM-instruction error number",
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;

    #[test]
    fn exit_reason_round_trip_and_index() {
        let mut seen = [false; ExitReason::COUNT];
        for &r in ExitReason::ALL {
            assert_eq!(ExitReason::from_basic(r.code()), r);
            assert!(r.as_index() < ExitReason::COUNT - 1, "{r:?}");
            assert!(!seen[r.as_index()], "{r:?} shares an index");
            seen[r.as_index()] = true;
        }
        assert_eq!(ExitReason::ALL.len(), 77); // codes 0..=79 except the unused 35, 38, 42
        assert_eq!(ExitReason::from_basic(35), ExitReason::Unknown(35));
        assert_eq!(ExitReason::Unknown(35).as_index(), ExitReason::COUNT - 1);
        assert_eq!(ExitReason::Unknown(200).as_index(), ExitReason::COUNT - 1);
    }

    #[test]
    fn exit_reason_from_raw() {
        assert_eq!(ExitReason::from_raw(12), (ExitReason::Hlt, false));
        assert_eq!(ExitReason::from_raw(18), (ExitReason::Vmcall, false));
        assert_eq!(ExitReason::from_raw(48), (ExitReason::EptViolation, false));
        assert_eq!(ExitReason::from_raw(49), (ExitReason::EptMisconfig, false));
        assert_eq!(
            ExitReason::from_raw(0x8000_0021),
            (ExitReason::InvalidGuestState, true)
        );
        assert_eq!(
            ExitReason::from_raw(0x8000_0022),
            (ExitReason::MsrLoading, true)
        );
        // Bits 30:16 (e.g. bit 27 enclave mode, bit 29 from VMX root) don't change the reason.
        assert_eq!(
            ExitReason::from_raw((1 << 27) | 30),
            (ExitReason::IoInstruction, false)
        );
        assert_eq!(ExitReason::from_raw(69).0, ExitReason::Loadiwkey);
        assert_eq!(ExitReason::from_raw(0xFFFF).0, ExitReason::Unknown(0xFFFF));
        assert_eq!(
            format!("{}", ExitReason::EptViolation),
            "EPT violation (48)"
        );
        assert_eq!(
            format!("{}", ExitReason::Unknown(38)),
            "unknown exit reason (38)"
        );
        assert_eq!(ExitReason::Cpuid.name(), "CPUID");
    }

    #[test]
    fn ept_violation() {
        // Write to a read+execute page (dirty-log write protection), no linear address.
        let v = EptViolation::from_qualification(0x2A);
        assert!(v.write && !v.read && !v.fetch);
        assert!(v.readable && !v.writable && v.executable);
        assert!(v.entry_present());
        assert_eq!(format!("{v}"), "write (entry: r-x)");

        // First touch of an empty EPT: read, not present, linear address valid and translated.
        let v = EptViolation::from_qualification(0x181);
        assert!(v.read && !v.entry_present() && v.gla_valid && v.translated);
        assert_eq!(format!("{v}"), "read (entry: ---), linear-address access");

        // Guest page-walk access (bit 8 = 0) that reads and writes the A/D bits.
        let v = EptViolation::from_qualification(0x83);
        assert_eq!(
            format!("{v}"),
            "read+write (entry: ---), guest paging-structure access"
        );

        // Fetch with NMI unblocking.
        let v = EptViolation::from_qualification(0x1000 | 0x4 | 0x8);
        assert!(v.fetch && v.nmi_unblocking);
        assert_eq!(format!("{v}"), "fetch (entry: r--), NMI unblocked by IRET");
    }

    #[test]
    fn io_qualification() {
        // out dx, al with dx = 0x3f8 (serial port).
        let q = IoQualification::from_qualification(0x03F8_0000);
        assert_eq!(q.size, 1);
        assert_eq!(q.direction, IoDirection::Out);
        assert!(!q.string && !q.rep && !q.immediate);
        assert_eq!(q.port, 0x3F8);
        assert_eq!(q.value_mask(), 0xFF);
        assert_eq!(format!("{q}"), "out port 0x03f8 size 1");

        // in eax, 0x60 (immediate).
        let q = IoQualification::from_qualification(0x0060_0000 | 0x40 | 0x8 | 0x3);
        assert_eq!(q.size, 4);
        assert_eq!(q.direction, IoDirection::In);
        assert!(q.immediate);
        assert_eq!(q.port, 0x60);

        // rep outsw to dx = 0x1f0.
        let q = IoQualification::from_qualification(0x01F0_0000 | 0x20 | 0x10 | 0x1);
        assert_eq!(q.size, 2);
        assert!(q.string && q.rep);
        assert_eq!(format!("{q}"), "out port 0x01f0 size 2 string rep");

        // Port 0x8900 (Bochs shutdown), word access.
        assert_eq!(
            IoQualification::from_qualification(0x8900_0001).port,
            0x8900
        );
    }

    #[test]
    fn cr_access() {
        // mov cr3, rax
        let c = CrAccess::from_qualification(0x03);
        assert_eq!(c.cr, 3);
        assert_eq!(c.access, CrAccessType::MovToCr);
        assert_eq!(c.gpr, Gpr::Rax);
        assert_eq!(format!("{c}"), "mov cr3, rax");

        // mov r13, cr0 (from)
        let c = CrAccess::from_qualification((13 << 8) | (1 << 4));
        assert_eq!(c.access, CrAccessType::MovFromCr);
        assert_eq!(c.gpr, Gpr::R13);
        assert_eq!(c.gpr.index(), 13);
        assert_eq!(format!("{c}"), "mov r13, cr0");

        // mov cr4, rsp
        let c = CrAccess::from_qualification((4 << 8) | 4);
        assert_eq!((c.cr, c.gpr), (4, Gpr::Rsp));

        // clts
        assert_eq!(
            CrAccess::from_qualification(2 << 4).access,
            CrAccessType::Clts
        );

        // lmsw from memory with source data 0x0011.
        let c = CrAccess::from_qualification((0x0011 << 16) | (1 << 6) | (3 << 4));
        assert_eq!(c.access, CrAccessType::Lmsw);
        assert!(c.lmsw_memory);
        assert_eq!(c.lmsw_source, 0x11);
        assert_eq!(format!("{c}"), "lmsw 0x0011 (memory)");

        for (i, g) in Gpr::ALL.iter().enumerate() {
            assert_eq!(g.index(), i);
            assert_eq!(Gpr::from_index(i as u8), *g);
        }
        assert_eq!(Gpr::Rbx.name(), "rbx");
        assert_eq!(Gpr::R8.name(), "r8");
    }

    #[test]
    fn interruption_info() {
        assert_eq!(InterruptionInfo::gp().to_raw(), 0x8000_0B0D);
        assert_eq!(InterruptionInfo::ud().to_raw(), 0x8000_0306);
        assert_eq!(InterruptionInfo::nmi().to_raw(), 0x8000_0202);
        assert_eq!(
            InterruptionInfo::external_interrupt(0x20).to_raw(),
            0x8000_0020
        );
        assert_eq!(
            InterruptionInfo::hardware_exception(vector::PF, true).to_raw(),
            0x8000_0B0E
        );

        // A #PF during event delivery as seen in IDT-vectoring information.
        let i = InterruptionInfo::from_raw(0x8000_0B0E);
        assert!(i.valid && i.error_code_valid && !i.nmi_unblocking);
        assert_eq!(i.vector, 14);
        assert_eq!(i.kind, InterruptionType::HardwareException);
        assert_eq!(
            format!("{i}"),
            "#PF vector 14 hardware exception, error code"
        );

        // int3 in VM-exit interruption info, with NMI unblocking.
        let i = InterruptionInfo::from_raw(0x8000_1603);
        assert_eq!(i.kind, InterruptionType::SoftwareException);
        assert!(i.nmi_unblocking);
        assert_eq!(i.to_raw(), 0x8000_1603);

        assert_eq!(
            format!("{}", InterruptionInfo::from_raw(0x0B0D)),
            "(not valid)"
        );
        assert!(exception_has_error_code(vector::GP));
        assert!(!exception_has_error_code(vector::UD));
        assert_eq!(exception_mnemonic(13), "#GP");
        assert_eq!(exception_mnemonic(200), "");
    }

    #[test]
    fn vm_instruction_errors() {
        assert_eq!(
            vm_instruction_error_message(7),
            "VM entry with invalid control field(s)"
        );
        assert_eq!(
            vm_instruction_error_message(8),
            "VM entry with invalid host-state field(s)"
        );
        assert_eq!(
            vm_instruction_error_message(12),
            "VMREAD/VMWRITE from/to unsupported VMCS component"
        );
        assert_eq!(
            vm_instruction_error_message(28),
            "invalid operand to INVEPT/INVVPID"
        );
        for n in [14, 21, 27, 29, 1000] {
            assert_eq!(
                vm_instruction_error_message(n),
                "unknown VM-instruction error number"
            );
        }
        for n in (1..=28).filter(|n| ![14, 21, 27].contains(n)) {
            assert_ne!(
                vm_instruction_error_message(n),
                "unknown VM-instruction error number",
                "{n}"
            );
        }
    }
}
