//! `chatd chat`: find a friend through the servers, connect, chat.
//!
//! Steps, each reported on stderr in words (the request statuses of seed
//! 003): connect to a server (any server the client knows: those given with
//! `--server` and every live server a server listed; then the least loaded
//! live one), measure the NAT's mapping with a second server, register a
//! signed record with the public address the server observed (online only
//! while this connection to the home server lives), ask to meet the friend
//! (wait if it is not online yet), connect directly on the same UDP socket
//! ([`crate::client::punch`]: dials, probes, the birthday method) or, when no direct
//! path comes up within `--direct-timeout`, through the home server of the
//! lower id ([`crate::client::relay`]; the chat stays end-to-end encrypted), then
//! chat: stdin lines are messages, received messages go to stdout, one per
//! line, with the guarantees of [`crate::client::chat::Session`]. A broken path is
//! re-established the same way, without losing or duplicating a message.
//!
//! **Servers die.** When the home server's connection ends (while waiting,
//! chatting or re-establishing), the client moves to another server it
//! knows and registers there, so the friend can still find it; the chat
//! path, if direct, carries on meanwhile.
//!
//! **A friend is a key.** Once a chat has connected, the friend is its id
//! for the rest of the run; across runs a name is pinned to the id first
//! seen ([`crate::client::friends`], trust on first use).

#![allow(clippy::print_stdout, clippy::print_stderr)] // the chat command talks to its user

use crate::client::chat::{Frame, Session};
use crate::client::friends::{KnownFriends, Pin};
use crate::client::unix_millis;
use crate::client::{Client, Meeting, Refused, Session as ClientSession};
use crate::net::framing::write_msg;
use crate::net::identity::{Id, Keypair, ServerAddr};
use anyhow::Context;
use overlay::PeerId;
use rendezvous::{FriendRef, Notice};
use rendezvous::{LatencyVector, ServerRecord};
use rendezvous::{NatMapping, PeerRecord};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What `chatd chat` was asked to do.
pub struct Options {
    /// Our name (a label others can look up).
    pub name: String,
    /// Whom to talk to (a name is resolved through `known`).
    pub friend: FriendRef,
    /// Bootstrap servers, tried in order.
    pub servers: Vec<ServerAddr>,
    /// Our key.
    pub keypair: Keypair,
    /// Local UDP address to bind.
    pub bind: SocketAddr,
    /// How long to wait for the friend to come online.
    pub wait: Duration,
    /// How long to try a direct path before relaying.
    pub direct_timeout: Duration,
    /// Names pinned to keys (trust on first use).
    pub known: KnownFriends,
    /// Talk to a friend whose name now maps to another key (and re-pin it).
    pub accept_new_key: bool,
    /// Letters left for us while we were away: collected at every home.
    pub mail: Arc<crate::client::mail::Mailroom>,
}

use crate::client::status;

/// The local address packets to `server` leave from (our LAN address).
fn lan_addr(server: SocketAddr, port: u16) -> Option<SocketAddr> {
    let probe = std::net::UdpSocket::bind(crate::client::any_addr_for(server)).ok()?;
    probe.connect(server).ok()?;
    Some(SocketAddr::new(probe.local_addr().ok()?.ip(), port))
}

/// The longest start delay a server hands out (guards against a skewed
/// server clock).
pub(super) const MAX_START_DELAY: Duration = Duration::from_secs(1);

/// Whether `r` is the friend asked for.
pub(super) fn friend_matches(wanted: &FriendRef, r: &PeerRecord) -> bool {
    match wanted {
        FriendRef::Id(id) => r.body.peer == *id,
        FriendRef::Name(n) => r.body.name == *n,
    }
}

/// How many times a broken path is re-established before giving up.
const MAX_REESTABLISH: u32 = 5;
/// How long a registered record claims to be valid. Presence is the
/// connection to the home server (the record goes offline when it ends),
/// so this only bounds a record whose home server vanished without a word;
/// the client registers again well before (every [`REFRESH_EVERY`]).
const RECORD_TTL: Duration = Duration::from_secs(600);
/// How often a chatting client refreshes its record.
const REFRESH_EVERY: Duration = Duration::from_secs(300);
/// A server that failed is tried last, and not moved to, for this long.
const SUSPECT_FOR: Duration = Duration::from_secs(60);
/// Most servers tried, one after the other, to find a home.
const MAX_TRIES: usize = 8;
/// Most servers a client remembers.
const MAX_KNOWN_SERVERS: usize = 64;

/// Runs a chat until stdin ends (and everything sent is acknowledged) or
/// the friend leaves (then until stdin ends); re-establishes a broken path
/// (through the servers again: new addresses, punching or relay) without
/// losing or duplicating a message, and moves to another server when its
/// home server dies. Whatever the outcome, messages that were not
/// delivered are listed before it returns, and every server connection is
/// closed (so the record goes offline at once).
pub async fn run(mut opts: Options) -> anyhow::Result<()> {
    let client = Client::new_accepting(opts.keypair.clone(), opts.bind)?;
    let mut chat = Session::new(rand::random(), Duration::from_millis(300));
    let mut input = Input::stdin(client.endpoint().clone());
    let res = chat_until_done(&client, &mut opts, &mut chat, &mut input).await;
    let lost = chat.undelivered();
    if !lost.is_empty() {
        status(&format!(
            "{} message(s) were not delivered to the friend:",
            lost.len()
        ));
        for text in lost {
            status(&format!("  not delivered: {text}"));
        }
    }
    client.close_all().await;
    res
}

async fn chat_until_done(
    client: &Client,
    opts: &mut Options,
    chat: &mut Session,
    input: &mut Input,
) -> anyhow::Result<()> {
    let homes = Homes::new(&opts.servers, opts.bind);
    let mut home = establish_first(client, opts, &homes).await?;
    let mut wanted = resolve_friend(opts)?;
    let mut friend_seq = 0;
    let mut breaks = 0;
    loop {
        let (friend, start_in) =
            match find_friend(client, opts, &homes, &mut home, &wanted, friend_seq).await {
                Ok(found) => found,
                // The path broke after our input ended and everything we
                // sent was acknowledged (the friend's last word, or its
                // close, may be what got lost): nothing of ours is lost if
                // it does not come back.
                Err(e) if breaks > 0 && input.closed_at.is_some() && chat.pending() == 0 => {
                    status(&format!(
                        "{e:#}; everything you sent was delivered, so the chat is over"
                    ));
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
        friend_seq = friend.body.seq;
        // The common start instant the server chose: both sides begin
        // punching together, as the later of the two hears of the meeting
        // (the relay needs no such wait). Capped here too, whatever a
        // server says.
        let start = start_in.min(MAX_START_DELAY);
        // Lines typed before there is a path go ahead of it, sealed to
        // the friend, through the relay (early frames); the friend's come
        // back the same way, shown as they arrive, before the path is up.
        if input.open {
            while let Ok(line) = input.lines.try_recv() {
                queue(chat, &line);
            }
        }
        let (early, mut early_in) = early_frames(client, &homes, &friend, chat);
        let connected = {
            let connecting = connect(
                client,
                &homes,
                &home,
                &friend,
                start,
                opts.direct_timeout,
                early,
            );
            tokio::pin!(connecting);
            loop {
                tokio::select! {
                    r = &mut connecting => break r,
                    Some(f) = early_in.rx.recv() => early_in.take(client, chat, &f),
                }
            }
        };
        let end = match connected {
            // Neither path came up (the friend took another one that then
            // failed, or it is gone): through the servers again, as after a
            // break.
            Err(e) => End::Broke(format!("no path to the friend: {e:#}")),
            Ok((path, upgrade)) => {
                status(&format!(
                    "connected {} to {}, RTT {} ms",
                    path.kind,
                    friend.body.name,
                    path.conn.rtt().as_millis()
                ));
                // The friend is this key from now on (a name could be taken over).
                if !matches!(wanted, FriendRef::Id(_)) {
                    pin_friend(opts, &friend);
                }
                wanted = FriendRef::Id(friend.body.peer);
                if breaks > 0 {
                    chat.path_changed();
                    // Input that ended before the break gets a full wait on the new
                    // path for its acknowledgements.
                    if input.closed_at.is_some() {
                        input.closed_at = Some(Instant::now());
                    }
                }
                converse(
                    path,
                    upgrade,
                    &friend,
                    &mut early_in,
                    chat,
                    input,
                    client,
                    opts,
                    &homes,
                    &mut home,
                )
                .await
            }
        };
        match end {
            End::Done => return Ok(()),
            End::FriendLeft => {
                status(&format!("{} left the chat", friend.body.name));
                if input.open {
                    status("your input stays open: lines are not sent; end it (Ctrl-D) to quit");
                    input.drain_unsent(&friend.body.name).await;
                }
                return Ok(());
            }
            End::Broke(why) => {
                breaks += 1;
                if breaks > MAX_REESTABLISH {
                    anyhow::bail!("the path to the friend broke {breaks} times ({why}); giving up");
                }
                status(&format!(
                    "path to the friend broke ({why}); re-establishing ({breaks}/{MAX_REESTABLISH})"
                ));
                // A fresh record (new addresses, newer seq): the friend waits
                // for one, as we wait for theirs.
                // (If the home server is gone, `find_friend` moves to
                // another one first, and registers there.)
                if !home.session.is_closed()
                    && let Err(e) = homes.reregister(client, opts, &home).await
                {
                    tracing::debug!(error = %e, "home server did not take the new record");
                    home.session.close();
                }
            }
        }
    }
}

/// The first home: a few tries (a connection lost on the way in, under
/// loss, is no reason to give up), each reported.
pub(super) async fn establish_first(
    client: &Client,
    opts: &Options,
    homes: &Homes,
) -> anyhow::Result<Home> {
    let mut tries = 0;
    loop {
        tries += 1;
        match homes.establish(client, opts).await {
            Ok(home) => return Ok(home),
            Err(e) if tries < ESTABLISH_TRIES && e.downcast_ref::<Refused>().is_none() => {
                status(&format!("{e:#}; trying again in {REHOME_RETRY:?}"));
                tokio::time::sleep(REHOME_RETRY).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// How many times the first connection to a server is tried.
const ESTABLISH_TRIES: u32 = 3;

/// The friend to meet: an id as given; a name pinned to a key meets that
/// key only (unless `--accept-new-key`); an unknown name meets whoever
/// uses it (then it is pinned once the chat connects).
fn resolve_friend(opts: &Options) -> anyhow::Result<FriendRef> {
    Ok(resolve(&opts.known, opts.accept_new_key, &opts.friend))
}

/// `f` as it is met: a name pinned to a key (and not `accept_new_key`)
/// is that key (said on stderr); anything else as given.
pub(super) fn resolve(known: &KnownFriends, accept_new_key: bool, f: &FriendRef) -> FriendRef {
    let FriendRef::Name(name) = f else {
        return f.clone();
    };
    match known.pin(name) {
        Pin::Known(id) if !accept_new_key => {
            status(&format!(
                "{name} is {} (pinned in {})",
                Id(id),
                known.path().display()
            ));
            FriendRef::Id(id)
        }
        _ => f.clone(),
    }
}

/// After a chat with `friend` connected (its key proven): pin its name.
fn pin_friend(opts: &mut Options, friend: &PeerRecord) {
    if let FriendRef::Name(name) = &opts.friend {
        let name = name.clone();
        pin_name(&mut opts.known, &name, friend);
    }
}

/// Pins `name` to `friend`'s key (proven by a path), saying so when that
/// is new or a change.
pub(super) fn pin_name(known: &mut KnownFriends, name: &str, friend: &PeerRecord) {
    let id = friend.body.peer;
    let was = known.pin(name);
    if was == Pin::Known(id) {
        return;
    }
    match known.remember(name, id) {
        Ok(()) if was == Pin::Unknown => status(&format!(
            "{name} is now known as {} (pinned in {})",
            Id(id),
            known.path().display()
        )),
        Ok(()) => status(&format!(
            "{name}'s key changed to {} (accepted with --accept-new-key; pinned in {})",
            Id(id),
            known.path().display()
        )),
        Err(e) => status(&format!("could not pin {name}'s key: {e:#}")),
    }
}

/// The servers this client knows — the `--server`s first, then every live
/// server a server listed (same address family as our socket) — and the
/// sequence numbers of its records.
pub(super) struct Homes {
    known: Mutex<Vec<ServerAddr>>,
    /// Ids listed live by the last `Servers` answer, least loaded first.
    live: Mutex<Vec<PeerId>>,
    v6: bool,
    next_seq: AtomicU64,
    /// The `seq` of our record as last registered (early frames are bound
    /// to it).
    record_seq: AtomicU64,
    /// Servers that failed us lately, and when: tried last, not moved to.
    failed: Mutex<Vec<(PeerId, Instant)>>,
    /// When our record was last registered (refreshes count from here).
    registered_at: Mutex<Option<Instant>>,
    /// When we last moved to another server (moves are paced).
    moved_at: Mutex<Option<Instant>>,
    /// Our last RTTs to servers, when they were measured, and the live
    /// server set they were measured against.
    latency: Mutex<Measured>,
}

/// The connections a measurement opened (one of them may become the
/// home: no second handshake); the others close when this is dropped.
struct Probes(Vec<ClientSession>);

impl Probes {
    /// A connection to `server`: the measurement's, if it made one, else
    /// a new one.
    async fn take_or_connect(
        &mut self,
        client: &Client,
        server: ServerAddr,
    ) -> anyhow::Result<ClientSession> {
        match self.0.iter().position(|s| s.server().id == server.id) {
            Some(i) => Ok(self.0.swap_remove(i)),
            None => client.connect(server).await,
        }
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        for s in &self.0 {
            s.close();
        }
    }
}

/// The ids of `servers`, sorted (the set a measurement was made against).
fn server_ids(servers: &[ServerRecord]) -> Vec<PeerId> {
    let mut ids: Vec<PeerId> = servers.iter().map(|s| s.id).collect();
    ids.sort_unstable();
    ids
}

/// The client's latency vector and what it was measured against.
#[derive(Default)]
struct Measured {
    rtts: LatencyVector,
    at: Option<Instant>,
    servers: Vec<PeerId>,
}

/// Most servers measured in one round (a sample when there are more:
/// [`rendezvous::latency::probe_sample`]).
const PROBE_SAMPLE: usize = 8;
/// How long one RTT probe (a QUIC handshake) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the RTTs are measured again (and sooner when the set of live
/// servers changes).
const REMEASURE_EVERY: Duration = Duration::from_secs(30);
/// How soon a listed server that did not answer a probe is probed again.
const REPROBE_EVERY: Duration = Duration::from_secs(3);
/// How long, after a meeting, the client waits for the servers' choice of
/// relay before it falls back to the home server of the lower id.
const RELAY_CHOICE_WAIT: Duration = Duration::from_secs(2);

/// The current home server: the session our record lives on, and the
/// notices it sends.
#[derive(Clone)]
pub(super) struct Home {
    pub(super) session: ClientSession,
    nat: NatMapping,
    pub(super) inbox: Inbox,
    /// The watch on the server ([`ClientSession::watch`]), stopped when
    /// the last copy of this home goes.
    _watch: Arc<Watch>,
    /// The letter collector on this home ([`crate::client::mail::watch`]).
    _mail: Arc<Watch>,
}

/// A task aborted when dropped.
struct Watch(tokio::task::JoinHandle<()>);

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The notices of one server session, read once: `Notice::Friend` in
/// order (for whoever waits for a friend), the relays ranked per friend
/// (`Notice::Relay`, for whoever connects, and for a relayed chat that may
/// move to a better relay).
#[derive(Clone)]
pub(super) struct Inbox {
    /// `Notice::Friend`s not taken yet (their records and start instants),
    /// oldest first, at most [`MAX_FRIEND_NOTICES`]: whoever waits for a
    /// friend takes the ones about it (a room waits for several).
    friends: Arc<Mutex<FriendNotices>>,
    friend_heard: Arc<tokio::sync::Notify>,
    /// The latest ranking per friend, oldest first.
    relays: Arc<Mutex<Vec<(PeerId, Ranking)>>>,
    relay_heard: Arc<tokio::sync::Notify>,
    /// `Notice::Mail`: letters wait for us (one permit kept).
    pub(super) mail: Arc<tokio::sync::Notify>,
}

/// The relays the servers ranked for us and a friend (best first, each
/// with the worse of our two RTTs in µs), numbered in order of arrival.
#[derive(Clone, Debug, Default)]
struct Ranking {
    relays: Vec<(PeerId, u32)>,
    number: u64,
}

/// Rankings heard so far (numbers them in order of arrival).
static RANKINGS: AtomicU64 = AtomicU64::new(0);

/// Most relay rankings remembered per session (one per friend met lately).
const MAX_RELAY_CHOICES: usize = 16;
/// Most friend notices kept untaken per session (the oldest go first).
const MAX_FRIEND_NOTICES: usize = 32;

#[derive(Default)]
struct FriendNotices {
    notices: std::collections::VecDeque<(PeerRecord, Duration, tokio::time::Instant)>,
    /// The server connection ended: no more will come.
    ended: bool,
}

impl Inbox {
    fn new(session: &ClientSession) -> Inbox {
        let mut raw = session.notices();
        let friends: Arc<Mutex<FriendNotices>> = Arc::default();
        let friend_heard = Arc::new(tokio::sync::Notify::new());
        let relays: Arc<Mutex<Vec<(PeerId, Ranking)>>> = Arc::default();
        let relay_heard = Arc::new(tokio::sync::Notify::new());
        let (board, heard) = (relays.clone(), relay_heard.clone());
        let (met, met_heard) = (friends.clone(), friend_heard.clone());
        let mail = Arc::new(tokio::sync::Notify::new());
        let mail_heard = mail.clone();
        tokio::spawn(async move {
            while let Some(n) = raw.recv().await {
                match n {
                    Notice::Relay { friend, mut relays } => {
                        relays.truncate(rendezvous::latency::MAX_RELAYS);
                        // Numbered across sessions: a ranking that comes to
                        // a new home is newer than one from the old.
                        let number = RANKINGS.fetch_add(1, Ordering::SeqCst) + 1;
                        let mut b = crate::net::lock(&board);
                        b.retain(|(f, _)| *f != friend);
                        if b.len() >= MAX_RELAY_CHOICES {
                            b.remove(0);
                        }
                        b.push((friend, Ranking { relays, number }));
                        drop(b);
                        heard.notify_waiters();
                    }
                    Notice::Friend {
                        record,
                        start_in_ms,
                    } => {
                        let mut f = crate::net::lock(&met);
                        if f.notices.len() >= MAX_FRIEND_NOTICES {
                            f.notices.pop_front();
                        }
                        let start_in = Duration::from_millis(start_in_ms.into());
                        f.notices
                            .push_back((record, start_in, tokio::time::Instant::now()));
                        drop(f);
                        met_heard.notify_waiters();
                    }
                    Notice::Mail => mail_heard.notify_one(),
                }
            }
            crate::net::lock(&met).ended = true;
            met_heard.notify_waiters();
        });
        Inbox {
            friends,
            friend_heard,
            relays,
            relay_heard,
            mail,
        }
    }

    /// The first friend notice whose record `wanted` takes (removed), with
    /// the time left until its start instant; waits until `until` for one.
    /// `Err` when the server connection ended.
    pub(super) async fn friend(
        &self,
        wanted: impl Fn(&PeerRecord) -> bool,
        until: tokio::time::Instant,
    ) -> Result<Option<(PeerRecord, Duration)>, ()> {
        loop {
            let heard = self.friend_heard.notified();
            tokio::pin!(heard);
            heard.as_mut().enable();
            {
                let mut f = crate::net::lock(&self.friends);
                if let Some(i) = f.notices.iter().position(|(r, _, _)| wanted(r))
                    && let Some((r, start_in, at)) = f.notices.remove(i)
                {
                    return Ok(Some((r, start_in.saturating_sub(at.elapsed()))));
                }
                if f.ended {
                    return Err(());
                }
            }
            if tokio::time::timeout_at(until, heard).await.is_err() {
                return Ok(None);
            }
        }
    }

    /// Forgets an earlier ranking for `friend` (before a new meeting).
    pub(super) fn forget_relay(&self, friend: &FriendRef) {
        if let FriendRef::Id(id) = friend {
            crate::net::lock(&self.relays).retain(|(f, _)| f != id);
        }
    }

    /// The latest ranking for `friend`, if any came.
    fn ranking(&self, friend: PeerId) -> Option<Ranking> {
        crate::net::lock(&self.relays)
            .iter()
            .find(|(f, _)| *f == friend)
            .map(|(_, r)| r.clone())
    }

    /// The relays the servers ranked for us and `friend`, waiting up to
    /// `wait` for them (`None` if nothing came; an empty ranking when they
    /// could not choose).
    async fn relay_for(&self, friend: PeerId, wait: Duration) -> Option<Ranking> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let heard = self.relay_heard.notified();
            tokio::pin!(heard);
            heard.as_mut().enable();
            if let Some(r) = self.ranking(friend) {
                return Some(r);
            }
            if tokio::time::timeout_at(deadline, heard).await.is_err() {
                return None;
            }
        }
    }
}

impl Homes {
    pub(super) fn new(bootstrap: &[ServerAddr], bind: SocketAddr) -> Homes {
        let mut known: Vec<ServerAddr> = Vec::new();
        for s in bootstrap {
            if !known.contains(s) {
                known.push(*s);
            }
        }
        Homes {
            known: Mutex::new(known),
            live: Mutex::new(Vec::new()),
            v6: bind.is_ipv6(),
            next_seq: AtomicU64::new(0),
            record_seq: AtomicU64::new(0),
            failed: Mutex::new(Vec::new()),
            registered_at: Mutex::new(None),
            moved_at: Mutex::new(None),
            latency: Mutex::new(Measured::default()),
        }
    }

    /// Whether the record is due for a refresh ([`REFRESH_EVERY`] since
    /// the last registration; a failed refresh stays due).
    fn refresh_due(&self) -> bool {
        crate::net::lock(&self.registered_at).is_some_and(|at| at.elapsed() >= REFRESH_EVERY)
    }

    /// Remembers that `server` failed (for [`SUSPECT_FOR`]).
    fn mark_failed(&self, server: PeerId) {
        let mut f = crate::net::lock(&self.failed);
        f.retain(|(id, at)| *id != server && at.elapsed() < SUSPECT_FOR);
        f.push((server, Instant::now()));
    }

    /// Whether `server` failed within [`SUSPECT_FOR`] (other servers may
    /// still list it as live until they notice).
    fn suspect(&self, server: PeerId) -> bool {
        crate::net::lock(&self.failed)
            .iter()
            .any(|(id, at)| *id == server && at.elapsed() < SUSPECT_FOR)
    }

    /// A record sequence number: the Unix time in ms, always above the
    /// last one's withdrawal (seq + 1).
    fn seq(&self) -> u64 {
        let now = unix_millis();
        let mut cur = self.next_seq.load(Ordering::SeqCst);
        loop {
            let seq = now.max(cur);
            match self
                .next_seq
                .compare_exchange(cur, seq + 2, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return seq,
                Err(c) => cur = c,
            }
        }
    }

    /// Remembers the live servers of a `Servers` answer.
    fn learn(&self, servers: &[ServerRecord]) {
        let mut known = crate::net::lock(&self.known);
        for a in servers.iter().filter_map(crate::client::dial_addr) {
            if a.addr.is_ipv6() == self.v6
                && !known.iter().any(|k| k.id == a.id)
                && known.len() < MAX_KNOWN_SERVERS
            {
                known.push(a);
            }
        }
        *crate::net::lock(&self.live) = servers.iter().map(|s| s.id).collect();
    }

    /// The order to try servers in: those listed live (least loaded
    /// first), then the rest as learned; those that failed lately last.
    fn order(&self) -> Vec<ServerAddr> {
        let known = crate::net::lock(&self.known).clone();
        let live = crate::net::lock(&self.live).clone();
        let rank = |s: &ServerAddr| {
            let listed = live
                .iter()
                .position(|id| *id == s.id.0)
                .unwrap_or(usize::MAX);
            (self.suspect(s.id.0), listed)
        };
        let mut order = known;
        order.sort_by_key(rank);
        // Each try may take the 5 s connect timeout: a bounded few.
        order.truncate(MAX_TRIES);
        order
    }

    /// Connects to a server (trying every known one), measures the RTTs
    /// to the live servers, moves to the home they point to
    /// ([`rendezvous::latency::choose_home`]), measures the NAT and
    /// registers there.
    async fn establish(&self, client: &Client, opts: &Options) -> anyhow::Result<Home> {
        let order = self.order();
        let session = client
            .connect_any(&order)
            .await
            .with_context(|| format!("no server answered (tried {})", order.len()))?;
        let usable = self.usable(&session).await;
        let (rtts, mut probes) = self.measure(client, &session, &usable).await;
        let session = pick_home(client, session, &usable, &rtts, &mut probes).await;
        self.settle(client, opts, session, &usable, probes).await
    }

    /// The live servers `session` lists (remembered), without those that
    /// failed us lately: other servers may list a server that just failed
    /// us as live until they notice — neither moved to nor asked about the
    /// NAT.
    async fn usable(&self, session: &ClientSession) -> Vec<ServerRecord> {
        let servers = session.servers().await.unwrap_or_default();
        self.learn(&servers);
        servers
            .into_iter()
            .filter(|s| !self.suspect(s.id))
            .collect()
    }

    /// Makes `session`'s server our home: reports our RTTs (before the
    /// registration, so that a meeting arranged at once has them),
    /// measures the NAT (on a connection the measurement left open, if
    /// any), registers. `probes` close when this returns.
    async fn settle(
        &self,
        client: &Client,
        opts: &Options,
        session: ClientSession,
        usable: &[ServerRecord],
        probes: Probes,
    ) -> anyhow::Result<Home> {
        status(&format!("connected to server {}", session.server()));
        let inbox = Inbox::new(&session);
        let rtts = crate::net::lock(&self.latency).rtts.clone();
        if !rtts.is_empty()
            && let Err(e) = session.report_latency(rtts).await
        {
            tracing::debug!(error = %e, "the server did not take our RTTs");
        }
        let public = session.who_am_i().await?;
        let nat = nat_mapping(client, &session, usable, public, &probes).await;
        drop(probes);
        let watch = Arc::new(Watch(session.watch()));
        let mut home = Home {
            session,
            nat,
            inbox,
            _watch: watch,
            _mail: Arc::new(Watch(tokio::spawn(async {}))),
        };
        self.register(client, opts, &home, public).await?;
        // Registered: letters left while we were away come now.
        let collector = crate::client::mail::watch(
            home.session.clone(),
            home.inbox.mail.clone(),
            opts.mail.clone(),
        );
        home._mail = Arc::new(Watch(tokio::spawn(collector)));
        Ok(home)
    }

    /// Measures our RTT to (a sample of) the live `servers`, in parallel:
    /// a QUIC handshake each, on our one socket (`here`, already
    /// connected, gives its own estimate). Remembers and returns it.
    async fn measure(
        &self,
        client: &Client,
        here: &ClientSession,
        servers: &[ServerRecord],
    ) -> (LatencyVector, Probes) {
        let last = crate::net::lock(&self.latency).rtts.clone();
        let sample =
            rendezvous::latency::probe_sample(servers, &last, PROBE_SAMPLE, rand::random());
        let targets: Vec<ServerAddr> = sample
            .iter()
            .filter_map(|id| servers.iter().find(|s| s.id == *id))
            .filter_map(crate::client::dial_addr)
            .collect();
        let probes = targets.iter().map(|&t| async move {
            if t.id == here.server().id {
                return Some((t, here.connection().rtt(), None));
            }
            let s = tokio::time::timeout(PROBE_TIMEOUT, client.connect(t))
                .await
                .ok()?
                .ok()?;
            let rtt = s.connection().rtt();
            Some((t, rtt, Some(s)))
        });
        let mut open = Probes(Vec::new());
        let mut got: Vec<(ServerAddr, Duration)> = Vec::new();
        for (t, rtt, s) in futures_util::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
        {
            got.push((t, rtt));
            open.0.extend(s);
        }
        got.sort_by_key(|(_, rtt)| *rtt);
        let micros = |d: Duration| u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
        let entries = got
            .iter()
            .map(|(t, rtt)| {
                (
                    t.id.0,
                    micros(*rtt).clamp(1, rendezvous::latency::MAX_RTT_US),
                )
            })
            .collect();
        let rtts = LatencyVector::new(entries).unwrap_or_default();
        let first = last.is_empty();
        *crate::net::lock(&self.latency) = Measured {
            rtts: rtts.clone(),
            at: Some(Instant::now()),
            servers: server_ids(servers),
        };
        if first && !got.is_empty() {
            let list: Vec<String> = got
                .iter()
                .map(|(t, rtt)| format!("{} {:.1} ms", t.addr, rtt.as_secs_f64() * 1e3))
                .collect();
            status(&format!("RTT to servers: {}", list.join(", ")));
        }
        (rtts, open)
    }

    /// Whether our RTTs are due for a new measurement: every
    /// [`REMEASURE_EVERY`], when the live servers changed, and every
    /// [`REPROBE_EVERY`] while a listed server did not answer our probe
    /// (when all are probed: a few, [`PROBE_SAMPLE`] or fewer) — it may
    /// have restarted before the cluster noticed it was gone.
    fn latency_due(&self, servers: &[ServerRecord]) -> bool {
        let m = crate::net::lock(&self.latency);
        let ids = server_ids(servers);
        let since = m.at.map(|at| at.elapsed());
        let missing = ids.len() <= PROBE_SAMPLE && ids.iter().any(|id| m.rtts.rtt(id).is_none());
        since.is_none_or(|t| t >= REMEASURE_EVERY || (missing && t >= REPROBE_EVERY))
            || m.servers != ids
    }

    /// The address of server `id`, if we know it.
    fn addr_of(&self, id: PeerId) -> Option<ServerAddr> {
        crate::net::lock(&self.known)
            .iter()
            .find(|s| s.id.0 == id)
            .copied()
    }

    /// Beside a chat: the record refreshed when due, the RTTs measured
    /// again when due (and reported), and a move to a closer home when
    /// there is one (`Some(new home)`). In a chat relayed with `relayed`,
    /// new RTTs also ask the servers to rank the pair's relays again (the
    /// chat moves if a better relay comes first).
    pub(super) async fn upkeep(
        &self,
        client: &Client,
        opts: &Options,
        home: &Home,
        relayed: Option<PeerId>,
    ) -> anyhow::Result<Option<Home>> {
        let usable = self.usable(&home.session).await;
        if !usable.is_empty() && self.latency_due(&usable) {
            let (rtts, mut probes) = self.measure(client, &home.session, &usable).await;
            // A relayed chat first: the relays ranked again at once (a
            // move of home would take a few round trips more).
            if relayed.is_some() {
                report_then(&home.session, rtts.clone(), relayed).await;
            }
            let here = home.session.server();
            if let Some(best) = rendezvous::latency::choose_home(&usable, &rtts, Some(here.id.0))
                && best != here.id.0
                && let Some(target) = self.addr_of(best)
                && let Ok(session) = probes.take_or_connect(client, target).await
            {
                status(&format!(
                    "server {} is closer than {} ({}): moving home",
                    target.addr,
                    here.addr,
                    describe_rtts(&rtts, best, here.id.0)
                ));
                let new_home = self.settle(client, opts, session, &usable, probes).await?;
                home.session.close();
                return Ok(Some(new_home));
            }
            if relayed.is_none() {
                report_then(&home.session, rtts, None).await;
            }
        }
        if self.refresh_due() {
            self.reregister(client, opts, home).await?;
        }
        Ok(None)
    }

    /// Registers a fresh record (new seq, current addresses) at `home`.
    pub(super) async fn reregister(
        &self,
        client: &Client,
        opts: &Options,
        home: &Home,
    ) -> anyhow::Result<()> {
        let public = home.session.who_am_i().await?;
        self.register(client, opts, home, public).await
    }

    async fn register(
        &self,
        client: &Client,
        opts: &Options,
        home: &Home,
        public: SocketAddr,
    ) -> anyhow::Result<()> {
        let session = &home.session;
        let port = client.endpoint().local_addr()?.port();
        let mut record = client.record(session, &opts.name, public, self.seq(), RECORD_TTL);
        let lan: Vec<SocketAddr> = lan_addr(session.server().addr, port).into_iter().collect();
        record.body.private_addrs = rendezvous::record::usable_private_addrs(&lan, Some(public));
        record.body.nat = home.nat;
        let record = PeerRecord::sign(client.signing_key(), record.body);
        let seq = record.body.seq;
        session.register(record).await?;
        self.record_seq.store(seq, Ordering::SeqCst);
        *crate::net::lock(&self.registered_at) = Some(Instant::now());
        status(&format!(
            "registered as {} with public address {public} (NAT mapping: {})",
            Id(client.id()),
            describe_nat(home.nat)
        ));
        Ok(())
    }

    /// After the home server failed (its `session`): another server,
    /// registered.
    pub(super) async fn rehome(
        &self,
        client: &Client,
        opts: &Options,
        session: &ClientSession,
    ) -> anyhow::Result<Home> {
        let dead = session.server();
        if matches!(
            session.connection().close_reason(),
            Some(quinn::ConnectionError::LocallyClosed)
        ) {
            // Closed by its watch (or by us): it stopped answering.
            status(&format!(
                "server {dead} stopped answering; moving to another server"
            ));
        } else {
            status(&format!(
                "lost the connection to server {dead}; moving to another server"
            ));
        }
        session.close();
        self.mark_failed(dead.id.0);
        // A server that takes us and drops us at once must not make us
        // register (and withdraw) in a loop.
        let last = *crate::net::lock(&self.moved_at);
        if let Some(wait) = last.and_then(|at| REHOME_RETRY.checked_sub(at.elapsed())) {
            tokio::time::sleep(wait).await;
        }
        *crate::net::lock(&self.moved_at) = Some(Instant::now());
        self.establish(client, opts).await
    }
}

/// While waiting, the meeting is asked again this often (notices are the
/// main way to learn of the friend; this covers one lost on the way).
const MEET_POLL: Duration = Duration::from_secs(2);

/// Finds the friend, waiting for it to come online — or, when
/// re-establishing, for a record newer than `seen_seq` (the friend
/// re-registers from wherever it is now). Moves to another server when
/// the home server stops answering.
async fn find_friend(
    client: &Client,
    opts: &Options,
    homes: &Homes,
    home: &mut Home,
    wanted: &FriendRef,
    seen_seq: u64,
) -> anyhow::Result<(PeerRecord, Duration)> {
    let who = label(opts, wanted);
    status(&format!("request sent: meet {who}"));
    let deadline = tokio::time::Instant::now() + opts.wait;
    let mut said_waiting = false;
    let mut warned_key = false;
    loop {
        if tokio::time::Instant::now() >= deadline {
            let mut msg = format!("{who} did not come online within {:?}", opts.wait);
            if warned_key {
                msg.push_str(
                    "; another key uses that name now — if your friend has a new key, run again with --accept-new-key",
                );
            }
            anyhow::bail!(msg);
        }
        if home.session.is_closed() {
            match homes.rehome(client, opts, &home.session).await {
                Ok(h) => *home = h,
                Err(e) => {
                    status(&format!("{e:#}; trying again in {MEET_POLL:?}"));
                    tokio::time::sleep(MEET_POLL).await;
                }
            }
            continue;
        }
        // A long wait outlasts a record's validity: refresh it meanwhile.
        if homes.refresh_due()
            && let Err(e) = homes.reregister(client, opts, home).await
        {
            tracing::debug!(error = %e, "refresh failed; moving to another server");
            home.session.close();
            continue;
        }
        match ask_meet(home, wanted, seen_seq).await? {
            Asked::Found(r, start_in) => return Ok((r, start_in)),
            Asked::NotYet => {}
            Asked::RateLimited(retry_after, e) => {
                // Asked too often (by us or by others): wait as told, within
                // the deadline, and ask again.
                let wait = retry_after.unwrap_or(MEET_POLL).min(MEET_POLL * 4);
                status(&format!("{e:#}; asking again in {wait:?}"));
                tokio::time::sleep_until((tokio::time::Instant::now() + wait).min(deadline)).await;
                continue;
            }
            Asked::NoAnswer => continue,
        }
        if !said_waiting {
            said_waiting = true;
            if seen_seq == 0 {
                status(&format!("waiting for {who} to come online"));
            } else {
                status(&format!("waiting for {who} to register again"));
            }
        }
        if !warned_key && let FriendRef::Id(pinned) = wanted {
            warned_key = warn_if_name_moved(&home.session, opts, *pinned).await;
        }
        // A notice when the friend registers; a fresh ask now and then in
        // case the friend re-registered at another server.
        let poll = tokio::time::Instant::now() + MEET_POLL;
        let takes = |r: &PeerRecord| friend_matches(wanted, r) && r.body.seq > seen_seq;
        match home.inbox.friend(takes, poll.min(deadline)).await {
            Ok(Some((record, start_in))) => {
                say_found(&record);
                return Ok((record, start_in));
            }
            Ok(None) => {}
            // The server connection ended: the loop's top moves on.
            Err(()) => home.session.close(),
        }
    }
}

/// What one meet request at the home server came to (for the loops that
/// wait for a friend: a chat's, a room member's).
pub(super) enum Asked {
    /// Online with a record newer than the one seen: met (said on stderr).
    Found(PeerRecord, Duration),
    /// Not online yet (or only the record already seen): a notice follows.
    NotYet,
    /// Refused as too frequent: the server's wait, if it said one.
    RateLimited(Option<Duration>, anyhow::Error),
    /// No answer: the home session is closed (the caller moves on).
    NoAnswer,
}

/// Asks `home` to meet `wanted` (a record newer than `seen_seq`). An
/// ambiguous name or another refusal is an error.
pub(super) async fn ask_meet(
    home: &Home,
    wanted: &FriendRef,
    seen_seq: u64,
) -> anyhow::Result<Asked> {
    home.inbox.forget_relay(wanted);
    match home.session.meet(wanted.clone()).await {
        Ok(Meeting::Found(r, start_in)) if r.body.seq > seen_seq => {
            say_found(&r);
            Ok(Asked::Found(r, start_in))
        }
        Ok(Meeting::Ambiguous(candidates)) => Err(ambiguous(wanted, &candidates)),
        Ok(_) => Ok(Asked::NotYet),
        Err(e) => {
            let refused = e
                .downcast_ref::<Refused>()
                .map(|r| (r.code(), r.retry_after()));
            match refused {
                Some((rendezvous::ErrorCode::RateLimited, wait)) => Ok(Asked::RateLimited(wait, e)),
                Some(_) => Err(e),
                None => {
                    tracing::debug!(error = %e, "meet failed");
                    home.session.close();
                    Ok(Asked::NoAnswer)
                }
            }
        }
    }
}

/// A pinned friend's name now used by other keys only: warn loudly (once).
async fn warn_if_name_moved(session: &ClientSession, opts: &Options, pinned: PeerId) -> bool {
    let FriendRef::Name(name) = &opts.friend else {
        return false;
    };
    let Ok(others) = session.find_name(name).await else {
        return false;
    };
    if others.is_empty() || others.iter().any(|r| r.body.peer == pinned) {
        return false;
    }
    status(&format!(
        "WARNING: {name} is online with another key: {} — but you know {name} as {} (pinned in {}). \
         Not talking to it. If {name} really has a new key, run again with --accept-new-key.",
        others
            .iter()
            .map(|r| Id(r.body.peer).to_string())
            .collect::<Vec<_>>()
            .join(", "),
        Id(pinned),
        opts.known.path().display()
    ));
    true
}

/// The error for a name that several online peers use.
pub(super) fn ambiguous(wanted: &FriendRef, candidates: &[PeerRecord]) -> anyhow::Error {
    status(&format!(
        "{} online peers use the name {}:",
        candidates.len(),
        describe(wanted)
    ));
    for r in candidates {
        status(&format!(
            "  {} at {} (home server {})",
            Id(r.body.peer),
            r.body
                .public_addr
                .map(|a| a.to_string())
                .unwrap_or_else(|| "?".into()),
            Id(r.body.home_server)
        ));
    }
    anyhow::anyhow!(
        "the name {} is ambiguous: pick your friend by id (--to ID)",
        describe(wanted)
    )
}

pub(super) fn say_found(friend: &PeerRecord) {
    status(&format!(
        "friend found: {} ({}) at {} (private {:?}, NAT mapping: {})",
        friend.body.name,
        Id(friend.body.peer),
        friend
            .body
            .public_addr
            .map(|a| a.to_string())
            .unwrap_or_default(),
        friend.body.private_addrs,
        describe_nat(friend.body.nat)
    ));
}

/// Reports `rtts` to the home server (waiting once if it says too soon),
/// then, in a relayed chat with `friend`, asks it to rank the relays again.
async fn report_then(session: &ClientSession, rtts: LatencyVector, friend: Option<PeerId>) {
    let mut res = session.report_latency(rtts.clone()).await;
    if let Err(e) = &res
        && let Some(wait) = e.downcast_ref::<Refused>().and_then(Refused::retry_after)
    {
        tokio::time::sleep(wait.min(Duration::from_secs(10))).await;
        res = session.report_latency(rtts).await;
    }
    match res {
        Ok(()) => {
            if let Some(f) = friend
                && let Err(e) = session.rearrange(f).await
            {
                tracing::debug!(error = %e, "the server did not rank the relays again");
            }
        }
        Err(e) => tracing::debug!(error = %e, "the server did not take our RTTs"),
    }
}

/// The home server ([`rendezvous::latency::choose_home`]): the closest
/// live server with room, the least loaded among those about as close —
/// the one we reached unless another is (and answers).
async fn pick_home(
    client: &Client,
    session: ClientSession,
    servers: &[ServerRecord],
    rtts: &LatencyVector,
    probes: &mut Probes,
) -> ClientSession {
    let here = session.server().id.0;
    let Some(best) = rendezvous::latency::choose_home(servers, rtts, None) else {
        return session;
    };
    let Some(target) = servers
        .iter()
        .find(|s| s.id == best)
        .and_then(crate::client::dial_addr)
    else {
        return session;
    };
    if best == here {
        return session;
    }
    match probes.take_or_connect(client, target).await {
        Ok(better) => {
            let closer = match (rtts.rtt(&best), rtts.rtt(&here)) {
                (Some(b), Some(h)) => rendezvous::latency::better_enough(h, b),
                (Some(_), None) => true,
                _ => false,
            };
            let load = |id: PeerId| servers.iter().find(|s| s.id == id).map(|s| s.load());
            if closer {
                status(&format!(
                    "server {} is closer than {} ({}): using it",
                    target.addr,
                    session.server().addr,
                    describe_rtts(rtts, best, here)
                ));
            } else if load(best) < load(here) {
                status(&format!(
                    "server {} lists a less loaded server: using {target}",
                    session.server().addr
                ));
            } else {
                status(&format!(
                    "server {} is about as close as {} ({}) and as loaded: using it",
                    target.addr,
                    session.server().addr,
                    describe_rtts(rtts, best, here)
                ));
            }
            // Closed with the other probes once the NAT check (which
            // may ask it) is done.
            probes.0.push(session);
            better
        }
        Err(e) => {
            tracing::debug!(server = %target, error = %e, "the chosen home did not answer");
            session
        }
    }
}

/// "12.3 ms against 45.6 ms" for servers `a` and `b` of `rtts`.
fn describe_rtts(rtts: &LatencyVector, a: PeerId, b: PeerId) -> String {
    let ms = |id: PeerId| match rtts.rtt(&id) {
        Some(us) => format!("{:.1} ms", f64::from(us) / 1e3),
        None => "not measured".into(),
    };
    format!("{} against {}", ms(a), ms(b))
}

/// How our NAT maps: ask a second server where it sees us. The same
/// address as the first server saw → one mapping for every destination;
/// another → a mapping per destination (symmetric NAT). A connection the
/// RTT measurement left open is asked first (no handshake: under loss, a
/// lost Initial alone costs a second); a new one only without it.
/// Unknown when no second server answers within [`NAT_CHECK_TIMEOUT`].
async fn nat_mapping(
    client: &Client,
    session: &ClientSession,
    servers: &[ServerRecord],
    public: SocketAddr,
    probes: &Probes,
) -> NatMapping {
    let here = session.server();
    let elsewhere = |s: &ServerAddr| s.id != here.id && s.addr != here.addr;
    let seen = tokio::time::timeout(NAT_CHECK_TIMEOUT, async {
        for open in probes.0.iter().filter(|s| elsewhere(&s.server())) {
            match open.who_am_i().await {
                Ok(a) => return Ok(a),
                Err(e) => tracing::debug!(server = %open.server(), error = %e, "no answer for the NAT check"),
            }
        }
        let other = servers
            .iter()
            .filter_map(crate::client::dial_addr)
            .find(|s| elsewhere(s))
            .context("no second server to compare with")?;
        let s = client.connect(other).await?;
        let a = s.who_am_i().await;
        s.close();
        a
    })
    .await;
    match seen {
        Ok(Ok(a)) if a == public => NatMapping::Independent,
        Ok(Ok(_)) => NatMapping::Dependent,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "NAT mapping unknown");
            NatMapping::Unknown
        }
        Err(_) => {
            tracing::debug!("NAT mapping unknown: no second server answered in time");
            NatMapping::Unknown
        }
    }
}

fn describe_nat(n: NatMapping) -> &'static str {
    match n {
        NatMapping::Unknown => "unknown",
        NatMapping::Independent => "same for every destination",
        NatMapping::Dependent => "per destination (symmetric NAT)",
    }
}

/// The friend in words: the name given, with the pinned id if any.
fn label(opts: &Options, wanted: &FriendRef) -> String {
    match (&opts.friend, wanted) {
        (FriendRef::Name(n), FriendRef::Id(id)) => format!("{n} ({})", Id(*id)),
        _ => describe(wanted),
    }
}

pub(super) fn describe(f: &FriendRef) -> String {
    match f {
        FriendRef::Id(id) => Id(*id).to_string(),
        FriendRef::Name(n) => n.clone(),
    }
}

/// How a connection to the friend goes.
#[derive(Clone, Debug)]
pub(super) enum PathKind {
    /// Direct, to one of the friend's LAN addresses.
    Lan,
    /// Direct, through the NATs.
    Wan,
    /// Through a server's relay.
    Relayed(ServerAddr),
}

impl std::fmt::Display for PathKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathKind::Lan => write!(f, "direct (LAN)"),
            PathKind::Wan => write!(f, "direct (WAN)"),
            PathKind::Relayed(s) => write!(f, "relayed via server {}", s.addr),
        }
    }
}

/// A connection to the friend with the chat stream open on it.
pub(super) struct Path {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    pub(super) kind: PathKind,
    /// Fires when a relayed path's stream through the server ends.
    relay_closed: Option<tokio::sync::oneshot::Receiver<()>>,
    /// The connection to the relay server (kept open; watched).
    relay_session: Option<RelayCarrier>,
    /// The relays the servers ranked for the pair (empty for a direct path).
    ranking: Ranking,
}

/// Early frames for a relayed path ([`crate::client::early`]): sealed
/// messages to send at once, and where the friend's go.
#[derive(Clone, Default)]
pub(super) struct Early {
    out: Vec<bytes::Bytes>,
    inbox: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
}

/// Seals the first messages not acknowledged for `friend` (what to send
/// through the relay at once) and opens a way in for the friend's.
fn early_frames(
    client: &Client,
    homes: &Homes,
    friend: &PeerRecord,
    chat: &Session,
) -> (Early, EarlyIn) {
    let me = client.id();
    let (mine, theirs) = (homes.record_seq.load(Ordering::SeqCst), friend.body.seq);
    let out_meeting = crate::client::early::Meeting {
        from: me,
        to: friend.body.peer,
        from_seq: mine,
        to_seq: theirs,
    };
    let out = chat
        .early_frames(crate::client::early::MAX_EARLY_FRAMES)
        .iter()
        .filter_map(|f| {
            crate::client::early::seal(client.signing_key(), &out_meeting, f, rand::random()).ok()
        })
        .map(bytes::Bytes::from)
        .collect();
    let (tx, rx) = tokio::sync::mpsc::channel(2 * crate::client::early::MAX_EARLY_FRAMES);
    let early = Early {
        out,
        inbox: Some(tx),
    };
    let meeting = crate::client::early::Meeting {
        from: friend.body.peer,
        to: me,
        from_seq: theirs,
        to_seq: mine,
    };
    (early, EarlyIn { rx, meeting })
}

/// The friend's early frames for this meeting, as the relay paths read
/// them.
struct EarlyIn {
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    meeting: crate::client::early::Meeting,
}

impl EarlyIn {
    /// Opens one and gives it to the chat (which drops what it has).
    fn take(&self, client: &Client, chat: &mut Session, frame: &[u8]) {
        match crate::client::early::open(client.signing_key(), &self.meeting, frame) {
            Ok(f) => {
                tracing::debug!("an early frame opened");
                for text in chat.on_frame(f) {
                    println!("{text}");
                }
            }
            Err(e) => tracing::debug!(error = %e, "an early frame was dropped"),
        }
    }
}

/// The server connection a relayed path runs on.
struct RelayCarrier {
    session: ClientSession,
    /// Opened for this path (closed with it), or the home connection.
    own: bool,
}

/// How long the NAT check may take: a second server asked where it sees
/// us (over a connection already open, usually: a round trip or a few
/// retransmissions under loss).
const NAT_CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a pair of symmetric NATs gets for a LAN path before relaying.
const LAN_ONLY_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a relayed chat connection (and a connection of its own to a
/// relay server) carries a keep-alive.
const RELAY_KEEPALIVE: Duration = Duration::from_millis(150);
/// A relay server silent this long (no packet on its connection, which
/// carries a keep-alive every [`RELAY_KEEPALIVE`]) is taken for dead: the
/// chat moves to the next relay.
const RELAY_SILENCE: Duration = Duration::from_millis(750);
/// How long a relay that says it has not heard of the pair is asked again.
const RELAY_GRANT_WAIT: Duration = Duration::from_secs(2);
/// How long the relayed QUIC handshake may take.
const RELAY_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The direct attempt still running beside a relayed chat: the direct
/// path when it comes up.
pub(super) type Upgrade<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Path>> + Send + 'a>>;

/// The path to the friend, at once (Tailscale's way): the relay and the
/// direct attempts start together, and the chat begins on whichever is
/// ready first (the direct attempts at the common start instant,
/// `start_in`; the relay at once). A direct path that comes first ends the relay attempt; a
/// relay that comes first is returned with the direct attempt still
/// running (for `direct_timeout`, 1 s when both NATs map per destination:
/// then only a LAN path can work), to upgrade to. `direct_timeout` 0:
/// relay only.
pub(super) async fn connect<'a>(
    client: &'a Client,
    homes: &Homes,
    home: &Home,
    friend: &'a PeerRecord,
    start_in: Duration,
    direct_timeout: Duration,
    early: Early,
) -> anyhow::Result<(Path, Option<Upgrade<'a>>)> {
    let own_nat = home.nat;
    let budget = direct_budget(own_nat, friend, direct_timeout);
    if budget < direct_timeout {
        status("both NATs map per destination (symmetric): trying LAN addresses beside the relay");
    }
    if budget.is_zero() {
        return Ok((relay(client, homes, home, friend, early).await?, None));
    }
    let mut incoming = crate::client::punch::Incoming::new(client, friend.body.peer);
    let mut direct = Box::pin(async move {
        tokio::time::sleep(start_in).await;
        let path = direct_path_on(client, own_nat, friend, budget, &mut incoming).await;
        (path, incoming)
    });
    let mut relayed: Upgrade<'_> = Box::pin(relay(client, homes, home, friend, early));
    tokio::select! {
        (d, mut incoming) = &mut direct => match d {
            Ok(path) => Ok((path, None)),
            Err(e) => {
                status(&format!("no direct path: {e}; waiting for the relay"));
                // A connection the friend completes late is still taken.
                let late = async {
                    match incoming.late(client.id(), budget).await {
                        Ok(chat) => path_of(chat, friend),
                        Err(_) => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = &mut relayed => Ok((r?, None)),
                    path = late => {
                        status("the friend's direct connection came late: taking it");
                        Ok((path, None))
                    }
                }
            }
        },
        r = &mut relayed => match r {
            Ok(path) => Ok((path, Some(Box::pin(async move { direct.await.0 })))),
            Err(e) => {
                status(&format!("no relay: {e:#}; waiting for a direct path"));
                Ok((direct.await.0?, None))
            }
        },
    }
}

/// How long direct attempts get: `direct_timeout`, at most
/// [`LAN_ONLY_TIMEOUT`] when both NATs map per destination (then only a
/// LAN path can work).
fn direct_budget(own_nat: NatMapping, friend: &PeerRecord, direct_timeout: Duration) -> Duration {
    if own_nat == NatMapping::Dependent && friend.body.nat == NatMapping::Dependent {
        direct_timeout.min(LAN_ONLY_TIMEOUT)
    } else {
        direct_timeout
    }
}

/// A direct path (punching, [`crate::client::punch`]) within `budget`.
async fn direct_path(
    client: &Client,
    own_nat: NatMapping,
    friend: &PeerRecord,
    budget: Duration,
) -> anyhow::Result<Path> {
    let mut incoming = crate::client::punch::Incoming::new(client, friend.body.peer);
    direct_path_on(client, own_nat, friend, budget, &mut incoming).await
}

/// [`direct_path`], the friend's connections taken by `incoming`.
async fn direct_path_on(
    client: &Client,
    own_nat: NatMapping,
    friend: &PeerRecord,
    budget: Duration,
    incoming: &mut crate::client::punch::Incoming,
) -> anyhow::Result<Path> {
    let chat = crate::client::punch::direct(client, own_nat, friend, budget, incoming).await?;
    Ok(path_of(chat, friend))
}

/// The path of a direct chat connection (LAN when it runs to one of the
/// friend's private addresses).
fn path_of((conn, send, recv): crate::client::punch::Chat, friend: &PeerRecord) -> Path {
    let kind = if friend.body.private_addrs.contains(&conn.remote_address()) {
        PathKind::Lan
    } else {
        PathKind::Wan
    };
    Path {
        conn,
        send,
        recv,
        kind,
        relay_closed: None,
        relay_session: None,
        ranking: Ranking::default(),
    }
}

/// The relayed path: both peers ask the relay the servers chose for them
/// (the live server with the smallest worse RTT for the two, seed 003) —
/// or, without a choice, the home server of the lower id — to splice
/// them, then run the chat QUIC connection (TLS pinned to the friend's
/// key, so the server cannot read or forge it) through it.
async fn relay(
    client: &Client,
    homes: &Homes,
    own_home: &Home,
    friend: &PeerRecord,
    early: Early,
) -> anyhow::Result<Path> {
    let me = client.id();
    let fid = friend.body.peer;
    let session = &own_home.session;
    let ranking = own_home.inbox.relay_for(fid, RELAY_CHOICE_WAIT).await;
    let chosen = match &ranking {
        Some(r) if !r.relays.is_empty() => {
            match r.relays.iter().find_map(|(id, _)| homes.addr_of(*id)) {
                Some(addr) => {
                    status(&format!(
                        "the servers chose the relay {} (the smallest worse RTT for both of you)",
                        addr.addr
                    ));
                    Some(addr)
                }
                None => {
                    status(
                        "the servers chose relays this client does not know; using the home server of the lower id",
                    );
                    None
                }
            }
        }
        Some(_) => {
            status(
                "the servers could not choose a relay (RTTs missing); using the home server of the lower id",
            );
            None
        }
        None => {
            status(&format!(
                "no relay choice from the servers within {RELAY_CHOICE_WAIT:?}; using the home server of the lower id"
            ));
            None
        }
    };
    let target = match chosen {
        Some(addr) => addr,
        None if me < fid => session.server(),
        None => {
            let servers = session.servers().await?;
            servers
                .iter()
                .find(|s| s.id == friend.body.home_server)
                .context("the friend's home server is not live, so it cannot relay")
                .map(crate::client::dial_addr)?
                .context("the friend's home server has no address")?
        }
    };
    relay_via(
        client,
        homes,
        Some(session.clone()),
        target,
        fid,
        ranking.unwrap_or_default(),
        early,
    )
    .await
}

/// The chat through the relay server `target`: on the home connection
/// when that is the relay's (no handshake to wait for), else on a
/// connection of its own. Either way the relayed chat connection sends a
/// keep-alive every [`RELAY_KEEPALIVE`] through it, which the server
/// acknowledges: a relay silent for [`RELAY_SILENCE`] is dead (see
/// [`Live::start`]). The request and the chat's first packets go out
/// together (see [`crate::client::relay`]).
async fn relay_via(
    client: &Client,
    homes: &Homes,
    home: Option<ClientSession>,
    target: ServerAddr,
    fid: PeerId,
    ranking: Ranking,
    early: Early,
) -> anyhow::Result<Path> {
    let began = tokio::time::Instant::now();
    let home =
        home.filter(|h| h.server().id == target.id && h.connection().close_reason().is_none());
    let (carrier, own) = match home {
        Some(h) => {
            status(&format!(
                "requesting a relay via server {} (our home server)",
                target.addr
            ));
            (h, false)
        }
        None => {
            status(&format!("requesting a relay via server {}", target.addr));
            let mut transport = crate::client::client_transport()?;
            transport.keep_alive_interval(Some(RELAY_KEEPALIVE));
            // We measured this server: a lost first packet is resent after
            // about that RTT, not after quinn's default guess (333 ms).
            if let Some(us) = crate::net::lock(&homes.latency).rtts.rtt(&target.id.0) {
                transport.initial_rtt(Duration::from_micros(u64::from(us)));
            }
            let session = client.connect_with_transport(target, transport).await?;
            tracing::debug!(relay = %target.addr, ms = began.elapsed().as_millis(), "connected to the relay");
            // Notices may come here (when our home connection ends first):
            // read and drop them, or the server would close this connection.
            let mut stray = session.notices();
            tokio::spawn(async move { while stray.recv().await.is_some() {} });
            (session, true)
        }
    };
    // Whatever fails, a connection opened for this path goes with it.
    let (chat, closed) = match chat_through(client, &carrier, target, fid, &early, began).await {
        Ok(done) => done,
        Err(e) => {
            if own {
                carrier.close();
            }
            return Err(e);
        }
    };
    let (conn, send, recv) = chat;
    Ok(Path {
        conn,
        send,
        recv,
        kind: PathKind::Relayed(target),
        relay_closed: Some(closed),
        relay_session: Some(RelayCarrier {
            session: carrier,
            own,
        }),
        ranking,
    })
}

/// The chat connection through the relay stream on `carrier` (to the
/// relay `target`): the request with our early frames behind it, then the
/// QUIC handshake with the friend; asks again while the relay has not yet
/// heard of the pair. Returns the chat and the stream's end.
async fn chat_through(
    client: &Client,
    carrier: &ClientSession,
    target: ServerAddr,
    fid: PeerId,
    early: &Early,
    began: tokio::time::Instant,
) -> anyhow::Result<(
    crate::client::punch::Chat,
    tokio::sync::oneshot::Receiver<()>,
)> {
    let me = client.id();
    // A relay that is a third server learns of the pair from the server
    // that ranked it (a message that may still be on its way): until then
    // it says `relay_not_met`; ask again, for a bounded time.
    let grant_by = tokio::time::Instant::now() + RELAY_GRANT_WAIT;
    let (mut rx, closed, task) = loop {
        let crate::client::RelayLink {
            endpoint,
            closed,
            answer,
            early: mut theirs,
            ..
        } = {
            let link = client.relay_endpoint(carrier, fid, RELAY_KEEPALIVE).await?;
            // Our first messages, right behind the request.
            for f in &early.out {
                link.send_early(f.clone());
            }
            link
        };
        if let Some(inbox) = early.inbox.clone() {
            tokio::spawn(async move {
                while let Some(f) = theirs.recv().await {
                    let _ = inbox.try_send(f);
                }
            });
        }
        // The same agreement as on a direct path: the lower id dials
        // through the relay and opens the stream, the higher id accepts.
        // At once: the first packets follow the request.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let task = if me < fid {
            let mut transport = crate::client::client_transport()?;
            transport.keep_alive_interval(Some(RELAY_KEEPALIVE));
            let connecting = endpoint.connect_with(
                client.friend_config_with(fid, transport)?,
                crate::client::relay::RELAY_PEER_ADDR,
                crate::net::tls::SERVER_NAME,
            )?;
            tokio::spawn(async move {
                match connecting.await {
                    Ok(conn) => {
                        let _ = tx.send(conn).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "dial through the relay failed"),
                }
            })
        } else {
            tokio::spawn(crate::client::punch::accept_friend(
                endpoint.clone(),
                fid,
                tx,
            ))
        };
        let answered = answer
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the relay stream ended unanswered")));
        tracing::debug!(
            relay = %target.addr,
            ms = began.elapsed().as_millis(),
            ok = answered.is_ok(),
            "the relay answered"
        );
        match answered {
            Ok(()) => break (rx, closed, task),
            Err(e)
                if tokio::time::Instant::now() < grant_by
                    && e.downcast_ref::<Refused>()
                        .is_some_and(|r| r.code() == rendezvous::ErrorCode::RelayNotMet) =>
            {
                task.abort();
                endpoint.close(0u32.into(), b"");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                task.abort();
                return Err(e);
            }
        }
    };
    let deadline = tokio::time::Instant::now() + RELAY_HANDSHAKE_TIMEOUT;
    let chat = crate::client::punch::agree(me, fid, &mut rx, deadline).await;
    task.abort();
    Ok((chat.context("no chat through the relay")?, closed))
}

/// Where stdin lines come from (read once, across paths), and Ctrl-C /
/// SIGTERM: while chatting, the first ends the input like EOF (finish:
/// send what was already typed, wait for acknowledgements and the
/// friend's bye, bounded); otherwise, or the second time, close the
/// server connections and exit at once (status 130).
struct Input {
    lines: tokio::sync::mpsc::Receiver<String>,
    stop: tokio::sync::mpsc::Receiver<()>,
    chatting: Arc<AtomicBool>,
    /// The texts not acknowledged, for the words of a hard exit.
    pending: Arc<Mutex<Vec<String>>>,
    open: bool,
    closed_at: Option<Instant>,
}

impl Input {
    fn stdin(endpoint: quinn::Endpoint) -> Input {
        let lines = crate::client::stdin_lines();
        let chatting = Arc::new(AtomicBool::new(false));
        let pending: Arc<Mutex<Vec<String>>> = Arc::default();
        let (stop_tx, stop) = tokio::sync::mpsc::channel(1);
        let (in_chat, unacked) = (chatting.clone(), pending.clone());
        let mut interrupts = crate::client::interrupts();
        tokio::spawn(async move {
            let mut times = 0;
            loop {
                if interrupts.recv().await.is_none() {
                    return;
                }
                times += 1;
                if times > 1 || !in_chat.load(Ordering::SeqCst) {
                    let lost = crate::net::lock(&unacked).clone();
                    match lost.len() {
                        0 => status("interrupted"),
                        n => status(&format!("interrupted: {n} message(s) not delivered:")),
                    }
                    for text in lost {
                        status(&format!("  not delivered: {text}"));
                    }
                    // Tell the servers at once (our record goes offline now,
                    // not after an idle timeout).
                    endpoint.close(0u32.into(), b"interrupted");
                    let _ = tokio::time::timeout(Duration::from_millis(300), endpoint.wait_idle())
                        .await;
                    std::process::exit(130);
                }
                status("interrupted: finishing the chat (again to quit at once)");
                let _ = stop_tx.try_send(());
            }
        });
        Input {
            lines,
            stop,
            chatting,
            pending,
            open: true,
            closed_at: None,
        }
    }

    /// The input ended (EOF or interrupted): lines already read are still
    /// sent, then the session finishes.
    fn close(&mut self, session: &mut Session) {
        while let Ok(line) = self.lines.try_recv() {
            queue(session, &line);
        }
        self.open = false;
        self.closed_at = Some(Instant::now());
        session.finish();
    }

    /// After the friend left: read (and refuse) lines until the input ends,
    /// so what the user types next does not go to the shell.
    async fn drain_unsent(&mut self, friend: &str) {
        loop {
            tokio::select! {
                line = self.lines.recv() => match line {
                    Some(_) => status(&format!("not sent: {friend} has left the chat")),
                    None => break,
                },
                Some(()) = self.stop.recv() => break,
            }
        }
        self.open = false;
    }
}

/// Queues one typed line (a too-long line is refused in words).
fn queue(session: &mut Session, line: &str) {
    if let Err(e) = session.send(line) {
        status(&e.to_string());
    }
}

/// How a conversation on one path ended.
enum End {
    /// Our input ended and everything was acknowledged (or the wait ran out).
    Done,
    /// The friend closed the chat.
    FriendLeft,
    /// The path failed; the session goes on over a new one.
    Broke(String),
}

/// How long after our input ends we wait for acknowledgements and for the
/// friend to finish too.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How often a chatting client checks whether its record is due.
pub(super) const REFRESH_CHECK: Duration = Duration::from_secs(10);
/// How often a relayed chat asks its home server for the live servers
/// (a new one is measured at once, and may be a better relay).
const RELAYED_CHECK: Duration = Duration::from_secs(1);
/// After a failed move to another server, the next try waits this long.
pub(super) const REHOME_RETRY: Duration = Duration::from_secs(2);

/// Work on the home server that runs beside the chat: a move to another
/// server (`Some(home)`) or a refreshed record (`None`).
type Upkeep<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Option<Home>>> + 'a>>;

/// How long a relayed path stays open, and read, after the chat moved to
/// a direct one: what the friend sent on it meanwhile still arrives.
const RELAY_LINGER: Duration = Duration::from_secs(5);

/// A path in use: frames read from it go to the conversation, tagged with
/// its number (`None` when it ended).
pub(super) struct Live {
    pub(super) id: u32,
    pub(super) conn: quinn::Connection,
    pub(super) send: quinn::SendStream,
    pub(super) kind: PathKind,
    reader: tokio::task::JoinHandle<()>,
    /// The relay server's connection and the watch on it (relayed paths).
    relay_session: Option<RelayCarrier>,
    watchdog: Option<tokio::task::JoinHandle<()>>,
    ranking: Ranking,
}

pub(super) type Tagged<F = Frame> = (u32, Option<F>);

impl Live {
    fn start(path: Path, id: u32, frames: &tokio::sync::mpsc::Sender<Tagged>) -> Live {
        Live::start_with(path, id, frames, crate::net::framing::MAX_FRAME)
    }

    /// [`Live::start`] for frames of type `F`, each at most `max` bytes.
    pub(super) fn start_with<F>(
        path: Path,
        id: u32,
        frames: &tokio::sync::mpsc::Sender<Tagged<F>>,
        max: usize,
    ) -> Live
    where
        F: for<'de> serde::Deserialize<'de> + Send + 'static,
    {
        let Path {
            conn,
            send,
            mut recv,
            kind,
            relay_closed,
            relay_session,
            ranking,
        } = path;
        if let Some(closed) = relay_closed {
            let conn = conn.clone();
            tokio::spawn(async move {
                if closed.await.is_ok() {
                    conn.close(2u32.into(), b"relay closed");
                }
            });
        }
        // A relay server that died without a word (SIGKILL, a cut link)
        // sends nothing more: its connection carries a keep-alive every
        // 150 ms, so [`RELAY_SILENCE`] without a packet ends the path.
        let watchdog = relay_session.as_ref().map(|s| {
            let (relay, chat, own) = (s.session.connection().clone(), conn.clone(), s.own);
            tokio::spawn(async move {
                crate::net::silent_for(&relay, RELAY_SILENCE, RELAY_SILENCE / 10).await;
                chat.close(2u32.into(), b"relay silent");
                // The home connection has its own watch.
                if own {
                    relay.close(2u32.into(), b"silent");
                }
            })
        });
        let tx = frames.clone();
        let reader = tokio::spawn(async move {
            while let Ok(f) = crate::net::framing::read_msg_max::<F>(&mut recv, max).await {
                if tx.send((id, Some(f))).await.is_err() {
                    return;
                }
            }
            let _ = tx.send((id, None)).await;
        });
        Live {
            id,
            conn,
            send,
            kind,
            reader,
            relay_session,
            watchdog,
            ranking,
        }
    }

    /// The relay server this path runs through, if relayed.
    fn relay(&self) -> Option<ServerAddr> {
        match &self.kind {
            PathKind::Relayed(s) => Some(*s),
            _ => None,
        }
    }

    /// Stops reading and watching (the connection stays as it is).
    fn stop_tasks(&self) {
        self.reader.abort();
        if let Some(w) = &self.watchdog {
            w.abort();
        }
    }

    /// Stops reading and closes the connection with `code` (and the relay
    /// server's).
    pub(super) fn close(self, code: u32, why: &[u8]) {
        self.stop_tasks();
        self.conn.close(code.into(), why);
        if let Some(s) = self.relay_session.filter(|s| s.own) {
            s.session.close();
        }
    }
}

/// Makes `next` the path in use; the one before it (if any) is still read
/// for [`RELAY_LINGER`], replacing an older one that is closed now.
fn take_over(cur: &mut Option<Live>, old: &mut Option<(Live, tokio::time::Instant)>, next: Live) {
    if let Some(was) = cur.replace(next) {
        retire(old.replace((was, tokio::time::Instant::now() + RELAY_LINGER)));
    }
}

/// Closes a path the chat moved away from.
fn retire(old: Option<(Live, tokio::time::Instant)>) {
    if let Some((o, _)) = old {
        o.close(4, b"upgraded");
    }
}

/// Where a relayed chat moves, if anywhere: after its relay `dead` died,
/// the next ranked relay; else the first of a newer `ranking`, if it is
/// [`rendezvous::latency::better_enough`] than the current relay
/// (`current`) — both peers get the same ranking and apply the same rule,
/// so they move to the same server.
fn relocation(
    ranking: &Ranking,
    current: Option<PeerId>,
    dead: bool,
    avoid: &[PeerId],
) -> Option<PeerId> {
    let usable = |id: &PeerId| Some(*id) != current && !avoid.contains(id);
    if dead {
        return ranking
            .relays
            .iter()
            .map(|(id, _)| *id)
            .find(|id| usable(id));
    }
    let &(best, best_us) = ranking.relays.first()?;
    if Some(best) == current || !usable(&best) {
        return None;
    }
    let now_us = ranking
        .relays
        .iter()
        .find(|(id, _)| Some(*id) == current)
        .map_or(u32::MAX, |(_, us)| *us);
    rendezvous::latency::better_enough(now_us, best_us).then_some(best)
}

/// Whether a relayed chat follows the friend's [`Frame::Moving`] to
/// `relay`: on a relay (`current`) other than it, not heading there
/// already, not to a relay that failed this chat — and, when heading
/// elsewhere (`heading`), only if the friend has the lower id (`we_lower`
/// false): the lower id's choice stands, and the other side applies the
/// same rule to our frame, so the two meet on one server.
fn follows(
    relay: PeerId,
    current: Option<PeerId>,
    heading: Option<PeerId>,
    we_lower: bool,
    failed: &[PeerId],
) -> bool {
    current.is_some_and(|c| c != relay)
        && heading != Some(relay)
        && !(heading.is_some() && we_lower)
        && !failed.contains(&relay)
}

/// Least time between two moves made to follow the friend's
/// [`Frame::Moving`]: a friend that sends them in a row, naming server
/// after server, makes us request one relay per interval instead of one per
/// frame; its latest frame waits for the interval to pass.
const FOLLOW_SPACING: Duration = Duration::from_secs(5);

/// The friend's [`Frame::Moving`] requests, paced by [`FOLLOW_SPACING`]:
/// only the latest waiting one counts.
#[derive(Debug, Default)]
struct Follower {
    /// When we last moved to follow the friend.
    followed_at: Option<Instant>,
    /// The latest request not acted on yet.
    waiting: Option<PeerId>,
}

impl Follower {
    fn asked(&mut self, relay: PeerId) {
        self.waiting = Some(relay);
    }

    /// The request to act on now, if one waits and the spacing has passed.
    fn due(&mut self, now: Instant) -> Option<PeerId> {
        let spaced = self
            .followed_at
            .is_none_or(|t| now.saturating_duration_since(t) >= FOLLOW_SPACING);
        if spaced { self.waiting.take() } else { None }
    }

    fn moved(&mut self, now: Instant) {
        self.followed_at = Some(now);
    }
}

/// Starts following the friend's move to `relay` when [`follows`] says so:
/// the move (server, start, path) made by `start` from its address.
fn follow<'a>(
    relay: PeerId,
    current: Option<PeerId>,
    heading: Option<PeerId>,
    we_lower: bool,
    failed: &[PeerId],
    homes: &Homes,
    start: impl FnOnce(ServerAddr) -> Upgrade<'a>,
) -> Option<(PeerId, Instant, Upgrade<'a>)> {
    if !follows(relay, current, heading, we_lower, failed) {
        return None;
    }
    let Some(to) = homes.addr_of(relay) else {
        status(&format!(
            "the friend is moving the chat to relay {}, a server we do not know: the chat stays",
            Id(relay)
        ));
        return None;
    };
    status(&format!(
        "the friend is moving the chat to relay {}: following",
        to.addr
    ));
    Some((relay, Instant::now(), start(to)))
}

/// The conversation: stdin → messages, messages → stdout, on the path in
/// use. A direct path that comes up (`upgrade`) takes over from the relay
/// at once; a relayed chat moves to the next ranked relay when its relay
/// dies, and to a better one when the servers rank one
/// ([`relocation`]). On every move, unacknowledged messages are sent again
/// on the new path, the friend drops what it already has, and the old
/// path is still read for [`RELAY_LINGER`] — so nothing is lost,
/// duplicated or reordered. Beside it, the home server is watched (moved
/// away from when it dies) and the record and RTTs refreshed.
#[allow(clippy::too_many_arguments)] // the chat's whole context, passed down from one caller
async fn converse<'a>(
    path: Path,
    mut upgrade: Option<Upgrade<'a>>,
    friend_record: &'a PeerRecord,
    early_in: &mut EarlyIn,
    session: &mut Session,
    input: &mut Input,
    client: &'a Client,
    opts: &'a Options,
    homes: &'a Homes,
    home: &mut Home,
) -> End {
    let friend = friend_record.body.peer;
    let (frame_tx, mut frames) = tokio::sync::mpsc::channel::<Tagged>(64);
    let mut next_id = 1;
    let mut cur = Some(Live::start(path, 0, &frame_tx));
    let mut old: Option<(Live, tokio::time::Instant)> = None;
    // A move to another relay under way: the server, since when, the path.
    let mut moving: Option<(PeerId, Instant, Upgrade<'a>)> = None;
    // Relays that failed this chat (not moved to again).
    let mut failed: Vec<PeerId> = Vec::new();
    let mut follower = Follower::default();
    let mut seen_ranking = cur.as_ref().map_or(0, |c| c.ranking.number);
    // Where to move a relayed chat, and that server's address.
    let target = |ranking: &Ranking, current: Option<PeerId>, dead: bool, failed: &[PeerId]| {
        relocation(ranking, current, dead, failed).and_then(|id| Some((id, homes.addr_of(id)?)))
    };
    // A move of the relayed chat to relay `to`, carried by our home
    // session when `to` is our home server.
    let move_via = |home: ClientSession, to: ServerAddr, ranking: Ranking| -> Upgrade<'a> {
        Box::pin(relay_via(
            client,
            homes,
            Some(home),
            to,
            friend,
            ranking,
            Early::default(),
        ))
    };
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut refresh = tokio::time::interval(RELAYED_CHECK);
    let mut last_upkeep: Option<Instant> = None;
    let mut upkeep: Option<Upkeep<'a>> = None;
    let mut rehome_after = tokio::time::Instant::now();
    input.chatting.store(true, Ordering::SeqCst);
    let end = loop {
        let may_rehome = upkeep.is_none() && tokio::time::Instant::now() >= rehome_after;
        let linger_until = old.as_ref().map(|(_, t)| *t);
        let relayed = cur.as_ref().and_then(Live::relay).is_some();
        tokio::select! {
            line = input.lines.recv(), if input.open => match line {
                Some(line) => queue(session, &line),
                None => input.close(session),
            },
            Some(()) = input.stop.recv(), if input.open => input.close(session),
            Some(f) = early_in.rx.recv() => early_in.take(client, session, &f),
            Some((id, frame)) = frames.recv() => match frame {
                // The friend moves the relayed chat: the next tick follows
                // (the latest frame only, at most one move per
                // FOLLOW_SPACING).
                Some(Frame::Moving { relay }) => follower.asked(relay),
                Some(f) => {
                    for text in session.on_frame(f) {
                        println!("{text}");
                    }
                }
                None if cur.as_ref().is_some_and(|c| c.id == id) => {
                    let gone = cur.take().expect("checked");
                    let end = why_closed(&gone.conn);
                    let dead_relay = gone.relay();
                    let ranking = home.inbox.ranking(friend).unwrap_or_else(|| gone.ranking.clone());
                    gone.close(3, b"path broke");
                    let End::Broke(why) = end else { break end };
                    // A relayed chat whose relay died moves to the next one;
                    // anything else is re-established through the servers.
                    let Some(dead) = dead_relay else { break End::Broke(why) };
                    failed.push(dead.id.0);
                    if moving.is_none() {
                        match target(&ranking, Some(dead.id.0), true, &failed) {
                            Some((id, to)) => {
                                status(&format!(
                                    "relay {} is gone ({why}); moving the chat to relay {}",
                                    dead.addr, to.addr
                                ));
                                moving = Some((id, Instant::now(), move_via(home.session.clone(), to, ranking)));
                            }
                            None => break End::Broke(why),
                        }
                    }
                }
                None => retire(old.take()),
            },
            res = async { upgrade.as_mut().expect("guarded").await }, if upgrade.is_some() => {
                upgrade = None;
                match res {
                    Ok(path) => {
                        let next = Live::start(path, next_id, &frame_tx);
                        next_id += 1;
                        status(&format!(
                            "upgraded to {}, RTT {} ms",
                            next.kind,
                            next.conn.rtt().as_millis()
                        ));
                        take_over(&mut cur, &mut old, next);
                        moving = None;
                        session.path_changed();
                    }
                    Err(e) => match &cur {
                        Some(c) => status(&format!("no direct path ({e}); the chat stays {}", c.kind)),
                        None => status(&format!("no direct path ({e})")),
                    },
                }
            }
            res = async { moving.as_mut().expect("guarded").2.as_mut().await }, if moving.is_some() => {
                let (id, since, _) = moving.take().expect("guarded");
                match res {
                    Ok(path) => {
                        let mut next = Live::start(path, next_id, &frame_tx);
                        next_id += 1;
                        next.ranking = home.inbox.ranking(friend).unwrap_or(next.ranking);
                        seen_ranking = seen_ranking.max(next.ranking.number);
                        status(&format!(
                            "moved the chat: {}, RTT {} ms ({} ms after the move began)",
                            next.kind,
                            next.conn.rtt().as_millis(),
                            since.elapsed().as_millis()
                        ));
                        take_over(&mut cur, &mut old, next);
                        session.path_changed();
                        // The friend moved too (the same event told both):
                        // a direct path may work now where it did not.
                        let budget = direct_budget(home.nat, friend_record, opts.direct_timeout);
                        if upgrade.is_none() && !budget.is_zero() {
                            status("trying a direct path again beside the new relay");
                            upgrade = Some(Box::pin(direct_path(client, home.nat, friend_record, budget)));
                        }
                    }
                    Err(e) => {
                        failed.push(id);
                        status(&format!("the move to another relay failed: {e:#}"));
                        if cur.is_none() {
                            break End::Broke(format!("no relay left: {e:#}"));
                        }
                    }
                }
            }
            () = tokio::time::sleep_until(linger_until.unwrap_or_else(tokio::time::Instant::now)), if linger_until.is_some() => {
                retire(old.take());
            }
            _ = home.session.closed(), if may_rehome => {
                let dead = home.session.clone();
                upkeep = Some(Box::pin(async move { homes.rehome(client, opts, &dead).await.map(Some) }));
            }
            _ = refresh.tick(), if upkeep.is_none() => {
                // Relayed: every second (a better relay is looked for at
                // once); else every REFRESH_CHECK.
                if !relayed && last_upkeep.is_some_and(|t| t.elapsed() < REFRESH_CHECK) {
                    continue;
                }
                last_upkeep = Some(Instant::now());
                let current = home.clone();
                let with = relayed.then_some(friend);
                upkeep = Some(Box::pin(async move { homes.upkeep(client, opts, &current, with).await }));
            }
            res = async { upkeep.as_mut().expect("guarded").await }, if upkeep.is_some() => {
                upkeep = None;
                match res {
                    Ok(Some(new_home)) => *home = new_home,
                    Ok(None) => {}
                    Err(e) => {
                        status(&format!("{e:#}; the chat goes on, trying again in {REHOME_RETRY:?}"));
                        rehome_after = tokio::time::Instant::now() + REHOME_RETRY;
                    }
                }
            }
            _ = tick.tick() => {
                // The friend's latest move: follow, unless we are there or
                // going there, or going elsewhere with the lower id (the
                // lower id's choice stands; it ignores the other's frame
                // the same way).
                if let Some(relay) = follower.due(Instant::now()) {
                    let current = cur.as_ref().and_then(Live::relay).map(|c| c.id.0);
                    let heading = moving.as_ref().map(|(to, ..)| *to);
                    let start = |to| move_via(home.session.clone(), to, home.inbox.ranking(friend).unwrap_or_default());
                    if let Some(m) = follow(relay, current, heading, client.id() < friend, &failed, homes, start) {
                        moving = Some(m);
                        follower.moved(Instant::now());
                    }
                }
                // A relayed chat: a better relay ranked since?
                if relayed
                    && moving.is_none()
                    && let Some(ranking) = home.inbox.ranking(friend)
                    && ranking.number > seen_ranking
                {
                    seen_ranking = ranking.number;
                    let current = cur.as_ref().and_then(Live::relay);
                    if let Some((id, to)) = target(&ranking, current.map(|c| c.id.0), false, &failed) {
                        status(&format!(
                            "relay {} is closer for both of you than {}: moving the chat there",
                            to.addr,
                            current.map(|c| c.addr.to_string()).unwrap_or_default()
                        ));
                        moving = Some((id, Instant::now(), move_via(home.session.clone(), to, ranking)));
                        // The friend may have acted on another ranking:
                        // tell it where we go ([`Frame::Moving`]).
                        if let Some(c) = cur.as_mut() {
                            let _ = write_msg(&mut c.send, &Frame::Moving { relay: id }).await;
                        }
                    }
                }
                let Some(c) = cur.as_mut() else { continue };
                let mut broke = None;
                for f in session.poll_transmit(Instant::now()) {
                    if let Err(e) = write_msg(&mut c.send, &f).await {
                        broke = Some(e.to_string());
                        break;
                    }
                }
                {
                    let mut p = crate::net::lock(&input.pending);
                    if session.pending() > 0 || !p.is_empty() {
                        *p = session.undelivered();
                    }
                }
                if let Some(e) = broke {
                    // The reader sees the end too; a relayed path moves on
                    // there. A direct one is re-established.
                    if c.relay().is_none() {
                        break End::Broke(e);
                    }
                    continue;
                }
                if let Some(since) = input.closed_at
                    && (session.done() || since.elapsed() > CLOSE_WAIT)
                {
                    if session.pending() > 0 {
                        status(&format!("{} messages not acknowledged", session.pending()));
                    } else if !session.peer_done() {
                        status("leaving while the friend may still be writing");
                    }
                    // Let the last acknowledgements go out.
                    for f in session.poll_transmit(Instant::now()) {
                        let _ = write_msg(&mut c.send, &f).await;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break End::Done;
                }
            }
        }
    };
    input.chatting.store(false, Ordering::SeqCst);
    retire(old.take());
    if let Some(mut c) = cur {
        match &end {
            End::Done => {
                let _ = c.send.finish();
                c.close(0, b"bye");
            }
            End::FriendLeft => c.stop_tasks(),
            End::Broke(_) => c.close(3, b"path broke"),
        }
    }
    end
}

/// Why the friend's stream ended: a clean close ("bye") or a broken path.
fn why_closed(conn: &quinn::Connection) -> End {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(c)) if c.error_code == 0u32.into() => {
            End::FriendLeft
        }
        Some(e) => End::Broke(e.to_string()),
        // The stream ended but the connection is open: the friend finished.
        None => End::FriendLeft,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> PeerId {
        PeerId([b; 32])
    }

    #[test]
    fn a_moving_friend_is_followed_once_and_the_lower_ids_choice_stands() {
        let (s1, s2, s3) = (id(1), id(2), id(3));
        // On s3, going nowhere: follow to s1.
        assert!(follows(s1, Some(s3), None, true, &[]));
        assert!(follows(s1, Some(s3), None, false, &[]));
        // Already there, or going there: nothing to do.
        assert!(!follows(s1, Some(s1), None, false, &[]));
        assert!(!follows(s1, Some(s3), Some(s1), false, &[]));
        // Not relayed (a direct path is better than any relay).
        assert!(!follows(s1, None, None, false, &[]));
        // A relay that failed this chat is not tried again.
        assert!(!follows(s1, Some(s3), None, false, &[s1]));
        // Both move, to different relays: exactly one side gives way.
        let lower_follows = follows(s1, Some(s3), Some(s2), true, &[]);
        // Moves made to follow are spaced; the latest request waits.
        let t0 = Instant::now();
        let mut f = Follower::default();
        assert_eq!(f.due(t0), None);
        f.asked(s1);
        assert_eq!(f.due(t0), Some(s1));
        f.moved(t0);
        f.asked(s2);
        f.asked(s3);
        assert_eq!(f.due(t0 + FOLLOW_SPACING / 2), None, "too soon");
        assert_eq!(f.due(t0 + FOLLOW_SPACING), Some(s3), "the latest");
        assert_eq!(f.due(t0 + FOLLOW_SPACING * 2), None, "once");
        let higher_follows = follows(s2, Some(s3), Some(s1), false, &[]);
        assert!(!lower_follows && higher_follows);
    }

    #[test]
    fn a_relayed_chat_moves_only_to_a_relay_better_enough_or_after_a_death() {
        let (s1, s2, s3) = (id(1), id(2), id(3));
        let ranking = |relays: Vec<(PeerId, u32)>| Ranking { relays, number: 1 };
        // s1 at 40 ms against s3 at 60: better by 20 ms and a third.
        let r = ranking(vec![(s1, 40_000), (s3, 60_000), (s2, 80_000)]);
        assert_eq!(relocation(&r, Some(s3), false, &[]), Some(s1));
        assert_eq!(relocation(&r, Some(s1), false, &[]), None);
        assert_eq!(relocation(&r, Some(s3), false, &[s1]), None);
        // 55 ms against 60: noise, not a move.
        let r = ranking(vec![(s1, 55_000), (s3, 60_000)]);
        assert_eq!(relocation(&r, Some(s3), false, &[]), None);
        // s3 died: the next ranked one that has not failed.
        let r = ranking(vec![(s3, 60_000), (s1, 61_000), (s2, 80_000)]);
        assert_eq!(relocation(&r, Some(s3), true, &[s3]), Some(s1));
        assert_eq!(relocation(&r, Some(s3), true, &[s3, s1]), Some(s2));
    }
}
