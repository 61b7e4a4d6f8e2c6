//! Servers form the overlay over real QUIC on loopback: they join, a
//! broadcast reaches every server, and a server outside the cluster's
//! allowlist is refused while the cluster keeps working. Bounded in time;
//! asserts behaviour, never durations.

use bytes::Bytes;
use chatd::driver::{Node, NodeConfig};
use chatd::identity::Keypair;
use chatd::tls::Admission;
use std::collections::BTreeSet;
use std::time::Duration;

fn cfg(
    bootstrap: Vec<chatd::identity::ServerAddr>,
    allow: &BTreeSet<overlay::PeerId>,
) -> NodeConfig {
    let mut c = NodeConfig::new("127.0.0.1:0".parse().unwrap());
    c.overlay = overlay::Config::local();
    c.bootstrap = bootstrap;
    c.admission = Admission {
        allow: allow.clone(),
    };
    c
}

/// Polls `check` every 50 ms for at most `limit`.
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_servers_form_an_overlay_and_broadcast_to_all() {
    let keys: Vec<Keypair> = (0..5u8).map(|i| Keypair::from_seed([i + 1; 32])).collect();
    let allow: BTreeSet<_> = keys.iter().map(|k| k.id().0).collect();
    let first = Node::start(&keys[0], cfg(vec![], &allow)).await.unwrap();
    let mut nodes = vec![first];
    for k in &keys[1..] {
        let boot = vec![nodes[0].addr()];
        nodes.push(Node::start(k, cfg(boot, &allow)).await.unwrap());
    }
    // Everyone gets neighbors; with 5 servers and views of 5, everyone is
    // linked to everyone else in the end.
    let joined = eventually(Duration::from_secs(20), || async {
        let mut ok = true;
        for n in &nodes {
            ok &= n
                .snapshot()
                .await
                .map(|s| s.active.len() == 4)
                .unwrap_or(false);
        }
        ok
    })
    .await;
    for n in &nodes {
        let s = n.snapshot().await.unwrap();
        assert!(joined, "server {:?} has active view {:?}", s.id, s.active);
    }
    let mut receivers: Vec<_> = nodes.iter().map(|n| n.deliveries()).collect();
    let id = nodes[3]
        .broadcast(Bytes::from_static(b"server 3 says hi"))
        .await
        .unwrap();
    for (i, rx) in receivers.iter_mut().enumerate() {
        if i == 3 {
            continue;
        }
        let d = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("server {i} got nothing"))
            .expect("node running");
        assert_eq!(d.id, id);
        assert_eq!(&d.payload[..], b"server 3 says hi");
        assert_eq!(d.origin, nodes[3].id);
    }
    // An oversize broadcast is an error to the caller.
    let big = Bytes::from(vec![
        0u8;
        overlay::Config::local().limits.max_payload_size + 1
    ]);
    assert!(nodes[0].broadcast(big).await.is_err());
    for n in &nodes {
        n.shutdown(Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_outside_the_allowlist_is_refused() {
    let member = Keypair::from_seed([21; 32]);
    let member2 = Keypair::from_seed([22; 32]);
    let stranger = Keypair::from_seed([23; 32]);
    let allow: BTreeSet<_> = [member.id().0, member2.id().0].into();
    let a = Node::start(&member, cfg(vec![], &allow)).await.unwrap();
    let b = Node::start(&member2, cfg(vec![a.addr()], &allow))
        .await
        .unwrap();
    // The stranger trusts the cluster, but the cluster does not trust it.
    let open: BTreeSet<_> = BTreeSet::new();
    let s = Node::start(&stranger, cfg(vec![a.addr()], &open))
        .await
        .unwrap();
    let members_linked = eventually(Duration::from_secs(10), || async {
        a.snapshot()
            .await
            .map(|x| x.active == vec![b.id])
            .unwrap_or(false)
    })
    .await;
    assert!(members_linked);
    // Give the stranger several join attempts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sa = a.snapshot().await.unwrap();
    assert!(
        !sa.active.contains(&s.id),
        "the stranger got into the active view"
    );
    assert!(s.snapshot().await.unwrap().active.is_empty());
    assert!(
        s.snapshot().await.unwrap().stats.joins_sent >= 2,
        "it kept trying, with backoff"
    );
    // The cluster still works.
    let mut rx = b.deliveries();
    a.broadcast(Bytes::from_static(b"members only"))
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&d.payload[..], b"members only");
    for n in [&a, &b, &s] {
        n.shutdown(Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_from_a_member_are_refused_and_counted() {
    use chatd::tls::{self, Credentials};
    let a_key = Keypair::from_seed([31; 32]);
    let rogue_key = Keypair::from_seed([32; 32]);
    let allow: BTreeSet<_> = [a_key.id().0, rogue_key.id().0].into();
    let a = Node::start(&a_key, cfg(vec![], &allow)).await.unwrap();
    // A member (it passes admission) that speaks garbage on the overlay ALPN.
    let creds = Credentials::new(&rogue_key).unwrap();
    let tls = tls::client_config(&creds, a.id, chatd::driver::OVERLAY_ALPN).unwrap();
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = endpoint
        .connect_with(
            quinn::ClientConfig::new(std::sync::Arc::new(quic)),
            a.local_addr,
            tls::SERVER_NAME,
        )
        .unwrap()
        .await
        .unwrap();
    let mut s = conn.open_uni().await.unwrap();
    // A frame of type 0xEE, then a length prefix far over the limit.
    s.write_all(&[0, 0, 0, 3, 0xEE, 1, 2]).await.unwrap();
    s.write_all(&[0xFF, 0xFF, 0xFF, 0xFF]).await.unwrap();
    let _ = s.finish();
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    assert!(closed.is_ok(), "the server closed the connection");
    let snap = a.snapshot().await.unwrap();
    assert!(
        snap.stats.decode_errors >= 1,
        "decode errors counted: {}",
        snap.stats.decode_errors
    );
    assert!(snap.active.is_empty());
    // The server keeps serving: a proper member still joins.
    let b = Node::start(
        &Keypair::from_seed([33; 32]),
        cfg(vec![a.addr()], &BTreeSet::new()),
    )
    .await
    .unwrap();
    let mut allow_b = allow.clone();
    allow_b.insert(b.id);
    a.set_admission(Admission { allow: allow_b });
    let linked = eventually(Duration::from_secs(10), || async {
        a.snapshot()
            .await
            .map(|s| s.active == vec![b.id])
            .unwrap_or(false)
    })
    .await;
    assert!(linked);
    a.shutdown(Duration::from_secs(2)).await;
    b.shutdown(Duration::from_secs(2)).await;
}
