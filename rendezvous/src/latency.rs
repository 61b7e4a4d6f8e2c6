//! Latency-aware choices (seed 003), as pure rules: which servers a client
//! measures, which one is its home, which one relays a pair, and when a
//! better one is worth moving to. Inputs are measured RTTs and the server
//! records; randomness comes in as a seed. Nothing here measures anything:
//! the client driver pings, the server core stores what clients report.

use crate::members::ServerRecord;
use overlay::PeerId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most servers in one latency vector (a client measures a sample).
pub const MAX_LATENCY_ENTRIES: usize = 16;
/// Largest RTT a vector may carry, in microseconds (10 s): beyond it a
/// server is as good as unreachable.
pub const MAX_RTT_US: u32 = 10_000_000;

/// A client's measured round-trip times to servers, in microseconds, by
/// server id: at most [`MAX_LATENCY_ENTRIES`], each at most
/// [`MAX_RTT_US`], one per server.
///
/// On the wire a `Vec<(PeerId, u32)>`, validated when decoded: a report
/// that breaks a bound does not decode.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<(PeerId, u32)>", into = "Vec<(PeerId, u32)>")]
pub struct LatencyVector {
    /// `(server, rtt_us)`, sorted by server, no repeats.
    entries: Vec<(PeerId, u32)>,
}

/// Why a reported vector was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LatencyError {
    /// More entries than [`MAX_LATENCY_ENTRIES`].
    #[error("{0} servers in one latency report, at most {MAX_LATENCY_ENTRIES}")]
    TooMany(usize),
    /// An RTT over [`MAX_RTT_US`] (or zero).
    #[error("an RTT of {0} µs is outside 1..={MAX_RTT_US}")]
    OutOfRange(u32),
    /// The same server twice.
    #[error("a server appears twice in one latency report")]
    Repeated,
}

impl TryFrom<Vec<(PeerId, u32)>> for LatencyVector {
    type Error = LatencyError;

    fn try_from(v: Vec<(PeerId, u32)>) -> Result<LatencyVector, LatencyError> {
        LatencyVector::new(v)
    }
}

impl From<LatencyVector> for Vec<(PeerId, u32)> {
    fn from(v: LatencyVector) -> Vec<(PeerId, u32)> {
        v.entries
    }
}

impl LatencyVector {
    /// Validates `entries` (hostile input: a bound on everything).
    pub fn new(mut entries: Vec<(PeerId, u32)>) -> Result<LatencyVector, LatencyError> {
        if entries.len() > MAX_LATENCY_ENTRIES {
            return Err(LatencyError::TooMany(entries.len()));
        }
        if let Some(&(_, bad)) = entries.iter().find(|(_, r)| *r == 0 || *r > MAX_RTT_US) {
            return Err(LatencyError::OutOfRange(bad));
        }
        entries.sort_unstable_by_key(|(id, _)| *id);
        if entries.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(LatencyError::Repeated);
        }
        Ok(LatencyVector { entries })
    }

    /// The RTT to `server`, if measured.
    pub fn rtt(&self, server: &PeerId) -> Option<u32> {
        self.entries
            .binary_search_by_key(server, |(id, _)| *id)
            .ok()
            .map(|i| self.entries[i].1)
    }

    /// Every `(server, rtt_us)`, by server id.
    pub fn entries(&self) -> &[(PeerId, u32)] {
        &self.entries
    }

    /// Whether nothing was measured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// SplitMix64's output for state `z` (the state then advances by the
/// same constant): the core's one small mixing function.
pub(crate) fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Most relays ranked for a pair: the best, and the ones the pair moves
/// to, in order, when it dies.
pub const MAX_RELAYS: usize = 4;

/// The relays for a pair (seed 003's rule), best first, at most `n`:
/// among the live servers both clients measured, by the smaller worse RTT,
/// max(a, b), then the smaller sum a + b, then at random (`seed`). Each
/// with its worse RTT in µs (what a client compares when a better relay
/// appears). Empty when no live server was measured by both (the caller
/// falls back to its own rule).
pub fn rank_relays(
    a: &LatencyVector,
    b: &LatencyVector,
    live: impl Fn(&PeerId) -> bool,
    seed: u64,
    n: usize,
) -> Vec<(PeerId, u32)> {
    let mut ranked: Vec<((u32, u64, u64), PeerId)> = a
        .entries()
        .iter()
        .filter_map(|&(id, ra)| {
            let rb = b.rtt(&id)?;
            if !live(&id) {
                return None;
            }
            let tie = splitmix(seed ^ u64::from_le_bytes(id.0[..8].try_into().unwrap_or([0; 8])));
            Some(((ra.max(rb), u64::from(ra) + u64::from(rb), tie), id))
        })
        .collect();
    ranked.sort_unstable();
    ranked
        .into_iter()
        .take(n)
        .map(|((worse, ..), id)| (id, worse))
        .collect()
}

/// The best relay for a pair: the first of [`rank_relays`].
pub fn relay_for_pair(
    a: &LatencyVector,
    b: &LatencyVector,
    live: impl Fn(&PeerId) -> bool,
    seed: u64,
) -> Option<PeerId> {
    rank_relays(a, b, live, seed, 1).first().map(|(id, _)| *id)
}

/// Whether moving from a path whose (worse) RTT is `current_us` to one of
/// `candidate_us` is worth it: at least 20% and 10 ms lower. Below that,
/// measurement noise would make clients and chats flap between servers.
pub fn better_enough(current_us: u32, candidate_us: u32) -> bool {
    candidate_us.saturating_add(10_000) <= current_us
        && u64::from(candidate_us) * 5 <= u64::from(current_us) * 4
}

fn has_room(s: &ServerRecord) -> bool {
    s.clients < s.capacity
}

/// The home for a client (issue 12): the lowest-RTT live server with spare
/// capacity, where RTTs that no other server's beats by [`better_enough`]
/// count as equally close (measurement noise is not a preference): among
/// those the least loaded (clients ÷ capacity), then the lower RTT, then
/// the smaller id. With nothing measured, every server with room is as
/// close as any. The current home is kept while it is live, has room and
/// is among the closest — so a client moves only for a server 20% and
/// 10 ms closer, or when its home fills up or dies.
pub fn choose_home(
    servers: &[ServerRecord],
    rtts: &LatencyVector,
    current: Option<PeerId>,
) -> Option<PeerId> {
    let rtt = |s: &ServerRecord| rtts.rtt(&s.id).unwrap_or(u32::MAX);
    let with_room = || servers.iter().filter(|s| has_room(s));
    let best = with_room().map(rtt).min()?;
    let close = |s: &ServerRecord| best == u32::MAX || !better_enough(rtt(s), best);
    if let Some(cur) = current.and_then(|c| with_room().find(|s| s.id == c))
        && close(cur)
    {
        return Some(cur.id);
    }
    with_room()
        .filter(|s| close(s))
        .min_by_key(|s| {
            // Load in parts per million keeps the key an integer (total order).
            let load = u64::from(s.clients) * 1_000_000 / u64::from(s.capacity.max(1));
            (load, rtt(s), s.id)
        })
        .map(|s| s.id)
}

/// Which servers to measure next, at most `k` of `servers` (the live ones):
/// the best half of those measured before (by RTT), so the ranking at the
/// top stays fresh, and the rest at random among the others (`seed`), so a
/// better server that appears is found within a few rounds. With `k` or
/// fewer servers: all of them.
pub fn probe_sample(
    servers: &[ServerRecord],
    last: &LatencyVector,
    k: usize,
    seed: u64,
) -> Vec<PeerId> {
    if servers.len() <= k {
        return servers.iter().map(|s| s.id).collect();
    }
    let mut measured: Vec<(u32, PeerId)> = servers
        .iter()
        .filter_map(|s| last.rtt(&s.id).map(|r| (r, s.id)))
        .collect();
    measured.sort_unstable();
    let mut pick: Vec<PeerId> = measured.iter().take(k / 2).map(|(_, id)| *id).collect();
    // The others, in an order set by the seed (sort by a keyed hash).
    let mut rest: BTreeMap<u64, PeerId> = BTreeMap::new();
    for s in servers {
        if !pick.contains(&s.id) {
            let mut h = seed;
            for chunk in s.id.0.chunks(8) {
                let mut b = [0u8; 8];
                b[..chunk.len()].copy_from_slice(chunk);
                h = splitmix(h ^ u64::from_le_bytes(b));
            }
            rest.insert(h, s.id);
        }
    }
    pick.extend(rest.into_values().take(k - pick.len()));
    pick
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PeerId {
        PeerId([n; 32])
    }

    fn server(n: u8, clients: u32, capacity: u32) -> ServerRecord {
        ServerRecord {
            id: id(n),
            addrs: vec![],
            clients,
            capacity,
            version: 1,
        }
    }

    fn v(pairs: &[(u8, u32)]) -> LatencyVector {
        LatencyVector::new(pairs.iter().map(|&(n, ms)| (id(n), ms * 1000)).collect()).unwrap()
    }

    #[test]
    fn a_reported_vector_is_bounded() {
        let many: Vec<(PeerId, u32)> = (0..17u8).map(|n| (id(n), 1)).collect();
        assert_eq!(LatencyVector::new(many), Err(LatencyError::TooMany(17)));
        assert_eq!(
            LatencyVector::new(vec![(id(1), 0)]),
            Err(LatencyError::OutOfRange(0))
        );
        assert_eq!(
            LatencyVector::new(vec![(id(1), MAX_RTT_US + 1)]),
            Err(LatencyError::OutOfRange(MAX_RTT_US + 1))
        );
        assert_eq!(
            LatencyVector::new(vec![(id(1), 5), (id(2), 5), (id(1), 6)]),
            Err(LatencyError::Repeated)
        );
        let ok = v(&[(3, 30), (1, 10)]);
        assert_eq!(ok.rtt(&id(1)), Some(10_000));
        assert_eq!(ok.rtt(&id(2)), None);
        assert_eq!(ok.entries()[0].0, id(1), "sorted");
    }

    /// Seed 003's topology (scripts/latlab.sh at 10 ms links): s1 40/40,
    /// s2 60/80, s3 60/60, s4 80/60 ms from c1/c2.
    #[test]
    fn the_relay_minimises_the_worse_rtt_then_the_sum_then_at_random() {
        let c1 = v(&[(1, 40), (2, 60), (3, 60), (4, 80)]);
        let c2 = v(&[(1, 40), (2, 80), (3, 60), (4, 60)]);
        assert_eq!(relay_for_pair(&c1, &c2, |_| true, 0), Some(id(1)));
        // s1 not started (seed 003): s3 (max 60) beats s2 and s4 (max 80).
        assert_eq!(relay_for_pair(&c1, &c2, |s| *s != id(1), 0), Some(id(3)));
        // Equal worse RTT (50): the smaller sum, s6 (50 + 20) over s5 (50 + 50).
        let a = v(&[(5, 50), (6, 50)]);
        let b = v(&[(5, 50), (6, 20)]);
        assert_eq!(relay_for_pair(&a, &b, |_| true, 0), Some(id(6)));
        // A full tie: either, chosen by the seed, both reachable.
        let a = v(&[(5, 50), (6, 50)]);
        let picks: std::collections::BTreeSet<PeerId> = (0..64)
            .filter_map(|seed| relay_for_pair(&a, &a, |_| true, seed))
            .collect();
        assert_eq!(picks.len(), 2);
        // Nothing in common, or nothing live: no choice.
        assert_eq!(
            relay_for_pair(&v(&[(1, 5)]), &v(&[(2, 5)]), |_| true, 0),
            None
        );
        assert_eq!(relay_for_pair(&c1, &c2, |_| false, 0), None);
        // The ranking: s1 40, s3 60, then s2 and s4 (80, sum 140 both) in
        // an order set by the seed; at most n.
        let r = rank_relays(&c1, &c2, |_| true, 7, MAX_RELAYS);
        assert_eq!(r[..2], [(id(1), 40_000), (id(3), 60_000)]);
        assert_eq!(r.len(), 4);
        assert_eq!(r[2].1, 80_000);
        assert_eq!(rank_relays(&c1, &c2, |_| true, 7, 2).len(), 2);
    }

    #[test]
    fn moving_needs_twenty_percent_and_ten_milliseconds() {
        assert!(better_enough(60_000, 40_000));
        assert!(!better_enough(60_000, 50_000), "10 ms but 17%");
        assert!(!better_enough(20_000, 12_000), "40% but 8 ms");
        assert!(better_enough(50_000, 40_000), "exactly 20% and 10 ms");
        assert!(!better_enough(40_000, 40_000));
    }

    #[test]
    fn the_home_is_the_closest_server_with_room_and_stays_unless_much_better() {
        let servers = [
            server(1, 10, 100),
            server(2, 99, 100),
            server(3, 100, 100),
            server(4, 0, 100),
        ];
        let rtts = v(&[(1, 30), (2, 20), (3, 5)]);
        // s3 is closest but full; s2 has room.
        assert_eq!(choose_home(&servers, &rtts, None), Some(id(2)));
        // Homed on s1 (30 ms): s2 at 20 ms is 10 ms and 33% better: move.
        assert_eq!(choose_home(&servers, &rtts, Some(id(1))), Some(id(2)));
        let near = v(&[(1, 25), (2, 20)]);
        assert_eq!(
            choose_home(&servers, &near, Some(id(1))),
            Some(id(1)),
            "hysteresis"
        );
        // The current home full: move even for little.
        assert_eq!(
            choose_home(&servers, &v(&[(3, 25), (2, 20)]), Some(id(3))),
            Some(id(2))
        );
        // Nothing measured: the least loaded, then the smaller id.
        assert_eq!(
            choose_home(&servers, &LatencyVector::default(), None),
            Some(id(4))
        );
        // An unmeasured current home is not kept over a measured one.
        assert_eq!(
            choose_home(&servers, &v(&[(2, 20)]), Some(id(4))),
            Some(id(2))
        );
        // Ties in RTT: the lower load; so are RTTs too close to tell apart.
        let tie = v(&[(1, 20), (2, 20)]);
        assert_eq!(choose_home(&servers, &tie, None), Some(id(1)));
        let noise = v(&[(1, 22), (2, 20), (4, 45)]);
        assert_eq!(choose_home(&servers, &noise, None), Some(id(1)));
        // Equally loaded and close: the lower RTT.
        let even = [server(5, 1, 10), server(6, 1, 10)];
        assert_eq!(
            choose_home(&even, &v(&[(5, 22), (6, 20)]), None),
            Some(id(6))
        );
        assert_eq!(
            choose_home(&[server(3, 100, 100)], &tie, None),
            None,
            "all full"
        );
    }

    #[test]
    fn the_sample_keeps_the_best_and_explores_the_rest() {
        let servers: Vec<ServerRecord> = (1..=40u8).map(|n| server(n, 0, 10)).collect();
        assert_eq!(
            probe_sample(&servers[..5], &LatencyVector::default(), 8, 1).len(),
            5
        );
        let last = v(&[(7, 5), (9, 6), (11, 7), (13, 8), (15, 9), (17, 10)]);
        let s = probe_sample(&servers, &last, 8, 1);
        assert_eq!(s.len(), 8);
        assert_eq!(
            &s[..4],
            &[id(7), id(9), id(11), id(13)],
            "the best four first"
        );
        let distinct: std::collections::BTreeSet<_> = s.iter().collect();
        assert_eq!(distinct.len(), 8);
        assert_eq!(
            s,
            probe_sample(&servers, &last, 8, 1),
            "same seed, same sample"
        );
        // Over rounds with different seeds, every server gets measured.
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..40 {
            seen.extend(probe_sample(&servers, &last, 8, seed));
        }
        assert_eq!(seen.len(), 40);
    }
}
