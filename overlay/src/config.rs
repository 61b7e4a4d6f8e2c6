//! Every protocol parameter, with its default and where the default comes
//! from (the HyParView and Plumtree papers, or our own measurement).
//!
//! Presets: [`Config::lan`] (the default: one datacenter or region),
//! [`Config::wan`] (servers spread over continents), [`Config::local`]
//! (loopback clusters and tests: short timers). Call [`Config::validate`]
//! on anything built by hand or read from a file.

use core::time::Duration;
use thiserror::Error;

/// HyParView membership parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HyParViewConfig {
    /// Active view size: neighbors with an open connection, over which
    /// broadcasts travel. Default 5 (HyParView paper §5: log10(n)+c, 5 for
    /// n = 10,000; the eager-push fanout of Plumtree is at most this).
    pub active_view_capacity: usize,
    /// Passive view size: known, unconnected peers used to replace failed
    /// neighbors. Default 30 (paper §5: k·(log10(n)+c) with k = 6).
    pub passive_view_capacity: usize,
    /// Active random walk length (ARWL): hops a FORWARD_JOIN travels before
    /// the new node is put in an active view. Default 6 (paper §5).
    pub active_random_walk_length: u8,
    /// Passive random walk length (PRWL): at this remaining TTL the walking
    /// FORWARD_JOIN puts the new node in a passive view. Default 3 (paper).
    pub passive_random_walk_length: u8,
    /// Mean period between shuffles (jittered ±50%). Default 10 s (DESIGN:
    /// 10–60 s; the paper's cycle-based simulation shuffles every cycle).
    pub shuffle_interval: Duration,
    /// Longest period between shuffles. A node whose views are full and
    /// whose active view is unchanged since its last shuffle doubles its
    /// period, up to this; any change of its active view brings it back to
    /// `shuffle_interval` (a lost neighbor at once: the next shuffle comes
    /// within `shuffle_interval`). A stable overlay has nothing new to mix,
    /// and the shuffles were a third of its messages per delivery (`sim`).
    /// Default 60 s (iroh-gossip's fixed period); equal to
    /// `shuffle_interval`, the period never grows.
    pub shuffle_interval_max: Duration,
    /// Active-view entries in a SHUFFLE sample (ka). Default 3 (paper §4.4).
    pub shuffle_active_count: usize,
    /// Passive-view entries in a SHUFFLE sample (kp). Default 4 (paper §4.4).
    pub shuffle_passive_count: usize,
    /// Random-walk TTL of a SHUFFLE. Default 6 (= ARWL, as in the paper).
    pub shuffle_ttl: u8,
    /// How long to wait for a NEIGHBOR or JOIN answer before counting the
    /// candidate as failed. Default 5 s: one QUIC handshake plus a round
    /// trip on a congested WAN path, with margin.
    pub neighbor_request_timeout: Duration,
    /// Period of the repair tick that fills a non-full active view from the
    /// passive view and expires unanswered requests. Default 1 s.
    pub repair_interval: Duration,
    /// First delay before a passive candidate that failed is tried again;
    /// doubles per consecutive failure. Default 1 s.
    pub candidate_backoff_base: Duration,
    /// Upper bound of the per-candidate backoff. Default 60 s.
    pub candidate_backoff_max: Duration,
    /// A passive entry that failed this many times in a row is dropped.
    /// Default 5 (with the backoff above: about a minute of failures).
    pub candidate_max_failures: u8,
    /// First delay between re-JOIN attempts of an isolated node (empty
    /// active view); doubles per attempt. Default 500 ms.
    pub rejoin_backoff_base: Duration,
    /// Upper bound of the re-JOIN backoff. Default 30 s: an isolated node
    /// keeps retrying its bootstrap contacts at least twice a minute, forever.
    pub rejoin_backoff_max: Duration,
    /// A neighbor lost to a failure (not a DISCONNECT) is retried this often
    /// with a NEIGHBOR that must be accepted, even when both views have
    /// refilled meanwhile: this is what merges the two halves of a healed
    /// partition, which otherwise stay separate once their views are full.
    /// Default 10 s (a healed partition merges within about this long).
    pub restore_interval: Duration,
    /// How long a lost neighbor is retried. Default 300 s: covers the
    /// partitions operators see (a rack or link outage), and costs one dial
    /// per `restore_interval` per lost link for a crashed peer.
    pub restore_max_age: Duration,
}

/// Plumtree broadcast parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlumtreeConfig {
    /// How long IHAVE announcements are collected before being sent in one
    /// batch per lazy peer. Default 10 ms (DESIGN: "every few ms"; batching
    /// trades a little repair latency for far fewer packets).
    pub ihave_interval: Duration,
    /// On each lazy link the side with the higher id holds its IHAVE this
    /// long (the other sends after `ihave_interval`) and drops it if the
    /// other's arrives first: then the peer has the message. Receipts at
    /// the two ends of a link are at most about its one-way latency apart,
    /// so a defer above twice the largest link latency halves the IHAVEs;
    /// repair through the deferring side starts this much later. Default
    /// 150 ms; 0 makes both sides announce after `ihave_interval`.
    pub ihave_defer: Duration,
    /// Most entries in one IHAVE message; larger batches are split.
    /// Default 256 (≈ 9 KiB, under one QUIC stream flush).
    pub ihave_max_entries: usize,
    /// How long after the first IHAVE for a missing message a GRAFT is sent.
    /// Default 200 ms. It must exceed the normal *skew* between the eager
    /// (tree) path and a lazy announcement, not just one round trip: with
    /// 10–50 ms links and ~10-hop trees, 80 ms grafted so often that
    /// multi-sender RMR stayed at 0.26 (200 nodes, our cluster harness);
    /// 200 ms gives ≤ 0.03. Loss does not eat eager pushes on QUIC, so a
    /// graft is needed only when a link silently dies, and 200 ms is cheap.
    pub graft_timeout_1: Duration,
    /// Timeout before grafting the next announcer if the first GRAFT did not
    /// bring the message. Default 80 ms (paper: a shorter second timeout;
    /// a GRAFT answer needs one round trip).
    pub graft_timeout_2: Duration,
    /// Tree optimisation: when a lazy announcement shows a path at least
    /// this many hops shorter than the one the message arrived on, graft the
    /// announcer and prune the old parent (paper §3.7). Default 2 hops:
    /// lower LDH (10 vs 13 at n = 200) and RMR than 3 or 5 in our harness.
    pub optimization_threshold: u16,
    /// Most payloads kept to answer GRAFTs. Default 4096 messages.
    pub message_cache_capacity: usize,
    /// Most payload bytes kept in the cache (oldest evicted first).
    /// Default 64 MiB: 4096 maximum-size payloads would be 256 MiB.
    pub message_cache_max_bytes: usize,
    /// How long a payload stays in the cache. Default 30 s (a GRAFT later
    /// than that means the link is broken anyway; anti-entropy takes over).
    pub message_cache_retention: Duration,
    /// Most message ids remembered to detect duplicates. Default 65,536.
    pub seen_capacity: usize,
    /// How long a message id is remembered. Default 120 s; must be at least
    /// the cache retention, or a cached message could be delivered twice.
    pub seen_retention: Duration,
    /// Most origins with a broadcast tree of their own (8 bytes each plus
    /// the id); beyond it the least recently used is forgotten and falls
    /// back to the reference tree. Default 4096 senders.
    pub max_origins: usize,
    /// Most distinct missing messages tracked for GRAFT at once. Default
    /// 4096: bounds memory when a peer announces ids it never sends.
    pub max_missing: usize,
    /// Period of the cache/seen-set expiry sweep. Default 1 s.
    pub expiry_interval: Duration,
}

/// Size limits on the wire (both directions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireLimits {
    /// Largest broadcast payload in bytes. `broadcast` refuses larger ones
    /// with an error and the decoder rejects them. Default 64 KiB.
    pub max_payload_size: usize,
    /// Largest frame (the length-prefixed unit on a stream), in bytes,
    /// excluding the 4-byte prefix. Default 64 KiB + 1 KiB of headroom for
    /// message headers. Must be at least `max_payload_size + 256`.
    pub max_frame_size: usize,
    /// Largest opaque peer data (addresses) in bytes. Default 512.
    pub max_peer_data_size: usize,
    /// Most peer entries in a SHUFFLE or SHUFFLE_REPLY. Default 64.
    pub max_shuffle_entries: usize,
    /// Most entries in a received IHAVE. Default 1024 (senders batch at most
    /// `plumtree.ihave_max_entries`, 256 by default).
    pub max_ihave_entries: usize,
}

/// The complete overlay configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Membership (HyParView).
    pub hyparview: HyParViewConfig,
    /// Broadcast (Plumtree).
    pub plumtree: PlumtreeConfig,
    /// Wire size limits.
    pub limits: WireLimits,
}

impl Default for Config {
    fn default() -> Self {
        Config::lan()
    }
}

impl Config {
    /// Servers in one region (round trips of a few to tens of ms).
    pub fn lan() -> Self {
        Config {
            hyparview: HyParViewConfig {
                active_view_capacity: 5,
                passive_view_capacity: 30,
                active_random_walk_length: 6,
                passive_random_walk_length: 3,
                shuffle_interval: Duration::from_secs(10),
                shuffle_interval_max: Duration::from_secs(60),
                shuffle_active_count: 3,
                shuffle_passive_count: 4,
                shuffle_ttl: 6,
                neighbor_request_timeout: Duration::from_secs(5),
                repair_interval: Duration::from_secs(1),
                candidate_backoff_base: Duration::from_secs(1),
                candidate_backoff_max: Duration::from_secs(60),
                candidate_max_failures: 5,
                rejoin_backoff_base: Duration::from_millis(500),
                rejoin_backoff_max: Duration::from_secs(30),
                restore_interval: Duration::from_secs(10),
                restore_max_age: Duration::from_secs(300),
            },
            plumtree: PlumtreeConfig {
                ihave_interval: Duration::from_millis(10),
                ihave_defer: Duration::from_millis(150),
                ihave_max_entries: 256,
                graft_timeout_1: Duration::from_millis(200),
                graft_timeout_2: Duration::from_millis(80),
                optimization_threshold: 2,
                message_cache_capacity: 4096,
                message_cache_max_bytes: 64 * 1024 * 1024,
                message_cache_retention: Duration::from_secs(30),
                seen_capacity: 65_536,
                seen_retention: Duration::from_secs(120),
                max_origins: 4096,
                max_missing: 4096,
                expiry_interval: Duration::from_secs(1),
            },
            limits: WireLimits {
                max_payload_size: 64 * 1024,
                max_frame_size: 65 * 1024,
                max_peer_data_size: 512,
                max_shuffle_entries: 64,
                max_ihave_entries: 1024,
            },
        }
    }

    /// Servers across continents: round trips up to ~300 ms, so GRAFT and
    /// request timeouts are longer and shuffles less frequent.
    pub fn wan() -> Self {
        let mut c = Config::lan();
        c.hyparview.shuffle_interval = Duration::from_secs(30);
        c.hyparview.shuffle_interval_max = Duration::from_secs(120);
        c.hyparview.neighbor_request_timeout = Duration::from_secs(10);
        c.hyparview.repair_interval = Duration::from_secs(2);
        c.hyparview.restore_interval = Duration::from_secs(20);
        c.plumtree.ihave_interval = Duration::from_millis(25);
        c.plumtree.ihave_defer = Duration::from_millis(600);
        c.plumtree.graft_timeout_1 = Duration::from_secs(1);
        c.plumtree.graft_timeout_2 = Duration::from_millis(500);
        c.plumtree.message_cache_retention = Duration::from_secs(60);
        c.plumtree.seen_retention = Duration::from_secs(180);
        c
    }

    /// Loopback clusters and tests: sub-millisecond round trips, so every
    /// timer is short and a cluster converges in seconds.
    pub fn local() -> Self {
        let mut c = Config::lan();
        c.hyparview.shuffle_interval = Duration::from_secs(2);
        c.hyparview.shuffle_interval_max = Duration::from_secs(2);
        c.hyparview.neighbor_request_timeout = Duration::from_secs(2);
        c.hyparview.repair_interval = Duration::from_millis(250);
        c.hyparview.candidate_backoff_base = Duration::from_millis(250);
        c.hyparview.candidate_backoff_max = Duration::from_secs(10);
        c.hyparview.rejoin_backoff_base = Duration::from_millis(100);
        c.hyparview.rejoin_backoff_max = Duration::from_secs(5);
        c.hyparview.restore_interval = Duration::from_secs(2);
        c.hyparview.restore_max_age = Duration::from_secs(60);
        c.plumtree.ihave_interval = Duration::from_millis(5);
        c.plumtree.ihave_defer = Duration::from_millis(20);
        c.plumtree.graft_timeout_1 = Duration::from_millis(30);
        c.plumtree.graft_timeout_2 = Duration::from_millis(15);
        c
    }

    /// Checks every parameter; the error names the first offending one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let h = &self.hyparview;
        let p = &self.plumtree;
        let l = &self.limits;
        positive("hyparview.active_view_capacity", h.active_view_capacity)?;
        positive("hyparview.passive_view_capacity", h.passive_view_capacity)?;
        if h.active_view_capacity > 64 {
            return Err(ConfigError::Range {
                field: "hyparview.active_view_capacity",
                reason: "at most 64 (each neighbor is an open connection)",
            });
        }
        if h.passive_view_capacity > 1024 {
            return Err(ConfigError::Range {
                field: "hyparview.passive_view_capacity",
                reason: "at most 1024",
            });
        }
        if h.passive_random_walk_length > h.active_random_walk_length {
            return Err(ConfigError::Range {
                field: "hyparview.passive_random_walk_length",
                reason: "must not exceed active_random_walk_length",
            });
        }
        let shuffle_len = h
            .shuffle_active_count
            .saturating_add(h.shuffle_passive_count)
            .saturating_add(1);
        if shuffle_len > l.max_shuffle_entries {
            return Err(ConfigError::Range {
                field: "hyparview.shuffle_passive_count",
                reason: "shuffle_active_count + shuffle_passive_count + 1 must fit in limits.max_shuffle_entries",
            });
        }
        nonzero("hyparview.shuffle_interval", h.shuffle_interval)?;
        nonzero(
            "hyparview.neighbor_request_timeout",
            h.neighbor_request_timeout,
        )?;
        nonzero("hyparview.repair_interval", h.repair_interval)?;
        nonzero("hyparview.candidate_backoff_base", h.candidate_backoff_base)?;
        nonzero("hyparview.rejoin_backoff_base", h.rejoin_backoff_base)?;
        nonzero("hyparview.restore_interval", h.restore_interval)?;
        at_least(
            "hyparview.shuffle_interval_max",
            h.shuffle_interval_max >= h.shuffle_interval,
            "must be at least shuffle_interval",
        )?;
        at_least(
            "hyparview.candidate_backoff_max",
            h.candidate_backoff_max >= h.candidate_backoff_base,
            "must be at least candidate_backoff_base",
        )?;
        at_least(
            "hyparview.rejoin_backoff_max",
            h.rejoin_backoff_max >= h.rejoin_backoff_base,
            "must be at least rejoin_backoff_base",
        )?;
        positive(
            "hyparview.candidate_max_failures",
            h.candidate_max_failures as usize,
        )?;
        nonzero("plumtree.ihave_interval", p.ihave_interval)?;
        positive("plumtree.ihave_max_entries", p.ihave_max_entries)?;
        nonzero("plumtree.graft_timeout_1", p.graft_timeout_1)?;
        nonzero("plumtree.graft_timeout_2", p.graft_timeout_2)?;
        positive(
            "plumtree.optimization_threshold",
            p.optimization_threshold as usize,
        )?;
        positive("plumtree.message_cache_capacity", p.message_cache_capacity)?;
        positive("plumtree.seen_capacity", p.seen_capacity)?;
        positive("plumtree.max_missing", p.max_missing)?;
        positive("plumtree.max_origins", p.max_origins)?;
        nonzero("plumtree.expiry_interval", p.expiry_interval)?;
        at_least(
            "plumtree.seen_retention",
            p.seen_retention >= p.message_cache_retention,
            "must be at least message_cache_retention",
        )?;
        at_least(
            "plumtree.seen_capacity",
            p.seen_capacity >= p.message_cache_capacity,
            "must be at least message_cache_capacity",
        )?;
        positive("limits.max_payload_size", l.max_payload_size)?;
        positive("limits.max_shuffle_entries", l.max_shuffle_entries)?;
        positive("limits.max_ihave_entries", l.max_ihave_entries)?;
        if p.ihave_max_entries > l.max_ihave_entries {
            return Err(ConfigError::Range {
                field: "plumtree.ihave_max_entries",
                reason: "must not exceed limits.max_ihave_entries",
            });
        }
        positive(
            "plumtree.message_cache_max_bytes",
            p.message_cache_max_bytes,
        )?;
        if l.max_frame_size
            < l.max_payload_size
                .saturating_add(crate::wire::MAX_GOSSIP_OVERHEAD)
        {
            return Err(ConfigError::Range {
                field: "limits.max_frame_size",
                reason: "must be at least max_payload_size + 256",
            });
        }
        if l.max_frame_size > crate::wire::ABSOLUTE_MAX_FRAME {
            return Err(ConfigError::Range {
                field: "limits.max_frame_size",
                reason: "at most 16 MiB",
            });
        }
        // The largest SHUFFLE and IHAVE we may send must fit in a frame
        // (entries of up to 64 bytes of identity plus their data).
        let shuffle_bytes = (l.max_shuffle_entries.saturating_add(1))
            .saturating_mul(l.max_peer_data_size.saturating_add(72));
        if shuffle_bytes > l.max_frame_size {
            return Err(ConfigError::Range {
                field: "limits.max_shuffle_entries",
                reason: "(max_shuffle_entries + 1) × (max_peer_data_size + 72) must fit in max_frame_size",
            });
        }
        if l.max_ihave_entries.saturating_mul(40).saturating_add(16) > l.max_frame_size {
            return Err(ConfigError::Range {
                field: "limits.max_ihave_entries",
                reason: "max_ihave_entries × 40 bytes must fit in max_frame_size",
            });
        }
        for (field, d) in [
            ("hyparview.shuffle_interval", h.shuffle_interval),
            ("hyparview.shuffle_interval_max", h.shuffle_interval_max),
            (
                "hyparview.neighbor_request_timeout",
                h.neighbor_request_timeout,
            ),
            ("hyparview.repair_interval", h.repair_interval),
            ("hyparview.candidate_backoff_max", h.candidate_backoff_max),
            ("hyparview.rejoin_backoff_max", h.rejoin_backoff_max),
            ("hyparview.restore_interval", h.restore_interval),
            ("hyparview.restore_max_age", h.restore_max_age),
            ("plumtree.ihave_interval", p.ihave_interval),
            ("plumtree.ihave_defer", p.ihave_defer),
            ("plumtree.graft_timeout_1", p.graft_timeout_1),
            ("plumtree.graft_timeout_2", p.graft_timeout_2),
            (
                "plumtree.message_cache_retention",
                p.message_cache_retention,
            ),
            ("plumtree.seen_retention", p.seen_retention),
            ("plumtree.expiry_interval", p.expiry_interval),
        ] {
            if d > MAX_DURATION {
                return Err(ConfigError::Range {
                    field,
                    reason: "at most one day",
                });
            }
        }
        Ok(())
    }
}

/// No duration parameter may exceed one day.
pub const MAX_DURATION: Duration = Duration::from_secs(86_400);

/// Why a [`Config`] was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A count or size that must be positive is zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// A value outside its allowed range, or inconsistent with another.
    #[error("{field}: {reason}")]
    Range {
        /// The parameter, as `section.name`.
        field: &'static str,
        /// What is allowed.
        reason: &'static str,
    },
}

/// `Ok` if `holds`, else a range error for `field`.
fn at_least(field: &'static str, holds: bool, reason: &'static str) -> Result<(), ConfigError> {
    if holds {
        Ok(())
    } else {
        Err(ConfigError::Range { field, reason })
    }
}

fn positive(field: &'static str, v: usize) -> Result<(), ConfigError> {
    if v == 0 {
        Err(ConfigError::Zero(field))
    } else {
        Ok(())
    }
}

fn nonzero(field: &'static str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        Err(ConfigError::Zero(field))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid() {
        Config::lan().validate().unwrap();
        Config::wan().validate().unwrap();
        Config::local().validate().unwrap();
        assert_eq!(Config::default(), Config::lan());
    }

    #[test]
    fn validate_names_the_offending_field() {
        let mut c = Config::lan();
        c.hyparview.active_view_capacity = 0;
        assert_eq!(
            c.validate(),
            Err(ConfigError::Zero("hyparview.active_view_capacity"))
        );
        let mut c = Config::lan();
        c.plumtree.seen_retention = Duration::from_secs(1);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Range {
                field: "plumtree.seen_retention",
                ..
            })
        ));
        let mut c = Config::lan();
        c.limits.max_frame_size = c.limits.max_payload_size;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Range {
                field: "limits.max_frame_size",
                ..
            })
        ));
        let mut c = Config::lan();
        c.hyparview.passive_random_walk_length = 9;
        assert!(c.validate().is_err());
    }
}

/// Why [`Config::set`] rejected a key or value.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SetError {
    /// No parameter has this name.
    #[error("unknown parameter {0:?} (expected section.name, e.g. plumtree.graft_timeout_1)")]
    UnknownKey(String),
    /// The value does not parse as the parameter's type.
    #[error("{key}: cannot parse {value:?} as {expected}")]
    BadValue {
        /// The parameter.
        key: String,
        /// What was given.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
}

/// Parses a duration such as `250ms`, `10s`, `1.5s`, `2m` or `1h`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    (secs.is_finite() && (0.0..=1e9).contains(&secs)).then(|| Duration::from_secs_f64(secs))
}

macro_rules! settable {
    ($self:ident, $key:ident, $value:ident; $( $section:ident . $field:ident : $kind:ident ),* $(,)?) => {{
        let bad = |expected: &'static str| SetError::BadValue {
            key: $key.to_string(),
            value: $value.to_string(),
            expected,
        };
        match $key {
            $( concat!(stringify!($section), ".", stringify!($field)) => {
                $self.$section.$field = settable!(@parse $kind, $value, bad);
                Ok(())
            } )*
            _ => Err(SetError::UnknownKey($key.to_string())),
        }
    }};
    (@parse duration, $v:ident, $bad:ident) => { parse_duration($v).ok_or_else(|| $bad("a duration like 250ms or 10s"))? };
    (@parse usize, $v:ident, $bad:ident) => { $v.trim().parse::<usize>().map_err(|_| $bad("a non-negative integer"))? };
    (@parse u8, $v:ident, $bad:ident) => { $v.trim().parse::<u8>().map_err(|_| $bad("an integer 0-255"))? };
    (@parse u16, $v:ident, $bad:ident) => { $v.trim().parse::<u16>().map_err(|_| $bad("an integer 0-65535"))? };
}

impl Config {
    /// Sets one parameter by its dotted name (`hyparview.shuffle_interval`,
    /// `plumtree.graft_timeout_1`, `limits.max_payload_size`, …) from text.
    /// Call [`Config::validate`] afterwards.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), SetError> {
        settable!(self, key, value;
            hyparview.active_view_capacity: usize,
            hyparview.passive_view_capacity: usize,
            hyparview.active_random_walk_length: u8,
            hyparview.passive_random_walk_length: u8,
            hyparview.shuffle_interval: duration,
            hyparview.shuffle_interval_max: duration,
            hyparview.shuffle_active_count: usize,
            hyparview.shuffle_passive_count: usize,
            hyparview.shuffle_ttl: u8,
            hyparview.neighbor_request_timeout: duration,
            hyparview.repair_interval: duration,
            hyparview.candidate_backoff_base: duration,
            hyparview.candidate_backoff_max: duration,
            hyparview.candidate_max_failures: u8,
            hyparview.rejoin_backoff_base: duration,
            hyparview.rejoin_backoff_max: duration,
            hyparview.restore_interval: duration,
            hyparview.restore_max_age: duration,
            plumtree.ihave_interval: duration,
            plumtree.ihave_defer: duration,
            plumtree.ihave_max_entries: usize,
            plumtree.graft_timeout_1: duration,
            plumtree.graft_timeout_2: duration,
            plumtree.optimization_threshold: u16,
            plumtree.message_cache_capacity: usize,
            plumtree.message_cache_max_bytes: usize,
            plumtree.message_cache_retention: duration,
            plumtree.seen_capacity: usize,
            plumtree.seen_retention: duration,
            plumtree.max_origins: usize,
            plumtree.max_missing: usize,
            plumtree.expiry_interval: duration,
            limits.max_payload_size: usize,
            limits.max_frame_size: usize,
            limits.max_peer_data_size: usize,
            limits.max_shuffle_entries: usize,
            limits.max_ihave_entries: usize,
        )
    }
}

#[cfg(test)]
mod set_tests {
    use super::*;

    #[test]
    fn set_parses_each_kind_and_names_errors() {
        let mut c = Config::lan();
        c.set("plumtree.graft_timeout_1", "1.5s").unwrap();
        assert_eq!(c.plumtree.graft_timeout_1, Duration::from_millis(1500));
        c.set("hyparview.active_view_capacity", "7").unwrap();
        assert_eq!(c.hyparview.active_view_capacity, 7);
        c.set("hyparview.shuffle_interval", "2m").unwrap();
        assert_eq!(c.hyparview.shuffle_interval, Duration::from_secs(120));
        assert_eq!(
            c.set("plumtree.nope", "1"),
            Err(SetError::UnknownKey("plumtree.nope".into()))
        );
        assert!(matches!(
            c.set("plumtree.graft_timeout_1", "soon"),
            Err(SetError::BadValue { .. })
        ));
        assert!(c.set("hyparview.shuffle_ttl", "300").is_err());
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("-1s"), None);
    }
}
