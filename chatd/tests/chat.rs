//! Two `chatd chat` processes, homed on different servers of one cluster,
//! find each other and exchange messages both ways, each delivered exactly
//! once and in order; a too-long line is refused with an error and the rest
//! still goes through — directly, and through a server's relay. Loopback
//! only; every wait bounded.

mod common;
mod procs;

use common::cluster;
use std::process::Command;
use std::time::Duration;

/// Two servers (keys from `seed`) that had time to see each other.
async fn two_servers(seed: u8) -> Vec<common::Server> {
    let servers = cluster(2, seed, overlay::Config::local()).await;
    common::wait_until_formed(&servers).await;
    servers
}

async fn shutdown(servers: &[common::Server]) {
    for s in servers {
        s.node.shutdown(Duration::from_secs(2)).await;
    }
}

/// A fresh data dir (key, known friends) for each client this binary
/// starts, under cargo's per-target scratch directory (`target/tmp`), not
/// the system's /tmp: nothing is left behind outside the build tree.
fn fresh_data_dir(name: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("chatd-chat-{}-{name}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The `chatd chat --name NAME --to FRIEND --server SERVER` command line
/// (loopback, a fresh data dir: a new key).
fn chat_cmd(name: &str, to: &str, server: &common::Server, extra: &[&str]) -> Command {
    let wait: &[&str] = if extra.contains(&"--wait") {
        &[]
    } else {
        &["--wait", "30"]
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatd"));
    cmd.args(["chat", "--name", name, "--to", to])
        .args(["--server", &server.node.addr().to_string()])
        .args(["--bind", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(fresh_data_dir(name))
        .args(wait)
        .args(extra);
    cmd
}

/// What one chat run printed.
struct Run {
    a_got: Vec<String>,
    b_got: Vec<String>,
    a_err: String,
    b_err: String,
    a_lines: Vec<String>,
    b_lines: Vec<String>,
}

/// alice on server 0 and bob on server 1 send 20 lines each (alice also one
/// too-long line), then — once both said `settle`, if given (bounded) —
/// their inputs end; both must exit 0.
async fn chat_pair(
    servers: &[common::Server],
    extra: &[&str],
    settle: Option<&'static str>,
) -> Run {
    let mut alice = procs::Proc::spawn(chat_cmd("alice", "bob", &servers[0], extra));
    let mut bob = procs::Proc::spawn(chat_cmd("bob", "alice", &servers[1], extra));
    let a_lines = procs::says("alice", 0..20);
    let b_lines = procs::says("bob", 0..20);
    let mut a_typed = a_lines.clone();
    a_typed.insert(11, "x".repeat(chatd::client::chat::MAX_CHARS + 1));
    alice.write_lines(&a_typed);
    bob.write_lines(&b_lines);
    tokio::task::spawn_blocking(move || {
        if let Some(pat) = settle {
            for p in [&alice, &bob] {
                let _ = p.wait_err(Duration::from_secs(30), pat);
            }
        }
        procs::end_both(&mut alice, &mut bob);
        Run {
            a_got: alice.out(),
            b_got: bob.out(),
            a_err: alice.err(),
            b_err: bob.err(),
            a_lines,
            b_lines,
        }
    })
    .await
    .unwrap()
}

fn assert_exactly_once_in_order(r: &Run) {
    assert_eq!(
        r.b_got, r.a_lines,
        "bob got alice's lines once each, in order\n{}",
        r.b_err
    );
    assert_eq!(
        r.a_got, r.b_lines,
        "alice got bob's lines once each, in order\n{}",
        r.a_err
    );
    assert!(
        r.a_err.contains("over the 2048-character limit"),
        "{}",
        r.a_err
    );
    assert!(r.b_err.contains("friend found: alice"), "{}", r.b_err);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_on_two_servers_chat_both_ways() {
    let servers = two_servers(120).await;
    // Instant start: relayed first or direct at once; the inputs stay
    // open until both are on the direct path.
    let r = chat_pair(&servers, &[], Some("direct (")).await;
    assert_exactly_once_in_order(&r);
    // Direct at once, or relayed first and then upgraded (instant start).
    assert!(
        r.a_err.contains("connected direct") || r.a_err.contains("upgraded to direct"),
        "{}",
        r.a_err
    );
    shutdown(&servers).await;
}

/// With no time for a direct path, the two are relayed through the home
/// server of the lower id (the other connects to it), and the chat is the
/// same: exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_direct_path_the_chat_is_relayed() {
    let servers = two_servers(121).await;
    let r = chat_pair(&servers, &["--direct-timeout", "0"], None).await;
    assert_exactly_once_in_order(&r);
    for err in [&r.a_err, &r.b_err] {
        assert!(err.contains("connected relayed via server"), "{err}");
        assert!(!err.contains("connected direct"), "{err}");
    }
    shutdown(&servers).await;
}

/// Ctrl-C in the middle of a chat ends it cleanly: what was sent is
/// acknowledged first, the process exits 0, the friend hears it left and
/// has every message — and keeps its own session (its input is still
/// read, so nothing typed goes to the shell) until its input ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_finishes_the_chat_cleanly_and_the_friend_stays() {
    let servers = two_servers(122).await;
    let mut alice = procs::Proc::spawn(chat_cmd("alice", "bob", &servers[0], &[]));
    let mut bob = procs::Proc::spawn(chat_cmd("bob", "alice", &servers[1], &[]));
    let want = procs::says("alice", 0..5);
    alice.write_lines(&want);
    bob.write_lines(&["bob says hi".to_string()]);
    let limit = Duration::from_secs(30);
    let (a, b) = tokio::task::spawn_blocking(move || {
        // Both directions delivered, then Ctrl-C for alice.
        assert!(
            alice.wait_out(limit, |l| l == ["bob says hi"]),
            "alice: {:?}\n{}",
            alice.out(),
            alice.err()
        );
        assert!(
            bob.wait_out(limit, |l| l.len() >= want.len()),
            "bob: {:?}\n{}",
            bob.out(),
            bob.err()
        );
        alice.signal("-INT");
        let a_status = alice.wait_exit(limit);
        assert!(
            a_status.is_some_and(|s| s.success()),
            "alice after Ctrl-C: {a_status:?}\n{}",
            alice.err()
        );
        // Bob is told, and stays: a line typed now is refused in words.
        assert!(bob.wait_err(limit, "alice left the chat"), "{}", bob.err());
        bob.write_lines(&["anyone there?".to_string()]);
        assert!(
            bob.wait_err(limit, "not sent: alice has left the chat"),
            "{}",
            bob.err()
        );
        bob.close_stdin();
        let b_status = bob.wait_exit(limit);
        assert!(b_status.is_some_and(|s| s.success()), "{}", bob.err());
        assert_eq!(bob.out(), want, "bob has every message, once, in order");
        (alice.err(), bob.err())
    })
    .await
    .unwrap();
    assert!(a.contains("interrupted: finishing the chat"), "{a}");
    assert!(!a.contains("not acknowledged"), "{a}");
    assert!(!a.contains("not delivered"), "{a}");
    assert!(!b.contains("not delivered"), "{b}");
    shutdown(&servers).await;
}

/// The bootstrap server is only a way in: a client reaching a loaded
/// server moves to the least loaded live server it lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moves_to_the_least_loaded_server() {
    let servers = two_servers(123).await;
    let addr0 = servers[0].node.addr();
    let (c1, c2) = (common::client(91), common::client(92));
    // Two clients registered at server 0 (online while connected: the
    // sessions stay open for the whole test).
    let mut sessions = Vec::new();
    for (c, name) in [(&c1, "load-1"), (&c2, "load-2")] {
        let s = c.connect(addr0).await.unwrap();
        common::register(c, &s, name, Duration::from_secs(60)).await;
        sessions.push(s);
    }
    // Wait until the load reaches the server list (sweep 1 s, heartbeat 0.5 s).
    let id0 = servers[0].node.id;
    let loaded = common::eventually(Duration::from_secs(20), || async {
        sessions[0]
            .servers()
            .await
            .is_ok_and(|list| list.len() == 2 && list.iter().any(|s| s.id == id0 && s.clients == 2))
    })
    .await;
    assert!(loaded, "server 0's load never showed");
    let mut carol = procs::Proc::spawn(chat_cmd("carol", "nobody", &servers[0], &["--wait", "1"]));
    let (status, err) = tokio::task::spawn_blocking(move || {
        let status = carol.wait_exit(Duration::from_secs(60));
        (status, carol.err())
    })
    .await
    .unwrap();
    let addr1 = servers[1].node.addr().addr.to_string();
    assert!(
        err.contains("lists a less loaded server") && err.contains(&addr1),
        "{err}"
    );
    assert!(
        err.contains("nobody did not come online within 1s"),
        "{err}"
    );
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{err}");
    shutdown(&servers).await;
}
