//! What kind of kernel a `--kernel` file is. Pure.
//!
//! Checked in this order:
//! 1. a multiboot v1 header (magic 0x1BADB002, 4-byte aligned, within the
//!    first 8 KiB, checksum) → [`KernelFormat::Multiboot`];
//! 2. a Linux boot protocol setup header ("HdrS" at 0x202 and the boot
//!    sector's 0xAA55 at 0x1FE) → [`KernelFormat::LinuxBzImage`], whose
//!    header `boot::linux` checks;
//! 3. an ELF with a `XEN_ELFNOTE_PHYS32_ENTRY` note → [`KernelFormat::Pvh`]
//!    (an uncompressed Linux `vmlinux`, booted by the PVH ABI);
//! 4. anything else is refused, saying what was checked.

use crate::boot::multiboot::{self, Header, Scan};
use core::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    Multiboot(Header),
    /// A Linux bzImage (boot protocol version from the header).
    LinuxBzImage {
        version: u16,
    },
    /// An ELF kernel with a PVH entry note: its 32-bit entry point.
    Pvh {
        entry: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatError {
    Empty,
    /// Nothing recognised. `bad_checksum`: a multiboot magic was found at
    /// this offset but its checksum was wrong. `elf`: the file is an ELF.
    Unknown {
        len: usize,
        bad_checksum: Option<usize>,
        elf: bool,
    },
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FormatError::Empty => f.write_str("the kernel file is empty"),
            FormatError::Unknown {
                len,
                bad_checksum,
                elf,
            } => {
                write!(
                    f,
                    "not a kernel this hypervisor boots: no multiboot header in the first 8 KiB \
                     (magic 0x1BADB002 at a 4-byte-aligned offset with a valid checksum) and no \
                     Linux setup header at 0x202 (\"HdrS\" with 0xAA55 at 0x1FE); the file has \
                     {len} bytes"
                )?;
                if let Some(o) = bad_checksum {
                    write!(
                        f,
                        "; a multiboot magic at offset {o:#x} has a wrong checksum"
                    )?;
                }
                if elf {
                    f.write_str(
                        "; it is an ELF file without a PVH entry note \
                         (XEN_ELFNOTE_PHYS32_ENTRY), and ELF alone is not a boot protocol",
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// The Linux setup header's place (Documentation/arch/x86/boot.rst).
const BOOT_FLAG: usize = 0x1fe;
const HDRS: usize = 0x202;
const VERSION: usize = 0x206;

pub fn detect(image: &[u8]) -> Result<KernelFormat, FormatError> {
    if image.is_empty() {
        return Err(FormatError::Empty);
    }
    let bad_checksum = match multiboot::scan(image) {
        Scan::Found(h) => return Ok(KernelFormat::Multiboot(h)),
        Scan::BadChecksum { offset } => Some(offset),
        Scan::None => None,
    };
    if image.get(BOOT_FLAG..BOOT_FLAG + 2) == Some(&[0x55, 0xaa])
        && image.get(HDRS..HDRS + 4) == Some(b"HdrS")
    {
        let version = image
            .get(VERSION..VERSION + 2)
            .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
        return Ok(KernelFormat::LinuxBzImage { version });
    }
    if let Some(entry) = crate::boot::pvh::entry_note(image) {
        return Ok(KernelFormat::Pvh { entry });
    }
    Err(FormatError::Unknown {
        len: image.len(),
        bad_checksum,
        elf: image.starts_with(b"\x7fELF"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn recognises_multiboot_and_linux_and_says_what_else_was_checked() {
        let mut mb = vec![0u8; 64];
        let flags = 0u32;
        mb[16..20].copy_from_slice(&multiboot::HEADER_MAGIC.to_le_bytes());
        mb[24..28].copy_from_slice(
            &0u32
                .wrapping_sub(multiboot::HEADER_MAGIC)
                .wrapping_sub(flags)
                .to_le_bytes(),
        );
        assert!(matches!(detect(&mb), Ok(KernelFormat::Multiboot(h)) if h.offset == 16));

        let mut linux = vec![0u8; 0x400];
        linux[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
        linux[0x202..0x206].copy_from_slice(b"HdrS");
        linux[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        assert_eq!(
            detect(&linux),
            Ok(KernelFormat::LinuxBzImage { version: 0x20f })
        );
        // Without the boot sector's 0xAA55 it is not a setup header.
        linux[0x1fe] = 0;
        assert!(matches!(detect(&linux), Err(FormatError::Unknown { .. })));

        let e = detect(b"#!/bin/sh\necho not a kernel\n").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("no multiboot header in the first 8 KiB"),
            "{text}"
        );
        assert!(text.contains("0x202"), "{text}");

        let mut elf = vec![0u8; 128];
        elf[..4].copy_from_slice(b"\x7fELF");
        assert!(detect(&elf).unwrap_err().to_string().contains("ELF file"));

        mb[24] ^= 1;
        assert!(detect(&mb)
            .unwrap_err()
            .to_string()
            .contains("offset 0x10 has a wrong checksum"));
        assert_eq!(detect(&[]), Err(FormatError::Empty));
    }
}
