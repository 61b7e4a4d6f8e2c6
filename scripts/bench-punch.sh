#!/usr/bin/env bash
# Hole-punching benchmark (issue 6): RUNS runs (default 20) of every NAT mode
# pair and the same-LAN case in the NAT lab, with two real servers; prints
# success rate and p50/p95 time from "both registered" to "first message
# delivered", by pair and path. Extra arguments go to scripts/punch-lab.py
# (e.g. --loss 5, --cases port-restricted/symmetric,lan, --lines 1).
#
#   sudo scripts/bench-punch.sh [--runs N] [punch-lab options]
#
# Needs root (network namespaces). The lab adds no latency (the kernel has no
# netem): times are this machine's processing plus the protocol's own waits.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) == 0 ]] || { echo "bench-punch.sh: must run as root (network namespaces)" >&2; exit 1; }
runs=20
if [[ ${1:-} == --runs ]]; then runs=$2; shift 2; fi
if [[ ${1:-} == -h || ${1:-} == --help ]]; then sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
cargo build -q --release -p chatd
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
exec python3 scripts/punch-lab.py --bin target/release/chatd --runs "$runs" "$@"
