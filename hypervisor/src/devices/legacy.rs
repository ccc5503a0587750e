//! The small ports every PC answers (port 0x61, port B, is the PIT's:
//! `devices::pit::PortB`):
//! - [`PostPort`], 0x80: POST codes; writes dropped, reads 0xFF (QEMU's).
//! - [`SystemControlA`], 0x92 (PS/2 "system control port A"): bit 0 fast
//!   reset (a 0→1 write resets the machine), bit 1 A20 gate; the other bits
//!   read back. (Guest memory is never A20-masked: the gate only reads back.)
//! - [`Kbc`], 0x60/0x64: an Intel 8042 keyboard controller without a
//!   keyboard: status (system flag set, buffers empty), the command byte
//!   (0x20/0x60), self and interface tests (0xAA, 0xAB, 0xA9), port
//!   enables (0xA7, 0xA8, 0xAD, 0xAE), the output port (0xD0/0xD1, where
//!   bit 0 clear resets) and the pulse commands 0xF0-0xFF (bit 0 clear
//!   pulses the reset line: 0xFE resets). Bytes for the keyboard itself get
//!   no answer, as with no keyboard plugged in.
//! - [`Cmos`], 0x70/0x71: the MC146818 RTC and CMOS RAM: index (bit 7 is
//!   the NMI mask, kept), time and date from the VM's clock (BCD or binary,
//!   12 or 24 hours, per register B), registers A-D, and the memory size
//!   bytes a BIOS leaves (0x15-0x18, 0x30/0x31, 0x34/0x35, 0x5B-0x5D) and
//!   the CPU count (0x5F) as QEMU sets them.

use super::{Clock, PlatformEvents, PortIo};
use alloc::collections::VecDeque;
use alloc::sync::Arc;

/// Port 0x80.
pub struct PostPort;

impl PortIo for PostPort {
    fn read_port(&mut self, _port: u16) -> u8 {
        0xFF
    }
    fn write_port(&mut self, _port: u16, _value: u8) {}
}

/// Port 0x92.
pub struct SystemControlA {
    value: u8,
    events: Arc<PlatformEvents>,
}

impl SystemControlA {
    pub const PORT: u16 = 0x92;

    /// A20 enabled, as firmware leaves it.
    pub fn new(events: Arc<PlatformEvents>) -> Self {
        SystemControlA {
            value: 0x02,
            events,
        }
    }
}

impl PortIo for SystemControlA {
    fn read_port(&mut self, _port: u16) -> u8 {
        self.value
    }
    fn write_port(&mut self, _port: u16, v: u8) {
        let old = self.value;
        self.value = v;
        if v & 1 != 0 && old & 1 == 0 {
            self.events.request_reset();
        }
    }
}

/// The 8042 keyboard controller (ports 0x60 and 0x64).
pub struct Kbc {
    events: Arc<PlatformEvents>,
    output: VecDeque<u8>,
    /// The command byte (0x20/0x60).
    command_byte: u8,
    /// The controller command waiting for its data byte (0x60, 0xD1...).
    pending: Option<u8>,
    /// Status bit 3: the last write went to 0x64.
    last_was_command: bool,
    output_port: u8,
}

impl Kbc {
    pub const DATA: u16 = 0x60;
    pub const COMMAND: u16 = 0x64;

    const STATUS_OBF: u8 = 0x01;
    const STATUS_SYS: u8 = 0x04;
    const STATUS_CMD: u8 = 0x08;
    const STATUS_UNLOCKED: u8 = 0x10;

    pub fn new(events: Arc<PlatformEvents>) -> Self {
        Kbc {
            events,
            output: VecDeque::new(),
            // Translation, system flag, keyboard interrupt (as a BIOS leaves it).
            command_byte: 0x45,
            pending: None,
            last_was_command: false,
            // Reset line high (not in reset), A20 on.
            output_port: 0x03,
        }
    }

    fn status(&self) -> u8 {
        let mut s = Self::STATUS_SYS | Self::STATUS_UNLOCKED;
        if !self.output.is_empty() {
            s |= Self::STATUS_OBF;
        }
        if self.last_was_command {
            s |= Self::STATUS_CMD;
        }
        s
    }

    fn reply(&mut self, b: u8) {
        if self.output.len() < 16 {
            self.output.push_back(b);
        }
    }

    fn command(&mut self, c: u8) {
        self.pending = None;
        match c {
            0x20 => self.reply(self.command_byte),
            0x60 | 0xD1 | 0xD2 | 0xD3 | 0xD4 => self.pending = Some(c),
            0xA7 => self.command_byte |= 0x20,
            0xA8 => self.command_byte &= !0x20,
            0xA9 | 0xAB => self.reply(0x00),
            0xAA => self.reply(0x55),
            0xAD => self.command_byte |= 0x10,
            0xAE => self.command_byte &= !0x10,
            0xD0 => self.reply(self.output_port),
            // Pulse output lines: a 0 in bit 0 pulses the CPU reset line.
            0xF0..=0xFF if c & 1 == 0 => self.events.request_reset(),
            _ => {}
        }
    }

    fn data(&mut self, v: u8) {
        match self.pending.take() {
            Some(0x60) => self.command_byte = v,
            Some(0xD1) => {
                self.output_port = v;
                if v & 1 == 0 {
                    self.events.request_reset();
                }
            }
            // Write keyboard / mouse output buffer: echoed as input.
            Some(0xD2) | Some(0xD3) => self.reply(v),
            // A byte for the mouse, a byte for the keyboard: no device.
            _ => {}
        }
    }
}

impl PortIo for Kbc {
    fn read_port(&mut self, port: u16) -> u8 {
        match port {
            Self::COMMAND => self.status(),
            _ => self.output.pop_front().unwrap_or(0),
        }
    }
    fn write_port(&mut self, port: u16, v: u8) {
        self.last_was_command = port == Self::COMMAND;
        match port {
            Self::COMMAND => self.command(v),
            _ => self.data(v),
        }
    }
}

/// The time the RTC shows at the clock's 0: 2026-01-01 00:00:00 UTC (no
/// host wall clock is read yet).
pub const RTC_EPOCH_UNIX: u64 = 1_767_225_600;

/// The CMOS RTC and RAM (ports 0x70, 0x71).
pub struct Cmos {
    clock: Arc<dyn Clock>,
    ram: [u8; 128],
    index: u8,
    /// Seconds to add to the clock's time (the guest set the time).
    epoch: u64,
}

const REG_A: usize = 0x0A;
const REG_B: usize = 0x0B;
const REG_C: usize = 0x0C;
const REG_D: usize = 0x0D;
const REG_B_24H: u8 = 0x02;
const REG_B_BINARY: u8 = 0x04;

/// (year, month 1-12, day 1-31) of day `days` since 1970-01-01 (Howard
/// Hinnant's civil_from_days).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl Cmos {
    pub const INDEX: u16 = 0x70;
    pub const DATA: u16 = 0x71;

    /// `ram_below_4g` and `ram_above_4g` are bytes of RAM; `cpus` the vCPUs.
    pub fn new(clock: Arc<dyn Clock>, ram_below_4g: u64, ram_above_4g: u64, cpus: u32) -> Self {
        let mut ram = [0u8; 128];
        ram[REG_A] = 0x26; // 32.768 kHz time base, 1024 Hz rate
        ram[REG_B] = REG_B_24H;
        ram[REG_D] = 0x80; // valid RAM and time
                           // Base memory: 640 KiB.
        ram[0x15] = 0x80;
        ram[0x16] = 0x02;
        // Extended memory from 1 MiB, in KiB (at most 0xFFFF).
        let ext_kib = (ram_below_4g.saturating_sub(1 << 20) >> 10).min(0xFFFF) as u16;
        ram[0x17..0x19].copy_from_slice(&ext_kib.to_le_bytes());
        ram[0x30..0x32].copy_from_slice(&ext_kib.to_le_bytes());
        // Memory above 16 MiB, in 64 KiB units (at most 0xFFFF).
        let above_16m = (ram_below_4g.saturating_sub(16 << 20) >> 16).min(0xFFFF) as u16;
        ram[0x34..0x36].copy_from_slice(&above_16m.to_le_bytes());
        // Memory above 4 GiB, in 64 KiB units, 24 bits.
        let above_4g = (ram_above_4g >> 16).min(0xFF_FFFF) as u32;
        ram[0x5B..0x5E].copy_from_slice(&above_4g.to_le_bytes()[..3]);
        ram[0x5F] = cpus.saturating_sub(1) as u8;
        Cmos {
            clock,
            ram,
            index: 0,
            epoch: RTC_EPOCH_UNIX,
        }
    }

    /// Seconds since 1970 the RTC shows now.
    fn now_secs(&self) -> u64 {
        self.epoch + self.clock.now_ns() / 1_000_000_000
    }

    fn encode(&self, v: u32) -> u8 {
        if self.ram[REG_B] & REG_B_BINARY != 0 {
            v as u8
        } else {
            ((v / 10) << 4 | (v % 10)) as u8
        }
    }

    fn decode(&self, v: u8) -> u32 {
        if self.ram[REG_B] & REG_B_BINARY != 0 {
            u32::from(v)
        } else {
            u32::from(v >> 4) * 10 + u32::from(v & 0xF)
        }
    }

    fn hour(&self, h: u32) -> u8 {
        if self.ram[REG_B] & REG_B_24H != 0 {
            return self.encode(h);
        }
        let pm = h >= 12;
        let h12 = match h % 12 {
            0 => 12,
            x => x,
        };
        self.encode(h12) | if pm { 0x80 } else { 0 }
    }

    /// The time registers 0x00-0x09 and 0x32 (century) now.
    fn time_reg(&self, r: usize) -> u8 {
        let t = self.now_secs();
        let days = (t / 86_400) as i64;
        let secs = (t % 86_400) as u32;
        let (y, m, d) = civil_from_days(days);
        match r {
            0x00 => self.encode(secs % 60),
            0x02 => self.encode(secs / 60 % 60),
            0x04 => self.hour(secs / 3600),
            0x06 => self.encode(((days + 4) % 7) as u32 + 1),
            0x07 => self.encode(d),
            0x08 => self.encode(m),
            0x09 => self.encode((y % 100) as u32),
            0x32 => self.encode((y / 100) as u32),
            _ => self.ram[r],
        }
    }

    /// A guest write to a time register sets the clock (the other fields
    /// kept).
    fn set_time_reg(&mut self, r: usize, v: u8) {
        let t = self.now_secs();
        let days = (t / 86_400) as i64;
        let secs = t % 86_400;
        let (mut y, mut m, mut d) = civil_from_days(days);
        let (mut hh, mut mm, mut ss) = (secs / 3600, secs / 60 % 60, secs % 60);
        let val = u64::from(self.decode(v & 0x7F));
        match r {
            0x00 => ss = val.min(59),
            0x02 => mm = val.min(59),
            0x04 => {
                hh = if self.ram[REG_B] & REG_B_24H != 0 {
                    val.min(23)
                } else {
                    (val % 12) + if v & 0x80 != 0 { 12 } else { 0 }
                }
            }
            0x07 => d = (val as u32).clamp(1, 31),
            0x08 => m = (val as u32).clamp(1, 12),
            0x09 => y = y - y % 100 + val as i64,
            0x32 => y = val as i64 * 100 + y % 100,
            _ => return, // day of week: derived from the date
        }
        let new = days_from_civil(y, m, d) as u64 * 86_400 + hh * 3600 + mm * 60 + ss;
        let elapsed = self.clock.now_ns() / 1_000_000_000;
        self.epoch = new.wrapping_sub(elapsed);
    }
}

impl PortIo for Cmos {
    fn read_port(&mut self, port: u16) -> u8 {
        if port == Self::INDEX {
            // The index port is write-only on a real PC; QEMU reads 0xFF.
            return 0xFF;
        }
        let r = usize::from(self.index & 0x7F);
        match r {
            0x00 | 0x02 | 0x04 | 0x06..=0x09 | 0x32 => self.time_reg(r),
            // Update in progress never seen: the time is always consistent.
            REG_A => self.ram[REG_A] & 0x7F,
            REG_C => core::mem::take(&mut self.ram[REG_C]),
            _ => self.ram[r],
        }
    }

    fn write_port(&mut self, port: u16, v: u8) {
        if port == Self::INDEX {
            self.index = v;
            return;
        }
        let r = usize::from(self.index & 0x7F);
        match r {
            0x00 | 0x02 | 0x04 | 0x06..=0x09 | 0x32 => self.set_time_reg(r, v),
            REG_A => self.ram[REG_A] = v & 0x7F,
            REG_B => self.ram[REG_B] = v,
            REG_C | REG_D => {} // read-only
            _ => self.ram[r] = v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::test_support::ManualClock;
    use crate::devices::PlatformEvent;

    fn events() -> Arc<PlatformEvents> {
        Arc::new(PlatformEvents::new())
    }

    #[test]
    fn port_92_fast_reset_and_a20() {
        let e = events();
        let mut p = SystemControlA::new(e.clone());
        assert_eq!(p.read_port(0x92), 0x02);
        p.write_port(0x92, 0x00);
        assert_eq!(p.read_port(0x92), 0x00);
        assert_eq!(e.pending(), None);
        p.write_port(0x92, 0x03);
        assert_eq!(e.pending(), Some(PlatformEvent::Reset));
    }

    #[test]
    fn kbc_status_commands_and_reset() {
        let e = events();
        let mut k = Kbc::new(e.clone());
        assert_eq!(k.read_port(0x64), 0x14, "system flag, nothing buffered");
        k.write_port(0x64, 0xAA);
        assert_eq!(k.read_port(0x64) & 0x09, 0x09);
        assert_eq!(k.read_port(0x60), 0x55);
        assert_eq!(k.read_port(0x64) & 1, 0);
        k.write_port(0x64, 0x60);
        k.write_port(0x60, 0x47);
        k.write_port(0x64, 0x20);
        assert_eq!(k.read_port(0x60), 0x47);
        k.write_port(0x60, 0xFF); // to the (absent) keyboard
        assert_eq!(k.read_port(0x64) & 1, 0, "no keyboard answers");
        k.write_port(0x64, 0xD0);
        assert_eq!(k.read_port(0x60), 0x03);
        assert_eq!(e.pending(), None);
        k.write_port(0x64, 0xFF); // pulse nothing
        assert_eq!(e.pending(), None);
        k.write_port(0x64, 0xFE);
        assert_eq!(e.pending(), Some(PlatformEvent::Reset));
        let e = events();
        let mut k = Kbc::new(e.clone());
        k.write_port(0x64, 0xD1);
        k.write_port(0x60, 0x02);
        assert_eq!(e.pending(), Some(PlatformEvent::Reset));
    }

    #[test]
    fn calendar_conversions() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        for d in [0, 59, 365, 11_016, 20_454, 40_000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }

    #[test]
    fn cmos_time_memory_and_registers() {
        let c = Arc::new(ManualClock::default());
        let mut r = Cmos::new(c.clone(), 128 << 20, 1 << 30, 2);
        let rd = |r: &mut Cmos, i: u8| {
            r.write_port(0x70, i | 0x80);
            r.read_port(0x71)
        };
        c.set((13 * 3600 + 4 * 60 + 59) * 1_000_000_000);
        assert_eq!(rd(&mut r, 0x00), 0x59);
        assert_eq!(rd(&mut r, 0x02), 0x04);
        assert_eq!(rd(&mut r, 0x04), 0x13);
        assert_eq!(rd(&mut r, 0x07), 0x01);
        assert_eq!(rd(&mut r, 0x08), 0x01);
        assert_eq!(rd(&mut r, 0x09), 0x26);
        assert_eq!(rd(&mut r, 0x32), 0x20);
        assert_eq!(rd(&mut r, 0x06), 0x05, "2026-01-01 is a Thursday");
        assert_eq!(rd(&mut r, 0x0A) & 0x80, 0);
        assert_eq!(rd(&mut r, 0x0B), 0x02);
        assert_eq!(rd(&mut r, 0x0D), 0x80);
        // Memory: 127 MiB extended (capped at 0xFFFF KiB), 112 MiB above
        // 16M, 1 GiB above 4G.
        assert_eq!([rd(&mut r, 0x17), rd(&mut r, 0x18)], [0xFF, 0xFF]);
        let mut small = Cmos::new(c.clone(), 32 << 20, 0, 1);
        assert_eq!([rd(&mut small, 0x30), rd(&mut small, 0x31)], [0x00, 0x7C]);
        assert_eq!([rd(&mut r, 0x34), rd(&mut r, 0x35)], [0x00, 0x07]);
        assert_eq!(
            [rd(&mut r, 0x5B), rd(&mut r, 0x5C), rd(&mut r, 0x5D)],
            [0, 0x40, 0]
        );
        assert_eq!(rd(&mut r, 0x5F), 1);
        // Binary, 12-hour.
        r.write_port(0x70, 0x0B);
        r.write_port(0x71, REG_B_BINARY);
        assert_eq!(rd(&mut r, 0x04), 0x81, "1 PM");
        assert_eq!(rd(&mut r, 0x00), 59);
        // Setting the minutes moves the clock.
        r.write_port(0x70, 0x0B);
        r.write_port(0x71, REG_B_BINARY | REG_B_24H);
        r.write_port(0x70, 0x02);
        r.write_port(0x71, 30);
        assert_eq!(rd(&mut r, 0x02), 30);
        assert_eq!(rd(&mut r, 0x04), 13);
        // CMOS RAM reads back.
        r.write_port(0x70, 0x40);
        r.write_port(0x71, 0xA5);
        assert_eq!(rd(&mut r, 0x40), 0xA5);
    }
}
