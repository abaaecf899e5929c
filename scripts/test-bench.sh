#!/usr/bin/env bash
# Smoke test of the load tool against the real server: every workload runs at a
# tiny size, and the delivery invariants it reports must hold (nothing missing,
# duplicated or out of order; no failed request). The figures themselves are
# benchmarks (bench/run-all.sh), never asserted here. `capture` needs Herald on
# PostgreSQL: it runs when one with wal_level=logical answers at $PGHOST
# (scripts/pg-setup.sh), and is skipped, saying so, when none does.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p herald -p herald-bench
BIN="${CARGO_TARGET_DIR:-target}/debug"
DIR=$(mktemp -d)
PORT=4817
export HERALD_JWT_SECRET=bench-smoke-secret
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
# herald_test_*: what scripts/pg-setup.sh sweeps if this run could not drop it.
PGDB="herald_test_bench_$$"
PGPID=""
drop_pgdb() {
  psql -XAtq -d postgres -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
    WHERE slot_name = 'herald_$PGDB' AND NOT active" >/dev/null 2>&1 || true
  psql -XAtq -d postgres -c "DROP DATABASE IF EXISTS $PGDB WITH (FORCE)" >/dev/null 2>&1 || true
}
cleanup() {
  local rc=$?
  # A workload that failed said why on stderr: show it before the directory goes.
  if [ "$rc" -ne 0 ] && [ -s "$DIR/bench.log" ]; then
    echo "herald-bench smoke failed (exit $rc); its last words:"
    tail -n 20 "$DIR/bench.log" | grep -v '^ ' || true
  fi
  for p in $PID $PGPID; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  if [ -n "$PGPID" ]; then
    for _ in $(seq 1 50); do # the slot is active until the server's walsender is gone
      [ "$(psql -XAtq -d postgres -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'herald_$PGDB' AND active")" = 0 ] && break
      sleep 0.1
    done
    drop_pgdb
  fi
  rm -rf "$DIR"
}
wait_port() { for _ in $(seq 1 150); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened"; return 1; }
"$BIN/herald" serve --listen 127.0.0.1:$PORT --db "$DIR/h.db" --messages-per-second 100000 >"$DIR/server.log" 2>&1 &
PID=$!
trap cleanup EXIT
wait_port $PORT

OUT="$DIR/results.jsonl"
B="$BIN/herald-bench --url http://127.0.0.1:$PORT --json-out $OUT --label smoke"
$B fanout --subscribers 20 --events 50 --publishers 2 --publish http >/dev/null 2>>"$DIR/bench.log"
$B fanout --subscribers 20 --events 50 --publishers 2 --publish ws >/dev/null 2>>"$DIR/bench.log"
$B fanout --subscribers 10 --events 20 --rate 100 --publish http >/dev/null 2>>"$DIR/bench.log"
# Its own tenant: Phoenix channels opened within 30 s of a server's start replay
# the log from the start (docs/SUPABASE.md), which holds the runs above.
$B --tenant smoke-supabase --target supabase fanout --subscribers 10 --events 20 --publishers 2 --publish http >/dev/null 2>>"$DIR/bench.log"
$B topics --subscribers 10 --workers 4 --reports 100 >/dev/null 2>>"$DIR/bench.log"
$B ingest --workers 1,4 --duration 1 >/dev/null 2>>"$DIR/bench.log"
$B resume --missed 300 --writers 8 >/dev/null 2>>"$DIR/bench.log"
$B --server-pid $PID idle --connections 50 --hold 1 >/dev/null 2>>"$DIR/bench.log"
$B churn --duration 1 --concurrency 4 >/dev/null 2>>"$DIR/bench.log"
$B streams --batch 1,50 --seconds 1 --in-flight 2 >/dev/null 2>>"$DIR/bench.log"

EXPECTED=10
if pg_isready -q 2>/dev/null && [ "$(psql -XAtq -d postgres -c 'SHOW wal_level' 2>/dev/null)" = logical ]; then
  PGPORT_HERALD=$((PORT + 1))
  drop_pgdb
  psql -XAtq -v ON_ERROR_STOP=1 -d postgres -c "CREATE DATABASE $PGDB"
  psql -XAtq -v ON_ERROR_STOP=1 -d "$PGDB" -c "CREATE TABLE public.bench_rows
    (id bigserial PRIMARY KEY, sent_us bigint NOT NULL, payload text NOT NULL)"
  printf 'default_tenant = "bench"\n[[capture]]\ntable = "public.bench_rows"\n' >"$DIR/capture.toml"
  PGURL="postgres://$PGUSER@$PGHOST:$PGPORT/$PGDB"
  "$BIN/herald" serve --listen 127.0.0.1:$PGPORT_HERALD --db "$PGURL" --config "$DIR/capture.toml" \
    --messages-per-second 100000 >"$DIR/server-pg.log" 2>&1 &
  PGPID=$!
  wait_port $PGPORT_HERALD
  $BIN/herald-bench --url http://127.0.0.1:$PGPORT_HERALD --json-out "$OUT" --label smoke \
    capture --pg-url "$PGURL" --subscribers 10 --rate 50 --duration 1 --writers 2 >/dev/null 2>>"$DIR/bench.log"
  EXPECTED=11
else
  echo "herald-bench smoke: no PostgreSQL with wal_level=logical at $PGHOST:$PGPORT; capture skipped"
fi

python3 - "$OUT" "$EXPECTED" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
expected = int(sys.argv[2])
bad = []
for r in rows:
    w = r["workload"]
    if w in ("fanout", "topics"):
        for k in ("missing", "duplicates", "out_of_order", "closed_by_server", "publish_errors"):
            if r[k] != 0:
                bad.append(f"{w} ({r.get('target')}, {r.get('publish', '')}): {k} = {r[k]}")
        if r["delivered"] != r["expected"]:
            bad.append(f"{w}: delivered {r['delivered']} of {r['expected']}")
    elif w == "capture":
        for k in ("missing", "duplicates", "out_of_order", "closed_by_server", "write_errors"):
            if r[k] != 0:
                bad.append(f"capture: {k} = {r[k]}")
        if not r["rows"] or r["delivered"] != r["expected"]:
            bad.append(f"capture: {r['rows']} rows, delivered {r['delivered']} of {r['expected']}")
    elif w == "ingest":
        bad += [f"ingest {x['workers']} workers: {x['errors']} errors" for x in r["runs"] if x["errors"] or not x["reports"]]
    elif w == "resume":
        bad += [f"resume: {x}" for x in r["runs"] if x["catch_up_seconds"] <= 0]
    elif w == "idle":
        if r["held_after_hold"] != r["connections"]:
            bad.append(f"idle: held {r['held_after_hold']} of {r['connections']}")
    elif w == "streams":
        # The tool itself fails on a gap, a repeat or a refused append; here: it moved chunks.
        bad += [f"streams: batch {x['batch']}: no chunks" for x in r["runs"] if not x["chunks"]]
    elif w == "churn":
        if r["failed"] or not r["cycles"]:
            bad.append(f"churn: {r['failed']} failed, {r['cycles']} cycles")
names = sorted({r["workload"] for r in rows})
if len(rows) != expected:
    bad.append(f"expected {expected} results, got {len(rows)}: {names}")
if bad:
    print("herald-bench smoke FAILED:\n  " + "\n  ".join(bad))
    sys.exit(1)
print(f"herald-bench smoke: {len(rows)} workloads, every delivery invariant held ({', '.join(names)})")
PY
