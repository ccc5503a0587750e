//! Cores: which one is running (by its initial APIC ID), and starting the
//! application processors: ACPI MADT → APIC IDs → INIT-SIPI-SIPI through a
//! real-mode trampoline (`arch::trampoline`).
//!
//! Cores are indexed 0 (the boot core) .. online()-1 in start order. APs are
//! started one at a time, so an AP's index is fixed before it runs.

use crate::arch::apic::{self, LocalApic};
use crate::arch::paging::{self, FrameFn, PagingError};
use crate::arch::timer::Clock;
use crate::arch::trampoline::{Shared, Trampoline};
use crate::arch::MAX_CPUS;
use crate::mm::frames::FRAME;
use acpi::fadt::Fadt;
use acpi::madt::{Madt, MadtEntry};
use acpi::{AcpiError, AcpiHandler, AcpiTables, PhysicalMapping};
use alloc::vec::Vec;
use bootloader_api::info::{MemoryRegion, MemoryRegionKind};
use core::cell::RefCell;
use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use log::{info, warn};
use spin::Mutex;
use x86_64::registers::control::{Cr0, Cr3, Cr4, Cr4Flags};
use x86_64::registers::model_specific::{Efer, EferFlags};

const NONE: u32 = u32::MAX;
/// APIC IDs by core index (`apic::cpu_apic_id`: the x2APIC ID where the CPU
/// has one), both to find the running core and as IPI destinations.
static APIC_IDS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(NONE) }; MAX_CPUS];
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// Records the running core as the next index; returns it.
pub fn register_current() -> usize {
    let id = apic::cpu_apic_id();
    let index = COUNT.fetch_add(1, Ordering::SeqCst);
    assert!(index < MAX_CPUS, "more than {MAX_CPUS} cores");
    APIC_IDS[index].store(id, Ordering::SeqCst);
    index
}

/// The running core's index (0 before any core registered).
pub fn current_index() -> usize {
    let id = apic::cpu_apic_id();
    let n = COUNT.load(Ordering::Acquire).min(MAX_CPUS);
    (0..n)
        .find(|&i| APIC_IDS[i].load(Ordering::Relaxed) == id)
        .unwrap_or(0)
}

/// Cores running the hypervisor: the boot core and every AP that came up.
pub fn online() -> usize {
    COUNT.load(Ordering::Acquire).max(1)
}

/// The APIC ID of core `index` (x2APIC ID where the CPU has one), if it is
/// online: the destination for IPIs to that core.
pub fn apic_id_of(index: usize) -> Option<u32> {
    let id = APIC_IDS.get(index)?.load(Ordering::Acquire);
    (id != NONE).then_some(id)
}

/// The vector of [`kick`]'s IPI. A core in VMX non-root operation with
/// external-interrupt exiting leaves the guest for it; a core in the
/// hypervisor (interrupts off) keeps it pending until its next VM entry, which
/// then exits at once. Whoever takes it (acknowledge-on-exit, or an IDT
/// handler) must call [`eoi`].
pub const KICK_VECTOR: u8 = 0xf0;

/// Sends [`KICK_VECTOR`] to core `index` (by APIC ID, never by shorthand:
/// cores left halted by the firmware must not wake up). A no-op for a core
/// that is not online.
pub fn kick(index: usize) {
    let Some(lapic) = apic::local() else { return };
    if index >= online() {
        return;
    }
    if let Some(id) = apic_id_of(index) {
        if let Err(e) = lapic.send_fixed(id, KICK_VECTOR) {
            warn!("kick to cpu{index} (APIC {id}): {e}");
        }
    }
}

/// Signals the end of the running core's in-service interrupt to its local
/// APIC (after a [`KICK_VECTOR`] was acknowledged).
pub fn eoi() {
    if let Some(lapic) = apic::local() {
        lapic.eoi();
    }
}

/// What [`start_aps`] did.
#[derive(Debug)]
pub struct StartedCores {
    /// Cores online, including the boot core.
    pub count: usize,
    /// APIC IDs of cores that were sent INIT-SIPI-SIPI and did not check in.
    pub failed: Vec<u32>,
}

#[derive(Debug)]
pub enum SmpError {
    /// The bootloader found no RSDP.
    NoRsdp,
    /// The ACPI tables could not be read.
    Acpi(AcpiError),
    /// The ACPI tables have no MADT (APIC table).
    NoMadt,
    /// The MADT lists no enabled processor with a local APIC.
    NoCores,
    /// `start_aps` already ran.
    AlreadyStarted,
    /// No usable 4 KiB page in 0x1000..0x9f000 for the trampoline.
    NoLowPage,
    /// No clock for the INIT-SIPI-SIPI delays: the PIT does not count and
    /// the FADT names no PM timer in I/O space.
    NoClock,
    /// The boot core's paging cannot be reproduced on an AP.
    Unsupported(&'static str),
    Apic(apic::ApicError),
    Paging(PagingError),
    OutOfMemory,
}

impl fmt::Display for SmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SmpError::NoRsdp => f.write_str("no ACPI RSDP from the bootloader, so no MADT to find the cores"),
            SmpError::Acpi(e) => write!(f, "reading the ACPI tables: {e:?}"),
            SmpError::NoMadt => f.write_str("the ACPI tables have no MADT (\"APIC\" table) listing the cores"),
            SmpError::NoCores => f.write_str("the MADT lists no enabled processor local APIC"),
            SmpError::AlreadyStarted => f.write_str("the application processors were already started"),
            SmpError::NoLowPage => f.write_str(
                "no usable 4 KiB page below 0x9f000 in the memory map for the AP start-up trampoline",
            ),
            SmpError::NoClock => f.write_str(
                "no clock for the INIT-SIPI-SIPI delays (the PIT does not count, no ACPI PM timer)",
            ),
            SmpError::Unsupported(what) => write!(f, "cannot start APs: {what}"),
            SmpError::Apic(e) => write!(f, "local APIC: {e}"),
            SmpError::Paging(e) => write!(f, "AP page tables: {e}"),
            SmpError::OutOfMemory => f.write_str("out of memory for AP stacks or tables"),
        }
    }
}

impl From<PagingError> for SmpError {
    fn from(e: PagingError) -> Self {
        SmpError::Paging(e)
    }
}

impl From<apic::ApicError> for SmpError {
    fn from(e: apic::ApicError) -> Self {
        SmpError::Apic(e)
    }
}

/// Stack per AP. The boot core has the bootloader's (128 KiB).
pub const AP_STACK_BYTES: u64 = 64 * 1024;

/// SDM Vol. 3A, 9.4.4.1 "Typical BSP Initialization Sequence": INIT, wait
/// 10 ms, SIPI, wait 200 µs, SIPI, wait 200 µs. The second SIPI is sent only
/// if the AP has not started (a SIPI to a running core is ignored anyway).
const INIT_DELAY_US: u64 = 10_000;
const SIPI_DELAY_US: u64 = 200;
/// After the last SIPI, how long an AP has to check in.
const CHECKIN_TIMEOUT_US: u64 = 100_000;
/// An AP that claimed its parameters but has not checked in by then is
/// stuck in a way that makes its index and stack unsafe to reuse.
const CLAIMED_TIMEOUT_US: u64 = 1_000_000;

/// The SIPI vector's page must be below 1 MiB; 0xa0000 up is video memory
/// and ROM, and the 0x9f000 page may hold the EBDA.
const LOW_START: u64 = 0x1000;
const LOW_END: u64 = 0x9f000;

static STARTED: AtomicBool = AtomicBool::new(false);
/// APs that finished `ap_main`'s set-up.
static CHECKED_IN: AtomicUsize = AtomicUsize::new(0);
static AP_ENTRY: Mutex<Option<fn(usize) -> !>> = Mutex::new(None);

/// One processor from the MADT (ACPI 6.5, 5.2.12.2 "Processor Local APIC
/// Structure", 5.2.12.12 "Processor Local x2APIC Structure").
#[derive(Debug, Clone, Copy)]
struct MadtCore {
    apic_id: u32,
    /// Flags bit 0: the processor is usable now.
    enabled: bool,
    /// Flags bit 1 (ACPI 6.3+): a disabled processor that firmware can
    /// enable at run time (hot-add); not startable now either.
    online_capable: bool,
}

/// `AcpiHandler` over the bootloader's physical-memory mapping: a table at
/// physical `p` is read at `phys_offset + p`, and pages the mapping does not
/// cover are mapped there first.
#[derive(Clone)]
struct AcpiMap<'r, 'a> {
    phys_offset: u64,
    alloc: &'r RefCell<&'r mut FrameFn<'a>>,
}

impl AcpiHandler for AcpiMap<'_, '_> {
    unsafe fn map_physical_region<T>(&self, phys: usize, size: usize) -> PhysicalMapping<Self, T> {
        let mut alloc = self.alloc.borrow_mut();
        if let Err(e) = paging::ensure_mapped(self.phys_offset, phys as u64, size as u64, *alloc) {
            // The trait cannot fail; a table the firmware put where the
            // offset mapping shows something else is a broken machine.
            panic!("cannot map ACPI table at {phys:#x} (+{size:#x}): {e}");
        }
        let virt = NonNull::new((self.phys_offset + phys as u64) as *mut T)
            .expect("the physical-memory offset is not 0");
        // SAFETY: `[phys, phys + size)` is mapped at `virt` (just checked),
        // and `acpi` promises a valid `T` there.
        unsafe { PhysicalMapping::new(phys, virt, size, size, self.clone()) }
    }

    // The offset mapping stays; nothing to undo.
    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// The ACPI PM timer's I/O port, and whether its counter is 32-bit.
type PmTimerPort = (u16, bool);

/// Reads the MADT's processors, and the PM timer's port from the FADT.
fn read_acpi(
    rsdp: u64,
    phys_offset: u64,
    alloc: &mut FrameFn<'_>,
) -> Result<(Vec<MadtCore>, Option<PmTimerPort>), SmpError> {
    let alloc = RefCell::new(alloc);
    let handler = AcpiMap {
        phys_offset,
        alloc: &alloc,
    };
    // SAFETY: the bootloader found a valid RSDP at this physical address
    // (ACPI 6.5, 5.2.5 "Root System Description Pointer").
    let tables =
        unsafe { AcpiTables::from_rsdp(handler, rsdp as usize) }.map_err(SmpError::Acpi)?;
    let madt = match tables.find_table::<Madt>() {
        Ok(m) => m,
        Err(AcpiError::TableMissing(_)) => return Err(SmpError::NoMadt),
        Err(e) => return Err(SmpError::Acpi(e)),
    };
    let mut cores: Vec<MadtCore> = Vec::new();
    let mut add = |apic_id: u32, flags: u32| {
        if cores.iter().any(|c| c.apic_id == apic_id) {
            return; // ACPI: an ID < 255 is described once, as a Local APIC entry
        }
        cores.push(MadtCore {
            apic_id,
            enabled: flags & 1 != 0,
            online_capable: flags & 2 != 0,
        });
    };
    for entry in madt.get().entries() {
        match entry {
            MadtEntry::LocalApic(e) if e.apic_id != 0xff => add(e.apic_id as u32, e.flags),
            MadtEntry::LocalX2Apic(e) if { e.x2apic_id } != u32::MAX => add(e.x2apic_id, e.flags),
            _ => {}
        }
    }
    let pm_timer = match tables.find_table::<Fadt>() {
        Ok(fadt) => match fadt.pm_timer_block() {
            Ok(Some(g)) if g.address_space == acpi::address::AddressSpace::SystemIo => {
                Some((g.address as u16, { fadt.flags }.pm_timer_is_32_bit()))
            }
            _ => None,
        },
        Err(_) => None,
    };
    Ok((cores, pm_timer))
}

/// The lowest usable page in `LOW_START..LOW_END` by the memory map.
fn find_low_page(regions: &[MemoryRegion]) -> Option<u64> {
    regions
        .iter()
        .filter(|r| r.kind == MemoryRegionKind::Usable)
        .filter_map(|r| {
            let start = r.start.max(LOW_START).next_multiple_of(FRAME);
            let end = r.end.min(LOW_END) & !(FRAME - 1);
            (start + FRAME <= end).then_some(start)
        })
        .min()
}

/// Starts application processors from the MADT found through `rsdp_phys`
/// until `max_cores` cores run (the boot core is core 0), in MADT order; a
/// core that does not start is reported in `failed` and the next one is
/// tried. Each runs `ap_entry(index)` once its GDT, TSS and IDT are loaded.
/// Cores the MADT marks disabled are skipped; cores not needed are never
/// sent an IPI and stay halted.
///
/// `Err` means no AP was started (no RSDP, no MADT, no clock, no low page,
/// ...): the boot core runs alone. Once an AP runs, the result is `Ok`.
///
/// Call once, on the boot core, with interrupts off, after the heap is up.
/// `memory_regions` is the bootloader's memory map (for a usable page below
/// 1 MiB); `alloc_frames(n)` hands out `n` contiguous frames (page tables,
/// 64 KiB stacks).
pub fn start_aps(
    rsdp_phys: Option<u64>,
    phys_offset: u64,
    memory_regions: &[MemoryRegion],
    alloc_frames: &mut FrameFn<'_>,
    max_cores: usize,
    ap_entry: fn(usize) -> !,
) -> Result<StartedCores, SmpError> {
    if STARTED.swap(true, Ordering::SeqCst) {
        return Err(SmpError::AlreadyStarted);
    }
    if COUNT.load(Ordering::Acquire) == 0 {
        register_current(); // the boot core is core 0 in any case
    }
    let rsdp = rsdp_phys.ok_or(SmpError::NoRsdp)?;
    let (cores, pm_timer) = read_acpi(rsdp, phys_offset, alloc_frames)?;
    let bsp_id = apic::cpu_apic_id();
    let usable: Vec<&MadtCore> = cores.iter().filter(|c| c.enabled).collect();
    if usable.is_empty() {
        return Err(SmpError::NoCores);
    }
    let skipped = cores.len() - usable.len();
    let hotplug = cores
        .iter()
        .filter(|c| !c.enabled && c.online_capable)
        .count();
    info!(
        "MADT: {} processor(s), {} enabled{}; boot core APIC {}",
        cores.len(),
        usable.len(),
        if skipped > 0 {
            alloc::format!(" ({skipped} disabled, {hotplug} of them online-capable: skipped)")
        } else {
            alloc::string::String::new()
        },
        bsp_id
    );
    if !usable.iter().any(|c| c.apic_id == bsp_id) {
        warn!("the boot core's APIC ID {bsp_id} is not in the MADT");
    }
    let want = max_cores.clamp(1, MAX_CPUS);
    let aps: Vec<u32> = usable
        .iter()
        .map(|c| c.apic_id)
        .filter(|&id| id != bsp_id)
        .collect();
    if aps.len() > want - 1 {
        info!(
            "{} application processor(s), {} wanted; cores not needed stay halted",
            aps.len(),
            want - 1
        );
    }
    if aps.is_empty() || want == 1 {
        return Ok(StartedCores {
            count: online(),
            failed: Vec::new(),
        });
    }

    let clock = Clock::detect(pm_timer).ok_or(SmpError::NoClock)?;
    let need_x2apic = aps.iter().any(|&id| id > 0xfe);
    let lapic = apic::init_bsp(phys_offset, need_x2apic, alloc_frames)?;

    let low = find_low_page(memory_regions).ok_or(SmpError::NoLowPage)?;
    let shared = shared_state(phys_offset, low, alloc_frames)?;
    // SAFETY: the memory map says the page is usable RAM; the frame
    // allocator never hands out frames below 1 MiB (frames::LOW_LIMIT), so
    // nothing else uses it. It is mapped at the physical-memory offset.
    let tramp = unsafe { Trampoline::install(phys_offset, low, shared) };
    *AP_ENTRY.lock() = Some(ap_entry);
    info!(
        "starting {} AP(s): trampoline at {low:#x} (SIPI vector {:#04x}), {}, delays from the {}",
        (want - 1).min(aps.len()),
        tramp.vector(),
        lapic.mode(),
        clock.name()
    );

    // In MADT order until `want` cores run: a core that fails is replaced
    // by the next one, and cores after that are never sent an IPI.
    let mut failed = Vec::new();
    let mut stack: Option<u64> = None;
    for &id in &aps {
        let index = COUNT.load(Ordering::Acquire);
        if index >= want {
            break;
        }
        // A stack left over from a core that never claimed it is reused.
        let top = match stack {
            Some(top) => top,
            None => match alloc_frames(AP_STACK_BYTES / FRAME) {
                Some(phys) => phys_offset + phys + AP_STACK_BYTES,
                None => {
                    warn!("out of memory for AP stacks: APIC {id} and later cores not started");
                    break;
                }
            },
        };
        stack = Some(top);
        match start_one(lapic, &clock, &tramp, id, index, top) {
            Ok(true) => stack = None,
            Ok(false) => failed.push(id),
            Err(e) => {
                // Cores already online run `ap_entry`: report them, start
                // no more.
                warn!("starting APIC {id}: {e}; no further cores are started");
                failed.push(id);
                break;
            }
        }
    }
    Ok(StartedCores {
        count: online(),
        failed,
    })
}

/// The boot core's control registers as the APs should have them, and the
/// temporary page tables.
fn shared_state(phys_offset: u64, low: u64, alloc: &mut FrameFn<'_>) -> Result<Shared, SmpError> {
    let cr4 = Cr4::read();
    if cr4.contains(Cr4Flags::L5_PAGING) {
        return Err(SmpError::Unsupported("5-level paging"));
    }
    if cr4.contains(Cr4Flags::PCID) {
        return Err(SmpError::Unsupported(
            "CR4.PCIDE (cannot be set before long mode)",
        ));
    }
    // VMXE stays off: each AP turns VMX on itself.
    let cr4 = (cr4 - Cr4Flags::VIRTUAL_MACHINE_EXTENSIONS) | Cr4Flags::PHYSICAL_ADDRESS_EXTENSION;
    // LME plus what the kernel's page tables and code rely on (NXE: the
    // bootloader maps data no-execute).
    let efer = Efer::read()
        & (EferFlags::LONG_MODE_ENABLE
            | EferFlags::NO_EXECUTE_ENABLE
            | EferFlags::SYSTEM_CALL_EXTENSIONS);
    let (kernel_pml4, _) = Cr3::read_raw();
    let temp_cr3 = paging::trampoline_tables(phys_offset, low, alloc)?;
    Ok(Shared {
        temp_cr3,
        cr0: Cr0::read_raw(),
        cr4: cr4.bits(),
        efer: (efer | EferFlags::LONG_MODE_ENABLE).bits(),
        kernel_cr3: Cr3::read_raw().1 as u64 | kernel_pml4.start_address().as_u64(),
    })
}

/// INIT-SIPI-SIPI to core `id`, which is to become core `index` on the stack
/// ending at `stack_top`. Ok(true) once it checked in, Ok(false) if it did
/// not start (it is sent INIT again, which parks it in wait-for-SIPI).
fn start_one(
    lapic: &LocalApic,
    clock: &Clock,
    tramp: &Trampoline,
    id: u32,
    index: usize,
    stack_top: u64,
) -> Result<bool, SmpError> {
    let before = CHECKED_IN.load(Ordering::Acquire);
    let checked_in = || CHECKED_IN.load(Ordering::Acquire) > before;
    tramp.arm(id, index, stack_top);
    lapic.send_init(id)?;
    clock.delay_us(INIT_DELAY_US);
    lapic.send_startup(id, tramp.vector())?;
    clock.wait_until(SIPI_DELAY_US, || tramp.claimed());
    if !tramp.claimed() {
        lapic.send_startup(id, tramp.vector())?;
        clock.delay_us(SIPI_DELAY_US);
    }
    if clock.wait_until(CHECKIN_TIMEOUT_US, checked_in) {
        tramp.disarm();
        return Ok(true);
    }
    if tramp.disarm() {
        warn!(
            "APIC {id} did not start within {} ms of INIT-SIPI-SIPI; going on without it",
            (INIT_DELAY_US + 2 * SIPI_DELAY_US + CHECKIN_TIMEOUT_US) / 1000
        );
        // Back to wait-for-SIPI, so it cannot wake up later on its own.
        lapic.send_init(id)?;
        return Ok(false);
    }
    // It claimed the parameters (so it owns index and stack) but is slow.
    if clock.wait_until(CLAIMED_TIMEOUT_US, checked_in) {
        return Ok(true);
    }
    warn!("APIC {id} entered the trampoline but never checked in");
    Err(SmpError::Unsupported(
        "an AP hung during start-up; its index and stack cannot be reused",
    ))
}

/// Rust entry of an application processor, from `arch::trampoline` on the
/// kernel's page tables and the AP's own stack, interrupts off.
pub(crate) extern "C" fn ap_main(index: usize) -> ! {
    // The trampoline's GDT is no longer mapped: load this core's own before
    // anything could load a segment.
    crate::arch::gdt::init(index);
    crate::arch::idt::init();
    let me = register_current();
    if me != index {
        crate::println!("AP: registered as core {me}, expected {index}; halting");
        crate::arch::halt_forever();
    }
    apic::init_ap();
    info!("cpu{index} (APIC {}) online", apic::cpu_apic_id());
    CHECKED_IN.fetch_add(1, Ordering::AcqRel);
    let entry = (*AP_ENTRY.lock()).expect("start_aps sets the AP entry first");
    entry(index)
}

/// Masks every line of both 8259 PICs (OCW1 = 0xff to ports 21h and A1h), so
/// no legacy external interrupt reaches a core.
pub fn mask_legacy_pic() {
    use x86_64::instructions::port::Port;
    // SAFETY: writing the interrupt mask registers of the master and slave
    // 8259 only masks interrupt lines; nothing else programs the PICs.
    unsafe {
        Port::<u8>::new(0x21).write(0xff);
        Port::<u8>::new(0xa1).write(0xff);
    }
}
