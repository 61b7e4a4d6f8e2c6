//! Small deterministic helpers: random choice from a seeded RNG.

use rand::Rng;

/// A uniformly random index in `0..n`; `None` when `n == 0`.
///
/// Uses the widening-multiply method on one `u64` draw (bias below 2^-58
/// for the view sizes the core uses), so it consumes exactly one value.
pub(crate) fn random_index<R: Rng + ?Sized>(rng: &mut R, n: usize) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let x = rng.next_u64() as u128;
    Some(((x * n as u128) >> 64) as usize)
}

/// A random element of `items`, skipping those `exclude` rejects. Walks
/// `items` twice instead of collecting them (it runs for every hop of every
/// random walk).
pub(crate) fn choose_filtered<T: Copy, R: Rng + ?Sized>(
    rng: &mut R,
    items: impl Iterator<Item = T> + Clone,
    exclude: impl Fn(&T) -> bool,
) -> Option<T> {
    let n = items.clone().filter(|x| !exclude(x)).count();
    random_index(rng, n).and_then(|i| items.filter(|x| !exclude(x)).nth(i))
}

/// Frees an empty vector's buffer.
pub(crate) fn release<T>(v: &mut Vec<T>) {
    if v.is_empty() && v.capacity() > 0 {
        *v = Vec::new();
    }
}

/// Up to `k` distinct random elements of `items`, in random order
/// (a partial Fisher–Yates shuffle).
pub(crate) fn sample<T, R: Rng + ?Sized>(rng: &mut R, mut items: Vec<T>, k: usize) -> Vec<T> {
    let k = k.min(items.len());
    for i in 0..k {
        let j = i + random_index(rng, items.len() - i).unwrap_or(0);
        items.swap(i, j);
    }
    items.truncate(k);
    items
}

/// A random duration in `[base/2, base*3/2)`: spreads periodic work so
/// nodes started together do not act in lock step.
pub(crate) fn jitter<R: Rng + ?Sized>(
    rng: &mut R,
    base: core::time::Duration,
) -> core::time::Duration {
    let micros = u64::try_from(base.as_micros()).unwrap_or(u64::MAX).max(1);
    let offset = ((rng.next_u64() as u128 * micros as u128) >> 64) as u64;
    core::time::Duration::from_micros(micros / 2 + offset)
}

/// A map kept as a vector sorted by key: iterates in key order like a
/// `BTreeMap`, for small maps without a B-tree's fixed node size (a
/// `BTreeMap` allocates room for 11 entries for its first one).
#[derive(Clone, Debug)]
pub(crate) struct VecMap<K, V>(Vec<(K, V)>);

impl<K: Ord, V> VecMap<K, V> {
    pub(crate) fn new() -> Self {
        VecMap(Vec::new())
    }

    fn position(&self, k: &K) -> Result<usize, usize> {
        self.0.binary_search_by(|(x, _)| x.cmp(k))
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn get(&self, k: &K) -> Option<&V> {
        self.position(k).ok().map(|i| &self.0[i].1)
    }

    pub(crate) fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.position(k).ok().map(|i| &mut self.0[i].1)
    }

    /// Inserts or replaces; returns the replaced value.
    pub(crate) fn insert(&mut self, k: K, v: V) -> Option<V> {
        match self.position(&k) {
            Ok(i) => Some(core::mem::replace(&mut self.0[i].1, v)),
            Err(i) => {
                self.0.insert(i, (k, v));
                None
            }
        }
    }

    pub(crate) fn remove(&mut self, k: &K) -> Option<V> {
        let v = self.position(k).ok().map(|i| self.0.remove(i).1);
        self.shrink();
        v
    }

    /// Frees the buffer once empty, and halves it once three quarters unused.
    fn shrink(&mut self) {
        if self.0.is_empty() {
            self.0 = Vec::new();
        } else if self.0.capacity() > 4 * self.0.len().max(2) {
            self.0.shrink_to(2 * self.0.len());
        }
    }

    /// Entries in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// Entries in key order.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.0.iter_mut().map(|(k, v)| (&*k, v))
    }

    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        self.0.retain_mut(|(k, v)| keep(k, v));
        self.shrink();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::Xoshiro256PlusPlus;

    #[test]
    fn random_index_stays_in_range_and_covers_it() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let mut seen = [0u32; 7];
        for _ in 0..7000 {
            seen[random_index(&mut rng, 7).unwrap()] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800), "{seen:?}");
        assert_eq!(random_index(&mut rng, 0), None);
    }

    #[test]
    fn sample_returns_distinct_elements() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
        let s = sample(&mut rng, (0..10).collect(), 4);
        assert_eq!(s.len(), 4);
        let mut d = s.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), 4);
        assert_eq!(sample(&mut rng, vec![1, 2], 5).len(), 2);
    }

    #[test]
    fn vec_map_behaves_like_a_btree_map() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(4);
        let mut m = VecMap::new();
        let mut model = std::collections::BTreeMap::new();
        for step in 0..5000u32 {
            let k = random_index(&mut rng, 64).unwrap();
            match random_index(&mut rng, 5).unwrap() {
                0 | 1 => assert_eq!(m.insert(k, step), model.insert(k, step)),
                2 => assert_eq!(m.remove(&k), model.remove(&k)),
                3 => {
                    if let (Some(a), Some(b)) = (m.get_mut(&k), model.get_mut(&k)) {
                        *a += 1;
                        *b += 1;
                    }
                }
                _ => {
                    m.retain(|k, v| !(*k + *v as usize).is_multiple_of(3));
                    model.retain(|k, v| !(*k + *v as usize).is_multiple_of(3));
                }
            }
            assert_eq!(m.len(), model.len());
            assert_eq!(m.get(&k), model.get(&k));
            let got: Vec<(usize, u32)> = m.iter_mut().map(|(k, v)| (*k, *v)).collect();
            let want: Vec<(usize, u32)> = model.iter().map(|(k, v)| (*k, *v)).collect();
            assert_eq!(got, want, "in key order");
            assert!(m.0.capacity() <= 4 * m.len().max(2));
        }
        m.retain(|_, _| false);
        assert!(
            m.is_empty() && m.0.capacity() == 0,
            "an empty map frees its buffer"
        );
    }

    #[test]
    fn jitter_stays_within_half_to_one_and_a_half() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let base = core::time::Duration::from_secs(10);
        for _ in 0..1000 {
            let j = jitter(&mut rng, base);
            assert!(j >= base / 2 && j < base * 3 / 2);
        }
    }
}
