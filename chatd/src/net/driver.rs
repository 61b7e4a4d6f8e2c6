//! The overlay driver: runs the unchanged sans-IO `overlay::State` on tokio
//! over QUIC.
//!
//! One task (the *core task*) owns the state, the timer heap, the address
//! book and the table of links; nothing else touches them. Each QUIC
//! connection has a writer task fed by a bounded queue (a full queue drops
//! the frame and counts it: a slow peer never blocks the others) and a
//! reader task that turns frames into core inputs. An accept task admits
//! servers (TLS verifies the cluster allowlist) and dial tasks connect with
//! the peer's key pinned.
//!
//! Frames: one unidirectional QUIC stream per direction and connection,
//! each frame a u32 big-endian length and an `overlay::wire` body.
//!
//! Must not know what the broadcasts mean (that is the server layer's
//! business): deliveries go out on a channel.

use crate::net::identity::{Id, Keypair, ServerAddr};
use crate::net::tls::{self, Admission, Credentials, DialError, DialFailure, SharedAdmission};
use bytes::Bytes;
use overlay::{
    BroadcastError, Config, Delivery, Event, Input, MessageId, Output, PeerData, PeerId, PeerInfo,
    State, Stats, Time, Timer,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rendezvous::limit::{Admit, HandshakeLimiter};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

/// ALPN of server-to-server overlay connections, with the protocol version.
pub const OVERLAY_ALPN: &[u8] = b"chatd-overlay/1";
/// ALPN of client-to-server connections.
pub const CLIENT_ALPN: &[u8] = b"chatd-client/2";

/// A client connection accepted by the node: its authenticated id and the
/// connection (for the registry to serve).
pub type ClientConn = (PeerId, quinn::Connection);

/// What a node needs to run.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Addresses other servers should dial (default: the bound address).
    pub advertise: Vec<SocketAddr>,
    /// Servers to join through (and to re-join through when isolated).
    pub bootstrap: Vec<ServerAddr>,
    /// Which servers may connect.
    pub admission: Admission,
    /// Overlay protocol parameters.
    pub overlay: Config,
    /// Frames queued per connection before new ones are dropped.
    pub queue_frames: usize,
    /// QUIC keep-alive interval.
    pub keep_alive: Duration,
    /// QUIC idle timeout: a silent connection is declared dead after it.
    pub idle_timeout: Duration,
    /// While the node has bootstrap servers but no overlay neighbor, a
    /// warning with the reason of the last failed dial is logged this often.
    pub isolation_warning: Duration,
    /// New connections (handshakes) accepted per second in all, and the
    /// burst; beyond it attempts are refused before any cryptography (see
    /// [`rendezvous::limit::HandshakeLimiter`]).
    pub handshakes: (f64, f64),
    /// The same per address (IPv6: per /64); beyond it attempts are
    /// dropped silently.
    pub handshakes_per_ip: (f64, f64),
}

impl NodeConfig {
    /// Defaults for a node listening on `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        NodeConfig {
            listen,
            advertise: Vec::new(),
            bootstrap: Vec::new(),
            admission: Admission::default(),
            overlay: Config::lan(),
            queue_frames: 1024,
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            isolation_warning: Duration::from_secs(5),
            handshakes: (500.0, 32.0),
            handshakes_per_ip: (10.0, 20.0),
        }
    }
}

/// A view of the node for status pages and tests.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// This node.
    pub id: PeerId,
    /// Active view.
    pub active: Vec<PeerId>,
    /// Passive view size.
    pub passive: usize,
    /// Open QUIC connections (neighbors and short-lived ones).
    pub links: usize,
    /// Protocol counters.
    pub stats: Stats,
    /// Frames dropped because a peer's queue was full.
    pub dropped_frames: u64,
    /// The current RTT estimate of each open connection.
    pub rtts: Vec<(PeerId, Duration)>,
}

/// What the node tells the layer above it.
#[derive(Clone, Debug)]
pub enum NodeEvent {
    /// A broadcast arrived.
    Delivery(Delivery<PeerId>),
    /// A connection to this server failed: it timed out, was reset, or could
    /// not be dialed (not a graceful DISCONNECT). Input to failure detection.
    PeerFailed(PeerId),
    /// A server became an overlay neighbor (anti-entropy runs now).
    NeighborUp(PeerId),
    /// A server stopped being an overlay neighbor.
    NeighborDown(PeerId),
}

/// A bidirectional stream a neighbor opened on its overlay connection.
pub type AppStream = (PeerId, quinn::SendStream, quinn::RecvStream);

/// A receiver of the broadcasts delivered to a node.
pub struct Deliveries(broadcast::Receiver<NodeEvent>);

impl Deliveries {
    /// The next delivery; `None` once the node stopped. If this receiver
    /// lagged behind, the missed deliveries are skipped (and counted).
    pub async fn recv(&mut self) -> Option<Delivery<PeerId>> {
        loop {
            match self.0.recv().await {
                Ok(NodeEvent::Delivery(d)) => return Some(d),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    metrics::counter!("chatd_event_receiver_lagged_total").increment(n);
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

enum Command {
    Broadcast(Bytes, oneshot::Sender<Result<MessageId, BroadcastError>>),
    Snapshot(oneshot::Sender<Snapshot>),
    Leave(oneshot::Sender<()>),
    Connection(PeerId, oneshot::Sender<Option<quinn::Connection>>),
    /// A connection to this server: the existing link, or a new one dialed
    /// at the address (admission checked first).
    Connect(
        PeerId,
        Option<SocketAddr>,
        oneshot::Sender<Option<quinn::Connection>>,
    ),
    Block(std::collections::BTreeSet<PeerId>),
    /// The allowlist changed: close links to servers no longer admitted.
    Readmit,
}

enum NetEvent {
    Up {
        peer: PeerId,
        conn: quinn::Connection,
        dialed: bool,
    },
    DialFailed {
        peer: PeerId,
        error: DialError,
    },
    Frame {
        peer: PeerId,
        conn_id: usize,
        frame: Bytes,
    },
    Closed {
        peer: PeerId,
        conn_id: usize,
        /// The peer (or we) closed it on purpose, with code 0: not a failure.
        graceful: bool,
        /// Why it ended, when that was a failure.
        failure: Option<DialError>,
    },
}

/// A running node.
pub struct Node {
    /// This node's id.
    pub id: PeerId,
    /// The address it listens on.
    pub local_addr: SocketAddr,
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<NodeEvent>,
    task: tokio::task::JoinHandle<()>,
    endpoint: quinn::Endpoint,
    admission: SharedAdmission,
    advertise: Vec<SocketAddr>,
    clients: std::sync::Mutex<Option<mpsc::Receiver<ClientConn>>>,
    app_streams: std::sync::Mutex<Option<mpsc::Receiver<AppStream>>>,
}

impl Node {
    /// Binds the endpoint and starts the node; it joins through the
    /// bootstrap servers right away.
    pub async fn start(keypair: &Keypair, cfg: NodeConfig) -> anyhow::Result<Node> {
        cfg.overlay.validate()?;
        let creds = Arc::new(Credentials::new(keypair)?);
        let transport = Arc::new(transport_config(&cfg)?);
        let admission = Arc::new(std::sync::RwLock::new(cfg.admission.clone()));
        let tls = tls::server_config(&creds, &[OVERLAY_ALPN, CLIENT_ALPN])?;
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
        // Accepted connections start with the limits of an anonymous client;
        // an overlay connection gets the server's once its ALPN is known.
        server.transport_config(Arc::new(accepted_transport_config(&cfg)?));
        let bind_error = |error| BindError {
            socket: "QUIC",
            proto: "UDP",
            addr: cfg.listen,
            flag: "--listen",
            error,
        };
        let socket = bind_udp(cfg.listen).map_err(bind_error)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_error)?;
        let local_addr = endpoint.local_addr()?;
        let id = keypair.id().0;
        let (cmd_tx, cmd_rx) = mpsc::channel(256);
        let (net_tx, net_rx) = mpsc::channel(4096);
        let (events, _) = broadcast::channel(4096);
        let (client_tx, client_rx) = mpsc::channel(256);
        let (app_tx, app_rx) = mpsc::channel(64);
        tokio::spawn(accept_loop(
            HandshakeLimiter::new(cfg.handshakes, cfg.handshakes_per_ip, Time::from_micros(0)),
            endpoint.clone(),
            net_tx.clone(),
            admission.clone(),
            client_tx,
        ));
        let advertise = if cfg.advertise.is_empty() {
            vec![local_addr]
        } else {
            cfg.advertise.clone()
        };
        let mut state = State::new(id, cfg.overlay.clone(), StdRng::from_rng(&mut rand::rng()));
        state.set_data(encode_addrs(&advertise));
        let core = Core {
            me: id,
            state,
            start: Instant::now(),
            timers: BinaryHeap::new(),
            links: HashMap::new(),
            dialing: HashMap::new(),
            connect_waiters: HashMap::new(),
            addrs: cfg.bootstrap.iter().map(|b| (b.id.0, b.addr)).collect(),
            next_conn_id: 0,
            endpoint: endpoint.clone(),
            creds,
            transport,
            net_tx,
            events: events.clone(),
            queue_frames: cfg.queue_frames.max(1),
            dropped: 0,
            deferred: Vec::new(),
            closing: Vec::new(),
            blocked: std::collections::BTreeSet::new(),
            app_streams: app_tx,
            admission: admission.clone(),
            bootstrap: cfg
                .bootstrap
                .iter()
                .filter(|b| b.id.0 != id)
                .copied()
                .collect(),
            last_failure: None,
            isolated_since: Some(Instant::now()),
            last_isolation_warning: Instant::now(),
            isolation_warning: cfg.isolation_warning,
        };
        let contacts: Vec<PeerInfo<PeerId>> = cfg
            .bootstrap
            .iter()
            .filter(|b| b.id.0 != id)
            .map(|b| PeerInfo {
                id: b.id.0,
                data: encode_addrs(&[b.addr]),
            })
            .collect();
        let task = tokio::spawn(core.run(cmd_rx, net_rx, contacts));
        tracing::info!(id = %Id(id), addr = %local_addr, "overlay node started");
        Ok(Node {
            id,
            local_addr,
            commands: cmd_tx,
            events,
            task,
            endpoint,
            admission,
            advertise,
            clients: std::sync::Mutex::new(Some(client_rx)),
            app_streams: std::sync::Mutex::new(Some(app_rx)),
        })
    }

    /// Bidirectional streams neighbors open on overlay connections (once;
    /// later calls get `None`).
    pub fn take_app_streams(&self) -> Option<mpsc::Receiver<AppStream>> {
        self.app_streams.lock().ok()?.take()
    }

    /// Opens a bidirectional stream to `peer` on its overlay connection.
    pub async fn open_bi(
        &self,
        peer: PeerId,
    ) -> anyhow::Result<(quinn::SendStream, quinn::RecvStream)> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Connection(peer, tx)).await?;
        let conn = rx
            .await?
            .ok_or_else(|| anyhow::anyhow!("no connection to {}", Id(peer)))?;
        Ok(conn.open_bi().await?)
    }

    /// A connection to server `peer` for application streams: the overlay
    /// link if there is one, else a new link dialed at `addr` (or where the
    /// overlay says it is), if `peer` is admitted.
    pub async fn connect(
        &self,
        peer: PeerId,
        addr: Option<SocketAddr>,
    ) -> anyhow::Result<quinn::Connection> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Connect(peer, addr, tx)).await?;
        rx.await?
            .ok_or_else(|| anyhow::anyhow!("no connection to {}", Id(peer)))
    }

    /// Fault injection (tests, drills): cuts every link to these servers and
    /// refuses new ones until called again with a smaller set.
    pub async fn block(&self, peers: std::collections::BTreeSet<PeerId>) -> anyhow::Result<()> {
        self.commands.send(Command::Block(peers)).await?;
        Ok(())
    }

    /// The stream of accepted client connections (once; later calls get
    /// `None`).
    pub fn take_client_connections(&self) -> Option<mpsc::Receiver<ClientConn>> {
        self.clients.lock().ok()?.take()
    }

    /// Replaces the cluster allowlist (new connections are checked against
    /// it; established ones stay).
    pub fn set_admission(&self, admission: Admission) {
        if let Ok(mut a) = self.admission.write() {
            *a = admission;
        }
        // Established links of servers no longer admitted are closed too.
        let _ = self.commands.try_send(Command::Readmit);
    }

    /// Whether `peer` is admitted to the cluster (the allowlist in force).
    pub fn admits(&self, peer: &PeerId) -> bool {
        self.admission
            .read()
            .map(|a| a.admits(peer))
            .unwrap_or(false)
    }

    /// The addresses this server advertises to others.
    pub fn advertised(&self) -> Vec<SocketAddr> {
        self.advertise.clone()
    }

    /// `ID@HOST:PORT` of this node.
    pub fn addr(&self) -> ServerAddr {
        ServerAddr {
            id: Id(self.id),
            addr: self.local_addr,
        }
    }

    /// Broadcasts `payload` to every server.
    pub async fn broadcast(&self, payload: Bytes) -> anyhow::Result<MessageId> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Broadcast(payload, tx)).await?;
        Ok(rx.await??)
    }

    /// The current state of the node.
    pub async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Snapshot(tx)).await?;
        Ok(rx.await?)
    }

    /// Broadcasts delivered to this node from now on.
    pub fn deliveries(&self) -> Deliveries {
        Deliveries(self.events.subscribe())
    }

    /// Everything the node reports from now on.
    pub fn events(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    /// Stops at once without telling anyone, as a crash would (for tests
    /// and fault injection): peers notice through their connections.
    pub fn kill(&self) {
        self.task.abort();
        self.endpoint.close(9u32.into(), b"crashed");
    }

    /// Leaves the overlay (neighbors are told), then closes everything,
    /// waiting at most `grace` for the goodbyes to be sent.
    pub async fn shutdown(&self, grace: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Leave(tx)).await.is_ok() {
            let _ = tokio::time::timeout(grace, rx).await;
        }
        self.task.abort();
        self.endpoint.close(0u32.into(), b"shutting down");
        let _ = tokio::time::timeout(grace, self.endpoint.wait_idle()).await;
    }
}

/// A socket that could not be bound, said so that the person who started
/// the server knows which one, where, and what to change.
#[derive(Debug)]
pub struct BindError {
    /// Which socket ("QUIC", "admin HTTP").
    pub socket: &'static str,
    /// "UDP" or "TCP".
    pub proto: &'static str,
    /// The address.
    pub addr: SocketAddr,
    /// The flag that sets it.
    pub flag: &'static str,
    /// What the system said.
    pub error: std::io::Error,
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::io::ErrorKind as K;
        let BindError {
            socket,
            proto,
            addr,
            flag,
            error,
        } = self;
        write!(f, "cannot bind the {socket} socket ({proto} {addr}): ")?;
        match error.kind() {
            K::AddrInUse => write!(
                f,
                "address already in use — is another chatd running? pick another with {flag}"
            ),
            K::AddrNotAvailable => write!(
                f,
                "this machine has no such address — pick another with {flag}"
            ),
            K::PermissionDenied => write!(
                f,
                "permission denied (ports below 1024 need privileges) — pick another with {flag}"
            ),
            _ => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for BindError {}

/// Bidirectional streams a client may open at once (one per request).
pub const CLIENT_BIDI_STREAMS: u32 = 8;
/// Bytes a client may have in flight towards us on one connection, all
/// streams together (QUIC connection flow control).
pub const CLIENT_RECEIVE_WINDOW: u32 = 16 * 1024;
/// The same for an overlay connection of an admitted server.
const SERVER_RECEIVE_WINDOW: u32 = 16 * 1024 * 1024;
/// Per-stream window (both kinds; for clients the connection window binds).
const STREAM_RECEIVE_WINDOW: u32 = 1024 * 1024;

/// The transport of overlay connections we dial (and, once raised, of the
/// ones we accept): one unidirectional stream per direction for overlay
/// frames, bidirectional streams for server-to-server messages.
fn transport_config(cfg: &NodeConfig) -> anyhow::Result<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(cfg.keep_alive));
    t.max_idle_timeout(Some(quinn::IdleTimeout::try_from(cfg.idle_timeout)?));
    t.max_concurrent_bidi_streams(16u32.into());
    t.max_concurrent_uni_streams(4u32.into());
    t.stream_receive_window(STREAM_RECEIVE_WINDOW.into());
    t.receive_window(SERVER_RECEIVE_WINDOW.into());
    t.datagram_receive_buffer_size(None);
    Ok(t)
}

/// The RTT assumed for a connection we accept until it is measured. Its
/// first flight (Initial + Handshake) is resent after three times this
/// when lost — and only the server can resend it: quinn's default 333 ms
/// made one lost packet cost the client a whole second (measured in the
/// NAT lab at 10% loss). 100 ms resends after ~300 ms; on a path slower
/// than that, one spurious resend, bounded by the 3x anti-amplification
/// limit.
pub const ACCEPT_INITIAL_RTT: Duration = Duration::from_millis(100);

/// The transport of every accepted connection until its ALPN says it is a
/// server: what an anonymous client gets — no unidirectional streams, a
/// few bidirectional ones, a small connection window, no datagrams. No
/// keep-alive from this side: whoever dialed keeps the connection alive
/// (clients and servers both ping every second), and the idle timeout
/// still ends a connection whose dialer went silent. Pinging every
/// accepted connection would double the packets a crowd of idle
/// connections costs.
fn accepted_transport_config(cfg: &NodeConfig) -> anyhow::Result<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.initial_rtt(ACCEPT_INITIAL_RTT);
    t.keep_alive_interval(None);
    t.max_idle_timeout(Some(quinn::IdleTimeout::try_from(cfg.idle_timeout)?));
    t.max_concurrent_bidi_streams(CLIENT_BIDI_STREAMS.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.stream_receive_window(STREAM_RECEIVE_WINDOW.into());
    t.receive_window(CLIENT_RECEIVE_WINDOW.into());
    t.datagram_receive_buffer_size(None);
    Ok(t)
}

/// Kernel receive (and send) buffer asked for the server's UDP socket. The
/// default (~208 KiB on Linux) overflows within milliseconds when a crowd
/// of clients sends at once (measured: thousands of drops a minute under
/// the abuse benchmark even at 8 MiB), and every dropped packet costs its
/// sender — attacker or not — a retransmission timeout.
pub const UDP_BUFFER_BYTES: usize = 32 * 1024 * 1024;

/// Binds the server's UDP socket with [`UDP_BUFFER_BYTES`] buffers. The
/// kernel caps what it grants at `net.core.rmem_max` / `wmem_max` unless
/// the process may override it (CAP_NET_ADMIN: `SO_RCVBUFFORCE`); when it
/// grants less, that is logged with the sysctl that raises it.
fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // As std's bind leaves it: a `[::]` socket also takes IPv4.
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    // Linux reports twice what it granted (its bookkeeping overhead).
    if socket.recv_buffer_size().unwrap_or(0) < UDP_BUFFER_BYTES {
        force_buffers(&socket);
    }
    socket.bind(&addr.into())?;
    let got = socket.recv_buffer_size().unwrap_or(0);
    metrics::gauge!("chatd_udp_receive_buffer_bytes").set(got as f64);
    if got < UDP_BUFFER_BYTES {
        tracing::warn!(
            granted = got,
            wanted = UDP_BUFFER_BYTES,
            "the kernel granted a smaller UDP receive buffer than wanted: under a burst of \
             clients packets will be dropped; raise the limit with \
             `sysctl -w net.core.rmem_max={0} net.core.wmem_max={0}` \
             (scripts/chatd-sysctl.conf)",
            UDP_BUFFER_BYTES
        );
    }
    Ok(socket.into())
}

/// `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE`: beyond the sysctl limit, allowed
/// with CAP_NET_ADMIN (root, or a unit that grants it); otherwise refused
/// and ignored.
fn force_buffers(socket: &socket2::Socket) {
    use nix::sys::socket::{setsockopt, sockopt};
    let size = UDP_BUFFER_BYTES;
    let _ = setsockopt(socket, sockopt::RcvBufForce, &size);
    let _ = setsockopt(socket, sockopt::SndBufForce, &size);
}

/// Gives an admitted server's accepted connection the overlay's limits.
fn raise_to_server_limits(conn: &quinn::Connection) {
    conn.set_receive_window(SERVER_RECEIVE_WINDOW.into());
    conn.set_max_concurrent_uni_streams(4u32.into());
    conn.set_max_concurrent_bi_streams(16u32.into());
}

/// Peer data on the wire: the server's dialable addresses, postcard-encoded.
fn encode_addrs(addrs: &[SocketAddr]) -> PeerData {
    PeerData::from(postcard::to_allocvec(addrs).unwrap_or_default())
}

fn decode_addrs(data: &[u8]) -> Option<Vec<SocketAddr>> {
    postcard::from_bytes(data).ok()
}

/// Accepts connections: servers (overlay ALPN) must pass cluster
/// admission — a refused one is closed before anything it sends is read;
/// clients (client ALPN) go to the registry.
async fn accept_loop(
    mut limiter: HandshakeLimiter,
    endpoint: quinn::Endpoint,
    net: mpsc::Sender<NetEvent>,
    admission: SharedAdmission,
    clients: mpsc::Sender<ClientConn>,
) {
    let start = Instant::now();
    while let Some(incoming) = endpoint.accept().await {
        let now = Time::from_micros(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX));
        match limiter.admit(&incoming.remote_address(), now) {
            Admit::Accept => {}
            Admit::Ignore => {
                metrics::counter!("chatd_handshakes_ignored_total").increment(1);
                incoming.ignore();
                continue;
            }
            Admit::Refuse => {
                metrics::counter!("chatd_handshakes_refused_total").increment(1);
                incoming.refuse();
                continue;
            }
        }
        let net = net.clone();
        let admission = admission.clone();
        let clients = clients.clone();
        tokio::spawn(async move {
            match incoming.await {
                Ok(conn) => {
                    let Some(peer) = tls::peer_of(&conn) else {
                        conn.close(1u32.into(), b"no identity");
                        return;
                    };
                    match tls::alpn_of(&conn).as_deref() {
                        Some(OVERLAY_ALPN) => {
                            let admitted =
                                admission.read().map(|a| a.admits(&peer)).unwrap_or(false);
                            if !admitted {
                                metrics::counter!("chatd_cluster_admission_refused_total")
                                    .increment(1);
                                tracing::warn!(peer = %Id(peer), remote = %conn.remote_address(),
                                    "refused a server that is not in the cluster allowlist");
                                conn.close(
                                    tls::CLOSE_NOT_ADMITTED.into(),
                                    b"not a member of this cluster",
                                );
                                return;
                            }
                            raise_to_server_limits(&conn);
                            let _ = net
                                .send(NetEvent::Up {
                                    peer,
                                    conn,
                                    dialed: false,
                                })
                                .await;
                        }
                        Some(CLIENT_ALPN) => {
                            if clients.try_send((peer, conn.clone())).is_err() {
                                metrics::counter!("chatd_clients_refused_total").increment(1);
                                conn.close(5u32.into(), b"server busy");
                            }
                        }
                        _ => conn.close(6u32.into(), b"unsupported protocol"),
                    }
                }
                Err(e) => {
                    metrics::counter!("chatd_overlay_handshake_failures_total").increment(1);
                    tracing::debug!(error = %e, "incoming handshake failed");
                }
            }
        });
    }
}

struct Link {
    conn: quinn::Connection,
    conn_id: usize,
    dialed: bool,
    established: Instant,
    tx: mpsc::Sender<Bytes>,
    writer: tokio::task::JoinHandle<()>,
    last_used: Instant,
}

struct Core {
    me: PeerId,
    state: State<PeerId, StdRng>,
    start: Instant,
    timers: BinaryHeap<Reverse<(Time, Timer)>>,
    links: HashMap<PeerId, Link>,
    dialing: HashMap<PeerId, Vec<Bytes>>,
    /// Who waits for a dial to finish (see [`Command::Connect`]).
    connect_waiters: HashMap<PeerId, Vec<oneshot::Sender<Option<quinn::Connection>>>>,
    addrs: HashMap<PeerId, SocketAddr>,
    next_conn_id: usize,
    endpoint: quinn::Endpoint,
    creds: Arc<Credentials>,
    transport: Arc<quinn::TransportConfig>,
    net_tx: mpsc::Sender<NetEvent>,
    events: broadcast::Sender<NodeEvent>,
    queue_frames: usize,
    dropped: u64,
    /// Inputs produced while processing outputs, fed in afterwards.
    deferred: Vec<Input<PeerId>>,
    /// Writers of links being closed: they flush, then close.
    closing: Vec<tokio::task::JoinHandle<()>>,
    /// Fault injection: servers we pretend not to reach.
    blocked: std::collections::BTreeSet<PeerId>,
    app_streams: mpsc::Sender<AppStream>,
    admission: SharedAdmission,
    /// Servers to join through (for the isolation warning).
    bootstrap: Vec<ServerAddr>,
    /// The last failed dial (or connection that failed right after), to say
    /// why the node is not joined.
    last_failure: Option<DialError>,
    /// Since when the node has had no neighbor (`None`: joined).
    isolated_since: Option<Instant>,
    /// When the isolation warning was last logged.
    last_isolation_warning: Instant,
    isolation_warning: Duration,
}

/// How long a connection to a peer that is not a neighbor stays open idle.
const IDLE_LINK: Duration = Duration::from_secs(10);

impl Core {
    fn now(&self) -> Time {
        Time::from_micros(self.start.elapsed().as_micros() as u64)
    }

    fn instant(&self, t: Time) -> Instant {
        self.start + Duration::from_micros(t.as_micros())
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut net: mpsc::Receiver<NetEvent>,
        contacts: Vec<PeerInfo<PeerId>>,
    ) {
        self.input(Input::Join(contacts));
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        loop {
            let next = self
                .timers
                .peek()
                .map(|Reverse((t, _))| self.instant(*t))
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Command::Broadcast(payload, reply)) => {
                        let now = self.now();
                        let res = self.state.broadcast(now, payload);
                        self.process();
                        let _ = reply.send(res);
                    }
                    Some(Command::Snapshot(reply)) => {
                        let _ = reply.send(self.snapshot());
                    }
                    Some(Command::Connection(peer, reply)) => {
                        let _ = reply.send(self.links.get(&peer).map(|l| l.conn.clone()));
                    }
                    Some(Command::Connect(peer, addr, reply)) => self.connect(peer, addr, reply),
                    Some(Command::Readmit) => {
                        let refused: Vec<PeerId> = self
                            .links
                            .keys()
                            .filter(|p| !self.admitted(p))
                            .copied()
                            .collect();
                        for p in refused {
                            if let Some(link) = self.links.remove(&p) {
                                tracing::warn!(peer = %Id(p), "no longer in the allowlist: disconnecting");
                                link.conn.close(
                                    tls::CLOSE_NOT_ADMITTED.into(),
                                    b"not a member of this cluster",
                                );
                                self.input(Input::PeerDown(p));
                            }
                        }
                    }
                    Some(Command::Block(peers)) => {
                        let newly: Vec<PeerId> = peers.difference(&self.blocked).copied().collect();
                        self.blocked = peers;
                        for p in newly {
                            if let Some(link) = self.links.remove(&p) {
                                link.conn.close(7u32.into(), b"partitioned (fault injection)");
                                self.input(Input::PeerDown(p));
                            }
                        }
                    }
                    Some(Command::Leave(reply)) => {
                        self.input(Input::Leave);
                        // Every writer flushes (the goodbyes included), then
                        // closes its connection; wait for all of them.
                        let peers: Vec<PeerId> = self.links.keys().copied().collect();
                        for p in peers {
                            self.close_link(p);
                        }
                        for w in std::mem::take(&mut self.closing) {
                            let _ = w.await;
                        }
                        let _ = reply.send(());
                    }
                    None => return,
                },
                ev = net.recv() => match ev {
                    Some(ev) => self.net_event(ev),
                    None => return,
                },
                _ = tokio::time::sleep_until(next) => {
                    let now = self.now();
                    while let Some(Reverse((t, timer))) = self.timers.peek().copied() {
                        if t > now {
                            break;
                        }
                        self.timers.pop();
                        self.input(Input::Timer(timer));
                    }
                }
                _ = sweep.tick() => {
                    self.sweep_idle_links();
                    self.export_metrics();
                    self.warn_if_isolated();
                }
            }
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            id: self.me,
            active: self.state.active_view().collect(),
            passive: self.state.passive_len(),
            links: self.links.len(),
            stats: self.state.stats().clone(),
            dropped_frames: self.dropped,
            rtts: self.links.iter().map(|(p, l)| (*p, l.conn.rtt())).collect(),
        }
    }

    fn input(&mut self, input: Input<PeerId>) {
        let now = self.now();
        self.state.handle(now, input);
        self.process();
    }

    /// Carries out every output, then any inputs that produced.
    fn process(&mut self) {
        loop {
            let outputs: Vec<Output<PeerId>> = self.state.drain_outputs().collect();
            for out in outputs {
                self.output(out);
            }
            if self.deferred.is_empty() {
                return;
            }
            let now = self.now();
            for input in std::mem::take(&mut self.deferred) {
                self.state.handle(now, input);
            }
        }
    }

    fn output(&mut self, out: Output<PeerId>) {
        match out {
            Output::Send { to, message } => {
                let kind = message.message_type().name();
                match message.to_frame(&self.state.config().limits) {
                    Ok(frame) => self.send(to, Bytes::from(frame)),
                    Err(e) => {
                        metrics::counter!("chatd_overlay_encode_errors_total", "type" => kind)
                            .increment(1);
                        tracing::warn!(error = %e, kind, "could not encode an overlay message");
                    }
                }
            }
            Output::Disconnect { peer } => self.close_link(peer),
            Output::SetTimer { at, timer } => self.timers.push(Reverse((at, timer))),
            Output::Event(event) => self.event(event),
        }
    }

    fn event(&mut self, event: Event<PeerId>) {
        match event {
            Event::NeighborUp(p) => {
                tracing::info!(peer = %Id(p), "neighbor up");
                if let Some(since) = self.isolated_since.take()
                    && !self.bootstrap.is_empty()
                {
                    tracing::info!(
                        neighbor = %Id(p),
                        "joined the overlay (after {:.1} s without a neighbor)",
                        since.elapsed().as_secs_f64()
                    );
                }
                self.last_failure = None;
                let _ = self.events.send(NodeEvent::NeighborUp(p));
            }
            Event::NeighborDown(p) => {
                tracing::info!(peer = %Id(p), "neighbor down");
                let _ = self.events.send(NodeEvent::NeighborDown(p));
            }
            Event::Received(d) => {
                metrics::counter!("chatd_broadcast_payloads_received_total").increment(1);
                let _ = self.events.send(NodeEvent::Delivery(d));
            }
            Event::PeerData { peer, data } => {
                if let Some(addr) = decode_addrs(&data).and_then(|a| a.first().copied()) {
                    self.addrs.insert(peer, addr);
                }
            }
            Event::InvalidFrame { from, error } => {
                metrics::counter!("chatd_overlay_decode_errors_total", "kind" => error.kind())
                    .increment(1);
                tracing::warn!(peer = %Id(from), %error, "malformed frame; closing the connection");
                if let Some(link) = self.links.remove(&from) {
                    link.conn.close(2u32.into(), error.to_string().as_bytes());
                }
            }
        }
    }

    /// Stops using the link to `peer`: its writer flushes what is queued,
    /// waits (bounded) for the peer to read it, then closes the connection.
    fn close_link(&mut self, peer: PeerId) {
        if let Some(link) = self.links.remove(&peer) {
            drop(link.tx);
            self.closing.retain(|w| !w.is_finished());
            // A writer stuck on a peer that stopped reading must not keep the
            // connection alive: close it after the grace in any case.
            let conn = link.conn;
            tokio::spawn(async move {
                tokio::time::sleep(FLUSH_GRACE + Duration::from_secs(1)).await;
                conn.close(0u32.into(), b"closed");
            });
            self.closing.push(link.writer);
        }
    }

    fn send(&mut self, to: PeerId, frame: Bytes) {
        if self.blocked.contains(&to) {
            self.deferred.push(Input::PeerDown(to));
            return;
        }
        if let Some(link) = self.links.get_mut(&to) {
            link.last_used = Instant::now();
            match link.tx.try_send(frame) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.dropped += 1;
                    metrics::counter!("chatd_overlay_send_dropped_total").increment(1);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.links.remove(&to);
                    self.deferred.push(Input::PeerDown(to));
                }
            }
            return;
        }
        if let Some(queue) = self.dialing.get_mut(&to) {
            if queue.len() < self.queue_frames {
                queue.push(frame);
            } else {
                self.dropped += 1;
                metrics::counter!("chatd_overlay_send_dropped_total").increment(1);
            }
            return;
        }
        let Some(addr) = self.addrs.get(&to).copied() else {
            tracing::debug!(peer = %Id(to), "no address for peer");
            self.deferred.push(Input::PeerDown(to));
            return;
        };
        if !self.admitted(&to) {
            // An address learned from the overlay is dialed only for a member.
            metrics::counter!("chatd_cluster_admission_refused_total").increment(1);
            self.deferred.push(Input::PeerDown(to));
            return;
        }
        self.dialing.insert(to, vec![frame]);
        self.dial(to, addr);
    }

    /// Gives `reply` a connection to `peer`: the link we have, or one
    /// dialed now (at `addr`, or the address the overlay told us).
    fn connect(
        &mut self,
        peer: PeerId,
        addr: Option<SocketAddr>,
        reply: oneshot::Sender<Option<quinn::Connection>>,
    ) {
        if let Some(link) = self.links.get(&peer) {
            let _ = reply.send(Some(link.conn.clone()));
            return;
        }
        if peer == self.me || !self.admitted(&peer) || self.blocked.contains(&peer) {
            let _ = reply.send(None);
            return;
        }
        self.connect_waiters.entry(peer).or_default().push(reply);
        if self.dialing.contains_key(&peer) {
            return;
        }
        let Some(addr) = self.addrs.get(&peer).copied().or(addr) else {
            for w in self.connect_waiters.remove(&peer).unwrap_or_default() {
                let _ = w.send(None);
            }
            return;
        };
        self.addrs.entry(peer).or_insert(addr);
        self.dialing.insert(peer, Vec::new());
        self.dial(peer, addr);
    }

    fn dial(&mut self, to: PeerId, addr: SocketAddr) {
        let endpoint = self.endpoint.clone();
        let creds = self.creds.clone();
        let transport = self.transport.clone();
        let net = self.net_tx.clone();
        tokio::spawn(async move {
            let event = match dial(&endpoint, &creds, transport, to, addr).await {
                Ok(conn) => NetEvent::Up {
                    peer: to,
                    conn,
                    dialed: true,
                },
                Err(error) => {
                    tracing::debug!(peer = %Id(to), %error, "dial failed");
                    NetEvent::DialFailed { peer: to, error }
                }
            };
            let _ = net.send(event).await;
        });
    }

    fn net_event(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Up { peer, conn, dialed } => self.link_up(peer, conn, dialed),
            NetEvent::DialFailed { peer, error } => {
                self.last_failure = Some(error);
                for w in self.connect_waiters.remove(&peer).unwrap_or_default() {
                    let _ = w.send(None);
                }
                if self.dialing.remove(&peer).is_some() {
                    let _ = self.events.send(NodeEvent::PeerFailed(peer));
                    self.input(Input::PeerDown(peer));
                }
            }
            NetEvent::Frame { peer, .. } if self.blocked.contains(&peer) => {}
            NetEvent::Frame {
                peer,
                conn_id,
                frame,
            } => {
                if let Some(link) = self.links.get_mut(&peer)
                    && link.conn_id == conn_id
                {
                    link.last_used = Instant::now();
                }
                self.input(Input::Frame { from: peer, frame });
            }
            NetEvent::Closed {
                peer,
                conn_id,
                graceful,
                failure,
            } => {
                if let Some(f) = failure
                    && self.state.active_len() == 0
                {
                    self.last_failure = Some(f);
                }
                // Only the current link's end is news: links we close
                // ourselves are removed first. A graceful close (the peer's
                // idle sweep, a DISCONNECT, a duplicate) is not a failure: no
                // suspicion, and no penalty for a peer that is not a neighbor.
                if self.links.get(&peer).is_some_and(|l| l.conn_id == conn_id) {
                    self.links.remove(&peer);
                    if !graceful {
                        let _ = self.events.send(NodeEvent::PeerFailed(peer));
                    }
                    if !graceful || self.state.is_neighbor(&peer) {
                        self.input(Input::PeerDown(peer));
                    }
                }
            }
        }
    }

    fn link_up(&mut self, peer: PeerId, conn: quinn::Connection, dialed: bool) {
        if peer == self.me {
            conn.close(3u32.into(), b"connected to self");
            return;
        }
        if !self.admitted(&peer) {
            // Dialed links too: a peer relayed by a member, or one removed
            // from the allowlist, gets nothing processed.
            metrics::counter!("chatd_cluster_admission_refused_total").increment(1);
            conn.close(
                tls::CLOSE_NOT_ADMITTED.into(),
                b"not a member of this cluster",
            );
            if self.dialing.remove(&peer).is_some() {
                self.input(Input::PeerDown(peer));
            }
            self.connect_waiters.remove(&peer);
            return;
        }
        if self.blocked.contains(&peer) {
            conn.close(7u32.into(), b"partitioned (fault injection)");
            if self.dialing.remove(&peer).is_some() {
                self.input(Input::PeerDown(peer));
            }
            self.connect_waiters.remove(&peer);
            return;
        }
        if let Some(existing) = self.links.get(&peer) {
            // Both sides dialed at once: keep the connection dialed by the
            // lower id, on both sides alike.
            // A link older than that is not a simultaneous dial: the peer
            // reconnected (e.g. it restarted) and the new link wins.
            let keep_new = dialed == (self.me < peer)
                || existing.established.elapsed() > Duration::from_secs(2);
            if !keep_new && existing.dialed != dialed {
                conn.close(0u32.into(), b"duplicate connection");
                // What waited for our dial goes on the link we keep.
                let kept = existing.conn.clone();
                let tx = existing.tx.clone();
                for frame in self.dialing.remove(&peer).unwrap_or_default() {
                    if tx.try_send(frame).is_err() {
                        self.dropped += 1;
                    }
                }
                for w in self.connect_waiters.remove(&peer).unwrap_or_default() {
                    let _ = w.send(Some(kept.clone()));
                }
                return;
            }
            self.close_link(peer);
        }
        self.next_conn_id += 1;
        let conn_id = self.next_conn_id;
        let (tx, rx) = mpsc::channel(self.queue_frames);
        let writer = tokio::spawn(writer(conn.clone(), rx));
        let max_frame = self.state.config().limits.max_frame_size;
        tokio::spawn(reader(
            conn.clone(),
            peer,
            conn_id,
            max_frame,
            self.net_tx.clone(),
        ));
        let app = self.app_streams.clone();
        let c = conn.clone();
        tokio::spawn(async move {
            while let Ok((send, recv)) = c.accept_bi().await {
                if app.send((peer, send, recv)).await.is_err() {
                    return;
                }
            }
        });
        let queued = self.dialing.remove(&peer).unwrap_or_default();
        for w in self.connect_waiters.remove(&peer).unwrap_or_default() {
            let _ = w.send(Some(conn.clone()));
        }
        for frame in queued {
            if tx.try_send(frame).is_err() {
                self.dropped += 1;
            }
        }
        self.links.insert(
            peer,
            Link {
                conn,
                conn_id,
                dialed,
                established: Instant::now(),
                tx,
                writer,
                last_used: Instant::now(),
            },
        );
    }

    fn admitted(&self, peer: &PeerId) -> bool {
        self.admission
            .read()
            .map(|a| a.admits(peer))
            .unwrap_or(false)
    }

    /// Closes connections to peers that are not neighbors and were idle,
    /// and forgets addresses of peers the core no longer knows.
    fn sweep_idle_links(&mut self) {
        let state = &self.state;
        let links = &self.links;
        let dialing = &self.dialing;
        self.addrs.retain(|p, _| {
            state.peer_data(p).is_some() || links.contains_key(p) || dialing.contains_key(p)
        });
        let idle: Vec<PeerId> = self
            .links
            .iter()
            .filter(|(p, l)| !self.state.is_neighbor(p) && l.last_used.elapsed() > IDLE_LINK)
            .map(|(p, _)| *p)
            .collect();
        for p in idle {
            self.close_link(p);
        }
    }

    /// While the node has bootstrap servers but no neighbor: one warning
    /// per `isolation_warning`, with the reason of the last failed dial.
    fn warn_if_isolated(&mut self) {
        if self.state.active_len() > 0 {
            return;
        }
        let now = Instant::now();
        let Some(since) = self.isolated_since else {
            // Lost every neighbor: warn after a full interval from now on.
            self.isolated_since = Some(now);
            self.last_isolation_warning = now;
            return;
        };
        // Checked on the 1 s sweep tick: a little early is on time.
        let due = now.duration_since(self.last_isolation_warning) + Duration::from_millis(500);
        if self.bootstrap.is_empty() || due < self.isolation_warning {
            return;
        }
        self.last_isolation_warning = now;
        let alone = now.duration_since(since).as_secs();
        match &self.last_failure {
            Some(e) => {
                let hint = if e.failure == DialFailure::NotAdmitted {
                    format!(" {} (add it to that server's --allow)", Id(self.me))
                } else {
                    String::new()
                };
                tracing::warn!(
                    "not joined to the overlay: no neighbor for {alone} s; last failed dial: {e}{hint}; retrying"
                );
            }
            None => {
                let list: Vec<String> = self.bootstrap.iter().map(|b| b.to_string()).collect();
                tracing::warn!(
                    "not joined to the overlay: no neighbor for {alone} s; still waiting for an answer from {}",
                    list.join(", ")
                );
            }
        }
    }

    fn export_metrics(&self) {
        metrics::gauge!("chatd_overlay_active_peers").set(self.state.active_len() as f64);
        metrics::gauge!("chatd_overlay_passive_peers").set(self.state.passive_len() as f64);
        metrics::gauge!("chatd_overlay_links").set(self.links.len() as f64);
        let stats = self.state.stats();
        for (name, value) in stats.counters() {
            // Decode errors are counted by kind where they happen.
            if name != "decode_errors" {
                metrics::counter!(format!("chatd_overlay_{name}_total")).absolute(value);
            }
        }
        for t in overlay::MessageType::ALL {
            metrics::counter!("chatd_overlay_messages_sent_total", "type" => t.name())
                .absolute(stats.sent(t));
            metrics::counter!("chatd_overlay_messages_received_total", "type" => t.name())
                .absolute(stats.received(t));
        }
    }
}

async fn dial(
    endpoint: &quinn::Endpoint,
    creds: &Credentials,
    transport: Arc<quinn::TransportConfig>,
    peer: PeerId,
    addr: SocketAddr,
) -> Result<quinn::Connection, DialError> {
    let other = |e: &dyn std::fmt::Display| DialError {
        addr,
        failure: DialFailure::Other(e.to_string()),
    };
    let (tls, pin) = tls::pinned_client_config(creds, peer, OVERLAY_ALPN).map_err(|e| other(&e))?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| other(&e))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(transport);
    endpoint
        .connect_with(cfg, addr, tls::SERVER_NAME)
        .map_err(|e| DialError::not_started(addr, &e))?
        .await
        .map_err(|e| DialError::new(addr, &e, &pin))
}

/// How long a closing link waits for the peer to read what was sent.
const FLUSH_GRACE: Duration = Duration::from_secs(2);

/// Writes queued frames on one unidirectional stream. When the queue is
/// closed (the peer is no longer wanted, or we leave), finishes the stream,
/// waits until the peer has read it (at most `FLUSH_GRACE`), and closes the
/// connection — so a DISCONNECT is never lost to our own close.
async fn writer(conn: quinn::Connection, mut rx: mpsc::Receiver<Bytes>) {
    let Ok(mut stream) = conn.open_uni().await else {
        return;
    };
    while let Some(frame) = rx.recv().await {
        if stream.write_all(&frame).await.is_err() {
            return;
        }
    }
    if stream.finish().is_ok() {
        let _ = tokio::time::timeout(FLUSH_GRACE, stream.stopped()).await;
    }
    conn.close(0u32.into(), b"closed");
}

/// Reads frames from the peer's streams; reports the connection's end.
async fn reader(
    conn: quinn::Connection,
    peer: PeerId,
    conn_id: usize,
    max_frame: usize,
    net: mpsc::Sender<NetEvent>,
) {
    while let Ok(mut stream) = conn.accept_uni().await {
        loop {
            let mut prefix = [0u8; overlay::wire::FRAME_PREFIX_LEN];
            if stream.read_exact(&mut prefix).await.is_err() {
                break;
            }
            let len = match overlay::wire::frame_len(prefix, max_frame) {
                Ok(len) => len,
                Err(e) => {
                    metrics::counter!("chatd_overlay_decode_errors_total", "kind" => e.kind())
                        .increment(1);
                    tracing::warn!(peer = %Id(peer), error = %e, "bad frame length; closing");
                    conn.close(2u32.into(), e.to_string().as_bytes());
                    break;
                }
            };
            let mut body = vec![0u8; len];
            if stream.read_exact(&mut body).await.is_err() {
                break;
            }
            let frame = Bytes::from(body);
            if net
                .send(NetEvent::Frame {
                    peer,
                    conn_id,
                    frame,
                })
                .await
                .is_err()
            {
                return;
            }
        }
    }
    let reason = conn.close_reason();
    let graceful = matches!(reason, Some(quinn::ConnectionError::LocallyClosed))
        || matches!(
            reason,
            Some(quinn::ConnectionError::ApplicationClosed(ref c)) if c.error_code == 0u32.into()
        );
    let failure = match &reason {
        Some(e) if !graceful => Some(DialError::new(
            conn.remote_address(),
            e,
            &tls::PinCheck::default(),
        )),
        _ => None,
    };
    let _ = net
        .send(NetEvent::Closed {
            peer,
            conn_id,
            graceful,
            failure,
        })
        .await;
}
