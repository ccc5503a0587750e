//! Links every guest program with `link.ld`: a static, non-PIE executable
//! (ET_EXEC) at guest-physical 1 MiB with page-aligned segments.
//!
//! `x86_64-unknown-none` defaults to static PIE. The code is still compiled
//! position-independent (rustc's relocation model), but `--no-pie` makes
//! rust-lld resolve every relocation at link time, so the output has no
//! dynamic section and no relocations for the hypervisor to apply.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rerun-if-changed=build.rs");
    // Only the bare-metal target gets the guest link line; a host `cargo
    // check`/`clippy` of this crate then still works (it never links).
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo:rustc-link-arg-bins=-T{dir}/link.ld");
        println!("cargo:rustc-link-arg-bins=--no-pie");
        println!("cargo:rustc-link-arg-bins=-zmax-page-size=4096");
        println!("cargo:rustc-link-arg-bins=--no-dynamic-linker");
    }
}
