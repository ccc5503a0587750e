//! QEMU's isa-debug-exit device, as `-device isa-debug-exit` configures it
//! by default (`iobase=0xf4,iosize=0x04`): a write of value `v` (any size,
//! anywhere in the four ports) ends the machine. QEMU's own process then
//! exits with status `(v << 1) | 1`; this hypervisor reports the guest's
//! `v` itself as the guest exit code ([`PlatformEvents::request_exit`]).
//! Reads return 0, as QEMU's.

use super::{BusDevice, PlatformEvents};
use alloc::sync::Arc;

/// QEMU's default iobase.
pub const PORT: u16 = 0xF4;
/// QEMU's default iosize.
pub const PORT_COUNT: u64 = 4;

/// See the [module documentation](self).
pub struct DebugExit {
    events: Arc<PlatformEvents>,
}

impl DebugExit {
    pub fn new(events: Arc<PlatformEvents>) -> Self {
        DebugExit { events }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let mut v = [0u8; 4];
        let n = data.len().min(4);
        v[..n].copy_from_slice(&data[..n]);
        self.events.request_exit(u32::from_le_bytes(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::{PioBus, PlatformEvent};
    use spin::Mutex;

    #[test]
    fn a_write_is_the_exit_code_whatever_its_size() {
        for (port, bytes, code) in [
            (0xF4u64, &[0x31u8][..], 0x31u32),
            (0xF4, &[0x34, 0x12], 0x1234),
            (0xF4, &[1, 2, 3, 4], 0x0403_0201),
            (0xF5, &[7], 7),
            (0xF4, &[0], 0),
        ] {
            let ev = Arc::new(PlatformEvents::new());
            let mut bus = PioBus::new();
            bus.insert(
                0xF4,
                PORT_COUNT,
                Arc::new(Mutex::new(DebugExit::new(ev.clone()))),
            )
            .unwrap();
            let mut r = [0xFFu8; 4];
            assert!(bus.read(0xF4, &mut r));
            assert_eq!(r, [0; 4]);
            assert_eq!(ev.pending(), None, "reads do not exit");
            assert!(bus.write(port, bytes));
            assert_eq!(ev.pending(), Some(PlatformEvent::Exit { code }));
        }
    }
}
