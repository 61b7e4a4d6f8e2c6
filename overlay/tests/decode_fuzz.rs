//! The decoder is total: random and mutated frames give a message or a
//! typed error, never a panic, and an accepted body is canonical: it
//! re-encodes to exactly the same bytes. (No nightly here, so proptest stands
//! in for cargo-fuzz.)

use overlay::wire::{
    Disconnect, ForwardJoin, Gossip, Graft, IHave, IHaveEntry, Join, Neighbor, NeighborReply,
    Priority, Prune, Shuffle, ShuffleReply, split_frame,
};
use overlay::{Config, DecodeError, Message, MessageId, PeerData, PeerId, PeerInfo, WireLimits};
use proptest::prelude::*;

fn limits() -> WireLimits {
    Config::lan().limits
}

fn info(n: u8) -> PeerInfo<PeerId> {
    PeerInfo {
        id: PeerId([n; 32]),
        data: PeerData::from(vec![n; usize::from(n % 7)]),
    }
}

/// One valid message of every type.
fn samples() -> Vec<Message<PeerId>> {
    vec![
        Message::Join(Join {
            data: PeerData::from(b"10.0.0.1:4433"),
        }),
        Message::ForwardJoin(ForwardJoin {
            peer: info(3),
            ttl: 6,
        }),
        Message::Neighbor(Neighbor {
            priority: Priority::High,
            data: PeerData::new(),
        }),
        Message::NeighborReply(NeighborReply {
            accepted: true,
            data: PeerData::from(b"x"),
        }),
        Message::Disconnect(Disconnect { alive: false }),
        Message::Shuffle(Shuffle {
            origin: info(1),
            ttl: 5,
            nodes: vec![info(2), info(4), info(9)],
        }),
        Message::ShuffleReply(ShuffleReply {
            nodes: vec![info(8)],
        }),
        Message::Gossip(Gossip::new(
            MessageId([0xAB; 32]),
            PeerId([7; 32]),
            300,
            &[42u8; 1000],
        )),
        Message::IHave(IHave {
            entries: (0..20)
                .map(|i| IHaveEntry {
                    id: MessageId([i; 32]),
                    hops: u16::from(i),
                })
                .collect(),
        }),
        Message::Graft(Graft {
            id: MessageId([1; 32]),
            resend: true,
        }),
        Message::Graft(Graft {
            id: MessageId([2; 32]),
            resend: false,
        }),
        Message::Prune(Prune {
            origin: PeerId([5; 32]),
        }),
    ]
}

/// Decodes with both identity types the project uses; checks that success
/// round-trips and failure is one of the typed errors.
fn check(body: &[u8]) {
    let l = limits();
    match Message::<PeerId>::decode(body, &l) {
        Ok(m) => {
            assert_eq!(m.to_body(), body, "accepted a non-canonical body");
            assert_eq!(m.body_len(), body.len());
        }
        Err(e) => assert!(!e.kind().is_empty() && !e.to_string().is_empty()),
    }
    if let Ok(m) = Message::<u32>::decode(body, &l) {
        assert_eq!(m.to_body(), body, "accepted a non-canonical body");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..600)) {
        check(&body);
    }

    #[test]
    fn random_bodies_with_a_valid_type_never_panic(code in 1u8..=11, rest in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut body = vec![code];
        body.extend(rest);
        check(&body);
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        which in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        extra in proptest::collection::vec(any::<u8>(), 0..8),
        mode in 0u8..3,
    ) {
        let all = samples();
        let mut body = all[which.index(all.len())].to_body();
        for (i, b) in &flips {
            let i = i.index(body.len());
            body[i] ^= b;
        }
        match mode {
            0 => body.truncate(cut.index(body.len() + 1)),
            1 => body.extend(&extra),
            _ => {}
        }
        check(&body);
    }

    #[test]
    fn random_streams_split_safely(stream in proptest::collection::vec(any::<u8>(), 0..64)) {
        // Whatever the length prefix says, the reader never asks for more
        // than the limit and never reads past the buffer.
        match split_frame(&stream, 1024) {
            Ok(Some((body, used))) => prop_assert!(used <= stream.len() && body.len() + 4 == used),
            Ok(None) => {}
            Err(DecodeError::Empty) | Err(DecodeError::TooLarge { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}

#[test]
fn every_sample_round_trips_through_a_frame() {
    for m in samples() {
        let frame = m.to_frame(&limits()).unwrap();
        assert_eq!(m.body_len() + 4, frame.len(), "{m:?}");
        let (body, used) = split_frame(&frame, limits().max_frame_size)
            .unwrap()
            .unwrap();
        assert_eq!(used, frame.len());
        assert_eq!(Message::<PeerId>::decode(body, &limits()).unwrap(), m);
        // Every strict prefix of a body is an error, never a different message.
        for cut in 0..body.len() {
            assert!(
                Message::<PeerId>::decode(&body[..cut], &limits()).is_err(),
                "{m:?} cut at {cut}"
            );
        }
    }
}

#[test]
fn body_len_is_the_encoded_length_for_small_identities_too() {
    for origin in [0u32, 127, 128, 300, u32::MAX] {
        let m = Message::<u32>::Prune(Prune { origin });
        assert_eq!(m.body_len(), m.to_body().len(), "{origin}");
    }
}

#[test]
fn a_huge_length_prefix_inside_a_field_does_not_allocate_it() {
    // IHAVE claiming 2^32-1 entries in a 10-byte body: refused as truncated
    // without reserving memory for four billion entries.
    let body = [9u8, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0, 0, 0, 0];
    assert_eq!(
        Message::<PeerId>::decode(&body, &limits()),
        Err(DecodeError::Truncated)
    );
}

#[test]
fn limits_on_fields_are_enforced() {
    let l = limits();
    let big = Message::<PeerId>::Join(Join {
        data: PeerData::from(vec![0; l.max_peer_data_size + 1]),
    });
    assert!(matches!(
        Message::<PeerId>::decode(&big.to_body(), &l),
        Err(DecodeError::TooLarge {
            what: "peer data",
            ..
        })
    ));
    let many = Message::<PeerId>::ShuffleReply(ShuffleReply {
        nodes: (0..l.max_shuffle_entries as u8 + 1).map(info).collect(),
    });
    assert!(matches!(
        Message::<PeerId>::decode(&many.to_body(), &l),
        Err(DecodeError::TooLarge {
            what: "shuffle entries",
            ..
        })
    ));
}
