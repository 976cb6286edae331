#!/usr/bin/env bash
# Fuzz smoke run for grove-rules' parser, compiler and evaluator (rules/fuzz, target `compile`).
#
#   bash rules/ci.sh                      # 30 s, as in the test command
#   FUZZ_SECONDS=3600 bash rules/ci.sh    # the longer run, before a release
#
# cargo-fuzz needs nightly-only flags (-Zsanitizer=address); RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept them, so no nightly install is needed. cargo-fuzz is installed if missing. New
# corpus entries go to a temporary directory (the seeds in rules/fuzz/seeds stay as they are); a crash
# leaves its input in rules/fuzz/artifacts/compile/ and makes this script fail.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
seconds="${FUZZ_SECONDS:-30}"
# The sanitizer build must not share a target dir with normal builds (different RUSTFLAGS would make
# each rebuild the other).
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$here/fuzz/target}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "ci.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

corpus="$(mktemp -d)"
trap 'rm -rf "$corpus"' EXIT

cd "$here/fuzz"
RUSTC_BOOTSTRAP=1 cargo fuzz run compile "$corpus" seeds/compile -- \
    -max_total_time="$seconds" -max_len=4096 -timeout=5 -print_final_stats=1
echo "ci.sh: fuzzed grove-rules for ${seconds}s without a crash"
