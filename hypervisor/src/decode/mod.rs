//! MMIO instruction emulation: the guest instruction that touched a device
//! page (an EPT violation on a gpa no memslot backs) is decoded with
//! iced-x86 and carried out against the device, as the CPU would have done
//! against memory. Pure: no arch code; the exit handler supplies the bytes,
//! the registers and the device ([`Mmio`]).
//!
//! Forms emulated (Intel SDM Vol. 2):
//! - MOV reg↔mem and mem←imm at 8/16/32/64 bits, including AH..BH and the
//!   REX byte registers, and MOV with a moffs (A0-A3, MOVABS in 64-bit
//!   mode); MOVZX, MOVSX, MOVSXD;
//! - ADD, SUB, AND, OR, XOR with a memory destination (read, compute,
//!   write back; LOCK accepted) or a memory source into a register;
//! - CMP and TEST: flags only;
//! - XCHG with memory (some APIC drivers write registers with it).
//!
//! Register writes follow the SDM (3.4.1.1): a 32-bit destination is
//! zero-extended to 64 bits, 8- and 16-bit destinations merge into the
//! register. ADD/SUB/CMP set CF, PF, AF, ZF, SF and OF as defined; AND, OR,
//! XOR and TEST clear CF and OF, set PF, ZF and SF, and clear AF (which the
//! SDM leaves undefined).
//!
//! Anything else — string instructions, BT*, INC/DEC/NEG/NOT, ADC/SBB, instructions with two
//! memory operands or none, accesses wider than 8 bytes (SSE/AVX) — is an
//! [`EmulateError`] that carries the instruction bytes.
//!
//! Not modelled: RFLAGS.TF single-step (#DB after the instruction) and
//! RFLAGS.RF; segment limit and type checks (the CPU made them before the
//! access reached the EPT, which is why the exit happened at all).

use crate::x86::state::Gprs;
use crate::x86::{CR0_PE, EFER_LMA};
use core::fmt;
use iced_x86::{
    Decoder, DecoderError, DecoderOptions, Instruction, MemorySize, Mnemonic, OpKind, Register,
};

#[cfg(test)]
mod tests;

/// The longest x86 instruction (SDM Vol. 2, 2.3.11).
pub const MAX_INSN_LEN: usize = 15;

/// A device's MMIO range, addressed by absolute guest-physical address.
pub trait Mmio {
    fn read(&mut self, gpa: u64, data: &mut [u8]);
    fn write(&mut self, gpa: u64, data: &[u8]);
}

/// The guest registers an emulated instruction reads and writes. RSP lives
/// in the VMCS, not in [`Gprs`]: it is a field here, written back by the
/// caller.
pub struct Regs<'a> {
    pub gprs: &'a mut Gprs,
    pub rsp: u64,
    pub rip: u64,
    pub rflags: u64,
}

impl Regs<'_> {
    fn get64(&mut self, index: u8) -> u64 {
        match self.gprs.gpr_mut(index) {
            Some(r) => *r,
            None => self.rsp,
        }
    }
    fn slot(&mut self, index: u8) -> &mut u64 {
        match self.gprs.gpr_mut(index) {
            Some(r) => r,
            None => &mut self.rsp,
        }
    }
    /// The value of a general-purpose register as `reg` names it (AH is
    /// bits 15:8 of RAX, ...).
    fn read(&mut self, g: Gpr) -> u64 {
        let v = self.get64(g.index);
        if g.high8 {
            (v >> 8) & 0xff
        } else {
            v & mask(g.size)
        }
    }
    /// Writes `value` to `reg` with the SDM's rules (3.4.1.1).
    fn write(&mut self, g: Gpr, value: u64) {
        let r = self.slot(g.index);
        *r = match (g.size, g.high8) {
            (1, true) => (*r & !0xff00) | ((value & 0xff) << 8),
            (1, false) => (*r & !0xff) | (value & 0xff),
            (2, _) => (*r & !0xffff) | (value & 0xffff),
            // A 32-bit destination is zero-extended.
            (4, _) => value & 0xffff_ffff,
            _ => value,
        };
    }
}

/// Segment bases, in the order of the segment registers' encoding in an
/// instruction's Sreg field: ES = 0, CS, SS, DS, FS, GS = 5.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentBases(pub [u64; 6]);

/// The data access the CPU reported: its guest-physical address and, when
/// the exit gave one, its linear address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioAccess {
    pub gpa: u64,
    pub linear: Option<u64>,
}

/// The default code size (16, 32 or 64 bits) from CR0.PE, RFLAGS.VM,
/// EFER.LMA and CS.L/CS.D in VMCS access-rights format (SDM 3.4.5, 5.2.1).
pub fn code_bitness(cr0: u64, efer: u64, rflags: u64, cs_access: u32) -> u32 {
    const RFLAGS_VM: u64 = 1 << 17;
    const CS_L: u32 = 1 << 13;
    const CS_D: u32 = 1 << 14;
    if cr0 & CR0_PE == 0 || rflags & RFLAGS_VM != 0 {
        16
    } else if efer & EFER_LMA != 0 && cs_access & CS_L != 0 {
        64
    } else if cs_access & CS_D != 0 {
        32
    } else {
        16
    }
}

/// An instruction's bytes, for reports: printed as hex.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct InsnBytes {
    buf: [u8; MAX_INSN_LEN],
    len: u8,
}

impl InsnBytes {
    pub fn new(bytes: &[u8]) -> Self {
        let len = bytes.len().min(MAX_INSN_LEN);
        let mut buf = [0; MAX_INSN_LEN];
        buf[..len].copy_from_slice(&bytes[..len]);
        InsnBytes {
            buf,
            len: len as u8,
        }
    }
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

impl fmt::Display for InsnBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.as_slice().iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for InsnBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{self}]")
    }
}

/// Why an instruction was not emulated. Each carries the bytes (for an
/// invalid or truncated one, all the bytes that were fetched).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmulateError {
    /// No valid instruction at RIP in this mode.
    Invalid { bytes: InsnBytes },
    /// The instruction needs more bytes than were fetched.
    Truncated { bytes: InsnBytes },
    /// A valid instruction this emulator does not carry out.
    Unsupported { bytes: InsnBytes, why: &'static str },
    /// The instruction's memory operand is not the access that exited.
    AddressMismatch {
        bytes: InsnBytes,
        linear: u64,
        access: MmioAccess,
    },
}

impl EmulateError {
    pub fn bytes(&self) -> InsnBytes {
        match self {
            EmulateError::Invalid { bytes }
            | EmulateError::Truncated { bytes }
            | EmulateError::Unsupported { bytes, .. }
            | EmulateError::AddressMismatch { bytes, .. } => *bytes,
        }
    }
}

impl fmt::Display for EmulateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmulateError::Invalid { bytes } => write!(f, "no valid instruction in bytes {bytes}"),
            EmulateError::Truncated { bytes } => {
                write!(f, "instruction longer than the bytes fetched: {bytes}")
            }
            EmulateError::Unsupported { bytes, why } => {
                write!(f, "instruction not emulated ({why}): bytes {bytes}")
            }
            EmulateError::AddressMismatch {
                bytes,
                linear,
                access,
            } => {
                write!(
                    f,
                    "memory operand at linear {linear:#x} is not the access at gpa {:#x}",
                    access.gpa
                )?;
                if let Some(la) = access.linear {
                    write!(f, " (linear {la:#x})")?;
                }
                write!(f, ": bytes {bytes}")
            }
        }
    }
}

/// What was emulated: the mnemonic and the instruction's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Emulated {
    pub mnemonic: Mnemonic,
    pub len: usize,
    /// The access's width in bytes.
    pub size: usize,
}

/// A general-purpose register as an instruction names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Gpr {
    /// SDM encoding: 0 = RAX … 15 = R15.
    index: u8,
    /// Width in bytes.
    size: usize,
    /// AH, CH, DH, BH: bits 15:8 of register `index`.
    high8: bool,
}

fn gpr(r: Register) -> Option<Gpr> {
    let n = r as u32;
    let at = |first: Register| n - first as u32;
    let (index, size, high8) = match r {
        Register::AH | Register::CH | Register::DH | Register::BH => {
            (at(Register::AH) as u8, 1, true)
        }
        _ if (Register::AL as u32..=Register::BL as u32).contains(&n) => {
            (at(Register::AL) as u8, 1, false)
        }
        _ if (Register::SPL as u32..=Register::R15L as u32).contains(&n) => {
            (at(Register::SPL) as u8 + 4, 1, false)
        }
        _ if (Register::AX as u32..=Register::R15W as u32).contains(&n) => {
            (at(Register::AX) as u8, 2, false)
        }
        _ if (Register::EAX as u32..=Register::R15D as u32).contains(&n) => {
            (at(Register::EAX) as u8, 4, false)
        }
        _ if (Register::RAX as u32..=Register::R15 as u32).contains(&n) => {
            (at(Register::RAX) as u8, 8, false)
        }
        _ => return None,
    };
    Some(Gpr { index, size, high8 })
}

const fn mask(size: usize) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1 << (8 * size)) - 1
    }
}

/// Sign-extends the low `size` bytes of `v`.
fn sign_extend(v: u64, size: usize) -> u64 {
    let shift = 64 - 8 * size as u32;
    (((v << shift) as i64) >> shift) as u64
}

pub const RFLAGS_CF: u64 = 1 << 0;
pub const RFLAGS_PF: u64 = 1 << 2;
pub const RFLAGS_AF: u64 = 1 << 4;
pub const RFLAGS_ZF: u64 = 1 << 6;
pub const RFLAGS_SF: u64 = 1 << 7;
pub const RFLAGS_OF: u64 = 1 << 11;
/// The six arithmetic flags (SDM 3.4.3.1).
pub const RFLAGS_ARITH: u64 = RFLAGS_CF | RFLAGS_PF | RFLAGS_AF | RFLAGS_ZF | RFLAGS_SF | RFLAGS_OF;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alu {
    Add,
    Sub,
    And,
    Or,
    Xor,
}

/// `a op b` at `size` bytes: the result and the arithmetic flags.
fn alu(op: Alu, a: u64, b: u64, size: usize) -> (u64, u64) {
    let m = mask(size);
    let sign = 1u64 << (8 * size - 1);
    let (a, b) = (a & m, b & m);
    let (r, mut flags) = match op {
        Alu::Add => {
            let r = a.wrapping_add(b) & m;
            let mut f = 0;
            if r < a {
                f |= RFLAGS_CF;
            }
            if (a ^ r) & (b ^ r) & sign != 0 {
                f |= RFLAGS_OF;
            }
            if (a ^ b ^ r) & 0x10 != 0 {
                f |= RFLAGS_AF;
            }
            (r, f)
        }
        Alu::Sub => {
            let r = a.wrapping_sub(b) & m;
            let mut f = 0;
            if a < b {
                f |= RFLAGS_CF;
            }
            if (a ^ b) & (a ^ r) & sign != 0 {
                f |= RFLAGS_OF;
            }
            if (a ^ b ^ r) & 0x10 != 0 {
                f |= RFLAGS_AF;
            }
            (r, f)
        }
        Alu::And => (a & b, 0),
        Alu::Or => (a | b, 0),
        Alu::Xor => (a ^ b, 0),
    };
    if r == 0 {
        flags |= RFLAGS_ZF;
    }
    if r & sign != 0 {
        flags |= RFLAGS_SF;
    }
    // PF: even number of set bits in the low byte.
    if (r as u8).count_ones().is_multiple_of(2) {
        flags |= RFLAGS_PF;
    }
    (r, flags)
}

/// Decodes the instruction at the start of `bytes` (fetched at RIP) in
/// `bitness`-bit code, checks that its memory operand is `access`, carries
/// it out against `dev`, updates the registers and RFLAGS, and moves RIP
/// past it.
pub fn emulate<D: Mmio>(
    bytes: &[u8],
    bitness: u32,
    access: MmioAccess,
    segs: &SegmentBases,
    regs: &mut Regs,
    dev: &mut D,
) -> Result<Emulated, EmulateError> {
    let bytes = &bytes[..bytes.len().min(MAX_INSN_LEN)];
    let all = InsnBytes::new(bytes);
    let mut decoder = Decoder::try_with_ip(bitness, bytes, regs.rip, DecoderOptions::NONE)
        .map_err(|_| EmulateError::Unsupported {
            bytes: all,
            why: "code size is not 16, 32 or 64 bits",
        })?;
    let insn = decoder.decode();
    if insn.is_invalid() {
        return Err(match decoder.last_error() {
            DecoderError::NoMoreBytes => EmulateError::Truncated { bytes: all },
            _ => EmulateError::Invalid { bytes: all },
        });
    }
    let len = insn.len();
    let ib = InsnBytes::new(&bytes[..len]);
    let unsupported = |why| EmulateError::Unsupported { bytes: ib, why };

    // The one explicit memory operand.
    let mut mem_op = None;
    for i in 0..insn.op_count() {
        match insn.op_kind(i) {
            OpKind::Memory => {
                if mem_op.replace(i).is_some() {
                    return Err(unsupported("two memory operands"));
                }
            }
            OpKind::MemorySegSI
            | OpKind::MemorySegESI
            | OpKind::MemorySegRSI
            | OpKind::MemorySegDI
            | OpKind::MemorySegEDI
            | OpKind::MemorySegRDI
            | OpKind::MemoryESDI
            | OpKind::MemoryESEDI
            | OpKind::MemoryESRDI => return Err(unsupported("string instruction")),
            _ => {}
        }
    }
    let m = mem_op.ok_or(unsupported("no memory operand"))?;
    // The integer accesses of the forms emulated; anything else (SSE,
    // x87, far pointers, descriptor tables) is refused here.
    let size = match insn.memory_size() {
        MemorySize::UInt8 | MemorySize::Int8 => 1,
        MemorySize::UInt16 | MemorySize::Int16 => 2,
        MemorySize::UInt32 | MemorySize::Int32 => 4,
        MemorySize::UInt64 | MemorySize::Int64 => 8,
        _ => return Err(unsupported("not an 8/16/32/64-bit integer access")),
    };
    let linear = linear_address(&insn, m, bitness, segs, regs).ok_or(unsupported(
        "memory operand uses a register the emulator does not hold",
    ))?;
    if (linear & 0xfff) + size as u64 > 0x1000 {
        return Err(unsupported("access crosses a page boundary"));
    }
    if linear & 0xfff != access.gpa & 0xfff || access.linear.is_some_and(|la| la != linear) {
        return Err(EmulateError::AddressMismatch {
            bytes: ib,
            linear,
            access,
        });
    }
    let gpa = access.gpa;
    let mnemonic = insn.mnemonic();
    if insn.has_lock_prefix()
        && !(m == 0
            && matches!(
                mnemonic,
                Mnemonic::Add
                    | Mnemonic::Sub
                    | Mnemonic::And
                    | Mnemonic::Or
                    | Mnemonic::Xor
                    | Mnemonic::Xchg
            ))
    {
        // The decoder refuses LOCK where the CPU raises #UD; keep the rule
        // here too.
        return Err(unsupported("LOCK prefix on a form that does not allow it"));
    }
    // The other operand: a register, an immediate, or none.
    let other = if m == 0 { 1 } else { 0 };
    let operand = |regs: &mut Regs, i: u32| -> Result<u64, EmulateError> {
        match insn.op_kind(i) {
            OpKind::Register => {
                let g = gpr(insn.op_register(i)).ok_or(unsupported("not a general register"))?;
                Ok(regs.read(g))
            }
            _ => insn
                .try_immediate(i)
                .map_err(|_| unsupported("operand is neither a register nor an immediate")),
        }
    };
    let dest_reg = |i: u32| -> Result<Gpr, EmulateError> {
        match insn.op_kind(i) {
            OpKind::Register => {
                gpr(insn.op_register(i)).ok_or(unsupported("not a general register"))
            }
            _ => Err(unsupported("destination is not a register")),
        }
    };
    let load = |dev: &mut D| -> u64 {
        let mut b = [0u8; 8];
        dev.read(gpa, &mut b[..size]);
        u64::from_le_bytes(b)
    };

    if insn.op_count() != 2 {
        return Err(unsupported("not a two-operand form"));
    }
    match mnemonic {
        Mnemonic::Mov if m == 0 => {
            let v = operand(regs, other)?;
            dev.write(gpa, &v.to_le_bytes()[..size]);
        }
        Mnemonic::Mov => {
            let g = dest_reg(0)?;
            let v = load(dev);
            regs.write(g, v);
        }
        Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Movsxd if m == 1 => {
            let g = dest_reg(0)?;
            let v = load(dev);
            let v = if mnemonic == Mnemonic::Movzx {
                v
            } else {
                sign_extend(v, size)
            };
            regs.write(g, v);
        }
        Mnemonic::Add | Mnemonic::Sub | Mnemonic::And | Mnemonic::Or | Mnemonic::Xor => {
            let op = match mnemonic {
                Mnemonic::Add => Alu::Add,
                Mnemonic::Sub => Alu::Sub,
                Mnemonic::And => Alu::And,
                Mnemonic::Or => Alu::Or,
                _ => Alu::Xor,
            };
            if m == 0 {
                let b = operand(regs, 1)?;
                let a = load(dev);
                let (r, flags) = alu(op, a, b, size);
                dev.write(gpa, &r.to_le_bytes()[..size]);
                set_flags(regs, flags);
            } else {
                let g = dest_reg(0)?;
                let a = regs.read(g);
                let b = load(dev);
                let (r, flags) = alu(op, a, b, size);
                regs.write(g, r);
                set_flags(regs, flags);
            }
        }
        // XCHG with memory: locked whatever the prefix (SDM Vol. 2, XCHG).
        Mnemonic::Xchg => {
            let g = dest_reg(other)?;
            let old = load(dev);
            let v = regs.read(g);
            dev.write(gpa, &v.to_le_bytes()[..size]);
            regs.write(g, old);
        }
        Mnemonic::Cmp | Mnemonic::Test => {
            let op = if mnemonic == Mnemonic::Cmp {
                Alu::Sub
            } else {
                Alu::And
            };
            let mem = load(dev);
            let v = operand(regs, other)?;
            let (a, b) = if m == 0 { (mem, v) } else { (v, mem) };
            set_flags(regs, alu(op, a, b, size).1);
        }
        _ => return Err(unsupported("form not emulated")),
    }
    regs.rip = match bitness {
        64 => regs.rip.wrapping_add(len as u64),
        32 => regs.rip.wrapping_add(len as u64) & 0xffff_ffff,
        _ => regs.rip.wrapping_add(len as u64) & 0xffff,
    };
    Ok(Emulated {
        mnemonic,
        len,
        size,
    })
}

fn set_flags(regs: &mut Regs, flags: u64) {
    regs.rflags = (regs.rflags & !RFLAGS_ARITH) | flags;
}

/// Segment base + effective address of memory operand `m` (SDM 3.4.4).
/// In 64-bit mode the ES, CS, SS and DS bases are 0 (3.4.2.1); FS and GS
/// keep theirs. Outside 64-bit mode the linear address wraps at 4 GiB.
fn linear_address(
    insn: &Instruction,
    m: u32,
    bitness: u32,
    segs: &SegmentBases,
    regs: &mut Regs,
) -> Option<u64> {
    let la = insn.virtual_address(m, 0, |r, _, _| {
        let seg = |i: usize, flat: bool| Some(if flat && bitness == 64 { 0 } else { segs.0[i] });
        match r {
            Register::ES => seg(0, true),
            Register::CS => seg(1, true),
            Register::SS => seg(2, true),
            Register::DS => seg(3, true),
            Register::FS => seg(4, false),
            Register::GS => seg(5, false),
            _ => gpr(r).map(|g| regs.read(g)),
        }
    })?;
    Some(if bitness == 64 { la } else { la & 0xffff_ffff })
}
