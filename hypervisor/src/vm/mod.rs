//! The VM: guest RAM in memslots backed by host frames, the one EPT all vCPUs
//! share, the loaded guest, what every vCPU needs to start, and the
//! cross-vCPU requests (`requests`). Pure: host memory comes through
//! [`HostMemory`], so a VM is built and its exits handled in host tests.

pub mod requests;

use crate::boot::abi::{BootInfo, BOOT_INFO_MAGIC};
use crate::boot::elf;
use crate::boot::format::{self, KernelFormat};
use crate::boot::multiboot::{self, BootParams};
use crate::boot::native::{self, Layout};
use crate::boot::{linux, pvh, KernelLoaded};
use crate::config::RunConfig;
use crate::devices::fw_cfg::FwCfg;
use crate::devices::lapic::Lapic;
use crate::devices::pic::Pic;
use crate::devices::scratch;
use crate::devices::serial::Serial;
use crate::devices::{Clock, MmioBus, PioBus, PlatformEvents, Terminal};
use crate::machine::board::Board;
use crate::machine::cpuid::CpuidPolicy;
use crate::machine::irq::{Router, Start};
use crate::machine::pc::{Platform, PlatformParams};
use crate::mm::dirty::DirtyBitmap;
use crate::mm::ept::Ept;
use crate::mm::ept::SIZE_2M;
use crate::mm::fault::EptPages;
use crate::mm::frames::FRAME;
use crate::mm::guest_mem::GuestMem;
use crate::mm::live::LiveSlots;
use crate::mm::memslot::{CacheMode, LookupStats, Memslot, Memslots, SlotFlags, MAX_SLOTS};
use crate::mm::HostMemory;
use crate::vmx::caps::{EptVpidCap, VmxCaps};
use crate::vmx::controls::{Controls, SecondaryProcBased};
use crate::x86::state::GuestState;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use requests::Requests;
use spin::Mutex;

pub type SlotBitmap = DirtyBitmap<Box<[AtomicU64]>>;

/// Where the guest's lines of output go (the kernel's console; a buffer in
/// tests). `vcpu` is the vCPU that wrote the line, where known.
pub trait GuestOutput: Sync {
    fn line(&self, vcpu: Option<u32>, text: &str);
    /// What the guest wrote to its UART (COM1), as it wrote it: a line
    /// with its `'\n'` or a piece of one (see [`Terminal::write`]). It
    /// goes to the console unchanged, as a real serial line would carry it.
    fn serial_write(&self, bytes: &[u8]);
    /// A character typed at the console for the guest's UART, if one is
    /// waiting (none by default).
    fn serial_read(&self) -> Option<u8> {
        None
    }
}

/// COM1's terminal: the VM's [`GuestOutput`].
struct SerialOut(&'static dyn GuestOutput);

impl Terminal for SerialOut {
    fn write(&mut self, bytes: &[u8]) {
        self.0.serial_write(bytes);
    }
    fn read(&mut self) -> Option<u8> {
        self.0.serial_read()
    }
}

/// How often the console is polled for COM1 input while the guest listens
/// (10 ms: typing feels immediate, an idle shell costs 100 wakeups a
/// second).
pub const CONSOLE_POLL_NS: u64 = 10_000_000;

/// COM1's I/O ports (QEMU's `pc` machine, IRQ 4).
pub use crate::machine::pc::COM1_BASE;

/// What a vCPU's counters are at a point in time, for a workload's phases.
#[derive(Clone, Copy, Default, Debug)]
pub struct Counters {
    pub exits: u64,
    pub ept_violations: u64,
    pub lookups: LookupStats,
}

impl Counters {
    pub const ZERO: Counters = Counters {
        exits: 0,
        ept_violations: 0,
        lookups: LookupStats::new(),
    };
    pub fn minus(self, o: Counters) -> Counters {
        Counters {
            exits: self.exits - o.exits,
            ept_violations: self.ept_violations - o.ept_violations,
            lookups: self.lookups.since(&o.lookups),
        }
    }
    pub fn plus(mut self, o: Counters) -> Counters {
        self.exits += o.exits;
        self.ept_violations += o.ept_violations;
        self.lookups.add(&o.lookups);
        self
    }
}

/// A controller that drives the VM from outside its vCPUs (the dirty-log
/// benchmark). The guest reaches it through HC_ITERATION_DONE.
pub trait Workload: Sync {
    /// vCPU `vcpu` finished pass `pass` with these counters. May wait; while
    /// it does, it calls `service` so that the vCPU still answers requests.
    /// Returns the hypercall's result (0 = go on, 1 = stop).
    fn iteration_done(
        &self,
        vcpu: u32,
        pass: u64,
        counters: Counters,
        service: &mut dyn FnMut(),
    ) -> u64;
    /// vCPU `vcpu` stopped for good.
    fn vcpu_stopped(&self, vcpu: u32);
}

pub struct Vm<M: HostMemory> {
    pub config: RunConfig<'static>,
    /// Interrupt routing: APICs, the I/O APIC, the 8259s, timers
    /// (`machine::irq`).
    pub irq: Arc<Router>,
    /// The memslots, changeable while vCPUs run (`mm::live`): a vCPU reads
    /// them inside an exit's read section (`Vcpu::slots`), the boot core
    /// through `with_slots`.
    pub slots: LiveSlots,
    /// The memslot cache mode (fixed for the run).
    pub cache_mode: CacheMode,
    /// Host memory: guest RAM, bitmaps and EPT tables come from here.
    pub mem: M,
    pub ept: Ept<M>,
    /// Cross-vCPU requests: flush guest-physical mappings, kick.
    pub requests: Requests,
    pub out: &'static dyn GuestOutput,
    pub workload: Option<&'static dyn Workload>,
    /// The guest's CPUID.
    pub cpuid: CpuidPolicy,
    /// Port I/O and MMIO: the device models of QEMU's `pc` machine, by
    /// address range (`machine::pc`).
    pub pio: PioBus,
    pub mmio: MmioBus,
    /// COM1, also on `pio` (kept typed to flush it at the end).
    pub com1: Arc<Mutex<Serial>>,
    /// When vCPU 0 next polls the console for COM1 (ns on `clock`), while
    /// the guest listens ([`Vm::poll_console`]).
    console_next: AtomicU64,
    /// What devices ask of the whole VM: an exit code, a reset, a power-off.
    /// Every vCPU stops on it (`exits::platform_stop`).
    pub events: Arc<PlatformEvents>,
    /// The 8259A pair, also on `pio`.
    pub pic: Arc<Mutex<Pic>>,
    /// Each vCPU's local APIC, by vCPU index (reached through its
    /// IA32_APIC_BASE page, not through `mmio`).
    pub lapics: Vec<Arc<Mutex<Lapic>>>,
    /// fw_cfg, also on `pio`: files are added here.
    pub fw_cfg: Arc<Mutex<FwCfg>>,
    /// The device timers' time source.
    pub clock: Arc<dyn Clock>,
    pub layout: Layout,
    pub entry: u64,
    /// A kernel run (`--kernel`): vCPU 0's entry state, set by the kernel's
    /// boot protocol. `None` for the project's own guests.
    pub kernel_state: Option<GuestState>,
    /// Where a kernel run's kernel and the rest of what its boot protocol
    /// hands it went.
    pub kernel_loaded: Option<KernelLoaded>,
    pub vcpus: u32,
    pub caps: VmxCaps,
    pub controls: Controls,
    /// All-ones bitmaps: every MSR access and port I/O exits.
    pub msr_bitmap: u64,
    pub io_bitmaps: (u64, u64),
    pub invept_single: bool,
    /// INVVPID can flush one VPID (else it flushes all).
    pub invvpid_single: bool,
    /// Where the dirty-log test memory starts: slots from here on are the
    /// ones a dirty-log run logs (none in other runs: it is the end of RAM).
    pub test_base: u64,
    /// Dirty bitmaps, indexed by slot id (one per slot, made with the slot).
    pub dirty: Vec<SlotBitmap>,
    /// EPT page sizes a fault may map (`--ept-pages`).
    pub ept_pages: EptPages,
}

fn all_ones_frame(mem: &impl HostMemory) -> Result<u64, String> {
    let f = mem.alloc(1).ok_or("out of memory for VMX bitmaps")?;
    // SAFETY: a fresh frame of ours, mapped (HostMemory's contract).
    unsafe { core::ptr::write_bytes(mem.ptr(f), 0xff, FRAME as usize) };
    Ok(f)
}

/// What the guest runs.
#[derive(Debug, Clone, Copy)]
pub enum GuestImage<'a> {
    /// One of the project's own 64-bit guests (`--guest`): the native ABI.
    Native(&'a [u8]),
    /// A kernel file (`--kernel`), its command line (`--append`) and
    /// module 0 (`--initrd`, empty = none), booted by its own protocol.
    Kernel {
        image: &'a [u8],
        append: &'a str,
        initrd: &'a [u8],
    },
}

/// The refusal of a kernel run on a CPU without "unrestricted guest" (a
/// kernel starts with paging off).
pub const NEEDS_UNRESTRICTED: &str =
    "kernel runs need VMX unrestricted guest (multiboot kernels start with paging off, \
     application processors in real mode); this CPU does not offer it";

/// What a VM is built from, besides its host memory.
pub struct VmParts {
    pub config: RunConfig<'static>,
    pub caps: VmxCaps,
    pub controls: Controls,
    pub vcpus: u32,
    pub out: &'static dyn GuestOutput,
    pub workload: Option<&'static dyn Workload>,
    /// The guest's CPUID.
    pub cpuid: CpuidPolicy,
    /// Sends vCPU `n` out of the guest (an IPI to its core).
    pub kick: &'static (dyn Fn(u32) + Sync),
    /// The time source of the device timers (LAPIC timer, PM timer, RTC).
    pub clock: Arc<dyn Clock>,
}

/// Writes the tables firmware leaves for an OS, in the BIOS area the board
/// map reserves: the ACPI tables, RSDP first, where an OS searches for the
/// RSDP (ACPI 6.5, 5.2.5.1), and the same machine as an MP table, for an OS
/// that does not read ACPI (Linux with `acpi=off`).
fn write_firmware_tables<M: HostMemory>(
    vcpus: u32,
    cpuid: &CpuidPolicy,
    gm: &mut GuestMem<'_, M>,
) -> Result<(), String> {
    use crate::machine::{acpi, board, mptable};
    let acpi = acpi::build(board::ACPI_BASE, vcpus).map_err(|e| format!("ACPI tables: {e}"))?;
    gm.write(acpi.base, &acpi.bytes)
        .map_err(|gpa| format!("writing the ACPI tables at {gpa:#x}"))?;
    let [signature, _, _, features] = cpuid.answer(0, 1, 0);
    let mp = mptable::build(mptable::DEFAULT_BASE, vcpus, signature, features)
        .map_err(|e| format!("MP table: {e}"))?;
    gm.write(mp.base, &mp.bytes)
        .map_err(|gpa| format!("writing the MP table at {gpa:#x}"))
}

/// Loads a kernel file into guest RAM laid out as the board map says and
/// returns the layout the report shows (all of RAM is the guest's), vCPU
/// 0's entry state and where the kernel's pieces went.
fn load_kernel<M: HostMemory>(
    config: &RunConfig,
    mem_bytes: u64,
    image: &[u8],
    append: &str,
    initrd: &[u8],
    vcpus: u32,
    gm: &mut GuestMem<'_, M>,
) -> Result<(Layout, GuestState, KernelLoaded), String> {
    let board = Board::new(mem_bytes).map_err(|e| format!("kernel run: {e}"))?;
    let kind = format::detect(image).map_err(|e| format!("kernel: {e}"))?;
    // Where `write_firmware_tables` puts the RSDP (first, at the tables'
    // base), which a Linux kernel is told.
    let rsdp = crate::machine::board::ACPI_BASE;
    let (state, loaded) = match kind {
        KernelFormat::Multiboot(header) => {
            // QEMU's command line: the kernel's name, then -append's text.
            let cmdline = if append.is_empty() {
                String::from(config.guest)
            } else {
                format!("{} {append}", config.guest)
            };
            let module_name = if config.initrd.is_empty() {
                "initrd"
            } else {
                config.initrd
            };
            let params = BootParams {
                cmdline: &cmdline,
                module: (!initrd.is_empty()).then_some((initrd, module_name)),
            };
            let (loaded, state) = multiboot::load(image, &header, &board, &params, gm)
                .map_err(|e| format!("kernel: {e}"))?;
            (state, KernelLoaded::Multiboot(loaded))
        }
        KernelFormat::LinuxBzImage { .. } => {
            // Linux takes -append's text as it is (no kernel name first).
            let params = linux::BootParams {
                cmdline: append,
                initrd,
                acpi_rsdp: Some(rsdp),
            };
            let (loaded, state) =
                linux::load(image, &board, &params, gm).map_err(|e| format!("kernel: {e}"))?;
            (state, KernelLoaded::Linux(loaded))
        }
        KernelFormat::Pvh { entry } => {
            let params = pvh::BootParams {
                cmdline: append,
                initrd,
                acpi_rsdp: Some(rsdp),
            };
            let (loaded, state) =
                pvh::load(image, entry, &board, &params, gm).map_err(|e| format!("kernel: {e}"))?;
            (state, KernelLoaded::Pvh(loaded))
        }
    };
    let layout = Layout {
        mem_bytes,
        stacks_start: mem_bytes,
        free_start: mem_bytes,
        vcpus,
    };
    Ok((layout, state, loaded))
}

impl<M: HostMemory> Vm<M> {
    /// Builds the VM: slots, guest RAM, the guest image, page tables, boot
    /// info for `vcpus` vCPUs, and an empty EPT.
    pub fn build(mem: M, parts: VmParts, guest_elf: &[u8]) -> Result<Self, String> {
        Self::build_image(mem, parts, GuestImage::Native(guest_elf))
    }

    /// Builds the VM for `image`: a native guest as in [`Self::build`], or
    /// a kernel loaded by its boot protocol into RAM laid out as the board
    /// map says (vCPU 0 starts; the others wait for the guest's INIT-SIPI).
    pub fn build_image(mem: M, parts: VmParts, image: GuestImage) -> Result<Self, String> {
        if let GuestImage::Kernel { .. } = image {
            if !parts
                .controls
                .secondary()
                .contains(SecondaryProcBased::UNRESTRICTED_GUEST)
            {
                return Err(NEEDS_UNRESTRICTED.into());
            }
            if parts.config.iterations > 0 {
                return Err("a kernel run is not a dirty-log run".into());
            }
        }
        let VmParts {
            config,
            caps,
            controls,
            vcpus,
            out,
            workload,
            cpuid,
            kick,
            clock,
        } = parts;
        let cache: CacheMode = config
            .cache
            .parse()
            .map_err(|_| format!("unknown cache mode {:?}", config.cache))?;
        let base_bytes = config
            .mem_mib
            .checked_mul(1 << 20)
            .ok_or("guest memory size overflows")?;
        let ept_pages: EptPages = config.ept_pages.parse()?;
        let nslots = u64::from(config.slots);
        // A dirty-log run lays memory out like dirty_log_perf_test: a base
        // slot (image, tables, stacks; never logged) followed by the test
        // memory, every vCPU's region, split into `slots` slots. Other runs
        // split all of guest RAM into `slots` slots.
        let dirty_run = config.iterations > 0;
        let (test_base, test_bytes) = if dirty_run {
            let bytes = u64::from(vcpus)
                .checked_mul(config.bytes_per_vcpu)
                .ok_or("test memory size overflows")?;
            (base_bytes, bytes)
        } else {
            (0, base_bytes)
        };
        let total_slots = nslots + dirty_run as u64;
        if total_slots as usize > MAX_SLOTS {
            return Err(format!(
                "{total_slots} memslots: at most {MAX_SLOTS} are supported"
            ));
        }
        if test_bytes % (nslots * FRAME) != 0 {
            return Err(format!(
                "{test_bytes} bytes of {} memory do not split into {nslots} slots of whole 4 KiB pages",
                if dirty_run { "test" } else { "guest" }
            ));
        }
        let mem_bytes = test_base + test_bytes;
        let slot_bytes = test_bytes / nslots;
        let mut slots = Memslots::new(cache);
        let add = |slots: &mut Memslots,
                   gpa: u64,
                   bytes: u64,
                   flags: SlotFlags|
         -> Result<(), String> {
            // Slots of 2 MiB or more start on a 2 MiB host boundary, so that
            // with `ept_pages=2m` every aligned 2 MiB of them can be one EPT
            // leaf (fault::huge_ok).
            let host = if bytes >= SIZE_2M {
                mem.alloc_aligned(bytes / FRAME, SIZE_2M)
            } else {
                mem.alloc(bytes / FRAME)
            };
            let host = host.ok_or_else(|| {
                format!(
                    "out of host memory for guest RAM: a slot at {gpa:#x} needs {} KiB, {} KiB left",
                    bytes >> 10,
                    mem.remaining() >> 10
                )
            })?;
            slots
                .insert(gpa, bytes, host, flags)
                .map(|_| ())
                .map_err(|e| format!("memslot at {gpa:#x}: {e}"))
        };
        if dirty_run {
            add(&mut slots, 0, base_bytes, SlotFlags::empty())?;
        }
        for i in 0..nslots {
            let flags = if config.readonly_slot == Some(i as u32) {
                SlotFlags::READONLY
            } else {
                SlotFlags::empty()
            };
            add(&mut slots, test_base + i * slot_bytes, slot_bytes, flags)?;
        }
        let mut dirty = Vec::new();
        for slot in slots.iter() {
            let words = crate::mm::dirty::words_needed(slot.npages());
            let storage: Box<[AtomicU64]> = (0..words).map(|_| AtomicU64::new(0)).collect();
            let bitmap = DirtyBitmap::new(storage, slot.npages())
                .map_err(|e| format!("dirty bitmap: {e:?}"))?;
            let id = usize::from(slot.id());
            if dirty.len() <= id {
                dirty.resize_with(id + 1, || None);
            }
            dirty[id] = Some(bitmap);
        }
        let dirty: Vec<SlotBitmap> = dirty
            .into_iter()
            .map(|b| b.ok_or("memslot ids are not dense"))
            .collect::<Result<_, _>>()?;
        let mut gm = GuestMem::new(&slots, &mem);
        // Guest RAM starts zeroed: no host data may leak into the guest.
        gm.zero(0, mem_bytes)
            .map_err(|gpa| format!("zeroing guest memory failed at {gpa:#x}"))?;
        let (layout, entry, kernel_state, kernel_loaded) = match image {
            GuestImage::Native(guest_elf) => {
                let image = elf::load(guest_elf, mem_bytes, native::IMAGE_MIN, &mut gm)
                    .map_err(|e| format!("guest image: {e}"))?;
                let layout = Layout::new(mem_bytes, image.end, vcpus)
                    .map_err(|e| format!("guest layout: {e}"))?;
                if dirty_run && layout.free_start > test_base {
                    return Err(format!(
                    "base memory of {} MiB is too small: image, tables and stacks need {:#x} bytes",
                    config.mem_mib, layout.free_start
                ));
                }
                for (gpa, value) in layout.page_table_entries() {
                    gm.write(gpa, &value.to_le_bytes())
                        .map_err(|gpa| format!("writing guest page tables at {gpa:#x}"))?;
                }
                for (i, d) in native::GDT.iter().enumerate() {
                    gm.write(native::GDT_GPA + 8 * i as u64, &d.to_le_bytes())
                        .map_err(|_| "writing the guest GDT")?;
                }
                for id in 0..vcpus {
                    let (region_start, region_bytes) = if dirty_run {
                        (
                            test_base + u64::from(id) * config.bytes_per_vcpu,
                            config.bytes_per_vcpu,
                        )
                    } else {
                        (0, 0)
                    };
                    let info = BootInfo {
                        magic: BOOT_INFO_MAGIC,
                        mem_bytes,
                        free_start: layout.free_start,
                        vcpu_id: id,
                        vcpu_count: vcpus,
                        region_start,
                        region_bytes,
                        // The controller says when to stop (HC_ITERATION_DONE).
                        iterations: 0,
                        _reserved: 0,
                    };
                    // SAFETY: BootInfo is plain old data (repr(C), integers only).
                    let bytes = unsafe {
                        core::slice::from_raw_parts(
                            (&info as *const BootInfo).cast::<u8>(),
                            core::mem::size_of::<BootInfo>(),
                        )
                    };
                    gm.write(layout.boot_info_gpa(id), bytes)
                        .map_err(|_| "writing boot info")?;
                }
                (layout, image.entry, None, None)
            }
            GuestImage::Kernel {
                image,
                append,
                initrd,
            } => {
                let (layout, state, loaded) =
                    load_kernel(&config, mem_bytes, image, append, initrd, vcpus, &mut gm)?;
                write_firmware_tables(vcpus, &cpuid, &mut gm)?;
                (layout, state.rip, Some(state), Some(loaded))
            }
        };
        let ept = Ept::new(mem.clone()).map_err(|e| format!("EPT: {e}"))?;
        let ept_caps = caps.ept_caps();
        const GIB4: u64 = 1 << 32;
        let mut platform = Platform::new(PlatformParams {
            vcpus,
            ram_below_4g: mem_bytes.min(GIB4),
            ram_above_4g: mem_bytes.saturating_sub(GIB4),
            clock,
            serial: Box::new(SerialOut(out)),
        })?;
        if config.guest == "mmio" {
            // The MMIO emulation test guest's device (devices::scratch).
            platform
                .mmio
                .insert(
                    scratch::SCRATCH_BASE,
                    scratch::SCRATCH_LEN,
                    Arc::new(Mutex::new(scratch::Scratch::new())),
                )
                .map_err(|e| format!("scratch MMIO device: {e}"))?;
        }
        // The interrupt fabric over the platform's devices. Every vCPU of a
        // native guest starts at its entry; a kernel starts on the BSP.
        let start = if kernel_state.is_some() {
            Start::BspOnly
        } else {
            Start::AllRunning
        };
        let irq = Router::for_platform(&platform, start).map_err(|e| format!("interrupts: {e}"))?;
        irq.set_kicker(kick);
        let msr_bitmap = all_ones_frame(&mem)?;
        let io_bitmaps = (all_ones_frame(&mem)?, all_ones_frame(&mem)?);
        Ok(Vm {
            irq,
            config,
            cache_mode: slots.mode(),
            slots: LiveSlots::new(slots),
            mem,
            ept,
            requests: Requests::new(vcpus, kick),
            out,
            workload,
            cpuid,
            pio: platform.pio,
            mmio: platform.mmio,
            com1: platform.com1,
            console_next: AtomicU64::new(0),
            events: platform.events,
            pic: platform.pic,
            lapics: platform.lapics,
            fw_cfg: platform.fw_cfg,
            clock: platform.clock,
            layout,
            entry,
            kernel_state,
            kernel_loaded,
            vcpus,
            caps,
            controls,
            msr_bitmap,
            io_bitmaps,
            invept_single: ept_caps.contains(EptVpidCap::INVEPT_SINGLE_CONTEXT),
            invvpid_single: ept_caps.contains(EptVpidCap::SINGLE_CONTEXT),
            test_base: if dirty_run { test_base } else { mem_bytes },
            dirty,
            ept_pages,
        })
    }

    /// The initial state of vCPU `id`.
    pub fn initial_state(&self, id: u32) -> GuestState {
        match self.kernel_state {
            Some(s) => s,
            None => native::initial_state(self.entry, &self.layout, id),
        }
    }

    /// Guest memory as the boot core sees it (the loader, the dirty-log
    /// controller): through the active memslot array, with memslot updates
    /// held off meanwhile. vCPUs use `Vcpu::guest_mem` instead.
    pub fn with_guest_mem<R>(&self, f: impl FnOnce(&mut GuestMem<'_, M>) -> R) -> R {
        self.slots
            .with_active(|slots| f(&mut GuestMem::new(slots, &self.mem)))
    }

    /// Guest memory for host tests, which change no slot while they look.
    #[cfg(test)]
    pub fn guest_mem(&self) -> GuestMem<'_, M> {
        GuestMem::new(self.slots.active_for_tests(), &self.mem)
    }

    /// The active memslot array, for the boot core (updates held off).
    pub fn with_slots<R>(&self, f: impl FnOnce(&Memslots) -> R) -> R {
        self.slots.with_active(f)
    }

    /// The console poll, run by vCPU 0 before each entry: while the guest
    /// waits for COM1's received-data interrupt (`Serial::listening`),
    /// every [`CONSOLE_POLL_NS`] it pulls what was typed into the UART
    /// (raising IRQ 4) and hands over an unfinished output line (a prompt,
    /// an echo). Returns when the next poll is due, so that a halted vCPU 0
    /// wakes for it; `None` while nobody listens (then nothing is polled
    /// and an idle guest sleeps undisturbed).
    pub fn poll_console(&self) -> Option<u64> {
        // A guest that has made no port access has not programmed the UART
        // to listen (`Router::activate`): no lock on every entry.
        if !self.irq.is_active() {
            return None;
        }
        let mut com1 = self.com1.lock();
        if !com1.listening() {
            return None;
        }
        // The clock only now: reading it costs, and nearly every entry of a
        // guest that does not listen skips it.
        let now_ns = self.clock.now_ns();
        let next = self.console_next.load(Ordering::Relaxed);
        if now_ns < next {
            return Some(next);
        }
        com1.flush();
        com1.poll_input();
        let next = now_ns + CONSOLE_POLL_NS;
        self.console_next.store(next, Ordering::Relaxed);
        Some(next)
    }

    /// Hands over the guest's unfinished output lines (at the end of a run).
    pub fn flush_output(&self) {
        self.com1.lock().flush();
    }

    /// vCPU `id` stopped: it holds no translation any more and will not
    /// finish another pass.
    pub fn vcpu_stopped(&self, id: u32) {
        self.requests.stopped(id);
        if let Some(w) = self.workload {
            w.vcpu_stopped(id);
        }
    }

    /// Sets the dirty bit of `gfn` in `slot`'s bitmap.
    pub fn mark_dirty(&self, slot: &Memslot, gfn: u64) {
        if let Some(b) = self.dirty.get(usize::from(slot.id())) {
            b.mark(gfn - slot.base_gfn());
        }
    }

    /// Logs a write the hypervisor made to guest memory at `gpa` (string
    /// I/O, not through the EPT), if its slot (in `slots`, the writer's
    /// view) is logged.
    pub fn mark_dirty_gpa(&self, slots: &Memslots, gpa: u64) {
        let gfn = gpa / FRAME;
        let mut stats = LookupStats::new();
        if let Some(slot) = slots.lookup(gfn, &mut stats) {
            if slot.flags().contains(SlotFlags::DIRTY_LOG) {
                self.mark_dirty(slot, gfn);
            }
        }
    }

    /// The slots a dirty-log run logs, in `slots` (the boot core's view,
    /// from [`Self::with_slots`]).
    pub fn test_slots<'s>(&self, slots: &'s Memslots) -> impl Iterator<Item = &'s Memslot> {
        let first = self.test_base / FRAME;
        slots.iter().filter(move |s| s.base_gfn() >= first)
    }

    pub fn mem_pages(&self) -> u64 {
        self.layout.mem_bytes / FRAME
    }
}

#[cfg(test)]
mod kernel_tests {
    use super::*;
    use crate::boot::multiboot::{BOOTLOADER_MAGIC, HEADER_MAGIC};
    use crate::machine::cpuid::Provided;
    use crate::mm::guest_mem::test_host;
    use crate::vmx::caps::skylake_for_tests;

    struct Quiet;
    impl GuestOutput for Quiet {
        fn line(&self, _: Option<u32>, _: &str) {}
        fn serial_write(&self, _: &[u8]) {}
    }
    static QUIET: Quiet = Quiet;
    fn no_kick(_: u32) {}
    fn host_cpu(_: u32, _: u32) -> [u32; 4] {
        [0; 4]
    }

    fn parts(mem_mib: u64, vcpus: u32) -> VmParts {
        let (caps, controls) = skylake_for_tests();
        VmParts {
            config: RunConfig {
                guest: "k.bin",
                mem_mib,
                initrd: "rd",
                ..RunConfig::default()
            },
            caps,
            controls,
            vcpus,
            out: &QUIET,
            workload: None,
            cpuid: CpuidPolicy::new(host_cpu, vcpus, Provided::default()),
            kick: &no_kick,
            clock: alloc::sync::Arc::new(crate::devices::test_support::ManualClock::default()),
        }
    }

    /// An a.out-kludge kernel at 1 MiB: header, then `hlt`s.
    fn kernel() -> Vec<u8> {
        let flags = 1u32 << 16 | 3;
        let mut k = Vec::new();
        for v in [
            HEADER_MAGIC,
            flags,
            0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags),
            0x10_0000,
            0x10_0000,
            0x10_1000,
            0x10_2000,
            0x10_0020,
        ] {
            k.extend(v.to_le_bytes());
        }
        k.resize(0x1000, 0xf4);
        k
    }

    #[test]
    fn a_kernel_run_starts_vcpu0_at_the_multiboot_entry() {
        let k = kernel();
        let image = GuestImage::Kernel {
            image: &k,
            append: "some words",
            initrd: b"module",
        };
        let vm = Vm::build_image(test_host::memory(), parts(16, 1), image).unwrap();
        let s = vm.initial_state(0);
        assert_eq!(s.rip, 0x10_0020);
        assert_eq!(s.gprs.rax, u64::from(BOOTLOADER_MAGIC));
        assert!(!s.ia32e());
        let Some(KernelLoaded::Multiboot(l)) = vm.kernel_loaded else {
            panic!("{:?}", vm.kernel_loaded)
        };
        assert_eq!(l.kernel, (0x10_0000, 0x10_2000));
        assert_eq!(l.module, Some((0x10_2000, 0x10_2006)));
        let mut gm = vm.guest_mem();
        let mut b = [0u8; 6];
        gm.read(0x10_2000, &mut b).unwrap();
        assert_eq!(&b, b"module");
        let mut word = [0u8; 4];
        gm.read(s.gprs.rbx + 16, &mut word).unwrap();
        let mut line = [0u8; 16];
        gm.read(u32::from_le_bytes(word).into(), &mut line).unwrap();
        assert_eq!(&line, b"k.bin some words");
        // bss zeroed, RAM above it too.
        gm.read(0x10_1800, &mut b).unwrap();
        assert_eq!(b, [0; 6]);
        // The ACPI RSDP where an OS searches for it.
        let mut sig = [0u8; 8];
        gm.read(crate::machine::board::ACPI_BASE, &mut sig).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
    }

    #[test]
    fn a_linux_run_starts_vcpu0_at_the_64_bit_entry_with_the_zero_page() {
        use crate::boot::linux::{self, hdr, zp};
        let k = linux::test_image::bzimage();
        let image = GuestImage::Kernel {
            image: &k,
            append: "console=ttyS0",
            initrd: b"initrd bytes",
        };
        let vm = Vm::build_image(test_host::memory(), parts(32, 2), image).unwrap();
        let s = vm.initial_state(0);
        assert!(s.ia32e());
        assert_eq!(s.rip, 0x100_0200);
        assert_eq!(s.gprs.rsi, linux::ZERO_PAGE);
        let Some(KernelLoaded::Linux(l)) = vm.kernel_loaded else {
            panic!("{:?}", vm.kernel_loaded)
        };
        assert_eq!(l.kernel.0, 0x100_0000);
        let mut gm = vm.guest_mem();
        let mut z = [0u8; 4096];
        gm.read(linux::ZERO_PAGE, &mut z).unwrap();
        let at = |o: usize| u32::from_le_bytes(z[o..o + 4].try_into().unwrap());
        // The command line is --append's text alone (no kernel name).
        let mut line = [0u8; 14];
        gm.read(at(hdr::CMD_LINE_PTR).into(), &mut line).unwrap();
        assert_eq!(&line, b"console=ttyS0\0");
        let mut rd = [0u8; 12];
        assert_eq!(at(hdr::RAMDISK_SIZE), 12);
        gm.read(at(hdr::RAMDISK_IMAGE).into(), &mut rd).unwrap();
        assert_eq!(&rd, b"initrd bytes");
        // acpi_rsdp_addr names the RSDP the VM wrote.
        let rsdp = u64::from(at(zp::ACPI_RSDP_ADDR));
        let mut sig = [0u8; 8];
        gm.read(rsdp, &mut sig).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
        assert_eq!(z[zp::E820_ENTRIES], 6);
    }

    #[test]
    fn kernel_runs_are_refused_clearly() {
        let k = kernel();
        let image = GuestImage::Kernel {
            image: &k,
            append: "",
            initrd: b"",
        };
        let err = |p: VmParts, i: GuestImage| match Vm::build_image(test_host::memory(), p, i) {
            Ok(_) => panic!("accepted"),
            Err(e) => e,
        };
        let mut p = parts(16, 1);
        p.controls.proc2 &= !SecondaryProcBased::UNRESTRICTED_GUEST.bits();
        assert_eq!(err(p, image), NEEDS_UNRESTRICTED);
        assert!(err(parts(1, 1), image).contains("at least 2 MiB"));
        let text = b"not a kernel at all".repeat(10);
        let e = err(
            parts(16, 1),
            GuestImage::Kernel {
                image: &text,
                append: "",
                initrd: b"",
            },
        );
        assert!(e.starts_with("kernel: not a kernel"), "{e}");
        // The native path is untouched.
        let elf = crate::boot::elf::guest_elf_for_tests();
        let vm = Vm::build(test_host::memory(), parts(16, 2), &elf).unwrap();
        assert!(vm.kernel_state.is_none() && vm.initial_state(0).ia32e());
    }
}
