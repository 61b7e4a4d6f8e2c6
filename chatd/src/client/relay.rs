//! Relay, the client's side: when two peers cannot reach each other
//! directly (or until they can), each asks the relay server the servers
//! chose for them with `Request::Relay(friend)` on a fresh stream; once
//! both asked (and they met through the cluster recently, or are both
//! online), the server answers both `Response::Relaying` and copies bytes
//! between the two streams ([`crate::server`] splices them, within a rate,
//! a byte cap and an idle timeout).
//!
//! After the request the stream carries datagrams, each framed as a
//! big-endian u16 length and the bytes — at once, without waiting for the
//! answer: the server reads the request only and leaves what follows in
//! the stream (within its flow-control window) until it splices, so the
//! chat's first packets cross the relay as soon as the friend's request
//! arrives. [`RelaySocket`] wraps the stream as a virtual UDP socket for a
//! quinn endpoint of its own; the first thing it reads is the server's
//! answer (reported on [`Answer`]). An empty datagram (length 0, never a
//! QUIC packet) marks the next one as an *early frame*: a first chat
//! message sealed to the friend's key, readable before the QUIC handshake
//! below has finished ([`crate::client::early`]); at most
//! [`MAX_EARLY_FRAMES`] are taken per stream. The chat runs an ordinary QUIC
//! connection through it, TLS 1.3 pinned to the friend's key: the server
//! sees only ciphertext and can neither read nor forge the chat (it can
//! only drop or delay it, which QUIC detects and the chat session
//! retries).

use bytes::Bytes;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::client::Refused;
use crate::client::early::{MAX_EARLY_FRAMES, MAX_EARLY_LEN};
use crate::net::framing::read_msg;
use crate::net::identity::ServerAddr;
use rendezvous::Response;

/// How long the server may take to answer a relay request (it holds it
/// until the friend asks too, at most its `relay_wait`, 15 s by default).
const ANSWER_WAIT: Duration = Duration::from_secs(30);

/// The server's answer to the relay request: `Ok` once it relays (then
/// datagrams flow), its refusal as a [`Refused`], or why there was none.
pub type Answer = tokio::sync::oneshot::Receiver<anyhow::Result<()>>;

/// Largest datagram carried (a QUIC packet is at most ~1,500 bytes here).
pub const MAX_DATAGRAM: usize = 65_535;

/// The address a relayed connection's peer appears at (the virtual socket
/// ignores addresses; quinn needs one).
pub const RELAY_PEER_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(0, 0, 0, 1)), 1);

/// Datagrams queued in either direction before the virtual socket drops
/// (as a full UDP buffer would; QUIC retransmits).
const QUEUE: usize = 256;

/// A relay stream as a UDP socket for quinn: each datagram quinn sends is
/// framed onto the stream, each framed datagram read from it is received
/// from [`RELAY_PEER_ADDR`].
#[derive(Debug)]
pub struct RelaySocket {
    /// Datagrams to write; `true` marks an early frame.
    out: tokio::sync::mpsc::Sender<(bool, Bytes)>,
    inbox: Mutex<tokio::sync::mpsc::Receiver<Bytes>>,
    local: SocketAddr,
}

impl RelaySocket {
    /// Wraps a relay stream on which the request to `server` was just
    /// written. `closed` fires when the stream ends either way (the
    /// relayed path is gone); `answer` when the server answered.
    pub fn new(
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        local: SocketAddr,
        server: ServerAddr,
    ) -> (
        Arc<RelaySocket>,
        tokio::sync::oneshot::Receiver<()>,
        Answer,
        tokio::sync::mpsc::Receiver<Bytes>,
    ) {
        let (out, mut outq) = tokio::sync::mpsc::channel::<(bool, Bytes)>(QUEUE);
        let (inq, inbox) = tokio::sync::mpsc::channel::<Bytes>(QUEUE);
        let (earlyq, early) = tokio::sync::mpsc::channel::<Bytes>(MAX_EARLY_FRAMES);
        let (closed_tx, closed) = tokio::sync::oneshot::channel();
        let (answer_tx, answer) = tokio::sync::oneshot::channel();
        let writer = tokio::spawn(async move {
            while let Some((early, d)) = outq.recv().await {
                // An early frame: an empty datagram (never a QUIC packet)
                // marks the next one as early (see the module's doc).
                if early && send.write_all(&[0, 0]).await.is_err() {
                    return;
                }
                let len = (d.len() as u16).to_be_bytes();
                if send.write_all(&len).await.is_err() || send.write_all(&d).await.is_err() {
                    return;
                }
            }
            let _ = send.finish();
        });
        tokio::spawn(async move {
            let answered =
                match tokio::time::timeout(ANSWER_WAIT, read_msg::<Response>(&mut recv)).await {
                    Ok(Ok(Response::Relaying)) => Ok(()),
                    Ok(Ok(Response::Error(refusal))) => Err(Refused { server, refusal }.into()),
                    Ok(Ok(other)) => Err(anyhow::anyhow!("{server}: unexpected answer {other:?}")),
                    Ok(Err(e)) => Err(anyhow::anyhow!(
                        "{server}: no answer to the relay request: {e}"
                    )),
                    Err(_) => Err(anyhow::anyhow!(
                        "{server}: no answer to the relay request within {ANSWER_WAIT:?}"
                    )),
                };
            let relaying = answered.is_ok();
            let _ = answer_tx.send(answered);
            // After `Relaying`: datagrams until the stream ends.
            if relaying {
                let (mut marked, mut earlies) = (false, 0usize);
                loop {
                    let mut len = [0u8; 2];
                    if recv.read_exact(&mut len).await.is_err() {
                        break;
                    }
                    let len = usize::from(u16::from_be_bytes(len));
                    if len == 0 {
                        marked = true;
                        continue;
                    }
                    let mut d = vec![0u8; len];
                    if recv.read_exact(&mut d).await.is_err() {
                        break;
                    }
                    if std::mem::take(&mut marked) {
                        // The first few, of a bounded size, to the chat;
                        // the rest dropped.
                        earlies += 1;
                        if earlies <= MAX_EARLY_FRAMES && len <= MAX_EARLY_LEN {
                            let _ = earlyq.try_send(Bytes::from(d));
                        }
                        continue;
                    }
                    // A full queue drops, like a full socket buffer.
                    let _ = inq.try_send(Bytes::from(d));
                }
            }
            writer.abort();
            let _ = closed_tx.send(());
        });
        (
            Arc::new(RelaySocket {
                out,
                inbox: Mutex::new(inbox),
                local,
            }),
            closed,
            answer,
            early,
        )
    }

    /// Sends an early frame ([`crate::client::early`]) to the friend, after
    /// what was written before; `false` if the queue is full or closed.
    pub fn send_early(&self, frame: Bytes) -> bool {
        frame.len() <= MAX_EARLY_LEN && self.out.try_send((true, frame)).is_ok()
    }
}

#[derive(Debug)]
struct AlwaysWritable;

impl quinn::UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl quinn::AsyncUdpSocket for RelaySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> io::Result<()> {
        if transmit.contents.is_empty() {
            // Length 0 marks an early frame on the stream; nothing to send.
            return Ok(());
        }
        if transmit.contents.len() > MAX_DATAGRAM {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "datagram too large for the relay",
            ));
        }
        // Full or closed: the datagram is lost, as on a real network.
        let _ = self
            .out
            .try_send((false, Bytes::copy_from_slice(transmit.contents)));
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let (Some(buf), Some(m)) = (bufs.first_mut(), meta.first_mut()) else {
            return Poll::Ready(Ok(0));
        };
        let mut inbox = crate::net::lock(&self.inbox);
        match inbox.poll_recv(cx) {
            Poll::Ready(Some(d)) => {
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                *m = quinn::udp::RecvMeta {
                    addr: RELAY_PEER_ADDR,
                    len: n,
                    stride: n,
                    ecn: None,
                    dst_ip: None,
                };
                Poll::Ready(Ok(1))
            }
            // Closed: nothing more will come; the connection times out or
            // is closed by whoever watches `closed`.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn may_fragment(&self) -> bool {
        false
    }
}
