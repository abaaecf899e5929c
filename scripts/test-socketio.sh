#!/usr/bin/env bash
# Runs the unmodified socket.io-client 4 against a live Herald binary
# (clients/socketio-compat): seed 004's job monitor over WebSocket and over
# long-polling, recovery after a cut and after kill -9, errors and rooms.
# Installs the pinned package if missing and builds the binary first.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v node >/dev/null 2>&1; then
  echo "node is required for the Socket.IO compatibility suite"; exit 1
fi

cargo build -p herald --quiet
# One test runs on PostgreSQL (logical replication on; a no-op when already set).
scripts/pg-setup.sh

cd clients/socketio-compat
if [ ! -d node_modules/socket.io-client ]; then
  npm ci --no-audit --no-fund
fi
HERALD_BIN="$(pwd)/../../target/debug/herald" \
  node --test --test-force-exit --test-concurrency=1 --test-timeout=60000 test/
