//! Cross-vCPU requests, one mechanism for everything that must reach a vCPU
//! from elsewhere (Linux KVM's `kvm_make_all_cpus_request` and
//! `kvm_vcpu_kick`):
//!
//! - "flush guest-physical mappings before re-entry, and let me wait until
//!   every vCPU has": the requester bumps a generation and kicks every vCPU
//!   out of the guest; each vCPU, before its next VM entry, sees the new
//!   generation, flushes (INVEPT) and acknowledges it. A vCPU that stopped
//!   acknowledges everything for good.
//! - "kick vCPU N": an IPI to its core, so that it leaves the guest now (with
//!   external-interrupt exiting) and services its requests before re-entry.
//!
//! Why a generation and not a flag: a vCPU that is slow to answer one flush
//! must not miss the next one, and the requester must know which flush was
//! acknowledged.

use crate::limits::MAX_CPUS;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// What a stopped vCPU has acknowledged: every generation.
const STOPPED: u64 = u64::MAX;

pub struct Requests {
    vcpus: u32,
    /// The newest flush generation asked for.
    flush_gen: AtomicU64,
    /// The generation each vCPU has flushed up to.
    flushed: [AtomicU64; MAX_CPUS],
    /// Halted with interrupts off: only an NMI, INIT or SIPI wakes it.
    halted: [AtomicBool; MAX_CPUS],
    kick: &'static (dyn Fn(u32) + Sync),
}

impl Requests {
    /// Requests for `vcpus` vCPUs; `kick(n)` sends vCPU `n` out of the guest.
    pub fn new(vcpus: u32, kick: &'static (dyn Fn(u32) + Sync)) -> Self {
        Requests {
            vcpus: vcpus.min(MAX_CPUS as u32),
            flush_gen: AtomicU64::new(0),
            flushed: [const { AtomicU64::new(0) }; MAX_CPUS],
            halted: [const { AtomicBool::new(false) }; MAX_CPUS],
            kick,
        }
    }

    /// vCPU `id` halted with interrupts off (`halted`), or woke from it.
    pub fn set_halted(&self, id: u32, halted: bool) {
        if let Some(a) = self.halted.get(id as usize) {
            a.store(halted, Ordering::SeqCst);
        }
    }

    /// Whether vCPU `id` is halted with interrupts off.
    pub fn is_halted(&self, id: u32) -> bool {
        self.halted
            .get(id as usize)
            .is_some_and(|a| a.load(Ordering::SeqCst))
    }

    /// Whether a vCPU other than `id` can still run: one that has neither
    /// stopped nor halted with interrupts off. A vCPU sets its own halted
    /// flag before asking, so that of two halting at once at least one sees
    /// the other.
    pub fn others_can_run(&self, id: u32) -> bool {
        (0..self.vcpus).any(|o| o != id && !self.is_stopped(o) && !self.is_halted(o))
    }

    /// Every vCPU flushes its guest-physical mappings before it next enters
    /// the guest; returns once all have (or have stopped). Call from outside
    /// the vCPUs (a controller), or from a vCPU that services its own
    /// request first.
    pub fn flush_all_and_wait(&self) {
        let gen = self.flush_gen.fetch_add(1, Ordering::AcqRel) + 1;
        self.kick_all();
        for ack in &self.flushed[..self.vcpus as usize] {
            while ack.load(Ordering::Acquire) < gen {
                core::hint::spin_loop();
            }
        }
    }

    /// Sends vCPU `id` out of the guest.
    pub fn kick(&self, id: u32) {
        (self.kick)(id);
    }

    /// Sends every running vCPU but `except` out of the guest (the VM is
    /// ending: they see why on their next exit).
    pub fn kick_others(&self, except: u32) {
        for id in (0..self.vcpus).filter(|&id| id != except) {
            if self.flushed[id as usize].load(Ordering::Acquire) != STOPPED {
                self.kick(id);
            }
        }
    }

    fn kick_all(&self) {
        for id in 0..self.vcpus {
            if self.flushed[id as usize].load(Ordering::Acquire) != STOPPED {
                self.kick(id);
            }
        }
    }

    /// Called by vCPU `id` before each VM entry (and while it waits outside
    /// the guest): runs `flush` if a flush is pending for it, then
    /// acknowledges. `seen` is the vCPU's own copy of the last generation it
    /// flushed, so that the common case reads one shared line and writes none.
    #[inline]
    pub fn service(&self, id: u32, seen: &mut u64, flush: impl FnOnce()) {
        let gen = self.flush_gen.load(Ordering::Acquire);
        if gen != *seen {
            flush();
            *seen = gen;
            self.flushed[id as usize].store(gen, Ordering::Release);
        }
    }

    /// vCPU `id` will never enter the guest again.
    pub fn stopped(&self, id: u32) {
        if let Some(a) = self.flushed.get(id as usize) {
            a.store(STOPPED, Ordering::Release);
        }
        // A vCPU halted with interrupts off waits for the others: wake it
        // to see whether any is left.
        for o in (0..self.vcpus).filter(|&o| o != id && self.is_halted(o)) {
            (self.kick)(o);
        }
    }

    /// Whether vCPU `id` has stopped for good.
    pub fn is_stopped(&self, id: u32) -> bool {
        self.flushed
            .get(id as usize)
            .is_some_and(|a| a.load(Ordering::Acquire) == STOPPED)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;

    static KICKS: AtomicU32 = AtomicU32::new(0);
    fn count_kick(_: u32) {
        KICKS.fetch_add(1, Ordering::SeqCst);
    }

    #[test]
    fn a_flush_waits_for_every_vcpu_and_each_flushes_once() {
        let r: &'static Requests = Box::leak(Box::new(Requests::new(3, &count_kick)));
        let flushes = Arc::new(AtomicU32::new(0));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads: std::vec::Vec<_> = (0..3)
            .map(|id| {
                let (flushes, done) = (flushes.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut seen = 0;
                    while !done.load(Ordering::Acquire) {
                        r.service(id, &mut seen, || {
                            flushes.fetch_add(1, Ordering::SeqCst);
                        });
                    }
                    // Service once more, then stop.
                    r.service(id, &mut seen, || {
                        flushes.fetch_add(1, Ordering::SeqCst);
                    });
                    r.stopped(id);
                })
            })
            .collect();
        r.flush_all_and_wait();
        assert_eq!(flushes.load(Ordering::SeqCst), 3, "each vCPU flushed once");
        assert!(KICKS.load(Ordering::SeqCst) >= 3, "every vCPU was kicked");
        r.flush_all_and_wait();
        assert_eq!(flushes.load(Ordering::SeqCst), 6);
        done.store(true, Ordering::Release);
        for t in threads {
            t.join().unwrap();
        }
        // Stopped vCPUs acknowledge everything: this returns at once.
        r.flush_all_and_wait();
    }

    #[test]
    fn nothing_pending_means_no_flush() {
        let r = Requests::new(1, &count_kick);
        let mut seen = 0;
        let mut n = 0;
        r.service(0, &mut seen, || n += 1);
        assert_eq!(n, 0);
    }
}
