//! # pagerace: several vCPUs fault on the same pages at the same time
//!
//! The SMP test of the EPT-violation path. The 64 pages
//! `[free_start, free_start + 64 * 4 KiB)` start unmapped. Every vCPU walks
//! them in the same order and, in each page, writes `TAG | vcpu_id` to its own
//! u64 slot (slot index = `vcpu_id`, so up to 512 vCPUs share each page). The
//! vCPUs therefore take EPT violations on the same gfn at nearly the same
//! moment, and the hypervisor must resolve each one exactly right: both
//! vCPUs' writes must land in the same host frame, the handler must cope with
//! "already mapped by another vCPU", and nothing may be mapped twice.
//!
//! To make the faults overlap, the vCPUs first meet at a start line (a
//! counter in the image's .bss); a vCPU waits a bounded time for the others,
//! then goes anyway, so a vCPU that never starts cannot hang the rest.
//!
//! Verification: each vCPU re-reads its own slot in every page. The last vCPU
//! to finish (by a second counter, incremented after a vCPU's writes) also
//! checks every slot of every vCPU: all writers are done by then.
//!
//! Report: pass with `value` = slots verified (64, or 64 × `vcpu_count` for
//! the last vCPU); failure code 1 with `value` =
//! the page whose slot was wrong. [`guest::code::BAD_LAYOUT`] if the 64 pages
//! do not fit in free RAM or there are more than 512 vCPUs.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};
use guest::abi::BootInfo;
use guest::{code, println, PAGE_SIZE};

guest::entry!(main);

/// A slot read back the wrong value.
const FAIL_MISMATCH: u64 = 1;

/// Pages every vCPU writes.
const PAGES: u64 = 64;
/// Marks a written slot, so vCPU 0's value differs from untouched memory.
const TAG: u64 = 0x5041_4745_0000_0000; // "PAGE" in the high half
/// Spins at the start line before a vCPU gives up waiting for the others.
const START_SPINS: u64 = 10_000_000;

/// vCPUs that reached the start line. All vCPUs run this one loaded image, so
/// its .bss is shared guest memory (zeroed by the loader).
static ARRIVED: AtomicU32 = AtomicU32::new(0);
/// vCPUs that finished writing.
static FINISHED: AtomicU32 = AtomicU32::new(0);

fn slot(page: u64, vcpu: u64) -> *mut u64 {
    (page + vcpu * 8) as *mut u64
}

/// Checks vCPU `vcpu`'s slot in every page; returns the first bad page.
fn check(base: u64, vcpu: u64) -> Result<(), (u64, u64)> {
    for n in 0..PAGES {
        let page = base + n * PAGE_SIZE;
        // SAFETY: the slot lies in the checked [free_start, free_start + 64
        // pages) region of free guest RAM, which no Rust object occupies; the
        // address is 8-byte aligned and non-null. Other vCPUs write only their
        // own slots, and a volatile u64 read of an aligned word is atomic.
        let got = unsafe { slot(page, vcpu).read_volatile() };
        if got != TAG | vcpu {
            return Err((page, got));
        }
    }
    Ok(())
}

fn main(boot: &'static BootInfo) -> ! {
    let base = boot.free_start;
    let (id, count) = (u64::from(boot.vcpu_id), u64::from(boot.vcpu_count));
    let fits = base
        .checked_add(PAGES * PAGE_SIZE)
        .is_some_and(|end| end <= boot.mem_bytes);
    if !fits || base == 0 || !base.is_multiple_of(PAGE_SIZE) || id >= count || count > PAGE_SIZE / 8
    {
        println!(
            "pagerace: FAIL: need 64 free pages at a page-aligned free_start ({base:#x}, RAM \
             ends at {:#x}) and 1..=512 vCPUs (vCPU {id} of {count})",
            boot.mem_bytes
        );
        guest::fail(code::BAD_LAYOUT, base);
    }

    // Start line: wait (bounded) until every vCPU is here.
    ARRIVED.fetch_add(1, Ordering::AcqRel);
    let mut spins = 0;
    while u64::from(ARRIVED.load(Ordering::Acquire)) < count && spins < START_SPINS {
        core::hint::spin_loop();
        spins += 1;
    }
    let together = u64::from(ARRIVED.load(Ordering::Acquire)) >= count;

    for n in 0..PAGES {
        let page = base + n * PAGE_SIZE;
        // SAFETY: as in `check`; this vCPU is the only writer of its slot.
        unsafe { slot(page, id).write_volatile(TAG | id) };
    }
    let finished = FINISHED.fetch_add(1, Ordering::AcqRel) + 1;

    if let Err((page, got)) = check(base, id) {
        println!("pagerace: FAIL: vCPU {id}: own slot in page {page:#x} reads {got:#x}");
        guest::fail(FAIL_MISMATCH, page);
    }
    let mut checked = PAGES;
    if u64::from(finished) == count {
        // Every other vCPU's writes happened before its FINISHED increment,
        // which this vCPU's AcqRel increment has observed.
        for other in 0..count {
            if let Err((page, got)) = check(base, other) {
                println!(
                    "pagerace: FAIL: vCPU {id} (last): vCPU {other}'s slot in page {page:#x} \
                     reads {got:#x}"
                );
                guest::fail(FAIL_MISMATCH, page);
            }
        }
        checked = PAGES * count;
    }

    println!(
        "pagerace: vCPU {id}/{count}: wrote {PAGES} pages at {base:#x}{}, verified {checked} slots{}",
        if together { " after all vCPUs met" } else { " (start line timed out)" },
        if u64::from(finished) == count { " (last: all vCPUs)" } else { "" },
    );
    guest::pass(checked)
}
