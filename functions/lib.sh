# Shared by functions/build.sh and functions/ci.sh (sourced, not run): where things are, the guest
# target (installed if missing), and the one list of Rust example functions.
# Arguments of the sourcing script: [OUT_DIR]. Environment: CARGO_TARGET_DIR (default: <repo>/target).
set -euo pipefail

FUNCTIONS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$FUNCTIONS")"
OUT_DIR="${1:-$ROOT/target/functions}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
TARGET=wasm32-unknown-unknown
# The Rust examples: package name = module name = manifest name.
RUST_EXAMPLES=(threshold-alert enricher actuator)

rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"
