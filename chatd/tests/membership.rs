//! Server membership over real QUIC on loopback: every server learns the
//! whole live set; a crashed server is detected (suspicion confirmed by a
//! second server, or silence) and a leaving one is removed because it said
//! so, not because it fell silent.

mod common;

use chatd::net::driver::{Node, NodeConfig};
use chatd::net::identity::Keypair;
use chatd::server::Server as Service;
use common::{eventually, wait_for};
use rendezvous::Liveness;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_learn_each_other_and_notice_crashes_and_leaves() {
    let keys: Vec<Keypair> = (0..5u8).map(|i| Keypair::from_seed([40 + i; 32])).collect();
    let mut nodes: Vec<Arc<Node>> = Vec::new();
    let mut services: Vec<Service> = Vec::new();
    for k in &keys {
        let mut c = NodeConfig::new("127.0.0.1:0".parse().unwrap());
        c.overlay = overlay::Config::local();
        c.bootstrap = nodes.first().map(|n| vec![n.addr()]).unwrap_or_default();
        let node = Arc::new(Node::start(k, c).await.unwrap());
        services.push(Service::start(
            node.clone(),
            k.signing_key().clone(),
            common::test_core(),
        ));
        nodes.push(node);
    }
    let counts = wait_for(
        Duration::from_secs(30),
        || {
            std::future::ready(
                services
                    .iter()
                    .map(|s| s.servers().len())
                    .collect::<Vec<_>>(),
            )
        },
        |c| c.iter().all(|&n| n == 5),
    )
    .await;
    assert!(
        counts.iter().all(|&n| n == 5),
        "live server counts {counts:?}"
    );

    // Server 4 crashes: no leave, no goodbye.
    nodes[4].kill();
    let crashed = nodes[4].id;
    let noticed = eventually(Duration::from_secs(30), || {
        std::future::ready(
            services[..4]
                .iter()
                .all(|s| s.servers().iter().all(|r| r.id != crashed)),
        )
    })
    .await;
    assert!(
        noticed,
        "the crash went unnoticed: {:?}",
        services
            .iter()
            .map(|s| s.servers().len())
            .collect::<Vec<_>>()
    );

    // Server 3 leaves gracefully: the others drop it because it said so
    // (Left), not because it fell silent for dead_after (Dead). Checked by
    // the recorded reason rather than by a deadline shorter than
    // dead_after, which a busy machine can miss.
    services[3].leave().await;
    let left = nodes[3].id;
    let liveness = || -> Vec<Option<Liveness>> {
        services[..3]
            .iter()
            .map(|s| {
                s.status()
                    .members
                    .iter()
                    .find(|(r, _)| r.id == left)
                    .map(|(_, l)| l.clone())
            })
            .collect()
    };
    let seen = wait_for(
        Duration::from_secs(30),
        || std::future::ready(liveness()),
        |l| l.iter().all(|x| *x == Some(Liveness::Left)),
    )
    .await;
    assert!(
        seen.iter().all(|x| *x == Some(Liveness::Left)),
        "the leave was not applied (what servers 0-2 believe of server 3: {seen:?})"
    );
    assert!(
        services[..3]
            .iter()
            .all(|s| s.servers().iter().all(|r| r.id != left)),
        "a server that left is still listed as live"
    );
    nodes[3].shutdown(Duration::from_secs(2)).await;
    for n in &nodes[..3] {
        n.shutdown(Duration::from_secs(2)).await;
    }
}
