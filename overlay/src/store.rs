//! The messages a node has seen: one compact record per message id, kept
//! for `seen_retention` (duplicate detection, tree optimisation), with the
//! payload kept for the shorter `message_cache_retention` (to answer GRAFTs).
//!
//! Layout, chosen for memory (a simulator holds 10,000+ nodes × hundreds of
//! messages, and a node's store is small, so per-record bytes and container
//! slack dominate):
//! - the records live in one ring in arrival order, and a hash table of
//!   4-byte ring positions finds them by the first 8 bytes of the id (ids
//!   are blake3 outputs, so those bytes are uniform; a collision, ~2⁻⁶⁴ per
//!   pair, would make a message look like a duplicate). A record is 24
//!   bytes for 4-byte peer identities: key, arrival time (a 40-bit offset
//!   in µs from a per-store base), hops, parent, origin;
//! - payloads are dropped oldest first, so the messages still holding one
//!   are always the newest entries of the ring: a second ring holds the
//!   GOSSIP body (`id ‖ payload`, one shared buffer) of exactly that cached
//!   suffix. Only cached messages are ever announced to a new neighbor or
//!   served to a GRAFT, so nothing else needs its full id.

use crate::config::PlumtreeConfig;
use crate::id::MessageId;
use crate::time::Time;
use crate::wire::body_id;
use bytes::Bytes;
use core::hash::BuildHasher;
use core::time::Duration;
use std::collections::VecDeque;

/// What a node remembers about one message (besides its payload).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Known<PI> {
    /// Our hop distance from the origin.
    pub(crate) hops: u16,
    /// The neighbor it came from (`None` for our own broadcasts).
    pub(crate) from: Option<PI>,
    /// Who broadcast it.
    pub(crate) origin: PI,
}

/// Arrival times are kept as 40-bit microsecond offsets from the store's
/// `base` (12.7 days of range; retentions are at most a day, see
/// `config::MAX_DURATION`, so every record expires long before its offset
/// could overflow).
const AT_BITS: u32 = 40;
const AT_MAX: u64 = (1 << AT_BITS) - 1;

#[derive(Clone, Copy, Debug)]
struct Rec<PI> {
    /// The first 8 bytes of the id.
    key: u64,
    /// Low 32 bits of the arrival time's offset from `Store::base`, in µs.
    at_lo: u32,
    hops: u16,
    /// Bits 32..40 of that offset.
    at_hi: u8,
    /// Our own broadcast (`from` then holds `origin`, and means nothing).
    own: bool,
    from: PI,
    origin: PI,
}

impl<PI: Copy> Rec<PI> {
    fn new(key: u64, offset: u64, known: Known<PI>) -> Self {
        let mut rec = Rec {
            key,
            at_lo: 0,
            hops: known.hops,
            at_hi: 0,
            own: known.from.is_none(),
            from: known.from.unwrap_or(known.origin),
            origin: known.origin,
        };
        rec.set_offset(offset);
        rec
    }

    fn known(&self) -> Known<PI> {
        Known {
            hops: self.hops,
            from: (!self.own).then_some(self.from),
            origin: self.origin,
        }
    }

    fn offset(&self) -> u64 {
        u64::from(self.at_hi) << 32 | u64::from(self.at_lo)
    }

    fn set_offset(&mut self, offset: u64) {
        debug_assert!(offset <= AT_MAX);
        self.at_lo = offset as u32;
        self.at_hi = (offset >> 32) as u8;
    }
}

/// Seen messages and cached payloads.
#[derive(Debug)]
pub(crate) struct Store<PI> {
    /// Records, oldest first.
    ring: VecDeque<Rec<PI>>,
    /// Sequence number of `ring[0]`; `ring[i]` has `head + i` (wrapping).
    head: u32,
    /// Sequence numbers, hashed by their record's key.
    index: hashbrown::HashTable<u32>,
    hasher: foldhash::quality::FixedState,
    /// What record arrival times are offsets from.
    base: Time,
    /// GOSSIP bodies (`id ‖ payload`) of the newest records: `cached[j]`
    /// belongs to `ring[ring.len() - cached.len() + j]`.
    cached: VecDeque<Bytes>,
    /// Payload bytes cached (ids not counted).
    cached_bytes: usize,
}

/// Payload bytes of a GOSSIP body.
fn payload_len(body: &Bytes) -> usize {
    body.len().saturating_sub(core::mem::size_of::<MessageId>())
}

fn key(id: &MessageId) -> u64 {
    let mut k = [0u8; 8];
    k.copy_from_slice(&id.0[..8]);
    u64::from_le_bytes(k)
}

impl<PI: Copy> Store<PI> {
    /// An empty store hashing with `seed` (from the node's RNG, so a peer
    /// cannot precompute colliding ids).
    pub(crate) fn new(seed: u64) -> Self {
        Store {
            ring: VecDeque::new(),
            head: 0,
            index: hashbrown::HashTable::new(),
            hasher: foldhash::quality::FixedState::with_seed(seed),
            base: Time::ZERO,
            cached: VecDeque::new(),
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

    /// Position in `cached` of ring position `i`, if its payload is cached.
    fn cached_at(&self, i: usize) -> Option<usize> {
        i.checked_sub(self.ring.len() - self.cached.len())
    }

    pub(crate) fn contains(&self, id: &MessageId) -> bool {
        self.find(key(id)).is_some()
    }

    pub(crate) fn get(&self, id: &MessageId) -> Option<Known<PI>> {
        self.find(key(id)).map(|i| self.ring[i].known())
    }

    /// The cached GOSSIP body (`id ‖ payload`) of a known message.
    pub(crate) fn body(&self, id: &MessageId) -> Option<&Bytes> {
        let i = self.find(key(id))?;
        self.cached_at(i).map(|j| &self.cached[j])
    }

    /// Records a shorter path to a known message: `hops` through `from`.
    pub(crate) fn set_path(&mut self, id: &MessageId, hops: u16, from: PI) {
        if let Some(i) = self.find(key(id)) {
            let r = &mut self.ring[i];
            r.hops = hops;
            r.from = from;
            r.own = false;
        }
    }

    /// When a known message arrived.
    #[cfg(test)]
    fn arrived(&self, id: &MessageId) -> Option<Time> {
        self.find(key(id))
            .map(|i| self.base + Duration::from_micros(self.ring[i].offset()))
    }

    /// Messages remembered.
    pub(crate) fn len(&self) -> usize {
        self.ring.len()
    }

    /// Messages whose payload is still cached.
    pub(crate) fn cached_len(&self) -> usize {
        self.cached.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Records a new message that arrived at `now` (ignored if its id is
    /// already known), with its GOSSIP body (`id ‖ payload`) if it is to be
    /// cached, then enforces the count and byte limits.
    pub(crate) fn insert(
        &mut self,
        id: MessageId,
        now: Time,
        known: Known<PI>,
        body: Option<Bytes>,
        cfg: &PlumtreeConfig,
    ) {
        let k = key(&id);
        let hash = self.hasher.hash_one(k);
        if self.find_hashed(hash, k).is_some() {
            return;
        }
        let offset = self.offset_of(now);
        let seq = self.head.wrapping_add(self.ring.len() as u32);
        self.ring.push_back(Rec::new(k, offset, known));
        let (ring, head, hasher) = (&self.ring, self.head, &self.hasher);
        self.index.insert_unique(hash, seq, |&s| {
            hasher.hash_one(ring[s.wrapping_sub(head) as usize].key)
        });
        match body {
            Some(b) => {
                debug_assert_eq!(body_id(&b), id);
                self.cached_bytes += payload_len(&b);
                self.cached.push_back(b);
            }
            // Keep the invariant: cached entries are a suffix of the ring.
            None => self.uncache_all(),
        }
        while self.ring.len() > cfg.seen_capacity.max(1) {
            self.pop_oldest();
        }
        while self.cached.len() > cfg.message_cache_capacity
            || self.cached_bytes > cfg.message_cache_max_bytes
        {
            if !self.uncache_oldest() {
                break;
            }
        }
    }

    /// The offset from `base` of `now`, moving `base` forward if the offset
    /// would not fit. Records more than 2⁴⁰ µs (12.7 days) older than `now`
    /// are forgotten then: any retention a valid config allows has expired
    /// them long before.
    fn offset_of(&mut self, now: Time) -> u64 {
        let offset = now.saturating_since(self.base).as_micros() as u64;
        if offset <= AT_MAX {
            return offset;
        }
        while self
            .ring
            .front()
            .is_some_and(|r| offset.saturating_sub(r.offset()) > AT_MAX)
        {
            self.pop_oldest();
        }
        let shift = self.ring.front().map_or(offset, |r| r.offset().min(offset));
        for r in &mut self.ring {
            r.set_offset(r.offset().saturating_sub(shift));
        }
        self.base = self.base + Duration::from_micros(shift);
        now.saturating_since(self.base).as_micros() as u64
    }

    /// Forgets ids older than `seen_retention` and drops payloads older
    /// than `message_cache_retention`.
    pub(crate) fn expire(&mut self, now: Time, cfg: &PlumtreeConfig) {
        // `now - at >= retention`, written so that nothing expires before
        // `retention` has passed since time zero.
        let base = self.base;
        let old = |r: &Rec<PI>, retention| {
            now.saturating_since(base + Duration::from_micros(r.offset())) >= retention
        };
        while self
            .ring
            .front()
            .is_some_and(|r| old(r, cfg.seen_retention))
        {
            self.pop_oldest();
        }
        while let Some(i) = self.ring.len().checked_sub(self.cached.len()) {
            if self.cached.is_empty() || !old(&self.ring[i], cfg.message_cache_retention) {
                break;
            }
            self.uncache_oldest();
        }
    }

    /// The newest cached messages, newest first: id and hop count.
    pub(crate) fn recent_cached(&self) -> impl Iterator<Item = (MessageId, u16)> + '_ {
        self.cached
            .iter()
            .rev()
            .zip(self.ring.iter().rev())
            .map(|(b, r)| (body_id(b), r.hops))
    }

    fn pop_oldest(&mut self) {
        let Some(rec) = self.ring.pop_front() else {
            return;
        };
        let seq = self.head;
        self.head = self.head.wrapping_add(1);
        if let Ok(e) = self
            .index
            .find_entry(self.hasher.hash_one(rec.key), |&s| s == seq)
        {
            e.remove();
        }
        if self.cached.len() > self.ring.len() {
            // The popped record was cached (the whole ring was).
            self.uncache_oldest();
        }
    }

    /// Drops the payload of the oldest cached message; false if none.
    fn uncache_oldest(&mut self) -> bool {
        match self.cached.pop_front() {
            Some(b) => {
                self.cached_bytes -= payload_len(&b);
                true
            }
            None => false,
        }
    }

    fn uncache_all(&mut self) {
        self.cached.clear();
        self.cached_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn known(origin: u32) -> Known<u32> {
        Known {
            hops: 1,
            from: Some(2),
            origin,
        }
    }

    fn id(n: u8) -> MessageId {
        MessageId([n; 32])
    }

    /// The GOSSIP body of message `n` with a payload of `len` bytes.
    fn body(n: u8, len: usize) -> Option<Bytes> {
        Some(
            crate::wire::Gossip::new(id(n), 0u32, 0, &vec![0u8; len])
                .body()
                .clone(),
        )
    }

    fn secs(s: u64) -> Time {
        Time::from_secs(s)
    }

    /// The invariants every operation must keep.
    fn check(s: &Store<u32>) {
        assert!(
            s.cached.len() <= s.ring.len(),
            "cached entries are a suffix"
        );
        let off = s.ring.len() - s.cached.len();
        for (j, b) in s.cached.iter().enumerate() {
            let id = body_id(b);
            assert_eq!(s.ring[off + j].key, key(&id), "cached[{j}] is its record's");
            assert_eq!(s.body(&id), Some(b));
        }
        assert_eq!(
            s.cached_bytes,
            s.cached.iter().map(|b| b.len() - 32).sum::<usize>()
        );
        assert_eq!(s.index.len(), s.ring.len());
        for (i, r) in s.ring.iter().enumerate() {
            assert_eq!(s.find(r.key), Some(i));
        }
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
            s.insert(id(n), secs(u64::from(n)), known(3), body(n, 100), &cfg);
            check(&s);
        }
        assert_eq!(
            (s.len(), s.cached_len()),
            (4, 3),
            "count limit drops the oldest payload"
        );
        assert!(s.body(&id(0)).is_none() && s.contains(&id(0)));
        assert!(s.body(&id(3)).is_some());
        s.insert(id(4), secs(4), known(3), body(4, 900), &cfg);
        check(&s);
        // Count limit drops one payload; 900 + 100 + 100 > 1000 drops another.
        assert_eq!((s.cached_len(), s.cached_bytes), (2, 1000));
        for n in 5..8 {
            s.insert(id(n), secs(u64::from(n)), known(3), body(n, 1), &cfg);
            check(&s);
        }
        assert_eq!(s.len(), 5, "seen capacity");
        assert!(!s.contains(&id(0)) && s.contains(&id(7)));
        // Retention: at t=14 payloads from t≤4 go; ids stay.
        s.expire(secs(14), &cfg);
        check(&s);
        let cached: Vec<u8> = s.recent_cached().map(|(i, _)| i.0[0]).collect();
        assert_eq!(cached, vec![7, 6, 5]);
        assert_eq!(s.len(), 5);
        s.expire(secs(200), &cfg);
        check(&s);
        assert!(s.is_empty());
        assert_eq!((s.cached_len(), s.cached_bytes), (0, 0));
    }

    #[test]
    fn a_known_id_is_not_inserted_twice() {
        let cfg = Config::lan().plumtree;
        let mut s = Store::new(1);
        s.insert(id(1), secs(1), known(3), body(1, 10), &cfg);
        s.insert(id(1), secs(2), known(4), body(1, 20), &cfg);
        check(&s);
        assert_eq!((s.len(), s.cached_len(), s.cached_bytes), (1, 1, 10));
        assert_eq!(s.get(&id(1)).map(|k| k.origin), Some(3));
        assert_eq!(s.arrived(&id(1)), Some(secs(1)));
    }

    #[test]
    fn a_message_without_payload_uncaches_everything_older() {
        let cfg = Config::lan().plumtree;
        let mut s = Store::new(1);
        s.insert(id(1), secs(1), known(3), body(1, 10), &cfg);
        s.insert(id(2), secs(2), known(3), None, &cfg);
        check(&s);
        assert_eq!((s.len(), s.cached_len(), s.cached_bytes), (2, 0, 0));
        s.insert(id(3), secs(3), known(3), body(3, 5), &cfg);
        check(&s);
        let recent: Vec<u8> = s.recent_cached().map(|(i, _)| i.0[0]).collect();
        assert_eq!(recent, vec![3]);
    }

    #[test]
    fn records_keep_parent_origin_and_hops() {
        let cfg = Config::lan().plumtree;
        let mut s: Store<u32> = Store::new(1);
        let own = Known {
            hops: 0,
            from: None,
            origin: 9,
        };
        s.insert(id(1), secs(1), own, body(1, 1), &cfg);
        s.insert(id(2), secs(1), known(5), body(2, 1), &cfg);
        assert_eq!(s.get(&id(1)), Some(own), "our own broadcast has no parent");
        assert_eq!(s.get(&id(2)), Some(known(5)));
        s.set_path(&id(2), 7, 8);
        assert_eq!(
            s.get(&id(2)),
            Some(Known {
                hops: 7,
                from: Some(8),
                origin: 5
            })
        );
        let recent: Vec<(u8, u16)> = s.recent_cached().map(|(i, h)| (i.0[0], h)).collect();
        assert_eq!(recent, vec![(2, 7), (1, 0)]);
        assert_eq!(s.get(&id(3)), None);
    }

    /// Arrival times are 40-bit offsets from a base that moves forward when
    /// needed; ages stay exact across the move.
    #[test]
    fn arrival_times_survive_a_base_move() {
        let mut cfg = Config::lan().plumtree;
        cfg.seen_retention = Duration::from_secs(86_400);
        cfg.message_cache_retention = Duration::from_secs(3600);
        let mut s = Store::new(1);
        let day = 86_400;
        let t0 = 13 * day; // past 2⁴⁰ µs (12.7 days) from time zero
        s.insert(id(1), secs(t0), known(3), body(1, 1), &cfg);
        assert_eq!(s.arrived(&id(1)), Some(secs(t0)));
        assert_eq!(s.base, secs(t0), "the base moved to the only record");
        s.insert(id(2), secs(t0 + day / 2), known(3), body(2, 1), &cfg);
        s.insert(id(3), secs(t0 + 12 * day), known(3), body(3, 1), &cfg);
        check(&s);
        assert_eq!(s.arrived(&id(2)), Some(secs(t0 + day / 2)));
        assert_eq!(s.arrived(&id(3)), Some(secs(t0 + 12 * day)));
        // 13 days after the first: it is forgotten to fit the offsets.
        s.insert(id(4), secs(t0 + 13 * day), known(3), body(4, 1), &cfg);
        check(&s);
        assert!(!s.contains(&id(1)));
        for (n, t) in [(2, t0 + day / 2), (3, t0 + 12 * day), (4, t0 + 13 * day)] {
            assert_eq!(s.arrived(&id(n)), Some(secs(t)), "id {n}");
        }
        // A day's retention leaves the last one, with its payload.
        s.expire(secs(t0 + 13 * day), &cfg);
        check(&s);
        assert_eq!((s.len(), s.cached_len()), (1, 1));
        assert!(s.contains(&id(4)));
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
        // (id, arrival, payload still cached)
        let mut model: VecDeque<(MessageId, u64, bool)> = VecDeque::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for t in 0..400u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut raw = [0u8; 32];
            raw[..8].copy_from_slice(&x.to_le_bytes());
            raw[8] = (t % 251) as u8;
            let id = MessageId(raw);
            let cache = t % 37 != 0;
            s.insert(
                id,
                secs(t),
                known(3),
                cache.then(|| {
                    crate::wire::Gossip::new(id, 0u32, 0, &[1; 10])
                        .body()
                        .clone()
                }),
                &cfg,
            );
            if !cache {
                model.iter_mut().for_each(|m| m.2 = false);
            }
            model.push_back((id, t, cache));
            while model.len() > cfg.seen_capacity {
                model.pop_front();
            }
            let mut cached = model.iter().filter(|m| m.2).count();
            for m in model.iter_mut() {
                if m.2 && cached > cfg.message_cache_capacity {
                    m.2 = false;
                    cached -= 1;
                }
            }
            if t % 7 == 0 {
                s.expire(secs(t), &cfg);
                while model.front().is_some_and(|&(_, at, _)| at + 40 <= t) {
                    model.pop_front();
                }
                for m in model.iter_mut() {
                    m.2 &= m.1 + 5 > t;
                }
            }
            check(&s);
            assert_eq!(s.len(), model.len(), "t={t}");
            for (id, at, cached) in &model {
                assert_eq!(s.arrived(id), Some(secs(*at)));
                assert_eq!(s.body(id).is_some(), *cached, "t={t}");
            }
            let recent: Vec<MessageId> = s.recent_cached().map(|(id, _)| id).collect();
            let want: Vec<MessageId> = model
                .iter()
                .rev()
                .take_while(|m| m.2)
                .map(|(id, ..)| *id)
                .collect();
            assert_eq!(recent, want, "t={t}");
        }
        assert!(s.head < 1000, "the sequence wrapped");
    }
}
