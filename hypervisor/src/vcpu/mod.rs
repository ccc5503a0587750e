//! A vCPU: its registers, its VMCS (through [`Hw`]), its own memslot cache
//! and its statistics; how an exit handler's work ends ([`Action`], [`Stop`]).
//!
//! Generic over [`Hw`], the VMCS and the few per-core instructions an exit
//! handler needs, so that every handler runs in host tests against a mock.
//! The run loop that enters the guest is kernel-only and lives in `run`.

pub mod inject;
mod mode;

use crate::devices::lapic::ApicBase;
use crate::mm::guest_mem::GuestMem;
use crate::mm::live::ReadGuard;
use crate::mm::memslot::{LookupStats, Memslots, VcpuSlotCache};
use crate::mm::HostMemory;
use crate::vm::{Counters, Vm};
use crate::vmx::exit::{vector, ExitReason, InterruptionInfo, InterruptionType};
use crate::vmx::fields::{Vmcs32, VmcsAccess, VmcsError, VmcsNatural};
use crate::x86::state::Gprs;
use crate::x86::CR0_PE;
use alloc::format;
use alloc::string::String;
use core::fmt;

/// The VMCS of the running vCPU and the per-core instructions exit handlers
/// use. The kernel implements it with VMREAD/VMWRITE/INVEPT/RDMSR/WRMSR;
/// tests with a mock that records what was done.
pub trait Hw: VmcsAccess {
    /// Drops cached guest-physical translations of the EPT `eptp` (INVEPT,
    /// single-context where supported, else global).
    fn flush_guest_physical(&mut self, eptp: u64, single_context: bool);
    /// The host TSC.
    fn rdtsc(&self) -> u64;
    /// RDMSR of an MSR that goes straight to this core's hardware.
    fn read_msr(&self, msr: u32) -> u64;
    /// WRMSR of such an MSR; the value was checked where the CPU would #GP.
    fn write_msr(&mut self, msr: u32, value: u64);
    /// Ends the host interrupt acknowledged on the last exit (local APIC EOI).
    fn host_eoi(&mut self);
    /// Drops the linear translations cached for `vpid` (INVVPID,
    /// single-context where supported, else all-context).
    fn flush_guest_linear(&mut self, vpid: u16, single_context: bool);
    /// Loads XCR0 on this core (XSETBV; the value was checked). VM exits do
    /// not switch XCR0 and the host uses no extended state, so the guest's
    /// value simply stays on its core.
    fn set_xcr0(&mut self, value: u64);
    /// Sets the guest's CR2 for the next VM entry (a #PF being injected).
    /// The VMCS has no CR2 field: VM entry and exit leave the register alone
    /// (SDM 27.3, 28.3), so the guest's CR2 is this core's real CR2.
    fn set_guest_cr2(&mut self, value: u64);
}

/// What an exit handler does next when the vCPU goes on.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Resume,
}

/// Why a vCPU stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// The guest asked to stop (HC_SHUTDOWN) with this status.
    Shutdown { status: u64 },
    /// The guest did something it may not; it was stopped, the host is fine.
    Contained { what: &'static str, detail: String },
    /// The hypervisor could not go on with this vCPU (a bug, or no memory).
    Fatal(String),
    /// The guest wrote `code` to isa-debug-exit (0 = pass); the VM ended.
    GuestExit { code: u32 },
    /// The guest reset the machine (`cause`: the port, or a triple fault);
    /// the VM ended.
    Reset { cause: String },
    /// The guest powered the machine off (ACPI S5); the VM ended.
    PowerOff,
    /// The watchdog: a vCPU made no VM exit for too long (`detail`: which,
    /// where, in what mode); the VM ended.
    Watchdog { detail: String },
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::Shutdown { status } => write!(f, "shutdown, status {status}"),
            Stop::Contained { what, detail } => write!(f, "CONTAINED: {what}: {detail}"),
            Stop::Fatal(s) => write!(f, "FATAL: {s}"),
            Stop::GuestExit { code } => write!(f, "guest exit code {code} ({code:#x})"),
            Stop::Reset { cause } => write!(f, "guest requested reset ({cause})"),
            Stop::PowerOff => write!(f, "guest powered off (ACPI S5)"),
            Stop::Watchdog { detail } => write!(f, "WATCHDOG: {detail}"),
        }
    }
}

impl From<VmcsError> for Stop {
    fn from(e: VmcsError) -> Self {
        Stop::Fatal(format!("{e}"))
    }
}

/// Per-vCPU counters. Owned by the vCPU's core; read by the boot core only
/// after the vCPU has stopped.
#[derive(Clone, Debug)]
pub struct VcpuStats {
    pub exits: [u64; ExitReason::COUNT],
    /// EPT leaves this vCPU installed.
    pub ept_mapped: u64,
    /// EPT violations another vCPU had already resolved.
    pub ept_spurious: u64,
    /// Write faults on write-protected (dirty-logged) pages.
    pub dirty_faults: u64,
    pub lookups: LookupStats,
    /// TSC cycles from first entry to stop (emulated under Bochs).
    pub cycles: u64,
}

impl VcpuStats {
    pub const fn new() -> Self {
        VcpuStats {
            exits: [0; ExitReason::COUNT],
            ept_mapped: 0,
            ept_spurious: 0,
            dirty_faults: 0,
            lookups: LookupStats::new(),
            cycles: 0,
        }
    }
    pub fn total_exits(&self) -> u64 {
        self.exits.iter().sum()
    }
}

impl Default for VcpuStats {
    fn default() -> Self {
        Self::new()
    }
}

/// How a vCPU's run ended, and what it did.
pub struct VcpuReport {
    pub id: u32,
    pub stop: Stop,
    pub stats: VcpuStats,
    /// The guest's last HC_REPORT: (status, value).
    pub guest_report: Option<(u64, u64)>,
}

impl VcpuReport {
    /// Success: the guest shut down with status 0 (hypercall,
    /// isa-debug-exit or ACPI power-off) and reported no failure.
    pub fn ok(&self) -> bool {
        matches!(
            self.stop,
            Stop::Shutdown { status: 0 } | Stop::GuestExit { code: 0 } | Stop::PowerOff
        ) && self.guest_report.is_none_or(|(s, _)| s == 0)
    }
}

/// The longest console line a vCPU buffers before it is printed anyway:
/// the same as the UART's.
use crate::devices::serial::LINE_MAX;

pub struct Vcpu<'a, H: Hw, M: HostMemory> {
    pub id: u32,
    pub vm: &'a Vm<M>,
    pub regs: Gprs,
    pub vmcs: H,
    /// This vCPU's own last-used memslot index: on this core's stack, on its
    /// own cache line, never touched by another core.
    pub slot_cache: VcpuSlotCache,
    pub stats: VcpuStats,
    pub guest_report: Option<(u64, u64)>,
    /// Console output (hypercall) not yet ended by a newline.
    line: [u8; LINE_MAX],
    line_len: usize,
    /// The last flush generation this vCPU serviced (`vm::requests`).
    pub flush_seen: u64,
    /// The guest's XCR0 (loaded on this vCPU's core by XSETBV).
    pub xcr0: u64,
    /// IA32_APIC_BASE: where this vCPU's local APIC is, and its mode.
    pub apic_base: ApicBase,
    /// The memslot read section of the exit being handled (`mm::live`):
    /// open from the start of `exits::dispatch` to its end, never while
    /// the guest runs or the vCPU waits.
    section: Option<ReadGuard<'a>>,
    /// The TSC at this vCPU's last exit other than a timer's (watchdog).
    pub last_progress: u64,
    /// The watchdog time in TSC ticks (0 = off).
    pub watchdog_tsc: u64,
}

impl<'a, H: Hw, M: HostMemory> Vcpu<'a, H, M> {
    pub fn new(id: u32, vm: &'a Vm<M>, vmcs: H) -> Self {
        Vcpu {
            id,
            vm,
            regs: Gprs::default(),
            vmcs,
            slot_cache: VcpuSlotCache::new(),
            stats: VcpuStats::new(),
            guest_report: None,
            line: [0; LINE_MAX],
            line_len: 0,
            flush_seen: 0,
            xcr0: 1,
            apic_base: ApicBase::new(id == 0),
            section: None,
            last_progress: 0,
            watchdog_tsc: 0,
        }
    }

    pub fn rip(&self) -> u64 {
        self.vmcs.read_nat(VmcsNatural::GuestRip).unwrap_or(0)
    }

    /// General-purpose register `i` in the SDM's order (4 = RSP, in the VMCS).
    pub fn gpr(&mut self, i: u8) -> Result<u64, Stop> {
        match self.regs.gpr_mut(i) {
            Some(r) => Ok(*r),
            None => Ok(self.vmcs.read_nat(VmcsNatural::GuestRsp)?),
        }
    }

    pub fn set_gpr(&mut self, i: u8, value: u64) -> Result<(), Stop> {
        match self.regs.gpr_mut(i) {
            Some(r) => *r = value,
            None => self.vmcs.write_nat(VmcsNatural::GuestRsp, value)?,
        }
        Ok(())
    }

    /// Moves RIP past the instruction that exited.
    pub fn skip_instruction(&mut self) -> Result<(), Stop> {
        let len = self.vmcs.read32(Vmcs32::VmExitInstructionLength)?;
        let rip = self.rip();
        self.vmcs
            .write_nat(VmcsNatural::GuestRip, rip.wrapping_add(len.into()))?;
        Ok(())
    }

    /// Queues an event for the next VM entry. A hardware exception carries
    /// its error code only where the guest's mode delivers one: never in
    /// real mode (SDM 27.2.1.3 refuses the entry otherwise, and a real-mode
    /// CPU pushes none).
    ///
    /// If an event is already queued (one whose delivery an exit cut short,
    /// see [`Self::requeue_vectoring_event`]), a new exception combines with
    /// it as the SDM's table "Conditions for Generating a Double Fault" says
    /// (6.15, interrupt 8): two contributory exceptions, or a page fault
    /// followed by a contributory one or a page fault, make #DF(0); a fault
    /// while delivering #DF is a triple fault (the VM is reset); otherwise
    /// the new exception is delivered.
    pub fn inject(&mut self, info: InterruptionInfo, error_code: u32) -> Result<(), Stop> {
        let mut info = info;
        let mut error_code = error_code;
        let pending =
            InterruptionInfo::from_raw(self.vmcs.read32(Vmcs32::VmEntryInterruptionInfo)?);
        if pending.valid
            && pending.kind == InterruptionType::HardwareException
            && info.kind == InterruptionType::HardwareException
        {
            let contributory = |v: u8| matches!(v, 0 | 10 | 11 | 12 | 13);
            let (first, second) = (pending.vector, info.vector);
            if first == vector::DF {
                return Err(self.reset(String::from(
                    "triple fault: an exception while delivering #DF",
                )));
            }
            if (contributory(first) && contributory(second))
                || (first == vector::PF && (second == vector::PF || contributory(second)))
            {
                info = InterruptionInfo::hardware_exception(vector::DF, true);
                error_code = 0;
            }
        }
        if info.error_code_valid && self.guest_cr0()? & CR0_PE == 0 {
            info.error_code_valid = false;
        }
        self.queue(info, error_code)
    }

    /// Writes the VM-entry event fields: the information, the error code if
    /// it has one, and for a software interrupt or exception the length of
    /// the instruction that raised it (SDM 27.6.1.1).
    fn queue(&mut self, info: InterruptionInfo, error_code: u32) -> Result<(), Stop> {
        self.vmcs
            .write32(Vmcs32::VmEntryInterruptionInfo, info.to_raw())?;
        if info.error_code_valid {
            self.vmcs
                .write32(Vmcs32::VmEntryExceptionErrorCode, error_code)?;
        }
        if matches!(
            info.kind,
            InterruptionType::SoftwareInterrupt
                | InterruptionType::PrivilegedSoftwareException
                | InterruptionType::SoftwareException
        ) {
            let len = self.vmcs.read32(Vmcs32::VmExitInstructionLength)?;
            self.vmcs.write32(Vmcs32::VmEntryInstructionLength, len)?;
        }
        Ok(())
    }

    /// The guest reset the machine (a triple fault): every vCPU stops.
    pub fn reset(&self, cause: String) -> Stop {
        self.vm.events.request_reset();
        self.vm.requests.kick_others(self.id);
        Stop::Reset { cause }
    }

    /// Queues #GP(0) and resumes: the guest did what a CPU refuses.
    pub fn inject_gp(&mut self) -> Result<Action, Stop> {
        self.inject(InterruptionInfo::gp(), 0)?;
        Ok(Action::Resume)
    }

    /// Queues #UD and resumes.
    pub fn inject_ud(&mut self) -> Result<Action, Stop> {
        self.inject(InterruptionInfo::ud(), 0)?;
        Ok(Action::Resume)
    }

    /// After every exit: if the exit interrupted the delivery of an event
    /// (IDT-vectoring information valid, SDM 28.2.4), queue that event again
    /// so that it is delivered on the next entry, as KVM's
    /// `vmx_complete_interrupts` does. A software interrupt or exception is
    /// re-delivered with the instruction length the exit reported (SDM
    /// 27.6.1.1); an NMI whose delivery was cut short is not blocked.
    /// Otherwise the entry field is cleared, so that nothing is delivered
    /// twice.
    pub fn requeue_vectoring_event(&mut self) -> Result<(), Stop> {
        let raw = self.vmcs.read32(Vmcs32::IdtVectoringInfo)?;
        let info = InterruptionInfo::from_raw(raw);
        if !info.valid {
            self.vmcs.write32(Vmcs32::VmEntryInterruptionInfo, 0)?;
            return Ok(());
        }
        let again = InterruptionInfo {
            nmi_unblocking: false,
            ..info
        };
        let code = if info.error_code_valid {
            self.vmcs.read32(Vmcs32::IdtVectoringErrorCode)?
        } else {
            0
        };
        self.queue(again, code)?;
        if info.kind == InterruptionType::Nmi {
            // The NMI was not delivered: it does not block NMIs yet.
            let state = self.vmcs.read32(Vmcs32::GuestInterruptibilityState)?;
            self.vmcs
                .write32(Vmcs32::GuestInterruptibilityState, state & !(1 << 3))?;
        }
        Ok(())
    }

    /// Stops the vCPU with a containment report naming the guest RIP.
    pub fn contain(&self, what: &'static str, detail: String) -> Stop {
        Stop::Contained {
            what,
            detail: format!("{detail} rip={:#x}", self.rip()),
        }
    }

    /// Opens this exit's memslot read section: until [`Self::end_section`],
    /// a memslot update waits before it reuses the array read here.
    pub fn begin_section(&mut self) {
        self.section = Some(self.vm.slots.read(self.id as usize));
    }

    /// Closes the read section (at the end of the exit, or before the vCPU
    /// waits for something, so that no update waits on it).
    pub fn end_section(&mut self) {
        self.section = None;
    }

    /// The memslots of the current read section.
    ///
    /// # Panics
    /// Outside a read section: that is a hypervisor bug (an update could
    /// be reusing the array), never guest behaviour.
    pub fn slots(&self) -> &'a Memslots {
        match &self.section {
            Some(g) => g.slots(),
            None => panic!("vCPU {} read the memslots outside an exit", self.id),
        }
    }

    /// Guest memory through the current read section's memslots.
    pub fn guest_mem(&self) -> GuestMem<'a, M> {
        GuestMem::new(self.slots(), &self.vm.mem)
    }

    /// Sends every other vCPU in `kicks` out of the guest, so that it takes
    /// what was just made pending for it.
    pub fn kick(&self, kicks: crate::machine::irq::KickSet) {
        kicks
            .iter()
            .filter(|&id| id != self.id)
            .for_each(|id| self.vm.requests.kick(id));
    }

    /// This vCPU's counters now, for a workload's phases.
    pub fn counters(&self) -> Counters {
        Counters {
            exits: self.stats.total_exits(),
            ept_violations: self.stats.exits[ExitReason::EptViolation.as_index()],
            lookups: self.slot_cache.stats(
                self.stats.exits[ExitReason::EptViolation.as_index()],
                self.vm.cache_mode,
            ),
        }
    }

    /// Services pending cross-vCPU requests (before each VM entry, and while
    /// waiting outside the guest).
    pub fn service_requests(&mut self) {
        let (eptp, single) = (self.vm.ept.eptp(), self.vm.invept_single);
        let vmcs = &mut self.vmcs;
        self.vm.requests.service(self.id, &mut self.flush_seen, || {
            vmcs.flush_guest_physical(eptp, single)
        });
    }

    /// Console output from the guest, one line at a time, prefixed by the vCPU.
    pub fn console_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' || self.line_len == self.line.len() {
                self.flush_line();
                if b == b'\n' {
                    continue;
                }
            }
            if b != b'\r' {
                self.line[self.line_len] = b;
                self.line_len += 1;
            }
        }
    }

    /// Prints a partial console line (before a report, or at the end).
    pub fn flush_line(&mut self) {
        if self.line_len > 0 {
            let text = String::from_utf8_lossy(&self.line[..self.line_len]);
            self.vm.out.line(Some(self.id), &text);
            self.line_len = 0;
        }
    }
}
