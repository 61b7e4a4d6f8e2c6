//! Offline messages: letters sealed by a client to a peer that is not
//! online, kept by two servers until the peer collects them (or for a
//! week), as pure data with every bound.
//!
//! What a server holds of a letter: the recipient's id, the letter's id
//! (16 random bytes the sender chose), the sealed bytes (only the
//! recipient can open them, and only it learns the sender: see SPEC §12),
//! when it expires, and two 64-bit tags for quotas — a keyed hash of the
//! sender's id and one of its address, the key this server's own (drawn
//! from its seed at start, never sent), so what it stores names no
//! sender.
//!
//! Where letters live: the [`MAIL_HOLDERS`] servers ranked first for the
//! recipient by rendezvous hashing ([`rank`]) over the live servers, the
//! same choice at every server that knows the same members. A collection
//! asks the first [`MAIL_FETCH`], so a letter is still found after a
//! holder died or a server joined ahead of it in the ranking.
//!
//! Bounds (see [`MailLimits`]): letters per recipient, per sender, per
//! sender address; letters and bytes in all; size of one letter. A letter
//! kept again (the same recipient and id: a retried deposit) is not
//! counted twice.

use overlay::PeerId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

/// A letter's id: chosen at random by its sender, unique per recipient.
pub type LetterId = [u8; 16];

/// Largest sealed letter (bytes): a 2,048-character line of 4-byte
/// characters, a name, the sender's id and the seal's overhead.
pub const MAX_LETTER: usize = 9 * 1024;
/// Smallest sealed letter: version, ephemeral key, sealed sender id and
/// two tags (SPEC §12).
pub const MIN_LETTER: usize = 1 + 32 + 48 + 16;
/// Servers that keep each letter.
pub const MAIL_HOLDERS: usize = 2;
/// Servers a collection asks (the first of the ranking).
pub const MAIL_FETCH: usize = 4;
/// Most letter ids in one `Delivered` or `Discard`.
pub const MAX_DELIVERED_IDS: usize = 64;
/// Most bytes of letters in one answer to a client (under the 64 KiB
/// client frame).
pub const PAGE_BYTES: usize = 48 * 1024;
/// Most bytes of letters one server sends another for a collection: one
/// client page, since that is all the collection can hand out. (More
/// would let a client that never acknowledges make every collection cost
/// the cluster several times what it is sent.)
pub const HELD_BYTES: usize = PAGE_BYTES;

/// A sealed letter as it travels and is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Letter {
    /// The recipient.
    pub to: PeerId,
    /// The sender's id for it.
    pub id: LetterId,
    /// Sealed to `to` (SPEC §12); opaque to servers.
    pub sealed: Vec<u8>,
}

/// What a server keeps, and for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailLimits {
    /// Letters kept for one recipient.
    pub per_recipient: usize,
    /// Letters kept from one sender (all recipients).
    pub per_sender: usize,
    /// Letters kept from one sender address (IPv6: one /64).
    pub per_source: usize,
    /// Letters kept in all.
    pub max_letters: usize,
    /// Sealed bytes kept in all.
    pub max_bytes: usize,
    /// How long a letter is kept when nobody collects it.
    pub ttl: Duration,
}

impl Default for MailLimits {
    fn default() -> Self {
        MailLimits {
            per_recipient: 256,
            per_sender: 256,
            per_source: 1_024,
            max_letters: 100_000,
            max_bytes: 128 * 1024 * 1024,
            ttl: Duration::from_secs(7 * 24 * 3_600),
        }
    }
}

/// Why a letter was not kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MailRefusal {
    /// Shorter than [`MIN_LETTER`] or longer than [`MAX_LETTER`].
    #[error("a sealed letter is {MIN_LETTER} to {MAX_LETTER} bytes")]
    Size,
    /// The recipient has `per_recipient` letters waiting.
    #[error("the recipient's mailbox is full")]
    Recipient,
    /// The sender has `per_sender` letters waiting.
    #[error("you have too many letters waiting to be collected")]
    Sender,
    /// The sender's address has `per_source` letters waiting.
    #[error("your address has too many letters waiting to be collected")]
    Source,
    /// `max_letters` or `max_bytes` reached.
    #[error("this server's mail storage is full")]
    Full,
}

#[derive(Clone, Debug)]
struct Kept {
    sealed: Vec<u8>,
    sender: u64,
    source: u64,
    expires: u64,
    order: u64,
}

/// The letters one server keeps.
#[derive(Clone, Debug)]
pub struct Mailbox {
    key: [u8; 32],
    limits: MailLimits,
    letters: BTreeMap<(PeerId, LetterId), Kept>,
    /// (recipient, arrival) → id: a recipient's letters in arrival order.
    arrival: BTreeMap<(PeerId, u64), LetterId>,
    expiry: BTreeSet<(u64, PeerId, LetterId)>,
    per_to: BTreeMap<PeerId, usize>,
    per_sender: BTreeMap<u64, usize>,
    per_source: BTreeMap<u64, usize>,
    bytes: usize,
    next_order: u64,
}

fn bump(map: &mut BTreeMap<u64, usize>, k: u64, up: bool) {
    let n = map.entry(k).or_insert(0);
    if up {
        *n += 1;
    } else {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(&k);
        }
    }
}

/// The key of a quota source: an IPv4 address, or an IPv6 /64.
fn source_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_ipv6_mapped().octets(),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0);
                o
            }
        },
    }
}

impl Mailbox {
    /// An empty mailbox; `key` is this server's secret for the quota tags.
    pub fn new(key: [u8; 32], limits: MailLimits) -> Mailbox {
        Mailbox {
            key,
            limits,
            letters: BTreeMap::new(),
            arrival: BTreeMap::new(),
            expiry: BTreeSet::new(),
            per_to: BTreeMap::new(),
            per_sender: BTreeMap::new(),
            per_source: BTreeMap::new(),
            bytes: 0,
            next_order: 0,
        }
    }

    fn tag(&self, what: &[u8]) -> u64 {
        let h = blake3::keyed_hash(&self.key, what);
        let mut b = [0u8; 8];
        b.copy_from_slice(&h.as_bytes()[..8]);
        u64::from_le_bytes(b)
    }

    /// Keeps `letter` from `sender` at `source` until `now_unix` + the TTL:
    /// `Ok(true)` kept now, `Ok(false)` kept already (a retried deposit).
    pub fn keep(
        &mut self,
        letter: Letter,
        sender: &PeerId,
        source: IpAddr,
        now_unix: u64,
    ) -> Result<bool, MailRefusal> {
        let len = letter.sealed.len();
        if !(MIN_LETTER..=MAX_LETTER).contains(&len) {
            return Err(MailRefusal::Size);
        }
        if self.letters.contains_key(&(letter.to, letter.id)) {
            return Ok(false);
        }
        let sender = self.tag(sender.as_bytes());
        let source = self.tag(&source_bytes(source));
        let l = &self.limits;
        if self.per_to.get(&letter.to).copied().unwrap_or(0) >= l.per_recipient {
            return Err(MailRefusal::Recipient);
        }
        if self.per_sender.get(&sender).copied().unwrap_or(0) >= l.per_sender {
            return Err(MailRefusal::Sender);
        }
        if self.per_source.get(&source).copied().unwrap_or(0) >= l.per_source {
            return Err(MailRefusal::Source);
        }
        if self.letters.len() >= l.max_letters || self.bytes + len > l.max_bytes {
            return Err(MailRefusal::Full);
        }
        let expires = now_unix.saturating_add(l.ttl.as_secs());
        let order = self.next_order;
        self.next_order += 1;
        *self.per_to.entry(letter.to).or_insert(0) += 1;
        bump(&mut self.per_sender, sender, true);
        bump(&mut self.per_source, source, true);
        self.bytes += len;
        self.arrival.insert((letter.to, order), letter.id);
        self.expiry.insert((expires, letter.to, letter.id));
        self.letters.insert(
            (letter.to, letter.id),
            Kept {
                sealed: letter.sealed,
                sender,
                source,
                expires,
                order,
            },
        );
        Ok(true)
    }

    /// The letters for `to` in arrival order, as many as fit in `max_bytes`
    /// of sealed bytes (at least one), and whether more are waiting.
    pub fn letters_for(&self, to: &PeerId, max_bytes: usize) -> (Vec<Letter>, bool) {
        let mut out = Vec::new();
        let mut bytes = 0;
        for (_, id) in self.arrival.range((*to, 0)..=(*to, u64::MAX)) {
            let Some(k) = self.letters.get(&(*to, *id)) else {
                continue;
            };
            if !out.is_empty() && bytes + k.sealed.len() > max_bytes {
                return (out, true);
            }
            bytes += k.sealed.len();
            out.push(Letter {
                to: *to,
                id: *id,
                sealed: k.sealed.clone(),
            });
        }
        (out, false)
    }

    fn remove(&mut self, to: &PeerId, id: &LetterId) -> bool {
        let Some(k) = self.letters.remove(&(*to, *id)) else {
            return false;
        };
        self.arrival.remove(&(*to, k.order));
        self.expiry.remove(&(k.expires, *to, *id));
        if let Some(n) = self.per_to.get_mut(to) {
            *n -= 1;
            if *n == 0 {
                self.per_to.remove(to);
            }
        }
        bump(&mut self.per_sender, k.sender, false);
        bump(&mut self.per_source, k.source, false);
        self.bytes -= k.sealed.len();
        true
    }

    /// Forgets the letters `ids` of `to` (collected); how many were here.
    pub fn discard(&mut self, to: &PeerId, ids: &[LetterId]) -> usize {
        ids.iter().filter(|id| self.remove(to, id)).count()
    }

    /// Forgets letters whose week is over; how many.
    pub fn expire(&mut self, now_unix: u64) -> usize {
        let mut n = 0;
        while let Some(&(at, to, id)) = self.expiry.first()
            && at <= now_unix
        {
            self.remove(&to, &id);
            n += 1;
        }
        n
    }

    /// Letters kept.
    pub fn len(&self) -> usize {
        self.letters.len()
    }

    /// Whether no letter is kept.
    pub fn is_empty(&self) -> bool {
        self.letters.is_empty()
    }

    /// Sealed bytes kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Letters waiting for `to` here.
    pub fn waiting_for(&self, to: &PeerId) -> usize {
        self.per_to.get(to).copied().unwrap_or(0)
    }
}

/// The first `k` of `servers` for `to` by rendezvous (highest random
/// weight) hashing: each server's weight is the first 8 bytes of
/// BLAKE3(`chatd-mail-v1` ‖ server ‖ to), highest first (ties by id).
/// Every server that knows the same servers ranks them the same; a server
/// that joins or leaves moves only the letters whose ranking it enters.
pub fn rank(to: &PeerId, servers: impl IntoIterator<Item = PeerId>, k: usize) -> Vec<PeerId> {
    let mut weighted: Vec<(u64, PeerId)> = servers
        .into_iter()
        .map(|s| {
            let mut h = blake3::Hasher::new();
            h.update(b"chatd-mail-v1");
            h.update(s.as_bytes());
            h.update(to.as_bytes());
            let mut b = [0u8; 8];
            b.copy_from_slice(&h.finalize().as_bytes()[..8]);
            (u64::from_be_bytes(b), s)
        })
        .collect();
    weighted.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    weighted.dedup_by(|a, b| a.1 == b.1);
    weighted.into_iter().take(k).map(|(_, s)| s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PeerId {
        PeerId([n; 32])
    }

    fn letter(to: u8, n: u8, len: usize) -> Letter {
        Letter {
            to: id(to),
            id: [n; 16],
            sealed: vec![n; len],
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn small() -> MailLimits {
        MailLimits {
            per_recipient: 3,
            per_sender: 4,
            per_source: 5,
            max_letters: 6,
            max_bytes: 6 * 200,
            ttl: Duration::from_secs(100),
        }
    }

    #[test]
    fn every_quota_refuses_with_its_reason_and_a_retry_is_not_counted_twice() {
        let mut m = Mailbox::new([1; 32], small());
        let (a, b) = (id(100), id(101));
        let here = ip("198.51.100.1");
        for n in 0..3 {
            assert_eq!(m.keep(letter(1, n, 100), &a, here, 0), Ok(true));
        }
        assert_eq!(m.keep(letter(1, 0, 100), &a, here, 0), Ok(false));
        assert_eq!(m.len(), 3);
        assert_eq!(
            m.keep(letter(1, 9, 100), &b, ip("198.51.100.2"), 0),
            Err(MailRefusal::Recipient)
        );
        assert_eq!(m.keep(letter(2, 3, 100), &a, here, 0), Ok(true));
        assert_eq!(
            m.keep(letter(2, 4, 100), &a, ip("198.51.100.3"), 0),
            Err(MailRefusal::Sender)
        );
        assert_eq!(m.keep(letter(3, 4, 100), &b, here, 0), Ok(true));
        assert_eq!(
            m.keep(letter(3, 5, 100), &id(102), here, 0),
            Err(MailRefusal::Source)
        );
        // IPv6: one /64 is one source.
        let v6 = |s| ip(s);
        assert_eq!(
            m.keep(letter(4, 6, 100), &id(103), v6("2001:db8::1"), 0),
            Ok(true)
        );
        assert_eq!(
            m.keep(letter(4, 7, 100), &id(104), v6("2001:db8::ffff"), 0),
            Err(MailRefusal::Full),
            "six letters in all"
        );
        assert_eq!(
            m.keep(letter(5, 8, 10), &b, here, 0),
            Err(MailRefusal::Size)
        );
        assert_eq!(
            m.keep(letter(5, 8, MAX_LETTER + 1), &b, here, 0),
            Err(MailRefusal::Size)
        );
        // Collected: the quotas are free again.
        assert_eq!(m.discard(&id(1), &[[0; 16], [1; 16], [42; 16]]), 2);
        assert_eq!(
            m.keep(letter(1, 9, 100), &b, ip("198.51.100.2"), 0),
            Ok(true)
        );
        assert_eq!(m.len(), 5);
        assert_eq!(m.bytes(), 500);
    }

    #[test]
    fn letters_come_in_arrival_order_page_by_page_and_expire_after_the_ttl() {
        let mut m = Mailbox::new([1; 32], MailLimits::default());
        let to = id(1);
        for n in [5u8, 3, 9, 1] {
            m.keep(letter(1, n, 1_000), &id(50), ip("192.0.2.1"), 10)
                .unwrap();
        }
        m.keep(letter(2, 7, 1_000), &id(50), ip("192.0.2.1"), 20)
            .unwrap();
        let (page, more) = m.letters_for(&to, 2_500);
        assert!(more);
        assert_eq!(page.iter().map(|l| l.id[0]).collect::<Vec<_>>(), vec![5, 3]);
        let (all, more) = m.letters_for(&to, usize::MAX);
        assert!(!more);
        assert_eq!(
            all.iter().map(|l| l.id[0]).collect::<Vec<_>>(),
            vec![5, 3, 9, 1]
        );
        // One letter larger than a page still comes, alone.
        assert_eq!(m.letters_for(&to, 1).0.len(), 1);
        let week = MailLimits::default().ttl.as_secs();
        assert_eq!(m.expire(10 + week - 1), 0);
        assert_eq!(m.expire(10 + week), 4);
        assert_eq!(m.waiting_for(&to), 0);
        assert_eq!(m.len(), 1);
        assert_eq!(m.expire(20 + week), 1);
        assert!(m.is_empty());
        assert_eq!(m.bytes(), 0);
    }

    #[test]
    fn the_ranking_is_the_same_everywhere_and_moves_little_when_servers_change() {
        let servers: Vec<PeerId> = (0..20).map(id).collect();
        let mut shuffled = servers.clone();
        shuffled.reverse();
        let mut moved = 0;
        for to in 100..200u8 {
            let r = rank(&id(to), servers.clone(), MAIL_FETCH);
            assert_eq!(r, rank(&id(to), shuffled.clone(), MAIL_FETCH));
            assert_eq!(r.len(), MAIL_FETCH);
            // The first holder leaves: the second is now first, and the
            // fetch set still holds the other copy.
            let without: Vec<PeerId> = servers.iter().copied().filter(|s| *s != r[0]).collect();
            let r2 = rank(&id(to), without, MAIL_FETCH);
            assert_eq!(r2[..MAIL_FETCH - 1], r[1..]);
            // A server joins: the holders change only if it ranks first or second.
            let mut with = servers.clone();
            with.push(id(250));
            let r3 = rank(&id(to), with, MAIL_HOLDERS);
            if r3 != r[..MAIL_HOLDERS] {
                moved += 1;
                assert!(r3.contains(&id(250)));
            }
        }
        // 2 of 21 places: about 10 of 100 recipients.
        assert!(moved < 30, "{moved} of 100 moved");
    }

    #[test]
    fn a_store_holds_no_sender_id() {
        let mut m = Mailbox::new([7; 32], MailLimits::default());
        let sender = id(77);
        m.keep(letter(1, 1, 200), &sender, ip("192.0.2.1"), 0)
            .unwrap();
        let dump = format!("{m:?}");
        let raw = format!("{:?}", sender.as_bytes());
        assert!(!dump.contains(&raw[1..raw.len() - 1]), "sender id stored");
    }
}
