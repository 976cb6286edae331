#!/usr/bin/env bash
# Fleet benchmark: the `fleet` scenario (1 sample/s per device plus 10 desired changes/s) against a
# release `grove` on loopback, at several fleet sizes. For each size a fresh gateway is started
# (fresh data directory, broker.max_connections raised above the fleet), grove-sim runs the scenario
# with --gateway-pid so the summary carries the gateway's RSS and CPU from /proc, and the gateway is
# stopped. The table at the end gives latency percentiles, delivery, gateway RSS and CPU, and the
# largest fleet that met p99 < 50 ms with every sample delivered.
#
#   bash device-sim/bench/fleet.sh                      # sizes 1000 ... 10000, 60 s each
#   SIZES="1000" DURATION=30 bash device-sim/bench/fleet.sh
#
# Not part of the test run: it takes about (DURATION + devices/100 s + 10 s) per size and wants the
# machine to itself; 10,000 devices need over 10,000 file descriptors per process.
# Results (JSON per size and the table) go to $OUT (default target/fleet-bench). Only 127.0.0.1 is used.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
sizes="${SIZES:-1000 2000 3000 4000 5000 7500 10000}"
duration="${DURATION:-60}"
# Devices connect at this many per second (the ramp is devices / RAMP_PER_S seconds), so the
# measurement is of a fleet in steady state, not of a connection storm (the chaos scenario does storms).
ramp_per_s="${RAMP_PER_S:-100}"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
out="${OUT:-$target_dir/fleet-bench}"
port="${PORT:-28830}"
ops_port="${OPS_PORT:-28831}"

command -v jq >/dev/null || {
    echo "fleet.sh needs jq to read grove-sim's JSON summaries: apt-get install jq" >&2
    exit 2
}

cd "$root"
if [[ -z "${NO_BUILD:-}" ]]; then
    cargo build --release -p grove-gateway -p grove-device-sim
fi
grove="$target_dir/release/grove"
sim="$target_dir/release/grove-sim"
mkdir -p "$out"
# Two sockets per device (one in each process) plus the gateway's database and log files.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

gateway_pid=""
stop_gateway() {
    if [[ -n "$gateway_pid" ]] && kill -0 "$gateway_pid" 2>/dev/null; then
        kill -TERM "$gateway_pid"
        wait "$gateway_pid" || true
    fi
    gateway_pid=""
}
trap stop_gateway EXIT

for devices in $sizes; do
    work="$(mktemp -d)"
    cat >"$work/grove.toml" <<EOF
data_dir = "$work/data"
[log]
filter = "warn"
[broker]
max_connections = $((devices + 100))
[[broker.listeners]]
bind = "127.0.0.1:$port"
[ops]
bind = "127.0.0.1:$ops_port"
EOF
    "$grove" run --config "$work/grove.toml" 2>"$out/grove-$devices.log" &
    gateway_pid=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    echo "== $devices devices, ${duration} s ($(date -u +%FT%TZ))"
    status=0
    "$sim" run device-sim/scenarios/fleet.toml --target "127.0.0.1:$port" --devices "$devices" \
        --duration "$duration" --ramp "$((devices / ramp_per_s))" --gateway-pid "$gateway_pid" --json "$out/fleet-$devices.json" \
        --quiet || status=$?
    stop_gateway
    rm -rf "$work"
    echo "   grove-sim exit $status"
done

{
    echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB, kernel $(uname -r)"
    echo "date: $(date -u +%F), duration ${duration} s per size, devices connecting at ${ramp_per_s}/s"
    printf '%-8s %-10s %-9s %-9s %-9s %-9s %-10s %-12s %-12s %-10s %s\n' devices msg/s p50_ms p99_ms max_ms delivery gw_rss_MiB gw_cpu_mean% sim_cpu_mean% converged 'p99<50'
    best=0
    for devices in $sizes; do
        json="$out/fleet-$devices.json"
        [[ -f "$json" ]] || continue
        jq -r '[.devices, .telemetry.delivered_per_s, .telemetry.latency_ms.p50, .telemetry.latency_ms.p99,
                .telemetry.latency_ms.max, .telemetry.delivery_ratio, .gateway.rss_mb_peak,
                .gateway.cpu_pct_mean, .simulator.cpu_pct_mean,
                "\(.shadow.final_check.converged)/\(.devices)",
                (if .telemetry.latency_ms.p99 < 50 then "yes" else "no" end)] | @tsv' "$json" |
            awk -F'\t' '{printf "%-8s %-10s %-9s %-9s %-9s %-9.4f %-10s %-12s %-12s %-10s %s\n", $1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11}'
        if jq -e '.telemetry.latency_ms.p99 < 50 and .telemetry.delivery_ratio >= 0.999' "$json" >/dev/null; then
            best=$devices
        fi
    done
    echo "largest fleet with p99 < 50 ms and delivery >= 0.999: $best"
} | tee "$out/table.txt"
