//! Length-prefixed postcard messages on QUIC streams: a u32 big-endian
//! length, then the body. Reading never trusts the announced length: the
//! buffer grows with the bytes that actually arrive (a peer announcing
//! 64 KiB and sending 10 bytes costs 10 bytes), and a length over the limit
//! is an error before anything else is read.

use serde::{Deserialize, Serialize};

pub use rendezvous::proto::{MAX_FRAME, MAX_SERVER_FRAME};

/// Largest client request (bytes): a registration with its withdrawal is
/// under 1.5 KiB; nothing a client asks needs more.
pub const MAX_REQUEST: usize = 8 * 1024;

/// How much is read at once.
const CHUNK: usize = 16 * 1024;

/// Reads one frame body of at most `max` bytes.
pub async fn read_frame(r: &mut quinn::RecvStream, max: usize) -> anyhow::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    anyhow::ensure!(
        len <= max,
        "frame of {len} bytes is over the {max}-byte limit"
    );
    let mut buf = Vec::with_capacity(len.min(CHUNK));
    while buf.len() < len {
        let want = (len - buf.len()).min(CHUNK);
        match r.read_chunk(want, true).await? {
            Some(chunk) => buf.extend_from_slice(&chunk.bytes),
            None => anyhow::bail!("stream ended {} bytes into a {len}-byte frame", buf.len()),
        }
    }
    Ok(buf)
}

/// Reads one framed message of at most [`MAX_FRAME`] bytes.
pub async fn read_msg<T: for<'de> Deserialize<'de>>(
    r: &mut quinn::RecvStream,
) -> anyhow::Result<T> {
    read_msg_max(r, MAX_FRAME).await
}

/// Reads one framed message of at most `max` bytes.
pub async fn read_msg_max<T: for<'de> Deserialize<'de>>(
    r: &mut quinn::RecvStream,
    max: usize,
) -> anyhow::Result<T> {
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
