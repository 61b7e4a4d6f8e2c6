//! The client protocol (ALPN `chatd-client/1`) and the replicated peer
//! table behind it.
//!
//! A client connects with its own ed25519 certificate (its peer id), then
//! sends requests, one per bidirectional stream: a u32-framed postcard
//! [`Request`], answered by one [`Response`]. `Register` takes a record the
//! client signed; the server checks that the record is the connection's own
//! (`peer`), names this server as home, then merges it and broadcasts it
//! (payload tag 2) so every server can answer lookups in O(1) from memory.
//!
//! **Anti-entropy.** When two servers become overlay neighbors, the one with
//! the lower id opens a stream on their connection and they compare the
//! table's 256 bucket digests, then the `(peer, seq)` lists of differing
//! buckets, then send each other the newer records; what a server learns this
//! way it re-broadcasts, so both sides of a healed partition converge without
//! a restart.
//!
//! Owns the table and the client connections. Must not touch overlay state.

use crate::driver::{ClientConn, Node, NodeEvent};
use crate::identity::Id;
use crate::limit::TokenBucket;
use crate::membership::{ServerRecord, Service};
use crate::peertable::{PeerRecord, PeerTable};
use crate::relay::{RelayLimits, Relays};
use bytes::Bytes;
use overlay::PeerId;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// First byte of a broadcast payload carrying a peer record.
pub const TAG: u8 = 2;
/// Largest request or response frame.
pub const MAX_FRAME: usize = 64 * 1024;

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// "What address do you see me at?"
    WhoAmI,
    /// Store a withdrawal of my record (an already expired record; I am
    /// `record.body.peer`). A live record needs [`Request::RegisterLive`].
    Register(PeerRecord),
    /// Where is this peer?
    Lookup(PeerId),
    /// Where is the freshest peer with this name?
    LookupName(String),
    /// Which servers are alive, least loaded first?
    Servers,
    /// I want to talk to this peer: tell me where it is when it is online,
    /// and tell it about me (I must have registered first).
    Meet(FriendRef),
    /// Relay me to this peer (it must ask for me too): after
    /// `Response::Relaying` the stream carries framed datagrams
    /// ([`crate::relay`]).
    Relay(PeerId),
    /// Store (or refresh) my record, online while this connection lives:
    /// when it ends (closed, or silent for the QUIC idle timeout) the server
    /// publishes `withdrawal` (signed by me in advance, see
    /// [`PeerRecord::withdrawal`]) and the record goes offline everywhere.
    RegisterLive {
        /// The live record; I am `record.body.peer`.
        record: PeerRecord,
        /// Its withdrawal: seq + 1, already expired.
        withdrawal: PeerRecord,
    },
    /// Every online peer with this name, freshest first (answered with
    /// [`Response::Records`]; more than one means the name is ambiguous).
    FindName(String),
}

/// A friend, by id (authenticated) or by name (a label anyone can claim).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FriendRef {
    /// By peer id.
    Id(PeerId),
    /// By name.
    Name(String),
}

impl FriendRef {
    /// Whether `r` is this friend's record.
    pub fn matches(&self, r: &PeerRecord) -> bool {
        match self {
            FriendRef::Id(id) => r.body.peer == *id,
            FriendRef::Name(n) => r.body.name == *n,
        }
    }
}

/// What a server pushes to a client, on a stream it opens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Notice {
    /// A peer that wants to talk to you, or that you were waiting for;
    /// start punching in `start_in_ms` (the common start instant).
    Friend {
        /// The friend's record.
        record: PeerRecord,
        /// Milliseconds from receipt to the common start instant.
        start_in_ms: u32,
    },
}

/// First byte of a broadcast payload asking a client's home server to tell
/// it about a peer that wants to talk (`Rendezvous`).
pub const TAG_RENDEZVOUS: u8 = 3;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct RendezvousMsg {
    to: PeerId,
    from: PeerRecord,
    /// The common start instant, unix milliseconds (servers keep their
    /// clocks in sync, e.g. with NTP).
    start_at_ms: u64,
}

/// How long a rendezvous notice is assumed to take from one server to
/// another (one overlay hop); a notice arriving later starts at once.
const SERVER_HOP: Duration = Duration::from_millis(50);
/// The longest start delay a server hands out (guards against clock skew
/// between servers).
pub const MAX_START_DELAY: Duration = Duration::from_secs(1);

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_millis() -> u64 {
    std::time::SystemTime::UNIX_EPOCH
        .elapsed()
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The common start instant for a meeting of `a` (connected here) and a
/// peer connected here as `b`, or elsewhere: when the later of the two
/// can have heard of it (half their RTTs, or one server hop).
fn start_instant(a: &quinn::Connection, b: Option<&quinn::Connection>) -> u64 {
    let half = |c: &quinn::Connection| c.rtt() / 2;
    let later = match b {
        Some(b) => half(a).max(half(b)),
        None => half(a).max(SERVER_HOP + Duration::from_millis(10)),
    };
    unix_millis() + later.min(MAX_START_DELAY).as_millis() as u64
}

/// From now until `start_at_ms` reaches `conn`'s client (half its RTT
/// later), at most [`MAX_START_DELAY`].
fn start_in(start_at_ms: u64, conn: &quinn::Connection) -> u32 {
    start_delay(start_at_ms, unix_millis(), conn.rtt() / 2)
}

/// `start_at_ms` − (`now_ms` + `one_way`), within 0..=[`MAX_START_DELAY`].
fn start_delay(start_at_ms: u64, now_ms: u64, one_way: Duration) -> u32 {
    let arrives = now_ms.saturating_add(one_way.as_millis() as u64);
    start_at_ms
        .saturating_sub(arrives)
        .min(MAX_START_DELAY.as_millis() as u64) as u32
}

/// The connection of `peer`, if it is a client of this server.
fn connected(rdv: &Mutex<Rendezvous>, peer: &PeerId) -> Option<quinn::Connection> {
    rdv.lock()
        .unwrap_or_else(|e| e.into_inner())
        .connected
        .get(peer)
        .cloned()
}

/// Tells `conn`'s client about `record`, to start at `start_at_ms`.
fn notify(conn: quinn::Connection, record: PeerRecord, start_at_ms: u64) {
    let start_in_ms = start_in(start_at_ms, &conn);
    push(
        conn,
        Notice::Friend {
            record,
            start_in_ms,
        },
    );
}

/// Clients connected here, the meetings they wait for, and the
/// withdrawals of the records they registered.
#[derive(Default)]
pub struct Rendezvous {
    /// The connection notices go to: the one that registered (or the first).
    connected: std::collections::HashMap<PeerId, quinn::Connection>,
    waiting: Vec<(PeerId, FriendRef)>,
    /// For each client registered here: the connection its record lives
    /// on and the withdrawal to publish when that connection ends.
    presence: std::collections::HashMap<PeerId, (usize, PeerRecord)>,
}

/// Merges `record` into our table and, if it was newer, broadcasts it to
/// every server.
async fn store(
    node: &Node,
    table: &Mutex<PeerTable>,
    record: &PeerRecord,
) -> Result<crate::peertable::Merged, crate::peertable::RecordError> {
    let merged = table
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .merge(record.clone(), unix_now())?;
    replicate_record(node, record).await;
    Ok(merged)
}

/// Broadcasts `record` to every server (payload tag [`TAG`]).
async fn replicate_record(node: &Node, record: &PeerRecord) {
    let mut payload = vec![TAG];
    payload.extend(postcard::to_allocvec(record).unwrap_or_default());
    if let Err(e) = node.broadcast(Bytes::from(payload)).await {
        tracing::warn!(error = %e, "could not replicate a peer record");
    }
}

fn push(conn: quinn::Connection, notice: Notice) {
    tokio::spawn(async move {
        if let Ok(mut s) = conn.open_uni().await {
            let _ = write_msg(&mut s, &notice).await;
            let _ = s.finish();
        }
    });
}

/// Tells `to` (if connected here) about `from`, or asks its home server to,
/// with the common start instant.
async fn introduce(
    node: &Node,
    rdv: &Mutex<Rendezvous>,
    to: &PeerRecord,
    from: PeerRecord,
    start_at_ms: u64,
) {
    let local = connected(rdv, &to.body.peer);
    match local {
        Some(conn) => notify(conn, from, start_at_ms),
        None => {
            let mut payload = vec![TAG_RENDEZVOUS];
            payload.extend(
                postcard::to_allocvec(&RendezvousMsg {
                    to: to.body.peer,
                    from,
                    start_at_ms,
                })
                .unwrap_or_default(),
            );
            let _ = node.broadcast(Bytes::from(payload)).await;
        }
    }
}

/// A record arrived (registration, replication or anti-entropy): whoever
/// here waited for that peer hears about it, and the peer hears about them.
async fn record_arrived(
    node: &Node,
    table: &Mutex<PeerTable>,
    rdv: &Mutex<Rendezvous>,
    record: &PeerRecord,
) {
    // A withdrawal (an offline record) is nobody's friend.
    if !record.is_live(unix_now()) {
        return;
    }
    let matched: Vec<(PeerId, quinn::Connection)> = {
        let mut r = rdv.lock().unwrap_or_else(|e| e.into_inner());
        let (hit, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut r.waiting)
            .into_iter()
            .partition(|(w, f)| *w != record.body.peer && f.matches(record));
        r.waiting = keep;
        hit.into_iter()
            .filter_map(|(w, _)| r.connected.get(&w).cloned().map(|c| (w, c)))
            .collect()
    };
    for (waiter, conn) in matched {
        let here = connected(rdv, &record.body.peer);
        let start_at = start_instant(&conn, here.as_ref());
        notify(conn, record.clone(), start_at);
        let mine = table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lookup(&waiter)
            .cloned();
        if let Some(mine) = mine {
            introduce(node, rdv, record, mine, start_at).await;
        }
    }
}

/// What the server answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The address the request came from.
    YouAre(SocketAddr),
    /// The record is stored and being replicated.
    Registered,
    /// The record found, if any.
    Record(Option<PeerRecord>),
    /// Live servers, least loaded first.
    Servers(Vec<ServerRecord>),
    /// The request was refused.
    Error(String),
    /// The friend is online: its record, and when to start punching.
    Friend {
        /// The friend's record.
        record: PeerRecord,
        /// Milliseconds from receipt to the common start instant.
        start_in_ms: u32,
    },
    /// The friend is not online yet; a `Notice::Friend` will follow.
    Waiting,
    /// The relay is paired: the stream now carries the friend's datagrams.
    Relaying,
    /// Several online records (an answer to `FindName`, or to `Meet` by a
    /// name that more than one online peer uses: then nobody was told, and
    /// the client must pick one by id).
    Records(Vec<PeerRecord>),
}

/// Registrations, meetings and relay requests per second per client
/// connection (each is broadcast to every server or holds a relay slot),
/// and the burst allowed; lookups are local reads and not limited.
const COSTLY_PER_SEC: f64 = 5.0;
const COSTLY_BURST: f64 = 20.0;

/// Largest anti-entropy frame (version lists of a large table).
pub const MAX_SYNC_FRAME: usize = 4 * 1024 * 1024;
/// An anti-entropy exchange, or a client request, must finish within this.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Anti-entropy exchanges answered at once (bounds their memory).
const MAX_SYNCS: usize = 8;
/// Most servers in one `Servers` answer (it must fit in a frame).
const MAX_SERVERS_LISTED: usize = 100;

/// Reads one u32-framed message of at most [`MAX_FRAME`] bytes.
pub async fn read_msg<T: for<'de> Deserialize<'de>>(
    r: &mut quinn::RecvStream,
) -> anyhow::Result<T> {
    read_msg_max(r, MAX_FRAME).await
}

/// Reads one u32-framed message of at most `max` bytes.
pub async fn read_msg_max<T: for<'de> Deserialize<'de>>(
    r: &mut quinn::RecvStream,
    max: usize,
) -> anyhow::Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    anyhow::ensure!(
        len <= max,
        "frame of {len} bytes is over the {max}-byte limit"
    );
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(postcard::from_bytes(&buf)?)
}

/// Writes one u32-framed message.
pub async fn write_msg<T: Serialize>(w: &mut quinn::SendStream, msg: &T) -> anyhow::Result<()> {
    let body = postcard::to_allocvec(msg)?;
    w.write_all(&(body.len() as u32).to_be_bytes()).await?;
    w.write_all(&body).await?;
    Ok(())
}

fn unix_now() -> u64 {
    unix_millis() / 1000
}

/// The running registry of one server.
pub struct Registry {
    table: Arc<Mutex<PeerTable>>,
}

impl Registry {
    /// Serves clients of `node` and replicates the table over its overlay,
    /// relaying with the default limits.
    pub fn start(node: Arc<Node>, members: Arc<Service>) -> Registry {
        Self::start_with(node, members, RelayLimits::default())
    }

    /// [`Registry::start`] with the relay's limits.
    pub fn start_with(node: Arc<Node>, members: Arc<Service>, relay: RelayLimits) -> Registry {
        let relays = Relays::new(relay);
        let table = Arc::new(Mutex::new(PeerTable::new()));
        let rdv = Arc::new(Mutex::new(Rendezvous::default()));
        if let Some(clients) = node.take_client_connections() {
            tokio::spawn(serve_clients(
                node.clone(),
                members.clone(),
                table.clone(),
                rdv.clone(),
                relays,
                clients,
            ));
        }
        if let Some(streams) = node.take_app_streams() {
            tokio::spawn(answer_syncs(
                node.clone(),
                table.clone(),
                rdv.clone(),
                streams,
            ));
        }
        tokio::spawn(replicate(node, members, table.clone(), rdv));
        Registry { table }
    }

    /// The table (for status and tests).
    pub fn table(&self) -> Arc<Mutex<PeerTable>> {
        self.table.clone()
    }
}

/// Applies records broadcast by other servers; takes clients of dead
/// servers offline.
async fn replicate(
    node: Arc<Node>,
    members: Arc<Service>,
    table: Arc<Mutex<PeerTable>>,
    rdv: Arc<Mutex<Rendezvous>>,
) {
    let mut events = node.events();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(NodeEvent::Delivery(d)) if d.payload.first() == Some(&TAG) => {
                    match postcard::from_bytes::<PeerRecord>(&d.payload[1..]) {
                        Ok(record) => {
                            let res = table.lock().unwrap_or_else(|e| e.into_inner()).merge(record.clone(), unix_now());
                            match res {
                                Ok(_) => record_arrived(&node, &table, &rdv, &record).await,
                                Err(e) => {
                                    metrics::counter!("chatd_peer_records_rejected_total").increment(1);
                                    tracing::debug!(origin = %Id(d.origin), error = %e, "peer record not applied");
                                }
                            }
                        }
                        Err(_) => {
                            metrics::counter!("chatd_peer_records_rejected_total").increment(1);
                        }
                    }
                }
                Ok(NodeEvent::Delivery(d)) if d.payload.first() == Some(&TAG_RENDEZVOUS) => {
                    // Someone wants to talk to a client: if it is ours, tell it.
                    if let Ok(m) = postcard::from_bytes::<RendezvousMsg>(&d.payload[1..])
                        && m.from.verify().is_ok()
                    {
                        let conn = connected(&rdv, &m.to);
                        if let Some(conn) = conn {
                            notify(conn, m.from, m.start_at_ms);
                        }
                    }
                }
                Ok(NodeEvent::NeighborUp(peer)) if node.id < peer => {
                    let (node, table, rdv) = (node.clone(), table.clone(), rdv.clone());
                    tokio::spawn(async move {
                        let res = tokio::time::timeout(EXCHANGE_TIMEOUT, sync_with(&node, &table, &rdv, peer))
                            .await
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
                        if let Err(e) = res {
                            tracing::debug!(peer = %Id(peer), error = %e, "anti-entropy did not complete");
                        }
                    });
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            _ = sweep.tick() => {
                let live: std::collections::BTreeSet<PeerId> =
                    members.servers().iter().map(|s| s.id).collect();
                let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
                t.expire(unix_now(), crate::peertable::MAX_TTL);
                t.refresh_online(&live, unix_now());
                let mine = t.online_homed_at(&node.id);
                members.set_clients(u32::try_from(mine).unwrap_or(u32::MAX));
                metrics::gauge!("chatd_clients_registered").set(mine as f64);
                metrics::gauge!("chatd_peer_table_records").set(t.online() as f64);
            }
        }
    }
}

async fn serve_clients(
    node: Arc<Node>,
    members: Arc<Service>,
    table: Arc<Mutex<PeerTable>>,
    rdv: Arc<Mutex<Rendezvous>>,
    relays: Arc<Relays>,
    mut clients: tokio::sync::mpsc::Receiver<ClientConn>,
) {
    // Open client connections, bounded (a connection costs memory even if
    // it never registers). Load is the number of registered clients, set
    // by `replicate`'s sweep.
    let open = Arc::new(tokio::sync::Semaphore::new(
        (members.capacity() as usize).saturating_mul(2).max(16),
    ));
    while let Some((peer, conn)) = clients.recv().await {
        let node = node.clone();
        let members = members.clone();
        let table = table.clone();
        let rdv = rdv.clone();
        let relays = relays.clone();
        let Ok(permit) = open.clone().try_acquire_owned() else {
            metrics::counter!("chatd_clients_refused_total").increment(1);
            conn.close(5u32.into(), b"server full: ask for another server");
            continue;
        };
        tokio::spawn(async move {
            let _permit = permit;
            metrics::gauge!("chatd_client_connections").increment(1.0);
            rdv.lock()
                .unwrap_or_else(|e| e.into_inner())
                .connected
                .entry(peer)
                // A registered connection of the same client keeps its notices.
                .or_insert_with(|| conn.clone());
            let mut broadcasts =
                TokenBucket::new(COSTLY_PER_SEC, COSTLY_BURST, std::time::Instant::now());
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let request =
                    tokio::time::timeout(EXCHANGE_TIMEOUT, read_msg::<Request>(&mut recv))
                        .await
                        .unwrap_or_else(|_| {
                            Err(anyhow::anyhow!("request not received within 10 s"))
                        });
                // Each of these reaches every server (or holds a relay
                // slot): a client gets a few per second.
                let limited = matches!(
                    request,
                    Ok(Request::Register(_)
                        | Request::RegisterLive { .. }
                        | Request::Meet(_)
                        | Request::Relay(_))
                ) && !broadcasts.try_take(1.0, std::time::Instant::now());
                let response = match request {
                    _ if limited => {
                        metrics::counter!("chatd_client_requests_limited_total").increment(1);
                        Response::Error(format!(
                            "rate limited: at most {COSTLY_PER_SEC} registrations, meetings and relay requests per second"
                        ))
                    }
                    Ok(Request::Relay(friend)) => {
                        // The stream becomes the relay's.
                        tokio::spawn(relays.clone().serve(peer, friend, send, recv));
                        continue;
                    }
                    Ok(req) => handle(req, peer, &conn, &node, &members, &table, &rdv).await,
                    Err(e) => {
                        metrics::counter!("chatd_client_requests_malformed_total").increment(1);
                        Response::Error(format!("malformed request: {e}"))
                    }
                };
                if write_msg(&mut send, &response).await.is_err() {
                    break;
                }
                let _ = send.finish();
            }
            metrics::gauge!("chatd_client_connections").decrement(1.0);
            let withdrawal = {
                let mut r = rdv.lock().unwrap_or_else(|e| e.into_inner());
                if r.connected
                    .get(&peer)
                    .is_some_and(|c| c.stable_id() == conn.stable_id())
                {
                    r.connected.remove(&peer);
                    r.waiting.retain(|(w, _)| *w != peer);
                }
                let mine = r
                    .presence
                    .get(&peer)
                    .is_some_and(|(id, _)| *id == conn.stable_id());
                if mine {
                    r.presence.remove(&peer).map(|(_, w)| w)
                } else {
                    None
                }
            };
            // Presence is the connection: the record goes offline everywhere.
            if let Some(w) = withdrawal {
                match store(&node, &table, &w).await {
                    Ok(_) => {
                        metrics::counter!("chatd_clients_gone_total").increment(1);
                        tracing::debug!(peer = %Id(peer), "client connection ended: record withdrawn");
                    }
                    // A newer record (re-registered elsewhere) already won.
                    Err(e) => {
                        tracing::debug!(peer = %Id(peer), error = %e, "withdrawal not applied")
                    }
                }
            }
        });
    }
}

/// Stores `record` (the connection's own, homed here, with the address we
/// see) and replicates it; with a `withdrawal`, the record lives as long as
/// this connection.
async fn register(
    withdrawal: Option<PeerRecord>,
    record: PeerRecord,
    peer: PeerId,
    conn: &quinn::Connection,
    node: &Node,
    table: &Mutex<PeerTable>,
    rdv: &Mutex<Rendezvous>,
) -> Response {
    if record.body.peer != peer {
        return Response::Error("a client may only register its own record".into());
    }
    if record.body.home_server != node.id {
        return Response::Error("the record must name this server as home".into());
    }
    if record.body.public_addr != Some(conn.remote_address()) {
        return Response::Error(format!(
            "the record's public address must be the one this server sees: {}",
            conn.remote_address()
        ));
    }
    match store(node, table, &record).await {
        Ok(_) => {
            if let Some(withdrawal) = withdrawal {
                let mut r = rdv.lock().unwrap_or_else(|e| e.into_inner());
                r.presence.insert(peer, (conn.stable_id(), withdrawal));
                // Notices go to the connection the record lives on.
                r.connected.insert(peer, conn.clone());
            } else {
                // Withdrawn by the client itself: nothing to publish later.
                rdv.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .presence
                    .remove(&peer);
            }
            record_arrived(node, table, rdv, &record).await;
            Response::Registered
        }
        Err(e) => Response::Error(e.to_string()),
    }
}

async fn handle(
    req: Request,
    peer: PeerId,
    conn: &quinn::Connection,
    node: &Node,
    members: &Service,
    table: &Mutex<PeerTable>,
    rdv: &Mutex<Rendezvous>,
) -> Response {
    match req {
        Request::WhoAmI => Response::YouAre(conn.remote_address()),
        Request::Register(record) if record.is_live(unix_now()) => Response::Error(
            "a live record needs RegisterLive with its withdrawal (update the client)".into(),
        ),
        Request::Register(record) => register(None, record, peer, conn, node, table, rdv).await,
        Request::RegisterLive { record, withdrawal } => {
            if let Err(e) = withdrawal.check_withdrawal(&record, unix_now()) {
                metrics::counter!("chatd_client_requests_malformed_total").increment(1);
                return Response::Error(format!("withdrawal refused: {e}"));
            }
            register(Some(withdrawal), record, peer, conn, node, table, rdv).await
        }
        Request::Meet(friend) => {
            let (mine, mut theirs) = {
                let t = table.lock().unwrap_or_else(|e| e.into_inner());
                let theirs: Vec<PeerRecord> = match &friend {
                    FriendRef::Id(id) => t.lookup(id).cloned().into_iter().collect(),
                    FriendRef::Name(n) => t.lookup_name_all(n).into_iter().cloned().collect(),
                };
                (
                    t.lookup(&peer).cloned(),
                    theirs
                        .into_iter()
                        .filter(|r| r.body.peer != peer)
                        .collect::<Vec<_>>(),
                )
            };
            let Some(mine) = mine else {
                return Response::Error("register before asking to meet someone".into());
            };
            if theirs.len() > 1 {
                // A name several peers use: tell nobody, let the client choose.
                return Response::Records(theirs);
            }
            let theirs = theirs.pop();
            match theirs {
                Some(theirs) => {
                    let here = connected(rdv, &theirs.body.peer);
                    let start_at = start_instant(conn, here.as_ref());
                    introduce(node, rdv, &theirs, mine, start_at).await;
                    Response::Friend {
                        start_in_ms: start_in(start_at, conn),
                        record: theirs,
                    }
                }
                None => {
                    let mut r = rdv.lock().unwrap_or_else(|e| e.into_inner());
                    r.waiting.retain(|(w, _)| *w != peer);
                    r.waiting.push((peer, friend));
                    Response::Waiting
                }
            }
        }
        Request::Relay(_) => Response::Error("relay requests take a stream of their own".into()),
        Request::Lookup(id) => Response::Record(
            table
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .lookup(&id)
                .cloned(),
        ),
        Request::LookupName(name) => Response::Record(
            table
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .lookup_name(&name)
                .cloned(),
        ),
        Request::FindName(name) => Response::Records(
            table
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .lookup_name_all(&name)
                .into_iter()
                .cloned()
                .collect(),
        ),
        Request::Servers => {
            let mut servers = members.servers();
            servers.sort_by(|a, b| a.load().total_cmp(&b.load()).then(a.id.cmp(&b.id)));
            servers.truncate(MAX_SERVERS_LISTED);
            Response::Servers(servers)
        }
    }
}

/// Anti-entropy messages, on a stream of the overlay connection.
#[derive(Debug, Serialize, Deserialize)]
enum Sync {
    Digest(Vec<u64>),
    Versions {
        buckets: Vec<u8>,
        versions: Vec<(PeerId, u64)>,
    },
    Records {
        records: Vec<PeerRecord>,
        versions: Vec<(PeerId, u64)>,
    },
}

fn newer_records(
    table: &Mutex<PeerTable>,
    buckets: &[u8],
    theirs: &[(PeerId, u64)],
) -> Vec<PeerRecord> {
    table
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .newer_than(buckets, theirs)
}

fn versions_of(table: &Mutex<PeerTable>, buckets: &[u8]) -> Vec<(PeerId, u64)> {
    let t = table.lock().unwrap_or_else(|e| e.into_inner());
    buckets.iter().flat_map(|b| t.bucket_versions(*b)).collect()
}

/// Merges records learned from a neighbor and re-broadcasts the new ones.
async fn absorb(
    node: &Node,
    table: &Mutex<PeerTable>,
    rdv: &Mutex<Rendezvous>,
    records: Vec<PeerRecord>,
) -> usize {
    let mut fresh = Vec::new();
    {
        let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
        for r in records {
            if t.merge(r.clone(), unix_now()).is_ok() {
                fresh.push(r);
            }
        }
    }
    for r in &fresh {
        replicate_record(node, r).await;
        record_arrived(node, table, rdv, r).await;
    }
    if !fresh.is_empty() {
        metrics::counter!("chatd_peer_records_repaired_total").increment(fresh.len() as u64);
    }
    fresh.len()
}

/// The initiating side of one anti-entropy exchange with `peer`.
async fn sync_with(
    node: &Node,
    table: &Mutex<PeerTable>,
    rdv: &Mutex<Rendezvous>,
    peer: PeerId,
) -> anyhow::Result<()> {
    let (mut send, mut recv) = node.open_bi(peer).await?;
    let digest = table
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .digest()
        .to_vec();
    write_msg(&mut send, &Sync::Digest(digest)).await?;
    let Sync::Versions { buckets, versions } = read_msg_max(&mut recv, MAX_SYNC_FRAME).await?
    else {
        anyhow::bail!("expected versions");
    };
    let ours = versions_of(table, &buckets);
    let newer = newer_records(table, &buckets, &versions);
    write_msg(
        &mut send,
        &Sync::Records {
            records: newer,
            versions: ours,
        },
    )
    .await?;
    send.finish()?;
    let Sync::Records { records, .. } = read_msg_max(&mut recv, MAX_SYNC_FRAME).await? else {
        anyhow::bail!("expected records");
    };
    let n = absorb(node, table, rdv, records).await;
    tracing::debug!(peer = %Id(peer), learned = n, "anti-entropy done");
    Ok(())
}

/// The answering side: one task per stream a neighbor opens.
async fn answer_syncs(
    node: Arc<Node>,
    table: Arc<Mutex<PeerTable>>,
    rdv: Arc<Mutex<Rendezvous>>,
    mut streams: tokio::sync::mpsc::Receiver<crate::driver::AppStream>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SYNCS));
    while let Some((peer, mut send, mut recv)) = streams.recv().await {
        let (node, table, rdv) = (node.clone(), table.clone(), rdv.clone());
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics::counter!("chatd_peer_sync_failures_total").increment(1);
            let _ = send.reset(1u32.into());
            continue;
        };
        tokio::spawn(async move {
            let _permit = permit;
            let exchange = async {
                let Sync::Digest(theirs) = read_msg_max(&mut recv, MAX_SYNC_FRAME).await? else {
                    anyhow::bail!("expected a digest");
                };
                let theirs: [u64; 256] = theirs
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("digest must have 256 buckets"))?;
                let buckets = table
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .differing(&theirs);
                let versions = versions_of(&table, &buckets);
                write_msg(
                    &mut send,
                    &Sync::Versions {
                        buckets: buckets.clone(),
                        versions,
                    },
                )
                .await?;
                let Sync::Records { records, versions } =
                    read_msg_max(&mut recv, MAX_SYNC_FRAME).await?
                else {
                    anyhow::bail!("expected records");
                };
                let newer = newer_records(&table, &buckets, &versions);
                write_msg(
                    &mut send,
                    &Sync::Records {
                        records: newer,
                        versions: Vec::new(),
                    },
                )
                .await?;
                send.finish()?;
                absorb(&node, &table, &rdv, records).await;
                anyhow::Ok(())
            };
            let res = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
            if let Err(e) = res {
                metrics::counter!("chatd_peer_sync_failures_total").increment(1);
                tracing::debug!(peer = %Id(peer), error = %e, "anti-entropy request failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_delays_count_down_to_the_common_instant_within_bounds() {
        let ms = Duration::from_millis;
        // A client 20 ms away hears at now + 20: it waits the rest.
        assert_eq!(start_delay(1_100, 1_000, ms(20)), 80);
        // The later client waits nothing.
        assert_eq!(start_delay(1_100, 1_000, ms(100)), 0);
        // Too late (a slow hop, or clock skew): start at once.
        assert_eq!(start_delay(1_000, 5_000, ms(5)), 0);
        // A far-future instant (skewed server clock) is capped.
        assert_eq!(start_delay(u64::MAX, 1_000, ms(0)), 1_000);
    }
}
