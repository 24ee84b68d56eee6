#!/usr/bin/env bash
# Property-based contract test of the live service with schemathesis: builds `storyline`, starts `storyline serve`
# on a free loopback port (in-memory broker, fixed JWT secret, 1 s heartbeat), mints an admin token with
# `read:* write:*`, and lets schemathesis generate requests for the operations of the served /openapi.json,
# checking every response against the document: no 5xx, documented status codes, content types, headers and
# body schemas. Exits non-zero on any failure, and also if the server dies, panics or logs an error of its own.
#
# Why: the contract suite (crates/storyline-server/tests/api) checks the cases we thought of; this checks that
# the OpenAPI document we publish describes what the server really answers, for inputs we did not think of.
#
# Two passes:
#   1. every operation, every parameter generated (positive and negative data);
#   2. the read operations pinned to a story holding events, so that bodies with events are checked too (random
#      story ids are almost always empty): history pages, and a stream resumed from an id newer than the story,
#      which answers a `gap` event and then replays the story.
#
# The event stream never ends on its own. schemathesis >= 4.32 reads a `text/event-stream` answer until the
# request timeout has passed in total (or 20 events arrived), then closes it and checks the events it read
# against the document. So the stream operation is tested like the others, with a request timeout of its own
# (STREAM_SECS, set in the config below: events due to the reader are sent at once, a heartbeat every second)
# and nothing hangs; other requests get REQUEST_SECS. (schemathesis does not test GET /openapi.json, the
# document it loads.)
#
# Reproducible: fixed seed, no example database and no crash cache, a bounded number of examples per operation.
# Nothing is written outside target/ and a temporary directory. Knobs: SCHEMATHESIS_MAX_EXAMPLES (default 30,
# pass 1), SCHEMATHESIS_SEED. Extra arguments go to both `schemathesis run`s.
#
# Needs python3 (>= 3.10) with venv, and PyPI on the first run: the venv in target/schemathesis-venv is reused
# while it holds the pinned version.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned exactly: the latest release when this was written (Python >= 3.10; used with 3.11). 4.x reads event
# streams up to the request timeout (older versions wait for the end of an endless stream).
SCHEMATHESIS_VERSION="4.32.5"
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-30}"
SEED="${SCHEMATHESIS_SEED:-20251124}"
REQUEST_SECS=10
STREAM_SECS=1
SEEDED_STORY="schemathesis-seeded"
# Every check schemathesis has: no 5xx; statuses, content types, headers and bodies as documented; schema-valid
# requests accepted and schema-invalid ones refused; and its stateful and security checks.
CHECKS="all"

# shellcheck source=scripts/lib.sh
. scripts/lib.sh

VENV=target/schemathesis-venv
make_venv() {
  rm -rf "$VENV"
  python3 -m venv "$VENV" >/dev/null 2>&1 && return 0
  rm -rf "$VENV"
  # Debian and Ubuntu ship the venv module separately.
  if apt_install "the python3 venv module" python3-venv; then
    python3 -m venv "$VENV" && return 0
  fi
  echo "schemathesis.sh: \`python3 -m venv\` does not work here; install the venv module (Debian/Ubuntu: apt-get install python3-venv)" >&2
  exit 1
}
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -qx "schemathesis, version $SCHEMATHESIS_VERSION"; then
  if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "schemathesis.sh: needs python3 >= 3.10 on PATH (found: $(python3 --version 2>&1 || echo none))" >&2
    exit 1
  fi
  echo "schemathesis.sh: installing schemathesis $SCHEMATHESIS_VERSION into $VENV" >&2
  make_venv
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

cargo build --locked -q -p storyline
BIN="${CARGO_TARGET_DIR:-target}/debug/storyline"

# The service reads every STORYLINE_* variable and refuses unknown ones (exit 64; STORYLINE_TEST_FULL is one),
# and a STORYLINE_REDIS_URL from the caller must not point this run at some Redis: start from none of them.
while IFS= read -r name; do unset "$name"; done < <(compgen -e | grep '^STORYLINE_' || true)
export STORYLINE_JWT_SECRET="schemathesis-secret-0123456789abcdef0123"
export STORYLINE_HEARTBEAT_SECS=1
export STORYLINE_LOG_FORMAT=json
export RUST_LOG=warn,storyline=info,storyline_server=info
# Hypothesis keeps caches (Unicode tables) in ./.hypothesis unless told otherwise: keep them out of the tree.
export HYPOTHESIS_STORAGE_DIRECTORY="$VENV/hypothesis"

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  [ -z "$SERVER_PID" ] || wait "$SERVER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Port 0: the kernel picks a free port, and the service logs the address it bound.
"$BIN" serve --listen 127.0.0.1:0 >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
ADDR=""
for _ in $(seq 300); do
  ADDR="$(sed -n 's/.*"message":"listening","address":"\([0-9.]*:[0-9]*\)".*/\1/p' "$WORK/server.log" | head -n1)"
  [ -n "$ADDR" ] && break
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "schemathesis.sh: storyline serve exited before listening:" >&2
    cat "$WORK/server.log" >&2
    exit 1
  fi
  sleep 0.1
done
if [ -z "$ADDR" ]; then
  echo "schemathesis.sh: storyline serve did not log its address within 30 s:" >&2
  cat "$WORK/server.log" >&2
  exit 1
fi
BASE="http://$ADDR"
echo "schemathesis.sh: storyline serve (pid $SERVER_PID) on $BASE" >&2

TOKEN="$("$BIN" token --sub schemathesis --scope 'read:* write:*' --tier admin --ttl-secs 3600)"

# Events for pass 2 to read back.
"$VENV/bin/python" - "$BASE" "$TOKEN" "$SEEDED_STORY" <<'EOF'
import json, sys, urllib.request
base, token, story = sys.argv[1:]
for i, data in enumerate([{"text": "Once upon a time"}, [1, "two", None, {"nested": True}], "three"]):
    request = urllib.request.Request(
        f"{base}/v1/stories/{story}/events",
        data=json.dumps({"type": f"chapter.{i}", "data": data}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201, response.status
EOF

cat >"$WORK/common.toml" <<EOF
# Nothing remembered between runs (the crash cache would replay earlier failures first, in .schemathesis/).
[cache]
enabled = false

[[operations]]
include-operation-id = "stream"
request-timeout = $STREAM_SECS

# The many-story stream is endless too. Its rules that a JSON Schema cannot state: the cursor has one position
# per story (bad-cursor), the stories are distinct, and there are at most STORYLINE_MAX_STORIES_PER_STREAM of
# them, a setting the document does not carry (bad-query, too-many-stories). A schema-valid request may break
# them, so 400 counts as an accepted answer to positive data for this operation only; every answer is still
# checked against the document, where that 400 is documented.
[[operations]]
include-operation-id = "streams"
request-timeout = $STREAM_SECS
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]

# A revocation names exactly one of jti and sub, and an until after now and at most ten years ahead: rules about
# the request as a whole and about the clock, which a JSON Schema cannot state. A schema-valid body may break
# them, so 422 (invalid-revocation, documented) counts as an accepted answer to positive data for this operation.
[[operations]]
include-operation-id = "revoke"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "422", "429", "5xx"]

# An Idempotency-Key reused on a story for a different event is 422 idempotency-key-mismatch (documented): a rule
# about the request and the ones before it, which a JSON Schema cannot state. Schemathesis reuses generated keys
# (the same key with another body on story "0"), so 422 counts as an accepted answer to positive data for this
# operation; every answer is still checked against the document. That a schema-valid event is accepted (201/200)
# is the HTTP contract suite's to check (crates/storyline-server/tests/api).
[[operations]]
include-operation-id = "publish"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]
EOF
cat >"$WORK/seeded.toml" <<EOF
[cache]
enabled = false

[[operations]]
include-operation-id = "history"
parameters = { story = "$SEEDED_STORY" }

# Newer than any id the story has: a gap event, then the whole story.
[[operations]]
include-operation-id = "stream"
request-timeout = $STREAM_SECS
parameters = { story = "$SEEDED_STORY", last_event_id = "99999999999999-0", "Last-Event-ID" = "99999999999999-0" }
EOF

run() {
  local config="$1"
  shift
  "$VENV/bin/schemathesis" --config-file "$config" run "$BASE/openapi.json" \
    --header "Authorization: Bearer $TOKEN" \
    --checks "$CHECKS" \
    --seed "$SEED" \
    --generation-database none \
    --request-timeout "$REQUEST_SECS" \
    --workers 1 \
    --no-color \
    "$@"
}

status=0
echo "== schemathesis pass 1: every operation, generated parameters" >&2
run "$WORK/common.toml" --max-examples "$MAX_EXAMPLES" "${@}" || status=1
echo "== schemathesis pass 2: history and stream of a story with events" >&2
run "$WORK/seeded.toml" --max-examples 5 --mode positive \
  --include-operation-id history --include-operation-id stream "${@}" || status=1

if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  echo "schemathesis.sh: storyline serve died during the run; its log:" >&2
  cat "$WORK/server.log" >&2
  status=1
fi
# The service's own errors and any panic. (actix logs malformed requests, e.g. a NUL byte in a header, at ERROR
# level under its own target: those are the client's fault and are not counted.)
if grep -E '"level":"ERROR".*"target":"storyline|panicked' "$WORK/server.log" >&2; then
  echo "schemathesis.sh: storyline serve logged the errors above" >&2
  status=1
fi
exit "$status"
