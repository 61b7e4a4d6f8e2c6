//! What an anonymous client can make a server hold, over real QUIC on
//! loopback (issue 11): client connections get client limits (no
//! unidirectional streams, no datagrams, 8 bidirectional streams), an
//! announced frame over the request limit closes the connection before its
//! body is read, an undecodable request is answered, a
//! client that never takes its notices is closed, and one address gets a
//! bounded number of connections. Every wait bounded.

mod common;

use chatd::client::Refused;
use rendezvous::{ErrorCode, FriendRef};
use std::time::Duration;

fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(10)).unwrap(),
    ));
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_connection_gets_client_limits() {
    let servers = common::cluster(1, 170, overlay::Config::local()).await;
    let addr = servers[0].node.addr();
    let client = common::client(91);
    let session = client.connect(addr).await.unwrap();
    let conn = session.connection().clone();
    assert_eq!(conn.max_datagram_size(), None, "no datagrams");
    // No unidirectional stream is ever granted (the server would never
    // read it): opening one waits forever.
    assert!(
        tokio::time::timeout(Duration::from_secs(2), conn.open_uni())
            .await
            .is_err(),
        "a unidirectional stream was granted"
    );
    // Eight requests may wait at once; a ninth stream waits for one of them.
    let mut held = Vec::new();
    for _ in 0..8 {
        let (mut s, r) = tokio::time::timeout(Duration::from_secs(20), conn.open_bi())
            .await
            .expect("one of eight streams")
            .unwrap();
        // Announce 100 bytes, send 1: the server holds the stream.
        s.write_all(&[0, 0, 0, 100, 0]).await.unwrap();
        held.push((s, r));
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(2), conn.open_bi())
            .await
            .is_err(),
        "a ninth concurrent stream was granted"
    );
    // The connection still answers once a stream is done (reset streams
    // are cancelled requests, not malformed ones).
    drop(held);
    let who = tokio::time::timeout(Duration::from_secs(30), session.who_am_i())
        .await
        .expect("an answer within 30 s");
    assert!(who.is_ok(), "{who:?}");
    // An undecodable request is answered `Malformed`; the connection stays.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0, 0, 0, 2, 0xff, 0xff]).await.unwrap();
    send.finish().unwrap();
    let answer: rendezvous::Response = tokio::time::timeout(
        Duration::from_secs(20),
        chatd::net::framing::read_msg(&mut recv),
    )
    .await
    .expect("an answer within 20 s")
    .unwrap();
    assert!(
        matches!(&answer, rendezvous::Response::Error(e) if e.code == ErrorCode::Malformed),
        "{answer:?}"
    );
    assert!(session.who_am_i().await.is_ok());
    // An announced length over the request limit is a protocol violation:
    // the connection is closed at once (code 10), nothing of the body read.
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&(64 * 1024u32).to_be_bytes()).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(20), conn.closed())
        .await
        .expect("closed within 20 s");
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, rendezvous::server::CLOSE_VIOLATION.into());
            assert_eq!(&c.reason[..], b"request over the size limit");
        }
        other => panic!("{other:?}"),
    }
    servers[0].node.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_takes_its_notices_is_closed() {
    let servers = common::cluster(1, 172, overlay::Config::local()).await;
    let addr = servers[0].node.addr();
    let ttl = Duration::from_secs(600);
    // The victim grants no unidirectional stream: no notice can reach it.
    let victim = common::client(92);
    let mut t = transport();
    t.max_concurrent_uni_streams(0u32.into());
    let vs = victim.connect_with_transport(addr, t).await.unwrap();
    common::register(&victim, &vs, "victim", ttl).await;
    let attacker = common::client(93);
    let a = attacker.connect(addr).await.unwrap();
    common::register(&attacker, &a, "attacker", ttl).await;
    for _ in 0..3 {
        // Found: the victim is told (or would be).
        a.meet(FriendRef::Id(victim.id())).await.unwrap();
    }
    let closed = tokio::time::timeout(Duration::from_secs(60), vs.closed())
        .await
        .expect("the server closes a client that does not take notices");
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, 8u32.into(), "{c:?}");
            assert_eq!(&c.reason[..], b"notices not read");
        }
        other => panic!("{other:?}"),
    }
    // Its record went offline with it; the attacker is still served.
    let gone = common::eventually(Duration::from_secs(20), || async {
        matches!(a.lookup(victim.id()).await, Ok(None))
    })
    .await;
    assert!(gone, "the closed victim's record is still online");
    servers[0].node.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_gets_a_bounded_number_of_connections() {
    let mut core = common::test_core();
    core.per_ip_connections = 3;
    let servers = common::cluster_with(1, 174, overlay::Config::local(), core).await;
    let addr = servers[0].node.addr();
    let clients: Vec<_> = (0..4).map(|i| common::client(100 + i)).collect();
    let mut sessions = Vec::new();
    for c in &clients[..3] {
        let s = c.connect(addr).await.unwrap();
        // Counted once the server has it: a request answered.
        s.who_am_i().await.unwrap();
        sessions.push(s);
    }
    // The fourth from 127.0.0.1 completes the handshake, then is closed.
    let fourth = clients[3].connect(addr).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(30), fourth.closed())
        .await
        .expect("closed within 30 s");
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, 5u32.into(), "{c:?}");
        }
        other => panic!("{other:?}"),
    }
    for s in &sessions {
        assert!(s.who_am_i().await.is_ok(), "the first three are served");
    }
    // One leaves: a new connection from the address is served again.
    sessions.pop().unwrap().close();
    let again = common::eventually(Duration::from_secs(30), || async {
        let c = common::client(110);
        match c.connect(addr).await {
            Ok(s) => s.who_am_i().await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    assert!(again, "a freed slot was not given to a new connection");
    servers[0].node.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_their_code_to_the_client() {
    let servers = common::cluster(1, 176, overlay::Config::local()).await;
    let addr = servers[0].node.addr();
    let c = common::client(95);
    let s = c.connect(addr).await.unwrap();
    let e = s
        .meet(FriendRef::Name("x".repeat(100)))
        .await
        .expect_err("a name over 64 bytes");
    let refused = e.downcast_ref::<Refused>().expect("a typed refusal");
    assert_eq!(refused.code(), ErrorCode::Invalid, "{e}");
    let e = s.meet(FriendRef::Name("bob".into())).await.unwrap_err();
    assert_eq!(
        e.downcast_ref::<Refused>().map(Refused::code),
        Some(ErrorCode::NotRegistered),
        "{e}"
    );
    servers[0].node.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_beyond_the_servers_rate_are_refused_before_any_work() {
    use chatd::net::driver::{Node, NodeConfig};
    let k = chatd::net::identity::Keypair::from_seed([178; 32]);
    let mut c = NodeConfig::new("127.0.0.1:0".parse().unwrap());
    c.overlay = overlay::Config::local();
    // Two at once, then one every 2 s.
    c.handshakes = (0.5, 2.0);
    c.handshakes_per_ip = (1e9, 1e9);
    let node = std::sync::Arc::new(Node::start(&k, c).await.unwrap());
    let _server =
        chatd::server::Server::start(node.clone(), k.signing_key().clone(), common::test_core());
    let addr = node.addr();
    let (a, b, x) = (
        common::client(111),
        common::client(112),
        common::client(113),
    );
    let sa = a.connect(addr).await.unwrap();
    let sb = b.connect(addr).await.unwrap();
    // The third is refused at once (QUIC CONNECTION_REFUSED), not left to
    // time out: a client moves on to another server.
    let third = tokio::time::timeout(Duration::from_secs(20), x.connect(addr))
        .await
        .expect("an answer within 20 s");
    let Err(e) = third else {
        panic!("a third handshake within the burst was admitted");
    };
    assert!(format!("{e:#}").contains("refused"), "{e:#}");
    // The connections it has are served meanwhile.
    assert!(sa.who_am_i().await.is_ok() && sb.who_am_i().await.is_ok());
    // Later the budget is back.
    let again = common::eventually(Duration::from_secs(30), || async {
        match x.connect(addr).await {
            Ok(s) => s.who_am_i().await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    assert!(again, "no handshake was admitted again");
    node.shutdown(Duration::from_secs(2)).await;
}
