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
//!   [`SerialSink`] a line at a time.
//!
//! Devices sit behind a `spin::Mutex` ([`DeviceHandle`]): a bus access locks
//! the one device it reaches for the length of the access, so vCPUs touching
//! different devices do not contend.
#![forbid(unsafe_code)]

pub mod bus;
pub mod scratch;
pub mod serial;

pub use bus::{Bus, BusError, BusKind, BusRange, DeviceHandle, Mmio, MmioBus, Pio, PioBus};
pub use serial::{Serial, SerialSink};

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
    fn set_level_is_recorded() {
        let irq = RecordingIrq::default();
        irq.set_level(true);
        assert!(irq.level());
        irq.set_level(false);
        assert_eq!(irq.take_history(), [true, false]);
    }
}
