//! QEMU's firmware configuration device (fw_cfg), the port-I/O interface of
//! the x86 machines, per QEMU's `docs/specs/fw_cfg.rst`:
//! - 0x510: the selector register (16-bit write) — choosing an item resets
//!   its data offset to 0;
//! - 0x511: the data register (8-bit read): the selected item's next byte,
//!   0 past its end or for an item that does not exist.
//!
//! Items: signature "QEMU" (0x0000), ID (0x0001: bit 0, the traditional
//! interface; bit 1, DMA, is clear: there is no DMA interface at 0x514),
//! UUID (0x0002, zeros), RAM size (0x0003, 64-bit LE), NOGRAPHIC (0x0004),
//! NB_CPUS (0x0005, 16-bit LE), MAX_CPUS (0x000F), BOOT_MENU (0x000E) and
//! the file directory (0x0019: a big-endian count, then per file a
//! big-endian size, selector and reserved word and a 56-byte NUL-terminated
//! name, sorted by name) over the files the VM adds ([`FwCfg::add_file`],
//! selectors from 0x0020). Data writes (deprecated since QEMU 2.4) are
//! ignored; bit 14 of the selector (write channel) is ignored for reads.

use super::BusDevice;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Selector port (the data port is `PORT + 1`).
pub const PORT: u16 = 0x510;
/// Ports the device answers: selector (2 bytes, the data port overlapping
/// its high byte as in QEMU's combined region).
pub const PORT_COUNT: u64 = 2;

pub const SIGNATURE: u16 = 0x0000;
pub const ID: u16 = 0x0001;
pub const UUID: u16 = 0x0002;
pub const RAM_SIZE: u16 = 0x0003;
pub const NOGRAPHIC: u16 = 0x0004;
pub const NB_CPUS: u16 = 0x0005;
pub const BOOT_MENU: u16 = 0x000E;
pub const MAX_CPUS: u16 = 0x000F;
pub const FILE_DIR: u16 = 0x0019;
/// The first file's selector.
pub const FILE_FIRST: u16 = 0x0020;
/// Room for files: QEMU's default `fw_cfg` file slots.
pub const MAX_FILES: usize = 0x20;
/// Longest file name, without its NUL.
pub const NAME_MAX: usize = 55;
/// Selector bit 14: write channel (ignored for reads).
const WRITE_CHANNEL: u16 = 0x4000;

/// Why [`FwCfg::add_file`] refused a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FwCfgError {
    /// The name is empty, longer than 55 bytes or holds a NUL.
    BadName(String),
    /// A file of that name exists.
    Duplicate(String),
    /// All file slots are taken.
    Full,
    /// The contents are 4 GiB or more (the directory's size is 32 bits).
    TooBig(String),
}

impl fmt::Display for FwCfgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FwCfgError::BadName(n) => write!(
                f,
                "fw_cfg file name {n:?} is empty, has a NUL or is longer than {NAME_MAX} bytes"
            ),
            FwCfgError::Duplicate(n) => write!(f, "fw_cfg file {n:?} exists"),
            FwCfgError::Full => write!(f, "fw_cfg has room for {MAX_FILES} files"),
            FwCfgError::TooBig(n) => write!(f, "fw_cfg file {n:?} is 4 GiB or more"),
        }
    }
}

/// The fw_cfg device. See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct FwCfg {
    items: BTreeMap<u16, Vec<u8>>,
    /// (name, selector), in the order added.
    files: Vec<(String, u16)>,
    selector: u16,
    offset: usize,
}

impl FwCfg {
    /// The device of a machine with `ram_bytes` of RAM and `cpus` vCPUs.
    pub fn new(ram_bytes: u64, cpus: u16) -> Self {
        let mut items = BTreeMap::new();
        items.insert(SIGNATURE, b"QEMU".to_vec());
        items.insert(ID, 1u32.to_le_bytes().to_vec());
        items.insert(UUID, alloc::vec![0; 16]);
        items.insert(RAM_SIZE, ram_bytes.to_le_bytes().to_vec());
        items.insert(NOGRAPHIC, 1u16.to_le_bytes().to_vec());
        items.insert(NB_CPUS, cpus.to_le_bytes().to_vec());
        items.insert(MAX_CPUS, cpus.to_le_bytes().to_vec());
        items.insert(BOOT_MENU, 0u16.to_le_bytes().to_vec());
        let mut f = FwCfg {
            items,
            files: Vec::new(),
            selector: 0,
            offset: 0,
        };
        f.rebuild_dir();
        f
    }

    /// Adds file `name` (e.g. "etc/...") with `data`; returns its selector.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<u16, FwCfgError> {
        if name.is_empty() || name.len() > NAME_MAX || name.contains('\0') {
            return Err(FwCfgError::BadName(name.into()));
        }
        if self.files.iter().any(|(n, _)| n == name) {
            return Err(FwCfgError::Duplicate(name.into()));
        }
        if self.files.len() >= MAX_FILES {
            return Err(FwCfgError::Full);
        }
        if u32::try_from(data.len()).is_err() {
            return Err(FwCfgError::TooBig(name.into()));
        }
        let sel = FILE_FIRST + self.files.len() as u16;
        self.files.push((name.into(), sel));
        self.items.insert(sel, data);
        self.rebuild_dir();
        Ok(sel)
    }

    fn rebuild_dir(&mut self) {
        let mut files: Vec<&(String, u16)> = self.files.iter().collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let mut dir = (files.len() as u32).to_be_bytes().to_vec();
        for (name, sel) in files {
            let size = self.items.get(sel).map_or(0, |d| d.len()) as u32;
            dir.extend_from_slice(&size.to_be_bytes());
            dir.extend_from_slice(&sel.to_be_bytes());
            dir.extend_from_slice(&0u16.to_be_bytes());
            let mut n = [0u8; 56];
            n[..name.len()].copy_from_slice(name.as_bytes());
            dir.extend_from_slice(&n);
        }
        self.items.insert(FILE_DIR, dir);
    }

    /// Selects item `selector` (a write to the selector register).
    pub fn select(&mut self, selector: u16) {
        self.selector = selector & !WRITE_CHANNEL;
        self.offset = 0;
    }

    /// The next byte of the selected item (a read of the data register).
    pub fn read_data(&mut self) -> u8 {
        let b = self
            .items
            .get(&self.selector)
            .and_then(|d| d.get(self.offset).copied());
        match b {
            Some(b) => {
                self.offset += 1;
                b
            }
            None => 0,
        }
    }
}

impl BusDevice for FwCfg {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            // The data register (8-bit; QEMU's combined region answers a
            // byte read at either port with data).
            (_, 1) => data[0] = self.read_data(),
            // The selector is write-only.
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.len() == 2 {
            self.select(u16::from_le_bytes([data[0], data[1]]));
        }
        // Byte writes are data writes: deprecated, ignored.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_item(f: &mut FwCfg, sel: u16, n: usize) -> Vec<u8> {
        f.write(0, &sel.to_le_bytes());
        (0..n)
            .map(|_| {
                let mut b = [0u8];
                f.read(1, &mut b);
                b[0]
            })
            .collect()
    }

    #[test]
    fn signature_id_cpus_ram() {
        let mut f = FwCfg::new(128 << 20, 4);
        assert_eq!(read_item(&mut f, SIGNATURE, 4), b"QEMU");
        assert_eq!(read_item(&mut f, ID, 4), [1, 0, 0, 0], "no DMA");
        assert_eq!(read_item(&mut f, NB_CPUS, 2), [4, 0]);
        assert_eq!(read_item(&mut f, RAM_SIZE, 8), (128u64 << 20).to_le_bytes());
        // Past the end and unknown keys read 0.
        assert_eq!(read_item(&mut f, SIGNATURE, 6), b"QEMU\0\0");
        assert_eq!(read_item(&mut f, 0x1234, 3), [0, 0, 0]);
        assert_eq!(read_item(&mut f, 0x8003, 2), [0, 0]);
        // Reselecting starts over; bit 14 is ignored.
        assert_eq!(read_item(&mut f, SIGNATURE | 0x4000, 2), b"QE");
    }

    #[test]
    fn file_directory_is_big_endian_and_sorted() {
        let mut f = FwCfg::new(1 << 20, 1);
        assert_eq!(read_item(&mut f, FILE_DIR, 4), [0, 0, 0, 0]);
        assert_eq!(f.add_file("etc/zz", b"hello".to_vec()), Ok(0x20));
        assert_eq!(f.add_file("etc/aa", b"x".to_vec()), Ok(0x21));
        let dir = read_item(&mut f, FILE_DIR, 4 + 2 * 64);
        assert_eq!(&dir[..4], [0, 0, 0, 2]);
        let e0 = &dir[4..68];
        assert_eq!(&e0[..8], [0, 0, 0, 1, 0, 0x21, 0, 0]);
        assert_eq!(&e0[8..15], b"etc/aa\0");
        let e1 = &dir[68..132];
        assert_eq!(&e1[..8], [0, 0, 0, 5, 0, 0x20, 0, 0]);
        assert_eq!(&e1[8..15], b"etc/zz\0");
        assert_eq!(read_item(&mut f, 0x20, 5), b"hello");
    }

    #[test]
    fn bad_files_are_refused() {
        let mut f = FwCfg::new(1 << 20, 1);
        let long = "x".repeat(56);
        assert!(matches!(
            f.add_file(&long, Vec::new()),
            Err(FwCfgError::BadName(_))
        ));
        assert!(matches!(
            f.add_file("", Vec::new()),
            Err(FwCfgError::BadName(_))
        ));
        f.add_file(&"y".repeat(55), Vec::new()).unwrap();
        assert!(matches!(
            f.add_file(&"y".repeat(55), Vec::new()),
            Err(FwCfgError::Duplicate(_))
        ));
        for i in 1..MAX_FILES {
            f.add_file(&alloc::format!("f{i}"), Vec::new()).unwrap();
        }
        assert_eq!(f.add_file("one more", Vec::new()), Err(FwCfgError::Full));
    }

    #[test]
    fn selector_reads_zero_and_other_writes_are_ignored() {
        let mut f = FwCfg::new(1 << 20, 1);
        let mut w = [0xFFu8; 2];
        f.read(0, &mut w);
        assert_eq!(w, [0, 0]);
        f.write(0, &[1]); // a data write: ignored
        assert_eq!(read_item(&mut f, SIGNATURE, 1), b"Q");
    }
}
