//! A client survives its server: two `chatd serve` processes, a chat, then
//! SIGKILL of a server the chat depends on — the home server of one side
//! (given as its only `--server`) on a direct path, or the relaying server
//! on a relayed path. The client moves to the other server (learned from
//! the `Servers` list), the chat goes on or is re-established through it,
//! and every line arrives exactly once, in order. Loopback only; every wait
//! bounded.

mod procs;

use procs::{Cluster, Proc, TempDir, chat, end_both, exchange, says};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(60);

/// The server (index) whose `ID@HOST:PORT` or `HOST:PORT` appears in the
/// last stderr line of `p` containing `marker`.
fn server_named(c: &Cluster, p: &Proc, marker: &str) -> usize {
    let err = p.err();
    let line = err
        .lines()
        .rfind(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no {marker:?} line:\n{err}"))
        .to_string();
    c.servers
        .iter()
        .position(|s| {
            let hostport = s.addr.split_once('@').map(|(_, a)| a).unwrap_or(&s.addr);
            line.contains(hostport)
        })
        .unwrap_or_else(|| panic!("no server in {line:?}"))
}

/// Phase 1 lines both ways, `kill` a server, phase 2 lines both ways, then
/// both inputs end: everything arrives exactly once and both exit 0.
fn chat_across_a_server_death(
    c: &mut Cluster,
    alice: &mut Proc,
    bob: &mut Proc,
    kill: usize,
    after_kill: impl Fn(&Proc, &Proc) -> bool,
) -> Duration {
    exchange(alice, bob, &says("alice", 0..5), &says("bob", 0..5), 5);
    c.kill(kill);
    let killed = Instant::now();
    assert!(
        procs::wait_until(LIMIT, || after_kill(alice, bob)),
        "no recovery after the kill\nalice:\n{}\nbob:\n{}",
        alice.err(),
        bob.err()
    );
    let recovered = killed.elapsed();
    exchange(alice, bob, &says("alice", 5..10), &says("bob", 5..10), 10);
    end_both(alice, bob);
    assert_eq!(bob.out(), says("alice", 0..10), "bob:\n{}", bob.err());
    assert_eq!(alice.out(), says("bob", 0..10), "alice:\n{}", alice.err());
    for p in [&alice, &bob] {
        assert!(!p.err().contains("not delivered"), "{}", p.err());
    }
    recovered
}

#[test]
#[allow(clippy::print_stderr)] // the measured failover time, for the record
fn a_client_whose_only_server_dies_mid_chat_moves_and_chats_on() {
    let mut c = Cluster::start("failover-direct", 2, "127.0.0.1");
    let tmp = TempDir::new("failover-direct-clients");
    let (s0, s1) = (c.servers[0].addr.clone(), c.servers[1].addr.clone());
    let mut alice = chat(&tmp.0.join("alice"), "alice", "bob", &[&s0], &[]);
    let mut bob = chat(&tmp.0.join("bob"), "bob", "alice", &[&s1], &[]);
    // Direct at once, or relayed first and upgraded.
    assert!(alice.wait_err(LIMIT, "direct ("), "{}", alice.err());
    let home = server_named(&c, &alice, "connected to server");
    let took = chat_across_a_server_death(&mut c, &mut alice, &mut bob, home, |a, _| {
        a.err().contains("; moving to another server")
            && a.err().matches("registered as").count() >= 2
    });
    let err = alice.err();
    let moved = err
        .lines()
        .skip_while(|l| !l.contains("; moving to another server"))
        .find(|l| l.contains("connected to server"))
        .expect("alice connected to another server");
    assert!(
        !moved.contains(&c.servers[home].id),
        "alice moved to the dead server: {moved}"
    );
    eprintln!(
        "failover: alice re-registered at the other server {:.1} s after SIGKILL of her home",
        took.as_secs_f64()
    );
}

#[test]
#[allow(clippy::print_stderr)] // the measured failover time, for the record
fn a_chat_relayed_by_a_server_that_dies_moves_to_another() {
    let mut c = Cluster::start("failover-relay", 2, "127.0.0.1");
    let tmp = TempDir::new("failover-relay-clients");
    let (s0, s1) = (c.servers[0].addr.clone(), c.servers[1].addr.clone());
    let relay_only = ["--direct-timeout", "0"];
    let mut alice = chat(&tmp.0.join("alice"), "alice", "bob", &[&s0], &relay_only);
    let mut bob = chat(&tmp.0.join("bob"), "bob", "alice", &[&s1], &relay_only);
    assert!(
        alice.wait_err(LIMIT, "connected relayed via server"),
        "{}",
        alice.err()
    );
    let relay = server_named(&c, &alice, "connected relayed via server");
    // The chat moves to the next relay of its ranking (or, failing that,
    // is re-established through the servers): relayed twice, both sides.
    let took = chat_across_a_server_death(&mut c, &mut alice, &mut bob, relay, |a, b| {
        [a, b]
            .iter()
            .all(|p| p.err().matches("relayed via server").count() >= 2)
    });
    for p in [&alice, &bob] {
        let err = p.err();
        assert!(
            err.contains("moving the chat to relay") || err.contains("re-establishing (1/5)"),
            "{err}"
        );
    }
    eprintln!(
        "failover: relayed chat on the other server {:.1} s after SIGKILL of the relay",
        took.as_secs_f64()
    );
}

/// The friend dies (SIGKILL) and never comes back: the line typed after
/// that cannot be delivered, and the client says so, by its text, before
/// it exits.
#[test]
fn a_message_that_could_not_be_delivered_is_named_before_exit() {
    let c = Cluster::start("failover-lost", 1, "127.0.0.1");
    let tmp = TempDir::new("failover-lost-clients");
    let s = c.servers[0].addr.as_str();
    let mut alice = chat(&tmp.0.join("alice"), "alice", "bob", &[s], &["--wait", "3"]);
    let mut bob = chat(&tmp.0.join("bob"), "bob", "alice", &[s], &[]);
    bob.write_lines(&says("bob", 0..1));
    assert!(
        alice.wait_out(LIMIT, |l| l == says("bob", 0..1)),
        "{}",
        alice.err()
    );
    bob.signal("-KILL");
    alice.write_lines(&["are you there?".to_string()]);
    let st = alice.wait_exit(LIMIT);
    let err = alice.err();
    assert_eq!(st.and_then(|s| s.code()), Some(1), "{err}");
    assert!(err.contains("path to the friend broke"), "{err}");
    assert!(err.contains("1 message(s) were not delivered"), "{err}");
    assert!(err.contains("not delivered: are you there?"), "{err}");
}

/// While alice waits for bob, her only server dies: she moves to the other
/// one, and when bob comes online there they chat.
#[test]
fn a_client_waiting_for_its_friend_moves_when_its_server_dies() {
    let mut c = Cluster::start("failover-waiting", 2, "127.0.0.1");
    let tmp = TempDir::new("failover-waiting-clients");
    let (s0, s1) = (c.servers[0].addr.clone(), c.servers[1].addr.clone());
    let mut alice = chat(&tmp.0.join("alice"), "alice", "bob", &[&s0], &[]);
    assert!(alice.wait_err(LIMIT, "waiting for bob"), "{}", alice.err());
    let home = server_named(&c, &alice, "connected to server");
    c.kill(home);
    assert!(
        alice.wait_err(LIMIT, "; moving to another server")
            && alice.wait_err_count(LIMIT, "registered as", 2),
        "{}",
        alice.err()
    );
    let other = if home == 0 { &s1 } else { &s0 };
    let mut bob = chat(&tmp.0.join("bob"), "bob", "alice", &[other], &[]);
    exchange(
        &mut alice,
        &mut bob,
        &says("alice", 0..3),
        &says("bob", 0..3),
        3,
    );
    end_both(&mut alice, &mut bob);
    assert_eq!(bob.out(), says("alice", 0..3));
    assert_eq!(alice.out(), says("bob", 0..3));
}
