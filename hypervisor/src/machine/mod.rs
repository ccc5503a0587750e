//! The machine the guest sees: its CPU as CPUID describes it (`cpuid`), its
//! devices as QEMU's `pc` machine places them (`pc`) and the ACPI tables
//! that describe them (`acpi`). Pure; the host's own CPUID comes in as a
//! function.

pub mod acpi;
pub mod cpuid;
pub mod pc;
