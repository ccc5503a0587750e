//! QEMU's `pc` machine as far as its devices go: [`Platform`] makes every
//! device model of `devices` and puts it on a port-I/O bus and an MMIO bus
//! at the address QEMU's `pc` machine uses, and keeps typed handles to the
//! ones the VM talks to.
//!
//! | ports          | device                                             |
//! |----------------|----------------------------------------------------|
//! | 0x20-0x21      | 8259A master                                        |
//! | 0x40-0x43      | 8254 PIT                                           |
//! | 0x60, 0x64     | 8042 keyboard controller (reset through 0xFE)      |
//! | 0x61           | port B (PIT channel 2 gate and OUT2, NMI control)  |
//! | 0x70-0x71      | CMOS RTC and RAM                                   |
//! | 0x80           | POST codes                                         |
//! | 0x92           | system control port A (fast reset, A20)            |
//! | 0xA0-0xA1      | 8259A slave                                         |
//! | 0xF4-0xF7      | isa-debug-exit                                     |
//! | 0x3F8-0x3FF    | COM1, 16550A                                       |
//! | 0x4D0-0x4D1    | ELCR                                               |
//! | 0x510-0x511    | fw_cfg                                             |
//! | 0x600-0x60B    | ACPI PM1a event/control, PM timer                  |
//! | 0xCF8-0xCFF    | PCI configuration mechanism #1, reset control 0xCF9|
//!
//! On the MMIO bus: the I/O APIC at 0xFEC00000. Every other port reads all
//! ones and ignores writes (the bus). The local
//! APICs are made here, one per vCPU (APIC ID = vCPU index), but are not on
//! the MMIO bus: each vCPU reaches its own at its IA32_APIC_BASE.

use crate::devices::debug_exit::{self, DebugExit};
use crate::devices::fw_cfg::{self, FwCfg};
use crate::devices::ioapic::{self, Ioapic};
use crate::devices::lapic::Lapic;
use crate::devices::legacy::{Cmos, Kbc, PostPort, SystemControlA};
use crate::devices::pci::{self, PciConfigIo};
use crate::devices::pic::{self, Pic};
use crate::devices::pit::{self, Pit, PortB};
use crate::devices::pm_timer::{self, AcpiPm};
use crate::devices::serial::{self, Serial};
use crate::devices::{Clock, MmioBus, PioBus, PlatformEvents, PortsOf, Terminal};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use spin::Mutex;

/// COM1's I/O ports (IRQ 4).
pub const COM1_BASE: u64 = 0x3f8;

/// What the platform is made for.
pub struct PlatformParams {
    pub vcpus: u32,
    /// Guest RAM below 4 GiB and above it, in bytes (fw_cfg, CMOS).
    pub ram_below_4g: u64,
    pub ram_above_4g: u64,
    /// The time source of the timers.
    pub clock: Arc<dyn Clock>,
    /// What is at the other end of COM1.
    pub serial: Box<dyn Terminal>,
}

/// The devices of the machine and the buses they sit on.
pub struct Platform {
    pub pio: PioBus,
    pub mmio: MmioBus,
    /// What the devices ask of the VM (exit code, reset, power-off).
    pub events: Arc<PlatformEvents>,
    pub com1: Arc<Mutex<Serial>>,
    pub pic: Arc<Mutex<Pic>>,
    /// One per vCPU, by vCPU index.
    pub lapics: Vec<Arc<Mutex<Lapic>>>,
    pub fw_cfg: Arc<Mutex<FwCfg>>,
    pub clock: Arc<dyn Clock>,
    /// The 8254 (ports 0x40-0x43 and port B's gate/OUT2 at 0x61).
    pub pit: Arc<Mutex<Pit>>,
    /// The I/O APIC at 0xFEC00000 (its pins deliver with the interrupts
    /// issue; its registers work now).
    pub ioapic: Arc<Mutex<Ioapic>>,
}

impl Platform {
    /// Makes every device and registers it. Fails only if two ranges
    /// overlap (a bug) or the vCPU count does not fit an APIC ID.
    pub fn new(p: PlatformParams) -> Result<Self, String> {
        let vcpus = u8::try_from(p.vcpus)
            .ok()
            .filter(|&n| n > 0 && n < 0xFF)
            .ok_or_else(|| format!("{} vCPUs: the xAPIC allows 1 to 254", p.vcpus))?;
        let events = Arc::new(PlatformEvents::new());
        let com1 = Arc::new(Mutex::new(Serial::new(p.serial)));
        let pic = Arc::new(Mutex::new(Pic::new()));
        let ram = p.ram_below_4g + p.ram_above_4g;
        let fw_cfg = Arc::new(Mutex::new(FwCfg::new(ram, u16::from(vcpus))));
        let lapics = (0..vcpus)
            .map(|id| Arc::new(Mutex::new(Lapic::new(id, p.clock.clone()))))
            .collect();
        let kbc = Arc::new(Mutex::new(Kbc::new(events.clone())));
        let pit = Arc::new(Mutex::new(Pit::new(p.clock.clone())));
        // The I/O APIC's ID follows the local APICs' (as QEMU's MADT has it).
        let ioapic = Arc::new(Mutex::new(Ioapic::new(vcpus)));
        let cmos = Arc::new(Mutex::new(Cmos::new(
            p.clock.clone(),
            p.ram_below_4g,
            p.ram_above_4g,
            p.vcpus,
        )));

        let mut pio = PioBus::new();
        let mut add = |name: &str,
                       base: u16,
                       len: u64,
                       dev: crate::devices::DeviceHandle|
         -> Result<(), String> {
            pio.insert(u64::from(base), len, dev)
                .map_err(|e| format!("{name}: {e}"))
        };
        let ports = |base: u16| -> crate::devices::DeviceHandle {
            Arc::new(Mutex::new(PortsOf::new(pic.clone(), base)))
        };
        add("PIC master", pic::MASTER_BASE, 2, ports(pic::MASTER_BASE))?;
        add("PIC slave", pic::SLAVE_BASE, 2, ports(pic::SLAVE_BASE))?;
        add("ELCR", pic::ELCR_BASE, 2, ports(pic::ELCR_BASE))?;
        add(
            "8042 data",
            Kbc::DATA,
            1,
            Arc::new(Mutex::new(PortsOf::new(kbc.clone(), Kbc::DATA))),
        )?;
        add(
            "8042 command",
            Kbc::COMMAND,
            1,
            Arc::new(Mutex::new(PortsOf::new(kbc, Kbc::COMMAND))),
        )?;
        add("PIT", pit::BASE, pit::PORT_COUNT, pit.clone())?;
        add(
            "port B",
            pit::PORT_B,
            1,
            Arc::new(Mutex::new(PortB(pit.clone()))),
        )?;
        add(
            "CMOS",
            Cmos::INDEX,
            2,
            Arc::new(Mutex::new(PortsOf::new(cmos, Cmos::INDEX))),
        )?;
        add(
            "POST",
            0x80,
            1,
            Arc::new(Mutex::new(PortsOf::new(
                Arc::new(Mutex::new(PostPort)),
                0x80,
            ))),
        )?;
        add(
            "port 92",
            SystemControlA::PORT,
            1,
            Arc::new(Mutex::new(PortsOf::new(
                Arc::new(Mutex::new(SystemControlA::new(events.clone()))),
                SystemControlA::PORT,
            ))),
        )?;
        add(
            "isa-debug-exit",
            debug_exit::PORT,
            debug_exit::PORT_COUNT,
            Arc::new(Mutex::new(DebugExit::new(events.clone()))),
        )?;
        add("COM1", COM1_BASE as u16, serial::PORT_COUNT, com1.clone())?;
        add("fw_cfg", fw_cfg::PORT, fw_cfg::PORT_COUNT, fw_cfg.clone())?;
        add(
            "ACPI PM",
            pm_timer::PM_BASE,
            pm_timer::PORT_COUNT,
            Arc::new(Mutex::new(AcpiPm::new(p.clock.clone(), events.clone()))),
        )?;
        add(
            "PCI configuration",
            pci::PORT,
            pci::PORT_COUNT,
            Arc::new(Mutex::new(PciConfigIo::new(events.clone()))),
        )?;
        let mut mmio = MmioBus::new();
        mmio.insert(ioapic::BASE, ioapic::SIZE, ioapic.clone())
            .map_err(|e| format!("I/O APIC: {e}"))?;
        Ok(Platform {
            pio,
            mmio,
            pit,
            ioapic,
            events,
            com1,
            pic,
            lapics,
            fw_cfg,
            clock: p.clock,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::test_support::ManualClock;
    use crate::devices::PlatformEvent;

    struct NoSink;
    impl Terminal for NoSink {
        fn write(&mut self, _: &[u8]) {}
    }

    fn platform(vcpus: u32) -> Platform {
        Platform::new(PlatformParams {
            vcpus,
            ram_below_4g: 128 << 20,
            ram_above_4g: 0,
            clock: Arc::new(ManualClock::default()),
            serial: Box::new(NoSink),
        })
        .unwrap()
    }

    fn inb(p: &Platform, port: u64) -> u8 {
        let mut b = [0u8];
        p.pio.read(port, &mut b);
        b[0]
    }

    #[test]
    fn every_device_answers_at_its_port() {
        let p = platform(2);
        assert_eq!(p.lapics.len(), 2);
        assert_eq!(p.lapics[1].lock().apic_id(), 1);
        // PIC: IMR read-back on both chips, 16-bit access = two ports.
        p.pio.write(0x21, &[0x5A]);
        assert_eq!(inb(&p, 0x21), 0x5A);
        p.pio.write(0xA1, &[0xA5]);
        assert_eq!(p.pic.lock().imr(), 0xA55A);
        p.pio.write(0x4D0, &[0x00, 0x0E]);
        assert_eq!(inb(&p, 0x4D1), 0x0E);
        // fw_cfg signature.
        p.pio.write(0x510, &0u16.to_le_bytes());
        let sig: Vec<u8> = (0..4).map(|_| inb(&p, 0x511)).collect();
        assert_eq!(sig, b"QEMU");
        // 8042 status, COM1 LSR, CMOS register D, PCI data.
        assert_eq!(inb(&p, 0x64), 0x14);
        assert_eq!(inb(&p, 0x3FD), 0x60);
        p.pio.write(0x70, &[0x0D]);
        assert_eq!(inb(&p, 0x71), 0x80);
        let mut d = [0u8; 4];
        p.pio.read(0xCFC, &mut d);
        assert_eq!(d, [0xFF; 4]);
        // Unknown ports: all ones, writes dropped (Bochs' 0x8900 included).
        assert_eq!(inb(&p, 0x8900), 0xFF);
        assert!(!p.pio.write(0x8900, b"S"));
        assert_eq!(p.events.pending(), None);
    }

    #[test]
    fn exit_and_reset_ports_raise_platform_events() {
        let p = platform(1);
        p.pio.write(0xF4, &[0x2A]);
        assert_eq!(p.events.pending(), Some(PlatformEvent::Exit { code: 0x2A }));
        for (port, value) in [(0xCF9u64, 0x06u8), (0x64, 0xFE), (0x92, 0x01)] {
            let p = platform(1);
            p.pio.write(port, &[value]);
            assert_eq!(p.events.pending(), Some(PlatformEvent::Reset), "{port:#x}");
        }
        let p = platform(1);
        p.pio.write(0x604, &(1u16 << 13).to_le_bytes());
        assert_eq!(p.events.pending(), Some(PlatformEvent::PowerOff));
    }

    #[test]
    fn vcpu_counts_outside_the_xapic_are_refused() {
        for n in [0, 255, 300] {
            assert!(Platform::new(PlatformParams {
                vcpus: n,
                ram_below_4g: 1 << 20,
                ram_above_4g: 0,
                clock: Arc::new(ManualClock::default()),
                serial: Box::new(NoSink),
            })
            .is_err());
        }
    }
}

#[cfg(test)]
mod timer_and_ioapic_tests {
    use super::*;
    use crate::devices::test_support::ManualClock;

    struct NoSink;
    impl Terminal for NoSink {
        fn write(&mut self, _: &[u8]) {}
    }

    #[test]
    fn the_pit_and_the_ioapic_are_where_qemu_puts_them() {
        let clock = Arc::new(ManualClock::default());
        let p = Platform::new(PlatformParams {
            vcpus: 2,
            ram_below_4g: 128 << 20,
            ram_above_4g: 0,
            clock: clock.clone(),
            serial: Box::new(NoSink),
        })
        .unwrap();
        // PIT counter 0, mode 2, count 1000; then read it back latched.
        p.pio.write(0x43, &[0x34]);
        p.pio.write(0x40, &[0xe8]);
        p.pio.write(0x40, &[0x03]);
        clock.set(100_000); // 100 us: 119 ticks
        p.pio.write(0x43, &[0x00]);
        let (mut lo, mut hi) = ([0u8], [0u8]);
        p.pio.read(0x40, &mut lo);
        p.pio.read(0x40, &mut hi);
        assert_eq!(u16::from_le_bytes([lo[0], hi[0]]), 1000 - 119);
        // Port B: gate 2 reads back.
        p.pio.write(0x61, &[0x01]);
        let mut b = [0u8];
        p.pio.read(0x61, &mut b);
        assert_eq!(b[0] & 1, 1);
        // I/O APIC version through its index/window registers; ID = vCPUs.
        p.mmio.write(0xfec0_0000, &1u32.to_le_bytes());
        let mut v = [0u8; 4];
        p.mmio.read(0xfec0_0010, &mut v);
        assert_eq!(u32::from_le_bytes(v), 0x0017_0020);
        p.mmio.write(0xfec0_0000, &0u32.to_le_bytes());
        p.mmio.read(0xfec0_0010, &mut v);
        assert_eq!(u32::from_le_bytes(v) >> 24, 2);
    }
}
