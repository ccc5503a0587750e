//! The vCPU run loop (kernel-only): VMX on for this core, a VMCS for the
//! vCPU, then enter the guest and dispatch each exit until the vCPU stops.
//! Only `main` calls it; nothing in the library imports it.

use crate::arch;
use crate::exits;
use crate::mm::host::{self as mem, KernelMemory};
use crate::println;
use crate::vcpu::{Action, Hw, Stop, Vcpu, VcpuReport};
use crate::vm::Vm;
use crate::vmx;
use crate::vmx::exit::{vm_instruction_error_message, ExitReason};
use crate::vmx::fields::{Vmcs32, VmcsAccess, VmcsError, VmcsNatural};
use crate::vmx::hw::entry::vmx_enter;
use crate::vmx::hw::vmcs::{self, CurrentVmcs, VmcsConfig};
use alloc::format;
use alloc::string::String;
use x86_64::registers::model_specific::Msr;

/// This core's VMCS and instructions.
pub struct CoreHw(CurrentVmcs);

impl VmcsAccess for CoreHw {
    fn read_raw(&self, encoding: u32) -> Result<u64, VmcsError> {
        self.0.read_raw(encoding)
    }
    fn write_raw(&mut self, encoding: u32, value: u64) -> Result<(), VmcsError> {
        self.0.write_raw(encoding, value)
    }
}

impl Hw for CoreHw {
    fn flush_guest_physical(&mut self, eptp: u64, single_context: bool) {
        vmcs::invept(eptp, single_context);
    }
    fn rdtsc(&self) -> u64 {
        arch::rdtsc()
    }
    fn read_msr(&self, msr: u32) -> u64 {
        // SAFETY: exits/msr.rs passes only MSRs of its pass-through list,
        // which exist on every x86_64 CPU with VMX; reading has no side effects.
        unsafe { Msr::new(msr).read() }
    }
    fn write_msr(&mut self, msr: u32, value: u64) {
        // SAFETY: as above; the host never uses these MSRs (no SYSCALL,
        // SWAPGS or RDTSCP) and the value was checked where a CPU #GPs.
        unsafe { Msr::new(msr).write(value) }
    }
    fn host_eoi(&mut self) {
        arch::smp::eoi();
    }
}

type KernelVcpu<'a> = Vcpu<'a, CoreHw, KernelMemory>;

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
pub fn run(vm: &Vm<KernelMemory>, id: u32, cpu: usize) -> VcpuReport {
    let mut v = Vcpu::new(id, vm, CoreHw(CurrentVmcs));
    let stop = match setup_and_run(&mut v, cpu) {
        Ok(s) | Err(s) => s,
    };
    vm.vcpu_stopped(id);
    v.flush_line();
    if matches!(stop, Stop::Contained { .. } | Stop::Fatal(_)) {
        println!("vcpu{id}: {stop}");
    }
    v.stats.lookups = v.counters().lookups;
    VcpuReport {
        id,
        stop,
        stats: v.stats.clone(),
        guest_report: v.guest_report,
    }
}

fn setup_and_run(v: &mut KernelVcpu, cpu: usize) -> Result<Stop, Stop> {
    let vm = v.vm;
    let caps = &vm.caps;
    if cpu != 0 {
        // The boot core turned VMX on before building the VM.
        let vmxon = mem::alloc_zeroed(1).ok_or_else(|| fatal("out of memory for VMXON".into()))?;
        // SAFETY: a fresh frame of ours, mapped at the physical-memory offset.
        let word = unsafe { &mut *(mem::phys_to_virt(vmxon) as *mut u32) };
        vmx::hw::on::enable(caps, vmxon, word).map_err(|e| fatal(format!("{e}")))?;
    }
    let vmcs_frame =
        mem::alloc_zeroed(1).ok_or_else(|| fatal("out of memory for the VMCS".into()))?;
    // SAFETY: as above.
    let word = unsafe { &mut *(mem::phys_to_virt(vmcs_frame) as *mut u32) };
    vmcs::load(caps, vmcs_frame, word).map_err(|e| fatal(e.into()))?;

    let cfg = VmcsConfig {
        controls: vm.controls,
        eptp: vm.ept.eptp(),
        msr_bitmap: vm.msr_bitmap,
        io_bitmap_a: vm.io_bitmaps.0,
        io_bitmap_b: vm.io_bitmaps.1,
        vpid: (v.id + 1) as u16,
        cpu,
    };
    vmcs::write_controls_and_host(&mut v.vmcs, caps, &cfg)?;
    let state = vm.initial_state(v.id);
    vmcs::write_guest_state(&mut v.vmcs, caps, &vm.controls, &state)?;
    v.regs = state.gprs;
    // Guest-physical mappings of an earlier EPT with the same root may be
    // cached (SDM 29.4.3): start clean.
    vmcs::invept(vm.ept.eptp(), vm.invept_single);

    let start = arch::rdtsc();
    let mut launched = 0;
    let stop = loop {
        v.service_requests();
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
        match exits::dispatch(v, reason) {
            Ok(Action::Resume) => {}
            Err(stop) => break stop,
        }
    };
    v.stats.cycles = arch::rdtsc().wrapping_sub(start);
    Ok(stop)
}
