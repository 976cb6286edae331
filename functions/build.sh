#!/usr/bin/env bash
# Builds the example functions into OUT_DIR (default <repo>/target/functions): for each example a
# module `{name}.wasm` and its manifest `{name}.toml`, ready for `grove fn deploy`.
#
# Rust examples are built in release for wasm32-unknown-unknown (the rustup target is installed if
# missing) with the workspace's size profile (opt-level "s", LTO, panic=abort); the WAT example is
# compiled by the workspace's grove-fn-wat tool (the `wat` crate), so nothing beyond cargo is needed.
# Files are copied only when they changed, so a warm run is quick and leaves timestamps alone.
#
# Usage: functions/build.sh [OUT_DIR]
# Environment: CARGO_TARGET_DIR (default: <repo>/target).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
mkdir -p "$OUT_DIR"

# Copies $1 to $2 unless $2 already has the same bytes.
install_file() {
    cmp -s "$1" "$2" || cp "$1" "$2"
}

packages=()
for name in "${RUST_EXAMPLES[@]}"; do
    packages+=(-p "$name")
done
(cd "$FUNCTIONS" && cargo build --quiet --release --target "$TARGET" "${packages[@]}")
for name in "${RUST_EXAMPLES[@]}"; do
    # Cargo names the artifact after the crate, with '-' turned into '_'.
    install_file "$CARGO_TARGET_DIR/$TARGET/release/${name//-/_}.wasm" "$OUT_DIR/$name.wasm"
    install_file "$FUNCTIONS/examples/$name/manifest.toml" "$OUT_DIR/$name.toml"
done

(cd "$FUNCTIONS" && cargo run --quiet -p grove-fn-tools --bin grove-fn-wat -- \
    "$FUNCTIONS/examples/wat/echo.wat" "$OUT_DIR/echo.wasm")
install_file "$FUNCTIONS/examples/wat/echo.toml" "$OUT_DIR/echo.toml"

echo "functions in $OUT_DIR (bytes):"
for name in "${RUST_EXAMPLES[@]}" echo; do
    printf '  %-22s %8d\n' "$name.wasm" "$(stat -c %s "$OUT_DIR/$name.wasm")"
done
