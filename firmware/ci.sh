#!/usr/bin/env bash
# Firmware checks that the workspace's `cargo test` cannot do: builds grove-firmware for both thumb
# targets, builds the two example firmwares (STM32F411 for thumbv7em-none-eabihf, Raspberry Pi Pico
# RP2040 for thumbv6m-none-eabi) and the size probes, prints flash and static RAM from the ELFs,
# fails beyond the budget, runs a self-test image under QEMU (installing qemu-system-arm if missing), and runs
# the fuzz targets briefly.
#
# Budget (issue 7): each example at most 64 KiB flash and 16 KiB static RAM; the device core alone at
# most 24 KiB flash. The core is measured as the difference between two probe images that differ only
# in linking it (see firmware/size-probe/src/lib.rs). Issue 20: the core with TLS (the with-tls probe
# less the probe without the core) at most 16 KiB static RAM on thumbv7em, not counting the TLS record
# buffers (16.6 KiB to receive, 1 KiB to send, a static the application places), which are printed
# beside it; its flash goal of 64 KiB is missed (about 98 KiB; even without any certificate check
# embedded-tls and the core take 68 KiB, see firmware/README.md, "Memory"), so it is reported against
# the goal and checked against a ceiling just above the measured size, which catches growth.
#
# Environment: CARGO_TARGET_DIR (default: <repo>/target), FUZZ_SECONDS per fuzz target (default 15;
# 0 skips fuzzing).
#
# The sub-crates (board, pico, size-probe, qemu, fuzz) are workspaces of their own with committed
# Cargo.lock files; they build with --locked, as the root workspace does.
set -euo pipefail

FIRMWARE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$FIRMWARE")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
FUZZ_SECONDS="${FUZZ_SECONDS:-15}"
THUMB_TARGETS=(thumbv7em-none-eabihf thumbv6m-none-eabi)
FLASH_BUDGET=$((64 * 1024))
RAM_BUDGET=$((16 * 1024))
CORE_FLASH_BUDGET=$((24 * 1024))
TLS_TARGET=thumbv7em-none-eabihf
TLS_FLASH_GOAL=$((64 * 1024))
TLS_FLASH_CEILING=$((104 * 1024))

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

step "rustup targets"
installed="$(rustup target list --installed)"
for target in "${THUMB_TARGETS[@]}"; do
    grep -qx "$target" <<<"$installed" || rustup target add "$target"
done

# llvm-size understands every ELF; GNU size from binutils reads ARM ELFs too.
SIZE="$(command -v llvm-size || command -v rust-size || command -v arm-none-eabi-size || command -v size || true)"
[[ -n "$SIZE" ]] || fail "no size tool: apt-get install llvm (llvm-size) or binutils (size)"

# Prints "flash ram" for an ELF: flash = text (vectors, code, rodata) + data (its load image);
# static RAM = data + bss.
sizes() {
    "$SIZE" -B "$1" | awk 'NR == 2 { print $1 + $2, $2 + $3 }'
}

NM="$(command -v llvm-nm || command -v arm-none-eabi-nm || command -v nm || true)"
[[ -n "$NM" ]] || fail "no symbol tool: apt-get install llvm (llvm-nm) or binutils (nm)"

# Prints the size in bytes of the first symbol of an ELF whose demangled name contains $2.
symbol_size() {
    local hex
    hex="$("$NM" -S -C "$1" | awk -v name="$2" 'index($0, name) { print $2; exit }')"
    [[ -n "$hex" ]] || fail "no symbol $2 in $1"
    echo $((16#$hex))
}

step "grove-firmware for ${THUMB_TARGETS[*]}"
for target in "${THUMB_TARGETS[@]}"; do
    # Without features (what the examples link) and with the async shell and TLS, which must stay
    # no_std too.
    (cd "$ROOT" && cargo build --locked -p grove-firmware --target "$target" \
        && cargo build --locked -p grove-firmware --target "$target" --features async \
        && cargo build --locked -p grove-firmware --target "$target" --features tls)
done

step "examples (STM32F411 on thumbv7em-none-eabihf, RP2040 on thumbv6m-none-eabi) and size probes"
# Each example's .cargo/config.toml names its target.
for example in board pico; do
    (cd "$FIRMWARE/$example" && cargo clippy --locked --release -- -D warnings \
        && cargo build --locked --release)
done
for target in "${THUMB_TARGETS[@]}"; do
    (cd "$FIRMWARE/size-probe" && cargo clippy --locked --release --target "$target" -- -D warnings \
        && cargo build --locked --release --target "$target")
done

step "memory (bytes; command: $SIZE -B <elf>)"
status=0
printf '%-58s %8s %8s\n' "image" "flash" "ram"
# The Pico's figure includes its 256-byte second-stage boot loader (.boot2).
for example in "stm32f411 thumbv7em-none-eabihf grove-firmware-board" \
    "rp2040 thumbv6m-none-eabi grove-firmware-pico"; do
    read -r board target elf <<<"$example"
    read -r flash ram < <(sizes "$CARGO_TARGET_DIR/$target/release/$elf")
    printf '%-58s %8d %8d\n' "example $board ($target), whole image" "$flash" "$ram"
    (( flash <= FLASH_BUDGET )) || { echo "  over the flash budget of $FLASH_BUDGET"; status=1; }
    (( ram <= RAM_BUDGET )) || { echo "  over the static RAM budget of $RAM_BUDGET"; status=1; }
done
for target in "${THUMB_TARGETS[@]}"; do
    read -r base_flash base_ram < <(sizes "$CARGO_TARGET_DIR/$target/release/without-core")
    read -r core_flash core_ram < <(sizes "$CARGO_TARGET_DIR/$target/release/with-core")
    for image in "$base_flash $base_ram probe without core" "$core_flash $core_ram probe with core"; do
        read -r f r label <<<"$image"
        printf '%-58s %8d %8d\n' "$label ($target)" "$f" "$r"
    done
    delta_flash=$((core_flash - base_flash))
    delta_ram=$((core_ram - base_ram))
    printf '%-58s %8d %8d\n' "device core alone ($target)" "$delta_flash" "$delta_ram"
    (( delta_flash <= CORE_FLASH_BUDGET )) || { echo "  over the core flash budget of $CORE_FLASH_BUDGET"; status=1; }
    (( core_flash <= FLASH_BUDGET && core_ram <= RAM_BUDGET )) || { echo "  probe over the budget"; status=1; }

    tls_elf="$CARGO_TARGET_DIR/$target/release/with-tls"
    read -r tls_flash tls_ram < <(sizes "$tls_elf")
    buffers="$(symbol_size "$tls_elf" TLS_BUFFERS)"
    printf '%-58s %8d %8d\n' "probe with core over TLS ($target)" "$tls_flash" "$tls_ram"
    tls_core_flash=$((tls_flash - base_flash))
    tls_core_ram=$((tls_ram - base_ram - buffers))
    printf '%-58s %8d %8d\n' "core with TLS, no record buffers ($target)" "$tls_core_flash" "$tls_core_ram"
    printf '%-58s %8s %8d\n' "TLS record buffers ($target)" "" "$buffers"
    if [[ "$target" == "$TLS_TARGET" ]]; then
        (( tls_core_flash <= TLS_FLASH_GOAL )) \
            || echo "  flash goal of $TLS_FLASH_GOAL missed by $((tls_core_flash - TLS_FLASH_GOAL)) (known, see firmware/README.md)"
        (( tls_core_flash <= TLS_FLASH_CEILING )) || { echo "  over the TLS core flash ceiling of $TLS_FLASH_CEILING"; status=1; }
        (( tls_core_ram <= RAM_BUDGET )) || { echo "  over the TLS core static RAM budget of $RAM_BUDGET"; status=1; }
    fi
done
(( status == 0 )) || fail "memory budget exceeded"

step "self-test image under QEMU (micro:bit Cortex-M0, MPS2-AN386 Cortex-M4F)"
if ! command -v qemu-system-arm >/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends qemu-system-arm
fi
{
    for pair in "thumbv6m-none-eabi microbit" "thumbv7em-none-eabihf mps2-an386"; do
        read -r target machine <<<"$pair"
        (cd "$FIRMWARE/qemu" && cargo clippy --locked --release --target "$target" -- -D warnings \
            && cargo build --locked --release --target "$target")
        echo "-- $machine ($target)"
        timeout 120 qemu-system-arm -machine "$machine" -nographic -monitor none -serial none \
            -semihosting-config enable=on,target=native \
            -kernel "$CARGO_TARGET_DIR/$target/release/grove-firmware-qemu" \
            || fail "QEMU self-test on $machine"
    done
}

if (( FUZZ_SECONDS > 0 )); then
    step "fuzz targets, ${FUZZ_SECONDS}s each"
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    # cargo-fuzz needs nightly-only flags (sanitizer, coverage instrumentation); RUSTC_BOOTSTRAP lets
    # the stable toolchain accept them. A separate target dir keeps those flags from invalidating the
    # normal builds.
    # cargo-fuzz has no --locked; resolving the metadata with it fails if Cargo.lock is stale.
    (cd "$FIRMWARE/fuzz" && cargo metadata --locked --format-version 1 >/dev/null)
    for fuzz_target in codec device; do
        (cd "$FIRMWARE/fuzz" && CARGO_TARGET_DIR="$CARGO_TARGET_DIR/fuzz" RUSTC_BOOTSTRAP=1 \
            cargo fuzz run "$fuzz_target" -- -max_total_time="$FUZZ_SECONDS" -seed=1 -print_final_stats=1 2>&1 \
            | grep -E '^(Done|stat::number_of_executed_units|==[0-9]+==|thread .* panicked|SUMMARY)' ) \
            || fail "fuzz target $fuzz_target"
    done
fi

step "firmware checks passed"
