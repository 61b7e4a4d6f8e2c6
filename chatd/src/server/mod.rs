//! The rendezvous server on tokio and QUIC: a thin driver of
//! [`rendezvous::Server`], as [`crate::net::driver`] is of `overlay::State`.
//!
//! One task (the *core task*) owns the core and everything that refers to
//! its numbers: client connections, streams waiting for an answer, relay
//! sessions, links to other servers. Around it:
//! - per client connection: a reader task (one request per bidirectional
//!   stream, read within 10 s, at most [`MAX_REQUEST`] bytes — one at a
//!   time may be up to [`MAX_LETTER_REQUEST`], a letter — buffered as
//!   the bytes arrive) and a notice writer with a bounded queue and a write
//!   timeout — a client that stops reading loses notices (counted) and is
//!   closed, it cannot grow server memory;
//! - per server we send to: a writer with a bounded queue on one stream of
//!   the overlay connection (dialed if needed, admission checked);
//! - per stream another server opens: a reader of [`ServerMsg`]s;
//! - per relay session: a splice copying between two client streams within
//!   the session's limits (rate, total bytes, idle time).
//!
//! Client connections get the transport limits set in [`crate::net::driver`]
//! (no unidirectional streams, 8 bidirectional, a 16 KiB connection
//! window, no datagrams, no keep-alive pings from the server). The worst
//! case one client connection pins: ~33 KiB of QUIC and TLS state (quinn's
//! connection, its event channel, packet keys; measured with heaptrack on
//! 3,000 idle connections), 16 KiB of QUIC receive buffer, 8 × 2 KiB of
//! half-sent requests (one of them up to 9.1 KiB, a letter), 16 queued
//! notices (boxed, ~300 bytes each) and its share of the core's
//! per-connection state (under 1 KiB) — about 77 KiB. The core bounds how
//! many: `max_connections` (20,000, ~1.5 GB worst case),
//! `per_ip_connections` (64, ~4.9 MB per address), `per_peer_connections`
//! (4) and `max_anonymous` (1,024 that never registered, ~77 MB worst
//! case, ~34 MB idle; each closed after 30 s without a request). Letters
//! kept are the core's (`rendezvous::mailbox`: 128 MiB at most).

pub mod admin;
pub mod catalog;
pub mod report;

use crate::net::driver::{Node, NodeEvent};
use crate::net::framing::{
    FrameError, MAX_LETTER_REQUEST, MAX_REQUEST, MAX_SERVER_FRAME, read_body, read_len,
    read_msg_max, write_msg,
};
use crate::net::identity::Id;
use overlay::{PeerId, Time};
use rendezvous::server::{ConnId, Input, Malformed, Now, Output, RelayLimits, ReqId, SessionId};
use rendezvous::{Liveness, Notice, Request, Response, ServerMsg, ServerRecord};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// A request must arrive complete within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Writing an answer or a notice must finish within this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Notices queued per client connection.
const NOTICE_QUEUE: usize = 16;
/// Messages queued per server we send to.
const SERVER_QUEUE: usize = 4096;

/// How often the core is told the RTTs of the connections to other servers.
const SERVER_RTT_EVERY: Duration = Duration::from_secs(2);
/// Streams other servers may have open to us at once.
const MAX_SERVER_STREAMS: usize = 64;

use crate::net::lock;

/// What the core knows, for status pages and tests (refreshed by the core
/// task at least every second).
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// Live servers, this one first.
    pub servers: Vec<ServerRecord>,
    /// Every server known, with what we believe about it.
    pub members: Vec<(ServerRecord, Liveness)>,
    /// Records in the table (tombstones included).
    pub records: usize,
    /// Unexpired records.
    pub unexpired: usize,
    /// Clients registered here.
    pub clients: usize,
    /// Client connections open.
    pub connections: usize,
    /// Relay sessions carried.
    pub relay_sessions: usize,
}

enum Cmd {
    Leave(oneshot::Sender<()>),
    SetAllow(Option<BTreeSet<PeerId>>),
    Lookup(PeerId, oneshot::Sender<Option<rendezvous::PeerRecord>>),
    Held(Vec<PeerId>, oneshot::Sender<Vec<Option<u64>>>),
}

enum Event {
    Request {
        conn: ConnId,
        req: ReqId,
        request: Result<Box<Request>, Malformed>,
        rtt: Duration,
        stream: Box<(quinn::SendStream, quinn::RecvStream)>,
    },
    Closed {
        conn: ConnId,
    },
    FromServer {
        from: PeerId,
        msg: Box<ServerMsg>,
    },
    RelayEnded {
        session: SessionId,
    },
    LinkDown {
        to: PeerId,
    },
}

/// A running rendezvous server.
pub struct Server {
    commands: mpsc::Sender<Cmd>,
    status: Arc<Mutex<Status>>,
    id: PeerId,
    task: tokio::task::AbortHandle,
}

impl Server {
    /// Serves clients of `node` and replicates over its overlay with the
    /// core's configuration `cfg` (its `advertise` defaults to the node's).
    pub fn start(
        node: Arc<Node>,
        key: ed25519_dalek::SigningKey,
        mut cfg: rendezvous::Config,
    ) -> Server {
        if cfg.advertise.is_empty() {
            cfg.advertise = node.advertised();
        }
        let start = Instant::now();
        let now = now_at(start);
        let seed = u64::from_le_bytes(node.id.0[..8].try_into().unwrap_or([0; 8])) ^ now.unix_ms;
        let core = rendezvous::Server::new(node.id, key, cfg, now, seed);
        let status = Arc::new(Mutex::new(Status::default()));
        let (commands, cmd_rx) = mpsc::channel(64);
        let (events_tx, events_rx) = mpsc::channel(4096);
        let driver = Driver {
            core,
            start,
            node: node.clone(),
            conns: HashMap::new(),
            streams: BTreeMap::new(),
            links: HashMap::new(),
            relays: HashMap::new(),
            events: events_tx,
            next_conn: 1,
            status: status.clone(),
            last_status: start,
            last_rtts: None,
        };
        let id = node.id;
        // Subscribed before anything else runs: no neighbor event is missed
        // (the ones before now are read from a snapshot at the start).
        let node_events = node.events();
        let task = tokio::spawn(driver.run(cmd_rx, events_rx, node_events)).abort_handle();
        Server {
            commands,
            status,
            id,
            task,
        }
    }

    /// This server's id.
    pub fn id(&self) -> PeerId {
        self.id
    }

    /// The latest status.
    pub fn status(&self) -> Status {
        lock(&self.status).clone()
    }

    /// Live servers, this one first.
    pub fn servers(&self) -> Vec<ServerRecord> {
        lock(&self.status).servers.clone()
    }

    /// The online record of `peer` here.
    pub async fn lookup(&self, peer: PeerId) -> Option<rendezvous::PeerRecord> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Cmd::Lookup(peer, tx)).await.ok()?;
        rx.await.ok().flatten()
    }

    /// The seq of the record held for each of `peers` (online or not).
    pub async fn held(&self, peers: Vec<PeerId>) -> Vec<Option<u64>> {
        let n = peers.len();
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Cmd::Held(peers, tx)).await.is_err() {
            return vec![None; n];
        }
        rx.await.unwrap_or_else(|_| vec![None; n])
    }

    /// Stops at once without a word, as a crash would (tests): with
    /// [`Node::kill`] it is the in-process `kill -9`.
    pub fn kill(&self) {
        self.task.abort();
    }

    /// Replaces the cluster allowlist the core checks membership messages
    /// against (`None`: open).
    pub fn set_allow(&self, allow: Option<BTreeSet<PeerId>>) {
        let _ = self.commands.try_send(Cmd::SetAllow(allow));
    }

    /// Announces that this server leaves (and stops heartbeats).
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Cmd::Leave(tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
        }
    }
}

fn now_at(start: Instant) -> Now {
    Now {
        mono: Time::from_micros(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)),
        unix_ms: crate::net::unix_millis(),
    }
}

struct ClientHandle {
    conn: quinn::Connection,
    notices: mpsc::Sender<Box<Notice>>,
}

struct Driver {
    core: rendezvous::Server,
    start: Instant,
    node: Arc<Node>,
    conns: HashMap<ConnId, ClientHandle>,
    streams: BTreeMap<(ConnId, ReqId), (quinn::SendStream, quinn::RecvStream)>,
    links: HashMap<PeerId, mpsc::Sender<ServerMsg>>,
    relays: HashMap<SessionId, tokio::task::AbortHandle>,
    events: mpsc::Sender<Event>,
    next_conn: ConnId,
    status: Arc<Mutex<Status>>,
    last_status: Instant,
    /// When the core last had the server connections' RTTs (`None`: due).
    last_rtts: Option<Instant>,
}

impl Driver {
    fn now(&self) -> Now {
        now_at(self.start)
    }

    fn instant(&self, t: Time) -> Instant {
        self.start + Duration::from_micros(t.as_micros())
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Cmd>,
        mut events: mpsc::Receiver<Event>,
        mut node_events: tokio::sync::broadcast::Receiver<NodeEvent>,
    ) {
        // Neighbors the node had before we subscribed.
        if let Ok(snap) = self.node.snapshot().await {
            for p in snap.active {
                self.input(Input::NeighborUp(p)).await;
            }
        }
        let mut clients = self.node.take_client_connections();
        let mut app_streams = self.node.take_app_streams();
        let server_streams = Arc::new(tokio::sync::Semaphore::new(MAX_SERVER_STREAMS));
        loop {
            let wake = self.instant(self.core.poll_timeout());
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Cmd::Leave(done)) => {
                        self.input(Input::Leave).await;
                        let _ = done.send(());
                    }
                    Some(Cmd::SetAllow(allow)) => self.input(Input::SetAllow(allow)).await,
                    Some(Cmd::Held(peers, reply)) => {
                        let t = self.core.table();
                        let _ = reply.send(peers.iter().map(|p| t.seq_of(p)).collect());
                    }
                    Some(Cmd::Lookup(peer, reply)) => {
                        let now = self.now();
                        let _ = reply.send(self.core.lookup(&peer, now).map(|r| (**r).clone()));
                    }
                    None => return,
                },
                ev = events.recv() => match ev {
                    Some(ev) => self.event(ev).await,
                    None => return,
                },
                ev = node_events.recv() => match ev {
                    Ok(NodeEvent::Delivery(d)) => {
                        self.input(Input::Delivery { origin: d.origin, payload: d.payload }).await;
                    }
                    Ok(NodeEvent::PeerFailed(p)) => self.input(Input::PeerFailed(p)).await,
                    Ok(NodeEvent::NeighborUp(p)) => {
                        // A new connection: its RTT is known from the handshake.
                        self.last_rtts = None;
                        self.input(Input::NeighborUp(p)).await;
                    }
                    Ok(NodeEvent::NeighborDown(p)) => self.input(Input::NeighborDown(p)).await,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        // Anti-entropy repairs what was missed.
                        metrics::counter!("chatd_event_receiver_lagged_total").increment(n);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                conn = recv_or_pending(&mut clients) => match conn {
                    Some((peer, conn)) => self.client_connected(peer, conn).await,
                    None => clients = None,
                },
                stream = recv_or_pending(&mut app_streams) => match stream {
                    Some((peer, send, recv)) => {
                        match server_streams.clone().try_acquire_owned() {
                            Ok(permit) => {
                                tokio::spawn(read_server_stream(peer, send, recv, self.events.clone(), permit));
                            }
                            Err(_) => {
                                metrics::counter!("chatd_server_streams_refused_total").increment(1);
                            }
                        }
                    }
                    None => app_streams = None,
                },
                _ = tokio::time::sleep_until(wake) => self.input(Input::Tick).await,
            }
            if self.last_status.elapsed() >= Duration::from_millis(200) {
                self.refresh_status();
            }
            // The core times a meeting with another server's client by
            // the RTT to that server.
            if self
                .last_rtts
                .is_none_or(|t| t.elapsed() >= SERVER_RTT_EVERY)
            {
                self.last_rtts = Some(Instant::now());
                if let Ok(snap) = self.node.snapshot().await {
                    self.input(Input::ServerRtts(snap.rtts)).await;
                }
            }
        }
    }

    fn refresh_status(&mut self) {
        self.last_status = Instant::now();
        let c = &self.core;
        let status = Status {
            servers: c.servers(),
            members: c
                .members()
                .entries()
                .map(|e| ((*e.record).clone(), e.liveness.clone()))
                .collect(),
            records: c.table().len(),
            unexpired: c.table().unexpired(),
            clients: c.clients_registered(),
            connections: c.connections(),
            relay_sessions: c.relay_sessions(),
        };
        export_metrics(c, &status);
        *lock(&self.status) = status;
    }

    async fn client_connected(&mut self, peer: PeerId, conn: quinn::Connection) {
        let id = self.next_conn;
        self.next_conn += 1;
        // Boxed: tokio allocates a channel's slots in blocks of 32, and a
        // notice is ~200 bytes (6 KiB per idle connection unboxed).
        let (tx, rx) = mpsc::channel(NOTICE_QUEUE);
        tokio::spawn(write_notices(conn.clone(), rx));
        tokio::spawn(read_requests(id, conn.clone(), self.events.clone()));
        let addr = conn.remote_address();
        self.conns.insert(id, ClientHandle { conn, notices: tx });
        self.input(Input::ClientConnected {
            conn: id,
            peer,
            addr,
        })
        .await;
    }

    async fn event(&mut self, ev: Event) {
        match ev {
            Event::Request {
                conn,
                req,
                request,
                rtt,
                stream,
            } => {
                if !self.conns.contains_key(&conn) {
                    return; // the connection ended meanwhile
                }
                self.streams.insert((conn, req), *stream);
                let input = match request {
                    Ok(request) => Input::ClientRequest {
                        conn,
                        req,
                        request: *request,
                        rtt,
                    },
                    Err(error) => Input::ClientMalformed { conn, req, error },
                };
                self.input(input).await;
            }
            Event::Closed { conn } => {
                self.conns.remove(&conn);
                // This connection's streams, without visiting the others'.
                let mine: Vec<_> = self
                    .streams
                    .range((conn, ReqId::MIN)..=(conn, ReqId::MAX))
                    .map(|(k, _)| *k)
                    .collect();
                for k in mine {
                    self.streams.remove(&k);
                }
                self.input(Input::ClientClosed { conn }).await;
            }
            Event::FromServer { from, msg } => {
                self.input(Input::FromServer { from, msg: *msg }).await
            }
            Event::RelayEnded { session } => {
                self.relays.remove(&session);
                self.input(Input::RelayEnded { session }).await;
            }
            Event::LinkDown { to } => {
                if self.links.get(&to).is_some_and(|l| l.is_closed()) {
                    self.links.remove(&to);
                }
            }
        }
    }

    async fn input(&mut self, input: Input) {
        let now = self.now();
        self.core.handle(now, input);
        while let Some(out) = self.core.poll_output() {
            self.output(out).await;
        }
    }

    async fn output(&mut self, out: Output) {
        match out {
            Output::Broadcast(payload) => {
                if let Err(e) = self.node.broadcast(payload).await {
                    metrics::counter!("chatd_broadcast_failures_total").increment(1);
                    tracing::warn!(error = %e, "could not broadcast");
                }
            }
            Output::ToServer { to, addr, msg } => self.send_server(to, addr, msg),
            Output::Respond {
                conn,
                req,
                response,
            } => {
                if let Some((mut send, _recv)) = self.streams.remove(&(conn, req)) {
                    tokio::spawn(async move {
                        let write = async {
                            write_msg(&mut send, &response).await?;
                            send.finish()?;
                            anyhow::Ok(())
                        };
                        let _ = tokio::time::timeout(WRITE_TIMEOUT, write).await;
                    });
                }
            }
            Output::Notify { conn, notice } => {
                if let Some(c) = self.conns.get(&conn)
                    && c.notices.try_send(Box::new(notice)).is_err()
                {
                    metrics::counter!("chatd_notices_dropped_total").increment(1);
                }
            }
            Output::Close { conn, code, reason } => {
                if let Some(c) = self.conns.get(&conn) {
                    c.conn.close(code.into(), reason.as_bytes());
                }
            }
            Output::RelayPair {
                session,
                a,
                b,
                limits,
            } => {
                let (Some(a), Some(b)) = (self.streams.remove(&a), self.streams.remove(&b)) else {
                    // A side's stream is gone: the session ends at once.
                    let _ = self.events.try_send(Event::RelayEnded { session });
                    return;
                };
                let events = self.events.clone();
                let task = tokio::spawn(async move {
                    splice(a, b, limits).await;
                    let _ = events.send(Event::RelayEnded { session }).await;
                });
                self.relays.insert(session, task.abort_handle());
            }
            Output::RelayStop { session } => {
                if let Some(task) = self.relays.remove(&session) {
                    task.abort();
                }
            }
        }
    }

    fn send_server(&mut self, to: PeerId, addr: Option<std::net::SocketAddr>, msg: ServerMsg) {
        let link = self
            .links
            .entry(to)
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(SERVER_QUEUE);
                tokio::spawn(write_server_link(
                    self.node.clone(),
                    to,
                    addr,
                    rx,
                    self.events.clone(),
                ));
                tx
            })
            .clone();
        if link.try_send(msg).is_err() {
            metrics::counter!("chatd_server_messages_dropped_total").increment(1);
            if link.is_closed() {
                self.links.remove(&to);
            }
        }
    }
}

async fn recv_or_pending<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Reads requests, one per bidirectional stream, and hands them to the
/// core task; reports the connection's end.
async fn read_requests(conn_id: ConnId, conn: quinn::Connection, events: mpsc::Sender<Event>) {
    let mut next_req: ReqId = 1;
    // One request over MAX_REQUEST (a letter) is read at a time.
    let large = Arc::new(tokio::sync::Semaphore::new(1));
    while let Ok((send, mut recv)) = conn.accept_bi().await {
        let req = next_req;
        next_req += 1;
        let events = events.clone();
        let conn = conn.clone();
        let large = large.clone();
        // The stream limit (8 per connection) bounds these tasks.
        tokio::spawn(async move {
            let read = async {
                let len = read_len(&mut recv).await?;
                // (One over MAX_LETTER_REQUEST is refused at once, below.)
                let _permit = if (MAX_REQUEST + 1..=MAX_LETTER_REQUEST).contains(&len) {
                    large.acquire().await.ok()
                } else {
                    None
                };
                let body = read_body(&mut recv, len, MAX_LETTER_REQUEST).await?;
                Ok::<Request, FrameError>(postcard::from_bytes(&body)?)
            };
            let request = match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
                Ok(Ok(r)) => Ok(Box::new(r)),
                // Reset by the client, or the connection is gone.
                Ok(Err(e)) if e.is_cancelled() => return,
                Ok(Err(e)) if e.is_too_large() => Err(Malformed::TooLarge),
                Ok(Err(e)) => Err(Malformed::Undecodable(e.to_string())),
                Err(_) => Err(Malformed::Late),
            };
            if request.is_err() {
                metrics::counter!("chatd_client_requests_malformed_total").increment(1);
            }
            let _ = events
                .send(Event::Request {
                    conn: conn_id,
                    req,
                    request,
                    rtt: conn.rtt(),
                    stream: Box::new((send, recv)),
                })
                .await;
        });
    }
    metrics::counter!("chatd_client_connections_closed_total").increment(1);
    let _ = events.send(Event::Closed { conn: conn_id }).await;
}

/// Writes notices to one client, each on a stream of its own; a client
/// that does not take them within [`WRITE_TIMEOUT`] is closed.
async fn write_notices(conn: quinn::Connection, mut rx: mpsc::Receiver<Box<Notice>>) {
    while let Some(notice) = rx.recv().await {
        let write = async {
            let mut s = conn.open_uni().await?;
            write_msg(&mut s, &*notice).await?;
            s.finish()?;
            anyhow::Ok(())
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return, // the connection is gone
            Err(_) => {
                metrics::counter!("chatd_clients_closed_not_reading_total").increment(1);
                conn.close(8u32.into(), b"notices not read");
                return;
            }
        }
    }
}

/// Writes messages to server `to` on one stream of a connection to it. A
/// failed write is retried once on a fresh stream (the overlay may have
/// replaced the connection: a simultaneous dial, a reconnect); after a
/// second failure the link ends and the next message starts a new one.
async fn write_server_link(
    node: Arc<Node>,
    to: PeerId,
    addr: Option<std::net::SocketAddr>,
    mut rx: mpsc::Receiver<ServerMsg>,
    events: mpsc::Sender<Event>,
) {
    let open = || async {
        let conn = tokio::time::timeout(Duration::from_secs(10), node.connect(to, addr)).await??;
        let (send, _recv) = conn.open_bi().await?;
        anyhow::Ok(send)
    };
    let mut stream: Option<quinn::SendStream> = None;
    'messages: while let Some(msg) = rx.recv().await {
        for attempt in 0..2 {
            if stream.is_none() {
                match open().await {
                    Ok(s) => stream = Some(s),
                    Err(e) => {
                        tracing::debug!(server = %Id(to), error = %e, attempt, "no stream to server");
                        continue;
                    }
                }
            }
            if let Some(s) = stream.as_mut() {
                match write_frame(s, &msg).await {
                    Ok(()) => continue 'messages,
                    Err(e) => {
                        tracing::debug!(server = %Id(to), error = %e, attempt, "server stream broke");
                        stream = None;
                    }
                }
            }
        }
        metrics::counter!("chatd_server_messages_dropped_total").increment(1);
        break;
    }
    rx.close();
    let _ = events.send(Event::LinkDown { to }).await;
}

async fn write_frame(send: &mut quinn::SendStream, msg: &ServerMsg) -> anyhow::Result<()> {
    let frame = crate::net::framing::encode(msg)?;
    tokio::time::timeout(Duration::from_secs(10), send.write_all(&frame)).await??;
    Ok(())
}

/// Reads [`ServerMsg`]s from a stream another server opened.
async fn read_server_stream(
    from: PeerId,
    _send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    events: mpsc::Sender<Event>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    loop {
        match read_msg_max::<ServerMsg>(&mut recv, MAX_SERVER_FRAME).await {
            Ok(msg) => {
                if events
                    .send(Event::FromServer {
                        from,
                        msg: Box::new(msg),
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(server = %Id(from), error = %e, "server stream ended");
                return;
            }
        }
    }
}

/// Tells both halves they are relayed, then copies both ways within
/// `limits` until either side ends, the session goes idle or carried its
/// byte cap.
async fn splice(
    a: (quinn::SendStream, quinn::RecvStream),
    b: (quinn::SendStream, quinn::RecvStream),
    limits: RelayLimits,
) {
    let (mut a_send, a_recv) = a;
    let (mut b_send, b_recv) = b;
    if write_msg(&mut a_send, &Response::Relaying).await.is_err()
        || write_msg(&mut b_send, &Response::Relaying).await.is_err()
    {
        return;
    }
    metrics::counter!("chatd_relay_sessions_spliced_total").increment(1);
    let carried = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let last = Arc::new(Mutex::new(Instant::now()));
    let copies = async {
        tokio::join!(
            copy(a_recv, b_send, limits, carried.clone(), last.clone()),
            copy(b_recv, a_send, limits, carried.clone(), last.clone())
        )
    };
    let idle = async {
        loop {
            let since = lock(&last).elapsed();
            if since >= limits.idle {
                metrics::counter!("chatd_relay_sessions_idle_total").increment(1);
                return;
            }
            tokio::time::sleep(limits.idle - since).await;
        }
    };
    tokio::select! {
        _ = copies => {}
        _ = idle => {}
    }
}

/// Copies `from` to `to` at most `limits.bytes_per_sec` (a token bucket
/// holding one second) until the session's byte cap; ends the other side
/// with the same end (finish or reset).
async fn copy(
    mut from: quinn::RecvStream,
    mut to: quinn::SendStream,
    limits: RelayLimits,
    carried: Arc<std::sync::atomic::AtomicU64>,
    last: Arc<Mutex<Instant>>,
) {
    use std::sync::atomic::Ordering;
    let rate = limits.bytes_per_sec.max(1500) as f64;
    let start = Instant::now();
    let t = |i: Instant| Time::from_micros(i.duration_since(start).as_micros() as u64);
    let mut bucket = rendezvous::limit::TokenBucket::new(rate, rate, t(start));
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(Some(n)) => n,
            Ok(None) => {
                let _ = to.finish();
                return;
            }
            Err(_) => {
                let _ = to.reset(0u32.into());
                return;
            }
        };
        *lock(&last) = Instant::now();
        let total = carried.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if total > limits.max_bytes {
            metrics::counter!("chatd_relay_sessions_capped_total").increment(1);
            let _ = to.reset(0u32.into());
            let _ = from.stop(0u32.into());
            return;
        }
        let wait = bucket.take_or_wait(n as f64, t(Instant::now()));
        if !wait.is_zero() {
            metrics::counter!("chatd_relay_throttled_total").increment(1);
            tokio::time::sleep(wait).await;
        }
        metrics::counter!("chatd_relay_bytes_total").increment(n as u64);
        if to.write_all(&buf[..n]).await.is_err() {
            let _ = from.stop(0u32.into());
            return;
        }
    }
}

fn export_metrics(core: &rendezvous::Server, status: &Status) {
    let stats = core.stats();
    for (name, value) in &stats.counters {
        metrics::counter!(format!("chatd_{name}_total")).absolute(*value);
    }
    for (reason, value) in &stats.refused {
        metrics::counter!("chatd_client_requests_refused_total", "reason" => *reason)
            .absolute(*value);
    }
    for (reason, value) in &stats.rejected {
        metrics::counter!("chatd_peer_records_rejected_total", "reason" => *reason)
            .absolute(*value);
    }
    metrics::gauge!("chatd_clients_registered").set(status.clients as f64);
    metrics::gauge!("chatd_client_connections").set(status.connections as f64);
    metrics::gauge!("chatd_peer_table_records").set(status.records as f64);
    metrics::gauge!("chatd_peer_table_unexpired").set(status.unexpired as f64);
    metrics::gauge!("chatd_cluster_servers").set(status.servers.len() as f64);
    metrics::gauge!("chatd_relay_sessions").set(status.relay_sessions as f64);
    metrics::gauge!("chatd_waiting_meets").set(core.waiting() as f64);
    metrics::gauge!("chatd_pending_acks").set(core.pending_acks() as f64);
    let (letters, bytes) = core.letters_kept();
    metrics::gauge!("chatd_letters_kept").set(letters as f64);
    metrics::gauge!("chatd_letter_bytes_kept").set(bytes as f64);
}
