//! Intel VMX. `caps`, `fields` and `exit` are pure decoding and build on the
//! host; the rest touches the CPU.

pub mod caps;
pub mod exit;
pub mod fields;

#[cfg(target_os = "none")]
pub mod entry;
#[cfg(target_os = "none")]
pub mod on;
#[cfg(target_os = "none")]
pub mod vmcs;
