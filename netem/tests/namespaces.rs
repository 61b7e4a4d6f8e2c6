//! chatd-netem in real network namespaces: UDP echoes between two
//! namespaces take at least the configured delay, a 100% loss rule drops
//! everything to its prefix, and the counters say so. Needs root and
//! iproute2 (CI runs as root); the namespaces are `nl-em<pid>-*`, the
//! addresses 10.200.90.0/24, removed at the end whatever happens.

#![allow(clippy::print_stderr)] // skips and the measured RTTs, for the record

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_chatd-netem");

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs `ip ARGS` (split on spaces), which must succeed.
fn ip(args: &str) {
    let st = Command::new("ip").args(args.split(' ')).status().unwrap();
    assert!(st.success(), "ip {args}");
}

struct Lab {
    a: String,
    b: String,
}

impl Lab {
    fn new() -> Lab {
        let pid = std::process::id();
        let lab = Lab {
            a: format!("nl-em{pid}-a"),
            b: format!("nl-em{pid}-b"),
        };
        let (a, b) = (&lab.a, &lab.b);
        ip(&format!("netns add {a}"));
        ip(&format!("netns add {b}"));
        ip(&format!(
            "link add ema netns {a} type veth peer name emb netns {b}"
        ));
        ip(&format!("-n {a} addr add 10.200.90.1/24 dev ema"));
        ip(&format!("-n {b} addr add 10.200.90.2/24 dev emb"));
        ip(&format!("-n {b} addr add 10.200.90.3/24 dev emb"));
        for (ns, dev) in [(a, "ema"), (b, "emb")] {
            ip(&format!("-n {ns} link set lo up"));
            ip(&format!("-n {ns} link set {dev} up"));
        }
        lab
    }

    fn exec(&self, ns: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]);
        c
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The labs' UDP echo and ping (scripts/udp-rtt.py).
fn rtt_script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/udp-rtt.py")
}

/// Five echoes to `dst` from namespace A: each RTT in ms, or None.
fn ping(lab: &Lab, dst: &str) -> Vec<Option<f64>> {
    let out = lab
        .exec(&lab.a)
        .arg("python3")
        .arg(rtt_script())
        .args(["ping", dst, "7777", "5"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(|w| w.parse().ok())
        .collect()
}

#[test]
fn delays_and_losses_what_the_namespace_sends() {
    if !is_root() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let lab = Lab::new();
    let mut echo = lab
        .exec(&lab.b)
        .arg("python3")
        .arg(rtt_script())
        .args(["serve", "7777", "60"])
        .spawn()
        .unwrap();
    // Wait (bounded) for the echo to answer, before any delay is set.
    let start = Instant::now();
    let direct = loop {
        let r = ping(&lab, "10.200.90.2");
        if r.iter().all(Option::is_some) {
            break r;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no echo: {r:?}");
    };
    let mut netem = lab
        .exec(&lab.a)
        .args([
            BIN,
            "--src",
            "10.200.90.1",
            "--delay",
            "40~5",
            "--to",
            "10.200.90.3=0/100%",
            "--max-secs",
            "15",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded wait until the device routes (the echo takes ≥ 40 ms).
    let start = Instant::now();
    let slow = loop {
        let r = ping(&lab, "10.200.90.2");
        if r.iter().all(|x| x.is_some_and(|ms| ms >= 40.0)) {
            break r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(12),
            "never delayed: {r:?}"
        );
    };
    let blocked = ping(&lab, "10.200.90.3");
    assert!(blocked.iter().all(Option::is_none), "{blocked:?}");
    // It stops by itself and reports.
    let out = {
        let start = Instant::now();
        loop {
            if netem.try_wait().unwrap().is_some() {
                break netem.wait_with_output().unwrap();
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "netem never stopped"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(out.status.success());
    let stats = String::from_utf8_lossy(&out.stdout);
    let last = stats.lines().last().unwrap_or_default();
    let num = |k: &str| -> u64 {
        let v = last.split(&format!("\"{k}\":")).nth(1).unwrap_or_default();
        v.split([',', '}']).next().unwrap().parse().unwrap()
    };
    assert!(num("lost") >= 5, "{last}");
    assert!(num("sent") >= 5, "{last}");
    assert_eq!(num("overflow"), 0, "{last}");
    eprintln!("direct {direct:?}, with 40~5 ms {slow:?}; {last}");
    // After it stopped, the path is direct again: the device and its
    // route are gone, and so is the loss rule.
    let after = ping(&lab, "10.200.90.3");
    let _ = echo.kill();
    let _ = echo.wait();
    assert!(after.iter().all(Option::is_some), "{after:?}");
}

#[test]
fn refuses_any_namespace_but_a_labs() {
    if !is_root() {
        eprintln!("skipped: needs root to tell namespaces apart");
        return;
    }
    let out = Command::new(BIN)
        .args(["--src", "10.200.90.1", "--max-secs", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not inside a lab namespace"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line, no backtrace: {err}");
}
