//! Emulated devices and the buses that route guest accesses to them.
//!
//! This layer is pure: no `asm!`, no MSRs, no VMCS, no `unsafe`, nothing from
//! the rest of the crate. It builds and is unit-tested on the host; the kernel
//! side (the I/O-instruction and EPT-violation exit handlers) decodes an access
//! and hands it to a bus.
//!
//! - [`BusDevice`]: a device's register interface. An access names an offset
//!   inside the range the device was registered at and carries the data; its
//!   length is the access size (1, 2, 4 or 8 bytes). Devices never see the
//!   vCPU that made the access.
//! - [`bus`]: [`Bus`], a sorted map of address ranges to devices, used both
//!   as the port-I/O bus ([`PioBus`]) and as the MMIO bus ([`MmioBus`]).
//! - [`IrqLine`]: an interrupt line a device drives (the PIC or IOAPIC pin
//!   behind it is someone else's business).
//! - [`scratch`]: a page of read/write memory, for the MMIO emulation tests.
//! - [`serial`]: a 16550A UART ([`Serial`]) that hands its output to a
//!   [`Terminal`] a line at a time.
//! - The rest of QEMU's `pc` machine, each per its datasheet: [`pic`] (8259A
//!   pair and ELCR), [`lapic`] (xAPIC registers, IA32_APIC_BASE),
//!   [`fw_cfg`], [`debug_exit`] (isa-debug-exit), [`pm_timer`] (ACPI PM
//!   timer and PM1 registers), [`pci`] (configuration mechanism #1, no
//!   devices, and the reset control register at 0xCF9), [`legacy`] (POST
//!   port, port 92, port 61, the 8042 and the CMOS/RTC).
//! - [`PlatformEvents`]: what devices ask of the VM as a whole (an exit
//!   code, a reset, a power-off); [`Clock`]: the time source of the timers.
//!
//! Devices sit behind a `spin::Mutex` ([`DeviceHandle`]): a bus access locks
//! the one device it reaches for the length of the access, so vCPUs touching
//! different devices do not contend.
#![forbid(unsafe_code)]

pub mod bus;
pub mod debug_exit;
pub mod fw_cfg;
pub mod ioapic;
pub mod lapic;
pub mod legacy;
pub mod pci;
pub mod pic;
pub mod pit;
pub mod pm_timer;
pub mod scratch;
pub mod serial;

pub use bus::{Bus, BusError, BusKind, BusRange, DeviceHandle, Mmio, MmioBus, Pio, PioBus};
pub use serial::{Serial, Terminal};

use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use spin::Mutex;

/// A monotonic time source for the device timers (LAPIC timer, PM timer,
/// RTC). The kernel implements it with the TSC; tests set the time by hand.
pub trait Clock: Send + Sync {
    /// Nanoseconds since an arbitrary fixed point (the VM's start); never
    /// goes backwards.
    fn now_ns(&self) -> u64;
}

/// Something that happened to the machine as a whole, asked for by a device
/// and acted on by the VM (every vCPU stops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformEvent {
    /// The guest wrote `code` to isa-debug-exit.
    Exit { code: u32 },
    /// A reset: 0xCF9, the 8042's pulse, port 92's fast reset.
    Reset,
    /// ACPI soft-off (S5 through PM1a_CNT).
    PowerOff,
    /// The hypervisor's watchdog: vCPU `vcpu` made no VM exit for too long
    /// (like a board's watchdog timer, it ends the machine).
    Watchdog { vcpu: u32 },
}

/// What devices ask of the VM, shared by every device and vCPU. The first
/// event wins; later ones are dropped (the machine is already going away).
#[derive(Debug, Default)]
pub struct PlatformEvents {
    /// 0 = none; else `1 << 32 | code` (exit), 2 (reset), 3 (power-off),
    /// `2 << 32 | vcpu` (watchdog).
    event: AtomicU64,
    /// Set with the event: a cheap check on every exit.
    any: AtomicBool,
}

const EV_RESET: u64 = 2;
const EV_POWEROFF: u64 = 3;
const EV_EXIT: u64 = 1 << 32;
const EV_WATCHDOG: u64 = 2 << 32;

impl PlatformEvents {
    pub const fn new() -> Self {
        PlatformEvents {
            event: AtomicU64::new(0),
            any: AtomicBool::new(false),
        }
    }

    fn raise(&self, raw: u64) {
        if self
            .event
            .compare_exchange(0, raw, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.any.store(true, Ordering::Release);
        }
    }

    /// isa-debug-exit: the guest ends with exit code `code`.
    pub fn request_exit(&self, code: u32) {
        self.raise(EV_EXIT | u64::from(code));
    }

    /// A reset request (the VM ends: "guest requested reset").
    pub fn request_reset(&self) {
        self.raise(EV_RESET);
    }

    /// ACPI soft-off.
    pub fn request_poweroff(&self) {
        self.raise(EV_POWEROFF);
    }

    /// The watchdog fired on vCPU `vcpu`.
    pub fn request_watchdog(&self, vcpu: u32) {
        self.raise(EV_WATCHDOG | u64::from(vcpu));
    }

    /// The event raised, if any.
    pub fn pending(&self) -> Option<PlatformEvent> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        match self.event.load(Ordering::Acquire) {
            0 => None,
            EV_RESET => Some(PlatformEvent::Reset),
            EV_POWEROFF => Some(PlatformEvent::PowerOff),
            raw if raw & EV_WATCHDOG != 0 => Some(PlatformEvent::Watchdog { vcpu: raw as u32 }),
            raw => Some(PlatformEvent::Exit { code: raw as u32 }),
        }
    }

    /// The guest's exit code, if it wrote one to isa-debug-exit.
    pub fn exit_code(&self) -> Option<u32> {
        match self.pending() {
            Some(PlatformEvent::Exit { code }) => Some(code),
            _ => None,
        }
    }

    /// Whether a reset was requested.
    pub fn reset_requested(&self) -> bool {
        self.pending() == Some(PlatformEvent::Reset)
    }
}

/// A device that answers at absolute port numbers, a byte at a time (the
/// ISA devices of a PC: a wider access is that many byte accesses at
/// consecutive ports, as on the ISA bus). See [`PortsOf`].
pub trait PortIo: Send {
    /// Read the byte at `port`.
    fn read_port(&mut self, port: u16) -> u8;
    /// Write `value` to `port`.
    fn write_port(&mut self, port: u16, value: u8);
}

/// Puts one shared [`PortIo`] device on a bus at `base` (one registration per
/// port range of the device, each with its own `PortsOf`).
pub struct PortsOf<T: PortIo> {
    pub dev: Arc<Mutex<T>>,
    pub base: u16,
}

impl<T: PortIo> PortsOf<T> {
    pub fn new(dev: Arc<Mutex<T>>, base: u16) -> Self {
        PortsOf { dev, base }
    }
}

impl<T: PortIo> BusDevice for PortsOf<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut d = self.dev.lock();
        for (i, b) in data.iter_mut().enumerate() {
            *b = d.read_port(
                self.base
                    .wrapping_add((offset as u16).wrapping_add(i as u16)),
            );
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut d = self.dev.lock();
        for (i, &b) in data.iter().enumerate() {
            d.write_port(
                self.base
                    .wrapping_add((offset as u16).wrapping_add(i as u16)),
                b,
            );
        }
    }
}

/// A device's register interface, as seen from a bus.
///
/// `offset` is relative to the base of the range the device was inserted at
/// ([`Bus::insert`]); the bus only calls a device for accesses that lie
/// entirely inside that range, so `offset + data.len()` never exceeds the
/// range's length. `data.len()` is the access size.
pub trait BusDevice: Send {
    /// A guest read: fill `data` with the value read at `offset`
    /// (little-endian for multi-byte accesses).
    fn read(&mut self, offset: u64, data: &mut [u8]);

    /// A guest write of `data` at `offset` (little-endian for multi-byte
    /// accesses).
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// An interrupt line that a device drives: the device sets its level, and
/// whatever sits at the other end (a PIC or IOAPIC pin) decides what an edge
/// or a level means.
pub trait IrqLine: Send + Sync {
    /// Drive the line high (asserted) or low.
    fn set_level(&self, high: bool);

    /// One edge: drive the line high, then low (for edge-triggered pins).
    fn pulse(&self) {
        self.set_level(true);
        self.set_level(false);
    }
}

/// Test doubles shared by the device tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::IrqLine;
    use alloc::vec::Vec;
    use core::sync::atomic::{AtomicBool, Ordering};
    use spin::Mutex;

    /// A [`super::Clock`] whose time the test sets.
    #[derive(Default)]
    pub struct ManualClock(pub core::sync::atomic::AtomicU64);

    impl ManualClock {
        pub fn set(&self, ns: u64) {
            self.0.store(ns, Ordering::SeqCst);
        }
        pub fn advance(&self, ns: u64) {
            self.0.fetch_add(ns, Ordering::SeqCst);
        }
    }

    impl super::Clock for ManualClock {
        fn now_ns(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// An [`IrqLine`] that remembers its level and every `set_level` call.
    #[derive(Default)]
    pub struct RecordingIrq {
        level: AtomicBool,
        history: Mutex<Vec<bool>>,
    }

    impl RecordingIrq {
        /// The level the line was last driven to (low if never driven).
        pub fn level(&self) -> bool {
            self.level.load(Ordering::SeqCst)
        }

        /// Every level driven so far, oldest first; clears the record.
        pub fn take_history(&self) -> Vec<bool> {
            core::mem::take(&mut *self.history.lock())
        }
    }

    impl IrqLine for RecordingIrq {
        fn set_level(&self, high: bool) {
            self.level.store(high, Ordering::SeqCst);
            self.history.lock().push(high);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::RecordingIrq;
    use super::IrqLine;

    #[test]
    fn pulse_goes_high_then_low() {
        let irq = RecordingIrq::default();
        irq.pulse();
        assert_eq!(irq.take_history(), [true, false]);
        assert!(!irq.level());
    }

    #[test]
    fn the_first_platform_event_wins() {
        let e = super::PlatformEvents::new();
        assert_eq!(e.pending(), None);
        assert_eq!(e.exit_code(), None);
        e.request_exit(0);
        assert_eq!(e.pending(), Some(super::PlatformEvent::Exit { code: 0 }));
        e.request_reset();
        assert_eq!(e.exit_code(), Some(0));
        assert!(!e.reset_requested());
        let e = super::PlatformEvents::new();
        e.request_reset();
        e.request_exit(0xffff_ffff);
        assert!(e.reset_requested());
        let e = super::PlatformEvents::new();
        e.request_exit(0xffff_ffff);
        assert_eq!(e.exit_code(), Some(0xffff_ffff));
        let e = super::PlatformEvents::new();
        e.request_poweroff();
        assert_eq!(e.pending(), Some(super::PlatformEvent::PowerOff));
    }

    #[test]
    fn set_level_is_recorded() {
        let irq = RecordingIrq::default();
        irq.set_level(true);
        assert!(irq.level());
        irq.set_level(false);
        assert_eq!(irq.take_history(), [true, false]);
    }
}
