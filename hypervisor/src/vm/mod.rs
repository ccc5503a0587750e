//! The VM: guest RAM in memslots backed by host frames, the one EPT all vCPUs
//! share, the loaded guest, what every vCPU needs to start, and the
//! cross-vCPU requests (`requests`). Pure: host memory comes through
//! [`HostMemory`], so a VM is built and its exits handled in host tests.

pub mod requests;

use crate::boot::abi::{BootInfo, BOOT_INFO_MAGIC};
use crate::boot::elf;
use crate::boot::native::{self, Layout};
use crate::config::RunConfig;
use crate::devices::serial::{self, Serial};
use crate::devices::{MmioBus, PioBus, SerialSink};
use crate::machine::cpuid::CpuidPolicy;
use crate::mm::dirty::DirtyBitmap;
use crate::mm::ept::Ept;
use crate::mm::ept::SIZE_2M;
use crate::mm::fault::EptPages;
use crate::mm::frames::FRAME;
use crate::mm::guest_mem::GuestMem;
use crate::mm::memslot::{CacheMode, LookupStats, Memslot, Memslots, SlotFlags, MAX_SLOTS};
use crate::mm::HostMemory;
use crate::vmx::caps::{EptVpidCap, VmxCaps};
use crate::vmx::controls::Controls;
use crate::x86::state::GuestState;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::AtomicU64;
use requests::Requests;
use spin::Mutex;

pub type SlotBitmap = DirtyBitmap<Box<[AtomicU64]>>;

/// Where the guest's lines of output go (the kernel's console; a buffer in
/// tests). `vcpu` is the vCPU that wrote the line, where known.
pub trait GuestOutput: Sync {
    fn line(&self, vcpu: Option<u32>, text: &str);
    /// A line the guest wrote to its UART (COM1). The UART does not know
    /// which vCPU wrote it; the kernel names the vCPU of the core it runs on.
    fn serial_line(&self, text: &str);
}

/// COM1's output, to the VM's [`GuestOutput`].
struct SerialOut(&'static dyn GuestOutput);

impl SerialSink for SerialOut {
    fn line(&mut self, text: &[u8]) {
        self.0.serial_line(&String::from_utf8_lossy(text));
    }
}

/// COM1's I/O ports (QEMU's `pc` machine, IRQ 4).
pub const COM1_BASE: u64 = 0x3f8;

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
    pub slots: Memslots,
    /// Host memory: guest RAM, bitmaps and EPT tables come from here.
    pub mem: M,
    pub ept: Ept<M>,
    /// Cross-vCPU requests: flush guest-physical mappings, kick.
    pub requests: Requests,
    pub out: &'static dyn GuestOutput,
    pub workload: Option<&'static dyn Workload>,
    /// The guest's CPUID.
    pub cpuid: CpuidPolicy,
    /// Port I/O and MMIO: the device models, by address range.
    pub pio: PioBus,
    pub mmio: MmioBus,
    /// COM1, also on `pio` (kept typed to flush it at the end).
    pub com1: Arc<Mutex<Serial>>,
    pub layout: Layout,
    pub entry: u64,
    pub vcpus: u32,
    pub caps: VmxCaps,
    pub controls: Controls,
    /// All-ones bitmaps: every MSR access and port I/O exits.
    pub msr_bitmap: u64,
    pub io_bitmaps: (u64, u64),
    pub invept_single: bool,
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
}

impl<M: HostMemory> Vm<M> {
    /// Builds the VM: slots, guest RAM, the guest image, page tables, boot
    /// info for `vcpus` vCPUs, and an empty EPT.
    pub fn build(mem: M, parts: VmParts, guest_elf: &[u8]) -> Result<Self, String> {
        let VmParts {
            config,
            caps,
            controls,
            vcpus,
            out,
            workload,
            cpuid,
            kick,
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
        let image = elf::load(guest_elf, mem_bytes, native::IMAGE_MIN, &mut gm)
            .map_err(|e| format!("guest image: {e}"))?;
        let layout =
            Layout::new(mem_bytes, image.end, vcpus).map_err(|e| format!("guest layout: {e}"))?;
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
        let ept = Ept::new(mem.clone()).map_err(|e| format!("EPT: {e}"))?;
        let ept_caps = caps.ept_caps();
        let com1 = Arc::new(Mutex::new(Serial::new(Box::new(SerialOut(out)))));
        let mut pio = PioBus::new();
        pio.insert(COM1_BASE, serial::PORT_COUNT, com1.clone())
            .map_err(|e| format!("COM1: {e}"))?;
        let msr_bitmap = all_ones_frame(&mem)?;
        let io_bitmaps = (all_ones_frame(&mem)?, all_ones_frame(&mem)?);
        Ok(Vm {
            config,
            slots,
            mem,
            ept,
            requests: Requests::new(vcpus, kick),
            out,
            workload,
            cpuid,
            pio,
            mmio: MmioBus::new(),
            com1,
            layout,
            entry: image.entry,
            vcpus,
            caps,
            controls,
            msr_bitmap,
            io_bitmaps,
            invept_single: ept_caps.contains(EptVpidCap::INVEPT_SINGLE_CONTEXT),
            test_base: if dirty_run { test_base } else { mem_bytes },
            dirty,
            ept_pages,
        })
    }

    /// The initial state of vCPU `id`.
    pub fn initial_state(&self, id: u32) -> GuestState {
        native::initial_state(self.entry, &self.layout, id)
    }

    pub fn guest_mem(&self) -> GuestMem<'_, M> {
        GuestMem::new(&self.slots, &self.mem)
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

    /// The slots a dirty-log run logs.
    pub fn test_slots(&self) -> impl Iterator<Item = &Memslot> {
        let first = self.test_base / FRAME;
        self.slots.iter().filter(move |s| s.base_gfn() >= first)
    }

    pub fn mem_pages(&self) -> u64 {
        self.layout.mem_bytes / FRAME
    }
}
