#!/usr/bin/env bash
# A NAT lab in network namespaces (nl-*): two rendezvous servers, two NAT
# routers with selectable NAT behaviour, three hosts. For hole-punching
# experiments with chatd. Run `scripts/natlab.sh --help` for the details.
#
# Ground rules (see shared/DESIGN.md, "Hole punching"): everything lives in
# namespaces named nl-* that this script creates; all addresses are from
# 10.200.0.0/16; the host's root namespace is never touched (no routes, no
# nft rules, no sysctls there; the kernel may load modules on its own);
# every wait is bounded; `down` removes exactly the namespaces `up` made.
set -euo pipefail

usage() {
    cat <<'EOF'
scripts/natlab.sh: a NAT lab in network namespaces for hole-punching tests.
Needs root, `ip netns`, python3 (selftest); installs the Debian packages
nftables and conntrack itself when they are missing.

Usage:
  scripts/natlab.sh up [--mode-a MODE] [--mode-b MODE] [--loss PCT]
  scripts/natlab.sh mode ROUTER MODE        ROUTER: a | b
  scripts/natlab.sh loss PCT                change the loss on both routers
  scripts/natlab.sh exec NS -- CMD [ARG...] run CMD inside namespace nl-NS
  scripts/natlab.sh status
  scripts/natlab.sh selftest
  scripts/natlab.sh down
  scripts/natlab.sh --help

Topology (all addresses from 10.200.0.0/16):

   nl-srv1 10.200.0.11   nl-srv2 10.200.0.12          rendezvous servers
          \                 /
   nl-inet: bridge br0, the "internet" 10.200.0.0/24 (pure L2, no address)
          /                 \
   nl-nat-a wan 10.200.0.21   nl-nat-b wan 10.200.0.22    NAT routers
   lan 10.200.1.1/24 (bridge) lan 10.200.2.1/24 (bridge)
     |          |                  |
   nl-host-a  nl-host-a2         nl-host-b
   10.200.1.10 10.200.1.11       10.200.2.10     (default route via router)

  Routers have no default route: "the internet" is 10.200.0.0/24, so private
  addresses of the other LAN are unreachable, as in real life. There is no
  hairpinning: host-a2 cannot reach host-a via 10.200.0.21 (only directly).
  Every namespace: lo up, rp_filter=0 (all, default, each interface),
  IPv6 off on all interfaces but lo, bridge-nf-call-{ip,ip6,arp}tables=0
  (new namespaces get 1, and then the router's drop policy would also block
  bridged LAN traffic); bridges have mcast_snooping 0; routers have
  ip_forward=1.

NAT modes (nftables table `ip natlab` in each router; UDP is what matters):
  full-cone        endpoint-independent mapping, endpoint-independent
                   filtering: once host:port sent anything out, any
                   internet host:port can reach it via the mapped port.
  addr-restricted  endpoint-independent mapping, address-dependent
                   filtering: any port of a host the inside already sent
                   to (from that mapping) gets in.
  port-restricted  endpoint-independent mapping, address-and-port-dependent
                   filtering: only the exact ip:port the inside sent to
                   gets in (Linux masquerade + conntrack). Default mode.
  symmetric        endpoint-dependent mapping (a random external port per
                   destination), address-and-port-dependent filtering.
  In every mode the router drops unsolicited inbound on its public side
  (ct state established,related accept, else drop) except what the mode
  lets in; switching a mode flushes the router's conntrack table.
  TCP: port-restricted behaviour in the three cone modes, random ports in
  symmetric.

Commands:
  up        Creates the 8 namespaces nl-inet nl-srv1 nl-srv2 nl-nat-a nl-nat-b
            nl-host-a nl-host-a2 nl-host-b and configures them. Refuses if
            any of them exists already (run `down` first). On failure it
            removes what it created.
            --mode-a MODE, --mode-b MODE  NAT mode of nat-a / nat-b
                                          (default port-restricted)
            --loss PCT   drop PCT% (0..100, default 0) of the IPv4 packets in
                         each direction on both routers' public interfaces
                         (nftables `numgen random mod 100 < PCT drop`, netdev
                         ingress/egress hooks of `wan`; tc netem is absent
                         on this kernel). Loss sits outside the NAT: a
                         packet lost on the way out still made its mapping.
  mode      Switches one router's NAT mode in place: replaces its `ip natlab`
            table atomically and runs `conntrack -F` there. Loss stays.
  loss      Sets the loss (PCT, 0 removes it) on both routers.
  exec      Runs CMD in namespace nl-NS (NS with or without the nl- prefix:
            host-a, nl-host-a, srv1, nat-b, inet, ...). Example:
              scripts/natlab.sh exec srv1 -- target/debug/chatd serve ...
  status    Prints the namespaces, their IPv4 addresses, the routers' modes,
            loss and conntrack entry counts.
  selftest  Brings the lab up (default options) if it is not up, then checks
            with small bounded python3 UDP probes (scripts/natlab-probe.py):
            for each mode, set on both routers: from one socket behind the
            router send to srv1 and srv2; same observed ip:port = endpoint-
            independent mapping, different = endpoint-dependent. Then a fresh
            mapping made by contacting srv1 only: can srv2 reach it (full cone
            only)? can srv1 from another port reach it (full cone and
            addr-restricted)? Prints mode x {mapping, filtering} for router a
            (host-a) and router b (host-b) with PASS/FAIL. Then: host-a <->
            host-a2 on the same LAN; a simultaneous hole punch host-a <->
            host-b to the ports srv1 observed succeeds with port-restricted x
            port-restricted, fails with symmetric x symmetric, and succeeds
            with addr-restricted x symmetric when the cone side answers the
            peer-reflexive source. Restores the routers' modes afterwards
            and leaves the lab up. Exits 1 on any FAIL.
  down      Stops the processes still running inside the lab's namespaces
            (SIGTERM, up to 3 s, then SIGKILL) and deletes the 8 namespaces
            (their interfaces, nft tables and conntrack state go with them).

Example:
  scripts/natlab.sh up --mode-a full-cone --mode-b symmetric --loss 10
  scripts/natlab.sh exec host-a -- ping -c1 10.200.0.11
  scripts/natlab.sh mode b port-restricted
  scripts/natlab.sh down
EOF
}

die() {
    echo "natlab.sh: $*" >&2
    exit 1
}

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROBE="$HERE/natlab-probe.py"
NS_ALL=(nl-inet nl-srv1 nl-srv2 nl-nat-a nl-nat-b nl-host-a nl-host-a2 nl-host-b)
MODES=(full-cone addr-restricted port-restricted symmetric)
PUB_a=10.200.0.21
PUB_b=10.200.0.22

# ---------------------------------------------------------------- helpers

need_root() {
    [[ $(id -u) == 0 ]] || die "must run as root"
    command -v ip >/dev/null || die "iproute2 (ip) is missing"
}

# Installs nftables and conntrack (Debian packages) when missing. Bounded:
# apt-get gets at most 5 minutes per step.
ensure_tools() {
    local missing=()
    command -v nft >/dev/null || missing+=(nftables)
    command -v conntrack >/dev/null || missing+=(conntrack)
    ((${#missing[@]} == 0)) && return 0
    echo "natlab.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! timeout 300 apt-get install -y -q "${missing[@]}" >/dev/null; then
        timeout 300 apt-get update -q >/dev/null || true
        timeout 300 apt-get install -y -q "${missing[@]}" >/dev/null ||
            die "could not install ${missing[*]}"
    fi
    command -v nft >/dev/null && command -v conntrack >/dev/null ||
        die "nft/conntrack still missing after install"
}

ns_exists() { [[ -e /run/netns/$1 ]]; }

lab_count() {
    local n=0 ns
    for ns in "${NS_ALL[@]}"; do ns_exists "$ns" && n=$((n + 1)); done
    echo "$n"
}

in_ns() { # NS CMD...
    local ns=$1
    shift
    ip netns exec "$ns" "$@"
}

valid_mode() {
    local m
    for m in "${MODES[@]}"; do [[ $1 == "$m" ]] && return 0; done
    return 1
}

valid_pct() { [[ $1 =~ ^[0-9]+$ ]] && (($1 <= 100)); }

# Per-namespace sysctls. Runs after the interfaces exist, so the per
# interface rp_filter files are there too.
ns_sysctls() { # NS FORWARD(0|1)
    in_ns "$1" sh -c '
        for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 >"$f"; done
        echo "$1" >/proc/sys/net/ipv4/ip_forward
        for f in /proc/sys/net/bridge/bridge-nf-call-iptables \
                 /proc/sys/net/bridge/bridge-nf-call-ip6tables \
                 /proc/sys/net/bridge/bridge-nf-call-arptables; do
            [ -e "$f" ] && echo 0 >"$f"
        done
        exit 0' sh "$2"
}

# --------------------------------------------------------------- nftables

# The ruleset of one router for one mode, as one atomic nft batch (the
# "add table; delete table; table {...}" idiom replaces any previous one).
#
# How each mode is realised (wan = public interface, lan = LAN bridge):
#  - all modes: forward policy drop; accept ct established,related and
#    lan->wan; input from wan accepts only established,related and ICMP
#    echo; so an unsolicited packet to the public address is dropped
#    before its conntrack entry is confirmed (no stale state, no ICMP
#    port-unreachable that a real NAT would not send).
#  - port-restricted: `snat to PUB` on wan. Linux NAT keeps the source
#    port whenever the translated tuple is unique, so one internal ip:port
#    gets the same external port for every destination (endpoint-
#    independent mapping); inbound only matches conntrack entries, i.e.
#    the exact remote ip:port contacted (address-and-port-dependent
#    filtering).
#  - symmetric: `snat to PUB:1024-65535 random` for udp and tcp (nft 1.0.6
#    needs the explicit l4 match for a port range): each new conntrack
#    entry, i.e. each new destination, gets its own random external port
#    (endpoint-dependent mapping); filtering as above.
#  - full-cone: mapping as port-restricted; a chain in postrouting after
#    SNAT (priority srcnat+50, where the packet already carries the
#    external port) records every outbound UDP mapping in the dynamic map
#    @fc_map: external port -> internal ip . port (refreshed by each
#    outbound packet, timeout 120 s like conntrack's udp stream timeout).
#    In prerouting (dstnat) a new inbound UDP flow to a mapped port is
#    DNATed to the internal ip:port from @fc_map, whoever sends it; the
#    forward chain accepts wan->lan flows with `ct status dnat` (only these
#    rules create DNAT entries). Replies then follow that entry back out
#    with the same external port.
#  - addr-restricted: as full-cone, but the postrouting chain also records
#    remote ip . external port in the dynamic set @ar_peers, and the DNAT
#    rule only fires for inbound packets whose source ip . destination
#    port is in @ar_peers: any port of a host already contacted from that
#    mapping gets in.
#  Limitation (cone modes): two LAN hosts that use the same source port
#  towards different destinations may both keep that port; @fc_map then
#  points at the one that sent last.
nat_ruleset() { # MODE PUB
    local mode=$1 pub=$2
    cat <<EOF
add table ip natlab
delete table ip natlab
table ip natlab {
    comment "mode=$mode"
EOF
    if [[ $mode == full-cone || $mode == addr-restricted ]]; then
        cat <<'EOF'
    map fc_map {
        type inet_service : ipv4_addr . inet_service
        flags dynamic,timeout
        timeout 120s
    }
EOF
    fi
    if [[ $mode == addr-restricted ]]; then
        cat <<'EOF'
    set ar_peers {
        type ipv4_addr . inet_service
        flags dynamic,timeout
        timeout 120s
    }
EOF
    fi
    cat <<'EOF'
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "wan" ct state established,related accept
        iifname "wan" icmp type echo-request accept
        iifname "wan" drop
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan" oifname "wan" accept
EOF
    if [[ $mode == full-cone || $mode == addr-restricted ]]; then
        echo '        iifname "wan" oifname "lan" ct status dnat accept'
    fi
    echo '    }'
    echo '    chain prerouting_nat {'
    echo '        type nat hook prerouting priority dstnat; policy accept;'
    case $mode in
    full-cone)
        echo '        iifname "wan" meta l4proto udp dnat ip to udp dport map @fc_map'
        ;;
    addr-restricted)
        echo '        iifname "wan" meta l4proto udp ip saddr . udp dport @ar_peers dnat ip to udp dport map @fc_map'
        ;;
    esac
    echo '    }'
    echo '    chain postrouting_nat {'
    echo '        type nat hook postrouting priority srcnat; policy accept;'
    if [[ $mode == symmetric ]]; then
        echo "        oifname \"wan\" meta l4proto udp snat ip to $pub:1024-65535 random"
        echo "        oifname \"wan\" meta l4proto tcp snat ip to $pub:1024-65535 random"
    fi
    echo "        oifname \"wan\" snat ip to $pub"
    echo '    }'
    if [[ $mode == full-cone || $mode == addr-restricted ]]; then
        cat <<'EOF'
    chain postrouting_record {
        type filter hook postrouting priority srcnat + 50; policy accept;
        oifname "wan" meta l4proto udp ct direction original update @fc_map { udp sport : ct original ip saddr . ct original proto-src }
        oifname "wan" meta l4proto udp ct direction reply ct status dnat update @fc_map { udp sport : ct reply ip saddr . ct reply proto-src }
EOF
        if [[ $mode == addr-restricted ]]; then
            echo '        oifname "wan" meta l4proto udp update @ar_peers { ip daddr . udp sport }'
        fi
        echo '    }'
    fi
    echo '}'
}

loss_ruleset() { # PCT
    cat <<EOF
add table netdev natlab_loss
delete table netdev natlab_loss
EOF
    (($1 > 0)) || return 0
    # numgen's values are 0..99, so "< 100" is out of its range: drop all.
    local match="numgen random mod 100 < $1"
    (($1 >= 100)) && match=""
    cat <<EOF
table netdev natlab_loss {
    comment "loss=$1"
    chain wan_in {
        type filter hook ingress device "wan" priority filter; policy accept;
        meta protocol ip $match drop
    }
    chain wan_out {
        type filter hook egress device "wan" priority filter; policy accept;
        meta protocol ip $match drop
    }
}
EOF
}

set_mode() { # a|b MODE
    local r=$1 mode=$2 pubvar="PUB_$1"
    valid_mode "$mode" || die "unknown mode '$mode' (one of: ${MODES[*]})"
    ns_exists "nl-nat-$r" || die "nl-nat-$r does not exist (run up first)"
    nat_ruleset "$mode" "${!pubvar}" | in_ns "nl-nat-$r" nft -f - ||
        die "nft failed for nat-$r mode $mode"
    in_ns "nl-nat-$r" conntrack -F >/dev/null 2>&1 || true
}

set_loss() { # PCT
    local r
    valid_pct "$1" || die "loss must be an integer 0..100"
    for r in a b; do
        ns_exists "nl-nat-$r" || die "nl-nat-$r does not exist (run up first)"
        loss_ruleset "$1" | in_ns "nl-nat-$r" nft -f - || die "nft failed for loss on nat-$r"
    done
}

get_mode() { # a|b
    in_ns "nl-nat-$1" nft list table ip natlab 2>/dev/null |
        sed -n 's/.*comment "mode=\([a-z-]*\)".*/\1/p' | head -n1
}

get_loss() { # a|b
    local l
    l=$(in_ns "nl-nat-$1" nft list table netdev natlab_loss 2>/dev/null |
        sed -n 's/.*comment "loss=\([0-9]*\)".*/\1/p' | head -n1)
    echo "${l:-0}"
}

# --------------------------------------------------------------------- up

veth() { # NS1 IF1 NS2 IF2
    ip -n "$1" link add "$2" type veth peer name "$4" netns "$3"
}

do_up() {
    local mode_a=port-restricted mode_b=port-restricted loss=0
    while (($#)); do
        case "$1" in
        --mode-a) (($# >= 2)) || die "--mode-a needs a value"; mode_a=$2; shift 2 ;;
        --mode-a=*) mode_a=${1#*=}; shift ;;
        --mode-b) (($# >= 2)) || die "--mode-b needs a value"; mode_b=$2; shift 2 ;;
        --mode-b=*) mode_b=${1#*=}; shift ;;
        --loss) (($# >= 2)) || die "--loss needs a value"; loss=$2; shift 2 ;;
        --loss=*) loss=${1#*=}; shift ;;
        *) die "up: unknown argument '$1' (see --help)" ;;
        esac
    done
    valid_mode "$mode_a" || die "unknown mode '$mode_a' (one of: ${MODES[*]})"
    valid_mode "$mode_b" || die "unknown mode '$mode_b' (one of: ${MODES[*]})"
    valid_pct "$loss" || die "loss must be an integer 0..100"
    ensure_tools
    (($(lab_count) == 0)) || die "lab (or part of it) exists already: run 'scripts/natlab.sh down' first"

    # On any failure below (set -e or die), remove what was created.
    trap 'echo "natlab.sh: up failed, removing the lab" >&2; do_down >/dev/null 2>&1 || true' EXIT
    local ns
    for ns in "${NS_ALL[@]}"; do
        ip netns add "$ns"
        # Interfaces made from now on get no IPv6 (no fe80:: addresses, no
        # MLD/RS noise); lo exists already and keeps ::1.
        in_ns "$ns" sh -c 'echo 1 >/proc/sys/net/ipv6/conf/default/disable_ipv6' 2>/dev/null || true
        ip -n "$ns" link set lo up
    done

    # The internet: a bridge in nl-inet with one port per public machine.
    ip -n nl-inet link add br0 type bridge mcast_snooping 0
    veth nl-inet srv1 nl-srv1 eth0
    veth nl-inet srv2 nl-srv2 eth0
    veth nl-inet nat-a nl-nat-a wan
    veth nl-inet nat-b nl-nat-b wan
    local p
    for p in srv1 srv2 nat-a nat-b; do
        ip -n nl-inet link set "$p" master br0 up
    done
    ip -n nl-inet link set br0 up

    ip -n nl-srv1 addr add 10.200.0.11/24 dev eth0
    ip -n nl-srv2 addr add 10.200.0.12/24 dev eth0
    ip -n nl-srv1 link set eth0 up
    ip -n nl-srv2 link set eth0 up

    # The routers: wan on the internet, a LAN bridge with one port per host.
    local r net
    for r in a b; do
        net=$([[ $r == a ]] && echo 1 || echo 2)
        local pubvar="PUB_$r"
        ip -n "nl-nat-$r" addr add "${!pubvar}/24" dev wan
        ip -n "nl-nat-$r" link set wan up
        ip -n "nl-nat-$r" link add lan type bridge mcast_snooping 0
        ip -n "nl-nat-$r" addr add "10.200.$net.1/24" dev lan
        ip -n "nl-nat-$r" link set lan up
    done
    veth nl-nat-a host-a nl-host-a eth0
    veth nl-nat-a host-a2 nl-host-a2 eth0
    veth nl-nat-b host-b nl-host-b eth0
    for p in host-a host-a2; do ip -n nl-nat-a link set "$p" master lan up; done
    ip -n nl-nat-b link set host-b master lan up

    local h addr gw
    for h in host-a:10.200.1.10:10.200.1.1 host-a2:10.200.1.11:10.200.1.1 host-b:10.200.2.10:10.200.2.1; do
        IFS=: read -r ns addr gw <<<"$h"
        ip -n "nl-$ns" addr add "$addr/24" dev eth0
        ip -n "nl-$ns" link set eth0 up
        ip -n "nl-$ns" route add default via "$gw"
    done

    for ns in "${NS_ALL[@]}"; do
        case $ns in
        nl-nat-*) ns_sysctls "$ns" 1 ;;
        *) ns_sysctls "$ns" 0 ;;
        esac
    done

    set_mode a "$mode_a"
    set_mode b "$mode_b"
    set_loss "$loss"

    # Bounded wait (5 s) until every interface but lo reports operstate UP
    # (veth carrier on both ends, bridges with a port up; no STP, so bridge
    # ports forward at once). There is no ping on this machine kind.
    local i down_ifs=""
    for i in $(seq 1 50); do
        down_ifs=""
        for ns in "${NS_ALL[@]}"; do
            down_ifs+=$(ip -n "$ns" -br link show | awk -v ns="$ns" '$1 != "lo" && $2 != "UP" {printf " %s:%s", ns, $1}')
        done
        [[ -z $down_ifs ]] && break
        sleep 0.1
    done
    [[ -z $down_ifs ]] || die "interfaces not up after 5 s:$down_ifs"
    # Start with empty conntrack tables.
    for r in a b; do in_ns "nl-nat-$r" conntrack -F >/dev/null 2>&1 || true; done
    trap - EXIT
    echo "natlab.sh: up (nat-a $mode_a, nat-b $mode_b, loss $loss%)"
}

# ------------------------------------------------------------------- down

do_down() {
    local ns pids pid removed=()
    for ns in "${NS_ALL[@]}"; do
        ns_exists "$ns" || continue
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        if [[ -n $pids ]]; then
            echo "natlab.sh: stopping processes in $ns: $(echo $pids)" >&2
            kill -TERM $pids 2>/dev/null || true
            local i
            for i in $(seq 1 30); do
                [[ -z $(ip netns pids "$ns" 2>/dev/null || true) ]] && break
                sleep 0.1
            done
            pids=$(ip netns pids "$ns" 2>/dev/null || true)
            [[ -n $pids ]] && kill -KILL $pids 2>/dev/null || true
        fi
        ip netns delete "$ns"
        removed+=("$ns")
    done
    if ((${#removed[@]})); then
        echo "natlab.sh: removed ${removed[*]}"
    else
        echo "natlab.sh: nothing to remove"
    fi
}

# ----------------------------------------------------------------- status

ns_ifaces() { # NS -> "ifc=addr ifc=port-of-bridge ..." (lo left out)
    local ifc a m out=""
    for ifc in $(ip -n "$1" -br link show | awk '$1 != "lo" {sub(/@.*/, "", $1); print $1}'); do
        a=$(ip -n "$1" -4 -br addr show dev "$ifc" | awk '{print $3}')
        m=$(ip -n "$1" -d link show dev "$ifc" | sed -n 's/.* master \([^ ]*\).*/\1/p')
        if [[ -n $a ]]; then
            out+="$ifc=$a  "
        elif [[ -n $m ]]; then
            out+="$ifc(port of $m)  "
        else
            out+="$ifc(no address)  "
        fi
    done
    echo "$out"
}

do_status() {
    local ns
    if (($(lab_count) == 0)); then
        echo "natlab: down (no nl-* namespaces of the lab)"
        return 0
    fi
    for ns in "${NS_ALL[@]}"; do
        if ! ns_exists "$ns"; then
            printf '%-11s MISSING\n' "$ns"
            continue
        fi
        printf '%-11s %s\n' "$ns" "$(ns_ifaces "$ns")"
    done
    local r
    for r in a b; do
        ns_exists "nl-nat-$r" || continue
        printf 'nat-%s: mode %s, loss %s%%, conntrack entries %s\n' "$r" \
            "$(get_mode "$r")" "$(get_loss "$r")" \
            "$(in_ns "nl-nat-$r" conntrack -C 2>/dev/null || echo '?')"
    done
}

# ---------------------------------------------------------------- selftest

probe() { # ARGS... -> one line of key=value
    timeout 60 python3 "$PROBE" "$@" || echo "probe_error=rc$?"
}

kv() { # LINE KEY
    sed -n "s/.*\(^\| \)$2=\([^ ]*\).*/\2/p" <<<"$1"
}

do_selftest() {
    command -v python3 >/dev/null || die "python3 is needed for selftest"
    [[ -f $PROBE ]] || die "missing $PROBE"
    local n
    n=$(lab_count)
    if ((n == 0)); then
        do_up
    elif ((n != ${#NS_ALL[@]})); then
        die "the lab is only partly there: run 'scripts/natlab.sh down' first"
    fi
    ensure_tools
    # Put the routers' modes back afterwards (globals: the trap runs after
    # this function has returned).
    OLD_MODE_A=$(get_mode a)
    OLD_MODE_B=$(get_mode b)
    trap 'set_mode a "${OLD_MODE_A:-port-restricted}"; set_mode b "${OLD_MODE_B:-port-restricted}"' EXIT
    echo "natlab selftest (loss $(get_loss a)%)"

    local fails=0 m r line exp_map exp_filt got_map got_filt res_map res_filt host pubvar
    declare -A EMAP=([full-cone]=endpoint-independent [addr-restricted]=endpoint-independent
        [port-restricted]=endpoint-independent [symmetric]=endpoint-dependent)
    declare -A EFILT=([full-cone]=endpoint-independent [addr-restricted]=address-dependent
        [port-restricted]=address-and-port-dependent [symmetric]=address-and-port-dependent)
    local details=()
    printf '%-16s %-6s %-31s %-37s\n' MODE ROUTER "MAPPING (expected: result)" "FILTERING (expected: result)"
    for m in "${MODES[@]}"; do
        set_mode a "$m"
        set_mode b "$m"
        for r in a b; do
            pubvar="PUB_$r"
            host=$([[ $r == a ]] && echo 10.200.1.10 || echo 10.200.2.10)
            line=$(probe classify "nl-host-$r" "$host" "${!pubvar}")
            details+=("$m/$r: $line")
            exp_map=${EMAP[$m]}
            exp_filt=${EFILT[$m]}
            got_map=$(kv "$line" mapping)
            got_filt=$(kv "$line" filtering)
            res_map=FAIL
            res_filt=FAIL
            [[ $got_map == "$exp_map" && $(kv "$line" public_ip_ok) == yes ]] && res_map=PASS
            [[ $got_filt == "$exp_filt" ]] && res_filt=PASS
            [[ $res_map == PASS && $res_filt == PASS ]] || fails=$((fails + 1))
            printf '%-16s %-6s %-26s %-4s %-32s %-4s\n' "$m" "$r" "${exp_map}" "$res_map" "${exp_filt}" "$res_filt"
            if [[ $res_map == FAIL || $res_filt == FAIL ]]; then
                echo "    got: $line"
            fi
        done
    done

    echo
    check() { # NAME OK(0|1) LINE
        local res=FAIL
        (($2)) && res=PASS || fails=$((fails + 1))
        printf '%-62s %s\n' "$1" "$res"
        details+=("$1: $3")
        [[ $res == PASS ]] || echo "    got: $3"
    }

    set_mode a port-restricted
    set_mode b port-restricted
    line=$(probe lan)
    check "same LAN host-a <-> host-a2 (direct, no NAT)" "$([[ $(kv "$line" lan) == ok ]] && echo 1 || echo 0)" "$line"

    line=$(probe punch)
    check "punch port-restricted x port-restricted: succeeds" "$([[ $(kv "$line" punch) == ok ]] && echo 1 || echo 0)" "$line"

    set_mode a symmetric
    set_mode b symmetric
    line=$(probe punch --prflx)
    check "punch symmetric x symmetric: fails (as expected)" "$([[ $(kv "$line" punch) == fail ]] && echo 1 || echo 0)" "$line"

    set_mode a addr-restricted
    set_mode b symmetric
    line=$(probe punch --prflx)
    check "punch addr-restricted x symmetric (peer-reflexive): succeeds" "$([[ $(kv "$line" punch) == ok ]] && echo 1 || echo 0)" "$line"

    if [[ -n ${NATLAB_VERBOSE:-} ]]; then
        echo
        printf '%s\n' "${details[@]}"
    fi
    echo
    if ((fails)); then
        echo "natlab selftest: $fails FAIL"
        return 1
    fi
    echo "natlab selftest: all PASS"
}

# ------------------------------------------------------------------- main

(($#)) || {
    usage
    exit 1
}
cmd=$1
shift
case "$cmd" in
-h | --help | help)
    usage
    ;;
up)
    need_root
    do_up "$@"
    ;;
down)
    need_root
    (($# == 0)) || die "down takes no arguments"
    do_down
    ;;
mode)
    need_root
    (($# == 2)) || die "usage: natlab.sh mode a|b MODE"
    [[ $1 == a || $1 == b ]] || die "ROUTER must be a or b"
    ensure_tools
    set_mode "$1" "$2"
    echo "natlab.sh: nat-$1 is $2 (conntrack flushed)"
    ;;
loss)
    need_root
    (($# == 1)) || die "usage: natlab.sh loss PCT"
    ensure_tools
    set_loss "$1"
    echo "natlab.sh: loss $1% on both routers"
    ;;
exec)
    need_root
    (($# >= 1)) || die "usage: natlab.sh exec NS -- CMD..."
    ns=$1
    shift
    [[ $ns == nl-* ]] || ns="nl-$ns"
    known=0
    for x in "${NS_ALL[@]}"; do [[ $x == "$ns" ]] && known=1; done
    ((known)) || die "unknown namespace '$ns' (one of: ${NS_ALL[*]})"
    ns_exists "$ns" || die "$ns does not exist (run up first)"
    [[ ${1:-} == -- ]] && shift
    (($# >= 1)) || die "exec: no command given"
    exec ip netns exec "$ns" "$@"
    ;;
status)
    need_root
    do_status
    ;;
selftest)
    need_root
    (($# == 0)) || die "selftest takes no arguments"
    do_selftest
    ;;
*)
    die "unknown command '$cmd' (see --help)"
    ;;
esac
