//! `chatd room`: a group chat with a host (seed 002) over the one-to-one
//! machinery. The room's protocol is the sans-IO core in the `room`
//! crate; this is its driver:
//!
//! - one home server, as for a chat (registered under our name, moved
//!   when it dies: [`keep_home`]);
//! - one **link** per other member ([`link`]): meet it through the servers
//!   (the invitation: asked again with exponential backoff, 1 s doubling
//!   to 30 s, and at once when the servers say it came online, until
//!   `--wait`), connect (relay first, upgraded to direct when punching
//!   succeeds — the one-to-one [`connect`]), then carry postcard-encoded
//!   [`room::Msg`]s on the path's stream; when the path breaks, register
//!   anew and meet again;
//! - the room core fed with what links deliver, the delays they measure
//!   (QUIC's RTT of each path, every 2 s), stdin lines and time; its
//!   outputs go to the links (dropped when a link is down: the core
//!   retries everything) and to stdout as `SENDER<TAB>TEXT`, in the
//!   room's order.
//!
//! A member is a key: one listed by id is a member at once; one listed by
//! name becomes one when a path to it proves the key (pinned like a
//! chat friend's). Names shown are the ones members registered with.

#![allow(clippy::print_stdout)] // the room's messages are the command's output

use super::run::{
    Asked, Early, Home, Homes, Live, Options, Path, REFRESH_CHECK, REHOME_RETRY, Tagged, ask_meet,
    connect, describe, establish_first, friend_matches, pin_name, resolve,
};
use crate::client::friends::KnownFriends;
use crate::client::{Client, status};
use crate::net::framing::write_msg;
use overlay::{PeerId, Time};
use rendezvous::{FriendRef, PeerRecord};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What `chatd room` was asked to do.
pub struct RoomOptions {
    /// The room's name: members of one room all give the same.
    pub room: String,
    /// The other members (names or ids).
    pub members: Vec<FriendRef>,
    /// Everything a chat needs (its `friend` is not used).
    pub chat: Options,
}

/// Most members of a room, us included.
pub const MAX_MEMBERS: usize = 32;
/// Longest room name, in bytes.
pub const MAX_ROOM_NAME: usize = 64;
/// Longest frame on a room link: a vote's tail ([`room::MAX_TAIL`]
/// entries of up to [`room::MAX_CHARS`] characters, 4 bytes each at
/// most) with room to spare. Only a member's proven key gets a link.
pub const ROOM_FRAME_MAX: usize = 9 << 20;
/// The first wait between invitations (meet requests) to a member, and
/// the longest.
const INVITE_FIRST: Duration = Duration::from_secs(1);
const INVITE_MAX: Duration = Duration::from_secs(30);
/// How often the paths' delays go to the room core.
const DELAYS_EVERY: Duration = Duration::from_secs(2);
/// After our input ended, how long we wait for our messages to be in the
/// room's order before leaving anyway (they are listed then).
const LEAVE_WAIT: Duration = Duration::from_secs(15);
/// How long a member online but not connected yet may keep us from
/// starting a new room.
const START_HOLD: Duration = Duration::from_secs(30);
/// Messages queued for one link; more are dropped (the core resends).
const LINK_QUEUE: usize = 256;

/// A frame on a room link (SPEC §11.10). The variant numbers continue the
/// chat stream's (`chat::Frame`): the side that opened the path sends
/// `Frame::Hello` (variant 2) first, read here as [`Wire::Hello`].
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub enum Wire {
    /// A chat message: not on a room link.
    NotRoom0,
    /// A chat acknowledgement: not on a room link.
    NotRoom1,
    /// The path's first frame (from its opener).
    Hello,
    /// A chat goodbye: not on a room link.
    NotRoom3,
    /// Each side's first frame of its own: the room it is in.
    Room {
        /// The room's name.
        room: String,
    },
    /// A message of the room's protocol.
    Msg(room::Msg<PeerId>),
}

/// What links tell the room.
enum LinkEvent {
    /// A path to member `id` is up: send to it through `tx`.
    Up {
        id: PeerId,
        name: String,
        tx: mpsc::Sender<room::Msg<PeerId>>,
    },
    /// Member `id` registered as `name` (its record, as the servers gave
    /// it: what the room prints for it).
    Named(PeerId, String),
    /// The path's RTT now.
    Rtt(PeerId, Duration),
    /// A message from member `id`.
    Msg(PeerId, room::Msg<PeerId>),
    /// The path to `id` ended, or did not come up.
    Down(PeerId),
}

/// What the links share.
struct Ctx {
    client: Client,
    homes: Homes,
    opts: Options,
    room: String,
    known: Mutex<KnownFriends>,
    home: tokio::sync::watch::Receiver<Home>,
}

/// Runs the room until stdin ends (and our messages are in the room's
/// order, or [`LEAVE_WAIT`] passed) or we are interrupted.
pub async fn run(opts: RoomOptions) -> anyhow::Result<()> {
    let RoomOptions {
        room,
        members,
        chat,
    } = opts;
    check(&room, &chat.name, &members)?;
    let client = Client::new_accepting(chat.keypair.clone(), chat.bind)?;
    let homes = Homes::new(&chat.servers, chat.bind);
    let home = establish_first(&client, &chat, &homes).await?;
    let (home_tx, home_rx) = tokio::sync::watch::channel(home);
    let known = Mutex::new(KnownFriends::load(chat.known.path())?);
    let ctx = Arc::new(Ctx {
        client,
        homes,
        opts: chat,
        room,
        known,
        home: home_rx,
    });
    let keeper = tokio::spawn(keep_home(ctx.clone(), home_tx));
    let res = in_room(&ctx, members).await;
    keeper.abort();
    ctx.client.close_all().await;
    res
}

/// The arguments make sense: a room name, members other than us, each
/// once, not too many.
pub fn check(room: &str, name: &str, members: &[FriendRef]) -> anyhow::Result<()> {
    if room.is_empty() || room.len() > MAX_ROOM_NAME {
        anyhow::bail!("the room's name must be 1 to {MAX_ROOM_NAME} bytes");
    }
    if members.is_empty() {
        anyhow::bail!("a room needs at least one --member besides you");
    }
    if members.len() + 1 > MAX_MEMBERS {
        anyhow::bail!(
            "a room has at most {MAX_MEMBERS} members (you and {} others)",
            MAX_MEMBERS - 1
        );
    }
    for (i, m) in members.iter().enumerate() {
        if members[..i].contains(m) {
            anyhow::bail!("--member {} is given twice", describe(m));
        }
        if *m == FriendRef::Name(name.to_string()) {
            anyhow::bail!("--member {name} is you (your --name): list the others only");
        }
    }
    Ok(())
}

/// Keeps a home server: moves to another when it dies, refreshes the
/// record and the RTTs as a chat does. Runs until aborted.
async fn keep_home(ctx: Arc<Ctx>, tx: tokio::sync::watch::Sender<Home>) {
    let mut refresh = tokio::time::interval(REFRESH_CHECK);
    refresh.tick().await;
    loop {
        let home = tx.borrow().clone();
        tokio::select! {
            _ = home.session.closed() => loop {
                match ctx.homes.rehome(&ctx.client, &ctx.opts, &home.session).await {
                    Ok(h) => {
                        tx.send_replace(h);
                        break;
                    }
                    Err(e) => {
                        status(&format!("{e:#}; trying again in {REHOME_RETRY:?}"));
                        tokio::time::sleep(REHOME_RETRY).await;
                    }
                }
            },
            _ = refresh.tick() => match ctx.homes.upkeep(&ctx.client, &ctx.opts, &home, None).await {
                Ok(Some(h)) => {
                    tx.send_replace(h);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "upkeep failed; moving to another server");
                    home.session.close();
                }
            },
        }
    }
}

/// The room core, fed by the links, stdin and time.
async fn in_room(ctx: &Arc<Ctx>, members: Vec<FriendRef>) -> anyhow::Result<()> {
    let me = ctx.client.id();
    let wanted: Vec<FriendRef> = {
        let known = crate::net::lock(&ctx.known);
        let accept = ctx.opts.accept_new_key;
        members.iter().map(|m| resolve(&known, accept, m)).collect()
    };
    let ids: Vec<PeerId> = wanted
        .iter()
        .filter_map(|m| match m {
            FriendRef::Id(id) => Some(*id),
            FriendRef::Name(_) => None,
        })
        .collect();
    let cfg = room::Config {
        // Long enough for the first paths to come up (punching included)
        // before a member decides the room is new.
        join_wait: ctx.opts.direct_timeout.max(Duration::from_secs(2)) + Duration::from_secs(1),
        ..room::Config::default()
    };
    let t0 = Instant::now();
    let now = || Time::ZERO + t0.elapsed();
    let mut core = room::Room::new(me, &ids, cfg, now(), rand::random());
    status(&format!(
        "in room {} with {} other member(s); waiting for them",
        ctx.room,
        wanted.len()
    ));
    let (events_tx, mut events) = mpsc::channel::<LinkEvent>(1024);
    let mut links = tokio::task::JoinSet::new();
    for (listed, m) in members.iter().zip(wanted) {
        links.spawn(link(ctx.clone(), listed.clone(), m, events_tx.clone()));
    }
    drop(events_tx);
    let mut names: BTreeMap<PeerId, String> = BTreeMap::new();
    names.insert(me, ctx.opts.name.clone());
    let mut paths: BTreeMap<PeerId, mpsc::Sender<room::Msg<PeerId>>> = BTreeMap::new();
    let mut rtts: BTreeMap<PeerId, Duration> = BTreeMap::new();
    let mut lines = crate::client::stdin_lines();
    let mut input_open = true;
    let mut leave_by: Option<tokio::time::Instant> = None;
    let mut interrupts = crate::client::interrupts();
    let mut delays = tokio::time::interval(DELAYS_EVERY);
    let mut shown = Shown::default();
    // Members online whose paths are not up yet: while there are any (for
    // at most START_HOLD), we do not start a new room — two members that
    // each started one before hearing of the other would print two
    // different sequences.
    let mut connecting = std::collections::BTreeSet::new();
    loop {
        core.hold_start(!connecting.is_empty() && t0.elapsed() < START_HOLD);
        let wake = tokio::time::Instant::now() + core.poll_timeout(now()).saturating_since(now());
        tokio::select! {
            line = lines.recv(), if input_open => match line {
                Some(line) => typed(&mut core, now(), &line),
                None => {
                    input_open = false;
                    leave_by = Some(tokio::time::Instant::now() + LEAVE_WAIT);
                }
            },
            Some(ev) = events.recv() => match ev {
                LinkEvent::Up { id, name, tx } => {
                    names.insert(id, name);
                    core.add_member(id);
                    paths.insert(id, tx);
                    connecting.remove(&id);
                }
                LinkEvent::Named(id, name) => {
                    names.insert(id, name);
                    core.add_member(id);
                    connecting.insert(id);
                }
                LinkEvent::Rtt(id, rtt) => {
                    rtts.insert(id, rtt);
                }
                LinkEvent::Msg(from, msg) => {
                    tracing::debug!(from = %name_of(&names, from), msg = %summary(&msg), "room: in");
                    core.handle(now(), room::Input::Recv { from, msg });
                }
                LinkEvent::Down(id) => {
                    connecting.remove(&id);
                    paths.remove(&id);
                    rtts.remove(&id);
                }
            },
            _ = delays.tick() => {
                if !rtts.is_empty() {
                    let d = rtts.iter().map(|(m, r)| (*m, *r)).collect();
                    core.handle(now(), room::Input::Delays(d));
                }
            }
            _ = interrupts.recv() => {
                status("interrupted: leaving the room");
                break;
            }
            () = tokio::time::sleep_until(wake) => core.handle(now(), room::Input::Tick),
        }
        while let Some(out) = core.poll_output() {
            match out {
                room::Output::Send { to, msg } => {
                    tracing::debug!(to = %name_of(&names, to), msg = %summary(&msg), up = paths.contains_key(&to), "room: out");
                    if let Some(tx) = paths.get(&to) {
                        let _ = tx.try_send(msg);
                    }
                }
                room::Output::Deliver { sender, text, .. } => {
                    println!("{}\t{text}", name_of(&names, sender));
                }
                room::Output::Event(e) => shown.say(e, &names, me),
            }
        }
        if let Some(by) = leave_by
            && (core.pending() == 0 || tokio::time::Instant::now() >= by)
        {
            break;
        }
    }
    links.abort_all();
    match core.pending() {
        0 => Ok(()),
        n => anyhow::bail!("left the room with {n} message(s) of yours not in its order"),
    }
}

/// A line typed: `/history N` pages back, anything else is a message.
fn typed(core: &mut room::Room<PeerId>, now: Time, line: &str) {
    if let Some(rest) = line.strip_prefix("/history") {
        let n = rest.trim().parse::<u32>().unwrap_or(20).clamp(1, 1_000);
        core.handle(now, room::Input::History(n));
    } else {
        core.handle(now, room::Input::Post(line.to_string()));
    }
}

/// A room message in a few words (for debug logs).
fn summary(m: &room::Msg<PeerId>) -> String {
    match m {
        room::Msg::Append(a) => format!(
            "append e{} prev {:?} +{} commit {}",
            a.epoch,
            a.prev,
            a.entries.len(),
            a.commit
        ),
        room::Msg::Appended { epoch, ok, matched } => {
            format!("appended e{epoch} ok {ok} matched {matched}")
        }
        room::Msg::Post { id, .. } => format!("post {}", id.n),
        room::Msg::Delays(d) => format!("delays {}", d.len()),
        room::Msg::Hello { epoch, last } => format!("hello e{epoch} last {last:?}"),
        room::Msg::RequestVote {
            pre, epoch, last, ..
        } => format!("request-vote pre {pre} e{epoch} last {last:?}"),
        room::Msg::Vote {
            pre,
            epoch,
            granted,
            ..
        } => format!("vote pre {pre} e{epoch} granted {granted}"),
        room::Msg::Ineligible { epoch } => format!("ineligible e{epoch}"),
    }
}

fn name_of(names: &BTreeMap<PeerId, String>, id: PeerId) -> String {
    names
        .get(&id)
        .cloned()
        .unwrap_or_else(|| crate::client::short_id(&id))
}

/// The room's events in words, each state said once.
#[derive(Default)]
struct Shown {
    no_majority: Option<(usize, usize)>,
}

impl Shown {
    fn say(&mut self, e: room::Event<PeerId>, names: &BTreeMap<PeerId, String>, me: PeerId) {
        if !matches!(e, room::Event::NoMajority { .. }) && !matches!(e, room::Event::History { .. })
        {
            self.no_majority = None;
        }
        match e {
            room::Event::Host(h) if h == me => {
                status(&format!("host is {} (you)", name_of(names, h)));
            }
            room::Event::Host(h) => status(&format!("host is {}", name_of(names, h))),
            room::Event::Candidate(epoch) => status(&format!(
                "no host: asking the others to make you host (epoch {epoch})"
            )),
            room::Event::Ineligible(epoch) => status(&format!(
                "no majority for you as host (epoch {epoch}); the next candidate tries"
            )),
            room::Event::NoMajority { reachable, active } => {
                if self.no_majority != Some((reachable, active)) {
                    self.no_majority = Some((reachable, active));
                    status(&format!(
                        "no majority: {reachable} of {active} members reachable; waiting"
                    ));
                }
            }
            room::Event::Joined(m) => status(&format!("{} joined the room", name_of(names, m))),
            room::Event::Missed(n) => status(&format!(
                "{n} earlier message(s) are no longer in the room's history"
            )),
            room::Event::History { entries, more } => {
                for (i, sender, text) in entries {
                    status(&format!("history #{i}: {}\t{text}", name_of(names, sender)));
                }
                status(if more {
                    "history: /history again for older messages"
                } else {
                    "history: that is the oldest kept"
                });
            }
            room::Event::Refused(why) => status(&format!("not sent: {why}")),
        }
    }
}

/// One other member: meet, connect, carry room messages, again after a
/// break. Ends when the member does not come online within `--wait`.
async fn link(
    ctx: Arc<Ctx>,
    listed: FriendRef,
    mut wanted: FriendRef,
    events: mpsc::Sender<LinkEvent>,
) {
    let mut seen_seq = 0;
    loop {
        let (friend, start_in) = match meet(&ctx, &wanted, seen_seq).await {
            Ok(f) => f,
            Err(e) => {
                status(&format!("{e:#}"));
                return;
            }
        };
        seen_seq = friend.body.seq;
        let named = LinkEvent::Named(friend.body.peer, friend.body.name.clone());
        if events.send(named).await.is_err() {
            return;
        }
        let home = ctx.home.borrow().clone();
        let start = start_in.min(super::run::MAX_START_DELAY);
        let connected = connect(
            &ctx.client,
            &ctx.homes,
            &home,
            &friend,
            start,
            ctx.opts.direct_timeout,
            Early::default(),
        )
        .await;
        match connected {
            Ok((path, upgrade)) => {
                pin(&ctx, &listed, &friend);
                wanted = FriendRef::Id(friend.body.peer);
                let why = carry(&ctx, &friend, path, upgrade, &events).await;
                let _ = events.send(LinkEvent::Down(friend.body.peer)).await;
                status(&format!(
                    "path to {} ended ({why}); meeting again",
                    friend.body.name
                ));
            }
            Err(e) => {
                let _ = events.send(LinkEvent::Down(friend.body.peer)).await;
                status(&format!(
                    "no path to {}: {e:#}; meeting again",
                    friend.body.name
                ));
            }
        }
        // A fresh record (new addresses, newer seq): the member waits for
        // one, as we wait for theirs.
        let home = ctx.home.borrow().clone();
        if !home.session.is_closed()
            && let Err(e) = ctx.homes.reregister(&ctx.client, &ctx.opts, &home).await
        {
            tracing::debug!(error = %e, "home server did not take the new record");
            home.session.close();
        }
    }
}

/// After a path proved a member's key: pin the name it was listed by.
fn pin(ctx: &Ctx, listed: &FriendRef, friend: &PeerRecord) {
    if let FriendRef::Name(name) = listed {
        pin_name(&mut crate::net::lock(&ctx.known), name, friend);
    }
}

/// Meets a member (its record newer than `seen_seq`): asks the home
/// server, then waits for the notice that it came online, asking again
/// with exponential backoff ([`INVITE_FIRST`] to [`INVITE_MAX`]) until
/// `--wait` passed.
async fn meet(
    ctx: &Ctx,
    wanted: &FriendRef,
    seen_seq: u64,
) -> anyhow::Result<(PeerRecord, Duration)> {
    let deadline = tokio::time::Instant::now() + ctx.opts.wait;
    let mut backoff = INVITE_FIRST;
    let mut home_rx = ctx.home.clone();
    let mut said_waiting = false;
    loop {
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "{} did not come online within {:?}",
                describe(wanted),
                ctx.opts.wait
            );
        }
        let home = home_rx.borrow_and_update().clone();
        if home.session.is_closed() {
            // The keeper moves us to another server.
            let _ = tokio::time::timeout(REHOME_RETRY, home_rx.changed()).await;
            continue;
        }
        match ask_meet(&home, wanted, seen_seq).await? {
            Asked::Found(r, start_in) => return Ok((r, start_in)),
            Asked::NotYet => {}
            Asked::RateLimited(wait, _) => {
                backoff = backoff.max(wait.unwrap_or(backoff)).min(INVITE_MAX);
            }
            Asked::NoAnswer => continue,
        }
        if !said_waiting {
            said_waiting = true;
            status(&format!(
                "invited {}; waiting for it to come online",
                describe(wanted)
            ));
        }
        let until = (tokio::time::Instant::now() + backoff).min(deadline);
        let takes = |r: &PeerRecord| friend_matches(wanted, r) && r.body.seq > seen_seq;
        match home.inbox.friend(takes, until).await {
            Ok(Some((record, start_in))) => {
                super::run::say_found(&record);
                return Ok((record, start_in));
            }
            Ok(None) => backoff = (backoff * 2).min(INVITE_MAX),
            Err(()) => home.session.close(),
        }
    }
}

/// Carries room messages over `path` (and the direct path `upgrade`
/// brings, when it comes) until it ends; says why.
async fn carry(
    ctx: &Ctx,
    friend: &PeerRecord,
    path: Path,
    upgrade: Option<super::run::Upgrade<'_>>,
    events: &mpsc::Sender<LinkEvent>,
) -> String {
    let id = friend.body.peer;
    let name = &friend.body.name;
    let (frame_tx, mut frames) = mpsc::channel::<Tagged<Wire>>(64);
    status(&format!("connected {} to {name}", path.kind));
    let mut cur = Live::start_with(path, 0, &frame_tx, ROOM_FRAME_MAX);
    let hello = Wire::Room {
        room: ctx.room.clone(),
    };
    if let Err(e) = write_msg(&mut cur.send, &hello).await {
        cur.close(2, b"write failed");
        return format!("cannot write: {e:#}");
    }
    let (out_tx, mut out) = mpsc::channel::<room::Msg<PeerId>>(LINK_QUEUE);
    let mut joined = false;
    let mut upgrade = upgrade;
    let mut rtt = tokio::time::interval(Duration::from_secs(1));
    let why = loop {
        let upgrading = async {
            match upgrade.as_mut() {
                Some(u) => u.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some((pid, f)) = frames.recv() => match f {
                None if pid == cur.id => {
                    break cur
                        .conn
                        .close_reason()
                        .map_or_else(|| "the stream ended".to_string(), |r| r.to_string());
                }
                None | Some(Wire::Hello) => {}
                Some(Wire::Room { room }) if room == ctx.room => {
                    if !joined {
                        joined = true;
                        let up = LinkEvent::Up { id, name: name.clone(), tx: out_tx.clone() };
                        if events.send(up).await.is_err() {
                            break "leaving".into();
                        }
                    }
                }
                Some(Wire::Room { room }) => {
                    status(&format!("{name} is in room {room:?}, not {:?}", ctx.room));
                    break "another room".into();
                }
                Some(Wire::Msg(m)) if joined => {
                    if events.send(LinkEvent::Msg(id, m)).await.is_err() {
                        break "leaving".into();
                    }
                }
                Some(_) => tracing::debug!(friend = %name, "a frame that is not the room's: dropped"),
            },
            Some(m) = out.recv() => {
                if let Err(e) = write_msg(&mut cur.send, &Wire::Msg(m)).await {
                    break format!("cannot write: {e:#}");
                }
            }
            r = upgrading => {
                upgrade = None;
                if let Ok(path) = r {
                    let mut next = Live::start_with(path, cur.id + 1, &frame_tx, ROOM_FRAME_MAX);
                    if write_msg(&mut next.send, &hello).await.is_ok() {
                        status(&format!("upgraded to {} with {name}", next.kind));
                        let was = std::mem::replace(&mut cur, next);
                        was.close(4, b"upgraded");
                    } else {
                        next.close(2, b"write failed");
                    }
                }
            }
            _ = rtt.tick() => {
                if joined {
                    let _ = events.try_send(LinkEvent::Rtt(id, cur.conn.rtt()));
                }
            }
        }
    };
    cur.close(2, b"link ended");
    why
}
