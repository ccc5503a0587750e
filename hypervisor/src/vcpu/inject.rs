//! When a pending interrupt or NMI may be injected (SDM 6.8.1 "Masking
//! Maskable Hardware Interrupts", 6.8.3 "Masking Exceptions and Interrupts
//! When Switching Stacks", 25.4.2 "interruptibility state", 27.6 "Event
//! Injection"), and what to do otherwise: ask for an exit when
//! the guest opens the window (interrupt-window and NMI-window exiting,
//! SDM 26.2). [`decide`] is pure; [`Vcpu::deliver_events`] reads the guest
//! state from the VMCS, asks it, and applies the answer.

use super::{Hw, Stop, Vcpu};
use crate::mm::HostMemory;
use crate::vmx::controls::PrimaryProcBased;
use crate::vmx::exit::InterruptionInfo;
use crate::vmx::fields::{Vmcs32, VmcsNatural};

/// Guest interruptibility-state bits (SDM 25.4.2 table "Format of
/// Interruptibility State").
pub const BLOCKING_BY_STI: u32 = 1 << 0;
pub const BLOCKING_BY_MOV_SS: u32 = 1 << 1;
pub const BLOCKING_BY_SMI: u32 = 1 << 2;
pub const BLOCKING_BY_NMI: u32 = 1 << 3;

/// Guest activity states (SDM 25.4.2).
pub const ACTIVE: u32 = 0;
pub const HLT: u32 = 1;
pub const SHUTDOWN: u32 = 2;
pub const WAIT_FOR_SIPI: u32 = 3;

/// RFLAGS.IF.
pub const RFLAGS_IF: u64 = 1 << 9;

/// What the guest's state allows at the next VM entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventState {
    pub rflags: u64,
    pub interruptibility: u32,
    pub activity: u32,
    /// The VM-entry interruption-information field already holds an event
    /// (an exception a handler raised, or one re-queued from IDT vectoring):
    /// one event per entry.
    pub entry_event_queued: bool,
}

pub use crate::machine::irq::Pending;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do.
    Nothing,
    /// Inject the NMI now.
    InjectNmi,
    /// Acknowledge the interrupt and inject it now.
    InjectInterrupt,
    /// Not now: exit as soon as the guest can take an NMI.
    NmiWindow,
    /// Not now: exit as soon as the guest can take an interrupt.
    InterruptWindow,
}

impl EventState {
    fn shadow(&self) -> bool {
        self.interruptibility & (BLOCKING_BY_STI | BLOCKING_BY_MOV_SS) != 0
    }

    /// An NMI can be delivered: not blocked by an earlier NMI, and no
    /// STI/MOV-SS shadow (SDM 27.3.1.5 refuses NMI injection with MOV-SS
    /// blocking; KVM also waits out STI blocking, which some processors
    /// apply to NMIs, SDM 6.8.3).
    pub fn nmi_allowed(&self) -> bool {
        self.interruptibility & (BLOCKING_BY_NMI | BLOCKING_BY_SMI) == 0 && !self.shadow()
    }

    /// A maskable interrupt can be delivered: RFLAGS.IF set and no shadow
    /// (SDM 6.8.1, 6.8.3).
    pub fn interrupt_allowed(&self) -> bool {
        self.rflags & RFLAGS_IF != 0 && !self.shadow()
    }
}

/// The choice before a VM entry. NMIs go first (SDM 6.9 priorities); a
/// vCPU waiting for SIPI takes neither (SDM 26.6.2: INIT and SIPI only);
/// a halted vCPU is woken by the injection itself (an event injected into
/// the HLT activity state makes the vCPU active, SDM 27.6).
pub fn decide(s: &EventState, p: Pending) -> Decision {
    if s.activity == WAIT_FOR_SIPI || s.activity == SHUTDOWN {
        return Decision::Nothing;
    }
    if p.nmi {
        if !s.entry_event_queued && s.nmi_allowed() {
            return Decision::InjectNmi;
        }
        return Decision::NmiWindow;
    }
    if p.interrupt {
        if !s.entry_event_queued && s.interrupt_allowed() {
            return Decision::InjectInterrupt;
        }
        return Decision::InterruptWindow;
    }
    Decision::Nothing
}

impl<H: Hw, M: HostMemory> Vcpu<'_, H, M> {
    /// Before each VM entry: polls this vCPU's timers, then injects the
    /// NMI or interrupt the guest can take now, or asks for an exit when it
    /// opens the window (interrupt-window / NMI-window exiting, SDM 26.2).
    /// Acknowledging happens only when the event is injected, so nothing is
    /// taken from the APIC or the 8259 that is not delivered.
    pub fn deliver_events(&mut self) -> Result<(), Stop> {
        let router = &self.vm.irq;
        // Nothing can be pending before the guest touches the interrupt
        // hardware, and no window was opened (`Router::activate`).
        if !router.is_active() {
            return Ok(());
        }
        router.poll_timers_for(self.id);
        let pending = router.pending_for(self.id);
        let entry = InterruptionInfo::from_raw(self.vmcs.read32(Vmcs32::VmEntryInterruptionInfo)?);
        let state = EventState {
            rflags: self.vmcs.read_nat(VmcsNatural::GuestRflags)?,
            interruptibility: self.vmcs.read32(Vmcs32::GuestInterruptibilityState)?,
            activity: self.vmcs.read32(Vmcs32::GuestActivityState)?,
            entry_event_queued: entry.valid,
        };
        let mut windows = 0u32;
        match decide(&state, pending) {
            Decision::Nothing => {}
            Decision::InjectNmi => {
                if router.take_nmi(self.id) {
                    self.queue_event(InterruptionInfo::nmi())?;
                }
            }
            Decision::InjectInterrupt => {
                if let Some(vector) = router.acknowledge(self.id) {
                    self.queue_event(InterruptionInfo::external_interrupt(vector))?;
                }
            }
            Decision::NmiWindow => windows |= PrimaryProcBased::NMI_WINDOW.bits(),
            Decision::InterruptWindow => {
                windows |= PrimaryProcBased::INTERRUPT_WINDOW_EXITING.bits()
            }
        }
        // Only the windows this CPU can open; without one, the event waits
        // for the vCPU's next exit.
        let windows = windows & self.vm.caps.proc.allowed1;
        let all =
            (PrimaryProcBased::NMI_WINDOW | PrimaryProcBased::INTERRUPT_WINDOW_EXITING).bits();
        let proc = self.vmcs.read32(Vmcs32::PrimaryProcBasedControls)?;
        let want = (proc & !all) | windows;
        if want != proc {
            self.vmcs.write32(Vmcs32::PrimaryProcBasedControls, want)?;
        }
        Ok(())
    }

    /// Queues an NMI or external interrupt for the next entry; a vCPU in the
    /// HLT state wakes up to take it (SDM 27.6: injection makes it active).
    fn queue_event(&mut self, info: InterruptionInfo) -> Result<(), Stop> {
        self.vmcs
            .write32(Vmcs32::VmEntryInterruptionInfo, info.to_raw())?;
        if self.vmcs.read32(Vmcs32::GuestActivityState)? == HLT {
            self.vmcs.write32(Vmcs32::GuestActivityState, ACTIVE)?;
            // Woken: a HLT with interrupts off ends with an NMI too.
            self.vm.requests.set_halted(self.id, false);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: EventState = EventState {
        rflags: RFLAGS_IF | 2,
        interruptibility: 0,
        activity: ACTIVE,
        entry_event_queued: false,
    };
    const IRQ: Pending = Pending {
        nmi: false,
        interrupt: true,
    };
    const NMI: Pending = Pending {
        nmi: true,
        interrupt: true,
    };

    #[test]
    fn interrupts_go_in_when_the_guest_can_take_them() {
        assert_eq!(decide(&OPEN, IRQ), Decision::InjectInterrupt);
        assert_eq!(decide(&OPEN, Pending::default()), Decision::Nothing);
        let halted = EventState {
            activity: HLT,
            ..OPEN
        };
        assert_eq!(decide(&halted, IRQ), Decision::InjectInterrupt);
    }

    #[test]
    fn closed_windows_ask_for_an_exit_instead() {
        for closed in [
            EventState { rflags: 2, ..OPEN },
            EventState {
                interruptibility: BLOCKING_BY_STI,
                ..OPEN
            },
            EventState {
                interruptibility: BLOCKING_BY_MOV_SS,
                ..OPEN
            },
            EventState {
                entry_event_queued: true,
                ..OPEN
            },
        ] {
            assert_eq!(
                decide(&closed, IRQ),
                Decision::InterruptWindow,
                "{closed:?}"
            );
        }
    }

    #[test]
    fn nmis_first_and_blocked_by_nmi_blocking_not_by_if() {
        assert_eq!(decide(&OPEN, NMI), Decision::InjectNmi);
        let cli = EventState { rflags: 2, ..OPEN };
        assert_eq!(decide(&cli, NMI), Decision::InjectNmi);
        let blocked = EventState {
            interruptibility: BLOCKING_BY_NMI,
            ..OPEN
        };
        assert_eq!(decide(&blocked, NMI), Decision::NmiWindow);
    }

    #[test]
    fn wait_for_sipi_takes_nothing() {
        let w = EventState {
            activity: WAIT_FOR_SIPI,
            ..OPEN
        };
        assert_eq!(decide(&w, NMI), Decision::Nothing);
    }
}
