//! The end-of-run summary: per vCPU, exits by reason, EPT pages mapped, slot
//! lookups by level and cycles; then one machine-readable `SUMMARY {json}`.

use crate::mm::host::KernelMemory;
use crate::mm::memslot::LookupStats;
use crate::println;
use crate::report::schema;
use crate::vcpu::Stop;
use crate::vcpu::VcpuReport;
use crate::vm::Vm;
use crate::vmx::exit::ExitReason;
use crate::workload::dirtylog;
use alloc::format;
use alloc::string::String;
use core::fmt::Write;

/// Slot lookups by level, for people.
pub fn lookups_text(l: &LookupStats) -> String {
    alloc::format!(
        "vcpu hit {}, vm hit {}, search {}, miss {}",
        l.vcpu_hits,
        l.vm_hits,
        l.searches,
        l.misses
    )
}

fn lookups(l: &LookupStats) -> schema::Lookups {
    schema::Lookups {
        vcpu_hit: l.vcpu_hits,
        vm_hit: l.vm_hits,
        search: l.searches,
        miss: l.misses,
    }
}

fn dirty_log(o: &dirtylog::Outcome) -> schema::DirtyLogSummary {
    schema::DirtyLogSummary {
        pages_per_vcpu: o.pages_per_vcpu,
        ok: o.ok,
        mismatches: o.mismatches,
        rounds: o.mismatches.map(|_| o.rounds),
        phases: o
            .phases
            .iter()
            .map(|p| schema::Phase {
                name: p.name.clone(),
                cycles: p.cycles,
                exits: p.counters.exits,
                ept_violations: p.counters.ept_violations,
                lookups: lookups(&p.counters.lookups),
                pages_written: p.pages.map(|(w, _)| w),
                pages_dirty: p.pages.map(|(_, d)| d),
            })
            .collect(),
    }
}

/// The run as the SUMMARY schema.
fn summary(
    vm: &Vm<KernelMemory>,
    reports: &[&VcpuReport],
    dirty: Option<&dirtylog::Outcome>,
    tsc_hz: u64,
    ok: bool,
) -> schema::Summary {
    let c = &vm.config;
    schema::Summary {
        guest: String::from(c.guest),
        mem_mib: c.mem_mib,
        mem_pages: vm.mem_pages(),
        slots: c.slots,
        cache: vm.cache_mode,
        vcpus: vm.vcpus,
        tsc_hz,
        result: if ok {
            schema::RunResult::Success
        } else {
            schema::RunResult::Failure
        },
        exit_code: vm.events.exit_code(),
        ept: schema::EptSummary {
            leaves_4k: vm.ept.stats().leaves_4k,
            leaves_2m: vm.ept.stats().leaves_2m,
        },
        vcpu: reports
            .iter()
            .map(|r| {
                let s = &r.stats;
                schema::VcpuSummary {
                    id: r.id,
                    status: match &r.stop {
                        Stop::Shutdown { status: 0 } => String::from("ok"),
                        other => format!("{other}"),
                    },
                    exits: ExitReason::ALL
                        .iter()
                        .filter(|reason| s.exits[reason.as_index()] > 0)
                        .map(|reason| (String::from(reason.name()), s.exits[reason.as_index()]))
                        .collect(),
                    ept_mapped: s.ept_mapped,
                    ept_spurious: s.ept_spurious,
                    dirty_faults: s.dirty_faults,
                    lookups: lookups(&s.lookups),
                    cycles: s.cycles,
                    report: r
                        .guest_report
                        .map(|(status, value)| schema::GuestReport { status, value }),
                }
            })
            .collect(),
        dirty_log: dirty.map(dirty_log),
    }
}

pub fn print(
    vm: &Vm<KernelMemory>,
    reports: &[&VcpuReport],
    dirty: Option<&dirtylog::Outcome>,
    tsc_hz: u64,
    ok: bool,
) {
    println!("run summary (cycles are TSC cycles; under Bochs the TSC is emulated and follows instructions)");
    for r in reports {
        let s = &r.stats;
        println!("vcpu{}: ended: {}", r.id, r.stop);
        if let Some((status, value)) = r.guest_report {
            println!("  guest report: status {status:#x}, value {value:#x}");
        }
        let mut exits = String::new();
        for reason in ExitReason::ALL {
            let n = s.exits[reason.as_index()];
            if n > 0 {
                let _ = write!(exits, " {}={n}", reason.name());
            }
        }
        println!("  exits: {}{exits}", s.total_exits());
        println!(
            "  EPT pages mapped: {} (faults already resolved by another vCPU: {}, dirty-log write faults: {})",
            s.ept_mapped, s.ept_spurious, s.dirty_faults
        );
        println!("  slot lookups: {}", lookups_text(&s.lookups));
        println!("  cycles: {}", s.cycles);
    }
    if let Some(d) = dirty {
        print_dirty_log(d);
    }
    if let Some(code) = vm.events.exit_code() {
        println!(
            "guest exit code (isa-debug-exit): {code} ({code:#x}); {}",
            if code == 0 { "a pass" } else { "a failure" }
        );
    }

    let summary = summary(vm, reports, dirty, tsc_hz, ok);
    match serde_json::to_string(&summary) {
        Ok(j) => println!("{}{j}", schema::SUMMARY_PREFIX),
        Err(e) => println!("SUMMARY could not be serialized: {e}"),
    }
}

/// KVM-style lines, then the per-phase table.
pub fn print_dirty_log(o: &dirtylog::Outcome) {
    for p in &o.phases {
        println!("{} time: {} cycles", p.name, p.cycles);
    }
    for p in &o.phases {
        let c = &p.counters;
        let mut line = String::new();
        let _ = write!(
            line,
            "  {:<34} exits {:>8}  EPT violations {:>8}  lookups: {}",
            p.name,
            c.exits,
            c.ept_violations,
            lookups_text(&c.lookups)
        );
        if let Some((w, d)) = p.pages {
            let _ = write!(line, "  pages written {w} dirty {d}");
        }
        println!("{line}");
    }
    if let Some(m) = o.mismatches {
        println!(
            "dirty log exactness (concurrent, {} rounds): {m} page(s) differ between the shadow copy and guest memory",
            o.rounds
        );
    }
}
