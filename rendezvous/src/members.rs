//! Server membership: which servers are alive, where, and how loaded.
//!
//! Every server broadcasts on the overlay a signed `Announce` of its own
//! record (addresses, load, a version that only grows) when it starts and
//! every announce interval, and a signed `Leave` when it shuts down.
//! Failure detection combines connection loss and suspicion (SWIM-like):
//! - a server whose connection to X fails broadcasts a signed `Suspect(X,
//!   version)`;
//! - X, on hearing it, refutes by announcing a higher version;
//! - X is declared dead once a *second* server suspects the same version,
//!   or when nothing was heard from it for `dead_after`.
//!
//! Every announce reaches every server, so the cluster's announces cost
//! each server servers ÷ interval deliveries per second: the interval and
//! `dead_after` grow with the cluster (the rule is on
//! [`crate::server::Config::announce_budget`]); [`Members::live_count`] is
//! the count they grow with.
//!
//! Records are signed by their server (suspicions by the suspecting
//! server), so a member cannot forge another's announce or leave. Pure
//! merge rules over [`Time`]; [`crate::server::Server`] feeds them.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use overlay::{PeerId, Time};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
    /// Load in 0..1 (clients / capacity); a server without capacity is full.
    pub fn load(&self) -> f64 {
        if self.capacity == 0 {
            1.0
        } else {
            f64::from(self.clients) / f64::from(self.capacity)
        }
    }
}

/// A membership message, as broadcast (payload tag 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// A server's current record, signed by it.
    Announce {
        /// The record (shared by every table that keeps it).
        record: Arc<ServerRecord>,
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
        Msg::Announce {
            record: Arc::new(record),
            sig,
        }
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

    /// Verifies the signature of the message.
    pub fn verify(&self) -> Result<(), MsgError> {
        match self {
            Msg::Announce { record, sig } => verify(&record.id, "chatd-announce-v1", record, sig),
            Msg::Leave { id, version, sig } => verify(id, "chatd-leave-v1", &(id, version), sig),
            Msg::Suspect {
                id,
                version,
                by,
                sig,
            } => verify(by, "chatd-suspect-v1", &(id, version, by), sig),
        }
    }
}

/// What we believe about one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Heard from recently, no open suspicion.
    Alive,
    /// Suspected at its current version by this server (a second one
    /// makes it dead). Boxed: every server holds an entry per server, and
    /// at 10,000 servers the entry's size is what a simulator can hold.
    Suspect(Box<PeerId>),
    /// Declared dead (suspicion confirmed or silence).
    Dead,
    /// Left for good.
    Left,
}

/// One server in the table.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Its latest record (the announce's own copy, shared).
    pub record: Arc<ServerRecord>,
    /// What we believe.
    pub liveness: Liveness,
    /// When we last heard its announce.
    pub heard: Time,
}

/// What the table asks its driver to broadcast.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Nothing to say.
    None,
    /// Refute a suspicion of us: announce a newer version.
    Refute,
    /// A server we had declared dead (or gone) announced again: a
    /// partition healed or it restarted. Servers on the other side may
    /// not have heard from us for as long, so announce soon (within the
    /// spacing rule) instead of at the next interval: otherwise one that
    /// never declared us dead (its suspicions were of another version)
    /// can reach `dead_after` of silence before our next regular
    /// announce crosses.
    Revived,
}

fn counts_as_live(l: &Liveness) -> bool {
    matches!(l, Liveness::Alive | Liveness::Suspect(_))
}

/// The membership table: pure merge rules, no I/O.
#[derive(Debug)]
pub struct Members {
    me: PeerId,
    entries: BTreeMap<PeerId, Entry>,
    dead_after: Duration,
    /// Entries that are `Alive` or `Suspect` (kept with every change).
    live: usize,
    /// No live entry was heard before this (a lower bound; `None`: no live
    /// entry): [`Members::expire`] walks the table only when this one is
    /// silent for `dead_after`, not on every sweep (at 10,000 servers the
    /// walk every second was 10⁴ entries per server per second).
    oldest_heard: Option<Time>,
}

impl Members {
    /// An empty table for server `me`.
    pub fn new(me: PeerId, dead_after: Duration) -> Self {
        Members {
            me,
            entries: BTreeMap::new(),
            dead_after,
            live: 0,
            oldest_heard: None,
        }
    }

    /// Silence after which [`Members::expire`] declares a server dead.
    pub fn dead_after(&self) -> Duration {
        self.dead_after
    }

    /// Changes the silence limit (the server scales it with the cluster).
    pub fn set_dead_after(&mut self, dead_after: Duration) {
        self.dead_after = dead_after;
    }

    /// Servers believed alive (suspects included), other than us: the
    /// length of [`Members::live`], without walking the table.
    pub fn live_count(&self) -> usize {
        self.live
    }

    /// Applies a verified message received at `now`.
    pub fn apply(&mut self, msg: &Msg, now: Time) -> Reply {
        match msg {
            Msg::Announce { record, .. } => {
                if record.id == self.me {
                    return Reply::None;
                }
                match self.entries.get_mut(&record.id) {
                    Some(e) if record.version <= e.record.version => {}
                    Some(e) => {
                        let revived = !counts_as_live(&e.liveness);
                        if revived {
                            self.live += 1;
                        }
                        e.record = record.clone();
                        e.liveness = Liveness::Alive;
                        e.heard = now;
                        self.heard_at(now);
                        if revived {
                            return Reply::Revived;
                        }
                    }
                    None => {
                        self.live += 1;
                        self.entries.insert(
                            record.id,
                            Entry {
                                record: record.clone(),
                                liveness: Liveness::Alive,
                                heard: now,
                            },
                        );
                        self.heard_at(now);
                    }
                }
                Reply::None
            }
            Msg::Leave { id, version, .. } => {
                if let Some(e) = self.entries.get_mut(id)
                    && *version >= e.record.version
                {
                    if counts_as_live(&e.liveness) {
                        self.live -= 1;
                    }
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

    fn heard_at(&mut self, now: Time) {
        self.oldest_heard = Some(self.oldest_heard.map_or(now, |t| t.min(now)));
    }

    /// Records that `by` suspects `id` at `version` (our own suspicions too).
    pub fn suspect(&mut self, id: PeerId, version: u64, by: PeerId) {
        // Confirmed by a second server — or by the only one there is: in a
        // cluster of two, the survivor's word is all the evidence there is.
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        let others = self.live - usize::from(counts_as_live(&e.liveness));
        let needed = if others == 0 { 1 } else { 2 };
        if version != e.record.version {
            // Older: already refuted by a newer announce. Newer than any
            // announce we saw: not evidence about the server we know.
            return;
        }
        let suspecters = match &e.liveness {
            Liveness::Alive => 1,
            Liveness::Suspect(first) if **first == by => 1,
            Liveness::Suspect(_) => 2,
            Liveness::Dead | Liveness::Left => return,
        };
        e.liveness = if suspecters >= needed {
            self.live -= 1;
            Liveness::Dead
        } else {
            Liveness::Suspect(Box::new(by))
        };
    }

    /// Declares dead every server silent for `dead_after`.
    /// Cost: nothing until the oldest live entry could be silent, then
    /// one walk of the table.
    pub fn expire(&mut self, now: Time) {
        match self.oldest_heard {
            Some(t) if now.saturating_since(t) > self.dead_after => {}
            _ => return,
        }
        let mut oldest: Option<Time> = None;
        for e in self.entries.values_mut() {
            if !counts_as_live(&e.liveness) {
                continue;
            }
            if now.saturating_since(e.heard) > self.dead_after {
                e.liveness = Liveness::Dead;
                self.live -= 1;
            } else {
                oldest = Some(oldest.map_or(e.heard, |t| t.min(e.heard)));
            }
        }
        self.oldest_heard = oldest;
    }

    /// The record we hold for `id`.
    pub fn get(&self, id: &PeerId) -> Option<&Entry> {
        self.entries.get(id)
    }

    /// Whether `id` is believed alive (suspects included).
    pub fn is_live(&self, id: &PeerId) -> bool {
        self.entries
            .get(id)
            .is_some_and(|e| counts_as_live(&e.liveness))
    }

    /// Every server we know of, whatever we believe about it.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Servers believed alive (suspects included), other than us.
    pub fn live(&self) -> impl Iterator<Item = &ServerRecord> {
        self.entries
            .values()
            .filter(|e| counts_as_live(&e.liveness))
            .map(|e| &*e.record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key as the daemon's tests know it.
    struct Keypair(SigningKey);
    struct Id(PeerId);
    impl Keypair {
        fn from_seed(seed: [u8; 32]) -> Self {
            Keypair(SigningKey::from_bytes(&seed))
        }
        fn id(&self) -> Id {
            Id(PeerId(self.0.verifying_key().to_bytes()))
        }
        fn signing_key(&self) -> &SigningKey {
            &self.0
        }
    }

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
        assert_eq!(m.verify(), Ok(()));
        // b signs a record claiming to be a.
        let forged = Msg::announce(b.signing_key(), record(&a, 6));
        assert_eq!(forged.verify(), Err(MsgError::BadSignature));
        let leave = Msg::leave(b.signing_key(), a.id().0, 9);
        assert_eq!(leave.verify(), Err(MsgError::BadSignature));
    }

    #[test]
    fn suspicion_needs_a_second_server_and_is_refuted_by_a_newer_version() {
        let (me, x, s1, s2) = (
            Keypair::from_seed([1; 32]),
            Keypair::from_seed([2; 32]),
            Keypair::from_seed([3; 32]),
            Keypair::from_seed([4; 32]),
        );
        let now = Time::from_secs(100);
        let mut t = Members::new(me.id().0, Duration::from_secs(20));
        t.apply(&Msg::announce(x.signing_key(), record(&x, 10)), now);
        t.apply(&Msg::announce(s1.signing_key(), record(&s1, 1)), now);
        t.suspect(x.id().0, 10, s1.id().0);
        assert!(matches!(
            t.get(&x.id().0).unwrap().liveness,
            Liveness::Suspect(_)
        ));
        assert_eq!(t.live().count(), 2, "a suspect still counts as live");
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
        assert_eq!(t.live().count(), 1);
        assert_eq!(t.live_count(), 1);
        // In a cluster of two, the survivor's suspicion is enough.
        let mut pair = Members::new(me.id().0, Duration::from_secs(20));
        pair.apply(&Msg::announce(x.signing_key(), record(&x, 10)), now);
        pair.suspect(x.id().0, 10, me.id().0);
        assert_eq!(pair.get(&x.id().0).unwrap().liveness, Liveness::Dead);
        // A suspicion of us asks for a refutation.
        let of_me = Msg::suspect(s1.signing_key(), me.id().0, 1, s1.id().0);
        assert_eq!(t.apply(&of_me, now), Reply::Refute);
    }

    /// `expire` skips its walk while no live entry can be silent; checked
    /// against the plain rule (every live entry silent for longer than
    /// `dead_after` is dead, no other) over announces, suspicions, moving
    /// limits and sweeps in a pseudo-random order.
    #[test]
    fn expiry_skips_the_walk_but_never_a_silent_server() {
        let me = Keypair::from_seed([1; 32]);
        let keys: Vec<Keypair> = (2..8u8).map(|i| Keypair::from_seed([i; 32])).collect();
        let mut t = Members::new(me.id().0, Duration::from_secs(20));
        let mut version = [0u64; 6];
        let mut now = Time::from_secs(1_000);
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut expired_any = false;
        for _ in 0..4_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = (x >> 8) as usize % keys.len();
            now = now + Duration::from_millis(x % 3_000);
            match x % 7 {
                0..=2 => {
                    version[k] += 1;
                    t.apply(
                        &Msg::announce(keys[k].signing_key(), record(&keys[k], version[k])),
                        now,
                    );
                }
                3 => {
                    let by = keys[(k + 1) % keys.len()].id().0;
                    t.suspect(keys[k].id().0, version[k], by);
                }
                4 => t.set_dead_after(Duration::from_secs(5 + (x >> 20) % 40)),
                _ => {
                    let before = t.live_count();
                    t.expire(now);
                    expired_any |= t.live_count() < before;
                    for e in t.entries() {
                        let silent = now.saturating_since(e.heard) > t.dead_after();
                        assert!(
                            !(silent && counts_as_live(&e.liveness)),
                            "a live entry silent for longer than dead_after survived"
                        );
                    }
                }
            }
            assert_eq!(t.live_count(), t.live().count());
        }
        assert!(
            expired_any,
            "the sequence never expired anyone: it tests nothing"
        );
    }

    #[test]
    fn silence_means_dead_and_leave_means_gone() {
        let me = Keypair::from_seed([1; 32]);
        let x = Keypair::from_seed([2; 32]);
        let y = Keypair::from_seed([3; 32]);
        let t0 = Time::from_secs(100);
        let mut t = Members::new(me.id().0, Duration::from_secs(20));
        t.apply(&Msg::announce(x.signing_key(), record(&x, 1)), t0);
        t.apply(&Msg::announce(y.signing_key(), record(&y, 1)), t0);
        t.apply(&Msg::leave(y.signing_key(), y.id().0, 1), t0);
        assert_eq!(t.get(&y.id().0).unwrap().liveness, Liveness::Left);
        t.expire(t0 + Duration::from_secs(10));
        assert_eq!((t.live().count(), t.live_count()), (1, 1));
        // The limit can move (the server scales it with the cluster).
        t.set_dead_after(Duration::from_secs(60));
        t.expire(t0 + Duration::from_secs(21));
        assert_eq!((t.live().count(), t.live_count()), (1, 1));
        t.expire(t0 + Duration::from_secs(61));
        assert_eq!((t.live().count(), t.live_count()), (0, 0));
        // A later announce (a restart, a healed partition) brings it back
        // and says so.
        let back = t.apply(
            &Msg::announce(x.signing_key(), record(&x, 2)),
            t0 + Duration::from_secs(62),
        );
        assert_eq!(back, Reply::Revived);
        let again = t.apply(
            &Msg::announce(x.signing_key(), record(&x, 3)),
            t0 + Duration::from_secs(63),
        );
        assert_eq!(again, Reply::None, "only a return is news");
        assert_eq!((t.live().count(), t.live_count()), (1, 1));
        // A leave of a live server, and one of a server already gone.
        t.apply(&Msg::leave(x.signing_key(), x.id().0, 3), t0);
        t.apply(&Msg::leave(y.signing_key(), y.id().0, 1), t0);
        assert_eq!((t.live().count(), t.live_count()), (0, 0));
    }
}
