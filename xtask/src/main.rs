//! `cargo xtask`: the one entry point for people and CI.
//!
//! ```text
//! cargo xtask run   [--backend auto|bochs|qemu|qemu-kvm] [--firmware bios|uefi] [--cpus N]
//!                   [--cpu-model M] [--timeout S] [--guest NAME] [--mem MIB] [--slots S]
//!                   [--cache vcpu|vm|none] [--readonly-slot I] [--json]
//! cargo xtask image [--out DIR] [--guest NAME] [--mem MIB] [--slots S] [--cache MODE] [--cpus N]
//! cargo xtask test  [--host-only] [--filter TEXT]
//! cargo xtask bench memslot [--quick]
//! cargo xtask asm
//! ```

mod artifacts;
mod bench_dirty;
mod emu;
mod nospec;
mod setup;
mod tests;

use anyhow::{bail, Context, Result};
use artifacts::Firmware;
use emu::{Backend, RunSpec, Verdict};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Command-line words after the subcommand, consumed option by option.
struct Args(Vec<String>);

impl Args {
    fn flag(&mut self, name: &str) -> bool {
        match self.0.iter().position(|a| a == name) {
            Some(i) => {
                self.0.remove(i);
                true
            }
            None => false,
        }
    }
    fn value(&mut self, name: &str) -> Result<Option<String>> {
        match self.0.iter().position(|a| a == name) {
            Some(i) if i + 1 < self.0.len() => {
                self.0.remove(i);
                Ok(Some(self.0.remove(i)))
            }
            Some(_) => bail!("{name} needs a value"),
            None => Ok(None),
        }
    }
    fn parsed<T: std::str::FromStr>(&mut self, name: &str) -> Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        self.value(name)?
            .map(|v| {
                v.parse::<T>()
                    .map_err(|e| anyhow::anyhow!("{name} {v:?}: {e}"))
            })
            .transpose()
    }
    fn finish(self) -> Result<()> {
        if let Some(a) = self.0.first() {
            bail!("unknown argument {a:?} (see the top of xtask/src/main.rs or the README)");
        }
        Ok(())
    }
}

/// What a guest run is: which program, with how much memory, in how many slots.
#[derive(Clone, Debug)]
pub struct GuestSpec {
    pub guest: String,
    pub mem_mib: u64,
    pub slots: u32,
    pub cache: String,
    pub cpus: u32,
    pub extra: Vec<(String, String)>,
}

impl GuestSpec {
    fn from_args(a: &mut Args) -> Result<Self> {
        let cache = a.value("--cache")?.unwrap_or_else(|| "vcpu".into());
        if !matches!(cache.as_str(), "vcpu" | "vm" | "none") {
            bail!("--cache {cache:?}: use vcpu, vm or none");
        }
        let mem_mib: u64 = a.parsed("--mem")?.unwrap_or(16);
        let slots: u32 = a.parsed("--slots")?.unwrap_or(1);
        if mem_mib == 0 || mem_mib > 2048 {
            bail!("--mem {mem_mib}: use 1 to 2048 MiB");
        }
        if slots == 0 || slots > 509 {
            bail!("--slots {slots}: use 1 to 509");
        }
        if !(mem_mib * 256).is_multiple_of(u64::from(slots)) {
            bail!("--mem {mem_mib} MiB does not split into {slots} slots of whole 4 KiB pages");
        }
        let mut extra = Vec::new();
        if let Some(ro) = a.parsed::<u32>("--readonly-slot")? {
            if ro >= slots {
                bail!(
                    "--readonly-slot {ro}: the slots are numbered 0 to {}",
                    slots - 1
                );
            }
            extra.push(("readonly_slot".into(), ro.to_string()));
        }
        Ok(GuestSpec {
            guest: a.value("--guest")?.unwrap_or_else(|| "smoke".into()),
            mem_mib,
            slots,
            cache,
            cpus: 0,
            extra,
        })
    }

    /// The run configuration text the hypervisor parses (hypervisor::config).
    pub fn config(&self, emulator: bool) -> String {
        let mut s = format!(
            "guest={}\nmem_mib={}\nslots={}\ncache={}\ncpus={}\nemulator={}\n",
            self.guest, self.mem_mib, self.slots, self.cache, self.cpus, emulator as u8
        );
        for (k, v) in &self.extra {
            s.push_str(&format!("{k}={v}\n"));
        }
        s
    }

    /// Cores the machine needs: one per vCPU, plus the dirty-log controller.
    pub fn machine_cores(&self) -> u32 {
        let dirty = self
            .extra
            .iter()
            .any(|(k, v)| k == "iterations" && v != "0");
        self.cpus.max(1) + dirty as u32
    }

    /// Machine memory for an emulator: the guest's plus room for the
    /// bootloader, the hypervisor and its tables.
    pub fn machine_mib(&self) -> u64 {
        (self.mem_mib + 128).next_multiple_of(32)
    }
}

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
    let guest = artifacts::build_guest(root, &g.guest)?;
    let loader = artifacts::build_loader(root)?;
    std::fs::create_dir_all(dir)?;
    artifacts::make_images(&loader, &kernel, &guest, &g.config(emulator), dir, fw)
}

fn cmd_run(mut a: Args) -> Result<i32> {
    let root = root();
    let backend: Backend = a.parsed("--backend")?.unwrap_or_else(emu::auto);
    let firmware = match a.value("--firmware")?.as_deref() {
        None | Some("bios") => Firmware::Bios,
        Some("uefi") => Firmware::Uefi,
        Some(f) => bail!("--firmware {f:?}: use bios or uefi"),
    };
    let cpus: u32 = a.parsed("--cpus")?.unwrap_or(1);
    if cpus == 0 || cpus > 64 {
        bail!("--cpus {cpus}: use 1 to 64");
    }
    let cpu_model = a.value("--cpu-model")?;
    let timeout: u64 = a.parsed("--timeout")?.unwrap_or(300);
    let json = a.flag("--json");
    let mut g = GuestSpec::from_args(&mut a)?;
    g.cpus = cpus;
    a.finish()?;

    setup::ensure_toolchain(&root)?;
    let dir = artifacts::work_dir(&root).join("run");
    eprintln!(
        "xtask: building hypervisor, guest {:?} and the {:?} image",
        g.guest, firmware
    );
    prepare(&root, &g, &[], &dir, &[firmware], true)?;
    eprintln!(
        "xtask: booting with {backend} ({} CPU(s)); serial log follows",
        cpus
    );
    let spec = RunSpec {
        backend,
        firmware,
        cpus,
        cpu_model,
        timeout: Duration::from_secs(timeout),
        mem_mib: g.machine_mib(),
        dir,
        stream: !json,
    };
    let out = emu::run(&spec)?;
    if json {
        match out
            .log
            .lines()
            .find_map(|l| l.trim().strip_prefix("SUMMARY "))
        {
            Some(j) => println!("{j}"),
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
            Ok(1)
        }
        Verdict::Timeout => {
            eprintln!("xtask: TIMEOUT: {backend} was killed after {timeout} s without a result; log: {log}");
            Ok(2)
        }
        Verdict::NoResult => {
            eprintln!(
                "xtask: {backend} ended without a result line ({secs:.1} s); log: {log}, emulator output: {}",
                spec.dir.join("emulator.out").display()
            );
            Ok(3)
        }
    }
}

fn cmd_image(mut a: Args) -> Result<i32> {
    let root = root();
    let out = a
        .value("--out")?
        .map(PathBuf::from)
        .unwrap_or_else(|| artifacts::work_dir(&root).join("image"));
    let cpus: u32 = a.parsed("--cpus")?.unwrap_or(0);
    let mut g = GuestSpec::from_args(&mut a)?;
    g.cpus = cpus;
    a.finish()?;
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

fn cmd_bench(mut a: Args) -> Result<i32> {
    let root = root();
    let what = if a.0.is_empty() {
        String::new()
    } else {
        a.0.remove(0)
    };
    match what.as_str() {
        "memslot" => {
            let quick = a.flag("--quick");
            a.finish()?;
            let mut c = std::process::Command::new(
                std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
            );
            c.current_dir(&root).args([
                "bench",
                "--quiet",
                "-p",
                "hypervisor",
                "--bench",
                "memslot",
                "--",
            ]);
            if quick {
                c.arg("--quick");
            }
            let ok = c.status().context("running cargo bench")?.success();
            Ok(if ok { 0 } else { 1 })
        }
        "dirty-log" => bench_dirty::cmd(a),
        _ => bail!("usage: cargo xtask bench memslot [--quick]"),
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = if args.is_empty() {
        String::new()
    } else {
        args.remove(0)
    };
    let a = Args(args);
    let r = match cmd.as_str() {
        "run" => cmd_run(a),
        "image" => cmd_image(a),
        "test" => tests::cmd_test(a),
        "bench" => cmd_bench(a),
        "asm" => a.finish().and_then(|_| {
            println!("{}", nospec::run(&root())?);
            Ok(0)
        }),
        _ => {
            eprintln!("usage: cargo xtask run|image|test|bench|asm [options] (see README.md)");
            Ok(2)
        }
    };
    match r {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::exit(1);
        }
    }
}
