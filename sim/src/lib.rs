//! # sim — the overlay at scale, in simulated time
//!
//! A deterministic discrete-event simulator that drives thousands of
//! unchanged `overlay` cores: per-link latency, loss, crashes, churn and
//! partitions, measured round by round (delivery, RMR, LDH, latency,
//! components, view fill, traffic by message type).
//!
//! - [`engine`]: simulated time, event queue, network model, and the
//!   [`engine::Engine`] trait every simulated protocol implements.
//! - `iroh` (feature `iroh`, on by default): iroh-gossip's protocol state
//!   machine in the same engine, for matched comparisons.
//! - `queue`: the engine's event queue (bucketed by time, exact order).
//! - [`metrics`]: snapshots of the overlay and per-round figures.
//! - [`scenario`]: join, single, multi, failure, churn, partition.
//! - [`servers`]: `rendezvous::Server`s on the overlay nodes, with clients,
//!   a crash and a partition.
//! - [`report`]: CSV, JSON and SVG output.
//!
//! The CLI (`cargo run --release -p sim -- SCENARIO ...`) prints per-round
//! lines on stderr and, as the last line of stdout, one JSON summary
//! documented in `sim/README.md`.

pub mod engine;
#[cfg(feature = "iroh")]
pub mod iroh;
pub mod metrics;
mod queue;
pub mod report;
pub mod scenario;
pub mod servers;

pub use scenario::{Params, Preset, Protocol, Report, Scenario, Summary, run};
pub use servers::{ServersParams, ServersSummary};
