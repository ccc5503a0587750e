//! Architectural facts of x86-64 (Intel SDM Vol. 3A): control-register and
//! EFER bits, MSR numbers, segments and the initial state of a CPU. Pure; the
//! one place each fact is defined.
//!
//! The flag types are the `x86_64` crate's; the `u64` constants below are the
//! same bits for code that works on raw register values (VMCS fields, guest
//! registers).

pub mod control;
pub mod msr;
pub mod state;

pub use x86_64::registers::control::{Cr0Flags, Cr4Flags};
pub use x86_64::registers::model_specific::EferFlags;

/// Size of a page and of a host frame: 4 KiB.
pub const PAGE_SIZE: u64 = 4096;

pub const CR0_PE: u64 = Cr0Flags::PROTECTED_MODE_ENABLE.bits();
pub const CR0_MP: u64 = Cr0Flags::MONITOR_COPROCESSOR.bits();
pub const CR0_EM: u64 = Cr0Flags::EMULATE_COPROCESSOR.bits();
pub const CR0_TS: u64 = Cr0Flags::TASK_SWITCHED.bits();
pub const CR0_ET: u64 = Cr0Flags::EXTENSION_TYPE.bits();
pub const CR0_NE: u64 = Cr0Flags::NUMERIC_ERROR.bits();
pub const CR0_WP: u64 = Cr0Flags::WRITE_PROTECT.bits();
pub const CR0_AM: u64 = Cr0Flags::ALIGNMENT_MASK.bits();
pub const CR0_NW: u64 = Cr0Flags::NOT_WRITE_THROUGH.bits();
pub const CR0_CD: u64 = Cr0Flags::CACHE_DISABLE.bits();
pub const CR0_PG: u64 = Cr0Flags::PAGING.bits();
/// Every CR0 bit that exists; setting any other is a #GP (SDM 2.5).
pub const CR0_DEFINED: u64 = Cr0Flags::all().bits();

pub const CR4_PSE: u64 = Cr4Flags::PAGE_SIZE_EXTENSION.bits();
pub const CR4_PAE: u64 = Cr4Flags::PHYSICAL_ADDRESS_EXTENSION.bits();
pub const CR4_PGE: u64 = Cr4Flags::PAGE_GLOBAL.bits();
pub const CR4_OSFXSR: u64 = Cr4Flags::OSFXSR.bits();
pub const CR4_OSXMMEXCPT: u64 = Cr4Flags::OSXMMEXCPT_ENABLE.bits();
pub const CR4_VMXE: u64 = Cr4Flags::VIRTUAL_MACHINE_EXTENSIONS.bits();
pub const CR4_OSXSAVE: u64 = Cr4Flags::OSXSAVE.bits();

pub const EFER_SCE: u64 = EferFlags::SYSTEM_CALL_EXTENSIONS.bits();
pub const EFER_LME: u64 = EferFlags::LONG_MODE_ENABLE.bits();
pub const EFER_LMA: u64 = EferFlags::LONG_MODE_ACTIVE.bits();
pub const EFER_NXE: u64 = EferFlags::NO_EXECUTE_ENABLE.bits();

/// The architectural power-up value of IA32_PAT (SDM 13.12.4).
pub const PAT_DEFAULT: u64 = 0x0007_0406_0007_0406;

/// Whether `addr` is canonical for 48-bit linear addresses (SDM 3.3.7.1).
pub const fn is_canonical(addr: u64) -> bool {
    ((addr as i64) << 16 >> 16) as u64 == addr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_the_sdm_ones() {
        assert_eq!(CR0_PE, 1);
        assert_eq!(CR0_NE, 1 << 5);
        assert_eq!(CR0_PG, 1 << 31);
        assert_eq!(CR0_DEFINED, 0xe005_003f);
        assert_eq!(CR4_PAE, 1 << 5);
        assert_eq!(CR4_VMXE, 1 << 13);
        assert_eq!(CR4_OSXSAVE, 1 << 18);
        assert_eq!(EFER_LME, 1 << 8);
        assert_eq!(EFER_LMA, 1 << 10);
        assert!(is_canonical(0xffff_8000_0000_0000));
        assert!(!is_canonical(0x0000_8000_0000_0000));
    }
}
