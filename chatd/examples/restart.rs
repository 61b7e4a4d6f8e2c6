//! A server restarted next to a big table (issue 11): how long until it
//! holds every record again, over real QUIC on loopback.
//!
//! ```text
//! cargo run --release -p chatd --example restart -- [--records N] [--concurrency C]
//! ```
//!
//! Two servers A and B in this process (the real driver and core, quotas
//! per address lifted: every client here dials from 127.0.0.1). N clients
//! (default 100,000), each its own identity, connect to A, register live
//! (acknowledged once B stored it) and leave, so A and B each hold N
//! records (the clients' withdrawals, kept for an hour as tombstones). Then
//! B is killed (no goodbye) and a fresh B with the same key but an empty
//! table starts next to A; anti-entropy (paged digests, versions, records)
//! must bring it every record. Prints one JSON line: records, how long the
//! fill took, and `restart_to_all_s` (fresh B started → it holds as many
//! records as A and every client's record at A's sequence number).
//! Every wait is bounded.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a benchmark reports

use anyhow::Context;
use chatd::net::driver::{Node, NodeConfig};
use chatd::net::identity::Keypair;
use chatd::server::Server;
use overlay::PeerId;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

fn core() -> rendezvous::Config {
    rendezvous::Config {
        capacity: 1_000_000,
        per_ip_connections: 1_000_000,
        per_ip_records: 1_000_000,
        per_peer_connections: 1_000_000,
        max_anonymous: 1_000_000,
        new_ids_per_min: 1e12,
        ip_rate: (1e9, 1e9),
        broadcast_rate: (1e9, 1e9),
        ..rendezvous::Config::default()
    }
}

async fn start(
    key: &Keypair,
    bootstrap: Vec<chatd::net::identity::ServerAddr>,
) -> anyhow::Result<(Arc<Node>, Server)> {
    let mut c = NodeConfig::new("127.0.0.1:0".parse()?);
    c.overlay = overlay::Config::local();
    c.bootstrap = bootstrap;
    c.handshakes = (1e9, 1e9);
    c.handshakes_per_ip = (1e9, 1e9);
    let node = Arc::new(Node::start(key, c).await?);
    let server = Server::start(node.clone(), key.signing_key().clone(), core());
    Ok((node, server))
}

/// Waits (bounded) until `ok()`; returns whether it held.
async fn until(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ok()
}

fn client_key(i: u32) -> Keypair {
    let mut seed = [9u8; 32];
    seed[..4].copy_from_slice(&i.to_le_bytes());
    Keypair::from_seed(seed)
}

fn arg(args: &[String], flag: &str, default: u32) -> anyhow::Result<u32> {
    match args.iter().position(|a| a == flag) {
        Some(i) => args
            .get(i + 1)
            .with_context(|| format!("{flag} needs a number"))?
            .parse()
            .with_context(|| format!("{flag}: not a number")),
        None => Ok(default),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("restart [--records N (100000)] [--concurrency C (64)]: see the source's doc");
        return Ok(());
    }
    let n = arg(&args, "--records", 100_000)?;
    let concurrency = arg(&args, "--concurrency", 64)? as usize;
    let (ka, kb) = (Keypair::from_seed([201; 32]), Keypair::from_seed([202; 32]));
    let (node_a, a) = start(&ka, Vec::new()).await?;
    let (node_b, b) = start(&kb, vec![node_a.addr()]).await?;
    anyhow::ensure!(
        until(Duration::from_secs(30), || a.servers().len() == 2
            && b.servers().len() == 2)
        .await,
        "the two servers did not see each other within 30 s"
    );
    // Fill: N clients register at A and leave.
    let home = node_a.addr();
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (next, failed) = (next.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n as usize {
                    return;
                }
                let ok = async {
                    let client =
                        chatd::client::Client::new(client_key(i as u32), "127.0.0.1:0".parse()?)?;
                    let session =
                        tokio::time::timeout(Duration::from_secs(10), client.connect(home))
                            .await??;
                    let seen = session.who_am_i().await?;
                    let record = client.record(
                        &session,
                        &format!("r{i}"),
                        seen,
                        1,
                        Duration::from_secs(2_400),
                    );
                    session.register(record).await?;
                    session.close();
                    anyhow::Ok(())
                }
                .await;
                if let Err(e) = ok
                    && failed.fetch_add(1, Ordering::Relaxed) < 3
                {
                    eprintln!("restart: registration {i} failed: {e:#}");
                }
                if i > 0 && i % 10_000 == 0 {
                    eprintln!(
                        "restart: {i} registered, {:.0} s",
                        started.elapsed().as_secs_f64()
                    );
                }
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    let failed = failed.load(Ordering::Relaxed);
    anyhow::ensure!(
        failed * 100 <= n as usize,
        "{failed} of {n} registrations failed (see the first errors above)"
    );
    let want = n as usize - failed;
    // Withdrawals of the last ones may still be on their way.
    let filled = until(Duration::from_secs(120), || {
        a.status().records >= want && b.status().records >= want
    })
    .await;
    let fill_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        filled,
        "A and B did not both reach {want} records within 120 s of the fill"
    );
    eprintln!(
        "restart: filled {want} records ({failed} registrations failed) in {fill_s:.1} s; killing B"
    );
    // Kill B; a fresh B (same key, empty table) starts next to A.
    b.kill();
    node_b.kill();
    drop(b);
    let records_a = a.status().records;
    let t0 = Instant::now();
    let (node_b2, b2) = start(&kb, vec![node_a.addr()]).await?;
    let mut all = until(Duration::from_secs(120), || {
        b2.status().records >= records_a
    })
    .await;
    let count_s = t0.elapsed().as_secs_f64();
    // Same records: every client's at A's sequence number.
    let ids: Vec<PeerId> = (0..n).map(|i| client_key(i).id().0).collect();
    let mut differing = 0usize;
    for chunk in ids.chunks(10_000) {
        let (sa, sb) = (a.held(chunk.to_vec()).await, b2.held(chunk.to_vec()).await);
        differing += sa.iter().zip(&sb).filter(|(x, y)| x != y).count();
    }
    all &= differing == 0;
    let restart_s = t0.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "records": records_a,
            "registrations_failed": failed,
            "fill_s": (fill_s * 10.0).round() / 10.0,
            "restart_to_count_s": (count_s * 100.0).round() / 100.0,
            "restart_to_all_s": (restart_s * 100.0).round() / 100.0,
            "all": all,
            "differing": differing,
        })
    );
    node_b2.shutdown(Duration::from_secs(1)).await;
    node_a.shutdown(Duration::from_secs(1)).await;
    anyhow::ensure!(
        all,
        "the restarted server did not get every record within 120 s"
    );
    Ok(())
}
