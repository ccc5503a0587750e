//! The machine the guest sees: its CPU as CPUID describes it (`cpuid`).
//! Pure; the host's own CPUID comes in as a function.

pub mod cpuid;
