//! MMIO through EPT violations: the instruction fetched through the guest's
//! own page tables (built here in guest RAM), decoded, and carried out
//! against a device on the VM's MMIO bus.

use super::*;
use crate::devices::BusDevice;
use std::sync::Arc;
use std::vec;

/// A device page that stores what is written and logs every access.
struct Regs32 {
    mem: Vec<u8>,
    log: Vec<(char, u64, Vec<u8>)>,
}

impl Default for Regs32 {
    fn default() -> Self {
        Regs32 {
            mem: vec![0; 0x1000],
            log: Vec::new(),
        }
    }
}

impl BusDevice for Regs32 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let o = offset as usize;
        data.copy_from_slice(&self.mem[o..o + data.len()]);
        self.log.push(('r', offset, data.to_vec()));
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        let o = offset as usize;
        self.mem[o..o + data.len()].copy_from_slice(data);
        self.log.push(('w', offset, data.to_vec()));
    }
}

const DEV: u64 = 0xfed0_0000;
const DEV_REG: u64 = DEV + 0x20;
const PORT: u64 = 0x700;

/// The test VM with a device at `DEV` (one page).
fn vm_with_device() -> (&'static TestVm, Arc<spin::Mutex<Regs32>>) {
    let (caps, controls) = skylake_for_tests();
    let out: &'static Lines = Box::leak(Box::new(Lines(Mutex::new(Vec::new()))));
    let parts = VmParts {
        config: RunConfig {
            mem_mib: 4,
            slots: 2,
            readonly_slot: Some(1),
            ..RunConfig::default()
        },
        caps,
        controls,
        vcpus: 1,
        out,
        workload: None,
        cpuid: CpuidPolicy::new(host_cpu, 1, Provided::default()),
        kick: &no_kick,
        clock: std::sync::Arc::new(crate::devices::test_support::ManualClock::default()),
    };
    let elf = crate::boot::elf::guest_elf_for_tests();
    let mut vm = Vm::build(test_host::memory(), parts, &elf).unwrap();
    let dev = Arc::new(spin::Mutex::new(Regs32::default()));
    vm.mmio.insert(DEV, 0x1000, dev.clone()).unwrap();
    // The same registers at ports PORT..PORT+16, for string I/O.
    vm.pio.insert(PORT, 0x10, dev.clone()).unwrap();
    (Box::leak(Box::new(vm)), dev)
}

fn write_guest(vm: &TestVm, gpa: u64, bytes: &[u8]) {
    vm.guest_mem().write(gpa, bytes).unwrap();
}

fn read_guest_u64(vm: &TestVm, gpa: u64) -> u64 {
    let mut b = [0u8; 8];
    vm.guest_mem().read(gpa, &mut b).unwrap();
    u64::from_le_bytes(b)
}

/// 4-level tables at 0x1f_0000: PML4 → PDPT → PD, PD entry 0 a 2 MiB
/// identity page (RAM 0..2 MiB), entry 1 not present.
const PML4: u64 = 0x1f_0000;
const PDPT: u64 = 0x1f_1000;
const PD: u64 = 0x1f_2000;

fn build_tables(vm: &TestVm) {
    write_guest(vm, PML4, &(PDPT | 0x3).to_le_bytes());
    write_guest(vm, PDPT, &(PD | 0x3).to_le_bytes());
    write_guest(vm, PD, &0x83u64.to_le_bytes());
    write_guest(vm, PD + 8, &0u64.to_le_bytes());
}

/// vCPU 0 in 64-bit mode with those tables, at `rip`, RBX = the device
/// register.
fn vcpu64(vm: &TestVm, rip: u64) -> Vcpu<'_, MockHw, &'static TestMem> {
    build_tables(vm);
    let mut v = vcpu(vm, 0, 0);
    let h = &mut v.vmcs;
    h.write_nat(VmcsNatural::GuestCr3, PML4).unwrap();
    h.write_nat(VmcsNatural::GuestRip, rip).unwrap();
    h.write32(Vmcs32::GuestCsAccessRights, 0xa09b).unwrap();
    h.write32(Vmcs32::GuestSsAccessRights, 0xc093).unwrap();
    // The exit's instruction length is not valid for EPT violations: a
    // wrong value here must not matter.
    h.write32(Vmcs32::VmExitInstructionLength, 7).unwrap();
    v.regs.rbx = DEV_REG;
    v
}

/// Guest linear address valid, access to the translation (bits 7 and 8).
const GLA: u64 = (1 << 7) | (1 << 8);

fn mmio_fault(v: &mut Vcpu<MockHw, &'static TestMem>, q: u64) -> Result<Action, Stop> {
    v.vmcs
        .write_nat(VmcsNatural::GuestLinearAddress, DEV_REG)
        .unwrap();
    ept_fault(v, DEV_REG, q | GLA)
}

#[test]
fn mmio_store_and_load_reach_the_device_in_64_bit_mode() {
    let (vm, dev) = vm_with_device();
    // mov [rbx], eax; mov rcx, [rbx]; or dword [rbx], 0x100.
    let code = [0x89, 0x03, 0x48, 0x8b, 0x0b, 0x81, 0x0b, 0x00, 0x01, 0, 0];
    write_guest(vm, 0x10_0000, &code);
    let mut v = vcpu64(vm, 0x10_0000);
    v.regs.rax = 0xffff_ffff_1234_5678;
    // In an STI shadow: it ends with the emulated instruction.
    v.vmcs
        .write32(Vmcs32::GuestInterruptibilityState, 1 | (1 << 3))
        .unwrap();
    assert!(!vm.irq.is_active());
    resumes(mmio_fault(&mut v, WRITE));
    assert!(
        vm.irq.is_active(),
        "an MMIO access turns the interrupt polls on"
    );
    assert_eq!(
        v.vmcs.read32(Vmcs32::GuestInterruptibilityState).unwrap(),
        1 << 3,
        "STI blocking cleared, NMI blocking kept"
    );
    assert_eq!(rip(&v), 0x10_0002, "RIP moved by the decoded length");
    assert_eq!(injected(&v), 0);
    resumes(mmio_fault(&mut v, READ));
    assert_eq!(rip(&v), 0x10_0005);
    assert_eq!(v.regs.rcx, 0x1234_5678);
    resumes(mmio_fault(&mut v, READ | WRITE));
    assert_eq!(rip(&v), 0x10_000b);
    let d = dev.lock();
    assert_eq!(
        d.log,
        vec![
            ('w', 0x20, vec![0x78, 0x56, 0x34, 0x12]),
            ('r', 0x20, vec![0x78, 0x56, 0x34, 0x12, 0, 0, 0, 0]),
            ('r', 0x20, vec![0x78, 0x56, 0x34, 0x12]),
            ('w', 0x20, vec![0x78, 0x57, 0x34, 0x12]),
        ]
    );
    // RFLAGS written back: OR cleared CF/OF, the result's PF/SF/ZF.
    let rflags = v.vmcs.read_nat(VmcsNatural::GuestRflags).unwrap();
    assert_eq!(
        rflags & 0x8d5,
        0x4,
        "0x12345778: PF (0x78 has 4 bits), no SF/ZF/CF/OF"
    );
    // The walk set the accessed flags the CPU sets (SDM 4.8).
    assert_ne!(read_guest_u64(vm, PML4) & (1 << 5), 0);
    assert_ne!(read_guest_u64(vm, PD) & (1 << 5), 0);
    assert_eq!(read_guest_u64(vm, PD) & (1 << 6), 0, "a fetch sets no D");
}

#[test]
fn mmio_in_32_bit_protected_mode_with_paging_off() {
    let (vm, dev) = vm_with_device();
    // mov [0xfed00020], eax (A3 moffs32); then mov al, [ebx+0x10].
    let code = [0xa3, 0x20, 0x00, 0xd0, 0xfe, 0x8a, 0x43, 0x10];
    write_guest(vm, 0x10_0000, &code);
    let mut v = vcpu(vm, 0, 0);
    let h = &mut v.vmcs;
    h.write_nat(VmcsNatural::GuestCr0, CR0_PE | CR0_ET | CR0_NE)
        .unwrap();
    h.write_nat(VmcsNatural::GuestCr4, CR4_VMXE).unwrap();
    h.write64(Vmcs64::GuestIa32Efer, 0).unwrap();
    h.write32(Vmcs32::GuestCsAccessRights, 0xc09b).unwrap();
    h.write_nat(VmcsNatural::GuestRip, 0x10_0000).unwrap();
    v.regs.rax = 0xaabb_ccdd;
    v.regs.rbx = DEV_REG - 0x10;
    resumes(ept_fault(&mut v, DEV_REG, WRITE));
    assert_eq!(rip(&v), 0x10_0005);
    resumes(ept_fault(&mut v, DEV_REG, READ));
    assert_eq!(rip(&v), 0x10_0008);
    assert_eq!(v.regs.rax, 0xaabb_ccdd, "AL = the byte read back");
    assert_eq!(dev.lock().log[0], ('w', 0x20, vec![0xdd, 0xcc, 0xbb, 0xaa]));
}

#[test]
fn an_unsupported_instruction_is_contained_with_its_bytes() {
    let (vm, dev) = vm_with_device();
    // xadd [rbx], eax
    write_guest(vm, 0x10_0000, &[0x0f, 0xc1, 0x03, 0x90]);
    let mut v = vcpu64(vm, 0x10_0000);
    match mmio_fault(&mut v, READ | WRITE) {
        Err(Stop::Contained { what, detail }) => {
            assert_eq!(what, "MMIO access the hypervisor does not emulate");
            assert!(detail.contains("bytes 0f c1 03"), "{detail}");
            assert!(detail.contains("gpa=0xfed00020"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert!(dev.lock().log.is_empty());
    assert_eq!(rip(&v), 0x10_0000);
    // The linear address the exit reports must be the operand's.
    write_guest(vm, 0x10_0000, &[0x89, 0x43, 0x08]); // mov [rbx+8], eax
    let mut v = vcpu64(vm, 0x10_0000);
    assert!(matches!(
        mmio_fault(&mut v, WRITE),
        Err(Stop::Contained { detail, .. }) if detail.contains("not the access")
    ));
    // A fetch from a device page, and page tables in one, are contained.
    let mut v = vcpu64(vm, 0x10_0000);
    assert!(matches!(
        ept_fault(&mut v, DEV_REG, 4),
        Err(Stop::Contained {
            what: "instruction fetch from an MMIO range",
            ..
        })
    ));
    assert!(matches!(
        ept_fault(&mut v, DEV_REG, READ | (1 << 7)),
        Err(Stop::Contained {
            what: "guest page tables in an MMIO range",
            ..
        })
    ));
    // An exception frame pushed onto a device page (IDT-vectoring valid).
    v.vmcs
        .write32(Vmcs32::IdtVectoringInfo, InterruptionInfo::gp().to_raw())
        .unwrap();
    assert!(matches!(
        mmio_fault(&mut v, WRITE),
        Err(Stop::Contained {
            what: "event delivery touched an MMIO range",
            ..
        })
    ));
    assert!(dev.lock().log.is_empty());
}

#[test]
fn a_fetch_fault_injects_page_fault_with_cr2() {
    let (vm, dev) = vm_with_device();
    // RIP in a page the guest has not mapped (PD entry 1).
    let mut v = vcpu64(vm, 0x20_0040);
    resumes(mmio_fault(&mut v, WRITE));
    assert_eq!(
        injected(&v),
        InterruptionInfo::hardware_exception(14, true).to_raw()
    );
    // Not present, supervisor fetch, I/D (NXE is on).
    assert_eq!(
        v.vmcs.read32(Vmcs32::VmEntryExceptionErrorCode).unwrap(),
        0x10
    );
    assert_eq!(v.vmcs.cr2, Some(0x20_0040));
    assert_eq!(rip(&v), 0x20_0040, "RIP stays on the instruction");
    assert!(dev.lock().log.is_empty());

    // An instruction that straddles into the unmapped page: #PF at the
    // page boundary. One that ends before it runs.
    write_guest(vm, 0x1f_fffe, &[0x8b, 0x0b]); // mov ecx, [rbx]
    let mut v = vcpu64(vm, 0x1f_fffe);
    resumes(mmio_fault(&mut v, READ));
    assert_eq!(injected(&v), 0);
    assert_eq!(rip(&v), 0x20_0000);
    write_guest(vm, 0x1f_ffff, &[0x8b]);
    let mut v = vcpu64(vm, 0x1f_ffff);
    resumes(mmio_fault(&mut v, READ));
    assert_eq!(v.vmcs.cr2, Some(0x20_0000));
    assert_eq!(
        injected(&v),
        InterruptionInfo::hardware_exception(14, true).to_raw()
    );
    // A user-mode guest (CPL 3 from SS.DPL) on a supervisor page: P|U|I.
    let mut v = vcpu64(vm, 0x10_0000);
    v.vmcs
        .write32(Vmcs32::GuestSsAccessRights, 0xc093 | (3 << 5))
        .unwrap();
    resumes(mmio_fault(&mut v, WRITE));
    assert_eq!(
        v.vmcs.read32(Vmcs32::VmEntryExceptionErrorCode).unwrap(),
        0x15
    );
    // Page tables outside RAM: contained, not a panic.
    write_guest(vm, PML4, &(0x8000_0000u64 | 3).to_le_bytes());
    let mut v = vcpu64(vm, 0x10_0000);
    v.vmcs.write_nat(VmcsNatural::GuestCr3, PML4).unwrap();
    // vcpu64 rebuilt the tables: break them again.
    write_guest(vm, PML4, &(0x8000_0000u64 | 3).to_le_bytes());
    assert!(matches!(
        mmio_fault(&mut v, WRITE),
        Err(Stop::Contained { detail, .. }) if detail.contains("no memslot backs")
    ));
}

/// The local APIC page at IA32_APIC_BASE reaches this vCPU's own APIC
/// model; relocating or disabling the APIC moves or removes the page.
#[test]
fn the_apic_page_is_the_vcpus_own_and_follows_ia32_apic_base() {
    let (vm, _) = vm_with_device();
    // mov eax, [rbx]
    write_guest(vm, 0x10_0000, &[0x8b, 0x03]);
    let mut v = vcpu64(vm, 0x10_0000);
    // Software-enable the APIC model and set TPR through its registers.
    vm.lapics[0]
        .lock()
        .mmio_write(crate::devices::lapic::reg::TPR, &0x50u32.to_le_bytes());
    let tpr = 0xfee0_0000 + crate::devices::lapic::reg::TPR;
    v.regs.rbx = tpr;
    assert!(super::super::mmio::claims(&v, tpr));
    v.vmcs
        .write_nat(VmcsNatural::GuestLinearAddress, tpr)
        .unwrap();
    resumes(ept_fault(&mut v, tpr, READ | GLA));
    assert_eq!(v.regs.rax, 0x50, "TPR read from vCPU 0's APIC");
    // Relocate the APIC; the old page is no longer the APIC's.
    let mut w = vcpu(vm, 0, 0);
    w.regs.rcx = u64::from(IA32_APIC_BASE);
    w.regs.rax = 0xfeb0_0000 | (1 << 11) | (1 << 8);
    resumes(dispatch(&mut w, ExitReason::Wrmsr));
    assert_eq!(injected(&w), 0);
    assert!(!super::super::mmio::claims(&w, tpr));
    assert!(super::super::mmio::claims(&w, 0xfeb0_0080));
    // Reserved bits and x2APIC (not offered) raise #GP.
    for bad in [0xfee0_0000 | (1 << 11) | 1, 0xfee0_0000 | (3 << 10)] {
        let mut w = vcpu(vm, 0, 0);
        w.regs.rcx = u64::from(IA32_APIC_BASE);
        w.regs.rax = bad;
        resumes(dispatch(&mut w, ExitReason::Wrmsr));
        assert_eq!(injected(&w), InterruptionInfo::gp().to_raw());
    }
}

/// REP OUTSB and REP INSW through the guest's page tables, with the
/// registers advanced as the CPU advances them.
#[test]
fn string_io_moves_elements_through_the_guests_page_tables() {
    let (vm, dev) = vm_with_device();
    write_guest(vm, 0x3000, b"hi!");
    let mut v = vcpu64(vm, 0x10_0000);
    let io = |size: u64, input: bool| {
        (size - 1) | (u64::from(input) << 3) | (1 << 4) | (1 << 5) | (PORT << 16)
    };
    // 64-bit address size (bits 9:7 = 2), DS (bits 17:15 = 3).
    let info = (2 << 7) | (3 << 15);
    v.vmcs.write32(Vmcs32::VmExitInstructionInfo, info).unwrap();
    v.vmcs.write32(Vmcs32::VmExitInstructionLength, 2).unwrap();
    v.vmcs
        .write_nat(VmcsNatural::ExitQualification, io(1, false))
        .unwrap();
    v.regs.rsi = 0x3000;
    v.regs.rcx = 3;
    resumes(dispatch(&mut v, ExitReason::IoInstruction));
    assert_eq!((v.regs.rsi, v.regs.rcx), (0x3003, 0));
    assert_eq!(rip(&v), 0x10_0002, "done: RIP past the instruction");
    let writes: Vec<u8> = dev.lock().log.iter().map(|(_, _, d)| d[0]).collect();
    assert_eq!(writes, b"hi!");

    // REP INSW, backwards (DF = 1), into RAM: the port's register (the
    // last byte written, 0 above it) twice.
    v.vmcs.write_nat(VmcsNatural::GuestRip, 0x10_0000).unwrap();
    let rflags = v.vmcs.read_nat(VmcsNatural::GuestRflags).unwrap();
    v.vmcs
        .write_nat(VmcsNatural::GuestRflags, rflags | (1 << 10))
        .unwrap();
    v.vmcs
        .write_nat(VmcsNatural::ExitQualification, io(2, true))
        .unwrap();
    v.regs.rdi = 0x4002;
    v.regs.rcx = 2;
    resumes(dispatch(&mut v, ExitReason::IoInstruction));
    assert_eq!((v.regs.rdi, v.regs.rcx), (0x3ffe, 0));
    let mut b = [0u8; 4];
    vm.guest_mem().read(0x4000, &mut b).unwrap();
    assert_eq!(b, [b'!', 0, b'!', 0]);

    // An element on a page the guest did not map: #PF, registers as far
    // as the iterations went, RIP on the instruction.
    v.vmcs.write_nat(VmcsNatural::GuestRip, 0x10_0000).unwrap();
    v.vmcs.write_nat(VmcsNatural::GuestRflags, rflags).unwrap();
    v.vmcs
        .write_nat(VmcsNatural::ExitQualification, io(1, false))
        .unwrap();
    v.regs.rsi = 0x1f_fffe; // the last two bytes of the 2 MiB page, then unmapped
    v.regs.rcx = 4;
    resumes(dispatch(&mut v, ExitReason::IoInstruction));
    assert_eq!((v.regs.rsi, v.regs.rcx), (0x20_0000, 2));
    assert_eq!(rip(&v), 0x10_0000);
    let pf = InterruptionInfo::hardware_exception(crate::vmx::exit::vector::PF, true);
    assert_eq!(injected(&v), pf.to_raw());
    assert_eq!(v.vmcs.cr2, Some(0x20_0000));
}

/// vCPU 0 in 32-bit protected mode with `cr0`/`cr4` paging and CR3 = `cr3`.
fn vcpu32(vm: &TestVm, cr4: u64, cr3: u64, rip: u64) -> Vcpu<'_, MockHw, &'static TestMem> {
    let mut v = vcpu(vm, 0, 0);
    let h = &mut v.vmcs;
    h.write_nat(
        VmcsNatural::GuestCr0,
        CR0_PE | CR0_ET | CR0_NE | CR0_PG | CR0_WP,
    )
    .unwrap();
    h.write_nat(VmcsNatural::GuestCr4, cr4 | CR4_VMXE).unwrap();
    h.write_nat(VmcsNatural::GuestCr3, cr3).unwrap();
    h.write64(Vmcs64::GuestIa32Efer, 0).unwrap();
    h.write32(Vmcs32::VmEntryControls, vm.controls.entry)
        .unwrap();
    h.write32(Vmcs32::GuestCsAccessRights, 0xc09b).unwrap();
    h.write32(Vmcs32::GuestSsAccessRights, 0xc093).unwrap();
    h.write_nat(VmcsNatural::GuestRip, rip).unwrap();
    v.regs.rbx = DEV_REG;
    v
}

#[test]
fn fetch_through_32_bit_and_pae_paging() {
    let (vm, dev) = vm_with_device();
    // Code at gpa 0x10_0000, run at linear 0xc010_0000.
    write_guest(vm, 0x10_0000, &[0x89, 0x03]); // mov [ebx], eax

    // 32-bit paging, CR4.PSE: PDE 0x300 is a 4 MiB page at 0.
    write_guest(vm, 0x1e_0000 + 0x300 * 4, &0x83u32.to_le_bytes());
    let mut v = vcpu32(vm, CR4_PSE, 0x1e_0000, 0xc010_0000);
    v.regs.rax = 0x11;
    resumes(mmio_fault(&mut v, WRITE));
    assert_eq!(rip(&v), 0xc010_0002);
    // The accessed flag, set with a 4-byte compare-exchange.
    let mut pde = [0u8; 4];
    vm.guest_mem()
        .read(0x1e_0000 + 0x300 * 4, &mut pde)
        .unwrap();
    assert_eq!(u32::from_le_bytes(pde), 0x83 | 0x20);

    // PAE: the PDPTEs come from the VMCS (what the CPU holds), not from
    // the memory at CR3 (zeros here). PDPTE 3 → PD at 0x1e_1000, whose
    // entry 0 is a 2 MiB page at 0.
    write_guest(vm, 0x1e_1000, &0x83u64.to_le_bytes());
    let mut v = vcpu32(vm, CR4_PAE, 0x1e_2000, 0xc010_0000);
    v.vmcs.write64(Vmcs64::GuestPdpte3, 0x1e_1001).unwrap();
    v.regs.rax = 0x22;
    resumes(mmio_fault(&mut v, WRITE));
    assert_eq!(rip(&v), 0xc010_0002);
    // Without that PDPTE: not present, #PF with CR2 = the linear RIP.
    let mut v = vcpu32(vm, CR4_PAE, 0x1e_2000, 0xc010_0000);
    resumes(mmio_fault(&mut v, WRITE));
    assert_eq!(v.vmcs.cr2, Some(0xc010_0000));
    assert_eq!(
        v.vmcs.read32(Vmcs32::VmEntryExceptionErrorCode).unwrap(),
        0,
        "not present, supervisor, no I/D without NXE"
    );
    let log = &dev.lock().log;
    assert_eq!(log.len(), 2);
    assert_eq!(log[0], ('w', 0x20, vec![0x11, 0, 0, 0]));
    assert_eq!(log[1], ('w', 0x20, vec![0x22, 0, 0, 0]));
}

#[test]
fn code_running_into_memory_no_slot_backs() {
    let (vm, _) = vm_with_device();
    // PD entry 1: a 2 MiB page at gpa 1 GiB, outside RAM.
    let prep = |rip| {
        let v = vcpu64(vm, rip);
        write_guest(vm, PD + 8, &(0x4000_0000u64 | 0x83).to_le_bytes());
        v
    };
    // An instruction that ends on the last RAM page runs.
    write_guest(vm, 0x1f_fffe, &[0x89, 0x03]);
    let mut v = prep(0x1f_fffe);
    resumes(mmio_fault(&mut v, WRITE));
    assert_eq!(rip(&v), 0x20_0000);
    // One that needs the next page is contained, naming it.
    write_guest(vm, 0x1f_ffff, &[0x89]);
    let mut v = prep(0x1f_ffff);
    match mmio_fault(&mut v, WRITE) {
        Err(Stop::Contained { what, detail }) => {
            assert_eq!(
                what,
                "MMIO: the instruction runs into memory no memslot backs"
            );
            assert!(detail.contains("gpa 0x40000000"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn accessed_flags_are_logged_and_read_only_tables_stay_untouched() {
    let (vm, _) = vm_with_device();
    write_guest(vm, 0x10_0000, &[0x89, 0x03]);
    // Slot 0 dirty-logged: the walk's A-flag writes mark the table pages.
    let slot0 = vm.slots.active_for_tests().iter().next().unwrap();
    slot0.insert_flags(SlotFlags::DIRTY_LOG);
    let mut v = vcpu64(vm, 0x10_0000);
    resumes(mmio_fault(&mut v, WRITE));
    let mut words = vec![0u64; 8];
    vm.dirty[0].get_and_clear(&mut words, |_| {}).unwrap();
    // PML4, PDPT and PD at gfns 0x1f0-0x1f2: word 7, bits 48-50.
    assert_eq!(words[7], 0b111 << 48);
    assert_eq!(words[..7], [0; 7]);
    // Tables in the read-only slot (slot 1, from 2 MiB): walked, not written.
    let (ro_pml4, ro_pdpt, ro_pd) = (0x30_0000u64, 0x30_1000u64, 0x30_2000u64);
    write_guest(vm, ro_pml4, &(ro_pdpt | 3).to_le_bytes());
    write_guest(vm, ro_pdpt, &(ro_pd | 3).to_le_bytes());
    write_guest(vm, ro_pd, &0x83u64.to_le_bytes());
    let mut v = vcpu64(vm, 0x10_0000);
    v.vmcs.write_nat(VmcsNatural::GuestCr3, ro_pml4).unwrap();
    resumes(mmio_fault(&mut v, WRITE));
    assert_eq!(rip(&v), 0x10_0002);
    assert_eq!(
        read_guest_u64(vm, ro_pml4),
        ro_pdpt | 3,
        "no A flag written"
    );
    assert_eq!(read_guest_u64(vm, ro_pd), 0x83);
}
