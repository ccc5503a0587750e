//! The machine the guest sees: its CPU as CPUID describes it (`cpuid`), the
//! guest-physical board map (`board`), its devices as QEMU's `pc` machine
//! places them (`pc`), the interrupt fabric between them (`irq`) and the ACPI
//! tables and the MP table that describe them (`acpi`, `mptable`). Pure;
//! the host's own CPUID comes in as a function.

pub mod acpi;
pub mod board;
pub mod cpuid;
pub mod irq;
pub mod mptable;
pub mod pc;
