#!/usr/bin/env bash
# Reproduces the storyline benchmarks in BENCHMARKS.md with one command:
#   ./scripts/bench.sh
# Builds release, then for each broker (memory, redis) and each scenario starts a fresh storyline on a free
# loopback port (and, for Redis, a throwaway redis-server on a free port; never 6379), runs storyline-bench,
# and writes bench-results/<broker>-<scenario>.json and .svg, then bench-results/tables.md.
#
# Environment:
#   BENCH_STORYLINE_BIN    storyline binary to measure (default: target/release/storyline, built here)
#   BENCH_BROKERS    brokers to run (default: "memory redis")
#   BENCH_SCENARIOS  scenarios to run (default: "1x100 10x200 1x2000 idle5000")
#   BENCH_DURATION   publish seconds (default 15); BENCH_RATE events/s (default 200); BENCH_PAYLOAD bytes (200)
#   BENCH_OUT        output directory (default: bench-results)
#   BENCH_DOCS_DIR   if set, the SVG plots are also copied there (e.g. docs/bench)
set -euo pipefail

cd "$(dirname "$0")/.."
OUT=${BENCH_OUT:-bench-results}
BROKERS=${BENCH_BROKERS:-memory redis}
SCENARIOS=${BENCH_SCENARIOS:-1x100 10x200 1x2000 idle5000}
DURATION=${BENCH_DURATION:-15}
RATE=${BENCH_RATE:-200}
PAYLOAD=${BENCH_PAYLOAD:-200}
mkdir -p "$OUT"

echo "== building (release)" >&2
cargo build --release -p storyline-bench
if [[ -z "${BENCH_STORYLINE_BIN:-}" ]]; then
    cargo build --release -p storyline
    BENCH_STORYLINE_BIN=target/release/storyline
fi
BENCH=target/release/storyline-bench

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

SERVER_PID=""
REDIS_PID=""
cleanup() {
    [[ -n "$SERVER_PID" ]] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    [[ -n "$REDIS_PID" ]] && kill "$REDIS_PID" 2>/dev/null && wait "$REDIS_PID" 2>/dev/null
    true
}
trap cleanup EXIT

wait_http() { # url: poll until it answers, for up to 10 s
    for _ in $(seq 1 100); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "no answer from $1" >&2
    return 1
}

STORYLINE_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export STORYLINE_JWT_SECRET
# The generator is one principal on a few loopback addresses and would trip the abuse limits by design; the
# benchmark measures the service, so they are lifted (the limits are 0 = off).
export STORYLINE_PUBLISH_RATE_MEMBER=0 STORYLINE_PUBLISH_RATE_PER_STORY=0 STORYLINE_STREAM_OPENS_PER_IP=0 \
    STORYLINE_STREAMS_PER_PRINCIPAL=0
TOKEN=$("$BENCH_STORYLINE_BIN" token --sub bench --scope 'read:* write:*' --ttl-secs 86400)

start_redis() {
    local port
    port=$(free_port)
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
        --loglevel warning >"$OUT/redis.log" 2>&1 &
    REDIS_PID=$!
    for _ in $(seq 1 100); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    REDIS_URL="redis://127.0.0.1:$port"
}

start_server() { # broker
    PORT=$(free_port)
    if [[ "$1" == redis ]]; then
        STORYLINE_REDIS_URL="$REDIS_URL" STORYLINE_LISTEN="127.0.0.1:$PORT" RUST_LOG=warn \
            "$BENCH_STORYLINE_BIN" serve >"$OUT/storyline-$1.log" 2>&1 &
    else
        STORYLINE_LISTEN="127.0.0.1:$PORT" RUST_LOG=warn "$BENCH_STORYLINE_BIN" serve >"$OUT/storyline-$1.log" 2>&1 &
    fi
    SERVER_PID=$!
    wait_http "http://127.0.0.1:$PORT/readyz"
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

run_bench() { # broker scenario args...
    local broker=$1 scenario=$2
    shift 2
    local name="$broker-$scenario"
    echo "== $name" >&2
    start_server "$broker"
    local rc=0
    "$BENCH" --label "$name" \
        --stream-url "http://127.0.0.1:$PORT/v1/stories/{story}/stream?access_token={token}" \
        --publish-url "http://127.0.0.1:$PORT/v1/stories/{story}/events" \
        --token "$TOKEN" --server-pid "$SERVER_PID" \
        --rate "$RATE" --payload-bytes "$PAYLOAD" --story-prefix "bench-$scenario-" \
        --json "$OUT/$name.json" "$@" | tee "$OUT/$name.txt" || rc=$?
    stop_server
    if [[ $rc -ne 0 ]]; then
        echo "!! $name failed with status $rc (reported as such; continuing)" >&2
    fi
}

for broker in $BROKERS; do
    if [[ "$broker" == redis ]]; then
        start_redis
    fi
    for scenario in $SCENARIOS; do
        case "$scenario" in
        1x100) run_bench "$broker" "$scenario" --streams 100 --stories 1 --duration "$DURATION" --plot "$OUT/$broker-$scenario.svg" ;;
        10x200) run_bench "$broker" "$scenario" --streams 2000 --stories 10 --duration "$DURATION" --plot "$OUT/$broker-$scenario.svg" ;;
        1x2000) run_bench "$broker" "$scenario" --streams 2000 --stories 1 --duration "$DURATION" --plot "$OUT/$broker-$scenario.svg" ;;
        idle5000) run_bench "$broker" "$scenario" --scenario idle --streams 5000 --stories 1 --duration 10 ;;
        *) echo "unknown scenario $scenario" >&2 && exit 2 ;;
        esac
    done
    if [[ -n "$REDIS_PID" ]]; then
        kill "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
        REDIS_PID=""
    fi
done

reports=()
for broker in $BROKERS; do
    for scenario in $SCENARIOS; do
        [[ -f "$OUT/$broker-$scenario.json" ]] && reports+=("$OUT/$broker-$scenario.json")
    done
done
if [[ ${#reports[@]} -gt 0 ]]; then
    "$BENCH" table "${reports[@]}" >"$OUT/tables.md"
    echo "== tables ($OUT/tables.md)" >&2
    cat "$OUT/tables.md"
fi
if [[ -n "${BENCH_DOCS_DIR:-}" ]]; then
    mkdir -p "$BENCH_DOCS_DIR"
    cp "$OUT"/*.svg "$BENCH_DOCS_DIR"/ 2>/dev/null || true
fi
