//! Address-range buses: which device answers at which address.
//!
//! A [`Bus`] maps disjoint ranges `[base, base + len)` to devices. The same
//! type serves the two x86 address spaces, told apart by a marker type:
//! - [`PioBus`] (`Bus<Pio>`): port I/O. Ports are 16-bit; the exit handler
//!   widens them to `u64`. A range may not reach past port `0xFFFF`.
//! - [`MmioBus`] (`Bus<Mmio>`): guest-physical MMIO, the whole `u64` space.
//!
//! Ranges are kept sorted by base in a `Vec`; a lookup is a binary search,
//! O(log n). Buses are built before vCPUs run (`&mut self`) and read through
//! `&self` afterwards; each device has its own lock ([`DeviceHandle`]).
//!
//! # Accesses the bus does not claim
//! An access `[addr, addr + data.len())` is *claimed* only if it lies entirely
//! inside one range. Otherwise, including an access that starts inside a range
//! but runs past its end (say a 4-byte `in` at the last port of a device), it
//! is unclaimed: a read returns all ones (`0xFF` in every byte, what an empty
//! ISA bus or an unclaimed MMIO read gives) and a write is dropped. This is
//! KVM's rule (`kvm_io_bus_get_first_dev`); a device never sees an offset or
//! size that runs past its range. An empty access (`data` of length 0) is
//! never claimed.

use super::BusDevice;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;
use spin::Mutex;

/// A device as a bus holds it: shared, each behind its own lock.
pub type DeviceHandle = Arc<Mutex<dyn BusDevice>>;

/// The address space a [`Bus`] covers.
pub trait BusKind: 'static {
    /// Short name, for messages ("PIO", "MMIO").
    const NAME: &'static str;
    /// The highest address on this bus.
    const MAX_ADDR: u64;
}

/// Marker for the port-I/O address space (ports `0..=0xFFFF`).
#[derive(Debug)]
pub enum Pio {}

/// Marker for the MMIO (guest-physical) address space.
#[derive(Debug)]
pub enum Mmio {}

impl BusKind for Pio {
    const NAME: &'static str = "PIO";
    const MAX_ADDR: u64 = 0xFFFF;
}

impl BusKind for Mmio {
    const NAME: &'static str = "MMIO";
    const MAX_ADDR: u64 = u64::MAX;
}

/// The port-I/O bus.
pub type PioBus = Bus<Pio>;
/// The MMIO bus.
pub type MmioBus = Bus<Mmio>;

/// An address range `[base, base + len)`. Ranges on a bus never wrap, so
/// `base + len` is always representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusRange {
    /// First address of the range.
    pub base: u64,
    /// Number of addresses (never 0 on a bus).
    pub len: u64,
}

impl BusRange {
    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.base + self.len
    }

    /// Whether `addr` lies in the range.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr - self.base < self.len
    }
}

impl fmt::Display for BusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{:#x}, {:#x})",
            self.base,
            self.base.wrapping_add(self.len)
        )
    }
}

/// Why [`Bus::insert`] refused a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty.
    ZeroLength {
        /// Base of the refused range.
        base: u64,
    },
    /// `base + len` wraps around the top of `u64`.
    Overflow(BusRange),
    /// The range runs past the last address of the bus (port `0xFFFF` on
    /// the port-I/O bus).
    OutOfSpace {
        /// The refused range.
        range: BusRange,
        /// The highest address on the bus.
        max_addr: u64,
    },
    /// The range overlaps one already on the bus.
    Overlap {
        /// The refused range.
        new: BusRange,
        /// The range already on the bus that it overlaps.
        existing: BusRange,
    },
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusError::ZeroLength { base } => write!(f, "empty range at {base:#x}"),
            BusError::Overflow(r) => {
                write!(f, "range at {:#x} of length {:#x} wraps", r.base, r.len)
            }
            BusError::OutOfSpace { range, max_addr } => {
                write!(f, "range {range} runs past the last address {max_addr:#x}")
            }
            BusError::Overlap { new, existing } => {
                write!(f, "range {new} overlaps {existing}")
            }
        }
    }
}

struct Entry {
    range: BusRange,
    device: DeviceHandle,
}

/// A set of disjoint address ranges, each routed to a device. See the
/// [module documentation](self).
pub struct Bus<K: BusKind> {
    /// Sorted by `range.base`; ranges are disjoint.
    entries: Vec<Entry>,
    _kind: PhantomData<fn() -> K>,
}

impl<K: BusKind> Default for Bus<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: BusKind> fmt::Debug for Bus<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("kind", &K::NAME)
            .field(
                "ranges",
                &self.entries.iter().map(|e| e.range).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<K: BusKind> Bus<K> {
    /// An empty bus.
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
            _kind: PhantomData,
        }
    }

    /// Register `device` at `[base, base + len)`.
    ///
    /// Refuses an empty range, one that wraps or runs past the bus's last
    /// address, and one that overlaps a range already on the bus (the error
    /// names the first such range). Adjacent ranges are fine.
    pub fn insert(&mut self, base: u64, len: u64, device: DeviceHandle) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength { base });
        }
        let new = BusRange { base, len };
        let last = base.checked_add(len).ok_or(BusError::Overflow(new))? - 1;
        if last > K::MAX_ADDR {
            return Err(BusError::OutOfSpace {
                range: new,
                max_addr: K::MAX_ADDR,
            });
        }
        // The first range with a base at or above ours; since ranges are
        // disjoint, only it and the one before it can overlap.
        let i = self.entries.partition_point(|e| e.range.base < base);
        if let Some(prev) = i.checked_sub(1).map(|p| &self.entries[p]) {
            if prev.range.end() > base {
                return Err(BusError::Overlap {
                    new,
                    existing: prev.range,
                });
            }
        }
        if let Some(next) = self.entries.get(i) {
            if next.range.base <= last {
                return Err(BusError::Overlap {
                    new,
                    existing: next.range,
                });
            }
        }
        self.entries.insert(i, Entry { range: new, device });
        Ok(())
    }

    /// Unregister the range that starts at `base`; returns its device.
    pub fn remove(&mut self, base: u64) -> Option<DeviceHandle> {
        let i = self
            .entries
            .binary_search_by_key(&base, |e| e.range.base)
            .ok()?;
        Some(self.entries.remove(i).device)
    }

    /// Binary search: the entry whose range holds `addr`.
    fn entry(&self, addr: u64) -> Option<&Entry> {
        let i = self.entries.partition_point(|e| e.range.base <= addr);
        let e = &self.entries[i.checked_sub(1)?];
        e.range.contains(addr).then_some(e)
    }

    /// The device that claims an access of `size` bytes at `addr`, and the
    /// offset of `addr` in its range (see the module documentation).
    fn claim(&self, addr: u64, size: usize) -> Option<(u64, &Entry)> {
        let e = self.entry(addr)?;
        let offset = addr - e.range.base;
        let size = u64::try_from(size).ok()?;
        (size != 0 && size <= e.range.len - offset).then_some((offset, e))
    }

    /// The range holding `addr` and its device, if any.
    pub fn get(&self, addr: u64) -> Option<(BusRange, &DeviceHandle)> {
        self.entry(addr).map(|e| (e.range, &e.device))
    }

    /// Whether some range holds `addr`.
    pub fn contains(&self, addr: u64) -> bool {
        self.entry(addr).is_some()
    }

    /// Read `data.len()` bytes at `addr`. Returns whether a device claimed
    /// the access; if none did, `data` is filled with `0xFF`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.claim(addr, data.len()) {
            Some((offset, e)) => {
                e.device.lock().read(offset, data);
                true
            }
            None => {
                data.fill(0xFF);
                false
            }
        }
    }

    /// Write `data` at `addr`. Returns whether a device claimed the access;
    /// an unclaimed write is dropped.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.claim(addr, data.len()) {
            Some((offset, e)) => {
                e.device.lock().write(offset, data);
                true
            }
            None => false,
        }
    }

    /// The ranges on the bus, in address order.
    pub fn ranges(&self) -> impl Iterator<Item = BusRange> + '_ {
        self.entries.iter().map(|e| e.range)
    }

    /// Number of ranges on the bus.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the bus has no ranges.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// A device that logs its accesses and reads back `0x40 + offset`.
    #[derive(Default)]
    struct Probe {
        log: Vec<(char, u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = 0x40 + (offset as u8) + i as u8;
            }
            self.log.push(('r', offset, data.to_vec()));
        }

        fn write(&mut self, offset: u64, data: &[u8]) {
            self.log.push(('w', offset, data.to_vec()));
        }
    }

    fn probe() -> (Arc<Mutex<Probe>>, DeviceHandle) {
        let p = Arc::new(Mutex::new(Probe::default()));
        let h: DeviceHandle = p.clone();
        (p, h)
    }

    fn dev() -> DeviceHandle {
        probe().1
    }

    /// A bus with one range, `[0x100, 0x110)`.
    fn bus_0x100() -> MmioBus {
        let mut bus = MmioBus::new();
        bus.insert(0x100, 0x10, dev()).unwrap();
        bus
    }

    #[test]
    fn overlaps_are_refused_in_every_shape() {
        let existing = BusRange {
            base: 0x100,
            len: 0x10,
        };
        for (base, len, shape) in [
            (0x100, 0x10, "same"),
            (0x104, 0x4, "inside"),
            (0x0f0, 0x40, "containing"),
            (0x0f8, 0x10, "over the left edge"),
            (0x108, 0x10, "over the right edge"),
            (0x0ff, 0x2, "last byte before and first byte"),
            (0x10f, 0x1, "last byte only"),
            (0x100, 0x1, "first byte only"),
        ] {
            let mut bus = bus_0x100();
            let err = bus.insert(base, len, dev()).unwrap_err();
            assert_eq!(
                err,
                BusError::Overlap {
                    new: BusRange { base, len },
                    existing
                },
                "{shape}"
            );
            assert_eq!(bus.len(), 1, "{shape}");
        }
    }

    #[test]
    fn overlap_error_names_the_range() {
        let mut bus = bus_0x100();
        bus.insert(0x200, 0x10, dev()).unwrap();
        let err = bus.insert(0x1f0, 0x20, dev()).unwrap_err();
        assert_eq!(
            alloc::format!("{err}"),
            "range [0x1f0, 0x210) overlaps [0x200, 0x210)"
        );
    }

    #[test]
    fn adjacent_ranges_are_accepted() {
        let mut bus = bus_0x100();
        bus.insert(0x110, 0x10, dev()).unwrap(); // right after
        bus.insert(0x0f0, 0x10, dev()).unwrap(); // right before
        bus.insert(0x0e0, 0x8, dev()).unwrap();
        let ranges: Vec<_> = bus.ranges().map(|r| (r.base, r.len)).collect();
        assert_eq!(
            ranges,
            [(0xe0, 0x8), (0xf0, 0x10), (0x100, 0x10), (0x110, 0x10)]
        );
    }

    #[test]
    fn bad_ranges_are_refused() {
        let mut bus = MmioBus::new();
        assert_eq!(
            bus.insert(0x10, 0, dev()),
            Err(BusError::ZeroLength { base: 0x10 })
        );
        let r = BusRange {
            base: u64::MAX - 1,
            len: 3,
        };
        assert_eq!(bus.insert(r.base, r.len, dev()), Err(BusError::Overflow(r)));
        // base + len == 2^64 wraps to 0 too.
        let r = BusRange {
            base: u64::MAX - 1,
            len: 2,
        };
        assert_eq!(bus.insert(r.base, r.len, dev()), Err(BusError::Overflow(r)));
        bus.insert(u64::MAX - 1, 1, dev()).unwrap();

        let mut pio = PioBus::new();
        let r = BusRange {
            base: 0xFFF8,
            len: 9,
        };
        assert_eq!(
            pio.insert(r.base, r.len, dev()),
            Err(BusError::OutOfSpace {
                range: r,
                max_addr: 0xFFFF
            })
        );
        pio.insert(0xFFF8, 8, dev()).unwrap();
        assert!(pio.contains(0xFFFF));
    }

    #[test]
    fn lookups_at_the_edges() {
        let mut bus = bus_0x100();
        bus.insert(0x120, 0x10, dev()).unwrap();
        for (addr, hit) in [
            (0x0ff, false), // one before the first byte
            (0x100, true),  // first byte
            (0x10f, true),  // last byte
            (0x110, false), // one past the last byte
            (0x11f, false),
            (0x120, true),
            (0x12f, true),
            (0x130, false),
            (0, false),
            (u64::MAX, false),
        ] {
            assert_eq!(bus.contains(addr), hit, "{addr:#x}");
            let mut data = [0u8; 1];
            assert_eq!(bus.read(addr, &mut data), hit, "{addr:#x}");
            assert_eq!(bus.write(addr, &[1]), hit, "{addr:#x}");
            assert_eq!(bus.get(addr).is_some(), hit, "{addr:#x}");
        }
    }

    #[test]
    fn accesses_reach_the_device_with_the_offset() {
        let mut bus = PioBus::new();
        let (p, h) = probe();
        bus.insert(0x3f8, 8, h).unwrap();
        let mut data = [0u8; 2];
        assert!(bus.read(0x3fa, &mut data));
        assert_eq!(data, [0x42, 0x43]);
        assert!(bus.write(0x3ff, &[7]));
        assert!(bus.write(0x3f8, &[1, 2, 3, 4]));
        assert_eq!(
            p.lock().log,
            [
                ('r', 2, vec![0x42, 0x43]),
                ('w', 7, vec![7]),
                ('w', 0, vec![1, 2, 3, 4]),
            ]
        );
    }

    #[test]
    fn unclaimed_reads_all_ones_and_writes_are_ignored() {
        let mut bus = PioBus::new();
        let (p, h) = probe();
        bus.insert(0x60, 1, h).unwrap();
        let mut data = [0u8; 4];
        assert!(!bus.read(0x80, &mut data));
        assert_eq!(data, [0xFF; 4]);
        assert!(!bus.write(0x80, &[1, 2]));
        assert!(p.lock().log.is_empty());
        assert!(!MmioBus::new().read(0xfee0_0000, &mut data));
        assert_eq!(data, [0xFF; 4]);
    }

    #[test]
    fn access_running_past_the_end_is_unclaimed() {
        let mut bus = PioBus::new();
        let (p, h) = probe();
        bus.insert(0x3f8, 8, h).unwrap();
        let mut data = [0u8; 4];
        // Starts at the last byte but is 4 bytes long.
        assert!(!bus.read(0x3ff, &mut data));
        assert_eq!(data, [0xFF; 4]);
        assert!(!bus.write(0x3fe, &[0, 0, 0, 0]));
        // Exactly up to the end is fine.
        assert!(bus.read(0x3fc, &mut data));
        // An empty access is never claimed.
        assert!(!bus.read(0x3f8, &mut []));
        assert!(!bus.write(0x3f8, &[]));
        assert_eq!(p.lock().log, [('r', 4, vec![0x44, 0x45, 0x46, 0x47])]);
        // Near the top of u64 the length check must not overflow.
        let mut mmio = MmioBus::new();
        mmio.insert(u64::MAX - 8, 8, dev()).unwrap();
        assert!(!mmio.read(u64::MAX - 2, &mut [0u8; 8]));
        assert!(mmio.read(u64::MAX - 2, &mut [0u8; 2]));
    }

    #[test]
    fn remove_frees_the_range() {
        let mut bus = bus_0x100();
        assert!(bus.remove(0x104).is_none());
        assert!(bus.remove(0x100).is_some());
        assert!(bus.is_empty());
        assert!(!bus.contains(0x100));
        bus.insert(0x104, 4, dev()).unwrap();
    }

    #[test]
    fn many_ranges_binary_search() {
        let mut bus = MmioBus::new();
        // 64 ranges of 0x10 every 0x20, inserted in a scrambled order.
        for i in 0..64u64 {
            bus.insert(((i * 37) % 64) * 0x20, 0x10, dev()).unwrap();
        }
        assert_eq!(bus.len(), 64);
        assert!(bus
            .ranges()
            .zip(bus.ranges().skip(1))
            .all(|(a, b)| a.end() < b.base));
        for addr in 0..64 * 0x20 + 0x40 {
            let hit = addr < 64 * 0x20 && addr % 0x20 < 0x10;
            assert_eq!(bus.contains(addr), hit, "{addr:#x}");
            if hit {
                assert_eq!(bus.get(addr).unwrap().0.base, addr & !0x1f);
            }
        }
    }
}
