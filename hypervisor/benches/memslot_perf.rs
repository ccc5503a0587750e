//! The cost of memslot changes while a VM exists, shaped like KVM's
//! memslot_perf_test: loops of map (add a slot and fault its pages in),
//! unmap (delete a mapped slot: unpublish, wait for readers, zap, flush)
//! and move (move a mapped slot: the same, then fault it in at its new
//! gfns), with 1, 64 and 508 other slots present.
//!
//! `cargo bench -p hypervisor --bench memslot_perf [-- --quick]`
//!
//! Host code only: `mm::live`, the EPT and the fault path. No vCPU holds a
//! read section here, so the wait for readers is its fast path; the flush
//! is a no-op (on hardware it is an INVEPT on every core).

use hypervisor::mm::ept::{Ept, EptMemory, ENTRIES};
use hypervisor::mm::fault::{self, Access, EptPages, Fault, Resolved};
use hypervisor::mm::live::{add_slot, delete_slot, move_slot, LiveSlots};
use hypervisor::mm::memslot::{
    CacheMode, Memslot, Memslots, SlotFlags, VcpuIndex, VcpuSlotCache, PAGE_SIZE,
};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Instant;

struct Arena {
    free: Mutex<Vec<u64>>,
}

#[repr(C, align(4096))]
struct Frame([AtomicU64; ENTRIES]);

// SAFETY: leaked, 4 KiB-aligned frames, zeroed when handed out, reused only
// after `free_table`.
unsafe impl EptMemory for Arena {
    fn alloc_table(&self) -> Option<u64> {
        if let Some(phys) = self.free.lock().unwrap().pop() {
            // SAFETY: a frame of ours, freed by its user.
            for e in unsafe { self.table(phys) } {
                e.store(0, std::sync::atomic::Ordering::Relaxed);
            }
            return Some(phys);
        }
        Some(Box::into_raw(Box::new(Frame(core::array::from_fn(|_| AtomicU64::new(0))))) as u64)
    }

    unsafe fn free_table(&self, phys: u64) {
        self.free.lock().unwrap().push(phys);
    }

    unsafe fn table(&self, phys: u64) -> &[AtomicU64; ENTRIES] {
        // SAFETY: a leaked `Frame` from `alloc_table`.
        unsafe { &(*(phys as *const Frame)).0 }
    }
}

/// The test slot: 2 MiB (512 pages) at this gfn, or at MOVED after a move.
const PAGES: u64 = 512;
const AT: u64 = 1 << 20;
const MOVED: u64 = AT + 4096;
const HOST: u64 = 0x80_0000_0000;

/// Faults every page of the slot at `base` in (writes), as a vCPU would.
fn fault_in(live: &LiveSlots, ept: &Ept<&'static Arena>, base: u64, pages: EptPages) {
    let w = Access {
        read: false,
        write: true,
        fetch: false,
    };
    let mut cache = VcpuSlotCache::new();
    let guard = live.read(0);
    for gfn in base..base + PAGES {
        if ept.translate(gfn * PAGE_SIZE).is_some() {
            continue; // a 2 MiB leaf covers it
        }
        let slot = guard.slots().lookup_with::<VcpuIndex>(gfn, &mut cache);
        let (Fault::Map { perms }, Some(slot)) = (fault::decide(w, slot.map(Memslot::flags)), slot)
        else {
            panic!("gfn {gfn:#x} unbacked");
        };
        let r = fault::map_fault(ept, slot, gfn, w, perms, pages, |_, _| {});
        assert!(matches!(r, Ok(Resolved::Mapped(_))), "{r:?}");
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let loops = if quick { 200 } else { 2000 };
    println!("memslot changes, µs per loop ({loops} loops each; a 2 MiB slot, faulted in with 4 KiB or 2 MiB pages)");
    println!(
        "{:>6} {:>6}  {:>10} {:>10} {:>10} {:>10}",
        "others", "pages", "add", "map", "unmap", "move"
    );
    let arena: &'static Arena = Box::leak(Box::new(Arena {
        free: Mutex::new(Vec::new()),
    }));
    for others in [1u64, 64, 508] {
        for pages in [EptPages::Only4K, EptPages::Allow2M] {
            let mut slots = Memslots::new(CacheMode::Vcpu);
            for i in 0..others {
                slots
                    .insert(
                        i * PAGE_SIZE,
                        PAGE_SIZE,
                        HOST + i * PAGE_SIZE,
                        SlotFlags::empty(),
                    )
                    .unwrap();
            }
            let live = LiveSlots::new(slots);
            let ept = Ept::new(arena).unwrap();
            let host = HOST + (1 << 30);
            let (mut add, mut map, mut unmap, mut mv) = (0u128, 0u128, 0u128, 0u128);
            for _ in 0..loops {
                let t = Instant::now();
                let id = add_slot(
                    &live,
                    AT * PAGE_SIZE,
                    PAGES * PAGE_SIZE,
                    host,
                    SlotFlags::empty(),
                )
                .unwrap();
                let t1 = Instant::now();
                fault_in(&live, &ept, AT, pages);
                let t2 = Instant::now();
                move_slot(&live, &ept, id, MOVED * PAGE_SIZE, || {}).unwrap();
                fault_in(&live, &ept, MOVED, pages);
                let t3 = Instant::now();
                delete_slot(&live, &ept, id, || {}).unwrap();
                let t4 = Instant::now();
                add += (t1 - t).as_nanos();
                map += (t2 - t1).as_nanos();
                mv += (t3 - t2).as_nanos();
                unmap += (t4 - t3).as_nanos();
            }
            let us = |ns: u128| ns as f64 / loops as f64 / 1000.0;
            println!(
                "{others:>6} {:>6}  {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                pages.as_str(),
                us(add),
                us(map),
                us(unmap),
                us(mv)
            );
        }
    }
    println!("add: publish a copy of the array; map: fault the 512 pages in; unmap: delete (publish, zap, flush); move: move (publish, zap, flush) and fault in again");
}
