//! The VM: guest RAM in memslots backed by host frames, the one EPT all vCPUs
//! share, the loaded guest, and what every vCPU needs to start.

use crate::abi::{BootInfo, BOOT_INFO_MAGIC};
use crate::config::RunConfig;
use crate::dirty::DirtyBitmap;
use crate::ept::Ept;
use crate::frames::FRAME;
use crate::guest_image::{self, GuestMemoryWriter};
use crate::guest_layout::{self, Layout};
use crate::guest_state::GuestState;
use crate::mem::{self, KernelEptMemory};
use crate::memslot::{CacheMode, LookupStats, Memslot, Memslots, SlotFlags, MAX_SLOTS};
use crate::vmx::caps::{Controls, EptVpidCap, VmxCaps};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::AtomicU64;

pub type SlotBitmap = DirtyBitmap<Box<[AtomicU64]>>;

pub struct Vm {
    pub config: RunConfig<'static>,
    pub slots: Memslots,
    pub ept: Ept<KernelEptMemory>,
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
}

/// Writes guest memory through the memslots (the loader's path: VM-wide
/// lookups, no EPT involved).
pub struct GuestMem<'a> {
    pub slots: &'a Memslots,
    pub stats: LookupStats,
}

impl GuestMem<'_> {
    /// Runs `f` on each host-mapped piece of `[gpa, gpa + len)`; fails on the
    /// first byte no slot backs.
    fn chunks(
        &mut self,
        gpa: u64,
        len: u64,
        mut f: impl FnMut(*mut u8, usize, usize),
    ) -> Result<(), u64> {
        let mut done = 0u64;
        while done < len {
            let at = gpa.checked_add(done).ok_or(gpa)?;
            let gfn = at / FRAME;
            let slot = self.slots.lookup(gfn, &mut self.stats).ok_or(at)?;
            let slot_end = slot.end_gfn() * FRAME;
            let n = (len - done).min(slot_end - at);
            let host = slot.host_phys(gfn) + at % FRAME;
            f(mem::phys_to_virt(host), done as usize, n as usize);
            done += n;
        }
        Ok(())
    }

    pub fn write(&mut self, gpa: u64, bytes: &[u8]) -> Result<(), u64> {
        self.chunks(gpa, bytes.len() as u64, |dst, off, n| {
            // SAFETY: `dst..dst + n` lies in one slot's host frames, which
            // belong to the guest and are mapped; `bytes[off..off + n]` exists.
            unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr().add(off), dst, n) }
        })
    }

    pub fn read(&mut self, gpa: u64, out: &mut [u8]) -> Result<(), u64> {
        let len = out.len() as u64;
        let base = out.as_mut_ptr();
        self.chunks(gpa, len, |src, off, n| {
            // SAFETY: as in `write`, with the roles swapped. Guest memory may
            // change under us (other vCPUs): the copy is of bytes, so a torn
            // read is only torn data, never unsoundness in the host.
            unsafe { core::ptr::copy_nonoverlapping(src, base.add(off), n) }
        })
    }

    pub fn zero(&mut self, gpa: u64, len: u64) -> Result<(), u64> {
        self.chunks(gpa, len, |dst, _, n| {
            // SAFETY: as in `write`.
            unsafe { core::ptr::write_bytes(dst, 0, n) }
        })
    }
}

impl GuestMemoryWriter for GuestMem<'_> {
    type Error = u64;
    fn write(&mut self, gpa: u64, bytes: &[u8]) -> Result<(), u64> {
        GuestMem::write(self, gpa, bytes)
    }
    fn zero(&mut self, gpa: u64, len: u64) -> Result<(), u64> {
        GuestMem::zero(self, gpa, len)
    }
}

fn all_ones_frame() -> Result<u64, String> {
    let f = mem::alloc_raw(1).ok_or("out of memory for VMX bitmaps")?;
    // SAFETY: a fresh frame of ours, mapped.
    unsafe { core::ptr::write_bytes(mem::phys_to_virt(f), 0xff, FRAME as usize) };
    Ok(f)
}

impl Vm {
    /// Builds the VM: slots, guest RAM, the guest image, page tables, boot
    /// info for `vcpus` vCPUs, and an empty EPT.
    pub fn build(
        config: RunConfig<'static>,
        guest_elf: &[u8],
        caps: VmxCaps,
        controls: Controls,
        vcpus: u32,
    ) -> Result<Vm, String> {
        let cache: CacheMode = config
            .cache
            .parse()
            .map_err(|_| format!("unknown cache mode {:?}", config.cache))?;
        let base_bytes = config
            .mem_mib
            .checked_mul(1 << 20)
            .ok_or("guest memory size overflows")?;
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
            let host = mem::alloc_raw(bytes / FRAME).ok_or_else(|| {
                format!(
                    "out of host memory for guest RAM: a slot at {gpa:#x} needs {} KiB, {} KiB left",
                    bytes >> 10,
                    mem::remaining() >> 10
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
            let words = crate::dirty::words_needed(slot.npages());
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
        let mut gm = GuestMem {
            slots: &slots,
            stats: LookupStats::new(),
        };
        // Guest RAM starts zeroed: no host data may leak into the guest.
        gm.zero(0, mem_bytes)
            .map_err(|gpa| format!("zeroing guest memory failed at {gpa:#x}"))?;
        let image = guest_image::load(guest_elf, mem_bytes, guest_layout::IMAGE_MIN, &mut gm)
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
        for (i, d) in guest_layout::GDT.iter().enumerate() {
            gm.write(guest_layout::GDT_GPA + 8 * i as u64, &d.to_le_bytes())
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
        let ept = Ept::new(KernelEptMemory).map_err(|e| format!("EPT: {e}"))?;
        let ept_caps = caps.ept_caps();
        Ok(Vm {
            config,
            slots,
            ept,
            layout,
            entry: image.entry,
            vcpus,
            caps,
            controls,
            msr_bitmap: all_ones_frame()?,
            io_bitmaps: (all_ones_frame()?, all_ones_frame()?),
            invept_single: ept_caps.contains(EptVpidCap::INVEPT_SINGLE_CONTEXT),
            test_base: if dirty_run { test_base } else { mem_bytes },
            dirty,
        })
    }

    /// The initial state of vCPU `id`.
    pub fn initial_state(&self, id: u32) -> GuestState {
        GuestState::long_mode(self.entry, &self.layout, id, self.layout.boot_info_gpa(id))
    }

    pub fn guest_mem(&self) -> GuestMem<'_> {
        GuestMem {
            slots: &self.slots,
            stats: LookupStats::new(),
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
