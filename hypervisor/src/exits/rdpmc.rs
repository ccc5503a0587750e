//! RDPMC (exit reason 15; "RDPMC exiting" is on, so the guest never reads
//! the host's counters). CPUID offers no performance counters (leaf 0xA is
//! zero), so every counter index is invalid: #GP(0), as the SDM says for an
//! ECX that names no counter (Vol. 2B RDPMC).

use crate::mm::HostMemory;
use crate::vcpu::{Action, Hw, Stop, Vcpu};

pub fn handle<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    v.inject_gp()
}
