//! `cargo xtask linux`: the showcase Linux guest, made from Debian packages
//! into a cache folder (target/linux/).
//!
//! - the kernel of `linux-image-amd64` (the metapackage resolved to the real
//!   image package), its boot/vmlinuz-*;
//! - busybox from `busybox-static` (bin/busybox);
//! - an uncompressed newc initramfs ([`crate::cpio`]) with busybox, the
//!   console nodes and an /init that mounts the pseudo file systems, prints
//!   [`MARKER`] and starts a shell with job control on the console.
//!
//! The second run reuses the kernel and busybox it finds there (and says
//! so); delete target/linux to fetch them again. The initramfs is rebuilt
//! from the cached busybox each time, and written only when it changed.

use crate::cpio::Archive;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The line /init prints when the shell is about to start: the end of a
/// boot for the tests and the bench.
pub const MARKER: &str = "LINUX SHELL READY";
/// The line before it: the kernel's uptime then (`LINUX UPTIME 3.21`), in
/// the guest's clock (emulated time under Bochs).
pub const UPTIME_PREFIX: &str = "LINUX UPTIME ";
/// The kernel command line of every showcase boot (bare or nested).
pub const APPEND: &str = "console=ttyS0";

/// The Debian packages the guest is made of.
const KERNEL_META: &str = "linux-image-amd64";
const BUSYBOX_PACKAGE: &str = "busybox-static";

/// The prepared guest: its files and what they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxGuest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The kernel release (`6.1.0-57-amd64`), from the image's file name.
    pub release: String,
    /// The image package and its version (`linux-image-6.1.0-57-amd64`,
    /// `6.1.192-3`).
    pub package: String,
    pub version: String,
}

impl LinuxGuest {
    /// The command that boots this guest under the hypervisor.
    pub fn run_line(&self) -> String {
        format!(
            "cargo xtask run --kernel {} --initrd {} --append \"{APPEND}\"",
            self.kernel.display(),
            self.initrd.display()
        )
    }
}

/// The cache folder.
pub fn cache_dir(root: &Path) -> PathBuf {
    root.join("target").join("linux")
}

/// The real image package the kernel metapackage depends on, from the
/// output of `apt-cache depends linux-image-amd64`:
///
/// ```text
/// linux-image-amd64
///   Depends: linux-image-6.1.0-57-amd64
/// ```
///
/// Alternatives (`|Depends:`) count; virtual packages (`<name>`) do not.
pub fn image_package(meta: &str, depends: &str) -> Result<String> {
    let found = depends.lines().find_map(|l| {
        let l = l.trim().trim_start_matches('|');
        let name = l.strip_prefix("Depends:")?.trim();
        let name = name.split_whitespace().next()?;
        (name.starts_with("linux-image-") && name != meta && !name.starts_with('<'))
            .then(|| name.to_string())
    });
    match found {
        Some(p) => Ok(p),
        None => bail!(
            "`apt-cache depends {meta}` names no linux-image-* package it depends on; it said:\n{}",
            depends.trim()
        ),
    }
}

/// The kernel release in an image's file name: `vmlinuz-6.1.0-57-amd64` →
/// `6.1.0-57-amd64`.
pub fn release_of(file_name: &str) -> Option<&str> {
    file_name
        .strip_prefix("vmlinuz-")
        .filter(|r| !r.is_empty() && !r.contains('/'))
}

/// The /init script: a shell script that busybox runs (no /bin/sh exists
/// before it installs its applets).
pub fn init_script() -> String {
    format!(
        "#!/bin/busybox sh\n\
         # /init of the showcase initramfs, written by `cargo xtask linux`.\n\
         export PATH=/bin:/sbin:/usr/bin:/usr/sbin\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox mount -t sysfs sysfs /sys\n\
         /bin/busybox mount -t devtmpfs devtmpfs /dev\n\
         /bin/busybox mount -t tmpfs tmpfs /tmp\n\
         # Every applet as a link in /bin; /sbin, /usr/bin and /usr/sbin lead there.\n\
         /bin/busybox --install -s /bin\n\
         read up idle < /proc/uptime\n\
         echo \"{UPTIME_PREFIX}$up\"\n\
         echo \"{MARKER}\"\n\
         # A session of its own, with the console's real tty (ttyS0) as its\n\
         # controlling terminal: job control works.\n\
         setsid cttyhack sh\n\
         echo \"the shell exited: powering off\"\n\
         poweroff -f\n"
    )
}

/// The initramfs: busybox, the console nodes, the mount points and /init.
pub fn initramfs(busybox: &[u8]) -> Result<Vec<u8>> {
    if !busybox.starts_with(b"\x7fELF") {
        bail!("busybox is not an ELF executable");
    }
    let mut a = Archive::new();
    for d in ["bin", "dev", "proc", "sys", "usr", "root"] {
        a.dir(d, 0o755)?;
    }
    a.dir("tmp", 0o1777)?;
    a.file("bin/busybox", 0o755, busybox)?;
    a.symlink("sbin", "bin")?;
    a.symlink("usr/bin", "../bin")?;
    a.symlink("usr/sbin", "../bin")?;
    // Documentation/admin-guide/devices.txt: 5:1 the system console, 4:64
    // the first serial port. The kernel opens /dev/console for /init before
    // devtmpfs is mounted, so it must be in the archive.
    a.char_dev("dev/console", 0o600, 5, 1)?;
    a.char_dev("dev/ttyS0", 0o660, 4, 64)?;
    a.file("init", 0o755, init_script().as_bytes())?;
    Ok(a.finish())
}

/// What the cache says about its kernel: `key=value` lines.
fn stamp_text(g: &LinuxGuest) -> String {
    format!(
        "package={}\nversion={}\nrelease={}\n",
        g.package, g.version, g.release
    )
}

/// (package, version, release) from a stamp; None if a key is missing.
fn parse_stamp(text: &str) -> Option<(String, String, String)> {
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .map(str::to_string)
            .filter(|v| !v.is_empty())
    };
    Some((get("package")?, get("version")?, get("release")?))
}

/// Runs a command to its end; its stdout, or an error with its stderr.
fn output(c: &mut Command, what: &str) -> Result<String> {
    let o = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !o.status.success() {
        bail!(
            "{what} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u"), "id -u").is_ok_and(|s| s.trim() == "0")
}

/// `apt-cache depends` for a package, with one `apt-get update` first when
/// apt does not know the package (empty package lists).
fn apt_depends(package: &str) -> Result<String> {
    let ask = || {
        output(
            Command::new("apt-cache").args(["depends", package]),
            "apt-cache depends",
        )
    };
    if let Ok(s) = ask() {
        if s.lines().next().is_some_and(|l| l.trim() == package) {
            return Ok(s);
        }
    }
    if !is_root() {
        bail!("apt does not know {package}: run `sudo apt-get update`, then this command again");
    }
    eprintln!("xtask: apt does not know {package}; running apt-get update");
    output(
        Command::new("apt-get")
            .args(["update", "-qq"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get update",
    )?;
    ask().with_context(|| format!("apt knows no package {package} after apt-get update"))
}

/// Downloads a package's .deb into `dir` (reusing one already there) and
/// returns its path.
fn download(package: &str, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let find = || -> Result<Option<PathBuf>> {
        let prefix = format!("{package}_");
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            if name.starts_with(&prefix) && name.ends_with(".deb") {
                return Ok(Some(p));
            }
        }
        Ok(None)
    };
    if let Some(p) = find()? {
        eprintln!("xtask: reusing {}", p.display());
        return Ok(p);
    }
    eprintln!("xtask: downloading {package}");
    output(
        Command::new("apt-get")
            .args(["download", "-q", package])
            .current_dir(dir),
        &format!("apt-get download {package}"),
    )?;
    find()?.with_context(|| {
        format!(
            "apt-get download {package} left no .deb in {}",
            dir.display()
        )
    })
}

/// Extracts the members of a .deb's file system that match `pattern` (a tar
/// wildcard such as `./boot/vmlinuz-*`) into `dest`: `dpkg-deb
/// --fsys-tarfile` piped into tar, so the kernel's modules are never
/// unpacked.
fn extract(deb: &Path, pattern: &str, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest)?;
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running dpkg-deb")?;
    let tar_in = dpkg.stdout.take().expect("piped");
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(dest)
        .args(["--wildcards", pattern])
        .stdin(tar_in)
        .output()
        .context("running tar")?;
    let d = dpkg.wait_with_output()?;
    if !d.status.success() {
        bail!(
            "dpkg-deb --fsys-tarfile {} failed: {}",
            deb.display(),
            String::from_utf8_lossy(&d.stderr).trim()
        );
    }
    if !tar.status.success() {
        bail!(
            "{} holds no {pattern}: {}",
            deb.display(),
            String::from_utf8_lossy(&tar.stderr).trim()
        );
    }
    Ok(())
}

/// The Debian tools `prepare` uses.
const DEBIAN_TOOLS: &[&str] = &[
    "/usr/bin/apt-get",
    "/usr/bin/apt-cache",
    "/usr/bin/dpkg-deb",
];

/// The kernel: from the cache, or downloaded and extracted.
fn kernel(dir: &Path) -> Result<LinuxGuest> {
    let vmlinuz = dir.join("vmlinuz");
    let stamp = dir.join("kernel.txt");
    let initrd = dir.join("initramfs.cpio");
    if let (true, Ok(text)) = (vmlinuz.exists(), std::fs::read_to_string(&stamp)) {
        if let Some((package, version, release)) = parse_stamp(&text) {
            eprintln!(
                "xtask: reusing the kernel in {} ({package} {version}); delete {} to fetch it again",
                vmlinuz.display(),
                dir.display()
            );
            return Ok(LinuxGuest {
                kernel: vmlinuz,
                initrd,
                release,
                package,
                version,
            });
        }
    }
    let package = image_package(KERNEL_META, &apt_depends(KERNEL_META)?)?;
    eprintln!("xtask: {KERNEL_META} is {package}");
    let deb = download(&package, &dir.join("deb"))?;
    let version = output(
        Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Version"),
        "dpkg-deb -f",
    )?
    .trim()
    .to_string();
    let unpacked = dir.join("kernel-pkg");
    let _ = std::fs::remove_dir_all(&unpacked);
    extract(&deb, "./boot/vmlinuz-*", &unpacked)?;
    let mut images: Vec<PathBuf> = std::fs::read_dir(unpacked.join("boot"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    images.sort();
    let [image] = images.as_slice() else {
        bail!(
            "{} holds {} boot/vmlinuz-* files, not one: {images:?}",
            deb.display(),
            images.len()
        );
    };
    let name = image.file_name().unwrap_or_default().to_string_lossy();
    let release = release_of(&name)
        .with_context(|| format!("{}: not a vmlinuz-RELEASE name", image.display()))?
        .to_string();
    std::fs::copy(image, &vmlinuz)
        .with_context(|| format!("copying {} to {}", image.display(), vmlinuz.display()))?;
    let _ = std::fs::remove_dir_all(&unpacked);
    let g = LinuxGuest {
        kernel: vmlinuz,
        initrd,
        release,
        package,
        version,
    };
    std::fs::write(&stamp, stamp_text(&g))?;
    Ok(g)
}

/// busybox: from the cache, or downloaded and extracted.
fn busybox(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("busybox");
    if path.exists() {
        eprintln!("xtask: reusing {}", path.display());
        return Ok(path);
    }
    let deb = download(BUSYBOX_PACKAGE, &dir.join("deb"))?;
    let unpacked = dir.join("busybox-pkg");
    let _ = std::fs::remove_dir_all(&unpacked);
    extract(&deb, "./bin/busybox", &unpacked)?;
    std::fs::copy(unpacked.join("bin/busybox"), &path)
        .with_context(|| format!("copying busybox to {}", path.display()))?;
    let _ = std::fs::remove_dir_all(&unpacked);
    Ok(path)
}

/// Prepares the guest in the cache folder (see the module's text).
pub fn prepare(root: &Path) -> Result<LinuxGuest> {
    let missing: Vec<&str> = DEBIAN_TOOLS
        .iter()
        .copied()
        .filter(|p| !Path::new(p).exists())
        .collect();
    let dir = cache_dir(root);
    let cached = dir.join("vmlinuz").exists() && dir.join("busybox").exists();
    if !missing.is_empty() && !cached {
        bail!(
            "cargo xtask linux takes its kernel and busybox from Debian packages, with apt-get \
             and dpkg-deb; this machine lacks {}",
            missing.join(", ")
        );
    }
    std::fs::create_dir_all(&dir)?;
    let g = kernel(&dir)?;
    let bb = busybox(&dir)?;
    let busybox = std::fs::read(&bb).with_context(|| format!("reading {}", bb.display()))?;
    let image = initramfs(&busybox).with_context(|| format!("{}", bb.display()))?;
    if std::fs::read(&g.initrd).is_ok_and(|old| old == image) {
        eprintln!("xtask: {} is up to date", g.initrd.display());
    } else {
        std::fs::write(&g.initrd, &image)
            .with_context(|| format!("writing {}", g.initrd.display()))?;
        eprintln!(
            "xtask: wrote {} ({} KiB, uncompressed newc)",
            g.initrd.display(),
            image.len() / 1024
        );
    }
    Ok(g)
}

/// `cargo xtask linux`.
pub fn cmd(root: &Path) -> Result<i32> {
    let g = prepare(root)?;
    println!("Linux {} ({} {})", g.release, g.package, g.version);
    println!("kernel:    {}", g.kernel.display());
    println!("initramfs: {}", g.initrd.display());
    println!("boot it under the hypervisor (or: cargo xtask run --linux):");
    println!("  {}", g.run_line());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metapackage_resolves_to_its_image() {
        let bookworm = "linux-image-amd64\n  Depends: linux-image-6.1.0-57-amd64\n";
        assert_eq!(
            image_package(KERNEL_META, bookworm).unwrap(),
            "linux-image-6.1.0-57-amd64"
        );
        // An alternative first, virtual packages and other relations skipped.
        let alt = "linux-image-amd64\n  Recommends: firmware-linux-free\n  \
                   |Depends: <linux-image-virtual>\n  |Depends: linux-image-6.12.9-amd64-unsigned\n  \
                   Depends: linux-image-6.12.9-amd64\n";
        assert_eq!(
            image_package(KERNEL_META, alt).unwrap(),
            "linux-image-6.12.9-amd64-unsigned"
        );
        let e = image_package(KERNEL_META, "linux-image-amd64\n  Conflicts: foo\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("names no linux-image-*") && e.contains("Conflicts: foo"),
            "{e}"
        );
        assert!(image_package(KERNEL_META, "").is_err());
    }

    #[test]
    fn the_release_is_read_from_the_image_name() {
        assert_eq!(release_of("vmlinuz-6.1.0-57-amd64"), Some("6.1.0-57-amd64"));
        assert_eq!(release_of("vmlinuz-"), None);
        assert_eq!(release_of("System.map-6.1.0"), None);
    }

    #[test]
    fn the_stamp_reads_back() {
        let g = LinuxGuest {
            kernel: "k".into(),
            initrd: "i".into(),
            release: "6.1.0-57-amd64".into(),
            package: "linux-image-6.1.0-57-amd64".into(),
            version: "6.1.192-3".into(),
        };
        assert_eq!(
            parse_stamp(&stamp_text(&g)),
            Some((g.package.clone(), g.version.clone(), g.release.clone()))
        );
        assert_eq!(parse_stamp("package=x\nversion=\nrelease=r\n"), None);
        assert_eq!(parse_stamp(""), None);
    }

    #[test]
    fn the_init_script_mounts_marks_and_starts_a_job_control_shell() {
        let s = init_script();
        assert!(s.starts_with("#!/bin/busybox sh\n"));
        for want in [
            "mount -t proc proc /proc",
            "mount -t sysfs sysfs /sys",
            "mount -t devtmpfs devtmpfs /dev",
            "mount -t tmpfs tmpfs /tmp",
            "/bin/busybox --install -s /bin",
            "setsid cttyhack sh",
            "poweroff -f",
        ] {
            assert!(s.contains(want), "{want}: {s}");
        }
        // The marker comes after the mounts and before the shell.
        let at = |w: &str| s.find(w).unwrap();
        assert!(at("--install") < at(MARKER) && at(MARKER) < at("setsid"));
        assert!(at(UPTIME_PREFIX) < at(MARKER));
    }

    #[test]
    fn the_initramfs_holds_the_guest() {
        let bb = b"\x7fELF busybox".to_vec();
        let a = initramfs(&bb).unwrap();
        let has = |name: &str| {
            let mut n = name.as_bytes().to_vec();
            n.push(0);
            a.windows(n.len()).any(|w| w == n.as_slice())
        };
        for n in [
            "bin/busybox",
            "dev/console",
            "dev/ttyS0",
            "proc",
            "sys",
            "tmp",
            "init",
            "usr/bin",
            "TRAILER!!!",
        ] {
            assert!(has(n), "{n}");
        }
        // The devices: mode 020600 rdev 5:1 and 020660 rdev 4:64 (rdevmajor
        // and rdevminor are header fields 10 and 11: bytes 78..94).
        let header_of = |name: &str| {
            let mut n = name.as_bytes().to_vec();
            n.push(0);
            let at = a.windows(n.len()).position(|w| w == n.as_slice()).unwrap();
            std::str::from_utf8(&a[at - 110..at]).unwrap().to_string()
        };
        let console = header_of("dev/console");
        assert_eq!(&console[14..22], "00002180");
        assert_eq!(&console[78..94], "0000000500000001");
        let tty = header_of("dev/ttyS0");
        assert_eq!(&tty[14..22], "000021B0");
        assert_eq!(&tty[78..94], "0000000400000040");
        assert_eq!(&header_of("init")[14..22], "000081ED");
        let e = initramfs(b"#!/bin/sh").unwrap_err().to_string();
        assert!(e.contains("not an ELF"), "{e}");
    }

    #[test]
    fn the_run_line_names_the_files_and_the_console() {
        let g = LinuxGuest {
            kernel: "target/linux/vmlinuz".into(),
            initrd: "target/linux/initramfs.cpio".into(),
            release: String::new(),
            package: String::new(),
            version: String::new(),
        };
        assert_eq!(
            g.run_line(),
            "cargo xtask run --kernel target/linux/vmlinuz --initrd target/linux/initramfs.cpio \
             --append \"console=ttyS0\""
        );
    }
}
