#!/usr/bin/env bash
# Builds `grove` (and `grove-sim`) in release for one ARM target: `cross/build.sh TARGET`.
#
# It installs what it needs first (rustup target, Debian cross compiler and libc, qemu-user), and
# skips what is already there, so it can run on a fresh Debian/Ubuntu machine with only rustup.
# Extra arguments go to `cargo build` (e.g. --config 'profile.release.panic="abort"').
source "$(dirname "$0")/lib.sh"

[ $# -ge 1 ] || die "usage: cross/build.sh TARGET [cargo args...]   (TARGET: ${TARGETS[*]})"
target="$1"
shift
ensure_build_tools "$target"

step "cargo build --release --target $target (grove, grove-sim)"
cd "$REPO_DIR"
start=$(date +%s)
cross_cargo build --release --locked --target "$target" \
  -p grove-gateway --bin grove -p grove-device-sim --bin grove-sim "$@"
echo "built in $(( $(date +%s) - start )) s"

for bin in grove grove-sim; do
  path="$(bin_path "$target" "$bin")"
  # The binary must be for the target's machine, or every later step is testing the wrong thing.
  file_out="$("${GNU_TRIPLE}-readelf" -h "$path" | awk -F: '/Machine/ {gsub(/^ +/, "", $2); print $2}')"
  printf '%-10s %10d bytes  %s  %s\n' "$bin" "$(stat -c %s "$path")" "$file_out" "$path"
done
