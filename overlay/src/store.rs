//! The messages a node has seen: one compact record per message id, kept
//! for `seen_retention` (duplicate detection, tree optimisation), with the
//! payload kept for the shorter `message_cache_retention` (to answer GRAFTs).
//!
//! Layout, chosen for memory (a simulator holds 10,000+ nodes × hundreds of
//! messages): one hash map keyed by the first 8 bytes of the id (ids are
//! blake3 outputs, so those bytes are uniform; a collision, ~2⁻⁶⁴ per pair,
//! would make a message look like a duplicate), and one deque of full ids in
//! arrival order. Payloads are dropped oldest first, so the messages still
//! holding one are always the newest `cached` entries of the deque.

use crate::config::PlumtreeConfig;
use crate::id::MessageId;
use crate::time::Time;
use bytes::Bytes;
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

type Map<V> = hashbrown::HashMap<u64, V, foldhash::quality::FixedState>;

/// Seen messages and cached payloads.
#[derive(Debug)]
pub(crate) struct Store<PI> {
    map: Map<Known<PI>>,
    order: VecDeque<MessageId>,
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
            map: Map::with_hasher(foldhash::quality::FixedState::with_seed(seed)),
            order: VecDeque::new(),
            cached: 0,
            cached_bytes: 0,
        }
    }

    pub(crate) fn contains(&self, id: &MessageId) -> bool {
        self.map.contains_key(&key(id))
    }

    pub(crate) fn get(&self, id: &MessageId) -> Option<&Known<PI>> {
        self.map.get(&key(id))
    }

    pub(crate) fn get_mut(&mut self, id: &MessageId) -> Option<&mut Known<PI>> {
        self.map.get_mut(&key(id))
    }

    /// Messages remembered.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Messages whose payload is still cached.
    pub(crate) fn cached_len(&self) -> usize {
        self.cached
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Records a new message (ignored if its id is already known), then
    /// enforces the count and byte limits.
    pub(crate) fn insert(&mut self, id: MessageId, known: Known<PI>, cfg: &PlumtreeConfig) {
        let k = key(&id);
        if self.map.contains_key(&k) {
            return;
        }
        if let Some(p) = &known.payload {
            self.cached += 1;
            self.cached_bytes += p.len();
        } else {
            // Keep the invariant: cached entries are a suffix of `order`.
            self.uncache_all_but(0);
        }
        self.map.insert(k, known);
        self.order.push_back(id);
        while self.map.len() > cfg.seen_capacity.max(1) {
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
        let seen_cutoff = now - cfg.seen_retention;
        while let Some(front) = self.order.front() {
            match self.map.get(&key(front)) {
                Some(k) if k.at > seen_cutoff => break,
                _ => self.pop_oldest(),
            }
        }
        let cache_cutoff = now - cfg.message_cache_retention;
        while self.cached > 0 {
            let i = self.order.len() - self.cached;
            let old = self
                .map
                .get(&key(&self.order[i]))
                .is_none_or(|k| k.at <= cache_cutoff);
            if !old || !self.uncache_oldest() {
                break;
            }
        }
    }

    /// The newest cached messages, newest first.
    pub(crate) fn recent_cached(&self) -> impl Iterator<Item = (&MessageId, &Known<PI>)> + '_ {
        self.order
            .iter()
            .rev()
            .take(self.cached)
            .filter_map(|id| self.map.get(&key(id)).map(|k| (id, k)))
    }

    fn pop_oldest(&mut self) {
        let Some(id) = self.order.pop_front() else {
            return;
        };
        if self.cached > self.order.len() {
            // The popped entry was cached (the whole deque was).
            self.cached -= 1;
            if let Some(p) = self.map.get(&key(&id)).and_then(|k| k.payload.as_ref()) {
                self.cached_bytes -= p.len();
            }
        }
        self.map.remove(&key(&id));
    }

    /// Drops the payload of the oldest cached message; false if none.
    fn uncache_oldest(&mut self) -> bool {
        if self.cached == 0 {
            return false;
        }
        let i = self.order.len() - self.cached;
        self.cached -= 1;
        if let Some(p) = self
            .map
            .get_mut(&key(&self.order[i]))
            .and_then(|k| k.payload.take())
        {
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
}
