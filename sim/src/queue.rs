//! The event queue: items in (time, sequence number) order, like a binary
//! heap, but in O(1) amortised per item.
//!
//! A 10,000-node flood keeps ~250,000 events queued, and popping them from
//! a binary heap (18 levels, most of them cache misses) was a quarter of the
//! simulator's time. Here time is cut into buckets of `WIDTH` µs; a ring of
//! `BUCKETS` buckets covers the next ~4 s, each bucket an unsorted vector
//! until its turn comes, when it is sorted once and drained. Items further
//! ahead (the long HyParView timers, the expiry sweeps) wait in coarser
//! buckets of half the ring's span each, ~36 minutes of them, and move into
//! the ring a whole bucket at a time as it reaches them; only items beyond
//! that wait in a binary heap. (At a million nodes, two million timers in
//! one heap made its pops a tenth of the run.) The order is exactly (time,
//! sequence number), so a run is the same as with a heap.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Bucket width: 2¹⁰ µs (~1 ms).
const WIDTH_BITS: u32 = 10;
/// Buckets in the ring: 4096 × ~1 ms ≈ 4.2 s ahead.
const BUCKETS: u64 = 4096;
/// A coarse bucket spans 2¹¹ ring buckets, half the ring (~2.1 s).
const COARSE_BITS: u32 = 11;
/// Coarse buckets: 1024 × ~2.1 s ≈ 36 min ahead.
const COARSE: u64 = 1024;

struct Item<T> {
    at: u64,
    seq: u64,
    value: T,
}

impl<T> Item<T> {
    fn key(&self) -> (u64, u64) {
        (self.at, self.seq)
    }

    fn bucket(&self) -> u64 {
        self.at >> WIDTH_BITS
    }

    fn coarse(&self) -> u64 {
        self.bucket() >> COARSE_BITS
    }
}

impl<T> PartialEq for Item<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl<T> Eq for Item<T> {}
impl<T> PartialOrd for Item<T> {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Item<T> {
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// Items ordered by (time in µs, sequence number); (time, sequence) pairs
/// must be unique, and no item may be earlier than the last one popped.
pub(crate) struct Queue<T> {
    /// Bucket `b` (items with `at >> WIDTH_BITS == b`) for
    /// `cursor < b < cursor + BUCKETS` is `ring[b % BUCKETS]`, unsorted.
    ring: Vec<Vec<Item<T>>>,
    /// Items in `ring`.
    in_ring: usize,
    /// The bucket being drained.
    cursor: u64,
    /// Its items (and any pushed at or before it), latest first.
    current: Vec<Item<T>>,
    /// Items at bucket `cursor + BUCKETS` or later, by coarse bucket:
    /// coarse bucket `c` for `h + 2 <= c < h + 2 + COARSE` (where `h` is
    /// the cursor's coarse bucket) is `coarse[c % COARSE]`, unsorted. It
    /// moves into the ring when the cursor enters coarse bucket `c - 1`.
    coarse: Vec<Vec<Item<T>>>,
    /// Items in `coarse`.
    in_coarse: usize,
    /// Items beyond the coarse buckets.
    far: BinaryHeap<Reverse<Item<T>>>,
}

impl<T> Queue<T> {
    pub(crate) fn new() -> Self {
        Queue {
            ring: (0..BUCKETS).map(|_| Vec::new()).collect(),
            in_ring: 0,
            cursor: 0,
            current: Vec::new(),
            coarse: (0..COARSE).map(|_| Vec::new()).collect(),
            in_coarse: 0,
            far: BinaryHeap::new(),
        }
    }

    /// Items queued.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.current.len() + self.in_ring + self.in_coarse + self.far.len()
    }

    pub(crate) fn push(&mut self, at: u64, seq: u64, value: T) {
        let item = Item { at, seq, value };
        let b = item.bucket();
        if b <= self.cursor {
            // Kept sorted, latest first: goes before every earlier item.
            let key = item.key();
            let i = self.current.partition_point(|x| x.key() > key);
            self.current.insert(i, item);
        } else if b < self.cursor + BUCKETS {
            self.ring[(b % BUCKETS) as usize].push(item);
            self.in_ring += 1;
        } else {
            self.push_coarse(item);
        }
    }

    /// An item at least a ring's span ahead (so at coarse bucket `h + 2`
    /// or later).
    fn push_coarse(&mut self, item: Item<T>) {
        let c = item.coarse();
        if c < (self.cursor >> COARSE_BITS) + 2 + COARSE {
            self.coarse[(c % COARSE) as usize].push(item);
            self.in_coarse += 1;
        } else {
            self.far.push(Reverse(item));
        }
    }

    /// An item the ring now covers (`cursor < bucket < cursor + BUCKETS`),
    /// or the cursor's own bucket.
    fn push_ring(&mut self, item: Item<T>) {
        let b = item.bucket();
        if b <= self.cursor {
            self.current.push(item);
        } else {
            self.ring[(b % BUCKETS) as usize].push(item);
            self.in_ring += 1;
        }
    }

    /// Moves the cursor to bucket `b` (later than it). Entering a new
    /// coarse bucket `h` brings coarse bucket `h + 1` into the ring, and
    /// far items into the coarse buckets that now reach them.
    fn advance(&mut self, b: u64) {
        let before = self.cursor >> COARSE_BITS;
        self.cursor = b;
        let h = b >> COARSE_BITS;
        if h == before {
            return;
        }
        let slot = core::mem::take(&mut self.coarse[((h + 1) % COARSE) as usize]);
        self.in_coarse -= slot.len();
        for item in slot {
            self.push_ring(item);
        }
        while let Some(Reverse(first)) = self.far.peek() {
            if first.coarse() >= h + 2 + COARSE {
                break;
            }
            let Some(Reverse(item)) = self.far.pop() else {
                break;
            };
            if item.coarse() <= h + 1 {
                self.push_ring(item);
            } else {
                self.push_coarse(item);
            }
        }
    }

    /// The earliest non-empty coarse bucket, if any.
    fn first_coarse(&self) -> Option<u64> {
        if self.in_coarse == 0 {
            return None;
        }
        let h = self.cursor >> COARSE_BITS;
        (h + 2..h + 2 + COARSE).find(|c| !self.coarse[(c % COARSE) as usize].is_empty())
    }

    /// Time of the earliest item.
    pub(crate) fn peek_at(&mut self) -> Option<u64> {
        self.fill();
        self.current.last().map(|i| i.at)
    }

    /// The earliest item if it is due at or before `until` (µs).
    pub(crate) fn pop_due(&mut self, until: u64) -> Option<(u64, T)> {
        if self.peek_at()? <= until {
            self.pop()
        } else {
            None
        }
    }

    /// Takes the earliest item: its time and value.
    pub(crate) fn pop(&mut self) -> Option<(u64, T)> {
        self.fill();
        self.current.pop().map(|i| (i.at, i.value))
    }

    /// Makes `current` hold the earliest items, unless the queue is empty.
    fn fill(&mut self) {
        while self.current.is_empty() {
            let next = if self.in_ring > 0 {
                self.cursor + 1
            } else if let Some(c) = self.first_coarse() {
                // Nothing in the ring: enter the coarse bucket before the
                // earliest one, which brings that one in.
                ((c - 1) << COARSE_BITS).max(self.cursor + 1)
            } else if let Some(Reverse(first)) = self.far.peek() {
                first.bucket()
            } else {
                return;
            };
            self.advance(next);
            let slot = &mut self.ring[(self.cursor % BUCKETS) as usize];
            self.in_ring -= slot.len();
            if self.current.is_empty() {
                // Take the bucket's buffer; the drained one is freed (a
                // flood bucket can hold thousands of items).
                self.current = core::mem::take(slot);
            } else {
                self.current.append(slot);
                *slot = Vec::new();
            }
            self.current.sort_unstable_by_key(|i| Reverse(i.key()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::Xoshiro256PlusPlus;
    use rand::{Rng, SeedableRng};

    /// The queue against a binary heap: pushes at random distances (same
    /// time, within a bucket, across the ring, into the coarse buckets,
    /// beyond them, after gaps) interleaved with pops.
    #[test]
    fn pops_in_the_same_order_as_a_binary_heap() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(9);
        let mut q = Queue::new();
        let mut model = BinaryHeap::new();
        let (mut now, mut seq) = (0u64, 0u64);
        for step in 0..200_000u32 {
            if rng.next_u64() % 100 < 55 {
                let d = match rng.next_u64() % 11 {
                    0 => 0,
                    1 => rng.next_u64() % 1024,
                    2..=6 => 10_000 + rng.next_u64() % 40_000,
                    7 => rng.next_u64() % 5_000_000,
                    8 => 4_000_000 + rng.next_u64() % 400_000,
                    9 => rng.next_u64() % 100_000_000,
                    // Beyond the coarse buckets (~36 min): the heap.
                    _ => 2_000_000_000 + rng.next_u64() % 8_000_000_000,
                };
                seq += 1;
                q.push(now + d, seq, step);
                model.push(Reverse((now + d, seq, step)));
            } else {
                assert_eq!(q.peek_at(), model.peek().map(|Reverse(x)| x.0));
                let got = q.pop();
                let want = model.pop().map(|Reverse((at, _, v))| (at, v));
                assert_eq!(got, want, "step {step}");
                if let Some((at, _)) = got {
                    now = at;
                }
            }
            assert_eq!(q.len(), model.len());
        }
        while let Some(Reverse((at, _, v))) = model.pop() {
            assert_eq!(q.pop(), Some((at, v)));
        }
        assert_eq!(q.pop(), None);
    }
}
