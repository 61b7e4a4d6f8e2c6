//! A cluster of in-process chatd servers on loopback (QUIC, membership,
//! registry), shared by the integration tests.

use chatd::driver::{Node, NodeConfig};
use chatd::identity::Keypair;
use chatd::membership::{Service, Settings};
use chatd::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

/// One running server; dropping it stops its services.
#[allow(dead_code)] // each test binary uses its own subset
pub struct Server {
    pub node: Arc<Node>,
    pub members: Arc<Service>,
    _registry: Registry,
}

/// Starts `n` servers with keys seeded `seed..seed + n`, every one
/// bootstrapping through the first. Heartbeats every 0.5 s, dead after 4 s.
#[allow(dead_code)] // each test binary uses its own subset
pub async fn cluster(n: u8, seed: u8, overlay_cfg: overlay::Config) -> Vec<Server> {
    cluster_with_relay(n, seed, overlay_cfg, chatd::relay::RelayLimits::default()).await
}

/// [`cluster`] with the servers' relay limits.
pub async fn cluster_with_relay(
    n: u8,
    seed: u8,
    overlay_cfg: overlay::Config,
    relay: chatd::relay::RelayLimits,
) -> Vec<Server> {
    let mut out: Vec<Server> = Vec::new();
    for i in 0..n {
        let k = Keypair::from_seed([seed + i; 32]);
        let mut c = NodeConfig::new("127.0.0.1:0".parse().unwrap());
        c.overlay = overlay_cfg.clone();
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
        let registry = Registry::start_with(node.clone(), members.clone(), relay.clone());
        out.push(Server {
            node,
            members,
            _registry: registry,
        });
    }
    out
}

/// A dial-only client on loopback with a key from `seed`.
#[allow(dead_code)] // each test binary uses its own subset
pub fn client(seed: u8) -> chatd::client::Client {
    chatd::client::Client::new(
        Keypair::from_seed([seed; 32]),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap()
}

/// Registers `client` as `name` (sequence 1, valid for `ttl`) through
/// `session`, with the address the server observed; returns that address.
#[allow(dead_code)]
pub async fn register(
    client: &chatd::client::Client,
    session: &chatd::client::Session,
    name: &str,
    ttl: Duration,
) -> std::net::SocketAddr {
    let observed = session.who_am_i().await.unwrap();
    session
        .register(client.record(session, name, observed, 1, ttl))
        .await
        .unwrap();
    observed
}
