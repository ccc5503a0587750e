//! # hostile: a guest that does what it may not, and checks the answers
//!
//! It installs a small IDT whose #UD and #GP handlers record the vector and
//! skip the faulting instruction, then, in this order:
//! 1. `RDMSR` of an MSR outside the hypervisor's allow-list: must be #GP (code 1);
//! 2. `WRMSR` of IA32_EFER with a reserved bit set: must be #GP (code 2);
//! 3. `RDMSR` of IA32_EFER: allowed, must show LME and LMA (code 3);
//! 4. `VMXON`: VMX is hidden from the guest, so it must be #UD (code 4);
//! 5. `MOV CR4` setting CR4.VMXE: must be #GP (code 5);
//! 6. `MOV CR0` clearing CR0.NE (fixed to 1 under VMX): must succeed and read
//!    back as the guest wrote it, through the read shadow (code 6);
//! 7. reads CR4: VMXE, which VMX forces on, must read as clear (code 7).
//!
//! Each step prints its outcome. The hypervisor must go on running the guest
//! after every one: the test passes only if the guest reaches its report.
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, Ordering};
use guest::abi::BootInfo;
use guest::println;

guest::entry!(main);

/// The vector of the last exception the handlers saw (u64::MAX: none).
#[no_mangle]
static LAST_VECTOR: AtomicU64 = AtomicU64::new(u64::MAX);
/// How many bytes the handlers skip: the length of the instruction under test.
#[no_mangle]
static SKIP: AtomicU64 = AtomicU64::new(0);

// Both handlers: note the vector, add SKIP to the saved RIP, return. #GP
// pushes an error code, #UD does not (SDM Vol. 3A, 6.13).
global_asm!(
    ".global hostile_gp",
    "hostile_gp:",
    "add rsp, 8",
    "mov qword ptr [rip + LAST_VECTOR], 13",
    "jmp 2f",
    ".global hostile_ud",
    "hostile_ud:",
    "mov qword ptr [rip + LAST_VECTOR], 6",
    "2:",
    "push rax",
    "mov rax, qword ptr [rip + SKIP]",
    "add qword ptr [rsp + 8], rax",
    "pop rax",
    "iretq",
);

extern "C" {
    fn hostile_gp();
    fn hostile_ud();
}

#[repr(C, align(16))]
struct Idt([u64; 64]);

static mut IDT: Idt = Idt([0; 64]);

/// A 64-bit interrupt gate for `handler` with code selector 0x08.
fn gate(handler: u64) -> (u64, u64) {
    let low = (handler & 0xffff) | (0x08 << 16) | (0x8e << 40) | ((handler >> 16) & 0xffff) << 48;
    (low, handler >> 32)
}

fn install_idt() {
    let idt = &raw mut IDT;
    for (vector, handler) in [
        (6usize, hostile_ud as *const () as u64),
        (13, hostile_gp as *const () as u64),
    ] {
        let (low, high) = gate(handler);
        // SAFETY: one vCPU, interrupts off: nothing else touches the table.
        unsafe {
            (*idt).0[vector * 2] = low;
            (*idt).0[vector * 2 + 1] = high;
        }
    }
    let descriptor: [u64; 2] = [(64 * 8 - 1) << 48, idt as u64];
    // SAFETY: the descriptor (limit at bytes 6..8, base at 8..16, so that the
    // 10-byte operand starts at byte 6) names a valid, static table.
    unsafe { asm!("lidt [{}]", in(reg) (descriptor.as_ptr() as *const u8).add(6)) };
}

/// Runs `f`, whose faulting instruction is `len` bytes long; returns the
/// vector of the exception it raised, if any.
fn trap(len: u64, f: impl FnOnce()) -> Option<u64> {
    LAST_VECTOR.store(u64::MAX, Ordering::SeqCst);
    SKIP.store(len, Ordering::SeqCst);
    f();
    match LAST_VECTOR.load(Ordering::SeqCst) {
        u64::MAX => None,
        v => Some(v),
    }
}

fn expect(step: u64, what: &str, got: Option<u64>, want: Option<u64>) {
    let show = |v: Option<u64>| match v {
        Some(6) => "#UD",
        Some(13) => "#GP",
        Some(_) => "another exception",
        None => "no exception",
    };
    if got != want {
        println!(
            "hostile: FAIL: {what}: {}, expected {}",
            show(got),
            show(want)
        );
        guest::fail(step, got.unwrap_or(u64::MAX));
    }
    println!("hostile: {what}: {}", show(got));
}

const EFER: u32 = 0xC000_0080;
const GP: Option<u64> = Some(13);
const UD: Option<u64> = Some(6);

fn main(_boot: &'static BootInfo) -> ! {
    install_idt();

    // rdmsr = 0F 32, wrmsr = 0F 30: 2 bytes.
    // SAFETY: the instruction either runs (allowed) or faults into the
    // handlers installed above, which skip it; it touches no memory of ours.
    let got = trap(2, || unsafe {
        asm!("rdmsr", in("ecx") 0x1234u32, out("eax") _, out("edx") _);
    });
    expect(1, "RDMSR 0x1234 (not allowed)", got, GP);

    // SAFETY: the instruction either runs (allowed) or faults into the
    // handlers installed above, which skip it; it touches no memory of ours.
    let got = trap(2, || unsafe {
        asm!("wrmsr", in("ecx") EFER, in("eax") 0x0000_0d01u32 | (1 << 3), in("edx") 0u32);
    });
    expect(2, "WRMSR IA32_EFER with reserved bit 3", got, GP);

    let (mut lo, mut hi) = (0u32, 0u32);
    // SAFETY: the instruction either runs (allowed) or faults into the
    // handlers installed above, which skip it; it touches no memory of ours.
    let got = trap(2, || unsafe {
        asm!("rdmsr", in("ecx") EFER, out("eax") lo, out("edx") hi);
    });
    expect(3, "RDMSR IA32_EFER", got, None);
    let efer = u64::from(hi) << 32 | u64::from(lo);
    if efer & (1 << 8) == 0 || efer & (1 << 10) == 0 {
        println!("hostile: FAIL: IA32_EFER {efer:#x} lacks LME or LMA");
        guest::fail(3, efer);
    }

    // vmxon [rax] = F3 0F C7 30: 4 bytes.
    let region = 0u64;
    // SAFETY: the instruction either runs (allowed) or faults into the
    // handlers installed above, which skip it; it touches no memory of ours.
    let got = trap(4, || unsafe {
        asm!("vmxon [rax]", in("rax") &region);
    });
    expect(4, "VMXON", got, UD);

    // mov cr4, rax = 0F 22 E0: 3 bytes.
    let cr4: u64;
    // SAFETY: reading a control register has no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) cr4) };
    // SAFETY: the instruction either runs (allowed) or faults into the
    // handlers installed above, which skip it; it touches no memory of ours.
    let got = trap(3, || unsafe {
        asm!("mov cr4, rax", in("rax") cr4 | (1 << 13));
    });
    expect(5, "MOV CR4 setting VMXE", got, GP);

    let cr0: u64;
    // SAFETY: reading a control register has no side effects.
    unsafe { asm!("mov {}, cr0", out(reg) cr0) };
    // SAFETY: the instruction either runs (allowed) or faults into the
    // handlers installed above, which skip it; it touches no memory of ours.
    let got = trap(3, || unsafe {
        asm!("mov cr0, rax", in("rax") cr0 & !(1 << 5));
    });
    expect(6, "MOV CR0 clearing NE", got, None);
    let back: u64;
    // SAFETY: reading a control register has no side effects.
    unsafe { asm!("mov {}, cr0", out(reg) back) };
    if back != cr0 & !(1 << 5) {
        println!(
            "hostile: FAIL: CR0 reads {back:#x}, the guest wrote {:#x}",
            cr0 & !(1 << 5)
        );
        guest::fail(6, back);
    }
    let cr4_now: u64;
    // SAFETY: reading a control register has no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) cr4_now) };
    if cr4_now & (1 << 13) != 0 {
        println!("hostile: FAIL: CR4 {cr4_now:#x} shows VMXE");
        guest::fail(7, cr4_now);
    }
    println!("hostile: CR0 and CR4 read back as the guest sees them: {back:#x}, {cr4_now:#x}");
    println!("hostile: PASS");
    guest::pass(7)
}
