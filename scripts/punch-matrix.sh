#!/usr/bin/env bash
# Hole-punching matrix (issue 6): in the NAT lab (scripts/natlab.sh), one
# rendezvous server in nl-srv1, alice behind NAT a (nl-host-a), bob behind
# NAT b (nl-host-b); for every pair of NAT modes, both run `chatd chat` and
# send LINES lines each way. Prints one row per pair: connected or not, how
# (the path chatd reported), lines received each way, seconds to connect.
#
#   sudo scripts/punch-matrix.sh [--lines N] [--loss PCT] [--bin PATH]
#
# Needs root (network namespaces). Uses only 10.200.0.0/16 inside its own
# nl-* namespaces; brings the lab up and down itself and stops exactly the
# processes it started (by PID), also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

lines=10
loss=0
bin=""
while [[ $# -gt 0 ]]; do
    case "$1" in
    --lines) lines=$2; shift 2 ;;
    --loss) loss=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    -h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "punch-matrix.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[[ $(id -u) == 0 ]] || { echo "punch-matrix.sh: must run as root (network namespaces)" >&2; exit 1; }
[[ $lines =~ ^[0-9]+$ && $lines -ge 1 && $lines -le 1000 ]] || { echo "punch-matrix.sh: --lines must be 1..1000" >&2; exit 2; }

if [[ -z $bin ]]; then
    cargo build -q --release -p chatd
    bin=$PWD/target/release/chatd
fi
work=$(mktemp -d /tmp/punch-matrix.XXXXXX)
server_pid=""
cleanup() {
    [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
    scripts/natlab.sh down >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

scripts/natlab.sh down >/dev/null 2>&1 || true
scripts/natlab.sh up --loss "$loss" >"$work/lab.log" 2>&1 || { cat "$work/lab.log" >&2; exit 1; }
id=$("$bin" keygen --out "$work/server.key" | tail -1)
ip netns exec nl-srv1 "$bin" serve --listen 10.200.0.11:7000 --admin 127.0.0.1:9100 \
    --data-dir "$work" --key "$work/server.key" --preset local >"$work/server.log" 2>&1 &
server_pid=$!
sleep 1.5
kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }

# Feeds LINES lines, then keeps stdin open long enough for the acks.
feed() {
    local who=$1
    for i in $(seq 1 "$lines"); do echo "from $who $i"; sleep 0.05; done
    sleep 3
}

# One client: chat NAME -> FRIEND in namespace NS, output to PREFIX.{out,err}.
client() {
    local ns=$1 name=$2 friend=$3 prefix=$4
    feed "$name" | timeout 40 ip netns exec "$ns" env RUST_BACKTRACE=0 "$bin" chat \
        --name "$name" --to "$friend" --server "$id@10.200.0.11:7000" --wait 20 \
        >"$prefix.out" 2>"$prefix.err" || true
}

echo "machine: $(nproc) cores; loss ${loss}% per router; $lines lines each way"
printf '| %-16s | %-16s | %-9s | %-6s | %-11s | %-11s |\n' \
    "NAT a (alice)" "NAT b (bob)" "connected" "path" "alice got" "bob got"
echo "|---|---|---|---|---|---|"
modes=(full-cone addr-restricted port-restricted symmetric)
run=$$
ok=0 total=0
for i in 0 1 2 3; do
    for j in $(seq "$i" 3); do
        scripts/natlab.sh mode a "${modes[$i]}" >/dev/null
        scripts/natlab.sh mode b "${modes[$j]}" >/dev/null
        # Fresh names per pair: a record outlives its client (its TTL).
        tag="$run-$i$j"
        client nl-host-a "alice-$tag" "bob-$tag" "$work/a" &
        a=$!
        client nl-host-b "bob-$tag" "alice-$tag" "$work/b" &
        b=$!
        wait "$a" "$b" || true
        got_a=$(grep -c "^from bob-$tag " "$work/a.out" || true)
        got_b=$(grep -c "^from alice-$tag " "$work/b.out" || true)
        path=$(grep -oh 'connected direct ([A-Z]*)' "$work/a.err" | head -1 | tr -dc 'A-Z' || true)
        connected=no
        if [[ $got_a == "$lines" && $got_b == "$lines" ]]; then
            connected=yes
            ok=$((ok + 1))
        fi
        total=$((total + 1))
        printf '| %-16s | %-16s | %-9s | %-6s | %-11s | %-11s |\n' \
            "${modes[$i]}" "${modes[$j]}" "$connected" "${path:--}" "$got_a/$lines" "$got_b/$lines"
    done
done
echo "pairs connected with every line delivered both ways: $ok/$total"
