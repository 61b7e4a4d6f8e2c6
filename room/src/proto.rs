//! What room members say to each other (serde types; the driver encodes
//! them with postcard, one per chat frame on the member-to-member path).

use serde::{Deserialize, Serialize};

/// A host's term: each new host has a higher one.
pub type Epoch = u64;
/// A position in the room's log (from 1; 0 = before the first).
pub type Index = u64;

/// A message's id: who wrote it, in which run of theirs, its number there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MsgId<M> {
    /// The member that wrote it.
    pub sender: M,
    /// The sender's run (random per start), so numbers never repeat.
    pub run: u64,
    /// Its number within the run, from 1.
    pub n: u64,
}

/// What a log entry records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body<M> {
    /// A message.
    Text {
        /// Its id.
        id: MsgId<M>,
        /// What it says.
        text: String,
    },
    /// A member started taking part (it counts for majorities from then on).
    Join(M),
}

/// One entry of the room's log, in the order every member delivers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry<M> {
    /// The epoch of the host that appended it.
    pub epoch: Epoch,
    /// What it records.
    pub body: Body<M>,
}

/// Host → member, every heartbeat and with new entries: `entries` follow
/// `prev` (its index and epoch), or start the member's log afresh at
/// `prev.1 + 1` when `fresh` (the host no longer has what the member
/// lacks); everything up to `commit` may be delivered. Carries the
/// failover order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Append<M> {
    /// The host's epoch.
    pub epoch: Epoch,
    /// The index and epoch of the entry before `entries`.
    pub prev: (Epoch, Index),
    /// Restart the log at `prev.1 + 1`.
    pub fresh: bool,
    /// At most [`crate::MAX_APPEND`].
    pub entries: Vec<Entry<M>>,
    /// Delivered up to here.
    pub commit: Index,
    /// Who hosts next, in order.
    pub candidates: Vec<M>,
}

/// A message between members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg<M> {
    /// Host → member, every heartbeat and with new entries.
    Append(Append<M>),
    /// Member → host: the log matches the host's up to `matched`, or (not
    /// `ok`) it did not follow `prev`; `matched` is then a hint.
    Appended {
        /// The member's epoch.
        epoch: Epoch,
        /// Whether `entries` were taken.
        ok: bool,
        /// The member's log matches up to here.
        matched: Index,
    },
    /// Member → host: a message to order.
    Post {
        /// Its id.
        id: MsgId<M>,
        /// What it says.
        text: String,
    },
    /// Member → host: its delays to the others, µs.
    Delays(Vec<(M, u32)>),
    /// A member that knows no host: "who hosts?". `last` is its log's end.
    Hello {
        /// Its epoch.
        epoch: Epoch,
        /// The epoch and index of its last entry.
        last: (Epoch, Index),
    },
    /// A candidate asks for votes to host `epoch`; voters send it what
    /// their logs have after its `commit`.
    RequestVote {
        /// A pre-vote: "would you?", changing nothing (a candidate cut off
        /// from the majority never raises its epoch, so it cannot disturb
        /// the room when it comes back).
        pre: bool,
        /// The epoch it would host.
        epoch: Epoch,
        /// Its log's end.
        last: (Epoch, Index),
        /// What it has delivered.
        commit: Index,
    },
    /// A vote (or a refusal) and, when granted, the voter's entries after
    /// the candidate's `commit`.
    Vote {
        /// The answer to a pre-vote.
        pre: bool,
        /// The epoch voted on.
        epoch: Epoch,
        /// Yes or no.
        granted: bool,
        /// The voter's log's end.
        last: (Epoch, Index),
        /// Its entries after the candidate's commit (at most
        /// [`crate::MAX_TAIL`]).
        tail: Vec<Entry<M>>,
    },
    /// A candidate that did not reach a majority in time: try the next.
    Ineligible {
        /// The epoch it tried.
        epoch: Epoch,
    },
}
