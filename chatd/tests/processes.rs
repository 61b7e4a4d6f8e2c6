//! The real `chatd` binary, run as child processes on 127.0.0.1: servers
//! find each other, a killed server is dropped and comes back after a
//! restart with the same key, and garbage on the QUIC and admin ports does
//! not stop a server. Every wait has a deadline; every child is killed when
//! its test ends, also when an assertion fails (the `Cluster` drop guard).
//! Observes the servers only through what they print on start and through
//! their admin endpoint (`/status`, `/members`, `/metrics`, `/healthz`,
//! `/readyz`).

mod common;
mod procs;

use common::eventually_blocking;
use procs::TempDir;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_chatd");

/// One server: its directory, key id, ports and (while running) process.
struct Server {
    dir: PathBuf,
    id: String,
    quic: u16,
    admin: u16,
    child: Option<Child>,
}

/// Servers started by one test. Dropping it kills every child it started.
struct Cluster {
    servers: Vec<Server>,
    allow: Vec<String>,
    // Dropped after `Drop::drop` has killed the children.
    _tmp: TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for s in &mut self.servers {
            if let Some(mut child) = s.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Picks `n` distinct free UDP ports and `n` distinct free TCP ports on
/// 127.0.0.1 (all sockets are held until every port is chosen).
fn free_ports(n: usize) -> (Vec<u16>, Vec<u16>) {
    let udp: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind udp"))
        .collect();
    let tcp: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind tcp"))
        .collect();
    let port = |a: std::io::Result<SocketAddr>| a.expect("local addr").port();
    (
        udp.iter().map(|s| port(s.local_addr())).collect(),
        tcp.iter().map(|s| port(s.local_addr())).collect(),
    )
}

/// A plain HTTP/1.1 GET against the admin endpoint: (status code, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(3))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nhost: chatd\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// The parsed `/status` document, if the server answers 200 with JSON.
fn status(port: u16) -> Option<serde_json::Value> {
    match http_get(port, "/status")? {
        (200, body) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// The ids in a server's active view (None if it does not answer).
fn active(port: u16) -> Option<Vec<String>> {
    let s = status(port)?;
    let ids = s.get("active")?.as_array()?;
    Some(
        ids.iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
    )
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Cluster {
    /// Makes `n` data dirs with keys (`chatd keygen`) and picks ports; starts
    /// nothing.
    fn new(name: &str, n: usize) -> Cluster {
        let tmp = TempDir::new(name);
        let (quic, admin) = free_ports(n);
        let mut servers = Vec::new();
        for k in 0..n {
            let dir = tmp.0.join(format!("s{}", k + 1));
            std::fs::create_dir_all(&dir).expect("create server dir");
            let out = Command::new(BIN)
                .arg("keygen")
                .arg("--out")
                .arg(dir.join("chatd.key"))
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .output()
                .expect("run chatd keygen");
            assert!(out.status.success(), "chatd keygen failed: {out:?}");
            let id = String::from_utf8(out.stdout).expect("utf-8 id");
            let id = id.trim().to_string();
            assert_eq!(id.len(), 52, "keygen printed {id:?}");
            servers.push(Server {
                dir,
                id,
                quic: quic[k],
                admin: admin[k],
                child: None,
            });
        }
        let allow = servers.iter().map(|s| s.id.clone()).collect();
        Cluster {
            servers,
            allow,
            _tmp: tmp,
        }
    }

    /// Starts server `i` (0-based; every other server bootstraps through
    /// server 0) and waits for the JSON line it prints on start.
    fn start(&mut self, i: usize) {
        let boot = format!("{}@127.0.0.1:{}", self.servers[0].id, self.servers[0].quic);
        let s = &mut self.servers[i];
        assert!(s.child.is_none(), "server {} is already running", i + 1);
        let out_path = s.dir.join("out.json");
        let log_path = s.dir.join("log");
        let out = File::create(&out_path).expect("create out.json");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open log");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", s.quic))
            .arg("--admin")
            .arg(format!("127.0.0.1:{}", s.admin))
            .arg("--data-dir")
            .arg(&s.dir)
            .arg("--preset")
            .arg("local");
        for id in &self.allow {
            cmd.arg("--allow").arg(id);
        }
        if i > 0 {
            cmd.arg("--bootstrap").arg(&boot);
        }
        let child = cmd
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log)
            .spawn()
            .expect("spawn chatd serve");
        s.child = Some(child);

        // The one line on stdout: {"id":..,"addr":..,"admin":..}.
        let mut line = String::new();
        let mut exited = None;
        let printed = eventually_blocking(Duration::from_secs(30), || {
            if let Some(c) = s.child.as_mut()
                && let Ok(Some(code)) = c.try_wait()
            {
                exited = Some(code);
                return true;
            }
            line = std::fs::read_to_string(&out_path).unwrap_or_default();
            line.ends_with('\n')
        });
        assert!(
            printed && exited.is_none(),
            "server {} did not start (exit: {exited:?}); log:\n{}",
            i + 1,
            tail(&log_path, 20)
        );
        let v: serde_json::Value = serde_json::from_str(line.trim()).expect("start line is JSON");
        assert_eq!(v["id"], s.id.as_str(), "{line}");
        assert_eq!(
            v["addr"],
            format!("{}@127.0.0.1:{}", s.id, s.quic).as_str(),
            "{line}"
        );
        assert_eq!(
            v["admin"],
            format!("http://127.0.0.1:{}", s.admin).as_str(),
            "{line}"
        );
    }

    /// SIGKILLs server `i` and reaps it.
    fn kill(&mut self, i: usize) {
        let mut child = self.servers[i].child.take().expect("server is running");
        child.kill().expect("kill");
        child.wait().expect("wait");
    }

    /// Each running server's active view, or its log tail if it does not
    /// answer: for assertion messages.
    fn describe(&self) -> String {
        let mut out = String::new();
        for (k, s) in self.servers.iter().enumerate() {
            let view = match (&s.child, status(s.admin)) {
                (None, _) => "not running".to_string(),
                (Some(_), Some(st)) => st.to_string(),
                (Some(_), None) => {
                    format!("no /status answer; log:\n{}", tail(&s.dir.join("log"), 10))
                }
            };
            out += &format!("server {} ({}): {view}\n", k + 1, s.id);
        }
        out
    }

    /// Waits until every server in `which` has exactly the servers in
    /// `which` (minus itself) as its active view.
    fn wait_full_mesh(&self, which: &[usize], limit: Duration) {
        let ok = eventually_blocking(limit, || {
            which.iter().all(|&i| {
                let mut want: Vec<&str> = which
                    .iter()
                    .filter(|&&j| j != i)
                    .map(|&j| self.servers[j].id.as_str())
                    .collect();
                want.sort_unstable();
                active(self.servers[i].admin).is_some_and(|mut got| {
                    got.sort_unstable();
                    got == want
                })
            })
        });
        assert!(
            ok,
            "servers {which:?} (0-based) did not all become neighbors of each other within {limit:?}:\n{}",
            self.describe()
        );
    }
}

#[test]
fn five_servers_see_each_other() {
    let mut c = Cluster::new("five", 5);
    for i in 0..5 {
        c.start(i);
    }
    // Views hold 5, so five servers end up all linked to each other.
    c.wait_full_mesh(&[0, 1, 2, 3, 4], Duration::from_secs(30));
    for s in &c.servers {
        let st = status(s.admin).expect("status");
        assert_eq!(st["id"], s.id.as_str());
        assert_eq!(st["ready"], true, "{st}");
        assert!(st["links"].as_u64().is_some_and(|l| l >= 4), "{st}");
        assert_eq!(http_get(s.admin, "/readyz").map(|r| r.0), Some(200));
    }
    // Membership: every server reports all 5 live servers, itself included.
    let all_five = eventually_blocking(Duration::from_secs(30), || {
        c.servers.iter().all(|s| {
            status(s.admin).is_some_and(|st| st["servers"].as_array().is_some_and(|a| a.len() == 5))
        })
    });
    assert!(
        all_five,
        "not every server lists 5 live servers:\n{}",
        c.describe()
    );
    // For people: `chatd members` is a table of all five, alive, the one
    // asked marked; `chatd status` a summary; several --admin one table.
    let admin_arg = |i: usize| format!("127.0.0.1:{}", c.servers[i].admin);
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().expect("run chatd");
        assert!(
            out.status.success(),
            "chatd {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let table = run(&["members", "--admin", &admin_arg(0)]);
    assert!(table.starts_with("ID "), "{table}");
    for (i, s) in c.servers.iter().enumerate() {
        let row = table
            .lines()
            .find(|l| l.starts_with(&s.id[..8]))
            .unwrap_or_else(|| panic!("no row for server {i}:\n{table}"));
        assert!(
            row.contains(" alive ") && row.contains("127.0.0.1:"),
            "{row}"
        );
        assert_eq!(row.contains('*'), i == 0, "{row}");
    }
    assert!(table.contains("5 servers known, 5 alive"), "{table}");
    // The same metrics on every server, whatever each has done yet.
    let names = |i: usize| -> Vec<String> {
        let (_, m) = http_get(c.servers[i].admin, "/metrics").expect("metrics");
        m.lines()
            .filter(|l| l.starts_with("# TYPE "))
            .map(str::to_string)
            .collect()
    };
    let first = names(0);
    for i in 1..5 {
        assert_eq!(
            names(i),
            first,
            "server {i} exports a different set of metrics"
        );
    }
    let summary = run(&["status", "--admin", &admin_arg(1)]);
    assert!(
        summary.contains(&c.servers[1].id) && summary.contains("ready, up "),
        "{summary}"
    );
    assert!(summary.contains("5 live servers"), "{summary}");
    let all = run(&["status", "--admin", &admin_arg(0), "--admin", &admin_arg(2)]);
    assert_eq!(all.lines().count(), 3, "{all}");
    assert!(all.lines().skip(1).all(|l| l.contains(" ready ")), "{all}");

    // A record registered at server 1 is found at server 5 (real clients).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr_of = |i: usize| -> chatd::net::identity::ServerAddr {
        format!("{}@127.0.0.1:{}", c.servers[i].id, c.servers[i].quic)
            .parse()
            .unwrap()
    };
    let (first, fifth) = (addr_of(0), addr_of(4));
    rt.block_on(async {
        use chatd::client::Client;
        use chatd::net::identity::Keypair;
        let alice = Client::new(Keypair::generate(), "127.0.0.1:0".parse().unwrap()).unwrap();
        let s1 = alice.connect(first).await.unwrap();
        let seen = s1.who_am_i().await.unwrap();
        s1.register(alice.record(&s1, "alice", seen, 1, Duration::from_secs(60)))
            .await
            .unwrap();
        let bob = Client::new(Keypair::generate(), "127.0.0.1:0".parse().unwrap()).unwrap();
        let s5 = bob.connect(fifth).await.unwrap();
        let found = common::wait_for(
            Duration::from_secs(30),
            || async { s5.lookup_name("alice").await.unwrap() },
            Option::is_some,
        )
        .await;
        let r = found.expect("server 5 never learned the record registered at server 1");
        assert_eq!(r.body.peer, alice.id());
        assert_eq!(r.body.public_addr, Some(seen));
    });

    // SIGTERM: the server leaves the overlay and exits 0; the others drop it.
    let pid = c.servers[4].child.as_ref().expect("running").id();
    let sent = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(sent.success());
    let mut code = None;
    let exited = eventually_blocking(Duration::from_secs(30), || {
        code = c.servers[4]
            .child
            .as_mut()
            .and_then(|ch| ch.try_wait().ok().flatten());
        code.is_some()
    });
    assert!(exited, "server 5 did not exit within 30 s of SIGTERM");
    assert!(code.is_some_and(|c| c.success()), "exit status {code:?}");
    // It left for good, and the others say so.
    let gone = c.servers[4].id.clone();
    let left = eventually_blocking(Duration::from_secs(30), || {
        http_get(c.servers[0].admin, "/members").is_some_and(|(code, body)| {
            let doc: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            code == 200
                && doc["members"].as_array().is_some_and(|m| {
                    m.iter()
                        .any(|x| x["id"] == gone.as_str() && x["status"] == "left")
                })
        })
    });
    assert!(
        left,
        "server 1 never listed server 5 as left:\n{}",
        c.describe()
    );
    c.servers[4].child = None;
    c.wait_full_mesh(&[0, 1, 2, 3], Duration::from_secs(30));
}

#[test]
fn a_killed_server_is_dropped_and_rejoins_after_restart() {
    let mut c = Cluster::new("restart", 4);
    for i in 0..4 {
        c.start(i);
    }
    c.wait_full_mesh(&[0, 1, 2, 3], Duration::from_secs(30));

    // SIGKILL server 3: no goodbye, the others notice by QUIC idle timeout.
    c.kill(2);
    let gone = c.servers[2].id.clone();
    let dropped = eventually_blocking(Duration::from_secs(30), || {
        [0, 1, 3]
            .iter()
            .all(|&i| active(c.servers[i].admin).is_some_and(|a| !a.contains(&gone)))
    });
    assert!(
        dropped,
        "the others still list the killed server 3 after 30 s:\n{}",
        c.describe()
    );

    // Same data dir (same key), same ports: it joins again and the others
    // take it back.
    c.start(2);
    let rejoined = eventually_blocking(Duration::from_secs(30), || {
        active(c.servers[2].admin).is_some_and(|a| !a.is_empty())
            && [0, 1, 3]
                .iter()
                .all(|&i| active(c.servers[i].admin).is_some_and(|a| a.contains(&gone)))
    });
    assert!(
        rejoined,
        "restarted server 3 did not rejoin within 30 s:\n{}",
        c.describe()
    );
}

/// Deterministic pseudo-random bytes (xorshift64*).
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

#[test]
fn malformed_traffic_is_refused_and_the_server_keeps_serving() {
    let mut c = Cluster::new("garbage", 1);
    c.start(0);
    let (quic, admin) = (c.servers[0].quic, c.servers[0].admin);
    assert_eq!(http_get(admin, "/healthz").map(|r| r.0), Some(200));

    // QUIC port: random datagrams, and some that look like QUIC v1 Initial
    // packets (long header, version 1, connection ids) with a garbage body.
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let target = SocketAddr::from(([127, 0, 0, 1], quic));
    for k in 0..50u64 {
        let mut d = garbage(k + 1, 100 + (k as usize * 37) % 400);
        if k % 5 == 0 {
            d = garbage(k + 1000, 1200);
            d[0] = 0xC0 | (d[0] & 0x0F); // long header, Initial
            d[1..5].copy_from_slice(&1u32.to_be_bytes()); // QUIC v1
            d[5] = 8; // destination connection id length
            d[14] = 8; // source connection id length
        }
        udp.send_to(&d, target).expect("send datagram");
        std::thread::sleep(Duration::from_millis(2));
    }

    // Admin port: not HTTP, an oversized blob, and connections that never
    // send anything (held open while the server is checked below).
    let addr = SocketAddr::from(([127, 0, 0, 1], admin));
    let connect = || {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).expect("connect admin");
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
        s
    };
    for payload in [b"NOT HTTP\r\n\r\n".to_vec(), garbage(7, 10 * 1024)] {
        let mut s = connect();
        let _ = s.write_all(&payload); // may be cut off by the server: fine
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    let idle: Vec<TcpStream> = (0..10).map(|_| connect()).collect();

    let st = status(admin).expect("/status answers and parses after the garbage");
    assert_eq!(st["id"], c.servers[0].id.as_str());
    assert_eq!(http_get(admin, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(http_get(admin, "/readyz").map(|r| r.0), Some(200));
    drop(idle);
    let running = c.servers[0]
        .child
        .as_mut()
        .expect("started")
        .try_wait()
        .expect("try_wait");
    assert!(
        running.is_none(),
        "the server exited: {running:?}; log:\n{}",
        tail(&c.servers[0].dir.join("log"), 20)
    );
}

/// Everything one admin connection said until it closed (or 10 s passed).
fn exchange(port: u16, parts: &[&[u8]]) -> String {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_nodelay(true).ok();
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            // Not a wait for anything: the pause makes the next part a
            // separate segment, as a slow client's would be.
            std::thread::sleep(Duration::from_millis(50));
        }
        s.write_all(p).expect("write");
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
#[allow(clippy::print_stderr)] // the skip notice is for the person reading the test log
fn the_admin_endpoint_speaks_http_properly() {
    let mut c = Cluster::new("http", 1);
    c.start(0);
    let port = c.servers[0].admin;
    assert!(
        eventually_blocking(Duration::from_secs(30), || http_get(port, "/healthz")
            .is_some_and(|r| r.0 == 200)),
        "no /healthz:\n{}",
        c.describe()
    );
    // A request split across packets.
    let split = exchange(
        port,
        &[
            b"GET /heal",
            b"thz HTTP/1.1\r\nho",
            b"st: x\r\nconnection: close\r\n\r\n",
        ],
    );
    assert!(
        split.starts_with("HTTP/1.1 200") && split.ends_with("ok\n"),
        "{split}"
    );
    // A query string: the text form chatd status prints.
    let (code, body) = http_get(port, "/status?format=text").expect("answer");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.starts_with("server    ") && body.contains(&c.servers[0].id),
        "{body}"
    );
    let (code, body) = http_get(port, "/members?format=text").expect("answer");
    assert!(code == 200 && body.starts_with("ID "), "{body}");
    // Pipelined requests: both answered, in order.
    let both = exchange(
        port,
        &[b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\nGET /nothing HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"],
    );
    let first = both.find("HTTP/1.1 200").expect("first answered");
    let second = both.find("HTTP/1.1 404").expect("second answered");
    assert!(first < second, "{both}");
    // Methods: only GET and HEAD.
    let post = exchange(
        port,
        &[b"POST /status HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"],
    );
    assert!(
        post.starts_with("HTTP/1.1 405") && post.to_ascii_lowercase().contains("allow: get, head"),
        "{post}"
    );
    let head = exchange(
        port,
        &[b"HEAD /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"],
    );
    assert!(
        head.starts_with("HTTP/1.1 200") && !head.ends_with("ok\n"),
        "{head}"
    );
    // A client that never finishes its request head is closed.
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut slow = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .expect("write");
    slow.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let mut sink = Vec::new();
    let closed = slow.read_to_end(&mut sink);
    assert!(closed.is_ok(), "still open after 20 s: {closed:?}");
    // At most 64 connections at once: the 65th is closed unanswered, and
    // once they go, requests are answered again.
    let idle: Vec<TcpStream> = (0..64)
        .map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect"))
        .collect();
    let refused = exchange(
        port,
        &[b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"],
    );
    assert!(
        refused.is_empty(),
        "the 65th connection was served: {refused}"
    );
    drop(idle);
    assert!(
        eventually_blocking(Duration::from_secs(30), || http_get(port, "/healthz")
            .is_some_and(|r| r.0 == 200)),
        "not served again after the idle connections closed"
    );
    let (_, metrics) = http_get(port, "/metrics").expect("metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("chatd_admin_refused_total ") && !l.ends_with(" 0")),
        "the refusal is counted"
    );
    // /metrics: every family described, in the same order on every scrape,
    // with the build and start time; promtool finds nothing to say.
    let families = |m: &str| -> Vec<String> {
        m.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap_or("").to_string())
            .collect()
    };
    let (_, again) = http_get(port, "/metrics").expect("metrics");
    assert_eq!(
        families(&metrics),
        families(&again),
        "the order changed between scrapes"
    );
    let helped = metrics.lines().filter(|l| l.starts_with("# HELP ")).count();
    assert_eq!(
        helped,
        families(&metrics).len(),
        "a family without HELP:\n{metrics}"
    );
    assert!(metrics.contains("chatd_build_info{version=\""), "{metrics}");
    assert!(
        metrics.contains("chatd_process_start_time_seconds "),
        "{metrics}"
    );
    assert!(
        metrics.contains("chatd_sync_rounds_started_total 0"),
        "core counters registered at zero"
    );
    match procs::promtool() {
        Some(promtool) => {
            let mut child = Command::new(promtool)
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("run promtool");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(metrics.as_bytes())
                .expect("feed promtool");
            let out = child.wait_with_output().expect("promtool");
            assert!(
                out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        None => {
            eprintln!(
                "skipped promtool check metrics: no promtool on PATH (apt-get install prometheus)"
            )
        }
    }
}
