//! One vCPU per core: its VMCS, registers, memslot cache and statistics; the
//! run loop that enters the guest and dispatches each exit.

use crate::exits::{self, Action, Stop};
use crate::memslot::{LookupStats, VcpuSlotCache};
use crate::vm::Vm;
use crate::vmx::entry::{vmx_enter, GuestRegs};
use crate::vmx::exit::{vm_instruction_error_message, ExitReason};
use crate::vmx::fields::{Vmcs32, VmcsAccess, VmcsNatural};
use crate::vmx::vmcs::{self, CurrentVmcs, VmcsConfig};
use crate::{mem, println, vmx};
use alloc::format;
use alloc::string::String;

/// Per-vCPU counters. Owned by the vCPU's core; read by the boot core only
/// after the vCPU has stopped.
#[derive(Clone)]
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

pub struct Vcpu<'a> {
    pub id: u32,
    pub vm: &'a Vm,
    pub regs: GuestRegs,
    pub vmcs: CurrentVmcs,
    /// This vCPU's own last-used memslot index: on this core's stack, on its
    /// own cache line, never touched by another core.
    pub slot_cache: VcpuSlotCache,
    pub stats: VcpuStats,
    pub guest_report: Option<(u64, u64)>,
    /// Console output not yet ended by a newline.
    pub line: [u8; 160],
    pub line_len: usize,
}

impl Vcpu<'_> {
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

    /// Queues a hardware exception for the next VM entry.
    pub fn inject(
        &mut self,
        info: crate::vmx::exit::InterruptionInfo,
        error_code: u32,
    ) -> Result<(), Stop> {
        self.vmcs
            .write32(Vmcs32::VmEntryInterruptionInfo, info.to_raw())?;
        if info.error_code_valid {
            self.vmcs
                .write32(Vmcs32::VmEntryExceptionErrorCode, error_code)?;
        }
        Ok(())
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

    pub fn flush_line(&mut self) {
        let text = String::from_utf8_lossy(&self.line[..self.line_len]);
        println!("[vcpu{}] {}", self.id, text);
        self.line_len = 0;
    }
}

fn fatal(what: String) -> Stop {
    Stop::Fatal(what)
}

/// Prints the VMCS (after a failed entry), for whoever debugs it.
fn dump_vmcs() {
    let mut s = String::new();
    let _ = vmx::fields::dump(&CurrentVmcs, &mut s);
    println!("{s}");
}

/// Turns VMX on for this core, sets up a VMCS for vCPU `id` and runs it to
/// the end. Never panics on guest behaviour: every way a guest can stop ends
/// in a report.
pub fn run(vm: &Vm, id: u32, cpu: usize) -> VcpuReport {
    let mut stats = VcpuStats::new();
    let mut guest_report = None;
    let stop = match setup_and_run(vm, id, cpu, &mut stats, &mut guest_report) {
        Ok(s) | Err(s) => s,
    };
    if matches!(stop, Stop::Contained { .. } | Stop::Fatal(_)) {
        println!("vcpu{id}: {stop}");
    }
    VcpuReport {
        id,
        stop,
        stats,
        guest_report,
    }
}

fn setup_and_run(
    vm: &Vm,
    id: u32,
    cpu: usize,
    stats_out: &mut VcpuStats,
    report_out: &mut Option<(u64, u64)>,
) -> Result<Stop, Stop> {
    let caps = &vm.caps;
    if cpu != 0 {
        // The boot core turned VMX on before building the VM.
        let vmxon = mem::alloc_zeroed(1).ok_or_else(|| fatal("out of memory for VMXON".into()))?;
        // SAFETY: a fresh frame of ours, mapped at the physical-memory offset.
        let word = unsafe { &mut *(mem::phys_to_virt(vmxon) as *mut u32) };
        vmx::on::enable(caps, vmxon, word).map_err(|e| fatal(format!("{e}")))?;
    }
    let vmcs_frame =
        mem::alloc_zeroed(1).ok_or_else(|| fatal("out of memory for the VMCS".into()))?;
    // SAFETY: as above.
    let word = unsafe { &mut *(mem::phys_to_virt(vmcs_frame) as *mut u32) };
    vmcs::load(caps, vmcs_frame, word).map_err(|e| fatal(e.into()))?;

    let mut v = Vcpu {
        id,
        vm,
        regs: GuestRegs::default(),
        vmcs: CurrentVmcs,
        slot_cache: VcpuSlotCache::new(),
        stats: VcpuStats::new(),
        guest_report: None,
        line: [0; 160],
        line_len: 0,
    };
    let cfg = VmcsConfig {
        controls: vm.controls,
        eptp: vm.ept.eptp(),
        msr_bitmap: vm.msr_bitmap,
        io_bitmap_a: vm.io_bitmaps.0,
        io_bitmap_b: vm.io_bitmaps.1,
        vpid: (id + 1) as u16,
        cpu,
    };
    vmcs::write_controls_and_host(&mut v.vmcs, caps, &cfg)?;
    let state = vm.initial_state(id);
    vmcs::write_guest_state(&mut v.vmcs, caps, &vm.controls, &state)?;
    v.regs.rdi = state.rdi;
    // Guest-physical mappings of an earlier EPT with the same root may be
    // cached (SDM 29.4.3): start clean.
    vmcs::invept(vm.ept.eptp(), vm.invept_single);

    let start = crate::arch::rdtsc();
    let mut launched = 0;
    let mut ept_gen = 0;
    let stop = loop {
        crate::dirtylog::before_entry(&v, &mut ept_gen);
        // SAFETY: the VMCS is current and fully written; `regs` lives across
        // the call.
        let rc = unsafe { vmx_enter(&mut v.regs, launched) };
        if rc != 0 {
            let err = v.vmcs.read32(Vmcs32::VmInstructionError).unwrap_or(0);
            dump_vmcs();
            break fatal(format!(
                "VM entry failed: {} (VM-instruction error {err}: {})",
                if launched == 0 {
                    "VMLAUNCH"
                } else {
                    "VMRESUME"
                },
                vm_instruction_error_message(err)
            ));
        }
        launched = 1;
        let raw = v.vmcs.read32(Vmcs32::ExitReason)?;
        let (reason, entry_failed) = ExitReason::from_raw(raw);
        v.stats.exits[reason.as_index()] += 1;
        if entry_failed {
            let q = v.vmcs.read_nat(VmcsNatural::ExitQualification).unwrap_or(0);
            dump_vmcs();
            break fatal(format!(
                "VM entry failed while loading guest state: {reason}, qualification {q:#x}"
            ));
        }
        match exits::dispatch(&mut v, reason) {
            Ok(Action::Resume) => {}
            Err(stop) => break stop,
        }
    };
    v.stats.cycles = crate::arch::rdtsc().wrapping_sub(start);
    crate::dirtylog::vcpu_stopped(id);
    if v.line_len > 0 {
        v.flush_line();
    }
    v.stats.lookups = v.slot_cache.stats;
    *stats_out = v.stats.clone();
    *report_out = v.guest_report;
    Ok(stop)
}
