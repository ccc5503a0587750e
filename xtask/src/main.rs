//! `cargo xtask`: the one entry point for people and CI.
//!
//! The command line is defined in [`cli`] (clap): `cargo xtask --help`, and
//! `--help` after any subcommand, list every option with its default and an
//! example; README.md's command block is rendered from the same definitions
//! (`cargo xtask usage`).
//!
//! Modules: [`cli`] the options; [`checks`] their limits, checked once up
//! front; [`spec`] a checked guest run → the hypervisor's `RunConfig`;
//! [`workspace`] the root, found at run time; [`artifacts`] builds; [`emu`]
//! boots and judges runs; [`summary`] reads the SUMMARY into the shared
//! schema; [`tests`] the emulator tests; [`bench_dirty`] the dirty-log
//! benchmark; [`nospec`] the speculation check; [`setup`] packages and
//! toolchain.

mod artifacts;
mod bench_dirty;
mod bench_fault;
mod bench_linux;
mod checks;
mod cli;
mod console;
mod cpio;
mod emu;
mod linux;
mod nospec;
mod setup;
mod spec;
mod summary;
mod tests;
mod workspace;

use anyhow::{bail, Context, Result};
use artifacts::Firmware;
use clap::Parser;
use cli::{BenchCmd, Cli, Cmd, ImageArgs, MemslotArgs, RunArgs};
use emu::{RunSpec, Verdict};
use spec::GuestSpec;
use std::path::Path;
use std::time::Duration;

/// Builds kernel, guest, loader and the image(s) into `dir`.
pub fn prepare(
    root: &Path,
    g: &GuestSpec,
    features: &[&str],
    dir: &Path,
    fw: &[Firmware],
    emulator: bool,
) -> Result<()> {
    let kernel = artifacts::build_kernel(root, features)?;
    let loader = artifacts::build_loader(root)?;
    std::fs::create_dir_all(dir)?;
    let config = g.config(emulator);
    match &g.kernel {
        Some(k) => {
            let input = artifacts::GuestInput::Kernel(k);
            artifacts::make_images_for(&loader, &kernel, &input, &config, dir, fw)
        }
        None => {
            let guest = artifacts::build_guest(root, &g.guest)?;
            artifacts::make_images(&loader, &kernel, &guest, &config, dir, fw)
        }
    }
}

/// `--guest` names a program of guest/src/bin, or `--kernel` and
/// `--initrd` name readable files (checked before any build).
fn check_guest(root: &Path, g: &GuestSpec) -> Result<()> {
    if let Some(k) = &g.kernel {
        return k.check_files();
    }
    let names = artifacts::guest_names(root)?;
    if !names.contains(&g.guest) {
        bail!(
            "--guest {:?}: no such program in guest/src/bin; there are: {}",
            g.guest,
            names.join(", ")
        );
    }
    Ok(())
}

fn cmd_run(a: &RunArgs) -> Result<i32> {
    let root = workspace::root()?;
    let with_linux;
    let a = if a.linux {
        let g = linux::prepare(&root)?;
        eprintln!("xtask: --linux: {}", g.run_line());
        with_linux = a.with_linux(&g);
        &with_linux
    } else {
        a
    };
    let (backend, g) = a.check()?;
    check_guest(&root, &g)?;
    setup::ensure_toolchain(&root)?;
    let dir = artifacts::work_dir(&root).join("run");
    eprintln!(
        "xtask: building hypervisor, {} {:?} and the {:?} image",
        if g.kernel.is_some() {
            "kernel"
        } else {
            "guest"
        },
        g.guest,
        a.firmware
    );
    prepare(&root, &g, &[], &dir, &[a.firmware], true)?;
    eprintln!(
        "xtask: booting with {backend} ({} CPU(s)); serial log follows",
        g.cpus
    );
    let spec = RunSpec {
        backend,
        firmware: a.firmware,
        cpus: g.machine_cores(),
        cpu_model: a.cpu_model.clone(),
        timeout: Duration::from_secs(a.timeout),
        mem_mib: g.machine_mib(),
        dir,
        stream: !a.json,
        input: a.input()?,
    };
    let out = emu::run(&spec)?;
    if a.json {
        match summary::summary_line(&out.log) {
            Some(j) => {
                // Checked against the schema, printed as the hypervisor wrote it.
                if let Err(e) = summary::parse_summary(j) {
                    eprintln!("xtask: {e:#}");
                }
                println!("{j}");
            }
            None => eprintln!("xtask: the run printed no SUMMARY line"),
        }
    }
    let secs = out.elapsed.as_secs_f64();
    let log = out.log_path.display();
    match out.verdict {
        Verdict::Success => {
            eprintln!("xtask: the hypervisor reported success ({secs:.1} s); log: {log}");
            Ok(0)
        }
        Verdict::Failure => {
            eprintln!("xtask: the hypervisor reported FAILURE ({secs:.1} s); log: {log}");
            let code = summary::summary_of(&out.log).ok().and_then(|s| s.exit_code);
            if let Some(code) = code {
                eprintln!(
                    "xtask: the guest's exit code (isa-debug-exit) is {code}; under QEMU its status would be {}",
                    (u64::from(code) << 1) | 1
                );
            }
            Ok(summary::exit_status(code))
        }
        Verdict::Timeout => {
            eprintln!(
                "xtask: TIMEOUT: {backend} was killed after {} s without a result; {}",
                a.timeout,
                out.no_result_text(&spec.dir)
            );
            Ok(2)
        }
        Verdict::NoResult => {
            eprintln!(
                "xtask: {backend} ended without a result line ({secs:.1} s); {}",
                out.no_result_text(&spec.dir)
            );
            Ok(3)
        }
        Verdict::Quit => {
            eprintln!("\nxtask: run ended at the console (Ctrl-A x) after {secs:.1} s; log: {log}");
            Ok(0)
        }
    }
}

fn cmd_image(a: &ImageArgs) -> Result<i32> {
    let g = a.check()?;
    let root = workspace::root()?;
    check_guest(&root, &g)?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| artifacts::work_dir(&root).join("image"));
    setup::ensure_toolchain(&root)?;
    // Real hardware: no emulator exit ports; the run ends in a halt.
    prepare(
        &root,
        &g,
        &[],
        &out,
        &[Firmware::Bios, Firmware::Uefi],
        false,
    )?;
    for f in [Firmware::Bios, Firmware::Uefi] {
        println!("{}", out.join(f.image_name()).display());
    }
    Ok(0)
}

fn cmd_bench_memslot(a: &MemslotArgs) -> Result<i32> {
    let root = workspace::root()?;
    let mut c =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(&root).args([
        "bench",
        "--quiet",
        "-p",
        "hypervisor",
        "--bench",
        "memslot",
        "--",
    ]);
    if a.quick {
        c.arg("--quick");
    }
    if a.paired {
        c.arg("--paired");
    }
    let ok = c.status().context("running cargo bench")?.success();
    Ok(if ok { 0 } else { 1 })
}

/// Prints the README's command block, or writes it into README.md.
fn cmd_usage(update_readme: bool) -> Result<i32> {
    let block = cli::usage_block();
    if !update_readme {
        print!("{block}");
        return Ok(0);
    }
    let path = workspace::root()?.join("README.md");
    let readme = std::fs::read_to_string(&path).context("reading README.md")?;
    let Some(new) = cli::with_readme_block(&readme, &block) else {
        bail!("README.md has no ``` block under \"## Commands\"");
    };
    std::fs::write(&path, new).context("writing README.md")?;
    eprintln!("xtask: updated the command block of {}", path.display());
    Ok(0)
}

fn main() {
    let cli = Cli::parse();
    let r = match &cli.cmd {
        Cmd::Run(a) => cmd_run(a),
        Cmd::Image(a) => cmd_image(a),
        Cmd::Test(a) => tests::cmd_test(a),
        Cmd::Bench { what } => match what {
            BenchCmd::Memslot(a) => cmd_bench_memslot(a),
            BenchCmd::DirtyLog(a) => bench_dirty::cmd(a),
            BenchCmd::FaultPath(a) => bench_fault::cmd(a),
            BenchCmd::LinuxBoot(a) => bench_linux::cmd(a),
        },
        Cmd::Asm => workspace::root().and_then(|root| {
            println!("{}", nospec::run(&root)?);
            Ok(0)
        }),
        Cmd::Usage { update_readme } => cmd_usage(*update_readme),
        Cmd::Linux => workspace::root().and_then(|root| linux::cmd(&root)),
    };
    match r {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::exit(1);
        }
    }
}
