//! Host tests of live memslot changes, with real threads.

use super::*;
use crate::mm::dirty::{words_needed, DirtyBitmap};
use crate::mm::ept::test_mem::TestMem;
use crate::mm::ept::{PageSize, SIZE_4K};
use crate::mm::fault::{self, Access, EptPages, Fault};
use crate::mm::memslot::{VcpuIndex, VcpuSlotCache};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::vec::Vec;

const VCPUS: usize = 4;
/// Pages each vCPU writes, in its own 2 MiB slot.
const REGION: u64 = 512;
/// The slot the controller adds and deletes: gfns [HOT, HOT + 512).
const HOT: u64 = 0x1000;
const HOT2: u64 = 0x1400;
/// Host frames: vCPU i's slot at HOST + i * 512, the hot slot after them.
const HOST: u64 = 0x10_0000;

fn write() -> Access {
    Access {
        read: false,
        write: true,
        fetch: false,
    }
}

struct Vm {
    live: LiveSlots,
    ept: Ept<&'static TestMem>,
    /// One word per host frame (the guest's "memory").
    host: Vec<AtomicU64>,
    dirty: Vec<DirtyBitmap<Vec<AtomicU64>>>,
    stop: AtomicBool,
}

impl Vm {
    fn new() -> Vm {
        let mem: &'static TestMem = Box::leak(Box::new(TestMem::unlimited()));
        let mut slots = Memslots::new(CacheMode::Vcpu);
        for i in 0..VCPUS as u64 {
            slots
                .insert(
                    i * REGION * SIZE_4K,
                    REGION * SIZE_4K,
                    (HOST + i * REGION) * SIZE_4K,
                    SlotFlags::empty(),
                )
                .unwrap();
        }
        Vm {
            live: LiveSlots::new(slots),
            ept: Ept::new(mem).unwrap(),
            host: (0..(VCPUS as u64 + 1) * REGION)
                .map(|_| AtomicU64::new(0))
                .collect(),
            dirty: (0..8)
                .map(|_| {
                    let w = (0..words_needed(REGION))
                        .map(|_| AtomicU64::new(0))
                        .collect();
                    DirtyBitmap::new(w, REGION).unwrap()
                })
                .collect(),
            stop: AtomicBool::new(false),
        }
    }

    /// A guest write of `value` to `gfn` by vCPU `id`: through the EPT if
    /// mapped writable, else fault (one read section) and retry. Returns
    /// false if no slot backs the gfn (the MMIO bus would get it).
    fn guest_write(
        &self,
        id: usize,
        cache: &mut VcpuSlotCache,
        gfn: u64,
        value: u64,
        pages: EptPages,
    ) -> bool {
        for _ in 0..3 {
            if let Some((hpa, perms, _)) = self.ept.translate(gfn * SIZE_4K) {
                if perms.contains(EptPerms::WRITE) {
                    self.host[(hpa / SIZE_4K - HOST) as usize].store(value, Ordering::Relaxed);
                    return true;
                }
            }
            let guard = self.live.read(id);
            let slot = guard.slots().lookup_with::<VcpuIndex>(gfn, cache);
            let (Fault::Map { perms }, Some(slot)) =
                (fault::decide(write(), slot.map(Memslot::flags)), slot)
            else {
                return false;
            };
            if gfn >= HOT {
                // A slow exit handler: the array may be replaced meanwhile,
                // but not freed (nor its slot's range zapped) before we
                // leave the read section.
                std::thread::yield_now();
            }
            let mark = |s: &Memslot, g: u64| {
                self.dirty[usize::from(s.id())].mark(g - s.base_gfn());
            };
            fault::map_fault(&self.ept, slot, gfn, write(), perms, pages, mark).unwrap();
            drop(guard);
        }
        panic!("gfn {gfn:#x}: not writable after two faults");
    }
}

use crate::mm::ept::EptPerms;

/// KVM's memslot_modification_stress_test on host threads: four vCPUs
/// write their memory in a loop while the controller adds, moves and
/// deletes a slot thousands of times and switches dirty logging on midway.
/// Nothing written is lost, no deleted slot stays mapped, the hot slot's
/// contents follow it when it moves, and the dirty log reports every page
/// written after logging was switched on.
#[test]
fn memslot_modification_stress() {
    let vm = Vm::new();
    let rounds = std::env::var("HV_STRESS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000u64);
    let passes = AtomicU64::new(0);
    /// Stops the vCPUs when the controller ends, panicking or not.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    std::thread::scope(|s| {
        for id in 0..VCPUS {
            let (vm, passes) = (&vm, &passes);
            s.spawn(move || {
                let mut cache = VcpuSlotCache::new();
                let base = id as u64 * REGION;
                let mut pass = 1;
                let mut unbacked = 0u64;
                while !vm.stop.load(Ordering::Acquire) {
                    let pages = if pass % 2 == 0 {
                        EptPages::Allow2M
                    } else {
                        EptPages::Only4K
                    };
                    for p in 0..REGION {
                        assert!(vm.guest_write(id, &mut cache, base + p, pass, pages));
                        // Touch the hot slot: backed or not, never a wrong
                        // frame.
                        if p % 16 == 0 {
                            let hot = if p % 32 == 0 { HOT } else { HOT2 };
                            if !vm.guest_write(id, &mut cache, hot + p, pass, pages) {
                                unbacked += 1;
                            }
                        }
                    }
                    pass += 1;
                }
                passes.fetch_add(pass - 1, Ordering::Relaxed);
                (pass, unbacked)
            });
        }
        // The controller.
        let _stop = StopOnDrop(&vm.stop);
        let hot_host = (HOST + VCPUS as u64 * REGION) * SIZE_4K;
        let mut generations = vm.live.generation();
        for round in 0..rounds {
            let id = add_slot(
                &vm.live,
                HOT * SIZE_4K,
                REGION * SIZE_4K,
                hot_host,
                SlotFlags::empty(),
            )
            .unwrap();
            if round % 4 == 0 {
                // A marker in the slot's first frame appears at the new gfns.
                vm.host[(hot_host / SIZE_4K - HOST) as usize + 100]
                    .store(u64::MAX - round, Ordering::Relaxed);
                let old = move_slot(&vm.live, &vm.ept, id, HOT2 * SIZE_4K, || {}).unwrap();
                assert_eq!(old.base_gfn, HOT);
                assert!(
                    ept_range_empty(&vm.ept, HOT, REGION),
                    "round {round}: moved slot still mapped"
                );
                let seen = vm.live.with_active(|s| {
                    let slot = s.lookup(HOT2 + 100, &mut Default::default()).unwrap();
                    vm.host[(slot.host_phys(HOT2 + 100) / SIZE_4K - HOST) as usize]
                        .load(Ordering::Relaxed)
                });
                assert_eq!(seen, u64::MAX - round);
                let old = delete_slot(&vm.live, &vm.ept, id, || {}).unwrap();
                assert_eq!(old.base_gfn, HOT2);
                assert!(
                    ept_range_empty(&vm.ept, HOT2, REGION),
                    "round {round}: deleted slot still mapped"
                );
            } else {
                let old = delete_slot(&vm.live, &vm.ept, id, || {}).unwrap();
                assert_eq!((old.base_gfn, old.npages), (HOT, REGION));
                assert!(
                    ept_range_empty(&vm.ept, HOT, REGION),
                    "round {round}: deleted slot still mapped"
                );
            }
            if round == rounds / 2 {
                // Dirty logging on, mid-run: clear, flag, protect (splits).
                for i in 0..VCPUS as u16 {
                    vm.dirty[usize::from(i)].clear_all();
                    vm.live.with_active(|s| {
                        s.get_by_id(i).unwrap().insert_flags(SlotFlags::DIRTY_LOG)
                    });
                    vm.ept
                        .write_protect_range(u64::from(i) * REGION * SIZE_4K, REGION * SIZE_4K)
                        .unwrap();
                }
            }
            let g = vm.live.generation();
            assert!(g > generations);
            generations = g;
        }
        // Let every vCPU finish at least two passes after logging began.
        let start = passes.load(Ordering::Relaxed);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let _ = start;
        vm.stop.store(true, Ordering::Release);
    });
    // Nothing lost: each vCPU's pages hold the value of its last full pass
    // or the one after (the pass it was in when told to stop is complete:
    // the loop checks `stop` only between passes).
    for id in 0..VCPUS as u64 {
        let first = vm.host[(id * REGION) as usize].load(Ordering::Relaxed);
        assert!(first > 0);
        for p in 0..REGION {
            let v = vm.host[(id * REGION + p) as usize].load(Ordering::Relaxed);
            assert_eq!(
                v, first,
                "vCPU {id} page {p}: {v} != {first}: a write was lost"
            );
        }
        // Logged since midway, never harvested: every page was reported.
        let bitmap = &vm.dirty[id as usize];
        assert_eq!(bitmap.count(), REGION, "vCPU {id}: dirty log misses pages");
        // No 2 MiB leaf survived in a logged slot.
        vm.ept.for_each_leaf(|l| {
            if l.gpa / SIZE_4K / REGION == id {
                assert_eq!(l.size, PageSize::Size4K);
            }
        });
    }
    assert!(passes.load(Ordering::Relaxed) >= VCPUS as u64);
}

fn ept_range_empty(ept: &Ept<&'static TestMem>, gfn: u64, n: u64) -> bool {
    (gfn..gfn + n).all(|g| ept.translate(g * SIZE_4K).is_none())
}

#[test]
fn update_errors_publish_nothing() {
    let vm = Vm::new();
    let g = vm.live.generation();
    assert_eq!(
        add_slot(&vm.live, 0, SIZE_4K, 0, SlotFlags::empty()),
        Err(UpdateError::Slot(SlotError::Overlap {
            id: 0,
            base_gfn: 0,
            end_gfn: REGION
        }))
    );
    assert_eq!(
        delete_slot(&vm.live, &vm.ept, 9, || panic!("no flush")),
        Err(UpdateError::Slot(SlotError::NoSuchSlot(9)))
    );
    assert_eq!(vm.live.generation(), g);
    assert_eq!(
        vm.live.set_flags(9, SlotFlags::empty()),
        Err(SlotError::NoSuchSlot(9))
    );
}

#[test]
fn a_reader_holds_back_the_writer_until_its_exit() {
    let vm = Vm::new();
    let guard = vm.live.read(3);
    assert_eq!(guard.generation(), 1);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let old = delete_slot(&vm.live, &vm.ept, 0, || {}).unwrap();
            assert_eq!(old.base_gfn, 0);
            done.store(true, Ordering::Release);
        });
        std::thread::sleep(std::time::Duration::from_millis(30));
        // The old array is still ours, with slot 0 in it.
        assert!(
            !done.load(Ordering::Acquire),
            "the update did not wait for the reader"
        );
        assert_eq!(
            guard
                .slots()
                .lookup(5, &mut Default::default())
                .map(Memslot::id),
            Some(0)
        );
        drop(guard); // the quiescent point
    });
    assert!(done.load(Ordering::Acquire));
    let guard = vm.live.read(3);
    assert_eq!(guard.generation(), 2);
    assert!(guard.slots().lookup(5, &mut Default::default()).is_none());
}
