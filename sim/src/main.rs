//! `sim` — run an overlay scenario and print what it measured.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a CLI reports on stdout/stderr

use anyhow::{Context, bail};
use clap::Parser;
use sim::engine::Latency;
use sim::{Params, Preset, Protocol, Scenario};
use std::path::PathBuf;
use std::time::Duration;

/// Simulate the chatd overlay (HyParView + Plumtree) at scale.
///
/// Every run starts NODES nodes over --join-secs, joining through the first
/// --contacts nodes, lets the overlay settle, then runs --warmup + --rounds
/// rounds of broadcasts. Per-round lines go to stderr (and stdout as JSON);
/// the last line of stdout is a JSON summary (fields: sim/README.md).
///
/// Examples:
///   sim single --nodes 1000
///   sim multi --nodes 10000 --latency 10..50
///   sim failure --kill 0.8 --rounds 8 --out target/sim-failure
///   sim partition --for 60 --rounds 40
///   sim servers --servers 1000 --loss 5
///   sim multi --nodes 1000 --sender-pool 0 --protocol iroh
#[derive(Parser, Debug)]
#[command(name = "sim", version, verbatim_doc_comment)]
struct Args {
    /// What to simulate.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Nodes in the join phase.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Seed of every random choice: the same arguments and seed give the same results.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Measured broadcast rounds.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Unmeasured rounds first (Plumtree prunes the initial flood into a tree).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Per-link latency drawn uniformly from MIN..MAX milliseconds.
    #[arg(
        long,
        value_name = "MIN..MAX",
        default_value = "10..50",
        conflicts_with = "latency_static"
    )]
    latency: String,
    /// The same latency on every link, in milliseconds.
    #[arg(long, value_name = "MS")]
    latency_static: Option<u64>,
    /// Percent of messages lost (0–100).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// failure: fraction of nodes crashed at once (0.1–0.95).
    #[arg(long, default_value_t = 0.5)]
    kill: f64,
    /// churn: percent of nodes replaced per simulated second.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// partition, servers: seconds before the halves are reconnected
    /// (servers: 0 = no partition; the heal figures are then null).
    #[arg(long = "for", value_name = "SECS", default_value_t = 60.0)]
    partition_for: f64,
    /// multi: senders per round.
    #[arg(long, default_value_t = 10)]
    senders: usize,
    /// multi: draw each round's senders from a fixed pool of this many nodes
    /// (default: --senders, i.e. the same senders every round, like the
    /// servers of a cluster); 0 = any node, a new sender nearly every time.
    #[arg(long, value_name = "N")]
    sender_pool: Option<usize>,
    /// Simulated seconds per round.
    #[arg(long, default_value_t = 3.0)]
    round_secs: f64,
    /// Seconds over which the nodes start.
    #[arg(long, default_value_t = 10.0)]
    join_secs: f64,
    /// Seconds the overlay settles before the first round [default: 20;
    /// servers: one regular announce interval at --servers plus 10 s, at
    /// least 20: 40 up to 3,000 servers, 110 at 10,000].
    #[arg(long)]
    settle_secs: Option<f64>,
    /// Bootstrap contacts every node is given (the first nodes).
    #[arg(long, default_value_t = 5)]
    contacts: usize,
    /// Seconds until a crashed peer or broken link is noticed (the QUIC idle timeout).
    #[arg(long, default_value_t = 3.0)]
    detect_secs: f64,
    /// Overlay parameter preset.
    #[arg(long, value_enum, default_value_t = Preset::Lan)]
    preset: Preset,
    /// The protocol the nodes run: this project's overlay, or iroh-gossip's
    /// state machine (its own defaults; --preset and --set do not apply) on
    /// the same network, failures and seed. Not for `servers`.
    #[arg(long, value_enum, default_value_t = Protocol::Chatd)]
    protocol: Protocol,
    /// Payload bytes per broadcast.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Override an overlay parameter, e.g. --set plumtree.graft_timeout_1=500ms
    /// (names as in overlay::Config; repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Also write per-round CSV, the timeline, report.json and SVG plots here.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// No progress on stderr.
    #[arg(long, short)]
    quiet: bool,
    /// servers: rendezvous servers (default: --nodes).
    #[arg(long, value_name = "N")]
    servers: Option<usize>,
    /// servers: synthetic clients (default: changes / 10, at most
    /// 10,000,000 / servers, at least 10).
    #[arg(long, value_name = "N")]
    clients: Option<usize>,
    /// servers: record changes during the partition (default: 100 per
    /// server, at most 100,000).
    #[arg(long, value_name = "N")]
    changes: Option<usize>,
    /// servers: record changes per second in the steady phase (default:
    /// clients / 20).
    #[arg(long, value_name = "PER_SEC")]
    steady_rate: Option<f64>,
    /// servers: seconds of steady registrations (the crash is halfway).
    #[arg(long, default_value_t = 30.0)]
    steady_secs: f64,
    /// servers: seconds to wait for equal tables after the heal.
    #[arg(long, default_value_t = 120.0)]
    heal_timeout: f64,
    /// servers: probability that a client asks to meet another after registering.
    #[arg(long, default_value_t = 0.2)]
    meet_prob: f64,
    /// servers: one-way client↔server latency, per client from MIN..MAX ms.
    #[arg(long, value_name = "MIN..MAX", default_value = "2..10")]
    client_latency: String,
    /// servers: rendezvous Config.heartbeat in seconds: the announce
    /// interval up to heartbeat × announce budget ÷ 2 servers (default 30).
    #[arg(long, value_name = "SECS")]
    heartbeat_secs: Option<f64>,
    /// servers: rendezvous Config.dead_after in seconds, at the heartbeat
    /// interval (default 90).
    #[arg(long, value_name = "SECS")]
    dead_after_secs: Option<f64>,
    /// servers: rendezvous Config.announce_budget: announces per second
    /// the cluster may send each server (default 200; 0: the interval does
    /// not grow with the cluster).
    #[arg(long, value_name = "PER_SEC")]
    announce_budget: Option<f64>,
    /// servers: rendezvous Config.sync_interval in seconds (default 30).
    #[arg(long, value_name = "SECS")]
    sync_secs: Option<f64>,
    /// servers: stop after this much wall-clock time and report what was
    /// measured ("completed": false) — the one thing that can make two runs
    /// with the same seed differ.
    #[arg(long, value_name = "SECS")]
    max_wall_secs: Option<f64>,
    /// servers: stop the same way once resident memory reaches this many
    /// MiB (instead of being killed with nothing printed).
    #[arg(long, value_name = "MIB")]
    max_rss_mb: Option<f64>,
}

fn parse_range(s: &str) -> anyhow::Result<(u64, u64)> {
    let (a, b) = s
        .split_once("..")
        .context("--latency wants MIN..MAX in milliseconds, e.g. 10..50")?;
    let (a, b): (u64, u64) = (
        a.trim()
            .parse()
            .with_context(|| format!("--latency: bad minimum {a:?}"))?,
        b.trim()
            .parse()
            .with_context(|| format!("--latency: bad maximum {b:?}"))?,
    );
    if a > b {
        bail!("--latency: minimum {a} is above maximum {b}");
    }
    Ok((a, b))
}

fn params(a: &Args) -> anyhow::Result<Params> {
    if a.nodes < 2 {
        bail!("--nodes must be at least 2");
    }
    if a.nodes > 10_000_000 {
        bail!("--nodes above 10,000,000 will not fit in memory");
    }
    if !(0.0..=100.0).contains(&a.loss) {
        bail!("--loss is a percentage, 0 to 100");
    }
    if !(0.0..1.0).contains(&a.kill) {
        bail!("--kill is a fraction below 1 (e.g. 0.5)");
    }
    if a.rate < 0.0 || a.rate > 100.0 {
        bail!("--rate is a percentage per second, 0 to 100");
    }
    for (name, v) in [
        ("--round-secs", a.round_secs),
        ("--detect-secs", a.detect_secs),
    ] {
        if v <= 0.0 || !v.is_finite() {
            bail!("{name} must be a positive number of seconds");
        }
    }
    for (name, v) in [
        ("--join-secs", a.join_secs),
        ("--settle-secs", a.settle_secs.unwrap_or(0.0)),
        ("--for", a.partition_for),
    ] {
        if v < 0.0 || !v.is_finite() {
            bail!("{name} must be zero or more seconds");
        }
    }
    if a.contacts == 0 {
        bail!("--contacts must be at least 1");
    }
    let latency = match a.latency_static {
        Some(ms) => Latency::Static(Duration::from_millis(ms)),
        None => {
            let (lo, hi) = parse_range(&a.latency)?;
            Latency::Uniform {
                min: Duration::from_millis(lo),
                max: Duration::from_millis(hi),
            }
        }
    };
    let mut p = Params::new(a.scenario);
    p.nodes = a.nodes;
    p.seed = a.seed;
    p.rounds = a.rounds;
    p.warmup = a.warmup;
    p.latency = latency;
    p.loss = a.loss / 100.0;
    p.kill = a.kill;
    p.churn_rate = a.rate;
    p.partition_secs = a.partition_for;
    p.senders = a.senders.max(1);
    p.sender_pool = a.sender_pool.unwrap_or(p.senders);
    p.round_secs = a.round_secs;
    p.join_secs = a.join_secs;
    p.settle_secs = a.settle_secs.unwrap_or(p.settle_secs);
    p.contacts = a.contacts;
    p.detect_secs = a.detect_secs;
    p.preset = a.preset;
    p.protocol = a.protocol;
    p.payload = a.payload;
    if p.protocol != Protocol::Chatd && !a.set.is_empty() {
        bail!("--set changes this project's overlay; iroh-gossip runs its own defaults");
    }
    if p.protocol != Protocol::Chatd && a.scenario == Scenario::Servers {
        bail!("servers runs rendezvous::Server on this project's overlay only");
    }
    let mut config = p.preset.config();
    for kv in &a.set {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--set {kv:?}: expected KEY=VALUE"))?;
        config.set(k.trim(), v.trim())?;
    }
    config
        .validate()
        .context("--set produced an invalid overlay configuration")?;
    p.config = Some(config);
    Ok(p)
}

fn servers_params(a: &Args, p: &Params) -> anyhow::Result<sim::ServersParams> {
    let n = a.servers.unwrap_or(a.nodes);
    if n < 2 {
        bail!("--servers must be at least 2");
    }
    if n > 100_000 {
        bail!("--servers above 100,000 will not fit in memory (beliefs are n² bits)");
    }
    if a.clients.is_some_and(|c| c < 2) {
        bail!("--clients must be at least 2");
    }
    if !(0.0..=1.0).contains(&a.meet_prob) {
        bail!("--meet-prob is a probability, 0 to 1");
    }
    if a.partition_for != 0.0 && (a.partition_for.is_nan() || a.partition_for < 1.0) {
        bail!("servers: --for must be 0 (no partition) or at least 1 second");
    }
    for (name, v) in [
        ("--steady-secs", Some(a.steady_secs)),
        ("--heal-timeout", Some(a.heal_timeout)),
        ("--steady-rate", a.steady_rate),
        ("--max-wall-secs", a.max_wall_secs),
        ("--max-rss-mb", a.max_rss_mb),
        ("--announce-budget", a.announce_budget),
    ] {
        if v.is_some_and(|v| v < 0.0 || !v.is_finite()) {
            bail!("{name} must be zero or more");
        }
    }
    let (lo, hi) = parse_range(&a.client_latency)?;
    let mut s = sim::ServersParams::new(n);
    s.clients = a.clients;
    s.changes = a.changes;
    s.steady_rate = a.steady_rate;
    s.seed = p.seed;
    s.latency = p.latency;
    s.loss = p.loss;
    s.detect_secs = p.detect_secs;
    s.join_secs = p.join_secs;
    s.steady_secs = a.steady_secs;
    s.partition_secs = a.partition_for;
    s.heal_timeout_secs = a.heal_timeout;
    s.contacts = p.contacts;
    s.client_latency_ms = (lo, hi);
    s.meet_prob = a.meet_prob;
    if let Some(c) = &p.config {
        s.overlay = c.clone();
    }
    for (name, v, field) in [
        (
            "--heartbeat-secs",
            a.heartbeat_secs,
            &mut s.server.heartbeat,
        ),
        (
            "--dead-after-secs",
            a.dead_after_secs,
            &mut s.server.dead_after,
        ),
        ("--sync-secs", a.sync_secs, &mut s.server.sync_interval),
    ] {
        if let Some(v) = v {
            if v <= 0.0 || !v.is_finite() {
                bail!("{name} must be a positive number of seconds");
            }
            *field = Duration::from_secs_f64(v);
        }
    }
    s.max_wall_secs = a.max_wall_secs;
    s.max_rss_mb = a.max_rss_mb;
    if let Some(b) = a.announce_budget {
        s.server.announce_budget = b;
    }
    s.settle_secs = a
        .settle_secs
        .unwrap_or_else(|| sim::ServersParams::default_settle(n, &s.server));
    Ok(s)
}

/// glibc's malloc backs its heap with transparent huge pages only when
/// asked, and this kernel's THP mode is `madvise`. A large run spends its
/// time on cache and TLB misses over gigabytes of node state; with huge
/// pages `sim single --nodes 100000` runs ~25% faster in the same memory.
/// The tunable is read at process start, so the simulator re-executes
/// itself once with it set. `SIM_HUGEPAGES=0` runs without.
#[cfg(target_os = "linux")]
fn with_huge_pages() {
    use std::os::unix::process::CommandExt;
    const KEY: &str = "GLIBC_TUNABLES";
    const TUNABLE: &str = "glibc.malloc.hugetlb=1";
    if std::env::var_os("SIM_HUGEPAGES").is_some_and(|v| v == "0") {
        return;
    }
    let current = std::env::var(KEY).unwrap_or_default();
    if current.contains("glibc.malloc.hugetlb") {
        return; // already set (by us, or by the user)
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let value = if current.is_empty() {
        TUNABLE.to_string()
    } else {
        format!("{current}:{TUNABLE}")
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(KEY, value)
        .exec();
    // `exec` returns only if it failed: go on without huge pages.
    eprintln!("sim: note: running without huge pages (re-executing failed: {err})");
}

fn main() -> std::process::ExitCode {
    #[cfg(target_os = "linux")]
    with_huge_pages();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line with every cause, whatever RUST_BACKTRACE says.
            eprintln!("sim: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let p = params(&args)?;
    if p.scenario == Scenario::Servers {
        let s = servers_params(&args, &p)?;
        let quiet = args.quiet;
        let summary = sim::servers::run(&s, &mut |line| {
            if !quiet {
                eprintln!("{line}");
            }
        });
        if let Some(dir) = &args.out {
            std::fs::create_dir_all(dir)?;
            std::fs::write(
                dir.join("servers.json"),
                serde_json::to_string_pretty(&summary)?,
            )
            .with_context(|| format!("writing {}", dir.display()))?;
        }
        println!("{}", serde_json::to_string(&summary)?);
        return Ok(());
    }
    let quiet = args.quiet;
    let report = sim::run(&p, &mut |line| {
        if !quiet {
            eprintln!("{line}");
        }
    });
    for r in &report.rounds {
        println!("{}", serde_json::to_string(r)?);
    }
    if let Some(dir) = &args.out {
        sim::report::write_dir(&report, dir)
            .with_context(|| format!("writing {}", dir.display()))?;
        if !quiet {
            eprintln!(
                "wrote {}/{{rounds.csv,timeline.csv,report.json,delivery.svg,rmr.svg,ldh.svg,views.svg}}",
                dir.display()
            );
        }
    }
    println!("{}", serde_json::to_string(&report.summary)?);
    Ok(())
}
