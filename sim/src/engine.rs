//! The discrete-event engine: simulated time, a priority queue of message
//! deliveries, timers and failure notices, and a network model — and
//! nothing about scenarios or metrics.
//!
//! Network model:
//! - each link {a, b} has a fixed one-way latency, drawn from the configured
//!   uniform range by hashing (seed, a, b) — so each direction is FIFO, like
//!   a QUIC stream — or one static latency for every link;
//! - optional random loss of any message;
//! - a crashed node drops everything; its neighbors, and anyone who sends
//!   to it, are told `PeerDown` after `detect_delay` (the QUIC idle timeout
//!   or dial timeout);
//! - a partition splits nodes into two groups: messages across it are
//!   dropped and the sender is told `PeerDown` after `detect_delay`; links
//!   that crossed it break on both ends.
//!
//! Determinism: one seeded RNG for the network, one per node (derived from
//! the seed and the node index), events ordered by (time, sequence number).
//! Same arguments and seed → same run.
//!
//! Applications on top (the `servers` scenario runs a `rendezvous::Server`
//! on every node) turn on [`Sim::collect_signals`]: deliveries, neighbor
//! changes, failure notices and their own scheduled events
//! ([`Sim::schedule_app`]) then come back as [`Signal`]s, handed to the
//! callback of [`Sim::run_until_with`] at their simulated instant, in the
//! same (time, sequence) order as everything else.

use crate::queue::Queue;
use bytes::Bytes;
use overlay::wire::{Gossip, Graft, IHave, IHaveEntry, Prune};
use overlay::{
    Config, Event, Input, Message, MessageId, MessageType, Output, PeerInfo, State, Time, Timer,
};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Node identity in the simulator: its index.
pub type NodeId = u32;

/// One simulated overlay node: the unchanged core.
pub type Node = State<NodeId, Xoshiro256PlusPlus>;

/// Per-link latency model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Latency {
    /// Each link gets a fixed latency drawn uniformly from `min..=max`.
    Uniform {
        /// Lower bound.
        min: Duration,
        /// Upper bound.
        max: Duration,
    },
    /// Every link has this latency.
    Static(Duration),
}

/// The network the nodes live in.
#[derive(Clone, Debug)]
pub struct Network {
    /// Latency model.
    pub latency: Latency,
    /// Probability in 0..1 that a message is lost.
    pub loss: f64,
    /// Time until a node notices a dead peer or a broken link.
    pub detect_delay: Duration,
}

impl Network {
    /// The one-way latency of link {a, b} in a run seeded `seed`: the same
    /// for every protocol simulated on this network.
    pub fn link_latency(&self, seed: u64, a: NodeId, b: NodeId) -> Duration {
        match self.latency {
            Latency::Static(d) => d,
            Latency::Uniform { min, max } => {
                let (x, y) = (a.min(b), a.max(b));
                let h = splitmix(seed ^ splitmix(u64::from(x) << 32 | u64::from(y)));
                let span = u64::try_from((max - min).as_micros()).unwrap_or(u64::MAX);
                min + Duration::from_micros(if span == 0 { 0 } else { h % (span + 1) })
            }
        }
    }

    /// Whether a message is lost, drawn from `rng`.
    pub fn lost(&self, rng: &mut Xoshiro256PlusPlus) -> bool {
        self.loss > 0.0 && (rng.next_u64() as f64 / u64::MAX as f64) < self.loss
    }
}

/// The failure model both engines share: which side of a partition each
/// node is on, and which "peer is down" notices are already on their way
/// (one per (node, peer) at a time).
#[derive(Default)]
pub(crate) struct Faults {
    group: Vec<u8>,
    partitioned: bool,
    pending_down: HashSet<(NodeId, NodeId)>,
}

impl Faults {
    /// A new node, on side 0.
    pub(crate) fn add_node(&mut self) {
        self.group.push(0);
    }

    /// Puts every node on `side(n)` (0 or 1) and starts the partition.
    pub(crate) fn split(&mut self, side: &dyn Fn(NodeId) -> u8) {
        for (i, g) in self.group.iter_mut().enumerate() {
            *g = side(i as NodeId);
        }
        self.partitioned = true;
    }

    /// Ends the partition.
    pub(crate) fn heal(&mut self) {
        self.partitioned = false;
    }

    /// Whether a partition is in effect.
    pub(crate) fn is_partitioned(&self) -> bool {
        self.partitioned
    }

    /// Partition group of `n`.
    pub(crate) fn group(&self, n: NodeId) -> u8 {
        self.group[n as usize]
    }

    /// Whether a message from `a` to `b` would cross the partition now.
    pub(crate) fn crosses(&self, a: NodeId, b: NodeId) -> bool {
        self.partitioned && self.group[a as usize] != self.group[b as usize]
    }

    /// Whether `node` is to be told that `peer` is down (false if that
    /// notice is already on its way).
    pub(crate) fn notice(&mut self, node: NodeId, peer: NodeId) -> bool {
        self.pending_down.insert((node, peer))
    }

    /// The notice reached `node`.
    pub(crate) fn noticed(&mut self, node: NodeId, peer: NodeId) {
        self.pending_down.remove(&(node, peer));
    }
}

/// The seed of node `id`'s RNG in a run seeded `seed` (both engines).
pub(crate) fn node_seed(seed: u64, id: NodeId) -> u64 {
    splitmix(seed ^ (u64::from(id) << 24))
}

/// What a scenario needs of a simulated protocol: the same network model
/// (latency per link, loss, crash and partition notices after the
/// detection delay), the same broadcast records and traffic counts, for
/// this project's overlay ([`Sim`]) and, with the `iroh` feature,
/// iroh-gossip's (`crate::iroh::IrohSim`), so both run one scenario with one
/// seed and are measured by one piece of code.
pub trait Engine {
    /// Current simulated time.
    fn now(&self) -> Time;
    /// Processes events up to and including `until`; time is then `until`.
    fn run_until(&mut self, until: Time);
    /// Runs for `d` of simulated time.
    fn run_for(&mut self, d: Duration) {
        let until = self.now() + d;
        self.run_until(until);
    }
    /// Node slots (alive or not).
    fn len(&self) -> usize;
    /// Whether no node was ever created.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether `n` is running.
    fn is_alive(&self, n: NodeId) -> bool;
    /// Running nodes, in index order.
    fn alive(&self) -> Box<dyn Iterator<Item = NodeId> + '_>;
    /// `n`'s active view into `out` (cleared first; empty if `n` is not
    /// running): a buffer the caller reuses, since snapshots walk every node.
    fn active_view(&self, n: NodeId, out: &mut Vec<NodeId>);
    /// `n`'s passive view size, where the protocol shows it.
    fn passive_len(&self, n: NodeId) -> Option<usize>;
    /// The configured active view size.
    fn active_capacity(&self) -> usize;
    /// The network RNG (scenario choices are drawn from it).
    fn rng(&mut self) -> &mut Xoshiro256PlusPlus;
    /// Messages and bytes sent so far, by type.
    fn traffic(&self) -> Traffic;
    /// Events processed so far.
    fn events(&self) -> u64;
    /// Creates a node and has it join through `contacts` now.
    fn start_node(&mut self, contacts: &[NodeId]) -> NodeId;
    /// Makes room for `more` nodes at once (at a million nodes, growing the
    /// node table by doubling would hold both copies at its last step).
    fn reserve(&mut self, _more: usize) {}
    /// Crashes `n`; its neighbors notice after the detection delay.
    fn crash(&mut self, n: NodeId);
    /// Splits the nodes into two groups (`side(n)` is 0 or 1).
    fn partition(&mut self, side: &dyn Fn(NodeId) -> u8);
    /// Ends the partition.
    fn heal(&mut self);
    /// Whether a partition is in effect.
    fn is_partitioned(&self) -> bool;
    /// Partition group of `n`.
    fn group(&self, n: NodeId) -> u8;
    /// When `n` was started.
    fn started_at(&self, n: NodeId) -> Time;
    /// Broadcasts `payload` from `origin` now, tracking its deliveries.
    fn broadcast(&mut self, origin: NodeId, payload: Bytes) -> Option<MessageId>;
    /// Takes the record of a broadcast (stop tracking it).
    fn take_broadcast(&mut self, id: &MessageId) -> Option<Broadcast>;
}

impl Engine for Sim {
    fn now(&self) -> Time {
        Sim::now(self)
    }
    fn run_until(&mut self, until: Time) {
        Sim::run_until(self, until);
    }
    fn len(&self) -> usize {
        Sim::len(self)
    }
    fn is_alive(&self, n: NodeId) -> bool {
        Sim::is_alive(self, n)
    }
    fn alive(&self) -> Box<dyn Iterator<Item = NodeId> + '_> {
        Box::new(Sim::alive(self))
    }
    fn active_view(&self, n: NodeId, out: &mut Vec<NodeId>) {
        out.clear();
        if self.links.overflowed {
            if let Some(node) = self.node(n) {
                out.extend(node.active_view());
            }
        } else if self.is_alive(n) {
            out.extend_from_slice(self.links.get(n));
        }
    }
    fn passive_len(&self, n: NodeId) -> Option<usize> {
        self.node(n).map(|node| node.passive_len())
    }
    fn active_capacity(&self) -> usize {
        self.config.hyparview.active_view_capacity
    }
    fn rng(&mut self) -> &mut Xoshiro256PlusPlus {
        Sim::rng(self)
    }
    fn traffic(&self) -> Traffic {
        Sim::traffic(self)
    }
    fn events(&self) -> u64 {
        Sim::events(self)
    }
    fn start_node(&mut self, contacts: &[NodeId]) -> NodeId {
        Sim::start_node(self, contacts)
    }
    fn reserve(&mut self, more: usize) {
        Sim::reserve(self, more);
    }
    fn crash(&mut self, n: NodeId) {
        Sim::crash(self, n);
    }
    fn partition(&mut self, side: &dyn Fn(NodeId) -> u8) {
        Sim::partition(self, side);
    }
    fn heal(&mut self) {
        Sim::heal(self);
    }
    fn is_partitioned(&self) -> bool {
        Sim::is_partitioned(self)
    }
    fn group(&self, n: NodeId) -> u8 {
        Sim::group(self, n)
    }
    fn started_at(&self, n: NodeId) -> Time {
        Sim::started_at(self, n)
    }
    fn broadcast(&mut self, origin: NodeId, payload: Bytes) -> Option<MessageId> {
        Sim::broadcast(self, origin, payload)
    }
    fn take_broadcast(&mut self, id: &MessageId) -> Option<Broadcast> {
        Sim::take_broadcast(self, id)
    }
}

/// What happened to one broadcast, for the metrics.
#[derive(Clone, Debug, Default)]
pub struct Broadcast {
    /// Who sent it.
    pub origin: NodeId,
    /// When.
    pub sent_at: Time,
    /// GOSSIP payloads received by live nodes (duplicates included).
    pub payloads: u64,
    /// First deliveries: (node, hops, latency in µs).
    pub deliveries: Vec<(NodeId, u16, u64)>,
}

/// Messages and bytes sent, by message type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Messages, indexed by `MessageType::index()`.
    pub messages: [u64; MessageType::COUNT],
    /// Encoded bytes (frame bodies plus the 4-byte prefix).
    pub bytes: [u64; MessageType::COUNT],
}

impl Traffic {
    /// Total messages.
    pub fn total_messages(&self) -> u64 {
        self.messages.iter().sum()
    }

    /// Total bytes.
    pub fn total_bytes(&self) -> u64 {
        self.bytes.iter().sum()
    }

    /// `self - earlier`, per type.
    pub fn since(&self, earlier: &Traffic) -> Traffic {
        let mut t = *self;
        for i in 0..MessageType::COUNT {
            t.messages[i] -= earlier.messages[i];
            t.bytes[i] -= earlier.bytes[i];
        }
        t
    }
}

/// Broadcast classes an application can tag its broadcasts with
/// ([`Sim::broadcast_class`]), so GOSSIP, IHAVE and GRAFT bytes can be
/// attributed to what they carry ([`Sim::class_traffic`]). Class 0 is
/// everything not attributable to one broadcast (HyParView, PRUNE, and
/// untagged broadcasts).
pub const CLASSES: usize = 4;

/// What the engine tells an application (with [`Sim::collect_signals`] on).
#[derive(Clone, Debug)]
pub enum Signal {
    /// `node` received a broadcast for the first time.
    Received {
        /// The receiver.
        node: NodeId,
        /// Who broadcast it.
        origin: NodeId,
        /// The broadcast's id.
        id: MessageId,
        /// Its payload.
        payload: Bytes,
    },
    /// `peer` joined `node`'s active view.
    NeighborUp {
        /// The node.
        node: NodeId,
        /// The new neighbor.
        peer: NodeId,
    },
    /// `peer` left `node`'s active view.
    NeighborDown {
        /// The node.
        node: NodeId,
        /// The former neighbor.
        peer: NodeId,
    },
    /// `node` was told `peer` is unreachable (a crash, a partition, or a
    /// send to a dead node), after the detection delay.
    PeerDown {
        /// The node told.
        node: NodeId,
        /// The unreachable peer.
        peer: NodeId,
    },
    /// An event the application scheduled with [`Sim::schedule_app`].
    App {
        /// The node it was scheduled for.
        node: NodeId,
        /// The application's token.
        token: u32,
    },
}

/// A queued event, 16 bytes: the queue holds hundreds of thousands at the
/// peak of a 10,000-node flood, so the common messages (GOSSIP, IHAVE,
/// GRAFT, PRUNE) refer to message ids by their index in [`Interned`]
/// instead of carrying them (a `Message` is 80 bytes, an IHAVE entry 34),
/// and the rest wait in a [`Slab`].
#[derive(Clone, Copy)]
enum Ev {
    /// GOSSIP of interned message `msg`, whose origin and payload are
    /// interned with it.
    Gossip {
        from: NodeId,
        to: NodeId,
        msg: u32,
        hops: u16,
    },
    /// GRAFT of interned message `msg`.
    Graft {
        from: NodeId,
        to: NodeId,
        msg: u32,
        resend: bool,
    },
    Prune {
        from: NodeId,
        to: NodeId,
        origin: NodeId,
    },
    /// IHAVE with one entry: interned message `msg` at `hops`.
    IHave1 {
        from: NodeId,
        to: NodeId,
        msg: u32,
        hops: u16,
    },
    /// IHAVE with more entries, kept in the IHAVE slab.
    IHave {
        from: NodeId,
        to: NodeId,
        slot: u32,
    },
    /// Any other message, kept in the slab.
    Deliver {
        from: NodeId,
        to: NodeId,
        slot: u32,
    },
    Timer {
        node: NodeId,
        timer: SimTimer,
    },
    Down {
        node: NodeId,
        peer: NodeId,
    },
    /// An application event (see [`Signal::App`]).
    App {
        node: NodeId,
        token: u32,
    },
}

/// [`Timer`] with the message id of a GRAFT timer interned (4 bytes
/// instead of 33).
#[derive(Clone, Copy)]
enum SimTimer {
    Shuffle,
    Repair,
    IHave,
    Graft(u32),
    Expiry,
}

/// Message ids seen in GOSSIP, IHAVE, GRAFT and GRAFT timers, each with
/// the origin and body (`id ‖ payload`) of its GOSSIP: in an honest
/// simulation every copy of a broadcast carries the same ones. One entry
/// per broadcast, kept for the whole run.
#[derive(Default)]
struct Interned {
    ids: Vec<MessageId>,
    /// Origin and body, once a GOSSIP was seen.
    bodies: Vec<Option<(NodeId, Bytes)>>,
    /// Broadcast class (0 unless tagged by [`Sim::broadcast_class`]).
    classes: Vec<u8>,
    index: HashMap<MessageId, u32>,
}

impl Interned {
    fn id(&mut self, id: &MessageId) -> u32 {
        if let Some(&i) = self.index.get(id) {
            return i;
        }
        let i = self.ids.len() as u32;
        self.ids.push(*id);
        self.bodies.push(None);
        self.classes.push(0);
        self.index.insert(*id, i);
        i
    }

    /// The index of a GOSSIP's id, if its origin and body are the ones
    /// interned with it (or it is the first GOSSIP of that id).
    fn gossip(&mut self, g: &Gossip<NodeId>) -> Option<u32> {
        let i = self.id(&g.id());
        match &mut self.bodies[i as usize] {
            Some((origin, body)) => (*origin == g.origin && body == g.body()).then_some(i),
            body @ None => {
                *body = Some((g.origin, g.body().clone()));
                Some(i)
            }
        }
    }

    /// The class of a message id (0 if never seen or untagged).
    fn class(&self, id: &MessageId) -> usize {
        self.index
            .get(id)
            .map_or(0, |&i| usize::from(self.classes[i as usize]))
    }
}

/// Things in flight that do not fit in an event, by slot; free slots are
/// reused.
pub(crate) struct Slab<T> {
    slots: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Slab<T> {
    pub(crate) fn put(&mut self, msg: T) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(msg);
                i
            }
            None => {
                self.slots.push(Some(msg));
                (self.slots.len() - 1) as u32
            }
        }
    }

    pub(crate) fn take(&mut self, slot: u32) -> Option<T> {
        let msg = self.slots.get_mut(slot as usize)?.take();
        self.free.push(slot);
        msg
    }
}

// The queue's footprint per event: time, sequence number and this.
const _: () = assert!(core::mem::size_of::<Ev>() == 16);

pub(crate) fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Every node's active view as the engine saw it change (the nodes'
/// `NeighborUp` / `NeighborDown` events), packed in one table: snapshots
/// and BFS read a million views from here instead of from node state.
#[derive(Debug, Default)]
struct Links {
    /// Slots per node: the active view capacity.
    stride: usize,
    peers: Vec<NodeId>,
    len: Vec<u8>,
    /// A view outgrew its slots (a configuration beyond `u8`, or a core
    /// that broke its bound): from then on views are read from the nodes.
    overflowed: bool,
}

impl Links {
    fn new(stride: usize) -> Self {
        Links {
            stride: stride.clamp(1, u8::MAX as usize),
            ..Links::default()
        }
    }

    fn reserve(&mut self, more: usize) {
        self.peers.reserve_exact(more * self.stride);
        self.len.reserve_exact(more);
    }

    fn add_node(&mut self) {
        self.peers.resize(self.peers.len() + self.stride, 0);
        self.len.push(0);
    }

    fn get(&self, n: NodeId) -> &[NodeId] {
        let n = n as usize;
        let len = self.len.get(n).map_or(0, |l| *l as usize);
        &self.peers[n * self.stride..n * self.stride + len]
    }

    fn up(&mut self, n: NodeId, peer: NodeId) {
        let i = n as usize;
        let len = self.len[i] as usize;
        if len >= self.stride {
            debug_assert!(false, "node {n}: an active view above its capacity");
            self.overflowed = true;
            return;
        }
        self.peers[i * self.stride + len] = peer;
        self.len[i] += 1;
    }

    fn down(&mut self, n: NodeId, peer: NodeId) {
        let i = n as usize;
        let len = self.len[i] as usize;
        let view = &mut self.peers[i * self.stride..i * self.stride + len];
        if let Some(pos) = view.iter().position(|p| *p == peer) {
            // Kept in order, as the node's own view is.
            view.copy_within(pos + 1.., pos);
            self.len[i] -= 1;
        }
    }

    fn clear(&mut self, n: NodeId) {
        self.len[n as usize] = 0;
    }
}

/// The simulation: nodes, network and event queue.
pub struct Sim {
    now: Time,
    seed: u64,
    /// Shared by every node.
    config: Arc<Config>,
    net: Network,
    nodes: Vec<Option<Node>>,
    /// `alive[n]` is `nodes[n].is_some()`, packed: liveness checks and
    /// snapshots then touch one byte per node, not its state.
    alive: Vec<bool>,
    links: Links,
    started: Vec<Time>,
    faults: Faults,
    queue: Queue<Ev>,
    seq: u64,
    interned: Interned,
    slab: Slab<Message<NodeId>>,
    /// Entries of IHAVEs in flight: interned message and hops.
    ihaves: Slab<Vec<(u32, u16)>>,
    rng: Xoshiro256PlusPlus,
    broadcasts: HashMap<MessageId, Broadcast>,
    traffic: Traffic,
    /// Traffic by broadcast class, when [`Sim::collect_signals`] is on.
    class_traffic: [Traffic; CLASSES],
    /// Signals for the application, when it asked for them.
    signals: Option<std::collections::VecDeque<Signal>>,
    /// The output buffer every node's handler appends to.
    out: Vec<Output<NodeId>>,
    events: u64,
}

impl Sim {
    /// An empty simulation.
    pub fn new(config: Config, net: Network, seed: u64) -> Self {
        let stride = config.hyparview.active_view_capacity;
        Sim {
            now: Time::ZERO,
            seed,
            config: Arc::new(config),
            net,
            nodes: Vec::new(),
            alive: Vec::new(),
            links: Links::new(stride),
            started: Vec::new(),
            faults: Faults::default(),
            queue: Queue::new(),
            seq: 0,
            interned: Interned::default(),
            slab: Slab::default(),
            ihaves: Slab::default(),
            rng: Xoshiro256PlusPlus::seed_from_u64(splitmix(seed)),
            broadcasts: HashMap::new(),
            traffic: Traffic::default(),
            class_traffic: [Traffic::default(); CLASSES],
            signals: None,
            out: Vec::new(),
            events: 0,
        }
    }

    /// From now on, collect [`Signal`]s for an application (handed out by
    /// [`Sim::run_until_with`]) and count traffic by broadcast class.
    /// Overlay-only scenarios leave it off (and run exactly as before).
    pub fn collect_signals(&mut self) {
        self.signals.get_or_insert_with(Default::default);
    }

    /// Messages and bytes sent so far by broadcast class (GOSSIP, IHAVE and
    /// GRAFT by the class of their message; an IHAVE's bytes are split
    /// evenly among its entries; everything else in class 0). Only counted
    /// with [`Sim::collect_signals`] on.
    pub fn class_traffic(&self) -> [Traffic; CLASSES] {
        self.class_traffic
    }

    /// Schedules an application event for `node` at `at` (never before
    /// now): it comes back as [`Signal::App`] with `token`.
    pub fn schedule_app(&mut self, at: Time, node: NodeId, token: u32) {
        self.schedule(at, Ev::App { node, token });
    }

    /// Broadcasts `payload` from `origin` now, without per-delivery
    /// tracking (unlike [`Sim::broadcast`]), tagging its traffic with
    /// `class` (below [`CLASSES`]).
    pub fn broadcast_class(
        &mut self,
        origin: NodeId,
        payload: Bytes,
        class: u8,
    ) -> Option<MessageId> {
        self.originate(origin, payload, |sim, id| {
            let i = sim.interned.id(id);
            sim.interned.classes[i as usize] = class.min(CLASSES as u8 - 1);
        })
    }

    /// Has `origin` broadcast `payload` now; `before` sees the id before
    /// any of the broadcast's messages leave.
    fn originate(
        &mut self,
        origin: NodeId,
        payload: Bytes,
        before: impl FnOnce(&mut Self, &MessageId),
    ) -> Option<MessageId> {
        let now = self.now;
        let node = self.nodes.get_mut(origin as usize)?.as_mut()?;
        let mut out = std::mem::take(&mut self.out);
        let id = node.broadcast_into(now, payload, &mut out);
        if let Ok(id) = &id {
            before(self, id);
        }
        self.flush(origin, &mut out);
        self.out = out;
        id.ok()
    }

    /// Current simulated time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// The overlay configuration every node uses.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Events processed so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Messages and bytes sent so far.
    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    /// The network RNG (for scenario choices, so they are seeded too).
    pub fn rng(&mut self) -> &mut Xoshiro256PlusPlus {
        &mut self.rng
    }

    /// Number of node slots (alive or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node was ever created.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether `n` is running.
    pub fn is_alive(&self, n: NodeId) -> bool {
        self.alive.get(n as usize).copied().unwrap_or(false)
    }

    /// When `n` was started.
    pub fn started_at(&self, n: NodeId) -> Time {
        self.started[n as usize]
    }

    /// The node, if running.
    pub fn node(&self, n: NodeId) -> Option<&Node> {
        self.nodes.get(n as usize).and_then(|x| x.as_ref())
    }

    /// Running nodes.
    pub fn alive(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.alive
            .iter()
            .enumerate()
            .filter(|(_, a)| **a)
            .map(|(i, _)| i as NodeId)
    }

    /// Partition group of `n` (meaningful while partitioned).
    pub fn group(&self, n: NodeId) -> u8 {
        self.faults.group(n)
    }

    /// Whether a partition is in effect.
    pub fn is_partitioned(&self) -> bool {
        self.faults.is_partitioned()
    }

    fn schedule(&mut self, at: Time, ev: Ev) {
        self.seq += 1;
        self.queue.push(at.max(self.now).as_micros(), self.seq, ev);
    }

    /// The one-way latency of link {a, b}.
    pub fn link_latency(&self, a: NodeId, b: NodeId) -> Duration {
        self.net.link_latency(self.seed, a, b)
    }

    /// Makes room for `more` nodes without regrowing the node table.
    pub fn reserve(&mut self, more: usize) {
        self.nodes.reserve_exact(more);
        self.alive.reserve_exact(more);
        self.links.reserve(more);
        self.started.reserve_exact(more);
        self.faults.group.reserve_exact(more);
    }

    /// Creates a node and has it join through `contacts` now. Returns its id.
    pub fn start_node(&mut self, contacts: &[NodeId]) -> NodeId {
        let id = self.nodes.len() as NodeId;
        let rng = Xoshiro256PlusPlus::seed_from_u64(node_seed(self.seed, id));
        self.nodes
            .push(Some(State::new(id, self.config.clone(), rng)));
        self.alive.push(true);
        self.links.add_node();
        self.started.push(self.now);
        self.faults.add_node();
        let contacts = contacts
            .iter()
            .copied()
            .filter(|c| *c != id)
            .map(PeerInfo::bare)
            .collect();
        self.input(id, Input::Join(contacts));
        id
    }

    /// Crashes `n`: its state is dropped; its neighbors notice after the
    /// detection delay.
    pub fn crash(&mut self, n: NodeId) {
        let Some(node) = self.nodes.get_mut(n as usize).and_then(|x| x.take()) else {
            return;
        };
        self.alive[n as usize] = false;
        self.links.clear(n);
        let neighbors: Vec<NodeId> = node.active_view().collect();
        for m in neighbors {
            self.notice_down(m, n);
        }
    }

    /// Splits the nodes into two groups (`side(n)` is 0 or 1). Links across
    /// break on both ends; new ones cannot form until [`Sim::heal`].
    pub fn partition(&mut self, side: impl Fn(NodeId) -> u8) {
        self.faults.split(&side);
        let alive: Vec<NodeId> = self.alive().collect();
        for a in alive {
            let crossing: Vec<NodeId> = self.nodes[a as usize]
                .as_ref()
                .map(|n| {
                    n.active_view()
                        .filter(|b| self.faults.crosses(a, *b))
                        .collect()
                })
                .unwrap_or_default();
            for b in crossing {
                self.notice_down(a, b);
            }
        }
    }

    /// Ends the partition.
    pub fn heal(&mut self) {
        self.faults.heal();
    }

    /// Whether a message from `a` to `b` would cross the partition now.
    pub fn crosses(&self, a: NodeId, b: NodeId) -> bool {
        self.faults.crosses(a, b)
    }

    /// `node` will be told that `peer` is unreachable after the detection delay.
    fn notice_down(&mut self, node: NodeId, peer: NodeId) {
        if self.is_alive(node) && self.faults.notice(node, peer) {
            let at = self.now + self.net.detect_delay;
            self.schedule(at, Ev::Down { node, peer });
        }
    }

    /// Broadcasts `payload` from `origin` now.
    pub fn broadcast(&mut self, origin: NodeId, payload: Bytes) -> Option<MessageId> {
        let now = self.now;
        self.originate(origin, payload, |sim, id| {
            sim.broadcasts.insert(
                *id,
                Broadcast {
                    origin,
                    sent_at: now,
                    ..Broadcast::default()
                },
            );
        })
    }

    /// Takes the record of a broadcast (stop tracking it).
    pub fn take_broadcast(&mut self, id: &MessageId) -> Option<Broadcast> {
        self.broadcasts.remove(id)
    }

    /// Processes events up to and including `until`; time is then `until`.
    pub fn run_until(&mut self, until: Time) {
        self.run_until_with(until, &mut |_, _| {});
    }

    /// [`Sim::run_until`], handing every [`Signal`] to `on` at its instant
    /// (after the event that caused it). `on` may act on the simulation
    /// (broadcast, schedule, crash); signals that causes are handed out in
    /// turn before the next event.
    pub fn run_until_with(&mut self, until: Time, on: &mut dyn FnMut(&mut Sim, Signal)) {
        self.drain_signals(on);
        while let Some((at, ev)) = self.queue.pop_due(until.as_micros()) {
            self.now = Time::from_micros(at);
            self.events += 1;
            self.step(ev);
            self.drain_signals(on);
        }
        self.now = self.now.max(until);
    }

    fn drain_signals(&mut self, on: &mut dyn FnMut(&mut Sim, Signal)) {
        // Bounded: a signal's handler runs to completion, and what it
        // causes at this instant (its broadcasts) signals nothing back to
        // the broadcaster itself.
        while let Some(sig) = self.signals.as_mut().and_then(|q| q.pop_front()) {
            on(self, sig);
        }
    }

    fn signal(&mut self, sig: Signal) {
        if let Some(q) = self.signals.as_mut() {
            q.push_back(sig);
        }
    }

    /// Runs for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Gossip { from, to, .. }
            | Ev::Graft { from, to, .. }
            | Ev::Prune { from, to, .. }
            | Ev::IHave1 { from, to, .. }
            | Ev::IHave { from, to, .. }
            | Ev::Deliver { from, to, .. } => {
                let Some(msg) = self.message(ev) else {
                    return;
                };
                if !self.is_alive(to) || self.crosses(from, to) {
                    self.notice_down(from, to);
                    return;
                }
                if let Message::Gossip(g) = &msg
                    && let Some(b) = self.broadcasts.get_mut(&g.id())
                {
                    b.payloads += 1;
                }
                self.input(to, Input::Message { from, message: msg });
            }
            Ev::Timer { node, timer } => {
                let timer = match timer {
                    SimTimer::Shuffle => Timer::Shuffle,
                    SimTimer::Repair => Timer::Repair,
                    SimTimer::IHave => Timer::IHave,
                    SimTimer::Graft(i) => Timer::Graft(self.interned.ids[i as usize]),
                    SimTimer::Expiry => Timer::Expiry,
                };
                self.input(node, Input::Timer(timer));
            }
            Ev::Down { node, peer } => {
                self.faults.noticed(node, peer);
                if self.is_alive(node) {
                    self.input(node, Input::PeerDown(peer));
                    self.signal(Signal::PeerDown { node, peer });
                }
            }
            Ev::App { node, token } => self.signal(Signal::App { node, token }),
        }
    }

    fn input(&mut self, n: NodeId, input: Input<NodeId>) {
        let now = self.now;
        if let Some(node) = self.nodes.get_mut(n as usize).and_then(|x| x.as_mut()) {
            let mut out = std::mem::take(&mut self.out);
            node.handle_into(now, input, &mut out);
            self.flush(n, &mut out);
            self.out = out;
        }
    }

    /// Acts on `n`'s outputs (leaving `outputs` empty, its capacity kept
    /// for the next node).
    fn flush(&mut self, n: NodeId, outputs: &mut Vec<Output<NodeId>>) {
        for out in outputs.drain(..) {
            match out {
                Output::Send { to, message } => self.send(n, to, message),
                Output::SetTimer { at, timer } => {
                    let timer = match timer {
                        Timer::Shuffle => SimTimer::Shuffle,
                        Timer::Repair => SimTimer::Repair,
                        Timer::IHave => SimTimer::IHave,
                        Timer::Graft(id) => SimTimer::Graft(self.interned.id(&id)),
                        Timer::Expiry => SimTimer::Expiry,
                    };
                    self.schedule(at, Ev::Timer { node: n, timer });
                }
                Output::Event(Event::Received(d)) => {
                    let now = self.now;
                    if let Some(b) = self.broadcasts.get_mut(&d.id) {
                        let latency = now.saturating_since(b.sent_at).as_micros() as u64;
                        b.deliveries.push((n, d.hops, latency));
                    }
                    self.signal(Signal::Received {
                        node: n,
                        origin: d.origin,
                        id: d.id,
                        payload: d.payload,
                    });
                }
                Output::Event(Event::NeighborUp(peer)) => {
                    self.links.up(n, peer);
                    self.signal(Signal::NeighborUp { node: n, peer });
                }
                Output::Event(Event::NeighborDown(peer)) => {
                    self.links.down(n, peer);
                    self.signal(Signal::NeighborDown { node: n, peer });
                }
                Output::Disconnect { .. } | Output::Event(_) => {}
            }
        }
    }

    fn send(&mut self, from: NodeId, to: NodeId, msg: Message<NodeId>) {
        let t = msg.message_type().index();
        let bytes = msg.body_len() as u64 + 4;
        self.traffic.messages[t] += 1;
        self.traffic.bytes[t] += bytes;
        if self.net.lost(&mut self.rng) {
            if self.signals.is_some() {
                self.count_lost(&msg, t, bytes);
            }
            return;
        }
        let at = self.now + self.link_latency(from, to);
        let ev = match msg {
            Message::Gossip(g) => match self.interned.gossip(&g) {
                Some(msg) => Ev::Gossip {
                    from,
                    to,
                    msg,
                    hops: g.hops,
                },
                None => Ev::Deliver {
                    from,
                    to,
                    slot: self.slab.put(Message::Gossip(g)),
                },
            },
            Message::Graft(g) => Ev::Graft {
                from,
                to,
                msg: self.interned.id(&g.id),
                resend: g.resend,
            },
            Message::Prune(p) => Ev::Prune {
                from,
                to,
                origin: p.origin,
            },
            Message::IHave(IHave { entries }) => match entries.as_slice() {
                [e] => Ev::IHave1 {
                    from,
                    to,
                    msg: self.interned.id(&e.id),
                    hops: e.hops,
                },
                _ => {
                    let entries = entries
                        .iter()
                        .map(|e| (self.interned.id(&e.id), e.hops))
                        .collect();
                    Ev::IHave {
                        from,
                        to,
                        slot: self.ihaves.put(entries),
                    }
                }
            },
            msg => Ev::Deliver {
                from,
                to,
                slot: self.slab.put(msg),
            },
        };
        if self.signals.is_some() {
            self.count_sent(&ev, t, bytes);
        }
        self.schedule(at, ev);
    }

    /// Attributes a message about to be queued to the broadcast classes it
    /// carries (by its interned ids: no lookups).
    fn count_sent(&mut self, ev: &Ev, t: usize, bytes: u64) {
        let class = |i: u32| usize::from(self.interned.classes[i as usize]);
        let mut per = [0u64; CLASSES];
        let first = match *ev {
            Ev::Gossip { msg, .. } | Ev::Graft { msg, .. } | Ev::IHave1 { msg, .. } => class(msg),
            Ev::IHave { slot, .. } => {
                let entries = self.ihaves.slots[slot as usize].as_deref().unwrap_or(&[]);
                for &(i, _) in entries {
                    per[class(i)] += 1;
                }
                entries.first().map_or(0, |&(i, _)| class(i))
            }
            _ => 0,
        };
        self.count_split(t, bytes, per, first);
    }

    /// The same for a lost message (not interned: by lookups).
    fn count_lost(&mut self, msg: &Message<NodeId>, t: usize, bytes: u64) {
        let mut per = [0u64; CLASSES];
        let first = match msg {
            Message::Gossip(g) => self.interned.class(&g.id()),
            Message::Graft(g) => self.interned.class(&g.id),
            Message::IHave(IHave { entries }) => {
                for e in entries {
                    per[self.interned.class(&e.id)] += 1;
                }
                entries.first().map_or(0, |e| self.interned.class(&e.id))
            }
            _ => 0,
        };
        self.count_split(t, bytes, per, first);
    }

    /// Counts one message of type `t` and `bytes`: the bytes split evenly
    /// among the classes of its IHAVE entries (`per`, all zero for other
    /// messages), the message and any remainder to class `first`.
    fn count_split(&mut self, t: usize, bytes: u64, per: [u64; CLASSES], first: usize) {
        let n: u64 = per.iter().sum();
        let mut given = 0;
        for (c, k) in per.iter().enumerate() {
            let share = (bytes * k).checked_div(n).unwrap_or(0);
            self.class_traffic[c].bytes[t] += share;
            given += share;
        }
        self.class_traffic[first].bytes[t] += bytes - given;
        self.class_traffic[first].messages[t] += 1;
    }

    /// The message a delivery event carries (taking it out of the slab).
    fn message(&mut self, ev: Ev) -> Option<Message<NodeId>> {
        Some(match ev {
            Ev::Gossip { msg, hops, .. } => {
                let i = msg as usize;
                let (origin, body) = self.interned.bodies[i].clone()?;
                Message::Gossip(Gossip::from_body(origin, hops, body)?)
            }
            Ev::Graft { msg, resend, .. } => Message::Graft(Graft {
                id: self.interned.ids[msg as usize],
                resend,
            }),
            Ev::Prune { origin, .. } => Message::Prune(Prune { origin }),
            Ev::IHave1 { msg, hops, .. } => Message::IHave(IHave {
                entries: vec![IHaveEntry {
                    id: self.interned.ids[msg as usize],
                    hops,
                }],
            }),
            Ev::IHave { slot, .. } => Message::IHave(IHave {
                entries: self
                    .ihaves
                    .take(slot)?
                    .into_iter()
                    .map(|(i, hops)| IHaveEntry {
                        id: self.interned.ids[i as usize],
                        hops,
                    })
                    .collect(),
            }),
            Ev::Deliver { slot, .. } => self.slab.take(slot)?,
            Ev::Timer { .. } | Ev::Down { .. } | Ev::App { .. } => return None,
        })
    }
}
