//! Offline messages in the server core: a letter is kept by two servers
//! before it is acknowledged, found wherever the recipient comes back,
//! handed out until collected and then forgotten everywhere; every quota
//! refuses with its code; a dead holder loses nothing.

mod common;

use common::{Client, Net, code_of};
use overlay::PeerId;
use rendezvous::mailbox::{MAIL_FETCH, MAIL_HOLDERS, rank};
use rendezvous::server::Config;
use rendezvous::{ErrorCode, Letter, MailLimits, Request, Response};
use std::time::Duration;

fn letter(to: PeerId, n: u8) -> Letter {
    Letter {
        to,
        id: [n; 16],
        sealed: vec![n; 200],
    }
}

/// The servers (by index) ranked for `to`.
fn ranked(net: &Net, to: PeerId, k: usize) -> Vec<usize> {
    let ids = net.servers.iter().map(|s| s.id());
    rank(&to, ids, k)
        .iter()
        .map(|id| net.index_of(id).unwrap())
        .collect()
}

fn kept_at(net: &Net, i: usize) -> usize {
    net.servers[i].letters_kept().0
}

/// `c` collects: the letters of one answer, after waiting `wait` for it.
fn collect(net: &mut Net, c: &Client, wait: Duration) -> (Vec<Letter>, bool) {
    let req = net.send(c, Request::Collect);
    if net.response(c, req).is_none() {
        net.run_for(wait);
    }
    match net.response(c, req) {
        Some(Response::Letters { letters, more }) => (letters, more),
        other => panic!("collect: {other:?}"),
    }
}

fn deposit(net: &mut Net, c: &Client, l: Letter) -> Option<Response> {
    net.ask(c, Request::Deposit(l))
}

#[test]
fn a_letter_is_kept_twice_found_anywhere_and_forgotten_once_collected() {
    let mut net = Net::new(6, Config::default());
    let alice = net.connect(0, 1, "198.51.100.1");
    assert!(matches!(
        net.register(&alice, "alice"),
        Some(Response::Registered)
    ));
    let bob_id = common::key(2).1;
    for n in 0..5 {
        assert_eq!(
            deposit(&mut net, &alice, letter(bob_id, n)),
            Some(Response::Deposited { copies: 2 })
        );
    }
    let holders = ranked(&net, bob_id, MAIL_HOLDERS);
    for i in 0..6 {
        let want = if holders.contains(&i) { 5 } else { 0 };
        assert_eq!(kept_at(&net, i), want, "server {i}, holders {holders:?}");
    }
    // Bob comes back at a server that holds none of them.
    let elsewhere = (0..6).find(|i| !holders.contains(i)).unwrap();
    let bob = net.connect(elsewhere, 2, "198.51.100.2");
    let (got, more) = collect(&mut net, &bob, Duration::ZERO);
    assert!(!more);
    let ids: Vec<u8> = got.iter().map(|l| l.id[0]).collect();
    assert_eq!(ids, vec![0, 1, 2, 3, 4], "once each, in the order sent");
    // Someone else's connection gets none of bob's.
    let mallory = net.connect(elsewhere, 3, "198.51.100.3");
    assert!(collect(&mut net, &mallory, Duration::ZERO).0.is_empty());
    assert_eq!(
        net.ask(&mallory, Request::Delivered(vec![[0; 16]])),
        Some(Response::Noted)
    );
    assert_eq!(kept_at(&net, holders[0]), 5, "mallory cannot discard bob's");
    // Collected: forgotten at every holder; a second collection is empty.
    let all: Vec<[u8; 16]> = got.iter().map(|l| l.id).collect();
    assert_eq!(
        net.ask(&bob, Request::Delivered(all)),
        Some(Response::Noted)
    );
    for i in 0..6 {
        assert_eq!(kept_at(&net, i), 0, "server {i}");
    }
    assert!(collect(&mut net, &bob, Duration::ZERO).0.is_empty());
    let collected: u64 = net
        .servers
        .iter()
        .map(|s| s.stats().get("letters_collected"))
        .sum();
    assert_eq!(collected, 10, "five letters at two holders");
}

#[test]
fn a_dead_holder_loses_nothing_and_a_silent_one_is_replaced_before_the_ack() {
    let mut net = Net::new(5, Config::default());
    let bob_id = common::key(2).1;
    let fetch = ranked(&net, bob_id, MAIL_FETCH);
    // Alice's home is not a holder.
    let home = (0..5).find(|i| !fetch[..MAIL_HOLDERS].contains(i)).unwrap();
    let alice = net.connect(home, 1, "198.51.100.1");
    // The second holder is silent: the deposit waits, then the next
    // server of the ranking is asked, and the letter is acknowledged.
    net.unreachable.insert(fetch[1]);
    let req = net.send(&alice, Request::Deposit(letter(bob_id, 7)));
    assert_eq!(
        net.response(&alice, req),
        None,
        "not acknowledged on one copy"
    );
    net.run_for(Duration::from_millis(1_500));
    assert_eq!(
        net.response(&alice, req),
        Some(Response::Deposited { copies: 2 })
    );
    assert_eq!(kept_at(&net, fetch[0]), 1);
    assert_eq!(kept_at(&net, fetch[2]), 1);
    // Now the first holder dies too; bob collects through the survivor.
    net.unreachable.remove(&fetch[1]);
    net.unreachable.insert(fetch[0]);
    let at = (0..5).find(|i| *i != fetch[0]).unwrap();
    let bob = net.connect(at, 2, "198.51.100.2");
    let (got, _) = collect(&mut net, &bob, Duration::from_millis(1_500));
    assert_eq!(got.iter().map(|l| l.id[0]).collect::<Vec<_>>(), vec![7]);
    assert!(net.servers[at].stats().get("collections_partial") >= 1);
}

#[test]
fn an_online_recipient_is_told_at_once_and_an_offline_one_is_not() {
    let mut net = Net::new(3, Config::default());
    let alice = net.connect(0, 1, "198.51.100.1");
    let bob = net.connect(2, 2, "198.51.100.2");
    // Not registered: kept, but nobody to tell.
    assert!(matches!(
        deposit(&mut net, &alice, letter(bob.id(), 0)),
        Some(Response::Deposited { copies: 2 })
    ));
    assert_eq!(net.mail_notices_of(&bob), 0);
    assert!(matches!(
        net.register(&bob, "bob"),
        Some(Response::Registered)
    ));
    let r = deposit(&mut net, &alice, letter(alice.id(), 1));
    assert_eq!(code_of(&r), Some(ErrorCode::Invalid), "to oneself: {r:?}");
    // Online, but it never collected: it may not know the notice.
    assert!(matches!(
        deposit(&mut net, &alice, letter(bob.id(), 1)),
        Some(Response::Deposited { .. })
    ));
    assert_eq!(net.mail_notices_of(&bob), 0);
    let (got, _) = collect(&mut net, &bob, Duration::ZERO);
    assert_eq!(got.len(), 2);
    assert!(matches!(
        deposit(&mut net, &alice, letter(bob.id(), 2)),
        Some(Response::Deposited { .. })
    ));
    assert_eq!(net.mail_notices_of(&bob), 1, "told at its home");
    let short = Letter {
        sealed: vec![0; 10],
        ..letter(bob.id(), 3)
    };
    assert_eq!(
        code_of(&deposit(&mut net, &alice, short)),
        Some(ErrorCode::Invalid)
    );
}

#[test]
fn every_mail_quota_refuses_with_its_code_and_the_refusals_are_counted() {
    let cfg = Config {
        mail: MailLimits {
            per_recipient: 3,
            per_sender: 5,
            ..MailLimits::default()
        },
        conn_rate: (100.0, 100.0),
        ..Config::default()
    };
    let mut net = Net::new(2, cfg);
    let alice = net.connect(0, 1, "198.51.100.1");
    let (bob, carol) = (common::key(2).1, common::key(3).1);
    for n in 0..3 {
        assert!(matches!(
            deposit(&mut net, &alice, letter(bob, n)),
            Some(Response::Deposited { .. })
        ));
    }
    // The same letter again (a retry) is not a fourth.
    assert!(matches!(
        deposit(&mut net, &alice, letter(bob, 0)),
        Some(Response::Deposited { .. })
    ));
    let r = deposit(&mut net, &alice, letter(bob, 3));
    assert_eq!(code_of(&r), Some(ErrorCode::MailboxFull), "{r:?}");
    for n in 10..12 {
        assert!(matches!(
            deposit(&mut net, &alice, letter(carol, n)),
            Some(Response::Deposited { .. })
        ));
    }
    let r = deposit(&mut net, &alice, letter(carol, 12));
    assert_eq!(code_of(&r), Some(ErrorCode::MailQuota), "{r:?}");
    let refused: u64 = net
        .servers
        .iter()
        .map(|s| {
            s.stats().refusals(ErrorCode::MailboxFull) + s.stats().refusals(ErrorCode::MailQuota)
        })
        .sum();
    assert_eq!(refused, 2);
    // Too many ids in one acknowledgement.
    let r = net.ask(&alice, Request::Delivered(vec![[0; 16]; 65]));
    assert_eq!(code_of(&r), Some(ErrorCode::Invalid));
}

#[test]
fn fresh_identities_from_one_address_share_its_quota() {
    let cfg = Config {
        mail: MailLimits {
            per_source: 4,
            ..MailLimits::default()
        },
        ..Config::default()
    };
    let mut net = Net::new(2, cfg);
    let bob = common::key(2).1;
    let mut codes = Vec::new();
    for seed in 10..16u64 {
        let sybil = net.connect(seed as usize % 2, seed, "203.0.113.9");
        codes.push(code_of(&deposit(&mut net, &sybil, letter(bob, seed as u8))));
    }
    assert_eq!(
        codes,
        [
            None,
            None,
            None,
            None,
            Some(ErrorCode::MailQuota),
            Some(ErrorCode::MailQuota)
        ]
    );
    // Another address is not held back.
    let other = net.connect(0, 20, "203.0.113.10");
    assert_eq!(code_of(&deposit(&mut net, &other, letter(bob, 20))), None);
}

#[test]
fn a_letter_nobody_collects_is_forgotten_after_a_week() {
    let mut net = Net::new(2, Config::default());
    let alice = net.connect(0, 1, "198.51.100.1");
    assert!(matches!(
        net.register(&alice, "alice"),
        Some(Response::Registered)
    ));
    let bob = common::key(2).1;
    deposit(&mut net, &alice, letter(bob, 1));
    assert_eq!(kept_at(&net, 0) + kept_at(&net, 1), 2);
    net.advance(Duration::from_secs(7 * 24 * 3600 + 2));
    net.tick();
    assert_eq!(kept_at(&net, 0) + kept_at(&net, 1), 0);
}

#[test]
fn pages_of_letters_stay_under_the_client_frame() {
    let cfg = Config {
        conn_rate: (1_000.0, 1_000.0),
        ..Config::default()
    };
    let mut net = Net::new(3, cfg);
    let alice = net.connect(0, 1, "198.51.100.1");
    assert!(matches!(
        net.register(&alice, "alice"),
        Some(Response::Registered)
    ));
    let bob = net.connect(1, 2, "198.51.100.2");
    for n in 0..20u8 {
        let l = Letter {
            to: bob.id(),
            id: [n; 16],
            sealed: vec![n; rendezvous::mailbox::MAX_LETTER],
        };
        assert!(matches!(
            deposit(&mut net, &alice, l),
            Some(Response::Deposited { .. })
        ));
    }
    let mut seen = Vec::new();
    for _ in 0..10 {
        let (page, more) = collect(&mut net, &bob, Duration::ZERO);
        let bytes = postcard::to_allocvec(&Response::Letters {
            letters: page.clone(),
            more,
        })
        .unwrap()
        .len();
        assert!(bytes <= rendezvous::proto::MAX_FRAME, "{bytes}");
        let ids: Vec<[u8; 16]> = page.iter().map(|l| l.id).collect();
        seen.extend(ids.iter().map(|i| i[0]));
        net.ask(&bob, Request::Delivered(ids));
        if !more {
            break;
        }
    }
    assert_eq!(seen, (0..20).collect::<Vec<u8>>());
}

#[test]
fn a_burst_of_deposits_beyond_the_mail_rate_is_told_when_to_retry() {
    let mut net = Net::new(2, Config::default());
    let alice = net.connect(0, 1, "198.51.100.1");
    let burst = Config::default().mail_rate.1 as usize;
    let mut refused = Vec::new();
    for n in 0..burst + 1 {
        // Each to its own recipient: no mailbox quota in the way.
        let to = common::key(1_000 + n as u64).1;
        if let Some(Response::Error(r)) = deposit(&mut net, &alice, letter(to, 1)) {
            refused.push((n, r.code, r.retry_after_ms));
        }
    }
    assert_eq!(refused.len(), 1, "{refused:?}");
    let (n, code, retry) = refused[0];
    assert_eq!((n, code), (burst, ErrorCode::RateLimited));
    assert!(retry > 0 && retry <= 100, "{retry} ms");
}
