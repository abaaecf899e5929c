#!/usr/bin/env bash
# Runs the unmodified @supabase/realtime-js and supabase-js clients against a
# live Herald binary (clients/supabase-compat). Installs the pinned packages if
# missing and builds the binary first.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v node >/dev/null 2>&1; then
  echo "node is required for the Supabase compatibility suite"; exit 1
fi

cargo build -p herald --quiet
# One test runs on PostgreSQL (logical replication on; a no-op when already set).
scripts/pg-setup.sh

cd clients/supabase-compat
if [ ! -d node_modules/@supabase/realtime-js ] || [ ! -d node_modules/realtime-js-v1 ]; then
  npm ci --no-audit --no-fund
fi

# Node 22 has a global WebSocket; Node 20 needs the flag (realtime-js uses the global).
# --test-force-exit: realtime-js leaves a 10 s timer behind after disconnect().
flags=()
if [ "$(node -e 'process.stdout.write(typeof WebSocket)')" != "function" ]; then
  flags+=(--experimental-websocket)
fi
HERALD_BIN="$(pwd)/../../target/debug/herald" \
  node "${flags[@]}" --test --test-force-exit --test-concurrency=1 --test-timeout=60000 test/
