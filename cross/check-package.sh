#!/usr/bin/env bash
# Verifies the Debian package cross/package.sh built: `cross/check-package.sh TARGET`.
#
#   1. Control data: package name, architecture, dependencies, the conffile, maintainer scripts
#      that parse (sh -n) and carry the user creation and systemd snippets.
#   2. Contents (dpkg-deb -c): every expected path, with its mode and root ownership.
#   3. A real install into a throw-away root: `dpkg --root=TMP --unpack` (files and dpkg database,
#      no maintainer scripts: they would run on this machine), then dpkg's own view of it (status,
#      file list, conffile), the binary runs (qemu-user) and the installed config is exactly
#      `grove init`'s with data_dir = "/var/lib/grove".
#   4. The systemd unit: its keys parsed and compared with the table below (restart policy, user,
#      hardening), and `systemd-analyze verify` against the throw-away root when it is installed.
source "$(dirname "$0")/lib.sh"

[ $# -eq 1 ] || die "usage: cross/check-package.sh TARGET   (TARGET: ${TARGETS[*]})"
target="$1"
target_info "$target"
bin="$(bin_path "$target" grove)"
[ -x "$bin" ] || die "$bin is missing: run cross/build.sh $target first"
version="$("$QEMU" -L "$SYSROOT" "$bin" --version | awk '{print $2}')"
deb="$CARGO_TARGET_DIR/debian/grove_${version}-1_${DEB_ARCH}.deb"
[ -f "$deb" ] || die "$deb is missing: run cross/package.sh $target first"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failures=0
fail() { printf '  FAIL  %s\n' "$*" >&2; failures=$((failures + 1)); }
pass() { printf '  ok    %s\n' "$*"; }

printf '==> checking %s\n' "$deb"

# 1. Control data.
control="$(dpkg-deb -f "$deb")"
# Field, then the regex its value must match; one case per line.
while read -r field want; do
  got="$(dpkg-deb -f "$deb" "$field")"
  if [[ "$got" =~ $want ]]; then pass "control $field: $got"; else fail "control $field: '$got' !~ /$want/"; fi
done <<TABLE
Package ^grove$
Version ^${version}-1$
Architecture ^${DEB_ARCH}$
Depends (^|, )libc6(:[a-z0-9]+)? \(>= [0-9.]+\)
Depends (^|, )adduser(,|$)
Section ^net$
TABLE
[ -n "$control" ] || fail "no control data"
# The libc6 the package asks for must be at least the newest glibc symbol version the binary uses,
# or it would install on a board where it cannot start.
needs="$("${GNU_TRIPLE}-objdump" -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)"
declared="$(dpkg-deb -f "$deb" Depends | sed -nE 's/.*libc6(:[a-z0-9]+)? \(>= ([0-9.]+)\).*/\2/p')"
if [ -n "$needs" ] && [ -n "$declared" ] && dpkg --compare-versions "$declared" ge "$needs"; then
  pass "libc6 >= $declared covers the binary's newest symbol (GLIBC_$needs)"
else
  fail "libc6 >= '$declared' does not cover the binary's GLIBC_$needs"
fi

dpkg-deb -e "$deb" "$work/DEBIAN"
if grep -qx '/etc/grove/grove.toml' "$work/DEBIAN/conffiles" 2>/dev/null; then
  pass "conffiles: /etc/grove/grove.toml"
else
  fail "/etc/grove/grove.toml is not a conffile"
fi
for script in postinst postrm prerm; do
  if [ ! -f "$work/DEBIAN/$script" ]; then fail "no $script"; continue; fi
  if sh -n "$work/DEBIAN/$script"; then pass "$script parses (sh -n)"; else fail "$script does not parse"; fi
done
# Script, then a fixed string it must contain; one case per line.
while read -r script want; do
  if grep -qF -- "$want" "$work/DEBIAN/$script"; then pass "$script has: $want"; else fail "$script lacks: $want"; fi
done <<'TABLE'
postinst adduser --quiet --system --group --home /var/lib/grove
postinst install -d -o grove -g grove -m 0750 /var/lib/grove
postinst deb-systemd-helper enable grove.service
postinst deb-systemd-invoke
prerm deb-systemd-invoke stop grove.service
postrm rm -rf /var/lib/grove
TABLE

# 2. Contents. Path, then its mode; one case per line. Every entry must belong to root (0/0).
dpkg-deb -c "$deb" > "$work/contents"
while read -r path mode; do
  line="$(awk -v p="$path" '$6 == p' "$work/contents")"
  if [ -z "$line" ]; then fail "missing from the package: $path"; continue; fi
  got="$(awk '{print $1}' <<< "$line")"
  if [ "$got" = "$mode" ]; then pass "contents: $path $got"; else fail "contents: $path is '$got', want '$mode'"; fi
done <<'TABLE'
./usr/bin/grove -rwxr-xr-x
./etc/grove/grove.toml -rw-r--r--
./usr/lib/systemd/system/grove.service -rw-r--r--
./usr/share/doc/grove/README.Debian -rw-r--r--
./usr/share/doc/grove/copyright -rw-r--r--
TABLE
not_root="$(awk '$2 != "0/0" && $2 != "root/root"' "$work/contents")"
if [ -z "$not_root" ]; then pass "contents: everything owned by root"; else fail "not owned by root: $not_root"; fi
# Nothing under /var/lib/grove: the data directory is made by postinst and systemd, with the
# grove user as owner, and a packaged one would be root's.
if grep -q ' \./var/' "$work/contents"; then
  fail "the package ships files under /var"
else
  pass "contents: nothing under /var"
fi

# 3. Install into a throw-away root. dpkg needs its database skeleton there; the architecture and
# libc6/adduser dependencies belong to the board, not this machine, hence the two --force options.
# --unpack installs the files and registers them; the conffile waits as grove.toml.dpkg-new until
# `dpkg --configure`, which would run postinst (adduser, systemctl) and is not done here.
root="$work/root"
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates"
: > "$root/var/lib/dpkg/status"
: > "$root/var/lib/dpkg/available"
if dpkg --root="$root" --log="$work/dpkg.log" --force-architecture --force-depends \
  --unpack "$deb" > "$work/dpkg.out" 2>&1; then
  pass "dpkg --root --unpack"
else
  fail "dpkg --root --unpack: $(cat "$work/dpkg.out")"
fi
status="$(dpkg --root="$root" -s grove 2>&1)"
if grep -qx 'Status: install ok unpacked' <<< "$status"; then pass "dpkg -s: install ok unpacked"; else fail "dpkg -s: $status"; fi
if grep -Eq '^ /etc/grove/grove\.toml (newconffile|[0-9a-f]{32})$' <<< "$status"; then pass "dpkg -s: conffile registered"; else fail "dpkg does not know /etc/grove/grove.toml as a conffile"; fi
if grep -qx /usr/bin/grove <<<"$(dpkg --root="$root" -L grove)"; then pass "dpkg -L: /usr/bin/grove"; else fail "dpkg -L does not list /usr/bin/grove"; fi

installed_version="$("$QEMU" -L "$SYSROOT" "$root/usr/bin/grove" --version 2>&1)"
if [ "$installed_version" = "grove $version" ]; then pass "installed binary runs: $installed_version"; else fail "installed binary: $installed_version"; fi
conf="$root/etc/grove/grove.toml.dpkg-new"
if [ -f "$conf" ]; then pass "conffile unpacked (grove.toml.dpkg-new)"; else fail "no $conf"; fi
"$QEMU" -L "$SYSROOT" "$bin" init "$work/init.toml" 2>/dev/null
diff "$work/init.toml" "$conf" > "$work/conf.diff" || true
# Exactly one changed line: data_dir, from grove init's default to /var/lib/grove.
if [ "$(grep -c '^[<>]' "$work/conf.diff")" -eq 2 ] \
  && grep -qx '> data_dir = "/var/lib/grove"' "$work/conf.diff"; then
  pass "grove.toml = grove init + data_dir = \"/var/lib/grove\""
else
  fail "grove.toml differs from grove init beyond data_dir: $(cat "$work/conf.diff")"
fi

# 4. The unit. A small parser: "Section.Key=value" per assignment, comments and blanks skipped,
# repeated keys kept in order (systemd appends them, e.g. SystemCallFilter).
unit="$root/usr/lib/systemd/system/grove.service"
if [ -f "$unit" ]; then
  awk '
    /^[[:space:]]*([#;]|$)/ { next }
    /^\[.*\]$/ { section = substr($0, 2, length($0) - 2); next }
    { i = index($0, "="); if (i == 0) { print "PARSE-ERROR " NR ": " $0; next }
      print section "." substr($0, 1, i - 1) "=" substr($0, i + 1) }
  ' "$unit" > "$work/unit.keys"
  grep '^PARSE-ERROR' "$work/unit.keys" && fail "unit lines that are not key=value"
  # Section.Key, then its exact value (one assignment of that key must equal it); one case per line.
  while read -r key want; do
    if grep -qxF -- "$key=$want" "$work/unit.keys"; then pass "unit $key=$want"
    else fail "unit $key: want '$want', have: $(grep "^$key=" "$work/unit.keys" | tr '\n' ' ')"; fi
  done <<'TABLE'
Service.ExecStart /usr/bin/grove run --config /etc/grove/grove.toml
Service.Restart on-failure
Service.RestartPreventExitStatus 2
Service.User grove
Service.Group grove
Service.StateDirectory grove
Service.NoNewPrivileges yes
Service.ProtectSystem strict
Service.ReadWritePaths /var/lib/grove
Service.ProtectHome yes
Service.PrivateTmp yes
Service.PrivateDevices yes
Service.ProtectKernelTunables yes
Service.ProtectKernelModules yes
Service.ProtectControlGroups yes
Service.RestrictAddressFamilies AF_INET AF_INET6 AF_UNIX
Service.RestrictSUIDSGID yes
Service.CapabilityBoundingSet 
Service.SystemCallFilter @system-service
Install.WantedBy multi-user.target
TABLE
  # The data directory the service may write must be the one the config points at.
  if grep -qx 'data_dir = "/var/lib/grove"' "$conf"; then pass "config data_dir is the unit's StateDirectory"; else fail "config data_dir is not /var/lib/grove"; fi
  if command -v systemd-analyze >/dev/null 2>&1; then
    # verify checks every key and that ExecStart's binary exists in the root (it does not run it).
    # It also resolves the unit's dependencies (multi-user.target, ...), so the root gets this
    # machine's units next to the package's. Unknown keys or bad values are printed as warnings with
    # exit code 0, hence the check for empty output.
    cp -an /usr/lib/systemd/system/. "$root/usr/lib/systemd/system/"
    if out="$(SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --root="$root" /usr/lib/systemd/system/grove.service 2>&1)" \
      && [ -z "$out" ]; then
      pass "systemd-analyze verify: clean"
    else
      fail "systemd-analyze verify: $out"
    fi
  else
    printf '  skip  systemd-analyze is not installed (the key table above still ran)\n'
  fi
else
  fail "no unit at /usr/lib/systemd/system/grove.service"
fi

if [ "$failures" -gt 0 ]; then
  printf '==> %s: %d package check(s) FAILED\n' "$target" "$failures" >&2
  exit 1
fi
printf '==> %s: package checks passed\n' "$target"
