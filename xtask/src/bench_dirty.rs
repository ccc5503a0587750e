//! `cargo xtask bench dirty-log`: a dirty-page-logging benchmark shaped like
//! Linux KVM's `dirty_log_perf_test`, run by our hypervisor in an emulator.
//!
//! ```text
//! cargo xtask bench dirty-log [-v|--vcpus V] [-x|--slots S] [-b|--bytes-per-vcpu B]
//!                             [-i|--iterations I] [--cache vcpu|vm|none] [--json]
//!                             [--sweep] [--backend bochs|qemu-kvm|auto] [--timeout S]
//!                             [--verbose]
//! ```
//!
//! Options → run configuration (guest `dirtylog`, V vCPUs, S memslots, the
//! cache mode, `iterations`, `bytes_per_vcpu`) → image → boot with V + 1 cores
//! (the boot core is the controller, like the KVM test's main thread) → the
//! `SUMMARY {json}` line of the serial log → a text report (or the JSON).
//!
//! `--sweep` runs slots 1, 4, 16, 64 × cache vcpu, vm, none, two runs at a
//! time, prints the "Iteration 2 dirty memory" table the way the KVM memslot
//! series did, and writes target/xtask/bench/dirty-log-sweep.{json,svg}.
//!
//! Under Bochs (`clock: sync=none`) the TSC follows instructions: the cycle
//! figures are emulated, deterministic run to run, and labelled so.
//!
//! Everything between the serial log and the printed text is pure (functions
//! of `serde_json::Value` and plain structs) and unit-tested below.

use crate::artifacts::{self, Firmware};
use crate::emu::{self, Backend, RunSpec, Verdict};
use crate::{root, setup, Args, GuestSpec};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const PAGE: u64 = 4096;
const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Guest memory below the first vCPU region: BootInfo, GDT and page tables,
/// the guest image (linked at 1 MiB, about 1.1 MiB in all) ...
const LOW_BYTES: u64 = 2 * MIB;
/// ... and one stack per vCPU (`abi::STACK_SIZE`).
const STACK_BYTES: u64 = 16 * KIB;
pub const MAX_VCPUS: u32 = 63;
pub const MAX_SLOTS: u32 = 509;
/// As `cargo xtask run --mem`: the emulators' memory and the guest's 4 GiB
/// identity map leave room for this much.
const MAX_MEM_MIB: u64 = 2048;

const DEFAULT_VCPUS: u32 = 4;
const DEFAULT_BYTES: u64 = MIB;
const DEFAULT_ITERATIONS: u32 = 3;
const DEFAULT_TIMEOUT: u64 = 900;

/// The sweep: these slot counts × these cache modes.
pub const SWEEP_SLOTS: [u32; 4] = [1, 4, 16, 64];
pub const CACHES: [&str; 3] = ["vcpu", "vm", "none"];
/// The sweep's defaults where -b / -i are not given. Measured under Bochs
/// (4 vCPUs, 64 slots, cache none, 3 iterations): 18.0 s wall at 512 KiB,
/// 16.9 s at 1 MiB; the BIOS and SMP boot dominate, so the sweep keeps the
/// KVM test's 1 MiB (12 runs, two at a time: about two minutes).
const SWEEP_BYTES: u64 = MIB;
const SWEEP_ITERATIONS: u32 = 3;
/// Emulator runs at a time in a sweep (each Bochs keeps one host core busy).
const SWEEP_JOBS: usize = 2;

/// The phase the sweep compares, as the KVM series did.
pub const KEY_PHASE: &str = "Iteration 2 dirty memory";

const USAGE: &str = "usage: cargo xtask bench dirty-log [-v|--vcpus V] [-x|--slots S] \
[-b|--bytes-per-vcpu B[K|M|G]] [-i|--iterations I] [--cache vcpu|vm|none] [--json] [--sweep] \
[--backend bochs|qemu-kvm|auto] [--timeout SECONDS] [--verbose]";

// ---------------------------------------------------------------------------
// Options and the run configuration

/// One benchmark run's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunConf {
    pub vcpus: u32,
    pub slots: u32,
    pub bytes_per_vcpu: u64,
    pub iterations: u32,
    pub cache: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opts {
    pub vcpus: u32,
    /// None: not given (a sweep sets its own).
    pub slots: Option<u32>,
    pub bytes_per_vcpu: Option<u64>,
    pub iterations: Option<u32>,
    pub cache: Option<String>,
    pub json: bool,
    pub sweep: bool,
    pub backend: Backend,
    pub timeout: u64,
    pub verbose: bool,
}

impl Opts {
    /// The single run these options ask for.
    pub fn conf(&self) -> RunConf {
        RunConf {
            vcpus: self.vcpus,
            slots: self.slots.unwrap_or(1),
            bytes_per_vcpu: self.bytes_per_vcpu.unwrap_or(DEFAULT_BYTES),
            iterations: self.iterations.unwrap_or(DEFAULT_ITERATIONS),
            cache: self.cache.clone().unwrap_or_else(|| "vcpu".into()),
        }
    }

    /// The sweep's runs, in table order (slots, then cache mode).
    pub fn sweep_confs(&self) -> Vec<RunConf> {
        let mut v = Vec::new();
        for slots in SWEEP_SLOTS {
            for cache in CACHES {
                v.push(RunConf {
                    vcpus: self.vcpus,
                    slots,
                    bytes_per_vcpu: self.bytes_per_vcpu.unwrap_or(SWEEP_BYTES),
                    iterations: self.iterations.unwrap_or(SWEEP_ITERATIONS),
                    cache: cache.into(),
                });
            }
        }
        v
    }
}

/// A size like the KVM test's `parse_size`: a number (decimal or 0x hex) with
/// an optional K, M or G suffix (either case), binary multiples.
pub fn parse_size(s: &str) -> Result<u64> {
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
    .map_err(|_| anyhow!("{s:?} is not a size (e.g. 4096, 64K, 1M, 1G)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| anyhow!("{s:?} is too large"))
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

/// The base memory in MiB (the hypervisor's `mem_mib` for a dirty-log run):
/// image, page tables and one stack per vCPU. The test memory, `vcpus`
/// regions of `bytes`, follows it in its own `-x` slots, as in
/// dirty_log_perf_test, where the test memory is apart from slot 0.
pub fn guest_mem_mib(vcpus: u32) -> u64 {
    (LOW_BYTES + u64::from(vcpus) * STACK_BYTES).div_ceil(MIB)
}

impl RunConf {
    pub fn mem_mib(&self) -> u64 {
        guest_mem_mib(self.vcpus)
    }

    pub fn pages_per_vcpu(&self) -> u64 {
        self.bytes_per_vcpu / PAGE
    }

    pub fn validate(&self) -> Result<()> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            bail!(
                "-v {}: use 1 to {MAX_VCPUS} vCPUs (one emulated core each, plus the controller)",
                self.vcpus
            );
        }
        if self.slots == 0 || self.slots > MAX_SLOTS {
            bail!("-x {}: use 1 to {MAX_SLOTS} memslots", self.slots);
        }
        let b = self.bytes_per_vcpu;
        if b < PAGE || !b.is_multiple_of(PAGE) {
            bail!("-b {b}: bytes per vCPU must be a multiple of 4096 and at least 4096");
        }
        if self.iterations < 2 {
            bail!(
                "-i {}: use at least 2 iterations (the benchmark reports \"Iteration 2\")",
                self.iterations
            );
        }
        if !CACHES.contains(&self.cache.as_str()) {
            bail!("--cache {:?}: use vcpu, vm or none", self.cache);
        }
        let total = u64::from(self.vcpus)
            .checked_mul(b)
            .ok_or_else(|| anyhow!("-v × -b overflows"))?;
        if !total.is_multiple_of(u64::from(self.slots) * PAGE) {
            bail!(
                "{} vCPUs × {} of test memory does not split into {} slots of whole 4 KiB pages",
                self.vcpus,
                fmt_size(b),
                self.slots
            );
        }
        let mem = self.mem_mib() + total.div_ceil(MIB);
        if mem > MAX_MEM_MIB {
            bail!(
                "{} vCPUs × {} needs {mem} MiB of guest memory; at most {MAX_MEM_MIB} MiB \
                 (lower -v, -b or -x)",
                self.vcpus,
                fmt_size(b)
            );
        }
        Ok(())
    }

    /// The hypervisor's run configuration for this benchmark.
    pub fn guest_spec(&self) -> GuestSpec {
        GuestSpec {
            guest: "dirtylog".into(),
            mem_mib: self.mem_mib(),
            slots: self.slots,
            cache: self.cache.clone(),
            cpus: self.vcpus,
            extra: vec![
                ("iterations".into(), self.iterations.to_string()),
                ("bytes_per_vcpu".into(), self.bytes_per_vcpu.to_string()),
            ],
        }
    }

    /// A directory name that tells runs apart.
    pub fn dir_name(&self) -> String {
        format!(
            "dirty-log-v{}-x{}-b{}k-i{}-{}",
            self.vcpus,
            self.slots,
            self.bytes_per_vcpu / KIB,
            self.iterations,
            self.cache
        )
    }

    /// `Testing guest mode: ...` without the backend.
    pub fn describe(&self) -> String {
        format!(
            "{} vCPU{}, {} per vCPU, {} memslot{}, cache {}, {} iterations",
            self.vcpus,
            plural(self.vcpus),
            fmt_size(self.bytes_per_vcpu),
            self.slots,
            plural(self.slots),
            self.cache,
            self.iterations
        )
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `-v 4` or `--vcpus 4`, not both.
fn either<T: std::str::FromStr>(a: &mut Args, short: &str, long: &str) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    let l = a.parsed::<T>(long)?;
    let s = a.parsed::<T>(short)?;
    if l.is_some() && s.is_some() {
        bail!("{short} and {long} are the same option: give it once");
    }
    Ok(l.or(s))
}

pub fn parse_opts(a: &mut Args) -> Result<Opts> {
    let vcpus: Option<u32> = either(a, "-v", "--vcpus")?;
    let slots: Option<u32> = either(a, "-x", "--slots")?;
    let bytes = {
        let l = a.value("--bytes-per-vcpu")?;
        let s = a.value("-b")?;
        if l.is_some() && s.is_some() {
            bail!("-b and --bytes-per-vcpu are the same option: give it once");
        }
        l.or(s).map(|v| parse_size(&v).context("-b")).transpose()?
    };
    let iterations: Option<u32> = either(a, "-i", "--iterations")?;
    let cache = a.value("--cache")?;
    let json = a.flag("--json");
    let sweep = a.flag("--sweep");
    let verbose = a.flag("--verbose");
    let backend = match a.value("--backend")?.as_deref() {
        None | Some("auto") => emu::auto(),
        Some(b) => b.parse::<Backend>()?,
    };
    if backend == Backend::Qemu {
        bail!(
            "--backend qemu: QEMU without KVM (TCG) has no VMX, so the hypervisor cannot run \
             a guest there; use --backend bochs, or qemu-kvm where nested VT-x exists"
        );
    }
    let timeout: u64 = a.parsed("--timeout")?.unwrap_or(DEFAULT_TIMEOUT);
    if timeout == 0 {
        bail!("--timeout 0: give the run at least one second");
    }
    if sweep && (slots.is_some() || cache.is_some()) {
        bail!(
            "--sweep runs every slot count (1, 4, 16, 64) and cache mode itself: drop -x / --cache"
        );
    }
    let o = Opts {
        vcpus: vcpus.unwrap_or(DEFAULT_VCPUS),
        slots,
        bytes_per_vcpu: bytes,
        iterations,
        cache,
        json,
        sweep,
        backend,
        timeout,
        verbose,
    };
    if sweep {
        for c in o.sweep_confs() {
            c.validate()?;
        }
    } else {
        o.conf().validate()?;
    }
    Ok(o)
}

// ---------------------------------------------------------------------------
// The SUMMARY line

/// Memslot lookups by the level that answered them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lookups {
    pub vcpu_hit: u64,
    pub vm_hit: u64,
    pub search: u64,
    pub miss: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Phase {
    pub name: String,
    pub cycles: u64,
    pub exits: u64,
    pub ept_violations: u64,
    pub lookups: Lookups,
    /// Dirty-memory phases: (pages written, pages found dirty in the log).
    pub pages: Option<(u64, u64)>,
}

impl Phase {
    /// "Iteration 3 get dirty log" → (3, "get dirty log").
    pub fn iteration(&self) -> Option<(u32, &str)> {
        let rest = self.name.strip_prefix("Iteration ")?;
        let (n, what) = rest.split_once(' ')?;
        Some((n.parse().ok()?, what))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuStat {
    pub id: u64,
    pub status: String,
    /// Exit reason → count, as the hypervisor names them.
    pub exits: Vec<(String, u64)>,
    pub ept_mapped: u64,
    /// Write faults on dirty-logged pages (optional in the schema).
    pub dirty_faults: Option<u64>,
    pub lookups: Lookups,
    pub cycles: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub guest: String,
    pub mem_mib: u64,
    pub slots: u64,
    pub cache: String,
    pub vcpus: u64,
    pub tsc_hz: u64,
    pub result: String,
    pub vcpu: Vec<VcpuStat>,
    pub pages_per_vcpu: u64,
    /// `dirty_log.ok`, the hypervisor's own verdict on the log, if given.
    pub log_ok: Option<bool>,
    pub phases: Vec<Phase>,
}

impl Summary {
    pub fn phase(&self, name: &str) -> Option<&Phase> {
        self.phases.iter().find(|p| p.name == name)
    }
}

/// The text after `SUMMARY ` on the log's last such line.
pub fn summary_line(log: &str) -> Option<&str> {
    log.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("SUMMARY "))
}

/// The JSON of the log's last `SUMMARY ` line.
pub fn summary_json(log: &str) -> Result<Value> {
    let line = summary_line(log)
        .ok_or_else(|| anyhow!("the serial log has no \"SUMMARY {{json}}\" line"))?;
    serde_json::from_str(line).with_context(|| {
        format!(
            "the SUMMARY line is not valid JSON: {}",
            line.chars().take(200).collect::<String>()
        )
    })
}

fn get<'a>(v: &'a Value, key: &str, at: &str) -> Result<&'a Value> {
    v.get(key)
        .ok_or_else(|| anyhow!("SUMMARY: {at} has no {key:?} field"))
}

fn num(v: &Value, key: &str, at: &str) -> Result<u64> {
    let f = get(v, key, at)?;
    f.as_u64()
        .ok_or_else(|| anyhow!("SUMMARY: {at}.{key} should be a non-negative integer, not {f}"))
}

fn text(v: &Value, key: &str, at: &str) -> Result<String> {
    let f = get(v, key, at)?;
    f.as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("SUMMARY: {at}.{key} should be a string, not {f}"))
}

fn array<'a>(v: &'a Value, key: &str, at: &str) -> Result<&'a Vec<Value>> {
    let f = get(v, key, at)?;
    f.as_array()
        .ok_or_else(|| anyhow!("SUMMARY: {at}.{key} should be an array"))
}

fn lookups(v: &Value, at: &str) -> Result<Lookups> {
    let l = get(v, "lookups", at)?;
    let at = format!("{at}.lookups");
    Ok(Lookups {
        vcpu_hit: num(l, "vcpu_hit", &at)?,
        vm_hit: num(l, "vm_hit", &at)?,
        search: num(l, "search", &at)?,
        miss: num(l, "miss", &at)?,
    })
}

/// Reads a SUMMARY object; a missing or mistyped field is an error that
/// names it.
pub fn parse_summary(v: &Value) -> Result<Summary> {
    if !v.is_object() {
        bail!("SUMMARY: expected a JSON object");
    }
    let top = "summary";
    let mut vcpu = Vec::new();
    for (i, c) in array(v, "vcpu", top)?.iter().enumerate() {
        let at = format!("vcpu[{i}]");
        let exits = get(c, "exits", &at)?
            .as_object()
            .ok_or_else(|| anyhow!("SUMMARY: {at}.exits should be an object"))?
            .iter()
            .map(|(k, n)| {
                n.as_u64()
                    .map(|n| (k.clone(), n))
                    .ok_or_else(|| anyhow!("SUMMARY: {at}.exits.{k} should be an integer"))
            })
            .collect::<Result<Vec<_>>>()?;
        vcpu.push(VcpuStat {
            id: num(c, "id", &at)?,
            status: text(c, "status", &at)?,
            exits,
            ept_mapped: num(c, "ept_mapped", &at)?,
            dirty_faults: c.get("dirty_faults").and_then(Value::as_u64),
            lookups: lookups(c, &at)?,
            cycles: num(c, "cycles", &at)?,
        });
    }
    let dl = get(v, "dirty_log", top)?;
    let mut phases = Vec::new();
    for (i, p) in array(dl, "phases", "dirty_log")?.iter().enumerate() {
        let at = format!("dirty_log.phases[{i}]");
        let name = text(p, "name", &at)?;
        let at = format!("{at} ({name:?})");
        let mut phase = Phase {
            name,
            cycles: num(p, "cycles", &at)?,
            exits: num(p, "exits", &at)?,
            ept_violations: num(p, "ept_violations", &at)?,
            lookups: lookups(p, &at)?,
            pages: None,
        };
        if matches!(phase.iteration(), Some((_, "dirty memory"))) {
            phase.pages = Some((num(p, "pages_written", &at)?, num(p, "pages_dirty", &at)?));
        }
        phases.push(phase);
    }
    Ok(Summary {
        guest: text(v, "guest", top)?,
        mem_mib: num(v, "mem_mib", top)?,
        slots: num(v, "slots", top)?,
        cache: text(v, "cache", top)?,
        vcpus: num(v, "vcpus", top)?,
        tsc_hz: num(v, "tsc_hz", top)?,
        result: text(v, "result", top)?,
        vcpu,
        pages_per_vcpu: num(dl, "pages_per_vcpu", "dirty_log")?,
        log_ok: match dl.get("ok") {
            None => None,
            Some(b) => Some(
                b.as_bool()
                    .ok_or_else(|| anyhow!("SUMMARY: dirty_log.ok should be true or false"))?,
            ),
        },
        phases,
    })
}

/// The phase names a run of `iterations` must report, in order.
pub fn expected_phases(iterations: u32) -> Vec<String> {
    let mut v = vec![
        "Populate memory".to_string(),
        "Enabling dirty logging".to_string(),
    ];
    for i in 1..=iterations {
        v.push(format!("Iteration {i} dirty memory"));
        v.push(format!("Iteration {i} get dirty log"));
        v.push(format!("Iteration {i} clear dirty log"));
    }
    v.push("Disabling dirty logging".to_string());
    v
}

/// Dirty-log correctness: every iteration's log must hold exactly the pages
/// the guest wrote, and the guest writes every page of every region.
pub fn mismatches(s: &Summary) -> Vec<String> {
    let expect = s.vcpus * s.pages_per_vcpu;
    let mut bad = Vec::new();
    for p in &s.phases {
        let Some((written, dirty)) = p.pages else {
            continue;
        };
        if dirty != written {
            bad.push(format!(
                "{}: {dirty} pages dirty in the log, {written} pages written{}",
                p.name,
                if dirty < written {
                    format!(" ({} writes LOST from the log)", written - dirty)
                } else {
                    format!(" ({} pages too many)", dirty - written)
                }
            ));
        }
        if written != expect {
            bad.push(format!(
                "{}: {written} pages written, but {} vCPUs × {} pages = {expect}",
                p.name, s.vcpus, s.pages_per_vcpu
            ));
        }
    }
    bad
}

/// Whether the run is the one we asked for and reports what it should.
pub fn shape_problems(s: &Summary, c: &RunConf) -> Vec<String> {
    let mut bad = Vec::new();
    let mut echo = |what: &str, got: String, want: String| {
        if got != want {
            bad.push(format!(
                "the hypervisor ran {what} {got}, the configuration said {want}"
            ));
        }
    };
    echo("guest", s.guest.clone(), "dirtylog".into());
    echo("vcpus", s.vcpus.to_string(), c.vcpus.to_string());
    echo("slots", s.slots.to_string(), c.slots.to_string());
    echo("cache", s.cache.clone(), c.cache.clone());
    echo(
        "pages_per_vcpu",
        s.pages_per_vcpu.to_string(),
        c.pages_per_vcpu().to_string(),
    );
    if s.log_ok == Some(false) {
        bad.push("the hypervisor judged the dirty log wrong (dirty_log.ok is false)".into());
    }
    if s.result != "success" {
        bad.push(format!("result is {:?}, not \"success\"", s.result));
    }
    for v in &s.vcpu {
        if v.status != "ok" {
            bad.push(format!("vCPU {} status {:?}", v.id, v.status));
        }
    }
    if s.vcpu.len() as u64 != s.vcpus {
        bad.push(format!(
            "{} vCPU entries for {} vCPUs",
            s.vcpu.len(),
            s.vcpus
        ));
    }
    let names: Vec<&str> = s.phases.iter().map(|p| p.name.as_str()).collect();
    let want = expected_phases(c.iterations);
    if names != want {
        let missing: Vec<&str> = want
            .iter()
            .map(String::as_str)
            .filter(|w| !names.contains(w))
            .collect();
        let extra: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !want.iter().any(|w| w == n))
            .collect();
        bad.push(format!(
            "phases differ from dirty_log_perf_test's: missing {missing:?}, unexpected {extra:?}{}",
            if missing.is_empty() && extra.is_empty() {
                " (out of order)"
            } else {
                ""
            }
        ));
    }
    bad
}

// ---------------------------------------------------------------------------
// Text

/// How to show a cycle count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    /// Bochs: the TSC follows instructions.
    pub emulated: bool,
    /// 0 when unknown.
    pub tsc_hz: u64,
}

impl Clock {
    pub fn new(backend: Backend, tsc_hz: u64) -> Self {
        Clock {
            emulated: backend == Backend::Bochs,
            tsc_hz,
        }
    }

    /// One phase time, for the `... time:` lines.
    pub fn time(&self, cycles: u64) -> String {
        if self.emulated {
            format!("{cycles} cycles (emulated, Bochs)")
        } else if self.tsc_hz > 0 {
            format!(
                "{:.9}s ({cycles} cycles)",
                cycles as f64 / self.tsc_hz as f64
            )
        } else {
            format!("{cycles} cycles (TSC frequency unknown)")
        }
    }

    /// A total and a per-iteration average, for the "... over N iterations
    /// took" lines.
    pub fn total_avg(&self, total: u64, avg: u64) -> String {
        if self.emulated {
            format!("{total} cycles (avg {avg}/iteration; emulated, Bochs)")
        } else if self.tsc_hz > 0 {
            let hz = self.tsc_hz as f64;
            format!(
                "{:.9}s (avg {:.9}s/iteration)",
                total as f64 / hz,
                avg as f64 / hz
            )
        } else {
            format!("{total} cycles (avg {avg}/iteration)")
        }
    }

    /// The unit, for table titles and axes.
    pub fn unit(&self) -> &'static str {
        if self.emulated {
            "cycles, emulated by Bochs"
        } else {
            "TSC cycles"
        }
    }
}

fn lookups_cells(l: &Lookups) -> String {
    format!(
        "{:>9} {:>9} {:>9} {:>9}",
        l.vcpu_hit, l.vm_hit, l.search, l.miss
    )
}

/// The report of one run, like dirty_log_perf_test's output plus the
/// per-phase counters.
pub fn report(s: &Summary, c: &RunConf, backend: Backend) -> String {
    let clock = Clock::new(backend, s.tsc_hz);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Testing guest mode: {} vCPU{}, {} per vCPU, {} memslot{}, cache {}, backend {backend}",
        c.vcpus,
        plural(c.vcpus),
        fmt_size(c.bytes_per_vcpu),
        c.slots,
        plural(c.slots),
        c.cache
    );
    let _ = writeln!(
        o,
        "guest memory: {} MiB, {} pages per vCPU, {} iterations",
        s.mem_mib, s.pages_per_vcpu, c.iterations
    );
    for p in &s.phases {
        let _ = writeln!(o, "{} time: {}", p.name, clock.time(p.cycles));
    }
    for what in ["get dirty log", "clear dirty log"] {
        let t: Vec<u64> = s
            .phases
            .iter()
            .filter(|p| p.iteration().is_some_and(|(_, w)| w == what))
            .map(|p| p.cycles)
            .collect();
        if !t.is_empty() {
            let sum: u64 = t.iter().sum();
            let mut name = what.to_string();
            name[..1].make_ascii_uppercase();
            let _ = writeln!(
                o,
                "{name} over {} iterations took {}",
                t.len(),
                clock.total_avg(sum, sum / t.len() as u64)
            );
        }
    }

    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<28} {:>13} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}  dirty/written",
        "phase", "cycles", "exits", "EPT viol", "vcpu hit", "vm hit", "search", "miss"
    );
    let expect = s.vcpus * s.pages_per_vcpu;
    for p in &s.phases {
        let pages = match p.pages {
            Some((w, d)) => format!(
                "  {d}/{w} {}",
                if d == w && w == expect {
                    "OK"
                } else {
                    "MISMATCH"
                }
            ),
            None => String::new(),
        };
        let _ = writeln!(
            o,
            "{:<28} {:>13} {:>8} {:>9} {}{pages}",
            p.name,
            p.cycles,
            p.exits,
            p.ept_violations,
            lookups_cells(&p.lookups)
        );
    }

    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<5} {:<8} {:>13} {:>10} {:>12} {:>9} {:>9} {:>9} {:>9}  exits",
        "vCPU",
        "status",
        "cycles",
        "EPT mapped",
        "dirty faults",
        "vcpu hit",
        "vm hit",
        "search",
        "miss"
    );
    for v in &s.vcpu {
        let mut exits = v.exits.clone();
        exits.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let exits: Vec<String> = exits.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(
            o,
            "{:<5} {:<8} {:>13} {:>10} {:>12} {}  {}",
            v.id,
            v.status,
            v.cycles,
            v.ept_mapped,
            cell(v.dirty_faults),
            lookups_cells(&v.lookups),
            exits.join(", ")
        );
    }
    o
}

/// The error text for a run that did not succeed: verdict, log path, and
/// the log's last 30 lines.
pub fn failure_text(verdict: Verdict, log: &str, log_path: &Path, backend: Backend) -> String {
    let why = match verdict {
        Verdict::Success => "succeeded but printed no usable SUMMARY",
        Verdict::Failure => "reported FAILURE",
        Verdict::Timeout => "timed out (see --timeout)",
        Verdict::NoResult => "ended without a result line",
    };
    let lines: Vec<&str> = log.lines().collect();
    let tail = &lines[lines.len().saturating_sub(30)..];
    format!(
        "the dirty-log run under {backend} {why}; log: {}\n--- last {} lines ---\n{}",
        log_path.display(),
        tail.len(),
        tail.join("\n")
    )
}

// ---------------------------------------------------------------------------
// The sweep

/// One sweep run's outcome.
#[derive(Clone, Debug)]
pub struct Point {
    pub slots: u32,
    pub cache: String,
    /// None: the run failed (the reason was printed).
    pub summary: Option<Summary>,
}

impl Point {
    pub fn key_cycles(&self) -> Option<u64> {
        Some(self.summary.as_ref()?.phase(KEY_PHASE)?.cycles)
    }
}

fn find<'a>(points: &'a [Point], slots: u32, cache: &str) -> Option<&'a Point> {
    points.iter().find(|p| p.slots == slots && p.cache == cache)
}

fn slot_counts(points: &[Point]) -> Vec<u32> {
    let mut v: Vec<u32> = points.iter().map(|p| p.slots).collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn ratio(a: Option<u64>, b: Option<u64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0 => format!("{:.3}", a as f64 / b as f64),
        _ => "-".into(),
    }
}

/// a / b rounded, "-" for b = 0.
fn per(a: u64, b: u64) -> String {
    if b == 0 {
        "-".into()
    } else {
        format!("{}", (a as f64 / b as f64).round() as u64)
    }
}

fn cell(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn config_label(vcpus: u32, slots: u32) -> String {
    format!(
        "{vcpus} vCPU{}, {slots:>2} slot{}",
        plural(vcpus),
        plural(slots)
    )
}

/// The "Iteration 2 dirty memory" table across slot counts and cache modes,
/// shaped like the table of the KVM memslot series.
pub fn sweep_table(points: &[Point], vcpus: u32, clock: Clock) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{KEY_PHASE} time ({}; lower is better)", clock.unit());
    let _ = writeln!(
        o,
        "{:<18} {:>11} {:>11} {:>11} {:>9} {:>11}",
        "config", "vcpu", "vm", "none", "vm/vcpu", "none/vcpu"
    );
    let slots = slot_counts(points);
    let cyc = |s: u32, c: &str| find(points, s, c).and_then(Point::key_cycles);
    for &s in &slots {
        let (v, m, n) = (cyc(s, "vcpu"), cyc(s, "vm"), cyc(s, "none"));
        let _ = writeln!(
            o,
            "{:<18} {:>11} {:>11} {:>11} {:>9} {:>11}",
            config_label(vcpus, s),
            cell(v),
            cell(m),
            cell(n),
            ratio(m, v),
            ratio(n, v)
        );
    }
    if let (Some(&lo), Some(&hi)) = (slots.first(), slots.last()) {
        if hi != lo {
            let parts: Vec<String> = CACHES
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let r = ratio(cyc(hi, c), cyc(lo, c));
                    if i == 0 {
                        format!("{c} {hi}/{lo} slots: {r}")
                    } else {
                        format!("{c} {hi}/{lo}: {r}")
                    }
                })
                .collect();
            let _ = writeln!(o, "{}", parts.join("   "));
        }
    }
    o
}

/// Why the times differ: the memslot lookups by level in iteration 2.
pub fn lookup_table(points: &[Point], vcpus: u32) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{KEY_PHASE}: memslot lookups by level (all vCPUs), EPT violations, and phase cycles \
         per violation (the vCPUs fault in parallel)"
    );
    let _ = writeln!(
        o,
        "{:<18} {:<5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "config", "cache", "vcpu hit", "vm hit", "search", "miss", "EPT viol", "cyc/viol"
    );
    for s in slot_counts(points) {
        for c in CACHES {
            let Some(p) = find(points, s, c) else {
                continue;
            };
            let ph = p.summary.as_ref().and_then(|x| x.phase(KEY_PHASE));
            let row = match ph {
                Some(ph) => format!(
                    "{} {:>9} {:>10}",
                    lookups_cells(&ph.lookups),
                    ph.ept_violations,
                    per(ph.cycles, ph.ept_violations)
                ),
                None => "(run failed)".into(),
            };
            let _ = writeln!(o, "{:<18} {:<5} {row}", config_label(vcpus, s), c);
        }
    }
    o
}

/// 1234 → "1234", 12345 → "12.3k", 4500000 → "4.5M".
pub fn fmt_si(v: f64) -> String {
    let (d, suffix) = if v >= 1e9 {
        (1e9, "G")
    } else if v >= 1e6 {
        (1e6, "M")
    } else if v >= 1e4 {
        (1e3, "k")
    } else {
        return format!("{}", v.round() as u64);
    };
    let x = v / d;
    let s = if x >= 100.0 || (x - x.round()).abs() < 1e-9 {
        format!("{:.0}", x)
    } else {
        format!("{:.1}", x)
    };
    format!("{s}{suffix}")
}

/// A round axis maximum ≥ `max` and its tick step (1, 2, 2.5 or 5 × 10^k):
/// four to seven ticks.
pub fn nice_axis(max: f64) -> (f64, f64) {
    if max <= 0.0 || !max.is_finite() {
        return (1.0, 0.2);
    }
    let raw = max / 6.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

const SVG_W: f64 = 760.0;
const SVG_H: f64 = 460.0;
const PLOT_L: f64 = 90.0;
const PLOT_R: f64 = 600.0;
const PLOT_T: f64 = 60.0;
const PLOT_B: f64 = 390.0;
const COLOURS: [&str; 3] = ["#1f77b4", "#d62728", "#7f7f7f"];

/// The sweep as an SVG line plot: x = memslots (log scale), y = Iteration 2
/// dirty memory cycles, one polyline per cache mode.
pub fn sweep_svg(points: &[Point], vcpus: u32, bytes_per_vcpu: u64, clock: Clock) -> String {
    let slots = slot_counts(points);
    let (lo, hi) = (
        f64::from(*slots.first().unwrap_or(&1)),
        f64::from(*slots.last().unwrap_or(&1)),
    );
    let x_of = |s: u32| {
        if hi > lo {
            PLOT_L + (f64::from(s).ln() - lo.ln()) / (hi.ln() - lo.ln()) * (PLOT_R - PLOT_L)
        } else {
            (PLOT_L + PLOT_R) / 2.0
        }
    };
    let max = points
        .iter()
        .filter_map(Point::key_cycles)
        .max()
        .unwrap_or(0) as f64;
    let (ymax, step) = nice_axis(max);
    let y_of = |c: f64| PLOT_B - c / ymax * (PLOT_B - PLOT_T);

    let mut o = String::new();
    let _ = writeln!(
        o,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{SVG_W}\" height=\"{SVG_H}\" \
         viewBox=\"0 0 {SVG_W} {SVG_H}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(
        o,
        "<rect x=\"0\" y=\"0\" width=\"{SVG_W}\" height=\"{SVG_H}\" fill=\"white\"/>"
    );
    let _ = writeln!(
        o,
        "<text x=\"{}\" y=\"28\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">\
         {KEY_PHASE} time vs memslots ({vcpus} vCPU{}, {} per vCPU)</text>",
        (PLOT_L + PLOT_R) / 2.0,
        plural(vcpus),
        fmt_size(bytes_per_vcpu)
    );
    // Grid and y ticks.
    let mut t = 0.0;
    while t <= ymax * (1.0 + 1e-9) {
        let y = y_of(t);
        let _ = writeln!(
            o,
            "<line x1=\"{PLOT_L}\" y1=\"{y:.1}\" x2=\"{PLOT_R}\" y2=\"{y:.1}\" stroke=\"#dddddd\"/>"
        );
        let _ = writeln!(
            o,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            PLOT_L - 6.0,
            y + 4.0,
            fmt_si(t)
        );
        t += step;
    }
    // x ticks at the sweep's slot counts.
    for &s in &slots {
        let x = x_of(s);
        let _ = writeln!(
            o,
            "<line x1=\"{x:.1}\" y1=\"{PLOT_T}\" x2=\"{x:.1}\" y2=\"{PLOT_B}\" stroke=\"#eeeeee\"/>"
        );
        let _ = writeln!(
            o,
            "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{s}</text>",
            PLOT_B + 18.0
        );
    }
    // Axes.
    let _ = writeln!(
        o,
        "<line x1=\"{PLOT_L}\" y1=\"{PLOT_B}\" x2=\"{PLOT_R}\" y2=\"{PLOT_B}\" stroke=\"black\"/>"
    );
    let _ = writeln!(
        o,
        "<line x1=\"{PLOT_L}\" y1=\"{PLOT_T}\" x2=\"{PLOT_L}\" y2=\"{PLOT_B}\" stroke=\"black\"/>"
    );
    let _ = writeln!(
        o,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">memslots (log scale)</text>",
        (PLOT_L + PLOT_R) / 2.0,
        PLOT_B + 44.0
    );
    let ymid = (PLOT_T + PLOT_B) / 2.0;
    let _ = writeln!(
        o,
        "<text x=\"24\" y=\"{ymid:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 24 {ymid:.1})\">\
         {} (lower is better)</text>",
        clock.unit()
    );
    // One polyline (and markers) per cache mode, and the legend.
    for (i, c) in CACHES.iter().enumerate() {
        let pts: Vec<(f64, f64)> = slots
            .iter()
            .filter_map(|&s| {
                let cy = find(points, s, c)?.key_cycles()?;
                Some((x_of(s), y_of(cy as f64)))
            })
            .collect();
        let list: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let _ = writeln!(
            o,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
            COLOURS[i],
            list.join(" ")
        );
        for (x, y) in &pts {
            let _ = writeln!(
                o,
                "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3.5\" fill=\"{}\"/>",
                COLOURS[i]
            );
        }
        let ly = PLOT_T + 20.0 + 22.0 * i as f64;
        let _ = writeln!(
            o,
            "<line x1=\"{:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{}\" stroke-width=\"2\"/>",
            PLOT_R + 20.0,
            PLOT_R + 48.0,
            COLOURS[i]
        );
        let _ = writeln!(
            o,
            "<text x=\"{:.1}\" y=\"{:.1}\">cache {c}</text>",
            PLOT_R + 56.0,
            ly + 4.0
        );
    }
    o.push_str("</svg>\n");
    o
}

/// The SUMMARY objects, each as the hypervisor printed it, as one JSON
/// array (one object per line).
pub fn json_array(objects: &[String]) -> String {
    if objects.is_empty() {
        return "[]\n".into();
    }
    format!("[\n{}\n]\n", objects.join(",\n"))
}

// ---------------------------------------------------------------------------
// Running

fn bench_dir(root: &Path) -> PathBuf {
    artifacts::work_dir(root).join("bench")
}

/// Boots the image in `dir` and returns the run's SUMMARY line and object.
fn boot(c: &RunConf, o: &Opts, dir: PathBuf) -> Result<(String, Value)> {
    let g = c.guest_spec();
    let spec = RunSpec {
        backend: o.backend,
        firmware: Firmware::Bios,
        // The boot core is the controller; every vCPU gets its own core.
        cpus: g.machine_cores(),
        cpu_model: None,
        timeout: Duration::from_secs(o.timeout),
        mem_mib: g.machine_mib(),
        dir,
        stream: o.verbose,
    };
    let out = emu::run(&spec)?;
    if out.verdict != Verdict::Success {
        bail!(failure_text(
            out.verdict,
            &out.log,
            &out.log_path,
            o.backend
        ));
    }
    match summary_json(&out.log) {
        Ok(v) => Ok((summary_line(&out.log).unwrap_or_default().to_string(), v)),
        Err(e) => bail!(
            "{e:#}\n{}",
            failure_text(out.verdict, &out.log, &out.log_path, o.backend)
        ),
    }
}

/// A finished run: its SUMMARY line as printed, parsed, and what is wrong
/// with it.
type Judged = (String, Summary, Vec<String>);

/// Parses and checks one run's SUMMARY: (summary, problems).
fn judge(v: &Value, c: &RunConf) -> Result<(Summary, Vec<String>)> {
    let s = parse_summary(v)?;
    let mut bad = shape_problems(&s, c);
    bad.extend(mismatches(&s));
    Ok((s, bad))
}

fn single(o: &Opts) -> Result<i32> {
    let root = root();
    let c = o.conf();
    setup::ensure_toolchain(&root)?;
    let dir = bench_dir(&root).join(c.dir_name());
    eprintln!("xtask: building hypervisor, guest \"dirtylog\" and the image");
    crate::prepare(&root, &c.guest_spec(), &[], &dir, &[Firmware::Bios], true)?;
    eprintln!(
        "xtask: dirty-log benchmark: {} under {} ({} cores: controller + vCPUs)",
        c.describe(),
        o.backend,
        c.vcpus + 1
    );
    let start = Instant::now();
    let (line, v) = boot(&c, o, dir)?;
    let (s, bad) = judge(&v, &c)?;
    if o.json {
        // The hypervisor's own text, field order and all.
        println!("{line}");
    } else {
        print!("{}", report(&s, &c, o.backend));
    }
    eprintln!(
        "xtask: the run took {:.1} s of wall time",
        start.elapsed().as_secs_f64()
    );
    if bad.is_empty() {
        Ok(0)
    } else {
        eprintln!("xtask: PROBLEMS:\n  {}", bad.join("\n  "));
        Ok(1)
    }
}

fn sweep(o: &Opts) -> Result<i32> {
    let root = root();
    let confs = o.sweep_confs();
    setup::ensure_toolchain(&root)?;
    setup::ensure(&emu::needs(o.backend, Firmware::Bios))?;
    let base = bench_dir(&root).join("dirty-log-sweep");
    eprintln!(
        "xtask: building hypervisor, guest \"dirtylog\" and {} images",
        confs.len()
    );
    let kernel = artifacts::build_kernel(&root, &[])?;
    let guest = artifacts::build_guest(&root, "dirtylog")?;
    let loader = artifacts::build_loader(&root)?;
    for c in &confs {
        let dir = base.join(c.dir_name());
        std::fs::create_dir_all(&dir)?;
        artifacts::make_images(
            &loader,
            &kernel,
            &guest,
            &c.guest_spec().config(true),
            &dir,
            &[Firmware::Bios],
        )?;
    }
    eprintln!(
        "xtask: sweep of {} runs under {}, {SWEEP_JOBS} at a time: {} vCPUs, {} per vCPU, {} iterations",
        confs.len(),
        o.backend,
        o.vcpus,
        fmt_size(confs[0].bytes_per_vcpu),
        confs[0].iterations
    );
    let start = Instant::now();
    let next = Mutex::new(0usize);
    let results: Mutex<Vec<Option<Judged>>> = Mutex::new(vec![None; confs.len()]);
    std::thread::scope(|sc| {
        for _ in 0..SWEEP_JOBS {
            sc.spawn(|| loop {
                let i = {
                    let mut n = next.lock().unwrap();
                    *n += 1;
                    *n - 1
                };
                let Some(c) = confs.get(i) else { break };
                let t = Instant::now();
                let r = boot(c, o, base.join(c.dir_name()))
                    .and_then(|(line, v)| judge(&v, c).map(|(s, bad)| (line, s, bad)));
                let label = format!(
                    "run {:>2}/{}: {:>2} slot{}, cache {:<4}",
                    i + 1,
                    confs.len(),
                    c.slots,
                    plural(c.slots),
                    c.cache
                );
                let secs = t.elapsed().as_secs_f64();
                match r {
                    Ok((v, s, bad)) => {
                        let cyc = s
                            .phase(KEY_PHASE)
                            .map_or_else(|| "-".into(), |p| p.cycles.to_string());
                        eprintln!(
                            "{label} ... {} ({secs:.1} s; {KEY_PHASE}: {cyc} cycles){}",
                            if bad.is_empty() { "ok" } else { "PROBLEMS" },
                            if bad.is_empty() {
                                String::new()
                            } else {
                                format!("\n    {}", bad.join("\n    "))
                            }
                        );
                        results.lock().unwrap()[i] = Some((v, s, bad));
                    }
                    Err(e) => eprintln!("{label} ... FAILED ({secs:.1} s)\n{e:#}"),
                }
            });
        }
    });
    let results = results.into_inner().unwrap();
    eprintln!(
        "xtask: the sweep took {:.1} s of wall time",
        start.elapsed().as_secs_f64()
    );

    let mut failed = 0;
    let mut raw = Vec::new();
    let mut points = Vec::new();
    for (c, r) in confs.iter().zip(results) {
        let summary = match r {
            Some((v, s, bad)) => {
                raw.push(v);
                if !bad.is_empty() {
                    failed += 1;
                }
                Some(s)
            }
            None => {
                failed += 1;
                None
            }
        };
        points.push(Point {
            slots: c.slots,
            cache: c.cache.clone(),
            summary,
        });
    }
    let dir = bench_dir(&root);
    std::fs::create_dir_all(&dir)?;
    let json_path = dir.join("dirty-log-sweep.json");
    let raw = json_array(&raw);
    std::fs::write(&json_path, &raw)?;
    let tsc_hz = points
        .iter()
        .find_map(|p| p.summary.as_ref().map(|s| s.tsc_hz))
        .unwrap_or(0);
    let clock = Clock::new(o.backend, tsc_hz);
    let svg_path = dir.join("dirty-log-sweep.svg");
    std::fs::write(
        &svg_path,
        sweep_svg(&points, o.vcpus, confs[0].bytes_per_vcpu, clock),
    )?;
    if o.json {
        print!("{raw}");
    } else {
        println!(
            "dirty-log sweep: {} vCPU{}, {} per vCPU, {} iterations, backend {}",
            o.vcpus,
            plural(o.vcpus),
            fmt_size(confs[0].bytes_per_vcpu),
            confs[0].iterations,
            o.backend
        );
        println!();
        print!("{}", sweep_table(&points, o.vcpus, clock));
        println!();
        print!("{}", lookup_table(&points, o.vcpus));
        println!();
        println!("plot: {}", svg_path.display());
        println!("raw SUMMARY objects: {}", json_path.display());
    }
    if failed > 0 {
        eprintln!(
            "xtask: {failed} of {} sweep runs failed or had problems",
            confs.len()
        );
        return Ok(1);
    }
    Ok(0)
}

/// `cargo xtask bench dirty-log ...`
pub fn cmd(mut a: Args) -> Result<i32> {
    if a.flag("-h") || a.flag("--help") {
        println!("{USAGE}");
        return Ok(0);
    }
    let o = parse_opts(&mut a).map_err(|e| anyhow!("{e:#}\n{USAGE}"))?;
    a.finish()?;
    if o.sweep {
        sweep(&o)
    } else {
        single(&o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(s: &str) -> Args {
        Args(s.split_whitespace().map(str::to_string).collect())
    }

    fn lk(vcpu_hit: u64, vm_hit: u64, search: u64, miss: u64) -> Value {
        json!({"vcpu_hit": vcpu_hit, "vm_hit": vm_hit, "search": search, "miss": miss})
    }

    /// A SUMMARY like the hypervisor prints, for `vcpus` × `pages` pages,
    /// `iterations` rounds; dirty-memory phases cost `dirty_cycles`.
    fn summary(slots: u64, cache: &str, iterations: u32, dirty_cycles: u64) -> Value {
        let (vcpus, pages) = (4u64, 256u64);
        let mut phases = vec![
            json!({"name": "Populate memory", "cycles": 1000, "exits": 1200,
                   "ept_violations": 1100, "lookups": lk(1, 0, 2, 0)}),
            json!({"name": "Enabling dirty logging", "cycles": 10, "exits": 0,
                   "ept_violations": 0, "lookups": lk(0, 0, 0, 0)}),
        ];
        for i in 1..=iterations {
            phases.push(json!({"name": format!("Iteration {i} dirty memory"),
                "cycles": dirty_cycles + u64::from(i), "exits": 1030, "ept_violations": 1024,
                "lookups": lk(1000, 0, 24, 0), "pages_written": 1024, "pages_dirty": 1024}));
            phases.push(json!({"name": format!("Iteration {i} get dirty log"),
                "cycles": 100, "exits": 0, "ept_violations": 0, "lookups": lk(0, 0, 0, 0)}));
            phases.push(json!({"name": format!("Iteration {i} clear dirty log"),
                "cycles": 50, "exits": 0, "ept_violations": 0, "lookups": lk(0, 3, 1, 0)}));
        }
        phases.push(
            json!({"name": "Disabling dirty logging", "cycles": 7, "exits": 0,
            "ept_violations": 0, "lookups": lk(0, 0, 0, 0)}),
        );
        let vcpu: Vec<Value> = (0..vcpus)
            .map(|id| {
                json!({"id": id, "status": "ok", "exits": {"EPT violation": 300, "VMCALL": 4},
                       "ept_mapped": 260, "lookups": lk(250, 0, 10, 0), "cycles": 123456})
            })
            .collect();
        json!({"guest": "dirtylog", "mem_mib": 8, "slots": slots, "cache": cache,
               "vcpus": vcpus, "tsc_hz": 0, "result": "success", "vcpu": vcpu,
               "dirty_log": {"pages_per_vcpu": pages, "phases": phases}})
    }

    fn conf(slots: u32, cache: &str, iterations: u32) -> RunConf {
        RunConf {
            vcpus: 4,
            slots,
            bytes_per_vcpu: MIB,
            iterations,
            cache: cache.into(),
        }
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
        assert_eq!(fmt_size(MIB), "1 MiB");
        assert_eq!(fmt_size(512 * KIB), "512 KiB");
        assert_eq!(fmt_size(GIB), "1 GiB");
        assert_eq!(fmt_size(100), "100 bytes");
    }

    #[test]
    fn memory_fits_and_splits_into_slots() {
        for v in [1, 2, 4, 63] {
            let m = guest_mem_mib(v);
            assert!(m * MIB >= LOW_BYTES + u64::from(v) * STACK_BYTES);
            assert!(
                (m - 1) * MIB < LOW_BYTES + u64::from(v) * STACK_BYTES,
                "minimal"
            );
        }
        // 4 vCPUs: 2 MiB low + 64 KiB stacks → 3 MiB of base memory.
        assert_eq!(guest_mem_mib(4), 3);
        let conf = |v: u32, s: u32, b: u64| RunConf {
            vcpus: v,
            slots: s,
            bytes_per_vcpu: b,
            iterations: 3,
            cache: "vcpu".into(),
        };
        assert!(conf(4, 64, MIB).validate().is_ok());
        // 4 × 4 KiB = 4 pages cannot make 64 slots.
        assert!(conf(4, 64, 4 * KIB).validate().is_err());
        assert!(conf(4, 509, MIB).validate().is_err());
    }

    #[test]
    fn options_map_to_a_run_configuration() {
        let mut a = args("-v 2 --slots 8 -b 64K -i 5 --cache vm --backend bochs --json");
        let o = parse_opts(&mut a).unwrap();
        a.finish().unwrap();
        assert_eq!(o.backend, Backend::Bochs);
        assert!(o.json && !o.sweep && !o.verbose);
        let c = o.conf();
        assert_eq!(c, {
            let mut c = conf(8, "vm", 5);
            c.vcpus = 2;
            c.bytes_per_vcpu = 64 * KIB;
            c
        });
        let g = c.guest_spec();
        assert_eq!(g.guest, "dirtylog");
        assert_eq!(g.machine_cores(), 3, "two vCPUs and the controller");
        assert_eq!(g.cpus, 2);
        assert_eq!(g.slots, 8);
        let cfg = g.config(true);
        assert!(cfg.contains("guest=dirtylog\n"), "{cfg}");
        assert!(cfg.contains("cpus=2\n"), "{cfg}");
        assert!(cfg.contains("cache=vm\n"), "{cfg}");
        assert!(cfg.contains("iterations=5\n"), "{cfg}");
        assert!(cfg.contains("bytes_per_vcpu=65536\n"), "{cfg}");
        assert!(cfg.contains(&format!("mem_mib={}\n", g.mem_mib)), "{cfg}");

        // Defaults.
        let o = parse_opts(&mut args("--backend bochs")).unwrap();
        assert_eq!(o.conf(), conf(1, "vcpu", 3));
        assert_eq!(o.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn bad_options_are_refused_clearly() {
        for (line, says) in [
            ("-v 0", "-v 0"),
            ("-v 64", "1 to 63"),
            ("-x 0", "1 to 509"),
            ("-x 510", "1 to 509"),
            ("-b 1000", "multiple of 4096"),
            ("-b 0", "multiple of 4096"),
            ("-b 6K", "multiple of 4096"),
            ("-b lots", "not a size"),
            ("-i 1", "at least 2"),
            ("--cache lru", "vcpu, vm or none"),
            ("--backend qemu", "no VMX"),
            ("--backend vbox", "unknown backend"),
            ("-v 63 -b 64M", "at most 2048 MiB"),
            ("-v 2 --vcpus 3", "give it once"),
            ("--sweep -x 4", "--sweep"),
            ("--sweep --cache vm", "--sweep"),
            ("--timeout 0", "--timeout"),
            ("-b", "needs a value"),
        ] {
            let line = if line.contains("--backend") {
                line.to_string()
            } else {
                format!("--backend bochs {line}")
            };
            let e = parse_opts(&mut args(&line)).err().map(|e| format!("{e:#}"));
            let e = e.unwrap_or_else(|| panic!("{line:?} accepted"));
            assert!(e.contains(says), "{line:?}: {e}");
        }
        // Leftovers are caught by finish().
        let mut a = args("--backend bochs --frobnicate");
        parse_opts(&mut a).unwrap();
        assert!(a.finish().is_err());
    }

    #[test]
    fn sweep_runs_twelve_configurations() {
        let o = parse_opts(&mut args("--sweep --backend bochs")).unwrap();
        let c = o.sweep_confs();
        assert_eq!(c.len(), 12);
        assert!(c.iter().all(|c| c.vcpus == 4
            && c.bytes_per_vcpu == SWEEP_BYTES
            && c.iterations == SWEEP_ITERATIONS));
        assert_eq!(
            c.iter().map(|c| c.slots).collect::<Vec<_>>(),
            [1, 1, 1, 4, 4, 4, 16, 16, 16, 64, 64, 64]
        );
        let mut dirs: Vec<String> = c.iter().map(RunConf::dir_name).collect();
        dirs.sort();
        dirs.dedup();
        assert_eq!(dirs.len(), 12);
        let o = parse_opts(&mut args("--sweep -b 64K -i 2 --backend bochs")).unwrap();
        assert!(o
            .sweep_confs()
            .iter()
            .all(|c| c.bytes_per_vcpu == 64 * KIB && c.iterations == 2));
    }

    #[test]
    fn finds_and_parses_the_summary() {
        let v = summary(4, "vcpu", 3, 5000);
        let log = format!("boot\nHV RESULT: PENDING\n  SUMMARY {v}\nHV RESULT: SUCCESS\n");
        let got = summary_json(&log).unwrap();
        assert_eq!(got, v);
        let s = parse_summary(&got).unwrap();
        assert_eq!(s.vcpus, 4);
        assert_eq!(s.slots, 4);
        assert_eq!(s.pages_per_vcpu, 256);
        assert_eq!(s.phases.len(), 2 + 3 * 3 + 1);
        assert_eq!(s.phases.iter().filter(|p| p.pages.is_some()).count(), 3);
        let p = s.phase(KEY_PHASE).unwrap();
        assert_eq!(p.cycles, 5002);
        assert_eq!(p.iteration(), Some((2, "dirty memory")));
        assert_eq!(p.pages, Some((1024, 1024)));
        assert_eq!(
            p.lookups,
            Lookups {
                vcpu_hit: 1000,
                vm_hit: 0,
                search: 24,
                miss: 0
            }
        );
        assert_eq!(s.vcpu[0].exits.len(), 2);
        assert!(mismatches(&s).is_empty());
        assert!(shape_problems(&s, &conf(4, "vcpu", 3)).is_empty());

        assert!(summary_json("HV RESULT: SUCCESS\n")
            .unwrap_err()
            .to_string()
            .contains("no \"SUMMARY"));
        assert!(format!("{:#}", summary_json("SUMMARY {oops").unwrap_err()).contains("JSON"));
    }

    #[test]
    fn missing_fields_are_named() {
        let mut v = summary(1, "vcpu", 2, 10);
        v["dirty_log"]["phases"][2]
            .as_object_mut()
            .unwrap()
            .remove("pages_dirty");
        let e = parse_summary(&v).unwrap_err().to_string();
        assert!(
            e.contains("phases[2]") && e.contains("Iteration 1 dirty memory"),
            "{e}"
        );
        assert!(e.contains("pages_dirty"), "{e}");

        let mut v = summary(1, "vcpu", 2, 10);
        v["dirty_log"]["phases"][0]["lookups"]
            .as_object_mut()
            .unwrap()
            .remove("search");
        let e = parse_summary(&v).unwrap_err().to_string();
        assert!(e.contains("lookups") && e.contains("search"), "{e}");

        let mut v = summary(1, "vcpu", 2, 10);
        v["tsc_hz"] = json!("fast");
        assert!(parse_summary(&v)
            .unwrap_err()
            .to_string()
            .contains("tsc_hz"));

        let mut v = summary(1, "vcpu", 2, 10);
        v.as_object_mut().unwrap().remove("dirty_log");
        assert!(parse_summary(&v)
            .unwrap_err()
            .to_string()
            .contains("dirty_log"));
    }

    #[test]
    fn mismatches_are_detected() {
        let mut v = summary(4, "vcpu", 3, 5000);
        v["dirty_log"]["phases"][5]["pages_dirty"] = json!(1020); // Iteration 2
        let s = parse_summary(&v).unwrap();
        let m = mismatches(&s);
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(m[0].contains("Iteration 2 dirty memory") && m[0].contains("4 writes LOST"));
        let r = report(&s, &conf(4, "vcpu", 3), Backend::Bochs);
        assert!(r.contains("1020/1024 MISMATCH"), "{r}");
        assert_eq!(r.matches(" OK").count(), 2, "{r}");

        // A log with every page, but fewer pages written than the guest writes.
        let mut v = summary(4, "vcpu", 3, 5000);
        v["dirty_log"]["phases"][2]["pages_dirty"] = json!(1000);
        v["dirty_log"]["phases"][2]["pages_written"] = json!(1000);
        let m = mismatches(&parse_summary(&v).unwrap());
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(m[0].contains("4 vCPUs × 256 pages = 1024"), "{m:?}");
    }

    #[test]
    fn shape_problems_are_detected() {
        let s = parse_summary(&summary(4, "vm", 3, 5000)).unwrap();
        let p = shape_problems(&s, &conf(4, "vcpu", 3));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("cache"));
        let p = shape_problems(&s, &conf(4, "vm", 4));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("Iteration 4 dirty memory"), "{p:?}");
        let mut v = summary(4, "vm", 3, 5000);
        v["vcpu"][1]["status"] = json!("triple fault");
        v["result"] = json!("failure");
        let p = shape_problems(&parse_summary(&v).unwrap(), &conf(4, "vm", 3));
        assert_eq!(p.len(), 2, "{p:?}");
        v["dirty_log"]["ok"] = json!(false);
        let p = shape_problems(&parse_summary(&v).unwrap(), &conf(4, "vm", 3));
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].contains("dirty_log.ok"), "{p:?}");
        v["dirty_log"]["ok"] = json!(1);
        assert!(parse_summary(&v)
            .unwrap_err()
            .to_string()
            .contains("dirty_log.ok"));
    }

    #[test]
    fn report_reads_like_dirty_log_perf_test() {
        let s = parse_summary(&summary(4, "vcpu", 3, 5000)).unwrap();
        let r = report(&s, &conf(4, "vcpu", 3), Backend::Bochs);
        let lines: Vec<&str> = r.lines().collect();
        assert_eq!(
            lines[0],
            "Testing guest mode: 4 vCPUs, 1 MiB per vCPU, 4 memslots, cache vcpu, backend bochs"
        );
        assert_eq!(
            lines[2],
            "Populate memory time: 1000 cycles (emulated, Bochs)"
        );
        assert!(r.contains("Iteration 2 dirty memory time: 5002 cycles (emulated, Bochs)\n"));
        assert!(r.contains("Disabling dirty logging time: 7 cycles"));
        assert!(r.contains(
            "Get dirty log over 3 iterations took 300 cycles (avg 100/iteration; emulated, Bochs)\n"
        ));
        assert!(r.contains("1024/1024 OK"));
        assert!(r.contains("EPT violation 300, VMCALL 4"));
        // On hardware with a known TSC: seconds too.
        let mut v = summary(4, "vcpu", 3, 5000);
        v["tsc_hz"] = json!(1_000_000_000u64);
        let s = parse_summary(&v).unwrap();
        let r = report(&s, &conf(4, "vcpu", 3), Backend::QemuKvm);
        assert!(
            r.contains("Populate memory time: 0.000001000s (1000 cycles)"),
            "{r}"
        );
        assert!(!r.contains("emulated"));
    }

    #[test]
    fn failure_text_has_the_tail() {
        let log: String = (1..=50).map(|i| format!("line {i}\n")).collect();
        let t = failure_text(
            Verdict::Failure,
            &log,
            Path::new("/x/serial.log"),
            Backend::Bochs,
        );
        assert!(t.contains("FAILURE") && t.contains("/x/serial.log"));
        assert!(t.contains("line 21\n") && t.contains("line 50"));
        assert!(!t.contains("line 20\n"));
    }

    /// vcpu stays flat, vm and none grow with the slot count.
    fn points() -> Vec<Point> {
        let mut v = Vec::new();
        for s in SWEEP_SLOTS {
            for (c, base) in [("vcpu", 1000u64), ("vm", 1500), ("none", 1200)] {
                let cyc = if c == "vcpu" {
                    base
                } else {
                    base + 100 * u64::from(s)
                };
                let s_json = summary(u64::from(s), c, 3, cyc - 2);
                v.push(Point {
                    slots: s,
                    cache: c.into(),
                    summary: Some(parse_summary(&s_json).unwrap()),
                });
            }
        }
        v
    }

    #[test]
    fn sweep_table_and_ratios() {
        let clock = Clock::new(Backend::Bochs, 0);
        let t = sweep_table(&points(), 4, clock);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "Iteration 2 dirty memory time (cycles, emulated by Bochs; lower is better)"
        );
        assert!(lines[1].starts_with("config") && lines[1].ends_with("none/vcpu"));
        assert!(lines[2].starts_with("4 vCPUs,  1 slot "), "{t}");
        assert!(lines[5].starts_with("4 vCPUs, 64 slots"), "{t}");
        // 1 slot: vm 1600 / vcpu 1000, none 1300 / 1000.
        let cells: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            &cells[4..],
            ["1000", "1600", "1300", "1.600", "1.300"],
            "{t}"
        );
        // 64 slots: vm 7900, none 7600.
        let cells: Vec<&str> = lines[5].split_whitespace().collect();
        assert_eq!(
            &cells[4..],
            ["1000", "7900", "7600", "7.900", "7.600"],
            "{t}"
        );
        assert_eq!(
            lines[6],
            "vcpu 64/1 slots: 1.000   vm 64/1: 4.938   none 64/1: 5.846"
        );

        // A failed run shows as "-" and its ratios too.
        let mut p = points();
        p.retain(|p| !(p.slots == 16 && p.cache == "vm"));
        p.iter_mut()
            .find(|p| p.slots == 4 && p.cache == "none")
            .unwrap()
            .summary = None;
        let t = sweep_table(&p, 4, clock);
        let row16: Vec<&str> = t.lines().nth(4).unwrap().split_whitespace().collect();
        assert_eq!(row16[5], "-");
        assert_eq!(row16[7], "-");
        let row4: Vec<&str> = t.lines().nth(3).unwrap().split_whitespace().collect();
        assert_eq!(row4[6], "-");
        assert_eq!(row4[8], "-");

        let l = lookup_table(&points(), 4);
        assert_eq!(l.lines().count(), 2 + 12, "{l}");
        assert!(l.contains("4 vCPUs, 16 slots  vm "), "{l}");
        // 1000 vcpu hits, 24 searches, 1024 EPT violations, 1000 cycles / 1024.
        let row: Vec<&str> = l.lines().nth(2).unwrap().split_whitespace().collect();
        assert_eq!(
            &row[4..],
            ["vcpu", "1000", "0", "24", "0", "1024", "1"],
            "{l}"
        );
    }

    fn polyline_points(svg: &str) -> Vec<Vec<(f64, f64)>> {
        svg.lines()
            .filter(|l| l.starts_with("<polyline"))
            .map(|l| {
                let p = l.split("points=\"").nth(1).unwrap();
                let p = &p[..p.find('"').unwrap()];
                p.split_whitespace()
                    .map(|xy| {
                        let (x, y) = xy.split_once(',').unwrap();
                        (x.parse().unwrap(), y.parse().unwrap())
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn svg_is_well_formed_and_scaled() {
        let svg = sweep_svg(&points(), 4, 512 * KIB, Clock::new(Backend::Bochs, 0));
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<svg").count(), 1);
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        assert!(svg
            .lines()
            .filter(|l| l.starts_with('<') && !l.starts_with("<svg") && !l.starts_with("</svg"))
            .all(|l| l.ends_with("/>") || l.ends_with("</text>")));
        for s in [
            "cache vcpu",
            "cache vm",
            "cache none",
            "memslots (log scale)",
            "emulated",
        ] {
            assert!(svg.contains(s), "{s}");
        }
        for s in SWEEP_SLOTS {
            assert!(svg.contains(&format!(">{s}</text>")), "x tick {s}");
        }
        let lines = polyline_points(&svg);
        assert_eq!(lines.len(), 3);
        let (vcpu, vm) = (&lines[0], &lines[1]);
        assert!(lines.iter().all(|l| l.len() == 4));
        // x: log scale from the left edge (1 slot) to the right edge (64).
        assert_eq!(vcpu[0].0, PLOT_L);
        assert_eq!(vcpu[3].0, PLOT_R);
        let mid = PLOT_L + (PLOT_R - PLOT_L) / 3.0; // 4 = 64^(1/3)
        assert!((vcpu[1].0 - mid).abs() < 0.1, "{vcpu:?}");
        // y: vcpu is flat; vm rises (smaller y) with slots; all in the plot.
        assert!(vcpu.iter().all(|p| p.1 == vcpu[0].1));
        assert!(vm.windows(2).all(|w| w[1].1 < w[0].1), "{vm:?}");
        assert!(lines
            .iter()
            .flatten()
            .all(|p| p.1 >= PLOT_T && p.1 <= PLOT_B));
        // Heights scale with the cycles: max 7900 under an axis of 8000.
        let h = |y: f64| PLOT_B - y;
        assert!((h(vm[3].1) / h(vcpu[0].1) - 7900.0 / 1000.0).abs() < 0.02);
        assert!((h(vm[3].1) / (PLOT_B - PLOT_T) - 7900.0 / 8000.0).abs() < 0.01);
        assert!(
            svg.contains(">8000</text>") && svg.contains(">0</text>"),
            "y ticks"
        );
    }

    #[test]
    fn sweep_json_is_an_array_of_the_objects() {
        let lines: Vec<String> = [summary(1, "vcpu", 2, 10), summary(4, "vm", 2, 20)]
            .iter()
            .map(Value::to_string)
            .collect();
        let text = json_array(&lines);
        let v: Value = serde_json::from_str(&text).unwrap();
        let a = v.as_array().unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[1]["cache"], "vm");
        assert!(text.contains(&lines[0]), "kept as printed");
        assert_eq!(json_array(&[]), "[]\n");
    }

    #[test]
    fn axes_are_nice() {
        assert_eq!(nice_axis(7900.0), (8000.0, 2000.0));
        assert_eq!(nice_axis(1.0), (1.0, 0.2));
        assert_eq!(nice_axis(123_456_789.0), (125_000_000.0, 25_000_000.0));
        assert_eq!(nice_axis(0.0), (1.0, 0.2));
        assert_eq!(fmt_si(0.0), "0");
        assert_eq!(fmt_si(2000.0), "2000");
        assert_eq!(fmt_si(12_345.0), "12.3k");
        assert_eq!(fmt_si(4_500_000.0), "4.5M");
        assert_eq!(fmt_si(125_000_000.0), "125M");
        assert_eq!(fmt_si(2e9), "2G");
    }
}
