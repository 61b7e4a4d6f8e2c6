//! Offline messages with real processes (issue 13): three `chatd serve` on
//! loopback; alice leaves 5 lines for bob, who is offline; one of the two
//! servers keeping them is SIGKILLed; bob's `chatd inbox` prints the 5 once,
//! a second prints none; alice's next inbox says bob has them (the
//! receipt). An online bob (in `chatd chat`) gets a letter at once. Every
//! wait bounded.

mod procs;

use procs::{Cluster, Proc, TempDir, client_id, metric, wait_until};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

fn client(cmd: &str, dir: &Path, name: &str, servers: &[&str], extra: &[&str]) -> Proc {
    let mut c = Command::new(procs::BIN);
    c.args([cmd, "--name", name])
        .arg("--data-dir")
        .arg(dir.join(name));
    for s in servers {
        c.args(["--server", s]);
    }
    c.args(extra);
    Proc::spawn(c)
}

/// Runs `chatd inbox` for `name` to its end: (stdout lines, stderr).
fn inbox(dir: &Path, name: &str, servers: &[&str]) -> (Vec<String>, String) {
    let mut p = client("inbox", dir, name, servers, &[]);
    let status = p.wait_exit(LIMIT);
    assert!(
        status.is_some_and(|s| s.success()),
        "inbox of {name}: {status:?}\n{}",
        p.err()
    );
    (p.out(), p.err())
}

fn letters_kept(admin: u16) -> f64 {
    metric(admin, "chatd_letters_kept").unwrap_or(-1.0)
}

#[test]
fn five_lines_for_an_offline_friend_survive_a_server_and_arrive_once() {
    let mut cluster = Cluster::start("mail", 3, "127.0.0.1");
    let dir = TempDir::new("mail-clients");
    let all: Vec<String> = cluster.servers.iter().map(|s| s.addr.clone()).collect();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    // Bob has been here before (his key exists) and is offline now.
    let (out, err) = inbox(dir.path(), "bob", &all[2..]);
    assert!(out.is_empty() && err.contains("no messages"), "{err}");
    let bob = client_id(&dir.path().join("bob"));

    let mut alice = client("send", dir.path(), "alice", &all[..1], &["--to", &bob]);
    let mut lines: Vec<String> = (0..4).map(|i| format!("alice left {i}")).collect();
    // The longest line there is: 2,048 characters of 4 bytes each.
    lines.push("\u{1F600}".repeat(2_048));
    alice.write_lines(&lines);
    alice.close_stdin();
    let status = alice.wait_exit(LIMIT);
    assert!(
        status.is_some_and(|s| s.success()),
        "send: {status:?}\n{}",
        alice.err()
    );
    let said = alice.err();
    assert!(said.contains("left 5 message(s)"), "{said}");
    assert!(said.contains("kept by 2 server(s)"), "{said}");
    assert!(said.contains("offline"), "{said}");

    // Two servers keep the five; kill one of them.
    let mut holders = Vec::new();
    let found = wait_until(LIMIT, || {
        holders = (0..3)
            .filter(|i| letters_kept(cluster.servers[*i].admin) == 5.0)
            .collect();
        holders.len() == 2
    });
    assert!(found, "holders: {holders:?}");
    let dead = holders[0];
    cluster.kill(dead);
    let alive: Vec<&str> = (0..3).filter(|i| *i != dead).map(|i| all[i]).collect();

    let (out, err) = inbox(dir.path(), "bob", &alive);
    let want: Vec<String> = lines.iter().map(|l| format!("alice\t{l}")).collect();
    assert_eq!(out, want, "bob's inbox:\n{err}");
    assert!(err.contains("5 message(s)"), "{err}");
    let (out, err) = inbox(dir.path(), "bob", &alive);
    assert!(out.is_empty(), "a second inbox printed {out:?}");
    assert!(err.contains("no messages"), "{err}");
    // The survivors forgot them.
    let forgotten = wait_until(LIMIT, || {
        (0..3)
            .filter(|i| *i != dead)
            .all(|i| letters_kept(cluster.servers[i].admin) <= 1.0)
    });
    assert!(forgotten, "letters still kept after collection");

    // Alice learns that bob has them.
    let (out, err) = inbox(dir.path(), "alice", &alive);
    assert!(out.is_empty(), "{out:?}");
    assert!(err.contains("has received 5 message(s) you left"), "{err}");
}

#[test]
fn an_online_friend_gets_a_letter_at_once() {
    let cluster = Cluster::start("mail-online", 2, "127.0.0.1");
    let dir = TempDir::new("mail-online-clients");
    let (a, b) = (
        cluster.servers[0].addr.as_str(),
        cluster.servers[1].addr.as_str(),
    );
    // Bob is online, chatting (waiting for someone else).
    let bob = client(
        "chat",
        dir.path(),
        "bob",
        &[b],
        &["--to", "nobody", "--wait", "120"],
    );
    assert!(bob.wait_err(LIMIT, "waiting for"), "{}", bob.err());
    let bob_id = client_id(&dir.path().join("bob"));
    let mut alice = client("send", dir.path(), "alice", &[a], &["--to", &bob_id]);
    alice.write_lines(&["are you there?".to_string()]);
    alice.close_stdin();
    let status = alice.wait_exit(LIMIT);
    assert!(status.is_some_and(|s| s.success()), "{}", alice.err());
    assert!(alice.err().contains("online"), "{}", alice.err());
    assert!(
        bob.wait_err(LIMIT, "message from alice left just now: are you there?"),
        "{}",
        bob.err()
    );
}
