//! Chat semantics between two peers, independent of the path they use
//! (direct QUIC, relay, or a path re-established after a break):
//! - every message has a unique id (session epoch + sequence number);
//! - it is acknowledged, and retried until it is;
//! - the receiver drops duplicates and delivers in order;
//! - a message longer than [`MAX_CHARS`] characters is refused before
//!   anything is sent.
//!
//! A pure state machine: time comes in as an argument, frames go in and
//! out; the chat command moves frames over whatever connection it has. The
//! session outlives connections, so a re-established path neither loses
//! nor duplicates a message.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Longest message, in characters (seed 002).
pub const MAX_CHARS: usize = 2048;

/// Delivered in place of a received message over [`MAX_CHARS`].
pub const OVERLONG: &str = "[a message over the 2048-character limit was dropped]";

/// What travels between the two peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// A message: `seq` counts from 1 within the sender's session `epoch`.
    Msg {
        /// The sender's session (random per run).
        epoch: u64,
        /// Position in the sender's stream.
        seq: u64,
        /// The text.
        text: String,
    },
    /// Everything up to and including `seq` of `epoch` was delivered.
    Ack {
        /// The session acknowledged.
        epoch: u64,
        /// Cumulative acknowledgement.
        seq: u64,
    },
    /// The first frame on a new path: opens the stream at once, so the
    /// accepting side sees the path before the first message.
    Hello,
    /// "I have nothing more to send and all of it was acknowledged" — so
    /// the receiver has every message of ours. Repeated until the peer says
    /// it too; then either side may close without losing a message.
    Bye,
    /// "I am moving this relayed chat to relay server `relay`": the friend
    /// follows (a path frame: the chat session ignores it). The two sides
    /// rank relays from the same reports but may act on different rankings
    /// (they arrive in different orders, with RTTs measured a moment
    /// apart): without it one side could move while the other stays.
    Moving {
        /// The relay server's id.
        relay: overlay::PeerId,
    },
}

/// Why a message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChatError {
    /// Too long; nothing was sent.
    #[error(
        "message of {chars} characters is over the {MAX_CHARS}-character limit; nothing was sent"
    )]
    TooLong {
        /// Its length.
        chars: usize,
    },
}

#[derive(Clone, Debug)]
struct Outgoing {
    text: String,
    last_sent: Option<Instant>,
    attempts: u32,
}

/// One side of a chat.
#[derive(Debug)]
pub struct Session {
    epoch: u64,
    next_seq: u64,
    unacked: BTreeMap<u64, Outgoing>,
    /// The peer's session we are receiving, and the next seq we expect.
    peer_epoch: Option<u64>,
    expected: u64,
    early: BTreeMap<u64, String>,
    ack_due: bool,
    retry_after: Duration,
    /// Our input ended: say `Bye` once everything is acknowledged.
    finishing: bool,
    last_bye: Option<Instant>,
    /// The peer said `Bye`.
    peer_done: bool,
}

impl Session {
    /// A new session; `epoch` should be random (it makes ids unique across
    /// runs). `retry_after` is the first retransmission timeout; it doubles
    /// per attempt up to 8×.
    pub fn new(epoch: u64, retry_after: Duration) -> Self {
        Session {
            epoch,
            next_seq: 1,
            unacked: BTreeMap::new(),
            peer_epoch: None,
            expected: 1,
            early: BTreeMap::new(),
            ack_due: false,
            retry_after,
            finishing: false,
            last_bye: None,
            peer_done: false,
        }
    }

    /// Queues a message; returns its id `(epoch, seq)`.
    pub fn send(&mut self, text: &str) -> Result<(u64, u64), ChatError> {
        let chars = text.chars().count();
        if chars > MAX_CHARS {
            return Err(ChatError::TooLong { chars });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.unacked.insert(
            seq,
            Outgoing {
                text: text.to_string(),
                last_sent: None,
                attempts: 0,
            },
        );
        Ok((self.epoch, seq))
    }

    /// Our input ended: no more messages will be queued.
    pub fn finish(&mut self) {
        self.finishing = true;
    }

    /// Both sides are finished and everything is acknowledged both ways:
    /// closing now loses nothing.
    pub fn done(&self) -> bool {
        self.finishing && self.unacked.is_empty() && self.peer_done
    }

    /// The peer said it has nothing more to send.
    pub fn peer_done(&self) -> bool {
        self.peer_done
    }

    /// Messages sent but not acknowledged yet.
    pub fn pending(&self) -> usize {
        self.unacked.len()
    }

    /// The texts of the messages not acknowledged (yet), in order.
    pub fn undelivered(&self) -> Vec<String> {
        self.unacked.values().map(|m| m.text.clone()).collect()
    }

    /// The first `max` messages not acknowledged, as frames, without
    /// counting them sent: what may go ahead of a path as early frames
    /// ([`crate::client::early`]); they are sent on the path all the same.
    pub fn early_frames(&self, max: usize) -> Vec<Frame> {
        self.unacked
            .iter()
            .take(max)
            .map(|(&seq, m)| Frame::Msg {
                epoch: self.epoch,
                seq,
                text: m.text.clone(),
            })
            .collect()
    }

    /// Frames to transmit now: new messages, those whose retry timeout
    /// passed, and an acknowledgement if one is due.
    pub fn poll_transmit(&mut self, now: Instant) -> Vec<Frame> {
        let mut out = Vec::new();
        for (&seq, m) in self.unacked.iter_mut() {
            let backoff = self.retry_after * (1u32 << m.attempts.min(3));
            let due = m
                .last_sent
                .is_none_or(|t| now.saturating_duration_since(t) >= backoff);
            if due {
                m.last_sent = Some(now);
                m.attempts = m.attempts.saturating_add(1);
                out.push(Frame::Msg {
                    epoch: self.epoch,
                    seq,
                    text: m.text.clone(),
                });
            }
        }
        if self.finishing && self.unacked.is_empty() {
            let due = self
                .last_bye
                .is_none_or(|t| now.saturating_duration_since(t) >= self.retry_after);
            if due {
                self.last_bye = Some(now);
                out.push(Frame::Bye);
            }
        }
        if self.ack_due {
            self.ack_due = false;
            if let Some(epoch) = self.peer_epoch {
                out.push(Frame::Ack {
                    epoch,
                    seq: self.expected - 1,
                });
            }
        }
        out
    }

    /// After a path was re-established: resend everything unacknowledged at
    /// once (the old path may have eaten it) and acknowledge again.
    pub fn path_changed(&mut self) {
        for m in self.unacked.values_mut() {
            m.last_sent = None;
        }
        self.last_bye = None;
        self.ack_due = self.peer_epoch.is_some();
    }

    /// Takes a frame from the peer; returns the messages now deliverable,
    /// in order, each exactly once.
    pub fn on_frame(&mut self, frame: Frame) -> Vec<String> {
        match frame {
            Frame::Hello | Frame::Moving { .. } => Vec::new(),
            Frame::Bye => {
                self.peer_done = true;
                Vec::new()
            }
            Frame::Ack { epoch, seq } => {
                if epoch == self.epoch {
                    self.unacked.retain(|&s, _| s > seq);
                }
                Vec::new()
            }
            Frame::Msg { epoch, seq, text } => {
                if self.peer_epoch != Some(epoch) {
                    // The peer restarted: a new stream starts at 1.
                    self.peer_epoch = Some(epoch);
                    self.expected = 1;
                    self.early.clear();
                }
                // Acknowledge even duplicates: our last ack may have been lost.
                self.ack_due = true;
                if seq < self.expected {
                    return Vec::new();
                }
                // Over the limit (a peer that does not check): shown as a
                // note in its place, so the stream and the acks go on.
                let text = if text.chars().count() > MAX_CHARS {
                    OVERLONG.to_string()
                } else {
                    text
                };
                self.early.entry(seq).or_insert(text);
                let mut out = Vec::new();
                while let Some(t) = self.early.remove(&self.expected) {
                    out.push(t);
                    self.expected += 1;
                }
                // Bound what a peer can make us buffer out of order.
                while self.early.len() > 4096 {
                    self.early.pop_last();
                }
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overlong_message_from_the_peer_takes_its_place_without_stalling() {
        let mut s = Session::new(1, Duration::from_secs(1));
        let long = "x".repeat(MAX_CHARS + 1);
        let got = s.on_frame(Frame::Msg {
            epoch: 9,
            seq: 1,
            text: long,
        });
        assert_eq!(got, vec![OVERLONG.to_string()]);
        let got = s.on_frame(Frame::Msg {
            epoch: 9,
            seq: 2,
            text: "next".into(),
        });
        assert_eq!(got, vec!["next".to_string()]);
    }
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    #[test]
    fn a_too_long_message_is_refused_and_nothing_is_sent() {
        let mut s = Session::new(1, Duration::from_millis(100));
        let long: String = "é".repeat(MAX_CHARS + 1);
        assert_eq!(
            s.send(&long),
            Err(ChatError::TooLong {
                chars: MAX_CHARS + 1
            })
        );
        assert!(s.poll_transmit(Instant::now()).is_empty());
        assert!(
            s.send(&"é".repeat(MAX_CHARS)).is_ok(),
            "exactly the limit is fine"
        );
    }

    #[test]
    fn ids_are_unique_even_for_equal_texts() {
        let mut s = Session::new(7, Duration::from_millis(100));
        assert_ne!(s.send("hi").unwrap(), s.send("hi").unwrap());
    }

    /// Two sessions over a channel that drops 30%, duplicates 20% and
    /// reorders everything, with the path "re-established" now and then:
    /// every message arrives exactly once, in order, and all get acked.
    #[test]
    fn lossy_duplicating_reordering_paths_lose_and_duplicate_nothing() {
        for seed in 0..20u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut a = Session::new(100 + seed, Duration::from_millis(50));
            let mut b = Session::new(200 + seed, Duration::from_millis(50));
            let sent_a: Vec<String> = (0..60).map(|i| format!("a{i}")).collect();
            let sent_b: Vec<String> = (0..40).map(|i| format!("b{i}")).collect();
            let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
            let mut in_flight: Vec<(bool, Frame)> = Vec::new(); // (to_b, frame)
            let start = Instant::now();
            let (mut ia, mut ib) = (0, 0);
            for step in 0..5000u32 {
                let now = start + Duration::from_millis(u64::from(step) * 10);
                if ia < sent_a.len() && rng.random_bool(0.3) {
                    a.send(&sent_a[ia]).unwrap();
                    ia += 1;
                }
                if ib < sent_b.len() && rng.random_bool(0.3) {
                    b.send(&sent_b[ib]).unwrap();
                    ib += 1;
                }
                if step % 700 == 699 {
                    a.path_changed();
                    b.path_changed();
                }
                for f in a.poll_transmit(now) {
                    in_flight.push((true, f));
                }
                for f in b.poll_transmit(now) {
                    in_flight.push((false, f));
                }
                // Deliver a random few, losing and duplicating some.
                let n = in_flight.len().min(3);
                for _ in 0..n {
                    let i = rng.random_range(0..in_flight.len());
                    let (to_b, f) = in_flight.swap_remove(i);
                    if rng.random_bool(0.3) {
                        continue;
                    }
                    if rng.random_bool(0.2) {
                        in_flight.push((to_b, f.clone()));
                    }
                    if to_b {
                        got_b.extend(b.on_frame(f));
                    } else {
                        got_a.extend(a.on_frame(f));
                    }
                }
                if ia == sent_a.len() {
                    a.finish();
                }
                if ib == sent_b.len() {
                    b.finish();
                }
                if a.done() && b.done() {
                    break;
                }
            }
            assert_eq!(
                got_b, sent_a,
                "seed {seed}: b received a's messages exactly once, in order"
            );
            assert_eq!(got_a, sent_b, "seed {seed}");
            assert_eq!(
                (a.pending(), b.pending()),
                (0, 0),
                "seed {seed}: everything acknowledged"
            );
            assert!(a.done() && b.done(), "seed {seed}: both said bye");
        }
    }

    /// `done` only when both finished and everything was delivered: a
    /// peer's bye means we hold all of its messages.
    #[test]
    fn done_needs_both_byes_and_no_pending_messages() {
        let now = Instant::now();
        let mut a = Session::new(1, Duration::from_millis(50));
        let mut b = Session::new(2, Duration::from_millis(50));
        a.send("last words").unwrap();
        a.finish();
        b.finish();
        // a's message is unacknowledged: no bye from a yet.
        let from_a = a.poll_transmit(now);
        assert!(!from_a.contains(&Frame::Bye));
        let got: Vec<String> = from_a.into_iter().flat_map(|f| b.on_frame(f)).collect();
        assert_eq!(got, vec!["last words"]);
        assert!(!a.done() && !b.done());
        // b acks and says bye; a then has nothing pending and says bye.
        for f in b.poll_transmit(now) {
            a.on_frame(f);
        }
        assert!(a.peer_done() && a.done());
        for f in a.poll_transmit(now) {
            b.on_frame(f);
        }
        assert!(b.done());
    }

    #[test]
    fn a_restarted_peer_starts_a_new_stream() {
        let mut b = Session::new(2, Duration::from_millis(50));
        let mut a1 = Session::new(10, Duration::from_millis(50));
        a1.send("one").unwrap();
        let now = Instant::now();
        let delivered: Vec<String> = a1
            .poll_transmit(now)
            .into_iter()
            .flat_map(|f| b.on_frame(f))
            .collect();
        assert_eq!(delivered, vec!["one"]);
        // a restarts (new epoch): its seq 1 is a new message, not a duplicate.
        let mut a2 = Session::new(11, Duration::from_millis(50));
        a2.send("two").unwrap();
        let delivered: Vec<String> = a2
            .poll_transmit(now)
            .into_iter()
            .flat_map(|f| b.on_frame(f))
            .collect();
        assert_eq!(delivered, vec!["two"]);
    }
}
