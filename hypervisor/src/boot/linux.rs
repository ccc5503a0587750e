//! The Linux x86 boot protocol (Documentation/arch/x86/boot.rst, "64-bit
//! Boot Protocol"; the zero page: zero-page.rst and
//! arch/x86/include/uapi/asm/bootparam.h): a bzImage's setup header, where
//! its pieces go, the zero page (`struct boot_params`) it is handed, and the
//! 64-bit state vCPU 0 enters it in.
//!
//! Pure, like `multiboot`: the image is a byte slice, guest memory is reached
//! through [`GuestMemoryWriter`], addresses are checked against the
//! [`Board`] map, and every check runs before the first write.
//!
//! What is accepted: a setup header ("HdrS" at 0x202, 0xAA55 at 0x1FE) of
//! protocol 2.12 or later (xloadflags), a bzImage (`LOADED_HIGH`) with the
//! 64-bit entry (`XLF_KERNEL_64`), its protected-mode part whole in the file
//! (`syssize`). The real-mode setup code is not run: the 64-bit entry skips
//! it, and the loader fills the zero page the setup code would have.
//!
//! Placement:
//! ```text
//! 0x1000  PML4, 0x2000 PDPT, 0x3000-0x6fff four page directories: 0-4 GiB
//!         identity-mapped with 2 MiB pages (boot.rst: the kernel's
//!         init_size range, the zero page and the command line must be
//!         identity-mapped; all of RAM is)
//! 0x7000  the zero page (4 KiB)
//! 0x8000  the GDT: __BOOT_CS 0x10 (64-bit code), __BOOT_DS 0x18 (flat data)
//! 0x8000-0x10000  the entry stack (RSP = 0x10000; the kernel makes its own)
//! 0x20000 the command line, NUL-terminated (at most cmdline_size bytes)
//! pref_address (or the lowest kernel_alignment-aligned place in usable RAM
//!         where init_size fits): the protected-mode kernel, file bytes
//!         from (setup_sects + 1) * 512 on
//! high    the initrd, page-aligned, as high as fits below initrd_addr_max
//!         and the end of RAM
//! ```
//! The low pieces lie in usable RAM (E820 type 1): Linux reserves the first
//! megabyte itself and copies the zero page and the command line before it
//! allocates memory; the page tables and GDT are dead once it loads its own.

use crate::boot::elf::GuestMemoryWriter;
use crate::machine::board::{Board, RegionKind, HIGH_RAM_START, LOW_RAM_END};
use crate::x86::state::{DescriptorTable, GuestState};
use alloc::vec::Vec;
use core::fmt;

/// Offsets in the file, which are also offsets in the zero page: the setup
/// header sits at 0x1F1 in both (boot.rst, "The Real-Mode Kernel Header").
pub mod hdr {
    pub const START: usize = 0x1f1;
    pub const SETUP_SECTS: usize = 0x1f1;
    pub const SYSSIZE: usize = 0x1f4;
    pub const BOOT_FLAG: usize = 0x1fe;
    pub const JUMP: usize = 0x200;
    pub const HEADER: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const TYPE_OF_LOADER: usize = 0x210;
    pub const LOADFLAGS: usize = 0x211;
    pub const CODE32_START: usize = 0x214;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21c;
    pub const HEAP_END_PTR: usize = 0x224;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const INITRD_ADDR_MAX: usize = 0x22c;
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    pub const RELOCATABLE_KERNEL: usize = 0x234;
    pub const MIN_ALIGNMENT: usize = 0x235;
    pub const XLOADFLAGS: usize = 0x236;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const PREF_ADDRESS: usize = 0x258;
    pub const INIT_SIZE: usize = 0x260;
    /// The fields read here end with init_size: a header must reach this far
    /// (protocol 2.12 headers reach 0x268 at least).
    pub const NEEDED_END: usize = 0x264;
    /// struct boot_params leaves the setup header room up to 0x290, where
    /// edd_mbr_sig_buffer begins.
    pub const MAX_END: usize = 0x290;
}

/// Fields of struct boot_params outside the setup header (zero-page.rst).
pub mod zp {
    pub const ACPI_RSDP_ADDR: usize = 0x070;
    pub const EXT_RAMDISK_IMAGE: usize = 0x0c0;
    pub const EXT_RAMDISK_SIZE: usize = 0x0c4;
    pub const EXT_CMD_LINE_PTR: usize = 0x0c8;
    pub const E820_ENTRIES: usize = 0x1e8;
    /// 0 here tells the kernel the loader copied only the setup header.
    pub const SENTINEL: usize = 0x1ef;
    pub const E820_TABLE: usize = 0x2d0;
    /// E820_MAX_ENTRIES_ZEROPAGE.
    pub const E820_MAX: usize = 128;
    /// struct boot_e820_entry: addr (8), size (8), type (4), packed.
    pub const E820_ENTRY_SIZE: usize = 20;
    pub const SIZE: usize = 4096;
}

/// The oldest protocol accepted: 2.12 added xloadflags, which says whether
/// the 64-bit entry exists.
pub const MIN_VERSION: u16 = 0x020c;
pub const HDRS: &[u8; 4] = b"HdrS";
/// loadflags (boot.rst).
pub const LOADED_HIGH: u8 = 1 << 0;
pub const CAN_USE_HEAP: u8 = 1 << 7;
/// xloadflags: the 64-bit entry at load address + 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// type_of_loader for a loader without an assigned ID.
pub const LOADER_UNDEFINED: u8 = 0xff;
/// The 64-bit entry point's offset in the protected-mode kernel.
pub const ENTRY_64: u64 = 0x200;

/// The low-memory layout (see the module comment).
pub const PML4: u64 = 0x1000;
/// Page tables: PML4, PDPT, four page directories.
pub const TABLES_END: u64 = PML4 + 6 * 0x1000;
pub const ZERO_PAGE: u64 = 0x7000;
pub const GDT_BASE: u64 = 0x8000;
pub const STACK_TOP: u64 = 0x1_0000;
pub const CMDLINE: u64 = 0x2_0000;
/// The start of the low boot area: page tables, zero page, GDT, stack.
pub const BOOT_AREA: (u64, u64) = (PML4, STACK_TOP);
const _: () = assert!(TABLES_END <= ZERO_PAGE && ZERO_PAGE + 0x1000 <= GDT_BASE);
const _: () = assert!(GDT_BASE + 32 <= STACK_TOP && STACK_TOP <= CMDLINE);
// All of it in the board's usable low memory (below the EBDA).
const _: () = assert!(CMDLINE < LOW_RAM_END);

/// The entry GDT: null, unused, __BOOT_CS (64-bit code: P, S, execute/read,
/// L, G) and __BOOT_DS (flat 4 GiB read/write data).
pub const GDT: [u64; 4] = [0, 0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
pub const BOOT_CS: u16 = 0x10;
pub const BOOT_DS: u16 = 0x18;

/// The setup header fields the loader uses, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetupHeader {
    pub version: u16,
    /// setup_sects with 0 read as 4.
    pub setup_sects: u32,
    /// The protected-mode code's size in bytes (syssize × 16).
    pub syssize_bytes: u64,
    pub loadflags: u8,
    pub xloadflags: u16,
    pub relocatable: bool,
    pub kernel_alignment: u32,
    pub pref_address: u64,
    pub init_size: u32,
    pub cmdline_size: u32,
    pub initrd_addr_max: u32,
    /// Where the header ends in the file: 0x202 + the byte at 0x201.
    pub end: usize,
}

impl SetupHeader {
    /// File offset of the protected-mode kernel.
    pub fn kernel_offset(&self) -> usize {
        (self.setup_sects as usize + 1) * 512
    }
}

/// Why a bzImage cannot be booted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinuxError {
    /// No "HdrS" at 0x202 with 0xAA55 at 0x1FE.
    NoHeader,
    /// The protocol is older than 2.12.
    TooOld { version: u16 },
    /// The jump at 0x200 (whose offset gives the header's length) is not a
    /// short jmp, or the header it describes ends before the fields used or
    /// after the room boot_params has for it.
    BadHeaderLength { jump: [u8; 2] },
    /// loadflags without LOADED_HIGH: a zImage, loaded at 0x10000 by the
    /// real-mode path, which this loader does not run.
    NotBzImage { loadflags: u8 },
    /// xloadflags without XLF_KERNEL_64.
    No64BitEntry { xloadflags: u16 },
    /// A relocatable kernel whose kernel_alignment is 0 or not a power of 2.
    BadAlignment { alignment: u32 },
    /// The file ends before the setup code or the protected-mode code does.
    Truncated {
        what: &'static str,
        end: u64,
        file_len: usize,
    },
    /// The command line is longer than cmdline_size.
    CmdlineTooLong { len: usize, max: u32 },
    /// The command line holds a NUL byte.
    CmdlineNul,
    /// The command line does not fit below the EBDA.
    CmdlineNoRoom { len: usize },
    /// A non-relocatable kernel whose pref_address range is not usable RAM,
    /// or a relocatable one with no aligned place for init_size bytes.
    KernelNoRoom {
        pref_address: u64,
        size: u64,
        relocatable: bool,
        mem: u64,
    },
    /// No page-aligned place below initrd_addr_max for the initrd.
    InitrdNoRoom { size: u64, limit: u64 },
    /// Writing guest memory failed at this address.
    Write { gpa: u64 },
}

fn version_text(v: u16) -> (u16, u16) {
    (v >> 8, v & 0xff)
}

impl fmt::Display for LinuxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use LinuxError::*;
        match *self {
            NoHeader => f.write_str(
                "no Linux setup header: \"HdrS\" at 0x202 and 0xAA55 at 0x1FE are required",
            ),
            TooOld { version } => {
                let (ma, mi) = version_text(version);
                write!(
                    f,
                    "Linux boot protocol {ma}.{mi:02} is too old: the 64-bit entry needs \
                     protocol 2.12 or later (xloadflags)"
                )
            }
            BadHeaderLength { jump } => write!(
                f,
                "Linux setup header: the jump at 0x200 ({:02x} {:02x}) does not give a header \
                 length reaching init_size (0x{:x}) and ending by 0x{:x}",
                jump[0],
                jump[1],
                hdr::NEEDED_END,
                hdr::MAX_END
            ),
            NotBzImage { loadflags } => write!(
                f,
                "Linux kernel is a zImage (loadflags {loadflags:#04x} without LOADED_HIGH): only \
                 bzImages are booted"
            ),
            No64BitEntry { xloadflags } => write!(
                f,
                "Linux kernel has no 64-bit entry (xloadflags {xloadflags:#06x} without \
                 XLF_KERNEL_64): only 64-bit kernels are booted"
            ),
            BadAlignment { alignment } => write!(
                f,
                "Linux relocatable kernel with kernel_alignment {alignment:#x}: not a power of 2"
            ),
            Truncated {
                what,
                end,
                file_len,
            } => write!(
                f,
                "Linux kernel is truncated: {what} ends at file offset {end:#x}, the file has \
                 {file_len:#x} bytes"
            ),
            CmdlineTooLong { len, max } => write!(
                f,
                "the kernel command line has {len} bytes; this kernel takes at most {max} \
                 (cmdline_size)"
            ),
            CmdlineNul => f.write_str("the kernel command line holds a NUL byte"),
            CmdlineNoRoom { len } => write!(
                f,
                "the kernel command line of {len} bytes does not fit in low memory at \
                 {CMDLINE:#x}"
            ),
            KernelNoRoom {
                pref_address,
                size,
                relocatable,
                mem,
            } => {
                if relocatable {
                    write!(
                        f,
                        "no room in guest RAM ({} MiB) for the Linux kernel: it needs {size:#x} \
                         bytes (init_size) at an aligned address; give more memory (--mem)",
                        mem >> 20
                    )
                } else {
                    write!(
                        f,
                        "Linux kernel is not relocatable and [{pref_address:#x}, {:#x}) \
                         (pref_address + init_size) is not usable RAM ({} MiB); give more \
                         memory (--mem)",
                        pref_address.saturating_add(size),
                        mem >> 20
                    )
                }
            }
            InitrdNoRoom { size, limit } => write!(
                f,
                "no room in guest RAM for the initrd ({size:#x} bytes) below {limit:#x} \
                 (initrd_addr_max and the end of RAM) beside the kernel"
            ),
            Write { gpa } => write!(f, "writing guest memory failed at {gpa:#x}"),
        }
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Reads and checks the setup header.
pub fn parse(image: &[u8]) -> Result<SetupHeader, LinuxError> {
    if image.get(hdr::BOOT_FLAG..hdr::BOOT_FLAG + 2) != Some(&[0x55, 0xaa])
        || image.get(hdr::HEADER..hdr::HEADER + 4) != Some(HDRS)
    {
        return Err(LinuxError::NoHeader);
    }
    // Present: the file reaches 0x206.
    let version = image
        .get(hdr::VERSION..hdr::VERSION + 2)
        .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
    if version < MIN_VERSION {
        return Err(LinuxError::TooOld { version });
    }
    // The jump at 0x200 is `EB rel8`; the header ends at 0x202 + rel8.
    let jump = [image[hdr::JUMP], image[hdr::JUMP + 1]];
    let end = hdr::HEADER + usize::from(jump[1]);
    if jump[0] != 0xeb || !(hdr::NEEDED_END..=hdr::MAX_END).contains(&end) {
        return Err(LinuxError::BadHeaderLength { jump });
    }
    if image.len() < end {
        return Err(LinuxError::Truncated {
            what: "the setup header",
            end: end as u64,
            file_len: image.len(),
        });
    }
    let setup_sects = match image[hdr::SETUP_SECTS] {
        0 => 4,
        n => u32::from(n),
    };
    let loadflags = image[hdr::LOADFLAGS];
    if loadflags & LOADED_HIGH == 0 {
        return Err(LinuxError::NotBzImage { loadflags });
    }
    let xloadflags = le16(image, hdr::XLOADFLAGS);
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(LinuxError::No64BitEntry { xloadflags });
    }
    let relocatable = image[hdr::RELOCATABLE_KERNEL] != 0;
    let kernel_alignment = le32(image, hdr::KERNEL_ALIGNMENT);
    if relocatable && !kernel_alignment.is_power_of_two() {
        return Err(LinuxError::BadAlignment {
            alignment: kernel_alignment,
        });
    }
    let h = SetupHeader {
        version,
        setup_sects,
        syssize_bytes: u64::from(le32(image, hdr::SYSSIZE)) * 16,
        loadflags,
        xloadflags,
        relocatable,
        kernel_alignment,
        pref_address: le64(image, hdr::PREF_ADDRESS),
        init_size: le32(image, hdr::INIT_SIZE),
        cmdline_size: le32(image, hdr::CMDLINE_SIZE),
        initrd_addr_max: le32(image, hdr::INITRD_ADDR_MAX),
        end,
    };
    let pm_end = h.kernel_offset() as u64 + h.syssize_bytes;
    if pm_end > image.len() as u64 || h.kernel_offset() >= image.len() {
        return Err(LinuxError::Truncated {
            what: "the protected-mode kernel ((setup_sects + 1) * 512 + syssize * 16)",
            end: pm_end.max(h.kernel_offset() as u64 + 1),
            file_len: image.len(),
        });
    }
    Ok(h)
}

/// A half-open guest-physical range.
type Range = (u64, u64);

fn overlaps(a: Range, b: Range) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// The lowest `align`-aligned start of `size` bytes in usable RAM at or
/// above `min` that overlaps nothing in `taken`.
fn lowest_fit(board: &Board, size: u64, align: u64, min: u64, taken: &[Range]) -> Option<u64> {
    for r in board.usable() {
        let mut at = r.start.max(min).checked_next_multiple_of(align)?;
        while let Some(end) = at.checked_add(size).filter(|&e| e <= r.end) {
            match taken.iter().find(|&&t| overlaps((at, end), t)) {
                Some(t) => at = t.1.checked_next_multiple_of(align)?,
                None => return Some(at),
            }
        }
    }
    None
}

/// The highest `align`-aligned start of `size` bytes in usable RAM that ends
/// at or below `limit` and overlaps nothing in `taken`.
pub(crate) fn highest_fit(
    board: &Board,
    size: u64,
    align: u64,
    limit: u64,
    taken: &[Range],
) -> Option<u64> {
    let regions: Vec<_> = board.usable().collect();
    for r in regions.iter().rev() {
        let mut top = r.end.min(limit);
        while let Some(at) = top.checked_sub(size).map(|a| a / align * align) {
            if at < r.start {
                break;
            }
            match taken.iter().find(|&&t| overlaps((at, at + size), t)) {
                Some(t) => top = t.0,
                None => return Some(at),
            }
        }
    }
    None
}

/// Where everything goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The protected-mode kernel's load address (its runtime start).
    pub kernel: u64,
    /// [kernel, kernel + max(init_size, file bytes)): kept free of the rest.
    pub kernel_end: u64,
    /// The initrd's [start, end), if any.
    pub initrd: Option<Range>,
    /// The command line's [start, end), its NUL included.
    pub cmdline: Range,
}

/// Checks the command line and places the kernel and the initrd.
pub fn plan(
    image: &[u8],
    h: &SetupHeader,
    board: &Board,
    cmdline: &str,
    initrd_len: u64,
) -> Result<Plan, LinuxError> {
    if cmdline.as_bytes().contains(&0) {
        return Err(LinuxError::CmdlineNul);
    }
    if cmdline.len() as u64 > u64::from(h.cmdline_size) {
        return Err(LinuxError::CmdlineTooLong {
            len: cmdline.len(),
            max: h.cmdline_size,
        });
    }
    let cmd = (CMDLINE, CMDLINE + cmdline.len() as u64 + 1);
    if !board.is_usable(cmd.0, cmd.1) {
        return Err(LinuxError::CmdlineNoRoom { len: cmdline.len() });
    }
    let file_bytes = (image.len() - h.kernel_offset()) as u64;
    let size = u64::from(h.init_size).max(file_bytes);
    let low = [BOOT_AREA, cmd];
    // A bzImage's protected-mode part goes at 1 MiB or above (boot.rst,
    // loadflags LOADED_HIGH).
    let fits = |at: u64| {
        at >= HIGH_RAM_START
            && at.checked_add(size).is_some_and(|end| {
                board.is_usable(at, end) && low.iter().all(|&t| !overlaps((at, end), t))
            })
    };
    let no_room = LinuxError::KernelNoRoom {
        pref_address: h.pref_address,
        size,
        relocatable: h.relocatable,
        mem: board.mem,
    };
    // boot.rst (pref_address, init_size): a relocatable kernel runs from its
    // load address aligned up to kernel_alignment, a fixed one from
    // pref_address.
    let kernel = if fits(h.pref_address)
        && (!h.relocatable || h.pref_address.is_multiple_of(u64::from(h.kernel_alignment)))
    {
        h.pref_address
    } else if h.relocatable {
        lowest_fit(board, size, h.kernel_alignment.into(), HIGH_RAM_START, &low).ok_or(no_room)?
    } else {
        return Err(no_room);
    };
    let kernel_end = kernel + size;
    let initrd = if initrd_len == 0 {
        None
    } else {
        // initrd_addr_max is the highest byte the initrd may occupy.
        let limit = u64::from(h.initrd_addr_max) + 1;
        let taken = [BOOT_AREA, cmd, (kernel, kernel_end)];
        let at = highest_fit(board, initrd_len, 4096, limit, &taken).ok_or(
            LinuxError::InitrdNoRoom {
                size: initrd_len,
                limit: limit.min(board.mem),
            },
        )?;
        Some((at, at + initrd_len))
    };
    Ok(Plan {
        kernel,
        kernel_end,
        initrd,
        cmdline: cmd,
    })
}

/// The E820 type of a board region (ACPI 6.5, 15.1: 1 memory, 2 reserved).
pub const fn e820_type(kind: RegionKind) -> u32 {
    match kind {
        RegionKind::Usable => 1,
        RegionKind::Reserved => 2,
    }
}

/// The zero page for `plan`: the file's setup header, updated as a loader
/// must (boot.rst "Details of Header Fields", the 64-bit protocol), and the
/// E820 map and RSDP address.
pub fn zero_page(
    image: &[u8],
    h: &SetupHeader,
    plan: &Plan,
    board: &Board,
    acpi_rsdp: Option<u64>,
) -> Vec<u8> {
    let mut z = alloc::vec![0u8; zp::SIZE];
    z[hdr::START..h.end].copy_from_slice(&image[hdr::START..h.end]);
    let put32 =
        |z: &mut Vec<u8>, at: usize, v: u32| z[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let put64 =
        |z: &mut Vec<u8>, at: usize, v: u64| z[at..at + 8].copy_from_slice(&v.to_le_bytes());
    z[hdr::TYPE_OF_LOADER] = LOADER_UNDEFINED;
    // No real-mode setup runs: no heap to announce.
    z[hdr::LOADFLAGS] = (h.loadflags | LOADED_HIGH) & !CAN_USE_HEAP;
    z[hdr::HEAP_END_PTR..hdr::HEAP_END_PTR + 2].fill(0);
    // A relocatable kernel loaded elsewhere than its default: code32_start
    // names where it lies (RAM is below 4 GiB, so it fits in 32 bits).
    put32(&mut z, hdr::CODE32_START, plan.kernel as u32);
    put32(&mut z, hdr::CMD_LINE_PTR, plan.cmdline.0 as u32);
    put32(&mut z, zp::EXT_CMD_LINE_PTR, (plan.cmdline.0 >> 32) as u32);
    let (rd_start, rd_size) = plan.initrd.map_or((0, 0), |(s, e)| (s, e - s));
    put32(&mut z, hdr::RAMDISK_IMAGE, rd_start as u32);
    put32(&mut z, hdr::RAMDISK_SIZE, rd_size as u32);
    put32(&mut z, zp::EXT_RAMDISK_IMAGE, (rd_start >> 32) as u32);
    put32(&mut z, zp::EXT_RAMDISK_SIZE, (rd_size >> 32) as u32);
    if let Some(rsdp) = acpi_rsdp {
        put64(&mut z, zp::ACPI_RSDP_ADDR, rsdp);
    }
    let regions = board.regions();
    const _: () = assert!(6 <= zp::E820_MAX);
    for (i, r) in regions.iter().enumerate() {
        let at = zp::E820_TABLE + i * zp::E820_ENTRY_SIZE;
        put64(&mut z, at, r.start);
        put64(&mut z, at + 8, r.len());
        put32(&mut z, at + 16, e820_type(r.kind));
    }
    z[zp::E820_ENTRIES] = regions.len() as u8;
    z[zp::SENTINEL] = 0;
    z
}

/// The identity map of the first 4 GiB at [`PML4`], as bytes: PML4[0] → the
/// PDPT, PDPT[0..4] → four page directories of 2 MiB pages (SDM Vol. 3A,
/// 5.5 "4-Level Paging").
pub fn page_tables() -> Vec<u8> {
    const P: u64 = 1;
    const RW: u64 = 2;
    const PS: u64 = 1 << 7;
    let mut t = alloc::vec![0u8; (TABLES_END - PML4) as usize];
    let mut put = |gpa: u64, v: u64| {
        let at = (gpa - PML4) as usize;
        t[at..at + 8].copy_from_slice(&v.to_le_bytes());
    };
    let (pdpt, pd) = (PML4 + 0x1000, PML4 + 0x2000);
    put(PML4, pdpt | P | RW);
    for i in 0..4 {
        put(pdpt + 8 * i, (pd + 0x1000 * i) | P | RW);
    }
    for i in 0..4 * 512 {
        put(pd + 8 * i, (i << 21) | P | RW | PS);
    }
    t
}

/// What the loader hands the kernel besides itself.
#[derive(Debug, Clone, Copy)]
pub struct BootParams<'a> {
    /// The command line (--append's text as it is).
    pub cmdline: &'a str,
    /// The initrd's bytes (empty: none).
    pub initrd: &'a [u8],
    /// Where the ACPI RSDP is, for boot_params.acpi_rsdp_addr.
    pub acpi_rsdp: Option<u64>,
}

/// Where things went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    pub version: u16,
    /// [load address, load address + init_size).
    pub kernel: Range,
    pub entry: u64,
    pub zero_page: u64,
    pub cmdline: u64,
    pub initrd: Option<Range>,
}

/// Loads a bzImage: checks everything, then writes the page tables, the
/// GDT, the zero page, the command line, the kernel and the initrd, and
/// returns vCPU 0's entry state.
pub fn load<W: GuestMemoryWriter + ?Sized>(
    image: &[u8],
    board: &Board,
    params: &BootParams,
    mem: &mut W,
) -> Result<(Loaded, GuestState), LinuxError> {
    let h = parse(image)?;
    let plan = plan(image, &h, board, params.cmdline, params.initrd.len() as u64)?;
    let zero = zero_page(image, &h, &plan, board, params.acpi_rsdp);

    let w = |r: Result<(), W::Error>, gpa| r.map_err(|_| LinuxError::Write { gpa });
    w(mem.write(PML4, &page_tables()), PML4)?;
    let gdt: Vec<u8> = GDT.iter().flat_map(|d| d.to_le_bytes()).collect();
    w(mem.write(GDT_BASE, &gdt), GDT_BASE)?;
    w(mem.write(ZERO_PAGE, &zero), ZERO_PAGE)?;
    w(
        mem.write(plan.cmdline.0, params.cmdline.as_bytes()),
        plan.cmdline.0,
    )?;
    w(mem.write(plan.cmdline.1 - 1, &[0]), plan.cmdline.1 - 1)?;
    w(
        mem.write(plan.kernel, &image[h.kernel_offset()..]),
        plan.kernel,
    )?;
    if let Some((start, _)) = plan.initrd {
        w(mem.write(start, params.initrd), start)?;
    }

    let entry = plan.kernel + ENTRY_64;
    let gdtr = DescriptorTable {
        base: GDT_BASE,
        limit: (GDT.len() * 8 - 1) as u32,
    };
    let mut s = GuestState::long_mode(entry, STACK_TOP, PML4, gdtr, BOOT_CS, BOOT_DS);
    // boot.rst: %rsi holds the zero page's address (the 32-bit protocol also
    // wants %ebp, %edi, %ebx zero; they are).
    s.gprs.rsi = ZERO_PAGE;
    Ok((
        Loaded {
            version: h.version,
            kernel: (plan.kernel, plan.kernel_end),
            entry,
            zero_page: ZERO_PAGE,
            cmdline: plan.cmdline.0,
            initrd: plan.initrd,
        },
        s,
    ))
}

/// A synthetic bzImage for host tests (here and in `vm`).
#[cfg(test)]
pub(crate) mod test_image {
    use super::*;
    use alloc::vec;

    pub const SETUP_SECTS: u8 = 3;
    pub const PM_LEN: usize = 0x3000;

    /// A synthetic bzImage of protocol 2.15, shaped like a distribution
    /// kernel's header: relocatable, 2 MiB alignment, pref_address 16 MiB,
    /// init_size 4 MiB; `PM_LEN` bytes of protected-mode code after
    /// `SETUP_SECTS` setup sectors.
    pub fn bzimage() -> Vec<u8> {
        let mut k = vec![0u8; (usize::from(SETUP_SECTS) + 1) * 512 + PM_LEN];
        let put16 =
            |k: &mut Vec<u8>, at: usize, v: u16| k[at..at + 2].copy_from_slice(&v.to_le_bytes());
        let put32 =
            |k: &mut Vec<u8>, at: usize, v: u32| k[at..at + 4].copy_from_slice(&v.to_le_bytes());
        k[hdr::SETUP_SECTS] = SETUP_SECTS;
        put32(&mut k, hdr::SYSSIZE, (PM_LEN / 16) as u32);
        put16(&mut k, 0x1fa, 0xffff); // vid_mode
        k[hdr::BOOT_FLAG..hdr::BOOT_FLAG + 2].copy_from_slice(&[0x55, 0xaa]);
        k[hdr::JUMP..hdr::JUMP + 2].copy_from_slice(&[0xeb, 0x6a]); // header ends at 0x26c
        k[hdr::HEADER..hdr::HEADER + 4].copy_from_slice(HDRS);
        put16(&mut k, hdr::VERSION, 0x020f);
        put16(&mut k, 0x20e, 0x1234); // kernel_version
        k[hdr::LOADFLAGS] = LOADED_HIGH | CAN_USE_HEAP;
        put16(&mut k, hdr::HEAP_END_PTR, 0xde00);
        put32(&mut k, hdr::INITRD_ADDR_MAX, 0x7fff_ffff);
        put32(&mut k, hdr::KERNEL_ALIGNMENT, 0x20_0000);
        k[hdr::RELOCATABLE_KERNEL] = 1;
        k[hdr::MIN_ALIGNMENT] = 21;
        put16(&mut k, hdr::XLOADFLAGS, 0x7f);
        put32(&mut k, hdr::CMDLINE_SIZE, 0x7ff);
        k[hdr::PREF_ADDRESS..hdr::PREF_ADDRESS + 8].copy_from_slice(&0x100_0000u64.to_le_bytes());
        put32(&mut k, hdr::INIT_SIZE, 0x40_0000);
        // Bytes past the header's end and the sentinel: not the loader's to
        // copy.
        k[0x270] = 0x77;
        k[zp::SENTINEL] = 0xff;
        // The protected-mode code: a recognisable pattern.
        let pm = usize::from(SETUP_SECTS + 1) * 512;
        for (i, b) in k[pm..].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    use crate::boot::test_mem::Mem;

    const MIB: u64 = 1 << 20;
    use super::test_image::{bzimage, PM_LEN, SETUP_SECTS};

    fn board(mib: u64) -> Board {
        Board::new(mib * MIB).unwrap()
    }

    fn set32(k: &mut [u8], at: usize, v: u32) {
        k[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn parses_a_good_header() {
        let h = parse(&bzimage()).unwrap();
        assert_eq!(h.version, 0x020f);
        assert_eq!(h.setup_sects, 3);
        assert_eq!(h.kernel_offset(), 0x800);
        assert_eq!(h.end, 0x26c);
        assert!(h.relocatable);
        assert_eq!(
            (h.kernel_alignment, h.pref_address, h.init_size),
            (0x20_0000, 0x100_0000, 0x40_0000)
        );
        assert_eq!((h.cmdline_size, h.initrd_addr_max), (0x7ff, 0x7fff_ffff));
        assert_eq!(h.syssize_bytes, PM_LEN as u64);
        // setup_sects 0 means 4 (boot.rst note 1).
        let mut k = bzimage();
        k[hdr::SETUP_SECTS] = 0;
        k.resize(5 * 512 + PM_LEN, 0);
        assert_eq!(parse(&k).unwrap().kernel_offset(), 5 * 512);
        // Protocol 2.12 with a header that ends at 0x268 is enough.
        let mut k = bzimage();
        k[hdr::VERSION] = 0x0c;
        k[hdr::JUMP + 1] = 0x66;
        assert_eq!(parse(&k).unwrap().end, 0x268);
    }

    #[test]
    fn refuses_bad_headers_saying_why() {
        let err = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut k = bzimage();
            f(&mut k);
            parse(&k).unwrap_err()
        };
        assert_eq!(err(&|k| k[hdr::BOOT_FLAG] = 0), LinuxError::NoHeader);
        assert_eq!(err(&|k| k[hdr::HEADER] = b'h'), LinuxError::NoHeader);
        assert_eq!(parse(&bzimage()[..0x204]), Err(LinuxError::NoHeader));
        let e = err(&|k| k[hdr::VERSION] = 0x0b);
        assert_eq!(e, LinuxError::TooOld { version: 0x020b });
        assert!(e.to_string().contains("protocol 2.11 is too old"), "{e}");
        // Header length: not a short jmp, too short for init_size, past 0x290.
        for jump in [[0xe9, 0x6a], [0xeb, 0x60], [0xeb, 0x90]] {
            let e = err(&|k| k[hdr::JUMP..hdr::JUMP + 2].copy_from_slice(&jump));
            assert_eq!(e, LinuxError::BadHeaderLength { jump }, "{jump:x?}");
        }
        let e = parse(&bzimage()[..0x240]).unwrap_err();
        assert!(matches!(e, LinuxError::Truncated { end: 0x26c, .. }), "{e}");
        let e = err(&|k| k[hdr::LOADFLAGS] = 0);
        assert_eq!(e, LinuxError::NotBzImage { loadflags: 0 });
        assert!(e.to_string().contains("zImage"), "{e}");
        let e = err(&|k| k[hdr::XLOADFLAGS] = 0x7e);
        assert_eq!(e, LinuxError::No64BitEntry { xloadflags: 0x7e });
        assert!(e.to_string().contains("XLF_KERNEL_64"), "{e}");
        for alignment in [0, 0x30_0000] {
            let e = err(&|k| set32(k, hdr::KERNEL_ALIGNMENT, alignment));
            assert_eq!(e, LinuxError::BadAlignment { alignment });
        }
        // A fixed kernel need not have a usable alignment.
        let mut k = bzimage();
        k[hdr::RELOCATABLE_KERNEL] = 0;
        set32(&mut k, hdr::KERNEL_ALIGNMENT, 0);
        assert!(parse(&k).is_ok());
        // syssize says more code than the file holds.
        let e = err(&|k| set32(k, hdr::SYSSIZE, (PM_LEN / 16 + 1) as u32));
        assert_eq!(
            e,
            LinuxError::Truncated {
                what: "the protected-mode kernel ((setup_sects + 1) * 512 + syssize * 16)",
                end: (0x800 + PM_LEN + 16) as u64,
                file_len: 0x800 + PM_LEN
            }
        );
        assert!(e.to_string().contains("truncated"), "{e}");
        // The setup sectors alone: no protected-mode code at all.
        let e = parse(&bzimage()[..0x800]).unwrap_err();
        assert!(matches!(e, LinuxError::Truncated { .. }), "{e}");
    }

    fn plan_of(k: &[u8], mib: u64, cmdline: &str, initrd: u64) -> Result<Plan, LinuxError> {
        plan(k, &parse(k).unwrap(), &board(mib), cmdline, initrd)
    }

    #[test]
    fn places_the_kernel_at_pref_address_or_the_lowest_aligned_fit() {
        let k = bzimage();
        let p = plan_of(&k, 64, "console=ttyS0", 0).unwrap();
        assert_eq!((p.kernel, p.kernel_end), (0x100_0000, 0x140_0000));
        assert_eq!(p.cmdline, (CMDLINE, CMDLINE + 14));
        assert_eq!(p.initrd, None);
        // 16 MiB of RAM: [16 MiB, 20 MiB) is not RAM; the lowest 2 MiB
        // boundary at or above 1 MiB is.
        let p = plan_of(&k, 16, "", 0).unwrap();
        assert_eq!((p.kernel, p.kernel_end), (0x20_0000, 0x60_0000));
        // pref_address that is not aligned to kernel_alignment is moved.
        let mut odd = bzimage();
        odd[hdr::PREF_ADDRESS..hdr::PREF_ADDRESS + 8].copy_from_slice(&0x110_0000u64.to_le_bytes());
        assert_eq!(plan_of(&odd, 64, "", 0).unwrap().kernel, 0x20_0000);
        // A small alignment still keeps the kernel at 1 MiB or above, clear
        // of the boot area and command line.
        let mut small = bzimage();
        set32(&mut small, hdr::KERNEL_ALIGNMENT, 0x1000);
        set32(&mut small, hdr::INIT_SIZE, 0x4000);
        small[hdr::PREF_ADDRESS..hdr::PREF_ADDRESS + 8].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(plan_of(&small, 16, "", 0).unwrap().kernel, HIGH_RAM_START);
        // A file longer than init_size: the file's length counts.
        let mut long = bzimage();
        set32(&mut long, hdr::INIT_SIZE, 0x1000);
        let p = plan_of(&long, 64, "", 0).unwrap();
        assert_eq!(p.kernel_end - p.kernel, PM_LEN as u64);
        // Not relocatable: pref_address or nothing.
        let mut fixed = bzimage();
        fixed[hdr::RELOCATABLE_KERNEL] = 0;
        assert_eq!(plan_of(&fixed, 64, "", 0).unwrap().kernel, 0x100_0000);
        let e = plan_of(&fixed, 16, "", 0).unwrap_err();
        assert_eq!(
            e,
            LinuxError::KernelNoRoom {
                pref_address: 0x100_0000,
                size: 0x40_0000,
                relocatable: false,
                mem: 16 * MIB
            }
        );
        assert!(e.to_string().contains("not relocatable"), "{e}");
        // Relocatable, but init_size larger than RAM.
        let mut huge = bzimage();
        set32(&mut huge, hdr::INIT_SIZE, 0x400_0000);
        let e = plan_of(&huge, 32, "", 0).unwrap_err();
        assert!(
            matches!(
                e,
                LinuxError::KernelNoRoom {
                    relocatable: true,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("--mem"), "{e}");
    }

    #[test]
    fn places_the_initrd_high_below_its_limits() {
        let k = bzimage();
        // Top of RAM, page-aligned.
        let p = plan_of(&k, 64, "", 0x1800).unwrap();
        assert_eq!(p.initrd, Some((64 * MIB - 0x2000, 64 * MIB - 0x800)));
        // initrd_addr_max below the end of RAM: the last byte at or below it.
        let mut k2 = bzimage();
        set32(&mut k2, hdr::INITRD_ADDR_MAX, 0x1ff_ffff);
        let p = plan_of(&k2, 64, "", 0x1000).unwrap();
        assert_eq!(p.initrd, Some((0x1ff_f000, 0x200_0000)));
        // A limit inside the kernel's range: below the kernel.
        set32(&mut k2, hdr::INITRD_ADDR_MAX, 0x10f_ffff);
        let p = plan_of(&k2, 64, "", 0x1000).unwrap();
        assert_eq!(p.initrd, Some((0xff_f000, 0x100_0000)));
        // Too large for the RAM beside the kernel.
        let e = plan_of(&k, 32, "", 28 * MIB).unwrap_err();
        assert_eq!(
            e,
            LinuxError::InitrdNoRoom {
                size: 28 * MIB,
                limit: 32 * MIB
            }
        );
        // Fits below the kernel when above it is too small (16 MiB + 4 MiB
        // kernel in 24 MiB: 4 MiB above it, 15 MiB below).
        let p = plan_of(&k, 24, "", 8 * MIB).unwrap();
        let (s, e) = p.initrd.unwrap();
        assert_eq!((s, e), (0x100_0000 - 8 * MIB, 0x100_0000));
        assert!(e <= p.kernel);
    }

    #[test]
    fn checks_the_command_line() {
        let k = bzimage();
        let long = "x".repeat(0x800);
        assert_eq!(
            plan_of(&k, 64, &long, 0),
            Err(LinuxError::CmdlineTooLong {
                len: 0x800,
                max: 0x7ff
            })
        );
        assert!(
            plan_of(&k, 64, &long[1..], 0).is_ok(),
            "cmdline_size itself fits"
        );
        assert_eq!(plan_of(&k, 64, "a\0b", 0), Err(LinuxError::CmdlineNul));
        // A kernel that takes a long line that low memory cannot hold.
        let mut big = bzimage();
        set32(&mut big, hdr::CMDLINE_SIZE, 0x10_0000);
        let e = plan_of(&big, 64, &"y".repeat(0x8_0000), 0).unwrap_err();
        assert_eq!(e, LinuxError::CmdlineNoRoom { len: 0x8_0000 });
    }

    #[test]
    fn fills_the_zero_page_at_the_bootparam_offsets() {
        let k = bzimage();
        let h = parse(&k).unwrap();
        let b = board(64);
        let p = plan(&k, &h, &b, "console=ttyS0", 0x1800).unwrap();
        let z = zero_page(&k, &h, &p, &b, Some(0xe_0000));
        assert_eq!(z.len(), 4096);
        // The setup header copied: 0x1f1 up to 0x202 + k[0x201].
        assert_eq!(z[hdr::SETUP_SECTS], SETUP_SECTS);
        assert_eq!(&z[hdr::HEADER..hdr::HEADER + 4], b"HdrS");
        assert_eq!(le16(&z, 0x20e), 0x1234, "kernel_version");
        assert_eq!(le16(&z, 0x1fa), 0xffff, "vid_mode");
        assert_eq!(le32(&z, hdr::INIT_SIZE), 0x40_0000);
        assert_eq!(le32(&z, 0x268), 0, "kernel_info_offset (as in the file)");
        // Nothing past the header's end, nothing before 0x1f1.
        assert_eq!(z[0x270], 0, "past the header");
        assert_eq!(z[zp::SENTINEL], 0, "sentinel");
        // What the loader writes.
        assert_eq!(z[hdr::TYPE_OF_LOADER], 0xff);
        assert_eq!(z[hdr::LOADFLAGS], LOADED_HIGH, "CAN_USE_HEAP cleared");
        assert_eq!(le16(&z, hdr::HEAP_END_PTR), 0);
        assert_eq!(le32(&z, hdr::CODE32_START), 0x100_0000);
        assert_eq!(le32(&z, hdr::CMD_LINE_PTR), CMDLINE as u32);
        assert_eq!(le32(&z, zp::EXT_CMD_LINE_PTR), 0);
        assert_eq!(le32(&z, hdr::RAMDISK_IMAGE), (64 * MIB - 0x2000) as u32);
        assert_eq!(le32(&z, hdr::RAMDISK_SIZE), 0x1800);
        assert_eq!(le32(&z, zp::EXT_RAMDISK_IMAGE), 0);
        assert_eq!(le32(&z, zp::EXT_RAMDISK_SIZE), 0);
        assert_eq!(le64(&z, zp::ACPI_RSDP_ADDR), 0xe_0000);
        // The E820 map: the board's regions, in order, with their types.
        assert_eq!(usize::from(z[zp::E820_ENTRIES]), b.regions().len());
        let e = |i: usize| {
            let at = zp::E820_TABLE + i * 20;
            (le64(&z, at), le64(&z, at + 8), le32(&z, at + 16))
        };
        assert_eq!(e(0), (0, 0x9_fc00, 1));
        assert_eq!(
            e(1),
            (0x9_fc00, 0x10_0000 - 0x9_fc00, 2),
            "EBDA, VGA, BIOS, ACPI"
        );
        assert_eq!(e(2), (0x10_0000, 63 * MIB, 1));
        assert_eq!(e(3), (0xfec0_0000, 0x1000, 2));
        assert_eq!(e(4), (0xfee0_0000, 0x1000, 2));
        assert_eq!(e(5), (0xfffc_0000, 0x4_0000, 2));
        assert_eq!(e(6), (0, 0, 0), "no more entries");
        // Without an initrd or RSDP those fields stay zero.
        let p = plan(&k, &h, &b, "", 0).unwrap();
        let z = zero_page(&k, &h, &p, &b, None);
        assert_eq!(
            le32(&z, hdr::RAMDISK_IMAGE) | le32(&z, hdr::RAMDISK_SIZE),
            0
        );
        assert_eq!(le64(&z, zp::ACPI_RSDP_ADDR), 0);
        assert_eq!(
            e820_type(RegionKind::Usable),
            RegionKind::Usable.multiboot_type()
        );
    }

    /// Walks 4-level tables with 2 MiB leaves, as the CPU would.
    fn translate(m: &Mem, cr3: u64, va: u64) -> Option<u64> {
        let mut table = cr3;
        for shift in [39, 30] {
            let e = m.u64(table + ((va >> shift) & 511) * 8);
            if e & 1 == 0 {
                return None;
            }
            table = e & 0x000f_ffff_ffff_f000;
        }
        let pde = m.u64(table + ((va >> 21) & 511) * 8);
        (pde & 1 != 0 && pde & 0x80 != 0)
            .then_some((pde & 0x000f_ffff_ffe0_0000) | (va & 0x1f_ffff))
    }

    #[test]
    fn loads_and_enters_at_the_64_bit_entry() {
        let k = bzimage();
        let b = board(64);
        let mut m = Mem(vec![0xaa; (64 * MIB) as usize]);
        let initrd = vec![0x5a; 0x1800];
        let params = BootParams {
            cmdline: "console=ttyS0 panic=-1",
            initrd: &initrd,
            acpi_rsdp: Some(0xe_0000),
        };
        let (l, s) = load(&k, &b, &params, &mut m).unwrap();
        assert_eq!(l.kernel, (0x100_0000, 0x140_0000));
        assert_eq!(l.entry, 0x100_0200);
        assert_eq!(l.version, 0x20f);
        assert_eq!((l.zero_page, l.cmdline), (ZERO_PAGE, CMDLINE));
        // The pieces in memory.
        assert_eq!(&m.0[0x100_0000..0x100_0000 + PM_LEN], &k[0x800..]);
        let initrd_at = 64 * MIB as usize - 0x2000;
        assert_eq!(
            l.initrd,
            Some((initrd_at as u64, initrd_at as u64 + 0x1800))
        );
        assert_eq!(&m.0[initrd_at..initrd_at + 0x1800], &initrd[..]);
        assert_eq!(
            &m.0[CMDLINE as usize..CMDLINE as usize + 23],
            b"console=ttyS0 panic=-1\0"
        );
        let z = &m.0[ZERO_PAGE as usize..ZERO_PAGE as usize + 4096];
        assert_eq!(z[hdr::TYPE_OF_LOADER], 0xff);
        assert_eq!(le32(z, hdr::CMD_LINE_PTR), CMDLINE as u32);
        // 64-bit mode, paging on, interrupts off (boot.rst, 64-bit protocol).
        assert!(s.ia32e());
        assert_eq!(s.rip, 0x100_0200);
        assert_eq!(s.gprs.rsi, ZERO_PAGE);
        assert_eq!(s.gprs.rbx | s.gprs.rdi | s.gprs.rbp, 0);
        assert_eq!(s.rflags & (1 << 9), 0, "IF = 0");
        assert_ne!(s.cr0 & crate::x86::CR0_PG, 0);
        assert_eq!(s.cr3, PML4);
        assert_eq!(s.cs.selector, BOOT_CS);
        assert_ne!(s.cs.access & (1 << 13), 0, "CS.L");
        for seg in [s.ds, s.es, s.ss] {
            assert_eq!(
                (seg.selector, seg.base, seg.limit),
                (BOOT_DS, 0, 0xffff_ffff)
            );
        }
        // The GDTR names a GDT in memory holding __BOOT_CS and __BOOT_DS.
        assert_eq!((s.gdtr.base, s.gdtr.limit), (GDT_BASE, 31));
        let cs = m.u64(GDT_BASE + u64::from(BOOT_CS));
        let ds = m.u64(GDT_BASE + u64::from(BOOT_DS));
        assert_eq!((cs >> 40) & 0xff, 0x9b, "present execute/read code");
        assert_ne!(cs & (1 << 53), 0, "L");
        assert_eq!((ds >> 40) & 0xff, 0x93, "present read/write data");
        assert_eq!(
            ds & 0x000f_0000_0000_ffff,
            0x000f_0000_0000_ffff,
            "4 GiB limit"
        );
        // The identity map covers the kernel's init_size range, the zero
        // page, the command line, the initrd and all of RAM.
        for va in [
            0,
            ZERO_PAGE,
            CMDLINE,
            l.entry,
            l.kernel.1 - 1,
            initrd_at as u64,
            64 * MIB - 1,
            (4 << 30) - 1,
        ] {
            assert_eq!(translate(&m, s.cr3, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&m, s.cr3, 4 << 30), None);
    }

    #[test]
    fn nothing_is_written_when_a_check_fails() {
        let mut k = bzimage();
        k[hdr::VERSION] = 0x0b;
        let mut m = Mem(vec![0xaa; (16 * MIB) as usize]);
        let params = BootParams {
            cmdline: "",
            initrd: &[],
            acpi_rsdp: None,
        };
        assert!(load(&k, &board(16), &params, &mut m).is_err());
        let k = bzimage();
        let big = vec![1u8; (15 * MIB) as usize];
        let params = BootParams {
            initrd: &big,
            ..params
        };
        let e = load(&k, &board(16), &params, &mut m).unwrap_err();
        assert!(matches!(e, LinuxError::InitrdNoRoom { .. }), "{e}");
        assert!(m.0.iter().all(|&b| b == 0xaa));
    }
}
