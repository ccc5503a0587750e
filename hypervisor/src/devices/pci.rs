//! PCI configuration mechanism #1 (PCI Local Bus Specification 3.0, 3.2.2.3.2)
//! with no devices behind it, and the reset control register that shares its
//! port block on a PC chipset.
//!
//! - 0xCF8 (32-bit accesses only): CONFIG_ADDRESS — enable (bit 31), bus,
//!   device, function and register (bits 23:2); reserved bits 30:24 and 1:0
//!   read 0. It reads back, which is how software detects mechanism #1.
//! - 0xCFC-0xCFF: CONFIG_DATA, any size. No device answers, so every read
//!   returns all ones (a master abort) and writes are dropped. There is no
//!   host bridge either: bus 0 is empty.
//! - 0xCF9 (byte accesses): the reset control register of Intel's PCH/ICH
//!   and the PIIX (Intel PCH datasheet, "Reset Control Register"): bit 1
//!   SYS_RST and bit 3 FULL_RST are kept and read back; writing bit 2
//!   RST_CPU set resets the machine ([`PlatformEvents::request_reset`]).
//!   Other byte and word accesses in 0xCF8-0xCFB are dropped and read all
//!   ones.

use super::{BusDevice, PlatformEvents};
use alloc::sync::Arc;

/// The first port (CONFIG_ADDRESS).
pub const PORT: u16 = 0xCF8;
/// CONFIG_ADDRESS, the reset control register and CONFIG_DATA.
pub const PORT_COUNT: u64 = 8;
/// The reset control register's port.
pub const RESET_CONTROL_PORT: u16 = 0xCF9;

const ADDRESS_MASK: u32 = 0x80FF_FFFC;

/// See the [module documentation](self).
pub struct PciConfigIo {
    address: u32,
    reset_control: u8,
    events: Arc<PlatformEvents>,
}

impl PciConfigIo {
    pub fn new(events: Arc<PlatformEvents>) -> Self {
        PciConfigIo {
            address: 0,
            reset_control: 0,
            events,
        }
    }

    /// CONFIG_ADDRESS as last written.
    pub fn address(&self) -> u32 {
        self.address
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&self.address.to_le_bytes()),
            (1, 1) => data[0] = self.reset_control,
            // CONFIG_DATA: no device, a master abort reads all ones.
            _ => data.fill(0xFF),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (0, 4) => {
                self.address =
                    u32::from_le_bytes([data[0], data[1], data[2], data[3]]) & ADDRESS_MASK;
            }
            (1, 1) => {
                let v = data[0];
                self.reset_control = v & 0x0A;
                if v & 0x04 != 0 {
                    self.events.request_reset();
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::{PioBus, PlatformEvent};
    use spin::Mutex;

    fn bus() -> (PioBus, Arc<PlatformEvents>) {
        let ev = Arc::new(PlatformEvents::new());
        let mut bus = PioBus::new();
        bus.insert(
            0xCF8,
            PORT_COUNT,
            Arc::new(Mutex::new(PciConfigIo::new(ev.clone()))),
        )
        .unwrap();
        (bus, ev)
    }

    fn inl(bus: &PioBus, port: u64) -> u32 {
        let mut d = [0u8; 4];
        bus.read(port, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn mechanism_1_is_detected_and_no_device_answers() {
        let (bus, ev) = bus();
        // Linux's pci_check_type1.
        bus.write(0xCFB, &[0x01]);
        bus.write(0xCF8, &0x8000_0000u32.to_le_bytes());
        assert_eq!(inl(&bus, 0xCF8), 0x8000_0000);
        bus.write(0xCF8, &0xFFFF_FFFFu32.to_le_bytes());
        assert_eq!(inl(&bus, 0xCF8), 0x80FF_FFFC, "reserved bits read 0");
        // Bus 0, device 0 (the host bridge's place): nothing.
        bus.write(0xCF8, &0x8000_0000u32.to_le_bytes());
        assert_eq!(inl(&bus, 0xCFC), 0xFFFF_FFFF);
        let mut w = [0u8; 2];
        bus.read(0xCFE, &mut w);
        assert_eq!(w, [0xFF, 0xFF]);
        let mut b = [0u8];
        bus.read(0xCFF, &mut b);
        assert_eq!(b, [0xFF]);
        bus.write(0xCFC, &0u32.to_le_bytes());
        assert_eq!(inl(&bus, 0xCFC), 0xFFFF_FFFF);
        assert_eq!(ev.pending(), None);
    }

    #[test]
    fn cf9_resets_on_rst_cpu_and_keeps_bits_1_and_3() {
        let (bus, ev) = bus();
        bus.write(0xCF9, &[0x0A]);
        let mut b = [0u8];
        bus.read(0xCF9, &mut b);
        assert_eq!(b, [0x0A]);
        assert_eq!(ev.pending(), None);
        bus.write(0xCF9, &[0x06]);
        assert_eq!(ev.pending(), Some(PlatformEvent::Reset));
    }
}
