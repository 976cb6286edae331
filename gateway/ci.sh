#!/usr/bin/env bash
# Gateway checks beyond `cargo test`: the vendored rumqttd's own unit tests (it is outside the
# workspace; they cover Grove's patches to it too, see vendor/rumqttd/GROVE-PATCHES.md), then a short
# run of the policy-matcher fuzz target (cargo-fuzz on the stable toolchain with RUSTC_BOOTSTRAP=1,
# as in firmware/ci.sh). FUZZ_SECONDS (default 20) sets its length; the corpus is regenerated each
# run.
set -euo pipefail
GATEWAY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$GATEWAY")"
FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
(cd "$ROOT/vendor/rumqttd" && CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/rumqttd" \
    cargo test --locked --lib)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cd "$GATEWAY/fuzz"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/fuzz-gateway" RUSTC_BOOTSTRAP=1 \
    cargo fuzz run policy -- -max_total_time="$FUZZ_SECONDS" -seed=1 -print_final_stats=1 2>&1 \
    | grep -E '^(Done|stat::number_of_executed_units|==[0-9]+==|thread .* panicked|SUMMARY)'
echo "policy fuzzing passed"
