//! Peer records: where a client can be reached, signed by the client.
//!
//! A [`PeerRecord`] is signed by the peer itself, so servers can neither
//! forge nor roll back a peer's record; last writer wins by `seq`. Every
//! field a client controls is bounded here ([`PeerRecord::validate`]): the
//! name like a label, `seq` against the server's clock, `expires_at`
//! against [`MAX_TTL`], and the private addresses against what a LAN
//! address can be — other clients probe them, so an unchecked list would
//! let one record aim everybody's probes at a third party.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use overlay::PeerId;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};

/// Longest peer name, in bytes.
pub const MAX_NAME: usize = 64;
/// Most private addresses in a record.
pub const MAX_PRIVATE_ADDRS: usize = 4;
/// A record may not claim to stay valid longer than this (seconds) from the
/// server's clock. Presence is the connection, so records are short-lived
/// (clients register for 10 minutes and refresh every 5); a withdrawn
/// record (a tombstone) is kept this long after its expiry, so it outlives
/// every record it replaced.
pub const MAX_TTL: u64 = 3_600;
/// How far a record's `seq` may run ahead of the server's clock, in
/// milliseconds (10 minutes). Clients use their Unix time in milliseconds as
/// `seq` (or any smaller counter); a record whose `seq` is further ahead
/// (e.g. `u64::MAX`, which would win every lookup forever) is refused.
pub const MAX_SEQ_AHEAD_MS: u64 = 600_000;
/// A withdrawal's `expires_at` lies this far in the past (seconds), so it is
/// expired at every server even if the client's clock runs ahead by as much
/// as [`MAX_SEQ_AHEAD_MS`] allows (and a minute more).
pub const WITHDRAWAL_BACKDATE: u64 = MAX_SEQ_AHEAD_MS / 1000 + 60;
/// Largest encoded record body (bytes): name, addresses and fixed fields.
pub const MAX_RECORD_BYTES: usize = 512;

/// The signed part of a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordBody {
    /// The peer (its ed25519 key).
    pub peer: PeerId,
    /// Its chosen name (a label anyone can claim; see [`crate::table`]).
    pub name: String,
    /// The server it registered with.
    pub home_server: PeerId,
    /// Its address as the home server observed it.
    pub public_addr: Option<SocketAddr>,
    /// Its LAN addresses (private ranges only, the family of
    /// `public_addr`).
    pub private_addrs: Vec<SocketAddr>,
    /// Grows with every registration or refresh.
    pub seq: u64,
    /// Unix seconds after which the record is stale.
    pub expires_at: u64,
    /// How the peer's NAT maps its socket, as the peer measured it.
    pub nat: NatMapping,
}

/// How a peer's NAT maps its UDP socket, measured by asking two servers
/// which address they see (hole punching picks its method from the two
/// peers' kinds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NatMapping {
    /// Not measured (one server known, or the second did not answer).
    #[default]
    Unknown,
    /// Both servers saw the same address: one external address for every
    /// destination (no NAT, or a cone NAT) — easy to reach once we send.
    Independent,
    /// The servers saw different addresses: a new external port per
    /// destination (a symmetric NAT) — its port towards a friend is unknown.
    Dependent,
}

/// A record as stored and replicated: the body and the peer's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// What the peer says.
    pub body: RecordBody,
    /// ed25519 signature by `body.peer` over `"chatd-peer-v1" ‖ postcard(body)`.
    pub sig: Vec<u8>,
}

/// Why a record was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum RecordError {
    /// The signature does not verify with the record's own peer key.
    #[error("bad signature")]
    BadSignature,
    /// A field is out of bounds.
    #[error("invalid record: {0}")]
    Invalid(&'static str),
    /// Not newer than the record we hold (a replay or a rollback).
    #[error("stale record: seq {got} is not above {have}")]
    Stale {
        /// The record's seq.
        got: u64,
        /// The seq we hold.
        have: u64,
    },
}

impl RecordError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            RecordError::BadSignature => "bad_signature",
            RecordError::Invalid(_) => "invalid",
            RecordError::Stale { .. } => "stale",
        }
    }
}

fn signed_bytes(body: &RecordBody) -> Vec<u8> {
    let mut out = b"chatd-peer-v1".to_vec();
    out.extend(postcard::to_allocvec(body).unwrap_or_default());
    out
}

/// Checks a name (of a record or of a meeting): 1 to [`MAX_NAME`] bytes,
/// no control characters.
pub fn check_name(name: &str) -> Result<(), RecordError> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(RecordError::Invalid("name must be 1 to 64 bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err(RecordError::Invalid("name has control characters"));
    }
    Ok(())
}

/// Whether `ip` can be a LAN address another client may probe: RFC 1918,
/// CGNAT (100.64/10), IPv4 link-local, IPv6 ULA (fc00::/7) or link-local
/// (fe80::/10). Loopback only when `loopback_ok` (the peer itself was seen
/// on loopback: both ends are on one host).
pub fn is_private(ip: IpAddr, loopback_ok: bool) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_link_local()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (loopback_ok && v4.is_loopback())
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4), loopback_ok);
            }
            let s = v6.segments();
            (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (loopback_ok && v6.is_loopback())
        }
    }
}

/// The addresses of `candidates` a record may carry as private addresses
/// next to `public` (what [`PeerRecord::validate`] accepts): LAN ranges of
/// the same family, not the public address, no repeats, at most
/// [`MAX_PRIVATE_ADDRS`]. Clients filter their interface addresses with it.
pub fn usable_private_addrs(
    candidates: &[SocketAddr],
    public: Option<SocketAddr>,
) -> Vec<SocketAddr> {
    let loopback_ok = public.is_some_and(|a| a.ip().is_loopback());
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in candidates {
        let ok = is_private(a.ip(), loopback_ok)
            && a.port() != 0
            && public.is_none_or(|p| p.is_ipv4() == a.is_ipv4() && p != *a)
            && !out.contains(a);
        if ok && out.len() < MAX_PRIVATE_ADDRS {
            out.push(*a);
        }
    }
    out
}

impl PeerRecord {
    /// Signs `body` with the peer's key (the key must be `body.peer`'s).
    pub fn sign(key: &SigningKey, body: RecordBody) -> PeerRecord {
        let sig = key.sign(&signed_bytes(&body)).to_bytes().to_vec();
        PeerRecord { body, sig }
    }

    /// The withdrawal of `body`, signed in advance: the same peer, home and
    /// name with `seq + 1`, already expired (backdated by
    /// [`WITHDRAWAL_BACKDATE`] to absorb clock skew), no private addresses.
    /// A client hands it to its home server with the live record; the
    /// server publishes it when the client's connection ends, so the record
    /// goes offline everywhere through the ordinary merge rules (no server
    /// can forge it, and anti-entropy carries it like any record).
    pub fn withdrawal(key: &SigningKey, body: &RecordBody, now_unix: u64) -> PeerRecord {
        let mut w = body.clone();
        w.seq = body.seq.saturating_add(1);
        w.expires_at = now_unix.saturating_sub(WITHDRAWAL_BACKDATE);
        w.private_addrs.clear();
        PeerRecord::sign(key, w)
    }

    /// Checks that `self` is a valid withdrawal of `live`: signed, the same
    /// peer and home, `seq` exactly one above, expired at `now_unix`.
    pub fn check_withdrawal(&self, live: &PeerRecord, now_unix: u64) -> Result<(), RecordError> {
        self.verify()?;
        let (w, l) = (&self.body, &live.body);
        if w.peer != l.peer || w.home_server != l.home_server || w.name != l.name {
            return Err(RecordError::Invalid(
                "the withdrawal must be for the same peer, name and home server",
            ));
        }
        if l.seq.checked_add(1) != Some(w.seq) {
            return Err(RecordError::Invalid(
                "the withdrawal's seq must be the record's seq + 1",
            ));
        }
        if w.expires_at > now_unix {
            return Err(RecordError::Invalid(
                "the withdrawal must already be expired",
            ));
        }
        // Kept MAX_TTL after its expiry, it must outlive the live record, or
        // anti-entropy from a server that missed it could bring that back.
        if w.expires_at.saturating_add(MAX_TTL) < l.expires_at {
            return Err(RecordError::Invalid(
                "the withdrawal must not expire more than an hour before the record",
            ));
        }
        Ok(())
    }

    /// Whether the record is still valid at `now_unix` (not expired).
    pub fn is_live(&self, now_unix: u64) -> bool {
        self.body.expires_at > now_unix
    }

    /// Checks every bound a record must meet, without the signature: the
    /// name, the size, and the private addresses (private ranges, the
    /// family of the public address, no repeats, not the public address).
    pub fn validate(&self) -> Result<(), RecordError> {
        let b = &self.body;
        check_name(&b.name)?;
        if b.private_addrs.len() > MAX_PRIVATE_ADDRS {
            return Err(RecordError::Invalid("too many private addresses"));
        }
        let loopback_ok = b.public_addr.is_some_and(|a| a.ip().is_loopback());
        for (i, a) in b.private_addrs.iter().enumerate() {
            if !is_private(a.ip(), loopback_ok) || a.port() == 0 {
                return Err(RecordError::Invalid(
                    "private addresses must be LAN addresses (RFC 1918, CGNAT, ULA, link-local)",
                ));
            }
            if b.public_addr.is_some_and(|p| p.is_ipv4() != a.is_ipv4()) {
                return Err(RecordError::Invalid(
                    "private addresses must be of the public address's family",
                ));
            }
            if b.private_addrs[..i].contains(a) || b.public_addr == Some(*a) {
                return Err(RecordError::Invalid("private addresses repeat"));
            }
        }
        if self.sig.len() != 64 {
            return Err(RecordError::BadSignature);
        }
        if postcard::experimental::serialized_size(b).unwrap_or(usize::MAX) > MAX_RECORD_BYTES {
            return Err(RecordError::Invalid("record over 512 bytes"));
        }
        Ok(())
    }

    /// Checks the bounds and the signature.
    pub fn verify(&self) -> Result<(), RecordError> {
        self.validate()?;
        let b = &self.body;
        let key =
            VerifyingKey::from_bytes(b.peer.as_bytes()).map_err(|_| RecordError::BadSignature)?;
        let sig = Signature::from_slice(&self.sig).map_err(|_| RecordError::BadSignature)?;
        key.verify(&signed_bytes(b), &sig)
            .map_err(|_| RecordError::BadSignature)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The signing key for a seed, and its peer id.
    pub(crate) fn key(seed: u8) -> (SigningKey, PeerId) {
        let k = SigningKey::from_bytes(&[seed; 32]);
        let id = PeerId(k.verifying_key().to_bytes());
        (k, id)
    }

    /// A record of `seed`'s key.
    pub(crate) fn rec(seed: u8, name: &str, home: PeerId, seq: u64, expires_at: u64) -> PeerRecord {
        let (k, id) = key(seed);
        PeerRecord::sign(
            &k,
            RecordBody {
                peer: id,
                name: name.into(),
                home_server: home,
                public_addr: Some("203.0.113.7:4000".parse().unwrap()),
                private_addrs: vec!["192.168.1.7:4000".parse().unwrap()],
                seq,
                expires_at,
                nat: NatMapping::Unknown,
            },
        )
    }

    fn with_private(addrs: &[&str], public: &str) -> Result<(), RecordError> {
        let (k, id) = key(1);
        let r = PeerRecord::sign(
            &k,
            RecordBody {
                peer: id,
                name: "a".into(),
                home_server: id,
                public_addr: Some(public.parse().unwrap()),
                private_addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
                seq: 1,
                expires_at: 10,
                nat: NatMapping::Unknown,
            },
        );
        r.verify()
    }

    #[test]
    fn private_addresses_must_be_lan_addresses_of_the_same_family_without_repeats() {
        let public = "203.0.113.7:4000";
        for ok in [
            "10.1.2.3:5",
            "172.16.0.1:5",
            "192.168.0.9:5",
            "100.64.0.1:5",
            "169.254.3.4:5",
        ] {
            assert_eq!(with_private(&[ok], public), Ok(()), "{ok}");
        }
        for bad in [
            "8.8.8.8:53",
            "203.0.113.9:5",
            "127.0.0.1:5",
            "0.0.0.0:5",
            "255.255.255.255:5",
            "224.0.0.1:5",
            "10.0.0.1:0",
        ] {
            assert!(with_private(&[bad], public).is_err(), "{bad}");
        }
        assert!(
            with_private(&["[fd00::1]:5"], public).is_err(),
            "another family"
        );
        assert_eq!(
            with_private(&["[fd00::1]:5", "[fe80::1]:6"], "[2001:db8::1]:4"),
            Ok(())
        );
        assert!(with_private(&["[2001:db8::2]:5"], "[2001:db8::1]:4").is_err());
        assert!(with_private(&["10.0.0.1:5", "10.0.0.1:5"], public).is_err());
        assert!(with_private(&["10.0.0.1:5", "10.0.0.2:5", "10.0.0.1:5"], public).is_err());
        // Loopback only for a peer seen on loopback (tests, one host).
        assert_eq!(with_private(&["127.0.0.1:5"], "127.0.0.1:9"), Ok(()));
        assert!(
            with_private(&["127.0.0.1:9"], "127.0.0.1:9").is_err(),
            "the public address again"
        );
        let many = [
            "10.0.0.1:1",
            "10.0.0.1:2",
            "10.0.0.1:3",
            "10.0.0.1:4",
            "10.0.0.1:5",
        ];
        assert!(with_private(&many, public).is_err());
    }

    #[test]
    fn a_withdrawal_is_checked_against_its_record() {
        let (alice, _) = key(1);
        let (mallory, _) = key(2);
        let (_, home) = key(9);
        let now = 1_700_000_000u64;
        let live = rec(1, "alice", home, 5, now + 600);
        let w = PeerRecord::withdrawal(&alice, &live.body, now);
        assert_eq!(w.check_withdrawal(&live, now), Ok(()));
        assert!(!w.is_live(now) && w.body.seq == 6);
        let mut far = live.body.clone();
        far.seq = 7;
        let far = PeerRecord::withdrawal(&alice, &far, now);
        assert!(far.check_withdrawal(&live, now).is_err());
        let mut later = w.body.clone();
        later.expires_at = now + 10;
        let later = PeerRecord::sign(&alice, later);
        assert!(later.check_withdrawal(&live, now).is_err());
        let mut early = w.body.clone();
        early.expires_at = 0;
        let early = PeerRecord::sign(&alice, early);
        assert!(
            early.check_withdrawal(&live, now).is_err(),
            "a tombstone forgotten before the record expires"
        );
        let forged = PeerRecord::withdrawal(&mallory, &live.body, now);
        assert_eq!(
            forged.check_withdrawal(&live, now),
            Err(RecordError::BadSignature)
        );
        let mut moved = live.body.clone();
        moved.home_server = live.body.peer;
        let moved = PeerRecord::withdrawal(&alice, &moved, now);
        assert!(moved.check_withdrawal(&live, now).is_err());
    }
}
