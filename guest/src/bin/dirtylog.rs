//! # dirtylog: the dirty-page-logging workload
//!
//! The guest half of a KVM `dirty_log_perf_test`-style benchmark. Each vCPU
//! owns the region `[region_start, region_start + region_bytes)` from its boot
//! info, and for iteration `i = 1, 2, ...`:
//! 1. writes one u64, the value `i`, at the start of every 4 KiB page of its
//!    region (a tight loop: one store per page, so the time goes into the
//!    hypervisor's write-protection faults, not the guest);
//! 2. calls `HC_ITERATION_DONE(i)`, which returns when the controller has
//!    collected and cleared the dirty log and starts the next iteration:
//!    0 = go on, 1 = stop.
//!
//! It runs `iterations` rounds, or, if `iterations` is 0, until the controller
//! answers 1. Because the value changes every round, every page is dirtied
//! every round, and the controller must find every page of the region in each
//! round's log. At the end the guest re-reads one word per page (reads do not
//! dirty pages) and checks it holds the last iteration number.
//!
//! Report: pass with `value` = the number of iterations done; failure code 1
//! (`value` = the reply) if `HC_ITERATION_DONE` returns anything but 0 or 1,
//! code 2 (`value` = the page) if a page does not hold the last value.
//! [`guest::code::BAD_LAYOUT`] if the region is not page-aligned or not inside
//! `[free_start, mem_bytes)`.
#![no_std]
#![no_main]

use guest::abi::BootInfo;
use guest::{code, println, PAGE_SIZE};

guest::entry!(main);

/// `HC_ITERATION_DONE` returned neither 0 (go on) nor 1 (stop).
const FAIL_BAD_REPLY: u64 = 1;
/// After the last iteration a page did not hold the last iteration's value.
const FAIL_LOST_WRITE: u64 = 2;

/// Writes `value` to the first u64 of every page in `[start, end)`.
#[inline(never)]
fn dirty_pages(start: u64, end: u64, value: u64) {
    let mut page = start;
    while page < end {
        // SAFETY: [start, end) is this vCPU's region, checked in `main` to be
        // page-aligned guest RAM inside [free_start, mem_bytes), not page 0:
        // memory the ABI gives the guest and no Rust object occupies.
        unsafe { (page as *mut u64).write_volatile(value) };
        page += PAGE_SIZE;
    }
}

fn main(boot: &'static BootInfo) -> ! {
    let start = boot.region_start;
    let end = start.checked_add(boot.region_bytes);
    let end = match end {
        Some(end)
            if start.is_multiple_of(PAGE_SIZE)
                && boot.region_bytes.is_multiple_of(PAGE_SIZE)
                && start >= boot.free_start.max(PAGE_SIZE)
                && end <= boot.mem_bytes =>
        {
            end
        }
        _ => {
            println!(
                "dirtylog: FAIL: vCPU {}: region {start:#x} + {:#x} is not page-aligned inside \
                 the free RAM [{:#x}, {:#x})",
                boot.vcpu_id, boot.region_bytes, boot.free_start, boot.mem_bytes
            );
            guest::fail(code::BAD_LAYOUT, start);
        }
    };
    let pages = boot.region_bytes / PAGE_SIZE;
    let planned = u64::from(boot.iterations);
    if planned == 0 {
        println!(
            "dirtylog: vCPU {}: {pages} pages [{start:#x}, {end:#x}), iterations until stopped",
            boot.vcpu_id
        );
    } else {
        println!(
            "dirtylog: vCPU {}: {pages} pages [{start:#x}, {end:#x}), {planned} iterations",
            boot.vcpu_id
        );
    }

    let mut done = 0u64;
    loop {
        let i = done + 1;
        if planned != 0 && i > planned {
            break;
        }
        dirty_pages(start, end, i);
        done = i;
        match guest::iteration_done(i) {
            0 => {}
            1 => break,
            reply => {
                println!("dirtylog: FAIL: HC_ITERATION_DONE({i}) returned {reply:#x}");
                guest::fail(FAIL_BAD_REPLY, reply);
            }
        }
    }

    let mut page = start;
    while page < end {
        // SAFETY: as in `dirty_pages`; a read of this vCPU's own region.
        let got = unsafe { (page as *const u64).read_volatile() };
        if got != done {
            println!(
                "dirtylog: FAIL: vCPU {}: page {page:#x} holds {got}, last iteration wrote {done}",
                boot.vcpu_id
            );
            guest::fail(FAIL_LOST_WRITE, page);
        }
        page += PAGE_SIZE;
    }

    println!(
        "dirtylog: vCPU {}: {done} iterations over {pages} pages done",
        boot.vcpu_id
    );
    guest::pass(done)
}
