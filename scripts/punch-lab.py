#!/usr/bin/env python3
"""Hole punching in the NAT lab (issue 6): two real `chatd serve` (nl-srv1,
nl-srv2) and two `chatd chat` clients behind NAT routers, for every pair of
NAT modes, the same-LAN case, and optionally under loss.

alice runs in nl-host-a behind NAT a, homed on srv1; bob runs in nl-host-b
behind NAT b, homed on srv2 (so the rendezvous crosses servers); each also
knows the other server, which is how a client measures its NAT's mapping.
In the LAN case bob runs in nl-host-a2, behind the same (symmetric) NAT as
alice. Each side sends LINES lines and closes stdin once its path is final
(a chat starts on the relay when that is ready first, and moves to a
direct path when one comes up); a run passes
when both exit 0 and each received the other's lines exactly once, in order.

Time to connect = first message delivered (either side) minus the later of
the two registrations, from timestamps taken as the lines were printed.

    sudo scripts/punch-lab.py --check              # the CI assertion (see below)
    sudo scripts/punch-lab.py --runs 20            # benchmark table
    sudo scripts/punch-lab.py --runs 3 --loss 5 --cases port-restricted/symmetric

--check: all 10 pairs, the LAN case and a path break (12 s of 100% loss in
the middle of a chat: both sides re-establish, nothing lost or duplicated)
at 0% loss, then all 10 pairs at 5% loss; every run must pass, direct for
every pair except symmetric x symmetric, relayed there; exit 1 otherwise.
A run that delivers everything on another path is run once more (its
timeline on stderr, the case named on stdout): punching under loss and
the birthday method are chances, not certainties; twice is a failure.

Needs root (network namespaces), python3; brings the lab up and down itself
(scripts/natlab.sh) and stops exactly the processes it started, by PID.
Only 10.200.0.0/16 inside its own nl-* namespaces.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import labproc  # noqa: E402 (the lab scripts' shared helpers, beside this file)
from natlabproc import NATLAB, Servers, chatd_binary, lab_up, natlab  # noqa: E402 (the NAT lab's two servers)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ["full-cone", "addr-restricted", "port-restricted", "symmetric"]
RUN_TIMEOUT = 45.0
SETTLE_TIMEOUT = 12.0
SETTLED = re.compile(r"connected direct|upgraded to direct|the chat stays relayed")


def chat_pair(binary, servers, ns_a, ns_b, tag, lines, break_path=None):
    """Runs alice (ns_a, srv1) and bob (ns_b, srv2); returns a result dict.

    break_path=LOSS: once bob has alice's first half, both routers drop
    everything for 12 s (longer than the 10 s idle timeout, so the path and
    the server connections break), then loss goes back to LOSS and alice
    sends her second half; both keep stdin open until then."""
    names = {"a": f"alice-{tag}", "b": f"bob-{tag}"}
    sent = {k: [f"{names[k]} says {i}" for i in range(lines)] for k in "ab"}
    procs, outs, errs, threads, data_dirs = {}, {}, {}, [], []
    for k, ns, friend, home, other in (("a", ns_a, names["b"], "srv1", "srv2"),
                                       ("b", ns_b, names["a"], "srv2", "srv1")):
        # Each client its own data dir (a fresh key, no known friends):
        # runs never share or pin keys.
        data_dir = tempfile.mkdtemp(prefix=f"punch-lab-{names[k]}.")
        data_dirs.append(data_dir)
        # PUNCH_LAB_LOG=FILTER: the clients' RUST_LOG (with --timeline, to
        # see a slow run's debug lines in order).
        log = [f"RUST_LOG={os.environ['PUNCH_LAB_LOG']}"] if os.environ.get("PUNCH_LAB_LOG") else []
        args = ["ip", "netns", "exec", ns, "env", "RUST_BACKTRACE=0", "NO_COLOR=1", *log,
                binary, "chat", "--name", names[k], "--to", friend,
                "--data-dir", data_dir,
                "--server", servers.addrs[home], "--server", servers.addrs[other],
                "--wait", "20"]
        procs[k], outs[k], errs[k], readers = labproc.spawn_read(args)
        threads += readers
    def write(k, part):
        procs[k].stdin.write("".join(line + "\n" for line in part).encode())
        procs[k].stdin.flush()

    def settle(times):
        # A chat starts on whichever path is ready first (the relay, often)
        # and moves to a direct one when it comes up: stdin stays open until
        # both sides' path is final `times` times (direct, or the direct
        # attempt given up), so the path a run reports is the one it would
        # keep. Bounded.
        until = time.monotonic() + SETTLE_TIMEOUT
        while time.monotonic() < until:
            if all(sum(1 for _, l in errs[k] if SETTLED.search(l)) >= times for k in "ab"):
                return
            time.sleep(0.05)

    if break_path is None:
        for k in "ab":
            write(k, sent[k])
        settle(1)
        for k in "ab":
            procs[k].stdin.close()
    else:
        half = lines // 2
        write("a", sent["a"][:half])
        write("b", sent["b"])
        until = time.monotonic() + 20
        while len(outs["b"]) < half and time.monotonic() < until:
            time.sleep(0.05)
        natlab("loss", "100")
        time.sleep(12)
        natlab("loss", str(break_path))
        write("a", sent["a"][half:])
        settle(2)
        for k in "ab":
            procs[k].stdin.close()
    labproc.wait_all(procs.values(), RUN_TIMEOUT)
    for t in threads:
        t.join(timeout=5)
    got = {k: [line for _, line in outs[k]] for k in "ab"}
    ok = all(p.returncode == 0 for p in procs.values()) and \
        got["a"] == sent["b"] and got["b"] == sent["a"]
    # The path the chat ended on: the first connected, or what it was
    # upgraded to (a chat starts on the relay when that is ready first).
    path = "-"
    for _, line in errs["a"]:
        m = re.search(r"(?:connected|upgraded to) (direct \((LAN|WAN)\)|relayed)", line)
        if m:
            path = m.group(2) or "relay"
    regs = [next((t for t, l in errs[k] if "registered as" in l), None) for k in "ab"]
    firsts = [outs[k][0][0] for k in "ab" if outs[k]]
    # When alice's chat was first on a direct path (at once, or upgraded).
    direct_at = next((t for t, l in errs["a"]
                      if re.search(r"(connected|upgraded to) direct", l)), None)
    # Both know each other: the later of the two "friend found".
    founds = [next((t for t, l in errs[k] if "friend found" in l), None) for k in "ab"]
    meet_ms = None
    if all(f is not None for f in founds) and firsts:
        meet_ms = max(0.0, (min(firsts) - max(founds)) * 1000)
    direct_ms = None
    if all(r is not None for r in regs) and direct_at is not None:
        direct_ms = max(0.0, (direct_at - max(regs)) * 1000)
    ms = None
    if all(r is not None for r in regs) and firsts:
        ms = max(0.0, (min(firsts) - max(regs)) * 1000)
    rejoined = all(any("re-establishing" in l for _, l in errs[k]) for k in "ab")
    # Every status line and the first message, both sides, in time order,
    # relative to the later "friend found" (for --timeline).
    zero = max(founds) if all(f is not None for f in founds) else None
    timeline = []
    if zero is not None:
        events = [(t, k, l) for k in "ab" for t, l in errs[k]]
        events += [(outs[k][0][0], k, f"[first message received] {outs[k][0][1]}")
                   for k in "ab" if outs[k]]
        timeline = [f"{(t - zero) * 1000:+8.1f} ms {names[k].split('-')[0]:<5} {l}"
                    for t, k, l in sorted(events)]
    for d in data_dirs:
        shutil.rmtree(d, ignore_errors=True)
    return {"ok": ok, "path": path, "ms": ms, "direct_ms": direct_ms, "meet_ms": meet_ms,
            "rejoined": rejoined, "timeline": timeline,
            "got": {k: len(got[k]) for k in "ab"},
            "err": {k: "\n".join(l for _, l in errs[k]) for k in "ab"},
            "codes": {k: procs[k].returncode for k in "ab"}}


def cases(selected):
    out = []
    for i in range(4):
        for j in range(i, 4):
            out.append((f"{MODES[i]}/{MODES[j]}", MODES[i], MODES[j], "nl-host-b"))
    out.append(("same-LAN (symmetric)", "symmetric", "port-restricted", "nl-host-a2"))
    out.append(("path-break (port-r./port-r.)", "port-restricted", "port-restricted",
                "nl-host-b"))
    if not selected:
        # The path-break case takes ~25 s a run: only when named, or --check.
        out = out[:-1]
    else:
        want = set(selected.split(","))
        out = [c for c in out if c[0] in want
               or (c[0].startswith("same-LAN") and "lan" in want)
               or (c[0].startswith("path-break") and "break" in want)]
    return out


def expected_path(case):
    name, a, b, _ = case
    if name.startswith("same-LAN"):
        return "LAN"
    return "relay" if a == b == "symmetric" else "WAN"


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def run_cases(binary, servers, todo, runs, lines, loss, seq, report, timeline=False,
              retry_path=False):
    """retry_path (--check): a run that delivered everything but ended on
    another path than expected_path() prints its timeline to stderr and
    runs once more (punching under loss and the birthday method are
    chances, not certainties); the second run's result counts."""
    natlab("loss", str(loss))
    rows = []
    for case in todo:
        name, ma, mb, ns_b = case
        natlab("mode", "a", ma)
        natlab("mode", "b", mb)
        results = []
        for r in range(runs):
            seq[0] += 1
            brk = loss if name.startswith("path-break") else None
            res = chat_pair(binary, servers, "nl-host-a", ns_b, f"{os.getpid()}-{seq[0]}",
                            max(lines, 2) if brk is not None else lines, brk)
            if retry_path and res["ok"] and res["path"] != expected_path(case):
                sys.stderr.write(f"--- {name} at {loss}%: path {res['path']}, expected "
                                 f"{expected_path(case)}; its timeline, then once more:\n"
                                 + "\n".join(res["timeline"]) + "\n")
                seq[0] += 1
                res = chat_pair(binary, servers, "nl-host-a", ns_b, f"{os.getpid()}-{seq[0]}",
                                max(lines, 2) if brk is not None else lines, brk)
                res["retried"] = True
            results.append(res)
            if timeline:
                print(f"--- {name} run {r + 1}: relative to the later 'friend found'")
                print("\n".join(res["timeline"]) or "(no meeting)")
            if not res["ok"]:
                report.write(f"--- {name} loss {loss}% run {r + 1} failed "
                             f"(exit {res['codes']}, got {res['got']})\n"
                             f"alice:\n{res['err']['a']}\nbob:\n{res['err']['b']}\n")
                report.flush()
        rows.append((case, loss, results))
        print_row(case, loss, results)
    return rows


def print_row(case, loss, results):
    """One row per path the passing runs took (times by path)."""
    ok = [r for r in results if r["ok"]]
    for path in sorted({r["path"] for r in ok}) or ["-"]:
        on = [r for r in ok if r["path"] == path]
        ms = [r["ms"] for r in on if r["ms"] is not None]
        direct = [r["direct_ms"] for r in on if r["direct_ms"] is not None]
        meet = [r["meet_ms"] for r in on if r["meet_ms"] is not None]
        p50 = f"{pct(ms, 0.5):.0f}" if ms else "-"
        p95 = f"{pct(ms, 0.95):.0f}" if ms else "-"
        m50 = f"{pct(meet, 0.5):.0f}" if meet else "-"
        d50 = f"{pct(direct, 0.5):.0f}" if direct else "-"
        print(f"| {case[0]:<33} | {loss:>4}% | {len(ok):>3}/{len(results):<3} | "
              f"{path:<5} {len(on):>3} | {p50:>7} | {p95:>7} | {m50:>8} | {d50:>9} |", flush=True)


def summary_row(case, loss, rtt, results):
    """The JSON summary of one case (every run, whatever its path)."""
    ok = [r for r in results if r["ok"]]
    ms = [r["ms"] for r in ok if r["ms"] is not None]
    direct = [r["direct_ms"] for r in ok if r["direct_ms"] is not None]
    meet = [r["meet_ms"] for r in ok if r["meet_ms"] is not None]
    paths = sorted({r["path"] for r in ok})
    return {"case": case[0], "loss_pct": loss, "rtt_ms": rtt, "runs": len(results),
            "ok": len(ok), "paths": paths,
            "first_message_ms_p50": round(pct(ms, 0.5)) if ms else None,
            "first_message_ms_p95": round(pct(ms, 0.95)) if ms else None,
            "meet_to_first_ms_p50": round(pct(meet, 0.5)) if meet else None,
            "meet_to_first_ms_p95": round(pct(meet, 0.95)) if meet else None,
            "direct_ms_p50": round(pct(direct, 0.5)) if direct else None,
            "direct_runs": len(direct)}


class Netem:
    """chatd-netem in each host namespace: RTT/2 on each host's egress, so
    two hosts are RTT apart (and a host and a server RTT/2). Stopped by PID
    (and by itself after --max-secs)."""

    HOSTS = {"nl-host-a": "10.200.1.10", "nl-host-a2": "10.200.1.11", "nl-host-b": "10.200.2.10"}

    def __init__(self, binary, rtt, lifetime):
        self.procs = []
        one_way = rtt / 2
        for ns, addr in self.HOSTS.items():
            self.procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, binary, "--src", addr, "--delay", f"{one_way:g}",
                 "--max-secs", str(int(lifetime))],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        time.sleep(0.5)
        for p in self.procs:
            if p.poll() is not None:
                err = p.stderr.read().decode(errors="replace")
                self.stop()
                raise RuntimeError(f"chatd-netem did not start: {err}")

    def stop(self):
        labproc.stop(self.procs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--check", action="store_true", help="the CI assertion (see below)")
    ap.add_argument("--runs", type=int, default=1, help="runs per case (default 1)")
    ap.add_argument("--lines", type=int, default=5, help="lines each way (default 5)")
    ap.add_argument("--loss", type=int, default=0, help="loss %% on both routers (default 0)")
    ap.add_argument("--cases", default="",
                    help="comma-separated cases: MODE/MODE (e.g. port-restricted/symmetric), "
                         "lan, break (default: the 10 pairs and lan)")
    ap.add_argument("--bin", default="", help="chatd binary (default: build release)")
    ap.add_argument("--rtt", type=float, default=0,
                    help="emulated RTT between the two hosts in ms (chatd-netem in each host "
                         "namespace, RTT/2 on its egress; default 0: none)")
    ap.add_argument("--netem", default=os.environ.get("NETEM_BIN", ""),
                    help="chatd-netem binary (default: $NETEM_BIN, else build release)")
    ap.add_argument("--timeline", action="store_true",
                    help="print each run's status lines and first messages, both sides, in "
                         "time order relative to the later 'friend found' (to see where the "
                         "time goes)")
    ap.add_argument("--json", action="store_true",
                    help="print, last, one JSON line with every case's figures")
    args = ap.parse_args()
    labproc.exit_on_sigterm()
    if os.geteuid() != 0:
        sys.exit("punch-lab.py: must run as root (network namespaces)")
    if not (1 <= args.runs <= 1000 and 1 <= args.lines <= 1000 and 0 <= args.loss <= 50):
        sys.exit("punch-lab.py: --runs and --lines must be 1..1000, --loss 0..50")
    binary = chatd_binary(args.bin)
    netem_bin = args.netem
    if args.rtt > 0 and not netem_bin:
        subprocess.run(["cargo", "build", "-q", "--release", "-p", "netem"], cwd=ROOT,
                       check=True)
        netem_bin = os.path.join(ROOT, "target", "release", "chatd-netem")
    if not (0 <= args.rtt <= 1000):
        sys.exit("punch-lab.py: --rtt must be 0..1000 ms")
    work = tempfile.mkdtemp(prefix="punch-lab.")
    report_path = os.path.join(work, "failures.log")
    servers = None
    netem = None
    rows = []
    lab_up("punch-lab.py")
    try:
        if args.rtt > 0:
            # Bounded: the whole matrix at its slowest, then it stops itself.
            netem = Netem(os.path.abspath(netem_bin), args.rtt, 600 + 60 * args.runs * 12)
        servers = Servers(binary, work)
        print(f"machine: {os.cpu_count()} cores; {args.lines} lines each way; "
              f"emulated RTT between the hosts {args.rtt:g} ms; "
              f"time = registered (later of the two) -> first message delivered; "
              f"meet = both found each other -> first message; "
              f"direct = registered -> alice on a direct path")
        print(f"| {'case (NAT a / NAT b)':<33} | loss  | ok      | path runs | p50 ms  | p95 ms  | meet p50 | direct ms |")
        print("|---|---|---|---|---|---|---|---|")
        seq = [0]
        with open(report_path, "w") as report:
            if args.check:
                every = cases("") + cases("break")
                rows += run_cases(binary, servers, every, 1, args.lines, 0, seq, report,
                                  retry_path=True)
                rows += run_cases(binary, servers, every[:10], 1, args.lines, 5, seq, report,
                                  retry_path=True)
            else:
                rows += run_cases(binary, servers, cases(args.cases), args.runs, args.lines,
                                  args.loss, seq, report, args.timeline)
    finally:
        if servers:
            servers.stop()
        if netem:
            netem.stop()
        subprocess.run([NATLAB, "down"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bad = []
    for case, loss, results in rows:
        for r in results:
            if not r["ok"]:
                bad.append(f"{case[0]} at {loss}%: not every line delivered exactly once")
            elif args.check and r["path"] != expected_path(case):
                bad.append(f"{case[0]} at {loss}%: path {r['path']}, expected "
                           f"{expected_path(case)}")
            elif args.check and case[0].startswith("path-break") and not r["rejoined"]:
                bad.append(f"{case[0]}: the path did not break and get re-established")
    total = sum(len(r) for _, _, r in rows)
    print(f"runs passed: {total - sum(1 for b in bad if 'exactly' in b)}/{total}")
    retried = [f"{case[0]} at {loss}%" for case, loss, results in rows
               for r in results if r.get("retried")]
    if retried:
        print(f"retried once for the path (timelines on stderr): {', '.join(retried)}")
    if bad:
        print("problems:\n  " + "\n  ".join(bad))
        if os.path.getsize(report_path) > 0:
            with open(report_path) as f:
                sys.stderr.write(f.read())
    shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps([summary_row(case, loss, args.rtt, results)
                          for case, loss, results in rows]))
    if args.check and bad:
        sys.exit(1)


if __name__ == "__main__":
    main()
