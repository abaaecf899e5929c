#!/usr/bin/env bash
# API conformance: schemathesis (from PyPI) generates requests from the served
# OpenAPI document (/v1/openapi.json) and checks every answer against it — no
# 5xx, every response body matching its schema, every status code documented,
# content types as declared — on a running debug server, as an admin and as
# a customer.
#
# Usage: scripts/test-api.sh
#   API_MAX_EXAMPLES=100  examples per operation as an admin, a quarter of that as a
#                         customer (the whole run stays well under 3 minutes)
#   API_SEED=...          hypothesis seed, to replay a run (default: fixed)
#   API_VENV=.venv-api    where schemathesis is installed when missing
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
VENV=${API_VENV:-.venv-api}
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  echo "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

cargo build -q -p herald
BIN=${CARGO_TARGET_DIR:-target}/debug/herald

DIR=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"
export HERALD_JWT_SECRET=api-conformance-secret
PID=""
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
  [ -n "$PID" ] && wait "$PID" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

# Generous rate limits: the fuzzer is one client sending many requests.
"$BIN" serve --listen "127.0.0.1:$PORT" --db "$DIR/herald.db" --messages-per-second 0 >"$DIR/server.log" 2>&1 &
PID=$!
for _ in $(seq 1 200); do
  curl -fs "$URL/readyz" >/dev/null 2>&1 && break
  kill -0 "$PID" 2>/dev/null || { echo "server exited:"; cat "$DIR/server.log"; exit 1; }
  sleep 0.1
done
TOKEN=$("$BIN" token --sub api-admin --tenant api --role admin --ttl 2h --db "$DIR/herald.db")

# A few rows, so reads by id and the event log have something to find.
for id in job-1 job-2; do
  curl -fs -o /dev/null "$URL/v1/jobs" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    -d "{\"id\":\"$id\",\"owner\":\"api-customer\",\"title\":\"$id\",\"tasks\":[{\"id\":\"t-1\"}]}"
done

# Long-polls would hold each request up to `wait` (documented up to 60 s):
# the fuzzer sends `wait=0`, everything else about /v1/events is generated.
cat >"$DIR/schemathesis.toml" <<'TOML'
[[operations]]
include-path = "/v1/events"
parameters = { "query.wait" = 0 }
TOML

# Streaming and upgrade endpoints are documented but not request/response
# operations: an SSE stream never ends, and a WebSocket needs an upgrade.
# conform ROLE EXAMPLES: one schemathesis run with a token of that role.
conform() {
  local token
  token=$("$BIN" token --sub "api-$1" --tenant api --role "$1" --ttl 2h --db "$DIR/herald.db")
  echo "== schemathesis as $1, $2 examples per operation"
  "$VENV/bin/schemathesis" --config-file "$DIR/schemathesis.toml" run "$URL/v1/openapi.json" \
    --url "$URL" \
    --header "Authorization: Bearer $token" \
    --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance \
    --exclude-path /v1/sse --exclude-path /v1/ws \
    --exclude-path /v1/sse/jobs --exclude-path "/v1/jobs/{id}/streams/{name}/sse" \
    --exclude-path /realtime/v1/websocket --exclude-path /socket/websocket \
    --max-examples "$2" \
    --seed "${API_SEED:-20261201}" \
    --request-timeout 70 \
    --workers 1 \
    --generation-database none \
    --no-color
}

# An admin reaches every operation's core; a customer meets the refusals
# (403, 404) the other roles never see.
EXAMPLES=${API_MAX_EXAMPLES:-100}
RC=0
conform admin "$EXAMPLES" || RC=$?
conform customer "$(( (EXAMPLES + 3) / 4 ))" || RC=$?
if [ $RC -ne 0 ]; then
  echo "--- server log (last 50 lines)"
  tail -50 "$DIR/server.log"
  if grep -q panicked "$DIR/server.log"; then echo "the server panicked"; fi
fi
exit $RC
