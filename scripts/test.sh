#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs and starts what is
# missing, then the Rust suites, then the JavaScript and browser suites.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step's wall time is printed as it ends and summed up at the end, so a
# slow suite shows itself.
START=$SECONDS
LAST_STEP="" LAST_START=$SECONDS TIMES=""
step() {
  if [ -n "$LAST_STEP" ]; then
    TIMES+=$(printf '%5ss  %s' "$((SECONDS - LAST_START))" "$LAST_STEP")$'\n'
  fi
  LAST_STEP="$*" LAST_START=$SECONDS
  printf '\n==> %s\n' "$*"
}

step "toolchain"
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required (https://rustup.rs)"; exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

step "local services (PostgreSQL, Redis, NATS) — started if stopped"
# PostgreSQL with logical replication (wal_level=logical: set, then restarted, if needed).
scripts/pg-setup.sh
if command -v redis-server >/dev/null 2>&1 && ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no || true
fi
if [ -x /usr/sbin/nats-server ] && ! (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 || true
fi

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "Rust build (every target)"
cargo test --workspace --no-run --quiet

# The fuzz targets take minutes to build in their own workspace; that happens
# niced in the background while the suites below (mostly waiting on sockets)
# run, and test-fuzz.sh runs them at the end.
FUZZ_BUILD_LOG=$(mktemp)
nice -n 19 scripts/test-fuzz.sh build >"$FUZZ_BUILD_LOG" 2>&1 &
FUZZ_BUILD=$!
trap 'kill "$FUZZ_BUILD" 2>/dev/null || true; rm -f "$FUZZ_BUILD_LOG"' EXIT

step "Rust tests (unit + integration against the real binary)"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo test --workspace

step "Rust behavioural suite again, on PostgreSQL (HERALD_TEST_STORE=postgres)"
# The whole workspace again (lib tests are quick): `-p herald` alone would
# resolve features differently and rebuild half the dependency tree.
HERALD_TEST_STORE=postgres cargo test --workspace

for suite in scripts/test-bench.sh scripts/test-js.sh scripts/test-supabase.sh scripts/test-socketio.sh scripts/test-python.sh scripts/test-api.sh scripts/test-soak.sh; do
  if [ -x "$suite" ]; then
    step "$suite"
    "$suite"
  fi
done

step "fuzz smoke (scripts/test-fuzz.sh)"
if ! wait "$FUZZ_BUILD"; then
  cat "$FUZZ_BUILD_LOG"
  echo "the fuzz targets did not build"
  exit 1
fi
scripts/test-fuzz.sh

step "all tests passed"
printf '%s%5ss  total\n' "$TIMES" "$((SECONDS - START))"
