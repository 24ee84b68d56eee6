#!/usr/bin/env bash
# A/B of the POST path: POSTs/s and server CPU µs per POST for two (or more) storyline binaries, alternating, on
# this machine's loopback. Memory broker, limits off, 2 workers, wrk -t1 -c16 for 8 s per run, one story.
#   ./scripts/bench-ingress-ab.sh <storyline-bin> <storyline-bin> [...]
# Environment: ROUNDS (default 3), LOG (RUST_LOG of the server, default warn). Needs wrk (Debian package wrk).
# CPU per POST (utime+stime of the server over the run / requests) is steadier than requests/s on a shared VM.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$#" -ge 2 ] || { echo "usage: $0 <storyline-bin> <storyline-bin> [...]" >&2; exit 2; }
command -v wrk >/dev/null || { echo "$0: wrk is required (apt-get install wrk)" >&2; exit 1; }
export STORYLINE_JWT_SECRET=0123456789abcdef0123456789abcdef
export STORYLINE_PUBLISH_RATE_MEMBER=0 STORYLINE_PUBLISH_RATE_PER_STORY=0 STORYLINE_STREAM_OPENS_PER_IP=0 \
  STORYLINE_STREAMS_PER_PRINCIPAL=0
WORK=$(mktemp -d)
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
printf '{"type":"chapter","data":{"text":"%s"}}' "$(head -c 150 /dev/zero | tr '\0' x)" >"$WORK/body.json"
TCK=$(getconf CLK_TCK)
for round in $(seq "${ROUNDS:-3}"); do
  for bin in "$@"; do
    PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    TOKEN=$("$bin" token --sub bench --scope 'read:* write:*' --ttl-secs 3600)
    STORYLINE_LISTEN=127.0.0.1:$PORT RUST_LOG=${LOG:-warn} STORYLINE_WORKERS=2 "$bin" serve >"$WORK/server.log" 2>&1 &
    PID=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
    T0=$(awk '{print $14 + $15}' "/proc/$PID/stat")
    OUT=$(WRK_BODY_FILE="$WORK/body.json" \
      WRK_HEADERS=$(printf 'Authorization: Bearer %s\nContent-Type: application/json' "$TOKEN") \
      wrk -t1 -c16 -d8s -s bench/peers/wrk-post.lua "http://127.0.0.1:$PORT/v1/stories/ingress-0/events")
    T1=$(awk '{print $14 + $15}' "/proc/$PID/stat")
    REQS=$(echo "$OUT" | awk '/requests in/ {print $1}')
    RPS=$(echo "$OUT" | awk '/Requests\/sec/ {print $2}')
    echo "round $round  $bin  posts/s=$RPS  cpu_us_per_post=$(python3 -c "print(round(($T1 - $T0) / $TCK * 1e6 / $REQS, 1))")"
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
  done
done
