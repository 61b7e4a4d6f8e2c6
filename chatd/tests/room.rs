//! Rooms with real processes (issue 13): three `chatd serve` on loopback,
//! four `chatd room` members homed on different servers. Every member
//! prints the same sequence; SIGKILL of the host makes another member host
//! and the survivors go on printing one sequence that holds every line
//! each of them sent. Every wait bounded.

#![allow(clippy::print_stderr)] // the failover time and, on ROOM_TEST_DUMP, the members' logs

mod procs;

use procs::{Cluster, Proc, TempDir, wait_until};
use std::process::Command;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(60);
const NAMES: [&str; 4] = ["ann", "ben", "cat", "dan"];

fn member(dir: &TempDir, name: &str, server: &str) -> Proc {
    let mut cmd = Command::new(procs::BIN);
    cmd.args(["room", "team", "--name", name])
        .arg("--data-dir")
        .arg(dir.path().join(name))
        .args(["--server", server])
        .args(["--wait", "60"])
        .env("RUST_BACKTRACE", "0");
    // ROOM_TEST_LOG=FILTER: the members' RUST_LOG (e.g. chatd::client::room=debug).
    if let Some(filter) = std::env::var_os("ROOM_TEST_LOG") {
        cmd.env("RUST_LOG", filter);
    }
    for other in NAMES.iter().filter(|n| **n != name) {
        cmd.args(["--member", other]);
    }
    Proc::spawn(cmd)
}

fn lines(name: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{name} says {i}")).collect()
}

/// The host as `p` last said it ("host is NAME").
fn host_of(p: &Proc) -> Option<String> {
    let err = p.err();
    let line = err.lines().rfind(|l| l.contains("chatd: host is "))?;
    let rest = line.split("chatd: host is ").nth(1)?;
    Some(rest.split(' ').next()?.to_string())
}

/// What `p` printed, as (sender, text).
fn printed(p: &Proc) -> Vec<(String, String)> {
    p.out()
        .iter()
        .filter_map(|l| {
            let (s, t) = l.split_once('\t')?;
            Some((s.to_string(), t.to_string()))
        })
        .collect()
}

fn dump(ps: &[(&str, &Proc)]) -> String {
    ps.iter()
        .map(|(n, p)| {
            format!(
                "--- {n} stdout:\n{}\n--- {n} stderr:\n{}",
                p.out().join("\n"),
                p.err()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn four_members_print_one_sequence_and_survive_the_host() {
    let cluster = Cluster::start("room", 3, "127.0.0.1");
    let dir = TempDir::new("room-members");
    let mut ps: Vec<Proc> = NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| member(&dir, n, &cluster.servers[i % 3].addr))
        .collect();
    // Every member hears of one host.
    let hosted = wait_until(LIMIT, || {
        let hosts: Vec<Option<String>> = ps.iter().map(host_of).collect();
        hosts[0].is_some() && hosts.iter().all(|h| *h == hosts[0])
    });
    let named: Vec<(&str, &Proc)> = NAMES.iter().copied().zip(ps.iter()).collect();
    assert!(hosted, "no common host\n{}", dump(&named));
    // Three lines each, interleaved.
    for i in 0..3 {
        for (n, p) in NAMES.iter().zip(ps.iter_mut()) {
            p.write_lines(&lines(n, i..i + 1));
        }
    }
    let all_printed = wait_until(LIMIT, || ps.iter().all(|p| printed(p).len() >= 12));
    let named: Vec<(&str, &Proc)> = NAMES.iter().copied().zip(ps.iter()).collect();
    assert!(all_printed, "not every line printed\n{}", dump(&named));
    let first = printed(&ps[0]);
    assert_eq!(first.len(), 12, "{}", dump(&named));
    for (n, p) in &named {
        assert_eq!(
            printed(p),
            first,
            "{n} printed another sequence\n{}",
            dump(&named)
        );
    }
    for n in NAMES {
        let theirs: Vec<String> = first
            .iter()
            .filter(|(s, _)| s == n)
            .map(|(_, t)| t.clone())
            .collect();
        assert_eq!(theirs, lines(n, 0..3), "{n}'s lines\n{}", dump(&named));
    }

    // SIGKILL the host; the others elect another and go on.
    let host = host_of(&ps[0]).expect("a host");
    let h = NAMES
        .iter()
        .position(|n| *n == host)
        .expect("the host is a member");
    ps[h].signal("-KILL");
    let killed = Instant::now();
    let survivors: Vec<usize> = (0..4).filter(|i| *i != h).collect();
    let rehosted = wait_until(LIMIT, || {
        survivors
            .iter()
            .all(|&i| host_of(&ps[i]).is_some_and(|x| x != host))
    });
    let named: Vec<(&str, &Proc)> = NAMES.iter().copied().zip(ps.iter()).collect();
    assert!(
        rehosted,
        "no new host after killing {host}\n{}",
        dump(&named)
    );
    eprintln!("new host after {:?}", killed.elapsed());
    for i in 3..6 {
        for &s in &survivors {
            ps[s].write_lines(&lines(NAMES[s], i..i + 1));
        }
    }
    let done = wait_until(LIMIT, || {
        survivors.iter().all(|&i| printed(&ps[i]).len() >= 21)
    });
    let named: Vec<(&str, &Proc)> = NAMES.iter().copied().zip(ps.iter()).collect();
    assert!(
        done,
        "the survivors did not print everything\n{}",
        dump(&named)
    );
    let seq = printed(&ps[survivors[0]]);
    assert_eq!(seq.len(), 21, "{}", dump(&named));
    assert_eq!(&seq[..12], &first[..], "{}", dump(&named));
    for &s in &survivors {
        assert_eq!(
            printed(&ps[s]),
            seq,
            "{} printed another sequence\n{}",
            NAMES[s],
            dump(&named)
        );
        let theirs: Vec<String> = seq
            .iter()
            .filter(|(x, _)| x == NAMES[s])
            .map(|(_, t)| t.clone())
            .collect();
        assert_eq!(theirs, lines(NAMES[s], 0..6), "{}", dump(&named));
    }
    if std::env::var_os("ROOM_TEST_DUMP").is_some() {
        eprintln!("{}", dump(&named));
    }
    for &s in &survivors {
        ps[s].close_stdin();
    }
    for &s in &survivors {
        let st = ps[s].wait_exit(LIMIT);
        assert_eq!(
            st.and_then(|x| x.code()),
            Some(0),
            "{} did not leave cleanly\n{}",
            NAMES[s],
            ps[s].err()
        );
    }
}
