//! Test vectors for everything above the overlay (SPEC.md §11): the client
//! protocol, peer records, membership, broadcast payloads,
//! server-to-server messages, relay datagrams, chat frames and overlay
//! peer data.
//!
//! Every value is built from fixed inputs: keys are
//! `SigningKey::from_bytes(&[seed; 32])` (ed25519 signatures are
//! deterministic, so signed records come out the same on every run), times
//! are offsets from [`NOW_UNIX`]. `cargo run -p proto-spec --bin
//! gen-vectors` writes the vector files from these lists;
//! `tests/vectors.rs` decodes the files with the real types and compares
//! them with these lists.

use chatd::client::chat::Frame;
use chatd::client::room::Wire;
use ed25519_dalek::SigningKey;
use overlay::PeerId;
use rendezvous::latency::LatencyVector;
use rendezvous::members::{Msg, ServerRecord};
use rendezvous::proto::{ErrorCode, FriendRef, Notice, Payload, Refusal, Request, Response};
use rendezvous::record::{NatMapping, PeerRecord, RecordBody};
use rendezvous::{PeerTable, ServerMsg};
use std::net::SocketAddr;
use std::sync::Arc;

/// Key seed of the client "alice".
pub const ALICE: u8 = 1;
/// Key seed of the client "bob".
pub const BOB: u8 = 2;
/// Key seed of the client "carol".
pub const CAROL: u8 = 3;
/// Key seed of server A (alice's and carol's home).
pub const SERVER_A: u8 = 9;
/// Key seed of server B (bob's home).
pub const SERVER_B: u8 = 10;

/// The instant every vector is made at, Unix seconds (2023-11-14).
pub const NOW_UNIX: u64 = 1_700_000_000;
/// The same in Unix milliseconds.
pub const NOW_MS: u64 = NOW_UNIX * 1000;

/// The fixed signing key of `seed`.
pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// The peer id (public key) of `seed`'s key.
pub fn id(seed: u8) -> PeerId {
    PeerId(key(seed).verifying_key().to_bytes())
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a valid fixture address")
}

/// Alice's live record: IPv4, one LAN address, `Independent`, home A,
/// `seq` = [`NOW_MS`], valid for 10 minutes.
pub fn alice() -> PeerRecord {
    PeerRecord::sign(&key(ALICE), alice_body())
}

fn alice_body() -> RecordBody {
    RecordBody {
        peer: id(ALICE),
        name: "alice".into(),
        home_server: id(SERVER_A),
        public_addr: Some(addr("203.0.113.7:4000")),
        private_addrs: vec![addr("192.168.1.7:4000")],
        seq: NOW_MS,
        expires_at: NOW_UNIX + 600,
        nat: NatMapping::Independent,
    }
}

/// Alice's withdrawal, signed in advance ([`PeerRecord::withdrawal`] at
/// [`NOW_UNIX`]): `seq + 1`, no LAN addresses, expired 660 s ago.
pub fn alice_withdrawal() -> PeerRecord {
    PeerRecord::withdrawal(&key(ALICE), &alice_body(), NOW_UNIX)
}

/// Bob's live record: IPv6 with a ULA LAN address, `Dependent` (a
/// symmetric NAT), home B.
pub fn bob() -> PeerRecord {
    PeerRecord::sign(
        &key(BOB),
        RecordBody {
            peer: id(BOB),
            name: "bob".into(),
            home_server: id(SERVER_B),
            public_addr: Some(addr("[2001:db8::2]:5000")),
            private_addrs: vec![addr("[fd00::2]:5000")],
            seq: NOW_MS + 17,
            expires_at: NOW_UNIX + 600,
            nat: NatMapping::Dependent,
        },
    )
}

/// Carol's live record: no public address, no LAN address, NAT not
/// measured, a small counter as `seq` (any `seq` below the clock bound is
/// allowed).
pub fn carol() -> PeerRecord {
    PeerRecord::sign(
        &key(CAROL),
        RecordBody {
            peer: id(CAROL),
            name: "carol".into(),
            home_server: id(SERVER_A),
            public_addr: None,
            private_addrs: vec![],
            seq: 42,
            expires_at: NOW_UNIX + 300,
            nat: NatMapping::Unknown,
        },
    )
}

/// Server A's membership record.
pub fn server_a() -> ServerRecord {
    ServerRecord {
        id: id(SERVER_A),
        addrs: vec![addr("198.51.100.1:7000"), addr("[2001:db8::1]:7000")],
        clients: 3,
        capacity: 10_000,
        version: NOW_MS,
    }
}

/// Server B's membership record.
pub fn server_b() -> ServerRecord {
    ServerRecord {
        id: id(SERVER_B),
        addrs: vec![addr("198.51.100.2:7000")],
        clients: 0,
        capacity: 500,
        version: NOW_MS + 5_000,
    }
}

/// A peer table holding alice and bob (for the digest and version pages).
pub fn table() -> PeerTable {
    let mut t = PeerTable::new();
    for r in [alice(), bob()] {
        t.insert(Arc::new(r), overlay::Time::ZERO, NOW_UNIX);
    }
    t
}

/// Every error code: its number on the wire and its label (SPEC §11.6).
/// Append-only; `tests/vectors.rs` checks it against `ErrorCode::ALL`.
pub const ERROR_CODES: &[(u16, &str)] = &[
    (1, "malformed"),
    (2, "rate_limited"),
    (3, "not_own_record"),
    (4, "wrong_home"),
    (5, "wrong_address"),
    (6, "stale"),
    (7, "invalid"),
    (8, "bad_signature"),
    (9, "quota_address"),
    (10, "quota_new_ids"),
    (11, "server_full"),
    (12, "table_full"),
    (13, "not_registered"),
    (14, "too_many_waits"),
    (15, "relay_full"),
    (16, "relay_limit"),
    (17, "relay_not_met"),
    (18, "relay_no_friend"),
    (19, "relay_self"),
    (20, "not_replicated"),
    (21, "too_many_connections"),
    (22, "wrong_stream"),
    (23, "replaced"),
    (24, "mailbox_full"),
    (25, "mail_quota"),
    (26, "mail_storage_full"),
];

/// Client requests (u32-framed, one per bidirectional stream).
pub fn request_vectors() -> Vec<(&'static str, Request)> {
    vec![
        ("who-am-i", Request::WhoAmI),
        ("register-withdrawal", Request::Register(alice_withdrawal())),
        ("lookup", Request::Lookup(id(BOB))),
        ("lookup-name", Request::LookupName("bob".into())),
        ("servers", Request::Servers),
        ("meet-id", Request::Meet(FriendRef::Id(id(BOB)))),
        ("meet-name", Request::Meet(FriendRef::Name("bob".into()))),
        ("relay", Request::Relay(id(BOB))),
        (
            "register-live",
            Request::RegisterLive {
                record: alice(),
                withdrawal: alice_withdrawal(),
            },
        ),
        ("find-name", Request::FindName("alice".into())),
        ("latency", Request::Latency(latency())),
        ("rearrange", Request::Rearrange(id(BOB))),
        ("deposit", Request::Deposit(letter_to_bob())),
        ("collect", Request::Collect),
        (
            "delivered",
            Request::Delivered(vec![letter_to_bob().id, [0x22; 16]]),
        ),
    ]
}

/// A client's RTTs to the two example servers.
fn latency() -> LatencyVector {
    LatencyVector::new(vec![(id(SERVER_A), 20_000), (id(SERVER_B), 41_500)])
        .expect("a valid report")
}

/// The retry hint and words of the refusal vector for `code`.
fn refusal_for(n: u16, label: &str) -> Refusal {
    let retry_after_ms = match label {
        "rate_limited" => 1_500,
        "quota_new_ids" => 60_000,
        "not_replicated" | "mail_storage_full" => 1_000,
        _ => 0,
    };
    Refusal {
        code: ErrorCode::from(n),
        retry_after_ms,
        detail: label.replace('_', " "),
    }
}

/// Server responses (u32-framed, on the request's stream).
pub fn response_vectors() -> Vec<(String, Response)> {
    let mut v: Vec<(String, Response)> = vec![
        (
            "you-are-v4".into(),
            Response::YouAre(addr("203.0.113.7:4000")),
        ),
        (
            "you-are-v6".into(),
            Response::YouAre(addr("[2001:db8::2]:5000")),
        ),
        ("registered".into(), Response::Registered),
        ("record-some".into(), Response::Record(Some(bob()))),
        ("record-none".into(), Response::Record(None)),
        (
            "servers".into(),
            Response::Servers(vec![server_b(), server_a()]),
        ),
        ("servers-empty".into(), Response::Servers(vec![])),
    ];
    for &(n, label) in ERROR_CODES {
        v.push((
            format!("error-{}", label.replace('_', "-")),
            Response::Error(refusal_for(n, label)),
        ));
    }
    v.extend([
        (
            "error-unknown-code-999".into(),
            Response::Error(Refusal {
                code: ErrorCode::Other(999),
                retry_after_ms: 0,
                detail: "from a newer server".into(),
            }),
        ),
        (
            "friend".into(),
            Response::Friend {
                record: bob(),
                start_in_ms: 250,
            },
        ),
        ("waiting".into(), Response::Waiting),
        ("relaying".into(), Response::Relaying),
        ("records".into(), Response::Records(vec![alice(), carol()])),
        ("records-empty".into(), Response::Records(vec![])),
        ("noted".into(), Response::Noted),
        ("deposited".into(), Response::Deposited { copies: 2 }),
        (
            "letters".into(),
            Response::Letters {
                letters: vec![letter_to_bob()],
                more: true,
            },
        ),
        (
            "letters-none".into(),
            Response::Letters {
                letters: vec![],
                more: false,
            },
        ),
    ]);
    v
}

/// Server-to-client notices (u32-framed, one per unidirectional stream
/// the server opens).
pub fn notice_vectors() -> Vec<(&'static str, Notice)> {
    vec![
        (
            "friend",
            Notice::Friend {
                record: alice(),
                start_in_ms: 180,
            },
        ),
        (
            "friend-start-now",
            Notice::Friend {
                record: carol(),
                start_in_ms: 0,
            },
        ),
        (
            "relay",
            Notice::Relay {
                friend: id(BOB),
                relays: vec![(server_a().id, 40_000), (id(SERVER_B), 61_500)],
            },
        ),
        (
            "relay-fallback",
            Notice::Relay {
                friend: id(BOB),
                relays: vec![],
            },
        ),
        ("mail", Notice::Mail),
    ]
}

/// Overlay broadcast payloads (the `payload` of a GOSSIP; no length
/// prefix of their own).
pub fn payload_vectors() -> Vec<(&'static str, Payload)> {
    let a = server_a();
    vec![
        (
            "member-announce",
            Payload::Member(Msg::announce(&key(SERVER_A), a.clone())),
        ),
        (
            "member-leave",
            Payload::Member(Msg::leave(&key(SERVER_A), a.id, a.version + 1)),
        ),
        (
            "member-suspect",
            Payload::Member(Msg::suspect(&key(SERVER_B), a.id, a.version, id(SERVER_B))),
        ),
        ("record", Payload::Record(alice().into())),
        (
            "record-withdrawal",
            Payload::Record(alice_withdrawal().into()),
        ),
        ("record-no-public-address", Payload::Record(carol().into())),
    ]
}

/// Server-to-server messages (u32-framed, on a bidirectional stream of
/// the overlay connection).
pub fn server_vectors() -> Vec<(&'static str, ServerMsg)> {
    let t = table();
    let bucket = rendezvous::table::bucket_of(&id(ALICE));
    let versions = t.versions(bucket, None, 1024);
    vec![
        ("digest", ServerMsg::Digest(t.digest().to_vec())),
        (
            "versions-one-page",
            ServerMsg::Versions {
                bucket,
                after: None,
                upto: None,
                versions: versions.clone(),
            },
        ),
        (
            "versions-first-of-several-pages",
            ServerMsg::Versions {
                bucket,
                after: None,
                upto: Some(id(ALICE)),
                versions,
            },
        ),
        (
            "versions-last-page-empty",
            ServerMsg::Versions {
                bucket,
                after: Some(id(ALICE)),
                upto: None,
                versions: vec![],
            },
        ),
        ("want", ServerMsg::Want(vec![id(ALICE), id(BOB)])),
        ("records", ServerMsg::Records(vec![alice(), bob()])),
        (
            "store",
            ServerMsg::Store {
                token: 7,
                record: alice(),
            },
        ),
        ("stored", ServerMsg::Stored { token: 7 }),
        (
            "rendezvous",
            ServerMsg::Rendezvous {
                to: id(BOB),
                from: alice(),
                start_at_ms: NOW_MS + 60,
            },
        ),
        (
            "meeting",
            ServerMsg::Meeting {
                to: id(BOB),
                from: alice(),
                start_at_ms: NOW_MS + 60,
                latency: Some(latency()),
            },
        ),
        (
            "meeting-no-latency",
            ServerMsg::Meeting {
                to: id(BOB),
                from: alice(),
                start_at_ms: NOW_MS + 60,
                latency: None,
            },
        ),
        (
            "relay-choice",
            ServerMsg::RelayChoice {
                a: id(ALICE),
                b: id(BOB),
                relays: vec![(server_a().id, 40_000)],
            },
        ),
        (
            "rearrange",
            ServerMsg::Rearrange {
                to: id(BOB),
                from: id(ALICE),
                latency: latency(),
            },
        ),
        (
            "keep",
            ServerMsg::Keep {
                token: 8,
                letter: letter_to_bob(),
                sender: id(ALICE),
                source: "203.0.113.7".parse().expect("an address"),
            },
        ),
        (
            "kept",
            ServerMsg::Kept {
                token: 8,
                refused: None,
            },
        ),
        (
            "kept-refused",
            ServerMsg::Kept {
                token: 8,
                refused: Some(ErrorCode::MailboxFull),
            },
        ),
        (
            "fetch",
            ServerMsg::Fetch {
                token: 9,
                to: id(BOB),
            },
        ),
        (
            "held",
            ServerMsg::Held {
                token: 9,
                letters: vec![letter_to_bob()],
                more: false,
            },
        ),
        (
            "discard",
            ServerMsg::Discard {
                to: id(BOB),
                ids: vec![letter_to_bob().id],
            },
        ),
        ("mail-for", ServerMsg::MailFor { to: id(BOB) }),
    ]
}

/// One letter vector (SPEC §12): who seals what to whom.
pub struct LetterVector {
    /// Its name in `letter.txt`.
    pub name: &'static str,
    /// The sender's key seed.
    pub from: u8,
    /// The recipient's key seed.
    pub to: u8,
    /// The letter's id.
    pub id: rendezvous::LetterId,
    /// The letter's own X25519 secret.
    pub ephemeral: [u8; 32],
    /// What it says.
    pub body: chatd::client::letter::Body,
}

/// Letters: alice's line to bob, bob's receipt for it.
pub fn letter_vectors() -> Vec<LetterVector> {
    use chatd::client::letter::Body;
    vec![
        LetterVector {
            name: "alice-to-bob",
            from: ALICE,
            to: BOB,
            id: [0x11; 16],
            ephemeral: [5; 32],
            body: Body::Text {
                name: "alice".into(),
                sent_ms: NOW_MS,
                seq: 0,
                text: "call me when you are back".into(),
            },
        },
        LetterVector {
            name: "bob-receipt-to-alice",
            from: BOB,
            to: ALICE,
            id: [0x33; 16],
            ephemeral: [6; 32],
            body: Body::Receipt {
                ids: vec![[0x11; 16]],
            },
        },
    ]
}

/// The first letter vector, sealed, as a server carries it.
pub fn letter_to_bob() -> rendezvous::Letter {
    let v = &letter_vectors()[0];
    rendezvous::Letter {
        to: id(v.to),
        id: v.id,
        sealed: seal_letter(v),
    }
}

/// Seals a letter vector.
pub fn seal_letter(v: &LetterVector) -> Vec<u8> {
    chatd::client::letter::seal(&key(v.from), &id(v.to), &v.id, &v.body, v.ephemeral)
        .expect("the fixture seals")
}

/// Room-link frames (SPEC §11.10): alice's room "team" with bob.
pub fn room_vectors() -> Vec<(&'static str, Wire)> {
    let (a, b) = (id(ALICE), id(BOB));
    let text = |n: u64, t: &str| room::Body::Text {
        id: room::MsgId {
            sender: a,
            run: 0x0123_4567_89ab_cdef,
            n,
        },
        text: t.into(),
    };
    vec![
        ("hello", Wire::Hello),
        (
            "room",
            Wire::Room {
                room: "team".into(),
            },
        ),
        (
            "append",
            Wire::Msg(room::Msg::Append(room::Append {
                epoch: 2,
                prev: (1, 4),
                fresh: false,
                entries: vec![
                    room::Entry {
                        epoch: 2,
                        body: room::Body::Join(b),
                    },
                    room::Entry {
                        epoch: 2,
                        body: text(1, "hello, room"),
                    },
                ],
                commit: 5,
                candidates: vec![a, b],
            })),
        ),
        (
            "appended",
            Wire::Msg(room::Msg::Appended {
                epoch: 2,
                ok: true,
                matched: 6,
            }),
        ),
        (
            "post",
            Wire::Msg(room::Msg::Post {
                id: room::MsgId {
                    sender: a,
                    run: 0x0123_4567_89ab_cdef,
                    n: 2,
                },
                text: "grüße 👋".into(),
            }),
        ),
        ("delays", Wire::Msg(room::Msg::Delays(vec![(b, 12_500)]))),
        (
            "hello-room",
            Wire::Msg(room::Msg::Hello {
                epoch: 0,
                last: (0, 0),
            }),
        ),
        (
            "request-vote",
            Wire::Msg(room::Msg::RequestVote {
                pre: true,
                epoch: 3,
                last: (2, 6),
                commit: 5,
            }),
        ),
        (
            "vote",
            Wire::Msg(room::Msg::Vote {
                pre: false,
                epoch: 3,
                granted: true,
                last: (2, 6),
                tail: vec![room::Entry {
                    epoch: 2,
                    body: text(1, "hello, room"),
                }],
            }),
        ),
        ("ineligible", Wire::Msg(room::Msg::Ineligible { epoch: 3 })),
    ]
}

/// Chat frames (u32-framed, on the chat stream between two peers).
pub fn chat_vectors() -> Vec<(&'static str, Frame)> {
    vec![
        (
            "msg",
            Frame::Msg {
                epoch: 0x0123_4567_89ab_cdef,
                seq: 1,
                text: "hello, bob".into(),
            },
        ),
        (
            "msg-unicode",
            Frame::Msg {
                epoch: 0x0123_4567_89ab_cdef,
                seq: 300,
                text: "grüße 👋".into(),
            },
        ),
        (
            "ack",
            Frame::Ack {
                epoch: 0x0123_4567_89ab_cdef,
                seq: 300,
            },
        ),
        ("hello", Frame::Hello),
        ("bye", Frame::Bye),
        (
            "moving",
            Frame::Moving {
                relay: overlay::PeerId([0x11; 32]),
            },
        ),
    ]
}

/// Relay datagrams, as carried on a relay stream after `Relaying`. The
/// empty one is the early-frame marker: the datagram after it is an early
/// frame ([`early_vectors`]).
pub fn relay_vectors() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("early-marker", vec![]),
        ("three-bytes", vec![0x40, 0x01, 0x02]),
        ("twelve-bytes", b"relayed data".to_vec()),
    ]
}

/// One early frame's inputs (SPEC §11.8): sealed by the sender's key with
/// `ephemeral` for `meeting`, it opens with the receiver's to `frame`.
pub struct EarlyVector {
    /// Its name in `early.txt`.
    pub name: &'static str,
    /// The sender's key seed.
    pub from: u8,
    /// The receiver's key seed.
    pub to: u8,
    /// Who, to whom, both record seqs.
    pub meeting: chatd::client::early::Meeting,
    /// The frame's own X25519 secret.
    pub ephemeral: [u8; 32],
    /// The message.
    pub frame: Frame,
}

/// Early frames: alice to bob, bob to alice.
pub fn early_vectors() -> Vec<EarlyVector> {
    let meeting = |from: u8, to: u8, from_seq: u64, to_seq: u64| chatd::client::early::Meeting {
        from: id(from),
        to: id(to),
        from_seq,
        to_seq,
    };
    vec![
        EarlyVector {
            name: "alice-to-bob",
            from: ALICE,
            to: BOB,
            meeting: meeting(ALICE, BOB, NOW_MS, NOW_MS + 2),
            ephemeral: [7; 32],
            frame: Frame::Msg {
                epoch: 0x0123_4567_89ab_cdef,
                seq: 1,
                text: "hello bob".into(),
            },
        },
        EarlyVector {
            name: "bob-to-alice",
            from: BOB,
            to: ALICE,
            meeting: meeting(BOB, ALICE, NOW_MS + 2, NOW_MS),
            ephemeral: [8; 32],
            frame: Frame::Msg {
                epoch: 0x0fed_cba9_8765_4321,
                seq: 2,
                text: "héllo ✓".into(),
            },
        },
    ]
}

/// Overlay peer data (`data` of JOIN, NEIGHBOR, NEIGHBOR_REPLY and
/// `PeerInfo`): a server's dialable addresses.
pub fn peer_data_vectors() -> Vec<(&'static str, Vec<SocketAddr>)> {
    vec![
        ("one-v4", vec![addr("198.51.100.1:7000")]),
        (
            "v4-and-v6",
            vec![addr("198.51.100.1:7000"), addr("[2001:db8::1]:7000")],
        ),
        ("none", vec![]),
    ]
}

/// A relay datagram as framed on the stream: u16 big-endian length, then
/// the bytes (SPEC §11.8).
pub fn relay_frame(datagram: &[u8]) -> Vec<u8> {
    let len = u16::try_from(datagram.len()).expect("a relay datagram is at most 65,535 bytes");
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(datagram);
    out
}

/// Why a frame could not be split off a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the prefix or the declared length: a reader waits.
    Incomplete,
    /// The declared length is over the limit: a reader fails at once.
    TooLarge,
}

impl FrameError {
    /// The vector-file kind.
    pub fn kind(self) -> &'static str {
        match self {
            FrameError::Incomplete => "incomplete",
            FrameError::TooLarge => "too_large",
        }
    }
}

/// Splits one u32-framed message (SPEC §11.2) off `bytes`: its body and
/// the bytes used. What `chatd::net::framing::read_frame` does on a
/// stream: the length is checked against `max` before any body byte.
pub fn split_frame(bytes: &[u8], max: usize) -> Result<(&[u8], usize), FrameError> {
    let Some((prefix, rest)) = bytes.split_first_chunk::<4>() else {
        return Err(FrameError::Incomplete);
    };
    let len = u32::from_be_bytes(*prefix) as usize;
    if len > max {
        return Err(FrameError::TooLarge);
    }
    let body = rest.get(..len).ok_or(FrameError::Incomplete)?;
    Ok((body, 4 + len))
}

/// Splits one relay datagram off `bytes`: the datagram and the bytes used.
pub fn split_relay_frame(bytes: &[u8]) -> Result<(&[u8], usize), FrameError> {
    let Some((prefix, rest)) = bytes.split_first_chunk::<2>() else {
        return Err(FrameError::Incomplete);
    };
    let len = usize::from(u16::from_be_bytes(*prefix));
    let d = rest.get(..len).ok_or(FrameError::Incomplete)?;
    Ok((d, 2 + len))
}

/// The vector-file kind of a postcard decoding error (SPEC §11.2).
pub fn postcard_kind(e: &postcard::Error) -> &'static str {
    use postcard::Error as E;
    match e {
        E::DeserializeUnexpectedEnd => "truncated",
        E::DeserializeBadVarint => "bad_varint",
        E::DeserializeBadBool => "bad_bool",
        E::DeserializeBadOption => "bad_option",
        E::DeserializeBadUtf8 => "bad_utf8",
        E::DeserializeBadChar => "bad_char",
        E::DeserializeBadEnum => "bad_enum",
        // What serde-derived enums report for a variant index out of range.
        E::SerdeDeCustom => "bad_variant",
        _ => "other",
    }
}

/// The frame of `msg` as chatd writes it (`chatd::net::framing::encode`:
/// u32 big-endian length, postcard body).
pub fn frame<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    chatd::net::framing::encode(msg).expect("fixture messages encode")
}

/// One generated vector file: its name under `vectors/`, its header
/// comment, and its `NAME HEX` lines.
pub struct VectorFile {
    /// File name under `vectors/`.
    pub name: &'static str,
    /// The header comment (without `# `).
    pub header: &'static [&'static str],
    /// The vectors, by name.
    pub vectors: Vec<(String, Vec<u8>)>,
}

impl VectorFile {
    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for h in self.header {
            out.push_str(if h.is_empty() { "#" } else { "# " });
            out.push_str(h);
            out.push('\n');
        }
        for (name, bytes) in &self.vectors {
            out.push_str(name);
            out.push(' ');
            out.push_str(&crate::encode_hex(bytes));
            out.push('\n');
        }
        out
    }
}

fn named<T>(v: Vec<(&'static str, T)>) -> Vec<(String, T)> {
    v.into_iter().map(|(n, m)| (n.to_string(), m)).collect()
}

fn framed<T: serde::Serialize>(v: Vec<(String, T)>) -> Vec<(String, Vec<u8>)> {
    v.into_iter().map(|(n, m)| (n, frame(&m))).collect()
}

const GENERATED: &str =
    "Generated by `cargo run -p proto-spec --bin gen-vectors`; see SPEC.md §10.";
const KEYS: &str =
    "Keys: SigningKey::from_bytes(&[seed; 32]); alice 1, bob 2, carol 3, server A 9, server B 10.";

/// Every valid-vector file above the overlay, as the generator writes it.
pub fn vector_files() -> Vec<VectorFile> {
    vec![
        VectorFile {
            name: "client-request.txt",
            header: &[
                "Client requests (rendezvous::Request): NAME HEX, each a complete frame:",
                "u32 big-endian length (at most 2048, MAX_REQUEST), postcard body. SPEC §11.6.",
                KEYS,
                GENERATED,
            ],
            vectors: framed(named(request_vectors())),
        },
        VectorFile {
            name: "client-response.txt",
            header: &[
                "Server responses (rendezvous::Response): NAME HEX, each a complete frame:",
                "u32 big-endian length (at most 65536, MAX_FRAME), postcard body. SPEC §11.6.",
                KEYS,
                GENERATED,
            ],
            vectors: framed(response_vectors()),
        },
        VectorFile {
            name: "client-notice.txt",
            header: &[
                "Server notices (rendezvous::Notice): NAME HEX, each a complete frame:",
                "u32 big-endian length (at most 65536, MAX_FRAME), postcard body. SPEC §11.6.",
                KEYS,
                GENERATED,
            ],
            vectors: framed(named(notice_vectors())),
        },
        VectorFile {
            name: "payload.txt",
            header: &[
                "Overlay broadcast payloads (rendezvous::Payload): NAME HEX, the GOSSIP payload",
                "bytes (no length prefix of their own): tag byte, postcard body. SPEC §11.4.",
                KEYS,
                GENERATED,
            ],
            vectors: payload_vectors()
                .into_iter()
                .map(|(n, p)| (n.to_string(), p.encode().to_vec()))
                .collect(),
        },
        VectorFile {
            name: "server.txt",
            header: &[
                "Server-to-server messages (rendezvous::ServerMsg): NAME HEX, each a complete frame:",
                "u32 big-endian length (at most 262144, MAX_SERVER_FRAME), postcard body. SPEC §11.7.",
                KEYS,
                GENERATED,
            ],
            vectors: framed(named(server_vectors())),
        },
        VectorFile {
            name: "chat.txt",
            header: &[
                "Chat frames (chatd::client::chat::Frame): NAME HEX, each a complete frame:",
                "u32 big-endian length (at most 65536, MAX_FRAME), postcard body. SPEC §11.9.",
                GENERATED,
            ],
            vectors: framed(named(chat_vectors())),
        },
        VectorFile {
            name: "room.txt",
            header: &[
                "Room-link frames (chatd::client::room::Wire, room::Msg inside): NAME HEX, each",
                "a complete frame: u32 big-endian length (at most 9437184, ROOM_FRAME_MAX),",
                "postcard body. SPEC §11.10.",
                KEYS,
                GENERATED,
            ],
            vectors: framed(named(room_vectors())),
        },
        VectorFile {
            name: "relay.txt",
            header: &[
                "Relay datagrams as carried on a relay stream after Response::Relaying:",
                "NAME HEX, u16 big-endian length then the datagram. SPEC §11.8.",
                GENERATED,
            ],
            vectors: relay_vectors()
                .into_iter()
                .map(|(n, d)| (n.to_string(), relay_frame(&d)))
                .collect(),
        },
        VectorFile {
            name: "early.txt",
            header: &[
                "Early frames (chatd::client::early): NAME HEX, the datagram after an empty",
                "one on a relay stream. alice-to-bob: alice's key seals Frame::Msg { epoch",
                "0x0123456789abcdef, seq 1, text \"hello bob\" } to bob, record seqs",
                "1700000000000 (alice's) and 1700000000002 (bob's), ephemeral [7; 32];",
                "bob-to-alice: bob's key seals { epoch 0x0fedcba987654321, seq 2, text",
                "\"h\u{e9}llo \u{2713}\" } to alice, seqs 1700000000002 and 1700000000000,",
                "ephemeral [8; 32]. SPEC §11.8.",
                KEYS,
                GENERATED,
            ],
            vectors: early_vectors()
                .into_iter()
                .map(|v| {
                    let sealed =
                        chatd::client::early::seal(&key(v.from), &v.meeting, &v.frame, v.ephemeral)
                            .expect("the fixture seals");
                    (v.name.to_string(), sealed)
                })
                .collect(),
        },
        VectorFile {
            name: "letter.txt",
            header: &[
                "Letters (chatd::client::letter, SPEC §12): NAME HEX, the sealed bytes a",
                "Letter carries. alice-to-bob: alice's key seals Body::Text { name \"alice\",",
                "sent_ms 1700000000000, seq 0, text \"call me when you are back\" } to bob as",
                "letter id [0x11; 16], ephemeral [5; 32]; bob-receipt-to-alice: bob's key seals",
                "Body::Receipt { ids [[0x11; 16]] } to alice as id [0x33; 16], ephemeral [6; 32].",
                KEYS,
                GENERATED,
            ],
            vectors: letter_vectors()
                .iter()
                .map(|v| (v.name.to_string(), seal_letter(v)))
                .collect(),
        },
        VectorFile {
            name: "peer-data.txt",
            header: &[
                "Overlay peer data as chatd fills it (the `data` of JOIN, NEIGHBOR,",
                "NEIGHBOR_REPLY and PeerInfo): NAME HEX, postcard Vec<SocketAddr>. SPEC §11.1.",
                GENERATED,
            ],
            vectors: peer_data_vectors()
                .into_iter()
                .map(|(n, a)| {
                    let bytes = postcard::to_allocvec(&a).expect("addresses encode");
                    (n.to_string(), bytes)
                })
                .collect(),
        },
    ]
}
