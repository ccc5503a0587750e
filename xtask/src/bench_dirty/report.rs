//! From the serial log to the text: the SUMMARY line read into the
//! hypervisor's schema, the checks on it, and the report of one run.

use super::options::RunConf;
use super::plural;
use crate::checks::fmt_size;
use crate::emu::{Backend, Outcome, Verdict};
use anyhow::{anyhow, bail, Result};
use hypervisor::report::schema::{DirtyLogSummary, Lookups, RunResult, Summary};
use std::fmt::Write as _;
use std::path::Path;

pub use crate::summary::summary_line;

/// Reads a SUMMARY object into the shared schema; a missing or mistyped
/// field is an error that names its path. A dirty-log run must have its
/// `dirty_log` member.
pub fn parse_summary(json: &str) -> Result<Summary> {
    let s = crate::summary::parse_summary(json)?;
    if s.dirty_log.is_none() {
        bail!("SUMMARY: the run has no \"dirty_log\" member");
    }
    Ok(s)
}

/// The log's last SUMMARY, parsed.
pub fn summary_of(log: &str) -> Result<Summary> {
    let line = summary_line(log)
        .ok_or_else(|| anyhow!("the serial log has no \"SUMMARY {{json}}\" line"))?;
    parse_summary(line)
}

/// The `dirty_log` member (`parse_summary` made sure it is there).
pub fn dirty(s: &Summary) -> &DirtyLogSummary {
    s.dirty_log
        .as_ref()
        .expect("parse_summary checked dirty_log")
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
    let d = dirty(s);
    let expect = u64::from(s.vcpus) * d.pages_per_vcpu;
    let mut bad = Vec::new();
    for p in &d.phases {
        if !matches!(p.iteration(), Some((_, "dirty memory"))) {
            continue;
        }
        let Some((written, dirty)) = p.pages() else {
            bad.push(format!(
                "{}: the SUMMARY lacks pages_written or pages_dirty",
                p.name
            ));
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
                p.name, s.vcpus, d.pages_per_vcpu
            ));
        }
    }
    bad
}

/// Whether the run is the one we asked for and reports what it should.
pub fn shape_problems(s: &Summary, c: &RunConf) -> Vec<String> {
    let d = dirty(s);
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
    echo("cache", s.cache.to_string(), c.cache.to_string());
    echo(
        "pages_per_vcpu",
        d.pages_per_vcpu.to_string(),
        c.pages_per_vcpu().to_string(),
    );
    if !d.ok {
        bad.push("the hypervisor judged the dirty log wrong (dirty_log.ok is false)".into());
    }
    if s.result != RunResult::Success {
        bad.push(format!("result is {:?}, not success", s.result));
    }
    for v in &s.vcpu {
        if v.status != "ok" {
            bad.push(format!("vCPU {} status {:?}", v.id, v.status));
        }
    }
    if s.vcpu.len() != s.vcpus as usize {
        bad.push(format!(
            "{} vCPU entries for {} vCPUs",
            s.vcpu.len(),
            s.vcpus
        ));
    }
    let names: Vec<&str> = d.phases.iter().map(|p| p.name.as_str()).collect();
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

pub fn lookups_cells(l: &Lookups) -> String {
    format!(
        "{:>9} {:>9} {:>9} {:>9}",
        l.vcpu_hit, l.vm_hit, l.search, l.miss
    )
}

/// The report of one run, like dirty_log_perf_test's output plus the
/// per-phase counters.
pub fn report(s: &Summary, c: &RunConf, backend: Backend) -> String {
    let d = dirty(s);
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
        s.mem_mib, d.pages_per_vcpu, c.iterations
    );
    for p in &d.phases {
        let _ = writeln!(o, "{} time: {}", p.name, clock.time(p.cycles));
    }
    for what in ["get dirty log", "clear dirty log"] {
        let t: Vec<u64> = d
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
    let expect = u64::from(s.vcpus) * d.pages_per_vcpu;
    for p in &d.phases {
        let pages = match p.pages() {
            Some((w, dd)) => format!(
                "  {dd}/{w} {}",
                if dd == w && w == expect {
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
        let mut exits: Vec<(&String, &u64)> = v.exits.iter().collect();
        exits.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let exits: Vec<String> = exits.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(
            o,
            "{:<5} {:<8} {:>13} {:>10} {:>12} {}  {}",
            v.id,
            v.status,
            v.cycles,
            v.ept_mapped,
            v.dirty_faults,
            lookups_cells(&v.lookups),
            exits.join(", ")
        );
    }
    o
}

/// The error text for a run that did not succeed: verdict, the emulator's
/// own error lines when it gave no result, the logs, and the serial log's
/// last 30 lines.
pub fn failure_text(out: &Outcome, dir: &Path, backend: Backend) -> String {
    let why = match out.verdict {
        Verdict::Success => "succeeded but printed no usable SUMMARY",
        Verdict::Failure => "reported FAILURE",
        Verdict::Timeout => "timed out (see --timeout)",
        Verdict::NoResult => "ended without a result line",
        Verdict::Quit => "was ended at the console",
    };
    let lines: Vec<&str> = out.log.lines().collect();
    let tail = &lines[lines.len().saturating_sub(30)..];
    let logs = match out.verdict {
        Verdict::NoResult | Verdict::Timeout => out.no_result_text(dir),
        _ => format!("log: {}", out.log_path.display()),
    };
    format!(
        "the dirty-log run under {backend} {why}; {logs}\n--- last {} lines of the serial log ---\n{}",
        tail.len(),
        tail.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::super::sample::{conf, summary};
    use super::*;
    use hypervisor::limits::CacheMode::{Vcpu, Vm};
    use std::time::Duration;

    fn line(s: &Summary) -> String {
        serde_json::to_string(s).unwrap()
    }

    #[test]
    fn finds_and_parses_the_summary() {
        let v = summary(4, Vcpu, 3, 5000);
        let log = format!(
            "boot\nHV RESULT: PENDING\n  SUMMARY {}\nHV RESULT: SUCCESS\n",
            line(&v)
        );
        let s = summary_of(&log).unwrap();
        assert_eq!(s, v);
        assert_eq!((s.vcpus, s.slots), (4, 4));
        let d = dirty(&s);
        assert_eq!(d.pages_per_vcpu, 256);
        assert_eq!(d.phases.len(), 2 + 3 * 3 + 1);
        assert_eq!(d.phases.iter().filter(|p| p.pages().is_some()).count(), 3);
        let p = s.phase(super::super::KEY_PHASE).unwrap();
        assert_eq!(p.cycles, 5002);
        assert_eq!(p.iteration(), Some((2, "dirty memory")));
        assert_eq!(p.pages(), Some((1024, 1024)));
        assert_eq!(p.lookups, super::super::sample::lk(1000, 0, 24, 0));
        assert_eq!(s.vcpu[0].exits.len(), 2);
        assert!(mismatches(&s).is_empty());
        assert!(shape_problems(&s, &conf(4, Vcpu, 3)).is_empty());

        assert!(summary_of("HV RESULT: SUCCESS\n")
            .unwrap_err()
            .to_string()
            .contains("no \"SUMMARY"));
        assert!(format!("{:#}", summary_of("SUMMARY {oops").unwrap_err()).contains("JSON"));
    }

    #[test]
    fn missing_fields_are_named() {
        let text = line(&summary(1, Vcpu, 2, 10));
        let e = format!(
            "{:#}",
            parse_summary(&text.replacen("\"search\":2,", "", 1)).unwrap_err()
        );
        assert!(
            e.contains("dirty_log.phases[0].lookups") && e.contains("search"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            parse_summary(&text.replace("\"tsc_hz\":0", "\"tsc_hz\":\"fast\"")).unwrap_err()
        );
        assert!(e.contains("tsc_hz"), "{e}");
        let mut s = summary(1, Vcpu, 2, 10);
        s.dirty_log = None;
        let e = parse_summary(&line(&s)).unwrap_err().to_string();
        assert!(e.contains("dirty_log"), "{e}");
        // A dirty-memory phase without its page counts is a problem.
        let mut s = summary(1, Vcpu, 2, 10);
        s.dirty_log.as_mut().unwrap().phases[2].pages_dirty = None;
        let m = mismatches(&s);
        assert!(
            m.len() == 1 && m[0].contains("Iteration 1 dirty memory"),
            "{m:?}"
        );
    }

    #[test]
    fn mismatches_are_detected() {
        let mut s = summary(4, Vcpu, 3, 5000);
        s.dirty_log.as_mut().unwrap().phases[5].pages_dirty = Some(1020); // Iteration 2
        let m = mismatches(&s);
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(m[0].contains("Iteration 2 dirty memory") && m[0].contains("4 writes LOST"));
        let r = report(&s, &conf(4, Vcpu, 3), Backend::Bochs);
        assert!(r.contains("1020/1024 MISMATCH"), "{r}");
        assert_eq!(r.matches(" OK").count(), 2, "{r}");

        // A log with every page, but fewer pages written than the guest writes.
        let mut s = summary(4, Vcpu, 3, 5000);
        let p = &mut s.dirty_log.as_mut().unwrap().phases[2];
        (p.pages_written, p.pages_dirty) = (Some(1000), Some(1000));
        let m = mismatches(&s);
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(m[0].contains("4 vCPUs × 256 pages = 1024"), "{m:?}");
    }

    #[test]
    fn shape_problems_are_detected() {
        let s = summary(4, Vm, 3, 5000);
        let p = shape_problems(&s, &conf(4, Vcpu, 3));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("cache"));
        let p = shape_problems(&s, &conf(4, Vm, 4));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("Iteration 4 dirty memory"), "{p:?}");
        let mut s = summary(4, Vm, 3, 5000);
        s.vcpu[1].status = "triple fault".into();
        s.result = RunResult::Failure;
        let p = shape_problems(&s, &conf(4, Vm, 3));
        assert_eq!(p.len(), 2, "{p:?}");
        s.dirty_log.as_mut().unwrap().ok = false;
        let p = shape_problems(&s, &conf(4, Vm, 3));
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].contains("dirty_log.ok"), "{p:?}");
        let e = parse_summary(&line(&s).replace("\"ok\":false", "\"ok\":1")).unwrap_err();
        assert!(format!("{e:#}").contains("dirty_log.ok"), "{e:#}");
    }

    #[test]
    fn report_reads_like_dirty_log_perf_test() {
        let s = summary(4, Vcpu, 3, 5000);
        let r = report(&s, &conf(4, Vcpu, 3), Backend::Bochs);
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
        let mut s = summary(4, Vcpu, 3, 5000);
        s.tsc_hz = 1_000_000_000;
        let r = report(&s, &conf(4, Vcpu, 3), Backend::QemuKvm);
        assert!(
            r.contains("Populate memory time: 0.000001000s (1000 cycles)"),
            "{r}"
        );
        assert!(!r.contains("emulated"));
    }

    #[test]
    fn failure_text_has_the_tail() {
        let log: String = (1..=50).map(|i| format!("line {i}\n")).collect();
        let out = Outcome {
            verdict: Verdict::Failure,
            log,
            log_path: "/x/serial.log".into(),
            elapsed: Duration::ZERO,
            emulator_errors: Vec::new(),
        };
        let t = failure_text(&out, Path::new("/x"), Backend::Bochs);
        assert!(t.contains("FAILURE") && t.contains("/x/serial.log"));
        assert!(t.contains("line 21\n") && t.contains("line 50"));
        assert!(!t.contains("line 20\n"));
        let out = Outcome {
            verdict: Verdict::NoResult,
            emulator_errors: vec!["[SYS] register_timer: too many registered timers".into()],
            ..out
        };
        let t = failure_text(&out, Path::new("/x"), Backend::Bochs);
        assert!(t.contains("too many registered timers"), "{t}");
    }
}
