//! Building the pieces: the hypervisor kernel, the guest programs, and the disk
//! images that carry both (through the `loader` crate).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::spec::KernelSpec;

pub const KERNEL_TARGET: &str = "x86_64-unknown-none";

fn cargo(root: &Path) -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root);
    c
}

fn run(mut c: Command, what: &str) -> Result<()> {
    let status = c.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Where xtask keeps what it makes.
pub fn work_dir(root: &Path) -> PathBuf {
    root.join("target").join("xtask")
}

/// Builds the hypervisor kernel (release) and returns a copy of its ELF that
/// later builds (with other features) will not overwrite.
pub fn build_kernel(root: &Path, features: &[&str]) -> Result<PathBuf> {
    let mut c = cargo(root);
    c.args([
        "build",
        "--quiet",
        "-p",
        "hypervisor",
        "--bin",
        "hypervisor",
        "--release",
    ]);
    c.args(["--target", KERNEL_TARGET]);
    if !features.is_empty() {
        c.args(["--features", &features.join(",")]);
    }
    run(c, "building the hypervisor kernel")?;
    let built = root
        .join("target")
        .join(KERNEL_TARGET)
        .join("release")
        .join("hypervisor");
    let name = if features.is_empty() {
        "hypervisor.elf".to_string()
    } else {
        format!("hypervisor-{}.elf", features.join("-"))
    };
    let dir = work_dir(root);
    std::fs::create_dir_all(&dir)?;
    let copy = dir.join(name);
    std::fs::copy(&built, &copy).with_context(|| format!("copying {}", built.display()))?;
    Ok(copy)
}

/// Programs of guest/src/bin that are kernels (booted with `--kernel`),
/// not native guests.
pub const KERNEL_PROGRAMS: &[&str] = &["mbkernel"];

/// The guest programs there are: one per file in guest/src/bin, less the
/// kernels.
pub fn guest_names(root: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("guest/src/bin"))
        .context("reading guest/src/bin")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_suffix(".rs").map(str::to_string)
        })
        .filter(|n| !KERNEL_PROGRAMS.contains(&n.as_str()))
        .collect();
    names.sort();
    Ok(names)
}

/// Builds every guest program (release) and returns the ELF of `name` (a
/// name `guest_names` lists: `--guest` was checked up front).
pub fn build_guest(root: &Path, name: &str) -> Result<PathBuf> {
    let mut c = cargo(root);
    c.args([
        "build",
        "--quiet",
        "-p",
        "guest",
        "--bins",
        "--release",
        "--target",
        KERNEL_TARGET,
    ]);
    run(c, "building the guest programs")?;
    Ok(root
        .join("target")
        .join(KERNEL_TARGET)
        .join("release")
        .join(name))
}

/// Builds the loader once (host, release) and returns its binary.
pub fn build_loader(root: &Path) -> Result<PathBuf> {
    let mut c = cargo(root);
    c.args(["build", "--quiet", "-p", "loader", "--release"]);
    run(
        c,
        "building the loader (the bootloader's image builder; slow the first time)",
    )?;
    Ok(root.join("target").join("release").join("loader"))
}

/// The firmware an image boots with (`--firmware`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Firmware {
    /// Legacy BIOS boot.
    Bios,
    /// UEFI boot (OVMF under QEMU).
    Uefi,
}

impl Firmware {
    pub fn image_name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios.img",
            Firmware::Uefi => "uefi.img",
        }
    }
}

/// What the image carries for the guest to run.
pub enum GuestInput<'a> {
    /// A native guest ELF (`--guest`).
    Elf(&'a Path),
    /// A kernel file with its command line and initrd (`--kernel`).
    Kernel(&'a KernelSpec),
}

/// Makes the disk image(s) for `kernel` + `guest` + `config` in `out`.
pub fn make_images(
    loader: &Path,
    kernel: &Path,
    guest: &Path,
    config: &str,
    out: &Path,
    which: &[Firmware],
) -> Result<()> {
    make_images_for(loader, kernel, &GuestInput::Elf(guest), config, out, which)
}

/// Makes the disk image(s) for the hypervisor `kernel` + `input` +
/// `config` in `out`.
pub fn make_images_for(
    loader: &Path,
    kernel: &Path,
    input: &GuestInput,
    config: &str,
    out: &Path,
    which: &[Firmware],
) -> Result<()> {
    let mut c = Command::new(loader);
    c.arg("--kernel").arg(kernel);
    match input {
        GuestInput::Elf(guest) => {
            c.arg("--guest").arg(guest);
        }
        GuestInput::Kernel(k) => {
            c.arg("--guest-kernel").arg(&k.path);
            c.arg("--cmdline").arg(&k.append);
            if let Some(i) = &k.initrd {
                c.arg("--initrd").arg(i);
            }
        }
    }
    c.arg("--config").arg(config).arg("--out").arg(out);
    for f in which {
        c.arg(match f {
            Firmware::Bios => "--bios",
            Firmware::Uefi => "--uefi",
        });
    }
    c.stdout(std::process::Stdio::null());
    run(c, "making the disk images")
}
