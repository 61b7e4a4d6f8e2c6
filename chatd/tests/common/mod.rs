//! A cluster of in-process chatd servers on loopback (QUIC, membership,
//! registry), and the one way the integration tests wait for something:
//! poll a condition until it holds, with a generous deadline, never a fixed
//! sleep followed by an assertion (CI machines are busy).

use chatd::net::driver::{Node, NodeConfig};
use chatd::net::identity::Keypair;
use chatd::server::Server as Rendezvous;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How often [`wait_for`] probes.
const POLL: Duration = Duration::from_millis(50);

/// Evaluates `probe` every 50 ms until `done` holds for its value or `limit`
/// has passed (it is evaluated at least once, and once more at the
/// deadline); returns the last value, for the caller's assertion message.
#[allow(dead_code)] // each test binary uses its own subset
pub async fn wait_for<T, F, Fut>(limit: Duration, mut probe: F, done: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let value = probe().await;
        if done(&value) || tokio::time::Instant::now() >= deadline {
            return value;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether `check` comes true within `limit` (polled every 50 ms).
#[allow(dead_code)] // each test binary uses its own subset
pub async fn eventually<F, Fut>(limit: Duration, check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(limit, check, |ok| *ok).await
}

/// [`eventually`] for tests without a runtime of their own: a blocking
/// `check`, polled from a small runtime.
#[allow(dead_code)] // each test binary uses its own subset
pub fn eventually_blocking(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime for polling")
        .block_on(eventually(limit, || std::future::ready(check())))
}

/// Waits (at most 30 s) until every one of `servers` lists all of them as
/// live: the overlay carries broadcasts between every pair (replication
/// and load reports ride on it). Panics with the counts otherwise.
#[allow(dead_code)] // each test binary uses its own subset
pub async fn wait_until_formed(servers: &[Server]) {
    let counts = wait_for(
        Duration::from_secs(30),
        || std::future::ready(live_counts(servers)),
        |c| c.iter().all(|&n| n == servers.len()),
    )
    .await;
    assert!(
        counts.iter().all(|&n| n == servers.len()),
        "the {} servers did not all see each other within 30 s; live server counts {counts:?}",
        servers.len()
    );
}

fn live_counts(servers: &[Server]) -> Vec<usize> {
    servers.iter().map(|s| s.members.servers().len()).collect()
}

/// One running server: the overlay node and the rendezvous server on it.
#[allow(dead_code)] // each test binary uses its own subset
pub struct Server {
    pub node: Arc<Node>,
    pub members: Arc<Rendezvous>,
}

/// The core configuration of test servers: heartbeats every 0.5 s, dead
/// after 4 s, capacity 100, quotas as in production.
#[allow(dead_code)]
pub fn test_core() -> rendezvous::Config {
    rendezvous::Config {
        heartbeat: Duration::from_millis(500),
        dead_after: Duration::from_secs(4),
        capacity: 100,
        sync_interval: Duration::from_secs(2),
        ..rendezvous::Config::default()
    }
}

/// Starts `n` servers with keys seeded `seed..seed + n`, every one
/// bootstrapping through the first. Heartbeats every 0.5 s, dead after 4 s.
#[allow(dead_code)] // each test binary uses its own subset
pub async fn cluster(n: u8, seed: u8, overlay_cfg: overlay::Config) -> Vec<Server> {
    cluster_with(n, seed, overlay_cfg, test_core()).await
}

/// [`cluster`] with the servers' core configuration.
pub async fn cluster_with(
    n: u8,
    seed: u8,
    overlay_cfg: overlay::Config,
    core: rendezvous::Config,
) -> Vec<Server> {
    if let Ok(filter) = std::env::var("CHATD_TEST_LOG") {
        // Debugging aid: CHATD_TEST_LOG=chatd=debug shows the servers' logs.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
    let mut out: Vec<Server> = Vec::new();
    for i in 0..n {
        let k = Keypair::from_seed([seed + i; 32]);
        let mut c = NodeConfig::new("127.0.0.1:0".parse().unwrap());
        c.overlay = overlay_cfg.clone();
        // Every test client dials from 127.0.0.1, often hundreds at once:
        // no handshake rate (it is tested in rendezvous::limit, in
        // limits.rs and by the abuse benchmark).
        c.handshakes = (1e9, 1e9);
        c.handshakes_per_ip = (1e9, 1e9);
        c.bootstrap = out.first().map(|s| vec![s.node.addr()]).unwrap_or_default();
        let node = Arc::new(Node::start(&k, c).await.unwrap());
        let members = Arc::new(Rendezvous::start(
            node.clone(),
            k.signing_key().clone(),
            core.clone(),
        ));
        out.push(Server { node, members });
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
