#!/usr/bin/env bash
# Herald on PostgreSQL: durable ingest beside Herald on SQLite, SQL commit →
# subscriber latency of a captured table (`capture`), and durable fan-out of
# HTTP progress reports. The server is pinned to core 0 and the load to core 1
# (as bench/run-all.sh); each run gets a fresh database. Results are appended
# as JSON lines to artifacts/bench/results.jsonl, labelled "<label>/sqlite" or
# "<label>/postgres", and summarised at the end.
#
# Usage: bench/pg.sh [label]
#   DURATION=s   seconds per run (default 20)
#   QUICK=1      every run 3 s: a smoke, not a measurement
#   PIN_PG=1     also pin PostgreSQL (the postmaster and every backend) to the
#                server's core for the run, so Herald and its database share one
#                core as Herald on SQLite does; restored to all cores at exit.
#                This moves the backends of everyone using that PostgreSQL.
# Needs PostgreSQL with wal_level=logical at $PGHOST:$PGPORT (scripts/pg-setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
LABEL="${1:-$(git rev-parse --short HEAD 2>/dev/null || echo dev)}"
OUT=artifacts/bench
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
LOG="$OUT/herald.log"
SERVER_CPU=0
LOAD_CPU=1
export HERALD_JWT_SECRET=bench-secret
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
DB=herald_bench
SLOT="herald_$DB"
PG_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$DB"
TABLE=public.bench_rows
BIN="${CARGO_TARGET_DIR:-target}/release"

if [ "${QUICK:-0}" = 1 ]; then DUR=3; else DUR="${DURATION:-20}"; fi
# Full-speed fan-out publishes a fixed number of reports: about DUR seconds' worth on SQLite.
FANOUT_EVENTS=$(( 250 * DUR ))

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

psqlq() { psql -XAtq -v ON_ERROR_STOP=1 -d "$1" -c "$2"; }
pg_isready -q || { echo "PostgreSQL is not accepting connections at $PGHOST:$PGPORT (scripts/pg-setup.sh starts it)"; exit 1; }
if [ "$(psqlq postgres 'SHOW wal_level')" != logical ]; then
  echo "PostgreSQL needs wal_level=logical for Herald (scripts/pg-setup.sh sets it)"; exit 1
fi

cargo build --release -q -p herald -p herald-bench

B="taskset -c $LOAD_CPU $BIN/herald-bench --json-out $RESULTS"
PID=""
stop() { if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; fi; }

PG_PINNED=""
pg_pids() { # the postmaster and its children, now
  local pm
  pm=$(head -1 "$(psqlq postgres 'SHOW data_directory')/postmaster.pid")
  echo "$pm"; ps -o pid= --ppid "$pm"
}
pin_pg() {
  [ "${PIN_PG:-0}" = 1 ] || return 0
  for p in $(pg_pids); do taskset -a -p -c "$SERVER_CPU" "$p" >/dev/null 2>&1 || true; done
  PG_PINNED=1
}
unpin_pg() {
  [ -n "$PG_PINNED" ] || return 0
  for p in $(pg_pids); do taskset -a -p -c 0-"$(( $(nproc) - 1 ))" "$p" >/dev/null 2>&1 || true; done
  PG_PINNED=""
}

wait_port() { # port: Herald on PostgreSQL creates its schema and slot before it listens
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$PID" 2>/dev/null || { echo "herald exited; the end of $LOG:"; tail -20 "$LOG"; exit 1; }
    sleep 0.1
  done
  echo "port $1 never opened"; exit 1
}

# Drops database $DB and Herald's slot in it (without which the drop fails,
# and which would hold back WAL if left behind).
drop_pg() {
  for _ in $(seq 1 100); do # the slot stays active until the stopped server's walsender is gone
    [ "$(psqlq postgres "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$SLOT' AND active")" = 0 ] && break
    sleep 0.1
  done
  psqlq postgres "SELECT pg_drop_replication_slot('$SLOT') FROM pg_replication_slots WHERE slot_name = '$SLOT'" >/dev/null
  psqlq postgres "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
}
# A new database $DB with the captured table.
fresh_pg() {
  drop_pg
  psqlq postgres "CREATE DATABASE $DB"
  psqlq "$DB" "CREATE TABLE $TABLE (id bigserial PRIMARY KEY, sent_us bigint NOT NULL, payload text NOT NULL)"
  PG_USED=1
}
PG_USED=""
trap 'stop; unpin_pg; if [ -n "$PG_USED" ]; then drop_pg || true; fi' EXIT

CONFIG="$OUT/herald.toml"
cat >"$CONFIG" <<EOF
# Written by bench/pg.sh: the table the capture workload writes.
default_tenant = "bench"

[[capture]]
table = "$TABLE"
EOF

SERVE="serve --listen 127.0.0.1:4000 --messages-per-second 1000000 --max-subscriptions 1000"
: >"$LOG"
start_sqlite() { # run name
  stop
  rm -rf "$OUT/herald-db" && mkdir -p "$OUT/herald-db"
  echo "=== $1 (sqlite) $(date -u +%FT%TZ)" >>"$LOG"
  taskset -c $SERVER_CPU "$BIN/herald" $SERVE --db "$OUT/herald-db/herald.db" >>"$LOG" 2>&1 &
  PID=$!
  wait_port 4000
}
start_pg() { # run name
  stop
  fresh_pg
  echo "=== $1 (postgres) $(date -u +%FT%TZ)" >>"$LOG"
  taskset -c $SERVER_CPU "$BIN/herald" $SERVE --db "$PG_URL" --config "$CONFIG" >>"$LOG" 2>&1 &
  PID=$!
  wait_port 4000
  pin_pg
}

FIRST=$(( $( (wc -l <"$RESULTS") 2>/dev/null || echo 0) + 1 ))

echo "== ingest, 100 workers, ${DUR}s: Herald on SQLite (fsync on every commit)"
start_sqlite ingest
$B --label "$LABEL/sqlite" ingest --workers 100 --duration "$DUR"

echo "== ingest, 100 workers, ${DUR}s: Herald on PostgreSQL (synchronous_commit=$(psqlq postgres 'SHOW synchronous_commit'))"
start_pg ingest
$B --label "$LABEL/postgres" ingest --workers 100 --duration "$DUR"

for rate in 200 1000; do
  echo "== capture: INSERT into $TABLE at $rate rows/s for ${DUR}s, 1000 subscribers of table:$TABLE"
  start_pg "capture $rate/s"
  $B --label "$LABEL/postgres" capture --pg-url "$PG_URL" --table "$TABLE" --subscribers 1000 --rate "$rate" \
    --duration "$DUR"
done

echo "== fanout of durable progress reports (HTTP), 1000 subscribers of one job, 100 reports/s: PostgreSQL"
start_pg "fanout 100/s"
$B --label "$LABEL/postgres" fanout --subscribers 1000 --events $(( 100 * DUR )) --rate 100 --publishers 4 --publish http

echo "== fanout of durable progress reports (HTTP), 1000 subscribers of one job, full speed: PostgreSQL"
start_pg "fanout full speed"
$B --label "$LABEL/postgres" fanout --subscribers 1000 --events "$FANOUT_EVENTS" --publishers 8 --publish http
stop
unpin_pg
drop_pg
PG_USED=""

echo
echo "== summary (${DUR}s runs$([ "${QUICK:-0}" = 1 ] && echo ', QUICK: smoke figures, not measurements'))"
python3 - "$RESULTS" "$FIRST" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines()[int(sys.argv[2]) - 1:]
rows = [json.loads(l) for l in lines if l.strip()]
def lat(h, what):
    return f"{h['p50']:.1f} / {h['p90']:.1f} / {h['p99']:.1f} / {h['max']:.1f} ({what})"
table = [("run", "backend", "throughput", "latency ms p50 / p90 / p99 / max", "lost")]
for r in rows:
    backend = r.get("label", "").rsplit("/", 1)[-1]
    w = r["workload"]
    if w == "ingest":
        for x in r["runs"]:
            table.append((f"ingest, {x['workers']} workers", backend,
                          f"{x['reports_per_sec']:,.0f} reports/s (commit batch {x['mean_commit_batch']:.1f})",
                          lat(x["latency_ms"], "HTTP ack"), f"{x['errors']} errors"))
    elif w == "capture":
        table.append((f"capture, {r['rate']} rows/s x {r['subscribers']} subscribers", backend,
                      f"{r['rows_per_sec']:,.0f} rows/s, {r['deliveries_per_sec']:,.0f} deliveries/s",
                      lat(r["latency_ms"], "commit -> subscriber"),
                      f"{r['missing']} missing, {r['write_errors']} write errors"))
    elif w == "fanout":
        rate = f"{r['rate']} reports/s" if r["rate"] else "full speed"
        table.append((f"fanout, HTTP {rate} x {r['subscribers']} subscribers", backend,
                      f"{r['deliveries_per_sec']:,.0f} deliveries/s",
                      lat(r["latency_ms"], "report -> subscriber"),
                      f"{r['missing']} missing, {r['publish_errors']} errors"))
widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
for row in table:
    print("  ".join(c.ljust(n) for c, n in zip(row, widths)).rstrip())
PY
problems=$(grep -cE 'WARN|ERROR' "$LOG" || true)
echo "herald log ($LOG): $problems WARN/ERROR lines"
grep -E 'WARN|ERROR' "$LOG" | head -10 || true
echo "results appended to $RESULTS"
