//! Presence tells the truth: a client's record is online only while its
//! home server holds the client's connection. Killed (SIGKILL), interrupted
//! or failed, a client's record goes offline at every server of a
//! 3-server cluster within the bound (QUIC idle timeout 5 s + one
//! broadcast; asserted ≤ 15 s), the gauges go back down, and a new client
//! with the same name is found instead. Real `chatd serve` processes on
//! 127.0.0.1; every wait bounded.

mod procs;

use procs::{Cluster, TempDir, chat, client_id, lookup, metric, wait_until};
use std::time::{Duration, Instant};

/// The documented bound: offline everywhere within 15 s.
const BOUND: Duration = Duration::from_secs(15);

fn online_everywhere(c: &Cluster, id: &str) -> bool {
    c.servers
        .iter()
        .all(|s| lookup(&s.addr, &["--peer", id]).len() == 1)
}

fn offline_everywhere(c: &Cluster, id: &str) -> bool {
    c.servers
        .iter()
        .all(|s| lookup(&s.addr, &["--peer", id]).is_empty())
}

fn gauges_down(c: &Cluster) -> bool {
    c.servers.iter().all(|s| {
        metric(s.admin, "chatd_client_connections") == Some(0.0)
            && metric(s.admin, "chatd_clients_registered") == Some(0.0)
    })
}

#[test]
#[allow(clippy::print_stderr)] // the measured bound, for the record
fn a_killed_client_goes_offline_everywhere_and_its_name_passes_on() {
    let c = Cluster::start("presence-kill", 3, "127.0.0.1");
    let tmp = TempDir::new("presence-kill-clients");
    let first = tmp.0.join("alice-1");
    let alice = chat(&first, "alice", "nobody", &[&c.servers[0].addr], &[]);
    assert!(
        alice.wait_err(Duration::from_secs(30), "waiting for nobody"),
        "{}",
        alice.err()
    );
    let id = client_id(&first);
    assert!(
        wait_until(BOUND, || online_everywhere(&c, &id)),
        "alice is not online everywhere"
    );
    let registered = wait_until(BOUND, || {
        c.servers
            .iter()
            .filter_map(|s| metric(s.admin, "chatd_clients_registered"))
            .sum::<f64>()
            == 1.0
    });
    assert!(registered, "one registered client in the gauges");

    alice.signal("-KILL");
    let killed = Instant::now();
    drop(alice);
    assert!(
        wait_until(BOUND, || offline_everywhere(&c, &id)),
        "alice still online somewhere {BOUND:?} after SIGKILL"
    );
    eprintln!(
        "presence: offline at all 3 servers {:.1} s after SIGKILL",
        killed.elapsed().as_secs_f64()
    );
    assert!(
        wait_until(BOUND, || gauges_down(&c)),
        "gauges stay up with no client running"
    );

    // A new alice (another key) is the one found now, at every server.
    let second = tmp.0.join("alice-2");
    let alice2 = chat(&second, "alice", "nobody", &[&c.servers[1].addr], &[]);
    assert!(
        alice2.wait_err(Duration::from_secs(30), "waiting for nobody"),
        "{}",
        alice2.err()
    );
    let id2 = client_id(&second);
    assert_ne!(id, id2);
    let found = wait_until(BOUND, || {
        c.servers.iter().all(|s| {
            let r = lookup(&s.addr, &["--name", "alice"]);
            r.len() == 1 && r[0]["peer"] == id2.as_str()
        })
    });
    assert!(found, "the new alice is not the one found everywhere");
}

/// Ctrl-C while waiting and an error exit (the friend never came) take the
/// record offline too (the client closes its connections on the way out).
#[test]
fn an_interrupted_or_failed_client_goes_offline_everywhere() {
    let c = Cluster::start("presence-exit", 3, "127.0.0.1");
    let tmp = TempDir::new("presence-exit-clients");
    let dir = tmp.0.join("carol");
    let mut carol = chat(&dir, "carol", "nobody", &[&c.servers[0].addr], &[]);
    assert!(carol.wait_err(Duration::from_secs(30), "waiting for nobody"));
    let id = client_id(&dir);
    assert!(wait_until(BOUND, || online_everywhere(&c, &id)));
    carol.signal("-INT");
    let status = carol
        .wait_exit(Duration::from_secs(10))
        .expect("carol exits");
    assert_eq!(status.code(), Some(130), "{}", carol.err());
    assert!(carol.err().contains("interrupted"), "{}", carol.err());
    assert!(
        wait_until(BOUND, || offline_everywhere(&c, &id)),
        "carol online after Ctrl-C"
    );

    let dir = tmp.0.join("dave");
    let mut dave = chat(
        &dir,
        "dave",
        "nobody",
        &[&c.servers[1].addr],
        &["--wait", "3"],
    );
    let id = wait_until(Duration::from_secs(30), || {
        dave.err().contains("waiting for nobody")
    })
    .then(|| client_id(&dir))
    .expect("dave registered");
    let status = dave.wait_exit(Duration::from_secs(30)).expect("dave exits");
    assert_eq!(status.code(), Some(1), "{}", dave.err());
    assert!(
        dave.err().contains("nobody did not come online"),
        "{}",
        dave.err()
    );
    assert!(
        wait_until(BOUND, || offline_everywhere(&c, &id)),
        "dave online after an error exit"
    );
    assert!(wait_until(BOUND, || gauges_down(&c)), "gauges stay up");
}
