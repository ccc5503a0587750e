//! The run configuration: `key=value` lines that the loader puts in the
//! payload next to the guest (see `payload`). Unknown keys and bad values are
//! errors, reported with the offending line, never silently ignored.
//!
//! One type, both ways: xtask builds a [`RunConfig`] and writes it with its
//! `Display` impl; the kernel reads it back with [`RunConfig::parse`].

use core::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunConfig<'a> {
    /// Name of the guest program (for the log).
    pub guest: &'a str,
    /// Guest RAM in MiB, from guest-physical 0.
    pub mem_mib: u64,
    /// Guest RAM is split into this many equal memslots.
    pub slots: u32,
    /// Memslot cache mode: "vcpu", "vm" or "none".
    pub cache: &'a str,
    /// vCPUs to run (0 = one per core found).
    pub cpus: u32,
    /// The image runs in an emulator: end the run through its exit ports.
    pub emulator: bool,
    /// Dirty-log benchmark: iterations (0 = not a dirty-log run).
    pub iterations: u32,
    /// Dirty-log benchmark: bytes each vCPU writes per iteration.
    pub bytes_per_vcpu: u64,
    /// Dirty-log run: `false` = vCPUs wait while the log is read (the
    /// benchmark); `true` = they keep writing while the controller reads and
    /// clears the log (the exactness test).
    pub dirty_concurrent: bool,
    /// Make the memslot with this index (0-based, in guest-physical order)
    /// read-only: a guest write to it is contained.
    pub readonly_slot: Option<u32>,
    /// Kernel run: the `--initrd` file's name (module 0's string), empty
    /// when there is none. The kernel's own name is `guest`.
    pub initrd: &'a str,
    /// The watchdog: a vCPU that makes no VM exit for this many
    /// milliseconds of guest time is reported and the VM ends (0 = off).
    pub watchdog_ms: u64,
    /// Concurrent dirty-log run: memslot add/delete cycles the controller
    /// makes during each iteration while the vCPUs write (KVM's
    /// memslot_modification_stress_test); 0 = none.
    pub slot_churn: u32,
    /// EPT page sizes a fault may map: "4k" or "2m" (2 MiB where the slot
    /// allows it).
    pub ept_pages: &'a str,
}

impl Default for RunConfig<'_> {
    fn default() -> Self {
        RunConfig {
            guest: "smoke",
            mem_mib: 16,
            slots: 1,
            cache: "vcpu",
            cpus: 0,
            emulator: false,
            iterations: 0,
            bytes_per_vcpu: 0,
            dirty_concurrent: false,
            readonly_slot: None,
            initrd: "",
            watchdog_ms: DEFAULT_WATCHDOG_MS,
            slot_churn: 0,
            ept_pages: "4k",
        }
    }
}

/// The watchdog's default: 30 s without a VM exit.
pub const DEFAULT_WATCHDOG_MS: u64 = 30_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigError<'a> {
    pub line: &'a str,
    pub reason: &'static str,
}

impl fmt::Display for ConfigError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad run configuration line {:?}: {}",
            self.line, self.reason
        )
    }
}

fn number(v: &str) -> Option<u64> {
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

impl<'a> RunConfig<'a> {
    pub fn parse(text: &'a str) -> Result<Self, ConfigError<'a>> {
        let mut c = RunConfig::default();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason| ConfigError { line, reason };
            let (key, value) = line.split_once('=').ok_or(err("expected key=value"))?;
            let (key, value) = (key.trim(), value.trim());
            let num = || number(value).ok_or(err("expected a number"));
            match key {
                "guest" => c.guest = value,
                "mem_mib" => c.mem_mib = num()?,
                "slots" => c.slots = u32::try_from(num()?).map_err(|_| err("too large"))?,
                "cache" => {
                    if !matches!(value, "vcpu" | "vm" | "none") {
                        return Err(err("cache must be vcpu, vm or none"));
                    }
                    c.cache = value;
                }
                "cpus" => c.cpus = u32::try_from(num()?).map_err(|_| err("too large"))?,
                "emulator" => {
                    c.emulator = match value {
                        "1" | "true" => true,
                        "0" | "false" => false,
                        _ => return Err(err("expected true or false")),
                    }
                }
                "iterations" => {
                    c.iterations = u32::try_from(num()?).map_err(|_| err("too large"))?
                }
                "bytes_per_vcpu" => c.bytes_per_vcpu = num()?,
                "readonly_slot" => {
                    c.readonly_slot = Some(u32::try_from(num()?).map_err(|_| err("too large"))?)
                }
                "initrd" => c.initrd = value,
                "watchdog_ms" => c.watchdog_ms = num()?,
                "slot_churn" => {
                    c.slot_churn = u32::try_from(num()?).map_err(|_| err("too large"))?
                }
                "ept_pages" => {
                    if !matches!(value, "4k" | "2m") {
                        return Err(err("ept_pages must be 4k or 2m"));
                    }
                    c.ept_pages = value;
                }
                "dirty_mode" => {
                    c.dirty_concurrent = match value {
                        "sync" => false,
                        "concurrent" => true,
                        _ => return Err(err("dirty_mode must be sync or concurrent")),
                    }
                }
                _ => return Err(err("unknown key")),
            }
        }
        if c.mem_mib == 0 {
            return Err(ConfigError {
                line: "mem_mib",
                reason: "guest memory must not be empty",
            });
        }
        if c.iterations > 0 && (c.bytes_per_vcpu == 0 || c.bytes_per_vcpu % 4096 != 0) {
            return Err(ConfigError {
                line: "bytes_per_vcpu",
                reason: "a dirty-log run needs bytes_per_vcpu, a non-zero multiple of 4096",
            });
        }
        if c.readonly_slot.is_some_and(|i| i >= c.slots) {
            return Err(ConfigError {
                line: "readonly_slot",
                reason: "there is no memslot with that index",
            });
        }
        if c.slot_churn != 0 && !(c.iterations > 0 && c.dirty_concurrent) {
            return Err(ConfigError {
                line: "slot_churn",
                reason: "memslot churn runs in a concurrent dirty-log run only",
            });
        }
        if c.slots == 0 {
            return Err(ConfigError {
                line: "slots",
                reason: "at least one memslot is needed",
            });
        }
        Ok(c)
    }
}

/// The `key=value` lines that [`RunConfig::parse`] reads back into the same
/// value: every key, one per line (`readonly_slot` only when set).
impl fmt::Display for RunConfig<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "guest={}", self.guest)?;
        writeln!(f, "mem_mib={}", self.mem_mib)?;
        writeln!(f, "slots={}", self.slots)?;
        writeln!(f, "cache={}", self.cache)?;
        writeln!(f, "cpus={}", self.cpus)?;
        writeln!(f, "emulator={}", self.emulator)?;
        writeln!(f, "iterations={}", self.iterations)?;
        writeln!(f, "bytes_per_vcpu={}", self.bytes_per_vcpu)?;
        let mode = if self.dirty_concurrent {
            "concurrent"
        } else {
            "sync"
        };
        writeln!(f, "dirty_mode={mode}")?;
        writeln!(f, "ept_pages={}", self.ept_pages)?;
        if let Some(i) = self.readonly_slot {
            writeln!(f, "readonly_slot={i}")?;
        }
        if !self.initrd.is_empty() {
            writeln!(f, "initrd={}", self.initrd)?;
        }
        writeln!(f, "watchdog_ms={}", self.watchdog_ms)?;
        if self.slot_churn != 0 {
            writeln!(f, "slot_churn={}", self.slot_churn)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_defaults() {
        let c = RunConfig::parse(
            "guest=memtouch\nmem_mib=0x20\n# note\n\nslots = 8\ncache=vm\nemulator=1\n",
        )
        .unwrap();
        assert_eq!(c.guest, "memtouch");
        assert_eq!(c.mem_mib, 32);
        assert_eq!(c.slots, 8);
        assert_eq!(c.cache, "vm");
        assert!(c.emulator);
        assert_eq!(c.cpus, 0);
        assert_eq!(c.readonly_slot, None);
        let ro = RunConfig::parse("slots=4\nreadonly_slot=3").unwrap();
        assert_eq!(ro.readonly_slot, Some(3));
        assert_eq!(RunConfig::parse("").unwrap(), RunConfig::default());
    }

    #[test]
    fn rejects_bad_lines() {
        for bad in [
            "nonsense",
            "colour=blue",
            "mem_mib=lots",
            "cache=lru",
            "emulator=maybe",
            "slots=0",
            "mem_mib=0",
            "slots=99999999999",
            "dirty_mode=sometimes",
            "iterations=2\nbytes_per_vcpu=100",
            "iterations=2",
            "slots=2\nreadonly_slot=2",
        ] {
            assert!(RunConfig::parse(bad).is_err(), "{bad} accepted");
        }
        let e = RunConfig::parse("colour=blue").unwrap_err();
        assert_eq!(e.line, "colour=blue");
        assert_eq!(e.reason, "unknown key");
    }

    #[test]
    fn written_text_parses_back() {
        let configs = [
            RunConfig::default(),
            RunConfig {
                guest: "memtouch",
                mem_mib: 64,
                slots: 8,
                cache: "vm",
                cpus: 4,
                emulator: true,
                readonly_slot: Some(7),
                ..RunConfig::default()
            },
            RunConfig {
                guest: "dirtylog",
                mem_mib: 3,
                slots: 508,
                cache: "none",
                cpus: 62,
                iterations: 3,
                bytes_per_vcpu: 1 << 20,
                dirty_concurrent: true,
                watchdog_ms: 0,
                slot_churn: 1000,
                ..RunConfig::default()
            },
            RunConfig {
                guest: "mbkernel",
                mem_mib: 128,
                initrd: "initrd.bin",
                ..RunConfig::default()
            },
        ];
        for c in configs {
            let text = c.to_string();
            assert_eq!(RunConfig::parse(&text), Ok(c), "{text}");
        }
        let text = configs[1].to_string();
        assert!(text.contains("guest=memtouch\n") && text.contains("readonly_slot=7\n"));
        assert!(!RunConfig::default().to_string().contains("readonly_slot"));
    }
}
