//! A small simulation in the test suite: the simulator drives the real
//! core end to end and the results hold (delivery, connectivity, healing).

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
