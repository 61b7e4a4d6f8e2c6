//! The direct path to a friend: both sides dial every candidate address and
//! accept the friend on the same UDP socket while probing from it (which
//! opens cone NATs and a symmetric NAT facing a cone), plus the birthday
//! method when exactly one side's NAT maps per destination; and the rule by
//! which the two sides agree on one connection and its chat stream.

use crate::client::Client;
use crate::client::chat::Frame;
use crate::client::status;
use crate::net::framing::write_msg;
use overlay::PeerId;
use rand::RngExt;
use rendezvous::{NatMapping, PeerRecord};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// A connection and its chat stream.
pub(crate) type Chat = (quinn::Connection, quinn::SendStream, quinn::RecvStream);

/// How long an open direct connection may wait for the friend's stream
/// after the deadline (the friend opened it just before).
const STREAM_GRACE: Duration = Duration::from_millis(1500);

/// Both sides dial every candidate address of the friend and accept the
/// friend (its key, the chat ALPN) while sending probes, so whichever
/// direction the NATs let through completes; with one symmetric NAT, the
/// birthday method runs beside it. The lower id takes the first connection
/// that completes and opens the chat stream on it; the higher id keeps
/// every connection that completes and uses the one the stream arrives on,
/// so the two agree even when each completed a different one.
pub(crate) async fn direct(
    client: &Client,
    own_nat: NatMapping,
    friend: &PeerRecord,
    budget: Duration,
    incoming: &mut Incoming,
) -> anyhow::Result<Chat> {
    let me = client.id();
    let fid = friend.body.peer;
    let mut candidates: Vec<SocketAddr> = friend.body.private_addrs.clone();
    candidates.extend(friend.body.public_addr);
    // Each address once, and only those our socket can reach (its family).
    let v6 = client.endpoint().local_addr().is_ok_and(|a| a.is_ipv6());
    candidates.retain(|a| a.is_ipv6() == v6);
    let mut seen = std::collections::BTreeSet::new();
    candidates.retain(|a| seen.insert(*a));
    let sent = Arc::new(AtomicU32::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let tx = incoming.tx.clone();
    let cfg = client.friend_config(fid)?;
    let friend_hard = friend.body.nat == NatMapping::Dependent;
    let me_hard = own_nat == NatMapping::Dependent;
    match (me_hard, friend_hard, friend.body.public_addr) {
        (true, false, Some(public)) => {
            status(&format!(
                "punching (birthday: {BIRTHDAY_SOCKETS} sockets towards the friend)"
            ));
            tasks.spawn(birthday_sockets(
                public,
                cfg.clone(),
                sent.clone(),
                tx.clone(),
            ));
        }
        (false, true, Some(public)) => {
            status("punching (birthday: probing random ports of the friend's NAT)");
            tasks.spawn(birthday_spray(
                client.probe_socket(),
                public.ip(),
                sent.clone(),
                tokio::time::Instant::now() + budget,
            ));
        }
        _ => status("punching"),
    }
    tasks.spawn(punch(
        client.probe_socket(),
        candidates.clone(),
        sent.clone(),
    ));
    for addr in candidates {
        let connecting =
            match client
                .endpoint()
                .connect_with(cfg.clone(), addr, crate::net::tls::SERVER_NAME)
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "cannot dial this candidate");
                    continue;
                }
            };
        let tx = tx.clone();
        tasks.spawn(async move {
            if let Ok(conn) = connecting.await {
                let _ = tx.send(conn).await;
            }
        });
    }
    drop(tx);
    let chat = agree(
        me,
        fid,
        &mut incoming.rx,
        tokio::time::Instant::now() + budget,
    )
    .await;
    tasks.abort_all();
    tracing::debug!(
        probes = sent.load(Ordering::Relaxed),
        "hole punching finished"
    );
    chat
}

/// The friend's direct connections, taken from the moment we know of it
/// (before the common start instant: a friend that starts sooner must not
/// be refused) until dropped, and our own dials' connections.
pub(crate) struct Incoming {
    tx: tokio::sync::mpsc::Sender<quinn::Connection>,
    rx: tokio::sync::mpsc::Receiver<quinn::Connection>,
    fid: PeerId,
    _accepting: crate::client::AcceptGuard,
}

impl Incoming {
    pub(crate) fn new(client: &Client, fid: PeerId) -> Incoming {
        let (tx, rx) = tokio::sync::mpsc::channel::<quinn::Connection>(8);
        let accepting = client.accept_from(fid, tx.clone());
        Incoming {
            tx,
            rx,
            fid,
            _accepting: accepting,
        }
    }

    /// After our own attempts ran out: the friend's connections only, for
    /// `budget` more. The friend may have started later than we did (it
    /// met us later) and complete a connection after our deadline;
    /// refused, it would take that connection for the chat while we wait
    /// for a relay it never comes to.
    pub(crate) async fn late(&mut self, me: PeerId, budget: Duration) -> anyhow::Result<Chat> {
        agree(
            me,
            self.fid,
            &mut self.rx,
            tokio::time::Instant::now() + budget,
        )
        .await
    }
}

/// Agrees with the friend on one connection from `conns` and opens the
/// chat stream on it: the lower id takes the first connection and opens
/// the stream; the higher id takes the connection the stream arrives on.
pub(crate) async fn agree(
    me: PeerId,
    fid: PeerId,
    conns: &mut tokio::sync::mpsc::Receiver<quinn::Connection>,
    deadline: tokio::time::Instant,
) -> anyhow::Result<Chat> {
    if me < fid {
        open_on_first(conns, deadline).await
    } else {
        accept_on_any(conns, deadline).await
    }
}

/// Opens the chat stream on the first connection and says hello on it.
async fn open_on_first(
    conns: &mut tokio::sync::mpsc::Receiver<quinn::Connection>,
    deadline: tokio::time::Instant,
) -> anyhow::Result<Chat> {
    // A connection that closed meanwhile (a parked one the friend gave up)
    // does not end the attempt: the next may come.
    let mut last = None;
    loop {
        match tokio::time::timeout_at(deadline, conns.recv()).await {
            Ok(Some(conn)) => match open_chat(conn).await {
                Ok(chat) => return Ok(chat),
                Err(e) => last = Some(e),
            },
            _ => match last {
                Some(e) => return Err(e.context("the friend could not be reached")),
                None => anyhow::bail!("the friend could not be reached"),
            },
        }
    }
}

/// Opens the chat stream on `conn` and sends [`Frame::Hello`], so the
/// friend sees the stream at once.
async fn open_chat(conn: quinn::Connection) -> anyhow::Result<Chat> {
    let (mut send, recv) = conn.open_bi().await?;
    write_msg(&mut send, &Frame::Hello).await?;
    Ok((conn, send, recv))
}

async fn accept_on_any(
    conns: &mut tokio::sync::mpsc::Receiver<quinn::Connection>,
    deadline: tokio::time::Instant,
) -> anyhow::Result<Chat> {
    let mut streams = tokio::task::JoinSet::new();
    loop {
        // An open connection gets a grace period: the friend may have
        // opened the stream on it just before the deadline.
        let until = if streams.is_empty() {
            deadline
        } else {
            deadline + STREAM_GRACE
        };
        tokio::select! {
            Some(conn) = conns.recv() => {
                streams.spawn(async move {
                    let (send, recv) = conn.accept_bi().await?;
                    anyhow::Ok((conn, send, recv))
                });
            }
            Some(res) = streams.join_next() => {
                if let Ok(Ok(chat)) = res {
                    return Ok(chat);
                }
            }
            () = tokio::time::sleep_until(until) => {
                anyhow::bail!("the friend did not connect")
            }
        }
    }
}

/// Accepts connections until aborted, passing on those from the friend
/// with the chat ALPN and closing the others.
pub(crate) async fn accept_friend(
    endpoint: quinn::Endpoint,
    fid: PeerId,
    out: tokio::sync::mpsc::Sender<quinn::Connection>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let Ok(conn) = incoming.await else { continue };
        if !is_friend(&conn, fid) {
            conn.close(1u32.into(), b"not expected");
        } else if out.send(conn).await.is_err() {
            return;
        }
    }
}

fn is_friend(conn: &quinn::Connection, fid: PeerId) -> bool {
    crate::client::chat_peer(conn) == Some(fid)
}

/// Probe rounds: one datagram to every candidate every `PUNCH_EVERY`, at
/// most `PUNCH_ROUNDS` times (as long as the connect deadline); aborted as
/// soon as the connection attempt ends.
const PUNCH_ROUNDS: u32 = 40;
const PUNCH_EVERY: Duration = Duration::from_millis(250);

/// Sends probes from (a clone of) the endpoint's socket, counting them.
async fn punch(
    socket: Option<std::net::UdpSocket>,
    candidates: Vec<SocketAddr>,
    sent: Arc<AtomicU32>,
) {
    let Some(socket) = socket else { return };
    for _ in 0..PUNCH_ROUNDS {
        for addr in &candidates {
            if socket.send_to(crate::client::PUNCH_PROBE, addr).is_ok() {
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(PUNCH_EVERY).await;
    }
}

/// Sockets the symmetric side opens for the birthday method.
const BIRTHDAY_SOCKETS: usize = 256;
/// Random-port probes per spray round, rounds, and their spacing: 64 ×
/// 100 = 6,400 probes over 2.5 s (with 256 mappings open on a
/// 64,512-port range a probe hits with p ≈ 1/252, so ~175 probes is the
/// median), then one round every `SPRAY_SLOW_EVERY` (256 probes/s) for
/// the rest of the direct budget, in case the friend's sockets opened
/// their mappings late or the dial after a hit was lost.
const SPRAY_BATCH: usize = 64;
const SPRAY_ROUNDS: usize = 100;
const SPRAY_EVERY: Duration = Duration::from_millis(25);
const SPRAY_SLOW_EVERY: Duration = Duration::from_millis(250);
/// The port range a symmetric NAT picks from (Linux's default for
/// `snat ... random` and most home routers stay within it).
const SPRAY_PORTS: std::ops::RangeInclusive<u16> = 1024..=65535;

/// The birthday method, side behind the symmetric NAT: many sockets, each
/// with its own external port, probe the friend's one public endpoint
/// (opening their mappings and the friend-facing filters) and listen; the
/// friend sprays random ports of our NAT, and the first of our sockets one
/// of its probes reaches dials the friend from a QUIC endpoint of its own.
async fn birthday_sockets(
    friend: SocketAddr,
    cfg: quinn::ClientConfig,
    sent: Arc<AtomicU32>,
    out: tokio::sync::mpsc::Sender<quinn::Connection>,
) {
    let bind: SocketAddr = if friend.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let mut listeners = tokio::task::JoinSet::new();
    for _ in 0..BIRTHDAY_SOCKETS {
        let Ok(socket) = tokio::net::UdpSocket::bind(bind).await else {
            break;
        };
        let sent = sent.clone();
        listeners.spawn(async move {
            let mut buf = [0u8; 64];
            for _ in 0..PUNCH_ROUNDS {
                if socket
                    .send_to(crate::client::PUNCH_PROBE, friend)
                    .await
                    .is_ok()
                {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                let wait = tokio::time::sleep(PUNCH_EVERY);
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        r = socket.recv_from(&mut buf) => {
                            if let Ok((n, from)) = r
                                && from.ip() == friend.ip()
                                && &buf[..n] == crate::client::PUNCH_PROBE
                            {
                                return Some((socket, from));
                            }
                        }
                        () = &mut wait => break,
                    }
                }
            }
            None
        });
    }
    // The first socket a probe reached dials the friend; if that handshake
    // fails, the other sockets go on listening (bounded by their rounds).
    while let Some(res) = listeners.join_next().await {
        let Ok(Some((socket, from))) = res else {
            continue;
        };
        tracing::debug!(%from, "birthday: a probe came through");
        let endpoint = socket
            .into_std()
            .map_err(anyhow::Error::from)
            .and_then(Client::endpoint_on);
        let Ok(endpoint) = endpoint else { continue };
        let Ok(connecting) = endpoint.connect_with(cfg.clone(), from, crate::net::tls::SERVER_NAME)
        else {
            continue;
        };
        match connecting.await {
            Ok(conn) => {
                listeners.abort_all();
                let _ = out.send(conn).await;
                return;
            }
            Err(e) => tracing::debug!(%from, error = %e, "birthday: the dial failed"),
        }
    }
}

/// The birthday method, side with one mapping for every destination:
/// probes random ports of the friend's NAT from our one socket, so that
/// whichever of its sockets' mappings we hit lets the friend's dial in.
async fn birthday_spray(
    socket: Option<std::net::UdpSocket>,
    ip: std::net::IpAddr,
    sent: Arc<AtomicU32>,
    until: tokio::time::Instant,
) {
    let Some(socket) = socket else { return };
    // Let the friend's sockets open their mappings first.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut round = 0;
    while tokio::time::Instant::now() < until {
        let ports: Vec<u16> = {
            let mut rng = rand::rng();
            (0..SPRAY_BATCH)
                .map(|_| rng.random_range(SPRAY_PORTS))
                .collect()
        };
        for port in ports {
            if socket
                .send_to(crate::client::PUNCH_PROBE, SocketAddr::new(ip, port))
                .is_ok()
            {
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        round += 1;
        tokio::time::sleep(if round < SPRAY_ROUNDS {
            SPRAY_EVERY
        } else {
            SPRAY_SLOW_EVERY
        })
        .await;
    }
}
