//! The EPT-violation decision, as a pure function of the access, the memslot
//! (if any) and what the EPT already holds. `exits::ept` carries it out.
//!
//! Dirty logging follows KVM: a logged slot's pages are mapped without write
//! access; a write fault restores write access and then logs the page.

use super::ept::{Ept, EptError, EptMemory, EptPerms, MapResult, PageSize, SIZE_2M, SIZE_4K};
use super::memslot::{Memslot, SlotFlags};
use core::sync::atomic::{fence, Ordering};

/// The kind of access that faulted (EPT-violation qualification bits 0-2,
/// SDM 28.2.1 table 28-7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Access {
    pub read: bool,
    pub write: bool,
    pub fetch: bool,
}

impl Access {
    pub fn name(self) -> &'static str {
        if self.write {
            "write"
        } else if self.fetch {
            "fetch"
        } else {
            "read"
        }
    }
}

/// What to do about a fault before looking at the EPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No memslot backs the gfn: a device's MMIO range, or nothing.
    Unbacked,
    /// A write to a read-only slot: contain the guest.
    ReadOnlyWrite,
    /// Map the page with these permissions.
    Map { perms: EptPerms },
}

/// The first decision: from the slot's flags (`None`: no slot).
pub fn decide(access: Access, slot: Option<SlotFlags>) -> Fault {
    let Some(flags) = slot else {
        return Fault::Unbacked;
    };
    let readonly = flags.contains(SlotFlags::READONLY);
    if access.write && readonly {
        return Fault::ReadOnlyWrite;
    }
    let mut perms = EptPerms::READ | EptPerms::EXEC;
    // Writable unless read-only; a logged slot's page only on a write (which
    // is then logged), so that the next write faults once the log is cleared.
    if !readonly && (access.write || !flags.contains(SlotFlags::DIRTY_LOG)) {
        perms |= EptPerms::WRITE;
    }
    Fault::Map { perms }
}

/// When another mapping is already there (another vCPU won the race, or
/// the page is write-protected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapped {
    /// The present entry already allows the access: nothing to do.
    Spurious,
    /// Dirty logging's fast path: restore write access, then log the page.
    RestoreWriteAndLog,
    /// Write-protected by a dirty log that has since been turned off: give
    /// write access back.
    RestoreWrite,
    /// The access is not allowed and nothing allows it: contain.
    Contain,
}

/// The second decision, for a page the EPT maps with `have`.
pub fn decide_mapped(access: Access, flags: SlotFlags, have: EptPerms) -> Mapped {
    let allowed = (!access.read || have.contains(EptPerms::READ))
        && (!access.write || have.contains(EptPerms::WRITE))
        && (!access.fetch || have.contains(EptPerms::EXEC));
    if allowed {
        Mapped::Spurious
    } else if access.write && flags.contains(SlotFlags::DIRTY_LOG) {
        Mapped::RestoreWriteAndLog
    } else if access.write
        && !have.contains(EptPerms::WRITE)
        && !flags.contains(SlotFlags::READONLY)
    {
        Mapped::RestoreWrite
    } else {
        Mapped::Contain
    }
}

/// Which EPT page sizes a fault may map (`--ept-pages 4k|2m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EptPages {
    /// 4 KiB leaves only.
    #[default]
    Only4K,
    /// A 2 MiB leaf where the slot allows it ([`huge_ok`]), else 4 KiB.
    Allow2M,
}

impl EptPages {
    pub const fn as_str(self) -> &'static str {
        match self {
            EptPages::Only4K => "4k",
            EptPages::Allow2M => "2m",
        }
    }
}

impl core::str::FromStr for EptPages {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "4k" => Ok(EptPages::Only4K),
            "2m" => Ok(EptPages::Allow2M),
            _ => Err("unknown EPT page size (expected \"4k\" or \"2m\")"),
        }
    }
}

/// Whether the fault at `gfn` may be mapped with one 2 MiB leaf (KVM's
/// `kvm_mmu_max_mapping_level`): the slot covers the whole 2 MiB-aligned
/// guest range around `gfn`, its host frames there are 2 MiB aligned (they
/// are contiguous within a slot), and the slot is not dirty-logged (logged
/// slots are mapped and protected page by page).
pub fn huge_ok(slot: &Memslot, gfn: u64, flags: SlotFlags) -> bool {
    const PAGES: u64 = SIZE_2M / SIZE_4K;
    let first = gfn & !(PAGES - 1);
    !flags.contains(SlotFlags::DIRTY_LOG)
        && first >= slot.base_gfn()
        && first + PAGES <= slot.end_gfn()
        && slot.host_phys(first).is_multiple_of(SIZE_2M)
}

/// What [`map_fault`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// This call installed a leaf of this size.
    Mapped(PageSize),
    /// Another vCPU had already mapped the page with enough rights.
    Spurious,
    /// Dirty logging's fast path: write access restored, page logged.
    Logged,
    /// Write access given back after a dirty log was turned off.
    RestoredWrite,
}

/// Why [`map_fault`] could not resolve the fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapFailure {
    /// The page is mapped and nothing allows the access: contain the guest.
    Contain,
    /// The EPT maps the page elsewhere than the slot says (a hypervisor bug).
    Mismatch { existing: u64, hpa: u64 },
    /// The EPT refused (out of table frames, ...).
    Ept(EptError),
}

/// Resolves an EPT violation at `gfn` in `slot` whose first decision was
/// [`Fault::Map`] with `perms`: maps the page (2 MiB where `pages` and the
/// slot allow it), or handles an existing mapping. A write that makes a page
/// of a logged slot writable is logged with `mark(slot, gfn)` AFTER the
/// leaf is writable (the protocol of `mm::dirty`). The exit handler and the
/// host fault-path benchmark both run this.
pub fn map_fault<M: EptMemory>(
    ept: &Ept<M>,
    slot: &Memslot,
    gfn: u64,
    access: Access,
    perms: EptPerms,
    pages: EptPages,
    mut mark: impl FnMut(&Memslot, u64),
) -> Result<Resolved, MapFailure> {
    let page = gfn * SIZE_4K;
    let hpa = slot.host_phys(gfn);
    let flags = slot.flags();
    if pages == EptPages::Allow2M && huge_ok(slot, gfn, flags) {
        let base = page & !(SIZE_2M - 1);
        let hbase = hpa & !(SIZE_2M - 1);
        match ept.map_2m(base, hbase, perms) {
            Ok(MapResult::Mapped) => {
                if perms.contains(EptPerms::WRITE) {
                    // As `after_write_access`: if logging was switched on
                    // since we read the flags, the controller's sweep may
                    // have passed before our leaf: protect the 2 MiB
                    // (splitting it) and log all of it, since any page may
                    // have been written through it (more than was written,
                    // never less; the pages now fault on their next write).
                    fence(Ordering::SeqCst);
                    if slot.flags().contains(SlotFlags::DIRTY_LOG) {
                        ept.write_protect_range(base, SIZE_2M)
                            .map_err(MapFailure::Ept)?;
                        let first = base / SIZE_4K;
                        for g in first..first + SIZE_2M / SIZE_4K {
                            mark(slot, g);
                        }
                    }
                }
                return Ok(Resolved::Mapped(PageSize::Size2M));
            }
            Ok(MapResult::AlreadyMapped { .. }) | Err(EptError::Conflict { .. }) => {
                // Mapped meanwhile, or 4 KiB leaves there already: fall
                // through to the 4 KiB path, which sees what is there.
            }
            Err(e) => return Err(MapFailure::Ept(e)),
        }
    }
    let have = match ept.map_4k(page, hpa, perms) {
        Ok(MapResult::Mapped) => {
            after_write_access(slot, gfn, perms, &mut mark);
            return Ok(Resolved::Mapped(PageSize::Size4K));
        }
        Ok(MapResult::AlreadyMapped {
            hpa: existing,
            perms: have,
        }) => {
            if existing != hpa {
                return Err(MapFailure::Mismatch { existing, hpa });
            }
            have
        }
        Err(EptError::Conflict {
            existing: PageSize::Size2M,
            ..
        }) => {
            // A 2 MiB leaf covers the page.
            let Some((existing, have, _)) = ept.translate(page) else {
                return Err(MapFailure::Ept(EptError::Conflict {
                    gpa: page,
                    existing: PageSize::Size2M,
                }));
            };
            if existing != hpa {
                return Err(MapFailure::Mismatch { existing, hpa });
            }
            if !matches!(decide_mapped(access, flags, have), Mapped::Spurious) {
                // Rights must change on this page alone: split the 2 MiB
                // leaf (write-protecting this page, which we then restore).
                ept.write_protect_range(page, SIZE_4K)
                    .map_err(MapFailure::Ept)?;
            }
            have & !EptPerms::WRITE
        }
        Err(e) => return Err(MapFailure::Ept(e)),
    };
    match decide_mapped(access, flags, have) {
        Mapped::Spurious => Ok(Resolved::Spurious),
        Mapped::RestoreWriteAndLog => {
            ept.make_writable(page);
            after_write_access(slot, gfn, EptPerms::WRITE, &mut mark);
            Ok(Resolved::Logged)
        }
        Mapped::RestoreWrite => {
            ept.make_writable(page);
            Ok(Resolved::RestoredWrite)
        }
        Mapped::Contain => Err(MapFailure::Contain),
    }
}

/// Logs a page that just became writable, if its slot is logged. The fence
/// pairs with the controller's (flag set, then sweep): either the controller
/// sees our writable entry and protects it, or we see the flag and log.
#[inline]
fn after_write_access(
    slot: &Memslot,
    gfn: u64,
    perms: EptPerms,
    mark: &mut impl FnMut(&Memslot, u64),
) {
    if perms.contains(EptPerms::WRITE) {
        fence(Ordering::SeqCst);
        if slot.flags().contains(SlotFlags::DIRTY_LOG) {
            mark(slot, gfn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Access = Access {
        read: true,
        write: false,
        fetch: false,
    };
    const W: Access = Access {
        read: false,
        write: true,
        fetch: false,
    };
    const X: Access = Access {
        read: false,
        write: false,
        fetch: true,
    };
    const RX: EptPerms = EptPerms::READ.union(EptPerms::EXEC);
    const RWX: EptPerms = RX.union(EptPerms::WRITE);

    #[test]
    fn first_decision_every_branch() {
        assert_eq!(decide(R, None), Fault::Unbacked);
        assert_eq!(decide(W, None), Fault::Unbacked);
        assert_eq!(decide(W, Some(SlotFlags::READONLY)), Fault::ReadOnlyWrite);
        assert_eq!(
            decide(R, Some(SlotFlags::READONLY)),
            Fault::Map { perms: RX }
        );
        assert_eq!(
            decide(X, Some(SlotFlags::READONLY)),
            Fault::Map { perms: RX }
        );
        assert_eq!(
            decide(R, Some(SlotFlags::empty())),
            Fault::Map { perms: RWX }
        );
        assert_eq!(
            decide(W, Some(SlotFlags::empty())),
            Fault::Map { perms: RWX }
        );
        // Logged: a read maps read-only, a write maps writable (and logs).
        assert_eq!(
            decide(R, Some(SlotFlags::DIRTY_LOG)),
            Fault::Map { perms: RX }
        );
        assert_eq!(
            decide(W, Some(SlotFlags::DIRTY_LOG)),
            Fault::Map { perms: RWX }
        );
    }

    #[test]
    fn second_decision_every_branch() {
        let none = SlotFlags::empty();
        assert_eq!(decide_mapped(R, none, RX), Mapped::Spurious);
        assert_eq!(decide_mapped(W, none, RWX), Mapped::Spurious);
        assert_eq!(decide_mapped(X, none, RX), Mapped::Spurious);
        assert_eq!(
            decide_mapped(W, SlotFlags::DIRTY_LOG, RX),
            Mapped::RestoreWriteAndLog
        );
        assert_eq!(decide_mapped(W, none, RX), Mapped::RestoreWrite);
        assert_eq!(decide_mapped(W, SlotFlags::READONLY, RX), Mapped::Contain);
        // A fetch from a page mapped without execute: nothing allows it.
        assert_eq!(decide_mapped(X, none, EptPerms::READ), Mapped::Contain);
    }

    #[test]
    fn access_names() {
        assert_eq!(W.name(), "write");
        assert_eq!(X.name(), "fetch");
        assert_eq!(R.name(), "read");
    }
}
