//! The kernel-only half of VMX: VMXON/VMXOFF, the current VMCS (VMREAD,
//! VMWRITE, INVEPT) and the VM-entry assembly.

pub mod entry;
pub mod on;
pub mod vmcs;
