//! Protocol edge cases, driving one `State` by hand with a fake clock.

use bytes::Bytes;
use overlay::wire::{
    Disconnect, Gossip, Graft, IHave, IHaveEntry, Join, Neighbor, NeighborReply, Priority, Prune,
};
use overlay::{
    Config, Event, Input, Message, MessageId, MessageType, Output, PeerData, PeerInfo, State, Time,
    Timer,
};
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use std::time::Duration;

type Node = State<u32, Xoshiro256PlusPlus>;

fn node(me: u32) -> Node {
    State::new(
        me,
        Config::lan(),
        Xoshiro256PlusPlus::seed_from_u64(u64::from(me)),
    )
}

fn msg(node: &mut Node, now: Time, from: u32, message: Message<u32>) {
    node.handle(now, Input::Message { from, message });
}

fn sends(node: &mut Node) -> Vec<(u32, Message<u32>)> {
    node.drain_outputs()
        .filter_map(|o| match o {
            Output::Send { to, message } => Some((to, message)),
            _ => None,
        })
        .collect()
}

fn neighbor_req(priority: Priority) -> Message<u32> {
    Message::Neighbor(Neighbor {
        priority,
        data: PeerData::new(),
    })
}

/// Node 0 with neighbors 1..=k (each asked with high priority).
fn with_neighbors(k: u32) -> Node {
    let mut n = node(0);
    n.handle(Time::ZERO, Input::Join(vec![]));
    for p in 1..=k {
        msg(&mut n, Time::ZERO, p, neighbor_req(Priority::High));
    }
    n.drain_outputs().for_each(drop);
    n
}

fn gossip(id: u8, hops: u16) -> Message<u32> {
    Message::Gossip(Gossip::new(MessageId([id; 32]), 99, hops, b"p"))
}

#[test]
fn low_priority_request_is_refused_when_full_and_high_priority_evicts() {
    let mut n = with_neighbors(5);
    assert_eq!(n.active_len(), 5);
    msg(&mut n, Time::ZERO, 6, neighbor_req(Priority::Low));
    let out = sends(&mut n);
    assert_eq!(
        out,
        vec![(
            6,
            Message::NeighborReply(NeighborReply {
                accepted: false,
                data: PeerData::new()
            })
        )]
    );
    assert!(!n.is_neighbor(&6));
    assert!(
        n.passive_view().any(|p| p == 6),
        "a refused requester is kept as a candidate"
    );

    msg(&mut n, Time::ZERO, 7, neighbor_req(Priority::High));
    let out = sends(&mut n);
    assert!(n.is_neighbor(&7));
    assert_eq!(n.active_len(), 5);
    let evicted: Vec<u32> = out
        .iter()
        .filter(|(_, m)| *m == Message::Disconnect(Disconnect { alive: true }))
        .map(|(to, _)| *to)
        .collect();
    assert_eq!(evicted.len(), 1, "exactly one neighbor evicted: {out:?}");
    assert!(
        n.passive_view().any(|p| p == evicted[0]),
        "the evicted peer stays a candidate"
    );
}

#[test]
fn disconnect_says_whether_the_peer_is_gone_for_good() {
    let mut n = with_neighbors(3);
    msg(
        &mut n,
        Time::ZERO,
        1,
        Message::Disconnect(Disconnect { alive: true }),
    );
    assert!(!n.is_neighbor(&1));
    assert!(n.passive_view().any(|p| p == 1));
    msg(
        &mut n,
        Time::ZERO,
        2,
        Message::Disconnect(Disconnect { alive: false }),
    );
    assert!(!n.is_neighbor(&2));
    assert!(
        !n.passive_view().any(|p| p == 2),
        "a leaving peer is forgotten"
    );
    msg(
        &mut n,
        Time::ZERO,
        1,
        Message::Disconnect(Disconnect { alive: false }),
    );
    assert!(
        !n.passive_view().any(|p| p == 1),
        "also from the passive view"
    );
}

#[test]
fn a_join_is_accepted_and_walks_to_every_other_neighbor() {
    let mut n = with_neighbors(3);
    msg(
        &mut n,
        Time::ZERO,
        9,
        Message::Join(Join {
            data: PeerData::from(b"addr9"),
        }),
    );
    let out = sends(&mut n);
    assert!(n.is_neighbor(&9));
    assert!(out.contains(&(
        9,
        Message::NeighborReply(NeighborReply {
            accepted: true,
            data: PeerData::new()
        })
    )));
    let walks: Vec<u32> = out
        .iter()
        .filter_map(|(to, m)| match m {
            Message::ForwardJoin(f)
                if f.peer.id == 9 && f.ttl == 6 && &f.peer.data[..] == b"addr9" =>
            {
                Some(*to)
            }
            _ => None,
        })
        .collect();
    assert_eq!(walks, vec![1, 2, 3]);
    assert_eq!(n.peer_data(&9).map(|d| &d[..]), Some(&b"addr9"[..]));
}

#[test]
fn a_duplicate_gossip_prunes_the_link_it_came_on() {
    let mut n = with_neighbors(3);
    msg(&mut n, Time::ZERO, 1, gossip(1, 0));
    let out = sends(&mut n);
    // Forwarded eagerly to the other two, not back to the sender.
    let targets: Vec<u32> = out
        .iter()
        .filter(|(_, m)| m.message_type() == MessageType::Gossip)
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(targets, vec![2, 3]);
    msg(&mut n, Time::ZERO, 2, gossip(1, 0));
    assert_eq!(
        sends(&mut n),
        vec![(2, Message::Prune(Prune { origin: 99 }))]
    );
    assert_eq!(n.lazy_peers(&99), vec![2]);
    assert_eq!(n.stats().duplicates, 1);
    // A PRUNE makes the sender lazy on our side too.
    msg(&mut n, Time::ZERO, 3, Message::Prune(Prune { origin: 99 }));
    assert_eq!(n.eager_peers(&99), vec![1]);
}

#[test]
fn prunes_for_one_origin_leave_other_origins_trees_alone() {
    let mut n = with_neighbors(3);
    // Origin 7 gets a tree of its own first (copied from the reference,
    // which before any broadcast is every neighbor).
    let from_7 = Message::Gossip(Gossip::new(MessageId([70; 32]), 7, 0, b""));
    msg(&mut n, Time::ZERO, 1, from_7);
    msg(&mut n, Time::ZERO, 1, gossip(1, 0));
    msg(&mut n, Time::ZERO, 2, gossip(1, 0));
    msg(&mut n, Time::ZERO, 3, Message::Prune(Prune { origin: 99 }));
    n.drain_outputs().for_each(drop);
    assert_eq!(n.eager_peers(&99), vec![1]);
    assert_eq!(
        n.eager_peers(&7),
        vec![1, 2, 3],
        "origin 7's tree is untouched"
    );
    assert_eq!(n.origins_len(), 2);
    // A new origin starts from the reference tree (smallest origin id: 7),
    // not from a flood to every neighbor.
    assert_eq!(n.eager_peers(&50), vec![1, 2, 3]);
    msg(&mut n, Time::ZERO, 1, Message::Prune(Prune { origin: 7 }));
    assert_eq!(n.eager_peers(&50), vec![2, 3]);
}

/// A tree that lost an eager neighbor to a link going down makes the next
/// new neighbor eager in its place; trees that lost nothing keep new
/// neighbors lazy. (Lazy only, an origin that broadcasts rarely found its
/// tree cut after churn, and every cut hop cost a GRAFT timeout: the
/// first records after a cold start of 1,000 servers took seconds.)
#[test]
fn a_lost_eager_link_is_replaced_by_the_next_new_neighbor() {
    let mut n = with_neighbors(3);
    // Origin 99: eager 1 and 3, lazy 2.
    msg(&mut n, Time::ZERO, 1, gossip(1, 0));
    msg(&mut n, Time::ZERO, 2, gossip(1, 0));
    // Origin 7: eager 1 and 2, lazy 3.
    let from_7 = |id: u8| Message::Gossip(Gossip::new(MessageId([id; 32]), 7, 0, b""));
    msg(&mut n, Time::ZERO, 2, from_7(70));
    msg(&mut n, Time::ZERO, 3, from_7(70));
    n.drain_outputs().for_each(drop);
    assert_eq!(n.eager_peers(&99), vec![1, 3]);
    assert_eq!(n.eager_peers(&7), vec![1, 2]);
    // 3 goes: eager for 99, lazy for 7.
    msg(
        &mut n,
        Time::ZERO,
        3,
        Message::Disconnect(Disconnect { alive: true }),
    );
    assert_eq!(n.eager_peers(&99), vec![1]);
    msg(&mut n, Time::ZERO, 4, neighbor_req(Priority::High));
    assert_eq!(n.eager_peers(&99), vec![1, 4], "4 takes 3's place");
    assert_eq!(n.eager_peers(&7), vec![1, 2], "7 lost nothing");
    msg(&mut n, Time::ZERO, 5, neighbor_req(Priority::High));
    assert_eq!(n.eager_peers(&99), vec![1, 4], "one loss, one replacement");
    assert_eq!(n.lazy_peers(&99), vec![2, 5]);
}

/// Beyond `max_origins` trees the least recently used eighth goes at
/// once (one scan per `max / 8` new origins, not one per new origin),
/// and the table never exceeds the limit.
#[test]
fn origins_beyond_the_limit_evict_the_least_recently_used_in_batches() {
    let mut cfg = Config::lan();
    cfg.plumtree.max_origins = 16;
    let mut n = State::new(0u32, cfg, Xoshiro256PlusPlus::seed_from_u64(0));
    n.handle(Time::ZERO, Input::Join(vec![]));
    for p in 1..=3 {
        msg(&mut n, Time::ZERO, p, neighbor_req(Priority::High));
    }
    let mut most = 0;
    for k in 0..40u32 {
        let now = Time::from_millis(u64::from(k) * 10);
        let id = MessageId([k as u8 + 1; 32]);
        // Origins 100..139 (the reference stays 100), one broadcast each;
        // origin 100 broadcasts again every time, so it is never the oldest.
        msg(
            &mut n,
            now,
            1,
            Message::Gossip(Gossip::new(id, 100 + k, 0, b"")),
        );
        let again = MessageId([200 - k as u8; 32]);
        msg(
            &mut n,
            now,
            1,
            Message::Gossip(Gossip::new(again, 100, 0, b"")),
        );
        most = most.max(n.origins_len());
    }
    n.drain_outputs().for_each(drop);
    assert_eq!(most, 16, "filled up to the limit, never above");
    assert!(
        (14..=16).contains(&n.origins_len()),
        "only an eighth at a time: {}",
        n.origins_len()
    );
}

#[test]
fn a_missing_message_is_grafted_from_each_announcer_in_turn() {
    let mut n = with_neighbors(3);
    let id = MessageId([5; 32]);
    let ihave = Message::IHave(IHave {
        entries: vec![IHaveEntry { id, hops: 1 }],
    });
    msg(&mut n, Time::ZERO, 2, ihave.clone());
    msg(&mut n, Time::from_millis(10), 3, ihave);
    let timers: Vec<(Time, Timer)> = n
        .drain_outputs()
        .filter_map(|o| match o {
            Output::SetTimer {
                at,
                timer: t @ Timer::Graft(_),
            } => Some((at, t)),
            _ => None,
        })
        .collect();
    let t1 = Time::ZERO + Config::lan().plumtree.graft_timeout_1;
    assert_eq!(
        timers,
        vec![(t1, Timer::Graft(id))],
        "one timer per missing message"
    );
    n.handle(t1, Input::Timer(Timer::Graft(id)));
    assert_eq!(
        sends(&mut n),
        vec![(2, Message::Graft(Graft { id, resend: true }))]
    );
    let t2 = t1 + Config::lan().plumtree.graft_timeout_2;
    n.handle(t2, Input::Timer(Timer::Graft(id)));
    assert_eq!(
        sends(&mut n),
        vec![(3, Message::Graft(Graft { id, resend: true }))]
    );
    // The message arrives: no more grafts, and the link it came on is now
    // eager for its origin.
    msg(&mut n, t2, 3, gossip(5, 1));
    assert!(n.eager_peers(&99).contains(&3));
    n.drain_outputs().for_each(drop);
    n.handle(t2 + Duration::from_secs(1), Input::Timer(Timer::Graft(id)));
    assert_eq!(sends(&mut n), vec![]);
    assert_eq!(n.stats().grafts_sent, 2);
}

#[test]
fn losing_the_grafted_peer_regrafts_from_the_next_announcer_at_once() {
    let mut n = with_neighbors(3);
    let id = MessageId([6; 32]);
    for from in [2, 3] {
        msg(
            &mut n,
            Time::ZERO,
            from,
            Message::IHave(IHave {
                entries: vec![IHaveEntry { id, hops: 1 }],
            }),
        );
    }
    let t1 = Time::ZERO + Config::lan().plumtree.graft_timeout_1;
    n.handle(t1, Input::Timer(Timer::Graft(id)));
    n.drain_outputs().for_each(drop);
    n.handle(t1, Input::PeerDown(2));
    let regraft = n.drain_outputs().find_map(|o| match o {
        Output::SetTimer {
            at,
            timer: Timer::Graft(x),
        } if x == id => Some(at),
        _ => None,
    });
    assert_eq!(regraft, Some(t1), "the graft is re-issued immediately");
    n.handle(t1, Input::Timer(Timer::Graft(id)));
    assert_eq!(
        sends(&mut n),
        vec![(3, Message::Graft(Graft { id, resend: true }))]
    );
}

#[test]
fn a_graft_is_answered_from_the_cache() {
    let mut n = with_neighbors(2);
    let id = n
        .broadcast(Time::ZERO, Bytes::from_static(b"cached"))
        .unwrap();
    n.drain_outputs().for_each(drop);
    msg(
        &mut n,
        Time::from_secs(1),
        2,
        Message::Graft(Graft { id, resend: true }),
    );
    let out = sends(&mut n);
    assert!(
        matches!(&out[..], [(2, Message::Gossip(g))] if g.id() == id && &g.payload()[..] == b"cached")
    );
    // After the cache retention the payload is gone; the graft is a miss.
    let later =
        Time::ZERO + Config::lan().plumtree.message_cache_retention + Duration::from_secs(2);
    n.handle(later, Input::Timer(Timer::Expiry));
    msg(&mut n, later, 2, Message::Graft(Graft { id, resend: true }));
    assert_eq!(sends(&mut n), vec![]);
    assert_eq!(n.stats().graft_misses, 1);
}

#[test]
fn message_ids_are_unique_per_broadcast_even_for_equal_payloads() {
    let mut n = with_neighbors(1);
    let a = n
        .broadcast(Time::ZERO, Bytes::from_static(b"same"))
        .unwrap();
    let b = n
        .broadcast(Time::ZERO, Bytes::from_static(b"same"))
        .unwrap();
    assert_ne!(a, b);
    // A restarted node (new RNG draw for its epoch) does not reuse ids.
    let mut restarted = State::new(0u32, Config::lan(), Xoshiro256PlusPlus::seed_from_u64(1234));
    restarted.handle(Time::ZERO, Input::Join(vec![]));
    let c = restarted
        .broadcast(Time::ZERO, Bytes::from_static(b"same"))
        .unwrap();
    assert_ne!(a, c);
}

#[test]
fn an_isolated_node_retries_its_contacts_with_capped_backoff() {
    let mut n = node(0);
    let contacts = vec![PeerInfo::bare(1), PeerInfo::bare(2)];
    n.handle(Time::ZERO, Input::Join(contacts));
    // Nobody ever answers. Drive the timers for 10 minutes.
    let mut timers: Vec<(Time, Timer)> = Vec::new();
    let mut joins: Vec<(Time, u32)> = Vec::new();
    let mut now = Time::ZERO;
    let end = Time::from_secs(600);
    for _ in 0..100_000 {
        for o in n.drain_outputs() {
            match o {
                Output::SetTimer { at, timer } => timers.push((at, timer)),
                Output::Send {
                    to,
                    message: Message::Join(_),
                } => joins.push((now, to)),
                _ => {}
            }
        }
        timers.sort();
        if timers.is_empty() || timers[0].0 > end {
            break;
        }
        let (at, t) = timers.remove(0);
        now = at;
        n.handle(now, Input::Timer(t));
    }
    let cfg = Config::lan().hyparview;
    assert!(joins.len() >= 10, "keeps retrying: {} joins", joins.len());
    assert!(
        joins.len() <= 60,
        "but backs off: {} joins in 10 min",
        joins.len()
    );
    // Round robin over both contacts.
    assert!(joins.iter().any(|(_, c)| *c == 1) && joins.iter().any(|(_, c)| *c == 2));
    // Gaps grow, and never exceed the cap plus one request timeout.
    let gaps: Vec<Duration> = joins
        .windows(2)
        .map(|w| w[1].0.saturating_since(w[0].0))
        .collect();
    assert!(gaps.last() > gaps.first(), "gaps grow: {gaps:?}");
    let bound = cfg.rejoin_backoff_max + cfg.neighbor_request_timeout + cfg.repair_interval;
    assert!(gaps.iter().all(|g| *g <= bound), "gaps capped: {gaps:?}");
    assert_eq!(n.stats().rejoin_attempts as usize, joins.len() - 1);
}

#[test]
fn a_malformed_frame_is_counted_and_the_peer_disconnected() {
    let mut n = with_neighbors(2);
    n.handle(
        Time::ZERO,
        Input::Frame {
            from: 1,
            frame: Bytes::from_static(&[0xEE, 1, 2]),
        },
    );
    let out: Vec<Output<u32>> = n.drain_outputs().collect();
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Event(Event::InvalidFrame { from: 1, .. })))
    );
    assert!(out.contains(&Output::Disconnect { peer: 1 }));
    assert!(!n.is_neighbor(&1));
    assert_eq!(n.stats().decode_errors, 1);
    // The node keeps working with its other neighbor.
    msg(&mut n, Time::ZERO, 2, gossip(9, 0));
    assert_eq!(n.stats().payloads_delivered, 1);
}

#[test]
fn a_node_that_left_tells_neighbors_and_refuses_requests() {
    let mut n = with_neighbors(2);
    n.handle(Time::ZERO, Input::Leave);
    let out = sends(&mut n);
    assert_eq!(
        out,
        vec![
            (1, Message::Disconnect(Disconnect { alive: false })),
            (2, Message::Disconnect(Disconnect { alive: false }))
        ]
    );
    assert_eq!(n.active_len(), 0);
    msg(&mut n, Time::ZERO, 3, neighbor_req(Priority::High));
    assert_eq!(
        sends(&mut n),
        vec![(
            3,
            Message::NeighborReply(NeighborReply {
                accepted: false,
                data: PeerData::new()
            })
        )]
    );
    assert!(n.broadcast(Time::ZERO, Bytes::new()).is_err());
}
