//! Code that touches the CPU directly: descriptor tables, interrupts, how a
//! run ends. Only built for `x86_64-unknown-none`.

pub mod apic;
pub mod gdt;
pub mod idt;
pub mod paging;
pub mod smp;
pub mod timer;
pub mod trampoline;

use core::sync::atomic::{AtomicBool, Ordering};
use x86_64::instructions::port::Port;

pub use crate::limits::MAX_CPUS;

/// Set from the run configuration: the image runs in an emulator, so the
/// emulator's exit ports may be used. On real hardware the run ends in `hlt`.
static EMULATOR_EXIT: AtomicBool = AtomicBool::new(false);

pub fn set_emulator_exit(on: bool) {
    EMULATOR_EXIT.store(on, Ordering::SeqCst);
}

/// The index of the current core (0 = the boot core).
pub fn cpu_index() -> usize {
    crate::arch::smp::current_index()
}

/// Ends the run: one final line that the test harness reads, then the
/// emulator's exit (QEMU isa-debug-exit at 0xf4, Bochs' shutdown port 0x8900),
/// or a halt loop on real hardware.
pub fn finish(success: bool) -> ! {
    crate::println!("HV RESULT: {}", if success { "SUCCESS" } else { "FAILURE" });
    crate::console::drain();
    if EMULATOR_EXIT.load(Ordering::SeqCst) {
        // SAFETY: these ports only exist in emulators, where they end the run;
        // the run configuration says we are in one.
        unsafe {
            Port::<u32>::new(0xf4).write(if success { 0x10 } else { 0x11 });
            let mut bochs = Port::<u8>::new(0x8900);
            for b in b"Shutdown" {
                bochs.write(*b);
            }
        }
    }
    halt_forever()
}

/// Stops this core for good.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

/// The time-stamp counter (emulated under Bochs with `clock: sync=none`,
/// where it follows the instruction count).
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Turns CR4.OSXSAVE on in this core (the caller checked CPUID.1:ECX.XSAVE)
/// and sets XCR0 to its reset value, x87 only. The hypervisor itself uses no
/// extended state (its target has no SSE); this is for the guest's XSETBV.
pub fn enable_xsave() {
    use x86_64::registers::control::{Cr4, Cr4Flags};
    // SAFETY: setting OSXSAVE on a CPU with XSAVE only enables the XSAVE
    // instructions; it changes nothing the kernel relies on.
    unsafe { Cr4::update(|f| f.insert(Cr4Flags::OSXSAVE)) };
    set_xcr0(1);
}

/// XSETBV to XCR0. The value passed `x86::control::check_xcr0` against
/// what CPUID offers, and CR4.OSXSAVE is on (`enable_xsave`).
pub fn set_xcr0(value: u64) {
    // SAFETY: a valid XCR0 for this CPU (checked by the caller) cannot
    // fault; the host never uses the state it enables.
    unsafe {
        core::arch::asm!(
            "xsetbv",
            in("ecx") 0u32,
            in("eax") value as u32,
            in("edx") (value >> 32) as u32,
            options(nostack)
        );
    }
}

/// CPUID(`leaf`, `subleaf`) of this core as [EAX, EBX, ECX, EDX]: the one
/// place the hypervisor executes CPUID (through `raw-cpuid`).
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let r = raw_cpuid::native_cpuid::cpuid_count(leaf, subleaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// The TSC frequency from CPUID leaf 0x15 (crystal clock × ratio), or 0 when
/// the CPU does not say.
pub fn tsc_hz() -> u64 {
    raw_cpuid::CpuId::with_cpuid_fn(raw_cpuid::CpuIdReaderNative)
        .get_tsc_info()
        .and_then(|t| t.tsc_frequency())
        .unwrap_or(0)
}

/// The device models' time source: the TSC, at its CPUID-reported rate, or
/// calibrated for 5 ms against the PIT where CPUID does not say (always
/// under Bochs, whose TSC follows emulated time), or 1 GHz if neither works.
/// The TSC is invariant on every core the hypervisor runs on.
/// The TSC's rate as the first [`TscClock`] found it (0 before one exists).
static TSC_HZ: spin::Once<u64> = spin::Once::new();

/// The TSC's rate, from CPUID or calibrated ([`TscClock::new`]).
pub fn tsc_rate() -> u64 {
    TSC_HZ.get().copied().unwrap_or(0)
}

pub struct TscClock {
    start: u64,
    hz: u64,
    /// Nanoseconds per TSC tick, 32.32 fixed point: `now_ns` multiplies
    /// (read before every VM entry that has a timer armed; a 128-bit
    /// division is a library call).
    ns_per_tick: u64,
}

impl TscClock {
    pub fn new() -> Self {
        let hz = match tsc_hz() {
            0 => match timer::Clock::detect(None) {
                Some(clock) => {
                    let t0 = rdtsc();
                    clock.delay_us(5_000);
                    (rdtsc().wrapping_sub(t0) * 200).max(1)
                }
                None => 1_000_000_000,
            },
            hz => hz,
        };
        TSC_HZ.call_once(|| hz);
        let ns_per_tick = ((1_000_000_000u128 << 32) / u128::from(hz)) as u64;
        TscClock {
            start: rdtsc(),
            hz,
            ns_per_tick,
        }
    }

    /// The TSC's rate the clock counts with.
    pub fn hz(&self) -> u64 {
        self.hz
    }
}

impl Default for TscClock {
    fn default() -> Self {
        Self::new()
    }
}

impl crate::devices::Clock for TscClock {
    fn now_ns(&self) -> u64 {
        let ticks = rdtsc().wrapping_sub(self.start);
        ((u128::from(ticks) * u128::from(self.ns_per_tick)) >> 32) as u64
    }
}
