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

/// A random element of `items`, skipping those `exclude` rejects.
pub(crate) fn choose_filtered<T: Copy, R: Rng + ?Sized>(
    rng: &mut R,
    items: impl Iterator<Item = T>,
    exclude: impl Fn(&T) -> bool,
) -> Option<T> {
    let candidates: Vec<T> = items.filter(|x| !exclude(x)).collect();
    random_index(rng, candidates.len()).map(|i| candidates[i])
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
    fn jitter_stays_within_half_to_one_and_a_half() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let base = core::time::Duration::from_secs(10);
        for _ in 0..1000 {
            let j = jitter(&mut rng, base);
            assert!(j >= base / 2 && j < base * 3 / 2);
        }
    }
}
