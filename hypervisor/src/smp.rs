//! Cores: which one is running, by its initial APIC ID.

use crate::arch::{apic_id, MAX_CPUS};
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

const NONE: u32 = u32::MAX;
static APIC_IDS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(NONE) }; MAX_CPUS];
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// Records the running core as the next index; returns it.
pub fn register_current() -> usize {
    let id = apic_id();
    let index = COUNT.fetch_add(1, Ordering::SeqCst);
    assert!(index < MAX_CPUS, "more than {MAX_CPUS} cores");
    APIC_IDS[index].store(id, Ordering::SeqCst);
    index
}

/// The running core's index (0 before any core registered).
pub fn current_index() -> usize {
    let id = apic_id();
    let n = COUNT.load(Ordering::Acquire).min(MAX_CPUS);
    (0..n)
        .find(|&i| APIC_IDS[i].load(Ordering::Relaxed) == id)
        .unwrap_or(0)
}
