//! A property test of the memory layer against a reference model.
//!
//! Random operations on a VM's memory (memslots, EPT, dirty logs) run on the
//! real code and on a plain model side by side:
//! - slots: add (overlapping ones must be refused with the slot they
//!   overlap), delete, move, switch dirty logging on and off, read-only;
//! - lookups of random gfns through three vCPU caches with random policies
//!   ([`VcpuIndex`], [`VmIndex`], [`NoIndex`]), the run-time dispatch and the
//!   VM-wide `lookup`, against a linear scan;
//! - guest accesses: a read or write of a page goes through the EPT if its
//!   leaf allows it, else through the real fault path (`fault::decide`,
//!   `fault::map_fault` with 4 KiB or 2 MiB pages), as the EPT-violation
//!   handler does;
//! - EPT zap (delete and move do it too), write-protect with splits;
//! - dirty log get-and-clear: the pages reported must be exactly the pages
//!   the guest wrote to a logged slot since the last harvest.
//!
//! After every operation the touched pages are checked (an EPT leaf maps a
//! gfn only inside a slot, to that slot's host frame, writable only when
//! the slot is not read-only and, in a logged slot, only with its dirty bit
//! set); every 2048 operations every leaf is compared with the model.
//!
//! `HV_MODEL_OPS` sets the number of operations (default 1,000,000);
//! `HV_MODEL_SEED` the first seed.

use super::dirty::{words_needed, DirtyBitmap};
use super::ept::test_mem::TestMem;
use super::ept::{Ept, EptPerms, PageSize, SIZE_2M, SIZE_4K};
use super::fault::{self, Access, EptPages, Fault, MapFailure};
use super::memslot::{
    CacheMode, LookupStats, Memslot, Memslots, NoIndex, SlotError, SlotFlags, VcpuIndex,
    VcpuSlotCache, VmIndex, MAX_SLOTS,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;

/// Guest-physical space the test uses: 16384 pages (64 MiB).
const SPACE: u64 = 1 << 14;
const PAGES_2M: u64 = SIZE_2M / SIZE_4K;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Clone, Copy, Debug)]
struct ModelSlot {
    base: u64,
    npages: u64,
    host_pfn: u64,
    flags: SlotFlags,
}

impl ModelSlot {
    fn contains(&self, gfn: u64) -> bool {
        gfn >= self.base && gfn < self.base + self.npages
    }
}

struct Model {
    /// By id.
    slots: BTreeMap<u16, ModelSlot>,
    /// gfn -> host frame the EPT maps it to.
    mapped: BTreeMap<u64, u64>,
    /// Per slot id: pages (slot-relative) written since the last harvest
    /// while logged.
    written: BTreeMap<u16, BTreeSet<u64>>,
}

impl Model {
    fn find(&self, gfn: u64) -> Option<(u16, ModelSlot)> {
        self.slots
            .iter()
            .find(|(_, s)| s.contains(gfn))
            .map(|(&id, &s)| (id, s))
    }

    fn overlap(&self, base: u64, n: u64, except: Option<u16>) -> Option<u16> {
        self.slots
            .iter()
            .filter(|(&id, _)| Some(id) != except)
            .find(|(_, s)| s.base < base + n && base < s.base + s.npages)
            .map(|(&id, _)| id)
    }

    fn overlap_ids(&self, base: u64, n: u64, except: Option<u16>) -> Vec<u16> {
        self.slots
            .iter()
            .filter(|(&id, s)| Some(id) != except && s.base < base + n && base < s.base + s.npages)
            .map(|(&id, _)| id)
            .collect()
    }

    fn unmap(&mut self, base: u64, n: u64) {
        let gone: Vec<u64> = self.mapped.range(base..base + n).map(|(&g, _)| g).collect();
        for g in gone {
            self.mapped.remove(&g);
        }
    }
}

struct Real {
    slots: Memslots,
    ept: Ept<&'static TestMem>,
    /// By slot id (MAX_SLOTS of them; a slot's bitmap covers SPACE pages).
    dirty: Vec<DirtyBitmap<Vec<AtomicU64>>>,
    caches: [VcpuSlotCache; 3],
    vm_stats: LookupStats,
    pages: EptPages,
}

fn bitmap() -> DirtyBitmap<Vec<AtomicU64>> {
    let words = (0..words_needed(SPACE))
        .map(|_| AtomicU64::new(0))
        .collect();
    DirtyBitmap::new(words, SPACE).unwrap()
}

struct Test {
    rng: Rng,
    real: Real,
    model: Model,
    ops: [u64; 12],
    /// 2 MiB leaves mapped by faults.
    huge: u64,
}

impl Test {
    fn new(seed: u64) -> Test {
        let mem: &'static TestMem = Box::leak(Box::new(TestMem::unlimited()));
        Test {
            rng: Rng(seed | 1),
            real: Real {
                slots: Memslots::new(CacheMode::Vcpu),
                ept: Ept::new(mem).unwrap(),
                dirty: (0..16).map(|_| bitmap()).collect(),
                caches: [
                    VcpuSlotCache::new(),
                    VcpuSlotCache::new(),
                    VcpuSlotCache::new(),
                ],
                vm_stats: LookupStats::new(),
                pages: EptPages::Allow2M,
            },
            model: Model {
                slots: BTreeMap::new(),
                mapped: BTreeMap::new(),
                written: BTreeMap::new(),
            },
            ops: [0; 12],
            huge: 0,
        }
    }

    /// A random gfn: mostly near slot edges, sometimes anywhere.
    fn gfn(&mut self) -> u64 {
        let slots: Vec<ModelSlot> = self.model.slots.values().copied().collect();
        if slots.is_empty() || self.rng.chance(20) {
            return self.rng.below(SPACE + 16);
        }
        let s = slots[self.rng.below(slots.len() as u64) as usize];
        match self.rng.below(4) {
            0 => s.base.wrapping_sub(self.rng.below(2)),
            1 => s.base + s.npages - 1 + self.rng.below(2),
            _ => s.base + self.rng.below(s.npages),
        }
    }

    fn some_id(&mut self) -> Option<u16> {
        let ids: Vec<u16> = self.model.slots.keys().copied().collect();
        if ids.is_empty() {
            None
        } else {
            Some(ids[self.rng.below(ids.len() as u64) as usize])
        }
    }

    fn step(&mut self) {
        let op = self.rng.below(100);
        let kind = match op {
            0..=5 => 0,   // add
            6..=8 => 1,   // delete
            9..=11 => 2,  // move
            12..=14 => 3, // dirty logging on/off
            15..=39 => 4, // lookups
            40..=79 => 5, // guest access
            80..=83 => 6, // zap
            84..=87 => 7, // write-protect (splits)
            88..=93 => 8, // harvest
            94..=96 => 9, // cache policy / page size
            _ => 10,      // stale cache index
        };
        self.ops[kind] += 1;
        match kind {
            0 => self.add(),
            1 => self.delete(),
            2 => self.move_slot(),
            3 => self.toggle_log(),
            4 => self.lookups(),
            5 => self.access(),
            6 => self.zap(),
            7 => self.protect(),
            8 => self.harvest(),
            9 => {
                self.real.pages = if self.rng.chance(50) {
                    EptPages::Allow2M
                } else {
                    EptPages::Only4K
                };
                let mode = CacheMode::ALL[self.rng.below(3) as usize];
                self.real.slots.set_mode(mode);
            }
            _ => {
                // A cache index from another life: masked and re-validated.
                let c = self.rng.below(3) as usize;
                let mut junk = VcpuSlotCache::new();
                for _ in 0..self.rng.below(3) {
                    let g = self.gfn();
                    self.real.slots.lookup_with::<VcpuIndex>(g, &mut junk);
                }
                self.real.caches[c] = junk;
            }
        }
    }

    fn add(&mut self) {
        let huge = self.rng.chance(40);
        let npages = match self.rng.below(4) {
            _ if huge => PAGES_2M * (1 + self.rng.below(3)),
            0 => 1 + self.rng.below(8),
            1 => PAGES_2M * (1 + self.rng.below(2)),
            _ => 1 + self.rng.below(1200),
        };
        let base = if huge || self.rng.chance(50) {
            self.rng.below(SPACE / PAGES_2M) * PAGES_2M
        } else {
            self.rng.below(SPACE)
        };
        // Host frames: 2 MiB aligned, or not (then never a 2 MiB leaf).
        let host_pfn =
            0x10_0000 + self.rng.below(64) * 0x1000 + (!huge && self.rng.chance(50)) as u64;
        let flags = if self.rng.chance(15) {
            SlotFlags::READONLY
        } else {
            SlotFlags::empty()
        };
        let got =
            self.real
                .slots
                .insert(base * SIZE_4K, npages * SIZE_4K, host_pfn * SIZE_4K, flags);
        let full = self.model.slots.len() >= 16;
        match (self.model.overlap(base, npages, None), got) {
            (Some(_), Err(SlotError::Overlap { id: got, .. })) => {
                // It names one of the slots it overlaps.
                assert!(self.model.overlap_ids(base, npages, None).contains(&got));
            }
            (Some(id), other) => panic!("overlaps slot {id}, insert gave {other:?}"),
            (None, Ok(id)) if !full => {
                assert!(self
                    .model
                    .slots
                    .insert(
                        id,
                        ModelSlot {
                            base,
                            npages,
                            host_pfn,
                            flags
                        }
                    )
                    .is_none());
                // Reusing an id: its bitmap starts clear.
                self.real.dirty[usize::from(id)].clear_all();
                self.model.written.remove(&id);
            }
            (None, Ok(id)) => {
                // Keep the test small: at most 16 slots.
                self.real.slots.remove(id).unwrap();
            }
            (None, Err(e)) => panic!("insert {base:#x}+{npages:#x}: {e:?}"),
        }
        assert!(self.real.slots.len() <= MAX_SLOTS);
    }

    /// Unmaps a slot's range, as a delete or move must before the frames
    /// are reused (the flush is a no-op here: no CPU walks this EPT).
    fn zap_slot(&mut self, s: ModelSlot) {
        self.real
            .ept
            .zap_range(s.base * SIZE_4K, s.npages * SIZE_4K)
            .unwrap();
        self.model.unmap(s.base, s.npages);
    }

    fn delete(&mut self) {
        let Some(id) = self.some_id() else {
            assert_eq!(self.real.slots.remove(3), Err(SlotError::NoSuchSlot(3)));
            return;
        };
        let s = self.model.slots.remove(&id).unwrap();
        self.real.slots.remove(id).unwrap();
        self.zap_slot(s);
        self.model.written.remove(&id);
    }

    fn move_slot(&mut self) {
        let Some(id) = self.some_id() else { return };
        let s = self.model.slots[&id];
        let to = if self.rng.chance(50) {
            self.rng.below(SPACE / PAGES_2M) * PAGES_2M
        } else {
            self.rng.below(SPACE)
        };
        match (
            self.model.overlap(to, s.npages, Some(id)),
            self.real.slots.move_slot(id, to * SIZE_4K),
        ) {
            (Some(_), Err(SlotError::Overlap { id: got, .. })) => {
                assert!(self
                    .model
                    .overlap_ids(to, s.npages, Some(id))
                    .contains(&got));
            }
            (None, Ok(())) => {
                self.zap_slot(s);
                self.model.slots.insert(id, ModelSlot { base: to, ..s });
                // The log is by slot-relative page: it moves with the slot.
            }
            (want, got) => panic!("move {id} to {to:#x}: model overlap {want:?}, real {got:?}"),
        }
    }

    fn toggle_log(&mut self) {
        let Some(id) = self.some_id() else { return };
        let s = self.model.slots.get_mut(&id).unwrap();
        let slot = self.real.slots.get_by_id(id).unwrap();
        if s.flags.contains(SlotFlags::DIRTY_LOG) {
            s.flags.remove(SlotFlags::DIRTY_LOG);
            slot.remove_flags(SlotFlags::DIRTY_LOG);
            self.model.written.remove(&id);
        } else {
            // mm::dirty's "enabling logging": clear, flag, protect (splits).
            s.flags.insert(SlotFlags::DIRTY_LOG);
            self.real.dirty[usize::from(id)].clear_all();
            slot.insert_flags(SlotFlags::DIRTY_LOG);
            self.real
                .ept
                .write_protect_range(s.base * SIZE_4K, s.npages * SIZE_4K)
                .unwrap();
            self.model.written.insert(id, BTreeSet::new());
        }
    }

    fn lookups(&mut self) {
        for _ in 0..8 {
            let g = self.gfn();
            let want = self.model.find(g).map(|(id, _)| id);
            let c = self.rng.below(3) as usize;
            let cache = &mut self.real.caches[c];
            let slots = &self.real.slots;
            let got = match self.rng.below(5) {
                0 => slots.lookup_with::<VcpuIndex>(g, cache),
                1 => slots.lookup_with::<VmIndex>(g, cache),
                2 => slots.lookup_with::<NoIndex>(g, cache),
                3 => slots.lookup_vcpu(g, cache),
                _ => slots.lookup(g, &mut self.real.vm_stats),
            };
            assert_eq!(got.map(Memslot::id), want, "lookup gfn {g:#x}");
            if let Some(s) = got {
                let m = self.model.slots[&s.id()];
                assert_eq!(
                    (s.base_gfn(), s.npages(), s.host_pfn()),
                    (m.base, m.npages, m.host_pfn)
                );
            }
        }
    }

    /// A guest read or write of one page, faulting as the CPU would.
    fn access(&mut self) {
        let g = self.gfn() % (SPACE + 16);
        let write = self.rng.chance(60);
        let access = Access {
            read: !write,
            write,
            fetch: false,
        };
        let gpa = g * SIZE_4K;
        for attempt in 0..3 {
            if let Some((hpa, perms, _)) = self.real.ept.translate(gpa) {
                let allowed = if write {
                    perms.contains(EptPerms::WRITE)
                } else {
                    perms.contains(EptPerms::READ)
                };
                if allowed {
                    // The access completes through the EPT.
                    let (id, s) = self.model.find(g).expect("a leaf maps only backed gfns");
                    assert_eq!(hpa, (s.host_pfn + g - s.base) * SIZE_4K);
                    if write && s.flags.contains(SlotFlags::DIRTY_LOG) {
                        self.model.written.get_mut(&id).unwrap().insert(g - s.base);
                    }
                    self.check_page(g);
                    return;
                }
            }
            assert!(attempt < 2, "gfn {g:#x}: still faulting after two faults");
            // EPT violation: the handler's path.
            let c = self.rng.below(3) as usize;
            let slot = self.real.slots.lookup_vcpu(g, &mut self.real.caches[c]);
            let model = self.model.find(g);
            assert_eq!(slot.map(Memslot::id), model.map(|(id, _)| id));
            match (fault::decide(access, slot.map(Memslot::flags)), slot) {
                (Fault::Map { perms }, Some(slot)) => {
                    let dirty = &self.real.dirty;
                    let mark = |s: &Memslot, gfn: u64| {
                        dirty[usize::from(s.id())].mark(gfn - s.base_gfn());
                    };
                    match fault::map_fault(
                        &self.real.ept,
                        slot,
                        g,
                        access,
                        perms,
                        self.real.pages,
                        mark,
                    ) {
                        Ok(_) => {}
                        Err(MapFailure::Contain) => {
                            panic!("gfn {g:#x}: contained on a backed page")
                        }
                        Err(e) => panic!("gfn {g:#x}: {e:?}"),
                    }
                    // What it mapped, into the model.
                    let (_, _, size) = self.real.ept.translate(gpa).expect("mapped");
                    let (_, s) = model.unwrap();
                    let first = match size {
                        PageSize::Size4K => g,
                        PageSize::Size2M => {
                            self.huge += 1;
                            g & !(PAGES_2M - 1)
                        }
                    };
                    for p in first..first + size.bytes() / SIZE_4K {
                        assert!(
                            s.contains(p),
                            "a 2 MiB leaf crosses the slot's edge at {p:#x}"
                        );
                        self.model.mapped.insert(p, s.host_pfn + p - s.base);
                    }
                }
                (Fault::ReadOnlyWrite, Some(_)) => {
                    assert!(model.unwrap().1.flags.contains(SlotFlags::READONLY));
                    return; // contained
                }
                (Fault::Unbacked, None) => {
                    assert!(model.is_none());
                    return; // MMIO or containment
                }
                (d, s) => panic!(
                    "gfn {g:#x}: decision {d:?} with slot {:?}",
                    s.map(Memslot::id)
                ),
            }
        }
    }

    fn zap(&mut self) {
        let g = self.gfn() % (SPACE + 16);
        let wide = self.rng.chance(30);
        let n = 1 + self.rng.below(if wide { 1024 } else { 8 });
        self.real.ept.zap_range(g * SIZE_4K, n * SIZE_4K).unwrap();
        self.model.unmap(g, n);
        for p in [g.wrapping_sub(1), g, g + n - 1, g + n] {
            self.check_page(p);
        }
    }

    fn protect(&mut self) {
        let g = self.gfn() % (SPACE + 16);
        let n = 1 + self.rng.below(600);
        self.real
            .ept
            .write_protect_range(g * SIZE_4K, n * SIZE_4K)
            .unwrap();
        for p in [g.wrapping_sub(1), g, g + n - 1, g + n] {
            self.check_page(p);
        }
    }

    fn harvest(&mut self) {
        let Some(id) = self.some_id() else { return };
        let s = self.model.slots[&id];
        let mut out = vec![0u64; words_needed(SPACE)];
        let mut reported = BTreeSet::new();
        let ept = &self.real.ept;
        self.real.dirty[usize::from(id)]
            .get_and_clear(&mut out, |page| {
                reported.insert(page);
                // Protect: the next write faults and is logged again. A
                // page of a moved slot may sit at the new gfns now.
                ept.write_protect((s.base + page) * SIZE_4K);
            })
            .unwrap();
        if s.flags.contains(SlotFlags::DIRTY_LOG) {
            let written = self.model.written.get_mut(&id).unwrap();
            // Pages of a slot moved while logged were protected by the zap
            // (unmapped), so the set is still exact.
            assert_eq!(&reported, written, "slot {id}: dirty log != pages written");
            written.clear();
        }
    }

    /// One page: the EPT agrees with the model and the invariants hold.
    fn check_page(&self, g: u64) {
        let gpa = g.wrapping_mul(SIZE_4K);
        let real = self.real.ept.translate(gpa);
        match (real, self.model.mapped.get(&g)) {
            (None, None) => {}
            (Some((hpa, perms, _)), Some(&pfn)) => {
                assert_eq!(hpa, pfn * SIZE_4K, "gfn {g:#x}");
                let (id, s) = self.model.find(g).expect("mapped gfns are backed");
                assert_eq!(s.host_pfn + g - s.base, pfn);
                if perms.contains(EptPerms::WRITE) {
                    assert!(
                        !s.flags.contains(SlotFlags::READONLY),
                        "gfn {g:#x}: writable in a read-only slot"
                    );
                    if s.flags.contains(SlotFlags::DIRTY_LOG) {
                        assert!(
                            self.real.dirty[usize::from(id)].is_set(g - s.base),
                            "gfn {g:#x}: writable in a logged slot with its dirty bit clear"
                        );
                    }
                }
            }
            (r, m) => panic!("gfn {g:#x}: EPT {r:?}, model {m:?}"),
        }
    }

    /// Every leaf against the model, both ways.
    fn check_all(&self) {
        let mut seen = 0u64;
        self.real.ept.for_each_leaf(|leaf| {
            let n = leaf.size.bytes() / SIZE_4K;
            for i in 0..n {
                let g = leaf.gpa / SIZE_4K + i;
                self.check_page(g);
            }
            seen += n;
        });
        assert_eq!(seen, self.model.mapped.len() as u64, "leaves vs model");
        let stats = self.real.ept.stats();
        assert_eq!(stats.leaves_4k + stats.leaves_2m * PAGES_2M, seen);
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?}: not a number"))
        })
        .unwrap_or(default)
}

#[test]
fn memory_layer_matches_model() {
    let total = env_u64("HV_MODEL_OPS", 1_000_000);
    let seed = env_u64("HV_MODEL_SEED", 0x5eed_0001);
    // Several VMs in turn, so that every run starts from empty too.
    let per_vm = 10_000.min(total.max(1));
    let mut done = 0;
    let mut vm = 0;
    let mut counts = [0u64; 12];
    let (mut huge, mut splits) = (0, 0);
    while done < total {
        let mut t = Test::new(seed.wrapping_add(vm));
        let n = per_vm.min(total - done);
        for i in 0..n {
            t.step();
            if i % 2048 == 2047 {
                t.check_all();
            }
        }
        t.check_all();
        huge += t.huge;
        splits += t.real.ept.stats().splits;
        for (c, o) in counts.iter_mut().zip(t.ops) {
            *c += o;
        }
        done += n;
        vm += 1;
    }
    println!(
        "model test: {done} operations on {vm} VMs, 0 divergences: add {}, delete {}, move {}, \
         log on/off {}, lookups {}, guest accesses {}, zap {}, write-protect {}, harvest {}, \
         policy {}, stale index {}; 2 MiB leaves mapped {huge}, split {splits}",
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        counts[4],
        counts[5],
        counts[6],
        counts[7],
        counts[8],
        counts[9],
        counts[10]
    );
    assert!(done >= total);
    // Each kind ran.
    assert!(counts[..11].iter().all(|&c| c > 0), "{counts:?}");
    assert!(huge > 0 && splits > 0, "no 2 MiB leaf was mapped or split");
}
