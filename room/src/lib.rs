//! # room — the sans-IO core of a chatd room (seed 002)
//!
//! A private group chat with a host: members send their messages to the
//! host, which puts them in one order (the room's log) and replicates it;
//! every member prints the committed log, so all print the same sequence.
//! The host is the member closest to everyone (closeness centrality over
//! the measured delays, [`centrality`]); when it goes quiet the next
//! candidates take turns to gather a majority, and the new host continues
//! the log with a higher epoch ([`room`]).
//!
//! Deterministic like `overlay` and `rendezvous`: time comes in as an
//! argument, there is no randomness inside (a member's run id comes from
//! the driver), and messages go out as [`Output::Send`] for the driver to
//! carry over the member-to-member paths (punched or relayed QUIC).
//!
//! ```
//! use room::{Config, Input, Output, Room};
//! use overlay::Time;
//!
//! // A room of one: after the join wait it hosts itself.
//! let mut r = Room::new(1u8, &[1], Config::default(), Time::ZERO, 7);
//! let later = Time::ZERO + Config::default().join_wait;
//! r.handle(later, Input::Tick);
//! r.handle(later, Input::Post("hello".into()));
//! let delivered: Vec<_> = std::iter::from_fn(|| r.poll_output())
//!     .filter_map(|o| match o {
//!         Output::Deliver { text, .. } => Some(text),
//!         _ => None,
//!     })
//!     .collect();
//! assert_eq!(delivered, vec!["hello".to_string()]);
//! ```

pub mod centrality;
pub mod proto;
pub mod room;

pub use proto::{Append, Body, Entry, Epoch, Index, Msg, MsgId};
pub use room::{
    Config, Event, Input, MAX_APPEND, MAX_CHARS, MAX_PENDING, MAX_TAIL, MAX_UNCOMMITTED, Output,
    Room,
};
