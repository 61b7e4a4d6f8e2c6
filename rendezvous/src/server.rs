//! The rendezvous server as a state machine: fed [`Input`]s with the time,
//! drained for [`Output`]s. No sockets, no clock, no threads; the same
//! inputs give the same outputs (the driver in `chatd` and the simulator in
//! `sim` are its two drivers).
//!
//! What it holds for anonymous clients, and the bound on each:
//!
//! | held | bound | refusal |
//! |---|---|---|
//! | client connections | `max_connections`, `per_ip_connections` per address (IPv6: per /64), `per_peer_connections` per identity | `TooManyConnections`, closed |
//! | connections that never registered | `max_anonymous` (a new one closes the one idle longest), each closed after `anonymous_idle` without a request | `TooManyConnections`, closed |
//! | live registrations | `capacity` here, `per_ip_records` per address, `max_records` in the table, and per home server on replicated records | `ServerFull`, `QuotaAddress`, `TableFull` |
//! | new identities | `new_ids_per_min` per address | `QuotaNewIds` |
//! | costly requests (register, meet, relay, collect) | a token bucket per connection and per address | `RateLimited` with retry-after |
//! | deposits of letters | `mail_rate`: a token bucket per connection and per address | `RateLimited` with retry-after |
//! | broadcasts clients cause | a token bucket for the whole server | `RateLimited` |
//! | waiting meets | `max_waits_per_conn`, `max_waits` | `TooManyWaits` |
//! | relay halves and sessions | per client, per address, per server; only after a meeting | `RelayLimit`, `RelayFull`, `RelayNotMet` |
//! | notices | one bounded writer per connection (the driver's) | dropped, counted |
//! | letters (offline messages) | `mail`: per recipient, per sender, per address, letters and bytes in all, a week each; 8 deposits and 1 collection in flight per connection | `MailboxFull`, `MailQuota`, `MailStorageFull`, `TooManyWaits` |
//!
//! Presence is the connection: a live record is registered with its
//! withdrawal ([`Request::RegisterLive`]), published when the connection
//! closes. A registration is acknowledged once another live server has
//! stored it ([`ServerMsg::Store`]/[`ServerMsg::Stored`]), or at once when
//! this server is alone in its cluster (there is nobody to copy it to).
//!
//! Anti-entropy is paged and stateless: digests ([`ServerMsg::Digest`]),
//! then for at most `sync_buckets_per_round` differing buckets pages of
//! versions by id range, then records and wants, every message bounded; a
//! round that found differences is followed by another after
//! `sync_retry`, so tables of any size converge, and records learned this
//! way trigger digests to the other neighbors (an epidemic push).

mod mail;

use crate::latency::LatencyVector;
use crate::limit::TokenBucket;
use crate::mailbox::{MailLimits, Mailbox};
use crate::members::{Liveness, Members, Msg, Reply, ServerRecord};
use crate::proto::{
    ErrorCode, FriendRef, MAX_NAME_MATCHES, MAX_SERVERS_LISTED, Notice, Payload, Refusal, Request,
    Response, ServerMsg,
};
use crate::record::{MAX_SEQ_AHEAD_MS, MAX_TTL, PeerRecord, RecordError, check_name};
use crate::table::{BUCKETS, Digest, PeerTable};
use bytes::Bytes;
use ed25519_dalek::SigningKey;
use overlay::{PeerId, Time};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// A client connection, numbered by the driver.
pub type ConnId = u64;
/// A request on a connection (its stream), numbered by the driver.
pub type ReqId = u64;
/// A relay session.
pub type SessionId = u64;

/// The time, both ways: monotonic for timers, Unix milliseconds for
/// records (their `seq` and `expires_at` are wall-clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic.
    pub mono: Time,
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
}

impl Now {
    /// Unix seconds.
    pub fn unix(&self) -> u64 {
        self.unix_ms / 1000
    }
}

/// What a relay session may carry (the driver enforces it while copying).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayLimits {
    /// Bytes per second in each direction.
    pub bytes_per_sec: u64,
    /// Bytes in all, both directions, before the session is closed.
    pub max_bytes: u64,
    /// A session silent this long in both directions is closed.
    pub idle: Duration,
}

/// Why a client's request could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Its announced length is over the limit: no client of this protocol
    /// sends that. The connection is closed (code 10).
    TooLarge,
    /// Not complete within the driver's request timeout: a stalled or
    /// dripping stream. The connection is closed (code 10).
    Late,
    /// Read but not understood (a newer client, a corrupt body): answered
    /// `Malformed`; the [`MAX_UNDECODABLE`]th on one connection closes it.
    Undecodable(String),
}

/// Undecodable requests one connection may send before it is closed.
pub const MAX_UNDECODABLE: u32 = 4;

/// QUIC application code of a connection closed for a protocol violation.
pub const CLOSE_VIOLATION: u32 = 10;

/// Server RTTs kept from one [`Input::ServerRtts`] (the driver's open
/// connections; a bound all the same).
pub const MAX_SERVER_RTTS: usize = 4_096;

/// Added to a start instant for the work on the way (a server's and a
/// client's processing, a scheduler's delay).
const START_SLACK: Duration = Duration::from_millis(5);

/// Every limit and tempo of the server, with defaults for the open
/// internet.
#[derive(Clone, Debug)]
pub struct Config {
    /// Clients this server serves (live registrations homed here); the
    /// load it announces is registrations / capacity.
    pub capacity: u32,
    /// Records (tombstones included) the table holds at most.
    pub max_records: usize,
    /// Client connections at once.
    pub max_connections: usize,
    /// Client connections from one address (IPv6: one /64).
    pub per_ip_connections: u32,
    /// Client connections of one identity.
    pub per_peer_connections: u32,
    /// Connections that have not registered (lookups, status, an attacker
    /// holding sockets): at most this many at once. A new one beyond it
    /// closes the anonymous connection idle the longest, so a crowd of
    /// idle sockets cannot lock out newcomers, which register within a
    /// round trip. Each idle connection costs ~33 KiB in QUIC and TLS
    /// state (measured), so this bounds that memory (~34 MB at 1,024).
    pub max_anonymous: usize,
    /// An anonymous connection without a request for this long is closed.
    pub anonymous_idle: Duration,
    /// Live registrations homed here from one address (IPv6: one /64).
    pub per_ip_records: u32,
    /// New identities one address may register per minute (a burst of
    /// twice that).
    pub new_ids_per_min: f64,
    /// Costly requests (register, meet, relay) per second per connection,
    /// and the burst.
    pub conn_rate: (f64, f64),
    /// Refusals one connection may get per second, and the burst; beyond
    /// it the connection is closed (code 10, "too many refused requests").
    /// A client that waits as told (`retry_after_ms`) stays far below.
    pub refusals_per_conn: (f64, f64),
    /// The same per address.
    pub ip_rate: (f64, f64),
    /// Broadcasts clients may cause per second at this server, and the
    /// burst.
    pub broadcast_rate: (f64, f64),
    /// Introductions of one peer (meetings arranged with it, each a
    /// notice to it and a message to its home server) per second, and the
    /// burst, whoever asks: a crowd meeting one victim cannot flood it or
    /// the links between servers. Beyond it `Meet` is refused
    /// `RateLimited` with a retry hint.
    pub introductions_per_peer: (f64, f64),
    /// Shortest time between two accepted `Latency` reports on one
    /// connection (clients report every 30 s and when the server set
    /// changes); sooner ones are refused `RateLimited`.
    pub latency_report_spacing: Duration,
    /// Meetings one connection may wait for at once.
    pub max_waits_per_conn: usize,
    /// Meetings waited for at this server at once.
    pub max_waits: usize,
    /// Relay sessions at once.
    pub relay_sessions: usize,
    /// Relay streams (waiting or paired) per client.
    pub relay_per_client: u32,
    /// Relay streams per address.
    pub relay_per_ip: u32,
    /// How long the first of a pair waits for the second.
    pub relay_wait: Duration,
    /// A relay needs a meeting through this server within this.
    pub relay_met_within: Duration,
    /// Longest relay session.
    pub relay_lifetime: Duration,
    /// What a session may carry.
    pub relay: RelayLimits,
    /// How often a server announces itself (its record, its load) to the
    /// cluster, at least: the interval in a cluster of up to
    /// `heartbeat` × `announce_budget` ÷ 2 servers (3,000 with the
    /// defaults: 30 s, 200/s). Failures are found by the servers connected
    /// to the one that fails (suspicion, confirmed by a second), not by
    /// missing announces, so this can be slow: every announce reaches
    /// every server, so the cost is servers ÷ interval deliveries per
    /// second at each server. In a larger cluster the interval grows with
    /// it (see `announce_budget`). A load change of 1% of capacity (at
    /// least 10 clients), and hearing from a server declared dead or gone
    /// ([`Reply::Revived`]), are announced early (see `announce_spacing`).
    pub heartbeat: Duration,
    /// Silence after which a server is declared dead (the backstop when
    /// no neighbor suspected it), at the `heartbeat` interval: three
    /// intervals and the time a late announce takes to spread. Not exactly
    /// three: a server cut off by a partition of one to two intervals
    /// misses two announces, and its third arrives 90 s after the last
    /// one heard — at 90 s it would be declared dead a moment before that
    /// announce arrives, right after the heal (`sim servers` measured it).
    /// It grows in the same proportion as the interval (100 s at 30 s →
    /// 333 s at 100 s).
    pub dead_after: Duration,
    /// Announces per second the whole cluster may send each server, at
    /// most (every announce reaches every server). With `n` servers
    /// believed alive (this one included):
    /// - regular announces take half of it: one every
    ///   max(`heartbeat`, 2·`n` ÷ `announce_budget` s) — 30 s up to 3,000
    ///   servers with the defaults, 100 s at 10,000 — and `dead_after`
    ///   scales by the same factor;
    /// - no announce (early ones included) comes sooner than
    ///   max(`announce_spacing`, `n` ÷ `announce_budget` s) after the
    ///   previous one — 5 s up to 1,000 servers, 50 s at 10,000 — so even
    ///   if every server's load kept moving, each server receives at most
    ///   `announce_budget` announces per second.
    ///
    /// The interval is set at each announce from the count then. At about
    /// 300 bytes per announce and server (measured by `sim servers`:
    /// GOSSIP, IHAVE and GRAFT shares) the default budget is ~30 KB/s per
    /// server of regular announces, ~60 KB/s at the very worst. Zero or
    /// less: no scaling (`heartbeat`, `dead_after` and `announce_spacing`
    /// as they are, whatever the cluster's size).
    pub announce_budget: f64,
    /// The shortest time between two announces of a small cluster (an
    /// early one after a load change); it grows in a large one (see
    /// `announce_budget`). Refutations of a suspicion are not held back.
    pub announce_spacing: Duration,
    /// Anti-entropy with each neighbor at least this often.
    pub sync_interval: Duration,
    /// After a round that found differences, the next one this soon.
    pub sync_retry: Duration,
    /// Differing buckets answered per round.
    pub sync_buckets_per_round: usize,
    /// Versions per page.
    pub page_versions: usize,
    /// Records per message.
    pub page_records: usize,
    /// A `Store` not acknowledged within this goes to another server.
    pub ack_timeout: Duration,
    /// Servers tried before a registration is refused as not replicated.
    pub ack_tries: u32,
    /// Verify ed25519 signatures (the simulator may turn this off).
    pub verify_signatures: bool,
    /// The cluster allowlist (`None`: an open cluster).
    pub allow: Option<BTreeSet<PeerId>>,
    /// Addresses this server announces.
    pub advertise: Vec<SocketAddr>,
    /// Assumed time for a rendezvous to reach another server whose RTT
    /// the driver has not reported ([`Input::ServerRtts`]).
    pub server_hop: Duration,
    /// Longest start delay handed out.
    pub max_start_delay: Duration,
    /// Offline messages: what this server keeps, and how long.
    pub mail: MailLimits,
    /// Letters one connection may deposit per second, and the burst (a
    /// `chatd send` of up to 256 lines goes in one burst); the same bucket
    /// per address. Beyond it `Deposit` is refused `RateLimited`.
    pub mail_rate: (f64, f64),
}

impl Default for Config {
    fn default() -> Self {
        Config {
            capacity: 10_000,
            max_records: 1_000_000,
            max_connections: 20_000,
            per_ip_connections: 64,
            per_peer_connections: 4,
            max_anonymous: 1_024,
            anonymous_idle: Duration::from_secs(30),
            per_ip_records: 32,
            new_ids_per_min: 60.0,
            conn_rate: (5.0, 20.0),
            refusals_per_conn: (0.5, 30.0),
            ip_rate: (50.0, 200.0),
            broadcast_rate: (4_000.0, 8_000.0),
            introductions_per_peer: (2.0, 10.0),
            latency_report_spacing: Duration::from_secs(1),
            // A room member waits for each other member (`chatd room`:
            // at most 31 others).
            max_waits_per_conn: 32,
            max_waits: 50_000,
            relay_sessions: 1_000,
            // A room member may be relayed to several members at once.
            relay_per_client: 8,
            relay_per_ip: 16,
            relay_wait: Duration::from_secs(15),
            relay_met_within: Duration::from_secs(300),
            relay_lifetime: Duration::from_secs(3_600),
            relay: RelayLimits {
                bytes_per_sec: 256 * 1024,
                max_bytes: 256 * 1024 * 1024,
                idle: Duration::from_secs(60),
            },
            heartbeat: Duration::from_secs(30),
            dead_after: Duration::from_secs(100),
            announce_budget: 200.0,
            announce_spacing: Duration::from_secs(5),
            sync_interval: Duration::from_secs(30),
            sync_retry: Duration::from_millis(500),
            sync_buckets_per_round: 32,
            page_versions: 1024,
            page_records: 64,
            ack_timeout: Duration::from_secs(1),
            ack_tries: 3,
            verify_signatures: true,
            allow: None,
            advertise: Vec::new(),
            server_hop: Duration::from_millis(50),
            max_start_delay: Duration::from_secs(1),
            mail: MailLimits::default(),
            mail_rate: (20.0, 256.0),
        }
    }
}

impl Config {
    /// How much longer than at `heartbeat` the announce interval is in a
    /// cluster of `servers` (this one included): max(1, 2·n ÷
    /// `announce_budget` ÷ `heartbeat`); 1 without a budget.
    pub fn tempo_factor(&self, servers: usize) -> f64 {
        let budget = self.announce_budget;
        let heartbeat = self.heartbeat.as_secs_f64();
        if !budget.is_finite() || budget <= 0.0 || heartbeat <= 0.0 {
            return 1.0;
        }
        (2.0 * servers as f64 / budget / heartbeat).max(1.0)
    }

    /// The regular announce interval in a cluster of `servers`.
    pub fn announce_interval_at(&self, servers: usize) -> Duration {
        scaled(self.heartbeat, self.tempo_factor(servers))
    }

    /// The shortest time between two announces (early ones included) in a
    /// cluster of `servers`: max(`announce_spacing`, n ÷
    /// `announce_budget`); `announce_spacing` without a budget.
    pub fn announce_spacing_at(&self, servers: usize) -> Duration {
        let budget = self.announce_budget;
        if !budget.is_finite() || budget <= 0.0 {
            return self.announce_spacing;
        }
        let share = Duration::try_from_secs_f64(servers as f64 / budget).unwrap_or(Duration::MAX);
        self.announce_spacing.max(share)
    }
}

fn scaled(d: Duration, factor: f64) -> Duration {
    if factor <= 1.0 {
        d
    } else {
        Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(Duration::MAX)
    }
}

/// What the driver feeds in.
#[derive(Clone, Debug)]
pub enum Input {
    /// A client connection completed its handshake.
    ClientConnected {
        /// The driver's number for it.
        conn: ConnId,
        /// Its authenticated key.
        peer: PeerId,
        /// Where it comes from.
        addr: SocketAddr,
    },
    /// A request arrived on a stream of a client connection.
    ClientRequest {
        /// Which connection.
        conn: ConnId,
        /// Which stream (answered with [`Output::Respond`]).
        req: ReqId,
        /// What it asks.
        request: Request,
        /// The connection's current round-trip time.
        rtt: Duration,
    },
    /// A request that could not be read (too large, undecodable, late).
    ClientMalformed {
        /// Which connection.
        conn: ConnId,
        /// Which stream.
        req: ReqId,
        /// What was wrong.
        error: Malformed,
    },
    /// A client connection ended (closed, reset or timed out).
    ClientClosed {
        /// Which connection.
        conn: ConnId,
    },
    /// A relay session ended in the driver (a side closed, idle, cap).
    RelayEnded {
        /// Which.
        session: SessionId,
    },
    /// A broadcast arrived from the overlay.
    Delivery {
        /// The server that broadcast it.
        origin: PeerId,
        /// What it carries.
        payload: Bytes,
    },
    /// The same, already decoded (with [`Payload::decode`]) by whoever
    /// delivers one broadcast to many cores, so that they share its
    /// records instead of each keeping a copy: a simulator holding a
    /// thousand servers (a driver has one core and uses `Delivery`).
    Decoded {
        /// The server that broadcast it.
        origin: PeerId,
        /// What it carries.
        payload: Payload,
    },
    /// A server became an overlay neighbor.
    NeighborUp(PeerId),
    /// A server stopped being an overlay neighbor.
    NeighborDown(PeerId),
    /// A connection to a server failed (not a graceful close): failure
    /// detection's evidence.
    PeerFailed(PeerId),
    /// The round-trip times of the driver's open connections to other
    /// servers (replacing the last list): a meeting with a client of one
    /// of them starts its punching that much sooner than the assumed
    /// [`Config::server_hop`]. Only the first [`MAX_SERVER_RTTS`] are kept.
    ServerRtts(Vec<(PeerId, Duration)>),
    /// A message from another server.
    FromServer {
        /// Who sent it.
        from: PeerId,
        /// What.
        msg: ServerMsg,
    },
    /// The cluster allowlist changed (`None`: open).
    SetAllow(Option<BTreeSet<PeerId>>),
    /// This server leaves the cluster for good.
    Leave,
    /// Time passed: do what is due (see [`Server::poll_timeout`]).
    Tick,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Broadcast to every server.
    Broadcast(Bytes),
    /// Send to one server (dial `addr` if there is no connection).
    ToServer {
        /// Whom.
        to: PeerId,
        /// Where it can be dialed, if not a neighbor.
        addr: Option<SocketAddr>,
        /// What.
        msg: ServerMsg,
    },
    /// Answer a request.
    Respond {
        /// On which connection.
        conn: ConnId,
        /// Which request.
        req: ReqId,
        /// The answer.
        response: Response,
    },
    /// Push a notice to a client (through its bounded writer).
    Notify {
        /// Which connection.
        conn: ConnId,
        /// What.
        notice: Notice,
    },
    /// Close a client connection.
    Close {
        /// Which.
        conn: ConnId,
        /// QUIC application error code.
        code: u32,
        /// Why, in words.
        reason: &'static str,
    },
    /// Two relay requests are paired: answer both `Relaying`, then copy
    /// between their streams within `limits`.
    RelayPair {
        /// The session (reported back with [`Input::RelayEnded`]).
        session: SessionId,
        /// One half: its connection and request.
        a: (ConnId, ReqId),
        /// The other.
        b: (ConnId, ReqId),
        /// What it may carry.
        limits: RelayLimits,
    },
    /// End a relay session (a side left, or its lifetime is over).
    RelayStop {
        /// Which.
        session: SessionId,
    },
}

/// Counters for operators, by name (exported as metrics by the driver).
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Refused client requests and connections, by [`ErrorCode::label`].
    pub refused: BTreeMap<&'static str, u64>,
    /// Records from other servers not applied, by reason.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Everything else that happened, by name.
    pub counters: BTreeMap<&'static str, u64>,
}

impl Stats {
    /// Every name [`Stats::counters`] can hold, so a driver can export
    /// them all from the start (the same metrics on every server).
    pub const COUNTERS: &'static [&'static str] = &[
        "anonymous_closed",
        "client_connections",
        "clients_gone",
        "collections_partial",
        "latency_reports",
        "letters_acked",
        "letters_collected",
        "letters_deposited",
        "letters_expired",
        "letters_handed_out",
        "letters_kept",
        "letters_refused",
        "mail_notices",
        "meetings",
        "members_revived",
        "membership_rejected",
        "notices",
        "protocol_violations",
        "rearrangements",
        "records_forgotten",
        "records_repaired",
        "records_stored_for_peer",
        "refutations",
        "registrations",
        "registrations_acked",
        "registrations_acked_alone",
        "relay_choice_fallbacks",
        "relay_choices",
        "relay_sessions",
        "relay_sessions_expired",
        "rendezvous_sent",
        "store_timeouts",
        "sync_records_sent",
        "sync_rounds_answered",
        "sync_rounds_started",
    ];

    fn count(&mut self, name: &'static str) {
        self.add(name, 1);
    }

    fn add(&mut self, name: &'static str, n: u64) {
        debug_assert!(
            Self::COUNTERS.contains(&name),
            "counter {name} is missing from Stats::COUNTERS"
        );
        *self.counters.entry(name).or_insert(0) += n;
    }

    /// A counter's value.
    pub fn get(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    /// Refusals with `code` so far.
    pub fn refusals(&self, code: ErrorCode) -> u64 {
        self.refused.get(code.label()).copied().unwrap_or(0)
    }
}

/// Where a client comes from, for quotas: its IPv4 address, or its IPv6
/// /64 (one subscriber's prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Source(IpAddr);

impl Source {
    /// The address (an IPv6 one with its last 64 bits zero).
    pub fn ip(&self) -> IpAddr {
        self.0
    }

    /// The quota key of `addr`.
    pub fn of(addr: &SocketAddr) -> Source {
        match addr.ip() {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    Source(IpAddr::V6(std::net::Ipv6Addr::new(
                        s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                    )))
                }
            },
        }
    }
}

#[derive(Debug)]
struct Conn {
    peer: PeerId,
    addr: SocketAddr,
    source: Source,
    rtt: Duration,
    costly: TokenBucket,
    /// Letters it may still deposit (`mail_rate`).
    mail: TokenBucket,
    waits: Vec<FriendRef>,
    /// Never registered on this connection: (last request, id) is in
    /// `anonymous`. `None` once registered or being closed.
    anonymous_since: Option<Time>,
    /// Undecodable requests so far.
    undecodable: u32,
    /// Refusals it may still get (`refusals_per_conn`) before it is closed.
    refusals: TokenBucket,
    /// Told to close.
    closing: bool,
    /// The client's last `Latency` report, and when it was accepted.
    latency: Option<(Time, LatencyVector)>,
    /// When the client last asked to rearrange a relay.
    rearranged: Option<Time>,
    /// It collected letters on this connection, so it understands
    /// `Notice::Mail` (an older client would not decode it).
    reads_mail: bool,
}

impl Conn {
    /// The client's last latency report on this connection.
    fn rtts(&self) -> Option<&LatencyVector> {
        self.latency.as_ref().map(|l| &l.1)
    }
}

#[derive(Debug)]
struct Presence {
    conn: ConnId,
    source: Source,
    withdrawal: PeerRecord,
}

#[derive(Debug)]
struct RelayHalf {
    conn: ConnId,
    req: ReqId,
    source: Source,
    since: Time,
}

#[derive(Debug)]
struct RelaySession {
    halves: [(ConnId, PeerId, Source); 2],
    started: Time,
}

#[derive(Debug)]
struct Ack {
    conn: ConnId,
    req: ReqId,
    record: Arc<PeerRecord>,
    tried: Vec<PeerId>,
    attempts: u32,
    deadline: Time,
}

/// Whether a record we hold is older, the same, or newer than one offered.
enum Held {
    Missing,
    Older,
    Same,
    Newer(u64),
}

/// The announce schedule. The announce at start is followed by one at a
/// random point `u` of the first interval, then one every interval:
/// servers started together (a fleet, a simulator's join) would otherwise
/// all announce in the same few seconds of every interval, and after a
/// partition heals nothing would cross the link until that window came
/// round again. The first interval is the one at the cluster's size as the
/// server learns it, not at its start, when it knows nobody: 10,000
/// servers started within seconds would otherwise all announce a second
/// time within the unscaled 30 s — 333 announces per second at each
/// server, over `announce_budget`.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Nothing announced yet.
    Start,
    /// Announced once; the second is `u` of an interval after the first.
    Drawn(f64),
    /// Every interval (or earlier, by the spacing rule).
    Regular,
}

/// The server.
#[derive(Debug)]
pub struct Server {
    me: PeerId,
    key: SigningKey,
    cfg: Config,
    rng: u64,
    my_record: ServerRecord,
    members: Members,
    table: PeerTable,
    conns: BTreeMap<ConnId, Conn>,
    /// peer → the connection its notices go to (the one that registered,
    /// or its first).
    clients: BTreeMap<PeerId, ConnId>,
    presence: BTreeMap<PeerId, Presence>,
    conns_per_source: BTreeMap<Source, u32>,
    /// peer → its connections.
    conns_of: BTreeMap<PeerId, BTreeSet<ConnId>>,
    /// Connections that never registered, by their last request.
    anonymous: BTreeSet<(Time, ConnId)>,
    live_per_source: BTreeMap<Source, u32>,
    costly_per_source: BTreeMap<Source, TokenBucket>,
    /// Deposits per address (`mail_rate`; per connection: [`Conn`]).
    mail_per_source: BTreeMap<Source, TokenBucket>,
    new_ids_per_source: BTreeMap<Source, TokenBucket>,
    /// Introductions per peer met (`introductions_per_peer`).
    introductions: BTreeMap<PeerId, TokenBucket>,
    budget: TokenBucket,
    waits_by_id: BTreeMap<PeerId, BTreeSet<ConnId>>,
    waits_by_name: BTreeMap<String, BTreeSet<ConnId>>,
    waits: usize,
    /// (lower id, higher id) → when they last met through this server.
    met: BTreeMap<(PeerId, PeerId), Time>,
    relay_pending: BTreeMap<(PeerId, PeerId), RelayHalf>,
    relay_sessions: BTreeMap<SessionId, RelaySession>,
    relay_per_peer: BTreeMap<PeerId, u32>,
    relay_per_source: BTreeMap<Source, u32>,
    next_session: SessionId,
    acks: BTreeMap<u64, Ack>,
    next_token: u64,
    mailbox: Mailbox,
    deposits: BTreeMap<u64, mail::Deposit>,
    collects: BTreeMap<u64, mail::Collecting>,
    neighbors: BTreeSet<PeerId>,
    next_sync: BTreeMap<PeerId, Time>,
    sync_cursor: u8,
    /// Where the next round resumes a bucket too big for one round, per
    /// neighbor (the last id sent).
    sync_resume: BTreeMap<(PeerId, u8), PeerId>,
    next_heartbeat: Time,
    last_announce: Time,
    /// A server came back (see [`Reply::Revived`]): announce at the next
    /// tick the spacing allows.
    announce_soon: bool,
    /// Where the announces are in their schedule (see [`Phase`]).
    phase: Phase,
    next_sweep: Time,
    /// The driver's last [`Input::ServerRtts`].
    server_rtts: BTreeMap<PeerId, Duration>,
    /// The time of the input being handled.
    clock: Time,
    left: bool,
    out: VecDeque<Output>,
    stats: Stats,
}

/// `RateLimited` (with the wait) when the last time was less than
/// `spacing` ago.
fn spaced(last: Option<Time>, spacing: Duration, now: Now, what: &str) -> Result<(), Refusal> {
    match last {
        Some(at) if now.mono.saturating_since(at) < spacing => Err(Refusal {
            code: ErrorCode::RateLimited,
            retry_after_ms: as_ms32(spacing - now.mono.saturating_since(at)),
            detail: what.into(),
        }),
        _ => Ok(()),
    }
}

/// The keys of `map` whose deadline (`at` of the value) has come.
fn due<K: Copy + Ord, V>(map: &BTreeMap<K, V>, now: Time, at: impl Fn(&V) -> Time) -> Vec<K> {
    map.iter()
        .filter(|(_, v)| at(v) <= now)
        .map(|(k, _)| *k)
        .collect()
}

fn pair(a: PeerId, b: PeerId) -> (PeerId, PeerId) {
    if a < b { (a, b) } else { (b, a) }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn as_ms32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1)
}

/// `start_at_ms` − (`now_ms` + `one_way`), within 0..=`max`.
pub fn start_delay(start_at_ms: u64, now_ms: u64, one_way: Duration, max: Duration) -> u32 {
    let arrives = now_ms.saturating_add(millis(one_way));
    u32::try_from(start_at_ms.saturating_sub(arrives).min(millis(max))).unwrap_or(u32::MAX)
}

/// The secret of a server's quota tags ([`Mailbox`]): derived from its
/// key and seed, so the same server with the same seed tags the same way.
fn mail_key(key: &SigningKey, seed: u64) -> [u8; 32] {
    let mut material = key.to_bytes().to_vec();
    material.extend_from_slice(&seed.to_le_bytes());
    blake3::derive_key("chatd 2026 mail quota tags", &material)
}

impl Server {
    /// A server `me` (signing its announces with `key`), started at `now`;
    /// `seed` drives its only random choices (which server to copy a
    /// registration to, the phase of its announces).
    pub fn new(me: PeerId, key: SigningKey, cfg: Config, now: Now, seed: u64) -> Server {
        let mailbox = Mailbox::new(mail_key(&key, seed), cfg.mail.clone());
        let my_record = ServerRecord {
            id: me,
            addrs: cfg.advertise.clone(),
            clients: 0,
            capacity: cfg.capacity,
            version: now.unix_ms.max(1),
        };
        Server {
            me,
            key,
            members: Members::new(me, cfg.dead_after),
            budget: TokenBucket::new(cfg.broadcast_rate.0, cfg.broadcast_rate.1, now.mono),
            cfg,
            rng: seed ^ 0x9e37_79b9_7f4a_7c15,
            my_record,
            table: PeerTable::new(),
            conns: BTreeMap::new(),
            clients: BTreeMap::new(),
            presence: BTreeMap::new(),
            conns_per_source: BTreeMap::new(),
            conns_of: BTreeMap::new(),
            anonymous: BTreeSet::new(),
            live_per_source: BTreeMap::new(),
            costly_per_source: BTreeMap::new(),
            mail_per_source: BTreeMap::new(),
            new_ids_per_source: BTreeMap::new(),
            introductions: BTreeMap::new(),
            waits_by_id: BTreeMap::new(),
            waits_by_name: BTreeMap::new(),
            waits: 0,
            met: BTreeMap::new(),
            relay_pending: BTreeMap::new(),
            relay_sessions: BTreeMap::new(),
            relay_per_peer: BTreeMap::new(),
            relay_per_source: BTreeMap::new(),
            next_session: 1,
            acks: BTreeMap::new(),
            next_token: 1,
            mailbox,
            deposits: BTreeMap::new(),
            collects: BTreeMap::new(),
            neighbors: BTreeSet::new(),
            next_sync: BTreeMap::new(),
            sync_cursor: 0,
            sync_resume: BTreeMap::new(),
            next_heartbeat: now.mono,
            last_announce: now.mono,
            announce_soon: false,
            phase: Phase::Start,
            next_sweep: now.mono + Duration::from_secs(1),
            server_rtts: BTreeMap::new(),
            clock: now.mono,
            left: false,
            out: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// This server's id.
    pub fn id(&self) -> PeerId {
        self.me
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The peer table.
    pub fn table(&self) -> &PeerTable {
        &self.table
    }

    /// The membership table.
    pub fn members(&self) -> &Members {
        &self.members
    }

    /// This server's own record as last announced.
    pub fn my_record(&self) -> &ServerRecord {
        &self.my_record
    }

    /// Live servers, this one first.
    pub fn servers(&self) -> Vec<ServerRecord> {
        let mut out = vec![self.my_record.clone()];
        out.extend(self.members.live().cloned());
        out
    }

    /// Clients registered here with a live record.
    pub fn clients_registered(&self) -> usize {
        self.presence.len()
    }

    /// Client connections open.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Relay sessions carried now.
    pub fn relay_sessions(&self) -> usize {
        self.relay_sessions.len()
    }

    /// Meetings waited for now.
    pub fn waiting(&self) -> usize {
        self.waits
    }

    /// Registrations waiting for another server's acknowledgement.
    pub fn pending_acks(&self) -> usize {
        self.acks.len()
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The online record of `peer`.
    pub fn lookup(&self, peer: &PeerId, now: Now) -> Option<&Arc<PeerRecord>> {
        let (me, members) = (self.me, &self.members);
        self.table
            .lookup(peer, now.unix(), |h| *h == me || members.is_live(h))
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Every pending output.
    pub fn drain_outputs(&mut self) -> std::collections::vec_deque::Drain<'_, Output> {
        self.out.drain(..)
    }

    /// When [`Input::Tick`] is next due.
    pub fn poll_timeout(&self) -> Time {
        let mut t = self.next_sweep;
        if !self.left {
            t = t.min(self.next_heartbeat);
            if self.announce_soon {
                t = t.min(self.last_announce + self.announce_spacing());
            }
        }
        if let Some(s) = self.next_sync.values().min() {
            t = t.min(*s);
        }
        t
    }

    fn random(&mut self) -> u64 {
        // SplitMix64: small, fast, and enough for picking among servers.
        let z = crate::latency::splitmix(self.rng);
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z
    }

    fn admits(&self, id: &PeerId) -> bool {
        self.cfg.allow.as_ref().is_none_or(|a| a.contains(id))
    }

    /// Feeds one input at `now`.
    pub fn handle(&mut self, now: Now, input: Input) {
        self.clock = now.mono;
        match input {
            Input::ClientConnected { conn, peer, addr } => self.connected(now, conn, peer, addr),
            Input::ClientRequest {
                conn,
                req,
                request,
                rtt,
            } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.rtt = rtt;
                    self.request(now, conn, req, request);
                }
            }
            Input::ClientMalformed { conn, req, error } => self.malformed(conn, req, error),
            Input::ClientClosed { conn } => self.closed(now, conn),
            Input::RelayEnded { session } => self.end_session(session, false),
            Input::Delivery { payload, .. } => match Payload::decode(&payload) {
                Ok(payload) => self.delivery(now, payload),
                Err(_) => self.reject("undecodable"),
            },
            Input::Decoded { payload, .. } => self.delivery(now, payload),
            Input::NeighborUp(peer) => {
                self.neighbors.insert(peer);
                // The lower id starts an exchange at once; the other side
                // follows its own schedule.
                let at = if self.me < peer {
                    now.mono
                } else {
                    now.mono + self.cfg.sync_interval
                };
                self.next_sync.insert(peer, at);
            }
            Input::NeighborDown(peer) => {
                self.neighbors.remove(&peer);
                self.next_sync.remove(&peer);
                self.sync_resume.retain(|(p, _), _| *p != peer);
            }
            Input::PeerFailed(peer) => self.peer_failed(peer),
            Input::ServerRtts(rtts) => {
                self.server_rtts = rtts.into_iter().take(MAX_SERVER_RTTS).collect();
            }
            Input::FromServer { from, msg } => self.server_message(now, from, msg),
            Input::SetAllow(allow) => self.cfg.allow = allow,
            Input::Leave => {
                self.left = true;
                self.my_record.version = self.my_record.version.saturating_add(1);
                let msg = Msg::leave(&self.key, self.me, self.my_record.version);
                self.out
                    .push_back(Output::Broadcast(Payload::Member(msg).encode()));
            }
            Input::Tick => self.tick(now),
        }
    }

    // ----- client connections -----

    fn connected(&mut self, now: Now, conn: ConnId, peer: PeerId, addr: SocketAddr) {
        let source = Source::of(&addr);
        let from_source = self.conns_per_source.get(&source).copied().unwrap_or(0);
        let of_peer = self.conns_of.get(&peer).map_or(0, BTreeSet::len);
        let refusal = if self.conns.len() >= self.cfg.max_connections {
            Some("server full: ask for another server")
        } else if from_source >= self.cfg.per_ip_connections {
            Some("too many connections from your address")
        } else if of_peer >= self.cfg.per_peer_connections as usize {
            Some("too many connections with your identity")
        } else {
            None
        };
        if let Some(reason) = refusal {
            self.count_refusal(ErrorCode::TooManyConnections);
            self.out.push_back(Output::Close {
                conn,
                code: 5,
                reason,
            });
            return;
        }
        if self.anonymous.len() >= self.cfg.max_anonymous
            && let Some(&(_, oldest)) = self.anonymous.first()
        {
            self.close_anonymous(oldest, "too many connections without a registration");
        }
        *self.conns_per_source.entry(source).or_insert(0) += 1;
        self.conns_of.entry(peer).or_default().insert(conn);
        self.anonymous.insert((now.mono, conn));
        let (rate, burst) = self.cfg.conn_rate;
        self.conns.insert(
            conn,
            Conn {
                peer,
                addr,
                source,
                rtt: Duration::ZERO,
                costly: TokenBucket::new(rate, burst, now.mono),
                mail: TokenBucket::new(self.cfg.mail_rate.0, self.cfg.mail_rate.1, now.mono),
                waits: Vec::new(),
                anonymous_since: Some(now.mono),
                undecodable: 0,
                refusals: TokenBucket::new(
                    self.cfg.refusals_per_conn.0,
                    self.cfg.refusals_per_conn.1,
                    now.mono,
                ),
                closing: false,
                latency: None,
                rearranged: None,
                reads_mail: false,
            },
        );
        // A registered connection of the same client keeps its notices.
        self.clients.entry(peer).or_insert(conn);
        self.stats.count("client_connections");
    }

    fn malformed(&mut self, conn: ConnId, req: ReqId, error: Malformed) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let reason = match error {
            Malformed::TooLarge => "request over the size limit",
            Malformed::Late => "request not complete in time",
            Malformed::Undecodable(error) => {
                c.undecodable += 1;
                let last = c.undecodable >= MAX_UNDECODABLE;
                self.refuse(
                    conn,
                    req,
                    Refusal::new(ErrorCode::Malformed, format!("malformed request: {error}")),
                );
                if !last {
                    return;
                }
                "too many malformed requests"
            }
        };
        self.count_refusal(ErrorCode::Malformed);
        if self.close_conn(conn, CLOSE_VIOLATION, reason) {
            self.stats.count("protocol_violations");
        }
    }

    /// Tells the driver to close `conn` (once: a connection being closed is
    /// no longer anonymous, and a second reason is not sent); whether this
    /// call did.
    fn close_conn(&mut self, conn: ConnId, code: u32, reason: &'static str) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        if c.closing {
            return false;
        }
        c.closing = true;
        if let Some(since) = c.anonymous_since.take() {
            self.anonymous.remove(&(since, conn));
        }
        self.out.push_back(Output::Close { conn, code, reason });
        true
    }

    /// Closes a connection that never registered (idle too long, or the
    /// one idle longest when too many are open).
    fn close_anonymous(&mut self, conn: ConnId, reason: &'static str) {
        if self.close_conn(conn, 5, reason) {
            self.count_refusal(ErrorCode::TooManyConnections);
            self.stats.count("anonymous_closed");
        }
    }

    /// A request on `conn`: it is not idle; once it registers it is no
    /// longer anonymous.
    fn touch(&mut self, now: Now, conn: ConnId, registered: bool) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if let Some(since) = c.anonymous_since.take() {
            self.anonymous.remove(&(since, conn));
            if !registered {
                c.anonymous_since = Some(now.mono);
                self.anonymous.insert((now.mono, conn));
            }
        }
    }

    fn closed(&mut self, now: Now, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(since) = c.anonymous_since {
            self.anonymous.remove(&(since, conn));
        }
        let mut others = None;
        if let Some(set) = self.conns_of.get_mut(&c.peer) {
            set.remove(&conn);
            others = set.first().copied();
            if set.is_empty() {
                self.conns_of.remove(&c.peer);
            }
        }
        if let Some(n) = self.conns_per_source.get_mut(&c.source) {
            *n -= 1;
            if *n == 0 {
                self.conns_per_source.remove(&c.source);
            }
        }
        for w in &c.waits {
            self.unwait(conn, w);
        }
        if self.clients.get(&c.peer) == Some(&conn) {
            self.clients.remove(&c.peer);
            // Another connection of the same client takes over its notices.
            if let Some(other) = others {
                self.clients.insert(c.peer, other);
            }
        }
        // Relay halves waiting on this connection, sessions through it.
        let halves: Vec<(PeerId, PeerId)> = self
            .relay_pending
            .iter()
            .filter(|(_, h)| h.conn == conn)
            .map(|(k, _)| *k)
            .collect();
        for k in halves {
            if let Some(h) = self.relay_pending.remove(&k) {
                self.release_relay(k.0, h.source);
            }
        }
        let sessions: Vec<SessionId> = self
            .relay_sessions
            .iter()
            .filter(|(_, s)| s.halves.iter().any(|h| h.0 == conn))
            .map(|(id, _)| *id)
            .collect();
        for s in sessions {
            self.end_session(s, true);
        }
        self.acks.retain(|_, a| a.conn != conn);
        self.mail_closed(conn);
        // Presence is the connection: its record goes offline everywhere.
        let owns = self.presence.get(&c.peer).is_some_and(|p| p.conn == conn);
        if owns && let Some(p) = self.presence.remove(&c.peer) {
            self.source_live(p.source, false);
            let w = Arc::new(p.withdrawal);
            match self.held(&w) {
                Held::Older | Held::Missing => {
                    self.table.insert(w.clone(), now.mono, now.unix());
                    self.broadcast(Payload::Record(w.clone()));
                    self.stats.count("clients_gone");
                }
                // A newer record (re-registered elsewhere) already won.
                Held::Same | Held::Newer(_) => {}
            }
        }
    }

    fn source_live(&mut self, source: Source, up: bool) {
        let n = self.live_per_source.entry(source).or_insert(0);
        if up {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.live_per_source.remove(&source);
            }
        }
    }

    fn respond(&mut self, conn: ConnId, req: ReqId, response: Response) {
        self.out.push_back(Output::Respond {
            conn,
            req,
            response,
        });
    }

    fn count_refusal(&mut self, code: ErrorCode) {
        *self.stats.refused.entry(code.label()).or_insert(0) += 1;
    }

    fn refuse(&mut self, conn: ConnId, req: ReqId, refusal: Refusal) {
        self.count_refusal(refusal.code);
        self.respond(conn, req, Response::Error(refusal));
        // A connection that keeps asking for what it is refused is closed:
        // its requests cost the server the same refused or not.
        let clock = self.clock;
        if let Some(c) = self.conns.get_mut(&conn)
            && c.refusals.take(1.0, clock).is_err()
            && self.close_conn(conn, CLOSE_VIOLATION, "too many refused requests")
        {
            self.stats.count("protocol_violations");
        }
    }

    /// Takes one costly request from the connection's and its address's
    /// buckets.
    fn charge(&mut self, now: Now, conn: ConnId) -> Result<(), Refusal> {
        let (rate, burst) = self.cfg.ip_rate;
        let Some(c) = self.conns.get_mut(&conn) else {
            return Err(Refusal::new(ErrorCode::Malformed, "no such connection"));
        };
        let per_conn = c.costly.take(1.0, now.mono);
        let source = c.source;
        let per_source = self
            .costly_per_source
            .entry(source)
            .or_insert_with(|| TokenBucket::new(rate, burst, now.mono))
            .take(1.0, now.mono);
        match per_conn.and(per_source) {
            Ok(()) => Ok(()),
            Err(wait) => Err(Refusal {
                code: ErrorCode::RateLimited,
                retry_after_ms: as_ms32(wait),
                detail: format!(
                    "rate limited: at most {} registrations, meetings and relay requests per second per connection",
                    self.cfg.conn_rate.0
                ),
            }),
        }
    }

    fn request(&mut self, now: Now, conn: ConnId, req: ReqId, request: Request) {
        let costly = matches!(
            request,
            Request::Register(_)
                | Request::RegisterLive { .. }
                | Request::Meet(_)
                | Request::Relay(_)
                | Request::Collect
                | Request::Delivered(_)
        );
        if costly && let Err(r) = self.charge(now, conn) {
            self.refuse(conn, req, r);
            return;
        }
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let (peer, addr) = (c.peer, c.addr);
        self.touch(now, conn, false);
        match request {
            Request::WhoAmI => self.respond(conn, req, Response::YouAre(addr)),
            Request::Register(record) => self.register(now, conn, req, record, None),
            Request::RegisterLive { record, withdrawal } => {
                self.register(now, conn, req, record, Some(withdrawal))
            }
            Request::Lookup(id) => {
                let r = self.lookup(&id, now).map(|r| (**r).clone());
                self.respond(conn, req, Response::Record(r));
            }
            Request::LookupName(name) => {
                let r = match check_name(&name) {
                    Ok(()) => self.holders(&name, now, 1).into_iter().next(),
                    Err(_) => None,
                };
                self.respond(conn, req, Response::Record(r.map(|r| (*r).clone())));
            }
            Request::FindName(name) => {
                let all = match check_name(&name) {
                    Ok(()) => self.holders(&name, now, MAX_NAME_MATCHES),
                    Err(_) => Vec::new(),
                };
                let all = all.into_iter().map(|r| (*r).clone()).collect();
                self.respond(conn, req, Response::Records(all));
            }
            Request::Servers => {
                let mut servers = self.servers();
                servers.sort_by(|a, b| a.load().total_cmp(&b.load()).then(a.id.cmp(&b.id)));
                servers.truncate(MAX_SERVERS_LISTED);
                self.respond(conn, req, Response::Servers(servers));
            }
            Request::Meet(friend) => self.meet(now, conn, req, peer, friend),
            Request::Relay(friend) => self.relay(now, conn, req, peer, friend),
            // Kept per connection: one report, whoever registers on it.
            Request::Latency(v) => self.latency_report(now, conn, req, v),
            Request::Rearrange(friend) => self.rearrange(now, conn, req, peer, friend),
            Request::Deposit(letter) => self.deposit(now, conn, req, peer, letter),
            Request::Collect => self.collect(now, conn, req, peer),
            Request::Delivered(ids) => self.delivered(conn, req, peer, ids),
        }
    }

    fn latency_report(&mut self, now: Now, conn: ConnId, req: ReqId, v: LatencyVector) {
        let spacing = self.cfg.latency_report_spacing;
        let last = self
            .conns
            .get(&conn)
            .and_then(|c| c.latency.as_ref())
            .map(|l| l.0);
        if let Err(refusal) = spaced(last, spacing, now, "latency reported too often") {
            self.refuse(conn, req, refusal);
            return;
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.latency = Some((now.mono, v));
        }
        self.stats.count("latency_reports");
        self.respond(conn, req, Response::Noted);
    }

    /// The last latency report of `peer`'s live connection here, if any.
    pub fn latency_of(&self, peer: &PeerId) -> Option<&LatencyVector> {
        self.conns.get(&self.home_conn(peer)?)?.rtts()
    }

    fn holders(&self, name: &str, now: Now, max: usize) -> Vec<Arc<PeerRecord>> {
        let (me, members) = (self.me, &self.members);
        self.table
            .holders(name, now.unix(), |h| *h == me || members.is_live(h), max)
            .into_iter()
            .cloned()
            .collect()
    }

    // ----- records -----

    /// The checks every record meets, wherever it comes from.
    fn check_record(&self, now: Now, r: &PeerRecord) -> Result<(), RecordError> {
        if self.cfg.verify_signatures {
            r.verify()?;
        } else {
            r.validate()?;
        }
        let b = &r.body;
        if b.expires_at > now.unix().saturating_add(MAX_TTL) {
            return Err(RecordError::Invalid("expires more than an hour from now"));
        }
        if b.expires_at.saturating_add(MAX_TTL) <= now.unix() {
            return Err(RecordError::Invalid("expired more than an hour ago"));
        }
        let now_ms = now.unix_ms.saturating_add(999);
        if b.seq > now_ms.saturating_add(MAX_SEQ_AHEAD_MS) {
            return Err(RecordError::Invalid(
                "seq is more than 10 minutes ahead of this server's clock (seq counts milliseconds)",
            ));
        }
        Ok(())
    }

    fn held(&self, r: &PeerRecord) -> Held {
        match self.table.get(&r.body.peer) {
            None => Held::Missing,
            Some(h) if h.body.seq < r.body.seq => Held::Older,
            Some(h) if h.body.seq == r.body.seq && h.sig == r.sig => Held::Same,
            Some(h) => Held::Newer(h.body.seq),
        }
    }

    /// The most records homed at `home` this table accepts: its announced
    /// capacity (ours if unknown), never above ours × 10.
    fn home_cap(&self, home: &PeerId) -> u32 {
        let announced = if *home == self.me {
            self.cfg.capacity
        } else {
            self.members
                .get(home)
                .map(|e| e.record.capacity)
                .unwrap_or(self.cfg.capacity)
        };
        announced.min(self.cfg.capacity.saturating_mul(10))
    }

    /// Whether storing `r` (newer than ours) stays within the per-home and
    /// table caps.
    fn within_caps(&self, r: &PeerRecord, now: Now, held: &Held) -> Result<(), ErrorCode> {
        let live = r.is_live(now.unix());
        let homed_already = self
            .table
            .get(&r.body.peer)
            .is_some_and(|h| h.body.home_server == r.body.home_server && h.is_live(now.unix()));
        if live
            && !homed_already
            && self.table.homed_at(&r.body.home_server) >= self.home_cap(&r.body.home_server)
        {
            return Err(ErrorCode::ServerFull);
        }
        if matches!(held, Held::Missing) && self.table.len() >= self.cfg.max_records {
            return Err(ErrorCode::TableFull);
        }
        Ok(())
    }

    fn broadcast(&mut self, payload: Payload) {
        self.out.push_back(Output::Broadcast(payload.encode()));
    }

    fn register(
        &mut self,
        now: Now,
        conn: ConnId,
        req: ReqId,
        record: PeerRecord,
        withdrawal: Option<PeerRecord>,
    ) {
        match self.admit_registration(now, conn, &record, withdrawal.as_ref()) {
            Err(r) => self.refuse(conn, req, r),
            Ok(held) => {
                self.touch(now, conn, true);
                let record = Arc::new(record);
                if !matches!(held, Held::Same) {
                    self.table.insert(record.clone(), now.mono, now.unix());
                    self.broadcast(Payload::Record(record.clone()));
                    self.stats.count("registrations");
                }
                let peer = record.body.peer;
                let Some(source) = self.conns.get(&conn).map(|c| c.source) else {
                    return;
                };
                match withdrawal {
                    Some(withdrawal) => {
                        let old = self.presence.insert(
                            peer,
                            Presence {
                                conn,
                                source,
                                withdrawal,
                            },
                        );
                        if let Some(old) = old {
                            self.source_live(old.source, false);
                        }
                        self.source_live(source, true);
                        // Notices go to the connection the record lives on.
                        self.clients.insert(peer, conn);
                        self.record_arrived(now, &record);
                        self.replicate(now, conn, req, record, Vec::new(), 0);
                    }
                    None => {
                        // Withdrawn by the client itself: nothing to publish later.
                        if let Some(old) = self.presence.remove(&peer) {
                            self.source_live(old.source, false);
                        }
                        self.respond(conn, req, Response::Registered);
                    }
                }
            }
        }
    }

    /// Every check of a client's own registration; on success, what we
    /// held.
    fn admit_registration(
        &mut self,
        now: Now,
        conn: ConnId,
        record: &PeerRecord,
        withdrawal: Option<&PeerRecord>,
    ) -> Result<Held, Refusal> {
        let Some(c) = self.conns.get(&conn) else {
            return Err(Refusal::new(ErrorCode::Malformed, "no such connection"));
        };
        let (peer, addr, source) = (c.peer, c.addr, c.source);
        let b = &record.body;
        if b.peer != peer {
            return Err(Refusal::new(
                ErrorCode::NotOwnRecord,
                "a client may only register its own record",
            ));
        }
        if b.home_server != self.me {
            return Err(Refusal::new(
                ErrorCode::WrongHome,
                "the record must name this server as home",
            ));
        }
        if b.public_addr != Some(addr) {
            return Err(Refusal::new(
                ErrorCode::WrongAddress,
                format!("the record's public address must be the one this server sees: {addr}"),
            ));
        }
        let record_error = |e: RecordError| {
            let code = match e {
                RecordError::BadSignature => ErrorCode::BadSignature,
                RecordError::Invalid(_) => ErrorCode::Invalid,
                RecordError::Stale { .. } => ErrorCode::Stale,
            };
            Refusal::new(code, e.to_string())
        };
        self.check_record(now, record).map_err(record_error)?;
        match withdrawal {
            Some(w) => w.check_withdrawal(record, now.unix()).map_err(|e| {
                Refusal::new(ErrorCode::Invalid, format!("withdrawal refused: {e}"))
            })?,
            None if record.is_live(now.unix()) => {
                return Err(Refusal::new(
                    ErrorCode::Invalid,
                    "a live record needs RegisterLive with its withdrawal (update the client)",
                ));
            }
            None => {}
        }
        let held = self.held(record);
        if let Held::Newer(have) = held {
            return Err(record_error(RecordError::Stale { got: b.seq, have }));
        }
        if withdrawal.is_some() && !self.presence.contains_key(&peer) {
            let from_source = self.live_per_source.get(&source).copied().unwrap_or(0);
            if from_source >= self.cfg.per_ip_records {
                return Err(Refusal::new(
                    ErrorCode::QuotaAddress,
                    format!(
                        "at most {} live registrations from one address",
                        self.cfg.per_ip_records
                    ),
                ));
            }
            if self.presence.len() >= self.cfg.capacity as usize {
                return Err(Refusal::new(
                    ErrorCode::ServerFull,
                    "this server is full: ask for another server",
                ));
            }
        }
        if matches!(held, Held::Missing) {
            let per_min = self.cfg.new_ids_per_min;
            let bucket = self
                .new_ids_per_source
                .entry(source)
                .or_insert_with(|| TokenBucket::new(per_min / 60.0, per_min * 2.0, now.mono));
            if let Err(wait) = bucket.take(1.0, now.mono) {
                return Err(Refusal {
                    code: ErrorCode::QuotaNewIds,
                    retry_after_ms: as_ms32(wait),
                    detail: format!(
                        "too many new identities from your address (at most {per_min} a minute)"
                    ),
                });
            }
        }
        if !matches!(held, Held::Same) {
            self.within_caps(record, now, &held).map_err(|code| {
                let detail = match code {
                    ErrorCode::TableFull => "the cluster's peer table is full",
                    _ => "this server is full: ask for another server",
                };
                Refusal::new(code, detail)
            })?;
            if let Err(wait) = self.budget.take(1.0, now.mono) {
                return Err(Refusal {
                    code: ErrorCode::RateLimited,
                    retry_after_ms: as_ms32(wait),
                    detail: "this server is busy replicating registrations".into(),
                });
            }
        }
        Ok(held)
    }

    /// Copies `record` to one more live server and answers the request
    /// once it says it has it. Each attempt waits `ack_timeout`; with no
    /// neighbor at hand an attempt waits for one; after `ack_tries`
    /// attempts the client is told to retry.
    fn replicate(
        &mut self,
        now: Now,
        conn: ConnId,
        req: ReqId,
        record: Arc<PeerRecord>,
        mut tried: Vec<PeerId>,
        attempts: u32,
    ) {
        // Alone: no neighbor, and every other server known is dead or gone
        // (a single-server cluster, or the last survivor). Cut off from
        // servers it still believes alive, a server does not acknowledge on
        // its own: it may be on the losing side of a partition. Past
        // `dead_after` it serves alone — its clients' records are then only
        // on its side, and offline everywhere if it dies, so nothing a
        // client relies on is lost (it registers again elsewhere).
        let alone = self.neighbors.is_empty() && self.members.live().next().is_none();
        if alone {
            // Alone in the cluster (from the start, or since the servers
            // an earlier attempt asked were found dead): there is nobody
            // to copy it to.
            self.stats.count("registrations_acked_alone");
            self.respond(conn, req, Response::Registered);
            return;
        }
        if attempts >= self.cfg.ack_tries {
            self.refuse(
                conn,
                req,
                Refusal {
                    code: ErrorCode::NotReplicated,
                    retry_after_ms: 1_000,
                    detail: "the record could not be copied to another server in time".into(),
                },
            );
            return;
        }
        let mut candidates: Vec<PeerId> = self
            .neighbors
            .iter()
            .filter(|n| !tried.contains(n))
            .copied()
            .collect();
        if candidates.is_empty() {
            // Every neighbor was asked once: ask them again.
            candidates = self.neighbors.iter().copied().collect();
        }
        let token = self.next_token;
        self.next_token += 1;
        if !candidates.is_empty() {
            let pick = candidates[(self.random() % candidates.len() as u64) as usize];
            if !tried.contains(&pick) {
                tried.push(pick);
            }
            self.out.push_back(Output::ToServer {
                to: pick,
                addr: None,
                msg: ServerMsg::Store {
                    token,
                    record: (*record).clone(),
                },
            });
        }
        self.acks.insert(
            token,
            Ack {
                conn,
                req,
                record,
                tried,
                attempts: attempts + 1,
                deadline: now.mono + self.cfg.ack_timeout,
            },
        );
    }

    /// A record from another server (broadcast, anti-entropy or a store
    /// request): checked, capped, stored if newer. `Ok(true)`: stored now;
    /// `Ok(false)`: we had it or newer.
    fn absorb(&mut self, now: Now, record: Arc<PeerRecord>) -> Result<bool, &'static str> {
        if let Err(e) = self.check_record(now, &record) {
            return Err(e.reason());
        }
        let held = self.held(&record);
        match held {
            Held::Same | Held::Newer(_) => return Ok(false),
            Held::Missing | Held::Older => {}
        }
        if let Err(code) = self.within_caps(&record, now, &held) {
            return Err(match code {
                ErrorCode::TableFull => "table_full",
                _ => "home_cap",
            });
        }
        self.table.insert(record.clone(), now.mono, now.unix());
        // A client registered here that re-registered elsewhere is no
        // longer ours to withdraw.
        if record.body.home_server != self.me
            && let Some(p) = self.presence.remove(&record.body.peer)
        {
            self.source_live(p.source, false);
        }
        self.record_arrived(now, &record);
        Ok(true)
    }

    fn reject(&mut self, reason: &'static str) {
        *self.stats.rejected.entry(reason).or_insert(0) += 1;
    }

    // ----- rendezvous -----

    /// When both sides of a meeting start punching: once the later of the
    /// two has heard of it. `a`: the RTT to the client asking here; `b`:
    /// the other's, when it is connected here too; otherwise the other is
    /// a client of `home`, whose notice goes one server hop (half the
    /// measured RTT to it, else [`Config::server_hop`]) and then, we
    /// assume, about as far as ours.
    fn start_instant(&self, now: Now, a: Duration, b: Option<Duration>, home: PeerId) -> u64 {
        let later = match b {
            Some(b) => (a / 2).max(b / 2),
            None => {
                let hop = if home == self.me {
                    Duration::ZERO
                } else {
                    self.server_rtts
                        .get(&home)
                        .map_or(self.cfg.server_hop, |rtt| *rtt / 2)
                };
                hop + a / 2
            }
        } + START_SLACK;
        now.unix_ms + millis(later.min(self.cfg.max_start_delay))
    }

    fn notify(&mut self, now: Now, conn: ConnId, record: &PeerRecord, start_at_ms: u64) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let start_in_ms = start_delay(
            start_at_ms,
            now.unix_ms,
            c.rtt / 2,
            self.cfg.max_start_delay,
        );
        self.stats.count("notices");
        self.out.push_back(Output::Notify {
            conn,
            notice: Notice::Friend {
                record: record.clone(),
                start_in_ms,
            },
        });
    }

    /// Tells `to` (if connected here) about `from` (a client connected
    /// here, whose latency report is `from_latency`) and chooses their
    /// relay; or asks the home server of `to` to do both — that one
    /// server, not the cluster.
    fn introduce(
        &mut self,
        now: Now,
        to: &PeerRecord,
        from: &PeerRecord,
        from_latency: Option<LatencyVector>,
        start_at_ms: u64,
    ) {
        if let Some(c) = self.home_conn(&to.body.peer) {
            self.notify(now, c, from, start_at_ms);
            self.arrange_relay(now, c, from.body.peer, from_latency.as_ref(), None);
            return;
        }
        let home = to.body.home_server;
        if home == self.me {
            return;
        }
        let addr = self
            .members
            .get(&home)
            .and_then(|e| e.record.addrs.first().copied());
        self.stats.count("rendezvous_sent");
        self.out.push_back(Output::ToServer {
            to: home,
            addr,
            msg: ServerMsg::Meeting {
                to: to.body.peer,
                from: from.clone(),
                start_at_ms,
                latency: from_latency,
            },
        });
    }

    /// The relays for the client on `conn` (here) and `friend` (here too
    /// when `friend_home` is `None`, else connected to `friend_home`):
    /// seed 003's rule over both latency reports, ranked. Both are told,
    /// and so is every ranked relay that is a third server (it may then
    /// relay the pair).
    fn arrange_relay(
        &mut self,
        now: Now,
        conn: ConnId,
        friend: PeerId,
        friend_latency: Option<&LatencyVector>,
        friend_home: Option<PeerId>,
    ) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let (peer, own) = (c.peer, c.rtts());
        // Ties are broken by the pair, not by this server's state: if both
        // sides arrange the same meeting, they choose alike.
        let (lo, hi) = pair(peer, friend);
        let seed =
            lo.0.iter()
                .chain(hi.0.iter())
                .fold(0u64, |h, b| crate::latency::splitmix(h ^ u64::from(*b)));
        let relays = match (own, friend_latency) {
            (Some(a), Some(b)) => {
                let (me, members) = (self.me, &self.members);
                let live = |id: &PeerId| *id == me || members.is_live(id);
                crate::latency::rank_relays(a, b, live, seed, crate::latency::MAX_RELAYS)
            }
            _ => Vec::new(),
        };
        self.stats.count(if relays.is_empty() {
            "relay_choice_fallbacks"
        } else {
            "relay_choices"
        });
        if relays.iter().any(|(r, _)| *r == self.me) {
            self.met(now, peer, friend);
        }
        self.notify_relay(conn, friend, relays.clone());
        let choice = |relays: &Vec<(PeerId, u32)>| ServerMsg::RelayChoice {
            a: friend,
            b: peer,
            relays: relays.clone(),
        };
        match friend_home {
            None => {
                if let Some(fc) = self.home_conn(&friend) {
                    self.notify_relay(fc, peer, relays.clone());
                }
            }
            Some(home) => self.send_server(home, choice(&relays)),
        }
        for &(r, _) in &relays {
            if r != self.me && Some(r) != friend_home {
                self.send_server(r, choice(&relays));
            }
        }
    }

    /// `relays` is at most [`crate::latency::MAX_RELAYS`] long (ranked
    /// here, or cut to it from a `RelayChoice`).
    fn notify_relay(&mut self, conn: ConnId, friend: PeerId, relays: Vec<(PeerId, u32)>) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        self.stats.count("notices");
        self.out.push_back(Output::Notify {
            conn,
            notice: Notice::Relay { friend, relays },
        });
    }

    /// `Rearrange(friend)` from the client on `conn` (registered live
    /// here): the pair's relays chosen again with the client's latest
    /// report, by the friend's home (here, or told by
    /// `ServerMsg::Rearrange`). No meeting through this server is needed —
    /// the client may have moved home since — but it costs what a meeting
    /// costs.
    fn rearrange(&mut self, now: Now, conn: ConnId, req: ReqId, peer: PeerId, friend: PeerId) {
        if self.home_conn(&peer) != Some(conn) {
            let detail = "register live on this connection before asking for relays";
            self.refuse(conn, req, Refusal::new(ErrorCode::NotRegistered, detail));
            return;
        }
        let spacing = self.cfg.latency_report_spacing;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if let Err(refusal) = spaced(c.rearranged, spacing, now, "relays rearranged too often") {
            self.refuse(conn, req, refusal);
            return;
        }
        c.rearranged = Some(now.mono);
        let latency = c.rtts().cloned();
        // Like a meeting (it tells the friend and names relays for the
        // pair), it costs the friend's introduction bucket; the friend's
        // client ignores rankings for peers it is not chatting with.
        if let Err(refusal) = self.introduce_allowed(now, friend) {
            self.refuse(conn, req, refusal);
            return;
        }
        self.stats.count("rearrangements");
        self.met(now, peer, friend);
        self.respond(conn, req, Response::Noted);
        if let Some(fc) = self.home_conn(&friend) {
            self.arrange_relay(now, fc, peer, latency.as_ref(), None);
        } else if let (Some(home), Some(latency)) = (
            self.lookup(&friend, now).map(|r| r.body.home_server),
            latency,
        ) && home != self.me
        {
            self.send_server(
                home,
                ServerMsg::Rearrange {
                    to: friend,
                    from: peer,
                    latency,
                },
            );
        }
    }

    /// One token of `peer`'s introduction bucket (`introductions_per_peer`):
    /// what telling a peer about someone costs.
    fn introduce_allowed(&mut self, now: Now, peer: PeerId) -> Result<(), Refusal> {
        let (rate, burst) = self.cfg.introductions_per_peer;
        let bucket = self
            .introductions
            .entry(peer)
            .or_insert_with(|| TokenBucket::new(rate, burst, now.mono));
        bucket.take(1.0, now.mono).map_err(|wait| Refusal {
            code: ErrorCode::RateLimited,
            retry_after_ms: as_ms32(wait),
            detail: "that peer is being asked for too often: try again later".into(),
        })
    }

    /// Whether `a` and `b` met through this server (or were named to it as
    /// their relay) within `relay_met_within`, the relay's rule.
    fn met_recently(&self, now: Now, a: PeerId, b: PeerId) -> bool {
        self.met
            .get(&pair(a, b))
            .is_some_and(|t| now.mono.saturating_since(*t) <= self.cfg.relay_met_within)
    }

    /// The connection `peer`'s live record lives on here (its home is
    /// here), if any: where its notices go. Another connection of the
    /// peer (to a relay here, say) does not make this its home.
    fn home_conn(&self, peer: &PeerId) -> Option<ConnId> {
        self.presence.get(peer).map(|p| p.conn)
    }

    fn met(&mut self, now: Now, a: PeerId, b: PeerId) {
        self.met.insert(pair(a, b), now.mono);
    }

    fn meet(&mut self, now: Now, conn: ConnId, req: ReqId, peer: PeerId, friend: FriendRef) {
        if let FriendRef::Name(n) = &friend
            && let Err(e) = check_name(n)
        {
            self.refuse(conn, req, Refusal::new(ErrorCode::Invalid, e.to_string()));
            return;
        }
        let Some(mine) = self.lookup(&peer, now).cloned() else {
            self.refuse(
                conn,
                req,
                Refusal::new(
                    ErrorCode::NotRegistered,
                    "register before asking to meet someone",
                ),
            );
            return;
        };
        let mut theirs: Vec<Arc<PeerRecord>> = match &friend {
            FriendRef::Id(id) => self.lookup(id, now).cloned().into_iter().collect(),
            FriendRef::Name(n) => self.holders(n, now, MAX_NAME_MATCHES),
        };
        theirs.retain(|r| r.body.peer != peer);
        if theirs.len() > 1 {
            // A name several peers use: tell nobody, let the client choose.
            let all = theirs.iter().map(|r| (**r).clone()).collect();
            self.respond(conn, req, Response::Records(all));
            return;
        }
        if let Some(theirs) = theirs.pop() {
            if let Err(refusal) = self.introduce_allowed(now, theirs.body.peer) {
                self.refuse(conn, req, refusal);
                return;
            }
            let rtt = self.conns.get(&conn).map(|c| c.rtt).unwrap_or_default();
            let other_rtt = self
                .clients
                .get(&theirs.body.peer)
                .and_then(|c| self.conns.get(c))
                .map(|c| c.rtt);
            let start_at = self.start_instant(now, rtt, other_rtt, theirs.body.home_server);
            let latency = self.conns.get(&conn).and_then(Conn::rtts).cloned();
            self.introduce(now, &theirs, &mine, latency, start_at);
            self.met(now, peer, theirs.body.peer);
            let start_in_ms = start_delay(start_at, now.unix_ms, rtt / 2, self.cfg.max_start_delay);
            self.stats.count("meetings");
            self.respond(
                conn,
                req,
                Response::Friend {
                    record: (*theirs).clone(),
                    start_in_ms,
                },
            );
            return;
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.waits.contains(&friend) {
            self.respond(conn, req, Response::Waiting);
            return;
        }
        if c.waits.len() >= self.cfg.max_waits_per_conn || self.waits >= self.cfg.max_waits {
            let detail = format!(
                "at most {} meetings waited for at once per connection",
                self.cfg.max_waits_per_conn
            );
            self.refuse(conn, req, Refusal::new(ErrorCode::TooManyWaits, detail));
            return;
        }
        c.waits.push(friend.clone());
        self.waits += 1;
        match friend {
            FriendRef::Id(id) => self.waits_by_id.entry(id).or_default().insert(conn),
            FriendRef::Name(n) => self.waits_by_name.entry(n).or_default().insert(conn),
        };
        self.respond(conn, req, Response::Waiting);
    }

    /// Removes one wait of `conn` from the indexes.
    fn unwait(&mut self, conn: ConnId, w: &FriendRef) {
        let emptied = match w {
            FriendRef::Id(id) => self.waits_by_id.get_mut(id).map(|s| {
                s.remove(&conn);
                s.is_empty()
            }),
            FriendRef::Name(n) => self.waits_by_name.get_mut(n).map(|s| {
                s.remove(&conn);
                s.is_empty()
            }),
        };
        if emptied == Some(true) {
            match w {
                FriendRef::Id(id) => self.waits_by_id.remove(id),
                FriendRef::Name(n) => self.waits_by_name.remove(n),
            };
        }
        self.waits = self.waits.saturating_sub(1);
    }

    /// A live record arrived (from anywhere): whoever here waited for that
    /// peer — by id, or by its name when it is the name's only holder —
    /// hears about it, and the peer hears about them.
    fn record_arrived(&mut self, now: Now, record: &Arc<PeerRecord>) {
        if !record.is_live(now.unix()) {
            return;
        }
        let peer = record.body.peer;
        let mut waiters: Vec<(ConnId, FriendRef)> = self
            .waits_by_id
            .get(&peer)
            .into_iter()
            .flatten()
            .map(|c| (*c, FriendRef::Id(peer)))
            .collect();
        let name = &record.body.name;
        if self.waits_by_name.contains_key(name) {
            let holders = self.holders(name, now, 2);
            if holders.len() == 1 && holders[0].body.peer == peer {
                waiters.extend(
                    self.waits_by_name
                        .get(name)
                        .into_iter()
                        .flatten()
                        .map(|c| (*c, FriendRef::Name(name.clone()))),
                );
            }
        }
        for (conn, wait) in waiters {
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            if c.peer == peer {
                continue;
            }
            c.waits.retain(|w| *w != wait);
            let (waiter, rtt) = (c.peer, c.rtt);
            let latency = c.rtts().cloned();
            self.unwait(conn, &wait);
            let other_rtt = self
                .clients
                .get(&peer)
                .and_then(|c| self.conns.get(c))
                .map(|c| c.rtt);
            let start_at = self.start_instant(now, rtt, other_rtt, record.body.home_server);
            self.notify(now, conn, record, start_at);
            if let Some(mine) = self.lookup(&waiter, now).cloned() {
                self.introduce(now, record, &mine, latency, start_at);
            }
            self.met(now, waiter, peer);
            self.stats.count("meetings");
        }
    }

    // ----- relay -----

    fn relay(&mut self, now: Now, conn: ConnId, req: ReqId, peer: PeerId, friend: PeerId) {
        let Some(source) = self.conns.get(&conn).map(|c| c.source) else {
            return;
        };
        if friend == peer {
            self.refuse(
                conn,
                req,
                Refusal::new(ErrorCode::RelaySelf, "cannot relay to yourself"),
            );
            return;
        }
        // A pair that met here (or that a ranking named this server for),
        // or two peers both online in the cluster: the ranking's message to
        // a third server may still be on its way when the pair asks.
        // Unregistered keys get nothing.
        let both_online = self.lookup(&peer, now).is_some() && self.lookup(&friend, now).is_some();
        if !self.met_recently(now, peer, friend) && !both_online {
            let detail = "a relay needs a meeting first, or both peers online (Meet, then Relay)";
            self.refuse(conn, req, Refusal::new(ErrorCode::RelayNotMet, detail));
            return;
        }
        // A newer request for the same friend replaces an older one.
        if let Some(old) = self.relay_pending.remove(&(peer, friend)) {
            self.release_relay(peer, old.source);
            self.refuse(
                old.conn,
                old.req,
                Refusal::new(ErrorCode::Replaced, "replaced by a newer relay request"),
            );
        }
        let per_peer = self.relay_per_peer.get(&peer).copied().unwrap_or(0);
        let per_source = self.relay_per_source.get(&source).copied().unwrap_or(0);
        if per_peer >= self.cfg.relay_per_client || per_source >= self.cfg.relay_per_ip {
            let detail = format!(
                "relay limit: at most {} relay streams per client and {} per address",
                self.cfg.relay_per_client, self.cfg.relay_per_ip
            );
            self.refuse(conn, req, Refusal::new(ErrorCode::RelayLimit, detail));
            return;
        }
        if self.relay_sessions.len() >= self.cfg.relay_sessions {
            let detail = format!(
                "relay full: this server carries {} relay sessions already",
                self.cfg.relay_sessions
            );
            self.refuse(conn, req, Refusal::new(ErrorCode::RelayFull, detail));
            return;
        }
        *self.relay_per_peer.entry(peer).or_insert(0) += 1;
        *self.relay_per_source.entry(source).or_insert(0) += 1;
        match self.relay_pending.remove(&(friend, peer)) {
            Some(other) => {
                let session = self.next_session;
                self.next_session += 1;
                self.relay_sessions.insert(
                    session,
                    RelaySession {
                        halves: [(other.conn, friend, other.source), (conn, peer, source)],
                        started: now.mono,
                    },
                );
                self.stats.count("relay_sessions");
                self.out.push_back(Output::RelayPair {
                    session,
                    a: (other.conn, other.req),
                    b: (conn, req),
                    limits: self.cfg.relay,
                });
            }
            None => {
                self.relay_pending.insert(
                    (peer, friend),
                    RelayHalf {
                        conn,
                        req,
                        source,
                        since: now.mono,
                    },
                );
            }
        }
    }

    fn release_relay(&mut self, peer: PeerId, source: Source) {
        if let Some(n) = self.relay_per_peer.get_mut(&peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.relay_per_peer.remove(&peer);
            }
        }
        if let Some(n) = self.relay_per_source.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.relay_per_source.remove(&source);
            }
        }
    }

    fn end_session(&mut self, session: SessionId, tell_driver: bool) {
        if let Some(s) = self.relay_sessions.remove(&session) {
            for (_, peer, source) in s.halves {
                self.release_relay(peer, source);
            }
            if tell_driver {
                self.out.push_back(Output::RelayStop { session });
            }
        }
    }

    // ----- servers -----

    fn delivery(&mut self, now: Now, payload: Payload) {
        match payload {
            Payload::Record(record) => {
                if let Err(reason) = self.absorb(now, record) {
                    self.reject(reason);
                }
            }
            Payload::Member(msg) => self.member_msg(now, msg),
        }
    }

    fn member_msg(&mut self, now: Now, msg: Msg) {
        // Only cluster members speak for themselves or about others.
        let admitted = match &msg {
            Msg::Announce { record, .. } => self.admits(&record.id),
            Msg::Leave { id, .. } => self.admits(id),
            Msg::Suspect { id, by, .. } => self.admits(id) && self.admits(by),
        };
        if !admitted {
            self.stats.count("membership_rejected");
            return;
        }
        if self.cfg.verify_signatures && msg.verify().is_err() {
            self.stats.count("membership_rejected");
            return;
        }
        // A suspicion of us at a version we have moved past needs no
        // refutation (the newer announce is on its way).
        if let Msg::Suspect { id, version, .. } = &msg
            && *id == self.me
            && *version < self.my_record.version
        {
            return;
        }
        match self.members.apply(&msg, now.mono) {
            Reply::Refute if !self.left => {
                self.stats.count("refutations");
                self.announce();
            }
            Reply::Revived => {
                self.stats.count("members_revived");
                self.announce_soon = true;
            }
            _ => {}
        }
    }

    fn announce(&mut self) {
        self.my_record.version = self.my_record.version.saturating_add(1);
        self.my_record.clients = u32::try_from(self.presence.len()).unwrap_or(u32::MAX);
        let msg = Msg::announce(&self.key, self.my_record.clone());
        self.broadcast(Payload::Member(msg));
    }

    fn peer_failed(&mut self, peer: PeerId) {
        let version = self
            .members
            .get(&peer)
            .filter(|e| matches!(e.liveness, Liveness::Alive | Liveness::Suspect(_)))
            .map(|e| e.record.version);
        if let Some(version) = version {
            self.members.suspect(peer, version, self.me);
            let msg = Msg::suspect(&self.key, peer, version, self.me);
            self.broadcast(Payload::Member(msg));
        }
    }

    fn send_server(&mut self, to: PeerId, msg: ServerMsg) {
        self.out.push_back(Output::ToServer {
            to,
            addr: None,
            msg,
        });
    }

    fn server_message(&mut self, now: Now, from: PeerId, msg: ServerMsg) {
        match msg {
            m @ (ServerMsg::Keep { .. }
            | ServerMsg::Kept { .. }
            | ServerMsg::Fetch { .. }
            | ServerMsg::Held { .. }
            | ServerMsg::Discard { .. }
            | ServerMsg::MailFor { .. }) => self.mail_message(now, from, m),
            ServerMsg::Digest(d) => {
                let Ok(d) = <Digest>::try_from(d.as_slice()) else {
                    self.reject("bad_digest");
                    return;
                };
                self.answer_digest(from, &d);
            }
            ServerMsg::Versions {
                bucket,
                after,
                upto,
                versions,
            } => self.compare_versions(now, from, bucket, after, upto, versions),
            ServerMsg::Want(ids) => {
                let records: Vec<PeerRecord> = ids
                    .iter()
                    .take(self.cfg.page_versions)
                    .filter_map(|id| self.table.get(id))
                    .map(|r| (**r).clone())
                    .collect();
                self.send_records(from, records);
            }
            ServerMsg::Records(records) => {
                let mut learned = 0u64;
                for r in records.into_iter().take(self.cfg.page_records * 4) {
                    match self.absorb(now, Arc::new(r)) {
                        Ok(true) => learned += 1,
                        Ok(false) => {}
                        Err(reason) => self.reject(reason),
                    }
                }
                if learned > 0 {
                    self.stats.add("records_repaired", learned);
                    // Tell the other neighbors soon: an epidemic push.
                    let soon = now.mono + self.cfg.sync_retry;
                    for (n, at) in self.next_sync.iter_mut() {
                        if *n != from && *at > soon {
                            *at = soon;
                        }
                    }
                }
            }
            ServerMsg::Store { token, record } => match self.absorb(now, Arc::new(record)) {
                Ok(stored) => {
                    if stored {
                        self.stats.count("records_stored_for_peer");
                    }
                    self.send_server(from, ServerMsg::Stored { token });
                }
                Err(reason) => self.reject(reason),
            },
            ServerMsg::Stored { token } => {
                if self
                    .acks
                    .get(&token)
                    .is_some_and(|a| a.tried.contains(&from))
                    && let Some(a) = self.acks.remove(&token)
                {
                    self.stats.count("registrations_acked");
                    self.respond(a.conn, a.req, Response::Registered);
                }
            }
            ServerMsg::Rendezvous {
                to,
                from: who,
                start_at_ms,
            } => self.meeting(now, from, to, &who, start_at_ms, None),
            ServerMsg::Meeting {
                to,
                from: who,
                start_at_ms,
                latency,
            } => self.meeting(now, from, to, &who, start_at_ms, latency.as_ref()),
            ServerMsg::RelayChoice { a, b, mut relays } => {
                relays.truncate(crate::latency::MAX_RELAYS);
                if relays.iter().any(|(r, _)| *r == self.me) {
                    self.met(now, a, b);
                }
                if let Some(conn) = self.home_conn(&a) {
                    self.notify_relay(conn, b, relays);
                }
            }
            ServerMsg::Rearrange {
                to,
                from: who,
                latency,
            } => {
                if let Some(conn) = self.home_conn(&to) {
                    self.met(now, to, who);
                    self.arrange_relay(now, conn, who, Some(&latency), Some(from));
                }
            }
        }
    }

    /// Another server's client `who` meets our client `to` (if still
    /// here): tell it, and choose their relay.
    fn meeting(
        &mut self,
        now: Now,
        sender: PeerId,
        to: PeerId,
        who: &PeerRecord,
        start_at_ms: u64,
        latency: Option<&LatencyVector>,
    ) {
        if let Err(e) = self.check_record(now, who) {
            self.reject(e.reason());
            return;
        }
        if let Some(conn) = self.home_conn(&to) {
            self.met(now, to, who.body.peer);
            self.notify(now, conn, who, start_at_ms);
            self.arrange_relay(now, conn, who.body.peer, latency, Some(sender));
        }
    }

    fn send_records(&mut self, to: PeerId, records: Vec<PeerRecord>) {
        let page = self.cfg.page_records.max(1);
        let mut records = records;
        while !records.is_empty() {
            let rest = records.split_off(records.len().min(page));
            self.stats.add("sync_records_sent", records.len() as u64);
            self.send_server(to, ServerMsg::Records(records));
            records = rest;
        }
    }

    fn answer_digest(&mut self, from: PeerId, theirs: &Digest) {
        let differing = self.table.differing(theirs);
        if differing.is_empty() {
            return;
        }
        self.stats.count("sync_rounds_answered");
        // A rotating start, so every bucket gets its turn in big repairs.
        let start = differing
            .iter()
            .position(|b| *b >= self.sync_cursor)
            .unwrap_or(0);
        let chosen: Vec<u8> = differing
            .iter()
            .cycle()
            .skip(start)
            .take(differing.len().min(self.cfg.sync_buckets_per_round))
            .copied()
            .collect();
        if let Some(last) = chosen.last() {
            self.sync_cursor = last.wrapping_add(1);
        }
        let page = self.cfg.page_versions.max(1);
        for b in chosen {
            // At most 16 pages of one bucket per round; the next round goes
            // on from there, and after the bucket's end starts over.
            let mut after = self.sync_resume.remove(&(from, b));
            for page_no in 0..16 {
                let versions = self.table.versions(b, after, page);
                let full = versions.len() == page;
                let upto = if full {
                    versions.last().map(|v| v.0)
                } else {
                    None
                };
                self.send_server(
                    from,
                    ServerMsg::Versions {
                        bucket: b,
                        after,
                        upto,
                        versions,
                    },
                );
                if !full {
                    break;
                }
                after = upto;
                if page_no == 15
                    && let Some(last) = after
                {
                    self.sync_resume.insert((from, b), last);
                }
            }
        }
    }

    fn compare_versions(
        &mut self,
        now: Now,
        from: PeerId,
        bucket: u8,
        after: Option<PeerId>,
        upto: Option<PeerId>,
        versions: Vec<(PeerId, u64)>,
    ) {
        if versions.len() > self.cfg.page_versions {
            self.reject("oversized_page");
            return;
        }
        let theirs: BTreeMap<PeerId, u64> = versions
            .into_iter()
            .filter(|(p, _)| crate::table::bucket_of(p) == bucket)
            .collect();
        let limit = self.cfg.page_records * 4;
        let newer: Vec<PeerRecord> = self
            .table
            .range(bucket, after, upto)
            .filter(|r| theirs.get(&r.body.peer).is_none_or(|s| *s < r.body.seq))
            .take(limit)
            .map(|r| (**r).clone())
            .collect();
        let want: Vec<PeerId> = theirs
            .iter()
            .filter(|(p, s)| self.table.seq_of(p).is_none_or(|mine| mine < **s))
            .map(|(p, _)| *p)
            .collect();
        self.send_records(from, newer);
        if !want.is_empty() {
            self.send_server(from, ServerMsg::Want(want));
        }
        // The tables differ: another round soon.
        let soon = now.mono + self.cfg.sync_retry;
        if let Some(at) = self.next_sync.get_mut(&from)
            && *at > soon
        {
            *at = soon;
        }
    }

    // ----- time -----

    fn tick(&mut self, now: Now) {
        let load_moved = {
            let (now_n, then) = (
                self.presence.len() as u64,
                u64::from(self.my_record.clients),
            );
            now_n.abs_diff(then) >= (u64::from(self.cfg.capacity) / 100).max(10)
        };
        let early = (load_moved || self.announce_soon)
            && now.mono.saturating_since(self.last_announce) >= self.announce_spacing();
        if let Phase::Drawn(u) = self.phase {
            // The interval grows as the cluster is learnt: the second
            // announce stays at the same fraction of it.
            self.next_heartbeat = self.last_announce + self.announce_interval().mul_f64(u);
        }
        if !self.left && (now.mono >= self.next_heartbeat || early) {
            self.announce_soon = false;
            let interval = self.announce_interval();
            self.next_heartbeat = now.mono
                + match self.phase {
                    Phase::Start => {
                        let u = (self.random() >> 11) as f64 / (1u64 << 53) as f64;
                        self.phase = Phase::Drawn(u);
                        interval.mul_f64(u)
                    }
                    Phase::Drawn(_) | Phase::Regular => {
                        self.phase = Phase::Regular;
                        interval
                    }
                };
            self.last_announce = now.mono;
            self.announce();
        }
        let due: Vec<PeerId> = self
            .next_sync
            .iter()
            .filter(|(_, at)| **at <= now.mono)
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            self.next_sync.insert(p, now.mono + self.cfg.sync_interval);
            self.stats.count("sync_rounds_started");
            let digest = self.table.digest().to_vec();
            debug_assert_eq!(digest.len(), BUCKETS);
            self.send_server(p, ServerMsg::Digest(digest));
        }
        if now.mono >= self.next_sweep {
            self.next_sweep = now.mono + Duration::from_secs(1);
            self.sweep(now);
        }
    }

    /// [`Config::tempo_factor`] at the servers believed alive, this one
    /// included.
    fn tempo_factor(&self) -> f64 {
        self.cfg.tempo_factor(self.members.live_count() + 1)
    }

    /// The interval between two regular announces at the cluster's
    /// current size: `heartbeat`, or longer in a large cluster (see
    /// [`Config::announce_budget`]).
    pub fn announce_interval(&self) -> Duration {
        scaled(self.cfg.heartbeat, self.tempo_factor())
    }

    /// The shortest time between two announces (early ones included) at
    /// the cluster's current size (see [`Config::announce_budget`]).
    pub fn announce_spacing(&self) -> Duration {
        self.cfg.announce_spacing_at(self.members.live_count() + 1)
    }

    /// Silence after which a server is declared dead at the cluster's
    /// current size: `dead_after`, scaled like the announce interval.
    pub fn dead_after(&self) -> Duration {
        scaled(self.cfg.dead_after, self.tempo_factor())
    }

    /// When the next regular announce is due (none once left).
    pub fn next_announce(&self) -> Option<Time> {
        (!self.left).then_some(self.next_heartbeat)
    }

    fn sweep(&mut self, now: Now) {
        while let Some(&(since, conn)) = self.anonymous.first()
            && now.mono.saturating_since(since) >= self.cfg.anonymous_idle
        {
            self.close_anonymous(conn, "idle without a registration");
        }
        let dead_after = self.dead_after();
        self.members.set_dead_after(dead_after);
        self.members.expire(now.mono);
        let forgotten = self.table.expire(now.unix());
        self.stats.add("records_forgotten", forgotten as u64);
        let within = self.cfg.relay_met_within;
        self.met
            .retain(|_, t| now.mono.saturating_since(*t) <= within);
        // Buckets of addresses that went quiet are full again: forget them.
        let mono = now.mono;
        let conns = &self.conns_per_source;
        self.costly_per_source
            .retain(|s, b| conns.contains_key(s) || !b.is_full(mono));
        self.mail_per_source
            .retain(|s, b| conns.contains_key(s) || !b.is_full(mono));
        self.new_ids_per_source.retain(|_, b| !b.is_full(mono));
        self.introductions.retain(|_, b| !b.is_full(mono));
        // Relay halves whose friend never came.
        let wait = self.cfg.relay_wait;
        for k in due(&self.relay_pending, now.mono, |h| h.since + wait) {
            if let Some(h) = self.relay_pending.remove(&k) {
                self.release_relay(k.0, h.source);
                let detail = format!("the friend did not join the relay within {wait:?}");
                self.refuse(
                    h.conn,
                    h.req,
                    Refusal::new(ErrorCode::RelayNoFriend, detail),
                );
            }
        }
        let lifetime = self.cfg.relay_lifetime;
        for s in due(&self.relay_sessions, now.mono, |s| s.started + lifetime) {
            self.stats.count("relay_sessions_expired");
            self.end_session(s, true);
        }
        // Registrations whose copy was not acknowledged: another server.
        for t in due(&self.acks, now.mono, |a| a.deadline) {
            if let Some(a) = self.acks.remove(&t) {
                self.stats.count("store_timeouts");
                self.replicate(now, a.conn, a.req, a.record, a.tried, a.attempts);
            }
        }
        self.mail_sweep(now);
    }
}
