//! The board map: what a guest kernel finds in the guest-physical address
//! space, shaped like QEMU's `pc` machine (the machine guest kernels are
//! written for). Pure: the multiboot loader reports it to the guest (memory
//! map, mem_lower/mem_upper) and checks load addresses against it.
//!
//! ```text
//! 0x0000_0000 .. 0x0009_fc00  RAM, usable (conventional memory)
//! 0x0009_fc00 .. 0x000a_0000  RAM, reserved (EBDA)
//! 0x000a_0000 .. 0x000c_0000  reserved (VGA window; RAM behind it here)
//! 0x000c_0000 .. 0x0010_0000  reserved (option ROMs, BIOS; ACPI tables at
//!                             ACPI_BASE)
//! 0x0010_0000 .. mem          RAM, usable
//! 0xfec0_0000 .. +4 KiB       reserved: IOAPIC
//! 0xfee0_0000 .. +4 KiB       reserved: local APIC
//! 0xfffc_0000 .. 4 GiB        reserved: BIOS ROM (high alias)
//! ```
//!
//! Guest RAM runs from 0 to `mem` in one piece (the memslots back all of
//! it, holes included, so a guest that reads the BIOS area reads zeroes),
//! and must end below the PCI hole at [`PCI_HOLE`] (3 GiB, QEMU's split
//! for `pc` with more than 3.5 GiB). RAM above 4 GiB is not offered: a
//! larger memory is refused.

/// End of conventional memory: the EBDA starts here (QEMU: 639 KiB).
pub const LOW_RAM_END: u64 = 0x9_fc00;
/// Start of extended memory (1 MiB).
pub const HIGH_RAM_START: u64 = 0x10_0000;
/// Where the ACPI tables go (the BIOS area's upper 128 KiB).
pub const ACPI_BASE: u64 = 0xe_0000;
/// RAM must end at or below this address (the 32-bit PCI hole begins).
pub const PCI_HOLE: u64 = 0xc000_0000;
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
pub const LAPIC_BASE: u64 = 0xfee0_0000;
pub const BIOS_ROM_BASE: u64 = 0xfffc_0000;
/// Smallest RAM a kernel run may have: the low memory and 1 MiB above it.
pub const MIN_MEM: u64 = 2 << 20;

/// What a range of the map is, in the multiboot/E820 encoding
/// (1 = available RAM, 2 = reserved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    Usable,
    Reserved,
}

impl RegionKind {
    /// The multiboot memory map's `type` (1 available, 2 reserved).
    pub const fn multiboot_type(self) -> u32 {
        match self {
            RegionKind::Usable => 1,
            RegionKind::Reserved => 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    pub kind: RegionKind,
}

impl Region {
    pub const fn len(&self) -> u64 {
        self.end - self.start
    }
    pub const fn is_empty(&self) -> bool {
        self.end == self.start
    }
    /// Whether `[start, end)` overlaps this region.
    pub const fn overlaps(&self, start: u64, end: u64) -> bool {
        start < self.end && self.start < end
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoardError {
    /// Less RAM than [`MIN_MEM`].
    TooSmall { mem: u64 },
    /// RAM reaching into the PCI hole.
    TooLarge { mem: u64 },
    /// Not a whole number of 4 KiB pages.
    Unaligned { mem: u64 },
}

impl core::fmt::Display for BoardError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            BoardError::TooSmall { mem } => write!(
                f,
                "{} KiB of guest RAM: a kernel run needs at least {} MiB",
                mem >> 10,
                MIN_MEM >> 20
            ),
            BoardError::TooLarge { mem } => write!(
                f,
                "{} MiB of guest RAM reaches the PCI hole at {PCI_HOLE:#x}: a kernel run \
                 has at most {} MiB (RAM above 4 GiB is not offered)",
                mem >> 20,
                PCI_HOLE >> 20
            ),
            BoardError::Unaligned { mem } => {
                write!(f, "guest RAM of {mem:#x} bytes is not whole 4 KiB pages")
            }
        }
    }
}

/// The guest-physical map of a machine with `mem` bytes of RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Board {
    pub mem: u64,
}

impl Board {
    pub fn new(mem: u64) -> Result<Self, BoardError> {
        if mem < MIN_MEM {
            return Err(BoardError::TooSmall { mem });
        }
        if mem > PCI_HOLE {
            return Err(BoardError::TooLarge { mem });
        }
        if !mem.is_multiple_of(4096) {
            return Err(BoardError::Unaligned { mem });
        }
        Ok(Board { mem })
    }

    /// The map, in address order, as the guest is told it (the multiboot
    /// memory map; an E820 table later).
    pub fn regions(&self) -> [Region; 6] {
        use RegionKind::*;
        let r = |start, end, kind| Region { start, end, kind };
        [
            r(0, LOW_RAM_END, Usable),
            r(LOW_RAM_END, HIGH_RAM_START, Reserved),
            r(HIGH_RAM_START, self.mem, Usable),
            r(IOAPIC_BASE, IOAPIC_BASE + 0x1000, Reserved),
            r(LAPIC_BASE, LAPIC_BASE + 0x1000, Reserved),
            r(BIOS_ROM_BASE, 1 << 32, Reserved),
        ]
    }

    /// Multiboot `mem_lower`: KiB of usable memory from 0 (at most 640).
    pub fn mem_lower_kib(&self) -> u32 {
        (LOW_RAM_END >> 10) as u32
    }

    /// Multiboot `mem_upper`: KiB of usable memory from 1 MiB up to the
    /// first hole.
    pub fn mem_upper_kib(&self) -> u32 {
        ((self.mem - HIGH_RAM_START) >> 10) as u32
    }

    /// Whether `[start, end)` lies wholly in usable RAM (what a kernel may
    /// be loaded into).
    pub fn is_usable(&self, start: u64, end: u64) -> bool {
        start <= end
            && self
                .regions()
                .iter()
                .any(|r| r.kind == RegionKind::Usable && start >= r.start && end <= r.end)
    }

    /// The usable regions (where the loader may put things).
    pub fn usable(&self) -> impl Iterator<Item = Region> {
        self.regions()
            .into_iter()
            .filter(|r| r.kind == RegionKind::Usable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_is_sorted_and_disjoint_like_qemu_pc() {
        let b = Board::new(128 << 20).unwrap();
        let r = b.regions();
        for w in r.windows(2) {
            assert!(w[0].end <= w[1].start, "{w:?}");
        }
        assert!(r.iter().all(|r| !r.is_empty()));
        // QEMU pc with -m 128: mem_lower 639, mem_upper 130048.
        assert_eq!(b.mem_lower_kib(), 639);
        assert_eq!(b.mem_upper_kib(), (128 << 10) - 1024);
        assert_eq!(
            r[2],
            Region {
                start: 0x10_0000,
                end: 128 << 20,
                kind: RegionKind::Usable
            }
        );
        assert_eq!(RegionKind::Reserved.multiboot_type(), 2);
    }

    #[test]
    fn usable_excludes_the_holes() {
        let b = Board::new(64 << 20).unwrap();
        assert!(b.is_usable(0x10_0000, 0x20_0000));
        assert!(b.is_usable(0x1000, 0x9_f000));
        assert!(!b.is_usable(0x9_f000, 0xa_0000), "EBDA");
        assert!(!b.is_usable(0xf_0000, 0x10_1000), "BIOS area");
        assert!(!b.is_usable(0x10_0000, (64 << 20) + 1), "past RAM");
        assert!(!b.is_usable(LAPIC_BASE, LAPIC_BASE + 4), "LAPIC");
        assert_eq!(b.usable().count(), 2);
    }

    #[test]
    fn refuses_sizes_the_map_cannot_hold() {
        assert_eq!(
            Board::new(1 << 20),
            Err(BoardError::TooSmall { mem: 1 << 20 })
        );
        let e = Board::new(PCI_HOLE + 4096).unwrap_err();
        assert!(e.to_string().contains("PCI hole"), "{e}");
        assert!(Board::new(PCI_HOLE).is_ok());
        assert_eq!(
            Board::new((4 << 20) + 1),
            Err(BoardError::Unaligned { mem: (4 << 20) + 1 })
        );
    }
}
