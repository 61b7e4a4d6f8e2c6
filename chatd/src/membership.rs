//! Server membership: which servers are alive, where, and how loaded.
//!
//! Every server broadcasts on the overlay a signed `Announce` of its own
//! record (addresses, load, a version that only grows) when it starts and
//! every heartbeat, and a signed `Leave` when it shuts down. Failure
//! detection combines connection loss and suspicion (SWIM-like):
//! - a server whose connection to X fails broadcasts a signed `Suspect(X,
//!   version)`;
//! - X, on hearing it, refutes by announcing a higher version;
//! - X is declared dead once a *second* server suspects the same version,
//!   or when nothing was heard from it for `dead_after`.
//!
//! Records are signed by their server (suspicions by the suspecting
//! server), so a member cannot forge another's announce or leave. The
//! merge rules are pure functions of the table (`Members`), free of I/O, so
//! the simulator can reuse them. `Service` is the thin tokio task that
//! feeds them from the node.

use crate::driver::{Node, NodeEvent};
use crate::identity::Id;
use bytes::Bytes;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use overlay::PeerId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// First byte of a broadcast payload carrying a membership message.
pub const TAG: u8 = 1;

/// A server's self-description.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    /// Who.
    pub id: PeerId,
    /// Where clients and servers dial it.
    pub addrs: Vec<SocketAddr>,
    /// Registered clients.
    pub clients: u32,
    /// How many clients it is configured for.
    pub capacity: u32,
    /// Grows with every announce (and across restarts: it starts from the
    /// wall clock in milliseconds).
    pub version: u64,
}

impl ServerRecord {
    /// Where to dial it: its first address, its key pinned.
    pub fn dial_addr(&self) -> Option<crate::identity::ServerAddr> {
        Some(crate::identity::ServerAddr {
            id: crate::identity::Id(self.id),
            addr: *self.addrs.first()?,
        })
    }

    /// Load in 0..1 (clients / capacity); a server without capacity is full.
    pub fn load(&self) -> f64 {
        if self.capacity == 0 {
            1.0
        } else {
            f64::from(self.clients) / f64::from(self.capacity)
        }
    }
}

/// A membership message, as broadcast (after the [`TAG`] byte).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// A server's current record, signed by it.
    Announce {
        /// The record.
        record: ServerRecord,
        /// ed25519 signature of `record` by `record.id`.
        sig: Vec<u8>,
    },
    /// A server leaves for good, signed by it.
    Leave {
        /// Who.
        id: PeerId,
        /// Its last version.
        version: u64,
        /// Signature by `id`.
        sig: Vec<u8>,
    },
    /// `by` lost its connection to `id` while it was at `version`.
    Suspect {
        /// The suspect.
        id: PeerId,
        /// The version suspected.
        version: u64,
        /// Who suspects.
        by: PeerId,
        /// Signature by `by`.
        sig: Vec<u8>,
    },
}

/// Why a membership message was ignored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MsgError {
    /// Not a membership payload or not decodable.
    #[error("malformed membership message")]
    Malformed,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
}

fn signed_bytes<T: Serialize>(domain: &str, value: &T) -> Vec<u8> {
    let mut out = domain.as_bytes().to_vec();
    out.extend(postcard::to_allocvec(value).unwrap_or_default());
    out
}

fn sign<T: Serialize>(key: &SigningKey, domain: &str, value: &T) -> Vec<u8> {
    key.sign(&signed_bytes(domain, value)).to_bytes().to_vec()
}

fn verify<T: Serialize>(
    signer: &PeerId,
    domain: &str,
    value: &T,
    sig: &[u8],
) -> Result<(), MsgError> {
    let key = VerifyingKey::from_bytes(signer.as_bytes()).map_err(|_| MsgError::BadSignature)?;
    let sig = Signature::from_slice(sig).map_err(|_| MsgError::BadSignature)?;
    key.verify(&signed_bytes(domain, value), &sig)
        .map_err(|_| MsgError::BadSignature)
}

impl Msg {
    /// A signed announce of `record`.
    pub fn announce(key: &SigningKey, record: ServerRecord) -> Msg {
        let sig = sign(key, "chatd-announce-v1", &record);
        Msg::Announce { record, sig }
    }

    /// A signed leave.
    pub fn leave(key: &SigningKey, id: PeerId, version: u64) -> Msg {
        let sig = sign(key, "chatd-leave-v1", &(id, version));
        Msg::Leave { id, version, sig }
    }

    /// A signed suspicion.
    pub fn suspect(key: &SigningKey, id: PeerId, version: u64, by: PeerId) -> Msg {
        let sig = sign(key, "chatd-suspect-v1", &(id, version, by));
        Msg::Suspect {
            id,
            version,
            by,
            sig,
        }
    }

    /// The broadcast payload.
    pub fn to_payload(&self) -> Bytes {
        let mut out = vec![TAG];
        out.extend(postcard::to_allocvec(self).unwrap_or_default());
        Bytes::from(out)
    }

    /// Decodes and verifies a payload.
    pub fn from_payload(payload: &[u8]) -> Result<Msg, MsgError> {
        let (&tag, body) = payload.split_first().ok_or(MsgError::Malformed)?;
        if tag != TAG {
            return Err(MsgError::Malformed);
        }
        let msg: Msg = postcard::from_bytes(body).map_err(|_| MsgError::Malformed)?;
        match &msg {
            Msg::Announce { record, sig } => verify(&record.id, "chatd-announce-v1", record, sig)?,
            Msg::Leave { id, version, sig } => verify(id, "chatd-leave-v1", &(id, version), sig)?,
            Msg::Suspect {
                id,
                version,
                by,
                sig,
            } => verify(by, "chatd-suspect-v1", &(id, version, by), sig)?,
        }
        Ok(msg)
    }
}

/// What we believe about one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Heard from recently, no open suspicion.
    Alive,
    /// Suspected at its current version by these servers.
    Suspect(BTreeSet<PeerId>),
    /// Declared dead (suspicion confirmed or silence).
    Dead,
    /// Left for good.
    Left,
}

/// One server in the table.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Its latest record.
    pub record: ServerRecord,
    /// What we believe.
    pub liveness: Liveness,
    /// When we last heard its announce.
    pub heard: Instant,
}

/// What the table asks its driver to broadcast.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Nothing to say.
    None,
    /// Refute a suspicion of us: announce a newer version.
    Refute,
}

/// The membership table: pure merge rules, no I/O.
#[derive(Debug)]
pub struct Members {
    me: PeerId,
    entries: BTreeMap<PeerId, Entry>,
    dead_after: Duration,
}

impl Members {
    /// An empty table for server `me`.
    pub fn new(me: PeerId, dead_after: Duration) -> Self {
        Members {
            me,
            entries: BTreeMap::new(),
            dead_after,
        }
    }

    /// Applies a verified message received at `now`.
    pub fn apply(&mut self, msg: &Msg, now: Instant) -> Reply {
        match msg {
            Msg::Announce { record, .. } => {
                if record.id == self.me {
                    return Reply::None;
                }
                match self.entries.get_mut(&record.id) {
                    Some(e) if record.version <= e.record.version => {}
                    Some(e) => {
                        e.record = record.clone();
                        e.liveness = Liveness::Alive;
                        e.heard = now;
                    }
                    None => {
                        self.entries.insert(
                            record.id,
                            Entry {
                                record: record.clone(),
                                liveness: Liveness::Alive,
                                heard: now,
                            },
                        );
                    }
                }
                Reply::None
            }
            Msg::Leave { id, version, .. } => {
                if let Some(e) = self.entries.get_mut(id)
                    && *version >= e.record.version
                {
                    e.liveness = Liveness::Left;
                }
                Reply::None
            }
            Msg::Suspect {
                id, version, by, ..
            } => {
                if *id == self.me {
                    return Reply::Refute;
                }
                self.suspect(*id, *version, *by);
                Reply::None
            }
        }
    }

    /// Records that `by` suspects `id` at `version` (our own suspicions too).
    pub fn suspect(&mut self, id: PeerId, version: u64, by: PeerId) {
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        if version != e.record.version {
            // Older: already refuted by a newer announce. Newer than any
            // announce we saw: not evidence about the server we know.
            return;
        }
        match &mut e.liveness {
            Liveness::Alive => e.liveness = Liveness::Suspect(BTreeSet::from([by])),
            Liveness::Suspect(by_whom) => {
                by_whom.insert(by);
                // Confirmed by a second server.
                if by_whom.len() >= 2 {
                    e.liveness = Liveness::Dead;
                }
            }
            Liveness::Dead | Liveness::Left => {}
        }
    }

    /// Declares dead every server silent for `dead_after`.
    pub fn expire(&mut self, now: Instant) {
        for e in self.entries.values_mut() {
            let silent = now.saturating_duration_since(e.heard) > self.dead_after;
            if silent && matches!(e.liveness, Liveness::Alive | Liveness::Suspect(_)) {
                e.liveness = Liveness::Dead;
            }
        }
    }

    /// The record we hold for `id`.
    pub fn get(&self, id: &PeerId) -> Option<&Entry> {
        self.entries.get(id)
    }

    /// Servers believed alive (suspects included), other than us.
    pub fn live(&self) -> impl Iterator<Item = &ServerRecord> {
        self.entries
            .values()
            .filter(|e| matches!(e.liveness, Liveness::Alive | Liveness::Suspect(_)))
            .map(|e| &e.record)
    }
}

/// Membership configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often a server announces itself.
    pub heartbeat: Duration,
    /// Silence after which a server is declared dead.
    pub dead_after: Duration,
    /// Configured client capacity (for load).
    pub capacity: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            heartbeat: Duration::from_secs(5),
            dead_after: Duration::from_secs(20),
            capacity: 10_000,
        }
    }
}

/// The running membership service of one server.
pub struct Service {
    members: Arc<Mutex<Members>>,
    me: Arc<Mutex<ServerRecord>>,
    task: tokio::task::JoinHandle<()>,
}

impl Service {
    /// Starts announcing `node` and tracking the others.
    pub fn start(node: Arc<Node>, key: SigningKey, settings: Settings) -> Service {
        let now_ms = std::time::SystemTime::UNIX_EPOCH
            .elapsed()
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        let me = Arc::new(Mutex::new(ServerRecord {
            id: node.id,
            addrs: node.advertised(),
            clients: 0,
            capacity: settings.capacity,
            version: now_ms,
        }));
        let members = Arc::new(Mutex::new(Members::new(node.id, settings.dead_after)));
        let task = tokio::spawn(run(node, key, settings, members.clone(), me.clone()));
        Service { members, me, task }
    }

    /// Live servers, this one first.
    pub fn servers(&self) -> Vec<ServerRecord> {
        let mut out = vec![
            self.me
                .lock()
                .map(|m| m.clone())
                .unwrap_or_else(|e| e.into_inner().clone()),
        ];
        if let Ok(m) = self.members.lock() {
            out.extend(m.live().cloned());
        }
        out
    }

    /// Sets the number of clients this server serves (announced with the
    /// next heartbeat: the load other servers see).
    pub fn set_clients(&self, clients: u32) {
        if let Ok(mut me) = self.me.lock() {
            me.clients = clients;
        }
    }

    /// The configured client capacity.
    pub fn capacity(&self) -> u32 {
        self.me.lock().map(|m| m.capacity).unwrap_or(0)
    }

    /// The membership table (for tests and status pages).
    pub fn members(&self) -> Arc<Mutex<Members>> {
        self.members.clone()
    }

    /// Announces that this server leaves, then stops.
    pub async fn leave(&self, node: &Node, key: &SigningKey) {
        // Stop heartbeats first, then leave at a version above any announce
        // a last heartbeat may have sent meanwhile (a leave applies at its
        // version or above; a newer announce would bring us back).
        self.task.abort();
        let (id, version) = {
            let mut me = self.me.lock().unwrap_or_else(|e| e.into_inner());
            me.version = me.version.saturating_add(1);
            (me.id, me.version)
        };
        let _ = node
            .broadcast(Msg::leave(key, id, version).to_payload())
            .await;
    }
}

/// Whether the servers a message is about and signed by are admitted.
fn signer_admitted(node: &Node, msg: &Msg) -> bool {
    match msg {
        Msg::Announce { record, .. } => node.admits(&record.id),
        Msg::Leave { id, .. } => node.admits(id),
        Msg::Suspect { id, by, .. } => node.admits(id) && node.admits(by),
    }
}

/// A suspicion of us at a version we have already moved past needs no
/// refutation (the newer announce is on its way): this keeps repeated
/// suspicions from making us broadcast again and again.
fn suspects_old_me(msg: &Msg, me: &Mutex<ServerRecord>) -> bool {
    let me = me.lock().unwrap_or_else(|e| e.into_inner());
    matches!(msg, Msg::Suspect { id, version, .. } if *id == me.id && *version < me.version)
}

async fn run(
    node: Arc<Node>,
    key: SigningKey,
    settings: Settings,
    members: Arc<Mutex<Members>>,
    me: Arc<Mutex<ServerRecord>>,
) {
    let mut events = node.events();
    let mut beat = tokio::time::interval(settings.heartbeat);
    let announce = |me: &Arc<Mutex<ServerRecord>>, bump: bool| {
        let mut r = me.lock().unwrap_or_else(|e| e.into_inner());
        if bump {
            r.version += 1;
        }
        Msg::announce(&key, r.clone()).to_payload()
    };
    loop {
        tokio::select! {
            _ = beat.tick() => {
                let payload = announce(&me, true);
                let _ = node.broadcast(payload).await;
                let live = {
                    let mut m = members.lock().unwrap_or_else(|e| e.into_inner());
                    m.expire(Instant::now());
                    m.live().count()
                };
                metrics::gauge!("chatd_cluster_servers").set((live + 1) as f64);
            }
            ev = events.recv() => match ev {
                Ok(NodeEvent::Delivery(d)) => {
                    if d.payload.first() != Some(&TAG) {
                        continue;
                    }
                    let reply = match Msg::from_payload(&d.payload) {
                        // Only cluster members speak for themselves or
                        // about others (with an allowlist in force).
                        Ok(msg) if !signer_admitted(&node, &msg) => {
                            metrics::counter!("chatd_membership_rejected_total").increment(1);
                            tracing::warn!(origin = %Id(d.origin), "membership message from a non-member ignored");
                            Reply::None
                        }
                        Ok(msg @ Msg::Suspect { .. }) if suspects_old_me(&msg, &me) => Reply::None,
                        Ok(msg) => members.lock().unwrap_or_else(|e| e.into_inner()).apply(&msg, Instant::now()),
                        Err(e) => {
                            metrics::counter!("chatd_membership_rejected_total").increment(1);
                            tracing::warn!(origin = %Id(d.origin), error = %e, "ignored a membership message");
                            Reply::None
                        }
                    };
                    if reply == Reply::Refute {
                        tracing::info!("suspected by the cluster: refuting");
                        let payload = announce(&me, true);
                        let _ = node.broadcast(payload).await;
                    }
                }
                Ok(NodeEvent::PeerFailed(peer)) => {
                    let version = members
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&peer)
                        .filter(|e| matches!(e.liveness, Liveness::Alive | Liveness::Suspect(_)))
                        .map(|e| e.record.version);
                    if let Some(version) = version {
                        members.lock().unwrap_or_else(|e| e.into_inner()).suspect(peer, version, node.id);
                        let msg = Msg::suspect(&key, peer, version, node.id);
                        let _ = node.broadcast(msg.to_payload()).await;
                    }
                }
                Ok(NodeEvent::NeighborUp(_)) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;

    fn record(k: &Keypair, version: u64) -> ServerRecord {
        ServerRecord {
            id: k.id().0,
            addrs: vec!["127.0.0.1:1".parse().unwrap()],
            clients: 1,
            capacity: 4,
            version,
        }
    }

    #[test]
    fn messages_are_signed_and_forgeries_refused() {
        let a = Keypair::from_seed([1; 32]);
        let b = Keypair::from_seed([2; 32]);
        let m = Msg::announce(a.signing_key(), record(&a, 5));
        assert_eq!(Msg::from_payload(&m.to_payload()), Ok(m));
        // b signs a record claiming to be a.
        let forged = Msg::announce(b.signing_key(), record(&a, 6));
        assert_eq!(
            Msg::from_payload(&forged.to_payload()),
            Err(MsgError::BadSignature)
        );
        let leave = Msg::leave(b.signing_key(), a.id().0, 9);
        assert_eq!(
            Msg::from_payload(&leave.to_payload()),
            Err(MsgError::BadSignature)
        );
        assert_eq!(Msg::from_payload(&[TAG, 0xff]), Err(MsgError::Malformed));
        assert_eq!(Msg::from_payload(&[]), Err(MsgError::Malformed));
    }

    #[test]
    fn suspicion_needs_a_second_server_and_is_refuted_by_a_newer_version() {
        let (me, x, s1, s2) = (
            Keypair::from_seed([1; 32]),
            Keypair::from_seed([2; 32]),
            Keypair::from_seed([3; 32]),
            Keypair::from_seed([4; 32]),
        );
        let now = Instant::now();
        let mut t = Members::new(me.id().0, Duration::from_secs(20));
        t.apply(&Msg::announce(x.signing_key(), record(&x, 10)), now);
        t.suspect(x.id().0, 10, s1.id().0);
        assert!(matches!(
            t.get(&x.id().0).unwrap().liveness,
            Liveness::Suspect(_)
        ));
        assert_eq!(t.live().count(), 1, "a suspect still counts as live");
        // x refutes with a newer version: alive again.
        t.apply(&Msg::announce(x.signing_key(), record(&x, 11)), now);
        assert_eq!(t.get(&x.id().0).unwrap().liveness, Liveness::Alive);
        // A stale suspicion of version 10 changes nothing.
        t.suspect(x.id().0, 10, s2.id().0);
        assert_eq!(t.get(&x.id().0).unwrap().liveness, Liveness::Alive);
        // Two servers suspect version 11: dead.
        t.suspect(x.id().0, 11, s1.id().0);
        t.suspect(x.id().0, 11, s2.id().0);
        assert_eq!(t.get(&x.id().0).unwrap().liveness, Liveness::Dead);
        assert_eq!(t.live().count(), 0);
        // A suspicion of us asks for a refutation.
        let of_me = Msg::suspect(s1.signing_key(), me.id().0, 1, s1.id().0);
        assert_eq!(t.apply(&of_me, now), Reply::Refute);
    }

    #[test]
    fn silence_means_dead_and_leave_means_gone() {
        let me = Keypair::from_seed([1; 32]);
        let x = Keypair::from_seed([2; 32]);
        let y = Keypair::from_seed([3; 32]);
        let t0 = Instant::now();
        let mut t = Members::new(me.id().0, Duration::from_secs(20));
        t.apply(&Msg::announce(x.signing_key(), record(&x, 1)), t0);
        t.apply(&Msg::announce(y.signing_key(), record(&y, 1)), t0);
        t.apply(&Msg::leave(y.signing_key(), y.id().0, 1), t0);
        assert_eq!(t.get(&y.id().0).unwrap().liveness, Liveness::Left);
        t.expire(t0 + Duration::from_secs(10));
        assert_eq!(t.live().count(), 1);
        t.expire(t0 + Duration::from_secs(21));
        assert_eq!(t.live().count(), 0);
        // A later announce (a restart) brings it back.
        t.apply(
            &Msg::announce(x.signing_key(), record(&x, 2)),
            t0 + Duration::from_secs(22),
        );
        assert_eq!(t.live().count(), 1);
    }
}
