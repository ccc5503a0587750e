//! The PVH boot ABI (Xen's docs/misc/pvh.pandoc; the start info layout of
//! xen/include/public/arch-x86/hvm/start_info.h, which Linux repeats in
//! include/xen/interface/hvm/start_info.h): an ELF kernel whose
//! `XEN_ELFNOTE_PHYS32_ENTRY` note names a 32-bit entry point, entered in
//! protected mode with paging off and EBX pointing at an `hvm_start_info`.
//! An uncompressed Linux `vmlinux` built with CONFIG_PVH carries this note.
//!
//! Pure, like `multiboot` and `linux`: every check runs before the first
//! write to guest memory.
//!
//! Placement: each `PT_LOAD` at its `p_paddr` (usable RAM, no overlaps);
//! the start info block at [`INFO_BASE`] in low memory: `hvm_start_info`
//! (version 1, 56 bytes), the memory map (24-byte entries from the board
//! map, E820 types), the module list (one 32-byte entry for `--initrd`), the
//! command line (`--append`'s text) and a small GDT; the initrd as module 0,
//! page-aligned, as high in RAM below 4 GiB as it fits beside the kernel.

use crate::boot::elf::GuestMemoryWriter;
use crate::boot::linux::{e820_type, highest_fit};
use crate::machine::board::Board;
use crate::x86::state::{DescriptorTable, GuestState, Segment};
use alloc::vec::Vec;
use core::fmt;
use elf::abi::{EM_X86_64, ET_EXEC, PT_LOAD, PT_NOTE};
use elf::endian::LittleEndian;
use elf::note::Note;
use elf::ElfBytes;

/// The note type that holds the 32-bit physical entry point (Xen's
/// public/elfnote.h).
pub const XEN_ELFNOTE_PHYS32_ENTRY: u64 = 18;
/// `hvm_start_info.magic`: "xEn3" with the 0x80 bit of the "E" set.
pub const START_MAGIC: u32 = 0x336e_c578;
/// Version 1 adds the memory map.
pub const START_VERSION: u32 = 1;
/// Offsets in `hvm_start_info`.
pub mod offset {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 4;
    pub const FLAGS: usize = 8;
    pub const NR_MODULES: usize = 12;
    pub const MODLIST_PADDR: usize = 16;
    pub const CMDLINE_PADDR: usize = 24;
    pub const RSDP_PADDR: usize = 32;
    pub const MEMMAP_PADDR: usize = 40;
    pub const MEMMAP_ENTRIES: usize = 48;
    pub const SIZE: usize = 56;
}
/// `hvm_memmap_table_entry`: addr, size (8 each), type, reserved (4 each).
pub const MEMMAP_ENTRY_SIZE: usize = 24;
/// `hvm_modlist_entry`: paddr, size, cmdline_paddr, reserved (8 each).
pub const MODLIST_ENTRY_SIZE: usize = 32;
/// Where the start info block goes (nothing is loaded at 0: a 0 address
/// in the structure means "absent").
pub const INFO_BASE: u64 = 0x1000;
/// The entry GDT (the ABI leaves selectors unspecified; the kernel loads
/// its own): null, flat 32-bit code (0x08), flat data (0x10).
pub const GDT: [u64; 3] = [0, 0x00cf_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
pub const CODE_SELECTOR: u16 = 0x08;
pub const DATA_SELECTOR: u16 = 0x10;

/// Why a PVH kernel cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PvhError {
    Elf(&'static str),
    /// A segment's file bytes run past the end of the file.
    Truncated {
        end: u64,
        file_len: usize,
    },
    /// A segment outside usable RAM.
    OutsideRam {
        start: u64,
        end: u64,
        mem: u64,
    },
    Overlap {
        start: u64,
        end: u64,
    },
    /// The entry point is not in a loaded segment.
    BadEntry {
        entry: u64,
    },
    /// The start info block or the initrd does not fit.
    NoRoom {
        what: &'static str,
        bytes: u64,
    },
    CmdlineNul,
    Write {
        gpa: u64,
    },
}

impl fmt::Display for PvhError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use PvhError::*;
        match *self {
            Elf(why) => write!(f, "PVH kernel ELF: {why}"),
            Truncated { end, file_len } => write!(
                f,
                "PVH kernel is truncated: a PT_LOAD segment ends at file offset {end:#x}, the \
                 file has {file_len:#x} bytes"
            ),
            OutsideRam { start, end, mem } => write!(
                f,
                "PVH kernel loads [{start:#x}, {end:#x}) outside usable RAM ({} MiB; see the \
                 board map); give more memory (--mem)",
                mem >> 20
            ),
            Overlap { start, end } => {
                write!(f, "PVH kernel segments overlap at [{start:#x}, {end:#x})")
            }
            BadEntry { entry } => write!(
                f,
                "PVH entry point {entry:#x} (XEN_ELFNOTE_PHYS32_ENTRY) is not in a loaded segment"
            ),
            NoRoom { what, bytes } => write!(
                f,
                "no room in guest RAM for the {what} ({bytes:#x} bytes) beside the PVH kernel"
            ),
            CmdlineNul => f.write_str("the kernel command line holds a NUL byte"),
            Write { gpa } => write!(f, "writing guest memory failed at {gpa:#x}"),
        }
    }
}

fn parse(image: &[u8]) -> Result<ElfBytes<'_, LittleEndian>, PvhError> {
    if image.get(..4) != Some(&elf::abi::ELFMAGIC[..]) {
        return Err(PvhError::Elf("not an ELF file"));
    }
    ElfBytes::<LittleEndian>::minimal_parse(image)
        .map_err(|_| PvhError::Elf("its header or program headers are cut short or malformed"))
}

/// The entry point of the `XEN_ELFNOTE_PHYS32_ENTRY` note ("Xen" owner, a
/// 4- or 8-byte little-endian address) in the ELF's PT_NOTE segments, if
/// the file is an ELF that has one.
pub fn entry_note(image: &[u8]) -> Option<u64> {
    let file = parse(image).ok()?;
    let phdrs = file.segments()?;
    for ph in phdrs.iter().filter(|p| p.p_type == PT_NOTE) {
        let Ok(notes) = file.segment_data_as_notes(&ph) else {
            continue;
        };
        for note in notes {
            let Note::Unknown(n) = note else { continue };
            if n.n_type != XEN_ELFNOTE_PHYS32_ENTRY || n.name_str().ok() != Some("Xen") {
                continue;
            }
            return match *n.desc {
                [a, b, c, d] => Some(u32::from_le_bytes([a, b, c, d]).into()),
                [a, b, c, d, e, f, g, h] => Some(u64::from_le_bytes([a, b, c, d, e, f, g, h])),
                _ => None,
            };
        }
    }
    None
}

/// One PT_LOAD: `filesz` bytes from file offset `offset` at `gpa`, zeroes
/// up to `memsz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub gpa: u64,
    pub offset: usize,
    pub filesz: usize,
    pub memsz: u64,
}

/// The kernel's pieces, checked against the file and the board.
pub fn pieces(image: &[u8], entry: u64, board: &Board) -> Result<Vec<Piece>, PvhError> {
    let file = parse(image)?;
    let h = &file.ehdr;
    if h.e_machine != EM_X86_64 && h.e_machine != elf::abi::EM_386 {
        return Err(PvhError::Elf("e_machine is neither EM_X86_64 nor EM_386"));
    }
    if h.e_type != ET_EXEC {
        return Err(PvhError::Elf("e_type is not ET_EXEC"));
    }
    let phdrs = file.segments().ok_or(PvhError::Elf("no program headers"))?;
    let mut out: Vec<Piece> = Vec::new();
    for ph in phdrs
        .iter()
        .filter(|p| p.p_type == PT_LOAD && p.p_memsz != 0)
    {
        if ph.p_filesz > ph.p_memsz {
            return Err(PvhError::Elf("a PT_LOAD has p_filesz > p_memsz"));
        }
        let end = ph.p_offset.saturating_add(ph.p_filesz);
        if end > image.len() as u64 {
            return Err(PvhError::Truncated {
                end,
                file_len: image.len(),
            });
        }
        let p = Piece {
            gpa: ph.p_paddr,
            offset: ph.p_offset as usize,
            filesz: ph.p_filesz as usize,
            memsz: ph.p_memsz,
        };
        let pend = p.gpa.saturating_add(p.memsz);
        if !board.is_usable(p.gpa, pend) {
            return Err(PvhError::OutsideRam {
                start: p.gpa,
                end: pend,
                mem: board.mem,
            });
        }
        if let Some(q) = out.iter().find(|q| p.gpa < q.gpa + q.memsz && q.gpa < pend) {
            return Err(PvhError::Overlap {
                start: p.gpa.max(q.gpa),
                end: pend.min(q.gpa + q.memsz),
            });
        }
        if out.len() == 64 {
            return Err(PvhError::Elf("more than 64 PT_LOAD segments"));
        }
        out.push(p);
    }
    if out.is_empty() {
        return Err(PvhError::Elf("no PT_LOAD segment"));
    }
    if !out
        .iter()
        .any(|p| entry >= p.gpa && entry < p.gpa + p.filesz as u64)
    {
        return Err(PvhError::BadEntry { entry });
    }
    Ok(out)
}

/// What the loader hands the kernel besides itself.
#[derive(Debug, Clone, Copy)]
pub struct BootParams<'a> {
    pub cmdline: &'a str,
    /// Module 0 (empty: none).
    pub initrd: &'a [u8],
    pub acpi_rsdp: Option<u64>,
}

/// Where things went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    pub entry: u64,
    pub start_info: u64,
    /// Lowest and end address of the loaded segments.
    pub kernel: (u64, u64),
    pub initrd: Option<(u64, u64)>,
}

/// The start info block for `base`: (bytes, GDT address).
pub fn start_info_block(
    base: u64,
    board: &Board,
    params: &BootParams,
    initrd: Option<(u64, u64)>,
) -> (Vec<u8>, u64) {
    let mut b = alloc::vec![0u8; offset::SIZE];
    let put32 =
        |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let put64 =
        |b: &mut Vec<u8>, at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    put32(&mut b, offset::MAGIC, START_MAGIC);
    put32(&mut b, offset::VERSION, START_VERSION);
    let memmap = base + b.len() as u64;
    let regions = board.regions();
    for r in &regions {
        b.extend(r.start.to_le_bytes());
        b.extend(r.len().to_le_bytes());
        b.extend(e820_type(r.kind).to_le_bytes());
        b.extend(0u32.to_le_bytes());
    }
    put64(&mut b, offset::MEMMAP_PADDR, memmap);
    put32(&mut b, offset::MEMMAP_ENTRIES, regions.len() as u32);
    if let Some((start, end)) = initrd {
        let list = base + b.len() as u64;
        for v in [start, end - start, 0, 0] {
            b.extend(v.to_le_bytes());
        }
        put32(&mut b, offset::NR_MODULES, 1);
        put64(&mut b, offset::MODLIST_PADDR, list);
    }
    let cmdline = base + b.len() as u64;
    b.extend(params.cmdline.bytes());
    b.push(0);
    put64(&mut b, offset::CMDLINE_PADDR, cmdline);
    if let Some(rsdp) = params.acpi_rsdp {
        put64(&mut b, offset::RSDP_PADDR, rsdp);
    }
    b.resize(b.len().next_multiple_of(8), 0);
    let gdt = base + b.len() as u64;
    for d in GDT {
        b.extend(d.to_le_bytes());
    }
    (b, gdt)
}

/// Loads a PVH kernel whose entry `entry_note` found.
pub fn load<W: GuestMemoryWriter + ?Sized>(
    image: &[u8],
    entry: u64,
    board: &Board,
    params: &BootParams,
    mem: &mut W,
) -> Result<(Loaded, GuestState), PvhError> {
    if params.cmdline.as_bytes().contains(&0) {
        return Err(PvhError::CmdlineNul);
    }
    let pieces = pieces(image, entry, board)?;
    let kernel = pieces.iter().fold((u64::MAX, 0), |(s, e), p| {
        (s.min(p.gpa), e.max(p.gpa + p.memsz))
    });
    let mut taken: Vec<(u64, u64)> = pieces.iter().map(|p| (p.gpa, p.gpa + p.memsz)).collect();
    // The block's size does not depend on where the initrd goes.
    let probe = (!params.initrd.is_empty()).then_some((0, params.initrd.len() as u64));
    let size = start_info_block(INFO_BASE, board, params, probe).0.len() as u64;
    let block = (INFO_BASE, INFO_BASE + size);
    if !board.is_usable(block.0, block.1) || taken.iter().any(|&(s, e)| block.0 < e && s < block.1)
    {
        return Err(PvhError::NoRoom {
            what: "start info",
            bytes: size,
        });
    }
    taken.push(block);
    let initrd = if params.initrd.is_empty() {
        None
    } else {
        let len = params.initrd.len() as u64;
        let at = highest_fit(board, len, 4096, 1 << 32, &taken).ok_or(PvhError::NoRoom {
            what: "initrd (module 0)",
            bytes: len,
        })?;
        Some((at, at + len))
    };
    let (info, gdt) = start_info_block(INFO_BASE, board, params, initrd);

    let w = |r: Result<(), W::Error>, gpa| r.map_err(|_| PvhError::Write { gpa });
    for p in &pieces {
        w(
            mem.write(p.gpa, &image[p.offset..p.offset + p.filesz]),
            p.gpa,
        )?;
        let file_end = p.gpa + p.filesz as u64;
        if file_end < p.gpa + p.memsz {
            w(mem.zero(file_end, p.gpa + p.memsz - file_end), file_end)?;
        }
    }
    if let Some((start, _)) = initrd {
        w(mem.write(start, params.initrd), start)?;
    }
    w(mem.write(INFO_BASE, &info), INFO_BASE)?;

    // pvh.pandoc: CR0.PE only, CR4 0, flat 32-bit CS and DS/ES, TR a 32-bit
    // TSS of limit 0x67, EFLAGS 0x2, EBX the start info.
    let mut s = GuestState::protected_mode_flat(entry as u32, CODE_SELECTOR, DATA_SELECTOR);
    s.gprs.rbx = INFO_BASE;
    s.rsp = INFO_BASE;
    s.tr = Segment {
        limit: 0x67,
        ..s.tr
    };
    s.gdtr = DescriptorTable {
        base: gdt,
        limit: (GDT.len() * 8 - 1) as u32,
    };
    Ok((
        Loaded {
            entry,
            start_info: INFO_BASE,
            kernel,
            initrd,
        },
        s,
    ))
}

/// A synthetic PVH kernel for host tests.
#[cfg(test)]
pub(crate) mod test_image {
    use alloc::vec;
    use alloc::vec::Vec;

    /// Where its one PT_LOAD goes and how big it is.
    pub const PADDR: u64 = 0x20_0000;
    pub const FILESZ: u64 = 0x100;
    pub const MEMSZ: u64 = 0x2000;
    pub const ENTRY: u64 = PADDR + 0x10;

    /// An ELF64 `ET_EXEC` with a PT_LOAD (file 0x200.., linked high like
    /// vmlinux, loaded at `PADDR`) and a PT_NOTE holding `notes`, each
    /// (owner, type, desc).
    pub fn elf(notes: &[(&str, u32, &[u8])]) -> Vec<u8> {
        let mut e = vec![0u8; 0x200 + FILESZ as usize];
        let w16 =
            |e: &mut Vec<u8>, at: usize, v: u16| e[at..at + 2].copy_from_slice(&v.to_le_bytes());
        let w32 =
            |e: &mut Vec<u8>, at: usize, v: u32| e[at..at + 4].copy_from_slice(&v.to_le_bytes());
        let w64 =
            |e: &mut Vec<u8>, at: usize, v: u64| e[at..at + 8].copy_from_slice(&v.to_le_bytes());
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2; // ELFCLASS64
        e[5] = 1; // little endian
        e[6] = 1;
        w16(&mut e, 16, 2); // ET_EXEC
        w16(&mut e, 18, 62); // EM_X86_64
        w32(&mut e, 20, 1);
        w64(&mut e, 24, 0xffff_ffff_8000_0000 + ENTRY); // e_entry (virtual)
        w64(&mut e, 32, 0x40); // e_phoff
        w16(&mut e, 52, 64); // e_ehsize
        w16(&mut e, 54, 56); // e_phentsize
        w16(&mut e, 56, 2); // e_phnum
                            // The notes at 0x100.
        let mut n = Vec::new();
        for (owner, ty, desc) in notes {
            n.extend((owner.len() as u32 + 1).to_le_bytes());
            n.extend((desc.len() as u32).to_le_bytes());
            n.extend(ty.to_le_bytes());
            n.extend(owner.bytes());
            n.push(0);
            n.resize(n.len().next_multiple_of(4), 0);
            n.extend(*desc);
            n.resize(n.len().next_multiple_of(4), 0);
        }
        assert!(n.len() <= 0x100);
        e[0x100..0x100 + n.len()].copy_from_slice(&n);
        // PT_LOAD.
        let ph = 0x40;
        w32(&mut e, ph, 1);
        w32(&mut e, ph + 4, 5); // R X
        w64(&mut e, ph + 8, 0x200); // p_offset
        w64(&mut e, ph + 16, 0xffff_ffff_8000_0000 + PADDR); // p_vaddr
        w64(&mut e, ph + 24, PADDR); // p_paddr
        w64(&mut e, ph + 32, FILESZ);
        w64(&mut e, ph + 40, MEMSZ);
        w64(&mut e, ph + 48, 0x1000);
        // PT_NOTE.
        let ph = 0x40 + 56;
        w32(&mut e, ph, 4);
        w32(&mut e, ph + 4, 4);
        w64(&mut e, ph + 8, 0x100);
        w64(&mut e, ph + 32, n.len() as u64);
        w64(&mut e, ph + 40, n.len() as u64);
        w64(&mut e, ph + 48, 4);
        // The code: a recognisable pattern.
        for (i, b) in e[0x200..].iter_mut().enumerate() {
            *b = 0x90 ^ i as u8;
        }
        e
    }

    /// A PVH kernel as Linux marks one: other Xen notes first, then the
    /// 8-byte PHYS32_ENTRY.
    pub fn kernel() -> Vec<u8> {
        elf(&[
            ("Xen", 6, b"linux\0"),
            ("GNU", 3, &[1, 2, 3, 4]),
            (
                "Xen",
                super::XEN_ELFNOTE_PHYS32_ENTRY as u32,
                &ENTRY.to_le_bytes(),
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::test_image::*;
    use super::*;
    use alloc::vec;

    use crate::boot::test_mem::Mem;

    const MEM: u64 = 16 << 20;

    #[test]
    fn finds_the_phys32_entry_note() {
        assert_eq!(entry_note(&kernel()), Some(ENTRY));
        // A 4-byte descriptor (32-bit kernels).
        let k = elf(&[("Xen", 18, &0x20_0040u32.to_le_bytes())]);
        assert_eq!(entry_note(&k), Some(0x20_0040));
        // The type under another owner, another Xen note, a bad size: none.
        assert_eq!(entry_note(&elf(&[("Xem", 18, &ENTRY.to_le_bytes())])), None);
        assert_eq!(entry_note(&elf(&[("Xen", 17, &ENTRY.to_le_bytes())])), None);
        assert_eq!(entry_note(&elf(&[("Xen", 18, &[1, 2])])), None);
        assert_eq!(entry_note(b"not an elf at all"), None);
        // format::detect names it.
        use crate::boot::format::{detect, KernelFormat};
        assert_eq!(detect(&kernel()), Ok(KernelFormat::Pvh { entry: ENTRY }));
        let e = detect(&elf(&[])).unwrap_err().to_string();
        assert!(e.contains("without a PVH entry note"), "{e}");
    }

    #[test]
    fn loads_with_start_info_memmap_module_and_entry_state() {
        let k = kernel();
        let board = Board::new(MEM).unwrap();
        let mut m = Mem(vec![0xaa; MEM as usize]);
        let initrd = vec![0x5au8; 0x1800];
        let params = BootParams {
            cmdline: "console=ttyS0",
            initrd: &initrd,
            acpi_rsdp: Some(0xe_0000),
        };
        let (l, s) = load(&k, ENTRY, &board, &params, &mut m).unwrap();
        assert_eq!(l.kernel, (PADDR, PADDR + MEMSZ));
        assert_eq!(l.entry, ENTRY);
        assert_eq!(&m.0[PADDR as usize..(PADDR + FILESZ) as usize], &k[0x200..]);
        assert!(m.0[(PADDR + FILESZ) as usize..(PADDR + MEMSZ) as usize]
            .iter()
            .all(|&b| b == 0));
        // The initrd at the top of RAM.
        assert_eq!(l.initrd, Some((MEM - 0x2000, MEM - 0x800)));
        assert_eq!(
            &m.0[(MEM - 0x2000) as usize..(MEM - 0x800) as usize],
            &initrd[..]
        );
        // hvm_start_info at its offsets.
        let i = l.start_info;
        assert_eq!(i, INFO_BASE);
        assert_eq!(m.u32(i + offset::MAGIC as u64), 0x336e_c578);
        assert_eq!(m.u32(i + offset::VERSION as u64), 1);
        assert_eq!(m.u32(i + offset::FLAGS as u64), 0);
        assert_eq!(m.u32(i + offset::NR_MODULES as u64), 1);
        assert_eq!(m.u64(i + offset::RSDP_PADDR as u64), 0xe_0000);
        let list = m.u64(i + offset::MODLIST_PADDR as u64);
        assert_eq!(
            (
                m.u64(list),
                m.u64(list + 8),
                m.u64(list + 16),
                m.u64(list + 24)
            ),
            (MEM - 0x2000, 0x1800, 0, 0)
        );
        let cmd = m.u64(i + offset::CMDLINE_PADDR as u64) as usize;
        assert_eq!(&m.0[cmd..cmd + 14], b"console=ttyS0\0");
        let map = m.u64(i + offset::MEMMAP_PADDR as u64);
        assert_eq!(m.u32(i + offset::MEMMAP_ENTRIES as u64), 6);
        let entry = |n: u64| {
            let at = map + n * MEMMAP_ENTRY_SIZE as u64;
            (m.u64(at), m.u64(at + 8), m.u32(at + 16), m.u32(at + 20))
        };
        assert_eq!(entry(0), (0, 0x9_fc00, 1, 0));
        assert_eq!(entry(1), (0x9_fc00, 0x6_0400, 2, 0));
        assert_eq!(entry(2), (0x10_0000, MEM - 0x10_0000, 1, 0));
        assert_eq!(entry(5), (0xfffc_0000, 0x4_0000, 2, 0));
        // Entry state (pvh.pandoc).
        assert_eq!(s.rip, ENTRY);
        assert_eq!(s.gprs.rbx, INFO_BASE);
        assert!(!s.ia32e());
        assert_eq!(
            s.cr0 & (crate::x86::CR0_PE | crate::x86::CR0_PG),
            crate::x86::CR0_PE
        );
        assert_eq!(s.cr4, 0);
        assert_eq!(s.efer, 0);
        assert_eq!(s.rflags, 0x2);
        assert_eq!((s.cs.base, s.cs.limit), (0, 0xffff_ffff));
        assert_eq!(s.cs.access & (1 << 14 | 1 << 13), 1 << 14, "32-bit code");
        assert_eq!(
            (s.ds.base, s.ds.limit, s.es.limit),
            (0, 0xffff_ffff, 0xffff_ffff)
        );
        assert_eq!((s.tr.base, s.tr.limit, s.tr.access & 0xf), (0, 0x67, 0xb));
        // The GDT the GDTR names holds the selectors in use.
        assert_eq!(s.gdtr.limit, 23);
        assert_eq!(m.u64(s.gdtr.base + u64::from(s.cs.selector)), GDT[1]);
        assert_eq!(m.u64(s.gdtr.base + u64::from(s.ds.selector)), GDT[2]);
    }

    #[test]
    fn without_an_initrd_there_is_no_module() {
        let mut m = Mem(vec![0; MEM as usize]);
        let params = BootParams {
            cmdline: "",
            initrd: &[],
            acpi_rsdp: None,
        };
        let (l, _) = load(&kernel(), ENTRY, &Board::new(MEM).unwrap(), &params, &mut m).unwrap();
        assert_eq!(l.initrd, None);
        assert_eq!(m.u32(INFO_BASE + offset::NR_MODULES as u64), 0);
        assert_eq!(m.u64(INFO_BASE + offset::MODLIST_PADDR as u64), 0);
        assert_eq!(m.u64(INFO_BASE + offset::RSDP_PADDR as u64), 0);
    }

    #[test]
    fn refusals_say_what_is_wrong_and_write_nothing() {
        let board = Board::new(MEM).unwrap();
        let mut m = Mem(vec![0xaa; MEM as usize]);
        let params = BootParams {
            cmdline: "",
            initrd: &[],
            acpi_rsdp: None,
        };
        let mut load_err =
            |k: &[u8], entry: u64, p: &BootParams| load(k, entry, &board, p, &mut m).unwrap_err();
        // The entry outside the loaded bytes.
        let e = load_err(&kernel(), PADDR + FILESZ, &params);
        assert_eq!(
            e,
            PvhError::BadEntry {
                entry: PADDR + FILESZ
            }
        );
        // Truncated file.
        let mut t = kernel();
        t.truncate(0x280);
        let e = load_err(&t, ENTRY, &params);
        assert_eq!(
            e,
            PvhError::Truncated {
                end: 0x300,
                file_len: 0x280
            }
        );
        // Segment outside RAM (p_paddr 1 GiB).
        let mut o = kernel();
        o[0x40 + 24..0x40 + 32].copy_from_slice(&(1u64 << 30).to_le_bytes());
        let e = load_err(&o, 1 << 30, &params);
        assert!(
            matches!(
                e,
                PvhError::OutsideRam {
                    start: 0x4000_0000,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("--mem"), "{e}");
        // An initrd larger than the RAM left.
        let big = vec![1u8; (MEM - 0x10_0000) as usize];
        let p = BootParams {
            initrd: &big,
            ..params
        };
        let e = load_err(&kernel(), ENTRY, &p);
        assert!(
            matches!(
                e,
                PvhError::NoRoom {
                    what: "initrd (module 0)",
                    ..
                }
            ),
            "{e}"
        );
        let p = BootParams {
            cmdline: "a\0b",
            ..params
        };
        assert_eq!(load_err(&kernel(), ENTRY, &p), PvhError::CmdlineNul);
        assert!(m.0.iter().all(|&b| b == 0xaa));
    }
}
