#!/usr/bin/env bash
# Runs the simulator target matrix (issue 4) and prints one table.
#
#   scripts/bench-sim.sh            # everything (~2 min on 2 cores)
#   scripts/bench-sim.sh --quick    # without the n=100,000 row
#
# Each row is one `sim` run; its JSON summary (the last stdout line) is kept
# in target/bench-sim/NAME.json. Latency 10..50 ms uniform per link unless
# the row says otherwise. Nothing here sends traffic anywhere: the simulator
# runs in simulated time inside one process.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[ "${1:-}" = "--quick" ] && quick=1

cargo build --release -q -p sim
sim=target/release/sim
out=target/bench-sim
mkdir -p "$out"

rows=(
  "single-1k|single --nodes 1000"
  "multi-1k|multi --nodes 1000"
  "multi-1k-any-sender|multi --nodes 1000 --sender-pool 0"
  "single-10k|single --nodes 10000"
  "multi-10k|multi --nodes 10000"
  "multi-10k-any-sender|multi --nodes 10000 --sender-pool 0"
  "single-10k-static50|single --nodes 10000 --latency-static 50"
  "failure-50|failure --nodes 1000 --kill 0.5 --rounds 8 --round-secs 5"
  "failure-80|failure --nodes 1000 --kill 0.8 --rounds 8 --round-secs 5"
  "failure-90|failure --nodes 1000 --kill 0.9 --rounds 8 --round-secs 5"
  "failure-95|failure --nodes 1000 --kill 0.95 --rounds 8 --round-secs 5"
  "churn-1pct-60s|churn --nodes 1000 --rate 1 --rounds 20"
  "partition-60s|partition --nodes 1000 --for 60 --rounds 30"
)
[ "$quick" = 1 ] || rows+=("single-100k|single --nodes 100000")

echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
k=0
for row in "${rows[@]}"; do
  name=${row%%|*}
  args=${row#*|}
  k=$((k + 1))
  echo "[$k/${#rows[@]}, ${SECONDS}s] running $name: sim $args" >&2
  # shellcheck disable=SC2086
  "$sim" $args --quiet | tail -n 1 > "$out/$name.json"
done

python3 - "$out" "${rows[@]}" <<'PY'
import json, sys
out, rows = sys.argv[1], sys.argv[2:]
def f(v, fmt):
    return "-" if v is None else format(v, fmt)
cols = ["case", "delivery", "1st round", "RMR", "LDH max", "LDH mean", "p99 ms",
        "comps", "isolated", "full", "heal", "wall s", "RSS MB"]
print("| " + " | ".join(cols) + " |")
print("|" + "---|" * len(cols))
for row in rows:
    name = row.split("|", 1)[0]
    d = json.load(open(f"{out}/{name}.json"))
    heal = "-"
    if d.get("rounds_to_heal") is not None:
        heal = f"{d['rounds_to_heal']} rounds"
    if d.get("heal_secs") is not None:
        heal = f"{d['heal_secs']:.1f} s"
    if d["scenario"] in ("failure", "partition") and heal == "-":
        heal = "not healed"
    print("| " + " | ".join([
        name, f(d["delivery"], ".4f"), f(d["delivery_first_round"], ".4f"), f(d["rmr"], ".4f"),
        f(d["ldh_max"], "d"), f(d["ldh_mean"], ".1f"), f(d["latency_p99_ms"], ".0f"),
        str(d["components"]), str(d["isolated"]), f(d["active_full"], ".3f"), heal,
        f(d["wall_s"], ".1f"), f(d["peak_rss_mb"], ".0f"),
    ]) + " |")
PY
