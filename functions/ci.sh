#!/usr/bin/env bash
# Checks for Grove functions that the root workspace's `cargo test` cannot do (this is its own
# workspace, built for wasm32-unknown-unknown): formatting, clippy for wasm32 and natively, the native
# unit tests of the SDK and of the examples' pure logic, the build of every example (build.sh), and
# the ABI check of the built modules (imports, exports, manifests).
#
# Usage: functions/ci.sh [OUT_DIR]   (default <repo>/target/functions, as for build.sh)
# Environment: CARGO_TARGET_DIR (default: <repo>/target).
set -euo pipefail

FUNCTIONS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$FUNCTIONS")"
OUT_DIR="${1:-$ROOT/target/functions}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
TARGET=wasm32-unknown-unknown
GUEST_PACKAGES=(-p grove-fn-sdk -p example-common -p threshold-alert -p enricher -p actuator)

step() { printf '\n== functions: %s\n' "$*"; }

cd "$FUNCTIONS"
rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"

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
