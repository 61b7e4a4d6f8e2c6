//! The admin HTTP endpoint: `/metrics` (Prometheus text), `/healthz`
//! (the process is serving), `/readyz` (joined the overlay, or alone by
//! configuration), `/status` (a JSON summary for `chatd status`) and
//! `/members` (every server known, for `chatd members`).
//!
//! A deliberately small HTTP/1.1 responder: one request per connection,
//! bounded request size and time. Must not change node state.

use crate::net::driver::{Node, Snapshot};
use crate::net::identity::Id;
use crate::server::Server;
use metrics_exporter_prometheus::PrometheusHandle;
use rendezvous::{Liveness, ServerRecord};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// When this process began serving (its uptime counts from here).
static STARTED: OnceLock<Instant> = OnceLock::new();

/// Installs the global Prometheus recorder (once per process).
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    Ok(metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?)
}

/// Serves the admin endpoint on `addr` until the task is dropped. Returns
/// the bound address (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    node: Arc<Node>,
    members: Arc<Server>,
    metrics: PrometheusHandle,
    alone_by_config: bool,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener =
        TcpListener::bind(addr)
            .await
            .map_err(|error| crate::net::driver::BindError {
                socket: "admin HTTP",
                proto: "TCP",
                addr,
                flag: "--admin",
                error,
            })?;
    let bound = listener.local_addr()?;
    STARTED.get_or_init(Instant::now);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                // Out of file descriptors or similar: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let node = node.clone();
            let members = members.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n =
                    match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await {
                        Ok(Ok(n)) => n,
                        _ => return,
                    };
                let request = String::from_utf8_lossy(&buf[..n]);
                let path = request.split_whitespace().nth(1).unwrap_or("/");
                let (status, ctype, body) =
                    respond(path, &node, &members, &metrics, alone_by_config).await;
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let write = async {
                    sock.write_all(head.as_bytes()).await?;
                    sock.write_all(body.as_bytes()).await?;
                    sock.shutdown().await
                };
                let _ = tokio::time::timeout(Duration::from_secs(5), write).await;
            });
        }
    });
    Ok((bound, task))
}

async fn respond(
    path: &str,
    node: &Node,
    members: &Server,
    metrics: &PrometheusHandle,
    alone_by_config: bool,
) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    match path {
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
        "/healthz" => ("200 OK", TEXT, "ok\n".into()),
        "/members" => {
            let status = members.status();
            let mut all = status.members;
            // The table holds the others; the live list starts with us.
            if !all.iter().any(|(r, _)| r.id == members.id())
                && let Some(me) = status.servers.iter().find(|r| r.id == members.id())
            {
                all.push((me.clone(), Liveness::Alive));
            }
            (
                "200 OK",
                "application/json",
                members_json(members.id(), &all),
            )
        }
        "/readyz" | "/status" => {
            let Ok(snap) = node.snapshot().await else {
                return ("503 Service Unavailable", TEXT, "node stopped\n".into());
            };
            let ready = alone_by_config || !snap.active.is_empty();
            if path == "/status" {
                (
                    "200 OK",
                    "application/json",
                    status_json(&snap, ready, &members.status()),
                )
            } else if ready {
                ("200 OK", TEXT, "ready\n".into())
            } else {
                (
                    "503 Service Unavailable",
                    TEXT,
                    "not joined to the overlay yet\n".into(),
                )
            }
        }
        _ => (
            "404 Not Found",
            TEXT,
            "try /metrics, /healthz, /readyz, /status or /members\n".into(),
        ),
    }
}

/// The `/status` document.
#[derive(serde::Serialize)]
struct Status {
    id: String,
    ready: bool,
    /// `chatd --version`'s version and commit.
    version: &'static str,
    commit: &'static str,
    uptime_s: u64,
    active: Vec<String>,
    passive: usize,
    links: usize,
    payloads_delivered: u64,
    dropped_frames: u64,
    /// Live servers this server knows, itself first.
    servers: Vec<String>,
    clients: usize,
    connections: usize,
    records: usize,
    unexpired: usize,
    relay_sessions: usize,
}

fn status_json(s: &Snapshot, ready: bool, core: &crate::server::Status) -> String {
    let status = Status {
        id: Id(s.id).to_string(),
        ready,
        version: env!("CARGO_PKG_VERSION"),
        commit: env!("CHATD_COMMIT"),
        uptime_s: STARTED.get().map_or(0, |t| t.elapsed().as_secs()),
        active: s.active.iter().map(|p| Id(*p).to_string()).collect(),
        passive: s.passive,
        links: s.links,
        payloads_delivered: s.stats.payloads_delivered,
        dropped_frames: s.dropped_frames,
        servers: core.servers.iter().map(|r| Id(r.id).to_string()).collect(),
        clients: core.clients,
        connections: core.connections,
        records: core.records,
        unexpired: core.unexpired,
        relay_sessions: core.relay_sessions,
    };
    serde_json::to_string(&status).unwrap_or_default() + "\n"
}

/// One server in the `/members` document.
#[derive(serde::Serialize)]
struct Member {
    id: String,
    /// Where it is dialed (its first address), if it announced one.
    addr: Option<String>,
    /// alive, suspect, failed or left.
    status: &'static str,
    clients: u32,
    capacity: u32,
    /// clients / capacity.
    load: f64,
    /// Whether it is the server answering.
    this: bool,
}

/// Every server this one knows: itself first, then the live ones, then the
/// rest, each group by id.
fn members_json(me: overlay::PeerId, members: &[(ServerRecord, Liveness)]) -> String {
    let rank = |(r, l): &&(ServerRecord, Liveness)| {
        let group = match l {
            _ if r.id == me => 0,
            Liveness::Alive => 1,
            Liveness::Suspect(_) => 2,
            Liveness::Dead => 3,
            Liveness::Left => 4,
        };
        (group, r.id)
    };
    let mut sorted: Vec<&(ServerRecord, Liveness)> = members.iter().collect();
    sorted.sort_by_key(rank);
    let list: Vec<Member> = sorted
        .into_iter()
        .map(|(r, l)| Member {
            id: Id(r.id).to_string(),
            addr: r.addrs.first().map(|a| a.to_string()),
            status: match l {
                Liveness::Alive => "alive",
                Liveness::Suspect(_) => "suspect",
                Liveness::Dead => "failed",
                Liveness::Left => "left",
            },
            clients: r.clients,
            capacity: r.capacity,
            load: r.load(),
            this: r.id == me,
        })
        .collect();
    serde_json::json!({ "members": list }).to_string() + "\n"
}
