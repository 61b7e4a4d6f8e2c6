//! Files a run leaves behind with `--out DIR`: per-round and per-second CSV,
//! the JSON report, and SVG plots a person can look at.

use crate::scenario::Report;
use std::fmt::Write as _;
use std::path::Path;

/// Writes `rounds.csv`, `timeline.csv`, `report.json` and the plots
/// (`delivery.svg`, `rmr.svg`, `ldh.svg`, `views.svg`) into `dir`.
pub fn write_dir(report: &Report, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("rounds.csv"), rounds_csv(report))?;
    std::fs::write(dir.join("timeline.csv"), timeline_csv(report))?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(report).map_err(std::io::Error::other)?,
    )?;
    let title = format!(
        "{:?} n={} seed={}",
        report.summary.scenario, report.summary.nodes, report.summary.seed
    )
    .to_lowercase();
    let per_round = |f: &dyn Fn(&crate::metrics::Round) -> f64| -> Vec<(f64, f64)> {
        report
            .rounds
            .iter()
            .map(|r| (r.round as f64 + 1.0, f(r)))
            .collect()
    };
    let charts = [
        (
            "delivery.svg",
            "delivery ratio per round",
            vec![("delivery", per_round(&|r| r.delivery))],
        ),
        (
            "rmr.svg",
            "RMR per round",
            vec![("rmr", per_round(&|r| r.rmr))],
        ),
        (
            "ldh.svg",
            "hops of first delivery per round",
            vec![
                ("ldh max", per_round(&|r| f64::from(r.ldh_max))),
                ("ldh mean", per_round(&|r| r.ldh_mean)),
            ],
        ),
    ];
    for (file, what, series) in charts {
        std::fs::write(
            dir.join(file),
            line_chart(&format!("{title}: {what}"), "round", &series),
        )?;
    }
    let t = |f: &dyn Fn(&crate::metrics::Snapshot) -> f64| -> Vec<(f64, f64)> {
        report.timeline.iter().map(|s| (s.t_s, f(s))).collect()
    };
    let mut views = vec![
        ("share with full active view", t(&|s| s.active_full)),
        (
            "isolated share",
            t(&|s| s.isolated as f64 / s.alive.max(1) as f64),
        ),
        (
            "components > 1",
            t(&|s| if s.components > 1 { 1.0 } else { 0.0 }),
        ),
    ];
    // Only where the protocol shows its passive view (not iroh-gossip).
    if report.timeline.iter().all(|s| s.mean_passive.is_finite()) {
        let cap = report
            .timeline
            .iter()
            .map(|s| s.mean_passive)
            .fold(1.0, f64::max);
        views.insert(1, ("mean passive / capacity", t(&|s| s.mean_passive / cap)));
    }
    std::fs::write(
        dir.join("views.svg"),
        line_chart(
            &format!("{title}: view fill over time"),
            "simulated s",
            &views,
        ),
    )?;
    Ok(())
}

/// Per-round figures, one line per round.
pub fn rounds_csv(report: &Report) -> String {
    let mut out = String::from(
        "round,measured,t_s,broadcasts,delivery,rmr,ldh_max,ldh_mean,latency_mean_ms,latency_p99_ms,alive,components,isolated,active_full",
    );
    if let Some(r) = report.rounds.first() {
        for (name, _) in &r.messages {
            let _ = write!(out, ",msgs_{name}");
        }
        for (name, _) in &r.bytes {
            let _ = write!(out, ",bytes_{name}");
        }
    }
    out.push('\n');
    for r in &report.rounds {
        let (alive, comps, iso, full) = r
            .snapshot
            .as_ref()
            .map(|s| (s.alive, s.components, s.isolated, s.active_full))
            .unwrap_or_default();
        let _ = write!(
            out,
            "{},{},{:.3},{},{:.6},{:.6},{},{:.3},{:.3},{:.3},{},{},{},{:.4}",
            r.round,
            r.measured,
            r.t_s,
            r.broadcasts,
            r.delivery,
            r.rmr,
            r.ldh_max,
            r.ldh_mean,
            r.latency_mean_ms,
            r.latency_p99_ms,
            alive,
            comps,
            iso,
            full
        );
        for (_, v) in r.messages.iter().chain(&r.bytes) {
            let _ = write!(out, ",{v}");
        }
        out.push('\n');
    }
    out
}

/// The overlay once per simulated second.
pub fn timeline_csv(report: &Report) -> String {
    let mut out =
        String::from("t_s,alive,components,isolated,active_full,mean_active,mean_passive\n");
    for s in &report.timeline {
        let _ = writeln!(
            out,
            "{:.3},{},{},{},{:.4},{:.3},{:.3}",
            s.t_s, s.alive, s.components, s.isolated, s.active_full, s.mean_active, s.mean_passive
        );
    }
    out
}

const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// A self-contained SVG line chart with axes, ticks and a legend.
pub fn line_chart(title: &str, x_label: &str, series: &[(&str, Vec<(f64, f64)>)]) -> String {
    let (w, h, ml, mr, mt, mb) = (720.0, 400.0, 60.0, 20.0, 40.0, 50.0);
    let pts = series.iter().flat_map(|(_, s)| s.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-9 {
        y1 = y0 + 1.0;
    }
    // Scale to the data (a dip from 1.0 to 0.995 must be visible), with a
    // margin, but keep 0 in view when the data starts near it.
    if y0 > 0.0 && y0 < (y1 - y0) * 0.5 {
        y0 = 0.0;
    }
    let margin = (y1 - y0) * 0.05;
    y0 -= margin;
    y1 += margin;
    let sx = |x: f64| ml + (x - x0) / (x1 - x0) * (w - ml - mr);
    let sy = |y: f64| h - mb - (y - y0) / (y1 - y0) * (h - mt - mb);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        w / 2.0,
        escape(title)
    );
    for i in 0..=5 {
        let fy = y0 + (y1 - y0) * i as f64 / 5.0;
        let fx = x0 + (x1 - x0) * i as f64 / 5.0;
        let _ = write!(
            s,
            r##"<line x1="{ml}" x2="{}" y1="{y}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text><text x="{}" y="{}" text-anchor="middle">{}</text>"##,
            w - mr,
            ml - 6.0,
            sy(fy) + 4.0,
            tick(fy, y1 - y0),
            sx(fx),
            h - mb + 18.0,
            tick(fx, x1 - x0),
            y = sy(fy)
        );
    }
    let _ = write!(
        s,
        r#"<line x1="{ml}" x2="{ml}" y1="{mt}" y2="{}" stroke="black"/><line x1="{ml}" x2="{}" y1="{}" y2="{}" stroke="black"/><text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        h - mb,
        w - mr,
        h - mb,
        h - mb,
        (ml + w - mr) / 2.0,
        h - 12.0,
        escape(x_label)
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for &(x, y) in pts.iter().take(200) {
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"/>"#,
                sx(x),
                sy(y)
            );
        }
        let ly = mt + 14.0 + 16.0 * i as f64;
        let _ = write!(
            s,
            r#"<rect x="{}" y="{}" width="12" height="3" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
            w - mr - 230.0,
            ly - 4.0,
            w - mr - 212.0,
            ly,
            escape(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A tick label with as many decimals as the axis span needs.
fn tick(v: f64, span: f64) -> String {
    let decimals = if span >= 50.0 {
        0
    } else {
        (2.0 - (span / 5.0).log10().floor()).clamp(0.0, 6.0) as usize - 1
    };
    format!("{v:.decimals$}")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_is_well_formed_svg_with_every_series() {
        let svg = line_chart(
            "t<1>",
            "x",
            &[("a", vec![(1.0, 0.5), (2.0, 1.0)]), ("b", vec![])],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t&lt;1&gt;"));
        assert_eq!(svg.matches("<polyline").count(), 2);
    }
}
