//! The run: start every peer, measure its start time and idle memory, run every scenario against every
//! peer (interleaved, so a slow spell of a shared machine hits both peers alike), measure memory again
//! and stop the peers.

use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use procfs::Current as _;
use rumqttc::QoS;

use crate::libmosq;
use crate::load::{self, LoadSpec, Pace};
use crate::peer::{PeerSpec, RunningPeer};
use crate::report::{Client, Machine, Mode, PeerReport, PhaseReport, Report, Scenario, Settings};
use crate::stats::median_ms;

/// Time a broker gets to settle before its memory is read.
const SETTLE: Duration = Duration::from_secs(1);

/// Window over which the CPU use of an idle broker is measured (CPU time is counted in 10 ms ticks).
const IDLE_CPU_WINDOW: Duration = Duration::from_secs(2);

/// Everything a run needs, resolved from the command line.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Brokers under test, in run order.
    pub peers: Vec<PeerSpec>,
    /// Scenarios, in run order.
    pub scenarios: Vec<Scenario>,
    /// The load.
    pub settings: Settings,
    /// The command line, for the report.
    pub command: String,
}

/// Runs the plan and returns the report.
pub async fn run(plan: &Plan) -> anyhow::Result<Report> {
    let date = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let nproc = std::thread::available_parallelism().map_or(1, usize::from);
    let cpu_model = procfs::CpuInfo::current()
        .ok()
        .and_then(|info| info.model_name(0).map(str::to_owned))
        .unwrap_or_else(|| "unknown CPU model".to_owned());
    let load_at_start = load_average();
    let settings = &plan.settings;

    let mut running = Vec::new();
    for spec in &plan.peers {
        let version = spec.version();
        eprintln!(
            "[{}] {} ({}): timing {} starts",
            spec.name(),
            spec.binary.display(),
            version.as_deref().unwrap_or("version unknown"),
            settings.startup_runs
        );
        let mut samples = Vec::new();
        for _ in 1..settings.startup_runs {
            let peer = start(spec).await?;
            samples.push(peer.startup());
            stop(peer).await?;
        }
        // The last start is the instance the load runs against.
        let peer = start(spec).await?;
        samples.push(peer.startup());
        running.push((spec, version, samples, peer));
    }

    let mut reports = Vec::new();
    for (spec, version, samples, peer) in &running {
        tokio::time::sleep(SETTLE).await;
        let idle = peer.memory()?;
        let cpu_before = peer.cpu_time()?;
        tokio::time::sleep(IDLE_CPU_WINDOW).await;
        let idle_cpu = peer.cpu_time()?.saturating_sub(cpu_before);
        let idle_cpu_percent = idle_cpu.as_secs_f64() / IDLE_CPU_WINDOW.as_secs_f64() * 100.0;
        let with_clients = load::hold_idle_clients(peer.port(), settings.idle_clients, async {
            tokio::time::sleep(SETTLE).await;
            peer.memory()
        })
        .await
        .with_context(|| format!("connecting idle clients to {}", spec.name()))??;
        tokio::time::sleep(SETTLE).await;
        let after_clients = peer.memory()?;
        eprintln!(
            "[{}] start median {:.1} ms, idle RSS {} KiB, idle CPU {idle_cpu_percent:.1} %, with {} clients {} KiB, after they left {} KiB",
            spec.name(),
            median_ms(samples).unwrap_or(0.0),
            idle.rss_kb,
            settings.idle_clients,
            with_clients.rss_kb,
            after_clients.rss_kb
        );
        reports.push(PeerReport {
            peer: spec.kind,
            binary: spec.binary.display().to_string(),
            version: version.clone(),
            startup_ms: samples.iter().map(|d| d.as_secs_f64() * 1e3).collect(),
            startup_median_ms: median_ms(samples).unwrap_or(0.0),
            rss_idle_kb: idle.rss_kb,
            idle_cpu_percent,
            rss_with_clients_kb: with_clients.rss_kb,
            rss_after_clients_kb: after_clients.rss_kb,
            rss_after_load_kb: 0,
            rss_peak_kb: 0,
            phases: Vec::new(),
        });
    }

    for (number, scenario) in plan.scenarios.iter().enumerate() {
        for ((spec, _, _, peer), report) in running.iter().zip(&mut reports) {
            let phase_id = format!(
                "{}-{number}-{}{}-q{}-{}",
                spec.name(),
                match scenario.client {
                    Client::Rumqttc => "",
                    Client::Libmosquitto => "lm-",
                },
                scenario.mode.name(),
                scenario.qos,
                scenario.payload
            );
            let spec_load = load_spec(settings, scenario);
            let cpu_before = peer.cpu_time()?;
            let harness_before = harness_cpu()?;
            let context = || format!("phase {phase_id} against {}", spec.name());
            let (outcome, client_cpu) = match scenario.client {
                Client::Rumqttc => {
                    let outcome = load::run_phase(peer.port(), &phase_id, &spec_load)
                        .await
                        .with_context(context)?;
                    (outcome, None)
                }
                Client::Libmosquitto => {
                    let phase = libmosq::run_phase(
                        peer.port(),
                        &phase_id,
                        &spec_load,
                        &libmosq::Routing::default(),
                    )
                    .await
                    .with_context(context)?;
                    (phase.outcome, Some(phase.cpu))
                }
            };
            let cpu = peer.cpu_time()?.saturating_sub(cpu_before);
            let harness = harness_cpu()?.saturating_sub(harness_before);
            let phase = PhaseReport {
                scenario: *scenario,
                outcome,
                broker_cpu_ms: cpu.as_secs_f64() * 1e3,
                harness_cpu_ms: harness.as_secs_f64() * 1e3,
                // rumqttc's clients are the harness process's tasks.
                client_cpu_ms: client_cpu.unwrap_or(harness).as_secs_f64() * 1e3,
            };
            eprintln!("[{}] {}", spec.name(), progress_line(&phase));
            report.phases.push(phase);
        }
    }

    for ((spec, _, _, peer), report) in running.iter().zip(&mut reports) {
        tokio::time::sleep(SETTLE).await;
        let memory = peer.memory()?;
        report.rss_after_load_kb = memory.rss_kb;
        report.rss_peak_kb = memory.peak_kb;
        eprintln!(
            "[{}] RSS after load {} KiB, peak {} KiB",
            spec.name(),
            memory.rss_kb,
            memory.peak_kb
        );
    }
    for (spec, _, _, peer) in running {
        let status = stop(peer).await?;
        if !status.success() {
            eprintln!("[{}] exited with {status} when asked to stop", spec.name());
        }
    }

    let machine = Machine {
        nproc,
        cpu_model,
        load_at_start,
        load_at_end: load_average(),
    };
    Ok(Report::new(
        date,
        plan.command.clone(),
        machine,
        settings.clone(),
        reports,
    ))
}

/// The load of one scenario.
fn load_spec(settings: &Settings, scenario: &Scenario) -> LoadSpec {
    LoadSpec {
        publishers: settings.publishers,
        subscribers: settings.subscribers,
        qos: if scenario.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        },
        payload: scenario.payload,
        pace: match scenario.mode {
            Mode::Max => Pace::FlatOut,
            Mode::Rate => Pace::PerSecond(settings.rate_per_publisher),
        },
        stop: match scenario.mode {
            Mode::Max => settings.max_stop,
            Mode::Rate => settings.rate_stop,
        },
        publish_limit: Duration::from_secs(settings.publish_limit_s),
    }
}

fn progress_line(phase: &PhaseReport) -> String {
    let (scenario, o) = (&phase.scenario, &phase.outcome);
    format!(
        "{} {} QoS{} {} B: sent {}, delivered {}/{} in {:.2} s = {:.0} msgs/s, latency p50 {} µs p99 {} µs \
         p99.9 {} µs, lost {}, dup {}, reordered {}, broker CPU {:.0} ms, client CPU {:.0} ms{}",
        scenario.client.name(),
        scenario.mode.name(),
        scenario.qos,
        scenario.payload,
        o.sent,
        o.delivered,
        o.tally.expected,
        o.elapsed_s,
        o.throughput,
        o.latency.p50_us,
        o.latency.p99_us,
        o.latency.p999_us,
        o.tally.lost,
        o.tally.duplicates,
        o.tally.out_of_order,
        phase.broker_cpu_ms,
        phase.client_cpu_ms,
        if o.foreign > 0 {
            format!(", {} foreign messages", o.foreign)
        } else {
            String::new()
        }
    )
}

/// Starts a peer off the async threads: the start probe blocks while it polls the port.
async fn start(spec: &PeerSpec) -> anyhow::Result<RunningPeer> {
    let spec = spec.clone();
    Ok(tokio::task::spawn_blocking(move || spec.start()).await??)
}

/// Stops a peer off the async threads (it may wait for the process to exit).
async fn stop(peer: RunningPeer) -> anyhow::Result<std::process::ExitStatus> {
    Ok(tokio::task::spawn_blocking(move || peer.stop()).await??)
}

/// CPU time this process (all clients of the load) has used so far.
fn harness_cpu() -> anyhow::Result<Duration> {
    procfs::process::Process::myself()
        .and_then(|me| crate::peer::cpu_time(&me))
        .context("reading the harness's own CPU time from /proc/self/stat")
}

/// The one-minute load average, or 0 if /proc/loadavg cannot be read.
fn load_average() -> f32 {
    procfs::LoadAverage::current().map_or(0.0, |load| load.one)
}
