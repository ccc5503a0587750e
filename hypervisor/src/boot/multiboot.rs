//! Multiboot (version 1, GNU Multiboot Specification 0.6.96): the header a
//! kernel carries, where its bytes go, the information structure it is
//! handed, and the machine state it starts in.
//!
//! Pure: the image is a byte slice, guest memory is reached through
//! [`GuestMemoryWriter`], and addresses are checked against the
//! [`Board`] map. Every check runs before the first write.
//!
//! Placement (QEMU's, which kernels written for QEMU's `pc` expect):
//! - the kernel at its own addresses (ELF `p_paddr`, or the a.out-kludge
//!   fields when header flag 16 is set), each byte in usable RAM;
//! - module 0 (the `--initrd` file) on the first page boundary after the
//!   kernel's end (bss included);
//! - the information structure, the memory map, the strings, the module
//!   list and a small GDT in low memory at [`INFO_BASE`] (QEMU uses 0x9000
//!   too), or after the module when the kernel itself sits there.

use crate::boot::elf::GuestMemoryWriter;
use crate::machine::board::{Board, Region};
use crate::x86::state::{DescriptorTable, GuestState};
use alloc::vec::Vec;
use core::fmt;
use elf::abi::{EM_386, EM_X86_64, ET_EXEC, PT_LOAD};
use elf::endian::LittleEndian;
use elf::ElfBytes;

/// The header's `magic` (spec 3.1.2).
pub const HEADER_MAGIC: u32 = 0x1bad_b002;
/// EAX at entry (spec 3.2).
pub const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// The header lies within this many bytes of the file's start, 4-byte aligned.
pub const SEARCH_BYTES: usize = 8192;

/// Header flags (spec 3.1.2). Bits 0-15 are requirements: a loader that
/// does not know one must refuse the kernel.
pub const FLAG_PAGE_ALIGN: u32 = 1 << 0;
pub const FLAG_MEMORY_INFO: u32 = 1 << 1;
pub const FLAG_VIDEO_MODE: u32 = 1 << 2;
pub const FLAG_AOUT_KLUDGE: u32 = 1 << 16;
const KNOWN_REQUIRED: u32 = FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO | FLAG_VIDEO_MODE;

/// Information-structure flags (spec 3.3).
pub const INFO_MEMORY: u32 = 1 << 0;
pub const INFO_CMDLINE: u32 = 1 << 2;
pub const INFO_MODS: u32 = 1 << 3;
pub const INFO_MMAP: u32 = 1 << 6;
pub const INFO_LOADER_NAME: u32 = 1 << 9;

/// The information structure's size (up to the framebuffer fields, 3.3).
pub const INFO_SIZE: usize = 116;
/// Byte offsets of the fields the loader fills (spec 3.3).
pub mod offset {
    pub const FLAGS: usize = 0;
    pub const MEM_LOWER: usize = 4;
    pub const MEM_UPPER: usize = 8;
    pub const CMDLINE: usize = 16;
    pub const MODS_COUNT: usize = 20;
    pub const MODS_ADDR: usize = 24;
    pub const MMAP_LENGTH: usize = 44;
    pub const MMAP_ADDR: usize = 48;
    pub const BOOT_LOADER_NAME: usize = 64;
}
/// A memory-map entry: `size` (4 bytes, not counting itself), then
/// base_addr (8), length (8), type (4).
pub const MMAP_ENTRY_SIZE: usize = 24;
/// A module-list entry: mod_start, mod_end, string, reserved.
pub const MODULE_ENTRY_SIZE: usize = 16;
/// Where the information structure goes when the kernel leaves it free.
pub const INFO_BASE: u64 = 0x9000;
/// ESP at entry (the spec leaves it undefined; the kernel makes its own
/// stack): the top of free low memory below the information structure,
/// so that an early push does not fault.
pub const ENTRY_STACK: u64 = INFO_BASE;
/// The entry GDT (spec: GDTR undefined; a valid small one is kinder):
/// null, flat 32-bit code (selector 0x08), flat data (0x10).
pub const GDT: [u64; 3] = [0, 0x00cf_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
pub const CODE_SELECTOR: u16 = 0x08;
pub const DATA_SELECTOR: u16 = 0x10;

/// The name in `boot_loader_name`.
pub const LOADER_NAME: &str = concat!("hypervisor ", env!("CARGO_PKG_VERSION"), " (multiboot)");

/// The a.out-kludge address fields (header flag 16, spec 3.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AoutFields {
    pub header_addr: u32,
    pub load_addr: u32,
    pub load_end_addr: u32,
    pub bss_end_addr: u32,
    pub entry_addr: u32,
}

/// A multiboot header found in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Its offset in the file.
    pub offset: usize,
    pub flags: u32,
    /// Present when flag 16 is set.
    pub aout: Option<AoutFields>,
}

/// Why a multiboot kernel cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MultibootError {
    /// Header flags 3-15 name requirements this loader does not know.
    UnknownRequiredFlags {
        flags: u32,
    },
    /// Flag 16 set but the header is cut short before its address fields.
    TruncatedHeader {
        offset: usize,
    },
    /// The a.out-kludge fields contradict each other or the file.
    BadAoutFields(&'static str),
    /// Not flag 16 and not a usable ELF.
    NotElf,
    Elf(&'static str),
    /// An ELF segment's file bytes run past the end of the file.
    Truncated {
        what: &'static str,
        end: u64,
        file_len: usize,
    },
    /// Bytes that would land outside usable RAM (or in a hole of the map).
    OutsideRam {
        start: u64,
        end: u64,
        mem: u64,
    },
    /// Two ELF segments overlap.
    Overlap {
        start: u64,
        end: u64,
    },
    /// The entry point is not inside the loaded image.
    BadEntry {
        entry: u64,
    },
    /// No room left for the module or the information structure.
    NoRoom {
        what: &'static str,
        bytes: u64,
    },
    /// The command line holds a NUL byte.
    CmdlineNul,
    /// Writing guest memory failed at this address.
    Write {
        gpa: u64,
    },
}

impl fmt::Display for MultibootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use MultibootError::*;
        match self {
            UnknownRequiredFlags { flags } => write!(
                f,
                "multiboot header flags {flags:#x} require features this loader does not know \
                 (bits {:#x}; the spec says to refuse such a kernel)",
                flags & 0xffff & !KNOWN_REQUIRED
            ),
            TruncatedHeader { offset } => write!(
                f,
                "multiboot header at file offset {offset:#x} sets flag 16 (address fields) \
                 but the file ends before them"
            ),
            BadAoutFields(why) => write!(f, "multiboot header address fields: {why}"),
            NotElf => f.write_str(
                "multiboot header without flag 16 (address fields), and the file is not an ELF",
            ),
            Elf(why) => write!(f, "multiboot kernel ELF: {why}"),
            Truncated {
                what,
                end,
                file_len,
            } => write!(
                f,
                "multiboot kernel is truncated: {what} ends at file offset {end:#x}, \
                 the file has {file_len:#x} bytes"
            ),
            OutsideRam { start, end, mem } => write!(
                f,
                "multiboot kernel loads [{start:#x}, {end:#x}) outside usable RAM \
                 ([0, 0x9fc00) and [0x100000, {mem:#x}); see the board map)"
            ),
            Overlap { start, end } => {
                write!(
                    f,
                    "multiboot kernel segments overlap at [{start:#x}, {end:#x})"
                )
            }
            BadEntry { entry } => write!(
                f,
                "multiboot kernel entry point {entry:#x} is not in its loaded image"
            ),
            NoRoom { what, bytes } => write!(
                f,
                "no room in guest RAM for the {what} ({bytes:#x} bytes) after the kernel; \
                 give more memory (--mem)"
            ),
            CmdlineNul => f.write_str("the kernel command line holds a NUL byte"),
            Write { gpa } => write!(f, "writing guest memory failed at {gpa:#x}"),
        }
    }
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// What a scan of the first 8 KiB found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    Found(Header),
    /// No magic at a 4-byte-aligned offset.
    None,
    /// The magic, but `magic + flags + checksum != 0` at every place.
    BadChecksum {
        offset: usize,
    },
}

/// Looks for the header (spec 3.1.1): the magic at a 4-byte-aligned offset
/// within the first 8192 bytes, the whole 12-byte header inside them, and
/// `magic + flags + checksum == 0` (mod 2^32).
pub fn scan(image: &[u8]) -> Scan {
    let window = &image[..image.len().min(SEARCH_BYTES)];
    let mut bad = None;
    for offset in (0..window.len().saturating_sub(11)).step_by(4) {
        let (Some(magic), Some(flags), Some(sum)) = (
            le32(window, offset),
            le32(window, offset + 4),
            le32(window, offset + 8),
        ) else {
            break;
        };
        if magic != HEADER_MAGIC {
            continue;
        }
        if magic.wrapping_add(flags).wrapping_add(sum) != 0 {
            bad.get_or_insert(offset);
            continue;
        }
        // Flag 16 with its fields cut off by the file's end: `aout` stays
        // None and `plan` refuses the header.
        let aout = if flags & FLAG_AOUT_KLUDGE != 0 {
            let f = |i: usize| le32(image, offset + 12 + 4 * i);
            (|| {
                Some(AoutFields {
                    header_addr: f(0)?,
                    load_addr: f(1)?,
                    load_end_addr: f(2)?,
                    bss_end_addr: f(3)?,
                    entry_addr: f(4)?,
                })
            })()
        } else {
            None
        };
        return Scan::Found(Header {
            offset,
            flags,
            aout,
        });
    }
    match bad {
        Some(offset) => Scan::BadChecksum { offset },
        None => Scan::None,
    }
}

/// One piece of the kernel to place: `filesz` bytes from file offset
/// `offset` at `gpa`, then zeroes up to `memsz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub gpa: u64,
    pub offset: usize,
    pub filesz: usize,
    pub memsz: u64,
}

impl Piece {
    pub fn end(&self) -> u64 {
        self.gpa + self.memsz
    }
}

/// Where the kernel goes, checked against the file and the board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub pieces: Vec<Piece>,
    pub entry: u32,
    /// Lowest and end address of everything loaded (bss included).
    pub start: u64,
    pub end: u64,
}

/// The pieces the header's flag 16 fields describe (spec 3.1.3).
fn aout_pieces(image: &[u8], h: &Header, a: &AoutFields) -> Result<(Piece, u32), MultibootError> {
    use MultibootError::BadAoutFields;
    if a.load_addr > a.header_addr {
        return Err(BadAoutFields("load_addr lies above header_addr"));
    }
    let before = (a.header_addr - a.load_addr) as usize;
    let offset = h.offset.checked_sub(before).ok_or(BadAoutFields(
        "header_addr - load_addr reaches before the file's start",
    ))?;
    // load_end_addr 0: the text and data run to the end of the file.
    let filesz = if a.load_end_addr == 0 {
        image.len() - offset
    } else {
        if a.load_end_addr < a.load_addr {
            return Err(BadAoutFields("load_end_addr lies below load_addr"));
        }
        (a.load_end_addr - a.load_addr) as usize
    };
    let file_end = offset as u64 + filesz as u64;
    if file_end > image.len() as u64 {
        return Err(MultibootError::Truncated {
            what: "the text and data (load_addr..load_end_addr)",
            end: file_end,
            file_len: image.len(),
        });
    }
    let load_end = u64::from(a.load_addr) + filesz as u64;
    // bss_end_addr 0: no bss.
    let memsz = if a.bss_end_addr == 0 {
        filesz as u64
    } else if u64::from(a.bss_end_addr) < load_end {
        return Err(BadAoutFields("bss_end_addr lies below load_end_addr"));
    } else {
        u64::from(a.bss_end_addr) - u64::from(a.load_addr)
    };
    Ok((
        Piece {
            gpa: a.load_addr.into(),
            offset,
            filesz,
            memsz,
        },
        a.entry_addr,
    ))
}

/// The pieces of an ELF32 or ELF64 kernel: each PT_LOAD at its p_paddr.
/// The entry point, if it lies in a segment's virtual range, is moved by
/// that segment's p_paddr - p_vaddr (as GRUB does for higher-half kernels).
fn elf_pieces(image: &[u8]) -> Result<(Vec<Piece>, u64), MultibootError> {
    use MultibootError::Elf;
    if image.get(..4) != Some(&elf::abi::ELFMAGIC[..]) {
        return Err(MultibootError::NotElf);
    }
    if image.get(elf::abi::EI_DATA) != Some(&elf::abi::ELFDATA2LSB) {
        return Err(Elf("not little endian"));
    }
    let file = ElfBytes::<LittleEndian>::minimal_parse(image).map_err(|_| {
        Elf("its header or program headers are cut short or malformed (a truncated file?)")
    })?;
    let h = &file.ehdr;
    if h.e_machine != EM_386 && h.e_machine != EM_X86_64 {
        return Err(Elf("e_machine is neither EM_386 nor EM_X86_64"));
    }
    if h.e_type != ET_EXEC {
        return Err(Elf("e_type is not ET_EXEC"));
    }
    let phdrs = file.segments().ok_or(Elf("no program headers"))?;
    let mut pieces = Vec::new();
    let mut entry = h.e_entry;
    for ph in phdrs
        .iter()
        .filter(|p| p.p_type == PT_LOAD && p.p_memsz != 0)
    {
        if ph.p_filesz > ph.p_memsz {
            return Err(Elf("a PT_LOAD has p_filesz > p_memsz"));
        }
        let end = ph.p_offset.saturating_add(ph.p_filesz);
        if end > image.len() as u64 {
            return Err(MultibootError::Truncated {
                what: "a PT_LOAD segment",
                end,
                file_len: image.len(),
            });
        }
        if h.e_entry >= ph.p_vaddr && h.e_entry - ph.p_vaddr < ph.p_memsz {
            entry = h.e_entry - ph.p_vaddr + ph.p_paddr;
        }
        if pieces.len() == 64 {
            return Err(Elf("more than 64 PT_LOAD segments"));
        }
        pieces.push(Piece {
            gpa: ph.p_paddr,
            offset: ph.p_offset as usize,
            filesz: ph.p_filesz as usize,
            memsz: ph.p_memsz,
        });
    }
    if pieces.is_empty() {
        return Err(Elf("no PT_LOAD segment"));
    }
    Ok((pieces, entry))
}

/// Checks the header's requirements and where every piece goes.
pub fn plan(image: &[u8], h: &Header, board: &Board) -> Result<Plan, MultibootError> {
    let unknown = h.flags & 0xffff & !KNOWN_REQUIRED;
    if unknown != 0 {
        return Err(MultibootError::UnknownRequiredFlags { flags: h.flags });
    }
    let (pieces, entry) = match &h.aout {
        None if h.flags & FLAG_AOUT_KLUDGE != 0 => {
            return Err(MultibootError::TruncatedHeader { offset: h.offset })
        }
        Some(a) => {
            let (p, e) = aout_pieces(image, h, a)?;
            (alloc::vec![p], u64::from(e))
        }
        None => elf_pieces(image)?,
    };
    let mut start = u64::MAX;
    let mut end = 0;
    for (i, p) in pieces.iter().enumerate() {
        let pend = p.gpa.saturating_add(p.memsz);
        if !board.is_usable(p.gpa, pend) {
            return Err(MultibootError::OutsideRam {
                start: p.gpa,
                end: pend,
                mem: board.mem,
            });
        }
        for q in &pieces[..i] {
            if p.gpa < q.end() && q.gpa < pend {
                return Err(MultibootError::Overlap {
                    start: p.gpa.max(q.gpa),
                    end: pend.min(q.end()),
                });
            }
        }
        start = start.min(p.gpa);
        end = end.max(pend);
    }
    if !pieces.iter().any(|p| entry >= p.gpa && entry < p.end()) {
        return Err(MultibootError::BadEntry { entry });
    }
    Ok(Plan {
        pieces,
        // Below 4 GiB: it lies in usable RAM.
        entry: entry as u32,
        start,
        end,
    })
}

/// What the loader hands the kernel besides itself.
#[derive(Debug, Clone, Copy)]
pub struct BootParams<'a> {
    /// The command line (QEMU's: the kernel's name, a space, `-append`).
    pub cmdline: &'a str,
    /// Module 0 (`--initrd`): its bytes and its string.
    pub module: Option<(&'a [u8], &'a str)>,
}

/// Where things went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    pub entry: u32,
    pub info: u64,
    /// Module 0's [start, end), if any.
    pub module: Option<(u64, u64)>,
    pub kernel: (u64, u64),
}

/// The information block (structure, memory map, strings, module list,
/// GDT) as bytes for address `base`, with the module at `module`.
pub fn info_block(
    base: u64,
    board: &Board,
    params: &BootParams,
    module: Option<(u64, u64)>,
) -> (Vec<u8>, u64) {
    let regions: Vec<Region> = board.regions().to_vec();
    let mut b = alloc::vec![0u8; INFO_SIZE];
    let put32 =
        |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let align8 = |b: &mut Vec<u8>| b.resize(b.len().next_multiple_of(8), 0);
    let flags = INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MMAP | INFO_LOADER_NAME;
    put32(&mut b, offset::MEM_LOWER, board.mem_lower_kib());
    put32(&mut b, offset::MEM_UPPER, board.mem_upper_kib());
    // GDT first (8-byte aligned), then the memory map.
    align8(&mut b);
    let gdt = base + b.len() as u64;
    for d in GDT {
        b.extend(d.to_le_bytes());
    }
    let mmap = base + b.len() as u64;
    for r in &regions {
        b.extend(20u32.to_le_bytes());
        b.extend(r.start.to_le_bytes());
        b.extend(r.len().to_le_bytes());
        b.extend(r.kind.multiboot_type().to_le_bytes());
    }
    put32(&mut b, offset::MMAP_ADDR, mmap as u32);
    put32(
        &mut b,
        offset::MMAP_LENGTH,
        (regions.len() * MMAP_ENTRY_SIZE) as u32,
    );
    let string = |b: &mut Vec<u8>, s: &str| {
        let at = base + b.len() as u64;
        b.extend(s.bytes());
        b.push(0);
        at as u32
    };
    let cmdline = string(&mut b, params.cmdline);
    put32(&mut b, offset::CMDLINE, cmdline);
    let name = string(&mut b, LOADER_NAME);
    put32(&mut b, offset::BOOT_LOADER_NAME, name);
    match (params.module, module) {
        (Some((_, s)), Some((start, end))) => {
            let s = string(&mut b, s);
            align8(&mut b);
            let list = base + b.len() as u64;
            for v in [start as u32, end as u32, s, 0] {
                b.extend(v.to_le_bytes());
            }
            put32(&mut b, offset::MODS_COUNT, 1);
            put32(&mut b, offset::MODS_ADDR, list as u32);
        }
        // No module: the flag stays set with mods_count 0.
        _ => put32(&mut b, offset::MODS_COUNT, 0),
    }
    put32(&mut b, offset::FLAGS, flags);
    (b, gdt)
}

/// Loads a multiboot kernel whose header `scan` found: checks everything,
/// then writes the kernel, its bss, the module and the information block.
pub fn load<W: GuestMemoryWriter + ?Sized>(
    image: &[u8],
    h: &Header,
    board: &Board,
    params: &BootParams,
    mem: &mut W,
) -> Result<(Loaded, GuestState), MultibootError> {
    if params.cmdline.as_bytes().contains(&0) {
        return Err(MultibootError::CmdlineNul);
    }
    let plan = plan(image, h, board)?;
    let page = 4096u64;
    // Module 0 on the first page after the kernel (page alignment is what
    // flag 0 asks for; it is done always, which the spec allows).
    let module = params.module.map(|(bytes, _)| {
        let start = plan
            .end
            .max(crate::machine::board::HIGH_RAM_START)
            .next_multiple_of(page);
        (start, start + bytes.len() as u64)
    });
    if let Some((start, end)) = module {
        if !board.is_usable(start, end) {
            return Err(MultibootError::NoRoom {
                what: "module (--initrd)",
                bytes: end - start,
            });
        }
    }
    // The information block: low memory at INFO_BASE if the kernel leaves
    // it free, else after the module (or the kernel).
    let (probe, _) = info_block(INFO_BASE, board, params, module);
    let size = probe.len() as u64;
    let after = module.map_or(plan.end, |(_, e)| e).next_multiple_of(page);
    let fits = |at: u64| {
        board.is_usable(at, at + size)
            && plan
                .pieces
                .iter()
                .all(|p| at + size <= p.gpa || p.end() <= at)
    };
    let base =
        [INFO_BASE, after]
            .into_iter()
            .find(|&at| fits(at))
            .ok_or(MultibootError::NoRoom {
                what: "multiboot information",
                bytes: size,
            })?;
    if base + size > u64::from(u32::MAX) {
        return Err(MultibootError::NoRoom {
            what: "multiboot information below 4 GiB",
            bytes: size,
        });
    }
    let (info, gdt) = info_block(base, board, params, module);

    let w = |r: Result<(), W::Error>, gpa| r.map_err(|_| MultibootError::Write { gpa });
    for p in &plan.pieces {
        if p.filesz != 0 {
            w(
                mem.write(p.gpa, &image[p.offset..p.offset + p.filesz]),
                p.gpa,
            )?;
        }
        let file_end = p.gpa + p.filesz as u64;
        if file_end < p.end() {
            w(mem.zero(file_end, p.end() - file_end), file_end)?;
        }
    }
    if let (Some((bytes, _)), Some((start, _))) = (params.module, module) {
        w(mem.write(start, bytes), start)?;
    }
    w(mem.write(base, &info), base)?;

    let mut s = GuestState::protected_mode_flat(plan.entry, CODE_SELECTOR, DATA_SELECTOR);
    s.gprs.rax = BOOTLOADER_MAGIC.into();
    s.gprs.rbx = base;
    s.rsp = ENTRY_STACK;
    s.gdtr = DescriptorTable {
        base: gdt,
        limit: (GDT.len() * 8 - 1) as u32,
    };
    Ok((
        Loaded {
            entry: plan.entry,
            info: base,
            module,
            kernel: (plan.start, plan.end),
        },
        s,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::board::Board;
    use alloc::vec;

    use crate::boot::test_mem::Mem;

    const MEM: u64 = 8 << 20;

    fn header(flags: u32, aout: Option<[u32; 5]>) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend(HEADER_MAGIC.to_le_bytes());
        v.extend(flags.to_le_bytes());
        v.extend(
            0u32.wrapping_sub(HEADER_MAGIC)
                .wrapping_sub(flags)
                .to_le_bytes(),
        );
        for f in aout.into_iter().flatten() {
            v.extend(f.to_le_bytes());
        }
        v
    }

    /// An a.out-kludge kernel: 0x40 bytes of padding, the header at file
    /// offset 0x40, code after it; loaded at 1 MiB, 0x1000 bytes of bss.
    fn aout_kernel() -> Vec<u8> {
        let mut k = vec![0x90u8; 0x40];
        let load = 0x10_0000u32;
        let len = 0x200u32;
        k.extend(header(
            FLAG_AOUT_KLUDGE | FLAG_MEMORY_INFO | FLAG_PAGE_ALIGN,
            Some([
                load + 0x40,
                load,
                load + len,
                load + len + 0x1000,
                load + 0x80,
            ]),
        ));
        k.resize(len as usize, 0xcc);
        k
    }

    fn scan_ok(image: &[u8]) -> Header {
        match scan(image) {
            Scan::Found(h) => h,
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn finds_the_header_only_aligned_with_its_checksum_in_8_kib() {
        let k = aout_kernel();
        let h = scan_ok(&k);
        assert_eq!(h.offset, 0x40);
        assert_eq!(h.aout.unwrap().entry_addr, 0x10_0080);
        // Unaligned: not found.
        let mut u = vec![0u8; 2];
        u.extend(header(0, None));
        assert_eq!(scan(&u), Scan::None);
        // Past 8 KiB: not found.
        let mut far = vec![0u8; SEARCH_BYTES];
        far.extend(header(0, None));
        assert_eq!(scan(&far), Scan::None);
        // The last place that fits: 8192 - 12.
        let mut last = vec![0u8; SEARCH_BYTES - 12];
        last.extend(header(0, None));
        assert_eq!(scan_ok(&last).offset, SEARCH_BYTES - 12);
        // Bad checksum.
        let mut bad = header(0, None);
        bad[8] ^= 1;
        assert_eq!(scan(&bad), Scan::BadChecksum { offset: 0 });
    }

    #[test]
    fn refuses_unknown_required_flags_but_not_optional_ones() {
        let k = [header(1 << 5, None), vec![0; 64]].concat();
        let e = plan(&k, &scan_ok(&k), &Board::new(MEM).unwrap()).unwrap_err();
        assert_eq!(e, MultibootError::UnknownRequiredFlags { flags: 1 << 5 });
        assert!(e.to_string().contains("0x20"), "{e}");
        // Bit 17 is optional (unknown optional bits are ignored): the error
        // is then about the (missing) ELF, not the flag.
        let k = [header(1 << 17, None), vec![0; 64]].concat();
        let e = plan(&k, &scan_ok(&k), &Board::new(MEM).unwrap()).unwrap_err();
        assert_eq!(e, MultibootError::NotElf);
    }

    #[test]
    fn loads_an_aout_kludge_kernel_with_info_module_and_entry_state() {
        let k = aout_kernel();
        let board = Board::new(MEM).unwrap();
        let mut m = Mem(vec![0xaa; MEM as usize]);
        let module = b"module bytes";
        let params = BootParams {
            cmdline: "kernel some words",
            module: Some((module, "initrd.bin")),
        };
        let (l, s) = load(&k, &scan_ok(&k), &board, &params, &mut m).unwrap();
        assert_eq!(l.kernel, (0x10_0000, 0x10_1200));
        assert_eq!(l.entry, 0x10_0080);
        // Text and data from file offset 0 (header_addr - load_addr = 0x40).
        assert_eq!(&m.0[0x10_0000..0x10_0200], &k[..]);
        assert!(m.0[0x10_0200..0x10_1200].iter().all(|&b| b == 0), "bss");
        // Module on the next page after the bss.
        assert_eq!(l.module, Some((0x10_2000, 0x10_2000 + module.len() as u64)));
        assert_eq!(&m.0[0x10_2000..0x10_2000 + module.len()], module);
        // Entry state (spec 3.2).
        assert_eq!(s.gprs.rax, 0x2bad_b002);
        assert_eq!(s.gprs.rbx, INFO_BASE);
        assert_eq!(s.rip, 0x10_0080);
        assert_eq!(s.rflags & (1 << 9), 0);
        assert_eq!(s.cr0 & 0x8000_0001, 1, "PE, not PG");
        assert_eq!((s.cs.base, s.cs.limit, s.cs.selector), (0, 0xffff_ffff, 8));
        assert_eq!(
            (s.ds.base, s.ds.limit, s.ss.selector),
            (0, 0xffff_ffff, 0x10)
        );
        assert_eq!(
            s.gprs.rcx | s.gprs.rdx | s.gprs.rsi | s.gprs.rdi | s.gprs.r8,
            0
        );
        // The GDT the GDTR points at holds the selectors in use.
        let gdt = s.gdtr.base;
        assert_eq!(s.gdtr.limit, 23);
        assert_eq!(m.u64(gdt + 8), GDT[1]);
        assert_eq!(m.u64(gdt + 16), GDT[2]);

        // The information structure (spec 3.3).
        let i = l.info;
        let flags = m.u32(i);
        for f in [
            INFO_MEMORY,
            INFO_CMDLINE,
            INFO_MODS,
            INFO_MMAP,
            INFO_LOADER_NAME,
        ] {
            assert_ne!(flags & f, 0, "{f:#x}");
        }
        assert_eq!(
            flags & (1 << 1 | 1 << 11 | 1 << 12),
            0,
            "no boot device, VBE, framebuffer"
        );
        assert_eq!(m.u32(i + 4), 639);
        assert_eq!(m.u32(i + 8), (8 << 10) - 1024);
        assert_eq!(m.cstr(m.u32(i + 16).into()), "kernel some words");
        assert_eq!(m.u32(i + 20), 1);
        let list = u64::from(m.u32(i + 24));
        assert_eq!(m.u32(list), 0x10_2000);
        assert_eq!(m.u32(list + 4), 0x10_2000 + module.len() as u32);
        assert_eq!(m.cstr(m.u32(list + 8).into()), "initrd.bin");
        assert_eq!(m.u32(list + 12), 0);
        assert!(m.cstr(m.u32(i + 64).into()).starts_with("hypervisor "));
        // The memory map: size at offset -4, 24 bytes a step.
        let (len, addr) = (m.u32(i + 44), u64::from(m.u32(i + 48)));
        assert_eq!(len as usize, 6 * MMAP_ENTRY_SIZE);
        let mut got = Vec::new();
        let mut at = addr;
        while at < addr + u64::from(len) {
            let size = m.u32(at);
            got.push((m.u64(at + 4), m.u64(at + 12), m.u32(at + 20)));
            at += u64::from(size) + 4;
        }
        assert_eq!(
            got[..3],
            [
                (0, 0x9_fc00, 1),
                (0x9_fc00, 0x6_0400, 2),
                (0x10_0000, MEM - 0x10_0000, 1)
            ]
        );
        assert_eq!(got[5], (0xfffc_0000, 0x4_0000, 2));
        // Nothing overlaps: info below the kernel, the module after it.
        assert!(i + INFO_SIZE as u64 <= 0x9_fc00);
    }

    #[test]
    fn without_a_module_there_is_an_empty_module_list() {
        let k = aout_kernel();
        let mut m = Mem(vec![0; MEM as usize]);
        let params = BootParams {
            cmdline: "",
            module: None,
        };
        let (l, _) = load(&k, &scan_ok(&k), &Board::new(MEM).unwrap(), &params, &mut m).unwrap();
        assert_eq!(l.module, None);
        assert_eq!(m.u32(l.info + 20), 0);
        assert_eq!(m.cstr(m.u32(l.info + 16).into()), "");
    }

    #[test]
    fn info_offsets_follow_the_spec() {
        assert_eq!(offset::MMAP_ADDR, 48);
        assert_eq!(offset::BOOT_LOADER_NAME, 64);
        assert_eq!(INFO_SIZE, 116);
    }

    /// A minimal ELF32 with one PT_LOAD at `paddr` (vaddr `vaddr`).
    fn elf32(paddr: u32, vaddr: u32, filesz: u32, memsz: u32, entry: u32) -> Vec<u8> {
        let mut e = vec![0u8; 0x1000];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 1; // ELFCLASS32
        e[5] = 1; // little endian
        e[6] = 1;
        let w16 =
            |e: &mut Vec<u8>, at: usize, v: u16| e[at..at + 2].copy_from_slice(&v.to_le_bytes());
        let w32 =
            |e: &mut Vec<u8>, at: usize, v: u32| e[at..at + 4].copy_from_slice(&v.to_le_bytes());
        w16(&mut e, 16, 2); // ET_EXEC
        w16(&mut e, 18, 3); // EM_386
        w32(&mut e, 20, 1);
        w32(&mut e, 24, entry);
        w32(&mut e, 28, 52); // e_phoff
        w16(&mut e, 40, 52); // e_ehsize
        w16(&mut e, 42, 32); // e_phentsize
        w16(&mut e, 44, 1); // e_phnum
        w16(&mut e, 46, 40);
        let ph = 52;
        w32(&mut e, ph, 1); // PT_LOAD
        w32(&mut e, ph + 4, 0x100); // p_offset
        w32(&mut e, ph + 8, vaddr);
        w32(&mut e, ph + 12, paddr);
        w32(&mut e, ph + 16, filesz);
        w32(&mut e, ph + 20, memsz);
        w32(&mut e, ph + 24, 5);
        w32(&mut e, ph + 28, 0x1000);
        // The multiboot header at 0x80 (inside 8 KiB), no flag 16.
        let h = header(FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO, None);
        e[0x80..0x80 + h.len()].copy_from_slice(&h);
        e
    }

    #[test]
    fn loads_elf32_at_p_paddr_and_moves_a_higher_half_entry() {
        let k = elf32(0x20_0000, 0xc020_0000, 0x100, 0x2000, 0xc020_0010);
        let board = Board::new(MEM).unwrap();
        let p = plan(&k, &scan_ok(&k), &board).unwrap();
        assert_eq!(p.entry, 0x20_0010);
        assert_eq!((p.start, p.end), (0x20_0000, 0x20_2000));
        assert_eq!(p.pieces[0].offset, 0x100);
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let board = Board::new(MEM).unwrap();
        let plan_of = |k: &[u8]| plan(k, &scan_ok(k), &board);
        // Load addresses outside RAM.
        let e = plan_of(&elf32(0x4000_0000, 0x4000_0000, 0x10, 0x10, 0x4000_0000)).unwrap_err();
        assert!(
            matches!(
                e,
                MultibootError::OutsideRam {
                    start: 0x4000_0000,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("outside usable RAM"));
        // bss past the end of RAM.
        let e = plan_of(&elf32(0x10_0000, 0x10_0000, 0x10, MEM as u32, 0x10_0000)).unwrap_err();
        assert!(matches!(e, MultibootError::OutsideRam { .. }), "{e}");
        // In the BIOS area hole.
        let e = plan_of(&elf32(0xf_0000, 0xf_0000, 0x10, 0x10, 0xf_0000)).unwrap_err();
        assert!(matches!(e, MultibootError::OutsideRam { .. }), "{e}");
        // A truncated ELF: the segment runs past the file.
        let mut t = elf32(0x10_0000, 0x10_0000, 0x100, 0x100, 0x10_0000);
        t.truncate(0x180);
        let e = plan_of(&t).unwrap_err();
        assert!(matches!(e, MultibootError::Truncated { .. }), "{e}");
        assert!(e.to_string().contains("truncated"));
        // Program headers cut off.
        let mut t = elf32(0x10_0000, 0x10_0000, 0x10, 0x10, 0x10_0000);
        t.truncate(0x50);
        let h = Header {
            offset: 0,
            flags: 0,
            aout: None,
        };
        let e = plan(&t, &h, &board).unwrap_err();
        assert!(e.to_string().contains("cut short"), "{e}");
        // Entry outside the image.
        let e = plan_of(&elf32(0x10_0000, 0x10_0000, 0x10, 0x10, 0x30_0000)).unwrap_err();
        assert_eq!(e, MultibootError::BadEntry { entry: 0x30_0000 });
        // a.out fields: load_end before load, truncated file, header cut short.
        let mut k = aout_kernel();
        k.truncate(0x100);
        let e = plan_of(&k).unwrap_err();
        assert!(matches!(e, MultibootError::Truncated { .. }), "{e}");
        let mut k = vec![0u8; 0x40];
        k.extend(header(FLAG_AOUT_KLUDGE, None));
        k.extend([0; 8]);
        assert_eq!(
            plan_of(&k).unwrap_err(),
            MultibootError::TruncatedHeader { offset: 0x40 }
        );
        let k = [
            header(
                FLAG_AOUT_KLUDGE,
                Some([0x10_0000, 0x10_1000, 0, 0, 0x10_0000]),
            ),
            vec![0; 64],
        ]
        .concat();
        assert!(matches!(
            plan_of(&k).unwrap_err(),
            MultibootError::BadAoutFields(_)
        ));
        // a.out load address outside RAM.
        let k = [
            header(
                FLAG_AOUT_KLUDGE,
                Some([0x8000_0000, 0x8000_0000, 0, 0, 0x8000_0000]),
            ),
            vec![0; 64],
        ]
        .concat();
        assert!(matches!(
            plan_of(&k).unwrap_err(),
            MultibootError::OutsideRam { .. }
        ));
    }

    #[test]
    fn a_module_that_does_not_fit_is_refused() {
        let k = aout_kernel();
        let big = vec![1u8; (MEM - 0x10_0000) as usize];
        let params = BootParams {
            cmdline: "",
            module: Some((&big, "big")),
        };
        let mut m = Mem(vec![0; MEM as usize]);
        let e = load(&k, &scan_ok(&k), &Board::new(MEM).unwrap(), &params, &mut m).unwrap_err();
        assert!(matches!(e, MultibootError::NoRoom { .. }), "{e}");
    }
}
