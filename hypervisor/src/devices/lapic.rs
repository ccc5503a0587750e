//! A local APIC's registers in xAPIC mode (Intel SDM Vol. 3A, chapter 11
//! "Advanced Programmable Interrupt Controller" — chapter 10 in editions
//! before 2023), one per vCPU, reached by MMIO offset in its 4 KiB page; and
//! the IA32_APIC_BASE MSR ([`ApicBase`]).
//!
//! Registers (SDM table 11-1), each on a 16-byte boundary:
//! ID, version (0x0005_0014 as QEMU's: version 0x14, max LVT entry 5), TPR,
//! APR and PPR (computed, 11.8.3.1 and 11.8.3), EOI, RRD, LDR, DFR, SVR,
//! ISR/TMR/IRR (8 × 32 bits), ESR (11.5.3: a write latches the errors seen
//! since the last write, which the next read returns), the LVT (CMCI, timer,
//! thermal, performance, LINT0, LINT1, error), ICR low/high, and the timer's
//! initial count, current count and divide configuration.
//!
//! Accesses (11.4.1: "All registers must be accessed using 128-bit aligned
//! 32-bit loads or stores"): a read of 1 to 4 bytes inside the first dword
//! of a register returns those bytes of it; other reads return 0. Only
//! 4-byte writes at a register's offset take effect; others are dropped (as
//! KVM does). A write to a read-only register is dropped; a read or write
//! of a reserved offset sets ESR bit 7 (illegal register address) and reads 0.
//! Reserved bits of each register read 0 whatever is written.
//!
//! While the APIC is software-disabled (SVR bit 8 clear, as after reset)
//! every LVT entry is masked and stays masked (11.4.7.2).
//!
//! The timer (11.5.4) counts down at 1 GHz / divider from the VM's
//! [`Clock`] (the bus frequency QEMU and KVM give their APICs), one-shot or
//! periodic; TSC-deadline mode is not offered. An error (ESR) requests the
//! error LVT's interrupt when it is unmasked. Delivery between APICs and
//! devices is `machine::irq`'s: it uses [`Lapic::accept_irq`],
//! [`Lapic::highest_pending`], [`Lapic::ack`], [`Lapic::take_level_eoi`]
//! (the EOI register's level-triggered vectors, for the I/O APIC),
//! [`Lapic::poll_timer`] and [`Lapic::take_ipi`].

use super::Clock;
use alloc::sync::Arc;

/// The default base of the APIC page.
pub const DEFAULT_BASE: u64 = 0xFEE0_0000;
/// The size of the APIC page.
pub const PAGE_SIZE: u64 = 0x1000;
/// Version register: version 0x14 (integrated APIC), max LVT entry 5 (six
/// entries: timer, thermal, performance, LINT0, LINT1, error), no EOI
/// broadcast suppression.
pub const VERSION: u32 = 0x0005_0014;

/// Register offsets.
pub mod reg {
    pub const ID: u64 = 0x20;
    pub const VERSION: u64 = 0x30;
    pub const TPR: u64 = 0x80;
    pub const APR: u64 = 0x90;
    pub const PPR: u64 = 0xA0;
    pub const EOI: u64 = 0xB0;
    pub const RRD: u64 = 0xC0;
    pub const LDR: u64 = 0xD0;
    pub const DFR: u64 = 0xE0;
    pub const SVR: u64 = 0xF0;
    pub const ISR: u64 = 0x100;
    pub const TMR: u64 = 0x180;
    pub const IRR: u64 = 0x200;
    pub const ESR: u64 = 0x280;
    pub const LVT_CMCI: u64 = 0x2F0;
    pub const ICR_LOW: u64 = 0x300;
    pub const ICR_HIGH: u64 = 0x310;
    pub const LVT_TIMER: u64 = 0x320;
    pub const LVT_THERMAL: u64 = 0x330;
    pub const LVT_PERF: u64 = 0x340;
    pub const LVT_LINT0: u64 = 0x350;
    pub const LVT_LINT1: u64 = 0x360;
    pub const LVT_ERROR: u64 = 0x370;
    pub const TIMER_INITIAL: u64 = 0x380;
    pub const TIMER_CURRENT: u64 = 0x390;
    pub const TIMER_DIVIDE: u64 = 0x3E0;
}

/// ESR bits (SDM figure 11-9).
pub mod esr {
    pub const SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
    pub const RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
    pub const ILLEGAL_REGISTER: u32 = 1 << 7;
}

/// LVT mask bit.
pub const LVT_MASKED: u32 = 1 << 16;
/// Delivery status (send pending), LVT and ICR.
pub const DELIVERY_STATUS: u32 = 1 << 12;
/// SVR: APIC software enable.
pub const SVR_ENABLE: u32 = 1 << 8;

/// LVT indices, in register order (CMCI first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lvt {
    Cmci = 0,
    Timer,
    Thermal,
    Perf,
    Lint0,
    Lint1,
    Error,
}

impl Lvt {
    fn from_offset(off: u64) -> Option<Lvt> {
        Some(match off {
            reg::LVT_CMCI => Lvt::Cmci,
            reg::LVT_TIMER => Lvt::Timer,
            reg::LVT_THERMAL => Lvt::Thermal,
            reg::LVT_PERF => Lvt::Perf,
            reg::LVT_LINT0 => Lvt::Lint0,
            reg::LVT_LINT1 => Lvt::Lint1,
            reg::LVT_ERROR => Lvt::Error,
            _ => return None,
        })
    }

    /// The bits software may write (SDM figure 11-8): vector, delivery mode
    /// where the entry has one, polarity and trigger mode on LINT0/1, the
    /// mask, and the timer mode (one-shot/periodic only: no TSC-deadline).
    fn writable(self) -> u32 {
        match self {
            Lvt::Timer => 0x0003_00FF,
            Lvt::Cmci | Lvt::Thermal | Lvt::Perf => 0x0001_07FF,
            Lvt::Lint0 | Lvt::Lint1 => 0x0001_A7FF,
            Lvt::Error => 0x0001_00FF,
        }
    }
}

/// ICR low bits software may write: vector, delivery mode, destination
/// mode, level, trigger mode, destination shorthand.
const ICR_LOW_WRITABLE: u32 = 0x000C_CFFF;

/// An interprocessor interrupt the guest sent by writing ICR low: for the
/// next issue to deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipi {
    /// ICR low as written (delivery status clear).
    pub low: u32,
    /// ICR high: destination in bits 31:24.
    pub high: u32,
}

/// The local APIC of one vCPU. See the [module documentation](self).
pub struct Lapic {
    id: u32,
    clock: Arc<dyn Clock>,
    tpr: u32,
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: [u32; 8],
    tmr: [u32; 8],
    irr: [u32; 8],
    /// Errors since the last ESR write.
    esr_pending: u32,
    /// What ESR reads return (latched by the last ESR write).
    esr: u32,
    lvt: [u32; 7],
    icr_low: u32,
    icr_high: u32,
    ipi: Option<Ipi>,
    timer_initial: u32,
    timer_divide: u32,
    /// The timer's count was `timer_base_count` at `timer_base_ns`.
    timer_base_ns: u64,
    timer_base_count: u32,
    /// Expirations already delivered since `timer_base_ns` (periodic), or
    /// whether the one-shot fired (1).
    timer_fired: u64,
    /// Level-triggered vectors EOI'd through the EOI register since the
    /// last [`Lapic::take_level_eoi`]: the EOI messages to broadcast to the
    /// I/O APIC (SDM 11.8.5).
    level_eois: [u32; 8],
}

impl core::fmt::Debug for Lapic {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Lapic")
            .field("id", &self.id)
            .field("svr", &self.svr)
            .field("irr", &self.irr)
            .field("isr", &self.isr)
            .finish_non_exhaustive()
    }
}

impl Lapic {
    /// The APIC of the vCPU with APIC ID `id`, in its power-up state
    /// (SDM 11.4.7.1).
    pub fn new(id: u8, clock: Arc<dyn Clock>) -> Self {
        Lapic {
            id: u32::from(id) << 24,
            clock,
            tpr: 0,
            ldr: 0,
            dfr: 0xFFFF_FFFF,
            svr: 0xFF,
            isr: [0; 8],
            tmr: [0; 8],
            irr: [0; 8],
            esr_pending: 0,
            esr: 0,
            lvt: [LVT_MASKED; 7],
            icr_low: 0,
            icr_high: 0,
            ipi: None,
            timer_initial: 0,
            timer_divide: 0,
            timer_base_ns: 0,
            timer_base_count: 0,
            timer_fired: 0,
            level_eois: [0; 8],
        }
    }

    /// LINT0 as firmware leaves it on the bootstrap processor: ExtINT,
    /// unmasked ("virtual wire" mode, MP specification 3.6.2.2), so that the
    /// 8259A's INTR reaches the CPU. QEMU's APIC reset does the same for
    /// CPU 0 (the one exception to the masked-while-disabled rule, until the
    /// guest writes SVR).
    pub fn set_virtual_wire_lint0(&mut self) {
        self.lvt[Lvt::Lint0 as usize] = 0x700;
    }

    /// Back to the power-up state, keeping the APIC ID (INIT and a global
    /// disable/enable, SDM 11.4.7.1 and 11.4.3).
    pub fn reset(&mut self) {
        let id = (self.id >> 24) as u8;
        *self = Lapic::new(id, self.clock.clone());
    }

    /// The APIC ID (bits 31:24 of the ID register).
    pub fn apic_id(&self) -> u8 {
        (self.id >> 24) as u8
    }

    /// The task-priority register (CR8 is its bits 7:4, SDM 11.8.6).
    pub fn tpr(&self) -> u32 {
        self.tpr
    }

    /// Sets TPR (a MOV to CR8; bits 7:0 exist).
    pub fn set_tpr(&mut self, value: u32) {
        self.tpr = value & 0xff;
    }

    /// Whether SVR bit 8 is set.
    pub fn software_enabled(&self) -> bool {
        self.svr & SVR_ENABLE != 0
    }

    /// The logical destination register (the logical APIC ID is bits
    /// 31:24).
    pub fn ldr(&self) -> u32 {
        self.ldr
    }

    /// The destination format register (model in bits 31:28: 0xF flat,
    /// 0x0 cluster).
    pub fn dfr(&self) -> u32 {
        self.dfr
    }

    /// The spurious-interrupt vector register.
    pub fn svr(&self) -> u32 {
        self.svr
    }

    /// Whether `vector` is requested (IRR) or in service (ISR): what makes
    /// this APIC the focus processor of a lowest-priority interrupt
    /// (SDM 11.6.2.4).
    pub fn has_vector(&self, vector: u8) -> bool {
        Self::bit(&self.irr, vector) || Self::bit(&self.isr, vector)
    }

    /// An LVT entry.
    pub fn lvt(&self, which: Lvt) -> u32 {
        self.lvt[which as usize]
    }

    // ---- the 256-bit registers ----

    fn bit(regs: &[u32; 8], v: u8) -> bool {
        regs[usize::from(v >> 5)] & (1 << (v & 31)) != 0
    }

    fn set_bit(regs: &mut [u32; 8], v: u8, on: bool) {
        let w = &mut regs[usize::from(v >> 5)];
        if on {
            *w |= 1 << (v & 31);
        } else {
            *w &= !(1 << (v & 31));
        }
    }

    /// The highest vector set in `regs`.
    fn highest(regs: &[u32; 8]) -> Option<u8> {
        (0..8)
            .rev()
            .find(|&i| regs[i] != 0)
            .map(|i| (i as u8) * 32 + (31 - regs[i].leading_zeros() as u8))
    }

    /// PPR (SDM 11.8.3.1): TPR if its class is at least that of the
    /// highest in-service vector, else that vector's class.
    pub fn ppr(&self) -> u32 {
        let isrv = u32::from(Self::highest(&self.isr).unwrap_or(0));
        if (self.tpr & 0xF0) >= (isrv & 0xF0) {
            self.tpr & 0xFF
        } else {
            isrv & 0xF0
        }
    }

    /// APR (SDM 11.8.3.1, figure 11-15's arbitration priority): TPR if its
    /// class is at least the highest requested and above the highest in
    /// service, else the highest of the three classes.
    pub fn apr(&self) -> u32 {
        let tpr = self.tpr & 0xFF;
        let isrv = u32::from(Self::highest(&self.isr).unwrap_or(0));
        let irrv = u32::from(Self::highest(&self.irr).unwrap_or(0));
        if (tpr & 0xF0) >= (irrv & 0xF0) && (tpr & 0xF0) > (isrv & 0xF0) {
            tpr
        } else {
            (tpr & 0xF0).max(isrv & 0xF0).max(irrv & 0xF0)
        }
    }

    /// Records an error and, if the error LVT is unmasked, requests its
    /// interrupt (SDM 11.5.3). An illegal error vector (below 16) requests
    /// nothing rather than recurse into another error.
    fn error(&mut self, bits: u32) {
        self.esr_pending |= bits;
        let lvt = self.lvt[Lvt::Error as usize];
        if lvt & LVT_MASKED == 0 && lvt as u8 >= 16 {
            Self::set_bit(&mut self.irr, lvt as u8, true);
            Self::set_bit(&mut self.tmr, lvt as u8, false);
        }
    }

    /// Accepts a fixed interrupt `vector` into the IRR (and TMR for a
    /// level-triggered one). Vectors 0-15 are illegal: ESR bit 6 instead
    /// (SDM 11.5.3). Returns whether it was accepted.
    pub fn accept_irq(&mut self, vector: u8, level_triggered: bool) -> bool {
        if vector < 16 {
            self.error(esr::RECEIVE_ILLEGAL_VECTOR);
            return false;
        }
        Self::set_bit(&mut self.irr, vector, true);
        Self::set_bit(&mut self.tmr, vector, level_triggered);
        true
    }

    /// The highest requested vector whose class is above PPR: the one the
    /// vCPU would take next (SDM 11.8.3), if any.
    pub fn highest_pending(&self) -> Option<u8> {
        let v = Self::highest(&self.irr)?;
        (u32::from(v) & 0xF0 > self.ppr() & 0xF0).then_some(v)
    }

    /// The vCPU took `vector`: IRR → ISR.
    pub fn ack(&mut self, vector: u8) {
        Self::set_bit(&mut self.irr, vector, false);
        Self::set_bit(&mut self.isr, vector, true);
    }

    /// EOI: clears the highest in-service vector; returns it, with whether
    /// it was level-triggered (the IOAPIC's remote IRR to clear).
    pub fn eoi(&mut self) -> Option<(u8, bool)> {
        let v = Self::highest(&self.isr)?;
        Self::set_bit(&mut self.isr, v, false);
        Some((v, Self::bit(&self.tmr, v)))
    }

    /// The next level-triggered vector the guest EOI'd (through the EOI
    /// register) that is still to be broadcast to the I/O APIC, taken once.
    pub fn take_level_eoi(&mut self) -> Option<u8> {
        let v = Self::highest(&self.level_eois)?;
        Self::set_bit(&mut self.level_eois, v, false);
        Some(v)
    }

    /// The IPI the guest last sent through the ICR, taken once.
    pub fn take_ipi(&mut self) -> Option<Ipi> {
        self.ipi.take()
    }

    // ---- timer ----

    fn timer_shift(&self) -> u32 {
        // Divide configuration bits 3, 1:0 (SDM figure 11-10): 0b111 is
        // divide by 1, else 2^(value + 1).
        let v = (self.timer_divide & 3) | ((self.timer_divide & 8) >> 1);
        (v + 1) & 7
    }

    fn periodic(&self) -> bool {
        self.lvt[Lvt::Timer as usize] & (1 << 17) != 0
    }

    /// Timer ticks since the base, at 1 GHz / divider.
    fn ticks_since_base(&self, now: u64) -> u64 {
        now.saturating_sub(self.timer_base_ns) >> self.timer_shift()
    }

    /// The current count at `now`.
    fn current_count_at(&self, now: u64) -> u32 {
        if self.timer_initial == 0 {
            return 0;
        }
        let ticks = self.ticks_since_base(now);
        let base = u64::from(self.timer_base_count);
        if ticks < base {
            (base - ticks) as u32
        } else if self.periodic() {
            let init = u64::from(self.timer_initial);
            (init - (ticks - base) % init) as u32
        } else {
            0
        }
    }

    /// The current count now.
    pub fn timer_current_count(&self) -> u32 {
        self.current_count_at(self.clock.now_ns())
    }

    /// Restarts the count from `count` now (after a divide or mode change
    /// the count goes on from where it was).
    fn rebase_timer(&mut self, count: u32) {
        self.timer_base_ns = self.clock.now_ns();
        self.timer_base_count = count;
        self.timer_fired = 0;
    }

    /// Expirations of the timer up to `now` since the base.
    fn expirations_at(&self, now: u64) -> u64 {
        if self.timer_initial == 0 {
            return 0;
        }
        let ticks = self.ticks_since_base(now);
        let base = u64::from(self.timer_base_count);
        if ticks < base || base == 0 {
            0
        } else if self.periodic() {
            1 + (ticks - base) / u64::from(self.timer_initial)
        } else {
            1
        }
    }

    /// Delivers the timer's interrupt if it expired since the last poll
    /// (several periodic expirations coalesce into one, as a busy APIC's
    /// IRR bit does). Returns whether it fired (masked or not).
    pub fn poll_timer(&mut self) -> bool {
        // A stopped timer (or a one-shot that fired) expires no more: no
        // clock read, the common case before every VM entry.
        if self.timer_deadline_ns().is_none() {
            return false;
        }
        let n = self.expirations_at(self.clock.now_ns());
        if n <= self.timer_fired {
            return false;
        }
        self.timer_fired = n;
        let lvt = self.lvt[Lvt::Timer as usize];
        if lvt & LVT_MASKED == 0 {
            self.accept_irq(lvt as u8, false);
        }
        true
    }

    /// When the timer next expires, in the clock's nanoseconds (for the
    /// next issue to arm a host timer), if it runs.
    pub fn timer_deadline_ns(&self) -> Option<u64> {
        // Stopped, or a one-shot that ran out before a divide change.
        if self.timer_initial == 0 || self.timer_base_count == 0 {
            return None;
        }
        let shift = self.timer_shift();
        let base = u64::from(self.timer_base_count);
        let next = if self.timer_fired == 0 {
            base
        } else if self.periodic() {
            base + self.timer_fired * u64::from(self.timer_initial)
        } else {
            return None;
        };
        Some(self.timer_base_ns + (next << shift))
    }

    // ---- register access ----

    /// The 32-bit value of the register at `off` (16-byte aligned), or None
    /// for a reserved offset.
    fn read_reg(&self, off: u64) -> Option<u32> {
        Some(match off {
            reg::ID => self.id,
            reg::VERSION => VERSION,
            reg::TPR => self.tpr,
            reg::APR => self.apr(),
            reg::PPR => self.ppr(),
            reg::EOI | reg::RRD => 0,
            reg::LDR => self.ldr,
            reg::DFR => self.dfr,
            reg::SVR => self.svr,
            0x100..=0x170 => self.isr[((off - reg::ISR) >> 4) as usize],
            0x180..=0x1F0 => self.tmr[((off - reg::TMR) >> 4) as usize],
            0x200..=0x270 => self.irr[((off - reg::IRR) >> 4) as usize],
            reg::ESR => self.esr,
            reg::ICR_LOW => self.icr_low,
            reg::ICR_HIGH => self.icr_high,
            reg::TIMER_INITIAL => self.timer_initial,
            reg::TIMER_CURRENT => self.timer_current_count(),
            reg::TIMER_DIVIDE => self.timer_divide,
            _ => self.lvt[Lvt::from_offset(off)? as usize],
        })
    }

    /// A 32-bit write to the register at `off` (16-byte aligned).
    fn write_reg(&mut self, off: u64, v: u32) {
        match off {
            // The xAPIC ID is writable on the P6 family and later; QEMU and
            // KVM allow it.
            reg::ID => self.id = v & 0xFF00_0000,
            reg::TPR => self.tpr = v & 0xFF,
            reg::EOI => {
                if let Some((v, true)) = self.eoi() {
                    Self::set_bit(&mut self.level_eois, v, true);
                }
            }
            reg::LDR => self.ldr = v & 0xFF00_0000,
            reg::DFR => self.dfr = v | 0x0FFF_FFFF,
            reg::SVR => {
                // Vector, enable, focus checking (bit 9); bit 12 (EOI
                // broadcast suppression) is reserved: VERSION bit 24 is 0.
                self.svr = v & 0x3FF;
                if !self.software_enabled() {
                    for l in &mut self.lvt {
                        *l |= LVT_MASKED;
                    }
                }
            }
            reg::ESR => {
                self.esr = self.esr_pending;
                self.esr_pending = 0;
            }
            reg::ICR_LOW => {
                let low = v & ICR_LOW_WRITABLE;
                let mode = (low >> 8) & 7;
                // Fixed (0) and lowest-priority (1) IPIs need a legal vector.
                if mode <= 1 && (low & 0xFF) < 16 {
                    self.error(esr::SEND_ILLEGAL_VECTOR);
                }
                // Sent at once: the delivery status reads idle.
                self.icr_low = low;
                self.ipi = Some(Ipi {
                    low,
                    high: self.icr_high,
                });
            }
            reg::ICR_HIGH => self.icr_high = v & 0xFF00_0000,
            reg::TIMER_INITIAL => {
                // Writing the initial count starts the count (11.5.4).
                self.timer_initial = v;
                self.rebase_timer(v);
            }
            reg::TIMER_DIVIDE => {
                let count = self.timer_current_count();
                self.timer_divide = v & 0xB;
                if self.timer_initial != 0 {
                    self.rebase_timer(count);
                }
            }
            reg::VERSION | reg::APR | reg::PPR | reg::RRD | reg::TIMER_CURRENT => {}
            0x100..=0x270 => {}
            _ => match Lvt::from_offset(off) {
                Some(which) => {
                    let old_periodic = self.periodic();
                    let count = self.timer_current_count();
                    let mut val =
                        (self.lvt[which as usize] & !which.writable()) | (v & which.writable());
                    if !self.software_enabled() {
                        val |= LVT_MASKED;
                    }
                    self.lvt[which as usize] = val;
                    if which == Lvt::Timer && old_periodic != self.periodic() {
                        self.rebase_timer(count);
                    }
                }
                None => self.error(esr::ILLEGAL_REGISTER),
            },
        }
    }

    /// A guest read of `data.len()` bytes at `offset` in the APIC page.
    pub fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let reg_off = offset & !0xF;
        let within = (offset & 0xF) as usize;
        if offset >= PAGE_SIZE || within + data.len() > 4 {
            return;
        }
        match self.read_reg(reg_off) {
            Some(v) => data.copy_from_slice(&v.to_le_bytes()[within..within + data.len()]),
            None => self.error(esr::ILLEGAL_REGISTER),
        }
    }

    /// A guest write of `data` at `offset` in the APIC page.
    pub fn mmio_write(&mut self, offset: u64, data: &[u8]) {
        if offset >= PAGE_SIZE || offset & 0xF != 0 || data.len() != 4 {
            return;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        self.write_reg(offset, v);
    }
}

impl super::BusDevice for Lapic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.mmio_read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.mmio_write(offset, data);
    }
}

/// IA32_APIC_BASE (MSR 0x1B, SDM 11.4.4 and 11.12.1).
pub const MSR_IA32_APIC_BASE: u32 = 0x1B;

/// IA32_APIC_BASE bits.
pub mod apic_base {
    /// This processor is the bootstrap processor.
    pub const BSP: u64 = 1 << 8;
    /// x2APIC mode.
    pub const EXTD: u64 = 1 << 10;
    /// APIC global enable.
    pub const EN: u64 = 1 << 11;
}

/// Why a WRMSR to IA32_APIC_BASE raises #GP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApicBaseError {
    /// A reserved bit is set (bits 7:0, 9, or at or above MAXPHYADDR).
    Reserved,
    /// x2APIC mode asked for, and x2APIC is not offered in CPUID.
    X2ApicNotOffered,
    /// An invalid transition (SDM 11.12.5, figure 11-27): EXTD without EN,
    /// x2APIC back to xAPIC, or disabled straight to x2APIC.
    InvalidTransition,
}

impl core::fmt::Display for ApicBaseError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            ApicBaseError::Reserved => "reserved bit set",
            ApicBaseError::X2ApicNotOffered => "x2APIC mode is not offered",
            ApicBaseError::InvalidTransition => "invalid APIC mode transition",
        })
    }
}

/// One vCPU's IA32_APIC_BASE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApicBase(u64);

impl ApicBase {
    /// The reset value: base 0xFEE00000, enabled, BSP on vCPU 0.
    pub fn new(bsp: bool) -> Self {
        ApicBase(DEFAULT_BASE | apic_base::EN | if bsp { apic_base::BSP } else { 0 })
    }

    pub fn value(self) -> u64 {
        self.0
    }

    /// The page's guest-physical base.
    pub fn base(self) -> u64 {
        self.0 & !0xFFF
    }

    /// APIC globally enabled.
    pub fn enabled(self) -> bool {
        self.0 & apic_base::EN != 0
    }

    pub fn bsp(self) -> bool {
        self.0 & apic_base::BSP != 0
    }

    pub fn x2apic(self) -> bool {
        self.0 & apic_base::EXTD != 0
    }

    /// A WRMSR of `value`, checked as a CPU with `maxphyaddr` physical
    /// address bits checks it; `x2apic_offered` is CPUID.1:ECX[21].
    /// On success the register holds `value` (the caller relocates the page
    /// and, on a global disable, resets the APIC).
    pub fn write(
        &mut self,
        value: u64,
        maxphyaddr: u8,
        x2apic_offered: bool,
    ) -> Result<(), ApicBaseError> {
        let addr_mask = if maxphyaddr >= 64 {
            u64::MAX
        } else {
            (1u64 << maxphyaddr) - 1
        };
        let reserved = !addr_mask | 0x2FF;
        if value & reserved != 0 {
            return Err(ApicBaseError::Reserved);
        }
        let extd = value & apic_base::EXTD != 0;
        let en = value & apic_base::EN != 0;
        if extd && !x2apic_offered {
            return Err(ApicBaseError::X2ApicNotOffered);
        }
        let invalid = (extd && !en) || (self.x2apic() && en && !extd) || (!self.enabled() && extd);
        if invalid {
            return Err(ApicBaseError::InvalidTransition);
        }
        self.0 = value;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::test_support::ManualClock;

    fn lapic() -> (Lapic, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        (Lapic::new(3, clock.clone()), clock)
    }

    fn rd(l: &mut Lapic, off: u64) -> u32 {
        let mut d = [0u8; 4];
        l.mmio_read(off, &mut d);
        u32::from_le_bytes(d)
    }

    fn wr(l: &mut Lapic, off: u64, v: u32) {
        l.mmio_write(off, &v.to_le_bytes());
    }

    fn enable(l: &mut Lapic) {
        wr(l, reg::SVR, 0x1FF);
    }

    #[test]
    fn reset_values() {
        let (mut l, _) = lapic();
        assert_eq!(rd(&mut l, reg::ID), 3 << 24);
        assert_eq!(rd(&mut l, reg::VERSION), 0x0005_0014);
        assert_eq!(rd(&mut l, reg::DFR), 0xFFFF_FFFF);
        assert_eq!(rd(&mut l, reg::SVR), 0xFF);
        for off in [0x2F0, 0x320, 0x330, 0x340, 0x350, 0x360, 0x370] {
            assert_eq!(rd(&mut l, off), LVT_MASKED, "{off:#x}");
        }
        for off in [reg::TPR, reg::PPR, reg::LDR, reg::ESR, reg::ICR_LOW, 0x390] {
            assert_eq!(rd(&mut l, off), 0, "{off:#x}");
        }
    }

    #[test]
    fn reserved_bits_read_zero_and_read_only_registers_ignore_writes() {
        let (mut l, _) = lapic();
        enable(&mut l);
        wr(&mut l, reg::ID, 0xFFFF_FFFF);
        assert_eq!(rd(&mut l, reg::ID), 0xFF00_0000);
        wr(&mut l, reg::TPR, 0xFFFF_FFFF);
        assert_eq!(rd(&mut l, reg::TPR), 0xFF);
        wr(&mut l, reg::LDR, 0x1234_5678);
        assert_eq!(rd(&mut l, reg::LDR), 0x1200_0000);
        wr(&mut l, reg::DFR, 0x0000_0000);
        assert_eq!(rd(&mut l, reg::DFR), 0x0FFF_FFFF, "flat=0xF, cluster=0x0");
        wr(&mut l, reg::SVR, 0xFFFF_FFFF);
        assert_eq!(rd(&mut l, reg::SVR), 0x3FF);
        wr(&mut l, reg::VERSION, 0);
        assert_eq!(rd(&mut l, reg::VERSION), VERSION);
        wr(&mut l, reg::LVT_TIMER, 0xFFFF_FFFF);
        assert_eq!(rd(&mut l, reg::LVT_TIMER), 0x0003_00FF, "no TSC-deadline");
        wr(&mut l, reg::LVT_LINT0, 0xFFFF_FFFF);
        assert_eq!(rd(&mut l, reg::LVT_LINT0), 0x0001_A7FF);
        wr(&mut l, reg::LVT_ERROR, 0xFFFF_FFFF);
        assert_eq!(rd(&mut l, reg::LVT_ERROR), 0x0001_00FF);
        wr(&mut l, reg::LVT_PERF, 0xFFFF_FFFF);
        assert_eq!(rd(&mut l, reg::LVT_PERF), 0x0001_07FF);
        wr(&mut l, reg::ICR_HIGH, 0xFFFF_FFFF);
        assert_eq!(rd(&mut l, reg::ICR_HIGH), 0xFF00_0000);
        wr(&mut l, reg::TIMER_DIVIDE, 0xFFFF_FFFF);
        assert_eq!(rd(&mut l, reg::TIMER_DIVIDE), 0xB);
        wr(&mut l, reg::IRR, 0xFFFF_FFFF);
        assert_eq!(rd(&mut l, reg::IRR), 0);
        assert_eq!(rd(&mut l, reg::ESR), 0);
    }

    #[test]
    fn software_disable_masks_the_lvt() {
        let (mut l, _) = lapic();
        wr(&mut l, reg::LVT_LINT0, 0x700);
        assert_eq!(rd(&mut l, reg::LVT_LINT0), 0x0001_0700, "stays masked");
        enable(&mut l);
        wr(&mut l, reg::LVT_LINT0, 0x700);
        assert_eq!(rd(&mut l, reg::LVT_LINT0), 0x700);
        wr(&mut l, reg::SVR, 0xFF);
        assert_eq!(rd(&mut l, reg::LVT_LINT0), 0x0001_0700);
    }

    #[test]
    fn esr_is_latched_by_a_write() {
        let (mut l, _) = lapic();
        assert_eq!(rd(&mut l, 0x3F0), 0, "reserved offset reads 0");
        wr(&mut l, 0x010, 5);
        assert_eq!(rd(&mut l, reg::ESR), 0, "not latched yet");
        wr(&mut l, reg::ESR, 0);
        assert_eq!(rd(&mut l, reg::ESR), esr::ILLEGAL_REGISTER);
        wr(&mut l, reg::ESR, 0);
        assert_eq!(rd(&mut l, reg::ESR), 0);
        wr(&mut l, reg::ICR_LOW, 0x0000_4005); // fixed, vector 5
        wr(&mut l, reg::ESR, 0);
        assert_eq!(rd(&mut l, reg::ESR), esr::SEND_ILLEGAL_VECTOR);
        l.accept_irq(3, false);
        wr(&mut l, reg::ESR, 0);
        assert_eq!(rd(&mut l, reg::ESR), esr::RECEIVE_ILLEGAL_VECTOR);
    }

    #[test]
    fn errors_raise_the_error_lvt_interrupt() {
        let (mut l, _) = lapic();
        enable(&mut l);
        l.accept_irq(3, false);
        assert_eq!(l.highest_pending(), None, "error LVT masked");
        wr(&mut l, reg::LVT_ERROR, 0xFE);
        l.accept_irq(3, false);
        assert_eq!(l.highest_pending(), Some(0xFE));
        l.ack(0xFE);
        l.eoi();
        // An illegal error vector: the error is recorded, nothing requested.
        wr(&mut l, reg::LVT_ERROR, 0x05);
        wr(&mut l, reg::ICR_LOW, 0x0000_4001);
        assert_eq!(l.highest_pending(), None);
        wr(&mut l, reg::ESR, 0);
        assert_eq!(
            rd(&mut l, reg::ESR),
            esr::RECEIVE_ILLEGAL_VECTOR | esr::SEND_ILLEGAL_VECTOR
        );
    }

    #[test]
    fn access_sizes() {
        let (mut l, _) = lapic();
        let mut b = [0u8; 1];
        l.mmio_read(reg::VERSION, &mut b);
        assert_eq!(b, [0x14]);
        l.mmio_read(reg::VERSION + 2, &mut b);
        assert_eq!(b, [0x05]);
        let mut w = [0u8; 2];
        l.mmio_read(reg::VERSION + 2, &mut w);
        assert_eq!(w, [0x05, 0]);
        let mut q = [0xAAu8; 8];
        l.mmio_read(reg::VERSION, &mut q);
        assert_eq!(q, [0; 8], "8-byte reads are not defined: 0");
        let mut d = [0xAAu8; 4];
        l.mmio_read(reg::VERSION + 4, &mut d);
        assert_eq!(d, [0; 4]);
        // Only aligned 4-byte writes count.
        l.mmio_write(reg::TPR, &[0x20]);
        l.mmio_write(reg::TPR + 4, &0x30u32.to_le_bytes());
        l.mmio_write(reg::TPR, &0x40u64.to_le_bytes());
        assert_eq!(rd(&mut l, reg::TPR), 0);
    }

    #[test]
    fn irr_isr_tmr_ppr_and_eoi() {
        let (mut l, _) = lapic();
        enable(&mut l);
        assert!(l.accept_irq(0x31, false));
        assert!(l.accept_irq(0x62, true));
        assert_eq!(rd(&mut l, reg::IRR + 0x10), 1 << 17);
        assert_eq!(rd(&mut l, reg::IRR + 0x30), 1 << 2);
        assert_eq!(rd(&mut l, reg::TMR + 0x30), 1 << 2);
        assert_eq!(l.highest_pending(), Some(0x62));
        assert_eq!(rd(&mut l, reg::APR), 0x60);
        l.ack(0x62);
        assert_eq!(rd(&mut l, reg::ISR + 0x30), 1 << 2);
        assert_eq!(rd(&mut l, reg::PPR), 0x60);
        assert_eq!(l.highest_pending(), None, "0x31 is below PPR");
        wr(&mut l, reg::TPR, 0x75);
        assert_eq!(rd(&mut l, reg::PPR), 0x75);
        wr(&mut l, reg::TPR, 0);
        assert_eq!(l.eoi(), Some((0x62, true)));
        assert_eq!(rd(&mut l, reg::PPR), 0);
        assert_eq!(l.highest_pending(), Some(0x31));
        l.ack(0x31);
        wr(&mut l, reg::EOI, 0);
        assert_eq!(rd(&mut l, reg::ISR + 0x10), 0);
        assert_eq!(l.eoi(), None);
        wr(&mut l, reg::TPR, 0x40);
        l.accept_irq(0x45, false);
        assert_eq!(l.highest_pending(), None, "same class as TPR is blocked");
    }

    #[test]
    fn eoi_register_queues_level_vectors_for_the_broadcast() {
        let (mut l, _) = lapic();
        enable(&mut l);
        l.accept_irq(0x41, true);
        l.accept_irq(0x51, false);
        l.ack(0x51);
        wr(&mut l, reg::EOI, 0);
        assert_eq!(l.take_level_eoi(), None, "edge: nothing to broadcast");
        l.ack(0x41);
        wr(&mut l, reg::EOI, 0);
        assert_eq!(l.take_level_eoi(), Some(0x41));
        assert_eq!(l.take_level_eoi(), None, "taken once");
    }

    #[test]
    fn virtual_wire_lint0_survives_until_svr_is_written() {
        let (mut l, _) = lapic();
        l.set_virtual_wire_lint0();
        assert_eq!(rd(&mut l, reg::LVT_LINT0), 0x700);
        wr(&mut l, reg::SVR, 0xFF);
        assert_eq!(rd(&mut l, reg::LVT_LINT0), 0x0001_0700);
    }

    #[test]
    fn icr_write_sends_an_ipi_with_idle_delivery_status() {
        let (mut l, _) = lapic();
        wr(&mut l, reg::ICR_HIGH, 0x0200_0000);
        wr(&mut l, reg::ICR_LOW, !0x0003_0000);
        assert_eq!(rd(&mut l, reg::ICR_LOW) & DELIVERY_STATUS, 0);
        assert_eq!(rd(&mut l, reg::ICR_LOW), ICR_LOW_WRITABLE);
        assert_eq!(
            l.take_ipi(),
            Some(Ipi {
                low: ICR_LOW_WRITABLE,
                high: 0x0200_0000
            })
        );
        assert_eq!(l.take_ipi(), None);
    }

    #[test]
    fn one_shot_timer_counts_down_and_fires_once() {
        let (mut l, clock) = lapic();
        enable(&mut l);
        wr(&mut l, reg::TIMER_DIVIDE, 0x3); // divide by 16
        wr(&mut l, reg::LVT_TIMER, 0x40);
        clock.set(1000);
        wr(&mut l, reg::TIMER_INITIAL, 100);
        assert_eq!(rd(&mut l, reg::TIMER_CURRENT), 100);
        assert_eq!(l.timer_deadline_ns(), Some(1000 + 1600));
        clock.advance(16 * 40);
        assert_eq!(rd(&mut l, reg::TIMER_CURRENT), 60);
        assert!(!l.poll_timer());
        clock.advance(16 * 60);
        assert_eq!(rd(&mut l, reg::TIMER_CURRENT), 0);
        assert!(l.poll_timer());
        assert_eq!(l.highest_pending(), Some(0x40));
        assert!(!l.poll_timer(), "one shot");
        assert_eq!(l.timer_deadline_ns(), None);
        clock.advance(1 << 30);
        assert_eq!(rd(&mut l, reg::TIMER_CURRENT), 0);
        // A divide change after expiry does not bring it back.
        wr(&mut l, reg::TIMER_DIVIDE, 0x1);
        assert_eq!(l.timer_deadline_ns(), None);
        assert!(!l.poll_timer());
        // Writing 0 stops it.
        wr(&mut l, reg::TIMER_INITIAL, 0);
        assert_eq!(l.timer_deadline_ns(), None);
    }

    #[test]
    fn periodic_timer_reloads_and_divide_by_one() {
        let (mut l, clock) = lapic();
        enable(&mut l);
        wr(&mut l, reg::TIMER_DIVIDE, 0xB); // divide by 1
        wr(&mut l, reg::LVT_TIMER, (1 << 17) | LVT_MASKED | 0x50);
        wr(&mut l, reg::TIMER_INITIAL, 1000);
        clock.advance(999);
        assert_eq!(rd(&mut l, reg::TIMER_CURRENT), 1);
        clock.advance(1);
        assert_eq!(rd(&mut l, reg::TIMER_CURRENT), 1000, "reloaded");
        clock.advance(250);
        assert_eq!(rd(&mut l, reg::TIMER_CURRENT), 750);
        assert!(l.poll_timer());
        assert_eq!(l.highest_pending(), None, "masked: no interrupt");
        assert_eq!(l.timer_deadline_ns(), Some(2000));
        // Divide change keeps the count and slows it.
        wr(&mut l, reg::TIMER_DIVIDE, 0x0); // by 2
        assert_eq!(rd(&mut l, reg::TIMER_CURRENT), 750);
        clock.advance(100);
        assert_eq!(rd(&mut l, reg::TIMER_CURRENT), 700);
    }

    #[test]
    fn apic_base_msr() {
        let mut b = ApicBase::new(true);
        assert_eq!(b.value(), 0xFEE0_0900);
        assert!(b.bsp() && b.enabled() && !b.x2apic());
        assert_eq!(ApicBase::new(false).value(), 0xFEE0_0800);
        // Relocation within MAXPHYADDR.
        assert_eq!(b.write(0xF_0000_0800, 36, false), Ok(()));
        assert_eq!(b.base(), 0xF_0000_0000);
        assert_eq!(
            b.write(0x10_0000_0800, 36, false),
            Err(ApicBaseError::Reserved)
        );
        for bit in [0, 7, 9] {
            assert_eq!(
                b.write(0xFEE0_0800 | 1 << bit, 36, false),
                Err(ApicBaseError::Reserved)
            );
        }
        assert_eq!(
            b.write(0xFEE0_0C00, 36, false),
            Err(ApicBaseError::X2ApicNotOffered)
        );
        assert_eq!(b.value(), 0xF_0000_0800, "unchanged after #GP");
        // With x2APIC offered: xAPIC → x2APIC fine, back is not.
        assert_eq!(b.write(0xFEE0_0C00, 36, true), Ok(()));
        assert_eq!(
            b.write(0xFEE0_0800, 36, true),
            Err(ApicBaseError::InvalidTransition)
        );
        assert_eq!(b.write(0xFEE0_0000, 36, true), Ok(()), "disable");
        assert_eq!(
            b.write(0xFEE0_0C00, 36, true),
            Err(ApicBaseError::InvalidTransition),
            "disabled straight to x2APIC"
        );
        assert_eq!(
            b.write(0xFEE0_0400, 36, true),
            Err(ApicBaseError::InvalidTransition)
        );
        assert_eq!(b.write(0xFEE0_0800, 36, true), Ok(()));
        assert!(b.enabled());
    }

    #[test]
    fn reset_keeps_the_id() {
        let (mut l, _) = lapic();
        enable(&mut l);
        wr(&mut l, reg::TPR, 0x20);
        l.reset();
        assert_eq!(rd(&mut l, reg::TPR), 0);
        assert_eq!(rd(&mut l, reg::ID), 3 << 24);
        assert!(!l.software_enabled());
    }
}
