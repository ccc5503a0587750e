//! The dirty-log run: the boot core plays dirty_log_perf_test's main thread
//! (the controller) while every other core runs one vCPU of the `dirtylog`
//! guest, each writing its own region.
//!
//! Phases, with KVM's names: "Populate memory" (the guest's first pass, log
//! off), "Enabling dirty logging", then per iteration "dirty memory" (one
//! pass of every vCPU), "get dirty log" (the bitmaps are swapped out) and
//! "clear dirty log" (exactly the harvested pages are write-protected again
//! and every core's EPT translations are flushed), and "Disabling dirty
//! logging".
//!
//! Two modes. `sync` (the benchmark): vCPUs wait in HC_ITERATION_DONE while
//! the controller reads the log, so each iteration's dirty pages must equal
//! the pages written, exactly. `concurrent` (the exactness test): vCPUs never
//! wait; the controller reads and clears the log while they write, keeps a
//! shadow copy of guest memory updated from each round's dirty pages (as live
//! migration does), and at the end compares shadow and memory: any lost
//! write shows up as a mismatch.
//!
//! TLB flushes: write-protecting a page is only safe once no core can still
//! use a cached writable translation. The controller bumps a generation and
//! kicks every vCPU out of the guest with an IPI; each vCPU runs INVEPT
//! before its next entry and acknowledges the generation.

use crate::boot::abi::HC_OK;
use crate::limits::MAX_CPUS;
use crate::mm::frames::FRAME;
use crate::mm::host::KernelMemory;
use crate::mm::memslot::SlotFlags;
use crate::mm::HostMemory;
use crate::vm::{Counters, Vm, Workload};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use spin::Mutex;

/// Passes completed by each vCPU (the guest's HC_ITERATION_DONE argument).
static DONE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Highest pass the vCPUs may start (sync mode).
static GO: AtomicU64 = AtomicU64::new(1);
static STOP: AtomicBool = AtomicBool::new(false);
/// Each vCPU's counters as of its last HC_ITERATION_DONE.
static SNAPSHOT: [Mutex<Counters>; MAX_CPUS] = [const { Mutex::new(Counters::ZERO) }; MAX_CPUS];
/// Whether vCPUs keep writing while the log is read (concurrent mode).
static CONCURRENT: AtomicBool = AtomicBool::new(false);

/// The dirty-log run as the VM's workload: the guest's HC_ITERATION_DONE
/// lands here.
pub struct DirtyLog;

/// The one instance, for `VmParts::workload`.
pub static WORKLOAD: DirtyLog = DirtyLog;

impl Workload for DirtyLog {
    /// Records the pass and the counters; in sync mode waits for the
    /// controller. Returns 0 to go on, 1 to stop.
    fn iteration_done(
        &self,
        vcpu: u32,
        pass: u64,
        counters: Counters,
        service: &mut dyn FnMut(),
    ) -> u64 {
        let id = vcpu as usize;
        *SNAPSHOT[id].lock() = counters;
        DONE[id].store(pass, Ordering::Release);
        loop {
            if STOP.load(Ordering::Acquire) {
                return 1;
            }
            if CONCURRENT.load(Ordering::Acquire) || GO.load(Ordering::Acquire) > pass {
                return HC_OK;
            }
            // Parked outside the guest: still answer flush requests.
            service();
            core::hint::spin_loop();
        }
    }

    fn vcpu_stopped(&self, vcpu: u32) {
        if let Some(d) = DONE.get(vcpu as usize) {
            d.store(u64::MAX, Ordering::Release);
        }
    }
}

fn wait_all(vcpus: u32, pass: u64) {
    for done in &DONE[..vcpus as usize] {
        while done.load(Ordering::Acquire) < pass {
            core::hint::spin_loop();
        }
    }
}

fn counters(vcpus: u32) -> Counters {
    (0..vcpus as usize).fold(Counters::ZERO, |a, id| a.plus(*SNAPSHOT[id].lock()))
}

pub struct Phase {
    pub name: String,
    pub cycles: u64,
    pub counters: Counters,
    /// (pages written, pages dirty) for "dirty memory" phases.
    pub pages: Option<(u64, u64)>,
}

pub struct Outcome {
    pub phases: Vec<Phase>,
    pub pages_per_vcpu: u64,
    /// Concurrent mode: pages whose shadow copy differs from memory.
    pub mismatches: Option<u64>,
    pub rounds: u64,
    pub ok: bool,
}

struct Harvest {
    /// Per slot id: the swapped-out bitmap words.
    words: Vec<Vec<u64>>,
}

impl Harvest {
    fn new(vm: &Vm<KernelMemory>) -> Self {
        Harvest {
            words: vm
                .dirty
                .iter()
                .map(|b| vec![0; crate::mm::dirty::words_needed(b.npages())])
                .collect(),
        }
    }
    fn pages(&self) -> u64 {
        self.words
            .iter()
            .flatten()
            .map(|w| u64::from(w.count_ones()))
            .sum()
    }
    /// Every harvested gfn.
    fn for_each_gfn(&self, vm: &Vm<KernelMemory>, mut f: impl FnMut(u64)) {
        // The gfns first, then `f`: `f` may read guest memory, which takes
        // the slots again.
        let mut gfns = Vec::new();
        vm.with_slots(|slots| {
            for slot in vm.test_slots(slots) {
                let base = slot.base_gfn();
                for (wi, &w) in self.words[usize::from(slot.id())].iter().enumerate() {
                    let mut w = w;
                    while w != 0 {
                        let bit = w.trailing_zeros() as u64;
                        gfns.push(base + wi as u64 * 64 + bit);
                        w &= w - 1;
                    }
                }
            }
        });
        gfns.into_iter().for_each(&mut f);
    }
}

/// Size of the slot the churn adds and deletes.
const CHURN_BYTES: u64 = 64 * 1024;

/// KVM's memslot_modification_stress_test on the boot core: a slot above
/// guest RAM is added and deleted over and over while the vCPUs write. Each
/// delete waits for every vCPU to leave the read section it may hold the old
/// array in, zaps the slot's EPT range and flushes guest-physical mappings
/// on every core (`mm::live`) before the frames could be reused.
struct Churn {
    gpa: u64,
    host: u64,
    cycles: u64,
}

impl Churn {
    fn new(vm: &Vm<KernelMemory>) -> Result<Self, String> {
        let pages = CHURN_BYTES / FRAME;
        let host = vm
            .mem
            .alloc(pages)
            .ok_or_else(|| String::from("no host memory for the churn slot"))?;
        // 2 MiB above the end of guest RAM: no vCPU touches it.
        let gpa = (vm.layout.mem_bytes + (2 << 20)).next_multiple_of(2 << 20);
        Ok(Churn {
            gpa,
            host,
            cycles: 0,
        })
    }

    fn cycle(&mut self, vm: &Vm<KernelMemory>) -> Result<(), String> {
        use crate::mm::live;
        let id = live::add_slot(
            &vm.slots,
            self.gpa,
            CHURN_BYTES,
            self.host,
            SlotFlags::empty(),
        )
        .map_err(|e| alloc::format!("{e}"))?;
        live::delete_slot(&vm.slots, &vm.ept, id, || vm.requests.flush_all_and_wait())
            .map_err(|e| alloc::format!("{e}"))?;
        self.cycles += 1;
        Ok(())
    }
}

/// The first 8 bytes of guest page `gfn`.
fn first_word(vm: &Vm<KernelMemory>, gfn: u64) -> u64 {
    let mut b = [0u8; 8];
    let _ = vm.with_guest_mem(|gm| gm.read(gfn * FRAME, &mut b));
    u64::from_le_bytes(b)
}

/// "get dirty log": swap every logged slot's bitmap out.
fn get_log(vm: &Vm<KernelMemory>, h: &mut Harvest) {
    vm.with_slots(|slots| {
        for slot in vm.test_slots(slots) {
            let id = usize::from(slot.id());
            let _ = vm.dirty[id].get_and_clear(&mut h.words[id], |_| {});
        }
    });
}

/// "clear dirty log": write-protect exactly the harvested pages, then flush.
fn clear_log(vm: &Vm<KernelMemory>, h: &Harvest) {
    h.for_each_gfn(vm, |gfn| {
        vm.ept.write_protect(gfn * FRAME);
    });
    vm.requests.flush_all_and_wait();
}

/// A copy of the logged (test) memory, kept up to date from each round's
/// dirty pages, as live migration keeps its destination. In host frames: it
/// can be far larger than the kernel heap.
struct Shadow {
    base_gfn: u64,
    bytes: &'static mut [u8],
}

impl Shadow {
    fn new(vm: &Vm<KernelMemory>) -> Option<Shadow> {
        let base_gfn = vm.test_base / FRAME;
        let pages = vm.mem_pages() - base_gfn;
        let phys = crate::mm::host::alloc_raw(pages)?;
        // SAFETY: the frames were just handed to us alone, are mapped at the
        // physical-memory offset, and are never freed (the run ends first).
        let bytes = unsafe {
            core::slice::from_raw_parts_mut(
                crate::mm::host::phys_to_virt(phys),
                (pages * FRAME) as usize,
            )
        };
        let mut s = Shadow { base_gfn, bytes };
        for gfn in base_gfn..vm.mem_pages() {
            s.copy_page(vm, gfn);
        }
        Some(s)
    }

    fn page(&mut self, gfn: u64) -> &mut [u8] {
        let at = ((gfn - self.base_gfn) * FRAME) as usize;
        &mut self.bytes[at..at + FRAME as usize]
    }

    fn copy_page(&mut self, vm: &Vm<KernelMemory>, gfn: u64) {
        let page = self.page(gfn);
        let _ = vm.with_guest_mem(|gm| gm.read(gfn * FRAME, page));
    }

    /// Pages whose copy differs from guest memory.
    fn mismatches(&mut self, vm: &Vm<KernelMemory>) -> u64 {
        let mut page = [0u8; FRAME as usize];
        let mut bad = 0;
        for gfn in self.base_gfn..vm.mem_pages() {
            let _ = vm.with_guest_mem(|gm| gm.read(gfn * FRAME, &mut page));
            if self.page(gfn) != &page[..] {
                bad += 1;
            }
        }
        bad
    }
}

/// Runs the controller on the boot core while `vm.vcpus` vCPUs run on the
/// other cores. `release` starts them.
pub fn controller(vm: &Vm<KernelMemory>, release: impl FnOnce()) -> Outcome {
    CONCURRENT.store(vm.config.dirty_concurrent, Ordering::Release);
    let vcpus = vm.vcpus;
    let concurrent = vm.config.dirty_concurrent;
    let iterations = u64::from(vm.config.iterations);
    let pages_per_vcpu = vm.config.bytes_per_vcpu / FRAME;
    let mut phases = Vec::new();
    // A phase from `t0` to now.
    let mut phase = |name: String, t0: u64, c: Counters, pages: Option<(u64, u64)>| {
        let cycles = crate::arch::rdtsc() - t0;
        phases.push(Phase {
            name,
            cycles,
            counters: c,
            pages,
        });
    };
    let mut ok = true;
    let mut h = Harvest::new(vm);

    let t = crate::arch::rdtsc();
    release();
    wait_all(vcpus, 1);
    let c1 = counters(vcpus);
    phase("Populate memory".into(), t, c1, None);

    // Enabling: flag first (SeqCst), then protect what is mapped; a vCPU
    // that maps a page in between sees the flag and logs it (exits/ept.rs).
    let t = crate::arch::rdtsc();
    vm.with_slots(|slots| {
        for slot in vm.test_slots(slots) {
            vm.dirty[usize::from(slot.id())].clear_all();
            slot.insert_flags(SlotFlags::DIRTY_LOG);
            let _ = vm
                .ept
                .write_protect_range(slot.base_gfn() * FRAME, slot.npages() * FRAME);
        }
    });
    vm.requests.flush_all_and_wait();
    phase("Enabling dirty logging".into(), t, Counters::ZERO, None);

    let mut shadow = None;
    if concurrent {
        shadow = Shadow::new(vm);
        if shadow.is_none() {
            crate::println!("dirty log: no host memory for the shadow copy of the test memory");
            ok = false;
        }
    }

    let mut churn = match vm.config.slot_churn {
        0 => None,
        _ => match Churn::new(vm) {
            Ok(c) => Some(c),
            Err(e) => {
                crate::println!("memslot churn: FAILED: {e}");
                ok = false;
                None
            }
        },
    };
    let mut prev = c1;
    let mut iteration_pages = Vec::new();
    let mut rounds = 0;
    for k in 1..=iterations {
        let t = crate::arch::rdtsc();
        if concurrent {
            // Let the vCPUs write for a while: until each finished one more
            // pass, and changing the memslots meanwhile if asked to.
            let target = (0..vcpus as usize)
                .map(|i| DONE[i].load(Ordering::Acquire))
                .min()
                .unwrap_or(0)
                + 1;
            if let Some(c) = churn.as_mut() {
                for _ in 0..vm.config.slot_churn {
                    if let Err(e) = c.cycle(vm) {
                        crate::println!("memslot churn: FAILED: {e}");
                        ok = false;
                        break;
                    }
                }
            }
            wait_all(vcpus, target);
        } else {
            GO.store(k + 1, Ordering::Release);
            wait_all(vcpus, k + 1);
        }
        let now = counters(vcpus);
        phase(
            alloc::format!("Iteration {k} dirty memory"),
            t,
            now.minus(prev),
            None,
        );
        // Pages written in this pass, measured from memory, not assumed: the
        // guest stores the pass number at the start of each page it writes.
        // (Concurrent mode is judged by the shadow copy instead.)
        let pass = k + 1;
        let written = if concurrent {
            0
        } else {
            (vm.test_base / FRAME..vm.mem_pages())
                .filter(|&gfn| first_word(vm, gfn) == pass)
                .count() as u64
        };
        let t = crate::arch::rdtsc();
        get_log(vm, &mut h);
        let dirty = h.pages();
        phase(
            alloc::format!("Iteration {k} get dirty log"),
            t,
            Counters::ZERO,
            None,
        );
        if !concurrent {
            // Exactly the written pages: as many, and each one written.
            let mut stray = 0;
            h.for_each_gfn(vm, |gfn| stray += (first_word(vm, gfn) != pass) as u64);
            if dirty != written || stray != 0 {
                ok = false;
            }
        }
        iteration_pages.push((written, dirty));
        let t = crate::arch::rdtsc();
        clear_log(vm, &h);
        if let Some(s) = shadow.as_mut() {
            h.for_each_gfn(vm, |gfn| s.copy_page(vm, gfn));
        }
        phase(
            alloc::format!("Iteration {k} clear dirty log"),
            t,
            Counters::ZERO,
            None,
        );
        prev = now;
        rounds += 1;
    }

    // Stop the vCPUs. In concurrent mode they may be mid-pass: logging stays
    // on until every vCPU is out of the guest for good, and the final
    // harvest catches their last writes.
    STOP.store(true, Ordering::Release);
    wait_all(vcpus, u64::MAX);
    let mut mismatches = None;
    if let Some(s) = shadow.as_mut() {
        get_log(vm, &mut h);
        h.for_each_gfn(vm, |gfn| s.copy_page(vm, gfn));
        let bad = s.mismatches(vm);
        if bad != 0 {
            ok = false;
        }
        mismatches = Some(bad);
    }
    if let Some(c) = &churn {
        crate::println!(
            "memslot churn: {} add/delete cycles of a {} KiB slot at gpa {:#x} while the vCPUs \
             wrote; memslot generation {}",
            c.cycles,
            CHURN_BYTES / 1024,
            c.gpa,
            vm.slots.generation()
        );
    }
    let t = crate::arch::rdtsc();
    vm.with_slots(|slots| {
        for slot in vm.test_slots(slots) {
            slot.remove_flags(SlotFlags::DIRTY_LOG);
        }
        // Restore write access everywhere it was taken.
        for slot in vm.test_slots(slots) {
            for gfn in slot.base_gfn()..slot.end_gfn() {
                vm.ept.make_writable(gfn * FRAME);
            }
        }
    });
    phase("Disabling dirty logging".into(), t, Counters::ZERO, None);
    let dirty_phases = phases
        .iter_mut()
        .filter(|p| p.name.ends_with("dirty memory"));
    for (p, pages) in dirty_phases.zip(iteration_pages) {
        p.pages = Some(pages);
    }
    Outcome {
        phases,
        pages_per_vcpu,
        mismatches,
        rounds,
        ok,
    }
}
