#!/usr/bin/env bash
# Checks for Grove functions that the root workspace's `cargo test` cannot do (this is its own
# workspace, built for wasm32-unknown-unknown): formatting, clippy for wasm32 and natively, the native
# unit tests of the SDK and of the examples' pure logic, the build of every example (build.sh), and
# the ABI check of the built modules (imports, exports, manifests).
#
# Usage: functions/ci.sh [OUT_DIR]   (default <repo>/target/functions, as for build.sh)
# Environment: CARGO_TARGET_DIR (default: <repo>/target).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
GUEST_PACKAGES=(-p grove-fn-sdk -p example-common)
for name in "${RUST_EXAMPLES[@]}"; do
    GUEST_PACKAGES+=(-p "$name")
done

step() { printf '\n== functions: %s\n' "$*"; }

cd "$FUNCTIONS"

step "cargo fmt --check"
cargo fmt --all --check

step "clippy ($TARGET and native)"
cargo clippy --target "$TARGET" "${GUEST_PACKAGES[@]}" -- -D warnings
cargo clippy --all-targets -- -D warnings

step "native unit tests (SDK, examples' logic) and doc tests"
cargo test "${GUEST_PACKAGES[@]}"

step "build"
"$FUNCTIONS/build.sh" "$OUT_DIR"

step "ABI check of the built modules"
GROVE_FN_OUT="$OUT_DIR" cargo test -p grove-fn-tools

step "functions checks passed"
