//! The application processors' start-up trampoline: real mode → protected
//! mode → long mode → the kernel.
//!
//! A start-up IPI starts the AP in real mode at `vector << 12`, with CS =
//! vector << 8 and IP = 0 (SDM Vol. 3A, 9.4.4 "MP Initialization Example";
//! 9.4.4.2 "Typical AP Initialization Sequence"). So the code below is
//! copied at run time into a 4 KiB page below 1 MiB, followed by a data area
//! ([`Params`]) that the boot core fills in before each start-up.
//!
//! The AP then:
//! 1. (16-bit) loads the trampoline's GDT and sets CR0.PE, far-jumps to
//!    32-bit code (SDM 10.9.1 "Switching to Protected Mode");
//! 2. (32-bit) loads CR4 (the boot core's, with PAE, without VMXE and
//!    PCIDE), CR3 (temporary tables below 4 GiB that identity-map this page
//!    and share the kernel's other mappings), EFER (LME, and NXE/SCE as on the
//!    boot core), then CR0 (the boot core's, with PG), and far-jumps to a
//!    64-bit code segment (SDM 10.8.5 "Initializing IA-32e Mode");
//! 3. (64-bit, still in this page) checks that its APIC ID is the one the
//!    boot core is starting, claims the parameters with a `lock cmpxchg` (so
//!    a late core can never share the next core's stack), loads its stack and
//!    jumps to [`ap_long_entry`] in the kernel's text;
//! 4. (kernel text) loads the kernel's own CR3 and calls the Rust entry
//!    `ap_main(index)`, which never returns.

use core::mem::offset_of;

/// Parameters at the end of the trampoline page. The layout is fixed by the
/// assembly below (through `offset_of!`) and by the instructions that read
/// it: `lgdt` takes a 6-byte limit+base, `ljmp` a 6-byte offset+selector.
#[repr(C, align(16))]
#[derive(Clone, Copy)]
pub struct Params {
    /// Null, 32-bit code (08h), 32-bit data (10h), 64-bit code (18h).
    pub gdt: [u64; 4],
    _pad0: [u16; 3],
    pub gdtr_limit: u16,
    /// Linear (= physical) address of `gdt`.
    pub gdtr_base: u32,
    /// Linear address of the 32-bit code, then its selector.
    pub far32_offset: u32,
    pub far32_selector: u16,
    _pad1: u16,
    /// Linear address of the 64-bit code, then its selector.
    pub far64_offset: u32,
    pub far64_selector: u16,
    _pad2: u16,
    /// The APIC ID of the core being started (rule: `apic::cpu_apic_id`).
    pub expected_apic_id: u32,
    /// The temporary PML4 (below 4 GiB).
    pub temp_cr3: u64,
    pub cr0: u64,
    pub cr4: u64,
    pub efer: u64,
    pub kernel_cr3: u64,
    pub stack_top: u64,
    /// Virtual address of `ap_long_entry`.
    pub entry: u64,
    /// The core index passed to `ap_main`.
    pub index: u64,
    /// [`STATE_IDLE`], [`STATE_WAITING`] or [`STATE_CLAIMED`].
    pub state: u32,
    _pad3: u32,
}

/// No core may start (between start-ups, or after a timeout).
pub const STATE_IDLE: u32 = 0;
/// The parameters are for the core with `expected_apic_id`.
pub const STATE_WAITING: u32 = 1;
/// That core took them.
pub const STATE_CLAIMED: u32 = 2;

pub const SEL_CODE32: u16 = 0x08;
pub const SEL_CODE64: u16 = 0x18;
/// Flat 4 GiB segments, accessed bit preset (so the CPU need not write the
/// GDT): 32-bit code (type 0x9b, D=1, G=1), data (0x93), 64-bit code (L=1).
pub const GDT: [u64; 4] = [
    0,
    0x00cf_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x00af_9b00_0000_ffff,
];

impl Params {
    pub const fn zeroed() -> Self {
        Params {
            gdt: [0; 4],
            _pad0: [0; 3],
            gdtr_limit: 0,
            gdtr_base: 0,
            far32_offset: 0,
            far32_selector: 0,
            _pad1: 0,
            far64_offset: 0,
            far64_selector: 0,
            _pad2: 0,
            expected_apic_id: 0,
            temp_cr3: 0,
            cr0: 0,
            cr4: 0,
            efer: 0,
            kernel_cr3: 0,
            stack_top: 0,
            entry: 0,
            index: 0,
            state: STATE_IDLE,
            _pad3: 0,
        }
    }
}

const _: () = {
    assert!(offset_of!(Params, gdtr_base) == offset_of!(Params, gdtr_limit) + 2);
    assert!(offset_of!(Params, far32_selector) == offset_of!(Params, far32_offset) + 4);
    assert!(offset_of!(Params, far64_selector) == offset_of!(Params, far64_offset) + 4);
    assert!(offset_of!(Params, state) % 4 == 0);
};

core::arch::global_asm!(
    // Copied, never executed in place: it lives with read-only data.
    ".pushsection .rodata.hv_smp_trampoline, \"a\"",
    ".balign 16",
    ".global hv_trampoline_start",
    "hv_trampoline_start:",
    ".set .Lhv_data_off, .Lhv_data - hv_trampoline_start",
    ".code16",
    "    cli",
    "    cld",
    // DS = CS: data at known offsets in this page.
    "    movw %cs, %ax",
    "    movw %ax, %ds",
    // ESI = linear address of the data area (CS << 4 + its offset).
    "    xorl %esi, %esi",
    "    movw %ax, %si",
    "    shll $4, %esi",
    "    addl $.Lhv_data_off, %esi",
    "    movw $.Lhv_data_off, %bx",
    "    lgdtl {gdtr}(%bx)",
    "    movl %cr0, %eax",
    "    orl $1, %eax",
    "    movl %eax, %cr0",
    "    ljmpl *{far32}(%bx)",
    ".code32",
    ".global hv_trampoline_32",
    "hv_trampoline_32:",
    "    movw ${sel_data}, %ax",
    "    movw %ax, %ds",
    "    movw %ax, %es",
    "    movw %ax, %ss",
    "    movl {cr4}(%esi), %eax",
    "    movl %eax, %cr4",
    "    movl {temp_cr3}(%esi), %eax",
    "    movl %eax, %cr3",
    "    movl $0xc0000080, %ecx",
    "    movl {efer}(%esi), %eax",
    "    movl {efer}+4(%esi), %edx",
    "    wrmsr",
    "    movl {cr0}(%esi), %eax",
    "    movl %eax, %cr0",
    "    ljmpl *{far64}(%esi)",
    ".code64",
    ".global hv_trampoline_64",
    "hv_trampoline_64:",
    // Upper halves of registers are undefined after the mode switch: address
    // the data area RIP-relative.
    "    leaq .Lhv_data(%rip), %rsi",
    // This core's APIC ID, by the rule of apic::cpu_apic_id.
    "    xorl %eax, %eax",
    "    cpuid",
    "    cmpl $0xb, %eax",
    "    jb .Lhv_leaf1",
    "    movl $0xb, %eax",
    "    xorl %ecx, %ecx",
    "    cpuid",
    "    testl %ebx, %ebx",
    "    jz .Lhv_leaf1",
    "    movl %edx, %edi",
    "    jmp .Lhv_have_id",
    ".Lhv_leaf1:",
    "    movl $1, %eax",
    "    cpuid",
    "    shrl $24, %ebx",
    "    movl %ebx, %edi",
    ".Lhv_have_id:",
    "    cmpl {expected}(%rsi), %edi",
    "    jne .Lhv_park",
    "    movl ${waiting}, %eax",
    "    movl ${claimed}, %ecx",
    "    lock cmpxchgl %ecx, {state}(%rsi)",
    "    jne .Lhv_park",
    "    movq {kernel_cr3}(%rsi), %rax",
    "    movq {stack_top}(%rsi), %rsp",
    "    movq {index}(%rsi), %rdi",
    "    movq {entry}(%rsi), %rcx",
    "    jmpq *%rcx",
    // Not the core being started, or too late: stop here for good.
    ".Lhv_park:",
    "    cli",
    "    hlt",
    "    jmp .Lhv_park",
    ".balign 16",
    ".global hv_trampoline_data",
    "hv_trampoline_data:",
    ".Lhv_data:",
    "    .space {params_size}",
    ".global hv_trampoline_end",
    "hv_trampoline_end:",
    ".popsection",
    // The kernel-side landing: runs on the temporary tables, which map the
    // kernel's text the same way, then switches to the kernel's own.
    ".pushsection .text.hv_smp_ap_long_entry, \"ax\"",
    ".global hv_ap_long_entry",
    "hv_ap_long_entry:",
    "    movq %rax, %cr3",
    // FS/GS still hold real-mode values; null them (valid in 64-bit mode).
    "    xorl %eax, %eax",
    "    movw %ax, %fs",
    "    movw %ax, %gs",
    "    xorl %ebp, %ebp",
    // RSP is 16-byte aligned: after the call's push the callee sees the
    // System V entry alignment.
    "    call {ap_main}",
    "    ud2",
    ".popsection",
    gdtr = const offset_of!(Params, gdtr_limit),
    far32 = const offset_of!(Params, far32_offset),
    far64 = const offset_of!(Params, far64_offset),
    sel_data = const 0x10,
    cr0 = const offset_of!(Params, cr0),
    cr4 = const offset_of!(Params, cr4),
    efer = const offset_of!(Params, efer),
    temp_cr3 = const offset_of!(Params, temp_cr3),
    kernel_cr3 = const offset_of!(Params, kernel_cr3),
    stack_top = const offset_of!(Params, stack_top),
    entry = const offset_of!(Params, entry),
    index = const offset_of!(Params, index),
    expected = const offset_of!(Params, expected_apic_id),
    state = const offset_of!(Params, state),
    waiting = const STATE_WAITING,
    claimed = const STATE_CLAIMED,
    params_size = const core::mem::size_of::<Params>(),
    ap_main = sym crate::arch::smp::ap_main,
    options(att_syntax)
);

extern "C" {
    static hv_trampoline_start: u8;
    static hv_trampoline_32: u8;
    static hv_trampoline_64: u8;
    static hv_trampoline_data: u8;
    static hv_trampoline_end: u8;
    fn hv_ap_long_entry() -> !;
}

/// Where things are inside the trampoline image (offsets from its start).
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub code32: u64,
    pub code64: u64,
    pub data: u64,
    pub len: u64,
}

fn image() -> (&'static [u8], Layout) {
    let start = &raw const hv_trampoline_start as u64;
    let at = |p: *const u8| p as u64 - start;
    let layout = Layout {
        code32: at(&raw const hv_trampoline_32),
        code64: at(&raw const hv_trampoline_64),
        data: at(&raw const hv_trampoline_data),
        len: at(&raw const hv_trampoline_end),
    };
    // SAFETY: the assembly above defines `len` bytes of read-only data from
    // `hv_trampoline_start`.
    let bytes = unsafe { core::slice::from_raw_parts(start as *const u8, layout.len as usize) };
    (bytes, layout)
}

/// The trampoline installed in a low page: its data area, filled per core.
pub struct Trampoline {
    /// Physical (= real-mode linear) address of the page.
    pub phys: u64,
    /// The page at the physical-memory offset.
    virt: u64,
    layout: Layout,
}

impl Trampoline {
    /// Copies the trampoline to the 4 KiB page at `phys` (page-aligned,
    /// below 1 MiB, SIPI vector `phys >> 12`) and fills in the parameters
    /// that every core shares.
    ///
    /// # Safety
    /// The page must be usable RAM that nothing else uses, for as long as
    /// cores may start, and mapped at `phys_offset`.
    pub unsafe fn install(phys_offset: u64, phys: u64, shared: Shared) -> Trampoline {
        assert!(phys.is_multiple_of(4096) && (0x1000..0x10_0000).contains(&phys));
        let (bytes, layout) = image();
        assert!(layout.len <= 4096, "trampoline larger than a page");
        let virt = phys_offset + phys;
        // SAFETY: the page is ours (caller) and the image fits in it.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), virt as *mut u8, bytes.len()) };
        let t = Trampoline { phys, virt, layout };
        let data = phys + layout.data;
        let mut p = Params::zeroed();
        p.gdt = GDT;
        p.gdtr_limit = (core::mem::size_of_val(&GDT) - 1) as u16;
        p.gdtr_base = (data + offset_of!(Params, gdt) as u64) as u32;
        p.far32_offset = (phys + layout.code32) as u32;
        p.far32_selector = SEL_CODE32;
        p.far64_offset = (phys + layout.code64) as u32;
        p.far64_selector = SEL_CODE64;
        p.temp_cr3 = shared.temp_cr3;
        p.cr0 = shared.cr0;
        p.cr4 = shared.cr4;
        p.efer = shared.efer;
        p.kernel_cr3 = shared.kernel_cr3;
        p.entry = hv_ap_long_entry as *const () as u64;
        p.state = STATE_IDLE;
        // SAFETY: the data area is inside the page, 16-byte aligned (the
        // assembly aligns it), and no core runs the trampoline yet.
        unsafe { core::ptr::write_volatile(t.params(), p) };
        t
    }

    fn params(&self) -> *mut Params {
        (self.virt + self.layout.data) as *mut Params
    }

    /// The SIPI vector: the page number.
    pub fn vector(&self) -> u8 {
        (self.phys >> 12) as u8
    }

    fn state(&self) -> &core::sync::atomic::AtomicU32 {
        // SAFETY: `state` is 4-byte aligned in the data area, which lives as
        // long as the installed trampoline; every access to it (here and the
        // AP's `lock cmpxchg`) is atomic.
        unsafe {
            core::sync::atomic::AtomicU32::from_ptr(
                (self.virt + self.layout.data + offset_of!(Params, state) as u64) as *mut u32,
            )
        }
    }

    /// Sets the per-core parameters and arms the page for core `apic_id`.
    pub fn arm(&self, apic_id: u32, index: usize, stack_top: u64) {
        use core::sync::atomic::Ordering;
        let p = self.params();
        // SAFETY: the state is IDLE, so no AP reads these fields now (an AP
        // reads them only after claiming the WAITING state set below).
        unsafe {
            (&raw mut (*p).expected_apic_id).write_volatile(apic_id);
            (&raw mut (*p).stack_top).write_volatile(stack_top);
            (&raw mut (*p).index).write_volatile(index as u64);
        }
        self.state().store(STATE_WAITING, Ordering::Release);
    }

    /// True once the armed core took the parameters.
    pub fn claimed(&self) -> bool {
        self.state().load(core::sync::atomic::Ordering::Acquire) == STATE_CLAIMED
    }

    /// Disarms the page. Returns false if the core claimed it first (then it
    /// is running with the parameters and must be waited for).
    pub fn disarm(&self) -> bool {
        use core::sync::atomic::Ordering;
        let s = self.state();
        match s.compare_exchange(
            STATE_WAITING,
            STATE_IDLE,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => true,
            Err(STATE_CLAIMED) => {
                s.store(STATE_IDLE, Ordering::Release);
                false
            }
            Err(_) => true,
        }
    }
}

/// Parameters common to every AP.
#[derive(Debug, Clone, Copy)]
pub struct Shared {
    pub temp_cr3: u64,
    pub cr0: u64,
    pub cr4: u64,
    pub efer: u64,
    pub kernel_cr3: u64,
}
