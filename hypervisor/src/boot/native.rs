//! Where things go in a new guest's memory, and the page tables and GDT the
//! hypervisor writes there so that the guest can start in 64-bit mode.
//!
//! ```text
//! 0x0040  one BootInfo (abi::BootInfo) per vCPU, 64 bytes apart (none at
//!         0, so that no guest gets a null pointer); the GDT at the end of
//!         the page (GDT_GPA)
//! 0x1000  PML4
//! 0x2000  PDPT
//! 0x3000  4 page directories: 0-4 GiB identity-mapped with 2 MiB pages
//! ....    the guest ELF's segments (at or above IMAGE_MIN, where it is linked)
//! end     one 16 KiB stack per vCPU
//! free    [free_start, mem_bytes) belongs to the guest program
//! ```
//! Pure: it computes addresses and entry values; the caller writes them.

use crate::boot::abi::STACK_SIZE;
use crate::x86::state::{DescriptorTable, GuestState};

pub const BOOT_INFO_GPA: u64 = 0x40;
/// Distance between two vCPUs' BootInfo structures.
pub const BOOT_INFO_STRIDE: u64 = 64;
const _: () =
    assert!(core::mem::size_of::<crate::boot::abi::BootInfo>() as u64 <= BOOT_INFO_STRIDE);
pub const GDT_GPA: u64 = 0x1000 - 24;
/// As many vCPUs as BootInfo structures fit below the GDT.
pub const MAX_VCPUS: u32 = ((GDT_GPA - BOOT_INFO_GPA) / BOOT_INFO_STRIDE) as u32;
pub const PML4_GPA: u64 = 0x1000;
pub const PDPT_GPA: u64 = 0x2000;
pub const PD_GPA: u64 = 0x3000;
/// Identity map of the first 4 GiB (4 page directories).
pub const MAPPED_GIB: u64 = 4;
/// Lowest address a guest image may use.
pub const IMAGE_MIN: u64 = PD_GPA + MAPPED_GIB * 0x1000;

/// The guest's GDT: null, 64-bit code (selector 0x08), data (0x10).
pub const GDT: [u64; 3] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
pub const CODE_SELECTOR: u16 = 0x08;
pub const DATA_SELECTOR: u16 = 0x10;

const PRESENT: u64 = 1;
const WRITABLE: u64 = 2;
const HUGE: u64 = 1 << 7;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub mem_bytes: u64,
    pub stacks_start: u64,
    pub free_start: u64,
    pub vcpus: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutError {
    /// Guest memory ends below this address: image and stacks do not fit.
    TooSmall { needed: u64 },
    /// Guest memory above the identity-mapped range.
    TooLarge,
    /// More vCPUs than BootInfo structures fit.
    TooManyVcpus,
}

impl core::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LayoutError::TooSmall { needed } => write!(
                f,
                "guest memory too small: image, tables and stacks need {needed:#x} bytes"
            ),
            LayoutError::TooLarge => {
                write!(f, "guest memory above {MAPPED_GIB} GiB is not supported")
            }
            LayoutError::TooManyVcpus => write!(f, "1 to {MAX_VCPUS} vCPUs are supported"),
        }
    }
}

impl Layout {
    /// The layout for an image ending at `image_end` and `vcpus` stacks.
    pub fn new(mem_bytes: u64, image_end: u64, vcpus: u32) -> Result<Self, LayoutError> {
        if mem_bytes > MAPPED_GIB << 30 {
            return Err(LayoutError::TooLarge);
        }
        if vcpus == 0 || vcpus > MAX_VCPUS {
            return Err(LayoutError::TooManyVcpus);
        }
        let stacks_start = image_end.max(IMAGE_MIN).next_multiple_of(0x1000);
        let free_start = stacks_start + u64::from(vcpus) * STACK_SIZE;
        if free_start > mem_bytes {
            return Err(LayoutError::TooSmall { needed: free_start });
        }
        Ok(Layout {
            mem_bytes,
            stacks_start,
            free_start,
            vcpus,
        })
    }

    /// Where vCPU `id`'s BootInfo lives.
    pub fn boot_info_gpa(&self, id: u32) -> u64 {
        BOOT_INFO_GPA + u64::from(id) * BOOT_INFO_STRIDE
    }

    /// Initial RSP of vCPU `id`: the top of its stack, minus 8 as after a call.
    pub fn stack_top(&self, id: u32) -> u64 {
        self.stacks_start + (u64::from(id) + 1) * STACK_SIZE - 8
    }

    /// Every page-table entry to write, as (guest-physical address, value):
    /// PML4[0] → PDPT, PDPT[0..4] → PDs, and 2048 PD entries of 2 MiB.
    pub fn page_table_entries(&self) -> impl Iterator<Item = (u64, u64)> {
        let pml4 = core::iter::once((PML4_GPA, PDPT_GPA | PRESENT | WRITABLE));
        let pdpt =
            (0..MAPPED_GIB).map(|i| (PDPT_GPA + i * 8, (PD_GPA + i * 0x1000) | PRESENT | WRITABLE));
        let pd =
            (0..MAPPED_GIB * 512).map(|i| (PD_GPA + i * 8, (i << 21) | PRESENT | WRITABLE | HUGE));
        pml4.chain(pdpt).chain(pd)
    }
}

/// The initial state of vCPU `id` of a native guest: 64-bit mode with the
/// tables and GDT above, RSP at its stack, RDI at its BootInfo.
pub fn initial_state(entry: u64, layout: &Layout, id: u32) -> GuestState {
    let gdt = DescriptorTable {
        base: GDT_GPA,
        limit: (GDT.len() * 8 - 1) as u32,
    };
    let mut s = GuestState::long_mode(
        entry,
        layout.stack_top(id),
        PML4_GPA,
        gdt,
        CODE_SELECTOR,
        DATA_SELECTOR,
    );
    s.gprs.rdi = layout.boot_info_gpa(id);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_abi_carries_the_hypervisors_cpuid_signature() {
        assert_eq!(
            crate::boot::abi::CPUID_SIGNATURE,
            crate::machine::cpuid::SIGNATURE
        );
    }
    use std::collections::HashMap;

    /// Walks the tables like the CPU would (4-level, 2 MiB leaves).
    fn translate(mem: &HashMap<u64, u64>, va: u64) -> Option<u64> {
        let e = |a: u64| mem.get(&a).copied().unwrap_or(0);
        let pml4e = e(PML4_GPA + ((va >> 39) & 511) * 8);
        if pml4e & PRESENT == 0 {
            return None;
        }
        let pdpte = e((pml4e & !0xfff) + ((va >> 30) & 511) * 8);
        if pdpte & PRESENT == 0 {
            return None;
        }
        let pde = e((pdpte & !0xfff) + ((va >> 21) & 511) * 8);
        if pde & PRESENT == 0 || pde & HUGE == 0 {
            return None;
        }
        Some((pde & !0x1f_ffff & ((1 << 52) - 1)) | (va & 0x1f_ffff))
    }

    #[test]
    fn identity_maps_four_gib() {
        let l = Layout::new(16 << 20, 0x12_3456, 2).unwrap();
        let mem: HashMap<u64, u64> = l.page_table_entries().collect();
        for va in [0, 0x1234, 0x20_0000, 0x1234_5678, (4 << 30) - 1] {
            assert_eq!(translate(&mem, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&mem, 4 << 30), None);
        // The tables stay below the image.
        assert!(mem.keys().all(|&a| a < IMAGE_MIN));
    }

    #[test]
    fn stacks_follow_the_image() {
        let l = Layout::new(16 << 20, 0x12_3456, 2).unwrap();
        assert_eq!(l.stacks_start, 0x12_4000);
        assert_eq!(l.stack_top(0), 0x12_4000 + STACK_SIZE - 8);
        assert_eq!(l.stack_top(1), 0x12_4000 + 2 * STACK_SIZE - 8);
        assert_eq!(l.free_start, 0x12_4000 + 2 * STACK_SIZE);
        assert_eq!(l.stack_top(0) % 16, 8, "as after a call");
    }

    #[test]
    fn rejects_bad_sizes() {
        assert_eq!(
            Layout::new(0x10_0000, 0x10_0000, 1),
            Err(LayoutError::TooSmall {
                needed: 0x10_0000 + STACK_SIZE
            })
        );
        assert_eq!(
            Layout::new(5 << 30, 0x10_0000, 1),
            Err(LayoutError::TooLarge)
        );
    }

    #[test]
    fn gdt_descriptors_are_64_bit_code_and_flat_data() {
        // L=1 (bit 53), P=1, type execute/read accessed.
        assert_ne!(GDT[1] & (1 << 53), 0);
        assert_eq!((GDT[1] >> 40) & 0xff, 0x9b);
        assert_eq!((GDT[2] >> 40) & 0xff, 0x93);
    }
}
