//! The Prometheus alert rules in `scripts/monitoring/` (issue 15, part 4):
//! `promtool check rules` accepts them and `promtool test rules` runs their
//! unit tests (every alert fires on the series that should fire it and
//! stays quiet on healthy ones); the Grafana dashboard is valid JSON whose
//! queries name only metrics a server exports. Where promtool is missing
//! the rule tests say so on stderr and pass (unless CHATD_REQUIRE_PROMTOOL=1,
//! which `.ci/run` sets once it has installed it).

#![allow(clippy::print_stderr)] // the skip notice is for the person reading the test log

mod procs;

use std::path::Path;
use std::process::Command;

fn dir() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/monitoring"
    ))
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let Some(promtool) = procs::promtool() else {
        eprintln!("skipped: no promtool on PATH (apt-get install prometheus)");
        return;
    };
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        let out = Command::new(promtool)
            .args(args)
            .current_dir(dir())
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The metric names a query uses (`chatd_…`, and `up`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("chatd_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        names.push(name);
    }
    names
}

#[test]
fn the_dashboard_queries_only_metrics_a_server_exports() {
    let text = std::fs::read_to_string(dir().join("dashboard.json")).expect("dashboard.json");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut wanted = std::collections::BTreeSet::new();
    for p in panels {
        let targets = p["targets"].as_array().expect("every panel has queries");
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            wanted.extend(metric_names(t["expr"].as_str().expect("expr")));
        }
    }
    // The rules too.
    let rules = std::fs::read_to_string(dir().join("alerts.yml")).expect("alerts.yml");
    for line in rules
        .lines()
        .filter(|l| l.trim_start().starts_with("expr:"))
    {
        wanted.extend(metric_names(line));
    }
    let cluster = procs::Cluster::start("dash", 1, "127.0.0.1");
    let admin = cluster.servers[0].admin;
    let mut metrics = None;
    assert!(
        procs::wait_until(std::time::Duration::from_secs(30), || {
            metrics = procs::http_get(admin, "/metrics");
            metrics.is_some()
        }),
        "no /metrics"
    );
    let metrics = metrics.unwrap_or_default();
    let exported: std::collections::BTreeSet<String> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect();
    let missing: Vec<&String> = wanted.iter().filter(|m| !exported.contains(*m)).collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}");
}
