//! iroh-gossip's protocol in this engine: `iroh_gossip::proto::State` (the
//! crate from crates.io, unchanged, its default config, one topic) on the
//! same network model as [`crate::engine::Sim`], so one scenario, one seed
//! and one set of metrics compare the two protocols on matched work.
//!
//! The network is [`Network`]'s: the same one-way latency per link (the
//! same hash of seed and link), the same loss draw per message, and the
//! same failure notices — a node is told `PeerDisconnected` after the
//! detection delay when its neighbor crashed, when a message it sent went
//! to a dead node or across a partition, and when a partition cut one of
//! its links. What iroh-gossip needs beyond that is modelled as iroh's own
//! simulator (`proto::sim`) does: a connection exists once a message went
//! over it, and `DisconnectPeer` closes it, the other end told one link
//! latency (+1 µs) later.
//!
//! Traffic: every message is counted with its postcard encoding (what
//! iroh-gossip puts on the wire, the 32-byte topic id included) plus a
//! 4-byte length prefix, as this project's frames are; peer ids are the
//! 4-byte node indexes in both protocols. Types are mapped onto the
//! overlay's: GOSSIP, IHAVE, GRAFT, PRUNE, and HyParView's JOIN, FORWARDJOIN,
//! NEIGHBOR, DISCONNECT, SHUFFLE, SHUFFLEREPLY (iroh has no NEIGHBORREPLY).
//!
//! iroh-gossip does not show its views: the engine keeps each node's active
//! view from its NeighborUp/NeighborDown events; passive views are not
//! known (`passive_len` is `None`).

use crate::engine::{
    Broadcast, Engine, Faults, Network, NodeId, Slab, Traffic, node_seed, splitmix,
};
use crate::queue::Queue;
use bytes::Bytes;
use iroh_gossip::proto::{
    Command, Config, DeliveryScope, Event, InEvent, Message, OutEvent, PeerData, Scope, State,
    Timer, TopicId,
};
use overlay::{MessageId, MessageType, Time};
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// One simulated iroh-gossip node.
pub type IrohNode = State<NodeId, Xoshiro256PlusPlus>;

/// The one topic every node joins.
const TOPIC: [u8; 32] = [7; 32];

#[derive(Clone, Copy)]
enum Ev {
    /// A message in the slab (with its broadcast's id when it is a
    /// GOSSIP).
    Msg {
        from: NodeId,
        to: NodeId,
        slot: u32,
    },
    Timer {
        node: NodeId,
        slot: u32,
    },
    /// `node` is told `peer` is gone.
    Down {
        node: NodeId,
        peer: NodeId,
    },
}

/// iroh-gossip nodes on the engine's network.
pub struct IrohSim {
    now: Time,
    /// What simulated time 0 is, in the `Instant`s iroh-gossip takes.
    base: tokio::time::Instant,
    seed: u64,
    config: Config,
    topic: TopicId,
    net: Network,
    nodes: Vec<Option<IrohNode>>,
    /// Active views, from the nodes' neighbor events.
    active: Vec<Vec<NodeId>>,
    started: Vec<Time>,
    faults: Faults,
    /// Connections a message went over, as (lower, higher) index.
    conns: HashSet<(NodeId, NodeId)>,
    queue: Queue<Ev>,
    seq: u64,
    /// Messages in flight, with their broadcast's id if GOSSIP.
    msgs: Slab<(Message<NodeId>, Option<MessageId>)>,
    timers: Slab<Timer<NodeId>>,
    rng: Xoshiro256PlusPlus,
    broadcasts: HashMap<MessageId, Broadcast>,
    traffic: Traffic,
    scratch: Vec<u8>,
    events: u64,
}

fn conn(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    (a.min(b), a.max(b))
}

/// The overlay type an encoded iroh-gossip message maps to: after the
/// 32-byte topic, postcard writes the variant of `topic::Message` (0 swarm,
/// 1 gossip) and then that of the inner enum, each one byte here.
fn message_type(bytes: &[u8]) -> MessageType {
    match (bytes.get(32), bytes.get(33)) {
        (Some(0), Some(0)) => MessageType::Join,
        (Some(0), Some(1)) => MessageType::ForwardJoin,
        (Some(0), Some(2)) => MessageType::Shuffle,
        (Some(0), Some(3)) => MessageType::ShuffleReply,
        (Some(0), Some(4)) => MessageType::Neighbor,
        (Some(0), _) => MessageType::Disconnect,
        (_, Some(0)) => MessageType::Gossip,
        (_, Some(1)) => MessageType::Prune,
        (_, Some(2)) => MessageType::Graft,
        _ => MessageType::IHave,
    }
}

/// Hops from the origin of a delivery: iroh-gossip's round is 0 at the
/// origin's neighbors, this project's hop count 1, so round + 1.
fn hops(scope: &DeliveryScope) -> u16 {
    match scope {
        DeliveryScope::Swarm(round) => {
            // `Round`'s u16 is private; its encoding (a varint) is not.
            let mut buf = [0u8; 3];
            postcard::to_slice(round, &mut buf)
                .ok()
                .and_then(|b| postcard::from_bytes::<u16>(b).ok())
                .map_or(0, |r| r.saturating_add(1))
        }
        DeliveryScope::Neighbors => 1,
    }
}

impl IrohSim {
    /// An empty simulation of nodes running `config`.
    pub fn new(config: Config, net: Network, seed: u64) -> Self {
        IrohSim {
            now: Time::ZERO,
            base: tokio::time::Instant::now(),
            seed,
            config,
            topic: TopicId::from_bytes(TOPIC),
            net,
            nodes: Vec::new(),
            active: Vec::new(),
            started: Vec::new(),
            faults: Faults::default(),
            conns: HashSet::new(),
            queue: Queue::new(),
            seq: 0,
            msgs: Slab::default(),
            timers: Slab::default(),
            rng: Xoshiro256PlusPlus::seed_from_u64(splitmix(seed)),
            broadcasts: HashMap::new(),
            traffic: Traffic::default(),
            scratch: Vec::new(),
            events: 0,
        }
    }

    fn schedule(&mut self, at: Time, ev: Ev) {
        self.seq += 1;
        self.queue.push(at.max(self.now).as_micros(), self.seq, ev);
    }

    fn notice_down(&mut self, node: NodeId, peer: NodeId) {
        if self.is_alive(node) && self.faults.notice(node, peer) {
            let at = self.now + self.net.detect_delay;
            self.schedule(at, Ev::Down { node, peer });
        }
    }

    fn input(&mut self, n: NodeId, event: InEvent<NodeId>) {
        let now = self.base + Duration::from_micros(self.now.as_micros());
        let Some(node) = self.nodes.get_mut(n as usize).and_then(|x| x.as_mut()) else {
            return;
        };
        let out: Vec<OutEvent<NodeId>> = node.handle(event, now, None).collect();
        for o in out {
            match o {
                OutEvent::SendMessage(to, message) => self.send(n, to, message),
                OutEvent::ScheduleTimer(after, timer) => {
                    let slot = self.timers.put(timer);
                    let at = self.now + after;
                    self.schedule(at, Ev::Timer { node: n, slot });
                }
                OutEvent::DisconnectPeer(to) => {
                    if self.conns.remove(&conn(n, to)) {
                        let at = self.now
                            + self.net.link_latency(self.seed, n, to)
                            + Duration::from_micros(1);
                        self.schedule(at, Ev::Down { node: to, peer: n });
                    }
                }
                OutEvent::EmitEvent(_, Event::NeighborUp(p)) => {
                    let view = &mut self.active[n as usize];
                    if !view.contains(&p) {
                        view.push(p);
                    }
                }
                OutEvent::EmitEvent(_, Event::NeighborDown(p)) => {
                    self.active[n as usize].retain(|x| *x != p);
                }
                OutEvent::EmitEvent(_, Event::Received(g)) => {
                    let id = MessageId(*blake3::hash(&g.content).as_bytes());
                    if let Some(b) = self.broadcasts.get_mut(&id) {
                        let latency = self.now.saturating_since(b.sent_at).as_micros() as u64;
                        b.deliveries.push((n, hops(&g.scope), latency));
                    }
                }
                OutEvent::PeerData(..) => {}
            }
        }
    }

    fn send(&mut self, from: NodeId, to: NodeId, message: Message<NodeId>) {
        self.scratch.clear();
        let Ok(bytes) = postcard::to_extend(&message, std::mem::take(&mut self.scratch)) else {
            return;
        };
        let t = message_type(&bytes);
        self.traffic.messages[t.index()] += 1;
        self.traffic.bytes[t.index()] += bytes.len() as u64 + 4;
        // A GOSSIP's id follows the two variant bytes.
        let gossip = (t == MessageType::Gossip)
            .then(|| bytes.get(34..66))
            .flatten()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(MessageId);
        self.scratch = bytes;
        if self.net.lost(&mut self.rng) {
            return;
        }
        let at = self.now + self.net.link_latency(self.seed, from, to);
        let slot = self.msgs.put((message, gossip));
        self.schedule(at, Ev::Msg { from, to, slot });
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Msg { from, to, slot } => {
                let Some((message, gossip)) = self.msgs.take(slot) else {
                    return;
                };
                if !self.is_alive(to) || self.faults.crosses(from, to) {
                    self.notice_down(from, to);
                    return;
                }
                if let Some(b) = gossip.and_then(|id| self.broadcasts.get_mut(&id)) {
                    b.payloads += 1;
                }
                self.conns.insert(conn(from, to));
                self.input(to, InEvent::RecvMessage(from, message));
            }
            Ev::Timer { node, slot } => {
                if let Some(timer) = self.timers.take(slot) {
                    self.input(node, InEvent::TimerExpired(timer));
                }
            }
            Ev::Down { node, peer } => {
                self.faults.noticed(node, peer);
                self.input(node, InEvent::PeerDisconnected(peer));
            }
        }
    }
}

impl Engine for IrohSim {
    fn now(&self) -> Time {
        self.now
    }

    fn run_until(&mut self, until: Time) {
        while let Some((at, ev)) = self.queue.pop_due(until.as_micros()) {
            self.now = Time::from_micros(at);
            self.events += 1;
            self.step(ev);
        }
        self.now = self.now.max(until);
    }

    fn len(&self) -> usize {
        self.nodes.len()
    }

    fn is_alive(&self, n: NodeId) -> bool {
        self.nodes.get(n as usize).is_some_and(|x| x.is_some())
    }

    fn alive(&self) -> Box<dyn Iterator<Item = NodeId> + '_> {
        Box::new(
            self.nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.is_some())
                .map(|(i, _)| i as NodeId),
        )
    }

    fn active_view(&self, n: NodeId, out: &mut Vec<NodeId>) {
        out.clear();
        if self.is_alive(n) {
            out.extend_from_slice(&self.active[n as usize]);
        }
    }

    fn passive_len(&self, _: NodeId) -> Option<usize> {
        None
    }

    fn active_capacity(&self) -> usize {
        self.config.membership.active_view_capacity
    }

    fn rng(&mut self) -> &mut Xoshiro256PlusPlus {
        &mut self.rng
    }

    fn traffic(&self) -> Traffic {
        self.traffic
    }

    fn events(&self) -> u64 {
        self.events
    }

    fn start_node(&mut self, contacts: &[NodeId]) -> NodeId {
        let id = self.nodes.len() as NodeId;
        let rng = Xoshiro256PlusPlus::seed_from_u64(node_seed(self.seed, id));
        self.nodes.push(Some(State::new(
            id,
            PeerData::default(),
            self.config.clone(),
            rng,
        )));
        self.active.push(Vec::new());
        self.started.push(self.now);
        self.faults.add_node();
        let contacts = contacts.iter().copied().filter(|c| *c != id).collect();
        self.input(id, InEvent::Command(self.topic, Command::Join(contacts)));
        id
    }

    fn crash(&mut self, n: NodeId) {
        if self
            .nodes
            .get_mut(n as usize)
            .and_then(|x| x.take())
            .is_none()
        {
            return;
        }
        for m in std::mem::take(&mut self.active[n as usize]) {
            self.notice_down(m, n);
        }
    }

    fn partition(&mut self, side: &dyn Fn(NodeId) -> u8) {
        self.faults.split(side);
        let alive: Vec<NodeId> = self.alive().collect();
        for a in alive {
            let crossing: Vec<NodeId> = self.active[a as usize]
                .iter()
                .copied()
                .filter(|b| self.faults.crosses(a, *b))
                .collect();
            for b in crossing {
                self.notice_down(a, b);
            }
        }
    }

    fn heal(&mut self) {
        self.faults.heal();
    }

    fn is_partitioned(&self) -> bool {
        self.faults.is_partitioned()
    }

    fn group(&self, n: NodeId) -> u8 {
        self.faults.group(n)
    }

    fn started_at(&self, n: NodeId) -> Time {
        self.started[n as usize]
    }

    fn broadcast(&mut self, origin: NodeId, payload: Bytes) -> Option<MessageId> {
        if !self.is_alive(origin) {
            return None;
        }
        let id = MessageId(*blake3::hash(&payload).as_bytes());
        self.broadcasts.insert(
            id,
            Broadcast {
                origin,
                sent_at: self.now,
                ..Broadcast::default()
            },
        );
        self.input(
            origin,
            InEvent::Command(self.topic, Command::Broadcast(payload, Scope::Swarm)),
        );
        Some(id)
    }

    fn take_broadcast(&mut self, id: &MessageId) -> Option<Broadcast> {
        self.broadcasts.remove(id)
    }
}
