//! Checks of the CPU and the PC as a kernel sees them: XSETBV, CR8, MSRs
//! against CPUID, the local APIC's registers through several instruction
//! forms, and the PCI configuration ports of a machine without PCI devices.
//! Faults are caught by the kernel's own IDT (`mb_try`).

use super::{outb, outl, Ctx, Msg, Serial};
use core::arch::{asm, global_asm};
use core::fmt::Write;

// Faulting operations run under the kernel's `mb_try`, with their operands
// in `mbx_arg` (ECX, EAX, EDX) and RDMSR's result in `mbx_out`.
global_asm!(
    r#"
    .section .text.mbx, "ax"
    .code64
    .global mbx_xsetbv, mbx_rdmsr, mbx_cr8
mbx_xsetbv:
    mov mbx_arg(%rip), %ecx
    mov mbx_arg+4(%rip), %eax
    mov mbx_arg+8(%rip), %edx
    xsetbv
    ret
mbx_rdmsr:
    mov mbx_arg(%rip), %ecx
    rdmsr
    mov %eax, mbx_out(%rip)
    mov %edx, mbx_out+4(%rip)
    ret
mbx_cr8:
    mov mbx_arg(%rip), %ecx
    mov %rcx, %cr8
    ret
    .section .bss.mbx, "aw", @nobits
    .balign 8
    .global mbx_arg, mbx_out
mbx_arg: .skip 16
mbx_out: .skip 8
"#,
    options(att_syntax)
);

unsafe extern "C" {
    fn mbx_xsetbv();
    fn mbx_rdmsr();
    fn mbx_cr8();
    static mut mbx_arg: [u32; 4];
    static mut mbx_out: u64;
}

/// Runs `f` with operands (ECX, EAX, EDX); the vector it raised, if any.
fn attempt(f: unsafe extern "C" fn(), ecx: u32, eax: u32, edx: u32) -> Option<u64> {
    super::setup_idt();
    // SAFETY: the operands are read by `f` only; `mb_try` restores the
    // registers and the stack if `f` faults.
    let got = unsafe {
        (&raw mut mbx_arg).write_volatile([ecx, eax, edx, 0]);
        super::mb_try(f, 0)
    };
    (got != 0xffff).then_some(got)
}

fn cpuid(leaf: u32, sub: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    [r.eax, r.ebx, r.ecx, r.edx]
}

fn xgetbv0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: CR4.OSXSAVE is set by the caller.
    unsafe { asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    u64::from(lo) | u64::from(hi) << 32
}

/// XSETBV: CPUID.OSXSAVE follows CR4; valid XCR0 values are taken, an
/// invalid one (SSE without x87) raises #GP.
pub fn check_xsetbv(_: &Ctx, why: &mut Msg) -> bool {
    let c1 = cpuid(1, 0)[2];
    if c1 & (1 << 26) == 0 {
        say!("mbkernel: no XSAVE offered; XSETBV not checked");
        return true;
    }
    ensure!(why, c1 & (1 << 27) == 0, "OSXSAVE set before CR4.OSXSAVE");
    // SAFETY: sets CR4.OSXSAVE (offered in CPUID).
    unsafe {
        asm!("mov rax, cr4", "or rax, 0x40000", "mov cr4, rax", out("rax") _, options(nomem, nostack))
    };
    ensure!(
        why,
        cpuid(1, 0)[2] & (1 << 27) != 0,
        "OSXSAVE clear after CR4.OSXSAVE"
    );
    ensure!(
        why,
        xgetbv0() == 1,
        "XCR0 after reset is {:#x}, not 1",
        xgetbv0()
    );
    let supported = u64::from(cpuid(0xd, 0)[0]);
    let r = attempt(mbx_xsetbv, 0, 3, 0);
    ensure!(
        why,
        r.is_none() && xgetbv0() == 3,
        "XSETBV 3: {r:?}, XCR0 {:#x}",
        xgetbv0()
    );
    if supported & 4 != 0 {
        let r = attempt(mbx_xsetbv, 0, 7, 0);
        ensure!(
            why,
            r.is_none() && xgetbv0() == 7,
            "XSETBV 7: {r:?}, XCR0 {:#x}",
            xgetbv0()
        );
        let size = cpuid(0xd, 0)[1];
        ensure!(why, size > 576, "XSAVE size {size} with AVX enabled");
    }
    for (ecx, eax, what) in [(0, 2, "SSE without x87"), (0, 0, "no x87"), (1, 1, "XCR1")] {
        let r = attempt(mbx_xsetbv, ecx, eax, 0);
        ensure!(why, r == Some(13), "XSETBV ({what}): {r:?}, want #GP");
    }
    ensure!(
        why,
        xgetbv0() & 1 == 1,
        "XCR0 {:#x} after refused writes",
        xgetbv0()
    );
    true
}

fn apic(reg: u64) -> *mut u32 {
    (0xfee0_0000 + reg) as *mut u32
}

/// CR8 is the local APIC's TPR[7:4], both ways; a reserved bit is #GP.
pub fn check_cr8(_: &Ctx, why: &mut Msg) -> bool {
    // SAFETY: CR8 writes only change the task priority.
    unsafe { asm!("mov cr8, {}", in(reg) 5u64, options(nomem, nostack)) };
    let cr8: u64;
    // SAFETY: reads CR8.
    unsafe { asm!("mov {}, cr8", out(reg) cr8, options(nomem, nostack)) };
    ensure!(why, cr8 == 5, "CR8 reads {cr8} after writing 5");
    // SAFETY: the APIC page is identity-mapped (uncached is not needed
    // for a register model).
    let tpr = unsafe { apic(0x80).read_volatile() };
    ensure!(why, tpr == 0x50, "APIC TPR {tpr:#x} after CR8 = 5");
    let r = attempt(mbx_cr8, 16, 0, 0);
    ensure!(why, r == Some(13), "CR8 = 16: {r:?}, want #GP");
    // SAFETY: back to priority 0.
    unsafe { asm!("mov cr8, {}", in(reg) 0u64, options(nomem, nostack)) };
    true
}

/// Reads MSR `msr`; None if it raised an exception.
fn rdmsr_safe(msr: u32) -> Option<u64> {
    attempt(mbx_rdmsr, msr, 0, 0)
        .is_none()
        // SAFETY: written by mbx_rdmsr, which completed.
        .then(|| unsafe { (&raw const mbx_out).read_volatile() })
}

/// Each feature CPUID offers has its MSR; each it hides, #GP.
pub fn check_msrs_match_cpuid(_: &Ctx, why: &mut Msg) -> bool {
    let [_, _, c1, d1] = cpuid(1, 0);
    let max = cpuid(0, 0)[0];
    let l7 = if max >= 7 { cpuid(7, 0) } else { [0; 4] };
    let pmu = if max >= 0xa {
        cpuid(0xa, 0)[0] & 0xff
    } else {
        0
    };
    let xss = max >= 0xd && cpuid(0xd, 1)[0] & (1 << 3) != 0;
    let pairs: [(&str, bool, u32); 10] = [
        ("MTRR (IA32_MTRRCAP)", d1 & (1 << 12) != 0, 0xfe),
        ("MCA (IA32_MCG_CAP)", d1 & (1 << 14) != 0, 0x179),
        ("PDCM (IA32_PERF_CAPABILITIES)", c1 & (1 << 15) != 0, 0x345),
        (
            "TSC deadline (IA32_TSC_DEADLINE)",
            c1 & (1 << 24) != 0,
            0x6e0,
        ),
        ("perfmon (IA32_PMC0)", pmu != 0, 0xc1),
        ("TSC_ADJUST", l7[1] & (1 << 1) != 0, 0x3b),
        ("IBRS (IA32_SPEC_CTRL)", l7[3] & (1 << 26) != 0, 0x48),
        ("ARCH_CAPABILITIES", l7[3] & (1 << 29) != 0, 0x10a),
        ("XSAVES (IA32_XSS)", xss, 0xda0),
        ("APIC (IA32_APIC_BASE)", d1 & (1 << 9) != 0, 0x1b),
    ];
    for (name, offered, msr) in pairs {
        let works = rdmsr_safe(msr).is_some();
        ensure!(
            why,
            works == offered,
            "{name}: CPUID says {offered}, RDMSR {msr:#x} {}",
            if works { "works" } else { "raises #GP" }
        );
    }
    // IA32_APIC_BASE: enabled, at 0xFEE00000, BSP on the boot vCPU.
    let base = rdmsr_safe(0x1b).unwrap_or(0);
    ensure!(why, base == 0xfee0_0900, "IA32_APIC_BASE {base:#x}");
    // The TSC is writable (a per-vCPU offset) and RDTSC follows it.
    let t = 1u64 << 40;
    // SAFETY: IA32_TSC is architectural.
    unsafe {
        asm!("wrmsr", in("ecx") 0x10, in("eax") t as u32, in("edx") (t >> 32) as u32, options(nomem, nostack))
    };
    // SAFETY: RDTSC has no side effects.
    let now = unsafe { core::arch::x86_64::_rdtsc() };
    ensure!(
        why,
        now >= t && now < t + (1 << 36),
        "RDTSC {now:#x} after writing the TSC {t:#x}"
    );
    true
}

/// The local APIC's registers through several instruction forms: MOV
/// loads and stores (32-bit, MOVZX byte), an immediate store, OR/AND
/// read-modify-writes, and CMP/TEST, as compilers emit them.
pub fn check_lapic_registers(_: &Ctx, why: &mut Msg) -> bool {
    let version: u32;
    let id: u32;
    // SAFETY: MMIO reads of the APIC page (identity-mapped), 32 bits wide
    // and aligned as the SDM requires (11.4.1): a register-indirect MOV and
    // a MOVABS with a 64-bit absolute address.
    unsafe {
        asm!("mov {0:e}, dword ptr [{1}]", out(reg) version, in(reg) apic(0x30), options(nostack));
        asm!("movabs eax, dword ptr [0xfee00020]", out("eax") id, options(nostack));
    }
    ensure!(
        why,
        version & 0xff == 0x14 && (version >> 16) & 0xff >= 5,
        "version register {version:#x}"
    );
    ensure!(why, id >> 24 == 0, "APIC ID {} on the boot vCPU", id >> 24);
    // SVR: an immediate store, then OR to software-enable.
    let svr: u32;
    // SAFETY: writes the SVR and TPR registers of this vCPU's APIC.
    unsafe {
        asm!(
            "mov dword ptr [{r}], 0xff",
            "or dword ptr [{r}], 0x100",
            "mov {v:e}, dword ptr [{r}]",
            r = in(reg) apic(0xf0),
            v = out(reg) svr,
            options(nostack),
        );
    }
    ensure!(why, svr == 0x1ff, "SVR {svr:#x} after MOV 0xFF, OR 0x100");
    let (tpr, eq): (u32, u8);
    // SAFETY: as above.
    unsafe {
        asm!(
            "mov dword ptr [{r}], {x:e}",
            "and dword ptr [{r}], 0xf0",
            "cmp dword ptr [{r}], 0x30",
            "sete {eq}",
            "mov {v:e}, dword ptr [{r}]",
            r = in(reg) apic(0x80),
            x = in(reg) 0x3fu32,
            eq = out(reg_byte) eq,
            v = out(reg) tpr,
            options(nostack),
        );
    }
    ensure!(
        why,
        tpr == 0x30 && eq == 1,
        "TPR {tpr:#x} (CMP said {eq}) after MOV 0x3F, AND 0xF0"
    );
    // PPR follows TPR with nothing in service.
    // SAFETY: an MMIO read of PPR, identity-mapped.
    let ppr = unsafe { apic(0xa0).read_volatile() };
    ensure!(why, ppr == 0x30, "PPR {ppr:#x} with TPR 0x30");
    let masked: u8;
    // SAFETY: reads the timer LVT.
    unsafe {
        asm!(
            "test dword ptr [{r}], 0x10000",
            "setnz {m}",
            r = in(reg) apic(0x320),
            m = out(reg_byte) masked,
            options(nostack),
        );
        apic(0x80).write_volatile(0);
    }
    ensure!(why, masked == 1, "the timer LVT is not masked after reset");
    true
}

/// PCI configuration mechanism #1 with no devices: the address register
/// reads back, every function reads all ones.
pub fn check_pci_absent(_: &Ctx, why: &mut Msg) -> bool {
    for addr in [0x8000_0000u32, 0x8000_0800, 0x8000_f800] {
        outl(0xcf8, addr);
        let back: u32;
        let data: u32;
        // SAFETY: port I/O.
        unsafe {
            asm!("in eax, dx", in("dx") 0xcf8u16, out("eax") back, options(nomem, nostack));
            asm!("in eax, dx", in("dx") 0xcfcu16, out("eax") data, options(nomem, nostack));
        }
        ensure!(
            why,
            back == addr,
            "CONFIG_ADDRESS reads {back:#x} after {addr:#x}"
        );
        ensure!(why, data == u32::MAX, "device at {addr:#x} reads {data:#x}");
    }
    true
}

// ---- interrupts: the local APIC timer ----

/// The APIC timer check's period, in timer input cycles (divide by 1).
const PERIOD: u32 = 2_000_000;

fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reads the time-stamp counter.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    u64::from(hi) << 32 | u64::from(lo)
}

/// The vector the APIC timer check uses.
pub const TIMER_VECTOR: u8 = 0x40;

global_asm!(
    r#"
    .section .text.mbx_timer, "ax"
    .code64
    .global mbx_timer_isr
mbx_timer_isr:
    incq mbx_ticks(%rip)
    push %rax
    mov $0xfee000b0, %eax   /* the APIC's EOI register */
    movl $0, (%rax)
    pop %rax
    iretq
    .section .bss.mbx_ticks, "aw", @nobits
    .balign 8
    .global mbx_ticks
mbx_ticks: .skip 8
"#,
    options(att_syntax)
);

unsafe extern "C" {
    pub fn mbx_timer_isr();
    static mbx_ticks: u64;
}

pub fn ticks() -> u64 {
    // SAFETY: written by the interrupt handler only.
    unsafe { (&raw const mbx_ticks).read_volatile() }
}

pub fn apic_write(reg: u64, value: u32) {
    // SAFETY: this vCPU's APIC registers, identity-mapped.
    unsafe { apic(reg).write_volatile(value) }
}

fn apic_read(reg: u64) -> u32 {
    // SAFETY: as above.
    unsafe { apic(reg).read_volatile() }
}

/// Points IDT vector `v` at `isr` (a 64-bit interrupt gate).
pub fn set_gate(v: u8, isr: u64) {
    let low = (isr & 0xffff) | 0x08 << 16 | 0x8e00u64 << 32 | ((isr >> 16) & 0xffff) << 48;
    // SAFETY: the kernel's IDT; no interrupt uses this vector yet.
    unsafe {
        (&raw mut super::mb_idt)
            .cast::<[u64; 2]>()
            .add(usize::from(v))
            .write([low, isr >> 32])
    };
}

/// The APIC timer delivers its vector through the kernel's IDT: periodic
/// ticks wake a HLT loop (each wake-up is a tick: the vCPU sleeps, it does
/// not spin through HLT), then a one-shot fires exactly once.
pub fn check_apic_timer(_: &Ctx, why: &mut Msg) -> bool {
    super::setup_idt();
    set_gate(TIMER_VECTOR, mbx_timer_isr as *const () as u64);
    apic_write(0xf0, 0x1ff); // SVR: software-enabled, spurious vector 0xFF
    apic_write(0x80, 0); // TPR 0
    apic_write(0x3e0, 0xb); // divide by 1
    apic_write(0x320, u32::from(TIMER_VECTOR) | 1 << 17); // periodic
    let t0 = ticks();
    let tsc0 = rdtsc();
    apic_write(0x380, PERIOD); // 2 ms at 1 GHz
    let mut wakeups = 0u64;
    while ticks() < t0 + 10 && wakeups < 1000 {
        // SAFETY: sleeps until an interrupt; the handler counts it.
        unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) };
        wakeups += 1;
    }
    let tsc = rdtsc() - tsc0;
    apic_write(0x380, 0); // stop
    let got = ticks() - t0;
    say!("mbkernel: APIC timer periodic: {got} ticks in {wakeups} HLT wake-ups");
    // CPUID 0x15: the crystal (the APIC timer's input) and the TSC rate;
    // the ticks took their count in crystal cycles, measured on the TSC.
    let [den, num, crystal, _] = cpuid(0x15, 0);
    if den != 0 && num != 0 && crystal != 0 {
        let tsc_hz = u64::from(crystal) * u64::from(num) / u64::from(den);
        let want = u128::from(got) * u128::from(PERIOD) * u128::from(tsc_hz) / u128::from(crystal);
        let pct = u128::from(tsc) * 100 / want.max(1);
        say!("mbkernel: CPUID 0x15: TSC {} kHz, crystal {crystal} Hz; {got} ticks took {tsc} TSC cycles, {pct}% of their count", tsc_hz / 1000);
        ensure!(
            why,
            (90..=150).contains(&pct),
            "{got} APIC timer ticks of {PERIOD} took {tsc} TSC cycles, {pct}% of what CPUID 0x15 says"
        );
    } else {
        say!("mbkernel: CPUID 0x15 does not give the crystal: APIC timer rate not checked");
    }
    ensure!(why, got >= 10, "{got} periodic ticks after {wakeups} HLTs");
    ensure!(
        why,
        wakeups <= got + 2,
        "{wakeups} HLT wake-ups for {got} ticks: HLT did not sleep"
    );
    // One-shot: one tick, then none.
    apic_write(0x320, u32::from(TIMER_VECTOR));
    let t1 = ticks();
    apic_write(0x380, 1_000_000);
    // SAFETY: as above.
    unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) };
    let first = ticks() - t1;
    let mut spins = 0u64;
    // About 3 ms of polling with interrupts on: no second tick.
    while spins < 3_000 {
        // SAFETY: a short window for a (wrong) second tick.
        unsafe { asm!("sti", "nop", "cli", options(nomem, nostack)) };
        let _ = apic_read(0x390);
        spins += 1;
    }
    let total = ticks() - t1;
    let current = apic_read(0x390);
    apic_write(0x320, 1 << 16); // masked
    ensure!(
        why,
        first == 1 && total == 1,
        "one-shot: {first} then {total} ticks"
    );
    ensure!(
        why,
        current == 0,
        "one-shot current count {current} after it fired"
    );
    true
}

// ---- interrupts: the PIT through the 8259 and through the I/O APIC ----

global_asm!(
    r#"
    .section .text.mbx_pit, "ax"
    .code64
    .global mbx_pic_isr, mbx_ioapic_isr
mbx_pic_isr:                /* IRQ 0 through the 8259: EOI to the master */
    incq mbx_pit_ticks(%rip)
    push %rax
    mov $0x20, %al
    out %al, $0x20
    pop %rax
    iretq
mbx_ioapic_isr:             /* IRQ 0 through I/O APIC pin 2: EOI to the APIC */
    incq mbx_pit_ticks(%rip)
    push %rax
    mov $0xfee000b0, %eax
    movl $0, (%rax)
    pop %rax
    iretq
    .section .bss.mbx_pit_ticks, "aw", @nobits
    .balign 8
    .global mbx_pit_ticks
mbx_pit_ticks: .skip 8
"#,
    options(att_syntax)
);

unsafe extern "C" {
    fn mbx_pic_isr();
    fn mbx_ioapic_isr();
    static mbx_pit_ticks: u64;
}

fn pit_ticks() -> u64 {
    // SAFETY: written by the interrupt handlers only.
    unsafe { (&raw const mbx_pit_ticks).read_volatile() }
}

/// Sleeps with interrupts on until `count` more PIT ticks arrived (at most
/// 200 wake-ups); the ticks and wake-ups seen.
fn wait_pit(count: u64) -> (u64, u64) {
    let t0 = pit_ticks();
    let mut wakeups = 0;
    while pit_ticks() < t0 + count && wakeups < 200 {
        // SAFETY: sleeps until an interrupt.
        unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) };
        wakeups += 1;
    }
    (pit_ticks() - t0, wakeups)
}

/// The 8254's IRQ 0, first through the 8259 pair (the BSP's LINT0 in
/// virtual-wire mode, vector from the 8259's INTA cycle), then through the
/// I/O APIC's pin 2 (as QEMU's MADT override says) with the 8259 masked.
pub fn check_pit_irq0(_: &Ctx, why: &mut Msg) -> bool {
    super::setup_idt();
    set_gate(0x20, mbx_pic_isr as *const () as u64);
    set_gate(0x42, mbx_ioapic_isr as *const () as u64);
    apic_write(0xf0, 0x1ff);
    // LINT0 as ExtINT (virtual wire, as firmware leaves it).
    apic_write(0x350, 0x700);
    // 8259 pair: ICW1-4, master at 0x20, slave at 0x28, IRQ 0 only.
    for (port, v) in [
        (0x20, 0x11),
        (0xa0, 0x11),
        (0x21, 0x20),
        (0xa1, 0x28),
        (0x21, 0x04),
        (0xa1, 0x02),
        (0x21, 0x01),
        (0xa1, 0x01),
        (0x21, 0xfe),
        (0xa1, 0xff),
    ] {
        outb(port, v);
    }
    // PIT counter 0, mode 2, 1 ms (1193 input ticks).
    outb(0x43, 0x34);
    outb(0x40, (1193 & 0xff) as u8);
    outb(0x40, (1193 >> 8) as u8);
    let (pic, pic_wakeups) = wait_pit(5);
    // Mask the 8259, route I/O APIC pin 2 to vector 0x42 (edge, fixed,
    // physical, APIC 0).
    outb(0x21, 0xff);
    let ioapic = 0xfec0_0000u64 as *mut u32;
    // SAFETY: the I/O APIC's index and window registers, identity-mapped.
    unsafe {
        ioapic.write_volatile(0x14);
        ioapic.add(4).write_volatile(0x42);
        ioapic.write_volatile(0x15);
        ioapic.add(4).write_volatile(0);
    }
    let (io, io_wakeups) = wait_pit(5);
    // Stop: mask the pin, counter 0 back to a one-shot.
    // SAFETY: as above.
    unsafe {
        ioapic.write_volatile(0x14);
        ioapic.add(4).write_volatile(1 << 16);
    }
    outb(0x43, 0x30);
    say!("mbkernel: PIT IRQ 0: {pic} ticks through the 8259 ({pic_wakeups} wake-ups), {io} through the I/O APIC ({io_wakeups} wake-ups)");
    ensure!(
        why,
        pic >= 5,
        "{pic} PIT ticks through the 8259 in {pic_wakeups} HLTs"
    );
    ensure!(
        why,
        io >= 5,
        "{io} PIT ticks through the I/O APIC in {io_wakeups} HLTs"
    );
    true
}

// ---- SMP: APs started with INIT-SIPI-SIPI, IPIs between vCPUs, an NMI ----

/// Where the real-mode start-up code is copied (below 1 MiB, page-aligned:
/// SIPI vector 6), clear of the multiboot information at 0x9000.
const TRAMPOLINE: u64 = 0x6000;
/// Round trips of the IPI ping-pong.
const PINGS: u64 = 10;
const IPI_VECTOR: u8 = 0x50;
/// At most this many vCPUs are checked.
const MAX_CPUS: usize = 16;

global_asm!(
    r#"
    .section .rodata.mbx_tramp, "a"
    .code16
    .global mbx_tramp_start, mbx_tramp_end
mbx_tramp_start:                   /* runs at 0x6000: CS = 0x600, IP = 0 */
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    lgdtl (mbx_tramp_gdtr - mbx_tramp_start)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x18, $mbx_ap_pm32
    .balign 8
mbx_tramp_gdtr:
    .word 4 * 8 - 1
    .long mbx_ap_gdt
mbx_tramp_end:

    .section .text.mbx_ap, "ax"
    .balign 8
mbx_ap_gdt:                         /* the kernel's own layout */
    .quad 0
    .quad 0x00af9b000000ffff        /* 0x08: 64-bit code */
    .quad 0x00cf93000000ffff        /* 0x10: flat data */
    .quad 0x00cf9b000000ffff        /* 0x18: flat 32-bit code */
    .code32
mbx_ap_pm32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %cr4, %eax
    or $0x20, %eax                  /* PAE */
    mov %eax, %cr4
    mov $mb_pml4, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx           /* IA32_EFER.LME */
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    and $0x9fffffff, %eax           /* caches on (CD, NW clear) */
    or $0x80000001, %eax            /* PG, PE */
    mov %eax, %cr0
    ljmp $0x08, $mbx_ap_long
    .code64
mbx_ap_long:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $1, %eax
    lock xadd %eax, mbx_ap_started(%rip)
    inc %eax
    shl $14, %eax                   /* 16 KiB of stack each */
    lea mbx_ap_stacks(%rip), %rsp
    add %rax, %rsp
    call mbx_ap_main
1:  cli
    hlt
    jmp 1b

    .global mbx_ipi_isr, mbx_nmi_isr
mbx_ipi_isr:                        /* counts per APIC ID, then EOI */
    push %rax
    push %rcx
    mov $0xfee00020, %eax
    mov (%rax), %ecx
    shr $24, %ecx
    and $15, %ecx
    lea mbx_ipi_count(%rip), %rax
    lock incq (%rax, %rcx, 8)
    mov $0xfee000b0, %eax
    movl $0, (%rax)
    pop %rcx
    pop %rax
    iretq
mbx_nmi_isr:
    lock incq mbx_nmi_count(%rip)
    iretq

    .section .bss.mbx_ap, "aw", @nobits
    .balign 4096
mbx_ap_stacks: .skip 16384 * 17
    .balign 8
    .global mbx_ap_started, mbx_ipi_count, mbx_nmi_count
mbx_ap_started: .skip 8
mbx_ipi_count: .skip 8 * 16
mbx_nmi_count: .skip 8
"#,
    options(att_syntax)
);

unsafe extern "C" {
    static mbx_tramp_start: u8;
    static mbx_tramp_end: u8;
    fn mbx_ipi_isr();
    fn mbx_nmi_isr();
    static mbx_ap_started: u64;
    static mbx_ipi_count: [u64; 16];
    static mbx_nmi_count: u64;
}

fn ipis(apic_id: usize) -> u64 {
    // SAFETY: counters the interrupt handler increments.
    unsafe {
        (&raw const mbx_ipi_count)
            .cast::<u64>()
            .add(apic_id)
            .read_volatile()
    }
}

fn started() -> u64 {
    // SAFETY: incremented by each AP.
    unsafe { (&raw const mbx_ap_started).read_volatile() }
}

fn nmis() -> u64 {
    // SAFETY: incremented by the NMI handler.
    unsafe { (&raw const mbx_nmi_count).read_volatile() }
}

/// Sends an IPI: ICR high (destination), then ICR low (which sends).
fn send_ipi(dest: u32, low: u32) {
    apic_write(0x310, dest << 24);
    apic_write(0x300, low);
}

/// Sleeps until `done()` (at most `max` wake-ups, each an interrupt).
fn sleep_until(max: u64, done: impl Fn() -> bool) -> bool {
    for _ in 0..max {
        if done() {
            return true;
        }
        // SAFETY: sleeps until an interrupt.
        unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) };
    }
    done()
}

/// An AP in 64-bit mode: this kernel's IDT, its APIC on, then it answers
/// each ping from the BSP with a pong, and sleeps.
#[unsafe(no_mangle)]
extern "C" fn mbx_ap_main() {
    // The BSP's IDT as it is (its gates for the IPI and NMI vectors).
    let mut desc = [0u8; 10];
    desc[..2].copy_from_slice(&(256u16 * 16 - 1).to_le_bytes());
    desc[2..].copy_from_slice(&(&raw const super::mb_idt as u64).to_le_bytes());
    // SAFETY: the kernel's IDT, filled in by the BSP before the SIPIs.
    unsafe { asm!("lidt [{}]", in(reg) desc.as_ptr(), options(nostack)) };
    apic_write(0xf0, 0x1ff);
    let me = (apic_read(0x20) >> 24) as usize;
    for k in 1..=PINGS {
        if !sleep_until(1000, || ipis(me) >= k) {
            break;
        }
        send_ipi(0, u32::from(IPI_VECTOR));
    }
    loop {
        // SAFETY: sleeps with interrupts on; the VM's end stops it.
        unsafe { asm!("sti", "hlt", options(nomem, nostack)) };
    }
}

/// The guest starts its APs as an OS does (INIT, then two SIPIs at the
/// trampoline's page, SDM 9.4.4.1), each reaches 64-bit mode through its own
/// real-mode and protected-mode steps, the BSP and the first AP
/// ping-pong fixed IPIs, and an NMI IPI reaches the AP's NMI handler.
pub fn check_smp(_: &Ctx, why: &mut Msg) -> bool {
    let cpus = usize::from(u16::from_le_bytes(super::fw_cfg::<2>(0x0005)));
    if cpus < 2 {
        say!("mbkernel: one vCPU: SMP not checked");
        return true;
    }
    ensure!(
        why,
        cpus <= MAX_CPUS,
        "{cpus} vCPUs: this check handles {MAX_CPUS}"
    );
    super::setup_idt();
    set_gate(IPI_VECTOR, mbx_ipi_isr as *const () as u64);
    set_gate(2, mbx_nmi_isr as *const () as u64);
    apic_write(0xf0, 0x1ff);
    // The trampoline, copied below 1 MiB.
    let (start, end) = (
        &raw const mbx_tramp_start as usize,
        &raw const mbx_tramp_end as usize,
    );
    // SAFETY: low RAM the memory map gives as usable, unused by this
    // kernel; the source is the kernel's read-only data.
    unsafe {
        core::ptr::copy_nonoverlapping(start as *const u8, TRAMPOLINE as *mut u8, end - start)
    };
    // INIT, SIPI, SIPI to all but self (SDM 11.6.1: level assert, then
    // start-up with the vector = the page number).
    send_ipi(0, 0x000c_4500);
    let vector = (TRAMPOLINE >> 12) as u32;
    send_ipi(0, 0x000c_4600 | vector);
    send_ipi(0, 0x000c_4600 | vector);
    let want = (cpus - 1) as u64;
    let mut spins = 0u64;
    while started() < want && spins < 50_000_000 {
        core::hint::spin_loop();
        spins += 1;
    }
    say!("mbkernel: {} of {want} APs in 64-bit mode", started());
    ensure!(
        why,
        started() == want,
        "{} of {want} APs started",
        started()
    );
    // Ping-pong with APIC 1.
    for k in 1..=PINGS {
        send_ipi(1, u32::from(IPI_VECTOR));
        ensure!(
            why,
            sleep_until(1000, || ipis(0) >= k),
            "pong {k} never came ({} pongs, AP saw {} pings)",
            ipis(0),
            ipis(1)
        );
    }
    // An NMI IPI to APIC 1 (delivery mode 100b).
    send_ipi(1, 0x0000_4400);
    let mut spins = 0u64;
    while nmis() == 0 && spins < 50_000_000 {
        core::hint::spin_loop();
        spins += 1;
    }
    say!(
        "mbkernel: {PINGS} IPI round trips with APIC 1 ({} pings, {} pongs), {} NMI",
        ipis(1),
        ipis(0),
        nmis()
    );
    ensure!(
        why,
        ipis(1) == PINGS && ipis(0) == PINGS,
        "pings {} pongs {}",
        ipis(1),
        ipis(0)
    );
    ensure!(why, nmis() == 1, "{} NMIs reached APIC 1", nmis());
    true
}
