#!/usr/bin/env bash
# Smoke test of the load tool against the real server: every workload runs at a
# tiny size, and the delivery invariants it reports must hold (nothing missing,
# duplicated or out of order; no failed request). The figures themselves are
# benchmarks (bench/run-all.sh), never asserted here.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p herald -p herald-bench
DIR=$(mktemp -d)
PORT=4817
export HERALD_JWT_SECRET=bench-smoke-secret
target/debug/herald serve --listen 127.0.0.1:$PORT --db "$DIR/h.db" --messages-per-second 100000 >"$DIR/server.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done

OUT="$DIR/results.jsonl"
B="target/debug/herald-bench --url http://127.0.0.1:$PORT --json-out $OUT --label smoke"
$B fanout --subscribers 20 --events 50 --publishers 2 --publish http >/dev/null 2>>"$DIR/bench.log"
$B fanout --subscribers 20 --events 50 --publishers 2 --publish ws >/dev/null 2>>"$DIR/bench.log"
$B fanout --subscribers 10 --events 20 --rate 100 --publish http >/dev/null 2>>"$DIR/bench.log"
$B --target supabase fanout --subscribers 10 --events 20 --publishers 2 --publish http >/dev/null 2>>"$DIR/bench.log"
$B topics --subscribers 10 --workers 4 --reports 100 >/dev/null 2>>"$DIR/bench.log"
$B ingest --workers 1,4 --duration 1 >/dev/null 2>>"$DIR/bench.log"
$B resume --missed 300 --writers 8 >/dev/null 2>>"$DIR/bench.log"
$B --server-pid $PID idle --connections 50 --hold 1 >/dev/null 2>>"$DIR/bench.log"
$B churn --duration 1 --concurrency 4 >/dev/null 2>>"$DIR/bench.log"

python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
bad = []
for r in rows:
    w = r["workload"]
    if w in ("fanout", "topics"):
        for k in ("missing", "duplicates", "out_of_order", "closed_by_server", "publish_errors"):
            if r[k] != 0:
                bad.append(f"{w} ({r.get('target')}, {r.get('publish', '')}): {k} = {r[k]}")
        if r["delivered"] != r["expected"]:
            bad.append(f"{w}: delivered {r['delivered']} of {r['expected']}")
    elif w == "ingest":
        bad += [f"ingest {x['workers']} workers: {x['errors']} errors" for x in r["runs"] if x["errors"] or not x["reports"]]
    elif w == "resume":
        bad += [f"resume: {x}" for x in r["runs"] if x["catch_up_seconds"] <= 0]
    elif w == "idle":
        if r["held_after_hold"] != r["connections"]:
            bad.append(f"idle: held {r['held_after_hold']} of {r['connections']}")
    elif w == "churn":
        if r["failed"] or not r["cycles"]:
            bad.append(f"churn: {r['failed']} failed, {r['cycles']} cycles")
names = sorted({r["workload"] for r in rows})
if len(rows) != 9:
    bad.append(f"expected 9 results, got {len(rows)}: {names}")
if bad:
    print("herald-bench smoke FAILED:\n  " + "\n  ".join(bad))
    sys.exit(1)
print(f"herald-bench smoke: {len(rows)} workloads, every delivery invariant held ({', '.join(names)})")
PY
