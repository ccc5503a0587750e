//! Loading the guest ELF into guest-physical memory.
//!
//! Pure: the ELF is a byte slice and guest memory is reached through
//! [`GuestMemoryWriter`], so the same code runs in the hypervisor (writing
//! through its memslots) and in host unit tests (writing into a `Vec`).
//!
//! What is accepted (everything else is an [`ImageError`], and nothing is
//! written unless the whole image is valid):
//! - ELF64, little endian, `EM_X86_64`, `ET_EXEC` (a position-independent
//!   `ET_DYN` would need relocating, which this loader does not do);
//! - at least one non-empty `PT_LOAD`, at most [`MAX_LOAD_SEGMENTS`];
//! - each `PT_LOAD` has `p_vaddr == p_paddr` (the guest runs on an identity
//!   map, so the address the code was linked for must be where it lies),
//!   `p_filesz <= p_memsz`, its file bytes inside the file, and its memory
//!   `[p_paddr, p_paddr + p_memsz)` inside `[reserved_below, mem_bytes)`
//!   without overflow and without overlapping another `PT_LOAD`;
//! - the entry point lies in the file-backed part of an executable
//!   (`PF_X`) `PT_LOAD`.
//!
//! Each `PT_LOAD` is placed at `p_paddr`: its `p_filesz` file bytes are
//! copied and the rest up to `p_memsz` (the bss) is zeroed. Other program
//! headers are ignored.

use core::fmt;

use elf::abi::{EM_X86_64, ET_DYN, ET_EXEC, PF_X, PT_LOAD};
use elf::endian::LittleEndian;
use elf::file::Class;
use elf::segment::ProgramHeader;
use elf::ElfBytes;

use crate::x86::PAGE_SIZE;

/// More `PT_LOAD`s than this is refused: the overlap check is quadratic, and
/// a real guest has three or four.
pub const MAX_LOAD_SEGMENTS: usize = 64;

/// Writes into guest-physical memory. The loader only calls it with ranges
/// it has checked against `[reserved_below, mem_bytes)`.
pub trait GuestMemoryWriter {
    type Error;
    /// Copies `bytes` to guest-physical `gpa`.
    fn write(&mut self, gpa: u64, bytes: &[u8]) -> Result<(), Self::Error>;
    /// Zeroes `len` bytes at guest-physical `gpa`.
    fn zero(&mut self, gpa: u64, len: u64) -> Result<(), Self::Error>;
}

/// Where the image went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedImage {
    /// The ELF entry point (guest-virtual == guest-physical).
    pub entry: u64,
    /// The lowest `p_paddr` of a loaded segment.
    pub lowest: u64,
    /// The end of the highest segment (`p_paddr + p_memsz`), rounded up to a
    /// 4 KiB page: the first page after the image.
    pub end: u64,
}

/// Why an image was refused. `E` is the [`GuestMemoryWriter`]'s error.
#[derive(Debug)]
pub enum ImageError<E> {
    /// Shorter than an ELF identification, or the magic is not `\x7fELF`.
    NotElf,
    /// `EI_CLASS` is not `ELFCLASS64`.
    NotElf64 { class: u8 },
    /// `EI_DATA` is not `ELFDATA2LSB`.
    NotLittleEndian { data: u8 },
    /// The `elf` crate could not parse the headers (truncated, bad sizes).
    Malformed(elf::ParseError),
    /// `e_machine` is not `EM_X86_64`.
    WrongMachine { machine: u16 },
    /// `e_type` is not `ET_EXEC`.
    NotExecutable { e_type: u16 },
    /// No `PT_LOAD` with a non-zero `p_memsz`.
    NoLoadSegments,
    /// More than [`MAX_LOAD_SEGMENTS`] `PT_LOAD`s.
    TooManySegments { count: usize },
    /// `p_vaddr != p_paddr`: the guest's identity map would put it elsewhere.
    NotIdentityMapped {
        index: usize,
        vaddr: u64,
        paddr: u64,
    },
    /// `p_filesz > p_memsz`.
    FileSizeExceedsMemSize {
        index: usize,
        filesz: u64,
        memsz: u64,
    },
    /// `[p_offset, p_offset + p_filesz)` is not inside the file.
    FileRangeOutOfBounds {
        index: usize,
        offset: u64,
        filesz: u64,
        file_len: usize,
    },
    /// `p_paddr + p_memsz` (or its page-aligned end) overflows a u64.
    AddressOverflow {
        index: usize,
        paddr: u64,
        memsz: u64,
    },
    /// `[p_paddr, p_paddr + p_memsz)` is not inside `[reserved_below, mem_bytes)`.
    OutOfRange {
        index: usize,
        start: u64,
        end: u64,
        reserved_below: u64,
        mem_bytes: u64,
    },
    /// Two `PT_LOAD`s share guest-physical bytes.
    Overlap { first: usize, second: usize },
    /// The entry point is not inside the file-backed part of a `PF_X` `PT_LOAD`.
    EntryNotExecutable { entry: u64 },
    /// The [`GuestMemoryWriter`] failed.
    Write(E),
}

impl<E: fmt::Display> fmt::Display for ImageError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::NotElf => {
                f.write_str("guest image is not an ELF file (bad magic or too short)")
            }
            ImageError::NotElf64 { class } => {
                write!(f, "guest image is not ELF64 (EI_CLASS {class}, want 2)")
            }
            ImageError::NotLittleEndian { data } => {
                write!(
                    f,
                    "guest image is not little endian (EI_DATA {data}, want 1)"
                )
            }
            ImageError::Malformed(e) => write!(f, "guest image headers are malformed: {e}"),
            ImageError::WrongMachine { machine } => {
                write!(
                    f,
                    "guest image is for machine {machine}, not x86_64 ({EM_X86_64})"
                )
            }
            ImageError::NotExecutable { e_type } if *e_type == ET_DYN => f.write_str(
                "guest image is ET_DYN (position-independent), not ET_EXEC: link it with --no-pie",
            ),
            ImageError::NotExecutable { e_type } => {
                write!(f, "guest image type is {e_type}, not ET_EXEC ({ET_EXEC})")
            }
            ImageError::NoLoadSegments => {
                f.write_str("guest image has no non-empty PT_LOAD segment")
            }
            ImageError::TooManySegments { count } => write!(
                f,
                "guest image has {count} PT_LOAD segments, more than {MAX_LOAD_SEGMENTS}"
            ),
            ImageError::NotIdentityMapped {
                index,
                vaddr,
                paddr,
            } => write!(
                f,
                "guest segment {index}: virtual address {vaddr:#x} differs from physical address \
                 {paddr:#x} (guests run on an identity map)"
            ),
            ImageError::FileSizeExceedsMemSize {
                index,
                filesz,
                memsz,
            } => write!(
                f,
                "guest segment {index}: file size {filesz:#x} exceeds memory size {memsz:#x}"
            ),
            ImageError::FileRangeOutOfBounds {
                index,
                offset,
                filesz,
                file_len,
            } => write!(
                f,
                "guest segment {index}: file bytes [{offset:#x}, +{filesz:#x}) run past the end \
                 of the {file_len:#x}-byte file"
            ),
            ImageError::AddressOverflow {
                index,
                paddr,
                memsz,
            } => write!(
                f,
                "guest segment {index}: {paddr:#x} + {memsz:#x} overflows the address space"
            ),
            ImageError::OutOfRange {
                index,
                start,
                end,
                reserved_below,
                mem_bytes,
            } => write!(
                f,
                "guest segment {index}: [{start:#x}, {end:#x}) is outside the loadable guest RAM \
                 [{reserved_below:#x}, {mem_bytes:#x})"
            ),
            ImageError::Overlap { first, second } => {
                write!(f, "guest segments {first} and {second} overlap")
            }
            ImageError::EntryNotExecutable { entry } => write!(
                f,
                "guest entry point {entry:#x} is not in the file bytes of an executable segment"
            ),
            ImageError::Write(e) => {
                write!(f, "writing the guest image to guest memory failed: {e}")
            }
        }
    }
}

/// A `PT_LOAD` that passed the per-segment checks.
#[derive(Clone, Copy)]
struct Segment {
    index: usize,
    /// Guest-physical range `[start, end)`, `end = start + memsz`.
    start: u64,
    end: u64,
    /// File range `[offset, offset + filesz)`, checked against the file.
    offset: usize,
    filesz: usize,
    executable: bool,
}

/// Checks one `PT_LOAD` (the `index`th program header).
fn check_segment<E>(
    index: usize,
    ph: &ProgramHeader,
    file_len: usize,
    reserved_below: u64,
    mem_bytes: u64,
) -> Result<Segment, ImageError<E>> {
    if ph.p_vaddr != ph.p_paddr {
        return Err(ImageError::NotIdentityMapped {
            index,
            vaddr: ph.p_vaddr,
            paddr: ph.p_paddr,
        });
    }
    if ph.p_filesz > ph.p_memsz {
        return Err(ImageError::FileSizeExceedsMemSize {
            index,
            filesz: ph.p_filesz,
            memsz: ph.p_memsz,
        });
    }
    let file_range = usize::try_from(ph.p_offset)
        .ok()
        .zip(usize::try_from(ph.p_filesz).ok())
        .filter(|&(offset, filesz)| offset.checked_add(filesz).is_some_and(|e| e <= file_len));
    let Some((offset, filesz)) = file_range else {
        return Err(ImageError::FileRangeOutOfBounds {
            index,
            offset: ph.p_offset,
            filesz: ph.p_filesz,
            file_len,
        });
    };
    let end = ph
        .p_paddr
        .checked_add(ph.p_memsz)
        .filter(|end| end.checked_next_multiple_of(PAGE_SIZE).is_some())
        .ok_or(ImageError::AddressOverflow {
            index,
            paddr: ph.p_paddr,
            memsz: ph.p_memsz,
        })?;
    if ph.p_paddr < reserved_below || end > mem_bytes {
        return Err(ImageError::OutOfRange {
            index,
            start: ph.p_paddr,
            end,
            reserved_below,
            mem_bytes,
        });
    }
    Ok(Segment {
        index,
        start: ph.p_paddr,
        end,
        offset,
        filesz,
        executable: ph.p_flags & PF_X != 0,
    })
}

/// The non-empty `PT_LOAD`s with their program-header indices.
fn load_segments<'a>(
    phdrs: &'a elf::segment::SegmentTable<'_, LittleEndian>,
) -> impl Iterator<Item = (usize, ProgramHeader)> + 'a {
    phdrs
        .iter()
        .enumerate()
        .filter(|(_, ph)| ph.p_type == PT_LOAD && ph.p_memsz != 0)
}

/// Validates `elf_bytes` as a guest image for guest RAM `[0, mem_bytes)` of
/// which `[0, reserved_below)` is off limits (the hypervisor's page tables,
/// boot info), then writes its segments through `mem`.
///
/// All checks run before the first write, so a refused image leaves guest
/// memory untouched (a failing writer can still leave a partial image).
pub fn load<W: GuestMemoryWriter + ?Sized>(
    elf_bytes: &[u8],
    mem_bytes: u64,
    reserved_below: u64,
    mem: &mut W,
) -> Result<LoadedImage, ImageError<W::Error>> {
    // Identification first, for errors clearer than the elf crate's.
    let ident = elf_bytes
        .get(..elf::abi::EI_NIDENT)
        .ok_or(ImageError::NotElf)?;
    if ident[..4] != elf::abi::ELFMAGIC {
        return Err(ImageError::NotElf);
    }
    let class = ident[elf::abi::EI_CLASS];
    if class != elf::abi::ELFCLASS64 {
        return Err(ImageError::NotElf64 { class });
    }
    let data = ident[elf::abi::EI_DATA];
    if data != elf::abi::ELFDATA2LSB {
        return Err(ImageError::NotLittleEndian { data });
    }

    let file = ElfBytes::<LittleEndian>::minimal_parse(elf_bytes).map_err(ImageError::Malformed)?;
    let ehdr = &file.ehdr;
    debug_assert_eq!(ehdr.class, Class::ELF64);
    if ehdr.e_machine != EM_X86_64 {
        return Err(ImageError::WrongMachine {
            machine: ehdr.e_machine,
        });
    }
    if ehdr.e_type != ET_EXEC {
        return Err(ImageError::NotExecutable {
            e_type: ehdr.e_type,
        });
    }
    let phdrs = file.segments().ok_or(ImageError::NoLoadSegments)?;

    // Pass 1: check every segment, pairwise overlap, the entry point.
    let count = load_segments(&phdrs).count();
    if count == 0 {
        return Err(ImageError::NoLoadSegments);
    }
    if count > MAX_LOAD_SEGMENTS {
        return Err(ImageError::TooManySegments { count });
    }
    let entry = ehdr.e_entry;
    let mut lowest = u64::MAX;
    let mut highest_end = 0;
    let mut entry_ok = false;
    for (i, ph) in load_segments(&phdrs) {
        let seg = check_segment::<W::Error>(i, &ph, elf_bytes.len(), reserved_below, mem_bytes)?;
        for (j, other) in load_segments(&phdrs).take_while(|&(j, _)| j < i) {
            // `other` passed check_segment already, so its end cannot overflow.
            if seg.start < other.p_paddr + other.p_memsz && other.p_paddr < seg.end {
                return Err(ImageError::Overlap {
                    first: j,
                    second: i,
                });
            }
        }
        lowest = lowest.min(seg.start);
        highest_end = highest_end.max(seg.end);
        entry_ok |= seg.executable && entry >= seg.start && entry - seg.start < seg.filesz as u64;
    }
    if !entry_ok {
        return Err(ImageError::EntryNotExecutable { entry });
    }

    // Pass 2: copy the file bytes, zero the rest.
    for (i, ph) in load_segments(&phdrs) {
        let seg = check_segment::<W::Error>(i, &ph, elf_bytes.len(), reserved_below, mem_bytes)?;
        debug_assert_eq!(seg.index, i);
        let file_end = seg.start + seg.filesz as u64;
        if seg.filesz != 0 {
            mem.write(seg.start, &elf_bytes[seg.offset..seg.offset + seg.filesz])
                .map_err(ImageError::Write)?;
        }
        if file_end < seg.end {
            mem.zero(file_end, seg.end - file_end)
                .map_err(ImageError::Write)?;
        }
    }

    Ok(LoadedImage {
        entry,
        lowest,
        // Checked not to overflow in check_segment.
        end: highest_end.next_multiple_of(PAGE_SIZE),
    })
}

/// A small valid 64-bit guest ELF (code, rodata, data + bss at 1 MiB), for
/// host tests that build a VM.
#[cfg(test)]
pub(crate) fn guest_elf_for_tests() -> alloc::vec::Vec<u8> {
    tests::small_guest()
}

#[cfg(test)]
mod tests {
    use super::*;
    use elf::abi::{EM_386, ET_REL, PF_R, PF_W, PT_NOTE};

    /// Guest RAM as one byte vector starting at guest-physical 0, recording
    /// the calls it gets.
    struct TestMemory {
        bytes: Vec<u8>,
        calls: usize,
    }

    impl TestMemory {
        fn new(len: usize) -> Self {
            // A non-zero fill shows which bytes the loader zeroed.
            TestMemory {
                bytes: vec![0xEE; len],
                calls: 0,
            }
        }
        fn at(&self, gpa: u64, len: usize) -> &[u8] {
            &self.bytes[gpa as usize..gpa as usize + len]
        }
    }

    impl GuestMemoryWriter for TestMemory {
        type Error = &'static str;
        fn write(&mut self, gpa: u64, bytes: &[u8]) -> Result<(), Self::Error> {
            self.calls += 1;
            let start = usize::try_from(gpa).map_err(|_| "gpa")?;
            let dst = self
                .bytes
                .get_mut(start..start + bytes.len())
                .ok_or("write out of range")?;
            dst.copy_from_slice(bytes);
            Ok(())
        }
        fn zero(&mut self, gpa: u64, len: u64) -> Result<(), Self::Error> {
            self.calls += 1;
            let start = usize::try_from(gpa).map_err(|_| "gpa")?;
            let dst = self
                .bytes
                .get_mut(start..start + len as usize)
                .ok_or("zero out of range")?;
            dst.fill(0);
            Ok(())
        }
    }

    /// A writer that always fails.
    struct Broken;
    impl GuestMemoryWriter for Broken {
        type Error = &'static str;
        fn write(&mut self, _: u64, _: &[u8]) -> Result<(), Self::Error> {
            Err("broken")
        }
        fn zero(&mut self, _: u64, _: u64) -> Result<(), Self::Error> {
            Err("broken")
        }
    }

    #[derive(Clone, Copy)]
    struct Ph {
        p_type: u32,
        flags: u32,
        offset: u64,
        vaddr: u64,
        paddr: u64,
        filesz: u64,
        memsz: u64,
    }

    fn load_seg(flags: u32, offset: u64, addr: u64, filesz: u64, memsz: u64) -> Ph {
        Ph {
            p_type: PT_LOAD,
            flags,
            offset,
            vaddr: addr,
            paddr: addr,
            filesz,
            memsz,
        }
    }

    const MIB: u64 = 0x10_0000;
    const EHDR: usize = 64;
    const PHENT: usize = 56;

    /// A minimal ELF64 little-endian file: header, program headers right after
    /// it, no sections, `file_len` bytes in all. Byte `i` of the file (past
    /// the headers) is `i as u8`, so copies can be checked.
    fn build_elf(e_type: u16, machine: u16, entry: u64, phs: &[Ph], file_len: usize) -> Vec<u8> {
        let headers = EHDR + PHENT * phs.len();
        let mut f: Vec<u8> = (0..file_len.max(headers)).map(|i| i as u8).collect();
        let mut h = Vec::with_capacity(headers);
        h.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]); // ELF64, LSB, v1, SysV
        h.extend_from_slice(&[0; 8]);
        h.extend_from_slice(&e_type.to_le_bytes());
        h.extend_from_slice(&machine.to_le_bytes());
        h.extend_from_slice(&1u32.to_le_bytes()); // e_version
        h.extend_from_slice(&entry.to_le_bytes());
        let phoff = if phs.is_empty() { 0u64 } else { EHDR as u64 };
        h.extend_from_slice(&phoff.to_le_bytes());
        h.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
        h.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        h.extend_from_slice(&(EHDR as u16).to_le_bytes());
        h.extend_from_slice(&(PHENT as u16).to_le_bytes());
        h.extend_from_slice(&(phs.len() as u16).to_le_bytes());
        h.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
        h.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
        h.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
        assert_eq!(h.len(), EHDR);
        for ph in phs {
            h.extend_from_slice(&ph.p_type.to_le_bytes());
            h.extend_from_slice(&ph.flags.to_le_bytes());
            h.extend_from_slice(&ph.offset.to_le_bytes());
            h.extend_from_slice(&ph.vaddr.to_le_bytes());
            h.extend_from_slice(&ph.paddr.to_le_bytes());
            h.extend_from_slice(&ph.filesz.to_le_bytes());
            h.extend_from_slice(&ph.memsz.to_le_bytes());
            h.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
        }
        f[..headers].copy_from_slice(&h);
        f.truncate(file_len.max(headers));
        f
    }

    pub(super) fn small_guest() -> Vec<u8> {
        good_elf()
    }

    /// A typical guest: code (R X), rodata (R), data + bss (R W), and a note.
    fn good_segments() -> Vec<Ph> {
        vec![
            load_seg(PF_R | PF_X, 0x1000, MIB, 0x1800, 0x1800),
            load_seg(PF_R, 0x3000, MIB + 0x2000, 0x400, 0x400),
            Ph {
                p_type: PT_NOTE,
                ..load_seg(PF_R, 0, 0, 0x10, 0x10)
            },
            load_seg(PF_R | PF_W, 0x4000, MIB + 0x3000, 0x60, 0x2100),
        ]
    }

    fn good_elf() -> Vec<u8> {
        build_elf(ET_EXEC, EM_X86_64, MIB + 0x10, &good_segments(), 0x5000)
    }

    const MEM: u64 = 4 * MIB;

    fn try_load(elf: &[u8]) -> Result<LoadedImage, ImageError<&'static str>> {
        load(elf, MEM, MIB, &mut TestMemory::new(MEM as usize))
    }

    #[test]
    fn loads_a_valid_image() {
        let elf = good_elf();
        let mut mem = TestMemory::new(MEM as usize);
        let image = load(&elf, MEM, MIB, &mut mem).unwrap();
        assert_eq!(
            image,
            LoadedImage {
                entry: MIB + 0x10,
                lowest: MIB,
                end: MIB + 0x6000
            }
        );
        // File bytes copied.
        assert_eq!(mem.at(MIB, 0x1800), &elf[0x1000..0x2800]);
        assert_eq!(mem.at(MIB + 0x2000, 0x400), &elf[0x3000..0x3400]);
        assert_eq!(mem.at(MIB + 0x3000, 0x60), &elf[0x4000..0x4060]);
        // bss zeroed, exactly to p_memsz.
        assert!(mem.at(MIB + 0x3060, 0x2100 - 0x60).iter().all(|&b| b == 0));
        assert_eq!(mem.at(MIB + 0x5100, 1), &[0xEE]);
        // Gaps between segments and memory below the image untouched.
        assert!(mem.at(MIB + 0x1800, 0x800).iter().all(|&b| b == 0xEE));
        assert!(mem.at(0, MIB as usize).iter().all(|&b| b == 0xEE));
        // Three writes and one zeroing; the PT_NOTE is ignored.
        assert_eq!(mem.calls, 4);
    }

    #[test]
    fn segment_may_end_exactly_at_mem_bytes() {
        let phs = [load_seg(PF_R | PF_X, 0x1000, MEM - 0x1000, 0x1000, 0x1000)];
        let elf = build_elf(ET_EXEC, EM_X86_64, MEM - 0x1000, &phs, 0x2000);
        let image = try_load(&elf).unwrap();
        assert_eq!((image.lowest, image.end), (MEM - 0x1000, MEM));
    }

    #[test]
    fn empty_load_segments_are_skipped() {
        let mut phs = good_segments();
        phs.push(load_seg(PF_R, 0, 0, 0, 0)); // at gpa 0, below reserved_below
        let elf = build_elf(ET_EXEC, EM_X86_64, MIB, &phs, 0x5000);
        assert_eq!(try_load(&elf).unwrap().lowest, MIB);
    }

    #[test]
    fn rejects_non_elf() {
        assert!(matches!(try_load(b"\x7fELF"), Err(ImageError::NotElf)));
        let mut elf = good_elf();
        elf[0] = b'M';
        assert!(matches!(try_load(&elf), Err(ImageError::NotElf)));
    }

    #[test]
    fn rejects_elf32() {
        let mut elf = good_elf();
        elf[4] = 1;
        assert!(matches!(
            try_load(&elf),
            Err(ImageError::NotElf64 { class: 1 })
        ));
    }

    #[test]
    fn rejects_big_endian() {
        let mut elf = good_elf();
        elf[5] = 2;
        assert!(matches!(
            try_load(&elf),
            Err(ImageError::NotLittleEndian { data: 2 })
        ));
    }

    #[test]
    fn rejects_truncated_headers() {
        let elf = good_elf();
        assert!(matches!(
            try_load(&elf[..40]),
            Err(ImageError::Malformed(_))
        ));
        // Program header table past the end of the file.
        assert!(matches!(
            try_load(&elf[..EHDR + PHENT]),
            Err(ImageError::Malformed(_))
        ));
    }

    #[test]
    fn rejects_wrong_machine() {
        let elf = build_elf(ET_EXEC, EM_386, MIB, &good_segments(), 0x5000);
        assert!(matches!(
            try_load(&elf),
            Err(ImageError::WrongMachine { machine: EM_386 })
        ));
    }

    #[test]
    fn rejects_pie_and_relocatable() {
        for e_type in [ET_DYN, ET_REL] {
            let elf = build_elf(e_type, EM_X86_64, MIB, &good_segments(), 0x5000);
            assert!(
                matches!(try_load(&elf), Err(ImageError::NotExecutable { e_type: t }) if t == e_type)
            );
        }
    }

    #[test]
    fn rejects_no_load_segments() {
        let elf = build_elf(ET_EXEC, EM_X86_64, MIB, &[], 0x1000);
        assert!(matches!(try_load(&elf), Err(ImageError::NoLoadSegments)));
        let note = Ph {
            p_type: PT_NOTE,
            ..load_seg(PF_R, 0, MIB, 0x10, 0x10)
        };
        let empty = load_seg(PF_R | PF_X, 0, MIB, 0, 0);
        let elf = build_elf(ET_EXEC, EM_X86_64, MIB, &[note, empty], 0x1000);
        assert!(matches!(try_load(&elf), Err(ImageError::NoLoadSegments)));
    }

    #[test]
    fn rejects_too_many_segments() {
        let phs: Vec<Ph> = (0..=MAX_LOAD_SEGMENTS as u64)
            .map(|i| load_seg(PF_R | PF_X, 0x1000, MIB + i * 0x1000, 0x10, 0x10))
            .collect();
        let elf = build_elf(ET_EXEC, EM_X86_64, MIB, &phs, 0x2000);
        assert!(matches!(
            try_load(&elf),
            Err(ImageError::TooManySegments { count }) if count == MAX_LOAD_SEGMENTS + 1
        ));
    }

    #[test]
    fn rejects_vaddr_not_paddr() {
        let mut phs = good_segments();
        phs[1].vaddr = 0xFFFF_FFFF_8000_0000;
        let elf = build_elf(ET_EXEC, EM_X86_64, MIB, &phs, 0x5000);
        assert!(matches!(
            try_load(&elf),
            Err(ImageError::NotIdentityMapped { index: 1, .. })
        ));
    }

    #[test]
    fn rejects_filesz_over_memsz() {
        let mut phs = good_segments();
        phs[3].filesz = 0x3000;
        let elf = build_elf(ET_EXEC, EM_X86_64, MIB, &phs, 0x8000);
        assert!(matches!(
            try_load(&elf),
            Err(ImageError::FileSizeExceedsMemSize {
                index: 3,
                filesz: 0x3000,
                memsz: 0x2100
            })
        ));
    }

    #[test]
    fn rejects_file_range_past_the_end() {
        let mut phs = good_segments();
        phs[1].offset = 0x4F00; // + 0x400 > 0x5000
        let elf = build_elf(ET_EXEC, EM_X86_64, MIB, &phs, 0x5000);
        assert!(matches!(
            try_load(&elf),
            Err(ImageError::FileRangeOutOfBounds { index: 1, .. })
        ));
        // An offset so large that offset + filesz overflows.
        phs[1].offset = u64::MAX - 0x10;
        let elf = build_elf(ET_EXEC, EM_X86_64, MIB, &phs, 0x5000);
        assert!(matches!(
            try_load(&elf),
            Err(ImageError::FileRangeOutOfBounds { index: 1, .. })
        ));
    }

    #[test]
    fn rejects_address_overflow() {
        let mut phs = good_segments();
        phs[3].vaddr = u64::MAX - 0x100;
        phs[3].paddr = u64::MAX - 0x100;
        let elf = build_elf(ET_EXEC, EM_X86_64, MIB, &phs, 0x5000);
        assert!(matches!(
            try_load(&elf),
            Err(ImageError::AddressOverflow { index: 3, .. })
        ));
        // The end fits, but rounding it up to a page does not.
        phs[3].vaddr = u64::MAX - 0x2100;
        phs[3].paddr = u64::MAX - 0x2100;
        let elf = build_elf(ET_EXEC, EM_X86_64, MIB, &phs, 0x5000);
        assert!(matches!(
            try_load(&elf),
            Err(ImageError::AddressOverflow { index: 3, .. })
        ));
    }

    #[test]
    fn rejects_segment_below_reserved() {
        let phs = [load_seg(PF_R | PF_X, 0x1000, MIB - 0x1000, 0x2000, 0x2000)];
        let elf = build_elf(ET_EXEC, EM_X86_64, MIB, &phs, 0x3000);
        assert!(matches!(
            try_load(&elf),
            Err(ImageError::OutOfRange { index: 0, start, end, reserved_below: MIB, mem_bytes: MEM })
                if start == MIB - 0x1000 && end == MIB + 0x1000
        ));
    }

    #[test]
    fn rejects_segment_past_mem_bytes() {
        let mut phs = good_segments();
        phs[3].memsz = MEM; // bss runs past the end of RAM
        let elf = build_elf(ET_EXEC, EM_X86_64, MIB, &phs, 0x5000);
        assert!(matches!(
            try_load(&elf),
            Err(ImageError::OutOfRange { index: 3, .. })
        ));
    }

    #[test]
    fn rejects_overlapping_segments() {
        let mut phs = good_segments();
        phs[3].vaddr = MIB + 0x2200; // inside the rodata segment
        phs[3].paddr = MIB + 0x2200;
        let elf = build_elf(ET_EXEC, EM_X86_64, MIB, &phs, 0x5000);
        assert!(matches!(
            try_load(&elf),
            Err(ImageError::Overlap {
                first: 1,
                second: 3
            })
        ));
        // Adjacent is fine.
        phs[3].vaddr = MIB + 0x2400;
        phs[3].paddr = MIB + 0x2400;
        let elf = build_elf(ET_EXEC, EM_X86_64, MIB, &phs, 0x5000);
        assert!(try_load(&elf).is_ok());
    }

    #[test]
    fn rejects_bad_entry_points() {
        let cases = [
            0,            // nowhere
            MIB + 0x2000, // in rodata: not executable
            MIB + 0x1800, // just past the code
            MIB + 0x3100, // in bss (also not executable)
            MIB - 1,      // just below the code
        ];
        for entry in cases {
            let elf = build_elf(ET_EXEC, EM_X86_64, entry, &good_segments(), 0x5000);
            assert!(
                matches!(try_load(&elf), Err(ImageError::EntryNotExecutable { entry: e }) if e == entry),
                "entry {entry:#x}"
            );
        }
        // The last byte of the code is a valid entry.
        let elf = build_elf(ET_EXEC, EM_X86_64, MIB + 0x17FF, &good_segments(), 0x5000);
        assert!(try_load(&elf).is_ok());
    }

    #[test]
    fn refused_image_writes_nothing() {
        let mut phs = good_segments();
        phs[3].memsz = MEM; // the last segment fails; earlier ones must not be written
        let elf = build_elf(ET_EXEC, EM_X86_64, MIB, &phs, 0x5000);
        let mut mem = TestMemory::new(MEM as usize);
        assert!(load(&elf, MEM, MIB, &mut mem).is_err());
        assert_eq!(mem.calls, 0);
    }

    #[test]
    fn reports_writer_errors() {
        let err = load(&good_elf(), MEM, MIB, &mut Broken).unwrap_err();
        assert!(matches!(err, ImageError::Write("broken")));
        assert_eq!(
            err.to_string(),
            "writing the guest image to guest memory failed: broken"
        );
    }

    #[test]
    fn every_error_displays() {
        let errors: Vec<ImageError<&str>> = vec![
            ImageError::NotElf,
            ImageError::NotElf64 { class: 1 },
            ImageError::NotLittleEndian { data: 2 },
            ImageError::Malformed(elf::ParseError::BadOffset(7)),
            ImageError::WrongMachine { machine: 3 },
            ImageError::NotExecutable { e_type: ET_DYN },
            ImageError::NotExecutable { e_type: ET_REL },
            ImageError::NoLoadSegments,
            ImageError::TooManySegments { count: 65 },
            ImageError::NotIdentityMapped {
                index: 0,
                vaddr: 1,
                paddr: 2,
            },
            ImageError::FileSizeExceedsMemSize {
                index: 0,
                filesz: 2,
                memsz: 1,
            },
            ImageError::FileRangeOutOfBounds {
                index: 0,
                offset: 1,
                filesz: 2,
                file_len: 3,
            },
            ImageError::AddressOverflow {
                index: 0,
                paddr: 1,
                memsz: 2,
            },
            ImageError::OutOfRange {
                index: 0,
                start: 1,
                end: 2,
                reserved_below: 3,
                mem_bytes: 4,
            },
            ImageError::Overlap {
                first: 0,
                second: 1,
            },
            ImageError::EntryNotExecutable { entry: 5 },
            ImageError::Write("disk on fire"),
        ];
        for e in &errors {
            let text = e.to_string();
            assert!(
                text.starts_with("guest") || text.starts_with("writing"),
                "{text}"
            );
        }
        assert!(errors[5].to_string().contains("--no-pie"));
    }

    /// Loads a real guest program built by `cargo build -p guest --release
    /// --target x86_64-unknown-none`.
    #[test]
    #[ignore = "needs a built guest ELF: GUEST_ELF=/path/to/smoke cargo test -p hypervisor --lib guest_image -- --ignored"]
    fn loads_real_guest_elf() {
        let path =
            std::env::var("GUEST_ELF").expect("set GUEST_ELF to a guest ELF to run this test");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        let mem_bytes = 16 * MIB;
        let mut mem = TestMemory::new(mem_bytes as usize);
        let image =
            load(&bytes, mem_bytes, MIB, &mut mem).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(image.lowest, MIB, "guests are linked at 1 MiB");
        assert!(image.entry >= image.lowest && image.entry < image.end);
        assert_eq!(image.end % PAGE_SIZE, 0);
        // Every PT_LOAD landed: file bytes copied, bss zeroed.
        let file = ElfBytes::<LittleEndian>::minimal_parse(&bytes).unwrap();
        for ph in file
            .segments()
            .unwrap()
            .iter()
            .filter(|ph| ph.p_type == PT_LOAD)
        {
            let (off, filesz) = (ph.p_offset as usize, ph.p_filesz as usize);
            assert_eq!(mem.at(ph.p_paddr, filesz), &bytes[off..off + filesz]);
            let bss = mem.at(
                ph.p_paddr + ph.p_filesz,
                (ph.p_memsz - ph.p_filesz) as usize,
            );
            assert!(bss.iter().all(|&b| b == 0));
        }
        println!(
            "{path}: entry {:#x}, image [{:#x}, {:#x})",
            image.entry, image.lowest, image.end
        );
    }
}
