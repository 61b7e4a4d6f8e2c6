//! Load generator for `scripts/bench-cluster.sh`: against a running local
//! cluster (started by `scripts/cluster.sh up N --dir DIR`), it
//! 1. registers `--records` client records (each its own identity and QUIC
//!    connection) round-robin through every server;
//! 2. measures replication latency on a sample: time from a registration's
//!    answer until every server returns the record (polled over open
//!    connections every 2 ms), p50 and p99;
//! 3. measures lookups per second per server over one open connection with
//!    `--concurrency` requests in flight;
//! 4. reads each server's resident memory from /proc.
//!
//! Prints a table and, last, one JSON object. Loopback only.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a benchmark reports

mod common;

use anyhow::Context;
use chatd::client::{Client, Session};
use chatd::net::identity::{Keypair, ServerAddr};
use common::{percentile, rss_mb};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Server {
    addr: ServerAddr,
    pid: u32,
}

fn servers(dir: &Path) -> anyhow::Result<Vec<Server>> {
    let mut out = Vec::new();
    for k in 1.. {
        let d = dir.join(format!("s{k}"));
        if !d.exists() {
            break;
        }
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("out.json"))?)?;
        let addr: ServerAddr = json["addr"].as_str().context("addr")?.parse()?;
        let pid: u32 = std::fs::read_to_string(d.join("pid"))?.trim().parse()?;
        out.push(Server { addr, pid });
    }
    anyhow::ensure!(!out.is_empty(), "no servers in {}", dir.display());
    Ok(out)
}

async fn register_one(server: ServerAddr, name: String) -> anyhow::Result<(Client, Session)> {
    let client = Client::new(Keypair::generate(), "127.0.0.1:0".parse()?)?;
    let session = client.connect(server).await?;
    let addr = session.who_am_i().await?;
    let record = client.record(&session, &name, addr, 1, Duration::from_secs(3600));
    session.register(record).await?;
    Ok((client, session))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut dir = PathBuf::from("target/bench-cluster");
    let (mut records, mut sample, mut concurrency) = (10_000usize, 200usize, 64usize);
    while let Some(a) = args.next() {
        let v = args.next().context("flag needs a value")?;
        match a.as_str() {
            "--dir" => dir = v.into(),
            "--records" => records = v.parse()?,
            "--sample" => sample = v.parse()?,
            "--concurrency" => concurrency = v.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    let servers = servers(&dir)?;
    let n = servers.len();
    eprintln!("{n} servers; registering {records} records");

    // 1. Bulk registration, 32 at a time, round-robin over servers.
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for i in 0..records {
        let server = servers[i % n].addr;
        let permit = sem.clone().acquire_owned().await?;
        tasks.push(tokio::spawn(async move {
            let r = register_one(server, format!("bulk-{i}")).await;
            drop(permit);
            r.map(|_| ())
        }));
    }
    let mut failed = 0;
    for t in tasks {
        if !matches!(t.await, Ok(Ok(()))) {
            failed += 1;
        }
    }
    let reg_secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "registered {} in {reg_secs:.1} s ({failed} failed)",
        records - failed
    );

    // 2. Replication latency on a sample, polled at every server.
    let probe = Client::new(Keypair::generate(), "127.0.0.1:0".parse()?)?;
    let mut sessions = Vec::new();
    for s in &servers {
        sessions.push(Arc::new(probe.connect(s.addr).await?));
    }
    let mut latencies = Vec::new();
    for i in 0..sample {
        let home = servers[i % n].addr;
        let name = format!("sample-{i}");
        let (client, _keep) = register_one(home, name).await?;
        let start = Instant::now();
        let id = client.id();
        let mut pending: Vec<usize> = (0..n).collect();
        let deadline = start + Duration::from_secs(10);
        while !pending.is_empty() && Instant::now() < deadline {
            let mut still = Vec::new();
            for k in pending {
                if sessions[k].lookup(id).await?.is_none() {
                    still.push(k);
                }
            }
            pending = still;
            if !pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        if pending.is_empty() {
            latencies.push(start.elapsed().as_secs_f64() * 1000.0);
        }
    }
    latencies.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));

    // 3. Lookups per second per server, `concurrency` in flight for 2 s.
    let target = probe.id();
    let mut rates = Vec::new();
    for session in &sessions {
        let stop = Instant::now() + Duration::from_secs(2);
        let mut workers = Vec::new();
        for _ in 0..concurrency {
            let s = session.clone();
            workers.push(tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < stop {
                    if s.lookup(target).await.is_ok() {
                        done += 1;
                    }
                }
                done
            }));
        }
        let mut total = 0;
        for w in workers {
            total += w.await.unwrap_or(0);
        }
        rates.push(total as f64 / 2.0);
    }

    // 4. Memory.
    let rss: Vec<f64> = servers.iter().filter_map(|s| rss_mb(s.pid)).collect();
    let max_rss = rss.iter().copied().fold(0.0, f64::max);
    let min_rate = rates.iter().copied().fold(f64::INFINITY, f64::min);
    let mean_rate = rates.iter().sum::<f64>() / rates.len().max(1) as f64;

    println!(
        "| servers | records | register s | replication p50 ms | p99 ms | lookups/s per server (min / mean) | RSS per server MB (max) |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {n} | {} | {reg_secs:.1} | {p50:.1} | {p99:.1} | {min_rate:.0} / {mean_rate:.0} | {max_rss:.1} |",
        records - failed
    );
    println!(
        "{}",
        serde_json::json!({
            "servers": n, "records": records - failed, "failed": failed,
            "register_secs": reg_secs,
            "replication_p50_ms": p50, "replication_p99_ms": p99, "replication_samples": latencies.len(),
            "lookups_per_sec_min": min_rate, "lookups_per_sec_mean": mean_rate,
            "rss_mb_max": max_rss, "rss_mb": rss,
        })
    );
    Ok(())
}
