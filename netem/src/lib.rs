//! Emulated latency, jitter and loss that real processes feel.
//!
//! This kernel has no `tc netem` and no NFQUEUE, so delays come from user
//! space: `chatd-netem` runs inside a network namespace, owns a TUN device
//! and is made the namespace's egress for locally sent packets (a policy
//! rule `iif lo lookup 100`, table 100 `default dev <tun> src <addr>`).
//! Every IP packet the namespace sends is read from the TUN, held for the
//! delay of its destination's rule, and written back into the TUN, from
//! where the kernel forwards it on its normal route (`accept_local` lets a
//! packet with the namespace's own source address in). Nothing else sees
//! a difference: addresses, ports and NAT mappings are those of a direct
//! path, so hole punching, relays and RTT measurements behave as on a slow
//! network. Delay is added on egress only: put one in each namespace whose
//! packets should be slow (a path's RTT is the sum of both ends' egress
//! delays towards each other).
//!
//! This module is the pure part ([`Shaper`]): which rule a packet gets, when
//! it leaves, whether it is lost, and the queue's bounds. Time and
//! randomness come in as arguments (a start-relative [`Duration`] and a
//! seed), so the same packets at the same instants give the same schedule.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;
use std::time::Duration;

/// What happens to packets towards one set of destinations.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rule {
    /// Fixed one-way delay added on egress.
    pub delay: Duration,
    /// Extra delay, uniform in `[0, jitter]`, per packet. Packets towards
    /// one destination never overtake each other (as on a real path):
    /// jitter stretches gaps, it does not reorder.
    pub jitter: Duration,
    /// Probability that a packet is dropped, `0.0..=1.0`.
    pub loss: f64,
}

impl Rule {
    /// No delay, no loss.
    pub const NONE: Rule = Rule {
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        loss: 0.0,
    };
}

/// A rule's text was not understood.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError(String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

fn millis(s: &str, what: &str) -> Result<Duration, ParseError> {
    let ms: f64 = s
        .trim_end_matches("ms")
        .parse()
        .map_err(|_| ParseError(format!("{what} {s:?} is not a number of milliseconds")))?;
    if !(0.0..=60_000.0).contains(&ms) {
        return Err(ParseError(format!(
            "{what} {s:?} is not within 0..60000 ms"
        )));
    }
    Ok(Duration::from_secs_f64(ms / 1e3))
}

impl FromStr for Rule {
    type Err = ParseError;

    /// `DELAY[~JITTER][/LOSS%]`, milliseconds and percent: `10`, `10ms`,
    /// `20~5`, `40~10/2%`, `0/10%`.
    fn from_str(s: &str) -> Result<Rule, ParseError> {
        let (time, loss) = match s.split_once('/') {
            Some((t, l)) => (t, Some(l)),
            None => (s, None),
        };
        let (delay, jitter) = match time.split_once('~') {
            Some((d, j)) => (millis(d, "delay")?, millis(j, "jitter")?),
            None => (millis(time, "delay")?, Duration::ZERO),
        };
        let loss = match loss {
            None => 0.0,
            Some(l) => {
                let pct: f64 = l
                    .trim_end_matches('%')
                    .parse()
                    .map_err(|_| ParseError(format!("loss {l:?} is not a percentage")))?;
                if !(0.0..=100.0).contains(&pct) {
                    return Err(ParseError(format!("loss {l:?} is not within 0..100%")));
                }
                pct / 100.0
            }
        };
        Ok(Rule {
            delay,
            jitter,
            loss,
        })
    }
}

/// An IPv4 prefix, `A.B.C.D/LEN` (a bare address is a /32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    addr: u32,
    len: u8,
}

impl Prefix {
    fn mask(&self) -> u32 {
        if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.len))
        }
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == self.addr & self.mask()
    }
}

impl FromStr for Prefix {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Prefix, ParseError> {
        let (a, len) = match s.split_once('/') {
            Some((a, l)) => (
                a,
                l.parse::<u8>()
                    .ok()
                    .filter(|l| *l <= 32)
                    .ok_or_else(|| ParseError(format!("prefix length {l:?} is not 0..32")))?,
            ),
            None => (s, 32),
        };
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| ParseError(format!("{a:?} is not an IPv4 address")))?;
        Ok(Prefix {
            addr: u32::from(addr),
            len,
        })
    }
}

/// The rules of one namespace: the most specific prefix wins, else the
/// default.
#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    /// For destinations no prefix covers.
    pub default: Rule,
    /// `(prefix, rule)`, any order.
    pub to: Vec<(Prefix, Rule)>,
}

impl Rules {
    /// The rule for a packet to `dst` (IPv6: always the default).
    pub fn for_dst(&self, dst: IpAddr) -> Rule {
        let IpAddr::V4(v4) = dst else {
            return self.default;
        };
        self.to
            .iter()
            .filter(|(p, _)| p.contains(v4))
            .max_by_key(|(p, _)| p.len)
            .map_or(self.default, |(_, r)| *r)
    }
}

/// `PREFIX=RULE`, as in `--to 10.200.0.11=20~2/1%`.
pub fn parse_to(s: &str) -> Result<(Prefix, Rule), ParseError> {
    let (p, r) = s
        .split_once('=')
        .ok_or_else(|| ParseError(format!("{s:?} is not PREFIX=DELAY[~JITTER][/LOSS%]")))?;
    Ok((p.parse()?, r.parse()?))
}

/// The destination of an IP packet, if it is one.
pub fn destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let b: [u8; 4] = packet[16..20].try_into().ok()?;
            Some(IpAddr::from(b))
        }
        6 if packet.len() >= 40 => {
            let b: [u8; 16] = packet[24..40].try_into().ok()?;
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

/// Bounds on what the shaper holds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Packets held at once.
    pub packets: usize,
    /// Bytes held at once.
    pub bytes: usize,
}

impl Default for Limits {
    /// 20,000 packets or 32 MiB: 100 ms of ~2.6 Gbit/s, far more than a
    /// chat lab sends, small enough for any machine.
    fn default() -> Self {
        Limits {
            packets: 20_000,
            bytes: 32 << 20,
        }
    }
}

/// What [`Shaper::push`] did with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Held until the given instant.
    Held(Duration),
    /// Dropped by the rule's loss.
    Lost,
    /// Dropped: the queue is at one of its [`Limits`].
    Overflow,
    /// Not an IP packet: dropped.
    Invalid,
}

/// Counters, in packets (and bytes sent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Read from the namespace.
    pub received: u64,
    /// Released back, after their delay.
    pub sent: u64,
    /// Bytes released back.
    pub sent_bytes: u64,
    /// Dropped by a loss rule.
    pub lost: u64,
    /// Dropped at a queue limit.
    pub overflow: u64,
    /// Dropped as not IP.
    pub invalid: u64,
}

struct Held {
    at: Duration,
    seq: u64,
    packet: Vec<u8>,
}

impl PartialEq for Held {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Held {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// The schedule: deterministic for a seed.
pub struct Shaper {
    rules: Rules,
    limits: Limits,
    rng: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Held>>,
    bytes: usize,
    /// Per destination, the release instant of its last packet (FIFO).
    last: BTreeMap<IpAddr, Duration>,
    stats: Stats,
}

impl Shaper {
    /// A shaper with `rules`, `limits` and a random `seed`.
    pub fn new(rules: Rules, limits: Limits, seed: u64) -> Shaper {
        Shaper {
            rules,
            limits,
            rng: seed,
            seq: 0,
            queue: BinaryHeap::new(),
            bytes: 0,
            last: BTreeMap::new(),
            stats: Stats::default(),
        }
    }

    fn unit(&mut self) -> f64 {
        // SplitMix64: a fresh, well-mixed value per call.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A packet read at `now` (time since the start).
    pub fn push(&mut self, now: Duration, packet: Vec<u8>) -> Verdict {
        self.stats.received += 1;
        let Some(dst) = destination(&packet) else {
            self.stats.invalid += 1;
            return Verdict::Invalid;
        };
        let rule = self.rules.for_dst(dst);
        if rule.loss > 0.0 && self.unit() < rule.loss {
            self.stats.lost += 1;
            return Verdict::Lost;
        }
        if self.queue.len() >= self.limits.packets || self.bytes + packet.len() > self.limits.bytes
        {
            self.stats.overflow += 1;
            return Verdict::Overflow;
        }
        let jitter = if rule.jitter.is_zero() {
            Duration::ZERO
        } else {
            rule.jitter.mul_f64(self.unit())
        };
        let mut at = now + rule.delay + jitter;
        if let Some(prev) = self.last.get(&dst) {
            at = at.max(*prev);
        }
        self.last.insert(dst, at);
        if self.last.len() > 4_096 {
            // Destinations whose last packet has left need no ordering.
            self.last.retain(|_, t| *t > now);
        }
        self.bytes += packet.len();
        self.seq += 1;
        self.queue.push(Reverse(Held {
            at,
            seq: self.seq,
            packet,
        }));
        Verdict::Held(at)
    }

    /// When the next held packet is due.
    pub fn next_release(&self) -> Option<Duration> {
        self.queue.peek().map(|Reverse(h)| h.at)
    }

    /// The next packet due at `now`, if any (in release order).
    pub fn pop_due(&mut self, now: Duration) -> Option<Vec<u8>> {
        if self.next_release()? > now {
            return None;
        }
        let Reverse(h) = self.queue.pop()?;
        self.bytes -= h.packet.len();
        self.stats.sent += 1;
        self.stats.sent_bytes += h.packet.len() as u64;
        Some(h.packet)
    }

    /// Packets held now.
    pub fn held(&self) -> usize {
        self.queue.len()
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(dst: [u8; 4], len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len.max(20)];
        p[0] = 0x45;
        p[16..20].copy_from_slice(&dst);
        p
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn rules_parse_and_the_longest_prefix_wins() {
        assert_eq!(
            "40~10/2%".parse::<Rule>(),
            Ok(Rule {
                delay: ms(40),
                jitter: ms(10),
                loss: 0.02
            })
        );
        assert_eq!("10ms".parse::<Rule>().map(|r| r.delay), Ok(ms(10)));
        assert_eq!("0/10%".parse::<Rule>().map(|r| r.loss), Ok(0.1));
        for bad in ["", "x", "-1", "10~", "10/101%", "10/x", "70000"] {
            assert!(bad.parse::<Rule>().is_err(), "{bad:?}");
        }
        assert!(parse_to("10.200.0.0/33=1").is_err());
        assert!(parse_to("10.200.0.1").is_err());
        let rules = Rules {
            default: "5".parse().unwrap(),
            to: vec![
                parse_to("10.200.0.0/16=20").unwrap(),
                parse_to("10.200.0.11=30").unwrap(),
                parse_to("0.0.0.0/0=1").unwrap(),
            ],
        };
        let d = |s: &str| rules.for_dst(s.parse().unwrap()).delay;
        assert_eq!(d("10.200.0.11"), ms(30));
        assert_eq!(d("10.200.0.12"), ms(20));
        assert_eq!(d("192.0.2.1"), ms(1));
        assert_eq!(d("::1"), ms(5), "IPv6 gets the default");
    }

    #[test]
    fn packets_leave_after_their_delay_in_order_per_destination() {
        let rules = Rules {
            default: "10~30".parse().unwrap(),
            to: vec![parse_to("10.200.0.12=1").unwrap()],
        };
        let mut s = Shaper::new(rules, Limits::default(), 7);
        let mut sent_at = Vec::new();
        for i in 0..200u64 {
            let now = ms(i);
            let mut p = v4([10, 200, 0, 11], 28);
            p[20..28].copy_from_slice(&i.to_be_bytes());
            match s.push(now, p) {
                Verdict::Held(at) => {
                    assert!(at >= now + ms(10) && at <= now + ms(200));
                    sent_at.push((i, at));
                }
                v => panic!("{v:?}"),
            }
        }
        assert_eq!(
            s.push(ms(0), v4([10, 200, 0, 12], 20)),
            Verdict::Held(ms(1))
        );
        assert_eq!(s.next_release(), Some(ms(1)));
        // Released in time order, never early, and the 200 to .11 in the
        // order they were sent despite 30 ms of jitter on 1 ms gaps.
        let mut out = Vec::new();
        let mut now = Duration::ZERO;
        while let Some(t) = s.next_release() {
            assert!(
                s.pop_due(t - Duration::from_micros(1)).is_none(),
                "never early"
            );
            now = now.max(t);
            let p = s.pop_due(now).unwrap();
            if p[16..20] == [10, 200, 0, 11] {
                out.push(u64::from_be_bytes(p[20..28].try_into().unwrap()));
            }
        }
        assert_eq!(out, (0..200).collect::<Vec<_>>());
        let spread = sent_at
            .iter()
            .map(|(i, at)| at.as_millis() as u64 - i)
            .max();
        assert!(spread.unwrap() > 20, "the jitter was applied");
        assert_eq!(s.stats().sent, 201);
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn loss_is_what_the_rule_says_and_the_same_seed_loses_the_same_packets() {
        let rules = Rules {
            default: "0/10%".parse().unwrap(),
            to: vec![],
        };
        let run = |seed| {
            let mut s = Shaper::new(rules.clone(), Limits::default(), seed);
            (0..10_000)
                .map(|i| s.push(ms(i), v4([10, 200, 1, 1], 20)) == Verdict::Lost)
                .collect::<Vec<bool>>()
        };
        let a = run(1);
        let lost = a.iter().filter(|l| **l).count();
        assert!((800..1_200).contains(&lost), "{lost} of 10,000 lost at 10%");
        assert_eq!(a, run(1));
        assert_ne!(a, run(2));
    }

    #[test]
    fn the_queue_is_bounded_and_refuses_what_is_not_ip() {
        let rules = Rules {
            default: "1000".parse().unwrap(),
            to: vec![],
        };
        let mut s = Shaper::new(
            rules,
            Limits {
                packets: 3,
                bytes: 100,
            },
            1,
        );
        // Packets of 40, 40, 40, 20, 20 bytes against 3 packets / 100 bytes.
        let got: Vec<Verdict> = [40, 40, 40, 20, 20]
            .iter()
            .map(|len| s.push(ms(0), v4([1, 1, 1, 1], *len)))
            .map(|v| match v {
                Verdict::Held(_) => Verdict::Held(Duration::ZERO),
                v => v,
            })
            .collect();
        let held = Verdict::Held(Duration::ZERO);
        assert_eq!(
            got,
            [held, held, Verdict::Overflow, held, Verdict::Overflow],
            "the third over the bytes, the fifth over the count"
        );
        assert_eq!(s.push(ms(0), vec![0x45; 10]), Verdict::Invalid);
        assert_eq!(s.push(ms(0), vec![]), Verdict::Invalid);
        let st = s.stats();
        assert_eq!((st.received, st.overflow, st.invalid), (7, 2, 2));
        assert_eq!(s.pop_due(ms(999)), None);
        assert!(s.pop_due(ms(1000)).is_some());
    }
}
