//! Reading the `SUMMARY {json}` line of a serial log into the hypervisor's
//! own schema (`hypervisor::report::schema`): the one reader for `run
//! --json`, the emulator tests and the benchmarks.

use anyhow::{anyhow, Context, Result};
use hypervisor::report::schema::{Summary, SUMMARY_PREFIX};

/// The text after `SUMMARY ` on the log's last such line.
pub fn summary_line(log: &str) -> Option<&str> {
    log.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(SUMMARY_PREFIX))
}

/// A SUMMARY object, read into the schema; an error names the path of the
/// field that does not fit (e.g. `vcpu[1].lookups: missing field "search"`).
pub fn parse_summary(json: &str) -> Result<Summary> {
    let de = &mut serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(de).with_context(|| {
        format!(
            "the SUMMARY line is not JSON of the schema (hypervisor::report::schema): {}",
            json.chars().take(200).collect::<String>()
        )
    })
}

/// The log's last SUMMARY, read into the schema.
pub fn summary_of(log: &str) -> Result<Summary> {
    let line = summary_line(log)
        .ok_or_else(|| anyhow!("the serial log has no \"SUMMARY {{json}}\" line"))?;
    parse_summary(line)
}

/// `cargo xtask run`'s exit status for a failed run whose guest wrote
/// `code` to isa-debug-exit (the README's "Exit codes"): the code itself
/// when it fits (1-254; 1, 2 and 3 then read like xtask's own failure,
/// timeout and no-result statuses, and the message on stderr tells them
/// apart), 255 for 255 and above, 1 (failure) without a code. A passing run
/// (code 0) exits 0 before this is asked.
pub fn exit_status(code: Option<u32>) -> i32 {
    match code {
        None | Some(0) => 1,
        Some(c) => c.min(255) as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_exit_codes_map_to_exit_statuses() {
        assert_eq!(exit_status(None), 1);
        assert_eq!(
            exit_status(Some(0)),
            1,
            "code 0 with a failure is a failure"
        );
        assert_eq!(exit_status(Some(7)), 7);
        assert_eq!(exit_status(Some(254)), 254);
        assert_eq!(exit_status(Some(255)), 255);
        assert_eq!(exit_status(Some(0x1_0000)), 255);
    }

    #[test]
    fn the_exit_code_is_read_back() {
        let smoke = r#"{"guest":"k","mem_mib":16,"mem_pages":4096,"slots":1,"cache":"vcpu","vcpus":1,"tsc_hz":0,"result":"failure","exit_code":3,"ept":{"leaves_4k":11},"vcpu":[{"id":0,"status":"guest exit code 3 (0x3)","exits":{},"ept_mapped":11,"ept_spurious":0,"dirty_faults":0,"lookups":{"vcpu_hit":11,"vm_hit":0,"search":0,"miss":0},"cycles":5}]}"#;
        assert_eq!(parse_summary(smoke).unwrap().exit_code, Some(3));
    }

    #[test]
    fn the_last_summary_line_is_read_and_errors_name_the_field() {
        let smoke = r#"{"guest":"smoke","mem_mib":16,"mem_pages":4096,"slots":1,"cache":"vcpu","vcpus":1,"tsc_hz":0,"result":"success","ept":{"leaves_4k":11},"vcpu":[{"id":0,"status":"ok","exits":{"CPUID":2,"VMCALL":6,"I/O instruction":42,"EPT violation":11},"ept_mapped":11,"ept_spurious":0,"dirty_faults":0,"lookups":{"vcpu_hit":11,"vm_hit":0,"search":0,"miss":0},"cycles":5679929,"report":{"status":0,"value":3}}]}"#;
        let log = format!("SUMMARY {{}}\n  SUMMARY {smoke}\nHV RESULT: SUCCESS\n");
        let s = summary_of(&log).unwrap();
        assert_eq!(s.vcpu[0].exits["I/O instruction"], 42);
        let e = parse_summary(&smoke.replace("\"vm_hit\":0,", "")).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("vcpu[0].lookups") && e.contains("vm_hit"), "{e}");
        assert!(summary_of("no summary").is_err());
    }
}
