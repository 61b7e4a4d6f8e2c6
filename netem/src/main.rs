//! `chatd-netem`: emulated latency, jitter and loss on a network
//! namespace's egress (see the crate documentation for how it works).
#![allow(clippy::print_stdout, clippy::print_stderr)] // a CLI reports on stdout/stderr

use anyhow::{Context, Result, bail};
use clap::Parser;
use netem::{Limits, Prefix, Rule, Rules, Shaper, parse_to};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::process::{Command, ExitCode};
use std::sync::mpsc::{RecvTimeoutError, sync_channel};
use std::time::{Duration, Instant};

/// Delays, jitters and drops every IP packet this network namespace sends,
/// as real links would, for chatd's labs and tests (this kernel has no
/// `tc netem`). Run it inside a namespace the lab created:
///
///   ip netns exec nl-host-a chatd-netem --src 10.200.1.10 --delay 20~2 --to 10.200.0.11=5 --to 10.200.0.12=50/1%
///
/// It creates the TUN device `--dev`, routes the namespace's own packets
/// through it (policy rule `iif lo lookup TABLE`, `default dev DEV src
/// SRC` in TABLE; ip_forward=1, accept_local=1 and rp_filter=0 on DEV) and
/// writes each packet back after its delay, from where the kernel sends it
/// on its normal route. Addresses, ports and NAT mappings are unchanged.
/// Only egress is delayed: give each end of a path its share (a path's RTT
/// is the sum of both ends' delays towards each other). Packets to one
/// destination keep their order. Loopback traffic is not touched.
///
/// Runs only inside an `ip netns` namespace named nl-* (the labs' own).
/// Stops by itself after --max-secs; prints its counters as one JSON line
/// on stdout at the end (and every --report-secs).
#[derive(Parser, Debug)]
#[command(name = "chatd-netem", version)]
struct Args {
    /// This namespace's own address: the source of the packets it sends
    /// (its interface towards the lab network).
    #[arg(long, value_name = "IPV4")]
    src: Ipv4Addr,
    /// Default rule, for destinations no --to covers:
    /// DELAY[~JITTER][/LOSS%] in milliseconds and percent, e.g. 20, 20~5,
    /// 40~10/2%, 0/10%.
    #[arg(long, value_name = "RULE", default_value = "0")]
    delay: Rule,
    /// A rule for one prefix: PREFIX=RULE, e.g. 10.200.0.11=5 or
    /// 10.200.2.0/24=30~3/1%. Repeatable; the longest prefix wins.
    #[arg(long = "to", value_name = "PREFIX=RULE", value_parser = parse_to)]
    to: Vec<(Prefix, Rule)>,
    /// Name of the TUN device to create.
    #[arg(long, value_name = "NAME", default_value = "nlem0")]
    dev: String,
    /// Routing table for the namespace's own packets.
    #[arg(long, value_name = "ID", default_value_t = 100)]
    table: u32,
    /// Seed for jitter and loss (same seed and packets: same schedule).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop after this many seconds (every lab process stops by itself).
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    max_secs: u64,
    /// Print the counters every this many seconds (0: only at the end).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    report_secs: u64,
    /// Packets held at once; more are dropped and counted (`overflow`).
    #[arg(long, value_name = "N", default_value_t = Limits::default().packets)]
    queue_packets: usize,
    /// Bytes held at once; more are dropped and counted (`overflow`).
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().bytes)]
    queue_bytes: usize,
    /// Run in any network namespace. Without it, chatd-netem runs only
    /// inside a lab namespace named nl-* (`ip netns identify`): it
    /// reroutes every packet of the namespace it runs in.
    #[arg(long)]
    any_namespace: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatd-netem: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (Debian's iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sysctl(path: &str, value: &str) -> Result<()> {
    std::fs::write(format!("/proc/sys/net/ipv4/{path}"), value)
        .with_context(|| format!("setting net.ipv4.{} = {value}", path.replace('/', ".")))
}

/// The name of the `ip netns` namespace this process is in, if any.
fn namespace_name() -> Option<String> {
    let name = ip(&["netns", "identify"]).ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

fn stats_line(s: &Shaper, elapsed: Duration) -> String {
    let st = s.stats();
    format!(
        "{{\"secs\":{:.1},\"received\":{},\"sent\":{},\"sent_bytes\":{},\"lost\":{},\"overflow\":{},\"invalid\":{},\"held\":{}}}",
        elapsed.as_secs_f64(),
        st.received,
        st.sent,
        st.sent_bytes,
        st.lost,
        st.overflow,
        st.invalid,
        s.held()
    )
}

fn run(a: &Args) -> Result<()> {
    if !a.any_namespace {
        match namespace_name() {
            Some(n) if n.starts_with("nl-") => {}
            other => bail!(
                "not inside a lab namespace (nl-*, made with `ip netns add`; this one: {}): \
                 chatd-netem reroutes every packet of the namespace it runs in, so it runs \
                 only as `ip netns exec nl-... chatd-netem ...` (or pass --any-namespace)",
                other
                    .as_deref()
                    .unwrap_or("unnamed, maybe the machine's own")
            ),
        }
    }
    let mut config = tun::Configuration::default();
    config.tun_name(&a.dev).up();
    let dev = tun::create(&config).with_context(|| format!("creating the TUN device {}", a.dev))?;
    let table = a.table.to_string();
    let src = a.src.to_string();
    ip(&[
        "route", "replace", "default", "dev", &a.dev, "table", &table, "src", &src,
    ])?;
    let rules = ip(&["rule", "show"])?;
    if !rules.contains(&format!("iif lo lookup {table}")) {
        ip(&["rule", "add", "iif", "lo", "lookup", &table, "pref", "100"])?;
    }
    sysctl("ip_forward", "1")?;
    sysctl(&format!("conf/{}/accept_local", a.dev), "1")?;
    sysctl(&format!("conf/{}/rp_filter", a.dev), "0")?;
    sysctl("conf/all/rp_filter", "0")?;

    let rules = Rules {
        default: a.delay,
        to: a.to.clone(),
    };
    eprintln!(
        "chatd-netem: {} up, egress from {}: default {:?}, {} prefix rule(s); stops after {} s",
        a.dev,
        a.src,
        rules.default,
        rules.to.len(),
        a.max_secs
    );
    let mut shaper = Shaper::new(
        rules,
        Limits {
            packets: a.queue_packets,
            bytes: a.queue_bytes,
        },
        a.seed,
    );
    let (mut reader, mut writer) = dev.split();
    let (tx, rx) = sync_channel::<Vec<u8>>(4_096);
    std::thread::Builder::new()
        .name("tun-reader".into())
        .spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while let Ok(n) = reader.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        })
        .context("starting the reader thread")?;

    let start = Instant::now();
    let end = Duration::from_secs(a.max_secs);
    let report = Duration::from_secs(a.report_secs);
    let mut next_report = report;
    loop {
        let now = start.elapsed();
        if now >= end {
            break;
        }
        let mut wake = end;
        if let Some(t) = shaper.next_release() {
            wake = wake.min(t);
        }
        if !report.is_zero() {
            wake = wake.min(next_report);
        }
        match rx.recv_timeout(wake.saturating_sub(now)) {
            Ok(p) => {
                shaper.push(start.elapsed(), p);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => bail!("the TUN device was closed"),
        }
        let now = start.elapsed();
        while let Some(p) = shaper.pop_due(now) {
            // A write the kernel refuses (no route any more) is that
            // packet lost, as on a real link: keep going.
            let _ = writer.write(&p);
        }
        if !report.is_zero() && now >= next_report {
            next_report += report;
            println!("{}", stats_line(&shaper, now));
        }
    }
    let _ = ip(&["rule", "del", "iif", "lo", "lookup", &table]);
    println!("{}", stats_line(&shaper, start.elapsed()));
    Ok(())
}
