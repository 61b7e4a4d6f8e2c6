//! A small simulation in the test suite: the simulator drives the real
//! core end to end and the results hold (delivery, connectivity, healing);
//! and iroh-gossip's state machine in the same engine (`--protocol iroh`):
//! it delivers, it is deterministic, it feels the same failures, and the
//! metrics users pay for add up for both protocols.

#[cfg(feature = "iroh")]
use sim::Protocol;
use sim::{Params, Scenario, run};

fn params(scenario: Scenario) -> Params {
    let mut p = Params::new(scenario);
    p.nodes = 200;
    p.rounds = 4;
    p.warmup = 1;
    p.join_secs = 4.0;
    p.settle_secs = 10.0;
    p
}

#[test]
fn single_sender_reaches_everyone_over_a_tree() {
    let r = run(&params(Scenario::Single), &mut |_| {});
    let s = &r.summary;
    assert_eq!(s.delivery, Some(1.0));
    assert!(s.rmr.is_some_and(|x| x <= 0.05), "rmr {:?}", s.rmr);
    assert_eq!(s.components, 1);
    assert_eq!(s.isolated, 0);
    assert!(s.active_full > 0.9);
    // The warm-up round floods; measured rounds follow the tree.
    assert!(r.rounds[0].rmr > 1.0 && !r.rounds[0].measured);
}

#[test]
fn multi_sender_reaches_everyone() {
    let r = run(&params(Scenario::Multi), &mut |_| {});
    assert_eq!(r.summary.delivery, Some(1.0));
    assert!(
        r.summary.rmr.is_some_and(|x| x <= 0.1),
        "rmr {:?}",
        r.summary.rmr
    );
}

#[test]
fn half_the_nodes_crash_and_the_overlay_heals() {
    let mut p = params(Scenario::Failure);
    p.kill = 0.5;
    p.rounds = 5;
    let r = run(&p, &mut |_| {});
    let s = &r.summary;
    assert!(
        s.rounds_to_heal.is_some_and(|n| n <= 3),
        "rounds_to_heal {:?}",
        s.rounds_to_heal
    );
    assert_eq!(s.components, 1);
    assert_eq!(r.rounds.last().map(|x| x.delivery), Some(1.0));
}

#[test]
fn the_same_seed_gives_the_same_results() {
    let a = run(&params(Scenario::Single), &mut |_| {});
    let b = run(&params(Scenario::Single), &mut |_| {});
    let key = |r: &sim::Report| {
        (
            r.summary.messages,
            r.summary.bytes,
            r.summary.events,
            r.summary.ldh_max,
        )
    };
    assert_eq!(key(&a), key(&b));
    let mut other = params(Scenario::Single);
    other.seed = 2;
    assert_ne!(key(&a), key(&run(&other, &mut |_| {})));
}

#[cfg(feature = "iroh")]
fn iroh(scenario: Scenario) -> Params {
    let mut p = params(scenario);
    p.protocol = Protocol::Iroh;
    p
}

#[cfg(feature = "iroh")]
#[test]
fn iroh_gossip_reaches_everyone_and_is_deterministic() {
    let a = run(&iroh(Scenario::Single), &mut |_| {});
    let s = &a.summary;
    assert_eq!(s.protocol, Protocol::Iroh);
    assert_eq!(s.delivery, Some(1.0), "{s:?}");
    assert_eq!(s.components, 1);
    assert!(s.ldh_max.is_some_and(|h| h >= 2), "hops counted: {s:?}");
    assert!(s.messages_by_kind.gossip > 0 && s.messages_by_kind.hyparview > 0);
    let again = run(&iroh(Scenario::Single), &mut |_| {});
    let key = |r: &sim::Report| {
        (
            r.summary.messages,
            r.summary.bytes,
            r.summary.events,
            r.summary.ldh_max,
        )
    };
    assert_eq!(key(&a), key(&again), "same seed, same run");
    let mut other = iroh(Scenario::Single);
    other.seed = 2;
    assert_ne!(key(&a), key(&run(&other, &mut |_| {})));
}

#[cfg(feature = "iroh")]
#[test]
fn iroh_gossip_feels_the_same_crashes() {
    let mut p = iroh(Scenario::Failure);
    p.kill = 0.5;
    p.rounds = 5;
    let r = run(&p, &mut |_| {});
    // Half the nodes are gone: deliveries are counted among the living
    // only, and the living re-form one overlay.
    assert_eq!(r.rounds.last().map(|x| x.delivery), Some(1.0), "{r:?}");
    let alive = r
        .rounds
        .last()
        .and_then(|x| x.snapshot.as_ref())
        .map(|s| s.alive);
    assert_eq!(alive, Some(100));
}

#[cfg(feature = "iroh")]
#[test]
fn paid_for_metrics_add_up_for_both_protocols() {
    for protocol in [Protocol::Chatd, Protocol::Iroh] {
        let mut p = params(Scenario::Multi);
        p.protocol = protocol;
        let r = run(&p, &mut |_| {});
        let s = &r.summary;
        let k = s.messages_by_kind;
        let total = k.gossip + k.ihave + k.graft + k.prune + k.hyparview;
        // Every message from the first round on, per first delivery.
        let per = s.msgs_per_delivery.expect("rounds ran");
        let b = s.bytes_by_kind;
        let bytes = b.gossip + b.ihave + b.graft + b.prune + b.hyparview;
        let bytes_per = s.bytes_per_delivery.expect("rounds ran");
        // Both ratios share a denominator: total ÷ per = deliveries.
        let d1 = total as f64 / per;
        let d2 = bytes as f64 / bytes_per;
        assert!((d1 - d2).abs() < 1e-6 * d1, "{protocol:?}: {d1} vs {d2}");
        // 200 nodes, 5 rounds of 10 senders, everyone reached.
        assert_eq!(d1.round() as u64, 5 * 10 * 199, "{protocol:?}: {s:?}");
        assert!(total <= s.messages && bytes <= s.bytes);
        // A payload reaches 199 nodes: at least one GOSSIP each.
        assert!(k.gossip >= 5 * 10 * 199, "{protocol:?}: {k:?}");
        // rmr_all counts the first flood, rmr does not.
        assert!(s.rmr_all >= s.rmr, "{protocol:?}: {s:?}");
    }
}

/// The engine keeps every active view in a packed table, updated from the
/// nodes' NeighborUp/NeighborDown events, for snapshots and BFS: after
/// joins, crashes, a partition and its healing it still matches each
/// node's own view, in order.
#[test]
fn the_engines_copy_of_every_view_matches_the_nodes() {
    use overlay::Config;
    use sim::engine::{Engine, Latency, Network, Sim};
    use std::time::Duration;
    let net = Network {
        latency: Latency::Uniform {
            min: Duration::from_millis(10),
            max: Duration::from_millis(50),
        },
        loss: 0.0,
        detect_delay: Duration::from_millis(500),
    };
    let mut sim = Sim::new(Config::lan(), net, 5);
    let check = |sim: &Sim, when: &str| {
        let mut view = Vec::new();
        let mut links = 0;
        for n in 0..sim.len() as u32 {
            Engine::active_view(sim, n, &mut view);
            let own: Vec<u32> = sim
                .node(n)
                .map(|x| x.active_view().collect())
                .unwrap_or_default();
            assert_eq!(view, own, "node {n} {when}");
            links += own.len();
        }
        assert!(links > 0, "{when}: some links");
    };
    for _ in 0..150 {
        sim.start_node(&[0, 1]);
        sim.run_for(Duration::from_millis(20));
    }
    sim.run_for(Duration::from_secs(10));
    check(&sim, "after the join");
    for n in (3..150).step_by(4) {
        sim.crash(n);
    }
    sim.run_for(Duration::from_millis(300));
    check(&sim, "while crashes are noticed");
    sim.run_for(Duration::from_secs(10));
    check(&sim, "after the crashes");
    sim.partition(|n| (n % 2) as u8);
    sim.run_for(Duration::from_secs(5));
    check(&sim, "partitioned");
    sim.heal();
    sim.run_for(Duration::from_secs(10));
    check(&sim, "healed");
}
