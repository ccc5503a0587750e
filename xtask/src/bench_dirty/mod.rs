//! `cargo xtask bench dirty-log`: a dirty-page-logging benchmark shaped like
//! Linux KVM's `dirty_log_perf_test`, run by our hypervisor in an emulator.
//!
//! Options ([`options`]: clap, checked up front) → run configuration (guest
//! `dirtylog`, V vCPUs, S memslots, the cache mode, `iterations`,
//! `bytes_per_vcpu`) → image → boot with V + 1 cores (the boot core is the
//! controller, like the KVM test's main thread) ([`runs`]) → the
//! `SUMMARY {json}` line of the serial log, read into the hypervisor's own
//! schema → a text report and the checks on it ([`report`]).
//!
//! `--sweep` runs slots 1, 4, 16, 64 × cache vcpu, vm, none, two runs at a
//! time, prints the "Iteration 2 dirty memory" table the way the KVM memslot
//! series did ([`sweep`]), and writes
//! target/xtask/bench/dirty-log-sweep.{json,svg} ([`plot`]).
//!
//! Under Bochs (`clock: sync=none`) the TSC follows instructions: the cycle
//! figures are emulated, deterministic run to run, and labelled so.
//!
//! Everything between the serial log and the printed text is pure and
//! unit-tested.

pub mod options;
pub mod plot;
pub mod report;
pub mod runs;
pub mod sweep;

use anyhow::Result;
use options::DirtyLogArgs;

/// The phase the sweep compares, as the KVM series did.
pub const KEY_PHASE: &str = "Iteration 2 dirty memory";

/// `cargo xtask bench dirty-log ...`
pub fn cmd(args: &DirtyLogArgs) -> Result<i32> {
    let o = args.check()?;
    if o.sweep {
        runs::sweep(&o)
    } else {
        runs::single(&o)
    }
}

/// "" for one, "s" for more.
pub fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// SUMMARY objects like the hypervisor prints, for the tests.
#[cfg(test)]
pub mod sample {
    use super::options::RunConf;
    use super::options::SWEEP_SLOTS;
    use super::sweep::Point;
    use crate::checks::MIB;
    use hypervisor::limits::CacheMode;
    use hypervisor::report::schema::{
        DirtyLogSummary, EptSummary, GuestReport, Lookups, Phase, RunResult, Summary, VcpuSummary,
    };

    pub fn lk(vcpu_hit: u64, vm_hit: u64, search: u64, miss: u64) -> Lookups {
        Lookups {
            vcpu_hit,
            vm_hit,
            search,
            miss,
        }
    }

    fn phase(name: &str, cycles: u64, exits: u64, viol: u64, lookups: Lookups) -> Phase {
        Phase {
            name: name.into(),
            cycles,
            exits,
            ept_violations: viol,
            lookups,
            pages_written: None,
            pages_dirty: None,
        }
    }

    /// 4 vCPUs × 256 pages, `iterations` rounds; dirty-memory phases cost
    /// `dirty_cycles` (+ the iteration number).
    pub fn summary(slots: u32, cache: CacheMode, iterations: u32, dirty_cycles: u64) -> Summary {
        let (vcpus, pages) = (4u32, 256u64);
        let mut phases = vec![
            phase("Populate memory", 1000, 1200, 1100, lk(1, 0, 2, 0)),
            phase("Enabling dirty logging", 10, 0, 0, lk(0, 0, 0, 0)),
        ];
        for i in 1..=iterations {
            let mut d = phase(
                &format!("Iteration {i} dirty memory"),
                dirty_cycles + u64::from(i),
                1030,
                1024,
                lk(1000, 0, 24, 0),
            );
            (d.pages_written, d.pages_dirty) = (Some(1024), Some(1024));
            phases.push(d);
            phases.push(phase(
                &format!("Iteration {i} get dirty log"),
                100,
                0,
                0,
                lk(0, 0, 0, 0),
            ));
            phases.push(phase(
                &format!("Iteration {i} clear dirty log"),
                50,
                0,
                0,
                lk(0, 3, 1, 0),
            ));
        }
        phases.push(phase("Disabling dirty logging", 7, 0, 0, lk(0, 0, 0, 0)));
        let vcpu = (0..vcpus)
            .map(|id| VcpuSummary {
                id,
                status: "ok".into(),
                exits: [
                    ("EPT violation".to_string(), 300),
                    ("VMCALL".to_string(), 4),
                ]
                .into(),
                ept_mapped: 260,
                ept_spurious: 0,
                dirty_faults: 256,
                lookups: lk(250, 0, 10, 0),
                cycles: 123456,
                report: Some(GuestReport {
                    status: 0,
                    value: 4,
                }),
            })
            .collect();
        Summary {
            guest: "dirtylog".into(),
            mem_mib: 3,
            mem_pages: 768 + 1024,
            slots,
            cache,
            vcpus,
            tsc_hz: 0,
            result: RunResult::Success,
            exit_code: None,
            ept: EptSummary {
                leaves_4k: 1100,
                leaves_2m: 0,
            },
            vcpu,
            dirty_log: Some(DirtyLogSummary {
                pages_per_vcpu: pages,
                ok: true,
                mismatches: None,
                rounds: None,
                phases,
            }),
        }
    }

    pub fn conf(slots: u32, cache: CacheMode, iterations: u32) -> RunConf {
        RunConf {
            vcpus: 4,
            slots,
            bytes_per_vcpu: MIB,
            iterations,
            cache,
            ept_pages: hypervisor::mm::fault::EptPages::Only4K,
        }
    }

    /// vcpu stays flat, vm and none grow with the slot count.
    pub fn points() -> Vec<Point> {
        let mut v = Vec::new();
        for s in SWEEP_SLOTS {
            for (c, base) in [
                (CacheMode::Vcpu, 1000u64),
                (CacheMode::Vm, 1500),
                (CacheMode::None, 1200),
            ] {
                let cyc = if c == CacheMode::Vcpu {
                    base
                } else {
                    base + 100 * u64::from(s)
                };
                v.push(Point {
                    slots: s,
                    cache: c,
                    summary: Some(summary(s, c, 3, cyc - 2)),
                });
            }
        }
        v
    }
}
