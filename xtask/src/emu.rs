//! Booting an image in an emulator (Bochs, QEMU TCG, QEMU with KVM), with the
//! serial log streamed to the terminal and kept in a file, and a timeout.
//!
//! Every backend connects COM1 to a socket of ours (`console`): its output
//! goes to a file that we tail, its input comes from the terminal or a
//! script. One mechanism for all.
//! The run is judged from the log's last `HV RESULT:` line, never from the
//! emulator's exit code (Bochs' means nothing).

use crate::artifacts::Firmware;
use crate::console::{self, Input, Key, SerialLine};
use crate::setup;
use anyhow::{bail, Context, Result};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Backend {
    Bochs,
    Qemu,
    QemuKvm,
}

impl std::str::FromStr for Backend {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "bochs" => Backend::Bochs,
            "qemu" => Backend::Qemu,
            "qemu-kvm" => Backend::QemuKvm,
            "auto" => auto(),
            _ => bail!("unknown backend {s:?}: use auto, bochs, qemu or qemu-kvm"),
        })
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Bochs => "bochs",
            Backend::Qemu => "qemu",
            Backend::QemuKvm => "qemu-kvm",
        })
    }
}

/// `auto`: QEMU with KVM where /dev/kvm can run a guest with VMX exposed
/// (an Intel host with VMX and kvm_intel's `nested` on), Bochs otherwise.
pub fn auto() -> Backend {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let vmx = std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("flags") && l.split_whitespace().any(|w| w == "vmx"))
        })
        .unwrap_or(false);
    let nested = std::fs::read_to_string("/sys/module/kvm_intel/parameters/nested")
        .map(|s| matches!(s.trim(), "Y" | "y" | "1"))
        .unwrap_or(false);
    if kvm && vmx && nested {
        Backend::QemuKvm
    } else {
        Backend::Bochs
    }
}

pub struct RunSpec {
    pub backend: Backend,
    pub firmware: Firmware,
    pub cpus: u32,
    pub cpu_model: Option<String>,
    pub timeout: Duration,
    /// Emulated machine memory in MiB.
    pub mem_mib: u64,
    /// Holds the image; the run's files (log, emulator config) go here too.
    pub dir: PathBuf,
    /// Copy the serial log to stdout as it comes.
    pub stream: bool,
    /// What is typed into COM1.
    pub input: Input,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    Failure,
    /// Killed at the timeout.
    Timeout,
    /// The emulator ended without a result line.
    NoResult,
    /// Ended at the console (`Ctrl-A x`) before a result.
    Quit,
}

pub struct Outcome {
    pub verdict: Verdict,
    pub log: String,
    pub log_path: PathBuf,
    pub elapsed: Duration,
    /// The emulator's own error lines (see [`emulator_errors`]).
    pub emulator_errors: Vec<String>,
}

impl Outcome {
    /// Why a run gave no result, for people: the emulator's own error lines
    /// when it printed any, and where the logs are.
    pub fn no_result_text(&self, dir: &Path) -> String {
        let mut t = String::new();
        if !self.emulator_errors.is_empty() {
            t.push_str("the emulator said:\n    ");
            t.push_str(&self.emulator_errors.join("\n    "));
            t.push('\n');
        }
        t.push_str(&format!(
            "serial log: {}; emulator output: {}",
            self.log_path.display(),
            dir.join("emulator.out").display()
        ));
        if dir.join("bochs.log").exists() {
            t.push_str(&format!("; Bochs log: {}", dir.join("bochs.log").display()));
        }
        t
    }
}

/// Lines quoted from an emulator at most.
const MAX_ERROR_LINES: usize = 12;

/// Bochs' complaints in its log or output: `>>PANIC<<` lines (a refused
/// configuration is one: "numerical parameter 'host_size' was set to 4096,
/// which is out of range 1 to 2048") and the message it exits with. The
/// timestamp and level prefix is dropped; each message is quoted once.
pub fn bochs_errors(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |line: &str| {
        let line = line.trim();
        // "00000000000p[SIM   ] >>PANIC<< msg" -> "[SIM] msg"
        let line = match line.find('[') {
            Some(i) if line[..i].chars().all(|c| c.is_ascii_alphanumeric()) => &line[i..],
            _ => line,
        };
        let (module, msg) = match line.strip_prefix('[').and_then(|l| l.split_once(']')) {
            Some((m, rest)) => (m.trim(), rest.trim()),
            None => ("", line),
        };
        let msg = msg.strip_prefix(">>PANIC<<").unwrap_or(msg).trim();
        if msg.is_empty() || out.iter().any(|o| o.ends_with(msg)) {
            return;
        }
        out.push(if module.is_empty() {
            msg.to_string()
        } else {
            format!("[{module}] {msg}")
        });
    };
    let mut exiting = false;
    for line in text.lines() {
        if exiting {
            exiting = false;
            if !line.starts_with("====") {
                push(line);
            }
        }
        if line.contains(">>PANIC<<") {
            push(line);
        } else if line.contains("Bochs is exiting with the following message") {
            exiting = true;
        }
    }
    out.truncate(MAX_ERROR_LINES);
    out
}

/// QEMU's complaints on its output: its `qemu-system-x86_64: ...` lines and
/// lines that say error (e.g. "KVM internal error").
pub fn qemu_errors(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines().map(str::trim) {
        let said = line.starts_with("qemu-system") || line.to_ascii_lowercase().contains("error");
        if said && !line.starts_with("ALSA lib") && !out.iter().any(|o| o == line) {
            out.push(line.chars().take(300).collect());
        }
    }
    out.truncate(MAX_ERROR_LINES);
    out
}

/// The emulator's own error lines from a run's folder: Bochs' log and
/// output, or QEMU's output.
pub fn emulator_errors(backend: Backend, dir: &Path) -> Vec<String> {
    let read = |name: &str| {
        std::fs::read(dir.join(name))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    match backend {
        Backend::Bochs => {
            // A refused configuration only reaches the output: the log file
            // is opened after the configuration is read.
            let text = format!("{}\n{}", read("emulator.out"), read("bochs.log"));
            bochs_errors(&text)
        }
        Backend::Qemu | Backend::QemuKvm => qemu_errors(&read("emulator.out")),
    }
}

pub const BOCHS_DEFAULT_MODEL: &str = "corei7_skylake_x";

pub fn needs(backend: Backend, firmware: Firmware) -> Vec<&'static [setup::Need]> {
    match (backend, firmware) {
        (Backend::Bochs, _) => vec![setup::BOCHS],
        (_, Firmware::Bios) => vec![setup::QEMU],
        (_, Firmware::Uefi) => vec![setup::QEMU, setup::OVMF],
    }
}

/// What Bochs boots: a disk image (the hypervisor's) or a CD-ROM image
/// (ISO 9660 with El Torito, e.g. from grub-mkrescue).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Media {
    Disk,
    Cdrom,
}

impl Media {
    /// The bochsrc lines that attach `image` as the first ATA drive and boot it.
    fn bochsrc(self, image: &Path) -> String {
        let img = image.display();
        match self {
            Media::Disk => {
                format!("ata0-master: type=disk, path=\"{img}\", mode=flat\nboot: disk\n")
            }
            Media::Cdrom => {
                format!("ata0-master: type=cdrom, path=\"{img}\", status=inserted\nboot: cdrom\n")
            }
        }
    }
}

fn bochs_command(spec: &RunSpec, image: &Path, serial_port: u16) -> Result<Command> {
    bochs_command_for(spec, image, Media::Disk, serial_port)
}

/// Bochs booting `image` as `media`, its COM1 connected to local TCP port
/// `serial_port` (a [`SerialLine`]).
pub fn bochs_command_for(
    spec: &RunSpec,
    image: &Path,
    media: Media,
    serial_port: u16,
) -> Result<Command> {
    // UEFI under Bochs was refused with the options (cmd_run).
    let model = spec.cpu_model.as_deref().unwrap_or(BOCHS_DEFAULT_MODEL);
    // 1 MiB-aligned, at least what the bootloader and hypervisor need.
    let rc = format!(
        "megs: {mem}\n\
         romimage: file=/usr/share/bochs/BIOS-bochs-latest\n\
         vgaromimage: file=/usr/share/vgabios/vgabios.bin\n\
         cpu: model={model}, count={cpus}, ips=50000000, reset_on_triple_fault=0\n\
         {drive}\
         display_library: sdl2\n\
         com1: enabled=1, mode=socket-client, dev=127.0.0.1:{serial_port}\n\
         clock: sync=none, time0=local\n\
         log: \"{blog}\"\n\
         panic: action=fatal\n\
         error: action=report\n\
         info: action=report\n\
         debug: action=ignore\n",
        mem = spec.mem_mib,
        cpus = spec.cpus,
        drive = media.bochsrc(image),
        blog = spec.dir.join("bochs.log").display(),
    );
    let rc_path = spec.dir.join("bochsrc");
    std::fs::write(&rc_path, rc)?;
    // Debian's Bochs has its debugger built in: it reads these commands.
    let dbg = spec.dir.join("bochs-debugger.rc");
    std::fs::write(&dbg, "c\nquit\n")?;
    // A killed run leaves a lock next to the image.
    let _ = std::fs::remove_file(image.with_extension("img.lock"));
    let mut c = Command::new("bochs");
    c.arg("-q")
        .arg("-unlock")
        .arg("-f")
        .arg(&rc_path)
        .arg("-rc")
        .arg(&dbg);
    c.env("SDL_VIDEODRIVER", "dummy");
    Ok(c)
}

fn qemu_command(spec: &RunSpec, image: &Path, serial_port: u16) -> Result<Command> {
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-display", "none", "-no-reboot", "-monitor", "none"]);
    c.args([
        "-m",
        &spec.mem_mib.to_string(),
        "-smp",
        &spec.cpus.to_string(),
    ]);
    c.arg("-serial").arg(format!("tcp:127.0.0.1:{serial_port}"));
    c.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    match spec.backend {
        Backend::QemuKvm => {
            c.args([
                "-enable-kvm",
                "-cpu",
                spec.cpu_model.as_deref().unwrap_or("host"),
            ]);
        }
        _ => {
            if let Some(m) = &spec.cpu_model {
                c.args(["-cpu", m]);
            }
        }
    }
    if spec.firmware == Firmware::Uefi {
        let vars = spec.dir.join("OVMF_VARS.fd");
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)?;
        c.args([
            "-drive",
            "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
        ]);
        c.arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()));
    }
    c.arg("-drive")
        .arg(format!("format=raw,file={}", image.display()));
    Ok(c)
}

/// The verdict a serial log gives: its last `HV RESULT:` line.
pub fn verdict_of(log: &str) -> Option<Verdict> {
    log.lines().rev().find_map(|l| {
        let r = l.trim().strip_prefix("HV RESULT: ")?;
        Some(match r {
            "SUCCESS" => Verdict::Success,
            _ => Verdict::Failure,
        })
    })
}

/// Boots the image in `spec.dir` and waits for the end of the run.
pub fn run(spec: &RunSpec) -> Result<Outcome> {
    setup::ensure(&needs(spec.backend, spec.firmware))?;
    let image = spec.dir.join(spec.firmware.image_name());
    if !image.exists() {
        bail!("no image at {}", image.display());
    }
    let log_path = spec.dir.join("serial.log");
    std::fs::write(&log_path, b"")?;
    // A Bochs that refuses its configuration writes no log: an old one
    // must not speak for it.
    let _ = std::fs::remove_file(spec.dir.join("bochs.log"));
    let mut line = SerialLine::open(&log_path)?;
    let mut cmd = match spec.backend {
        Backend::Bochs => bochs_command(spec, &image, line.port())?,
        Backend::Qemu | Backend::QemuKvm => qemu_command(spec, &image, line.port())?,
    };
    let out = std::fs::File::create(spec.dir.join("emulator.out"))?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", spec.backend))?;
    // The terminal: raw while the run lasts, keys read on a thread.
    let (_raw, keys) = match spec.input {
        Input::Terminal => match console::RawTerminal::enter() {
            Some(raw) => {
                eprintln!("xtask: the console is interactive; Ctrl-A x ends the run");
                (Some(raw), Some(console::read_terminal()))
            }
            None => (None, None),
        },
        _ => (None, None),
    };
    let mut script = match &spec.input {
        Input::Script { bytes, after } => Some((bytes.clone(), after.clone())),
        _ => None,
    };
    let mut typed: Vec<u8> = Vec::new();
    let mut quit = false;

    let mut log_file = std::fs::File::open(&log_path)?;
    let mut log = Vec::new();
    let mut timed_out = false;
    // When the result line is out, the run is over: an emulator still running
    // a few seconds later (a halted core, no exit port) is stopped.
    let mut result_seen: Option<Instant> = None;
    let mut pump = |log: &mut Vec<u8>| -> Result<()> {
        let mut chunk = Vec::new();
        log_file.seek(SeekFrom::Start(log.len() as u64))?;
        log_file.read_to_end(&mut chunk)?;
        if spec.stream && !chunk.is_empty() {
            let mut so = std::io::stdout().lock();
            so.write_all(&chunk)?;
            so.flush()?;
        }
        log.extend_from_slice(&chunk);
        Ok(())
    };
    loop {
        pump(&mut log)?;
        if child.try_wait()?.is_some() {
            break;
        }
        let text = String::from_utf8_lossy(&log);
        // A script goes in once its line is in the log.
        if let Some((bytes, after)) = &script {
            let ready = after.as_ref().is_none_or(|a| text.contains(a.as_str()));
            if ready && line.send(bytes)? {
                script = None;
            }
        }
        if let Some(k) = &keys {
            while let Ok(key) = k.try_recv() {
                match key {
                    Key::Send(b) => typed.extend_from_slice(&b),
                    Key::Quit => quit = true,
                }
            }
            if !typed.is_empty() && line.send(&typed)? {
                typed.clear();
            }
        }
        if quit {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        if result_seen.is_none() && verdict_of(&text).is_some() {
            result_seen = Some(Instant::now());
        }
        if result_seen.is_some_and(|t| t.elapsed() > Duration::from_secs(3)) {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        if start.elapsed() > spec.timeout {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    line.close();
    pump(&mut log)?;
    let log = String::from_utf8_lossy(&log).into_owned();
    let verdict = match verdict_of(&log) {
        Some(v) => v,
        None if timed_out => Verdict::Timeout,
        None if quit => Verdict::Quit,
        None => Verdict::NoResult,
    };
    Ok(Outcome {
        verdict,
        log,
        log_path,
        elapsed: start.elapsed(),
        emulator_errors: emulator_errors(spec.backend, &spec.dir),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_reads_the_last_result_line() {
        assert_eq!(
            verdict_of("x\nHV RESULT: SUCCESS\n"),
            Some(Verdict::Success)
        );
        assert_eq!(
            verdict_of("HV RESULT: SUCCESS\nHV RESULT: FAILURE\n"),
            Some(Verdict::Failure)
        );
        assert_eq!(
            verdict_of("HV RESULT: SUCCESS (not quite)"),
            Some(Verdict::Failure)
        );
        assert_eq!(verdict_of("booting\n"), None);
    }

    /// Bochs 2.7's own output for `megs: 2049` (trimmed).
    const BOCHS_REFUSES_MEMORY: &str = "\
00000000000i[      ] reading configuration from bochsrc
00000000000p[SIM   ] >>PANIC<< numerical parameter 'host_size' was set to 2049, which is out of range 1 to 2048
00000000000e[SIM   ] notify called, but no bxevent_callback function is registered
========================================================================
Bochs is exiting with the following message:
[SIM   ] numerical parameter 'host_size' was set to 2049, which is out of range 1 to 2048
========================================================================
00000000000i[SIM   ] quit_sim called with exit code 1
";

    #[test]
    fn bochs_refusals_are_quoted() {
        assert_eq!(
            bochs_errors(BOCHS_REFUSES_MEMORY),
            ["[SIM] numerical parameter 'host_size' was set to 2049, which is out of range 1 to 2048"]
        );
        let timers = "00000000000p[SYS   ] >>PANIC<< register_timer: too many registered timers\n";
        assert_eq!(
            bochs_errors(timers),
            ["[SYS] register_timer: too many registered timers"]
        );
        // A run's ordinary log has no complaint.
        let ok = "00267505392e[CPU0  ] VMEXIT: EPT violation for guest paddr 0x1000\n\
                  00000000000i[MEM0  ] 2048.00MB\n";
        assert!(bochs_errors(ok).is_empty());
    }

    #[test]
    fn qemu_complaints_are_quoted() {
        let out = "ALSA lib conf.c: error\n\
                   qemu-system-x86_64: cannot set up guest memory 'pc.ram': Cannot allocate memory\n\
                   booting\n";
        assert_eq!(
            qemu_errors(out),
            ["qemu-system-x86_64: cannot set up guest memory 'pc.ram': Cannot allocate memory"]
        );
    }

    #[test]
    fn a_run_without_result_names_the_emulators_words() {
        let dir = std::env::temp_dir().join(format!("xtask-emu-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("emulator.out"), BOCHS_REFUSES_MEMORY).unwrap();
        let o = Outcome {
            verdict: Verdict::NoResult,
            log: String::new(),
            log_path: dir.join("serial.log"),
            elapsed: Duration::ZERO,
            emulator_errors: emulator_errors(Backend::Bochs, &dir),
        };
        let t = o.no_result_text(&dir);
        assert!(t.contains("out of range 1 to 2048"), "{t}");
        assert!(t.contains("emulator.out"), "{t}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
