//! The speculation check: disassemble the hypervisor's memslot probes and fail
//! on any conditional branch that depends on a cached slot index.
//!
//! `hypervisor::mm::memslot` clamps every cached index with `index_nospec`
//! (`cmp`/`cmovae`, with the effect of Linux's `array_index_nospec`). That only helps if
//! the compiler adds no branch on the index of its own, e.g. a bounds check
//! before the load. So we read the compiled code of two probes:
//! - `hv_probe_index_nospec`: must be `cmp` then `cmovae idx, zero` (a
//!   register zeroed before), or Linux's `cmp`, `sbb m, m`, `and`, with no
//!   conditional jump at all;
//! - `hv_probe_lookup_vcpu_hit` (the real hit path of `lookup_vcpu`): no
//!   conditional jump before the clamp, and the first one only after a memory
//!   load addressed with the clamped index.

use anyhow::{bail, Context};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const INDEX_PROBE: &str = "hv_probe_index_nospec";
const HIT_PROBE: &str = "hv_probe_lookup_vcpu_hit";
const KERNEL_TARGET: &str = "x86_64-unknown-none";

/// Builds the hypervisor lib for the kernel target in release, with assembly
/// output, and checks the probes. Returns a report with their disassembly.
pub fn run(workspace_root: &Path) -> anyhow::Result<String> {
    // A dedicated target dir, so that the extra rustc flags do not disturb
    // (or rebuild) anyone's normal build.
    let target_dir = workspace_root.join("target").join("nospec");
    let asm_path = match build_asm(workspace_root, &target_dir)? {
        Some(path) => path,
        None => {
            // The lib was fresh but its .s file is gone: rebuild it.
            let status = cargo(workspace_root)
                .args([
                    "clean",
                    "-p",
                    "hypervisor",
                    "--release",
                    "--target",
                    KERNEL_TARGET,
                ])
                .arg("--target-dir")
                .arg(&target_dir)
                .status()
                .context("running cargo clean")?;
            if !status.success() {
                bail!("cargo clean -p hypervisor failed");
            }
            build_asm(workspace_root, &target_dir)?
                .context("rustc produced no assembly file for the hypervisor lib")?
        }
    };
    let asm = std::fs::read_to_string(&asm_path)
        .with_context(|| format!("reading {}", asm_path.display()))?;
    match check_asm(&asm) {
        Ok(report) => Ok(format!("{}\n{report}", asm_path.display())),
        Err(problem) => bail!(
            "speculation check failed ({}):\n{problem}",
            asm_path.display()
        ),
    }
}

fn cargo(workspace_root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root);
    cmd
}

/// `cargo rustc … -- --emit=asm` and the path of the `.s` file, if it exists.
///
/// One `.s` file needs one codegen unit: rustc picks 1 by itself for
/// `--emit=asm` unless told otherwise (with more, it writes one file per unit
/// and ignores the output name), so we say it explicitly. Intel syntax, like
/// our `asm!`. Note that the unit layout can differ from the kernel build's;
/// the probes are `#[inline(never)]` functions, so their code does not depend
/// on it.
fn build_asm(workspace_root: &Path, target_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let output = cargo(workspace_root)
        .args([
            "rustc",
            "-p",
            "hypervisor",
            "--lib",
            "--release",
            "--target",
            KERNEL_TARGET,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .args(["--message-format", "json-render-diagnostics", "--"])
        .args([
            "--emit=asm",
            "-C",
            "codegen-units=1",
            "-C",
            "llvm-args=-x86-asm-syntax=intel",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo rustc")?;
    if !output.status.success() {
        bail!("building the hypervisor lib for {KERNEL_TARGET} failed");
    }
    let messages = String::from_utf8_lossy(&output.stdout);
    let artifact = artifact_path(&messages).context("cargo reported no hypervisor artifact")?;
    // rustc names the assembly like its other outputs, in the same folder:
    // `libhypervisor-HASH.rmeta` -> `hypervisor-HASH.s`.
    let name = artifact
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let stem = name.trim_start_matches("lib");
    let stem = stem.rsplit_once('.').map_or(stem, |(stem, _)| stem);
    let asm = artifact.with_file_name(format!("{stem}.s"));
    Ok(asm.exists().then_some(asm))
}

/// A hashed output of the hypervisor lib (`libhypervisor-HASH.rlib` or
/// `.rmeta`; cargo also lists the unhashed copy it uplifts) from cargo's JSON
/// messages. A plain string scan: xtask has no JSON dependency.
fn artifact_path(messages: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter(|line| line.contains(r#""reason":"compiler-artifact""#))
        .flat_map(|line| line.split('"'))
        .find(|field| {
            let file = field.rsplit(['/', '\\']).next().unwrap_or_default();
            file.starts_with("libhypervisor-")
                && (file.ends_with(".rlib") || file.ends_with(".rmeta"))
        })
        .map(|path| PathBuf::from(path.replace("\\\\", "\\")))
}

/// Checks the two probes in `asm_text` (LLVM assembly, Intel syntax). Returns
/// a report with their listings, or what is wrong.
pub fn check_asm(asm_text: &str) -> Result<String, String> {
    let index = function(asm_text, INDEX_PROBE)?;
    let hit = function(asm_text, HIT_PROBE)?;
    let index_verdict = check_index_probe(&index);
    let hit_verdict = check_hit_probe(&hit);

    let mut report = String::new();
    for (f, verdict) in [(&index, &index_verdict), (&hit, &hit_verdict)] {
        let status = match verdict {
            Ok(summary) => format!("ok: {summary}"),
            Err(problem) => format!("FAIL: {problem}"),
        };
        let _ = writeln!(report, "{}: {status}", f.name);
        report.push_str(&f.listing());
    }
    match (index_verdict, hit_verdict) {
        (Ok(_), Ok(_)) => Ok(report),
        _ => Err(report),
    }
}

/// One instruction: mnemonic and operands, Intel order (destination first).
#[derive(Debug, Clone)]
struct Insn {
    mnemonic: String,
    operands: Vec<String>,
}

impl Insn {
    fn is_jcc(&self) -> bool {
        self.mnemonic.starts_with('j') && self.mnemonic != "jmp"
    }

    /// Register families read to form a memory address (`[...]` operands).
    fn address_regs(&self) -> HashSet<&'static str> {
        self.operands
            .iter()
            .filter(|op| op.contains('['))
            .flat_map(|op| regs(op))
            .collect()
    }

    fn text(&self) -> String {
        format!("{} {}", self.mnemonic, self.operands.join(", "))
            .trim_end()
            .to_string()
    }
}

enum Line {
    Label(String),
    Insn(Insn),
}

struct Function {
    name: String,
    lines: Vec<Line>,
}

impl Function {
    fn insns(&self) -> impl Iterator<Item = &Insn> {
        self.lines.iter().filter_map(|line| match line {
            Line::Insn(insn) => Some(insn),
            Line::Label(_) => None,
        })
    }

    fn listing(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            let _ = match line {
                Line::Label(label) => writeln!(out, "  {label}:"),
                Line::Insn(insn) => writeln!(out, "      {}", insn.text()),
            };
        }
        out
    }
}

/// The body of function `name`: from its label to the end of the function,
/// without directives and comments.
fn function(asm_text: &str, name: &str) -> Result<Function, String> {
    let mut lines = asm_text.lines().map(str::trim);
    let label = format!("{name}:");
    if !lines.any(|line| line == label) {
        return Err(format!("function {name} not found in the assembly"));
    }
    let mut body = Vec::new();
    for line in lines {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.starts_with(".Lfunc_end") || line.starts_with(".cfi_endproc") {
            break;
        }
        if line.is_empty() {
            continue;
        }
        if let Some(label) = line.strip_suffix(':') {
            if !label.starts_with('.') {
                break; // the next global function
            }
            // Keep jump targets, drop debug-info labels.
            if !label.starts_with(".Ltmp") && !label.starts_with(".Lfunc_begin") {
                body.push(Line::Label(label.to_string()));
            }
            continue;
        }
        if line.starts_with('.') {
            continue; // directive
        }
        if line.contains('%') {
            return Err(format!(
                "{name}: AT&T syntax ({line}); expected Intel syntax"
            ));
        }
        let (mnemonic, operands) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let operands = operands
            .split(',')
            .map(|op| op.trim().to_string())
            .filter(|op| !op.is_empty())
            .collect();
        body.push(Line::Insn(Insn {
            mnemonic: mnemonic.to_lowercase(),
            operands,
        }));
    }
    if !body.iter().any(|line| matches!(line, Line::Insn(_))) {
        return Err(format!("function {name} has no instructions"));
    }
    Ok(Function {
        name: name.to_string(),
        lines: body,
    })
}

/// The 64-bit register family of an x86 register name (`eax`, `al` -> `rax`).
fn reg_family(name: &str) -> Option<&'static str> {
    const LEGACY: [(&str, [&str; 5]); 8] = [
        ("rax", ["rax", "eax", "ax", "al", "ah"]),
        ("rbx", ["rbx", "ebx", "bx", "bl", "bh"]),
        ("rcx", ["rcx", "ecx", "cx", "cl", "ch"]),
        ("rdx", ["rdx", "edx", "dx", "dl", "dh"]),
        ("rsi", ["rsi", "esi", "si", "sil", "rsi"]),
        ("rdi", ["rdi", "edi", "di", "dil", "rdi"]),
        ("rbp", ["rbp", "ebp", "bp", "bpl", "rbp"]),
        ("rsp", ["rsp", "esp", "sp", "spl", "rsp"]),
    ];
    const NUMBERED: [&str; 8] = ["r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"];
    let name = name.to_ascii_lowercase();
    if let Some((family, _)) = LEGACY
        .iter()
        .find(|(_, names)| names.contains(&name.as_str()))
    {
        return Some(family);
    }
    let base = name.trim_end_matches(['d', 'w', 'b']);
    NUMBERED.iter().find(|&&r| r == base).copied()
}

/// Register families named in an operand.
fn regs(operand: &str) -> impl Iterator<Item = &'static str> + '_ {
    operand
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter_map(reg_family)
}

/// Register family of a plain register operand (not memory).
fn reg_operand(operand: &str) -> Option<&'static str> {
    if operand.contains('[') {
        None
    } else {
        reg_family(operand.trim())
    }
}

/// Finds `cmp a, b` directly followed by `sbb m, m`: (index of the `sbb`,
/// mask register).
fn find_mask(insns: &[&Insn]) -> Result<(usize, &'static str), String> {
    let sbb = insns
        .iter()
        .position(|i| i.mnemonic == "sbb")
        .ok_or("no `sbb` mask instruction")?;
    let ops = &insns[sbb].operands;
    let mask = match ops.as_slice() {
        [a, b] if reg_operand(a).is_some() && reg_operand(a) == reg_operand(b) => {
            reg_operand(a).unwrap_or_default()
        }
        _ => return Err(format!("`{}` is not `sbb m, m`", insns[sbb].text())),
    };
    if sbb == 0 || insns[sbb - 1].mnemonic != "cmp" {
        return Err(format!(
            "`{}` does not directly follow a `cmp`",
            insns[sbb].text()
        ));
    }
    Ok((sbb, mask))
}

/// Finds the first `and` after `from` that combines the mask with another
/// register: (its index, the register holding the masked index).
fn find_and(insns: &[&Insn], from: usize, mask: &str) -> Result<(usize, &'static str), String> {
    insns
        .iter()
        .enumerate()
        .skip(from + 1)
        .find_map(|(i, insn)| match insn.operands.as_slice() {
            [dst, src] if insn.mnemonic == "and" => {
                let (d, s) = (reg_operand(dst)?, reg_operand(src)?);
                (d == mask || s == mask).then_some((i, d))
            }
            _ => None,
        })
        .ok_or_else(|| format!("no `and` applies the mask register {mask}"))
}

/// Finds `cmp a, b` directly followed by `cmovae d, z` (or its aliases
/// `cmovnb`, `cmovnc`) whose `z` was zeroed before (`xor z, z` or
/// `mov z, 0`): (index of the `cmov`, register holding the clamped index).
fn find_cmov(insns: &[&Insn]) -> Result<(usize, &'static str), String> {
    let cmov = insns
        .iter()
        .position(|i| matches!(i.mnemonic.as_str(), "cmovae" | "cmovnb" | "cmovnc"))
        .ok_or("no `cmovae` clamp instruction")?;
    let (d, z) = match insns[cmov].operands.as_slice() {
        [d, z] => match (reg_operand(d), reg_operand(z)) {
            (Some(d), Some(z)) => (d, z),
            _ => return Err(format!("`{}` is not `cmovae reg, reg`", insns[cmov].text())),
        },
        _ => return Err(format!("`{}` is not `cmovae reg, reg`", insns[cmov].text())),
    };
    if cmov == 0 || insns[cmov - 1].mnemonic != "cmp" {
        return Err(format!(
            "`{}` does not directly follow a `cmp`",
            insns[cmov].text()
        ));
    }
    // The last write of `z` before the cmov must make it zero.
    let zeroed = insns[..cmov]
        .iter()
        .rev()
        .find(|i| i.operands.first().and_then(|op| reg_operand(op)) == Some(z))
        .is_some_and(|i| {
            (i.mnemonic == "xor" && i.operands.len() == 2 && reg_operand(&i.operands[1]) == Some(z))
                || (i.mnemonic == "mov" && i.operands.get(1).map(String::as_str) == Some("0"))
        });
    if !zeroed {
        return Err(format!(
            "`{}`: {z} is not zeroed before it",
            insns[cmov].text()
        ));
    }
    Ok((cmov, d))
}

/// The branch-free clamp: `cmp`/`cmovae` (ours) or `cmp`/`sbb`/`and`
/// (Linux's). Returns (index of its last instruction, register holding the
/// clamped index, description).
fn find_clamp(insns: &[&Insn]) -> Result<(usize, &'static str, String), String> {
    match find_cmov(insns) {
        Ok((cmov, reg)) => Ok((cmov, reg, format!("cmp/cmovae clamp into {reg}"))),
        Err(cmov_problem) => match find_mask(insns) {
            Ok((sbb, mask)) => {
                let (and, reg) = find_and(insns, sbb, mask)?;
                Ok((
                    and,
                    reg,
                    format!("cmp/sbb/and mask in {mask}, masked index in {reg}"),
                ))
            }
            Err(sbb_problem) => Err(format!("{cmov_problem}; {sbb_problem}")),
        },
    }
}

fn check_index_probe(f: &Function) -> Result<String, String> {
    let insns: Vec<&Insn> = f.insns().collect();
    if let Some(jcc) = insns.iter().find(|i| i.is_jcc()) {
        return Err(format!("conditional branch `{}`", jcc.text()));
    }
    let (_, _, what) = find_clamp(&insns)?;
    Ok(format!("{what}, no conditional branch"))
}

/// Instructions that overwrite their destination without reading it.
fn overwrites_dest(insn: &Insn) -> bool {
    let m = insn.mnemonic.as_str();
    matches!(
        m,
        "mov" | "movzx" | "movsx" | "movsxd" | "movabs" | "lea" | "pop"
    ) || m.starts_with("set")
        || (m == "xor" && insn.operands.len() == 2 && insn.operands[0] == insn.operands[1])
}

/// Follows the masked index (in `masked` after instruction `and`) through
/// register arithmetic (`shl`, `lea`, `mov` …) to the first memory access it
/// addresses; returns that instruction's index.
fn masked_load(insns: &[&Insn], and: usize, masked: &'static str) -> Option<usize> {
    let mut tainted: HashSet<&'static str> = HashSet::from([masked]);
    for (i, insn) in insns.iter().enumerate().skip(and + 1) {
        if insn.mnemonic != "lea" && insn.address_regs().iter().any(|r| tainted.contains(r)) {
            return Some(i);
        }
        let Some(dest) = insn.operands.first().and_then(|op| reg_operand(op)) else {
            continue;
        };
        let sources = insn.operands.iter().skip(1).flat_map(|op| regs(op));
        if sources.into_iter().any(|r| tainted.contains(r)) {
            tainted.insert(dest);
        } else if overwrites_dest(insn) {
            tainted.remove(dest);
        }
    }
    None
}

fn check_hit_probe(f: &Function) -> Result<String, String> {
    let insns: Vec<&Insn> = f.insns().collect();
    let (clamp, masked, what) = find_clamp(&insns)?;
    if let Some(jcc) = insns[..clamp].iter().find(|i| i.is_jcc()) {
        return Err(format!(
            "conditional branch `{}` before the mask",
            jcc.text()
        ));
    }
    let Some(load) = masked_load(&insns, clamp, masked) else {
        return Err("no memory load through the masked index".to_string());
    };
    if let Some(jcc) = insns[clamp..load].iter().find(|i| i.is_jcc()) {
        return Err(format!(
            "conditional branch `{}` before the first load through the masked index",
            jcc.text()
        ));
    }
    let first_jcc = match insns[load..].iter().find(|i| i.is_jcc()) {
        Some(jcc) => format!("`{}`, after the load", jcc.text()),
        None => "none".to_string(),
    };
    Ok(format!(
        "{what}, loaded by `{}`; first conditional branch: {first_jcc}",
        insns[load].text(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX_OK: &str = "
\t.section\t.text.hv_probe_index_nospec,\"ax\",@progbits
\t.globl\thv_probe_index_nospec
\t.p2align\t4
\t.type\thv_probe_index_nospec,@function
hv_probe_index_nospec:
.Lfunc_begin33:
\t.cfi_startproc
\t.loc\t15 635 9 prologue_end
\t#APP

\tcmp\trdi, rsi
\tsbb\trax, rax

\t#NO_APP
.Ltmp470:
\t.loc\t15 621 5
\tand\trax, rdi
\tret
.Lfunc_end33:
\t.size\thv_probe_index_nospec, .Lfunc_end33-hv_probe_index_nospec
\t.cfi_endproc
";

    // What rustc emitted for the real hit path (nightly-2026-08-01).
    const HIT_OK: &str = "
hv_probe_lookup_vcpu_hit:
.Lfunc_begin34:
\t.cfi_startproc
\tmov\trcx, qword ptr [rdx + 32]
\tmov\trdx, qword ptr [rdi + 16416]
\t#APP
\tcmp\trcx, rdx
\tsbb\trax, rax
\t#NO_APP
\tand\trax, rcx
\tshl\trax, 5
\tmov\trcx, qword ptr [rdi + rax + 128]
\tcmp\trsi, rcx
\tjae\t.LBB34_2
\txor\teax, eax
\tret
.LBB34_2:
\tadd\trax, rdi
\tadd\trax, 128
\tadd\trcx, qword ptr [rax + 8]
\tcmp\trsi, rcx
\tsetb\tal
\tret
.Lfunc_end34:
";

    // The cmp/cmovae form (nightly-2026-08-01, the current index_nospec).
    const INDEX_CMOV: &str = "
hv_probe_index_nospec:
\tmov\trax, rdi
\txor\tecx, ecx
\t#APP
\tcmp\trax, rsi
\tcmovae\trax, rcx
\t#NO_APP
\tret
.Lfunc_end33:
";

    const HIT_CMOV: &str = "
hv_probe_lookup_vcpu_hit:
\tmov\trcx, rdx
\tmov\trdx, rsi
\tmov\trsi, qword ptr [rdi + 16416]
\tmov\tr8, qword ptr [rcx]
\txor\teax, eax
\t#APP
\tcmp\tr8, rsi
\tcmovae\tr8, rax
\t#NO_APP
\tshl\tr8, 5
\tmov\tr9, rdx
\tsub\tr9, qword ptr [rdi + r8 + 128]
\tmov\tal, 1
\tcmp\tr9, qword ptr [rdi + r8 + 136]
\tjae\t.LBB335_1
\tret
.LBB335_1:
\tpush\trax
\tcall\tqword ptr [rip + vcpu_miss@GOTPCREL]
\tret
.Lfunc_end34:
";

    #[test]
    fn cmov_clamp_passes_and_is_checked() {
        let report = check_asm(&asm(INDEX_CMOV, HIT_CMOV)).unwrap();
        assert!(
            report.contains("hv_probe_lookup_vcpu_hit: ok: cmp/cmovae clamp into r8, loaded by `sub r9, qword ptr [rdi + r8 + 128]`"),
            "{report}"
        );
        // The "zero" is not zero.
        let index = INDEX_CMOV.replace("\txor\tecx, ecx\n", "\tmov\tecx, 5\n");
        let err = check_asm(&asm(&index, HIT_CMOV)).unwrap_err();
        assert!(err.contains("rcx is not zeroed before it"), "{err}");
        // A bounds-check branch before the clamp.
        let hit = HIT_CMOV.replace(
            "\txor\teax, eax\n",
            "\txor\teax, eax\n\tcmp\tr8, rsi\n\tjae\t.LBB335_1\n",
        );
        let err = check_asm(&asm(INDEX_CMOV, &hit)).unwrap_err();
        assert!(
            err.contains("conditional branch `jae .LBB335_1` before the mask"),
            "{err}"
        );
        // The load does not use the clamped index.
        let hit = HIT_CMOV
            .replace("[rdi + r8 + 128]", "[rdi + rcx + 128]")
            .replace("[rdi + r8 + 136]", "[rdi + rcx + 136]");
        let err = check_asm(&asm(INDEX_CMOV, &hit)).unwrap_err();
        assert!(
            err.contains("no memory load through the masked index"),
            "{err}"
        );
    }

    fn asm(index: &str, hit: &str) -> String {
        format!("{index}\n{hit}")
    }

    #[test]
    fn good_sample_passes() {
        let report = check_asm(&asm(INDEX_OK, HIT_OK)).unwrap();
        assert!(report.contains("hv_probe_index_nospec: ok"), "{report}");
        assert!(report.contains("hv_probe_lookup_vcpu_hit: ok"), "{report}");
        assert!(
            report.contains("loaded by `mov rcx, qword ptr [rdi + rax + 128]`"),
            "{report}"
        );
        assert!(
            report.contains("`jae .LBB34_2`, after the load"),
            "{report}"
        );
        assert!(report.contains("      sbb rax, rax\n"), "{report}");
        assert!(report.contains("  .LBB34_2:\n"), "{report}");
    }

    #[test]
    fn taint_follows_register_moves() {
        let hit = "hv_probe_lookup_vcpu_hit:
\tcmp\trcx, rdx
\tsbb\trax, rax
\tand\trcx, rax
\tlea\trdx, [rcx + 2*rcx]
\tmov\tr8, rdx
\tmov\tr9d, dword ptr [rdi + 8*r8 + 16]
\tjae\t.LBB1
\tret
.Lfunc_end1:
";
        let report = check_asm(&asm(INDEX_OK, hit)).unwrap();
        assert!(
            report.contains("masked index in rcx, loaded by `mov r9d"),
            "{report}"
        );
    }

    #[test]
    fn bounds_check_branch_before_load_fails() {
        // A bounds check on the masked index before the load.
        let hit = HIT_OK.replace(
            "\tshl\trax, 5\n",
            "\tcmp\trax, 508\n\tjae\t.LBB34_3\n\tshl\trax, 5\n",
        );
        let err = check_asm(&asm(INDEX_OK, &hit)).unwrap_err();
        assert!(
            err.contains("FAIL: conditional branch `jae .LBB34_3` before the first load"),
            "{err}"
        );
    }

    #[test]
    fn branch_before_mask_fails() {
        let hit = HIT_OK.replace("\t#APP\n", "\tcmp\trcx, rdx\n\tjae\t.LBB34_9\n\t#APP\n");
        let err = check_asm(&asm(INDEX_OK, &hit)).unwrap_err();
        assert!(
            err.contains("FAIL: conditional branch `jae .LBB34_9` before the mask"),
            "{err}"
        );
    }

    #[test]
    fn load_not_through_masked_index_fails() {
        // The load uses the raw index (rcx), not the masked one.
        let hit = HIT_OK.replace("[rdi + rax + 128]", "[rdi + rcx + 128]");
        let err = check_asm(&asm(INDEX_OK, &hit)).unwrap_err();
        assert!(
            err.contains("`jae .LBB34_2` before the first load through the masked index"),
            "{err}"
        );
    }

    #[test]
    fn missing_sbb_fails() {
        let index = INDEX_OK.replace("\tsbb\trax, rax\n", "\tsetb\tal\n\tneg\trax\n");
        let err = check_asm(&asm(&index, HIT_OK)).unwrap_err();
        assert!(
            err.contains("hv_probe_index_nospec: FAIL: no `cmovae` clamp instruction; no `sbb`"),
            "{err}"
        );
        let hit = HIT_OK.replace("\tsbb\trax, rax\n", "");
        let err = check_asm(&asm(INDEX_OK, &hit)).unwrap_err();
        assert!(
            err.contains("hv_probe_lookup_vcpu_hit: FAIL: no `cmovae` clamp instruction; no `sbb`"),
            "{err}"
        );
    }

    #[test]
    fn index_probe_with_any_jcc_fails() {
        let index = INDEX_OK.replace("\tret\n", "\tjb\t.LBB0_1\n\tret\n");
        let err = check_asm(&asm(&index, HIT_OK)).unwrap_err();
        assert!(
            err.contains("FAIL: conditional branch `jb .LBB0_1`"),
            "{err}"
        );
    }

    #[test]
    fn malformed_mask_fails() {
        let index = INDEX_OK.replace("sbb\trax, rax", "sbb\trax, rcx");
        assert!(check_asm(&asm(&index, HIT_OK))
            .unwrap_err()
            .contains("is not `sbb m, m`"));
        let index = INDEX_OK.replace("\tcmp\trdi, rsi\n", "");
        assert!(check_asm(&asm(&index, HIT_OK))
            .unwrap_err()
            .contains("does not directly follow"));
        let index = INDEX_OK.replace("and\trax, rdi", "or\trax, rdi");
        assert!(check_asm(&asm(&index, HIT_OK))
            .unwrap_err()
            .contains("no `and` applies"));
    }

    #[test]
    fn missing_function_or_att_syntax_fails() {
        assert!(check_asm(INDEX_OK)
            .unwrap_err()
            .contains("hv_probe_lookup_vcpu_hit not found"));
        let att = "hv_probe_index_nospec:\n\tcmpq\t%rsi, %rdi\n\tsbbq\t%rax, %rax\n";
        assert!(check_asm(&asm(att, HIT_OK))
            .unwrap_err()
            .contains("expected Intel syntax"));
    }

    #[test]
    fn registers() {
        assert_eq!(reg_family("eax"), Some("rax"));
        assert_eq!(reg_family("SIL"), Some("rsi"));
        assert_eq!(reg_family("r10d"), Some("r10"));
        assert_eq!(reg_family("r8b"), Some("r8"));
        assert_eq!(reg_family("qword"), None);
        assert_eq!(reg_family("ptr"), None);
        let ops: Vec<_> = regs("qword ptr [rdi + 8*r11 + 16]").collect();
        assert_eq!(ops, ["rdi", "r11"]);
    }

    #[test]
    fn artifact_from_cargo_messages() {
        // As cargo prints it: the uplifted rlib has no hash, the rmeta has.
        let json = r#"{"reason":"compiler-artifact","package_id":"x","target":{"name":"bitflags"},"filenames":["/t/out/libbitflags-1.rlib"]}
{"reason":"compiler-artifact","package_id":"y","target":{"name":"hypervisor"},"filenames":["/t/release/libhypervisor.rlib","/t/release/build/hypervisor/ab/out/libhypervisor-ab.rmeta"],"fresh":true}
{"reason":"build-finished","success":true}"#;
        let found = artifact_path(json);
        let want = "/t/release/build/hypervisor/ab/out/libhypervisor-ab.rmeta";
        assert_eq!(found, Some(PathBuf::from(want)));
        assert_eq!(artifact_path(r#"{"reason":"build-finished"}"#), None);
    }
}
