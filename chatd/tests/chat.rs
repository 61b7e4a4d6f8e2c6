//! Two `chatd chat` processes, homed on different servers of one cluster,
//! find each other and exchange messages both ways, each delivered exactly
//! once and in order; a too-long line is refused with an error and the rest
//! still goes through — directly, and through a server's relay. Loopback
//! only; every wait bounded.

mod common;

use common::cluster;
use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// Two servers (keys from `seed`) that had time to see each other.
async fn two_servers(seed: u8) -> Vec<common::Server> {
    let servers = cluster(2, seed, overlay::Config::local()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    servers
}

async fn shutdown(servers: &[common::Server]) {
    for s in servers {
        s.node.shutdown(Duration::from_secs(2)).await;
    }
}

/// Starts `chatd chat --name NAME --to FRIEND --server SERVER` on loopback
/// with piped stdio.
fn spawn_chat(name: &str, to: &str, server: &common::Server, extra: &[&str]) -> Child {
    let wait: &[&str] = if extra.contains(&"--wait") {
        &[]
    } else {
        &["--wait", "30"]
    };
    Command::new(env!("CARGO_BIN_EXE_chatd"))
        .args(["chat", "--name", name, "--to", to])
        .args(["--server", &server.node.addr().to_string()])
        .args(["--bind", "127.0.0.1:0"])
        .args(wait)
        .args(extra)
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chatd chat")
}

/// Waits (at most 30 s, then kills) for `child` and collects its output.
async fn finish(child: Child) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut child = child;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
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
/// too-long line), keep stdin open 4 s, then end it; both must exit 0.
async fn chat_pair(servers: &[common::Server], extra: &[&str]) -> Run {
    let mut alice = spawn_chat("alice", "bob", &servers[0], extra);
    let mut bob = spawn_chat("bob", "alice", &servers[1], extra);
    let long = "x".repeat(chatd::chat::MAX_CHARS + 1);
    let a_lines: Vec<String> = (0..20).map(|i| format!("alice says {i}")).collect();
    let b_lines: Vec<String> = (0..20).map(|i| format!("bob says {i}")).collect();
    {
        let mut a_in = alice.stdin.take().unwrap();
        let mut b_in = bob.stdin.take().unwrap();
        for (i, (a, b)) in a_lines.iter().zip(&b_lines).enumerate() {
            writeln!(a_in, "{a}").unwrap();
            writeln!(b_in, "{b}").unwrap();
            if i == 10 {
                writeln!(a_in, "{long}").unwrap();
            }
        }
        // Keep stdin open a moment so the conversation can happen, then EOF.
        tokio::time::sleep(Duration::from_secs(4)).await;
    }
    let a_out = finish(alice).await;
    let b_out = finish(bob).await;
    let a_err = String::from_utf8_lossy(&a_out.stderr).to_string();
    let b_err = String::from_utf8_lossy(&b_out.stderr).to_string();
    assert!(
        a_out.status.success(),
        "alice failed:\n{a_err}\nbob:\n{b_err}"
    );
    assert!(
        b_out.status.success(),
        "bob failed:\n{b_err}\nalice:\n{a_err}"
    );
    let lines = |b: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(b)
            .lines()
            .map(String::from)
            .collect()
    };
    Run {
        a_got: lines(&a_out.stdout),
        b_got: lines(&b_out.stdout),
        a_err,
        b_err,
        a_lines,
        b_lines,
    }
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
    let r = chat_pair(&servers, &[]).await;
    assert_exactly_once_in_order(&r);
    assert!(r.a_err.contains("connected direct"), "{}", r.a_err);
    shutdown(&servers).await;
}

/// With no time for a direct path, the two are relayed through the home
/// server of the lower id (the other connects to it), and the chat is the
/// same: exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_direct_path_the_chat_is_relayed() {
    let servers = two_servers(121).await;
    let r = chat_pair(&servers, &["--direct-timeout", "0"]).await;
    assert_exactly_once_in_order(&r);
    for err in [&r.a_err, &r.b_err] {
        assert!(err.contains("connected relayed via server"), "{err}");
        assert!(!err.contains("connected direct"), "{err}");
    }
    shutdown(&servers).await;
}

/// Ctrl-C in the middle of a chat ends it cleanly: what was sent is
/// acknowledged first, the process exits 0, the friend hears it left and
/// has every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_finishes_the_chat_cleanly() {
    let servers = two_servers(122).await;
    let mut alice = spawn_chat("alice", "bob", &servers[0], &[]);
    let mut bob = spawn_chat("bob", "alice", &servers[1], &[]);
    let mut a_in = alice.stdin.take().unwrap();
    let mut b_in = bob.stdin.take().unwrap();
    for i in 0..5 {
        writeln!(a_in, "alice says {i}").unwrap();
    }
    writeln!(b_in, "bob says hi").unwrap();
    a_in.flush().unwrap();
    b_in.flush().unwrap();
    // Alice's stdout, line by line, until bob's message arrived.
    let a_out = alice.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(a_out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let got = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(20)))
        .await
        .unwrap()
        .expect("bob's message reached alice");
    assert_eq!(got, "bob says hi");
    let pid = alice.id().to_string();
    let killed = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(killed.success());
    let a = finish(alice).await;
    let b = finish(bob).await;
    drop((a_in, b_in));
    let a_err = String::from_utf8_lossy(&a.stderr).to_string();
    let b_err = String::from_utf8_lossy(&b.stderr).to_string();
    assert!(
        a.status.success(),
        "alice after Ctrl-C: {:?}\n{a_err}",
        a.status
    );
    assert!(a_err.contains("interrupted: finishing the chat"), "{a_err}");
    assert!(!a_err.contains("not acknowledged"), "{a_err}");
    assert!(b.status.success(), "{b_err}");
    assert!(b_err.contains("the friend left"), "{b_err}");
    let b_got: Vec<String> = String::from_utf8_lossy(&b.stdout)
        .lines()
        .map(String::from)
        .collect();
    let want: Vec<String> = (0..5).map(|i| format!("alice says {i}")).collect();
    assert_eq!(b_got, want);
    shutdown(&servers).await;
}

/// The bootstrap server is only a way in: a client reaching a loaded
/// server moves to the least loaded live server it lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moves_to_the_least_loaded_server() {
    let servers = two_servers(123).await;
    let addr0 = servers[0].node.addr();
    let (c1, c2) = (common::client(91), common::client(92));
    for (c, name) in [(&c1, "load-1"), (&c2, "load-2")] {
        let s = c.connect(addr0).await.unwrap();
        common::register(c, &s, name, Duration::from_secs(60)).await;
    }
    // Let the load reach the server list (sweep 1 s, heartbeat 0.5 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let carol = spawn_chat("carol", "nobody", &servers[0], &["--wait", "1"]);
    let out = finish(carol).await;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let addr1 = servers[1].node.addr().addr.to_string();
    assert!(
        err.contains("lists a less loaded server") && err.contains(&addr1),
        "{err}"
    );
    assert!(
        err.contains("nobody did not come online within 1s"),
        "{err}"
    );
    assert!(!out.status.success());
    shutdown(&servers).await;
}
