//! The vCPU run loop (kernel-only): VMX on for this core, a VMCS for the
//! vCPU, then enter the guest and dispatch each exit until the vCPU stops.
//! Only `main` calls it; nothing in the library imports it.

use crate::arch;
use crate::exits;
use crate::machine::irq::{CpuEvent, RunState};
use crate::mm::host::{self as mem, KernelMemory};
use crate::println;
use crate::vcpu::inject;
use crate::vcpu::{Action, Hw, Stop, Vcpu, VcpuReport};
use crate::vm::Vm;
use crate::vmx;
use crate::vmx::exit::{vm_instruction_error_message, ExitReason};
use crate::vmx::fields::{Vmcs32, VmcsAccess, VmcsError, VmcsNatural};
use crate::vmx::hw::entry::vmx_enter;
use crate::vmx::hw::vmcs::{self, CurrentVmcs, VmcsConfig};
use crate::x86::state::GuestState;
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
    fn flush_guest_linear(&mut self, vpid: u16, single_context: bool) {
        vmcs::invvpid(vpid, single_context);
    }
    fn set_xcr0(&mut self, value: u64) {
        arch::set_xcr0(value);
    }
    fn set_guest_cr2(&mut self, value: u64) {
        // Nothing the host runs between here and VM entry touches CR2: the
        // host never takes a page fault it survives (arch::idt), so the
        // value reaches the guest as written.
        // SAFETY: CR2 only reports page-fault addresses; writing it has no
        // other effect on the host.
        unsafe {
            core::arch::asm!("mov cr2, {}", in(reg) value, options(nostack, preserves_flags))
        };
    }
}

/// The host TSC when the first vCPU started: every vCPU's TSC counts from 0
/// there, together (one offset for all, until a guest writes IA32_TSC).
static TSC_ZERO: spin::Once<u64> = spin::Once::new();

type KernelVcpu<'a> = Vcpu<'a, CoreHw, KernelMemory>;

/// How long a parked AP sleeps before it looks again for the VM's end
/// (a SIPI kicks it at once).
const PARK_NS: u64 = 10_000_000;

/// An AP waiting for a start-up IPI: until the router hands it a SIPI
/// (then the state the SIPI starts it in: real mode at vector × 4096, the
/// rest as after INIT, SDM 9.1.1 table 9-1), or until the VM ends or every
/// other vCPU has stopped (then no SIPI can come). It waits parked in the
/// guest ([`park`]), so that its core halts rather than spins: in an
/// emulator a spinning core takes the time of the cores that work.
fn wait_for_sipi(v: &mut KernelVcpu, launched: &mut u64) -> Result<GuestState, Stop> {
    let vm = v.vm;
    let mut parked = false;
    loop {
        v.service_requests();
        if let Some(stop) = exits::platform_stop(vm) {
            return Err(stop);
        }
        match vm.irq.take_cpu_event(v.id) {
            Some(CpuEvent::Startup { vector }) => {
                let mut s = GuestState::real_mode(u16::from(vector) << 8, 0);
                // CR0 after INIT: CD, NW and ET set; EDX: the CPU signature.
                s.cr0 = 0x6000_0010;
                s.gprs.rdx = u64::from(vm.cpuid.answer(v.id, 1, 0)[0]);
                // Nothing queued for entry (the caller writes the rest of
                // the state, activity and interruptibility included), and
                // the watchdog counts from here.
                v.vmcs.write32(Vmcs32::VmEntryInterruptionInfo, 0)?;
                v.last_progress = arch::rdtsc();
                return Ok(s);
            }
            Some(CpuEvent::Init { .. }) => {}
            None => {
                if (0..vm.vcpus).all(|id| id == v.id || vm.requests.is_stopped(id)) {
                    return Err(Stop::Shutdown { status: 0 });
                }
                if !park(v, launched, &mut parked)? {
                    core::hint::spin_loop();
                }
            }
        }
    }
}

/// Sleeps in the guest for up to [`PARK_NS`]: VM entry in the HLT activity
/// state (SDM 26.4.2) with the INIT state loaded (nothing runs), left by a
/// kick (external-interrupt exiting, whatever the guest's IF) or the
/// VMX-preemption timer. False where the CPU has no preemption timer or no
/// HLT activity state (then the caller spins).
fn park(v: &mut KernelVcpu, launched: &mut u64, parked: &mut bool) -> Result<bool, Stop> {
    use crate::vmx::controls::PinBased;
    let vm = v.vm;
    if vm.controls.pin & PinBased::PREEMPTION_TIMER.bits() == 0 || !vm.caps.misc.activity_hlt() {
        return Ok(false);
    }
    if !*parked {
        let mut s = GuestState::real_mode(0, 0);
        s.cr0 = 0x6000_0010;
        vmcs::write_guest_state(&mut v.vmcs, &vm.caps, &vm.controls, &s)?;
        v.vmcs.write32(Vmcs32::VmEntryInterruptionInfo, 0)?;
        *parked = true;
    }
    v.vmcs.write32(Vmcs32::GuestActivityState, inject::HLT)?;
    v.vmcs.write32(
        Vmcs32::GuestPreemptionTimerValue,
        preemption_value(vm, ns_to_tsc(PARK_NS)),
    )?;
    match enter(v, launched)? {
        // A kick: end it at the host's APIC.
        ExitReason::ExternalInterrupt => {
            exits::interrupt::external(v)?;
        }
        ExitReason::PreemptionTimer => {}
        other => {
            return Err(fatal(format!("a parked AP left the guest for {other}")));
        }
    }
    Ok(true)
}

/// TSC ticks in `ns` nanoseconds.
fn ns_to_tsc(ns: u64) -> u64 {
    (u128::from(ns) * u128::from(arch::tsc_rate().max(1)) / 1_000_000_000) as u64
}

/// The VMX-preemption timer value that expires after `tsc_ticks` (the
/// timer counts down at the TSC's rate shifted by IA32_VMX_MISC bits 4:0).
fn preemption_value(vm: &Vm<KernelMemory>, tsc_ticks: u64) -> u32 {
    (tsc_ticks >> vm.caps.misc.preemption_timer_rate()).min(u64::from(u32::MAX)) as u32
}

/// Enters the guest with `v.regs` (VMLAUNCH the first time, VMRESUME
/// after) and returns the exit's reason, counted; a failed entry is a fatal
/// stop with the VMCS dumped.
fn enter(v: &mut KernelVcpu, launched: &mut u64) -> Result<ExitReason, Stop> {
    // SAFETY: the VMCS is current and fully written; `regs` lives across
    // the call.
    let rc = unsafe { vmx_enter(&mut v.regs, *launched) };
    if rc != 0 {
        let err = v.vmcs.read32(Vmcs32::VmInstructionError).unwrap_or(0);
        dump_vmcs();
        return Err(fatal(format!(
            "VM entry failed: {} (VM-instruction error {err}: {})",
            if *launched == 0 {
                "VMLAUNCH"
            } else {
                "VMRESUME"
            },
            vm_instruction_error_message(err)
        )));
    }
    *launched = 1;
    let (reason, entry_failed) = ExitReason::from_raw(v.vmcs.read32(Vmcs32::ExitReason)?);
    v.stats.exits[reason.as_index()] += 1;
    if entry_failed {
        let q = v.vmcs.read_nat(VmcsNatural::ExitQualification).unwrap_or(0);
        dump_vmcs();
        return Err(fatal(format!(
            "VM entry failed while loading guest state: {reason}, qualification {q:#x}"
        )));
    }
    Ok(reason)
}

/// The VM's controls with the VMX-preemption timer on where the CPU has
/// one (the vCPU's timer deadlines and the watchdog use it), and the
/// watchdog time in TSC ticks (0 = off).
fn timer_controls(vm: &Vm<KernelMemory>) -> (crate::vmx::controls::Controls, u64) {
    let controls = vm.controls;
    let watchdog = ns_to_tsc(vm.config.watchdog_ms.saturating_mul(1_000_000));
    (controls, watchdog)
}

/// Starts the VMX-preemption timer for the next entry: at the vCPU's next
/// timer deadline or what is left of the watchdog time, whichever is
/// nearer, or the console's next poll (`console`, ns) if sooner (in TSC
/// ticks, shifted by IA32_VMX_MISC bits 4:0).
fn arm_timer(v: &mut KernelVcpu, console: Option<u64>) -> Result<(), Stop> {
    use crate::vmx::controls::PinBased;
    let vm = v.vm;
    if vm.controls.pin & PinBased::PREEMPTION_TIMER.bits() == 0 {
        return Ok(());
    }
    let mut ticks = u64::MAX;
    if v.watchdog_tsc != 0 {
        let quiet = arch::rdtsc().wrapping_sub(v.last_progress);
        ticks = v.watchdog_tsc.saturating_sub(quiet).max(1);
    }
    let timers = if vm.irq.is_active() {
        vm.irq.next_deadline_ns(v.id)
    } else {
        None
    };
    let deadline = match (timers, console) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    // The clock is read only for a deadline: most entries have none.
    if let Some(deadline) = deadline {
        ticks = ticks.min(ns_to_tsc(deadline.saturating_sub(vm.clock.now_ns())));
    }
    v.vmcs.write32(
        Vmcs32::GuestPreemptionTimerValue,
        preemption_value(vm, ticks),
    )?;
    Ok(())
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
pub fn run(vm: &Vm<KernelMemory>, id: u32, cpu: usize) -> VcpuReport {
    let mut v = Vcpu::new(id, vm, CoreHw(CurrentVmcs));
    let stop = match setup_and_run(&mut v, cpu) {
        Ok(s) | Err(s) => s,
    };
    vm.vcpu_stopped(id);
    v.flush_line();
    if matches!(
        stop,
        Stop::Contained { .. } | Stop::Fatal(_) | Stop::Reset { .. } | Stop::Watchdog { .. }
    ) {
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

    let (controls, watchdog) = timer_controls(vm);
    let cfg = VmcsConfig {
        controls,
        eptp: vm.ept.eptp(),
        msr_bitmap: vm.msr_bitmap,
        io_bitmap_a: vm.io_bitmaps.0,
        io_bitmap_b: vm.io_bitmaps.1,
        vpid: v.vpid(),
        cpu,
        tsc_offset: 0u64.wrapping_sub(*TSC_ZERO.call_once(arch::rdtsc)),
    };
    // XSETBV is emulated with the host's own XSETBV, which needs
    // CR4.OSXSAVE here; the guest starts with XCR0 = x87 (its reset value).
    if vm.cpuid.xcr0_supported() != 0 {
        arch::enable_xsave();
    }
    vmcs::write_controls_and_host(&mut v.vmcs, caps, &cfg)?;
    v.watchdog_tsc = watchdog;
    // An AP of a kernel run waits for the guest's INIT-SIPI (SDM 9.4.4).
    // VMLAUNCH for the first entry, VMRESUME after (a parked AP enters
    // before its guest starts).
    let mut launched = 0;
    let state = if vm.irq.run_state(v.id) == RunState::WaitForSipi {
        match wait_for_sipi(v, &mut launched) {
            Ok(s) => s,
            Err(stop) => return Ok(stop),
        }
    } else {
        vm.initial_state(v.id)
    };
    vmcs::write_guest_state(&mut v.vmcs, caps, &vm.controls, &state)?;
    v.regs = state.gprs;
    // Guest-physical mappings of an earlier EPT with the same root may be
    // cached (SDM 29.4.3): start clean.
    vmcs::invept(vm.ept.eptp(), vm.invept_single);

    let start = arch::rdtsc();
    v.last_progress = start;
    let stop = loop {
        v.service_requests();
        // INIT resets an AP into wait-for-SIPI (SDM 9.1, 11.6.1); a SIPI to
        // a running vCPU is ignored (the router drops it).
        let event = if vm.irq.is_active() {
            vm.irq.take_cpu_event(v.id)
        } else {
            None
        };
        if let Some(CpuEvent::Init { wait_for_sipi: ap }) = event {
            if !ap {
                break Stop::Reset {
                    cause: String::from("INIT to the bootstrap processor"),
                };
            }
            vm.requests.set_halted(v.id, false);
            let state = match wait_for_sipi(v, &mut launched) {
                Ok(s) => s,
                Err(stop) => break stop,
            };
            vmcs::write_guest_state(&mut v.vmcs, caps, &vm.controls, &state)?;
            v.regs = state.gprs;
        }
        // vCPU 0 polls the console while the guest listens to COM1, before
        // the events are delivered: typed input raises IRQ 4 in time.
        let console = if v.id == 0 { vm.poll_console() } else { None };
        v.deliver_events()?;
        arm_timer(v, console)?;
        let reason = match enter(v, &mut launched) {
            Ok(r) => r,
            Err(stop) => break stop,
        };
        if reason != ExitReason::PreemptionTimer {
            v.last_progress = arch::rdtsc();
        }
        match exits::dispatch(v, reason) {
            // A device ended the VM (another vCPU's port write, a reset).
            Ok(Action::Resume) => {
                if let Some(stop) = exits::platform_stop(vm) {
                    break stop;
                }
                // Halted with interrupts off, and nobody left to wake it.
                if vm.requests.is_halted(v.id) && !vm.requests.others_can_run(v.id) {
                    break exits::hlt::never_to_wake(v);
                }
            }
            Err(stop) => break stop,
        }
    };
    v.stats.cycles = arch::rdtsc().wrapping_sub(start);
    Ok(stop)
}
