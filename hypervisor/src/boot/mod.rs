//! Guest loaders: how a guest gets into memory and what state its vCPUs start
//! in. `payload` unpacks what the image builder put in the ramdisk; `native`
//! and `elf` load the project's own 64-bit guests (the `abi`); `format`
//! tells what a `--kernel` file is; `multiboot` loads multiboot v1 kernels
//! and `linux` Linux bzImages (the x86 boot protocol's 64-bit entry),
//! `pvh` ELF kernels with a PVH entry note (an uncompressed `vmlinux`).

pub mod abi;
pub mod elf;
pub mod format;
pub mod linux;
pub mod multiboot;
pub mod native;
pub mod payload;
pub mod pvh;

/// Where a kernel run's boot protocol put things (the start-up report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelLoaded {
    Multiboot(multiboot::Loaded),
    Linux(linux::Loaded),
    Pvh(pvh::Loaded),
}

/// Guest memory as a flat vector, for the loaders' tests.
#[cfg(test)]
pub(crate) mod test_mem {
    use super::elf::GuestMemoryWriter;
    use alloc::vec::Vec;

    pub struct Mem(pub Vec<u8>);

    impl GuestMemoryWriter for Mem {
        type Error = ();
        fn write(&mut self, gpa: u64, bytes: &[u8]) -> Result<(), ()> {
            let s = gpa as usize;
            self.0
                .get_mut(s..s + bytes.len())
                .ok_or(())?
                .copy_from_slice(bytes);
            Ok(())
        }
        fn zero(&mut self, gpa: u64, len: u64) -> Result<(), ()> {
            let s = gpa as usize;
            self.0.get_mut(s..s + len as usize).ok_or(())?.fill(0);
            Ok(())
        }
    }

    impl Mem {
        pub fn u32(&self, at: u64) -> u32 {
            u32::from_le_bytes(self.0[at as usize..at as usize + 4].try_into().unwrap())
        }
        pub fn u64(&self, at: u64) -> u64 {
            u64::from_le_bytes(self.0[at as usize..at as usize + 8].try_into().unwrap())
        }
        /// The NUL-terminated string at `at`.
        pub fn cstr(&self, at: u64) -> &str {
            let s = &self.0[at as usize..];
            core::str::from_utf8(&s[..s.iter().position(|&b| b == 0).unwrap()]).unwrap()
        }
    }
}
