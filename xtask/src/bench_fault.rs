//! `cargo xtask bench fault-path`: the dirty-log fault path on real host
//! threads (`hypervisor/benches/fault_path.rs`), its table, and an SVG of ns
//! per fault against memslots, one line per cache mode.

use crate::artifacts;
use crate::bench_dirty::plot::{fmt_si, nice_axis, SVG_SIZE};
use crate::workspace;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use plotters::coord::combinators::{BindKeyPoints, IntoLogRange};
use plotters::prelude::*;
use serde::Deserialize;

#[derive(Args, Debug, Clone)]
pub struct FaultPathArgs {
    /// Threads, each a vCPU faulting its own slot (default: the number of cores)
    #[arg(short = 't', long, value_name = "T")]
    pub threads: Option<u32>,
    /// Fewer rounds: a quick look, not a measurement
    #[arg(long)]
    pub quick: bool,
}

#[derive(Deserialize, Debug)]
pub struct Row {
    pub slots: u32,
    pub vcpu_ns: f64,
    pub vm_ns: f64,
    pub none_ns: f64,
}

#[derive(Deserialize, Debug)]
pub struct Results {
    pub threads: u32,
    pub window: u64,
    pub rows: Vec<Row>,
}

pub fn cmd(a: &FaultPathArgs) -> Result<i32> {
    if a.threads == Some(0) {
        bail!("--threads: at least 1");
    }
    let root = workspace::root()?;
    let dir = artifacts::work_dir(&root).join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = dir.join("fault-path.json");
    let _ = std::fs::remove_file(&json);
    let mut c =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(&root).args([
        "bench",
        "--quiet",
        "-p",
        "hypervisor",
        "--bench",
        "fault_path",
        "--",
        "--json",
    ]);
    c.arg(&json);
    if let Some(t) = a.threads {
        c.args(["--threads", &t.to_string()]);
    }
    if a.quick {
        c.arg("--quick");
    }
    if !c.status().context("running cargo bench")?.success() {
        return Ok(1);
    }
    let text =
        std::fs::read_to_string(&json).with_context(|| format!("reading {}", json.display()))?;
    let results: Results = serde_json::from_str(&text).context("parsing the bench's JSON")?;
    let svg_path = dir.join("fault-path.svg");
    std::fs::write(&svg_path, svg(&results)?)
        .with_context(|| format!("writing {}", svg_path.display()))?;
    println!("{}\n{}", json.display(), svg_path.display());
    Ok(0)
}

const COLOURS: [RGBColor; 3] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x7f, 0x7f, 0x7f),
];

/// ns per fault against memslots (log scale), one line per cache mode.
pub fn svg(r: &Results) -> Result<String> {
    let err = |e: DrawingAreaErrorKind<_>| anyhow!("drawing the fault-path plot: {e}");
    let slots: Vec<u32> = r.rows.iter().map(|row| row.slots).collect();
    let lo = *slots.first().context("no rows")?;
    let hi = (*slots.last().unwrap_or(&1)).max(lo * 2);
    let max = r
        .rows
        .iter()
        .flat_map(|row| [row.vcpu_ns, row.vm_ns, row.none_ns])
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let (ymax, step) = nice_axis(max);
    let ticks = (ymax / step).round() as usize + 1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SVG_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let title = format!(
            "Dirty-log write fault on the host, {} threads ({} faults each per repetition)",
            r.threads, r.window
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (lo..hi).log_scale().with_key_points(slots.clone()),
                0f64..ymax,
            )
            .map_err(err)?;
        chart
            .configure_mesh()
            .y_labels(ticks)
            .y_label_formatter(&|v| fmt_si(*v))
            .x_label_formatter(&|s| s.to_string())
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 15))
            .x_desc("memslots (log scale)")
            .y_desc("ns per fault (lower is better)")
            .light_line_style(WHITE)
            .draw()
            .map_err(err)?;
        type Get = fn(&Row) -> f64;
        let series: [(&str, Get); 3] = [
            ("cache vcpu", |row| row.vcpu_ns),
            ("cache vm", |row| row.vm_ns),
            ("cache none", |row| row.none_ns),
        ];
        for (i, (name, get)) in series.iter().enumerate() {
            let colour = COLOURS[i];
            let data: Vec<(u32, f64)> = r.rows.iter().map(|row| (row.slots, get(row))).collect();
            chart
                .draw_series(LineSeries::new(data.clone(), colour.stroke_width(2)))
                .map_err(err)?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(data.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_reads_and_plots_three_lines() {
        let text = r#"{"threads":2,"window":4096,"rows":[
            {"slots":1,"vcpu_ns":57.3,"vm_ns":60.4,"none_ns":59.4,"vm_over_vcpu":1.04,"none_over_vcpu":1.05},
            {"slots":64,"vcpu_ns":58.4,"vm_ns":212.4,"none_ns":68.0,"vm_over_vcpu":3.64,"none_over_vcpu":1.18}]}"#;
        let r: Results = serde_json::from_str(text).unwrap();
        assert_eq!(r.rows.len(), 2);
        assert!((r.rows[1].vm_ns - 212.4).abs() < 1e-9);
        let svg = svg(&r).unwrap();
        for colour in ["#1F77B4", "#D62728", "#7F7F7F"] {
            let lines = svg
                .split("<polyline")
                .filter(|l| l.contains(&format!("stroke=\"{colour}\" stroke-width=\"2\"")))
                .count();
            assert!(lines >= 1, "no line in {colour}: {svg}");
        }
        assert!(svg.contains("cache vm"));
    }
}
