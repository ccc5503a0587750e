//! VM entry and the return from VM exit, in one naked function.
//!
//! `vmx_enter` saves the host's callee-saved registers, points the VMCS
//! host RSP/RIP at its own stack frame and exit label, loads the guest's
//! general-purpose registers and runs VMLAUNCH or VMRESUME. A VM exit lands at
//! the label with RSP as it was (SDM Vol. 3C, 28.5.3 "Loading Host RIP, RSP,
//! and RFLAGS"): the guest registers are stored back and the function returns 0.
//! If the VM-entry instruction itself fails, it returns the RFLAGS it left
//! (CF set: VMfailInvalid; ZF set: VMfailValid, see the VM-instruction error).

/// Guest general-purpose registers not kept in the VMCS (RSP and RIP are);
/// the assembly below depends on its `repr(C)` field order.
pub use crate::x86::state::Gprs as GuestRegs;

/// Enters the guest of the current VMCS.
///
/// # Safety
/// A VMCS must be current on this core with valid host and guest state, and
/// `regs` must stay valid until the function returns. `launched` is 0 for the
/// first entry with this VMCS (VMLAUNCH) and 1 afterwards (VMRESUME).
#[unsafe(naked)]
pub unsafe extern "sysv64" fn vmx_enter(regs: *mut GuestRegs, launched: u64) -> u64 {
    core::arch::naked_asm!(
        "push rbp",
        "push rbx",
        "push r12",
        "push r13",
        "push r14",
        "push r15",
        "push rdi", // the regs pointer, at [rsp] while the guest runs
        // Host RSP and RIP for the coming exit (VMCS encodings 0x6C14, 0x6C16).
        "mov rax, 0x6C14",
        "vmwrite rax, rsp",
        "mov rax, 0x6C16",
        "lea rcx, [rip + 2f]",
        "vmwrite rax, rcx",
        // The flags of this test survive the MOVs below.
        "test rsi, rsi",
        "mov rax, [rdi + 0]",
        "mov rbx, [rdi + 8]",
        "mov rcx, [rdi + 16]",
        "mov rdx, [rdi + 24]",
        "mov rsi, [rdi + 32]",
        "mov rbp, [rdi + 48]",
        "mov r8, [rdi + 56]",
        "mov r9, [rdi + 64]",
        "mov r10, [rdi + 72]",
        "mov r11, [rdi + 80]",
        "mov r12, [rdi + 88]",
        "mov r13, [rdi + 96]",
        "mov r14, [rdi + 104]",
        "mov r15, [rdi + 112]",
        "mov rdi, [rdi + 40]",
        "jnz 3f",
        "vmlaunch",
        "jmp 4f",
        "3:",
        "vmresume",
        // VM entry failed: return RFLAGS (never 0: bit 1 is always set).
        "4:",
        "pushfq",
        "pop rax",
        // Both ways out: drop the regs pointer, restore the host's
        // callee-saved registers, return RAX.
        "5:",
        "add rsp, 8",
        "pop r15",
        "pop r14",
        "pop r13",
        "pop r12",
        "pop rbx",
        "pop rbp",
        "ret",
        // VM exit: RSP is the host RSP written above, [rsp] = regs pointer.
        "2:",
        "push rdi",
        "mov rdi, [rsp + 8]",
        "mov [rdi + 0], rax",
        "mov [rdi + 8], rbx",
        "mov [rdi + 16], rcx",
        "mov [rdi + 24], rdx",
        "mov [rdi + 32], rsi",
        "mov [rdi + 48], rbp",
        "mov [rdi + 56], r8",
        "mov [rdi + 64], r9",
        "mov [rdi + 72], r10",
        "mov [rdi + 80], r11",
        "mov [rdi + 88], r12",
        "mov [rdi + 96], r13",
        "mov [rdi + 104], r14",
        "mov [rdi + 112], r15",
        "pop rax",
        "mov [rdi + 40], rax",
        "xor eax, eax",
        "jmp 5b",
    )
}
