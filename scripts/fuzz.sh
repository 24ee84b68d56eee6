#!/usr/bin/env bash
# Fuzzes every parser that reads what a client sends (story ids, event types, publish bodies, resume ids, tokens)
# for a bounded time each, and fails if any target crashes. The targets live in fuzz/ (see fuzz/README.md).
#
#   ./scripts/fuzz.sh [seconds-per-target]      default 60
#
# Environment:
#   FUZZ_SEED=<n>          libFuzzer's -seed (default 1): the same seed, seeds and binary replay the same
#                          mutations, so a run is reproducible up to where the time limit stops it.
#   FUZZ_KEEP_CORPUS=1     keep and grow fuzz/corpus/<target> across runs; by default each run starts from the
#                          committed seeds only (fuzz/seeds/<target>), which is what makes it reproducible.
#   FUZZ_SANITIZER=<s>     cargo-fuzz --sanitizer (default address).
#
# Why RUSTC_BOOTSTRAP=1: cargo-fuzz builds with unstable rustc flags (-Zsanitizer=address, -Cpasses=sancov-module,
# ...) that normally need nightly. Only stable is installed here, and RUSTC_BOOTSTRAP=1 lets stable rustc accept
# them. It is set for this script's cargo calls only. AddressSanitizer works this way on stable (checked with
# rustc 1.95): our crates forbid unsafe code, but dependencies (actix-http, serde_json, bytes, ...) do not.
#
# Output: one summary line per target (executions, final cov/ft, corpus size, wall time); the full libFuzzer logs
# are in fuzz/logs/<target>.log. On a crash the script names the artifact (fuzz/artifacts/<target>/...) and
# exits 1; reproduce it with: RUSTC_BOOTSTRAP=1 cargo fuzz run -a <target> <artifact>  (from fuzz/), or run the
# printed command line, which replays the one input with the binary this script built.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
seed="${FUZZ_SEED:-1}"
sanitizer="${FUZZ_SANITIZER:-address}"
case "$seconds" in '' | *[!0-9]*)
  echo "usage: $0 [seconds-per-target]" >&2
  exit 64
  ;;
esac

export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

cd fuzz
# -a: debug assertions and overflow checks on, on top of the release profile cargo-fuzz uses.
build_flags=(-a --sanitizer "$sanitizer")

echo "== building fuzz targets ($(cargo fuzz --version), $(rustc --version), sanitizer $sanitizer)"
cargo fuzz build "${build_flags[@]}"

mapfile -t targets < <(cargo fuzz list)
# Run the binaries built above rather than `cargo fuzz run`, which rebuilds first: every target then runs the
# same build even if the sources change meanwhile, and the time measured is fuzzing only. This is where
# cargo-fuzz puts them (its default release profile, for the host; CARGO_TARGET_DIR moves them).
bin_dir="${CARGO_TARGET_DIR:-target}/$(rustc -vV | sed -n 's/^host: //p')/release"
mkdir -p logs
failed=()

echo "== fuzzing ${#targets[@]} targets for ${seconds}s each, -seed=$seed"
for target in "${targets[@]}"; do
  corpus="corpus/$target"
  [ "${FUZZ_KEEP_CORPUS:-0}" = 1 ] || rm -rf "$corpus"
  mkdir -p "$corpus" "seeds/$target"
  log="logs/$target.log"

  # The first corpus directory is the one libFuzzer writes to; seeds/ and regressions/ are only read. Every
  # input in them runs first, so a committed reproducer fails the run until its bug is fixed.
  inputs=("$corpus" "seeds/$target")
  if [ -d "regressions/$target" ]; then inputs+=("regressions/$target"); fi
  start=$SECONDS
  status=0
  mkdir -p "artifacts/$target"
  "$bin_dir/$target" -artifact_prefix="artifacts/$target/" -max_total_time="$seconds" -seed="$seed" \
    -timeout=10 -print_final_stats=1 "${inputs[@]}" >"$log" 2>&1 || status=$?
  elapsed=$((SECONDS - start))

  # The last status line libFuzzer printed, e.g. "#123456 DONE cov: 306 ft: 1175 corp: 252/29Kb ...".
  last="$(grep -E '^#[0-9]+' "$log" | grep 'cov:' | tail -n 1 || true)"
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  [ -n "$execs" ] || execs="$(sed -E -n 's/^#([0-9]+).*/\1/p' <<<"$last")"
  cov="$(sed -E -n 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")"
  ft="$(sed -E -n 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")"
  corp="$(sed -E -n 's/.* corp: ([0-9]+\/[0-9a-zA-Z]+).*/\1/p' <<<"$last")"
  artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)"

  if [ "$status" -eq 0 ]; then
    result=ok
  elif [ -n "$artifact" ]; then
    result="CRASH fuzz/$artifact"
    failed+=("$target")
  else
    result="FAILED (exit $status, no artifact; see fuzz/$log)"
    failed+=("$target")
  fi
  printf '%-18s execs: %-10s cov: %-5s ft: %-6s corp: %-12s time: %4ss  %s\n' \
    "$target" "${execs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$elapsed" "$result"
  if [ -n "$artifact" ] && [ "$status" -ne 0 ]; then
    echo "    reproduce: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run ${build_flags[*]} $target $artifact)"
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz.sh: ${#failed[@]} target(s) failed: ${failed[*]} (logs in fuzz/logs/)" >&2
  exit 1
fi
echo "fuzz.sh: all ${#targets[@]} targets ran ${seconds}s without a crash"
