//! The interrupt fabric of QEMU's `pc` machine: how an interrupt gets from
//! a device, a timer or another vCPU's ICR to the vCPU that takes it.
//!
//! ```text
//!  ISA IRQ n ──┬── 8259A IRQ n ── INTR ── LINT0 (ExtINT) of the vCPUs that accept it
//!              └── I/O APIC pin n (IRQ 0 → pin 2) ── message ─┐
//!  ICR write (Lapic::take_ipi) ─────────────────── message ──┤
//!                                                             ├─ destination resolution
//!  LAPIC timer (Lapic::poll_timer) ── own IRR                 │  (SDM 11.6.2) → IRR / NMI /
//!  PIT counter 0 edges ── ISA IRQ 0                           ┘  INIT / SIPI / ExtINT
//!  LAPIC EOI of a level vector ── I/O APIC EOI (Remote IRR) ── re-delivery if still asserted
//! ```
//!
//! Pure: no VMCS, no arch code. [`Router`] holds the device handles of
//! [`Platform`] and a small per-vCPU record ([`CpuEvent`]s, a latched NMI,
//! a pending ExtINT, the wait-for-SIPI state); the run loop asks it what to
//! inject ([`Router::pending_for`], [`Router::acknowledge`],
//! [`Router::take_nmi`]), what to do with the vCPU itself
//! ([`Router::take_cpu_event`]), and when to wake up
//! ([`Router::next_deadline_ns`]). Calls that can make something pending on
//! another vCPU return a [`KickSet`]: the vCPUs the caller must kick (the
//! cross-vCPU request mechanism, `vm::requests`). Devices that raise IRQs on
//! their own (the UART, through [`IsaIrqLine`]) and the I/O APIC's register
//! writes hand their kicks to [`Router::set_kicker`]'s function and to
//! [`Router::take_deferred_kicks`].
//!
//! Rules (Intel SDM Vol. 3A chapter 11; 82093AA and 8259A datasheets):
//! - Physical destination: APIC ID equal, 0xFF is a broadcast. Logical: the
//!   receiving APIC's DFR model decides; flat (0xF): LDR bits 31:24 & MDA != 0;
//!   cluster (0x0): MDA bits 7:4 equal LDR bits 31:28, and MDA bits 3:0 &
//!   LDR bits 27:24 != 0.
//!   A logical MDA of 0xFF is a broadcast to every APIC (SDM 11.6.2.2 "setting
//!   all destination bits to one"; KVM does the same).
//! - Shorthands (ICR bits 19:18): self (fixed only), all including self, all
//!   excluding self; the destination field is then ignored.
//! - Fixed: into the IRR (TMR for level-triggered) of every destination APIC
//!   that is software-enabled (SVR bit 8; SDM 11.4.7.2: a disabled APIC
//!   takes INIT, NMI and SIPI only) and not waiting for SIPI.
//! - Lowest priority (SDM 11.6.2.4): among those destinations, the focus
//!   processor (the vector already in its IRR or ISR, focus checking on:
//!   SVR bit 9 clear) if any, else the lowest APR; ties go to the lowest
//!   vCPU index.
//! - NMI: latched on each destination not waiting for SIPI (one pending at
//!   a time, as the NMI pin).
//! - INIT (level assert, or edge): resets the APIC (SDM 11.4.7.3: all but
//!   the APIC ID) and the vCPU; an AP then waits for SIPI, the BSP restarts
//!   at the reset vector (as KVM does). INIT level de-assert (trigger level,
//!   level 0) is ignored (SDM 11.6.1: not supported since the Pentium 4).
//! - Start-up: taken only by a vCPU in wait-for-SIPI, which starts in real
//!   mode at vector × 4096; ignored by a running vCPU (a second SIPI).
//! - ExtINT: the vCPU takes its vector from the 8259A's INTA cycle at
//!   injection time ([`Router::acknowledge`]). The 8259A's INTR reaches a
//!   vCPU whose LINT0 is unmasked ExtINT (the BSP's is, from reset, as
//!   firmware and QEMU leave it), whose APIC is globally disabled, or that
//!   got an ExtINT message; and only once software has initialized the
//!   8259A (before ICW2 its vectors would be 0-7, the exceptions').
//! - SMI is refused (there is no SMM), as are the reserved delivery modes.
//! - An I/O APIC level message that no APIC accepted leaves Remote IRR
//!   clear (82093AA 3.2.4: set when accepted), so the pin fires again on
//!   its next change rather than never.
//! - The ICR's delivery status reads idle: the model sends at once
//!   (`devices::lapic`).
//!
//! # From the run loop
//! - Make it with [`Router::for_platform`] before the VM takes the
//!   platform's fields apart ([`Start::BspOnly`] for kernel runs,
//!   [`Start::AllRunning`] for the native-ABI guests), and give it the kick
//!   function ([`Router::set_kicker`]).
//! - After a guest write to its APIC page: [`Router::after_lapic_write`]
//!   (ICR → IPIs, EOI → I/O APIC); after an access to the 8259A's ports:
//!   [`Router::after_pic_access`]; after a WRMSR to IA32_APIC_BASE:
//!   [`Router::set_apic_enabled`]. Kick what they return (a vCPU need not
//!   kick itself: [`KickSet::without`]).
//! - Before each VM entry: [`Router::take_cpu_event`] (INIT, SIPI),
//!   [`Router::poll_timers_for`] (or [`Router::poll_timers`]), then `vcpu::inject::decide` on
//!   [`Router::pending_for`]; inject an NMI after [`Router::take_nmi`], an
//!   interrupt with the vector [`Router::acknowledge`] returns (None: it
//!   went away, inject nothing).
//! - HLT: sleep until [`Router::has_work`] or [`Router::next_deadline_ns`]
//!   (or a kick); wait-for-SIPI: until [`Router::take_cpu_event`] has one.
//!
//! # Locking
//! Devices sit behind `spin::Mutex`; the per-vCPU records too. The order,
//! outermost first: a device driving an [`IrqLine`] (the UART) → the 8259A
//! or the I/O APIC → one local APIC → one vCPU record. The 8259A, the I/O
//! APIC and the PIT are never locked while a local APIC or a vCPU record is
//! held; two local APICs are never held at once; a vCPU record is a leaf.
//! The I/O APIC's register writes deliver from inside its lock (its message
//! sink), which the order allows. Call the router with no device lock held
//! (in particular not with the vCPU's own APIC locked: the MMIO exit
//! releases it before [`Router::after_lapic_write`]), and never from a
//! host interrupt handler (it could interrupt a holder of these locks on
//! its own core). The kick function runs with device locks held: it must
//! only send the host IPI.
#![forbid(unsafe_code)]

use crate::devices::ioapic::{self, Ioapic, IrqMessage};
use crate::devices::lapic::{Ipi, Lapic, Lvt, LVT_MASKED};
use crate::devices::pic::Pic;
use crate::devices::pit::Pit;
use crate::devices::IrqLine;
use crate::machine::pc::Platform;
use alloc::boxed::Box;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use spin::Mutex;

/// What is waiting for the vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Pending {
    pub nmi: bool,
    /// The highest-priority maskable interrupt the vCPU would accept now
    /// (its local APIC's, above PPR; or the PIC's through LINT0).
    pub interrupt: bool,
}

/// ISA IRQ lines (0-15).
pub const ISA_IRQS: u8 = 16;
/// The vCPU that is the bootstrap processor.
pub const BSP: u32 = 0;
/// The most vCPUs the router handles (xAPIC IDs, and [`KickSet`]'s size).
pub const MAX_VCPUS: usize = 255;
/// The I/O APIC pin of ISA IRQ `irq` (QEMU's wiring, and the interrupt
/// source override its MADT and ours describe): IRQ 0 → pin 2, else 1:1.
pub const fn isa_irq_to_gsi(irq: u8) -> usize {
    if irq == 0 {
        2
    } else {
        irq as usize
    }
}

/// Why an interrupt request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqError {
    /// Delivery mode 3, or 6 from the I/O APIC, or 7 from the ICR.
    ReservedDeliveryMode(u8),
    /// SMI: the vCPUs have no SMM.
    SmiNotSupported,
    /// A fixed or lowest-priority IPI with a vector below 16 is not sent
    /// (SDM 11.5.3, ESR "send illegal vector").
    IllegalVector(u8),
    /// A shorthand the delivery mode does not allow (self: fixed only).
    InvalidShorthand(DeliveryMode),
    /// Not an ISA IRQ line (0-15, and 2 is the 8259A cascade).
    NoSuchIsaIrq(u8),
    /// Not an I/O APIC pin.
    NoSuchPin(usize),
    /// More vCPUs than the xAPIC can address.
    TooManyVcpus(usize),
}

impl core::fmt::Display for IrqError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            IrqError::ReservedDeliveryMode(m) => write!(f, "reserved delivery mode {m}"),
            IrqError::SmiNotSupported => f.write_str("SMI delivery is not supported (no SMM)"),
            IrqError::IllegalVector(v) => write!(f, "illegal vector {v:#x} (below 16)"),
            IrqError::InvalidShorthand(m) => {
                write!(f, "the self shorthand allows fixed IPIs only, not {m:?}")
            }
            IrqError::NoSuchIsaIrq(2) => f.write_str("ISA IRQ 2 is the 8259A cascade"),
            IrqError::NoSuchIsaIrq(n) => write!(f, "no ISA IRQ {n} (0-15)"),
            IrqError::NoSuchPin(p) => write!(f, "no I/O APIC pin {p} (0-{})", ioapic::PINS - 1),
            IrqError::TooManyVcpus(n) => write!(f, "{n} vCPUs: the xAPIC addresses 1 to 255"),
        }
    }
}

/// The delivery mode of an interrupt message (SDM figure 11-12, 82093AA
/// table "Redirection Table Entry").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    Fixed,
    LowestPriority,
    Smi,
    Nmi,
    Init,
    StartUp,
    ExtInt,
}

impl DeliveryMode {
    fn from_bits(bits: u32) -> Result<Self, IrqError> {
        Ok(match bits & 7 {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            6 => DeliveryMode::StartUp,
            7 => DeliveryMode::ExtInt,
            b => return Err(IrqError::ReservedDeliveryMode(b as u8)),
        })
    }
}

/// The destination field, read in the destination mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// An APIC ID; 0xFF: every APIC.
    Physical(u8),
    /// A message destination address matched against each APIC's LDR.
    Logical(u8),
}

/// ICR bits 19:18.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shorthand {
    None,
    ToSelf,
    AllIncludingSelf,
    AllExcludingSelf,
}

/// An interrupt message on its way to the local APICs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message {
    /// The vector; for a start-up IPI, the start page (vector × 4096).
    pub vector: u8,
    pub mode: DeliveryMode,
    pub dest: Destination,
    pub shorthand: Shorthand,
    /// Trigger mode level: the vector's TMR bit is set, and its EOI is
    /// broadcast to the I/O APIC.
    pub level_triggered: bool,
    /// The level bit (assert); only INIT de-assert has it clear.
    pub assert: bool,
    /// The sending vCPU (for the self shorthands), if an IPI.
    pub source: Option<u32>,
}

impl Message {
    /// The message an I/O APIC redirection entry sends.
    pub fn from_ioapic(m: IrqMessage) -> Result<Message, IrqError> {
        let mode = match DeliveryMode::from_bits(u32::from(m.delivery_mode))? {
            // 110 is reserved in the redirection table.
            DeliveryMode::StartUp => return Err(IrqError::ReservedDeliveryMode(6)),
            DeliveryMode::Smi => return Err(IrqError::SmiNotSupported),
            mode => mode,
        };
        Ok(Message {
            vector: m.vector,
            mode,
            dest: if m.logical {
                Destination::Logical(m.dest)
            } else {
                Destination::Physical(m.dest)
            },
            shorthand: Shorthand::None,
            level_triggered: m.level,
            assert: true,
            source: None,
        })
    }

    /// The IPI vCPU `sender` sent by writing ICR low (SDM 11.6.1).
    pub fn from_icr(ipi: Ipi, sender: u32) -> Result<Message, IrqError> {
        let low = ipi.low;
        let mode = match DeliveryMode::from_bits(low >> 8)? {
            DeliveryMode::Smi => return Err(IrqError::SmiNotSupported),
            // 111 is reserved in the ICR (SDM figure 11-12).
            DeliveryMode::ExtInt => return Err(IrqError::ReservedDeliveryMode(7)),
            mode => mode,
        };
        let vector = low as u8;
        if matches!(mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority) && vector < 16 {
            return Err(IrqError::IllegalVector(vector));
        }
        let shorthand = match (low >> 18) & 3 {
            0 => Shorthand::None,
            1 => Shorthand::ToSelf,
            2 => Shorthand::AllIncludingSelf,
            _ => Shorthand::AllExcludingSelf,
        };
        if shorthand == Shorthand::ToSelf && mode != DeliveryMode::Fixed {
            return Err(IrqError::InvalidShorthand(mode));
        }
        let dest = (ipi.high >> 24) as u8;
        Ok(Message {
            vector,
            mode,
            dest: if low & (1 << 11) != 0 {
                Destination::Logical(dest)
            } else {
                Destination::Physical(dest)
            },
            shorthand,
            level_triggered: low & (1 << 15) != 0,
            assert: low & (1 << 14) != 0,
            source: Some(sender),
        })
    }
}

/// A set of vCPU indices: those that got something new and must be kicked
/// out of the guest (or woken from HLT).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KickSet([u64; 4]);

impl KickSet {
    pub fn insert(&mut self, vcpu: u32) {
        if let Some(w) = self.0.get_mut(vcpu as usize / 64) {
            *w |= 1 << (vcpu % 64);
        }
    }

    pub fn contains(&self, vcpu: u32) -> bool {
        self.0
            .get(vcpu as usize / 64)
            .is_some_and(|w| w & (1 << (vcpu % 64)) != 0)
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }

    /// Every vCPU in either set.
    pub fn union(mut self, other: KickSet) -> KickSet {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a |= b;
        }
        self
    }

    /// The set without `vcpu` (a vCPU need not kick itself).
    pub fn without(mut self, vcpu: u32) -> KickSet {
        if let Some(w) = self.0.get_mut(vcpu as usize / 64) {
            *w &= !(1 << (vcpu % 64));
        }
        self
    }

    /// The vCPU indices, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..256u32).filter(|&v| self.contains(v))
    }
}

impl core::ops::BitOr for KickSet {
    type Output = KickSet;
    fn bitor(self, rhs: KickSet) -> KickSet {
        self.union(rhs)
    }
}

impl core::ops::BitOrAssign for KickSet {
    fn bitor_assign(&mut self, rhs: KickSet) {
        *self = self.union(rhs);
    }
}

/// What the run loop must do to the vCPU itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuEvent {
    /// INIT was received: reset the vCPU's registers to the INIT state
    /// (SDM 10.1.1 table "IA-32 Processor States Following Power-up, Reset,
    /// or INIT"); then an AP enters wait-for-SIPI (`wait_for_sipi`), the
    /// BSP runs from the reset vector. Its local APIC is already reset.
    Init { wait_for_sipi: bool },
    /// A start-up IPI: start in real mode with CS.selector = vector << 8,
    /// CS.base = vector << 12, IP = 0.
    Startup { vector: u8 },
}

impl CpuEvent {
    /// Where a start-up IPI starts the vCPU (guest-physical).
    pub fn start_address(vector: u8) -> u64 {
        u64::from(vector) << 12
    }
}

/// Whether a vCPU runs or waits for a start-up IPI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    Running,
    WaitForSipi,
}

/// Which vCPUs start running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Every vCPU at the entry point (the project's native-ABI guests).
    AllRunning,
    /// The BSP only; the APs wait for INIT-SIPI (as hardware; kernel runs).
    BspOnly,
}

/// The per-vCPU record beyond the APIC's IRR.
#[derive(Clone, Copy, Debug, Default)]
struct CpuState {
    waiting_for_sipi: bool,
    nmi: bool,
    init: bool,
    sipi: Option<u8>,
    /// An ExtINT message arrived: the vector comes from the 8259A.
    extint: bool,
    /// IA32_APIC_BASE.EN clear: the APIC is off and LINT0 is the INTR pin
    /// (SDM 11.4.3).
    apic_off: bool,
}

/// A local APIC as destination resolution sees it (a snapshot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApicView {
    pub vcpu: u32,
    pub apic_id: u8,
    /// LDR bits 31:24.
    pub logical_id: u8,
    /// DFR model 0xF (flat); else cluster.
    pub flat: bool,
    /// SVR bit 8.
    pub enabled: bool,
    /// SVR bit 9 clear: focus checking on.
    pub focus_checking: bool,
    /// The message's vector is in this APIC's IRR or ISR.
    pub has_vector: bool,
    pub apr: u32,
    pub waiting_for_sipi: bool,
    /// IA32_APIC_BASE.EN set: the APIC receives messages at all.
    pub on_bus: bool,
}

impl ApicView {
    /// Whether a destination field names this APIC (SDM 11.6.2.1, 11.6.2.2).
    pub fn matches(&self, dest: Destination) -> bool {
        match dest {
            Destination::Physical(0xFF) | Destination::Logical(0xFF) => true,
            Destination::Physical(id) => self.apic_id == id,
            Destination::Logical(mda) if self.flat => self.logical_id & mda != 0,
            Destination::Logical(mda) => {
                mda >> 4 == self.logical_id >> 4 && mda & self.logical_id & 0xF != 0
            }
        }
    }

    /// Whether it takes fixed and lowest-priority interrupts.
    fn takes_fixed(&self) -> bool {
        self.on_bus && self.enabled && !self.waiting_for_sipi
    }
}

/// Lowest-priority arbitration among `targets` (SDM 11.6.2.4): the focus
/// processor if there is one, else the lowest APR, ties to the lowest vCPU.
pub fn lowest_priority(targets: &[ApicView]) -> Option<u32> {
    let eligible = || targets.iter().filter(|t| t.takes_fixed());
    if let Some(focus) = eligible().find(|t| t.focus_checking && t.has_vector) {
        return Some(focus.vcpu);
    }
    eligible().min_by_key(|t| (t.apr, t.vcpu)).map(|t| t.vcpu)
}

/// The 8259A's INTR, once software has initialized it
/// ([`Pic::initialized`]).
fn pic_intr(pic: &Pic) -> bool {
    pic.initialized() && pic.intr()
}

/// Whether LINT0 passes the 8259A's INTR: unmasked ExtINT (virtual wire).
fn lint0_extint(l: &Lapic) -> bool {
    let lvt = l.lvt(Lvt::Lint0);
    lvt & LVT_MASKED == 0 && (lvt >> 8) & 7 == 7
}

/// What [`Router::after_lapic_write`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LapicWrite {
    pub kicks: KickSet,
    /// The guest's IPI was refused (and not sent), and why.
    pub ipi_error: Option<IrqError>,
}

/// The device handles the router needs.
pub struct Parts {
    pub lapics: Vec<Arc<Mutex<Lapic>>>,
    pub pic: Arc<Mutex<Pic>>,
    pub ioapic: Arc<Mutex<Ioapic>>,
    pub pit: Arc<Mutex<Pit>>,
}

/// The interrupt router. See the [module documentation](self).
pub struct Router {
    lapics: Vec<Arc<Mutex<Lapic>>>,
    pic: Arc<Mutex<Pic>>,
    ioapic: Arc<Mutex<Ioapic>>,
    pit: Arc<Mutex<Pit>>,
    cpus: Vec<Mutex<CpuState>>,
    /// Kicks from devices that raised IRQs on their own.
    deferred: Mutex<KickSet>,
    kicker: spin::Once<&'static (dyn Fn(u32) + Sync)>,
    /// Messages refused (reserved or SMI delivery modes from the I/O APIC).
    dropped: AtomicU64,
    /// The guest has touched the interrupt hardware ([`Router::activate`]).
    active: AtomicBool,
}

impl core::fmt::Debug for Router {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Router")
            .field("vcpus", &self.lapics.len())
            .finish_non_exhaustive()
    }
}

impl Router {
    /// A router over these devices. With [`Start::BspOnly`] every vCPU but
    /// the BSP starts in wait-for-SIPI. The I/O APIC's register writes
    /// deliver through the router from now on (its message sink).
    pub fn new(parts: Parts, start: Start) -> Result<Arc<Router>, IrqError> {
        let n = parts.lapics.len();
        if n == 0 || n > MAX_VCPUS {
            return Err(IrqError::TooManyVcpus(n));
        }
        let cpus = (0..n)
            .map(|v| {
                Mutex::new(CpuState {
                    waiting_for_sipi: start == Start::BspOnly && v as u32 != BSP,
                    ..CpuState::default()
                })
            })
            .collect();
        let router = Arc::new_cyclic(|weak: &Weak<Router>| {
            let weak = weak.clone();
            parts
                .ioapic
                .lock()
                .set_sink(Box::new(move |m: IrqMessage| match weak.upgrade() {
                    Some(r) => {
                        let kicks = r.deliver_ioapic(m);
                        // Every kick is an APIC that accepted it.
                        let accepted = !kicks.is_empty();
                        r.notify(kicks);
                        accepted
                    }
                    None => true,
                }));
            Router {
                lapics: parts.lapics,
                pic: parts.pic,
                ioapic: parts.ioapic,
                pit: parts.pit,
                cpus,
                deferred: Mutex::new(KickSet::default()),
                kicker: spin::Once::new(),
                dropped: AtomicU64::new(0),
                active: AtomicBool::new(false),
            }
        });
        Ok(router)
    }

    /// The router of QEMU's `pc` machine: over [`Platform`]'s devices, with
    /// the BSP's LINT0 in virtual-wire mode (as firmware and QEMU's reset
    /// leave it) and COM1 on ISA IRQ 4.
    pub fn for_platform(p: &Platform, start: Start) -> Result<Arc<Router>, IrqError> {
        let router = Router::new(
            Parts {
                lapics: p.lapics.clone(),
                pic: p.pic.clone(),
                ioapic: p.ioapic.clone(),
                pit: p.pit.clone(),
            },
            start,
        )?;
        p.lapics[BSP as usize].lock().set_virtual_wire_lint0();
        let com1 = router.isa_line(4)?;
        p.com1.lock().set_irq_line(com1);
        Ok(router)
    }

    /// The guest made a port or MMIO access: from now on every entry polls
    /// the router ([`Router::is_active`]). Until the first, nothing can be
    /// pending anywhere: every source of an interrupt, NMI, INIT or SIPI (an
    /// APIC register, the ICR, the 8259, the PIT, the I/O APIC, a UART's
    /// IER) is programmed through one, and the devices start quiet. Native
    /// guests that only fault and call the hypervisor (the dirty-log
    /// benchmark) never pay for the polls. Called by the I/O and MMIO exits
    /// before they reach a device.
    pub fn activate(&self) {
        if !self.active.load(Ordering::Relaxed) {
            self.active.store(true, Ordering::Release);
        }
    }

    /// Whether [`Router::activate`] was called: entries poll the router
    /// only then.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// How many vCPUs.
    pub fn vcpus(&self) -> u32 {
        self.lapics.len() as u32
    }

    /// Where kicks from devices that raise IRQs on their own go (the
    /// cross-vCPU kick); set once.
    pub fn set_kicker(&self, kick: &'static (dyn Fn(u32) + Sync)) {
        self.kicker.call_once(|| kick);
    }

    /// Kicks that devices caused since the last call (also given to the
    /// kicker, if set).
    pub fn take_deferred_kicks(&self) -> KickSet {
        core::mem::take(&mut *self.deferred.lock())
    }

    fn notify(&self, kicks: KickSet) {
        if kicks.is_empty() {
            return;
        }
        *self.deferred.lock() |= kicks;
        if let Some(kick) = self.kicker.get() {
            kicks.iter().for_each(kick);
        }
    }

    /// Messages refused so far (an I/O APIC entry with a reserved or SMI
    /// delivery mode).
    pub fn dropped_messages(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// An [`IrqLine`] for ISA IRQ `irq`, for a device model to drive.
    pub fn isa_line(self: &Arc<Self>, irq: u8) -> Result<Arc<dyn IrqLine>, IrqError> {
        check_isa(irq)?;
        Ok(Arc::new(IsaIrqLine {
            router: self.clone(),
            irq,
        }))
    }

    /// An [`IrqLine`] for I/O APIC pin `pin` alone (the PCI lines, 16-23).
    pub fn gsi_line(self: &Arc<Self>, pin: usize) -> Result<Arc<dyn IrqLine>, IrqError> {
        if pin >= ioapic::PINS {
            return Err(IrqError::NoSuchPin(pin));
        }
        Ok(Arc::new(GsiLine {
            router: self.clone(),
            pin,
        }))
    }

    // ---- devices ----

    /// ISA IRQ `irq` is driven to `level`: the 8259A's IRQ `irq` and the
    /// I/O APIC's pin [`isa_irq_to_gsi`]`(irq)`.
    pub fn set_isa_irq(&self, irq: u8, level: bool) -> Result<KickSet, IrqError> {
        check_isa(irq)?;
        let intr = {
            let mut pic = self.pic.lock();
            pic.set_irq(irq, level);
            pic_intr(&pic)
        };
        let mut kicks = if intr {
            self.pic_takers()
        } else {
            KickSet::default()
        };
        kicks |= self.set_gsi(isa_irq_to_gsi(irq), level)?;
        Ok(kicks)
    }

    /// One edge on ISA IRQ `irq`: high, then low.
    pub fn pulse_isa_irq(&self, irq: u8) -> Result<KickSet, IrqError> {
        Ok(self
            .set_isa_irq(irq, true)?
            .union(self.set_isa_irq(irq, false)?))
    }

    /// I/O APIC pin `pin` (a GSI; 16-23 are the PCI lines) driven to
    /// `level`.
    pub fn set_gsi(&self, pin: usize, level: bool) -> Result<KickSet, IrqError> {
        if pin >= ioapic::PINS {
            return Err(IrqError::NoSuchPin(pin));
        }
        let msg = self.ioapic.lock().set_irq(pin, level);
        Ok(msg.map(|m| self.deliver_from_pin(m)).unwrap_or_default())
    }

    /// Delivers a message a pin sent outside the I/O APIC's lock; if no APIC
    /// accepted it (every kick is an acceptance), its Remote IRR clears.
    fn deliver_from_pin(&self, m: IrqMessage) -> KickSet {
        let kicks = self.deliver_ioapic(m);
        if kicks.is_empty() {
            self.ioapic.lock().not_accepted(usize::from(m.pin));
        }
        kicks
    }

    /// After a guest's access to the 8259A's ports (an IMR write that
    /// unmasks a request, an EOI that uncovers one): the vCPUs to kick if
    /// its INTR is now asserted.
    pub fn after_pic_access(&self) -> KickSet {
        if pic_intr(&self.pic.lock()) {
            self.pic_takers()
        } else {
            KickSet::default()
        }
    }

    /// The vCPUs that would take the 8259A's INTR now.
    fn pic_takers(&self) -> KickSet {
        let mut kicks = KickSet::default();
        for v in 0..self.vcpus() {
            if self.takes_pic(v, &self.cpu(v)) {
                kicks.insert(v);
            }
        }
        kicks
    }

    /// Whether vCPU `v`'s INTR input is the 8259A's: LINT0 unmasked ExtINT,
    /// the APIC globally off, or an ExtINT message waiting.
    fn takes_pic(&self, v: u32, c: &CpuState) -> bool {
        !c.waiting_for_sipi
            && (c.extint || c.apic_off || lint0_extint(&self.lapics[v as usize].lock()))
    }

    fn deliver_ioapic(&self, m: IrqMessage) -> KickSet {
        match Message::from_ioapic(m) {
            Ok(msg) => self.deliver(&msg),
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                KickSet::default()
            }
        }
    }

    // ---- delivery ----

    fn cpu(&self, v: u32) -> CpuState {
        *self.cpus[v as usize].lock()
    }

    fn view(&self, v: u32, vector: u8) -> ApicView {
        let view = {
            let l = self.lapics[v as usize].lock();
            ApicView {
                vcpu: v,
                apic_id: l.apic_id(),
                logical_id: (l.ldr() >> 24) as u8,
                flat: l.dfr() >> 28 == 0xF,
                enabled: l.software_enabled(),
                focus_checking: l.svr() & (1 << 9) == 0,
                has_vector: l.has_vector(vector),
                apr: l.apr(),
                waiting_for_sipi: false,
                on_bus: true,
            }
        };
        let c = self.cpu(v);
        ApicView {
            waiting_for_sipi: c.waiting_for_sipi,
            on_bus: !c.apic_off,
            ..view
        }
    }

    /// The APICs a message reaches (before the delivery mode's own rules).
    /// A globally disabled APIC is off the bus: it receives nothing, INIT
    /// and SIPI included (SDM 11.4.3).
    fn targets(&self, msg: &Message) -> Vec<ApicView> {
        let all = 0..self.vcpus();
        let views = all.map(|v| self.view(v, msg.vector)).filter(|t| t.on_bus);
        match msg.shorthand {
            Shorthand::None => views.filter(|t| t.matches(msg.dest)).collect(),
            Shorthand::ToSelf => views.filter(|t| Some(t.vcpu) == msg.source).collect(),
            Shorthand::AllIncludingSelf => views.collect(),
            Shorthand::AllExcludingSelf => views.filter(|t| Some(t.vcpu) != msg.source).collect(),
        }
    }

    /// Delivers `msg` to the local APICs it names. Returns the vCPUs that
    /// got something new.
    pub fn deliver(&self, msg: &Message) -> KickSet {
        let mut kicks = KickSet::default();
        if msg.mode == DeliveryMode::Init && msg.level_triggered && !msg.assert {
            return kicks; // INIT level de-assert (SDM 11.6.1)
        }
        let targets = self.targets(msg);
        match msg.mode {
            DeliveryMode::Fixed => {
                for t in targets.iter().filter(|t| t.takes_fixed()) {
                    if self.accept_fixed(t.vcpu, msg) {
                        kicks.insert(t.vcpu);
                    }
                }
            }
            DeliveryMode::LowestPriority => {
                if let Some(v) = lowest_priority(&targets) {
                    if self.accept_fixed(v, msg) {
                        kicks.insert(v);
                    }
                }
            }
            DeliveryMode::Nmi | DeliveryMode::ExtInt => {
                for t in &targets {
                    let mut c = self.cpus[t.vcpu as usize].lock();
                    if c.waiting_for_sipi {
                        continue;
                    }
                    if msg.mode == DeliveryMode::Nmi {
                        c.nmi = true;
                    } else {
                        c.extint = true;
                    }
                    kicks.insert(t.vcpu);
                }
            }
            DeliveryMode::Init => {
                for t in &targets {
                    self.init(t.vcpu);
                    kicks.insert(t.vcpu);
                }
            }
            DeliveryMode::StartUp => {
                for t in &targets {
                    let mut c = self.cpus[t.vcpu as usize].lock();
                    // Only in wait-for-SIPI; a running vCPU ignores it.
                    if c.waiting_for_sipi {
                        c.waiting_for_sipi = false;
                        c.sipi = Some(msg.vector);
                        kicks.insert(t.vcpu);
                    }
                }
            }
            // Refused when the message was made.
            DeliveryMode::Smi => {}
        }
        kicks
    }

    /// A fixed interrupt into vCPU `v`'s IRR, if its APIC takes it.
    fn accept_fixed(&self, v: u32, msg: &Message) -> bool {
        let c = self.cpu(v);
        if c.waiting_for_sipi || c.apic_off {
            return false;
        }
        let mut l = self.lapics[v as usize].lock();
        l.software_enabled() && l.accept_irq(msg.vector, msg.level_triggered)
    }

    /// INIT on vCPU `v` (SDM 11.4.7.3, 9.4).
    fn init(&self, v: u32) {
        self.lapics[v as usize].lock().reset();
        let mut c = self.cpus[v as usize].lock();
        *c = CpuState {
            waiting_for_sipi: v != BSP,
            init: true,
            apic_off: c.apic_off,
            ..CpuState::default()
        };
    }

    // ---- the vCPU's side ----

    /// After a guest write to vCPU `v`'s APIC page: sends the IPI an ICR
    /// write asked for, and broadcasts the EOI of level-triggered vectors
    /// to the I/O APIC (whose pins still asserted fire again).
    pub fn after_lapic_write(&self, v: u32) -> LapicWrite {
        let mut eois = Vec::new();
        let ipi = {
            let mut l = self.lapics[v as usize].lock();
            while let Some(vector) = l.take_level_eoi() {
                eois.push(vector);
            }
            l.take_ipi()
        };
        let mut out = LapicWrite::default();
        for vector in eois {
            out.kicks |= self.eoi_broadcast(vector);
        }
        if let Some(ipi) = ipi {
            match Message::from_icr(ipi, v) {
                Ok(msg) => out.kicks |= self.deliver(&msg),
                Err(e) => out.ipi_error = Some(e),
            }
        }
        out
    }

    /// A local APIC's EOI of level-triggered `vector`, broadcast to the
    /// I/O APIC (SDM 11.8.5): Remote IRR clears; a pin still asserted fires
    /// again.
    pub fn eoi_broadcast(&self, vector: u8) -> KickSet {
        let again: Vec<IrqMessage> = self.ioapic.lock().eoi(vector).collect();
        let mut kicks = KickSet::default();
        for m in again {
            kicks |= self.deliver_from_pin(m);
        }
        kicks
    }

    /// What is waiting for vCPU `v`, for `vcpu::inject::decide`.
    pub fn pending_for(&self, v: u32) -> Pending {
        let c = self.cpu(v);
        if c.waiting_for_sipi {
            return Pending::default();
        }
        let apic = !c.apic_off && self.lapics[v as usize].lock().highest_pending().is_some();
        let pic = self.takes_pic(v, &c) && pic_intr(&self.pic.lock());
        Pending {
            nmi: c.nmi,
            interrupt: apic || pic,
        }
    }

    /// Whether vCPU `v` has anything to wake up for: an interrupt or NMI to
    /// take, or an INIT or start-up to act on.
    pub fn has_work(&self, v: u32) -> bool {
        let c = self.cpu(v);
        let p = self.pending_for(v);
        p.nmi || p.interrupt || c.init || c.sipi.is_some()
    }

    /// The interrupt acknowledge cycle of vCPU `v`, at injection: the
    /// 8259A's vector (INTA) when its INTR reaches the vCPU, else the local
    /// APIC's highest pending vector, moved from IRR to ISR. None if nothing
    /// is pending any more.
    pub fn acknowledge(&self, v: u32) -> Option<u8> {
        let c = self.cpu(v);
        if c.waiting_for_sipi {
            return None;
        }
        if self.takes_pic(v, &c) {
            let vector = {
                let mut pic = self.pic.lock();
                pic_intr(&pic).then(|| pic.acknowledge())
            };
            self.cpus[v as usize].lock().extint = false;
            if vector.is_some() {
                return vector;
            }
        }
        if c.apic_off {
            return None;
        }
        let mut l = self.lapics[v as usize].lock();
        let vector = l.highest_pending()?;
        l.ack(vector);
        Some(vector)
    }

    /// Takes vCPU `v`'s pending NMI (the run loop injects it).
    pub fn take_nmi(&self, v: u32) -> bool {
        core::mem::take(&mut self.cpus[v as usize].lock().nmi)
    }

    /// The next INIT or start-up for the run loop to act on (INIT first).
    pub fn take_cpu_event(&self, v: u32) -> Option<CpuEvent> {
        let mut c = self.cpus[v as usize].lock();
        if core::mem::take(&mut c.init) {
            return Some(CpuEvent::Init {
                wait_for_sipi: v != BSP,
            });
        }
        c.sipi.take().map(|vector| CpuEvent::Startup { vector })
    }

    /// Whether vCPU `v` runs or waits for a start-up IPI.
    pub fn run_state(&self, v: u32) -> RunState {
        if self.cpu(v).waiting_for_sipi {
            RunState::WaitForSipi
        } else {
            RunState::Running
        }
    }

    /// vCPU `v`'s IA32_APIC_BASE.EN changed (SDM 11.4.3): while it is clear
    /// the APIC takes nothing and LINT0 is the 8259A's INTR pin.
    pub fn set_apic_enabled(&self, v: u32, enabled: bool) {
        self.cpus[v as usize].lock().apic_off = !enabled;
    }

    // ---- timers ----

    /// Delivers what the timers produced up to now: each local APIC's timer
    /// and PIT counter 0's edges (one edge on ISA IRQ 0, however many were
    /// missed: an edge-triggered input latches one).
    pub fn poll_timers(&self) -> KickSet {
        let mut kicks = KickSet::default();
        for v in 0..self.vcpus() {
            kicks |= self.poll_lapic_timer(v);
        }
        kicks | self.poll_pit()
    }

    /// [`Router::poll_timers`] for vCPU `v`'s own timers only: its local
    /// APIC's, and for the BSP the PIT (the timers
    /// [`Router::next_deadline_ns`] wakes `v` for). Each vCPU polling its
    /// own touches no other vCPU's APIC.
    pub fn poll_timers_for(&self, v: u32) -> KickSet {
        let kicks = self.poll_lapic_timer(v);
        if v == BSP {
            kicks | self.poll_pit()
        } else {
            kicks
        }
    }

    fn poll_lapic_timer(&self, v: u32) -> KickSet {
        let mut kicks = KickSet::default();
        let fired = {
            let mut l = self.lapics[v as usize].lock();
            l.poll_timer() && l.lvt(Lvt::Timer) & LVT_MASKED == 0
        };
        if fired {
            kicks.insert(v);
        }
        kicks
    }

    fn poll_pit(&self) -> KickSet {
        if self.pit.lock().take_irq0_edges() > 0 {
            // IRQ 0 is a valid ISA line.
            self.pulse_isa_irq(0).unwrap_or_default()
        } else {
            KickSet::default()
        }
    }

    /// When vCPU `v` must next wake (clock nanoseconds) for a timer: its
    /// local APIC timer, and for the BSP also PIT counter 0 (the BSP polls
    /// the machine's timers for everyone, [`Router::poll_timers`]).
    pub fn next_deadline_ns(&self, v: u32) -> Option<u64> {
        let lapic = self.lapics[v as usize].lock().timer_deadline_ns();
        let pit = if v == BSP {
            self.pit.lock().next_irq0_ns()
        } else {
            None
        };
        match (lapic, pit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

fn check_isa(irq: u8) -> Result<(), IrqError> {
    if irq >= ISA_IRQS || irq == 2 {
        return Err(IrqError::NoSuchIsaIrq(irq));
    }
    Ok(())
}

/// ISA IRQ line `irq` as a device sees it ([`Router::isa_line`]); the kicks
/// go to [`Router::set_kicker`] and [`Router::take_deferred_kicks`].
pub struct IsaIrqLine {
    router: Arc<Router>,
    irq: u8,
}

impl IrqLine for IsaIrqLine {
    fn set_level(&self, high: bool) {
        // The line was checked when it was made.
        if let Ok(kicks) = self.router.set_isa_irq(self.irq, high) {
            self.router.notify(kicks);
        }
    }
}

/// I/O APIC pin `pin` as a device sees it ([`Router::gsi_line`]).
pub struct GsiLine {
    router: Arc<Router>,
    pin: usize,
}

impl IrqLine for GsiLine {
    fn set_level(&self, high: bool) {
        // The pin was checked when the line was made.
        if let Ok(kicks) = self.router.set_gsi(self.pin, high) {
            self.router.notify(kicks);
        }
    }
}

#[cfg(test)]
mod tests;
