//! Length-prefixed postcard messages on QUIC streams: a u32 big-endian
//! length, then the body. Reading never trusts the announced length: the
//! buffer grows with the bytes that actually arrive (a peer announcing
//! 64 KiB and sending 10 bytes costs 10 bytes), and a length over the limit
//! is an error before anything else is read.

use serde::{Deserialize, Serialize};

pub use rendezvous::proto::{MAX_FRAME, MAX_SERVER_FRAME};

/// Largest client request (bytes): the largest a client sends is a
/// registration with its withdrawal, two records of at most
/// `MAX_RECORD_BYTES` (512) each plus a few bytes of framing. Small on
/// purpose: a connection's 8 half-sent requests pin 8 × this.
pub const MAX_REQUEST: usize = 2 * 1024;

const _: () = assert!(2 * rendezvous::record::MAX_RECORD_BYTES + 64 <= MAX_REQUEST);

/// Largest client request that carries a letter (`Request::Deposit`): a
/// sealed letter of at most `MAX_LETTER` bytes, its recipient and id, and
/// framing. A server reads at most one request over [`MAX_REQUEST`] per
/// connection at a time.
pub const MAX_LETTER_REQUEST: usize = rendezvous::mailbox::MAX_LETTER + 128;

/// How much is read at once.
const CHUNK: usize = 16 * 1024;

/// A frame announced a length over the reader's limit (nothing of its body
/// was read).
#[derive(Debug, thiserror::Error)]
#[error("frame of {len} bytes is over the {max}-byte limit")]
pub struct TooLarge {
    /// The announced length.
    pub len: usize,
    /// The limit.
    pub max: usize,
}

/// Why a frame could not be read. A plain error type, not `anyhow`: a
/// server reads frames from anyone, and capturing a backtrace for each bad
/// one (anyhow does when `RUST_BACKTRACE` is set) would let junk cost CPU.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Over the limit.
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    /// The stream ended inside the frame.
    #[error("stream ended {got} bytes into a {len}-byte frame")]
    Ended {
        /// Body bytes received.
        got: usize,
        /// Announced length.
        len: usize,
    },
    /// The length did not arrive.
    #[error("no frame: {0}")]
    Header(#[from] quinn::ReadExactError),
    /// Reading the body failed.
    #[error("reading a frame: {0}")]
    Read(#[from] quinn::ReadError),
    /// The body is not a valid message.
    #[error("undecodable: {0}")]
    Decode(#[from] postcard::Error),
}

impl FrameError {
    /// Whether the length was over the limit.
    pub fn is_too_large(&self) -> bool {
        matches!(self, FrameError::TooLarge(_))
    }

    /// Whether the sender gave up on the stream: reset it, lost its
    /// connection, or finished it inside a frame (what dropping an
    /// unfinished request does). Nothing was malformed, and nothing is
    /// answered.
    pub fn is_cancelled(&self) -> bool {
        matches!(
            self,
            FrameError::Read(_) | FrameError::Ended { .. } | FrameError::Header(_)
        )
    }
}

/// Reads one frame body of at most `max` bytes.
pub async fn read_frame(r: &mut quinn::RecvStream, max: usize) -> Result<Vec<u8>, FrameError> {
    let len = read_len(r).await?;
    read_body(r, len, max).await
}

/// Reads a frame's length header.
pub async fn read_len(r: &mut quinn::RecvStream) -> Result<usize, FrameError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    Ok(u32::from_be_bytes(len) as usize)
}

/// Reads the `len`-byte body of a frame whose header [`read_len`] read,
/// refusing a length over `max` before anything is read.
pub async fn read_body(
    r: &mut quinn::RecvStream,
    len: usize,
    max: usize,
) -> Result<Vec<u8>, FrameError> {
    if len > max {
        return Err(TooLarge { len, max }.into());
    }
    let mut buf = Vec::with_capacity(len.min(CHUNK));
    while buf.len() < len {
        let want = (len - buf.len()).min(CHUNK);
        match r.read_chunk(want, true).await? {
            Some(chunk) => buf.extend_from_slice(&chunk.bytes),
            None => {
                return Err(FrameError::Ended {
                    got: buf.len(),
                    len,
                });
            }
        }
    }
    Ok(buf)
}

/// Reads one framed message of at most [`MAX_FRAME`] bytes.
pub async fn read_msg<T: for<'de> Deserialize<'de>>(
    r: &mut quinn::RecvStream,
) -> Result<T, FrameError> {
    read_msg_max(r, MAX_FRAME).await
}

/// Reads one framed message of at most `max` bytes.
pub async fn read_msg_max<T: for<'de> Deserialize<'de>>(
    r: &mut quinn::RecvStream,
    max: usize,
) -> Result<T, FrameError> {
    let body = read_frame(r, max).await?;
    Ok(postcard::from_bytes(&body)?)
}

/// The frame of `msg`: length and body.
pub fn encode<T: Serialize>(msg: &T) -> anyhow::Result<Vec<u8>> {
    let body = postcard::to_allocvec(msg)?;
    let len = u32::try_from(body.len())?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Writes one framed message.
pub async fn write_msg<T: Serialize>(w: &mut quinn::SendStream, msg: &T) -> anyhow::Result<()> {
    w.write_all(&encode(msg)?).await?;
    Ok(())
}
