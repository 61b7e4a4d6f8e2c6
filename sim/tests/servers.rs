//! The `servers` scenario at a tiny size: rendezvous servers on the overlay
//! replicate registrations, agree that a crashed server is dead, and their
//! tables become equal again after a partition.

use sim::servers::{ServersParams, run};

#[test]
fn twenty_servers_replicate_detect_a_crash_and_heal_a_partition() {
    let mut p = ServersParams::new(20);
    p.loss = 0.05;
    let s = run(&p, &mut |_| {});
    assert!(s.completed);
    // 100 changes per server while split, plus the steady phase.
    assert_eq!(s.changes_target, 2_000);
    assert!(s.records_partition >= 1_900, "{}", s.records_partition);
    assert!(s.records_steady > 100, "{}", s.records_steady);
    assert!(s.replication_measured > 100);
    assert_eq!(s.replication_incomplete, 0);
    assert!(
        s.replication_p99_ms.is_some_and(|ms| ms <= 1_000.0),
        "replication p99 {:?}",
        s.replication_p99_ms
    );
    assert!(
        s.death_detect_max_s.is_some_and(|d| d <= 10.0),
        "death detected after {:?}",
        s.death_detect_max_s
    );
    assert_eq!(s.crash_revivals, 0);
    assert_eq!(s.false_deaths, 0, "{:?}", s.false_death_examples);
    assert!(s.partition_deaths > 0, "each side declares the other dead");
    assert!(
        s.heal_s.is_some_and(|h| h <= 30.0),
        "tables equal after {:?}",
        s.heal_s
    );
    assert_eq!(s.heal_records_incomplete, 0);
    assert_eq!(s.tables_differing_at_end, 0);
    // Whoever sees a server come back announces soon (not at its next
    // 30 s interval), so beliefs are whole again within seconds.
    assert!(
        s.membership_heal_s.is_some_and(|h| h <= 10.0),
        "membership healed after {:?}",
        s.membership_heal_s
    );
    assert_eq!(s.table_records, s.clients);
    assert!(s.membership_bytes_per_server_per_s.is_some_and(|b| b > 0.0));
    assert!(s.client.get("registered").is_some_and(|n| *n > 1_000));
    assert!(s.client.get("meet_friend").is_some_and(|n| *n > 0));
    assert_eq!(s.components, 1);
}

#[test]
fn the_settle_phase_lasts_one_announce_interval_after_the_last_start() {
    let cfg = rendezvous::server::Config::default();
    assert_eq!(ServersParams::default_settle(20, &cfg), 40.0);
    assert_eq!(ServersParams::default_settle(3_000, &cfg), 40.0);
    assert_eq!(ServersParams::default_settle(10_000, &cfg), 110.0);
    assert_eq!(ServersParams::new(1_000).settle_secs, 40.0);
}

#[test]
fn the_same_seed_gives_the_same_servers_run() {
    let mut p = ServersParams::new(12);
    p.loss = 0.05;
    p.steady_secs = 10.0;
    p.partition_secs = 10.0;
    p.heal_timeout_secs = 30.0;
    let strip = |s: sim::ServersSummary| {
        let mut v = serde_json::to_value(&s).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("wall_s");
        o.remove("peak_rss_mb");
        v
    };
    let a = strip(run(&p, &mut |_| {}));
    let b = strip(run(&p, &mut |_| {}));
    assert_eq!(a, b);
    p.seed = 2;
    assert_ne!(a, strip(run(&p, &mut |_| {})));
}

#[test]
fn without_a_partition_the_run_ends_after_the_steady_phase() {
    let mut p = ServersParams::new(12);
    p.loss = 0.05;
    p.partition_secs = 0.0;
    p.settle_secs = 20.0;
    let s = run(&p, &mut |_| {});
    assert!(s.completed, "stopped by {:?}", s.stopped_by);
    assert_eq!(s.partition_at_s, None);
    assert_eq!((s.heal_s, s.membership_heal_s), (None, None));
    assert_eq!(s.records_partition, 0);
    assert!(s.replication_measured > 10);
    assert!(s.death_detect_max_s.is_some_and(|d| d <= 10.0));
    assert_eq!(s.false_deaths, 0, "{:?}", s.false_death_examples);
    assert_eq!(s.partition_deaths, 0);
    // The run stops where the partition would have begun.
    assert!(
        s.sim_s <= p.join_secs + p.settle_secs + p.steady_secs + 0.2,
        "{}",
        s.sim_s
    );
}
