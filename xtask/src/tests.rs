//! `cargo xtask test`: host tests of every crate that runs on the host, the
//! speculation check, then the emulator tests, each judged from its serial log
//! and verdict. Emulator tests run two at a time (each emulator uses one core).

use crate::artifacts::{self, Firmware};
use crate::emu::{self, Backend, RunSpec, Verdict};
use crate::{nospec, root, setup, Args, GuestSpec};
use anyhow::{Context, Result};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A check on a whole serial log: Err says what is wrong.
pub type LogCheck = fn(&str) -> Result<(), String>;

/// One emulator test: what to boot, and what its serial log must show.
pub struct Case {
    pub name: String,
    pub guest: GuestSpec,
    pub features: &'static [&'static str],
    pub backend: Backend,
    pub firmware: Firmware,
    pub cpus: u32,
    pub cpu_model: Option<&'static str>,
    pub timeout: u64,
    pub verdict: Verdict,
    /// Each must appear in the log.
    pub contains: Vec<String>,
    /// None may appear in the log.
    pub absent: Vec<String>,
    /// Extra check on the whole log (e.g. counts in the summary).
    pub check: Option<LogCheck>,
}

fn guest(name: &str, mem_mib: u64, slots: u32) -> GuestSpec {
    GuestSpec {
        guest: name.into(),
        mem_mib,
        slots,
        cache: "vcpu".into(),
        cpus: 1,
        extra: Vec::new(),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for model in ["corei7_skylake_x", "tigerlake", "corei7_haswell_4770"] {
        v.push(Case {
            name: format!("bochs-{model}-vmxon"),
            guest: guest("smoke", 16, 1),
            features: &[],
            backend: Backend::Bochs,
            firmware: Firmware::Bios,
            cpus: 1,
            cpu_model: Some(model),
            timeout: 300,
            verdict: Verdict::Success,
            contains: strings(&["IA32_VMX_BASIC", "VMXON ok", "VMXOFF ok"]),
            absent: strings(&["PANIC", "EXCEPTION"]),
            check: None,
        });
    }
    let refusal = "VMX is not available on this CPU:";
    v.push(Case {
        name: "qemu-tcg-bios-refuses".into(),
        guest: guest("smoke", 16, 1),
        features: &[],
        backend: Backend::Qemu,
        firmware: Firmware::Bios,
        cpus: 1,
        cpu_model: None,
        timeout: 120,
        verdict: Verdict::Failure,
        contains: strings(&[refusal]),
        absent: strings(&["VMXON ok", "PANIC", "EXCEPTION"]),
        check: None,
    });
    v.push(Case {
        name: "qemu-tcg-uefi-refuses".into(),
        guest: guest("smoke", 16, 1),
        features: &[],
        backend: Backend::Qemu,
        firmware: Firmware::Uefi,
        cpus: 1,
        cpu_model: None,
        timeout: 180,
        verdict: Verdict::Failure,
        contains: strings(&["hypervisor 0.1.0 starting", refusal]),
        absent: strings(&["VMXON ok", "PANIC", "EXCEPTION"]),
        check: None,
    });
    v.push(Case {
        name: "qemu-forced-panic".into(),
        guest: guest("smoke", 16, 1),
        features: &["force-panic"],
        backend: Backend::Qemu,
        firmware: Firmware::Bios,
        cpus: 1,
        cpu_model: None,
        timeout: 120,
        verdict: Verdict::Failure,
        contains: strings(&["PANIC at", "forced panic"]),
        absent: strings(&["HV RESULT: SUCCESS"]),
        check: None,
    });
    v
}

/// Checks one finished run against its case. Returns the problems found.
pub fn judge(case: &Case, verdict: Verdict, log: &str) -> Vec<String> {
    let mut bad = Vec::new();
    if verdict != case.verdict {
        bad.push(format!("verdict {verdict:?}, expected {:?}", case.verdict));
    }
    for s in &case.contains {
        if !log.contains(s.as_str()) {
            bad.push(format!("log lacks {s:?}"));
        }
    }
    for s in &case.absent {
        if log.contains(s.as_str()) {
            bad.push(format!("log has {s:?}"));
        }
    }
    if let Some(check) = case.check {
        if let Err(e) = check(log) {
            bad.push(e);
        }
    }
    bad
}

fn host_tests(root: &Path) -> Result<()> {
    eprintln!("== host tests (cargo test --workspace)");
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(root)
            .args(["test", "--workspace"])
            .status()
            .context("running cargo test")?;
    anyhow::ensure!(status.success(), "host tests failed");
    Ok(())
}

pub fn cmd_test(mut a: Args) -> Result<i32> {
    let root = root();
    let host_only = a.flag("--host-only");
    let filter = a.value("--filter")?;
    a.finish()?;
    let start = Instant::now();
    setup::ensure_toolchain(&root)?;
    host_tests(&root)?;
    eprintln!("== speculation check (index_nospec and the lookup hit path)");
    let report = nospec::run(&root)?;
    eprintln!("{}", report.lines().next().unwrap_or(""));
    if host_only {
        return Ok(0);
    }

    let cases: Vec<Case> = cases()
        .into_iter()
        .filter(|c| filter.as_deref().is_none_or(|f| c.name.contains(f)))
        .collect();
    let mut needs = Vec::new();
    for c in &cases {
        needs.extend(emu::needs(c.backend, c.firmware));
    }
    setup::ensure(&needs)?;

    // Build everything once, up front, sequentially: cargo serialises anyway.
    eprintln!("== building images for {} emulator tests", cases.len());
    let loader = artifacts::build_loader(&root)?;
    let mut guests = std::collections::BTreeMap::new();
    let mut kernels = std::collections::BTreeMap::new();
    let base = artifacts::work_dir(&root).join("tests");
    for c in &cases {
        if !kernels.contains_key(c.features) {
            kernels.insert(c.features, artifacts::build_kernel(&root, c.features)?);
        }
        if !guests.contains_key(&c.guest.guest) {
            guests.insert(
                c.guest.guest.clone(),
                artifacts::build_guest(&root, &c.guest.guest)?,
            );
        }
        let dir = base.join(&c.name);
        std::fs::create_dir_all(&dir)?;
        let mut g = c.guest.clone();
        g.cpus = c.cpus;
        artifacts::make_images(
            &loader,
            &kernels[c.features],
            &guests[&g.guest],
            &g.config(true),
            &dir,
            &[c.firmware],
        )?;
    }

    eprintln!("== emulator tests");
    let next = Mutex::new(0usize);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let i = {
                    let mut n = next.lock().unwrap();
                    *n += 1;
                    *n - 1
                };
                let Some(c) = cases.get(i) else { break };
                let spec = RunSpec {
                    backend: c.backend,
                    firmware: c.firmware,
                    cpus: c.cpus,
                    cpu_model: c.cpu_model.map(str::to_string),
                    timeout: Duration::from_secs(c.timeout),
                    mem_mib: c.guest.machine_mib(),
                    dir: base.join(&c.name),
                    stream: false,
                };
                let problems = match emu::run(&spec) {
                    Ok(out) => {
                        let p = judge(c, out.verdict, &out.log);
                        eprintln!(
                            "test {} ... {} ({:.1} s){}",
                            c.name,
                            if p.is_empty() { "ok" } else { "FAILED" },
                            out.elapsed.as_secs_f64(),
                            if p.is_empty() {
                                String::new()
                            } else {
                                format!(
                                    "\n    {}\n    log: {}",
                                    p.join("\n    "),
                                    out.log_path.display()
                                )
                            }
                        );
                        p
                    }
                    Err(e) => {
                        eprintln!("test {} ... FAILED\n    {e:#}", c.name);
                        vec![format!("{e:#}")]
                    }
                };
                results.lock().unwrap().push((c.name.clone(), problems));
            });
        }
    });
    let results = results.into_inner().unwrap();
    let failed = results.iter().filter(|r| !r.1.is_empty()).count();
    let passed = results.len() - failed;
    eprintln!(
        "cargo xtask test took {:.1} s",
        start.elapsed().as_secs_f64()
    );
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 { 0 } else { 1 })
}
