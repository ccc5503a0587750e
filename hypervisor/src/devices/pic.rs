//! The PC's two Intel 8259A programmable interrupt controllers, cascaded
//! (the slave's INT on the master's IR2), and the edge/level control
//! registers (ELCR) of the PIIX/ICH at 0x4D0/0x4D1.
//!
//! Per the 8259A datasheet (Intel 231468):
//! - initialization: ICW1 (a command-port write with bit 4 set) resets the
//!   chip and starts the sequence ICW2 (vector base, bits 7:3), ICW3 (if
//!   cascaded: SNGL = 0), ICW4 (if IC4 = 1: AEOI, SFNM; 8086 mode assumed);
//! - OCW1: the interrupt mask register (data port, read back);
//! - OCW2: non-specific / specific EOI, rotation (on EOI, in AEOI mode) and
//!   set-priority;
//! - OCW3: read IRR or ISR on the command port, poll mode, special mask mode;
//! - an INTA cycle ([`Pic::acknowledge`]) sets the ISR bit (unless AEOI),
//!   clears an edge request, and a request that went away gives the spurious
//!   IR7 of the chip that was asked (vector base + 7, ISR untouched).
//!
//! Edge mode latches a rising edge into the IRR; level mode (ICW1.LTIM or
//! the ELCR bit) follows the line. The ELCR forces IRQ 0, 1, 2, 8 and 13 to
//! edge, as the PIIX's does (their bits read 0). The slave's INT output is a
//! level on the master's IR2.
//!
//! Delivery to a vCPU (the next issue) uses [`Pic::intr`] (INTR asserted),
//! [`Pic::pending_vector`] and [`Pic::acknowledge`]. Reference read: Linux
//! KVM's `arch/x86/kvm/i8259.c`.

use super::PortIo;

/// Master command/data ports.
pub const MASTER_BASE: u16 = 0x20;
/// Slave command/data ports.
pub const SLAVE_BASE: u16 = 0xA0;
/// ELCR1 (IRQ 0-7) and ELCR2 (IRQ 8-15).
pub const ELCR_BASE: u16 = 0x4D0;

/// One 8259A.
#[derive(Debug, Clone)]
struct Chip {
    irr: u8,
    isr: u8,
    imr: u8,
    /// Line levels last seen, for edge detection.
    last_level: u8,
    /// ELCR: 1 = level.
    elcr: u8,
    /// ELCR bits that can be set.
    elcr_mask: u8,
    /// The IR with the highest priority (rotation); 0 after ICW1.
    priority_add: u8,
    /// ICW2's vector base (bits 7:3).
    base: u8,
    /// OCW3: the command port reads ISR (else IRR).
    read_isr: bool,
    /// OCW3: the next read is a poll.
    poll: bool,
    special_mask: bool,
    /// 0: operational; 1, 2, 3: waiting for ICW2, ICW3, ICW4.
    init_state: u8,
    /// ICW2 was written since power-on: the chip has a vector base.
    initialized: bool,
    icw4_needed: bool,
    single: bool,
    /// ICW1.LTIM: every IR level-sensitive.
    ltim: bool,
    auto_eoi: bool,
    rotate_on_auto_eoi: bool,
    special_fully_nested: bool,
}

impl Chip {
    fn new(elcr_mask: u8) -> Self {
        Chip {
            irr: 0,
            isr: 0,
            imr: 0,
            last_level: 0,
            elcr: 0,
            elcr_mask,
            priority_add: 0,
            base: 0,
            read_isr: false,
            poll: false,
            special_mask: false,
            init_state: 0,
            initialized: false,
            icw4_needed: false,
            single: false,
            ltim: false,
            auto_eoi: false,
            rotate_on_auto_eoi: false,
            special_fully_nested: false,
        }
    }

    fn is_level(&self, irq: u8) -> bool {
        self.ltim || self.elcr & (1 << irq) != 0
    }

    fn set_irq(&mut self, irq: u8, level: bool) {
        let bit = 1 << irq;
        if self.is_level(irq) {
            if level {
                self.irr |= bit;
                self.last_level |= bit;
            } else {
                self.irr &= !bit;
                self.last_level &= !bit;
            }
        } else if level {
            if self.last_level & bit == 0 {
                self.irr |= bit;
            }
            self.last_level |= bit;
        } else {
            self.last_level &= !bit;
        }
    }

    /// The priority (0 = highest) of the highest-priority bit in `mask`, or
    /// 8 if none.
    fn priority(&self, mask: u8) -> u8 {
        (0..8)
            .find(|p| mask & (1 << ((p + self.priority_add) & 7)) != 0)
            .unwrap_or(8)
    }

    /// The IR the chip would raise INT for, if any.
    fn pending_irq(&self, is_master: bool) -> Option<u8> {
        let p = self.priority(self.irr & !self.imr);
        if p == 8 {
            return None;
        }
        let mut in_service = self.isr;
        // Special mask mode: masked levels do not block lower ones.
        if self.special_mask {
            in_service &= !self.imr;
        }
        // Special fully nested mode: the slave may interrupt its own IR2.
        if is_master && self.special_fully_nested {
            in_service &= !(1 << 2);
        }
        (p < self.priority(in_service)).then_some((p + self.priority_add) & 7)
    }

    /// The INTA cycle's effect on the chip for `irq`.
    fn intack(&mut self, irq: u8) {
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.priority_add = (irq + 1) & 7;
            }
        } else {
            self.isr |= 1 << irq;
        }
        if !self.is_level(irq) {
            self.irr &= !(1 << irq);
        }
    }

    fn write_command(&mut self, v: u8) {
        if v & 0x10 != 0 {
            // ICW1 (datasheet: "Initialization Command Word 1"). It clears
            // the IMR, resets edge sensing and rotation, selects IRR reads
            // and clears special mask mode; ICW4's functions are zero until
            // ICW4 is written.
            self.icw4_needed = v & 1 != 0;
            self.single = v & 2 != 0;
            self.ltim = v & 8 != 0;
            self.last_level = 0;
            self.irr = 0;
            self.isr = 0;
            self.imr = 0;
            self.priority_add = 0;
            self.read_isr = false;
            self.poll = false;
            self.special_mask = false;
            self.auto_eoi = false;
            self.rotate_on_auto_eoi = false;
            self.special_fully_nested = false;
            self.init_state = 1;
        } else if v & 0x08 != 0 {
            // OCW3.
            if v & 0x04 != 0 {
                self.poll = true;
            }
            if v & 0x02 != 0 {
                self.read_isr = v & 0x01 != 0;
            }
            if v & 0x40 != 0 {
                self.special_mask = v & 0x20 != 0;
            }
        } else {
            // OCW2: R, SL, EOI in bits 7:5; L2-L0 in bits 2:0.
            let level = v & 7;
            match v >> 5 {
                0b000 => self.rotate_on_auto_eoi = false,
                0b100 => self.rotate_on_auto_eoi = true,
                0b001 | 0b101 => {
                    // Non-specific EOI: the highest-priority ISR bit.
                    let p = self.priority(self.isr);
                    if p != 8 {
                        let irq = (p + self.priority_add) & 7;
                        self.isr &= !(1 << irq);
                        if v >> 5 == 0b101 {
                            self.priority_add = (irq + 1) & 7;
                        }
                    }
                }
                0b011 => self.isr &= !(1 << level),
                0b111 => {
                    self.isr &= !(1 << level);
                    self.priority_add = (level + 1) & 7;
                }
                0b110 => self.priority_add = (level + 1) & 7,
                _ => {} // 0b010: no operation
            }
        }
    }

    fn write_data(&mut self, v: u8) {
        match self.init_state {
            1 => {
                self.base = v & 0xF8;
                self.initialized = true;
                self.init_state = match (self.single, self.icw4_needed) {
                    (false, _) => 2,
                    (true, true) => 3,
                    (true, false) => 0,
                };
            }
            2 => {
                // ICW3: which IR has a slave / the slave's ID. The PC's
                // wiring is fixed (IR2), so the value changes nothing.
                self.init_state = if self.icw4_needed { 3 } else { 0 };
            }
            3 => {
                // ICW4: bit 1 AEOI, bit 4 SFNM (bits 0, 2, 3: 8086 mode and
                // buffering, nothing to model).
                self.auto_eoi = v & 0x02 != 0;
                self.special_fully_nested = v & 0x10 != 0;
                self.init_state = 0;
            }
            _ => self.imr = v,
        }
    }
}

/// The master/slave pair with the ELCR. See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Pic {
    chips: [Chip; 2],
}

impl Default for Pic {
    fn default() -> Self {
        Self::new()
    }
}

impl Pic {
    /// Both chips as after power-on: nothing initialized, all unmasked, all
    /// edge.
    pub fn new() -> Self {
        // ELCR1: IRQ 0, 1, 2 are edge only; ELCR2: IRQ 8 and 13.
        Pic {
            chips: [Chip::new(0xF8), Chip::new(0xDE)],
        }
    }

    /// Drive ISA IRQ line `irq` (0-15; 2 is the cascade and ignored) to
    /// `level`.
    pub fn set_irq(&mut self, irq: u8, level: bool) {
        if irq >= 16 || irq == 2 {
            return;
        }
        self.chips[usize::from(irq >> 3)].set_irq(irq & 7, level);
        self.update_cascade();
    }

    /// The slave's INT output is a level on the master's IR2.
    fn update_cascade(&mut self) {
        let out = self.chips[1].pending_irq(false).is_some();
        self.chips[0].set_irq(2, out);
        // An edge-mode IR2 forgets a request the slave dropped (its INT is
        // a level held until INTA).
        if !out {
            self.chips[0].irr &= !(1 << 2);
        }
    }

    /// Whether software has initialized the master (ICW1 and ICW2 since
    /// power-on). Before that its vector base is undefined (datasheet:
    /// the ICW sequence must come first); the interrupt router takes no
    /// INTR from it then, as vectors 0-7 would be taken for exceptions.
    pub fn initialized(&self) -> bool {
        self.chips[0].initialized
    }

    /// Whether the master's INT (the CPU's INTR) is asserted.
    pub fn intr(&self) -> bool {
        self.chips[0].pending_irq(true).is_some()
    }

    /// The vector an INTA cycle would return now, without acknowledging.
    pub fn pending_vector(&self) -> Option<u8> {
        let irq = self.chips[0].pending_irq(true)?;
        if irq == 2 {
            let slave = &self.chips[1];
            Some(slave.base + slave.pending_irq(false).unwrap_or(7))
        } else {
            Some(self.chips[0].base + irq)
        }
    }

    /// The INTA cycle: the vector of the highest-priority request, with its
    /// ISR bit set (unless AEOI). With no request left, the spurious IR7
    /// (master) or IR15 (slave) vector, with no ISR bit set.
    pub fn acknowledge(&mut self) -> u8 {
        let master_base = self.chips[0].base;
        let vector = match self.chips[0].pending_irq(true) {
            Some(2) => {
                self.chips[0].intack(2);
                let slave = &mut self.chips[1];
                match slave.pending_irq(false) {
                    Some(irq) => {
                        slave.intack(irq);
                        slave.base + irq
                    }
                    None => slave.base + 7,
                }
            }
            Some(irq) => {
                self.chips[0].intack(irq);
                master_base + irq
            }
            None => master_base + 7,
        };
        self.update_cascade();
        vector
    }

    /// A poll-mode read of chip `c`: 0x80 | IR if a request is pending (and
    /// acknowledged as by INTA), else 0.
    fn poll_read(&mut self, c: usize) -> u8 {
        self.chips[c].poll = false;
        let r = match self.chips[c].pending_irq(c == 0) {
            Some(irq) => {
                self.chips[c].intack(irq);
                if c == 0 && irq == 2 {
                    // The slave's request is acknowledged through the master.
                    if let Some(s) = self.chips[1].pending_irq(false) {
                        self.chips[1].intack(s);
                    }
                }
                0x80 | irq
            }
            None => 0,
        };
        self.update_cascade();
        r
    }

    /// The IMR of both chips (bit n = IRQ n masked), for reports and tests.
    pub fn imr(&self) -> u16 {
        u16::from(self.chips[0].imr) | u16::from(self.chips[1].imr) << 8
    }

    /// The ISR of both chips.
    pub fn isr(&self) -> u16 {
        u16::from(self.chips[0].isr) | u16::from(self.chips[1].isr) << 8
    }

    /// The IRR of both chips.
    pub fn irr(&self) -> u16 {
        u16::from(self.chips[0].irr) | u16::from(self.chips[1].irr) << 8
    }
}

impl PortIo for Pic {
    fn read_port(&mut self, port: u16) -> u8 {
        match port {
            0x20 | 0x21 | 0xA0 | 0xA1 => {
                let c = usize::from(port >= 0xA0);
                let chip = &self.chips[c];
                if chip.poll {
                    // The read after a poll command is the poll, on either
                    // port (datasheet, "The Poll Command").
                    self.poll_read(c)
                } else if port & 1 == 0 {
                    if chip.read_isr {
                        chip.isr
                    } else {
                        chip.irr
                    }
                } else {
                    chip.imr
                }
            }
            0x4D0 => self.chips[0].elcr,
            0x4D1 => self.chips[1].elcr,
            _ => 0xFF,
        }
    }

    fn write_port(&mut self, port: u16, value: u8) {
        match port {
            0x20 | 0xA0 => self.chips[usize::from(port >= 0xA0)].write_command(value),
            0x21 | 0xA1 => self.chips[usize::from(port >= 0xA0)].write_data(value),
            0x4D0 | 0x4D1 => {
                let c = &mut self.chips[usize::from(port & 1)];
                c.elcr = value & c.elcr_mask;
            }
            _ => return,
        }
        self.update_cascade();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux's init_8259A: edge, cascaded, ICW4 (8086), master at 0x30,
    /// slave at 0x38, everything masked then unmasked as given.
    fn init(p: &mut Pic, master_base: u8, slave_base: u8, aeoi: bool) {
        p.write_port(0x20, 0x11);
        p.write_port(0x21, master_base);
        p.write_port(0x21, 0x04);
        p.write_port(0x21, if aeoi { 0x03 } else { 0x01 });
        p.write_port(0xA0, 0x11);
        p.write_port(0xA1, slave_base);
        p.write_port(0xA1, 0x02);
        p.write_port(0xA1, 0x01);
        p.write_port(0x21, 0);
        p.write_port(0xA1, 0);
    }

    fn pic() -> Pic {
        let mut p = Pic::new();
        init(&mut p, 0x20, 0x28, false);
        p
    }

    #[test]
    fn initialized_after_icw2() {
        let mut p = Pic::new();
        assert!(!p.initialized());
        p.write_port(0x20, 0x11);
        assert!(!p.initialized());
        p.write_port(0x21, 0x20);
        assert!(p.initialized());
    }

    #[test]
    fn icw_sequence_sets_bases_and_imr_reads_back() {
        let mut p = pic();
        p.write_port(0x21, 0xA5);
        p.write_port(0xA1, 0x5A);
        assert_eq!(p.read_port(0x21), 0xA5);
        assert_eq!(p.read_port(0xA1), 0x5A);
        assert_eq!(p.imr(), 0x5AA5);
        // ICW1 clears the IMR.
        p.write_port(0x20, 0x11);
        assert_eq!(p.read_port(0x21), 0);
        // ... and the next data writes are ICW2-4, not the IMR.
        p.write_port(0x21, 0x08);
        p.write_port(0x21, 0x04);
        p.write_port(0x21, 0x01);
        assert_eq!(p.read_port(0x21), 0);
        p.set_irq(1, true);
        assert_eq!(p.acknowledge(), 0x09);
    }

    #[test]
    fn single_mode_without_icw4_skips_icw3_and_icw4() {
        let mut p = Pic::new();
        p.write_port(0x20, 0x12); // SNGL, no IC4
        p.write_port(0x21, 0x40);
        p.write_port(0x21, 0xFE); // already OCW1
        assert_eq!(p.read_port(0x21), 0xFE);
    }

    #[test]
    fn edge_request_is_latched_acknowledged_and_eoid() {
        let mut p = pic();
        assert!(!p.intr());
        assert_eq!(p.pending_vector(), None);
        p.set_irq(4, true);
        p.set_irq(4, false); // an edge stays latched
        assert!(p.intr());
        assert_eq!(p.pending_vector(), Some(0x24));
        assert_eq!(p.read_port(0x20), 0x10, "IRR read by default");
        assert_eq!(p.acknowledge(), 0x24);
        assert!(!p.intr());
        p.write_port(0x20, 0x0B); // OCW3: read ISR
        assert_eq!(p.read_port(0x20), 0x10);
        p.write_port(0x20, 0x20); // non-specific EOI
        assert_eq!(p.read_port(0x20), 0);
        p.write_port(0x20, 0x0A); // OCW3: read IRR
        assert_eq!(p.read_port(0x20), 0);
        // A line held high gives one request, not one per set.
        p.set_irq(4, true);
        p.acknowledge();
        p.write_port(0x20, 0x20);
        p.set_irq(4, true);
        assert!(!p.intr());
    }

    #[test]
    fn priorities_and_nesting() {
        let mut p = pic();
        p.set_irq(5, true);
        p.set_irq(3, true);
        assert_eq!(p.acknowledge(), 0x23);
        // IR5 is lower priority than IR3 in service: no INT.
        assert!(!p.intr());
        p.set_irq(1, true);
        assert_eq!(p.acknowledge(), 0x21, "higher priority nests");
        p.write_port(0x20, 0x20); // EOI IR1
        p.write_port(0x20, 0x20); // EOI IR3
        assert_eq!(p.acknowledge(), 0x25);
        p.write_port(0x20, 0x65); // specific EOI of IR5
        assert_eq!(p.isr(), 0);
    }

    #[test]
    fn masked_irq_does_not_interrupt_until_unmasked() {
        let mut p = pic();
        p.write_port(0x21, 0x01);
        p.set_irq(0, true);
        assert!(!p.intr());
        assert_eq!(p.irr() & 1, 1);
        p.write_port(0x21, 0);
        assert_eq!(p.acknowledge(), 0x20);
    }

    #[test]
    fn slave_cascades_through_ir2() {
        let mut p = pic();
        p.set_irq(12, true);
        assert!(p.intr());
        assert_eq!(p.pending_vector(), Some(0x2C));
        assert_eq!(p.acknowledge(), 0x2C);
        assert_eq!(p.isr(), (1 << 12) | (1 << 2));
        // EOI to the slave then the master, as Linux does.
        p.write_port(0xA0, 0x20);
        p.write_port(0x20, 0x20);
        assert_eq!(p.isr(), 0);
        // Masking the slave's IRQ drops IR2.
        p.write_port(0xA1, 0x10);
        p.set_irq(12, false);
        p.set_irq(12, true);
        assert!(!p.intr());
        // IRQ2 itself is the cascade and cannot be driven.
        p.set_irq(2, true);
        assert!(!p.intr());
    }

    #[test]
    fn spurious_interrupts_are_ir7_and_ir15() {
        let mut p = pic();
        assert_eq!(p.acknowledge(), 0x27);
        assert_eq!(p.isr(), 0, "a spurious IR7 sets no ISR bit");
        // A level request that went away between INT and INTA.
        p.write_port(0x4D1, 0x02); // IRQ 9 level
        p.set_irq(9, true);
        assert!(p.intr());
        // The master latched IR2; take the slave's request away by masking
        // it after the master's INT was seen.
        p.chips[1].imr = 0x02;
        assert_eq!(p.acknowledge(), 0x2F);
        assert_eq!(p.isr() & 0xFF00, 0);
    }

    #[test]
    fn level_mode_follows_the_line_and_elcr_forces_edge_on_0_1_2_8_13() {
        let mut p = pic();
        p.write_port(0x4D0, 0xFF);
        p.write_port(0x4D1, 0xFF);
        assert_eq!(p.read_port(0x4D0), 0xF8);
        assert_eq!(p.read_port(0x4D1), 0xDE);
        p.set_irq(9, true);
        assert_eq!(p.acknowledge(), 0x29);
        p.write_port(0xA0, 0x20);
        p.write_port(0x20, 0x20);
        // Still high: requested again.
        assert!(p.intr());
        p.set_irq(9, false);
        assert!(!p.intr());
        assert_eq!(p.irr(), 0);
        // ICW1.LTIM: all level.
        let mut p = Pic::new();
        p.write_port(0x20, 0x19);
        p.write_port(0x21, 0x20);
        p.write_port(0x21, 0x04);
        p.write_port(0x21, 0x01);
        p.set_irq(0, true);
        p.set_irq(0, false);
        assert!(!p.intr());
    }

    #[test]
    fn auto_eoi_leaves_isr_clear_and_can_rotate() {
        let mut p = Pic::new();
        init(&mut p, 0x20, 0x28, true);
        p.set_irq(3, true);
        assert_eq!(p.acknowledge(), 0x23);
        assert_eq!(p.isr(), 0);
        p.write_port(0x20, 0x80); // rotate in AEOI mode
        p.set_irq(3, false);
        p.set_irq(3, true);
        p.acknowledge();
        // IR4 is now the highest priority: IR3 lowest.
        p.set_irq(3, false);
        p.set_irq(3, true);
        p.set_irq(5, true);
        assert_eq!(p.acknowledge(), 0x25);
    }

    #[test]
    fn rotation_and_set_priority() {
        let mut p = pic();
        p.write_port(0x20, 0xC4); // set priority: IR4 lowest, IR5 highest
        p.set_irq(1, true);
        p.set_irq(6, true);
        assert_eq!(p.acknowledge(), 0x26);
        p.write_port(0x20, 0xA0); // rotate on non-specific EOI: IR6 lowest
        assert_eq!(p.acknowledge(), 0x21);
        p.write_port(0x20, 0xE1); // rotate on specific EOI of IR1
        assert_eq!(p.isr(), 0);
        p.set_irq(1, false);
        p.set_irq(1, true);
        p.set_irq(2 + 1, true);
        assert_eq!(p.acknowledge(), 0x23, "IR2 highest after IR1 lowest");
    }

    #[test]
    fn poll_mode_reads_and_acknowledges() {
        let mut p = pic();
        p.write_port(0x21, 0xFF); // masked: poll still sees only unmasked
        p.write_port(0x20, 0x0C);
        assert_eq!(p.read_port(0x20), 0);
        p.write_port(0x21, 0);
        p.set_irq(6, true);
        p.write_port(0x20, 0x0C);
        assert_eq!(p.read_port(0x21), 0x86);
        assert_eq!(p.isr(), 1 << 6);
        // Back to normal reads afterwards.
        assert_eq!(p.read_port(0x21), 0);
    }

    #[test]
    fn special_mask_mode_lets_lower_priorities_through() {
        let mut p = pic();
        p.set_irq(3, true);
        p.acknowledge();
        p.set_irq(5, true);
        assert!(!p.intr());
        p.write_port(0x21, 0x08); // mask IR3 (in service)
        p.write_port(0x20, 0x68); // set special mask
        assert_eq!(p.pending_vector(), Some(0x25));
        p.write_port(0x20, 0x48); // reset special mask
        assert!(!p.intr());
    }

    #[test]
    fn special_fully_nested_lets_the_slave_nest() {
        let mut p = Pic::new();
        p.write_port(0x20, 0x11);
        p.write_port(0x21, 0x20);
        p.write_port(0x21, 0x04);
        p.write_port(0x21, 0x11); // SFNM
        p.write_port(0xA0, 0x11);
        p.write_port(0xA1, 0x28);
        p.write_port(0xA1, 0x02);
        p.write_port(0xA1, 0x01);
        p.set_irq(12, true);
        assert_eq!(p.acknowledge(), 0x2C);
        p.set_irq(10, true);
        assert_eq!(p.acknowledge(), 0x2A, "slave IRQ10 nests over IRQ12");
    }
}
