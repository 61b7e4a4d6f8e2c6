//! Plumtree broadcast (Leitão, Pereira, Rodrigues, SRDS 2007).
//!
//! Owns the eager and lazy peer sets, the message cache (payloads kept to
//! answer GRAFTs), the seen-id set (duplicate detection), the table of
//! missing messages announced by IHAVE, and the queue of IHAVE entries
//! waiting for the next batch. Membership changes arrive as
//! [`neighbor_up`](Plumtree::neighbor_up) / [`neighbor_down`](Plumtree::neighbor_down);
//! it never changes the views itself.
//!
//! Every neighbor starts eager. A duplicate GOSSIP prunes the link it came
//! on (the receiver moves the sender to lazy and sends PRUNE), so the eager
//! links converge to a spanning tree. Lazy peers get batched IHAVEs; a
//! message announced but not received within `graft_timeout_1` is fetched
//! with GRAFT from the first announcer (then the next, every
//! `graft_timeout_2`), which also makes that link eager again. A lazy
//! announcement whose path is `optimization_threshold` hops shorter than
//! the eager one swaps the parent (tree optimisation).

use crate::config::Config;
use crate::id::{MessageId, PeerIdentity};
use crate::state::{Delivery, Event, Io, Timer};
use crate::time::Time;
use crate::util::IdMap;
use crate::wire::{Gossip, Graft, IHave, IHaveEntry, Message, Prune};
use bytes::Bytes;
use rand::Rng;
use std::collections::{BTreeMap, VecDeque};

#[derive(Clone, Debug)]
struct Cached<PI> {
    origin: PI,
    hops: u16,
    payload: Bytes,
}

#[derive(Clone, Copy, Debug)]
struct Seen<PI> {
    /// Our hop distance from the origin.
    hops: u16,
    /// The neighbor it came from (`None` for our own broadcasts).
    from: Option<PI>,
}

#[derive(Clone, Debug)]
struct Missing<PI> {
    /// Who announced it, with their hop count, oldest first.
    announcers: VecDeque<(PI, u16)>,
    /// Whom we last grafted for it.
    grafted: Option<PI>,
    first_announced: Time,
}

/// Plumtree state of one node.
#[derive(Debug)]
pub(crate) struct Plumtree<PI> {
    eager: Vec<PI>,
    lazy: Vec<PI>,
    epoch: u64,
    next_seq: u64,
    cache: IdMap<Cached<PI>>,
    cache_order: VecDeque<(Time, MessageId)>,
    seen: IdMap<Seen<PI>>,
    seen_order: VecDeque<(Time, MessageId)>,
    missing: BTreeMap<MessageId, Missing<PI>>,
    ihave_queue: Vec<(PI, Vec<IHaveEntry>)>,
    ihave_timer: bool,
    expiry_timer: bool,
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
    pub(crate) fn new(epoch: u64) -> Self {
        Plumtree {
            eager: Vec::new(),
            lazy: Vec::new(),
            epoch,
            next_seq: 0,
            cache: IdMap::default(),
            cache_order: VecDeque::new(),
            seen: IdMap::default(),
            seen_order: VecDeque::new(),
            missing: BTreeMap::new(),
            ihave_queue: Vec::new(),
            ihave_timer: false,
            expiry_timer: false,
        }
    }

    pub(crate) fn eager(&self) -> &[PI] {
        &self.eager
    }

    pub(crate) fn lazy(&self) -> &[PI] {
        &self.lazy
    }

    pub(crate) fn cache_len(&self) -> usize {
        self.cache.len()
    }

    pub(crate) fn seen_len(&self) -> usize {
        self.seen.len()
    }

    pub(crate) fn missing_len(&self) -> usize {
        self.missing.len()
    }

    fn is_neighbor(&self, peer: &PI) -> bool {
        self.eager.contains(peer) || self.lazy.contains(peer)
    }

    fn make_eager(&mut self, peer: PI) {
        if let Some(i) = self.lazy.iter().position(|p| *p == peer) {
            self.lazy.remove(i);
            self.eager.push(peer);
        }
    }

    fn make_lazy(&mut self, peer: PI) {
        if let Some(i) = self.eager.iter().position(|p| *p == peer) {
            self.eager.remove(i);
            self.lazy.push(peer);
        }
    }

    /// A new neighbor starts eager, and is told which recent messages we
    /// have (up to one IHAVE batch): a node that was cut off while they
    /// spread grafts what it missed as soon as it has a neighbor again.
    pub(crate) fn neighbor_up<R: Rng>(&mut self, io: &mut Io<'_, PI, R>, peer: PI) {
        if self.is_neighbor(&peer) {
            return;
        }
        self.eager.push(peer);
        let max = io.config.plumtree.ihave_max_entries;
        let recent: Vec<IHaveEntry> = self
            .cache_order
            .iter()
            .rev()
            .filter_map(|(_, id)| {
                self.cache.get(id).map(|c| IHaveEntry {
                    id: *id,
                    hops: c.hops,
                })
            })
            .take(max)
            .collect();
        for entry in recent.into_iter().rev() {
            self.queue_ihave(io, peer, entry);
        }
    }

    pub(crate) fn neighbor_down<R: Rng>(&mut self, io: &mut Io<'_, PI, R>, peer: PI) {
        self.eager.retain(|p| *p != peer);
        self.lazy.retain(|p| *p != peer);
        self.ihave_queue.retain(|(p, _)| *p != peer);
        for (id, m) in self.missing.iter_mut() {
            m.announcers.retain(|(p, _)| *p != peer);
            if m.grafted == Some(peer) {
                // The GRAFT went to a peer that is gone: ask the next one now.
                m.grafted = None;
                io.timer_at(io.now, Timer::Graft(*id));
            }
        }
    }

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
        self.remember(io, id, me, 0, None, payload.clone());
        self.push(io, id, me, 0, payload, None);
        Ok(id)
    }

    /// Records a message as seen and cached, evicting the oldest entries
    /// beyond the configured counts.
    fn remember<R: Rng>(
        &mut self,
        io: &mut Io<'_, PI, R>,
        id: MessageId,
        origin: PI,
        hops: u16,
        from: Option<PI>,
        payload: Bytes,
    ) {
        let cfg = &io.config.plumtree;
        self.seen.insert(id, Seen { hops, from });
        self.seen_order.push_back((io.now, id));
        while self.seen.len() > cfg.seen_capacity {
            match self.seen_order.pop_front() {
                Some((_, old)) => {
                    self.seen.remove(&old);
                }
                None => break,
            }
        }
        self.cache.insert(
            id,
            Cached {
                origin,
                hops,
                payload,
            },
        );
        self.cache_order.push_back((io.now, id));
        while self.cache.len() > cfg.message_cache_capacity {
            match self.cache_order.pop_front() {
                Some((_, old)) => {
                    self.cache.remove(&old);
                }
                None => break,
            }
        }
        if !self.expiry_timer {
            self.expiry_timer = true;
            io.timer(cfg.expiry_interval, Timer::Expiry);
        }
    }

    /// Eager push to eager peers, lazy announcement to lazy peers.
    fn push<R: Rng>(
        &mut self,
        io: &mut Io<'_, PI, R>,
        id: MessageId,
        origin: PI,
        hops: u16,
        payload: Bytes,
        except: Option<PI>,
    ) {
        for &peer in &self.eager {
            if Some(peer) != except {
                io.send(
                    peer,
                    Message::Gossip(Gossip {
                        id,
                        origin,
                        hops,
                        payload: payload.clone(),
                    }),
                );
            }
        }
        let lazy: Vec<PI> = self
            .lazy
            .iter()
            .copied()
            .filter(|p| Some(*p) != except)
            .collect();
        for peer in lazy {
            self.queue_ihave(io, peer, IHaveEntry { id, hops });
        }
    }

    fn queue_ihave<R: Rng>(&mut self, io: &mut Io<'_, PI, R>, peer: PI, entry: IHaveEntry) {
        match self.ihave_queue.iter_mut().find(|(p, _)| *p == peer) {
            Some((_, entries)) => entries.push(entry),
            None => self.ihave_queue.push((peer, vec![entry])),
        }
        if !self.ihave_timer {
            self.ihave_timer = true;
            io.timer(io.config.plumtree.ihave_interval, Timer::IHave);
        }
    }

    pub(crate) fn on_gossip<R: Rng>(&mut self, io: &mut Io<'_, PI, R>, from: PI, msg: Gossip<PI>) {
        let hops = msg.hops.saturating_add(1);
        if self.seen.contains_key(&msg.id) {
            io.stats.duplicates += 1;
            if self.eager.contains(&from) {
                self.make_lazy(from);
                io.stats.prunes_sent += 1;
                io.send(from, Message::Prune(Prune));
            }
            return;
        }
        let neighbor = self.is_neighbor(&from);
        if neighbor {
            self.make_eager(from);
        }
        self.remember(
            io,
            msg.id,
            msg.origin,
            hops,
            Some(from),
            msg.payload.clone(),
        );
        let missing = self.missing.remove(&msg.id);
        io.stats.payloads_delivered += 1;
        io.stats.payload_bytes_delivered += msg.payload.len() as u64;
        io.event(Event::Received(Delivery {
            id: msg.id,
            origin: msg.origin,
            hops,
            from,
            payload: msg.payload.clone(),
        }));
        self.push(io, msg.id, msg.origin, hops, msg.payload, Some(from));
        // An announcement that arrived before the payload may show a
        // shorter path than the one the payload took.
        let best = missing.and_then(|m| {
            m.announcers
                .into_iter()
                .filter(|(p, _)| self.is_neighbor(p))
                .min_by_key(|(_, h)| *h)
        });
        if let Some((best, best_hops)) = best {
            self.maybe_optimize(io, msg.id, from, best, best_hops);
        }
    }

    pub(crate) fn on_ihave<R: Rng>(&mut self, io: &mut Io<'_, PI, R>, from: PI, msg: IHave) {
        io.stats.ihave_entries_received += msg.entries.len() as u64;
        if !self.is_neighbor(&from) {
            return;
        }
        let cfg = &io.config.plumtree;
        for entry in msg.entries {
            if let Some(seen) = self.seen.get(&entry.id).copied() {
                if let Some(parent) = seen.from {
                    self.maybe_optimize(io, entry.id, parent, from, entry.hops);
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
                    self.missing.insert(
                        entry.id,
                        Missing {
                            announcers: VecDeque::from([(from, entry.hops)]),
                            grafted: None,
                            first_announced: io.now,
                        },
                    );
                    io.timer(cfg.graft_timeout_1, Timer::Graft(entry.id));
                }
            }
        }
    }

    /// Tree optimisation: if `announcer` offers a path at least
    /// `optimization_threshold` hops shorter than the one through `parent`,
    /// make `announcer` our eager parent and prune `parent`.
    fn maybe_optimize<R: Rng>(
        &mut self,
        io: &mut Io<'_, PI, R>,
        id: MessageId,
        parent: PI,
        announcer: PI,
        announcer_hops: u16,
    ) {
        let Some(seen) = self.seen.get_mut(&id) else {
            return;
        };
        let via_announcer = announcer_hops.saturating_add(1);
        let threshold = io.config.plumtree.optimization_threshold.max(1);
        if announcer == parent
            || seen.hops < via_announcer.saturating_add(threshold)
            || !self.lazy.contains(&announcer)
        {
            return;
        }
        // Later announcements for this message compare against the new path.
        seen.hops = via_announcer;
        seen.from = Some(announcer);
        io.stats.tree_optimizations += 1;
        self.make_eager(announcer);
        io.stats.grafts_sent += 1;
        io.send(announcer, Message::Graft(Graft { id: None }));
        if self.eager.contains(&parent) {
            self.make_lazy(parent);
            io.stats.prunes_sent += 1;
            io.send(parent, Message::Prune(Prune));
        }
    }

    pub(crate) fn on_graft<R: Rng>(&mut self, io: &mut Io<'_, PI, R>, from: PI, msg: Graft) {
        io.stats.grafts_received += 1;
        self.make_eager(from);
        let Some(id) = msg.id else {
            return;
        };
        match self.cache.get(&id) {
            Some(c) => io.send(
                from,
                Message::Gossip(Gossip {
                    id,
                    origin: c.origin,
                    hops: c.hops,
                    payload: c.payload.clone(),
                }),
            ),
            None => io.stats.graft_misses += 1,
        }
    }

    pub(crate) fn on_prune<R: Rng>(&mut self, io: &mut Io<'_, PI, R>, from: PI) {
        io.stats.prunes_received += 1;
        self.make_lazy(from);
    }

    /// A GRAFT timer fired: fetch the message from the next announcer.
    pub(crate) fn on_graft_timer<R: Rng>(&mut self, io: &mut Io<'_, PI, R>, id: MessageId) {
        let Some(m) = self.missing.get_mut(&id) else {
            return;
        };
        let next = loop {
            match m.announcers.pop_front() {
                Some((peer, _)) if self.eager.contains(&peer) || self.lazy.contains(&peer) => {
                    break Some(peer);
                }
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
        self.make_eager(peer);
        io.stats.grafts_sent += 1;
        io.send(peer, Message::Graft(Graft { id: Some(id) }));
        io.timer(io.config.plumtree.graft_timeout_2, Timer::Graft(id));
    }

    /// The IHAVE batch timer fired: send every queued announcement.
    pub(crate) fn on_ihave_timer<R: Rng>(&mut self, io: &mut Io<'_, PI, R>) {
        self.ihave_timer = false;
        let max = io.config.plumtree.ihave_max_entries.max(1);
        for (peer, entries) in core::mem::take(&mut self.ihave_queue) {
            if !self.is_neighbor(&peer) {
                continue;
            }
            io.stats.ihave_entries_sent += entries.len() as u64;
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

    /// The expiry timer fired: forget payloads, ids and announcements that
    /// are older than their retention.
    pub(crate) fn on_expiry_timer<R: Rng>(&mut self, io: &mut Io<'_, PI, R>) {
        let cfg: &Config = io.config;
        let now = io.now;
        let cache_cutoff = now - cfg.plumtree.message_cache_retention;
        while let Some(&(t, id)) = self.cache_order.front() {
            if t > cache_cutoff {
                break;
            }
            self.cache_order.pop_front();
            self.cache.remove(&id);
        }
        let seen_cutoff = now - cfg.plumtree.seen_retention;
        while let Some(&(t, id)) = self.seen_order.front() {
            if t > seen_cutoff {
                break;
            }
            self.seen_order.pop_front();
            self.seen.remove(&id);
        }
        self.missing.retain(|_, m| m.first_announced > seen_cutoff);
        self.expiry_timer =
            !(self.seen.is_empty() && self.cache.is_empty() && self.missing.is_empty());
        if self.expiry_timer {
            io.timer(cfg.plumtree.expiry_interval, Timer::Expiry);
        }
    }
}
