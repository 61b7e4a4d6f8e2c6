//! A friend is a key, not a name; and clients reach IPv6 servers.
//! - After a first chat, a name is pinned to the friend's key
//!   (`known_friends`, trust on first use): another key using that name is
//!   refused loudly, unless `--accept-new-key` (which re-pins it).
//! - A name that several online peers use is listed, not picked: by
//!   `chatd lookup --name` and by `chatd chat --to NAME`.
//! - `chatd chat` and `chatd lookup` against servers on `[::1]`.
//!
//! Real `chatd` processes on loopback; every wait bounded.

mod procs;

use procs::{
    Cluster, Proc, TempDir, chat, client_id, end_both, exchange, lookup, says, wait_until,
};
use std::path::Path;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// alice and bob chat a line each way, then both inputs end; both exit 0
/// with the other's line.
fn chat_once(a_dir: &Path, b_dir: &Path, s: &[&str], a_extra: &[&str]) -> (Proc, Proc) {
    let mut alice = chat(a_dir, "alice", "bob", s, a_extra);
    let mut bob = chat(b_dir, "bob", "alice", s, &[]);
    exchange(
        &mut alice,
        &mut bob,
        &says("alice", 0..1),
        &says("bob", 0..1),
        1,
    );
    end_both(&mut alice, &mut bob);
    assert_eq!(alice.out(), says("bob", 0..1));
    assert_eq!(bob.out(), says("alice", 0..1));
    (alice, bob)
}

#[test]
fn a_pinned_name_is_not_given_to_another_key() {
    let c = Cluster::start("friends-pin", 2, "127.0.0.1");
    let tmp = TempDir::new("friends-pin-clients");
    let (a_dir, b_dir, m_dir) = (tmp.0.join("a"), tmp.0.join("b"), tmp.0.join("m"));
    let s: Vec<&str> = c.servers.iter().map(|s| s.addr.as_str()).collect();
    let (alice, _) = chat_once(&a_dir, &b_dir, &s, &[]);
    let bob_id = client_id(&b_dir);
    assert!(
        alice.err().contains("bob is now known as"),
        "{}",
        alice.err()
    );
    let pins = std::fs::read_to_string(a_dir.join("known_friends")).unwrap();
    assert!(pins.contains(&format!("{bob_id} bob")), "{pins}");
    // Bob's own default key is persistent: the same id next time.
    assert_eq!(client_id(&b_dir), bob_id);

    // Mallory (another key) takes the name "bob" while bob is away.
    let mallory = chat(&m_dir, "bob", "alice", &s, &[]);
    let m_id = client_id(&m_dir);
    let online = wait_until(LIMIT, || {
        mallory.err().contains("registered as")
            && lookup(s[0], &["--name", "bob"])
                .first()
                .is_some_and(|r| r["peer"] == m_id.as_str())
    });
    assert!(online, "mallory is not online as bob:\n{}", mallory.err());
    let mut alice = chat(&a_dir, "alice", "bob", &s, &["--wait", "4"]);
    let st = alice.wait_exit(LIMIT);
    let err = alice.err();
    assert_eq!(st.and_then(|s| s.code()), Some(1), "{err}");
    assert!(
        err.contains(&format!("bob is {bob_id} (pinned")),
        "alice meets the pinned key:\n{err}"
    );
    assert!(
        err.contains("WARNING: bob is online with another key") && err.contains(&m_id),
        "{err}"
    );
    assert!(err.contains("--accept-new-key"), "{err}");
    assert!(
        !err.contains("friend found") && !err.contains("connected direct"),
        "alice talked to mallory:\n{err}"
    );
    drop(mallory);

    // Told otherwise, alice talks to the new key and pins it.
    let m_again = tmp.0.join("m");
    let (alice, _) = chat_once(&a_dir, &m_again, &s, &["--accept-new-key"]);
    assert!(
        alice
            .err()
            .contains(&format!("bob's key changed to {m_id}")),
        "{}",
        alice.err()
    );
    let pins = std::fs::read_to_string(a_dir.join("known_friends")).unwrap();
    assert!(pins.contains(&format!("{m_id} bob")), "{pins}");
}

#[test]
fn a_name_used_by_two_online_peers_is_listed_not_picked() {
    let c = Cluster::start("friends-ambiguous", 1, "127.0.0.1");
    let tmp = TempDir::new("friends-ambiguous-clients");
    let s = c.servers[0].addr.as_str();
    let bobs: Vec<Proc> = ["b1", "b2"]
        .iter()
        .map(|d| chat(&tmp.0.join(d), "bob", "nobody", &[s], &[]))
        .collect();
    let ids: Vec<String> = ["b1", "b2"]
        .iter()
        .map(|d| client_id(&tmp.0.join(d)))
        .collect();
    assert!(
        wait_until(LIMIT, || lookup(s, &["--name", "bob"]).len() == 2),
        "both bobs online:\n{}\n{}",
        bobs[0].err(),
        bobs[1].err()
    );
    let out = std::process::Command::new(procs::BIN)
        .args(["lookup", "--server", s, "--name", "bob"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("2 online peers use the name bob"), "{err}");

    let mut carol = chat(&tmp.0.join("c"), "carol", "bob", &[s], &["--wait", "10"]);
    let st = carol.wait_exit(LIMIT);
    let err = carol.err();
    assert_eq!(st.and_then(|s| s.code()), Some(1), "{err}");
    assert!(err.contains("2 online peers use the name bob"), "{err}");
    assert!(ids.iter().all(|id| err.contains(id.as_str())), "{err}");
    assert!(err.contains("pick your friend by id (--to ID)"), "{err}");
    for b in &bobs {
        assert!(!b.err().contains("friend found"), "{}", b.err());
    }
}

#[test]
fn two_clients_chat_over_ipv6_loopback() {
    let c = Cluster::start("friends-ipv6", 2, "::1");
    let tmp = TempDir::new("friends-ipv6-clients");
    let s: Vec<&str> = c.servers.iter().map(|s| s.addr.as_str()).collect();
    assert!(s[0].contains("@[::1]:"), "{}", s[0]);
    // lookup reaches an IPv6 server (the server list).
    let listed = lookup(s[0], &[]);
    assert_eq!(listed.len(), 2, "{listed:?}");
    let mut alice = chat(&tmp.0.join("a"), "alice", "bob", &[s[0]], &[]);
    let mut bob = chat(&tmp.0.join("b"), "bob", "alice", &[s[1]], &[]);
    exchange(
        &mut alice,
        &mut bob,
        &says("alice", 0..5),
        &says("bob", 0..5),
        5,
    );
    end_both(&mut alice, &mut bob);
    assert_eq!(bob.out(), says("alice", 0..5));
    assert_eq!(alice.out(), says("bob", 0..5));
    assert!(alice.err().contains("connected direct"), "{}", alice.err());
    let id = client_id(&tmp.0.join("b"));
    assert!(alice.err().contains(&id), "{}", alice.err());
}

/// Two clients with one key would be one peer: the second is refused in
/// words while the first runs.
#[test]
fn a_second_chat_with_the_same_key_is_refused() {
    let c = Cluster::start("friends-lock", 1, "127.0.0.1");
    let tmp = TempDir::new("friends-lock-clients");
    let s = c.servers[0].addr.as_str();
    let dir = tmp.0.join("shared");
    let first = chat(&dir, "alice", "nobody", &[s], &[]);
    assert!(
        first.wait_err(LIMIT, "waiting for nobody"),
        "{}",
        first.err()
    );
    let mut second = chat(&dir, "bob", "nobody", &[s], &[]);
    let st = second.wait_exit(LIMIT);
    let err = second.err();
    assert_eq!(st.and_then(|s| s.code()), Some(1), "{err}");
    assert!(
        err.contains("another chatd client (chat or room) is running with the key"),
        "{err}"
    );
    assert!(err.contains("--data-dir"), "{err}");
}
