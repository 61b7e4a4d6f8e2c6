//! The attacker of `scripts/bench-abuse.sh`: plays one abusive client
//! population against a running local cluster while a legitimate client
//! (a child process of this one, from another loopback address) measures
//! its register and lookup latencies, then prints one JSON line.
//!
//! ```text
//! abuse ATTACK --server ID@ADDR [--server ..] --admin URL [--admin ..] --pid PID [--pid ..]
//!       [--duration SECS] [--count N] [--legit-requests N] [--legit-bind IP] [--settle SECS]
//! abuse legit --server ID@ADDR --bind IP --duration SECS --requests N     (the legitimate client)
//! ```
//!
//! The first `--server` is the attacked one (and the legitimate client's
//! home); `--admin` and `--pid` are in the same order. Attacks (each stops
//! at its deadline, `--duration`, default 60 s; `--count` scales it):
//! - `baseline`: no attacker, the legitimate client alone;
//! - `fresh-ids`: 50,000 fresh identities from 127.0.1.1, each its own
//!   connection (keys and certificates made before the clock starts),
//!   registering round-robin at every server, 96 at once; in the first
//!   half registered ones are held open (up to 64 per server: live records
//!   and connections pile up), in the second half they are let go (new
//!   identities keep coming);
//! - `held-conns`: 5,000 connections held open to the attacked server, 50
//!   from each of 100 addresses 127.0.2.x (under the 64 per address), plus
//!   100 from the single address 127.0.9.1 (64 expected served), each with
//!   an identity of its own, and 20 with one identity from 127.0.9.2 (4
//!   expected served);
//! - `stream-bomb`: 1,024 connections (64 from each of 127.0.3.1–16, each
//!   its own identity), each
//!   trying a unidirectional stream and a datagram, then keeping 10 stream
//!   slots busy (the server grants 8): frames announcing `MAX_REQUEST`
//!   (2 KiB) with one byte less sent and never finished, 2 KiB announced
//!   and dripped a byte per
//!   500 ms, a `u32::MAX` length with 64 KiB behind it, a valid request
//!   followed by 60 KB of junk never finished;
//! - `notice-flood`: two registered victims (127.0.0.3) that never read
//!   their notices (one with quinn's default windows, one with 64-byte
//!   windows), re-registering whenever closed, while 600 registered
//!   attackers (30 from each of 127.0.4.1–20, homed round-robin on every
//!   server) send `Meet(Id(victim))` 5 times a second each;
//! - `relay-grab`: 3,000 keys (60 from each of 127.0.5.1–50; 300 of them
//!   registered) asking `Relay(..)` for peers they never met, twice a
//!   second each; 64 attacker pairs (8 keys on each of 127.0.6.1–16) that
//!   did meet take what the per-address limit lets them and hold it; at
//!   half time a legitimate pair (127.0.0.4, 127.0.0.5) meets and must get
//!   a relay that carries bytes;
//! - `long-names`: 256 connections (127.0.8.1–4, each its own identity) sending `Meet(Name)` with
//!   64 KiB and 8,000-byte names, `FindName` with 8,000 bytes and
//!   `LookupName` with 64 KiB, each 5 (8,000) or 1 (64 KiB) times a second;
//! - `admin-slowloris`: 2,000 TCP connections to the attacked server's
//!   admin port (100 from each of 127.0.7.1–20): 19 of 20 send nothing,
//!   one in 20 drips a request line a byte a second; each reconnects when
//!   the server lets go.
//!
//! Measured meanwhile: each server's VmRSS every 250 ms (before the attack
//! and the peak until after `--settle`), `/metrics` before and after (the
//! counters' deltas, summed over servers) and every 2 s (gauge peaks, how
//! long the admin endpoint takes to answer), and the attacker's own count
//! of what happened, by kind (`answer:..`, `refused:<code>`,
//! `conn:closed_by_server:..`). Loopback only; every loop bounded by the
//! deadline.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a benchmark reports

mod common;

use anyhow::Context;
use bytes::Bytes;
use chatd::client::{Client, Meeting, Refused};
use chatd::net::driver::CLIENT_ALPN;
use chatd::net::framing::{MAX_REQUEST, encode, read_msg};
use chatd::net::identity::{Keypair, ServerAddr};
use chatd::net::lock;
use chatd::net::tls::{self, Credentials};
use chatd::net::unix_millis;
use common::{percentile, rss_mb};
use overlay::PeerId;
use rendezvous::{FriendRef, NatMapping, PeerRecord, RecordBody, Request, Response};
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep, sleep_until, timeout};

// ----- counting -----

/// What the attacker saw, by kind.
#[derive(Clone, Default)]
struct Counts(Arc<Mutex<BTreeMap<String, u64>>>);

impl Counts {
    fn add(&self, key: impl Into<String>, n: u64) {
        *lock(&self.0).entry(key.into()).or_insert(0) += n;
    }

    fn inc(&self, key: impl Into<String>) {
        self.add(key, 1);
    }

    fn max(&self, key: impl Into<String>, v: u64) {
        let mut m = lock(&self.0);
        let e = m.entry(key.into()).or_insert(0);
        *e = (*e).max(v);
    }

    fn snapshot(&self) -> BTreeMap<String, u64> {
        lock(&self.0).clone()
    }
}

/// Typed refusals and closures by the server, in the attacker's count.
fn refusals(counts: &BTreeMap<String, u64>) -> u64 {
    counts
        .iter()
        .filter(|(k, _)| k.contains("refused:") || k.contains("closed_by_server"))
        .map(|(_, v)| v)
        .sum()
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ----- the shared context of an attack -----

#[derive(Clone)]
struct Ctx {
    servers: Vec<ServerAddr>,
    admins: Vec<SocketAddr>,
    counts: Counts,
    deadline: Instant,
    duration: Duration,
    count: Option<usize>,
    extra: Arc<Mutex<serde_json::Map<String, Value>>>,
}

impl Ctx {
    fn target(&self) -> ServerAddr {
        self.servers[0]
    }

    fn left(&self) -> bool {
        Instant::now() < self.deadline
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    fn extra(&self, key: &str, v: Value) {
        lock(&self.extra).insert(key.to_string(), v);
    }
}

/// 127.0.`base + k / 250`.`1 + k % 250`: the k-th attacker address of a range.
fn addr_in(base: u8, k: usize) -> Ipv4Addr {
    let third = base.saturating_add(u8::try_from(k / 250).unwrap_or(u8::MAX));
    Ipv4Addr::new(127, 0, third, 1 + (k % 250) as u8)
}

/// An id nobody has: a hash of the numbers.
fn nobody(a: usize, b: usize) -> PeerId {
    let mut h = blake3::Hasher::new();
    h.update(b"abuse-nobody");
    h.update(&(a as u64).to_le_bytes());
    h.update(&(b as u64).to_le_bytes());
    PeerId(*h.finalize().as_bytes())
}

// ----- raw QUIC client pieces (the library's Session hides its connection) -----

fn endpoint(ip: Ipv4Addr) -> anyhow::Result<quinn::Endpoint> {
    quinn::Endpoint::client(SocketAddr::new(IpAddr::V4(ip), 0))
        .with_context(|| format!("cannot bind UDP {ip}:0"))
}

fn transport(keep_alive: Option<Duration>) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(keep_alive);
    t.max_idle_timeout(Some(quinn::VarInt::from_u32(10_000).into()));
    Arc::new(t)
}

async fn dial(
    ep: &quinn::Endpoint,
    creds: &Credentials,
    server: ServerAddr,
    transport: &Arc<quinn::TransportConfig>,
) -> anyhow::Result<quinn::Connection> {
    let tls = tls::client_config(creds, server.id.0, CLIENT_ALPN)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
    ));
    cfg.transport_config(transport.clone());
    let connecting = ep.connect_with(cfg, server.addr, tls::SERVER_NAME)?;
    Ok(timeout(Duration::from_secs(5), connecting)
        .await
        .context("handshake timed out")??)
}

/// One attacker connection: waits for a dial slot (freed once connected),
/// then dials the attacked server; `None` past the deadline or when the
/// dial failed (counted).
async fn dial_in_slot(
    ctx: &Ctx,
    ep: &quinn::Endpoint,
    creds: &Credentials,
    t: &Arc<quinn::TransportConfig>,
    sem: &Semaphore,
) -> Option<quinn::Connection> {
    let _permit = sem.acquire().await.ok()?;
    if !ctx.left() {
        return None;
    }
    match dial(ep, creds, ctx.target(), t).await {
        Ok(c) => Some(c),
        Err(_) => {
            ctx.counts.inc("connect_failed");
            None
        }
    }
}

/// What became of one request.
enum Outcome {
    Answer(Response),
    Refused(rendezvous::ErrorCode),
    ConnClosed,
    Timeout,
    Error(&'static str),
}

fn response_name(r: &Response) -> &'static str {
    match r {
        Response::YouAre(_) => "YouAre",
        Response::Registered => "Registered",
        Response::Record(Some(_)) => "Record",
        Response::Record(None) => "NoRecord",
        Response::Servers(_) => "Servers",
        Response::Error(_) => "Error",
        Response::Friend { .. } => "Friend",
        Response::Waiting => "Waiting",
        Response::Relaying => "Relaying",
        Response::Records(r) if r.is_empty() => "NoRecords",
        Response::Records(_) => "Records",
        Response::Noted => "Noted",
        Response::Deposited { .. } => "Deposited",
        Response::Letters { .. } => "Letters",
    }
}

fn kind(o: &Outcome) -> String {
    match o {
        Outcome::Answer(r) => format!("answer:{}", response_name(r)),
        Outcome::Refused(c) => format!("refused:{}", c.label()),
        Outcome::ConnClosed => "conn_closed".into(),
        Outcome::Timeout => "timeout".into(),
        Outcome::Error(e) => format!("error:{e}"),
    }
}

fn classify(e: &dyn std::fmt::Display) -> &'static str {
    let s = format!("{e:#}");
    if s.contains("stopped") {
        "stopped"
    } else if s.contains("reset") {
        "reset"
    } else if s.contains("limit") {
        "over_limit"
    } else if s.contains("ended") || s.contains("finished") || s.contains("early eof") {
        "stream_ended"
    } else {
        "other"
    }
}

fn outcome(
    conn: &quinn::Connection,
    r: Result<anyhow::Result<Response>, tokio::time::error::Elapsed>,
) -> Outcome {
    match r {
        Err(_) if conn.close_reason().is_some() => Outcome::ConnClosed,
        Err(_) => Outcome::Timeout,
        Ok(Ok(Response::Error(e))) => Outcome::Refused(e.code),
        Ok(Ok(resp)) => Outcome::Answer(resp),
        Ok(Err(_)) if conn.close_reason().is_some() => Outcome::ConnClosed,
        Ok(Err(e)) => Outcome::Error(classify(&e)),
    }
}

/// Sends one framed request on a stream of its own (finished) and reads
/// the answer within `wait`.
async fn ask_frame(conn: &quinn::Connection, frame: &[u8], wait: Duration) -> Outcome {
    let fut = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        // A refused oversize frame is stopped by the server: the answer
        // still comes on the receive side.
        let _ = send.write_all(frame).await;
        let _ = send.finish();
        let resp: Response = read_msg(&mut recv).await?;
        anyhow::Ok(resp)
    };
    outcome(conn, timeout(wait, fut).await)
}

async fn ask(conn: &quinn::Connection, req: &Request, wait: Duration) -> Outcome {
    match encode(req) {
        Ok(frame) => ask_frame(conn, &frame, wait).await,
        Err(_) => Outcome::Error("encode"),
    }
}

/// A relay request whose stream stays open (it carries the relay).
async fn relay_open(
    conn: &quinn::Connection,
    friend: PeerId,
    wait: Duration,
) -> (Outcome, Option<(quinn::SendStream, quinn::RecvStream)>) {
    let fut = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&encode(&Request::Relay(friend))?).await?;
        let resp: Response = read_msg(&mut recv).await?;
        anyhow::Ok((resp, send, recv))
    };
    match timeout(wait, fut).await {
        Ok(Ok((Response::Relaying, send, recv))) => {
            (Outcome::Answer(Response::Relaying), Some((send, recv)))
        }
        Ok(Ok((resp, ..))) => (outcome(conn, Ok(Ok(resp))), None),
        Ok(Err(e)) => (outcome(conn, Ok(Err(e))), None),
        Err(e) => (outcome(conn, Err(e)), None),
    }
}

fn close_label(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => format!(
            "closed_by_server:{}:{}",
            c.error_code,
            String::from_utf8_lossy(&c.reason)
        ),
        quinn::ConnectionError::ConnectionClosed(c) => {
            format!("closed_by_server:transport:{}", c.error_code)
        }
        quinn::ConnectionError::TimedOut => "lost:timed_out".into(),
        quinn::ConnectionError::LocallyClosed => "closed_locally".into(),
        quinn::ConnectionError::Reset => "lost:reset".into(),
        other => format!("lost:{other}"),
    }
}

/// Counts how a connection ended, once (not when we closed it).
fn note_end(counts: &Counts, op: &str, conn: &quinn::Connection) {
    if let Some(r) = conn.close_reason()
        && !matches!(r, quinn::ConnectionError::LocallyClosed)
    {
        counts.inc(format!("{op}:conn:{}", close_label(&r)));
    }
}

/// A live registration with its withdrawal, as the library builds it.
fn live_request(kp: &Keypair, home: PeerId, addr: SocketAddr, name: &str) -> Request {
    let now_ms = unix_millis();
    let body = RecordBody {
        peer: kp.id().0,
        name: name.to_string(),
        home_server: home,
        public_addr: Some(addr),
        private_addrs: Vec::new(),
        seq: now_ms,
        expires_at: now_ms / 1000 + 600,
        nat: NatMapping::Unknown,
    };
    let withdrawal = PeerRecord::withdrawal(kp.signing_key(), &body, now_ms / 1000);
    Request::RegisterLive {
        record: PeerRecord::sign(kp.signing_key(), body),
        withdrawal,
    }
}

/// WhoAmI, then a live registration at `server`; counts under `op`.
async fn register_conn(
    ctx: &Ctx,
    conn: &quinn::Connection,
    kp: &Keypair,
    server: ServerAddr,
    name: &str,
    op: &str,
) -> bool {
    let addr = match ask(conn, &Request::WhoAmI, Duration::from_secs(5)).await {
        Outcome::Answer(Response::YouAre(a)) => a,
        o => {
            ctx.counts.inc(format!("{op}:whoami:{}", kind(&o)));
            return false;
        }
    };
    let o = ask(
        conn,
        &live_request(kp, server.id.0, addr, name),
        Duration::from_secs(10),
    )
    .await;
    ctx.counts.inc(format!("{op}:{}", kind(&o)));
    matches!(o, Outcome::Answer(Response::Registered))
}

async fn join_all(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

// ----- attack 1: fresh identities from one address -----

/// Identities made before the clock starts (keys and certificates cost
/// the attacker CPU the servers' handshakes need on a shared machine).
type Identities = Arc<Mutex<Vec<(Keypair, Credentials)>>>;

fn make_identities(n: usize) -> Identities {
    let threads = std::thread::available_parallelism().map_or(2, |t| t.get());
    let out: Identities = Arc::new(Mutex::new(Vec::with_capacity(n)));
    std::thread::scope(|s| {
        for t in 0..threads {
            let out = out.clone();
            s.spawn(move || {
                let mine = n / threads + usize::from(t < n % threads);
                let made: Vec<_> = (0..mine)
                    .filter_map(|_| {
                        let kp = Keypair::generate();
                        Credentials::new(&kp).ok().map(|c| (kp, c))
                    })
                    .collect();
                lock(&out).extend(made);
            });
        }
    });
    out
}

async fn fresh_ids(ctx: Ctx, ids: Identities) -> anyhow::Result<()> {
    let total = lock(&ids).len();
    let ep = endpoint(Ipv4Addr::new(127, 0, 1, 1))?;
    let t = transport(Some(Duration::from_secs(2)));
    let next = Arc::new(AtomicUsize::new(0));
    let held: Arc<Mutex<VecDeque<quinn::Connection>>> = Arc::default();
    let hold_max = 64 * ctx.servers.len();
    let mut workers = Vec::new();
    for _ in 0..96 {
        let (ctx, ep, t, next, held, ids) = (
            ctx.clone(),
            ep.clone(),
            t.clone(),
            next.clone(),
            held.clone(),
            ids.clone(),
        );
        workers.push(tokio::spawn(async move {
            while ctx.left() {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let server = ctx.servers[i % ctx.servers.len()];
                let Some((kp, creds)) = lock(&ids).pop() else {
                    break;
                };
                if ctx.remaining() <= ctx.duration / 2 {
                    // Second half: the held ones go (their records go offline).
                    let gone: Vec<_> = lock(&held).drain(..).collect();
                    for old in gone {
                        note_end(&ctx.counts, "held", &old);
                        old.close(0u32.into(), b"next");
                    }
                }
                ctx.counts.inc("identities_tried");
                let conn = match dial(&ep, &creds, server, &t).await {
                    Ok(c) => c,
                    Err(_) => {
                        ctx.counts.inc("connect_failed");
                        continue;
                    }
                };
                if register_conn(&ctx, &conn, &kp, server, &format!("sybil-{i}"), "register").await
                {
                    // First half: hold them (live records and connections
                    // pile up); second half: let them go (new identities).
                    let first_half = ctx.remaining() > ctx.duration / 2;
                    let cap = if first_half { hold_max } else { 0 };
                    let mut h = lock(&held);
                    h.push_back(conn);
                    while h.len() > cap
                        && let Some(old) = h.pop_front()
                    {
                        note_end(&ctx.counts, "held", &old);
                        old.close(0u32.into(), b"next");
                    }
                } else {
                    // A closed connection was counted by its close reason.
                    note_end(&ctx.counts, "register", &conn);
                    conn.close(0u32.into(), b"refused");
                }
            }
        }));
    }
    join_all(workers).await;
    let held: Vec<_> = lock(&held).drain(..).collect();
    let open = held.iter().filter(|c| c.close_reason().is_none()).count();
    ctx.extra("held_open_at_end", json!(open));
    ctx.extra(
        "identities_left_untried",
        json!(total.saturating_sub(next.load(Ordering::Relaxed))),
    );
    for c in held {
        note_end(&ctx.counts, "held", &c);
        c.close(0u32.into(), b"done");
    }
    Ok(())
}

// ----- attack 2: held connections -----

async fn held_conns(ctx: Ctx) -> anyhow::Result<()> {
    let total = ctx.count.unwrap_or(5_000);
    let per_ip = 50;
    let t = transport(Some(Duration::from_secs(2)));
    let target = ctx.target();
    let conns: Arc<Mutex<Vec<(&'static str, quinn::Connection)>>> = Arc::default();
    let sem = Arc::new(Semaphore::new(48));
    let mut plan: Vec<(Ipv4Addr, usize, &'static str)> = (0..total.div_ceil(per_ip))
        .map(|k| (addr_in(2, k), per_ip.min(total - k * per_ip), "many"))
        .collect();
    plan.push((Ipv4Addr::new(127, 0, 9, 1), 100, "one_address"));
    plan.push((Ipv4Addr::new(127, 0, 9, 2), 20, "one_identity"));
    let mut endpoints = Vec::new();
    let mut tasks = Vec::new();
    let started = Instant::now();
    for (ip, n, op) in plan {
        let ep = endpoint(ip)?;
        // A fresh identity per connection (they cost an attacker nothing),
        // except for the group that tests the per-identity cap.
        let shared = Arc::new(Credentials::new(&Keypair::generate())?);
        for _ in 0..n {
            let creds = if op == "one_identity" {
                shared.clone()
            } else {
                Arc::new(Credentials::new(&Keypair::generate())?)
            };
            let (ctx, ep, t, sem, conns) = (
                ctx.clone(),
                ep.clone(),
                t.clone(),
                sem.clone(),
                conns.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let Ok(_permit) = sem.acquire().await else {
                    return;
                };
                if !ctx.left() {
                    return;
                }
                match dial(&ep, &creds, target, &t).await {
                    Ok(conn) => {
                        let o = ask(&conn, &Request::WhoAmI, Duration::from_secs(5)).await;
                        ctx.counts.inc(format!("{op}:whoami:{}", kind(&o)));
                        lock(&conns).push((op, conn));
                    }
                    Err(_) => ctx.counts.inc(format!("{op}:connect_failed")),
                }
            }));
        }
        endpoints.push(ep);
    }
    join_all(tasks).await;
    ctx.extra(
        "connect_all_s",
        json!(round1(started.elapsed().as_secs_f64())),
    );
    // Hold them to the deadline, then check which are still served.
    sleep_until(ctx.deadline - Duration::from_secs(5).min(ctx.duration / 4)).await;
    let conns: Vec<_> = lock(&conns).drain(..).collect();
    let mut checks = Vec::new();
    for (op, conn) in conns {
        let ctx = ctx.clone();
        checks.push(tokio::spawn(async move {
            if conn.close_reason().is_some() {
                note_end(&ctx.counts, op, &conn);
                return;
            }
            let o = ask(&conn, &Request::WhoAmI, Duration::from_secs(4)).await;
            ctx.counts.inc(format!("{op}:at_end:{}", kind(&o)));
            conn.close(0u32.into(), b"done");
        }));
    }
    join_all(checks).await;
    drop(endpoints);
    Ok(())
}

// ----- attack 3: stream-buffer bombs -----

#[derive(Clone, Copy)]
enum Bomb {
    Stall,
    Drip,
    Huge,
    JunkAfter,
}

impl Bomb {
    fn name(self) -> &'static str {
        match self {
            Bomb::Stall => "stall_8k",
            Bomb::Drip => "drip",
            Bomb::Huge => "huge_len",
            Bomb::JunkAfter => "junk_after",
        }
    }
}

async fn stream_bomb(ctx: Ctx) -> anyhow::Result<()> {
    let total = ctx.count.unwrap_or(1_024);
    let t = transport(Some(Duration::from_secs(2)));
    let sem = Arc::new(Semaphore::new(48));
    let mut tasks = Vec::new();
    let mut ep = None;
    for k in 0..total {
        if k % 64 == 0 {
            ep = Some(endpoint(addr_in(3, k / 64))?);
        }
        let creds = Arc::new(Credentials::new(&Keypair::generate())?);
        let Some(ep) = ep.clone() else {
            continue;
        };
        let (ctx, t, sem) = (ctx.clone(), t.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let Some(conn) = dial_in_slot(&ctx, &ep, &creds, &t, &sem).await else {
                return;
            };
            ctx.counts.inc("connected");
            bomb_conn(&ctx, &conn).await;
            note_end(&ctx.counts, "bomb", &conn);
            conn.close(0u32.into(), b"done");
        }));
    }
    join_all(tasks).await;
    Ok(())
}

async fn bomb_conn(ctx: &Ctx, conn: &quinn::Connection) {
    match timeout(Duration::from_secs(1), conn.open_uni()).await {
        Err(_) => ctx.counts.inc("uni:refused:not_granted"),
        Ok(Ok(mut s)) => {
            ctx.counts.inc("uni:granted");
            let _ = s.write_all(&[0u8; 1024]).await;
        }
        Ok(Err(_)) => ctx.counts.inc("uni:error"),
    }
    match conn.send_datagram(Bytes::from_static(&[0u8; 1000])) {
        Ok(()) => ctx.counts.inc("datagram:sent"),
        Err(_) => ctx.counts.inc("datagram:refused:not_supported"),
    }
    let mut slots = Vec::new();
    for slot in 0..10 {
        let mode = match slot {
            4 | 5 => Bomb::Drip,
            6 => Bomb::Huge,
            7 => Bomb::JunkAfter,
            _ => Bomb::Stall,
        };
        let (ctx, conn) = (ctx.clone(), conn.clone());
        slots.push(tokio::spawn(async move {
            bomb_streams(&ctx, &conn, mode).await
        }));
    }
    join_all(slots).await;
}

async fn bomb_streams(ctx: &Ctx, conn: &quinn::Connection, mode: Bomb) {
    let name = mode.name();
    let mut n = 0usize;
    while ctx.left() && conn.close_reason().is_none() {
        let (mut send, mut recv) = match timeout(Duration::from_secs(3), conn.open_bi()).await {
            Err(_) => {
                ctx.counts.inc("open_bi:waited_3s");
                continue;
            }
            Ok(Err(_)) => break,
            Ok(Ok(s)) => s,
        };
        n += 1;
        ctx.counts.inc(format!("{name}:streams"));
        let opened = Instant::now();
        let write = async {
            match mode {
                Bomb::Stall => {
                    send.write_all(&(MAX_REQUEST as u32).to_be_bytes()).await?;
                    send.write_all(&vec![7u8; MAX_REQUEST - 1]).await?;
                }
                Bomb::Drip => {
                    send.write_all(&(MAX_REQUEST as u32).to_be_bytes()).await?;
                    for _ in 0..MAX_REQUEST - 1 {
                        sleep(Duration::from_millis(500)).await;
                        send.write_all(&[7u8]).await?;
                    }
                }
                Bomb::Huge => {
                    send.write_all(&u32::MAX.to_be_bytes()).await?;
                    send.write_all(&[7u8; 65_536]).await?;
                }
                Bomb::JunkAfter => {
                    send.write_all(&encode(&Request::Relay(nobody(n, 7)))?)
                        .await?;
                    send.write_all(&[7u8; 60_000]).await?;
                }
            }
            // Never finished: the server must give up on its own.
            std::future::pending::<()>().await;
            anyhow::Ok(())
        };
        let read = read_msg::<Response>(&mut recv);
        tokio::pin!(write, read);
        let answer = timeout(ctx.remaining(), async {
            let mut writing = true;
            loop {
                tokio::select! {
                    r = &mut read => return r,
                    _ = &mut write, if writing => writing = false,
                }
            }
        })
        .await;
        let held = opened.elapsed();
        match answer {
            Ok(Ok(Response::Error(e))) => {
                ctx.counts.inc(format!("{name}:refused:{}", e.code.label()));
                ctx.counts
                    .max(format!("{name}:held_ms_max"), held.as_millis() as u64);
            }
            Ok(Ok(r)) => ctx
                .counts
                .inc(format!("{name}:answer:{}", response_name(&r))),
            Ok(Err(_)) if conn.close_reason().is_some() => break,
            Ok(Err(e)) => ctx.counts.inc(format!("{name}:error:{}", classify(&e))),
            Err(_) => ctx.counts.inc(format!("{name}:unanswered_at_deadline")),
        }
        if matches!(mode, Bomb::Huge | Bomb::JunkAfter) {
            sleep(Duration::from_millis(200)).await;
        }
    }
}

// ----- attack 4: a victim that never reads its notices -----

async fn notice_flood(ctx: Ctx) -> anyhow::Result<()> {
    let n_attackers = ctx.count.unwrap_or(600);
    let victims = [Keypair::generate(), Keypair::generate()];
    let ids: Vec<PeerId> = victims.iter().map(|k| k.id().0).collect();
    let vep = endpoint(Ipv4Addr::new(127, 0, 0, 3))?;
    let mut tasks = Vec::new();
    for (i, kp) in victims.into_iter().enumerate() {
        let mut t = quinn::TransportConfig::default();
        t.keep_alive_interval(Some(Duration::from_secs(2)));
        t.max_idle_timeout(Some(quinn::VarInt::from_u32(10_000).into()));
        let tag = if i == 0 {
            "victim_default_windows"
        } else {
            // Notices cannot even be written: 64-byte windows.
            t.stream_receive_window(quinn::VarInt::from_u32(64));
            t.receive_window(quinn::VarInt::from_u32(64));
            "victim_tiny_windows"
        };
        let (ctx, ep, t) = (ctx.clone(), vep.clone(), Arc::new(t));
        tasks.push(tokio::spawn(async move {
            victim(&ctx, &ep, &kp, &t, tag).await;
        }));
    }
    // The victims register first.
    sleep(Duration::from_secs(1)).await;
    let t = transport(Some(Duration::from_secs(2)));
    let sem = Arc::new(Semaphore::new(32));
    let mut ep = None;
    for i in 0..n_attackers {
        if i % 30 == 0 {
            ep = Some(endpoint(addr_in(4, i / 30))?);
        }
        let Some(ep) = ep.clone() else { continue };
        let server = ctx.servers[i % ctx.servers.len()];
        let (ctx, t, sem, ids) = (ctx.clone(), t.clone(), sem.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            flood_attacker(&ctx, &ep, &t, &sem, server, i, &ids).await;
        }));
    }
    join_all(tasks).await;
    Ok(())
}

async fn victim(
    ctx: &Ctx,
    ep: &quinn::Endpoint,
    kp: &Keypair,
    t: &Arc<quinn::TransportConfig>,
    tag: &str,
) {
    let Ok(creds) = Credentials::new(kp) else {
        return;
    };
    let server = ctx.target();
    while ctx.left() {
        let conn = match dial(ep, &creds, server, t).await {
            Ok(c) => c,
            Err(_) => {
                ctx.counts.inc(format!("{tag}:connect_failed"));
                sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if !register_conn(ctx, &conn, kp, server, tag, &format!("{tag}:register")).await {
            conn.close(0u32.into(), b"retry");
            sleep(Duration::from_millis(500)).await;
            continue;
        }
        let since = Instant::now();
        // Never accepts a unidirectional stream: notices pile up unread.
        tokio::select! {
            e = conn.closed() => {
                ctx.counts.inc(format!("{tag}:conn:{}", close_label(&e)));
                ctx.counts.max(format!("{tag}:online_ms_max"), since.elapsed().as_millis() as u64);
            }
            _ = sleep_until(ctx.deadline) => {
                ctx.counts.inc(format!("{tag}:open_at_end"));
                conn.close(0u32.into(), b"done");
            }
        }
    }
}

async fn flood_attacker(
    ctx: &Ctx,
    ep: &quinn::Endpoint,
    t: &Arc<quinn::TransportConfig>,
    sem: &Semaphore,
    server: ServerAddr,
    i: usize,
    victims: &[PeerId],
) {
    let kp = Keypair::generate();
    let Ok(creds) = Credentials::new(&kp) else {
        return;
    };
    let mut k = 0usize;
    while ctx.left() {
        let conn = {
            let Ok(_permit) = sem.acquire().await else {
                return;
            };
            let Ok(conn) = dial(ep, &creds, server, t).await else {
                ctx.counts.inc("attacker:connect_failed");
                sleep(Duration::from_secs(1)).await;
                continue;
            };
            if !register_conn(
                ctx,
                &conn,
                &kp,
                server,
                &format!("flood-{i}"),
                "attacker:register",
            )
            .await
            {
                conn.close(0u32.into(), b"retry");
                sleep(Duration::from_secs(1)).await;
                continue;
            }
            conn
        };
        while ctx.left() && conn.close_reason().is_none() {
            let v = victims[k % victims.len()];
            k += 1;
            let o = ask(
                &conn,
                &Request::Meet(FriendRef::Id(v)),
                Duration::from_secs(5),
            )
            .await;
            ctx.counts.inc(format!("meet:{}", kind(&o)));
            sleep(Duration::from_millis(200)).await;
        }
        note_end(&ctx.counts, "attacker", &conn);
        conn.close(0u32.into(), b"done");
    }
}

// ----- attack 5: relay-slot grab -----

async fn relay_grab(ctx: Ctx) -> anyhow::Result<()> {
    let keys = ctx.count.unwrap_or(3_000);
    let t = transport(Some(Duration::from_secs(2)));
    let sem = Arc::new(Semaphore::new(48));
    let mut tasks = Vec::new();
    let mut ep = None;
    for i in 0..keys {
        if i % 60 == 0 {
            ep = Some(endpoint(addr_in(5, i / 60))?);
        }
        let Some(ep) = ep.clone() else { continue };
        // 30 on each of the first 10 addresses register first (within
        // the 32 live records an address may have).
        let register = i / 60 < 10 && i % 60 < 30;
        let (ctx, t, sem) = (ctx.clone(), t.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            relay_unmet(&ctx, &ep, &t, &sem, i, register).await;
        }));
    }
    for ip in 0..16 {
        let ep = endpoint(addr_in(6, ip))?;
        for pair in 0..4 {
            let (ctx, ep, t) = (ctx.clone(), ep.clone(), t.clone());
            tasks.push(tokio::spawn(async move {
                met_pair(&ctx, &ep, &t, ip * 4 + pair).await;
            }));
        }
    }
    let legit = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            sleep(ctx.duration / 2).await;
            let r = legit_relay(&ctx).await;
            match r {
                Ok(ms) => {
                    ctx.extra("legit_relay_ok", json!(true));
                    ctx.extra("legit_relay_ms", json!(round1(ms)));
                }
                Err(e) => {
                    ctx.extra("legit_relay_ok", json!(false));
                    ctx.extra("legit_relay_error", json!(format!("{e:#}")));
                }
            }
        })
    };
    tasks.push(legit);
    join_all(tasks).await;
    Ok(())
}

async fn relay_unmet(
    ctx: &Ctx,
    ep: &quinn::Endpoint,
    t: &Arc<quinn::TransportConfig>,
    sem: &Semaphore,
    i: usize,
    register: bool,
) {
    let kp = Keypair::generate();
    let Ok(creds) = Credentials::new(&kp) else {
        return;
    };
    let op = if register {
        "unmet_registered"
    } else {
        "unregistered"
    };
    let conn = {
        let Ok(_permit) = sem.acquire().await else {
            return;
        };
        if !ctx.left() {
            return;
        }
        let Ok(conn) = dial(ep, &creds, ctx.target(), t).await else {
            ctx.counts.inc(format!("{op}:connect_failed"));
            return;
        };
        if register {
            register_conn(
                ctx,
                &conn,
                &kp,
                ctx.target(),
                &format!("grab-{i}"),
                "unmet_registered:register",
            )
            .await;
        }
        conn
    };
    let mut k = 0;
    while ctx.left() && conn.close_reason().is_none() {
        // A peer nobody has, or another attacker's neighbor number.
        let friend = nobody(i, k);
        k += 1;
        let o = ask(&conn, &Request::Relay(friend), Duration::from_secs(5)).await;
        ctx.counts.inc(format!("{op}:relay:{}", kind(&o)));
        sleep(Duration::from_millis(500)).await;
    }
    note_end(&ctx.counts, op, &conn);
    conn.close(0u32.into(), b"done");
}

/// Two attacker keys that meet, then take relay streams and hold them.
async fn met_pair(ctx: &Ctx, ep: &quinn::Endpoint, t: &Arc<quinn::TransportConfig>, n: usize) {
    let server = ctx.target();
    let (ka, kb) = (Keypair::generate(), Keypair::generate());
    let (Ok(ca), Ok(cb)) = (Credentials::new(&ka), Credentials::new(&kb)) else {
        return;
    };
    let (Ok(a), Ok(b)) = (
        dial(ep, &ca, server, t).await,
        dial(ep, &cb, server, t).await,
    ) else {
        ctx.counts.inc("met:connect_failed");
        return;
    };
    let ra = register_conn(ctx, &a, &ka, server, &format!("pair-a-{n}"), "met:register").await;
    let rb = register_conn(ctx, &b, &kb, server, &format!("pair-b-{n}"), "met:register").await;
    let mut held = Vec::new();
    if ra && rb {
        let o = ask(
            &a,
            &Request::Meet(FriendRef::Id(kb.id().0)),
            Duration::from_secs(5),
        )
        .await;
        ctx.counts.inc(format!("met:meet:{}", kind(&o)));
        let wait = Duration::from_secs(20);
        let ((oa, sa), (ob, sb)) = tokio::join!(
            relay_open(&a, kb.id().0, wait),
            relay_open(&b, ka.id().0, wait)
        );
        ctx.counts.inc(format!("met:relay:{}", kind(&oa)));
        ctx.counts.inc(format!("met:relay:{}", kind(&ob)));
        held.extend(sa);
        held.extend(sb);
        // More than the limits allow: a second pair of streams for the
        // same friends, then a third request.
        sleep(Duration::from_secs(3)).await;
        let ((oa, sa), (ob, sb)) = tokio::join!(
            relay_open(&a, kb.id().0, wait),
            relay_open(&b, ka.id().0, wait)
        );
        ctx.counts.inc(format!("met:relay_more:{}", kind(&oa)));
        ctx.counts.inc(format!("met:relay_more:{}", kind(&ob)));
        held.extend(sa);
        held.extend(sb);
        let (o, s) = relay_open(&a, kb.id().0, Duration::from_secs(3)).await;
        ctx.counts.inc(format!("met:relay_third:{}", kind(&o)));
        held.extend(s);
    }
    sleep_until(ctx.deadline).await;
    ctx.counts
        .add("met:relay_streams_held_at_end", held.len() as u64);
    note_end(&ctx.counts, "met", &a);
    note_end(&ctx.counts, "met", &b);
    a.close(0u32.into(), b"done");
    b.close(0u32.into(), b"done");
}

/// A legitimate pair that met gets a relay that carries bytes; the time
/// from the meeting to the relay.
async fn legit_relay(ctx: &Ctx) -> anyhow::Result<f64> {
    let server = ctx.target();
    let a = Client::new(Keypair::generate(), "127.0.0.4:0".parse()?)?;
    let b = Client::new(Keypair::generate(), "127.0.0.5:0".parse()?)?;
    let sa = a.connect(server).await?;
    let sb = b.connect(server).await?;
    let ttl = Duration::from_secs(600);
    let addr = sa.who_am_i().await?;
    sa.register(a.record(&sa, "legit-a", addr, unix_millis(), ttl))
        .await?;
    let addr = sb.who_am_i().await?;
    sb.register(b.record(&sb, "legit-b", addr, unix_millis(), ttl))
        .await?;
    let start = Instant::now();
    match sa.meet(FriendRef::Id(b.id())).await? {
        Meeting::Found(..) => {}
        other => anyhow::bail!("the legit pair did not meet: {other:?}"),
    }
    let (ra, rb) = tokio::join!(sa.relay(b.id()), sb.relay(a.id()));
    let ((mut send, _keep_a), (_keep_b, mut recv)) = (ra?, rb?);
    let took = ms(start.elapsed());
    let msg = b"legit bytes through the relay";
    send.write_all(msg).await?;
    let mut got = vec![0u8; msg.len()];
    timeout(Duration::from_secs(5), recv.read_exact(&mut got))
        .await
        .context("no bytes through the relay within 5 s")??;
    anyhow::ensure!(&got[..] == msg, "the relay carried other bytes");
    sa.close();
    sb.close();
    Ok(took)
}

// ----- attack 6: long names -----

async fn long_names(ctx: Ctx) -> anyhow::Result<()> {
    let total = ctx.count.unwrap_or(256);
    let t = transport(Some(Duration::from_secs(2)));
    let sem = Arc::new(Semaphore::new(48));
    let big = "x".repeat(64 * 1024);
    let mid = "y".repeat(8_000);
    let frames: Arc<Vec<(&'static str, Vec<u8>, Duration)>> = Arc::new(vec![
        (
            "meet_64k",
            encode(&Request::Meet(FriendRef::Name(big.clone())))?,
            Duration::from_secs(1),
        ),
        (
            "meet_8000",
            encode(&Request::Meet(FriendRef::Name(mid.clone())))?,
            Duration::from_millis(200),
        ),
        (
            "find_name_8000",
            encode(&Request::FindName(mid))?,
            Duration::from_millis(200),
        ),
        (
            "lookup_name_64k",
            encode(&Request::LookupName(big))?,
            Duration::from_secs(1),
        ),
    ]);
    let mut tasks = Vec::new();
    let mut ep = None;
    for k in 0..total {
        if k % 64 == 0 {
            ep = Some(endpoint(addr_in(8, k / 64))?);
        }
        let creds = Arc::new(Credentials::new(&Keypair::generate())?);
        let Some(ep) = ep.clone() else {
            continue;
        };
        let (ctx, t, sem, frames) = (ctx.clone(), t.clone(), sem.clone(), frames.clone());
        tasks.push(tokio::spawn(async move {
            let Some(conn) = dial_in_slot(&ctx, &ep, &creds, &t, &sem).await else {
                return;
            };
            let mut loops = Vec::new();
            for f in 0..frames.len() {
                let (ctx, conn, frames) = (ctx.clone(), conn.clone(), frames.clone());
                loops.push(tokio::spawn(async move {
                    let (op, frame, pace) = &frames[f];
                    while ctx.left() && conn.close_reason().is_none() {
                        let o = ask_frame(&conn, frame, Duration::from_secs(5)).await;
                        ctx.counts.inc(format!("{op}:{}", kind(&o)));
                        sleep(*pace).await;
                    }
                }));
            }
            join_all(loops).await;
            note_end(&ctx.counts, "names", &conn);
            conn.close(0u32.into(), b"done");
        }));
    }
    join_all(tasks).await;
    Ok(())
}

// ----- attack 7: admin slowloris -----

async fn admin_slowloris(ctx: Ctx) -> anyhow::Result<()> {
    let total = ctx.count.unwrap_or(2_000);
    let admin = *ctx
        .admins
        .first()
        .context("admin-slowloris needs --admin")?;
    let mut tasks = Vec::new();
    for i in 0..total {
        let ip = addr_in(7, i / 100);
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            loris(&ctx, ip, admin, i % 20 == 0).await;
        }));
        if i % 100 == 99 {
            // Do not open them all in one instant (the SYN backlog).
            sleep(Duration::from_millis(20)).await;
        }
    }
    join_all(tasks).await;
    Ok(())
}

async fn loris(ctx: &Ctx, ip: Ipv4Addr, admin: SocketAddr, drip: bool) {
    let op = if drip { "drip" } else { "silent" };
    let line = b"GET /status HTTP/1.1\r\nHost: chatd\r\n\r\n";
    while ctx.left() {
        let sock = match tokio::net::TcpSocket::new_v4()
            .and_then(|s| s.bind(SocketAddr::new(IpAddr::V4(ip), 0)).map(|()| s))
        {
            Ok(s) => s,
            Err(_) => {
                ctx.counts.inc(format!("{op}:socket_failed"));
                sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut s = match timeout(Duration::from_secs(5), sock.connect(admin)).await {
            Ok(Ok(s)) => s,
            _ => {
                ctx.counts.inc(format!("{op}:connect_failed"));
                sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        ctx.counts.inc(format!("{op}:connected"));
        let since = Instant::now();
        let mut buf = [0u8; 512];
        let mut sent = 0;
        let end = loop {
            if drip && sent < line.len() {
                if s.write_all(&line[sent..=sent]).await.is_err() {
                    break "write_failed";
                }
                sent += 1;
            }
            let wait = if drip {
                Duration::from_secs(1)
            } else {
                ctx.remaining()
            };
            match timeout(wait.min(ctx.remaining()), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break "closed_by_server",
                Ok(Ok(_)) => break "answered",
                Err(_) if !ctx.left() => break "open_at_end",
                Err(_) => {}
            }
        };
        ctx.counts.inc(format!("{op}:{end}"));
        if end == "answered" {
            // A slow client, not a flood: wait before the next connection.
            sleep(Duration::from_secs(1)).await;
        }
        if end == "closed_by_server" {
            ctx.counts.max(
                format!("{op}:held_ms_max"),
                since.elapsed().as_millis() as u64,
            );
        }
    }
}

// ----- the legitimate client (a child process) -----

async fn connect_retry(
    client: &Client,
    server: ServerAddr,
) -> anyhow::Result<chatd::client::Session> {
    let mut last = anyhow::anyhow!("not tried");
    for _ in 0..5 {
        match client.connect(server).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
        sleep(Duration::from_millis(500)).await;
    }
    Err(last)
}

fn error_kind(e: &anyhow::Error) -> String {
    match e.downcast_ref::<Refused>() {
        Some(r) => format!("refused:{}", r.code().label()),
        None => format!("error:{}", classify(e)),
    }
}

/// Percentiles of (seconds into the run, milliseconds) samples, and the
/// five slowest with when they happened.
fn summary(samples: &[(f64, f64)], failures: u64) -> Value {
    let mut lat: Vec<f64> = samples.iter().map(|s| s.1).collect();
    lat.sort_by(f64::total_cmp);
    let mut slow = samples.to_vec();
    slow.sort_by(|a, b| b.1.total_cmp(&a.1));
    slow.truncate(5);
    let slow: Vec<[f64; 2]> = slow.iter().map(|(t, l)| [round1(*t), round1(*l)]).collect();
    json!({
        "n": lat.len(),
        "failures": failures,
        "p50_ms": round1(percentile(&lat, 0.5)),
        "p99_ms": round1(percentile(&lat, 0.99)),
        "max_ms": round1(lat.last().copied().unwrap_or(f64::NAN)),
        "slowest_at_s_ms": slow,
    })
}

/// Registers (a fresh `seq` each time) and looks itself up, `requests`
/// times spread evenly over `duration`; a failed request counts with the
/// time it took (10 s at most).
async fn legit(
    server: ServerAddr,
    bind: IpAddr,
    duration: Duration,
    requests: usize,
) -> anyhow::Result<Value> {
    let client = Client::new(Keypair::generate(), SocketAddr::new(bind, 0))?;
    let ttl = Duration::from_secs(600);
    let errors = Counts::default();
    let mut session = connect_retry(&client, server).await?;
    let mut addr = session.who_am_i().await?;
    if let Err(e) = session
        .register(client.record(&session, "legit", addr, unix_millis(), ttl))
        .await
    {
        errors.inc(format!("first_register:{}", error_kind(&e)));
    }
    let start = Instant::now();
    let step = duration / u32::try_from(requests.max(1)).unwrap_or(u32::MAX);
    let (mut reg, mut look) = (Vec::new(), Vec::new());
    let (mut reg_fail, mut look_fail, mut reconnects) = (0u64, 0u64, 0u64);
    for i in 0..requests {
        sleep_until(start + step * u32::try_from(i).unwrap_or(u32::MAX)).await;
        if session.is_closed() {
            reconnects += 1;
            let again = async {
                let s = connect_retry(&client, server).await?;
                let a = s.who_am_i().await?;
                anyhow::Ok((s, a))
            };
            match timeout(Duration::from_secs(10), again).await {
                Ok(Ok((s, a))) => (session, addr) = (s, a),
                _ => {
                    errors.inc("reconnect_failed");
                    reg.push((start.elapsed().as_secs_f64(), 10_000.0));
                    look.push((start.elapsed().as_secs_f64(), 10_000.0));
                    reg_fail += 1;
                    look_fail += 1;
                    continue;
                }
            }
        }
        let t = Instant::now();
        let record = client.record(&session, "legit", addr, unix_millis(), ttl);
        match timeout(Duration::from_secs(10), session.register(record)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                reg_fail += 1;
                errors.inc(format!("register:{}", error_kind(&e)));
            }
            Err(_) => {
                reg_fail += 1;
                errors.inc("register:timeout");
            }
        }
        reg.push((start.elapsed().as_secs_f64(), ms(t.elapsed())));
        let t = Instant::now();
        match timeout(Duration::from_secs(10), session.lookup(client.id())).await {
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => {
                look_fail += 1;
                errors.inc("lookup:not_found");
            }
            Ok(Err(e)) => {
                look_fail += 1;
                errors.inc(format!("lookup:{}", error_kind(&e)));
            }
            Err(_) => {
                look_fail += 1;
                errors.inc("lookup:timeout");
            }
        }
        look.push((start.elapsed().as_secs_f64(), ms(t.elapsed())));
    }
    session.close();
    Ok(json!({
        "register": summary(&reg, reg_fail),
        "lookup": summary(&look, look_fail),
        "reconnects": reconnects,
        "errors": errors.snapshot(),
    }))
}

/// Starts the legitimate client as a child process (its own runtime and
/// scheduling, away from the attacker's tasks).
fn spawn_legit(
    server: ServerAddr,
    bind: IpAddr,
    duration: Duration,
    requests: usize,
) -> anyhow::Result<std::process::Child> {
    Ok(std::process::Command::new(std::env::current_exe()?)
        .args([
            "legit",
            "--server",
            &server.to_string(),
            "--bind",
            &bind.to_string(),
            "--duration",
            &duration.as_secs_f64().to_string(),
            "--requests",
            &requests.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null())
        .spawn()?)
}

/// Waits for the child until `limit` (then kills exactly it) and parses
/// its JSON line.
async fn wait_legit(mut child: std::process::Child, limit: Instant) -> Value {
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < limit => sleep(Duration::from_millis(200)).await,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return json!({"error": "the legitimate client did not finish in time"});
            }
        }
    }
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    out.lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| json!({"error": "no JSON from the legitimate client"}))
}

// ----- server-side measurements -----

/// Datagrams the kernel dropped on the UDP socket bound to `port` (its
/// receive buffer was full): the `drops` column of /proc/net/udp.
fn udp_drops(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (_, p) = f.get(1)?.split_once(':')?;
        (u16::from_str_radix(p, 16).ok()? == port).then(|| f.last()?.parse().ok())?
    })
}

#[derive(Default)]
struct Rss {
    before: Vec<f64>,
    peak: Vec<f64>,
}

async fn http_get(addr: SocketAddr, path: &str, wait: Duration) -> anyhow::Result<String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: chatd\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut body = Vec::new();
        s.read_to_end(&mut body).await?;
        anyhow::Ok(String::from_utf8_lossy(&body).into_owned())
    };
    let text = timeout(wait, fut)
        .await
        .context("admin endpoint timed out")??;
    let (_, body) = text.split_once("\r\n\r\n").context("no HTTP body")?;
    Ok(body.to_string())
}

type Metrics = BTreeMap<String, f64>;

fn parse_metrics(text: &str) -> Metrics {
    text.lines()
        .filter(|l| l.starts_with("chatd_"))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

async fn scrape(admin: SocketAddr) -> Option<Metrics> {
    for _ in 0..3 {
        if let Ok(body) = http_get(admin, "/metrics", Duration::from_secs(10)).await {
            return Some(parse_metrics(&body));
        }
        sleep(Duration::from_millis(500)).await;
    }
    None
}

const GAUGES: &[&str] = &[
    "chatd_client_connections",
    "chatd_clients_registered",
    "chatd_peer_table_records",
    "chatd_waiting_meets",
    "chatd_relay_sessions",
    "chatd_pending_acks",
];

/// Counters worth reporting (prefixes).
const COUNTERS: &[&str] = &[
    "chatd_client",
    "chatd_clients_",
    "chatd_notices",
    "chatd_relay",
    "chatd_registrations",
    "chatd_meetings",
    "chatd_rendezvous",
    "chatd_server_messages_dropped",
    "chatd_server_streams_refused",
    "chatd_overlay_handshake_failures",
    "chatd_event_receiver_lagged",
    "chatd_store_timeouts",
    "chatd_broadcast_failures",
];

fn deltas(before: &[Option<Metrics>], after: &[Option<Metrics>]) -> (BTreeMap<String, f64>, f64) {
    let mut sum: BTreeMap<String, f64> = BTreeMap::new();
    for (b, a) in before.iter().zip(after) {
        let Some(a) = a else { continue };
        for (k, v) in a {
            if !k.contains("_total") || !COUNTERS.iter().any(|p| k.starts_with(p)) {
                continue;
            }
            let was = b.as_ref().and_then(|b| b.get(k)).copied().unwrap_or(0.0);
            if *v - was > 0.0 {
                *sum.entry(k.clone()).or_insert(0.0) += *v - was;
            }
        }
    }
    let refused = sum
        .iter()
        .filter(|(k, _)| {
            k.starts_with("chatd_client_requests_refused_total")
                || k.starts_with("chatd_clients_refused_total")
                || k.starts_with("chatd_clients_closed_not_reading_total")
                || k.starts_with("chatd_relay_refused_total")
        })
        .map(|(_, v)| v)
        .sum();
    (sum, refused)
}

// ----- main -----

struct Args {
    attack: String,
    servers: Vec<ServerAddr>,
    admins: Vec<SocketAddr>,
    pids: Vec<u32>,
    duration: Duration,
    count: Option<usize>,
    legit_requests: usize,
    legit_bind: IpAddr,
    settle: Duration,
}

fn parse_admin(url: &str) -> anyhow::Result<SocketAddr> {
    let hostport = url.trim_start_matches("http://").trim_end_matches('/');
    hostport
        .parse()
        .with_context(|| format!("--admin {url}: want http://HOST:PORT"))
}

fn parse_args() -> anyhow::Result<Args> {
    let mut it = std::env::args().skip(1);
    let attack = it
        .next()
        .context("usage: abuse ATTACK --server ID@ADDR ... (see the file's doc)")?;
    let mut a = Args {
        attack,
        servers: Vec::new(),
        admins: Vec::new(),
        pids: Vec::new(),
        duration: Duration::from_secs(60),
        count: None,
        legit_requests: 100,
        legit_bind: "127.0.0.2".parse()?,
        settle: Duration::from_secs(3),
    };
    while let Some(flag) = it.next() {
        let v = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--server" => a.servers.push(v.parse()?),
            "--admin" => a.admins.push(parse_admin(&v)?),
            "--pid" => a.pids.push(v.parse()?),
            "--duration" => a.duration = Duration::from_secs_f64(v.parse()?),
            "--count" => a.count = Some(v.parse()?),
            "--legit-requests" | "--requests" => a.legit_requests = v.parse()?,
            "--legit-bind" | "--bind" => a.legit_bind = v.parse()?,
            "--settle" => a.settle = Duration::from_secs_f64(v.parse()?),
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    anyhow::ensure!(!a.servers.is_empty(), "at least one --server ID@ADDR");
    for s in &a.servers {
        anyhow::ensure!(s.addr.ip().is_loopback(), "{s}: loopback servers only");
    }
    for s in &a.admins {
        anyhow::ensure!(s.ip().is_loopback(), "{s}: loopback admin endpoints only");
    }
    Ok(a)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if args.attack == "legit" {
        let v = legit(
            args.servers[0],
            args.legit_bind,
            args.duration,
            args.legit_requests,
        )
        .await?;
        println!("{v}");
        return Ok(());
    }
    let attack = args.attack.clone();
    anyhow::ensure!(
        [
            "baseline",
            "fresh-ids",
            "held-conns",
            "stream-bomb",
            "notice-flood",
            "relay-grab",
            "long-names",
            "admin-slowloris"
        ]
        .contains(&attack.as_str()),
        "unknown attack {attack}"
    );

    let identities = (attack == "fresh-ids").then(|| {
        let n = args.count.unwrap_or(50_000);
        let t = std::time::Instant::now();
        let ids = make_identities(n);
        eprintln!(
            "abuse: made {n} identities in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        ids
    });

    // Memory before anything, then sampled every 250 ms.
    let rss = Arc::new(Mutex::new(Rss {
        before: args
            .pids
            .iter()
            .map(|p| rss_mb(*p).unwrap_or(f64::NAN))
            .collect(),
        peak: args
            .pids
            .iter()
            .map(|p| rss_mb(*p).unwrap_or(0.0))
            .collect(),
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (rss, stop, pids) = (rss.clone(), stop.clone(), args.pids.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for (i, p) in pids.iter().enumerate() {
                    if let Some(mb) = rss_mb(*p) {
                        let mut r = lock(&rss);
                        r.peak[i] = r.peak[i].max(mb);
                    }
                }
                sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let ports: Vec<u16> = args.servers.iter().map(|s| s.addr.port()).collect();
    let drops_before: Vec<Option<u64>> = ports.iter().map(|p| udp_drops(*p)).collect();
    let mut before = Vec::new();
    for a in &args.admins {
        before.push(scrape(*a).await);
    }
    // Gauges and the admin endpoint's answer time, every 2 s.
    let gauge_peaks: Arc<Mutex<BTreeMap<String, Vec<f64>>>> = Arc::default();
    let scrape_ms: Arc<Mutex<(Vec<f64>, u64)>> = Arc::default();
    let scraper = {
        let (stop, admins, peaks, times) = (
            stop.clone(),
            args.admins.clone(),
            gauge_peaks.clone(),
            scrape_ms.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for (i, a) in admins.iter().enumerate() {
                    let t = Instant::now();
                    match http_get(*a, "/metrics", Duration::from_secs(5)).await {
                        Ok(body) => {
                            lock(&times).0.push(ms(t.elapsed()));
                            let m = parse_metrics(&body);
                            let mut p = lock(&peaks);
                            for g in GAUGES {
                                let v = m.get(*g).copied().unwrap_or(0.0);
                                let e = p
                                    .entry((*g).to_string())
                                    .or_insert_with(|| vec![0.0; admins.len()]);
                                e[i] = e[i].max(v);
                            }
                        }
                        Err(_) => lock(&times).1 += 1,
                    }
                }
                sleep(Duration::from_secs(2)).await;
            }
        })
    };

    let start = Instant::now();
    let ctx = Ctx {
        servers: args.servers.clone(),
        admins: args.admins.clone(),
        counts: Counts::default(),
        deadline: start + args.duration,
        duration: args.duration,
        count: args.count,
        extra: Arc::default(),
    };
    let child = spawn_legit(
        args.servers[0],
        args.legit_bind,
        args.duration,
        args.legit_requests,
    )?;
    eprintln!(
        "abuse: {attack} for {:?} against {}",
        args.duration, args.servers[0]
    );
    let run = {
        let ctx = ctx.clone();
        async move {
            match attack.as_str() {
                "fresh-ids" => fresh_ids(ctx, identities.unwrap_or_default()).await,
                "held-conns" => held_conns(ctx).await,
                "stream-bomb" => stream_bomb(ctx).await,
                "notice-flood" => notice_flood(ctx).await,
                "relay-grab" => relay_grab(ctx).await,
                "long-names" => long_names(ctx).await,
                "admin-slowloris" => admin_slowloris(ctx).await,
                _ => {
                    sleep_until(ctx.deadline).await;
                    Ok(())
                }
            }
        }
    };
    let attack_error = match timeout(args.duration + Duration::from_secs(30), run).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(_) => Some("the attack overran its deadline by 30 s".to_string()),
    };
    let legit = wait_legit(child, start + args.duration + Duration::from_secs(60)).await;
    let attack_secs = start.elapsed().as_secs_f64();
    sleep(args.settle).await;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let _ = scraper.await;
    let mut after = Vec::new();
    for a in &args.admins {
        after.push(scrape(*a).await);
    }
    let (server_counters, refused_server) = deltas(&before, &after);
    let udp_drops_delta: Vec<Option<u64>> = ports
        .iter()
        .zip(&drops_before)
        .map(|(p, b)| Some(udp_drops(*p)?.saturating_sub((*b)?)))
        .collect();

    let (rss_before, rss_peak) = {
        let r = lock(&rss);
        (r.before.clone(), r.peak.clone())
    };
    let growth: Vec<f64> = rss_before
        .iter()
        .zip(&rss_peak)
        .map(|(b, p)| round1(p - b))
        .collect();
    let max_growth = growth.iter().copied().fold(f64::NAN, f64::max);
    let attacker = ctx.counts.snapshot();
    let refused = refusals(&attacker);
    let p99 = |k: &str| legit[k]["p99_ms"].as_f64().map(round1);
    let (mut times, failures) = lock(&scrape_ms).clone();
    times.sort_by(f64::total_cmp);
    let mut extra = lock(&ctx.extra).clone();
    if let Some(e) = attack_error {
        extra.insert("attack_error".into(), json!(e));
    }
    // Summary fields first (the object is written by hand to keep that order).
    let head = [
        ("name", json!(args.attack)),
        ("rss_growth_mb", json!(round1(max_growth))),
        ("refused", json!(refused)),
        (
            "refused_server",
            json!(refused_server.max(0.0).round() as u64),
        ),
        ("legit_register_p99_ms", json!(p99("register"))),
        ("legit_lookup_p99_ms", json!(p99("lookup"))),
        ("rss_growth_mb_per_server", json!(growth)),
        (
            "rss_mb_before",
            json!(rss_before.iter().map(|x| round1(*x)).collect::<Vec<_>>()),
        ),
        (
            "rss_mb_peak",
            json!(rss_peak.iter().map(|x| round1(*x)).collect::<Vec<_>>()),
        ),
        ("attack_s", json!(round1(attack_secs))),
        ("udp_drops_per_server", json!(udp_drops_delta)),
        ("legit", legit),
        ("extra", Value::Object(extra)),
        ("attacker", json!(attacker)),
        ("server_counters", json!(server_counters)),
        ("server_gauge_peaks", json!(*lock(&gauge_peaks))),
        (
            "admin_scrape",
            json!({"n": times.len(), "failures": failures,
                   "p50_ms": round1(percentile(&times, 0.5)), "p99_ms": round1(percentile(&times, 0.99))}),
        ),
    ];
    let body: Vec<String> = head
        .iter()
        .map(|(k, v)| format!("{}:{}", json!(k), v))
        .collect();
    println!("{{{}}}", body.join(","));
    Ok(())
}
