//! # mbkernel: a multiboot v1 kernel, as someone else would write one
//!
//! Not a native guest: it knows nothing of the hypervisor's ABI (no VMCALL,
//! no BootInfo). Booted with `cargo xtask run --kernel <this ELF>`, or by
//! QEMU (`qemu-system-x86_64 -kernel`), it:
//!
//! 1. enters in 32-bit protected mode, paging off (multiboot 3.2); the
//!    header uses the a.out kludge (flag 16), so a loader that reads only
//!    ELF32 (QEMU) loads this ELF64 by address fields;
//! 2. builds its own page tables (first 4 GiB identity-mapped, 2 MiB pages),
//!    turns on PAE, EFER.LME and paging, and far-jumps to 64-bit code;
//! 3. runs its checks in Rust, each a small function in [`CHECKS`], printing
//!    `mbkernel: ok NAME` or `mbkernel: FAIL NAME: why` to COM1;
//! 4. prints `mbkernel: RESULT PASS (N checks)` or `mbkernel: RESULT FAIL
//!    (K of N failed)`, writes 0 (pass) or 1 to QEMU's isa-debug-exit
//!    (port 0xF4), and halts with interrupts off should the write return.
//!
//! The command line (`--append`) steers it, in `key=value` words:
//! - `expect_mem=MIB`: RAM the machine has (checks mem_upper, the memory map);
//! - `initrd_len=N initrd_sum=0xHEX`: module 0 must be N bytes with this
//!   FNV-1a 32-bit hash;
//! - `skip=NAME,NAME`: checks not to run (printed as `skip NAME`).
//!
//! Add a check: write `fn check_x(c: &Ctx, why: &mut Msg) -> bool` and list
//! it in [`CHECKS`]. The check reads the boot state in `Ctx` and explains a
//! failure in `why`.
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::fmt::{self, Write};

/// Multiboot header flags: page-align modules (0), memory info (1), the
/// a.out-kludge address fields (16).
const MB_FLAGS: u32 = 1 | 1 << 1 | 1 << 16;

// The multiboot header, the 32-bit entry and the mode switches. AT&T
// syntax. `.text._start` comes first in link.ld, so the header lies at the
// start of the text, at file offset 0x1000 (inside the first 8 KiB).
global_asm!(
    r#"
    .section .text._start, "ax"
    .code32
    .balign 4
mb_header:
    .long 0x1BADB002
    .long {flags}
    .long -(0x1BADB002 + {flags})
    .long mb_header         /* header_addr */
    .long __image_start     /* load_addr */
    .long __data_end        /* load_end_addr */
    .long __image_end       /* bss_end_addr */
    .long _start            /* entry_addr */

    .global _start
_start:
    cli
    cld
    mov %eax, %edi          /* the multiboot magic */
    mov %ebx, %esi          /* the information structure */
    mov $mb_stack_top, %esp

    /* PML4[0] -> PDPT; PDPT[0..4] -> 4 PDs; 2048 PD entries of 2 MiB. */
    mov $mb_pdpt, %eax
    or $3, %eax
    mov %eax, mb_pml4
    xor %ecx, %ecx
1:  mov %ecx, %eax
    shl $12, %eax
    add $mb_pd, %eax
    or $3, %eax
    mov %eax, mb_pdpt(,%ecx,8)
    inc %ecx
    cmp $4, %ecx
    jb 1b
    xor %ecx, %ecx
2:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax          /* present, writable, 2 MiB */
    mov %eax, mb_pd(,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jb 2b

    lgdt mb_gdt_ptr
    mov %cr4, %eax
    or $0x20, %eax          /* PAE */
    mov %eax, %cr4
    mov $mb_pml4, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx   /* IA32_EFER */
    rdmsr
    or $0x100, %eax         /* LME */
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax    /* PG, PE */
    mov %eax, %cr0
    ljmp $0x08, $mb_long_entry

    .code64
mb_long_entry:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    mov $mb_stack_top, %esp /* zero-extends: RSP's upper half was undefined */
    mov %edi, %edi
    mov %esi, %esi
    call mb_main
3:  cli
    hlt
    jmp 3b

/* extern "C" fn mb_mode_roundtrip(): 64-bit -> compatibility mode ->
   32-bit protected mode, paging off (CR0.PG = 0, then EFER.LME = 0) ->
   back into long mode. Records what it saw in mb_pm_* (see Rust). */
    .global mb_mode_roundtrip
mb_mode_roundtrip:
    push %rbx
    push %rbp
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, mb_saved_rsp(%rip)
    pushq $0x18
    lea mb_compat32(%rip), %rax
    push %rax
    lretq
    .code32
mb_compat32:
    mov %cr0, %eax
    and $0x7FFFFFFF, %eax   /* PG off: leaves IA-32e mode (LMA = 0) */
    mov %eax, %cr0
    mov $0xC0000080, %ecx
    rdmsr
    and $0xFFFFFEFF, %eax   /* LME off */
    wrmsr
    /* Now 32-bit protected mode, paging off. */
    mov %cr0, %eax
    mov %eax, mb_pm_cr0
    mov $0xC0000080, %ecx
    rdmsr
    mov %eax, mb_pm_efer
    movl $0x32323232, mb_pm_marker
    /* And back: LME, then PG, then a 64-bit code segment. */
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000000, %eax
    mov %eax, %cr0
    ljmp $0x08, $mb_back64
    .code64
mb_back64:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %ss
    mov mb_saved_rsp(%rip), %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret

    .balign 8
mb_gdt:
    .quad 0
    .quad 0x00af9b000000ffff  /* 0x08: 64-bit code */
    .quad 0x00cf93000000ffff  /* 0x10: flat data */
    .quad 0x00cf9b000000ffff  /* 0x18: flat 32-bit code */
mb_gdt_end:
    .balign 8
mb_gdt_ptr:
    .word mb_gdt_end - mb_gdt - 1
    .quad mb_gdt

    .section .bss.mb_tables, "aw", @nobits
    .balign 4096
mb_pml4: .skip 4096
mb_pdpt: .skip 4096
mb_pd:   .skip 4 * 4096
mb_stack: .skip 64 * 1024
mb_stack_top:
    .balign 8
mb_saved_rsp: .skip 8
    .global mb_pm_cr0, mb_pm_efer, mb_pm_marker
mb_pm_cr0: .skip 4
mb_pm_efer: .skip 4
mb_pm_marker: .skip 4
"#,
    flags = const MB_FLAGS,
    options(att_syntax)
);

unsafe extern "C" {
    fn mb_mode_roundtrip();
    static mb_pm_cr0: u32;
    static mb_pm_efer: u32;
    static mb_pm_marker: u32;
    static __image_start: u8;
    static __image_end: u8;
}

// ---- port I/O and COM1 ----

fn outb(port: u16, v: u8) {
    // SAFETY: port I/O has no memory effects.
    unsafe { asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack)) }
}
fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as above.
    unsafe { asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack)) }
    v
}
fn outl(port: u16, v: u32) {
    // SAFETY: as above.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack)) }
}

const COM1: u16 = 0x3f8;
const LSR_THRE: u8 = 1 << 5;
const LSR_TEMT: u8 = 1 << 6;

struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            // Bounded wait for the transmit holding register.
            for _ in 0..100_000 {
                if inb(COM1 + 5) & LSR_THRE != 0 {
                    break;
                }
            }
            outb(COM1, b);
        }
        Ok(())
    }
}

macro_rules! say {
    ($($t:tt)*) => {{ let _ = writeln!(Serial, $($t)*); }};
}

/// A failure message, in a fixed buffer (no allocator).
pub struct Msg {
    buf: [u8; 200],
    len: usize,
}

impl Write for Msg {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

impl Msg {
    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("(not UTF-8)")
    }
}

// ---- the boot state ----

/// Information-structure flags (multiboot 3.3).
const INFO_MEMORY: u32 = 1 << 0;
const INFO_CMDLINE: u32 = 1 << 2;
const INFO_MODS: u32 = 1 << 3;
const INFO_MMAP: u32 = 1 << 6;
const INFO_LOADER_NAME: u32 = 1 << 9;

/// What the kernel was handed.
pub struct Ctx {
    magic: u32,
    info: u64,
    cmdline: &'static str,
}

fn rd32(addr: u64) -> u32 {
    // SAFETY: the first 4 GiB are identity-mapped; the checks read only
    // addresses the loader handed over.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}
fn rd64(addr: u64) -> u64 {
    u64::from(rd32(addr)) | u64::from(rd32(addr + 4)) << 32
}

/// A NUL-terminated string in guest memory (at most 4 KiB).
fn cstr(addr: u64) -> &'static str {
    if addr == 0 {
        return "";
    }
    // SAFETY: as in rd32; the loader terminates its strings.
    let bytes = unsafe { core::slice::from_raw_parts(addr as *const u8, 4096) };
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(0);
    core::str::from_utf8(&bytes[..len]).unwrap_or("")
}

impl Ctx {
    fn field(&self, offset: u64) -> u32 {
        rd32(self.info + offset)
    }
    fn flags(&self) -> u32 {
        self.field(0)
    }
    /// The value of `key=` on the command line.
    fn arg(&self, key: &str) -> Option<&'static str> {
        self.cmdline
            .split(' ')
            .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
    }
    fn num(&self, key: &str) -> Option<u64> {
        let v = self.arg(key)?;
        match v.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => v.parse().ok(),
        }
    }
    fn skipped(&self, name: &str) -> bool {
        self.arg("skip")
            .is_some_and(|s| s.split(',').any(|n| n == name))
    }
}

macro_rules! ensure {
    ($why:expr, $cond:expr, $($t:tt)*) => {
        if !$cond {
            let _ = write!($why, $($t)*);
            return false;
        }
    };
}

/// The CPU and PC checks: exceptions, XSETBV, CR8, MSRs, LAPIC, PCI.
#[path = "mbkernel/cpu.rs"]
mod cpu;

// ---- the checks ----

/// EAX = 0x2BADB002 and EBX = the information structure (multiboot 3.2).
fn check_entry_magic(c: &Ctx, why: &mut Msg) -> bool {
    ensure!(why, c.magic == 0x2bad_b002, "EAX was {:#x}", c.magic);
    ensure!(
        why,
        c.info != 0 && c.info.is_multiple_of(4),
        "EBX was {:#x}",
        c.info
    );
    let f = c.flags();
    let want = INFO_MEMORY | INFO_CMDLINE | INFO_MMAP | INFO_LOADER_NAME;
    ensure!(
        why,
        f & want == want,
        "info flags {f:#x} lack {:#x}",
        want & !f
    );
    say!(
        "mbkernel: boot loader {:?}, info at {:#x}, flags {f:#x}",
        cstr(c.field(64).into()),
        c.info
    );
    true
}

/// mem_lower/mem_upper agree with `expect_mem`: mem_upper is the RAM above
/// 1 MiB, less at most 1 MiB a firmware may keep at the top (QEMU keeps
/// 128 KiB there for its ACPI tables).
fn check_mem_info(c: &Ctx, why: &mut Msg) -> bool {
    let (lower, upper) = (c.field(4), c.field(8));
    say!("mbkernel: mem_lower {lower} KiB, mem_upper {upper} KiB");
    ensure!(why, lower > 0 && lower <= 640, "mem_lower {lower} KiB");
    if let Some(mib) = c.num("expect_mem") {
        let most = mib * 1024 - 1024;
        let upper = u64::from(upper);
        ensure!(
            why,
            upper <= most && upper + 1024 >= most,
            "mem_upper {upper} KiB, want {most} or up to 1 MiB less (expect_mem={mib})"
        );
    }
    true
}

/// The command line is the kernel's name and then the `--append` text.
fn check_cmdline(c: &Ctx, why: &mut Msg) -> bool {
    say!("mbkernel: cmdline {:?}", c.cmdline);
    ensure!(why, !c.cmdline.is_empty(), "empty command line");
    ensure!(
        why,
        c.arg("expect_mem").is_some(),
        "no expect_mem= on the command line"
    );
    true
}

/// FNV-1a, 32 bits.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Module 0 is the `--initrd` file: its length and hash, page-aligned
/// (header flag 0), clear of the kernel.
fn check_module(c: &Ctx, why: &mut Msg) -> bool {
    ensure!(why, c.flags() & INFO_MODS != 0, "info flag 3 (mods) clear");
    let count = c.field(20);
    let Some(len) = c.num("initrd_len") else {
        ensure!(why, count == 0, "{count} modules, none expected");
        return true;
    };
    ensure!(why, count == 1, "{count} modules, 1 expected");
    let list = u64::from(c.field(24));
    let (start, end, string) = (rd32(list), rd32(list + 4), rd32(list + 8));
    say!(
        "mbkernel: module 0 [{start:#x}, {end:#x}) {:?}",
        cstr(string.into())
    );
    ensure!(
        why,
        start % 4096 == 0,
        "module at {start:#x} is not page-aligned"
    );
    ensure!(
        why,
        u64::from(end - start) == len,
        "module is {} bytes, initrd_len={len}",
        end - start
    );
    // SAFETY: the module's range, identity-mapped.
    let bytes = unsafe { core::slice::from_raw_parts(start as u64 as *const u8, len as usize) };
    let sum = fnv1a(bytes);
    ensure!(
        why,
        Some(u64::from(sum)) == c.num("initrd_sum"),
        "module hash {sum:#x}, initrd_sum={:?}",
        c.arg("initrd_sum")
    );
    let kernel_end = &raw const __image_end as u64;
    let kernel_start = &raw const __image_start as u64;
    ensure!(
        why,
        u64::from(start) >= kernel_end || u64::from(end) <= kernel_start,
        "module overlaps the kernel"
    );
    true
}

/// The memory map: entries step by their size field, sorted, disjoint;
/// usable RAM at 0 (mem_lower) and at 1 MiB (mem_upper); the information
/// structure and the kernel lie in usable RAM.
fn check_memory_map(c: &Ctx, why: &mut Msg) -> bool {
    let (len, addr) = (u64::from(c.field(44)), u64::from(c.field(48)));
    ensure!(
        why,
        len >= 24 && addr != 0,
        "memory map of {len} bytes at {addr:#x}"
    );
    let (mut at, mut prev_end, mut n) = (addr, 0u64, 0);
    let (mut low_ok, mut high_ok) = (false, false);
    let mut usable = [(0u64, 0u64); 16];
    while at < addr + len {
        let size = u64::from(rd32(at));
        let (base, length, kind) = (rd64(at + 4), rd64(at + 12), rd32(at + 20));
        say!(
            "mbkernel: mmap [{base:#x}, {:#x}) type {kind}",
            base + length
        );
        ensure!(why, size >= 20, "entry size {size}");
        ensure!(
            why,
            base >= prev_end,
            "entry at {base:#x} overlaps or is out of order"
        );
        low_ok |= base == 0 && kind == 1 && length == u64::from(c.field(4)) * 1024;
        high_ok |= base == 0x10_0000 && kind == 1 && length == u64::from(c.field(8)) * 1024;
        if kind == 1 && n < usable.len() {
            usable[n] = (base, base + length);
            n += 1;
        }
        prev_end = base + length;
        at += size + 4;
    }
    ensure!(
        why,
        low_ok && high_ok,
        "no usable entries matching mem_lower and mem_upper"
    );
    let in_usable = |s: u64, e: u64| usable[..n].iter().any(|&(b, end)| s >= b && e <= end);
    ensure!(
        why,
        in_usable(c.info, c.info + 88),
        "the information structure is not in usable RAM"
    );
    ensure!(
        why,
        in_usable(
            &raw const __image_start as u64,
            &raw const __image_end as u64
        ),
        "the kernel is not in usable RAM"
    );
    true
}

/// The 16550's scratch register, divisor latch (DLAB) and line status.
fn check_uart(_: &Ctx, why: &mut Msg) -> bool {
    let (lcr, dll, dlm, scr, lsr) = (COM1 + 3, COM1, COM1 + 1, COM1 + 7, COM1 + 5);
    for v in [0xa5, 0x5a, 0x00] {
        outb(scr, v);
        let r = inb(scr);
        ensure!(
            why,
            r == v,
            "scratch register read {r:#x} after writing {v:#x}"
        );
    }
    let saved = inb(lcr);
    outb(lcr, 0x80 | 0x03);
    outb(dll, 0x0c);
    outb(dlm, 0x00);
    let (l, m) = (inb(dll), inb(dlm));
    outb(dll, 0x01);
    let l1 = inb(dll);
    outb(lcr, 0x03);
    let lcr_back = inb(lcr);
    outb(lcr, saved);
    ensure!(
        why,
        (l, m, l1) == (0x0c, 0, 1),
        "divisor latch read {l:#x}/{m:#x}/{l1:#x}"
    );
    ensure!(
        why,
        lcr_back == 0x03,
        "LCR read {lcr_back:#x} after writing 0x03"
    );
    let s = inb(lsr);
    ensure!(
        why,
        s & (LSR_THRE | LSR_TEMT) == LSR_THRE | LSR_TEMT,
        "LSR {s:#x}: transmitter not idle"
    );
    ensure!(why, s & 1 == 0, "LSR {s:#x}: data ready with nothing sent");
    true
}

/// Long mode → 32-bit protected mode with paging off → long mode.
fn check_mode_roundtrip(_: &Ctx, why: &mut Msg) -> bool {
    // SAFETY: the routine saves what it clobbers and comes back here.
    unsafe { mb_mode_roundtrip() };
    // SAFETY: written by the routine, read after it.
    let (cr0, efer, marker) = unsafe {
        (
            core::ptr::read_volatile(&raw const mb_pm_cr0),
            core::ptr::read_volatile(&raw const mb_pm_efer),
            core::ptr::read_volatile(&raw const mb_pm_marker),
        )
    };
    ensure!(why, marker == 0x3232_3232, "the 32-bit code did not run");
    ensure!(
        why,
        cr0 & 0x8000_0001 == 1,
        "in 32-bit mode CR0 was {cr0:#x} (want PE, not PG)"
    );
    ensure!(
        why,
        efer & (1 << 8 | 1 << 10) == 0,
        "in 32-bit mode EFER was {efer:#x} (want LME and LMA clear)"
    );
    let efer_now: u64;
    // SAFETY: reading EFER has no side effects.
    unsafe {
        asm!("rdmsr", in("ecx") 0xc000_0080u32, out("eax") _, out("edx") _, options(nomem, nostack));
        let (lo, hi): (u32, u32);
        asm!("rdmsr", in("ecx") 0xc000_0080u32, out("eax") lo, out("edx") hi, options(nomem, nostack));
        efer_now = u64::from(lo) | u64::from(hi) << 32;
    }
    ensure!(
        why,
        efer_now & (1 << 10) != 0,
        "back in 64-bit code EFER.LMA is clear ({efer_now:#x})"
    );
    true
}

type Check = fn(&Ctx, &mut Msg) -> bool;

/// Every check, in order. Mode switches last: if the hypervisor gets one
/// wrong, everything before it has been reported.
const CHECKS: &[(&str, Check)] = &[
    ("entry", check_entry_magic),
    ("meminfo", check_mem_info),
    ("cmdline", check_cmdline),
    ("module", check_module),
    ("mmap", check_memory_map),
    ("uart", check_uart),
    ("exceptions", cpu::check_exceptions),
    ("freshstack", cpu::check_exception_on_unmapped_stack),
    ("xsetbv", cpu::check_xsetbv),
    ("cr8", cpu::check_cr8),
    ("msrs", cpu::check_msrs_match_cpuid),
    ("lapic", cpu::check_lapic_registers),
    ("pci", cpu::check_pci_absent),
    ("modeswitch", check_mode_roundtrip),
];

/// QEMU's isa-debug-exit.
const DEBUG_EXIT: u16 = 0xf4;

#[unsafe(no_mangle)]
extern "C" fn mb_main(magic: u32, info: u32) -> ! {
    let info = u64::from(info);
    let cmdline = if magic == 0x2bad_b002 && rd32(info) & INFO_CMDLINE != 0 {
        cstr(rd32(info + 16).into())
    } else {
        ""
    };
    let c = Ctx {
        magic,
        info,
        cmdline,
    };
    say!("mbkernel: in 64-bit mode");
    let (mut run, mut failed) = (0, 0);
    for &(name, check) in CHECKS {
        if c.skipped(name) {
            say!("mbkernel: skip {name}");
            continue;
        }
        run += 1;
        let mut why = Msg {
            buf: [0; 200],
            len: 0,
        };
        if check(&c, &mut why) {
            say!("mbkernel: ok {name}");
        } else {
            failed += 1;
            say!("mbkernel: FAIL {name}: {}", why.as_str());
        }
    }
    if failed == 0 {
        say!("mbkernel: RESULT PASS ({run} checks)");
    } else {
        say!("mbkernel: RESULT FAIL ({failed} of {run} failed)");
    }
    outl(DEBUG_EXIT, u32::from(failed != 0));
    halt()
}

fn halt() -> ! {
    loop {
        // SAFETY: stops this CPU; nothing wakes it with IF = 0.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    say!("mbkernel: PANIC {}", info.message());
    say!("mbkernel: RESULT FAIL (panic)");
    outl(DEBUG_EXIT, 2);
    halt()
}
