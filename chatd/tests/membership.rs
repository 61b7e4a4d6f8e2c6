//! Server membership over real QUIC on loopback: every server learns the
//! whole live set; a crashed server is detected (suspicion confirmed by a
//! second server, or silence) and a leaving one is removed at once.

use chatd::driver::{Node, NodeConfig};
use chatd::identity::Keypair;
use chatd::membership::{Service, Settings};
use std::sync::Arc;
use std::time::Duration;

fn settings() -> Settings {
    Settings {
        heartbeat: Duration::from_millis(500),
        dead_after: Duration::from_secs(4),
        capacity: 100,
    }
}

async fn eventually<F: FnMut() -> bool>(limit: Duration, mut check: F) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

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
            settings(),
        ));
        nodes.push(node);
    }
    let all_five = eventually(Duration::from_secs(20), || {
        services.iter().all(|s| s.servers().len() == 5)
    })
    .await;
    let counts: Vec<usize> = services.iter().map(|s| s.servers().len()).collect();
    assert!(all_five, "live server counts {counts:?}");

    // Server 4 crashes: no leave, no goodbye.
    nodes[4].kill();
    let crashed = nodes[4].id;
    let noticed = eventually(Duration::from_secs(15), || {
        services[..4]
            .iter()
            .all(|s| s.servers().iter().all(|r| r.id != crashed))
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

    // Server 3 leaves gracefully: the others drop it without waiting for a timeout.
    services[3].leave(&nodes[3], keys[3].signing_key()).await;
    let left = nodes[3].id;
    let dropped = eventually(Duration::from_secs(3), || {
        services[..3]
            .iter()
            .all(|s| s.servers().iter().all(|r| r.id != left))
    })
    .await;
    assert!(
        dropped,
        "the leave was not applied within 3 s (dead_after is 4 s)"
    );
    nodes[3].shutdown(Duration::from_secs(2)).await;
    for n in &nodes[..3] {
        n.shutdown(Duration::from_secs(2)).await;
    }
}
