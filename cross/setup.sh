#!/usr/bin/env bash
# Installs what the ARM builds need (rustup targets, Debian cross compilers and libcs, qemu-user),
# and nothing else: `cross/setup.sh [TARGET...]` (default: every supported target). build.sh does
# the same before it builds; the test command runs this first, in the foreground, because it then
# starts build.sh in the background beside other stages that install packages too.
source "$(dirname "$0")/lib.sh"

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${TARGETS[@]}")
for t in "${targets[@]}"; do ensure_build_tools "$t"; done
