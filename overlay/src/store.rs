//! The messages a node has seen: one compact record per message id, kept
//! for `seen_retention` (duplicate detection, tree optimisation), with the
//! payload kept for the shorter `message_cache_retention` (to answer GRAFTs).
//!
//! Layout, chosen for memory (a simulator holds 10,000+ nodes × hundreds of
//! messages, and a node's store is small, so per-record bytes and container
//! slack dominate):
//! - the records live in one ring in arrival order, found by their key, the
//!   first 8 bytes of the id (ids are blake3 outputs, so those bytes are
//!   uniform; a collision, ~2⁻⁶⁴ per pair, would make a message look like a
//!   duplicate). The keys have a ring of their own, searched newest first
//!   (most lookups are for recent messages); beyond `INDEX_FROM` records a
//!   hash table of 4-byte ring positions finds them instead. A record is
//!   16 bytes for 4-byte peer identities: arrival time (a 40-bit offset in
//!   µs from a per-store base), hops, parent, origin; 24 with its key;
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

/// A store this long or longer finds keys through a hash table; a shorter
/// one scans its keys (a 10,000-node simulation holds ~120 messages per
/// node, where the table cost 11 of the store's 24 bytes per message).
const INDEX_FROM: usize = 256;

#[derive(Clone, Copy, Debug)]
struct Rec<PI> {
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
    fn new(offset: u64, known: Known<PI>) -> Self {
        let mut rec = Rec {
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
    /// Their keys: `keys[i]` is `ring[i]`'s.
    keys: VecDeque<u64>,
    /// Sequence number of `ring[0]`; `ring[i]` has `head + i` (wrapping).
    head: u32,
    /// Sequence numbers, hashed by their record's key; only while the
    /// store holds `INDEX_FROM / 2` records or more (built at `INDEX_FROM`).
    index: Option<hashbrown::HashTable<u32>>,
    hasher: foldhash::quality::FixedState,
    /// What record arrival times are offsets from.
    base: Time,
    /// GOSSIP bodies (`id ‖ payload`) of the newest records: `cached[j]`
    /// belongs to `ring[ring.len() - cached.len() + j]`.
    cached: VecDeque<Bytes>,
    /// Payload bytes cached (ids not counted).
    cached_bytes: usize,
}

/// Makes room for one more item, growing by a quarter (at least four)
/// instead of doubling: a simulator holds a million stores of a dozen
/// records each, and doubling left a quarter of them empty.
fn grow<T>(q: &mut VecDeque<T>) {
    if q.len() == q.capacity() {
        q.reserve_exact((q.len() / 4).max(4));
    }
}

/// Payload bytes of a GOSSIP body.
fn payload_len(body: &Bytes) -> usize {
    body.len().saturating_sub(core::mem::size_of::<MessageId>())
}

/// Position of the last `k` in `keys`. Compares eight keys at a time
/// without branching, which the compiler turns into vector instructions.
fn rfind(keys: &[u64], k: u64) -> Option<usize> {
    let mut end = keys.len();
    while end >= 8 {
        let chunk = &keys[end - 8..end];
        if chunk.iter().fold(false, |hit, &x| hit | (x == k)) {
            return chunk.iter().rposition(|&x| x == k).map(|i| end - 8 + i);
        }
        end -= 8;
    }
    keys[..end].iter().rposition(|&x| x == k)
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
            keys: VecDeque::new(),
            head: 0,
            index: None,
            hasher: foldhash::quality::FixedState::with_seed(seed),
            base: Time::ZERO,
            cached: VecDeque::new(),
            cached_bytes: 0,
        }
    }

    /// Ring position of the record keyed `k`.
    fn find(&self, k: u64) -> Option<usize> {
        let Some(index) = &self.index else {
            let (old, new) = self.keys.as_slices();
            return rfind(new, k)
                .map(|i| old.len() + i)
                .or_else(|| rfind(old, k));
        };
        let (keys, head) = (&self.keys, self.head);
        index
            .find(self.hasher.hash_one(k), |&s| {
                keys[s.wrapping_sub(head) as usize] == k
            })
            .map(|&s| s.wrapping_sub(head) as usize)
    }

    /// Adds ring position `i` to the index.
    fn index_insert(&mut self, i: usize) {
        let (keys, head, hasher) = (&self.keys, self.head, &self.hasher);
        if let Some(index) = &mut self.index {
            let seq = head.wrapping_add(i as u32);
            index.insert_unique(hasher.hash_one(keys[i]), seq, |&s| {
                hasher.hash_one(keys[s.wrapping_sub(head) as usize])
            });
        }
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
        self.find(key(id)).map(|i| self.at(&self.ring[i]))
    }

    /// When `r` arrived.
    fn at(&self, r: &Rec<PI>) -> Time {
        self.base + Duration::from_micros(r.offset())
    }

    /// The oldest record whose payload is still cached.
    fn oldest_cached(&self) -> Option<&Rec<PI>> {
        if self.cached.is_empty() {
            return None;
        }
        self.ring
            .get(self.ring.len().checked_sub(self.cached.len())?)
    }

    /// Messages remembered.
    pub(crate) fn len(&self) -> usize {
        self.ring.len()
    }

    /// Messages whose payload is still cached.
    pub(crate) fn cached_len(&self) -> usize {
        self.cached.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// When [`Store::expire`] next has something to do: the oldest id's
    /// or the oldest cached payload's retention ends (`None`: empty).
    pub(crate) fn next_due(&self, cfg: &PlumtreeConfig) -> Option<Time> {
        let seen = self.ring.front().map(|r| self.at(r) + cfg.seen_retention);
        let cached = self
            .oldest_cached()
            .map(|r| self.at(r) + cfg.message_cache_retention);
        seen.into_iter().chain(cached).min()
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
        if self.find(k).is_some() {
            return;
        }
        let offset = self.offset_of(now);
        grow(&mut self.ring);
        grow(&mut self.keys);
        self.ring.push_back(Rec::new(offset, known));
        self.keys.push_back(k);
        if self.index.is_some() {
            self.index_insert(self.ring.len() - 1);
        } else if self.ring.len() >= INDEX_FROM {
            self.index = Some(hashbrown::HashTable::with_capacity(self.ring.len()));
            for i in 0..self.ring.len() {
                self.index_insert(i);
            }
        }
        match body {
            Some(b) => {
                debug_assert_eq!(body_id(&b), id);
                self.cached_bytes += payload_len(&b);
                grow(&mut self.cached);
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
        let old = |s: &Self, r: &Rec<PI>, retention| now.saturating_since(s.at(r)) >= retention;
        while self
            .ring
            .front()
            .is_some_and(|r| old(self, r, cfg.seen_retention))
        {
            self.pop_oldest();
        }
        while self
            .oldest_cached()
            .is_some_and(|r| old(self, r, cfg.message_cache_retention))
        {
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
        let (Some(_), Some(k)) = (self.ring.pop_front(), self.keys.pop_front()) else {
            return;
        };
        let seq = self.head;
        self.head = self.head.wrapping_add(1);
        if self.ring.len() < INDEX_FROM / 2 {
            self.index = None;
        } else if let Some(index) = &mut self.index
            && let Ok(e) = index.find_entry(self.hasher.hash_one(k), |&s| s == seq)
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
            assert_eq!(s.keys[off + j], key(&id), "cached[{j}] is its record's");
            assert_eq!(s.body(&id), Some(b));
        }
        assert_eq!(
            s.cached_bytes,
            s.cached.iter().map(|b| b.len() - 32).sum::<usize>()
        );
        assert_eq!(s.keys.len(), s.ring.len());
        if s.ring.len() >= INDEX_FROM {
            assert!(s.index.is_some(), "a long store has its index");
        }
        if s.ring.len() < INDEX_FROM / 2 {
            assert!(s.index.is_none(), "a short store scans");
        }
        if let Some(index) = &s.index {
            assert_eq!(index.len(), s.ring.len());
        }
        for (i, k) in s.keys.iter().enumerate() {
            assert_eq!(s.find(*k), Some(i));
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
    fn the_next_sweep_is_due_when_the_oldest_retention_ends() {
        let mut cfg = Config::lan().plumtree;
        cfg.message_cache_retention = Duration::from_secs(10);
        cfg.seen_retention = Duration::from_secs(100);
        let mut s = Store::new(1);
        assert_eq!(s.next_due(&cfg), None);
        s.insert(id(1), secs(1), known(3), body(1, 10), &cfg);
        s.insert(id(2), secs(5), known(3), body(2, 10), &cfg);
        assert_eq!(s.next_due(&cfg), Some(secs(11)), "first payload");
        s.expire(secs(11), &cfg);
        assert_eq!(s.next_due(&cfg), Some(secs(15)), "second payload");
        s.expire(secs(15), &cfg);
        assert_eq!(s.next_due(&cfg), Some(secs(101)), "only ids left");
        s.expire(secs(101), &cfg);
        assert_eq!(s.next_due(&cfg), Some(secs(105)));
        s.expire(secs(105), &cfg);
        assert_eq!(s.next_due(&cfg), None);
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

    /// The store against a plain model: `steps` seconds, a message per
    /// second unless `skip(t)`, expiry every 7 s, starting at sequence
    /// number `head`.
    fn matches_model(
        seen_capacity: usize,
        seen_retention: u64,
        head: u32,
        steps: u64,
        skip: impl Fn(u64) -> bool,
    ) -> Store<u32> {
        let mut cfg = Config::lan().plumtree;
        cfg.seen_capacity = seen_capacity;
        cfg.message_cache_capacity = 20;
        cfg.ihave_max_entries = 8;
        cfg.message_cache_retention = Duration::from_secs(5);
        cfg.seen_retention = Duration::from_secs(seen_retention);
        let mut s: Store<u32> = Store::new(7);
        s.head = head;
        // (id, arrival, payload still cached)
        let mut model: VecDeque<(MessageId, u64, bool)> = VecDeque::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for t in 0..steps {
            if !skip(t) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let mut raw = [0u8; 32];
                raw[..8].copy_from_slice(&x.to_le_bytes());
                raw[8] = (t % 251) as u8;
                let id = MessageId(raw);
                let cache = t % 37 != 0;
                let body = cache.then(|| crate::wire::Gossip::new(id, 0u32, 0, &[1; 10]));
                s.insert(id, secs(t), known(3), body.map(|g| g.body().clone()), &cfg);
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
            }
            if t % 7 == 0 {
                s.expire(secs(t), &cfg);
                while model
                    .front()
                    .is_some_and(|&(_, at, _)| at + seen_retention <= t)
                {
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
        s
    }

    /// A short store (keys scanned) across the u32 sequence wrap, with
    /// count limits and expiry interleaved.
    #[test]
    fn short_store_matches_a_model_across_sequence_wrap() {
        let s = matches_model(50, 40, u32::MAX - 30, 400, |_| false);
        assert!(s.head < 1000, "the sequence wrapped");
    }

    /// A long store builds its hash index at `INDEX_FROM` records, keeps it
    /// across the sequence wrap, drops it below half that and builds it
    /// again.
    #[test]
    fn long_store_matches_a_model_with_and_without_its_index() {
        let sparse = |t: u64| (700..1100).contains(&t) && !t.is_multiple_of(5);
        let s = matches_model(400, 300, u32::MAX - 500, 1500, sparse);
        assert!(s.head < 10_000, "the sequence wrapped");
        assert!(s.index.is_some());
    }
}
