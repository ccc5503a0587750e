//! One GDT and TSS per core. The bootloader's GDT has no TSS, and VM entry
//! needs a non-zero host TR (SDM Vol. 3C, 27.2.3 "Checks on Host Segment and
//! Descriptor-Table Registers"), so each core loads its own.

use super::MAX_CPUS;
use spin::Once;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::registers::segmentation::SegmentSelector;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// IST slot used for double faults, so that a kernel stack overflow still
/// reports instead of triple-faulting.
pub const DOUBLE_FAULT_IST: u16 = 0;
const IST_STACK: usize = 16 * 1024;

pub struct Selectors {
    pub code: SegmentSelector,
    pub data: SegmentSelector,
    pub tss: SegmentSelector,
}

#[repr(align(16))]
struct Stack(#[allow(dead_code)] [u8; IST_STACK]); // only its address is used

static mut IST_STACKS: [Stack; MAX_CPUS] = [const { Stack([0; IST_STACK]) }; MAX_CPUS];
static TSS: [Once<TaskStateSegment>; MAX_CPUS] = [const { Once::new() }; MAX_CPUS];
static GDT: [Once<(GlobalDescriptorTable, Selectors)>; MAX_CPUS] =
    [const { Once::new() }; MAX_CPUS];

/// Loads core `cpu`'s GDT and TSS and reloads the segment registers. Call once
/// per core, on that core.
pub fn init(cpu: usize) -> &'static Selectors {
    assert!(cpu < MAX_CPUS);
    let tss = TSS[cpu].call_once(|| {
        let mut tss = TaskStateSegment::new();
        // Only the address of this core's stack is taken, never a reference.
        let stack = (&raw const IST_STACKS).cast::<Stack>().wrapping_add(cpu);
        tss.interrupt_stack_table[DOUBLE_FAULT_IST as usize] =
            VirtAddr::from_ptr(stack) + IST_STACK as u64;
        tss
    });
    let (gdt, sel) = GDT[cpu].call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let tss = gdt.append(Descriptor::tss_segment(tss));
        (gdt, Selectors { code, data, tss })
    });
    gdt.load();
    // SAFETY: the selectors index the GDT just loaded, whose descriptors are
    // valid for 64-bit kernel code, data and this core's TSS.
    unsafe {
        CS::set_reg(sel.code);
        DS::set_reg(sel.data);
        ES::set_reg(sel.data);
        SS::set_reg(sel.data);
        load_tss(sel.tss);
    }
    sel
}

/// The base of core `cpu`'s TSS, for the VMCS host-state area.
pub fn tss_base(cpu: usize) -> u64 {
    TSS[cpu].get().expect("gdt::init not run on this core") as *const _ as u64
}

/// Core `cpu`'s selectors.
pub fn selectors(cpu: usize) -> &'static Selectors {
    &GDT[cpu].get().expect("gdt::init not run on this core").1
}
