//! The EPT-violation decision, as a pure function of the access, the memslot
//! (if any) and what the EPT already holds. `exits::ept` carries it out.
//!
//! Dirty logging follows KVM: a logged slot's pages are mapped without write
//! access; a write fault restores write access and then logs the page.

use super::ept::EptPerms;
use super::memslot::SlotFlags;

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
