#!/usr/bin/env bash
# Proves an ARM build of `grove` works: `cross/check.sh TARGET` runs it under qemu-user and talks to
# it from the host with real MQTT clients (mosquitto_pub/mosquitto_sub) and curl.
#
# What it checks, in order (each step fails the script with the gateway's log on error):
#   1. `grove init` writes a config, and the gateway starts on it (ports 0: the kernel picks free
#      ports, read back from the gateway's log, so parallel runs never collide).
#   2. /healthz answers {"status":"ok"} and /metrics serves Grove's counters.
#   3. MQTT round trip: an MQTT 5 subscriber receives what an MQTT 3.1.1 publisher sends.
#   4. Shadow round trip: an update to $aws/things/t/shadow/update is answered on update/accepted
#      and update/delta; $aws/things/t/shadow/get returns the stored document.
#   5. Rules: a device message on sensors/s1/t goes through two [[rules]]: one republishes it to
#      alerts/s1 only when its WHERE clause holds, one writes it into the s1 shadow (rule ->
#      shadow service -> SQLite). `grove rules test` evaluates a rule offline on the ARM binary.
#   6. Local functions: the ARM `grove fn deploy` deploys the WAT example (functions/examples/wat)
#      and the Rust enricher (serde_json inside) to the ARM gateway, which compiles them with
#      wasmtime (Cranelift on aarch64, the Pulley interpreter on armv7); a device message on their
#      trigger topics comes back transformed, and `grove fn invoke` answers synchronously.
#   7. SIGTERM stops the gateway with exit code 0.
#   8. Restarted on the same data directory, the gateway still has the shadow (SQLite, built by
#      the cross C compiler, persisted it), also read through the ARM `grove shadow get` CLI, and
#      the functions (loaded from the precompiled cache, not compiled again).
source "$(dirname "$0")/lib.sh"

[ $# -eq 1 ] || die "usage: cross/check.sh TARGET   (TARGET: ${TARGETS[*]})"
target="$1"
target_info "$target"
apt_install qemu-user mosquitto-clients curl
bin="$(bin_path "$target" grove)"
[ -x "$bin" ] || die "$bin is missing: run cross/build.sh $target first"
[ -d "$SYSROOT" ] || die "$SYSROOT is missing: run cross/build.sh $target first"

work="$(mktemp -d)"
gateway_pid=""
sub_pid=""
cleanup() {
  local pid
  for pid in "$gateway_pid" "$sub_pid"; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$work"
}
trap cleanup EXIT

# Runs an ARM binary on the host through qemu-user, with the target's libc as its root.
arm() { "$QEMU" -L "$SYSROOT" "$@"; }

fail() {
  printf '\nFAIL (%s): %s\n' "$target" "$*" >&2
  if [ -f "$work/gateway.log" ]; then
    printf -- '--- gateway log ---\n' >&2
    tail -n 40 "$work/gateway.log" >&2
  fi
  exit 1
}
pass() { printf '  ok  %s\n' "$*"; }

# Waits (up to $2 seconds) until file $1 contains a line matching the regex $3.
wait_for_line() {
  local file="$1" seconds="$2" regex="$3" i
  for ((i = 0; i < seconds * 10; i++)); do
    grep -Eq "$regex" "$file" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

start_gateway() {
  : > "$work/gateway.log"
  # qemu-user passes signals through to the guest and exits with the guest's exit code, so the
  # PID of qemu stands for the gateway's. qemu is started directly, not through arm(): a function
  # in the background runs in a subshell, whose PID would not be the gateway's.
  "$QEMU" -L "$SYSROOT" "$bin" run --config "$work/grove.toml" > /dev/null 2> "$work/gateway.log" &
  gateway_pid=$!
  # Under emulation the start takes a moment; 60 s leaves room for a busy CI machine. A gateway
  # that exits (a bad config, a crash) fails the check at once instead.
  local i
  for ((i = 0; i < 600; i++)); do
    grep -q 'grove is running' "$work/gateway.log" && break
    kill -0 "$gateway_pid" 2>/dev/null || fail "the gateway exited during startup"
    sleep 0.1
  done
  grep -q 'grove is running' "$work/gateway.log" || fail "the gateway did not start within 60 s"
  mqtt_port="$(sed -nE 's/.*MQTT listener ready.*addr=127\.0\.0\.1:([0-9]+).*/\1/p' "$work/gateway.log" | head -1)"
  ops_port="$(sed -nE 's/.*ops endpoint ready.*addr=127\.0\.0\.1:([0-9]+).*/\1/p' "$work/gateway.log" | head -1)"
  if [ -z "$mqtt_port" ] || [ -z "$ops_port" ]; then fail "no listener addresses in the log"; fi
}

stop_gateway() {
  kill -TERM "$gateway_pid"
  local code=0
  wait "$gateway_pid" || code=$?
  gateway_pid=""
  [ "$code" -eq 0 ] || fail "after SIGTERM the gateway exited with $code, not 0"
}

# Subscribes to the topics given after "--" in the background, and returns once the broker has
# acknowledged the subscription (mosquitto_sub -d prints SUBACK), so that nothing published next
# can be missed. Arguments before "--": output file, message count, extra mosquitto_sub options.
subscribe() {
  local out="$1" count="$2"
  shift 2
  local opts=()
  while [ "$1" != "--" ]; do opts+=("$1"); shift; done
  shift
  local topics=() t
  for t in "$@"; do topics+=(-t "$t"); done
  # stdbuf: line-buffered output, or SUBACK would only show up in the file when the client exits.
  stdbuf -oL mosquitto_sub -d -h 127.0.0.1 -p "$mqtt_port" "${opts[@]}" "${topics[@]}" -C "$count" -W 30 -v \
    > "$out" 2>&1 &
  sub_pid=$!
  wait_for_line "$out" 30 'received SUBACK' || fail "no SUBACK for ${topics[*]}"
}

# Waits for the background subscriber; its messages ("topic payload" lines) are in file $1.
collect() {
  wait "$sub_pid" || fail "the subscriber did not receive all messages: $(grep -v '^Client' "$1")"
  grep -Ev '^(Client |Subscribed )' "$1" > "$1.msgs" || true
  sed 's/^/        < /' "$1.msgs"
}

# Asserts that file $1 has a line matching the regex $2 (what: $3).
expect_line() {
  grep -Eq "$2" "$1" || fail "$3: no line matching /$2/ in: $(cat "$1")"
}

printf '==> qemu check of %s (%s -L %s)\n' "$bin" "$QEMU" "$SYSROOT"
start_all=$(date +%s)

# 1. `grove init` on the ARM binary, then ports 0 and a private data directory.
version="$(arm "$bin" --version)" || fail "grove --version"
grep -q '^grove ' <<<"$version" || fail "grove --version said: $version"
arm "$bin" init "$work/grove.toml" 2> /dev/null || fail "grove init"
sed -i -E \
  -e "s|^data_dir = .*|data_dir = \"$work/data\"|" \
  -e 's|^bind = "127\.0\.0\.1:1883"|bind = "127.0.0.1:0"|' \
  -e 's|^bind = "127\.0\.0\.1:9464"|bind = "127.0.0.1:0"|' \
  "$work/grove.toml"
# Exactly the data_dir and the two binds (MQTT listener, ops) must have been replaced.
if [ "$(grep -cx "data_dir = \"$work/data\"" "$work/grove.toml")" -ne 1 ] \
  || [ "$(grep -cx 'bind = "127.0.0.1:0"' "$work/grove.toml")" -ne 2 ]; then
  fail "the config written by grove init changed: the check cannot set its data_dir and ports"
fi
cat >> "$work/grove.toml" <<'RULES'

[[rules]]
name = "hot"
sql = "SELECT temp, topic(2) AS id FROM 'sensors/+/t' WHERE temp > 30"
actions = [{ republish = { topic = "alerts/${topic(2)}", qos = 1 } }]

[[rules]]
name = "to-shadow"
sql = "SELECT {'reported': {'temp': temp}} AS state FROM 'sensors/+/t'"
actions = [{ shadow = { thing = "${topic(2)}" } }]
RULES
t0=$(date +%s%N)
start_gateway
pass "grove init + run: up in $(( ($(date +%s%N) - t0) / 1000000 )) ms, MQTT on $mqtt_port, ops on $ops_port"

# 2. The ops endpoint.
health="$(curl -fsS "http://127.0.0.1:$ops_port/healthz")" || fail "GET /healthz"
echo "$health" | grep -q '"status":"ok"' || fail "/healthz said: $health"
pass "/healthz: $health"
# Read whole, then searched: `curl | grep -q` fails under pipefail when grep stops reading first.
metrics="$(curl -fsS "http://127.0.0.1:$ops_port/metrics")" || fail "GET /metrics"
grep -q '^grove_build_info' <<<"$metrics" || fail "/metrics has no grove_build_info"
pass "/metrics"

# 3. MQTT round trip, across protocol versions.
subscribe "$work/mqtt.out" 1 -V mqttv5 -q 1 -- 'check/#'
mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -V mqttv311 -q 1 -t check/hello -m "from the host" \
  || fail "mosquitto_pub"
collect "$work/mqtt.out"
expect_line "$work/mqtt.out.msgs" '^check/hello from the host$' "MQTT round trip"
pass "MQTT round trip (3.1.1 publisher -> 5 subscriber, QoS 1)"

# 4. Shadow round trip.
# shellcheck disable=SC2016 # the $ of $aws is literal, here and in the regexes below.
shadow='$aws/things/t/shadow'
subscribe "$work/update.out" 2 -q 1 -- "$shadow/update/accepted" "$shadow/update/delta" \
  "$shadow/update/rejected"
mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -q 1 -t "$shadow/update" \
  -m '{"state":{"desired":{"led":"on"},"reported":{"led":"off"}},"clientToken":"qemu"}' \
  || fail "mosquitto_pub update"
collect "$work/update.out"
expect_line "$work/update.out.msgs" '^\$aws/things/t/shadow/update/accepted .*"clientToken":"qemu"' \
  "update/accepted"
expect_line "$work/update.out.msgs" '^\$aws/things/t/shadow/update/delta .*"state":\{"led":"on"\}' \
  "update/delta"
pass "shadow update -> update/accepted + update/delta {\"led\":\"on\"}"

subscribe "$work/get.out" 1 -q 1 -- "$shadow/get/accepted" "$shadow/get/rejected"
mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -q 1 -t "$shadow/get" -m '' || fail "mosquitto_pub get"
collect "$work/get.out"
expect_line "$work/get.out.msgs" \
  '^\$aws/things/t/shadow/get/accepted .*"desired":\{"led":"on"\}.*"reported":\{"led":"off"\}' \
  "get/accepted"
pass "shadow get -> get/accepted with desired and reported"

# 5. Rules. Two readings, 20 then 35: both reach the shadow, only 35 passes "WHERE temp > 30".
subscribe "$work/rules.out" 3 -q 1 -- 'alerts/#' '$aws/things/s1/shadow/update/accepted'
for temp in 20 35; do
  mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -q 1 -t sensors/s1/t -m "{\"temp\":$temp}" \
    || fail "mosquitto_pub sensors/s1/t"
done
collect "$work/rules.out"
expect_line "$work/rules.out.msgs" '^alerts/s1 \{.*"temp":35[,}]' "rule hot"
expect_line "$work/rules.out.msgs" '^alerts/s1 \{.*"id":"s1"[,}]' "rule hot"
grep -q '^alerts/s1 .*"temp":20' "$work/rules.out.msgs" && fail "rule hot let temp 20 through"
expect_line "$work/rules.out.msgs" \
  '^\$aws/things/s1/shadow/update/accepted .*"state":\{"reported":\{"temp":35\}\}' "rule to-shadow"
pass "rules: sensors/s1/t -> alerts/s1 (WHERE temp > 30) and -> shadow s1"
out="$(arm "$bin" rules test --sql "SELECT temp * 2 AS t2 FROM 'a/+'" --topic a/b \
  --payload '{"temp":21}' 2>&1)" || fail "grove rules test: $out"
[[ "$out" =~ ^\{\"t2\":42(\.0)?\}$ ]] || fail "grove rules test printed: $out"
pass "grove rules test (offline): $out"

# 6. Local functions, deployed and invoked with the ARM CLI.
functions="$CROSS_DIR/../target/functions"
if [ ! -f "$functions/echo.wasm" ] || [ ! -f "$functions/enricher.wasm" ]; then
  "$CROSS_DIR/../functions/build.sh" "$functions" > /dev/null || fail "functions/build.sh"
fi
for f in echo enricher; do
  out="$(arm "$bin" fn deploy "$functions/$f.wasm" --manifest "$functions/$f.toml" \
    --ops "127.0.0.1:$ops_port" 2>&1)" || fail "grove fn deploy $f: $out"
done
subscribe "$work/fn.out" 2 -q 1 -- 'echo/out' 'enriched/+'
mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -q 1 -t echo/in -m '{"hello":"arm"}' \
  || fail "mosquitto_pub echo/in"
mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -q 1 -t sensors/s9/telemetry -m '{"temperature":20}' \
  || fail "mosquitto_pub sensors/s9/telemetry"
collect "$work/fn.out"
expect_line "$work/fn.out.msgs" '^echo/out \{"hello":"arm"\}$' "function echo (WAT)"
expect_line "$work/fn.out.msgs" '^enriched/s9 \{.*"temperature_f":68(\.0)?[,}]' "function enricher (Rust)"
pass "functions: echo (WAT) and enricher (Rust) triggered by device messages"
invoke_echo() {
  out="$(arm "$bin" fn invoke echo --payload '{"n":1}' --ops "127.0.0.1:$ops_port" 2>&1)" \
    || fail "grove fn invoke echo: $out"
  [ "$out" = '{"n":1}' ] || fail "grove fn invoke echo printed: $out"
}
invoke_echo
pass "grove fn invoke echo (sync): $out"

# 7. SIGTERM.
stop_gateway
pass "SIGTERM -> exit 0"

# 8. Persistence across a restart, read back with the ARM CLI.
start_gateway
doc="$(arm "$bin" shadow get t --json --mqtt "127.0.0.1:$mqtt_port" 2>&1)" \
  || fail "grove shadow get after restart: $doc"
echo "$doc" | grep -q '"desired":{"led":"on"}' || fail "shadow lost across restart: $doc"
pass "restart: shadow still there (grove shadow get, ARM CLI)"
invoke_echo
loaded="$(curl -fsS "http://127.0.0.1:$ops_port/metrics" | grep -E '^grove_function_modules_loaded_total\{source="(cache|compiled)"\}' || true)"
echo "$loaded" | grep -q 'source="cache"' || fail "functions were not loaded from the cache: $loaded"
echo "$loaded" | grep -q 'source="compiled"' && fail "functions were compiled again after a restart: $loaded"
pass "restart: functions loaded from the precompiled cache and invocable"
stop_gateway
pass "SIGTERM -> exit 0"

printf '==> %s: qemu check passed in %d s\n' "$target" "$(( $(date +%s) - start_all ))"
