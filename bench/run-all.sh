#!/usr/bin/env bash
# Runs every herald-bench workload against Herald, the bare reference loop and
# Socket.IO, the server pinned to core 0 and the load to core 1, and appends
# each result as a JSON line to artifacts/bench/results.jsonl.
# Usage: bench/run-all.sh [label]        (QUICK=1 for a short smoke run)
set -euo pipefail
cd "$(dirname "$0")/.."
LABEL="${1:-$(git rev-parse --short HEAD 2>/dev/null || echo dev)}"
OUT=artifacts/bench
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
export HERALD_JWT_SECRET=bench-secret

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "open files: $(ulimit -n) (idle runs are capped below this)"
MAXCONN=$(( $(ulimit -n) - 1000 ))

cargo build --release -q -p herald -p herald-bench -p herald-reference
if [ ! -d bench/peers/socketio/node_modules ]; then
  (cd bench/peers/socketio && npm ci --no-audit --no-fund --silent)
fi

source bench/lib.sh
B="taskset -c $LOAD_CPU target/release/herald-bench --json-out $RESULTS --label $LABEL"
start_socketio() { stop; taskset -c $SERVER_CPU node bench/peers/socketio/server.js 4200 2>/dev/null & PID=$!; wait_port 4200; }

if [ "${QUICK:-0}" = 1 ]; then S1=200; S2=1000; EV=500; IDLE=2000; MISSED=10000; DUR=3
else S1=1000; S2=10000; EV=5000; IDLE=$(( MAXCONN < 10000 ? MAXCONN : 10000 )); MISSED=10000,100000; DUR=10; fi

echo "== herald: ingest (durable, fsync on)"
start_herald
$B ingest --workers 1,10,100 --duration $DUR

echo "== herald: resume"
start_herald
$B resume --missed $MISSED

for n in $S1 $S2; do
  ev=$(( EV * 1000 / n )); [ $ev -lt 200 ] && ev=200
  echo "== fanout over WebSocket broadcast, $n subscribers, $ev events: herald / herald's socket.io / reference / socket.io"
  start_herald;    $B --target herald    fanout --subscribers $n --events $ev --publishers 2 --publish ws
  start_herald;    $B --target herald-socketio fanout --subscribers $n --events $ev --publishers 2 --publish ws
  start_reference; $B --url http://127.0.0.1:4100 --target reference fanout --subscribers $n --events $ev --publishers 2 --publish ws
  start_socketio;  $B --url http://127.0.0.1:4200 --target socketio  fanout --subscribers $n --events $(( ev / 4 )) --publishers 2 --publish ws --settle 30
  echo "== herald: fanout of durable progress reports (HTTP), $n subscribers, full speed"
  start_herald;    $B fanout --subscribers $n --events $ev --publishers 8 --publish http
  rate=$(( 100000 / n ))
  echo "== herald: latency at 100k deliveries/s ($n subscribers x $rate reports/s)"
  start_herald;    $B fanout --subscribers $n --events $(( rate * DUR )) --rate $rate --publishers 4 --publish http
done

echo "== herald: latency at 100k deliveries/s (100 subscribers x 1000 reports/s)"
start_herald
$B fanout --subscribers 100 --events $(( 1000 * DUR )) --rate 1000 --publishers 8 --publish http

echo "== herald, Supabase endpoint: postgres_changes on public.jobs to $S1 subscribers (full speed, then Supabase's 64/s)"
start_herald
$B --target supabase fanout --subscribers $S1 --events $(( EV * 1000 / S1 / 2 )) --publishers 8 --publish http
start_herald
$B --target supabase fanout --subscribers $S1 --events $(( 64 * DUR )) --rate 64 --publishers 2 --publish http

echo "== herald: topics (a job per subscriber)"
start_herald
$B topics --subscribers $S1 --workers 16 --reports $(( S1 * 20 ))

echo "== idle connections: server RSS per connection"
start_herald;   $B --server-pid $PID idle --connections $IDLE
start_herald;   $B --target herald-socketio --server-pid $PID idle --connections $IDLE
start_socketio; $B --url http://127.0.0.1:4200 --target socketio --server-pid $PID idle --connections $IDLE
start_reference; $B --url http://127.0.0.1:4100 --target reference --server-pid $PID idle --connections $IDLE

echo "== churn: connect + subscribe + close"
start_herald;   $B churn --duration $DUR
start_socketio; $B --url http://127.0.0.1:4200 --target socketio churn --duration $DUR
stop
echo "results appended to $RESULTS"
