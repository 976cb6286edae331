#!/usr/bin/env bash
# Gateway checks beyond `cargo test`: a short run of the policy-matcher fuzz target (cargo-fuzz on
# the stable toolchain with RUSTC_BOOTSTRAP=1, as in firmware/ci.sh). FUZZ_SECONDS (default 20)
# sets its length; the corpus is regenerated each run.
set -euo pipefail
GATEWAY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$GATEWAY")"
FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cd "$GATEWAY/fuzz"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/fuzz-gateway" RUSTC_BOOTSTRAP=1 \
    cargo fuzz run policy -- -max_total_time="$FUZZ_SECONDS" -seed=1 -print_final_stats=1 2>&1 \
    | grep -E '^(Done|stat::number_of_executed_units|==[0-9]+==|thread .* panicked|SUMMARY)'
echo "policy fuzzing passed"
