//! `chatd chat`: find a friend through the servers, connect, chat.
//!
//! Steps, each reported on stderr in words (the request statuses of seed
//! 003): connect to a server (the next bootstrap server if one fails),
//! register a signed record with the public address the server observed,
//! ask to meet the friend (wait if it is not online yet), connect directly
//! on the same UDP socket (both dial every candidate address and accept
//! only the friend's key, while sending probes from the same socket to
//! every candidate: the probes and our own dials open our NAT towards the
//! friend, the friend's QUIC retransmissions then come through), then chat: stdin lines
//! are messages, received messages go to stdout, one per line, with the
//! guarantees of [`crate::chat::Session`].
//!
//! Not yet (issue 6): the birthday method for symmetric NATs, relay through
//! a server.

#![allow(clippy::print_stdout, clippy::print_stderr)] // the chat command talks to its user

use crate::chat::{Frame, Session};
use crate::client::{CHAT_ALPN, Client};
use crate::identity::{Id, Keypair, ServerAddr};
use crate::peertable::PeerRecord;
use crate::registry::{FriendRef, Notice, read_msg, write_msg};
use anyhow::Context;
use overlay::PeerId;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

/// What `chatd chat` was asked to do.
pub struct Options {
    /// Our name (a label others can look up).
    pub name: String,
    /// Whom to talk to.
    pub friend: FriendRef,
    /// Bootstrap servers, tried in order.
    pub servers: Vec<ServerAddr>,
    /// Our key.
    pub keypair: Keypair,
    /// Local UDP address to bind.
    pub bind: SocketAddr,
    /// How long to wait for the friend to come online.
    pub wait: Duration,
}

fn status(line: &str) {
    eprintln!("chatd: {line}");
}

fn unix_millis() -> u64 {
    std::time::SystemTime::UNIX_EPOCH
        .elapsed()
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The local address packets to `server` leave from (our LAN address).
fn lan_addr(server: SocketAddr, port: u16) -> Option<SocketAddr> {
    let probe = std::net::UdpSocket::bind(SocketAddr::new(
        if server.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        },
        0,
    ))
    .ok()?;
    probe.connect(server).ok()?;
    Some(SocketAddr::new(probe.local_addr().ok()?.ip(), port))
}

/// Runs a chat until stdin ends (and everything sent is acknowledged) or
/// the friend leaves.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let client = Client::new_accepting(opts.keypair, opts.bind)?;
    let me = client.id();
    let session = client
        .connect_any(&opts.servers)
        .await
        .context("no server answered")?;
    status(&format!("connected to server {}", session.server()));
    let public = session.who_am_i().await?;
    let port = client.endpoint().local_addr()?.port();
    let mut record = client.record(
        &session,
        &opts.name,
        public,
        unix_millis(),
        Duration::from_secs(600),
    );
    record.body.private_addrs = lan_addr(session.server().addr, port).into_iter().collect();
    let record = PeerRecord::sign(client.signing_key(), record.body);
    session.register(record).await?;
    status(&format!(
        "registered as {} with public address {public}",
        Id(me)
    ));
    let mut notices = session.notices();
    let wanted = opts.friend.clone();
    status(&format!("request sent: meet {}", describe(&wanted)));
    let friend = match session.meet(wanted.clone()).await? {
        Some(r) => r,
        None => {
            status(&format!("waiting for {} to come online", describe(&wanted)));
            let deadline = tokio::time::Instant::now() + opts.wait;
            loop {
                match tokio::time::timeout_at(deadline, notices.recv()).await {
                    Ok(Some(Notice::Friend(r))) if matches(&wanted, &r) => break r,
                    Ok(Some(_)) => continue,
                    Ok(None) => anyhow::bail!("server connection lost while waiting"),
                    Err(_) => anyhow::bail!(
                        "{} did not come online within {:?}",
                        describe(&wanted),
                        opts.wait
                    ),
                }
            }
        }
    };
    let fid = friend.body.peer;
    status(&format!(
        "friend found: {} ({}) at {} (private {:?})",
        friend.body.name,
        Id(fid),
        friend
            .body
            .public_addr
            .map(|a| a.to_string())
            .unwrap_or_default(),
        friend.body.private_addrs
    ));
    let (conn, send, recv) = connect(&client, me, &friend).await?;
    let lan = friend.body.private_addrs.contains(&conn.remote_address());
    status(&format!(
        "connected direct ({}) to {}, RTT {} ms",
        if lan { "LAN" } else { "WAN" },
        friend.body.name,
        conn.rtt().as_millis()
    ));
    converse(conn, send, recv).await
}

fn describe(f: &FriendRef) -> String {
    match f {
        FriendRef::Id(id) => Id(*id).to_string(),
        FriendRef::Name(n) => n.clone(),
    }
}

fn matches(f: &FriendRef, r: &PeerRecord) -> bool {
    match f {
        FriendRef::Id(id) => r.body.peer == *id,
        FriendRef::Name(n) => r.body.name == *n,
    }
}

/// How long to try to reach the friend directly.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to the friend with the chat stream on it.
type Chat = (quinn::Connection, quinn::SendStream, quinn::RecvStream);

/// Both sides dial every candidate address of the friend and accept the
/// friend (its key, the chat ALPN) while sending probes, so whichever
/// direction the NATs let through completes. The lower id takes the first
/// connection that completes and opens the chat stream on it; the higher id
/// keeps every connection that completes and uses the one the stream
/// arrives on, so the two agree even when each completed a different one.
async fn connect(client: &Client, me: PeerId, friend: &PeerRecord) -> anyhow::Result<Chat> {
    let fid = friend.body.peer;
    status("connecting");
    let mut candidates: Vec<SocketAddr> = friend.body.private_addrs.clone();
    candidates.extend(friend.body.public_addr);
    candidates.dedup();
    let sent = Arc::new(AtomicU32::new(0));
    let probes = tokio::spawn(punch(
        client.probe_socket(),
        candidates.clone(),
        sent.clone(),
    ));
    let (tx, rx) = tokio::sync::mpsc::channel::<quinn::Connection>(8);
    let mut racers = tokio::task::JoinSet::new();
    let cfg = client.friend_config(fid)?;
    for addr in candidates {
        let connecting =
            client
                .endpoint()
                .connect_with(cfg.clone(), addr, crate::tls::SERVER_NAME)?;
        let tx = tx.clone();
        racers.spawn(async move {
            if let Ok(conn) = connecting.await {
                let _ = tx.send(conn).await;
            }
        });
    }
    racers.spawn(accept_friend(client.endpoint().clone(), fid, tx));
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    let chat = if me < fid {
        open_on_first(rx, deadline).await
    } else {
        accept_on_any(rx, deadline).await
    };
    racers.abort_all();
    probes.abort();
    status(&format!(
        "sent {} hole-punching probes",
        sent.load(Ordering::Relaxed)
    ));
    chat
}

async fn open_on_first(
    mut conns: tokio::sync::mpsc::Receiver<quinn::Connection>,
    deadline: tokio::time::Instant,
) -> anyhow::Result<Chat> {
    match tokio::time::timeout_at(deadline, conns.recv()).await {
        Ok(Some(conn)) => {
            let (send, recv) = conn.open_bi().await?;
            Ok((conn, send, recv))
        }
        _ => anyhow::bail!("could not reach the friend within {CONNECT_TIMEOUT:?}"),
    }
}

async fn accept_on_any(
    mut conns: tokio::sync::mpsc::Receiver<quinn::Connection>,
    deadline: tokio::time::Instant,
) -> anyhow::Result<Chat> {
    let mut streams = tokio::task::JoinSet::new();
    loop {
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
            // Only while no connection is open: an open one waits for the
            // friend's first message, however long that takes.
            () = tokio::time::sleep_until(deadline), if streams.is_empty() => {
                anyhow::bail!("the friend did not connect within {CONNECT_TIMEOUT:?}")
            }
        }
    }
}

/// Accepts connections until aborted, passing on those from the friend
/// with the chat ALPN and closing the others.
async fn accept_friend(
    endpoint: quinn::Endpoint,
    fid: PeerId,
    out: tokio::sync::mpsc::Sender<quinn::Connection>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let Ok(conn) = incoming.await else { continue };
        let expected = crate::tls::alpn_of(&conn).as_deref() == Some(CHAT_ALPN)
            && crate::tls::peer_of(&conn) == Some(fid);
        if !expected {
            conn.close(1u32.into(), b"not expected");
        } else if out.send(conn).await.is_err() {
            return;
        }
    }
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

/// The conversation: stdin → messages, messages → stdout.
async fn converse(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> anyhow::Result<()> {
    let mut session = Session::new(rand::random(), Duration::from_millis(300));
    let (line_tx, mut lines) = tokio::sync::mpsc::channel::<String>(64);
    tokio::spawn(async move {
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = stdin.next_line().await {
            if line_tx.send(line).await.is_err() {
                return;
            }
        }
    });
    let (frame_tx, mut frames) = tokio::sync::mpsc::channel::<Frame>(64);
    tokio::spawn(async move {
        while let Ok(f) = read_msg::<Frame>(&mut recv).await {
            if frame_tx.send(f).await.is_err() {
                return;
            }
        }
    });
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut stdin_open = true;
    let mut closing_since: Option<Instant> = None;
    loop {
        tokio::select! {
            line = lines.recv(), if stdin_open => match line {
                Some(line) => {
                    if let Err(e) = session.send(&line) {
                        eprintln!("chatd: {e}");
                    }
                }
                None => {
                    stdin_open = false;
                    closing_since = Some(Instant::now());
                }
            },
            frame = frames.recv() => match frame {
                Some(f) => {
                    for text in session.on_frame(f) {
                        println!("{text}");
                    }
                }
                None => {
                    status("the friend left");
                    break;
                }
            },
            _ = tick.tick() => {
                for f in session.poll_transmit(Instant::now()) {
                    write_msg(&mut send, &f).await.context("path to the friend broke")?;
                }
                if let Some(since) = closing_since {
                    // Done when everything sent is acknowledged, or after 5 s.
                    if session.pending() == 0 || since.elapsed() > Duration::from_secs(5) {
                        if session.pending() > 0 {
                            status(&format!("{} messages not acknowledged", session.pending()));
                        }
                        // Let the last acknowledgements go out.
                        for f in session.poll_transmit(Instant::now()) {
                            let _ = write_msg(&mut send, &f).await;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        break;
                    }
                }
            }
        }
    }
    let _ = send.finish();
    conn.close(0u32.into(), b"bye");
    Ok(())
}
