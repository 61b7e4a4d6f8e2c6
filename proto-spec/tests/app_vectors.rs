//! Everything above the overlay (SPEC.md §11): every valid vector decodes
//! with the real type, equals the canonical value in `proto_spec::app`, and
//! re-encodes byte for byte with the real encoder; every malformed vector
//! fails with its documented kind (or, for `lenient`, is accepted although
//! it is not the canonical encoding); the numbers SPEC.md quotes are the
//! code's.

use chatd::client::chat::Frame;
use chatd::client::early;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use overlay::PeerId;
use proto_spec::app::{self, FrameError, split_frame, split_relay_frame};
use proto_spec::{Vector, encode_hex, parse_vector_file};
use rendezvous::members::Msg;
use rendezvous::proto::{
    ErrorCode, MAX_FRAME, MAX_SERVER_FRAME, Notice, Payload, PayloadError, Request, Response,
    ServerMsg,
};
use rendezvous::record::PeerRecord;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::net::SocketAddr;

const MAX_REQUEST: usize = chatd::net::framing::MAX_REQUEST;

fn file(name: &str, with_expectation: bool) -> Vec<Vector> {
    let path = format!("{}/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    parse_vector_file(&text, with_expectation).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn names<T>(v: &[(String, T)]) -> Vec<&str> {
    v.iter().map(|(n, _)| n.as_str()).collect()
}

fn owned<T>(v: Vec<(&'static str, T)>) -> Vec<(String, T)> {
    v.into_iter().map(|(n, m)| (n.to_string(), m)).collect()
}

/// Reads one framed message as chatd does (`read_msg_max`: the length
/// against `max`, then `postcard::from_bytes` of the body); the error as a
/// vector-file kind.
fn read_framed<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<(T, usize), String> {
    let (body, used) = split_frame(bytes, max).map_err(|e| e.kind().to_string())?;
    let msg = postcard::from_bytes(body).map_err(|e| app::postcard_kind(&e).to_string())?;
    Ok((msg, used))
}

/// Every vector of `name` decodes to its canonical value and re-encodes
/// (with `chatd::net::framing::encode`) byte for byte.
fn check_framed<T>(name: &str, canonical: &[(String, T)], max: usize) -> Vec<(T, Vec<u8>)>
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let vectors = file(name, false);
    assert_eq!(
        vectors.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        names(canonical),
        "{name} lists the vectors of proto_spec::app in the same order (run gen-vectors)"
    );
    let mut out = Vec::new();
    for (v, (_, expected)) in vectors.iter().zip(canonical) {
        let (msg, used): (T, usize) =
            read_framed(&v.bytes, max).unwrap_or_else(|e| panic!("{name} {}: {e}", v.name));
        assert_eq!(used, v.bytes.len(), "{name} {}: one frame exactly", v.name);
        assert_eq!(&msg, expected, "{name} {}: the canonical value", v.name);
        let again = chatd::net::framing::encode(&msg).unwrap();
        assert_eq!(
            encode_hex(&again),
            encode_hex(&v.bytes),
            "{name} {}: re-encodes byte for byte",
            v.name
        );
        out.push((msg, v.bytes[4..].to_vec()));
    }
    out
}

/// Every malformed vector of `name` gives its kind; `lenient` ones decode
/// but are not what the encoder writes.
fn check_framed_malformed<T>(name: &str, max: usize)
where
    T: DeserializeOwned + Serialize + Debug,
{
    let vectors = file(name, true);
    assert!(!vectors.is_empty(), "{name} has vectors");
    for v in &vectors {
        let expect = v.expect.as_deref().unwrap();
        let got = read_framed::<T>(&v.bytes, max);
        if expect == "lenient" {
            let (msg, _) = got.unwrap_or_else(|e| panic!("{name} {}: {e}", v.name));
            let again = chatd::net::framing::encode(&msg).unwrap();
            assert_ne!(again, v.bytes, "{name} {}: not the canonical form", v.name);
        } else {
            match got {
                Ok((m, _)) => panic!("{name} {}: decoded as {m:?}", v.name),
                Err(kind) => assert_eq!(kind, expect, "{name} {}", v.name),
            }
        }
    }
}

// ----- valid vectors, one test per file -----

fn request_tag(r: &Request) -> u8 {
    match r {
        Request::WhoAmI => 0,
        Request::Register(_) => 1,
        Request::Lookup(_) => 2,
        Request::LookupName(_) => 3,
        Request::Servers => 4,
        Request::Meet(_) => 5,
        Request::Relay(_) => 6,
        Request::RegisterLive { .. } => 7,
        Request::FindName(_) => 8,
        Request::Latency(_) => 9,
        Request::Rearrange(_) => 10,
        Request::Deposit(_) => 11,
        Request::Collect => 12,
        Request::Delivered(_) => 13,
    }
}

fn response_tag(r: &Response) -> u8 {
    match r {
        Response::YouAre(_) => 0,
        Response::Registered => 1,
        Response::Record(_) => 2,
        Response::Servers(_) => 3,
        Response::Error(_) => 4,
        Response::Friend { .. } => 5,
        Response::Waiting => 6,
        Response::Relaying => 7,
        Response::Records(_) => 8,
        Response::Noted => 9,
        Response::Deposited { .. } => 10,
        Response::Letters { .. } => 11,
    }
}

fn server_tag(m: &ServerMsg) -> u8 {
    match m {
        ServerMsg::Digest(_) => 0,
        ServerMsg::Versions { .. } => 1,
        ServerMsg::Want(_) => 2,
        ServerMsg::Records(_) => 3,
        ServerMsg::Store { .. } => 4,
        ServerMsg::Stored { .. } => 5,
        ServerMsg::Rendezvous { .. } => 6,
        ServerMsg::Meeting { .. } => 7,
        ServerMsg::RelayChoice { .. } => 8,
        ServerMsg::Rearrange { .. } => 9,
        ServerMsg::Keep { .. } => 10,
        ServerMsg::Kept { .. } => 11,
        ServerMsg::Fetch { .. } => 12,
        ServerMsg::Held { .. } => 13,
        ServerMsg::Discard { .. } => 14,
        ServerMsg::MailFor { .. } => 15,
    }
}

fn chat_tag(f: &Frame) -> u8 {
    match f {
        Frame::Msg { .. } => 0,
        Frame::Ack { .. } => 1,
        Frame::Hello => 2,
        Frame::Bye => 3,
        Frame::Moving { .. } => 4,
    }
}

fn notice_tag(n: &Notice) -> u8 {
    match n {
        Notice::Friend { .. } => 0,
        Notice::Relay { .. } => 1,
        Notice::Mail => 2,
    }
}

fn member_tag(m: &Msg) -> u8 {
    match m {
        Msg::Announce { .. } => 0,
        Msg::Leave { .. } => 1,
        Msg::Suspect { .. } => 2,
    }
}

/// The first body byte is the variant tag SPEC.md gives, and every
/// variant (tags 0..count) has a vector. The tag functions above match
/// exhaustively, so a new variant does not compile until it is listed.
fn check_tags<T>(name: &str, decoded: &[(T, Vec<u8>)], tag: fn(&T) -> u8, count: u8) {
    let mut seen = vec![false; usize::from(count)];
    for (msg, body) in decoded {
        let t = tag(msg);
        assert_eq!(body.first(), Some(&t), "{name}: tag byte of variant {t}");
        seen[usize::from(t)] = true;
    }
    for (t, s) in seen.iter().enumerate() {
        assert!(s, "{name}: no vector for variant {t}");
    }
}

#[test]
fn client_requests_decode_and_reencode_byte_for_byte() {
    let d = check_framed(
        "client-request.txt",
        &owned(app::request_vectors()),
        MAX_REQUEST,
    );
    check_tags("client-request.txt", &d, request_tag, 14);
}

#[test]
fn client_responses_decode_and_reencode_byte_for_byte() {
    let d = check_framed("client-response.txt", &app::response_vectors(), MAX_FRAME);
    check_tags("client-response.txt", &d, response_tag, 12);
}

#[test]
fn notices_decode_and_reencode_byte_for_byte() {
    let d = check_framed(
        "client-notice.txt",
        &owned(app::notice_vectors()),
        MAX_FRAME,
    );
    check_tags("client-notice.txt", &d, notice_tag, 3);
}

#[test]
fn server_messages_decode_and_reencode_byte_for_byte() {
    let d = check_framed(
        "server.txt",
        &owned(app::server_vectors()),
        MAX_SERVER_FRAME,
    );
    check_tags("server.txt", &d, server_tag, 16);
}

#[test]
fn chat_frames_decode_and_reencode_byte_for_byte() {
    let d = check_framed("chat.txt", &owned(app::chat_vectors()), MAX_FRAME);
    check_tags("chat.txt", &d, chat_tag, 5);
}

#[test]
fn room_frames_decode_and_reencode_byte_for_byte() {
    use chatd::client::room::{ROOM_FRAME_MAX, Wire};
    let d = check_framed("room.txt", &owned(app::room_vectors()), ROOM_FRAME_MAX);
    // The link's own tags (2 = the chat stream's Hello) and every room
    // message inside tag 5.
    let mut msgs = [false; 8];
    for (w, body) in &d {
        let tag = match w {
            Wire::Hello => 2,
            Wire::Room { .. } => 4,
            Wire::Msg(m) => {
                let t: u8 = match m {
                    room::Msg::Append(_) => 0,
                    room::Msg::Appended { .. } => 1,
                    room::Msg::Post { .. } => 2,
                    room::Msg::Delays(_) => 3,
                    room::Msg::Hello { .. } => 4,
                    room::Msg::RequestVote { .. } => 5,
                    room::Msg::Vote { .. } => 6,
                    room::Msg::Ineligible { .. } => 7,
                };
                assert_eq!(body.get(1), Some(&t), "room.txt: room message tag {t}");
                msgs[usize::from(t)] = true;
                5
            }
            other => panic!("room.txt: {other:?} is not sent on a room link"),
        };
        assert_eq!(body.first(), Some(&tag), "room.txt: tag byte {tag}");
    }
    assert!(
        msgs.iter().all(|s| *s),
        "room.txt: a vector per room message"
    );
}

#[test]
fn malformed_room_frames_fail_with_their_kind() {
    use chatd::client::room::{ROOM_FRAME_MAX, Wire};
    check_framed_malformed::<Wire>("room-malformed.txt", ROOM_FRAME_MAX);
}

#[test]
fn payloads_decode_and_reencode_byte_for_byte() {
    let vectors = file("payload.txt", false);
    let canonical = owned(app::payload_vectors());
    assert_eq!(
        vectors.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        names(&canonical)
    );
    let mut members = Vec::new();
    for (v, (_, expected)) in vectors.iter().zip(&canonical) {
        let p = Payload::decode(&v.bytes).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(&p, expected, "{}", v.name);
        assert_eq!(
            encode_hex(&p.encode()),
            encode_hex(&v.bytes),
            "{}: re-encodes byte for byte",
            v.name
        );
        match p {
            Payload::Member(m) => {
                assert_eq!(v.bytes[0], rendezvous::proto::TAG_MEMBER);
                members.push((m, v.bytes[1..].to_vec()));
            }
            Payload::Record(_) => assert_eq!(v.bytes[0], rendezvous::proto::TAG_RECORD),
        }
    }
    check_tags("payload.txt (membership)", &members, member_tag, 3);
}

#[test]
fn relay_datagrams_split_and_reframe_byte_for_byte() {
    let vectors = file("relay.txt", false);
    let canonical = app::relay_vectors();
    assert_eq!(vectors.len(), canonical.len());
    let mut stream = Vec::new();
    for (v, (name, datagram)) in vectors.iter().zip(&canonical) {
        assert_eq!(v.name, *name);
        let (d, used) = split_relay_frame(&v.bytes).unwrap();
        assert_eq!((d, used), (datagram.as_slice(), v.bytes.len()), "{name}");
        assert_eq!(app::relay_frame(d), v.bytes, "{name}");
        stream.extend_from_slice(&v.bytes);
    }
    // Back to back on one stream, they split the same way.
    let mut rest = stream.as_slice();
    for (name, datagram) in &canonical {
        let (d, used) = split_relay_frame(rest).unwrap();
        assert_eq!(d, datagram.as_slice(), "{name} in a stream");
        rest = &rest[used..];
    }
    assert!(rest.is_empty());
}

#[test]
fn early_frames_open_to_their_message_and_seal_byte_for_byte() {
    let vectors = file("early.txt", false);
    let canonical = app::early_vectors();
    assert_eq!(vectors.len(), canonical.len());
    for (v, e) in vectors.iter().zip(&canonical) {
        assert_eq!(v.name, e.name);
        let opened = early::open(&app::key(e.to), &e.meeting, &v.bytes);
        assert_eq!(opened.as_ref(), Ok(&e.frame), "{}", e.name);
        let sealed = early::seal(&app::key(e.from), &e.meeting, &e.frame, e.ephemeral).unwrap();
        assert_eq!(sealed, v.bytes, "{}", e.name);
        // Not by the sender, nor for another meeting.
        assert!(early::open(&app::key(e.from), &e.meeting, &v.bytes).is_err());
        let later = early::Meeting {
            from_seq: e.meeting.from_seq + 2,
            ..e.meeting
        };
        assert!(early::open(&app::key(e.to), &later, &v.bytes).is_err());
    }
}

#[test]
fn malformed_early_frames_fail_with_their_kind() {
    // Every one is read by bob as if from alice (alice-to-bob's meeting).
    let e = &app::early_vectors()[0];
    for v in file("early-malformed.txt", true) {
        let got = early::open(&app::key(e.to), &e.meeting, &v.bytes)
            .map(|_| ())
            .map_err(|e| e.kind());
        assert_eq!(got, Err(v.expect.as_deref().unwrap()), "{}", v.name);
    }
}

#[test]
fn letters_open_to_their_body_and_seal_byte_for_byte() {
    use chatd::client::letter;
    let vectors = file("letter.txt", false);
    let canonical = app::letter_vectors();
    assert_eq!(vectors.len(), canonical.len());
    for (v, l) in vectors.iter().zip(&canonical) {
        assert_eq!(v.name, l.name);
        let opened = letter::open(&app::key(l.to), &l.id, &v.bytes)
            .unwrap_or_else(|e| panic!("{}: {e}", l.name));
        assert_eq!(
            opened.from,
            app::id(l.from),
            "{}: the sealed sender",
            l.name
        );
        assert_eq!(opened.body, l.body, "{}", l.name);
        assert_eq!(app::seal_letter(l), v.bytes, "{}", l.name);
        // Not by the sender, nor under another id.
        assert!(letter::open(&app::key(l.from), &l.id, &v.bytes).is_err());
        assert!(letter::open(&app::key(l.to), &[0xee; 16], &v.bytes).is_err());
    }
}

#[test]
fn malformed_letters_fail_with_their_kind() {
    // Every one is opened by bob as letter [0x11; 16].
    for v in file("letter-malformed.txt", true) {
        let got = chatd::client::letter::open(&app::key(app::BOB), &[0x11; 16], &v.bytes)
            .map(|_| ())
            .map_err(|e| e.kind());
        assert_eq!(got, Err(v.expect.as_deref().unwrap()), "{}", v.name);
    }
}

#[test]
fn peer_data_decodes_and_reencodes_byte_for_byte() {
    let vectors = file("peer-data.txt", false);
    let canonical = app::peer_data_vectors();
    assert_eq!(vectors.len(), canonical.len());
    for (v, (name, addrs)) in vectors.iter().zip(&canonical) {
        assert_eq!(v.name, *name);
        let got: Vec<SocketAddr> = postcard::from_bytes(&v.bytes).unwrap();
        assert_eq!(&got, addrs, "{name}");
        assert_eq!(postcard::to_allocvec(&got).unwrap(), v.bytes, "{name}");
    }
}

#[test]
fn vector_files_are_what_the_generator_writes() {
    for f in app::vector_files() {
        let path = format!("{}/vectors/{}", env!("CARGO_MANIFEST_DIR"), f.name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(
            text,
            f.render(),
            "{path} is out of date: run `cargo run -p proto-spec --bin gen-vectors` and review the diff"
        );
    }
}

// ----- malformed vectors -----

#[test]
fn malformed_requests_fail_with_their_kind() {
    check_framed_malformed::<Request>("client-request-malformed.txt", MAX_REQUEST);
}

#[test]
fn malformed_responses_fail_with_their_kind() {
    check_framed_malformed::<Response>("client-response-malformed.txt", MAX_FRAME);
}

#[test]
fn malformed_notices_fail_with_their_kind() {
    check_framed_malformed::<Notice>("client-notice-malformed.txt", MAX_FRAME);
}

#[test]
fn malformed_server_messages_fail_with_their_kind() {
    check_framed_malformed::<ServerMsg>("server-malformed.txt", MAX_SERVER_FRAME);
}

#[test]
fn malformed_chat_frames_fail_with_their_kind() {
    check_framed_malformed::<Frame>("chat-malformed.txt", MAX_FRAME);
}

/// A payload as a receiving server reads it: decoded, then its signature
/// and bounds checked (`Msg::verify`, `PeerRecord::verify`).
fn read_payload(bytes: &[u8]) -> Result<Payload, String> {
    let p = Payload::decode(bytes).map_err(|e| {
        match e {
            PayloadError::Empty => "empty",
            PayloadError::UnknownTag(_) => "unknown_tag",
            PayloadError::Malformed => "malformed",
        }
        .to_string()
    })?;
    match &p {
        Payload::Member(m) => m.verify().map_err(|_| "bad_signature".to_string())?,
        Payload::Record(r) => r.verify().map_err(|e| e.reason().to_string())?,
    }
    Ok(p)
}

#[test]
fn malformed_payloads_fail_with_their_kind() {
    let vectors = file("payload-malformed.txt", true);
    for v in &vectors {
        let expect = v.expect.as_deref().unwrap();
        let got = read_payload(&v.bytes);
        if expect == "lenient" {
            let p = got.unwrap_or_else(|e| panic!("{}: {e}", v.name));
            assert_ne!(p.encode().to_vec(), v.bytes, "{}: not canonical", v.name);
        } else {
            match got {
                Ok(p) => panic!("{}: accepted as {p:?}", v.name),
                Err(kind) => assert_eq!(kind, expect, "{}", v.name),
            }
        }
    }
}

#[test]
fn malformed_relay_frames_are_incomplete() {
    for v in file("relay-malformed.txt", true) {
        let got = split_relay_frame(&v.bytes)
            .map(|_| ())
            .map_err(FrameError::kind);
        assert_eq!(got, Err(v.expect.as_deref().unwrap()), "{}", v.name);
    }
}

#[test]
fn malformed_peer_data_fails_with_its_kind() {
    for v in file("peer-data-malformed.txt", true) {
        let got = postcard::from_bytes::<Vec<SocketAddr>>(&v.bytes)
            .map(|_| ())
            .map_err(|e| app::postcard_kind(&e));
        assert_eq!(got, Err(v.expect.as_deref().unwrap()), "{}", v.name);
    }
}

// ----- what SPEC.md states about the values -----

#[test]
fn error_codes_are_the_spec_table() {
    assert_eq!(
        ErrorCode::ALL.len(),
        app::ERROR_CODES.len(),
        "a new error code: add it to proto_spec::app::ERROR_CODES and SPEC.md §11.6"
    );
    for (&code, &(n, label)) in ErrorCode::ALL.iter().zip(app::ERROR_CODES) {
        assert_eq!(u16::from(code), n, "{label}");
        assert_eq!(code.label(), label, "{n}");
        assert_eq!(ErrorCode::from(n), code);
    }
    assert_eq!(ErrorCode::from(999), ErrorCode::Other(999));
    assert_eq!(ErrorCode::Other(999).label(), "other");
}

fn signed(domain: &str, value: &impl Serialize) -> Vec<u8> {
    let mut out = domain.as_bytes().to_vec();
    out.extend(postcard::to_allocvec(value).unwrap());
    out
}

fn verify_raw(signer: &PeerId, msg: &[u8], sig: &[u8]) {
    let key = VerifyingKey::from_bytes(signer.as_bytes()).unwrap();
    key.verify(msg, &Signature::from_slice(sig).unwrap())
        .expect("signature by the rule in SPEC.md");
}

fn records_in_vectors() -> Vec<PeerRecord> {
    vec![
        app::alice(),
        app::alice_withdrawal(),
        app::bob(),
        app::carol(),
    ]
}

#[test]
fn signatures_follow_the_spec_rule() {
    for r in records_in_vectors() {
        r.verify().unwrap();
        assert_eq!(r.sig.len(), 64);
        verify_raw(&r.body.peer, &signed("chatd-peer-v1", &r.body), &r.sig);
    }
    for (name, p) in app::payload_vectors() {
        let Payload::Member(m) = p else { continue };
        m.verify().unwrap_or_else(|e| panic!("{name}: {e}"));
        match &m {
            Msg::Announce { record, sig } => {
                verify_raw(&record.id, &signed("chatd-announce-v1", record), sig)
            }
            Msg::Leave { id, version, sig } => {
                verify_raw(id, &signed("chatd-leave-v1", &(id, version)), sig)
            }
            Msg::Suspect {
                id,
                version,
                by,
                sig,
            } => verify_raw(by, &signed("chatd-suspect-v1", &(id, version, by)), sig),
        }
    }
}

#[test]
fn the_withdrawal_vector_follows_the_withdrawal_rules() {
    let (live, w) = (app::alice(), app::alice_withdrawal());
    w.check_withdrawal(&live, app::NOW_UNIX).unwrap();
    assert_eq!(w.body.seq, live.body.seq + 1);
    assert_eq!(
        w.body.expires_at,
        app::NOW_UNIX - rendezvous::record::WITHDRAWAL_BACKDATE
    );
    assert!(w.body.private_addrs.is_empty());
    assert_eq!(
        (&w.body.peer, &w.body.home_server, &w.body.name),
        (&live.body.peer, &live.body.home_server, &live.body.name)
    );
    assert!(live.is_live(app::NOW_UNIX) && !w.is_live(app::NOW_UNIX));
}

/// SPEC §11.7: bucket b's hash is the XOR over the records whose id
/// starts with b of the first 8 bytes (little endian) of
/// blake3(id ‖ seq as u64 LE).
#[test]
fn the_digest_follows_the_spec_formula() {
    let mut expected = [0u64; 256];
    for r in [app::alice(), app::bob()] {
        let mut h = blake3::Hasher::new();
        h.update(r.body.peer.as_bytes());
        h.update(&r.body.seq.to_le_bytes());
        let b = h.finalize();
        let word = u64::from_le_bytes(b.as_bytes()[..8].try_into().unwrap());
        expected[usize::from(r.body.peer.0[0])] ^= word;
    }
    assert_eq!(app::table().digest(), &expected);
    let ServerMsg::Digest(d) = &app::server_vectors()[0].1 else {
        panic!("the first server vector is the digest");
    };
    assert_eq!(d.as_slice(), expected.as_slice());
}

#[test]
fn constants_are_the_ones_spec_quotes() {
    use rendezvous::{proto, record};
    assert_eq!(MAX_REQUEST, 2 * 1024);
    assert_eq!(MAX_FRAME, 64 * 1024);
    assert_eq!(MAX_SERVER_FRAME, 256 * 1024);
    assert_eq!(proto::MAX_SERVERS_LISTED, 100);
    assert_eq!(proto::MAX_NAME_MATCHES, 16);
    assert_eq!((proto::TAG_MEMBER, proto::TAG_RECORD), (1, 2));
    assert_eq!(Payload::decode(&[3, 0]), Err(PayloadError::UnknownTag(3)));
    assert_eq!(record::MAX_NAME, 64);
    assert_eq!(record::MAX_PRIVATE_ADDRS, 4);
    assert_eq!(record::MAX_TTL, 3_600);
    assert_eq!(record::MAX_SEQ_AHEAD_MS, 600_000);
    assert_eq!(record::WITHDRAWAL_BACKDATE, 660);
    assert_eq!(chatd::net::driver::OVERLAY_ALPN, b"chatd-overlay/1");
    assert_eq!(chatd::net::driver::CLIENT_ALPN, b"chatd-client/2");
    assert_eq!(chatd::client::CHAT_ALPN, b"chatd-chat/1");
    assert_eq!(
        encode_hex(chatd::client::PUNCH_PROBE),
        "0063686174642d70756e6368"
    );
    assert_eq!(chatd::client::chat::MAX_CHARS, 2048);
    assert_eq!(chatd::client::relay::MAX_DATAGRAM, 65_535);
    let d = rendezvous::Config::default();
    assert_eq!(d.page_versions, 1024);
    assert_eq!(d.page_records, 64);
    assert_eq!(d.sync_buckets_per_round, 32);
}

#[test]
fn names_follow_the_spec_rule() {
    use rendezvous::record::check_name;
    for ok in ["a", "alice", "grüße 👋", &"x".repeat(64), "with space"] {
        assert!(check_name(ok).is_ok(), "{ok:?}");
    }
    for bad in [
        "",
        &"x".repeat(65),
        "tab\there",
        "new\nline",
        "nul\0",
        "del\u{7f}",
    ] {
        assert!(check_name(bad).is_err(), "{bad:?}");
    }
    // 64 bytes, not characters: 16 four-byte characters fit, 17 do not.
    assert!(check_name(&"👋".repeat(16)).is_ok());
    assert!(check_name(&"👋".repeat(17)).is_err());
}

#[test]
fn the_split_functions_follow_the_framing_rules() {
    assert_eq!(split_frame(&[0, 0, 0], 10), Err(FrameError::Incomplete));
    assert_eq!(split_frame(&[0, 0, 0, 11], 10), Err(FrameError::TooLarge));
    assert_eq!(
        split_frame(&[0, 0, 0, 2, 1], 10),
        Err(FrameError::Incomplete)
    );
    assert_eq!(split_frame(&[0, 0, 0, 1, 7, 9], 10), Ok((&[7u8][..], 5)));
    assert_eq!(split_frame(&[0, 0, 0, 0], 10), Ok((&[][..], 4)));
}
