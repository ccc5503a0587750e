//! EPT violations (exit reason 48) and misconfigurations (49).
//!
//! The EPT starts empty; every guest page is mapped here on its first touch,
//! after its gfn is resolved to a memslot (the vCPU's own last-used slot,
//! then binary search). A gfn no slot backs, or a write to a read-only slot,
//! stops the vCPU: no frame outside the slots is ever mapped.
//!
//! Dirty logging (SDM-independent protocol, as KVM's): a logged slot's pages
//! are mapped without write access; a write fault restores write access and
//! THEN sets the page's dirty bit, so that a controller harvesting the bitmap
//! at the same time can never lose the write (see `dirty`).

use crate::mm::fault::{self, Access, Fault, MapFailure, Resolved};
use crate::mm::memslot::Memslot;
use crate::mm::HostMemory;
use crate::vcpu::{Action, Stop};
use crate::vcpu::{Hw, Vcpu};
use crate::vmx::exit::EptViolation;
use crate::vmx::fields::{Vmcs64, VmcsNatural};
use alloc::format;

pub fn violation<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    let gpa = v.vmcs.read64(Vmcs64::GuestPhysicalAddress)?;
    let q = EptViolation::from_qualification(v.vmcs.read_nat(VmcsNatural::ExitQualification)?);
    let access = Access {
        read: q.read,
        write: q.write,
        fetch: q.fetch,
    };
    let gfn = gpa >> 12;
    let slot = v.slots().lookup_vcpu(gfn, &mut v.slot_cache);
    let (perms, slot) = match (fault::decide(access, slot.map(|s| s.flags())), slot) {
        (Fault::Map { perms }, Some(slot)) => (perms, slot),
        (Fault::ReadOnlyWrite, slot) => {
            let id = slot.map_or(0, |s| s.id());
            return Err(v.contain(
                "write to a read-only memslot",
                format!("gpa={gpa:#x} gfn={gfn:#x} slot={id} access=write"),
            ));
        }
        (Fault::Unbacked | Fault::Map { .. }, _) => {
            // No RAM here: a device's MMIO range, or nothing at all.
            if super::mmio::claims(v, gpa) {
                return super::mmio::emulate(v, gpa, &q);
            }
            return Err(v.contain(
                "access to memory no memslot backs",
                format!("gpa={gpa:#x} gfn={gfn:#x} access={}", access.name()),
            ));
        }
    };
    let vm = v.vm;
    let mark = |slot: &Memslot, gfn: u64| vm.mark_dirty(slot, gfn);
    match fault::map_fault(&vm.ept, slot, gfn, access, perms, vm.ept_pages, mark) {
        Ok(Resolved::Mapped(_)) => v.stats.ept_mapped += 1,
        // Another vCPU mapped it between our fault and our lookup.
        Ok(Resolved::Spurious) => v.stats.ept_spurious += 1,
        Ok(Resolved::Logged) => v.stats.dirty_faults += 1,
        Ok(Resolved::RestoredWrite) => {}
        Err(MapFailure::Contain) => {
            return Err(v.contain(
                "EPT violation on a mapped page",
                format!("gpa={gpa:#x} access={} qualification {q}", access.name()),
            ))
        }
        Err(MapFailure::Mismatch { existing, hpa }) => {
            return Err(Stop::Fatal(format!(
                "EPT maps gpa {:#x} to {existing:#x}, its slot says {hpa:#x}",
                gpa & !0xfff
            )))
        }
        Err(MapFailure::Ept(e)) => {
            return Err(Stop::Fatal(format!("mapping gpa {:#x}: {e}", gpa & !0xfff)))
        }
    }
    Ok(Action::Resume)
}

pub fn misconfiguration<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    let gpa = v.vmcs.read64(Vmcs64::GuestPhysicalAddress)?;
    Err(Stop::Fatal(format!(
        "EPT misconfiguration at gpa {gpa:#x} (a hypervisor bug: an EPT entry is malformed) rip={:#x}",
        v.rip()
    )))
}
