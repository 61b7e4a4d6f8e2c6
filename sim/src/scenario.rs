//! Scenarios: a join phase, then rounds of broadcasts with failures, churn
//! or a partition, measured round by round.
//!
//! Every scenario starts the same way: `nodes` nodes start one after the
//! other over `join_secs`, each joining through the first `contacts` nodes
//! (their bootstrap list), then the overlay settles for `settle_secs`. Then
//! come `warmup + rounds` rounds of `round_secs` each; warm-up rounds let
//! Plumtree prune the initial flood into a tree and are reported but not
//! summarised.

use crate::engine::{Broadcast, Engine, Latency, Network, NodeId, Sim, Traffic};
use crate::metrics::{self, Round, Snapshot};
use bytes::Bytes;
use overlay::{Config, MessageType, Time};
use rand::Rng;
use serde::Serialize;
use std::time::{Duration, Instant};

/// Which experiment to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Bootstrap only: view fill and connectivity over time.
    Join,
    /// One sender, one broadcast per round.
    Single,
    /// `senders` random senders per round.
    Multi,
    /// Crash a fraction `kill` of the nodes at once, then broadcast.
    Failure,
    /// Replace `churn_rate`% of the nodes per second while broadcasting.
    Churn,
    /// Split into two halves for `partition_secs`, broadcast on both sides, heal.
    Partition,
    /// A `rendezvous::Server` on every node, with clients, a crash and a
    /// partition: run it with [`crate::servers::run`] (here it is `join`).
    Servers,
}

/// Which protocol the nodes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// This project's overlay (`overlay::State`, the preset's config).
    Chatd,
    /// iroh-gossip's protocol state machine (`iroh_gossip::proto::State`,
    /// its default config, one topic), from crates.io, unchanged.
    #[cfg(feature = "iroh")]
    Iroh,
}

/// Overlay parameter preset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// `Config::lan()` (the default).
    Lan,
    /// `Config::wan()`.
    Wan,
    /// `Config::local()`.
    Local,
}

impl Preset {
    /// The overlay configuration.
    pub fn config(self) -> Config {
        match self {
            Preset::Lan => Config::lan(),
            Preset::Wan => Config::wan(),
            Preset::Local => Config::local(),
        }
    }
}

/// Everything that defines a run. Same parameters → same results.
#[derive(Clone, Debug)]
pub struct Params {
    /// The experiment.
    pub scenario: Scenario,
    /// Nodes started in the join phase.
    pub nodes: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Measured rounds.
    pub rounds: usize,
    /// Unmeasured rounds before them.
    pub warmup: usize,
    /// Link latency.
    pub latency: Latency,
    /// Message loss probability, 0..1.
    pub loss: f64,
    /// Failure: fraction of nodes crashed at once.
    pub kill: f64,
    /// Churn: percent of nodes replaced per simulated second.
    pub churn_rate: f64,
    /// Partition: seconds before healing.
    pub partition_secs: f64,
    /// Multi: senders per round.
    pub senders: usize,
    /// Multi: the senders of each round are drawn from a pool of this many
    /// nodes chosen at the start (like the servers of a cluster, each
    /// broadcasting repeatedly). 0: any node, so nearly every broadcast
    /// comes from a sender never seen before (the hardest case).
    pub sender_pool: usize,
    /// Simulated seconds per round.
    pub round_secs: f64,
    /// Seconds over which the nodes start.
    pub join_secs: f64,
    /// Seconds of quiet after the last start.
    pub settle_secs: f64,
    /// Bootstrap contacts (the first nodes).
    pub contacts: usize,
    /// Seconds until a dead peer or broken link is noticed.
    pub detect_secs: f64,
    /// Overlay parameters.
    pub preset: Preset,
    /// Payload bytes per broadcast.
    pub payload: usize,
    /// Overlay parameters overriding the preset.
    pub config: Option<Config>,
    /// The protocol simulated (`preset` and `config` are this project's
    /// overlay's; iroh-gossip runs its own defaults).
    pub protocol: Protocol,
}

impl Params {
    /// Defaults for a scenario (the CLI overrides them).
    pub fn new(scenario: Scenario) -> Self {
        Params {
            scenario,
            nodes: 1000,
            seed: 1,
            rounds: 10,
            warmup: 2,
            latency: Latency::Uniform {
                min: Duration::from_millis(10),
                max: Duration::from_millis(50),
            },
            loss: 0.0,
            kill: 0.5,
            churn_rate: 1.0,
            partition_secs: 60.0,
            senders: 10,
            sender_pool: 10,
            round_secs: 3.0,
            join_secs: 10.0,
            settle_secs: 20.0,
            contacts: 5,
            detect_secs: 3.0,
            preset: Preset::Lan,
            payload: 64,
            config: None,
            protocol: Protocol::Chatd,
        }
    }
}

/// The run's headline figures: the last line the CLI prints.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Scenario name.
    pub scenario: Scenario,
    /// The protocol simulated.
    pub protocol: Protocol,
    /// Nodes in the join phase.
    pub nodes: usize,
    /// Seed.
    pub seed: u64,
    /// Measured rounds.
    pub rounds: usize,
    /// Unmeasured warm-up rounds.
    pub warmup_rounds: usize,
    /// Minimum delivery ratio over measured rounds (null without rounds).
    pub delivery: Option<f64>,
    /// Delivery ratio of the first measured round.
    pub delivery_first_round: Option<f64>,
    /// Mean RMR over measured rounds (the steady state).
    pub rmr: Option<f64>,
    /// Mean RMR over every round, warm-up (the first flood) included.
    pub rmr_all: Option<f64>,
    /// Messages of every type (membership maintenance included) sent from
    /// the first round's start to the end, per first delivery of a
    /// payload in that time (every round's).
    pub msgs_per_delivery: Option<f64>,
    /// The same for bytes.
    pub bytes_per_delivery: Option<f64>,
    /// Messages in that time by kind: gossip, ihave, graft, prune and
    /// hyparview (every membership message).
    pub messages_by_kind: Kinds,
    /// Bytes in that time by kind.
    pub bytes_by_kind: Kinds,
    /// Largest LDH over measured rounds.
    pub ldh_max: Option<u16>,
    /// Mean of the rounds' mean hop counts.
    pub ldh_mean: Option<f64>,
    /// Mean delivery latency over measured rounds (ms).
    pub latency_mean_ms: Option<f64>,
    /// Largest per-round p99 delivery latency (ms).
    pub latency_p99_ms: Option<f64>,
    /// Components at the end.
    pub components: usize,
    /// Isolated running nodes at the end.
    pub isolated: usize,
    /// Share of running nodes with a full active view at the end.
    pub active_full: f64,
    /// Failure/partition: measured rounds until delivery is 1.0 and the
    /// overlay is one component (1 = the first round after the event).
    pub rounds_to_heal: Option<usize>,
    /// Partition: seconds from healing until one component.
    pub heal_secs: Option<f64>,
    /// Messages sent in the whole run.
    pub messages: u64,
    /// Bytes sent in the whole run.
    pub bytes: u64,
    /// Events the engine processed.
    pub events: u64,
    /// Simulated seconds.
    pub sim_s: f64,
    /// Wall-clock seconds of the run.
    pub wall_s: f64,
    /// Peak resident memory of the simulator (MiB).
    pub peak_rss_mb: Option<f64>,
    /// Latency model, as given.
    pub latency: String,
    /// Loss probability.
    pub loss: f64,
}

/// Traffic by kind: Plumtree's four message types and HyParView's all
/// together (the two protocols name their membership messages differently).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Kinds {
    /// Payloads pushed.
    pub gossip: u64,
    /// Lazy announcements.
    pub ihave: u64,
    /// Requests for a missing payload.
    pub graft: u64,
    /// Eager links turned lazy.
    pub prune: u64,
    /// Membership: join, forward join, neighbor, disconnect, shuffle.
    pub hyparview: u64,
}

impl Kinds {
    fn of(counts: &[u64; MessageType::COUNT]) -> Kinds {
        let mut k = Kinds::default();
        for t in MessageType::ALL {
            let n = counts[t.index()];
            match t {
                MessageType::Gossip => k.gossip += n,
                MessageType::IHave => k.ihave += n,
                MessageType::Graft => k.graft += n,
                MessageType::Prune => k.prune += n,
                _ => k.hyparview += n,
            }
        }
        k
    }
}

/// Everything a run produced.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Headline figures.
    pub summary: Summary,
    /// Per-round figures, warm-up included.
    pub rounds: Vec<Round>,
    /// The overlay once per simulated second.
    pub timeline: Vec<Snapshot>,
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn time_s(s: f64) -> Time {
    Time::from_micros((s.max(0.0) * 1e6) as u64)
}

/// A uniformly random running node, other than those in `exclude`.
fn random_alive<E: Engine>(sim: &mut E, exclude: &[NodeId]) -> Option<NodeId> {
    let alive: Vec<NodeId> = sim.alive().filter(|n| !exclude.contains(n)).collect();
    if alive.is_empty() {
        return None;
    }
    let i = (sim.rng().next_u64() % alive.len() as u64) as usize;
    Some(alive[i])
}

/// Runs the scenario. `progress` gets one human-readable line at a time.
pub fn run(p: &Params, progress: &mut dyn FnMut(String)) -> Report {
    let wall = Instant::now();
    let net = Network {
        latency: p.latency,
        loss: p.loss,
        detect_delay: secs(p.detect_secs),
    };
    match p.protocol {
        Protocol::Chatd => {
            let config = p.config.clone().unwrap_or_else(|| p.preset.config());
            run_on(Sim::new(config, net, p.seed), p, wall, progress)
        }
        #[cfg(feature = "iroh")]
        Protocol::Iroh => run_on(
            crate::iroh::IrohSim::new(Default::default(), net, p.seed),
            p,
            wall,
            progress,
        ),
    }
}

fn run_on<E: Engine>(
    mut sim: E,
    p: &Params,
    wall: Instant,
    progress: &mut dyn FnMut(String),
) -> Report {
    let mut timeline = Vec::new();
    let mut next_snap = 1.0;

    // --- join phase ---
    let contacts: Vec<NodeId> = (0..p.contacts.min(p.nodes) as NodeId).collect();
    let spacing = p.join_secs / p.nodes.max(1) as f64;
    sim.reserve(p.nodes);
    for i in 0..p.nodes {
        let at = i as f64 * spacing;
        while next_snap <= at {
            sim.run_until(time_s(next_snap));
            timeline.push(metrics::snapshot(&sim));
            next_snap += 1.0;
        }
        sim.run_until(time_s(at));
        sim.start_node(&contacts);
    }
    let settled = p.join_secs + p.settle_secs;
    while next_snap <= settled {
        sim.run_until(time_s(next_snap));
        let s = metrics::snapshot(&sim);
        if (next_snap as u64).is_multiple_of(5) {
            progress(format!(
                "[join] t={:.0}s alive {} components {} isolated {} full {:.3}",
                s.t_s, s.alive, s.components, s.isolated, s.active_full
            ));
        }
        timeline.push(s);
        next_snap += 1.0;
    }
    sim.run_until(time_s(settled));
    let joined = sim.traffic();
    progress(format!(
        "[join] settled at t={settled:.0}s: {} messages, {} events ({})",
        joined.total_messages(),
        sim.events(),
        MessageType::ALL
            .iter()
            .filter(|t| joined.messages[t.index()] > 0)
            .map(|t| format!("{} {}", t.name(), joined.messages[t.index()]))
            .collect::<Vec<_>>()
            .join(", ")
    ));

    // --- the event ---
    let rounds_total = if matches!(p.scenario, Scenario::Join | Scenario::Servers) {
        0
    } else {
        p.warmup + p.rounds
    };
    // The event (crash, partition, churn) starts with the first measured
    // round: warm-up rounds form the trees on the settled overlay first.
    let mut heal_at = Time::from_micros(u64::MAX);
    let mut healed_at: Option<Time> = None;
    let mut heal_secs: Option<f64> = None;

    // --- rounds ---
    let mut rounds: Vec<Round> = Vec::new();
    let mut sender: Option<NodeId> = None;
    let mut pool: Vec<NodeId> = Vec::new();
    let mut churn_debt = 0.0f64;
    let step = 0.1;
    let mut rounds_from: Option<Traffic> = None;
    let mut first_deliveries = 0u64;
    for r in 0..rounds_total {
        if r == 0 {
            rounds_from = Some(sim.traffic());
        }
        if r == p.warmup {
            let event_at = sim.now();
            heal_at = time_s(event_at.as_micros() as f64 / 1e6 + p.partition_secs);
            match p.scenario {
                Scenario::Failure => {
                    let alive: Vec<NodeId> = sim.alive().collect();
                    let kill = ((alive.len() as f64) * p.kill.clamp(0.0, 1.0)).round() as usize;
                    let mut pool = alive;
                    for _ in 0..kill.min(pool.len().saturating_sub(1)) {
                        let i = (sim.rng().next_u64() % pool.len() as u64) as usize;
                        let victim = pool.swap_remove(i);
                        sim.crash(victim);
                    }
                    progress(format!(
                        "[failure] crashed {kill} nodes at t={:.1}s",
                        event_at.as_micros() as f64 / 1e6
                    ));
                }
                Scenario::Partition => {
                    let seed = p.seed;
                    sim.partition(&move |n| {
                        ((seed ^ u64::from(n)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 63) as u8
                    });
                    progress(format!(
                        "[partition] split in two for {}s",
                        p.partition_secs
                    ));
                }
                _ => {}
            }
        }
        let start = sim.now();
        let start_s = start.as_micros() as f64 / 1e6;
        let partitioned = sim.is_partitioned();
        let mut origins: Vec<NodeId> = Vec::new();
        match p.scenario {
            Scenario::Multi if p.sender_pool == 0 => {
                for _ in 0..p.senders {
                    if let Some(s) = random_alive(&mut sim, &origins) {
                        origins.push(s);
                    }
                }
            }
            Scenario::Multi => {
                // Keep the pool full of running nodes, then draw from it.
                pool.retain(|n| sim.is_alive(*n));
                while pool.len() < p.sender_pool.max(p.senders) {
                    match random_alive(&mut sim, &pool) {
                        Some(n) => pool.push(n),
                        None => break,
                    }
                }
                let mut candidates = pool.clone();
                for _ in 0..p.senders.min(candidates.len()) {
                    let i = (sim.rng().next_u64() % candidates.len() as u64) as usize;
                    origins.push(candidates.swap_remove(i));
                }
            }
            Scenario::Partition if partitioned => {
                for side in [0u8, 1] {
                    let candidates: Vec<NodeId> =
                        sim.alive().filter(|n| sim.group(*n) == side).collect();
                    if !candidates.is_empty() {
                        let i = (sim.rng().next_u64() % candidates.len() as u64) as usize;
                        origins.push(candidates[i]);
                    }
                }
            }
            _ => {
                if !sender.is_some_and(|s| sim.is_alive(s)) {
                    sender = random_alive(&mut sim, &[]);
                }
                origins.extend(sender);
            }
        }
        let traffic_before = sim.traffic();
        let ldh_bound = origins
            .iter()
            .map(|o| metrics::eccentricity(&sim, *o))
            .max()
            .unwrap_or(0);
        let mut ids = Vec::new();
        for (k, &o) in origins.iter().enumerate() {
            let mut payload = vec![0u8; p.payload.max(16)];
            payload[..8].copy_from_slice(&(r as u64).to_le_bytes());
            payload[8..16].copy_from_slice(&(k as u64).to_le_bytes());
            ids.extend(sim.broadcast(o, Bytes::from(payload)));
        }
        // Advance through the round in small steps, applying churn and the
        // partition heal at their times.
        let end = time_s(start_s + p.round_secs);
        while sim.now() < end {
            let next = (sim.now() + secs(step)).min(end);
            sim.run_until(next);
            if sim.now() >= time_s(next_snap) && sim.now() < end {
                timeline.push(metrics::snapshot(&sim));
                next_snap += 1.0;
            }
            if p.scenario == Scenario::Churn && r >= p.warmup {
                churn_debt += sim.alive().count() as f64 * p.churn_rate / 100.0 * step;
                while churn_debt >= 1.0 {
                    churn_debt -= 1.0;
                    if let Some(victim) = random_alive(&mut sim, &[]) {
                        sim.crash(victim);
                    }
                    let mut boot = Vec::new();
                    for _ in 0..p.contacts {
                        if let Some(c) = random_alive(&mut sim, &boot) {
                            boot.push(c);
                        }
                    }
                    sim.start_node(&boot);
                }
            }
            if p.scenario == Scenario::Partition && sim.is_partitioned() && sim.now() >= heal_at {
                sim.heal();
                healed_at = Some(sim.now());
                progress(format!(
                    "[partition] healed at t={:.1}s",
                    sim.now().as_micros() as f64 / 1e6
                ));
            }
            if let Some(h) = healed_at {
                // Healed = one component from then on. Checking costs O(n):
                // twice a second is enough.
                let since = sim.now().saturating_since(h).as_secs_f64();
                if ((since * 10.0).round() as u64).is_multiple_of(5) {
                    let one = metrics::snapshot(&sim).components == 1;
                    heal_secs = match (one, heal_secs) {
                        (true, None) => Some(since),
                        (true, kept) => kept,
                        (false, _) => None,
                    };
                }
            }
        }
        let records: Vec<Broadcast> = ids.iter().filter_map(|id| sim.take_broadcast(id)).collect();
        first_deliveries += records
            .iter()
            .map(|b| b.deliveries.len() as u64)
            .sum::<u64>();
        let eligible = |b: &Broadcast, n: NodeId| {
            n != b.origin
                && sim.is_alive(n)
                && sim.started_at(n) <= start
                && (!partitioned || sim.group(n) == sim.group(b.origin))
        };
        let eligible_count = |b: &Broadcast| sim.alive().filter(|n| eligible(b, *n)).count();
        let traffic = sim.traffic().since(&traffic_before);
        let mut round = metrics::round(r, start_s, &records, eligible, eligible_count, &traffic);
        round.measured = r >= p.warmup;
        round.ldh_bound = ldh_bound;
        let snap = metrics::snapshot(&sim);
        progress(format!(
            "[round {}/{}{}] delivery {:.4} rmr {:.3} ldh {}/{:.1} (bfs {}) p99 {:.0}ms components {} isolated {} full {:.3}",
            r + 1,
            rounds_total,
            if round.measured { "" } else { " warm-up" },
            round.delivery,
            round.rmr,
            round.ldh_max,
            round.ldh_mean,
            round.ldh_bound,
            round.latency_p99_ms,
            snap.components,
            snap.isolated,
            snap.active_full
        ));
        round.snapshot = Some(snap.clone());
        timeline.push(snap);
        rounds.push(round);
    }

    // Partition: if not merged by the last round, keep watching a while.
    if p.scenario == Scenario::Partition && heal_secs.is_none() {
        if healed_at.is_none() && sim.is_partitioned() {
            let now = sim.now().max(heal_at);
            sim.run_until(now);
            sim.heal();
            healed_at = Some(now);
        }
        if let Some(h) = healed_at {
            for _ in 0..240 {
                sim.run_for(secs(0.5));
                if metrics::snapshot(&sim).components == 1 {
                    heal_secs = Some(sim.now().saturating_since(h).as_secs_f64());
                    break;
                }
            }
        }
    }

    let measured: Vec<&Round> = rounds.iter().filter(|r| r.measured).collect();
    let any = !measured.is_empty();
    let mean = |f: &dyn Fn(&Round) -> f64| {
        measured.iter().map(|r| f(r)).sum::<f64>() / measured.len().max(1) as f64
    };
    let healthy =
        |r: &Round| r.delivery >= 1.0 && r.snapshot.as_ref().is_some_and(|s| s.components == 1);
    let rounds_to_heal = match p.scenario {
        Scenario::Failure => measured.iter().position(|r| healthy(r)).map(|i| i + 1),
        Scenario::Partition => {
            let h = healed_at
                .map(|t| t.as_micros() as f64 / 1e6)
                .unwrap_or(f64::MAX);
            let after: Vec<&&Round> = measured.iter().filter(|r| r.t_s >= h).collect();
            after.iter().position(|r| healthy(r)).map(|i| i + 1)
        }
        _ => None,
    };
    let last = metrics::snapshot(&sim);
    let traffic = sim.traffic();
    let paid = rounds_from.map(|t| traffic.since(&t)).unwrap_or_default();
    let per_delivery = |x: u64| {
        (rounds_total > 0 && first_deliveries > 0).then(|| x as f64 / first_deliveries as f64)
    };
    let summary = Summary {
        scenario: p.scenario,
        protocol: p.protocol,
        nodes: p.nodes,
        seed: p.seed,
        rounds: if rounds_total == 0 { 0 } else { p.rounds },
        warmup_rounds: if rounds_total == 0 { 0 } else { p.warmup },
        delivery: any.then(|| measured.iter().map(|r| r.delivery).fold(1.0, f64::min)),
        delivery_first_round: measured.first().map(|r| r.delivery),
        rmr: any.then(|| mean(&|r| r.rmr)),
        rmr_all: (!rounds.is_empty())
            .then(|| rounds.iter().map(|r| r.rmr).sum::<f64>() / rounds.len() as f64),
        msgs_per_delivery: per_delivery(paid.total_messages()),
        bytes_per_delivery: per_delivery(paid.total_bytes()),
        messages_by_kind: Kinds::of(&paid.messages),
        bytes_by_kind: Kinds::of(&paid.bytes),
        ldh_max: measured.iter().map(|r| r.ldh_max).max(),
        ldh_mean: any.then(|| mean(&|r| r.ldh_mean)),
        latency_mean_ms: any.then(|| mean(&|r| r.latency_mean_ms)),
        latency_p99_ms: measured.iter().map(|r| r.latency_p99_ms).reduce(f64::max),
        components: last.components,
        isolated: last.isolated,
        active_full: last.active_full,
        rounds_to_heal,
        heal_secs,
        messages: traffic.total_messages(),
        bytes: traffic.total_bytes(),
        events: sim.events(),
        sim_s: sim.now().as_micros() as f64 / 1e6,
        wall_s: wall.elapsed().as_secs_f64(),
        peak_rss_mb: metrics::peak_rss_mb(),
        latency: match p.latency {
            Latency::Uniform { min, max } => format!("{}..{}ms", min.as_millis(), max.as_millis()),
            Latency::Static(d) => format!("static {}ms", d.as_millis()),
        },
        loss: p.loss,
    };
    Report {
        summary,
        rounds,
        timeline,
    }
}
