//! Acknowledged is replicated (issue 11): a registration is answered
//! `Registered` only once another live server stored it. 5,000 clients
//! register at one server; after 1,500 acknowledgements that server is cut
//! off from the others (a partition) while registrations go on, then
//! killed (no goodbye, as `kill -9`) before it declared the others dead:
//! none that were acknowledged is lost — both survivors hold every one. (Acknowledging on receipt instead loses
//! every registration acknowledged during the cut.) Loopback only; every
//! wait bounded.

mod common;

use chatd::net::identity::Keypair;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const CLIENTS: u32 = 5_000;
/// The home server is killed once this many were acknowledged.
const KILL_AFTER: usize = 1_500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_home_server_loses_no_acknowledged_registration() {
    let mut core = common::test_core();
    // One test process plays 5,000 clients from 127.0.0.1: lift the
    // per-address quotas (they are tested in the core and in limits.rs).
    core.capacity = 10_000;
    core.per_ip_connections = 10_000;
    core.per_ip_records = 10_000;
    core.new_ids_per_min = 1e9;
    core.ip_rate = (1e9, 1e9);
    // Quicker attempts to copy, so the cut phase is short.
    core.ack_timeout = Duration::from_millis(500);
    // The cut below must stay shorter than the failure timeout: past it,
    // the cut-off server believes it is the last one and serves alone.
    core.dead_after = Duration::from_secs(120);
    let servers = common::cluster_with(3, 180, overlay::Config::local(), core).await;
    common::wait_until_formed(&servers).await;
    let home = servers[0].node.addr();
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let killed = Arc::new(AtomicBool::new(false));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let slots = Arc::new(tokio::sync::Semaphore::new(48));
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let (acked, killed, slots) = (acked.clone(), killed.clone(), slots.clone());
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let _slot = slots.acquire_owned().await.unwrap();
            let _done = Done(done);
            if killed.load(Ordering::SeqCst) {
                return None;
            }
            let mut seed = [7u8; 32];
            seed[..4].copy_from_slice(&i.to_le_bytes());
            let client = chatd::client::Client::new(
                Keypair::from_seed(seed),
                "127.0.0.1:0".parse().unwrap(),
            )
            .ok()?;
            let session = client.connect(home).await.ok()?;
            let observed = session.who_am_i().await.ok()?;
            let record = client.record(&session, "load", observed, 1, Duration::from_secs(600));
            session.register(record).await.ok()?;
            chatd::net::lock(&acked).push(client.id());
            // The connection stays open: presence is the connection.
            Some((client, session))
        }));
    }
    // Kill the home server once enough were acknowledged, with more
    // registrations in flight.
    let reached = common::eventually(Duration::from_secs(300), || {
        std::future::ready(chatd::net::lock(&acked).len() >= KILL_AFTER)
    })
    .await;
    assert!(
        reached,
        "only {} registrations acknowledged",
        chatd::net::lock(&acked).len()
    );
    // The cut: server 0 loses its links to the others and refuses new
    // ones, while clients keep registering with it.
    let others = servers[1..].iter().map(|s| s.node.id).collect();
    servers[0].node.block(others).await.unwrap();
    let at_cut = done.load(Ordering::SeqCst);
    let went_on = common::eventually(Duration::from_secs(120), || {
        std::future::ready(done.load(Ordering::SeqCst) >= (at_cut + 96).min(CLIENTS as usize))
    })
    .await;
    assert!(went_on, "registrations stopped during the cut");
    killed.store(true, Ordering::SeqCst);
    servers[0].members.kill();
    servers[0].node.kill();
    let mut alive = Vec::new();
    for t in tasks {
        if let Ok(Some(s)) = t.await {
            alive.push(s);
        }
    }
    let acked: Vec<_> = chatd::net::lock(&acked).clone();
    assert!(acked.len() >= KILL_AFTER);
    // Every acknowledged record is held by both survivors (the one that
    // stored it, then the other through broadcast or anti-entropy).
    let missing = |held: &[Option<u64>]| held.iter().filter(|s| s.is_none()).count();
    for s in &servers[1..] {
        let last = common::wait_for(
            Duration::from_secs(60),
            || s.members.held(acked.clone()),
            |held| missing(held) == 0,
        )
        .await;
        assert_eq!(
            missing(&last),
            0,
            "{} of {} acknowledged registrations lost at a survivor",
            missing(&last),
            acked.len()
        );
    }
    drop(alive);
    for s in &servers[1..] {
        s.node.shutdown(Duration::from_secs(2)).await;
    }
}

/// Counts a finished registration attempt, however it ended.
struct Done(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}
