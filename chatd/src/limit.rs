//! A token bucket: `rate` units per second, holding at most `burst`.
//! Used for client requests (per connection) and relayed bytes (per
//! direction). Time comes in as an argument, so it is tested without
//! sleeping.

use std::time::{Duration, Instant};

/// Tokens refilled continuously at `rate` per second up to `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes `n` tokens if there are that many.
    pub fn try_take(&mut self, n: f64, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Takes `n` tokens, going into debt if needed; returns how long to
    /// wait until the debt is paid (zero if there was enough).
    pub fn take_or_wait(&mut self, n: f64, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= n;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 5.0, t0);
        for _ in 0..5 {
            assert!(b.try_take(1.0, t0));
        }
        assert!(!b.try_take(1.0, t0), "the burst is spent");
        assert!(!b.try_take(1.0, t0 + Duration::from_millis(50)));
        assert!(
            b.try_take(1.0, t0 + Duration::from_millis(100)),
            "one token per 100 ms"
        );
        // Never more than the burst, however long it rested.
        let later = t0 + Duration::from_secs(60);
        let taken = (0..100).take_while(|_| b.try_take(1.0, later)).count();
        assert_eq!(taken, 5);
    }

    #[test]
    fn debt_is_paid_by_waiting() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000.0, 1000.0, t0);
        assert_eq!(b.take_or_wait(1000.0, t0), Duration::ZERO);
        let wait = b.take_or_wait(500.0, t0);
        assert_eq!(wait, Duration::from_millis(500));
    }
}
