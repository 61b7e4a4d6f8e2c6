//! Cluster behaviour of the overlay core: 200 nodes in the deterministic
//! harness (10–50 ms per-link latency, `Config::lan()`), checking
//! membership convergence, broadcast delivery, tree formation, repair,
//! mass failure, isolation recovery and reproducibility.

#![allow(clippy::print_stderr)] // the tests report the figures they measured

mod common;

use common::Cluster;
use overlay::{BroadcastError, Config, MessageId, Output};
use std::time::Duration;

const N: usize = 200;

/// 200 nodes started 100 ms apart, each joining through one of the first
/// five, then left alone for two minutes of simulated time.
fn joined_cluster(seed: u64) -> Cluster {
    let mut c = Cluster::new(N, Config::lan(), seed);
    c.join_all(5, Duration::from_millis(100));
    c.run_for(Duration::from_secs(120));
    c
}

/// Broadcasts from `origin`, waits for it to spread, asserts that every
/// live node got it exactly once (the harness panics on decode errors and
/// `deliveries` keeps first receipts only), and returns its id.
fn broadcast_to_all(c: &mut Cluster, origin: u32, payload: &[u8]) -> MessageId {
    let id = c.broadcast(origin, payload);
    c.run_for(Duration::from_secs(5));
    let missed = c.missed(&id, origin);
    assert!(
        missed.is_empty(),
        "broadcast from {origin} missed {missed:?}"
    );
    id
}

fn view_summary(c: &Cluster) -> (usize, usize, usize, f64) {
    let cap = c.config.hyparview.active_view_capacity;
    let actives: Vec<usize> = c
        .alive_nodes()
        .map(|n| c.nodes[n as usize].active_len())
        .collect();
    let passives: Vec<usize> = c
        .alive_nodes()
        .map(|n| c.nodes[n as usize].passive_len())
        .collect();
    let full = actives.iter().filter(|a| **a == cap).count();
    let min_active = *actives.iter().min().unwrap_or(&0);
    let min_passive = *passives.iter().min().unwrap_or(&0);
    let mean_passive = passives.iter().sum::<usize>() as f64 / passives.len() as f64;
    (full, min_active, min_passive, mean_passive)
}

#[test]
fn two_hundred_nodes_join_and_converge() {
    for seed in [1, 2, 3] {
        let c = joined_cluster(seed);
        let cap = c.config.hyparview.active_view_capacity;
        assert_eq!(
            c.asymmetric_links(),
            vec![],
            "seed {seed}: views must be symmetric"
        );
        assert_eq!(c.components(), 1, "seed {seed}: one connected overlay");
        let (full, min_active, min_passive, mean_passive) = view_summary(&c);
        eprintln!(
            "seed {seed}: full active views {full}/{N}, min active {min_active}, passive min {min_passive} mean {mean_passive:.1}"
        );
        // Every node is within two links of full: a degree deficit can only
        // be fixed by two deficit nodes finding each other in their passive
        // views, which can take longer than this run.
        assert!(
            min_active >= cap - 2,
            "seed {seed}: min active {min_active}"
        );
        assert!(full * 100 >= N * 97, "seed {seed}: only {full} full views");
        // Shuffles fill passive views well beyond what joins alone give.
        let stats = c.total_stats();
        assert!(stats.shuffles_sent > N as u64 * 5);
        assert!(min_passive >= 20, "seed {seed}: min passive {min_passive}");
        assert!(
            mean_passive >= 28.0,
            "seed {seed}: mean passive {mean_passive}"
        );
        assert_eq!(stats.decode_errors, 0);
    }
}

#[test]
fn broadcast_reaches_every_node_and_tree_forms() {
    let mut c = joined_cluster(11);
    let first = broadcast_to_all(&mut c, 7, b"first");
    let first_rmr = c.rmr(&first);
    // Plumtree prunes redundant eager links on the first broadcasts; after
    // a few the eager links form a tree and redundancy vanishes.
    let mut last = first;
    for i in 0..5u8 {
        c.run_for(Duration::from_secs(1));
        last = broadcast_to_all(&mut c, 7, &[b'x', i]);
    }
    let rmr = c.rmr(&last);
    let ldh = c.ldh(&last);
    eprintln!("single sender: first RMR {first_rmr:.3}, after 6 broadcasts RMR {rmr:.3} LDH {ldh}");
    assert!(
        first_rmr > 0.5,
        "the first broadcast floods (RMR {first_rmr})"
    );
    assert!(rmr <= 0.05, "RMR {rmr} after the tree formed");

    // Several senders share the tree.
    let senders = [3u32, 50, 99, 150, 199];
    let mut ids = Vec::new();
    for round in 0..4 {
        for &s in &senders {
            ids.push((round, broadcast_to_all(&mut c, s, &[round, s as u8])));
        }
    }
    let last_round: Vec<f64> = ids
        .iter()
        .filter(|(r, _)| *r == 3)
        .map(|(_, id)| c.rmr(id))
        .collect();
    let mean = last_round.iter().sum::<f64>() / last_round.len() as f64;
    eprintln!("multi sender: last round RMR {last_round:.3?} mean {mean:.3}");
    assert!(mean <= 0.05, "multi-sender RMR {mean}");
}

#[test]
fn cut_eager_links_are_repaired_by_graft_without_loss() {
    let mut c = joined_cluster(12);
    let mut last = MessageId([0; 32]);
    for i in 0..5u8 {
        last = broadcast_to_all(&mut c, 0, &[i]);
        c.run_for(Duration::from_secs(1));
    }
    // Cut ten tree edges silently: the parent's eager pushes vanish and no
    // one is told, so only IHAVE + GRAFT can bring the messages across.
    let tree_edges: Vec<(u32, u32)> = c.deliveries[&last]
        .iter()
        .map(|(node, (_, parent))| (*parent, *node))
        .filter(|(p, n)| *p != 0 && *n % 17 == 3)
        .take(10)
        .collect();
    assert_eq!(tree_edges.len(), 10);
    for &(p, n) in &tree_edges {
        c.cut_silently(p, n);
    }
    let grafts_before = c.total_stats().grafts_sent;
    for i in 0..3u8 {
        let id = broadcast_to_all(&mut c, 0, &[b'c', i]);
        for &(_, n) in &tree_edges {
            assert!(c.deliveries[&id].contains_key(&n));
        }
    }
    let grafts = c.total_stats().grafts_sent - grafts_before;
    eprintln!("10 eager links cut: {grafts} grafts, delivery 100%");
    assert!(grafts >= 10, "each cut child was grafted ({grafts})");
}

#[test]
fn half_the_nodes_crash_and_the_rest_heal_to_one_component() {
    let mut c = joined_cluster(13);
    for i in 0..3u8 {
        broadcast_to_all(&mut c, 1, &[i]);
    }
    // Crash every other node (100 of 200), keeping the sender.
    for n in (0..N as u32).filter(|n| n % 2 == 0) {
        c.crash(n);
    }
    // A broadcast right away, before anyone noticed: eager pushes into dead
    // nodes vanish; IHAVE/GRAFT through live lazy links recovers the rest.
    let immediate = c.broadcast(1, b"during");
    c.run_for(Duration::from_secs(5));
    let alive = c.alive_nodes().count() - 1;
    let got = alive - c.missed(&immediate, 1).len();
    eprintln!("50% crash: immediate delivery {got}/{alive}");
    c.run_for(Duration::from_secs(60));
    assert_eq!(c.components(), 1, "survivors form one overlay");
    assert_eq!(c.asymmetric_links(), vec![]);
    let (full, min_active, _, _) = view_summary(&c);
    eprintln!("after 60 s: {full}/{alive} full views, min active {min_active}");
    assert!(min_active >= 1);
    for i in 0..3u8 {
        broadcast_to_all(&mut c, 1, &[b'h', i]);
        broadcast_to_all(&mut c, 99, &[b'h', i]);
    }
}

#[test]
fn an_isolated_node_rejoins_through_its_contacts() {
    let mut c = joined_cluster(14);
    let x = 150u32;
    // Sever every link of x: all its neighbors and candidates fail.
    for other in 0..N as u32 {
        if other != x {
            c.cut_loudly(x, other);
        }
    }
    c.run_for(Duration::from_secs(90));
    assert_eq!(
        c.nodes[x as usize].active_len(),
        0,
        "x is isolated while cut off"
    );
    let attempts = c.nodes[x as usize].stats().rejoin_attempts;
    // Capped exponential backoff: retried, but not in a tight loop.
    assert!(attempts >= 3, "isolated node retried ({attempts})");
    assert!(
        attempts <= 15,
        "rejoin attempts are backed off ({attempts})"
    );
    c.heal_all_cuts();
    // Within two backoff caps it is back, with a full active view.
    c.run_for(Duration::from_secs(60));
    assert!(
        c.nodes[x as usize].active_len() >= 4,
        "x rejoined: {:?}",
        c.active(x)
    );
    assert_eq!(c.components(), 1);
    broadcast_to_all(&mut c, 0, b"welcome back");
    broadcast_to_all(&mut c, x, b"hello again");
}

#[test]
fn oversize_broadcast_is_refused_and_nothing_is_sent() {
    let mut c = joined_cluster(15);
    let max = c.config.limits.max_payload_size;
    let node = &mut c.nodes[3];
    node.drain_outputs().for_each(drop);
    let err = node
        .broadcast(c.now, vec![0u8; max + 1].into())
        .expect_err("oversize payload must be refused");
    assert_eq!(err, BroadcastError::PayloadTooLarge { size: max + 1, max });
    assert!(
        !node
            .drain_outputs()
            .any(|o| matches!(o, Output::Send { .. }))
    );
    assert_eq!(node.stats().broadcasts_refused, 1);
    assert_eq!(node.stats().broadcasts, 0);
    // Exactly the maximum is fine.
    node.broadcast(c.now, vec![0u8; max].into())
        .expect("max-size payload accepted");
}

#[test]
fn lossy_links_still_deliver_everything() {
    let mut c = Cluster::new(100, Config::lan(), 16);
    c.join_all(5, Duration::from_millis(100));
    c.run_for(Duration::from_secs(60));
    // 2% of all messages vanish from now on (QUIC would retransmit; this is
    // the harsher model). IHAVE/GRAFT must cover every lost GOSSIP.
    c.loss = 0.02;
    for i in 0..10u8 {
        broadcast_to_all(&mut c, u32::from(i) * 9, &[i]);
    }
}

fn traced_run(seed: u64) -> Vec<String> {
    let mut c = Cluster::new(40, Config::lan(), seed);
    c.trace = Some(Vec::new());
    c.join_all(3, Duration::from_millis(50));
    c.run_for(Duration::from_secs(30));
    c.broadcast(5, b"a");
    c.run_for(Duration::from_secs(2));
    c.crash(9);
    c.crash(10);
    c.broadcast(20, b"b");
    c.run_for(Duration::from_secs(30));
    c.trace.take().unwrap_or_default()
}

#[test]
fn the_same_seed_gives_the_same_event_trace() {
    let a = traced_run(99);
    let b = traced_run(99);
    assert!(
        a.len() > 5_000,
        "trace covers a real run ({} outputs)",
        a.len()
    );
    assert!(a == b, "same seed, different traces");
    let c = traced_run(100);
    assert!(a != c, "a different seed changes the run");
}

#[test]
fn a_healed_partition_merges_into_one_component() {
    let mut c = joined_cluster(17);
    // Split into two halves for 60 s: every cross link breaks (both ends
    // are told, like a timed-out connection) and no new one can form.
    let side = |n: u32| n % 2;
    for a in 0..N as u32 {
        for b in (a + 1)..N as u32 {
            if side(a) != side(b) {
                c.cut_loudly(a, b);
            }
        }
    }
    c.run_for(Duration::from_secs(60));
    assert_eq!(c.components(), 2, "the halves are apart");
    // Each half keeps working on its own.
    for origin in [0u32, 1] {
        let id = c.broadcast(origin, b"inside");
        c.run_for(Duration::from_secs(5));
        let missed: Vec<u32> = c
            .missed(&id, origin)
            .into_iter()
            .filter(|n| side(*n) == side(origin))
            .collect();
        assert!(missed.is_empty(), "half {origin} missed {missed:?}");
    }
    let (full, _, _, _) = view_summary(&c);
    eprintln!("partition: {full}/{N} full active views inside the halves");
    c.heal_all_cuts();
    // Full views on both sides: only link restoration can bridge them.
    let restore = c.config.hyparview.restore_interval;
    c.run_for(restore * 3);
    assert_eq!(
        c.components(),
        1,
        "one component within 3 restore intervals of healing"
    );
    assert_eq!(c.asymmetric_links(), vec![]);
    broadcast_to_all(&mut c, 0, b"together");
    broadcast_to_all(&mut c, 1, b"again");
}

/// A settled overlay shuffles less and less, down to one shuffle per
/// `shuffle_interval_max` per node; the nodes next to a crash shuffle at
/// `shuffle_interval` again while their views change.
#[test]
fn a_stable_overlay_shuffles_rarely_and_a_changed_view_shuffles_again() {
    let mut c = joined_cluster(4);
    let cfg = c.config.hyparview.clone();
    // Settled for another 5 minutes: periods 10 → 20 → 40 → 60 s.
    c.run_for(Duration::from_secs(300));
    let before = c.total_stats().shuffles_sent;
    let window = Duration::from_secs(300);
    c.run_for(window);
    let quiet = c.total_stats().shuffles_sent - before;
    let at_base = (N as u64) * window.as_secs() / cfg.shuffle_interval.as_secs();
    let at_max = (N as u64) * window.as_secs() / cfg.shuffle_interval_max.as_secs();
    eprintln!(
        "stable: {quiet} shuffles in {window:?} (every node at the base period: {at_base}, at the longest: {at_max})"
    );
    assert!(quiet > 0, "nodes still shuffle");
    assert!(
        quiet * 2 <= at_max * 3,
        "a stable overlay should shuffle about once a {:?} per node: {quiet} (at most {})",
        cfg.shuffle_interval_max,
        at_max * 3 / 2
    );
    // A tenth of the nodes crash: their neighbors' views change, and those
    // neighbors go back to the short period.
    for n in (0..N as u32).step_by(10) {
        c.crash(n);
    }
    let before = c.total_stats().shuffles_sent;
    c.run_for(Duration::from_secs(60));
    let after_crash = c.total_stats().shuffles_sent - before;
    let quiet_per_minute = quiet / 5;
    eprintln!("after the crash: {after_crash} shuffles in 60 s (stable: {quiet_per_minute})");
    assert!(
        after_crash > quiet_per_minute,
        "views that changed shuffle more often: {after_crash} vs {quiet_per_minute}"
    );
    // And the overlay is whole again.
    assert_eq!(c.components(), 1);
    let id = broadcast_to_all(&mut c, 1, b"after the crash");
    assert!(c.missed(&id, 1).is_empty());
}

/// IHAVEs per broadcast once the tree has formed, and the lazy links
/// (active links that are not tree edges) they could go on.
fn ihaves_per_broadcast(config: Config) -> (f64, f64) {
    let mut c = Cluster::new(N, config, 21);
    c.join_all(5, Duration::from_millis(100));
    c.run_for(Duration::from_secs(120));
    for i in 0..5u8 {
        broadcast_to_all(&mut c, 9, &[i]);
    }
    let before = c.total_stats().ihave_entries_sent;
    let rounds = 5u8;
    for i in 0..rounds {
        broadcast_to_all(&mut c, 9, &[b'm', i]);
    }
    let sent = (c.total_stats().ihave_entries_sent - before) as f64 / f64::from(rounds);
    let links: usize = c.alive_nodes().map(|n| c.active(n).len()).sum::<usize>() / 2;
    let lazy = (links - (N - 1)) as f64;
    (sent, lazy)
}

#[test]
fn one_ihave_per_lazy_link_when_both_ends_have_the_message() {
    // On every lazy link the higher id defers its announcement and drops it
    // when the other's arrives first: about one IHAVE per lazy link.
    let (sent, lazy) = ihaves_per_broadcast(Config::lan());
    eprintln!("IHAVE entries per broadcast {sent:.0} over {lazy:.0} lazy links");
    assert!(sent <= 1.15 * lazy, "{sent} IHAVEs for {lazy} lazy links");
    // Without the defer both ends announce on most lazy links.
    let mut eager = Config::lan();
    eager.plumtree.ihave_defer = Duration::ZERO;
    let (sent0, lazy0) = ihaves_per_broadcast(eager);
    eprintln!("without ihave_defer: {sent0:.0} over {lazy0:.0} lazy links");
    assert!(
        sent0 >= 1.5 * lazy0,
        "{sent0} IHAVEs for {lazy0} lazy links"
    );
}

#[test]
fn a_late_joiner_catches_up_on_recent_messages_without_flooding_them() {
    // 200 nodes join and settle; the last one joins only after five
    // broadcasts are cached around it.
    let mut c = Cluster::new(N + 1, Config::lan(), 23);
    for i in 0..N as u32 {
        let contacts: Vec<u32> = (0..5).filter(|k| *k != i).collect();
        c.join_at(
            i,
            contacts,
            overlay::Time::ZERO + Duration::from_millis(100) * i,
        );
    }
    c.run_for(Duration::from_secs(120));
    let mut ids = Vec::new();
    for i in 0..5u8 {
        let id = c.broadcast(7, &[b'r', i]);
        c.run_for(Duration::from_secs(2));
        ids.push(id);
    }
    let late = N as u32;
    let dups_before = c.total_stats().duplicates;
    let at = c.now;
    c.join_at(late, vec![0, 1, 2], at);
    c.run_for(Duration::from_secs(10));
    // It fetched what its new neighbors announced...
    let caught_up = ids
        .iter()
        .filter(|id| c.deliveries[*id].contains_key(&late))
        .count();
    // ...and did not push those old messages on to neighbors that have
    // them (a node with no tree used to flood each one: a duplicate on
    // every other link, ~4 per message, 20 here). What is left comes from
    // the links its join moved (a link that replaces a lost eager one is
    // eager on one side until the first duplicate prunes it).
    let dups = c.total_stats().duplicates - dups_before;
    eprintln!("late joiner: {caught_up}/5 recent messages fetched, {dups} duplicates");
    assert_eq!(caught_up, 5, "the late joiner catches up");
    assert!(dups <= 8, "{dups} duplicates while one node caught up");
    // And it is in the tree for what comes next.
    broadcast_to_all(&mut c, 7, b"after");
}
