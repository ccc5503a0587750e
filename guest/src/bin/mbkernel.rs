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
//!    `mbkernel: ok NAME` or `mbkernel: FAIL NAME: why` to COM1: the entry
//!    state (`entry`, `meminfo`, `cmdline`, `module`, `mmap`), the 16550
//!    (`uart`), exceptions to its own IDT (`exceptions`), an exception frame
//!    on a page the EPT does not map yet (`eptframe`), QEMU's fw_cfg
//!    (`fwcfg`), and the mode round
//!    trip 64 → 32-bit protected mode with paging off → 64 (`modeswitch`);
//! 4. prints `mbkernel: RESULT PASS (N checks)` or `mbkernel: RESULT FAIL
//!    (K of N failed)`, writes 0 (pass) or 1 to QEMU's isa-debug-exit
//!    (port 0xF4), and halts with interrupts off should the write return.
//!
//! The command line (`--append`) steers it, in `key=value` words:
//! - `expect_mem=MIB`: RAM the machine has (checks mem_upper, the memory map);
//! - `initrd_len=N initrd_sum=0xHEX`: module 0 must be N bytes with this
//!   FNV-1a 32-bit hash;
//! - `echo_lines=N`: N lines will be typed at the console once it says
//!   `mbkernel: uart input ready`; each is echoed (`uartirq`);
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


/* Exceptions 0-31: each stub pushes its vector (and a 0 where the CPU
   pushes no error code), then the common part records vector, error
   code, RIP and CR2 and, inside mb_try, unwinds to it. */
    .macro EXC_STUB n
mb_exc_\n:
    pushq $0
    pushq $\n
    jmp mb_exc_common
    .endm
    .macro EXC_STUB_ERR n
mb_exc_\n:
    pushq $\n
    jmp mb_exc_common
    .endm
    EXC_STUB 0
    EXC_STUB 1
    EXC_STUB 2
    EXC_STUB 3
    EXC_STUB 4
    EXC_STUB 5
    EXC_STUB 6
    EXC_STUB 7
    EXC_STUB_ERR 8
    EXC_STUB 9
    EXC_STUB_ERR 10
    EXC_STUB_ERR 11
    EXC_STUB_ERR 12
    EXC_STUB_ERR 13
    EXC_STUB_ERR 14
    EXC_STUB 15
    EXC_STUB 16
    EXC_STUB_ERR 17
    EXC_STUB 18
    EXC_STUB 19
    EXC_STUB 20
    EXC_STUB_ERR 21
    EXC_STUB 22
    EXC_STUB 23
    EXC_STUB 24
    EXC_STUB 25
    EXC_STUB 26
    EXC_STUB 27
    EXC_STUB 28
    EXC_STUB_ERR 29
    EXC_STUB_ERR 30
    EXC_STUB 31
mb_exc_common:
    pop %rax                /* vector */
    pop %rdx                /* error code */
    mov %rax, mb_exc_vector(%rip)
    mov %rdx, mb_exc_error(%rip)
    mov (%rsp), %rcx
    mov %rcx, mb_exc_rip(%rip)
    mov %cr2, %rcx
    mov %rcx, mb_exc_cr2(%rip)
    cmpq $0, mb_try_rsp(%rip)
    jne mb_try_out
    mov %rax, %rdi
    mov %rdx, %rsi
    mov (%rsp), %rdx
    and $-16, %rsp
    call mb_unexpected

/* extern "C" fn mb_try(f, stack) -> u64: calls f and returns 0xFFFF, or
   the vector of an exception f raised. With `stack` non-zero, f is jumped
   to (nothing pushed) with RSP = stack, and must raise an exception. */
    .global mb_try
mb_try:
    push %rbx
    push %rbp
    push %r12
    push %r13
    push %r14
    push %r15
    sub $8, %rsp
    mov %rsp, mb_try_rsp(%rip)
    test %rsi, %rsi
    jz 1f
    mov %rsi, %rsp
    jmp *%rdi
1:  call *%rdi
    mov $0xffff, %eax
mb_try_out:
    mov mb_try_rsp(%rip), %rsp
    movq $0, mb_try_rsp(%rip)
    add $8, %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret

/* What the exception checks run under mb_try. */
    .global mb_do_ud, mb_do_gp_noncanonical, mb_do_gp_selector, mb_do_pf_write, mb_do_int3
mb_do_ud:
    ud2
    ret
mb_do_gp_noncanonical:
    movabs $0x8000000000000000, %rax
    mov (%rax), %rax
    ret
mb_do_gp_selector:
    mov $0x28, %ax          /* beyond the GDT's limit */
    mov %ax, %ds
    ret
mb_do_pf_write:
    movabs $0x100000000, %rax   /* 4 GiB: not in the page tables */
    movl $1, (%rax)
    ret
mb_do_int3:
    int3
    ret
/* TF on, then RSP = mb_tf_stack (a page never touched): the single-step
   #DB comes after that MOV, RIP = mb_tf_expected, and its frame is the
   first write to the page. Were the event lost on the way, TF would trap
   one instruction later. */
    .global mb_do_tf_untouched, mb_tf_expected
mb_do_tf_untouched:
    mov mb_tf_stack(%rip), %rax
    pushfq
    orq $0x100, (%rsp)
    popfq
    mov %rax, %rsp
mb_tf_expected:
    nop
    nop
    ud2

    .section .rodata.mb_exc_table, "a"
    .balign 8
    .global mb_exc_table
mb_exc_table:
    .quad mb_exc_0
    .quad mb_exc_1
    .quad mb_exc_2
    .quad mb_exc_3
    .quad mb_exc_4
    .quad mb_exc_5
    .quad mb_exc_6
    .quad mb_exc_7
    .quad mb_exc_8
    .quad mb_exc_9
    .quad mb_exc_10
    .quad mb_exc_11
    .quad mb_exc_12
    .quad mb_exc_13
    .quad mb_exc_14
    .quad mb_exc_15
    .quad mb_exc_16
    .quad mb_exc_17
    .quad mb_exc_18
    .quad mb_exc_19
    .quad mb_exc_20
    .quad mb_exc_21
    .quad mb_exc_22
    .quad mb_exc_23
    .quad mb_exc_24
    .quad mb_exc_25
    .quad mb_exc_26
    .quad mb_exc_27
    .quad mb_exc_28
    .quad mb_exc_29
    .quad mb_exc_30
    .quad mb_exc_31
    .section .text._start, "ax"
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
    .global mb_pml4  /* the APs' start-up code loads it too */
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
    .balign 8
mb_try_rsp: .skip 8
    .global mb_exc_vector, mb_exc_error, mb_exc_rip, mb_exc_cr2
mb_exc_vector: .skip 8
mb_exc_error: .skip 8
mb_exc_rip: .skip 8
mb_exc_cr2: .skip 8
    .global mb_tf_stack
mb_tf_stack: .skip 8
    .balign 4096
    .global mb_idt
mb_idt: .skip 256 * 16
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
    fn mb_try(f: unsafe extern "C" fn(), stack: u64) -> u64;
    fn mb_do_ud();
    fn mb_do_gp_noncanonical();
    fn mb_do_gp_selector();
    fn mb_do_pf_write();
    fn mb_do_int3();
    fn mb_do_tf_untouched();
    fn mb_tf_expected();
    static mut mb_tf_stack: u64;
    static mb_exc_table: [u64; 32];
    static mut mb_idt: [[u64; 2]; 256];
    static mb_exc_vector: u64;
    static mb_exc_error: u64;
    static mb_exc_rip: u64;
    static mb_exc_cr2: u64;
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
fn outw(port: u16, v: u16) {
    // SAFETY: as above.
    unsafe { asm!("out dx, ax", in("dx") port, in("ax") v, options(nomem, nostack)) }
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
    if c.arg("expect_mem").is_none() {
        say!("mbkernel: no expect_mem= on the command line: mem_upper not compared");
    }
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

// ---- exceptions ----

/// Loads an IDT whose vectors 0-31 go to the stubs (64-bit interrupt
/// gates, selector 0x08, DPL 0, no IST).
fn setup_idt() {
    for v in 0..32 {
        // SAFETY: the table is read-only data of the asm above.
        let a = unsafe { (&raw const mb_exc_table).cast::<u64>().add(v).read() };
        let low = (a & 0xffff) | 0x08 << 16 | 0x8e00u64 << 32 | ((a >> 16) & 0xffff) << 48;
        // SAFETY: only this function writes the IDT, before any exception.
        unsafe {
            (&raw mut mb_idt)
                .cast::<[u64; 2]>()
                .add(v)
                .write([low, a >> 32])
        };
    }
    let mut desc = [0u8; 10];
    desc[..2].copy_from_slice(&(256u16 * 16 - 1).to_le_bytes());
    desc[2..].copy_from_slice(&(&raw const mb_idt as u64).to_le_bytes());
    // SAFETY: the IDT lives in the kernel's bss for good.
    unsafe { asm!("lidt [{}]", in(reg) desc.as_ptr(), options(nostack)) };
}

/// What the last exception recorded: (vector, error code, RIP, CR2).
fn last_exception() -> (u64, u64, u64, u64) {
    // SAFETY: written by the exception stub before mb_try returned.
    unsafe {
        (
            core::ptr::read_volatile(&raw const mb_exc_vector),
            core::ptr::read_volatile(&raw const mb_exc_error),
            core::ptr::read_volatile(&raw const mb_exc_rip),
            core::ptr::read_volatile(&raw const mb_exc_cr2),
        )
    }
}

/// An exception outside `mb_try`: reported, then the kernel stops.
#[unsafe(no_mangle)]
extern "C" fn mb_unexpected(vector: u64, error: u64, rip: u64) -> ! {
    say!("mbkernel: unexpected exception {vector} error {error:#x} at rip {rip:#x}");
    say!("mbkernel: RESULT FAIL (unexpected exception)");
    outl(DEBUG_EXIT, 3);
    halt()
}

/// #UD, #BP, #GP (with error codes 0 and a selector) and #PF (error code
/// and CR2) reach the kernel's own IDT with the frame the SDM describes.
fn check_exceptions(_: &Ctx, why: &mut Msg) -> bool {
    setup_idt();
    let ud = mb_do_ud as *const () as u64;
    let int3 = mb_do_int3 as *const () as u64;
    let cases: [Expect; 5] = [
        ("#UD", mb_do_ud, 0, 6, 0, Some(ud), None),
        ("#BP", mb_do_int3, 0, 3, 0, Some(int3 + 1), None),
        (
            "#GP non-canonical",
            mb_do_gp_noncanonical,
            0,
            13,
            0,
            None,
            None,
        ),
        ("#GP selector", mb_do_gp_selector, 0, 13, 0x28, None, None),
        ("#PF write", mb_do_pf_write, 0, 14, 2, None, Some(1 << 32)),
    ];
    cases.into_iter().all(|e| expect(e, why))
}

/// An exception whose frame is the first write to a page of RAM (so the
/// hypervisor has not mapped it in the EPT yet): the delivery exits, and
/// the event must still arrive, exactly once and unchanged (SDM 28.2.4,
/// IDT-vectoring information). A fault (#UD) would be raised again by
/// re-executing its instruction even if the event were dropped; a
/// single-step trap (#DB) would not: it would arrive one instruction late.
fn check_exception_frame_unmapped(c: &Ctx, why: &mut Msg) -> bool {
    setup_idt();
    // Two pages near the top of RAM, 2 MiB apart, that nothing touched.
    let top = 0x10_0000 + u64::from(c.field(8)) * 1024;
    ensure!(why, top >= 0x80_0000, "mem_upper too small for this check");
    let ud = mb_do_ud as *const () as u64;
    // SAFETY: read by mb_do_tf_untouched only.
    unsafe { (&raw mut mb_tf_stack).write_volatile(top - 0x20_0000 - 0x800) };
    let tf = mb_tf_expected as *const () as u64;
    let cases: [Expect; 2] = [
        (
            "#UD, frame on an untouched page",
            mb_do_ud,
            top - 0x800,
            6,
            0,
            Some(ud),
            None,
        ),
        (
            "#DB single step, frame on an untouched page",
            mb_do_tf_untouched,
            0,
            1,
            0,
            Some(tf),
            None,
        ),
    ];
    cases.into_iter().all(|e| expect(e, why))
}

/// (name, function, stack (0 = this one), vector, error code, RIP (None:
/// not checked), CR2 (None: not checked)).
type Expect<'a> = (
    &'a str,
    unsafe extern "C" fn(),
    u64,
    u64,
    u64,
    Option<u64>,
    Option<u64>,
);

fn expect((name, f, stack, vector, error, rip, cr2): Expect, why: &mut Msg) -> bool {
    // SAFETY: f raises an exception or returns; mb_try restores state.
    let got = unsafe { mb_try(f, stack) };
    let (v, e, r, c2) = last_exception();
    ensure!(
        why,
        got == vector && v == vector,
        "{name}: got vector {got:#x}, want {vector}"
    );
    ensure!(
        why,
        e == error,
        "{name}: error code {e:#x}, want {error:#x}"
    );
    ensure!(
        why,
        rip.is_none_or(|want| r == want),
        "{name}: RIP {r:#x}, want {rip:x?}"
    );
    ensure!(
        why,
        cr2.is_none_or(|want| c2 == want),
        "{name}: CR2 {c2:#x}, want {cr2:x?}"
    );
    say!("mbkernel: {name}: vector {v}, error {e:#x}, rip {r:#x}");
    true
}

/// The CPU and PC checks: XSETBV, CR8, MSRs against CPUID, the local
/// APIC's registers, PCI absent.
#[path = "mbkernel/cpu.rs"]
mod cpu;
/// UART interrupts and input, an interrupt raised by an MMIO access.
#[path = "mbkernel/irqio.rs"]
mod irqio;

// ---- QEMU's fw_cfg (docs/specs/fw_cfg.rst in QEMU) ----

const FW_CFG_SELECTOR: u16 = 0x510;
const FW_CFG_DATA: u16 = 0x511;

/// Selects item `key` and reads its first `N` bytes.
fn fw_cfg<const N: usize>(key: u16) -> [u8; N] {
    outw(FW_CFG_SELECTOR, key);
    core::array::from_fn(|_| inb(FW_CFG_DATA))
}

/// Bytes of guest-physical memory (identity-mapped below 4 GiB).
fn phys(addr: u64, len: usize) -> &'static [u8] {
    // SAFETY: the first 4 GiB are identity-mapped; read-only use of
    // firmware areas.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
}

fn sums_to_zero(b: &[u8]) -> bool {
    b.iter().fold(0u8, |a, &x| a.wrapping_add(x)) == 0
}

/// The MP table (MP specification 1.4) as an OS without ACPI finds it: the
/// floating pointer in 0xF0000-0xFFFFF, the configuration table with one
/// enabled processor per CPU (`expect_cpus`, APIC 0 the BSP), the I/O APIC
/// at 0xFEC00000 and ISA IRQ 0 on its pin 2.
fn check_mp_table(c: &Ctx, why: &mut Msg) -> bool {
    let fp = (0xf_0000u64..0x10_0000)
        .step_by(16)
        .find(|&a| phys(a, 4) == b"_MP_" && sums_to_zero(phys(a, 16)));
    let Some(fp) = fp else {
        let _ = write!(why, "no MP floating pointer in 0xF0000-0xFFFFF");
        return false;
    };
    let table = u64::from(rd32(fp + 4));
    ensure!(
        why,
        table != 0,
        "floating pointer at {fp:#x}: no configuration table"
    );
    let head = phys(table, 44);
    ensure!(why, &head[..4] == b"PCMP", "no PCMP at {table:#x}");
    let len = usize::from(u16::from_le_bytes([head[4], head[5]]));
    let t = phys(table, len);
    ensure!(why, sums_to_zero(t), "configuration table checksum");
    let count = u16::from_le_bytes([t[34], t[35]]);
    let (mut cpus, mut bsp, mut ioapic, mut irq0) = (0u64, None, None, false);
    let mut at = 44;
    for _ in 0..count {
        ensure!(why, at < len, "entries run past the table");
        match t[at] {
            0 => {
                if t[at + 3] & 1 != 0 {
                    cpus += 1;
                }
                if t[at + 3] & 2 != 0 {
                    bsp = Some(t[at + 1]);
                }
                at += 20;
            }
            2 => {
                ioapic = Some((
                    t[at + 1],
                    u32::from_le_bytes([t[at + 4], t[at + 5], t[at + 6], t[at + 7]]),
                ));
                at += 8;
            }
            3 => {
                irq0 |=
                    t[at + 5] == 0 && t[at + 7] == 2 && ioapic.is_some_and(|i| i.0 == t[at + 6]);
                at += 8;
            }
            1 | 4 => at += 8,
            k => {
                let _ = write!(why, "unknown entry type {k}");
                return false;
            }
        }
    }
    let want = c.num("expect_cpus").unwrap_or(1);
    ensure!(why, cpus == want, "{cpus} processors, want {want}");
    ensure!(why, bsp == Some(0), "BSP {bsp:?}, want APIC 0");
    ensure!(
        why,
        ioapic.is_some_and(|i| i.1 == 0xfec0_0000),
        "I/O APIC {ioapic:x?}"
    );
    ensure!(why, irq0, "no entry for ISA IRQ 0 on I/O APIC pin 2");
    say!("mbkernel: MP table at {table:#x}: {cpus} processor(s), {count} entries");
    true
}

/// The signature "QEMU", the ID (bit 0: the traditional interface), the
/// CPU count, the RAM size and a well-formed file directory.
fn check_fw_cfg(c: &Ctx, why: &mut Msg) -> bool {
    let sig = fw_cfg::<4>(0x0000);
    ensure!(why, &sig == b"QEMU", "signature {sig:x?}, want \"QEMU\"");
    let id = u32::from_le_bytes(fw_cfg(0x0001));
    ensure!(
        why,
        id & 1 != 0,
        "ID {id:#x} lacks bit 0 (traditional interface)"
    );
    // NB_CPUS against `expect_cpus=N` (default 1) and CPUID's count of
    // logical processors in the package (leaf 0xB, core level).
    let cpus = u16::from_le_bytes(fw_cfg(0x0005));
    let want = c.num("expect_cpus").unwrap_or(1);
    ensure!(why, u64::from(cpus) == want, "NB_CPUS {cpus}, want {want}");
    if let Some(mib) = c.num("expect_mem") {
        let ram = u64::from_le_bytes(fw_cfg(0x0003));
        ensure!(
            why,
            ram == mib << 20,
            "RAM_SIZE {ram:#x}, want {:#x}",
            mib << 20
        );
    }
    // The file directory: a big-endian count, then 64-byte entries (size,
    // select, reserved, a NUL-terminated name).
    outw(FW_CFG_SELECTOR, 0x0019);
    let count = u32::from_be_bytes(core::array::from_fn(|_| inb(FW_CFG_DATA)));
    ensure!(why, count < 4096, "file directory of {count} entries");
    for i in 0..count {
        let e: [u8; 64] = core::array::from_fn(|_| inb(FW_CFG_DATA));
        let name = &e[8..];
        let len = name.iter().position(|&b| b == 0);
        ensure!(
            why,
            len.is_some_and(|n| n > 0),
            "file {i}: name not NUL-terminated or empty"
        );
        let select = u16::from_be_bytes([e[4], e[5]]);
        ensure!(
            why,
            select >= 0x20,
            "file {i}: selector {select:#x} below 0x20"
        );
    }
    say!("mbkernel: fw_cfg: QEMU, ID {id:#x}, {cpus} CPU(s), {count} file(s)");
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
    ("exceptions", check_exceptions),
    ("eptframe", check_exception_frame_unmapped),
    ("fwcfg", check_fw_cfg),
    ("mptable", check_mp_table),
    ("xsetbv", cpu::check_xsetbv),
    ("cr8", cpu::check_cr8),
    ("msrs", cpu::check_msrs_match_cpuid),
    ("lapic", cpu::check_lapic_registers),
    ("pci", cpu::check_pci_absent),
    ("apictimer", cpu::check_apic_timer),
    ("pit", cpu::check_pit_irq0),
    ("uartirq", irqio::check_uart_irq),
    ("mmioirq", irqio::check_mmio_irq),
    ("smp", cpu::check_smp),
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
