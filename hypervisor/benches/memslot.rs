//! gfn -> memslot lookup: our `Memslots` in each cache mode against rust-vmm
//! vm-memory's `GuestMemoryMmap::find_region`, on the same address streams.
//!
//! `cargo bench -p hypervisor --bench memslot [-- --quick]`
//!
//! Guest memory is a fixed 1 GiB, split into N equal, contiguous slots
//! (N = 1, 8, 64, 509), as dirty_log_perf_test does with `-x N`. Two patterns:
//! - (a) the 2021 series' benchmark: 64 vCPUs, memory split into 64 equal
//!   regions, each vCPU sweeping the pages of its own region, interleaved
//!   round-robin (v0 p0, v1 p0, … v63 p0, v0 p1, …); each vCPU has its own
//!   `VcpuSlotCache`;
//! - (b) uniform random gfns over guest memory (xorshift64*, fixed seed), one
//!   vCPU.
//!
//! Each measurement: one checked warm-up pass (every result compared with the
//! expected slot), then timed samples of whole passes; we print the median
//! ns per lookup. Every timed lookup's result goes into a checksum, compared
//! after the sample.

use hypervisor::mm::memslot::{
    CacheMode, LookupStats, Memslots, SlotFlags, VcpuSlotCache, PAGE_SIZE,
};
use std::hint::black_box;
use std::time::Instant;
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

const TOTAL_PAGES: u64 = 1 << 18; // 1 GiB of 4 KiB pages
const SLOT_COUNTS: [usize; 4] = [1, 8, 64, 509];
const VCPUS: usize = 64;
const HOST_BASE: u64 = 0x10_0000_0000;

struct Config {
    samples: usize,
    /// Minimum duration of one sample (whole passes over the stream).
    sample_ns: u128,
}

/// Guest memory of one run: `slots` slots of `slot_pages` pages from gfn 0.
#[derive(Clone, Copy)]
struct Layout {
    slots: usize,
    slot_pages: u64,
}

impl Layout {
    fn new(slots: usize) -> Self {
        Layout {
            slots,
            slot_pages: TOTAL_PAGES / slots as u64,
        }
    }

    fn pages(&self) -> u64 {
        self.slots as u64 * self.slot_pages
    }

    fn expected_base(&self, gfn: u64) -> u64 {
        gfn / self.slot_pages * self.slot_pages
    }

    fn memslots(&self, mode: CacheMode) -> Box<Memslots> {
        let mut slots = Box::new(Memslots::new(mode));
        for i in 0..self.slots as u64 {
            let gpa = i * self.slot_pages * PAGE_SIZE;
            let size = self.slot_pages * PAGE_SIZE;
            slots
                .insert(gpa, size, HOST_BASE + gpa, SlotFlags::empty())
                .unwrap();
        }
        slots
    }

    /// The same regions in vm-memory (mmapped, never touched).
    fn vm_memory(&self) -> GuestMemoryMmap<()> {
        let ranges: Vec<(GuestAddress, usize)> = (0..self.slots as u64)
            .map(|i| {
                let gpa = i * self.slot_pages * PAGE_SIZE;
                (GuestAddress(gpa), (self.slot_pages * PAGE_SIZE) as usize)
            })
            .collect();
        GuestMemoryMmap::from_ranges(&ranges).expect("mmap guest regions")
    }
}

/// Pattern (a): `stream[p * VCPUS + v]` is vCPU v's p-th page.
fn sweep_stream(layout: Layout) -> Vec<u64> {
    let region_pages = layout.pages() / VCPUS as u64;
    (0..region_pages)
        .flat_map(|p| (0..VCPUS as u64).map(move |v| v * region_pages + p))
        .collect()
}

/// Pattern (b): uniform random gfns (xorshift64*, fixed seed).
fn random_stream(layout: Layout) -> Vec<u64> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..TOTAL_PAGES)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d) % layout.pages()
        })
        .collect()
}

/// One pass of our lookup; `stream[i]` is looked up with `caches[i % len]`.
/// Returns the sum of the found slots' base gfns.
fn pass_ours(slots: &Memslots, stream: &[u64], caches: &mut [VcpuSlotCache]) -> u64 {
    let mut sum = 0u64;
    for chunk in stream.chunks_exact(caches.len()) {
        for (&gfn, cache) in chunk.iter().zip(caches.iter_mut()) {
            let base = slots
                .lookup_vcpu(gfn, cache)
                .map_or(u64::MAX, |s| s.base_gfn());
            sum = sum.wrapping_add(base);
        }
    }
    sum
}

fn pass_vm_memory(mem: &GuestMemoryMmap<()>, stream: &[u64]) -> u64 {
    let mut sum = 0u64;
    for &gfn in stream {
        let region = mem.find_region(GuestAddress(gfn * PAGE_SIZE));
        let base = region.map_or(u64::MAX, |r| r.start_addr().0 / PAGE_SIZE);
        sum = sum.wrapping_add(base);
    }
    sum
}

/// Median ns per lookup of `pass`, which must return `checksum`.
fn measure(cfg: &Config, lookups: usize, checksum: u64, mut pass: impl FnMut() -> u64) -> f64 {
    // Warm-up, and calibrate the number of passes per sample.
    let start = Instant::now();
    assert_eq!(black_box(pass()), checksum);
    let one = start.elapsed().as_nanos().max(1);
    let passes = (cfg.sample_ns / one).max(1) as usize;

    let mut per_lookup: Vec<f64> = (0..cfg.samples)
        .map(|_| {
            let start = Instant::now();
            let mut sums = 0u64;
            for _ in 0..passes {
                sums = sums.wrapping_add(black_box(pass()));
            }
            let ns = start.elapsed().as_nanos() as f64;
            assert_eq!(sums, checksum.wrapping_mul(passes as u64));
            ns / (passes * lookups) as f64
        })
        .collect();
    per_lookup.sort_by(f64::total_cmp);
    per_lookup[per_lookup.len() / 2]
}

struct Row {
    slots: usize,
    /// ns per lookup: vcpu, vm, none, vm-memory.
    ns: [f64; 4],
    /// Share of lookups served by a cache in modes vcpu and vm.
    hit_rate: [f64; 2],
}

fn run_pattern(cfg: &Config, vcpus: usize, make_stream: fn(Layout) -> Vec<u64>) -> Vec<Row> {
    SLOT_COUNTS
        .iter()
        .map(|&n| {
            let layout = Layout::new(n);
            let stream = make_stream(layout);
            let checksum = stream.iter().fold(0u64, |sum, &gfn| {
                sum.wrapping_add(layout.expected_base(gfn))
            });
            let mut ns = [0.0; 4];
            let mut hit_rate = [0.0; 2];

            for (i, mode) in CacheMode::ALL.into_iter().enumerate() {
                let slots = layout.memslots(mode);
                // Check every result once before timing.
                let mut caches = vec![VcpuSlotCache::new(); vcpus];
                for chunk in stream.chunks_exact(vcpus) {
                    for (&gfn, cache) in chunk.iter().zip(caches.iter_mut()) {
                        let slot = slots.lookup_vcpu(gfn, cache).expect("gfn is backed");
                        assert_eq!(slot.base_gfn(), layout.expected_base(gfn));
                    }
                }
                let mut caches = vec![VcpuSlotCache::new(); vcpus];
                ns[i] = measure(cfg, stream.len(), checksum, || {
                    pass_ours(black_box(&slots), black_box(&stream), &mut caches)
                });
                let mut stats = LookupStats::new();
                caches.iter().for_each(|c| stats.add(&c.stats));
                if i < 2 {
                    hit_rate[i] = (stats.vcpu_hits + stats.vm_hits) as f64 / stats.total() as f64;
                }
            }

            let mem = layout.vm_memory();
            for &gfn in &stream {
                let region = mem
                    .find_region(GuestAddress(gfn * PAGE_SIZE))
                    .expect("gfn is backed");
                assert_eq!(region.start_addr().0 / PAGE_SIZE, layout.expected_base(gfn));
            }
            ns[3] = measure(cfg, stream.len(), checksum, || {
                pass_vm_memory(black_box(&mem), black_box(&stream))
            });
            Row {
                slots: n,
                ns,
                hit_rate,
            }
        })
        .collect()
}

fn print_table(title: &str, rows: &[Row]) {
    println!("\n{title}");
    println!(
        "{:>6} {:>10} {:>10} {:>10} {:>10}   {:>16} {:>9} {:>9}",
        "slots", "vcpu", "vm", "none", "vm-memory", "vcpu / vm-memory", "vcpu hit", "vm hit"
    );
    for r in rows {
        println!(
            "{:>6} {:>10.2} {:>10.2} {:>10.2} {:>10.2}   {:>16.3} {:>8.1}% {:>8.1}%",
            r.slots,
            r.ns[0],
            r.ns[1],
            r.ns[2],
            r.ns[3],
            r.ns[0] / r.ns[3],
            r.hit_rate[0] * 100.0,
            r.hit_rate[1] * 100.0
        );
    }
    let (first, last) = (&rows[0], &rows[rows.len() - 1]);
    let scaling: Vec<String> = ["vcpu", "vm", "none", "vm-memory"]
        .iter()
        .enumerate()
        .map(|(i, name)| format!("{name} {:.2}", last.ns[i] / first.ns[i]))
        .collect();
    println!(
        "{}/{} slots, per mode: {}",
        last.slots,
        first.slots,
        scaling.join(", ")
    );
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("model name"))?;
            Some(line.split_once(':')?.1.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string())
}

fn main() {
    // cargo passes `--bench`; other unknown arguments are ignored too.
    let quick = std::env::args().any(|a| a == "--quick");
    let cfg = if quick {
        Config {
            samples: 5,
            sample_ns: 5_000_000,
        }
    } else {
        Config {
            samples: 15,
            sample_ns: 20_000_000,
        }
    };
    println!(
        "memslot lookup, median ns per lookup ({} samples of >= {} ms; {})",
        cfg.samples,
        cfg.sample_ns / 1_000_000,
        cpu_model()
    );
    println!(
        "guest memory: 1 GiB split into N equal slots ({} pages each at 509); \
         columns: our lookup_vcpu in cache modes vcpu, vm, none; vm-memory find_region",
        TOTAL_PAGES / 509
    );

    let rows = run_pattern(&cfg, VCPUS, sweep_stream);
    print_table(
        "(a) 64 vCPUs, each sweeping its own 1/64 of memory, round-robin (dirty_log_perf_test)",
        &rows,
    );
    let rows = run_pattern(&cfg, 1, random_stream);
    print_table("(b) uniform random gfns, one vCPU", &rows);
}
