//! Host side: the hypervisor ELF + a guest payload + a run configuration → BIOS
//! and UEFI disk images, through the bootloader crate's `DiskImageBuilder`.
//!
//! The guest and the configuration travel in the bootloader's ramdisk, in the
//! format of `hypervisor::boot::payload`.
//!
//! Usage: loader --kernel ELF --guest ELF --config TEXT --out DIR [--bios] [--uefi]
//! (with neither --bios nor --uefi, both images are made).

use anyhow::{bail, Context, Result};
use bootloader::{BootConfig, DiskImageBuilder};
use std::path::PathBuf;

fn main() -> Result<()> {
    let mut kernel = None;
    let mut guest = None;
    let mut config = String::new();
    let mut out = None;
    let (mut bios, mut uefi) = (false, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--kernel" => kernel = Some(PathBuf::from(value()?)),
            "--guest" => guest = Some(PathBuf::from(value()?)),
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
    let guest = guest.context("--guest is required")?;
    let out = out.context("--out is required")?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let guest_elf =
        std::fs::read(&guest).with_context(|| format!("reading guest {}", guest.display()))?;
    let mut payload = Vec::new();
    hypervisor::boot::payload::encode_into(&config, &guest_elf, &mut payload);
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
