#!/usr/bin/env bash
# Smoke of the soak (bench/soak.sh): 20 seconds of connect/subscribe/disconnect
# churn over every transport plus steady ingest against a debug build, after a
# 5-second warm-up; about 50 seconds in all. Fails unless descriptors and hub
# sizes come back to where they started, no request failed, and memory stays
# within a loose bound (16 MiB of slack: 20 seconds cannot show a slow leak,
# and a debug build's caches are still growing). The real run is 30 minutes
# on a release build: bench/soak.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
RC=0
SOAK_PROFILE=debug SOAK_SECONDS=${SOAK_SECONDS:-20} SOAK_WARMUP_SECONDS=${SOAK_WARMUP_SECONDS:-5} \
  SOAK_SAMPLE_SECONDS=10 SOAK_RATE=50 SOAK_CONCURRENCY=8 SOAK_WARMUP_DB_MIB=0 SOAK_RSS_SLACK_MIB=${SOAK_RSS_SLACK_MIB:-16} \
  SOAK_OUT="$OUT" bench/soak.sh || RC=$?
if [ $RC -ne 0 ]; then
  echo "--- load"; cat "$OUT/load.txt" 2>/dev/null || true
  echo "--- server log (last 30 lines)"; tail -30 "$OUT/server.log" 2>/dev/null || true
fi
exit $RC
