//! A vCPU: its registers, its VMCS (through [`Hw`]), its own memslot cache
//! and its statistics; how an exit handler's work ends ([`Action`], [`Stop`]).
//!
//! Generic over [`Hw`], the VMCS and the few per-core instructions an exit
//! handler needs, so that every handler runs in host tests against a mock.
//! The run loop that enters the guest is kernel-only and lives in `run`.

use crate::mm::memslot::{LookupStats, VcpuSlotCache};
use crate::mm::HostMemory;
use crate::vm::{Counters, Vm};
use crate::vmx::exit::{ExitReason, InterruptionInfo};
use crate::vmx::fields::{Vmcs32, VmcsAccess, VmcsError, VmcsNatural};
use crate::x86::state::Gprs;
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
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::Shutdown { status } => write!(f, "shutdown, status {status}"),
            Stop::Contained { what, detail } => write!(f, "CONTAINED: {what}: {detail}"),
            Stop::Fatal(s) => write!(f, "FATAL: {s}"),
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
    /// Success: the guest shut down with status 0 and reported no failure.
    pub fn ok(&self) -> bool {
        matches!(self.stop, Stop::Shutdown { status: 0 })
            && self.guest_report.is_none_or(|(s, _)| s == 0)
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

    /// Queues an event for the next VM entry.
    pub fn inject(&mut self, info: InterruptionInfo, error_code: u32) -> Result<(), Stop> {
        self.vmcs
            .write32(Vmcs32::VmEntryInterruptionInfo, info.to_raw())?;
        if info.error_code_valid {
            self.vmcs
                .write32(Vmcs32::VmEntryExceptionErrorCode, error_code)?;
        }
        Ok(())
    }

    /// Queues #GP(0) and resumes: the guest did what a CPU refuses.
    pub fn inject_gp(&mut self) -> Result<Action, Stop> {
        self.inject(InterruptionInfo::gp(), 0)?;
        Ok(Action::Resume)
    }

    /// Stops the vCPU with a containment report naming the guest RIP.
    pub fn contain(&self, what: &'static str, detail: String) -> Stop {
        Stop::Contained {
            what,
            detail: format!("{detail} rip={:#x}", self.rip()),
        }
    }

    /// This vCPU's counters now, for a workload's phases.
    pub fn counters(&self) -> Counters {
        Counters {
            exits: self.stats.total_exits(),
            ept_violations: self.stats.exits[ExitReason::EptViolation.as_index()],
            lookups: self.slot_cache.stats(
                self.stats.exits[ExitReason::EptViolation.as_index()],
                self.vm.slots.mode(),
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
