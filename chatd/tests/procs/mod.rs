//! Real `chatd` processes for the tests that need them (SIGKILL, metrics,
//! IPv6): a cluster of `chatd serve` children with keys, an allowlist and
//! their own ports, and `chatd chat` children whose stdout and stderr are
//! collected line by line as they come, so a test can wait (bounded) for a
//! line instead of for time. Every child is killed when its handle drops,
//! also when an assertion fails. Loopback only.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_chatd");
const POLL: Duration = Duration::from_millis(50);

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("chatd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `check` until it holds or `limit` has passed.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// A child process whose output lines are collected as they arrive.
pub struct Proc {
    pub child: Option<Child>,
    pub stdin: Option<ChildStdin>,
    out: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<Vec<String>>>,
}

fn collect(stream: impl Read + Send + 'static, sink: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
}

impl Proc {
    /// Starts `cmd` with piped stdio (no colours, no backtraces).
    pub fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chatd");
        let (out, err) = (Arc::default(), Arc::default());
        collect(child.stdout.take().unwrap(), Arc::clone(&out));
        collect(child.stderr.take().unwrap(), Arc::clone(&err));
        Proc {
            stdin: child.stdin.take(),
            child: Some(child),
            out,
            err,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Stdout lines so far.
    pub fn out(&self) -> Vec<String> {
        self.out.lock().unwrap().clone()
    }

    /// Stderr so far, one string.
    pub fn err(&self) -> String {
        self.err.lock().unwrap().join("\n")
    }

    /// Waits (at most `limit`) until stdout satisfies `check`.
    pub fn wait_out(&self, limit: Duration, check: impl Fn(&[String]) -> bool) -> bool {
        wait_until(limit, || check(&self.out.lock().unwrap()))
    }

    /// Waits (at most `limit`) until `n` stderr lines contain `needle`.
    pub fn wait_err_count(&self, limit: Duration, needle: &str, n: usize) -> bool {
        wait_until(limit, || {
            self.err
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(needle))
                .count()
                >= n
        })
    }

    /// Waits (at most `limit`) until a stderr line contains `needle`.
    pub fn wait_err(&self, limit: Duration, needle: &str) -> bool {
        self.wait_err_count(limit, needle, 1)
    }

    /// Writes lines to stdin.
    pub fn write_lines(&mut self, lines: &[String]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        for l in lines {
            writeln!(stdin, "{l}").unwrap();
        }
        stdin.flush().unwrap();
    }

    /// Ends stdin (EOF).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Sends a signal (`-KILL`, `-INT`) to the child.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill {sig}");
    }

    /// Waits (at most `limit`, then kills it) for the child to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let mut status = None;
        wait_until(limit, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Let the reader threads take the last lines.
        std::thread::sleep(POLL);
        status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One `chatd serve` child.
pub struct ServerProc {
    pub id: String,
    /// `ID@HOST:PORT`.
    pub addr: String,
    pub admin: u16,
    pub proc: Option<Proc>,
}

/// `n` servers (all allowed, each bootstrapping through the first) on
/// `host` ("127.0.0.1" or "::1"), preset local. Dropping it kills them.
pub struct Cluster {
    pub servers: Vec<ServerProc>,
    _tmp: TempDir,
}

fn keygen(path: &Path) -> String {
    let out = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(path)
        .output()
        .expect("run chatd keygen");
    assert!(out.status.success(), "chatd keygen: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

impl Cluster {
    pub fn start(name: &str, n: usize, host: &str) -> Cluster {
        let tmp = TempDir::new(name);
        let dirs: Vec<PathBuf> = (0..n).map(|i| tmp.0.join(format!("srv{i}"))).collect();
        let ids: Vec<String> = dirs
            .iter()
            .map(|d| {
                std::fs::create_dir_all(d).unwrap();
                keygen(&d.join("chatd.key"))
            })
            .collect();
        let listen = if host.contains(':') {
            format!("[{host}]:0")
        } else {
            format!("{host}:0")
        };
        let mut servers: Vec<ServerProc> = Vec::new();
        for i in 0..n {
            // Port 0 (the kernel picks; nothing to race for): the start line
            // says which.
            let mut cmd = Command::new(BIN);
            cmd.arg("serve")
                .args(["--listen", &listen])
                .args(["--admin", "127.0.0.1:0"])
                .arg("--data-dir")
                .arg(&dirs[i])
                .args(["--preset", "local"]);
            for id in &ids {
                cmd.args(["--allow", id]);
            }
            if let Some(first) = servers.first() {
                cmd.args(["--bootstrap", &first.addr]);
            }
            let p = Proc::spawn(cmd);
            assert!(
                p.wait_out(Duration::from_secs(30), |l| !l.is_empty()),
                "server {i} did not start:\n{}",
                p.err()
            );
            let start: serde_json::Value =
                serde_json::from_str(&p.out()[0]).expect("the start line is JSON");
            let addr = start["addr"].as_str().expect("addr").to_string();
            let admin = start["admin"]
                .as_str()
                .and_then(|a| a.rsplit(':').next()?.parse().ok())
                .expect("admin port");
            assert_eq!(start["id"], ids[i].as_str());
            servers.push(ServerProc {
                id: ids[i].clone(),
                addr,
                admin,
                proc: Some(p),
            });
        }
        let c = Cluster { servers, _tmp: tmp };
        // Every server sees every other one as live.
        let all = wait_until(Duration::from_secs(60), || {
            c.servers.iter().all(|s| {
                status(s.admin)
                    .and_then(|v| v.get("servers")?.as_array().map(Vec::len))
                    .is_some_and(|k| k == n)
            })
        });
        assert!(all, "the cluster did not form");
        c
    }

    /// SIGKILLs server `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(p) = self.servers[i].proc.take() {
            p.signal("-KILL");
            drop(p);
        }
    }
}

/// A plain HTTP GET on the admin port: the body of a 200 answer.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nhost: chatd\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.contains(" 200 ").then(|| body.to_string())
}

pub fn status(admin: u16) -> Option<serde_json::Value> {
    serde_json::from_str(&http_get(admin, "/status")?).ok()
}

/// The value of an unlabelled metric (absent counts as 0).
pub fn metric(admin: u16, name: &str) -> Option<f64> {
    let text = http_get(admin, "/metrics")?;
    Some(
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == name).then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0.0),
    )
}

/// `chatd chat --name NAME --to TO` with `--server`s, its own data dir
/// (key and known friends: `data_dir`), and `extra` flags.
pub fn chat(data_dir: &Path, name: &str, to: &str, servers: &[&str], extra: &[&str]) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args(["chat", "--name", name, "--to", to])
        .arg("--data-dir")
        .arg(data_dir);
    for s in servers {
        cmd.args(["--server", s]);
    }
    if !extra.contains(&"--wait") {
        cmd.args(["--wait", "60"]);
    }
    cmd.args(extra);
    Proc::spawn(cmd)
}

/// `chatd lookup --server ADDR ARGS...`: the JSON lines it printed (none
/// if it failed: no such peer).
pub fn lookup(server: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(BIN)
        .args(["lookup", "--json", "--server", server])
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run chatd lookup");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The id of the key in a chat client's data dir (created on first use:
/// waits, bounded, until the client has written it).
pub fn client_id(data_dir: &Path) -> String {
    let key = data_dir.join("client.key");
    let mut id = String::new();
    let read = wait_until(Duration::from_secs(30), || {
        let out = Command::new(BIN).args(["id", "--key"]).arg(&key).output();
        id = out
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        !id.is_empty()
    });
    assert!(read, "no key at {}", key.display());
    id
}

/// Lines `"{who} says {i}"` for `i` in `range`.
pub fn says(who: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{who} says {i}")).collect()
}

/// Writes `a` to alice and `b` to bob, then waits until each has printed
/// `total` lines in all (the other's).
pub fn exchange(alice: &mut Proc, bob: &mut Proc, a: &[String], b: &[String], total: usize) {
    alice.write_lines(a);
    bob.write_lines(b);
    let limit = Duration::from_secs(60);
    assert!(
        bob.wait_out(limit, |l| l.len() >= total) && alice.wait_out(limit, |l| l.len() >= total),
        "not delivered\nalice:\n{}\nbob:\n{}",
        alice.err(),
        bob.err()
    );
}

/// Ends both inputs; both must exit 0.
pub fn end_both(alice: &mut Proc, bob: &mut Proc) {
    alice.close_stdin();
    bob.close_stdin();
    let limit = Duration::from_secs(60);
    let (sa, sb) = (alice.wait_exit(limit), bob.wait_exit(limit));
    let both = || format!("alice:\n{}\nbob:\n{}", alice.err(), bob.err());
    assert!(sa.is_some_and(|s| s.success()), "alice failed\n{}", both());
    assert!(sb.is_some_and(|s| s.success()), "bob failed\n{}", both());
}

/// promtool, if it is on PATH (`.ci/run` installs Debian's `prometheus`
/// package when it can, and then sets `CHATD_REQUIRE_PROMTOOL=1`: a test
/// that needs promtool fails instead of skipping).
pub fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found || std::env::var_os("CHATD_REQUIRE_PROMTOOL").is_none_or(|v| v != "1"),
        "CHATD_REQUIRE_PROMTOOL=1 but no promtool on PATH"
    );
    found.then_some("promtool")
}
