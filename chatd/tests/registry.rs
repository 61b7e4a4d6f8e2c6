//! The client protocol against a cluster over real QUIC on loopback: a
//! record registered at server 1 is found at server 5; clients cannot
//! register for someone else; the server list is ordered by load.

use chatd::client::Client;
use chatd::driver::{Node, NodeConfig};
use chatd::identity::Keypair;
use chatd::membership::{Service, Settings};
use chatd::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

struct Server {
    node: Arc<Node>,
    _members: Arc<Service>,
    _registry: Registry,
}

async fn cluster(n: u8) -> Vec<Server> {
    let mut out: Vec<Server> = Vec::new();
    for i in 0..n {
        let k = Keypair::from_seed([60 + i; 32]);
        let mut c = NodeConfig::new("127.0.0.1:0".parse().unwrap());
        c.overlay = overlay::Config::local();
        c.bootstrap = out.first().map(|s| vec![s.node.addr()]).unwrap_or_default();
        let node = Arc::new(Node::start(&k, c).await.unwrap());
        let settings = Settings {
            heartbeat: Duration::from_millis(500),
            dead_after: Duration::from_secs(4),
            capacity: 100,
        };
        let members = Arc::new(Service::start(
            node.clone(),
            k.signing_key().clone(),
            settings,
        ));
        let registry = Registry::start(node.clone(), members.clone());
        out.push(Server {
            node,
            _members: members,
            _registry: registry,
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_registered_at_server_1_is_found_at_server_5() {
    let servers = cluster(5).await;
    // Let the overlay form before registering (replication rides on it).
    tokio::time::sleep(Duration::from_secs(2)).await;

    let alice = Client::new(Keypair::from_seed([1; 32]), "127.0.0.1:0".parse().unwrap()).unwrap();
    let s1 = alice.connect(servers[0].node.addr()).await.unwrap();
    let observed = s1.who_am_i().await.unwrap();
    assert_eq!(observed.ip().to_string(), "127.0.0.1");
    let record = alice.record(&s1, "alice", observed, 1, Duration::from_secs(60));
    s1.register(record).await.unwrap();

    let bob = Client::new(Keypair::from_seed([2; 32]), "127.0.0.1:0".parse().unwrap()).unwrap();
    let s5 = bob.connect(servers[4].node.addr()).await.unwrap();
    let mut found = None;
    for _ in 0..100 {
        if let Some(r) = s5.lookup_name("alice").await.unwrap() {
            found = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = found.expect("server 5 never learned alice's record");
    assert_eq!(r.body.peer, alice.id());
    assert_eq!(r.body.home_server, servers[0].node.id);
    assert_eq!(r.body.public_addr, Some(observed));
    assert_eq!(
        s5.lookup(alice.id()).await.unwrap().map(|r| r.body.seq),
        Some(1)
    );

    // Bob cannot register a record for alice, even one alice signed.
    let replay = alice.record(&s5, "alice", observed, 2, Duration::from_secs(60));
    assert!(s5.register(replay).await.is_err());

    // Which server should a client use: every live server, least loaded
    // first (server 1 has a client, server 5 has one: they come last).
    let mut listed = Vec::new();
    for _ in 0..100 {
        listed = s5.servers().await.unwrap();
        if listed.len() == 5 && listed.iter().filter(|s| s.clients > 0).count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listed.len(), 5);
    assert!(
        listed.windows(2).all(|w| w[0].load() <= w[1].load()),
        "{listed:?}"
    );
    assert_eq!(listed[0].clients, 0);
    for s in &servers {
        s.node.shutdown(Duration::from_secs(2)).await;
    }
}
