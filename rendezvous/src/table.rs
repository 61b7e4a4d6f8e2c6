//! The replicated peer table: where each client can be reached.
//!
//! Mechanics only (the [`crate::server`] decides who may write what):
//! - last writer wins by `seq`; a record is *online* while it has not
//!   expired and its home server is live (the caller says which servers
//!   are, so a dead server's clients go offline without touching the
//!   table);
//! - names: only unexpired records are in the name index (tombstones and
//!   stale records never answer a name), each with the instant this table
//!   first saw that peer hold that name; a name's holders are listed oldest
//!   first, so a newcomer cannot take a name from whoever holds it;
//! - expiry and forgetting through ordered indexes (no scans), a per-home
//!   count of unexpired records (the per-home cap), and a per-bucket digest
//!   kept up to date on every change (anti-entropy compares it in O(1)).
//!
//! Records are shared (`Arc`): a simulator holding the same record at
//! thousands of servers stores it once.

use crate::record::{MAX_TTL, PeerRecord};
use overlay::{PeerId, Time};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A summary for anti-entropy: one hash per bucket of peer ids (the first
/// byte of the id).
pub type Digest = [u64; 256];

/// Number of digest buckets.
pub const BUCKETS: usize = 256;

/// A stored record.
#[derive(Clone, Debug)]
struct Stored {
    record: Arc<PeerRecord>,
    /// Since when this table has seen this peer hold its name (while
    /// unexpired); `None` once expired.
    named_since: Option<Time>,
}

/// What [`PeerTable::insert`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merged {
    /// A peer we did not know.
    New,
    /// A newer record replaced ours.
    Updated,
}

/// The table.
#[derive(Debug)]
pub struct PeerTable {
    by_id: BTreeMap<PeerId, Stored>,
    /// name → (since, peer) of unexpired records.
    by_name: BTreeMap<String, BTreeSet<(Time, PeerId)>>,
    /// (expires_at, peer) of unexpired records.
    expiry: BTreeSet<(u64, PeerId)>,
    /// (forget_at, peer) of every record.
    forget: BTreeSet<(u64, PeerId)>,
    /// home → unexpired records homed there.
    per_home: BTreeMap<PeerId, u32>,
    digest: Box<Digest>,
}

impl Default for PeerTable {
    fn default() -> Self {
        PeerTable {
            by_id: BTreeMap::new(),
            by_name: BTreeMap::new(),
            expiry: BTreeSet::new(),
            forget: BTreeSet::new(),
            per_home: BTreeMap::new(),
            digest: Box::new([0; BUCKETS]),
        }
    }
}

/// The bucket of a peer id.
pub fn bucket_of(peer: &PeerId) -> u8 {
    peer.as_bytes()[0]
}

fn bucket_start(b: u8) -> PeerId {
    let mut id = [0u8; 32];
    id[0] = b;
    PeerId(id)
}

fn bucket_end(b: u8) -> PeerId {
    let mut id = [0xffu8; 32];
    id[0] = b;
    PeerId(id)
}

/// When a record may be forgotten: [`MAX_TTL`] after it expired (a
/// tombstone outlives every record it replaced).
fn forget_at(r: &PeerRecord) -> u64 {
    r.body.expires_at.saturating_add(MAX_TTL)
}

fn entry_hash(peer: &PeerId, seq: u64) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(peer.as_bytes());
    h.update(&seq.to_le_bytes());
    let b = h.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&b.as_bytes()[..8]);
    u64::from_le_bytes(out)
}

impl PeerTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records held (tombstones included).
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Unexpired records (online unless their home is dead).
    pub fn unexpired(&self) -> usize {
        self.expiry.len()
    }

    /// Unexpired records homed at `home`.
    pub fn homed_at(&self, home: &PeerId) -> u32 {
        self.per_home.get(home).copied().unwrap_or(0)
    }

    /// The record we hold for `peer`, online or not.
    pub fn get(&self, peer: &PeerId) -> Option<&Arc<PeerRecord>> {
        self.by_id.get(peer).map(|s| &s.record)
    }

    /// The seq we hold for `peer`.
    pub fn seq_of(&self, peer: &PeerId) -> Option<u64> {
        self.get(peer).map(|r| r.body.seq)
    }

    /// Stores `record`, which the caller checked (signature, bounds) and
    /// found newer than ours: replaces the old record in every index.
    pub fn insert(&mut self, record: Arc<PeerRecord>, now: Time, now_unix: u64) -> Merged {
        let peer = record.body.peer;
        let old = self.by_id.remove(&peer);
        let kept_since = old.as_ref().and_then(|o| {
            // Same name, still unexpired: it keeps its place in the name's queue.
            (o.record.body.name == record.body.name)
                .then_some(o.named_since)
                .flatten()
        });
        let merged = match &old {
            Some(o) => {
                self.unindex(o);
                Merged::Updated
            }
            None => Merged::New,
        };
        let live = record.body.expires_at > now_unix;
        let stored = Stored {
            named_since: live.then_some(kept_since.unwrap_or(now)),
            record,
        };
        self.index(&stored);
        self.by_id.insert(peer, stored);
        merged
    }

    fn index(&mut self, s: &Stored) {
        let b = &s.record.body;
        self.digest[usize::from(bucket_of(&b.peer))] ^= entry_hash(&b.peer, b.seq);
        self.forget.insert((forget_at(&s.record), b.peer));
        if let Some(since) = s.named_since {
            self.by_name
                .entry(b.name.clone())
                .or_default()
                .insert((since, b.peer));
            self.expiry.insert((b.expires_at, b.peer));
            *self.per_home.entry(b.home_server).or_insert(0) += 1;
        }
    }

    fn unindex(&mut self, s: &Stored) {
        let b = &s.record.body;
        self.digest[usize::from(bucket_of(&b.peer))] ^= entry_hash(&b.peer, b.seq);
        self.forget.remove(&(forget_at(&s.record), b.peer));
        if let Some(since) = s.named_since {
            self.unname(&b.name, since, &b.peer);
            self.expiry.remove(&(b.expires_at, b.peer));
            if let Some(n) = self.per_home.get_mut(&b.home_server) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_home.remove(&b.home_server);
                }
            }
        }
    }

    fn unname(&mut self, name: &str, since: Time, peer: &PeerId) {
        if let Some(set) = self.by_name.get_mut(name) {
            set.remove(&(since, *peer));
            if set.is_empty() {
                self.by_name.remove(name);
            }
        }
    }

    /// The online record of `peer` (`live` says which home servers are).
    pub fn lookup(
        &self,
        peer: &PeerId,
        now_unix: u64,
        live: impl Fn(&PeerId) -> bool,
    ) -> Option<&Arc<PeerRecord>> {
        self.by_id
            .get(peer)
            .map(|s| &s.record)
            .filter(|r| r.body.expires_at > now_unix && live(&r.body.home_server))
    }

    /// The online holders of `name`, the one that has held it longest
    /// first, at most `max`.
    pub fn holders(
        &self,
        name: &str,
        now_unix: u64,
        live: impl Fn(&PeerId) -> bool,
        max: usize,
    ) -> Vec<&Arc<PeerRecord>> {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|(_, p)| self.by_id.get(p))
            .map(|s| &s.record)
            .filter(|r| r.body.expires_at > now_unix && live(&r.body.home_server))
            .take(max)
            .collect()
    }

    /// Records that expired go out of the name index and the per-home
    /// counts; records expired for longer than [`MAX_TTL`] are forgotten.
    /// Returns how many were forgotten. Cost: the records that changed.
    pub fn expire(&mut self, now_unix: u64) -> usize {
        while let Some(&(at, peer)) = self.expiry.first() {
            if at > now_unix {
                break;
            }
            self.expiry.pop_first();
            if let Some(mut s) = self.by_id.remove(&peer) {
                self.unindex(&s);
                s.named_since = None;
                self.index(&s);
                self.by_id.insert(peer, s);
            }
        }
        let mut forgotten = 0;
        while let Some(&(at, peer)) = self.forget.first() {
            if at > now_unix {
                break;
            }
            self.forget.pop_first();
            if let Some(s) = self.by_id.remove(&peer) {
                self.unindex(&s);
                forgotten += 1;
            }
        }
        forgotten
    }

    /// The anti-entropy digest (kept up to date on every change).
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Buckets where `theirs` differs from our digest.
    pub fn differing(&self, theirs: &Digest) -> Vec<u8> {
        (0..=255u8)
            .filter(|&b| self.digest[usize::from(b)] != theirs[usize::from(b)])
            .collect()
    }

    /// Up to `limit` `(peer, seq)` of bucket `b` after `after` (exclusive),
    /// in id order.
    pub fn versions(&self, b: u8, after: Option<PeerId>, limit: usize) -> Vec<(PeerId, u64)> {
        self.range(b, after, None)
            .take(limit)
            .map(|r| (r.body.peer, r.body.seq))
            .collect()
    }

    /// The records of bucket `b` with ids in `(after, upto]` (`None`: the
    /// bucket's start or end), in id order.
    pub fn range(
        &self,
        b: u8,
        after: Option<PeerId>,
        upto: Option<PeerId>,
    ) -> impl Iterator<Item = &Arc<PeerRecord>> {
        use std::ops::Bound;
        let lo = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Included(bucket_start(b)),
        };
        let hi = Bound::Included(upto.unwrap_or(bucket_end(b)));
        let valid = match (lo, hi) {
            (Bound::Excluded(a), Bound::Included(z)) => a < z && bucket_of(&a) == b,
            _ => true,
        };
        let range = if valid {
            Some(self.by_id.range((lo, hi)))
        } else {
            None
        };
        range.into_iter().flatten().map(|(_, s)| &s.record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::{key, rec};

    fn put(t: &mut PeerTable, r: PeerRecord, now: u64) -> Merged {
        t.insert(Arc::new(r), Time::from_secs(now), now)
    }

    #[test]
    fn a_name_belongs_to_its_first_holder_and_never_to_a_tombstone() {
        let (_, home) = key(9);
        let mut t = PeerTable::new();
        put(&mut t, rec(1, "alice", home, 5, 1000), 10);
        // A squatter registers the same name later with a huge seq.
        put(&mut t, rec(2, "alice", home, 900_000, 1000), 20);
        let all = |t: &PeerTable, now| -> Vec<u8> {
            t.holders("alice", now, |_| true, 16)
                .iter()
                .map(|r| r.body.peer.0[0])
                .collect()
        };
        let first = key(1).1.0[0];
        let second = key(2).1.0[0];
        assert_eq!(all(&t, 30), vec![first, second], "oldest holder first");
        // alice refreshes: she keeps her place.
        put(&mut t, rec(1, "alice", home, 6, 1000), 40);
        assert_eq!(all(&t, 50), vec![first, second]);
        // alice renames and comes back: now she is behind.
        put(&mut t, rec(1, "al", home, 7, 1000), 60);
        put(&mut t, rec(1, "alice", home, 8, 1000), 70);
        assert_eq!(all(&t, 80), vec![second, first]);
        // An expired record (a tombstone) is not in the index at all.
        put(&mut t, rec(2, "alice", home, 900_001, 5), 90);
        assert_eq!(all(&t, 95), vec![first]);
        assert_eq!(t.unexpired(), 1);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn expiry_and_forgetting_keep_every_index_consistent() {
        let (_, h1) = key(8);
        let (_, h2) = key(9);
        let mut t = PeerTable::new();
        put(&mut t, rec(1, "a", h1, 1, 100), 10);
        put(&mut t, rec(2, "b", h2, 1, 50), 10);
        assert_eq!((t.homed_at(&h1), t.homed_at(&h2)), (1, 1));
        // Home liveness is the caller's: a's home is dead.
        assert!(t.lookup(&key(1).1, 20, |h| *h != h1).is_none());
        assert!(t.lookup(&key(2).1, 20, |h| *h != h1).is_some());
        t.expire(60);
        assert!(t.lookup(&key(2).1, 60, |_| true).is_none(), "expired");
        assert!(t.holders("b", 60, |_| true, 16).is_empty());
        assert_eq!((t.homed_at(&h1), t.homed_at(&h2)), (1, 0));
        assert_eq!(t.len(), 2, "kept as a tombstone");
        let digest = *t.digest();
        // b is forgotten MAX_TTL after its expiry, a later.
        assert_eq!(t.expire(50 + MAX_TTL), 1);
        assert_eq!(t.len(), 1);
        assert_ne!(*t.digest(), digest);
        assert_eq!(t.expire(100 + MAX_TTL), 1);
        assert!(t.is_empty());
        assert_eq!(*t.digest(), [0u64; BUCKETS]);
        assert!(t.by_name.is_empty() && t.expiry.is_empty() && t.forget.is_empty());
        assert!(t.per_home.is_empty());
    }

    #[test]
    fn the_digest_is_the_same_whatever_the_order_of_arrival() {
        let (_, home) = key(9);
        let (mut a, mut b) = (PeerTable::new(), PeerTable::new());
        for i in 1..=40u8 {
            put(&mut a, rec(i, "x", home, 1, 1000), 1);
        }
        for i in (1..=40u8).rev() {
            put(&mut b, rec(i, "x", home, 1, 1000), 1);
        }
        put(&mut a, rec(7, "x", home, 2, 1000), 1);
        assert_eq!(a.differing(b.digest()).len(), 1);
        put(&mut b, rec(7, "x", home, 2, 1000), 1);
        assert_eq!(a.digest(), b.digest());
        let bucket = bucket_of(&key(7).1);
        let vs = a.versions(bucket, None, 100);
        assert!(vs.contains(&(key(7).1, 2)));
        assert!(vs.windows(2).all(|w| w[0].0 < w[1].0));
        // Paging: after the first entry, the rest.
        let rest = a.versions(bucket, Some(vs[0].0), 100);
        assert_eq!(rest.len(), vs.len() - 1);
        assert_eq!(a.range(bucket, Some(vs[0].0), Some(vs[0].0)).count(), 0);
    }
}
