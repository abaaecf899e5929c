#!/usr/bin/env bash
# Lean frames (issue 16): room-broadcast fan-out with a ~100-byte payload —
# Herald's JSON frames, Herald's compact frames (herald.v1c), and the bare
# reference loop writing the bare payload (the floor of any protocol) and
# Herald's compact frame. Rounds alternate the servers so drift of the
# machine hits all alike. Each line gives deliveries/s (bound by the load
# core as much as by the server: compare medians) and the server's CPU time
# per delivery (user + system, read from /proc: the steadier figure). Then
# job output streams: chunks per second one stream sustains and append →
# reader latency. Server on core 0, load on core 1; results appended to
# artifacts/bench/results.jsonl.
# Usage: bench/frames.sh [label]   (SUBS=1000 EVENTS=10000 ROUNDS=3 by default)
#
# Herald runs with --outbox-capacity 16384, the reference loop's ring size:
# with the default 4,096 a subscriber on the saturated load core falls that
# far behind and is cut off as a slow consumer (broadcasts are never
# conflated), which the reference loop would instead skip silently.
set -euo pipefail
cd "$(dirname "$0")/.."
LABEL="${1:-$(git rev-parse --short HEAD 2>/dev/null || echo dev)}"
OUT=artifacts/bench
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
SUBS="${SUBS:-1000}"
EVENTS="${EVENTS:-10000}"
ROUNDS="${ROUNDS:-3}"
export HERALD_JWT_SECRET=bench-secret
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release -q -p herald -p herald-bench -p herald-reference
source bench/lib.sh
B="taskset -c $LOAD_CPU target/release/herald-bench --json-out $RESULTS --label $LABEL --payload-bytes 100"
FAN="fanout --subscribers $SUBS --events $EVENTS --publishers 2 --publish ws"

# summary NAME: the last result's deliveries/s and the server's CPU per delivery (call before stop).
summary() {
  local ticks
  ticks=$(awk '{print $14 + $15}' "/proc/$PID/stat")
  tail -n 1 "$RESULTS" | python3 -c '
import json, os, sys
r = json.load(sys.stdin)
cpu = int(sys.argv[2]) / os.sysconf("SC_CLK_TCK")
n = max(r.get("delivered", 0), 1)
rate, missing = r["deliveries_per_sec"], r.get("missing", 0)
print(f"  {sys.argv[1]:<18} {rate:>11,.0f} deliveries/s  server CPU {cpu * 1e9 / n:>4.0f} ns/delivery  (missing {missing})")
' "$1" "$ticks"
}

echo "== room broadcast fan-out, $SUBS subscribers x $EVENTS events, ~100-byte payload, $ROUNDS rounds"
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round"
  start_reference; $B --url http://127.0.0.1:4100 --target reference --reference-frame bare $FAN >/dev/null 2>&1; summary "reference bare"
  for enc in compact json; do
    start_herald --outbox-capacity 16384; $B --encoding $enc $FAN >/dev/null 2>&1; summary "herald $enc"
  done
  start_reference; $B --url http://127.0.0.1:4100 --target reference --reference-frame compact $FAN >/dev/null 2>&1; summary "reference compact"
done
echo "== job output streams: one stream, 4 appends in flight"
start_herald; $B streams --batch 1,10,100 --seconds 10 --in-flight 4
