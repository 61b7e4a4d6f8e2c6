//! Relay, the client's side: when two peers cannot reach each other
//! directly, each asks the relay server (the home server of the peer with
//! the lower id) with `Request::Relay(friend)` on a fresh stream; once both
//! asked (and they met through the cluster recently), the server answers
//! both `Response::Relaying` and copies bytes between the two streams
//! ([`crate::server`] splices them, within a rate, a byte cap and an idle
//! timeout).
//!
//! After `Relaying`, the stream carries datagrams, each framed as a
//! big-endian u16 length and the bytes. [`RelaySocket`] wraps the stream as
//! a virtual UDP socket for a quinn endpoint of its own, and the chat runs
//! an ordinary QUIC connection through it, TLS 1.3 pinned to the friend's
//! key: the server sees only ciphertext and can neither read nor forge the
//! chat (it can only drop or delay it, which QUIC detects and the chat
//! session retries).

use bytes::Bytes;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

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
    out: tokio::sync::mpsc::Sender<Bytes>,
    inbox: Mutex<tokio::sync::mpsc::Receiver<Bytes>>,
    local: SocketAddr,
}

impl RelaySocket {
    /// Wraps a relay stream (after `Relaying`). `closed` fires when the
    /// stream ends either way (the relayed path is gone).
    pub fn new(
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        local: SocketAddr,
    ) -> (Arc<RelaySocket>, tokio::sync::oneshot::Receiver<()>) {
        let (out, mut outq) = tokio::sync::mpsc::channel::<Bytes>(QUEUE);
        let (inq, inbox) = tokio::sync::mpsc::channel::<Bytes>(QUEUE);
        let (closed_tx, closed) = tokio::sync::oneshot::channel();
        let writer = tokio::spawn(async move {
            while let Some(d) = outq.recv().await {
                let len = (d.len() as u16).to_be_bytes();
                if send.write_all(&len).await.is_err() || send.write_all(&d).await.is_err() {
                    return;
                }
            }
            let _ = send.finish();
        });
        tokio::spawn(async move {
            loop {
                let mut len = [0u8; 2];
                if recv.read_exact(&mut len).await.is_err() {
                    break;
                }
                let mut d = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if recv.read_exact(&mut d).await.is_err() {
                    break;
                }
                // A full queue drops, like a full socket buffer.
                let _ = inq.try_send(Bytes::from(d));
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
        )
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
        if transmit.contents.len() > MAX_DATAGRAM {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "datagram too large for the relay",
            ));
        }
        // Full or closed: the datagram is lost, as on a real network.
        let _ = self.out.try_send(Bytes::copy_from_slice(transmit.contents));
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
