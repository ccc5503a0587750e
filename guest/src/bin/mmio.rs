//! # mmio: instructions on a device page, emulated by the hypervisor
//!
//! Tests MMIO instruction emulation end to end. For this guest the
//! hypervisor puts a scratch device (a page that reads back what was
//! written, `devices::scratch`) at guest-physical `DEV` = 0xFEB0_0000,
//! inside the 4 GiB identity map and outside RAM. Every access to it is an
//! EPT violation; the hypervisor fetches the instruction through this
//! guest's page tables, decodes it and carries it out on the device.
//!
//! Each check runs one instruction form (written in `asm!`, so the encoding
//! is the one named) and compares the register, the device's bytes or
//! RFLAGS with what a CPU on plain memory gives. On the first mismatch the
//! guest prints `mmio: FAIL <check>` and fails with the check's number as
//! code and the value it got; after all checks it prints `mmio: PASS`
//! and passes with the number of checks.
#![no_std]
#![no_main]

use core::arch::asm;
use guest::abi::BootInfo;
use guest::println;

guest::entry!(main);

/// The scratch device (the hypervisor's `devices::scratch::SCRATCH_BASE`).
const DEV: u64 = 0xfeb0_0000;

const CF: u64 = 1 << 0;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;

struct Checks(u64);

impl Checks {
    fn eq(&mut self, what: &str, got: u64, want: u64) {
        self.0 += 1;
        if got != want {
            println!(
                "mmio: FAIL {}: {what}: got {got:#x}, want {want:#x}",
                self.0
            );
            guest::fail(self.0, got);
        }
        println!("mmio: {what}: ok");
    }
}

fn main(_boot: &'static BootInfo) -> ! {
    let p = DEV;
    let mut c = Checks(0);
    let mut r: u64;

    // MOV mem←imm32, then reg←mem (32-bit, zero-extends).
    r = u64::MAX;
    // SAFETY: `p` is the scratch device page, mapped by the identity map;
    // this asm! and every one below touch only it and the named registers.
    unsafe {
        asm!("mov dword ptr [{p}], 0x12345678", "mov {r:e}, dword ptr [{p}]",
             p = in(reg) p, r = inout(reg) r)
    };
    c.eq("mov dword [m], imm32; mov r32, [m]", r, 0x1234_5678);

    // 64-bit store and load.
    // SAFETY: only the device page at `p` and the named registers.
    unsafe {
        asm!("mov qword ptr [{p} + 8], {v}", "mov {r}, qword ptr [{p} + 8]",
             p = in(reg) p, v = in(reg) 0x8877_6655_4433_2211u64, r = out(reg) r)
    };
    c.eq("mov [m], r64; mov r64, [m]", r, 0x8877_6655_4433_2211);

    // MOVZX / MOVSX / MOVSXD.
    // SAFETY: only the device page at `p` and the named registers.
    unsafe { asm!("movzx {r:e}, byte ptr [{p} + 15]", p = in(reg) p, r = out(reg) r) };
    c.eq("movzx r32, byte [m]", r, 0x88);
    // SAFETY: only the device page at `p` and the named registers.
    unsafe { asm!("movsx {r}, byte ptr [{p} + 15]", p = in(reg) p, r = out(reg) r) };
    c.eq("movsx r64, byte [m]", r, 0xffff_ffff_ffff_ff88);
    // SAFETY: only the device page at `p` and the named registers.
    unsafe { asm!("movsx {r}, word ptr [{p} + 14]", p = in(reg) p, r = out(reg) r) };
    c.eq("movsx r64, word [m]", r, 0xffff_ffff_ffff_8877);
    // SAFETY: only the device page at `p` and the named registers.
    unsafe { asm!("movsxd {r}, dword ptr [{p} + 12]", p = in(reg) p, r = out(reg) r) };
    c.eq("movsxd r64, dword [m]", r, 0xffff_ffff_8877_6655);

    // High-byte registers: store AH, load into AH (merge).
    let (a, cx): (u64, u64);
    // SAFETY: only the device page at `p` and the named registers.
    unsafe {
        asm!("mov eax, 0xbeef", "mov byte ptr [{p} + 16], ah",
             "movzx ecx, byte ptr [{p} + 16]", "xor eax, eax", "mov ah, byte ptr [{p} + 8]",
             p = in(reg) p, out("rax") a, out("rcx") cx)
    };
    c.eq("mov [m], ah", cx, 0xbe);
    c.eq("mov ah, [m]", a, 0x1100);

    // 16-bit: MOV word imm16, load merges into the register.
    r = u64::MAX;
    // SAFETY: only the device page at `p` and the named registers.
    unsafe {
        asm!("mov word ptr [{p} + 18], 0xabcd", "mov {r:x}, word ptr [{p} + 18]",
             p = in(reg) p, r = inout(reg) r)
    };
    c.eq(
        "mov word [m], imm16; mov r16, [m]",
        r,
        0xffff_ffff_ffff_abcd,
    );

    // Read-modify-write forms, as drivers use them on registers.
    // SAFETY: only the device page at `p` and the named registers.
    unsafe {
        asm!("mov dword ptr [{p} + 20], 1", "or dword ptr [{p} + 20], 0x100",
             "and dword ptr [{p} + 20], 0xfffffffe", "lock xor dword ptr [{p} + 20], {x:e}",
             "add dword ptr [{p} + 20], 0x0f00", "sub dword ptr [{p} + 20], 1",
             "mov {r:e}, dword ptr [{p} + 20]",
             p = in(reg) p, x = in(reg) 0xf000u64, r = out(reg) r)
    };
    c.eq("or/and/lock xor/add/sub dword [m]", r, 0xffff);

    // Flags: SUB with a borrow, CMP equal, TEST of a set sign bit.
    let f: u64;
    // SAFETY: only the device page at `p` and the named registers.
    unsafe {
        asm!("sub dword ptr [{p} + 20], 0x10000", "pushfq", "pop {f}",
             p = in(reg) p, f = out(reg) f)
    };
    c.eq("sub: CF SF, no ZF OF", f & (CF | ZF | SF | OF), CF | SF);
    let f: u64;
    // SAFETY: only the device page at `p` and the named registers.
    unsafe {
        asm!("cmp dword ptr [{p} + 20], -1", "pushfq", "pop {f}",
             p = in(reg) p, f = out(reg) f)
    };
    c.eq("cmp [m], imm8: ZF", f & (CF | ZF | SF | OF), ZF);
    let f: u64;
    // SAFETY: only the device page at `p` and the named registers.
    unsafe {
        asm!("test byte ptr [{p} + 23], 0x80", "pushfq", "pop {f}",
             p = in(reg) p, f = out(reg) f)
    };
    c.eq("test [m], imm8: SF", f & (CF | ZF | SF | OF), SF);
    let f: u64;
    // SAFETY: only the device page at `p` and the named registers.
    unsafe {
        asm!("cmp {x:e}, dword ptr [{p} + 20]", "pushfq", "pop {f}",
             p = in(reg) p, x = in(reg) 0u64, f = out(reg) f)
    };
    c.eq(
        "cmp r32, [m]: CF (0 < 0xffffffff)",
        f & (CF | ZF | SF | OF),
        CF,
    );

    // MOV with a 64-bit moffs (A1: mov eax, [moffs64]; 48 A3: mov [moffs64], rax).
    let a: u64;
    // SAFETY: only the device page at `p` and the named registers.
    unsafe {
        asm!(".byte 0xa1", ".quad 0xfeb00000",
             "mov rax, 0x0102030405060708", ".byte 0x48, 0xa3", ".quad 0xfeb00028",
             "mov {r}, qword ptr [{p} + 0x28]",
             p = in(reg) p, r = out(reg) r, out("rax") a)
    };
    let _ = a;
    c.eq("mov [moffs64], rax", r, 0x0102_0304_0506_0708);
    let a: u64;
    // SAFETY: only the device page at `p` and the named registers.
    unsafe { asm!(".byte 0xa1", ".quad 0xfeb00000", out("rax") a) };
    c.eq("mov eax, [moffs64]", a, 0x1234_5678);

    // Whatever the compiler emits for volatile accesses.
    let reg = (p + 0x30) as *mut u32;
    // SAFETY: an aligned address in the device page.
    unsafe { reg.write_volatile(0xcafe_f00d) };
    c.eq(
        "volatile u32 write/read",
        // SAFETY: only the device page at `p` and the named registers.
        unsafe { reg.read_volatile() }.into(),
        0xcafe_f00d,
    );

    println!("mmio: PASS ({} checks)", c.0);
    guest::pass(c.0)
}
