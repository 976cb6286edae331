#!/usr/bin/env bash
# grove-router checks beyond `cargo test`: a short run of the `sequences` fuzz target (packet
# sequences through the router core with its invariants checked after each operation), built with
# cargo-fuzz on the stable toolchain with RUSTC_BOOTSTRAP=1 as in gateway/ci.sh. FUZZ_SECONDS
# (default 20) sets the run's length; the corpus is regenerated each run.
set -euo pipefail
CRATE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$CRATE/../.." && pwd)"
FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cd "$CRATE/fuzz"
log="$(mktemp)"
# The whole output goes to a file; its summary lines are shown, and on a failure (a crash, or a
# fuzz build that does not compile) its end too, so the cause is in the CI log.
if ! CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/fuzz-router" RUSTC_BOOTSTRAP=1 \
    cargo fuzz run sequences -- -max_total_time="$FUZZ_SECONDS" -seed=1 -print_final_stats=1 \
    >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "sequences fuzzing FAILED"
    exit 1
fi
grep -E '^(Done|stat::number_of_executed_units)' "$log"
echo "sequences fuzzing passed"
rm -f "$log"
