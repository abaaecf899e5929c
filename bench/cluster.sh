#!/usr/bin/env bash
# Herald as a cluster on this machine: three nodes on one PostgreSQL database
# with --cluster (Redis, then NATS), against one node, driven by the same
# herald-bench. The cores are shared (every node on core 0, the load on core
# 1), so the figures are ratios of the cost of clustering, not scale-out.
#
#   fan-out:  1,000 subscribers of one room, spread over the nodes, broadcasts
#             published on node A at full speed (one node: all on A)
#   latency:  100 subscribers on node B, progress reports (HTTP) to node A at
#             50/s — the event crosses through PostgreSQL's log — and room
#             broadcasts to A at 50/s — through the broker; the same with the
#             subscribers on A gives the broker's (or the log tail's) share
#
# Usage: bench/cluster.sh [subscribers] [events]   results in artifacts/bench/cluster.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-1000}"; EV="${2:-1000}"
OUT=artifacts/bench; mkdir -p "$OUT"; RESULTS="$OUT/cluster.jsonl"
export HERALD_JWT_SECRET=bench-secret
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
scripts/pg-setup.sh >/dev/null
cargo build --release -q -p herald -p herald-bench
DB=herald_bench_cluster
PG=postgres://postgres@127.0.0.1:5432
PIDS=()
stop() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
  PIDS=()
}
fresh_db() {
  psql -XAtq -d "$PG/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null
  psql -XAtq -d "$PG/postgres" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '$DB'" >/dev/null 2>&1 || true
  psql -XAtq -d "$PG/postgres" -c "CREATE DATABASE $DB" >/dev/null
}
trap 'stop; psql -XAtq -d "$PG/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true' EXIT
wait_ready() { for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$1/readyz" >/dev/null && return 0; sleep 0.1; done; echo "node :$1 not ready"; exit 1; }
node() { # port [cluster url]
  local extra=(); [ -n "${2:-}" ] && extra=(--cluster "$2")
  taskset -c 0 target/release/herald serve --listen "127.0.0.1:$1" --db "$PG/$DB" --messages-per-second 1000000 \
    "${extra[@]}" >"$OUT/cluster-node-$1.log" 2>&1 & PIDS+=($!)
  wait_ready "$1"
}
B="taskset -c 1 target/release/herald-bench --json-out $RESULTS"
A=http://127.0.0.1:4001; BN=http://127.0.0.1:4002; C=http://127.0.0.1:4003

echo "== one node"
fresh_db; node 4001
$B --label "one node" --url $A fanout --subscribers "$N" --events "$EV" --publishers 2 --publish ws
$B --label "one node: report -> subscriber, same node" --url $A fanout --subscribers 100 --events 500 --rate 50 --publish http
$B --label "one node: broadcast -> subscriber, same node" --url $A fanout --subscribers 100 --events 500 --rate 50 --publishers 1 --publish ws
stop

for broker in redis://127.0.0.1:6379 nats://127.0.0.1:4222; do
  echo "== three nodes, $broker"
  fresh_db; node 4001 "$broker"; node 4002 "$broker"; node 4003 "$broker"
  sleep 2 # the nodes hear each other
  $B --label "3 nodes $broker" --url $A --subscribe-urls $A,$BN,$C fanout --subscribers "$N" --events "$EV" --publishers 2 --publish ws
  $B --label "3 nodes $broker: report on A -> subscriber on B" --url $A --subscribe-urls $BN fanout --subscribers 100 --events 500 --rate 50 --publish http
  $B --label "3 nodes $broker: report on A -> subscriber on A" --url $A fanout --subscribers 100 --events 500 --rate 50 --publish http
  $B --label "3 nodes $broker: broadcast on A -> subscriber on B" --url $A --subscribe-urls $BN fanout --subscribers 100 --events 500 --rate 50 --publishers 1 --publish ws
  $B --label "3 nodes $broker: broadcast on A -> subscriber on A" --url $A fanout --subscribers 100 --events 500 --rate 50 --publishers 1 --publish ws
  stop
done
echo "results appended to $RESULTS"
