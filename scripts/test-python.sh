#!/usr/bin/env bash
# The Python client (clients/python): mypy --strict over the package, then
# its pytest suite against the real server binary (each test module starts
# its own server on a free port with a temporary database).
#
# The binary is not built here (the caller has): HERALD_BIN, else
# ${CARGO_TARGET_DIR:-target}/debug/herald. The virtualenv lives in
# clients/python/.venv and is (re)installed only when missing or when
# pyproject.toml changed since the last install.
#
# Usage: scripts/test-python.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

PKG=clients/python
VENV=$PKG/.venv
STAMP=$VENV/.install-stamp
export HERALD_BIN=${HERALD_BIN:-${CARGO_TARGET_DIR:-target}/debug/herald}
if [ ! -x "$HERALD_BIN" ]; then
  echo "no server binary at $HERALD_BIN: run 'cargo build -p herald' first, or set HERALD_BIN" >&2
  exit 1
fi
# Absolute: the tests run from clients/python.
HERALD_BIN=$(realpath "$HERALD_BIN")

step "virtualenv ($VENV)"
command -v python3 >/dev/null || { echo "python3 (3.9+) is required" >&2; exit 1; }
WANT=$(sha256sum "$PKG/pyproject.toml" | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -e "$PKG[test]"
  echo "$WANT" >"$STAMP"
else
  echo "up to date"
fi

step "mypy --strict"
(cd "$PKG" && .venv/bin/mypy --strict src/herald_client)

step "pytest"
(cd "$PKG" && .venv/bin/python -m pytest -q -p no:cacheprovider --timeout=60 "$@")
