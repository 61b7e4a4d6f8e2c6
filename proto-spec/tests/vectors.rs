//! Every valid vector decodes and re-encodes byte for byte (and matches the
//! canonical message); every malformed vector gives its documented error.

use overlay::wire::split_frame;
use overlay::{Config, Message, MessageType, PeerId};
use proto_spec::{Vector, encode_hex, parse_vector_file, valid_vectors};

fn file(name: &str, with_expectation: bool) -> Vec<Vector> {
    let path = format!("{}/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    parse_vector_file(&text, with_expectation).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The outcome of reading one frame, as a vector-file kind.
fn outcome(bytes: &[u8]) -> Result<(Message<PeerId>, usize), String> {
    let limits = Config::lan().limits;
    match split_frame(bytes, limits.max_frame_size) {
        Ok(None) => Err("incomplete".into()),
        Err(e) => Err(e.kind().into()),
        Ok(Some((body, used))) => Message::<PeerId>::decode(body, &limits)
            .map(|m| (m, used))
            .map_err(|e| e.kind().into()),
    }
}

#[test]
fn valid_vectors_decode_and_reencode_byte_for_byte() {
    let vectors = file("valid.txt", false);
    let canonical = valid_vectors();
    assert_eq!(
        vectors.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        canonical.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        "valid.txt and proto_spec::valid_vectors list the same vectors in the same order"
    );
    for (v, (_, expected)) in vectors.iter().zip(&canonical) {
        let (msg, used) = outcome(&v.bytes).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(
            used,
            v.bytes.len(),
            "{}: one frame, nothing left over",
            v.name
        );
        assert_eq!(
            &msg, expected,
            "{}: decodes to the canonical message",
            v.name
        );
        let again = msg.to_frame(&Config::lan().limits).unwrap();
        assert_eq!(
            encode_hex(&again),
            encode_hex(&v.bytes),
            "{}: re-encodes byte for byte",
            v.name
        );
    }
}

#[test]
fn every_message_type_has_a_valid_vector() {
    let vectors = file("valid.txt", false);
    for t in MessageType::ALL {
        assert!(
            vectors.iter().any(|v| v.bytes.get(4) == Some(&t.code())),
            "no vector for {}",
            t.name()
        );
    }
}

#[test]
fn malformed_vectors_give_their_documented_error() {
    let vectors = file("malformed.txt", true);
    assert!(vectors.len() >= 20);
    for v in &vectors {
        let got = match outcome(&v.bytes) {
            Ok((m, _)) => panic!("{}: decoded as {m:?}", v.name),
            Err(kind) => kind,
        };
        assert_eq!(Some(got.as_str()), v.expect.as_deref(), "{}", v.name);
    }
}
