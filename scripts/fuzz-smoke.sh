#!/usr/bin/env bash
# Builds every fuzz target and runs each briefly on its seed corpus, so the targets keep
# building and the seeds keep passing (CI: at most 20 s each). The long runs and their table
# are in docs/fuzzing.md.
#
#   scripts/fuzz-smoke.sh [SECONDS_PER_TARGET]
#
# cargo-fuzz drives libFuzzer through rustc's unstable flags; this machine has only a stable
# toolchain, so RUSTC_BOOTSTRAP=1 lets it accept them. `-s none`: no sanitizer, since the code
# under test is safe Rust (plus aws-lc, which is not built instrumented either way here).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-20}"
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2 >&2
fi
cargo fuzz build -s none
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo fuzz list); do
  mkdir -p "$scratch/$target"
  log="$scratch/$target.log"
  dict=()
  if [[ -f "$target.dict" ]]; then dict=("-dict=$target.dict"); fi
  # A crash fails the run and leaves the input under fuzz/artifacts/<target>/.
  if ! cargo fuzz run -s none "$target" "$scratch/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 "${dict[@]}" >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz-smoke: $target FAILED" >&2
    exit 1
  fi
  echo "fuzz-smoke: $target ok, $(grep -m1 -o 'number_of_executed_units: *[0-9]*' "$log" | tr -s ' ')" >&2
done
