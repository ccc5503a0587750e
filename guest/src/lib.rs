//! The guest runtime: what every guest program needs to run under the
//! hypervisor, and nothing more.
//!
//! The guest programs (`src/bin/*.rs`) are `no_std`, `no_main` executables
//! linked at guest-physical 1 MiB (see `link.ld` and `build.rs`). The
//! hypervisor enters them in 64-bit mode with paging on (the first 4 GiB
//! identity-mapped), interrupts off, `RSP` at the top of the vCPU's stack and
//! `RDI` = the guest-physical address of the [`BootInfo`] page; see
//! [`abi`], the contract both sides compile.
//!
//! A program is:
//! ```ignore
//! #![no_std]
//! #![no_main]
//! use guest::{abi::BootInfo, println};
//!
//! guest::entry!(main);
//!
//! fn main(boot: &'static BootInfo) -> ! {
//!     println!("vCPU {} of {}", boot.vcpu_id, boot.vcpu_count);
//!     guest::pass(0)
//! }
//! ```
//!
//! What the runtime offers:
//! - [`entry!`]: defines `_start`, checks the boot-info pointer and magic;
//! - hypercalls: [`hypercall`] (raw), [`console_write`], [`report`],
//!   [`shutdown`], [`iteration_done`];
//! - [`pass`] and [`fail`]: report, then shut down;
//! - [`Console`] and [`println!`]/[`print!`]: formatted output through
//!   `HC_CONSOLE_WRITE`;
//! - [`outb`]/[`inb`] and [`Com1`], a polled 16550 writer on port I/O;
//! - [`cpuid`];
//! - a panic handler that prints the message, reports [`code::PANIC`] and
//!   shuts down with that status.
#![no_std]

use core::arch::asm;
use core::fmt::{self, Write};

#[path = "../../hypervisor/src/boot/abi.rs"]
pub mod abi;

pub use abi::BootInfo;
pub use core::arch::x86_64::CpuidResult;

/// Bytes in a guest page (the granularity of the hypervisor's EPT mappings).
pub const PAGE_SIZE: u64 = 4096;

/// The hypervisor identity-maps guest-physical `[0, IDENTITY_MAP_END)`.
pub const IDENTITY_MAP_END: u64 = 4 << 30;

/// Failure codes the runtime itself reports (`HC_REPORT` with `RDI` = code).
/// Each program numbers its own checks from 1; these sit far above them.
pub mod code {
    /// The program panicked; the message went to the console first.
    pub const PANIC: u64 = 0xF000_0001;
    /// `RDI` on entry was null or misaligned, or `BootInfo::magic` was wrong.
    pub const BAD_BOOT_INFO: u64 = 0xF000_0002;
    /// A `BootInfo` field is unusable for this program (printed first).
    pub const BAD_LAYOUT: u64 = 0xF000_0003;
}

/// Defines the program's entry point `_start` and hands a checked
/// `&'static BootInfo` to `$main`, a `fn(&'static BootInfo) -> !`.
///
/// `_start` is an ordinary (unsafe) `extern "C"` function: the ABI enters it with
/// `RSP` = stack top - 8 (as after a `call`) and the boot-info address in
/// `RDI`, its first argument.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        /// The entry point (`ENTRY(_start)` in `link.ld`). Only the
        /// hypervisor calls it, with RDI = the boot-info address.
        #[unsafe(no_mangle)]
        unsafe extern "C" fn _start(boot: *const $crate::abi::BootInfo) -> ! {
            let main: fn(&'static $crate::abi::BootInfo) -> ! = $main;
            // SAFETY: `boot` is RDI as the hypervisor set it at entry.
            main(unsafe { $crate::boot_info(boot) })
        }
    };
}

/// Checks the boot-info pointer the hypervisor passed in `RDI` and its magic.
/// On failure it prints why, reports [`code::BAD_BOOT_INFO`] and shuts down.
/// Called by [`entry!`]; programs need not call it themselves.
///
/// # Safety
/// `ptr` must be the value of `RDI` at guest entry: per the ABI, the address
/// of this vCPU's boot-info page, which stays mapped and unchanged while the
/// vCPU runs. (A null, misaligned or wrong-magic value is still caught.)
pub unsafe fn boot_info(ptr: *const BootInfo) -> &'static BootInfo {
    let addr = ptr as u64;
    if ptr.is_null()
        || !ptr.is_aligned()
        || addr.saturating_add(core::mem::size_of::<BootInfo>() as u64) > IDENTITY_MAP_END
    {
        println!("guest: bad boot-info pointer {addr:#x} in RDI");
        fail(code::BAD_BOOT_INFO, addr);
    }
    // SAFETY: the caller passes RDI from entry, which the ABI (`abi.rs`,
    // "Entry state") makes the guest-physical address of this vCPU's boot-info
    // page. It is non-null, aligned and inside the identity map (checked
    // above), so that address is the pointer, and the hypervisor keeps the
    // page in place and unchanged while the vCPU runs.
    let boot = unsafe { &*ptr };
    if boot.magic != abi::BOOT_INFO_MAGIC {
        println!(
            "guest: boot-info magic at {addr:#x} is {:#018x}, expected {:#018x}",
            boot.magic,
            abi::BOOT_INFO_MAGIC
        );
        fail(code::BAD_BOOT_INFO, boot.magic);
    }
    boot
}

/// Issues hypercall `nr` with up to three arguments and returns `RAX`.
///
/// `RDI`, `RSI` and `RDX` are treated as clobbered: the ABI only promises the
/// result in `RAX`.
///
/// # Safety
/// The arguments must be valid for that hypercall: an address argument must
/// point to memory of the stated length that this program may let the
/// hypervisor read (or write).
#[inline(always)]
pub unsafe fn hypercall(nr: u64, a0: u64, a1: u64, a2: u64) -> u64 {
    let ret;
    // SAFETY: VMCALL in a guest exits to the hypervisor, which handles the
    // call and resumes after the instruction with the result in RAX. It uses
    // no stack; memory is not marked untouched because calls may read it. The
    // caller vouches for the arguments (this function's contract).
    unsafe {
        asm!(
            "vmcall",
            inlateout("rax") nr => ret,
            inlateout("rdi") a0 => _,
            inlateout("rsi") a1 => _,
            inlateout("rdx") a2 => _,
            options(nostack),
        );
    }
    ret
}

/// `HC_CONSOLE_WRITE`: writes `bytes` to the hypervisor's console. Returns
/// `HC_OK` or `HC_ERROR`.
pub fn console_write(bytes: &[u8]) -> u64 {
    if bytes.is_empty() {
        return abi::HC_OK;
    }
    // SAFETY: `bytes` is a live slice of the given length; guest-virtual equals
    // guest-physical (identity map), so its address is the GPA the call wants.
    // The hypervisor only reads it.
    unsafe {
        hypercall(
            abi::HC_CONSOLE_WRITE,
            bytes.as_ptr() as u64,
            bytes.len() as u64,
            0,
        )
    }
}

/// `HC_REPORT`: `status` 0 is a pass, anything else a failure code; `value`
/// (a checksum, a count, a failing address) goes into the run summary.
pub fn report(status: u64, value: u64) -> u64 {
    // SAFETY: no address arguments.
    unsafe { hypercall(abi::HC_REPORT, status, value, 0) }
}

/// `HC_SHUTDOWN`: stops this vCPU with exit `status` (0 = success). Should the
/// hypercall ever return, the vCPU halts forever (interrupts are off).
pub fn shutdown(status: u64) -> ! {
    // SAFETY: no address arguments.
    unsafe { hypercall(abi::HC_SHUTDOWN, status, 0, 0) };
    loop {
        halt();
    }
}

/// `HC_ITERATION_DONE`: this vCPU finished dirty-log iteration `iteration`.
/// Returns when the controller starts the next one: 0 = go on, 1 = stop
/// (anything else is an error).
pub fn iteration_done(iteration: u64) -> u64 {
    // SAFETY: no address arguments.
    unsafe { hypercall(abi::HC_ITERATION_DONE, iteration, 0, 0) }
}

/// Reports a pass with `value`, then shuts down with status 0.
pub fn pass(value: u64) -> ! {
    report(0, value);
    shutdown(0)
}

/// Reports failure `code` with `value`, then shuts down with status `code`.
/// A zero `code` would read as a pass, so it becomes [`code::PANIC`].
pub fn fail(code: u64, value: u64) -> ! {
    let code = if code == 0 { code::PANIC } else { code };
    report(code, value);
    shutdown(code)
}

/// `HLT`. With interrupts off this parks the vCPU (or exits to the
/// hypervisor if it intercepts HLT).
pub fn halt() {
    // SAFETY: HLT only waits for an interrupt; it touches no memory or stack.
    unsafe { asm!("hlt", options(nomem, nostack, preserves_flags)) };
}

/// `CPUID` with `leaf` in EAX and `subleaf` in ECX.
pub fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    core::arch::x86_64::__cpuid_count(leaf, subleaf)
}

/// Writes `value` to I/O port `port`.
///
/// # Safety
/// Port writes can drive devices that touch memory (DMA, interrupt
/// controllers): the caller must know what the port does.
#[inline(always)]
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: OUT touches no memory or stack; the caller vouches for the port.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a byte from I/O port `port`.
///
/// # Safety
/// Port reads can have device side effects: the caller must know what the
/// port does.
#[inline(always)]
pub unsafe fn inb(port: u16) -> u8 {
    let value;
    // SAFETY: IN touches no memory or stack; the caller vouches for the port.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// The first 16550 UART, driven by polled port I/O (no interrupts, no FIFO
/// setup: the hypervisor's device model or the real UART is already usable).
pub struct Com1 {
    /// Polls of the line status register before a byte is given up on.
    pub poll_limit: u32,
}

impl Com1 {
    /// Base I/O port of COM1; the transmit holding register.
    pub const PORT: u16 = 0x3F8;
    /// Line status register.
    pub const LSR: u16 = Self::PORT + 5;
    /// LSR bit 5: the transmit holding register is empty.
    pub const LSR_THR_EMPTY: u8 = 1 << 5;

    pub const fn new() -> Self {
        Com1 {
            poll_limit: 1_000_000,
        }
    }

    /// Waits until the UART can take a byte (LSR bit 5), then sends `byte`.
    /// Fails if the LSR never shows an empty holding register.
    pub fn write_byte(&mut self, byte: u8) -> Result<(), SerialTimeout> {
        let mut polls = 0;
        // SAFETY: 0x3FD is COM1's line status register; reading it has no side
        // effect beyond the UART's own status.
        while unsafe { inb(Self::LSR) } & Self::LSR_THR_EMPTY == 0 {
            polls += 1;
            if polls >= self.poll_limit {
                return Err(SerialTimeout);
            }
            core::hint::spin_loop();
        }
        // SAFETY: 0x3F8 is COM1's transmit holding register (DLAB is 0: the
        // guest never sets it); writing it sends one byte and touches no memory.
        unsafe { outb(Self::PORT, byte) };
        Ok(())
    }

    /// Sends every byte of `bytes`.
    pub fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), SerialTimeout> {
        bytes.iter().try_for_each(|&b| self.write_byte(b))
    }
}

impl Default for Com1 {
    fn default() -> Self {
        Self::new()
    }
}

impl Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write_bytes(s.as_bytes()).map_err(|_| fmt::Error)
    }
}

/// COM1's line status register never showed an empty transmit register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerialTimeout;

/// Buffered console output through `HC_CONSOLE_WRITE`. Text is collected on
/// the stack and sent when the buffer fills or on [`Console::flush`] (and on
/// drop), so a line shorter than the buffer reaches the hypervisor in one
/// hypercall and lines from several vCPUs do not interleave.
pub struct Console {
    buf: [u8; Self::CAPACITY],
    len: usize,
}

impl Console {
    /// Bytes per `HC_CONSOLE_WRITE`.
    pub const CAPACITY: usize = 256;

    pub const fn new() -> Self {
        Console {
            buf: [0; Self::CAPACITY],
            len: 0,
        }
    }

    /// Sends what is buffered.
    pub fn flush(&mut self) {
        console_write(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl Default for Console {
    fn default() -> Self {
        Self::new()
    }
}

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut bytes = s.as_bytes();
        while !bytes.is_empty() {
            if self.len == Self::CAPACITY {
                self.flush();
            }
            let n = bytes.len().min(Self::CAPACITY - self.len);
            self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
        }
        Ok(())
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.flush();
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments, newline: bool) {
    let mut console = Console::new();
    // Console::write_str never fails; a Display impl that errors just cuts
    // the text short.
    let _ = console.write_fmt(args);
    if newline {
        let _ = console.write_str("\n");
    }
    console.flush();
}

/// Formats to the hypervisor console (`HC_CONSOLE_WRITE`), no newline.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::_print(format_args!($($arg)*), false) };
}

/// Formats a line to the hypervisor console (`HC_CONSOLE_WRITE`).
#[macro_export]
macro_rules! println {
    () => { $crate::_print(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::_print(format_args!($($arg)*), true) };
}

/// Prints the panic message, reports [`code::PANIC`] and shuts down with that
/// status.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("guest panic: {info}");
    fail(code::PANIC, 0)
}
