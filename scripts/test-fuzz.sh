#!/usr/bin/env bash
# Fuzz smoke test: builds the cargo-fuzz targets in fuzz/ (every decoder of
# client input; see fuzz/README.md) and runs each for a short, bounded time
# from its committed seed corpus. Fails on any crash, panic, hang or memory
# blow-up. Installs cargo-fuzz if it is missing; skips, saying so, when it
# cannot be installed.
#
#   FUZZ_SECONDS   time per target (default 10)
#   FUZZ_TARGETS   targets to run, space-separated (default: all)
#
# `scripts/test-fuzz.sh build` only builds (scripts/test.sh does that in the
# background, niced, while the other suites run).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-10}"
mode="${1:-run}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing: installing it"
  if ! cargo install cargo-fuzz --locked; then
    echo "SKIPPED: cargo-fuzz could not be installed, so the fuzz targets did not run"
    exit 0
  fi
fi

# libFuzzer's instrumentation flags are nightly-only; this lets the stable
# toolchain accept them. No sanitizer: the decoders are safe Rust, so ASan adds
# build and run time and finds nothing more. Debug assertions stay on, so an
# arithmetic overflow is a crash too.
export RUSTC_BOOTSTRAP=1
flags=(--fuzz-dir fuzz --sanitizer none --debug-assertions)

cargo fmt --manifest-path fuzz/Cargo.toml --all -- --check
cargo fuzz build "${flags[@]}"
if [ "$mode" = build ]; then
  exit 0
fi

read -r -a targets <<<"${FUZZ_TARGETS:-$(cargo fuzz list --fuzz-dir fuzz | tr '\n' ' ')}"
# New inputs go to a scratch corpus; the committed seeds stay as they are.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

passed=0
failed=0
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  printf -- '--- %s: %ss\n' "$t" "$seconds"
  if cargo fuzz run "${flags[@]}" "$t" "$work/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$work/$t.log" 2>&1; then
    grep -E '^(Done|stat::number_of_executed_units)' "$work/$t.log" || true
    passed=$((passed + 1))
  else
    tail -n 60 "$work/$t.log"
    echo "FAILED: fuzz target $t (the input is under fuzz/artifacts/$t/;"
    echo "        replay it with: RUSTC_BOOTSTRAP=1 cargo fuzz run ${flags[*]} $t fuzz/artifacts/$t/<file>)"
    failed=$((failed + 1))
  fi
done

echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
