//! # unbacked: a write to guest-physical memory that no memslot backs
//!
//! Tests containment. The guest writes one u64 to guest-physical
//! `mem_bytes + 0x10_0000`: 1 MiB past the end of guest RAM, but inside the
//! 4 GiB identity map, so the guest's own page tables allow the access and it
//! reaches the hypervisor as an EPT violation on a gfn that no memslot backs.
//! The hypervisor must not map anything there; it must stop the vCPU and say
//! so in its report (today: containment; later the MMIO bus gets it first).
//!
//! The guest announces the address on the console before the write. If
//! execution ever continues past the write, the test failed: the guest prints
//! `FAIL: write to unbacked memory was not contained`, reports failure code 1
//! with `value` = the address, and shuts down with status 1. There is no pass
//! report: the hypervisor's containment message is the pass.
#![no_std]
#![no_main]

use guest::abi::BootInfo;
use guest::{code, println, IDENTITY_MAP_END};

guest::entry!(main);

/// The write went through (or was silently dropped) and the vCPU kept running.
const FAIL_NOT_CONTAINED: u64 = 1;

/// How far past the end of RAM the write lands.
const PAST_END: u64 = 0x10_0000;

/// The value written; shows up in a hypervisor dump of the exit, if any.
const POISON: u64 = 0xBAD0_BAD0_BAD0_BAD0;

fn main(boot: &'static BootInfo) -> ! {
    let target = match boot.mem_bytes.checked_add(PAST_END) {
        Some(t) if t.is_multiple_of(8) && t + 8 <= IDENTITY_MAP_END => t,
        _ => {
            println!(
                "unbacked: FAIL: mem_bytes {:#x} + {PAST_END:#x} is not an aligned address \
                 inside the 4 GiB identity map",
                boot.mem_bytes
            );
            guest::fail(code::BAD_LAYOUT, boot.mem_bytes);
        }
    };

    println!(
        "unbacked: vCPU {}: writing {POISON:#x} to guest-physical {target:#x}, {PAST_END:#x} past \
         the end of RAM ({:#x}); the hypervisor must stop this vCPU",
        boot.vcpu_id, boot.mem_bytes
    );

    // SAFETY: `target` is 8-byte aligned, non-null and inside the identity
    // map, so the store is a well-formed access to an address no Rust object
    // uses. No guest RAM backs it: that is the point of the test, and the
    // hypervisor is expected to stop the vCPU on this instruction.
    unsafe { (target as *mut u64).write_volatile(POISON) };

    println!("FAIL: write to unbacked memory was not contained");
    guest::fail(FAIL_NOT_CONTAINED, target)
}
