//! A token bucket: `rate` units per second, holding at most `burst`. Used
//! for client requests (per connection, per address, per server) and
//! relayed bytes. Time comes in as an argument.

use overlay::Time;
use std::time::Duration;

/// Tokens refilled continuously at `rate` per second up to `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Time,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64, now: Time) -> Self {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Time) {
        let dt = now.saturating_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if now > self.last {
            self.last = now;
        }
    }

    /// Takes `n` tokens if there are that many; otherwise says how long
    /// until there will be.
    pub fn take(&mut self, n: f64, now: Time) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else if self.rate <= 0.0 {
            Err(Duration::from_secs(3600))
        } else {
            Err(Duration::from_secs_f64(
                ((n - self.tokens) / self.rate).min(3600.0),
            ))
        }
    }

    /// Takes `n` tokens, going into debt if needed; returns how long to
    /// wait until the debt is paid (zero if there was enough).
    pub fn take_or_wait(&mut self, n: f64, now: Time) -> Duration {
        self.refill(now);
        self.tokens -= n;
        if self.tokens >= 0.0 || self.rate <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((-self.tokens / self.rate).min(3600.0))
        }
    }

    /// Whether the bucket is full at `now` (nothing to remember).
    pub fn is_full(&mut self, now: Time) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let t0 = Time::from_secs(1);
        let mut b = TokenBucket::new(10.0, 5.0, t0);
        for _ in 0..5 {
            assert!(b.take(1.0, t0).is_ok());
        }
        assert_eq!(b.take(1.0, t0), Err(Duration::from_millis(100)));
        assert!(b.take(1.0, t0 + Duration::from_millis(50)).is_err());
        assert!(b.take(1.0, t0 + Duration::from_millis(100)).is_ok());
        let later = t0 + Duration::from_secs(60);
        let taken = (0..100).take_while(|_| b.take(1.0, later).is_ok()).count();
        assert_eq!(taken, 5, "never more than the burst");
        assert!(!b.is_full(later));
        assert!(b.is_full(later + Duration::from_secs(1)));
    }

    #[test]
    fn debt_is_paid_by_waiting() {
        let t0 = Time::from_secs(1);
        let mut b = TokenBucket::new(1000.0, 1000.0, t0);
        assert_eq!(b.take_or_wait(1000.0, t0), Duration::ZERO);
        assert_eq!(b.take_or_wait(500.0, t0), Duration::from_millis(500));
    }
}
