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

use super::{contain, Action, Stop};
use crate::ept::{EptPerms, MapResult};
use crate::memslot::{Memslot, SlotFlags};
use crate::vcpu::Vcpu;
use crate::vmx::exit::EptViolation;
use crate::vmx::fields::{Vmcs64, VmcsAccess, VmcsNatural};
use alloc::format;
use core::sync::atomic::{fence, Ordering};

pub fn violation(v: &mut Vcpu) -> Result<Action, Stop> {
    let gpa = v.vmcs.read64(Vmcs64::GuestPhysicalAddress)?;
    let q = EptViolation::from_qualification(v.vmcs.read_nat(VmcsNatural::ExitQualification)?);
    let gfn = gpa >> 12;
    let access = if q.write {
        "write"
    } else if q.fetch {
        "fetch"
    } else {
        "read"
    };
    let Some(slot) = v.vm.slots.lookup_vcpu(gfn, &mut v.slot_cache) else {
        return Err(contain(
            v,
            "access to memory no memslot backs",
            format!("gpa={gpa:#x} gfn={gfn:#x} access={access}"),
        ));
    };
    let flags = slot.flags();
    if q.write && flags.contains(SlotFlags::READONLY) {
        return Err(contain(
            v,
            "write to a read-only memslot",
            format!("gpa={gpa:#x} gfn={gfn:#x} slot={} access=write", slot.id()),
        ));
    }
    let page = gpa & !0xfff;
    let hpa = slot.host_phys(gfn);
    let mut perms = EptPerms::READ | EptPerms::EXEC;
    let writable =
        !flags.contains(SlotFlags::READONLY) && (q.write || !flags.contains(SlotFlags::DIRTY_LOG));
    if writable {
        perms |= EptPerms::WRITE;
    }
    match v.vm.ept.map_4k(page, hpa, perms) {
        Ok(MapResult::Mapped) => {
            v.stats.ept_mapped += 1;
            if writable {
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
            let allowed = (!q.read || have.contains(EptPerms::READ))
                && (!q.write || have.contains(EptPerms::WRITE))
                && (!q.fetch || have.contains(EptPerms::EXEC));
            if allowed {
                // Another vCPU mapped it between our fault and our lookup.
                v.stats.ept_spurious += 1;
            } else if q.write && flags.contains(SlotFlags::DIRTY_LOG) {
                // The dirty-logging fast path: restore write access, then log.
                v.vm.ept.make_writable(page);
                v.stats.dirty_faults += 1;
                after_write_access(v, slot, gfn);
            } else if q.write
                && !have.contains(EptPerms::WRITE)
                && !flags.contains(SlotFlags::READONLY)
            {
                // Write-protected by a dirty log that has since been turned
                // off: give write access back.
                v.vm.ept.make_writable(page);
            } else {
                return Err(contain(
                    v,
                    "EPT violation on a mapped page",
                    format!("gpa={gpa:#x} access={access} qualification {q}"),
                ));
            }
        }
        Err(e) => return Err(Stop::Fatal(format!("mapping gpa {page:#x}: {e}"))),
    }
    Ok(Action::Resume)
}

/// Logs a page that just became writable, if its slot is logged. The fence
/// pairs with the controller's (flag set, then sweep): either the controller
/// sees our writable entry and protects it, or we see the flag and log.
fn after_write_access(v: &Vcpu, slot: &Memslot, gfn: u64) {
    fence(Ordering::SeqCst);
    if slot.flags().contains(SlotFlags::DIRTY_LOG) {
        v.vm.mark_dirty(slot, gfn);
    }
}

pub fn misconfiguration(v: &mut Vcpu) -> Result<Action, Stop> {
    let gpa = v.vmcs.read64(Vmcs64::GuestPhysicalAddress)?;
    Err(Stop::Fatal(format!(
        "EPT misconfiguration at gpa {gpa:#x} (a hypervisor bug: an EPT entry is malformed) rip={:#x}",
        v.rip()
    )))
}
