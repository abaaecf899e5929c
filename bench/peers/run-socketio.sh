#!/usr/bin/env bash
# Socket.IO 4 beside Herald: installs socket.io from npm (default adapter,
# websocket transport), then runs the same fanout and idle workloads with the
# same herald-bench against Herald (its native protocol and its Socket.IO
# endpoint), the bare reference loop and Socket.IO, so every comparison is a
# ratio measured in one run on one machine.
# Usage: bench/peers/run-socketio.sh [subscribers] [events]
set -euo pipefail
cd "$(dirname "$0")/../.."
N="${1:-1000}"; EV="${2:-2000}"
OUT=artifacts/bench; mkdir -p "$OUT"; RESULTS="$OUT/peers.jsonl"
export HERALD_JWT_SECRET=bench-secret
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release -q -p herald -p herald-bench -p herald-reference
(cd bench/peers/socketio && { [ -d node_modules ] || npm ci --no-audit --no-fund --silent; })

PID=""
stop() { if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; fi; }
trap stop EXIT
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; exit 1; }
B="taskset -c 1 target/release/herald-bench --json-out $RESULTS --label peers"

rm -rf "$OUT/peer-db"; mkdir -p "$OUT/peer-db"
taskset -c 0 target/release/herald serve --listen 127.0.0.1:4000 --db "$OUT/peer-db/h.db" \
  --messages-per-second 1000000 >/dev/null 2>&1 & PID=$!; wait_port 4000
$B --target herald fanout --subscribers "$N" --events "$EV" --publishers 2 --publish ws
$B --target herald-socketio fanout --subscribers "$N" --events "$EV" --publishers 2 --publish ws
stop
# Idle memory on a fresh server each: after a fan-out, RSS holds memory the idle run would reuse.
for t in herald herald-socketio; do
  rm -rf "$OUT/peer-db"; mkdir -p "$OUT/peer-db"
  taskset -c 0 target/release/herald serve --listen 127.0.0.1:4000 --db "$OUT/peer-db/h.db" >/dev/null 2>&1 & PID=$!; wait_port 4000
  $B --target $t --server-pid $PID idle --connections "$N"
  stop
done
taskset -c 0 target/release/herald-reference 127.0.0.1:4100 2>/dev/null & PID=$!; wait_port 4100
$B --url http://127.0.0.1:4100 --target reference fanout --subscribers "$N" --events "$EV" --publishers 2 --publish ws
stop
taskset -c 0 node bench/peers/socketio/server.js 4200 2>/dev/null & PID=$!; wait_port 4200
$B --url http://127.0.0.1:4200 --target socketio fanout --subscribers "$N" --events "$EV" --publishers 2 --publish ws --settle 30
$B --url http://127.0.0.1:4200 --target socketio --server-pid $PID idle --connections "$N"
echo "results appended to $RESULTS"
