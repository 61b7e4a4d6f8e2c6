//! HyParView membership (Leitão, Pereira, Rodrigues, DSN 2007).
//!
//! Owns the active view (neighbors with an open connection), the passive
//! view (known peers kept as replacements), outstanding NEIGHBOR/JOIN
//! requests, and the bootstrap contacts. It tells [`crate::State`] about
//! neighbor changes through `changes`; it never touches broadcast state.
//!
//! Beyond the paper:
//! - links are made with a two-phase NEIGHBOR / NEIGHBOR_REPLY handshake,
//!   so both sides add each other only once both agree (symmetric views);
//! - a failed passive candidate is retried after an exponential backoff and
//!   dropped after `candidate_max_failures` consecutive failures;
//! - the repair tick keeps filling a non-full active view from the passive
//!   view, not only right after a failure;
//! - **isolation recovery**: a node whose active view is empty re-JOINs
//!   through its bootstrap contacts, round robin, with capped exponential
//!   backoff, until it has neighbors again.

use crate::id::{PeerData, PeerIdentity, PeerInfo};
use crate::state::{Event, Io, Output, Timer};
use crate::time::Time;
use crate::util::{choose_filtered, jitter, random_index, release, sample};
use crate::wire::{
    Disconnect, ForwardJoin, Join, Message, Neighbor, NeighborReply, Priority, Shuffle,
    ShuffleReply,
};
use core::time::Duration;
use rand::Rng;

/// A change of the active view, for the broadcast layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NeighborChange<PI> {
    Up(PI),
    Down(PI),
}

/// A passive entry that failed or refused lately. Kept beside the passive
/// view, not in it: most entries never fail, and a simulator holds 30
/// entries for each of a million nodes.
#[derive(Clone, Debug)]
struct Backoff<PI> {
    id: PI,
    /// Consecutive failures to connect.
    failures: u8,
    /// Not tried again before this instant.
    retry_at: Time,
}

/// A neighbor lost to a failure, retried until restored or too old.
#[derive(Clone, Debug)]
struct Lost<PI> {
    info: PeerInfo<PI>,
    since: Time,
    next_try: Time,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RequestKind {
    Join,
    Neighbor(Priority),
}

#[derive(Clone, Debug)]
struct Pending<PI> {
    info: PeerInfo<PI>,
    kind: RequestKind,
    deadline: Time,
}

/// HyParView state of one node.
#[derive(Debug)]
pub(crate) struct HyParView<PI> {
    data: PeerData,
    active: Vec<PeerInfo<PI>>,
    passive: Vec<PeerInfo<PI>>,
    /// Backoff of passive entries, at most one per entry.
    backoff: Vec<Backoff<PI>>,
    pending: Vec<Pending<PI>>,
    lost: Vec<Lost<PI>>,
    contacts: Vec<PeerInfo<PI>>,
    joined: bool,
    left: bool,
    had_neighbors: bool,
    /// The active view was full at least once (the join is over).
    was_full: bool,
    next_contact: usize,
    rejoin_attempts: u32,
    next_rejoin: Time,
    isolated_since: Option<Time>,
    repair_at: Option<Time>,
    next_shuffle: Option<Time>,
    /// The period the next shuffle is scheduled with (zero until the first).
    shuffle_period: Duration,
    /// The active view changed since the last shuffle.
    view_changed: bool,
    last_shuffle: Vec<PI>,
    /// Active-view changes not yet seen by the broadcast layer.
    pub(crate) changes: Vec<NeighborChange<PI>>,
}

fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(20);
    base.saturating_mul(factor).min(max)
}

impl<PI: PeerIdentity> HyParView<PI> {
    pub(crate) fn new() -> Self {
        HyParView {
            data: PeerData::new(),
            active: Vec::new(),
            passive: Vec::new(),
            backoff: Vec::new(),
            pending: Vec::new(),
            lost: Vec::new(),
            contacts: Vec::new(),
            joined: false,
            left: false,
            had_neighbors: false,
            was_full: false,
            next_contact: 0,
            rejoin_attempts: 0,
            next_rejoin: Time::ZERO,
            isolated_since: None,
            repair_at: None,
            next_shuffle: None,
            shuffle_period: Duration::ZERO,
            view_changed: false,
            last_shuffle: Vec::new(),
            changes: Vec::new(),
        }
    }

    pub(crate) fn set_data(&mut self, data: PeerData) {
        self.data = data;
    }

    pub(crate) fn active(&self) -> impl Iterator<Item = PI> + Clone + '_ {
        self.active.iter().map(|p| p.id)
    }

    pub(crate) fn active_len(&self) -> usize {
        self.active.len()
    }

    pub(crate) fn passive(&self) -> impl Iterator<Item = PI> + '_ {
        self.passive.iter().map(|p| p.id)
    }

    pub(crate) fn passive_len(&self) -> usize {
        self.passive.len()
    }

    pub(crate) fn is_active(&self, peer: &PI) -> bool {
        self.active.iter().any(|p| p.id == *peer)
    }

    pub(crate) fn has_left(&self) -> bool {
        self.left
    }

    /// The most recent data known for `peer`, if any.
    pub(crate) fn peer_data(&self, peer: &PI) -> Option<&PeerData> {
        self.active
            .iter()
            .find(|p| p.id == *peer)
            .or_else(|| self.passive.iter().find(|p| p.id == *peer))
            .or_else(|| self.pending.iter().map(|e| &e.info).find(|p| p.id == *peer))
            .or_else(|| self.contacts.iter().find(|p| p.id == *peer))
            .map(|p| &p.data)
    }

    /// Reports peer data to the driver when it is new, or changed and
    /// `firsthand` (the peer said it itself). Data relayed by third parties
    /// (FORWARD_JOIN, SHUFFLE) only fills in peers we know nothing about, so
    /// a stale or forged relay cannot replace an address we learned directly.
    fn learn<R: Rng>(&self, io: &mut Io<'_, PI, R>, info: &PeerInfo<PI>, firsthand: bool) {
        if info.data.is_empty() || info.id == io.me {
            return;
        }
        let known = self.peer_data(&info.id);
        if (firsthand && known != Some(&info.data)) || known.is_none_or(|d| d.is_empty()) {
            io.event(Event::PeerData {
                peer: info.id,
                data: info.data.clone(),
            });
        }
    }

    /// The sender's own description of itself (first-hand), learned.
    fn heard_from<R: Rng>(&self, io: &mut Io<'_, PI, R>, from: PI, data: PeerData) -> PeerInfo<PI> {
        let info = PeerInfo { id: from, data };
        self.learn(io, &info, true);
        info
    }

    fn me_info<R>(&self, io: &Io<'_, PI, R>) -> PeerInfo<PI> {
        PeerInfo {
            id: io.me,
            data: self.data.clone(),
        }
    }

    fn take_pending(&mut self, peer: &PI) -> Option<Pending<PI>> {
        let pos = self.pending.iter().position(|p| p.info.id == *peer)?;
        Some(self.pending.remove(pos))
    }

    fn schedule_repair<R: Rng>(&mut self, io: &mut Io<'_, PI, R>, at: Time) {
        if self.repair_at.is_some_and(|t| t <= at) {
            return;
        }
        self.repair_at = Some(at);
        io.timer_at(at, Timer::Repair);
    }

    // ----- inputs -----------------------------------------------------

    /// Starts (or restarts) membership through `contacts`.
    pub(crate) fn join<R: Rng>(&mut self, io: &mut Io<'_, PI, R>, contacts: Vec<PeerInfo<PI>>) {
        for c in contacts {
            if c.id == io.me {
                continue;
            }
            self.learn(io, &c, true);
            match self.contacts.iter_mut().find(|x| x.id == c.id) {
                Some(existing) => existing.data = c.data,
                None => self.contacts.push(c),
            }
        }
        self.left = false;
        self.joined = true;
        self.next_contact = random_index(io.rng, self.contacts.len()).unwrap_or(0);
        self.next_rejoin = io.now;
        if self.active.is_empty() {
            self.isolated_since = Some(io.now);
            if !self.contacts.is_empty()
                && !self.pending.iter().any(|p| p.kind == RequestKind::Join)
            {
                self.send_join(io);
            }
        }
        if self.next_shuffle.is_none() {
            let at = io.now + jitter(io.rng, io.config.hyparview.shuffle_interval);
            self.next_shuffle = Some(at);
            io.timer_at(at, Timer::Shuffle);
        }
        self.schedule_repair(io, io.now + io.config.hyparview.repair_interval);
    }

    /// Leaves for good: every neighbor is told to forget us.
    pub(crate) fn leave<R: Rng>(&mut self, io: &mut Io<'_, PI, R>) {
        self.left = true;
        self.lost.clear();
        let ids: Vec<PI> = self.active().collect();
        for id in ids {
            self.remove_active(io, id, Some(false));
        }
        self.pending.clear();
    }

    /// The connection to `peer` failed or could not be established.
    pub(crate) fn peer_down<R: Rng>(&mut self, io: &mut Io<'_, PI, R>, peer: PI) {
        io.stats.peer_failures += 1;
        let was_active = self.remove_active(io, peer, None);
        let pending = self.take_pending(&peer);
        match (was_active, pending) {
            (Some(info), _) => {
                // Keep a failed neighbor as a candidate (it may have been a
                // transient failure or a partition), but behind a backoff,
                // and try to restore the link itself (see `restore`).
                self.remember_lost(io, info.clone());
                self.add_passive(io, info);
                self.candidate_failed(io, &peer);
            }
            (None, Some(p)) => self.candidate_failed(io, &p.info.id),
            (None, None) => self.candidate_failed(io, &peer),
        }
        self.schedule_repair(io, io.now);
    }

    pub(crate) fn on_join<R: Rng>(&mut self, io: &mut Io<'_, PI, R>, from: PI, msg: Join) {
        if from == io.me {
            return;
        }
        io.stats.joins_received += 1;
        let info = self.heard_from(io, from, msg.data);
        if self.left {
            self.reply(io, from, false);
            return;
        }
        // A contact with a full view does not evict a neighbor for the
        // joiner: under a burst of joins (a cluster restart) its view would
        // churn to the latest joiners, the walks would start from them, and
        // the overlay would grow into a long chain in join order (BFS depth
        // 45 instead of 9 at n = 10,000, 1,000 joins/s). The walks below
        // start from its stable neighbors and link the joiner anyway.
        let accept =
            self.is_active(&from) || self.active.len() < io.config.hyparview.active_view_capacity;
        if accept {
            self.add_active(io, info.clone(), false);
        } else {
            self.add_passive(io, info.clone());
        }
        self.reply(io, from, accept);
        let ttl = io.config.hyparview.active_random_walk_length;
        let others: Vec<PI> = self.active().filter(|p| *p != from).collect();
        for peer in others {
            io.send(
                peer,
                Message::ForwardJoin(ForwardJoin {
                    peer: info.clone(),
                    ttl,
                }),
            );
        }
    }

    pub(crate) fn on_forward_join<R: Rng>(
        &mut self,
        io: &mut Io<'_, PI, R>,
        from: PI,
        msg: ForwardJoin<PI>,
    ) {
        let new = msg.peer;
        // Walks travel over active links only; anything else is not a walk.
        if new.id == io.me || self.left || !self.is_active(&from) {
            return;
        }
        self.learn(io, &new, false);
        if self.is_active(&new.id) {
            return;
        }
        let cfg = &io.config.hyparview;
        let ttl = msg.ttl.min(cfg.active_random_walk_length);
        if ttl == 0 || self.active.len() <= 1 {
            self.request_neighbor(io, new, Priority::High);
            return;
        }
        if ttl == cfg.passive_random_walk_length {
            self.integrate(io, [new.clone()], &[], false);
        }
        let next = choose_filtered(io.rng, self.active(), |p| *p == from || *p == new.id);
        match next {
            Some(next) => io.send(
                next,
                Message::ForwardJoin(ForwardJoin {
                    peer: new,
                    ttl: ttl - 1,
                }),
            ),
            None => self.request_neighbor(io, new, Priority::High),
        }
    }

    pub(crate) fn on_neighbor<R: Rng>(&mut self, io: &mut Io<'_, PI, R>, from: PI, msg: Neighbor) {
        if from == io.me {
            return;
        }
        let info = self.heard_from(io, from, msg.data);
        if self.left {
            self.reply(io, from, false);
        } else if self.is_active(&from) {
            self.reply(io, from, true);
        } else if msg.priority == Priority::High
            || self.active.len() < io.config.hyparview.active_view_capacity
        {
            self.add_active(io, info, true);
            self.reply(io, from, true);
        } else {
            self.reply(io, from, false);
            self.add_passive(io, info);
        }
    }

    fn reply<R: Rng>(&self, io: &mut Io<'_, PI, R>, to: PI, accepted: bool) {
        io.send(
            to,
            Message::NeighborReply(NeighborReply {
                accepted,
                data: self.data.clone(),
            }),
        );
    }

    pub(crate) fn on_neighbor_reply<R: Rng>(
        &mut self,
        io: &mut Io<'_, PI, R>,
        from: PI,
        msg: NeighborReply,
    ) {
        let info = self.heard_from(io, from, msg.data);
        let pending = self.take_pending(&from);
        if !msg.accepted {
            io.stats.neighbor_requests_refused += 1;
            // Only a node that left refuses a forcing request: stop restoring.
            if matches!(
                pending.as_ref().map(|p| p.kind),
                Some(RequestKind::Neighbor(Priority::High))
            ) {
                self.lost.retain(|l| l.info.id != from);
            }
            // Alive but full: try it again later, without counting a failure.
            let retry = io.now + io.config.hyparview.candidate_backoff_base;
            if self.is_passive(&from) {
                let b = self.backoff_of(from);
                b.retry_at = b.retry_at.max(retry);
            } else if pending.is_some() {
                self.add_passive(io, info);
                if self.is_passive(&from) {
                    self.backoff_of(from).retry_at = retry;
                }
            }
            // Try another candidate at the next repair tick, not at once:
            // a node one short of full would otherwise walk its whole
            // passive view every second (~30 refused requests/s).
            let next = io.now + io.config.hyparview.repair_interval;
            self.schedule_repair(io, next);
            return;
        }
        if self.is_active(&from) || from == io.me {
            return;
        }
        if self.left {
            io.send(from, Message::Disconnect(Disconnect { alive: false }));
            io.push(Output::Disconnect { peer: from });
            return;
        }
        let must_accept = matches!(
            pending.map(|p| p.kind),
            Some(RequestKind::Join) | Some(RequestKind::Neighbor(Priority::High))
        );
        if must_accept
            || self.active.is_empty()
            || self.active.len() < io.config.hyparview.active_view_capacity
        {
            self.add_active(io, info, true);
        } else {
            // We filled up meanwhile: undo the link the peer just made.
            io.send(from, Message::Disconnect(Disconnect { alive: true }));
            io.push(Output::Disconnect { peer: from });
            self.add_passive(io, info);
        }
    }

    pub(crate) fn on_disconnect<R: Rng>(
        &mut self,
        io: &mut Io<'_, PI, R>,
        from: PI,
        msg: Disconnect,
    ) {
        let removed = self.remove_active(io, from, None);
        self.take_pending(&from);
        // It chose to drop us: nothing to restore.
        self.lost.retain(|l| l.info.id != from);
        if msg.alive {
            if let Some(info) = removed {
                self.add_passive(io, info);
            }
        } else {
            self.remove_passive(&from);
        }
    }

    pub(crate) fn on_shuffle<R: Rng>(
        &mut self,
        io: &mut Io<'_, PI, R>,
        from: PI,
        msg: Shuffle<PI>,
    ) {
        if msg.origin.id == io.me || self.left || !self.is_active(&from) {
            return;
        }
        self.learn(io, &msg.origin, false);
        let ttl = msg.ttl.min(io.config.hyparview.shuffle_ttl);
        if ttl > 0 && self.active.len() > 1 {
            let origin = msg.origin.id;
            if let Some(next) =
                choose_filtered(io.rng, self.active(), |p| *p == from || *p == origin)
            {
                io.send(
                    next,
                    Message::Shuffle(Shuffle {
                        origin: msg.origin,
                        ttl: ttl - 1,
                        nodes: msg.nodes,
                    }),
                );
                return;
            }
        }
        // The walk ends here: answer with as many passive entries.
        let excluded = |id: &PI| *id == msg.origin.id || msg.nodes.iter().any(|n| n.id == *id);
        let candidates: Vec<PeerInfo<PI>> = self
            .passive
            .iter()
            .filter(|e| !excluded(&e.id))
            .cloned()
            .collect();
        let reply = sample(io.rng, candidates, msg.nodes.len().max(1));
        let sent: Vec<PI> = reply.iter().map(|p| p.id).collect();
        io.send(
            msg.origin.id,
            Message::ShuffleReply(ShuffleReply { nodes: reply }),
        );
        let mut incoming = msg.nodes;
        incoming.push(msg.origin);
        self.integrate(io, incoming, &sent, false);
    }

    pub(crate) fn on_shuffle_reply<R: Rng>(
        &mut self,
        io: &mut Io<'_, PI, R>,
        _from: PI,
        msg: ShuffleReply<PI>,
    ) {
        if self.left {
            return;
        }
        let sent = core::mem::take(&mut self.last_shuffle);
        self.integrate(io, msg.nodes, &sent, false);
    }

    // ----- timers -----------------------------------------------------

    pub(crate) fn on_shuffle_timer<R: Rng>(&mut self, io: &mut Io<'_, PI, R>) {
        if self.next_shuffle.is_some_and(|at| io.now < at) {
            return; // a stale or duplicate firing
        }
        let cfg = &io.config.hyparview;
        // Stable: both views full, the active one as it was last time.
        let stable = !self.view_changed
            && self.active.len() >= cfg.active_view_capacity
            && self.passive.len() >= cfg.passive_view_capacity;
        self.shuffle_period = if stable {
            self.shuffle_period
                .max(cfg.shuffle_interval)
                .saturating_mul(2)
                .min(cfg.shuffle_interval_max.max(cfg.shuffle_interval))
        } else {
            cfg.shuffle_interval
        };
        self.view_changed = false;
        let at = io.now + jitter(io.rng, self.shuffle_period);
        self.next_shuffle = Some(at);
        io.timer_at(at, Timer::Shuffle);
        if self.left {
            return;
        }
        let Some(target) = random_index(io.rng, self.active.len()).map(|i| self.active[i].id)
        else {
            return;
        };
        let cfg = &io.config.hyparview;
        let (ka, kp) = (cfg.shuffle_active_count, cfg.shuffle_passive_count);
        let actives: Vec<PeerInfo<PI>> = self
            .active
            .iter()
            .filter(|p| p.id != target)
            .cloned()
            .collect();
        let passives: Vec<PeerInfo<PI>> = self.passive.clone();
        let mut nodes = sample(io.rng, actives, ka);
        nodes.extend(sample(io.rng, passives, kp));
        self.last_shuffle = nodes.iter().map(|p| p.id).collect();
        io.stats.shuffles_sent += 1;
        let ttl = io.config.hyparview.shuffle_ttl;
        let origin = self.me_info(io);
        io.send(target, Message::Shuffle(Shuffle { origin, ttl, nodes }));
    }

    /// The repair tick: expire unanswered requests, fill the active view
    /// from the passive view, and re-join if isolated.
    pub(crate) fn on_repair_timer<R: Rng>(&mut self, io: &mut Io<'_, PI, R>) {
        if self.repair_at.is_some_and(|t| t <= io.now) {
            self.repair_at = None;
        }
        if self.left || !self.joined {
            return;
        }
        let now = io.now;
        let expired: Vec<Pending<PI>> =
            self.pending.extract_if(.., |p| p.deadline <= now).collect();
        for p in expired {
            io.stats.neighbor_requests_timed_out += 1;
            self.candidate_failed(io, &p.info.id);
        }
        self.fill(io);
        self.restore(io);
        let cfg = &io.config.hyparview;
        let cap = cfg.active_view_capacity;
        let join_pending = self.pending.iter().any(|p| p.kind == RequestKind::Join);
        // Isolated: no neighbor at all. Prefer the passive view first; fall
        // back to the contacts when it has no candidate left or has not
        // helped within one backoff. Starved: a free slot, nothing pending,
        // and no passive entry known to be alive (only failed ones, or none)
        // — a small island, e.g. two nodes that bootstrapped through each
        // other, which shuffles cannot grow. Candidates that *refused* are
        // alive and full: that is a healthy network, not starvation.
        let isolated = self.active.is_empty();
        // Joining through a contact we are already linked to adds nothing
        // (in a cluster no larger than the view, every node is starved by
        // this definition but linked to every contact).
        let contact_elsewhere = self.contacts.iter().any(|c| !self.is_active(&c.id));
        let starved = self.active.len() < cap
            && self.pending.is_empty()
            && contact_elsewhere
            && self.passive.iter().all(|e| self.failures(&e.id) > 0);
        let since = if isolated || starved {
            *self.isolated_since.get_or_insert(now)
        } else {
            self.isolated_since = None;
            now
        };
        let waited = now >= since + cfg.rejoin_backoff_base;
        if (starved || (isolated && waited))
            && !join_pending
            && !self.contacts.is_empty()
            && now >= self.next_rejoin
        {
            self.send_join(io);
        }
        let cfg = &io.config.hyparview;
        if self.active.len() < cap || !self.pending.is_empty() {
            let mut at = now + cfg.repair_interval;
            for p in &self.pending {
                at = at.min(p.deadline);
            }
            if self.isolated_since.is_some() && !self.contacts.is_empty() && self.next_rejoin > now
            {
                at = at.min(self.next_rejoin);
            }
            self.schedule_repair(io, at);
        }
        if let Some(at) = self.lost.iter().map(|l| l.next_try).min() {
            self.schedule_repair(io, at.max(now + Duration::from_millis(1)));
        }
        // Requests and backoffs are few and short-lived: an emptied buffer
        // gives its memory back (a simulator holds a million nodes).
        release(&mut self.pending);
        release(&mut self.backoff);
        release(&mut self.lost);
    }

    // ----- internals --------------------------------------------------

    fn send_join<R: Rng>(&mut self, io: &mut Io<'_, PI, R>) {
        // The next contact in round-robin order that is not a neighbor.
        let n = self.contacts.len();
        let Some(idx) = (0..n)
            .map(|k| self.next_contact.wrapping_add(k) % n)
            .find(|&i| !self.is_active(&self.contacts[i].id))
        else {
            return;
        };
        self.next_contact = idx.wrapping_add(1);
        let contact = self.contacts[idx].clone();
        let cfg = &io.config.hyparview;
        if self.had_neighbors || self.rejoin_attempts > 0 {
            io.stats.rejoin_attempts += 1;
        }
        io.stats.joins_sent += 1;
        self.rejoin_attempts = self.rejoin_attempts.saturating_add(1);
        let delay = backoff(
            cfg.rejoin_backoff_base,
            cfg.rejoin_backoff_max,
            self.rejoin_attempts,
        );
        self.next_rejoin = io.now + jitter(io.rng, delay).min(cfg.rejoin_backoff_max);
        let deadline = io.now + cfg.neighbor_request_timeout;
        self.take_pending(&contact.id);
        self.pending.push(Pending {
            info: contact.clone(),
            kind: RequestKind::Join,
            deadline,
        });
        let data = self.data.clone();
        io.send(contact.id, Message::Join(Join { data }));
        self.schedule_repair(io, deadline.min(self.next_rejoin));
    }

    fn remember_lost<R: Rng>(&mut self, io: &mut Io<'_, PI, R>, info: PeerInfo<PI>) {
        if self.left {
            return;
        }
        self.lost.retain(|l| l.info.id != info.id);
        let next_try = io.now + jitter(io.rng, io.config.hyparview.restore_interval);
        self.lost.push(Lost {
            info,
            since: io.now,
            next_try,
        });
        // Bounded: the oldest losses are the least likely to come back.
        if self.lost.len() > io.config.hyparview.active_view_capacity {
            self.lost.remove(0);
        }
    }

    /// Retries neighbors lost to failures with a request that must be
    /// accepted (priority High), so that two halves of a healed partition,
    /// each with full active views again, get linked. Gives up after
    /// `restore_max_age`, or when the peer is back or said goodbye.
    fn restore<R: Rng>(&mut self, io: &mut Io<'_, PI, R>) {
        let now = io.now;
        let cfg = &io.config.hyparview;
        let (max_age, interval) = (cfg.restore_max_age, cfg.restore_interval);
        let active = &self.active;
        self.lost.retain(|l| {
            now.saturating_since(l.since) < max_age && !active.iter().any(|a| a.id == l.info.id)
        });
        // One attempt per interval, round-robin over the lost links: one
        // link across a healed cut is enough (shuffles mix the rest), and
        // after a mass crash, where every lost peer is dead, a request to
        // each of them every interval was most of the repair traffic.
        let rounds = u32::try_from(self.lost.len().max(1)).unwrap_or(u32::MAX);
        let Some(next) = self
            .lost
            .iter()
            .enumerate()
            .filter(|(_, l)| l.next_try <= now)
            .min_by_key(|(_, l)| l.next_try)
            .map(|(i, _)| i)
        else {
            return;
        };
        for (i, l) in self.lost.iter_mut().enumerate() {
            if i == next {
                l.next_try = now + interval.saturating_mul(rounds);
            } else if l.next_try <= now {
                l.next_try = now + interval;
            }
        }
        // If a request to it is already in flight, that one counts as this
        // attempt.
        let info = self.lost[next].info.clone();
        if !self.pending.iter().any(|p| p.info.id == info.id) {
            self.request_neighbor(io, info, Priority::High);
        }
    }

    /// Sends NEIGHBOR requests to random ready passive candidates: up to two
    /// per free active slot in flight (one when a single slot of a view that
    /// was full is free). Candidates that are dead take a full dial timeout
    /// to fail; after a mass failure most are, and one request
    /// per slot would fill the view at the pace of those timeouts. Surplus
    /// acceptances are undone with DISCONNECT (see `on_neighbor_reply`).
    fn fill<R: Rng>(&mut self, io: &mut Io<'_, PI, R>) {
        let cap = io.config.hyparview.active_view_capacity;
        let requested = self
            .pending
            .iter()
            .filter(|p| matches!(p.kind, RequestKind::Neighbor(_)))
            .count();
        let free = cap.saturating_sub(self.active.len());
        // One free slot in a view that was full (a neighbor left or
        // crashed: churn) takes one request: the passive view is mostly
        // alive then, and a second acceptance would be undone with
        // DISCONNECT. Two or more free slots look like a mass failure, and
        // a joining node fills fast: two requests per slot.
        let per_slot = if free >= 2 || !self.was_full { 2 } else { 1 };
        let want = (per_slot * free)
            .min(Self::max_pending(&io.config.hyparview))
            .saturating_sub(requested);
        if want == 0 {
            return;
        }
        let now = io.now;
        // A refusal's backoff that has passed leaves nothing to remember.
        self.backoff.retain(|b| b.failures > 0 || b.retry_at > now);
        let ready = |id: &PI| {
            self.backoff
                .iter()
                .all(|b| b.id != *id || b.retry_at <= now)
        };
        let candidates: Vec<PeerInfo<PI>> = self
            .passive
            .iter()
            .filter(|e| ready(&e.id) && !self.pending.iter().any(|p| p.info.id == e.id))
            .cloned()
            .collect();
        let chosen = sample(io.rng, candidates, want);
        // Below half a view, requests must be accepted (priority High), as
        // many as it takes to reach half: otherwise a small island whose
        // candidates are alive but full (refusals are not failures, so it is
        // not "starved") stays apart forever — at n = 100,000 joining in
        // 10 s, ~140 pairs of nodes did. Above half, ask politely.
        let half = cap.div_ceil(2);
        for info in chosen {
            let high_pending = self
                .pending
                .iter()
                .filter(|p| p.kind == RequestKind::Neighbor(Priority::High))
                .count();
            let priority = if self.active.len() + high_pending < half {
                Priority::High
            } else {
                Priority::Low
            };
            self.request_neighbor(io, info, priority);
        }
    }

    /// Most NEIGHBOR/JOIN requests in flight at once: enough to fill an
    /// empty view twice over; beyond that a flood of FORWARD_JOINs could
    /// make us send unbounded requests.
    fn max_pending(cfg: &crate::config::HyParViewConfig) -> usize {
        cfg.active_view_capacity.saturating_mul(2).saturating_add(1)
    }

    fn request_neighbor<R: Rng>(
        &mut self,
        io: &mut Io<'_, PI, R>,
        info: PeerInfo<PI>,
        priority: Priority,
    ) {
        if info.id == io.me
            || self.is_active(&info.id)
            || self.pending.iter().any(|p| p.info.id == info.id)
        {
            return;
        }
        if self.pending.len() >= Self::max_pending(&io.config.hyparview) {
            self.integrate(io, [info], &[], false);
            return;
        }
        let deadline = io.now + io.config.hyparview.neighbor_request_timeout;
        let to = info.id;
        self.pending.push(Pending {
            info,
            kind: RequestKind::Neighbor(priority),
            deadline,
        });
        io.stats.neighbor_requests_sent += 1;
        let data = self.data.clone();
        io.send(to, Message::Neighbor(Neighbor { priority, data }));
        self.schedule_repair(io, deadline);
    }

    /// Adds `info` to the active view, evicting a random neighbor if full
    /// and `evict` is set. Returns whether it is now active.
    fn add_active<R: Rng>(
        &mut self,
        io: &mut Io<'_, PI, R>,
        info: PeerInfo<PI>,
        evict: bool,
    ) -> bool {
        if info.id == io.me {
            return false;
        }
        if let Some(existing) = self.active.iter_mut().find(|p| p.id == info.id) {
            if !info.data.is_empty() {
                existing.data = info.data;
            }
            return true;
        }
        let cap = io.config.hyparview.active_view_capacity;
        if self.active.len() >= cap {
            if !evict {
                return false;
            }
            while self.active.len() >= cap {
                let Some(i) = random_index(io.rng, self.active.len()) else {
                    break;
                };
                let victim = self.active[i].id;
                if let Some(v) = self.remove_active(io, victim, Some(true)) {
                    self.add_passive(io, v);
                }
            }
        }
        self.remove_passive(&info.id);
        self.lost.retain(|l| l.info.id != info.id);
        self.take_pending(&info.id);
        let id = info.id;
        if self.active.capacity() == 0 {
            self.active.reserve_exact(cap);
        }
        self.active.push(info);
        self.view_changed = true;
        self.changes.push(NeighborChange::Up(id));
        io.stats.neighbors_up += 1;
        io.event(Event::NeighborUp(id));
        self.rejoin_attempts = 0;
        self.isolated_since = None;
        self.had_neighbors = true;
        self.was_full |= self.active.len() >= io.config.hyparview.active_view_capacity;
        true
    }

    /// A neighbor was lost: a shuffle scheduled with a long (stable)
    /// period is brought forward to within `shuffle_interval`, since the
    /// views are changing again. (The timer already set stays: a firing
    /// before `next_shuffle` is ignored.)
    fn shuffle_soon<R: Rng>(&mut self, io: &mut Io<'_, PI, R>) {
        let base = io.config.hyparview.shuffle_interval;
        if self.left || self.shuffle_period <= base {
            return;
        }
        let at = io.now + jitter(io.rng, base);
        if self.next_shuffle.is_some_and(|next| next > at) {
            self.next_shuffle = Some(at);
            io.timer_at(at, Timer::Shuffle);
        }
    }

    /// Removes `peer` from the active view, telling it why if `notify` is
    /// `Some(alive)`. Returns its entry if it was active.
    fn remove_active<R: Rng>(
        &mut self,
        io: &mut Io<'_, PI, R>,
        peer: PI,
        notify: Option<bool>,
    ) -> Option<PeerInfo<PI>> {
        let pos = self.active.iter().position(|p| p.id == peer)?;
        let info = self.active.remove(pos);
        self.view_changed = true;
        self.shuffle_soon(io);
        if let Some(alive) = notify {
            io.send(peer, Message::Disconnect(Disconnect { alive }));
        }
        io.push(Output::Disconnect { peer });
        self.changes.push(NeighborChange::Down(peer));
        io.stats.neighbors_down += 1;
        io.event(Event::NeighborDown(peer));
        if self.active.is_empty() && self.isolated_since.is_none() {
            self.isolated_since = Some(io.now);
        }
        if !self.left {
            self.schedule_repair(io, io.now);
        }
        Some(info)
    }

    fn is_passive(&self, peer: &PI) -> bool {
        self.passive.iter().any(|e| e.id == *peer)
    }

    /// Consecutive failures of passive entry `peer`.
    fn failures(&self, peer: &PI) -> u8 {
        self.backoff
            .iter()
            .find(|b| b.id == *peer)
            .map_or(0, |b| b.failures)
    }

    /// The backoff record of passive entry `peer`, made if it has none.
    fn backoff_of(&mut self, peer: PI) -> &mut Backoff<PI> {
        let i = match self.backoff.iter().position(|b| b.id == peer) {
            Some(i) => i,
            None => {
                self.backoff.push(Backoff {
                    id: peer,
                    failures: 0,
                    retry_at: Time::ZERO,
                });
                self.backoff.len() - 1
            }
        };
        &mut self.backoff[i]
    }

    fn remove_passive(&mut self, peer: &PI) {
        self.passive.retain(|e| e.id != *peer);
        self.backoff.retain(|b| b.id != *peer);
    }

    /// Adds a peer we heard from directly (its data is authoritative).
    fn add_passive<R: Rng>(&mut self, io: &mut Io<'_, PI, R>, info: PeerInfo<PI>) {
        self.integrate(io, [info], &[], true);
    }

    /// Adds new entries to the passive view; when it is full, evicts first
    /// the entries in `prefer_evict` (those we just sent away in a shuffle),
    /// then random ones.
    fn integrate<R: Rng>(
        &mut self,
        io: &mut Io<'_, PI, R>,
        nodes: impl IntoIterator<Item = PeerInfo<PI>>,
        prefer_evict: &[PI],
        firsthand: bool,
    ) {
        let cap = io.config.hyparview.passive_view_capacity;
        for info in nodes {
            if info.id == io.me || self.is_active(&info.id) {
                continue;
            }
            self.learn(io, &info, firsthand);
            if let Some(e) = self.passive.iter_mut().find(|e| e.id == info.id) {
                if !info.data.is_empty() && (firsthand || e.data.is_empty()) {
                    e.data = info.data;
                }
                continue;
            }
            if self.passive.len() >= cap {
                let victim = self
                    .passive
                    .iter()
                    .position(|e| prefer_evict.contains(&e.id))
                    .or_else(|| random_index(io.rng, self.passive.len()));
                match victim {
                    Some(v) => {
                        let gone = self.passive.swap_remove(v);
                        self.backoff.retain(|b| b.id != gone.id);
                    }
                    None => continue,
                }
            }
            if self.passive.capacity() == 0 {
                self.passive.reserve_exact(cap);
            }
            self.passive.push(info);
        }
    }

    /// Counts a failed attempt to reach a passive candidate: back off, and
    /// drop it after too many consecutive failures.
    fn candidate_failed<R: Rng>(&mut self, io: &mut Io<'_, PI, R>, peer: &PI) {
        let cfg = &io.config.hyparview;
        let Some(pos) = self.passive.iter().position(|e| e.id == *peer) else {
            return;
        };
        let e = self.backoff_of(*peer);
        e.failures = e.failures.saturating_add(1);
        if e.failures >= cfg.candidate_max_failures {
            self.passive.remove(pos);
            self.backoff.retain(|b| b.id != *peer);
        } else {
            let delay = backoff(
                cfg.candidate_backoff_base,
                cfg.candidate_backoff_max,
                u32::from(e.failures),
            );
            e.retry_at = io.now + delay;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Duration::from_millis(100);
        let m = Duration::from_secs(1);
        assert_eq!(backoff(b, m, 1), b);
        assert_eq!(backoff(b, m, 2), b * 2);
        assert_eq!(backoff(b, m, 4), b * 8);
        assert_eq!(backoff(b, m, 5), m);
        assert_eq!(backoff(b, m, 200), m);
    }
}
