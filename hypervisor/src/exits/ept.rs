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

use crate::mm::ept::{EptPerms, MapResult};
use crate::mm::fault::{self, Access, Fault, Mapped};
use crate::mm::memslot::{Memslot, SlotFlags};
use crate::mm::HostMemory;
use crate::vcpu::{Action, Stop};
use crate::vcpu::{Hw, Vcpu};
use crate::vmx::exit::EptViolation;
use crate::vmx::fields::{Vmcs64, VmcsNatural};
use alloc::format;
use core::sync::atomic::{fence, Ordering};

pub fn violation<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    let gpa = v.vmcs.read64(Vmcs64::GuestPhysicalAddress)?;
    let q = EptViolation::from_qualification(v.vmcs.read_nat(VmcsNatural::ExitQualification)?);
    let access = Access {
        read: q.read,
        write: q.write,
        fetch: q.fetch,
    };
    let gfn = gpa >> 12;
    let slot = v.vm.slots.lookup_vcpu(gfn, &mut v.slot_cache);
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
    let page = gpa & !0xfff;
    let hpa = slot.host_phys(gfn);
    match v.vm.ept.map_4k(page, hpa, perms) {
        Ok(MapResult::Mapped) => {
            v.stats.ept_mapped += 1;
            if perms.contains(EptPerms::WRITE) {
                after_write_access(v, slot, gfn);
            }
        }
        Ok(MapResult::AlreadyMapped {
            hpa: existing,
            perms: have,
        }) => {
            if existing != hpa {
                return Err(Stop::Fatal(format!(
                    "EPT maps gpa {page:#x} to {existing:#x}, its slot says {hpa:#x}"
                )));
            }
            match fault::decide_mapped(access, slot.flags(), have) {
                // Another vCPU mapped it between our fault and our lookup.
                Mapped::Spurious => v.stats.ept_spurious += 1,
                Mapped::RestoreWriteAndLog => {
                    v.vm.ept.make_writable(page);
                    v.stats.dirty_faults += 1;
                    after_write_access(v, slot, gfn);
                }
                Mapped::RestoreWrite => {
                    v.vm.ept.make_writable(page);
                }
                Mapped::Contain => {
                    return Err(v.contain(
                        "EPT violation on a mapped page",
                        format!("gpa={gpa:#x} access={} qualification {q}", access.name()),
                    ))
                }
            }
        }
        Err(e) => return Err(Stop::Fatal(format!("mapping gpa {page:#x}: {e}"))),
    }
    Ok(Action::Resume)
}

/// Logs a page that just became writable, if its slot is logged. The fence
/// pairs with the controller's (flag set, then sweep): either the controller
/// sees our writable entry and protects it, or we see the flag and log.
fn after_write_access<H: Hw, M: HostMemory>(v: &Vcpu<H, M>, slot: &Memslot, gfn: u64) {
    fence(Ordering::SeqCst);
    if slot.flags().contains(SlotFlags::DIRTY_LOG) {
        v.vm.mark_dirty(slot, gfn);
    }
}

pub fn misconfiguration<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    let gpa = v.vmcs.read64(Vmcs64::GuestPhysicalAddress)?;
    Err(Stop::Fatal(format!(
        "EPT misconfiguration at gpa {gpa:#x} (a hypervisor bug: an EPT entry is malformed) rip={:#x}",
        v.rip()
    )))
}
