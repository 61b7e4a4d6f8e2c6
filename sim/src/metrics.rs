//! What the simulator measures: the shape of the overlay at an instant
//! ([`Snapshot`]) and what happened to the broadcasts of one round
//! ([`Round`]). Pure functions over the engine's state.

use crate::engine::{Broadcast, Engine, NodeId, Traffic};
use overlay::MessageType;
use serde::Serialize;

/// The overlay at one instant.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// Simulated seconds.
    pub t_s: f64,
    /// Running nodes.
    pub alive: usize,
    /// Connected components over active links (running nodes).
    pub components: usize,
    /// Running nodes with an empty active view.
    pub isolated: usize,
    /// Share of running nodes whose active view is full.
    pub active_full: f64,
    /// Mean active view size.
    pub mean_active: f64,
    /// Mean passive view size (NaN, written as null, where the protocol
    /// does not show its passive view: iroh-gossip).
    pub mean_passive: f64,
    /// Active view sizes: `degrees[k]` nodes have k neighbors.
    pub degrees: Vec<usize>,
}

/// Takes a snapshot of the overlay.
pub fn snapshot<E: Engine + ?Sized>(sim: &E) -> Snapshot {
    let n = sim.len();
    let cap = sim.active_capacity();
    // Union-find over active links between running nodes.
    let mut parent: Vec<u32> = (0..n as u32).collect();
    fn find(p: &mut [u32], mut x: u32) -> u32 {
        while p[x as usize] != x {
            p[x as usize] = p[p[x as usize] as usize];
            x = p[x as usize];
        }
        x
    }
    let mut degrees = vec![0usize; cap + 2];
    let (mut alive, mut isolated, mut full, mut act) = (0usize, 0, 0, 0usize);
    let mut pas = Some(0usize);
    let mut view = Vec::new();
    for a in sim.alive() {
        sim.active_view(a, &mut view);
        alive += 1;
        let k = view.len();
        degrees[k.min(cap + 1)] += 1;
        act += k;
        pas = pas.zip(sim.passive_len(a)).map(|(s, p)| s + p);
        if k == 0 {
            isolated += 1;
        }
        if k >= cap {
            full += 1;
        }
        for &b in &view {
            if sim.is_alive(b) {
                let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
                if ra != rb {
                    parent[ra as usize] = rb;
                }
            }
        }
    }
    // Each component has one root, a running node that is its own parent.
    let components = sim.alive().filter(|&a| parent[a as usize] == a).count();
    let div = alive.max(1) as f64;
    Snapshot {
        t_s: sim.now().as_micros() as f64 / 1e6,
        alive,
        components,
        isolated,
        active_full: full as f64 / div,
        mean_active: act as f64 / div,
        mean_passive: pas.map_or(f64::NAN, |p| p as f64 / div),
        degrees,
    }
}

/// Broadcast results of one round.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Round {
    /// Round number (0-based, warm-up rounds included).
    pub round: usize,
    /// Whether this round counts in the summary (warm-up rounds do not).
    pub measured: bool,
    /// Simulated seconds at the start of the round.
    pub t_s: f64,
    /// Broadcasts sent this round.
    pub broadcasts: usize,
    /// Deliveries / eligible nodes, over all broadcasts of the round.
    /// Eligible: running for the whole round, not the origin, and on the
    /// origin's side of a partition if one is in effect.
    pub delivery: f64,
    /// Mean relative message redundancy: payloads / (reached − 1) − 1.
    pub rmr: f64,
    /// Largest hop count of a first delivery.
    pub ldh_max: u16,
    /// Mean hop count of first deliveries.
    pub ldh_mean: f64,
    /// Largest hop distance from an origin to a reachable node over active
    /// links: the LDH a perfect (BFS) tree would have.
    pub ldh_bound: u16,
    /// Mean delivery latency (ms).
    pub latency_mean_ms: f64,
    /// 99th percentile delivery latency (ms).
    pub latency_p99_ms: f64,
    /// The overlay at the end of the round.
    pub snapshot: Option<Snapshot>,
    /// Messages sent during the round, by type name.
    pub messages: Vec<(&'static str, u64)>,
    /// Bytes sent during the round, by type name.
    pub bytes: Vec<(&'static str, u64)>,
}

/// Computes a round's figures from its broadcasts. `eligible(b, n)` says
/// whether node `n` counts for broadcast `b`.
pub fn round(
    index: usize,
    t_s: f64,
    broadcasts: &[Broadcast],
    eligible: impl Fn(&Broadcast, NodeId) -> bool,
    eligible_count: impl Fn(&Broadcast) -> usize,
    traffic: &Traffic,
) -> Round {
    let (mut delivered, mut expected) = (0usize, 0usize);
    let mut rmr_sum = 0.0;
    let mut rmr_n = 0usize;
    let mut hops_max = 0u16;
    let (mut hops_sum, mut hops_n) = (0u64, 0u64);
    let mut latencies: Vec<u64> = Vec::new();
    for b in broadcasts {
        expected += eligible_count(b);
        delivered += b
            .deliveries
            .iter()
            .filter(|(n, _, _)| eligible(b, *n))
            .count();
        let reached = b.deliveries.len() as f64 + 1.0;
        if reached > 1.0 {
            rmr_sum += b.payloads as f64 / (reached - 1.0) - 1.0;
            rmr_n += 1;
        }
        for &(_, h, l) in &b.deliveries {
            hops_max = hops_max.max(h);
            hops_sum += u64::from(h);
            hops_n += 1;
            latencies.push(l);
        }
    }
    latencies.sort_unstable();
    let p99 = latencies
        .get(((latencies.len() as f64 * 0.99).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(0);
    let mean_lat = if latencies.is_empty() {
        0.0
    } else {
        latencies.iter().sum::<u64>() as f64 / latencies.len() as f64
    };
    Round {
        round: index,
        measured: true,
        t_s,
        broadcasts: broadcasts.len(),
        delivery: if expected == 0 {
            1.0
        } else {
            delivered as f64 / expected as f64
        },
        rmr: if rmr_n == 0 {
            0.0
        } else {
            rmr_sum / rmr_n as f64
        },
        ldh_max: hops_max,
        ldh_mean: if hops_n == 0 {
            0.0
        } else {
            hops_sum as f64 / hops_n as f64
        },
        ldh_bound: 0,
        latency_mean_ms: mean_lat / 1000.0,
        latency_p99_ms: p99 as f64 / 1000.0,
        snapshot: None,
        messages: MessageType::ALL
            .iter()
            .map(|t| (t.name(), traffic.messages[t.index()]))
            .collect(),
        bytes: MessageType::ALL
            .iter()
            .map(|t| (t.name(), traffic.bytes[t.index()]))
            .collect(),
    }
}

/// Hop distance from `origin` to the farthest running node it can reach
/// over active links: the smallest LDH any broadcast tree could achieve.
pub fn eccentricity<E: Engine + ?Sized>(sim: &E, origin: NodeId) -> u16 {
    let mut dist = vec![u16::MAX; sim.len()];
    let mut queue = std::collections::VecDeque::from([origin]);
    let mut view = Vec::new();
    dist[origin as usize] = 0;
    let mut far = 0;
    while let Some(a) = queue.pop_front() {
        let d = dist[a as usize];
        far = far.max(d);
        sim.active_view(a, &mut view);
        for &b in &view {
            if sim.is_alive(b) && dist[b as usize] == u16::MAX {
                dist[b as usize] = d + 1;
                queue.push_back(b);
            }
        }
    }
    far
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`), if known.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Current resident memory (MiB, VmRSS), where /proc tells it.
pub fn rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
