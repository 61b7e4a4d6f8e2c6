//! Errors a person can act on (issue 10, item 6): the real `chatd` binary,
//! run as child processes on 127.0.0.1 with RUST_BACKTRACE=1 (which must not
//! matter), says in one line what went wrong and what to do.
//!
//! Every wait has a deadline and waits for a condition (never for a fixed
//! time); every child is killed, by its handle, when its test ends.

mod procs;

use procs::TempDir;
use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_chatd");
/// Upper bound of every wait (generous: the machine may be busy).
const LIMIT: Duration = Duration::from_secs(90);

/// `chatd ARGS` in `dir`, with RUST_BACKTRACE=1 and no RUST_LOG.
fn chatd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .current_dir(dir)
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LOG")
        .env_remove("CHATD_BACKTRACE")
        .stdin(Stdio::null());
    c
}

/// A child killed (by its handle) when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a command that is expected to end by itself: (status, stdout,
/// stderr). Killed and failed if it is still running after `LIMIT`.
fn finish(mut cmd: Command) -> (ExitStatus, String, String) {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chatd");
    let mut child = Guard(child);
    let mut out = child.0.stdout.take().expect("stdout");
    let mut err = child.0.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "chatd did not exit in time");
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out.join().expect("stdout reader");
    let err = err.join().expect("stderr reader");
    (status, out, err)
}

/// Asserts that `stderr` reports exactly one error, on one line, without a
/// backtrace or an anyhow "Caused by" list, and returns that line.
fn the_error_line(stderr: &str) -> String {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("chatd: error: "))
        .collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{stderr}");
    for junk in [
        "Stack backtrace",
        "Caused by",
        "Error: ",
        "OtherError",
        "os error",
    ] {
        assert!(!stderr.contains(junk), "{junk:?} in:\n{stderr}");
    }
    errors[0].to_string()
}

/// A running `chatd serve`: its start line and everything it logs.
struct Server {
    child: Guard,
    id: String,
    addr: String,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `chatd serve ARGS` on ports picked by the system and waits
    /// for its start line.
    fn start(dir: &Path, args: &[&str]) -> Server {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
        all.extend_from_slice(args);
        if !args.contains(&"--allow") {
            all.push("--open-cluster");
        }
        let child = chatd(dir, &all)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chatd serve");
        let mut child = Guard(child);
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = child.0.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { return };
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let out = child.0.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep reading so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(LIMIT) {
            Ok(line) => line,
            Err(_) => panic!(
                "no start line from chatd serve; stderr:\n{}",
                stderr.lock().unwrap()
            ),
        };
        let v: serde_json::Value = serde_json::from_str(&line).expect("start line is JSON");
        let id = v["id"].as_str().expect("id").to_string();
        let addr = v["addr"].as_str().expect("addr").to_string();
        Server {
            child,
            id,
            addr,
            stderr,
        }
    }

    /// `HOST:PORT` of its QUIC socket.
    fn socket(&self) -> &str {
        self.addr.split_once('@').expect("ID@HOST:PORT").1
    }

    /// Waits until a line of its log satisfies `check`; returns that line.
    fn wait_for_log(&mut self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(line) = self.stderr.lock().unwrap().lines().find(|l| check(l)) {
                return line.to_string();
            }
            if let Ok(Some(status)) = self.child.0.try_wait() {
                panic!(
                    "chatd serve exited ({status}) before logging {what}:\n{}",
                    self.stderr.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no log line {what} in time:\n{}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `chatd keygen --out FILE` in `dir`; returns the new id.
fn keygen(dir: &Path, file: &str) -> String {
    let (status, out, err) = finish(chatd(dir, &["keygen", "--out", file]));
    assert!(status.success(), "keygen failed: {err}");
    out.trim().to_string()
}

#[test]
fn a_server_without_an_allowlist_needs_open_cluster() {
    let tmp = TempDir::new("no-allow");
    let (status, _, err) = finish(chatd(
        tmp.path(),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--data-dir",
            "d",
        ],
    ));
    assert_eq!(status.code(), Some(1), "{err}");
    let line = the_error_line(&err);
    assert!(
        line.starts_with(
            "chatd: error: no cluster allowlist: name the servers that may join with --allow ID"
        ) && line.contains("--open-cluster"),
        "{line}"
    );
}

#[test]
fn a_busy_quic_port_names_the_socket_and_the_address() {
    let tmp = TempDir::new("quic-bind");
    let taken = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let addr = taken.local_addr().expect("local addr");
    let (status, _, err) = finish(chatd(
        tmp.path(),
        &[
            "serve",
            "--listen",
            &addr.to_string(),
            "--admin",
            "127.0.0.1:0",
            "--data-dir",
            "d",
            "--open-cluster",
        ],
    ));
    assert_eq!(status.code(), Some(1), "{err}");
    let line = the_error_line(&err);
    assert_eq!(
        line,
        format!(
            "chatd: error: cannot bind the QUIC socket (UDP {addr}): address already in use \
             — is another chatd running? pick another with --listen"
        )
    );
}

#[test]
fn a_busy_admin_port_names_the_socket_and_the_address() {
    let tmp = TempDir::new("admin-bind");
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
    let addr = taken.local_addr().expect("local addr");
    let (status, _, err) = finish(chatd(
        tmp.path(),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            &addr.to_string(),
            "--data-dir",
            "d",
            "--open-cluster",
        ],
    ));
    assert_eq!(status.code(), Some(1), "{err}");
    let line = the_error_line(&err);
    assert_eq!(
        line,
        format!(
            "chatd: error: cannot bind the admin HTTP socket (TCP {addr}): address already in use \
             — is another chatd running? pick another with --admin"
        )
    );
}

#[test]
fn a_missing_key_is_one_line_with_the_keygen_hint() {
    let tmp = TempDir::new("missing-key");
    for (args, path) in [
        (&["id"][..], "chatd.key"),
        (&["id", "--key", "nowhere/k.key"][..], "nowhere/k.key"),
    ] {
        let (status, out, err) = finish(chatd(tmp.path(), args));
        assert_eq!(status.code(), Some(1), "{err}");
        assert!(out.is_empty(), "{out}");
        assert_eq!(
            err,
            format!(
                "chatd: error: no key file at {path} (create one with: chatd keygen --out {path})\n"
            )
        );
    }
    // The hint works: after keygen, `chatd id` prints the same id.
    let id = keygen(tmp.path(), "chatd.key");
    let (status, out, err) = finish(chatd(tmp.path(), &["id"]));
    assert!(status.success(), "{err}");
    assert_eq!(out.trim(), id);
    assert!(err.is_empty(), "nothing on stderr expected: {err}");
}

#[test]
fn a_wrong_server_id_is_said_in_plain_words() {
    let tmp = TempDir::new("wrong-id");
    let server = Server::start(tmp.path(), &["--data-dir", "srv"]);
    let socket = server.socket().to_string();
    let other = keygen(tmp.path(), "other.key");
    let wrong = format!("{other}@{socket}");
    let (status, out, err) = finish(chatd(tmp.path(), &["lookup", "--server", &wrong]));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(out.is_empty(), "{out}");
    let line = the_error_line(&err);
    assert_eq!(
        line,
        format!(
            "chatd: error: server at {socket} is {}, not the expected {other} \
             (check the ID in ID@HOST:PORT)",
            server.id
        )
    );

    // With a fallback: one plain status line (no log line), then the answer.
    let (status, out, err) = finish(chatd(
        tmp.path(),
        &["lookup", "--server", &wrong, "--server", &server.addr],
    ));
    assert!(status.success(), "{err}");
    assert!(out.contains(&server.id), "{out}");
    let status_line = format!(
        "chatd: server at {socket} is {}, not the expected {other} \
         (check the ID in ID@HOST:PORT); trying the next server",
        server.id
    );
    assert!(err.lines().any(|l| l == status_line), "{err}");
    assert!(
        err.lines().all(|l| l.starts_with("chatd: ")),
        "only status lines, no log lines: {err}"
    );
}

#[test]
fn a_server_with_an_unreachable_bootstrap_says_why_it_is_not_joined() {
    let tmp = TempDir::new("unreachable");
    // A UDP socket that never answers, held so nothing else takes the port.
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let addr = silent.local_addr().expect("local addr");
    let nobody = keygen(tmp.path(), "nobody.key");
    let mut server = Server::start(
        tmp.path(),
        &[
            "--data-dir",
            "srv",
            "--bootstrap",
            &format!("{nobody}@{addr}"),
        ],
    );
    let line = server.wait_for_log("with the unreachable reason", |l| {
        l.contains("WARN") && l.contains("not joined to the overlay") && l.contains("unreachable")
    });
    assert!(
        line.contains(&format!("server at {addr} is unreachable (timed out")),
        "{line}"
    );
}

#[test]
fn a_server_refused_or_dialing_a_wrong_id_says_why_and_one_admitted_joins() {
    let tmp = TempDir::new("refused");
    let a_id = keygen(tmp.path(), "a.key");
    let b_id = keygen(tmp.path(), "b.key");
    let d_id = keygen(tmp.path(), "d.key");
    // A admits only itself and D.
    let a = Server::start(
        tmp.path(),
        &[
            "--data-dir",
            "a",
            "--key",
            "a.key",
            "--allow",
            &a_id,
            "--allow",
            &d_id,
        ],
    );
    assert_eq!(a.id, a_id);
    let socket = a.socket().to_string();
    // B is refused by A's allowlist.
    let mut b = Server::start(
        tmp.path(),
        &["--data-dir", "b", "--key", "b.key", "--bootstrap", &a.addr],
    );
    // C dials A's address with B's id.
    let mut c = Server::start(
        tmp.path(),
        &[
            "--data-dir",
            "c",
            "--bootstrap",
            &format!("{b_id}@{socket}"),
        ],
    );
    // D is admitted and joins.
    let mut d = Server::start(
        tmp.path(),
        &["--data-dir", "d", "--key", "d.key", "--bootstrap", &a.addr],
    );

    let refused = b.wait_for_log("with the refusal", |l| {
        l.contains("WARN") && l.contains("not joined to the overlay") && l.contains("refused")
    });
    assert!(
        refused.contains(&format!(
            "server at {socket} refused this server: its allowlist (--allow) does not admit \
             this server's id {b_id} (add it to that server's --allow)"
        )),
        "{refused}"
    );

    let wrong = c.wait_for_log("with the wrong id", |l| {
        l.contains("WARN") && l.contains("not joined to the overlay") && l.contains("expected")
    });
    assert!(
        wrong.contains(&format!(
            "server at {socket} is {a_id}, not the expected {b_id}"
        )),
        "{wrong}"
    );

    d.wait_for_log("joined", |l| {
        l.contains("INFO") && l.contains("joined the overlay")
    });
}

#[test]
fn a_relative_key_flag_is_relative_to_the_current_directory() {
    let tmp = TempDir::new("key-path");
    let id = keygen(tmp.path(), "d/k");
    let mut server = Server::start(tmp.path(), &["--data-dir", "d", "--key", "d/k"]);
    assert_eq!(server.id, id, "the server uses d/k");
    assert!(!tmp.path().join("d/d").exists(), "no key under d/d");
    let abs = tmp.path().join("d/k");
    let line = server.wait_for_log("with the key path", |l| l.contains("identity key"));
    assert!(
        line.contains("INFO")
            && line.contains("using the identity key")
            && line.contains(&abs.display().to_string()),
        "{line}"
    );
    drop(server);

    // A new key is created where --key says, and the log says so.
    let mut server = Server::start(tmp.path(), &["--data-dir", "d", "--key", "new/k"]);
    let line = server.wait_for_log("with the key path", |l| l.contains("identity key"));
    let abs = tmp.path().join("new/k");
    assert!(
        line.contains("created a new identity key") && line.contains(&abs.display().to_string()),
        "{line}"
    );
    assert!(abs.exists());
}

/// `chatd chat --help` shows its two example commands on lines of their
/// own, and the lines a person needs (data dir, pinning).
#[test]
fn chat_help_shows_each_example_on_its_own_line() {
    let tmp = TempDir::new("chat-help");
    let (status, out, err) = finish(chatd(tmp.path(), &["chat", "--help"]));
    assert!(status.success(), "{err}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    for example in [
        "chatd chat --name alice --to bob --server ID@203.0.113.5:7000",
        "chatd chat --name bob --to alice --server ID@203.0.113.5:7000",
    ] {
        assert!(
            lines.contains(&example),
            "{example:?} not on its own line:\n{out}"
        );
    }
    assert!(
        out.contains("--accept-new-key") && out.contains("--data-dir"),
        "{out}"
    );
}

/// `chatd --version` names the crate version and the commit it was built
/// from (a hexadecimal id, maybe `-dirty`, or "unknown" outside a git
/// checkout), so an operator can tell which build a server runs.
#[test]
fn version_names_the_commit() {
    let tmp = TempDir::new("version");
    let (status, out, err) = finish(chatd(tmp.path(), &["--version"]));
    assert!(status.success(), "{err}");
    let line = out.trim();
    let want = format!("chatd {} (commit ", env!("CARGO_PKG_VERSION"));
    let commit = line
        .strip_prefix(&want)
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{line:?} is not {want:?}COMMIT)"));
    let id = commit.strip_suffix("-dirty").unwrap_or(commit);
    assert!(
        id == "unknown" || (id.len() >= 7 && id.chars().all(|c| c.is_ascii_hexdigit())),
        "commit {commit:?}"
    );
}

/// `chatd completions SHELL` prints a completion script for that shell and
/// `chatd man` the manual page; an unknown shell is refused with the list,
/// and a reader that stops early (`| head -1`) is no error.
#[test]
fn completions_and_man_page_are_printed() {
    let tmp = TempDir::new("completions");
    for (shell, marker) in [
        ("bash", "complete -F _chatd"),
        ("zsh", "#compdef chatd"),
        ("fish", "complete -c chatd"),
    ] {
        let (status, out, err) = finish(chatd(tmp.path(), &["completions", shell]));
        assert!(status.success(), "{shell}: {err}");
        assert!(out.contains(marker), "{shell}: no {marker:?} in\n{out}");
        assert!(
            out.contains("chat") && out.contains("serve"),
            "{shell}: subcommands"
        );
    }
    let (status, out, err) = finish(chatd(tmp.path(), &["man"]));
    assert!(status.success(), "{err}");
    assert!(out.contains(".TH chatd 1"), "{out}");
    assert!(out.contains(".SH SUBCOMMANDS"), "{out}");
    let (status, _, err) = finish(chatd(tmp.path(), &["completions", "nope"]));
    assert!(!status.success());
    assert!(err.contains("bash") && err.contains("zsh"), "{err}");
    // A pipe closed after the first line: the rest is dropped quietly.
    let mut child = chatd(tmp.path(), &["completions", "zsh"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chatd");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait for chatd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "closed pipe: {err}");
    assert!(!err.contains("panicked"), "{err}");
}
