//! Delays for starting cores, from a clock that runs at a known rate in
//! every backend: the 8254 PIT (channel 2, one-shot), or the ACPI PM timer
//! where the PIT does not count (some recent platforms gate its clock).
//!
//! Both follow the machine's notion of time: real time on hardware and in
//! QEMU, emulated time in Bochs with `clock: sync=none` (which is what the
//! emulated cores' progress is measured in too). The TSC is not used: its
//! rate is unknown without calibrating against one of these anyway.

use x86_64::instructions::port::Port;

/// PIT input clock, Hz.
const PIT_HZ: u64 = 1_193_182;
/// ACPI PM timer clock, Hz (ACPI spec, 4.8.3.3 "Power Management Timer").
const PM_TIMER_HZ: u64 = 3_579_545;
/// One PIT shot at most this long (the 16-bit counter allows ~54.9 ms).
const CHUNK_US: u64 = 1_000;
/// Port reads before a 1 ms PIT shot is declared dead: ~1 µs each on
/// hardware, a few emulated instructions in Bochs.
const PIT_DEAD_POLLS: u64 = 5_000_000;

const PIT_CH2: u16 = 0x42;
const PIT_CMD: u16 = 0x43;
const PORT_B: u16 = 0x61;
/// Port 61h: bit 0 gates channel 2, bit 1 drives the speaker (kept off),
/// bit 5 reads channel 2's OUT.
const PORT_B_GATE2: u8 = 1 << 0;
const PORT_B_SPEAKER: u8 = 1 << 1;
const PORT_B_OUT2: u8 = 1 << 5;
/// Channel 2, low then high byte, mode 0 (interrupt on terminal count: OUT
/// goes high when the count runs out), binary.
const PIT_CH2_MODE0: u8 = 0b1011_0000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    Pit,
    PmTimer { port: u16, bits32: bool },
}

impl Clock {
    /// The PIT if it counts, else the PM timer at `pm_timer` (an I/O port,
    /// 32-bit counter or not) if there is one.
    pub fn detect(pm_timer: Option<(u16, bool)>) -> Option<Clock> {
        if pit_shot(ticks(CHUNK_US, PIT_HZ), &mut || false, PIT_DEAD_POLLS).is_some() {
            return Some(Clock::Pit);
        }
        pm_timer.map(|(port, bits32)| Clock::PmTimer { port, bits32 })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Clock::Pit => "PIT channel 2",
            Clock::PmTimer { .. } => "ACPI PM timer",
        }
    }

    /// Waits `us` microseconds.
    pub fn delay_us(&self, us: u64) {
        self.wait_until(us, || false);
    }

    /// Polls `done` for up to `us` microseconds; true as soon as it is.
    pub fn wait_until(&self, us: u64, mut done: impl FnMut() -> bool) -> bool {
        match *self {
            Clock::Pit => {
                let mut left = us;
                while left > 0 {
                    let chunk = left.min(CHUNK_US);
                    // A PIT that stops mid-run (it passed `detect`) ends
                    // the wait early rather than hanging the boot.
                    match pit_shot(ticks(chunk, PIT_HZ), &mut done, PIT_DEAD_POLLS) {
                        Some(true) => return true,
                        Some(false) => left -= chunk,
                        None => break,
                    }
                }
                done()
            }
            Clock::PmTimer { port, bits32 } => {
                let mask: u32 = if bits32 { u32::MAX } else { 0x00ff_ffff };
                let mut port = Port::<u32>::new(port);
                // SAFETY: reading the PM timer register the FADT names has
                // no side effects.
                let mut read = || unsafe { port.read() } & mask;
                let target = ticks(us, PM_TIMER_HZ);
                let mut last = read();
                let mut elapsed = 0u64;
                loop {
                    if done() {
                        return true;
                    }
                    let now = read();
                    elapsed += (now.wrapping_sub(last) & mask) as u64;
                    last = now;
                    if elapsed >= target {
                        return done();
                    }
                    core::hint::spin_loop();
                }
            }
        }
    }
}

fn ticks(us: u64, hz: u64) -> u64 {
    (us * hz).div_ceil(1_000_000).max(1)
}

/// One PIT channel-2 shot of `count` ticks (at most 0xffff), polling `done`
/// meanwhile: `Some(true)` if `done` became true, `Some(false)` when the
/// count ran out, `None` if OUT never rose within `max_polls` reads (no PIT).
fn pit_shot(count: u64, done: &mut impl FnMut() -> bool, max_polls: u64) -> Option<bool> {
    let count = count.min(0xffff) as u16;
    let mut port_b = Port::<u8>::new(PORT_B);
    let mut cmd = Port::<u8>::new(PIT_CMD);
    let mut ch2 = Port::<u8>::new(PIT_CH2);
    // SAFETY: ports 42h, 43h and 61h are the PIT's channel 2 and the system
    // control port; nothing else in the hypervisor uses channel 2 or the
    // speaker. Writing the mode word makes OUT low; the count starts with
    // the gate high and OUT rises when it reaches zero (8254 mode 0).
    unsafe {
        let b = port_b.read();
        port_b.write((b & !PORT_B_SPEAKER) | PORT_B_GATE2);
        cmd.write(PIT_CH2_MODE0);
        ch2.write(count as u8);
        ch2.write((count >> 8) as u8);
    }
    for _ in 0..max_polls {
        if done() {
            return Some(true);
        }
        // SAFETY: reading port 61h has no side effects.
        if unsafe { port_b.read() } & PORT_B_OUT2 != 0 {
            return Some(false);
        }
    }
    None
}
