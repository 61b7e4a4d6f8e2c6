//! The node: HyParView and Plumtree composed behind one sans-IO interface.
//!
//! ```text
//! driver ──handle(now, Input)──▶ State ──drain_outputs()──▶ Send / Disconnect / SetTimer / Event
//!        ──broadcast(now, payload)──▶        (returns the MessageId or a BroadcastError)
//! ```
//!
//! The driver owns connections, the clock and the timer wheel; `State`
//! owns the protocol. Timers are data ([`Timer`]): the driver calls
//! `handle(at, Input::Timer(t))` when one is due. A timer may fire late or
//! more than once; every handler checks its own state first.

use crate::config::Config;
use crate::hyparview::{HyParView, NeighborChange};
use crate::id::{MessageId, PeerData, PeerIdentity, PeerInfo};
use crate::plumtree::{BroadcastError, Plumtree};
use crate::stats::Stats;
use crate::time::Time;
use crate::wire::{DecodeError, Message};
use bytes::Bytes;
use rand::Rng;
use std::sync::Arc;

/// Something the driver feeds into the core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input<PI> {
    /// Join the overlay through these bootstrap contacts (also used again
    /// after `Leave`, and to add contacts). The same contacts are used for
    /// isolation recovery later.
    Join(Vec<PeerInfo<PI>>),
    /// A decoded message from a peer.
    Message {
        /// Who sent it (authenticated by the transport).
        from: PI,
        /// The message.
        message: Message<PI>,
    },
    /// A raw frame body (without its length prefix) from a peer; decoded
    /// with the configured limits. A malformed frame is counted, reported as
    /// [`Event::InvalidFrame`] and the peer is disconnected.
    Frame {
        /// Who sent it.
        from: PI,
        /// The frame body.
        frame: Bytes,
    },
    /// The connection to a peer was lost, or could not be established, or
    /// a send to it failed.
    PeerDown(PI),
    /// A timer set with [`Output::SetTimer`] is due.
    Timer(Timer),
    /// Leave the overlay for good: neighbors are told to forget us.
    Leave,
}

/// A timer the core asked for. Timers are idempotent: firing one late or
/// twice is harmless.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// HyParView: start a shuffle.
    Shuffle,
    /// HyParView: expire requests, fill the active view, re-join if isolated.
    Repair,
    /// Plumtree: send the batched IHAVE announcements.
    IHave,
    /// Plumtree: a missing message is overdue; GRAFT it.
    Graft(MessageId),
    /// Plumtree: expire cached payloads and seen ids.
    Expiry,
}

/// A broadcast payload delivered to this node for the first time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery<PI> {
    /// The broadcast's id.
    pub id: MessageId,
    /// Who broadcast it.
    pub origin: PI,
    /// Hops from the origin to us (1 for a neighbor of the origin).
    pub hops: u16,
    /// The neighbor it came from.
    pub from: PI,
    /// The payload.
    pub payload: Bytes,
}

/// Something the application or the operator should know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<PI> {
    /// A peer joined our active view: open (or keep) its connection.
    NeighborUp(PI),
    /// A peer left our active view.
    NeighborDown(PI),
    /// A broadcast arrived.
    Received(Delivery<PI>),
    /// New or changed data (addresses) for a peer; the driver keeps it to
    /// dial that peer when the core sends to it.
    PeerData {
        /// The peer.
        peer: PI,
        /// Its data.
        data: PeerData,
    },
    /// A frame from `from` could not be decoded; the link is closed.
    InvalidFrame {
        /// The sender.
        from: PI,
        /// What was wrong.
        error: DecodeError,
    },
}

/// What the core asks the driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output<PI> {
    /// Send a message, dialing the peer first if there is no connection
    /// (use the data from [`Event::PeerData`]). Sends to one peer must be
    /// delivered in order. If the send fails, feed [`Input::PeerDown`].
    Send {
        /// The recipient.
        to: PI,
        /// The message.
        message: Message<PI>,
    },
    /// The peer is no longer a neighbor: close its connection once the
    /// messages already queued for it are flushed.
    Disconnect {
        /// The peer.
        peer: PI,
    },
    /// Call `handle(at, Input::Timer(timer))` at (or after) `at`.
    SetTimer {
        /// When.
        at: Time,
        /// Which timer.
        timer: Timer,
    },
    /// Something happened.
    Event(Event<PI>),
}

/// What one handler needs from the node: the clock reading, the identity,
/// the configuration, the RNG, the output queue and the counters.
pub(crate) struct Io<'a, PI, R> {
    pub(crate) now: Time,
    pub(crate) me: PI,
    pub(crate) config: &'a Config,
    pub(crate) rng: &'a mut R,
    out: &'a mut Vec<Output<PI>>,
    pub(crate) stats: &'a mut Stats,
}

impl<PI, R> Io<'_, PI, R> {
    pub(crate) fn send(&mut self, to: PI, message: Message<PI>) {
        self.stats.messages_sent[message.message_type().index()] += 1;
        self.out.push(Output::Send { to, message });
    }

    pub(crate) fn push(&mut self, output: Output<PI>) {
        self.out.push(output);
    }

    pub(crate) fn event(&mut self, event: Event<PI>) {
        self.out.push(Output::Event(event));
    }

    pub(crate) fn timer_at(&mut self, at: Time, timer: Timer) {
        self.out.push(Output::SetTimer { at, timer });
    }
}

/// One overlay node: membership and broadcast.
#[derive(Debug)]
pub struct State<PI, R> {
    me: PI,
    /// Shared: a simulator runs thousands of nodes with one configuration.
    config: Arc<Config>,
    rng: R,
    stats: Stats,
    outputs: Vec<Output<PI>>,
    hpv: HyParView<PI>,
    plum: Plumtree<PI>,
}

impl<PI: PeerIdentity, R: Rng> State<PI, R> {
    /// A node with identity `me`. The configuration should have passed
    /// [`Config::validate`]; the core never panics on odd values, but they
    /// make it behave oddly. Pass an `Arc<Config>` to share one among many
    /// nodes. Everything random comes from `rng`.
    pub fn new(me: PI, config: impl Into<Arc<Config>>, mut rng: R) -> Self {
        let epoch = rng.next_u64();
        let hash_seed = rng.next_u64();
        State {
            me,
            config: config.into(),
            rng,
            stats: Stats::default(),
            outputs: Vec::new(),
            hpv: HyParView::new(),
            plum: Plumtree::new(epoch, hash_seed),
        }
    }

    /// Sets the data (e.g. addresses) this node advertises about itself in
    /// JOIN, NEIGHBOR and SHUFFLE messages.
    pub fn set_data(&mut self, data: PeerData) {
        self.hpv.set_data(data);
    }

    /// This node's identity.
    pub fn me(&self) -> PI {
        self.me
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Peers in the active view (connected neighbors), in a deterministic order.
    pub fn active_view(&self) -> impl Iterator<Item = PI> + '_ {
        self.hpv.active()
    }

    /// Size of the active view.
    pub fn active_len(&self) -> usize {
        self.hpv.active_len()
    }

    /// Peers in the passive view.
    pub fn passive_view(&self) -> impl Iterator<Item = PI> + '_ {
        self.hpv.passive()
    }

    /// Size of the passive view.
    pub fn passive_len(&self) -> usize {
        self.hpv.passive_len()
    }

    /// Neighbors that `origin`'s broadcasts are pushed to eagerly (for an
    /// origin not seen yet: the reference tree new origins start from).
    pub fn eager_peers(&self, origin: &PI) -> Vec<PI> {
        self.plum.eager_for(origin)
    }

    /// Neighbors that only get IHAVE announcements of `origin`'s broadcasts.
    pub fn lazy_peers(&self, origin: &PI) -> Vec<PI> {
        self.plum.lazy_for(origin)
    }

    /// Neighbors eager in the reference tree that new origins start from.
    pub fn reference_eager_peers(&self) -> Vec<PI> {
        self.plum.reference_eager()
    }

    /// Origins with a broadcast tree of their own at this node.
    pub fn origins_len(&self) -> usize {
        self.plum.origins_len()
    }

    /// Whether `peer` is in the active view.
    pub fn is_neighbor(&self, peer: &PI) -> bool {
        self.hpv.is_active(peer)
    }

    /// The data last learned for `peer` (to dial it).
    pub fn peer_data(&self, peer: &PI) -> Option<&PeerData> {
        self.hpv.peer_data(peer)
    }

    /// Sizes of the broadcast bookkeeping: (cached payloads, seen ids,
    /// missing messages).
    pub fn broadcast_state_len(&self) -> (usize, usize, usize) {
        (
            self.plum.cache_len(),
            self.plum.seen_len(),
            self.plum.missing_len(),
        )
    }

    /// Whether outputs are waiting to be drained.
    pub fn has_outputs(&self) -> bool {
        !self.outputs.is_empty()
    }

    /// Takes every pending output, in the order produced.
    pub fn drain_outputs(&mut self) -> std::vec::Drain<'_, Output<PI>> {
        self.outputs.drain(..)
    }

    /// Broadcasts `payload` to every node; returns its id. Refuses payloads
    /// above `limits.max_payload_size` (nothing is sent).
    pub fn broadcast(&mut self, now: Time, payload: Bytes) -> Result<MessageId, BroadcastError> {
        let mut out = core::mem::take(&mut self.outputs);
        let r = self.broadcast_into(now, payload, &mut out);
        self.outputs = out;
        r
    }

    /// [`State::broadcast`], appending the outputs to `out` instead of the
    /// node's own queue (see [`State::handle_into`]).
    pub fn broadcast_into(
        &mut self,
        now: Time,
        payload: Bytes,
        out: &mut Vec<Output<PI>>,
    ) -> Result<MessageId, BroadcastError> {
        if self.hpv.has_left() {
            return Err(BroadcastError::Left);
        }
        let (mut io, _, plum) = self.parts(now, out);
        plum.broadcast(&mut io, payload)
    }

    /// Splits the node into what a handler needs and the two protocols.
    fn parts<'a>(
        &'a mut self,
        now: Time,
        out: &'a mut Vec<Output<PI>>,
    ) -> (Io<'a, PI, R>, &'a mut HyParView<PI>, &'a mut Plumtree<PI>) {
        let io = Io {
            now,
            me: self.me,
            config: &self.config,
            rng: &mut self.rng,
            out,
            stats: &mut self.stats,
        };
        (io, &mut self.hpv, &mut self.plum)
    }

    /// Feeds one input; its outputs wait in the node's queue for
    /// [`State::drain_outputs`].
    pub fn handle(&mut self, now: Time, input: Input<PI>) {
        let mut out = core::mem::take(&mut self.outputs);
        self.handle_into(now, input, &mut out);
        self.outputs = out;
    }

    /// Feeds one input and appends its outputs to `out`, in the order
    /// produced, instead of the node's own queue. A driver of many nodes
    /// (the simulator) passes one buffer for all of them, so no node keeps
    /// an output queue of its own.
    pub fn handle_into(&mut self, now: Time, input: Input<PI>, out: &mut Vec<Output<PI>>) {
        let (mut io, hpv, plum) = self.parts(now, out);
        match input {
            Input::Join(contacts) => hpv.join(&mut io, contacts),
            Input::Leave => hpv.leave(&mut io),
            Input::PeerDown(peer) => hpv.peer_down(&mut io, peer),
            Input::Message { from, message } => dispatch(&mut io, hpv, plum, from, message),
            Input::Frame { from, frame } => match Message::decode(&frame, &io.config.limits) {
                Ok(message) => dispatch(&mut io, hpv, plum, from, message),
                Err(error) => {
                    io.stats.decode_errors += 1;
                    io.event(Event::InvalidFrame { from, error });
                    let was_active = hpv.is_active(&from);
                    hpv.peer_down(&mut io, from);
                    if !was_active {
                        io.push(Output::Disconnect { peer: from });
                    }
                }
            },
            Input::Timer(timer) => match timer {
                Timer::Shuffle => hpv.on_shuffle_timer(&mut io),
                Timer::Repair => hpv.on_repair_timer(&mut io),
                Timer::IHave => plum.on_ihave_timer(&mut io),
                Timer::Graft(id) => plum.on_graft_timer(&mut io, id),
                Timer::Expiry => plum.on_expiry_timer(&mut io),
            },
        }
        // Let the broadcast layer follow membership changes.
        // (The buffer goes back afterwards, so its allocation is reused.)
        let mut changes = core::mem::take(&mut hpv.changes);
        for change in changes.drain(..) {
            match change {
                NeighborChange::Up(p) => plum.neighbor_up(&mut io, p),
                NeighborChange::Down(p) => plum.neighbor_down(&mut io, p),
            }
        }
        hpv.changes = changes;
    }
}

fn dispatch<PI: PeerIdentity, R: Rng>(
    io: &mut Io<'_, PI, R>,
    hpv: &mut HyParView<PI>,
    plum: &mut Plumtree<PI>,
    from: PI,
    message: Message<PI>,
) {
    io.stats.messages_received[message.message_type().index()] += 1;
    match message {
        Message::Join(m) => hpv.on_join(io, from, m),
        Message::ForwardJoin(m) => hpv.on_forward_join(io, from, m),
        Message::Neighbor(m) => hpv.on_neighbor(io, from, m),
        Message::NeighborReply(m) => hpv.on_neighbor_reply(io, from, m),
        Message::Disconnect(m) => hpv.on_disconnect(io, from, m),
        Message::Shuffle(m) => hpv.on_shuffle(io, from, m),
        Message::ShuffleReply(m) => hpv.on_shuffle_reply(io, from, m),
        Message::Gossip(m) => plum.on_gossip(io, from, m),
        Message::IHave(m) => plum.on_ihave(io, from, m),
        Message::Graft(m) => plum.on_graft(io, from, m),
        Message::Prune(m) => plum.on_prune(io, from, m),
    }
}
