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

/// What to do with a new connection attempt (a QUIC Initial), decided
/// before any cryptography is done for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Do the handshake.
    Accept,
    /// Its address is over its own rate: drop it silently (no answer to
    /// reflect, no work).
    Ignore,
    /// The server as a whole is over its rate: refuse at once, so that a
    /// real client tries another server instead of waiting.
    Refuse,
}

/// Handshakes admitted per second, per address (IPv6: per /64) and in all.
/// A server's handshake (key exchange and signature, ~0.2 ms) runs while
/// quinn holds its endpoint lock, so a burst of a thousand handshakes
/// stalls every packet of every connection for ~0.2 s; limiting the rate,
/// with small bursts, keeps that stall under a few milliseconds. Addresses
/// whose buckets are full again are forgotten, so the map holds only
/// addresses seen in the last `burst / rate` seconds, and at most
/// `max_sources` of them (beyond that, unknown addresses share the global
/// budget only).
#[derive(Debug)]
pub struct HandshakeLimiter {
    global: TokenBucket,
    per_source: std::collections::BTreeMap<std::net::IpAddr, TokenBucket>,
    source_rate: (f64, f64),
    max_sources: usize,
    next_sweep: Time,
    /// Attempts ignored (an address over its rate).
    pub ignored: u64,
    /// Attempts refused (the server over its rate).
    pub refused: u64,
}

impl HandshakeLimiter {
    /// `global` and `per_source` are (rate per second, burst).
    pub fn new(global: (f64, f64), per_source: (f64, f64), now: Time) -> Self {
        HandshakeLimiter {
            global: TokenBucket::new(global.0, global.1, now),
            per_source: std::collections::BTreeMap::new(),
            source_rate: per_source,
            max_sources: 100_000,
            next_sweep: now,
            ignored: 0,
            refused: 0,
        }
    }

    /// A connection attempt from `addr` at `now`.
    pub fn admit(&mut self, addr: &std::net::SocketAddr, now: Time) -> Admit {
        if now >= self.next_sweep {
            self.next_sweep = now + Duration::from_secs(1);
            self.per_source.retain(|_, b| !b.is_full(now));
        }
        let key = crate::server::Source::of(addr).ip();
        let (rate, burst) = self.source_rate;
        let room = self.per_source.len() < self.max_sources;
        let bucket = match self.per_source.get_mut(&key) {
            Some(b) => Some(b),
            None if room => Some(
                self.per_source
                    .entry(key)
                    .or_insert_with(|| TokenBucket::new(rate, burst, now)),
            ),
            None => None,
        };
        if let Some(b) = bucket
            && b.take(1.0, now).is_err()
        {
            self.ignored += 1;
            return Admit::Ignore;
        }
        if self.global.take(1.0, now).is_err() {
            self.refused += 1;
            return Admit::Refuse;
        }
        Admit::Accept
    }

    /// Addresses remembered now.
    pub fn sources(&self) -> usize {
        self.per_source.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_are_limited_per_address_then_in_all() {
        let t0 = Time::from_secs(1);
        let mut l = HandshakeLimiter::new((10.0, 10.0), (2.0, 4.0), t0);
        let a: std::net::SocketAddr = "198.51.100.1:1000".parse().unwrap();
        let same: std::net::SocketAddr = "198.51.100.1:2000".parse().unwrap();
        for _ in 0..4 {
            assert_eq!(l.admit(&a, t0), Admit::Accept);
        }
        assert_eq!(
            l.admit(&same, t0),
            Admit::Ignore,
            "the port does not matter"
        );
        // Six more addresses: the global burst (10) runs out after six.
        let mut outcomes = Vec::new();
        for i in 2..=8 {
            let b: std::net::SocketAddr = format!("198.51.100.{i}:1").parse().unwrap();
            outcomes.push(l.admit(&b, t0));
        }
        assert_eq!(outcomes.iter().filter(|o| **o == Admit::Accept).count(), 6);
        assert_eq!(outcomes.last(), Some(&Admit::Refuse));
        assert_eq!((l.ignored, l.refused), (1, 1));
        // Half a second later: one more per address, five in all.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(l.admit(&a, t1), Admit::Accept);
        assert_eq!(l.admit(&a, t1), Admit::Ignore);
        // Quiet addresses are forgotten once their buckets are full again.
        let t2 = t1 + Duration::from_secs(5);
        let _ = l.admit(&a, t2);
        assert_eq!(l.sources(), 1);
    }

    #[test]
    fn ipv6_addresses_share_their_64() {
        let t0 = Time::from_secs(1);
        let mut l = HandshakeLimiter::new((100.0, 100.0), (1.0, 1.0), t0);
        let a: std::net::SocketAddr = "[2001:db8:1:2::1]:1".parse().unwrap();
        let b: std::net::SocketAddr = "[2001:db8:1:2::99]:1".parse().unwrap();
        let c: std::net::SocketAddr = "[2001:db8:1:3::1]:1".parse().unwrap();
        assert_eq!(l.admit(&a, t0), Admit::Accept);
        assert_eq!(l.admit(&b, t0), Admit::Ignore);
        assert_eq!(l.admit(&c, t0), Admit::Accept);
    }

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
