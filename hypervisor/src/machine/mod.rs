//! The machine the guest sees: its CPU as CPUID describes it (`cpuid`) and
//! the guest-physical board map (`board`). Pure; the host's own CPUID comes
//! in as a function.

pub mod board;
pub mod cpuid;
