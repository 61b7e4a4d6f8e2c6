//! Counters an operator (or the simulator) reads: what the node sent and
//! received, what it delivered, and how the protocols worked to get there.
//!
//! All fields are monotonically increasing counters; current view sizes
//! are read from [`crate::State`] directly. [`Stats::counters`] lists every
//! scalar counter with a stable snake_case name, which the daemon exports as
//! a Prometheus `_total` counter.

use crate::wire::MessageType;

macro_rules! stats {
    ($( $(#[doc = $doc:literal])* $field:ident, )*) => {
        /// Protocol counters of one node.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct Stats {
            /// Messages sent, by type (index with [`MessageType::index`]).
            pub messages_sent: [u64; MessageType::COUNT],
            /// Messages received, by type.
            pub messages_received: [u64; MessageType::COUNT],
            $( $(#[doc = $doc])* pub $field: u64, )*
        }

        impl Stats {
            /// Every scalar counter with its stable name, in declaration order.
            pub fn counters(&self) -> Vec<(&'static str, u64)> {
                vec![$( (stringify!($field), self.$field), )*]
            }

            /// Every scalar counter's name and its one-line description
            /// (the field's doc), in declaration order: the daemon's
            /// Prometheus HELP text.
            pub fn help() -> Vec<(&'static str, &'static str)> {
                vec![$( (stringify!($field), concat!($($doc),*).trim_ascii()), )*]
            }

            /// Adds another node's counters to these (for cluster totals).
            pub fn add(&mut self, other: &Stats) {
                for i in 0..MessageType::COUNT {
                    self.messages_sent[i] += other.messages_sent[i];
                    self.messages_received[i] += other.messages_received[i];
                }
                $( self.$field += other.$field; )*
            }
        }
    };
}

stats! {
    /// Frames that failed to decode (each also closes the link).
    decode_errors,
    /// Broadcasts this node originated.
    broadcasts,
    /// Broadcasts refused because the payload was too large.
    broadcasts_refused,
    /// Payloads delivered to the application (first receipt only).
    payloads_delivered,
    /// Bytes of those payloads.
    payload_bytes_delivered,
    /// GOSSIP messages received for an id already seen.
    duplicates,
    /// GRAFTs sent to fetch a missing message.
    grafts_sent,
    /// GRAFTs received.
    grafts_received,
    /// GRAFTs received for a message no longer in the cache.
    graft_misses,
    /// PRUNEs sent after a duplicate or a tree optimisation.
    prunes_sent,
    /// PRUNEs received.
    prunes_received,
    /// IHAVE entries sent (announcements, not messages).
    ihave_entries_sent,
    /// IHAVE entries received.
    ihave_entries_received,
    /// Tree optimisations (a shorter lazy path replaced an eager parent).
    tree_optimizations,
    /// Announcements ignored because too many messages were missing.
    missing_dropped,
    /// JOINs sent (first join and re-joins).
    joins_sent,
    /// JOINs received as a contact.
    joins_received,
    /// JOINs sent because the node was isolated (empty active view).
    rejoin_attempts,
    /// NEIGHBOR requests sent.
    neighbor_requests_sent,
    /// NEIGHBOR requests of ours that were refused.
    neighbor_requests_refused,
    /// NEIGHBOR or JOIN requests of ours that got no answer in time.
    neighbor_requests_timed_out,
    /// Peers added to the active view.
    neighbors_up,
    /// Peers removed from the active view.
    neighbors_down,
    /// Links lost because the connection failed or a frame was malformed.
    peer_failures,
    /// SHUFFLEs started.
    shuffles_sent,
}

impl Stats {
    /// Messages of type `t` sent.
    pub fn sent(&self, t: MessageType) -> u64 {
        self.messages_sent[t.index()]
    }

    /// Messages of type `t` received.
    pub fn received(&self, t: MessageType) -> u64 {
        self.messages_received[t.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_sums_every_counter() {
        let mut a = Stats {
            duplicates: 2,
            ..Stats::default()
        };
        a.messages_sent[MessageType::Prune.index()] = 1;
        let b = a.clone();
        a.add(&b);
        assert_eq!(a.duplicates, 4);
        assert_eq!(a.sent(MessageType::Prune), 2);
        assert!(a.counters().contains(&("duplicates", 4)));
        assert_eq!(a.counters().len(), 25);
    }
}
