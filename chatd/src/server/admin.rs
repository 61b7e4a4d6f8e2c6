//! The admin HTTP endpoint: `/metrics` (Prometheus text), `/healthz`
//! (the process is serving), `/readyz` (joined the overlay, or alone by
//! configuration), `/status` (a JSON summary for `chatd status`) and
//! `/members` (every server known, for `chatd members`).
//!
//! HTTP/1.1 by hyper, with at most 64 connections at once, a 5 s limit on
//! a request's head and 60 s on a connection. Must not change node state.
//! Anyone who can reach it can hold the 64 slots by reconnecting: bind it
//! to loopback or a management network (the default is 127.0.0.1:9100).

use crate::net::driver::{Node, Snapshot};
use crate::net::identity::Id;
use crate::server::Server;
use crate::server::report;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use rendezvous::{Liveness, ServerRecord};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// When this process began serving (its uptime counts from here).
static STARTED: OnceLock<Instant> = OnceLock::new();

/// Installs the global Prometheus recorder (once per process).
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    Ok(metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?)
}

/// Admin connections served at once; more are closed as they arrive (and
/// counted in `chatd_admin_refused_total`).
const MAX_CONNECTIONS: usize = 64;
/// A request's head must arrive within this (a slow client is closed).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection, keep-alive included, is closed after this.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// The most a request head may take in the buffer.
const MAX_HEAD: usize = 16 * 1024;

/// Serves the admin endpoint on `addr` until the task is dropped. Returns
/// the bound address (useful with port 0). HTTP/1.1 by hyper: requests
/// split across packets, pipelined or kept alive, `GET` and `HEAD`, query
/// strings (`?format=text` on `/status` and `/members` gives what
/// `chatd status` / `chatd members` print).
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
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                // Out of file descriptors or similar: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                metrics::counter!("chatd_admin_refused_total").increment(1);
                continue; // dropping `sock` closes it
            };
            let (node, members, metrics) = (node.clone(), members.clone(), metrics.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let (node, members, metrics) = (node.clone(), members.clone(), metrics.clone());
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            answer(&req, &node, &members, &metrics, alone_by_config).await,
                        )
                    }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .max_buf_size(MAX_HEAD)
                    .serve_connection(TokioIo::new(sock), service);
                let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
                drop(permit);
            });
        }
    });
    Ok((bound, task))
}

/// One request's response.
async fn answer(
    req: &Request<Incoming>,
    node: &Node,
    members: &Server,
    metrics: &PrometheusHandle,
    alone_by_config: bool,
) -> Response<Full<Bytes>> {
    let reply = |code: StatusCode, ctype: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = code;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(ctype),
        );
        r
    };
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "the admin endpoint answers GET and HEAD only\n".into(),
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let text = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "format=text"));
    let (code, ctype, body) = respond(
        req.uri().path(),
        text,
        node,
        members,
        metrics,
        alone_by_config,
    )
    .await;
    reply(code, ctype, body)
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

async fn respond(
    path: &str,
    text: bool,
    node: &Node,
    members: &Server,
    metrics: &PrometheusHandle,
    alone_by_config: bool,
) -> (StatusCode, &'static str, String) {
    match path {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            sorted_families(&metrics.render()),
        ),
        "/healthz" => (StatusCode::OK, TEXT, "ok\n".into()),
        "/members" => {
            let status = members.status();
            let mut all = status.members;
            // The table holds the others; the live list starts with us.
            if !all.iter().any(|(r, _)| r.id == members.id())
                && let Some(me) = status.servers.iter().find(|r| r.id == members.id())
            {
                all.push((me.clone(), Liveness::Alive));
            }
            as_asked(text, &members_doc(members.id(), &all), report::members_table)
        }
        "/readyz" | "/status" => {
            let Ok(snap) = node.snapshot().await else {
                return (StatusCode::SERVICE_UNAVAILABLE, TEXT, "node stopped\n".into());
            };
            let ready = alone_by_config || !snap.active.is_empty();
            if path == "/status" {
                as_asked(text, &status_doc(&snap, ready, &members.status()), report::status_text)
            } else if ready {
                (StatusCode::OK, TEXT, "ready\n".into())
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    "not joined to the overlay yet\n".into(),
                )
            }
        }
        _ => (
            StatusCode::NOT_FOUND,
            TEXT,
            "try /metrics, /healthz, /readyz, /status or /members (?format=text for the last two)\n"
                .into(),
        ),
    }
}

/// A document as JSON, or with `text` as what the CLI prints (`human`).
fn as_asked<T: serde::Serialize>(
    text: bool,
    doc: &T,
    human: fn(&serde_json::Value) -> String,
) -> (StatusCode, &'static str, String) {
    if text {
        let v = serde_json::to_value(doc).unwrap_or_default();
        (StatusCode::OK, TEXT, human(&v))
    } else {
        (
            StatusCode::OK,
            JSON,
            serde_json::to_string(doc).unwrap_or_default() + "\n",
        )
    }
}

/// The exposition text with its metric families (blocks separated by a
/// blank line; the exporter escapes newlines inside HELP and labels) in
/// name order, and a counter's or gauge's samples in label order: the
/// exporter renders both in hash order, different on every scrape.
/// (Histogram and summary samples keep their order: `le` is numeric.)
fn sorted_families(text: &str) -> String {
    let kind = |block: &str| -> (String, String) {
        let mut t = block
            .lines()
            .find_map(|l| l.strip_prefix("# TYPE "))
            .unwrap_or("")
            .split(' ');
        let name = t.next().unwrap_or("").to_string();
        (name, t.next().unwrap_or("").to_string())
    };
    let mut blocks: Vec<(String, String, &str)> = text
        .split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|b| {
            let (name, ty) = kind(b);
            (name, ty, b)
        })
        .collect();
    blocks.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::new();
    for (_, ty, block) in blocks {
        let (mut head, mut samples): (Vec<&str>, Vec<&str>) =
            block.lines().partition(|l| l.starts_with('#'));
        if ty == "counter" || ty == "gauge" {
            samples.sort_unstable();
        }
        head.append(&mut samples);
        out.push_str(&head.join("\n"));
        out.push_str("\n\n");
    }
    out.pop();
    out
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

/// The `/status` document of this node and its core.
fn status_doc(s: &Snapshot, ready: bool, core: &crate::server::Status) -> Status {
    Status {
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
    }
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
fn members_doc(me: overlay::PeerId, members: &[(ServerRecord, Liveness)]) -> serde_json::Value {
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
    serde_json::json!({ "members": list })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_families_come_out_in_name_order() {
        let text = "# HELP b_total B.\n# TYPE b_total counter\nb_total 1\n\n\
                    # TYPE a gauge\na{x=\"2\"} 3\na{x=\"1\"} 2\n\n\
                    # TYPE a_b histogram\na_b_bucket{le=\"5\"} 1\na_b_bucket{le=\"10\"} 2\na_b_sum 3\na_b_count 2\n\n";
        assert_eq!(
            sorted_families(text),
            "# TYPE a gauge\na{x=\"1\"} 2\na{x=\"2\"} 3\n\n\
             # TYPE a_b histogram\na_b_bucket{le=\"5\"} 1\na_b_bucket{le=\"10\"} 2\na_b_sum 3\na_b_count 2\n\n\
             # HELP b_total B.\n# TYPE b_total counter\nb_total 1\n"
        );
    }
}
