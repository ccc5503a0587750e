//! The payload the loader puts in the bootloader's ramdisk: a run
//! configuration and what the guest runs — one of the project's own guest
//! ELFs (`--guest`), or a kernel file (`--kernel`) with its command line
//! and an initrd (`--initrd`).
//!
//! Layout (little endian), version 2:
//! ```text
//! 0   8  magic  "HVPAYLD2"
//! 8   4  config length C
//! 12  4  guest length G    (0 in a kernel run)
//! 16  4  kernel length K   (0 in a --guest run)
//! 20  4  cmdline length L
//! 24  4  initrd length I
//! 28  C  configuration, UTF-8 lines "key=value"
//! ..  G  guest ELF
//! ..  K  kernel file
//! ..  L  kernel command line, UTF-8 without NUL
//! ..  I  initrd file
//! ```
//! Exactly one of G and K is non-zero. Both the loader (encode) and the
//! hypervisor (parse) use this module, so the format has one definition.

pub const MAGIC: &[u8; 8] = b"HVPAYLD2";
/// Version 1's magic (no kernel fields), refused with a clear message.
const MAGIC_V1: &[u8; 8] = b"HVPAYLD1";
const HEADER: usize = 28;

/// A payload as found in memory: borrowed configuration text and images.
#[derive(Debug, Clone, Copy, Default)]
pub struct Payload<'a> {
    pub config: &'a str,
    /// A native guest ELF (`--guest`); empty in a kernel run.
    pub guest: &'a [u8],
    /// A kernel file (`--kernel`); empty in a native run.
    pub kernel: &'a [u8],
    pub cmdline: &'a str,
    /// The `--initrd` file; empty when none was given.
    pub initrd: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadError {
    TooShort,
    BadMagic,
    OldVersion,
    Truncated,
    ConfigNotUtf8,
    CmdlineNotText,
    /// Neither or both of guest and kernel.
    GuestXorKernel,
    /// A command line or initrd without a kernel.
    KernelPartsWithoutKernel,
}

impl core::fmt::Display for PayloadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            PayloadError::TooShort => "payload shorter than its header",
            PayloadError::BadMagic => "payload magic is not HVPAYLD2",
            PayloadError::OldVersion => {
                "payload is version 1 (HVPAYLD1); this hypervisor reads version 2: rebuild the image"
            }
            PayloadError::Truncated => "payload lengths run past its end",
            PayloadError::ConfigNotUtf8 => "payload configuration is not UTF-8",
            PayloadError::CmdlineNotText => "kernel command line is not UTF-8 text without NUL",
            PayloadError::GuestXorKernel => "payload must hold exactly one of a guest and a kernel",
            PayloadError::KernelPartsWithoutKernel => {
                "payload has a command line or initrd but no kernel"
            }
        })
    }
}

impl core::error::Error for PayloadError {}

fn le32(b: &[u8]) -> usize {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
}

/// Parses a payload. Every length is checked against the buffer.
pub fn parse(bytes: &[u8]) -> Result<Payload<'_>, PayloadError> {
    if bytes.len() >= 8 && &bytes[..8] == MAGIC_V1 {
        return Err(PayloadError::OldVersion);
    }
    if bytes.len() < HEADER {
        return Err(PayloadError::TooShort);
    }
    if &bytes[..8] != MAGIC {
        return Err(PayloadError::BadMagic);
    }
    let mut at = HEADER;
    let mut parts = [&bytes[..0]; 5];
    for (i, part) in parts.iter_mut().enumerate() {
        let len = le32(&bytes[8 + 4 * i..]);
        let end = at.checked_add(len).ok_or(PayloadError::Truncated)?;
        *part = bytes.get(at..end).ok_or(PayloadError::Truncated)?;
        at = end;
    }
    let [config, guest, kernel, cmdline, initrd] = parts;
    let config = core::str::from_utf8(config).map_err(|_| PayloadError::ConfigNotUtf8)?;
    let cmdline = core::str::from_utf8(cmdline)
        .ok()
        .filter(|s| !s.contains('\0'))
        .ok_or(PayloadError::CmdlineNotText)?;
    if guest.is_empty() == kernel.is_empty() {
        return Err(PayloadError::GuestXorKernel);
    }
    if kernel.is_empty() && !(cmdline.is_empty() && initrd.is_empty()) {
        return Err(PayloadError::KernelPartsWithoutKernel);
    }
    Ok(Payload {
        config,
        guest,
        kernel,
        cmdline,
        initrd,
    })
}

/// Writes a payload into `out` (host side, used by the loader). Lengths
/// must fit in 32 bits (the loader checks them first).
pub fn encode_into(p: &Payload, out: &mut impl Extend<u8>) {
    let parts: [&[u8]; 5] = [
        p.config.as_bytes(),
        p.guest,
        p.kernel,
        p.cmdline.as_bytes(),
        p.initrd,
    ];
    out.extend(MAGIC.iter().copied());
    for part in parts {
        out.extend((part.len() as u32).to_le_bytes());
    }
    for part in parts {
        out.extend(part.iter().copied());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(p: &Payload) -> Vec<u8> {
        let mut v = Vec::new();
        encode_into(p, &mut v);
        v
    }

    #[test]
    fn round_trip() {
        let v = enc(&Payload {
            config: "guest=smoke\nmem_mib=4\n",
            guest: b"\x7fELFabc",
            ..Payload::default()
        });
        let p = parse(&v).unwrap();
        assert_eq!(p.config, "guest=smoke\nmem_mib=4\n");
        assert_eq!(p.guest, b"\x7fELFabc");
        assert!(p.kernel.is_empty() && p.initrd.is_empty() && p.cmdline.is_empty());
        let v = enc(&Payload {
            config: "a=b",
            kernel: b"kernel",
            cmdline: "some words",
            initrd: b"initrd",
            ..Payload::default()
        });
        let p = parse(&v).unwrap();
        assert_eq!(
            (p.guest, p.kernel, p.cmdline, p.initrd),
            (&b""[..], &b"kernel"[..], "some words", &b"initrd"[..])
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(parse(b"short").unwrap_err(), PayloadError::TooShort);
        assert_eq!(parse(&[b'X'; 28]).unwrap_err(), PayloadError::BadMagic);
        assert_eq!(
            parse(b"HVPAYLD1\0\0\0\0\0\0\0\0").unwrap_err(),
            PayloadError::OldVersion
        );
        let good = Payload {
            config: "a=b",
            guest: b"elf",
            ..Payload::default()
        };
        let mut v = enc(&good);
        v.truncate(v.len() - 1);
        assert_eq!(parse(&v).unwrap_err(), PayloadError::Truncated);
        let mut v = enc(&good);
        v[HEADER] = 0xff;
        assert_eq!(parse(&v).unwrap_err(), PayloadError::ConfigNotUtf8);
        // Lengths near u32::MAX must not overflow.
        let mut v = Vec::from(&MAGIC[..]);
        for _ in 0..5 {
            v.extend(u32::MAX.to_le_bytes());
        }
        assert_eq!(parse(&v).unwrap_err(), PayloadError::Truncated);
        let v = enc(&Payload {
            config: "",
            ..Payload::default()
        });
        assert_eq!(parse(&v).unwrap_err(), PayloadError::GuestXorKernel);
        let v = enc(&Payload {
            kernel: b"k",
            ..good
        });
        assert_eq!(parse(&v).unwrap_err(), PayloadError::GuestXorKernel);
        let v = enc(&Payload {
            initrd: b"i",
            ..good
        });
        assert_eq!(
            parse(&v).unwrap_err(),
            PayloadError::KernelPartsWithoutKernel
        );
        let v = enc(&Payload {
            guest: b"",
            kernel: b"k",
            cmdline: "a\0b",
            ..good
        });
        assert_eq!(parse(&v).unwrap_err(), PayloadError::CmdlineNotText);
    }
}
