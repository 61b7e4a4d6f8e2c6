//! The messages a node has seen: one compact record per message id, kept
//! for `seen_retention` (duplicate detection, tree optimisation), with the
//! payload kept for the shorter `message_cache_retention` (to answer GRAFTs).
//!
//! Layout, chosen for memory (a simulator holds 10,000+ nodes × hundreds of
//! messages, and a node's store is small, so hash-table slack dominates):
//! the records live in one ring in arrival order, and a hash table of
//! 4-byte ring positions finds them by the first 8 bytes of the id (ids are
//! blake3 outputs, so those bytes are uniform; a collision, ~2⁻⁶⁴ per pair,
//! would make a message look like a duplicate). Full ids are kept only for
//! the newest `ihave_max_entries` messages (the ones announced to a new
//! neighbor). Payloads are dropped oldest first, so the messages still
//! holding one are always the newest `cached` entries of the ring.

use crate::config::PlumtreeConfig;
use crate::id::MessageId;
use crate::time::Time;
use bytes::Bytes;
use core::hash::BuildHasher;
use std::collections::VecDeque;

/// What a node remembers about one message.
#[derive(Clone, Debug)]
pub(crate) struct Known<PI> {
    /// When it was first seen.
    pub(crate) at: Time,
    /// Our hop distance from the origin.
    pub(crate) hops: u16,
    /// The neighbor it came from (`None` for our own broadcasts).
    pub(crate) from: Option<PI>,
    /// Who broadcast it.
    pub(crate) origin: PI,
    /// The payload, while cached.
    pub(crate) payload: Option<Bytes>,
}

#[derive(Debug)]
struct Slot<PI> {
    key: u64,
    known: Known<PI>,
}

/// Seen messages and cached payloads.
#[derive(Debug)]
pub(crate) struct Store<PI> {
    /// Records, oldest first.
    ring: VecDeque<Slot<PI>>,
    /// Sequence number of `ring[0]`; `ring[i]` has `head + i` (wrapping).
    head: u32,
    /// Sequence numbers, hashed by their record's key.
    index: hashbrown::HashTable<u32>,
    hasher: foldhash::quality::FixedState,
    /// Full ids of the newest records: `recent[j]` belongs to
    /// `ring[ring.len() - recent.len() + j]`.
    recent: VecDeque<MessageId>,
    cached: usize,
    cached_bytes: usize,
}

fn key(id: &MessageId) -> u64 {
    let mut k = [0u8; 8];
    k.copy_from_slice(&id.0[..8]);
    u64::from_le_bytes(k)
}

impl<PI> Store<PI> {
    /// An empty store hashing with `seed` (from the node's RNG, so a peer
    /// cannot precompute colliding ids).
    pub(crate) fn new(seed: u64) -> Self {
        Store {
            ring: VecDeque::new(),
            head: 0,
            index: hashbrown::HashTable::new(),
            hasher: foldhash::quality::FixedState::with_seed(seed),
            recent: VecDeque::new(),
            cached: 0,
            cached_bytes: 0,
        }
    }

    /// Ring position of the record keyed `k`.
    fn find(&self, k: u64) -> Option<usize> {
        self.find_hashed(self.hasher.hash_one(k), k)
    }

    /// [`Self::find`] with the key's hash already computed.
    fn find_hashed(&self, hash: u64, k: u64) -> Option<usize> {
        let (ring, head) = (&self.ring, self.head);
        self.index
            .find(hash, |&s| ring[s.wrapping_sub(head) as usize].key == k)
            .map(|&s| s.wrapping_sub(head) as usize)
    }

    pub(crate) fn contains(&self, id: &MessageId) -> bool {
        self.find(key(id)).is_some()
    }

    pub(crate) fn get(&self, id: &MessageId) -> Option<&Known<PI>> {
        self.find(key(id)).map(|i| &self.ring[i].known)
    }

    pub(crate) fn get_mut(&mut self, id: &MessageId) -> Option<&mut Known<PI>> {
        self.find(key(id)).map(|i| &mut self.ring[i].known)
    }

    /// Messages remembered.
    pub(crate) fn len(&self) -> usize {
        self.ring.len()
    }

    /// Messages whose payload is still cached.
    pub(crate) fn cached_len(&self) -> usize {
        self.cached
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Records a new message (ignored if its id is already known), then
    /// enforces the count and byte limits.
    pub(crate) fn insert(&mut self, id: MessageId, known: Known<PI>, cfg: &PlumtreeConfig) {
        let k = key(&id);
        let hash = self.hasher.hash_one(k);
        if self.find_hashed(hash, k).is_some() {
            return;
        }
        if let Some(p) = &known.payload {
            self.cached += 1;
            self.cached_bytes += p.len();
        } else {
            // Keep the invariant: cached entries are a suffix of the ring.
            self.uncache_all_but(0);
        }
        let seq = self.head.wrapping_add(self.ring.len() as u32);
        self.ring.push_back(Slot { key: k, known });
        let (ring, head, hasher) = (&self.ring, self.head, &self.hasher);
        self.index.insert_unique(hash, seq, |&s| {
            hasher.hash_one(ring[s.wrapping_sub(head) as usize].key)
        });
        self.recent.push_back(id);
        while self.recent.len() > cfg.ihave_max_entries {
            self.recent.pop_front();
        }
        while self.ring.len() > cfg.seen_capacity.max(1) {
            self.pop_oldest();
        }
        while self.cached > cfg.message_cache_capacity
            || self.cached_bytes > cfg.message_cache_max_bytes
        {
            if !self.uncache_oldest() {
                break;
            }
        }
    }

    /// Forgets ids older than `seen_retention` and drops payloads older
    /// than `message_cache_retention`.
    pub(crate) fn expire(&mut self, now: Time, cfg: &PlumtreeConfig) {
        // `now - at >= retention`, written so that nothing expires before
        // `retention` has passed since time zero.
        let old = |at: Time, retention| now.saturating_since(at) >= retention;
        while self
            .ring
            .front()
            .is_some_and(|s| old(s.known.at, cfg.seen_retention))
        {
            self.pop_oldest();
        }
        while self.cached > 0 {
            let i = self.ring.len() - self.cached;
            if !old(self.ring[i].known.at, cfg.message_cache_retention) || !self.uncache_oldest() {
                break;
            }
        }
    }

    /// The newest cached messages (at most `ihave_max_entries`), newest
    /// first.
    pub(crate) fn recent_cached(&self) -> impl Iterator<Item = (&MessageId, &Known<PI>)> + '_ {
        self.recent
            .iter()
            .rev()
            .zip(self.ring.iter().rev())
            .take(self.cached)
            .map(|(id, s)| (id, &s.known))
    }

    fn pop_oldest(&mut self) {
        let Some(slot) = self.ring.pop_front() else {
            return;
        };
        let seq = self.head;
        self.head = self.head.wrapping_add(1);
        if let Ok(e) = self
            .index
            .find_entry(self.hasher.hash_one(slot.key), |&s| s == seq)
        {
            e.remove();
        }
        if self.recent.len() > self.ring.len() {
            self.recent.pop_front();
        }
        if self.cached > self.ring.len() {
            // The popped entry was cached (the whole ring was).
            self.cached -= 1;
            if let Some(p) = &slot.known.payload {
                self.cached_bytes -= p.len();
            }
        }
    }

    /// Drops the payload of the oldest cached message; false if none.
    fn uncache_oldest(&mut self) -> bool {
        if self.cached == 0 {
            return false;
        }
        let i = self.ring.len() - self.cached;
        self.cached -= 1;
        if let Some(p) = self.ring[i].known.payload.take() {
            self.cached_bytes -= p.len();
        }
        true
    }

    fn uncache_all_but(&mut self, keep: usize) {
        while self.cached > keep {
            self.uncache_oldest();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;
    use core::time::Duration;

    fn known(at: u64, payload: usize) -> Known<u32> {
        Known {
            at: Time::from_secs(at),
            hops: 1,
            from: Some(2),
            origin: 3,
            payload: Some(Bytes::from(vec![0u8; payload])),
        }
    }

    fn id(n: u8) -> MessageId {
        MessageId([n; 32])
    }

    #[test]
    fn payloads_expire_before_ids_and_limits_hold() {
        let mut cfg = Config::lan().plumtree;
        cfg.message_cache_capacity = 3;
        cfg.message_cache_max_bytes = 1000;
        cfg.seen_capacity = 5;
        cfg.message_cache_retention = Duration::from_secs(10);
        cfg.seen_retention = Duration::from_secs(100);
        let mut s = Store::new(1);
        for n in 0..4 {
            s.insert(id(n), known(u64::from(n), 100), &cfg);
        }
        assert_eq!(
            (s.len(), s.cached_len()),
            (4, 3),
            "count limit drops the oldest payload"
        );
        assert!(s.get(&id(0)).unwrap().payload.is_none());
        assert!(s.get(&id(3)).unwrap().payload.is_some());
        s.insert(id(4), known(4, 900), &cfg);
        // Count limit drops one payload; 900 + 100 + 100 > 1000 drops another.
        assert_eq!((s.cached_len(), s.cached_bytes), (2, 1000));
        for n in 5..8 {
            s.insert(id(n), known(u64::from(n), 1), &cfg);
        }
        assert_eq!(s.len(), 5, "seen capacity");
        assert!(!s.contains(&id(0)) && s.contains(&id(7)));
        // Retention: at t=14 payloads from t≤4 go; ids stay.
        s.expire(Time::from_secs(14), &cfg);
        let cached: Vec<u8> = s.recent_cached().map(|(i, _)| i.0[0]).collect();
        assert_eq!(cached, vec![7, 6, 5]);
        s.expire(Time::from_secs(200), &cfg);
        assert!(s.is_empty());
        assert_eq!((s.cached, s.cached_bytes), (0, 0));
    }

    #[test]
    fn a_known_id_is_not_inserted_twice() {
        let cfg = Config::lan().plumtree;
        let mut s = Store::new(1);
        s.insert(id(1), known(1, 10), &cfg);
        s.insert(id(1), known(2, 20), &cfg);
        assert_eq!((s.len(), s.cached_len(), s.cached_bytes), (1, 1, 10));
    }

    /// The ring + index layout against a plain model, across the u32
    /// sequence wrap, with count limits and expiry interleaved.
    #[test]
    fn ring_index_matches_a_model_across_sequence_wrap() {
        let mut cfg = Config::lan().plumtree;
        cfg.seen_capacity = 50;
        cfg.message_cache_capacity = 20;
        cfg.ihave_max_entries = 8;
        cfg.message_cache_retention = Duration::from_secs(5);
        cfg.seen_retention = Duration::from_secs(40);
        let mut s: Store<u32> = Store::new(7);
        s.head = u32::MAX - 30;
        let mut model: VecDeque<(MessageId, u64)> = VecDeque::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for t in 0..400u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut raw = [0u8; 32];
            raw[..8].copy_from_slice(&x.to_le_bytes());
            raw[8] = (t % 251) as u8;
            let id = MessageId(raw);
            s.insert(id, known(t, 10), &cfg);
            model.push_back((id, t));
            while model.len() > cfg.seen_capacity {
                model.pop_front();
            }
            if t % 7 == 0 {
                s.expire(Time::from_secs(t), &cfg);
                while model.front().is_some_and(|&(_, at)| at + 40 <= t) {
                    model.pop_front();
                }
            }
            assert_eq!(s.len(), model.len(), "t={t}");
            for (id, at) in &model {
                assert_eq!(s.get(id).map(|k| k.at), Some(Time::from_secs(*at)));
            }
            let recent: Vec<MessageId> = s.recent_cached().map(|(id, _)| *id).collect();
            let want: Vec<MessageId> = model
                .iter()
                .rev()
                .take(s.cached_len().min(8))
                .map(|(id, _)| *id)
                .collect();
            assert_eq!(recent, want, "t={t}");
        }
        assert!(s.head < 1000, "the sequence wrapped");
    }
}
