//! What the commands need on this machine: the pinned toolchain's parts and
//! the Debian packages of the emulators. Missing pieces are installed where we
//! can (root with apt-get); otherwise the exact command to run is printed.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

/// A file that must exist, and the Debian package that brings it.
pub struct Need {
    pub path: &'static str,
    pub package: &'static str,
}

pub const BOCHS: &[Need] = &[
    Need {
        path: "/usr/bin/bochs",
        package: "bochs",
    },
    Need {
        path: "/usr/share/bochs/BIOS-bochs-latest",
        package: "bochsbios",
    },
    Need {
        path: "/usr/share/vgabios/vgabios.bin",
        package: "vgabios",
    },
    Need {
        path: "/usr/lib/x86_64-linux-gnu/bochs/plugins/libbx_sdl2_gui.so.0.0.0",
        package: "bochs-sdl",
    },
];

pub const QEMU: &[Need] = &[Need {
    path: "/usr/bin/qemu-system-x86_64",
    package: "qemu-system-x86",
}];

pub const OVMF: &[Need] = &[
    Need {
        path: "/usr/share/OVMF/OVMF_CODE_4M.fd",
        package: "ovmf",
    },
    Need {
        path: "/usr/share/OVMF/OVMF_VARS_4M.fd",
        package: "ovmf",
    },
];

/// A BIOS-bootable CD image with GRUB (`grub-mkrescue`): the bare Linux
/// boot of `cargo xtask bench linux-boot`. mtools is what grub-mkrescue
/// builds its EFI image with.
pub const GRUB_ISO: &[Need] = &[
    Need {
        path: "/usr/bin/grub-mkrescue",
        package: "grub-common",
    },
    Need {
        path: "/usr/lib/grub/i386-pc/cdboot.img",
        package: "grub-pc-bin",
    },
    Need {
        path: "/usr/bin/xorriso",
        package: "xorriso",
    },
    Need {
        path: "/usr/bin/mformat",
        package: "mtools",
    },
];

/// Makes sure every needed file is there, installing the packages as root.
pub fn ensure(needs: &[&[Need]]) -> Result<()> {
    let mut missing: Vec<&str> = needs
        .iter()
        .flat_map(|n| n.iter())
        .filter(|n| !Path::new(n.path).exists())
        .map(|n| n.package)
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !is_root || !Path::new("/usr/bin/apt-get").exists() {
        bail!("missing Debian packages: {list}\ninstall them with: sudo apt-get install -y {list}");
    }
    eprintln!("xtask: installing Debian packages: {list}");
    let apt = |args: &[&str]| -> Result<()> {
        let ok = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?
            .success();
        if !ok {
            bail!("apt-get {} failed", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(missing.iter().copied());
    apt(&args)?;
    for n in needs.iter().flat_map(|n| n.iter()) {
        if !Path::new(n.path).exists() {
            bail!("{} is still missing after installing {}", n.path, n.package);
        }
    }
    Ok(())
}

/// The pinned toolchain is running us (cargo found it), but its components
/// and targets may be missing on a machine where only the bare toolchain was
/// installed. `rustup toolchain install` in the workspace adds what
/// rust-toolchain.toml names; it is quick when all is there.
pub fn ensure_toolchain(root: &Path) -> Result<()> {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .current_dir(root)
        .output()
        .context("running rustc")?;
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    let have = |p: &str| Path::new(&sysroot).join(p).exists();
    if have("lib/rustlib/x86_64-unknown-none")
        && have("lib/rustlib/src/rust/library/core")
        && have("lib/rustlib/x86_64-unknown-linux-gnu/bin/llvm-objcopy")
    {
        return Ok(());
    }
    eprintln!("xtask: installing the toolchain parts named in rust-toolchain.toml");
    let ok = Command::new("rustup")
        .args(["toolchain", "install"])
        .current_dir(root)
        .status()
        .context("running rustup (is rustup installed?)")?
        .success();
    if !ok {
        bail!("`rustup toolchain install` failed in {}", root.display());
    }
    Ok(())
}
