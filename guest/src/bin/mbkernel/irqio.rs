//! Interrupts that meet I/O: the 16550's THR-empty and received-data
//! interrupts on ISA IRQ 4 (through I/O APIC pin 4, as QEMU's MADT has no
//! override for it), input typed at the console echoed back, and an
//! interrupt raised by an MMIO access (a self-IPI written to the APIC's
//! ICR), delivered exactly once after the access whether IF is set then or
//! later.

use super::cpu::{apic_write, mbx_timer_isr, set_gate, ticks, TIMER_VECTOR};
use super::{inb, outb, Ctx, Msg, Serial, COM1};
use core::arch::{asm, global_asm};
use core::fmt::Write;

/// Vectors of these checks.
const UART_VECTOR: u8 = 0x44;
const SELF_VECTOR: u8 = 0x52;

global_asm!(
    r#"
    .section .text.mbx_irqio, "ax"
    .code64
    .global mbx_uart_isr, mbx_self_isr
mbx_uart_isr:               /* counts; the main loop drains the UART */
    incq mbx_uart_irqs(%rip)
    jmp 1f
mbx_self_isr:
    incq mbx_self_irqs(%rip)
1:  push %rax
    mov $0xfee000b0, %eax   /* EOI */
    movl $0, (%rax)
    pop %rax
    iretq
    .section .bss.mbx_irqio, "aw", @nobits
    .balign 8
    .global mbx_uart_irqs, mbx_self_irqs
mbx_uart_irqs: .skip 8
mbx_self_irqs: .skip 8
"#,
    options(att_syntax)
);

unsafe extern "C" {
    fn mbx_uart_isr();
    fn mbx_self_isr();
    static mbx_uart_irqs: u64;
    static mbx_self_irqs: u64;
}

fn uart_irqs() -> u64 {
    // SAFETY: written by the interrupt handler only.
    unsafe { (&raw const mbx_uart_irqs).read_volatile() }
}

fn self_irqs() -> u64 {
    // SAFETY: as above.
    unsafe { (&raw const mbx_self_irqs).read_volatile() }
}

/// I/O APIC pin `pin` to `vector` (edge, fixed, physical, APIC 0), or
/// masked.
fn ioapic_route(pin: u32, vector: Option<u8>) {
    let ioapic = 0xfec0_0000u64 as *mut u32;
    let low = vector.map_or(1 << 16, u32::from);
    // SAFETY: the I/O APIC's index and window registers, identity-mapped.
    unsafe {
        ioapic.write_volatile(0x10 + 2 * pin);
        ioapic.add(4).write_volatile(low);
        ioapic.write_volatile(0x11 + 2 * pin);
        ioapic.add(4).write_volatile(0);
    }
}

/// Sleeps (interrupts on) once; the handlers count what woke it.
fn sleep() {
    // SAFETY: sleeps until an interrupt.
    unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) };
}

/// APIC timer ticks (10 ms each) the input may take to arrive. Guest time:
/// an emulator skips idle time, so this is less on the wall clock.
const INPUT_TICKS: u64 = 12_000;

/// THR-empty and received-data interrupts on IRQ 4. With `echo_lines=N`
/// on the command line, says `mbkernel: uart input ready`, then takes N
/// lines typed at the console by interrupt and echoes each as
/// `mbkernel: echo "LINE"`.
pub fn check_uart_irq(c: &Ctx, why: &mut Msg) -> bool {
    super::setup_idt();
    set_gate(UART_VECTOR, mbx_uart_isr as *const () as u64);
    set_gate(TIMER_VECTOR, mbx_timer_isr as *const () as u64);
    apic_write(0xf0, 0x1ff);
    apic_write(0x80, 0);
    ioapic_route(4, Some(UART_VECTOR));
    let (ier, iir, lsr, mcr) = (COM1 + 1, COM1 + 2, COM1 + 5, COM1 + 4);
    outb(mcr, 0x0b); // DTR, RTS, OUT2 (the PC's interrupt gate)
                     // THR empty: enabling ETBEI with THR empty raises the interrupt.
    let i0 = uart_irqs();
    outb(ier, 0x02);
    sleep();
    let thre = uart_irqs() - i0;
    // IIR names the THR-empty source, and reading it clears it (PC16550D
    // section 8.4).
    let (first, second) = (inb(iir) & 0x0f, inb(iir) & 0x0f);
    outb(ier, 0);
    ensure!(why, thre == 1, "{thre} THR-empty interrupts, want 1");
    ensure!(
        why,
        (first, second) == (0x02, 0x01),
        "IIR read {first:#x} then {second:#x} after the THR-empty interrupt, want 0x2 then 0x1"
    );
    let Some(want) = c.num("echo_lines") else {
        say!("mbkernel: THR-empty interrupt on IRQ 4; no input expected (echo_lines=N)");
        ioapic_route(4, None);
        return true;
    };
    // FIFO on and cleared, trigger level 1; received-data interrupt on.
    outb(iir, 0x07);
    while inb(lsr) & 1 != 0 {
        inb(COM1);
    }
    outb(ier, 0x01);
    // The APIC timer bounds the wait: periodic, 10 ms at 1 GHz.
    apic_write(0x3e0, 0xb);
    apic_write(0x320, u32::from(TIMER_VECTOR) | 1 << 17);
    apic_write(0x380, 10_000_000);
    let (t0, i0) = (ticks(), uart_irqs());
    say!("mbkernel: uart input ready");
    let (mut lines, mut bytes) = (0u64, 0u64);
    let mut line = [0u8; 120];
    let mut len = 0;
    // A line ends at '\n' (a file) or '\r' (Enter at a terminal); the '\n'
    // of a "\r\n" ends nothing more.
    let mut last = 0u8;
    while lines < want && ticks() - t0 < INPUT_TICKS {
        while inb(lsr) & 1 != 0 {
            let b = inb(COM1);
            bytes += 1;
            let prev = core::mem::replace(&mut last, b);
            match b {
                b'\n' if prev == b'\r' => {}
                b'\n' | b'\r' => {
                    let text = core::str::from_utf8(&line[..len]).unwrap_or("?");
                    say!("mbkernel: echo \"{text}\"");
                    lines += 1;
                    len = 0;
                }
                _ if len < line.len() => {
                    line[len] = b;
                    len += 1;
                }
                _ => {}
            }
        }
        if lines < want {
            sleep();
        }
    }
    let irqs = uart_irqs() - i0;
    apic_write(0x380, 0);
    apic_write(0x320, 1 << 16);
    outb(ier, 0);
    ioapic_route(4, None);
    say!("mbkernel: UART input: {lines} lines, {bytes} bytes, {irqs} received-data interrupts");
    ensure!(
        why,
        lines == want,
        "{lines} of {want} lines typed at the console arrived in {} s",
        INPUT_TICKS / 100
    );
    ensure!(
        why,
        irqs >= 1 && irqs <= bytes,
        "{irqs} received-data interrupts for {bytes} bytes"
    );
    true
}

/// The APIC's ICR, where a self-IPI is sent by an MMIO write.
const ICR_LOW: u64 = 0xfee0_0300;
/// ICR: the "self" shorthand, fixed delivery, edge.
const SELF_IPI: u32 = 1 << 18 | SELF_VECTOR as u32;

/// An interrupt raised by an MMIO access (the hypervisor emulates the ICR
/// write) is delivered once after it: at once with IF set (after the STI
/// shadow), and held while IF is clear until STI.
pub fn check_mmio_irq(_: &Ctx, why: &mut Msg) -> bool {
    super::setup_idt();
    set_gate(SELF_VECTOR, mbx_self_isr as *const () as u64);
    apic_write(0xf0, 0x1ff);
    apic_write(0x80, 0);
    for i in 0..50 {
        let before = self_irqs();
        // SAFETY: an MMIO store to this vCPU's ICR with interrupts on for
        // the store and one instruction after it.
        unsafe {
            asm!("sti", "mov dword ptr [{icr}], {v:e}", "nop", "cli",
                 icr = in(reg) ICR_LOW, v = in(reg) SELF_IPI, options(nostack))
        };
        let got = self_irqs() - before;
        ensure!(
            why,
            got == 1,
            "IF set: self-IPI {i} delivered {got} times by the next instruction"
        );
    }
    for i in 0..20 {
        let before = self_irqs();
        // SAFETY: as above, with interrupts off.
        unsafe {
            asm!("mov dword ptr [{icr}], {v:e}", "nop",
                 icr = in(reg) ICR_LOW, v = in(reg) SELF_IPI, options(nostack))
        };
        let held = self_irqs() - before;
        // SAFETY: opens interrupts for one instruction after the shadow.
        unsafe { asm!("sti", "nop", "cli", options(nomem, nostack)) };
        let got = self_irqs() - before;
        ensure!(
            why,
            held == 0 && got == 1,
            "IF clear: self-IPI {i} delivered {held} times with IF = 0, {got} after STI"
        );
    }
    say!("mbkernel: 70 self-IPIs sent by MMIO writes, each delivered once");
    true
}
