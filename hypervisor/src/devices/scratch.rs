//! A page of plain read/write memory behind the MMIO bus: what a guest
//! writes at an offset it reads back. For the tests of MMIO instruction
//! emulation (the `mmio` guest program), which need a device whose every
//! byte has a known value.

use super::BusDevice;
use alloc::vec;
use alloc::vec::Vec;

/// Where the `mmio` test guest finds it (the guest program has the same
/// constant): a page in the PC's PCI hole that no PC device uses.
pub const SCRATCH_BASE: u64 = 0xfeb0_0000;
/// One page.
pub const SCRATCH_LEN: u64 = 0x1000;

pub struct Scratch {
    bytes: Vec<u8>,
}

impl Scratch {
    /// Every byte 0.
    pub fn new() -> Self {
        Scratch {
            bytes: vec![0; SCRATCH_LEN as usize],
        }
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

impl BusDevice for Scratch {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let o = offset as usize;
        data.copy_from_slice(&self.bytes[o..o + data.len()]);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        let o = offset as usize;
        self.bytes[o..o + data.len()].copy_from_slice(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::MmioBus;
    use alloc::sync::Arc;
    use spin::Mutex;

    #[test]
    fn reads_back_what_was_written_at_each_width() {
        let mut bus = MmioBus::new();
        bus.insert(
            SCRATCH_BASE,
            SCRATCH_LEN,
            Arc::new(Mutex::new(Scratch::new())),
        )
        .unwrap();
        let mut b = [0xffu8; 8];
        assert!(bus.read(SCRATCH_BASE + 8, &mut b));
        assert_eq!(b, [0; 8], "starts zeroed");
        assert!(bus.write(SCRATCH_BASE + 8, &[1, 2, 3, 4, 5, 6, 7, 8]));
        assert!(bus.write(SCRATCH_BASE + 9, &[0xaa]));
        let mut w = [0u8; 2];
        bus.read(SCRATCH_BASE + 8, &mut w);
        assert_eq!(w, [1, 0xaa]);
        bus.read(SCRATCH_BASE + 8, &mut b);
        assert_eq!(b, [1, 0xaa, 3, 4, 5, 6, 7, 8]);
        // The last bytes of the page.
        assert!(bus.write(SCRATCH_BASE + 0xffc, &[9; 4]));
        assert!(
            !bus.write(SCRATCH_BASE + 0xffd, &[9; 4]),
            "runs past the page"
        );
    }
}
