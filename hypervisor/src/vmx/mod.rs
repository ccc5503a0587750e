//! Intel VMX (SDM Vol. 3C). `caps`, `controls`, `fields` and `exit` are pure
//! decoding and build on the host; `hw` touches the CPU (VMXON, the current
//! VMCS, the entry assembly) and only builds for the kernel.

pub mod caps;
pub mod controls;
pub mod exit;
pub mod fields;

#[cfg(target_os = "none")]
pub mod hw;
