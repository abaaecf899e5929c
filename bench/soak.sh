#!/usr/bin/env bash
# Soak: holds SOAK_MINUTES (default 30) of connect/subscribe/disconnect churn
# over every transport (native WebSocket, Phoenix, SSE, long-poll; rooms and
# presence) plus steady ingest (jobs created, reported on, completed;
# broadcasts, notifications) against one server, and compares the server's
# resident memory, open file descriptors and hub sizes before and after.
#
# Usage: bench/soak.sh
#   SOAK_MINUTES=30          length of the measured run
#   SOAK_SECONDS=N           the same in seconds (wins over SOAK_MINUTES)
#   SOAK_WARMUP_SECONDS=N    load before the start sample (default: a fifth of the run, at most 300),
#                            at 3x the rate and 2x the clients, so that what the server keeps in
#                            bounded pools and caches (the writer's 64 MiB SQLite page cache, up
#                            to 16 idle readers with theirs) has grown before the start sample
#   SOAK_WARMUP_DB_MIB=80    ...and until the database file is this large (the writer's page cache
#                            is full once it has written more pages than it holds), at most
#                            SOAK_WARMUP_MAX_SECONDS=900; 0 for no such condition
#   SOAK_PROFILE=release     or debug (the smoke in scripts/test-soak.sh)
#   SOAK_RATE=100            progress reports per second
#   SOAK_CONCURRENCY=16      churn clients cycling at once
#   SOAK_SAMPLE_SECONDS=60   how often to print a sample during the run
#   SOAK_OUT=artifacts/soak  where the log, samples and result go
#   SOAK_RSS_PERCENT=10 SOAK_RSS_SLACK_MIB=5   the RSS bound below
#
# Samples are taken with no load running ("quiescent"): "start" after the
# warm-up, once its clients are gone; "end" after the run, once its clients
# are gone; each the lowest RSS of 5 samples over 10 s of quiet. The server
# runs with MALLOC_ARENA_MAX=2 and MALLOC_TRIM_THRESHOLD_=128 KiB so that
# glibc hands freed memory back and RSS follows what is live rather than what
# the allocator kept (SOAK_GLIBC_DEFAULTS=1 runs it with glibc's defaults). The run is FLAT (exit 0) when, end against start:
#   rss:  end RSS <= start RSS * (1 + SOAK_RSS_PERCENT/100) + SOAK_RSS_SLACK_MIB
#         (VmRSS of /proc/<pid>/status; by default * 1.10 + 5 MiB)
#   fds:  end fds <= start fds + 20                   (ls /proc/<pid>/fd | wc -l),
#         not counting the database's own files (herald.db, -wal, -shm), which
#         follow the SQLite read pool: at most 16 idle readers of 2 files each
#         plus the writer's 3, so those stay at or under 35
#   hub:  connections, subscriptions and topics are back to the start values
#         (GET /v1/stats as an admin of the load's tenant)
#   load: no churn cycle and no write failed (a failure would hide a leak)
# Otherwise it prints which check failed and exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${SOAK_SECONDS:-}" ]; then RUN=$SOAK_SECONDS; else RUN=$(( ${SOAK_MINUTES:-30} * 60 )); fi
WARMUP=${SOAK_WARMUP_SECONDS:-$(( RUN / 5 < 300 ? RUN / 5 : 300 ))}
[ "$WARMUP" -lt 1 ] && WARMUP=1
PROFILE=${SOAK_PROFILE:-release}
RATE=${SOAK_RATE:-100}
CONC=${SOAK_CONCURRENCY:-16}
EVERY=${SOAK_SAMPLE_SECONDS:-60}
OUT=${SOAK_OUT:-artifacts/soak}
RSS_PERCENT=${SOAK_RSS_PERCENT:-10}
RSS_SLACK=${SOAK_RSS_SLACK_MIB:-5}
TENANT=soak
export HERALD_JWT_SECRET=soak-secret-$$

TARGET=${CARGO_TARGET_DIR:-target}
if [ "$PROFILE" = release ]; then
  cargo build --release -q -p herald -p herald-bench
else
  cargo build -q -p herald -p herald-bench
fi
BIN="$TARGET/$PROFILE"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DIR=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"
PID=""
LOAD=""
cleanup() {
  [ -n "$LOAD" ] && kill "$LOAD" 2>/dev/null || true
  [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
  [ -n "$PID" ] && wait "$PID" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "${SOAK_GLIBC_DEFAULTS:-0}" = 1 ]; then MALLOC=(); else MALLOC=(MALLOC_ARENA_MAX=2 MALLOC_TRIM_THRESHOLD_=131072); fi
env "${MALLOC[@]}" "$BIN/herald" serve --listen "127.0.0.1:$PORT" --db "$DIR/herald.db" >"$OUT/server.log" 2>&1 &
PID=$!
for _ in $(seq 1 200); do
  curl -fs "$URL/readyz" >/dev/null 2>&1 && break
  kill -0 "$PID" 2>/dev/null || { echo "server exited:"; cat "$OUT/server.log"; exit 1; }
  sleep 0.1
done
ADMIN=$("$BIN/herald" token --sub soak-admin --tenant $TENANT --role admin --ttl 48h --db "$DIR/herald.db")

# "elapsed_s rss_kib fds connections subscriptions topics db_fds"
sample() {
  local rss fds stats dbfds
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$PID/status")
  fds=$(ls "/proc/$PID/fd" | wc -l)
  dbfds=$(for f in /proc/"$PID"/fd/*; do readlink "$f" 2>/dev/null; done | grep -c "^$DIR/herald.db" || true)
  stats=$(curl -fs -H "Authorization: Bearer $ADMIN" "$URL/v1/stats")
  python3 -c 'import json,sys; s=json.loads(sys.argv[1]); t=s["tenant"]; print(t["connections"], t["subscriptions"], s["topics"])' "$stats" |
    { read -r c s t; echo "$(( $(date +%s) - T0 )) $rss $fds $c $s $t $dbfds"; }
}
# Waits (up to 30 s) for the load's connections to be gone, then prints the
# sample with the lowest RSS of 5 taken over 10 s.
quiet_sample() {
  local best="" s
  for _ in $(seq 1 60); do
    set -- $(sample)
    [ "$4" = 0 ] && break
    sleep 0.5
  done
  for _ in 1 2 3 4 5; do
    sleep 2
    s=$(sample)
    if [ -z "$best" ] || [ "$(echo "$s" | cut -d' ' -f2)" -lt "$(echo "$best" | cut -d' ' -f2)" ]; then best=$s; fi
  done
  echo "$best"
}
show() { printf '%-10s %8s s  rss %7s KiB  fds %5s  connections %5s  subscriptions %6s  topics %5s  (db fds %s)\n' "$1" $2; }

LOADCMD=("$BIN/herald-bench" --url "$URL" --tenant $TENANT --json-out "$OUT/load.jsonl" --label soak soak)
T0=$(date +%s)
show "idle" "$(sample)"
WARMUP_DB=${SOAK_WARMUP_DB_MIB:-80}
WARMUP_MAX=${SOAK_WARMUP_MAX_SECONDS:-900}
[ "$WARMUP_MAX" -lt "$WARMUP" ] && WARMUP_MAX=$WARMUP
echo "warm-up: at least ${WARMUP}s of load at 3x the rate and 2x the clients, until the database holds" \
  "${WARMUP_DB} MiB (at most ${WARMUP_MAX}s), then the start sample"
"${LOADCMD[@]}" --rate $(( RATE * 3 )) --concurrency $(( CONC * 2 )) --duration "$WARMUP_MAX" >"$OUT/warmup.txt" 2>&1 &
LOAD=$!
W0=$(date +%s)
while kill -0 "$LOAD" 2>/dev/null; do
  sleep 1
  if [ $(( $(date +%s) - W0 )) -ge "$WARMUP" ] && [ "$(stat -c %s "$DIR/herald.db")" -ge $(( WARMUP_DB * 1048576 )) ]; then
    kill "$LOAD" 2>/dev/null || true
  fi
done
wait "$LOAD" 2>/dev/null || true
LOAD=""
echo "warm-up ended after $(( $(date +%s) - W0 ))s; database $(( $(stat -c %s "$DIR/herald.db") / 1048576 )) MiB"
START=$(quiet_sample)
show "start" "$START"

echo "run: ${RUN}s of churn + ingest (samples every ${EVERY}s under load)"
: >"$OUT/samples.txt"
"${LOADCMD[@]}" --rate "$RATE" --concurrency "$CONC" --duration "$RUN" >"$OUT/load.txt" 2>&1 &
LOAD=$!
NEXT=$(( $(date +%s) + EVERY ))
while kill -0 "$LOAD" 2>/dev/null; do
  if [ "$(date +%s)" -ge "$NEXT" ]; then
    S=$(sample); echo "$S" >>"$OUT/samples.txt"; show "under load" "$S"
    NEXT=$(( NEXT + EVERY ))
  fi
  sleep 1
done
LOADRC=0; wait "$LOAD" || LOADRC=$?
LOAD=""
END=$(quiet_sample)
show "end" "$END"

python3 - "$START" "$END" "$OUT/load.txt" "$OUT/load.jsonl" "$LOADRC" "$RUN" "$WARMUP" "$PROFILE" "$RSS_PERCENT" "$RSS_SLACK" <<'PY'
import json, sys
rss_percent, rss_slack = float(sys.argv[9]), float(sys.argv[10])
start = list(map(int, sys.argv[1].split()))
end = list(map(int, sys.argv[2].split()))
loadrc, run, warmup, profile = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]), sys.argv[8]
rows = [json.loads(l) for l in open(sys.argv[4]) if l.strip()]
load = rows[-1] if loadrc == 0 and rows else None
_, rss0, fd0, c0, s0, t0, db0 = start
_, rss1, fd1, c1, s1, t1, db1 = end
rss_limit = rss0 * (1 + rss_percent / 100) + rss_slack * 1024
checks = [
    ("rss", rss1 <= rss_limit, f"{rss0} -> {rss1} KiB ({(rss1 - rss0) / 1024:+.1f} MiB; limit {rss_limit:.0f})"),
    ("fds", fd1 - db1 <= fd0 - db0 + 20 and db1 <= 35,
     f"{fd0} -> {fd1}; without the database's files {fd0 - db0} -> {fd1 - db1} (limit {fd0 - db0 + 20}), "
     f"database files {db0} -> {db1} (limit 35)"),
    ("hub", (c1, s1, t1) == (c0, s0, t0),
     f"connections {c0} -> {c1}, subscriptions {s0} -> {s1}, topics {t0} -> {t1}"),
]
if load is None:
    checks.append(("load", False, f"herald-bench exited {loadrc}; see load.txt"))
else:
    ok = load["failed"] == 0 and load["write_errors"] == 0 and load["cycles"] > 0 and load["reports"] > 0
    checks.append(("load", ok,
        f"{load['cycles']} cycles ({load['cycles_per_sec']:.0f}/s: {load['cycles_by_transport']}), "
        f"{load['reports']} reports ({load['reports_per_sec']:.0f}/s), {load['jobs_completed']} jobs, "
        f"{load['frames_received']} frames received, failed {load['failed']}, write errors {load['write_errors']}"
        + (f"; first errors: {load['first_errors']}" if load['first_errors'] else "")))
flat = all(ok for _, ok, _ in checks)
for name, ok, detail in checks:
    print(f"  {'ok  ' if ok else 'FAIL'} {name:5} {detail}")
result = {"workload": "soak-summary", "profile": profile, "run_s": run, "warmup_s": warmup, "flat": flat,
          "start": dict(zip(["t", "rss_kib", "fds", "connections", "subscriptions", "topics", "db_fds"], start)),
          "end": dict(zip(["t", "rss_kib", "fds", "connections", "subscriptions", "topics", "db_fds"], end)),
          "load": load}
with open(sys.argv[4], "a") as f:
    f.write(json.dumps(result) + "\n")
print("soak: FLAT" if flat else "soak: NOT FLAT")
sys.exit(0 if flat else 1)
PY
