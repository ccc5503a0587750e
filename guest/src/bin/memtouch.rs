//! # memtouch: every page of guest RAM, exactly one first touch each
//!
//! Tests lazy EPT population: the hypervisor starts with empty EPT tables and
//! maps a page on its first EPT violation, so after this guest has run, its
//! count of EPT-violation exits must equal the number of RAM pages,
//! `mem_bytes / 4096` (each page faults once: never zero times, never twice).
//!
//! - `[0, free_start)` holds the image, the guest page tables, the stacks and
//!   the boot-info pages. vCPU 0 only **reads** one byte of each of these
//!   pages (writing could corrupt them).
//! - `[free_start, mem_bytes)` is free. Its pages are split evenly among the
//!   vCPUs by `vcpu_id` (vCPU `i` of `n` takes pages `[N*i/n, N*(i+1)/n)`),
//!   and each vCPU **writes** two words per page of its share, the first and
//!   the last u64, with `pattern(a) = splitmix64(a ^ SEED)` where `a` is the
//!   word's guest-physical address. It then re-reads and verifies all of them.
//!
//! Report: pass with `value` = the wrapping sum of every word written (so the
//! sum over all vCPUs depends only on `free_start` and `mem_bytes`), or
//! failure code 1 with `value` = the guest-physical address of the first page
//! that read back wrong. [`guest::code::BAD_LAYOUT`] if the boot info is
//! unusable (not page-aligned, `free_start > mem_bytes`, RAM beyond the 4 GiB
//! identity map, `vcpu_id >= vcpu_count`).
//!
//! One summary line per vCPU: `memtouch: vCPU i/n: read .. low pages, wrote
//! and verified .. pages [..), checksum ..`.
#![no_std]
#![no_main]

use core::arch::asm;
use guest::abi::BootInfo;
use guest::{code, println, IDENTITY_MAP_END, PAGE_SIZE};

guest::entry!(main);

/// A page read back something other than what was written.
const FAIL_MISMATCH: u64 = 1;

/// Mixed into every pattern word ("memtouch").
const SEED: u64 = u64::from_le_bytes(*b"memtouch");

/// Offsets of the words written in each free page: the first and the last.
const WORD_OFFSETS: [u64; 2] = [0, PAGE_SIZE - 8];

/// The value written at guest-physical `addr`.
fn pattern(addr: u64) -> u64 {
    // splitmix64's finalizer: distinct addresses give unrelated values.
    let mut z = (addr ^ SEED).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Reads the byte at guest-physical `addr`. Inline asm, not a Rust pointer
/// read: page 0 is RAM here, but a Rust null-pointer read would be undefined.
fn read_byte(addr: u64) -> u8 {
    let value: u8;
    // SAFETY: callers pass addresses in [0, free_start): guest RAM inside the
    // identity map, so the load is a plain RAM read with no side effects. It
    // only reads, and uses no stack.
    unsafe {
        asm!(
            "mov {value}, byte ptr [{addr}]",
            addr = in(reg) addr,
            value = out(reg_byte) value,
            options(nostack, preserves_flags, readonly),
        );
    }
    value
}

/// Pointer to the word at guest-physical `addr` in the free region.
fn word(addr: u64) -> *mut u64 {
    addr as *mut u64
}

fn main(boot: &'static BootInfo) -> ! {
    let (mem, free) = (boot.mem_bytes, boot.free_start);
    let (id, count) = (u64::from(boot.vcpu_id), u64::from(boot.vcpu_count));
    if !mem.is_multiple_of(PAGE_SIZE)
        || !free.is_multiple_of(PAGE_SIZE)
        || free == 0
        || free > mem
        || mem > IDENTITY_MAP_END
        || id >= count
    {
        println!(
            "memtouch: FAIL: unusable boot info: mem_bytes {mem:#x} free_start {free:#x} \
             vcpu {id}/{count} (need page-aligned 0 < free_start <= mem_bytes <= 4 GiB, \
             vcpu_id < vcpu_count)"
        );
        guest::fail(code::BAD_LAYOUT, 0);
    }

    // 1. The occupied low pages: vCPU 0 reads one byte of each.
    let low_pages = if id == 0 { free / PAGE_SIZE } else { 0 };
    let mut low_sum = 0u64;
    for page in 0..low_pages {
        low_sum = low_sum.wrapping_add(u64::from(read_byte(page * PAGE_SIZE)));
    }

    // 2. This vCPU's share of the free pages.
    let free_pages = (mem - free) / PAGE_SIZE;
    let first = free + free_pages * id / count * PAGE_SIZE;
    let end = free + free_pages * (id + 1) / count * PAGE_SIZE;

    let mut page = first;
    while page < end {
        for off in WORD_OFFSETS {
            // SAFETY: [first, end) lies in [free_start, mem_bytes): guest RAM
            // the ABI leaves to the guest, that no Rust object occupies and
            // that no other vCPU writes (the shares are disjoint). The address
            // is 8-byte aligned and non-null (free_start > 0).
            unsafe { word(page + off).write_volatile(pattern(page + off)) };
        }
        page += PAGE_SIZE;
    }

    // 3. Re-read and verify; the checksum sums what was read back.
    let mut checksum = 0u64;
    let mut page = first;
    while page < end {
        for off in WORD_OFFSETS {
            // SAFETY: as for the write above.
            let got = unsafe { word(page + off).read_volatile() };
            let want = pattern(page + off);
            if got != want {
                println!(
                    "memtouch: FAIL: vCPU {id}: page {page:#x} + {off:#x} reads {got:#018x}, \
                     wrote {want:#018x}"
                );
                guest::fail(FAIL_MISMATCH, page);
            }
            checksum = checksum.wrapping_add(got);
        }
        page += PAGE_SIZE;
    }

    let written = (end - first) / PAGE_SIZE;
    println!(
        "memtouch: vCPU {id}/{count}: read {low_pages} low pages [0, {:#x}) (byte sum {low_sum:#x}), \
         wrote and verified {written} pages [{first:#x}, {end:#x}), checksum {checksum:#018x}",
        low_pages * PAGE_SIZE
    );
    guest::pass(checksum)
}
