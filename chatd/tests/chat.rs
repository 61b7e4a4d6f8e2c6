//! Two `chatd chat` processes, homed on different servers of one cluster,
//! find each other and exchange messages both ways, each delivered exactly
//! once and in order; a too-long line is refused with an error and the rest
//! still goes through. Loopback only; every wait bounded.

mod common;

use common::cluster;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_on_two_servers_chat_both_ways() {
    let servers = cluster(2, 120, overlay::Config::local()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let bin = env!("CARGO_BIN_EXE_chatd");
    let spawn = |name: &str, to: &str, server: String| {
        Command::new(bin)
            .args([
                "chat",
                "--name",
                name,
                "--to",
                to,
                "--server",
                &server,
                "--bind",
                "127.0.0.1:0",
                "--wait",
                "30",
            ])
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chatd chat")
    };
    let mut alice = spawn("alice", "bob", servers[0].node.addr().to_string());
    let mut bob = spawn("bob", "alice", servers[1].node.addr().to_string());
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
    let wait = |child: std::process::Child| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut child = child;
        loop {
            if let Some(_status) = child.try_wait().unwrap() {
                return child.wait_with_output().unwrap();
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                return child.wait_with_output().unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let a_out = tokio::task::spawn_blocking(move || wait(alice))
        .await
        .unwrap();
    let b_out = tokio::task::spawn_blocking(move || wait(bob))
        .await
        .unwrap();
    let a_err = String::from_utf8_lossy(&a_out.stderr).to_string();
    let b_err = String::from_utf8_lossy(&b_out.stderr).to_string();
    assert!(a_out.status.success(), "alice failed:\n{a_err}");
    assert!(b_out.status.success(), "bob failed:\n{b_err}");
    let a_got: Vec<String> = String::from_utf8_lossy(&a_out.stdout)
        .lines()
        .map(String::from)
        .collect();
    let b_got: Vec<String> = String::from_utf8_lossy(&b_out.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        b_got, a_lines,
        "bob got alice's lines once each, in order\n{b_err}"
    );
    assert_eq!(
        a_got, b_lines,
        "alice got bob's lines once each, in order\n{a_err}"
    );
    assert!(a_err.contains("over the 2048-character limit"), "{a_err}");
    assert!(a_err.contains("connected direct"), "{a_err}");
    assert!(b_err.contains("friend found: alice"), "{b_err}");
    for s in &servers {
        s.node.shutdown(Duration::from_secs(2)).await;
    }
}
