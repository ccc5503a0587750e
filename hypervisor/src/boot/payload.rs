//! The payload the loader puts in the bootloader's ramdisk: a run configuration
//! and one guest ELF.
//!
//! Layout (little endian):
//! ```text
//! 0   8  magic  "HVPAYLD1"
//! 8   4  config length C
//! 12  4  guest length G
//! 16  C  configuration, UTF-8 lines "key=value"
//! ..  G  guest ELF
//! ```
//! Both the loader (encode) and the hypervisor (parse) use this module, so the
//! format has one definition.

pub const MAGIC: &[u8; 8] = b"HVPAYLD1";
const HEADER: usize = 16;

/// A payload as found in memory: borrowed configuration text and guest image.
#[derive(Debug, Clone, Copy)]
pub struct Payload<'a> {
    pub config: &'a str,
    pub guest: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadError {
    TooShort,
    BadMagic,
    Truncated,
    ConfigNotUtf8,
}

impl core::fmt::Display for PayloadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            PayloadError::TooShort => "payload shorter than its header",
            PayloadError::BadMagic => "payload magic is not HVPAYLD1",
            PayloadError::Truncated => "payload lengths run past its end",
            PayloadError::ConfigNotUtf8 => "payload configuration is not UTF-8",
        })
    }
}

impl core::error::Error for PayloadError {}

fn le32(b: &[u8]) -> usize {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
}

/// Parses a payload. Every length is checked against the buffer.
pub fn parse(bytes: &[u8]) -> Result<Payload<'_>, PayloadError> {
    if bytes.len() < HEADER {
        return Err(PayloadError::TooShort);
    }
    if &bytes[..8] != MAGIC {
        return Err(PayloadError::BadMagic);
    }
    let clen = le32(&bytes[8..12]);
    let glen = le32(&bytes[12..16]);
    let cend = HEADER.checked_add(clen).ok_or(PayloadError::Truncated)?;
    let gend = cend.checked_add(glen).ok_or(PayloadError::Truncated)?;
    if gend > bytes.len() {
        return Err(PayloadError::Truncated);
    }
    let config =
        core::str::from_utf8(&bytes[HEADER..cend]).map_err(|_| PayloadError::ConfigNotUtf8)?;
    Ok(Payload {
        config,
        guest: &bytes[cend..gend],
    })
}

/// Writes a payload into `out` (host side, used by the loader).
pub fn encode_into(config: &str, guest: &[u8], out: &mut impl Extend<u8>) {
    out.extend(MAGIC.iter().copied());
    out.extend((config.len() as u32).to_le_bytes());
    out.extend((guest.len() as u32).to_le_bytes());
    out.extend(config.bytes());
    out.extend(guest.iter().copied());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut v = Vec::new();
        encode_into("guest=smoke\nmem_mib=4\n", b"\x7fELFabc", &mut v);
        let p = parse(&v).unwrap();
        assert_eq!(p.config, "guest=smoke\nmem_mib=4\n");
        assert_eq!(p.guest, b"\x7fELFabc");
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(parse(b"short").unwrap_err(), PayloadError::TooShort);
        assert_eq!(
            parse(b"XXXXXXXX\0\0\0\0\0\0\0\0").unwrap_err(),
            PayloadError::BadMagic
        );
        let mut v = Vec::new();
        encode_into("a=b", b"elf", &mut v);
        v.truncate(v.len() - 1);
        assert_eq!(parse(&v).unwrap_err(), PayloadError::Truncated);
        let mut v = Vec::new();
        encode_into("a=b", b"", &mut v);
        v[16] = 0xff;
        assert_eq!(parse(&v).unwrap_err(), PayloadError::ConfigNotUtf8);
        // Lengths near u32::MAX must not overflow.
        let mut v = Vec::from(&MAGIC[..]);
        v.extend(u32::MAX.to_le_bytes());
        v.extend(u32::MAX.to_le_bytes());
        assert_eq!(parse(&v).unwrap_err(), PayloadError::Truncated);
    }
}
