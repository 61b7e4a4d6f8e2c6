//! # chatd — rendezvous servers on a gossip overlay
//!
//! Layout: three layers, each importing only the ones below it.
//! - [`net`]: identities, pinned-key TLS, framing, and the overlay driver
//!   (`overlay::State` on tokio and QUIC).
//! - [`server`]: `chatd serve` — a thin driver of the sans-IO
//!   `rendezvous::Server` (membership, peer table, rendezvous,
//!   anti-entropy, relay pairing and every quota live there): client
//!   streams, notices, links to other servers, relay splicing, and
//!   [`server::admin`] (`/metrics`, `/healthz`, `/readyz`, `/status`).
//! - [`client`]: `chatd chat` and `lookup` — sessions with servers, hole
//!   punching, the relay socket, the chat state machine, known friends.
//! - [`config`]: the server's TOML file and its defaults.
//!
//! The wire types (client protocol, records, membership, server messages)
//! are `rendezvous`'s, shared by both sides.
//!
//! The binary (`src/main.rs`) wires them into `chatd serve`, `keygen`, `id`,
//! `status`, `lookup` and `chat`.

pub mod client;
pub mod config;
pub mod net;
pub mod server;
