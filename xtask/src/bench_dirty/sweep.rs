//! The sweep's tables: "Iteration 2 dirty memory" across slot counts and
//! cache modes, shaped like the table of the KVM memslot series, and the
//! memslot lookups behind it.

use super::options::CACHES;
use super::report::{lookups_cells, Clock};
use super::{plural, KEY_PHASE};
use hypervisor::limits::CacheMode;
use hypervisor::report::schema::Summary;
use std::fmt::Write as _;

/// One sweep run's outcome.
#[derive(Clone, Debug)]
pub struct Point {
    pub slots: u32,
    pub cache: CacheMode,
    /// None: the run failed (the reason was printed).
    pub summary: Option<Summary>,
}

impl Point {
    pub fn key_cycles(&self) -> Option<u64> {
        Some(self.summary.as_ref()?.phase(KEY_PHASE)?.cycles)
    }
}

pub fn find(points: &[Point], slots: u32, cache: CacheMode) -> Option<&Point> {
    points.iter().find(|p| p.slots == slots && p.cache == cache)
}

/// The slot counts swept, ascending.
pub fn slot_counts(points: &[Point]) -> Vec<u32> {
    let mut v: Vec<u32> = points.iter().map(|p| p.slots).collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn ratio(a: Option<u64>, b: Option<u64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0 => format!("{:.3}", a as f64 / b as f64),
        _ => "-".into(),
    }
}

/// a / b rounded, "-" for b = 0.
fn per(a: u64, b: u64) -> String {
    if b == 0 {
        "-".into()
    } else {
        format!("{}", (a as f64 / b as f64).round() as u64)
    }
}

fn cell(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn config_label(vcpus: u32, slots: u32) -> String {
    format!(
        "{vcpus} vCPU{}, {slots:>2} slot{}",
        plural(vcpus),
        plural(slots)
    )
}

/// The "Iteration 2 dirty memory" table across slot counts and cache modes,
/// shaped like the table of the KVM memslot series.
pub fn sweep_table(points: &[Point], vcpus: u32, clock: Clock) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{KEY_PHASE} time ({}; lower is better)", clock.unit());
    let _ = writeln!(
        o,
        "{:<18} {:>11} {:>11} {:>11} {:>9} {:>11}",
        "config", "vcpu", "vm", "none", "vm/vcpu", "none/vcpu"
    );
    let slots = slot_counts(points);
    let cyc = |s: u32, c: CacheMode| find(points, s, c).and_then(Point::key_cycles);
    for &s in &slots {
        let (v, m, n) = (
            cyc(s, CacheMode::Vcpu),
            cyc(s, CacheMode::Vm),
            cyc(s, CacheMode::None),
        );
        let _ = writeln!(
            o,
            "{:<18} {:>11} {:>11} {:>11} {:>9} {:>11}",
            config_label(vcpus, s),
            cell(v),
            cell(m),
            cell(n),
            ratio(m, v),
            ratio(n, v)
        );
    }
    if let (Some(&lo), Some(&hi)) = (slots.first(), slots.last()) {
        if hi != lo {
            let parts: Vec<String> = CACHES
                .iter()
                .enumerate()
                .map(|(i, &c)| {
                    let r = ratio(cyc(hi, c), cyc(lo, c));
                    if i == 0 {
                        format!("{c} {hi}/{lo} slots: {r}")
                    } else {
                        format!("{c} {hi}/{lo}: {r}")
                    }
                })
                .collect();
            let _ = writeln!(o, "{}", parts.join("   "));
        }
    }
    o
}

/// Why the times differ: the memslot lookups by level in iteration 2.
pub fn lookup_table(points: &[Point], vcpus: u32) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{KEY_PHASE}: memslot lookups by level (all vCPUs), EPT violations, and phase cycles \
         per violation (the vCPUs fault in parallel)"
    );
    let _ = writeln!(
        o,
        "{:<18} {:<5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "config", "cache", "vcpu hit", "vm hit", "search", "miss", "EPT viol", "cyc/viol"
    );
    for s in slot_counts(points) {
        for c in CACHES {
            let Some(p) = find(points, s, c) else {
                continue;
            };
            let ph = p.summary.as_ref().and_then(|x| x.phase(KEY_PHASE));
            let row = match ph {
                Some(ph) => format!(
                    "{} {:>9} {:>10}",
                    lookups_cells(&ph.lookups),
                    ph.ept_violations,
                    per(ph.cycles, ph.ept_violations)
                ),
                None => "(run failed)".into(),
            };
            let _ = writeln!(o, "{:<18} {:<5} {row}", config_label(vcpus, s), c.as_str());
        }
    }
    o
}

/// The SUMMARY objects, each as the hypervisor printed it, as one JSON
/// array (one object per line).
pub fn json_array(objects: &[String]) -> String {
    if objects.is_empty() {
        return "[]\n".into();
    }
    format!("[\n{}\n]\n", objects.join(",\n"))
}

#[cfg(test)]
mod tests {
    use super::super::sample::{points, summary};
    use super::*;
    use crate::emu::Backend;

    #[test]
    fn sweep_table_and_ratios() {
        let clock = Clock::new(Backend::Bochs, 0);
        let t = sweep_table(&points(), 4, clock);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "Iteration 2 dirty memory time (cycles, emulated by Bochs; lower is better)"
        );
        assert!(lines[1].starts_with("config") && lines[1].ends_with("none/vcpu"));
        assert!(lines[2].starts_with("4 vCPUs,  1 slot "), "{t}");
        assert!(lines[5].starts_with("4 vCPUs, 64 slots"), "{t}");
        // 1 slot: vm 1600 / vcpu 1000, none 1300 / 1000.
        let cells: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            &cells[4..],
            ["1000", "1600", "1300", "1.600", "1.300"],
            "{t}"
        );
        // 64 slots: vm 7900, none 7600.
        let cells: Vec<&str> = lines[5].split_whitespace().collect();
        assert_eq!(
            &cells[4..],
            ["1000", "7900", "7600", "7.900", "7.600"],
            "{t}"
        );
        assert_eq!(
            lines[6],
            "vcpu 64/1 slots: 1.000   vm 64/1: 4.938   none 64/1: 5.846"
        );

        // A failed run shows as "-" and its ratios too.
        let mut p = points();
        p.retain(|p| !(p.slots == 16 && p.cache == CacheMode::Vm));
        p.iter_mut()
            .find(|p| p.slots == 4 && p.cache == CacheMode::None)
            .unwrap()
            .summary = None;
        let t = sweep_table(&p, 4, clock);
        let row16: Vec<&str> = t.lines().nth(4).unwrap().split_whitespace().collect();
        assert_eq!(row16[5], "-");
        assert_eq!(row16[7], "-");
        let row4: Vec<&str> = t.lines().nth(3).unwrap().split_whitespace().collect();
        assert_eq!(row4[6], "-");
        assert_eq!(row4[8], "-");

        let l = lookup_table(&points(), 4);
        assert_eq!(l.lines().count(), 2 + 12, "{l}");
        assert!(l.contains("4 vCPUs, 16 slots  vm "), "{l}");
        // 1000 vcpu hits, 24 searches, 1024 EPT violations, 1000 cycles / 1024.
        let row: Vec<&str> = l.lines().nth(2).unwrap().split_whitespace().collect();
        assert_eq!(
            &row[4..],
            ["vcpu", "1000", "0", "24", "0", "1024", "1"],
            "{l}"
        );
    }

    #[test]
    fn sweep_json_is_an_array_of_the_objects() {
        let lines: Vec<String> = [
            summary(1, CacheMode::Vcpu, 2, 10),
            summary(4, CacheMode::Vm, 2, 20),
        ]
        .iter()
        .map(|s| serde_json::to_string(s).unwrap())
        .collect();
        let text = json_array(&lines);
        let a: Vec<Summary> = serde_json::from_str(&text).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[1].cache, CacheMode::Vm);
        assert!(text.contains(&lines[0]), "kept as printed");
        assert_eq!(json_array(&[]), "[]\n");
    }
}
