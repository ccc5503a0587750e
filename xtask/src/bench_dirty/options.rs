//! The benchmark's options (clap, with KVM's short names) and the run
//! configuration they ask for, checked once against the real limits.

use super::plural;
use crate::checks::{self, fmt_size, KIB, MIB};
use crate::cli::{cache_parser, BackendChoice};
use crate::emu::Backend;
use crate::spec::GuestSpec;
use anyhow::{bail, Result};
use clap::Args;
use hypervisor::limits::{CacheMode, PAGE_SIZE};
use hypervisor::mm::fault::EptPages;

/// Guest memory below the first vCPU region: BootInfo, GDT and page tables,
/// the guest image (linked at 1 MiB, about 1.1 MiB in all) ...
const LOW_BYTES: u64 = 2 * MIB;
/// ... and one stack per vCPU (`abi::STACK_SIZE`).
const STACK_BYTES: u64 = 16 * KIB;

pub const DEFAULT_VCPUS: u32 = 4;
pub const DEFAULT_BYTES: u64 = MIB;
pub const DEFAULT_ITERATIONS: u32 = 3;
pub const DEFAULT_TIMEOUT: u64 = 900;

/// The sweep: these slot counts × these cache modes.
pub const SWEEP_SLOTS: [u32; 4] = [1, 4, 16, 64];
pub const CACHES: [CacheMode; 3] = CacheMode::ALL;
/// The sweep's defaults where -b / -i are not given. Measured under Bochs
/// (4 vCPUs, 64 slots, cache none, 3 iterations): 18.0 s wall at 512 KiB,
/// 16.9 s at 1 MiB; the BIOS and SMP boot dominate, so the sweep keeps the
/// KVM test's 1 MiB (12 runs, two at a time: about two minutes).
pub const SWEEP_BYTES: u64 = MIB;
pub const SWEEP_ITERATIONS: u32 = 3;

/// `cargo xtask bench dirty-log`: the options of KVM's dirty_log_perf_test.
#[derive(Args, Debug, Clone)]
#[command(after_help = "Examples:\n  \
        cargo xtask bench dirty-log -v 1 -x 1 -b 64K -i 2\n  \
        cargo xtask bench dirty-log -v 4 -x 64 -b 1M -i 3 --cache vm\n  \
        cargo xtask bench dirty-log --sweep      \
        # slots 1, 4, 16, 64 x cache vcpu, vm, none; plot in target/xtask/bench/")]
pub struct DirtyLogArgs {
    #[arg(short = 'v', long = "vcpus", value_name = "V", default_value_t = DEFAULT_VCPUS,
          value_parser = checks::dirty_vcpus, help = checks::help::dirty_vcpus())]
    pub vcpus: u32,
    #[arg(short = 'x', long = "slots", value_name = "S", value_parser = checks::dirty_slots,
          help = checks::help::dirty_slots())]
    pub slots: Option<u32>,
    /// Bytes each vCPU writes per iteration: a non-zero multiple of the page
    /// size, with an optional K, M or G suffix [default: 1M]
    #[arg(short = 'b', long = "bytes-per-vcpu", value_name = "BYTES",
          value_parser = checks::bytes_per_vcpu)]
    pub bytes_per_vcpu: Option<u64>,
    /// Iterations, at least 2 (the benchmark reports "Iteration 2") [default: 3]
    #[arg(short = 'i', long = "iterations", value_name = "I", value_parser = checks::iterations)]
    pub iterations: Option<u32>,
    /// Memslot cache: vcpu, vm or none [default: vcpu]
    #[arg(long, value_name = "MODE", value_parser = cache_parser())]
    pub cache: Option<CacheMode>,
    /// EPT pages a fault maps: 4k, or 2m where a slot allows it (logging
    /// splits them)
    #[arg(long, value_name = "SIZE", default_value = "4k",
          value_parser = crate::cli::ept_pages_parser())]
    pub ept_pages: EptPages,
    /// Print the SUMMARY object(s) instead of the report
    #[arg(long)]
    pub json: bool,
    /// Run every slot count (1, 4, 16, 64) in every cache mode and plot them
    #[arg(long, conflicts_with_all = ["slots", "cache"])]
    pub sweep: bool,
    /// The emulator (qemu without KVM has no VMX and is refused)
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Kill a run after S seconds without a result (at least 1)
    #[arg(long, value_name = "S", default_value_t = DEFAULT_TIMEOUT,
          value_parser = checks::timeout)]
    pub timeout: u64,
    /// Stream the serial log of the run
    #[arg(long)]
    pub verbose: bool,
}

/// One benchmark run's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunConf {
    pub vcpus: u32,
    pub slots: u32,
    pub bytes_per_vcpu: u64,
    pub iterations: u32,
    pub cache: CacheMode,
    pub ept_pages: EptPages,
}

/// The options, checked, with the backend resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opts {
    pub vcpus: u32,
    /// None: not given (a sweep sets its own).
    pub slots: Option<u32>,
    pub bytes_per_vcpu: Option<u64>,
    pub iterations: Option<u32>,
    pub cache: Option<CacheMode>,
    pub ept_pages: EptPages,
    pub json: bool,
    pub sweep: bool,
    pub backend: Backend,
    pub timeout: u64,
    pub verbose: bool,
}

impl DirtyLogArgs {
    /// The checks that take more than one option or the backend: each run's
    /// memory and cores on that backend.
    pub fn check(&self) -> Result<Opts> {
        let backend = self.backend.resolve();
        if backend == Backend::Qemu {
            bail!(
                "--backend qemu: QEMU without KVM (TCG) has no VMX, so the hypervisor cannot run \
                 a guest there; use --backend bochs, or qemu-kvm where nested VT-x exists"
            );
        }
        let o = Opts {
            vcpus: self.vcpus,
            slots: self.slots,
            bytes_per_vcpu: self.bytes_per_vcpu,
            iterations: self.iterations,
            cache: self.cache,
            ept_pages: self.ept_pages,
            json: self.json,
            sweep: self.sweep,
            backend,
            timeout: self.timeout,
            verbose: self.verbose,
        };
        let confs = if o.sweep {
            o.sweep_confs()
        } else {
            vec![o.conf()]
        };
        for c in confs {
            c.guest_spec().check(Some(backend))?;
        }
        Ok(o)
    }
}

impl Opts {
    /// The single run these options ask for.
    pub fn conf(&self) -> RunConf {
        RunConf {
            vcpus: self.vcpus,
            slots: self.slots.unwrap_or(1),
            bytes_per_vcpu: self.bytes_per_vcpu.unwrap_or(DEFAULT_BYTES),
            iterations: self.iterations.unwrap_or(DEFAULT_ITERATIONS),
            cache: self.cache.unwrap_or_default(),
            ept_pages: self.ept_pages,
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
                    cache,
                    ept_pages: self.ept_pages,
                });
            }
        }
        v
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
        self.bytes_per_vcpu / PAGE_SIZE
    }

    /// The hypervisor's run configuration for this benchmark.
    pub fn guest_spec(&self) -> GuestSpec {
        GuestSpec {
            cache: self.cache,
            cpus: self.vcpus,
            iterations: self.iterations,
            bytes_per_vcpu: self.bytes_per_vcpu,
            ept_pages: self.ept_pages,
            ..GuestSpec::new("dirtylog", self.mem_mib(), self.slots)
        }
    }

    /// A directory name that tells runs apart.
    pub fn dir_name(&self) -> String {
        format!(
            "dirty-log-v{}-x{}-b{}k-i{}-{}{}",
            self.vcpus,
            self.slots,
            self.bytes_per_vcpu / KIB,
            self.iterations,
            self.cache,
            match self.ept_pages {
                EptPages::Only4K => "",
                EptPages::Allow2M => "-2m",
            }
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

#[cfg(test)]
mod tests {
    use super::super::sample::conf;
    use super::*;
    use crate::cli::{BenchCmd, Cli, Cmd};
    use clap::Parser;

    fn args(line: &str) -> Result<DirtyLogArgs, clap::Error> {
        let words = ["xtask", "bench", "dirty-log"].into_iter();
        let cli = Cli::try_parse_from(words.chain(line.split_whitespace()))?;
        match cli.cmd {
            Cmd::Bench {
                what: BenchCmd::DirtyLog(a),
            } => Ok(a),
            c => panic!("{c:?}"),
        }
    }

    fn opts(line: &str) -> Result<Opts> {
        args(line)?.check()
    }

    #[test]
    fn memory_fits_and_splits_into_slots() {
        for v in [1, 2, 4, 62] {
            let m = guest_mem_mib(v);
            assert!(m * MIB >= LOW_BYTES + u64::from(v) * STACK_BYTES);
            assert!(
                (m - 1) * MIB < LOW_BYTES + u64::from(v) * STACK_BYTES,
                "minimal"
            );
        }
        // 4 vCPUs: 2 MiB low + 64 KiB stacks → 3 MiB of base memory.
        assert_eq!(guest_mem_mib(4), 3);
        let bochs = Some(Backend::Bochs);
        let conf = |v: u32, s: u32, b: u64| RunConf {
            vcpus: v,
            slots: s,
            bytes_per_vcpu: b,
            iterations: 3,
            cache: CacheMode::Vcpu,
            ept_pages: EptPages::Only4K,
        };
        assert!(conf(4, 64, MIB).guest_spec().check(bochs).is_ok());
        // 4 × 4 KiB = 4 pages cannot make 64 slots.
        assert!(conf(4, 64, 4 * KIB).guest_spec().check(bochs).is_err());
    }

    #[test]
    fn options_map_to_a_run_configuration() {
        let o = opts("-v 2 --slots 8 -b 64K -i 5 --cache vm --backend bochs --json").unwrap();
        assert_eq!(o.backend, Backend::Bochs);
        assert!(o.json && !o.sweep && !o.verbose);
        let c = o.conf();
        assert_eq!(c, {
            let mut c = conf(8, CacheMode::Vm, 5);
            c.vcpus = 2;
            c.bytes_per_vcpu = 64 * KIB;
            c
        });
        let g = c.guest_spec();
        assert_eq!(g.guest, "dirtylog");
        assert_eq!(g.machine_cores(), 3, "two vCPUs and the controller");
        assert_eq!((g.cpus, g.slots), (2, 8));
        let cfg = g.config(true);
        for line in [
            "guest=dirtylog\n",
            "cpus=2\n",
            "cache=vm\n",
            "iterations=5\n",
            "bytes_per_vcpu=65536\n",
            "dirty_mode=sync\n",
        ] {
            assert!(cfg.contains(line), "{line}: {cfg}");
        }
        assert!(cfg.contains(&format!("mem_mib={}\n", g.mem_mib)), "{cfg}");
        // The long names are the same options.
        let long = opts(
            "--vcpus 2 --slots 8 --bytes-per-vcpu 65536 --iterations 5 --cache vm \
             --backend bochs --json",
        )
        .unwrap();
        assert_eq!(long, o);

        // Defaults.
        let o = opts("--backend bochs").unwrap();
        assert_eq!(o.conf(), conf(1, CacheMode::Vcpu, 3));
        assert_eq!(o.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn bad_options_are_refused_clearly() {
        for (line, says) in [
            ("-v 0", "1 to 62"),
            ("-v 63", "MAX_VCPUS = 62"),
            ("-v 15", "at most 15"),
            ("-x 0", "1 to 508"),
            ("-x 509", "1 to 508"),
            ("-b 1000", "multiple of 4096"),
            ("-b 0", "multiple of 4096"),
            ("-b 6K", "multiple of 4096"),
            ("-b lots", "not a size"),
            ("-i 1", "at least 2"),
            ("--cache lru", "vcpu"),
            ("--backend qemu", "no VMX"),
            ("--backend vbox", "vbox"),
            ("-v 14 -b 256M", "at most 1920 MiB"),
            ("-v 2 --vcpus 3", "multiple times"),
            ("--sweep -x 4", "--sweep"),
            ("--sweep --cache vm", "--sweep"),
            ("--timeout 0", "--timeout"),
            ("-b", "a value is required"),
            ("--frobnicate", "--frobnicate"),
        ] {
            let line = if line.contains("--backend") {
                line.to_string()
            } else {
                format!("--backend bochs {line}")
            };
            let e = opts(&line).err().map(|e| format!("{e:#}"));
            let e = e.unwrap_or_else(|| panic!("{line:?} accepted"));
            assert!(e.contains(says), "{line:?}: {e}");
        }
        // On QEMU with KVM, Bochs' core and memory limits do not apply.
        assert!(opts("--backend qemu-kvm -v 20 -b 64M").is_ok());
        assert!(
            opts("--backend qemu-kvm -v 62 -b 128M").is_err(),
            "over 4 GiB"
        );
    }

    #[test]
    fn sweep_runs_twelve_configurations() {
        let o = opts("--sweep --backend bochs").unwrap();
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
        let o = opts("--sweep -b 64K -i 2 --backend bochs").unwrap();
        assert!(o
            .sweep_confs()
            .iter()
            .all(|c| c.bytes_per_vcpu == 64 * KIB && c.iterations == 2));
    }
}
