//! A tiny deterministic network of `rendezvous::Server`s for the tests:
//! broadcasts reach every other server, direct messages their target, all
//! at once (or held back, to test what happens when they do not arrive),
//! and what clients get back is recorded.

#![allow(dead_code)] // each test binary uses its own subset

use ed25519_dalek::SigningKey;
use overlay::{PeerId, Time};
use rendezvous::server::{Config, ConnId, Input, Now, Output, ReqId, Server};
use rendezvous::{
    FriendRef, LatencyVector, NatMapping, Notice, PeerRecord, RecordBody, Request, Response,
    ServerMsg,
};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

pub const UNIX0: u64 = 1_700_000_000_000;

pub fn key(seed: u64) -> (SigningKey, PeerId) {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[31] = 0x5a;
    let k = SigningKey::from_bytes(&bytes);
    let id = PeerId(k.verifying_key().to_bytes());
    (k, id)
}

/// A client connection in the test network.
#[derive(Clone, Copy, Debug)]
pub struct Client {
    pub server: usize,
    pub conn: ConnId,
    pub seed: u64,
    pub addr: SocketAddr,
}

impl Client {
    pub fn id(&self) -> PeerId {
        key(self.seed).1
    }
}

pub struct Net {
    pub servers: Vec<Server>,
    pub now: Now,
    pub responses: Vec<(usize, ConnId, ReqId, Response)>,
    pub notices: Vec<(usize, ConnId, Notice)>,
    pub closes: Vec<(usize, ConnId, &'static str)>,
    pub relay_pairs: Vec<(usize, Output)>,
    pub relay_stops: Vec<(usize, u64)>,
    /// Every direct message sent: (from server, to, message).
    pub sent: Vec<(usize, PeerId, ServerMsg)>,
    pub broadcasts: usize,
    /// Direct messages to these servers are dropped (and broadcasts too).
    pub unreachable: BTreeSet<usize>,
    /// Direct messages of these kinds are held (not delivered).
    pub hold_stored: bool,
    next_conn: ConnId,
    next_req: ReqId,
}

impl Net {
    /// `n` servers with `cfg`, each an overlay neighbor of every other.
    pub fn new(n: usize, cfg: Config) -> Net {
        let now = Now {
            mono: Time::from_secs(1),
            unix_ms: UNIX0,
        };
        let mut servers: Vec<Server> = (0..n)
            .map(|i| {
                let (k, id) = key(1000 + i as u64);
                Server::new(id, k, cfg.clone(), now, i as u64)
            })
            .collect();
        let ids: Vec<PeerId> = servers.iter().map(|s| s.id()).collect();
        for s in servers.iter_mut() {
            for id in &ids {
                if *id != s.id() {
                    s.handle(now, Input::NeighborUp(*id));
                }
            }
        }
        let mut net = Net {
            servers,
            now,
            responses: Vec::new(),
            notices: Vec::new(),
            closes: Vec::new(),
            relay_pairs: Vec::new(),
            relay_stops: Vec::new(),
            sent: Vec::new(),
            broadcasts: 0,
            unreachable: BTreeSet::new(),
            hold_stored: false,
            next_conn: 1,
            next_req: 1,
        };
        net.tick();
        net
    }

    pub fn index_of(&self, id: &PeerId) -> Option<usize> {
        self.servers.iter().position(|s| s.id() == *id)
    }

    /// Moves time forward.
    pub fn advance(&mut self, d: Duration) {
        self.now.mono = self.now.mono + d;
        self.now.unix_ms += d.as_millis() as u64;
    }

    /// Ticks every server, then delivers everything.
    pub fn tick(&mut self) {
        for i in 0..self.servers.len() {
            let now = self.now;
            self.servers[i].handle(now, Input::Tick);
        }
        self.pump();
    }

    /// Advances in 100 ms steps for `d`, ticking each time.
    pub fn run_for(&mut self, d: Duration) {
        let steps = d.as_millis() / 100;
        for _ in 0..steps {
            self.advance(Duration::from_millis(100));
            self.tick();
        }
    }

    pub fn input(&mut self, server: usize, input: Input) {
        let now = self.now;
        self.servers[server].handle(now, input);
        self.pump();
    }

    /// Delivers outputs until nothing moves (bounded).
    pub fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for i in 0..self.servers.len() {
                let outs: Vec<Output> = self.servers[i].drain_outputs().collect();
                for o in outs {
                    moved = true;
                    self.route(i, o);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the network did not settle");
    }

    fn route(&mut self, from: usize, o: Output) {
        let now = self.now;
        match o {
            Output::Broadcast(payload) => {
                self.broadcasts += 1;
                let origin = self.servers[from].id();
                for j in 0..self.servers.len() {
                    if j != from
                        && !self.unreachable.contains(&j)
                        && !self.unreachable.contains(&from)
                    {
                        self.servers[j].handle(
                            now,
                            Input::Delivery {
                                origin,
                                payload: payload.clone(),
                            },
                        );
                    }
                }
            }
            Output::ToServer { to, msg, .. } => {
                self.sent.push((from, to, msg.clone()));
                let held = self.hold_stored && matches!(msg, ServerMsg::Stored { .. });
                if let Some(j) = self.index_of(&to)
                    && !held
                    && !self.unreachable.contains(&j)
                    && !self.unreachable.contains(&from)
                {
                    let origin = self.servers[from].id();
                    self.servers[j].handle(now, Input::FromServer { from: origin, msg });
                }
            }
            Output::Respond {
                conn,
                req,
                response,
            } => self.responses.push((from, conn, req, response)),
            Output::Notify { conn, notice } => self.notices.push((from, conn, notice)),
            Output::Close { conn, reason, .. } => self.closes.push((from, conn, reason)),
            Output::RelayStop { session } => self.relay_stops.push((from, session)),
            o @ Output::RelayPair { .. } => self.relay_pairs.push((from, o)),
        }
    }

    /// Connects client `seed` from `ip` to `server`.
    pub fn connect(&mut self, server: usize, seed: u64, ip: &str) -> Client {
        let conn = self.next_conn;
        self.next_conn += 1;
        let addr: SocketAddr = format!("{ip}:{}", 20_000 + conn % 40_000).parse().unwrap();
        self.input(
            server,
            Input::ClientConnected {
                conn,
                peer: key(seed).1,
                addr,
            },
        );
        Client {
            server,
            conn,
            seed,
            addr,
        }
    }

    /// Sends a request; returns the response if one came at once.
    pub fn ask(&mut self, c: &Client, request: Request) -> Option<Response> {
        let req = self.send(c, request);
        self.response(c, req)
    }

    /// Sends a request and returns its id (the answer may come later).
    pub fn send(&mut self, c: &Client, request: Request) -> ReqId {
        let req = self.next_req;
        self.next_req += 1;
        self.input(
            c.server,
            Input::ClientRequest {
                conn: c.conn,
                req,
                request,
                rtt: Duration::from_millis(20),
            },
        );
        req
    }

    pub fn response(&self, c: &Client, req: ReqId) -> Option<Response> {
        self.responses
            .iter()
            .rev()
            .find(|(s, conn, r, _)| *s == c.server && *conn == c.conn && *r == req)
            .map(|(_, _, _, resp)| resp.clone())
    }

    /// The friends `c` was told about (`Notice::Friend`), in order.
    pub fn notices_of(&self, c: &Client) -> Vec<PeerRecord> {
        self.notices
            .iter()
            .filter(|(s, conn, _)| *s == c.server && *conn == c.conn)
            .filter_map(|(_, _, n)| match n {
                Notice::Friend { record, .. } => Some(record.clone()),
                Notice::Relay { .. } | Notice::Mail => None,
            })
            .collect()
    }

    /// The relays `c` was told of (`Notice::Relay`): (friend, the best).
    pub fn relays_of(&self, c: &Client) -> Vec<(PeerId, Option<PeerId>)> {
        self.rankings_of(c)
            .into_iter()
            .map(|(f, r)| (f, r.first().map(|(id, _)| *id)))
            .collect()
    }

    /// The relay rankings `c` was told of: (friend, ranked relays).
    pub fn rankings_of(&self, c: &Client) -> Vec<(PeerId, Vec<(PeerId, u32)>)> {
        self.notices
            .iter()
            .filter(|(s, conn, _)| *s == c.server && *conn == c.conn)
            .filter_map(|(_, _, n)| match n {
                Notice::Relay { friend, relays } => Some((*friend, relays.clone())),
                Notice::Friend { .. } | Notice::Mail => None,
            })
            .collect()
    }

    /// How many `Notice::Mail` `c` was sent.
    pub fn mail_notices_of(&self, c: &Client) -> usize {
        self.notices
            .iter()
            .filter(|(s, conn, n)| *s == c.server && *conn == c.conn && *n == Notice::Mail)
            .count()
    }

    pub fn close(&mut self, c: &Client) {
        self.input(c.server, Input::ClientClosed { conn: c.conn });
    }

    /// The record `c` registers as `name` with `seq` at its server.
    pub fn record(&self, c: &Client, name: &str, seq: u64) -> PeerRecord {
        let (k, id) = key(c.seed);
        PeerRecord::sign(
            &k,
            RecordBody {
                peer: id,
                name: name.into(),
                home_server: self.servers[c.server].id(),
                public_addr: Some(c.addr),
                private_addrs: Vec::new(),
                seq,
                expires_at: self.now.unix() + 600,
                nat: NatMapping::Unknown,
            },
        )
    }

    pub fn register_request(&self, c: &Client, name: &str, seq: u64) -> Request {
        let record = self.record(c, name, seq);
        let withdrawal = PeerRecord::withdrawal(&key(c.seed).0, &record.body, self.now.unix());
        Request::RegisterLive { record, withdrawal }
    }

    /// Registers `c` live as `name`; returns the answer.
    pub fn register(&mut self, c: &Client, name: &str) -> Option<Response> {
        let seq = self.now.unix_ms;
        let req = self.register_request(c, name, seq);
        self.ask(c, req)
    }

    /// `c` reports its RTTs `rtts`, then registers live as `name`; both
    /// must be accepted at once.
    pub fn report_and_register(&mut self, c: &Client, rtts: &LatencyVector, name: &str) {
        let noted = self.ask(c, Request::Latency(rtts.clone()));
        assert_eq!(noted, Some(Response::Noted), "latency report of {name}");
        let r = self.register(c, name);
        assert!(matches!(r, Some(Response::Registered)), "{name}: {r:?}");
    }

    pub fn meet(&mut self, c: &Client, friend: FriendRef) -> Option<Response> {
        self.ask(c, Request::Meet(friend))
    }
}

pub fn code_of(r: &Option<Response>) -> Option<rendezvous::ErrorCode> {
    match r {
        Some(Response::Error(e)) => Some(e.code),
        _ => None,
    }
}
