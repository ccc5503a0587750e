//! Host side: the hypervisor ELF + a guest payload + a run configuration → BIOS
//! and UEFI disk images, through the bootloader crate's `DiskImageBuilder`.
//!
//! The guest and the configuration travel in the bootloader's ramdisk, in the
//! format of `hypervisor::boot::payload`.
//!
//! Usage: loader --kernel ELF (--guest ELF | --guest-kernel FILE [--cmdline TEXT]
//! [--initrd FILE]) --config TEXT --out DIR [--bios] [--uefi]
//! (with neither --bios nor --uefi, both images are made). `--kernel` is the
//! hypervisor; `--guest-kernel` a kernel file the hypervisor boots.

use anyhow::{bail, Context, Result};
use bootloader::{BootConfig, DiskImageBuilder};
use std::path::PathBuf;

fn main() -> Result<()> {
    let mut kernel = None;
    let mut guest = None;
    let mut guest_kernel = None;
    let mut cmdline = String::new();
    let mut initrd = None;
    let mut config = String::new();
    let mut out = None;
    let (mut bios, mut uefi) = (false, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--kernel" => kernel = Some(PathBuf::from(value()?)),
            "--guest" => guest = Some(PathBuf::from(value()?)),
            "--guest-kernel" => guest_kernel = Some(PathBuf::from(value()?)),
            "--cmdline" => cmdline = value()?,
            "--initrd" => initrd = Some(PathBuf::from(value()?)),
            "--config" => config = value()?,
            "--out" => out = Some(PathBuf::from(value()?)),
            "--bios" => bios = true,
            "--uefi" => uefi = true,
            other => bail!("unknown argument {other:?}"),
        }
    }
    if !bios && !uefi {
        (bios, uefi) = (true, true);
    }
    let kernel = kernel.context("--kernel is required")?;
    let out = out.context("--out is required")?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let read = |what: &str, p: &PathBuf| -> Result<Vec<u8>> {
        let bytes = std::fs::read(p).with_context(|| format!("reading {what} {}", p.display()))?;
        if u32::try_from(bytes.len()).is_err() {
            bail!("{what} {} is 4 GiB or larger", p.display());
        }
        Ok(bytes)
    };
    let (guest, guest_kernel_bytes) = match (&guest, &guest_kernel) {
        (Some(g), None) => (read("guest", g)?, Vec::new()),
        (None, Some(k)) => (Vec::new(), read("kernel", k)?),
        _ => bail!("exactly one of --guest and --guest-kernel is required"),
    };
    if guest_kernel.is_none() && (initrd.is_some() || !cmdline.is_empty()) {
        bail!("--cmdline and --initrd go with --guest-kernel");
    }
    if cmdline.contains('\0') {
        bail!("--cmdline holds a NUL byte");
    }
    let initrd = match &initrd {
        Some(p) => read("initrd", p)?,
        None => Vec::new(),
    };
    let mut payload = Vec::new();
    hypervisor::boot::payload::encode_into(
        &hypervisor::boot::payload::Payload {
            config: &config,
            guest: &guest,
            kernel: &guest_kernel_bytes,
            cmdline: &cmdline,
            initrd: &initrd,
        },
        &mut payload,
    );
    hypervisor::boot::payload::parse(&payload).context("payload does not parse back")?;
    let payload_path = out.join("payload.bin");
    std::fs::write(&payload_path, &payload)?;

    let mut boot_config = BootConfig::default();
    // The hypervisor has its own console; keep the bootloader's quiet.
    boot_config.log_level = bootloader::BootConfig::default().log_level;
    boot_config.frame_buffer_logging = false;
    boot_config.serial_logging = false;

    let mut builder = DiskImageBuilder::new(kernel);
    builder.set_ramdisk(payload_path);
    builder.set_boot_config(&boot_config);
    if bios {
        let p = out.join("bios.img");
        builder
            .create_bios_image(&p)
            .context("creating BIOS image")?;
        println!("{}", p.display());
    }
    if uefi {
        let p = out.join("uefi.img");
        builder
            .create_uefi_image(&p)
            .context("creating UEFI image")?;
        println!("{}", p.display());
    }
    Ok(())
}
