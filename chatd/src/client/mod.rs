//! The client: this module is the client side of `chatd-client/2` —
//! connect to a server (its key pinned), ask who we are, register a signed
//! record, look peers up, list servers, meet a friend, ask for a relay.
//! Around it:
//! - [`run`]: `chatd chat` (rendezvous, NAT kind, relay, re-homing when a
//!   server dies, the conversation);
//! - [`punch`]: the direct path (probes, the birthday method);
//! - [`relay`]: the virtual UDP socket over a relay stream;
//! - [`chat`]: chat semantics between two peers as a pure state machine;
//! - [`friends`]: known friends' keys (trust on first use), the data dir.
//!
//! Owns client connections only; never acts as a server.

pub mod chat;
pub mod early;
pub mod friends;
pub mod letter;
pub mod mail;
pub mod punch;
pub mod relay;
pub mod room;
pub mod run;

use crate::net::driver::CLIENT_ALPN;
use crate::net::framing::{read_msg, write_msg};
use crate::net::identity::{Keypair, ServerAddr};
use crate::net::tls::{self, Credentials};
use anyhow::Context;
use overlay::PeerId;
use rendezvous::ServerRecord;
use rendezvous::{FriendRef, Notice, Request, Response};
use rendezvous::{PeerRecord, RecordBody};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A client identity and its one UDP socket (QUIC endpoint).
pub struct Client {
    keypair: Keypair,
    creds: Credentials,
    endpoint: quinn::Endpoint,
    /// A clone of the endpoint's UDP socket, for hole-punching probes
    /// (quinn has no raw send); `None` for dial-only clients.
    probe: Option<std::net::UdpSocket>,
    /// Who waits for an incoming chat connection from which friend.
    accepts: Arc<std::sync::Mutex<Accepts>>,
}

/// The friends a client waits for a direct connection from (one waiter
/// each: a room waits for several at once), and whether the accept loop
/// runs.
#[derive(Default)]
struct Accepts {
    waiters: Vec<(PeerId, tokio::sync::mpsc::Sender<quinn::Connection>)>,
    running: bool,
    /// Told whenever a waiter is added (a parked connection may be its).
    added: Arc<tokio::sync::Notify>,
}

/// Incoming handshakes in flight at once (a stranger's too: who it is is
/// known only after it); beyond this, new ones are refused.
const MAX_ACCEPTING: usize = 16;
/// How long an incoming handshake may take.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a chat connection from a peer nobody waits for yet is kept
/// (within the [`MAX_ACCEPTING`] in flight): the friend may have met us a
/// moment sooner than we met it and dialled before we wait for it; refused,
/// it would take that connection for the chat while we never see it.
const PARK_WAIT: Duration = Duration::from_secs(5);

/// Stops passing on connections from a friend when dropped.
pub(crate) struct AcceptGuard {
    accepts: Arc<std::sync::Mutex<Accepts>>,
    fid: PeerId,
    tx: tokio::sync::mpsc::Sender<quinn::Connection>,
}

impl Drop for AcceptGuard {
    fn drop(&mut self) {
        crate::net::lock(&self.accepts)
            .waiters
            .retain(|(f, t)| !(*f == self.fid && t.same_channel(&self.tx)));
    }
}

/// A hole-punching probe: a datagram QUIC discards (the fixed bit of the
/// first byte is clear), sent only so that our NAT opens a mapping and a
/// filter entry towards the friend.
pub const PUNCH_PROBE: &[u8] = b"\0chatd-punch";

/// ALPN of peer-to-peer chat connections.
pub const CHAT_ALPN: &[u8] = b"chatd-chat/1";

/// A request the server refused (it answered `Response::Error`), as
/// opposed to a server that did not answer: callers tell the two apart
/// with `anyhow::Error::downcast_ref::<Refused>()`.
#[derive(Debug, thiserror::Error)]
#[error("{server}: {refusal}")]
pub struct Refused {
    /// The server that refused.
    pub server: ServerAddr,
    /// What it said: a code to act on, words to show.
    pub refusal: rendezvous::Refusal,
}

impl Refused {
    /// The refusal's code.
    pub fn code(&self) -> rendezvous::ErrorCode {
        self.refusal.code
    }

    /// When the server said a retry makes sense, after how long.
    pub fn retry_after(&self) -> Option<Duration> {
        (self.refusal.retry_after_ms > 0)
            .then(|| Duration::from_millis(u64::from(self.refusal.retry_after_ms)))
    }
}

pub use crate::net::unix_millis;

/// The first 8 characters of an id, for people (a name's stand-in).
pub(crate) fn short_id(id: &PeerId) -> String {
    let mut s = crate::net::identity::Id(*id).to_string();
    s.truncate(8);
    s
}

/// One status line for the user (stderr).
#[allow(clippy::print_stderr)] // the chat client talks to its user here
pub(crate) fn status(line: &str) {
    eprintln!("chatd: {line}");
}

/// Where to dial a server: its first address, its key pinned.
pub fn dial_addr(s: &ServerRecord) -> Option<ServerAddr> {
    Some(ServerAddr {
        id: crate::net::identity::Id(s.id),
        addr: *s.addrs.first()?,
    })
}

/// A connection to one server (cheap to clone: one connection).
#[derive(Clone)]
pub struct Session {
    conn: quinn::Connection,
    server: ServerAddr,
    /// Our key: a live record is registered with its withdrawal, signed here.
    keypair: Keypair,
}

/// A relay stream as the chat uses it ([`Client::relay_endpoint`]).
pub struct RelayLink {
    /// The QUIC endpoint over it.
    pub endpoint: quinn::Endpoint,
    /// Fires when the stream ends either way.
    pub closed: tokio::sync::oneshot::Receiver<()>,
    /// The server's answer to the request.
    pub answer: crate::client::relay::Answer,
    /// Early frames from the friend ([`crate::client::early`]), as received.
    pub early: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    socket: Arc<crate::client::relay::RelaySocket>,
}

impl RelayLink {
    /// Sends an early frame to the friend; `false` if it could not be
    /// queued.
    pub fn send_early(&self, frame: bytes::Bytes) -> bool {
        self.socket.send_early(frame)
    }
}

/// The answer to [`Session::meet`].
#[derive(Debug)]
pub enum Meeting {
    /// The friend is online: its record, and how long until the common
    /// start instant.
    Found(PeerRecord, Duration),
    /// Not online yet; a [`Notice::Friend`] follows when it comes.
    Waiting,
    /// Several online peers use that name: nobody was told; pick one by id.
    Ambiguous(Vec<PeerRecord>),
}

/// The unspecified address (port 0) of `addr`'s family: where a client
/// binds to talk to a server at `addr`.
pub fn any_addr_for(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

/// Accepts chat connections on `endpoint` and hands each to the waiter
/// for its peer ([`Client::accept_from`]); refuses while nobody waits and
/// beyond [`MAX_ACCEPTING`] handshakes at once.
async fn accept_loop(endpoint: quinn::Endpoint, accepts: Arc<std::sync::Mutex<Accepts>>) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_ACCEPTING));
    while let Some(incoming) = endpoint.accept().await {
        if crate::net::lock(&accepts).waiters.is_empty() {
            incoming.refuse();
            continue;
        }
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            incoming.refuse();
            continue;
        };
        let accepts = accepts.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let Ok(Ok(conn)) = tokio::time::timeout(ACCEPT_TIMEOUT, incoming).await else {
                return;
            };
            let Some(peer) = chat_peer(&conn) else {
                conn.close(1u32.into(), b"not expected");
                return;
            };
            let until = tokio::time::Instant::now() + PARK_WAIT;
            let added = crate::net::lock(&accepts).added.clone();
            loop {
                // Armed before looking, so a waiter added in between wakes us.
                let notified = added.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let waiter = crate::net::lock(&accepts)
                    .waiters
                    .iter()
                    .find(|(f, _)| *f == peer)
                    .map(|(_, tx)| tx.clone());
                if conn.close_reason().is_some() {
                    return;
                }
                if let Some(tx) = waiter {
                    if let Err(e) = tx.send(conn).await {
                        e.0.close(1u32.into(), b"not expected");
                    }
                    return;
                }
                if tokio::time::timeout_at(until, notified).await.is_err() {
                    conn.close(1u32.into(), b"not expected");
                    return;
                }
            }
        });
    }
}

/// The peer of a chat connection (the chat ALPN, its key proven); `None`
/// for anything else.
pub(crate) fn chat_peer(conn: &quinn::Connection) -> Option<PeerId> {
    (tls::alpn_of(conn).as_deref() == Some(CHAT_ALPN))
        .then(|| tls::peer_of(conn))
        .flatten()
}

/// Stdin, line by line.
pub(crate) fn stdin_lines() -> tokio::sync::mpsc::Receiver<String> {
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(64);
    tokio::spawn(async move {
        let mut stdin =
            tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
        while let Ok(Some(line)) = stdin.next_line().await {
            if tx.send(line).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// Ctrl-C and SIGTERM, one `()` each (while the receiver lives).
pub(crate) fn interrupts() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
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
            let _ = tx.try_send(());
        }
    });
    rx
}

impl Client {
    /// A client with `keypair`, bound to `bind` (use port 0 for any).
    pub fn new(keypair: Keypair, bind: SocketAddr) -> anyhow::Result<Client> {
        let creds = Credentials::new(&keypair)?;
        let endpoint = quinn::Endpoint::client(bind)?;
        Ok(Client {
            keypair,
            creds,
            endpoint,
            probe: None,
            accepts: Arc::default(),
        })
    }

    /// A client whose one UDP socket also accepts connections from a friend
    /// (ALPN `chatd-chat/1`): the same socket registers with the server,
    /// punches and chats, so NATs keep one mapping.
    pub fn new_accepting(keypair: Keypair, bind: SocketAddr) -> anyhow::Result<Client> {
        let creds = Credentials::new(&keypair)?;
        let server = chat_server_config(&creds)?;
        let socket =
            std::net::UdpSocket::bind(bind).with_context(|| format!("cannot bind UDP {bind}"))?;
        let probe = socket.try_clone()?;
        let runtime = quinn::default_runtime().context("no async runtime")?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            runtime,
        )?;
        Ok(Client {
            keypair,
            creds,
            endpoint,
            probe: Some(probe),
            accepts: Arc::default(),
        })
    }

    /// Passes the chat connections `fid` opens to us (its key, the chat
    /// ALPN) to `tx` until the guard is dropped. One accept loop serves
    /// every waiter (started on first use): connections from nobody
    /// waited for are closed, and none are taken while nobody waits.
    pub(crate) fn accept_from(
        &self,
        fid: PeerId,
        tx: tokio::sync::mpsc::Sender<quinn::Connection>,
    ) -> AcceptGuard {
        let mut a = crate::net::lock(&self.accepts);
        a.waiters.retain(|(f, _)| *f != fid);
        a.waiters.push((fid, tx.clone()));
        a.added.notify_waiters();
        if !a.running {
            a.running = true;
            tokio::spawn(accept_loop(self.endpoint.clone(), self.accepts.clone()));
        }
        AcceptGuard {
            accepts: self.accepts.clone(),
            fid,
            tx,
        }
    }

    /// A QUIC endpoint of its own over a relay stream through `session`'s
    /// server to `friend` (the request is sent, its answer not waited for:
    /// see [`crate::client::relay`]), accepting the friend's chat
    /// connection too, with a keep-alive every `keep_alive` (its packets
    /// go through `session`'s connection, so they keep that busy too).
    pub async fn relay_endpoint(
        &self,
        session: &Session,
        friend: PeerId,
        keep_alive: Duration,
    ) -> anyhow::Result<RelayLink> {
        let (send, recv) = session.relay_stream(friend).await?;
        let local = self.endpoint.local_addr()?;
        let (socket, closed, answer, early) =
            crate::client::relay::RelaySocket::new(send, recv, local, session.server());
        let runtime = quinn::default_runtime().context("no async runtime")?;
        let mut transport = client_transport()?;
        transport.keep_alive_interval(Some(keep_alive));
        transport.initial_rtt(crate::net::driver::ACCEPT_INITIAL_RTT);
        let mut server = chat_server_config(&self.creds)?;
        server.transport_config(Arc::new(transport));
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            Some(server),
            socket.clone(),
            runtime,
        )?;
        Ok(RelayLink {
            endpoint,
            closed,
            answer,
            early,
            socket,
        })
    }

    /// A dial-only QUIC endpoint on another UDP socket of ours (the socket
    /// that won the birthday race).
    pub fn endpoint_on(socket: std::net::UdpSocket) -> anyhow::Result<quinn::Endpoint> {
        let runtime = quinn::default_runtime().context("no async runtime")?;
        Ok(quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            runtime,
        )?)
    }

    /// The client's signing key (records are signed with it).
    pub fn signing_key(&self) -> &ed25519_dalek::SigningKey {
        self.keypair.signing_key()
    }

    /// Another handle on the endpoint's UDP socket, for hole-punching
    /// probes (`None` for dial-only clients or if the clone fails).
    pub fn probe_socket(&self) -> Option<std::net::UdpSocket> {
        self.probe.as_ref().and_then(|s| s.try_clone().ok())
    }

    /// The QUIC endpoint (one UDP socket).
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// Dials a friend at `addr`, pinned to its id (ALPN `chatd-chat/1`).
    pub async fn dial_friend(
        &self,
        friend: PeerId,
        addr: SocketAddr,
    ) -> anyhow::Result<quinn::Connection> {
        let cfg = self.friend_config(friend)?;
        Ok(self
            .endpoint
            .connect_with(cfg, addr, tls::SERVER_NAME)?
            .await?)
    }

    /// The client configuration for dialing `friend` (pinned key, chat
    /// ALPN, a low initial RTT).
    pub fn friend_config(&self, friend: PeerId) -> anyhow::Result<quinn::ClientConfig> {
        self.friend_config_with(friend, client_transport()?)
    }

    /// The same over `transport` (e.g. a shorter keep-alive through a
    /// relay).
    pub fn friend_config_with(
        &self,
        friend: PeerId,
        mut transport: quinn::TransportConfig,
    ) -> anyhow::Result<quinn::ClientConfig> {
        // A lost first Initial must not cost a second (quinn's default
        // initial RTT is 333 ms): start from a LAN-ish estimate.
        transport.initial_rtt(Duration::from_millis(50));
        self.dial_config(friend, CHAT_ALPN, transport)
    }

    /// Dialing `peer` (its key pinned) with `alpn` over `transport`.
    fn dial_config(
        &self,
        peer: PeerId,
        alpn: &[u8],
        transport: quinn::TransportConfig,
    ) -> anyhow::Result<quinn::ClientConfig> {
        let tls = tls::client_config(&self.creds, peer, alpn)?;
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
        cfg.transport_config(Arc::new(transport));
        Ok(cfg)
    }

    /// Closes every connection (servers, relays, friends) so nothing waits
    /// for an idle timeout, and lets the closes go out (at most 1 s).
    pub async fn close_all(&self) {
        self.endpoint.close(0u32.into(), b"bye");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    /// This client's id.
    pub fn id(&self) -> PeerId {
        self.keypair.id().0
    }

    /// Connects to `server`, verifying that it holds the pinned key. Errors
    /// are a [`tls::DialError`] in plain words (wrong id, no answer, ...).
    pub async fn connect(&self, server: ServerAddr) -> anyhow::Result<Session> {
        self.connect_with_transport(server, client_transport()?)
            .await
    }

    /// [`Client::connect`] with a transport of the caller's (tests and the
    /// abuse benchmark use it to play misbehaving clients).
    pub async fn connect_with_transport(
        &self,
        server: ServerAddr,
        transport: quinn::TransportConfig,
    ) -> anyhow::Result<Session> {
        // Not `dial_config`: the pin check must be kept to say, after a
        // failed handshake, whether the server holds another key.
        let (tls, pin) = tls::pinned_client_config(&self.creds, server.id.0, CLIENT_ALPN)?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
        ));
        cfg.transport_config(Arc::new(transport));
        let connecting = self
            .endpoint
            .connect_with(cfg, server.addr, tls::SERVER_NAME)
            .map_err(|e| tls::DialError::not_started(server.addr, &e))?;
        let conn = tokio::time::timeout(Duration::from_secs(5), connecting)
            .await
            .map_err(|_| tls::DialError::unreachable(server.addr))?
            .map_err(|e| tls::DialError::new(server.addr, &e, &pin))?;
        Ok(Session {
            conn,
            server,
            keypair: self.keypair.clone(),
        })
    }

    /// Connects to the first server of `servers` that answers (a status line
    /// on stderr for each one that does not, before the next is tried).
    #[allow(clippy::print_stderr)] // a client status line, like chatclient's
    pub async fn connect_any(&self, servers: &[ServerAddr]) -> anyhow::Result<Session> {
        let mut last = anyhow::anyhow!("no server given");
        for (i, server) in servers.iter().enumerate() {
            match self.connect(*server).await {
                Ok(session) => return Ok(session),
                Err(e) if i + 1 < servers.len() => {
                    // The error names the server and says why (plain words).
                    eprintln!("chatd: {e:#}; trying the next server");
                    last = e;
                }
                Err(e) => last = e,
            }
        }
        if servers.len() > 1 {
            last = last.context(format!(
                "none of the {} servers given answered",
                servers.len()
            ));
        }
        Err(last)
    }

    /// Signs a record for this client homed on `session`'s server.
    pub fn record(
        &self,
        session: &Session,
        name: &str,
        public_addr: SocketAddr,
        seq: u64,
        ttl: Duration,
    ) -> PeerRecord {
        let expires_at = unix_millis() / 1000 + ttl.as_secs();
        PeerRecord::sign(
            self.keypair.signing_key(),
            RecordBody {
                peer: self.id(),
                name: name.to_string(),
                home_server: session.server.id.0,
                public_addr: Some(public_addr),
                private_addrs: rendezvous::record::usable_private_addrs(
                    &self.endpoint.local_addr().into_iter().collect::<Vec<_>>(),
                    Some(public_addr),
                ),
                seq,
                expires_at,
                nat: rendezvous::NatMapping::Unknown,
            },
        )
    }
}

/// Accepting a friend's chat connection: our certificate, the chat ALPN.
fn chat_server_config(creds: &Credentials) -> anyhow::Result<quinn::ServerConfig> {
    let tls = tls::server_config(creds, &[CHAT_ALPN])?;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = client_transport()?;
    // Our first flight, when lost, is resent after 3x this (see
    // `net::driver::ACCEPT_INITIAL_RTT`).
    transport.initial_rtt(crate::net::driver::ACCEPT_INITIAL_RTT);
    server.transport_config(Arc::new(transport));
    Ok(server)
}

/// How long a watched server connection may be silent before it is asked
/// whether the server is still there ([`Session::watch`]).
pub const SERVER_QUIET: Duration = Duration::from_millis(1_500);
/// How long that question may go unanswered before the server is taken
/// for dead.
pub const SERVER_PROBE: Duration = Duration::from_millis(1_500);
/// QUIC application code of a connection closed by [`Session::watch`].
pub const CLOSE_SERVER_SILENT: u32 = 6;

/// A client's QUIC transport: keep-alive every second, a path silent for
/// 10 s is dead (then the chat re-establishes it).
pub fn client_transport() -> anyhow::Result<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(1)));
    transport.max_idle_timeout(Some(quinn::IdleTimeout::try_from(Duration::from_secs(10))?));
    Ok(transport)
}

impl Session {
    /// The QUIC connection to the server.
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Closes the connection to the server.
    pub fn close(&self) {
        self.conn.close(0u32.into(), b"done");
    }

    /// The server this session talks to.
    pub fn server(&self) -> ServerAddr {
        self.server
    }

    /// Whether the connection to the server has ended.
    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    /// Resolves when the connection to the server ends (with why).
    pub async fn closed(&self) -> quinn::ConnectionError {
        self.conn.closed().await
    }

    /// Watches the server, sooner than the idle timeout (5 s after its
    /// last packet) would: the connection carries a keep-alive every
    /// second, which the server acknowledges; after [`SERVER_QUIET`] without
    /// a packet a request goes out (QUIC resends it at the RTT's pace), and
    /// with no answer within [`SERVER_PROBE`] the server is taken for dead:
    /// the connection is closed ([`CLOSE_SERVER_SILENT`]), so whoever waits
    /// on [`Session::closed`] moves on. Any answer, a refusal too, means
    /// alive. Abort the task to stop watching (it holds the connection).
    pub fn watch(&self) -> tokio::task::JoinHandle<()> {
        let s = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = s.conn.closed() => return,
                    () = crate::net::silent_for(&s.conn, SERVER_QUIET, SERVER_QUIET / 6) => {}
                }
                let answer = tokio::time::timeout(SERVER_PROBE, s.who_am_i()).await;
                let alive = match answer {
                    Ok(Ok(_)) => true,
                    Ok(Err(e)) => e.downcast_ref::<Refused>().is_some(),
                    Err(_) => false,
                };
                if !alive {
                    tracing::debug!(server = %s.server, "server silent: closing");
                    s.conn.close(CLOSE_SERVER_SILENT.into(), b"server silent");
                    return;
                }
            }
        })
    }

    async fn request(&self, req: &Request) -> anyhow::Result<Response> {
        Ok(self.ask(req, false, Duration::from_secs(5)).await?.0)
    }

    /// Sends `req` on a stream of its own (finished unless `keep_open`)
    /// and reads the answer within `wait`; a refusal is an error.
    async fn ask(
        &self,
        req: &Request,
        keep_open: bool,
        wait: Duration,
    ) -> anyhow::Result<(Response, quinn::SendStream, quinn::RecvStream)> {
        let (mut send, mut recv) = self.conn.open_bi().await?;
        write_msg(&mut send, req).await?;
        if !keep_open {
            send.finish()?;
        }
        let resp = tokio::time::timeout(wait, read_msg::<Response>(&mut recv))
            .await
            .map_err(|_| anyhow::anyhow!("{}: no answer within {wait:?}", self.server))??;
        if let Response::Error(e) = resp {
            return Err(Refused {
                server: self.server,
                refusal: e,
            }
            .into());
        }
        Ok((resp, send, recv))
    }

    /// The address the server sees us at.
    pub async fn who_am_i(&self) -> anyhow::Result<SocketAddr> {
        match self.request(&Request::WhoAmI).await? {
            Response::YouAre(a) => Ok(a),
            other => anyhow::bail!("unexpected answer {other:?}"),
        }
    }

    /// Stores our record at the server (which replicates it). A live
    /// record goes with its withdrawal ([`PeerRecord::withdrawal`]): it is
    /// online only while this connection lives. An expired record is a
    /// withdrawal of its own.
    pub async fn register(&self, record: PeerRecord) -> anyhow::Result<()> {
        let now = unix_millis() / 1000;
        let req = if record.is_live(now) {
            let withdrawal = PeerRecord::withdrawal(self.keypair.signing_key(), &record.body, now);
            Request::RegisterLive { record, withdrawal }
        } else {
            Request::Register(record)
        };
        // Not yet copied to another server (a server just started or cut
        // off): retried when the server says, a few times — the same
        // request is idempotent there. Rate limits are the caller's to obey.
        for attempt in 0.. {
            match self.request(&req).await {
                Ok(Response::Registered) => return Ok(()),
                Ok(other) => anyhow::bail!("unexpected answer {other:?}"),
                Err(e) => {
                    let wait = e
                        .downcast_ref::<Refused>()
                        .filter(|r| r.code() == rendezvous::ErrorCode::NotReplicated)
                        .and_then(Refused::retry_after)
                        .filter(|w| *w <= Duration::from_secs(5));
                    match wait {
                        Some(w) if attempt < 4 => tokio::time::sleep(w).await,
                        _ => return Err(e),
                    }
                }
            }
        }
        unreachable!("the loop returns")
    }

    /// Withdraws our record: registers a newer one that is already
    /// expired, which replaces the old one everywhere (records are signed
    /// by us, so only we can do this).
    pub async fn deregister(&self, client: &Client, seq: u64) -> anyhow::Result<()> {
        let addr = self.who_am_i().await?;
        // Expired as of now: offline at once, kept as a tombstone for a day.
        let record = client.record(self, "gone", addr, seq, Duration::ZERO);
        let record = PeerRecord::sign(client.keypair.signing_key(), record.body);
        self.register(record).await
    }

    /// Looks a peer up by id.
    pub async fn lookup(&self, peer: PeerId) -> anyhow::Result<Option<PeerRecord>> {
        match self.request(&Request::Lookup(peer)).await? {
            Response::Record(r) => Ok(r),
            other => anyhow::bail!("unexpected answer {other:?}"),
        }
    }

    /// Every online peer with this name, freshest first.
    pub async fn find_name(&self, name: &str) -> anyhow::Result<Vec<PeerRecord>> {
        match self.request(&Request::FindName(name.to_string())).await? {
            Response::Records(r) => Ok(r),
            other => anyhow::bail!("unexpected answer {other:?}"),
        }
    }

    /// Looks a peer up by name (the freshest record with it).
    pub async fn lookup_name(&self, name: &str) -> anyhow::Result<Option<PeerRecord>> {
        match self.request(&Request::LookupName(name.to_string())).await? {
            Response::Record(r) => Ok(r),
            other => anyhow::bail!("unexpected answer {other:?}"),
        }
    }

    /// Asks to meet `friend`: its record and how long until the common
    /// start instant if it is online now, else [`Meeting::Waiting`] (then a
    /// [`Notice::Friend`] arrives on [`Session::notices`] when it comes
    /// online); the friend is told about us either way. A name that several
    /// online peers use is [`Meeting::Ambiguous`], and nobody is told.
    pub async fn meet(&self, friend: FriendRef) -> anyhow::Result<Meeting> {
        match self.request(&Request::Meet(friend)).await? {
            Response::Friend {
                record,
                start_in_ms,
            } => Ok(Meeting::Found(
                record,
                Duration::from_millis(start_in_ms.into()),
            )),
            Response::Waiting => Ok(Meeting::Waiting),
            Response::Records(r) => Ok(Meeting::Ambiguous(r)),
            other => anyhow::bail!("unexpected answer {other:?}"),
        }
    }

    /// Asks the server to relay us to `friend`, who must ask for us too
    /// within the server's wait; returns the stream that then carries the
    /// friend's datagrams ([`crate::client::relay`]), once the server said
    /// `Relaying`.
    pub async fn relay(
        &self,
        friend: PeerId,
    ) -> anyhow::Result<(quinn::SendStream, quinn::RecvStream)> {
        match self
            .ask(&Request::Relay(friend), true, Duration::from_secs(30))
            .await?
        {
            (Response::Relaying, send, recv) => Ok((send, recv)),
            (other, ..) => anyhow::bail!("unexpected answer {other:?}"),
        }
    }

    /// The same without waiting: the request is written and the stream
    /// returned at once, its answer (then the friend's datagrams) still to
    /// read ([`crate::client::relay`]).
    pub async fn relay_stream(
        &self,
        friend: PeerId,
    ) -> anyhow::Result<(quinn::SendStream, quinn::RecvStream)> {
        let (mut send, recv) = self.conn.open_bi().await?;
        write_msg(&mut send, &Request::Relay(friend)).await?;
        Ok((send, recv))
    }

    /// What the server pushes to us (peers that want to talk to us).
    pub fn notices(&self) -> tokio::sync::mpsc::Receiver<Notice> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let conn = self.conn.clone();
        tokio::spawn(async move {
            while let Ok(mut s) = conn.accept_uni().await {
                match read_msg::<Notice>(&mut s).await {
                    Ok(n) => {
                        if tx.send(n).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "bad notice from the server"),
                }
            }
        });
        rx
    }

    /// Reports our RTTs to servers (kept with this connection; the server
    /// uses them to choose relays for our meetings).
    pub async fn report_latency(&self, rtts: rendezvous::LatencyVector) -> anyhow::Result<()> {
        match self.request(&Request::Latency(rtts)).await? {
            Response::Noted => Ok(()),
            other => anyhow::bail!("unexpected answer {other:?}"),
        }
    }

    /// Asks the servers to rank the relays for us and `friend` again (after
    /// a new latency report): both of us get a new `Notice::Relay`.
    pub async fn rearrange(&self, friend: PeerId) -> anyhow::Result<()> {
        match self.request(&Request::Rearrange(friend)).await? {
            Response::Noted => Ok(()),
            other => anyhow::bail!("unexpected answer {other:?}"),
        }
    }

    /// Live servers, least loaded first.
    pub async fn servers(&self) -> anyhow::Result<Vec<ServerRecord>> {
        match self.request(&Request::Servers).await? {
            Response::Servers(s) => Ok(s),
            other => anyhow::bail!("unexpected answer {other:?}"),
        }
    }

    /// Leaves a sealed letter for its recipient: how many servers keep
    /// it once this returns (see [`crate::client::mail`]).
    pub async fn deposit(&self, letter: rendezvous::Letter) -> anyhow::Result<u8> {
        match self.request(&Request::Deposit(letter)).await? {
            Response::Deposited { copies } => Ok(copies),
            other => anyhow::bail!("unexpected answer {other:?}"),
        }
    }

    /// A page of the letters kept for us, and whether more wait.
    pub async fn collect(&self) -> anyhow::Result<(Vec<rendezvous::Letter>, bool)> {
        match self.request(&Request::Collect).await? {
            Response::Letters { letters, more } => Ok((letters, more)),
            other => anyhow::bail!("unexpected answer {other:?}"),
        }
    }

    /// Tells the servers we have these letters: they forget them.
    pub async fn delivered(&self, ids: Vec<rendezvous::LetterId>) -> anyhow::Result<()> {
        match self.request(&Request::Delivered(ids)).await? {
            Response::Noted => Ok(()),
            other => anyhow::bail!("unexpected answer {other:?}"),
        }
    }
}
