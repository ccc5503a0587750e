//! The `SUMMARY {json}` line, as types: the kernel prints one at the end of
//! every run and xtask reads it back into the same structs.
//!
//! The shape (field names, order and optional members) is the one the kernel
//! has printed since the first emulator tests:
//!
//! ```text
//! SUMMARY {"guest","mem_mib","mem_pages","slots","cache","vcpus","tsc_hz","result",
//!          "exit_code"?,"ept":{"leaves_4k","leaves_2m"?},
//!          "vcpu":[{"id","status","exits":{reason:count},"ept_mapped","ept_spurious",
//!                   "dirty_faults","lookups":{..},"cycles","report"?:{"status","value"}}],
//!          "dirty_log"?:{"pages_per_vcpu","ok","mismatches"?,"rounds"?,
//!                        "phases":[{"name","cycles","exits","ept_violations","lookups":{..},
//!                                   "pages_written"?,"pages_dirty"?}]}}
//! ```
//!
//! `?` marks a member that is left out when it has no value (`Option::None`).
//! Unknown members are errors: the two sides share this file, so a member
//! only one of them knows is a bug.

use crate::limits::CacheMode;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// The prefix of the summary line in the serial log.
pub const SUMMARY_PREFIX: &str = "SUMMARY ";

/// The whole run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    /// The guest program's name.
    pub guest: String,
    /// Guest RAM of the run configuration (for a dirty-log run: the base
    /// slot only).
    pub mem_mib: u64,
    /// Guest pages in all memslots (a dirty-log run: base and test memory).
    pub mem_pages: u64,
    /// Memslots of the run configuration (a dirty-log run adds a base slot).
    pub slots: u32,
    /// The memslot cache mode.
    #[serde(with = "cache_mode")]
    pub cache: CacheMode,
    pub vcpus: u32,
    /// TSC frequency, 0 when unknown (always under Bochs).
    pub tsc_hz: u64,
    pub result: RunResult,
    /// The value the guest wrote to isa-debug-exit (port 0xF4), if it did:
    /// 0 passes, anything else fails. (QEMU's own exit status for it would
    /// be `(code << 1) | 1`.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u32>,
    pub ept: EptSummary,
    /// One entry per vCPU, in id order.
    pub vcpu: Vec<VcpuSummary>,
    /// Dirty-log runs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_log: Option<DirtyLogSummary>,
}

/// The hypervisor's verdict, as the `HV RESULT:` line says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunResult {
    Success,
    Failure,
}

/// The shared EPT at the end of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EptSummary {
    /// 4 KiB leaf entries present.
    pub leaves_4k: u64,
    /// 2 MiB leaf entries present (`ept_pages=2m`); absent means 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub leaves_2m: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Memslot lookups by the level that answered them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lookups {
    /// The vCPU's own last-used index was right.
    pub vcpu_hit: u64,
    /// The VM-wide last-used index was right.
    pub vm_hit: u64,
    /// A binary search found the slot.
    pub search: u64,
    /// No slot backs the address.
    pub miss: u64,
}

/// One vCPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpuSummary {
    pub id: u32,
    /// `"ok"` for a clean shutdown with status 0, else why it stopped.
    pub status: String,
    /// Exit reason (as the hypervisor names it) → count; reasons never seen
    /// are left out.
    pub exits: BTreeMap<String, u64>,
    /// EPT pages this vCPU mapped.
    pub ept_mapped: u64,
    /// EPT violations already resolved by another vCPU when handled.
    pub ept_spurious: u64,
    /// Write faults on dirty-logged pages.
    pub dirty_faults: u64,
    pub lookups: Lookups,
    /// TSC cycles the vCPU ran.
    pub cycles: u64,
    /// The guest's own report (status 0 = pass), if it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<GuestReport>,
}

/// What the guest reported through its hypercall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestReport {
    pub status: u64,
    pub value: u64,
}

/// The dirty-log workload (`dirtylog` guest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirtyLogSummary {
    pub pages_per_vcpu: u64,
    /// The hypervisor's own verdict on the log.
    pub ok: bool,
    /// Concurrent mode: pages whose shadow copy differs from guest memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatches: Option<u64>,
    /// Concurrent mode: harvest rounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounds: Option<u64>,
    /// In order, named as dirty_log_perf_test names them.
    pub phases: Vec<Phase>,
}

/// One phase of the dirty-log workload ("Populate memory", "Iteration 2
/// dirty memory", ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub name: String,
    pub cycles: u64,
    pub exits: u64,
    pub ept_violations: u64,
    pub lookups: Lookups,
    /// "dirty memory" phases: pages the guest wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages_written: Option<u64>,
    /// "dirty memory" phases: pages the log found dirty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages_dirty: Option<u64>,
}

impl Summary {
    /// The dirty-log phase called `name`.
    pub fn phase(&self, name: &str) -> Option<&Phase> {
        self.dirty_log
            .as_ref()?
            .phases
            .iter()
            .find(|p| p.name == name)
    }
}

impl Phase {
    /// "Iteration 3 get dirty log" → (3, "get dirty log").
    pub fn iteration(&self) -> Option<(u32, &str)> {
        let rest = self.name.strip_prefix("Iteration ")?;
        let (n, what) = rest.split_once(' ')?;
        Some((n.parse().ok()?, what))
    }

    /// (pages written, pages dirty), when the phase has both.
    pub fn pages(&self) -> Option<(u64, u64)> {
        Some((self.pages_written?, self.pages_dirty?))
    }
}

/// [`CacheMode`] as its name (`"vcpu"`, `"vm"`, `"none"`).
mod cache_mode {
    use crate::limits::CacheMode;
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(c: &CacheMode, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(c.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<CacheMode, D::Error> {
        let name = <&str>::deserialize(d)?;
        name.parse()
            .map_err(|_| D::Error::custom("cache must be \"vcpu\", \"vm\" or \"none\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From target/xtask/tests/... serial logs (Bochs 2.7).
    const DIRTY_LOG_SYNC: &str = r#"SUMMARY {"guest":"dirtylog","mem_mib":2,"mem_pages":640,"slots":4,"cache":"vcpu","vcpus":2,"tsc_hz":0,"result":"success","ept":{"leaves_4k":138},"vcpu":[{"id":0,"status":"ok","exits":{"VMCALL":8,"EPT violation":265},"ept_mapped":73,"ept_spurious":0,"dirty_faults":192,"lookups":{"vcpu_hit":257,"vm_hit":0,"search":8,"miss":0},"cycles":5735040,"report":{"status":0,"value":4}},{"id":1,"status":"ok","exits":{"VMCALL":8,"EPT violation":265},"ept_mapped":65,"ept_spurious":8,"dirty_faults":192,"lookups":{"vcpu_hit":257,"vm_hit":0,"search":8,"miss":0},"cycles":5254010,"report":{"status":0,"value":4}}],"dirty_log":{"pages_per_vcpu":64,"ok":true,"phases":[{"name":"Populate memory","cycles":2714510,"exits":150,"ept_violations":146,"lookups":{"vcpu_hit":142,"vm_hit":0,"search":4,"miss":0}},{"name":"Enabling dirty logging","cycles":3645,"exits":0,"ept_violations":0,"lookups":{"vcpu_hit":0,"vm_hit":0,"search":0,"miss":0}},{"name":"Iteration 1 dirty memory","cycles":35405,"exits":130,"ept_violations":128,"lookups":{"vcpu_hit":124,"vm_hit":0,"search":4,"miss":0},"pages_written":128,"pages_dirty":128},{"name":"Iteration 1 get dirty log","cycles":1625,"exits":0,"ept_violations":0,"lookups":{"vcpu_hit":0,"vm_hit":0,"search":0,"miss":0}},{"name":"Iteration 1 clear dirty log","cycles":8095,"exits":0,"ept_violations":0,"lookups":{"vcpu_hit":0,"vm_hit":0,"search":0,"miss":0}},{"name":"Iteration 2 dirty memory","cycles":35415,"exits":130,"ept_violations":128,"lookups":{"vcpu_hit":124,"vm_hit":0,"search":4,"miss":0},"pages_written":128,"pages_dirty":128},{"name":"Iteration 2 get dirty log","cycles":1625,"exits":0,"ept_violations":0,"lookups":{"vcpu_hit":0,"vm_hit":0,"search":0,"miss":0}},{"name":"Iteration 2 clear dirty log","cycles":8095,"exits":0,"ept_violations":0,"lookups":{"vcpu_hit":0,"vm_hit":0,"search":0,"miss":0}},{"name":"Iteration 3 dirty memory","cycles":35410,"exits":130,"ept_violations":128,"lookups":{"vcpu_hit":124,"vm_hit":0,"search":4,"miss":0},"pages_written":128,"pages_dirty":128},{"name":"Iteration 3 get dirty log","cycles":1625,"exits":0,"ept_violations":0,"lookups":{"vcpu_hit":0,"vm_hit":0,"search":0,"miss":0}},{"name":"Iteration 3 clear dirty log","cycles":8095,"exits":0,"ept_violations":0,"lookups":{"vcpu_hit":0,"vm_hit":0,"search":0,"miss":0}},{"name":"Disabling dirty logging","cycles":9515,"exits":0,"ept_violations":0,"lookups":{"vcpu_hit":0,"vm_hit":0,"search":0,"miss":0}}]}}"#;

    /// From target/xtask/tests/... serial logs (Bochs 2.7).
    const DIRTY_LOG_CONCURRENT: &str = r#"SUMMARY {"guest":"dirtylog","mem_mib":2,"mem_pages":640,"slots":4,"cache":"vcpu","vcpus":2,"tsc_hz":0,"result":"success","ept":{"leaves_4k":138},"vcpu":[{"id":0,"status":"ok","exits":{"VMCALL":1873,"EPT violation":329},"ept_mapped":73,"ept_spurious":0,"dirty_faults":256,"lookups":{"vcpu_hit":319,"vm_hit":0,"search":10,"miss":0},"cycles":5486745,"report":{"status":0,"value":1869}},{"id":1,"status":"ok","exits":{"VMCALL":323,"EPT violation":329},"ept_mapped":65,"ept_spurious":8,"dirty_faults":256,"lookups":{"vcpu_hit":319,"vm_hit":0,"search":10,"miss":0},"cycles":5993710,"report":{"status":0,"value":319}}],"dirty_log":{"pages_per_vcpu":64,"ok":true,"mismatches":0,"rounds":3,"phases":[{"name":"Populate memory","cycles":2714510,"exits":1700,"ept_violations":146,"lookups":{"vcpu_hit":142,"vm_hit":0,"search":4,"miss":0}},{"name":"Enabling dirty logging","cycles":3910,"exits":0,"ept_violations":0,"lookups":{"vcpu_hit":0,"vm_hit":0,"search":0,"miss":0}},{"name":"Iteration 1 dirty memory","cycles":1175,"exits":268,"ept_violations":128,"lookups":{"vcpu_hit":124,"vm_hit":0,"search":4,"miss":0},"pages_written":0,"pages_dirty":128},{"name":"Iteration 1 get dirty log","cycles":1620,"exits":0,"ept_violations":0,"lookups":{"vcpu_hit":0,"vm_hit":0,"search":0,"miss":0}},{"name":"Iteration 1 clear dirty log","cycles":87550,"exits":0,"ept_violations":0,"lookups":{"vcpu_hit":0,"vm_hit":0,"search":0,"miss":0}},{"name":"Iteration 2 dirty memory","cycles":1215,"exits":294,"ept_violations":128,"lookups":{"vcpu_hit":124,"vm_hit":0,"search":4,"miss":0},"pages_written":0,"pages_dirty":128},{"name":"Iteration 2 get dirty log","cycles":1620,"exits":0,"ept_violations":0,"lookups":{"vcpu_hit":0,"vm_hit":0,"search":0,"miss":0}},{"name":"Iteration 2 clear dirty log","cycles":87570,"exits":0,"ept_violations":0,"lookups":{"vcpu_hit":0,"vm_hit":0,"search":0,"miss":0}},{"name":"Iteration 3 dirty memory","cycles":1035,"exits":292,"ept_violations":128,"lookups":{"vcpu_hit":124,"vm_hit":0,"search":4,"miss":0},"pages_written":0,"pages_dirty":128},{"name":"Iteration 3 get dirty log","cycles":1625,"exits":0,"ept_violations":0,"lookups":{"vcpu_hit":0,"vm_hit":0,"search":0,"miss":0}},{"name":"Iteration 3 clear dirty log","cycles":87575,"exits":0,"ept_violations":0,"lookups":{"vcpu_hit":0,"vm_hit":0,"search":0,"miss":0}},{"name":"Disabling dirty logging","cycles":9515,"exits":0,"ept_violations":0,"lookups":{"vcpu_hit":0,"vm_hit":0,"search":0,"miss":0}}]}}"#;

    /// From target/xtask/tests/... serial logs (Bochs 2.7).
    const PAGERACE: &str = r#"SUMMARY {"guest":"pagerace","mem_mib":16,"mem_pages":4096,"slots":2,"cache":"vcpu","vcpus":2,"tsc_hz":0,"result":"success","ept":{"leaves_4k":74},"vcpu":[{"id":0,"status":"ok","exits":{"VMCALL":3,"EPT violation":71},"ept_mapped":45,"ept_spurious":26,"dirty_faults":0,"lookups":{"vcpu_hit":71,"vm_hit":0,"search":0,"miss":0},"cycles":3777600,"report":{"status":0,"value":64}},{"id":1,"status":"ok","exits":{"VMCALL":3,"EPT violation":70},"ept_mapped":29,"ept_spurious":41,"dirty_faults":0,"lookups":{"vcpu_hit":70,"vm_hit":0,"search":0,"miss":0},"cycles":4245360,"report":{"status":0,"value":128}}]}"#;

    /// From target/xtask/tests/... serial logs (Bochs 2.7).
    const READONLY_CONTAINED: &str = r#"SUMMARY {"guest":"memtouch","mem_mib":16,"mem_pages":4096,"slots":4,"cache":"vcpu","vcpus":1,"tsc_hz":0,"result":"failure","ept":{"leaves_4k":3072},"vcpu":[{"id":0,"status":"CONTAINED: write to a read-only memslot: gpa=0xc00000 gfn=0xc00 slot=3 access=write rip=0x10022f","exits":{"EPT violation":3073},"ept_mapped":3072,"ept_spurious":0,"dirty_faults":0,"lookups":{"vcpu_hit":3070,"vm_hit":0,"search":3,"miss":0},"cycles":1379293}]}"#;

    /// From target/xtask/tests/... serial logs (Bochs 2.7).
    const SMOKE: &str = r#"SUMMARY {"guest":"smoke","mem_mib":16,"mem_pages":4096,"slots":1,"cache":"vcpu","vcpus":1,"tsc_hz":0,"result":"success","ept":{"leaves_4k":11},"vcpu":[{"id":0,"status":"ok","exits":{"CPUID":2,"VMCALL":6,"I/O instruction":42,"EPT violation":11},"ept_mapped":11,"ept_spurious":0,"dirty_faults":0,"lookups":{"vcpu_hit":11,"vm_hit":0,"search":0,"miss":0},"cycles":5679929,"report":{"status":0,"value":3}}]}"#;

    const SAMPLES: [&str; 5] = [
        DIRTY_LOG_SYNC,
        DIRTY_LOG_CONCURRENT,
        PAGERACE,
        READONLY_CONTAINED,
        SMOKE,
    ];

    fn json(line: &str) -> &str {
        line.strip_prefix(SUMMARY_PREFIX).unwrap()
    }

    #[test]
    fn real_summaries_parse_and_serialize_back_equal() {
        for line in SAMPLES {
            let s: Summary = serde_json::from_str(json(line)).unwrap();
            let back = serde_json::to_string(&s).unwrap();
            let (a, b): (serde_json::Value, serde_json::Value) = (
                serde_json::from_str(json(line)).unwrap(),
                serde_json::from_str(&back).unwrap(),
            );
            assert_eq!(a, b, "{line}");
            assert_eq!(serde_json::from_str::<Summary>(&back).unwrap(), s);
        }
    }

    #[test]
    fn fields_read_as_typed() {
        let s: Summary = serde_json::from_str(json(DIRTY_LOG_CONCURRENT)).unwrap();
        assert_eq!(s.guest, "dirtylog");
        assert_eq!(s.cache, CacheMode::Vcpu);
        assert_eq!(s.result, RunResult::Success);
        assert_eq!(s.vcpu.len(), 2);
        assert_eq!(s.vcpu[1].exits["EPT violation"], 329);
        assert_eq!(
            s.vcpu[0].report,
            Some(GuestReport {
                status: 0,
                value: 1869
            })
        );
        let d = s.dirty_log.as_ref().unwrap();
        assert_eq!((d.mismatches, d.rounds, d.ok), (Some(0), Some(3), true));
        let p = s.phase("Iteration 2 dirty memory").unwrap();
        assert_eq!(p.iteration(), Some((2, "dirty memory")));
        assert_eq!(p.pages(), Some((0, 128)));
        assert_eq!(s.phase("Populate memory").unwrap().pages(), None);

        let r: Summary = serde_json::from_str(json(READONLY_CONTAINED)).unwrap();
        assert_eq!(r.result, RunResult::Failure);
        assert!(r.dirty_log.is_none() && r.vcpu[0].report.is_none());
        assert!(r.vcpu[0].status.starts_with("CONTAINED"));
    }

    #[test]
    fn drift_is_an_error() {
        let smoke = json(SMOKE);
        for bad in [
            smoke.replace("\"ept_spurious\":0,", ""),
            smoke.replace("\"cycles\"", "\"cycles_total\""),
            smoke.replace("\"cache\":\"vcpu\"", "\"cache\":\"lru\""),
            smoke.replace("\"result\":\"success\"", "\"result\":\"maybe\""),
            smoke.replace("\"tsc_hz\":0", "\"tsc_hz\":-1"),
            smoke.replace("\"vcpus\":1,", "\"vcpus\":1,\"colour\":\"blue\","),
        ] {
            assert_ne!(bad, smoke);
            assert!(serde_json::from_str::<Summary>(&bad).is_err(), "{bad}");
        }
    }
}
