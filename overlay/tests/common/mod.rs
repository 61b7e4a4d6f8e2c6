//! A deterministic in-process cluster: N overlay cores, one fake clock, one
//! event queue, seeded randomness. Every message goes through the real wire
//! encoding (`to_frame` → `Input::Frame`), so the codec is exercised too.
//!
//! Network model: each link has a fixed latency drawn from `latency`
//! (so each direction is FIFO, like a QUIC stream); optional random loss;
//! links can be cut silently (messages vanish) or loudly (both ends get
//! `PeerDown`, like a closed connection); crashed nodes drop everything and
//! their neighbors notice after `detect_delay` (the QUIC idle timeout).
#![allow(dead_code)]

use bytes::Bytes;
use overlay::{Config, Event, Input, Message, MessageId, Output, PeerInfo, State, Time};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::Duration;

pub type Node = State<u32, Xoshiro256PlusPlus>;

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Deliver {
        from: u32,
        to: u32,
        frame: Vec<u8>,
        gossip: Option<MessageId>,
    },
    Input {
        node: u32,
        input: InputKey,
    },
}

/// Inputs scheduled by the harness (a subset of `Input` that is `Ord`).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum InputKey {
    Timer(overlay::Timer),
    PeerDown(u32),
    Join(Vec<u32>),
}

pub struct Cluster {
    pub now: Time,
    pub nodes: Vec<Node>,
    pub alive: Vec<bool>,
    pub config: Config,
    queue: BinaryHeap<Reverse<(Time, u64, Ev)>>,
    seq: u64,
    seed: u64,
    rng: Xoshiro256PlusPlus,
    /// Range of per-link one-way latency.
    pub latency: (Duration, Duration),
    /// Probability that any single message is lost.
    pub loss: f64,
    /// How long until a node notices a dead peer.
    pub detect_delay: Duration,
    silent_cuts: BTreeSet<(u32, u32)>,
    loud_cuts: BTreeSet<(u32, u32)>,
    pending_down: BTreeSet<(u32, u32)>,
    /// GOSSIP payloads received, per message id (for RMR).
    pub gossip_received: BTreeMap<MessageId, u64>,
    /// First delivery per message id and node: (hop count, neighbor it came from).
    pub deliveries: BTreeMap<MessageId, BTreeMap<u32, (u16, u32)>>,
    /// Every output of every node, as text, when tracing is on.
    pub trace: Option<Vec<String>>,
    pub messages_delivered: u64,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn link(a: u32, b: u32) -> (u32, u32) {
    (a.min(b), a.max(b))
}

impl Cluster {
    pub fn new(n: usize, config: Config, seed: u64) -> Self {
        let nodes = (0..n as u32)
            .map(|i| {
                State::new(
                    i,
                    config.clone(),
                    Xoshiro256PlusPlus::seed_from_u64(splitmix(seed ^ u64::from(i) << 20)),
                )
            })
            .collect();
        Cluster {
            now: Time::ZERO,
            nodes,
            alive: vec![false; n],
            config,
            queue: BinaryHeap::new(),
            seq: 0,
            seed,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            latency: (Duration::from_millis(10), Duration::from_millis(50)),
            loss: 0.0,
            detect_delay: Duration::from_secs(2),
            silent_cuts: BTreeSet::new(),
            loud_cuts: BTreeSet::new(),
            pending_down: BTreeSet::new(),
            gossip_received: BTreeMap::new(),
            deliveries: BTreeMap::new(),
            trace: None,
            messages_delivered: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    fn schedule(&mut self, at: Time, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((at.max(self.now), self.seq, ev)));
    }

    /// The fixed one-way latency of link {a, b}.
    pub fn link_latency(&self, a: u32, b: u32) -> Duration {
        let (lo, hi) = self.latency;
        let (x, y) = link(a, b);
        let h = splitmix(self.seed ^ (u64::from(x) << 32 | u64::from(y)));
        let span = (hi - lo).as_micros() as u64;
        lo + Duration::from_micros(if span == 0 { 0 } else { h % (span + 1) })
    }

    /// Schedules `node` to start and join through `contacts` at `at`.
    pub fn join_at(&mut self, node: u32, contacts: Vec<u32>, at: Time) {
        self.schedule(
            at,
            Ev::Input {
                node,
                input: InputKey::Join(contacts),
            },
        );
    }

    /// Node 0 starts alone; node i joins at i × `spacing` through a random
    /// one of the first `k` nodes (other than itself).
    pub fn join_all(&mut self, k: usize, spacing: Duration) {
        for i in 0..self.len() as u32 {
            let contacts: Vec<u32> = (0..k.min(self.len()) as u32).filter(|c| *c != i).collect();
            let at = self.now + spacing * i;
            self.join_at(i, contacts, at);
        }
    }

    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    pub fn run_until(&mut self, until: Time) {
        while let Some(Reverse((at, _, _))) = self.queue.peek() {
            if *at > until {
                break;
            }
            let Some(Reverse((at, _, ev))) = self.queue.pop() else {
                break;
            };
            self.now = at;
            self.step(ev);
        }
        self.now = until;
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver {
                from,
                to,
                frame,
                gossip,
            } => {
                if !self.alive[to as usize] {
                    self.notice_down(from, to);
                    return;
                }
                self.messages_delivered += 1;
                if let Some(id) = gossip {
                    *self.gossip_received.entry(id).or_default() += 1;
                }
                let Some((body, _)) =
                    overlay::wire::split_frame(&frame, self.config.limits.max_frame_size)
                        .expect("harness frames are valid")
                else {
                    panic!("incomplete frame in harness")
                };
                let input = Input::Frame {
                    from,
                    frame: Bytes::copy_from_slice(body),
                };
                self.input(to, input);
            }
            Ev::Input { node, input } => {
                if let InputKey::Join(_) = input {
                    // A node exists from the moment it is started.
                    self.alive[node as usize] = true;
                }
                if !self.alive[node as usize] {
                    return;
                }
                let input = match input {
                    InputKey::Timer(t) => Input::Timer(t),
                    InputKey::PeerDown(p) => {
                        self.pending_down.remove(&(node, p));
                        Input::PeerDown(p)
                    }
                    InputKey::Join(c) => Input::Join(c.into_iter().map(PeerInfo::bare).collect()),
                };
                self.input(node, input);
            }
        }
    }

    /// `node` will notice that `peer` is unreachable after `detect_delay`.
    fn notice_down(&mut self, node: u32, peer: u32) {
        if self.alive[node as usize] && self.pending_down.insert((node, peer)) {
            let at = self.now + self.detect_delay;
            self.schedule(
                at,
                Ev::Input {
                    node,
                    input: InputKey::PeerDown(peer),
                },
            );
        }
    }

    pub fn input(&mut self, node: u32, input: Input<u32>) {
        let now = self.now;
        self.nodes[node as usize].handle(now, input);
        self.flush(node);
    }

    pub fn broadcast(&mut self, node: u32, payload: &[u8]) -> MessageId {
        let now = self.now;
        let id = self.nodes[node as usize]
            .broadcast(now, Bytes::copy_from_slice(payload))
            .expect("broadcast accepted");
        self.deliveries.entry(id).or_default();
        self.gossip_received.entry(id).or_default();
        self.flush(node);
        id
    }

    fn flush(&mut self, node: u32) {
        let outputs: Vec<Output<u32>> = self.nodes[node as usize].drain_outputs().collect();
        for out in outputs {
            if let Some(trace) = &mut self.trace {
                trace.push(format!("{} {node} {out:?}", self.now));
            }
            match out {
                Output::Send { to, message } => self.send(node, to, message),
                Output::SetTimer { at, timer } => self.schedule(
                    at,
                    Ev::Input {
                        node,
                        input: InputKey::Timer(timer),
                    },
                ),
                Output::Disconnect { .. } => {}
                Output::Event(Event::Received(d)) => {
                    self.deliveries
                        .entry(d.id)
                        .or_default()
                        .insert(node, (d.hops, d.from));
                }
                Output::Event(Event::InvalidFrame { from, error }) => {
                    panic!("node {node}: invalid frame from {from}: {error}")
                }
                Output::Event(_) => {}
            }
        }
    }

    fn send(&mut self, from: u32, to: u32, message: Message<u32>) {
        let gossip = match &message {
            Message::Gossip(g) => Some(g.id()),
            _ => None,
        };
        let frame = message
            .to_frame(&self.config.limits)
            .expect("core produced an encodable message");
        let l = link(from, to);
        if self.silent_cuts.contains(&l) {
            return;
        }
        if self.loud_cuts.contains(&l) || !self.alive[to as usize] {
            self.notice_down(from, to);
            return;
        }
        if self.loss > 0.0 && self.rng.random_bool(self.loss) {
            return;
        }
        let at = self.now + self.link_latency(from, to);
        self.schedule(
            at,
            Ev::Deliver {
                from,
                to,
                frame,
                gossip,
            },
        );
    }

    /// Crashes `node`: it stops, and its neighbors notice after `detect_delay`.
    pub fn crash(&mut self, node: u32) {
        self.alive[node as usize] = false;
        for other in 0..self.len() as u32 {
            if self.alive[other as usize] && self.nodes[other as usize].is_neighbor(&node) {
                self.notice_down(other, node);
            }
        }
    }

    /// Messages on link {a, b} vanish without either side being told.
    pub fn cut_silently(&mut self, a: u32, b: u32) {
        self.silent_cuts.insert(link(a, b));
    }

    /// Link {a, b} breaks: both sides are told, and stays broken.
    pub fn cut_loudly(&mut self, a: u32, b: u32) {
        self.loud_cuts.insert(link(a, b));
        self.notice_down(a, b);
        self.notice_down(b, a);
    }

    pub fn heal_all_cuts(&mut self) {
        self.silent_cuts.clear();
        self.loud_cuts.clear();
    }

    // ----- observations --------------------------------------------------

    pub fn alive_nodes(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len() as u32).filter(|i| self.alive[*i as usize])
    }

    pub fn active(&self, node: u32) -> Vec<u32> {
        self.nodes[node as usize].active_view().collect()
    }

    /// Every active link is known to both ends (among live nodes).
    pub fn asymmetric_links(&self) -> Vec<(u32, u32)> {
        let mut bad = Vec::new();
        for a in self.alive_nodes() {
            for b in self.active(a) {
                if !self.alive[b as usize] || !self.nodes[b as usize].is_neighbor(&a) {
                    bad.push((a, b));
                }
            }
        }
        bad
    }

    /// Connected components of the live nodes over active links.
    pub fn components(&self) -> usize {
        self.component_members().len()
    }

    /// Live nodes (other than `origin`) that have not delivered `id`.
    pub fn missed(&self, id: &MessageId, origin: u32) -> Vec<u32> {
        let got = &self.deliveries[id];
        self.alive_nodes()
            .filter(|n| *n != origin && !got.contains_key(n))
            .collect()
    }

    /// Relative message redundancy of one broadcast:
    /// payloads received / (nodes reached − 1) − 1.
    pub fn rmr(&self, id: &MessageId) -> f64 {
        let reached = self.deliveries[id].len() as f64 + 1.0;
        let payloads = self.gossip_received[id] as f64;
        payloads / (reached - 1.0) - 1.0
    }

    /// Largest first-delivery hop count of one broadcast.
    pub fn ldh(&self, id: &MessageId) -> u16 {
        self.deliveries[id]
            .values()
            .map(|(h, _)| *h)
            .max()
            .unwrap_or(0)
    }

    pub fn total_stats(&self) -> overlay::Stats {
        let mut s = overlay::Stats::default();
        for n in &self.nodes {
            s.add(n.stats());
        }
        s
    }
}

impl Cluster {
    /// The members of each connected component of the live nodes.
    pub fn component_members(&self) -> Vec<Vec<u32>> {
        let mut seen = vec![false; self.len()];
        let mut out = Vec::new();
        for start in self.alive_nodes() {
            if seen[start as usize] {
                continue;
            }
            seen[start as usize] = true;
            let mut comp = vec![start];
            let mut q = VecDeque::from([start]);
            while let Some(n) = q.pop_front() {
                for m in self.active(n) {
                    if self.alive[m as usize] && !seen[m as usize] {
                        seen[m as usize] = true;
                        q.push_back(m);
                        comp.push(m);
                    }
                }
            }
            out.push(comp);
        }
        out
    }
}
