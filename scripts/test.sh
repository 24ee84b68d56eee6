#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, the broker conformance suite (memory and Redis), the HTTP
# contract suite (both brokers) and the CLI tests.
#
# The Redis tests start their own throwaway redis-server on free ports (never the system Redis on 6379), so
# redis-server (Redis >= 7) must be on PATH. When it is missing this script installs it with apt-get (as root,
# or through sudo); elsewhere it says exactly what to install.
set -euo pipefail
cd "$(dirname "$0")/.."

need_redis() {
  if command -v redis-server >/dev/null 2>&1; then
    local major
    major="$(redis-server --version | sed -E 's/.* v=([0-9]+).*/\1/')"
    if [ "${major:-0}" -ge 7 ]; then return 1; fi
    echo "test.sh: redis-server $(redis-server --version | sed -E 's/.* v=([^ ]+).*/\1/') is too old; Redis >= 7 is required" >&2
  fi
  return 0
}

if need_redis; then
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
  else
    echo "test.sh: redis-server (Redis >= 7) is required on PATH; install it with your package manager" >&2
    echo "         (Debian/Ubuntu: apt-get install redis-server; Fedora: dnf install redis; macOS: brew install redis)" >&2
    exit 1
  fi
fi

exec cargo test --workspace --locked "$@"
