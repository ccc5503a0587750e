//! The ACPI tables of the machine `pc` describes, built as one image to copy
//! into guest memory (ACPI 6.5 specification, chapter 5):
//!
//! | offset | table | contents                                              |
//! |--------|-------|-------------------------------------------------------|
//! | 0x00   | RSDP  | revision 2 (36 bytes), RSDT and XSDT addresses        |
//! | 0x40   | FACS  | 64 bytes, 64-byte aligned                             |
//! | then   | RSDT, XSDT | FADT and MADT                                    |
//! |        | FADT  | revision 6: SCI 9, PM1a event 0x600 (4), PM1a control |
//! |        |       | 0x604 (2), PM timer 0x608 (4, 24-bit: TMR_VAL_EXT 0), |
//! |        |       | reset register 0xCF9 value 0x06, no SMI_CMD (always   |
//! |        |       | in ACPI mode), century 0x32, 8042 and legacy devices  |
//! |        | DSDT  | `Name(\_S5, Package(4){0,0,0,0})`: SLP_TYP 0 = off    |
//! |        | MADT  | LAPIC 0xFEE00000, PCAT_COMPAT; a local APIC per vCPU  |
//! |        |       | (ID = index); an IOAPIC (ID = vCPU count, 0xFEC00000, |
//! |        |       | GSI 0); overrides IRQ0→GSI2 and IRQ 5/9/10/11 level,  |
//! |        |       | active high, as QEMU's; LINT1 is NMI on every CPU     |
//!
//! Every table is checksummed (the RSDP twice: its first 20 bytes and all
//! 36). The RSDP must lie where an OS searches for it: 16-byte aligned in
//! the BIOS area 0xE0000-0xFFFFF.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// OEM ID in every header.
pub const OEM_ID: &[u8; 6] = b"RUSTHV";
/// OEM table ID in every header.
pub const OEM_TABLE_ID: &[u8; 8] = b"PCMACHIN";

/// Where the local APICs are.
pub const LAPIC_ADDRESS: u32 = 0xFEE0_0000;
/// Where the IOAPIC is.
pub const IOAPIC_ADDRESS: u32 = 0xFEC0_0000;
/// The SCI's ISA IRQ (PIIX4, as QEMU).
pub const SCI_IRQ: u8 = 9;
/// Where the tables go by default: the start of the BIOS area, which the
/// board map keeps out of the guest's usable RAM.
pub const DEFAULT_BASE: u64 = 0xE_0000;
/// The BIOS read-only area an OS searches for the RSDP.
pub const BIOS_AREA: core::ops::Range<u64> = 0xE0000..0x10_0000;

/// The built tables: `bytes` go at `base` in guest memory.
#[derive(Debug, Clone)]
pub struct AcpiImage {
    pub base: u64,
    pub bytes: Vec<u8>,
    /// Guest-physical addresses of each table.
    pub rsdp: u64,
    pub facs: u64,
    pub rsdt: u64,
    pub xsdt: u64,
    pub fadt: u64,
    pub dsdt: u64,
    pub madt: u64,
}

/// The checksum byte that makes `bytes` sum to 0.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)))
}

/// A table: header then body; length and checksum filled in by `finish`.
struct Table(Vec<u8>);

impl Table {
    fn new(signature: &[u8; 4], revision: u8) -> Self {
        let mut t = Vec::with_capacity(256);
        t.extend_from_slice(signature);
        t.extend_from_slice(&[0; 4]); // length
        t.push(revision);
        t.push(0); // checksum
        t.extend_from_slice(OEM_ID);
        t.extend_from_slice(OEM_TABLE_ID);
        t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
        t.extend_from_slice(b"RHV ");
        t.extend_from_slice(&1u32.to_le_bytes()); // creator revision
        Table(t)
    }

    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    /// A Generic Address Structure (ACPI 5.2.3.2) in system I/O space.
    fn gas_io(&mut self, bit_width: u8, access_size: u8, port: u16) -> &mut Self {
        self.u8(1)
            .u8(bit_width)
            .u8(0)
            .u8(access_size)
            .u64(u64::from(port))
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[4..8].copy_from_slice(&len.to_le_bytes());
        self.0[9] = checksum(&self.0);
        self.0
    }
}

fn fadt(facs: u64, dsdt: u64) -> Vec<u8> {
    use crate::devices::pm_timer::{PM1A_CNT, PM1A_EVT, PM_TMR};
    let mut t = Table::new(b"FACP", 6);
    t.u32(facs as u32) // FIRMWARE_CTRL
        .u32(dsdt as u32) // DSDT
        .u8(0) // reserved
        .u8(0) // preferred PM profile: unspecified
        .u16(u16::from(SCI_IRQ))
        .u32(0) // SMI_CMD: none, the machine is always in ACPI mode
        .u8(0) // ACPI_ENABLE
        .u8(0) // ACPI_DISABLE
        .u8(0) // S4BIOS_REQ
        .u8(0) // PSTATE_CNT
        .u32(u32::from(PM1A_EVT))
        .u32(0) // PM1b_EVT_BLK
        .u32(u32::from(PM1A_CNT))
        .u32(0) // PM1b_CNT_BLK
        .u32(0) // PM2_CNT_BLK
        .u32(u32::from(PM_TMR))
        .u32(0) // GPE0_BLK
        .u32(0) // GPE1_BLK
        .u8(4) // PM1_EVT_LEN
        .u8(2) // PM1_CNT_LEN
        .u8(0) // PM2_CNT_LEN
        .u8(4) // PM_TMR_LEN
        .u8(0) // GPE0_BLK_LEN
        .u8(0) // GPE1_BLK_LEN
        .u8(0) // GPE1_BASE
        .u8(0) // CST_CNT
        .u16(0x0FFF) // P_LVL2_LAT: C2 not supported
        .u16(0x0FFF) // P_LVL3_LAT: C3 not supported
        .u16(0) // FLUSH_SIZE
        .u16(0) // FLUSH_STRIDE
        .u8(0) // DUTY_OFFSET
        .u8(0) // DUTY_WIDTH
        .u8(0) // DAY_ALRM
        .u8(0) // MON_ALRM
        .u8(0x32) // CENTURY: CMOS register
        // IAPC_BOOT_ARCH: LEGACY_DEVICES, 8042, VGA not present.
        .u16(0x0007)
        .u8(0)
        // Flags: WBINVD, PROC_C1, PWR_BUTTON and SLP_BUTTON (no fixed
        // buttons), FIX_RTC, RESET_REG_SUP; TMR_VAL_EXT clear (24 bits).
        .u32(0x0000_0475)
        .gas_io(8, 1, crate::devices::pci::RESET_CONTROL_PORT) // RESET_REG
        .u8(0x06) // RESET_VALUE
        .u16(0) // ARM_BOOT_ARCH
        .u8(0) // FADT minor version
        .u64(facs) // X_FIRMWARE_CTRL
        .u64(dsdt) // X_DSDT
        .gas_io(32, 2, PM1A_EVT) // X_PM1a_EVT_BLK
        .bytes(&[0; 12]) // X_PM1b_EVT_BLK
        .gas_io(16, 2, PM1A_CNT) // X_PM1a_CNT_BLK
        .bytes(&[0; 12]) // X_PM1b_CNT_BLK
        .bytes(&[0; 12]) // X_PM2_CNT_BLK
        .gas_io(32, 3, PM_TMR) // X_PM_TMR_BLK
        .bytes(&[0; 12]) // X_GPE0_BLK
        .bytes(&[0; 12]) // X_GPE1_BLK
        .bytes(&[0; 12]) // SLEEP_CONTROL_REG
        .bytes(&[0; 12]) // SLEEP_STATUS_REG
        .u64(0); // hypervisor vendor identity
    let t = t.finish();
    debug_assert_eq!(t.len(), 276);
    t
}

fn facs() -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(b"FACS");
    f.extend_from_slice(&64u32.to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes()); // hardware signature
    f.extend_from_slice(&0u32.to_le_bytes()); // firmware waking vector
    f.extend_from_slice(&0u32.to_le_bytes()); // global lock
    f.extend_from_slice(&0u32.to_le_bytes()); // flags
    f.extend_from_slice(&0u64.to_le_bytes()); // X firmware waking vector
    f.push(2); // version
    f.resize(64, 0);
    f
}

fn dsdt() -> Vec<u8> {
    let mut t = Table::new(b"DSDT", 2);
    // Name (\_S5, Package (4) { 0, 0, 0, 0 }): NameOp, "\_S5_", PackageOp,
    // PkgLength 6, NumElements 4, four ZeroOps (ACPI 20.2).
    t.bytes(&[
        0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00,
    ]);
    t.finish()
}

fn madt(vcpus: u8) -> Vec<u8> {
    let mut t = Table::new(b"APIC", 3);
    t.u32(LAPIC_ADDRESS).u32(1); // PCAT_COMPAT: dual 8259s too
    for id in 0..vcpus {
        // Processor local APIC: UID, APIC ID, enabled.
        t.u8(0).u8(8).u8(id).u8(id).u32(1);
    }
    // I/O APIC: ID, reserved, address, GSI base.
    t.u8(1).u8(12).u8(vcpus).u8(0).u32(IOAPIC_ADDRESS).u32(0);
    // Interrupt source overrides (bus 0 = ISA): IRQ0 to GSI 2, conforming
    // (ISA: edge, active high); the PCI IRQs 5, 9, 10, 11 level, active
    // high, as QEMU's `pc` declares them (9 is the SCI).
    t.u8(2).u8(10).u8(0).u8(0).u32(2).u16(0);
    for irq in [5u8, 9, 10, 11] {
        t.u8(2).u8(10).u8(0).u8(irq).u32(u32::from(irq)).u16(0x000D);
    }
    // Local APIC NMI: every processor (0xFF), conforming, LINT1.
    t.u8(4).u8(6).u8(0xFF).u16(0).u8(1);
    t.finish()
}

fn sdt_of_pointers(signature: &[u8; 4], ptrs: &[u64], wide: bool) -> Vec<u8> {
    let mut t = Table::new(signature, 1);
    for &p in ptrs {
        if wide {
            t.u64(p);
        } else {
            t.u32(p as u32);
        }
    }
    t.finish()
}

fn rsdp(rsdt: u64, xsdt: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(36);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0); // checksum of the first 20 bytes
    r.extend_from_slice(OEM_ID);
    r.push(2); // revision: ACPI 2.0+
    r.extend_from_slice(&(rsdt as u32).to_le_bytes());
    r.extend_from_slice(&36u32.to_le_bytes());
    r.extend_from_slice(&xsdt.to_le_bytes());
    r.push(0); // extended checksum
    r.extend_from_slice(&[0; 3]);
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

/// Builds the tables for `vcpus` vCPUs, to be copied at `base` (the RSDP's
/// address: 64-byte aligned, in the BIOS area, the whole image below 1 MiB).
pub fn build(base: u64, vcpus: u32) -> Result<AcpiImage, String> {
    let n = u8::try_from(vcpus)
        .ok()
        .filter(|&n| n > 0 && n < 0xFF)
        .ok_or_else(|| format!("ACPI tables for {vcpus} vCPUs: the xAPIC allows 1 to 254"))?;
    if !base.is_multiple_of(64) || !BIOS_AREA.contains(&base) {
        return Err(format!(
            "ACPI tables at {base:#x}: the RSDP must be 64-byte aligned in [{:#x}, {:#x})",
            BIOS_AREA.start, BIOS_AREA.end
        ));
    }
    let align = |off: usize, a: usize| off.next_multiple_of(a);
    let facs_off = 0x40;
    let rsdt_off = facs_off + 64;
    let rsdt_len = 36 + 4 * 2;
    let xsdt_off = align(rsdt_off + rsdt_len, 16);
    let xsdt_len = 36 + 8 * 2;
    let fadt_off = align(xsdt_off + xsdt_len, 16);
    let dsdt_off = align(fadt_off + 276, 16);
    let dsdt_bytes = dsdt();
    let madt_off = align(dsdt_off + dsdt_bytes.len(), 16);
    let madt_bytes = madt(n);
    let total = madt_off + madt_bytes.len();
    let at = |off: usize| base + off as u64;
    if at(total) > BIOS_AREA.end {
        return Err(format!(
            "ACPI tables at {base:#x} ({total} bytes) run past 1 MiB"
        ));
    }
    let (facs_gpa, dsdt_gpa, fadt_gpa, madt_gpa) =
        (at(facs_off), at(dsdt_off), at(fadt_off), at(madt_off));
    let (rsdt_gpa, xsdt_gpa) = (at(rsdt_off), at(xsdt_off));
    let mut bytes = alloc::vec![0u8; total];
    let mut put = |off: usize, b: &[u8]| bytes[off..off + b.len()].copy_from_slice(b);
    put(0, &rsdp(rsdt_gpa, xsdt_gpa));
    put(facs_off, &facs());
    put(
        rsdt_off,
        &sdt_of_pointers(b"RSDT", &[fadt_gpa, madt_gpa], false),
    );
    put(
        xsdt_off,
        &sdt_of_pointers(b"XSDT", &[fadt_gpa, madt_gpa], true),
    );
    put(fadt_off, &fadt(facs_gpa, dsdt_gpa));
    put(dsdt_off, &dsdt_bytes);
    put(madt_off, &madt_bytes);
    Ok(AcpiImage {
        base,
        bytes,
        rsdp: base,
        facs: facs_gpa,
        rsdt: rsdt_gpa,
        xsdt: xsdt_gpa,
        fadt: fadt_gpa,
        dsdt: dsdt_gpa,
        madt: madt_gpa,
    })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use acpi::platform::interrupt::{InterruptModel, Polarity, TriggerMode};
    use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
    use core::ptr::NonNull;

    const BASE: u64 = 0xF_0000;

    /// "Physical memory" for the `acpi` crate: the image at its base.
    #[derive(Clone)]
    struct ImageMem {
        base: usize,
        ptr: *const u8,
        len: usize,
    }

    impl AcpiHandler for ImageMem {
        unsafe fn map_physical_region<T>(
            &self,
            phys: usize,
            size: usize,
        ) -> PhysicalMapping<Self, T> {
            assert!(
                phys >= self.base && phys + size <= self.base + self.len,
                "the parser read {phys:#x}+{size:#x}, outside the tables"
            );
            // SAFETY: inside the image, checked above; the image outlives
            // the parse (the test holds it).
            let p = unsafe { self.ptr.add(phys - self.base) } as *mut T;
            // SAFETY: as above; the mapping is exactly the asked range.
            unsafe {
                PhysicalMapping::new(phys, NonNull::new(p).unwrap(), size, size, self.clone())
            }
        }
        fn unmap_physical_region<T>(_: &PhysicalMapping<Self, T>) {}
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
    }

    fn table_at(img: &AcpiImage, gpa: u64) -> &[u8] {
        let off = (gpa - img.base) as usize;
        let len = u32::from_le_bytes(img.bytes[off + 4..off + 8].try_into().unwrap()) as usize;
        &img.bytes[off..off + len]
    }

    #[test]
    fn every_table_is_checksummed() {
        let img = build(BASE, 4).unwrap();
        assert_eq!(sum(&img.bytes[..20]), 0, "RSDP first 20 bytes");
        assert_eq!(sum(&img.bytes[..36]), 0, "RSDP extended");
        assert_eq!(&img.bytes[..8], b"RSD PTR ");
        for (gpa, sig) in [
            (img.rsdt, b"RSDT"),
            (img.xsdt, b"XSDT"),
            (img.fadt, b"FACP"),
            (img.dsdt, b"DSDT"),
            (img.madt, b"APIC"),
        ] {
            let t = table_at(&img, gpa);
            assert_eq!(&t[..4], sig);
            assert_eq!(sum(t), 0, "{}", std::str::from_utf8(sig).unwrap());
            assert_eq!(gpa % 16, 0);
        }
        assert_eq!(img.facs % 64, 0);
        assert_eq!(table_at(&img, img.fadt).len(), 276);
    }

    #[test]
    fn the_acpi_crate_reads_the_machine_back() {
        let img = build(BASE, 3).unwrap();
        let mem = ImageMem {
            base: BASE as usize,
            ptr: img.bytes.as_ptr(),
            len: img.bytes.len(),
        };
        // SAFETY: the handler maps only the image, which lives to the end.
        let tables = unsafe { AcpiTables::from_rsdp(mem, BASE as usize) }.unwrap();
        assert_eq!(tables.revision(), 2);
        let fadt = tables.find_table::<acpi::fadt::Fadt>().unwrap();
        fadt.validate().unwrap();
        let reset = fadt.reset_register().unwrap();
        assert_eq!(reset.address, 0xCF9);
        assert_eq!(fadt.reset_value, 0x06);
        assert_eq!(fadt.pm1a_control_block().unwrap().address, 0x604);
        assert_eq!(fadt.pm1a_event_block().unwrap().address, 0x600);
        assert_eq!(fadt.dsdt_address().unwrap(), img.dsdt as usize);
        let dsdt = tables.dsdt().unwrap();
        assert_eq!(dsdt.length, 13);
        let info = tables.platform_info().unwrap();
        let pm = info.pm_timer.unwrap();
        assert_eq!(pm.base.address, 0x608);
        assert!(!pm.supports_32bit);
        let procs = info.processor_info.unwrap();
        assert_eq!(procs.boot_processor.local_apic_id, 0);
        let aps: std::vec::Vec<u32> = procs
            .application_processors
            .iter()
            .map(|p| p.local_apic_id)
            .collect();
        assert_eq!(aps, [1, 2]);
        let InterruptModel::Apic(apic) = info.interrupt_model else {
            panic!("no APIC interrupt model");
        };
        assert_eq!(apic.local_apic_address, 0xFEE0_0000);
        assert!(apic.also_has_legacy_pics);
        assert_eq!(apic.io_apics.len(), 1);
        assert_eq!(apic.io_apics[0].id, 3);
        assert_eq!(apic.io_apics[0].address, 0xFEC0_0000);
        assert_eq!(apic.io_apics[0].global_system_interrupt_base, 0);
        let isos: std::vec::Vec<_> = apic
            .interrupt_source_overrides
            .iter()
            .map(|o| {
                (
                    o.isa_source,
                    o.global_system_interrupt,
                    o.trigger_mode,
                    o.polarity,
                )
            })
            .collect();
        assert_eq!(isos[0], (0, 2, TriggerMode::SameAsBus, Polarity::SameAsBus));
        assert!(isos.contains(&(9, 9, TriggerMode::Level, Polarity::ActiveHigh)));
        assert_eq!(isos.len(), 5);
        assert_eq!(apic.local_apic_nmi_lines.len(), 1);
    }

    #[test]
    fn bad_placements_and_counts_are_refused() {
        assert!(build(0xF_0010, 1).unwrap_err().contains("64-byte aligned"));
        assert!(build(0xD_0000, 1).is_err());
        assert!(build(0xF_FFC0, 1).unwrap_err().contains("past 1 MiB"));
        assert!(build(BASE, 0).is_err());
        assert!(build(BASE, 255).is_err());
        assert!(build(BASE, 254).is_ok());
    }
}
