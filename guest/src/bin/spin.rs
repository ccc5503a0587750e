//! # spin: a guest that never exits again
//!
//! Tests the watchdog. The guest says where it is going, turns interrupts
//! off and loops on itself: no instruction in the loop exits, so only the
//! hypervisor's watchdog (the VMX-preemption timer) can end the run. The
//! pass is the hypervisor's `WATCHDOG: vCPU 0 made no VM exit ...` report
//! naming this loop's RIP; the guest itself never reports.
#![no_std]
#![no_main]

use core::arch::asm;
use guest::abi::BootInfo;
use guest::println;

guest::entry!(main);

fn main(boot: &'static BootInfo) -> ! {
    let here: u64;
    // SAFETY: reads the address of the loop below.
    unsafe { asm!("lea {}, [rip + 2f]", "2:", out(reg) here, options(nomem, nostack)) };
    println!(
        "spin: vCPU {}: looping with interrupts off from about {here:#x}",
        boot.vcpu_id
    );
    // SAFETY: masks interrupts and spins; nothing exits.
    unsafe { asm!("cli", "3:", "jmp 3b", options(nomem, nostack, noreturn)) }
}
