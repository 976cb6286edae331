#!/usr/bin/env bash
# Builds the `grove` Debian package for one ARM target: `cross/package.sh TARGET`.
#
# It packages the binary cross/build.sh built (so run that first) with cargo-deb, from the packaging
# manifest cross/deb/Cargo.toml: /usr/bin/grove, the systemd unit grove.service, the conffile
# /etc/grove/grove.toml and maintainer scripts that create the `grove` user. The package is written
# to $CARGO_TARGET_DIR/debian/ and its path printed last. cross/check-package.sh verifies it.
source "$(dirname "$0")/lib.sh"

[ $# -eq 1 ] || die "usage: cross/package.sh TARGET   (TARGET: ${TARGETS[*]})"
target="$1"
target_info "$target"
bin="$(bin_path "$target" grove)"
[ -x "$bin" ] || die "$bin is missing: run cross/build.sh $target first"

if ! cargo deb --version >/dev/null 2>&1; then
  # Major version pinned: the manifest's keys (systemd-units, assets) are cargo-deb 3's.
  step "cargo install cargo-deb --locked --version ^3"
  cargo install cargo-deb --locked --version '^3'
fi
apt_install dpkg-dev qemu-user

# The conffile is what the binary's own `grove init` writes (so it always matches the binary's
# options and comments), with the data directory moved to /var/lib/grove. The template's data_dir
# line is replaced, and the check below fails the build if the template ever stops having one.
step "generating /etc/grove/grove.toml with grove init"
conf="$(dirname "$bin")/grove.toml"
rm -f "$conf"
"$QEMU" -L "$SYSROOT" "$bin" init "$conf" 2>/dev/null
sed -i -E 's|^data_dir = .*|data_dir = "/var/lib/grove"|' "$conf"
grep -qx 'data_dir = "/var/lib/grove"' "$conf" || die "grove init wrote no data_dir line to replace"

# The package version is the binary's own (`grove 0.1.0`), with Debian revision 1.
version="$("$QEMU" -L "$SYSROOT" "$bin" --version | awk '{print $2}')"
[ -n "$version" ] || die "cannot read the version of $bin"

step "cargo deb --target $target (grove $version)"
out_dir="$CARGO_TARGET_DIR/debian"
mkdir -p "$out_dir"
# --no-build: the binary is cross/build.sh's (its profile and toolchain settings); --no-strip: it is
# stripped at link time already.
cargo deb --manifest-path "$CROSS_DIR/deb/Cargo.toml" --no-build --no-strip \
  --target "$target" --deb-version "$version-1" --output "$out_dir"
deb="$out_dir/grove_${version}-1_${DEB_ARCH}.deb"
[ -f "$deb" ] || die "cargo deb did not write $deb"
ls -l "$deb"
echo "$deb"
