# Helpers shared by the bench scripts (sourced, not run): one server at a time
# in $PID, pinned to core $SERVER_CPU, its data under $OUT.
SERVER_CPU="${SERVER_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
PID=""

# Stops the server started last, if any.
stop() { if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; fi; }
trap stop EXIT

wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened"; exit 1; }

# start_herald [BIN_DIR] [serve flags...]: a fresh embedded database in
# $OUT/herald-db, on port 4000, with the limits a load run needs lifted.
start_herald() {
  local dir=target/release
  if [ $# -gt 0 ] && [ -d "$1" ]; then dir=$1; shift; fi
  stop
  rm -rf "$OUT/herald-db" && mkdir -p "$OUT/herald-db"
  taskset -c "$SERVER_CPU" "$dir/herald" serve --listen 127.0.0.1:4000 --db "$OUT/herald-db/herald.db" \
    --messages-per-second 1000000 --max-subscriptions 1000 "$@" >"$OUT/herald.log" 2>&1 &
  PID=$!
  wait_port 4000
}

# The bare broadcast loop (bench/reference), on port 4100.
start_reference() { stop; taskset -c "$SERVER_CPU" target/release/herald-reference 127.0.0.1:4100 2>/dev/null & PID=$!; wait_port 4100; }
