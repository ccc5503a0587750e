//! Memslots that change while vCPUs run, as KVM does it
//! (`virt/kvm/kvm_main.c`: two `kvm_memslots` per address space, an active
//! and an inactive one, swapped under SRCU).
//!
//! # Publish, then wait for every reader
//! A vCPU reads the slot array only inside a **read section**: from the
//! start of an exit's handling to its end ([`LiveSlots::read`], a guard).
//! While it runs the guest it holds nothing, so a vCPU in the guest never
//! delays an update (like SRCU in KVM, whose read lock is dropped around
//! VM entry).
//!
//! An update ([`LiveSlots::update`]), under the writer lock:
//! 1. copies the active array into the inactive one and applies the change
//!    there (insert, remove, move, flags);
//! 2. publishes it: the inactive array becomes the active one, and the
//!    generation goes up;
//! 3. waits until every reader is outside a read section or inside one that
//!    began after the publication (`synchronize_srcu`). From then on no one
//!    holds the old array: the next update may overwrite it.
//!
//! For a deleted or moved slot, the caller then zaps the slot's old EPT
//! range and flushes guest-physical mappings on every core before its host
//! frames are reused ([`delete_slot`], [`move_slot`]): a vCPU still in its
//! read section with the old array could otherwise map a page of the old
//! range after the zap; once step 3 is over, no lookup can return the slot.
//!
//! # Cached indexes
//! A vCPU's cached slot index (`VcpuSlotCache`) is an array position, good
//! for one array only. It is never trusted: every use masks it into the
//! array ([`index_nospec`](super::memslot::index_nospec)) and checks the
//! gfn against the slot it names, so after a swap a stale index costs one
//! search, never a wrong slot. Each [`ReadGuard`] also carries the
//! generation of the array it holds, for callers that want to drop a
//! cache across generations as KVM's `last_used_slot_gen` does.

use super::ept::{Ept, EptError, EptMemory};
use super::memslot::{CacheMode, Memslot, Memslots, SlotError, SlotFlags};
use core::cell::UnsafeCell;
use core::fmt;
use core::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};

/// Readers (vCPUs) a [`LiveSlots`] tracks: one per possible vCPU id.
/// (`limits` checks at compile time that it covers `MAX_CPUS`.)
pub const MAX_READERS: usize = 64;

/// Keeps a value alone on its cache line.
#[repr(align(64))]
struct Padded(AtomicU64);

/// The VM's memslots, changeable while vCPUs run.
pub struct LiveSlots {
    arrays: [UnsafeCell<Memslots>; 2],
    /// Which of `arrays` readers use.
    active: AtomicUsize,
    /// Bumped at each publication; starts at 1 (0 means "not reading").
    generation: AtomicU64,
    /// Per reader: the generation it entered its read section at, or 0.
    readers: [Padded; MAX_READERS],
    writer: spin::Mutex<()>,
}

// SAFETY: readers only get `&Memslots` to the active array, whose mutable
// state is atomics (flags, the VM-wide index). The writer mutates only the
// inactive array, under `writer`, and only after every reader that could
// hold it has left its read section (`synchronize`).
unsafe impl Sync for LiveSlots {}
// SAFETY: `Memslots` is `Send`; nothing in `LiveSlots` is tied to a thread.
unsafe impl Send for LiveSlots {}

/// A vCPU's read section: the active array as it was when it began.
pub struct ReadGuard<'a> {
    slots: &'a Memslots,
    generation: u64,
    reader: &'a AtomicU64,
}

impl<'a> ReadGuard<'a> {
    /// The array this section reads.
    #[inline]
    pub fn slots(&self) -> &'a Memslots {
        self.slots
    }

    /// The generation of that array.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl Drop for ReadGuard<'_> {
    /// The quiescent point: the reader holds no array any more.
    fn drop(&mut self) {
        self.reader.store(0, Ordering::Release);
    }
}

/// Why a live update failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateError {
    Slot(SlotError),
    Ept(EptError),
}

impl fmt::Display for UpdateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpdateError::Slot(e) => write!(f, "memslot update: {e}"),
            UpdateError::Ept(e) => write!(f, "memslot update, EPT: {e}"),
        }
    }
}

impl From<SlotError> for UpdateError {
    fn from(e: SlotError) -> Self {
        UpdateError::Slot(e)
    }
}

impl LiveSlots {
    /// Starts from `slots` (the inactive array starts empty).
    pub fn new(slots: Memslots) -> Self {
        let mode = slots.mode();
        LiveSlots {
            arrays: [UnsafeCell::new(slots), UnsafeCell::new(Memslots::new(mode))],
            active: AtomicUsize::new(0),
            generation: AtomicU64::new(1),
            readers: [const { Padded(AtomicU64::new(0)) }; MAX_READERS],
            writer: spin::Mutex::new(()),
        }
    }

    /// The current generation (bumped by every update).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Begins reader `reader`'s read section (a vCPU, at an exit). Sections
    /// of one reader do not nest; the writer must not hold one.
    ///
    /// # Panics
    /// If `reader >= MAX_READERS`.
    #[inline]
    pub fn read(&self, reader: usize) -> ReadGuard<'_> {
        let cell = &self.readers[reader].0;
        debug_assert_eq!(cell.load(Ordering::Relaxed), 0, "nested read section");
        let generation = self.generation.load(Ordering::Acquire);
        cell.store(generation, Ordering::SeqCst);
        // Pairs with the writer's fence: either the writer sees us reading
        // (and waits), or we see its new array.
        fence(Ordering::SeqCst);
        let idx = self.active.load(Ordering::Acquire);
        // SAFETY: see `impl Sync`: the active array is only read while
        // readers may hold it; the writer waits for us before writing it.
        let slots = unsafe { &*self.arrays[idx].get() };
        ReadGuard {
            slots,
            generation,
            reader: cell,
        }
    }

    /// Changes the slots while vCPUs run: `change` edits a copy of the
    /// active array, which is then published; returns once no reader holds
    /// the previous array. If `change` fails, nothing is published.
    pub fn update<R>(
        &self,
        change: impl FnOnce(&mut Memslots) -> Result<R, SlotError>,
    ) -> Result<R, SlotError> {
        let _writer = self.writer.lock();
        let active = self.active.load(Ordering::Acquire);
        let inactive = 1 - active;
        // SAFETY: the inactive array has no readers (the previous update
        // waited for them all) and only the writer, whose lock we hold,
        // touches it; the active one is only read.
        let (next, current) = unsafe {
            (
                &mut *self.arrays[inactive].get(),
                &*self.arrays[active].get(),
            )
        };
        next.copy_from(current);
        let result = change(next)?;
        self.active.store(inactive, Ordering::Release);
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        fence(Ordering::SeqCst);
        self.synchronize(generation);
        Ok(result)
    }

    /// Waits until no reader is in a section that began before `generation`.
    fn synchronize(&self, generation: u64) {
        for r in &self.readers {
            loop {
                let seen = r.0.load(Ordering::Acquire);
                if seen == 0 || seen >= generation {
                    break;
                }
                core::hint::spin_loop();
            }
        }
    }

    /// Reads the active array outside any vCPU's section (the controller),
    /// excluding updates meanwhile.
    pub fn with_active<R>(&self, f: impl FnOnce(&Memslots) -> R) -> R {
        let _writer = self.writer.lock();
        let active = self.active.load(Ordering::Acquire);
        // SAFETY: under the writer lock the active array does not change.
        f(unsafe { &*self.arrays[active].get() })
    }

    /// Changes a slot's flags in place (atomics of the active array), under
    /// the writer lock. Returns the previous flags.
    pub fn set_flags(&self, id: u16, flags: SlotFlags) -> Result<SlotFlags, SlotError> {
        self.with_active(|s| {
            s.get_by_id(id)
                .map(|slot| slot.set_flags(flags))
                .ok_or(SlotError::NoSuchSlot(id))
        })
    }

    /// The cache mode.
    /// The active array without the writer lock, for tests that change
    /// nothing while they look.
    #[cfg(test)]
    pub fn active_for_tests(&self) -> &Memslots {
        let active = self.active.load(Ordering::Acquire);
        // SAFETY: tests call this with no update running.
        unsafe { &*self.arrays[active].get() }
    }

    pub fn mode(&self) -> CacheMode {
        self.with_active(Memslots::mode)
    }
}

/// A slot as it was: where it was and what backed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OldSlot {
    pub id: u16,
    pub base_gfn: u64,
    pub npages: u64,
    pub host_pfn: u64,
}

impl OldSlot {
    fn of(s: &Memslot) -> Self {
        OldSlot {
            id: s.id(),
            base_gfn: s.base_gfn(),
            npages: s.npages(),
            host_pfn: s.host_pfn(),
        }
    }
}

/// Deletes a slot while vCPUs run (`KVM_MR_DELETE`): unpublish it, wait for
/// the readers, zap its EPT range, then `flush` guest-physical mappings on
/// every core (and wait for it). When this returns, no vCPU can reach the
/// slot's host frames any more: they may be reused. A later access to its
/// gfns is an EPT violation that finds no slot (MMIO bus or containment).
pub fn delete_slot<M: EptMemory>(
    live: &LiveSlots,
    ept: &Ept<M>,
    id: u16,
    flush: impl FnOnce(),
) -> Result<OldSlot, UpdateError> {
    retire(live, ept, id, |s| s.remove(id), flush)
}

/// Moves a slot while vCPUs run (`KVM_MR_MOVE`): same host frames, new
/// gfns. Its old range is zapped and flushed as for [`delete_slot`]; its
/// contents appear at the new gfns (mapped again on the next faults).
pub fn move_slot<M: EptMemory>(
    live: &LiveSlots,
    ept: &Ept<M>,
    id: u16,
    guest_phys: u64,
    flush: impl FnOnce(),
) -> Result<OldSlot, UpdateError> {
    retire(live, ept, id, |s| s.move_slot(id, guest_phys), flush)
}

/// Applies `change` to slot `id` (which takes it away from its old gfns),
/// then zaps and flushes the old range: the common part of delete and move.
fn retire<M: EptMemory>(
    live: &LiveSlots,
    ept: &Ept<M>,
    id: u16,
    change: impl FnOnce(&mut Memslots) -> Result<(), SlotError>,
    flush: impl FnOnce(),
) -> Result<OldSlot, UpdateError> {
    let old = live.update(|s| {
        let old = s
            .get_by_id(id)
            .map(OldSlot::of)
            .ok_or(SlotError::NoSuchSlot(id))?;
        change(s)?;
        Ok(old)
    })?;
    zap(ept, &old, flush)?;
    Ok(old)
}

fn zap<M: EptMemory>(ept: &Ept<M>, old: &OldSlot, flush: impl FnOnce()) -> Result<(), UpdateError> {
    let page = crate::x86::PAGE_SIZE;
    ept.zap_range(old.base_gfn * page, old.npages * page)
        .map_err(UpdateError::Ept)?;
    flush();
    Ok(())
}

/// Adds a slot while vCPUs run (`KVM_MR_CREATE`). Returns its id.
pub fn add_slot(
    live: &LiveSlots,
    guest_phys: u64,
    size: u64,
    host_phys: u64,
    flags: SlotFlags,
) -> Result<u16, UpdateError> {
    Ok(live.update(|s| s.insert(guest_phys, size, host_phys, flags))?)
}

#[cfg(test)]
mod tests;
