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
