//! The `servers` scenario: `S` overlay cores with a `rendezvous::Server` on
//! each, synthetic clients registering, meeting and leaving, one server
//! crash and one 50/50 partition, measured end to end.
//!
//! Wiring (what `chatd serve` does over QUIC, here in simulated time):
//! - a server's `Output::Broadcast` becomes `overlay::State::broadcast` on
//!   its node; every first delivery (`Event::Received`) becomes
//!   `Input::Delivery`; `NeighborUp`/`NeighborDown` events become the same
//!   inputs; a `PeerDown` the engine tells a node (a crash or a partition
//!   noticed after `--detect-secs`) becomes `Input::PeerFailed`;
//! - `Output::ToServer` is delivered to its target after the link's latency
//!   as `Input::FromServer` (the same per-link latency, loss and partition
//!   as overlay messages); one to a crashed server or across the partition
//!   is dropped and its sender gets `Input::PeerFailed` after the detection
//!   delay (the connection times out);
//! - `Input::Tick` whenever `poll_timeout()` says so;
//! - clients are a few ms from every server (per-client latency drawn from
//!   `--client-latency`), never lose messages and are not partitioned.
//!
//! Server identities: node `i` is the server whose ed25519 key is derived
//! from (seed, i); its `overlay::PeerId` is that public key (`ids[i]`), and
//! `index` maps it back to the `u32` node id.
//!
//! Every measurement is event-driven (no sampling): after each input to a
//! server the simulator checks exactly what that input could have changed
//! (the record a delivery carried, the subject of a membership message, the
//! whole membership table after a heartbeat tick).

use crate::engine::{CLASSES, Latency, Network, NodeId, Signal, Sim, Traffic};
use crate::metrics;
use bytes::Bytes;
use ed25519_dalek::SigningKey;
use overlay::{MessageId, MessageType, PeerId, Time};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng, SeedableRng};
use rendezvous::proto::{TAG_MEMBER, TAG_RECORD};
use rendezvous::server::{Config as ServerConfig, ConnId, Input, Now, Output, ReqId, Server};
use rendezvous::{
    FriendRef, Msg, NatMapping, Payload, PeerRecord, RecordBody, Request, Response, ServerMsg,
};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

/// Unix time (ms) at simulated time zero.
pub const UNIX0_MS: u64 = 1_700_000_000_000;

/// Broadcast classes in the engine's per-class traffic.
const CLASS_MEMBER: u8 = 1;
const CLASS_RECORD: u8 = 2;
const CLASS_OTHER: u8 = 3;

/// Everything that defines a `servers` run. Same parameters → same results.
#[derive(Clone, Debug)]
pub struct ServersParams {
    /// Servers (overlay nodes), started one after the other over `join_secs`.
    pub servers: usize,
    /// Synthetic clients; `None`: [`ServersParams::default_clients`].
    pub clients: Option<usize>,
    /// Record changes during the partition; `None`:
    /// [`ServersParams::default_changes`].
    pub changes: Option<usize>,
    /// Record changes per second in the steady phase; `None`: clients / 20.
    pub steady_rate: Option<f64>,
    /// Seed of every random choice.
    pub seed: u64,
    /// Server-to-server link latency.
    pub latency: Latency,
    /// Loss probability (0..1) of every server-to-server message.
    pub loss: f64,
    /// Seconds until a crash or a broken link is noticed.
    pub detect_secs: f64,
    /// Seconds over which the servers start.
    pub join_secs: f64,
    /// Seconds of quiet after the last start.
    pub settle_secs: f64,
    /// Seconds of steady registrations; the crash is in the middle.
    pub steady_secs: f64,
    /// Seconds the servers are split in two halves (0: no partition, the
    /// run ends with the steady phase and the heal figures are null).
    pub partition_secs: f64,
    /// After healing, give up waiting for equal tables after this long.
    pub heal_timeout_secs: f64,
    /// Bootstrap contacts (the first servers).
    pub contacts: usize,
    /// One-way client↔server latency, drawn per client from this range (ms).
    pub client_latency_ms: (u64, u64),
    /// Probability that a client asks to meet a random other client after
    /// registering.
    pub meet_prob: f64,
    /// Overlay parameters.
    pub overlay: overlay::Config,
    /// Server parameters (`verify_signatures` is forced off).
    pub server: ServerConfig,
    /// Stop (and report `completed: false`) after this much wall-clock time.
    /// The only input that can make a run differ from another with the same
    /// seed (with `max_rss_mb`).
    pub max_wall_secs: Option<f64>,
    /// Stop the same way once the resident memory reaches this many MiB
    /// (checked every 100 simulated ms, and every 100 starts while
    /// joining), rather than be killed by the kernel with nothing printed.
    pub max_rss_mb: Option<f64>,
}

impl ServersParams {
    /// Defaults for `servers` servers (the CLI overrides them).
    pub fn new(servers: usize) -> Self {
        ServersParams {
            servers,
            clients: None,
            changes: None,
            steady_rate: None,
            seed: 1,
            latency: Latency::Uniform {
                min: Duration::from_millis(10),
                max: Duration::from_millis(50),
            },
            loss: 0.0,
            detect_secs: 3.0,
            join_secs: 10.0,
            settle_secs: Self::default_settle(servers, &ServerConfig::default()),
            steady_secs: 30.0,
            partition_secs: 60.0,
            heal_timeout_secs: 120.0,
            contacts: 5,
            client_latency_ms: (2, 10),
            meet_prob: 0.2,
            overlay: overlay::Config::lan(),
            server: ServerConfig::default(),
            max_wall_secs: None,
            max_rss_mb: None,
        }
    }

    /// Seconds of quiet after the last start by default: one regular
    /// announce interval at `servers` plus 10 s, at least 20 (40 up to
    /// 3,000 servers with the default tempo, 110 at 10,000). Every server
    /// has then announced once after the last one started, so the
    /// membership is formed and every origin's Plumtree tree has carried a
    /// broadcast over the formed overlay before anything is measured: with
    /// 20 s, the first changes of the steady phase were the first
    /// broadcasts of their origins since the join's churn (at 200 servers
    /// their p99 was 1.0–1.2 s, then 0.55–0.64 s).
    pub fn default_settle(servers: usize, cfg: &ServerConfig) -> f64 {
        (cfg.announce_interval_at(servers).as_secs_f64() + 10.0).max(20.0)
    }

    /// Record changes during the partition by default: 100 per server, at
    /// most 100,000 (so 100,000 from 1,000 servers on).
    pub fn default_changes(servers: usize) -> usize {
        (100 * servers).min(100_000)
    }

    /// Clients by default: a tenth of the partition's changes (so each
    /// client changes its record about ten times while the servers are
    /// split), but at most 10,000,000 / servers so that the tables fit in
    /// memory (every server holds every client's record, ~1 KB each), and
    /// at least 10.
    pub fn default_clients(servers: usize, changes: usize) -> usize {
        (changes / 10).min(10_000_000 / servers.max(1)).max(10)
    }

    fn changes(&self) -> usize {
        self.changes
            .unwrap_or_else(|| Self::default_changes(self.servers))
    }

    fn clients(&self) -> usize {
        self.clients
            .unwrap_or_else(|| Self::default_clients(self.servers, self.changes()))
            .max(2)
    }
}

/// Per-second traffic per server, in one window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Rates {
    /// Which window.
    pub window: &'static str,
    /// Servers the rates are divided by.
    pub servers: usize,
    /// Window start (simulated seconds).
    pub from_s: f64,
    /// Window end.
    pub to_s: f64,
    /// Membership (payload tag 1): GOSSIP carrying it, IHAVE entries and
    /// GRAFTs for it — bytes per server per second.
    pub membership_bytes: f64,
    /// Of which GOSSIP.
    pub membership_gossip_bytes: f64,
    /// Of which IHAVE (each IHAVE's bytes split evenly among its entries).
    pub membership_ihave_bytes: f64,
    /// Of which GRAFT.
    pub membership_graft_bytes: f64,
    /// Membership messages (GOSSIP + IHAVE + GRAFT) per server per second.
    pub membership_messages: f64,
    /// Records (payload tag 2): GOSSIP, IHAVE, GRAFT bytes per server per second.
    pub record_bytes: f64,
    /// HyParView and PRUNE bytes per server per second.
    pub overlay_control_bytes: f64,
    /// Direct server-to-server bytes (anti-entropy, stores, rendezvous)
    /// per server per second.
    pub direct_bytes: f64,
}

/// Count and bytes.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Count {
    /// Messages.
    pub messages: u64,
    /// Bytes (postcard body + 4-byte frame prefix).
    pub bytes: u64,
}

/// The run's figures: the last line the CLI prints.
#[derive(Clone, Debug, Serialize)]
pub struct ServersSummary {
    /// Always "servers".
    pub scenario: &'static str,
    /// Servers started.
    pub servers: usize,
    /// Synthetic clients.
    pub clients: usize,
    /// Seed.
    pub seed: u64,
    /// Whether every phase ran (false: stopped by `--max-wall-secs` or
    /// `--max-rss-mb`, or the heal was never reached).
    pub completed: bool,
    /// What stopped the run early: "wall" or "rss" (null: nothing).
    pub stopped_by: Option<&'static str>,
    /// The last phase reached: join, settle, steady, steady after the
    /// crash, partition, heal.
    pub reached: &'static str,
    /// Record changes (record broadcasts: each registration and each
    /// withdrawal is one) in the whole run.
    pub records: u64,
    /// Of which in the steady phase.
    pub records_steady: u64,
    /// Of which during the partition (the target was `changes_target`).
    pub records_partition: u64,
    /// Record changes the partition was to see.
    pub changes_target: usize,
    /// Record changes of the steady phase (created before the partition
    /// minus 2 s) whose time from the home server's broadcast until every
    /// live server held that seq or a newer one: percentiles in ms.
    pub replication_p50_ms: Option<f64>,
    /// 99th percentile (null if more than 1% never completed).
    pub replication_p99_ms: Option<f64>,
    /// Largest.
    pub replication_max_ms: Option<f64>,
    /// Steady-phase records measured.
    pub replication_measured: usize,
    /// Of which never known everywhere (by the end of the run).
    pub replication_incomplete: usize,
    /// The same changes by the 5 s window they were created in: `[window
    /// start s, changes, p50 ms, p99 ms]` (incomplete ones left out) — to
    /// see whether a tail belongs to an event (the crash, a round of
    /// announces) or to the whole phase.
    pub replication_by_5s: Vec<[f64; 4]>,
    /// Seconds from the crash until no live server has the crashed one in
    /// `members().live()` (null: not by the end).
    pub death_detect_max_s: Option<f64>,
    /// Seconds until the first live server stopped believing it live.
    pub death_detect_min_s: Option<f64>,
    /// Times a live server came to believe the crashed one live again.
    pub crash_revivals: u64,
    /// A running server leaving someone's `members().live()` outside the
    /// partition window (from the split until `--detect-secs` after the
    /// heal): (observer, subject) transitions.
    pub false_deaths: u64,
    /// The same inside the partition window (expected: each side declares
    /// the other dead).
    pub partition_deaths: u64,
    /// Up to 5 false deaths: (time s, observer, subject).
    pub false_death_examples: Vec<(f64, u32, u32)>,
    /// Seconds from the last server start until every server believed every
    /// other live (null: never).
    pub members_formed_s: Option<f64>,
    /// Seconds from the heal until every live server believed every other
    /// live again.
    pub membership_heal_s: Option<f64>,
    /// Membership traffic per server per second in the steady window (see
    /// `steady`): GOSSIP with tag-1 payloads + IHAVE shares + GRAFTs for them.
    pub membership_bytes_per_server_per_s: Option<f64>,
    /// Membership broadcasts delivered to a server (each first delivery of
    /// an announce, suspicion or leave at one server), in the whole run.
    pub membership_deliveries: u64,
    /// Membership bytes of the whole run (the same parts as
    /// `membership_bytes_per_server_per_s`) ÷ `membership_deliveries`:
    /// what one announce costs each server that gets it. Times the
    /// announces per second of a cluster (servers ÷ announce interval),
    /// it is the membership traffic per server of any window.
    pub membership_bytes_per_delivery: Option<f64>,
    /// Traffic rates in the steady window: from the end of the settle phase
    /// to the crash (if the run got that far; otherwise from the end of the
    /// join phase to where it stopped).
    pub steady: Option<Rates>,
    /// Seconds from the heal until every live server's `table().digest()`
    /// is the same (null: not within `--heal-timeout`).
    pub heal_s: Option<f64>,
    /// Seconds from the heal until every change made during the partition
    /// was known at every live server.
    pub heal_records_s: Option<f64>,
    /// Partition-time changes never known everywhere.
    pub heal_records_incomplete: usize,
    /// Live servers whose digest differs from the first live server's at the end.
    pub tables_differing_at_end: usize,
    /// Records in the first live server's table at the end.
    pub table_records: usize,
    /// Direct messages from the heal to the end, by kind.
    pub heal_direct: BTreeMap<&'static str, Count>,
    /// Direct messages of the whole run, by kind (lost ones included).
    pub direct: BTreeMap<&'static str, Count>,
    /// Direct messages lost (`--loss`) and dropped (dead target, partition).
    pub direct_lost: u64,
    /// Dropped direct messages.
    pub direct_dropped: u64,
    /// Broadcasts by payload kind.
    pub broadcasts: BTreeMap<&'static str, u64>,
    /// Overlay messages of the whole run, by type.
    pub overlay_messages: BTreeMap<&'static str, u64>,
    /// Overlay bytes of the whole run, by type.
    pub overlay_bytes: BTreeMap<&'static str, u64>,
    /// Client-side outcomes (registrations, meetings, refusals by code).
    pub client: BTreeMap<String, u64>,
    /// Server counters summed over the live servers at the end
    /// (`Server::stats()`: counters, `rejected.*`, `refused.*`).
    pub server_stats: BTreeMap<String, u64>,
    /// Overlay components over active links at the end.
    pub components: usize,
    /// Simulated instants (s): crash, partition, heal.
    pub crash_at_s: Option<f64>,
    /// The partition's start.
    pub partition_at_s: Option<f64>,
    /// The heal.
    pub heal_at_s: Option<f64>,
    /// Engine events.
    pub events: u64,
    /// Simulated seconds.
    pub sim_s: f64,
    /// Wall-clock seconds.
    pub wall_s: f64,
    /// Peak resident memory (MiB, VmHWM).
    pub peak_rss_mb: Option<f64>,
    /// Latency model.
    pub latency: String,
    /// Loss probability.
    pub loss: f64,
}

/// A hasher for keys that are already uniformly random (ed25519 keys,
/// blake3 message ids): their first 8 bytes.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8).take(1) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(b);
        }
    }
    fn write_usize(&mut self, _: usize) {}
}

type KeyMap<K, V> = HashMap<K, V, BuildHasherDefault<KeyHasher>>;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn key_for(seed: u64, domain: u64, i: u64) -> SigningKey {
    let mut bytes = [0u8; 32];
    for (k, chunk) in bytes.chunks_mut(8).enumerate() {
        let v = splitmix(seed ^ splitmix(domain ^ splitmix(i ^ ((k as u64) << 56))));
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    SigningKey::from_bytes(&bytes)
}

fn peer_id(key: &SigningKey) -> PeerId {
    PeerId(key.verifying_key().to_bytes())
}

fn secs_of(t: Time) -> f64 {
    t.as_micros() as f64 / 1e6
}

fn micros(s: f64) -> u64 {
    (s.max(0.0) * 1e6) as u64
}

/// A bit set.
#[derive(Clone, Default)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] >> (i % 64) & 1 == 1
    }
    fn set(&mut self, i: usize, v: bool) {
        if v {
            self.0[i / 64] |= 1 << (i % 64);
        } else {
            self.0[i / 64] &= !(1 << (i % 64));
        }
    }
}

/// What a broadcast carried (by its message id).
#[derive(Clone, Copy)]
enum Bcast {
    /// A record of this client.
    Record(u32),
    /// A membership message about this server.
    Member(u32),
    Other,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Steady,
    Partition,
    Other,
}

/// One record change, followed until every live server holds it (or newer).
struct Tracker {
    seq: u64,
    created: Time,
    phase: Phase,
    /// Servers that hold it, or need not (crashed).
    have: Bits,
    missing: u32,
    done: Option<Time>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum CState {
    Offline,
    Registering {
        server: u32,
        conn: ConnId,
        req: ReqId,
    },
    Online {
        server: u32,
        conn: ConnId,
    },
}

struct Client {
    key: SigningKey,
    id: PeerId,
    ip: Ipv4Addr,
    lat: Duration,
    conns: u32,
    seq: u64,
    state: CState,
}

/// Application events, by slab slot (the engine carries the slot).
enum AppEv {
    Tick(u32),
    /// A direct server-to-server message arrives.
    Direct {
        from: u32,
        to: u32,
        msg: ServerMsg,
    },
    /// `server`'s connection to `peer` failed (detection delay over).
    Failed {
        server: u32,
        peer: u32,
    },
    /// A client's input reaches its server.
    ToServer {
        server: u32,
        input: Input,
    },
    /// A response reaches a client.
    ToClient {
        client: u32,
        conn: ConnId,
        req: ReqId,
        response: Response,
    },
    /// The server closed the client's connection.
    ClosedByServer {
        client: u32,
        conn: ConnId,
    },
    /// The client noticed its server is gone.
    Lost {
        client: u32,
        conn: ConnId,
    },
}

struct Slab<T> {
    slots: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Slab<T> {
    fn put(&mut self, v: T) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(v);
                i
            }
            None => {
                self.slots.push(Some(v));
                (self.slots.len() - 1) as u32
            }
        }
    }
    fn take(&mut self, i: u32) -> Option<T> {
        let v = self.slots.get_mut(i as usize)?.take();
        if v.is_some() {
            self.free.push(i);
        }
        v
    }
}

fn msg_kind(m: &ServerMsg) -> &'static str {
    match m {
        ServerMsg::Digest(_) => "digest",
        ServerMsg::Versions { .. } => "versions",
        ServerMsg::Want(_) => "want",
        ServerMsg::Records(_) => "records",
        ServerMsg::Store { .. } => "store",
        ServerMsg::Stored { .. } => "stored",
        ServerMsg::Rendezvous { .. } | ServerMsg::Meeting { .. } => "rendezvous",
        ServerMsg::RelayChoice { .. } => "relay_choice",
        ServerMsg::Rearrange { .. } => "rearrange",
        ServerMsg::Keep { .. }
        | ServerMsg::Kept { .. }
        | ServerMsg::Fetch { .. }
        | ServerMsg::Held { .. }
        | ServerMsg::Discard { .. }
        | ServerMsg::MailFor { .. } => "mail",
    }
}

/// The application on top of the engine: servers, clients, measurements.
struct World {
    n: usize,
    cfg: ServerConfig,
    seed: u64,
    detect: Duration,
    loss: f64,
    meet_prob: f64,
    servers: Vec<Option<Server>>,
    ids: Vec<PeerId>,
    index: KeyMap<PeerId, u32>,
    running: Vec<u32>,
    crashed: Vec<u32>,
    /// Pending tick per server (µs; `u64::MAX`: none).
    tick_at: Vec<u64>,
    apps: Slab<AppEv>,
    rng: Xoshiro256PlusPlus,
    clients: Vec<Client>,
    client_index: KeyMap<PeerId, u32>,
    next_req: ReqId,
    bcasts: KeyMap<MessageId, Bcast>,
    /// Every broadcast decoded once, delivered to each server as
    /// `Input::Decoded`: the servers share its records (one copy, not one
    /// per server; measured at 200 servers: 518 → 447 MB peak).
    decoded: KeyMap<MessageId, Payload>,
    trackers: Vec<Tracker>,
    /// Open trackers per client.
    open: Vec<Vec<u32>>,
    open_partition: usize,
    /// (observer × n + subject): the observer has the subject in
    /// `members().live()`.
    beliefs: Bits,
    /// Set bits between running servers.
    believed_pairs: u64,
    /// Running observers that believe the crashed server live.
    crash_believers: u64,
    crash_at: Option<Time>,
    death_first: Option<Time>,
    death_known: Option<Time>,
    crash_revivals: u64,
    /// From the split until `detect` after the heal.
    window: (Time, Time),
    false_deaths: u64,
    partition_deaths: u64,
    false_examples: Vec<(f64, u32, u32)>,
    pending_fail: HashSet<(u32, u32)>,
    phase_bounds: (Time, Time, Time),
    records: [u64; 3],
    broadcasts: BTreeMap<&'static str, u64>,
    direct: BTreeMap<&'static str, Count>,
    heal_direct: BTreeMap<&'static str, Count>,
    healed: bool,
    direct_lost: u64,
    direct_dropped: u64,
    client_stats: BTreeMap<String, u64>,
    scratch: Vec<u8>,
    /// First deliveries of membership broadcasts.
    member_deliveries: u64,
}

impl World {
    fn now(&self, sim: &Sim) -> Now {
        let t = sim.now();
        Now {
            mono: t,
            unix_ms: UNIX0_MS + t.as_millis(),
        }
    }

    fn count(&mut self, what: &str) {
        *self.client_stats.entry(what.to_string()).or_insert(0) += 1;
    }

    fn alive(&self, j: u32) -> bool {
        self.servers.get(j as usize).is_some_and(|s| s.is_some())
    }

    fn app(&mut self, sim: &mut Sim, at: Time, node: u32, ev: AppEv) {
        let token = self.apps.put(ev);
        sim.schedule_app(at, node, token);
    }

    fn run_until(&mut self, sim: &mut Sim, t: Time) {
        sim.run_until_with(t, &mut |sim, sig| self.on_signal(sim, sig));
    }

    // ----- servers -----

    fn start_server(&mut self, sim: &mut Sim, contacts: &[NodeId]) {
        // Only contacts already running: a cluster is bootstrapped from
        // servers that are up (the first one starts alone).
        let next = self.servers.len() as NodeId;
        let up: Vec<NodeId> = contacts.iter().copied().filter(|c| *c < next).collect();
        let j = sim.start_node(&up);
        debug_assert_eq!(j as usize, self.servers.len());
        let key = key_for(self.seed, 1, u64::from(j));
        let id = peer_id(&key);
        let now = self.now(sim);
        let server = Server::new(
            id,
            key,
            self.cfg.clone(),
            now,
            splitmix(self.seed ^ 7) ^ u64::from(j),
        );
        self.servers.push(Some(server));
        self.ids.push(id);
        self.index.insert(id, j);
        self.running.push(j);
        self.tick_at.push(u64::MAX);
        self.after(sim, j, false);
    }

    fn handle(&mut self, sim: &Sim, j: u32, input: Input) -> bool {
        let now = self.now(sim);
        match self.servers[j as usize].as_mut() {
            Some(s) => {
                s.handle(now, input);
                true
            }
            None => false,
        }
    }

    /// Routes `j`'s outputs and keeps its tick scheduled.
    fn after(&mut self, sim: &mut Sim, j: u32, ticked: bool) {
        let Some(s) = self.servers[j as usize].as_mut() else {
            return;
        };
        let outs: Vec<Output> = s.drain_outputs().collect();
        let due = s.poll_timeout();
        for o in outs {
            self.route(sim, j, o);
        }
        let now = sim.now().as_micros();
        // Right after a tick everything due was done: never tick twice at
        // one instant (a safety net; the server always moves its timers on).
        let floor = if ticked { now + 1000 } else { now };
        let at = due.as_micros().max(floor);
        if at < self.tick_at[j as usize] {
            self.tick_at[j as usize] = at;
            self.app(sim, Time::from_micros(at), j, AppEv::Tick(j));
        }
    }

    fn route(&mut self, sim: &mut Sim, j: u32, o: Output) {
        let now = sim.now();
        match o {
            Output::Broadcast(bytes) => self.broadcast(sim, j, bytes),
            Output::ToServer { to, msg, .. } => self.direct(sim, j, to, msg),
            Output::Respond {
                conn,
                req,
                response,
            } => {
                let client = (conn >> 32) as u32;
                let lat = self.clients[client as usize].lat;
                self.app(
                    sim,
                    now + lat,
                    j,
                    AppEv::ToClient {
                        client,
                        conn,
                        req,
                        response,
                    },
                );
            }
            Output::Notify { .. } => self.count("notices"),
            Output::Close { conn, .. } => {
                let client = (conn >> 32) as u32;
                let lat = self.clients[client as usize].lat;
                self.count("closed_by_server");
                self.app(sim, now + lat, j, AppEv::ClosedByServer { client, conn });
            }
            Output::RelayPair { .. } => self.count("relay_pairs"),
            Output::RelayStop { .. } => self.count("relay_stops"),
        }
    }

    fn phase_at(&self, t: Time) -> Phase {
        let (steady, part, heal) = self.phase_bounds;
        if t >= steady && t < part {
            Phase::Steady
        } else if t >= part && t < heal {
            Phase::Partition
        } else {
            Phase::Other
        }
    }

    fn broadcast(&mut self, sim: &mut Sim, j: u32, bytes: Bytes) {
        let decoded = Payload::decode(&bytes);
        let (class, info) = match bytes.first().copied() {
            Some(TAG_RECORD) => match &decoded {
                Ok(Payload::Record(r)) => match self.client_index.get(&r.body.peer).copied() {
                    Some(c) => {
                        self.track(sim, j, c, r.body.seq);
                        *self.broadcasts.entry("record").or_insert(0) += 1;
                        (CLASS_RECORD, Bcast::Record(c))
                    }
                    None => (CLASS_RECORD, Bcast::Other),
                },
                _ => (CLASS_OTHER, Bcast::Other),
            },
            Some(TAG_MEMBER) => match &decoded {
                Ok(Payload::Member(m)) => {
                    let (kind, subject) = match m {
                        Msg::Announce { record, .. } => ("announce", record.id),
                        Msg::Leave { id, .. } => ("leave", *id),
                        Msg::Suspect { id, .. } => ("suspect", *id),
                    };
                    *self.broadcasts.entry(kind).or_insert(0) += 1;
                    match self.index.get(&subject) {
                        Some(&s) => (CLASS_MEMBER, Bcast::Member(s)),
                        None => (CLASS_MEMBER, Bcast::Other),
                    }
                }
                _ => (CLASS_MEMBER, Bcast::Other),
            },
            _ => (CLASS_OTHER, Bcast::Other),
        };
        match sim.broadcast_class(j, bytes, class) {
            Some(id) => {
                self.bcasts.insert(id, info);
                if let Ok(p) = decoded {
                    self.decoded.insert(id, p);
                }
            }
            None => *self.broadcasts.entry("refused_by_overlay").or_insert(0) += 1,
        }
    }

    /// A new record change at its home `j`: follow it.
    fn track(&mut self, sim: &Sim, j: u32, client: u32, seq: u64) {
        let now = sim.now();
        let phase = self.phase_at(now);
        let i = match phase {
            Phase::Steady => 0,
            Phase::Partition => 1,
            Phase::Other => 2,
        };
        self.records[i] += 1;
        let mut have = Bits::new(self.n);
        for &c in &self.crashed {
            have.set(c as usize, true);
        }
        have.set(j as usize, true);
        let missing = self.running.len().saturating_sub(1) as u32;
        let t = self.trackers.len() as u32;
        self.trackers.push(Tracker {
            seq,
            created: now,
            phase,
            have,
            missing,
            done: None,
        });
        if missing == 0 {
            self.complete(t, now);
        } else {
            self.open[client as usize].push(t);
            if phase == Phase::Partition {
                self.open_partition += 1;
            }
        }
        // The home now holds it: older changes of this client too.
        self.learn(sim, j, client);
    }

    fn complete(&mut self, t: u32, now: Time) {
        let tr = &mut self.trackers[t as usize];
        tr.done = Some(now);
        tr.have = Bits::default();
        if tr.phase == Phase::Partition {
            self.open_partition = self.open_partition.saturating_sub(1);
        }
    }

    /// Server `j` may have learned a record of `client`.
    fn learn(&mut self, sim: &Sim, j: u32, client: u32) {
        let Some(seq) = self.servers[j as usize]
            .as_ref()
            .and_then(|s| s.table().seq_of(&self.clients[client as usize].id))
        else {
            return;
        };
        let now = sim.now();
        let mut list = std::mem::take(&mut self.open[client as usize]);
        let mut done = Vec::new();
        list.retain(|&t| {
            let tr = &mut self.trackers[t as usize];
            if tr.seq > seq || tr.have.get(j as usize) {
                return true;
            }
            tr.have.set(j as usize, true);
            tr.missing -= 1;
            if tr.missing == 0 {
                done.push(t);
                return false;
            }
            true
        });
        self.open[client as usize] = list;
        for t in done {
            self.complete(t, now);
        }
    }

    fn direct(&mut self, sim: &mut Sim, j: u32, to: PeerId, msg: ServerMsg) {
        let kind = msg_kind(&msg);
        self.scratch.clear();
        let bytes = postcard::to_extend(&msg, std::mem::take(&mut self.scratch))
            .map(|v| {
                let n = v.len() as u64 + 4;
                self.scratch = v;
                n
            })
            .unwrap_or(4);
        let c = self.direct.entry(kind).or_default();
        c.messages += 1;
        c.bytes += bytes;
        if self.healed {
            let c = self.heal_direct.entry(kind).or_default();
            c.messages += 1;
            c.bytes += bytes;
        }
        let Some(&k) = self.index.get(&to) else {
            self.direct_dropped += 1;
            return;
        };
        if !self.alive(k) || sim.crosses(j, k) {
            self.direct_dropped += 1;
            self.fail_later(sim, j, k);
            return;
        }
        if self.loss > 0.0 && (self.rng.next_u64() as f64 / u64::MAX as f64) < self.loss {
            self.direct_lost += 1;
            return;
        }
        let at = sim.now() + sim.link_latency(j, k);
        self.app(
            sim,
            at,
            k,
            AppEv::Direct {
                from: j,
                to: k,
                msg,
            },
        );
    }

    fn fail_later(&mut self, sim: &mut Sim, j: u32, k: u32) {
        if self.alive(j) && self.pending_fail.insert((j, k)) {
            let at = sim.now() + self.detect;
            self.app(sim, at, j, AppEv::Failed { server: j, peer: k });
        }
    }

    // ----- membership beliefs -----

    fn belief(&mut self, sim: &Sim, obs: u32, subj: u32) {
        if obs == subj {
            return;
        }
        let Some(s) = self.servers[obs as usize].as_ref() else {
            return;
        };
        let live = s.members().is_live(&self.ids[subj as usize]);
        let bit = obs as usize * self.n + subj as usize;
        if self.beliefs.get(bit) == live {
            return;
        }
        self.beliefs.set(bit, live);
        let now = sim.now();
        if self.crashed.contains(&subj) {
            if live {
                self.crash_believers += 1;
                self.crash_revivals += 1;
            } else {
                self.crash_believers = self.crash_believers.saturating_sub(1);
                self.death_first.get_or_insert(now);
                if self.crash_believers == 0 && self.death_known.is_none() {
                    self.death_known = Some(now);
                }
            }
            return;
        }
        if live {
            self.believed_pairs += 1;
        } else {
            self.believed_pairs -= 1;
            if now >= self.window.0 && now <= self.window.1 {
                self.partition_deaths += 1;
            } else {
                self.false_deaths += 1;
                if self.false_examples.len() < 5 {
                    self.false_examples.push((secs_of(now), obs, subj));
                }
            }
        }
    }

    /// After a tick that declared servers dead for their silence: every
    /// entry.
    fn scan_beliefs(&mut self, sim: &Sim, obs: u32) {
        let Some(s) = self.servers[obs as usize].as_ref() else {
            return;
        };
        let subjects: Vec<u32> = s
            .members()
            .entries()
            .filter_map(|e| self.index.get(&e.record.id).copied())
            .collect();
        for subj in subjects {
            self.belief(sim, obs, subj);
        }
    }

    fn crash(&mut self, sim: &mut Sim, x: u32) {
        sim.crash(x);
        self.servers[x as usize] = None;
        self.running.retain(|&j| j != x);
        self.crashed.push(x);
        self.crash_at = Some(sim.now());
        let n = self.n;
        for &o in &self.running {
            if self.beliefs.get(o as usize * n + x as usize) {
                self.believed_pairs -= 1;
                self.crash_believers += 1;
            }
            if self.beliefs.get(x as usize * n + o as usize) {
                self.believed_pairs -= 1;
            }
        }
        // Records it did not have are no longer waited for.
        let now = sim.now();
        for c in 0..self.open.len() {
            let mut list = std::mem::take(&mut self.open[c]);
            let mut done = Vec::new();
            list.retain(|&t| {
                let tr = &mut self.trackers[t as usize];
                if !tr.have.get(x as usize) {
                    tr.have.set(x as usize, true);
                    tr.missing -= 1;
                    if tr.missing == 0 {
                        done.push(t);
                        return false;
                    }
                }
                true
            });
            self.open[c] = list;
            for t in done {
                self.complete(t, now);
            }
        }
        // Its clients notice after the idle timeout and go elsewhere.
        for k in 0..self.clients.len() {
            let conn = match self.clients[k].state {
                CState::Registering { server, conn, .. } | CState::Online { server, conn }
                    if server == x =>
                {
                    conn
                }
                _ => continue,
            };
            let jitter = Duration::from_micros(self.rng.next_u64() % 1_000_000);
            let at = now + self.detect + jitter;
            self.app(
                sim,
                at,
                x,
                AppEv::Lost {
                    client: k as u32,
                    conn,
                },
            );
        }
    }

    // ----- clients -----

    fn pick_server(&mut self) -> Option<u32> {
        if self.running.is_empty() {
            return None;
        }
        let i = (self.rng.next_u64() % self.running.len() as u64) as usize;
        Some(self.running[i])
    }

    /// Flips a random client (online → leaves; offline → registers).
    /// Returns whether one changed.
    fn flip_random(&mut self, sim: &mut Sim) -> bool {
        for _ in 0..8 {
            let k = (self.rng.next_u64() % self.clients.len() as u64) as u32;
            match self.clients[k as usize].state {
                CState::Offline => {
                    self.connect(sim, k);
                    return true;
                }
                CState::Online { server, conn } => {
                    let lat = self.clients[k as usize].lat;
                    self.clients[k as usize].state = CState::Offline;
                    self.app(
                        sim,
                        sim.now() + lat,
                        server,
                        AppEv::ToServer {
                            server,
                            input: Input::ClientClosed { conn },
                        },
                    );
                    return true;
                }
                CState::Registering { .. } => {}
            }
        }
        false
    }

    fn connect(&mut self, sim: &mut Sim, k: u32) {
        let Some(j) = self.pick_server() else {
            return;
        };
        let now = self.now(sim);
        let home = self.ids[j as usize];
        self.next_req += 1;
        let req = self.next_req;
        let c = &mut self.clients[k as usize];
        c.conns += 1;
        let conn = (u64::from(k) << 32) | u64::from(c.conns);
        let port = 1024 + (c.conns % 60_000) as u16;
        let addr = SocketAddr::V4(SocketAddrV4::new(c.ip, port));
        let seq = now.unix_ms.max(c.seq + 2);
        c.seq = seq;
        let body = RecordBody {
            peer: c.id,
            name: format!("c{k}"),
            home_server: home,
            public_addr: Some(addr),
            private_addrs: Vec::new(),
            seq,
            expires_at: now.unix() + 600,
            nat: NatMapping::Unknown,
        };
        let withdrawal = PeerRecord::withdrawal(&c.key, &body, now.unix());
        let record = PeerRecord::sign(&c.key, body);
        c.state = CState::Registering {
            server: j,
            conn,
            req,
        };
        let (peer, lat) = (c.id, c.lat);
        let at = sim.now() + lat;
        self.app(
            sim,
            at,
            j,
            AppEv::ToServer {
                server: j,
                input: Input::ClientConnected { conn, peer, addr },
            },
        );
        self.app(
            sim,
            at,
            j,
            AppEv::ToServer {
                server: j,
                input: Input::ClientRequest {
                    conn,
                    req,
                    request: Request::RegisterLive { record, withdrawal },
                    rtt: lat * 2,
                },
            },
        );
    }

    fn client_gets(&mut self, sim: &mut Sim, k: u32, conn: ConnId, req: ReqId, response: Response) {
        let state = self.clients[k as usize].state;
        match state {
            CState::Registering {
                server,
                conn: c,
                req: r,
            } if c == conn && r == req => match response {
                Response::Registered => {
                    self.count("registered");
                    self.clients[k as usize].state = CState::Online { server, conn };
                    if (self.rng.next_u64() as f64 / u64::MAX as f64) < self.meet_prob {
                        let friend = (self.rng.next_u64() % self.clients.len() as u64) as usize;
                        if friend != k as usize {
                            let id = self.clients[friend].id;
                            self.next_req += 1;
                            let req = self.next_req;
                            let lat = self.clients[k as usize].lat;
                            self.count("meet_requests");
                            self.app(
                                sim,
                                sim.now() + lat,
                                server,
                                AppEv::ToServer {
                                    server,
                                    input: Input::ClientRequest {
                                        conn,
                                        req,
                                        request: Request::Meet(FriendRef::Id(id)),
                                        rtt: lat * 2,
                                    },
                                },
                            );
                        }
                    }
                }
                Response::Error(e) => {
                    self.count(&format!("register_refused.{}", e.code.label()));
                    let lat = self.clients[k as usize].lat;
                    self.clients[k as usize].state = CState::Offline;
                    self.app(
                        sim,
                        sim.now() + lat,
                        server,
                        AppEv::ToServer {
                            server,
                            input: Input::ClientClosed { conn },
                        },
                    );
                }
                _ => self.count("register_unexpected"),
            },
            CState::Online { conn: c, .. } if c == conn => match response {
                Response::Friend { .. } => self.count("meet_friend"),
                Response::Waiting => self.count("meet_waiting"),
                Response::Records(_) => self.count("meet_records"),
                Response::Error(e) => self.count(&format!("meet_refused.{}", e.code.label())),
                _ => self.count("meet_unexpected"),
            },
            _ => self.count("responses_after_close"),
        }
    }

    // ----- signals -----

    fn on_signal(&mut self, sim: &mut Sim, sig: Signal) {
        match sig {
            Signal::Received {
                node,
                origin,
                id,
                payload,
            } => {
                let origin = self.ids[origin as usize];
                let input = match self.decoded.get(&id) {
                    Some(p) => Input::Decoded {
                        origin,
                        payload: p.clone(),
                    },
                    None => Input::Delivery { origin, payload },
                };
                if !self.handle(sim, node, input) {
                    return;
                }
                match self.bcasts.get(&id).copied() {
                    Some(Bcast::Record(c)) => self.learn(sim, node, c),
                    Some(Bcast::Member(s)) => {
                        self.member_deliveries += 1;
                        self.belief(sim, node, s);
                    }
                    _ => {}
                }
                self.after(sim, node, false);
            }
            Signal::NeighborUp { node, peer } => {
                let p = self.ids[peer as usize];
                if self.handle(sim, node, Input::NeighborUp(p)) {
                    self.after(sim, node, false);
                }
            }
            Signal::NeighborDown { node, peer } => {
                let p = self.ids[peer as usize];
                if self.handle(sim, node, Input::NeighborDown(p)) {
                    self.after(sim, node, false);
                }
            }
            Signal::PeerDown { node, peer } => {
                let p = self.ids[peer as usize];
                if self.handle(sim, node, Input::PeerFailed(p)) {
                    self.belief(sim, node, peer);
                    self.after(sim, node, false);
                }
            }
            Signal::App { token, .. } => {
                if let Some(ev) = self.apps.take(token) {
                    self.app_event(sim, ev);
                }
            }
        }
    }

    fn app_event(&mut self, sim: &mut Sim, ev: AppEv) {
        match ev {
            AppEv::Tick(j) => {
                let now = sim.now();
                if self.tick_at[j as usize] != now.as_micros() {
                    return; // superseded by an earlier one
                }
                self.tick_at[j as usize] = u64::MAX;
                let due = self.servers[j as usize]
                    .as_ref()
                    .is_some_and(|s| s.poll_timeout() <= now);
                let live = |w: &World| {
                    w.servers[j as usize]
                        .as_ref()
                        .map_or(0, |s| s.members().live_count())
                };
                let before = live(self);
                if due && self.handle(sim, j, Input::Tick) && live(self) < before {
                    // A tick only ever kills (silence, in the sweep): when
                    // it did, every entry is checked, at that instant.
                    self.scan_beliefs(sim, j);
                }
                self.after(sim, j, due);
            }
            AppEv::Direct { from, to, msg } => {
                if !self.alive(to) || sim.crosses(from, to) {
                    self.direct_dropped += 1;
                    self.fail_later(sim, from, to);
                    return;
                }
                let learned: Vec<u32> = match &msg {
                    ServerMsg::Records(rs) => rs
                        .iter()
                        .filter_map(|r| self.client_index.get(&r.body.peer).copied())
                        .collect(),
                    ServerMsg::Store { record, .. } => self
                        .client_index
                        .get(&record.body.peer)
                        .copied()
                        .into_iter()
                        .collect(),
                    _ => Vec::new(),
                };
                let from_id = self.ids[from as usize];
                self.handle(sim, to, Input::FromServer { from: from_id, msg });
                for c in learned {
                    self.learn(sim, to, c);
                }
                self.after(sim, to, false);
            }
            AppEv::Failed { server, peer } => {
                self.pending_fail.remove(&(server, peer));
                let p = self.ids[peer as usize];
                if self.handle(sim, server, Input::PeerFailed(p)) {
                    self.belief(sim, server, peer);
                    self.after(sim, server, false);
                }
            }
            AppEv::ToServer { server, input } => {
                if self.handle(sim, server, input) {
                    self.after(sim, server, false);
                }
            }
            AppEv::ToClient {
                client,
                conn,
                req,
                response,
            } => self.client_gets(sim, client, conn, req, response),
            AppEv::ClosedByServer { client, conn } => {
                let c = &mut self.clients[client as usize];
                match c.state {
                    CState::Registering { conn: x, .. } | CState::Online { conn: x, .. }
                        if x == conn =>
                    {
                        c.state = CState::Offline;
                    }
                    _ => {}
                }
            }
            AppEv::Lost { client, conn } => {
                let c = &mut self.clients[client as usize];
                match c.state {
                    CState::Registering { conn: x, .. } | CState::Online { conn: x, .. }
                        if x == conn =>
                    {
                        c.state = CState::Offline;
                        self.count("moved_after_crash");
                        self.connect(sim, client);
                    }
                    _ => {}
                }
            }
        }
    }

    // ----- whole-cluster checks -----

    fn tables_differing(&self) -> usize {
        let mut first: Option<&[u64; 256]> = None;
        let mut differ = 0;
        for s in self.servers.iter().flatten() {
            let d = s.table().digest();
            match first {
                None => first = Some(d),
                Some(f) if f != d => differ += 1,
                Some(_) => {}
            }
        }
        differ
    }

    fn all_believed(&self) -> bool {
        let r = self.running.len() as u64;
        self.believed_pairs == r * r.saturating_sub(1)
    }
}

/// (when, traffic by class, direct bytes so far).
type Snap = (Time, [Traffic; CLASSES], u64);

fn rates(from: Snap, to: Snap, servers: usize, window: &'static str) -> Rates {
    let secs = to.0.saturating_since(from.0).as_secs_f64().max(1e-9);
    let per = |x: u64| x as f64 / secs / servers.max(1) as f64;
    let diff = |c: usize| to.1[c].since(&from.1[c]);
    let m = diff(CLASS_MEMBER as usize);
    let r = diff(CLASS_RECORD as usize);
    let o = diff(0);
    let ty = |t: &Traffic, m: MessageType| t.bytes[m.index()];
    let member_types = [MessageType::Gossip, MessageType::IHave, MessageType::Graft];
    Rates {
        window,
        servers,
        from_s: secs_of(from.0),
        to_s: secs_of(to.0),
        membership_bytes: per(member_types.iter().map(|&x| ty(&m, x)).sum()),
        membership_gossip_bytes: per(ty(&m, MessageType::Gossip)),
        membership_ihave_bytes: per(ty(&m, MessageType::IHave)),
        membership_graft_bytes: per(ty(&m, MessageType::Graft)),
        membership_messages: per(member_types.iter().map(|&x| m.messages[x.index()]).sum()),
        record_bytes: per(r.total_bytes()),
        overlay_control_bytes: per(o.total_bytes()),
        direct_bytes: per(to.2 - from.2),
    }
}

/// Runs the `servers` scenario. `progress` gets one human-readable line at
/// a time.
pub fn run(p: &ServersParams, progress: &mut dyn FnMut(String)) -> ServersSummary {
    let wall = Instant::now();
    let n = p.servers.max(2);
    let changes = p.changes();
    let nclients = p.clients();
    let steady_rate = p.steady_rate.unwrap_or(nclients as f64 / 20.0);
    let part_rate = changes as f64 / p.partition_secs.max(1e-3);
    let net = Network {
        latency: p.latency,
        loss: p.loss,
        detect_delay: Duration::from_secs_f64(p.detect_secs.max(0.0)),
    };
    let mut sim = Sim::new(p.overlay.clone(), net, p.seed);
    sim.collect_signals();
    let mut cfg = p.server.clone();
    cfg.verify_signatures = false;

    let t_settled = p.join_secs + p.settle_secs;
    let t_crash = t_settled + p.steady_secs / 2.0;
    let t_part = t_settled + p.steady_secs;
    let t_heal = t_part + p.partition_secs;
    let t_end = t_heal + p.heal_timeout_secs;
    let detect = Duration::from_secs_f64(p.detect_secs.max(0.0));

    let mut rng = Xoshiro256PlusPlus::seed_from_u64(splitmix(p.seed ^ 0x5e17_e125));
    let (lo, hi) = p.client_latency_ms;
    let clients: Vec<Client> = (0..nclients)
        .map(|k| {
            let key = key_for(p.seed, 2, k as u64);
            let id = peer_id(&key);
            let span = hi.saturating_sub(lo) * 1000;
            let lat = Duration::from_micros(lo * 1000 + rng.next_u64() % (span + 1));
            Client {
                key,
                id,
                ip: Ipv4Addr::from(0x1400_0000u32.wrapping_add(k as u32)),
                lat,
                conns: 0,
                seq: 0,
                state: CState::Offline,
            }
        })
        .collect();
    let client_index = clients
        .iter()
        .enumerate()
        .map(|(k, c)| (c.id, k as u32))
        .collect();
    let mut w = World {
        n,
        cfg,
        seed: p.seed,
        detect,
        loss: p.loss,
        meet_prob: p.meet_prob,
        servers: Vec::with_capacity(n),
        ids: Vec::with_capacity(n),
        index: KeyMap::default(),
        running: Vec::with_capacity(n),
        crashed: Vec::new(),
        tick_at: Vec::with_capacity(n),
        apps: Slab {
            slots: Vec::new(),
            free: Vec::new(),
        },
        rng,
        open: vec![Vec::new(); nclients],
        clients,
        client_index,
        next_req: 0,
        bcasts: KeyMap::default(),
        decoded: KeyMap::default(),
        trackers: Vec::new(),
        open_partition: 0,
        beliefs: Bits::new(n * n),
        believed_pairs: 0,
        crash_believers: 0,
        crash_at: None,
        death_first: None,
        death_known: None,
        crash_revivals: 0,
        window: (Time::from_micros(u64::MAX), Time::from_micros(u64::MAX)),
        false_deaths: 0,
        partition_deaths: 0,
        false_examples: Vec::new(),
        pending_fail: HashSet::new(),
        phase_bounds: (
            Time::from_micros(micros(t_settled)),
            Time::from_micros(micros(t_part - 2.0)),
            // No partition: the last 2 s of the steady phase are in none.
            Time::from_micros(micros(if p.partition_secs > 0.0 {
                t_heal
            } else {
                t_part - 2.0
            })),
        ),
        records: [0; 3],
        broadcasts: BTreeMap::new(),
        direct: BTreeMap::new(),
        heal_direct: BTreeMap::new(),
        healed: false,
        direct_lost: 0,
        direct_dropped: 0,
        client_stats: BTreeMap::new(),
        scratch: Vec::new(),
        member_deliveries: 0,
    };
    let partition = if p.partition_secs > 0.0 {
        format!("{changes} changes in the partition ({part_rate:.0}/s)")
    } else {
        "no partition".to_string()
    };
    progress(format!(
        "[servers] {n} servers, {nclients} clients, {partition}, steady {steady_rate:.0}/s"
    ));

    let mut stopped_by: Option<&'static str> = None;
    let mut over_limit = |wall: &Instant| {
        if p.max_wall_secs
            .is_some_and(|m| wall.elapsed().as_secs_f64() > m)
        {
            stopped_by = Some("wall");
        } else if p
            .max_rss_mb
            .is_some_and(|m| metrics::rss_mb().is_some_and(|r| r >= m))
        {
            stopped_by = Some("rss");
        }
        stopped_by.is_some()
    };
    let mut completed = true;

    let snap = |sim: &Sim, w: &World| {
        let direct: u64 = w.direct.values().map(|c| c.bytes).sum();
        (sim.now(), sim.class_traffic(), direct)
    };
    // Once per simulated second, the last ten (for a run stopped early).
    let mut history: VecDeque<Snap> = VecDeque::new();
    let mut next_snap = 1u64;
    let mut reached = "join";

    // --- join ---
    let contacts: Vec<NodeId> = (0..p.contacts.min(n) as NodeId).collect();
    let spacing = p.join_secs / n as f64;
    for i in 0..n {
        w.run_until(&mut sim, Time::from_micros(micros(i as f64 * spacing)));
        w.start_server(&mut sim, &contacts);
        if sim.now() >= Time::from_secs(next_snap) {
            next_snap += 1;
            history.push_back(snap(&sim, &w));
            if history.len() > 10 {
                history.pop_front();
            }
        }
        if i % 100 == 99 && over_limit(&wall) {
            completed = false;
            break;
        }
        if i % 1000 == 999 {
            progress(format!(
                "[servers] t={:.1}s wall {:.0}s started {} servers, events {}",
                secs_of(sim.now()),
                wall.elapsed().as_secs_f64(),
                i + 1,
                sim.events()
            ));
        }
    }
    let last_start = sim.now();

    // --- phases, in 100 ms steps ---
    let step = 100_000u64;
    let mut t = sim.now().as_micros();
    let mut formed: Option<Time> = None;
    let mut steady_from = None;
    let mut steady_to = None;
    let mut crashed_at: Option<Time> = None;
    let mut part_at: Option<Time> = None;
    let mut heal_at: Option<Time> = None;
    let mut heal_s: Option<f64> = None;
    let mut heal_records_s: Option<f64> = None;
    let mut membership_heal_s: Option<f64> = None;
    let mut debt = 0.0f64;
    let mut next_progress = (secs_of(sim.now()) / 5.0).floor() * 5.0 + 5.0;
    while completed && t < micros(t_end) {
        let now_s = t as f64 / 1e6;
        if steady_from.is_none() && now_s >= t_settled {
            steady_from = Some(snap(&sim, &w));
        }
        if crashed_at.is_none() && now_s >= t_crash && w.running.len() > 2 {
            steady_to = Some(snap(&sim, &w));
            // A random server that is not a bootstrap contact.
            let pool: Vec<u32> = w
                .running
                .iter()
                .copied()
                .filter(|j| *j as usize >= p.contacts.min(n - 1))
                .collect();
            let victim = pool[(w.rng.next_u64() % pool.len() as u64) as usize];
            w.crash(&mut sim, victim);
            crashed_at = Some(sim.now());
            progress(format!("[servers] t={now_s:.1}s crashed server {victim}"));
        }
        if p.partition_secs <= 0.0 && now_s >= t_part {
            // `--for 0`: no partition; the run ends with the steady phase.
            break;
        }
        if part_at.is_none() && now_s >= t_part {
            let seed = p.seed;
            sim.partition(move |x| {
                ((seed ^ u64::from(x)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 63) as u8
            });
            part_at = Some(sim.now());
            // Until the heal is set below.
            w.window = (sim.now(), Time::from_micros(u64::MAX));
            progress(format!(
                "[servers] t={now_s:.1}s partition for {}s",
                p.partition_secs
            ));
        }
        if heal_at.is_none() && part_at.is_some() && now_s >= t_heal {
            sim.heal();
            heal_at = Some(sim.now());
            // Links broken by the split are still noticed for `detect`
            // after the heal, and their suspicions take a moment to spread.
            w.window.1 = sim.now() + detect + Duration::from_secs(1);
            w.healed = true;
            progress(format!("[servers] t={now_s:.1}s healed"));
        }
        let rate = if heal_at.is_some() {
            0.0
        } else if part_at.is_some() {
            part_rate
        } else if now_s >= t_settled {
            steady_rate
        } else {
            0.0
        };
        debt += rate * step as f64 / 1e6;
        let mut flips = 0usize;
        while debt >= 1.0 && flips < 1_000_000 {
            debt -= 1.0;
            flips += 1;
            w.flip_random(&mut sim);
        }
        let next = t + step;
        w.run_until(&mut sim, Time::from_micros(next));
        t = next;
        let now = sim.now();
        if now >= Time::from_secs(next_snap) {
            next_snap += 1;
            history.push_back(snap(&sim, &w));
            if history.len() > 10 {
                history.pop_front();
            }
        }
        reached = if heal_at.is_some() {
            "heal"
        } else if part_at.is_some() {
            "partition"
        } else if crashed_at.is_some() {
            "steady after the crash"
        } else if now_s >= t_settled {
            "steady"
        } else {
            "settle"
        };
        if formed.is_none() && w.running.len() == n && w.all_believed() {
            formed = Some(now);
        }
        if let Some(h) = heal_at {
            let since = now.saturating_since(h).as_secs_f64();
            if heal_s.is_none() && w.tables_differing() == 0 {
                heal_s = Some(since);
                progress(format!("[servers] tables equal {since:.1}s after the heal"));
            }
            if heal_records_s.is_none() && w.open_partition == 0 {
                heal_records_s = Some(since);
            }
            if membership_heal_s.is_none() && w.all_believed() {
                membership_heal_s = Some(since);
            }
            if heal_s.is_some() && heal_records_s.is_some() && membership_heal_s.is_some() {
                break;
            }
        }
        let now_s = secs_of(now);
        if now_s >= next_progress {
            next_progress += 5.0;
            let r = w.running.len() as f64;
            progress(format!(
                "[servers] t={now_s:.0}s wall {:.0}s events {} records {} open-partition {} beliefs {:.4} rss {:.0}MB",
                wall.elapsed().as_secs_f64(),
                sim.events(),
                w.records.iter().sum::<u64>(),
                w.open_partition,
                w.believed_pairs as f64 / (r * (r - 1.0)).max(1.0),
                metrics::peak_rss_mb().unwrap_or(0.0)
            ));
        }
        if over_limit(&wall) {
            completed = false;
        }
    }
    if heal_at.is_none() && p.partition_secs > 0.0 {
        completed = false;
    }

    // --- figures ---
    let end = snap(&sim, &w);
    let steady = match (steady_from, steady_to) {
        (Some(a), Some(b)) => Some(rates(a, b, n, "settle end to crash")),
        _ => {
            // Stopped early: the last (up to 10) whole seconds.
            history.push_back(end);
            let first = history.front().cloned();
            let last = history.back().cloned();
            match (first, last) {
                (Some(a), Some(b)) if b.0.saturating_since(a.0) >= Duration::from_secs(1) => {
                    Some(rates(
                        a,
                        b,
                        w.running.len(),
                        "last seconds before the stop (not steady)",
                    ))
                }
                _ => None,
            }
        }
    };
    let mut lat: Vec<u64> = Vec::new();
    let mut by_5s: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut incomplete = 0usize;
    let mut part_incomplete = 0usize;
    for tr in &w.trackers {
        match (tr.phase, tr.done) {
            (Phase::Steady, Some(d)) => {
                let us = d.saturating_since(tr.created).as_micros() as u64;
                lat.push(us);
                let window = tr.created.saturating_since(Time::ZERO).as_secs() / 5 * 5;
                by_5s.entry(window).or_default().push(us);
            }
            (Phase::Steady, None) => incomplete += 1,
            (Phase::Partition, None) => part_incomplete += 1,
            _ => {}
        }
    }
    lat.sort_unstable();
    let measured = lat.len() + incomplete;
    let pct = |q: f64| -> Option<f64> {
        if measured == 0 {
            return None;
        }
        let i = ((measured as f64 * q).ceil() as usize).saturating_sub(1);
        lat.get(i).map(|us| *us as f64 / 1000.0)
    };
    let crash_s = |t: Option<Time>| -> Option<f64> {
        let c = w.crash_at?;
        t.map(|t| t.saturating_since(c).as_secs_f64())
    };
    let mut server_stats: BTreeMap<String, u64> = BTreeMap::new();
    for s in w.servers.iter().flatten() {
        let st = s.stats();
        for (k, v) in &st.counters {
            *server_stats.entry((*k).to_string()).or_insert(0) += v;
        }
        for (k, v) in &st.rejected {
            *server_stats.entry(format!("rejected.{k}")).or_insert(0) += v;
        }
        for (k, v) in &st.refused {
            *server_stats.entry(format!("refused.{k}")).or_insert(0) += v;
        }
    }
    let traffic = sim.traffic();
    let table_records = w
        .servers
        .iter()
        .flatten()
        .next()
        .map_or(0, |s| s.table().len());
    ServersSummary {
        scenario: "servers",
        servers: n,
        clients: nclients,
        seed: p.seed,
        completed,
        stopped_by,
        reached,
        records: w.records.iter().sum(),
        records_steady: w.records[0],
        records_partition: w.records[1],
        changes_target: changes,
        replication_p50_ms: pct(0.5),
        replication_p99_ms: pct(0.99),
        replication_max_ms: if incomplete > 0 {
            None
        } else {
            lat.last().map(|us| *us as f64 / 1000.0)
        },
        replication_measured: measured,
        replication_incomplete: incomplete,
        replication_by_5s: by_5s
            .into_iter()
            .map(|(window, mut v)| {
                v.sort_unstable();
                let at = |q: f64| {
                    let i = ((v.len() as f64 * q).ceil() as usize).saturating_sub(1);
                    v[i.min(v.len() - 1)] as f64 / 1000.0
                };
                [window as f64, v.len() as f64, at(0.5), at(0.99)]
            })
            .collect(),
        death_detect_max_s: crash_s(w.death_known),
        death_detect_min_s: crash_s(w.death_first),
        crash_revivals: w.crash_revivals,
        false_deaths: w.false_deaths,
        partition_deaths: w.partition_deaths,
        false_death_examples: w.false_examples.clone(),
        members_formed_s: formed.map(|f| f.saturating_since(last_start).as_secs_f64()),
        membership_heal_s,
        membership_bytes_per_server_per_s: steady.as_ref().map(|r| r.membership_bytes),
        membership_deliveries: w.member_deliveries,
        membership_bytes_per_delivery: {
            let m = sim.class_traffic()[CLASS_MEMBER as usize];
            let member_types = [MessageType::Gossip, MessageType::IHave, MessageType::Graft];
            let bytes: u64 = member_types.iter().map(|&x| m.bytes[x.index()]).sum();
            (w.member_deliveries > 0).then(|| bytes as f64 / w.member_deliveries as f64)
        },
        steady,
        heal_s,
        heal_records_s,
        heal_records_incomplete: part_incomplete,
        tables_differing_at_end: w.tables_differing(),
        table_records,
        heal_direct: w.heal_direct.clone(),
        direct: w.direct.clone(),
        direct_lost: w.direct_lost,
        direct_dropped: w.direct_dropped,
        broadcasts: w.broadcasts.clone(),
        overlay_messages: MessageType::ALL
            .iter()
            .map(|t| (t.name(), traffic.messages[t.index()]))
            .collect(),
        overlay_bytes: MessageType::ALL
            .iter()
            .map(|t| (t.name(), traffic.bytes[t.index()]))
            .collect(),
        client: w.client_stats.clone(),
        server_stats,
        components: metrics::snapshot(&sim).components,
        crash_at_s: crashed_at.map(secs_of),
        partition_at_s: part_at.map(secs_of),
        heal_at_s: heal_at.map(secs_of),
        events: sim.events(),
        sim_s: secs_of(sim.now()),
        wall_s: wall.elapsed().as_secs_f64(),
        peak_rss_mb: metrics::peak_rss_mb(),
        latency: match p.latency {
            Latency::Uniform { min, max } => format!("{}..{}ms", min.as_millis(), max.as_millis()),
            Latency::Static(d) => format!("static {}ms", d.as_millis()),
        },
        loss: p.loss,
    }
}
