//! Letters: offline messages sealed to a friend's key, so that the
//! servers keeping them (`rendezvous::mailbox`) hold only ciphertext, the
//! recipient's id and the letter's id — not even who sent it.
//!
//! The seal is Noise's one-way X pattern (e, es, s, ss) with the ed25519
//! identities used as their X25519 twins (as in [`crate::client::early`]):
//!
//! - E = X25519 base point × e (a fresh secret for this letter only);
//!   es = X25519(e, B), ss = X25519(a, B) (A sender, B recipient);
//! - k1 = HKDF-SHA256(salt `chatd-letter-v1`, ikm es, info `sender` ‖ B ‖
//!   id ‖ E); s = ChaCha20-Poly1305(k1, nonce 0, aad = version ‖ E ‖ id ‖
//!   B, A's id): the sender's id, readable only by B;
//! - k2 = HKDF-SHA256(salt, ikm es ‖ ss, info `body` ‖ A ‖ B ‖ id ‖ E);
//!   the body = ChaCha20-Poly1305(k2, nonce 0, aad = version ‖ E ‖ s,
//!   postcard([`Body`]));
//! - a letter is `version (1) ‖ E (32) ‖ s (48) ‖ body`; each key is used
//!   once, so a zero nonce is safe.
//!
//! What it gives: only B opens it (es needs b); only A (or B) can have
//! made a letter that opens as A's (ss); the letter's id and recipient are
//! in both keys, so a server cannot hand one letter out under another id
//! (a second delivery) or to another peer. What it does not: forward
//! secrecy against a later theft of B's key (a stored letter then opens),
//! as with any message to an offline peer without prekeys (Signal's
//! answer; out of scope here).

use crate::client::early::{EarlyError, dh, hkdf_key, montgomery};
use ed25519_dalek::SigningKey;
use overlay::PeerId;
use rendezvous::mailbox::{LetterId, MAX_LETTER, MIN_LETTER};
use ring::aead::{Aad, Nonce};
use serde::{Deserialize, Serialize};

/// The format's version (the first byte).
pub const LETTER_VERSION: u8 = 1;
/// Most ids one receipt carries.
pub const MAX_RECEIPT_IDS: usize = 64;

const SALT: &[u8] = b"chatd-letter-v1";
const S_LEN: usize = 32 + 16;
const HEADER: usize = 1 + 32 + S_LEN;

/// What a letter says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// A message.
    Text {
        /// The sender's name as it calls itself (names are not verified;
        /// a pinned friend is shown by its pinned name).
        name: String,
        /// When it was written (Unix ms, the sender's clock).
        sent_ms: u64,
        /// Its place among the sender's letters of one run.
        seq: u32,
        /// The line.
        text: String,
    },
    /// The recipient has these letters of yours (sent back when it
    /// collects them; never answered with a receipt).
    Receipt {
        /// Their ids, at most [`MAX_RECEIPT_IDS`].
        ids: Vec<LetterId>,
    },
}

/// An opened letter: who sent it, and what it says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The sender (authenticated by the seal).
    pub from: PeerId,
    /// The body.
    pub body: Body,
}

fn zero() -> Nonce {
    Nonce::assume_unique_for_key([0u8; 12])
}

/// Seals `body` from `me` to `to` as letter `id`, with `ephemeral` as its
/// own secret (32 random bytes; fresh for every letter).
pub fn seal(
    me: &SigningKey,
    to: &PeerId,
    id: &LetterId,
    body: &Body,
    ephemeral: [u8; 32],
) -> Result<Vec<u8>, EarlyError> {
    let from = PeerId(me.verifying_key().to_bytes());
    let b = montgomery(to)?;
    let e = curve25519_dalek::MontgomeryPoint::mul_base_clamped(ephemeral).to_bytes();
    let es = dh(ephemeral, b)?;
    let ss = dh(me.to_scalar_bytes(), b)?;
    let mut out = vec![LETTER_VERSION];
    out.extend_from_slice(&e);
    let mut s = from.as_bytes().to_vec();
    let aad1: Vec<u8> = [&out[..], id, to.as_bytes()].concat();
    hkdf_key(SALT, &es, &[b"sender", to.as_bytes(), id, &e])
        .seal_in_place_append_tag(zero(), Aad::from(&aad1), &mut s)
        .map_err(|_| EarlyError::Open)?;
    out.extend_from_slice(&s);
    let mut plain = postcard::to_allocvec(body).map_err(|_| EarlyError::Format)?;
    let ikm: Vec<u8> = [es, ss].concat();
    hkdf_key(
        SALT,
        &ikm,
        &[b"body", from.as_bytes(), to.as_bytes(), id, &e],
    )
    .seal_in_place_append_tag(zero(), Aad::from(&out[..HEADER]), &mut plain)
    .map_err(|_| EarlyError::Open)?;
    out.extend_from_slice(&plain);
    if out.len() > MAX_LETTER {
        return Err(EarlyError::Format);
    }
    Ok(out)
}

/// Opens letter `id` sealed to `me`.
pub fn open(me: &SigningKey, id: &LetterId, sealed: &[u8]) -> Result<Opened, EarlyError> {
    if sealed.len() < MIN_LETTER || sealed.len() > MAX_LETTER || sealed[0] != LETTER_VERSION {
        return Err(EarlyError::Format);
    }
    let to = PeerId(me.verifying_key().to_bytes());
    let mut e = [0u8; 32];
    e.copy_from_slice(&sealed[1..33]);
    let secret = me.to_scalar_bytes();
    let es = dh(secret, e)?;
    let aad1: Vec<u8> = [&sealed[..33], id, to.as_bytes()].concat();
    let mut s = sealed[33..HEADER].to_vec();
    let from = hkdf_key(SALT, &es, &[b"sender", to.as_bytes(), id, &e])
        .open_in_place(zero(), Aad::from(&aad1), &mut s)
        .map_err(|_| EarlyError::Open)?;
    let mut from_bytes = [0u8; 32];
    from_bytes.copy_from_slice(from);
    let from = PeerId(from_bytes);
    let ss = dh(secret, montgomery(&from)?)?;
    let ikm: Vec<u8> = [es, ss].concat();
    let mut body = sealed[HEADER..].to_vec();
    let plain = hkdf_key(
        SALT,
        &ikm,
        &[b"body", from.as_bytes(), to.as_bytes(), id, &e],
    )
    .open_in_place(zero(), Aad::from(&sealed[..HEADER]), &mut body)
    .map_err(|_| EarlyError::Open)?;
    let body: Body = postcard::from_bytes(plain).map_err(|_| EarlyError::NotAMessage)?;
    match &body {
        Body::Text { text, name, .. }
            if text.chars().count() > crate::client::chat::MAX_CHARS
                || name.len() > rendezvous::record::MAX_NAME =>
        {
            Err(EarlyError::NotAMessage)
        }
        Body::Receipt { ids } if ids.len() > MAX_RECEIPT_IDS => Err(EarlyError::NotAMessage),
        _ => Ok(Opened { from, body }),
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

    fn text(t: &str) -> Body {
        Body::Text {
            name: "alice".into(),
            sent_ms: 1,
            seq: 0,
            text: t.into(),
        }
    }

    #[test]
    fn only_the_recipient_opens_it_and_learns_the_sender() {
        let (a, ida) = keys(1);
        let (b, idb) = keys(2);
        let (c, _) = keys(3);
        let id = [7u8; 16];
        let sealed = seal(&a, &idb, &id, &text("hi"), [9; 32]).unwrap();
        assert_eq!(
            open(&b, &id, &sealed),
            Ok(Opened {
                from: ida,
                body: text("hi")
            })
        );
        assert_eq!(open(&c, &id, &sealed), Err(EarlyError::Open));
        assert_eq!(open(&a, &id, &sealed), Err(EarlyError::Open));
        // Under another id (a server handing it out twice): does not open.
        assert_eq!(open(&b, &[8u8; 16], &sealed), Err(EarlyError::Open));
        // The sender's id is not in the clear.
        assert!(!sealed.windows(32).any(|w| w == ida.as_bytes()));
    }

    #[test]
    fn nobody_else_can_sign_as_the_sender_and_every_altered_byte_is_refused() {
        let (a, ida) = keys(1);
        let (b, idb) = keys(2);
        let (m, _) = keys(3);
        let id = [1u8; 16];
        let sealed = seal(&a, &idb, &id, &text("hello"), [5; 32]).unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(open(&b, &id, &bad).is_err(), "byte {i} altered was taken");
        }
        // Mallory replaces the sealed sender with alice's id under her own
        // ephemeral: the body's key needs ss(alice, bob), which she lacks.
        let forged = seal(&m, &idb, &id, &text("hello"), [5; 32]).unwrap();
        let opened = open(&b, &id, &forged).unwrap();
        assert_ne!(opened.from, ida);
        assert_eq!(
            open(&b, &id, &sealed[..MIN_LETTER - 1]),
            Err(EarlyError::Format)
        );
    }

    #[test]
    fn the_longest_line_fits_and_receipts_are_bounded() {
        let (a, _) = keys(1);
        let (b, idb) = keys(2);
        let long = Body::Text {
            name: "n".repeat(rendezvous::record::MAX_NAME),
            sent_ms: u64::MAX,
            seq: u32::MAX,
            text: "\u{1F600}".repeat(crate::client::chat::MAX_CHARS),
        };
        let sealed = seal(&a, &idb, &[0; 16], &long, [1; 32]).unwrap();
        assert!(sealed.len() <= MAX_LETTER);
        assert!(open(&b, &[0; 16], &sealed).is_ok());
        let too_many = Body::Receipt {
            ids: vec![[0; 16]; MAX_RECEIPT_IDS + 1],
        };
        let sealed = seal(&a, &idb, &[0; 16], &too_many, [1; 32]).unwrap();
        assert_eq!(open(&b, &[0; 16], &sealed), Err(EarlyError::NotAMessage));
    }
}
