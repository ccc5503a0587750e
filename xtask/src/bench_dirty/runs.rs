//! Running the benchmark: images, boots (one, or the sweep's twelve two at a
//! time), and judging each run from its SUMMARY.

use super::options::{Opts, RunConf};
use super::report::{self, failure_text, mismatches, shape_problems, Clock};
use super::sweep::{json_array, lookup_table, sweep_table, Point};
use super::{plot, plural, KEY_PHASE};
use crate::artifacts::{self, Firmware};
use crate::checks::fmt_size;
use crate::emu::{self, RunSpec, Verdict};
use crate::setup;
use anyhow::{bail, Result};
use hypervisor::report::schema::Summary;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Emulator runs at a time in a sweep (each Bochs keeps one host core busy).
const SWEEP_JOBS: usize = 2;

fn bench_dir(root: &Path) -> PathBuf {
    artifacts::work_dir(root).join("bench")
}

/// Boots the image in `dir` and returns the run's SUMMARY line (as the
/// hypervisor printed it) and its parsed form.
fn boot(c: &RunConf, o: &Opts, dir: PathBuf) -> Result<(String, Summary)> {
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
        input: crate::console::Input::None,
    };
    let out = emu::run(&spec)?;
    if out.verdict != Verdict::Success {
        bail!(failure_text(&out, &spec.dir, o.backend));
    }
    let line = report::summary_line(&out.log)
        .unwrap_or_default()
        .to_string();
    match report::summary_of(&out.log) {
        Ok(s) => Ok((line, s)),
        Err(e) => bail!("{e:#}\n{}", failure_text(&out, &spec.dir, o.backend)),
    }
}

/// What is wrong with a finished run.
fn judge(s: &Summary, c: &RunConf) -> Vec<String> {
    let mut bad = shape_problems(s, c);
    bad.extend(mismatches(s));
    bad
}

pub fn single(o: &Opts) -> Result<i32> {
    let root = crate::workspace::root()?;
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
    let (line, s) = boot(&c, o, dir)?;
    let bad = judge(&s, &c);
    if o.json {
        // The hypervisor's own text, field order and all.
        println!("{line}");
    } else {
        print!("{}", report::report(&s, &c, o.backend));
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

/// A finished sweep run: its SUMMARY line as printed, parsed, and what is
/// wrong with it.
type Judged = (String, Summary, Vec<String>);

pub fn sweep(o: &Opts) -> Result<i32> {
    let root = crate::workspace::root()?;
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
                let r = boot(c, o, base.join(c.dir_name()));
                let label = format!(
                    "run {:>2}/{}: {:>2} slot{}, cache {:<4}",
                    i + 1,
                    confs.len(),
                    c.slots,
                    plural(c.slots),
                    c.cache.as_str()
                );
                let secs = t.elapsed().as_secs_f64();
                match r {
                    Ok((line, s)) => {
                        let bad = judge(&s, c);
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
                        results.lock().unwrap()[i] = Some((line, s, bad));
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
            Some((line, s, bad)) => {
                raw.push(line);
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
            cache: c.cache,
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
        plot::sweep_svg(&points, o.vcpus, confs[0].bytes_per_vcpu, clock)?,
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
