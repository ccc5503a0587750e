//! `cargo xtask test`: host tests of every crate that runs on the host, the
//! speculation check, then the emulator tests, each judged from its serial log
//! and verdict. Emulator tests run two at a time (each emulator uses one core).

use crate::artifacts::{self, Firmware};
use crate::cli::TestArgs;
use crate::console::Input;
use crate::emu::{self, Backend, RunSpec, Verdict};
use crate::spec::{GuestSpec, KernelSpec, KERNEL_DEFAULT_MIB};
use crate::summary::summary_of;
use crate::{nospec, setup, workspace};
use anyhow::{Context, Result};
use hypervisor::report::schema::Summary;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A check on a whole serial log: Err says what is wrong.
pub type LogCheck = fn(&str) -> Result<(), String>;

/// One emulator test: what to boot, and what its serial log must show.
pub struct Case {
    pub name: String,
    pub guest: GuestSpec,
    pub features: &'static [&'static str],
    pub backend: Backend,
    pub firmware: Firmware,
    pub cpus: u32,
    pub cpu_model: Option<&'static str>,
    pub timeout: u64,
    pub verdict: Verdict,
    /// Each must appear in the log.
    pub contains: Vec<String>,
    /// None may appear in the log.
    pub absent: Vec<String>,
    /// Extra check on the whole log (e.g. counts in the summary).
    pub check: Option<LogCheck>,
    /// A kernel run: where the kernel file comes from (`guest` is then a
    /// kernel spec whose files are made before the image).
    pub kernel: Option<TestKernel>,
    /// What is typed into COM1.
    pub input: Input,
}

/// The kernel file of a kernel-run case.
#[derive(Clone, Copy, Debug)]
pub enum TestKernel {
    /// A program of guest/src/bin (`mbkernel`), booted with `--append`
    /// plus the values it checks (expect_mem, the initrd's length and
    /// hash) and [`test_initrd`] as `--initrd`.
    Built {
        program: &'static str,
        append: &'static str,
    },
    /// A file made by this function (the negative cases).
    Bytes(fn() -> Vec<u8>),
    /// A file made by this function, booted with `--append` and
    /// [`test_initrd`] as `--initrd`.
    BytesWith {
        make: fn() -> Vec<u8>,
        append: &'static str,
    },
    /// The showcase Linux guest of `cargo xtask linux` (Debian's kernel, the
    /// busybox initramfs), prepared (downloaded) before the image.
    Linux,
}

/// What the Linux tests type at the shell once `/init` says it is ready:
/// each answer is told apart from the echo of its command (the command
/// line holds `$(`, the answer the value).
const LINUX_INPUT: &str = "uname -r\n\
echo CPUS=$(grep -c processor /proc/cpuinfo)\n\
dmesg | grep -i hypervisor\n\
echo HV_LINES=$(dmesg | grep -ci hypervisor)\n\
echo tmpfs-$((6*7)) > /tmp/f; cat /tmp/f; mount | grep -c ' /tmp type tmpfs'\n\
poweroff -f\n";

/// Whether a console line is the kernel's: `[ seconds.micros] text`
/// (the hypervisor's own are `[LEVEL cpuN] text`).
fn is_kernel_line(l: &str) -> bool {
    l.strip_prefix('[')
        .and_then(|r| r.split_once(']'))
        .is_some_and(|(t, _)| t.trim().parse::<f64>().is_ok())
}

/// Seconds a Linux boot in Bochs may take, with the shell session (about
/// 150 s seen for 1 vCPU on 2 quiet cores).
const LINUX_TIMEOUT: u64 = 900;

/// The Linux shell session's answers: `uname -r` printed the release the
/// kernel's banner names; `dmesg | grep -ci hypervisor` counts as many
/// lines as the boot console showed mentioning a hypervisor (Linux names
/// only hypervisors it knows, "Hypervisor detected: KVM"; for others it
/// says what depends on one, e.g. "GDS: Unknown: Dependent on hypervisor
/// status", as the CPU model's bugs decide); a file written to /tmp (a
/// tmpfs) reads back.
fn linux_shell_check(log: &str) -> Result<(), String> {
    let release = log
        .lines()
        .find_map(|l| l.split("Linux version ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .ok_or("no \"Linux version\" banner")?;
    let lines: Vec<&str> = log.lines().map(|l| l.trim_matches(['\r', ' '])).collect();
    if !lines.contains(&release) {
        return Err(format!("no line with `uname -r`'s answer {release:?}"));
    }
    let hv = lines
        .iter()
        .find_map(|l| l.strip_prefix("HV_LINES="))
        .and_then(|n| n.parse::<u32>().ok())
        .ok_or("no HV_LINES=N answer")?;
    let marker = lines
        .iter()
        .position(|l| *l == crate::linux::MARKER)
        .ok_or("no shell marker")?;
    let console = lines[..marker]
        .iter()
        .filter(|l| is_kernel_line(l) && l.to_ascii_lowercase().contains("hypervisor"))
        .count() as u32;
    if hv != console {
        return Err(format!(
            "dmesg has {hv} lines about a hypervisor, the boot console showed {console}"
        ));
    }
    if !lines.contains(&"tmpfs-42") {
        return Err("the file written to /tmp did not read back".into());
    }
    Ok(())
}

/// What the multiboot kernel tests type at the console, once the kernel
/// says it is ready, and the echoes they expect.
const ECHO_INPUT: &str = "hello, uart\nline 2: 0123456789 abcdefghijklmnopqrstuvwxyz ~!@#$%^&*()\n";
const ECHO_READY: &str = "mbkernel: uart input ready";
const ECHO_1: &str = "mbkernel: echo \"hello, uart\"";
const ECHO_2: &str = "mbkernel: echo \"line 2: 0123456789 abcdefghijklmnopqrstuvwxyz ~!@#$%^&*()\"";

/// The `--initrd` of kernel tests: 5000 bytes that are not all alike.
pub fn test_initrd() -> Vec<u8> {
    (0u32..5000)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8)
        .collect()
}

/// FNV-1a, 32 bits (mbkernel's module hash).
pub fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// A multiboot ELF32 kernel with one PT_LOAD of `filesz` file bytes at
/// `paddr`, cut to `file_len` bytes (`None`: whole).
fn elf32_multiboot(paddr: u32, filesz: u32, file_len: Option<usize>) -> Vec<u8> {
    let mut e = vec![0u8; 0x200];
    e[..7].copy_from_slice(b"\x7fELF\x01\x01\x01");
    let w16 = |e: &mut Vec<u8>, at: usize, v: u16| e[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let w32 = |e: &mut Vec<u8>, at: usize, v: u32| e[at..at + 4].copy_from_slice(&v.to_le_bytes());
    w16(&mut e, 16, 2); // ET_EXEC
    w16(&mut e, 18, 3); // EM_386
    w32(&mut e, 20, 1);
    w32(&mut e, 24, paddr); // e_entry
    w32(&mut e, 28, 52); // e_phoff
    w16(&mut e, 40, 52);
    w16(&mut e, 42, 32);
    w16(&mut e, 44, 1);
    w16(&mut e, 46, 40);
    for (i, v) in [1, 0x100, paddr, paddr, filesz, filesz, 5, 0x1000]
        .into_iter()
        .enumerate()
    {
        w32(&mut e, 52 + 4 * i, v);
    }
    // The multiboot header (page-align, memory info; no address fields).
    let (magic, flags) = (0x1bad_b002u32, 3u32);
    w32(&mut e, 0xc0, magic);
    w32(&mut e, 0xc4, flags);
    w32(&mut e, 0xc8, 0u32.wrapping_sub(magic).wrapping_sub(flags));
    e.resize(0x100, 0);
    e.extend(elf32_code());
    e.resize(0x100 + filesz as usize, 0xf4); // hlt
    if let Some(n) = file_len {
        e.truncate(n);
    }
    e
}

/// 32-bit code: if EAX holds the multiboot magic, print "elf32 multiboot
/// ok" on COM1, else "elf32 bad magic"; then `cli; hlt`.
fn elf32_code() -> Vec<u8> {
    let say = |text: &str| -> Vec<u8> {
        let mut v = Vec::new();
        for b in text.bytes() {
            v.extend([0xb0, b, 0xee]); // mov al, b; out dx, al
        }
        v.extend([0xfa, 0xf4]); // cli; hlt
        v
    };
    let (ok, bad) = (say("elf32 multiboot ok\n"), say("elf32 bad magic\n"));
    let mut c = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    c.push(0x3d); // cmp eax, imm32
    c.extend(0x2bad_b002u32.to_le_bytes());
    c.extend([0x75, ok.len() as u8]); // jne bad
    c.extend(ok);
    c.extend(bad);
    c
}

fn elf32_kernel() -> Vec<u8> {
    elf32_multiboot(0x20_0000, 0x200, None)
}

/// 64-bit code entered at a bzImage's 64-bit entry (GNU as, AT&T syntax):
/// checks CS = 0x10, SS = DS = 0x18, "HdrS" and type_of_loader 0xFF in the
/// zero page at RSI, "RSD PTR " at acpi_rsdp_addr and IF = 0, printing the
/// first failing check's letter; then prints the command line at
/// cmd_line_ptr, ramdisk_size and the initrd's first 4 bytes (in hex) on
/// COM1 and does `cli; hlt`. It uses the stack for `call`.
/// ```text
///     mov $0x3f8,%dx
///     mov %cs,%ax;  mov $'C',%bl; cmp $0x10,%ax; jne bad
///     mov %ss,%ax;  mov $'S',%bl; cmp $0x18,%ax; jne bad
///     mov %ds,%ax;  mov $'D',%bl; cmp $0x18,%ax; jne bad
///     mov $'H',%bl; cmpl $0x53726448,0x202(%rsi); jne bad
///     mov $'T',%bl; cmpb $0xff,0x210(%rsi); jne bad
///     mov $'R',%bl; mov 0x70(%rsi),%rdi; movabs $0x2052545020445352,%rax
///     cmp %rax,(%rdi); jne bad
///     mov $'I',%bl; pushf; pop %rax; test $0x200,%eax; jnz bad
///     lea ok(%rip),%rdi; call puts; mov 0x228(%rsi),%edi; call puts
///     lea rd(%rip),%rdi; call puts; mov 0x21c(%rsi),%eax; call puthex
///     lea first(%rip),%rdi; call puts; mov 0x218(%rsi),%edi; mov (%rdi),%eax
///     call puthex; mov $'\n',%al; out %al,%dx; cli; hlt
/// bad: lea badmsg(%rip),%rdi; call puts; mov %bl,%al; out %al,%dx
///     mov $'\n',%al; out %al,%dx; cli; hlt
/// puts: movb (%rdi),%al; test %al,%al; jz 1f; out %al,%dx; inc %rdi; jmp puts
/// 1:  ret
/// puthex: mov %eax,%r8d; mov $8,%ecx; lea hexd(%rip),%r9
/// 2:  rol $4,%r8d; mov %r8d,%eax; and $0xf,%eax; movb (%r9,%rax),%al
///     out %al,%dx; dec %ecx; jnz 2b; ret
/// ok: .asciz "linux64: entry state ok, cmdline \""; rd: .asciz "\", initrd 0x"
/// first: .asciz " bytes starting 0x"; badmsg: .asciz "linux64: bad entry state: "
/// hexd: .ascii "0123456789abcdef"
/// ```
const LINUX64_CODE: [u8; 360] = [
    0x66, 0xba, 0xf8, 0x03, 0x66, 0x8c, 0xc8, 0xb3, 0x43, 0x66, 0x83, 0xf8, 0x10, 0x0f, 0x85, 0xa3,
    0x00, 0x00, 0x00, 0x66, 0x8c, 0xd0, 0xb3, 0x53, 0x66, 0x83, 0xf8, 0x18, 0x0f, 0x85, 0x94, 0x00,
    0x00, 0x00, 0x66, 0x8c, 0xd8, 0xb3, 0x44, 0x66, 0x83, 0xf8, 0x18, 0x0f, 0x85, 0x85, 0x00, 0x00,
    0x00, 0xb3, 0x48, 0x81, 0xbe, 0x02, 0x02, 0x00, 0x00, 0x48, 0x64, 0x72, 0x53, 0x75, 0x77, 0xb3,
    0x54, 0x80, 0xbe, 0x10, 0x02, 0x00, 0x00, 0xff, 0x75, 0x6c, 0xb3, 0x52, 0x48, 0x8b, 0x7e, 0x70,
    0x48, 0xb8, 0x52, 0x53, 0x44, 0x20, 0x50, 0x54, 0x52, 0x20, 0x48, 0x39, 0x07, 0x75, 0x57, 0xb3,
    0x49, 0x9c, 0x58, 0xa9, 0x00, 0x02, 0x00, 0x00, 0x75, 0x4c, 0x48, 0x8d, 0x3d, 0x89, 0x00, 0x00,
    0x00, 0xe8, 0x54, 0x00, 0x00, 0x00, 0x8b, 0xbe, 0x28, 0x02, 0x00, 0x00, 0xe8, 0x49, 0x00, 0x00,
    0x00, 0x48, 0x8d, 0x3d, 0x95, 0x00, 0x00, 0x00, 0xe8, 0x3d, 0x00, 0x00, 0x00, 0x8b, 0x86, 0x1c,
    0x02, 0x00, 0x00, 0xe8, 0x3f, 0x00, 0x00, 0x00, 0x48, 0x8d, 0x3d, 0x8b, 0x00, 0x00, 0x00, 0xe8,
    0x26, 0x00, 0x00, 0x00, 0x8b, 0xbe, 0x18, 0x02, 0x00, 0x00, 0x8b, 0x07, 0xe8, 0x26, 0x00, 0x00,
    0x00, 0xb0, 0x0a, 0xee, 0xfa, 0xf4, 0x48, 0x8d, 0x3d, 0x80, 0x00, 0x00, 0x00, 0xe8, 0x08, 0x00,
    0x00, 0x00, 0x88, 0xd8, 0xee, 0xb0, 0x0a, 0xee, 0xfa, 0xf4, 0x8a, 0x07, 0x84, 0xc0, 0x74, 0x06,
    0xee, 0x48, 0xff, 0xc7, 0xeb, 0xf4, 0xc3, 0x41, 0x89, 0xc0, 0xb9, 0x08, 0x00, 0x00, 0x00, 0x4c,
    0x8d, 0x0d, 0x72, 0x00, 0x00, 0x00, 0x41, 0xc1, 0xc0, 0x04, 0x44, 0x89, 0xc0, 0x83, 0xe0, 0x0f,
    0x41, 0x8a, 0x04, 0x01, 0xee, 0xff, 0xc9, 0x75, 0xed, 0xc3, 0x6c, 0x69, 0x6e, 0x75, 0x78, 0x36,
    0x34, 0x3a, 0x20, 0x65, 0x6e, 0x74, 0x72, 0x79, 0x20, 0x73, 0x74, 0x61, 0x74, 0x65, 0x20, 0x6f,
    0x6b, 0x2c, 0x20, 0x63, 0x6d, 0x64, 0x6c, 0x69, 0x6e, 0x65, 0x20, 0x22, 0x00, 0x22, 0x2c, 0x20,
    0x69, 0x6e, 0x69, 0x74, 0x72, 0x64, 0x20, 0x30, 0x78, 0x00, 0x20, 0x62, 0x79, 0x74, 0x65, 0x73,
    0x20, 0x73, 0x74, 0x61, 0x72, 0x74, 0x69, 0x6e, 0x67, 0x20, 0x30, 0x78, 0x00, 0x6c, 0x69, 0x6e,
    0x75, 0x78, 0x36, 0x34, 0x3a, 0x20, 0x62, 0x61, 0x64, 0x20, 0x65, 0x6e, 0x74, 0x72, 0x79, 0x20,
    0x73, 0x74, 0x61, 0x74, 0x65, 0x3a, 0x20, 0x00, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37,
    0x38, 0x39, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66,
];

/// A synthetic bzImage of protocol `version` (boot.rst): one setup sector,
/// relocatable, 2 MiB alignment, pref_address 16 MiB, init_size 64 KiB;
/// its protected-mode part holds `hlt`s up to the 64-bit entry at +0x200,
/// then [`LINUX64_CODE`].
fn bzimage(version: u16, xloadflags: u16) -> Vec<u8> {
    let setup = 2 * 512;
    let mut k = vec![0u8; setup + 0x200];
    k[setup..].fill(0xf4);
    k.extend(LINUX64_CODE);
    k.resize(k.len().next_multiple_of(16), 0);
    let put = |k: &mut Vec<u8>, at: usize, v: &[u8]| k[at..at + v.len()].copy_from_slice(v);
    put(&mut k, 0x1f1, &[1]); // setup_sects
    let syssize = ((k.len() - setup) / 16) as u32;
    put(&mut k, 0x1f4, &syssize.to_le_bytes());
    put(&mut k, 0x1fe, &[0x55, 0xaa]);
    put(&mut k, 0x200, &[0xeb, 0x6a]); // the header ends at 0x26c
    put(&mut k, 0x202, b"HdrS");
    put(&mut k, 0x206, &version.to_le_bytes());
    put(&mut k, 0x211, &[0x01]); // loadflags: LOADED_HIGH
    put(&mut k, 0x22c, &0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    put(&mut k, 0x230, &0x20_0000u32.to_le_bytes()); // kernel_alignment
    put(&mut k, 0x234, &[1, 21]); // relocatable_kernel, min_alignment
    put(&mut k, 0x236, &xloadflags.to_le_bytes());
    put(&mut k, 0x238, &0x7ffu32.to_le_bytes()); // cmdline_size
    put(&mut k, 0x258, &0x100_0000u64.to_le_bytes()); // pref_address
    put(&mut k, 0x260, &0x1_0000u32.to_le_bytes()); // init_size
    k
}

/// 32-bit code entered by the PVH ABI (GNU as, AT&T syntax, position
/// independent through EBP): checks the hvm_start_info at EBX (magic,
/// version 1), CR0 (PE, not PG), IF = 0, "RSD " at rsdp_paddr and one
/// module, printing the first failing check's letter; then prints the
/// command line, the memory map's entry count, module 0's size and first 4
/// bytes on COM1 and does `cli; hlt`.
/// ```text
///     call 1f; 1: pop %ebp; sub $(1b - start),%ebp; mov $0x3f8,%dx
///     mov $'M',%cl; cmpl $0x336ec578,(%ebx); jne bad
///     mov $'V',%cl; cmpl $1,4(%ebx); jne bad
///     mov $'P',%cl; mov %cr0,%eax; test $1,%eax; jz bad
///     test $0x80000000,%eax; jnz bad
///     mov $'I',%cl; pushf; pop %eax; test $0x200,%eax; jnz bad
///     mov $'R',%cl; mov 32(%ebx),%edi; cmpl $0x20445352,(%edi); jne bad
///     mov $'N',%cl; cmpl $1,12(%ebx); jne bad
///     lea ok(%ebp),%esi; call puts; mov 24(%ebx),%esi; call puts
///     lea mm(%ebp),%esi; call puts; mov 48(%ebx),%eax; call puthex
///     lea mod(%ebp),%esi; call puts; mov 16(%ebx),%edi; mov 8(%edi),%eax
///     call puthex; lea first(%ebp),%esi; call puts; mov (%edi),%edi
///     mov (%edi),%eax; call puthex; mov $'\n',%al; out %al,%dx; cli; hlt
/// bad: lea badmsg(%ebp),%esi; call puts; mov %cl,%al; out %al,%dx
///     mov $'\n',%al; out %al,%dx; cli; hlt
/// puts: movb (%esi),%al; test %al,%al; jz 2f; out %al,%dx; inc %esi; jmp puts
/// 2:  ret
/// puthex: mov %eax,%ecx; mov $8,%esi
/// 3:  rol $4,%ecx; mov %ecx,%eax; and $0xf,%eax; movb hexd(%ebp,%eax),%al
///     out %al,%dx; dec %esi; jnz 3b; ret
/// ok: .asciz "pvh32: entry state ok, cmdline \""
/// mm: .asciz "\", memmap entries 0x"; mod: .asciz ", module 0 0x"
/// first: .asciz " bytes starting 0x"; badmsg: .asciz "pvh32: bad entry state: "
/// hexd: .ascii "0123456789abcdef"
/// ```
/// (Labels are offsets from `start`, added to EBP.)
const PVH32_CODE: [u8; 360] = [
    0xe8, 0x00, 0x00, 0x00, 0x00, 0x5d, 0x83, 0xed, 0x05, 0x66, 0xba, 0xf8, 0x03, 0xb1, 0x4d, 0x81,
    0x3b, 0x78, 0xc5, 0x6e, 0x33, 0x0f, 0x85, 0x94, 0x00, 0x00, 0x00, 0xb1, 0x56, 0x83, 0x7b, 0x04,
    0x01, 0x0f, 0x85, 0x88, 0x00, 0x00, 0x00, 0xb1, 0x50, 0x0f, 0x20, 0xc0, 0xa9, 0x01, 0x00, 0x00,
    0x00, 0x74, 0x7c, 0xa9, 0x00, 0x00, 0x00, 0x80, 0x75, 0x75, 0xb1, 0x49, 0x9c, 0x58, 0xa9, 0x00,
    0x02, 0x00, 0x00, 0x75, 0x6a, 0xb1, 0x52, 0x8b, 0x7b, 0x20, 0x81, 0x3f, 0x52, 0x53, 0x44, 0x20,
    0x75, 0x5d, 0xb1, 0x4e, 0x83, 0x7b, 0x0c, 0x01, 0x75, 0x55, 0x8d, 0xb5, 0xe8, 0x00, 0x00, 0x00,
    0xe8, 0x5d, 0x00, 0x00, 0x00, 0x8b, 0x73, 0x18, 0xe8, 0x55, 0x00, 0x00, 0x00, 0x8d, 0xb5, 0x09,
    0x01, 0x00, 0x00, 0xe8, 0x4a, 0x00, 0x00, 0x00, 0x8b, 0x43, 0x30, 0xe8, 0x4d, 0x00, 0x00, 0x00,
    0x8d, 0xb5, 0x1e, 0x01, 0x00, 0x00, 0xe8, 0x37, 0x00, 0x00, 0x00, 0x8b, 0x7b, 0x10, 0x8b, 0x47,
    0x08, 0xe8, 0x37, 0x00, 0x00, 0x00, 0x8d, 0xb5, 0x2c, 0x01, 0x00, 0x00, 0xe8, 0x21, 0x00, 0x00,
    0x00, 0x8b, 0x3f, 0x8b, 0x07, 0xe8, 0x23, 0x00, 0x00, 0x00, 0xb0, 0x0a, 0xee, 0xfa, 0xf4, 0x8d,
    0xb5, 0x3f, 0x01, 0x00, 0x00, 0xe8, 0x08, 0x00, 0x00, 0x00, 0x88, 0xc8, 0xee, 0xb0, 0x0a, 0xee,
    0xfa, 0xf4, 0x8a, 0x06, 0x84, 0xc0, 0x74, 0x04, 0xee, 0x46, 0xeb, 0xf6, 0xc3, 0x89, 0xc1, 0xbe,
    0x08, 0x00, 0x00, 0x00, 0xc1, 0xc1, 0x04, 0x89, 0xc8, 0x83, 0xe0, 0x0f, 0x8a, 0x84, 0x05, 0x58,
    0x01, 0x00, 0x00, 0xee, 0x4e, 0x75, 0xed, 0xc3, 0x70, 0x76, 0x68, 0x33, 0x32, 0x3a, 0x20, 0x65,
    0x6e, 0x74, 0x72, 0x79, 0x20, 0x73, 0x74, 0x61, 0x74, 0x65, 0x20, 0x6f, 0x6b, 0x2c, 0x20, 0x63,
    0x6d, 0x64, 0x6c, 0x69, 0x6e, 0x65, 0x20, 0x22, 0x00, 0x22, 0x2c, 0x20, 0x6d, 0x65, 0x6d, 0x6d,
    0x61, 0x70, 0x20, 0x65, 0x6e, 0x74, 0x72, 0x69, 0x65, 0x73, 0x20, 0x30, 0x78, 0x00, 0x2c, 0x20,
    0x6d, 0x6f, 0x64, 0x75, 0x6c, 0x65, 0x20, 0x30, 0x20, 0x30, 0x78, 0x00, 0x20, 0x62, 0x79, 0x74,
    0x65, 0x73, 0x20, 0x73, 0x74, 0x61, 0x72, 0x74, 0x69, 0x6e, 0x67, 0x20, 0x30, 0x78, 0x00, 0x70,
    0x76, 0x68, 0x33, 0x32, 0x3a, 0x20, 0x62, 0x61, 0x64, 0x20, 0x65, 0x6e, 0x74, 0x72, 0x79, 0x20,
    0x73, 0x74, 0x61, 0x74, 0x65, 0x3a, 0x20, 0x00, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37,
    0x38, 0x39, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66,
];

/// A synthetic PVH kernel shaped like an uncompressed vmlinux: ELF64
/// `ET_EXEC`, one PT_LOAD linked at 0xffffffff80200000 and loaded at its
/// p_paddr 0x200000 holding [`PVH32_CODE`], and a PT_NOTE with a "Xen"
/// XEN_ELFNOTE_PHYS32_ENTRY (18) note of 8 bytes naming 0x200000.
fn pvh_kernel() -> Vec<u8> {
    let code_at = 0x200usize;
    let mut e = vec![0u8; code_at];
    e.extend(PVH32_CODE);
    let put = |e: &mut Vec<u8>, at: usize, v: &[u8]| e[at..at + v.len()].copy_from_slice(v);
    put(&mut e, 0, b"\x7fELF\x02\x01\x01");
    put(&mut e, 16, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut e, 18, &62u16.to_le_bytes()); // EM_X86_64
    put(&mut e, 20, &1u32.to_le_bytes());
    put(&mut e, 24, &0xffff_ffff_8020_0000u64.to_le_bytes()); // e_entry
    put(&mut e, 32, &0x40u64.to_le_bytes()); // e_phoff
    put(&mut e, 52, &[64, 0, 56, 0, 2, 0]); // e_ehsize, e_phentsize, e_phnum
                                            // PT_LOAD, R X.
    let len = PVH32_CODE.len() as u64;
    put(&mut e, 0x40, &[1, 0, 0, 0, 5, 0, 0, 0]);
    put(&mut e, 0x48, &(code_at as u64).to_le_bytes());
    put(&mut e, 0x50, &0xffff_ffff_8020_0000u64.to_le_bytes());
    put(&mut e, 0x58, &0x20_0000u64.to_le_bytes());
    put(&mut e, 0x60, &len.to_le_bytes());
    put(&mut e, 0x68, &(len + 0x1000).to_le_bytes()); // some bss
    put(&mut e, 0x70, &0x1000u64.to_le_bytes());
    // PT_NOTE at 0x100: namesz 4, descsz 8, type 18, "Xen\0", the entry.
    put(&mut e, 0x78, &[4, 0, 0, 0, 4, 0, 0, 0]);
    put(&mut e, 0x80, &0x100u64.to_le_bytes());
    put(&mut e, 0x98, &24u64.to_le_bytes());
    put(&mut e, 0xa0, &24u64.to_le_bytes());
    put(&mut e, 0xa8, &4u64.to_le_bytes());
    put(&mut e, 0x100, &[4, 0, 0, 0, 8, 0, 0, 0, 18, 0, 0, 0]);
    put(&mut e, 0x10c, b"Xen\0");
    put(&mut e, 0x110, &0x20_0000u64.to_le_bytes());
    e
}

fn linux_entry_kernel() -> Vec<u8> {
    bzimage(0x020f, 0x3)
}

fn linux_protocol_2_11() -> Vec<u8> {
    bzimage(0x020b, 0x3)
}

fn linux_no_64_bit_entry() -> Vec<u8> {
    bzimage(0x020f, 0x2)
}

fn not_a_kernel() -> Vec<u8> {
    b"#!/bin/sh\necho this is a shell script, not a kernel\n".repeat(200)
}

fn truncated_elf() -> Vec<u8> {
    elf32_multiboot(0x10_0000, 0x1000, Some(0x800))
}

fn load_outside_ram() -> Vec<u8> {
    // 1 GiB, far above the 128 MiB of RAM.
    elf32_multiboot(0x4000_0000, 0x100, None)
}

impl TestKernel {
    /// Makes the kernel's files in `dir` and returns `g` pointing at them.
    fn materialize(&self, root: &Path, dir: &Path, mut g: GuestSpec) -> Result<GuestSpec> {
        let k = match *self {
            TestKernel::Built { program, append } => {
                let path = artifacts::build_guest(root, program)?;
                let initrd = test_initrd();
                let initrd_path = dir.join("initrd.bin");
                std::fs::write(&initrd_path, &initrd)?;
                let append = format!(
                    "{append} expect_mem={} initrd_len={} initrd_sum={:#x}",
                    g.mem_mib,
                    initrd.len(),
                    fnv1a(&initrd)
                );
                KernelSpec::new(path, append, Some(initrd_path))
            }
            TestKernel::Bytes(make) => {
                let path = dir.join(&g.guest);
                std::fs::write(&path, make())?;
                KernelSpec::new(path, String::new(), None)
            }
            TestKernel::BytesWith { make, append } => {
                let path = dir.join(&g.guest);
                std::fs::write(&path, make())?;
                let initrd_path = dir.join("initrd.bin");
                std::fs::write(&initrd_path, test_initrd())?;
                KernelSpec::new(path, append.into(), Some(initrd_path))
            }
            TestKernel::Linux => {
                let l = crate::linux::prepare(root)?;
                KernelSpec::new(l.kernel, crate::linux::APPEND.into(), Some(l.initrd))
            }
        };
        k.check_files()?;
        g.kernel = Some(k);
        Ok(g)
    }
}

fn guest(name: &str, mem_mib: u64, slots: u32) -> GuestSpec {
    // cpus is set from the case.
    GuestSpec::new(name, mem_mib, slots)
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The SUMMARY of a log, read into the hypervisor's schema.
pub fn summary(log: &str) -> Result<Summary, String> {
    summary_of(log).map_err(|e| format!("{e:#}"))
}

/// memtouch touches every page of guest RAM once: one EPT violation and one
/// mapping per page, no more, no less.
/// The SUMMARY carries the guest's isa-debug-exit code, 0, and vCPU 1
/// left the guest through the kick (an external-interrupt exit).
fn exit_code_0_check(log: &str) -> Result<(), String> {
    let s = summary(log)?;
    if s.exit_code != Some(0) {
        return Err(format!(
            "SUMMARY exit_code is {:?}, not Some(0)",
            s.exit_code
        ));
    }
    let kicked = s
        .vcpu
        .get(1)
        .and_then(|v| v.exits.get("external interrupt"))
        .copied()
        .unwrap_or(0);
    if kicked == 0 {
        return Err("vCPU 1 stopped without the kick (no external-interrupt exit)".into());
    }
    Ok(())
}

fn memtouch_check(log: &str) -> Result<(), String> {
    let s = summary(log)?;
    let pages = s.mem_pages;
    let faults: u64 = s
        .vcpu
        .iter()
        .map(|v| v.exits.get("EPT violation").copied().unwrap_or(0))
        .sum();
    let mapped: u64 = s.vcpu.iter().map(|v| v.ept_mapped).sum();
    let spurious: u64 = s.vcpu.iter().map(|v| v.ept_spurious).sum();
    if mapped != pages || faults != pages + spurious || s.ept.leaves_4k != pages {
        return Err(format!(
            "{pages} guest pages, but {faults} EPT violations ({spurious} already resolved) and {mapped} pages mapped"
        ));
    }
    Ok(())
}

/// memtouch over 64 MiB in one slot with `--ept-pages 2m`: the slot's
/// aligned 2 MiB ranges are mapped whole, so populating takes at most 1/100
/// of the EPT violations of 4 KiB pages (one per page, `memtouch_check`).
fn memtouch_2m_check(log: &str) -> Result<(), String> {
    let s = summary(log)?;
    all_vcpus_pass(&s, 1)?;
    let pages = s.mem_pages;
    let faults: u64 = s
        .vcpu
        .iter()
        .map(|v| v.exits.get("EPT violation").copied().unwrap_or(0))
        .sum();
    let covered = s.ept.leaves_4k + 512 * s.ept.leaves_2m;
    if s.ept.leaves_2m == 0 || covered != pages {
        return Err(format!(
            "{pages} guest pages, EPT maps {covered} ({} 2 MiB leaves)",
            s.ept.leaves_2m
        ));
    }
    if faults * 100 > pages {
        return Err(format!(
            "{faults} EPT violations for {pages} pages: more than 1/100 of the 4 KiB count"
        ));
    }
    Ok(())
}

/// Every vCPU reported PASS and shut down cleanly.
fn all_vcpus_pass(s: &Summary, want: usize) -> Result<(), String> {
    if s.vcpu.len() != want {
        return Err(format!("{} vCPUs ran, {want} expected", s.vcpu.len()));
    }
    for v in &s.vcpu {
        if v.status != "ok" || v.report.is_none_or(|r| r.status != 0) {
            return Err(format!(
                "vCPU {} did not pass: status {:?}, guest report {:?}",
                v.id, v.status, v.report
            ));
        }
    }
    Ok(())
}

/// Four vCPUs touch every page between them: each page mapped exactly once.
fn smp_memtouch_check(log: &str) -> Result<(), String> {
    all_vcpus_pass(&summary(log)?, 4)?;
    memtouch_check(log)
}

/// Two vCPUs fault on the same pages at once: both go on, each page is
/// mapped once, and the race really happened (some faults found the page
/// already mapped by the other vCPU).
fn pagerace_check(log: &str) -> Result<(), String> {
    let s = summary(log)?;
    all_vcpus_pass(&s, 2)?;
    let mapped: u64 = s.vcpu.iter().map(|v| v.ept_mapped).sum();
    let spurious: u64 = s.vcpu.iter().map(|v| v.ept_spurious).sum();
    let leaves = s.ept.leaves_4k;
    if mapped != leaves {
        return Err(format!(
            "vCPUs mapped {mapped} pages but the EPT holds {leaves}: a page was mapped twice"
        ));
    }
    if spurious == 0 {
        return Err("no fault found its page already mapped: the vCPUs never raced".into());
    }
    Ok(())
}

/// Sync dirty logging: every iteration's dirty pages equal the pages written.
fn dirty_sync_check(log: &str) -> Result<(), String> {
    let s = summary(log)?;
    all_vcpus_pass(&s, 2)?;
    let d = s.dirty_log.as_ref().ok_or("no dirty_log in the SUMMARY")?;
    let mut iterations = 0;
    for p in d.phases.iter().filter(|p| p.name.ends_with("dirty memory")) {
        iterations += 1;
        let (w, dd) = (p.pages_written, p.pages_dirty);
        if w.is_none() || w != dd || w == Some(0) {
            return Err(format!("{}: pages written {w:?}, dirty {dd:?}", p.name));
        }
    }
    if iterations != 3 {
        return Err(format!("{iterations} iterations, 3 expected"));
    }
    Ok(())
}

/// Concurrent dirty logging: the shadow copy kept from the log equals memory.
fn dirty_concurrent_check(log: &str) -> Result<(), String> {
    exact_with_vcpus(log, 2)
}

/// The memslot stress test: 4 vCPUs, and the concurrent run's exactness.
/// Most HLT exits one vCPU of the multiboot kernel may take: it sleeps
/// through its idle time (tens of exits, one per wake-up), where a HLT that
/// returned at once would take hundreds of thousands.
const MAX_HLT_EXITS: u64 = 100;

/// Every vCPU of the run slept in HLT rather than spun through it.
fn hlt_sleeps(log: &str) -> Result<(), String> {
    let s = summary(log)?;
    for v in &s.vcpu {
        let hlt = v.exits.get("HLT").copied().unwrap_or(0);
        if hlt > MAX_HLT_EXITS {
            return Err(format!(
                "vCPU {} took {hlt} HLT exits (at most {MAX_HLT_EXITS}): HLT does not sleep",
                v.id
            ));
        }
    }
    Ok(())
}

fn memslot_stress_check(log: &str) -> Result<(), String> {
    exact_with_vcpus(log, 4)
}

/// Every one of `vcpus` vCPUs passed, and the shadow copy of a concurrent
/// dirty-log run equals guest memory.
fn exact_with_vcpus(log: &str, vcpus: usize) -> Result<(), String> {
    let s = summary(log)?;
    all_vcpus_pass(&s, vcpus)?;
    let d = s.dirty_log.as_ref().ok_or("no dirty_log in the SUMMARY")?;
    match d.mismatches {
        Some(0) if d.ok => Ok(()),
        m => Err(format!(
            "shadow copy differs from guest memory on {m:?} page(s): a write was lost"
        )),
    }
}

/// Concurrent dirty logging with 2 MiB pages: populating took one fault per
/// 2 MiB (not per page), and after logging split them the shadow copy still
/// equals memory.
fn dirty_2m_check(log: &str) -> Result<(), String> {
    dirty_concurrent_check(log)?;
    let s = summary(log)?;
    let d = s.dirty_log.as_ref().ok_or("no dirty_log in the SUMMARY")?;
    let populate = d
        .phases
        .iter()
        .find(|p| p.name == "Populate memory")
        .ok_or("no \"Populate memory\" phase")?;
    let pages = d.pages_per_vcpu * s.vcpu.len() as u64;
    if populate.ept_violations * 100 > pages {
        return Err(format!(
            "populating {pages} pages took {} EPT violations: 2 MiB pages were not used",
            populate.ept_violations
        ));
    }
    Ok(())
}

impl Case {
    /// A BIOS boot in Bochs with one CPU and the default model; no panic or
    /// exception may show in the log.
    fn bochs(name: impl Into<String>, guest: GuestSpec, verdict: Verdict) -> Case {
        Case {
            name: name.into(),
            guest,
            features: &[],
            backend: Backend::Bochs,
            firmware: Firmware::Bios,
            cpus: 1,
            cpu_model: None,
            timeout: 300,
            verdict,
            contains: Vec::new(),
            absent: strings(&["PANIC", "EXCEPTION"]),
            check: None,
            kernel: None,
            input: Input::None,
        }
    }

    /// A kernel run in Bochs: `file` names the kernel file in the log.
    fn kernel(name: &str, file: &str, kernel: TestKernel, verdict: Verdict) -> Case {
        let k = KernelSpec::new(PathBuf::from(file), String::new(), None);
        Case {
            kernel: Some(kernel),
            timeout: 240,
            ..Case::bochs(name, GuestSpec::kernel(k, KERNEL_DEFAULT_MIB, 1), verdict)
        }
    }

    /// A QEMU TCG boot of the smoke image, which must end in a failure.
    fn qemu(name: &str, firmware: Firmware) -> Case {
        Case {
            backend: Backend::Qemu,
            firmware,
            timeout: 180,
            ..Case::bochs(name, guest("smoke", 16, 1), Verdict::Failure)
        }
    }

    fn contains(mut self, s: &[&str]) -> Case {
        self.contains.extend(strings(s));
        self
    }

    fn absent(mut self, s: &[&str]) -> Case {
        self.absent.extend(strings(s));
        self
    }

    fn check(mut self, f: LogCheck) -> Case {
        self.check = Some(f);
        self
    }

    /// Types `text` into COM1 once the log shows `after`.
    fn input(mut self, text: &str, after: &str) -> Case {
        self.input = Input::Script {
            bytes: text.as_bytes().to_vec(),
            after: Some(after.to_string()),
        };
        self
    }

    fn timeout(mut self, secs: u64) -> Case {
        self.timeout = secs;
        self
    }

    fn cpus(mut self, n: u32) -> Case {
        self.cpus = n;
        self.timeout = 600;
        self
    }
}

pub fn cases() -> Vec<Case> {
    use Verdict::{Failure, Success};
    let mut v = Vec::new();
    // Debian's stock kernel with the busybox initramfs (`cargo xtask
    // linux`, prepared first): it boots to the shell, the shell answers
    // commands typed at the console, and `poweroff -f` (ACPI S5) ends the
    // run cleanly. First: the longest runs start first on the two
    // workers, so that the short ones fill in beside them.
    for cpus in [1u32, 2] {
        v.push(
            Case::kernel(
                &format!("bochs-linux-shell-{cpus}"),
                "vmlinuz",
                TestKernel::Linux,
                Success,
            )
            .cpus(cpus)
            .timeout(LINUX_TIMEOUT)
            .input(LINUX_INPUT, crate::linux::MARKER)
            .contains(&[
                "Linux version ",
                crate::linux::MARKER,
                if cpus == 1 { "CPUS=1" } else { "CPUS=2" },
                "powered off",
            ])
            .absent(&["Kernel panic", "CONTAINED", "VM entry failed", "Call Trace"])
            .check(linux_shell_check),
        );
    }
    for model in ["corei7_skylake_x", "tigerlake", "corei7_haswell_4770"] {
        let mut c = Case::bochs(
            format!("bochs-{model}-smoke"),
            guest("smoke", 16, 1),
            Success,
        )
        .contains(&[
            "IA32_VMX_BASIC",
            "VMXON ok",
            "hello from the guest",
            "signature \"RustHyperVMX\"",
            "vcpu0: guest reports PASS",
            "VMXOFF ok",
        ])
        .absent(&["CONTAINED"]);
        c.cpu_model = Some(model);
        v.push(c);
    }
    for slots in [1, 8, 64] {
        v.push(
            Case::bochs(
                format!("bochs-memtouch-{slots}-slots"),
                guest("memtouch", 16, slots),
                Success,
            )
            .contains(&["vcpu0: guest reports PASS"])
            .absent(&["CONTAINED"])
            .check(memtouch_check),
        );
    }
    let mut huge = guest("memtouch", 64, 1);
    huge.ept_pages = hypervisor::mm::fault::EptPages::Allow2M;
    v.push(
        Case::bochs("bochs-memtouch-64m-2m-pages", huge, Success)
            .contains(&["vcpu0: guest reports PASS"])
            .absent(&["CONTAINED"])
            .check(memtouch_2m_check),
    );
    v.push(
        Case::bochs("bochs-unbacked-contained", guest("unbacked", 16, 4), Failure)
            .contains(&["vcpu0: CONTAINED: access to memory no memslot backs: gpa=0x1100000 gfn=0x1100 access=write rip="])
            .absent(&["FAIL: write to unbacked memory was not contained"]),
    );
    v.push(
        Case::bochs("bochs-hostile-guest", guest("hostile", 16, 1), Success)
            .contains(&[
                "hostile: RDMSR 0x1234 (not allowed): #GP",
                "hostile: WRMSR IA32_EFER with reserved bit 3: #GP",
                "hostile: VMXON: #UD",
                "hostile: MOV CR4 setting VMXE: #GP",
                "hostile: MOV CR0 clearing NE: no exception",
                "vcpu0: guest reports PASS",
            ])
            .absent(&["CONTAINED"]),
    );
    v.push(
        Case::bochs("bochs-mmio-emulated", guest("mmio", 16, 1), Success)
            .contains(&[
                "mmio: mov [moffs64], rax: ok",
                "mmio: or/and/lock xor/add/sub dword [m]: ok",
                "mmio: PASS (17 checks)",
                "vcpu0: guest reports PASS",
            ])
            .absent(&["CONTAINED", "FAIL"]),
    );
    v.push(
        Case::bochs(
            "bochs-pc-devices-debug-exit",
            guest("pcdevices", 16, 1),
            Success,
        )
        .cpus(2)
        .contains(&[
            "[vcpu0] pcdevices: PASS",
            "vcpu0: ended: guest exit code 0 (0x0)",
            "vcpu1: ended: guest exit code 0 (0x0)",
            "guest exit code (isa-debug-exit): 0 (0x0); a pass",
        ])
        .absent(&["CONTAINED", "pcdevices: FAIL"])
        .check(exit_code_0_check),
    );
    // The watchdog: a guest that loops with interrupts off makes no VM
    // exit; after 1 s of guest time the hypervisor reports where it is.
    let mut spin = guest("spin", 16, 1);
    spin.watchdog_ms = 1000;
    v.push(
        Case::bochs("bochs-watchdog-spin", spin, Failure)
            .contains(&[
                "[vcpu0] spin: vCPU 0: looping with interrupts off",
                "vcpu0: ended: WATCHDOG: vCPU 0 made no VM exit for 1000 ms: rip=",
                "64-bit mode, 4-level paging, interrupts off",
            ])
            .absent(&["CONTAINED", "FATAL"]),
    );
    let mut ro = guest("memtouch", 16, 4);
    ro.readonly_slot = Some(3);
    // memtouch writes upwards: its first write into slot 3 is at 12 MiB.
    v.push(
        Case::bochs("bochs-readonly-slot-contained", ro, Failure)
            .contains(&["vcpu0: CONTAINED: write to a read-only memslot: gpa=0xc00000 gfn=0xc00 slot=3 access=write rip="])
            .absent(&["guest reports PASS"]),
    );
    v.push(
        Case::bochs(
            "bochs-smp-4-vcpus-memtouch",
            guest("memtouch", 16, 4),
            Success,
        )
        .cpus(4)
        .contains(&["vcpu3: guest reports PASS"])
        .absent(&["CONTAINED", "did not start"])
        .check(smp_memtouch_check),
    );
    v.push(
        Case::bochs("bochs-smp-pagerace", guest("pagerace", 16, 2), Success)
            .cpus(2)
            .contains(&["vcpu1: guest reports PASS"])
            .absent(&["CONTAINED"])
            .check(pagerace_check),
    );
    for (mode, check) in [
        ("sync", dirty_sync_check as LogCheck),
        ("concurrent", dirty_concurrent_check),
    ] {
        let mut g = guest("dirtylog", 2, 4);
        g.iterations = 3;
        g.bytes_per_vcpu = 0x40000;
        g.dirty_concurrent = mode == "concurrent";
        v.push(
            Case::bochs(format!("bochs-dirty-log-{mode}"), g, Success)
                .cpus(2)
                .contains(&["Iteration 3 dirty memory time"])
                .absent(&["CONTAINED"])
                .check(check),
        );
    }
    // KVM's memslot_modification_stress_test: 4 vCPUs write their memory
    // (concurrent dirty log) while the controller adds and deletes a slot
    // 1000 times per iteration; memory and dirty logs must stay exact.
    let mut g = guest("dirtylog", 2, 4);
    g.iterations = 3;
    g.bytes_per_vcpu = 0x40000;
    g.dirty_concurrent = true;
    g.slot_churn = 1000;
    v.push(
        Case::bochs("bochs-memslot-stress", g, Success)
            .cpus(4)
            .contains(&[
                "memslot churn: 3000 add/delete cycles of a 64 KiB slot",
                "Iteration 3 dirty memory time",
            ])
            .absent(&["CONTAINED", "FAILED"])
            .check(memslot_stress_check),
    );
    // The project's multiboot kernel on the three CPU models. It ends by
    // writing its result to isa-debug-exit (port 0xF4): 0 ends the run
    // with success. Two lines are typed at its console (COM1, by
    // interrupt) and echoed.
    for model in ["corei7_skylake_x", "tigerlake", "corei7_haswell_4770"] {
        let mut c = Case::kernel(
            &format!("bochs-{model}-multiboot"),
            "mbkernel",
            TestKernel::Built {
                program: "mbkernel",
                append: "some words echo_lines=2",
            },
            Success,
        )
        .input(ECHO_INPUT, ECHO_READY)
        .contains(&[
            "multiboot: kernel at [0x100000,",
            "mbkernel: in 64-bit mode",
            "mbkernel: cmdline \"mbkernel some words echo_lines=2 expect_mem=128 initrd_len=5000 initrd_sum=0x",
            "mbkernel: module 0 [",
            "mbkernel: ok entry",
            "mbkernel: ok module",
            "mbkernel: ok uart",
            "mbkernel: ok exceptions",
            "mbkernel: ok eptframe",
            "mbkernel: ok fwcfg",
            "mbkernel: MP table at 0xf0010: 1 processor(s), 20 entries",
            "mbkernel: ok mptable",
            "mbkernel: ok xsetbv",
            "mbkernel: ok cr8",
            "mbkernel: ok msrs",
            "mbkernel: ok lapic",
            "mbkernel: ok pci",
            "mbkernel: CPUID 0x15: TSC ",
            "mbkernel: ok apictimer",
            "mbkernel: ok pit",
            ECHO_1,
            ECHO_2,
            "mbkernel: UART input: 2 lines, 70 bytes,",
            "mbkernel: ok uartirq",
            "mbkernel: 70 self-IPIs sent by MMIO writes, each delivered once",
            "mbkernel: ok mmioirq",
            "mbkernel: one vCPU: SMP not checked",
            "mbkernel: ok smp",
            "mbkernel: ok modeswitch",
            "mbkernel: RESULT PASS (21 checks)",
        ])
        .absent(&["mbkernel: FAIL", "mbkernel: skip", "VM entry failed"])
        .check(hlt_sleeps);
        c.cpu_model = Some(model);
        v.push(c);
    }
    // The same kernel on 2 and 4 vCPUs: only vCPU 0 starts; the kernel
    // starts the others with INIT-SIPI-SIPI into its real-mode trampoline,
    // ping-pongs fixed IPIs with APIC 1 and sends it an NMI. The idle APs
    // sleep in HLT (a few exits each, not a spin).
    for cpus in [2u32, 4] {
        v.push(
            Case::kernel(
                &format!("bochs-multiboot-smp-{cpus}"),
                "mbkernel",
                TestKernel::Built {
                    program: "mbkernel",
                    append: if cpus == 2 {
                        "smp expect_cpus=2 echo_lines=2"
                    } else {
                        "smp expect_cpus=4 echo_lines=2"
                    },
                },
                Success,
            )
            .cpus(cpus)
            .input(ECHO_INPUT, ECHO_READY)
            .contains(&[
                "mbkernel: ok fwcfg",
                "mbkernel: ok mptable",
                ECHO_1,
                ECHO_2,
                "mbkernel: ok uartirq",
                "mbkernel: ok mmioirq",
                "APs in 64-bit mode",
                "mbkernel: 10 IPI round trips with APIC 1 (10 pings, 10 pongs), 1 NMI",
                "mbkernel: ok smp",
                "mbkernel: RESULT PASS (21 checks)",
            ])
            .check(hlt_sleeps)
            .absent(&["mbkernel: FAIL", "VM entry failed", "CONTAINED"]),
        );
    }
    // The ELF32 path of the multiboot loader, entered in 32-bit mode.
    v.push(
        Case::kernel(
            "bochs-kernel-elf32",
            "elf32.bin",
            TestKernel::Bytes(elf32_kernel),
            Failure,
        )
        .contains(&[
            "multiboot: kernel at [0x200000, 0x200200), entry 0x200000",
            "elf32 multiboot ok",
            "HLT with interrupts disabled",
        ])
        .absent(&["bad magic"]),
    );
    // The Linux boot protocol's 64-bit entry: the synthetic bzImage checks
    // its entry state and prints what the zero page hands it.
    v.push(
        Case::kernel(
            "bochs-kernel-linux-entry",
            "bzimage.bin",
            TestKernel::BytesWith {
                make: linux_entry_kernel,
                append: "console=ttyS0 some words",
            },
            Failure,
        )
        .contains(&[
            "linux: boot protocol 2.15, kernel at [0x1000000, 0x1010000) (init_size), entry \
             0x1000200 in 64-bit mode, zero page at 0x7000, command line at 0x20000, initrd at \
             [0x7ffe000, 0x7fff388)",
            "linux64: entry state ok, cmdline \"console=ttyS0 some words\", initrd \
             0x00001388 bytes starting 0x5d3e1f00",
            "HLT with interrupts disabled",
        ])
        .absent(&["bad entry state"]),
    );
    // The PVH ABI: the synthetic vmlinux-shaped ELF checks its entry state
    // and prints what the start info hands it.
    v.push(
        Case::kernel(
            "bochs-kernel-pvh-entry",
            "pvh.elf",
            TestKernel::BytesWith {
                make: pvh_kernel,
                append: "console=ttyS0 pvh words",
            },
            Failure,
        )
        .contains(&[
            "pvh: kernel at [0x200000, 0x201168), entry 0x200000 in 32-bit protected mode, start \
             info at 0x1000, initrd at [0x7ffe000, 0x7fff388)",
            "pvh32: entry state ok, cmdline \"console=ttyS0 pvh words\", memmap entries \
             0x00000006, module 0 0x00001388 bytes starting 0x5d3e1f00",
            "HLT with interrupts disabled",
        ])
        .absent(&["bad entry state"]),
    );
    for (name, make, says) in [
        (
            "linux-protocol-2.11",
            linux_protocol_2_11 as fn() -> Vec<u8>,
            "kernel: Linux boot protocol 2.11 is too old: the 64-bit entry needs protocol 2.12 \
             or later (xloadflags)",
        ),
        (
            "linux-no-64-bit-entry",
            linux_no_64_bit_entry,
            "kernel: Linux kernel has no 64-bit entry (xloadflags 0x0002 without XLF_KERNEL_64)",
        ),
        (
            "not-a-kernel",
            not_a_kernel,
            "kernel: not a kernel this hypervisor boots: no multiboot header in the first 8 KiB",
        ),
        (
            "truncated-elf",
            truncated_elf,
            "kernel: multiboot kernel is truncated: a PT_LOAD segment ends at file offset 0x1100",
        ),
        (
            "load-outside-ram",
            load_outside_ram,
            "kernel: multiboot kernel loads [0x40000000, 0x40000100) outside usable RAM",
        ),
    ] {
        v.push(
            Case::kernel(
                &format!("bochs-kernel-refused-{name}"),
                &format!("{name}.bin"),
                TestKernel::Bytes(make),
                Failure,
            )
            .contains(&[says, "could not build the VM", "HV RESULT: FAILURE"])
            .absent(&["VMLAUNCH", "[vcpu0]"]),
        );
    }
    let mut g = guest("dirtylog", 2, 1);
    g.iterations = 3;
    g.bytes_per_vcpu = 0x20_0000;
    g.dirty_concurrent = true;
    g.ept_pages = hypervisor::mm::fault::EptPages::Allow2M;
    v.push(
        Case::bochs("bochs-dirty-log-concurrent-2m-pages", g, Success)
            .cpus(2)
            .contains(&["Iteration 3 dirty memory time"])
            .absent(&["CONTAINED"])
            .check(dirty_2m_check),
    );
    let refusal = "VMX is not available on this CPU:";
    v.push(
        Case::qemu("qemu-tcg-bios-refuses", Firmware::Bios)
            .contains(&[refusal])
            .absent(&["VMXON ok"]),
    );
    v.push(
        Case::qemu("qemu-tcg-uefi-refuses", Firmware::Uefi)
            .contains(&["hypervisor 0.1.0 starting", refusal])
            .absent(&["VMXON ok"]),
    );
    let mut panic = Case::qemu("qemu-forced-panic", Firmware::Bios);
    panic.features = &["force-panic"];
    // The panic itself is the expected end here.
    panic.absent = strings(&["HV RESULT: SUCCESS", "EXCEPTION"]);
    v.push(panic.contains(&["PANIC at", "forced panic"]));
    v
}

/// Checks one finished run against its case. Returns the problems found.
pub fn judge(case: &Case, verdict: Verdict, log: &str) -> Vec<String> {
    let mut bad = Vec::new();
    if verdict != case.verdict {
        bad.push(format!("verdict {verdict:?}, expected {:?}", case.verdict));
    }
    for s in &case.contains {
        if !log.contains(s.as_str()) {
            bad.push(format!("log lacks {s:?}"));
        }
    }
    for s in &case.absent {
        if log.contains(s.as_str()) {
            bad.push(format!("log has {s:?}"));
        }
    }
    if let Some(check) = case.check {
        if let Err(e) = check(log) {
            bad.push(e);
        }
    }
    bad
}

fn host_tests(root: &Path) -> Result<()> {
    eprintln!("== host tests (cargo test --workspace)");
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(root)
            .args(["test", "--workspace"])
            .status()
            .context("running cargo test")?;
    anyhow::ensure!(status.success(), "host tests failed");
    Ok(())
}

pub fn cmd_test(a: &TestArgs) -> Result<i32> {
    let root = workspace::root()?;
    let (host_only, filter) = (a.host_only, a.filter.as_deref());
    let start = Instant::now();
    setup::ensure_toolchain(&root)?;
    host_tests(&root)?;
    eprintln!("== speculation check (index_nospec and the lookup hit path)");
    let report = nospec::run(&root)?;
    eprintln!("{}", report.lines().next().unwrap_or(""));
    if host_only {
        return Ok(0);
    }

    let cases: Vec<Case> = cases()
        .into_iter()
        .filter(|c| filter.is_none_or(|f| c.name.contains(f)))
        .collect();
    let mut needs = Vec::new();
    for c in &cases {
        needs.extend(emu::needs(c.backend, c.firmware));
    }
    setup::ensure(&needs)?;

    // Build everything once, up front, sequentially: cargo serialises anyway.
    eprintln!("== building images for {} emulator tests", cases.len());
    let loader = artifacts::build_loader(&root)?;
    let mut guests = std::collections::BTreeMap::new();
    let mut kernels = std::collections::BTreeMap::new();
    let base = artifacts::work_dir(&root).join("tests");
    for c in &cases {
        if !kernels.contains_key(c.features) {
            kernels.insert(c.features, artifacts::build_kernel(&root, c.features)?);
        }
        let dir = base.join(&c.name);
        std::fs::create_dir_all(&dir)?;
        let mut g = c.guest.clone();
        g.cpus = c.cpus;
        if let Some(k) = &c.kernel {
            let g = k.materialize(&root, &dir, g)?;
            let input = artifacts::GuestInput::Kernel(g.kernel.as_ref().expect("materialized"));
            artifacts::make_images_for(
                &loader,
                &kernels[c.features],
                &input,
                &g.config(true),
                &dir,
                &[c.firmware],
            )?;
            continue;
        }
        if !guests.contains_key(&c.guest.guest) {
            guests.insert(
                c.guest.guest.clone(),
                artifacts::build_guest(&root, &c.guest.guest)?,
            );
        }
        artifacts::make_images(
            &loader,
            &kernels[c.features],
            &guests[&g.guest],
            &g.config(true),
            &dir,
            &[c.firmware],
        )?;
    }

    eprintln!("== emulator tests");
    let next = Mutex::new(0usize);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let i = {
                    let mut n = next.lock().unwrap();
                    *n += 1;
                    *n - 1
                };
                let Some(c) = cases.get(i) else { break };
                let mut g = c.guest.clone();
                g.cpus = c.cpus;
                let spec = RunSpec {
                    backend: c.backend,
                    firmware: c.firmware,
                    cpus: g.machine_cores(),
                    cpu_model: c.cpu_model.map(str::to_string),
                    timeout: Duration::from_secs(c.timeout),
                    mem_mib: g.machine_mib(),
                    dir: base.join(&c.name),
                    stream: false,
                    input: c.input.clone(),
                };
                let problems = match emu::run(&spec) {
                    Ok(out) => {
                        let mut p = judge(c, out.verdict, &out.log);
                        if matches!(out.verdict, Verdict::NoResult | Verdict::Timeout) {
                            p.push(out.no_result_text(&spec.dir));
                        }
                        eprintln!(
                            "test {} ... {} ({:.1} s){}",
                            c.name,
                            if p.is_empty() { "ok" } else { "FAILED" },
                            out.elapsed.as_secs_f64(),
                            if p.is_empty() {
                                String::new()
                            } else {
                                format!(
                                    "\n    {}\n    log: {}",
                                    p.join("\n    "),
                                    out.log_path.display()
                                )
                            }
                        );
                        p
                    }
                    Err(e) => {
                        eprintln!("test {} ... FAILED\n    {e:#}", c.name);
                        vec![format!("{e:#}")]
                    }
                };
                results.lock().unwrap().push((c.name.clone(), problems));
            });
        }
    });
    let results = results.into_inner().unwrap();
    let failed = results.iter().filter(|r| !r.1.is_empty()).count();
    let passed = results.len() - failed;
    eprintln!(
        "cargo xtask test took {:.1} s",
        start.elapsed().as_secs_f64()
    );
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 { 0 } else { 1 })
}

#[cfg(test)]
mod unit {
    use super::*;
    use hypervisor::limits::CacheMode;
    use hypervisor::report::schema::{
        DirtyLogSummary, EptSummary, GuestReport, Lookups, Phase, RunResult, VcpuSummary,
    };

    fn log_with(s: &Summary) -> String {
        format!(
            "boot\nSUMMARY {}\nHV RESULT: SUCCESS\n",
            serde_json::to_string(s).unwrap()
        )
    }

    /// A vCPU that passed, with `faults` EPT violations, `mapped` pages
    /// mapped and `spurious` faults already resolved.
    fn vcpu(id: u32, faults: u64, mapped: u64, spurious: u64) -> VcpuSummary {
        VcpuSummary {
            id,
            status: "ok".into(),
            exits: [("EPT violation".to_string(), faults)].into(),
            ept_mapped: mapped,
            ept_spurious: spurious,
            dirty_faults: 0,
            lookups: Lookups::default(),
            cycles: 1000,
            report: Some(GuestReport {
                status: 0,
                value: 0,
            }),
        }
    }

    fn run(pages: u64, leaves: u64, vcpus: Vec<VcpuSummary>) -> Summary {
        Summary {
            guest: "memtouch".into(),
            mem_mib: 16,
            mem_pages: pages,
            slots: 1,
            cache: CacheMode::Vcpu,
            vcpus: vcpus.len() as u32,
            tsc_hz: 0,
            result: RunResult::Success,
            exit_code: None,
            ept: EptSummary {
                leaves_4k: leaves,
                leaves_2m: 0,
            },
            vcpu: vcpus,
            dirty_log: None,
        }
    }

    #[test]
    fn memtouch_check_counts_pages() {
        let good = run(4, 4, vec![vcpu(0, 4, 4, 0)]);
        assert_eq!(memtouch_check(&log_with(&good)), Ok(()));
        let extra_fault = run(4, 4, vec![vcpu(0, 5, 4, 0)]);
        assert!(memtouch_check(&log_with(&extra_fault)).is_err());
        let missing = run(4, 4, vec![vcpu(0, 4, 3, 0)]);
        assert!(memtouch_check(&log_with(&missing)).is_err());
        assert!(memtouch_check("no summary here").is_err());
        let e = memtouch_check("SUMMARY {\"guest\":\"memtouch\"}").unwrap_err();
        assert!(e.contains("missing field"), "{e}");
    }

    /// A Linux session as the serial log shows it (trimmed).
    const LINUX_LOG: &str = "hypervisor 0.1.0 starting\n\
[INFO  cpu0] linux: boot protocol 2.15\n\
[    0.000000] Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org) #1 SMP\n\
[    4.586926] GDS: Unknown: Dependent on hypervisor status\n\
LINUX SHELL READY\r\n\
/ # uname -r\r\n\
6.1.0-57-amd64\r\n\
/ # dmesg | grep -i hypervisor\r\n\
[    4.586926] GDS: Unknown: Dependent on hypervisor status\r\n\
/ # echo HV_LINES=$(dmesg | grep -ci hypervisor)\r\n\
HV_LINES=1\r\n\
/ # echo tmpfs-$((6*7)) > /tmp/f; cat /tmp/f\r\n\
tmpfs-42\r\n";

    #[test]
    fn the_linux_session_check_reads_each_answer() {
        assert_eq!(linux_shell_check(LINUX_LOG), Ok(()));
        let wrong_release = LINUX_LOG.replace("\n6.1.0-57-amd64\r", "\n6.1.0-1-amd64\r");
        assert!(linux_shell_check(&wrong_release)
            .unwrap_err()
            .contains("uname -r"));
        let no_file = LINUX_LOG.replace("\ntmpfs-42", "\ncat: can't open");
        assert!(linux_shell_check(&no_file).unwrap_err().contains("/tmp"));
        // The hypervisor's own lines do not count as the kernel's.
        let own = LINUX_LOG.replace(
            "LINUX SHELL READY",
            "[INFO  cpu0] hypervisor line\nLINUX SHELL READY",
        );
        assert_eq!(linux_shell_check(&own), Ok(()));
        let dmesg_disagrees = LINUX_LOG.replace("HV_LINES=1", "HV_LINES=0");
        let e = linux_shell_check(&dmesg_disagrees).unwrap_err();
        assert!(e.contains("dmesg has 0 lines"), "{e}");
        assert!(linux_shell_check("no boot at all").is_err());
    }

    #[test]
    fn a_vcpu_spinning_through_hlt_fails_the_sleep_check() {
        let mut idle = vcpu(1, 3, 3, 0);
        idle.exits.insert("HLT".into(), 12);
        let good = run(4, 4, vec![vcpu(0, 4, 4, 0), idle.clone()]);
        assert_eq!(hlt_sleeps(&log_with(&good)), Ok(()));
        idle.exits.insert("HLT".into(), 250_000);
        let spun = run(4, 4, vec![vcpu(0, 4, 4, 0), idle]);
        let e = hlt_sleeps(&log_with(&spun)).unwrap_err();
        assert!(e.contains("vCPU 1 took 250000 HLT exits"), "{e}");
    }

    #[test]
    fn pagerace_needs_a_real_race() {
        let raced = run(10, 10, vec![vcpu(0, 8, 6, 2), vcpu(1, 7, 4, 3)]);
        assert_eq!(pagerace_check(&log_with(&raced)), Ok(()));
        let no_race = run(10, 10, vec![vcpu(0, 6, 6, 0), vcpu(1, 4, 4, 0)]);
        assert!(pagerace_check(&log_with(&no_race)).is_err());
        let double = run(10, 9, vec![vcpu(0, 8, 6, 2), vcpu(1, 7, 4, 3)]);
        assert!(pagerace_check(&log_with(&double)).is_err());
        let mut failed = raced.clone();
        failed.vcpu[1].report = Some(GuestReport {
            status: 1,
            value: 0,
        });
        assert!(pagerace_check(&log_with(&failed)).is_err());
    }

    #[test]
    fn dirty_checks_catch_mismatches() {
        let phase = |n: u32, w: u64, d: u64| Phase {
            name: format!("Iteration {n} dirty memory"),
            cycles: 100,
            exits: 0,
            ept_violations: 0,
            lookups: Lookups::default(),
            pages_written: Some(w),
            pages_dirty: Some(d),
        };
        let mk = |d3: u64, mismatches: Option<u64>| {
            let mut s = run(640, 138, vec![vcpu(0, 1, 1, 0), vcpu(1, 1, 1, 0)]);
            s.dirty_log = Some(DirtyLogSummary {
                pages_per_vcpu: 64,
                ok: mismatches.is_none_or(|m| m == 0),
                mismatches,
                rounds: mismatches.map(|_| 3),
                phases: vec![phase(1, 128, 128), phase(2, 128, 128), phase(3, 128, d3)],
            });
            s
        };
        assert_eq!(dirty_sync_check(&log_with(&mk(128, None))), Ok(()));
        assert!(dirty_sync_check(&log_with(&mk(127, None))).is_err());
        assert_eq!(dirty_concurrent_check(&log_with(&mk(128, Some(0)))), Ok(()));
        assert!(dirty_concurrent_check(&log_with(&mk(128, Some(2)))).is_err());
    }

    #[test]
    fn negative_kernels_are_what_their_names_say() {
        use hypervisor::boot::format::{detect, KernelFormat};
        use hypervisor::boot::multiboot::{plan, MultibootError};
        use hypervisor::machine::board::Board;
        let board = Board::new(KERNEL_DEFAULT_MIB << 20).unwrap();
        assert!(detect(&not_a_kernel()).is_err());
        let h = |k: &[u8]| match detect(k) {
            Ok(KernelFormat::Multiboot(h)) => h,
            other => panic!("{other:?}"),
        };
        let t = truncated_elf();
        let e = plan(&t, &h(&t), &board).unwrap_err();
        assert!(
            matches!(e, MultibootError::Truncated { end: 0x1100, .. }),
            "{e}"
        );
        let o = load_outside_ram();
        let e = plan(&o, &h(&o), &board).unwrap_err();
        assert!(matches!(e, MultibootError::OutsideRam { .. }), "{e}");
        // And the generator makes a good kernel when asked to.
        let g = elf32_kernel();
        let p = plan(&g, &h(&g), &board).unwrap();
        assert_eq!((p.entry, p.start, p.end), (0x20_0000, 0x20_0000, 0x20_0200));
        // The Linux kernels: the good one parses and loads, the bad ones are
        // refused for what their names say.
        use hypervisor::boot::linux::{self, LinuxError};
        assert!(matches!(
            detect(&linux_entry_kernel()),
            Ok(KernelFormat::LinuxBzImage { version: 0x20f })
        ));
        let h = linux::parse(&linux_entry_kernel()).unwrap();
        assert_eq!((h.kernel_offset(), h.end), (0x400, 0x26c));
        let p = linux::plan(&linux_entry_kernel(), &h, &board, "x", 5000).unwrap();
        assert_eq!((p.kernel, p.kernel_end), (0x100_0000, 0x101_0000));
        assert_eq!(p.initrd, Some((0x7ffe000, 0x7ffe000 + 5000)));
        assert_eq!(
            &LINUX64_CODE[..4],
            &[0x66, 0xba, 0xf8, 0x03],
            "mov $0x3f8, %dx"
        );
        assert_eq!(
            linux::parse(&linux_protocol_2_11()),
            Err(LinuxError::TooOld { version: 0x20b })
        );
        assert_eq!(
            linux::parse(&linux_no_64_bit_entry()),
            Err(LinuxError::No64BitEntry { xloadflags: 2 })
        );
        assert_eq!(&test_initrd()[..4], &[0x00, 0x1f, 0x3e, 0x5d]);
        // The PVH kernel: found by its note, loadable.
        let k = pvh_kernel();
        assert!(matches!(
            detect(&k),
            Ok(KernelFormat::Pvh { entry: 0x20_0000 })
        ));
        let pieces = hypervisor::boot::pvh::pieces(&k, 0x20_0000, &board).unwrap();
        assert_eq!(pieces.len(), 1);
        assert_eq!((pieces[0].gpa, pieces[0].memsz), (0x20_0000, 0x1168));
        assert_eq!(&PVH32_CODE[..1], &[0xe8], "call 1f");
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
    }

    #[test]
    fn judge_reports_every_problem() {
        let c = &cases()[0];
        let bad = judge(c, Verdict::Failure, "nothing");
        assert!(bad.len() >= 2, "{bad:?}");
    }

    #[test]
    fn every_case_passes_the_up_front_checks() {
        let names = artifacts::guest_names(&workspace::root().unwrap()).unwrap();
        for c in cases() {
            assert!(
                c.kernel.is_some() || names.contains(&c.guest.guest),
                "{}",
                c.name
            );
            let mut g = c.guest.clone();
            g.cpus = c.cpus;
            g.check(Some(c.backend))
                .unwrap_or_else(|e| panic!("{}: {e:#}", c.name));
        }
    }
}
