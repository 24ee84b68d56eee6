#!/usr/bin/env bash
# storyline next to its peers: nchan (nginx module, memory store) and Pushpin, through the same load tool
# (storyline-bench) and the same scenarios, on loopback. See bench/peers/README.md.
#
#   ./scripts/bench-peers.sh                                   # everything, 3 rounds (about 50 minutes);
#                                                              # rewrites the peers section of BENCHMARKS.md
#   PEERS_SCENARIOS="1x100 10x200 1x2000" ./scripts/bench-peers.sh
#   PEERS_DURATION=3 PEERS_SCALE=10 ./scripts/bench-peers.sh   # a quick check of the pipeline
#
# For each scenario and each server it starts a fresh server on free loopback ports (configs generated from
# bench/peers/*.template into a temp dir), runs storyline-bench (wrk for ingress) under bench/peers/measure.py,
# stops the server, and finally writes bench-results-peers/peers.md (bench/peers/report.py). A full default run
# (every server and scenario, default durations, rate and scale) also rewrites the marked section of
# BENCHMARKS.md and the plots under docs/bench/peers/, so that one command reproduces it.
#
# Environment (all optional):
#   PEERS_SERVERS     servers, in table order (default "storyline-memory storyline-redis nchan pushpin")
#   PEERS_SCENARIOS   default "1x100 1x2000 10x200 1x10000 1000x5 idle19000 ingress"
#   PEERS_DURATION    publish seconds (default 15); PEERS_IDLE_DURATION (30); PEERS_INGRESS_DURATION (15)
#   PEERS_RATE        events/s for the 200/s scenarios (default 200); 1000x5 always uses 5 × that (1000/s)
#   PEERS_PAYLOAD     bytes of the published body (default 200)
#   PEERS_SCALE       divide stream counts (1000x5: stories) by this, for short checks (default 1)
#   PEERS_WORKERS     storyline HTTP workers = nginx worker_processes (default: physical cores)
#   PEERS_REPEAT      rounds (default 3): every scenario but idle runs this many times, servers interleaved in
#                     each round; the report shows each server's median run and the spread
#   PEERS_OUT         output directory (default bench-results-peers)
#   PEERS_UPDATE_BENCHMARKS  1 = rewrite BENCHMARKS.md's peers section; 0 = never (default: only for a full
#                     default run)
#   PEERS_INSTALL     0 = never run apt-get (default 1: install what is missing)
#   PEERS_STORYLINE_BIN / PEERS_BENCH_BIN   binaries (default target/release/storyline, storyline-bench)
#   PEERS_NOTE        free text put at the top of peers.md (e.g. "short validation run")
#   PEERS_PUSHPIN_CONNECT_CONCURRENCY  streams connecting at once to Pushpin (default 20; the others get 200)
#   PEERS_KEEP_TMP    1 = keep the temp dir (generated configs, server logs) instead of deleting it
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
PEERS_DIR=$ROOT/bench/peers
OUT=${PEERS_OUT:-bench-results-peers}
SERVERS=${PEERS_SERVERS:-storyline-memory storyline-redis nchan pushpin}
SCENARIOS=${PEERS_SCENARIOS:-1x100 1x2000 10x200 1x10000 1000x5 idle19000 ingress}
DURATION=${PEERS_DURATION:-15}
IDLE_DURATION=${PEERS_IDLE_DURATION:-30}
INGRESS_DURATION=${PEERS_INGRESS_DURATION:-15}
RATE=${PEERS_RATE:-200}
PAYLOAD=${PEERS_PAYLOAD:-200}
SCALE=${PEERS_SCALE:-1}
REPEAT=${PEERS_REPEAT:-3}
STORYLINE_BIN=${PEERS_STORYLINE_BIN:-target/release/storyline}
BENCH=${PEERS_BENCH_BIN:-target/release/storyline-bench}
PACKAGES=(nginx libnginx-mod-nchan pushpin wrk redis-server)

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
MANIFEST=$OUT/runs.jsonl
: >"$MANIFEST"
TMP=$(mktemp -d -t bench-peers.XXXXXX)

log() { printf '== %s\n' "$*" >&2; }
warn() { printf '!! %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------------------------------------
# Processes we start, killed on exit whatever happens (each with its children: nginx workers, Pushpin's
# condure/zurl/proxy/handler).
STARTED=()
descendants() { # pid: the pid and all its descendants
    local pid=$1 child
    echo "$pid"
    for child in $(ps -o pid= --ppid "$pid" 2>/dev/null); do
        descendants "$child"
    done
}
stop_tree() { # pid: TERM the tree, wait up to 5 s, KILL what is left
    local pid=$1 pids p
    [[ -n "$pid" && -d /proc/$pid ]] || return 0
    pids=$(descendants "$pid")
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 1 50); do
        local alive=0
        for p in $pids; do
            [[ -d /proc/$p ]] && [[ "$(awk '{print $3}' /proc/"$p"/stat 2>/dev/null)" != Z ]] && alive=1
        done
        [[ $alive == 0 ]] && break
        sleep 0.1
    done
    kill -KILL $pids 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
stop_all() {
    local pid
    for pid in "${STARTED[@]}"; do
        stop_tree "$pid"
    done
    STARTED=()
}
cleanup() {
    stop_all
    if [[ "${PEERS_KEEP_TMP:-0}" == 1 ]]; then
        log "kept the generated configs and server logs in $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_http() { # url [seconds]: until it answers with any HTTP status
    local deadline=$((SECONDS + ${2:-15}))
    while ((SECONDS < deadline)); do
        [[ "$(curl -s -o /dev/null -w '%{http_code}' "$1" 2>/dev/null)" != 000 ]] && return 0
        sleep 0.1
    done
    warn "no answer from $1"
    return 1
}
manifest() { # one JSON object per line, built by python from name=value pairs
    python3 -c 'import json, sys; print(json.dumps(dict(a.split("=", 1) for a in sys.argv[1:])))' "$@" >>"$MANIFEST"
}
quote() { python3 -c 'import shlex, sys; print(shlex.join(sys.argv[1:]))' "$@"; }
rustc_count() { pgrep -x rustc | wc -l || true; }

# ---------------------------------------------------------------------------------------------------------
# Packages.
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}'; }
declare -A UNAVAILABLE=()
install_packages() {
    local missing=() pkg
    for pkg in "${PACKAGES[@]}"; do
        installed "$pkg" || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    if [[ "${PEERS_INSTALL:-1}" != 1 ]]; then
        for pkg in "${missing[@]}"; do UNAVAILABLE[$pkg]="not installed (PEERS_INSTALL=0)"; done
        return 0
    fi
    log "installing missing packages: ${missing[*]}"
    apt-get update -qq || warn "apt-get update failed; using the package lists already here"
    local to_install=()
    for pkg in "${missing[@]}"; do
        local c
        c=$(candidate "$pkg")
        if [[ -z "$c" || "$c" == "(none)" ]]; then
            UNAVAILABLE[$pkg]="no such package in this Debian (apt-cache policy: no candidate)"
            warn "package $pkg is not available here"
        else
            to_install+=("$pkg")
        fi
    done
    ((${#to_install[@]})) || return 0
    # The Debian packages start their services on install where policy-rc.d allows it; stopped below.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${to_install[@]}" >&2 ||
        warn "apt-get install ${to_install[*]} failed"
    for pkg in "${to_install[@]}"; do
        installed "$pkg" || UNAVAILABLE[$pkg]="apt-get install failed"
    done
}
stop_system_services() { # the packages' own services (nginx on port 80, pushpin on 7999, zurl): never left running
    local svc
    for svc in nginx pushpin zurl; do
        [[ -e /etc/init.d/$svc || -e /lib/systemd/system/$svc.service ]] || continue
        if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
            if systemctl is-active --quiet "$svc" || systemctl is-enabled --quiet "$svc" 2>/dev/null; then
                log "stopping and disabling the system $svc service"
                systemctl disable --now "$svc" >/dev/null 2>&1 || warn "could not stop $svc"
            fi
        elif service "$svc" status >/dev/null 2>&1; then
            log "stopping the system $svc service"
            service "$svc" stop >/dev/null 2>&1 || warn "could not stop $svc"
        fi
    done
}

install_packages
stop_system_services

declare -A SKIP=()
if [[ -n "${UNAVAILABLE[nginx]:-}${UNAVAILABLE[libnginx-mod-nchan]:-}" ]] || ! command -v nginx >/dev/null ||
    [[ ! -f /usr/lib/nginx/modules/ngx_nchan_module.so ]]; then
    SKIP[nchan]="nginx or libnginx-mod-nchan is not installed (${UNAVAILABLE[nginx]:-}${UNAVAILABLE[libnginx-mod-nchan]:-})"
fi
if [[ -n "${UNAVAILABLE[pushpin]:-}" ]] || ! command -v pushpin >/dev/null || ! command -v condure >/dev/null ||
    ! command -v zurl >/dev/null; then
    SKIP[pushpin]="pushpin (with condure and zurl) is not installed (${UNAVAILABLE[pushpin]:-})"
fi
if ! command -v redis-server >/dev/null; then
    SKIP[storyline-redis]="redis-server is not installed (${UNAVAILABLE[redis-server]:-})"
fi
HAVE_WRK=1
command -v wrk >/dev/null || HAVE_WRK=0
for s in "${!SKIP[@]}"; do warn "skipping $s: ${SKIP[$s]}"; done

# ---------------------------------------------------------------------------------------------------------
# Binaries. Building is avoided while someone else compiles (their builds would also distort the timing).
build_if_missing() { # path package
    [[ -x "$1" ]] && return 0
    if (($(rustc_count) > 0)); then
        warn "$1 is missing and rustc is running (another build); building anyway, it may take a while"
    fi
    log "building $2 (release)"
    cargo build --release -p "$2" >&2
}
build_if_missing "$STORYLINE_BIN" storyline
build_if_missing "$BENCH" storyline-bench
STORYLINE_BIN=$(realpath "$STORYLINE_BIN")
BENCH=$(realpath "$BENCH")

physical_cores() {
    local n
    n=$(lscpu -p=CORE,SOCKET 2>/dev/null | grep -v '^#' | sort -u | wc -l || true)
    [[ "$n" =~ ^[0-9]+$ && "$n" -gt 0 ]] || n=$(nproc)
    echo "$n"
}
WORKERS=${PEERS_WORKERS:-$(physical_cores)}
NOFILE=$(ulimit -Hn)
[[ "$NOFILE" == unlimited ]] && NOFILE=1048576
ulimit -n "$NOFILE" 2>/dev/null || true

# storyline: one secret and token for the whole run. Only known STORYLINE_* names are ever set.
STORYLINE_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export STORYLINE_JWT_SECRET
# The generator is one principal on a few loopback addresses and would trip the abuse limits by design; the
# benchmark measures the service, so they are lifted (the limits are 0 = off).
export STORYLINE_PUBLISH_RATE_MEMBER=0 STORYLINE_PUBLISH_RATE_PER_STORY=0 STORYLINE_STREAM_OPENS_PER_IP=0 \
    STORYLINE_STREAMS_PER_PRINCIPAL=0
TOKEN=$("$STORYLINE_BIN" token --sub bench --scope 'read:* write:*' --ttl-secs 86400)

# The body every server gets, as storyline-bench's default: {"type":"bench","data":{"seq":..,"sent_us":..,"pad":".."}}
BODY='{"type":"bench","data":{"seq":{seq},"sent_us":{sent_us},"pad":"{pad}"}}'

# ---------------------------------------------------------------------------------------------------------
# Servers. start_<server> sets: SERVER_PID, AUX_PID (or ""), STREAM_URL, PUBLISH_URL, PUBLISH_BODY,
# PUBLISH_HEADERS (array), PAYLOAD_BYTES, NEEDS_TOKEN, CONNECT_CONCURRENCY and START_CMD (for the record).
REDIS_PID=""
# Starts storyline with extra environment ("$@", e.g. STORYLINE_REDIS_URL=...) and sets the run's targets.
start_storyline_with() {
    local port
    port=$(free_port)
    START_CMD="$* STORYLINE_LISTEN=127.0.0.1:$port STORYLINE_WORKERS=$WORKERS STORYLINE_JWT_SECRET=<random> (limits 0: STORYLINE_PUBLISH_RATE_MEMBER, _PUBLISH_RATE_PER_STORY, _STREAM_OPENS_PER_IP, _STREAMS_PER_PRINCIPAL) RUST_LOG=warn $STORYLINE_BIN serve"
    env "$@" STORYLINE_LISTEN=127.0.0.1:$port STORYLINE_WORKERS=$WORKERS RUST_LOG=warn \
        "$STORYLINE_BIN" serve >"$RUN_DIR/storyline.log" 2>&1 &
    SERVER_PID=$!
    STARTED+=("$SERVER_PID")
    wait_http "http://127.0.0.1:$port/readyz" || return 1
    STREAM_URL="http://127.0.0.1:$port/v1/stories/{story}/stream?access_token={token}"
    PUBLISH_URL="http://127.0.0.1:$port/v1/stories/{story}/events"
    PUBLISH_BODY=$BODY
    PUBLISH_HEADERS=("Content-Type: application/json" "Authorization: Bearer {token}")
    PAYLOAD_BYTES=$PAYLOAD
    NEEDS_TOKEN=1
}
start_storyline_memory() {
    AUX_PID=""
    start_storyline_with
}
start_storyline_redis() {
    local rport
    rport=$(free_port)
    redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --daemonize no --loglevel warning \
        >"$RUN_DIR/redis.log" 2>&1 &
    REDIS_PID=$!
    STARTED+=("$REDIS_PID")
    AUX_PID=$REDIS_PID
    local up=0
    for _ in $(seq 1 100); do
        redis-cli -p "$rport" ping >/dev/null 2>&1 && up=1 && break
        sleep 0.1
    done
    ((up)) || return 1
    start_storyline_with "STORYLINE_REDIS_URL=redis://127.0.0.1:$rport" || return 1
    START_CMD="redis-server --port $rport --bind 127.0.0.1 --save '' --appendonly no; $START_CMD"
}
start_nchan() {
    local port user=""
    port=$(free_port)
    [[ $EUID == 0 ]] && user="user root;"
    mkdir -p "$RUN_DIR/nginx"
    sed -e "s#@WORKERS@#$WORKERS#g" -e "s#@PREFIX@#$RUN_DIR/nginx#g" -e "s#@PORT@#$port#g" \
        -e "s#@USER@#$user#g" -e "s#@NOFILE@#$NOFILE#g" \
        "$PEERS_DIR/nginx-nchan.conf.template" >"$RUN_DIR/nginx/nginx.conf"
    START_CMD="nginx -p $RUN_DIR/nginx -c $RUN_DIR/nginx/nginx.conf   # from bench/peers/nginx-nchan.conf.template, worker_processes $WORKERS"
    nginx -p "$RUN_DIR/nginx" -c "$RUN_DIR/nginx/nginx.conf" -e "$RUN_DIR/nginx/nginx-error.log" \
        >"$RUN_DIR/nginx/stdout.log" 2>&1 &
    SERVER_PID=$!
    STARTED+=("$SERVER_PID")
    AUX_PID=""
    wait_http "http://127.0.0.1:$port/healthz" || return 1
    STREAM_URL="http://127.0.0.1:$port/sub/{story}"
    PUBLISH_URL="http://127.0.0.1:$port/pub/{story}"
    PUBLISH_BODY=$BODY
    PUBLISH_HEADERS=("Content-Type: application/json")
    PAYLOAD_BYTES=$PAYLOAD
    NEEDS_TOKEN=0
}
# Pushpin's control API takes {"items":[{"channel":..,"formats":{"http-stream":{"content":"<SSE frame>"}}}]};
# the SSE frame carries the same JSON as the other servers' bodies (escaped), so subscribers get the same data.
PUSHPIN_BODY='{"items":[{"channel":"{story}","formats":{"http-stream":{"content":"data: {\"type\":\"bench\",\"data\":{\"seq\":{seq},\"sent_us\":{sent_us},\"pad\":\"{pad}\"}}\n\n"}}}]}'
pushpin_payload_bytes() { # story: --payload-bytes that makes the relayed data $PAYLOAD bytes long
    python3 - "$PUSHPIN_BODY" "$BODY" "$1" "$PAYLOAD" <<'EOF'
import sys
wrapped, plain, story, payload = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
print(payload + len(wrapped.replace("{story}", story)) - len(plain))
EOF
}
start_pushpin() {
    local hport pport bport
    hport=$(free_port)
    pport=$(free_port)
    bport=$(free_port)
    mkdir -p "$RUN_DIR/pushpin/run" "$RUN_DIR/pushpin/log"
    sed -e "s#@RUNDIR@#$RUN_DIR/pushpin/run#g" -e "s#@LOGDIR@#$RUN_DIR/pushpin/log#g" -e "s#@HTTP_PORT@#$hport#g" \
        -e "s#@PUBLISH_PORT@#$pport#g" -e "s#@NOFILE@#$NOFILE#g" \
        "$PEERS_DIR/pushpin.conf.template" >"$RUN_DIR/pushpin/pushpin.conf"
    sed -e "s#@BACKEND_PORT@#$bport#g" "$PEERS_DIR/pushpin-routes.template" >"$RUN_DIR/pushpin/routes"
    python3 "$PEERS_DIR/grip_backend.py" "$bport" >"$RUN_DIR/pushpin/backend.log" 2>&1 &
    AUX_PID=$!
    STARTED+=("$AUX_PID")
    START_CMD="python3 bench/peers/grip_backend.py $bport; pushpin --config $RUN_DIR/pushpin/pushpin.conf   # from bench/peers/pushpin.conf.template"
    pushpin --config "$RUN_DIR/pushpin/pushpin.conf" --merge-output >"$RUN_DIR/pushpin/pushpin.log" 2>&1 &
    SERVER_PID=$!
    STARTED+=("$SERVER_PID")
    wait_http "http://127.0.0.1:$bport/sub/x" || return 1
    wait_http "http://127.0.0.1:$pport/publish/" || return 1
    # Through the proxy to the backend and back (the backend holds /sub/...; anything else is a quick 404).
    wait_http "http://127.0.0.1:$hport/ready" || return 1
    STREAM_URL="http://127.0.0.1:$hport/sub/{story}"
    # storyline-bench wants {story} in the publish URL when there are several stories; Pushpin's control API
    # answers 404 to any query string, so {story} goes in the fragment, which HTTP clients never send.
    PUBLISH_URL="http://127.0.0.1:$pport/publish/#{story}"
    PUBLISH_BODY=$PUSHPIN_BODY
    PUBLISH_HEADERS=("Content-Type: application/json")
    PAYLOAD_BYTES=$(pushpin_payload_bytes "$STORY_PREFIX"0)
    NEEDS_TOKEN=0
    # With 200 streams connecting at once over many channels, pushpin-proxy answered some with 502 (no zurl
    # error logged); at 20 at once every stream opens. Connecting is not what is measured, so Pushpin gets 20.
    CONNECT_CONCURRENCY=${PEERS_PUSHPIN_CONNECT_CONCURRENCY:-20}
}

# ---------------------------------------------------------------------------------------------------------
# Scenarios: storyline-bench arguments (ingress: wrk).
scaled() { local n=$(($1 / SCALE)); ((n < 1)) && n=1; echo "$n"; }
procs_for() { local n=$(((($1) + 9499) / 9500)); ((n < 1)) && n=1; echo "$n"; }
scenario_args() { # scenario -> SCENARIO_ARGS
    local streams stories rate=$RATE kind=publish duration=$DURATION
    case "$1" in
    1x100) stories=1 streams=$(scaled 100) ;;
    1x2000) stories=1 streams=$(scaled 2000) ;;
    10x200) stories=10 streams=$((10 * $(scaled 200))) ;;
    1x10000) stories=1 streams=$(scaled 10000) ;;
    1000x5) stories=$(scaled 1000) && streams=$((stories * 5)) && rate=$((RATE * 5)) ;;
    idle19000) stories=1 streams=$(scaled 19000) kind=idle duration=$IDLE_DURATION ;;
    *) return 1 ;;
    esac
    SCENARIO_ARGS=(--scenario "$kind" --streams "$streams" --stories "$stories" --duration "$duration")
    [[ $kind == publish ]] && SCENARIO_ARGS+=(--rate "$rate")
    local procs
    procs=$(procs_for "$streams")
    if ((procs > 1)); then
        SCENARIO_ARGS+=(--procs "$procs" --source-ips 8)
    fi
}

run_name() { # server scenario -> the run's file name stem (with the round when there are several)
    if ((REPEAT > 1)); then echo "$1-$2-r$ROUND"; else echo "$1-$2"; fi
}

run_bench() { # server scenario
    local server=$1 scenario=$2 name rc=0
    name=$(run_name "$1" "$2")
    SCENARIO_ARGS=()
    scenario_args "$scenario"
    local cmd=("$BENCH" --label "$name" --stream-url "$STREAM_URL" --publish-url "$PUBLISH_URL"
        --publish-body "$PUBLISH_BODY" --payload-bytes "$PAYLOAD_BYTES" --story-prefix "$STORY_PREFIX"
        --connect-concurrency "$CONNECT_CONCURRENCY")
    local h
    for h in "${PUBLISH_HEADERS[@]}"; do cmd+=(--publish-header "$h"); done
    [[ $server == storyline-* ]] && cmd+=(--server-pid "$SERVER_PID")
    cmd+=("${SCENARIO_ARGS[@]}" --json "$OUT/$name.json")
    [[ "${SCENARIO_ARGS[1]}" == publish ]] && cmd+=(--plot "$OUT/$name.svg")
    local measure=(python3 "$PEERS_DIR/measure.py" --out "$OUT/$name.procs.json" --server "$SERVER_PID")
    [[ -n "$AUX_PID" ]] && measure+=(--aux "$AUX_PID")
    local rustc_before
    rustc_before=$(rustc_count)
    # The token goes through the environment (BENCH_TOKEN), so it is in no command line or log.
    if [[ $NEEDS_TOKEN == 1 ]]; then
        BENCH_TOKEN=$TOKEN "${measure[@]}" -- "${cmd[@]}" | tee "$OUT/$name.txt" || rc=$?
    else
        "${measure[@]}" -- "${cmd[@]}" | tee "$OUT/$name.txt" || rc=$?
    fi
    local plot=""
    [[ "${SCENARIO_ARGS[1]}" == publish ]] && plot="$name.svg"
    manifest server="$server" scenario="$scenario" rep="$ROUND" kind=bench status="$rc" json="$name.json" \
        procs="$name.procs.json" plot="$plot" rustc_before="$rustc_before" rustc_after="$(rustc_count)" \
        start="${START_CMD//$ROOT\//}" command="$(quote "${cmd[@]}" | sed "s#$ROOT/##g")"
    ((rc == 0)) || warn "$name: storyline-bench exited with status $rc (kept in the report)"
}

run_ingress() { # server
    local server=$1 name rc=0
    name=$(run_name "$1" ingress)
    if [[ $HAVE_WRK == 0 ]]; then
        warn "$name: wrk is not installed; skipped (storyline-bench needs at least one stream)"
        manifest server="$server" scenario=ingress rep="$ROUND" kind=skipped reason="wrk is not installed"
        return 0
    fi
    local url body_file=$RUN_DIR/ingress-body headers="" h story=ingress-0 body
    url=${PUBLISH_URL//\{story\}/$story}
    url=${url%%#*}
    body=${PUBLISH_BODY//\{story\}/$story}
    body=${body//\{seq\}/1}
    body=${body//\{sent_us\}/1}
    # Same size as the scenarios' bodies: fill {pad} up to PAYLOAD_BYTES.
    local bare=${body//\{pad\}/}
    local pad=$((PAYLOAD_BYTES - ${#bare}))
    ((pad < 0)) && pad=0
    body=${body//\{pad\}/$(printf '%*s' "$pad" '' | tr ' ' x)}
    printf '%s' "$body" >"$body_file"
    for h in "${PUBLISH_HEADERS[@]}"; do headers+="${h//\{token\}/$TOKEN}"$'\n'; done
    local cmd=(wrk -t1 -c16 -d"${INGRESS_DURATION}s" --timeout 10s --latency -s "$PEERS_DIR/wrk-post.lua" "$url")
    local rustc_before
    rustc_before=$(rustc_count)
    WRK_BODY_FILE=$body_file WRK_HEADERS=$headers WRK_JSON=$OUT/$name.json \
        python3 "$PEERS_DIR/measure.py" --whole --out "$OUT/$name.procs.json" --server "$SERVER_PID" \
        ${AUX_PID:+--aux "$AUX_PID"} -- "${cmd[@]}" | tee "$OUT/$name.txt" || rc=$?
    manifest server="$server" scenario=ingress rep="$ROUND" kind=wrk status="$rc" json="$name.json" procs="$name.procs.json" \
        rustc_before="$rustc_before" rustc_after="$(rustc_count)" start="${START_CMD//$ROOT\//}" \
        command="WRK_BODY_FILE=<$PAYLOAD_BYTES-byte body> WRK_HEADERS=<${#PUBLISH_HEADERS[@]} headers> $(quote "${cmd[@]}" | sed "s#$ROOT/##g")"
    ((rc == 0)) || warn "$name: wrk exited with status $rc"
}

START_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
log "servers: $SERVERS; scenarios: $SCENARIOS; rounds: $REPEAT; workers: $WORKERS; scale: 1/$SCALE; rustc running now: $(rustc_count)"
for scenario in $SCENARIOS; do
    case "$scenario" in
    1x100 | 1x2000 | 10x200 | 1x10000 | 1000x5 | idle19000 | ingress) ;;
    *) warn "unknown scenario $scenario" && exit 2 ;;
    esac
done
for ROUND in $(seq 1 "$REPEAT"); do
    for scenario in $SCENARIOS; do
        # Memory per idle stream barely moves between runs; one round of it is enough.
        [[ $scenario == idle* ]] && ((ROUND > 1)) && continue
        for server in $SERVERS; do
            if [[ -n "${SKIP[$server]:-}" ]]; then
                manifest server="$server" scenario="$scenario" rep="$ROUND" kind=skipped reason="${SKIP[$server]}"
                continue
            fi
            log "round $ROUND/$REPEAT: $server / $scenario"
            RUN_DIR=$TMP/$server-$scenario-$ROUND
            mkdir -p "$RUN_DIR"
            STORY_PREFIX="peers-$scenario-"
            CONNECT_CONCURRENCY=200 # storyline-bench's default
            if ! "start_${server//-/_}"; then
                warn "$server did not start; logs follow"
                tail -n 20 "$RUN_DIR"/*.log "$RUN_DIR"/*/*.log 2>/dev/null >&2 || true
                manifest server="$server" scenario="$scenario" rep="$ROUND" kind=skipped reason="the server did not start"
                stop_all
                continue
            fi
            if [[ $scenario == ingress ]]; then
                run_ingress "$server"
            else
                run_bench "$server" "$scenario"
            fi
            stop_all
            sleep 1 # let TIME_WAIT sockets and the scheduler settle between runs
        done
    done
done

# BENCHMARKS.md is rewritten only by a full default run (no knob that changes what is measured was set), so a
# quick check never replaces its figures.
DEFAULT_RUN=1
for knob in PEERS_SERVERS PEERS_SCENARIOS PEERS_DURATION PEERS_IDLE_DURATION PEERS_INGRESS_DURATION PEERS_RATE \
    PEERS_PAYLOAD PEERS_SCALE PEERS_REPEAT PEERS_WORKERS; do
    [[ -n "${!knob:-}" ]] && DEFAULT_RUN=0
done
UPDATE_BENCHMARKS=${PEERS_UPDATE_BENCHMARKS:-$DEFAULT_RUN}
BENCHMARKS_ARGS=()
if [[ $UPDATE_BENCHMARKS == 1 ]]; then
    BENCHMARKS_ARGS=(--benchmarks "$ROOT/BENCHMARKS.md" --plots-dir "$ROOT/docs/bench/peers")
fi

python3 "$PEERS_DIR/report.py" --manifest "$MANIFEST" --out "$OUT/peers.md" --start "$START_DATE" \
    --servers "$SERVERS" --workers "$WORKERS" --scale "$SCALE" --storyline-bin "$STORYLINE_BIN" \
    --note "${PEERS_NOTE:-}" --repo "$ROOT" "${BENCHMARKS_ARGS[@]}" \
    --script-args "$(quote env PEERS_SERVERS="$SERVERS" PEERS_SCENARIOS="$SCENARIOS" PEERS_REPEAT="$REPEAT" \
        PEERS_DURATION="$DURATION" PEERS_IDLE_DURATION="$IDLE_DURATION" PEERS_INGRESS_DURATION="$INGRESS_DURATION" \
        PEERS_RATE="$RATE" PEERS_PAYLOAD="$PAYLOAD" PEERS_SCALE="$SCALE" PEERS_WORKERS="$WORKERS") ./scripts/bench-peers.sh"
log "report: $OUT/peers.md"
if [[ $UPDATE_BENCHMARKS == 1 ]]; then
    log "BENCHMARKS.md: peers section rewritten; plots in docs/bench/peers/"
else
    log "BENCHMARKS.md left as it is (not a full default run; PEERS_UPDATE_BENCHMARKS=1 forces it)"
fi
cat "$OUT/peers.md"
