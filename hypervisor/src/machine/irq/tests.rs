use super::*;
use crate::devices::lapic::reg;
use crate::devices::test_support::ManualClock;
use crate::devices::Terminal;
use crate::machine::pc::PlatformParams;

struct NoSink;
impl Terminal for NoSink {
    fn write(&mut self, _: &[u8]) {}
}

struct Machine {
    p: Platform,
    r: Arc<Router>,
    clock: Arc<ManualClock>,
}

fn machine(vcpus: u32, start: Start) -> Machine {
    let clock = Arc::new(ManualClock::default());
    let p = Platform::new(PlatformParams {
        vcpus,
        ram_below_4g: 16 << 20,
        ram_above_4g: 0,
        clock: clock.clone(),
        serial: Box::new(NoSink),
    })
    .unwrap();
    let r = Router::for_platform(&p, start).unwrap();
    Machine { p, r, clock }
}

impl Machine {
    fn wr(&self, v: u32, off: u64, val: u32) {
        self.p.lapics[v as usize]
            .lock()
            .mmio_write(off, &val.to_le_bytes());
    }

    fn rd(&self, v: u32, off: u64) -> u32 {
        let mut d = [0u8; 4];
        self.p.lapics[v as usize].lock().mmio_read(off, &mut d);
        u32::from_le_bytes(d)
    }

    /// Software-enables every APIC.
    fn enable_all(&self) {
        for v in 0..self.r.vcpus() {
            self.wr(v, reg::SVR, 0x1FF);
        }
    }

    fn irr(&self, v: u32, vector: u8) -> bool {
        let w = self.rd(v, reg::IRR + u64::from(vector >> 5) * 0x10);
        w & (1 << (vector & 31)) != 0
    }

    /// The vCPUs with `vector` in their IRR.
    fn who_has(&self, vector: u8) -> Vec<u32> {
        (0..self.r.vcpus())
            .filter(|&v| self.irr(v, vector))
            .collect()
    }

    fn ipi(&self, from: u32, high: u32, low: u32) -> LapicWrite {
        self.wr(from, reg::ICR_HIGH, high);
        self.wr(from, reg::ICR_LOW, low);
        self.r.after_lapic_write(from)
    }

    fn ioapic_entry(&self, pin: usize, entry: u64) {
        let sel = 0x10 + 2 * pin as u32;
        self.p.mmio.write(ioapic::BASE, &(sel + 1).to_le_bytes());
        self.p
            .mmio
            .write(ioapic::BASE + 0x10, &((entry >> 32) as u32).to_le_bytes());
        self.p.mmio.write(ioapic::BASE, &sel.to_le_bytes());
        self.p
            .mmio
            .write(ioapic::BASE + 0x10, &(entry as u32).to_le_bytes());
    }

    /// Both 8259As initialized: vectors 0x20 and 0x28, everything unmasked.
    fn init_pic(&self) {
        for (port, b) in [
            (0x20, 0x11),
            (0x21, 0x20),
            (0x21, 0x04),
            (0x21, 0x01),
            (0xA0, 0x11),
            (0xA1, 0x28),
            (0xA1, 0x02),
            (0xA1, 0x01),
            (0x21, 0x00),
            (0xA1, 0x00),
        ] {
            self.p.pio.write(port, &[b]);
        }
    }

    fn kicks(&self, k: KickSet) -> Vec<u32> {
        let _ = self;
        k.iter().collect()
    }
}

const FIXED: u32 = 0x4000; // level assert, edge
const LOGICAL: u32 = 1 << 11;
const NMI: u32 = 0x4400;
const INIT_ASSERT: u32 = 0xC500;
const INIT_DEASSERT: u32 = 0x8500;
const SIPI: u32 = 0x4600;
const SELF: u32 = 1 << 18;
const ALL: u32 = 2 << 18;
const ALL_BUT_SELF: u32 = 3 << 18;

#[test]
fn physical_destination_and_broadcast() {
    let m = machine(4, Start::AllRunning);
    m.enable_all();
    let w = m.ipi(0, 2 << 24, FIXED | 0x40);
    assert_eq!(w.ipi_error, None);
    assert_eq!(m.who_has(0x40), [2]);
    assert_eq!(m.kicks(w.kicks), [2]);
    // A changed APIC ID is what physical mode matches.
    m.wr(3, reg::ID, 9 << 24);
    m.ipi(0, 9 << 24, FIXED | 0x41);
    assert_eq!(m.who_has(0x41), [3]);
    m.ipi(0, 3 << 24, FIXED | 0x42);
    assert_eq!(m.who_has(0x42), [] as [u32; 0], "no APIC ID 3 any more");
    let w = m.ipi(1, 0xFF << 24, FIXED | 0x43);
    assert_eq!(m.who_has(0x43), [0, 1, 2, 3], "0xFF: broadcast");
    assert_eq!(m.kicks(w.kicks), [0, 1, 2, 3]);
}

#[test]
fn logical_flat_destinations() {
    let m = machine(4, Start::AllRunning);
    m.enable_all();
    for v in 0..4 {
        m.wr(v, reg::DFR, 0xFFFF_FFFF);
        m.wr(v, reg::LDR, (1 << v) << 24);
    }
    m.ipi(0, 0b0110 << 24, FIXED | LOGICAL | 0x50);
    assert_eq!(m.who_has(0x50), [1, 2]);
    m.ipi(0, 0b1000 << 24, FIXED | LOGICAL | 0x51);
    assert_eq!(m.who_has(0x51), [3]);
    m.ipi(0, 0x10 << 24, FIXED | LOGICAL | 0x52);
    assert_eq!(m.who_has(0x52), [] as [u32; 0]);
    m.ipi(0, 0xFF << 24, FIXED | LOGICAL | 0x53);
    assert_eq!(m.who_has(0x53), [0, 1, 2, 3]);
}

#[test]
fn logical_cluster_destinations() {
    let m = machine(4, Start::AllRunning);
    m.enable_all();
    // Cluster 1: vCPUs 0 and 1 (members 1, 2); cluster 2: vCPUs 2, 3.
    for (v, ldr) in [(0u32, 0x11), (1, 0x12), (2, 0x21), (3, 0x22)] {
        m.wr(v, reg::DFR, 0x0FFF_FFFF);
        m.wr(v, reg::LDR, ldr << 24);
    }
    m.ipi(0, 0x13 << 24, FIXED | LOGICAL | 0x60);
    assert_eq!(m.who_has(0x60), [0, 1]);
    m.ipi(0, 0x22 << 24, FIXED | LOGICAL | 0x61);
    assert_eq!(m.who_has(0x61), [3]);
    m.ipi(0, 0x32 << 24, FIXED | LOGICAL | 0x62);
    assert_eq!(m.who_has(0x62), [] as [u32; 0], "no cluster 3");
    m.ipi(0, 0x10 << 24, FIXED | LOGICAL | 0x63);
    assert_eq!(m.who_has(0x63), [] as [u32; 0], "no member bits");
    // A flat-model APIC reads the same MDA its own way.
    m.wr(3, reg::DFR, 0xFFFF_FFFF);
    m.ipi(0, 0x12 << 24, FIXED | LOGICAL | 0x64);
    assert_eq!(m.who_has(0x64), [1, 3], "0x22 & 0x12 != 0 in flat mode");
}

#[test]
fn shorthands() {
    let m = machine(3, Start::AllRunning);
    m.enable_all();
    // The destination field is ignored with a shorthand.
    let w = m.ipi(1, 0 << 24, FIXED | SELF | 0x70);
    assert_eq!(m.who_has(0x70), [1]);
    assert_eq!(m.kicks(w.kicks.without(1)), [] as [u32; 0]);
    m.ipi(1, 0, FIXED | ALL | 0x71);
    assert_eq!(m.who_has(0x71), [0, 1, 2]);
    let w = m.ipi(1, 0, FIXED | ALL_BUT_SELF | 0x72);
    assert_eq!(m.who_has(0x72), [0, 2]);
    assert_eq!(m.kicks(w.kicks), [0, 2]);
    let w = m.ipi(2, 0, NMI | ALL_BUT_SELF);
    assert_eq!(m.kicks(w.kicks), [0, 1]);
    assert!(m.r.take_nmi(0) && m.r.take_nmi(1) && !m.r.take_nmi(2));
    // Self allows fixed only.
    let w = m.ipi(0, 0, NMI | SELF);
    assert_eq!(
        w.ipi_error,
        Some(IrqError::InvalidShorthand(DeliveryMode::Nmi))
    );
    assert!(!m.r.take_nmi(0));
}

#[test]
fn refused_ipis_say_why() {
    let m = machine(2, Start::AllRunning);
    m.enable_all();
    assert_eq!(
        m.ipi(0, 1 << 24, FIXED | 0x05).ipi_error,
        Some(IrqError::IllegalVector(5))
    );
    assert!(!m.irr(1, 5));
    assert_eq!(
        m.ipi(0, 1 << 24, 0x4200).ipi_error,
        Some(IrqError::SmiNotSupported)
    );
    assert_eq!(
        m.ipi(0, 1 << 24, 0x4330).ipi_error,
        Some(IrqError::ReservedDeliveryMode(3))
    );
    assert_eq!(
        m.ipi(0, 1 << 24, 0x4730).ipi_error,
        Some(IrqError::ReservedDeliveryMode(7))
    );
    assert_eq!(
        m.r.after_lapic_write(0),
        LapicWrite::default(),
        "taken once"
    );
    assert_eq!(m.r.pending_for(1), Pending::default());
}

#[test]
fn lowest_priority_goes_to_the_lowest_apr_then_the_lowest_vcpu() {
    let m = machine(4, Start::AllRunning);
    m.enable_all();
    for v in 0..4 {
        m.wr(v, reg::LDR, 0x01 << 24);
    }
    // All at APR 0: the tie goes to vCPU 0.
    let lowest = FIXED | 0x100 | LOGICAL;
    let w = m.ipi(3, 0x01 << 24, lowest | 0x80);
    assert_eq!(m.who_has(0x80), [0]);
    assert_eq!(m.kicks(w.kicks), [0]);
    // vCPU 0 now has 0x80 requested: APR 0x80. With focus checking off
    // (SVR bit 9) it is not the focus; TPRs make vCPU 2 the lowest.
    m.wr(0, reg::SVR, 0x3FF);
    m.wr(1, reg::TPR, 0x40);
    m.wr(2, reg::TPR, 0x10);
    m.wr(3, reg::TPR, 0x20);
    m.ipi(3, 0x01 << 24, lowest | 0x81);
    assert_eq!(m.who_has(0x81), [2]);
    // Focus: vCPU 1 has 0x90 in service and focus checking on.
    m.r.set_isa_irq(1, false).unwrap();
    m.p.lapics[1].lock().accept_irq(0x90, false);
    m.wr(1, reg::TPR, 0);
    assert_eq!(m.r.acknowledge(1), Some(0x90));
    m.ipi(3, 0x01 << 24, lowest | 0x90);
    assert_eq!(m.who_has(0x90), [1], "the focus processor");
    // A software-disabled APIC is never chosen.
    m.wr(2, reg::SVR, 0xFF);
    m.ipi(3, 0x01 << 24, lowest | 0x82);
    assert_eq!(m.who_has(0x82), [3]);
    // Pure arbitration.
    let view = |vcpu, apr, enabled| ApicView {
        vcpu,
        apic_id: vcpu as u8,
        logical_id: 1,
        flat: true,
        enabled,
        focus_checking: true,
        has_vector: false,
        apr,
        waiting_for_sipi: false,
        on_bus: true,
    };
    assert_eq!(
        lowest_priority(&[
            view(5, 0x30, true),
            view(2, 0x30, true),
            view(1, 0x10, false)
        ]),
        Some(2)
    );
    assert_eq!(lowest_priority(&[view(1, 0, false)]), None);
}

#[test]
fn a_software_disabled_apic_takes_nmi_init_and_sipi_but_not_fixed() {
    let m = machine(2, Start::AllRunning);
    m.wr(0, reg::SVR, 0x1FF);
    // vCPU 1 is software-disabled (reset state).
    let w = m.ipi(0, 1 << 24, FIXED | 0x40);
    assert!(w.kicks.is_empty());
    assert!(!m.irr(1, 0x40));
    m.ipi(0, 1 << 24, NMI);
    assert_eq!(
        m.r.pending_for(1),
        Pending {
            nmi: true,
            interrupt: false
        }
    );
    m.ipi(0, 1 << 24, INIT_ASSERT);
    assert_eq!(m.r.run_state(1), RunState::WaitForSipi);
    assert_eq!(
        m.r.take_cpu_event(1),
        Some(CpuEvent::Init {
            wait_for_sipi: true
        })
    );
    m.ipi(0, 1 << 24, SIPI | 0x9A);
    assert_eq!(
        m.r.take_cpu_event(1),
        Some(CpuEvent::Startup { vector: 0x9A })
    );
    assert_eq!(CpuEvent::start_address(0x9A), 0x9A000);
}

#[test]
fn init_sipi_state_machine() {
    let m = machine(3, Start::BspOnly);
    assert_eq!(m.r.run_state(0), RunState::Running, "the BSP runs");
    assert_eq!(m.r.run_state(1), RunState::WaitForSipi);
    assert_eq!(m.r.run_state(2), RunState::WaitForSipi);
    m.enable_all();
    // In wait-for-SIPI: fixed interrupts and NMIs are ignored.
    let w = m.ipi(0, 1 << 24, FIXED | 0x40);
    assert!(w.kicks.is_empty() && !m.irr(1, 0x40));
    m.ipi(0, 1 << 24, NMI);
    assert!(!m.r.take_nmi(1));
    assert_eq!(m.r.pending_for(1), Pending::default());
    assert!(!m.r.has_work(1));
    // INIT (assert, then the de-assert that is ignored), SIPI, SIPI.
    let w = m.ipi(0, 0, INIT_ASSERT | ALL_BUT_SELF);
    assert_eq!(m.kicks(w.kicks), [1, 2]);
    let w = m.ipi(0, 0, INIT_DEASSERT | ALL_BUT_SELF);
    assert!(w.kicks.is_empty(), "INIT level de-assert is ignored");
    assert_eq!(m.r.run_state(0), RunState::Running);
    assert!(m.r.has_work(1));
    assert_eq!(
        m.r.take_cpu_event(1),
        Some(CpuEvent::Init {
            wait_for_sipi: true
        })
    );
    assert_eq!(m.r.take_cpu_event(1), None);
    let w = m.ipi(0, 1 << 24, SIPI | 0x08);
    assert_eq!(m.kicks(w.kicks), [1]);
    assert_eq!(m.r.run_state(1), RunState::Running);
    let w = m.ipi(0, 1 << 24, SIPI | 0x09);
    assert!(w.kicks.is_empty(), "a second SIPI is ignored");
    assert_eq!(
        m.r.take_cpu_event(1),
        Some(CpuEvent::Startup { vector: 0x08 })
    );
    assert_eq!(m.r.take_cpu_event(1), None);
    // vCPU 2 got INIT but no SIPI: still waiting, its event is INIT only.
    assert_eq!(m.r.run_state(2), RunState::WaitForSipi);
    // INIT on a running AP resets its APIC and sends it back to wait.
    m.wr(1, reg::SVR, 0x1FF);
    m.wr(1, reg::TPR, 0x30);
    m.ipi(0, 1 << 24, NMI);
    m.ipi(0, 1 << 24, INIT_ASSERT);
    assert_eq!(m.r.run_state(1), RunState::WaitForSipi);
    assert_eq!(m.rd(1, reg::TPR), 0, "APIC reset");
    assert_eq!(m.rd(1, reg::ID), 1 << 24, "but not its ID");
    assert!(!m.r.take_nmi(1), "the pending NMI went with the reset");
    // INIT then SIPI before the run loop looked: INIT first.
    m.ipi(0, 1 << 24, SIPI | 0x10);
    assert_eq!(
        m.r.take_cpu_event(1),
        Some(CpuEvent::Init {
            wait_for_sipi: true
        })
    );
    assert_eq!(
        m.r.take_cpu_event(1),
        Some(CpuEvent::Startup { vector: 0x10 })
    );
    // INIT to the BSP: it restarts from the reset vector, never waits.
    m.ipi(1, 0, INIT_ASSERT);
    assert_eq!(m.r.run_state(0), RunState::Running);
    assert_eq!(
        m.r.take_cpu_event(0),
        Some(CpuEvent::Init {
            wait_for_sipi: false
        })
    );
}

#[test]
fn all_running_start_has_no_one_waiting() {
    let m = machine(4, Start::AllRunning);
    for v in 0..4 {
        assert_eq!(m.r.run_state(v), RunState::Running);
        assert_eq!(m.r.take_cpu_event(v), None);
    }
}

#[test]
fn the_pic_reaches_the_bsp_through_lint0_in_extint_mode() {
    let m = machine(2, Start::AllRunning);
    m.init_pic();
    // LINT0 is virtual wire on the BSP from reset, masked on the AP.
    assert_eq!(m.rd(0, reg::LVT_LINT0), 0x700);
    assert_eq!(m.rd(1, reg::LVT_LINT0), LVT_MASKED);
    let k = m.r.set_isa_irq(1, true).unwrap();
    assert_eq!(m.kicks(k), [0]);
    assert!(m.r.pending_for(0).interrupt);
    assert!(!m.r.pending_for(1).interrupt);
    // The vector comes from the INTA cycle.
    assert_eq!(m.r.acknowledge(0), Some(0x21));
    assert_eq!(m.p.pic.lock().isr(), 1 << 1);
    assert!(!m.r.pending_for(0).interrupt);
    assert_eq!(m.r.acknowledge(0), None, "nothing left");
    // A slave IRQ goes through the cascade.
    m.p.pio.write(0x20, &[0x20]); // EOI
    m.r.set_isa_irq(1, false).unwrap();
    m.r.pulse_isa_irq(12).unwrap();
    assert_eq!(m.r.acknowledge(0), Some(0x2C));
    // LINT0 masked: the PIC reaches nobody.
    m.p.pio.write(0xA0, &[0x20]);
    m.p.pio.write(0x20, &[0x20]);
    m.wr(0, reg::SVR, 0x1FF);
    m.wr(0, reg::LVT_LINT0, LVT_MASKED | 0x700);
    let k = m.r.pulse_isa_irq(3).unwrap();
    assert!(k.is_empty());
    assert!(!m.r.pending_for(0).interrupt);
    // Unmasked on the AP instead: it takes it.
    m.wr(1, reg::SVR, 0x1FF);
    m.wr(1, reg::LVT_LINT0, 0x700);
    assert!(m.r.pending_for(1).interrupt);
    assert_eq!(m.r.acknowledge(1), Some(0x23));
}

#[test]
fn an_ioapic_extint_entry_takes_the_vector_from_the_pic() {
    let m = machine(2, Start::AllRunning);
    m.init_pic();
    m.enable_all();
    m.wr(0, reg::LVT_LINT0, LVT_MASKED | 0x700);
    // Pin 2 (IRQ 0) as ExtINT to vCPU 1.
    m.ioapic_entry(2, (1 << 56) | 0x700);
    let k = m.r.pulse_isa_irq(0).unwrap();
    assert_eq!(m.kicks(k), [1]);
    assert!(m.r.pending_for(1).interrupt);
    assert!(!m.r.pending_for(0).interrupt);
    assert_eq!(m.r.acknowledge(1), Some(0x20));
    assert!(!m.r.pending_for(1).interrupt, "taken once");
}

#[test]
fn a_globally_disabled_apic_makes_lint0_the_intr_pin() {
    let m = machine(2, Start::AllRunning);
    m.init_pic();
    m.enable_all();
    m.wr(0, reg::LVT_LINT0, LVT_MASKED);
    m.r.set_apic_enabled(0, false);
    m.p.lapics[0].lock().accept_irq(0x50, false);
    assert!(!m.r.pending_for(0).interrupt, "the APIC is off");
    m.r.pulse_isa_irq(4).unwrap();
    assert_eq!(m.r.acknowledge(0), Some(0x24));
    assert_eq!(m.r.acknowledge(0), None);
    let w = m.ipi(1, 0, FIXED | 0x51);
    assert!(w.kicks.is_empty(), "an APIC that is off takes no IPIs");
    let w = m.ipi(1, 0, INIT_ASSERT | ALL_BUT_SELF);
    assert!(w.kicks.is_empty(), "nor INIT");
    assert_eq!(m.r.take_cpu_event(0), None);
    m.r.set_apic_enabled(0, true);
    assert_eq!(m.r.acknowledge(0), Some(0x50));
}

#[test]
fn an_uninitialized_pic_interrupts_nobody() {
    let m = machine(1, Start::AllRunning);
    assert!(m.r.pulse_isa_irq(4).unwrap().is_empty());
    assert!(!m.r.pending_for(0).interrupt);
    assert_eq!(m.r.acknowledge(0), None);
    // Initialized, the latched request comes through.
    for (port, b) in [(0x20, 0x11), (0x21, 0x08), (0x21, 0x04), (0x21, 0x01)] {
        m.p.pio.write(port, &[b]);
    }
    m.r.pulse_isa_irq(4).unwrap();
    assert!(m.r.pending_for(0).interrupt);
    assert_eq!(m.r.acknowledge(0), Some(0x0C));
}

#[test]
fn pic_port_accesses_that_raise_intr_kick_its_taker() {
    let m = machine(2, Start::AllRunning);
    m.init_pic();
    m.p.pio.write(0x21, &[0xFF]);
    assert!(m.r.set_isa_irq(3, true).unwrap().is_empty(), "masked");
    assert!(m.r.after_pic_access().is_empty());
    m.p.pio.write(0x21, &[0x00]);
    assert_eq!(m.kicks(m.r.after_pic_access()), [0]);
    assert_eq!(m.r.acknowledge(0), Some(0x23));
}

#[test]
fn a_gsi_line_drives_its_pin_only() {
    let m = machine(2, Start::AllRunning);
    m.enable_all();
    m.init_pic();
    assert_eq!(m.r.gsi_line(24).err(), Some(IrqError::NoSuchPin(24)));
    assert!(m.r.isa_line(2).is_err());
    // PCI INTA# style: level, active low; the line idles high.
    let line = m.r.gsi_line(16).unwrap();
    line.set_level(true);
    m.ioapic_entry(16, (1 << 56) | (1 << 15) | (1 << 13) | 0x66);
    assert!(!m.irr(1, 0x66));
    line.set_level(false);
    assert!(m.irr(1, 0x66));
    assert_eq!(m.kicks(m.r.take_deferred_kicks()), [1]);
    assert_eq!(m.p.pic.lock().irr(), 0, "not an ISA line");
}

#[test]
fn isa_irq_0_goes_to_ioapic_pin_2_and_others_one_to_one() {
    let m = machine(2, Start::AllRunning);
    m.enable_all();
    m.wr(0, reg::LVT_LINT0, LVT_MASKED);
    m.ioapic_entry(0, 0x30);
    m.ioapic_entry(2, (1 << 56) | 0x32);
    m.ioapic_entry(8, (1 << 56) | 0x38);
    let k = m.r.pulse_isa_irq(0).unwrap();
    assert_eq!(m.kicks(k), [1]);
    assert_eq!(m.who_has(0x32), [1]);
    assert_eq!(m.who_has(0x30), [] as [u32; 0], "pin 0 is not IRQ 0");
    m.r.pulse_isa_irq(8).unwrap();
    assert_eq!(m.who_has(0x38), [1]);
    assert_eq!(isa_irq_to_gsi(0), 2);
    assert_eq!(isa_irq_to_gsi(9), 9);
    assert_eq!(
        m.r.set_isa_irq(2, true),
        Err(IrqError::NoSuchIsaIrq(2)),
        "the cascade"
    );
    assert_eq!(m.r.set_isa_irq(16, true), Err(IrqError::NoSuchIsaIrq(16)));
    assert_eq!(m.r.set_gsi(24, true), Err(IrqError::NoSuchPin(24)));
    assert!(m.r.set_gsi(20, true).unwrap().is_empty(), "masked pin");
}

#[test]
fn level_eoi_is_broadcast_and_remote_irr_redelivers() {
    let m = machine(2, Start::AllRunning);
    m.enable_all();
    const LEVEL: u64 = 1 << 15;
    const REMOTE_IRR: u64 = 1 << 14;
    m.ioapic_entry(9, (1 << 56) | LEVEL | 0x49);
    let k = m.r.set_gsi(9, true).unwrap();
    assert_eq!(m.kicks(k), [1]);
    assert_ne!(m.p.ioapic.lock().entry(9) & REMOTE_IRR, 0);
    assert_eq!(m.rd(1, reg::TMR + 0x20) & (1 << 9), 1 << 9, "TMR: level");
    // Still asserted, but Remote IRR holds it back.
    assert!(m.r.set_gsi(9, true).unwrap().is_empty());
    assert_eq!(m.r.acknowledge(1), Some(0x49));
    // The EOI goes to the I/O APIC, which fires again: the line is high.
    m.wr(1, reg::EOI, 0);
    let w = m.r.after_lapic_write(1);
    assert_eq!(m.kicks(w.kicks), [1]);
    assert!(m.irr(1, 0x49));
    assert_eq!(m.r.acknowledge(1), Some(0x49));
    // Lowered, then EOI: Remote IRR clears and nothing comes back.
    m.r.set_gsi(9, false).unwrap();
    m.wr(1, reg::EOI, 0);
    let w = m.r.after_lapic_write(1);
    assert!(w.kicks.is_empty());
    assert_eq!(m.p.ioapic.lock().entry(9) & REMOTE_IRR, 0);
    assert!(!m.irr(1, 0x49));
    // An edge vector's EOI is not broadcast.
    m.ioapic_entry(5, (1 << 56) | 0x55);
    m.r.pulse_isa_irq(5).unwrap();
    assert_eq!(m.r.acknowledge(1), Some(0x55));
    m.wr(1, reg::EOI, 0);
    assert!(m.r.after_lapic_write(1).kicks.is_empty());
}

#[test]
fn a_level_message_nobody_accepts_leaves_remote_irr_clear() {
    let m = machine(2, Start::AllRunning);
    m.enable_all();
    const LEVEL: u64 = 1 << 15;
    const REMOTE_IRR: u64 = 1 << 14;
    // To APIC ID 7: there is none.
    m.ioapic_entry(10, (7 << 56) | LEVEL | 0x5A);
    assert!(m.r.set_gsi(10, true).unwrap().is_empty());
    assert_eq!(m.p.ioapic.lock().entry(10) & REMOTE_IRR, 0);
    // The guest fixes the destination: the asserted pin fires at once
    // (through the sink, under the I/O APIC's lock).
    m.ioapic_entry(10, (1 << 56) | LEVEL | 0x5A);
    assert!(m.irr(1, 0x5A));
    assert_ne!(m.p.ioapic.lock().entry(10) & REMOTE_IRR, 0);
    // A software-disabled target does not accept either, on the EOI path.
    assert_eq!(m.r.acknowledge(1), Some(0x5A));
    m.wr(1, reg::EOI, 0);
    m.wr(1, reg::SVR, 0xFF);
    assert!(m.r.after_lapic_write(1).kicks.is_empty());
    assert_eq!(m.p.ioapic.lock().entry(10) & REMOTE_IRR, 0);
    assert!(!m.irr(1, 0x5A));
    // Nor on the sink path (the I/O APIC's EOI register).
    m.p.mmio.write(ioapic::BASE + 0x40, &0x5Au32.to_le_bytes());
    assert_eq!(m.p.ioapic.lock().entry(10) & REMOTE_IRR, 0);
    // Enabled again, the next change of the line delivers.
    m.wr(1, reg::SVR, 0x1FF);
    assert_eq!(m.kicks(m.r.set_gsi(10, true).unwrap()), [1]);
}

#[test]
fn ioapic_register_writes_deliver_through_the_router() {
    static KICKED: AtomicU64 = AtomicU64::new(0);
    fn kick(v: u32) {
        KICKED.fetch_or(1 << v, Ordering::SeqCst);
    }
    let m = machine(2, Start::AllRunning);
    m.enable_all();
    m.r.set_kicker(&kick);
    const LEVEL: u64 = 1 << 15;
    // A masked, asserted level pin fires when the guest unmasks it.
    m.ioapic_entry(10, LVT_MASKED as u64 | LEVEL | (1 << 56) | 0x5A);
    m.r.set_gsi(10, true).unwrap();
    assert!(!m.irr(1, 0x5A));
    m.ioapic_entry(10, LEVEL | (1 << 56) | 0x5A);
    assert!(m.irr(1, 0x5A));
    assert_eq!(m.kicks(m.r.take_deferred_kicks()), [1]);
    assert_eq!(KICKED.load(Ordering::SeqCst), 1 << 1);
    assert!(m.r.take_deferred_kicks().is_empty());
    // The I/O APIC's own EOI register re-fires it too.
    assert_eq!(m.r.acknowledge(1), Some(0x5A));
    m.p.mmio.write(ioapic::BASE + 0x40, &0x5Au32.to_le_bytes());
    assert!(m.irr(1, 0x5A));
    // An SMI entry is refused and counted.
    m.ioapic_entry(11, 0x200 | 0x60);
    m.r.pulse_isa_irq(11).unwrap();
    assert_eq!(m.r.dropped_messages(), 1);
}

#[test]
fn lapic_timer_deadline_and_delivery() {
    let m = machine(2, Start::AllRunning);
    m.enable_all();
    assert_eq!(m.r.next_deadline_ns(1), None);
    m.wr(1, reg::TIMER_DIVIDE, 0xB); // divide by 1: 1 ns a tick
    m.wr(1, reg::LVT_TIMER, 0xE0);
    m.clock.set(1_000);
    m.wr(1, reg::TIMER_INITIAL, 5_000);
    assert_eq!(m.r.next_deadline_ns(1), Some(6_000));
    assert_eq!(m.r.next_deadline_ns(0), None, "vCPU 1's own timer");
    m.clock.set(5_999);
    assert!(m.r.poll_timers().is_empty());
    m.clock.set(6_000);
    let k = m.r.poll_timers();
    assert_eq!(m.kicks(k), [1]);
    assert!(m.r.pending_for(1).interrupt);
    assert_eq!(m.r.acknowledge(1), Some(0xE0));
    assert!(m.r.poll_timers().is_empty(), "one-shot");
    assert_eq!(m.r.next_deadline_ns(1), None);
    // Each vCPU can poll its own: vCPU 0's poll does not see vCPU 1's.
    m.wr(1, reg::EOI, 0);
    m.wr(1, reg::TIMER_INITIAL, 100);
    m.clock.advance(100);
    assert!(m.r.poll_timers_for(0).is_empty());
    assert_eq!(m.kicks(m.r.poll_timers_for(1)), [1]);
    assert_eq!(m.r.acknowledge(1), Some(0xE0));
    // Masked: it expires but kicks nobody.
    m.wr(1, reg::LVT_TIMER, LVT_MASKED | 0xE0);
    m.wr(1, reg::TIMER_INITIAL, 10);
    m.clock.advance(10);
    assert!(m.r.poll_timers().is_empty());
}

#[test]
fn pit_irq0_reaches_the_pic_and_ioapic_pin_2_with_its_deadline() {
    let m = machine(2, Start::AllRunning);
    m.init_pic();
    m.enable_all();
    m.ioapic_entry(2, (1 << 56) | 0x30);
    // Counter 0, mode 2, count 1193 (about 1 ms).
    m.p.pio.write(0x43, &[0x34]);
    m.p.pio.write(0x40, &[0xA9]);
    m.p.pio.write(0x40, &[0x04]);
    let deadline = m.r.next_deadline_ns(0).expect("the PIT runs");
    assert!((999_000..=1_000_200).contains(&deadline), "{deadline}");
    assert_eq!(
        m.r.next_deadline_ns(1),
        None,
        "the BSP keeps the PIT's time"
    );
    // A LAPIC timer that comes sooner wins.
    m.wr(0, reg::TIMER_DIVIDE, 0xB);
    m.wr(0, reg::LVT_TIMER, LVT_MASKED);
    m.wr(0, reg::TIMER_INITIAL, 500);
    assert_eq!(m.r.next_deadline_ns(0), Some(500));
    m.wr(0, reg::TIMER_INITIAL, 0);
    m.clock.set(deadline - 1);
    assert!(m.r.poll_timers().is_empty());
    m.clock.set(deadline);
    let k = m.r.poll_timers();
    assert_eq!(m.kicks(k), [0, 1], "BSP by LINT0 (PIC), vCPU 1 by pin 2");
    assert_eq!(m.r.acknowledge(0), Some(0x20));
    assert_eq!(m.r.acknowledge(1), Some(0x30));
    // Only the BSP's own poll takes the PIT's edges.
    m.p.pio.write(0x20, &[0x20]);
    m.clock.set(deadline + 1_000_000);
    assert!(m.r.poll_timers_for(1).is_empty());
    assert_eq!(m.kicks(m.r.poll_timers_for(0)), [0, 1]);
    assert_eq!(m.r.acknowledge(0), Some(0x20));
    m.wr(1, reg::EOI, 0);
    assert_eq!(m.r.acknowledge(1), Some(0x30));
    // Three periods missed: one edge (an edge input latches one).
    m.p.pio.write(0x20, &[0x20]);
    m.clock.set(deadline + 4 * 1_000_000);
    m.r.poll_timers();
    assert_eq!(m.r.acknowledge(0), Some(0x20));
    assert_eq!(m.r.acknowledge(0), None);
    assert!(m.r.next_deadline_ns(0).unwrap() > deadline + 4 * 1_000_000);
}

#[test]
fn the_uart_interrupts_on_isa_irq_4() {
    let m = machine(2, Start::AllRunning);
    m.enable_all();
    m.ioapic_entry(4, (1 << 56) | 0x34);
    // An APIC-mode guest masks the 8259As (it still sees the line).
    m.init_pic();
    m.p.pio.write(0x21, &[0xFF]);
    m.p.pio.write(0xA1, &[0xFF]);
    // THRE interrupt enabled, OUT2 set: the UART's INTR reaches IRQ 4.
    m.p.pio.write(0x3F9, &[0x02]);
    assert!(!m.irr(1, 0x34), "OUT2 still gates it");
    m.p.pio.write(0x3FC, &[0x08]);
    assert!(m.irr(1, 0x34));
    assert_eq!(m.p.pic.lock().irr() & (1 << 4), 1 << 4, "and on the PIC");
    assert_eq!(m.kicks(m.r.take_deferred_kicks()), [1]);
    assert_eq!(m.r.acknowledge(1), Some(0x34));
    m.wr(1, reg::EOI, 0);
    // Reading IIR clears THRE; a write to THR raises it again (an edge).
    let mut b = [0u8];
    m.p.pio.read(0x3FA, &mut b);
    assert_eq!(b[0] & 0x0F, 0x02);
    m.p.pio.write(0x3F8, b"x");
    assert!(m.irr(1, 0x34));
    // Received data (IER bit 0) the same way.
    m.p.pio.write(0x3F9, &[0x01]);
    assert_eq!(m.r.acknowledge(1), Some(0x34));
    m.wr(1, reg::EOI, 0);
    assert!(!m.irr(1, 0x34));
    m.p.com1.lock().push_input(b"a");
    assert!(m.irr(1, 0x34));
}

#[test]
fn nmis_are_latched_once() {
    let m = machine(2, Start::AllRunning);
    let w = m.ipi(0, 1 << 24, NMI);
    m.ipi(0, 1 << 24, NMI);
    assert_eq!(m.kicks(w.kicks), [1]);
    assert!(m.r.pending_for(1).nmi);
    assert!(m.r.take_nmi(1));
    assert!(!m.r.take_nmi(1));
    assert!(!m.r.pending_for(1).nmi);
}

#[test]
fn kick_sets() {
    let mut k = KickSet::default();
    assert!(k.is_empty());
    k.insert(0);
    k.insert(63);
    k.insert(64);
    k.insert(254);
    k.insert(300); // out of range: ignored
    assert_eq!(k.iter().collect::<Vec<_>>(), [0, 63, 64, 254]);
    assert!(k.contains(254) && !k.contains(1));
    let mut j = KickSet::default();
    j.insert(1);
    j |= k.without(63);
    assert_eq!(j.iter().collect::<Vec<_>>(), [0, 1, 64, 254]);
}

#[test]
fn router_sizes() {
    let clock: Arc<dyn crate::devices::Clock> = Arc::new(ManualClock::default());
    let parts = || Parts {
        lapics: Vec::new(),
        pic: Arc::new(Mutex::new(Pic::new())),
        ioapic: Arc::new(Mutex::new(Ioapic::new(0))),
        pit: Arc::new(Mutex::new(Pit::new(clock.clone()))),
    };
    assert_eq!(
        Router::new(parts(), Start::AllRunning).unwrap_err(),
        IrqError::TooManyVcpus(0)
    );
}

/// Four vCPU threads ping IPIs around, take and EOI what they get and poll
/// the timers, while a device thread drives a level pin, the UART's IRQ 4
/// and I/O APIC register writes (the sink path, under the I/O APIC's lock).
/// A lock-order mistake deadlocks; the test then fails after its timeout.
#[test]
fn concurrent_delivery_does_not_deadlock() {
    extern crate std;
    use std::sync::mpsc;
    use std::time::Duration;
    let m = Arc::new(machine(4, Start::AllRunning));
    m.enable_all();
    m.init_pic();
    m.ioapic_entry(4, (0xFF << 56) | 0x100 | 0x34);
    m.ioapic_entry(9, (1 << 56) | (1 << 15) | 0x49);
    m.p.pio.write(0x3F9, &[0x03]);
    m.p.pio.write(0x3FC, &[0x08]);
    for v in 0..4 {
        m.wr(v, reg::TIMER_DIVIDE, 0xB);
        m.wr(v, reg::LVT_TIMER, (1 << 17) | 0xE0);
        m.wr(v, reg::TIMER_INITIAL, 1000);
    }
    let (tx, rx) = mpsc::channel();
    let mut threads = Vec::new();
    for v in 0..4u32 {
        let (m, tx) = (m.clone(), tx.clone());
        threads.push(std::thread::spawn(move || {
            let mut taken = 0u32;
            for i in 0..2000u32 {
                let to = (v + 1 + i % 3) % 4;
                m.ipi(v, to << 24, FIXED | (0x50 + to));
                while let Some(_vector) = m.r.acknowledge(v) {
                    taken += 1;
                    m.wr(v, reg::EOI, 0);
                    m.r.after_lapic_write(v);
                }
                let _ = m.r.pending_for(v);
                let _ = m.r.next_deadline_ns(v);
                m.r.poll_timers();
                m.clock.advance(7);
            }
            tx.send(taken).unwrap();
        }));
    }
    {
        let (m, tx) = (m.clone(), tx.clone());
        threads.push(std::thread::spawn(move || {
            for i in 0..2000u32 {
                m.r.set_gsi(9, i % 2 == 0).unwrap();
                m.p.pio.write(0x3F8, b"x");
                m.p.com1.lock().push_input(b"y");
                let mut b = [0u8];
                m.p.pio.read(0x3F8, &mut b);
                m.p.mmio.write(ioapic::BASE + 0x40, &0x49u32.to_le_bytes());
                m.ioapic_entry(9, (1 << 56) | (1 << 15) | 0x49);
                m.r.after_pic_access();
            }
            tx.send(0).unwrap();
        }));
    }
    let mut taken = 0;
    for _ in 0..5 {
        taken += rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a thread is stuck: deadlock");
    }
    for t in threads {
        t.join().unwrap();
    }
    assert!(taken > 0);
    // Everything left is takeable, and delivery still works.
    for v in 0..4u32 {
        while m.r.acknowledge(v).is_some() {
            m.wr(v, reg::EOI, 0);
            m.r.after_lapic_write(v);
        }
        assert_eq!(m.rd(v, reg::PPR), 0);
        m.wr(v, reg::LVT_TIMER, LVT_MASKED);
        m.ipi((v + 1) % 4, v << 24, FIXED | 0x70);
        assert_eq!(m.r.acknowledge(v), Some(0x70));
    }
}

/// The sequence an SMP kernel (Linux's `wakeup_secondary_cpu_via_init`,
/// the MP specification's B.4) runs on QEMU's PC, with the run loop's side
/// played by hand.
#[test]
fn an_smp_bring_up_as_a_kernel_does_it() {
    let m = machine(4, Start::BspOnly);
    m.wr(0, reg::SVR, 0x1FF);
    m.wr(0, reg::LDR, 1 << 24);
    for ap in 1..4u32 {
        assert_eq!(m.r.run_state(ap), RunState::WaitForSipi);
        assert!(m.ipi(0, ap << 24, INIT_ASSERT).ipi_error.is_none());
        assert!(m.ipi(0, ap << 24, INIT_DEASSERT).kicks.is_empty());
        let first = m.ipi(0, ap << 24, SIPI | 0x08);
        assert_eq!(m.kicks(first.kicks), [ap]);
        assert!(m.ipi(0, ap << 24, SIPI | 0x08).kicks.is_empty());
        // The AP's run loop.
        assert_eq!(
            m.r.take_cpu_event(ap),
            Some(CpuEvent::Init {
                wait_for_sipi: true
            })
        );
        assert_eq!(
            m.r.take_cpu_event(ap),
            Some(CpuEvent::Startup { vector: 0x08 })
        );
        assert_eq!(m.r.take_cpu_event(ap), None);
        // The AP's trampoline and APIC set-up.
        m.wr(ap, reg::SVR, 0x1FF);
        m.wr(ap, reg::LDR, (1 << ap) << 24);
    }
    // A lowest-priority, logical I/O APIC route to all four.
    m.ioapic_entry(4, (0x0F << 56) | LOGICAL as u64 | 0x100 | 0x34);
    m.r.pulse_isa_irq(4).unwrap();
    assert_eq!(m.who_has(0x34), [0]);
    assert_eq!(m.r.acknowledge(0), Some(0x34));
    // The BSP is busy with it (APR 0x30): the next goes elsewhere.
    m.r.pulse_isa_irq(4).unwrap();
    assert_eq!(m.who_has(0x34), [0], "focus: 0x34 is in service on vCPU 0");
    m.wr(0, reg::EOI, 0);
    m.wr(0, reg::TPR, 0x80);
    m.wr(0, reg::SVR, 0x3FF); // focus checking off
    m.r.pulse_isa_irq(4).unwrap();
    assert_eq!(m.who_has(0x34), [0, 1], "the lowest APR: vCPU 0's is 0x80");
    // Reschedule IPIs and an NMI (a backtrace request).
    let w = m.ipi(2, 0, FIXED | ALL_BUT_SELF | 0xFD);
    assert_eq!(m.kicks(w.kicks), [0, 1, 3]);
    let w = m.ipi(3, 1 << 24, NMI | LOGICAL);
    assert_eq!(m.kicks(w.kicks), [0]);
    assert!(m.r.take_nmi(0));
    for v in [1, 3] {
        assert_eq!(m.r.acknowledge(v), Some(0xFD));
    }
}
