//! The server relay (issues 6 and 11): only peers that met through the
//! cluster, only mutual requests are paired, bytes pass both ways
//! unchanged, and the limits (per client, per server, the wait for the
//! friend, no relay to oneself) refuse with clear errors. Loopback only;
//! every wait bounded.

mod common;

use rendezvous::{ErrorCode, FriendRef};
use std::time::Duration;

fn code(e: &anyhow::Error) -> Option<ErrorCode> {
    e.downcast_ref::<chatd::client::Refused>().map(|r| r.code())
}

async fn read_n(r: &mut quinn::RecvStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(20), r.read_exact(&mut buf))
        .await
        .expect("bytes within 20 s")
        .expect("read");
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_pairs_mutual_requests_forwards_bytes_and_enforces_limits() {
    let mut core = common::test_core();
    core.relay_per_client = 1;
    core.relay_sessions = 1;
    core.relay.bytes_per_sec = 1_000_000;
    // How long a request waits for the friend's: the two mutual requests
    // below are sent together, but a busy machine may deliver them a while
    // apart, so not too short.
    core.relay_wait = Duration::from_secs(3);
    let servers = common::cluster_with(1, 140, overlay::Config::local(), core).await;
    let addr = servers[0].node.addr();
    let (a, b, c, d) = (
        common::client(41),
        common::client(42),
        common::client(43),
        common::client(44),
    );
    let sa = a.connect(addr).await.unwrap();
    let sb = b.connect(addr).await.unwrap();
    let sc = c.connect(addr).await.unwrap();
    let sd = d.connect(addr).await.unwrap();

    // Keys that never met through the cluster get no relay slot.
    let e = sc.relay(d.id()).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::RelayNotMet), "{e}");
    let ttl = Duration::from_secs(600);
    for (client, session, name) in [
        (&a, &sa, "a"),
        (&b, &sb, "b"),
        (&c, &sc, "c"),
        (&d, &sd, "d"),
    ] {
        common::register(client, session, name, ttl).await;
    }
    for (session, friend) in [(&sa, b.id()), (&sc, a.id()), (&sc, d.id())] {
        session.meet(FriendRef::Id(friend)).await.unwrap();
    }

    // Nobody asks for a: refused after the wait.
    let e = sc.relay(a.id()).await.unwrap_err().to_string();
    assert!(e.contains("did not join the relay"), "{e}");
    let e = sa.relay(a.id()).await.unwrap_err().to_string();
    assert!(e.contains("yourself"), "{e}");

    // a and b ask for each other: paired, bytes pass both ways unchanged.
    // a writes its first datagram right after the request, as a client
    // does to save the round trip: the server keeps it until b asks, and b
    // reads it after its `Relaying`; a reads its own answer first.
    let (mut a_send, mut a_recv) = sa.relay_stream(b.id()).await.unwrap();
    a_send.write_all(b"\x00\x05early").await.unwrap();
    let (mut b_send, mut b_recv) = sb.relay(a.id()).await.unwrap();
    assert_eq!(read_n(&mut b_recv, 7).await, b"\x00\x05early");
    let answer: rendezvous::Response = chatd::net::framing::read_msg(&mut a_recv).await.unwrap();
    assert_eq!(answer, rendezvous::Response::Relaying);
    a_send.write_all(b"\x00\x03abc").await.unwrap();
    assert_eq!(read_n(&mut b_recv, 5).await, b"\x00\x03abc");
    b_send.write_all(b"\x00\x02hi").await.unwrap();
    assert_eq!(read_n(&mut a_recv, 4).await, b"\x00\x02hi");

    // a holds its one relay stream: a second is refused.
    let e = sa.relay(c.id()).await.unwrap_err().to_string();
    assert!(e.contains("relay limit"), "{e}");
    // The server carries its one session: c is refused at once.
    let e = sc.relay(d.id()).await.unwrap_err().to_string();
    assert!(e.contains("relay full"), "{e}");

    // a leaves: the session ends, b sees the end, and the slots are free
    // again (c's request is now only waiting for a friend who never comes).
    a_send.finish().unwrap();
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(20), b_recv.read_to_end(1 << 16)).await;
    rest.extend(end.expect("end within 20 s").expect("clean end"));
    assert!(rest.is_empty());
    drop((a_recv, b_send));
    drop(sa);
    let freed = common::eventually(Duration::from_secs(30), || async {
        match sc.relay(d.id()).await {
            Err(e) if e.to_string().contains("did not join the relay") => true,
            Err(e) if e.to_string().contains("relay full") => false,
            other => panic!("unexpected {other:?}"),
        }
    })
    .await;
    assert!(freed, "the session's slot was not released");
    for s in &servers {
        s.node.shutdown(Duration::from_secs(2)).await;
    }
}

/// Early frames (SPEC §11.8): alice's first message, sealed to bob's key,
/// goes right behind her relay request, before bob has even asked; bob's
/// relay stream hands it to him as soon as the server pairs them, and it
/// opens to the message — before either side has a QUIC connection
/// through the relay. Bob's key is needed: carol, who is not the friend,
/// cannot open what alice sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_message_crosses_the_relay_before_any_handshake() {
    use chatd::client::chat::Frame;
    use chatd::client::early::{self, Meeting};
    let servers = common::cluster_with(1, 150, overlay::Config::local(), common::test_core()).await;
    let addr = servers[0].node.addr();
    let (a, b) = (common::client(51), common::client(52));
    let (sa, sb) = (
        a.connect(addr).await.unwrap(),
        b.connect(addr).await.unwrap(),
    );
    let ttl = Duration::from_secs(600);
    common::register(&a, &sa, "a", ttl).await;
    common::register(&b, &sb, "b", ttl).await;
    sa.meet(FriendRef::Id(b.id())).await.unwrap();
    let meeting = Meeting {
        from: a.id(),
        to: b.id(),
        from_seq: 1,
        to_seq: 1,
    };
    let msg = Frame::Msg {
        epoch: 3,
        seq: 1,
        text: "before the handshake".into(),
    };
    let keep = Duration::from_millis(150);
    let la = a.relay_endpoint(&sa, b.id(), keep).await.unwrap();
    let sealed = early::seal(a.signing_key(), &meeting, &msg, [4; 32]).unwrap();
    assert!(la.send_early(sealed.into()));
    let mut lb = b.relay_endpoint(&sb, a.id(), keep).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), lb.early.recv())
        .await
        .expect("an early frame within 20 s")
        .expect("the stream is open");
    assert_eq!(early::open(b.signing_key(), &meeting, &got), Ok(msg));
    let c = common::client(53);
    let as_if_c = Meeting {
        to: c.id(),
        ..meeting
    };
    assert!(early::open(c.signing_key(), &as_if_c, &got).is_err());
    // Both were answered `Relaying`.
    assert!(la.answer.await.unwrap().is_ok());
    assert!(lb.answer.await.unwrap().is_ok());
    for s in &servers {
        s.node.shutdown(Duration::from_secs(2)).await;
    }
}
