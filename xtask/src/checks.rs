//! Every option is checked once, up front, against the real limit, before
//! anything is built or booted; an error names the option and the limit.
//!
//! Limits the hypervisor has come from `hypervisor::limits` (and the guest
//! layout): no copies here. What is here is what the emulators allow,
//! measured on Bochs 2.7 (Debian 2.7+dfsg-4):
//!
//! - `megs: 2049` is refused at start-up: `>>PANIC<< numerical parameter
//!   'host_size' was set to 2049, which is out of range 1 to 2048` (2048
//!   boots the smoke guest);
//! - `cpu: count=16` is refused at start-up: `>>PANIC<< register_timer: too
//!   many registered timers` (15 boots, with each of the three CPU models the
//!   tests use).

use crate::emu::Backend;
use hypervisor::boot::native::MAPPED_GIB;
use hypervisor::limits::{MAX_CPUS, MAX_SLOTS, MAX_VCPUS, PAGE_SIZE};

/// The most machine memory Bochs 2.7 gives (`megs`/`host_size`), MiB.
pub const BOCHS_MAX_MIB: u64 = 2048;
/// The most cores Bochs 2.7 emulates (one more and it runs out of timers).
pub const BOCHS_MAX_CORES: u32 = 15;
/// Machine memory an emulator needs besides the guest's RAM: the
/// bootloader, the hypervisor with its heap, stacks, EPT tables and dirty
/// bitmaps (MiB).
pub const HV_RESERVE_MIB: u64 = 128;
/// Guest RAM the hypervisor can give a guest: its page tables identity-map
/// the first `MAPPED_GIB` GiB (hypervisor::boot::native).
pub const MAX_GUEST_MIB: u64 = MAPPED_GIB * 1024;

/// Emulated machine memory for `guest_mib` of guest RAM, in MiB (a multiple
/// of 32).
pub fn machine_mib(guest_mib: u64) -> u64 {
    (guest_mib + HV_RESERVE_MIB).next_multiple_of(32)
}

/// The most guest RAM (MiB) a run on `backend` can have; `None` is real
/// hardware (an image).
pub fn max_guest_mib(backend: Option<Backend>) -> u64 {
    match backend {
        // The largest guest whose machine still fits in BOCHS_MAX_MIB.
        Some(Backend::Bochs) => BOCHS_MAX_MIB - HV_RESERVE_MIB,
        _ => MAX_GUEST_MIB,
    }
}

/// Why `backend` gives at most `max_guest_mib(backend)`.
fn memory_reason(backend: Option<Backend>) -> String {
    match backend {
        Some(Backend::Bochs) => format!(
            "Bochs 2.7 gives a machine at most {BOCHS_MAX_MIB} MiB (its host_size limit) and \
             the hypervisor needs {HV_RESERVE_MIB} MiB of it besides the guest's"
        ),
        _ => format!(
            "the hypervisor's guest page tables map the first {MAPPED_GIB} GiB \
             (hypervisor::boot::native::MAPPED_GIB)"
        ),
    }
}

/// `value` is guest RAM in MiB; `what` says where it comes from (an option,
/// or the options it is made of).
pub fn guest_memory(backend: Option<Backend>, what: &str, mib: u64) -> Result<(), String> {
    let max = max_guest_mib(backend);
    if mib > max {
        return Err(format!(
            "{what}: at most {max} MiB of guest memory on {}: {}",
            backend.map_or_else(|| "hardware".to_string(), |b| b.to_string()),
            memory_reason(backend)
        ));
    }
    Ok(())
}

/// `cores` emulated cores for a run on `backend` (vCPUs, plus the
/// controller of a dirty-log run).
pub fn cores(backend: Option<Backend>, what: &str, cores: u32) -> Result<(), String> {
    if cores as usize > MAX_CPUS {
        return Err(format!(
            "{what}: {cores} cores, but the hypervisor drives at most \
             MAX_CPUS = {MAX_CPUS} (hypervisor::limits::MAX_CPUS)"
        ));
    }
    if backend == Some(Backend::Bochs) && cores > BOCHS_MAX_CORES {
        return Err(format!(
            "{what}: {cores} cores, but Bochs 2.7 emulates at most {BOCHS_MAX_CORES} \
             (with more it stops: \"register_timer: too many registered timers\")"
        ));
    }
    Ok(())
}

/// Parses a whole number for clap, with "not a number" said plainly.
fn number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number"))
}

/// `--cpus`: 1 to MAX_VCPUS.
pub fn vcpus(s: &str) -> Result<u32, String> {
    let n: u32 = number(s)?;
    if n == 0 || n > MAX_VCPUS {
        return Err(format!(
            "use 1 to {MAX_VCPUS} vCPUs (hypervisor::limits::MAX_VCPUS = {MAX_VCPUS})"
        ));
    }
    Ok(n)
}

/// `image --cpus`: 0 (one per core found) or 1 to MAX_VCPUS.
pub fn vcpus_or_all(s: &str) -> Result<u32, String> {
    match number::<u32>(s)? {
        0 => Ok(0),
        _ => vcpus(s),
    }
}

/// `-v` of a dirty-log run: vCPUs, and one core more for the controller.
pub fn dirty_vcpus(s: &str) -> Result<u32, String> {
    let n = vcpus(s)?;
    if n as usize + 1 > MAX_CPUS {
        return Err(format!(
            "{n} vCPUs and the controller need {} cores; the hypervisor drives at most \
             MAX_CPUS = {MAX_CPUS}",
            n + 1
        ));
    }
    Ok(n)
}

/// `--slots`: 1 to MAX_SLOTS.
pub fn slots(s: &str) -> Result<u32, String> {
    let n: u32 = number(s)?;
    if n == 0 || n as usize > MAX_SLOTS {
        return Err(format!(
            "use 1 to {MAX_SLOTS} memslots (hypervisor::limits::MAX_SLOTS = {MAX_SLOTS})"
        ));
    }
    Ok(n)
}

/// `--watchdog`: seconds of guest time without a VM exit (0 = off); at
/// most an hour (the VMX-preemption timer's 32 bits cover that on any TSC
/// rate with the usual shift).
pub fn watchdog_s(s: &str) -> Result<u64, String> {
    let n: u64 = number(s)?;
    if n > 3600 {
        return Err("use 0 (off) to 3600 seconds".into());
    }
    Ok(n)
}

/// `-x` of a dirty-log run: the run adds a base slot of its own.
pub fn dirty_slots(s: &str) -> Result<u32, String> {
    let n: u32 = number(s)?;
    let max = MAX_SLOTS - 1;
    if n == 0 || n as usize > max {
        return Err(format!(
            "use 1 to {max} memslots: the run adds a base slot, and the hypervisor has \
             MAX_SLOTS = {MAX_SLOTS} (hypervisor::limits::MAX_SLOTS)"
        ));
    }
    Ok(n)
}

/// `--mem`: at least 1 MiB (the backend's maximum is checked with it).
pub fn mem_mib(s: &str) -> Result<u64, String> {
    let n: u64 = number(s)?;
    if n == 0 {
        return Err("guest memory must not be empty: use at least 1 MiB".into());
    }
    if n > MAX_GUEST_MIB {
        return Err(format!(
            "at most {MAX_GUEST_MIB} MiB: {}",
            memory_reason(None)
        ));
    }
    Ok(n)
}

/// `--timeout`: at least one second.
pub fn timeout(s: &str) -> Result<u64, String> {
    let n: u64 = number(s)?;
    if n == 0 {
        return Err("give the run at least 1 second".into());
    }
    Ok(n)
}

/// `-i`: at least 2 (the benchmark reports "Iteration 2").
pub fn iterations(s: &str) -> Result<u32, String> {
    let n: u32 = number(s)?;
    if n < 2 {
        return Err("use at least 2 iterations (the benchmark reports \"Iteration 2\")".into());
    }
    Ok(n)
}

/// `-b`: a size like the KVM test's (see `parse_size`), a non-zero
/// multiple of the page size.
pub fn bytes_per_vcpu(s: &str) -> Result<u64, String> {
    let b = parse_size(s)?;
    if b == 0 || !b.is_multiple_of(PAGE_SIZE) {
        return Err(format!(
            "{b} bytes: use a non-zero multiple of {PAGE_SIZE} (the page size, \
             hypervisor::limits::PAGE_SIZE)"
        ));
    }
    Ok(b)
}

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// A size like the KVM test's `parse_size`: a number (decimal or 0x hex) with
/// an optional K, M or G suffix (either case), binary multiples.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], KIB),
        Some('m' | 'M') => (&t[..t.len() - 1], MIB),
        Some('g' | 'G') => (&t[..t.len() - 1], GIB),
        Some('b' | 'B') if !t.starts_with("0x") => (&t[..t.len() - 1], 1),
        _ => (t, 1),
    };
    let n = match num.strip_prefix("0x").or_else(|| num.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => num.parse::<u64>(),
    }
    .map_err(|_| format!("{s:?} is not a size (e.g. 4096, 64K, 1M, 1G)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// "1 MiB", "512 KiB", "4 GiB", else bytes.
pub fn fmt_size(b: u64) -> String {
    if b >= GIB && b.is_multiple_of(GIB) {
        format!("{} GiB", b / GIB)
    } else if b >= MIB && b.is_multiple_of(MIB) {
        format!("{} MiB", b / MIB)
    } else if b >= KIB && b.is_multiple_of(KIB) {
        format!("{} KiB", b / KIB)
    } else {
        format!("{b} bytes")
    }
}

/// Option help that states the limits, made from the same constants.
pub mod help {
    use super::*;

    pub fn cpus() -> String {
        format!(
            "vCPUs, one emulated core each (1 to MAX_VCPUS = {MAX_VCPUS}; Bochs: at most \
             {BOCHS_MAX_CORES})"
        )
    }

    pub fn image_cpus() -> String {
        format!("vCPUs (0: one per core found, at most MAX_VCPUS = {MAX_VCPUS})")
    }

    pub fn mem() -> String {
        format!(
            "Guest RAM in MiB from guest-physical 0 (at most {MAX_GUEST_MIB}; Bochs: at most {}; \
             a kernel run: at most {}) [default: 16; with --kernel {} (QEMU's)]",
            max_guest_mib(Some(Backend::Bochs)),
            hypervisor::machine::board::PCI_HOLE >> 20,
            crate::spec::KERNEL_DEFAULT_MIB
        )
    }

    pub fn slots() -> String {
        format!("Equal memslots the guest RAM is split into (1 to MAX_SLOTS = {MAX_SLOTS})")
    }

    pub fn dirty_vcpus() -> String {
        format!(
            "vCPUs, one core each, plus one for the controller (1 to {}; Bochs: at most {})",
            MAX_VCPUS.min(MAX_CPUS as u32 - 1),
            BOCHS_MAX_CORES - 1
        )
    }

    pub fn dirty_slots() -> String {
        format!(
            "Memslots the test memory is split into (1 to MAX_SLOTS - 1 = {}: the run adds a \
             base slot) [default: 1]",
            MAX_SLOTS - 1
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_come_from_the_hypervisor() {
        assert_eq!(MAX_VCPUS, 62);
        assert_eq!(MAX_SLOTS, 509);
        assert!(vcpus("62").is_ok());
        let e = vcpus("63").unwrap_err();
        assert!(e.contains("MAX_VCPUS = 62"), "{e}");
        assert!(vcpus("0").is_err() && vcpus("lots").is_err());
        assert_eq!(vcpus_or_all("0"), Ok(0));
        assert!(slots("509").is_ok() && slots("510").is_err() && slots("0").is_err());
        assert!(dirty_slots("508").is_ok());
        let e = dirty_slots("509").unwrap_err();
        assert!(
            e.contains("1 to 508") && e.contains("MAX_SLOTS = 509"),
            "{e}"
        );
        assert_eq!(dirty_vcpus("62"), Ok(62));
        assert!(timeout("0").unwrap_err().contains("at least 1 second"));
        assert_eq!(timeout("1"), Ok(1));
        assert!(mem_mib("0").is_err());
        assert!(mem_mib(&(MAX_GUEST_MIB + 1).to_string()).is_err());
    }

    #[test]
    fn backends_have_their_own_limits() {
        let bochs = Some(Backend::Bochs);
        assert_eq!(max_guest_mib(bochs), 1920);
        assert!(machine_mib(1920) <= BOCHS_MAX_MIB);
        assert!(machine_mib(1921) > BOCHS_MAX_MIB);
        assert!(guest_memory(bochs, "--mem 1920", 1920).is_ok());
        let e = guest_memory(bochs, "--mem 2048", 2048).unwrap_err();
        assert!(
            e.contains("at most 1920 MiB") && e.contains("2048 MiB"),
            "{e}"
        );
        assert!(guest_memory(Some(Backend::Qemu), "--mem 2048", 2048).is_ok());
        assert!(guest_memory(None, "--mem 4097", 4097).is_err());
        assert!(cores(bochs, "--cpus 15", 15).is_ok());
        let e = cores(bochs, "--cpus 16", 16).unwrap_err();
        assert!(e.contains("at most 15"), "{e}");
        assert!(cores(Some(Backend::QemuKvm), "--cpus 16", 16).is_ok());
        assert!(cores(None, "x", 65).unwrap_err().contains("MAX_CPUS = 64"));
    }

    #[test]
    fn sizes_parse_like_the_kvm_test() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64K").unwrap(), 64 * KIB);
        assert_eq!(parse_size("64k").unwrap(), 64 * KIB);
        assert_eq!(parse_size("1M").unwrap(), MIB);
        assert_eq!(parse_size("2G").unwrap(), 2 * GIB);
        assert_eq!(parse_size("0x1000").unwrap(), 4096);
        assert_eq!(parse_size("4096b").unwrap(), 4096);
        for bad in [
            "",
            "M",
            "1.5M",
            "-4K",
            "lots",
            "1T",
            "99999999999999999999G",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(bytes_per_vcpu("64K"), Ok(64 * KIB));
        for bad in ["0", "1000", "6K"] {
            let e = bytes_per_vcpu(bad).unwrap_err();
            assert!(e.contains("multiple of 4096"), "{bad}: {e}");
        }
        assert_eq!(fmt_size(MIB), "1 MiB");
        assert_eq!(fmt_size(512 * KIB), "512 KiB");
        assert_eq!(fmt_size(GIB), "1 GiB");
        assert_eq!(fmt_size(100), "100 bytes");
    }
}
