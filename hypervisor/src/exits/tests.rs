//! Host tests of every exit handler's decisions, against a mock VMCS and a
//! VM built in host memory. Each test sets up the exit (reason, qualification,
//! registers), dispatches it, and checks what the handler wrote: registers,
//! VMCS fields, injected events, EPT entries, reports.

extern crate std;

use super::dispatch;
use crate::boot::abi::{
    HC_CONSOLE_WRITE, HC_ERROR, HC_ITERATION_DONE, HC_OK, HC_REPORT, HC_SHUTDOWN,
};
use crate::config::RunConfig;
use crate::machine::cpuid::{CpuidPolicy, Provided};
use crate::mm::ept::test_mem::TestMem;
use crate::mm::ept::{EptPerms, PageSize};
use crate::mm::guest_mem::test_host;
use crate::mm::memslot::SlotFlags;
use crate::vcpu::{Action, Hw, Stop, Vcpu};
use crate::vm::{GuestOutput, Vm, VmParts};
use crate::vmx::caps::skylake_for_tests;
use crate::vmx::controls::VmEntryControls;
use crate::vmx::exit::{ExitReason, InterruptionInfo};
use crate::vmx::fields::{Vmcs32, Vmcs64, VmcsAccess, VmcsError, VmcsNatural};
use crate::x86::msr::*;
use crate::x86::*;
use std::collections::BTreeMap;
use std::string::{String, ToString};
use std::sync::Mutex;
use std::vec::Vec;

/// A VMCS in a map, and a record of the per-core instructions.
#[derive(Default)]
struct MockHw {
    fields: BTreeMap<u32, u64>,
    msrs: BTreeMap<u32, u64>,
    flushes: u32,
    eois: u32,
    linear_flushes: u32,
    xcr0: Option<u64>,
    cr2: Option<u64>,
}

impl VmcsAccess for MockHw {
    fn read_raw(&self, encoding: u32) -> Result<u64, VmcsError> {
        Ok(self.fields.get(&encoding).copied().unwrap_or(0))
    }
    fn write_raw(&mut self, encoding: u32, value: u64) -> Result<(), VmcsError> {
        self.fields.insert(encoding, value);
        Ok(())
    }
}

impl Hw for MockHw {
    fn flush_guest_physical(&mut self, _: u64, _: bool) {
        self.flushes += 1;
    }
    fn rdtsc(&self) -> u64 {
        0x1234_5678
    }
    fn read_msr(&self, msr: u32) -> u64 {
        self.msrs.get(&msr).copied().unwrap_or(0)
    }
    fn write_msr(&mut self, msr: u32, value: u64) {
        self.msrs.insert(msr, value);
    }
    fn host_eoi(&mut self) {
        self.eois += 1;
    }
    fn flush_guest_linear(&mut self, _: u16, _: bool) {
        self.linear_flushes += 1;
    }
    fn set_xcr0(&mut self, value: u64) {
        self.xcr0 = Some(value);
    }
    fn set_guest_cr2(&mut self, value: u64) {
        self.cr2 = Some(value);
    }
}

/// Guest output, kept for the test to read.
struct Lines(Mutex<Vec<String>>);

impl GuestOutput for Lines {
    fn line(&self, vcpu: Option<u32>, text: &str) {
        let prefix = vcpu.map_or(String::new(), |v| std::format!("[vcpu{v}] "));
        self.0.lock().unwrap().push(prefix + text);
    }
    fn serial_write(&self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        self.0.lock().unwrap().push(std::format!("[com1] {text}"));
    }
}

fn no_kick(_: u32) {}

type TestVm = Vm<&'static TestMem>;

/// A 4 MiB, 2-slot VM (slot 1 read-only) with 2 vCPUs, on a Skylake's caps.
fn vm() -> (&'static TestVm, &'static Lines) {
    vm_with_kick(&no_kick)
}

/// The same VM, with `kick` to send a vCPU out of the guest.
fn vm_with_kick(kick: &'static (dyn Fn(u32) + Sync)) -> (&'static TestVm, &'static Lines) {
    let (caps, controls) = skylake_for_tests();
    let out: &'static Lines = Box::leak(Box::new(Lines(Mutex::new(Vec::new()))));
    let config = RunConfig {
        mem_mib: 4,
        slots: 2,
        readonly_slot: Some(1),
        ..RunConfig::default()
    };
    let parts = VmParts {
        config,
        caps,
        controls,
        vcpus: 2,
        out,
        workload: None,
        cpuid: CpuidPolicy::new(host_cpu, 2, Provided::default()),
        kick,
        clock: std::sync::Arc::new(crate::devices::test_support::ManualClock::default()),
    };
    let elf = crate::boot::elf::guest_elf_for_tests();
    let vm = Vm::build(test_host::memory(), parts, &elf).unwrap();
    (Box::leak(Box::new(vm)), out)
}

/// A host CPU with VMX, XSAVE with AVX, 0xd basic leaves, and long mode,
/// NX and SYSCALL with 39 physical address bits.
fn host_cpu(leaf: u32, sub: u32) -> [u32; 4] {
    match (leaf, sub) {
        (0, _) => [0xd, 0, 0, 0],
        (1, _) => [0x906ea, 0x0010_0800, 0xfffa_3223 | (1 << 5), 0x1f8b_fbff],
        (0xd, 0) => [0x7, 0x240, 0x340, 0],
        (0xd, 1) => [0xf, 0x340, 0, 0],
        (0xd, 2) => [0x100, 0x240, 0, 0],
        (0x8000_0000, _) => [0x8000_0008, 0, 0, 0],
        (0x8000_0001, _) => [0, 0, 0, (1 << 11) | (1 << 20) | (1 << 29)],
        (0x8000_0008, _) => [0x3027, 0, 0, 0],
        _ => [0; 4],
    }
}

const RIP: u64 = 0x10_0000;
/// A 32-bit code segment's access rights (D = 1, L = 0).
const CS32_AR: u32 = 0xc09b;
const LEN: u32 = 3;

/// vCPU `id` of `vm`, stopped at an exit of `reason` with qualification `q`.
fn vcpu(vm: &TestVm, id: u32, q: u64) -> Vcpu<'_, MockHw, &'static TestMem> {
    let mut v = Vcpu::new(id, vm, MockHw::default());
    let h = &mut v.vmcs;
    h.write_nat(VmcsNatural::GuestRip, RIP).unwrap();
    h.write32(Vmcs32::VmExitInstructionLength, LEN).unwrap();
    h.write_nat(VmcsNatural::ExitQualification, q).unwrap();
    // 64-bit mode, as a native guest runs.
    let s = vm.initial_state(id);
    h.write_nat(
        VmcsNatural::Cr0GuestHostMask,
        crate::vmx::controls::CR0_HOST_OWNED,
    )
    .unwrap();
    h.write_nat(
        VmcsNatural::Cr4GuestHostMask,
        crate::vmx::controls::CR4_HOST_OWNED,
    )
    .unwrap();
    h.write32(Vmcs32::GuestCsAccessRights, s.cs.access).unwrap();
    h.write_nat(VmcsNatural::Cr0ReadShadow, s.cr0).unwrap();
    h.write_nat(VmcsNatural::GuestCr0, s.cr0).unwrap();
    h.write_nat(VmcsNatural::Cr4ReadShadow, s.cr4).unwrap();
    h.write_nat(VmcsNatural::GuestCr4, vm.caps.apply_cr4(s.cr4))
        .unwrap();
    h.write64(Vmcs64::GuestIa32Efer, s.efer).unwrap();
    h.write32(
        Vmcs32::VmEntryControls,
        vm.controls.entry | VmEntryControls::IA32E_MODE_GUEST.bits(),
    )
    .unwrap();
    h.write_nat(VmcsNatural::GuestRflags, 0x202).unwrap();
    v
}

fn rip(v: &Vcpu<MockHw, &'static TestMem>) -> u64 {
    v.vmcs.read_nat(VmcsNatural::GuestRip).unwrap()
}

/// The event queued for the next entry (0 = none).
fn injected(v: &Vcpu<MockHw, &'static TestMem>) -> u32 {
    v.vmcs.read32(Vmcs32::VmEntryInterruptionInfo).unwrap()
}

fn resumes(r: Result<Action, Stop>) {
    assert_eq!(r, Ok(Action::Resume));
}

/// The instruction completed: RIP moved past it, nothing injected.
fn completed(v: &Vcpu<MockHw, &'static TestMem>) {
    assert_eq!(rip(v), RIP + u64::from(LEN), "RIP advanced");
    assert_eq!(injected(v), 0, "nothing injected");
}

/// The instruction faulted with #GP(0): RIP stays, #GP queued with error code 0.
fn faulted_gp(v: &Vcpu<MockHw, &'static TestMem>) {
    assert_eq!(rip(v), RIP, "RIP stays on the faulting instruction");
    assert_eq!(injected(v), InterruptionInfo::gp().to_raw());
    assert_eq!(v.vmcs.read32(Vmcs32::VmEntryExceptionErrorCode).unwrap(), 0);
}

// ---- CR access (qualification: SDM 28.2.1 table 28-3) ----

/// MOV to CR`cr` from GPR `gpr`.
fn mov_to_cr(cr: u64, gpr: u64) -> u64 {
    cr | (gpr << 8)
}

#[test]
fn cr0_write_goes_to_the_shadow_and_keeps_fixed_bits() {
    let (vm, _) = vm();
    let mut v = vcpu(vm, 0, mov_to_cr(0, 0));
    let value = v.vmcs.read_nat(VmcsNatural::Cr0ReadShadow).unwrap() & !CR0_NE;
    v.regs.rax = value;
    resumes(dispatch(&mut v, ExitReason::CrAccess));
    completed(&v);
    assert_eq!(v.vmcs.read_nat(VmcsNatural::Cr0ReadShadow).unwrap(), value);
    assert_ne!(
        v.vmcs.read_nat(VmcsNatural::GuestCr0).unwrap() & CR0_NE,
        0,
        "NE is fixed to 1 in the real CR0"
    );
}

#[test]
fn cr0_writes_the_sdm_refuses_raise_gp() {
    let (vm, _) = vm();
    for bad in [
        (1u64 << 3) | (1 << 40),  // reserved high bit
        CR0_PG | CR0_ET,          // PG without PE
        CR0_PE | CR0_NW | CR0_ET, // NW without CD
    ] {
        let mut v = vcpu(vm, 0, mov_to_cr(0, 3));
        v.regs.rbx = bad;
        resumes(dispatch(&mut v, ExitReason::CrAccess));
        faulted_gp(&v);
    }
}

#[test]
fn paging_on_with_lme_enters_ia32e_mode_and_off_leaves_it() {
    let (vm, _) = vm();
    let mut v = vcpu(vm, 0, mov_to_cr(0, 0));
    // Start in protected mode with LME set, paging off, 32-bit code.
    v.vmcs
        .write_nat(VmcsNatural::Cr0ReadShadow, CR0_PE | CR0_ET | CR0_NE)
        .unwrap();
    v.vmcs
        .write32(Vmcs32::GuestCsAccessRights, CS32_AR)
        .unwrap();
    v.vmcs.write64(Vmcs64::GuestIa32Efer, EFER_LME).unwrap();
    v.vmcs
        .write32(
            Vmcs32::VmEntryControls,
            vm.controls.entry & !VmEntryControls::IA32E_MODE_GUEST.bits(),
        )
        .unwrap();
    v.regs.rax = CR0_PE | CR0_ET | CR0_NE | CR0_PG;
    resumes(dispatch(&mut v, ExitReason::CrAccess));
    completed(&v);
    assert_ne!(
        v.vmcs.read64(Vmcs64::GuestIa32Efer).unwrap() & EFER_LMA,
        0,
        "LMA set"
    );
    assert_ne!(
        v.vmcs.read32(Vmcs32::VmEntryControls).unwrap() & VmEntryControls::IA32E_MODE_GUEST.bits(),
        0
    );
}

#[test]
fn cr4_vmxe_and_clearing_pae_in_long_mode_raise_gp() {
    let (vm, _) = vm();
    let shadow = vm.initial_state(0).cr4;
    for bad in [shadow | CR4_VMXE, shadow & !CR4_PAE] {
        let mut v = vcpu(vm, 0, mov_to_cr(4, 1));
        v.regs.rcx = bad;
        resumes(dispatch(&mut v, ExitReason::CrAccess));
        faulted_gp(&v);
    }
    let mut v = vcpu(vm, 0, mov_to_cr(4, 1));
    v.regs.rcx = shadow | CR4_PGE;
    resumes(dispatch(&mut v, ExitReason::CrAccess));
    completed(&v);
    assert_eq!(
        v.vmcs.read_nat(VmcsNatural::Cr4ReadShadow).unwrap(),
        shadow | CR4_PGE
    );
}

#[test]
fn clts_clears_ts() {
    let (vm, _) = vm();
    let mut v = vcpu(vm, 0, 2 << 4);
    // TS is the guest's own bit: it lives in the real CR0.
    let cr0 = v.vmcs.read_nat(VmcsNatural::GuestCr0).unwrap();
    v.vmcs
        .write_nat(VmcsNatural::GuestCr0, cr0 | CR0_TS)
        .unwrap();
    assert_ne!(v.guest_cr0().unwrap() & CR0_TS, 0);
    resumes(dispatch(&mut v, ExitReason::CrAccess));
    completed(&v);
    assert_eq!(
        v.vmcs.read_nat(VmcsNatural::Cr0ReadShadow).unwrap() & CR0_TS,
        0
    );
}

// ---- MSRs ----

fn rdmsr(v: &mut Vcpu<MockHw, &'static TestMem>, msr: u32) -> Result<Action, Stop> {
    v.regs.rcx = msr.into();
    dispatch(v, ExitReason::Rdmsr)
}

fn wrmsr(v: &mut Vcpu<MockHw, &'static TestMem>, msr: u32, value: u64) -> Result<Action, Stop> {
    v.regs.rcx = msr.into();
    v.regs.rax = value & 0xffff_ffff;
    v.regs.rdx = value >> 32;
    dispatch(v, ExitReason::Wrmsr)
}

#[test]
fn unknown_msrs_raise_gp() {
    let (vm, _) = vm();
    let mut v = vcpu(vm, 0, 0);
    resumes(rdmsr(&mut v, 0x1234));
    faulted_gp(&v);
    let mut v = vcpu(vm, 0, 0);
    resumes(wrmsr(&mut v, 0x1234, 1));
    faulted_gp(&v);
}

#[test]
fn msr_writes_checked_where_a_cpu_checks() {
    let (vm, _) = vm();
    for (msr, value) in [
        (IA32_EFER, EFER_LME | EFER_LMA | (1 << 3)), // reserved EFER bit
        (IA32_EFER, EFER_LMA),                       // LME change with paging on
        (IA32_PAT, 0x0007_0406_0007_0402),           // memory type 2
        (IA32_FS_BASE, 0x0000_8000_0000_0000),       // not canonical
        (IA32_LSTAR, 0x0000_8000_0000_0000),
        (IA32_TSC_AUX, 1 << 32),
    ] {
        let mut v = vcpu(vm, 0, 0);
        resumes(wrmsr(&mut v, msr, value));
        faulted_gp(&v);
    }
}

#[test]
fn msr_reads_and_writes_reach_their_homes() {
    let (vm, _) = vm();
    let mut v = vcpu(vm, 0, 0);
    resumes(wrmsr(&mut v, IA32_FS_BASE, 0xffff_8000_0000_1000));
    completed(&v);
    assert_eq!(
        v.vmcs.read_nat(VmcsNatural::GuestFsBase).unwrap(),
        0xffff_8000_0000_1000
    );
    let mut v = vcpu(vm, 0, 0);
    resumes(wrmsr(&mut v, IA32_LSTAR, 0xffff_ffff_8100_0000));
    completed(&v);
    assert_eq!(
        v.vmcs.msrs[&IA32_LSTAR], 0xffff_ffff_8100_0000,
        "pass-through to the core"
    );
    let mut v = vcpu(vm, 0, 0);
    resumes(rdmsr(&mut v, IA32_TSC));
    completed(&v);
    assert_eq!((v.regs.rdx << 32) | v.regs.rax, 0x1234_5678);
    // The BSP bit only on vCPU 0; xAPIC enabled at the default base.
    for (id, bsp) in [(0, true), (1, false)] {
        let mut v = vcpu(vm, id, 0);
        resumes(rdmsr(&mut v, IA32_APIC_BASE));
        assert_eq!(v.regs.rax & (1 << 8) != 0, bsp);
        assert_eq!(v.regs.rax & 0xffff_f000, 0xfee0_0000);
    }
}

// ---- port I/O (qualification: SDM 28.2.1 table 28-5) ----

fn io(port: u16, size: u64, input: bool, string: bool) -> u64 {
    (size - 1) | (u64::from(input) << 3) | (u64::from(string) << 4) | (u64::from(port) << 16)
}

#[test]
fn unclaimed_ports_read_all_ones_into_the_access_size_only() {
    let (vm, _) = vm();
    let mut v = vcpu(vm, 0, io(0x1234, 1, true, false));
    v.regs.rax = 0xdead_beef_0000_0000;
    resumes(dispatch(&mut v, ExitReason::IoInstruction));
    completed(&v);
    assert_eq!(
        v.regs.rax, 0xdead_beef_0000_00ff,
        "IN AL keeps the rest of RAX"
    );
    let mut v = vcpu(vm, 0, io(0x1234, 4, true, false));
    v.regs.rax = 0xdead_beef_0000_0000;
    resumes(dispatch(&mut v, ExitReason::IoInstruction));
    assert_eq!(v.regs.rax, 0xffff_ffff, "IN EAX zero-extends");
}

#[test]
fn the_first_port_access_turns_the_interrupt_polls_on() {
    let (vm, _) = vm();
    assert!(!vm.irq.is_active(), "a new VM polls nothing");
    let mut v = vcpu(vm, 1, io(0x3fd, 1, true, false));
    resumes(dispatch(&mut v, ExitReason::IoInstruction));
    assert!(vm.irq.is_active());
}

#[test]
fn com1_output_goes_through_the_16550_a_line_at_a_time() {
    let (vm, out) = vm();
    let mut v = vcpu(vm, 1, io(0x3f8, 1, false, false));
    for b in b"hi\n" {
        v.regs.rax = u64::from(*b);
        v.vmcs.write_nat(VmcsNatural::GuestRip, RIP).unwrap();
        resumes(dispatch(&mut v, ExitReason::IoInstruction));
    }
    assert_eq!(
        out.0.lock().unwrap().as_slice(),
        ["[com1] hi\n".to_string()]
    );
    // LSR (port 0x3fd): transmitter empty and idle, no data.
    let mut v = vcpu(vm, 1, io(0x3fd, 1, true, false));
    resumes(dispatch(&mut v, ExitReason::IoInstruction));
    assert_eq!(v.regs.rax & 0xff, 0x60);
}

#[test]
fn string_io_from_unmapped_tables_is_contained_not_a_panic() {
    let (vm, _) = vm();
    let mut v = vcpu(vm, 0, io(0x3f8, 1, false, true));
    // CR3 points outside RAM: the walk cannot read the tables.
    v.vmcs
        .write_nat(VmcsNatural::GuestCr3, 0x4000_0000)
        .unwrap();
    assert!(matches!(
        dispatch(&mut v, ExitReason::IoInstruction),
        Err(Stop::Contained { .. })
    ));
}

// ---- CPUID ----

#[test]
fn cpuid_answers_from_the_policy_with_the_vcpus_apic_id() {
    let (vm, _) = vm();
    for id in 0..2 {
        let mut v = vcpu(vm, id, 0);
        v.regs.rax = 1;
        resumes(dispatch(&mut v, ExitReason::Cpuid));
        completed(&v);
        assert_eq!(v.regs.rbx >> 24, u64::from(id));
        assert_eq!(v.regs.rcx & (1 << 5), 0, "VMX hidden");
        assert_ne!(v.regs.rcx & (1 << 31), 0, "hypervisor bit");
    }
}

// ---- VMCALL ----

fn vmcall(
    v: &mut Vcpu<MockHw, &'static TestMem>,
    nr: u64,
    a0: u64,
    a1: u64,
) -> Result<Action, Stop> {
    v.regs.rax = nr;
    v.regs.rdi = a0;
    v.regs.rsi = a1;
    dispatch(v, ExitReason::Vmcall)
}

#[test]
fn hypercalls() {
    let (vm, out) = vm();
    let mut v = vcpu(vm, 0, 0);
    resumes(vmcall(&mut v, HC_REPORT, 0, 7));
    completed(&v);
    assert_eq!((v.regs.rax, v.guest_report), (HC_OK, Some((0, 7))));
    assert!(out
        .0
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("guest reports PASS")));

    vm.guest_mem().write(0x8000, b"console\n").unwrap();
    let mut v = vcpu(vm, 0, 0);
    resumes(vmcall(&mut v, HC_CONSOLE_WRITE, 0x8000, 8));
    assert_eq!(v.regs.rax, HC_OK);
    assert!(out
        .0
        .lock()
        .unwrap()
        .contains(&"[vcpu0] console".to_string()));
    // A buffer no slot backs, an oversized one, an unknown call.
    for (nr, a0, a1) in [
        (HC_CONSOLE_WRITE, 1 << 40, 8),
        (HC_CONSOLE_WRITE, 0x8000, 1 << 20),
        (99, 0, 0),
    ] {
        let mut v = vcpu(vm, 0, 0);
        resumes(vmcall(&mut v, nr, a0, a1));
        assert_eq!(v.regs.rax, HC_ERROR);
    }
    // Without a workload, HC_ITERATION_DONE says stop.
    let mut v = vcpu(vm, 0, 0);
    resumes(vmcall(&mut v, HC_ITERATION_DONE, 1, 0));
    assert_eq!(v.regs.rax, 1);
    let mut v = vcpu(vm, 0, 0);
    assert_eq!(
        vmcall(&mut v, HC_SHUTDOWN, 5, 0),
        Err(Stop::Shutdown { status: 5 })
    );
}

#[test]
fn hypercalls_from_user_mode_fail() {
    let (vm, _) = vm();
    let mut v = vcpu(vm, 0, 0);
    v.vmcs.write32(Vmcs32::GuestSsAccessRights, 0xc0f3).unwrap(); // DPL 3
    resumes(vmcall(&mut v, HC_SHUTDOWN, 0, 0));
    assert_eq!(v.regs.rax, HC_ERROR);
}

// ---- events and the rest ----

#[test]
fn vmx_instructions_raise_ud() {
    let (vm, _) = vm();
    for reason in [ExitReason::Vmxon, ExitReason::Vmread, ExitReason::Invept] {
        let mut v = vcpu(vm, 0, 0);
        resumes(dispatch(&mut v, reason));
        assert_eq!(rip(&v), RIP);
        assert_eq!(injected(&v), InterruptionInfo::ud().to_raw());
    }
}

/// HLT with interrupts on completes (the vCPU sleeps until an interrupt);
/// with interrupts off it sleeps while another vCPU could still wake it
/// with an NMI or INIT, and is stopped with a report once none can.
#[test]
fn hlt_with_interrupts_off_sleeps_while_another_vcpu_runs() {
    let (vm, _) = vm();
    let mut v = vcpu(vm, 0, 0);
    resumes(dispatch(&mut v, ExitReason::Hlt));
    completed(&v);
    assert!(!vm.requests.is_halted(0));
    let mut v = vcpu(vm, 0, 0);
    v.vmcs.write_nat(VmcsNatural::GuestRflags, 0x2).unwrap();
    // vCPU 1 runs: vCPU 0 sleeps in the HLT state, marked halted.
    resumes(dispatch(&mut v, ExitReason::Hlt));
    completed(&v);
    assert_eq!(v.vmcs.read32(Vmcs32::GuestActivityState).unwrap(), 1);
    assert!(vm.requests.is_halted(0));
    assert!(vm.requests.others_can_run(0));
    // vCPU 1 halts the same way: it is the last, nothing can wake either.
    let mut w = vcpu(vm, 1, 0);
    w.vmcs.write_nat(VmcsNatural::GuestRflags, 0x2).unwrap();
    assert!(matches!(
        dispatch(&mut w, ExitReason::Hlt),
        Err(Stop::Contained { what: "halted", .. })
    ));
    assert!(
        !vm.requests.others_can_run(0),
        "the run loop stops vCPU 0 too"
    );
}

#[test]
fn external_interrupt_ends_at_the_host_apic() {
    let (vm, _) = vm();
    let mut v = vcpu(vm, 0, 0);
    v.vmcs
        .write32(
            Vmcs32::VmExitInterruptionInfo,
            InterruptionInfo::external_interrupt(0xf0).to_raw(),
        )
        .unwrap();
    resumes(dispatch(&mut v, ExitReason::ExternalInterrupt));
    assert_eq!(v.vmcs.eois, 1);
    assert_eq!(
        injected(&v),
        0,
        "the host's interrupt never reaches the guest"
    );
}

#[test]
fn unknown_exits_are_contained() {
    let (vm, _) = vm();
    let mut v = vcpu(vm, 0, 0);
    for reason in [ExitReason::TaskSwitch, ExitReason::Getsec] {
        assert!(matches!(
            dispatch(&mut v, reason),
            Err(Stop::Contained { .. })
        ));
    }
}

/// A VM whose kicks are recorded (bit n = vCPU n kicked).
fn vm_recording_kicks() -> (&'static TestVm, &'static std::sync::atomic::AtomicU32) {
    use std::sync::atomic::{AtomicU32, Ordering};
    let kicked: &'static AtomicU32 = Box::leak(Box::new(AtomicU32::new(0)));
    let kick: &'static (dyn Fn(u32) + Sync) = Box::leak(Box::new(move |id: u32| {
        kicked.fetch_or(1 << id, Ordering::SeqCst);
    }));
    (vm_with_kick(kick).0, kicked)
}

#[test]
fn triple_fault_is_a_reset_that_stops_every_vcpu() {
    use std::sync::atomic::Ordering;
    let (vm, kicked) = vm_recording_kicks();
    let mut v = vcpu(vm, 1, 0);
    match dispatch(&mut v, ExitReason::TripleFault) {
        Err(Stop::Reset { cause }) => assert!(cause.starts_with("triple fault"), "{cause}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        std::format!("{}", Stop::Reset { cause: "x".into() }),
        "guest requested reset (x)"
    );
    assert_eq!(kicked.load(Ordering::SeqCst), 1 << 0, "vCPU 0 kicked");
    assert!(matches!(super::platform_stop(vm), Some(Stop::Reset { .. })));
}

#[test]
fn isa_debug_exit_ends_the_vm_with_the_guests_code() {
    use std::sync::atomic::Ordering;
    let (vm, kicked) = vm_recording_kicks();
    assert_eq!(super::platform_stop(vm), None);
    let mut v = vcpu(vm, 0, io(0xf4, 4, false, false));
    v.regs.rax = 0xffff_ffff_0000_0003;
    assert_eq!(
        dispatch(&mut v, ExitReason::IoInstruction),
        Err(Stop::GuestExit { code: 3 })
    );
    completed(&v);
    assert_eq!(
        kicked.load(Ordering::SeqCst),
        1 << 1,
        "the other vCPU kicked"
    );
    // The other vCPU stops with the same code on its next exit.
    assert_eq!(super::platform_stop(vm), Some(Stop::GuestExit { code: 3 }));
    // A byte write of 0 is a pass.
    let (vm, _) = self::vm();
    let mut v = vcpu(vm, 1, io(0xf4, 1, false, false));
    v.regs.rax = 0x100;
    assert_eq!(
        dispatch(&mut v, ExitReason::IoInstruction),
        Err(Stop::GuestExit { code: 0 })
    );
}

#[test]
fn reset_ports_end_the_vm_with_guest_requested_reset() {
    for (port, value) in [(0xcf9u16, 0x06u64), (0x64, 0xfe), (0x92, 0x01)] {
        let (vm, _) = vm();
        let mut v = vcpu(vm, 0, io(port, 1, false, false));
        v.regs.rax = value;
        match dispatch(&mut v, ExitReason::IoInstruction) {
            Err(Stop::Reset { cause }) => {
                assert_eq!(cause, std::format!("write of {value:#x} to port {port:#x}"))
            }
            other => panic!("port {port:#x}: {other:?}"),
        }
    }
    // Harmless ports: POST, PCI config, the PIC, Bochs' own 0x8900.
    let (vm, _) = vm();
    for port in [0x80u16, 0xcf8, 0xcfc, 0x20, 0x21, 0x8900, 0xcf9] {
        let mut v = vcpu(vm, 0, io(port, 1, false, false));
        v.regs.rax = 0;
        resumes(dispatch(&mut v, ExitReason::IoInstruction));
    }
    assert_eq!(super::platform_stop(vm), None);
}

#[test]
fn pc_devices_answer_through_the_io_exit() {
    let (vm, _) = vm();
    // fw_cfg: select the signature, read "QEMU".
    let mut v = vcpu(vm, 0, io(0x510, 2, false, false));
    v.regs.rax = 0;
    resumes(dispatch(&mut v, ExitReason::IoInstruction));
    let mut sig = Vec::new();
    for _ in 0..4 {
        let mut v = vcpu(vm, 0, io(0x511, 1, true, false));
        resumes(dispatch(&mut v, ExitReason::IoInstruction));
        sig.push(v.regs.rax as u8);
    }
    assert_eq!(sig, b"QEMU");
    // PCI: no device answers.
    let mut v = vcpu(vm, 0, io(0xcf8, 4, false, false));
    v.regs.rax = 0x8000_0000;
    resumes(dispatch(&mut v, ExitReason::IoInstruction));
    let mut v = vcpu(vm, 0, io(0xcfc, 4, true, false));
    resumes(dispatch(&mut v, ExitReason::IoInstruction));
    assert_eq!(v.regs.rax, 0xffff_ffff);
    // The PIC's IMR reads back.
    let mut v = vcpu(vm, 0, io(0xa1, 1, false, false));
    v.regs.rax = 0xfb;
    resumes(dispatch(&mut v, ExitReason::IoInstruction));
    let mut v = vcpu(vm, 0, io(0xa1, 1, true, false));
    resumes(dispatch(&mut v, ExitReason::IoInstruction));
    assert_eq!(v.regs.rax & 0xff, 0xfb);
    assert_eq!(vm.lapics.len(), 2);
}

// ---- EPT violations (qualification bits 0-2) ----

fn ept_fault(v: &mut Vcpu<MockHw, &'static TestMem>, gpa: u64, q: u64) -> Result<Action, Stop> {
    v.vmcs.write64(Vmcs64::GuestPhysicalAddress, gpa).unwrap();
    v.vmcs.write_nat(VmcsNatural::ExitQualification, q).unwrap();
    dispatch(v, ExitReason::EptViolation)
}

const READ: u64 = 1;
const WRITE: u64 = 2;

#[test]
fn ept_violations_map_contain_and_log() {
    let (vm, _) = vm();
    let mut v = vcpu(vm, 0, 0);
    // A read maps the page writable (slot 0 is not logged).
    resumes(ept_fault(&mut v, 0x5123, READ));
    let (hpa, perms, size) = vm.ept.translate(0x5000).unwrap();
    assert_eq!(size, PageSize::Size4K);
    assert!(perms.contains(EptPerms::WRITE));
    assert_eq!(
        hpa,
        vm.slots
            .active_for_tests()
            .iter()
            .next()
            .unwrap()
            .host_phys(5)
    );
    assert_eq!(v.stats.ept_mapped, 1);
    // The same fault again (another vCPU won): spurious.
    resumes(ept_fault(&mut v, 0x5000, READ));
    assert_eq!(v.stats.ept_spurious, 1);
    // Slot 1 (2 MiB up) is read-only: reads map, writes are contained.
    resumes(ept_fault(&mut v, 0x20_0000, READ));
    assert!(!vm
        .ept
        .translate(0x20_0000)
        .unwrap()
        .1
        .contains(EptPerms::WRITE));
    assert!(matches!(
        ept_fault(&mut v, 0x20_0000, WRITE),
        Err(Stop::Contained {
            what: "write to a read-only memslot",
            ..
        })
    ));
    // Beyond RAM: nothing backs it.
    assert!(matches!(
        ept_fault(&mut v, 0x4000_0000, READ),
        Err(Stop::Contained {
            what: "access to memory no memslot backs",
            ..
        })
    ));
    // Dirty logging: a logged page maps read-only on a read, and the first
    // write restores write access and logs the page.
    let slot0 = vm.slots.active_for_tests().iter().next().unwrap();
    slot0.insert_flags(SlotFlags::DIRTY_LOG);
    resumes(ept_fault(&mut v, 0x9000, READ));
    assert!(!vm
        .ept
        .translate(0x9000)
        .unwrap()
        .1
        .contains(EptPerms::WRITE));
    resumes(ept_fault(&mut v, 0x9000, WRITE));
    assert!(vm
        .ept
        .translate(0x9000)
        .unwrap()
        .1
        .contains(EptPerms::WRITE));
    assert_eq!(v.stats.dirty_faults, 1);
    let mut words = std::vec![0u64; 16];
    vm.dirty[0].get_and_clear(&mut words, |_| {}).unwrap();
    assert_eq!(words[0], 1 << 9, "page 9 logged, nothing else");
}

/// The CPU as the SDM defines it: modes, MSRs, events, XSETBV, CR8, TSC.
mod cpu;
mod mmio;
