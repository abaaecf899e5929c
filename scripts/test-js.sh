#!/usr/bin/env bash
# The JavaScript client's tests and the dashboard's end-to-end tests, against
# the real server binary. Installs what is missing: Debian's Chromium, the
# test package's npm dependencies (from the committed package-lock.json).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "Chromium (Debian package; Playwright's own browser download is never used)"
if [ ! -x /usr/bin/chromium ]; then
  # Someone else's apt may hold the lock (e.g. an install already under way): wait for it.
  for _ in $(seq 1 120); do
    [ -x /usr/bin/chromium ] && break
    if ! fuser /var/lib/dpkg/lock-frontend /var/lib/apt/lists/lock >/dev/null 2>&1 \
       && ! pgrep -x apt-get >/dev/null && ! pgrep -x dpkg >/dev/null; then
      SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
      $SUDO apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
      break
    fi
    sleep 5
  done
fi
[ -x /usr/bin/chromium ] || { echo "chromium could not be installed"; exit 1; }

step "Node.js"
command -v node >/dev/null || { echo "node (18+) is required"; exit 1; }

step "npm dependencies (clients/js)"
(
  cd clients/js
  # Reinstall when a dependency is missing or the lock file changed since the last install.
  if node -e '
    const fs = require("fs");
    const deps = require("./package.json").devDependencies;
    for (const [name, version] of Object.entries(deps)) {
      const p = `node_modules/${name}/package.json`;
      if (!fs.existsSync(p) || JSON.parse(fs.readFileSync(p, "utf8")).version !== version) process.exit(1);
    }' 2>/dev/null; then
    echo "already installed"
  else
    npm ci --no-audit --no-fund
  fi
)

step "server binary (debug build)"
cargo build -p herald --quiet

step "node --test"
cd clients/js
NODE_FLAGS=()
# Node 20 has a global WebSocket only behind a flag; 22+ has it by default.
if ! node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)'; then
  NODE_FLAGS+=(--experimental-websocket)
fi
# One file at a time: each spawns servers and a browser, and the machine may have two cores.
# test/package.test.mjs packs the package (npm pack, which builds dist/ with esbuild), installs the
# tarball into a scratch project with `npm install --offline` (React is copied from node_modules here)
# and uses it from Node (import and require), TypeScript, esbuild and against the server.
node "${NODE_FLAGS[@]}" --test --test-concurrency=1 --test-timeout=180000 test/*.test.mjs
