//! The 8254 programmable interval timer (Intel 8254 datasheet, 231164):
//! three 16-bit down counters clocked at 1.193182 MHz, at ports 0x40-0x43.
//! Counter 0's OUT drives IRQ 0; counter 2's GATE and OUT are bits 0 and 5
//! of port 0x61 (the PC's "port B", [`PortB`]); counter 1 (DRAM refresh)
//! counts but drives nothing.
//!
//! Counting is computed from time, not ticked: a counter remembers the
//! count it was loaded with and when, and every read derives the current
//! count and OUT from the clock. All six modes are modelled; the ones PCs
//! use are 0 (interrupt on terminal count), 2 (rate generator) and 3
//! (square wave). Control words, the counter-latch and read-back commands,
//! and the LSB/MSB access sequences follow the datasheet. BCD counting is
//! accepted and counts in binary (no PC software uses it).

use super::{BusDevice, Clock};
use alloc::sync::Arc;

/// The input clock: 1.193182 MHz (14.31818 MHz / 12).
pub const HZ: u64 = 1_193_182;
pub const BASE: u16 = 0x40;
pub const PORT_COUNT: u64 = 4;
/// Port B of the PC (8255 PPI, kept on later chipsets).
pub const PORT_B: u16 = 0x61;

/// Input ticks at `ns` nanoseconds.
fn ticks(ns: u64) -> u64 {
    (u128::from(ns) * u128::from(HZ) / 1_000_000_000) as u64
}

/// Nanoseconds at the start of input tick `t`.
fn ns_of(t: u64) -> u64 {
    (u128::from(t) * 1_000_000_000).div_ceil(u128::from(HZ)) as u64
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Lsb,
    Msb,
    Word,
}

#[derive(Clone, Copy, Debug)]
struct Counter {
    mode: u8,
    access: Access,
    bcd: bool,
    /// The count register (what software wrote; 0 means 65536).
    reload: u32,
    /// Input tick at which the current count started (None: not started:
    /// no count written yet, or waiting for a gate trigger in modes 1/5).
    start: Option<u64>,
    gate: bool,
    /// A count is loaded but counting has not used it yet ("null count").
    null_count: bool,
    /// Writing a word: the LSB arrived, the MSB is next.
    write_lsb: Option<u8>,
    /// Reading a word: the MSB is next.
    read_msb_next: bool,
    latched: Option<(u16, bool)>,
    status: Option<u8>,
    /// Tick at which gate last went low (modes 0/4 suspend counting).
    paused_at: Option<u64>,
    /// OUT0 rising edges already reported (for IRQ 0).
    edges_seen: u64,
}

impl Counter {
    const fn new() -> Self {
        Counter {
            mode: 0,
            access: Access::Word,
            bcd: false,
            reload: 0,
            start: None,
            gate: true,
            null_count: true,
            write_lsb: None,
            read_msb_next: false,
            latched: None,
            status: None,
            paused_at: None,
            edges_seen: 0,
        }
    }

    fn period(&self) -> u64 {
        if self.reload == 0 {
            0x10000
        } else {
            u64::from(self.reload)
        }
    }

    /// Ticks counted since the count was loaded, at tick `now`.
    fn elapsed(&self, now: u64) -> Option<u64> {
        let start = self.start?;
        let until = self.paused_at.unwrap_or(now);
        Some(until.saturating_sub(start))
    }

    /// (count, OUT) at tick `now` (datasheet "Operating modes").
    fn state(&self, now: u64) -> (u16, bool) {
        let n = self.period();
        let Some(d) = self.elapsed(now) else {
            // Mode 0 OUT is low after the control word; the others high.
            return (self.reload as u16, self.mode != 0);
        };
        match self.mode {
            // Interrupt on terminal count / hardware one-shot: OUT low until
            // the count reaches 0, then high; the counter wraps on.
            0 | 1 => ((n.wrapping_sub(d)) as u16, d >= n),
            // Rate generator: OUT low for the one tick at count 1.
            2 => {
                let phase = d % n;
                ((n - phase) as u16, n == 1 || phase != n - 1)
            }
            // Square wave: high for the first half (rounded up), low for the
            // second; the count decrements by two.
            3 => {
                let phase = d % n;
                let count = n - ((2 * d) % n);
                (count as u16, phase < n.div_ceil(2))
            }
            // Strobes: OUT low for the one tick at terminal count.
            _ => ((n.wrapping_sub(d)) as u16, d != n),
        }
    }

    /// Rising edges of OUT in ticks [0, elapsed) since the count started.
    fn rising_edges(&self, now: u64) -> u64 {
        let n = self.period();
        let Some(d) = self.elapsed(now) else {
            return 0;
        };
        match self.mode {
            0 | 1 => u64::from(d >= n),
            // One low tick ending each period.
            2 => d / n,
            3 => d / n,
            _ => u64::from(d > n),
        }
    }

    /// The tick of the next rising edge of OUT after tick `now`, if any.
    fn next_edge(&self, now: u64) -> Option<u64> {
        let start = self.start?;
        if self.paused_at.is_some() {
            return None;
        }
        let n = self.period();
        let d = now.saturating_sub(start);
        match self.mode {
            0 | 1 if d < n => Some(start + n),
            2 | 3 => Some(start + (d / n + 1) * n),
            4 | 5 if d <= n => Some(start + n + 1),
            _ => None,
        }
    }

    fn load(&mut self, value: u32, now: u64) {
        self.reload = value;
        self.null_count = false;
        self.edges_seen = 0;
        match self.mode {
            // Hardware-triggered modes wait for a gate rising edge.
            1 | 5 => {}
            // Modes 2 and 3 keep counting the old period until it ends,
            // then reload; starting now is within one period of that and
            // is what software relies on (a reprogrammed rate applies).
            _ => {
                self.start = Some(now);
                self.paused_at = if self.gate { None } else { Some(now) };
            }
        }
    }

    fn set_gate(&mut self, high: bool, now: u64) {
        if high == self.gate {
            return;
        }
        self.gate = high;
        match (self.mode, high) {
            // Modes 0 and 4: gate low suspends counting.
            (0 | 4, false) => self.paused_at = Some(now),
            (0 | 4, true) => {
                if let (Some(start), Some(p)) = (self.start, self.paused_at) {
                    self.start = Some(start + (now - p));
                }
                self.paused_at = None;
            }
            // Modes 1, 2, 3, 5: a rising edge (re)starts the count.
            (1 | 2 | 3 | 5, true) if !self.null_count => {
                self.start = Some(now);
                self.paused_at = None;
                self.edges_seen = 0;
            }
            // Modes 2 and 3: gate low stops counting, OUT high.
            (2 | 3, false) => self.start = None,
            _ => {}
        }
    }

    fn control_bits(&self) -> u8 {
        let rw = match self.access {
            Access::Lsb => 1,
            Access::Msb => 2,
            Access::Word => 3,
        };
        (rw << 4) | (self.mode << 1) | u8::from(self.bcd)
    }
}

/// The three counters and the clock.
pub struct Pit {
    counters: [Counter; 3],
    clock: Arc<dyn Clock>,
    /// Port B bits 3:1 (speaker data enable, parity and channel check
    /// disables), kept for read-back.
    port_b: u8,
}

impl Pit {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Pit {
            counters: [Counter::new(); 3],
            clock,
            port_b: 0,
        }
    }

    fn now(&self) -> u64 {
        ticks(self.clock.now_ns())
    }

    fn control_word(&mut self, value: u8, now: u64) {
        let select = value >> 6;
        if select == 3 {
            // Read-back (datasheet "Read-Back Command"): bit 5 = 0 latches
            // the counts, bit 4 = 0 latches the status, bits 3:1 select.
            for i in 0..3 {
                if value & (2 << i) == 0 {
                    continue;
                }
                let (count, out) = self.counters[i].state(now);
                let c = &mut self.counters[i];
                if value & 0x20 == 0 && c.latched.is_none() {
                    c.latched = Some((count, false));
                }
                if value & 0x10 == 0 && c.status.is_none() {
                    c.status = Some(
                        (u8::from(out) << 7) | (u8::from(c.null_count) << 6) | c.control_bits(),
                    );
                }
            }
            return;
        }
        let i = usize::from(select);
        let rw = (value >> 4) & 3;
        if rw == 0 {
            // Counter latch: the first latch holds until read.
            let (count, _) = self.counters[i].state(now);
            let c = &mut self.counters[i];
            if c.latched.is_none() {
                c.latched = Some((count, false));
            }
            return;
        }
        let c = &mut self.counters[i];
        let mode = (value >> 1) & 7;
        c.mode = if mode >= 6 { mode - 4 } else { mode };
        c.access = match rw {
            1 => Access::Lsb,
            2 => Access::Msb,
            _ => Access::Word,
        };
        c.bcd = value & 1 != 0;
        // A control word stops the counter until a count is written;
        // OUT goes to its initial level.
        c.start = None;
        c.paused_at = None;
        c.null_count = true;
        c.write_lsb = None;
        c.read_msb_next = false;
        c.latched = None;
        c.status = None;
        c.edges_seen = 0;
    }

    fn write_counter(&mut self, i: usize, value: u8, now: u64) {
        let c = &mut self.counters[i];
        match c.access {
            Access::Lsb => c.load(u32::from(value), now),
            Access::Msb => c.load(u32::from(value) << 8, now),
            Access::Word => match c.write_lsb.take() {
                None => c.write_lsb = Some(value),
                Some(lsb) => c.load(u32::from(lsb) | (u32::from(value) << 8), now),
            },
        }
    }

    fn read_counter(&mut self, i: usize, now: u64) -> u8 {
        let (live, _) = self.counters[i].state(now);
        let c = &mut self.counters[i];
        if let Some(status) = c.status.take() {
            return status;
        }
        let (value, from_latch) = match c.latched {
            Some((v, _)) => (v, true),
            None => (live, false),
        };
        let byte = match c.access {
            Access::Lsb => value as u8,
            Access::Msb => (value >> 8) as u8,
            Access::Word => {
                let msb = c.read_msb_next;
                c.read_msb_next = !msb;
                if msb {
                    (value >> 8) as u8
                } else {
                    // A latched word is released after both bytes.
                    if from_latch {
                        c.latched = Some((value, true));
                    }
                    return value as u8;
                }
            }
        };
        if from_latch {
            c.latched = None;
        }
        byte
    }

    /// Counter 0's OUT rose this many times since the last call: the IRQ 0
    /// edges to deliver.
    pub fn take_irq0_edges(&mut self) -> u64 {
        // Not counting: no edges, and no clock read (polled before every
        // VM entry).
        if self.counters[0].start.is_none() {
            return 0;
        }
        let now = self.now();
        let c = &mut self.counters[0];
        let edges = c.rising_edges(now);
        let new = edges.saturating_sub(c.edges_seen);
        c.edges_seen = edges;
        new
    }

    /// When counter 0's OUT rises next (clock nanoseconds), for the timer
    /// that will deliver IRQ 0.
    pub fn next_irq0_ns(&self) -> Option<u64> {
        self.counters[0].start?;
        self.counters[0].next_edge(self.now()).map(ns_of)
    }

    /// Port B read: bit 0 gate 2, bits 3:1 as written (speaker, parity
    /// and channel check disables), bit 4 refresh request (toggles every
    /// 15.09 us, counter 1's usual rate), bit 5 OUT2; no NMI sources
    /// (bits 7:6 zero).
    pub fn port_b_read(&self) -> u8 {
        let now = self.now();
        let (_, out2) = self.counters[2].state(now);
        let refresh = (now / 18) & 1 == 1;
        u8::from(self.counters[2].gate)
            | self.port_b
            | (u8::from(refresh) << 4)
            | (u8::from(out2) << 5)
    }

    /// Port B write: bit 0 is counter 2's gate; bits 3:1 are kept.
    pub fn port_b_write(&mut self, value: u8) {
        let now = self.now();
        self.counters[2].set_gate(value & 1 != 0, now);
        self.port_b = value & 0x0e;
    }
}

impl BusDevice for Pit {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let now = self.now();
        for d in data.iter_mut() {
            *d = match offset {
                0..=2 => self.read_counter(offset as usize, now),
                // The control register cannot be read (8254: no-op).
                _ => 0xff,
            };
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        let now = self.now();
        for &b in data {
            match offset {
                0..=2 => self.write_counter(offset as usize, b, now),
                _ => self.control_word(b, now),
            }
        }
    }
}

/// Port 0x61 on the port bus, sharing the PIT.
pub struct PortB(pub Arc<spin::Mutex<Pit>>);

impl BusDevice for PortB {
    fn read(&mut self, _: u64, data: &mut [u8]) {
        let v = self.0.lock().port_b_read();
        data.iter_mut().for_each(|d| *d = v);
    }
    fn write(&mut self, _: u64, data: &[u8]) {
        if let Some(&v) = data.first() {
            self.0.lock().port_b_write(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::test_support::ManualClock;

    /// A PIT whose clock the test moves, in input ticks.
    fn pit() -> (Pit, Arc<ManualClock>) {
        let t = Arc::new(ManualClock::default());
        (Pit::new(t.clone()), t)
    }

    fn at(t: &ManualClock, tick: u64) {
        t.set(ns_of(tick));
    }

    fn read_word(p: &mut Pit, i: u64) -> u16 {
        let mut b = [0u8; 1];
        p.read(i, &mut b);
        let lo = b[0];
        p.read(i, &mut b);
        u16::from_le_bytes([lo, b[0]])
    }

    #[test]
    fn mode_2_rate_generator_counts_and_gives_one_edge_per_period() {
        let (mut p, t) = pit();
        p.write(3, &[0x34]); // counter 0, LSB/MSB, mode 2
        p.write(0, &[0x9c, 0x2e]); // 11932: 100 Hz
        assert_eq!(read_word(&mut p, 0), 11932);
        at(&t, 1000);
        assert_eq!(read_word(&mut p, 0), 11932 - 1000);
        assert_eq!(p.take_irq0_edges(), 0);
        at(&t, 11932 * 3 + 5);
        assert_eq!(p.take_irq0_edges(), 3);
        assert_eq!(p.take_irq0_edges(), 0, "each edge once");
        let next = p.next_irq0_ns().unwrap();
        assert_eq!(ticks(next), 11932 * 4);
    }

    #[test]
    fn mode_0_interrupts_once_on_terminal_count() {
        let (mut p, t) = pit();
        p.write(3, &[0x30]); // counter 0, LSB/MSB, mode 0
        p.write(0, &[100, 0]);
        at(&t, 99);
        assert_eq!(p.take_irq0_edges(), 0);
        assert_eq!(ticks(p.next_irq0_ns().unwrap()), 100);
        at(&t, 250);
        assert_eq!(p.take_irq0_edges(), 1);
        at(&t, 100_000);
        assert_eq!(p.take_irq0_edges(), 0, "one-shot");
        assert_eq!(p.next_irq0_ns(), None);
        // The counter wraps on after terminal count.
        assert_eq!(read_word(&mut p, 0), (100u64.wrapping_sub(100_000)) as u16);
    }

    #[test]
    fn latch_holds_the_count_until_both_bytes_are_read() {
        let (mut p, t) = pit();
        p.write(3, &[0x34]);
        p.write(0, &[0, 0x10]); // 4096
        at(&t, 10);
        p.write(3, &[0x00]); // latch counter 0
        at(&t, 500);
        assert_eq!(read_word(&mut p, 0), 4096 - 10, "latched value");
        assert_eq!(read_word(&mut p, 0), 4096 - 500, "live again");
    }

    #[test]
    fn read_back_status_and_access_modes() {
        let (mut p, _t) = pit();
        p.write(3, &[0x96]); // counter 2, LSB only, mode 3
        p.write(2, &[0x40]);
        p.write(3, &[0xe8]); // read-back: status only, counter 2
        let mut b = [0];
        p.read(2, &mut b);
        // OUT high (mode 3 starts high), count loaded, RW=1, mode 3.
        assert_eq!(b[0], 0x80 | (1 << 4) | (3 << 1));
        p.read(2, &mut b);
        assert_eq!(b[0], 0x40, "then the LSB-only count");
        // Mode 6 aliases mode 2, 7 aliases 3.
        p.write(3, &[0x1c]); // counter 0, LSB, mode 6
        p.write(3, &[0xe2]);
        p.read(0, &mut b);
        assert_eq!((b[0] >> 1) & 7, 2);
    }

    #[test]
    fn mode_3_square_wave_and_the_channel_2_gate_on_port_b() {
        let (p, t) = pit();
        let p = Arc::new(spin::Mutex::new(p));
        let mut port_b = PortB(p.clone());
        p.lock().write(3, &[0xb6]); // counter 2, LSB/MSB, mode 3
        p.lock().write(2, &[100, 0]);
        let out2 = |pb: &mut PortB| {
            let mut b = [0];
            pb.read(0, &mut b);
            b[0] & 0x20 != 0
        };
        port_b.write(0, &[0]); // gate low: stopped, OUT high
        at(&t, 75);
        assert!(out2(&mut port_b));
        port_b.write(0, &[1]); // rising gate: starts at tick 75
        at(&t, 75 + 49);
        assert!(out2(&mut port_b), "first half high");
        at(&t, 75 + 50);
        assert!(!out2(&mut port_b), "second half low");
        at(&t, 75 + 100);
        assert!(out2(&mut port_b));
        port_b.write(0, &[0x0d]);
        let mut b = [0];
        port_b.read(0, &mut b);
        assert_eq!(b[0] & 0x0f, 0x0d, "gate and bits 3:1 read back");
    }

    #[test]
    fn mode_0_gate_low_suspends_counting() {
        let (mut p, t) = pit();
        p.write(3, &[0xb0]); // counter 2, word, mode 0
        p.write(2, &[100, 0]);
        at(&t, 40);
        p.port_b_write(0);
        at(&t, 1000);
        p.port_b_write(1);
        at(&t, 1010);
        assert_eq!(read_word(&mut p, 2), 100 - 50);
    }
}
