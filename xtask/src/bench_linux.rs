//! `cargo xtask bench linux-boot`: what the hypervisor costs a Linux boot.
//!
//! The showcase guest of `cargo xtask linux` (same kernel, initramfs and
//! command line) is booted twice in Bochs, each time to /init's
//! [`linux::MARKER`] line on the serial port:
//!
//! - **bare** ([`bare`]): directly, no hypervisor; GRUB (an ISO from
//!   `grub-mkrescue`) loads the kernel and initramfs;
//! - **nested** ([`nested`]): under the hypervisor, from its BIOS image.
//!
//! Each half gives the wall time from starting Bochs to the marker, the
//! kernel's uptime at the marker (printed by /init; with Bochs' `clock:
//! sync=none` the guest's clock follows emulated instructions, so it is an
//! emulated time that repeats run to run) and the Bochs tick count when the
//! run was stopped just after the marker (its debugger prints `Next at t=N`
//! when interrupted). With both halves it prints their ratios.

use crate::artifacts::{self, Firmware};
use crate::checks;
use crate::console::{Input, SerialLine};
use crate::emu::{self, Backend, Media, RunSpec};
use crate::linux::{self, LinuxGuest};
use crate::setup;
use crate::spec::{GuestSpec, KernelSpec, KERNEL_DEFAULT_MIB};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct LinuxBootArgs {
    /// Only the bare boot (GRUB, the kernel directly in Bochs)
    #[arg(long, conflicts_with = "nested")]
    pub bare: bool,
    /// Only the nested boot (the kernel under the hypervisor)
    #[arg(long)]
    pub nested: bool,
    /// Give up on a boot after S seconds without the marker
    #[arg(long, value_name = "S", default_value_t = 1800, value_parser = checks::timeout)]
    pub timeout: u64,
    /// Copy the serial log to stdout as it comes
    #[arg(long)]
    pub stream: bool,
}

/// One boot, measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Boot {
    /// From starting Bochs to the marker in the serial log.
    pub wall: Duration,
    /// From starting Bochs to each milestone line seen (GRUB done, the
    /// kernel's first line), in order.
    pub milestones: Vec<(&'static str, Duration)>,
    /// The kernel's uptime at the marker, seconds (guest clock).
    pub uptime: Option<f64>,
    /// Bochs' tick count just after the marker.
    pub ticks: Option<u64>,
    /// The nested boot's VM exits by reason, all vCPUs, from the
    /// hypervisor's SUMMARY (the boot, then `poweroff -f` typed at the
    /// shell so that the run ends and reports).
    pub exits: Option<Vec<(String, u64)>>,
    pub log: PathBuf,
}

/// Typed at the nested boot's shell after the marker: the run ends and
/// the hypervisor prints its SUMMARY with the exits.
const POWEROFF: &[u8] = b"poweroff -f\n";

/// The exits by reason over every vCPU of a SUMMARY, most first.
pub fn exits_of(log: &str) -> Option<Vec<(String, u64)>> {
    let s = crate::summary::summary_of(log).ok()?;
    let mut all = std::collections::BTreeMap::<String, u64>::new();
    for v in &s.vcpu {
        for (reason, n) in &v.exits {
            *all.entry(reason.clone()).or_default() += n;
        }
    }
    let mut v: Vec<(String, u64)> = all.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Some(v)
}

/// The guest's memory in both halves: a kernel run's default.
const GUEST_MIB: u64 = KERNEL_DEFAULT_MIB;

/// GRUB's configuration for the bare boot: the serial console, no menu
/// wait, the kernel with `append` and the initramfs. GRUB splits the
/// command line into words like a shell does, so characters it would
/// interpret are refused rather than quoted.
pub fn grub_cfg(kernel: &str, initrd: &str, append: &str) -> Result<String> {
    let special = |c: char| "'\"\\$;&|<>{}#`".contains(c) || c.is_control();
    for (what, text) in [
        ("kernel", kernel),
        ("initrd", initrd),
        ("command line", append),
    ] {
        if let Some(c) = text.chars().find(|&c| special(c)) {
            bail!("grub.cfg: the {what} {text:?} holds {c:?}, which GRUB would interpret");
        }
    }
    for (what, path) in [("kernel", kernel), ("initrd", initrd)] {
        if !path.starts_with('/') || path.contains(' ') {
            bail!("grub.cfg: the {what} path {path:?} must be absolute, without spaces");
        }
    }
    Ok(format!(
        "# The bare half of `cargo xtask bench linux-boot`: Linux without the hypervisor.\n\
         serial --unit=0 --speed=115200\n\
         terminal_input serial\n\
         terminal_output serial\n\
         set timeout=0\n\
         set default=0\n\
         menuentry \"Linux (bare)\" {{\n\
         \x20   linux {kernel} {append}\n\
         \x20   initrd {initrd}\n\
         \x20   echo {GRUB_LOADED}\n\
         }}\n"
    ))
}

/// The BIOS-bootable ISO for the bare boot, built in `dir` with
/// grub-mkrescue.
fn iso(g: &LinuxGuest, dir: &Path) -> Result<PathBuf> {
    eprintln!("xtask: the bare boot's CD image needs GRUB (grub-mkrescue) and xorriso");
    setup::ensure(&[setup::GRUB_ISO])?;
    let tree = dir.join("iso");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(tree.join("boot/grub"))?;
    std::fs::copy(&g.kernel, tree.join("boot/vmlinuz"))
        .with_context(|| format!("copying {}", g.kernel.display()))?;
    std::fs::copy(&g.initrd, tree.join("boot/initramfs.cpio"))
        .with_context(|| format!("copying {}", g.initrd.display()))?;
    let cfg = grub_cfg("/boot/vmlinuz", "/boot/initramfs.cpio", linux::APPEND)?;
    std::fs::write(tree.join("boot/grub/grub.cfg"), cfg)?;
    let out = dir.join("linux.iso");
    let o = Command::new("grub-mkrescue")
        .arg("-o")
        .arg(&out)
        .arg(&tree)
        .stdin(Stdio::null())
        .output()
        .context("running grub-mkrescue")?;
    if !o.status.success() {
        bail!(
            "grub-mkrescue failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(out)
}

/// The bare half: GRUB boots the guest in Bochs, no hypervisor.
pub fn bare(root: &Path, g: &LinuxGuest, a: &LinuxBootArgs) -> Result<Boot> {
    let dir = artifacts::work_dir(root).join("bench/linux-boot/bare");
    std::fs::create_dir_all(&dir)?;
    let image = iso(g, &dir)?;
    let spec = RunSpec {
        backend: Backend::Bochs,
        firmware: Firmware::Bios,
        cpus: 1,
        cpu_model: None,
        timeout: Duration::from_secs(a.timeout),
        mem_mib: GUEST_MIB,
        dir,
        stream: a.stream,
        input: Input::None,
    };
    eprintln!("xtask: bare: booting {} in Bochs", image.display());
    boot(&spec, &image, Media::Cdrom, None)
}

/// The nested half: the same guest under the hypervisor in Bochs.
pub fn nested(root: &Path, g: &LinuxGuest, a: &LinuxBootArgs) -> Result<Boot> {
    let dir = artifacts::work_dir(root).join("bench/linux-boot/nested");
    let k = KernelSpec::new(
        g.kernel.clone(),
        linux::APPEND.to_string(),
        Some(g.initrd.clone()),
    );
    k.check_files()?;
    let spec = GuestSpec::kernel(k, GUEST_MIB, 1);
    spec.check(Some(Backend::Bochs))?;
    setup::ensure_toolchain(root)?;
    eprintln!("xtask: nested: building the hypervisor and its image");
    crate::prepare(root, &spec, &[], &dir, &[Firmware::Bios], true)?;
    let run = RunSpec {
        backend: Backend::Bochs,
        firmware: Firmware::Bios,
        cpus: spec.machine_cores(),
        cpu_model: None,
        timeout: Duration::from_secs(a.timeout),
        mem_mib: spec.machine_mib(),
        dir: dir.clone(),
        stream: a.stream,
        input: Input::None,
    };
    eprintln!("xtask: nested: booting the hypervisor with the guest in Bochs");
    boot(
        &run,
        &dir.join(Firmware::Bios.image_name()),
        Media::Disk,
        Some(POWEROFF),
    )
}

/// The kernel's first console line starts so (init/main.c's banner).
const KERNEL_FIRST_LINE: &str = "Linux version ";
/// What GRUB prints when it has loaded the kernel and the initramfs.
const GRUB_LOADED: &str = "GRUB: kernel and initramfs loaded";

/// Lines whose wall time is noted: (what, the text that shows it).
const MILESTONES: &[(&str, &str)] = &[
    ("GRUB loaded the files", GRUB_LOADED),
    ("kernel's first line", KERNEL_FIRST_LINE),
];

/// How a boot's serial log ends, so far.
#[derive(Debug, PartialEq)]
pub enum LogEnd {
    /// The marker: the shell starts.
    Ready,
    /// A line that ends the boot without a shell (a panic, the hypervisor's
    /// result).
    Failed(String),
    Running,
}

/// Reads a boot's serial log: the marker, or a line that means it will
/// not come.
/// The hypervisor's error lines before its result are quoted with it.
pub fn log_end(log: &str) -> LogEnd {
    let mut errors: Vec<&str> = Vec::new();
    for l in log.lines().map(str::trim) {
        if l == linux::MARKER {
            return LogEnd::Ready;
        }
        if l.starts_with("[ERROR") {
            errors.push(l);
        }
        if l.contains("Kernel panic") {
            return LogEnd::Failed(l.to_string());
        }
        if l.starts_with("HV RESULT:") {
            errors.push(l);
            let last = &errors[errors.len().saturating_sub(4)..];
            return LogEnd::Failed(last.join("\n    "));
        }
    }
    LogEnd::Running
}

/// The uptime /init printed before the marker.
pub fn uptime_of(log: &str) -> Option<f64> {
    log.lines()
        .find_map(|l| l.trim().strip_prefix(linux::UPTIME_PREFIX))
        .and_then(|s| s.trim().parse().ok())
}

/// The tick count Bochs' debugger printed when it stopped: its last
/// `Next at t=N`.
pub fn ticks_of(out: &str) -> Option<u64> {
    out.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("Next at t=")?.trim().parse().ok())
}

/// The tick count of Bochs' last log line ("07248924948i[SIM   ] ..."):
/// when it stopped, where its debugger did not say (it had ended itself).
pub fn last_log_tick(log: &str) -> Option<u64> {
    log.lines().rev().find_map(|l| {
        let digits: String = l.chars().take_while(char::is_ascii_digit).collect();
        (digits.len() >= 11).then(|| digits.parse().ok()).flatten()
    })
}

/// Boots `image` in Bochs until the marker (or a failure, or the timeout),
/// then stops Bochs through its debugger to read the tick count. With
/// `after_marker`, types it at the marker (the wall time is taken there)
/// and waits up to a minute for the hypervisor's result line first.
fn boot(spec: &RunSpec, image: &Path, media: Media, after_marker: Option<&[u8]>) -> Result<Boot> {
    setup::ensure(&emu::needs(Backend::Bochs, Firmware::Bios))?;
    let log_path = spec.dir.join("serial.log");
    std::fs::write(&log_path, b"")?;
    let _ = std::fs::remove_file(spec.dir.join("bochs.log"));
    let mut line = SerialLine::open(&log_path)?;
    let mut cmd = emu::bochs_command_for(spec, image, media, line.port())?;
    let out_path = spec.dir.join("emulator.out");
    let out = std::fs::File::create(&out_path)?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let start = Instant::now();
    let mut child = cmd.spawn().context("starting bochs")?;
    let mut file = std::fs::File::open(&log_path)?;
    let mut log = Vec::new();
    let mut milestones = Vec::new();
    let ended = loop {
        let mut chunk = Vec::new();
        file.seek(SeekFrom::Start(log.len() as u64))?;
        file.read_to_end(&mut chunk)?;
        if spec.stream && !chunk.is_empty() {
            let mut so = std::io::stdout().lock();
            so.write_all(&chunk)?;
            so.flush()?;
        }
        log.extend_from_slice(&chunk);
        let text = String::from_utf8_lossy(&log);
        for &(what, line) in MILESTONES {
            if !milestones.iter().any(|&(w, _)| w == what) && text.contains(line) {
                milestones.push((what, start.elapsed()));
            }
        }
        match log_end(&text) {
            LogEnd::Ready => {
                let wall = start.elapsed();
                if let Some(bytes) = after_marker {
                    line.send(bytes)?;
                    let until = Instant::now() + Duration::from_secs(60);
                    while Instant::now() < until && child.try_wait()?.is_none() {
                        let mut chunk = Vec::new();
                        file.seek(SeekFrom::Start(log.len() as u64))?;
                        file.read_to_end(&mut chunk)?;
                        log.extend_from_slice(&chunk);
                        if emu::verdict_of(&String::from_utf8_lossy(&log)).is_some() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                break Ok(wall);
            }
            LogEnd::Failed(line) => break Err(format!("the boot failed: {line}")),
            LogEnd::Running => {}
        }
        if child.try_wait()?.is_some() {
            break Err("Bochs ended before the marker".to_string());
        }
        if start.elapsed() > spec.timeout {
            break Err(format!(
                "no {:?} line after {} s",
                linux::MARKER,
                spec.timeout.as_secs()
            ));
        }
        // Short: after the marker the guest idles, and Bochs skips idle
        // ticks quickly, so the tick count read at the stop grows with the
        // delay.
        std::thread::sleep(Duration::from_millis(10));
    };
    // SIGINT stops the simulation; the debugger prints where it stopped
    // and reads its next command, "quit", from the -rc file.
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    line.close();
    let log = String::from_utf8_lossy(&log).into_owned();
    let wall = match ended {
        Ok(w) => w,
        Err(why) => {
            let errors = emu::emulator_errors(Backend::Bochs, &spec.dir);
            let said = if errors.is_empty() {
                String::new()
            } else {
                format!("; Bochs said:\n    {}", errors.join("\n    "))
            };
            bail!(
                "{why} (serial log: {}; Bochs output: {}){said}",
                log_path.display(),
                out_path.display()
            );
        }
    };
    let emulator_out = std::fs::read(&out_path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    Ok(Boot {
        wall,
        milestones,
        uptime: uptime_of(&log),
        ticks: ticks_of(&emulator_out).filter(|&t| t > 0).or_else(|| {
            last_log_tick(&std::fs::read_to_string(spec.dir.join("bochs.log")).unwrap_or_default())
        }),
        exits: after_marker.and_then(|_| exits_of(&log)),
        log: log_path,
    })
}

fn describe(b: &Boot) -> String {
    let mut s = format!("{:7.1} s wall", b.wall.as_secs_f64());
    if !b.milestones.is_empty() {
        let m: Vec<String> = b
            .milestones
            .iter()
            .map(|(what, t)| format!("{what} at {:.1} s", t.as_secs_f64()))
            .collect();
        s.push_str(&format!(" ({})", m.join(", ")));
    }
    match b.uptime {
        Some(u) => s.push_str(&format!(", kernel uptime {u:.2} s (emulated)")),
        None => s.push_str(", kernel uptime not printed"),
    }
    match b.ticks {
        Some(t) => s.push_str(&format!(", {t} Bochs ticks")),
        None => s.push_str(", Bochs ticks not read"),
    }
    if let Some(exits) = &b.exits {
        let total: u64 = exits.iter().map(|e| e.1).sum();
        let each: Vec<String> = exits.iter().map(|(r, n)| format!("{r} {n}")).collect();
        s.push_str(&format!(
            "\n          VM exits to the shell and poweroff: {total} ({})",
            each.join(", ")
        ));
    }
    s
}

/// The report: each half measured or why not, and the ratios when both
/// were measured.
pub fn report(nested: Option<&Result<Boot>>, bare: Option<&Result<Boot>>) -> String {
    let mut out = String::new();
    for (name, half) in [("nested", nested), ("bare", bare)] {
        match half {
            Some(Ok(b)) => out.push_str(&format!("  {name:<6}  {}\n", describe(b))),
            Some(Err(e)) => out.push_str(&format!("  {name:<6}  not measured: {e:#}\n")),
            None => {}
        }
    }
    if let (Some(Ok(n)), Some(Ok(b))) = (nested, bare) {
        let mut r = format!(
            "  ratio   nested/bare: {:.2}x wall",
            n.wall.as_secs_f64() / b.wall.as_secs_f64()
        );
        if let (Some(x), Some(y)) = (n.uptime, b.uptime) {
            if y > 0.0 {
                r.push_str(&format!(", {:.2}x kernel uptime", x / y));
            }
        }
        if let (Some(x), Some(y)) = (n.ticks, b.ticks) {
            if y > 0 {
                r.push_str(&format!(", {:.2}x ticks", x as f64 / y as f64));
            }
        }
        out.push_str(&r);
        out.push('\n');
    }
    out
}

/// `cargo xtask bench linux-boot`.
pub fn cmd(a: &LinuxBootArgs) -> Result<i32> {
    let root = crate::workspace::root()?;
    let g = linux::prepare(&root)?;
    let (do_nested, do_bare) = match (a.nested, a.bare) {
        (false, false) => (true, true),
        (n, b) => (n, b),
    };
    // One Bochs at a time: the halves run one after the other.
    let nested = do_nested.then(|| nested(&root, &g, a));
    let bare = do_bare.then(|| bare(&root, &g, a));
    println!(
        "linux-boot: Linux {} with {:?}, 1 vCPU, {GUEST_MIB} MiB, to {:?}, in Bochs:",
        g.release,
        linux::APPEND,
        linux::MARKER
    );
    print!("{}", report(nested.as_ref(), bare.as_ref()));
    let failed = [nested, bare].iter().flatten().any(Result::is_err);
    Ok(i32::from(failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_summed_over_vcpus_most_first() {
        let log = r#"LINUX SHELL READY
SUMMARY {"guest":"vmlinuz","mem_mib":128,"mem_pages":32768,"slots":1,"cache":"vcpu","vcpus":2,"tsc_hz":0,"result":"success","ept":{"leaves_4k":3},"vcpu":[{"id":0,"status":"ok","exits":{"HLT":5,"I/O instruction":100},"ept_mapped":1,"ept_spurious":0,"dirty_faults":0,"lookups":{"vcpu_hit":0,"vm_hit":0,"search":0,"miss":0},"cycles":1},{"id":1,"status":"ok","exits":{"HLT":7,"EPT violation":20},"ept_mapped":1,"ept_spurious":0,"dirty_faults":0,"lookups":{"vcpu_hit":0,"vm_hit":0,"search":0,"miss":0},"cycles":1}]}
HV RESULT: SUCCESS
"#;
        assert_eq!(
            exits_of(log).unwrap(),
            [
                ("I/O instruction".to_string(), 100),
                ("EPT violation".to_string(), 20),
                ("HLT".to_string(), 12)
            ]
        );
        assert_eq!(exits_of("no summary"), None);
    }

    #[test]
    fn the_tick_count_of_bochs_last_log_line() {
        let log = "00000000000i[      ] reading configuration\n\
                   07248924948i[SIM   ] quit_sim called with exit code 1\n\n";
        assert_eq!(last_log_tick(log), Some(7_248_924_948));
        assert_eq!(last_log_tick("no ticks here\n"), None);
    }

    #[test]
    fn bochs_boots_the_cd_image() {
        let dir = std::env::temp_dir().join(format!("xtask-linux-boot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let spec = RunSpec {
            backend: Backend::Bochs,
            firmware: Firmware::Bios,
            cpus: 1,
            cpu_model: None,
            timeout: Duration::from_secs(1),
            mem_mib: GUEST_MIB,
            dir: dir.clone(),
            stream: false,
            input: Input::None,
        };
        let iso = dir.join("linux.iso");
        emu::bochs_command_for(&spec, &iso, Media::Cdrom, 4444).unwrap();
        let rc = std::fs::read_to_string(dir.join("bochsrc")).unwrap();
        let cd = format!(
            "ata0-master: type=cdrom, path=\"{}\", status=inserted\n",
            iso.display()
        );
        assert!(rc.contains(&cd), "{rc}");
        assert!(
            rc.contains("\nboot: cdrom\n") && !rc.contains("type=disk"),
            "{rc}"
        );
        assert!(rc.contains("megs: 128\n"), "{rc}");
        emu::bochs_command_for(&spec, &iso, Media::Disk, 4444).unwrap();
        let rc = std::fs::read_to_string(dir.join("bochsrc")).unwrap();
        assert!(
            rc.contains("type=disk") && rc.contains("\nboot: disk\n"),
            "{rc}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn grub_cfg_boots_the_kernel_on_the_serial_console_at_once() {
        let c = grub_cfg(
            "/boot/vmlinuz",
            "/boot/initramfs.cpio",
            "console=ttyS0 quiet",
        )
        .unwrap();
        let lines: Vec<&str> = c.lines().map(str::trim).collect();
        for want in [
            "serial --unit=0 --speed=115200",
            "terminal_output serial",
            "set timeout=0",
            "linux /boot/vmlinuz console=ttyS0 quiet",
            "initrd /boot/initramfs.cpio",
            "echo GRUB: kernel and initramfs loaded",
        ] {
            assert!(lines.contains(&want), "{want}:\n{c}");
        }
        let at = |w: &str| c.find(w).unwrap();
        assert!(
            at("serial --unit") < at("terminal_output") && at("terminal_output") < at("menuentry")
        );
        assert_eq!(c.matches('{').count(), c.matches('}').count());
        for bad in ["a;b", "x=$y", "q=\"a b\"", "a\nb", "#x"] {
            let e = grub_cfg("/k", "/i", bad).unwrap_err().to_string();
            assert!(e.contains("GRUB would interpret"), "{bad}: {e}");
        }
        assert!(grub_cfg("k", "/i", "").is_err());
        assert!(grub_cfg("/k", "/i d", "").is_err());
    }

    #[test]
    fn the_log_says_ready_or_why_not() {
        assert_eq!(log_end("[ 0.1] Linux version 6.1\n"), LogEnd::Running);
        assert_eq!(
            log_end("LINUX UPTIME 3.21\nLINUX SHELL READY\r\n~ # "),
            LogEnd::Ready
        );
        // The marker must be the whole line (the script's own text is not it).
        assert_eq!(log_end("echo \"LINUX SHELL READY\"\n"), LogEnd::Running);
        let p = "[ 2.0] Kernel panic - not syncing: VFS: Unable to mount root fs\n";
        assert_eq!(log_end(p), LogEnd::Failed(p.trim().to_string()));
        assert_eq!(
            log_end("HV RESULT: FAILURE\n"),
            LogEnd::Failed("HV RESULT: FAILURE".into())
        );
        let hv = "[INFO  cpu0] VMXON ok\n[ERROR cpu0] kernel: Linux bzImage recognised\n\
                  [ERROR cpu0] could not build the VM\nHV RESULT: FAILURE\n";
        assert_eq!(
            log_end(hv),
            LogEnd::Failed(
                "[ERROR cpu0] kernel: Linux bzImage recognised\n    \
                 [ERROR cpu0] could not build the VM\n    HV RESULT: FAILURE"
                    .into()
            )
        );
    }

    #[test]
    fn figures_are_read_from_the_logs() {
        assert_eq!(
            uptime_of("x\nLINUX UPTIME 3.21\r\nLINUX SHELL READY\n"),
            Some(3.21)
        );
        assert_eq!(uptime_of("LINUX UPTIME \n"), None);
        let out = "Next at t=100\n(0) [0x000000101234] 0010:ffffffff81 (unk. ctxt): hlt\n\
                   <bochs:2> quit\nNext at t=2953812345\n";
        assert_eq!(ticks_of(out), Some(2_953_812_345));
        assert_eq!(ticks_of("Bochs is exiting\n"), None);
    }

    #[test]
    fn the_report_prints_what_was_measured_and_the_ratio_of_both() {
        let b = |wall: u64, up: f64, t: u64| Boot {
            wall: Duration::from_secs(wall),
            milestones: vec![("kernel's first line", Duration::from_secs(wall / 3))],
            uptime: Some(up),
            ticks: Some(t),
            exits: None,
            log: PathBuf::new(),
        };
        let bare = Ok(b(60, 3.0, 1_000));
        let r = report(None, Some(&bare));
        assert!(r.contains("bare") && r.contains("60.0 s wall"), "{r}");
        assert!(r.contains("kernel's first line at 20.0 s"), "{r}");
        assert!(!r.contains("ratio") && !r.contains("nested"), "{r}");
        let nested = Ok(b(150, 6.0, 2_500));
        let r = report(Some(&nested), Some(&bare));
        assert!(
            r.contains("2.50x wall, 2.00x kernel uptime, 2.50x ticks"),
            "{r}"
        );
        let failed: Result<Boot> = Err(anyhow::anyhow!("the boot failed: HV RESULT: FAILURE"));
        let r = report(Some(&failed), Some(&bare));
        assert!(r.contains("nested  not measured: the boot failed"), "{r}");
        assert!(!r.contains("ratio"), "{r}");
    }
}
