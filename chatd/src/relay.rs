//! Relay: when two peers cannot reach each other directly, a server splices
//! two client streams and forwards opaque datagrams between them.
//!
//! **Server side** ([`Relays`]). A client sends `Request::Relay(friend)` on
//! a fresh stream of its `chatd-client/1` connection to the relay server
//! (the home server of the peer with the lower id). The server holds that
//! stream until the friend asks for the same pairing (at most
//! [`RelayLimits::wait`]), answers both with `Response::Relaying` and from
//! then on copies bytes between the two streams, counting them, at most
//! [`RelayLimits::bytes_per_sec`] per direction. Pairing is authenticated:
//! the server knows each connection's peer id from its certificate, and a
//! pair forms only when A asked for B and B asked for A. Limits per client
//! (relay streams open or waiting) and per server (relay sessions) refuse
//! the excess with an error the client reports.
//!
//! **Client side** ([`RelaySocket`]). After `Relaying`, the stream carries
//! datagrams, each framed as a big-endian u16 length and the bytes. The
//! client wraps the stream as a virtual UDP socket for a quinn endpoint of
//! its own and runs an ordinary chat QUIC connection through it, TLS 1.3
//! pinned to the friend's key: the server sees only ciphertext and can
//! neither read nor forge the chat (it can only drop or delay it, which
//! QUIC detects and the chat session retries).

use crate::limit::TokenBucket;
use crate::registry::{Response, write_msg};
use bytes::Bytes;
use overlay::PeerId;
use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// Limits on what the relay gives each client and in all.
#[derive(Clone, Debug)]
pub struct RelayLimits {
    /// Relay streams one client may have open or waiting at once.
    pub max_per_client: usize,
    /// Relay sessions (pairs) the server carries at once.
    pub max_sessions: usize,
    /// Bytes per second forwarded in each direction of a session.
    pub bytes_per_sec: u64,
    /// How long the first of a pair waits for the second.
    pub wait: Duration,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            max_per_client: 2,
            max_sessions: 1000,
            bytes_per_sec: 256 * 1024,
            wait: Duration::from_secs(15),
        }
    }
}

/// Largest datagram carried (a QUIC packet is at most ~1,500 bytes here).
pub const MAX_DATAGRAM: usize = 65_535;

type Half = (quinn::SendStream, quinn::RecvStream, Slot);

#[derive(Default)]
struct Inner {
    /// Halves waiting for their friend, by (who, friend).
    pending: HashMap<(PeerId, PeerId), tokio::sync::oneshot::Sender<Half>>,
    /// Relay streams per client (open or waiting).
    per_client: HashMap<PeerId, usize>,
    /// Sessions carried now.
    sessions: usize,
}

/// The server's relay: waiting halves, counts and limits.
pub struct Relays {
    limits: RelayLimits,
    inner: Mutex<Inner>,
}

/// One client's claim on a relay stream; released on drop.
struct Slot {
    relays: Arc<Relays>,
    peer: PeerId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.relays.lock();
        if let Some(n) = inner.per_client.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                inner.per_client.remove(&self.peer);
            }
        }
    }
}

/// Why a relay request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RelayError {
    /// The client already has `max_per_client` relay streams.
    #[error("relay limit: at most {0} relay streams per client")]
    PerClient(usize),
    /// The server carries `max_sessions` sessions.
    #[error("relay full: this server carries {0} relay sessions already")]
    Full(usize),
    /// A client asked to be relayed to itself.
    #[error("cannot relay to yourself")]
    SelfRelay,
    /// The friend did not ask for the relay in time.
    #[error("the friend did not join the relay within {0:?}")]
    NoFriend(Duration),
}

impl RelayError {
    fn kind(&self) -> &'static str {
        match self {
            RelayError::PerClient(_) => "per_client",
            RelayError::Full(_) => "full",
            RelayError::SelfRelay => "self",
            RelayError::NoFriend(_) => "no_friend",
        }
    }
}

impl Relays {
    /// A relay with `limits`.
    pub fn new(limits: RelayLimits) -> Arc<Relays> {
        Arc::new(Relays {
            limits,
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Relay sessions carried now.
    pub fn sessions(&self) -> usize {
        self.lock().sessions
    }

    /// Takes a relay request from `peer` for `friend` on its stream: pairs
    /// it with the friend's, or waits for it, then forwards until either
    /// side ends. Errors are answered on the stream and counted.
    pub async fn serve(
        self: Arc<Self>,
        peer: PeerId,
        friend: PeerId,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) {
        if let Err((e, mut send)) = self.pair(peer, friend, send, recv).await {
            metrics::counter!("chatd_relay_refused_total", "reason" => e.kind()).increment(1);
            tracing::debug!(error = %e, "relay request refused");
            let _ = write_msg(&mut send, &Response::Error(e.to_string())).await;
            let _ = send.finish();
        }
    }

    async fn pair(
        self: Arc<Self>,
        peer: PeerId,
        friend: PeerId,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> Result<(), (RelayError, quinn::SendStream)> {
        if peer == friend {
            return Err((RelayError::SelfRelay, send));
        }
        let (slot, partner, waiter) = {
            let mut inner = self.lock();
            let n = inner.per_client.get(&peer).copied().unwrap_or(0);
            if n >= self.limits.max_per_client {
                return Err((RelayError::PerClient(self.limits.max_per_client), send));
            }
            if inner.sessions >= self.limits.max_sessions {
                return Err((RelayError::Full(self.limits.max_sessions), send));
            }
            let partner = inner.pending.remove(&(friend, peer));
            *inner.per_client.entry(peer).or_insert(0) += 1;
            let waiter = if partner.is_none() {
                // Forget halves whose waiter gave up, then wait ourselves
                // (a newer request from the same client replaces an older).
                inner.pending.retain(|_, tx| !tx.is_closed());
                let (tx, rx) = tokio::sync::oneshot::channel();
                inner.pending.insert((peer, friend), tx);
                Some(rx)
            } else {
                inner.sessions += 1;
                None
            };
            let slot = Slot {
                relays: self.clone(),
                peer,
            };
            (slot, partner, waiter)
        };
        if let Some(tx) = partner {
            // The friend is waiting: hand it our half; it runs the session.
            if let Err((send, _, _)) = tx.send((send, recv, slot)) {
                // It gave up just now.
                self.lock().sessions -= 1;
                return Err((RelayError::NoFriend(self.limits.wait), send));
            }
            return Ok(());
        }
        let Some(rx) = waiter else { return Ok(()) };
        let theirs = match tokio::time::timeout(self.limits.wait, rx).await {
            Ok(Ok(half)) => half,
            _ => {
                drop(slot);
                return Err((RelayError::NoFriend(self.limits.wait), send));
            }
        };
        self.splice((send, recv, slot), theirs).await;
        self.lock().sessions -= 1;
        Ok(())
    }

    /// Tells both halves they are relayed, then copies both ways until both
    /// directions end.
    async fn splice(&self, a: Half, b: Half) {
        let (mut a_send, a_recv, _a_slot) = a;
        let (mut b_send, b_recv, _b_slot) = b;
        if write_msg(&mut a_send, &Response::Relaying).await.is_err()
            || write_msg(&mut b_send, &Response::Relaying).await.is_err()
        {
            return;
        }
        metrics::counter!("chatd_relay_sessions_total").increment(1);
        metrics::gauge!("chatd_relay_sessions").increment(1.0);
        let rate = self.limits.bytes_per_sec;
        tokio::join!(copy(a_recv, b_send, rate), copy(b_recv, a_send, rate));
        metrics::gauge!("chatd_relay_sessions").decrement(1.0);
    }
}

/// Copies `from` to `to` at most `rate` bytes per second (a token bucket
/// holding one second), counting bytes; ends the other side with the same
/// end (finish or reset).
async fn copy(mut from: quinn::RecvStream, mut to: quinn::SendStream, rate: u64) {
    let rate = rate.max(1500) as f64;
    let mut buf = vec![0u8; 16 * 1024];
    let mut bucket = TokenBucket::new(rate, rate, std::time::Instant::now());
    loop {
        let n = match from.read(&mut buf).await {
            Ok(Some(n)) => n,
            Ok(None) => {
                let _ = to.finish();
                return;
            }
            Err(_) => {
                let _ = to.reset(0u32.into());
                return;
            }
        };
        let wait = bucket.take_or_wait(n as f64, std::time::Instant::now());
        if !wait.is_zero() {
            metrics::counter!("chatd_relay_throttled_total").increment(1);
            tokio::time::sleep(wait).await;
        }
        metrics::counter!("chatd_relay_bytes_total").increment(n as u64);
        if to.write_all(&buf[..n]).await.is_err() {
            let _ = from.stop(0u32.into());
            return;
        }
    }
}

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
        let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
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
