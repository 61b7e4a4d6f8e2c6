#!/usr/bin/env bash
# A latency lab in network namespaces (nl-lat*): seed 003's setting, four
# servers and two clients with 10 ms links, the delays emulated by
# chatd-netem (this kernel has no tc netem). Run `scripts/latlab.sh --help`.
#
# Ground rules (shared/DESIGN.md): everything lives in namespaces named
# nl-lat* that this script creates; all addresses are from 10.200.30.0/24;
# the root namespace is never touched; every wait is bounded; every
# chatd-netem stops by itself (--lifetime); `down` stops only the
# processes `up` started (by PID) and removes exactly its namespaces.
set -Eeuo pipefail

usage() {
    cat <<'EOF'
scripts/latlab.sh: seed 003's latency setting in network namespaces.
Needs root, iproute2, python3 (selftest) and cargo (builds chatd-netem,
unless NETEM_BIN names a built one).

Usage:
  scripts/latlab.sh up [--link MS] [--jitter MS] [--loss PCT] [--lifetime SECS]
  scripts/latlab.sh exec NS -- CMD [ARG...]   run CMD in nl-lat-NS (s1..s4, c1, c2)
  scripts/latlab.sh addr NS                   print NS's address
  scripts/latlab.sh rtt NS                    print NS's emulated RTT (ms) to each other host
  scripts/latlab.sh status
  scripts/latlab.sh selftest
  scripts/latlab.sh down
  scripts/latlab.sh --help

Hosts, on one L2 segment (bridge in nl-lat), no NAT:
  nl-lat-s1 10.200.30.11   nl-lat-s2 10.200.30.12   servers
  nl-lat-s3 10.200.30.13   nl-lat-s4 10.200.30.14
  nl-lat-c1 10.200.30.21   nl-lat-c2 10.200.30.22   clients

Delays: a path of h links of --link ms (default 10) each has a one-way
delay of h x link, added on the sender's egress by the chatd-netem running
in every host namespace (so RTT = 2 x h x link). Hops (seed 003: Serv1 is
the closest server to both clients, Serv3 the second):

         s1 s2 s3 s4 c1 c2
    s1    -  2  2  2  2  2
    s2    2  -  2  2  3  4
    s3    2  2  -  2  3  3
    s4    2  2  2  -  4  3
    c1    2  3  3  4  -  3
    c2    2  4  3  3  3  -

  At 10 ms links: RTT c1->s1 40 ms, ->s2 60, ->s3 60, ->s4 80;
  c2->s1 40, ->s2 80, ->s3 60, ->s4 60; c1<->c2 60. The worse of the two
  clients' RTTs: s1 40, s3 60, s2 80, s4 80, so the min-max server for a
  c1-c2 chat is s1, then s3 (seed 003 starts s1 late).
  --jitter MS adds up to MS per packet (uniform, order kept per
  destination); --loss PCT drops PCT% of every host's outgoing packets.

Commands:
  up        Creates the 7 namespaces and starts one chatd-netem per host,
            each stopping by itself after --lifetime seconds (default
            3600). Refuses if any nl-lat* namespace exists (run `down`).
  selftest  Brings the lab up (defaults) if it is not, then measures UDP
            echo RTTs (python3, 7 echoes, median) from each client to each
            server and between the clients: PASS when the median is at
            least the emulated RTT and less than it + 40 ms, and the
            clients rank the servers as the table says. Leaves the lab up.
            Exits 1 on any FAIL.
  down      Stops the lab's chatd-netem processes (by PID, SIGTERM, up to
            3 s, then SIGKILL) and anything else still running in the
            namespaces, and deletes them.

Example:
  scripts/latlab.sh up --link 10
  scripts/latlab.sh exec s2 -- target/release/chatd serve --listen 10.200.30.12:4433 ...
  scripts/latlab.sh down
EOF
}

die() {
    echo "latlab.sh: $*" >&2
    exit 1
}

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
STATE=/run/nl-lat
HOSTS=(s1 s2 s3 s4 c1 c2)
declare -A ADDR=([s1]=10.200.30.11 [s2]=10.200.30.12 [s3]=10.200.30.13
    [s4]=10.200.30.14 [c1]=10.200.30.21 [c2]=10.200.30.22)
# HOPS[a.b]: links between a and b (symmetric).
declare -A HOPS
hops_row() { # HOST H_s1 H_s2 H_s3 H_s4 H_c1 H_c2
    local a=$1 i=0 b
    shift
    for b in "${HOSTS[@]}"; do
        HOPS[$a.$b]=${@:$((i + 1)):1}
        i=$((i + 1))
    done
}
hops_row s1 0 2 2 2 2 2
hops_row s2 2 0 2 2 3 4
hops_row s3 2 2 0 2 3 3
hops_row s4 2 2 2 0 4 3
hops_row c1 2 3 3 4 0 3
hops_row c2 2 4 3 3 3 0

need_root() {
    [[ $(id -u) == 0 ]] || die "must run as root"
    command -v ip >/dev/null || die "iproute2 (ip) is missing"
}

ns_of() { # s1 | nl-lat-s1 -> nl-lat-s1
    local h=${1#nl-lat-}
    [[ -n ${ADDR[$h]:-} ]] || die "unknown host $1 (one of: ${HOSTS[*]})"
    echo "nl-lat-$h"
}

ns_exists() { [[ -e /run/netns/$1 ]]; }

lab_namespaces() {
    local ns
    for ns in nl-lat "${HOSTS[@]/#/nl-lat-}"; do ns_exists "$ns" && echo "$ns"; done
    return 0
}

netem_bin() {
    if [[ -n ${NETEM_BIN:-} ]]; then
        [[ -x $NETEM_BIN ]] || die "NETEM_BIN=$NETEM_BIN is not executable"
        echo "$NETEM_BIN"
        return
    fi
    echo "latlab.sh: building chatd-netem (cargo build --release -p netem)" >&2
    (cd "$ROOT" && cargo build -q --release -p netem) >&2 || die "cargo build failed"
    echo "$ROOT/target/release/chatd-netem"
}

valid_num() { [[ $1 =~ ^[0-9]+(\.[0-9]+)?$ ]]; }

cmd_up() {
    local link=10 jitter=0 loss=0 lifetime=3600
    while (($#)); do
        case $1 in
        --link) link=${2:?--link MS}; shift 2 ;;
        --jitter) jitter=${2:?--jitter MS}; shift 2 ;;
        --loss) loss=${2:?--loss PCT}; shift 2 ;;
        --lifetime) lifetime=${2:?--lifetime SECS}; shift 2 ;;
        *) die "up: unknown option $1 (see --help)" ;;
        esac
    done
    valid_num "$link" || die "--link $link: milliseconds expected"
    valid_num "$jitter" || die "--jitter $jitter: milliseconds expected"
    valid_num "$loss" || die "--loss $loss: a percentage expected"
    [[ $lifetime =~ ^[0-9]+$ ]] && ((lifetime > 0)) || die "--lifetime $lifetime: seconds expected"
    need_root
    [[ -z $(lab_namespaces) ]] || die "the lab is (partly) up: run \`scripts/latlab.sh down\` first"
    local bin
    bin=$(netem_bin)
    mkdir -p "$STATE"
    cp -f "$bin" "$STATE/chatd-netem"
    trap 'echo "latlab.sh: up failed, removing what it made" >&2; cmd_down >/dev/null 2>&1 || true' ERR
    ip netns add nl-lat
    ip -n nl-lat link set lo up
    ip -n nl-lat link add br0 type bridge
    ip -n nl-lat link set br0 type bridge mcast_snooping 0
    ip -n nl-lat link set br0 up
    local h ns
    for h in "${HOSTS[@]}"; do
        ns=nl-lat-$h
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip link add eth0 netns "$ns" type veth peer name "$h" netns nl-lat
        ip -n nl-lat link set "$h" master br0
        ip -n nl-lat link set "$h" up
        ip -n "$ns" addr add "${ADDR[$h]}/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip netns exec "$ns" sh -c 'echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6' || true
    done
    echo "link=$link jitter=$jitter loss=$loss lifetime=$lifetime" >"$STATE/params"
    local b args
    for h in "${HOSTS[@]}"; do
        args=(--src "${ADDR[$h]}" --max-secs "$lifetime" --seed "$((RANDOM + 1))" --dev nlem0)
        for b in "${HOSTS[@]}"; do
            [[ $b == "$h" ]] && continue
            args+=(--to "${ADDR[$b]}=$(awk -v h="${HOPS[$h.$b]}" -v l="$link" 'BEGIN{print h*l}')~$jitter/$loss%")
        done
        ip netns exec "nl-lat-$h" "$STATE/chatd-netem" "${args[@]}" \
            >"$STATE/$h.stats" 2>"$STATE/$h.log" &
        echo $! >"$STATE/$h.pid"
    done
    # Bounded wait until every host routes through its device.
    local deadline=$((SECONDS + 20))
    for h in "${HOSTS[@]}"; do
        until ip netns exec "nl-lat-$h" ip route show table 100 2>/dev/null | grep -q nlem0; do
            ((SECONDS < deadline)) || die "chatd-netem in nl-lat-$h did not start: $(cat "$STATE/$h.log")"
            kill -0 "$(cat "$STATE/$h.pid")" 2>/dev/null ||
                die "chatd-netem in nl-lat-$h exited: $(cat "$STATE/$h.log")"
            sleep 0.1
        done
    done
    trap - ERR
    echo "latlab.sh: up: 4 servers, 2 clients, ${link} ms links (jitter ${jitter} ms, loss ${loss}%), for ${lifetime} s"
}

cmd_down() {
    need_root
    local h pid ns
    for h in "${HOSTS[@]}"; do
        [[ -f $STATE/$h.pid ]] || continue
        pid=$(cat "$STATE/$h.pid")
        # Only our own chatd-netem (the PID may have been reused).
        if [[ $(cat "/proc/$pid/comm" 2>/dev/null) == chatd-netem ]]; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for ns in $(lab_namespaces); do
        local pids deadline=$((SECONDS + 3))
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [[ -n $pids ]] && kill -TERM $pids 2>/dev/null || true
        while [[ -n $(ip netns pids "$ns" 2>/dev/null) ]] && ((SECONDS < deadline)); do sleep 0.1; done
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [[ -n $pids ]] && kill -KILL $pids 2>/dev/null || true
        ip netns del "$ns"
    done
    rm -rf "$STATE"
    echo "latlab.sh: down"
}

cmd_rtt() { # HOST: emulated RTT to each other host
    local a=${1#nl-lat-} b link
    ns_of "$a" >/dev/null
    link=$(sed -n 's/.*link=\([0-9.]*\).*/\1/p' "$STATE/params" 2>/dev/null || echo 10)
    for b in "${HOSTS[@]}"; do
        [[ $b == "$a" ]] && continue
        echo "$b $(awk -v h="${HOPS[$a.$b]}" -v l="$link" 'BEGIN{print 2*h*l}')"
    done
}

cmd_status() {
    local ns
    if [[ -z $(lab_namespaces) ]]; then
        echo "latlab: down"
        return
    fi
    echo "latlab: up ($(cat "$STATE/params" 2>/dev/null || echo 'no params'))"
    local h
    for h in "${HOSTS[@]}"; do
        ns=nl-lat-$h
        if ns_exists "$ns"; then
            printf '  %-10s %-14s netem pid %s, last: %s\n' "$ns" "${ADDR[$h]}" \
                "$(cat "$STATE/$h.pid" 2>/dev/null || echo -)" \
                "$(tail -n1 "$STATE/$h.stats" 2>/dev/null || true)"
        fi
    done
}

RTT="$HERE/udp-rtt.py"

cmd_selftest() {
    need_root
    command -v python3 >/dev/null || die "python3 is missing"
    [[ -n $(lab_namespaces) ]] || cmd_up
    local h fail=0 echoes=()
    for h in "${HOSTS[@]}"; do
        ip netns exec "nl-lat-$h" python3 "$RTT" serve 7779 30 &
        echoes+=($!)
    done
    sleep 0.3
    declare -A got
    printf '%-8s %-6s %10s %10s  %s\n' from to emulated measured result
    local a b want m
    for a in c1 c2; do
        for b in s1 s2 s3 s4 c1 c2; do
            [[ $a == "$b" || ($a == c2 && $b == c1) ]] && continue
            want=$(cmd_rtt "$a" | awk -v b="$b" '$1==b{print $2}')
            m=$(ip netns exec "nl-lat-$a" python3 "$RTT" ping "${ADDR[$b]}" 7779 7 | tail -n1)
            got[$a.$b]=$m
            local ok=FAIL
            if [[ $m != lost ]] && awk -v m="$m" -v w="$want" 'BEGIN{exit !(m >= w && m < w + 40)}'; then
                ok=PASS
            fi
            [[ $ok == PASS ]] || fail=1
            printf '%-8s %-6s %8s ms %8s ms  %s\n' "$a" "$b" "$want" "$m" "$ok"
        done
    done
    # Each client ranks s1 first (by 20 ms per hop of difference).
    for a in c1 c2; do
        for b in s2 s3 s4; do
            if ! awk -v x="${got[$a.s1]}" -v y="${got[$a.$b]}" 'BEGIN{exit !(x + 0 < y + 0)}'; then
                echo "FAIL: $a does not measure s1 closer than $b" >&2
                fail=1
            fi
        done
    done
    kill "${echoes[@]}" 2>/dev/null || true
    wait "${echoes[@]}" 2>/dev/null || true
    ((fail == 0)) && echo "latlab selftest: PASS" || { echo "latlab selftest: FAIL"; return 1; }
}

case ${1:-} in
up) shift; cmd_up "$@" ;;
down) cmd_down ;;
status) cmd_status ;;
selftest) cmd_selftest ;;
addr) shift; h=$(ns_of "${1:?addr NS}"); echo "${ADDR[${h#nl-lat-}]}" ;;
rtt) shift; cmd_rtt "${1:?rtt NS}" ;;
exec)
    shift
    ns=$(ns_of "${1:?exec NS -- CMD}")
    shift
    [[ ${1:-} == -- ]] && shift
    (($#)) || die "exec: no command"
    exec ip netns exec "$ns" "$@"
    ;;
-h | --help | help) usage ;;
*) usage >&2; exit 2 ;;
esac
