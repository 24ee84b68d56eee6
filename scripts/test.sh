#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, the broker conformance suite (memory and Redis), the HTTP
# contract suite (both brokers), the CLI tests and the benchmark tool's tests.
#
# The Redis tests start their own throwaway redis-server on free ports (never the system Redis on 6379), so
# redis-server (Redis >= 6.2) must be on PATH. When it is missing this script installs it with apt-get (as root,
# or through sudo); elsewhere, or if the packaged Redis is too old, it says exactly what to do.
set -euo pipefail
cd "$(dirname "$0")/.."

MIN_MAJOR=6
MIN_MINOR=2

redis_ok() {
  command -v redis-server >/dev/null 2>&1 || return 1
  local version major minor
  version="$(redis-server --version | sed -E 's/.* v=([0-9]+\.[0-9]+)\..*/\1/')"
  major="${version%%.*}"
  minor="${version#*.}"
  [ "${major:-0}" -gt "$MIN_MAJOR" ] || { [ "${major:-0}" -eq "$MIN_MAJOR" ] && [ "${minor:-0}" -ge "$MIN_MINOR" ]; }
}

too_old() {
  echo "test.sh: redis-server $(redis-server --version | sed -E 's/.* v=([^ ]+).*/\1/') is too old: the Redis tests need Redis >= ${MIN_MAJOR}.${MIN_MINOR}." >&2
  echo "         Install a newer one (Debian 12 / Ubuntu 24.04 ship 7.x; elsewhere see https://redis.io/docs/latest/operate/oss_and_stack/install/)" >&2
  echo "         and put its redis-server first on PATH." >&2
  exit 1
}

if ! redis_ok; then
  if command -v redis-server >/dev/null 2>&1; then too_old; fi
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
      if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "test.sh: redis-server is missing; install it as root: apt-get install -y redis-server" >&2
        exit 1
      fi
    fi
    echo "test.sh: installing redis-server with apt-get" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
    redis_ok || too_old
  else
    echo "test.sh: redis-server (Redis >= ${MIN_MAJOR}.${MIN_MINOR}) is required on PATH; install it with your package manager" >&2
    echo "         (Debian/Ubuntu: apt-get install redis-server; Fedora: dnf install redis; macOS: brew install redis)" >&2
    exit 1
  fi
fi

exec cargo test --workspace --locked "$@"
