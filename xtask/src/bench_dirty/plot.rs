//! The sweep as an SVG line plot (plotters' SVG backend): x = memslots (log
//! scale, ticks at the swept counts), y = "Iteration 2 dirty memory" cycles,
//! one line per cache mode.

use super::options::CACHES;
use super::report::Clock;
use super::sweep::{find, slot_counts, Point};
use super::{plural, KEY_PHASE};
use crate::checks::fmt_size;
use anyhow::{anyhow, Result};
use plotters::coord::combinators::{BindKeyPoints, IntoLogRange};
use plotters::prelude::*;

pub const SVG_SIZE: (u32, u32) = (760, 460);
const COLOURS: [RGBColor; 3] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x7f, 0x7f, 0x7f),
];

/// 1234 → "1234", 12345 → "12.3k", 4500000 → "4.5M".
pub fn fmt_si(v: f64) -> String {
    let (d, suffix) = if v >= 1e9 {
        (1e9, "G")
    } else if v >= 1e6 {
        (1e6, "M")
    } else if v >= 1e4 {
        (1e3, "k")
    } else {
        return format!("{}", v.round() as u64);
    };
    let x = v / d;
    let s = if x >= 100.0 || (x - x.round()).abs() < 1e-9 {
        format!("{:.0}", x)
    } else {
        format!("{:.1}", x)
    };
    format!("{s}{suffix}")
}

/// A round axis maximum ≥ `max` and its tick step (1, 2, 2.5 or 5 × 10^k):
/// four to seven ticks.
pub fn nice_axis(max: f64) -> (f64, f64) {
    if max <= 0.0 || !max.is_finite() {
        return (1.0, 0.2);
    }
    let raw = max / 6.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

/// The sweep plot as SVG text.
pub fn sweep_svg(
    points: &[Point],
    vcpus: u32,
    bytes_per_vcpu: u64,
    clock: Clock,
) -> Result<String> {
    let err = |e: DrawingAreaErrorKind<_>| anyhow!("drawing the sweep plot: {e}");
    let slots = slot_counts(points);
    let lo = *slots.first().unwrap_or(&1);
    // A log axis needs a range; one slot count gets a little room.
    let hi = (*slots.last().unwrap_or(&1)).max(lo * 2);
    let max = points
        .iter()
        .filter_map(Point::key_cycles)
        .max()
        .unwrap_or(0) as f64;
    let (ymax, step) = nice_axis(max);
    let ticks = (ymax / step).round() as usize + 1;

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SVG_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let title = format!(
            "{KEY_PHASE} time vs memslots ({vcpus} vCPU{}, {} per vCPU)",
            plural(vcpus),
            fmt_size(bytes_per_vcpu)
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
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
            .y_desc(format!("{} (lower is better)", clock.unit()))
            .light_line_style(WHITE)
            .draw()
            .map_err(err)?;
        for (i, &c) in CACHES.iter().enumerate() {
            let colour = COLOURS[i];
            let data: Vec<(u32, f64)> = slots
                .iter()
                .filter_map(|&s| Some((s, find(points, s, c)?.key_cycles()? as f64)))
                .collect();
            chart
                .draw_series(LineSeries::new(data.clone(), colour.stroke_width(2)))
                .map_err(err)?
                .label(format!("cache {c}"))
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
    use super::super::sample::points;
    use super::*;
    use crate::checks::KIB;
    use crate::emu::Backend;

    /// Every polyline's points, with its stroke colour.
    fn polylines(svg: &str) -> Vec<(String, Vec<(f64, f64)>)> {
        svg.split("<polyline")
            .skip(1)
            .map(|l| {
                let pts = attr(l, "points")
                    .split_whitespace()
                    .map(|xy| {
                        let (x, y) = xy.split_once(',').unwrap();
                        (x.parse().unwrap(), y.parse().unwrap())
                    })
                    .collect();
                (attr(l, "stroke"), pts)
            })
            .collect()
    }

    /// The value of attribute `name` in the element text `l`.
    fn attr(l: &str, name: &str) -> String {
        let a = l.split(&format!(" {name}=\"")).nth(1).unwrap();
        a[..a.find('"').unwrap()].to_string()
    }

    /// Every text element: (y, the text).
    fn texts(svg: &str) -> Vec<(f64, String)> {
        svg.split("<text")
            .skip(1)
            .map(|t| {
                let body = &t[t.find('>').unwrap() + 1..t.find("</text>").unwrap()];
                (attr(t, "y").parse().unwrap(), body.trim().to_string())
            })
            .collect()
    }

    #[test]
    fn svg_is_well_formed_and_scaled() {
        let svg = sweep_svg(&points(), 4, 512 * KIB, Clock::new(Backend::Bochs, 0)).unwrap();
        assert!(svg.trim_start().starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<svg").count(), 1);
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        let texts = texts(&svg);
        let has = |s: &str| texts.iter().any(|(_, t)| t.contains(s));
        for s in [
            "cache vcpu",
            "cache vm",
            "cache none",
            "memslots (log scale)",
            "cycles, emulated by Bochs (lower is better)",
            "Iteration 2 dirty memory time vs memslots (4 vCPUs, 512 KiB per vCPU)",
        ] {
            assert!(has(s), "{s}: {texts:?}");
        }
        for s in ["1", "4", "16", "64", "0", "8000"] {
            assert!(texts.iter().any(|(_, t)| t == s), "tick {s}: {texts:?}");
        }
        // The three data lines: four points each (the legend's have two).
        let lines: Vec<_> = polylines(&svg)
            .into_iter()
            .filter(|(_, p)| p.len() == 4)
            .collect();
        assert_eq!(lines.len(), 3, "{svg}");
        assert_eq!(lines[0].0, "#1F77B4");
        let (vcpu, vm) = (&lines[0].1, &lines[1].1);
        // x: log scale, so 4 slots sit a third of the way from 1 to 64.
        let third = (vcpu[1].0 - vcpu[0].0) / (vcpu[3].0 - vcpu[0].0);
        assert!((third - 1.0 / 3.0).abs() < 0.01, "{vcpu:?}");
        // y: vcpu is flat; vm rises (smaller y) with slots.
        assert!(vcpu.iter().all(|p| p.1 == vcpu[0].1), "{vcpu:?}");
        assert!(vm.windows(2).all(|w| w[1].1 < w[0].1), "{vm:?}");
        // Heights above the 0 tick scale with the cycles: 1000 and 7900.
        let zero = texts.iter().find(|(_, t)| t == "0").unwrap().0;
        let ratio = (zero - vcpu[0].1) / (zero - vm[3].1);
        assert!((ratio - 1000.0 / 7900.0).abs() < 0.01, "{ratio}");
    }

    #[test]
    fn axes_are_nice() {
        assert_eq!(nice_axis(7900.0), (8000.0, 2000.0));
        assert_eq!(nice_axis(1.0), (1.0, 0.2));
        assert_eq!(nice_axis(123_456_789.0), (125_000_000.0, 25_000_000.0));
        assert_eq!(nice_axis(0.0), (1.0, 0.2));
        assert_eq!(fmt_si(0.0), "0");
        assert_eq!(fmt_si(2000.0), "2000");
        assert_eq!(fmt_si(12_345.0), "12.3k");
        assert_eq!(fmt_si(4_500_000.0), "4.5M");
        assert_eq!(fmt_si(125_000_000.0), "125M");
        assert_eq!(fmt_si(2e9), "2G");
    }
}
