//! The transport layer both sides share: identities and their text forms,
//! pinned-key TLS, length-prefixed framing on QUIC streams, and the overlay
//! driver (the sans-IO `overlay::State` on tokio and QUIC). Knows nothing of
//! what servers or clients say.

pub mod driver;
pub mod framing;
pub mod identity;
pub mod tls;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_millis() -> u64 {
    std::time::SystemTime::UNIX_EPOCH
        .elapsed()
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Locks a mutex, carrying on with the data if a holder panicked (the data
/// guarded in chatd is plain values, consistent between statements): the
/// one place poisoning is handled.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Resolves once `conn` has received no packet for `silence`, looking
/// every `step` (a connection that carries a keep-alive the peer
/// acknowledges is silent only when the peer, or the path, is gone).
pub async fn silent_for(
    conn: &quinn::Connection,
    silence: std::time::Duration,
    step: std::time::Duration,
) {
    let mut last = conn.stats().udp_rx.datagrams;
    let mut heard = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(step).await;
        let now = conn.stats().udp_rx.datagrams;
        if now != last {
            (last, heard) = (now, tokio::time::Instant::now());
        } else if heard.elapsed() >= silence {
            return;
        }
    }
}
