//! A 16550A UART, register for register, after the National Semiconductor
//! (now TI) PC16550D datasheet ("PC16550D Universal Asynchronous
//! Receiver/Transmitter with FIFOs", sections 8.1 to 8.10; register summary
//! in Table II, reset values in Table IV).
//!
//! [`Serial`] is a [`BusDevice`] covering the UART's 8 ports (offsets 0 to
//! 7), usually inserted on the [`PioBus`](super::PioBus) at `0x3F8` (COM1).
//! A multi-byte access is taken as consecutive byte accesses, as an 8-bit ISA
//! device sees a wide `in`/`out`.
//!
//! # What is and is not modelled
//! - Transmission is instantaneous: THR (and the transmit FIFO) are always
//!   empty, so LSR.THRE and LSR.TEMT always read 1. Writing THR clears the
//!   THR-empty interrupt and, since the character leaves at once, raises it
//!   again (a new THR-empty event): on the [`IrqLine`] this is a falling then
//!   a rising edge, which is what an edge-triggered PIC needs to see.
//! - Transmitted characters (except in loopback) go to a line buffer and from
//!   there to the [`Terminal`], one line at a time (see [`Serial::flush`]).
//! - Received characters come from the [`Terminal`], pulled whenever the
//!   guest reads RBR, LSR or IIR and when [`Serial::poll_input`] is called
//!   (the host's periodic poll while the guest waits for the received-data
//!   interrupt), and only while the receiver has room: nothing the terminal
//!   holds is lost to an overrun. [`Serial::push_input`] feeds characters
//!   directly (tests). There is no
//!   notion of time: the character-timeout interrupt (IIR = `0xCC`) is
//!   pending whenever the FIFO holds data below its trigger level, as if the
//!   four character times had already passed.
//! - Baud rate, word length, parity and stop bits (the divisor latch and LCR)
//!   are stored and read back but change nothing: no parity, framing or
//!   break errors ever occur, so LSR bits 2 to 4 and 7 stay 0.
//! - The modem inputs (outside loopback) are those of a connected null-modem:
//!   CTS, DSR and DCD asserted, RI not, so MSR reads `0xB0` after reset.
//! - The divisor latch resets to 12 (9600 baud from the PC's 1.8432 MHz
//!   clock, as a PC BIOS leaves COM1); the 16550's master reset does not
//!   touch it, nor the scratch register, and neither does [`Serial::reset`].
//! - Interrupts reach the [`IrqLine`] only while the OUT2 pin is active, as on
//!   a PC, where OUT2 gates the UART's INTR onto the ISA IRQ line: MCR.OUT2
//!   set and MCR.LOOP clear (loopback holds the modem outputs inactive,
//!   datasheet section 8.7).
//! - Loopback (MCR.LOOP): THR goes straight to the receiver, the external
//!   input ([`Serial::push_input`]) is disconnected and dropped, and the MSR
//!   lines follow MCR (RTS to CTS, DTR to DSR, OUT1 to RI, OUT2 to DCD).

use super::{BusDevice, IrqLine};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::sync::Arc;

/// What is at the other end of the UART's line: where its output goes and
/// where its input comes from.
pub trait Terminal: Send {
    /// Output as the guest wrote it (`'\r'` kept): a line with its `'\n'`,
    /// a piece of a line too long for the line buffer, or a partial line
    /// handed over by [`Serial::flush`].
    fn write(&mut self, bytes: &[u8]);
    /// The next character typed at the terminal, if one is waiting. The
    /// UART asks only when its receiver has room, so a terminal that holds
    /// its characters until asked loses none.
    fn read(&mut self) -> Option<u8> {
        None
    }
}

/// Number of ports the UART decodes.
pub const PORT_COUNT: u64 = 8;

/// Receive FIFO depth in FIFO mode (in 16450 mode there is one holding
/// register).
pub const FIFO_SIZE: usize = 16;

/// Size of the output line buffer: a longer line is handed to the terminal in
/// pieces of this many bytes.
pub const LINE_MAX: usize = 160;

/// Divisor latch value after reset: 115200 / 12 = 9600 baud.
pub const RESET_DIVISOR: u16 = 12;

// Register offsets (Table II). DLAB is LCR bit 7.
/// DLAB=0: RBR (read) / THR (write); DLAB=1: divisor latch LSB.
const REG_DATA: u64 = 0;
/// DLAB=0: IER; DLAB=1: divisor latch MSB.
const REG_IER: u64 = 1;
/// IIR (read) / FCR (write).
const REG_IIR_FCR: u64 = 2;
const REG_LCR: u64 = 3;
const REG_MCR: u64 = 4;
const REG_LSR: u64 = 5;
const REG_MSR: u64 = 6;
const REG_SCR: u64 = 7;

/// Interrupt Enable Register (section 8.5).
mod ier {
    /// Enable Received Data Available (and character timeout) interrupt.
    pub const ERBFI: u8 = 1 << 0;
    /// Enable Transmitter Holding Register Empty interrupt.
    pub const ETBEI: u8 = 1 << 1;
    /// Enable Receiver Line Status interrupt.
    pub const ELSI: u8 = 1 << 2;
    /// Enable Modem Status interrupt.
    pub const EDSSI: u8 = 1 << 3;
    /// Bits 4 to 7 are always 0.
    pub const MASK: u8 = 0x0F;
}

/// Interrupt Identification Register (section 8.4, Table IV).
mod iir {
    /// Bit 0: no interrupt pending.
    pub const NONE: u8 = 0x01;
    /// Priority 1: receiver line status (OE, PE, FE, BI).
    pub const LINE_STATUS: u8 = 0x06;
    /// Priority 2: received data available (trigger level reached).
    pub const RX_DATA: u8 = 0x04;
    /// Priority 2: character timeout (FIFO mode only).
    pub const RX_TIMEOUT: u8 = 0x0C;
    /// Priority 3: transmitter holding register empty.
    pub const THR_EMPTY: u8 = 0x02;
    /// Priority 4: modem status.
    pub const MODEM_STATUS: u8 = 0x00;
    /// Bits 6 and 7: set while the FIFOs are enabled (FCR bit 0).
    pub const FIFOS_ENABLED: u8 = 0xC0;
}

/// FIFO Control Register (section 8.3; write-only, shares offset 2 with IIR).
mod fcr {
    /// Enable both FIFOs; other bits are only programmed with this bit set.
    pub const ENABLE: u8 = 1 << 0;
    /// Clear the receive FIFO (self-clearing).
    pub const RX_RESET: u8 = 1 << 1;
    /// Clear the transmit FIFO (self-clearing; ours is always empty, so
    /// only the tests use it).
    #[allow(dead_code)]
    pub const TX_RESET: u8 = 1 << 2;
    /// DMA mode select: only changes the RXRDY/TXRDY pins; stored.
    pub const DMA_MODE: u8 = 1 << 3;
    /// Bits 6 and 7: receive FIFO trigger level (1, 4, 8, 14 bytes).
    pub const TRIGGER: u8 = 0xC0;
}

/// Line Control Register (section 8.2).
mod lcr {
    /// Divisor Latch Access Bit.
    pub const DLAB: u8 = 1 << 7;
}

/// Modem Control Register (section 8.7).
mod mcr {
    pub const DTR: u8 = 1 << 0;
    pub const RTS: u8 = 1 << 1;
    pub const OUT1: u8 = 1 << 2;
    /// On a PC, gates the UART's interrupt onto the IRQ line.
    pub const OUT2: u8 = 1 << 3;
    pub const LOOP: u8 = 1 << 4;
    /// Bits 5 to 7 are always 0.
    pub const MASK: u8 = 0x1F;
}

/// Line Status Register (section 8.6).
mod lsr {
    /// Data ready: the RBR or the receive FIFO holds a character.
    pub const DR: u8 = 1 << 0;
    /// Overrun error.
    pub const OE: u8 = 1 << 1;
    /// Parity error (never raised here).
    pub const PE: u8 = 1 << 2;
    /// Framing error (never raised here).
    pub const FE: u8 = 1 << 3;
    /// Break interrupt (never raised here).
    pub const BI: u8 = 1 << 4;
    /// Transmitter holding register empty.
    pub const THRE: u8 = 1 << 5;
    /// Transmitter empty (THR and shift register).
    pub const TEMT: u8 = 1 << 6;
    /// The error bits, cleared by reading LSR; any of them set is a
    /// receiver line status interrupt.
    pub const ERRORS: u8 = OE | PE | FE | BI;
}

/// Modem Status Register (section 8.8).
mod msr {
    pub const DCTS: u8 = 1 << 0;
    pub const DDSR: u8 = 1 << 1;
    /// Trailing edge of RI: RI went from 1 to 0.
    pub const TERI: u8 = 1 << 2;
    pub const DDCD: u8 = 1 << 3;
    pub const CTS: u8 = 1 << 4;
    pub const DSR: u8 = 1 << 5;
    pub const RI: u8 = 1 << 6;
    pub const DCD: u8 = 1 << 7;
    /// Bits 0 to 3, cleared by reading MSR; any of them set is a modem
    /// status interrupt.
    pub const DELTAS: u8 = 0x0F;
}

/// Modem inputs outside loopback: a connected null-modem.
const EXTERNAL_MODEM: u8 = msr::CTS | msr::DSR | msr::DCD;

/// A 16550A UART. See the [module documentation](self).
pub struct Serial {
    /// IER, bits 0 to 3.
    ier: u8,
    /// FCR as last programmed: ENABLE, DMA_MODE and TRIGGER bits.
    fcr: u8,
    lcr: u8,
    mcr: u8,
    /// LSR error bits (OE, PE, FE, BI) since LSR was last read; the other
    /// LSR bits are computed.
    lsr_errors: u8,
    /// MSR: lines in bits 4 to 7, deltas in bits 0 to 3.
    msr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    /// Receive FIFO (at most [`FIFO_SIZE`] bytes, 1 in 16450 mode).
    rx: VecDeque<u8>,
    /// What RBR reads when the receiver is empty: the last character read.
    rbr: u8,
    /// The THR-empty interrupt latch (section 8.4): set when THR becomes
    /// empty or ETBEI goes 0 to 1; cleared by writing THR or by reading IIR
    /// while it is the reported source.
    thre_latch: bool,
    irq: Option<Arc<dyn IrqLine>>,
    /// Level the IRQ line was last driven to.
    irq_level: bool,
    term: Box<dyn Terminal>,
    line: [u8; LINE_MAX],
    line_len: usize,
}

impl Serial {
    /// A UART after reset, connected to `term`, with no IRQ line attached.
    pub fn new(term: Box<dyn Terminal>) -> Self {
        let mut s = Self {
            ier: 0,
            fcr: 0,
            lcr: 0,
            mcr: 0,
            lsr_errors: 0,
            msr: 0,
            scr: 0,
            dll: RESET_DIVISOR as u8,
            dlm: (RESET_DIVISOR >> 8) as u8,
            rx: VecDeque::with_capacity(FIFO_SIZE),
            rbr: 0,
            thre_latch: false,
            irq: None,
            irq_level: false,
            term,
            line: [0; LINE_MAX],
            line_len: 0,
        };
        s.reset();
        s
    }

    /// Master reset (Table IV): IER, FCR, LCR, MCR, LSR and the MSR deltas
    /// cleared, FIFOs emptied, interrupt deasserted. The divisor latch, the
    /// scratch register and the output line buffer are left as they are.
    pub fn reset(&mut self) {
        self.ier = 0;
        self.fcr = 0;
        self.lcr = 0;
        self.mcr = 0;
        self.lsr_errors = 0;
        self.msr = EXTERNAL_MODEM;
        self.rx.clear();
        self.rbr = 0;
        self.thre_latch = false;
        self.update_irq();
    }

    /// Attach the interrupt line the UART drives, and drive it to the
    /// current level at once.
    pub fn set_irq_line(&mut self, line: Arc<dyn IrqLine>) {
        line.set_level(self.irq_level);
        self.irq = Some(line);
    }

    /// Queue received characters. Each goes into the receive FIFO (16 bytes
    /// in FIFO mode, a single holding register otherwise). On overflow LSR.OE
    /// is set and a character is lost: in FIFO mode the incoming one, in
    /// 16450 mode the one in the holding register (section 8.6, LSR bit 1).
    /// In loopback the receiver input is disconnected and `bytes` are
    /// dropped. Feed at most [`input_capacity`](Self::input_capacity) bytes
    /// to lose nothing.
    pub fn push_input(&mut self, bytes: &[u8]) {
        if self.loopback() {
            return;
        }
        for &b in bytes {
            self.receive(b);
        }
        self.update_irq();
    }

    /// How many characters [`push_input`](Self::push_input) can take now
    /// without an overrun (0 in loopback).
    pub fn input_capacity(&self) -> usize {
        if self.loopback() {
            0
        } else {
            self.rx_capacity() - self.rx.len()
        }
    }

    /// Pull what the terminal has typed into the receiver, as far as it has
    /// room, and raise the received-data interrupt if it is enabled. Called
    /// on every guest read of RBR, LSR and IIR, and by the host's poll.
    pub fn poll_input(&mut self) {
        if self.loopback() {
            return;
        }
        let before = self.rx.len();
        while self.rx.len() < self.rx_capacity() {
            match self.term.read() {
                Some(b) => self.rx.push_back(b),
                None => break,
            }
        }
        if self.rx.len() != before {
            self.update_irq();
        }
    }

    /// Whether the guest waits for input by interrupt: the received-data
    /// interrupt is enabled and can reach the IRQ line (OUT2, not loopback)
    /// and the receiver has room. The host polls the terminal
    /// ([`poll_input`](Self::poll_input)) only then, since nothing else
    /// would pull the characters in.
    pub fn listening(&self) -> bool {
        self.ier & ier::ERBFI != 0
            && self.mcr & mcr::OUT2 != 0
            && !self.loopback()
            && self.rx.len() < self.rx_capacity()
    }

    /// Hand the partial output line, if any, to the terminal.
    pub fn flush(&mut self) {
        if self.line_len > 0 {
            self.emit_line();
        }
    }

    /// Whether the UART is driving its IRQ line high: an enabled interrupt
    /// is pending and OUT2 lets it through.
    pub fn irq_asserted(&self) -> bool {
        self.irq_level
    }

    /// The divisor latch (DLM:DLL).
    pub fn divisor(&self) -> u16 {
        u16::from_le_bytes([self.dll, self.dlm])
    }

    fn dlab(&self) -> bool {
        self.lcr & lcr::DLAB != 0
    }

    fn loopback(&self) -> bool {
        self.mcr & mcr::LOOP != 0
    }

    fn fifo_enabled(&self) -> bool {
        self.fcr & fcr::ENABLE != 0
    }

    fn rx_capacity(&self) -> usize {
        if self.fifo_enabled() {
            FIFO_SIZE
        } else {
            1
        }
    }

    /// Receive FIFO trigger level (FCR bits 6 and 7, section 8.3).
    fn rx_trigger(&self) -> usize {
        match self.fcr >> 6 {
            0 => 1,
            1 => 4,
            2 => 8,
            _ => 14,
        }
    }

    /// A character arrives at the receiver (from outside or loopback).
    fn receive(&mut self, byte: u8) {
        if self.rx.len() < self.rx_capacity() {
            self.rx.push_back(byte);
        } else {
            self.lsr_errors |= lsr::OE;
            if !self.fifo_enabled() {
                // 16450 mode: the new character overwrites the RBR.
                self.rx.clear();
                self.rx.push_back(byte);
            }
        }
    }

    /// The highest-priority pending enabled interrupt, as its IIR bits 0-3
    /// (section 8.4, Table IV), or `None`.
    fn pending_interrupt(&self) -> Option<u8> {
        if self.ier & ier::ELSI != 0 && self.lsr_errors & lsr::ERRORS != 0 {
            Some(iir::LINE_STATUS)
        } else if self.ier & ier::ERBFI != 0 && !self.rx.is_empty() {
            if self.fifo_enabled() && self.rx.len() < self.rx_trigger() {
                Some(iir::RX_TIMEOUT)
            } else {
                Some(iir::RX_DATA)
            }
        } else if self.ier & ier::ETBEI != 0 && self.thre_latch {
            Some(iir::THR_EMPTY)
        } else if self.ier & ier::EDSSI != 0 && self.msr & msr::DELTAS != 0 {
            Some(iir::MODEM_STATUS)
        } else {
            None
        }
    }

    /// Drive the IRQ line: high iff an interrupt is pending and the OUT2 pin
    /// is active (MCR.OUT2 set, not in loopback).
    fn update_irq(&mut self) {
        let out2 = self.mcr & mcr::OUT2 != 0 && !self.loopback();
        let level = out2 && self.pending_interrupt().is_some();
        if level != self.irq_level {
            self.irq_level = level;
            if let Some(line) = &self.irq {
                line.set_level(level);
            }
        }
    }

    /// Recompute the MSR lines (after an MCR write) and latch their deltas.
    fn update_modem_lines(&mut self) {
        let lines = if self.loopback() {
            // Section 8.7: RTS to CTS, DTR to DSR, OUT1 to RI, OUT2 to DCD.
            [
                (mcr::RTS, msr::CTS),
                (mcr::DTR, msr::DSR),
                (mcr::OUT1, msr::RI),
                (mcr::OUT2, msr::DCD),
            ]
            .iter()
            .filter(|(m, _)| self.mcr & m != 0)
            .fold(0, |acc, (_, s)| acc | s)
        } else {
            EXTERNAL_MODEM
        };
        let old = self.msr & !msr::DELTAS;
        let changed = old ^ lines;
        let mut deltas = self.msr & msr::DELTAS;
        if changed & msr::CTS != 0 {
            deltas |= msr::DCTS;
        }
        if changed & msr::DSR != 0 {
            deltas |= msr::DDSR;
        }
        if old & msr::RI != 0 && lines & msr::RI == 0 {
            deltas |= msr::TERI;
        }
        if changed & msr::DCD != 0 {
            deltas |= msr::DDCD;
        }
        self.msr = lines | deltas;
    }

    /// A character written to THR.
    fn write_thr(&mut self, byte: u8) {
        self.thre_latch = false;
        self.update_irq();
        if self.loopback() {
            self.receive(byte);
        } else {
            self.transmit(byte);
        }
        // Sent at once: THR is empty again, a new THR-empty event.
        self.thre_latch = true;
        self.update_irq();
    }

    /// A character leaves the UART: into the line buffer, which goes to
    /// the terminal at the end of the line or when full.
    fn transmit(&mut self, byte: u8) {
        self.line[self.line_len] = byte;
        self.line_len += 1;
        if byte == b'\n' || self.line_len == LINE_MAX {
            self.emit_line();
        }
    }

    fn emit_line(&mut self) {
        self.term.write(&self.line[..self.line_len]);
        self.line_len = 0;
    }

    /// FCR write (section 8.3).
    fn write_fcr(&mut self, value: u8) {
        let enable = value & fcr::ENABLE != 0;
        if enable != self.fifo_enabled() {
            // Switching between FIFO and 16450 mode empties the FIFOs.
            self.rx.clear();
        }
        if enable {
            self.fcr = value & (fcr::ENABLE | fcr::DMA_MODE | fcr::TRIGGER);
            if value & fcr::RX_RESET != 0 {
                self.rx.clear();
            }
            // fcr::TX_RESET: the transmit FIFO is always empty.
        } else {
            // With bit 0 clear the other bits are not programmed.
            self.fcr &= !fcr::ENABLE;
        }
        self.update_irq();
    }

    fn read_register(&mut self, reg: u64) -> u8 {
        match reg {
            REG_DATA if self.dlab() => self.dll,
            REG_DATA => {
                // A guest reading input is interactive: what it wrote so
                // far (a prompt, an echo) goes out now.
                self.flush();
                self.poll_input();
                // RBR (section 8.1): the next received character.
                if let Some(b) = self.rx.pop_front() {
                    self.rbr = b;
                    self.update_irq();
                }
                self.rbr
            }
            REG_IER if self.dlab() => self.dlm,
            REG_IER => self.ier,
            REG_IIR_FCR => {
                self.poll_input();
                let pending = self.pending_interrupt();
                if pending == Some(iir::THR_EMPTY) {
                    // Reading IIR clears a THR-empty interrupt it reports.
                    self.thre_latch = false;
                    self.update_irq();
                }
                let fifo = if self.fifo_enabled() {
                    iir::FIFOS_ENABLED
                } else {
                    0
                };
                pending.unwrap_or(iir::NONE) | fifo
            }
            REG_LCR => self.lcr,
            REG_MCR => self.mcr,
            REG_LSR => {
                self.poll_input();
                let mut v = self.lsr_errors | lsr::THRE | lsr::TEMT;
                if !self.rx.is_empty() {
                    v |= lsr::DR;
                }
                // Reading LSR clears the error bits (and their interrupt).
                self.lsr_errors = 0;
                self.update_irq();
                v
            }
            REG_MSR => {
                let v = self.msr;
                // Reading MSR clears the deltas (and their interrupt).
                self.msr &= !msr::DELTAS;
                self.update_irq();
                v
            }
            REG_SCR => self.scr,
            _ => 0xFF,
        }
    }

    fn write_register(&mut self, reg: u64, value: u8) {
        match reg {
            REG_DATA if self.dlab() => self.dll = value,
            REG_DATA => self.write_thr(value),
            REG_IER if self.dlab() => self.dlm = value,
            REG_IER => {
                let old = self.ier;
                self.ier = value & ier::MASK;
                if old & ier::ETBEI == 0 && self.ier & ier::ETBEI != 0 {
                    // Enabling ETBEI with THR empty raises the interrupt.
                    self.thre_latch = true;
                }
                self.update_irq();
            }
            REG_IIR_FCR => self.write_fcr(value),
            REG_LCR => self.lcr = value,
            REG_MCR => {
                self.mcr = value & mcr::MASK;
                self.update_modem_lines();
                self.update_irq();
            }
            // LSR and MSR are read-only here (the datasheet reserves LSR
            // writes for factory test); the scratch register is plain storage.
            REG_LSR | REG_MSR => {}
            REG_SCR => self.scr = value,
            _ => {}
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (reg, byte) in (offset..).zip(data.iter_mut()) {
            *byte = self.read_register(reg);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (reg, &byte) in (offset..).zip(data.iter()) {
            self.write_register(reg, byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::RecordingIrq;
    use super::super::{DeviceHandle, PioBus};
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;
    use spin::Mutex;

    /// A terminal that keeps every piece of output it is handed and types
    /// what its `typed` queue holds.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<Vec<u8>>>>, Arc<Mutex<VecDeque<u8>>>);

    impl Lines {
        fn take(&self) -> Vec<Vec<u8>> {
            core::mem::take(&mut *self.0.lock())
        }
        fn type_in(&self, text: &[u8]) {
            self.1.lock().extend(text.iter().copied());
        }
        fn waiting(&self) -> usize {
            self.1.lock().len()
        }
    }

    impl Terminal for Lines {
        fn write(&mut self, bytes: &[u8]) {
            self.0.lock().push(bytes.to_vec());
        }
        fn read(&mut self) -> Option<u8> {
            self.1.lock().pop_front()
        }
    }

    fn uart() -> (Serial, Lines) {
        let lines = Lines::default();
        (Serial::new(Box::new(lines.clone())), lines)
    }

    /// A UART with an IRQ line attached.
    fn uart_irq() -> (Serial, Arc<RecordingIrq>) {
        let (mut s, _) = uart();
        let irq = Arc::new(RecordingIrq::default());
        s.set_irq_line(irq.clone());
        irq.take_history();
        (s, irq)
    }

    fn rd(s: &mut Serial, reg: u64) -> u8 {
        let mut b = [0];
        s.read(reg, &mut b);
        b[0]
    }

    fn wr(s: &mut Serial, reg: u64, value: u8) {
        s.write(reg, &[value]);
    }

    fn send(s: &mut Serial, text: &[u8]) {
        for &b in text {
            wr(s, REG_DATA, b);
        }
    }

    #[test]
    fn reset_values_match_the_datasheet() {
        let (mut s, _) = uart();
        // Table IV; MSR bits 4-7 are the (null-modem) inputs.
        let expect = [
            (REG_DATA, 0x00),
            (REG_IER, 0x00),
            (REG_IIR_FCR, 0x01),
            (REG_LCR, 0x00),
            (REG_MCR, 0x00),
            (REG_LSR, 0x60),
            (REG_MSR, 0xB0),
            (REG_SCR, 0x00),
        ];
        for (reg, value) in expect {
            assert_eq!(rd(&mut s, reg), value, "register {reg}");
        }
        wr(&mut s, REG_LCR, lcr::DLAB);
        assert_eq!(rd(&mut s, REG_DATA), 12, "DLL");
        assert_eq!(rd(&mut s, REG_IER), 0, "DLM");
        assert_eq!(s.divisor(), RESET_DIVISOR);
        assert!(!s.irq_asserted());
    }

    #[test]
    fn reset_clears_registers_but_not_divisor_or_scratch() {
        let (mut s, _) = uart();
        wr(&mut s, REG_SCR, 0x77);
        wr(&mut s, REG_LCR, 0x83);
        wr(&mut s, REG_DATA, 1);
        wr(&mut s, REG_LCR, 0x03);
        wr(&mut s, REG_IER, 0x0F);
        wr(&mut s, REG_MCR, 0x0B);
        wr(&mut s, REG_IIR_FCR, 0xC1);
        s.push_input(b"abc");
        s.reset();
        assert_eq!(s.divisor(), 1);
        assert_eq!(rd(&mut s, REG_SCR), 0x77);
        for (reg, value) in [(REG_IER, 0), (REG_IIR_FCR, 1), (REG_LCR, 0), (REG_MCR, 0)] {
            assert_eq!(rd(&mut s, reg), value, "register {reg}");
        }
        assert_eq!(rd(&mut s, REG_LSR), 0x60);
    }

    #[test]
    fn dlab_selects_the_divisor_latch() {
        let (mut s, lines) = uart();
        wr(&mut s, REG_IER, ier::ERBFI | ier::ELSI);
        s.push_input(b"z");
        wr(&mut s, REG_LCR, lcr::DLAB | 0x03);
        wr(&mut s, REG_DATA, 0x01); // DLL, not THR
        wr(&mut s, REG_IER, 0x02); // DLM, not IER
        assert_eq!(rd(&mut s, REG_DATA), 0x01);
        assert_eq!(rd(&mut s, REG_IER), 0x02);
        assert_eq!(s.divisor(), 0x0201);
        // Reading DLL did not consume the received character.
        assert_eq!(rd(&mut s, REG_LSR) & lsr::DR, lsr::DR);
        // LCR reads back, DLAB included.
        assert_eq!(rd(&mut s, REG_LCR), 0x83);
        wr(&mut s, REG_LCR, 0x03);
        assert_eq!(rd(&mut s, REG_IER), ier::ERBFI | ier::ELSI);
        assert_eq!(rd(&mut s, REG_DATA), b'z');
        s.flush();
        assert!(lines.take().is_empty(), "a DLL write went out as data");
        // DLAB only switches offsets 0 and 1.
        wr(&mut s, REG_LCR, lcr::DLAB);
        wr(&mut s, REG_SCR, 0x5A);
        assert_eq!(rd(&mut s, REG_IIR_FCR), 0x01);
        assert_eq!(rd(&mut s, REG_LSR), 0x60);
        wr(&mut s, REG_LCR, 0);
        assert_eq!(rd(&mut s, REG_SCR), 0x5A);
    }

    #[test]
    fn scratch_register_reads_back() {
        let (mut s, _) = uart();
        for v in [0x00, 0x55, 0xAA, 0xFF] {
            wr(&mut s, REG_SCR, v);
            assert_eq!(rd(&mut s, REG_SCR), v);
        }
    }

    #[test]
    fn ier_keeps_low_four_bits_and_mcr_low_five() {
        let (mut s, _) = uart();
        wr(&mut s, REG_IER, 0xFF);
        assert_eq!(rd(&mut s, REG_IER), 0x0F);
        wr(&mut s, REG_MCR, 0xEF);
        assert_eq!(rd(&mut s, REG_MCR), 0x0F);
    }

    #[test]
    fn lsr_data_ready_and_transmitter_empty() {
        let (mut s, _) = uart();
        assert_eq!(rd(&mut s, REG_LSR), lsr::THRE | lsr::TEMT);
        s.push_input(b"a");
        assert_eq!(rd(&mut s, REG_LSR), lsr::THRE | lsr::TEMT | lsr::DR);
        assert_eq!(rd(&mut s, REG_DATA), b'a');
        assert_eq!(rd(&mut s, REG_LSR), lsr::THRE | lsr::TEMT);
        // RBR keeps the last character once empty.
        assert_eq!(rd(&mut s, REG_DATA), b'a');
        send(&mut s, b"x");
        assert_eq!(rd(&mut s, REG_LSR), lsr::THRE | lsr::TEMT);
    }

    #[test]
    fn overrun_in_16450_mode_overwrites_the_holding_register() {
        let (mut s, _) = uart();
        assert_eq!(s.input_capacity(), 1);
        s.push_input(b"ab");
        assert_eq!(rd(&mut s, REG_LSR), 0x60 | lsr::OE | lsr::DR);
        // OE clears on read; DR stays.
        assert_eq!(rd(&mut s, REG_LSR), 0x60 | lsr::DR);
        assert_eq!(rd(&mut s, REG_DATA), b'b');
        assert_eq!(rd(&mut s, REG_LSR), 0x60);
    }

    #[test]
    fn overrun_in_fifo_mode_drops_the_new_character() {
        let (mut s, _) = uart();
        wr(&mut s, REG_IIR_FCR, fcr::ENABLE);
        assert_eq!(s.input_capacity(), 16);
        let input: Vec<u8> = (b'a'..=b'q').collect(); // 17 bytes
        s.push_input(&input);
        assert_eq!(s.input_capacity(), 0);
        assert_eq!(rd(&mut s, REG_LSR), 0x60 | lsr::OE | lsr::DR);
        let got: Vec<u8> = (0..16).map(|_| rd(&mut s, REG_DATA)).collect();
        assert_eq!(got, &input[..16]);
        assert_eq!(rd(&mut s, REG_LSR), 0x60);
    }

    #[test]
    fn line_status_interrupt_has_top_priority() {
        let (mut s, _) = uart();
        wr(&mut s, REG_IER, ier::ELSI | ier::ERBFI | ier::ETBEI);
        s.push_input(b"ab");
        assert_eq!(rd(&mut s, REG_IIR_FCR), iir::LINE_STATUS);
        assert_eq!(rd(&mut s, REG_LSR) & lsr::OE, lsr::OE);
        assert_eq!(rd(&mut s, REG_IIR_FCR), iir::RX_DATA);
    }

    #[test]
    fn thre_interrupt_raised_cleared_and_rearmed() {
        let (mut s, irq) = uart_irq();
        wr(&mut s, REG_MCR, mcr::OUT2);
        assert_eq!(rd(&mut s, REG_IIR_FCR), iir::NONE);
        // ETBEI 0 -> 1 with THR empty: pending.
        wr(&mut s, REG_IER, ier::ETBEI);
        assert!(irq.level());
        assert_eq!(rd(&mut s, REG_IIR_FCR), iir::THR_EMPTY);
        // That IIR read cleared it.
        assert!(!irq.level());
        assert_eq!(rd(&mut s, REG_IIR_FCR), iir::NONE);
        // Rewriting IER with ETBEI already set does not re-arm it...
        wr(&mut s, REG_IER, ier::ETBEI | ier::EDSSI);
        assert_eq!(rd(&mut s, REG_IIR_FCR), iir::NONE);
        // ...toggling it 0 -> 1 does.
        wr(&mut s, REG_IER, 0);
        wr(&mut s, REG_IER, ier::ETBEI);
        assert_eq!(irq.take_history(), [true, false, true]);
        assert_eq!(rd(&mut s, REG_IIR_FCR), iir::THR_EMPTY);
        assert_eq!(irq.take_history(), [false]);
        // Writing THR: cleared, then at once THR is empty again.
        send(&mut s, b"x");
        assert_eq!(irq.take_history(), [true]);
        wr(&mut s, REG_IER, 0);
        wr(&mut s, REG_IER, ier::ETBEI);
        irq.take_history();
        send(&mut s, b"y");
        // While pending, a THR write gives a falling then a rising edge.
        assert_eq!(irq.take_history(), [false, true]);
        assert_eq!(rd(&mut s, REG_IIR_FCR), iir::THR_EMPTY);
        assert_eq!(rd(&mut s, REG_IIR_FCR), iir::NONE);
    }

    #[test]
    fn rx_data_interrupt_takes_priority_over_thre() {
        let (mut s, _) = uart();
        wr(&mut s, REG_IER, ier::ERBFI | ier::ETBEI);
        assert_eq!(rd(&mut s, REG_IIR_FCR) & 0x0F, iir::THR_EMPTY);
        wr(&mut s, REG_IER, 0);
        wr(&mut s, REG_IER, ier::ERBFI | ier::ETBEI);
        s.push_input(b"k");
        // Reporting RX data does not clear the THR-empty interrupt.
        assert_eq!(rd(&mut s, REG_IIR_FCR), iir::RX_DATA);
        assert_eq!(rd(&mut s, REG_IIR_FCR), iir::RX_DATA);
        assert_eq!(rd(&mut s, REG_DATA), b'k');
        assert_eq!(rd(&mut s, REG_IIR_FCR), iir::THR_EMPTY);
        assert_eq!(rd(&mut s, REG_IIR_FCR), iir::NONE);
        // Without ERBFI, input raises nothing.
        wr(&mut s, REG_IER, 0);
        s.push_input(b"k");
        assert_eq!(rd(&mut s, REG_IIR_FCR), iir::NONE);
    }

    #[test]
    fn fifo_trigger_level_and_timeout() {
        let (mut s, _) = uart();
        wr(&mut s, REG_IER, ier::ERBFI);
        wr(&mut s, REG_IIR_FCR, fcr::ENABLE | fcr::TRIGGER); // 14 bytes
        assert_eq!(rd(&mut s, REG_IIR_FCR), 0xC1);
        s.push_input(b"abc");
        assert_eq!(rd(&mut s, REG_IIR_FCR), 0xC0 | iir::RX_TIMEOUT);
        s.push_input(b"defghijklmn"); // 14 now
        assert_eq!(rd(&mut s, REG_IIR_FCR), 0xC0 | iir::RX_DATA);
        assert_eq!(rd(&mut s, REG_DATA), b'a');
        assert_eq!(rd(&mut s, REG_IIR_FCR), 0xC0 | iir::RX_TIMEOUT);
        // Trigger level 4.
        wr(&mut s, REG_IIR_FCR, fcr::ENABLE | 0x40);
        assert_eq!(rd(&mut s, REG_IIR_FCR), 0xC0 | iir::RX_DATA);
    }

    #[test]
    fn iir_fifo_bits_follow_fcr_enable() {
        let (mut s, _) = uart();
        wr(&mut s, REG_IIR_FCR, fcr::ENABLE);
        assert_eq!(rd(&mut s, REG_IIR_FCR), 0xC1);
        // Bit 0 clear: FIFOs off, other bits not programmed.
        wr(&mut s, REG_IIR_FCR, fcr::TRIGGER);
        assert_eq!(rd(&mut s, REG_IIR_FCR), 0x01);
    }

    #[test]
    fn fcr_clears_the_receive_fifo() {
        let (mut s, _) = uart();
        wr(&mut s, REG_IER, ier::ERBFI);
        wr(&mut s, REG_IIR_FCR, fcr::ENABLE);
        s.push_input(b"hello");
        assert_eq!(rd(&mut s, REG_LSR) & lsr::DR, lsr::DR);
        // TX reset alone leaves the receive FIFO.
        wr(&mut s, REG_IIR_FCR, fcr::ENABLE | fcr::TX_RESET);
        assert_eq!(rd(&mut s, REG_LSR) & lsr::DR, lsr::DR);
        wr(&mut s, REG_IIR_FCR, fcr::ENABLE | fcr::RX_RESET);
        assert_eq!(rd(&mut s, REG_LSR), 0x60);
        assert_eq!(rd(&mut s, REG_IIR_FCR), 0xC1);
        // Leaving FIFO mode empties the FIFO too.
        s.push_input(b"again");
        wr(&mut s, REG_IIR_FCR, 0);
        assert_eq!(rd(&mut s, REG_LSR), 0x60);
        assert_eq!(rd(&mut s, REG_IIR_FCR), 0x01);
    }

    #[test]
    fn loopback_sends_thr_to_rbr_and_mcr_to_msr() {
        let (mut s, lines) = uart();
        // Linux's 8250 probe: loopback with RTS and OUT2 must read CTS and DCD.
        wr(&mut s, REG_MCR, mcr::LOOP | mcr::RTS | mcr::OUT2);
        assert_eq!(rd(&mut s, REG_MSR) & 0xF0, msr::CTS | msr::DCD);
        send(&mut s, b"Q");
        assert_eq!(rd(&mut s, REG_LSR), 0x60 | lsr::DR);
        assert_eq!(rd(&mut s, REG_DATA), b'Q');
        // External input is disconnected in loopback.
        assert_eq!(s.input_capacity(), 0);
        s.push_input(b"lost");
        assert_eq!(rd(&mut s, REG_LSR), 0x60);
        // Every output follows to its input.
        wr(&mut s, REG_MCR, mcr::LOOP | mcr::DTR | mcr::OUT1);
        assert_eq!(rd(&mut s, REG_MSR) & 0xF0, msr::DSR | msr::RI);
        s.flush();
        assert!(
            lines.take().is_empty(),
            "loopback output reached the terminal"
        );
        // Out of loopback, output goes out again.
        wr(&mut s, REG_MCR, 0);
        assert_eq!(
            rd(&mut s, REG_MSR),
            0xB0 | msr::DCTS | msr::TERI | msr::DDCD
        );
        send(&mut s, b"ok\n");
        assert_eq!(lines.take(), [b"ok\n".to_vec()]);
    }

    #[test]
    fn msr_deltas_clear_on_read_and_interrupt() {
        let (mut s, _) = uart();
        wr(&mut s, REG_IER, ier::EDSSI);
        wr(
            &mut s,
            REG_MCR,
            mcr::LOOP | mcr::RTS | mcr::DTR | mcr::OUT1 | mcr::OUT2,
        );
        // CTS, DSR, DCD unchanged (1 -> 1); RI 0 -> 1 is no trailing edge.
        assert_eq!(rd(&mut s, REG_IIR_FCR), iir::NONE);
        assert_eq!(rd(&mut s, REG_MSR), 0xF0);
        wr(&mut s, REG_MCR, mcr::LOOP);
        assert_eq!(rd(&mut s, REG_IIR_FCR), iir::MODEM_STATUS);
        assert_eq!(rd(&mut s, REG_MSR), 0x0F);
        assert_eq!(rd(&mut s, REG_MSR), 0x00);
        assert_eq!(rd(&mut s, REG_IIR_FCR), iir::NONE);
    }

    #[test]
    fn out2_gates_the_irq_line() {
        let (mut s, irq) = uart_irq();
        wr(&mut s, REG_IER, ier::ETBEI);
        // Pending, but OUT2 is clear.
        assert!(!irq.level());
        assert!(irq.take_history().is_empty());
        wr(&mut s, REG_MCR, mcr::OUT2);
        assert!(irq.level());
        assert!(s.irq_asserted());
        // Loopback holds OUT2 inactive.
        wr(&mut s, REG_MCR, mcr::OUT2 | mcr::LOOP);
        assert!(!irq.level());
        wr(&mut s, REG_MCR, mcr::OUT2 | mcr::DTR | mcr::RTS);
        assert!(irq.level());
        wr(&mut s, REG_MCR, mcr::DTR | mcr::RTS);
        assert!(!irq.level());
        assert_eq!(irq.take_history(), [true, false, true, false]);
        // Received data with OUT2 set.
        wr(&mut s, REG_IER, ier::ERBFI);
        wr(&mut s, REG_MCR, mcr::OUT2);
        assert!(!irq.level());
        s.push_input(b"1");
        assert!(irq.level());
        rd(&mut s, REG_DATA);
        assert!(!irq.level());
    }

    #[test]
    fn attaching_the_line_drives_the_current_level() {
        let (mut s, _) = uart();
        wr(&mut s, REG_MCR, mcr::OUT2);
        wr(&mut s, REG_IER, ier::ETBEI);
        let irq = Arc::new(RecordingIrq::default());
        s.set_irq_line(irq.clone());
        assert_eq!(irq.take_history(), [true]);
    }

    #[test]
    fn output_lines_go_to_the_terminal_as_written() {
        let (mut s, lines) = uart();
        send(&mut s, b"hello\r\nworld\n\nab");
        assert_eq!(
            lines.take(),
            [b"hello\r\n".to_vec(), b"world\n".to_vec(), b"\n".to_vec()]
        );
        s.flush();
        s.flush();
        assert_eq!(lines.take(), [b"ab".to_vec()]);
    }

    #[test]
    fn a_guest_reading_input_flushes_its_prompt() {
        let (mut s, lines) = uart();
        send(&mut s, b"# ");
        assert!(lines.take().is_empty());
        rd(&mut s, REG_LSR);
        assert!(
            lines.take().is_empty(),
            "LSR reads come with every output byte"
        );
        rd(&mut s, REG_DATA);
        assert_eq!(lines.take(), [b"# ".to_vec()]);
    }

    #[test]
    fn typed_input_is_pulled_only_while_the_receiver_has_room() {
        let (mut s, lines) = uart();
        lines.type_in(b"ab");
        // 16450 mode: one holding register; the rest waits at the terminal.
        assert_eq!(rd(&mut s, REG_LSR), 0x60 | lsr::DR);
        assert_eq!(lines.waiting(), 1);
        assert_eq!(rd(&mut s, REG_LSR), 0x60 | lsr::DR, "no overrun");
        assert_eq!(rd(&mut s, REG_DATA), b'a');
        assert_eq!(rd(&mut s, REG_DATA), b'b');
        assert_eq!(rd(&mut s, REG_LSR), 0x60);
        // FIFO mode: up to 16 at a time, none lost.
        wr(&mut s, REG_IIR_FCR, fcr::ENABLE);
        let text: Vec<u8> = (0..40u8).map(|i| b'0' + i % 10).collect();
        lines.type_in(&text);
        let mut got = Vec::new();
        while rd(&mut s, REG_LSR) & lsr::DR != 0 {
            assert_eq!(rd(&mut s, REG_LSR) & lsr::OE, 0);
            got.push(rd(&mut s, REG_DATA));
        }
        assert_eq!(got, text);
        // In loopback the terminal is disconnected and keeps its input.
        wr(&mut s, REG_MCR, mcr::LOOP);
        lines.type_in(b"z");
        s.poll_input();
        assert_eq!(lines.waiting(), 1);
    }

    #[test]
    fn the_host_polls_only_a_guest_that_listens_and_the_poll_raises_the_irq() {
        let (mut s, lines) = uart();
        let irq = Arc::new(RecordingIrq::default());
        s.set_irq_line(irq.clone());
        assert!(!s.listening());
        wr(&mut s, REG_IER, ier::ERBFI);
        assert!(!s.listening(), "OUT2 gates the interrupt");
        wr(&mut s, REG_MCR, mcr::OUT2);
        assert!(s.listening());
        lines.type_in(b"x");
        s.poll_input();
        assert!(irq.level(), "received data available");
        assert!(!s.listening(), "16450 mode: the holding register is full");
        assert_eq!(rd(&mut s, REG_DATA), b'x');
        assert!(!irq.level());
        assert!(s.listening());
    }

    #[test]
    fn long_lines_are_split() {
        let (mut s, lines) = uart();
        send(&mut s, &[b'x'; LINE_MAX + 10]);
        send(&mut s, b"\n");
        let mut tail = vec![b'x'; 10];
        tail.push(b'\n');
        assert_eq!(lines.take(), [vec![b'x'; LINE_MAX], tail]);
    }

    #[test]
    fn linux_8250_probe_sees_a_16550a() {
        // The checks of autoconfig() in drivers/tty/serial/8250/8250_port.c.
        let (mut s, _) = uart();
        wr(&mut s, REG_IER, 0);
        assert_eq!(rd(&mut s, REG_IER) & 0x0F, 0);
        wr(&mut s, REG_IER, 0x0F);
        assert_eq!(rd(&mut s, REG_IER) & 0x0F, 0x0F);
        wr(&mut s, REG_IER, 0);
        wr(&mut s, REG_MCR, mcr::LOOP | 0x0A);
        assert_eq!(rd(&mut s, REG_MSR) & 0xF0, 0x90);
        wr(&mut s, REG_MCR, 0);
        wr(&mut s, REG_IIR_FCR, fcr::ENABLE);
        assert_eq!(rd(&mut s, REG_IIR_FCR) >> 6, 3);
        // No 64-byte FIFO (16750): IIR bit 5 stays 0.
        wr(&mut s, REG_LCR, lcr::DLAB);
        wr(&mut s, REG_IIR_FCR, fcr::ENABLE | 0x20);
        assert_eq!(rd(&mut s, REG_IIR_FCR) & 0x20, 0);
    }

    #[test]
    fn on_the_pio_bus() {
        let lines = Lines::default();
        let serial = Arc::new(Mutex::new(Serial::new(Box::new(lines.clone()))));
        let handle: DeviceHandle = serial.clone();
        let mut bus = PioBus::new();
        bus.insert(0x3F8, PORT_COUNT, handle).unwrap();
        // A 2-byte write with DLAB set: DLL then DLM.
        assert!(bus.write(0x3FB, &[0x80]));
        assert!(bus.write(0x3F8, &[0x03, 0x00]));
        assert_eq!(serial.lock().divisor(), 3);
        assert!(bus.write(0x3FB, &[0x03]));
        for &b in b"hi\n" {
            assert!(bus.write(0x3F8, &[b]));
        }
        assert_eq!(lines.take(), [b"hi\n".to_vec()]);
        let mut lsr = [0];
        assert!(bus.read(0x3FD, &mut lsr));
        assert_eq!(lsr, [0x60]);
        // COM1 ends at 0x3FF.
        assert!(!bus.read(0x400, &mut lsr));
        serial.lock().push_input(b"r");
        assert!(bus.read(0x3F8, &mut lsr));
        assert_eq!(lsr, [b'r']);
    }
}
