//! # smoke: the first guest to run
//!
//! Tests the basic exits and the hypervisor's CPUID view, in this order:
//! 1. **Port I/O**: writes `hello from the guest` to COM1 (0x3F8), polling the
//!    line status register (0x3FD) for bit 5 (transmit holding register empty)
//!    before each byte. The hypervisor must emulate or pass through `IN 0x3FD`
//!    with bit 5 set, or the guest gives up after a bounded poll (code 1).
//! 2. **CPUID.1:ECX**: bit 31 (hypervisor present) must be set (code 2) and
//!    bit 5 (VMX) must be clear (code 3): the guest is not offered nested VMX.
//! 3. **CPUID 0x4000_0000**: EBX, ECX, EDX must spell `abi::CPUID_SIGNATURE`,
//!    "RustHyperVMX" (code 4).
//! 4. **Hypercalls**: prints the results through `HC_CONSOLE_WRITE`, reports
//!    pass (`HC_REPORT` 0, value = number of checks passed, 3) or the first
//!    failed check's code with the offending register(s) as value (code 4:
//!    EBX | ECX << 32), then `HC_SHUTDOWN`.
//!
//! Expected console output on success ends with `smoke: PASS`.
#![no_std]
#![no_main]

use guest::abi::{BootInfo, CPUID_SIGNATURE};
use guest::{cpuid, println, Com1};

guest::entry!(main);

/// COM1 never reported an empty transmit register.
const FAIL_SERIAL: u64 = 1;
/// CPUID.1:ECX bit 31 (hypervisor present) is clear.
const FAIL_NO_HYPERVISOR_BIT: u64 = 2;
/// CPUID.1:ECX bit 5 (VMX) is set.
const FAIL_VMX_VISIBLE: u64 = 3;
/// CPUID 0x4000_0000 does not return the signature.
const FAIL_SIGNATURE: u64 = 4;

const ECX_VMX: u32 = 1 << 5;
const ECX_HYPERVISOR: u32 = 1 << 31;

fn main(boot: &'static BootInfo) -> ! {
    let mut com1 = Com1::new();
    if com1.write_bytes(b"hello from the guest\n").is_err() {
        println!("smoke: FAIL: COM1 LSR (0x3FD) never showed bit 5 (THR empty)");
        guest::fail(FAIL_SERIAL, 0);
    }
    println!(
        "smoke: vCPU {} of {}, {} MiB of guest RAM",
        boot.vcpu_id,
        boot.vcpu_count,
        boot.mem_bytes >> 20
    );

    let leaf1 = cpuid(1, 0);
    println!(
        "smoke: CPUID.1: ECX={:#010x} EDX={:#010x}",
        leaf1.ecx, leaf1.edx
    );
    if leaf1.ecx & ECX_HYPERVISOR == 0 {
        println!("smoke: FAIL: CPUID.1:ECX bit 31 (hypervisor present) is clear");
        guest::fail(FAIL_NO_HYPERVISOR_BIT, leaf1.ecx.into());
    }
    if leaf1.ecx & ECX_VMX != 0 {
        println!("smoke: FAIL: CPUID.1:ECX bit 5 (VMX) is visible to the guest");
        guest::fail(FAIL_VMX_VISIBLE, leaf1.ecx.into());
    }

    let hv = cpuid(0x4000_0000, 0);
    let mut signature = [0u8; 12];
    signature[0..4].copy_from_slice(&hv.ebx.to_le_bytes());
    signature[4..8].copy_from_slice(&hv.ecx.to_le_bytes());
    signature[8..12].copy_from_slice(&hv.edx.to_le_bytes());
    let shown = core::str::from_utf8(&signature).unwrap_or("(not UTF-8)");
    println!(
        "smoke: CPUID 0x40000000: max leaf {:#x}, signature {:?}",
        hv.eax, shown
    );
    if &signature != CPUID_SIGNATURE {
        println!(
            "smoke: FAIL: hypervisor signature is not {:?}",
            core::str::from_utf8(CPUID_SIGNATURE).unwrap_or("")
        );
        guest::fail(FAIL_SIGNATURE, u64::from(hv.ebx) | u64::from(hv.ecx) << 32);
    }

    println!("smoke: PASS");
    guest::pass(3)
}
