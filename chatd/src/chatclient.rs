//! `chatd chat`: find a friend through the servers, connect, chat.
//!
//! Steps, each reported on stderr in words (the request statuses of seed
//! 003): connect to a server (the next bootstrap server if one fails; then
//! the least loaded live server it lists, if that one is less loaded),
//! measure the NAT's mapping with a second server, register a signed record
//! with the public address the server observed, ask to meet the friend
//! (wait if it is not online yet), connect directly on the same UDP socket
//! ([`crate::punch`]: dials, probes, the birthday method) or, when no direct
//! path comes up within `--direct-timeout`, through the home server of the
//! lower id ([`crate::relay`]; the chat stays end-to-end encrypted), then
//! chat: stdin lines are messages, received messages go to stdout, one per
//! line, with the guarantees of [`crate::chat::Session`]. A broken path is
//! re-established the same way, without losing or duplicating a message.

#![allow(clippy::print_stdout, clippy::print_stderr)] // the chat command talks to its user

use crate::chat::{Frame, Session};
use crate::client::{Client, Session as ClientSession};
use crate::identity::{Id, Keypair, ServerAddr};
use crate::membership::ServerRecord;
use crate::peertable::{NatMapping, PeerRecord};
use crate::registry::{FriendRef, Notice, read_msg, unix_millis, write_msg};
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// How long to try a direct path before relaying.
    pub direct_timeout: Duration,
}

/// One status line for the user (stderr).
pub(crate) fn status(line: &str) {
    eprintln!("chatd: {line}");
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

/// How many times a broken path is re-established before giving up.
const MAX_REESTABLISH: u32 = 5;

/// Runs a chat until stdin ends (and everything sent is acknowledged) or
/// the friend leaves; re-establishes a broken path (through the servers
/// again: new addresses, punching or relay) without losing or duplicating
/// a message.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let client = Client::new_accepting(opts.keypair.clone(), opts.bind)?;
    let mut chat = Session::new(rand::random(), Duration::from_millis(300));
    let mut input = Input::stdin();
    let mut friend_seq = 0;
    let mut breaks = 0;
    loop {
        let (session, nat, friend) = rendezvous(&client, &opts, friend_seq).await?;
        friend_seq = friend.body.seq;
        let path = connect(&client, &session, nat, &friend, opts.direct_timeout).await?;
        status(&format!(
            "connected {} to {}, RTT {} ms",
            path.kind,
            friend.body.name,
            path.conn.rtt().as_millis()
        ));
        if breaks > 0 {
            chat.path_changed();
        }
        let end = converse(path, &mut chat, &mut input).await;
        match end {
            End::Done | End::FriendLeft => {
                if let Err(e) = session.deregister(&client, unix_millis()).await {
                    tracing::debug!(error = %e, "could not deregister");
                }
                // Close every connection (server, relay) so nothing waits
                // for an idle timeout, and let the closes go out.
                client.endpoint().close(0u32.into(), b"bye");
                let _ = tokio::time::timeout(Duration::from_secs(1), client.endpoint().wait_idle())
                    .await;
                return Ok(());
            }
            End::Broke(why) => {
                breaks += 1;
                if breaks > MAX_REESTABLISH {
                    anyhow::bail!("the path to the friend broke {breaks} times ({why}); giving up");
                }
                status(&format!(
                    "path to the friend broke ({why}); re-establishing ({breaks}/{MAX_REESTABLISH})"
                ));
            }
        }
    }
}

/// While waiting, the meeting is asked again this often (notices are the
/// main way to learn of the friend; this covers one lost on the way).
const MEET_POLL: Duration = Duration::from_secs(2);

/// Connects to a server, registers (with our observed address and NAT
/// kind) and finds the friend, waiting for it to come online — or, when
/// re-establishing, for a record newer than `seen_seq` (the friend
/// re-registers from wherever it is now).
async fn rendezvous(
    client: &Client,
    opts: &Options,
    seen_seq: u64,
) -> anyhow::Result<(ClientSession, NatMapping, PeerRecord)> {
    let me = client.id();
    let session = client
        .connect_any(&opts.servers)
        .await
        .context("no server answered")?;
    let servers = session.servers().await.unwrap_or_default();
    let session = pick_home(client, session, &servers).await;
    status(&format!("connected to server {}", session.server()));
    let public = session.who_am_i().await?;
    let nat = nat_mapping(client, &session, &servers, public).await;
    let port = client.endpoint().local_addr()?.port();
    let mut record = client.record(
        &session,
        &opts.name,
        public,
        unix_millis(),
        Duration::from_secs(600),
    );
    record.body.private_addrs = lan_addr(session.server().addr, port).into_iter().collect();
    record.body.nat = nat;
    let record = PeerRecord::sign(client.signing_key(), record.body);
    session.register(record).await?;
    status(&format!(
        "registered as {} with public address {public} (NAT mapping: {})",
        Id(me),
        describe_nat(nat)
    ));
    let mut notices = session.notices();
    let wanted = opts.friend.clone();
    status(&format!("request sent: meet {}", describe(&wanted)));
    let deadline = tokio::time::Instant::now() + opts.wait;
    let mut said_waiting = false;
    let (friend, start_in) = loop {
        if let Some((r, start_in)) = session.meet(wanted.clone()).await?
            && r.body.seq > seen_seq
        {
            break (r, start_in);
        }
        if !said_waiting {
            said_waiting = true;
            if seen_seq == 0 {
                status(&format!("waiting for {} to come online", describe(&wanted)));
            } else {
                status(&format!(
                    "waiting for {} to register again",
                    describe(&wanted)
                ));
            }
        }
        // A notice when the friend registers; a fresh ask now and then in
        // case the friend re-registered at another server.
        let poll = tokio::time::Instant::now() + MEET_POLL;
        match tokio::time::timeout_at(poll.min(deadline), notices.recv()).await {
            Ok(Some(Notice::Friend {
                record,
                start_in_ms,
            })) if matches(&wanted, &record) && record.body.seq > seen_seq => {
                break (record, Duration::from_millis(start_in_ms.into()));
            }
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => anyhow::bail!("server connection lost while waiting"),
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "{} did not come online within {:?}",
                describe(&wanted),
                opts.wait
            );
        }
    };
    status(&format!(
        "friend found: {} ({}) at {} (private {:?}, NAT mapping: {})",
        friend.body.name,
        Id(friend.body.peer),
        friend
            .body
            .public_addr
            .map(|a| a.to_string())
            .unwrap_or_default(),
        friend.body.private_addrs,
        describe_nat(friend.body.nat)
    ));
    // The common start instant the server chose: both sides begin punching
    // together, as the later of the two hears of the meeting.
    // Capped here too, whatever a server says.
    tokio::time::sleep(start_in.min(crate::registry::MAX_START_DELAY)).await;
    Ok((session, nat, friend))
}

/// The home server: the least loaded of the live `servers` (as the
/// bootstrap server lists them, least loaded first), if it is less loaded
/// than the one we reached (and answers).
async fn pick_home(
    client: &Client,
    session: ClientSession,
    servers: &[ServerRecord],
) -> ClientSession {
    let here = session.server().id.0;
    let load_here = servers
        .iter()
        .find(|s| s.id == here)
        .map_or(f64::INFINITY, |s| s.load());
    let Some((best, target)) = servers.first().and_then(|b| Some((b, b.dial_addr()?))) else {
        return session;
    };
    if best.id == here || best.load() >= load_here {
        return session;
    }
    match client.connect(target).await {
        Ok(better) => {
            status(&format!(
                "server {} lists a less loaded server: using {target}",
                session.server().addr
            ));
            session.close();
            better
        }
        Err(e) => {
            tracing::debug!(server = %target, error = %e, "less loaded server did not answer");
            session
        }
    }
}

/// How our NAT maps: ask a second server where it sees us. The same
/// address as the first server saw → one mapping for every destination;
/// another → a mapping per destination (symmetric NAT).
async fn nat_mapping(
    client: &Client,
    session: &ClientSession,
    servers: &[ServerRecord],
    public: SocketAddr,
) -> NatMapping {
    let here = session.server();
    let other = servers
        .iter()
        .filter_map(ServerRecord::dial_addr)
        .find(|s| s.id != here.id && s.addr != here.addr);
    let Some(other) = other else {
        return NatMapping::Unknown;
    };
    let seen = tokio::time::timeout(Duration::from_secs(2), async {
        let s = client.connect(other).await?;
        let a = s.who_am_i().await;
        s.close();
        a
    })
    .await;
    match seen {
        Ok(Ok(a)) if a == public => NatMapping::Independent,
        Ok(Ok(_)) => NatMapping::Dependent,
        _ => NatMapping::Unknown,
    }
}

fn describe_nat(n: NatMapping) -> &'static str {
    match n {
        NatMapping::Unknown => "unknown",
        NatMapping::Independent => "same for every destination",
        NatMapping::Dependent => "per destination (symmetric NAT)",
    }
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

/// How a connection to the friend goes.
#[derive(Clone, Debug)]
enum PathKind {
    /// Direct, to one of the friend's LAN addresses.
    Lan,
    /// Direct, through the NATs.
    Wan,
    /// Through a server's relay.
    Relayed(ServerAddr),
}

impl std::fmt::Display for PathKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathKind::Lan => write!(f, "direct (LAN)"),
            PathKind::Wan => write!(f, "direct (WAN)"),
            PathKind::Relayed(s) => write!(f, "relayed via server {}", s.addr),
        }
    }
}

/// A connection to the friend with the chat stream open on it.
struct Path {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    kind: PathKind,
    /// Fires when a relayed path's stream through the server ends.
    relay_closed: Option<tokio::sync::oneshot::Receiver<()>>,
    /// The connection to a relay server other than our home (kept open).
    _relay_session: Option<ClientSession>,
}

/// How long a pair of symmetric NATs gets for a LAN path before relaying.
const LAN_ONLY_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the relayed QUIC handshake may take.
const RELAY_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A direct path within `direct_timeout` (shorter when both NATs map per
/// destination: then only a LAN path can work), else a relayed one.
async fn connect(
    client: &Client,
    session: &ClientSession,
    own_nat: NatMapping,
    friend: &PeerRecord,
    direct_timeout: Duration,
) -> anyhow::Result<Path> {
    let both_hard = own_nat == NatMapping::Dependent && friend.body.nat == NatMapping::Dependent;
    let budget = if both_hard {
        status("both NATs map per destination (symmetric): trying LAN addresses, then the relay");
        direct_timeout.min(LAN_ONLY_TIMEOUT)
    } else {
        direct_timeout
    };
    if !budget.is_zero() {
        match crate::punch::direct(client, own_nat, friend, budget).await {
            Ok((conn, send, recv)) => {
                let kind = if friend.body.private_addrs.contains(&conn.remote_address()) {
                    PathKind::Lan
                } else {
                    PathKind::Wan
                };
                return Ok(Path {
                    conn,
                    send,
                    recv,
                    kind,
                    relay_closed: None,
                    _relay_session: None,
                });
            }
            Err(e) => status(&format!("no direct path: {e}; asking for a relay")),
        }
    }
    relay(client, session, friend).await
}

/// The relayed path: both peers ask the home server of the lower id to
/// splice them, then run the chat QUIC connection (TLS pinned to the
/// friend's key, so the server cannot read or forge it) through it.
async fn relay(
    client: &Client,
    session: &ClientSession,
    friend: &PeerRecord,
) -> anyhow::Result<Path> {
    let me = client.id();
    let fid = friend.body.peer;
    let home = if me < fid {
        session.server()
    } else {
        let servers = session.servers().await?;
        servers
            .iter()
            .find(|s| s.id == friend.body.home_server)
            .context("the friend's home server is not live, so it cannot relay")?
            .dial_addr()
            .context("the friend's home server has no address")?
    };
    status(&format!("requesting a relay via server {}", home.addr));
    let other = if home.id == session.server().id {
        None
    } else {
        Some(client.connect(home).await?)
    };
    let relay_session = other.as_ref().unwrap_or(session);
    let (send, recv) = relay_session.relay(fid).await?;
    let (endpoint, closed) = client.relay_endpoint(send, recv)?;
    // The same agreement as on a direct path: the lower id dials through
    // the relay and opens the stream, the higher id accepts.
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let task = if me < fid {
        let connecting = endpoint.connect_with(
            client.friend_config(fid)?,
            crate::relay::RELAY_PEER_ADDR,
            crate::tls::SERVER_NAME,
        )?;
        tokio::spawn(async move {
            match connecting.await {
                Ok(conn) => {
                    let _ = tx.send(conn).await;
                }
                Err(e) => tracing::debug!(error = %e, "dial through the relay failed"),
            }
        })
    } else {
        tokio::spawn(crate::punch::accept_friend(endpoint.clone(), fid, tx))
    };
    let deadline = tokio::time::Instant::now() + RELAY_HANDSHAKE_TIMEOUT;
    let chat = crate::punch::agree(me, fid, rx, deadline).await;
    task.abort();
    let chat = chat.context("no chat through the relay")?;
    let (conn, send, recv) = chat;
    Ok(Path {
        conn,
        send,
        recv,
        kind: PathKind::Relayed(home),
        relay_closed: Some(closed),
        _relay_session: other,
    })
}

/// Where stdin lines come from (read once, across paths), and Ctrl-C /
/// SIGTERM: while chatting, the first ends the input like EOF (finish:
/// wait for acknowledgements and the friend's bye, bounded); otherwise,
/// or the second time, exit at once (status 130).
struct Input {
    lines: tokio::sync::mpsc::Receiver<String>,
    stop: tokio::sync::mpsc::Receiver<()>,
    chatting: Arc<AtomicBool>,
    open: bool,
    closed_at: Option<Instant>,
}

impl Input {
    fn stdin() -> Input {
        let (tx, lines) = tokio::sync::mpsc::channel::<String>(64);
        tokio::spawn(async move {
            let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(line)) = stdin.next_line().await {
                if tx.send(line).await.is_err() {
                    return;
                }
            }
        });
        let chatting = Arc::new(AtomicBool::new(false));
        let (stop_tx, stop) = tokio::sync::mpsc::channel(1);
        let in_chat = chatting.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let mut times = 0;
            loop {
                let terminate = async {
                    match term.as_mut() {
                        Some(t) => t.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = tokio::signal::ctrl_c() => if r.is_err() { return },
                    _ = terminate => {}
                }
                times += 1;
                if times > 1 || !in_chat.load(Ordering::SeqCst) {
                    status("interrupted");
                    std::process::exit(130);
                }
                status("interrupted: finishing the chat (again to quit at once)");
                let _ = stop_tx.try_send(());
            }
        });
        Input {
            lines,
            stop,
            chatting,
            open: true,
            closed_at: None,
        }
    }

    /// The input ended (EOF or interrupted): the session finishes.
    fn close(&mut self, session: &mut Session) {
        self.open = false;
        self.closed_at = Some(Instant::now());
        session.finish();
    }
}

/// How a conversation on one path ended.
enum End {
    /// Our input ended and everything was acknowledged (or the wait ran out).
    Done,
    /// The friend closed the chat.
    FriendLeft,
    /// The path failed; the session goes on over a new one.
    Broke(String),
}

/// How long after our input ends we wait for acknowledgements and for the
/// friend to finish too.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The conversation on one path: stdin → messages, messages → stdout.
async fn converse(path: Path, session: &mut Session, input: &mut Input) -> End {
    let Path {
        conn,
        mut send,
        mut recv,
        relay_closed,
        ..
    } = path;
    if let Some(closed) = relay_closed {
        let conn = conn.clone();
        tokio::spawn(async move {
            if closed.await.is_ok() {
                conn.close(2u32.into(), b"relay closed");
            }
        });
    }
    let (frame_tx, mut frames) = tokio::sync::mpsc::channel::<Frame>(64);
    let reader = tokio::spawn(async move {
        while let Ok(f) = read_msg::<Frame>(&mut recv).await {
            if frame_tx.send(f).await.is_err() {
                return;
            }
        }
    });
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    input.chatting.store(true, Ordering::SeqCst);
    let end = loop {
        tokio::select! {
            line = input.lines.recv(), if input.open => match line {
                Some(line) => {
                    if let Err(e) = session.send(&line) {
                        eprintln!("chatd: {e}");
                    }
                }
                None => input.close(session),
            },
            Some(()) = input.stop.recv(), if input.open => input.close(session),
            frame = frames.recv() => match frame {
                Some(f) => {
                    for text in session.on_frame(f) {
                        println!("{text}");
                    }
                }
                None => break why_closed(&conn),
            },
            _ = tick.tick() => {
                let mut broke = None;
                for f in session.poll_transmit(Instant::now()) {
                    if let Err(e) = write_msg(&mut send, &f).await {
                        broke = Some(e.to_string());
                        break;
                    }
                }
                if let Some(e) = broke {
                    break End::Broke(e);
                }
                if let Some(since) = input.closed_at
                    && (session.done() || since.elapsed() > CLOSE_WAIT)
                {
                    if session.pending() > 0 {
                        status(&format!("{} messages not acknowledged", session.pending()));
                    } else if !session.peer_done() {
                        status("leaving while the friend may still be writing");
                    }
                    // Let the last acknowledgements go out.
                    for f in session.poll_transmit(Instant::now()) {
                        let _ = write_msg(&mut send, &f).await;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break End::Done;
                }
            }
        }
    };
    reader.abort();
    input.chatting.store(false, Ordering::SeqCst);
    match &end {
        End::Done => {
            let _ = send.finish();
            conn.close(0u32.into(), b"bye");
        }
        End::FriendLeft => {
            status("the friend left");
            if session.pending() > 0 {
                status(&format!(
                    "{} messages were not delivered: the friend left first",
                    session.pending()
                ));
            }
        }
        End::Broke(_) => conn.close(3u32.into(), b"path broke"),
    }
    end
}

/// Why the friend's stream ended: a clean close ("bye") or a broken path.
fn why_closed(conn: &quinn::Connection) -> End {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(c)) if c.error_code == 0u32.into() => {
            End::FriendLeft
        }
        Some(e) => End::Broke(e.to_string()),
        // The stream ended but the connection is open: the friend finished.
        None => End::FriendLeft,
    }
}
