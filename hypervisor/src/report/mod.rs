//! What a run reports to the world outside.
//!
//! [`schema`] is the one definition of the machine-readable `SUMMARY {json}`
//! line: the kernel serializes it, xtask (tests, benchmarks, `run --json`)
//! deserializes it. A field added, renamed or removed changes both sides at
//! once, and a SUMMARY that does not fit is an error, never a silent zero.

pub mod schema;

#[cfg(target_os = "none")]
pub mod print;
