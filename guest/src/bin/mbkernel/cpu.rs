//! Checks of the CPU and the PC as a kernel sees them: its own IDT taking
//! #UD, #GP, #PF and a #DB trap (one of them with its frame on a stack page
//! the hypervisor has not mapped yet), XSETBV, CR8, MSRs against CPUID, the
//! local APIC's registers through several instruction forms, and the PCI
//! configuration ports of a machine without PCI devices.

use super::{outl, Ctx, Msg, Serial};
use core::arch::{asm, global_asm};
use core::fmt::Write;

// ---- the IDT ----
//
// Vectors 0-31 go to one handler that records the vector, the error code
// and CR2, clears RFLAGS.TF in the frame and resumes at MB_RESUME (set by
// the check before it faults). `rax` is the only register it uses.
global_asm!(
    r#"
    .section .text.mbx_isr, "ax"
    .code64
    .altmacro
    .macro mbx_stub v
    .balign 16
    mbx_isr_\v:
    .if (\v == 8) || (\v >= 10 && \v <= 14) || (\v == 17) || (\v == 21)
    .else
        pushq $0
    .endif
        pushq $\v
        jmp mbx_common
    .endm
    .set i, 0
    .rept 32
    mbx_stub %i
    .set i, i + 1
    .endr
mbx_common:
    push %rax
    mov 8(%rsp), %rax
    mov %rax, MB_VECTOR(%rip)
    mov 16(%rsp), %rax
    mov %rax, MB_ERROR(%rip)
    mov %cr2, %rax
    mov %rax, MB_CR2(%rip)
    incq MB_COUNT(%rip)
    mov MB_RESUME(%rip), %rax
    mov %rax, 24(%rsp)        /* the frame's RIP */
    andq $~0x100, 40(%rsp)    /* the frame's RFLAGS: TF off */
    pop %rax
    add $16, %rsp
    iretq

    .global mbx_isr_table
    .section .rodata.mbx, "a"
    .balign 8
mbx_isr_table:
    .set i, 0
    .rept 32
    .quad mbx_isr_0 + 16 * i
    .set i, i + 1
    .endr
    .noaltmacro
"#,
    options(att_syntax)
);

unsafe extern "C" {
    static mbx_isr_table: [u64; 32];
}

#[unsafe(no_mangle)]
static mut MB_VECTOR: u64 = 0;
#[unsafe(no_mangle)]
static mut MB_ERROR: u64 = 0;
#[unsafe(no_mangle)]
static mut MB_CR2: u64 = 0;
#[unsafe(no_mangle)]
static mut MB_COUNT: u64 = 0;
#[unsafe(no_mangle)]
static mut MB_RESUME: u64 = 0;

#[repr(C, align(16))]
struct Idt([u64; 64]);
static mut IDT: Idt = Idt([0; 64]);

/// Loads an IDT whose 32 exception gates go to the recording handler.
pub fn install_idt() {
    let cs: u16;
    // SAFETY: reads CS.
    unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack)) };
    // SAFETY: single-threaded setup before any exception is expected; the
    // table is static, the gates point at the handler stubs.
    unsafe {
        let idt = &mut *(&raw mut IDT);
        for (v, &isr) in (*(&raw const mbx_isr_table)).iter().enumerate() {
            // 64-bit interrupt gate (SDM 6.14.1): offset 15:0, selector,
            // type 0xE present, offset 31:16; offset 63:32.
            idt.0[2 * v] = (isr & 0xffff)
                | u64::from(cs) << 16
                | 0x8e00u64 << 32
                | (isr >> 16 & 0xffff) << 48;
            idt.0[2 * v + 1] = isr >> 32;
        }
        let ptr: [u16; 5] = {
            let base = &raw const IDT as u64;
            [
                (32 * 16 - 1) as u16,
                base as u16,
                (base >> 16) as u16,
                (base >> 32) as u16,
                (base >> 48) as u16,
            ]
        };
        asm!("lidt [{}]", in(reg) &ptr, options(nostack));
    }
}

/// What the last exception left: (count so far, vector, error code, CR2).
fn last() -> (u64, u64, u64, u64) {
    // SAFETY: written by the handler, read after it returned.
    unsafe {
        (
            core::ptr::read_volatile(&raw const MB_COUNT),
            core::ptr::read_volatile(&raw const MB_VECTOR),
            core::ptr::read_volatile(&raw const MB_ERROR),
            core::ptr::read_volatile(&raw const MB_CR2),
        )
    }
}

/// Runs `$body` (asm that may fault) with the handler resuming at its end.
macro_rules! trapping {
    ($($body:tt)*) => {{
        // SAFETY: the handler resumes at label 2 with the registers the
        // body left; rax is clobbered.
        unsafe {
            asm!(
                "lea rax, [rip + 2f]",
                "mov [rip + {resume}], rax",
                $($body)*
                "2:",
                resume = sym MB_RESUME,
                out("rax") _,
                out("rcx") _,
                out("rdx") _,
            );
        }
    }};
}

/// #UD, #GP(0) and #PF (with its error code and CR2) reach the kernel's
/// own handlers.
pub fn check_exceptions(_: &Ctx, why: &mut Msg) -> bool {
    install_idt();
    let (n0, ..) = last();
    trapping!("ud2",);
    let (n, v, _, _) = last();
    ensure!(why, n == n0 + 1 && v == 6, "ud2: {} exceptions, vector {v}", n - n0);
    // WRMSR to an MSR that does not exist: #GP(0).
    trapping!("mov ecx, 0x1234", "xor eax, eax", "xor edx, edx", "wrmsr",);
    let (n, v, e, _) = last();
    ensure!(why, n == n0 + 2 && v == 13 && e == 0, "wrmsr 0x1234: vector {v} error {e:#x}");
    // A read above 4 GiB: not mapped by this kernel's tables.
    trapping!("mov rcx, 0x100000010", "mov rcx, [rcx]",);
    let (n, v, e, cr2) = last();
    ensure!(
        why,
        n == n0 + 3 && v == 14 && e == 0 && cr2 == 0x1_0000_0010,
        "read at 4 GiB: vector {v} error {e:#x} CR2 {cr2:#x}"
    );
    // A write: error code bit 1.
    trapping!("mov rcx, 0x100000020", "mov [rcx], rcx",);
    let (_, v, e, _) = last();
    ensure!(why, v == 14 && e == 2, "write at 4 GiB: vector {v} error {e:#x}");
    true
}

/// Fresh stack pages, never touched: the hypervisor's EPT has no entry
/// for them until the CPU pushes the first exception frame there.
#[repr(C, align(4096))]
struct FreshStacks([u8; 3 * 4096]);
#[unsafe(link_section = ".bss.mbx_fresh")]
static mut FRESH: FreshStacks = FreshStacks([0; 3 * 4096]);

/// An exception whose delivery the hypervisor has to finish: its frame
/// goes onto a page not yet in the EPT, so delivering it exits (EPT
/// violation during event delivery) and the hypervisor must deliver it
/// again. A #DB trap after a single-stepped NOP is the case where a dropped
/// event is lost for good (the NOP has completed); #UD is re-executed.
pub fn check_exception_on_unmapped_stack(_: &Ctx, why: &mut Msg) -> bool {
    install_idt();
    let base = &raw const FRESH as u64;
    let (n0, ..) = last();
    // #UD with RSP on the first fresh page.
    let top1 = base + 4096;
    // SAFETY: the handler resumes at 2 with RSP = top1; the old RSP is
    // restored from r11.
    unsafe {
        asm!(
            "mov r11, rsp",
            "mov rsp, {top}",
            "lea rax, [rip + 2f]",
            "mov [rip + {resume}], rax",
            "ud2",
            "2:",
            "mov rsp, r11",
            top = in(reg) top1,
            resume = sym MB_RESUME,
            out("rax") _,
            out("r11") _,
        );
    }
    let (n, v, ..) = last();
    ensure!(why, n == n0 + 1 && v == 6, "ud2 on a fresh stack: {} exceptions, vector {v}", n - n0);
    // A #DB trap: TF set, one NOP, RSP on the second fresh page.
    let top2 = base + 2 * 4096;
    // SAFETY: as above; TF is cleared by the handler in the frame.
    unsafe {
        asm!(
            "mov r11, rsp",
            "lea rax, [rip + 2f]",
            "mov [rip + {resume}], rax",
            "mov rsp, {top}",
            "pushfq",
            "or qword ptr [rsp], 0x100",
            "popfq",
            "nop",
            "nop",
            "2:",
            "mov rsp, r11",
            top = in(reg) top2,
            resume = sym MB_RESUME,
            out("rax") _,
            out("r11") _,
        );
    }
    let (n, v, ..) = last();
    ensure!(
        why,
        n == n0 + 2 && v == 1,
        "single-step trap on a fresh stack: {} exceptions, last vector {v}",
        n - n0
    );
    true
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
    install_idt();
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
    ensure!(why, cpuid(1, 0)[2] & (1 << 27) != 0, "OSXSAVE clear after CR4.OSXSAVE");
    ensure!(why, xgetbv0() == 1, "XCR0 after reset is {:#x}, not 1", xgetbv0());
    let supported = u64::from(cpuid(0xd, 0)[0]);
    let (n0, ..) = last();
    // SAFETY: x87|SSE is always valid with XSAVE.
    unsafe { asm!("xsetbv", in("ecx") 0, in("eax") 3, in("edx") 0, options(nomem, nostack)) };
    ensure!(why, xgetbv0() == 3, "XCR0 {:#x} after XSETBV 3", xgetbv0());
    if supported & 4 != 0 {
        // SAFETY: AVX state is offered.
        unsafe { asm!("xsetbv", in("ecx") 0, in("eax") 7, in("edx") 0, options(nomem, nostack)) };
        ensure!(why, xgetbv0() == 7, "XCR0 {:#x} after XSETBV 7", xgetbv0());
        let size = cpuid(0xd, 0)[1];
        ensure!(why, size > 576, "XSAVE size {size} with AVX enabled");
    }
    trapping!("mov ecx, 0", "mov eax, 2", "xor edx, edx", "xsetbv",);
    let (n, v, ..) = last();
    ensure!(why, n == n0 + 1 && v == 13, "XSETBV 2 (SSE without x87): vector {v}");
    trapping!("mov ecx, 1", "mov eax, 1", "xor edx, edx", "xsetbv",);
    let (n, v, ..) = last();
    ensure!(why, n == n0 + 2 && v == 13, "XSETBV to XCR1: vector {v}");
    true
}

fn apic(reg: u64) -> *mut u32 {
    (0xfee0_0000 + reg) as *mut u32
}

/// CR8 is the local APIC's TPR[7:4], both ways; a reserved bit is #GP.
pub fn check_cr8(_: &Ctx, why: &mut Msg) -> bool {
    install_idt();
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
    let (n0, ..) = last();
    trapping!("mov rcx, 16", "mov cr8, rcx",);
    let (n, v, ..) = last();
    ensure!(why, n == n0 + 1 && v == 13, "CR8 = 16: vector {v}");
    // SAFETY: back to priority 0.
    unsafe { asm!("mov cr8, {}", in(reg) 0u64, options(nomem, nostack)) };
    true
}

/// Reads MSR `msr`; None if it raised #GP.
fn rdmsr_safe(msr: u32) -> Option<u64> {
    let (n0, ..) = last();
    let (lo, hi): (u32, u32);
    // SAFETY: a #GP resumes at 2 with EAX/EDX unchanged.
    unsafe {
        asm!(
            "xor eax, eax",
            "xor edx, edx",
            "lea r8, [rip + 2f]",
            "mov [rip + {resume}], r8",
            "rdmsr",
            "2:",
            resume = sym MB_RESUME,
            in("ecx") msr,
            out("eax") lo,
            out("edx") hi,
            out("r8") _,
        );
    }
    let (n, ..) = last();
    (n == n0).then_some(u64::from(lo) | u64::from(hi) << 32)
}

/// Each feature CPUID offers has its MSR; each it hides, #GP.
pub fn check_msrs_match_cpuid(_: &Ctx, why: &mut Msg) -> bool {
    install_idt();
    let [_, _, c1, d1] = cpuid(1, 0);
    let max = cpuid(0, 0)[0];
    let l7 = if max >= 7 { cpuid(7, 0) } else { [0; 4] };
    let pmu = if max >= 0xa { cpuid(0xa, 0)[0] & 0xff } else { 0 };
    let xss = max >= 0xd && cpuid(0xd, 1)[0] & (1 << 3) != 0;
    let pairs: [(&str, bool, u32); 10] = [
        ("MTRR (IA32_MTRRCAP)", d1 & (1 << 12) != 0, 0xfe),
        ("MCA (IA32_MCG_CAP)", d1 & (1 << 14) != 0, 0x179),
        ("PDCM (IA32_PERF_CAPABILITIES)", c1 & (1 << 15) != 0, 0x345),
        ("TSC deadline (IA32_TSC_DEADLINE)", c1 & (1 << 24) != 0, 0x6e0),
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
    unsafe { asm!("wrmsr", in("ecx") 0x10, in("eax") t as u32, in("edx") (t >> 32) as u32, options(nomem, nostack)) };
    let now = unsafe { core::arch::x86_64::_rdtsc() };
    ensure!(why, now >= t && now < t + (1 << 36), "RDTSC {now:#x} after writing the TSC {t:#x}");
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
    ensure!(why, version & 0xff == 0x14 && (version >> 16) & 0xff >= 5, "version register {version:#x}");
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
    ensure!(why, tpr == 0x30 && eq == 1, "TPR {tpr:#x} (CMP said {eq}) after MOV 0x3F, AND 0xF0");
    // PPR follows TPR with nothing in service.
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
        ensure!(why, back == addr, "CONFIG_ADDRESS reads {back:#x} after {addr:#x}");
        ensure!(why, data == u32::MAX, "device at {addr:#x} reads {data:#x}");
    }
    true
}
