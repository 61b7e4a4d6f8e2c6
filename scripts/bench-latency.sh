#!/usr/bin/env bash
# Latency-aware relays and instant chats (issue 12), measured with real
# processes in the labs' own namespaces. Run `scripts/bench-latency.sh --help`.
set -Eeuo pipefail

usage() {
    cat <<'EOF'
scripts/bench-latency.sh: how chatd chooses and moves relays, and how fast a
chat starts, with emulated latency (chatd-netem). Needs root (network
namespaces), python3, nftables/conntrack (the NAT lab installs what it
needs); builds chatd and chatd-netem in release.

Usage:
  scripts/bench-latency.sh [--runs N] [--relocate N] [--nat-runs N] [--rtts "20 100"] [--losses "0 10"]

1. Seed 003's latency lab (scripts/latlab.sh: 4 servers, 2 clients, 10 ms
   links; the best server s1 not started): N relayed chats must go via the
   min-max server s3 (relay_choice_correct); then --relocate N chats whose
   relay is killed (SIGKILL) and N during which s1 starts: the time from
   the event to the first line on the new relay (relocation_ms), and no
   line lost or duplicated (scripts/latency-lab.py).
2. The NAT lab (scripts/natlab.sh) with an emulated RTT between the two
   hosts (each of --rtts, ms) and loss on both routers (each of --losses,
   %): every NAT pair, --nat-runs runs each (scripts/punch-lab.py --rtt):
   time from both registered, and from both having found each other (the
   meeting), to the first message (p50/p95), and from registered to a
   direct path (p50).

Prints the tables as it goes and, as its last stdout line, one JSON object:
relay_choice_correct, relocation_correct, relocation_ms_p50,
relocation_ms_max, lost, duplicated, reordered, and "nat": one entry per
(rtt, loss, pair) with first_message_ms_p50/p95, meet_to_first_ms_p50/p95
and direct_ms_p50.
Defaults: --runs 10 --relocate 5 --nat-runs 5 --rtts "20 100" --losses "0 10"
(about 25 minutes on 2 cores).
EOF
}

runs=10 relocate=5 nat_runs=5 rtts="20 100" losses="0 10"
while (($#)); do
    case $1 in
    --runs) runs=${2:?}; shift 2 ;;
    --relocate) relocate=${2:?}; shift 2 ;;
    --nat-runs) nat_runs=${2:?}; shift 2 ;;
    --rtts) rtts=${2:?}; shift 2 ;;
    --losses) losses=${2:?}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
    esac
done
for n in "$runs" "$relocate" "$nat_runs"; do
    [[ $n =~ ^[0-9]+$ ]] && ((n <= 1000)) || { echo "bench-latency.sh: counts are 0..1000" >&2; exit 2; }
done
((EUID == 0)) || { echo "bench-latency.sh: needs root (network namespaces)" >&2; exit 1; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
cd "$ROOT"
cargo build -q --release -p chatd -p netem
BIN="$ROOT/target/release/chatd"
export NETEM_BIN="$ROOT/target/release/chatd-netem"
work=$(mktemp -d /tmp/bench-latency.XXXXXX)
trap 'rm -rf "$work"' EXIT

echo "== relay choice and relocation (seed 003's lab, 10 ms links) =="
python3 "$HERE/latency-lab.py" --bin "$BIN" --runs "$runs" --relocate "$relocate" \
    --lines 20 | tee "$work/lab.out"
tail -n 1 "$work/lab.out" >"$work/lab.json"

: >"$work/nat.jsonl"
for rtt in $rtts; do
    for loss in $losses; do
        echo "== NAT pairs, emulated RTT $rtt ms between the hosts, $loss% loss =="
        python3 "$HERE/punch-lab.py" --bin "$BIN" --runs "$nat_runs" --rtt "$rtt" \
            --loss "$loss" --json | tee "$work/nat.out"
        tail -n 1 "$work/nat.out" >>"$work/nat.jsonl"
    done
done

python3 - "$work/lab.json" "$work/nat.jsonl" <<'PY'
import json, sys
lab = json.load(open(sys.argv[1]))
nat = [row for line in open(sys.argv[2]) if line.strip() for row in json.loads(line)]
print()
print("| RTT ms | loss | NAT pair | ok | paths | first msg p50 / p95 (from registered) | from the meeting p50 / p95 | direct p50 |")
print("|---|---|---|---|---|---|---|---|")
for r in nat:
    print(f"| {r['rtt_ms']:g} | {r['loss_pct']}% | {r['case']} | {r['ok']}/{r['runs']} | "
          f"{'+'.join(r['paths'])} | {r['first_message_ms_p50']} / {r['first_message_ms_p95']} | "
          f"{r['meet_to_first_ms_p50']} / {r['meet_to_first_ms_p95']} | {r['direct_ms_p50']} |")
out = {k: lab.get(k) for k in ("relay_choice_correct", "relocation_correct",
                               "relocation_ms_p50", "relocation_ms_max", "lost",
                               "duplicated", "reordered", "runs", "relocations")}
out["nat"] = nat
print(json.dumps(out))
PY
