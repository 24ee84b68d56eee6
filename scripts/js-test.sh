#!/usr/bin/env bash
# Runs the JavaScript client's tests (clients/js/test/*.test.mjs, node's test runner) against the real storyline
# binary and real redis-servers the tests start on free ports: the SSE parser and backoff unit tests, subscribe()
# across a kill -9 and restart, a drain, token expiry and a gap, publish() retries with one Idempotency-Key, and
# the same in headless Chromium with the reader page (/reader), twenty stories over one connection and the
# README's browser example (whose block in README.md must equal clients/js/examples/browser.html).
#
# Installs what it needs on a fresh Debian machine: Node.js >= 20 with npm, redis-server, and Debian's chromium
# (apt-get, through scripts/lib.sh); playwright-core from clients/js/package-lock.json with `npm ci` and NO browser
# download (PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1; the tests launch /usr/bin/chromium, or CHROMIUM_BIN).
#
# The binary: STORYLINE_BIN, else target/debug/storyline (CARGO_TARGET_DIR honoured), which is first brought up to
# date with `cargo build -p storyline` unless SKIP_BUILD is set. Arguments go to `node --test`
# (e.g. `--test-name-pattern=gap`). Exits non-zero when a test fails; prints each case's counts (`# ...` lines).
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=clients/js

# shellcheck source=scripts/lib.sh
. scripts/lib.sh

need() {
  echo "js-test.sh: $1" >&2
  exit 1
}

if ! node_ok; then
  if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    need "Node.js >= ${MIN_NODE_MAJOR} with npm is required; found node $(node --version). Install a newer one (Debian 13: apt-get install nodejs npm)."
  fi
  apt_install "Node.js" nodejs --no-install-recommends || need "install Node.js >= ${MIN_NODE_MAJOR} and npm"
  command -v npm >/dev/null 2>&1 || apt_install "npm" npm --no-install-recommends || need "install npm"
  node_ok || need "Node.js >= ${MIN_NODE_MAJOR} with npm is required; found node $(node --version)"
fi

command -v redis-server >/dev/null 2>&1 || apt_install redis-server redis-server || need "install redis-server (Redis >= 6.2)"
# The reader page test posts its events with curl, as the README does.
command -v curl >/dev/null 2>&1 || apt_install curl curl || need "install curl"

CHROMIUM_BIN="${CHROMIUM_BIN:-/usr/bin/chromium}"
export CHROMIUM_BIN
if [ ! -x "$CHROMIUM_BIN" ]; then
  apt_install Chromium chromium --no-install-recommends || need "install Debian's chromium (apt-get install chromium) or set CHROMIUM_BIN"
  [ -x "$CHROMIUM_BIN" ] || need "the chromium package did not provide $CHROMIUM_BIN"
fi

# Exactly the locked packages (playwright-core), again only when package-lock.json changed; never a browser.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
npm_ci_locked "$DIR"

if [ -z "${STORYLINE_BIN:-}" ]; then
  STORYLINE_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/storyline"
  if [ -z "${SKIP_BUILD:-}" ] && command -v cargo >/dev/null 2>&1; then
    cargo build -q -p storyline
  fi
fi
[ -x "$STORYLINE_BIN" ] || need "no storyline binary at $STORYLINE_BIN (cargo build -p storyline, or set STORYLINE_BIN)"
export STORYLINE_BIN

start=$(date +%s)
cd "$DIR"
# One file at a time: the cases start servers and Chromium, and the machine may have two cores.
node --test --test-concurrency=1 --test-reporter=spec "$@" test/*.test.mjs
echo "js-test.sh: passed in $(($(date +%s) - start)) s" >&2
