//! The I/O APIC (Intel 82093AA datasheet; QEMU's `ioapic` version 0x20):
//! 24 input pins, each routed by its redirection-table entry to a vector and
//! a destination, at 0xFEC00000 on QEMU's `pc` machine.
//!
//! Registers are reached indirectly: the index goes to IOREGSEL (offset
//! 0x00), the value through IOWIN (offset 0x10). Version 0x20 adds the EOI
//! register (offset 0x40), which clears Remote IRR of the entries with that
//! vector, as a local APIC's EOI broadcast does.
//!
//! Pure: a pin change returns the interrupt message to deliver (if any); the
//! VM routes it to the local APICs. Edge-triggered pins deliver on a rising
//! edge of the (polarity-corrected) input; level-triggered pins deliver while
//! asserted, once per EOI (Remote IRR, datasheet 3.2.4).

use super::BusDevice;

/// QEMU's `pc` machine address and the register window's size.
pub const BASE: u64 = 0xfec0_0000;
pub const SIZE: u64 = 0x1000;
pub const PINS: usize = 24;
/// Version 0x20 (with the EOI register), max redirection entry 23.
const VERSION: u32 = 0x20 | ((PINS as u32 - 1) << 16);

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const EOI: u64 = 0x40;

// Redirection-table entry bits (datasheet 3.2.4).
const VECTOR: u64 = 0xff;
const DELIVERY_MODE: u64 = 0x700;
const DEST_LOGICAL: u64 = 1 << 11;
const DELIVERY_STATUS: u64 = 1 << 12;
const POLARITY_LOW: u64 = 1 << 13;
const REMOTE_IRR: u64 = 1 << 14;
const LEVEL: u64 = 1 << 15;
const MASKED: u64 = 1 << 16;
const DEST_SHIFT: u32 = 56;
/// Bits software may write: all but delivery status and Remote IRR, and
/// the reserved bits 55:17.
const WRITABLE: u64 =
    VECTOR | DELIVERY_MODE | DEST_LOGICAL | POLARITY_LOW | LEVEL | MASKED | (0xff << DEST_SHIFT);

/// An interrupt message for the local APICs (the fields the APIC bus or a
/// message-signalled write carries, SDM 11.11 / datasheet 2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqMessage {
    pub vector: u8,
    /// 0 fixed, 1 lowest priority, 2 SMI, 4 NMI, 5 INIT, 7 ExtINT.
    pub delivery_mode: u8,
    pub logical: bool,
    pub dest: u8,
    pub level: bool,
    /// The pin that sent it.
    pub pin: u8,
}

/// Where messages from register writes go (the VM's interrupt router). It
/// returns whether a local APIC accepted the message ([`Ioapic::not_accepted`]).
pub type MessageSink = alloc::boxed::Box<dyn FnMut(IrqMessage) -> bool + Send>;

pub struct Ioapic {
    sink: Option<MessageSink>,
    id: u32,
    select: u8,
    redir: [u64; PINS],
    /// The raw input level of each pin (before polarity).
    input: [bool; PINS],
}

impl Default for Ioapic {
    fn default() -> Self {
        Self::new(0)
    }
}

impl Ioapic {
    /// An I/O APIC with this APIC ID, every pin masked (the reset state).
    pub fn new(id: u8) -> Self {
        Ioapic {
            sink: None,
            id: u32::from(id & 0xf) << 24,
            select: 0,
            redir: [MASKED; PINS],
            input: [false; PINS],
        }
    }

    /// Sends the messages that guest register writes fire (through the bus)
    /// to `sink`.
    pub fn set_sink(&mut self, sink: MessageSink) {
        self.sink = Some(sink);
    }

    /// The redirection entry of `pin` (for the report and tests).
    pub fn entry(&self, pin: usize) -> u64 {
        self.redir[pin]
    }

    fn asserted(&self, pin: usize) -> bool {
        self.input[pin] != (self.redir[pin] & POLARITY_LOW != 0)
    }

    fn message(&self, pin: usize) -> IrqMessage {
        let e = self.redir[pin];
        IrqMessage {
            vector: (e & VECTOR) as u8,
            delivery_mode: ((e & DELIVERY_MODE) >> 8) as u8,
            logical: e & DEST_LOGICAL != 0,
            dest: (e >> DEST_SHIFT) as u8,
            level: e & LEVEL != 0,
            pin: pin as u8,
        }
    }

    /// No local APIC accepted the message `pin` sent: a level-triggered
    /// pin's Remote IRR, set when it was sent, clears again (datasheet
    /// 3.2.4: Remote IRR is set when a local APIC accepts the interrupt),
    /// so that the pin can fire again on its next change instead of
    /// waiting forever for an EOI.
    pub fn not_accepted(&mut self, pin: usize) {
        if let Some(e) = self.redir.get_mut(pin) {
            if *e & LEVEL != 0 {
                *e &= !REMOTE_IRR;
            }
        }
    }

    /// Delivers `pin` if it should fire now: level-triggered and asserted
    /// with Remote IRR clear (then sets it), unmasked.
    fn service_level(&mut self, pin: usize) -> Option<IrqMessage> {
        let e = self.redir[pin];
        if e & MASKED != 0 || e & LEVEL == 0 || e & REMOTE_IRR != 0 || !self.asserted(pin) {
            return None;
        }
        self.redir[pin] |= REMOTE_IRR;
        Some(self.message(pin))
    }

    /// The device driving `pin` sets its line to `level`. Returns the
    /// message to deliver, if the change fires the pin.
    pub fn set_irq(&mut self, pin: usize, level: bool) -> Option<IrqMessage> {
        if pin >= PINS {
            return None;
        }
        let was = self.asserted(pin);
        self.input[pin] = level;
        let now = self.asserted(pin);
        let e = self.redir[pin];
        if e & LEVEL != 0 {
            return self.service_level(pin);
        }
        // Edge: a rising edge of the asserted signal, unmasked.
        if now && !was && e & MASKED == 0 {
            return Some(self.message(pin));
        }
        None
    }

    /// End of interrupt for `vector` (a local APIC's EOI broadcast for a
    /// level-triggered interrupt, or a write of the EOI register): Remote
    /// IRR is cleared in the matching entries, and a pin still asserted
    /// fires again.
    pub fn eoi(&mut self, vector: u8) -> impl Iterator<Item = IrqMessage> + '_ {
        let mut again = [None; PINS];
        for (pin, slot) in again.iter_mut().enumerate() {
            let e = self.redir[pin];
            if e & REMOTE_IRR != 0 && (e & VECTOR) as u8 == vector {
                self.redir[pin] &= !REMOTE_IRR;
                *slot = self.service_level(pin);
            }
        }
        again.into_iter().flatten()
    }

    fn read_register(&self) -> u32 {
        match self.select {
            0x00 => self.id,
            0x01 => VERSION,
            0x02 => self.id,
            i @ 0x10..=0x3f => {
                let pin = usize::from(i - 0x10) / 2;
                let e = self.redir[pin];
                if i % 2 == 0 {
                    e as u32
                } else {
                    (e >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    /// A write through IOWIN. Returns a message if unmasking or re-routing a
    /// level-triggered pin that is asserted fires it.
    fn write_register(&mut self, value: u32) -> Option<IrqMessage> {
        match self.select {
            0x00 => {
                self.id = value & 0x0f00_0000;
                None
            }
            i @ 0x10..=0x3f => {
                let pin = usize::from(i - 0x10) / 2;
                let old = self.redir[pin];
                let new = if i % 2 == 0 {
                    (old & !0xffff_ffff) | u64::from(value)
                } else {
                    (old & 0xffff_ffff) | (u64::from(value) << 32)
                };
                let kept = old & (REMOTE_IRR | DELIVERY_STATUS);
                let mut e = (new & WRITABLE) | kept;
                // An edge-triggered entry has no Remote IRR.
                if e & LEVEL == 0 {
                    e &= !REMOTE_IRR;
                }
                self.redir[pin] = e;
                self.service_level(pin)
            }
            _ => None,
        }
    }

    /// An MMIO write; returns what it fires (unmasking an asserted level
    /// pin, or an EOI that finds the pin still asserted).
    pub fn mmio_write(&mut self, offset: u64, data: &[u8]) -> alloc::vec::Vec<IrqMessage> {
        let mut out = alloc::vec::Vec::new();
        let value = le32(data);
        match offset {
            IOREGSEL => self.select = value as u8,
            IOWIN => out.extend(self.write_register(value)),
            EOI => out.extend(self.eoi(value as u8)),
            _ => {}
        }
        out
    }
}

fn le32(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(b)
}

/// The guest's register accesses, through the MMIO bus. A write's messages
/// go to the sink ([`Ioapic::set_sink`]).
impl BusDevice for Ioapic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            IOREGSEL => u32::from(self.select),
            IOWIN => self.read_register(),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = bytes.get(i).copied().unwrap_or(0);
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        let out = self.mmio_write(offset, data);
        if let Some(mut sink) = self.sink.take() {
            for m in out {
                if !sink(m) {
                    self.not_accepted(usize::from(m.pin));
                }
            }
            self.sink = Some(sink);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_reg(io: &mut Ioapic, index: u32, value: u32) -> alloc::vec::Vec<IrqMessage> {
        io.mmio_write(IOREGSEL, &index.to_le_bytes());
        io.mmio_write(IOWIN, &value.to_le_bytes())
    }

    fn read_reg(io: &mut Ioapic, index: u32) -> u32 {
        io.mmio_write(IOREGSEL, &index.to_le_bytes());
        let mut b = [0u8; 4];
        io.read(IOWIN, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn identification_registers() {
        let mut io = Ioapic::new(2);
        assert_eq!(read_reg(&mut io, 0), 2 << 24);
        assert_eq!(read_reg(&mut io, 1), 0x0017_0020, "version 0x20, 24 pins");
        write_reg(&mut io, 0, 5 << 24);
        assert_eq!(read_reg(&mut io, 0), 5 << 24);
        // Every pin starts masked.
        for pin in 0..PINS as u32 {
            assert_eq!(read_reg(&mut io, 0x10 + 2 * pin), MASKED as u32);
        }
    }

    #[test]
    fn edge_pins_fire_on_rising_edges_only_when_unmasked() {
        let mut io = Ioapic::new(0);
        assert_eq!(io.set_irq(2, true), None, "masked");
        io.set_irq(2, false);
        write_reg(&mut io, 0x14, 0x30); // pin 2: vector 0x30, edge, fixed
        write_reg(&mut io, 0x15, 3 << 24); // destination APIC 3
        let m = io.set_irq(2, true).unwrap();
        assert_eq!(
            m,
            IrqMessage {
                vector: 0x30,
                delivery_mode: 0,
                logical: false,
                dest: 3,
                level: false,
                pin: 2,
            }
        );
        assert_eq!(io.set_irq(2, true), None, "no edge");
        io.set_irq(2, false);
        assert!(io.set_irq(2, true).is_some());
        // Read-only bits cannot be written.
        write_reg(&mut io, 0x14, 0x30 | (1 << 12) | (1 << 14));
        assert_eq!(read_reg(&mut io, 0x14), 0x30);
    }

    #[test]
    fn level_pins_use_remote_irr_and_refire_after_eoi_while_asserted() {
        let mut io = Ioapic::new(0);
        // Pin 9: vector 0x41, level, active low (a PCI-style line; the
        // line idles high).
        assert!(io.set_irq(9, true).is_none(), "masked");
        let out = write_reg(&mut io, 0x22, 0x41 | (LEVEL | POLARITY_LOW) as u32);
        assert!(out.is_empty(), "high = deasserted");
        let m = io.set_irq(9, false).unwrap();
        assert!(m.level);
        assert_ne!(read_reg(&mut io, 0x22) & REMOTE_IRR as u32, 0);
        assert!(io.set_irq(9, true).is_none());
        assert!(io.set_irq(9, false).is_none(), "Remote IRR blocks");
        // EOI with the line still asserted: fires again.
        let again: alloc::vec::Vec<_> = io.eoi(0x41).collect();
        assert_eq!(again.len(), 1);
        // Deassert, EOI: quiet.
        io.set_irq(9, true);
        assert_eq!(io.eoi(0x41).count(), 0);
        assert_eq!(read_reg(&mut io, 0x22) & REMOTE_IRR as u32, 0);
        // The EOI register does the same.
        io.set_irq(9, false);
        let out = io.mmio_write(EOI, &[0x41, 0, 0, 0]);
        assert_eq!(out.len(), 1, "still asserted: delivered again");
    }

    #[test]
    fn bus_writes_send_their_messages_to_the_sink() {
        use alloc::sync::Arc;
        let got = Arc::new(spin::Mutex::new(alloc::vec::Vec::new()));
        let mut io = Ioapic::new(0);
        let g = got.clone();
        io.set_sink(alloc::boxed::Box::new(move |m| {
            g.lock().push(m);
            m.vector != 0x61 // 0x61: nobody takes it
        }));
        io.set_irq(10, true);
        io.write(IOREGSEL, &[0x24, 0, 0, 0]);
        io.write(IOWIN, &(0x60 | LEVEL as u32).to_le_bytes());
        assert_eq!(got.lock().len(), 1);
        assert_eq!(got.lock()[0].vector, 0x60);
        assert_ne!(io.entry(10) & REMOTE_IRR, 0, "accepted");
        // Not accepted: Remote IRR clears, the next change fires again.
        io.write(IOWIN, &(0x61 | LEVEL as u32).to_le_bytes());
        io.write(IOREGSEL, &[0x26, 0, 0, 0]);
        io.set_irq(11, true);
        io.write(IOWIN, &(0x61 | LEVEL as u32).to_le_bytes());
        assert_eq!(got.lock().len(), 2);
        assert_eq!(io.entry(11) & REMOTE_IRR, 0);
        assert!(io.set_irq(11, true).is_some());
        io.not_accepted(11);
        io.not_accepted(99); // no such pin: nothing
    }

    #[test]
    fn unmasking_an_asserted_level_pin_fires_it() {
        let mut io = Ioapic::new(0);
        io.set_irq(11, true);
        let out = write_reg(&mut io, 0x26, 0x50 | LEVEL as u32);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].vector, 0x50);
        assert_eq!(io.set_irq(30, true), None, "no such pin");
    }
}
