#!/usr/bin/env bash
# A local chatd cluster on 127.0.0.1: start N servers, ask them how they
# are doing, stop them. Run `scripts/cluster.sh --help` for the details.
set -euo pipefail

usage() {
    cat <<'EOF'
scripts/cluster.sh: a local chatd cluster on 127.0.0.1 (overlay preset "local").

Usage:
  scripts/cluster.sh up N [--dir DIR] [--release] [--quic-base PORT] [--admin-base PORT]
  scripts/cluster.sh status [--dir DIR]
  scripts/cluster.sh down [--dir DIR]
  scripts/cluster.sh --help

up N      Builds chatd (cargo build -p chatd; what it is doing and cargo's
          progress go to stderr), then starts N servers
          (1..50). Server K lives in DIR/sK: its key DIR/sK/chatd.key (made
          with `chatd keygen` on the first `up`, reused afterwards), the JSON
          line it prints at start (DIR/sK/out.json), its log (DIR/sK/log) and
          its PID (DIR/sK/pid). Server 1 starts alone; servers 2..N bootstrap
          through server 1 (and server 2 from server 3 on). Every server gets
          the ids of all N servers as its --allow list. Ports: the first free
          UDP ports from 7000 (QUIC) and free TCP ports from 9100 (admin).
          Prints (on stdout, nothing else) one JSON line per server:
          {"id":..,"addr":"ID@HOST:PORT","admin":"http://.."}.
          Refuses if servers from an earlier `up` in DIR are still running.
status    Prints one table of every server started by the last `up` in
          DIR (`chatd status --admin A --admin B ...`): admin address, id,
          ready or not, uptime, neighbours, live servers, clients, version.
          `chatd members --admin A` lists the servers one of them knows.
down      Sends SIGTERM to exactly the PIDs recorded in DIR/*/pid (only if
          that process is still a `chatd serve` for that directory), waits up
          to 10 s, then SIGKILLs those still alive, removes the pid files and
          prints what it stopped. Never signals any other process.

Options:
  --dir DIR          cluster directory (default: target/cluster under the workspace)
  --release          build and run target/release/chatd instead of target/debug/chatd
  --quic-base PORT   first UDP port to try for QUIC (default 7000)
  --admin-base PORT  first TCP port to try for the admin endpoint (default 9100)
  -h, --help         this text

Example:
  scripts/cluster.sh up 5 && sleep 5 && scripts/cluster.sh status && scripts/cluster.sh down
EOF
}

die() {
    echo "cluster.sh: $*" >&2
    exit 1
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"

cmd=""
n=""
dir=""
profile="debug"
quic_base=7000
admin_base=9100
while (($#)); do
    case "$1" in
    -h | --help)
        usage
        exit 0
        ;;
    --dir)
        (($# >= 2)) || die "--dir needs a value"
        dir="$2"
        shift 2
        ;;
    --dir=*)
        dir="${1#--dir=}"
        shift
        ;;
    --release)
        profile="release"
        shift
        ;;
    --quic-base)
        (($# >= 2)) || die "--quic-base needs a value"
        quic_base="$2"
        shift 2
        ;;
    --admin-base)
        (($# >= 2)) || die "--admin-base needs a value"
        admin_base="$2"
        shift 2
        ;;
    up | down | status)
        [[ -z "$cmd" ]] || die "one command at a time (got $cmd and $1); see --help"
        cmd="$1"
        shift
        ;;
    -*)
        die "unknown option $1; see --help"
        ;;
    *)
        [[ "$cmd" == "up" && -z "$n" ]] || die "unexpected argument $1; see --help"
        n="$1"
        shift
        ;;
    esac
done
[[ -n "$cmd" ]] || {
    usage >&2
    exit 2
}
for p in "$quic_base" "$admin_base"; do
    [[ "$p" =~ ^[0-9]+$ ]] && ((p >= 1024 && p <= 65000)) || die "base port $p is not in 1024..65000"
done

# The cluster directory, absolute (relative to the caller's directory).
if [[ -z "$dir" ]]; then
    dir="$ROOT/target/cluster"
elif [[ "$dir" != /* ]]; then
    dir="$PWD/$dir"
fi
BIN="$TARGET/$profile/chatd"
if [[ "$cmd" != "up" && ! -x "$BIN" && -x "$TARGET/release/chatd" ]]; then
    BIN="$TARGET/release/chatd"
fi

# Server directories DIR/sK in numeric order.
server_dirs() {
    local d
    [[ -d "$dir" ]] || return 0
    for d in "$dir"/s*; do
        [[ -d "$d" && "$(basename "$d")" =~ ^s[0-9]+$ ]] && echo "$d"
    done | sort -V
}

# True if PID is alive and is a `chatd serve` whose --data-dir is $2.
is_our_server() {
    local pid="$1" sdir="$2" args=() i
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    mapfile -d '' -t args <"/proc/$pid/cmdline" 2>/dev/null || return 1
    ((${#args[@]} >= 2)) || return 1
    [[ "$(basename "${args[0]}")" == "chatd" && "${args[1]}" == "serve" ]] || return 1
    for ((i = 2; i + 1 < ${#args[@]}; i++)); do
        [[ "${args[i]}" == "--data-dir" && "${args[i + 1]}" == "$sdir" ]] && return 0
    done
    return 1
}

# Field of the JSON line a server printed at start.
json_field() { # FILE FIELD
    sed -n "s/.*\"$2\":\"\([^\"]*\)\".*/\1/p" "$1" | head -n 1
}

port_free() { # tcp|udp PORT
    local proto="$1" port="$2"
    if command -v ss >/dev/null 2>&1; then
        local flag=-t
        [[ "$proto" == udp ]] && flag=-u
        [[ -z "$(ss -Hna "$flag" "sport = :$port" 2>/dev/null)" ]]
    else
        python3 - "$proto" "$port" <<'PY'
import socket, sys
kind = socket.SOCK_DGRAM if sys.argv[1] == "udp" else socket.SOCK_STREAM
s = socket.socket(socket.AF_INET, kind)
try:
    s.bind(("127.0.0.1", int(sys.argv[2])))
except OSError:
    sys.exit(1)
PY
    fi
}

# Prints COUNT free ports of PROTO from BASE upwards.
free_ports() { # tcp|udp BASE COUNT
    local proto="$1" port="$2" count="$3" found=0
    while ((found < count)); do
        ((port <= 65535)) || die "no $count free $proto ports from $2"
        if port_free "$proto" "$port"; then
            echo "$port"
            found=$((found + 1))
        fi
        port=$((port + 1))
    done
}

# Stops the servers recorded under $dir (see --help). Quiet if none.
stop_servers() {
    local d pid name alive=() names=() i deadline
    while read -r d; do
        [[ -f "$d/pid" ]] || continue
        name="$(basename "$d")"
        pid="$(cat "$d/pid")"
        if is_our_server "$pid" "$d"; then
            kill -TERM "$pid" 2>/dev/null || true
            alive+=("$pid")
            names+=("$name")
        else
            echo "$name: pid $pid was not running"
            rm -f "$d/pid"
        fi
    done < <(server_dirs)
    if ((${#alive[@]} == 0)); then
        echo "no running servers in $dir"
        return 0
    fi
    deadline=$((SECONDS + 10))
    while ((SECONDS < deadline)); do
        local left=0
        for i in "${!alive[@]}"; do
            is_our_server "${alive[i]}" "$dir/${names[i]}" && left=1
        done
        ((left)) || break
        sleep 0.2
    done
    for i in "${!alive[@]}"; do
        if is_our_server "${alive[i]}" "$dir/${names[i]}"; then
            kill -KILL "${alive[i]}" 2>/dev/null || true
            echo "${names[i]}: stopped pid ${alive[i]} (SIGKILL after 10 s)"
        else
            echo "${names[i]}: stopped pid ${alive[i]} (SIGTERM)"
        fi
        rm -f "$dir/${names[i]}/pid"
    done
}

cmd_up() {
    [[ "$n" =~ ^[0-9]+$ ]] && ((n >= 1 && n <= 50)) || die "up needs N in 1..50 (got '${n:-}'); see --help"
    local d pid
    while read -r d; do
        [[ -f "$d/pid" ]] || continue
        pid="$(cat "$d/pid")"
        if is_our_server "$pid" "$d"; then
            die "$dir already has running servers ($(basename "$d") is pid $pid); run: $0 down --dir $dir"
        fi
        rm -f "$d/pid"
    done < <(server_dirs)

    local build=(cargo build -p chatd)
    [[ "$profile" == release ]] && build+=(--release)
    local first=""
    [[ -x "$BIN" ]] || first="; the first build takes a few minutes"
    echo "cluster.sh: building chatd (${build[*]}$first)…" >&2
    # Cargo's progress goes to stderr; stdout carries only the JSON lines.
    local t0=$SECONDS
    (cd "$ROOT" && "${build[@]}") >&2 || die "build failed: ${build[*]}"
    [[ -x "$BIN" ]] || die "no binary at $BIN after the build"
    echo "cluster.sh: built in $((SECONDS - t0)) s" >&2
    echo "cluster.sh: starting $n server(s) in $dir" >&2

    mkdir -p "$dir"
    local k ids=() key id
    for ((k = 1; k <= n; k++)); do
        d="$dir/s$k"
        mkdir -p "$d"
        key="$d/chatd.key"
        if [[ -f "$key" ]]; then
            id="$("$BIN" id --key "$key")" || die "cannot read the key $key"
        else
            id="$("$BIN" keygen --out "$key")" || die "keygen failed for $key"
        fi
        [[ -n "$id" ]] || die "no id for $key"
        ids+=("$id")
        rm -f "$d/out.json"
    done

    local quic=() admin=()
    mapfile -t quic < <(free_ports udp "$quic_base" "$n")
    mapfile -t admin < <(free_ports tcp "$admin_base" "$n")
    ((${#quic[@]} == n && ${#admin[@]} == n)) || die "could not find $n free ports"

    local allow=()
    for key in "${ids[@]}"; do allow+=(--allow "$key"); done

    # If a server does not come up, stop what this run started.
    failed() {
        echo "cluster.sh: stopping the servers started so far" >&2
        stop_servers >&2
        exit 1
    }
    start_server() { # K
        local k="$1" d="$dir/s$1" args=()
        args=(serve --listen "127.0.0.1:${quic[k - 1]}" --admin "127.0.0.1:${admin[k - 1]}"
            --data-dir "$d" --preset local "${allow[@]}")
        if ((k >= 2)); then args+=(--bootstrap "${ids[0]}@127.0.0.1:${quic[0]}"); fi
        if ((k >= 3)); then args+=(--bootstrap "${ids[1]}@127.0.0.1:${quic[1]}"); fi
        NO_COLOR=1 "$BIN" "${args[@]}" >"$d/out.json" 2>"$d/log" </dev/null &
        echo "$!" >"$d/pid"
    }
    wait_server() { # K
        local d="$dir/s$1" deadline=$((SECONDS + 20)) pid
        pid="$(cat "$d/pid")"
        until [[ -s "$d/out.json" ]] && grep -q '"admin"' "$d/out.json"; do
            if ! kill -0 "$pid" 2>/dev/null; then
                echo "cluster.sh: server s$1 (pid $pid) exited during start; tail of $d/log:" >&2
                tail -n 20 "$d/log" >&2 || true
                return 1
            fi
            if ((SECONDS >= deadline)); then
                echo "cluster.sh: server s$1 (pid $pid) did not come up within 20 s; tail of $d/log:" >&2
                tail -n 20 "$d/log" >&2 || true
                return 1
            fi
            sleep 0.1
        done
    }
    # Servers 1 and 2 first (the others bootstrap through them), then the rest.
    start_server 1
    wait_server 1 || failed
    if ((n >= 2)); then
        start_server 2
        wait_server 2 || failed
    fi
    for ((k = 3; k <= n; k++)); do start_server "$k"; done
    for ((k = 3; k <= n; k++)); do wait_server "$k" || failed; done
    for ((k = 1; k <= n; k++)); do head -n 1 "$dir/s$k/out.json"; done
}

cmd_status() {
    local d admin
    local -a args=()
    [[ -x "$BIN" ]] || die "no chatd binary at $BIN; run: $0 up N"
    while read -r d; do
        [[ -f "$d/pid" && -s "$d/out.json" ]] || continue
        admin="$(json_field "$d/out.json" admin)"
        args+=(--admin "${admin#http://}")
    done < <(server_dirs)
    ((${#args[@]})) || die "no servers started in $dir; run: $0 up N"
    # One table; a server that does not answer gets a row saying why, and
    # the exit status is 1.
    "$BIN" status "${args[@]}"
}

case "$cmd" in
up) cmd_up ;;
status) cmd_status ;;
down) stop_servers ;;
esac
