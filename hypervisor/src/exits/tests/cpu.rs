//! Host tests of the SDM behaviours a guest that manages its own modes
//! relies on (issue "guest kernels written by others", item 3): each was
//! once a VM-entry failure, a wrong answer or a stop.

use super::*;
use crate::vmx::exit::vector;

fn mov_from_cr(cr: u64, gpr: u64) -> u64 {
    cr | (1 << 4) | (gpr << 8)
}

/// Puts `v` in 32-bit protected mode, paging off (as multiboot enters).
fn protected_mode(v: &mut Vcpu<MockHw, &'static TestMem>, efer: u64) {
    let h = &mut v.vmcs;
    h.write_nat(VmcsNatural::Cr0ReadShadow, CR0_PE | CR0_ET)
        .unwrap();
    h.write_nat(VmcsNatural::GuestCr0, CR0_PE | CR0_ET | CR0_NE)
        .unwrap();
    h.write_nat(VmcsNatural::Cr4ReadShadow, 0).unwrap();
    h.write64(Vmcs64::GuestIa32Efer, efer).unwrap();
    h.write32(Vmcs32::GuestCsAccessRights, CS32_AR).unwrap();
    let entry = h.read32(Vmcs32::VmEntryControls).unwrap();
    h.write32(
        Vmcs32::VmEntryControls,
        entry & !VmEntryControls::IA32E_MODE_GUEST.bits(),
    )
    .unwrap();
}

fn ia32e_entry(v: &Vcpu<MockHw, &'static TestMem>) -> bool {
    v.vmcs.read32(Vmcs32::VmEntryControls).unwrap() & VmEntryControls::IA32E_MODE_GUEST.bits() != 0
}

#[test]
fn clearing_pg_in_64bit_mode_raises_gp_and_from_compatibility_mode_leaves_ia32e() {
    let (vm, _) = vm();
    let mut v = vcpu(vm, 0, mov_to_cr(0, 0));
    let cr0 = v.guest_cr0().unwrap();
    v.regs.rax = cr0 & !CR0_PG;
    resumes(dispatch(&mut v, ExitReason::CrAccess));
    faulted_gp(&v);
    assert!(ia32e_entry(&v), "still in IA-32e mode");

    // Compatibility mode (CS.L = 0), RIP with stray high bits: leaving
    // IA-32e mode clears LMA, the entry control, and RIP[63:32].
    let mut v = vcpu(vm, 0, mov_to_cr(0, 0));
    v.vmcs
        .write32(Vmcs32::GuestCsAccessRights, CS32_AR)
        .unwrap();
    v.vmcs
        .write_nat(VmcsNatural::GuestRip, 0x1_0000_0000 | RIP)
        .unwrap();
    v.regs.rax = cr0 & !CR0_PG;
    resumes(dispatch(&mut v, ExitReason::CrAccess));
    assert_eq!(injected(&v), 0);
    assert_eq!(rip(&v), RIP + u64::from(LEN), "RIP is 32 bits again");
    let efer = v.vmcs.read64(Vmcs64::GuestIa32Efer).unwrap();
    assert_eq!(efer & (EFER_LMA | EFER_LME), EFER_LME);
    assert!(!ia32e_entry(&v), "entry control follows EFER.LMA");
    assert!(v.vmcs.linear_flushes > 0, "paging off flushes the TLB");
}

#[test]
fn cr0_and_cr4_are_host_owned_so_pg_never_changes_behind_our_back() {
    assert_ne!(crate::vmx::controls::CR0_HOST_OWNED & CR0_PG, 0);
    assert_ne!(crate::vmx::controls::CR0_HOST_OWNED & CR0_PE, 0);
    assert_eq!(crate::vmx::controls::CR0_HOST_OWNED & CR0_TS, 0);
    assert_eq!(crate::vmx::controls::CR4_HOST_OWNED, !0);
    // The guest's CR0 as it reads it: TS from the real register, the rest
    // from the shadow.
    let (vm, _) = vm();
    let mut v = vcpu(vm, 0, 0);
    protected_mode(&mut v, 0);
    v.vmcs
        .write_nat(VmcsNatural::GuestCr0, CR0_PE | CR0_ET | CR0_NE | CR0_TS)
        .unwrap();
    assert_eq!(v.guest_cr0().unwrap(), CR0_PE | CR0_ET | CR0_TS);
}

#[test]
fn entering_long_mode_from_protected_mode_step_by_step() {
    let (vm, _) = vm();
    let mut v = vcpu(vm, 0, mov_to_cr(4, 0));
    protected_mode(&mut v, 0);
    v.regs.rax = CR4_PAE;
    resumes(dispatch(&mut v, ExitReason::CrAccess));
    completed(&v);
    let mut v2 = vcpu(vm, 0, 0);
    protected_mode(&mut v2, 0);
    v2.vmcs
        .write_nat(VmcsNatural::Cr4ReadShadow, CR4_PAE)
        .unwrap();
    // EFER.LME with paging off; then CR0.PG.
    resumes(wrmsr(&mut v2, IA32_EFER, EFER_LME));
    completed(&v2);
    let mut v3 = vcpu(vm, 0, mov_to_cr(0, 0));
    protected_mode(&mut v3, EFER_LME);
    v3.vmcs
        .write_nat(VmcsNatural::Cr4ReadShadow, CR4_PAE)
        .unwrap();
    // The operand is 32 bits outside 64-bit mode: high garbage is ignored.
    v3.regs.rax = 0xdead_beef_0000_0000 | CR0_PE | CR0_PG;
    resumes(dispatch(&mut v3, ExitReason::CrAccess));
    completed(&v3);
    assert!(ia32e_entry(&v3));
    assert_eq!(
        v3.vmcs.read64(Vmcs64::GuestIa32Efer).unwrap(),
        EFER_LME | EFER_LMA
    );
}

#[test]
fn pae_paging_loads_pdptes_and_refuses_reserved_ones() {
    let (vm, _) = vm();
    let pdpt = 0x3000u64;
    let good = [0x5001u64, 0, 0x6001, 0];
    let mut bytes = Vec::new();
    for p in good {
        bytes.extend_from_slice(&p.to_le_bytes());
    }
    vm.guest_mem().write(pdpt, &bytes).unwrap();
    let mut v = vcpu(vm, 0, mov_to_cr(0, 0));
    protected_mode(&mut v, 0);
    v.vmcs
        .write_nat(VmcsNatural::Cr4ReadShadow, CR4_PAE)
        .unwrap();
    v.vmcs.write_nat(VmcsNatural::GuestCr3, pdpt).unwrap();
    v.regs.rax = CR0_PE | CR0_PG;
    resumes(dispatch(&mut v, ExitReason::CrAccess));
    completed(&v);
    assert_eq!(v.vmcs.read64(Vmcs64::GuestPdpte0).unwrap(), 0x5001);
    assert_eq!(v.vmcs.read64(Vmcs64::GuestPdpte2).unwrap(), 0x6001);
    assert!(!ia32e_entry(&v), "PAE paging is not IA-32e mode");

    // A present PDPTE with reserved bits 2:1 set: #GP, CR0 unchanged.
    vm.guest_mem()
        .write(pdpt + 8, &(1u64 | (1 << 1)).to_le_bytes())
        .unwrap();
    let mut v = vcpu(vm, 0, mov_to_cr(0, 0));
    protected_mode(&mut v, 0);
    v.vmcs
        .write_nat(VmcsNatural::Cr4ReadShadow, CR4_PAE)
        .unwrap();
    v.vmcs.write_nat(VmcsNatural::GuestCr3, pdpt).unwrap();
    v.regs.rax = CR0_PE | CR0_PG;
    resumes(dispatch(&mut v, ExitReason::CrAccess));
    faulted_gp(&v);
    assert_eq!(v.guest_cr0().unwrap() & CR0_PG, 0);
}

#[test]
fn cr4_bits_not_in_cpuid_raise_gp() {
    let (vm, _) = vm();
    let cr4 = vm.initial_state(0).cr4;
    // SMEP (leaf 7 EBX bit 7) and PKE are not offered by the test host.
    for bad in [cr4 | (1 << 20), cr4 | (1 << 22), cr4 | (1 << 32)] {
        let mut v = vcpu(vm, 0, mov_to_cr(4, 0));
        v.regs.rax = bad;
        resumes(dispatch(&mut v, ExitReason::CrAccess));
        faulted_gp(&v);
    }
}

#[test]
fn exceptions_in_real_mode_carry_no_error_code() {
    let (vm, _) = vm();
    let mut v = vcpu(vm, 0, 0);
    v.vmcs
        .write_nat(VmcsNatural::Cr0ReadShadow, CR0_ET)
        .unwrap();
    resumes(wrmsr(&mut v, 0x1234, 0));
    let info = InterruptionInfo::from_raw(injected(&v));
    assert_eq!(info.vector, vector::GP);
    assert!(!info.error_code_valid, "real mode: no error code");
}

#[test]
fn msrs_checked_before_they_reach_the_vmcs() {
    let (vm, _) = vm();
    for (msr, value) in [
        (IA32_SYSENTER_ESP, 0x0000_8000_0000_0000u64),
        (IA32_SYSENTER_EIP, 0xffff_7fff_ffff_0000),
        (IA32_KERNEL_GS_BASE, 1 << 63),
        (IA32_FMASK, 1 << 32),
        (IA32_DEBUGCTL, 1 << 6),
        (IA32_MISC_ENABLE, 1 << 22),
    ] {
        let mut v = vcpu(vm, 0, 0);
        resumes(wrmsr(&mut v, msr, value));
        faulted_gp(&v);
        assert_eq!(
            v.vmcs.read_nat(VmcsNatural::GuestIa32SysenterEsp).unwrap(),
            0
        );
    }
    // EFER: clearing LME with paging off is fine; NXE is offered by CPUID.
    let mut v = vcpu(vm, 0, 0);
    protected_mode(&mut v, EFER_LME);
    resumes(wrmsr(&mut v, IA32_EFER, EFER_NXE));
    completed(&v);
    assert_eq!(v.vmcs.read64(Vmcs64::GuestIa32Efer).unwrap(), EFER_NXE);
}

#[test]
fn tsc_reads_and_writes_go_through_the_vcpus_offset() {
    let (vm, _) = vm();
    let mut v = vcpu(vm, 0, 0);
    resumes(wrmsr(&mut v, IA32_TSC, 1_000_000));
    completed(&v);
    assert_eq!(
        v.vmcs.read64(Vmcs64::TscOffset).unwrap(),
        1_000_000u64.wrapping_sub(v.vmcs.rdtsc())
    );
    let mut v2 = vcpu(vm, 0, 0);
    v2.vmcs
        .write64(
            Vmcs64::TscOffset,
            1_000_000u64.wrapping_sub(v2.vmcs.rdtsc()),
        )
        .unwrap();
    resumes(rdmsr(&mut v2, IA32_TSC));
    assert_eq!((v2.regs.rdx << 32) | v2.regs.rax, 1_000_000);
    assert!(v2.vmcs.msrs.is_empty(), "the host's TSC is never written");
}

#[test]
fn cr8_is_the_vcpus_own_task_priority() {
    let (vm, _) = vm();
    let mut v = vcpu(vm, 0, mov_to_cr(8, 1));
    v.regs.rcx = 9;
    resumes(dispatch(&mut v, ExitReason::CrAccess));
    completed(&v);
    assert_eq!(vm.lapics[0].lock().tpr(), 0x90, "CR8 is TPR[7:4]");
    assert!(v.vmcs.msrs.is_empty(), "no host register touched");
    v.vmcs.write_nat(VmcsNatural::GuestRip, RIP).unwrap();
    v.vmcs
        .write_nat(VmcsNatural::ExitQualification, mov_from_cr(8, 2))
        .unwrap();
    resumes(dispatch(&mut v, ExitReason::CrAccess));
    assert_eq!(v.regs.rdx, 9);
    v.vmcs.write_nat(VmcsNatural::GuestRip, RIP).unwrap();
    v.vmcs
        .write_nat(VmcsNatural::ExitQualification, mov_to_cr(8, 1))
        .unwrap();
    v.regs.rcx = 16;
    resumes(dispatch(&mut v, ExitReason::CrAccess));
    faulted_gp(&v);
    assert_eq!(vm.lapics[0].lock().tpr(), 0x90);
}

#[test]
fn xsetbv_checks_xcr0_and_loads_it() {
    let (vm, _) = vm();
    assert_eq!(vm.cpuid.xcr0_supported(), 7);
    for (ecx, value) in [(0u64, 7u64), (0, 3), (0, 1)] {
        let mut v = vcpu(vm, 0, 0);
        v.regs.rcx = ecx;
        v.regs.rax = value;
        resumes(dispatch(&mut v, ExitReason::Xsetbv));
        completed(&v);
        assert_eq!(v.vmcs.xcr0, Some(value));
        assert_eq!(v.xcr0, value);
    }
    for (ecx, value) in [(1u64, 1u64), (0, 0), (0, 5), (0, 0xf), (0, 1 << 32 | 1)] {
        let mut v = vcpu(vm, 0, 0);
        v.regs.rcx = ecx;
        v.regs.rax = value & 0xffff_ffff;
        v.regs.rdx = value >> 32;
        resumes(dispatch(&mut v, ExitReason::Xsetbv));
        faulted_gp(&v);
        assert_eq!(v.vmcs.xcr0, None, "XCR0 untouched");
    }
}

#[test]
fn cpuid_osxsave_and_xsave_size_follow_the_guest() {
    let (vm, _) = vm();
    let mut v = vcpu(vm, 0, 0);
    v.regs.rax = 1;
    resumes(dispatch(&mut v, ExitReason::Cpuid));
    assert_eq!(
        v.regs.rcx & (1 << 27),
        0,
        "OSXSAVE off with CR4.OSXSAVE off"
    );
    assert_ne!(v.regs.rcx & (1 << 26), 0, "XSAVE offered");
    let mut v = vcpu(vm, 0, 0);
    let cr4 = v.guest_cr4().unwrap();
    v.vmcs
        .write_nat(VmcsNatural::Cr4ReadShadow, cr4 | CR4_OSXSAVE)
        .unwrap();
    v.xcr0 = 7;
    v.regs.rax = 1;
    resumes(dispatch(&mut v, ExitReason::Cpuid));
    assert_ne!(v.regs.rcx & (1 << 27), 0, "OSXSAVE follows CR4");
    v.vmcs.write_nat(VmcsNatural::GuestRip, RIP).unwrap();
    v.regs.rax = 0xd;
    v.regs.rcx = 0;
    resumes(dispatch(&mut v, ExitReason::Cpuid));
    assert_eq!(v.regs.rbx, 0x340, "XSAVE area for x87+SSE+AVX");
}

#[test]
fn invd_monitor_mwait_complete_and_rdpmc_raises_gp() {
    let (vm, _) = vm();
    for reason in [ExitReason::Invd, ExitReason::Monitor, ExitReason::Mwait] {
        let mut v = vcpu(vm, 0, 0);
        resumes(dispatch(&mut v, reason));
        completed(&v);
    }
    let mut v = vcpu(vm, 0, 0);
    resumes(dispatch(&mut v, ExitReason::Rdpmc));
    faulted_gp(&v);
}

/// An exit during the delivery of a page fault (its frame on a page the
/// EPT does not map yet): the page is mapped and the #PF delivered again,
/// with its error code.
#[test]
fn an_event_cut_short_by_an_ept_violation_is_delivered_again() {
    let (vm, _) = vm();
    let mut v = vcpu(vm, 0, 0);
    let pf = InterruptionInfo::hardware_exception(vector::PF, true);
    v.vmcs
        .write32(Vmcs32::IdtVectoringInfo, pf.to_raw())
        .unwrap();
    v.vmcs.write32(Vmcs32::IdtVectoringErrorCode, 0x6).unwrap();
    resumes(ept_fault(&mut v, 0x2000, WRITE));
    assert_eq!(injected(&v), pf.to_raw());
    assert_eq!(v.vmcs.read32(Vmcs32::VmEntryExceptionErrorCode).unwrap(), 6);
    assert_eq!(
        rip(&v),
        RIP,
        "the event is delivered, no instruction skipped"
    );

    // A software interrupt (INT n) keeps its instruction length.
    let mut v = vcpu(vm, 0, 0);
    let int80 = InterruptionInfo {
        vector: 0x80,
        kind: crate::vmx::exit::InterruptionType::SoftwareInterrupt,
        error_code_valid: false,
        nmi_unblocking: false,
        valid: true,
    };
    v.vmcs
        .write32(Vmcs32::IdtVectoringInfo, int80.to_raw())
        .unwrap();
    v.vmcs.write32(Vmcs32::VmExitInstructionLength, 2).unwrap();
    resumes(ept_fault(&mut v, 0x2000, READ));
    assert_eq!(injected(&v), int80.to_raw());
    assert_eq!(v.vmcs.read32(Vmcs32::VmEntryInstructionLength).unwrap(), 2);

    // Nothing pending: the entry field is cleared.
    let mut v = vcpu(vm, 0, 0);
    v.vmcs
        .write32(Vmcs32::VmEntryInterruptionInfo, pf.to_raw())
        .unwrap();
    resumes(ept_fault(&mut v, 0x2000, READ));
    assert_eq!(injected(&v), 0, "nothing delivered twice");
}

#[test]
fn exceptions_combine_into_double_and_triple_faults() {
    let (vm, _) = vm();
    let mut v = vcpu(vm, 0, 0);
    let pf = InterruptionInfo::hardware_exception(vector::PF, true);
    v.vmcs
        .write32(Vmcs32::IdtVectoringInfo, pf.to_raw())
        .unwrap();
    v.requeue_vectoring_event().unwrap();
    v.inject_gp().unwrap();
    let df = InterruptionInfo::hardware_exception(vector::DF, true);
    assert_eq!(injected(&v), df.to_raw(), "#PF then #GP: #DF");
    // A benign exception after a #PF is delivered as itself.
    let mut v = vcpu(vm, 0, 0);
    v.vmcs
        .write32(Vmcs32::IdtVectoringInfo, pf.to_raw())
        .unwrap();
    v.requeue_vectoring_event().unwrap();
    v.inject_ud().unwrap();
    assert_eq!(injected(&v), InterruptionInfo::ud().to_raw());
    // Anything while delivering #DF: the VM resets.
    let mut v = vcpu(vm, 0, 0);
    v.vmcs
        .write32(Vmcs32::IdtVectoringInfo, df.to_raw())
        .unwrap();
    v.requeue_vectoring_event().unwrap();
    assert!(matches!(
        v.inject(InterruptionInfo::gp(), 0),
        Err(Stop::Reset { .. })
    ));
}

/// A slot deleted while the VM runs (`mm::live`): its mapped pages are
/// zapped, the vCPU's cached index into the old array is not trusted, and
/// a later access to its gfns is contained, not mapped.
#[test]
fn a_deleted_slot_is_unmapped_and_its_gfns_are_contained() {
    let (vm, _) = vm();
    let mut v = vcpu(vm, 0, 0);
    // Slot 1 ([2 MiB, 4 MiB), read-only): a read maps it and caches it.
    resumes(ept_fault(&mut v, 0x30_0000, READ));
    assert!(vm.ept.translate(0x30_0000).is_some());
    let id = vm
        .slots
        .active_for_tests()
        .iter()
        .find(|s| s.base_gfn() == 0x200)
        .unwrap()
        .id();
    let generation = vm.slots.generation();
    let mut flushed = false;
    crate::mm::live::delete_slot(&vm.slots, &vm.ept, id, || flushed = true).unwrap();
    assert!(flushed, "guest-physical mappings flushed after the zap");
    assert_eq!(vm.slots.generation(), generation + 1);
    assert!(vm.ept.translate(0x30_0000).is_none(), "zapped");
    match ept_fault(&mut v, 0x30_1000, READ) {
        Err(Stop::Contained { what, .. }) => assert_eq!(what, "access to memory no memslot backs"),
        other => panic!("{other:?}"),
    }
    // Slot 0 still resolves through the same (now stale) cache.
    resumes(ept_fault(&mut v, 0x1000, WRITE));
}

/// A pending APIC interrupt is injected when the guest can take it, with
/// the vector acknowledged (IRR to ISR); with interrupts off the
/// interrupt-window exit is asked for instead, and nothing is taken.
#[test]
fn pending_interrupts_are_injected_or_wait_for_the_window() {
    use crate::vmx::controls::PrimaryProcBased;
    let (vm, _) = vm();
    {
        let mut l = vm.lapics[0].lock();
        l.mmio_write(crate::devices::lapic::reg::SVR, &0x1ffu32.to_le_bytes());
        assert!(l.accept_irq(0x41, false));
    }
    // As the MMIO exit that programmed the APIC would.
    vm.irq.activate();
    let window = PrimaryProcBased::INTERRUPT_WINDOW_EXITING.bits();
    // RFLAGS.IF = 0: wait for the window.
    let mut v = vcpu(vm, 0, 0);
    v.vmcs.write_nat(VmcsNatural::GuestRflags, 0x2).unwrap();
    v.deliver_events().unwrap();
    assert_eq!(injected(&v), 0);
    assert_ne!(
        v.vmcs.read32(Vmcs32::PrimaryProcBasedControls).unwrap() & window,
        0
    );
    assert_eq!(
        vm.lapics[0].lock().highest_pending(),
        Some(0x41),
        "not taken"
    );
    // IF = 1, in the HLT state: injected, the vCPU wakes, the window closes.
    v.vmcs.write_nat(VmcsNatural::GuestRflags, 0x202).unwrap();
    v.vmcs.write32(Vmcs32::GuestActivityState, 1).unwrap();
    v.deliver_events().unwrap();
    assert_eq!(
        injected(&v),
        InterruptionInfo::external_interrupt(0x41).to_raw()
    );
    assert_eq!(v.vmcs.read32(Vmcs32::GuestActivityState).unwrap(), 0);
    assert_eq!(
        v.vmcs.read32(Vmcs32::PrimaryProcBasedControls).unwrap() & window,
        0
    );
    assert_eq!(vm.lapics[0].lock().highest_pending(), None, "IRR -> ISR");
}

/// HLT with interrupts on and nothing pending sleeps in the HLT activity
/// state (the core halts in the guest); with interrupts off it is reported.
#[test]
fn hlt_sleeps_in_the_hlt_activity_state() {
    let (vm, _) = vm();
    let mut v = vcpu(vm, 1, 0);
    v.vmcs
        .write32(Vmcs32::GuestInterruptibilityState, 1)
        .unwrap(); // sti; hlt
    resumes(dispatch(&mut v, ExitReason::Hlt));
    completed(&v);
    assert_eq!(v.vmcs.read32(Vmcs32::GuestActivityState).unwrap(), 1);
    assert_eq!(
        v.vmcs.read32(Vmcs32::GuestInterruptibilityState).unwrap(),
        0,
        "the STI shadow ended with HLT"
    );
}

/// A vCPU started by SIPI has real mode's 16-bit busy TSS in TR; entering
/// IA-32e mode makes it a 64-bit busy TSS, as VM entry requires there.
#[test]
fn entering_ia32e_mode_fixes_up_a_16_bit_tss() {
    let (vm, _) = vm();
    let mut v = vcpu(vm, 0, mov_to_cr(0, 0));
    protected_mode(&mut v, EFER_LME);
    v.vmcs
        .write_nat(VmcsNatural::Cr4ReadShadow, CR4_PAE)
        .unwrap();
    v.vmcs.write32(Vmcs32::GuestTrAccessRights, 0x83).unwrap();
    v.regs.rax = CR0_PE | CR0_PG;
    resumes(dispatch(&mut v, ExitReason::CrAccess));
    completed(&v);
    assert_eq!(v.vmcs.read32(Vmcs32::GuestTrAccessRights).unwrap(), 0x8b);
}
