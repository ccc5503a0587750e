//! The ACPI PM1a registers and PM timer at the PIIX4 PM base QEMU's `pc`
//! machine uses (0x600), per the ACPI specification (4.8.3 "PM1 Event
//! Grouping", 4.8.3.2 "PM1 Control", 4.8.3.3 "Power Management Timer"):
//!
//! | port  | register  | model                                              |
//! |-------|-----------|----------------------------------------------------|
//! | 0x600 | PM1a_STS  | 16 bits, no event ever set (reads 0, W1C ignored)  |
//! | 0x602 | PM1a_EN   | 16 bits read/write (TMR, GBL, PWRBTN, SLPBTN, RTC) |
//! | 0x604 | PM1a_CNT  | SCI_EN reads 1 (no SMI_CMD: always ACPI mode);     |
//! |       |           | SLP_EN with SLP_TYP 0 (\_S5) powers off            |
//! | 0x608 | PM_TMR    | 24-bit counter at 3.579545 MHz (FADT TMR_VAL_EXT 0)|
//!
//! The timer's value comes from the VM's [`Clock`]: it counts from 0 at the
//! clock's 0 and wraps at 2^24. Reads of 1, 2 or 4 bytes within a register
//! return those bytes of it.

use super::{BusDevice, Clock, PlatformEvents};
use alloc::sync::Arc;

/// The PM base (PM1a_EVT_BLK).
pub const PM_BASE: u16 = 0x600;
/// PM1a_EVT_BLK (4), PM1a_CNT_BLK (2, then 2 reserved), PM_TMR_BLK (4).
pub const PORT_COUNT: u64 = 12;
pub const PM1A_EVT: u16 = 0x600;
pub const PM1A_CNT: u16 = 0x604;
pub const PM_TMR: u16 = 0x608;
/// The PM timer's frequency (ACPI 4.8.3.3).
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// The counter's width: 24 bits.
pub const PM_TIMER_BITS: u32 = 24;
/// The SLP_TYP value of \_S5 in the DSDT (QEMU's PIIX4 uses 0).
pub const SLP_TYP_S5: u16 = 0;

const SCI_EN: u16 = 1 << 0;
const SLP_EN: u16 = 1 << 13;
/// PM1_CNT bits that read back: SCI_EN, BM_RLD, SLP_TYP.
const CNT_KEPT: u16 = 0x1C03;
/// PM1_EN bits: TMR_EN, GBL_EN, PWRBTN_EN, SLPBTN_EN, RTC_EN.
const EN_BITS: u16 = 0x0721;

/// See the [module documentation](self).
pub struct AcpiPm {
    clock: Arc<dyn Clock>,
    events: Arc<PlatformEvents>,
    pm1_en: u16,
    pm1_cnt: u16,
}

impl AcpiPm {
    pub fn new(clock: Arc<dyn Clock>, events: Arc<PlatformEvents>) -> Self {
        AcpiPm {
            clock,
            events,
            pm1_en: 0,
            pm1_cnt: SCI_EN,
        }
    }

    /// The PM timer's value now.
    pub fn timer(&self) -> u32 {
        let ticks = u128::from(self.clock.now_ns()) * u128::from(PM_TIMER_HZ) / 1_000_000_000;
        (ticks as u32) & ((1 << PM_TIMER_BITS) - 1)
    }

    fn register(&self, offset: u64) -> Option<(u64, u32)> {
        Some(match offset {
            0..=1 => (0, 0),
            2..=3 => (2, u32::from(self.pm1_en)),
            4..=5 => (4, u32::from(self.pm1_cnt)),
            8..=11 => (8, self.timer()),
            _ => return None,
        })
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        // Byte by byte, each from its register's value taken once.
        let mut cache: Option<(u64, [u8; 4])> = None;
        for (i, b) in data.iter_mut().enumerate() {
            let off = offset + i as u64;
            let Some((base, _)) = self.register(off) else {
                *b = 0xFF;
                continue;
            };
            if cache.map(|c| c.0) != Some(base) {
                cache = Some((base, self.register(off).unwrap().1.to_le_bytes()));
            }
            *b = cache.unwrap().1[(off - base) as usize];
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut v = [0u8; 4];
        let n = data.len().min(4);
        v[..n].copy_from_slice(&data[..n]);
        let word = u16::from_le_bytes([v[0], v[1]]);
        match (offset, data.len()) {
            (2, 2) => self.pm1_en = word & EN_BITS,
            (2, 1) => self.pm1_en = (self.pm1_en & 0xFF00) | u16::from(v[0]) & EN_BITS,
            (3, 1) => self.pm1_en = (self.pm1_en & 0x00FF) | (u16::from(v[0]) << 8) & EN_BITS,
            (4, 2) | (4, 4) | (5, 1) | (4, 1) => {
                let word = match offset {
                    5 => (u16::from(v[0]) << 8) | (self.pm1_cnt & 0xFF),
                    _ if data.len() == 1 => (self.pm1_cnt & 0xFF00) | u16::from(v[0]),
                    _ => word,
                };
                // SCI_EN stays set: the FADT has no SMI_CMD to leave ACPI mode.
                self.pm1_cnt = (word & CNT_KEPT) | SCI_EN;
                if word & SLP_EN != 0 && (word >> 10) & 7 == SLP_TYP_S5 {
                    self.events.request_poweroff();
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::test_support::ManualClock;
    use crate::devices::PlatformEvent;

    fn pm() -> (AcpiPm, Arc<ManualClock>, Arc<PlatformEvents>) {
        let c = Arc::new(ManualClock::default());
        let e = Arc::new(PlatformEvents::new());
        (AcpiPm::new(c.clone(), e.clone()), c, e)
    }

    fn inl(p: &mut AcpiPm, off: u64) -> u32 {
        let mut d = [0u8; 4];
        p.read(off, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn timer_counts_at_3_579545_mhz_and_wraps_at_24_bits() {
        let (mut p, c, _) = pm();
        assert_eq!(inl(&mut p, 8), 0);
        c.set(1_000_000_000);
        assert_eq!(inl(&mut p, 8), 3_579_545);
        c.set(1_000);
        assert_eq!(inl(&mut p, 8), 3);
        // 2^24 ticks is 4.687 s.
        let wrap_ns = (1u64 << 24) * 1_000_000_000 / PM_TIMER_HZ + 1;
        c.set(wrap_ns);
        assert!(inl(&mut p, 8) < 4);
        c.set(1_000_000_000);
        let mut w = [0u8; 2];
        p.read(8, &mut w);
        assert_eq!(u16::from_le_bytes(w), (3_579_545 & 0xFFFF) as u16);
        p.write(8, &[0, 0, 0, 0]);
        assert_eq!(inl(&mut p, 8), 3_579_545, "writes ignored");
    }

    #[test]
    fn pm1_registers_and_soft_off() {
        let (mut p, _, e) = pm();
        assert_eq!(inl(&mut p, 0) & 0xFFFF, 0);
        p.write(2, &0xFFFFu16.to_le_bytes());
        let mut w = [0u8; 2];
        p.read(2, &mut w);
        assert_eq!(u16::from_le_bytes(w), EN_BITS);
        p.read(4, &mut w);
        assert_eq!(u16::from_le_bytes(w), SCI_EN);
        // S1 (SLP_TYP 1) is not declared: nothing.
        p.write(4, &((1u16 << 10) | SLP_EN).to_le_bytes());
        assert_eq!(e.pending(), None);
        p.read(4, &mut w);
        assert_eq!(u16::from_le_bytes(w), (1 << 10) | SCI_EN, "SLP_EN reads 0");
        p.write(4, &SLP_EN.to_le_bytes());
        assert_eq!(e.pending(), Some(PlatformEvent::PowerOff));
    }
}
