//! The end-of-run summary: per vCPU, exits by reason, EPT pages mapped, slot
//! lookups by level and cycles; then one machine-readable `SUMMARY {json}`.

use crate::mm::host::KernelMemory;
use crate::mm::memslot::LookupStats;
use crate::println;
use crate::vcpu::Stop;
use crate::vcpu::VcpuReport;
use crate::vm::Vm;
use crate::vmx::exit::ExitReason;
use crate::workload::dirtylog;
use alloc::string::String;
use core::fmt::Write;

/// Escapes a string for JSON.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

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

/// Slot lookups by level, as the SUMMARY's `"lookups":{...}` member.
pub fn lookups_json(out: &mut String, l: &LookupStats) {
    let _ = write!(
        out,
        "\"lookups\":{{\"vcpu_hit\":{},\"vm_hit\":{},\"search\":{},\"miss\":{}}}",
        l.vcpu_hits, l.vm_hits, l.searches, l.misses
    );
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

    let c = &vm.config;
    let mut j = String::new();
    j.push_str("{\"guest\":");
    json_str(&mut j, c.guest);
    let _ = write!(
        j,
        ",\"mem_mib\":{},\"mem_pages\":{},\"slots\":{},\"cache\":",
        c.mem_mib,
        vm.mem_pages(),
        c.slots
    );
    json_str(&mut j, c.cache);
    let _ = write!(
        j,
        ",\"vcpus\":{},\"tsc_hz\":{tsc_hz},\"result\":\"{}\",\"ept\":{{\"leaves_4k\":{}}},\"vcpu\":[",
        vm.vcpus,
        if ok { "success" } else { "failure" },
        vm.ept.stats().leaves_4k
    );
    for (i, r) in reports.iter().enumerate() {
        let s = &r.stats;
        if i > 0 {
            j.push(',');
        }
        let _ = write!(j, "{{\"id\":{},\"status\":", r.id);
        let status = match &r.stop {
            Stop::Shutdown { status: 0 } => String::from("ok"),
            other => alloc::format!("{other}"),
        };
        json_str(&mut j, &status);
        j.push_str(",\"exits\":{");
        let mut first = true;
        for reason in ExitReason::ALL {
            let n = s.exits[reason.as_index()];
            if n > 0 {
                if !first {
                    j.push(',');
                }
                first = false;
                json_str(&mut j, reason.name());
                let _ = write!(j, ":{n}");
            }
        }
        let _ = write!(
            j,
            "}},\"ept_mapped\":{},\"ept_spurious\":{},\"dirty_faults\":{},",
            s.ept_mapped, s.ept_spurious, s.dirty_faults
        );
        lookups_json(&mut j, &s.lookups);
        let _ = write!(j, ",\"cycles\":{}", s.cycles);
        if let Some((status, value)) = r.guest_report {
            let _ = write!(j, ",\"report\":{{\"status\":{status},\"value\":{value}}}");
        }
        j.push('}');
    }
    j.push(']');
    if let Some(d) = dirty {
        j.push_str(",\"dirty_log\":");
        dirty_log_json(d, &mut j);
    }
    j.push('}');
    println!("SUMMARY {j}");
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

/// The `dirty_log` member of the SUMMARY JSON.
pub fn dirty_log_json(o: &dirtylog::Outcome, out: &mut String) {
    let _ = write!(
        out,
        "{{\"pages_per_vcpu\":{},\"ok\":{},",
        o.pages_per_vcpu, o.ok
    );
    if let Some(m) = o.mismatches {
        let _ = write!(out, "\"mismatches\":{m},\"rounds\":{},", o.rounds);
    }
    out.push_str("\"phases\":[");
    for (i, p) in o.phases.iter().enumerate() {
        let c = &p.counters;
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "{{\"name\":\"{}\",\"cycles\":{},\"exits\":{},\"ept_violations\":{},",
            p.name, p.cycles, c.exits, c.ept_violations
        );
        lookups_json(out, &c.lookups);
        if let Some((w, d)) = p.pages {
            let _ = write!(out, ",\"pages_written\":{w},\"pages_dirty\":{d}");
        }
        out.push('}');
    }
    out.push_str("]}");
}
