#!/usr/bin/env bash
# Lean frames (issue 16): room-broadcast fan-out with a ~100-byte payload —
# Herald's JSON frames, Herald's compact frames (herald.v1c), and the bare
# reference loop writing the bare payload (the floor of any protocol), its
# JSON frame and its compact frame. Then job output streams: chunks per
# second one stream sustains and append → reader latency. Server on core 0,
# load on core 1; results appended to artifacts/bench/results.jsonl.
# Usage: bench/frames.sh [label]   (SUBS=1000 EVENTS=2000 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
LABEL="${1:-$(git rev-parse --short HEAD 2>/dev/null || echo dev)}"
OUT=artifacts/bench
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
SUBS="${SUBS:-1000}"
EVENTS="${EVENTS:-2000}"
export HERALD_JWT_SECRET=bench-secret
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release -q -p herald -p herald-bench -p herald-reference
B="taskset -c 1 target/release/herald-bench --json-out $RESULTS --label $LABEL --payload-bytes 100"
source bench/lib.sh
summary() { tail -n 1 "$RESULTS" | python3 -c 'import json,sys; r=json.load(sys.stdin); d=r["deliveries_per_sec"]; m=r.get("missing", 0); print(f"  {sys.argv[1]:<20} {d:>12,.0f} deliveries/s  (missing {m})")' "$1"; }

echo "== room broadcast fan-out, $SUBS subscribers x $EVENTS events, ~100-byte payload"
for enc in json compact; do
  start_herald; $B --encoding $enc fanout --subscribers "$SUBS" --events "$EVENTS" --publishers 2 --publish ws >/dev/null; summary "herald $enc"
done
for frame in bare herald compact; do
  start_reference; $B --url http://127.0.0.1:4100 --target reference --reference-frame $frame fanout --subscribers "$SUBS" --events "$EVENTS" --publishers 2 --publish ws >/dev/null; summary "reference $frame"
done
echo "== job output streams: one stream, 4 appends in flight"
start_herald; $B streams --batch 1,10,100 --seconds 10 --in-flight 4
