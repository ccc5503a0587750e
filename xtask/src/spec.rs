//! What a guest run is, checked: which program, how much memory in how many
//! slots, which cache, how many vCPUs, and the workload's own settings. It
//! becomes the hypervisor's own `RunConfig`, whose writer makes the text
//! the image carries.

use crate::checks::{self, MIB};
use crate::emu::Backend;
use anyhow::{bail, Result};
use hypervisor::config::RunConfig;
use hypervisor::limits::{CacheMode, PAGE_SIZE};
use hypervisor::machine::board;
use std::path::{Path, PathBuf};

/// Guest RAM of a kernel run without `--mem` (QEMU's default), MiB.
pub const KERNEL_DEFAULT_MIB: u64 = 128;

/// A kernel run (`--kernel FILE [--append TEXT] [--initrd FILE]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSpec {
    pub path: PathBuf,
    pub append: String,
    pub initrd: Option<PathBuf>,
    /// The initrd's file name: module 0's string.
    pub initrd_name: String,
}

/// A file's name as the guest is told it: its last component, with
/// whitespace and control characters replaced (the configuration is lines
/// of `key=value`, and QEMU-style command lines split at spaces).
pub fn shown_name(p: &Path) -> String {
    let name = p
        .file_name()
        .map_or_else(|| "kernel".into(), |n| n.to_string_lossy().to_string());
    name.chars()
        .map(|c| {
            if c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

impl KernelSpec {
    pub fn new(path: PathBuf, append: String, initrd: Option<PathBuf>) -> Self {
        let initrd_name = initrd.as_deref().map(shown_name).unwrap_or_default();
        KernelSpec {
            path,
            append,
            initrd,
            initrd_name,
        }
    }

    /// The files exist, are regular files, can be opened and fit the
    /// payload (under 4 GiB); the command line has no NUL.
    pub fn check_files(&self) -> Result<()> {
        let one = |opt: &str, p: &Path| -> Result<()> {
            let meta =
                std::fs::metadata(p).map_err(|e| anyhow::anyhow!("{opt} {}: {e}", p.display()))?;
            if !meta.is_file() {
                bail!("{opt} {}: not a regular file", p.display());
            }
            std::fs::File::open(p)
                .map_err(|e| anyhow::anyhow!("{opt} {}: cannot be read: {e}", p.display()))?;
            if meta.len() >= 1 << 32 {
                bail!("{opt} {}: 4 GiB or larger", p.display());
            }
            if opt == "--kernel" && meta.len() == 0 {
                bail!("--kernel {}: the file is empty", p.display());
            }
            Ok(())
        };
        one("--kernel", &self.path)?;
        if let Some(i) = &self.initrd {
            one("--initrd", i)?;
        }
        if self.append.contains('\0') {
            bail!("--append: the command line holds a NUL character");
        }
        Ok(())
    }
}
use hypervisor::mm::fault::EptPages;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestSpec {
    /// A program of guest/src/bin.
    pub guest: String,
    /// Guest RAM from guest-physical 0 (a dirty-log run: the base slot).
    pub mem_mib: u64,
    /// Memslots the memory (a dirty-log run: the test memory) is split into.
    pub slots: u32,
    pub cache: CacheMode,
    /// vCPUs (0 = one per core found; images for hardware only).
    pub cpus: u32,
    /// Dirty-log run: iterations (0 = not a dirty-log run).
    pub iterations: u32,
    /// Dirty-log run: bytes each vCPU writes.
    pub bytes_per_vcpu: u64,
    /// Dirty-log run: vCPUs keep writing while the log is read.
    pub dirty_concurrent: bool,
    /// This slot is read-only.
    pub readonly_slot: Option<u32>,
    /// The watchdog time (0 = off).
    pub watchdog_ms: u64,
    /// Concurrent dirty-log run: memslot add/delete cycles per iteration.
    pub slot_churn: u32,
    /// A kernel run: the kernel instead of a guest program (`guest` is
    /// then the kernel's file name).
    pub kernel: Option<KernelSpec>,
    /// EPT page sizes a fault may map.
    pub ept_pages: EptPages,
}

impl GuestSpec {
    /// `guest` with `mem_mib` in `slots` slots, one vCPU, the vCPU cache.
    pub fn new(guest: &str, mem_mib: u64, slots: u32) -> Self {
        GuestSpec {
            guest: guest.into(),
            mem_mib,
            slots,
            cache: CacheMode::Vcpu,
            cpus: 1,
            iterations: 0,
            bytes_per_vcpu: 0,
            dirty_concurrent: false,
            readonly_slot: None,
            watchdog_ms: hypervisor::config::DEFAULT_WATCHDOG_MS,
            slot_churn: 0,
            kernel: None,
            ept_pages: EptPages::Only4K,
        }
    }

    /// A kernel run of `k` with `mem_mib` in `slots` slots, one vCPU.
    pub fn kernel(k: KernelSpec, mem_mib: u64, slots: u32) -> Self {
        GuestSpec {
            kernel: Some(k.clone()),
            ..GuestSpec::new(&shown_name(&k.path), mem_mib, slots)
        }
    }

    /// The hypervisor's run configuration for this run.
    pub fn run_config(&self, emulator: bool) -> RunConfig<'_> {
        RunConfig {
            guest: &self.guest,
            mem_mib: self.mem_mib,
            slots: self.slots,
            cache: self.cache.as_str(),
            cpus: self.cpus,
            emulator,
            iterations: self.iterations,
            bytes_per_vcpu: self.bytes_per_vcpu,
            dirty_concurrent: self.dirty_concurrent,
            readonly_slot: self.readonly_slot,
            initrd: self.kernel.as_ref().map_or("", |k| k.initrd_name.as_str()),
            watchdog_ms: self.watchdog_ms,
            slot_churn: self.slot_churn,
            ept_pages: self.ept_pages.as_str(),
        }
    }

    /// The run configuration's text, as `RunConfig` writes it.
    pub fn config(&self, emulator: bool) -> String {
        self.run_config(emulator).to_string()
    }

    pub fn dirty_log(&self) -> bool {
        self.iterations > 0
    }

    /// Cores the machine needs: one per vCPU, plus the dirty-log controller.
    pub fn machine_cores(&self) -> u32 {
        self.cpus.max(1) + self.dirty_log() as u32
    }

    /// All guest RAM in MiB (rounded up): a dirty-log run's test memory
    /// follows its base memory.
    pub fn guest_mib(&self) -> u64 {
        let test = if self.dirty_log() {
            u64::from(self.cpus).saturating_mul(self.bytes_per_vcpu)
        } else {
            0
        };
        self.mem_mib.saturating_add(test.div_ceil(MIB))
    }

    /// Machine memory for an emulator: the guest's plus room for the
    /// bootloader, the hypervisor and its tables.
    pub fn machine_mib(&self) -> u64 {
        checks::machine_mib(self.guest_mib())
    }

    /// Whether the split fits, in terms of `mem` and `slots`: (the memory
    /// being split, its option names).
    fn split(&self) -> (u64, String) {
        if self.dirty_log() {
            (
                u64::from(self.cpus) * self.bytes_per_vcpu,
                format!(
                    "-v {} × -b {} of test memory",
                    self.cpus,
                    checks::fmt_size(self.bytes_per_vcpu)
                ),
            )
        } else {
            (self.mem_mib * MIB, format!("--mem {} MiB", self.mem_mib))
        }
    }

    /// The checks that take more than one option, or the backend
    /// (`None`: an image for hardware). Single values were checked when the
    /// command line was parsed (see `checks`).
    pub fn check(&self, backend: Option<Backend>) -> Result<()> {
        let (bytes, what) = self.split();
        let slot_bytes = u64::from(self.slots) * PAGE_SIZE;
        if !bytes.is_multiple_of(slot_bytes) {
            bail!(
                "{what} does not split into {} slots of whole 4 KiB pages",
                self.slots
            );
        }
        if let Some(ro) = self.readonly_slot {
            if ro >= self.slots {
                bail!(
                    "--readonly-slot {ro}: the slots are numbered 0 to {} (--slots {})",
                    self.slots - 1,
                    self.slots
                );
            }
        }
        let what = if self.dirty_log() {
            format!("{what} plus {} MiB of base memory", self.mem_mib)
        } else {
            what
        };
        checks::guest_memory(backend, &what, self.guest_mib()).map_err(anyhow::Error::msg)?;
        let cores = self.machine_cores();
        let what = if self.dirty_log() {
            format!("-v {} (and the controller)", self.cpus)
        } else {
            format!("--cpus {}", self.cpus)
        };
        checks::cores(backend, &what, cores).map_err(anyhow::Error::msg)?;
        if self.kernel.is_some() {
            let mib = self.mem_mib;
            let (min, max) = (board::MIN_MEM >> 20, board::PCI_HOLE >> 20);
            if mib < min || mib > max {
                bail!(
                    "--mem {mib}: a kernel run has {min} to {max} MiB (RAM ends below the PCI \
                     hole at {:#x}; RAM above 4 GiB is not offered)",
                    board::PCI_HOLE
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypervisor::config::RunConfig;

    #[test]
    fn the_configuration_is_the_hypervisors_own() {
        let mut g = GuestSpec::new("memtouch", 64, 8);
        g.cpus = 4;
        g.cache = CacheMode::Vm;
        g.readonly_slot = Some(3);
        let text = g.config(true);
        let c = RunConfig::parse(&text).unwrap();
        assert_eq!(c, g.run_config(true));
        assert_eq!(
            (c.guest, c.mem_mib, c.slots, c.cache),
            ("memtouch", 64, 8, "vm")
        );
        assert_eq!((c.cpus, c.emulator, c.readonly_slot), (4, true, Some(3)));
    }

    #[test]
    fn machines_are_sized_for_guest_and_hypervisor() {
        let g = GuestSpec::new("smoke", 16, 1);
        assert_eq!(g.machine_cores(), 1);
        assert_eq!(g.machine_mib(), 160);
        let mut d = GuestSpec::new("dirtylog", 3, 4);
        d.cpus = 4;
        d.iterations = 3;
        d.bytes_per_vcpu = 64 * MIB;
        assert_eq!(d.machine_cores(), 5, "four vCPUs and the controller");
        assert_eq!(d.guest_mib(), 3 + 256, "base and test memory");
    }

    #[test]
    fn combined_options_are_checked() {
        let bochs = Some(Backend::Bochs);
        let g = GuestSpec::new("smoke", 16, 3);
        let e = g.check(bochs).unwrap_err().to_string();
        assert!(e.contains("--mem 16 MiB") && e.contains("3 slots"), "{e}");
        let mut g = GuestSpec::new("memtouch", 16, 4);
        g.readonly_slot = Some(4);
        let e = g.check(bochs).unwrap_err().to_string();
        assert!(
            e.contains("--readonly-slot 4") && e.contains("0 to 3"),
            "{e}"
        );
        let e = GuestSpec::new("smoke", 2048, 1)
            .check(bochs)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--mem 2048") && e.contains("at most 1920 MiB"),
            "{e}"
        );
        assert!(GuestSpec::new("smoke", 1920, 1).check(bochs).is_ok());
        assert!(GuestSpec::new("smoke", 2048, 1)
            .check(Some(Backend::Qemu))
            .is_ok());
        let mut g = GuestSpec::new("smoke", 16, 1);
        g.cpus = 16;
        let e = g.check(bochs).unwrap_err().to_string();
        assert!(e.contains("--cpus 16") && e.contains("at most 15"), "{e}");
        let mut d = GuestSpec::new("dirtylog", 3, 1);
        (d.cpus, d.iterations, d.bytes_per_vcpu) = (15, 2, MIB);
        let e = d.check(bochs).unwrap_err().to_string();
        assert!(e.contains("-v 15") && e.contains("16 cores"), "{e}");
    }
}
