//! MMIO: an EPT violation at a guest-physical address a device claims. The
//! VM exit says which gpa was touched, not how: the instruction is fetched
//! through the guest's own page tables (`mm::walk`), decoded and carried
//! out against the device (`decode`), and RIP moves past it.
//!
//! The exit's instruction-length field is not valid for EPT violations
//! (SDM 28.2.5), so the length comes from the decoded bytes. A page fault
//! while fetching them is the guest's: #PF is injected with the error code,
//! and CR2 is set through [`Hw::set_guest_cr2`] (the VMCS has no CR2
//! field; the guest's CR2 is the real register, SDM 27.3 and 28.3).
//!
//! Where accesses go: [`Target`] is the one place. The vCPU's own local
//! APIC page (at its IA32_APIC_BASE, while the APIC is enabled in xAPIC
//! mode, SDM 11.4.1) comes first; everything else goes to the VM-wide MMIO
//! bus.

use crate::decode::{self, EmulateError, MmioAccess, Regs, SegmentBases, MAX_INSN_LEN};
use crate::devices::lapic::Lapic;
use crate::devices::MmioBus;
use crate::mm::guest_mem::GuestMem;
use crate::mm::memslot::SlotFlags;
use crate::mm::walk::{AccessKind, PageTableMemory, PagingMode, Walk, WalkAccess, WalkError};
use crate::mm::HostMemory;
use crate::vcpu::{Action, Hw, Stop, Vcpu};
use crate::vm::Vm;
use crate::vmx::exit::{vector, EptViolation, InterruptionInfo};
use crate::vmx::fields::{Vmcs32, Vmcs64, VmcsNatural};
use crate::x86::{CR0_PE, PAGE_SIZE};
use alloc::format;
use core::sync::atomic::{fence, Ordering};
use spin::Mutex;

/// Whether an access at `gpa` that no memslot backs goes to a device:
/// the EPT-violation handler asks this first. A per-vCPU device (the local
/// APIC page) is claimed here too, and routed in [`Target`].
pub fn claims<H: Hw, M: HostMemory>(v: &Vcpu<H, M>, gpa: u64) -> bool {
    apic_page(v).is_some_and(|base| gpa & !0xfff == base) || v.vm.mmio.contains(gpa)
}

/// The guest-physical page of this vCPU's local APIC registers, if they are
/// memory-mapped now (enabled, not in x2APIC mode).
fn apic_page<H: Hw, M: HostMemory>(v: &Vcpu<H, M>) -> Option<u64> {
    let b = v.apic_base;
    (b.enabled() && !b.x2apic()).then(|| b.base())
}

/// Where the emulated access goes.
pub struct Target<'a> {
    /// This vCPU's local APIC and its page.
    pub lapic: Option<(u64, &'a Mutex<Lapic>)>,
    pub bus: &'a MmioBus,
}

impl Target<'_> {
    fn lapic_at(&self, gpa: u64) -> Option<&Mutex<Lapic>> {
        self.lapic
            .and_then(|(base, l)| (gpa & !0xfff == base).then_some(l))
    }
}

impl decode::Mmio for Target<'_> {
    fn read(&mut self, gpa: u64, data: &mut [u8]) {
        if let Some(l) = self.lapic_at(gpa) {
            return l.lock().mmio_read(gpa & 0xfff, data);
        }
        // Unclaimed (an access running past a device's range): all ones.
        self.bus.read(gpa, data);
    }
    fn write(&mut self, gpa: u64, data: &[u8]) {
        if let Some(l) = self.lapic_at(gpa) {
            return l.lock().mmio_write(gpa & 0xfff, data);
        }
        self.bus.write(gpa, data);
    }
}

/// The guest's paging registers, for the walker.
pub(super) fn paging<H: Hw, M: HostMemory>(v: &Vcpu<H, M>) -> Result<Walk, Stop> {
    let h = &v.vmcs;
    let cr0 = h.read_nat(VmcsNatural::GuestCr0)?;
    let cr4 = h.read_nat(VmcsNatural::GuestCr4)?;
    let efer = h.read64(Vmcs64::GuestIa32Efer)?;
    let mut walk = Walk {
        cr0,
        cr3: h.read_nat(VmcsNatural::GuestCr3)?,
        cr4,
        efer,
        pdptes: None,
        maxphyaddr: 36,
        // The CPU fetched this instruction through these very tables before
        // the data access exited: be no stricter than it was (a PS bit in
        // a PDPTE only translates on a CPU with 1 GiB pages).
        gb_pages: true,
        set_accessed_dirty: true,
    };
    // PAE paging: the PDPTEs the CPU holds, saved to the VMCS on exit when
    // EPT is on (SDM 28.3.4).
    if walk.mode() == PagingMode::Pae {
        walk.pdptes = Some([
            h.read64(Vmcs64::GuestPdpte0)?,
            h.read64(Vmcs64::GuestPdpte1)?,
            h.read64(Vmcs64::GuestPdpte2)?,
            h.read64(Vmcs64::GuestPdpte3)?,
        ]);
    }
    // MAXPHYADDR: the host's, passed through by the CPUID policy; 36 when
    // the leaf is absent (SDM Vol. 2, CPUID 80000008H).
    let m = (v.vm.cpuid.answer(v.id, 0x8000_0008, 0)[0] & 0xff) as u8;
    if (32..=52).contains(&m) {
        walk.maxphyaddr = m;
    }
    Ok(walk)
}

/// The guest's page tables as the walker reads and updates them: through
/// the memslots, with the accessed/dirty flag updates the CPU would make
/// logged like any guest write (a dirty-logged slot's page is marked after
/// the write, as `ept::after_write_access` does), and never written in a
/// read-only slot (there the CPU's own update would have exited as a write
/// to read-only memory; the flag is left as it is).
pub(super) struct Tables<'a, M: HostMemory> {
    gm: GuestMem<'a, M>,
    vm: &'a Vm<M>,
}

impl<'a, M: HostMemory> Tables<'a, M> {
    /// The tables as vCPU `v` sees them in its current exit.
    pub(super) fn new<H: Hw>(v: &Vcpu<'a, H, M>) -> Self {
        Tables {
            gm: v.guest_mem(),
            vm: v.vm,
        }
    }
}

impl<M: HostMemory> PageTableMemory for Tables<'_, M> {
    fn read_entry(&mut self, gpa: u64, wide: bool) -> Result<u64, u64> {
        self.gm.read_entry(gpa, wide)
    }
    fn update_entry(&mut self, gpa: u64, wide: bool, old: u64, new: u64) -> Result<bool, u64> {
        let gfn = gpa / PAGE_SIZE;
        let slot = self.gm.slots.lookup(gfn, &mut self.gm.stats).ok_or(gpa)?;
        if slot.flags().contains(SlotFlags::READONLY) {
            return Ok(true);
        }
        let done = self.gm.compare_exchange(gpa, wide, old, new)?;
        if done {
            fence(Ordering::SeqCst);
            if slot.flags().contains(SlotFlags::DIRTY_LOG) {
                self.vm.mark_dirty(slot, gfn);
            }
        }
        Ok(done)
    }
}

/// How a fetch went: the bytes, and why the second page could not be
/// read, if the instruction may run into it.
struct Fetched {
    bytes: [u8; MAX_INSN_LEN],
    len: usize,
    second_page: Option<WalkError>,
    /// The gpa of the second page, when no memslot backs it.
    second_page_unbacked: Option<u64>,
}

/// Reads up to 15 bytes at CS.base + RIP through the guest's page tables,
/// with fetch access at the guest's CPL (SDM 4.6). The bytes may straddle
/// two pages; a fault on the second is kept until the decoder says the
/// instruction needs it.
fn fetch<H: Hw, M: HostMemory>(
    v: &mut Vcpu<H, M>,
    walk: &Walk,
    la: u64,
    cpl: u8,
    wrap32: bool,
) -> Result<Fetched, FetchError> {
    let access = WalkAccess {
        ac: false,
        ..WalkAccess::new(AccessKind::Fetch, cpl)
    };
    let mut gm = Tables::new(v);
    let mut out = Fetched {
        bytes: [0; MAX_INSN_LEN],
        len: 0,
        second_page: None,
        second_page_unbacked: None,
    };
    while out.len < MAX_INSN_LEN {
        let mut at = la.wrapping_add(out.len as u64);
        if wrap32 {
            at &= 0xffff_ffff;
        }
        let t = match walk.translate(&mut gm, at, access) {
            Ok(t) => t,
            // The instruction may end before the next page: decide later.
            Err(e) if out.len > 0 => {
                out.second_page = Some(e);
                break;
            }
            Err(e) => return Err(FetchError::Walk(e)),
        };
        let n = (MAX_INSN_LEN - out.len).min((0x1000 - (at & 0xfff)) as usize);
        match gm.gm.read(t.gpa, &mut out.bytes[out.len..out.len + n]) {
            Ok(()) => out.len += n,
            // The next page is not RAM: the instruction may end before it.
            Err(at) if out.len > 0 => {
                out.second_page_unbacked = Some(at);
                break;
            }
            Err(gpa) => return Err(FetchError::Unbacked { gpa }),
        }
    }
    Ok(out)
}

enum FetchError {
    Walk(WalkError),
    /// The code itself is not in RAM (a device page, or nothing).
    Unbacked {
        gpa: u64,
    },
}

/// Emulates the instruction that touched `gpa`, inside the device range.
pub fn emulate<H: Hw, M: HostMemory>(
    v: &mut Vcpu<H, M>,
    gpa: u64,
    q: &EptViolation,
) -> Result<Action, Stop> {
    v.vm.irq.activate();
    if q.fetch {
        return Err(v.contain(
            "instruction fetch from an MMIO range",
            format!("gpa={gpa:#x}"),
        ));
    }
    if q.gla_valid && !q.translated {
        return Err(v.contain(
            "guest page tables in an MMIO range",
            format!("gpa={gpa:#x}"),
        ));
    }
    // An exit during event delivery (SDM 28.2.4): the access was the CPU's
    // (an exception frame, a descriptor), not the instruction's.
    let vectoring = v.vmcs.read32(Vmcs32::IdtVectoringInfo)?;
    if vectoring & (1 << 31) != 0 {
        return Err(v.contain(
            "event delivery touched an MMIO range",
            format!("gpa={gpa:#x} IDT-vectoring information {vectoring:#x}"),
        ));
    }
    let walk = paging(v)?;
    let h = &v.vmcs;
    let rip = h.read_nat(VmcsNatural::GuestRip)?;
    let rflags = h.read_nat(VmcsNatural::GuestRflags)?;
    let cs_access = h.read32(Vmcs32::GuestCsAccessRights)?;
    // CPL is SS.DPL (SDM 27.3.1.2 / 5.5); 0 in real mode.
    let cpl = if walk.cr0 & CR0_PE == 0 {
        0
    } else {
        ((h.read32(Vmcs32::GuestSsAccessRights)? >> 5) & 3) as u8
    };
    let bits = decode::code_bitness(walk.cr0, walk.efer, rflags, cs_access);
    let segs = SegmentBases([
        h.read_nat(VmcsNatural::GuestEsBase)?,
        h.read_nat(VmcsNatural::GuestCsBase)?,
        h.read_nat(VmcsNatural::GuestSsBase)?,
        h.read_nat(VmcsNatural::GuestDsBase)?,
        h.read_nat(VmcsNatural::GuestFsBase)?,
        h.read_nat(VmcsNatural::GuestGsBase)?,
    ]);
    let linear = if q.gla_valid {
        Some(h.read_nat(VmcsNatural::GuestLinearAddress)?)
    } else {
        None
    };
    let rsp = h.read_nat(VmcsNatural::GuestRsp)?;
    // Linear address of RIP: CS.base + RIP, CS.base 0 in 64-bit mode; 32
    // bits outside IA-32e mode (SDM 3.4.2.1, 3.3.6).
    let wrap32 = bits != 64;
    let la = if wrap32 {
        segs.0[1].wrapping_add(rip) & 0xffff_ffff
    } else {
        rip
    };
    let fetched = match fetch(v, &walk, la, cpl, wrap32) {
        Ok(f) => f,
        Err(FetchError::Walk(WalkError::PageFault(pf))) => return inject_pf(v, pf),
        Err(FetchError::Walk(e)) => {
            return Err(v.contain(
                "MMIO: fetching the instruction failed",
                format!("gpa={gpa:#x} rip={rip:#x} la={la:#x}: {e}"),
            ))
        }
        Err(FetchError::Unbacked { gpa: at }) => {
            return Err(v.contain(
                "MMIO: the instruction is not in RAM",
                format!("gpa={gpa:#x} la={la:#x} code at gpa {at:#x}"),
            ))
        }
    };
    let (vm, id, lapic) = (v.vm, v.id, apic_page(v));
    let mut regs = Regs {
        gprs: &mut v.regs,
        rsp,
        rip,
        rflags,
    };
    let access = MmioAccess { gpa, linear };
    let mut target = Target {
        lapic: lapic.map(|base| (base, &*vm.lapics[id as usize])),
        bus: &vm.mmio,
    };
    let result = decode::emulate(
        &fetched.bytes[..fetched.len],
        bits,
        access,
        &segs,
        &mut regs,
        &mut target,
    );
    let (new_rsp, new_rip, new_rflags) = (regs.rsp, regs.rip, regs.rflags);
    match (result, fetched.second_page) {
        (Ok(_), _) => {
            let h = &mut v.vmcs;
            h.write_nat(VmcsNatural::GuestRip, new_rip)?;
            h.write_nat(VmcsNatural::GuestRflags, new_rflags)?;
            if new_rsp != rsp {
                h.write_nat(VmcsNatural::GuestRsp, new_rsp)?;
            }
            // The instruction completed: blocking by STI or MOV SS, which
            // lasts one instruction, ends with it (SDM 25.4.2 table 25-3).
            let shadow = h.read32(Vmcs32::GuestInterruptibilityState)?;
            if shadow & 0b11 != 0 {
                h.write32(Vmcs32::GuestInterruptibilityState, shadow & !0b11)?;
            }
            // A write to this vCPU's APIC may have sent an IPI or ended a
            // level-triggered interrupt: the router acts on it.
            if q.write && apic_page(v).is_some_and(|base| gpa & !0xfff == base) {
                let w = v.vm.irq.after_lapic_write(v.id);
                v.kick(w.kicks);
            }
            Ok(Action::Resume)
        }
        // The instruction runs into a page the guest has not mapped: the
        // CPU would have faulted fetching it.
        (Err(EmulateError::Truncated { .. }), Some(WalkError::PageFault(pf))) => inject_pf(v, pf),
        (Err(e @ EmulateError::Truncated { .. }), Some(walk_error)) => Err(v.contain(
            "MMIO: fetching the instruction failed",
            format!("gpa={gpa:#x} la={la:#x} on its second page: {walk_error}: {e}"),
        )),
        (Err(e @ EmulateError::Truncated { .. }), None)
            if fetched.second_page_unbacked.is_some() =>
        {
            Err(v.contain(
                "MMIO: the instruction runs into memory no memslot backs",
                format!(
                    "gpa={gpa:#x} la={la:#x} code continues at gpa {:#x}: {e}",
                    fetched.second_page_unbacked.unwrap_or(0)
                ),
            ))
        }
        (Err(e), _) => Err(v.contain(
            "MMIO access the hypervisor does not emulate",
            format!("gpa={gpa:#x} {bits}-bit code at la={la:#x}: {e}"),
        )),
    }
}

/// Injects #PF with `pf`'s error code and sets the guest's CR2.
pub(super) fn inject_pf<H: Hw, M: HostMemory>(
    v: &mut Vcpu<H, M>,
    pf: crate::mm::walk::PageFault,
) -> Result<Action, Stop> {
    v.vmcs.set_guest_cr2(pf.cr2);
    v.inject(
        InterruptionInfo::hardware_exception(vector::PF, true),
        pf.error_code,
    )?;
    Ok(Action::Resume)
}
