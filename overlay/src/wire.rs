//! The wire format: one message enum, explicit append-only type codes,
//! postcard bodies, and u32 big-endian length-prefixed frames.
//!
//! ```text
//! frame   = length:u32be  body           (length = len(body), 1..=max_frame_size)
//! body    = type:u8  postcard(fields)    (type codes below; never reused)
//! ```
//!
//! Decoding is total: every input yields a message or a typed
//! [`DecodeError`], never a panic. The frame length is checked against
//! [`WireLimits::max_frame_size`] before any byte of the body is buffered;
//! decoding then allocates at most a small multiple of the frame size (a
//! sequence pre-allocates no more than the bytes present, capped by serde
//! at 1 MiB). Encodings must be canonical (shortest varints): a body whose
//! canonical re-encoding is shorter is rejected, so every accepted body has
//! exactly one byte form. `proto-spec/SPEC.md` is the normative
//! description and `proto-spec/vectors/` holds the test vectors.

use crate::config::WireLimits;
use crate::id::{MessageId, PeerData, PeerInfo};
use bytes::Bytes;
use core::fmt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Bytes a GOSSIP message needs beyond its payload, with generous room for
/// the origin identity: type, id, origin, hops and the payload length.
pub const MAX_GOSSIP_OVERHEAD: usize = 256;

/// No configuration may allow frames larger than this (16 MiB).
pub const ABSOLUTE_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Size of the frame length prefix.
pub const FRAME_PREFIX_LEN: usize = 4;

/// Message type codes. Append-only: a code, once published, keeps its
/// meaning forever; retired types leave their code unused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// HyParView: a new node asks a contact to let it in.
    Join = 1,
    /// HyParView: the random walk announcing a new node.
    ForwardJoin = 2,
    /// HyParView: a request to become active neighbors.
    Neighbor = 3,
    /// HyParView: the answer to NEIGHBOR or JOIN.
    NeighborReply = 4,
    /// HyParView: the sender drops the link (and maybe leaves for good).
    Disconnect = 5,
    /// HyParView: a random walk carrying a sample of the origin's views.
    Shuffle = 6,
    /// HyParView: the answer to SHUFFLE, sent straight to its origin.
    ShuffleReply = 7,
    /// Plumtree: a broadcast payload, eagerly pushed.
    Gossip = 8,
    /// Plumtree: lazy announcements of message ids.
    IHave = 9,
    /// Plumtree: "send me that message and push to me eagerly".
    Graft = 10,
    /// Plumtree: "stop pushing to me eagerly".
    Prune = 11,
}

impl MessageType {
    /// Every type, in code order.
    pub const ALL: [MessageType; 11] = [
        MessageType::Join,
        MessageType::ForwardJoin,
        MessageType::Neighbor,
        MessageType::NeighborReply,
        MessageType::Disconnect,
        MessageType::Shuffle,
        MessageType::ShuffleReply,
        MessageType::Gossip,
        MessageType::IHave,
        MessageType::Graft,
        MessageType::Prune,
    ];

    /// Number of message types.
    pub const COUNT: usize = Self::ALL.len();

    /// The type code on the wire.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The type for a code, if it is one we know.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.code() == code)
    }

    /// A stable snake_case name, used in metrics labels and logs.
    pub const fn name(self) -> &'static str {
        match self {
            MessageType::Join => "join",
            MessageType::ForwardJoin => "forward_join",
            MessageType::Neighbor => "neighbor",
            MessageType::NeighborReply => "neighbor_reply",
            MessageType::Disconnect => "disconnect",
            MessageType::Shuffle => "shuffle",
            MessageType::ShuffleReply => "shuffle_reply",
            MessageType::Gossip => "gossip",
            MessageType::IHave => "ihave",
            MessageType::Graft => "graft",
            MessageType::Prune => "prune",
        }
    }

    /// Index into per-type arrays (`code - 1`).
    pub const fn index(self) -> usize {
        self as usize - 1
    }
}

/// Priority of a NEIGHBOR request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Priority {
    /// The sender has no active neighbors: the receiver must accept,
    /// evicting a random neighbor if its view is full.
    High,
    /// The receiver accepts only if it has a free slot.
    Low,
}

/// JOIN (type 1): sent by a new or isolated node to a bootstrap contact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Join {
    /// How to reach the joining node.
    pub data: PeerData,
}

/// FORWARD_JOIN (type 2): the random walk that introduces a new node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardJoin<PI> {
    /// The node that joined.
    pub peer: PeerInfo<PI>,
    /// Remaining hops of the walk.
    pub ttl: u8,
}

/// NEIGHBOR (type 3): a request to become active neighbors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neighbor {
    /// High if the sender's active view is empty.
    pub priority: Priority,
    /// How to reach the sender.
    pub data: PeerData,
}

/// NEIGHBOR_REPLY (type 4): the answer to NEIGHBOR or JOIN.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeighborReply {
    /// True if the sender added the requester to its active view.
    pub accepted: bool,
    /// How to reach the sender.
    pub data: PeerData,
}

/// DISCONNECT (type 5): the sender removed the receiver from its active view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnect {
    /// True if the sender stays in the overlay (only trimming its view):
    /// the receiver keeps it in its passive view. False: the sender is
    /// leaving for good and is forgotten.
    pub alive: bool,
}

/// SHUFFLE (type 6): a random walk carrying a sample of the origin's views.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shuffle<PI> {
    /// The node that started the shuffle; the reply goes to it directly.
    pub origin: PeerInfo<PI>,
    /// Remaining hops of the walk.
    pub ttl: u8,
    /// Up to ka active + kp passive entries of the origin.
    pub nodes: Vec<PeerInfo<PI>>,
}

/// SHUFFLE_REPLY (type 7): entries from the walk's end node's passive view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShuffleReply<PI> {
    /// As many passive entries as the SHUFFLE carried, at most.
    pub nodes: Vec<PeerInfo<PI>>,
}

/// GOSSIP (type 8): a broadcast payload.
///
/// On the wire its fields are id, origin, hops, payload, in that order. In
/// memory the id and the payload share one buffer, `id ‖ payload`: a node
/// keeps a message it may have to resend as that one handle, and every
/// copy of a broadcast that is passed on without encoding (in the
/// simulator: every node's) shares the buffer.
#[derive(Clone, PartialEq, Eq)]
pub struct Gossip<PI> {
    /// The node that broadcast it.
    pub origin: PI,
    /// Hop distance of the *sender* from the origin (the origin sends 0;
    /// the receiver is at `hops + 1`).
    pub hops: u16,
    /// `id ‖ payload`; at least `MessageId` long.
    body: Bytes,
}

/// Bytes of a message id at the start of a GOSSIP body.
const ID_LEN: usize = 32;

impl<PI> Gossip<PI> {
    /// A GOSSIP of broadcast `id` (copies the payload after the id).
    pub fn new(id: MessageId, origin: PI, hops: u16, payload: &[u8]) -> Self {
        let mut body = Vec::with_capacity(ID_LEN + payload.len());
        body.extend_from_slice(&id.0);
        body.extend_from_slice(payload);
        Gossip {
            origin,
            hops,
            body: body.into(),
        }
    }

    /// A GOSSIP whose body, `id ‖ payload`, is already in one buffer
    /// (shared, not copied). `None` if `body` is shorter than an id.
    pub fn from_body(origin: PI, hops: u16, body: Bytes) -> Option<Self> {
        (body.len() >= ID_LEN).then_some(Gossip { origin, hops, body })
    }

    /// Unique id of the broadcast.
    pub fn id(&self) -> MessageId {
        body_id(&self.body)
    }

    /// The application payload (shares the body's buffer).
    pub fn payload(&self) -> Bytes {
        self.body.slice(ID_LEN..)
    }

    /// Length of the payload.
    pub fn payload_len(&self) -> usize {
        self.body.len() - ID_LEN
    }

    /// `id ‖ payload`.
    pub fn body(&self) -> &Bytes {
        &self.body
    }
}

/// The id at the start of a GOSSIP body (zeros if it is too short, which
/// `Gossip` never allows).
pub(crate) fn body_id(body: &[u8]) -> MessageId {
    let mut id = [0u8; ID_LEN];
    if let Some(b) = body.get(..ID_LEN) {
        id.copy_from_slice(b);
    }
    MessageId(id)
}

impl<PI: fmt::Debug> fmt::Debug for Gossip<PI> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gossip")
            .field("id", &self.id())
            .field("origin", &self.origin)
            .field("hops", &self.hops)
            .field("payload", &self.payload())
            .finish()
    }
}

/// GOSSIP's wire fields, for encoding.
#[derive(Serialize)]
#[serde(rename = "Gossip")]
struct GossipOut<'a, PI> {
    id: MessageId,
    origin: &'a PI,
    hops: u16,
    payload: Bytes,
}

/// GOSSIP's wire fields, for decoding.
#[derive(Deserialize)]
#[serde(rename = "Gossip")]
struct GossipIn<PI> {
    id: MessageId,
    origin: PI,
    hops: u16,
    payload: Bytes,
}

impl<PI: Serialize> Serialize for Gossip<PI> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        GossipOut {
            id: self.id(),
            origin: &self.origin,
            hops: self.hops,
            payload: self.payload(),
        }
        .serialize(s)
    }
}

impl<'de, PI: Deserialize<'de>> Deserialize<'de> for Gossip<PI> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let g = GossipIn::deserialize(d)?;
        Ok(Gossip::new(g.id, g.origin, g.hops, &g.payload))
    }
}

/// One lazy announcement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IHaveEntry {
    /// The message the sender has.
    pub id: MessageId,
    /// The sender's hop distance from the origin for it.
    pub hops: u16,
}

/// IHAVE (type 9): a batch of lazy announcements.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IHave {
    /// The announced messages.
    pub entries: Vec<IHaveEntry>,
}

/// GRAFT (type 10): "push this message's origin to me eagerly", and send
/// the message itself if `resend`. The receiver finds the origin from its
/// cache of `id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Graft {
    /// A message the receiver has (it announced it).
    pub id: MessageId,
    /// True to fetch a missing message; false for a tree optimisation,
    /// which only makes the link eager for the message's origin.
    pub resend: bool,
}

/// PRUNE (type 11): the receiver should push `origin`'s messages to the
/// sender lazily only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prune<PI> {
    /// Whose tree the link leaves.
    pub origin: PI,
}

/// Every overlay message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Message<PI> {
    Join(Join),
    ForwardJoin(ForwardJoin<PI>),
    Neighbor(Neighbor),
    NeighborReply(NeighborReply),
    Disconnect(Disconnect),
    Shuffle(Shuffle<PI>),
    ShuffleReply(ShuffleReply<PI>),
    Gossip(Gossip<PI>),
    IHave(IHave),
    Graft(Graft),
    Prune(Prune<PI>),
}

/// Why bytes could not be decoded into a [`Message`].
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// A frame with no bytes (length prefix 0).
    #[error("empty frame")]
    Empty,
    /// The frame ended inside a field.
    #[error("truncated frame: input ended inside a field")]
    Truncated,
    /// Bytes were left after a complete message.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// The type code is not one this version knows.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// A frame, payload or field exceeds its configured limit.
    #[error("{what} of {size} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Which limit: "frame", "payload", "peer data" or "shuffle entries".
        what: &'static str,
        /// The size found.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A field has a value its type does not allow.
    #[error("invalid field: {0}")]
    InvalidField(&'static str),
}

impl DecodeError {
    /// Every [`DecodeError::kind`], so a driver can export them all from
    /// the start.
    pub const KINDS: [&'static str; 6] = [
        "empty",
        "truncated",
        "trailing_bytes",
        "unknown_type",
        "too_large",
        "invalid_field",
    ];

    /// A stable snake_case name for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::Truncated => "truncated",
            DecodeError::TrailingBytes(_) => "trailing_bytes",
            DecodeError::UnknownType(_) => "unknown_type",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::InvalidField(_) => "invalid_field",
        }
    }
}

impl From<postcard::Error> for DecodeError {
    fn from(e: postcard::Error) -> Self {
        use postcard::Error as E;
        match e {
            E::DeserializeUnexpectedEnd => DecodeError::Truncated,
            E::DeserializeBadVarint => DecodeError::InvalidField("varint out of range"),
            E::DeserializeBadBool => DecodeError::InvalidField("bool not 0 or 1"),
            E::DeserializeBadOption => DecodeError::InvalidField("option tag not 0 or 1"),
            E::DeserializeBadEnum => DecodeError::InvalidField("unknown enum variant"),
            E::DeserializeBadUtf8 | E::DeserializeBadChar => DecodeError::InvalidField("utf-8"),
            _ => DecodeError::InvalidField("malformed encoding"),
        }
    }
}

/// Why a message could not be encoded.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum EncodeError {
    /// The encoded message, a payload or a field exceeds its limit.
    #[error("{what} of {size} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Which limit.
        what: &'static str,
        /// The size.
        size: usize,
        /// The limit.
        max: usize,
    },
}

impl<PI> Message<PI> {
    /// The message's type.
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::Join(_) => MessageType::Join,
            Message::ForwardJoin(_) => MessageType::ForwardJoin,
            Message::Neighbor(_) => MessageType::Neighbor,
            Message::NeighborReply(_) => MessageType::NeighborReply,
            Message::Disconnect(_) => MessageType::Disconnect,
            Message::Shuffle(_) => MessageType::Shuffle,
            Message::ShuffleReply(_) => MessageType::ShuffleReply,
            Message::Gossip(_) => MessageType::Gossip,
            Message::IHave(_) => MessageType::IHave,
            Message::Graft(_) => MessageType::Graft,
            Message::Prune(_) => MessageType::Prune,
        }
    }

    /// Checks the size limits that apply whatever the frame size: payload,
    /// peer data and shuffle entry counts.
    pub fn check_limits(&self, limits: &WireLimits) -> Result<(), (&'static str, usize, usize)> {
        let data = |d: &PeerData| at_most("peer data", d.len(), limits.max_peer_data_size);
        let nodes = |n: &[PeerInfo<PI>]| -> Result<(), (&'static str, usize, usize)> {
            at_most("shuffle entries", n.len(), limits.max_shuffle_entries)?;
            n.iter().try_for_each(|p| data(&p.data))
        };
        match self {
            Message::Join(m) => data(&m.data),
            Message::ForwardJoin(m) => data(&m.peer.data),
            Message::Neighbor(m) => data(&m.data),
            Message::NeighborReply(m) => data(&m.data),
            Message::Shuffle(m) => {
                data(&m.origin.data)?;
                nodes(&m.nodes)
            }
            Message::ShuffleReply(m) => nodes(&m.nodes),
            Message::Gossip(m) => at_most("payload", m.payload_len(), limits.max_payload_size),
            Message::IHave(m) => {
                at_most("ihave entries", m.entries.len(), limits.max_ihave_entries)
            }
            Message::Disconnect(_) | Message::Graft(_) | Message::Prune(_) => Ok(()),
        }
    }
}

fn at_most(
    what: &'static str,
    size: usize,
    max: usize,
) -> Result<(), (&'static str, usize, usize)> {
    if size > max {
        Err((what, size, max))
    } else {
        Ok(())
    }
}

impl<PI: Serialize> Message<PI> {
    /// Appends the body (type code + postcard fields) to `out`.
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        out.push(self.message_type().code());
        // Serializing into a Vec only fails if a Serialize impl fails, and
        // every field type here is infallible.
        let res = match self {
            Message::Join(m) => extend(m, out),
            Message::ForwardJoin(m) => extend(m, out),
            Message::Neighbor(m) => extend(m, out),
            Message::NeighborReply(m) => extend(m, out),
            Message::Disconnect(m) => extend(m, out),
            Message::Shuffle(m) => extend(m, out),
            Message::ShuffleReply(m) => extend(m, out),
            Message::Gossip(m) => extend(m, out),
            Message::IHave(m) => extend(m, out),
            Message::Graft(m) => extend(m, out),
            Message::Prune(m) => extend(m, out),
        };
        debug_assert!(res.is_ok(), "postcard encoding into a Vec failed");
    }

    /// The length of the body [`Message::encode_body`] writes, without
    /// writing it (a simulator counting bytes on the wire).
    pub fn body_len(&self) -> usize {
        let res = match self {
            Message::Join(m) => size(m),
            Message::ForwardJoin(m) => size(m),
            Message::Neighbor(m) => size(m),
            Message::NeighborReply(m) => size(m),
            Message::Disconnect(m) => size(m),
            Message::Shuffle(m) => size(m),
            Message::ShuffleReply(m) => size(m),
            Message::Gossip(m) => size(m),
            Message::IHave(m) => size(m),
            Message::Graft(m) => size(m),
            Message::Prune(m) => size(m),
        };
        debug_assert!(res.is_ok(), "postcard sizing failed");
        1 + res.unwrap_or(0)
    }

    /// The body as a new vector.
    pub fn to_body(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_body(&mut out);
        out
    }

    /// Encodes a complete frame (length prefix + body), checking every limit.
    pub fn to_frame(&self, limits: &WireLimits) -> Result<Vec<u8>, EncodeError> {
        self.check_limits(limits)
            .map_err(|(what, size, max)| EncodeError::TooLarge { what, size, max })?;
        let mut out = vec![0u8; FRAME_PREFIX_LEN];
        self.encode_body(&mut out);
        let len = out.len() - FRAME_PREFIX_LEN;
        if len > limits.max_frame_size {
            return Err(EncodeError::TooLarge {
                what: "frame",
                size: len,
                max: limits.max_frame_size,
            });
        }
        out[..FRAME_PREFIX_LEN].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(out)
    }
}

fn extend<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), postcard::Error> {
    let taken = core::mem::take(out);
    *out = postcard::to_extend(value, taken)?;
    Ok(())
}

/// The postcard encoding's length.
fn size<T: Serialize>(value: &T) -> Result<usize, postcard::Error> {
    postcard::serialize_with_flavor::<T, postcard::ser_flavors::Size, usize>(
        value,
        postcard::ser_flavors::Size::default(),
    )
}

fn body<T: DeserializeOwned + Serialize>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, rest) = postcard::take_from_bytes::<T>(bytes)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    // The canonical form is the unique shortest one; a longer body that
    // decoded must contain an over-long varint.
    if size(&value).ok() != Some(bytes.len()) {
        return Err(DecodeError::InvalidField("non-canonical varint"));
    }
    Ok(value)
}

impl<PI: DeserializeOwned + Serialize> Message<PI> {
    /// Decodes one body (type code + fields, without the length prefix),
    /// enforcing `limits`. Total: never panics, whatever the input.
    pub fn decode(bytes: &[u8], limits: &WireLimits) -> Result<Self, DecodeError> {
        let (&code, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if bytes.len() > limits.max_frame_size {
            return Err(DecodeError::TooLarge {
                what: "frame",
                size: bytes.len(),
                max: limits.max_frame_size,
            });
        }
        let ty = MessageType::from_code(code).ok_or(DecodeError::UnknownType(code))?;
        let msg = match ty {
            MessageType::Join => Message::Join(body(rest)?),
            MessageType::ForwardJoin => Message::ForwardJoin(body(rest)?),
            MessageType::Neighbor => Message::Neighbor(body(rest)?),
            MessageType::NeighborReply => Message::NeighborReply(body(rest)?),
            MessageType::Disconnect => Message::Disconnect(body(rest)?),
            MessageType::Shuffle => Message::Shuffle(body(rest)?),
            MessageType::ShuffleReply => Message::ShuffleReply(body(rest)?),
            MessageType::Gossip => Message::Gossip(body(rest)?),
            MessageType::IHave => Message::IHave(body(rest)?),
            MessageType::Graft => Message::Graft(body(rest)?),
            MessageType::Prune => Message::Prune(body(rest)?),
        };
        msg.check_limits(limits)
            .map_err(|(what, size, max)| DecodeError::TooLarge { what, size, max })?;
        Ok(msg)
    }
}

/// Splits the first complete frame off a stream buffer.
///
/// Returns `Ok(None)` if more bytes are needed, `Ok(Some((body, consumed)))`
/// for a complete frame, and an error as soon as the length prefix is zero
/// or exceeds `max_frame_size` — before the body is buffered, so a peer
/// cannot make the reader allocate more than the limit.
pub fn split_frame(
    buf: &[u8],
    max_frame_size: usize,
) -> Result<Option<(&[u8], usize)>, DecodeError> {
    let Some(prefix) = buf.first_chunk::<FRAME_PREFIX_LEN>() else {
        return Ok(None);
    };
    let len = frame_len(*prefix, max_frame_size)?;
    let end = FRAME_PREFIX_LEN + len;
    Ok(buf.get(FRAME_PREFIX_LEN..end).map(|body| (body, end)))
}

/// Reads and checks a length prefix: the body length that follows it.
pub fn frame_len(
    prefix: [u8; FRAME_PREFIX_LEN],
    max_frame_size: usize,
) -> Result<usize, DecodeError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len == 0 {
        Err(DecodeError::Empty)
    } else if len > max_frame_size {
        Err(DecodeError::TooLarge {
            what: "frame",
            size: len,
            max: max_frame_size,
        })
    } else {
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn limits() -> WireLimits {
        Config::lan().limits
    }

    #[test]
    fn type_codes_are_stable() {
        // Append-only: these numbers are part of the protocol.
        let codes: Vec<u8> = MessageType::ALL.iter().map(|t| t.code()).collect();
        assert_eq!(codes, (1..=11).collect::<Vec<u8>>());
        for t in MessageType::ALL {
            assert_eq!(MessageType::from_code(t.code()), Some(t));
            assert_eq!(MessageType::ALL[t.index()], t);
        }
        assert_eq!(MessageType::from_code(0), None);
        assert_eq!(MessageType::from_code(12), None);
    }

    #[test]
    fn gossip_keeps_id_and_payload_in_one_buffer() {
        let g: Gossip<u32> = Gossip::new(MessageId([7; 32]), 300, 2, b"hello");
        assert_eq!(
            (g.id(), &g.payload()[..]),
            (MessageId([7; 32]), &b"hello"[..])
        );
        assert_eq!((g.payload_len(), g.body().len()), (5, 37));
        let shared = Gossip::from_body(1u32, 0, g.body().clone()).unwrap();
        assert_eq!(shared.body().as_ptr(), g.body().as_ptr(), "not copied");
        assert_eq!(shared.id(), g.id());
        assert!(Gossip::from_body(1u32, 0, Bytes::from_static(&[0; 31])).is_none());
        // On the wire: id, origin, hops, payload, as separate fields.
        let mut want = vec![MessageType::Gossip.code()];
        want.extend_from_slice(&[7; 32]);
        want.extend_from_slice(&[0xac, 0x02, 2, 5]);
        want.extend_from_slice(b"hello");
        assert_eq!(Message::Gossip(g).to_body(), want);
    }

    #[test]
    fn frame_round_trip() {
        let msg: Message<u32> = Message::Gossip(Gossip::new(MessageId([7; 32]), 300, 2, b"hello"));
        let frame = msg.to_frame(&limits()).unwrap();
        let (body, used) = split_frame(&frame, 1 << 16).unwrap().unwrap();
        assert_eq!(used, frame.len());
        assert_eq!(Message::<u32>::decode(body, &limits()).unwrap(), msg);
        assert_eq!(
            split_frame(&frame[..frame.len() - 1], 1 << 16).unwrap(),
            None
        );
        assert_eq!(split_frame(&frame[..3], 1 << 16).unwrap(), None);
    }

    #[test]
    fn every_kind_is_listed() {
        let errors = [
            DecodeError::Empty,
            DecodeError::Truncated,
            DecodeError::TrailingBytes(1),
            DecodeError::UnknownType(0),
            DecodeError::TooLarge {
                what: "frame",
                size: 2,
                max: 1,
            },
            DecodeError::InvalidField("x"),
        ];
        let kinds: Vec<&str> = errors.iter().map(DecodeError::kind).collect();
        assert_eq!(kinds, DecodeError::KINDS);
    }

    #[test]
    fn typed_errors() {
        let l = limits();
        assert_eq!(Message::<u32>::decode(&[], &l), Err(DecodeError::Empty));
        assert_eq!(
            Message::<u32>::decode(&[0], &l),
            Err(DecodeError::UnknownType(0))
        );
        assert_eq!(
            Message::<u32>::decode(&[99], &l),
            Err(DecodeError::UnknownType(99))
        );
        assert_eq!(
            Message::<u32>::decode(&[5], &l),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            Message::<u32>::decode(&[5, 2], &l),
            Err(DecodeError::InvalidField("bool not 0 or 1"))
        );
        assert_eq!(
            Message::<u32>::decode(&[5, 1, 0], &l),
            Err(DecodeError::TrailingBytes(1))
        );
        assert_eq!(
            Message::<u32>::decode(&[11, 7], &l),
            Ok(Message::Prune(Prune { origin: 7 }))
        );
        assert!(matches!(
            split_frame(&[0xff, 0xff, 0xff, 0xff], l.max_frame_size),
            Err(DecodeError::TooLarge { what: "frame", .. })
        ));
        assert_eq!(split_frame(&[0, 0, 0, 0], 100), Err(DecodeError::Empty));
    }

    #[test]
    fn oversize_payload_is_refused_both_ways() {
        let l = limits();
        let msg: Message<u32> = Message::Gossip(Gossip::new(
            MessageId([1; 32]),
            1,
            0,
            &vec![0u8; l.max_payload_size + 1],
        ));
        assert!(matches!(
            msg.to_frame(&l),
            Err(EncodeError::TooLarge {
                what: "payload",
                ..
            })
        ));
        let body = msg.to_body();
        assert!(matches!(
            Message::<u32>::decode(&body, &l),
            Err(DecodeError::TooLarge {
                what: "payload",
                ..
            })
        ));
    }
}
