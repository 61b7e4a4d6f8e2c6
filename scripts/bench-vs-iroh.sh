#!/usr/bin/env bash
# This project's overlay vs iroh-gossip, matched: the same engine (sim's
# network model: one-way latency per link, loss, crash and partition
# notices after 3 s), the same scenario, the same seeds, the same metrics —
# only the protocol state machine differs (`sim --protocol chatd|iroh`;
# iroh-gossip 0.101's `proto::State` from crates.io with its defaults).
#
#   scripts/bench-vs-iroh.sh                       # n = 1k, 10k, 50k, 4 seeds (hours)
#   scripts/bench-vs-iroh.sh --nodes 1000          # one size (~3 min)
#   scripts/bench-vs-iroh.sh --nodes 1000 --seeds 2 --cases single,any-sender
#   scripts/bench-vs-iroh.sh --nodes 10000 --protocols chatd   # our side only
#
# Workload: nodes start over 10 s through 5 contacts, settle 20 s, then 30
# broadcasts of 64 bytes, one per 3 s round (failure rows: 5 s rounds), the
# first 2 rounds unmeasured (`rmr` is the steady state over the other 28,
# `rmr_all` counts all 30, first flood included). Latency uniform 10..50 ms
# per link unless the case says otherwise. msgs/bytes per delivery: every
# message of every type sent from the first round on (membership
# maintenance included) ÷ first deliveries of a payload. Each cell is the
# mean over the seeds (delivery: the minimum; LDH max: the maximum).
# Summaries are kept in target/bench-vs-iroh/. Everything runs in simulated
# time inside one process: no traffic leaves it.
set -euo pipefail
cd "$(dirname "$0")/.."

nodes="1000,10000,50000"
seeds=4
cases="single,any-sender,pool-10,static-50,failure-50,failure-80,churn-1"
protocols="chatd,iroh"
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes=$2; shift 2 ;;
    --seeds) seeds=$2; shift 2 ;;
    --cases) cases=$2; shift 2 ;;
    --protocols) protocols=$2; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-vs-iroh.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$seeds" in ''|*[!0-9]*) echo "bench-vs-iroh.sh: --seeds takes a number" >&2; exit 2 ;; esac

args_of() {
  local r="--warmup 2 --rounds 28"
  case "$1" in
    single) echo "single $r" ;;
    any-sender) echo "multi --senders 1 --sender-pool 0 $r" ;;
    pool-10) echo "multi --senders 1 --sender-pool 10 $r" ;;
    static-50) echo "single --latency-static 50 $r" ;;
    failure-50) echo "failure --kill 0.5 --round-secs 5 $r" ;;
    failure-80) echo "failure --kill 0.8 --round-secs 5 $r" ;;
    churn-1) echo "churn --rate 1 $r" ;;
    *) echo "bench-vs-iroh.sh: unknown case $1" >&2; return 2 ;;
  esac
}

IFS=, read -ra ns <<< "$nodes"
IFS=, read -ra cs <<< "$cases"
IFS=, read -ra ps <<< "$protocols"
for p in "${ps[@]}"; do
  case "$p" in chatd|iroh) ;; *) echo "bench-vs-iroh.sh: --protocols takes chatd and/or iroh" >&2; exit 2 ;; esac
done
for c in "${cs[@]}"; do args_of "$c" > /dev/null || exit 2; done
for n in "${ns[@]}"; do
  case "$n" in ''|*[!0-9]*) echo "bench-vs-iroh.sh: --nodes takes numbers, comma-separated" >&2; exit 2 ;; esac
done

cargo build --release -q -p sim
sim=target/release/sim
out=target/bench-vs-iroh
mkdir -p "$out"

echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
runs=()
total=$(( ${#ns[@]} * ${#cs[@]} * ${#ps[@]} * seeds ))
k=0
for n in "${ns[@]}"; do
  for c in "${cs[@]}"; do
    a=$(args_of "$c")
    for p in "${ps[@]}"; do
      for s in $(seq 1 "$seeds"); do
        f="$out/$c-$n-$p-$s.json"
        k=$((k + 1))
        echo "[$k/$total, ${SECONDS}s] running sim $a --nodes $n --seed $s --protocol $p" >&2
        # shellcheck disable=SC2086
        "$sim" $a --nodes "$n" --seed "$s" --protocol "$p" --quiet | tail -n 1 > "$f"
        runs+=("$c|$n|$p|$f")
      done
    done
  done
done

python3 - "${runs[@]}" <<'PY'
import json, sys
from collections import OrderedDict
rows = OrderedDict()
for arg in sys.argv[1:]:
    case, n, proto, path = arg.split("|")
    rows.setdefault((case, int(n), proto), []).append(json.load(open(path)))
def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None
def f(v, fmt):
    return "-" if v is None else format(v, fmt)
cols = ["case", "n", "protocol", "delivery", "rmr_all", "rmr", "LDH max", "LDH mean",
        "msgs/delivery", "bytes/delivery", "wall s", "RSS MB"]
print("| " + " | ".join(cols) + " |")
print("|" + "---|" * len(cols))
for (case, n, proto), ds in rows.items():
    dl = [d["delivery"] for d in ds if d["delivery"] is not None]
    ldh = [d["ldh_max"] for d in ds if d["ldh_max"] is not None]
    print("| " + " | ".join([
        case, f"{n // 1000}k" if n % 1000 == 0 else str(n), proto,
        f(min(dl) if dl else None, ".4f"),
        f(mean([d["rmr_all"] for d in ds]), ".3f"),
        f(mean([d["rmr"] for d in ds]), ".4f"),
        f(max(ldh) if ldh else None, "d"),
        f(mean([d["ldh_mean"] for d in ds]), ".1f"),
        f(mean([d["msgs_per_delivery"] for d in ds]), ".2f"),
        f(mean([d["bytes_per_delivery"] for d in ds]), ".0f"),
        f(mean([d["wall_s"] for d in ds]), ".1f"),
        f(mean([d["peak_rss_mb"] for d in ds]), ".0f"),
    ]) + " |")
print(f"({len(sys.argv) - 1} runs; each cell the mean over seeds, delivery the minimum, LDH max the maximum)")
PY
