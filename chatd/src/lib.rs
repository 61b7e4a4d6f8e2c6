//! # chatd — rendezvous servers on a gossip overlay
//!
//! Layout, one concept per file:
//! - [`identity`]: ed25519 keys, ids in text form, `ID@HOST:PORT`.
//! - [`tls`]: certificates carrying the identity key, pinned-key and
//!   cluster-admission verifiers.
//! - [`driver`]: the overlay core on tokio and QUIC: connections, framing,
//!   timers, bounded queues, deliveries.
//! - [`config`]: the TOML file and its defaults.
//! - [`framing`]: length-prefixed postcard messages on QUIC streams.
//! - [`server`]: the rendezvous server: a thin driver of the sans-IO
//!   `rendezvous::Server` (membership, peer table, rendezvous,
//!   anti-entropy, relay pairing, quotas all live there), client streams,
//!   notices, server links, relay splicing.
//! - [`client`]: the client side of the client protocol; [`relay`]: the
//!   client's virtual socket over a relay stream.
//! - [`chatclient`]: `chatd chat` (rendezvous, NAT kind, relay client,
//!   re-homing when a server dies, the conversation); [`punch`]: the direct
//!   path (probes, birthday method); [`friends`]: known friends' keys
//!   (trust on first use) and the client's data dir.
//! - [`chat`]: chat semantics between two peers (ids, acks, retries,
//!   dedup, order, length limit) as a pure state machine (issue 6).
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`, `/status`.
//!
//! The binary (`src/main.rs`) wires them into `chatd serve`, `keygen`, `id`,
//! `status`, `lookup` and `chat`.

pub mod admin;
pub mod chat;
pub mod chatclient;
pub mod client;
pub mod config;
pub mod driver;
pub mod framing;
pub mod friends;
pub mod identity;
pub mod punch;
pub mod relay;
pub mod server;
pub mod tls;
