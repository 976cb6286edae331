#!/usr/bin/env bash
# The cross test: for each ARM target, build, check under qemu-user, package and check the package.
# Prints the stripped size of `grove` per target and fails if the aarch64 one is 20 MB or more.
#
#   cross/ci.sh                  both targets
#   cross/ci.sh TARGET...        only those
#   CROSS_BUILT=1 cross/ci.sh    the checks only, on binaries cross/build.sh has built
#
# Sets up everything it needs itself (see cross/build.sh); the times of each step are printed at the
# end. Builds run one after the other: each already uses every core.
source "$(dirname "$0")/lib.sh"

# The budget of the issue: the aarch64 binary, stripped, under 20 MB (20 * 10^6 bytes).
AARCH64_LIMIT=20000000

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${TARGETS[@]}")
for t in "${targets[@]}"; do target_info "$t"; done

summary=()
timed() {
  local label="$1" start
  shift
  start=$(date +%s)
  "$@"
  summary+=("$(printf '%-48s %5d s' "$label" "$(( $(date +%s) - start ))")")
}

ci_start=$(date +%s)
sizes=()
# One cargo run for every target (see build.sh: the targets' builds overlap). CROSS_BUILT=1 says
# the caller has already run build.sh for these targets into the same CARGO_TARGET_DIR (the test
# command runs it in the background, beside the fuzz and firmware stages, see scripts/test.sh).
if [ "${CROSS_BUILT:-}" = 1 ]; then
  for t in "${targets[@]}"; do
    [ -x "$(bin_path "$t" grove)" ] || die "CROSS_BUILT=1 but $(bin_path "$t" grove) is missing"
  done
else
  timed "build ${targets[*]}" "$CROSS_DIR/build.sh" "${targets[@]}"
fi
for t in "${targets[@]}"; do
  timed "qemu check $t" "$CROSS_DIR/check.sh" "$t"
  timed "package $t" "$CROSS_DIR/package.sh" "$t"
  timed "package check $t" "$CROSS_DIR/check-package.sh" "$t"
  bin="$(bin_path "$t" grove)"
  target_info "$t"
  # The profile strips at link time; strip again to measure what a stripped binary is whatever the
  # profile says, without touching the built file.
  "${GNU_TRIPLE}-strip" -o "$bin.stripped" "$bin"
  size=$(stat -c %s "$bin.stripped")
  rm -f "$bin.stripped"
  deb_size=$(stat -c %s "$CARGO_TARGET_DIR"/debian/grove_*-1_"$DEB_ARCH".deb | tail -n 1)
  sizes+=("$(awk -v t="$t" -v s="$size" -v d="$deb_size" \
    'BEGIN { printf "%-32s grove stripped: %9d bytes (%.2f MB), .deb %d bytes", t, s, s / 1e6, d }')")
  if [ "$t" = aarch64-unknown-linux-gnu ] && [ "$size" -ge "$AARCH64_LIMIT" ]; then
    printf '%s\n' "${sizes[@]}"
    die "aarch64 grove is $size bytes stripped: the budget is under $AARCH64_LIMIT"
  fi
done

step "summary"
printf '%s\n' "${sizes[@]}"
printf '%s\n' "${summary[@]}"
printf 'total %d s\n' "$(( $(date +%s) - ci_start ))"
