#!/usr/bin/env bash
# Before/after: runs the headline workloads — fan-out to 1k and 10k subscribers
# (WebSocket broadcast and durable HTTP reports) and ingest from 100 workers —
# against two Herald release builds, alternating A, B, A, B so drift of the
# machine hits both alike. Server on core 0, load on core 1; results appended
# to artifacts/bench/compare.jsonl with labels A:<name> and B:<name>.
# Usage: bench/compare.sh DIR_A NAME_A DIR_B NAME_B [ROUNDS]
#   DIR_x holds release binaries `herald` and `herald-bench` (a target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 4 ] || { echo "usage: $0 DIR_A NAME_A DIR_B NAME_B [ROUNDS]"; exit 2; }
A_DIR=$1 A_NAME=$2 B_DIR=$3 B_NAME=$4 ROUNDS=${5:-2}
OUT=artifacts/bench
mkdir -p "$OUT"
RESULTS="$OUT/compare.jsonl"
export HERALD_JWT_SECRET=bench-secret
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

source bench/lib.sh

run() { # dir name
  local B="taskset -c 1 $1/herald-bench --json-out $RESULTS --label $2"
  start_herald "$1"; $B ingest --workers 100 --duration 10
  for n in 1000 10000; do
    ev=$(( 5000 * 1000 / n )); [ $ev -lt 200 ] && ev=200
    start_herald "$1"; $B fanout --subscribers $n --events $ev --publishers 2 --publish ws
    start_herald "$1"; $B fanout --subscribers $n --events $ev --publishers 8 --publish http
  done
}

for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r: $A_NAME"; run "$A_DIR" "$A_NAME"
  echo "== round $r: $B_NAME"; run "$B_DIR" "$B_NAME"
done
stop
echo "results appended to $RESULTS"
