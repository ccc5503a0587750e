//! The IDT. Every exception prints its vector, error code, RIP and CR2, then
//! ends the run with a failure status: an exception in the hypervisor is a bug.

use spin::Lazy;
use x86_64::registers::control::Cr2;
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame, PageFaultErrorCode};

fn report(vector: u8, name: &str, error: Option<u64>, frame: &InterruptStackFrame) -> ! {
    let cr2 = Cr2::read_raw();
    match error {
        Some(e) => crate::println!(
            "EXCEPTION {vector} ({name}) error={e:#x} rip={:#x} cr2={cr2:#x} rsp={:#x}",
            frame.instruction_pointer.as_u64(),
            frame.stack_pointer.as_u64()
        ),
        None => crate::println!(
            "EXCEPTION {vector} ({name}) rip={:#x} cr2={cr2:#x} rsp={:#x}",
            frame.instruction_pointer.as_u64(),
            frame.stack_pointer.as_u64()
        ),
    }
    super::finish(false)
}

macro_rules! handlers {
    ($($field:ident = $vec:literal, $kind:ident;)*) => {
        fn install(idt: &mut InterruptDescriptorTable) {
            $( handlers!(@one idt, $field, $vec, $kind); )*
        }
    };
    (@one $idt:ident, $field:ident, $vec:literal, plain) => {{
        extern "x86-interrupt" fn h(frame: InterruptStackFrame) {
            report($vec, stringify!($field), None, &frame)
        }
        $idt.$field.set_handler_fn(h);
    }};
    (@one $idt:ident, $field:ident, $vec:literal, code) => {{
        extern "x86-interrupt" fn h(frame: InterruptStackFrame, code: u64) {
            report($vec, stringify!($field), Some(code), &frame)
        }
        $idt.$field.set_handler_fn(h);
    }};
}

handlers! {
    divide_error = 0, plain;
    debug = 1, plain;
    non_maskable_interrupt = 2, plain;
    breakpoint = 3, plain;
    overflow = 4, plain;
    bound_range_exceeded = 5, plain;
    invalid_opcode = 6, plain;
    device_not_available = 7, plain;
    invalid_tss = 10, code;
    segment_not_present = 11, code;
    stack_segment_fault = 12, code;
    general_protection_fault = 13, code;
    x87_floating_point = 16, plain;
    alignment_check = 17, code;
    simd_floating_point = 19, plain;
    virtualization = 20, plain;
    cp_protection_exception = 21, code;
}

extern "x86-interrupt" fn double_fault(frame: InterruptStackFrame, code: u64) -> ! {
    report(8, "double_fault", Some(code), &frame)
}

extern "x86-interrupt" fn machine_check(frame: InterruptStackFrame) -> ! {
    report(18, "machine_check", None, &frame)
}

extern "x86-interrupt" fn page_fault(frame: InterruptStackFrame, code: PageFaultErrorCode) {
    report(14, "page_fault", Some(code.bits()), &frame)
}

extern "x86-interrupt" fn unexpected_interrupt(frame: InterruptStackFrame) {
    report(0xff, "unexpected interrupt", None, &frame)
}

static IDT: Lazy<InterruptDescriptorTable> = Lazy::new(|| {
    let mut idt = InterruptDescriptorTable::new();
    install(&mut idt);
    // SAFETY: DOUBLE_FAULT_IST is set in every core's TSS by gdt::init.
    unsafe {
        idt.double_fault
            .set_handler_fn(double_fault)
            .set_stack_index(super::gdt::DOUBLE_FAULT_IST);
    }
    idt.machine_check.set_handler_fn(machine_check);
    idt.page_fault.set_handler_fn(page_fault);
    for i in 32..=255u8 {
        idt[i].set_handler_fn(unexpected_interrupt);
    }
    idt
});

/// Loads the IDT on the running core (after `gdt::init`).
pub fn init() {
    IDT.load();
}
