//! The MP table (Intel MultiProcessor Specification 1.4, chapter 4) of the
//! machine `pc` describes: what an OS reads where it does not use ACPI
//! (Linux with `acpi=off`), saying the same as the MADT (`machine::acpi`):
//!
//! - the MP floating pointer (16 bytes, "_MP_", spec 1.4, feature byte 1 =
//!   0: a configuration table is present; feature byte 2 bit 7 = 0: virtual
//!   wire mode, no IMCR), 16-byte aligned in the BIOS area 0xF0000-0xFFFFF,
//!   where an OS searches (4.1);
//! - the configuration table ("PCMP", 4.2) after it, with the local APICs at
//!   0xFEE00000 and these entries, in the order 4.3 requires:
//!   - a processor per vCPU (APIC ID = index, version 0x14, enabled; vCPU 0
//!     the BSP), with the CPU signature and feature flags of CPUID leaf 1;
//!   - bus 0, "ISA   ";
//!   - the I/O APIC (ID = the vCPU count, as in the MADT; version 0x20;
//!     0xFEC00000);
//!   - an I/O interrupt entry per ISA IRQ 0-15 but 2 (the cascade): IRQ 0 on
//!     pin 2, IRQ n on pin n; IRQ 5, 9, 10 and 11 level-triggered active
//!     high (as the MADT's overrides and QEMU's), the rest conforming to the
//!     ISA bus (edge, active high);
//!   - local interrupts: ExtINT on LINT0 and NMI on LINT1 of every APIC
//!     (destination 0xFF), the virtual-wire wiring (5.1).
//!
//! Both structures are checksummed. Pure: host-tested by parsing it back.

use super::acpi::{IOAPIC_ADDRESS, LAPIC_ADDRESS};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// Where the floating pointer goes: the start of the BIOS ROM area, which
/// the board map reserves (the ACPI tables are at 0xE0000).
pub const DEFAULT_BASE: u64 = 0xF_0000;
/// Where an OS searches for the floating pointer (besides the EBDA and the
/// last KiB of base memory, which the board leaves alone).
pub const SEARCH_AREA: core::ops::Range<u64> = 0xF_0000..0x10_0000;

/// Entry types (4.3, table 4-3).
const PROCESSOR: u8 = 0;
const BUS: u8 = 1;
const IO_APIC: u8 = 2;
const IO_INTERRUPT: u8 = 3;
const LOCAL_INTERRUPT: u8 = 4;

/// Interrupt types (table 4-8).
const INT: u8 = 0;
const NMI: u8 = 1;
const EXT_INT: u8 = 3;

/// Interrupt flags: polarity bits 1:0 (01 active high), trigger 3:2 (11
/// level); 0 conforms to the bus.
const LEVEL_ACTIVE_HIGH: u16 = 0b1101;

/// ISA IRQs the MADT makes level-triggered (PCI interrupts on QEMU's pc).
const LEVEL_IRQS: [u8; 4] = [5, 9, 10, 11];

/// The built table: `bytes` go at `base` in guest memory.
#[derive(Debug, Clone)]
pub struct MpImage {
    pub base: u64,
    pub bytes: Vec<u8>,
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)))
}

/// Builds the MP floating pointer and configuration table for `vcpus`
/// vCPUs at `base` (16-byte aligned, in [`SEARCH_AREA`]); `signature` and
/// `features` are CPUID leaf 1's EAX and EDX.
pub fn build(base: u64, vcpus: u32, signature: u32, features: u32) -> Result<MpImage, String> {
    let n = u8::try_from(vcpus)
        .ok()
        .filter(|&n| n > 0 && n < 0xFF)
        .ok_or_else(|| format!("MP table for {vcpus} vCPUs: the xAPIC allows 1 to 254"))?;
    if !base.is_multiple_of(16) || !SEARCH_AREA.contains(&base) {
        return Err(format!(
            "MP table at {base:#x}: the floating pointer must be 16-byte aligned in [{:#x}, {:#x})",
            SEARCH_AREA.start, SEARCH_AREA.end
        ));
    }
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    let mut entry = |e: &[u8]| {
        entries.extend_from_slice(e);
        count += 1;
    };
    for id in 0..n {
        let flags = 1 | if id == 0 { 2 } else { 0 }; // enabled, BSP
        let mut e = [0u8; 20];
        e[0] = PROCESSOR;
        e[1] = id;
        e[2] = 0x14;
        e[3] = flags;
        e[4..8].copy_from_slice(&signature.to_le_bytes());
        e[8..12].copy_from_slice(&features.to_le_bytes());
        entry(&e);
    }
    entry(&[BUS, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
    let ioapic_id = n;
    let mut e = [IO_APIC, ioapic_id, 0x20, 1, 0, 0, 0, 0];
    e[4..].copy_from_slice(&IOAPIC_ADDRESS.to_le_bytes());
    entry(&e);
    for irq in (0u8..16).filter(|&i| i != 2) {
        let pin = if irq == 0 { 2 } else { irq };
        let flags = if LEVEL_IRQS.contains(&irq) {
            LEVEL_ACTIVE_HIGH
        } else {
            0
        };
        let f = flags.to_le_bytes();
        entry(&[IO_INTERRUPT, INT, f[0], f[1], 0, irq, ioapic_id, pin]);
    }
    for (kind, lint) in [(EXT_INT, 0), (NMI, 1)] {
        entry(&[LOCAL_INTERRUPT, kind, 0, 0, 0, 0, 0xFF, lint]);
    }

    // The configuration table: 44-byte header, then the entries.
    let table_len = 44 + entries.len();
    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"RUSTHV  "); // OEM ID
    table.extend_from_slice(b"PC MACHINE  "); // product ID
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&LAPIC_ADDRESS.to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    table.push(0); // extended table checksum
    table.push(0); // reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let table_gpa = base + 16;
    if table_gpa + table.len() as u64 > SEARCH_AREA.end {
        return Err(format!(
            "MP table at {base:#x} ({} bytes) runs past 1 MiB",
            16 + table.len()
        ));
    }
    let mut fp = [0u8; 16];
    fp[..4].copy_from_slice(b"_MP_");
    fp[4..8].copy_from_slice(&(table_gpa as u32).to_le_bytes());
    fp[8] = 1; // length in 16-byte units
    fp[9] = 4; // spec revision 1.4
               // fp[11] = 0: the configuration table is present; fp[12] bit 7 = 0:
               // virtual wire mode.
    fp[10] = checksum(&fp);
    let mut bytes = fp.to_vec();
    bytes.extend_from_slice(&table);
    Ok(MpImage { base, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// What an OS reads back: (APIC ID, BSP) per processor, the I/O APIC
    /// ID and address, (IRQ, pin, flags) per I/O interrupt, (type, LINT)
    /// per local interrupt; checksums and lengths verified on the way.
    type Parsed = (
        Vec<(u8, bool)>,
        (u8, u32),
        Vec<(u8, u8, u16)>,
        Vec<(u8, u8)>,
    );

    fn parse(img: &MpImage) -> Parsed {
        let b = &img.bytes;
        assert_eq!(&b[..4], b"_MP_");
        assert_eq!(b[..16].iter().fold(0u8, |a, &x| a.wrapping_add(x)), 0);
        assert_eq!(b[8], 1);
        assert_eq!(b[9], 4);
        assert_eq!(b[11], 0, "a configuration table is present");
        let table = u64::from(u32::from_le_bytes(b[4..8].try_into().unwrap()));
        let t = &b[(table - img.base) as usize..];
        assert_eq!(&t[..4], b"PCMP");
        let len = usize::from(u16::from_le_bytes([t[4], t[5]]));
        assert_eq!(len, t.len());
        assert_eq!(t.iter().fold(0u8, |a, &x| a.wrapping_add(x)), 0);
        assert_eq!(
            u32::from_le_bytes(t[36..40].try_into().unwrap()),
            LAPIC_ADDRESS
        );
        let count = u16::from_le_bytes([t[34], t[35]]);
        let (mut cpus, mut ioapic, mut ints, mut lints) = (vec![], None, vec![], vec![]);
        let mut at = 44;
        let mut last_type = 0;
        for _ in 0..count {
            let kind = t[at];
            assert!(kind >= last_type, "entries sorted by type (4.3)");
            last_type = kind;
            match kind {
                PROCESSOR => {
                    assert_eq!(t[at + 3] & 1, 1, "enabled");
                    cpus.push((t[at + 1], t[at + 3] & 2 != 0));
                    at += 20;
                }
                BUS => {
                    assert_eq!(&t[at + 2..at + 8], b"ISA   ");
                    at += 8;
                }
                IO_APIC => {
                    let addr = u32::from_le_bytes(t[at + 4..at + 8].try_into().unwrap());
                    ioapic = Some((t[at + 1], addr));
                    at += 8;
                }
                IO_INTERRUPT => {
                    assert_eq!(t[at + 1], INT);
                    assert_eq!(Some(t[at + 6]), ioapic.map(|i| i.0));
                    let flags = u16::from_le_bytes([t[at + 2], t[at + 3]]);
                    ints.push((t[at + 5], t[at + 7], flags));
                    at += 8;
                }
                LOCAL_INTERRUPT => {
                    assert_eq!(t[at + 6], 0xFF, "every local APIC");
                    lints.push((t[at + 1], t[at + 7]));
                    at += 8;
                }
                k => panic!("unknown entry type {k}"),
            }
        }
        assert_eq!(at, len, "the entries fill the table");
        (cpus, ioapic.expect("an I/O APIC"), ints, lints)
    }

    #[test]
    fn the_table_says_what_the_madt_says() {
        let img = build(DEFAULT_BASE, 4, 0x000506e3, 0x178bfbff).unwrap();
        let (cpus, ioapic, ints, lints) = parse(&img);
        assert_eq!(cpus, [(0, true), (1, false), (2, false), (3, false)]);
        assert_eq!(ioapic, (4, IOAPIC_ADDRESS), "the MADT's IOAPIC ID");
        assert_eq!(ints.len(), 15, "ISA IRQs 0-15 but the cascade");
        assert!(ints.contains(&(0, 2, 0)), "IRQ 0 on pin 2");
        assert!(ints.contains(&(4, 4, 0)), "COM1 on pin 4, edge");
        assert!(ints.contains(&(9, 9, LEVEL_ACTIVE_HIGH)), "SCI level");
        assert!(!ints.iter().any(|i| i.0 == 2), "no IRQ 2");
        assert_eq!(lints, [(EXT_INT, 0), (NMI, 1)]);
        // The processor entries carry CPUID leaf 1.
        let p = &img.bytes[16 + 44..16 + 64];
        assert_eq!(&p[4..8], &0x000506e3u32.to_le_bytes());
        assert_eq!(&p[8..12], &0x178bfbffu32.to_le_bytes());
    }

    #[test]
    fn bad_places_and_counts_are_refused() {
        assert!(build(0xE_0000, 1, 0, 0).is_err(), "outside the search area");
        assert!(build(0xF_0008, 1, 0, 0).is_err(), "not 16-byte aligned");
        assert!(build(0xF_FFF0, 1, 0, 0).is_err(), "runs past 1 MiB");
        assert!(build(DEFAULT_BASE, 0, 0, 0).is_err());
        assert!(build(DEFAULT_BASE, 255, 0, 0).is_err());
        assert!(build(DEFAULT_BASE, 254, 0, 0).is_ok());
    }
}
