//! The dirty-log fault path on real host threads: where the seed's 9x shows.
//!
//! `cargo bench -p hypervisor --bench fault_path [-- --threads T] [--quick]
//! [--json PATH]`, or `cargo xtask bench fault-path` (which also draws an SVG).
//!
//! T threads (default: the number of cores), each a vCPU with its own
//! `VcpuSlotCache`, each faulting sequential pages of its own memslot (its
//! own share of memory when there are fewer slots than threads) through the
//! project's real code: `Memslots::lookup_with` in cache mode vcpu, vm or
//! none, `fault::decide`, and `fault::map_fault` on an `Ept` whose pages are
//! mapped and write-protected, i.e. dirty logging's fast path:
//! `make_writable`, the fence, then `DirtyBitmap::mark`. Between samples the
//! main thread is the controller: it harvests the bitmaps with
//! `get_and_clear`, write-protects the reported pages, and checks that the
//! pages reported equal the pages written.
//!
//! The VM-wide cache (KVM before Linux 5.17) writes one shared index on
//! every miss; threads in different slots miss on every fault because the
//! other thread just moved the index, so the index's cache line bounces
//! between cores. Bochs models no caches; real cores do. On a 64-core host
//! this is the seed's 2.83 s -> 0.31 s.
//!
//! Each slot count runs rounds of one short sample per mode, back to back,
//! the order rotating, so that the ratios vm/vcpu and none/vcpu compare
//! samples taken at the same machine speed.

use hypervisor::mm::dirty::{words_needed, DirtyBitmap};
use hypervisor::mm::ept::{Ept, EptMemory, EptPerms, ENTRIES};
use hypervisor::mm::fault::{self, Access, EptPages, Fault, Resolved};
use hypervisor::mm::memslot::{
    CacheMode, CachePolicy, Memslot, Memslots, NoIndex, SlotFlags, VcpuIndex, VcpuSlotCache,
    VmIndex, PAGE_SIZE,
};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

const TOTAL_PAGES: u64 = 1 << 21; // 8 GiB of guest memory (never touched)
const SLOT_COUNTS: [usize; 4] = [1, 8, 64, 509];
/// Pages each thread faults per repetition (every slot has at least 4120):
/// long enough (~0.2 ms) for the threads' faulting to overlap.
const WINDOW: u64 = 4096;
const HOST_BASE: u64 = 0x40_0000_0000;

/// EPT tables from a host arena: leaked 4 KiB-aligned frames, recycled.
struct Arena {
    free: Mutex<Vec<u64>>,
}

#[repr(C, align(4096))]
struct Frame([AtomicU64; ENTRIES]);

// SAFETY: frames are 4 KiB-aligned, zeroed on allocation, leaked (never
// deallocated, so `table` stays valid), user-space addresses below
// HPA_LIMIT, and a frame is only handed out again after `free_table`.
unsafe impl EptMemory for Arena {
    fn alloc_table(&self) -> Option<u64> {
        if let Some(phys) = self.free.lock().unwrap().pop() {
            // SAFETY: a frame of ours, freed by its user.
            for e in unsafe { self.table(phys) } {
                e.store(0, Ordering::Relaxed);
            }
            return Some(phys);
        }
        let frame = Box::new(Frame(core::array::from_fn(|_| AtomicU64::new(0))));
        Some(Box::into_raw(frame) as u64)
    }

    unsafe fn free_table(&self, phys: u64) {
        self.free.lock().unwrap().push(phys);
    }

    unsafe fn table(&self, phys: u64) -> &[AtomicU64; ENTRIES] {
        // SAFETY: `phys` is a leaked `Frame` from `alloc_table`.
        unsafe { &(*(phys as *const Frame)).0 }
    }
}

/// One VM: slots, EPT, one dirty bitmap per slot id.
struct Vm {
    slots: Box<Memslots>,
    ept: Ept<&'static Arena>,
    dirty: Vec<DirtyBitmap<Box<[AtomicU64]>>>,
    /// Each thread's first gfn.
    starts: Vec<u64>,
}

impl Vm {
    fn new(nslots: usize, threads: usize) -> Vm {
        let arena: &'static Arena = Box::leak(Box::new(Arena {
            free: Mutex::new(Vec::new()),
        }));
        let slot_pages = TOTAL_PAGES / nslots as u64;
        let mut slots = Box::new(Memslots::new(CacheMode::Vcpu));
        for i in 0..nslots as u64 {
            let gpa = i * slot_pages * PAGE_SIZE;
            slots
                .insert(
                    gpa,
                    slot_pages * PAGE_SIZE,
                    HOST_BASE + gpa,
                    SlotFlags::DIRTY_LOG,
                )
                .unwrap();
        }
        let mut dirty: Vec<_> = (0..nslots).map(|_| None).collect();
        for s in slots.iter() {
            let words: Box<[AtomicU64]> = (0..words_needed(s.npages()))
                .map(|_| AtomicU64::new(0))
                .collect();
            dirty[usize::from(s.id())] = Some(DirtyBitmap::new(words, s.npages()).unwrap());
        }
        // Thread t: slot t * n / T when every thread can have its own slot,
        // else its 1/T share of memory.
        let starts: Vec<u64> = (0..threads as u64)
            .map(|t| {
                if nslots >= threads {
                    t * nslots as u64 / threads as u64 * slot_pages
                } else {
                    t * (TOTAL_PAGES / threads as u64)
                }
            })
            .collect();
        let ept = Ept::new(arena).unwrap();
        // Populated, then write-protected: as after "enable dirty logging".
        for &start in &starts {
            for gfn in start..start + WINDOW {
                let slot = slots.lookup(gfn, &mut Default::default()).unwrap();
                ept.map_4k(gfn * PAGE_SIZE, slot.host_phys(gfn), EptPerms::RWX)
                    .unwrap();
                ept.write_protect(gfn * PAGE_SIZE);
            }
        }
        Vm {
            slots,
            ept,
            dirty: dirty.into_iter().map(Option::unwrap).collect(),
            starts,
        }
    }

    /// The controller's round: harvest every bitmap, write-protecting each
    /// reported page. Returns the pages reported.
    fn harvest(&self, out: &mut [u64]) -> u64 {
        let mut reported = 0;
        for slot in self.slots.iter() {
            let bitmap = &self.dirty[usize::from(slot.id())];
            let base = slot.base_gfn();
            reported += bitmap
                .get_and_clear(out, |page| {
                    self.ept.write_protect((base + page) * PAGE_SIZE);
                })
                .unwrap();
        }
        reported
    }
}

/// One thread's repetition: write-fault `WINDOW` sequential pages from
/// `start`, as the EPT-violation handler does. Returns faults resolved by
/// the dirty-log fast path.
#[inline(never)]
fn fault_window<P: CachePolicy>(vm: &Vm, start: u64, cache: &mut VcpuSlotCache) -> u64 {
    let view = vm.slots.view();
    let write = Access {
        read: false,
        write: true,
        fetch: false,
    };
    let mut logged = 0;
    for gfn in start..start + WINDOW {
        let slot = view.lookup_with::<P>(gfn, cache);
        let (Fault::Map { perms }, Some(slot)) =
            (fault::decide(write, slot.map(Memslot::flags)), slot)
        else {
            panic!("gfn {gfn:#x} is backed and writable");
        };
        let mark = |s: &Memslot, g: u64| {
            vm.dirty[usize::from(s.id())].mark(g - s.base_gfn());
        };
        match fault::map_fault(&vm.ept, slot, gfn, write, perms, EptPages::Only4K, mark) {
            Ok(Resolved::Logged) => logged += 1,
            other => panic!("gfn {gfn:#x}: {other:?}, not the dirty-log fast path"),
        }
    }
    logged
}

/// Shared state of one sample.
struct Sample {
    /// Set by the main thread to start repetition `go`; `u64::MAX`: stop.
    go: AtomicU64,
    /// Threads done with the current repetition.
    done: AtomicUsize,
    /// Threads ready to start the current repetition.
    ready: AtomicUsize,
    threads: usize,
    /// Per thread: ns since `base` at the start and end of its last window.
    times: Vec<(AtomicU64, AtomicU64)>,
    base: Instant,
    logged: AtomicU64,
    /// Faults whose lookup missed the cache (summed at the end).
    searches: AtomicU64,
}

fn spin_until(mut f: impl FnMut() -> bool) {
    let mut n = 0u32;
    while !f() {
        n += 1;
        if n.is_multiple_of(256) {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

fn worker<P: CachePolicy>(vm: &Vm, t: usize, s: &Sample) {
    let mut cache = VcpuSlotCache::new();
    let mut rep = 1;
    loop {
        let mut go = 0;
        spin_until(|| {
            go = s.go.load(Ordering::Acquire);
            go >= rep
        });
        if go == u64::MAX {
            break;
        }
        // Start together: each thread is on a core when the last arrives.
        // (A pure spin: a thread that yielded here would miss the start.)
        s.ready.fetch_add(1, Ordering::AcqRel);
        while s.ready.load(Ordering::Acquire) < s.threads * rep as usize {
            std::hint::spin_loop();
        }
        let start = s.base.elapsed().as_nanos() as u64;
        let n = fault_window::<P>(vm, vm.starts[t], &mut cache);
        let end = s.base.elapsed().as_nanos() as u64;
        s.times[t].0.store(start, Ordering::Relaxed);
        s.times[t].1.store(end, Ordering::Relaxed);
        s.logged.fetch_add(n, Ordering::Relaxed);
        s.done.fetch_add(1, Ordering::AcqRel);
        rep += 1;
    }
    s.searches.fetch_add(cache.searches, Ordering::Relaxed);
}

/// A measured sample.
struct Measured {
    /// Mean ns per fault per thread, over the repetitions that counted.
    ns: f64,
    /// Repetitions run in all (those whose threads did not overlap were
    /// run again).
    runs: u64,
}

/// One sample: repetitions of (all threads fault their window; the
/// controller harvests and checks that the pages reported are the pages
/// written), until `reps` of them had every thread faulting at the same time
/// (their windows overlap by >= 80 %: on a shared machine a thread is
/// sometimes off its core; a lone thread shares no cache line with anyone).
fn sample(vm: &Vm, mode: CacheMode, threads: usize, reps: u64) -> Measured {
    let s = Sample {
        go: AtomicU64::new(0),
        done: AtomicUsize::new(0),
        ready: AtomicUsize::new(0),
        threads,
        times: (0..threads)
            .map(|_| (AtomicU64::new(0), AtomicU64::new(0)))
            .collect(),
        base: Instant::now(),
        logged: AtomicU64::new(0),
        searches: AtomicU64::new(0),
    };
    let mut out = vec![0u64; words_needed(TOTAL_PAGES)];
    let (mut counted, mut total_ns, mut runs) = (0u64, 0u64, 0u64);
    let max_runs = reps * 20;
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (vm, s) = (&*vm, &s);
            scope.spawn(move || match mode {
                CacheMode::Vcpu => worker::<VcpuIndex>(vm, t, s),
                CacheMode::Vm => worker::<VmIndex>(vm, t, s),
                CacheMode::None => worker::<NoIndex>(vm, t, s),
            });
        }
        while counted < reps && runs < max_runs {
            runs += 1;
            s.go.store(runs, Ordering::Release);
            // Yield at once: the workers should have the cores.
            while s.done.load(Ordering::Acquire) != threads * runs as usize {
                std::thread::yield_now();
            }
            let reported = vm.harvest(&mut out);
            let written = threads as u64 * WINDOW;
            assert_eq!(
                reported, written,
                "{mode}: dirty pages reported {reported} != pages written {written}"
            );
            let times: Vec<(u64, u64)> = s
                .times
                .iter()
                .map(|(a, b)| (a.load(Ordering::Relaxed), b.load(Ordering::Relaxed)))
                .collect();
            let latest_start = times.iter().map(|t| t.0).max().unwrap();
            let earliest_end = times.iter().map(|t| t.1).min().unwrap();
            let longest = times.iter().map(|t| t.1 - t.0).max().unwrap().max(1);
            let overlap = earliest_end.saturating_sub(latest_start) as f64 / longest as f64;
            if overlap >= 0.8 || threads == 1 {
                counted += 1;
                total_ns += times.iter().map(|t| t.1 - t.0).sum::<u64>();
            }
        }
        s.go.store(u64::MAX, Ordering::Release);
    });
    assert_eq!(
        s.logged.load(Ordering::Relaxed),
        runs * threads as u64 * WINDOW
    );
    if counted == 0 {
        // Never concurrent: the round does not count.
        return Measured { ns: f64::NAN, runs };
    }
    let faults = (counted * threads as u64 * WINDOW) as f64;
    if std::env::var_os("FAULT_PATH_DEBUG").is_some() {
        eprintln!(
            "{mode}: {:.1}% searched, {counted} of {runs} repetitions concurrent",
            s.searches.load(Ordering::Relaxed) as f64 * 100.0
                / (runs * threads as u64 * WINDOW) as f64
        );
    }
    Measured {
        ns: total_ns as f64 / faults,
        runs,
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let quick = args.iter().any(|a| a == "--quick");
    let threads = value("--threads").map_or_else(
        || std::thread::available_parallelism().map_or(2, |n| n.get()),
        |t| t.parse().expect("--threads N"),
    );
    assert!(threads >= 1, "--threads must be at least 1");
    let (rounds, reps) = if quick { (3, 4) } else { (11, 8) };
    println!(
        "fault path (lookup + EPT + dirty bitmap), {threads} threads, {WINDOW} write faults per \
         thread per repetition, {rounds} rounds of one {reps}-repetition sample per slot count and mode"
    );
    println!(
        "{:>6} {:>10} {:>10} {:>10}   {:>16} {:>16}",
        "slots", "vcpu ns", "vm ns", "none ns", "vm/vcpu", "none/vcpu"
    );
    // Every (slot count, mode) pair runs once per round, the order
    // rotating, so that each ratio (vm/vcpu, none/vcpu, and vcpu at 509
    // slots over vcpu at 1) compares samples taken at the same machine speed.
    let vms: Vec<Vm> = SLOT_COUNTS.iter().map(|&n| Vm::new(n, threads)).collect();
    for vm in &vms {
        // Warm-up (also checks every fault's path once).
        for mode in CacheMode::ALL {
            sample(vm, mode, threads, 1);
        }
    }
    let pairs: Vec<(usize, usize)> = (0..SLOT_COUNTS.len())
        .flat_map(|v| (0..3).map(move |m| (v, m)))
        .collect();
    // rounds_ns[r][v][m]: NaN where that sample's threads never overlapped.
    let mut rounds_ns = Vec::new();
    let mut runs = 0;
    for r in 0..rounds {
        let mut this = vec![[0.0; 3]; SLOT_COUNTS.len()];
        for k in 0..pairs.len() {
            let (v, m) = pairs[(r + k) % pairs.len()];
            let got = sample(&vms[v], CacheMode::ALL[m], threads, reps);
            runs += got.runs;
            this[v][m] = got.ns;
        }
        rounds_ns.push(this);
    }
    // Ratios per round, where both samples counted.
    let ratio = |(v1, m1): (usize, usize), (v0, m0): (usize, usize)| -> Vec<f64> {
        rounds_ns
            .iter()
            .map(|t| t[v1][m1] / t[v0][m0])
            .filter(|x| x.is_finite())
            .collect()
    };
    let mut flat = ratio((SLOT_COUNTS.len() - 1, 0), (0, 0));
    assert!(
        !flat.is_empty(),
        "no round had its threads running at the same time"
    );
    let fmt_spread = |v: &mut Vec<f64>| {
        let m = median(v);
        format!("{m:.2} [{:.2}..{:.2}]", v[0], v[v.len() - 1])
    };
    let mut json = Vec::new();
    for (v, &n) in SLOT_COUNTS.iter().enumerate() {
        let mut vm_ratio = ratio((v, 1), (v, 0));
        let mut none_ratio = ratio((v, 2), (v, 0));
        assert!(
            !vm_ratio.is_empty() && !none_ratio.is_empty(),
            "{n} slots: no round counted"
        );
        let (vr, nr) = (median(&mut vm_ratio), median(&mut none_ratio));
        let med: Vec<f64> = (0..3)
            .map(|m| {
                let mut x: Vec<f64> = rounds_ns
                    .iter()
                    .map(|t| t[v][m])
                    .filter(|x| x.is_finite())
                    .collect();
                median(&mut x)
            })
            .collect();
        println!(
            "{n:>6} {:>10.1} {:>10.1} {:>10.1}   {:>16} {:>16}",
            med[0],
            med[1],
            med[2],
            fmt_spread(&mut vm_ratio),
            fmt_spread(&mut none_ratio),
        );
        json.push(format!(
            "{{\"slots\":{n},\"vcpu_ns\":{:.3},\"vm_ns\":{:.3},\"none_ns\":{:.3},\"vm_over_vcpu\":{vr:.4},\"none_over_vcpu\":{nr:.4}}}",
            med[0], med[1], med[2]
        ));
    }
    println!(
        "vcpu {}/{} slots: {} (flat: <= 1.10); {runs} repetitions run; \
         dirty pages reported == pages written in every repetition",
        SLOT_COUNTS[SLOT_COUNTS.len() - 1],
        SLOT_COUNTS[0],
        fmt_spread(&mut flat)
    );
    println!("(medians over rounds; ratios: median [min..max] of the per-round ratios)");
    if let Some(path) = value("--json") {
        let text = format!(
            "{{\"threads\":{threads},\"window\":{WINDOW},\"rows\":[{}]}}\n",
            json.join(",")
        );
        std::fs::write(&path, text).expect("writing --json");
    }
}
