//! Plumtree broadcast (Leitão, Pereira, Rodrigues, SRDS 2007), with one
//! eager tree per origin.
//!
//! Owns the neighbor slots, the per-origin eager sets, the message cache
//! (payloads kept to answer GRAFTs), the seen-id set (duplicate detection),
//! the table of missing messages announced by IHAVE, and the queue of IHAVE
//! entries waiting for the next batch. Membership changes arrive as
//! [`neighbor_up`](Plumtree::neighbor_up) / [`neighbor_down`](Plumtree::neighbor_down);
//! it never changes the views itself.
//!
//! **Why per origin.** The paper keeps one eager set per node, shared by
//! all senders. With several senders broadcasting at once that shared tree
//! never settles: every cycle is cut by PRUNEs from each concurrent message
//! at a different place (over-pruning), the fragments are re-joined by
//! GRAFTs that add new cycles, and redundancy stays near 1 (our simulator:
//! RMR 0.92 at n = 1000 with 10 concurrent senders; iroh-gossip reports
//! 0.47). Here each origin has its own eager set, so PRUNE/GRAFT for one
//! origin never disturb another's tree. An eager set is a bitmask over the
//! (at most 64) neighbor slots: 8 bytes per origin and node.
//!
//! **No flood for a new origin.** A new origin's eager set starts as a copy
//! of the *reference* origin's (the smallest origin id with state — every
//! node picks the same one), which is already a spanning tree: the first
//! broadcast of a new sender costs no duplicates. Only the very first
//! origin in a fresh overlay floods. Each origin's tree then adapts to its
//! own messages: a duplicate prunes the link it came on (for that origin), a
//! message announced by IHAVE but overdue is fetched with GRAFT (which makes
//! that link eager for its origin), and a lazy announcement whose path is
//! `optimization_threshold` hops shorter swaps the parent.
//!
//! A new neighbor is lazy in every existing tree (adding it as eager would
//! close a cycle in each) and is told the recent message ids; trees that
//! need it graft it.

use crate::config::Config;
use crate::id::{MessageId, PeerIdentity};
use crate::state::{Delivery, Event, Io, Timer};
use crate::store::{Known, Store};
use crate::time::Time;
use crate::util::{VecMap, release};
use crate::wire::{Gossip, Graft, IHave, IHaveEntry, Message, Prune};
use bytes::Bytes;
use rand::Rng;
use std::collections::VecDeque;

/// Neighbor slots: at most 64, so an eager set fits in a `u64`.
pub(crate) const MAX_SLOTS: usize = 64;

#[derive(Clone, Debug)]
struct Missing<PI> {
    /// Who announced it, with their hop count, oldest first.
    announcers: VecDeque<(PI, u16)>,
    /// Whom we last grafted for it.
    grafted: Option<PI>,
    first_announced: Time,
    /// The GRAFT timer that counts; earlier firings are stale.
    next_graft: Time,
}

/// Announcements queued for one lazy peer.
#[derive(Clone, Debug)]
struct IHaveBatch<PI> {
    peer: PI,
    entries: Vec<IHaveEntry>,
    due: Time,
}

/// One origin's eager set.
#[derive(Clone, Copy, Debug)]
struct Tree {
    /// Bit i set: the neighbor in slot i is eager for this origin.
    eager: u64,
    /// Last time this origin's tree was used (for eviction).
    used: Time,
    /// Eager neighbors this tree lost to a link going down and has not
    /// replaced yet: the next new neighbors are eager in it (the
    /// Plumtree paper makes every new neighbor eager, which costs a
    /// duplicate and a PRUNE per origin per link; lazy only, an origin
    /// that broadcasts rarely finds its tree cut after churn and every cut
    /// hop costs a GRAFT timeout).
    lost: u8,
}

/// Plumtree state of one node.
#[derive(Debug)]
pub(crate) struct Plumtree<PI> {
    slots: Vec<Option<PI>>,
    /// Bit i set: slot i holds a neighbor.
    occupied: u64,
    /// Per-origin trees, hashed: every server of a large cluster is an
    /// origin (10,000 trees per node at 10,000 servers), and an ordered map
    /// of 32-byte keys made each lookup a chain of cache misses and
    /// memcmps. The order the reference needs is kept in `reference_origin`.
    trees: hashbrown::HashMap<PI, Tree, foldhash::quality::FixedState>,
    /// The smallest origin with a tree (the reference), if any.
    reference_origin: Option<PI>,
    /// No tree was used before this (a lower bound; `None`: no trees): the
    /// expiry sweep walks the trees only when the oldest may be due.
    trees_oldest_used: Option<Time>,
    epoch: u64,
    next_seq: u64,
    store: Store<PI>,
    /// Usually empty or nearly: a few entries while a broadcast spreads.
    missing: VecMap<MessageId, Missing<PI>>,
    /// IHAVE batches waiting, one per lazy peer: its entries and when the
    /// batch goes out (`ihave_interval` after its first entry, or
    /// `ihave_defer` towards a peer with a lower id).
    ihave_queue: Vec<IHaveBatch<PI>>,
    /// The earliest IHAVE timer set and not yet fired.
    ihave_timer: Option<Time>,
    /// When the expiry sweep is due (`None`: not scheduled).
    expiry_at: Option<Time>,
}

/// Why a broadcast was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BroadcastError {
    /// The payload exceeds `limits.max_payload_size`.
    #[error("payload of {size} bytes exceeds the maximum of {max}")]
    PayloadTooLarge {
        /// The payload size.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The node has left the overlay.
    #[error("the node has left the overlay")]
    Left,
}

impl<PI: PeerIdentity> Plumtree<PI> {
    pub(crate) fn new(epoch: u64, hash_seed: u64) -> Self {
        Plumtree {
            slots: Vec::new(),
            occupied: 0,
            trees: hashbrown::HashMap::with_hasher(foldhash::quality::FixedState::with_seed(
                hash_seed ^ 0x7472_6565,
            )),
            reference_origin: None,
            trees_oldest_used: None,
            epoch,
            next_seq: 0,
            store: Store::new(hash_seed),
            missing: VecMap::new(),
            ihave_queue: Vec::new(),
            ihave_timer: None,
            expiry_at: None,
        }
    }

    // ----- neighbor slots and per-origin eager sets -------------------

    fn slot(&self, peer: &PI) -> Option<usize> {
        self.slots.iter().position(|s| s.as_ref() == Some(peer))
    }

    fn is_neighbor(&self, peer: &PI) -> bool {
        self.slot(peer).is_some()
    }

    /// Bits of the occupied slots.
    fn all(&self) -> u64 {
        self.occupied
    }

    /// The eager set a new origin starts with: the reference origin's
    /// (smallest id with state), or every neighbor if there is none yet.
    fn reference(&self) -> u64 {
        match self.reference_origin.and_then(|o| self.trees.get(&o)) {
            Some(t) => t.eager & self.all(),
            None => self.all(),
        }
    }

    /// The eager set of `origin` (the reference one if it has none).
    fn eager_mask(&self, origin: &PI) -> u64 {
        match self.trees.get(origin) {
            Some(t) => t.eager & self.all(),
            None => self.reference(),
        }
    }

    /// Makes sure `origin` has a tree, creating it from the reference and,
    /// beyond `max_origins`, evicting the least recently used (never the
    /// reference itself, which every node must agree on).
    fn tree<R: Rng>(&mut self, io: &mut Io<'_, PI, R>, origin: PI) -> &mut Tree {
        self.tree_from(io, origin, None)
    }

    /// [`Plumtree::tree`], a new tree starting with `eager` instead of the
    /// reference's eager set when given.
    fn tree_from<R: Rng>(
        &mut self,
        io: &mut Io<'_, PI, R>,
        origin: PI,
        eager: Option<u64>,
    ) -> &mut Tree {
        if !self.trees.contains_key(&origin) {
            let max = io.config.plumtree.max_origins.max(1);
            if self.trees.len() >= max {
                self.evict_oldest_trees(max);
            }
            let eager = eager.unwrap_or_else(|| self.reference());
            self.trees.insert(
                origin,
                Tree {
                    eager,
                    used: io.now,
                    lost: 0,
                },
            );
            if self.reference_origin.is_none_or(|r| origin < r) {
                self.reference_origin = Some(origin);
            }
            self.trees_oldest_used = Some(self.trees_oldest_used.map_or(io.now, |t| t.min(io.now)));
        }
        let t = self.trees.entry(origin).or_insert(Tree {
            eager: 0,
            used: io.now,
            lost: 0,
        });
        t.used = io.now;
        t
    }

    /// Forgets the least recently used eighth of the trees (at least one,
    /// never the reference): one scan per `max / 8` new origins, not one
    /// per new origin (with more origins than `max`, 10,000 servers each
    /// announcing, a scan per broadcast stalled the simulator).
    fn evict_oldest_trees(&mut self, max: usize) {
        let reference = self.reference_origin;
        let mut used: Vec<Time> = self
            .trees
            .iter()
            .filter(|(o, _)| Some(**o) != reference)
            .map(|(_, t)| t.used)
            .collect();
        if used.is_empty() {
            return;
        }
        let evict = (max / 8).clamp(1, used.len());
        let (_, cutoff, _) = used.select_nth_unstable(evict - 1);
        let cutoff = *cutoff;
        let mut left = evict;
        self.trees.retain(|o, t| {
            if left > 0 && t.used <= cutoff && Some(*o) != reference {
                left -= 1;
                false
            } else {
                true
            }
        });
    }

    /// Makes `peer` eager or lazy for `origin`. Creates the origin's tree
    /// only if that changes something, so PRUNEs for origins we never
    /// forwarded cannot fill the table.
    fn set_eager<R: Rng>(&mut self, io: &mut Io<'_, PI, R>, origin: PI, peer: &PI, eager: bool) {
        let Some(bit) = self.slot(peer).map(|i| 1u64 << i) else {
            return;
        };
        if (self.eager_mask(&origin) & bit != 0) == eager && !self.trees.contains_key(&origin) {
            return;
        }
        let t = self.tree(io, origin);
        if eager {
            t.eager |= bit;
        } else {
            t.eager &= !bit;
        }
    }

    /// Neighbors eager for `origin` (the reference tree for unknown ones).
    pub(crate) fn eager_for(&self, origin: &PI) -> Vec<PI> {
        let mask = self.eager_mask(origin);
        self.peers_in(mask)
    }

    /// Neighbors lazy for `origin`.
    pub(crate) fn lazy_for(&self, origin: &PI) -> Vec<PI> {
        let mask = !self.eager_mask(origin) & self.all();
        self.peers_in(mask)
    }

    /// Neighbors eager in the reference tree (every neighbor before any
    /// broadcast was seen).
    pub(crate) fn reference_eager(&self) -> Vec<PI> {
        self.peers_in(self.reference())
    }

    fn peers_in(&self, mask: u64) -> Vec<PI> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.filter(|_| mask & (1 << i) != 0))
            .collect()
    }

    /// Origins with a tree of their own.
    pub(crate) fn origins_len(&self) -> usize {
        self.trees.len()
    }

    pub(crate) fn cache_len(&self) -> usize {
        self.store.cached_len()
    }

    pub(crate) fn seen_len(&self) -> usize {
        self.store.len()
    }

    pub(crate) fn missing_len(&self) -> usize {
        self.missing.len()
    }

    /// A new neighbor: lazy in every existing tree (eager in the flood that
    /// precedes the first tree), and told which recent messages we have (up
    /// to one IHAVE batch), so a node that was cut off while they spread
    /// grafts what it missed as soon as it has a neighbor again.
    pub(crate) fn neighbor_up<R: Rng>(&mut self, io: &mut Io<'_, PI, R>, peer: PI) {
        if self.is_neighbor(&peer) {
            return;
        }
        let i = match self.slots.iter().position(|s| s.is_none()) {
            Some(i) => i,
            None if self.slots.len() < MAX_SLOTS => {
                self.slots.push(None);
                self.slots.len() - 1
            }
            None => return, // more neighbors than validate() allows
        };
        self.slots[i] = Some(peer);
        self.occupied |= 1 << i;
        for t in self.trees.values_mut() {
            if t.lost > 0 {
                t.lost -= 1;
                t.eager |= 1 << i;
            }
        }
        let max = io.config.plumtree.ihave_max_entries;
        let recent: Vec<IHaveEntry> = self
            .store
            .recent_cached()
            .map(|(id, hops)| IHaveEntry { id, hops })
            .take(max)
            .collect();
        for entry in recent.into_iter().rev() {
            self.queue_ihave(io, peer, entry);
        }
    }

    pub(crate) fn neighbor_down<R: Rng>(&mut self, io: &mut Io<'_, PI, R>, peer: PI) {
        let Some(i) = self.slot(&peer) else {
            return;
        };
        self.slots[i] = None;
        let bit = 1u64 << i;
        self.occupied &= !bit;
        for t in self.trees.values_mut() {
            if t.eager & bit != 0 {
                t.eager &= !bit;
                t.lost = t.lost.saturating_add(1);
            }
        }
        self.ihave_queue.retain(|b| b.peer != peer);
        for (id, m) in self.missing.iter_mut() {
            m.announcers.retain(|(p, _)| *p != peer);
            if m.grafted == Some(peer) {
                // The GRAFT went to a peer that is gone: ask the next one
                // now (the pending timer becomes stale).
                m.grafted = None;
                m.next_graft = io.now;
                io.timer_at(io.now, Timer::Graft(*id));
            }
        }
    }

    // ----- broadcast ---------------------------------------------------

    /// Originates a broadcast.
    pub(crate) fn broadcast<R: Rng>(
        &mut self,
        io: &mut Io<'_, PI, R>,
        payload: Bytes,
    ) -> Result<MessageId, BroadcastError> {
        let max = io.config.limits.max_payload_size;
        if payload.len() > max {
            io.stats.broadcasts_refused += 1;
            return Err(BroadcastError::PayloadTooLarge {
                size: payload.len(),
                max,
            });
        }
        let id = MessageId::derive(&io.me, self.epoch, self.next_seq);
        self.next_seq += 1;
        io.stats.broadcasts += 1;
        let me = io.me;
        self.tree(io, me);
        let gossip = Gossip::new(id, me, 0, &payload);
        self.remember(io, id, me, 0, None, gossip.body().clone());
        self.push(io, id, &gossip, None, &[]);
        Ok(id)
    }

    /// Records a message as seen, with its GOSSIP body (`id ‖ payload`)
    /// cached.
    fn remember<R: Rng>(
        &mut self,
        io: &mut Io<'_, PI, R>,
        id: MessageId,
        origin: PI,
        hops: u16,
        from: Option<PI>,
        body: Bytes,
    ) {
        let known = Known { hops, from, origin };
        self.store
            .insert(id, io.now, known, Some(body), &io.config.plumtree);
        // The sweep wakes when this payload's retention ends, unless it
        // is already due sooner.
        let cfg = &io.config.plumtree;
        let due = io.now + cfg.message_cache_retention.max(cfg.expiry_interval);
        if self.expiry_at.is_none_or(|at| due < at) {
            self.expiry_at = Some(due);
            io.timer_at(due, Timer::Expiry);
        }
    }

    /// Eager push of `gossip` (message `id`, `hops` already ours) to its
    /// origin's eager peers, lazy announcement to the rest but those in
    /// `announced` (they have it, at the hops given) that would not take
    /// us as their parent.
    fn push<R: Rng>(
        &mut self,
        io: &mut Io<'_, PI, R>,
        id: MessageId,
        gossip: &Gossip<PI>,
        except: Option<PI>,
        announced: &[(PI, u16)],
    ) {
        let hops = gossip.hops;
        let mask = self.eager_mask(&gossip.origin);
        for i in 0..self.slots.len() {
            let Some(peer) = self.slots[i] else {
                continue;
            };
            if Some(peer) == except {
                continue;
            }
            if mask & (1 << i) != 0 {
                io.send(peer, Message::Gossip(gossip.clone()));
            } else if !announced
                .iter()
                .any(|&(p, h)| p == peer && !Self::would_take(io, h, hops))
            {
                self.queue_ihave(io, peer, IHaveEntry { id, hops });
            }
        }
    }

    /// Whether a peer that has a message at `their_hops` would make us its
    /// parent on hearing we have it at `our_hops` (the tree optimisation of
    /// [`Plumtree::maybe_optimize`]): only then is our IHAVE worth sending
    /// to a peer known to have the message.
    fn would_take<R>(io: &Io<'_, PI, R>, their_hops: u16, our_hops: u16) -> bool {
        let threshold = io.config.plumtree.optimization_threshold.max(1);
        their_hops >= our_hops.saturating_add(1).saturating_add(threshold)
    }

    /// Queues `entry` for `peer`'s next batch. On every lazy link one side
    /// announces at once (`ihave_interval`) and the other, the one with the
    /// higher id, after `ihave_defer`: when both have the message (the
    /// usual case: receipts on the two ends of a link are at most its
    /// latency apart), the first announcement reaches the deferring side
    /// before its own is due, and that one is dropped (`on_ihave`). Half the
    /// IHAVEs, for a repair that starts `ihave_defer` later on the links
    /// where only the deferring side has the message.
    fn queue_ihave<R: Rng>(&mut self, io: &mut Io<'_, PI, R>, peer: PI, entry: IHaveEntry) {
        let cfg = &io.config.plumtree;
        let delay = if io.me > peer {
            cfg.ihave_defer.max(cfg.ihave_interval)
        } else {
            cfg.ihave_interval
        };
        let due = match self.ihave_queue.iter_mut().find(|b| b.peer == peer) {
            Some(b) => {
                b.entries.push(entry);
                b.due
            }
            None => {
                let due = io.now + delay;
                self.ihave_queue.push(IHaveBatch {
                    peer,
                    entries: vec![entry],
                    due,
                });
                due
            }
        };
        if self.ihave_timer.is_none_or(|at| due < at) {
            self.ihave_timer = Some(due);
            io.timer_at(due, Timer::IHave);
        }
    }

    // ----- messages ----------------------------------------------------

    pub(crate) fn on_gossip<R: Rng>(
        &mut self,
        io: &mut Io<'_, PI, R>,
        from: PI,
        mut msg: Gossip<PI>,
    ) {
        let id = msg.id();
        let hops = msg.hops.saturating_add(1);
        if self.store.contains(&id) {
            io.stats.duplicates += 1;
            // The link is redundant for this origin: stop pushing on it in
            // both directions. (Sent even if `from` is already lazy here: a
            // GRAFT and a PRUNE that crossed can leave it pushing to us.)
            if self.is_neighbor(&from) {
                self.set_eager(io, msg.origin, &from, false);
                io.stats.prunes_sent += 1;
                io.send(from, Message::Prune(Prune { origin: msg.origin }));
            }
            return;
        }
        // First receipt: the origin gets a tree of its own (a snapshot of
        // the reference, so later changes there do not leak into it), and
        // the sender is our parent in it. A node with no tree at all that
        // fetched the payload with GRAFT is one that joined a running
        // overlay and is catching up on the ids its new neighbors announced:
        // they have those messages, so its tree starts with the parent only
        // (flooding them would be a duplicate on every other link). Only
        // the first broadcast of a fresh overlay floods, and it arrives by
        // eager push, not by GRAFT.
        let fetched = self
            .missing
            .get(&id)
            .is_some_and(|m| m.grafted == Some(from));
        let parent_only = (fetched && self.trees.is_empty()).then_some(0);
        self.tree_from(io, msg.origin, parent_only);
        self.set_eager(io, msg.origin, &from, true);
        self.remember(io, id, msg.origin, hops, Some(from), msg.body().clone());
        let missing = self.missing.remove(&id);
        io.stats.payloads_delivered += 1;
        io.stats.payload_bytes_delivered += msg.payload_len() as u64;
        io.event(Event::Received(Delivery {
            id,
            origin: msg.origin,
            hops,
            from,
            payload: msg.payload(),
        }));
        // Passed on with our hop count; not announced to the neighbors
        // that announced it to us.
        msg.hops = hops;
        let announced: Vec<(PI, u16)> = missing
            .as_ref()
            .map(|m| m.announcers.iter().copied().collect())
            .unwrap_or_default();
        self.push(io, id, &msg, Some(from), &announced);
        // An announcement that arrived before the payload may show a
        // shorter path than the one the payload took.
        let best = missing.and_then(|m| {
            m.announcers
                .into_iter()
                .filter(|(p, _)| self.is_neighbor(p))
                .min_by_key(|(_, h)| *h)
        });
        if let Some((best, best_hops)) = best {
            self.maybe_optimize(io, id, from, best, best_hops);
        }
    }

    pub(crate) fn on_ihave<R: Rng>(&mut self, io: &mut Io<'_, PI, R>, from: PI, msg: IHave) {
        io.stats.ihave_entries_received += msg.entries.len() as u64;
        if !self.is_neighbor(&from) {
            return;
        }
        let cfg = &io.config.plumtree;
        for entry in msg.entries {
            if let Some((parent, ours)) = self.store.get(&entry.id).map(|k| (k.from, k.hops)) {
                if let Some(parent) = parent {
                    self.maybe_optimize(io, entry.id, parent, from, entry.hops);
                }
                // It has it: our announcement, if still queued, tells it
                // nothing (unless it would shorten its path through us).
                if !Self::would_take(io, entry.hops, ours)
                    && let Some(b) = self.ihave_queue.iter_mut().find(|b| b.peer == from)
                {
                    b.entries.retain(|e| e.id != entry.id);
                }
                continue;
            }
            let full = self.missing.len() >= cfg.max_missing;
            match self.missing.get_mut(&entry.id) {
                Some(m) => {
                    if !m.announcers.iter().any(|(p, _)| *p == from) {
                        m.announcers.push_back((from, entry.hops));
                    }
                }
                None if full => {
                    io.stats.missing_dropped += 1;
                }
                None => {
                    let at = io.now + cfg.graft_timeout_1;
                    self.missing.insert(
                        entry.id,
                        Missing {
                            announcers: VecDeque::from([(from, entry.hops)]),
                            grafted: None,
                            first_announced: io.now,
                            next_graft: at,
                        },
                    );
                    io.timer_at(at, Timer::Graft(entry.id));
                }
            }
        }
    }

    /// Tree optimisation: if `announcer` offers a path at least
    /// `optimization_threshold` hops shorter than the one through `parent`,
    /// make `announcer` our parent in this origin's tree and prune `parent`.
    fn maybe_optimize<R: Rng>(
        &mut self,
        io: &mut Io<'_, PI, R>,
        id: MessageId,
        parent: PI,
        announcer: PI,
        announcer_hops: u16,
    ) {
        let Some((origin, hops)) = self.store.get(&id).map(|k| (k.origin, k.hops)) else {
            return;
        };
        let via_announcer = announcer_hops.saturating_add(1);
        let announcer_lazy = self
            .slot(&announcer)
            .is_some_and(|i| self.eager_mask(&origin) & (1 << i) == 0);
        if announcer == parent || !Self::would_take(io, hops, announcer_hops) || !announcer_lazy {
            return;
        }
        // Later announcements for this message compare against the new path.
        self.store.set_path(&id, via_announcer, announcer);
        io.stats.tree_optimizations += 1;
        self.set_eager(io, origin, &announcer, true);
        io.stats.grafts_sent += 1;
        io.send(announcer, Message::Graft(Graft { id, resend: false }));
        if self.is_neighbor(&parent) {
            self.set_eager(io, origin, &parent, false);
            io.stats.prunes_sent += 1;
            io.send(parent, Message::Prune(Prune { origin }));
        }
    }

    pub(crate) fn on_graft<R: Rng>(&mut self, io: &mut Io<'_, PI, R>, from: PI, msg: Graft) {
        io.stats.grafts_received += 1;
        let Some((origin, hops, body)) = self
            .store
            .get(&msg.id)
            .map(|k| (k.origin, k.hops, self.store.body(&msg.id).cloned()))
        else {
            // We never saw it: we do not know its origin, nor can we send
            // it; the grafter will ask its next announcer.
            io.stats.graft_misses += 1;
            return;
        };
        self.set_eager(io, origin, &from, true);
        if msg.resend {
            match body.and_then(|b| Gossip::from_body(origin, hops, b)) {
                Some(gossip) => io.send(from, Message::Gossip(gossip)),
                None => io.stats.graft_misses += 1,
            }
        }
    }

    pub(crate) fn on_prune<R: Rng>(&mut self, io: &mut Io<'_, PI, R>, from: PI, msg: Prune<PI>) {
        io.stats.prunes_received += 1;
        self.set_eager(io, msg.origin, &from, false);
    }

    // ----- timers ------------------------------------------------------

    /// A GRAFT timer fired: fetch the message from the next announcer.
    pub(crate) fn on_graft_timer<R: Rng>(&mut self, io: &mut Io<'_, PI, R>, id: MessageId) {
        let Some(m) = self.missing.get(&id) else {
            return;
        };
        if io.now < m.next_graft {
            return; // superseded by a later schedule
        }
        let slots = &self.slots;
        let Some(m) = self.missing.get_mut(&id) else {
            return;
        };
        let next = loop {
            match m.announcers.pop_front() {
                Some((peer, _)) if slots.contains(&Some(peer)) => break Some(peer),
                Some(_) => continue,
                None => break None,
            }
        };
        let Some(peer) = next else {
            // Nobody left to ask; a later IHAVE starts over.
            self.missing.remove(&id);
            return;
        };
        m.grafted = Some(peer);
        let at = io.now + io.config.plumtree.graft_timeout_2;
        m.next_graft = at;
        io.stats.grafts_sent += 1;
        io.send(peer, Message::Graft(Graft { id, resend: true }));
        io.timer_at(at, Timer::Graft(id));
    }

    /// The IHAVE batch timer fired: send every queued announcement.
    pub(crate) fn on_ihave_timer<R: Rng>(&mut self, io: &mut Io<'_, PI, R>) {
        let now = io.now;
        if self.ihave_timer.is_some_and(|at| at <= now) {
            self.ihave_timer = None;
        }
        let max = io.config.plumtree.ihave_max_entries.max(1);
        let due: Vec<IHaveBatch<PI>> = self.ihave_queue.extract_if(.., |b| b.due <= now).collect();
        // Idle between broadcasts: give the queue's memory back.
        release(&mut self.ihave_queue);
        if let Some(next) = self.ihave_queue.iter().map(|b| b.due).min()
            && self.ihave_timer.is_none_or(|at| next < at)
        {
            self.ihave_timer = Some(next);
            io.timer_at(next, Timer::IHave);
        }
        for IHaveBatch { peer, entries, .. } in due {
            if entries.is_empty() || !self.is_neighbor(&peer) {
                continue;
            }
            io.stats.ihave_entries_sent += entries.len() as u64;
            if entries.len() <= max {
                io.send(peer, Message::IHave(IHave { entries }));
            } else {
                for chunk in entries.chunks(max) {
                    io.send(
                        peer,
                        Message::IHave(IHave {
                            entries: chunk.to_vec(),
                        }),
                    );
                }
            }
        }
    }

    /// The expiry timer fired: forget payloads, ids and announcements that
    /// are older than their retention.
    pub(crate) fn on_expiry_timer<R: Rng>(&mut self, io: &mut Io<'_, PI, R>) {
        let cfg: &Config = io.config;
        let now = io.now;
        if self.expiry_at.is_none_or(|at| now < at) {
            return; // a stale or duplicate firing
        }
        self.store.expire(now, &cfg.plumtree);
        // Trees of origins silent for longer than the id retention go, so
        // the reference moves on from an origin that left.
        let tree_cutoff = now - cfg.plumtree.seen_retention;
        if self.trees_oldest_used.is_some_and(|t| t <= tree_cutoff) {
            self.trees.retain(|_, t| t.used > tree_cutoff);
            self.trees_oldest_used = self.trees.values().map(|t| t.used).min();
            // Only this can remove the reference (eviction never does).
            if self
                .reference_origin
                .is_some_and(|r| !self.trees.contains_key(&r))
            {
                self.reference_origin = self.trees.keys().min().copied();
            }
        }
        let seen_cutoff = now - cfg.plumtree.seen_retention;
        self.missing.retain(|_, m| m.first_announced > seen_cutoff);
        // Sleep until the next retention ends (at most one sweep per
        // interval): with one broadcast every few seconds that is one sweep
        // per broadcast, not one per second.
        let p = &cfg.plumtree;
        let trees_due = match self.trees_oldest_used {
            Some(t) => Some(t + p.seen_retention),
            None if !self.trees.is_empty() => Some(now),
            None => None,
        };
        let missing_due = self
            .missing
            .iter()
            .map(|(_, m)| m.first_announced + p.seen_retention)
            .min();
        let due = [self.store.next_due(p), trees_due, missing_due]
            .into_iter()
            .flatten()
            .min();
        self.expiry_at = due.map(|d| d.max(now + p.expiry_interval));
        if let Some(at) = self.expiry_at {
            io.timer_at(at, Timer::Expiry);
        }
    }
}
