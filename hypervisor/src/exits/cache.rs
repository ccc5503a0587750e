//! INVD (exit reason 13; it exits unconditionally). Invalidating the caches
//! without writing them back would throw away the host's data too, so INVD
//! is completed as a no-op, as KVM does: caches are coherent, everything the
//! guest wrote stays visible, which a program that relies on INVD losing
//! data could not expect on a multiprocessor anyway. WBINVD does not exit
//! ("WBINVD exiting" is off) and runs natively.

use crate::mm::HostMemory;
use crate::vcpu::{Action, Hw, Stop, Vcpu};

pub fn invd<H: Hw, M: HostMemory>(v: &mut Vcpu<H, M>) -> Result<Action, Stop> {
    v.skip_instruction()?;
    Ok(Action::Resume)
}
