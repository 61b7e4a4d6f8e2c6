//! The event queue: items in (time, sequence number) order, like a binary
//! heap, but in O(1) amortised per item.
//!
//! A 10,000-node flood keeps ~250,000 events queued, and popping them from
//! a binary heap (18 levels, most of them cache misses) was a quarter of the
//! simulator's time. Here time is cut into buckets of `WIDTH` µs; a ring of
//! `BUCKETS` buckets covers the next ~4 s, each bucket an unsorted vector
//! until its turn comes, when it is sorted once and drained. Items further
//! ahead (the long HyParView timers) wait in a binary heap and move into the
//! ring as it reaches them. The order is exactly (time, sequence number),
//! so a run is the same as with a heap.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Bucket width: 2¹⁰ µs (~1 ms).
const WIDTH_BITS: u32 = 10;
/// Buckets in the ring: 4096 × ~1 ms ≈ 4.2 s ahead.
const BUCKETS: u64 = 4096;

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
    /// Items at bucket `cursor + BUCKETS` or later.
    far: BinaryHeap<Reverse<Item<T>>>,
}

impl<T> Queue<T> {
    pub(crate) fn new() -> Self {
        Queue {
            ring: (0..BUCKETS).map(|_| Vec::new()).collect(),
            in_ring: 0,
            cursor: 0,
            current: Vec::new(),
            far: BinaryHeap::new(),
        }
    }

    /// Items queued.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.current.len() + self.in_ring + self.far.len()
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
            self.far.push(Reverse(item));
        }
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
            if self.in_ring == 0 {
                // Nothing in the ring: jump to the earliest far item.
                let Some(Reverse(first)) = self.far.peek() else {
                    return;
                };
                self.cursor = first.bucket();
            } else {
                self.cursor += 1;
            }
            // Far items the ring now reaches move in (the slot of bucket
            // cursor + BUCKETS - 1 is the one just drained).
            while let Some(Reverse(first)) = self.far.peek() {
                let b = first.bucket();
                if b >= self.cursor + BUCKETS {
                    break;
                }
                let Some(Reverse(item)) = self.far.pop() else {
                    break;
                };
                if b == self.cursor {
                    self.current.push(item);
                } else {
                    self.ring[(b % BUCKETS) as usize].push(item);
                    self.in_ring += 1;
                }
            }
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
    /// time, within a bucket, across the ring, far beyond it, after gaps)
    /// interleaved with pops.
    #[test]
    fn pops_in_the_same_order_as_a_binary_heap() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(9);
        let mut q = Queue::new();
        let mut model = BinaryHeap::new();
        let (mut now, mut seq) = (0u64, 0u64);
        for step in 0..200_000u32 {
            if rng.next_u64() % 100 < 55 {
                let d = match rng.next_u64() % 10 {
                    0 => 0,
                    1 => rng.next_u64() % 1024,
                    2..=6 => 10_000 + rng.next_u64() % 40_000,
                    7 => rng.next_u64() % 5_000_000,
                    8 => 4_000_000 + rng.next_u64() % 400_000,
                    _ => rng.next_u64() % 100_000_000,
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
