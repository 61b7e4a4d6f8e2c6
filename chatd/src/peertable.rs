//! The replicated peer table: where each client can be reached.
//!
//! Pure data and merge rules, no I/O (the simulator can drive it too):
//! - a [`PeerRecord`] is signed by the peer itself, so servers can neither
//!   forge nor roll back a peer's record; last writer wins by `seq`;
//! - records expire (`expires_at`) and go offline when their home server is
//!   gone ([`PeerTable::home_server_gone`]);
//! - lookup by peer id and by name are O(1);
//! - anti-entropy: [`PeerTable::digest`] summarises the table in 256
//!   buckets (by the first byte of the peer id); two servers compare
//!   digests, exchange the `(id, seq)` lists of differing buckets, and send
//!   each other the records the other lacks or has older.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use overlay::PeerId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

/// Longest peer name, in bytes.
pub const MAX_NAME: usize = 64;
/// Most private addresses in a record.
pub const MAX_PRIVATE_ADDRS: usize = 8;
/// A record may not claim to stay valid longer than this (seconds): a
/// client cannot park a record forever, and a withdrawn record (a tombstone,
/// kept this long) outlives every record it replaced.
pub const MAX_TTL: u64 = 86_400;
/// How far a record's `seq` may run ahead of the server's clock, in
/// milliseconds (10 minutes). Clients use their Unix time in milliseconds as
/// `seq` (or any smaller counter); a record whose `seq` is further ahead
/// (e.g. `u64::MAX`, which would win every lookup forever) is refused.
pub const MAX_SEQ_AHEAD_MS: u64 = 600_000;
/// A withdrawal's `expires_at` lies this far in the past (seconds), so it is
/// expired at every server even if the client's clock runs ahead by as much
/// as [`MAX_SEQ_AHEAD_MS`] allows (and a minute more).
pub const WITHDRAWAL_BACKDATE: u64 = MAX_SEQ_AHEAD_MS / 1000 + 60;
/// Most records one name lookup returns.
pub const MAX_NAME_MATCHES: usize = 16;

/// The signed part of a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordBody {
    /// The peer (its ed25519 key).
    pub peer: PeerId,
    /// Its chosen name (not unique; lookups by name pick the freshest).
    pub name: String,
    /// The server it registered with.
    pub home_server: PeerId,
    /// Its address as the home server observed it.
    pub public_addr: Option<SocketAddr>,
    /// Its LAN addresses.
    pub private_addrs: Vec<SocketAddr>,
    /// Grows with every registration or refresh.
    pub seq: u64,
    /// Unix seconds after which the record is stale.
    pub expires_at: u64,
    /// How the peer's NAT maps its socket, as the peer measured it.
    pub nat: NatMapping,
}

/// How a peer's NAT maps its UDP socket, measured by asking two servers
/// which address they see (hole punching picks its method from the two
/// peers' kinds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NatMapping {
    /// Not measured (one server known, or the second did not answer).
    #[default]
    Unknown,
    /// Both servers saw the same address: one external address for every
    /// destination (no NAT, or a cone NAT) — easy to reach once we send.
    Independent,
    /// The servers saw different addresses: a new external port per
    /// destination (a symmetric NAT) — its port towards a friend is unknown.
    Dependent,
}

/// A record as stored and replicated: the body and the peer's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// What the peer says.
    pub body: RecordBody,
    /// ed25519 signature by `body.peer` over `"chatd-peer-v1" ‖ postcard(body)`.
    pub sig: Vec<u8>,
}

/// Why a record was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    /// The signature does not verify with the record's own peer key.
    #[error("bad signature")]
    BadSignature,
    /// A field is out of bounds.
    #[error("invalid record: {0}")]
    Invalid(&'static str),
    /// Not newer than the record we hold (a replay or a rollback).
    #[error("stale record: seq {got} is not above {have}")]
    Stale {
        /// The record's seq.
        got: u64,
        /// The seq we hold.
        have: u64,
    },
}

fn signed_bytes(body: &RecordBody) -> Vec<u8> {
    let mut out = b"chatd-peer-v1".to_vec();
    out.extend(postcard::to_allocvec(body).unwrap_or_default());
    out
}

impl PeerRecord {
    /// Signs `body` with the peer's key (the key must be `body.peer`'s).
    pub fn sign(key: &SigningKey, body: RecordBody) -> PeerRecord {
        let sig = key.sign(&signed_bytes(&body)).to_bytes().to_vec();
        PeerRecord { body, sig }
    }

    /// The withdrawal of `body`, signed in advance: the same peer, home and
    /// name with `seq + 1`, already expired (backdated by
    /// [`WITHDRAWAL_BACKDATE`] to absorb clock skew), no private addresses.
    /// A client hands it to its home server with the live record; the
    /// server publishes it when the client's connection ends, so the record
    /// goes offline everywhere through the ordinary merge rules (no server
    /// can forge it, and anti-entropy carries it like any record).
    pub fn withdrawal(key: &SigningKey, body: &RecordBody, now_unix: u64) -> PeerRecord {
        let mut w = body.clone();
        w.seq = body.seq.saturating_add(1);
        w.expires_at = now_unix.saturating_sub(WITHDRAWAL_BACKDATE);
        w.private_addrs.clear();
        PeerRecord::sign(key, w)
    }

    /// Checks that `self` is a valid withdrawal of `live`: signed, the same
    /// peer and home, `seq` exactly one above, expired at `now_unix`.
    pub fn check_withdrawal(&self, live: &PeerRecord, now_unix: u64) -> Result<(), RecordError> {
        self.verify()?;
        let (w, l) = (&self.body, &live.body);
        if w.peer != l.peer || w.home_server != l.home_server {
            return Err(RecordError::Invalid(
                "the withdrawal must be for the same peer and home server",
            ));
        }
        if l.seq.checked_add(1) != Some(w.seq) {
            return Err(RecordError::Invalid(
                "the withdrawal's seq must be the record's seq + 1",
            ));
        }
        if w.expires_at > now_unix {
            return Err(RecordError::Invalid(
                "the withdrawal must already be expired",
            ));
        }
        // Kept MAX_TTL after its expiry, it must outlive the live record, or
        // anti-entropy from a server that missed it could bring that back.
        if w.expires_at.saturating_add(MAX_TTL) < l.expires_at {
            return Err(RecordError::Invalid(
                "the withdrawal must not expire more than a day before the record",
            ));
        }
        Ok(())
    }

    /// Whether the record is still valid at `now_unix` (not expired).
    pub fn is_live(&self, now_unix: u64) -> bool {
        self.body.expires_at > now_unix
    }

    /// Checks bounds and the signature.
    pub fn verify(&self) -> Result<(), RecordError> {
        let b = &self.body;
        if b.name.is_empty() || b.name.len() > MAX_NAME {
            return Err(RecordError::Invalid("name must be 1 to 64 bytes"));
        }
        if b.name.chars().any(char::is_control) {
            return Err(RecordError::Invalid("name has control characters"));
        }
        if b.private_addrs.len() > MAX_PRIVATE_ADDRS {
            return Err(RecordError::Invalid("too many private addresses"));
        }
        let key =
            VerifyingKey::from_bytes(b.peer.as_bytes()).map_err(|_| RecordError::BadSignature)?;
        let sig = Signature::from_slice(&self.sig).map_err(|_| RecordError::BadSignature)?;
        key.verify(&signed_bytes(b), &sig)
            .map_err(|_| RecordError::BadSignature)
    }
}

/// A stored record and whether it counts as online.
#[derive(Clone, Debug)]
struct Stored {
    record: PeerRecord,
    online: bool,
}

/// What [`PeerTable::merge`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merged {
    /// A peer we did not know.
    New,
    /// A newer record replaced ours.
    Updated,
}

/// The table.
#[derive(Debug, Default)]
pub struct PeerTable {
    by_id: HashMap<PeerId, Stored>,
    /// name → peers with that name (usually one).
    by_name: HashMap<String, Vec<PeerId>>,
}

/// A summary for anti-entropy: one hash per bucket of peer ids.
pub type Digest = [u64; 256];

fn bucket(peer: &PeerId) -> usize {
    usize::from(peer.as_bytes()[0])
}

impl PeerTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records held (online or not).
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Online records.
    pub fn online(&self) -> usize {
        self.by_id.values().filter(|s| s.online).count()
    }

    /// Verifies and stores `record` if it is newer than ours.
    pub fn merge(&mut self, record: PeerRecord, now_unix: u64) -> Result<Merged, RecordError> {
        record.verify()?;
        if record.body.expires_at > now_unix.saturating_add(MAX_TTL) {
            return Err(RecordError::Invalid("expires more than a day from now"));
        }
        let now_ms = now_unix.saturating_mul(1000).saturating_add(999);
        if record.body.seq > now_ms.saturating_add(MAX_SEQ_AHEAD_MS) {
            return Err(RecordError::Invalid(
                "seq is more than 10 minutes ahead of this server's clock (seq counts milliseconds)",
            ));
        }
        let peer = record.body.peer;
        let online = record.body.expires_at > now_unix;
        let result = match self.by_id.get(&peer) {
            Some(have) if record.body.seq <= have.record.body.seq => {
                return Err(RecordError::Stale {
                    got: record.body.seq,
                    have: have.record.body.seq,
                });
            }
            Some(_) => Merged::Updated,
            None => Merged::New,
        };
        if let Some(old) = self.by_id.get(&peer) {
            let old_name = old.record.body.name.clone();
            self.unindex_name(&old_name, &peer);
        }
        self.by_name
            .entry(record.body.name.clone())
            .or_default()
            .push(peer);
        self.by_id.insert(peer, Stored { record, online });
        Ok(result)
    }

    fn unindex_name(&mut self, name: &str, peer: &PeerId) {
        if let Some(v) = self.by_name.get_mut(name) {
            v.retain(|p| p != peer);
            if v.is_empty() {
                self.by_name.remove(name);
            }
        }
    }

    /// The online record of `peer`.
    pub fn lookup(&self, peer: &PeerId) -> Option<&PeerRecord> {
        self.by_id.get(peer).filter(|s| s.online).map(|s| &s.record)
    }

    /// The freshest online record with this name.
    pub fn lookup_name(&self, name: &str) -> Option<&PeerRecord> {
        self.by_name
            .get(name)?
            .iter()
            .filter_map(|p| self.by_id.get(p))
            .filter(|s| s.online)
            .map(|s| &s.record)
            .max_by_key(|r| r.body.seq)
    }

    /// Every online record with this name, freshest first, at most
    /// [`MAX_NAME_MATCHES`] (names are labels anyone can claim: more than one
    /// means the name is ambiguous).
    pub fn lookup_name_all(&self, name: &str) -> Vec<&PeerRecord> {
        let mut v: Vec<&PeerRecord> = self
            .by_name
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|p| self.by_id.get(p))
            .filter(|s| s.online)
            .map(|s| &s.record)
            .collect();
        v.sort_by(|a, b| {
            b.body
                .seq
                .cmp(&a.body.seq)
                .then(a.body.peer.cmp(&b.body.peer))
        });
        v.truncate(MAX_NAME_MATCHES);
        v
    }

    /// Recomputes which records are online: not expired and homed on a
    /// live server. A home server that comes back (a healed partition, a
    /// refuted suspicion) brings its clients' records back.
    pub fn refresh_online(&mut self, live: &std::collections::BTreeSet<PeerId>, now_unix: u64) {
        for s in self.by_id.values_mut() {
            s.online =
                s.record.body.expires_at > now_unix && live.contains(&s.record.body.home_server);
        }
    }

    /// Online records whose home is `server` (its registered clients).
    pub fn online_homed_at(&self, server: &PeerId) -> usize {
        self.by_id
            .values()
            .filter(|s| s.online && s.record.body.home_server == *server)
            .count()
    }

    /// The home servers of online records.
    pub fn home_servers(&self) -> std::collections::BTreeSet<PeerId> {
        self.by_id
            .values()
            .filter(|s| s.online)
            .map(|s| s.record.body.home_server)
            .collect()
    }

    /// Every record homed on `server` goes offline (the server died or
    /// left; its clients re-register elsewhere with a higher seq).
    pub fn home_server_gone(&mut self, server: &PeerId) -> usize {
        let mut n = 0;
        for s in self.by_id.values_mut() {
            if s.online && s.record.body.home_server == *server {
                s.online = false;
                n += 1;
            }
        }
        n
    }

    /// Expired records go offline; records expired for longer than
    /// `forget_after_secs` are dropped.
    pub fn expire(&mut self, now_unix: u64, forget_after_secs: u64) {
        let mut forget = Vec::new();
        for (peer, s) in self.by_id.iter_mut() {
            if s.record.body.expires_at <= now_unix {
                s.online = false;
            }
            if s.record.body.expires_at.saturating_add(forget_after_secs) <= now_unix {
                forget.push((*peer, s.record.body.name.clone()));
            }
        }
        for (peer, name) in forget {
            self.by_id.remove(&peer);
            self.unindex_name(&name, &peer);
        }
    }

    /// Per-bucket summary of `(peer, seq)` pairs; equal digests mean equal
    /// record versions (up to hash collisions).
    pub fn digest(&self) -> Digest {
        let mut d = [0u64; 256];
        for (peer, s) in &self.by_id {
            d[bucket(peer)] ^= entry_hash(peer, s.record.body.seq);
        }
        d
    }

    /// Buckets where `theirs` differs from our digest.
    pub fn differing(&self, theirs: &Digest) -> Vec<u8> {
        let ours = self.digest();
        (0..=255u8)
            .filter(|&b| ours[b as usize] != theirs[b as usize])
            .collect()
    }

    /// `(peer, seq)` of every record in `bucket`, in peer order.
    pub fn bucket_versions(&self, bucket_index: u8) -> Vec<(PeerId, u64)> {
        let mut v: Vec<(PeerId, u64)> = self
            .by_id
            .iter()
            .filter(|(p, _)| bucket(p) == usize::from(bucket_index))
            .map(|(p, s)| (*p, s.record.body.seq))
            .collect();
        v.sort();
        v
    }

    /// The records we hold that are newer than, or missing from, the
    /// other side's `(peer, seq)` list for the same buckets.
    pub fn newer_than(&self, buckets: &[u8], theirs: &[(PeerId, u64)]) -> Vec<PeerRecord> {
        let theirs: BTreeMap<PeerId, u64> = theirs.iter().copied().collect();
        let mut out: Vec<PeerRecord> = self
            .by_id
            .iter()
            .filter(|(p, _)| buckets.contains(&(p.as_bytes()[0])))
            .filter(|(p, s)| theirs.get(p).is_none_or(|seq| *seq < s.record.body.seq))
            .map(|(_, s)| s.record.clone())
            .collect();
        out.sort_by_key(|r| r.body.peer);
        out
    }
}

fn entry_hash(peer: &PeerId, seq: u64) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(peer.as_bytes());
    h.update(&seq.to_le_bytes());
    let b = h.finalize();
    u64::from_le_bytes(b.as_bytes()[..8].try_into().unwrap_or([0; 8]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;

    fn rec(k: &Keypair, name: &str, home: PeerId, seq: u64, expires_at: u64) -> PeerRecord {
        PeerRecord::sign(
            k.signing_key(),
            RecordBody {
                peer: k.id().0,
                name: name.into(),
                home_server: home,
                public_addr: Some("203.0.113.7:4000".parse().unwrap()),
                private_addrs: vec!["192.168.1.7:4000".parse().unwrap()],
                seq,
                expires_at,
                nat: NatMapping::Unknown,
            },
        )
    }

    #[test]
    fn only_the_peer_can_write_its_record_and_never_backwards() {
        let alice = Keypair::from_seed([1; 32]);
        let mallory = Keypair::from_seed([2; 32]);
        let home = Keypair::from_seed([9; 32]).id().0;
        let mut t = PeerTable::new();
        assert_eq!(
            t.merge(rec(&alice, "alice", home, 5, 100), 10),
            Ok(Merged::New)
        );
        // Mallory signs a record claiming to be alice.
        let mut forged = rec(&mallory, "alice", home, 6, 100);
        forged.body.peer = alice.id().0;
        assert_eq!(t.merge(forged, 10), Err(RecordError::BadSignature));
        // A replay or rollback.
        assert!(matches!(
            t.merge(rec(&alice, "alice", home, 5, 100), 10),
            Err(RecordError::Stale { .. })
        ));
        assert!(matches!(
            t.merge(rec(&alice, "alice", home, 4, 100), 10),
            Err(RecordError::Stale { .. })
        ));
        assert_eq!(
            t.merge(rec(&alice, "alice2", home, 6, 100), 10),
            Ok(Merged::Updated)
        );
        assert!(
            t.lookup_name("alice").is_none(),
            "the old name is unindexed"
        );
        assert_eq!(t.lookup_name("alice2").unwrap().body.seq, 6);
        assert!(matches!(
            t.merge(rec(&alice, "", home, 7, 100), 10),
            Err(RecordError::Invalid(_))
        ));
    }

    #[test]
    fn records_go_offline_with_their_server_or_when_stale() {
        let (a, b) = (Keypair::from_seed([1; 32]), Keypair::from_seed([2; 32]));
        let (s1, s2) = (
            Keypair::from_seed([8; 32]).id().0,
            Keypair::from_seed([9; 32]).id().0,
        );
        let mut t = PeerTable::new();
        t.merge(rec(&a, "a", s1, 1, 100), 10).unwrap();
        t.merge(rec(&b, "b", s2, 1, 50), 10).unwrap();
        assert_eq!(t.home_server_gone(&s1), 1);
        assert!(t.lookup(&a.id().0).is_none());
        assert!(t.lookup(&b.id().0).is_some());
        // a re-registers elsewhere: online again.
        t.merge(rec(&a, "a", s2, 2, 100), 20).unwrap();
        assert!(t.lookup(&a.id().0).is_some());
        t.expire(60, 3600);
        assert!(t.lookup(&b.id().0).is_none(), "expired");
        assert_eq!(t.len(), 2);
        // b expired at 50, a at 100: an hour later only b is forgotten.
        t.expire(3680, 3600);
        assert_eq!(t.len(), 1, "forgotten an hour after expiry");
        assert!(t.lookup_name("b").is_none() && !t.by_name.contains_key("b"));
    }

    #[test]
    fn a_seq_far_ahead_of_the_clock_is_refused() {
        let alice = Keypair::from_seed([1; 32]);
        let home = Keypair::from_seed([9; 32]).id().0;
        let now = 1_700_000_000u64;
        let mut t = PeerTable::new();
        // seq = u64::MAX would win every name lookup forever.
        assert!(matches!(
            t.merge(rec(&alice, "alice", home, u64::MAX, now + 60), now),
            Err(RecordError::Invalid(_))
        ));
        let limit = now * 1000 + 999 + MAX_SEQ_AHEAD_MS;
        assert!(matches!(
            t.merge(rec(&alice, "alice", home, limit + 1, now + 60), now),
            Err(RecordError::Invalid(_))
        ));
        // A clock up to 10 minutes ahead, or a small counter, is fine.
        assert_eq!(
            t.merge(rec(&alice, "alice", home, limit, now + 60), now),
            Ok(Merged::New)
        );
        let bob = Keypair::from_seed([2; 32]);
        assert!(t.merge(rec(&bob, "bob", home, 1, now + 60), now).is_ok());
    }

    #[test]
    fn a_withdrawal_takes_the_record_offline_and_only_a_true_one_is_accepted() {
        let alice = Keypair::from_seed([1; 32]);
        let mallory = Keypair::from_seed([2; 32]);
        let home = Keypair::from_seed([9; 32]).id().0;
        let now = 1_700_000_000u64;
        let live = rec(&alice, "alice", home, 5, now + 600);
        let w = PeerRecord::withdrawal(alice.signing_key(), &live.body, now);
        assert_eq!(w.check_withdrawal(&live, now), Ok(()));
        assert!(!w.is_live(now) && w.body.seq == 6);
        // Not one seq above, not expired, someone else's, or another home.
        let mut far = live.body.clone();
        far.seq = 7;
        let far = PeerRecord::withdrawal(alice.signing_key(), &far, now);
        assert!(far.check_withdrawal(&live, now).is_err());
        let mut later = w.body.clone();
        later.expires_at = now + 10;
        let later = PeerRecord::sign(alice.signing_key(), later);
        assert!(later.check_withdrawal(&live, now).is_err());
        let mut early = w.body.clone();
        early.expires_at = 0;
        let early = PeerRecord::sign(alice.signing_key(), early);
        assert!(
            early.check_withdrawal(&live, now).is_err(),
            "a tombstone forgotten before the record expires"
        );
        let forged = PeerRecord::withdrawal(mallory.signing_key(), &live.body, now);
        assert_eq!(
            forged.check_withdrawal(&live, now),
            Err(RecordError::BadSignature)
        );
        let mut moved = live.body.clone();
        moved.home_server = alice.id().0;
        let moved = PeerRecord::withdrawal(alice.signing_key(), &moved, now);
        assert!(moved.check_withdrawal(&live, now).is_err());
        // Merged, it replaces the live record: offline, by id and by name.
        let mut t = PeerTable::new();
        t.merge(live.clone(), now).unwrap();
        assert_eq!(t.lookup_name_all("alice").len(), 1);
        t.merge(w, now).unwrap();
        assert!(t.lookup(&alice.id().0).is_none());
        assert!(t.lookup_name_all("alice").is_empty());
        assert_eq!(t.len(), 1, "kept as a tombstone");
    }

    #[test]
    fn every_online_record_of_a_name_is_listed_freshest_first() {
        let home = Keypair::from_seed([9; 32]).id().0;
        let (a, b, c) = (
            Keypair::from_seed([1; 32]),
            Keypair::from_seed([2; 32]),
            Keypair::from_seed([3; 32]),
        );
        let mut t = PeerTable::new();
        t.merge(rec(&a, "bob", home, 1, 100), 10).unwrap();
        t.merge(rec(&b, "bob", home, 3, 100), 10).unwrap();
        t.merge(rec(&c, "bob", home, 2, 20), 10).unwrap();
        let seqs: Vec<u64> = t
            .lookup_name_all("bob")
            .iter()
            .map(|r| r.body.seq)
            .collect();
        assert_eq!(seqs, vec![3, 2, 1]);
        t.expire(30, 3600);
        assert_eq!(
            t.lookup_name_all("bob").len(),
            2,
            "the expired one is not listed"
        );
    }

    #[test]
    fn anti_entropy_brings_two_tables_to_the_same_state() {
        let home = Keypair::from_seed([99; 32]).id().0;
        let keys: Vec<Keypair> = (0..200u16)
            .map(|i| {
                let mut seed = [0u8; 32];
                seed[..2].copy_from_slice(&i.to_le_bytes());
                seed[2] = 1;
                Keypair::from_seed(seed)
            })
            .collect();
        let (mut left, mut right) = (PeerTable::new(), PeerTable::new());
        // Each side saw a different part of the traffic (a partition).
        for (i, k) in keys.iter().enumerate() {
            let r = rec(k, &format!("p{i}"), home, 1, 1000);
            if i % 3 != 0 {
                left.merge(r.clone(), 0).unwrap();
            }
            if i % 3 != 1 {
                right.merge(r, 0).unwrap();
            }
        }
        right
            .merge(rec(&keys[2], "p2-moved", home, 2, 1000), 0)
            .unwrap();
        assert_ne!(left.digest(), right.digest());
        // One exchange: digests, then versions of differing buckets, then records.
        let buckets = left.differing(&right.digest());
        assert!(!buckets.is_empty() && buckets.len() < 256);
        let lv: Vec<(PeerId, u64)> = buckets
            .iter()
            .flat_map(|b| left.bucket_versions(*b))
            .collect();
        let rv: Vec<(PeerId, u64)> = buckets
            .iter()
            .flat_map(|b| right.bucket_versions(*b))
            .collect();
        for r in right.newer_than(&buckets, &lv) {
            left.merge(r, 0).unwrap();
        }
        for r in left.newer_than(&buckets, &rv) {
            right.merge(r, 0).unwrap();
        }
        assert_eq!(left.digest(), right.digest());
        assert_eq!(left.len(), 200);
        assert_eq!(left.lookup_name("p2-moved").unwrap().body.seq, 2);
    }
}
