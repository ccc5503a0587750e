//! # pcdevices: QEMU `pc` devices through port I/O, and isa-debug-exit
//!
//! vCPU 0 checks, in order (the failing check's number is the exit code it
//! writes to isa-debug-exit, 0xF4):
//! 1. the 8259A master's IMR reads back (0x21);
//! 2. fw_cfg (0x510/0x511): signature "QEMU", NB_CPUS = the vCPU count;
//! 3. PCI mechanism #1: CONFIG_ADDRESS reads back, bus 0 device 0 is absent
//!    (CONFIG_DATA all ones);
//! 4. the ACPI PM timer (0x608) moves and stays within 24 bits;
//! 5. the 8042's status (0x64) has empty buffers and the system flag;
//! 6. CMOS register D (0x70/0x71) says valid RAM;
//! 7. an unknown port (0x1234) reads 0xFF, and "Shutdown" written to Bochs'
//!    own shutdown port (0x8900) does not reach Bochs.
//!
//! Then it prints `pcdevices: PASS` and writes 0 to 0xF4: the hypervisor
//! stops every vCPU with guest exit code 0. The other vCPUs spin with
//! interrupts enabled (STI; no interrupt is ever injected), with a harmless
//! port read (an exit) every 2^22 turns: the hypervisor kicks them out of
//! the guest (an external-interrupt exit in their SUMMARY), and the port read
//! bounds the wait if a kick is lost. (Bochs 2.7 does not deliver the kick
//! to a guest that runs with IF = 0 until its IF changes, though
//! external-interrupt exiting makes IF irrelevant on hardware: hence STI.)
#![no_std]
#![no_main]

use core::arch::asm;
use guest::abi::BootInfo;
use guest::{inb, outb, println};

guest::entry!(main);

fn outw(port: u16, v: u16) {
    // SAFETY: OUT touches no memory; the ports used here are emulated
    // devices without DMA.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") v, options(nomem, nostack, preserves_flags))
    };
}

fn outl(port: u16, v: u32) {
    // SAFETY: as outw.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags))
    };
}

fn inl(port: u16) -> u32 {
    let v;
    // SAFETY: IN touches no memory; the devices read have no DMA.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack, preserves_flags))
    };
    v
}

fn out8(port: u16, v: u8) {
    // SAFETY: emulated ports without DMA (see the module documentation).
    unsafe { outb(port, v) }
}

fn in8(port: u16) -> u8 {
    // SAFETY: as out8.
    unsafe { inb(port) }
}

/// Ends the VM with `code` through isa-debug-exit.
fn debug_exit(code: u32) -> ! {
    outl(0xF4, code);
    // Not reached: the hypervisor stops the vCPU at the write.
    loop {
        guest::halt();
    }
}

fn fail(code: u32, what: &str) -> ! {
    println!("pcdevices: FAIL {code}: {what}");
    debug_exit(code)
}

fn main(boot: &'static BootInfo) -> ! {
    if boot.vcpu_id != 0 {
        // SAFETY: STI only sets RFLAGS.IF; the hypervisor injects no
        // interrupt into this guest.
        unsafe { asm!("sti", options(nomem, nostack)) };
        let mut n: u64 = 0;
        loop {
            core::hint::spin_loop();
            n = n.wrapping_add(1);
            if n.is_multiple_of(1 << 22) {
                in8(0x80);
            }
        }
    }

    out8(0x21, 0xA5);
    if in8(0x21) != 0xA5 {
        fail(1, "the PIC's IMR does not read back");
    }
    out8(0x21, 0xFF);

    outw(0x510, 0x0000);
    let sig = [in8(0x511), in8(0x511), in8(0x511), in8(0x511)];
    if &sig != b"QEMU" {
        fail(2, "fw_cfg signature is not QEMU");
    }
    outw(0x510, 0x0005);
    let cpus = u16::from_le_bytes([in8(0x511), in8(0x511)]);
    if u32::from(cpus) != boot.vcpu_count {
        fail(2, "fw_cfg NB_CPUS is not the vCPU count");
    }

    outl(0xCF8, 0x8000_0000);
    if inl(0xCF8) != 0x8000_0000 {
        fail(3, "PCI CONFIG_ADDRESS does not read back");
    }
    if inl(0xCFC) != 0xFFFF_FFFF {
        fail(3, "PCI bus 0 device 0 answers");
    }

    let t0 = inl(0x608);
    let mut t1 = t0;
    for _ in 0..1000 {
        t1 = inl(0x608);
        if t1 != t0 {
            break;
        }
    }
    if t1 == t0 || t0 >> 24 != 0 || t1 >> 24 != 0 {
        fail(4, "the PM timer does not count in 24 bits");
    }

    if in8(0x64) & 0x07 != 0x04 {
        fail(5, "8042 status: buffers not empty or no system flag");
    }

    out8(0x70, 0x0D);
    if in8(0x71) != 0x80 {
        fail(6, "CMOS register D does not say valid RAM");
    }

    if in8(0x1234) != 0xFF {
        fail(7, "an unknown port does not read 0xFF");
    }
    for b in b"Shutdown" {
        // Bochs' shutdown port: if it reached Bochs, Bochs would quit here
        // and the run would end without a result.
        out8(0x8900, *b);
    }

    println!("pcdevices: PASS");
    debug_exit(0)
}
