//! Small changes to the kernel's page tables for starting cores: making sure a
//! physical range is reachable at the physical-memory offset (ACPI tables),
//! an uncached page for the xAPIC registers, and the start-up trampoline's
//! temporary tables.
//!
//! The bootloader maps all physical memory at `phys_offset`, from 0 up to the
//! highest address in its memory map and at least 4 GiB (bootloader 0.11
//! `max_phys_addr`), with 2 MiB pages, write-back. That covers ACPI tables in
//! practice; anything it does not cover is mapped here at the same offset.

use core::fmt;
use x86_64::registers::control::Cr3;
use x86_64::structures::paging::mapper::{MapToError, Translate};
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags as F, PhysFrame,
    Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

/// Hands out `n` physically contiguous 4 KiB frames; returns the first one's
/// address. Frames given out are never used by anything else.
pub type FrameFn<'a> = dyn FnMut(u64) -> Option<u64> + 'a;

const PAGE: u64 = crate::x86::PAGE_SIZE;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagingError {
    OutOfFrames,
    /// The virtual page at the physical-memory offset maps some other frame.
    Collision {
        phys: u64,
    },
    /// No free top-level slot for a new mapping.
    NoFreeSlot,
    /// A page-table frame that must be below 4 GiB (CR3 in 32-bit mode) is not.
    Above4G {
        phys: u64,
    },
    /// The kernel maps the trampoline's virtual address with a huge page.
    HugePageOnPath,
}

impl fmt::Display for PagingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PagingError::OutOfFrames => f.write_str("out of frames for page tables"),
            PagingError::Collision { phys } => write!(
                f,
                "the page at physical-memory offset + {phys:#x} already maps another frame"
            ),
            PagingError::NoFreeSlot => f.write_str("no free PML4 slot for a new mapping"),
            PagingError::Above4G { phys } => write!(
                f,
                "page-table frame {phys:#x} is above 4 GiB and cannot be loaded into CR3 in 32-bit mode"
            ),
            PagingError::HugePageOnPath => f.write_str(
                "the kernel maps the trampoline's low virtual address with a huge page",
            ),
        }
    }
}

/// `x86_64`'s frame-allocator trait over a [`FrameFn`].
struct Frames<'a, 'b>(&'a mut FrameFn<'b>);

// SAFETY: every frame comes from the caller's allocator, which hands out each
// frame once and never uses it itself.
unsafe impl FrameAllocator<Size4KiB> for Frames<'_, '_> {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let phys = (self.0)(1)?;
        PhysFrame::from_start_address(PhysAddr::new(phys)).ok()
    }
}

/// The kernel's live page tables.
///
/// # Safety
/// Only one `OffsetPageTable` over them may exist at a time, and no other core
/// may change them meanwhile (true while cores are being started: only the
/// boot core touches page tables).
unsafe fn kernel_tables(phys_offset: u64) -> OffsetPageTable<'static> {
    let pml4 = Cr3::read().0.start_address().as_u64();
    // SAFETY: CR3 holds the kernel's PML4, mapped at the physical-memory
    // offset; exclusivity is the caller's promise.
    unsafe {
        OffsetPageTable::new(
            &mut *((phys_offset + pml4) as *mut PageTable),
            VirtAddr::new(phys_offset),
        )
    }
}

/// Makes `[phys, phys + len)` readable at `phys_offset + phys`, mapping any
/// page the bootloader left out (read-only, no-execute).
pub fn ensure_mapped(
    phys_offset: u64,
    phys: u64,
    len: u64,
    alloc: &mut FrameFn<'_>,
) -> Result<(), PagingError> {
    // SAFETY: only the boot core runs while cores are started (see
    // `kernel_tables`); the value is dropped at the end of this function.
    let mut tables = unsafe { kernel_tables(phys_offset) };
    let mut page = phys & !(PAGE - 1);
    let end = phys.saturating_add(len.max(1));
    while page < end {
        let virt = VirtAddr::new(phys_offset + page);
        match tables.translate_addr(virt) {
            Some(p) if p.as_u64() == page => {}
            Some(_) => return Err(PagingError::Collision { phys: page }),
            None => {
                let frame = PhysFrame::<Size4KiB>::containing_address(PhysAddr::new(page));
                // SAFETY: the page is unmapped; it gets the frame the offset
                // mapping promises, read-only, so no Rust reference aliases
                // memory that changes under it.
                let flush = unsafe {
                    tables.map_to(
                        Page::<Size4KiB>::containing_address(virt),
                        frame,
                        F::PRESENT | F::NO_EXECUTE,
                        &mut Frames(alloc),
                    )
                };
                match flush {
                    Ok(f) => f.flush(),
                    Err(MapToError::FrameAllocationFailed) => return Err(PagingError::OutOfFrames),
                    Err(_) => return Err(PagingError::Collision { phys: page }),
                }
            }
        }
        page += PAGE;
    }
    Ok(())
}

/// Maps the 4 KiB MMIO page at `phys` uncached (PCD|PWT: PAT entry 3, UC in
/// the power-up PAT) at a fresh virtual address in an unused upper-half PML4
/// slot; returns that address. The local APIC page must be strong
/// uncacheable (SDM Vol. 3A, 11.4.1 "The Local APIC Block Diagram"); the
/// physical-memory mapping is write-back.
pub fn map_uncached(
    phys_offset: u64,
    phys: u64,
    alloc: &mut FrameFn<'_>,
) -> Result<u64, PagingError> {
    // SAFETY: as in `ensure_mapped`.
    let mut tables = unsafe { kernel_tables(phys_offset) };
    let slot = (256..512)
        .rev()
        .find(|&i| tables.level_4_table()[i].is_unused())
        .ok_or(PagingError::NoFreeSlot)?;
    // Sign-extended upper-half address of the slot's first page.
    let virt = VirtAddr::new(0xffff_0000_0000_0000 | ((slot as u64) << 39));
    // SAFETY: the slot is unused, so the page aliases nothing; the frame is
    // device memory, accessed only through volatile reads and writes.
    let flush = unsafe {
        tables.map_to(
            Page::<Size4KiB>::containing_address(virt),
            PhysFrame::containing_address(PhysAddr::new(phys)),
            F::PRESENT | F::WRITABLE | F::NO_CACHE | F::WRITE_THROUGH | F::NO_EXECUTE,
            &mut Frames(alloc),
        )
    };
    match flush {
        Ok(f) => f.flush(),
        Err(MapToError::FrameAllocationFailed) => return Err(PagingError::OutOfFrames),
        Err(_) => return Err(PagingError::Collision { phys }),
    }
    Ok(virt.as_u64() + (phys & (PAGE - 1)))
}

fn alloc_table(phys_offset: u64, alloc: &mut FrameFn<'_>) -> Result<u64, PagingError> {
    let phys = alloc(1).ok_or(PagingError::OutOfFrames)?;
    // SAFETY: a fresh frame, mapped at the physical-memory offset, used by
    // nothing else.
    unsafe { core::ptr::write_bytes((phys_offset + phys) as *mut u8, 0, PAGE as usize) };
    Ok(phys)
}

/// Builds the page tables an AP uses while it switches to long mode: the
/// kernel's own mappings, plus the identity mapping of the trampoline page
/// `ident` (needed at the instant paging turns on, SDM Vol. 3A, 10.8.5
/// "Initializing IA-32e Mode": the code that enables paging must be
/// identity-mapped). Returns the PML4's physical address, below 4 GiB.
///
/// Only the tables on the path to `ident` are copies (PML4, PDPT, PD, PT,
/// each copied from the kernel's or empty where the kernel has none); every
/// other entry points to the kernel's own lower-level tables. So the
/// kernel's code is reachable from the AP's 64-bit code, which then loads the
/// kernel's CR3 itself.
pub fn trampoline_tables(
    phys_offset: u64,
    ident: u64,
    alloc: &mut FrameFn<'_>,
) -> Result<u64, PagingError> {
    let table = |phys: u64| (phys_offset + phys) as *mut u64;
    let root = alloc_table(phys_offset, alloc)?;
    if root >= 1 << 32 {
        return Err(PagingError::Above4G { phys: root });
    }
    let mut src = Some(Cr3::read().0.start_address().as_u64());
    let mut dst = root;
    for level in (1..=4).rev() {
        let index = ((ident >> (12 + 9 * (level - 1))) & 511) as usize;
        if let Some(s) = src {
            // SAFETY: both are page-table frames mapped at the offset; `dst`
            // is ours alone, `s` is only read.
            unsafe { core::ptr::copy_nonoverlapping(table(s), table(dst), 512) };
        }
        if level == 1 {
            // SAFETY: `index` < 512, inside our table.
            unsafe { *table(dst).add(index) = ident | (F::PRESENT | F::WRITABLE).bits() };
            break;
        }
        let entry = src.map_or(0, |s| {
            // SAFETY: `index` < 512, inside the kernel's table at `s`.
            unsafe { *table(s).add(index) }
        });
        if entry & F::PRESENT.bits() != 0 && entry & F::HUGE_PAGE.bits() != 0 {
            return Err(PagingError::HugePageOnPath);
        }
        src = (entry & F::PRESENT.bits() != 0).then_some(entry & ADDR_MASK);
        let next = alloc_table(phys_offset, alloc)?;
        // Writable, executable, supervisor: the lower levels decide.
        // SAFETY: `index` < 512, inside our table.
        unsafe { *table(dst).add(index) = next | (F::PRESENT | F::WRITABLE).bits() };
        dst = next;
    }
    Ok(root)
}
