//! Guest loaders: how a guest gets into memory and what state its vCPUs start
//! in. `payload` unpacks what the image builder put in the ramdisk; `native`
//! and `elf` load the project's own 64-bit guests (the `abi`); `format`
//! tells what a `--kernel` file is and `multiboot` loads multiboot v1
//! kernels.

pub mod abi;
pub mod elf;
pub mod format;
pub mod multiboot;
pub mod native;
pub mod payload;
