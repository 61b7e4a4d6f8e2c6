//! `scripts/latlab.sh selftest` with this build of chatd-netem: seed 003's
//! six hosts measure the emulated RTTs (within +40 ms, median of 7) and
//! both clients find s1 the closest server. Needs root (CI runs as root);
//! the lab (nl-lat* namespaces, 10.200.30.0/24) is taken down at the end.
#![allow(clippy::print_stderr)] // the skip, and the script's table on failure

use std::path::Path;
use std::process::Command;

#[test]
fn the_latency_lab_measures_what_it_emulates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join("scripts/latlab.sh");
    let uid = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if !uid
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let run = |args: &[&str]| {
        Command::new("bash")
            .arg(&script)
            .args(args)
            .env("NETEM_BIN", env!("CARGO_BIN_EXE_chatd-netem"))
            .output()
            .unwrap()
    };
    let up = run(&["up", "--lifetime", "120"]);
    let test = if up.status.success() {
        Some(run(&["selftest"]))
    } else {
        None
    };
    let down = run(&["down"]);
    assert!(
        up.status.success(),
        "up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let test = test.unwrap();
    let out = String::from_utf8_lossy(&test.stdout);
    assert!(
        test.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&test.stderr)
    );
    assert!(out.contains("latlab selftest: PASS"), "{out}");
    assert_eq!(out.matches(" PASS").count(), 9 + 1, "{out}");
    assert!(
        down.status.success(),
        "down: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&left.stdout).contains("nl-lat"),
        "down left namespaces"
    );
}
