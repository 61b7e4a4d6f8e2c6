//! Early messages: the first chat messages, carried through the relay
//! before the end-to-end QUIC handshake has finished, so that a chat's
//! first line reaches the friend half a round trip after the meeting
//! instead of two.
//!
//! A relayed chat runs a QUIC connection through the relay, and a QUIC
//! (TLS 1.3) handshake costs a full round trip between the two peers
//! before the dialer may send, one and a half before anything arrives.
//! But both peers already know each other's long-term key (the friend's
//! signed record; pinned after the first chat), so, as in Noise's IK
//! pattern, a message can be encrypted to the friend at once:
//!
//! - key = HKDF-SHA256(salt `chatd-early-v1`, ikm = es ‖ ss, info =
//!   sender id ‖ receiver id ‖ sender's record seq ‖ receiver's record seq
//!   ‖ E), where E is a fresh X25519 key of the sender's for this frame
//!   only, es = X25519(e, receiver), ss = X25519(sender, receiver) (each
//!   ed25519 identity key used as its X25519 twin, see
//!   [`ed25519_dalek::VerifyingKey::to_montgomery`]);
//! - the frame is `version (1) ‖ E (32) ‖ ChaCha20-Poly1305(key, nonce 0,
//!   aad = version ‖ E, postcard(Frame::Msg))`: a key used once, so a zero
//!   nonce is safe.
//!
//! What it gives: only the friend can read it (es and ss need its secret
//! key); only the sender or the friend can have made it (ss); a frame from
//! another meeting does not open (both record seqs are in the key; each
//! registration has a new one), and one replayed within this meeting is
//! the same message id, which the chat drops as a duplicate. What it does
//! not: forward secrecy against a later theft of the *receiver's* key (a
//! recorded early frame then opens; the sender's theft alone does not —
//! es). That is the price of zero round trips, as with TLS 0-RTT; every
//! message after the handshake has full forward secrecy, and an early
//! message is sent again on the QUIC path until acknowledged there, so it
//! is never lost when an early frame is. Only `Frame::Msg` is taken early;
//! at most [`MAX_EARLY_FRAMES`] frames of at most [`MAX_EARLY_LEN`] bytes
//! each per relay stream.

use crate::client::chat::Frame;
use ed25519_dalek::{SigningKey, VerifyingKey};
use overlay::PeerId;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, Salt};

/// The format's version (the first byte).
pub const EARLY_VERSION: u8 = 1;
/// Early frames one relay stream carries each way (the first; later ones
/// are dropped).
pub const MAX_EARLY_FRAMES: usize = 8;
/// The largest early frame: a message of 2,048 characters of up to 4
/// bytes each, with room for the framing.
pub const MAX_EARLY_LEN: usize = 9 * 1024;

const SALT: &[u8] = b"chatd-early-v1";
const HEADER: usize = 1 + 32;
const TAG: usize = 16;

/// Who sends to whom, in which meeting: what both sides must agree on
/// for a frame to open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meeting {
    /// The sender.
    pub from: PeerId,
    /// The receiver.
    pub to: PeerId,
    /// The `seq` of the sender's record as the receiver was given it.
    pub from_seq: u64,
    /// The `seq` of the receiver's record as the sender was given it.
    pub to_seq: u64,
}

/// Why an early frame was not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EarlyError {
    /// Shorter than a header and a tag, longer than [`MAX_EARLY_LEN`], or
    /// of another version.
    #[error("not an early frame of version {EARLY_VERSION}")]
    Format,
    /// A key that is not a curve point, or a low-order one.
    #[error("unusable key")]
    Key,
    /// Did not decrypt: not for us, not from the friend, another meeting,
    /// or altered.
    #[error("does not open")]
    Open,
    /// Opened, but not a message.
    #[error("not a message")]
    NotAMessage,
}

impl EarlyError {
    /// The vector-file kind (`early-malformed.txt`).
    pub fn kind(&self) -> &'static str {
        match self {
            EarlyError::Format => "format",
            EarlyError::Key => "key",
            EarlyError::Open => "open",
            EarlyError::NotAMessage => "not_a_message",
        }
    }
}

pub(super) fn montgomery(peer: &PeerId) -> Result<[u8; 32], EarlyError> {
    let key = VerifyingKey::from_bytes(peer.as_bytes()).map_err(|_| EarlyError::Key)?;
    Ok(key.to_montgomery().to_bytes())
}

/// X25519 of a secret (clamped) and a public key; an all-zero result (a
/// low-order public key) is refused.
pub(super) fn dh(secret: [u8; 32], public: [u8; 32]) -> Result<[u8; 32], EarlyError> {
    let shared = curve25519_dalek::MontgomeryPoint(public)
        .mul_clamped(secret)
        .to_bytes();
    if shared == [0u8; 32] {
        return Err(EarlyError::Key);
    }
    Ok(shared)
}

fn key(es: [u8; 32], ss: [u8; 32], m: &Meeting, e: &[u8; 32]) -> LessSafeKey {
    let mut ikm = [0u8; 64];
    ikm[..32].copy_from_slice(&es);
    ikm[32..].copy_from_slice(&ss);
    let (from_seq, to_seq) = (m.from_seq.to_be_bytes(), m.to_seq.to_be_bytes());
    let info: [&[u8]; 5] = [m.from.as_bytes(), m.to.as_bytes(), &from_seq, &to_seq, e];
    hkdf_key(SALT, &ikm, &info)
}

/// A ChaCha20-Poly1305 key: HKDF-SHA256(salt, ikm, info parts joined).
pub(super) fn hkdf_key(salt: &[u8], ikm: &[u8], info: &[&[u8]]) -> LessSafeKey {
    let prk = Salt::new(HKDF_SHA256, salt).extract(ikm);
    let okm = prk
        .expand(info, &CHACHA20_POLY1305)
        .expect("32 bytes is a valid HKDF-SHA256 length");
    LessSafeKey::new(UnboundKey::from(okm))
}

/// Seals `frame` (a `Frame::Msg`) from `me` (`m.from`) to `m.to`, with
/// `ephemeral` as the frame's own secret (32 random bytes; fresh for every
/// frame).
pub fn seal(
    me: &SigningKey,
    m: &Meeting,
    frame: &Frame,
    ephemeral: [u8; 32],
) -> Result<Vec<u8>, EarlyError> {
    if !matches!(frame, Frame::Msg { .. }) {
        return Err(EarlyError::NotAMessage);
    }
    let to = montgomery(&m.to)?;
    let e = curve25519_dalek::MontgomeryPoint::mul_base_clamped(ephemeral).to_bytes();
    let es = dh(ephemeral, to)?;
    let ss = dh(me.to_scalar_bytes(), to)?;
    let mut out = Vec::with_capacity(HEADER + 64 + TAG);
    out.push(EARLY_VERSION);
    out.extend_from_slice(&e);
    let mut body = postcard::to_allocvec(frame).map_err(|_| EarlyError::Format)?;
    key(es, ss, m, &e)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key([0u8; 12]),
            Aad::from(&out[..HEADER]),
            &mut body,
        )
        .map_err(|_| EarlyError::Open)?;
    out.extend_from_slice(&body);
    if out.len() > MAX_EARLY_LEN {
        return Err(EarlyError::Format);
    }
    Ok(out)
}

/// Opens an early frame sent by `m.from` to `me` (`m.to`).
pub fn open(me: &SigningKey, m: &Meeting, bytes: &[u8]) -> Result<Frame, EarlyError> {
    if bytes.len() < HEADER + TAG || bytes.len() > MAX_EARLY_LEN || bytes[0] != EARLY_VERSION {
        return Err(EarlyError::Format);
    }
    let mut e = [0u8; 32];
    e.copy_from_slice(&bytes[1..HEADER]);
    let from = montgomery(&m.from)?;
    let secret = me.to_scalar_bytes();
    let es = dh(secret, e)?;
    let ss = dh(secret, from)?;
    let mut body = bytes[HEADER..].to_vec();
    let plain = key(es, ss, m, &e)
        .open_in_place(
            Nonce::assume_unique_for_key([0u8; 12]),
            Aad::from(&bytes[..HEADER]),
            &mut body,
        )
        .map_err(|_| EarlyError::Open)?;
    match postcard::from_bytes::<Frame>(plain) {
        Ok(f @ Frame::Msg { .. }) => Ok(f),
        Ok(_) => Err(EarlyError::NotAMessage),
        Err(_) => Err(EarlyError::Open),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(seed: u8) -> (SigningKey, PeerId) {
        let k = SigningKey::from_bytes(&[seed; 32]);
        let id = PeerId(k.verifying_key().to_bytes());
        (k, id)
    }

    /// Alice (1) to bob (2) with record seqs `seqs`: both keys and the
    /// meeting.
    fn alice_to_bob(seqs: (u64, u64)) -> (SigningKey, SigningKey, Meeting) {
        let (a, ida) = keys(1);
        let (b, idb) = keys(2);
        let m = Meeting {
            from: ida,
            to: idb,
            from_seq: seqs.0,
            to_seq: seqs.1,
        };
        (a, b, m)
    }

    fn msg(text: &str) -> Frame {
        Frame::Msg {
            epoch: 7,
            seq: 1,
            text: text.into(),
        }
    }

    #[test]
    fn only_the_friend_opens_it_and_only_in_this_meeting() {
        let (a, b, m) = alice_to_bob((10, 20));
        let (ida, idb) = (m.from, m.to);
        let (c, idc) = keys(3);
        let sealed = seal(&a, &m, &msg("hi"), [9; 32]).unwrap();
        assert_eq!(open(&b, &m, &sealed), Ok(msg("hi")));
        // Not the friend: neither a third key nor the sender itself
        // reading it as if it were the receiver.
        assert_eq!(
            open(&c, &Meeting { to: idc, ..m }, &sealed),
            Err(EarlyError::Open)
        );
        assert_eq!(
            open(&a, &Meeting { to: ida, ..m }, &sealed),
            Err(EarlyError::Open)
        );
        // Another meeting (either record seq), or the other direction.
        for other in [
            Meeting { from_seq: 11, ..m },
            Meeting { to_seq: 21, ..m },
            Meeting {
                from: idb,
                to: ida,
                ..m
            },
        ] {
            assert_ne!(open(&b, &other, &sealed), Ok(msg("hi")), "{other:?}");
        }
        // Claimed by a third party: c cannot make a frame that b takes as a's.
        let forged = seal(&c, &m, &msg("hi"), [9; 32]).unwrap();
        assert_eq!(open(&b, &m, &forged), Err(EarlyError::Open));
    }

    #[test]
    fn every_altered_byte_is_refused_and_a_fresh_ephemeral_changes_everything() {
        let (a, b, m) = alice_to_bob((1, 2));
        let sealed = seal(&a, &m, &msg("hello"), [5; 32]).unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(open(&b, &m, &bad).is_err(), "byte {i} altered was taken");
        }
        assert_eq!(
            open(&b, &m, &sealed[..HEADER + TAG - 1]),
            Err(EarlyError::Format)
        );
        let other = seal(&a, &m, &msg("hello"), [6; 32]).unwrap();
        assert_ne!(other[1..], sealed[1..]);
        assert_eq!(open(&b, &m, &other), Ok(msg("hello")));
    }

    #[test]
    fn only_messages_go_early_and_size_is_bounded() {
        let (a, _, m) = alice_to_bob((1, 2));
        assert_eq!(
            seal(&a, &m, &Frame::Bye, [1; 32]),
            Err(EarlyError::NotAMessage)
        );
        let long = "\u{1F600}".repeat(crate::client::chat::MAX_CHARS);
        assert!(seal(&a, &m, &msg(&long), [1; 32]).is_ok());
        let too_long = "x".repeat(MAX_EARLY_LEN);
        assert_eq!(
            seal(&a, &m, &msg(&too_long), [1; 32]),
            Err(EarlyError::Format)
        );
    }

    #[test]
    fn a_low_order_key_is_refused() {
        let (_, b, m) = alice_to_bob((1, 2));
        // E = 0 (a low-order point): X25519 gives all zeros.
        let mut frame = vec![EARLY_VERSION];
        frame.extend_from_slice(&[0u8; 32]);
        frame.extend_from_slice(&[0u8; 40]);
        assert_eq!(open(&b, &m, &frame), Err(EarlyError::Key));
    }
}
