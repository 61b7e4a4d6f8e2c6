//! Identities: who a peer is, what a message is, and how to reach a peer.
//!
//! The core is generic over the peer identity type (`PI`), so the daemon can
//! use 32-byte ed25519 keys ([`PeerId`]) while the simulator uses compact
//! `u32` indices. Anything `Copy + Ord + Hash + Debug + serde` qualifies.

use bytes::Bytes;
use core::fmt;
use core::hash::Hash;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What the core needs of a peer identity. Implemented for every type with
/// these bounds; the wire encodes it with serde/postcard.
pub trait PeerIdentity:
    Copy + Ord + Hash + fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
}

impl<T> PeerIdentity for T where
    T: Copy + Ord + Hash + fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
}

/// A 32-byte peer identity: the daemon puts an ed25519 public key here.
/// Ordered as its bytes are (lexicographically).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerId(pub [u8; 32]);

impl Ord for PeerId {
    /// The bytes' lexicographic order, decided by the first eight as one
    /// big-endian integer when they differ (almost always, for keys):
    /// membership tables and trees of ordered maps keyed by 32-byte ids
    /// spent a tenth of a 2,000-server simulation in `memcmp`.
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        let head = |p: &PeerId| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&p.0[..8]);
            u64::from_be_bytes(b)
        };
        head(self)
            .cmp(&head(other))
            .then_with(|| self.0[8..].cmp(&other.0[8..]))
    }
}

impl PartialOrd for PeerId {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PeerId {
    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId(")?;
        for b in &self.0[..5] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// The identifier of one broadcast: `blake3(origin ‖ epoch ‖ seq)`.
///
/// It is unique per broadcast, never a hash of the payload alone, so two
/// equal payloads sent twice are two messages. `epoch` is drawn from the
/// node's RNG at start, so a restarted origin does not reuse old ids.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MessageId(pub [u8; 32]);

impl MessageId {
    /// Derives the id of broadcast number `seq` of `origin` in `epoch`.
    pub fn derive<PI: PeerIdentity>(origin: &PI, epoch: u64, seq: u64) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"chatd-overlay-msgid-v1");
        // Encoding a PeerIdentity to a Vec cannot fail: serde errors only
        // come from the output sink, and a Vec grows as needed.
        let origin_bytes = postcard::to_allocvec(origin).unwrap_or_default();
        hasher.update(&(origin_bytes.len() as u64).to_le_bytes());
        hasher.update(&origin_bytes);
        hasher.update(&epoch.to_le_bytes());
        hasher.update(&seq.to_le_bytes());
        MessageId(*hasher.finalize().as_bytes())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId(")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Opaque data a peer publishes about itself, typically its dialable
/// addresses. The core stores and forwards it; the driver interprets it.
///
/// One pointer wide, shared on clone, and nothing allocated when empty: a
/// node keeps it for dozens of peers (30 passive entries), a simulator for
/// a million nodes. On the wire it is a byte string, like [`Bytes`].
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerData(Option<Arc<Bytes>>);

impl PeerData {
    /// No data.
    pub const fn new() -> Self {
        PeerData(None)
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_deref().map_or(&[], |b| b)
    }

    /// The bytes as a (shared) [`Bytes`].
    pub fn to_bytes(&self) -> Bytes {
        self.0.as_deref().cloned().unwrap_or_default()
    }
}

impl From<Bytes> for PeerData {
    fn from(b: Bytes) -> Self {
        // Empty data is always `None`, so equality compares the bytes.
        PeerData((!b.is_empty()).then(|| Arc::new(b)))
    }
}

impl From<Vec<u8>> for PeerData {
    fn from(v: Vec<u8>) -> Self {
        Bytes::from(v).into()
    }
}

impl From<&'static [u8]> for PeerData {
    fn from(s: &'static [u8]) -> Self {
        Bytes::from_static(s).into()
    }
}

impl<const N: usize> From<&'static [u8; N]> for PeerData {
    fn from(s: &'static [u8; N]) -> Self {
        Bytes::from_static(s).into()
    }
}

impl core::ops::Deref for PeerData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for PeerData {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Debug for PeerData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_bytes(), f)
    }
}

impl Serialize for PeerData {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.as_bytes())
    }
}

impl<'de> Deserialize<'de> for PeerData {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Bytes::deserialize(d).map(PeerData::from)
    }
}

/// A peer identity with the data needed to reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo<PI> {
    /// Who.
    pub id: PI,
    /// How to reach them (opaque to the core; may be empty).
    pub data: PeerData,
}

impl<PI> PeerInfo<PI> {
    /// A peer with no address data (the simulator's case).
    pub fn bare(id: PI) -> Self {
        PeerInfo {
            id,
            data: PeerData::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_differ_by_origin_epoch_and_sequence() {
        let a = MessageId::derive(&1u32, 7, 0);
        assert_ne!(a, MessageId::derive(&1u32, 7, 1));
        assert_ne!(a, MessageId::derive(&2u32, 7, 0));
        assert_ne!(a, MessageId::derive(&1u32, 8, 0));
        assert_eq!(a, MessageId::derive(&1u32, 7, 0));
    }

    proptest::proptest! {
        /// The fast order is the bytes' order (sorted tables and the
        /// reference tree depend on it), equal prefixes included.
        #[test]
        fn peer_ids_order_as_their_bytes(a: [u8; 32], b: [u8; 32], cut in 0usize..32) {
            let mut c = b;
            c[..cut].copy_from_slice(&a[..cut]);
            for (x, y) in [(a, b), (a, c), (c, a), (a, a)] {
                proptest::prop_assert_eq!(PeerId(x).cmp(&PeerId(y)), x.cmp(&y));
            }
        }
    }
}
