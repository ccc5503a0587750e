//! The local APIC, only as far as starting cores needs it: which mode it is in
//! (xAPIC through MMIO, or x2APIC through MSRs), software enable, and the
//! INIT and start-up IPIs.
//!
//! SDM Vol. 3A, 11.4 "Local APIC" (11.4.3 enabling, 11.4.4 IA32_APIC_BASE),
//! 11.6 "Issuing Interprocessor Interrupts" (the ICR), 11.12 "Extended XAPIC
//! (x2APIC)" (MSR access, 11.12.9 the 64-bit ICR). Older editions number
//! this chapter 10.

use super::paging::{self, FrameFn, PagingError};
use core::sync::atomic::{AtomicU64, Ordering};
use raw_cpuid::CpuId;
use spin::Once;
use x86_64::registers::model_specific::Msr;

use crate::x86::msr::IA32_APIC_BASE;
const APIC_BASE_EXTD: u64 = 1 << 10;
const APIC_BASE_EN: u64 = 1 << 11;
const APIC_BASE_ADDR: u64 = 0x000f_ffff_ffff_f000;
use crate::x86::msr::IA32_PAT;

/// xAPIC register offsets (x2APIC MSR = 0x800 + offset / 16).
const REG_ID: u32 = 0x20;
const REG_EOI: u32 = 0xb0;
const REG_SVR: u32 = 0xf0;
const REG_ICR_LOW: u32 = 0x300;
const REG_ICR_HIGH: u32 = 0x310;
const X2APIC_MSR_BASE: u32 = 0x800;
const X2APIC_ICR: u32 = 0x830;

/// SVR bit 8: APIC software enable (SDM 11.9). The spurious vector is 0xff,
/// which the IDT reports as an unexpected interrupt; none arrive while
/// interrupts are off.
const SVR_ENABLE: u32 = 1 << 8;
const SPURIOUS_VECTOR: u32 = 0xff;

/// ICR fields (SDM Figure 11-12): delivery mode INIT (101b) or start-up
/// (110b), level assert, edge trigger, physical destination, no shorthand.
const ICR_FIXED: u32 = 0; // delivery mode 000b
const ICR_INIT: u32 = 0b101 << 8;
const ICR_STARTUP: u32 = 0b110 << 8;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Registers in a 4 KiB MMIO page, here mapped uncached at `virt`.
    XApic { phys: u64, virt: u64 },
    /// Registers are MSRs 0x800..0x8ff.
    X2Apic,
}

impl core::fmt::Display for Mode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Mode::XApic { phys, virt } => write!(f, "xAPIC at {phys:#x} (uncached at {virt:#x})"),
            Mode::X2Apic => f.write_str("x2APIC"),
        }
    }
}

/// Access to the running core's local APIC. Every core's registers sit at the
/// same MMIO address (xAPIC) or MSRs (x2APIC), so the one value that
/// [`init_bsp`] sets up serves every core.
pub struct LocalApic {
    mode: Mode,
}

static LAPIC: Once<LocalApic> = Once::new();
static BSP_PAT: AtomicU64 = AtomicU64::new(0);

fn rdmsr(msr: u32) -> u64 {
    // SAFETY: only architectural MSRs that exist on every x86-64 CPU with a
    // local APIC (IA32_APIC_BASE, IA32_PAT) or x2APIC MSRs while x2APIC mode
    // is on are read.
    unsafe { Msr::new(msr).read() }
}

/// The running core's APIC ID: the 32-bit x2APIC ID from CPUID leaf 0Bh where
/// the CPU has it, else the 8-bit initial APIC ID of CPUID.1:EBX[31:24]
/// (SDM Vol. 3A, 11.4.6 "Local APIC ID"). The start-up trampoline uses the
/// same rule to check that it runs on the core it was meant for.
pub fn cpu_apic_id() -> u32 {
    if super::cpuid(0, 0)[0] >= 0xb {
        let [_, ebx, _, edx] = super::cpuid(0xb, 0);
        if ebx != 0 {
            return edx;
        }
    }
    super::cpuid(1, 0)[1] >> 24
}

fn has_x2apic() -> bool {
    CpuId::new()
        .get_feature_info()
        .is_some_and(|f| f.has_x2apic())
}

/// Sets up the boot core's local APIC: finds its mode from IA32_APIC_BASE,
/// switches to x2APIC if `need_x2apic` (a target core's ID is above 254) and
/// the CPU can, maps the xAPIC page uncached, and software-enables the APIC as
/// the SDM's BSP sequence does (9.4.4.1 "Typical BSP Initialization
/// Sequence", step "enable the local APIC by setting bit 8 of the SVR").
pub fn init_bsp(
    phys_offset: u64,
    need_x2apic: bool,
    alloc: &mut FrameFn<'_>,
) -> Result<&'static LocalApic, ApicError> {
    if let Some(apic) = LAPIC.get() {
        return Ok(apic);
    }
    if !CpuId::new()
        .get_feature_info()
        .is_some_and(|f| f.has_apic())
    {
        return Err(ApicError::NoApic);
    }
    BSP_PAT.store(rdmsr(IA32_PAT), Ordering::Relaxed);
    let mut base = rdmsr(IA32_APIC_BASE);
    if base & APIC_BASE_EN == 0 {
        base |= APIC_BASE_EN;
        // SAFETY: setting EN in IA32_APIC_BASE (globally enabling the APIC
        // the firmware left off) is a valid transition from the disabled
        // state to xAPIC mode (SDM 11.12.5 "x2APIC State Transitions").
        unsafe { Msr::new(IA32_APIC_BASE).write(base) };
    }
    if need_x2apic && base & APIC_BASE_EXTD == 0 {
        if !has_x2apic() {
            return Err(ApicError::X2ApicNeeded);
        }
        base |= APIC_BASE_EXTD;
        // SAFETY: xAPIC → x2APIC (EN=1, EXTD=1) is a valid transition when
        // CPUID.1:ECX.x2APIC is set (SDM 11.12.5); nothing else uses the APIC
        // yet.
        unsafe { Msr::new(IA32_APIC_BASE).write(base) };
    }
    let mode = if base & APIC_BASE_EXTD != 0 {
        Mode::X2Apic
    } else {
        let phys = base & APIC_BASE_ADDR;
        let virt = paging::map_uncached(phys_offset, phys, alloc).map_err(ApicError::Map)?;
        Mode::XApic { phys, virt }
    };
    let apic = LAPIC.call_once(|| LocalApic { mode });
    apic.write(REG_SVR, apic.read(REG_SVR) | SVR_ENABLE | SPURIOUS_VECTOR);
    Ok(apic)
}

/// The running core's local APIC, once [`init_bsp`] ran on the boot core.
pub fn local() -> Option<&'static LocalApic> {
    LAPIC.get()
}

/// Brings an application processor's local APIC and PAT in line with the boot
/// core's: x2APIC mode if the BSP uses it (INIT keeps the mode, SDM 11.12.5),
/// software enabled, the same IA32_PAT. Call on the AP.
pub fn init_ap() {
    let Some(bsp) = LAPIC.get() else { return };
    let pat = BSP_PAT.load(Ordering::Relaxed);
    if rdmsr(IA32_PAT) != pat {
        // SAFETY: the value is the boot core's IA32_PAT, valid on this CPU of
        // the same model; the page tables were made for it.
        unsafe { Msr::new(IA32_PAT).write(pat) };
    }
    let base = rdmsr(IA32_APIC_BASE);
    if bsp.mode == Mode::X2Apic && base & APIC_BASE_EXTD == 0 {
        // SAFETY: the boot core switched to x2APIC, so the CPU supports it;
        // xAPIC → x2APIC is a valid transition (SDM 11.12.5).
        unsafe { Msr::new(IA32_APIC_BASE).write(base | APIC_BASE_EN | APIC_BASE_EXTD) };
    }
    // Registers are per core at the same address (xAPIC) or MSR (x2APIC), so
    // the boot core's accessor works here too.
    bsp.write(REG_SVR, bsp.read(REG_SVR) | SVR_ENABLE | SPURIOUS_VECTOR);
}

impl LocalApic {
    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn read(&self, reg: u32) -> u32 {
        match self.mode {
            Mode::XApic { virt, .. } => {
                // SAFETY: `virt` maps this core's 4 KiB APIC page uncached;
                // `reg` is a register offset inside it, 16-byte aligned.
                unsafe { core::ptr::read_volatile((virt + reg as u64) as *const u32) }
            }
            Mode::X2Apic => rdmsr(X2APIC_MSR_BASE + reg / 16) as u32,
        }
    }

    fn write(&self, reg: u32, value: u32) {
        match self.mode {
            Mode::XApic { virt, .. } => {
                // SAFETY: as in `read`; the registers written (SVR, EOI,
                // ICR) are writable.
                unsafe { core::ptr::write_volatile((virt + reg as u64) as *mut u32, value) }
            }
            Mode::X2Apic => {
                // SAFETY: x2APIC mode is on; the MSR is a writable x2APIC
                // register (SVR, EOI).
                unsafe { Msr::new(X2APIC_MSR_BASE + reg / 16).write(value as u64) }
            }
        }
    }

    /// This core's APIC ID as the APIC reports it.
    pub fn id(&self) -> u32 {
        match self.mode {
            Mode::XApic { .. } => self.read(REG_ID) >> 24,
            Mode::X2Apic => self.read(REG_ID),
        }
    }

    /// Sends one IPI with ICR low word `low` to the core with APIC ID `dest`.
    /// xAPIC: write ICR high then low (the low write sends), waiting for the
    /// delivery status to clear before and after (SDM 11.6.1). x2APIC: one
    /// WRMSR of the 64-bit ICR, destination in bits 63:32 (SDM 11.12.9).
    fn send(&self, dest: u32, low: u32) -> Result<(), ApicError> {
        match self.mode {
            Mode::XApic { .. } => {
                if dest > 0xfe {
                    return Err(ApicError::DestinationTooLarge(dest));
                }
                self.wait_idle()?;
                self.write(REG_ICR_HIGH, dest << 24);
                self.write(REG_ICR_LOW, low);
                self.wait_idle()
            }
            Mode::X2Apic => {
                // SAFETY: x2APIC mode is on; the ICR MSR takes any
                // destination and these delivery modes.
                unsafe { Msr::new(X2APIC_ICR).write(((dest as u64) << 32) | low as u64) };
                Ok(())
            }
        }
    }

    fn wait_idle(&self) -> Result<(), ApicError> {
        // Delivery takes a few bus cycles; a million reads is far beyond any
        // real or emulated APIC.
        for _ in 0..1_000_000 {
            if self.read(REG_ICR_LOW) & ICR_DELIVERY_PENDING == 0 {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        Err(ApicError::IcrStuck)
    }

    /// A fixed interrupt with `vector` (32..=255) to core `dest`.
    pub fn send_fixed(&self, dest: u32, vector: u8) -> Result<(), ApicError> {
        self.send(dest, ICR_FIXED | ICR_LEVEL_ASSERT | vector as u32)
    }

    /// End of interrupt for the running core's in-service interrupt (SDM
    /// 11.8.5 "Signaling Interrupt Servicing Completion"). An interrupt
    /// acknowledged on VM exit ("acknowledge interrupt on exit") is in
    /// service until this is written.
    pub fn eoi(&self) {
        self.write(REG_EOI, 0);
    }

    /// INIT IPI (level assert). No INIT level de-assert follows: Pentium 4
    /// and later do not support it (SDM 11.6.1, delivery mode 101b).
    pub fn send_init(&self, dest: u32) -> Result<(), ApicError> {
        self.send(dest, ICR_INIT | ICR_LEVEL_ASSERT)
    }

    /// Start-up IPI: the target starts in real mode at `vector << 12`
    /// (CS = vector << 8, IP = 0; SDM 9.4.4 "MP Initialization Example").
    pub fn send_startup(&self, dest: u32, vector: u8) -> Result<(), ApicError> {
        self.send(dest, ICR_STARTUP | ICR_LEVEL_ASSERT | vector as u32)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApicError {
    NoApic,
    X2ApicNeeded,
    DestinationTooLarge(u32),
    IcrStuck,
    Map(PagingError),
}

impl core::fmt::Display for ApicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ApicError::NoApic => f.write_str("the CPU has no local APIC (CPUID.1:EDX.APIC = 0)"),
            ApicError::X2ApicNeeded => f.write_str(
                "the MADT lists APIC IDs above 254, which need x2APIC, and the CPU has none",
            ),
            ApicError::DestinationTooLarge(id) => {
                write!(f, "APIC ID {id} cannot be addressed in xAPIC mode")
            }
            ApicError::IcrStuck => f.write_str(
                "the local APIC never finished sending an IPI (ICR delivery status stuck)",
            ),
            ApicError::Map(e) => write!(f, "mapping the local APIC page: {e}"),
        }
    }
}
