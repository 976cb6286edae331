# Shared by the cross/*.sh scripts (sourced, not run): the table of supported targets, the
# installation of what a cross build needs, and the cargo invocation.
#
# Each target maps to its Debian names: the GNU triple of the cross toolchain (which is also the
# sysroot under /usr that qemu-user needs with -L), the qemu-user binary and the dpkg architecture.

set -euo pipefail

CROSS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$CROSS_DIR/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_DIR/target}"

TARGETS=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Sets GNU_TRIPLE, QEMU, DEB_ARCH, APT_SUFFIX and SYSROOT for the Rust target $1 (for the scripts
# that source this file), or fails with the list of targets.
# shellcheck disable=SC2034
target_info() {
  case "${1:-}" in
    aarch64-unknown-linux-gnu)
      GNU_TRIPLE=aarch64-linux-gnu QEMU=qemu-aarch64 DEB_ARCH=arm64 APT_SUFFIX=arm64 ;;
    armv7-unknown-linux-gnueabihf)
      GNU_TRIPLE=arm-linux-gnueabihf QEMU=qemu-arm DEB_ARCH=armhf APT_SUFFIX=armhf ;;
    *)
      die "unknown target '${1:-}'; supported: ${TARGETS[*]}" ;;
  esac
  SYSROOT="/usr/$GNU_TRIPLE"
}

# Installs the Debian packages given as arguments, skipping those already installed.
apt_install() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  step "apt-get install ${missing[*]}"
  # The package lists may be missing on a fresh machine; update once, only when something is missing.
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# Everything needed to build for target $1: the Rust standard library for it, the cross C compiler
# (rusqlite's bundled SQLite is C; wasmtime will add a small C file), its libc and qemu-user.
ensure_build_tools() {
  target_info "$1"
  if ! rustup target list --installed | grep -qx "$1"; then
    step "rustup target add $1"
    rustup target add "$1"
  fi
  apt_install "gcc-$GNU_TRIPLE" "libc6-dev-$APT_SUFFIX-cross" qemu-user
}

# `cargo SUBCOMMAND` with the cross configuration (linker, CC/AR for build scripts, release
# profile). The file goes after the subcommand, next to any `--config` the caller adds: cargo does
# not merge a --config given before the subcommand with one given after it (the later list wins
# whole, and the linker settings were lost), while several after it merge, the last one winning.
cross_cargo() {
  local subcommand="$1"
  shift
  cargo "$subcommand" --config "$CROSS_DIR/cargo-config.toml" "$@"
}

# Path of a release binary $2 built for target $1.
bin_path() {
  printf '%s/%s/release/%s' "$CARGO_TARGET_DIR" "$1" "$2"
}
