//! One member's side of a room, as a deterministic state machine.
//!
//! The host orders: members send it their messages ([`Msg::Post`]), it
//! appends each to the room's log once (by id) and replicates the log to
//! every member ([`Msg::Append`], also the heartbeat, every
//! [`Config::heartbeat`]); an entry a majority of the active members holds
//! is committed, and every member delivers committed entries in log order
//! — so all print the same sequence, and a message is delivered only once
//! it can no longer be lost by a failover. A sender keeps its message
//! until it sees it delivered, and sends it again (to whoever hosts) until
//! then.
//!
//! Failover (seed 002): the heartbeat carries the candidates in their
//! order ([`crate::centrality`]). A member that hears nothing from the
//! host for [`Config::host_timeout`] gives each candidate in turn
//! [`Config::vote_timeout`] to collect a majority of the active members'
//! votes; a candidate that does not declares itself ineligible at the end
//! of its turn, and the next one tries (with a higher epoch). Voters send
//! the candidate what their logs hold beyond what it has delivered, and it
//! takes the longest log among a majority (as in Viewstamped
//! Replication): whatever was committed is in it. A member that still
//! hears its host refuses to vote; a host that has not heard from a
//! majority for `host_timeout` steps down, and one that sees a higher
//! epoch too — so a minority side of a partition has no host, and waits
//! (and says so, [`Event::NoMajority`]).
//!
//! Joining: a member that knows no host says [`Msg::Hello`] to everyone;
//! the host appends its `Join` (from then on it counts for majorities)
//! and replicates the log to it — all the history still kept, so a late
//! or returning member gets what it missed ([`Event::Missed`] for what
//! the history no longer has). When nobody hosts and nobody has a log
//! (a new room), the lowest id among the members heard within
//! [`Config::join_wait`] starts it.

use crate::centrality::{Reports, candidates};
use crate::proto::{Append, Body, Entry, Epoch, Index, Msg, MsgId};
use overlay::Time;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;
use std::time::Duration;

/// Entries per [`Msg::Append`].
pub const MAX_APPEND: usize = 64;
/// Entries a vote carries.
pub const MAX_TAIL: usize = 1_024;
/// Appended but not committed, at most, at a host (more posts wait).
pub const MAX_UNCOMMITTED: usize = 1_024;
/// Own messages not yet delivered, at most.
pub const MAX_PENDING: usize = 256;
/// Longest message, in characters (as in one-to-one chats).
pub const MAX_CHARS: usize = 2_048;

/// Timers and bounds.
#[derive(Clone, Debug)]
pub struct Config {
    /// How often the host sends its heartbeat (an `Append`): twice a
    /// second, so one lost or late does not look like a dead host.
    pub heartbeat: Duration,
    /// No heartbeat this long: the host is taken for gone (a host that has
    /// not heard from a majority for twice this steps down).
    pub host_timeout: Duration,
    /// Each candidate's turn to collect a majority.
    pub vote_timeout: Duration,
    /// A message not delivered is sent again after this.
    pub retry: Duration,
    /// How long a new member listens for a host before a new room starts.
    pub join_wait: Duration,
    /// Entries of history kept.
    pub history: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            heartbeat: Duration::from_millis(500),
            host_timeout: Duration::from_secs(2),
            vote_timeout: Duration::from_millis(500),
            retry: Duration::from_millis(500),
            join_wait: Duration::from_secs(2),
            history: 10_000,
        }
    }
}

/// What the driver feeds in.
#[derive(Clone, Debug)]
pub enum Input<M> {
    /// Time passed (call at least every [`Room::poll_timeout`]).
    Tick,
    /// A message from another member.
    Recv {
        /// Who sent it (as the path authenticated it).
        from: M,
        /// What.
        msg: Msg<M>,
    },
    /// Our user's message.
    Post(String),
    /// Our delays to other members, as measured over the paths.
    Delays(Vec<(M, Duration)>),
    /// `/history N`: the next `N` older messages.
    History(u32),
}

/// Something the driver should show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<M> {
    /// This member hosts now (our own id when it is us).
    Host(M),
    /// No host; we are asking for votes for `epoch`.
    Candidate(Epoch),
    /// We did not reach a majority in our turn; the next candidate tries.
    Ineligible(Epoch),
    /// No candidate reached a majority: `reachable` of the `active`
    /// members answered lately; waiting.
    NoMajority {
        /// Members heard from lately (us included).
        reachable: usize,
        /// Members taking part.
        active: usize,
    },
    /// A member started taking part.
    Joined(M),
    /// `count` messages before the ones delivered are no longer in the
    /// history.
    Missed(u64),
    /// The answer to `/history`: oldest first; `more` when older ones are
    /// still kept.
    History {
        /// `(index, sender, text)`.
        entries: Vec<(Index, M, String)>,
        /// Whether another call shows more.
        more: bool,
    },
    /// Our message was not taken.
    Refused(&'static str),
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output<M> {
    /// Send `msg` to member `to` (lossy is fine: everything is retried).
    Send {
        /// The member.
        to: M,
        /// The message.
        msg: Msg<M>,
    },
    /// Print a room message: the room's `index`-th entry.
    Deliver {
        /// Its place in the room's order.
        index: Index,
        /// Who wrote it.
        sender: M,
        /// What it says.
        text: String,
    },
    /// Tell the user.
    Event(Event<M>),
}

/// A granted vote: the voter's log end and its entries after our commit.
type Ballot<M> = ((Epoch, Index), Vec<Entry<M>>);

#[derive(Debug)]
enum Role<M> {
    Follower,
    Candidate {
        epoch: Epoch,
        started: Time,
        /// When we last asked those who have not granted (again every
        /// quarter of the turn: a request lost on a path coming up again
        /// must not cost the turn).
        asked: Time,
        /// Still asking whether a majority would vote (the pre-vote).
        pre: bool,
        /// The commit we asked with.
        commit: Index,
        votes: BTreeMap<M, Ballot<M>>,
    },
    Host {
        next: BTreeMap<M, Index>,
        matched: BTreeMap<M, Index>,
        heard: BTreeMap<M, Time>,
        since: Time,
        last_beat: Option<Time>,
    },
}

/// Who tries next after the host went quiet.
#[derive(Debug)]
struct Failover<M> {
    base: Epoch,
    order: Vec<M>,
    k: usize,
    slot: Time,
    tried: bool,
}

#[derive(Debug)]
struct Pending {
    text: String,
    sent: Option<Time>,
}

/// One member's room.
#[derive(Debug)]
pub struct Room<M> {
    me: M,
    cfg: Config,
    members: BTreeSet<M>,
    run: u64,
    next_n: u64,
    epoch: Epoch,
    voted: Epoch,
    host: Option<M>,
    heard: Time,
    role: Role<M>,
    log: VecDeque<Entry<M>>,
    base: Index,
    base_epoch: Epoch,
    commit: Index,
    applied: Index,
    active: BTreeSet<M>,
    candidates: Vec<M>,
    failover: Option<Failover<M>>,
    pending: BTreeMap<u64, Pending>,
    ids: BTreeSet<MsgId<M>>,
    reports: Reports<M>,
    seen: BTreeMap<M, (Time, (Epoch, Index))>,
    join_by: Time,
    hello_sent: BTreeMap<M, Time>,
    cursor: Option<Index>,
    /// We hold the room's log as a host gave it to us (or we host): only
    /// then do we vote. A member restarted with nothing must not help
    /// elect a host that lacks what it had delivered before.
    synced: bool,
    /// Do not start a new room ([`Room::hold_start`]).
    hold: bool,
    /// Vote requests refused only because we still heard the host (one
    /// per member, the latest): answered again the moment we miss it too,
    /// so a candidate whose timer ran out a little before ours is not
    /// refused for that and made to give way.
    deferred: BTreeMap<M, (Time, bool, Epoch, Index)>,
    out: VecDeque<Output<M>>,
}

impl<M: Ord + Copy + Debug> Room<M> {
    /// Member `me` of a room of `members` (every member lists the same;
    /// `me` among them), started at `now`; `run` is random per start (it
    /// makes message ids unique across runs).
    pub fn new(me: M, members: &[M], cfg: Config, now: Time, run: u64) -> Room<M> {
        let mut members: BTreeSet<M> = members.iter().copied().collect();
        members.insert(me);
        let mut room = Room {
            me,
            join_by: now + cfg.join_wait,
            cfg,
            members,
            run,
            next_n: 1,
            epoch: 0,
            voted: 0,
            host: None,
            heard: now,
            role: Role::Follower,
            log: VecDeque::new(),
            base: 0,
            base_epoch: 0,
            commit: 0,
            applied: 0,
            active: BTreeSet::new(),
            candidates: Vec::new(),
            failover: None,
            pending: BTreeMap::new(),
            ids: BTreeSet::new(),
            reports: Reports::new(),
            seen: BTreeMap::new(),
            hello_sent: BTreeMap::new(),
            cursor: None,
            synced: false,
            hold: false,
            deferred: BTreeMap::new(),
            out: VecDeque::new(),
        };
        room.hello_all(now);
        room
    }

    /// Who hosts, as far as we know.
    pub fn host(&self) -> Option<M> {
        self.host
    }

    /// Our epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Members taking part (counted for majorities).
    pub fn active(&self) -> impl Iterator<Item = &M> {
        self.active.iter()
    }

    /// The failover order last heard (or computed, when hosting).
    pub fn candidates(&self) -> &[M] {
        &self.candidates
    }

    /// Messages of ours not delivered yet.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// While `hold` is set, this member does not start a new room (the
    /// driver knows a member is online but its path is not up yet: the
    /// room may be going there, or that member may start it).
    pub fn hold_start(&mut self, hold: bool) {
        self.hold = hold;
    }

    /// `m` is a member too from now on (one listed by name becomes known
    /// by its key when the driver meets it). Members are never removed.
    pub fn add_member(&mut self, m: M) {
        self.members.insert(m);
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output<M>> {
        self.out.pop_front()
    }

    /// When to [`Input::Tick`] next at the latest: the failover's
    /// deadlines exactly (a missed host, a candidate's turn, the next
    /// heartbeat), everything else within a quarter of a second.
    pub fn poll_timeout(&self, now: Time) -> Time {
        let step = self
            .cfg
            .vote_timeout
            .min(self.cfg.retry)
            .min(self.cfg.heartbeat)
            / 2;
        let mut at = now + step.max(Duration::from_millis(10));
        match &self.role {
            Role::Host {
                last_beat: Some(t), ..
            } => at = at.min(*t + self.cfg.heartbeat),
            Role::Host { .. } => at = now,
            Role::Candidate { started, asked, .. } => {
                at = at
                    .min(*started + self.cfg.vote_timeout)
                    .min(*asked + self.cfg.vote_timeout / 4);
            }
            Role::Follower => {
                if self.host.is_some() {
                    at = at.min(self.heard + self.cfg.host_timeout);
                }
                if let Some(f) = &self.failover {
                    at = at.min(f.slot + self.cfg.vote_timeout);
                }
            }
        }
        at.max(now + Duration::from_millis(1))
    }

    /// Feeds one input at `now`.
    pub fn handle(&mut self, now: Time, input: Input<M>) {
        match input {
            Input::Tick => self.tick(now),
            Input::Recv { from, msg } => {
                if from != self.me && self.members.contains(&from) {
                    self.recv(now, from, msg);
                }
            }
            Input::Post(text) => self.post(now, text),
            Input::Delays(d) => {
                let row: Vec<(M, u32)> = d
                    .into_iter()
                    .filter(|(m, _)| self.members.contains(m) && *m != self.me)
                    .map(|(m, d)| (m, u32::try_from(d.as_micros()).unwrap_or(u32::MAX)))
                    .collect();
                self.reports.insert(self.me, row.iter().copied().collect());
                if let Some(h) = self.host
                    && h != self.me
                {
                    self.send(h, Msg::Delays(row));
                }
            }
            Input::History(n) => self.history(n),
        }
    }

    /// The id of our `n`-th message of this run.
    fn my_id(&self, n: u64) -> MsgId<M> {
        MsgId {
            sender: self.me,
            run: self.run,
            n,
        }
    }

    // ----- the log -----

    fn last(&self) -> (Epoch, Index) {
        let i = self.base + self.log.len() as Index;
        (self.epoch_at(i).unwrap_or(0), i)
    }

    fn epoch_at(&self, i: Index) -> Option<Epoch> {
        if i == self.base {
            return Some(self.base_epoch);
        }
        let off = i.checked_sub(self.base + 1)?;
        self.log.get(usize::try_from(off).ok()?).map(|e| e.epoch)
    }

    fn entries_from(&self, from: Index, max: usize) -> Vec<Entry<M>> {
        let off = usize::try_from(from.saturating_sub(self.base + 1)).unwrap_or(usize::MAX);
        self.log.iter().skip(off).take(max).cloned().collect()
    }

    fn truncate_after(&mut self, i: Index) {
        let keep = usize::try_from(i.saturating_sub(self.base)).unwrap_or(usize::MAX);
        while self.log.len() > keep {
            if let Some(Entry {
                body: Body::Text { id, .. },
                ..
            }) = self.log.pop_back()
            {
                self.ids.remove(&id);
            }
        }
    }

    fn push(&mut self, e: Entry<M>) {
        match &e.body {
            Body::Text { id, .. } => {
                self.ids.insert(*id);
            }
            Body::Join(m) => {
                // The host let it in (it takes Hellos from members only):
                // a member we have not met yet (listed by a name we could
                // not resolve) is one from here on, or majorities would
                // differ between members.
                if self.active.insert(*m) {
                    self.members.insert(*m);
                    self.emit(Event::Joined(*m));
                }
            }
        }
        self.log.push_back(e);
    }

    fn majority(&self) -> usize {
        self.active.len() / 2 + 1
    }

    /// Delivers what is committed, then forgets history beyond the cap.
    fn apply(&mut self) {
        let commit = self.commit.min(self.last().1);
        while self.applied < commit {
            self.applied += 1;
            let i = self.applied;
            let off = usize::try_from(i - self.base - 1).unwrap_or(usize::MAX);
            let Some(e) = self.log.get(off) else { break };
            if let Body::Text { id, text } = &e.body {
                let (id, text) = (*id, text.clone());
                if id.sender == self.me && id.run == self.run {
                    self.pending.remove(&id.n);
                }
                self.out.push_back(Output::Deliver {
                    index: i,
                    sender: id.sender,
                    text,
                });
            }
        }
        while self.log.len() > self.cfg.history && self.base < self.applied {
            if let Some(e) = self.log.pop_front() {
                self.base += 1;
                self.base_epoch = e.epoch;
                if let Body::Text { id, .. } = e.body {
                    self.ids.remove(&id);
                }
            }
        }
    }

    // ----- output helpers -----

    fn send(&mut self, to: M, msg: Msg<M>) {
        self.out.push_back(Output::Send { to, msg });
    }

    fn emit(&mut self, e: Event<M>) {
        self.out.push_back(Output::Event(e));
    }

    fn others(&self, set: &BTreeSet<M>) -> Vec<M> {
        set.iter().copied().filter(|m| *m != self.me).collect()
    }

    fn hello_all(&mut self, now: Time) {
        let msg = Msg::Hello {
            epoch: self.epoch,
            last: self.last(),
        };
        for m in self.others(&self.members) {
            self.hello_sent.insert(m, now);
            self.send(m, msg.clone());
        }
    }

    fn set_host(&mut self, h: Option<M>) {
        if self.host != h {
            self.host = h;
            if let Some(h) = h {
                self.emit(Event::Host(h));
            }
        }
    }

    // ----- time -----

    fn tick(&mut self, now: Time) {
        match &self.role {
            Role::Host { .. } => self.host_tick(now),
            Role::Candidate {
                epoch,
                started,
                asked,
                pre,
                ..
            } => {
                let (epoch, pre) = (*epoch, *pre);
                let again = now.saturating_since(*asked) >= self.cfg.vote_timeout / 4;
                if now.saturating_since(*started) >= self.cfg.vote_timeout {
                    for m in self.others(&self.active) {
                        self.send(m, Msg::Ineligible { epoch });
                    }
                    self.emit(Event::Ineligible(epoch));
                    self.role = Role::Follower;
                    if let Some(f) = &mut self.failover {
                        f.k += 1;
                        f.slot = now;
                        f.tried = false;
                    }
                } else if again {
                    if let Role::Candidate { asked, .. } = &mut self.role {
                        *asked = now;
                    }
                    self.ask_votes(pre, epoch);
                }
            }
            Role::Follower => {}
        }
        if matches!(self.role, Role::Follower) {
            self.follower_tick(now);
        }
        self.retry_posts(now);
    }

    fn follower_tick(&mut self, now: Time) {
        if let Some(h) = self.host
            && now.saturating_since(self.heard) >= self.cfg.host_timeout
        {
            // The host went quiet: candidates take turns, it excluded.
            let mut order: Vec<M> = self.candidates.clone();
            if order.is_empty() {
                order = self.active.iter().copied().collect();
            }
            order.retain(|m| *m != h && self.active.contains(m));
            self.set_host(None);
            self.failover = Some(Failover {
                base: self.epoch,
                order,
                k: 0,
                slot: now,
                tried: false,
            });
            // Those who asked while we still heard the host: answer now
            // (within their turn only; an older request is stale).
            let asked = std::mem::take(&mut self.deferred);
            for (from, (at, pre, epoch, commit)) in asked {
                if now.saturating_since(at) < self.cfg.vote_timeout {
                    self.on_request_vote(now, from, pre, epoch, commit);
                }
            }
        }
        if self.host.is_none() && self.failover.is_none() {
            self.join_tick(now);
            return;
        }
        let me = self.me;
        let Some(f) = &mut self.failover else { return };
        while f.k < f.order.len() && now.saturating_since(f.slot) >= self.cfg.vote_timeout {
            f.k += 1;
            f.slot = f.slot + self.cfg.vote_timeout;
            f.tried = false;
        }
        if f.k >= f.order.len() {
            // Every candidate had its turn: wait, say so, and go round
            // again (epochs above any tried).
            let reachable = 1 + self
                .seen
                .iter()
                .filter(|(m, (t, _))| {
                    self.active.contains(m) && now.saturating_since(*t) < self.cfg.host_timeout * 2
                })
                .count();
            let active = self.active.len();
            f.base = f.base.max(self.epoch) + f.order.len() as Epoch + 1;
            f.k = 0;
            f.slot = now;
            f.tried = false;
            self.emit(Event::NoMajority { reachable, active });
            return;
        }
        if f.order[f.k] == me && !f.tried {
            f.tried = true;
            let epoch = f.base + 1 + f.k as Epoch;
            self.stand(now, epoch);
        }
    }

    /// A member without a host and without a failover: a new member
    /// listening for a host, or the first of a new room.
    fn join_tick(&mut self, now: Time) {
        let due: Vec<M> = self
            .others(&self.members)
            .into_iter()
            .filter(|m| {
                self.hello_sent
                    .get(m)
                    .is_none_or(|t| now.saturating_since(*t) >= self.cfg.join_wait / 2)
            })
            .collect();
        if !due.is_empty() {
            let msg = Msg::Hello {
                epoch: self.epoch,
                last: self.last(),
            };
            for m in due {
                self.hello_sent.insert(m, now);
                self.send(m, msg.clone());
            }
        }
        if now < self.join_by || self.hold || self.last().1 > 0 {
            return;
        }
        let recent = |t: &Time| now.saturating_since(*t) < self.cfg.join_wait * 2;
        // Someone heard lately has a log (a room already going): not a new
        // room; its members will host.
        if self.seen.values().any(|(t, last)| recent(t) && last.1 > 0) {
            return;
        }
        let lowest = self
            .seen
            .iter()
            .filter(|(_, (t, _))| recent(t))
            .map(|(m, _)| *m)
            .chain(std::iter::once(self.me))
            .min();
        if lowest == Some(self.me) {
            self.epoch = self.epoch.max(self.voted) + 1;
            self.voted = self.epoch;
            self.become_host(now);
        }
    }

    fn host_tick(&mut self, now: Time) {
        let majority = self.majority();
        let timeout = self.cfg.host_timeout;
        let Role::Host {
            heard,
            since,
            last_beat,
            ..
        } = &mut self.role
        else {
            return;
        };
        let reach = 1 + heard
            .values()
            .filter(|t| now.saturating_since(**t) < timeout * 2)
            .count();
        if reach < majority && now.saturating_since(*since) >= timeout * 2 {
            // Cut off from a majority: not a host any more.
            let active = self.active.len();
            self.role = Role::Follower;
            self.set_host(None);
            self.failover = Some(Failover {
                base: self.epoch,
                order: self.candidates.clone(),
                k: 0,
                slot: now,
                tried: false,
            });
            self.emit(Event::NoMajority {
                reachable: reach,
                active,
            });
            return;
        }
        if last_beat.is_none_or(|t| now.saturating_since(t) >= self.cfg.heartbeat) {
            *last_beat = Some(now);
            self.candidates = self.rank();
            self.replicate(None);
        }
    }

    fn rank(&self) -> Vec<M> {
        let members: Vec<M> = self.active.iter().copied().collect();
        candidates(&members, &self.reports)
    }

    /// Sends each member (or just `only`) what it lacks (a heartbeat when
    /// nothing).
    fn replicate(&mut self, only: Option<M>) {
        let Role::Host { next, .. } = &self.role else {
            return;
        };
        let targets: Vec<(M, Index)> = self
            .others(&self.active)
            .into_iter()
            .filter(|m| only.is_none_or(|o| o == *m))
            .map(|m| (m, next.get(&m).copied().unwrap_or(self.base + 1)))
            .collect();
        for (m, n) in targets {
            let (prev, fresh) = if n <= self.base {
                ((self.base_epoch, self.base), true)
            } else {
                let p = n - 1;
                ((self.epoch_at(p).unwrap_or(0), p), false)
            };
            let msg = Msg::Append(Append {
                epoch: self.epoch,
                prev,
                fresh,
                entries: self.entries_from(prev.1 + 1, MAX_APPEND),
                commit: self.commit,
                candidates: self.candidates.clone(),
            });
            self.send(m, msg);
        }
    }

    fn become_host(&mut self, now: Time) {
        self.synced = true;
        let last = self.last().1;
        let next = self.active.iter().map(|m| (*m, last + 1)).collect();
        let matched = [(self.me, last)].into_iter().collect();
        self.role = Role::Host {
            next,
            matched,
            heard: BTreeMap::new(),
            since: now,
            last_beat: None,
        };
        self.failover = None;
        self.set_host(Some(self.me));
        if !self.active.contains(&self.me) {
            let join = Entry {
                epoch: self.epoch,
                body: Body::Join(self.me),
            };
            self.push(join);
        }
        // Our own messages not delivered yet go into our log now.
        let mine: Vec<(u64, String)> = self
            .pending
            .iter()
            .map(|(n, p)| (*n, p.text.clone()))
            .collect();
        for (n, text) in mine {
            self.append_text(self.my_id(n), text);
        }
        self.advance_commit();
        self.host_tick(now);
    }

    fn append_text(&mut self, id: MsgId<M>, text: String) {
        if self.ids.contains(&id) {
            return;
        }
        let uncommitted = self.last().1.saturating_sub(self.commit);
        if uncommitted >= MAX_UNCOMMITTED as Index {
            return;
        }
        let e = Entry {
            epoch: self.epoch,
            body: Body::Text { id, text },
        };
        self.push(e);
        if let Role::Host { matched, .. } = &mut self.role {
            matched.insert(self.me, self.base + self.log.len() as Index);
        }
    }

    /// The highest index a majority of the active members holds.
    fn advance_commit(&mut self) {
        let majority = self.majority();
        let Role::Host { matched, .. } = &self.role else {
            return;
        };
        let mut held: Vec<Index> = self
            .active
            .iter()
            .map(|m| matched.get(m).copied().unwrap_or(0))
            .collect();
        held.sort_unstable_by(|a, b| b.cmp(a));
        if let Some(&c) = held.get(majority - 1)
            && c > self.commit
        {
            self.commit = c;
            self.apply();
        }
    }

    /// Our turn: first a pre-vote (nothing changes anywhere), then, with
    /// a majority willing, the election itself at `epoch`.
    fn stand(&mut self, now: Time, epoch: Epoch) {
        self.role = Role::Candidate {
            epoch,
            started: now,
            asked: now,
            pre: true,
            commit: self.commit,
            votes: BTreeMap::new(),
        };
        self.ask_votes(true, epoch);
        self.check_votes(now);
    }

    /// Asks every active member that has not granted this round yet.
    fn ask_votes(&mut self, pre: bool, epoch: Epoch) {
        let msg = Msg::RequestVote {
            pre,
            epoch,
            last: self.last(),
            commit: self.commit,
        };
        let granted: BTreeSet<M> = match &self.role {
            Role::Candidate { votes, .. } => votes.keys().copied().collect(),
            _ => BTreeSet::new(),
        };
        for m in self.others(&self.active) {
            if !granted.contains(&m) {
                self.send(m, msg.clone());
            }
        }
    }

    fn check_votes(&mut self, now: Time) {
        let majority = self.majority();
        let (count, pre, epoch) = match &self.role {
            Role::Candidate {
                votes, pre, epoch, ..
            } => (votes.len(), *pre, *epoch),
            _ => return,
        };
        if count + 1 < majority {
            return;
        }
        if pre {
            // A majority would: now the election, for real.
            if let Role::Candidate {
                pre, votes, asked, ..
            } = &mut self.role
            {
                *pre = false;
                *asked = now;
                votes.clear();
            }
            self.epoch = epoch;
            self.voted = epoch;
            self.emit(Event::Candidate(epoch));
            self.ask_votes(false, epoch);
            if majority > 1 {
                return;
            }
        }
        let Role::Candidate { votes, commit, .. } = &self.role else {
            return;
        };
        // The longest log among the majority (ours included) holds every
        // committed entry: take it.
        let mine = self.last();
        let best = votes
            .iter()
            .filter(|(_, (last, _))| *last > mine)
            .max_by_key(|(_, (last, _))| *last)
            .map(|(_, (_, tail))| tail.clone());
        let commit = *commit;
        if let Some(tail) = best {
            self.truncate_after(commit);
            let from = commit + 1;
            for (j, e) in tail.into_iter().enumerate() {
                if from + j as Index > self.base {
                    self.push(e);
                }
            }
        }
        self.become_host(now);
    }

    fn retry_posts(&mut self, now: Time) {
        let Some(h) = self.host else { return };
        if h == self.me {
            return;
        }
        let due: Vec<(u64, String)> = self
            .pending
            .iter_mut()
            .filter(|(_, p)| {
                p.sent
                    .is_none_or(|t| now.saturating_since(t) >= self.cfg.retry)
            })
            .map(|(n, p)| {
                p.sent = Some(now);
                (*n, p.text.clone())
            })
            .collect();
        for (n, text) in due {
            let id = self.my_id(n);
            self.send(h, Msg::Post { id, text });
        }
    }

    // ----- input -----

    fn post(&mut self, now: Time, text: String) {
        if text.chars().count() > MAX_CHARS {
            self.emit(Event::Refused("over the 2048-character limit"));
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            self.emit(Event::Refused("too many messages not delivered yet"));
            return;
        }
        let n = self.next_n;
        self.next_n += 1;
        self.pending.insert(
            n,
            Pending {
                text: text.clone(),
                sent: None,
            },
        );
        if matches!(self.role, Role::Host { .. }) {
            self.append_text(self.my_id(n), text);
            self.advance_commit();
            self.replicate(None);
        } else {
            self.retry_posts(now);
        }
    }

    /// The `n` messages before the last shown by `/history` (at first:
    /// the latest `n` delivered), oldest first.
    fn history(&mut self, n: u32) {
        let mut i = self.cursor.unwrap_or(self.applied + 1);
        let mut entries = Vec::new();
        while entries.len() < n as usize && i > self.base + 1 {
            i -= 1;
            let off = usize::try_from(i - self.base - 1).unwrap_or(usize::MAX);
            if let Some(Entry {
                body: Body::Text { id, text },
                ..
            }) = self.log.get(off)
            {
                entries.push((i, id.sender, text.clone()));
            }
        }
        entries.reverse();
        self.cursor = Some(i);
        let more = (self.base + 1..i).any(|k| {
            let off = usize::try_from(k - self.base - 1).unwrap_or(usize::MAX);
            matches!(
                self.log.get(off),
                Some(Entry {
                    body: Body::Text { .. },
                    ..
                })
            )
        });
        self.emit(Event::History { entries, more });
    }

    fn recv(&mut self, now: Time, from: M, msg: Msg<M>) {
        match msg {
            Msg::Append(a) => self.on_append(now, from, a),
            Msg::Appended { epoch, ok, matched } => self.on_appended(now, from, epoch, ok, matched),
            Msg::Post { id, text } => {
                if id.sender == from
                    && text.chars().count() <= MAX_CHARS
                    && matches!(self.role, Role::Host { .. })
                {
                    self.append_text(id, text);
                    self.advance_commit();
                    self.replicate(None);
                }
            }
            Msg::Delays(row) => {
                if matches!(self.role, Role::Host { .. }) {
                    let row = row
                        .into_iter()
                        .filter(|(m, _)| self.members.contains(m))
                        .collect();
                    self.reports.insert(from, row);
                }
            }
            Msg::Hello { epoch: _, last } => self.on_hello(now, from, last),
            Msg::RequestVote {
                pre,
                epoch,
                last: _,
                commit,
            } => self.on_request_vote(now, from, pre, epoch, commit),
            Msg::Vote {
                pre,
                epoch,
                granted,
                last,
                tail,
            } => {
                self.seen.insert(from, (now, last));
                if epoch > self.epoch && !pre && !granted {
                    self.step_down(epoch);
                    return;
                }
                if let Role::Candidate {
                    epoch: e,
                    votes,
                    pre: asking_pre,
                    ..
                } = &mut self.role
                    && *e == epoch
                    && *asking_pre == pre
                    && granted
                {
                    votes.insert(from, (last, tail.into_iter().take(MAX_TAIL).collect()));
                    self.check_votes(now);
                }
            }
            Msg::Ineligible { epoch: _ } => {
                if let Some(f) = &mut self.failover
                    && f.order.get(f.k) == Some(&from)
                {
                    f.k += 1;
                    f.slot = now;
                    f.tried = false;
                }
            }
        }
    }

    fn step_down(&mut self, epoch: Epoch) {
        self.epoch = epoch;
        if !matches!(self.role, Role::Follower) {
            self.role = Role::Follower;
            if self.host == Some(self.me) {
                self.set_host(None);
            }
        }
    }

    fn on_append(&mut self, now: Time, from: M, a: Append<M>) {
        let Append {
            epoch,
            prev,
            fresh,
            entries,
            commit,
            candidates,
        } = a;
        if epoch < self.epoch {
            let msg = Msg::Appended {
                epoch: self.epoch,
                ok: false,
                matched: self.commit,
            };
            self.send(from, msg);
            return;
        }
        if epoch == self.epoch && matches!(self.role, Role::Host { .. }) && from > self.me {
            // Two hosts of one epoch (a room started on both sides before
            // their paths were up): the lower id keeps it; ours reaches
            // the other and makes it step down.
            return;
        }
        if epoch == self.epoch
            && self.host.is_some_and(|h| h < from)
            && now.saturating_since(self.heard) < self.cfg.host_timeout
        {
            // The same two hosts seen from a member: it keeps to the lower
            // id while that one is heard (it does not flip between logs).
            return;
        }
        self.epoch = epoch;
        self.voted = self.voted.max(epoch);
        if !matches!(self.role, Role::Follower) {
            self.role = Role::Follower;
        }
        self.failover = None;
        self.heard = now;
        self.set_host(Some(from));
        self.candidates = candidates
            .into_iter()
            .filter(|m| self.members.contains(m))
            .take(self.members.len())
            .collect();
        let entries: Vec<Entry<M>> = entries.into_iter().take(MAX_APPEND).collect();
        if fresh {
            if prev.1 > self.last().1 || self.epoch_at(prev.1) != Some(prev.0) {
                // The host no longer keeps what we lack: start at its
                // history's beginning.
                if prev.1 > self.applied {
                    self.emit(Event::Missed(prev.1 - self.applied));
                    self.applied = prev.1;
                }
                self.truncate_after(self.base);
                self.log.clear();
                self.base = prev.1;
                self.base_epoch = prev.0;
                self.commit = self.commit.max(prev.1);
            }
        } else if prev.1 > self.last().1
            || (prev.1 >= self.base && self.epoch_at(prev.1) != Some(prev.0))
        {
            let msg = Msg::Appended {
                epoch,
                ok: false,
                matched: self.commit.min(self.last().1),
            };
            self.send(from, msg);
            return;
        }
        let mut i = prev.1;
        for e in entries {
            i += 1;
            if i <= self.base {
                continue;
            }
            match self.epoch_at(i) {
                Some(have) if have == e.epoch && i <= self.last().1 => continue,
                Some(_) if i <= self.last().1 => {
                    if i <= self.commit {
                        // Never rewrite what was delivered.
                        continue;
                    }
                    self.truncate_after(i - 1);
                }
                _ => {}
            }
            self.push(e);
        }
        let matched = i;
        self.synced = true;
        let c = commit.min(matched);
        if c > self.commit {
            self.commit = c;
        }
        self.apply();
        self.send(
            from,
            Msg::Appended {
                epoch,
                ok: true,
                matched,
            },
        );
        self.retry_posts(now);
    }

    fn on_appended(&mut self, now: Time, from: M, epoch: Epoch, ok: bool, matched: Index) {
        if epoch > self.epoch {
            self.step_down(epoch);
            return;
        }
        let last = self.last().1;
        let base = self.base;
        let Role::Host {
            next,
            matched: m,
            heard,
            ..
        } = &mut self.role
        else {
            return;
        };
        if epoch != self.epoch {
            return;
        }
        heard.insert(from, now);
        let matched = matched.min(last);
        if ok {
            let cur = m.entry(from).or_insert(0);
            *cur = (*cur).max(matched);
            next.insert(from, matched + 1);
        } else {
            let n = next.entry(from).or_insert(last + 1);
            *n = (*n).min(matched + 1).max(base.min(matched) + 1);
        }
        let behind = next.get(&from).is_some_and(|n| *n <= last);
        self.advance_commit();
        if behind || !ok {
            self.replicate(Some(from));
        }
    }

    fn on_hello(&mut self, now: Time, from: M, last: (Epoch, Index)) {
        self.seen.insert(from, (now, last));
        if matches!(self.role, Role::Host { .. }) {
            if !self.active.contains(&from) {
                let join = Entry {
                    epoch: self.epoch,
                    body: Body::Join(from),
                };
                self.push(join);
                if let Role::Host { matched, .. } = &mut self.role {
                    matched.insert(self.me, self.base + self.log.len() as Index);
                }
                self.advance_commit();
            }
            if let Role::Host { next, .. } = &mut self.role {
                next.insert(from, last.1.min(self.base + self.log.len() as Index) + 1);
            }
            self.replicate(Some(from));
            return;
        }
        // Not hosting: let a member that looks for a host know we are here
        // (once per half join wait).
        if self
            .hello_sent
            .get(&from)
            .is_none_or(|t| now.saturating_since(*t) >= self.cfg.join_wait / 2)
        {
            self.hello_sent.insert(from, now);
            let msg = Msg::Hello {
                epoch: self.epoch,
                last: self.last(),
            };
            self.send(from, msg);
        }
    }

    fn on_request_vote(&mut self, now: Time, from: M, pre: bool, epoch: Epoch, commit: Index) {
        let hears_host = match &self.role {
            Role::Host { .. } => true,
            _ => self
                .host
                .is_some_and(|_| now.saturating_since(self.heard) < self.cfg.host_timeout),
        };
        let eligible = epoch > self.voted && self.synced && self.active.contains(&from);
        let grant = eligible && !hears_host;
        if eligible && hears_host && !matches!(self.role, Role::Host { .. }) {
            self.deferred.insert(from, (now, pre, epoch, commit));
        } else {
            self.deferred.remove(&from);
        }
        let tail = if grant && !pre {
            self.voted = epoch;
            self.epoch = self.epoch.max(epoch);
            if matches!(self.role, Role::Candidate { .. }) {
                self.role = Role::Follower;
            }
            let from_i = commit.max(self.base) + 1;
            self.entries_from(from_i, MAX_TAIL)
        } else {
            Vec::new()
        };
        let msg = Msg::Vote {
            pre,
            epoch,
            granted: grant,
            last: self.last(),
            tail,
        };
        self.send(from, msg);
    }
}
