//! The command line, as clap definitions: the one source of every option,
//! its default, its help and the README's command block (`usage_block`,
//! printed by the hidden `cargo xtask usage`; a unit test keeps the README
//! equal to it).

use crate::artifacts::Firmware;
use crate::bench_dirty::options::DirtyLogArgs;
use crate::checks;
use crate::emu::{self, Backend};
use crate::spec::{GuestSpec, KernelSpec, KERNEL_DEFAULT_MIB};
use anyhow::Result;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand, ValueEnum};
use hypervisor::limits::CacheMode;
use hypervisor::mm::fault::EptPages;
use std::path::PathBuf;

/// `cargo xtask`: build, run, test and measure the hypervisor.
#[derive(Parser, Debug)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    arg_required_else_help = true,
    after_help = "Examples:\n  \
        cargo xtask run                      # boot the smoke guest in Bochs\n  \
        cargo xtask test                     # every test; ends with `N passed, N failed`\n  \
        cargo xtask bench dirty-log --help   # the dirty-log benchmark's options"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Build hypervisor, guest and image, boot it in an emulator and judge the run
    #[command(after_help = "Examples:\n  \
        cargo xtask run\n  \
        cargo xtask run --guest memtouch --mem 64 --slots 8 --cpus 4 --json\n  \
        cargo xtask run --backend qemu-kvm --firmware uefi --cpus 4\n\n\
        Exit status: 0 success, 1 the hypervisor reported failure, 2 timeout, \
        3 no result line (the emulator's own error lines are quoted).")]
    Run(RunArgs),
    /// Build BIOS and UEFI disk images for real hardware and print their paths
    #[command(after_help = "Example:\n  \
        cargo xtask image --guest memtouch --mem 64 --slots 8\n  \
        sudo dd if=target/xtask/image/uefi.img of=/dev/sdX bs=4M conv=fsync")]
    Image(ImageArgs),
    /// Host tests, the speculation check, then the emulator tests
    #[command(after_help = "Examples:\n  \
        cargo xtask test\n  \
        cargo xtask test --host-only\n  \
        cargo xtask test --filter dirty-log")]
    Test(TestArgs),
    /// Benchmarks: memslot lookups on the host, dirty logging in a guest
    #[command(
        subcommand_required = true,
        arg_required_else_help = true,
        after_help = "Examples:\n  \
            cargo xtask bench memslot --quick\n  \
            cargo xtask bench dirty-log -v 4 -x 64 -b 1M -i 3 --cache vm"
    )]
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
    /// Prepare the showcase Linux guest (Debian kernel, busybox initramfs) in target/linux
    #[command(after_help = "Example:\n  \
        cargo xtask linux\n  \
        cargo xtask run --linux")]
    Linux,
    /// The disassembly behind the speculation check
    #[command(after_help = "Example:\n  cargo xtask asm")]
    Asm,
    /// Print the README's command block (from these definitions)
    #[command(hide = true)]
    Usage {
        /// Write it into README.md's block under "## Commands" instead
        #[arg(long)]
        update_readme: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Memslot lookup cost on the host, next to vm-memory's find_region
    #[command(after_help = "Examples:\n  \
        cargo xtask bench memslot\n  \
        cargo xtask bench memslot --quick\n  \
        cargo xtask bench memslot --paired")]
    Memslot(MemslotArgs),
    /// Dirty-page logging shaped like KVM's dirty_log_perf_test, in a guest
    ///
    /// Each of V vCPUs writes every 4 KiB page of its own region of -b bytes
    /// once per iteration, for -i iterations, with the test memory split into
    /// -x memslots (a separate base slot holds the guest's code and stacks and
    /// is never logged). The boot core is the controller (the test's main
    /// thread), so the machine gets V + 1 cores. It prints the KVM test's phase
    /// times, then per phase the exits and slot lookups by level, and per
    /// iteration the dirty pages against the pages written (it fails if they
    /// differ). Under Bochs the figures are emulated cycles.
    DirtyLog(DirtyLogArgs),
    /// The dirty-log fault path on real host threads, cache modes side by side
    ///
    /// T threads (default: the number of cores), each a vCPU with its own
    /// memslot cache, write-fault sequential pages of their own slot through
    /// the hypervisor's lookup, EPT and dirty-bitmap code, with 1, 8, 64 and
    /// 509 slots; the controller harvests the log and checks that the dirty
    /// pages reported equal the pages written. Prints ns per fault and the
    /// ratios vm/vcpu and none/vcpu (alternating samples in one run), and
    /// writes target/xtask/bench/fault-path.{json,svg}.
    #[command(after_help = "Examples:\n  \
        cargo xtask bench fault-path\n  \
        cargo xtask bench fault-path --threads 2 --quick")]
    FaultPath(crate::bench_fault::FaultPathArgs),
    /// A Linux boot to the shell in Bochs, under the hypervisor and bare
    ///
    /// The showcase guest of `cargo xtask linux` boots to its shell twice:
    /// nested (under the hypervisor) and bare (GRUB from a CD image, no
    /// hypervisor). Prints for each the wall time to the shell's marker line,
    /// the kernel's uptime then (emulated time) and Bochs' tick count, and
    /// the ratios nested/bare when both were measured.
    #[command(after_help = "Examples:\n  \
        cargo xtask bench linux-boot\n  \
        cargo xtask bench linux-boot --bare --stream")]
    LinuxBoot(crate::bench_linux::LinuxBootArgs),
}

#[derive(Args, Debug, Clone)]
pub struct MemslotArgs {
    /// Fewer samples: a quick look, not a measurement
    #[arg(long)]
    pub quick: bool,
    /// Alternate short samples of our lookup, a bare cached lookup (the
    /// floor) and vm-memory in one process; print the ratios per round with
    /// their spread, and fail if the goals are missed
    #[arg(long)]
    pub paired: bool,
}

#[derive(Args, Debug, Clone)]
pub struct TestArgs {
    /// Only the host tests and the speculation check (no emulator)
    #[arg(long)]
    pub host_only: bool,
    /// Only the emulator tests whose name contains TEXT
    #[arg(long, value_name = "TEXT")]
    pub filter: Option<String>,
}

/// `--backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// qemu-kvm where /dev/kvm runs nested VT-x, else bochs
    Auto,
    /// Bochs 2.7: emulated VMX with EPT
    Bochs,
    /// QEMU TCG: no VMX, the hypervisor refuses cleanly
    Qemu,
    /// QEMU with -enable-kvm -cpu host
    QemuKvm,
}

impl BackendChoice {
    pub fn resolve(self) -> Backend {
        match self {
            BackendChoice::Auto => emu::auto(),
            BackendChoice::Bochs => Backend::Bochs,
            BackendChoice::Qemu => Backend::Qemu,
            BackendChoice::QemuKvm => Backend::QemuKvm,
        }
    }
}

/// `--cache vcpu|vm|none`, parsed into the hypervisor's own type.
pub fn cache_parser() -> impl TypedValueParser<Value = CacheMode> {
    let names = CacheMode::ALL.map(CacheMode::as_str);
    PossibleValuesParser::new(names).map(|s| s.parse::<CacheMode>().expect("a listed name"))
}

/// The guest and its memory: options shared by `run` and `image`.
#[derive(Args, Debug, Clone)]
pub struct GuestArgs {
    /// The guest program, one of guest/src/bin (smoke, memtouch, unbacked,
    /// hostile, dirtylog, pagerace, mmio, pcdevices, spin)
    #[arg(
        long,
        value_name = "NAME",
        default_value = "smoke",
        conflicts_with = "kernel"
    )]
    pub guest: String,
    /// Boot this kernel file instead of a guest program (QEMU's -kernel):
    /// multiboot v1 (ELF32, ELF64 or a.out-kludge addresses), a 64-bit
    /// Linux bzImage (boot protocol 2.12 or later, entered at its 64-bit
    /// entry) or an ELF with a PVH entry note (an uncompressed vmlinux)
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// The kernel's command line (QEMU's -append): a multiboot kernel gets
    /// its file name, a space and this text; Linux and PVH kernels get this
    /// text alone
    #[arg(long, value_name = "TEXT", requires = "kernel")]
    pub append: Option<String>,
    /// A file the kernel gets as multiboot module 0, the Linux initrd or
    /// PVH module 0 (QEMU's -initrd)
    #[arg(long, value_name = "FILE", requires = "kernel")]
    pub initrd: Option<PathBuf>,
    #[arg(long = "mem", value_name = "MIB", value_parser = checks::mem_mib,
          help = checks::help::mem())]
    pub mem_mib: Option<u64>,
    #[arg(long, value_name = "S", default_value_t = 1, value_parser = checks::slots,
          help = checks::help::slots())]
    pub slots: u32,
    /// Memslot cache: vcpu (per-vCPU index, then search), vm (VM-wide index
    /// only, KVM before the 2021 series) or none (always search)
    #[arg(long, value_name = "MODE", default_value = "vcpu", value_parser = cache_parser())]
    pub cache: CacheMode,
    /// Make slot I read-only: a guest write to it is contained
    #[arg(long, value_name = "I")]
    pub readonly_slot: Option<u32>,
    /// The watchdog: a vCPU that makes no VM exit for S seconds of guest
    /// time is reported (RIP, mode) and the run ends (0 = off)
    #[arg(long, value_name = "S", default_value_t = 30, value_parser = checks::watchdog_s)]
    pub watchdog: u64,
    /// EPT pages a fault maps: 4k, or 2m where the slot covers the aligned
    /// 2 MiB (and is not dirty-logged)
    #[arg(long, value_name = "SIZE", default_value = "4k", value_parser = ept_pages_parser())]
    pub ept_pages: EptPages,
}

/// `--ept-pages 4k|2m`, parsed into the hypervisor's own type.
pub fn ept_pages_parser() -> impl TypedValueParser<Value = EptPages> {
    PossibleValuesParser::new(["4k", "2m"]).map(|s| s.parse::<EptPages>().expect("a listed name"))
}

impl GuestArgs {
    pub fn spec(&self, cpus: u32) -> GuestSpec {
        let base = match &self.kernel {
            Some(k) => GuestSpec::kernel(
                KernelSpec::new(
                    k.clone(),
                    self.append.clone().unwrap_or_default(),
                    self.initrd.clone(),
                ),
                self.mem_mib.unwrap_or(KERNEL_DEFAULT_MIB),
                self.slots,
            ),
            None => GuestSpec::new(&self.guest, self.mem_mib.unwrap_or(16), self.slots),
        };
        GuestSpec {
            cache: self.cache,
            // A kernel starts on one vCPU (an image's 0 means all cores).
            cpus: if self.kernel.is_some() && cpus == 0 {
                1
            } else {
                cpus
            },
            readonly_slot: self.readonly_slot,
            watchdog_ms: self.watchdog * 1000,
            ept_pages: self.ept_pages,
            ..base
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The emulator (auto: qemu-kvm where nested VT-x works, else bochs)
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Firmware of the image (Bochs boots BIOS only)
    #[arg(long, value_enum, default_value_t = Firmware::Bios)]
    pub firmware: Firmware,
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = checks::vcpus,
          help = checks::help::cpus())]
    pub cpus: u32,
    /// CPU model (Bochs: corei7_skylake_x, tigerlake, corei7_haswell_4770, ...;
    /// QEMU: -cpu)
    #[arg(long, value_name = "M")]
    pub cpu_model: Option<String>,
    /// Kill the run after S seconds without a result (at least 1)
    #[arg(long, value_name = "S", default_value_t = 300, value_parser = checks::timeout)]
    pub timeout: u64,
    #[command(flatten)]
    pub guest: GuestArgs,
    /// Boot the showcase Linux guest: --kernel, --initrd and --append of
    /// `cargo xtask linux` (which runs first if needed)
    #[arg(long, conflicts_with_all = ["guest", "kernel", "initrd", "append"])]
    pub linux: bool,
    /// Print the run's SUMMARY object on stdout instead of streaming the log
    #[arg(long)]
    pub json: bool,
    /// Type this file into the guest's COM1 (instead of the terminal, which
    /// is otherwise the guest's console when stdin is one)
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// With --input: wait until the serial log shows TEXT before typing
    #[arg(long, value_name = "TEXT", requires = "input")]
    pub input_after: Option<String>,
}

impl RunArgs {
    /// What is typed into COM1: the --input file, else the terminal (not
    /// with --json, whose stdout is the summary).
    pub fn input(&self) -> Result<crate::console::Input> {
        use crate::console::Input;
        Ok(match &self.input {
            Some(path) => Input::Script {
                bytes: std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("--input {}: {e}", path.display()))?,
                after: self.input_after.clone(),
            },
            None if self.json => Input::None,
            None => Input::Terminal,
        })
    }

    /// These options with the showcase guest's kernel, initramfs and
    /// command line (`--linux`).
    pub fn with_linux(&self, g: &crate::linux::LinuxGuest) -> RunArgs {
        let mut a = self.clone();
        a.guest.kernel = Some(g.kernel.clone());
        a.guest.initrd = Some(g.initrd.clone());
        a.guest.append = Some(crate::linux::APPEND.to_string());
        a.linux = false;
        a
    }

    /// Every check that takes more than one option; the backend resolved.
    pub fn check(&self) -> Result<(Backend, GuestSpec)> {
        let backend = self.backend.resolve();
        if backend == Backend::Bochs && self.firmware == Firmware::Uefi {
            anyhow::bail!(
                "--firmware uefi: the Bochs backend boots BIOS images only; use \
                 --backend qemu or qemu-kvm for UEFI"
            );
        }
        let g = self.guest.spec(self.cpus);
        g.check(Some(backend))?;
        Ok((backend, g))
    }
}

#[derive(Args, Debug, Clone)]
pub struct ImageArgs {
    /// Where the images go [default: target/xtask/image]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub guest: GuestArgs,
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = checks::vcpus_or_all,
          help = checks::help::image_cpus())]
    pub cpus: u32,
}

impl ImageArgs {
    pub fn check(&self) -> Result<GuestSpec> {
        let g = self.guest.spec(self.cpus);
        g.check(None)?;
        Ok(g)
    }
}

/// One option of a usage line: `[--cache vcpu|vm|none]`, `[-v V]`, `[--json]`.
fn usage_item(a: &clap::Arg) -> String {
    let name = match (a.get_short(), a.get_long()) {
        (Some(s), _) => format!("-{s}"),
        (None, Some(l)) => format!("--{l}"),
        (None, None) => a.get_id().to_string(),
    };
    if matches!(a.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
        return format!("[{name}]");
    }
    let values: Vec<String> = a
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| v.get_name().to_string())
        .collect();
    let value = if values.is_empty() {
        a.get_value_names()
            .and_then(|v| v.first())
            .map_or_else(|| a.get_id().to_string().to_uppercase(), |v| v.to_string())
    } else {
        values.join("|")
    };
    format!("[{name} {value}]")
}

/// `prefix` then the items, wrapped at `WIDTH` with continuation lines
/// indented under the first item.
fn wrap(prefix: &str, items: &[String]) -> String {
    const WIDTH: usize = 92;
    let indent = " ".repeat(prefix.len());
    let mut out = String::new();
    let mut line = prefix.to_string();
    let mut empty = true;
    for item in items {
        if !empty && line.len() + 1 + item.len() > WIDTH {
            out.push_str(&line);
            out.push('\n');
            line.clone_from(&indent);
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(item);
        empty = false;
    }
    out.push_str(&line);
    out.push('\n');
    out
}

/// The usage of one (sub)command: its options, in definition order.
fn usage_of(prefix: &str, c: &clap::Command) -> String {
    let items: Vec<String> = c
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !a.is_positional())
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        .map(usage_item)
        .collect();
    if items.is_empty() {
        let about = c.get_about().map(|a| a.to_string()).unwrap_or_default();
        format!("{prefix}# {}\n", about.to_lowercase())
    } else {
        wrap(prefix, &items)
    }
}

/// The README's command block: every subcommand's options, rendered from
/// the clap definitions.
pub fn usage_block() -> String {
    let cli = Cli::command();
    let mut out = String::new();
    for c in cli.get_subcommands().filter(|c| !c.is_hide_set()) {
        let name = c.get_name();
        if c.has_subcommands() {
            for s in c.get_subcommands().filter(|s| !s.is_hide_set()) {
                let prefix = format!("cargo xtask {name} {} ", s.get_name());
                out.push_str(&usage_of(&prefix, s));
            }
        } else {
            out.push_str(&usage_of(&format!("cargo xtask {name:<5} "), c));
        }
    }
    out
}

/// Where the first ``` block after `## Commands` holds its text in a
/// README: the byte range between the fence lines.
fn readme_block_range(readme: &str) -> Option<std::ops::Range<usize>> {
    let section = readme.find("\n## Commands")?;
    let fence = section + readme[section..].find("```")?;
    let start = fence + readme[fence..].find('\n')? + 1;
    let end = start + readme[start..].find("```")?;
    Some(start..end)
}

/// The text of the first ``` block after `## Commands` in a README.
#[cfg(test)]
pub fn readme_block(readme: &str) -> Option<&str> {
    readme_block_range(readme).map(|r| &readme[r])
}

/// `readme` with that block replaced by `block`.
pub fn with_readme_block(readme: &str, block: &str) -> Option<String> {
    let r = readme_block_range(readme)?;
    Some(format!("{}{block}{}", &readme[..r.start], &readme[r.end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("xtask").chain(line.split_whitespace()))
    }

    fn run_args(line: &str) -> RunArgs {
        match parse(&format!("run {line}")).unwrap().cmd {
            Cmd::Run(r) => r,
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn clap_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn readme_shows_the_usage_clap_renders() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README.md");
        let block = readme_block(&readme).expect("a ``` block under ## Commands in README.md");
        let want = usage_block();
        assert!(
            block == want,
            "README.md's command block differs from the clap definitions; \
             run `cargo xtask usage --update-readme`:\n{want}"
        );
        let updated = with_readme_block(&readme, &want).unwrap();
        assert_eq!(readme_block(&updated), Some(want.as_str()));
        assert_eq!(updated.len(), readme.len() - block.len() + want.len());
        for s in [
            "cargo xtask run ",
            "--backend auto|bochs|qemu|qemu-kvm",
            "bench dirty-log [-v V]",
        ] {
            assert!(want.contains(s), "{s}: {want}");
        }
    }

    #[test]
    fn every_subcommand_answers_help() {
        for line in [
            "--help",
            "run --help",
            "image --help",
            "test --help",
            "bench --help",
            "bench memslot --help",
            "bench dirty-log --help",
            "bench linux-boot --help",
            "asm --help",
            "linux --help",
        ] {
            let e = parse(line).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp, "{line}");
            let text = e.to_string();
            assert!(text.contains("Usage: cargo xtask"), "{line}: {text}");
            assert!(text.contains("Example"), "{line}: no example\n{text}");
        }
        let bench = parse("bench --help").unwrap_err().to_string();
        assert!(
            bench.contains("memslot") && bench.contains("dirty-log"),
            "{bench}"
        );
        let run = parse("run --help").unwrap_err().to_string();
        for s in [
            "--backend",
            "[default: auto]",
            "--cache",
            "[default: 300]",
            "--readonly-slot",
        ] {
            assert!(run.contains(s), "{s}: {run}");
        }
    }

    #[test]
    fn run_options_keep_their_names_and_defaults() {
        let r = run_args("");
        assert_eq!(r.backend, BackendChoice::Auto);
        assert_eq!(r.firmware, Firmware::Bios);
        assert_eq!((r.cpus, r.timeout, r.json), (1, 300, false));
        assert_eq!(r.guest.spec(1), GuestSpec::new("smoke", 16, 1));
        let r = run_args(
            "--backend qemu-kvm --firmware uefi --cpus 4 --cpu-model host --timeout 5 \
             --guest memtouch --mem 64 --slots 8 --cache none --readonly-slot 7 --json",
        );
        assert_eq!(r.backend.resolve(), Backend::QemuKvm);
        assert_eq!(r.firmware, Firmware::Uefi);
        assert_eq!((r.cpus, r.timeout, r.json), (4, 5, true));
        assert_eq!(r.cpu_model.as_deref(), Some("host"));
        let (_, g) = r.check().unwrap();
        assert_eq!((g.guest.as_str(), g.mem_mib, g.slots), ("memtouch", 64, 8));
        assert_eq!(
            (g.cache, g.cpus, g.readonly_slot),
            (CacheMode::None, 4, Some(7))
        );
    }

    #[test]
    fn run_linux_takes_the_showcase_guest() {
        let r = run_args("--linux --cpus 2");
        assert!(r.linux);
        let g = crate::linux::LinuxGuest {
            kernel: "target/linux/vmlinuz".into(),
            initrd: "target/linux/initramfs.cpio".into(),
            release: String::new(),
            package: String::new(),
            version: String::new(),
        };
        let w = r.with_linux(&g);
        assert_eq!(w.guest.kernel, Some(g.kernel.clone()));
        assert_eq!(w.guest.initrd, Some(g.initrd.clone()));
        assert_eq!(w.guest.append.as_deref(), Some(crate::linux::APPEND));
        assert_eq!((w.cpus, w.linux), (2, false));
        for other in ["--kernel k", "--initrd i", "--guest smoke", "--append x"] {
            let line = format!("run --linux {other}");
            let e = parse(&line)
                .err()
                .unwrap_or_else(|| panic!("{line} accepted"));
            assert!(e.to_string().contains("cannot be used with"), "{line}: {e}");
        }
    }

    #[test]
    fn options_are_refused_naming_the_limit() {
        for (line, says, names) in [
            ("run --cpus 63", "MAX_VCPUS = 62", "--cpus"),
            ("run --cpus 0", "1 to 62", "--cpus"),
            ("run --slots 510", "MAX_SLOTS = 509", "--slots"),
            ("run --timeout 0", "at least 1 second", "--timeout"),
            ("run --mem 0", "at least 1 MiB", "--mem"),
            ("run --mem 5000", "at most 4096 MiB", "--mem"),
            ("run --cache lru", "vcpu", "--cache"),
            ("run --backend vbox", "qemu-kvm", "--backend"),
            ("image --cpus 63", "MAX_VCPUS", "--cpus"),
            ("bench dirty-log -x 509", "MAX_SLOTS = 509", "--slots"),
            ("bench dirty-log -v 63", "MAX_VCPUS = 62", "--vcpus"),
            (
                "bench dirty-log -b 1000",
                "multiple of 4096",
                "--bytes-per-vcpu",
            ),
            ("bench dirty-log -i 1", "at least 2", "--iterations"),
        ] {
            let e = parse(line)
                .err()
                .unwrap_or_else(|| panic!("{line} accepted"));
            let e = e.to_string();
            assert!(e.contains(says), "{line}: {e}");
            assert!(
                e.contains(names),
                "{line}: the error does not name {names}: {e}"
            );
        }
        for (line, says) in [
            ("--backend bochs --mem 2048", "at most 1920 MiB"),
            ("--backend bochs --cpus 16", "at most 15"),
            ("--backend bochs --firmware uefi", "BIOS images only"),
            (
                "--backend bochs --slots 4 --readonly-slot 4",
                "--readonly-slot 4",
            ),
            ("--backend bochs --mem 1 --slots 3", "3 slots"),
        ] {
            let e = run_args(line).check().unwrap_err().to_string();
            assert!(e.contains(says), "{line}: {e}");
        }
        assert!(run_args("--backend qemu --mem 2048").check().is_ok());
    }
}
