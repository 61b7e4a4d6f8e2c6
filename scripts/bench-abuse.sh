#!/usr/bin/env bash
# Abuse benchmark (issue 11, "safe in front of anonymous clients"): for each
# attack a FRESH cluster of 3 release servers on 127.0.0.1 (keys, a full
# --allow list, server 2 and 3 joining through 1), the attacker
# (chatd/examples/abuse.rs) against server 1 (fresh-ids and notice-flood
# register at all three) for DURATION seconds while a
# legitimate client from 127.0.0.2 registers and looks itself up
# LEGIT_REQUESTS times spread over the attack; then the cluster is stopped.
#
#   scripts/bench-abuse.sh [--duration SECS] [--legit-requests N] [ATTACK ...]
#
# ATTACK: baseline fresh-ids held-conns stream-bomb notice-flood relay-grab
# long-names admin-slowloris (default: all, in that order). What each does
# is in the doc of chatd/examples/abuse.rs. Defaults: 60 s per attack
# (baseline 20 s; fresh-ids 2×, for its 50,000 handshakes), 100 legitimate
# requests of each kind; about 11 minutes in all on 2 cores (10 min 39 s
# measured). Loopback only (attackers spread over 127.0.0.0/8 as
# each attack needs); every wait is bounded; on exit (also on failure or
# Ctrl-C) it stops exactly the server processes it started, by PID.
#
# Output: per attack a progress line on stderr and its full JSON line in
# target/bench-abuse/ATTACK/result.json; a table; and last, on stdout, one
# line {"attacks":[{...}, ...]} with, per attack:
#   name                      the attack
#   rss_growth_mb             max over the 3 servers of (peak VmRSS during
#                             the attack and 3 s after) − (VmRSS before), MB
#   rss_growth_mb_per_server  the same for servers 1, 2, 3 (rss_mb_before,
#                             rss_mb_peak: the two readings)
#   refused                   typed refusals and server closures the
#                             attacker counted (responses Error(code), QUIC
#                             closes with an application code, streams and
#                             datagrams never granted, admin sockets closed)
#   refused_server            the servers' own count: the increase of
#                             chatd_client_requests_refused_total{reason=..}
#                             + chatd_clients_refused_total +
#                             chatd_clients_closed_not_reading_total, summed
#                             over the 3 servers
#   legit_register_p99_ms     p99 of the legitimate client's registrations
#                             (a fresh seq each time; answered once another
#                             server stored it; a failure counts with its
#                             time, ≤ 10 s)
#   legit_lookup_p99_ms       p99 of its lookups of itself
#   legit                     n, failures, p50/p99/max of both, errors
#   attacker                  the attacker's counts by kind (op:kind)
#   server_counters           increases of chatd_* counters (all servers)
#   server_gauge_peaks        peaks of chatd_client_connections etc. per
#                             server (sampled every 2 s)
#   admin_scrape              how long GET /metrics took meanwhile
#   extra                     attack-specific (legit_relay_ok, ...)
# Targets: rss_growth_mb ≤ 100 and both legit p99 ≤ 50 ms in every attack.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"

duration=60
legit_requests=100
attacks=()
while (($#)); do
    case "$1" in
    --duration)
        duration="$2"
        shift 2
        ;;
    --legit-requests)
        legit_requests="$2"
        shift 2
        ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    -*)
        echo "bench-abuse.sh: unknown option $1 (see --help)" >&2
        exit 2
        ;;
    *)
        attacks+=("$1")
        shift
        ;;
    esac
done
[[ "$duration" =~ ^[0-9]+$ ]] && ((duration >= 5 && duration <= 120)) || {
    echo "bench-abuse.sh: --duration must be 5..120 seconds" >&2
    exit 2
}
((${#attacks[@]})) || attacks=(baseline fresh-ids held-conns stream-bomb notice-flood relay-grab long-names admin-slowloris)

OUT="$ROOT/target/bench-abuse"
BIN="$OUT/bin"
mkdir -p "$BIN"
# The servers inherit this: 5,000 connections and 2,000 admin sockets.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "bench-abuse: building release binaries (cargo build --release -p chatd --bins --examples)" >&2
cargo build -q --release -p chatd --bins --examples >&2
# Pinned copies: others may rebuild target/release meanwhile.
cp -f target/release/chatd "$BIN/chatd"
cp -f target/release/examples/abuse "$BIN/abuse"

PIDS=()  # servers of the current cluster
stop_cluster() {
    local pid i deadline alive
    ((${#PIDS[@]})) || return 0
    for pid in "${PIDS[@]}"; do
        is_ours "$pid" && kill -TERM "$pid" 2>/dev/null || true
    done
    deadline=$((SECONDS + 10))
    while ((SECONDS < deadline)); do
        alive=0
        for pid in "${PIDS[@]}"; do is_ours "$pid" && alive=1; done
        ((alive)) || break
        sleep 0.2
    done
    for pid in "${PIDS[@]}"; do
        is_ours "$pid" && kill -KILL "$pid" 2>/dev/null || true
    done
    for i in "${!PIDS[@]}"; do wait "${PIDS[i]}" 2>/dev/null || true; done
    PIDS=()
}
# True if PID (one of the servers this script forked, not yet reaped, so
# the PID cannot have been reused) is still running (not a zombie).
is_ours() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [[ -n "$stat" && "${stat:0:1}" != Z ]]
}
trap 'stop_cluster' EXIT
trap 'exit 130' INT TERM

port_free() { # tcp|udp PORT
    local flag=-t
    [[ "$1" == udp ]] && flag=-u
    [[ -z "$(ss -Hna "$flag" "sport = :$2" 2>/dev/null)" ]]
}
free_ports() { # tcp|udp BASE COUNT
    local port="$2" found=0
    while ((found < $3 && port < 65000)); do
        if port_free "$1" "$port"; then
            echo "$port"
            found=$((found + 1))
        fi
        port=$((port + 1))
    done
}

# Starts 3 servers in $OUT/$1; sets SERVERS, ADMINS, PIDS.
start_cluster() {
    local dir="$OUT/$1" k ids=() allow=() quic=() admin=() args=() deadline
    rm -rf "${dir:?}"
    mkdir -p "$dir"
    for k in 1 2 3; do
        mkdir -p "$dir/s$k"
        ids+=("$("$BIN/chatd" keygen --out "$dir/s$k/chatd.key")")
    done
    for k in "${ids[@]}"; do allow+=(--allow "$k"); done
    mapfile -t quic < <(free_ports udp 17000 3)
    mapfile -t admin < <(free_ports tcp 19100 3)
    SERVERS=()
    ADMINS=()
    for k in 1 2 3; do
        args=(serve --listen "127.0.0.1:${quic[k - 1]}" --admin "127.0.0.1:${admin[k - 1]}"
            --data-dir "$dir/s$k" "${allow[@]}")
        ((k >= 2)) && args+=(--bootstrap "${ids[0]}@127.0.0.1:${quic[0]}")
        ((k >= 3)) && args+=(--bootstrap "${ids[1]}@127.0.0.1:${quic[1]}")
        NO_COLOR=1 RUST_LOG=warn "$BIN/chatd" "${args[@]}" >"$dir/s$k/out.json" 2>"$dir/s$k/log" </dev/null &
        PIDS+=("$!")
        deadline=$((SECONDS + 20))
        until grep -q '"admin"' "$dir/s$k/out.json" 2>/dev/null; do
            if ! is_ours "${PIDS[k - 1]}" || ((SECONDS >= deadline)); then
                echo "bench-abuse: server s$k did not start; tail of $dir/s$k/log:" >&2
                tail -n 20 "$dir/s$k/log" >&2 || true
                return 1
            fi
            sleep 0.1
        done
        SERVERS+=("${ids[k - 1]}@127.0.0.1:${quic[k - 1]}")
        ADMINS+=("http://127.0.0.1:${admin[k - 1]}")
    done
    # Ready: every server lists all three as live.
    deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)); do
        local ok=0 a n
        for a in "${ADMINS[@]}"; do
            n=$(curl -s -m 2 "$a/status" | grep -o '"servers":\[[^]]*\]' | tr ',' '\n' | grep -c '"' || true)
            ((n >= 3)) && ok=$((ok + 1))
        done
        ((ok == 3)) && return 0
        sleep 0.5
    done
    echo "bench-abuse: the cluster in $dir did not converge to 3 live servers in 30 s" >&2
    return 1
}

results=()
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(date -u +%Y-%m-%dT%H:%MZ)" >&2
for attack in "${attacks[@]}"; do
    d="$duration"
    [[ "$attack" == baseline ]] && d=$((duration < 20 ? duration : 20))
    # 50,000 handshakes need more time than the others on 2 cores.
    [[ "$attack" == fresh-ids ]] && d=$((duration * 2))
    echo "bench-abuse: $attack: starting a fresh 3-server cluster" >&2
    if ! start_cluster "$attack"; then
        results+=("{\"name\":\"$attack\",\"error\":\"the cluster did not start; see $OUT/$attack\"}")
        stop_cluster
        continue
    fi
    # Let the first anti-entropy round and heartbeats pass.
    sleep 2
    args=("$attack" --duration "$d" --legit-requests "$legit_requests")
    for s in "${SERVERS[@]}"; do args+=(--server "$s"); done
    for a in "${ADMINS[@]}"; do args+=(--admin "$a"); done
    for p in "${PIDS[@]}"; do args+=(--pid "$p"); done
    echo "bench-abuse: $attack: attacking for $d s" >&2
    # Bounded even if the attacker hangs: timeout stops exactly that process.
    if timeout -k 5 $((d + 150)) "$BIN/abuse" "${args[@]}" >"$OUT/$attack/result.json" 2>"$OUT/$attack/abuse.log"; then
        line="$(tail -n 1 "$OUT/$attack/result.json")"
    else
        line="{\"name\":\"$attack\",\"error\":\"the attacker failed (exit $?); see $OUT/$attack/abuse.log\"}"
    fi
    results+=("$line")
    if command -v jq >/dev/null 2>&1; then
        jq -r '"bench-abuse: \(.name): rss growth \(.rss_growth_mb) MB (per server \(.rss_growth_mb_per_server)), refused \(.refused) (servers counted \(.refused_server)), legit register p99 \(.legit_register_p99_ms) ms, lookup p99 \(.legit_lookup_p99_ms) ms"' <<<"$line" >&2 || echo "$line" >&2
    fi
    stop_cluster
done

if command -v jq >/dev/null 2>&1; then
    echo
    echo "| attack | RSS growth MB (max of 3; per server) | refused (attacker / servers) | legit register p99 ms | legit lookup p99 ms |"
    echo "|---|---|---|---|---|"
    for line in "${results[@]}"; do
        jq -r '"| \(.name) | \(.rss_growth_mb) (\(.rss_growth_mb_per_server | map(tostring) | join(" / "))) | \(.refused) / \(.refused_server) | \(.legit_register_p99_ms) | \(.legit_lookup_p99_ms) |"' <<<"$line" 2>/dev/null || true
    done
    echo
fi
joined="$(printf '%s,' "${results[@]}")"
echo "{\"attacks\":[${joined%,}]}"
