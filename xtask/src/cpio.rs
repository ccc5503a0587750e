//! A cpio "newc" archive writer: the format of a Linux initramfs
//! (Documentation/driver-api/early-userspace/buffer-format.rst).
//!
//! Each entry is a 110-byte ASCII header (`070701` and thirteen 8-digit
//! hex fields), the name with its NUL, padding to a multiple of 4, the
//! data, padding to a multiple of 4. The archive ends with an entry named
//! `TRAILER!!!`. Entries are written in order, so the kernel (which does not
//! create parent folders) needs every folder before what it holds: the
//! writer checks that, and every other rule it can, when an entry is added.

use anyhow::{bail, Result};
use std::collections::BTreeSet;

const MAGIC: &str = "070701";
const HEADER_LEN: usize = 110;
pub const TRAILER: &str = "TRAILER!!!";

// File types of the mode field (stat(2)).
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFLNK: u32 = 0o120_000;

/// A newc archive being written. Every entry gets its own inode number and
/// owner 0:0; the modification time is 0, so the same entries always give
/// the same bytes.
#[derive(Default)]
pub struct Archive {
    buf: Vec<u8>,
    next_ino: u32,
    /// Folders added so far (and the root, ""): parents must come first.
    dirs: BTreeSet<String>,
    names: BTreeSet<String>,
}

/// The fields of one header that vary between entries.
struct Entry<'a> {
    name: &'a str,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    data: &'a [u8],
}

fn pad4(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks a name: relative, `/`-separated, no empty, `.` or `..`
    /// component, no NUL, not added before, its folder already added.
    fn check_name(&self, name: &str) -> Result<()> {
        if name.is_empty() || name.starts_with('/') || name.ends_with('/') {
            bail!("cpio: {name:?}: a name is a relative path like \"bin/sh\"");
        }
        if name.contains('\0') {
            bail!("cpio: {name:?}: a name holds no NUL character");
        }
        if name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            bail!("cpio: {name:?}: empty, \".\" or \"..\" path component");
        }
        if name == TRAILER {
            bail!("cpio: {TRAILER:?} is the end marker, not a name");
        }
        if self.names.contains(name) {
            bail!("cpio: {name:?} is already in the archive");
        }
        let parent = name.rsplit_once('/').map_or("", |(p, _)| p);
        if !parent.is_empty() && !self.dirs.contains(parent) {
            bail!("cpio: {name:?}: its folder {parent:?} must be added before it");
        }
        Ok(())
    }

    fn check_perm(name: &str, perm: u32) -> Result<()> {
        if perm > 0o7777 {
            bail!("cpio: {name:?}: mode {perm:#o} has bits beyond the permissions (0o7777)");
        }
        Ok(())
    }

    fn push(&mut self, e: &Entry) -> Result<()> {
        let size = u32::try_from(e.data.len()).map_err(|_| {
            anyhow::anyhow!("cpio: {:?}: newc holds at most 4 GiB - 1 per file", e.name)
        })?;
        let ino = if e.name == TRAILER {
            0
        } else {
            self.next_ino += 1;
            self.next_ino
        };
        let fields = [
            ino,
            e.mode,
            0, // uid
            0, // gid
            e.nlink,
            0, // mtime
            size,
            0, // devmajor
            0, // devminor
            e.rdev.0,
            e.rdev.1,
            // namesize counts the NUL.
            e.name.len() as u32 + 1,
            0, // check: 0 in newc (070701)
        ];
        let start = self.buf.len();
        self.buf.extend_from_slice(MAGIC.as_bytes());
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        debug_assert_eq!(self.buf.len() - start, HEADER_LEN);
        self.buf.extend_from_slice(e.name.as_bytes());
        self.buf.push(0);
        pad4(&mut self.buf);
        self.buf.extend_from_slice(e.data);
        pad4(&mut self.buf);
        Ok(())
    }

    fn add(&mut self, e: Entry) -> Result<()> {
        self.check_name(e.name)?;
        self.push(&e)?;
        self.names.insert(e.name.to_string());
        Ok(())
    }

    /// A folder (`perm` e.g. 0o755).
    pub fn dir(&mut self, name: &str, perm: u32) -> Result<()> {
        Self::check_perm(name, perm)?;
        self.add(Entry {
            name,
            mode: S_IFDIR | perm,
            nlink: 2,
            rdev: (0, 0),
            data: &[],
        })?;
        self.dirs.insert(name.to_string());
        Ok(())
    }

    /// A regular file.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> Result<()> {
        Self::check_perm(name, perm)?;
        self.add(Entry {
            name,
            mode: S_IFREG | perm,
            nlink: 1,
            rdev: (0, 0),
            data,
        })
    }

    /// A character device node (e.g. /dev/console is 5:1).
    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> Result<()> {
        Self::check_perm(name, perm)?;
        self.add(Entry {
            name,
            mode: S_IFCHR | perm,
            nlink: 1,
            rdev: (major, minor),
            data: &[],
        })
    }

    /// A symbolic link: its data is the target, without a NUL.
    pub fn symlink(&mut self, name: &str, target: &str) -> Result<()> {
        if target.is_empty() || target.contains('\0') {
            bail!("cpio: {name:?}: a link target is non-empty and holds no NUL");
        }
        self.add(Entry {
            name,
            mode: S_IFLNK | 0o777,
            nlink: 1,
            rdev: (0, 0),
            data: target.as_bytes(),
        })
    }

    /// The archive, ended by its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.push(&Entry {
            name: TRAILER,
            mode: 0,
            nlink: 1,
            rdev: (0, 0),
            data: &[],
        })
        .expect("the trailer has no data");
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One entry read back: (name, mode, nlink, rdev, data), and the offset
    /// of the next entry. Written from the format description, independent
    /// of the writer.
    type Parsed = (String, u32, u32, (u32, u32), Vec<u8>);

    fn parse(a: &[u8]) -> Vec<Parsed> {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            assert_eq!(at % 4, 0, "entry at {at} is not 4-aligned");
            assert_eq!(&a[at..at + 6], b"070701", "magic at {at}");
            let field = |i: usize| {
                let s = std::str::from_utf8(&a[at + 6 + 8 * i..at + 14 + 8 * i]).unwrap();
                assert!(s.chars().all(|c| c.is_ascii_hexdigit()), "{s:?}");
                u32::from_str_radix(s, 16).unwrap()
            };
            let (mode, nlink, size) = (field(1), field(4), field(6) as usize);
            let (rdev, namesize) = ((field(9), field(10)), field(11) as usize);
            assert_eq!(field(12), 0, "check field");
            let name_at = at + 110;
            assert_eq!(a[name_at + namesize - 1], 0, "name NUL");
            let name = std::str::from_utf8(&a[name_at..name_at + namesize - 1])
                .unwrap()
                .to_string();
            let data_at = (name_at + namesize).next_multiple_of(4);
            assert!(a[name_at + namesize..data_at].iter().all(|&b| b == 0));
            let data = a[data_at..data_at + size].to_vec();
            let next = (data_at + size).next_multiple_of(4);
            assert!(a[data_at + size..next].iter().all(|&b| b == 0));
            at = next;
            let end = name == TRAILER;
            out.push((name, mode, nlink, rdev, data));
            if end {
                assert_eq!(at, a.len(), "bytes after the trailer");
                return out;
            }
        }
    }

    #[test]
    fn header_is_byte_exact() {
        let mut a = Archive::new();
        a.file("init", 0o755, b"hi\n").unwrap();
        let b = a.finish();
        // 110-byte header, "init\0" (5) padded to 116, "hi\n" padded to 120.
        let want_header = "070701\
            00000001\
            000081ED\
            00000000\
            00000000\
            00000001\
            00000000\
            00000003\
            00000000\
            00000000\
            00000000\
            00000000\
            00000005\
            00000000";
        assert_eq!(&b[..110], want_header.as_bytes());
        assert_eq!(&b[110..116], b"init\0\0");
        assert_eq!(&b[116..120], b"hi\n\0");
        // The trailer: inode 0, nlink 1, "TRAILER!!!\0" (11) padded to 124.
        assert_eq!(&b[120..126], b"070701");
        assert_eq!(&b[230..241], b"TRAILER!!!\0");
        assert_eq!(b.len(), 120 + 110 + 11 + 3);
        assert_eq!(b.len() % 4, 0);
    }

    #[test]
    fn every_entry_kind_reads_back_padded() {
        let mut a = Archive::new();
        a.dir("dev", 0o755).unwrap();
        a.char_dev("dev/console", 0o600, 5, 1).unwrap();
        a.dir("bin", 0o755).unwrap();
        a.symlink("bin/sh", "busybox").unwrap();
        // Names and data of every length modulo 4.
        for n in 1..=8 {
            a.file(&"x".repeat(n), 0o644, &vec![n as u8; n]).unwrap();
        }
        let b = a.finish();
        let e = parse(&b);
        assert_eq!(e.len(), 4 + 8 + 1);
        assert_eq!(e[0].0, "dev");
        assert_eq!((e[0].1, e[0].2), (0o040_755, 2));
        assert_eq!((e[1].1, e[1].3), (0o020_600, (5, 1)));
        assert_eq!((e[3].1, e[3].4.as_slice()), (0o120_777, &b"busybox"[..]));
        for (n, x) in e[4..12].iter().enumerate() {
            assert_eq!(x.0, "x".repeat(n + 1));
            assert_eq!(x.4, vec![(n + 1) as u8; n + 1]);
        }
        assert_eq!(e.last().unwrap().0, TRAILER);
        // Inodes are distinct (walk the headers again for their ino field).
        let mut at = 0;
        let mut seen = BTreeSet::new();
        for x in &e[..e.len() - 1] {
            let ino = std::str::from_utf8(&b[at + 6..at + 14])
                .unwrap()
                .to_string();
            assert!(seen.insert(ino), "{}", x.0);
            let namesize = x.0.len() + 1;
            at = ((at + 110 + namesize).next_multiple_of(4) + x.4.len()).next_multiple_of(4);
        }
    }

    #[test]
    fn the_same_entries_give_the_same_bytes() {
        let make = || {
            let mut a = Archive::new();
            a.dir("tmp", 0o1777).unwrap();
            a.file("init", 0o755, b"#!/bin/sh\n").unwrap();
            a.finish()
        };
        assert_eq!(make(), make());
    }

    #[test]
    fn bad_entries_are_refused_with_a_reason() {
        let mut a = Archive::new();
        a.dir("bin", 0o755).unwrap();
        for (name, says) in [
            ("", "relative path"),
            ("/init", "relative path"),
            ("bin/", "relative path"),
            ("bin//sh", "path component"),
            ("bin/../init", "path component"),
            ("./init", "path component"),
            ("a\0b", "NUL"),
            ("TRAILER!!!", "end marker"),
            ("bin", "already in the archive"),
            ("usr/bin/env", "folder \"usr/bin\" must be added before it"),
        ] {
            let e = a.file(name, 0o644, b"").unwrap_err().to_string();
            assert!(e.contains(says), "{name:?}: {e}");
        }
        let e = a.file("bin/x", 0o100_644, b"").unwrap_err().to_string();
        assert!(e.contains("beyond the permissions"), "{e}");
        let e = a.symlink("bin/sh", "").unwrap_err().to_string();
        assert!(e.contains("link target"), "{e}");
        // Nothing refused was written.
        let e = parse(&a.finish());
        assert_eq!(e.len(), 2);
    }
}
