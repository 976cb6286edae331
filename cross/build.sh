#!/usr/bin/env bash
# Builds `grove` in release for ARM targets: `cross/build.sh TARGET... [cargo args...]`.
#
# It installs what it needs first (rustup target, Debian cross compiler and libc, qemu-user), and
# skips what is already there, so it can run on a fresh Debian/Ubuntu machine with only rustup.
# Several targets are built by one cargo run: cargo then compiles one target's crates while the
# other's fat-LTO link (one thread, minutes long) runs, instead of leaving a core idle each time.
# Extra arguments go to `cargo build` (e.g. --config 'profile.release.panic="abort"', or
# `-p grove-device-sim --bin grove-sim` for the simulator too). The simulator is not built by
# default: it is not in the package, the checks do not run it on ARM, and its fat-LTO link for two
# targets was CPU the test command could not spare (issue 17, README "Testing").
source "$(dirname "$0")/lib.sh"

targets=()
while [ $# -gt 0 ] && [[ " ${TARGETS[*]} " == *" $1 "* ]]; do
  targets+=("$1")
  shift
done
[ ${#targets[@]} -ge 1 ] || die "usage: cross/build.sh TARGET... [cargo args...]   (TARGET: ${TARGETS[*]})"
target_args=()
for target in "${targets[@]}"; do
  ensure_build_tools "$target"
  target_args+=(--target "$target")
done

step "cargo build --release ${target_args[*]} -p grove-gateway --bin grove $*"
cd "$REPO_DIR"
start=$(date +%s)
cross_cargo build --release --locked "${target_args[@]}" -p grove-gateway --bin grove "$@"
echo "built in $(( $(date +%s) - start )) s"

# The binaries this build made: grove, and every `--bin NAME` / `--bin=NAME` of the extra
# arguments (an older binary in the directory is not this build's, so only these are checked).
bins=(grove)
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --bin) bins+=("${args[i + 1]:-}") ;;
    --bin=*) bins+=("${args[i]#--bin=}") ;;
  esac
done
for target in "${targets[@]}"; do
  target_info "$target"
  for bin in "${bins[@]}"; do
    path="$(bin_path "$target" "$bin")"
    # The binary must be for the target's machine, or every later step is testing the wrong thing.
    file_out="$("${GNU_TRIPLE}-readelf" -h "$path" | awk -F: '/Machine/ {gsub(/^ +/, "", $2); print $2}')"
    printf '%-10s %10d bytes  %s  %s\n' "$bin" "$(stat -c %s "$path")" "$file_out" "$path"
  done
done
