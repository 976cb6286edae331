#!/usr/bin/env bash
# Gateway checks beyond `cargo test`: a short run of each fuzz target (cargo-fuzz on the stable
# toolchain with RUSTC_BOOTSTRAP=1, as in firmware/ci.sh): `policy` (the policy matcher) and `connect` (the connection layer's CONNECT phase:
# bytes from an unauthenticated peer). FUZZ_SECONDS (default 20) sets each run's length and
# FUZZ_TARGETS (default "policy connect") which run; the corpus is regenerated each run.
set -euo pipefail
GATEWAY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$GATEWAY")"
FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
FUZZ_TARGETS="${FUZZ_TARGETS:-policy connect}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cd "$GATEWAY/fuzz"
log="$(mktemp)"
for target in $FUZZ_TARGETS; do
    # The whole output goes to a file; its summary lines are shown, and on a failure (a crash, or
    # a fuzz build that does not compile) its end too, so the cause is in the CI log.
    if ! CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/fuzz-gateway" RUSTC_BOOTSTRAP=1 \
        cargo fuzz run "$target" -- -max_total_time="$FUZZ_SECONDS" -seed=1 -print_final_stats=1 \
        >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "$target fuzzing FAILED"
        exit 1
    fi
    grep -E '^(Done|stat::number_of_executed_units)' "$log"
    echo "$target fuzzing passed"
done
rm -f "$log"
