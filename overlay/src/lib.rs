//! # overlay — the sans-IO core of chatd's server mesh
//!
//! HyParView membership and Plumtree broadcast as a deterministic state
//! machine, in the style of `quinn-proto`: no sockets, no threads, no clock,
//! no global RNG. The daemon (`chatd`) and the simulator (`sim`) are thin
//! drivers around the same [`State`].
//!
//! ```
//! use overlay::{Config, Input, Output, State, Time};
//! use rand::SeedableRng;
//!
//! let rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(7);
//! let mut node: State<u32, _> = State::new(1, Config::local(), rng);
//! node.handle(Time::ZERO, Input::Join(vec![overlay::PeerInfo::bare(0)]));
//! for out in node.drain_outputs() {
//!     match out {
//!         Output::Send { to, message } => { /* encode with message.to_frame(), send to `to` */ }
//!         Output::SetTimer { at, timer } => { /* call handle(at, Input::Timer(timer)) then */ }
//!         Output::Disconnect { .. } | Output::Event(_) => {}
//!     }
//! }
//! ```
//!
//! Layout, one concept per file:
//! - [`time`]: [`Time`], the driver-supplied clock reading.
//! - [`id`]: peer identities, message ids, peer data.
//! - [`config`]: every parameter with its default and source; presets.
//! - [`wire`]: messages, type codes, framing, typed decode errors.
//! - `hyparview` / `plumtree`: the two protocols (private).
//! - [`state`]: the composed node: inputs, outputs, timers, events.
//! - [`stats`]: counters for operators.
//!
//! Determinism: all iteration that influences outputs is over `Vec`s or
//! `BTreeMap`s, randomness comes only from the `R: Rng` given to
//! [`State::new`], and time only from `now` arguments. The same inputs and
//! seed produce the same outputs, bit for bit.

pub mod config;
mod hyparview;
pub mod id;
mod plumtree;
pub mod state;
pub mod stats;
mod store;
pub mod time;
mod util;
pub mod wire;

pub use config::{Config, ConfigError, HyParViewConfig, PlumtreeConfig, SetError, WireLimits};
pub use id::{MessageId, PeerData, PeerId, PeerIdentity, PeerInfo};
pub use plumtree::BroadcastError;
pub use state::{Delivery, Event, Input, Output, State, Timer};
pub use stats::Stats;
pub use time::Time;
pub use wire::{DecodeError, EncodeError, Message, MessageType};
