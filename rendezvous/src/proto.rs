//! Everything chatd servers and clients say to each other above the
//! overlay, as data: the client protocol ([`Request`], [`Response`],
//! [`Notice`]), the broadcast payloads ([`Payload`]) and the direct
//! server-to-server messages ([`ServerMsg`]: anti-entropy, replication
//! acknowledgements, rendezvous). All postcard; variant order is the wire
//! tag and is append-only. Framing (a u32 big-endian length before each
//! message) is the driver's; the limits are here.

use crate::latency::LatencyVector;
use crate::mailbox::{Letter, LetterId};
use crate::members::{Msg, ServerRecord};
use crate::record::PeerRecord;
use bytes::Bytes;
use overlay::PeerId;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;

/// Largest client request or response frame (bytes).
pub const MAX_FRAME: usize = 64 * 1024;
/// Largest server-to-server frame (bytes): a page of records or versions.
pub const MAX_SERVER_FRAME: usize = 256 * 1024;
/// Most servers in one `Servers` answer.
pub const MAX_SERVERS_LISTED: usize = 100;
/// Most records one name lookup returns.
pub const MAX_NAME_MATCHES: usize = 16;

/// What a client asks, one request per bidirectional stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// "What address do you see me at?"
    WhoAmI,
    /// Store a withdrawal of my record (an already expired record; I am
    /// `record.body.peer`). A live record needs [`Request::RegisterLive`].
    Register(PeerRecord),
    /// Where is this peer?
    Lookup(PeerId),
    /// Where is the peer that has held this name longest?
    LookupName(String),
    /// Which servers are alive, least loaded first?
    Servers,
    /// I want to talk to this peer: tell me where it is when it is online,
    /// and tell it about me (I must have registered first).
    Meet(FriendRef),
    /// Relay me to this peer (it must ask for me too, and we must have met
    /// through the cluster recently): after `Response::Relaying` the stream
    /// carries framed datagrams.
    Relay(PeerId),
    /// Store (or refresh) my record, online while this connection lives:
    /// when it ends the server publishes `withdrawal` (signed by me in
    /// advance, see [`PeerRecord::withdrawal`]).
    RegisterLive {
        /// The live record; I am `record.body.peer`.
        record: PeerRecord,
        /// Its withdrawal: seq + 1, already expired.
        withdrawal: PeerRecord,
    },
    /// Every online peer with this name, longest holder first (answered
    /// with [`Response::Records`]; more than one means the name is
    /// ambiguous).
    FindName(String),
    /// My measured RTTs to servers (issue 12): kept with this connection
    /// (used once I am registered live on it), for latency-aware choices;
    /// answered [`Response::Noted`]. One report per
    /// `latency_report_spacing`.
    Latency(LatencyVector),
    /// Choose the relay for me and this peer again (my RTTs changed, a
    /// server appeared): both of us get a new [`Notice::Relay`]. We must
    /// have met through this server recently; answered [`Response::Noted`].
    Rearrange(PeerId),
    /// Keep this letter for `letter.to` (offline messages, SPEC §12), from
    /// me (the connection's key; no registration needed); answered
    /// [`Response::Deposited`] once [`crate::mailbox::MAIL_HOLDERS`]
    /// servers keep it (one when this server is alone).
    Deposit(Letter),
    /// The letters kept for me (the connection's key), oldest first, a
    /// page at a time: answered [`Response::Letters`].
    Collect,
    /// I have these letters of mine (from `Collect`): forget them
    /// everywhere; answered [`Response::Noted`]. At most
    /// [`crate::mailbox::MAX_DELIVERED_IDS`].
    Delivered(Vec<LetterId>),
}

/// A friend, by id (authenticated) or by name (a label anyone can claim).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FriendRef {
    /// By peer id.
    Id(PeerId),
    /// By name.
    Name(String),
}

/// What the server answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The address the request came from.
    YouAre(SocketAddr),
    /// The record is stored here and at another live server.
    Registered,
    /// The record found, if any.
    Record(Option<PeerRecord>),
    /// Live servers, least loaded first.
    Servers(Vec<ServerRecord>),
    /// The request was refused.
    Error(Refusal),
    /// The friend is online: its record, and when to start punching.
    Friend {
        /// The friend's record.
        record: PeerRecord,
        /// Milliseconds from receipt to the common start instant.
        start_in_ms: u32,
    },
    /// The friend is not online yet; a `Notice::Friend` will follow.
    Waiting,
    /// The relay is paired: the stream now carries the friend's datagrams.
    Relaying,
    /// Several online records (an answer to `FindName`, or to `Meet` by a
    /// name that more than one online peer uses: then nobody was told, and
    /// the client must pick one by id).
    Records(Vec<PeerRecord>),
    /// The report was kept.
    Noted,
    /// The letter is kept by this many servers.
    Deposited {
        /// Servers that keep it.
        copies: u8,
    },
    /// Letters for you, oldest first.
    Letters {
        /// This page.
        letters: Vec<Letter>,
        /// More are waiting: collect again after `Delivered`.
        more: bool,
    },
}

/// A refused request: what went wrong, in a code a program can act on and
/// words a person can read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// What went wrong.
    pub code: ErrorCode,
    /// When retrying makes sense, after how many milliseconds (0: not
    /// before something changes).
    pub retry_after_ms: u32,
    /// The reason in words.
    pub detail: String,
}

impl Refusal {
    /// A refusal with `code` and `detail`, no retry hint.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Refusal {
        Refusal {
            code,
            retry_after_ms: 0,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)?;
        if self.retry_after_ms > 0 {
            write!(f, " (retry in {} ms)", self.retry_after_ms)?;
        }
        Ok(())
    }
}

macro_rules! error_codes {
    ($($(#[$doc:meta])* $name:ident = $n:literal, $label:literal;)*) => {
        /// Why a request was refused. On the wire a u16, so a client can
        /// read codes it does not know yet ([`ErrorCode::Other`]).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(from = "u16", into = "u16")]
        #[non_exhaustive]
        pub enum ErrorCode {
            $($(#[$doc])* $name,)*
            /// A code this build does not know.
            Other(u16),
        }

        impl From<u16> for ErrorCode {
            fn from(n: u16) -> Self {
                match n {
                    $($n => ErrorCode::$name,)*
                    other => ErrorCode::Other(other),
                }
            }
        }

        impl From<ErrorCode> for u16 {
            fn from(c: ErrorCode) -> u16 {
                match c {
                    $(ErrorCode::$name => $n,)*
                    ErrorCode::Other(n) => n,
                }
            }
        }

        impl ErrorCode {
            /// Every known code.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name,)*];

            /// A short label (metrics use it as the `reason`).
            pub fn label(self) -> &'static str {
                match self {
                    $(ErrorCode::$name => $label,)*
                    ErrorCode::Other(_) => "other",
                }
            }
        }
    };
}

error_codes! {
    /// The request could not be decoded.
    Malformed = 1, "malformed";
    /// Too many costly requests: retry after `retry_after_ms`.
    RateLimited = 2, "rate_limited";
    /// A client may only register its own record.
    NotOwnRecord = 3, "not_own_record";
    /// The record must name this server as home.
    WrongHome = 4, "wrong_home";
    /// The record's public address is not the one this server sees.
    WrongAddress = 5, "wrong_address";
    /// Not newer than the record the server holds.
    Stale = 6, "stale";
    /// A field is out of bounds (the detail says which).
    Invalid = 7, "invalid";
    /// The signature does not verify.
    BadSignature = 8, "bad_signature";
    /// Too many live registrations from this address (or IPv6 /64).
    QuotaAddress = 9, "quota_address";
    /// Too many new identities from this address recently.
    QuotaNewIds = 10, "quota_new_ids";
    /// This server has as many clients as its capacity: use another.
    ServerFull = 11, "server_full";
    /// The cluster's table is full.
    TableFull = 12, "table_full";
    /// Register before asking to meet someone.
    NotRegistered = 13, "not_registered";
    /// Too many meetings waited for at once.
    TooManyWaits = 14, "too_many_waits";
    /// No relay slot left on this server.
    RelayFull = 15, "relay_full";
    /// Too many relay streams for this client or address.
    RelayLimit = 16, "relay_limit";
    /// A relay needs a meeting through the cluster first.
    RelayNotMet = 17, "relay_not_met";
    /// The friend did not join the relay in time.
    RelayNoFriend = 18, "relay_no_friend";
    /// Cannot relay to yourself.
    RelaySelf = 19, "relay_self";
    /// The record could not be copied to another live server in time.
    NotReplicated = 20, "not_replicated";
    /// Too many connections from this address.
    TooManyConnections = 21, "too_many_connections";
    /// The request needs its own stream or is not allowed here.
    WrongStream = 22, "wrong_stream";
    /// A newer request of the same kind replaced this one.
    Replaced = 23, "replaced";
    /// The recipient's mailbox is full (it has not collected for a while).
    MailboxFull = 24, "mailbox_full";
    /// You (or your address) have too many letters waiting to be collected.
    MailQuota = 25, "mail_quota";
    /// This server's mail storage is full.
    MailStorageFull = 26, "mail_storage_full";
}

/// What a server pushes to a client, on a stream it opens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Notice {
    /// A peer that wants to talk to you, or that you were waiting for;
    /// start punching in `start_in_ms` (the common start instant).
    Friend {
        /// The friend's record.
        record: PeerRecord,
        /// Milliseconds from receipt to the common start instant.
        start_in_ms: u32,
    },
    /// The relay chosen for you and `friend` by the server that arranged
    /// the meeting (seed 003's rule over both latency reports), or `None`
    /// when it could not choose (a report missing, no server measured by
    /// both): then the pair falls back to the home server of the lower id.
    Relay {
        /// The friend of the meeting.
        friend: PeerId,
        /// The relays both of you measured, best first (at most
        /// [`crate::latency::MAX_RELAYS`]), each with the worse of your two
        /// RTTs to it in µs: use the first; when it dies, the next. Empty:
        /// no choice.
        relays: Vec<(PeerId, u32)>,
    },
    /// Letters are waiting for you: collect them ([`Request::Collect`]).
    Mail,
}

/// A broadcast payload: its first byte is the tag, the rest postcard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Tag 1: a membership message.
    Member(Msg),
    /// Tag 2: a peer record (shared: every server that stores it can hold
    /// the one decoded copy, see [`crate::server::Input::Decoded`]).
    Record(Arc<PeerRecord>),
}

/// Tag of [`Payload::Member`].
pub const TAG_MEMBER: u8 = 1;
/// Tag of [`Payload::Record`].
pub const TAG_RECORD: u8 = 2;

/// Why a payload could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Empty.
    #[error("empty payload")]
    Empty,
    /// A tag this build does not know (a newer server's payload, or the
    /// retired broadcast rendezvous, tag 3).
    #[error("unknown payload tag {0}")]
    UnknownTag(u8),
    /// The body does not decode.
    #[error("malformed payload body")]
    Malformed,
}

impl Payload {
    /// The payload as broadcast.
    pub fn encode(&self) -> Bytes {
        let (tag, body) = match self {
            Payload::Member(m) => (TAG_MEMBER, postcard::to_allocvec(m)),
            Payload::Record(r) => (TAG_RECORD, postcard::to_allocvec(r)),
        };
        let mut out = vec![tag];
        out.extend(body.unwrap_or_default());
        Bytes::from(out)
    }

    /// Reads a payload (signatures are checked by whoever applies it).
    pub fn decode(bytes: &[u8]) -> Result<Payload, PayloadError> {
        let (&tag, body) = bytes.split_first().ok_or(PayloadError::Empty)?;
        match tag {
            TAG_MEMBER => postcard::from_bytes(body)
                .map(Payload::Member)
                .map_err(|_| PayloadError::Malformed),
            TAG_RECORD => postcard::from_bytes(body)
                .map(|r| Payload::Record(Arc::new(r)))
                .map_err(|_| PayloadError::Malformed),
            other => Err(PayloadError::UnknownTag(other)),
        }
    }
}

/// A message from one server directly to another (on a stream of their
/// overlay connection).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMsg {
    /// Anti-entropy, step 1: my table's 256 bucket hashes.
    Digest(Vec<u64>),
    /// Step 2, the answer for a differing bucket, one page: every
    /// `(peer, seq)` I hold in `bucket` with an id in `(after, upto]`
    /// (`None`: from the bucket's start / to its end).
    Versions {
        /// The bucket (first byte of the peer ids).
        bucket: u8,
        /// Exclusive lower bound of the page.
        after: Option<PeerId>,
        /// Inclusive upper bound of the page.
        upto: Option<PeerId>,
        /// What I hold in that range, in id order.
        versions: Vec<(PeerId, u64)>,
    },
    /// Step 3: send me these records (you hold them newer).
    Want(Vec<PeerId>),
    /// Records for you (newer than yours, or missing at yours).
    Records(Vec<PeerRecord>),
    /// Store this record and say so: the home server acknowledges a
    /// registration only once another live server has it.
    Store {
        /// Echoed in [`ServerMsg::Stored`].
        token: u64,
        /// The record.
        record: PeerRecord,
    },
    /// The record of `token` is stored here (or a newer one).
    Stored {
        /// From [`ServerMsg::Store`].
        token: u64,
    },
    /// To the home server of `to`: tell your client `to` that `from` wants
    /// to talk, starting at `start_at_ms` (Unix milliseconds).
    Rendezvous {
        /// The client to tell.
        to: PeerId,
        /// Who wants to talk.
        from: PeerRecord,
        /// The common start instant.
        start_at_ms: u64,
    },
    /// [`ServerMsg::Rendezvous`] with the latency report of `from` (as its
    /// home server holds it): the receiver, home of `to`, chooses the
    /// pair's relay and answers with [`ServerMsg::RelayChoice`].
    Meeting {
        /// The client to tell.
        to: PeerId,
        /// Who wants to talk.
        from: PeerRecord,
        /// The common start instant.
        start_at_ms: u64,
        /// `from`'s RTTs to servers, if it reported them.
        latency: Option<LatencyVector>,
    },
    /// The relay chosen for `a` and `b`: sent to the home server of `a`
    /// (which tells `a`) and to the relay itself when it is a third server
    /// (which then relays for the pair as if it had arranged the meeting).
    RelayChoice {
        /// The client at the receiver's side.
        a: PeerId,
        /// Its friend.
        b: PeerId,
        /// The ranked relays, as in [`Notice::Relay`] (empty: fall back to
        /// the lower id's home).
        relays: Vec<(PeerId, u32)>,
    },
    /// To the home server of `to`: `from` asked to choose their relay
    /// again ([`Request::Rearrange`]), with its new latency report.
    Rearrange {
        /// The client at the receiver's side.
        to: PeerId,
        /// Who asked.
        from: PeerId,
        /// `from`'s RTTs to servers.
        latency: LatencyVector,
    },
    /// Keep this letter (you rank among its holders): a client of mine
    /// deposited it. Answered [`ServerMsg::Kept`].
    Keep {
        /// Echoed in [`ServerMsg::Kept`].
        token: u64,
        /// The letter.
        letter: Letter,
        /// Who deposited it (for your quota tag; not stored).
        sender: PeerId,
        /// From where (for your quota tag; not stored).
        source: std::net::IpAddr,
    },
    /// The letter of `token` is kept here, or why not.
    Kept {
        /// From [`ServerMsg::Keep`].
        token: u64,
        /// `None`: kept; else the refusal's code.
        refused: Option<ErrorCode>,
    },
    /// Send me the letters you keep for `to` (my client is collecting).
    Fetch {
        /// Echoed in [`ServerMsg::Held`].
        token: u64,
        /// The recipient.
        to: PeerId,
    },
    /// The letters kept here for the collection of `token`, oldest first.
    Held {
        /// From [`ServerMsg::Fetch`].
        token: u64,
        /// A page of them.
        letters: Vec<Letter>,
        /// More are kept here.
        more: bool,
    },
    /// `to` has these letters: forget them.
    Discard {
        /// The recipient.
        to: PeerId,
        /// Its letters collected.
        ids: Vec<LetterId>,
    },
    /// To the home server of `to`: letters are waiting for it (tell it
    /// with [`Notice::Mail`]).
    MailFor {
        /// The recipient.
        to: PeerId,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip_and_unknown_codes_survive() {
        for &c in ErrorCode::ALL {
            let n: u16 = c.into();
            assert_eq!(ErrorCode::from(n), c);
            let bytes = postcard::to_allocvec(&c).unwrap();
            assert_eq!(postcard::from_bytes::<ErrorCode>(&bytes).unwrap(), c);
        }
        let future = postcard::to_allocvec(&999u16).unwrap();
        assert_eq!(
            postcard::from_bytes::<ErrorCode>(&future).unwrap(),
            ErrorCode::Other(999)
        );
        let labels: std::collections::BTreeSet<&str> =
            ErrorCode::ALL.iter().map(|c| c.label()).collect();
        assert_eq!(labels.len(), ErrorCode::ALL.len(), "labels are distinct");
    }

    #[test]
    fn payloads_carry_their_tag() {
        assert_eq!(Payload::decode(&[]), Err(PayloadError::Empty));
        assert_eq!(Payload::decode(&[3, 0]), Err(PayloadError::UnknownTag(3)));
        assert_eq!(
            Payload::decode(&[TAG_RECORD, 0xff]),
            Err(PayloadError::Malformed)
        );
    }
}
