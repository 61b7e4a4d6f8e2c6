//! The server core against the attacks measured in issue 11, without a
//! socket: every quota, every refusal and its count, presence, rendezvous,
//! relay pairing, replication acknowledgements.

mod common;

use common::{Net, code_of, key};
use rendezvous::server::{Config, Input, Output};
use rendezvous::{ErrorCode, FriendRef, PeerRecord, Request, Response, ServerMsg};
use std::time::Duration;

fn registered(r: &Option<Response>) -> bool {
    matches!(r, Some(Response::Registered))
}

#[test]
fn a_name_stays_with_its_first_holder_and_a_seq_far_ahead_is_refused() {
    let mut net = Net::new(3, Config::default());
    let alice = net.connect(0, 1, "198.51.100.1");
    assert!(registered(&net.register(&alice, "alice")));
    // Mallory's seq = u64::MAX used to win every lookup forever.
    let mallory = net.connect(1, 2, "198.51.100.2");
    let req = net.register_request(&mallory, "alice", u64::MAX);
    let r = net.ask(&mallory, req);
    assert_eq!(code_of(&r), Some(ErrorCode::Invalid), "{r:?}");
    // A normal later registration of the same name does not take it over.
    assert!(registered(&net.register(&mallory, "alice")));
    let bob = net.connect(2, 3, "198.51.100.3");
    for server in 0..3 {
        let probe = net.connect(server, 50 + server as u64, "198.51.100.9");
        match net.ask(&probe, Request::LookupName("alice".into())) {
            Some(Response::Record(Some(r))) => assert_eq!(r.body.peer, alice.id(), "at {server}"),
            other => panic!("lookup at {server}: {other:?}"),
        }
        match net.ask(&probe, Request::FindName("alice".into())) {
            Some(Response::Records(all)) => {
                let ids: Vec<_> = all.iter().map(|r| r.body.peer).collect();
                assert_eq!(ids, vec![alice.id(), mallory.id()], "oldest holder first");
            }
            other => panic!("find at {server}: {other:?}"),
        }
    }
    // Bob meets "alice" by name: ambiguous, so nobody is told anything.
    assert!(registered(&net.register(&bob, "bob")));
    let notices_before = net.notices.len();
    match net.meet(&bob, FriendRef::Name("alice".into())) {
        Some(Response::Records(all)) => assert_eq!(all.len(), 2),
        other => panic!("{other:?}"),
    }
    assert_eq!(net.notices.len(), notices_before);
    assert_eq!(net.servers[1].stats().refusals(ErrorCode::Invalid), 1);
}

#[test]
fn a_name_waiter_is_told_only_about_the_single_holder_it_asked_for() {
    let mut net = Net::new(2, Config::default());
    let bob = net.connect(0, 3, "198.51.100.3");
    assert!(registered(&net.register(&bob, "bob")));
    assert_eq!(
        net.meet(&bob, FriendRef::Name("carol".into())),
        Some(Response::Waiting)
    );
    // Someone else registers under another name: bob hears nothing.
    let dave = net.connect(1, 4, "198.51.100.4");
    assert!(registered(&net.register(&dave, "dave")));
    assert!(net.notices_of(&bob).is_empty());
    // Carol arrives at the other server: bob is told (by his server), and
    // carol is told about bob by a message to her home server only.
    let carol = net.connect(1, 5, "198.51.100.5");
    net.sent.clear();
    let broadcasts = net.broadcasts;
    assert!(registered(&net.register(&carol, "carol")));
    let told: Vec<_> = net.notices_of(&bob).iter().map(|r| r.body.peer).collect();
    assert_eq!(told, vec![carol.id()]);
    let told: Vec<_> = net.notices_of(&carol).iter().map(|r| r.body.peer).collect();
    assert_eq!(told, vec![bob.id()]);
    let rendezvous: Vec<_> = net
        .sent
        .iter()
        .filter(|(_, _, m)| matches!(m, ServerMsg::Meeting { .. }))
        .map(|(from, to, _)| (*from, *to))
        .collect();
    assert_eq!(rendezvous, vec![(0, net.servers[1].id())]);
    // The registration broadcast is the only broadcast (no rendezvous flood).
    assert_eq!(net.broadcasts - broadcasts, 1);
}

/// The start instant handed to both sides of a meeting with another
/// server's client: `a` meets `b` and both delays are returned.
fn start_delays(net: &mut Net, a: &common::Client, b: &common::Client) -> (u32, u32) {
    let asked = match net.meet(a, FriendRef::Id(b.id())) {
        Some(Response::Friend { start_in_ms, .. }) => start_in_ms,
        other => panic!("{other:?}"),
    };
    let told = net
        .notices
        .iter()
        .rev()
        .find_map(|(s, conn, n)| match n {
            rendezvous::Notice::Friend { start_in_ms, .. } if *s == b.server && *conn == b.conn => {
                Some(*start_in_ms)
            }
            _ => None,
        })
        .expect("b was told");
    (asked, told)
}

#[test]
fn a_meeting_across_servers_starts_after_the_measured_hop_not_a_guess() {
    let mut net = Net::new(2, Config::default());
    let a = net.connect(0, 1, "198.51.100.1");
    let b = net.connect(1, 2, "198.51.100.2");
    assert!(registered(&net.register(&a, "a")));
    assert!(registered(&net.register(&b, "b")));
    // Unmeasured: the assumed hop (50 ms) + the notice's way to b (as far
    // as a's, 10 ms) + 5 ms of slack, less a's own 10 ms to hear it.
    assert_eq!(start_delays(&mut net, &a, &b), (55, 55));
    // The driver measured 4 ms to server 1: a hop of 2 ms.
    let far = net.servers[1].id();
    net.input(0, Input::ServerRtts(vec![(far, Duration::from_millis(4))]));
    let (asked, told) = start_delays(&mut net, &a, &b);
    assert_eq!(
        (asked, told),
        (7, 7),
        "both start at the same instant, soon"
    );
    // A list without server 1 forgets its RTT: back to the assumption.
    net.input(0, Input::ServerRtts(Vec::new()));
    assert_eq!(start_delays(&mut net, &a, &b).0, 55);
}

#[test]
fn meeting_by_id_tells_the_friend_at_its_home_only() {
    let mut net = Net::new(
        4,
        Config {
            max_waits_per_conn: 4,
            ..Config::default()
        },
    );
    let a = net.connect(0, 1, "198.51.100.1");
    let b = net.connect(3, 2, "198.51.100.2");
    assert!(registered(&net.register(&a, "a")));
    assert!(registered(&net.register(&b, "b")));
    net.sent.clear();
    let broadcasts = net.broadcasts;
    match net.meet(&a, FriendRef::Id(b.id())) {
        Some(Response::Friend {
            record,
            start_in_ms,
        }) => {
            assert_eq!(record.body.peer, b.id());
            assert!(start_in_ms <= 1000);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(net.broadcasts, broadcasts, "a meeting broadcasts nothing");
    // One message to b's home, and its choice of relay back (neither
    // reported latencies: the pair falls back).
    let sent: Vec<_> = net.sent.iter().map(|(f, t, _)| (*f, *t)).collect();
    assert_eq!(
        sent,
        vec![(0, net.servers[3].id()), (3, net.servers[0].id())]
    );
    assert_eq!(net.relays_of(&a), vec![(b.id(), None)]);
    assert_eq!(net.relays_of(&b), vec![(a.id(), None)]);
    assert_eq!(
        net.notices_of(&b)
            .iter()
            .map(|r| r.body.peer)
            .collect::<Vec<_>>(),
        vec![a.id()]
    );
    // Meeting a peer that is not online waits, within a bound per connection.
    for i in 0..4 {
        let (_, ghost) = key(900 + i);
        assert_eq!(net.meet(&a, FriendRef::Id(ghost)), Some(Response::Waiting));
    }
    let (_, ghost) = key(999);
    let r = net.meet(&a, FriendRef::Id(ghost));
    assert_eq!(code_of(&r), Some(ErrorCode::TooManyWaits));
    // Names are checked like record names (a 64 KiB name is refused).
    let r = net.meet(&a, FriendRef::Name("x".repeat(65_536)));
    assert_eq!(code_of(&r), Some(ErrorCode::Invalid));
    let r = net.meet(&a, FriendRef::Name("a\nb".into()));
    assert_eq!(code_of(&r), Some(ErrorCode::Invalid));
    assert_eq!(net.servers[0].waiting(), 4);
    net.close(&a);
    assert_eq!(net.servers[0].waiting(), 0, "waits go with the connection");
}

#[test]
fn one_address_gets_a_bounded_number_of_live_registrations_and_new_ids() {
    let cfg = Config {
        per_ip_records: 5,
        new_ids_per_min: 4.0,
        conn_rate: (100.0, 100.0),
        ip_rate: (100.0, 100.0),
        ..Config::default()
    };
    let mut net = Net::new(2, cfg);
    let mut ok = 0;
    let mut codes = Vec::new();
    for seed in 1..=12u64 {
        let c = net.connect(0, seed, "203.0.113.50");
        match net.register(&c, &format!("p{seed}")) {
            Some(Response::Registered) => ok += 1,
            other => codes.push(code_of(&other)),
        }
    }
    assert_eq!(ok, 5);
    assert!(
        codes.iter().all(|c| *c == Some(ErrorCode::QuotaAddress)),
        "{codes:?}"
    );
    // Another address is not affected; an IPv6 /64 counts as one address.
    let other = net.connect(0, 100, "203.0.113.51");
    assert!(registered(&net.register(&other, "other")));
    let mut v6_ok = 0;
    for seed in 200..210u64 {
        let c = net.connect(0, seed, &format!("[2001:db8:1:2::{:x}]", seed));
        if registered(&net.register(&c, "v6")) {
            v6_ok += 1;
        }
    }
    assert_eq!(v6_ok, 5, "one /64, one quota");
    // New identities are rate limited per address even when they come and go.
    let mut net = Net::new(
        1,
        Config {
            new_ids_per_min: 2.0,
            ..Config::default()
        },
    );
    let mut refused = None;
    for seed in 1..=10u64 {
        let c = net.connect(0, seed, "203.0.113.60");
        let r = net.register(&c, "churn");
        net.close(&c);
        if let Some(Response::Error(e)) = r {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("churning identities are refused at some point");
    assert_eq!(e.code, ErrorCode::QuotaNewIds);
    assert!(e.retry_after_ms > 0);
    assert_eq!(net.servers[0].stats().refusals(ErrorCode::QuotaNewIds), 1);
}

#[test]
fn capacity_is_enforced_here_and_on_records_replicated_from_elsewhere() {
    let cfg = Config {
        capacity: 3,
        per_ip_records: 100,
        new_ids_per_min: 1000.0,
        ..Config::default()
    };
    let mut net = Net::new(2, cfg);
    for seed in 1..=3u64 {
        let c = net.connect(0, seed, &format!("198.51.100.{seed}"));
        assert!(registered(&net.register(&c, "x")));
    }
    let c = net.connect(0, 4, "198.51.100.4");
    assert_eq!(code_of(&net.register(&c, "x")), Some(ErrorCode::ServerFull));
    // A lying home server (or a bug) cannot push more than its capacity
    // into the other tables: server 1 refuses the fourth record homed at 0.
    let (k, id) = key(5);
    let body = rendezvous::RecordBody {
        peer: id,
        name: "extra".into(),
        home_server: net.servers[0].id(),
        public_addr: Some("198.51.100.5:1".parse().unwrap()),
        private_addrs: vec![],
        seq: 1,
        expires_at: net.now.unix() + 600,
        nat: rendezvous::NatMapping::Unknown,
    };
    let record = PeerRecord::sign(&k, body);
    let origin = net.servers[0].id();
    net.input(
        1,
        Input::Delivery {
            origin,
            payload: rendezvous::Payload::Record(record.clone().into()).encode(),
        },
    );
    assert_eq!(net.servers[1].table().homed_at(&net.servers[0].id()), 3);
    assert_eq!(net.servers[1].stats().rejected.get("home_cap"), Some(&1));
    // Delivered already decoded (a simulator sharing one copy among its
    // cores), it meets the same checks.
    let shared = rendezvous::Payload::Record(record.into());
    net.input(
        1,
        Input::Decoded {
            origin,
            payload: shared,
        },
    );
    assert_eq!(net.servers[1].table().homed_at(&net.servers[0].id()), 3);
    assert_eq!(net.servers[1].stats().rejected.get("home_cap"), Some(&2));
}

#[test]
fn the_table_has_a_global_cap() {
    let cfg = Config {
        max_records: 4,
        per_ip_records: 100,
        new_ids_per_min: 1000.0,
        ..Config::default()
    };
    let mut net = Net::new(1, cfg);
    let mut codes = Vec::new();
    for seed in 1..=6u64 {
        let c = net.connect(0, seed, &format!("198.51.100.{seed}"));
        codes.push(code_of(&net.register(&c, "x")));
    }
    assert_eq!(
        codes,
        vec![
            None,
            None,
            None,
            None,
            Some(ErrorCode::TableFull),
            Some(ErrorCode::TableFull)
        ]
    );
}

#[test]
fn presence_is_the_connection() {
    let mut net = Net::new(3, Config::default());
    let a = net.connect(0, 1, "198.51.100.1");
    assert!(registered(&net.register(&a, "alice")));
    for s in 0..3 {
        assert!(net.servers[s].lookup(&a.id(), net.now).is_some());
    }
    net.close(&a);
    for s in 0..3 {
        assert!(
            net.servers[s].lookup(&a.id(), net.now).is_none(),
            "offline at {s}"
        );
        assert!(
            net.servers[s]
                .table()
                .holders("alice", net.now.unix(), |_| true, 4)
                .is_empty()
        );
    }
    assert_eq!(net.servers[0].stats().get("clients_gone"), 1);
    assert_eq!(net.servers[0].clients_registered(), 0);
}

#[test]
fn a_registration_is_acknowledged_once_another_server_has_it() {
    let mut net = Net::new(3, Config::default());
    net.hold_stored = true;
    let a = net.connect(0, 1, "198.51.100.1");
    let seq = net.now.unix_ms;
    let request = net.register_request(&a, "a", seq);
    let req = net.send(&a, request);
    assert_eq!(
        net.response(&a, req),
        None,
        "not before a copy is confirmed"
    );
    assert_eq!(net.servers[0].pending_acks(), 1);
    // The Stored answer never comes: after each timeout another server is
    // asked (both others, then one again); then the client is told to retry.
    net.run_for(Duration::from_secs(10));
    let stores: Vec<_> = net
        .sent
        .iter()
        .filter(|(f, _, m)| *f == 0 && matches!(m, ServerMsg::Store { .. }))
        .map(|(_, to, _)| *to)
        .collect();
    assert_eq!(stores.len(), 3, "three attempts");
    assert_ne!(
        stores[0], stores[1],
        "the second attempt asks another server"
    );
    assert_eq!(
        code_of(&net.response(&a, req)),
        Some(ErrorCode::NotReplicated)
    );
    // With acknowledgements flowing, a retry is accepted, and so is the
    // very same record again (idempotent).
    net.hold_stored = false;
    let retry = net.register(&a, "a");
    assert!(registered(&retry), "{retry:?}");
    let again = net.register_request(&a, "a", net.now.unix_ms);
    let retry = net.ask(&a, again);
    assert!(registered(&retry), "{retry:?}");
    // Cut off from a server it still believes alive (a partition), a
    // server does not acknowledge on its own; once that one is declared
    // dead (silent for `dead_after`), it serves alone.
    let mut cut = Net::new(2, Config::default());
    cut.unreachable.insert(1);
    let peer = cut.servers[1].id();
    cut.input(0, Input::NeighborDown(peer));
    let c = cut.connect(0, 1, "198.51.100.1");
    let req = {
        let r = cut.register_request(&c, "c", cut.now.unix_ms);
        cut.send(&c, r)
    };
    cut.run_for(Duration::from_secs(5));
    assert_eq!(
        code_of(&cut.response(&c, req)),
        Some(ErrorCode::NotReplicated)
    );
    assert!(cut.servers[0].members().live().next().is_some());
    cut.run_for(Duration::from_secs(97));
    assert!(cut.servers[0].members().live().next().is_none());
    assert!(registered(&cut.register(&c, "c")));
    // A server alone in its cluster acknowledges at once.
    let mut alone = Net::new(1, Config::default());
    let c = alone.connect(0, 1, "198.51.100.1");
    assert!(registered(&alone.register(&c, "c")));
}

#[test]
fn costly_requests_are_rate_limited_with_a_retry_hint() {
    let mut net = Net::new(1, Config::default());
    let a = net.connect(0, 1, "198.51.100.1");
    assert!(registered(&net.register(&a, "a")));
    let mut limited = None;
    for _ in 0..100 {
        if let Some(Response::Error(e)) = net.meet(&a, FriendRef::Name("nobody".into())) {
            limited = Some(e);
            break;
        }
    }
    let e = limited.expect("limited within the burst");
    assert_eq!(e.code, ErrorCode::RateLimited);
    assert!(e.retry_after_ms > 0 && e.retry_after_ms <= 1000, "{e:?}");
    // Lookups are not limited.
    for _ in 0..100 {
        assert!(matches!(
            net.ask(&a, Request::Lookup(a.id())),
            Some(Response::Record(Some(_)))
        ));
    }
}

#[test]
fn connections_are_capped_per_address_and_in_all() {
    let mut net = Net::new(
        1,
        Config {
            per_ip_connections: 3,
            max_connections: 5,
            ..Config::default()
        },
    );
    for seed in 1..=4u64 {
        net.connect(0, seed, "198.51.100.1");
    }
    assert_eq!(net.closes.len(), 1, "the fourth from one address");
    for seed in 5..=8u64 {
        net.connect(0, seed, &format!("198.51.100.{seed}"));
    }
    assert_eq!(net.servers[0].connections(), 5);
    assert_eq!(net.closes.len(), 3);
    assert_eq!(
        net.servers[0]
            .stats()
            .refusals(ErrorCode::TooManyConnections),
        3
    );
}

#[test]
fn connections_are_capped_per_identity_and_idle_anonymous_ones_make_room() {
    let mut net = Net::new(
        1,
        Config {
            per_peer_connections: 2,
            max_anonymous: 3,
            anonymous_idle: Duration::from_secs(30),
            ..Config::default()
        },
    );
    let closed = |net: &Net, c: &common::Client| net.closes.iter().any(|(_, id, _)| *id == c.conn);
    // One identity: two connections, not a third (from any address).
    let a1 = net.connect(0, 1, "198.51.100.1");
    let a2 = net.connect(0, 1, "198.51.100.2");
    let a3 = net.connect(0, 1, "198.51.100.3");
    assert!(!closed(&net, &a1) && !closed(&net, &a2));
    assert!(
        net.closes
            .iter()
            .any(|(_, id, why)| *id == a3.conn && why.contains("identity"))
    );
    // A registered connection is not anonymous any more.
    assert!(registered(&net.register(&a1, "alice")));
    // Anonymous now: a2, b, c (the cap). A fourth closes the one idle
    // longest: a2, not the newcomer.
    let b = net.connect(0, 2, "198.51.100.4");
    let c = net.connect(0, 3, "198.51.100.5");
    net.run_for(Duration::from_secs(5));
    assert!(
        net.ask(&a2, Request::WhoAmI).is_some(),
        "a request: a2 is the newest now"
    );
    let d = net.connect(0, 4, "198.51.100.6");
    assert!(closed(&net, &b), "b was idle longest");
    assert!(!closed(&net, &a2) && !closed(&net, &c) && !closed(&net, &d));
    assert_eq!(
        net.servers[0]
            .stats()
            .refusals(ErrorCode::TooManyConnections),
        2
    );
    // Idle anonymous connections go after 30 s without a request; one that
    // keeps asking stays, and so does the registered one.
    for _ in 0..4 {
        net.run_for(Duration::from_secs(10));
        assert!(net.ask(&d, Request::WhoAmI).is_some());
    }
    assert!(closed(&net, &a2) && closed(&net, &c));
    assert!(!closed(&net, &d) && !closed(&net, &a1));
}

#[test]
fn a_connection_that_keeps_asking_for_what_it_is_refused_is_closed() {
    let mut net = Net::new(
        1,
        Config {
            refusals_per_conn: (0.5, 5.0),
            ..Config::default()
        },
    );
    let a = net.connect(0, 1, "198.51.100.1");
    let b = net.connect(0, 2, "198.51.100.2");
    let closed = |net: &Net, c: &common::Client| {
        net.closes
            .iter()
            .any(|(_, id, why)| *id == c.conn && *why == "too many refused requests")
    };
    // Meeting before registering is refused; five are tolerated.
    for _ in 0..5 {
        assert_eq!(
            code_of(&net.meet(&a, FriendRef::Id(key(2).1))),
            Some(ErrorCode::NotRegistered)
        );
    }
    assert!(!closed(&net, &a));
    assert!(code_of(&net.meet(&a, FriendRef::Id(key(2).1))).is_some());
    assert!(closed(&net, &a), "the sixth refusal in a row closes it");
    // One that waits between refusals (one per 2 s here) stays.
    for _ in 0..12 {
        assert!(code_of(&net.meet(&b, FriendRef::Id(key(1).1))).is_some());
        net.run_for(Duration::from_secs(2));
    }
    assert!(!closed(&net, &b));
}

#[test]
fn private_addresses_that_are_not_lan_addresses_are_refused() {
    let mut net = Net::new(1, Config::default());
    let a = net.connect(0, 1, "198.51.100.1");
    let mut record = net.record(&a, "a", 5);
    record.body.private_addrs = vec!["8.8.8.8:53".parse().unwrap()];
    let record = PeerRecord::sign(&key(1).0, record.body);
    let withdrawal = PeerRecord::withdrawal(&key(1).0, &record.body, net.now.unix());
    let r = net.ask(&a, Request::RegisterLive { record, withdrawal });
    assert_eq!(code_of(&r), Some(ErrorCode::Invalid));
}

#[test]
fn a_relay_needs_a_meeting_and_its_slots_go_with_the_connection() {
    let cfg = Config {
        relay_sessions: 1,
        ..Config::default()
    };
    let mut net = Net::new(1, cfg);
    let a = net.connect(0, 1, "198.51.100.1");
    let b = net.connect(0, 2, "198.51.100.2");
    // Strangers (or unregistered keys) cannot take relay slots.
    let r = net.ask(&a, Request::Relay(b.id()));
    assert_eq!(code_of(&r), Some(ErrorCode::RelayNotMet));
    assert!(registered(&net.register(&a, "a")));
    assert!(registered(&net.register(&b, "b")));
    assert!(matches!(
        net.meet(&a, FriendRef::Id(b.id())),
        Some(Response::Friend { .. })
    ));
    assert_eq!(
        net.ask(&a, Request::Relay(a.id()))
            .map(|r| code_of(&Some(r))),
        Some(Some(ErrorCode::RelaySelf))
    );
    assert_eq!(net.ask(&a, Request::Relay(b.id())), None, "waits for b");
    assert_eq!(net.ask(&b, Request::Relay(a.id())), None, "paired");
    assert_eq!(net.relay_pairs.len(), 1);
    assert_eq!(net.servers[0].relay_sessions(), 1);
    // The server is full now.
    let c = net.connect(0, 3, "198.51.100.3");
    let d = net.connect(0, 4, "198.51.100.4");
    assert!(registered(&net.register(&c, "c")));
    assert!(registered(&net.register(&d, "d")));
    assert!(matches!(
        net.meet(&c, FriendRef::Id(d.id())),
        Some(Response::Friend { .. })
    ));
    assert_eq!(
        code_of(&net.ask(&c, Request::Relay(d.id()))),
        Some(ErrorCode::RelayFull)
    );
    // a goes: the session is stopped and its slot freed.
    net.close(&a);
    assert_eq!(net.relay_stops.len(), 1);
    assert_eq!(net.servers[0].relay_sessions(), 0);
    assert_eq!(net.ask(&c, Request::Relay(d.id())), None, "waits for d");
    // d never comes: c is told after the wait.
    net.run_for(Duration::from_secs(16));
    let last = net
        .responses
        .iter()
        .rev()
        .find(|(_, conn, _, _)| *conn == c.conn)
        .map(|(_, _, _, r)| r.clone());
    assert_eq!(code_of(&last), Some(ErrorCode::RelayNoFriend));
}

#[test]
fn paged_anti_entropy_converges_on_large_tables_with_bounded_messages() {
    converge_after_a_cut(64, 8, 0);
}

/// A bucket bigger than one round's pages (16 pages of 1 version here) is
/// resumed where the last round stopped, not started over.
#[test]
fn a_bucket_bigger_than_a_round_is_resumed_not_restarted() {
    // 6,000 records both hold (~23 per bucket), then 3,000 more at one
    // server: many differences lie beyond the first 16 ids of a bucket.
    converge_after_a_cut(1, 256, 6_000);
}

/// `common` records reach both servers; then server 1 is cut off while
/// 3,000 more register at server 0; after the cut the tables must agree.
fn converge_after_a_cut(page_versions: usize, buckets_per_round: usize, common: u64) {
    let cfg = Config {
        page_versions,
        page_records: 16,
        sync_buckets_per_round: buckets_per_round,
        per_ip_records: 1_000_000,
        new_ids_per_min: 1e9,
        capacity: 100_000,
        broadcast_rate: (1e9, 1e9),
        conn_rate: (1e9, 1e9),
        ip_rate: (1e9, 1e9),
        ..Config::default()
    };
    let mut net = Net::new(2, cfg);
    for seed in 1_000_000..1_000_000 + common {
        let c = net.connect(
            0,
            seed,
            &format!("10.9.{}.{}", (seed >> 8) & 255, seed & 255),
        );
        net.register(&c, "both");
    }
    assert_eq!(net.servers[1].table().len() as u64, common);
    // Server 1 is cut off while 3,000 clients register at server 0.
    net.unreachable.insert(1);
    for seed in 1..=3_000u64 {
        let c = net.connect(
            0,
            seed,
            &format!("10.{}.{}.{}", seed >> 16, (seed >> 8) & 255, seed & 255),
        );
        let r = net.register(&c, "many");
        assert!(matches!(r, Some(Response::Error(_)) | Some(Response::Registered)) || r.is_none());
    }
    // Long enough for every copy request (Store) to give up: only
    // anti-entropy can repair server 1.
    net.run_for(Duration::from_secs(5));
    assert_eq!(net.servers[0].pending_acks(), 0);
    net.unreachable.clear();
    assert_eq!(net.servers[1].table().len() as u64, common);
    net.sent.clear();
    let mut rounds = 0;
    while net.servers[0].table().digest() != net.servers[1].table().digest() {
        net.run_for(Duration::from_secs(1));
        rounds += 1;
        assert!(
            rounds < 300,
            "did not converge: {} of {}",
            net.servers[1].table().len(),
            3_000 + common
        );
    }
    assert_eq!(net.servers[1].table().len() as u64, 3_000 + common);
    let biggest = net
        .sent
        .iter()
        .map(|(_, _, m)| postcard::to_allocvec(m).unwrap().len())
        .max()
        .unwrap();
    assert!(biggest <= rendezvous::proto::MAX_SERVER_FRAME, "{biggest}");
    assert!(biggest <= 16 * 1024, "pages stay small: {biggest} bytes");
}

#[test]
fn the_same_inputs_give_the_same_outputs() {
    let run = || {
        let mut net = Net::new(3, Config::default());
        let a = net.connect(0, 1, "198.51.100.1");
        let b = net.connect(1, 2, "198.51.100.2");
        net.register(&a, "a");
        net.register(&b, "b");
        net.meet(&a, FriendRef::Name("b".into()));
        net.run_for(Duration::from_secs(3));
        net.close(&a);
        net.run_for(Duration::from_secs(1));
        format!("{:?}{:?}", net.responses, net.sent)
    };
    assert_eq!(run(), run());
}

#[test]
fn refusals_and_rejections_are_counted_by_reason() {
    let mut net = Net::new(2, Config::default());
    let a = net.connect(0, 1, "198.51.100.1");
    let mut r = net.record(&a, "a", 5);
    r.body.home_server = net.servers[1].id();
    let r = PeerRecord::sign(&key(1).0, r.body);
    let w = PeerRecord::withdrawal(&key(1).0, &r.body, net.now.unix());
    assert_eq!(
        code_of(&net.ask(
            &a,
            Request::RegisterLive {
                record: r,
                withdrawal: w
            }
        )),
        Some(ErrorCode::WrongHome)
    );
    net.input(
        0,
        Input::ClientMalformed {
            conn: a.conn,
            req: 77,
            error: rendezvous::Malformed::Undecodable("bad".into()),
        },
    );
    let stats = net.servers[0].stats();
    assert_eq!(stats.refusals(ErrorCode::WrongHome), 1);
    assert_eq!(stats.refusals(ErrorCode::Malformed), 1);
    let origin = net.servers[1].id();
    net.input(
        0,
        Input::Delivery {
            origin,
            payload: bytes::Bytes::from_static(&[2, 0xff]),
        },
    );
    assert_eq!(net.servers[0].stats().rejected.get("undecodable"), Some(&1));
    let _ = Output::Broadcast(bytes::Bytes::new());
}

/// Announces every `heartbeat` would cost each server servers ÷ 30 s
/// deliveries per second, without bound: in a cluster larger than
/// `heartbeat` × `announce_budget` ÷ 2 the interval, the silence backstop
/// and the spacing of early announces grow with the cluster. Here a budget
/// of 0.2 announces/s makes 10 servers a "large" cluster: 2·10 ÷ 0.2 =
/// 100 s between announces (not 30), dead after 333 s (not 100), early
/// announces 10 ÷ 0.2 = 50 s apart at least (not 5).
#[test]
fn the_announce_interval_and_the_silence_limit_grow_with_the_cluster() {
    let cfg = Config {
        announce_budget: 0.2,
        capacity: 100,
        ..Config::default()
    };
    assert_eq!(cfg.heartbeat, Duration::from_secs(30));
    assert_eq!(cfg.dead_after, Duration::from_secs(100));
    let secs = |d: Duration| (d.as_secs_f64() * 1000.0).round() / 1000.0;
    let mut net = Net::new(10, cfg.clone());
    // The first announces were made knowing nobody. The second comes at a
    // random point of the first interval (their phases spread) — of the
    // interval at the size learnt since, 100 s, not the 30 s of a server
    // alone: a large fleet started at once would otherwise announce twice
    // within 30 s, over the budget.
    assert_eq!(net.broadcasts, 10);
    let s0 = &net.servers[0];
    assert_eq!(s0.members().live_count(), 9);
    assert_eq!(s0.announce_interval(), Duration::from_secs(100));
    assert_eq!(secs(s0.dead_after()), 333.333);
    assert_eq!(s0.announce_spacing(), Duration::from_secs(50));
    net.run_for(Duration::from_secs(30));
    assert!(net.broadcasts < 20, "not all seconds within 30 s");
    net.run_for(Duration::from_secs(70));
    assert_eq!(net.broadcasts, 20, "each one's second, within 100 s");
    // Knowing 10 servers, each schedules its next one 100 s after its
    // second: within 100 s from now, spread out.
    let nexts: Vec<overlay::Time> = net
        .servers
        .iter()
        .map(|s| s.next_announce().unwrap())
        .collect();
    for t in &nexts {
        let ahead = t.saturating_since(net.now.mono);
        assert!(ahead > Duration::ZERO && ahead <= Duration::from_secs(100));
    }
    let spread = nexts
        .iter()
        .max()
        .unwrap()
        .saturating_since(*nexts.iter().min().unwrap());
    assert!(
        spread >= Duration::from_secs(10),
        "phases spread: {spread:?}"
    );
    // Server 9 falls silent (no neighbor notices: no suspicion).
    let last_heard = nexts[9] - Duration::from_secs(100);
    net.unreachable.insert(9);
    let nine = net.servers[9].id();
    let first = *nexts.iter().min().unwrap();
    net.run_for(first.saturating_since(net.now.mono) - Duration::from_millis(100));
    assert_eq!(net.broadcasts, 20, "nobody announced within 100 s");
    let last = *nexts.iter().max().unwrap();
    net.run_for(last.saturating_since(net.now.mono) + Duration::from_millis(100));
    assert_eq!(net.broadcasts, 30, "everyone announced 100 s after");
    // Silent for longer than the unscaled 100 s, less than 333 s: alive.
    let until = |net: &Net, secs: u64| {
        (last_heard + Duration::from_secs(secs)).saturating_since(net.now.mono)
    };
    net.run_for(until(&net, 330));
    assert!(
        (0..9).all(|i| net.servers[i].members().is_live(&nine)),
        "silent for 330 s of 333: not dead yet"
    );
    net.run_for(until(&net, 335));
    assert!(
        (0..9).all(|i| !net.servers[i].members().is_live(&nine)),
        "silent for 335 s: dead"
    );
    // Nine left: 2·9 ÷ 0.2 = 90 s, and dead after 300 s.
    assert_eq!(net.servers[0].members().live_count(), 8);
    assert_eq!(secs(net.servers[0].announce_interval()), 90.0);
    assert_eq!(secs(net.servers[0].dead_after()), 300.0);

    // A load change (10 clients: 1% of capacity, at least 10) is announced
    // early, but not before the scaled spacing of 50 s.
    let mut net = Net::new(10, cfg);
    net.run_for(Duration::from_secs(100)); // the second round: 100 s to the next
    // From server 0's second announce on.
    let second = net.servers[0].next_announce().unwrap() - Duration::from_secs(100);
    net.run_for((second + Duration::from_secs(1)).saturating_since(net.now.mono));
    let zero = net.servers[0].id();
    let clients_at_1 = |net: &Net| net.servers[1].members().get(&zero).unwrap().record.clients;
    for k in 0..10u64 {
        let c = net.connect(0, 100 + k, &format!("198.51.100.{}", 10 + k));
        assert!(registered(&net.register(&c, &format!("c{k}"))));
    }
    net.run_for((second + Duration::from_secs(45)).saturating_since(net.now.mono));
    assert_eq!(
        clients_at_1(&net),
        0,
        "45 s after the last announce: held back"
    );
    net.run_for(Duration::from_secs(5) + Duration::from_millis(100));
    assert_eq!(clients_at_1(&net), 10, "50 s after it: announced early");
}

/// Up to `heartbeat` × `announce_budget` ÷ 2 servers (3,000 with the
/// defaults) the tempo is the configured one, unscaled.
#[test]
fn a_small_cluster_keeps_the_configured_announce_tempo() {
    let mut net = Net::new(5, Config::default());
    let s = &net.servers[0];
    assert_eq!(s.announce_interval(), Duration::from_secs(30));
    assert_eq!(s.dead_after(), Duration::from_secs(100));
    assert_eq!(s.announce_spacing(), Duration::from_secs(5));
    net.run_for(Duration::from_secs(30));
    assert_eq!(net.broadcasts, 10, "each one's second, within 30 s");
    for s in &net.servers {
        let ahead = s.next_announce().unwrap().saturating_since(net.now.mono);
        assert!(ahead > Duration::ZERO && ahead <= Duration::from_secs(30));
    }
    net.run_for(Duration::from_secs(30));
    assert_eq!(net.broadcasts, 15, "then every 30 s");
}

/// After a partition, the servers of each side declared the other's dead
/// (by suspicion or silence). The first announce that crosses the healed
/// link revives its sender; whoever sees a revival announces within the
/// spacing rule instead of at its next regular interval, so the other
/// side hears from it in seconds — a server that never declared it dead
/// (its suspicions were of another version) would otherwise reach the
/// silence limit before its next regular announce crossed.
#[test]
fn a_server_that_sees_another_come_back_announces_soon() {
    let cfg = Config {
        capacity: 100, // 10 new clients are a load change worth announcing
        ..Config::default()
    };
    let mut net = Net::new(4, cfg);
    net.run_for(Duration::from_secs(30));
    net.unreachable.insert(3);
    net.run_for(Duration::from_secs(102));
    let ids: Vec<_> = net.servers.iter().map(|s| s.id()).collect();
    assert!((0..3).all(|i| !net.servers[i].members().is_live(&ids[3])));
    assert!((0..3).all(|i| !net.servers[3].members().is_live(&ids[i])));
    // Healed at least 9 s before anyone's next regular announce (three
    // phases in a 30 s interval leave a gap of 10 s or more): server 3's
    // load moves and it announces early.
    let gap = |net: &Net| {
        (0..3)
            .map(|i| net.servers[i].next_announce().unwrap())
            .min()
            .unwrap()
            .saturating_since(net.now.mono)
    };
    for _ in 0..300 {
        if gap(&net) >= Duration::from_secs(9) {
            break;
        }
        net.run_for(Duration::from_millis(100));
    }
    net.unreachable.clear();
    for k in 0..10u64 {
        let c = net.connect(3, 500 + k, &format!("198.51.100.{}", 50 + k));
        assert!(registered(&net.register(&c, &format!("h{k}"))));
    }
    let healed = net.now.mono;
    let next_regular = (0..3)
        .map(|i| net.servers[i].next_announce().unwrap())
        .min()
        .unwrap();
    assert!(
        next_regular.saturating_since(healed) >= Duration::from_secs(8),
        "{:?} to the next regular announce",
        next_regular.saturating_since(healed)
    );
    net.run_for(Duration::from_secs(1));
    assert!(
        (0..3).all(|i| net.servers[i].members().is_live(&ids[3])),
        "3's early announce crossed"
    );
    // The others announce as soon as the spacing (5 s since their last)
    // allows: within 5 s.
    net.run_for(Duration::from_secs(5));
    assert!(
        (0..3).all(|i| net.servers[3].members().is_live(&ids[i])),
        "everyone is alive again for 3, long before the next regular announce"
    );
    assert!(net.now.mono < next_regular);
    assert!(net.servers[0].stats().counters.get("members_revived") == Some(&1));
}

/// Issue 12: a client reports its RTTs to servers on its live connection;
/// the server keeps the last report with the connection (a client reports
/// before it registers, so that a meeting arranged at once has it), uses
/// it once the connection holds the live presence, and accepts one per
/// `latency_report_spacing`. A report that breaks the
/// vector's bounds does not even decode.
#[test]
fn latency_reports_are_kept_with_the_presence_and_rate_limited() {
    use rendezvous::latency::{LatencyVector, MAX_LATENCY_ENTRIES};
    let mut net = Net::new(2, Config::default());
    let (s0, s1) = (net.servers[0].id(), net.servers[1].id());
    let report = LatencyVector::new(vec![(s0, 20_000), (s1, 40_000)]).unwrap();
    let a = net.connect(0, 1, "198.51.100.1");
    assert_eq!(
        net.ask(&a, Request::Latency(report.clone())),
        Some(Response::Noted)
    );
    assert_eq!(
        net.servers[0].latency_of(&a.id()),
        None,
        "not registered yet"
    );
    assert!(registered(&net.register(&a, "alice")));
    assert_eq!(net.servers[0].latency_of(&a.id()), Some(&report));
    assert_eq!(
        net.servers[1].latency_of(&a.id()),
        None,
        "kept at the home only"
    );
    // The next one within 1 s: refused, with when to retry.
    net.advance(Duration::from_millis(400));
    match net.ask(&a, Request::Latency(LatencyVector::default())) {
        Some(Response::Error(e)) => {
            assert_eq!(e.code, ErrorCode::RateLimited);
            assert_eq!(e.retry_after_ms, 600);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        net.servers[0].latency_of(&a.id()),
        Some(&report),
        "unchanged"
    );
    net.advance(Duration::from_millis(600));
    let newer = LatencyVector::new(vec![(s1, 30_000)]).unwrap();
    assert_eq!(
        net.ask(&a, Request::Latency(newer.clone())),
        Some(Response::Noted)
    );
    assert_eq!(net.servers[0].latency_of(&a.id()), Some(&newer));
    assert_eq!(net.servers[0].stats().get("latency_reports"), 2);
    // Gone with the connection.
    net.close(&a);
    assert_eq!(net.servers[0].latency_of(&a.id()), None);
    // Hostile reports do not decode: 17 servers, a zero RTT, a repeat.
    let encode = |v: Vec<(overlay::PeerId, u32)>| {
        let mut b = vec![9u8]; // Request::Latency's tag
        b.extend(postcard::to_allocvec(&v).unwrap());
        b
    };
    let many = (0..=MAX_LATENCY_ENTRIES as u8)
        .map(|i| (overlay::PeerId([i; 32]), 1))
        .collect();
    for bad in [many, vec![(s0, 0)], vec![(s0, 5), (s0, 6)]] {
        assert!(postcard::from_bytes::<Request>(&encode(bad)).is_err());
    }
    let good = encode(vec![(s1, 30_000)]);
    assert_eq!(
        postcard::from_bytes::<Request>(&good).unwrap(),
        Request::Latency(newer)
    );
}

/// Issue 12, seed 003's topology: four servers; a at s0, b at s1; s3 has
/// the smallest worse RTT for the pair. Whichever way the meeting is
/// arranged (a asks for b; b waits for a, who registers later), the home
/// of the friend chooses s3, both are told the same, and s3 — which
/// arranged nothing — relays for the pair. A pair with a missing report
/// falls back (`None`), and a relay that is not live is never chosen.
#[test]
fn the_relay_is_the_min_max_server_and_both_peers_hear_it() {
    use rendezvous::latency::LatencyVector;
    let ms = |n: u32| n * 1_000;
    let mut net = Net::new(4, Config::default());
    let s: Vec<_> = net.servers.iter().map(|x| x.id()).collect();
    let va = LatencyVector::new(vec![
        (s[0], ms(10)),
        (s[1], ms(30)),
        (s[2], ms(35)),
        (s[3], ms(20)),
    ]);
    let vb = LatencyVector::new(vec![
        (s[0], ms(30)),
        (s[1], ms(10)),
        (s[2], ms(20)),
        (s[3], ms(20)),
    ]);
    let (va, vb) = (va.unwrap(), vb.unwrap());

    // a asks for b, who is online at s1.
    let a = net.connect(0, 1, "198.51.100.1");
    let b = net.connect(1, 2, "198.51.100.2");
    net.report_and_register(&a, &va, "x");
    net.report_and_register(&b, &vb, "x");
    assert!(matches!(
        net.meet(&a, FriendRef::Id(b.id())),
        Some(Response::Friend { .. })
    ));
    assert_eq!(net.relays_of(&a), vec![(b.id(), Some(s[3]))]);
    assert_eq!(net.relays_of(&b), vec![(a.id(), Some(s[3]))]);
    // s3 relays them: both connect there and ask.
    let a3 = net.connect(3, 1, "198.51.100.1");
    let b3 = net.connect(3, 2, "198.51.100.2");
    assert_eq!(net.ask(&a3, Request::Relay(b.id())), None, "waits for b");
    assert_eq!(net.ask(&b3, Request::Relay(a.id())), None, "paired");
    assert!(
        net.relay_pairs.iter().any(|(i, _)| *i == 3),
        "s3 spliced the pair"
    );
    // Another client that s3 never heard of is refused there.
    let c3 = net.connect(3, 3, "198.51.100.3");
    let r = net.ask(&c3, Request::Relay(a.id()));
    assert_eq!(code_of(&r), Some(ErrorCode::RelayNotMet));

    // d waits for e at s2; e registers at s0 later: s0 (e's home) chooses.
    let d = net.connect(2, 4, "198.51.100.4");
    assert_eq!(
        net.ask(&d, Request::Latency(va.clone())),
        Some(Response::Noted)
    );
    assert!(registered(&net.register(&d, "d")));
    let (_, e_id) = key(5);
    assert_eq!(net.meet(&d, FriendRef::Id(e_id)), Some(Response::Waiting));
    let e = net.connect(0, 5, "198.51.100.5");
    assert_eq!(
        net.ask(&e, Request::Latency(vb.clone())),
        Some(Response::Noted)
    );
    assert!(registered(&net.register(&e, "e")));
    assert_eq!(net.relays_of(&d), vec![(e.id(), Some(s[3]))]);
    assert_eq!(net.relays_of(&e), vec![(d.id(), Some(s[3]))]);

    // f (no report) meets b: no choice, both fall back.
    let f = net.connect(2, 6, "198.51.100.6");
    assert!(registered(&net.register(&f, "f")));
    net.advance(Duration::from_secs(1));
    assert!(matches!(
        net.meet(&f, FriendRef::Id(b.id())),
        Some(Response::Friend { .. })
    ));
    assert_eq!(net.relays_of(&f), vec![(b.id(), None)]);
    assert_eq!(net.relays_of(&b).last(), Some(&(f.id(), None)));

    // With s3 unreachable and declared dead, the next best is chosen: s0
    // and s1 tie (30 ms worse, 40 ms sum; s2 is 35 ms worse), so one of
    // them at random.
    net.unreachable.insert(3);
    for i in 0..3 {
        net.input(i, Input::NeighborDown(s[3]));
    }
    net.run_for(Duration::from_secs(120));
    for i in 0..3 {
        assert!(!net.servers[i].members().is_live(&s[3]), "s3 dead at s{i}");
    }
    let g = net.connect(0, 7, "198.51.100.7");
    let h = net.connect(1, 8, "198.51.100.8");
    net.report_and_register(&g, &va, "y");
    net.report_and_register(&h, &vb, "y");
    assert!(matches!(
        net.meet(&g, FriendRef::Id(h.id())),
        Some(Response::Friend { .. })
    ));
    let chosen = net.relays_of(&g);
    assert_eq!(chosen.len(), 1);
    let relay = chosen[0].1.expect("a live relay");
    assert!(relay == s[0] || relay == s[1], "{relay:?}");
    assert_eq!(net.relays_of(&h), vec![(g.id(), Some(relay))]);
}

/// Issue 12, relocation: the ranking a pair gets names the relays to move
/// to, in order, and each of them (third servers included) relays the
/// pair; after a new latency report, `Rearrange` ranks them again for both
/// — across servers — within the friend's introduction bucket.
#[test]
fn rearrange_ranks_the_relays_again_for_both_peers() {
    use rendezvous::latency::LatencyVector;
    let ms = |n: u32| n * 1_000;
    let mut net = Net::new(4, Config::default());
    let s: Vec<_> = net.servers.iter().map(|x| x.id()).collect();
    // s0 unmeasured at first (not started yet, as seed 003's best server).
    let va = LatencyVector::new(vec![(s[1], ms(60)), (s[2], ms(60)), (s[3], ms(80))]).unwrap();
    let vb = LatencyVector::new(vec![(s[1], ms(80)), (s[2], ms(60)), (s[3], ms(60))]).unwrap();
    let a = net.connect(1, 1, "198.51.100.1");
    let b = net.connect(3, 2, "198.51.100.2");
    net.report_and_register(&a, &va, "x");
    net.report_and_register(&b, &vb, "x");
    assert!(matches!(
        net.meet(&a, FriendRef::Id(b.id())),
        Some(Response::Friend { .. })
    ));
    let ranked = |net: &Net, c| net.rankings_of(c).last().cloned().unwrap().1;
    let first = ranked(&net, &a);
    assert_eq!(
        first,
        ranked(&net, &b),
        "both get the same ranking: {:?} {:?}",
        net.rankings_of(&a),
        net.rankings_of(&b)
    );
    assert_eq!(first[0], (s[2], ms(60)));
    assert_eq!(first.len(), 3);
    // Every ranked relay relays the pair (s1 and s3 are the homes, s2 a
    // third server told by RelayChoice).
    for (i, &(relay, _)) in first.iter().enumerate() {
        let idx = net.index_of(&relay).unwrap();
        let a_r = net.connect(idx, 1, "198.51.100.1");
        let b_r = net.connect(idx, 2, "198.51.100.2");
        let before = net.relay_pairs.len();
        assert_eq!(net.ask(&a_r, Request::Relay(b.id())), None, "relay {i}");
        assert_eq!(net.ask(&b_r, Request::Relay(a.id())), None, "relay {i}");
        assert_eq!(net.relay_pairs.len(), before + 1, "relay {i} spliced");
    }
    // s0 "starts": both measure it closest (40 ms) and report; a asks.
    net.advance(Duration::from_secs(5));
    let va2 = LatencyVector::new(vec![(s[0], ms(40)), (s[1], ms(60)), (s[2], ms(60))]).unwrap();
    let vb2 = LatencyVector::new(vec![(s[0], ms(40)), (s[2], ms(60)), (s[3], ms(60))]).unwrap();
    assert_eq!(net.ask(&a, Request::Latency(va2)), Some(Response::Noted));
    assert_eq!(net.ask(&b, Request::Latency(vb2)), Some(Response::Noted));
    assert_eq!(
        net.ask(&a, Request::Rearrange(b.id())),
        Some(Response::Noted)
    );
    let again = ranked(&net, &a);
    assert_eq!(again, ranked(&net, &b));
    assert_eq!(again[0], (s[0], ms(40)), "the new server first");
    assert_eq!(again[1], (s[2], ms(60)));
    assert_eq!(net.servers[1].stats().get("rearrangements"), 1);
    // Too soon again: refused with the wait.
    let r = net.ask(&a, Request::Rearrange(b.id()));
    assert_eq!(code_of(&r), Some(ErrorCode::RateLimited));
    // Not registered here: refused. Asking for one peer too often (from
    // fresh connections too): its introduction bucket runs dry.
    let c = net.connect(0, 3, "198.51.100.3");
    let r = net.ask(&c, Request::Rearrange(b.id()));
    assert_eq!(code_of(&r), Some(ErrorCode::NotRegistered));
    let mut limited = false;
    for seed in 10..40 {
        let d = net.connect(0, seed, "198.51.100.9");
        if !registered(&net.register(&d, "d")) {
            continue;
        }
        if code_of(&net.ask(&d, Request::Rearrange(b.id()))) == Some(ErrorCode::RateLimited) {
            limited = true;
            break;
        }
    }
    assert!(
        limited,
        "the friend's introduction bucket bounds rearrangements"
    );
}
