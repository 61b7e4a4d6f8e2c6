#!/usr/bin/env python3
"""A room in the NAT lab (issue 13): two real `chatd serve` (nl-srv1,
nl-srv2) and three `chatd room` members, with both NAT routers symmetric.

ann (nl-host-a) and ben (nl-host-a2) share NAT a, so they reach each other
on the LAN; cat (nl-host-b) is behind NAT b, and symmetric x symmetric
cannot be punched, so both of cat's links are relayed through a server.
Every member sends LINES lines once the room has a host; a run passes when
every member prints the identical sequence holding every line once, each
member's own in the order sent, cat's links were relayed, and every member
leaves cleanly (exit 0) when its stdin ends.

    sudo scripts/room-lab.py --check          # one run: the CI assertion
    sudo scripts/room-lab.py --runs 5         # figures over several runs

Prints one line per run (host, seconds to a common host and to every line
printed everywhere, cat's paths) and `runs passed: K/N`; exit 1 with
--check when a run fails (every member's output on stderr).

Needs root (network namespaces), python3; brings the lab up and down itself
(scripts/natlab.sh) and stops exactly the processes it started, by PID.
Only 10.200.0.0/16 inside its own nl-* namespaces.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import labproc  # noqa: E402 (the lab scripts' shared helpers, beside this file)
from natlabproc import NATLAB, Servers, chatd_binary, lab_up  # noqa: E402

# name, namespace, home server, the other server
MEMBERS = [("ann", "nl-host-a", "srv1", "srv2"),
           ("ben", "nl-host-a2", "srv2", "srv1"),
           ("cat", "nl-host-b", "srv1", "srv2")]
HOST_TIMEOUT = 60.0
PRINT_TIMEOUT = 60.0
EXIT_TIMEOUT = 30.0


def last_host(err):
    """The host a member last named ("chatd: host is NAME")."""
    for _, line in reversed(err):
        m = re.search(r"chatd: host is (\w+)", line)
        if m:
            return m.group(1)
    return None


def printed(out):
    return [tuple(line.split("\t", 1)) for _, line in out if "\t" in line]


def run_once(binary, servers, lines, tag):
    procs, outs, errs, threads, dirs = {}, {}, {}, [], []
    started = time.monotonic()
    for name, ns, home, other in MEMBERS:
        d = tempfile.mkdtemp(prefix=f"room-lab-{name}.")
        dirs.append(d)
        args = ["ip", "netns", "exec", ns, "env", "RUST_BACKTRACE=0", "NO_COLOR=1",
                binary, "room", f"lab{tag}", "--name", name, "--data-dir", d,
                "--server", servers.addrs[home], "--server", servers.addrs[other],
                "--wait", "60"]
        for m, *_ in MEMBERS:
            if m != name:
                args += ["--member", m]
        procs[name], outs[name], errs[name], readers = labproc.spawn_read(args)
        threads += readers
    names = [m for m, *_ in MEMBERS]
    result = {"ok": False, "why": "", "host": None, "host_s": None, "printed_s": None,
              "cat": ""}
    try:
        until = time.monotonic() + HOST_TIMEOUT
        while time.monotonic() < until:
            hosts = [last_host(errs[n]) for n in names]
            if hosts[0] and all(h == hosts[0] for h in hosts):
                result["host"] = hosts[0]
                break
            time.sleep(0.1)
        if result["host"] is None:
            result["why"] = "no common host"
            return result
        result["host_s"] = time.monotonic() - started
        sent = {n: [f"{n} says {i}" for i in range(lines)] for n in names}
        t0 = time.monotonic()
        for i in range(lines):
            for n in names:
                procs[n].stdin.write((sent[n][i] + "\n").encode())
                procs[n].stdin.flush()
        total = lines * len(names)
        until = time.monotonic() + PRINT_TIMEOUT
        while time.monotonic() < until:
            if all(len(printed(outs[n])) >= total for n in names):
                break
            time.sleep(0.05)
        else:
            result["why"] = "not every line printed everywhere"
            return result
        result["printed_s"] = time.monotonic() - t0
        first = printed(outs[names[0]])
        if len(first) != total:
            result["why"] = f"{len(first)} lines printed, {total} sent"
            return result
        for n in names:
            if printed(outs[n]) != first:
                result["why"] = f"{n} printed another sequence"
                return result
            if [t for s, t in first if s == n] != sent[n]:
                result["why"] = f"{n}'s lines are not each once, in order"
                return result
        cat = "\n".join(line for _, line in errs["cat"])
        links = re.findall(r"connected (relayed|direct \((?:LAN|WAN)\))(?: via server \S+)? to (\w+)",
                           cat)
        upgrades = re.findall(r"upgraded to (direct \((?:LAN|WAN)\)) with (\w+)", cat)
        result["cat"] = ", ".join(f"{k} to {m}" for k, m in links)
        if sorted(m for _, m in links) != ["ann", "ben"] or \
                any(k != "relayed" for k, _ in links) or upgrades:
            result["why"] = f"cat's links were not both relayed: {result['cat'] or 'none'}"
            return result
        for n in names:
            procs[n].stdin.close()
        labproc.wait_all(procs.values(), EXIT_TIMEOUT)
        codes = {n: procs[n].returncode for n in names}
        if any(c != 0 for c in codes.values()):
            result["why"] = f"exit codes {codes}"
            return result
        result["ok"] = True
        return result
    finally:
        labproc.stop(procs.values())
        for t in threads:
            t.join(timeout=5)
        if not result["ok"]:
            for n in names:
                sys.stderr.write(f"--- {n} stdout:\n" + "\n".join(l for _, l in outs[n]) +
                                 f"\n--- {n} stderr:\n" + "\n".join(l for _, l in errs[n]) +
                                 "\n")
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--check", action="store_true", help="one run; exit 1 if it fails")
    ap.add_argument("--runs", type=int, default=1, help="runs (default 1)")
    ap.add_argument("--lines", type=int, default=5, help="lines per member (default 5)")
    ap.add_argument("--bin", default="", help="chatd binary (default: build release)")
    args = ap.parse_args()
    labproc.exit_on_sigterm()
    if os.geteuid() != 0:
        sys.exit("room-lab.py: must run as root (network namespaces)")
    if not (1 <= args.runs <= 100 and 1 <= args.lines <= 100):
        sys.exit("room-lab.py: --runs and --lines must be 1..100")
    binary = chatd_binary(args.bin)
    work = tempfile.mkdtemp(prefix="room-lab.")
    servers = None
    results = []
    lab_up("room-lab.py", "--mode-a", "symmetric", "--mode-b", "symmetric")
    try:
        servers = Servers(binary, work)
        for run in range(1 if args.check else args.runs):
            r = run_once(binary, servers, args.lines, run)
            results.append(r)
            fmt = lambda x: "-" if x is None else f"{x:.1f} s"  # noqa: E731
            print(f"run {run + 1}: {'ok' if r['ok'] else 'FAILED: ' + r['why']}; "
                  f"host {r['host']} after {fmt(r['host_s'])}; "
                  f"{args.lines * len(MEMBERS)} lines printed everywhere in "
                  f"{fmt(r['printed_s'])}; cat: {r['cat'] or '-'}", flush=True)
    finally:
        if servers:
            servers.stop()
        subprocess.run([NATLAB, "down"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)
    passed = sum(1 for r in results if r["ok"])
    print(f"runs passed: {passed}/{len(results)}")
    if args.check and passed != len(results):
        sys.exit(1)


if __name__ == "__main__":
    main()
