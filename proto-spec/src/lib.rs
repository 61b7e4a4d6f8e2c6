//! # proto-spec — the chatd wire specification, executable
//!
//! `SPEC.md` in this crate is the normative description of everything
//! chatd puts on the wire: the overlay protocol (§1–§10) and, above it, the
//! client protocol, peer records, membership, broadcast payloads,
//! server-to-server messages, relay streams and chat frames (§11). This
//! library holds what makes it checkable:
//!
//! - [`valid_vectors`]: one canonical overlay message of every type (and
//!   the interesting variants), whose frames are frozen as hex in
//!   `vectors/valid.txt`;
//! - [`app`]: the same for every message above the overlay, built from
//!   fixed keys, frozen in `vectors/client-*.txt`, `payload.txt`,
//!   `server.txt`, `chat.txt`, `relay.txt` and `peer-data.txt`;
//! - `vectors/*malformed.txt`: hand-written bad frames, each with the
//!   error kind a decoder must report;
//! - [`parse_vector_file`]: the reader for every file.
//!
//! `tests/vectors.rs` decodes every valid vector with the real types and
//! re-encodes it byte for byte, and checks every malformed one. `cargo run
//! -p proto-spec --bin gen-vectors` rewrites the valid-vector files from
//! these lists; a diff in them is a wire-format change and must follow the
//! compatibility policy in SPEC.md.

pub mod app;

use overlay::wire::{
    Disconnect, ForwardJoin, Gossip, Graft, IHave, IHaveEntry, Join, Neighbor, NeighborReply,
    Priority, Prune, Shuffle, ShuffleReply,
};
use overlay::{Message, MessageId, PeerData, PeerId, PeerInfo};

/// A peer id made of one repeated byte (readable in hex dumps).
pub fn peer(b: u8) -> PeerId {
    PeerId([b; 32])
}

fn info(b: u8, data: &'static [u8]) -> PeerInfo<PeerId> {
    PeerInfo {
        id: peer(b),
        data: PeerData::from(data),
    }
}

/// The canonical valid messages, by vector name.
pub fn valid_vectors() -> Vec<(&'static str, Message<PeerId>)> {
    vec![
        (
            "join",
            Message::Join(Join {
                data: PeerData::from(b"127.0.0.1:7000"),
            }),
        ),
        (
            "join-no-data",
            Message::Join(Join {
                data: PeerData::new(),
            }),
        ),
        (
            "forward-join",
            Message::ForwardJoin(ForwardJoin {
                peer: info(0x11, b"a"),
                ttl: 6,
            }),
        ),
        (
            "neighbor-high",
            Message::Neighbor(Neighbor {
                priority: Priority::High,
                data: PeerData::from(b"x"),
            }),
        ),
        (
            "neighbor-low",
            Message::Neighbor(Neighbor {
                priority: Priority::Low,
                data: PeerData::new(),
            }),
        ),
        (
            "neighbor-reply-accepted",
            Message::NeighborReply(NeighborReply {
                accepted: true,
                data: PeerData::from(b"yz"),
            }),
        ),
        (
            "neighbor-reply-refused",
            Message::NeighborReply(NeighborReply {
                accepted: false,
                data: PeerData::new(),
            }),
        ),
        (
            "disconnect-alive",
            Message::Disconnect(Disconnect { alive: true }),
        ),
        (
            "disconnect-leaving",
            Message::Disconnect(Disconnect { alive: false }),
        ),
        (
            "shuffle",
            Message::Shuffle(Shuffle {
                origin: info(0x01, b"o"),
                ttl: 5,
                nodes: vec![info(0x02, b""), info(0x03, b"c")],
            }),
        ),
        (
            "shuffle-reply",
            Message::ShuffleReply(ShuffleReply {
                nodes: vec![info(0x04, b"d")],
            }),
        ),
        (
            "shuffle-reply-empty",
            Message::ShuffleReply(ShuffleReply { nodes: vec![] }),
        ),
        (
            "gossip",
            Message::Gossip(Gossip::new(
                MessageId([0xAA; 32]),
                peer(0x22),
                300,
                b"hello",
            )),
        ),
        (
            "ihave",
            Message::IHave(IHave {
                entries: vec![
                    IHaveEntry {
                        id: MessageId([0xB1; 32]),
                        hops: 0,
                    },
                    IHaveEntry {
                        id: MessageId([0xB2; 32]),
                        hops: 128,
                    },
                ],
            }),
        ),
        (
            "graft",
            Message::Graft(Graft {
                id: MessageId([0xCC; 32]),
                resend: true,
            }),
        ),
        (
            "graft-optimization",
            Message::Graft(Graft {
                id: MessageId([0xCD; 32]),
                resend: false,
            }),
        ),
        ("prune", Message::Prune(Prune { origin: peer(0x33) })),
    ]
}

/// One line of a vector file: a name, an optional expectation, and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vector {
    /// The vector's name.
    pub name: String,
    /// For malformed vectors: the expected error kind.
    pub expect: Option<String>,
    /// The frame (length prefix included).
    pub bytes: Vec<u8>,
}

/// Parses a vector file: `#` comments and blank lines are skipped; other
/// lines are `NAME HEX` (valid.txt) or `NAME EXPECTED-KIND HEX`
/// (malformed.txt). Hex may contain spaces after the fields, so long
/// frames can be grouped for reading.
pub fn parse_vector_file(text: &str, with_expectation: bool) -> Result<Vec<Vector>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let name = parts.next().ok_or(format!("line {}: no name", n + 1))?;
        let expect = if with_expectation {
            Some(
                parts
                    .next()
                    .ok_or(format!("line {}: no expected error", n + 1))?
                    .to_string(),
            )
        } else {
            None
        };
        let hex: String = parts.collect();
        let bytes = decode_hex(&hex).map_err(|e| format!("line {}: {e}", n + 1))?;
        out.push(Vector {
            name: name.to_string(),
            expect,
            bytes,
        });
    }
    Ok(out)
}

/// Lowercase hex of `bytes`.
pub fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| format!("bad hex at {i}: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        assert_eq!(
            decode_hex(&encode_hex(&[0, 1, 0xfe])).unwrap(),
            vec![0, 1, 0xfe]
        );
        assert!(decode_hex("abc").is_err());
        assert!(decode_hex("zz").is_err());
    }

    #[test]
    fn vector_lines_parse() {
        let v = parse_vector_file("# c\n\nfoo truncated 00 01\n", true).unwrap();
        assert_eq!(v[0].name, "foo");
        assert_eq!(v[0].expect.as_deref(), Some("truncated"));
        assert_eq!(v[0].bytes, vec![0, 1]);
    }
}
