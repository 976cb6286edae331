//! Scenario files: what fleet to run, for how long, under what chaos, and what must hold at the end.
//!
//! A scenario is TOML in two layers, as in the gateway's config: [`ScenarioFile`] mirrors the file
//! (serde, `deny_unknown_fields`, every key but `name` defaulted), and [`Scenario`] is what the runner
//! uses, validated and resolved (thing names expanded, durations typed). A typo in a key, a value out of
//! range or a thing name the firmware would refuse is a [`ScenarioError`] naming the key, never a panic.
//!
//! ```toml
//! name = "smoke"
//! duration_s = 10
//! [fleet]
//! devices = 10
//! id_pattern = "smoke-{n:03}"
//! [telemetry]
//! interval_s = 1
//! [shadow]
//! changes_per_s = 2
//! [expect]
//! delivery_ratio_min = 1.0
//! latency_p99_ms_max = 50
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why a scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file (or `<inline>`).
        path: PathBuf,
        /// The TOML parser's message, with line, column and key.
        message: String,
    },
    /// A value is well-typed but impossible.
    #[error("{}: `{key}`: {message}", path.display())]
    Invalid {
        /// The file (or `<inline>`).
        path: PathBuf,
        /// The dotted key at fault.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

/// The scenario file as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// A name for the summary.
    pub name: String,
    /// Seed for every random choice (sensor signals, chaos, the controller); same seed, same choices.
    #[serde(default = "defaults::seed")]
    pub seed: u64,
    /// The gateway's MQTT listener (`grove-sim run --target` overrides it).
    #[serde(default = "defaults::target")]
    pub target: SocketAddr,
    /// Seconds of measured traffic (telemetry, desired changes, chaos).
    pub duration_s: f64,
    /// Seconds after the measured phase in which chaos and the controller stop, telemetry still in
    /// flight is collected, and devices catch up with their shadows before the final check.
    #[serde(default = "defaults::settle_s")]
    pub settle_s: f64,
    /// The devices.
    #[serde(default)]
    pub fleet: FleetFile,
    /// Telemetry settings.
    #[serde(default)]
    pub telemetry: TelemetryFile,
    /// The simulated SHT4x's signal model.
    #[serde(default)]
    pub sensor: SensorFile,
    /// The controller changing desired state.
    #[serde(default)]
    pub shadow: ShadowFile,
    /// Disconnects, reboots and slow links.
    #[serde(default)]
    pub chaos: ChaosFile,
    /// What must hold for the run to pass.
    #[serde(default)]
    pub expect: Expectations,
}

/// `[fleet]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetFile {
    /// How many devices, 1 to 10,000.
    pub devices: usize,
    /// Thing names: one `{n}` (or `{n:04}` for zero padding to 4 digits) replaced by the device number.
    pub id_pattern: String,
    /// The first device number.
    pub first: u64,
    /// Devices are started spread evenly over this many seconds, so their timers are not in lockstep.
    pub ramp_s: f64,
    /// The firmware's MQTT keep-alive.
    pub keep_alive_s: u16,
    /// The firmware's acknowledgement timeout; it must be shorter than the keep-alive.
    pub ack_timeout_ms: u32,
    /// The firmware's first reconnect delay; it doubles after each failed session.
    pub reconnect_min_ms: u32,
    /// The cap of the reconnect delay.
    pub reconnect_max_ms: u32,
}

impl Default for FleetFile {
    fn default() -> Self {
        Self {
            devices: 10,
            id_pattern: "sim-{n:04}".into(),
            first: 1,
            ramp_s: 1.0,
            keep_alive_s: 30,
            ack_timeout_ms: 5_000,
            reconnect_min_ms: 1_000,
            reconnect_max_ms: 60_000,
        }
    }
}

/// `[telemetry]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryFile {
    /// Seconds between samples of each device (the firmware's interval, whole seconds, 1 or more).
    pub interval_s: u32,
    /// QoS of telemetry, 0 or 1. At QoS 1 the firmware core keeps each sample until its PUBACK and
    /// retransmits it (also after a reconnect), one sample in flight at a time.
    pub qos: u8,
    /// A sample not seen by the observer this long after it was sent counts as lost.
    pub loss_timeout_ms: u64,
}

impl Default for TelemetryFile {
    fn default() -> Self {
        Self {
            interval_s: 1,
            qos: 0,
            loss_timeout_ms: 5_000,
        }
    }
}

/// `[sensor]`: each device's SHT4x sees temperature and humidity following a daily cycle, a random
/// walk (drift) and measurement noise; every device has its own offsets and phase.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SensorFile {
    /// Mean temperature, °C.
    pub temperature_c: f64,
    /// Spread of the per-device temperature offsets (standard deviation), °C.
    pub temperature_spread_c: f64,
    /// Amplitude of the cycle, °C.
    pub swing_c: f64,
    /// Period of the cycle, seconds (a day by default).
    pub period_s: f64,
    /// Drift: standard deviation of the random walk after one hour, °C.
    pub drift_c_per_hour: f64,
    /// Measurement noise (standard deviation), °C; the SHT40's repeatability is about 0.04 °C.
    pub noise_c: f64,
    /// Mean relative humidity, %.
    pub humidity_pct: f64,
    /// Humidity noise (standard deviation), %RH.
    pub humidity_noise_pct: f64,
    /// Probability that one measurement's transfer is corrupted (the driver sees a CRC error and the
    /// sample is skipped).
    pub fault_rate: f64,
}

impl Default for SensorFile {
    fn default() -> Self {
        Self {
            temperature_c: 22.0,
            temperature_spread_c: 1.5,
            swing_c: 3.0,
            period_s: 86_400.0,
            drift_c_per_hour: 0.3,
            noise_c: 0.04,
            humidity_pct: 45.0,
            humidity_noise_pct: 0.2,
            fault_rate: 0.0,
        }
    }
}

/// `[shadow]`: a controller (one MQTT client, or several) changes desired state; devices apply the
/// deltas to their relays and report.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShadowFile {
    /// Desired changes per second over the whole fleet, each to one random device (0 = none).
    pub changes_per_s: f64,
    /// If not empty, every change also sets `interval_s` to one of these (seconds).
    pub interval_choices: Vec<u32>,
    /// MQTT clients the controller spreads its requests over (each keeps fewer than the gateway's
    /// per-client in-flight limit of 10 unanswered).
    pub controller_clients: usize,
}

impl Default for ShadowFile {
    fn default() -> Self {
        Self {
            changes_per_s: 0.0,
            interval_choices: Vec::new(),
            controller_clients: 1,
        }
    }
}

/// `[chaos]`, active during the measured phase only.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChaosFile {
    /// Random single-device disconnects per second over the fleet (the TCP connection is dropped
    /// without DISCONNECT; the firmware reconnects after its backoff).
    pub disconnects_per_s: f64,
    /// Random device reboots per second over the fleet (a fresh device core: relay off, session lost).
    pub reboots_per_s: f64,
    /// How long a rebooting device stays down, milliseconds.
    pub reboot_downtime_ms: u64,
    /// Every this many seconds a storm disconnects `storm_fraction` of the fleet at once (0 = never).
    pub storm_every_s: f64,
    /// The fraction of devices a storm disconnects.
    pub storm_fraction: f64,
    /// The fraction of devices on a slow link.
    pub slow_fraction: f64,
    /// A slow link delays every read and every write burst by this much, milliseconds.
    pub slow_delay_ms: u64,
}

/// `[expect]`: every key set here is checked; the run exits non-zero if any fails.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Expectations {
    /// Delivered telemetry / sent telemetry must be at least this.
    pub delivery_ratio_min: Option<f64>,
    /// The 99th percentile of end-to-end telemetry latency must be below this, milliseconds.
    pub latency_p99_ms_max: Option<f64>,
    /// Every desired change must be reported applied within this many seconds.
    pub apply_within_s: Option<f64>,
    /// At the end every shadow's reported state equals its desired state, and every simulated relay
    /// is switched as desired.
    pub converged: Option<bool>,
    /// Every device must have connected before the measured phase started.
    pub all_connected: Option<bool>,
    /// The gateway's peak resident memory must be below this, MiB (needs `--gateway-pid`).
    pub gateway_rss_mb_max: Option<f64>,
}

mod defaults {
    use std::net::SocketAddr;

    pub fn seed() -> u64 {
        1
    }
    pub fn target() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1883))
    }
    pub fn settle_s() -> f64 {
        5.0
    }
}

/// The most devices one simulator process runs.
pub const MAX_DEVICES: usize = 10_000;

/// A validated scenario, ready to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The file as written (after overrides), for the summary.
    pub file: ScenarioFile,
    /// One thing name per device, in device order.
    pub things: Vec<String>,
    /// Length of the measured phase.
    pub duration: Duration,
    /// Length of the settle phase.
    pub settle: Duration,
    /// Spread of device start times.
    pub ramp: Duration,
}

/// Values that replace the file's, from the command line.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--target`.
    pub target: Option<SocketAddr>,
    /// `--devices`.
    pub devices: Option<usize>,
    /// `--duration`.
    pub duration_s: Option<f64>,
    /// `--seed`.
    pub seed: Option<u64>,
    /// `--ramp`.
    pub ramp_s: Option<f64>,
}

impl Scenario {
    /// Reads, parses and validates a scenario file.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path, overrides)
    }

    /// Parses and validates scenario text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path, overrides: &Overrides) -> Result<Self, ScenarioError> {
        let mut file: ScenarioFile = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if let Some(target) = overrides.target {
            file.target = target;
        }
        if let Some(devices) = overrides.devices {
            file.fleet.devices = devices;
        }
        if let Some(duration_s) = overrides.duration_s {
            file.duration_s = duration_s;
        }
        if let Some(seed) = overrides.seed {
            file.seed = seed;
        }
        if let Some(ramp_s) = overrides.ramp_s {
            file.fleet.ramp_s = ramp_s;
        }
        let invalid = |key: &'static str, message: String| ScenarioError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        validate(&file).map_err(|(key, message)| invalid(key, message))?;
        let things = expand_pattern(&file.fleet.id_pattern, file.fleet.first, file.fleet.devices)
            .map_err(|message| invalid("fleet.id_pattern", message))?;
        for thing in &things {
            // The firmware's own check, so a name the device would refuse is refused here, by key.
            grove_firmware::Config::new(thing).map_err(|e| {
                invalid(
                    "fleet.id_pattern",
                    format!("thing name {thing:?} is not accepted by the firmware: {e}"),
                )
            })?;
        }
        let mut sorted = things.clone();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid(
                "fleet.id_pattern",
                "the pattern gives two devices the same name".into(),
            ));
        }
        Ok(Self {
            duration: Duration::from_secs_f64(file.duration_s),
            settle: Duration::from_secs_f64(file.settle_s),
            ramp: Duration::from_secs_f64(file.fleet.ramp_s),
            things,
            file,
        })
    }
}

type Invalid = (&'static str, String);

fn validate(file: &ScenarioFile) -> Result<(), Invalid> {
    fn check(ok: bool, key: &'static str, message: impl Into<String>) -> Result<(), Invalid> {
        if ok {
            Ok(())
        } else {
            Err((key, message.into()))
        }
    }
    let finite_nonneg = |v: f64| v.is_finite() && v >= 0.0;
    let fraction = |v: f64| (0.0..=1.0).contains(&v);
    let fleet = &file.fleet;
    check(
        file.duration_s.is_finite() && file.duration_s > 0.0 && file.duration_s <= 86_400.0,
        "duration_s",
        "must be more than 0 and at most 86400 seconds",
    )?;
    check(
        finite_nonneg(file.settle_s) && file.settle_s <= 3_600.0,
        "settle_s",
        "must be 0 to 3600 seconds",
    )?;
    check(
        (1..=MAX_DEVICES).contains(&fleet.devices),
        "fleet.devices",
        format!("must be 1 to {MAX_DEVICES}"),
    )?;
    check(
        finite_nonneg(fleet.ramp_s) && fleet.ramp_s <= 3_600.0,
        "fleet.ramp_s",
        "must be 0 to 3600 seconds",
    )?;
    grove_firmware::Config::new("probe")
        .and_then(|c| c.with_timing(fleet.keep_alive_s, fleet.ack_timeout_ms))
        .map_err(|e| ("fleet.ack_timeout_ms", e.to_string()))?;
    check(
        fleet.reconnect_min_ms > 0 && fleet.reconnect_min_ms <= fleet.reconnect_max_ms,
        "fleet.reconnect_min_ms",
        "must be more than 0 and at most fleet.reconnect_max_ms",
    )?;
    check(
        grove_firmware::shadow::INTERVAL_RANGE_S.contains(&file.telemetry.interval_s),
        "telemetry.interval_s",
        "must be 1 to 86400 seconds",
    )?;
    check(
        file.telemetry.qos <= 1,
        "telemetry.qos",
        "must be 0 or 1 (the firmware device core publishes telemetry at QoS 0 or 1)",
    )?;
    check(
        file.telemetry.loss_timeout_ms > 0,
        "telemetry.loss_timeout_ms",
        "must be more than 0",
    )?;
    let sensor = &file.sensor;
    for (key, value) in [
        ("sensor.temperature_spread_c", sensor.temperature_spread_c),
        ("sensor.swing_c", sensor.swing_c),
        ("sensor.drift_c_per_hour", sensor.drift_c_per_hour),
        ("sensor.noise_c", sensor.noise_c),
        ("sensor.humidity_noise_pct", sensor.humidity_noise_pct),
    ] {
        check(finite_nonneg(value), key, "must be a number, 0 or more")?;
    }
    check(
        (-40.0..=125.0).contains(&sensor.temperature_c),
        "sensor.temperature_c",
        "must be within the SHT4x's range, -40 to 125 °C",
    )?;
    check(
        (0.0..=100.0).contains(&sensor.humidity_pct),
        "sensor.humidity_pct",
        "must be 0 to 100 %",
    )?;
    check(
        sensor.period_s.is_finite() && sensor.period_s > 0.0,
        "sensor.period_s",
        "must be more than 0",
    )?;
    check(
        fraction(sensor.fault_rate),
        "sensor.fault_rate",
        "must be 0 to 1",
    )?;
    let shadow = &file.shadow;
    check(
        finite_nonneg(shadow.changes_per_s) && shadow.changes_per_s <= 10_000.0,
        "shadow.changes_per_s",
        "must be 0 to 10000",
    )?;
    check(
        shadow
            .interval_choices
            .iter()
            .all(|i| grove_firmware::shadow::INTERVAL_RANGE_S.contains(i)),
        "shadow.interval_choices",
        "every choice must be 1 to 86400 seconds",
    )?;
    check(
        (1..=64).contains(&shadow.controller_clients),
        "shadow.controller_clients",
        "must be 1 to 64",
    )?;
    let chaos = &file.chaos;
    for (key, value) in [
        ("chaos.disconnects_per_s", chaos.disconnects_per_s),
        ("chaos.reboots_per_s", chaos.reboots_per_s),
        ("chaos.storm_every_s", chaos.storm_every_s),
    ] {
        check(finite_nonneg(value), key, "must be a number, 0 or more")?;
    }
    check(
        fraction(chaos.storm_fraction),
        "chaos.storm_fraction",
        "must be 0 to 1",
    )?;
    check(
        fraction(chaos.slow_fraction),
        "chaos.slow_fraction",
        "must be 0 to 1",
    )?;
    check(
        chaos.slow_delay_ms <= 60_000,
        "chaos.slow_delay_ms",
        "must be at most 60000",
    )?;
    check(
        chaos.reboot_downtime_ms <= 600_000,
        "chaos.reboot_downtime_ms",
        "must be at most 600000",
    )?;
    let expect = &file.expect;
    check(
        expect.delivery_ratio_min.is_none_or(fraction),
        "expect.delivery_ratio_min",
        "must be 0 to 1",
    )?;
    for (key, value) in [
        ("expect.latency_p99_ms_max", expect.latency_p99_ms_max),
        ("expect.apply_within_s", expect.apply_within_s),
        ("expect.gateway_rss_mb_max", expect.gateway_rss_mb_max),
    ] {
        check(
            value.is_none_or(|v| v.is_finite() && v > 0.0),
            key,
            "must be more than 0",
        )?;
    }
    Ok(())
}

/// Expands `pattern` for `count` devices numbered from `first`. The pattern holds exactly one
/// placeholder, `{n}` or `{n:0W}` (zero-padded to width W). Written by hand: a one-placeholder template
/// does not justify a template engine, and the width syntax mirrors Rust's own `format!`.
pub fn expand_pattern(pattern: &str, first: u64, count: usize) -> Result<Vec<String>, String> {
    let open = pattern
        .find("{n")
        .ok_or_else(|| "needs a `{n}` placeholder for the device number".to_string())?;
    let close = pattern[open..]
        .find('}')
        .map(|i| open + i)
        .ok_or_else(|| "unclosed `{n` placeholder".to_string())?;
    let (prefix, spec, suffix) = (
        &pattern[..open],
        &pattern[open + 2..close],
        &pattern[close + 1..],
    );
    if prefix.contains(['{', '}']) || suffix.contains(['{', '}']) {
        return Err("only one `{n}` placeholder is allowed".into());
    }
    let width = match spec {
        "" => 0,
        _ => spec
            .strip_prefix(":0")
            .and_then(|w| w.parse::<usize>().ok())
            .filter(|w| (1..=20).contains(w))
            .ok_or_else(|| {
                format!("unknown placeholder format `{{n{spec}}}`: use `{{n}}` or `{{n:04}}`")
            })?,
    };
    (0..count as u64)
        .map(|i| {
            first
                .checked_add(i)
                .map(|n| format!("{prefix}{n:0width$}{suffix}"))
                .ok_or_else(|| "device numbers overflow".to_string())
        })
        .collect()
}
