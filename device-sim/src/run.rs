//! The scenario runner: starts the instruments and the fleet, runs the three phases, and builds the
//! summary.
//!
//! 1. Warmup: the observer and the controller connect; devices start, spread over `fleet.ramp_s`, and
//!    connect. The phase ends when every device has a session and the observer has seen its boot
//!    report committed (or after a timeout).
//! 2. Measure (`duration_s`): devices publish telemetry, the controller changes desired state, chaos
//!    strikes; the gateway's and the simulator's RSS and CPU are sampled.
//! 3. Settle (up to `settle_s`): no new telemetry, changes or chaos; ends early once no telemetry is
//!    in flight, every device is connected and every shadow's reported state holds its desired state
//!    (as the observer sees it). Then every shadow is read back for the final check.

use std::io::{IsTerminal, Write as _};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use grove_firmware::device::ConfigError;
use grove_firmware::mqtt::QoS;
use rand::seq::index;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::controller::Controller;
use crate::device::{self, DeviceSetup};
use crate::fleet::{round3, Fleet, Phase};
use crate::mqtt::MqttError;
use crate::probe::Probe;
use crate::scenario::Scenario;
use crate::sensor::{SensorClock, SimSht4x};
use crate::summary::{evaluate, ConnectionSummary, ShadowSummary, Summary, TelemetrySummary};
use crate::{chaos, observer};

/// Random streams of the run besides the devices' sensors (which use streams 0 to N-1).
const STREAM_SLOW_LINKS: u64 = 1 << 40;
const STREAM_CHAOS: u64 = 1 << 41;
const STREAM_CONTROLLER: u64 = 1 << 42;

/// How the run is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A live progress line on stderr.
    Line,
    /// Nothing until the summary.
    Quiet,
}

/// Options that are not part of the scenario.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The gateway's process id, to measure its RSS and CPU.
    pub gateway_pid: Option<i32>,
    /// Progress output.
    pub progress: Progress,
}

/// Why a run could not be carried out (a failed expectation is not an error: it is in the summary).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The observer or controller could not connect.
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    /// The gateway process could not be measured.
    #[error("cannot measure gateway process {pid} in /proc: {source}")]
    Probe {
        /// The pid given.
        pid: i32,
        /// procfs's error.
        source: procfs::ProcError,
    },
    /// A device's firmware configuration was refused.
    #[error("device {thing}: firmware configuration refused: {source}")]
    Device {
        /// The thing name.
        thing: String,
        /// The firmware's reason.
        source: ConfigError,
    },
}

/// Runs `scenario` against its target and returns the summary.
pub async fn run(scenario: &Scenario, options: &RunOptions) -> Result<Summary, RunError> {
    let file = &scenario.file;
    let target = file.target;
    let count = scenario.things.len();
    let started_unix_s = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut gateway_probe = match options.gateway_pid {
        Some(pid) => Some(Probe::new(pid).map_err(|source| RunError::Probe { pid, source })?),
        None => None,
    };
    let configs = scenario
        .things
        .iter()
        .map(|thing| device_config(scenario, thing))
        .collect::<Result<Vec<_>, _>>()?;

    let fleet = Arc::new(Fleet::new(
        scenario.things.clone(),
        Duration::from_millis(file.telemetry.loss_timeout_ms),
    ));
    let start = Instant::now();
    let instance = format!("grove-sim-{}", std::process::id());
    let observer =
        observer::connect(target, &format!("{instance}-observer"), fleet.clone()).await?;
    let controller = Controller::connect(
        target,
        &format!("{instance}-controller"),
        file.shadow.controller_clients,
        fleet.clone(),
    )
    .await?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let progress = match options.progress {
        Progress::Line => Some(tokio::spawn(progress_line(
            fleet.clone(),
            scenario.duration,
            shutdown_rx.clone(),
        ))),
        Progress::Quiet => None,
    };

    // Warmup: start the devices, spread over the ramp.
    let mut slow_rng = stream(file.seed, STREAM_SLOW_LINKS);
    let slow_count = ((count as f64) * file.chaos.slow_fraction).round() as usize;
    let mut slow = vec![false; count];
    for i in index::sample(&mut slow_rng, count, slow_count.min(count)) {
        slow[i] = true;
    }
    let slow_delay = Duration::from_millis(file.chaos.slow_delay_ms);
    let mut chaos_senders = Vec::with_capacity(count);
    let mut devices = JoinSet::new();
    for (i, config) in configs.into_iter().enumerate() {
        let at = start + scenario.ramp.mul_f64(i as f64 / count as f64);
        tokio::time::sleep_until(at).await;
        let clock = SensorClock::default();
        let setup = DeviceSetup {
            index: i,
            config,
            target,
            sensor: SimSht4x::new(&file.sensor, file.seed, i as u64, clock.clone()),
            clock,
            slow: slow[i].then_some(slow_delay),
            connect_timeout: Duration::from_millis(u64::from(file.fleet.ack_timeout_ms)),
        };
        let (tx, rx) = mpsc::channel(4);
        chaos_senders.push(tx);
        devices.spawn(device::run(setup, fleet.clone(), rx, shutdown_rx.clone()));
    }
    let connect_deadline =
        start + scenario.ramp + Duration::from_secs(30) + Duration::from_millis(count as u64 * 5);
    // Warm means every device is connected and the gateway has committed its boot report, so the
    // measured phase does not start inside the connection storm's backlog.
    while (fleet.connected() < count || fleet.shadows_seen() < count)
        && Instant::now() < connect_deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connected_at_start = fleet.connected();
    let warmup = start.elapsed();

    // Measure.
    let expiry = tokio::spawn(expire_telemetry(fleet.clone(), shutdown_rx.clone()));
    let mut self_probe = Probe::myself().ok();
    fleet.set_phase(Phase::Measure);
    let measure_start = Instant::now();
    let until = measure_start + scenario.duration;
    let sampling = async {
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_secs(1).min(until - Instant::now())).await;
            for probe in [gateway_probe.as_mut(), self_probe.as_mut()]
                .into_iter()
                .flatten()
            {
                // A gateway that died mid-run keeps its last figures; the run's other numbers tell why.
                let _ = probe.sample();
            }
        }
    };
    tokio::join!(
        sampling,
        chaos::run(
            &file.chaos,
            &chaos_senders,
            stream(file.seed, STREAM_CHAOS),
            until
        ),
        controller.drive(
            file.shadow.changes_per_s,
            &file.shadow.interval_choices,
            stream(file.seed, STREAM_CONTROLLER),
            until
        ),
    );
    let measured = measure_start.elapsed();

    // Settle.
    fleet.set_phase(Phase::Settle);
    let settle_start = Instant::now();
    let settle_deadline = settle_start + scenario.settle;
    while Instant::now() < settle_deadline {
        let calm = fleet.in_flight() == 0
            && fleet.pending_changes() == 0
            && fleet.connected() == count
            && fleet.shadows_hold() == count;
        if calm {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let settled = settle_start.elapsed();
    let final_check = controller.final_check().await;
    let connected_at_end = fleet.connected();

    // Shut down.
    let _ = shutdown_tx.send(true);
    while devices.join_next().await.is_some() {}
    let _ = expiry.await;
    if let Some(progress) = progress {
        let _ = progress.await;
    }
    observer.close().await;
    controller.close().await;
    fleet.expire(true);

    let c = |counter: fn(&crate::fleet::Counters) -> &std::sync::atomic::AtomicU64| {
        fleet.count(counter)
    };
    let sent = c(|c| &c.sent);
    let delivered = c(|c| &c.delivered);
    let mut summary = Summary {
        scenario: file.name.clone(),
        seed: file.seed,
        target: target.to_string(),
        devices: count,
        started_unix_s,
        warmup_s: round3(warmup.as_secs_f64()),
        measured_s: round3(measured.as_secs_f64()),
        settle_s: round3(settled.as_secs_f64()),
        telemetry: TelemetrySummary {
            sent,
            delivered,
            lost: c(|c| &c.lost),
            unmatched: c(|c| &c.unmatched),
            delivery_ratio: if sent == 0 {
                0.0
            } else {
                delivered as f64 / sent as f64
            },
            delivered_per_s: round3(delivered as f64 / measured.as_secs_f64().max(1e-3)),
            skipped_offline: c(|c| &c.skipped_offline),
            backpressure: c(|c| &c.backpressure),
            sensor_errors: c(|c| &c.sensor_errors),
            latency_ms: fleet.latency(),
        },
        connections: ConnectionSummary {
            connected_at_start,
            connected_at_end,
            connects: c(|c| &c.connects),
            reconnects: c(|c| &c.reconnects),
            disconnects: c(|c| &c.disconnects),
            disconnect_reasons: fleet.disconnect_reasons(),
            connect_failures: c(|c| &c.connect_failures),
            chaos_disconnects: c(|c| &c.chaos_disconnects),
            reboots: c(|c| &c.reboots),
            slow_links: slow_count,
        },
        shadow: ShadowSummary {
            desired_sent: c(|c| &c.desired_sent),
            desired_accepted: c(|c| &c.desired_accepted),
            desired_rejected: c(|c| &c.desired_rejected),
            desired_unanswered: c(|c| &c.desired_unanswered),
            applied_by_devices: c(|c| &c.applied),
            converged_changes: c(|c| &c.converged),
            unconverged_changes: fleet.pending_changes() as u64,
            convergence_ms: fleet.convergence(),
            final_check,
        },
        gateway: gateway_probe.as_ref().map(Probe::usage),
        simulator: self_probe.as_ref().map(Probe::usage),
        expectations: Vec::new(),
        passed: false,
    };
    summary.expectations = evaluate(&file.expect, &summary);
    summary.passed = summary.expectations.iter().all(|o| o.passed);
    Ok(summary)
}

fn device_config(scenario: &Scenario, thing: &str) -> Result<grove_firmware::Config, RunError> {
    let fleet = &scenario.file.fleet;
    grove_firmware::Config::new(thing)
        .and_then(|c| c.with_timing(fleet.keep_alive_s, fleet.ack_timeout_ms))
        .map(|c| c.with_backoff(fleet.reconnect_min_ms, fleet.reconnect_max_ms))
        .and_then(|c| c.with_interval(scenario.file.telemetry.interval_s))
        .map(|c| {
            // Validated as 0 or 1 when the scenario was loaded.
            c.with_telemetry_qos(match scenario.file.telemetry.qos {
                0 => QoS::AtMostOnce,
                _ => QoS::AtLeastOnce,
            })
        })
        .map_err(|source| RunError::Device {
            thing: thing.to_owned(),
            source,
        })
}

/// An independent, reproducible random stream.
fn stream(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// Counts telemetry overdue as lost, four times a second, until shutdown.
async fn expire_telemetry(fleet: Arc<Fleet>, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = ticker.tick() => fleet.expire(false),
            _ = shutdown.changed() => return,
        }
    }
}

/// Prints the progress line once a second (on a terminal, rewritten in place; otherwise a new line
/// every five seconds, so logs stay short) until shutdown.
async fn progress_line(fleet: Arc<Fleet>, duration: Duration, mut shutdown: watch::Receiver<bool>) {
    let terminal = std::io::stderr().is_terminal();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut phase_start = (Phase::Warmup, Instant::now());
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => break,
        }
        let phase = fleet.phase();
        if phase != phase_start.0 {
            phase_start = (phase, Instant::now());
        }
        ticks += 1;
        if !terminal && !ticks.is_multiple_of(5) {
            continue;
        }
        let elapsed = phase_start.1.elapsed().as_secs_f64();
        let clock = match phase {
            Phase::Warmup => format!("warmup  {elapsed:5.1} s"),
            Phase::Measure => format!("measure {elapsed:5.1}/{} s", duration.as_secs_f64()),
            Phase::Settle => format!("settle  {elapsed:5.1} s"),
        };
        let c = &fleet.counters;
        let line = format!(
            "[{clock}] up {}/{} | sent {} delivered {} lost {} | p99 {} ms | reconnects {} | changes {} converged {}",
            fleet.connected(),
            fleet.things.len(),
            c.sent.load(Ordering::Relaxed),
            c.delivered.load(Ordering::Relaxed),
            c.lost.load(Ordering::Relaxed),
            fleet.latency().p99,
            c.reconnects.load(Ordering::Relaxed),
            c.desired_accepted.load(Ordering::Relaxed),
            c.converged.load(Ordering::Relaxed),
        );
        let mut stderr = std::io::stderr().lock();
        let _ = if terminal {
            write!(stderr, "\r\x1b[2K{line}")
        } else {
            writeln!(stderr, "{line}")
        };
        let _ = stderr.flush();
    }
    if terminal {
        let _ = writeln!(std::io::stderr());
    }
}
