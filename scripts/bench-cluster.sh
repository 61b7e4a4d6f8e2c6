#!/usr/bin/env bash
# Cluster benchmark (issue 5): N servers on loopback (default 20), 10,000
# client records registered through all of them; prints replication latency
# p50/p99 (registered at one server -> returned by every server), lookups/s
# per server over an open connection, and resident memory per server.
#
#   scripts/bench-cluster.sh [SERVERS] [RECORDS]
#
# Starts its own cluster in target/bench-cluster with scripts/cluster.sh and
# stops exactly those processes at the end (also on failure).
set -euo pipefail
cd "$(dirname "$0")/.."
servers=${1:-20}
records=${2:-10000}
dir=target/bench-cluster

cargo build -q --release -p chatd --example bench_cluster
scripts/cluster.sh down --dir "$dir" >/dev/null 2>&1 || true
trap 'scripts/cluster.sh down --dir "$dir" >/dev/null 2>&1 || true' EXIT
scripts/cluster.sh up "$servers" --dir "$dir" --release >/dev/null
# Let membership settle (every server knows every other).
sleep 3
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
target/release/examples/bench_cluster --dir "$dir" --records "$records"
