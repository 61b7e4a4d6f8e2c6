//! # rendezvous — the sans-IO application core of a chatd server
//!
//! Everything a rendezvous server decides, as a deterministic state
//! machine in the style of `overlay` (and quinn-proto): no sockets, no
//! threads, no clock, no global RNG. `chatd serve` drives it over QUIC;
//! `sim servers` drives thousands of them in simulated time.
//!
//! Layout, one concept per file:
//! - [`record`]: signed peer records and every bound on them (names,
//!   `seq` against the clock, expiry, private addresses).
//! - [`table`]: the replicated peer table: last-writer-wins, names held by
//!   their first holder, expiry indexes, per-home counts, the incremental
//!   anti-entropy digest.
//! - [`members`]: server membership (signed announces, leaves, suspicions).
//! - [`proto`]: the wire types: client requests and responses with typed
//!   error codes, notices, broadcast payloads, server-to-server messages.
//! - [`limit`]: token buckets.
//! - [`mailbox`]: offline messages: sealed letters kept by two servers
//!   until collected, every quota, where they live (rendezvous hashing).
//! - [`latency`]: latency-aware choices as pure rules: the relay for a
//!   pair (min–max RTT), the home, the probe sample, when moving pays.
//! - [`server`]: the [`Server`]: inputs in, outputs out, every quota.
//!
//! ```
//! use rendezvous::server::{Config, Input, Now, Server};
//! use overlay::{PeerId, Time};
//!
//! let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
//! let me = PeerId(key.verifying_key().to_bytes());
//! let now = Now { mono: Time::ZERO, unix_ms: 1_700_000_000_000 };
//! let mut server = Server::new(me, key, Config::default(), now, 1);
//! server.handle(now, Input::Tick);
//! // The first heartbeat: an announce to broadcast.
//! assert!(server.drain_outputs().count() >= 1);
//! ```

pub mod latency;
pub mod limit;
pub mod mailbox;
pub mod members;
pub mod proto;
pub mod record;
pub mod server;
pub mod table;

pub use latency::LatencyVector;
pub use mailbox::{Letter, LetterId, MailLimits};
pub use members::{Liveness, Members, Msg, ServerRecord};
pub use proto::{ErrorCode, FriendRef, Notice, Payload, Refusal, Request, Response, ServerMsg};
pub use record::{NatMapping, PeerRecord, RecordBody, RecordError};
pub use server::{Config, ConnId, Input, Malformed, Now, Output, ReqId, Server};
pub use table::PeerTable;
