//! The run's results: what is written as JSON (`--json`) and the Markdown printed at the end, ready to
//! paste into BENCHMARKS.md. Pure formatting; the figures come in from the runner.

use std::fmt::Write as _;

use serde::Serialize;
use tabled::builder::Builder;
use tabled::settings::Style;

use crate::load::{PhaseOutcome, Stop};
use crate::peer::PeerKind;

/// Which kind of phase a scenario is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Publishers send flat out: maximum throughput.
    Max,
    /// Publishers send at `--rate` messages per second each: latency without queueing.
    Rate,
}

impl Mode {
    /// Name used in tables, JSON and topic names.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Max => "max",
            Mode::Rate => "rate",
        }
    }
}

/// Which MQTT client library the load clients are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Client {
    /// rumqttc, async, every client a task in grove-bench's own tokio runtime ([`crate::load`]).
    Rumqttc,
    /// libmosquitto, in a process of its own, one thread polling every socket ([`crate::libmosq`]).
    Libmosquitto,
}

impl Client {
    /// Name used in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Client::Rumqttc => "rumqttc",
            Client::Libmosquitto => "libmosquitto",
        }
    }
}

/// One combination of client library, phase kind, QoS and payload size; every peer runs every
/// scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Scenario {
    /// The load clients' library.
    pub client: Client,
    /// Flat out or fixed rate.
    pub mode: Mode,
    /// QoS of publishes and subscriptions (0 or 1).
    pub qos: u8,
    /// Payload size in bytes.
    pub payload: usize,
}

/// The machine the run was made on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPUs available to the process (what `nproc` prints).
    pub nproc: usize,
    /// `model name` of the first CPU in /proc/cpuinfo.
    pub cpu_model: String,
    /// One-minute load average when the run started: a busy machine makes every figure noisier.
    pub load_at_start: f32,
    /// One-minute load average when the run ended.
    pub load_at_end: f32,
}

/// The load settings of the run, as resolved from the command line.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Publishers per phase.
    pub publishers: u32,
    /// Subscribers per phase (each receives every message).
    pub subscribers: u32,
    /// When publishers stop in `max` phases.
    pub max_stop: Stop,
    /// When publishers stop in `rate` phases.
    pub rate_stop: Stop,
    /// Messages per second per publisher in `rate` phases.
    pub rate_per_publisher: u32,
    /// The load clients' libraries, in run order.
    pub clients: Vec<Client>,
    /// Spawns per peer for the start-time median.
    pub startup_runs: u32,
    /// Idle clients held connected for the second RSS reading, then disconnected before the third.
    pub idle_clients: u32,
    /// Hard limit on each phase's publishing, seconds.
    pub publish_limit_s: u64,
}

impl PeerReport {
    /// Memory each idle client costs the broker: (RSS with the clients - idle RSS) / clients, bytes;
    /// None without clients.
    pub fn bytes_per_idle_client(&self, clients: u32) -> Option<f64> {
        divide(
            self.rss_with_clients_kb.saturating_sub(self.rss_idle_kb) as f64 * 1024.0,
            f64::from(clients),
        )
    }
}

/// One phase's result.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    /// What was run.
    pub scenario: Scenario,
    /// What came out.
    pub outcome: PhaseOutcome,
    /// CPU time (user + system) the broker used during the phase, milliseconds.
    pub broker_cpu_ms: f64,
    /// CPU time the harness process (grove-bench) used during the phase, milliseconds: with rumqttc
    /// all the clients run in it, with libmosquitto it only waits and reads the results.
    pub harness_cpu_ms: f64,
    /// CPU time the load clients used during the phase, milliseconds: with rumqttc the harness
    /// process's (as `harness_cpu_ms`), with libmosquitto the client process's own (getrusage). When
    /// it nears the elapsed time times the CPUs left over, the clients, not the broker, limit the
    /// throughput.
    pub client_cpu_ms: f64,
}

impl PhaseReport {
    /// Broker CPU time per delivered message, microseconds; None when nothing was delivered.
    pub fn cpu_us_per_delivery(&self) -> Option<f64> {
        divide(self.broker_cpu_ms * 1e3, self.outcome.delivered as f64)
    }

    /// Load clients' CPU time per delivered message, microseconds; None when nothing was delivered.
    pub fn client_cpu_us_per_delivery(&self) -> Option<f64> {
        divide(self.client_cpu_ms * 1e3, self.outcome.delivered as f64)
    }
}

/// Everything measured on one broker.
#[derive(Debug, Clone, Serialize)]
pub struct PeerReport {
    /// Which broker.
    pub peer: PeerKind,
    /// Its binary.
    pub binary: String,
    /// What it says its version is.
    pub version: Option<String>,
    /// Each spawn-to-first-CONNACK time, milliseconds.
    pub startup_ms: Vec<f64>,
    /// Their median.
    pub startup_median_ms: f64,
    /// VmRSS after start, with no client connected, KiB.
    pub rss_idle_kb: u64,
    /// CPU use with no client connected, percent of one CPU.
    pub idle_cpu_percent: f64,
    /// VmRSS with `idle_clients` idle clients connected (1 s after the last CONNACK), KiB.
    pub rss_with_clients_kb: u64,
    /// VmRSS 1 s after those clients disconnected, KiB.
    pub rss_after_clients_kb: u64,
    /// VmRSS after all phases (every client gone), KiB.
    pub rss_after_load_kb: u64,
    /// VmHWM (peak RSS) at the end, KiB.
    pub rss_peak_kb: u64,
    /// Phase results, in run order.
    pub phases: Vec<PhaseReport>,
}

/// grove's figures divided by mosquitto's for one scenario.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Comparison {
    /// The scenario compared.
    pub scenario: Scenario,
    /// Delivered msgs/s ratio (above 1: grove delivers more).
    pub throughput: Option<f64>,
    /// p50 latency ratio (below 1: grove is faster).
    pub p50: Option<f64>,
    /// p99 latency ratio.
    pub p99: Option<f64>,
    /// p99.9 latency ratio.
    pub p999: Option<f64>,
    /// Broker CPU time per delivered message ratio (below 1: grove uses less CPU).
    pub cpu_per_delivery: Option<f64>,
    /// The load clients' CPU time per delivered message, against grove / against mosquitto (how
    /// much harder one broker makes the same clients work).
    pub client_cpu_per_delivery: Option<f64>,
    /// Deliveries grove lost; a throughput ratio means little when this is not 0.
    pub grove_lost: u64,
    /// Deliveries mosquitto lost.
    pub mosquitto_lost: u64,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// UTC date and time the run started, RFC 3339.
    pub date: String,
    /// The command line, shell-quoted.
    pub command: String,
    /// Where it ran.
    pub machine: Machine,
    /// The load.
    pub settings: Settings,
    /// Per broker results.
    pub peers: Vec<PeerReport>,
    /// grove / mosquitto ratios (empty unless both ran).
    pub comparisons: Vec<Comparison>,
    /// One line per QoS 1 phase that lost messages; must be empty.
    pub qos1_losses: Vec<String>,
}

impl Report {
    /// Computes the ratios and the QoS 1 loss lines from the peers' results.
    pub fn new(
        date: String,
        command: String,
        machine: Machine,
        settings: Settings,
        peers: Vec<PeerReport>,
    ) -> Self {
        let comparisons = compare(&peers);
        let qos1_losses = qos1_losses(&peers);
        Self {
            date,
            command,
            machine,
            settings,
            peers,
            comparisons,
            qos1_losses,
        }
    }

    /// The Markdown section for BENCHMARKS.md.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let s = &self.settings;
        let stop = |stop: Stop| match stop {
            Stop::Messages(count) => format!("{count} messages per publisher"),
            Stop::Duration(d) => format!("{} s of publishing", d.as_secs_f64()),
        };
        // Writing to a String cannot fail.
        let _ = writeln!(out, "## grove-bench broker, {}\n", self.date);
        let m = &self.machine;
        let _ = writeln!(
            out,
            "- Machine: {} CPUs (nproc), {}; load average {:.2} at start, {:.2} at end",
            m.nproc, m.cpu_model, m.load_at_start, m.load_at_end
        );
        let _ = writeln!(out, "- Command: `{}`", self.command);
        let _ = writeln!(
            out,
            "- Load: {} publishers, {} subscribers on 127.0.0.1, each subscriber on `bench/<phase>/#` \
             (every message delivered {} times). `max` phases: publishers flat out, {}. `rate` phases: \
             {} msg/s per publisher, {}. Latency: publish call to receipt, µs. CPU: the broker's user + \
             system time during the phase; client CPU: the same for all the load clients together.",
            s.publishers,
            s.subscribers,
            s.subscribers,
            stop(s.max_stop),
            s.rate_per_publisher,
            stop(s.rate_stop)
        );
        let clients: Vec<&str> = s
            .clients
            .iter()
            .map(|client| match client {
                Client::Rumqttc => {
                    "rumqttc (async tasks in grove-bench's tokio runtime; client CPU = the \
                     grove-bench process)"
                }
                Client::Libmosquitto => {
                    "libmosquitto (bench/c/mqtt_load.c, a process of its own, one thread polling \
                     every socket; client CPU = its getrusage)"
                }
            })
            .collect();
        let _ = writeln!(out, "- Load clients: {}.\n", clients.join("; "));
        for line in &self.qos1_losses {
            let _ = writeln!(out, "**{line}**\n");
        }

        let _ = writeln!(out, "### Throughput and latency\n");
        out.push_str(&self.phase_table());
        if !self.comparisons.is_empty() {
            let _ = writeln!(
                out,
                "\n### grove / mosquitto (msgs/s: above 1 is better; latency and CPU/msg: below 1 is better)\n"
            );
            out.push_str(&self.comparison_table());
        }
        let _ = writeln!(out, "\n### Process\n");
        out.push_str(&self.process_table());
        out
    }

    fn phase_table(&self) -> String {
        let mut table = Builder::default();
        table.push_record([
            "peer",
            "client",
            "phase",
            "QoS",
            "payload B",
            "sent",
            "delivered",
            "msgs/s",
            "p50",
            "p99",
            "p99.9",
            "max",
            "lost",
            "dup",
            "reordered",
            "CPU ms",
            "CPU µs/msg",
            "client CPU ms",
            "client CPU µs/msg",
        ]);
        for peer in &self.peers {
            for phase in &peer.phases {
                let (sc, o) = (&phase.scenario, &phase.outcome);
                table.push_record([
                    peer.peer.name().to_owned(),
                    sc.client.name().to_owned(),
                    sc.mode.name().to_owned(),
                    sc.qos.to_string(),
                    sc.payload.to_string(),
                    o.sent.to_string(),
                    o.delivered.to_string(),
                    format!("{:.0}", o.throughput),
                    o.latency.p50_us.to_string(),
                    o.latency.p99_us.to_string(),
                    o.latency.p999_us.to_string(),
                    o.latency.max_us.to_string(),
                    o.tally.lost.to_string(),
                    o.tally.duplicates.to_string(),
                    o.tally.out_of_order.to_string(),
                    format!("{:.0}", phase.broker_cpu_ms),
                    ratio(phase.cpu_us_per_delivery()),
                    format!("{:.0}", phase.client_cpu_ms),
                    ratio(phase.client_cpu_us_per_delivery()),
                ]);
            }
        }
        markdown(table)
    }

    fn comparison_table(&self) -> String {
        let mut table = Builder::default();
        table.push_record([
            "phase",
            "client",
            "QoS",
            "payload B",
            "msgs/s",
            "p50",
            "p99",
            "p99.9",
            "CPU/msg",
            "client CPU/msg",
            "lost: grove / mosquitto",
        ]);
        for c in &self.comparisons {
            table.push_record([
                c.scenario.mode.name().to_owned(),
                c.scenario.client.name().to_owned(),
                c.scenario.qos.to_string(),
                c.scenario.payload.to_string(),
                ratio(c.throughput),
                ratio(c.p50),
                ratio(c.p99),
                ratio(c.p999),
                ratio(c.cpu_per_delivery),
                ratio(c.client_cpu_per_delivery),
                format!("{} / {}", c.grove_lost, c.mosquitto_lost),
            ]);
        }
        markdown(table)
    }

    fn process_table(&self) -> String {
        let mut table = Builder::default();
        table.push_record([
            "peer".to_owned(),
            "version".to_owned(),
            "start to first CONNACK, median ms".to_owned(),
            "idle RSS KiB".to_owned(),
            "idle CPU %".to_owned(),
            format!("RSS with {} idle clients KiB", self.settings.idle_clients),
            "per idle client B".to_owned(),
            "RSS after they left KiB".to_owned(),
            "RSS after load KiB".to_owned(),
            "peak RSS KiB".to_owned(),
        ]);
        for peer in &self.peers {
            table.push_record([
                peer.peer.name().to_owned(),
                peer.version.clone().unwrap_or_else(|| "?".to_owned()),
                format!(
                    "{:.1} (of {})",
                    peer.startup_median_ms,
                    peer.startup_ms.len()
                ),
                peer.rss_idle_kb.to_string(),
                format!("{:.1}", peer.idle_cpu_percent),
                peer.rss_with_clients_kb.to_string(),
                peer.bytes_per_idle_client(self.settings.idle_clients)
                    .map_or_else(|| "-".to_owned(), |b| format!("{b:.0}")),
                peer.rss_after_clients_kb.to_string(),
                peer.rss_after_load_kb.to_string(),
                peer.rss_peak_kb.to_string(),
            ]);
        }
        markdown(table)
    }
}

fn markdown(table: Builder) -> String {
    let mut table = table.build();
    table.with(Style::markdown());
    format!("{table}\n")
}

fn ratio(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}"))
}

/// `a / b`, or None when either side has no figure.
fn divide(a: f64, b: f64) -> Option<f64> {
    (a > 0.0 && b > 0.0).then(|| a / b)
}

/// grove / mosquitto for every scenario both ran.
fn compare(peers: &[PeerReport]) -> Vec<Comparison> {
    let find = |kind| peers.iter().find(|p| p.peer == kind);
    let (Some(grove), Some(mosquitto)) = (find(PeerKind::Grove), find(PeerKind::Mosquitto)) else {
        return Vec::new();
    };
    grove
        .phases
        .iter()
        .filter_map(|g| {
            let m = mosquitto.phases.iter().find(|m| m.scenario == g.scenario)?;
            let (go, mo) = (&g.outcome, &m.outcome);
            let lat = |a: u64, b: u64| divide(a as f64, b as f64);
            Some(Comparison {
                scenario: g.scenario,
                throughput: divide(go.throughput, mo.throughput),
                p50: lat(go.latency.p50_us, mo.latency.p50_us),
                p99: lat(go.latency.p99_us, mo.latency.p99_us),
                p999: lat(go.latency.p999_us, mo.latency.p999_us),
                cpu_per_delivery: g
                    .cpu_us_per_delivery()
                    .zip(m.cpu_us_per_delivery())
                    .and_then(|(g, m)| divide(g, m)),
                client_cpu_per_delivery: g
                    .client_cpu_us_per_delivery()
                    .zip(m.client_cpu_us_per_delivery())
                    .and_then(|(g, m)| divide(g, m)),
                grove_lost: go.tally.lost,
                mosquitto_lost: mo.tally.lost,
            })
        })
        .collect()
}

/// A loud line for every QoS 1 phase that lost a message.
fn qos1_losses(peers: &[PeerReport]) -> Vec<String> {
    peers
        .iter()
        .flat_map(|peer| {
            peer.phases
                .iter()
                .filter(|p| {
                    p.scenario.qos == 1 && (p.outcome.tally.lost > 0 || p.outcome.drain_timed_out)
                })
                .map(move |p| {
                    format!(
                        "QoS 1 LOSS: {} lost {} of {} deliveries ({} phase, {} B payload, {}){}",
                        peer.peer.name(),
                        p.outcome.tally.lost,
                        p.outcome.tally.expected,
                        p.scenario.mode.name(),
                        p.scenario.payload,
                        p.scenario.client.name(),
                        if p.outcome.drain_timed_out {
                            ", drain timed out"
                        } else {
                            ""
                        }
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{DeliveryTally, LatencySummary};

    /// Figures of one phase: msgs/s, p50, p99, p999 (µs), broker CPU ms, lost (of 2000 deliveries).
    type Figures = (f64, u64, u64, u64, f64, u64);

    fn phase(scenario: Scenario, f: Figures) -> PhaseReport {
        let (throughput, p50, p99, p999, cpu_ms, lost) = f;
        PhaseReport {
            scenario,
            broker_cpu_ms: cpu_ms,
            harness_cpu_ms: 2.0 * cpu_ms,
            client_cpu_ms: 2.0 * cpu_ms,
            outcome: PhaseOutcome {
                sent: 1000,
                acked: 1000,
                publish_rate: throughput,
                delivered: 2000 - lost,
                throughput,
                elapsed_s: 1.0,
                latency: LatencySummary {
                    samples: 2000 - lost,
                    p50_us: p50,
                    p99_us: p99,
                    p999_us: p999,
                    max_us: p999,
                },
                tally: DeliveryTally {
                    expected: 2000,
                    unique: 2000 - lost,
                    lost,
                    ..DeliveryTally::default()
                },
                foreign: 0,
                drain_timed_out: false,
            },
        }
    }

    fn scenario(mode: Mode, qos: u8, payload: usize) -> Scenario {
        Scenario {
            client: Client::Rumqttc,
            mode,
            qos,
            payload,
        }
    }

    fn peer(kind: PeerKind, phases: Vec<PhaseReport>) -> PeerReport {
        PeerReport {
            peer: kind,
            binary: kind.name().to_owned(),
            version: Some(format!("{} 1.0", kind.name())),
            startup_ms: vec![3.0, 5.0, 4.0],
            startup_median_ms: 4.0,
            rss_idle_kb: 8000,
            idle_cpu_percent: 0.5,
            rss_with_clients_kb: 8200,
            rss_after_clients_kb: 8100,
            rss_after_load_kb: 9000,
            rss_peak_kb: 12000,
            phases,
        }
    }

    fn report(peers: Vec<PeerReport>) -> Report {
        Report::new(
            "2026-01-01T00:00:00Z".to_owned(),
            "grove-bench broker --messages 1000".to_owned(),
            Machine {
                nproc: 2,
                cpu_model: "Test CPU".to_owned(),
                load_at_start: 0.5,
                load_at_end: 1.25,
            },
            Settings {
                publishers: 1,
                subscribers: 2,
                max_stop: Stop::Messages(1000),
                rate_stop: Stop::Duration(std::time::Duration::from_secs(2)),
                rate_per_publisher: 100,
                clients: vec![Client::Rumqttc, Client::Libmosquitto],
                startup_runs: 3,
                idle_clients: 10,
                publish_limit_s: 60,
            },
            peers,
        )
    }

    /// One scenario run by both peers: grove's and mosquitto's figures -> expected ratio cells.
    fn check_ratios(grove: Figures, mosquitto: Figures, expected: [&str; 7]) {
        let sc = scenario(Mode::Max, 0, 64);
        let r = report(vec![
            peer(PeerKind::Mosquitto, vec![phase(sc, mosquitto)]),
            peer(PeerKind::Grove, vec![phase(sc, grove)]),
        ]);
        let c = r.comparisons[0];
        let mut cells = [
            c.throughput,
            c.p50,
            c.p99,
            c.p999,
            c.cpu_per_delivery,
            c.client_cpu_per_delivery,
        ]
        .map(ratio)
        .to_vec();
        cells.push(format!("{} / {}", c.grove_lost, c.mosquitto_lost));
        assert_eq!(
            cells, expected,
            "grove {grove:?} vs mosquitto {mosquitto:?}"
        );
    }

    #[test]
    fn ratios_are_grove_over_mosquitto() {
        // grove: msgs/s, p50, p99, p999, CPU ms, lost; mosquitto: same; expected ratios and losses.
        check_ratios(
            (200.0, 50, 100, 400, 30.0, 0),
            (100.0, 100, 100, 100, 60.0, 0),
            ["2.00", "0.50", "1.00", "4.00", "0.50", "0.50", "0 / 0"],
        );
        check_ratios(
            (100.0, 1, 3, 9, 10.0, 0),
            (300.0, 3, 9, 27, 30.0, 0),
            ["0.33", "0.33", "0.33", "0.33", "0.33", "0.33", "0 / 0"],
        );
        check_ratios(
            (0.0, 0, 0, 0, 0.0, 2000),
            (100.0, 10, 10, 10, 5.0, 3),
            ["n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "2000 / 3"],
        );
    }

    #[test]
    fn each_client_library_is_compared_on_its_own() {
        let rumqttc = scenario(Mode::Max, 0, 64);
        let libmosquitto = Scenario {
            client: Client::Libmosquitto,
            ..rumqttc
        };
        let mut fast_client = phase(libmosquitto, (400.0, 10, 20, 30, 10.0, 0));
        fast_client.client_cpu_ms = 5.0;
        let r = report(vec![
            peer(
                PeerKind::Mosquitto,
                vec![
                    phase(rumqttc, (100.0, 10, 20, 30, 10.0, 0)),
                    phase(libmosquitto, (200.0, 10, 20, 30, 10.0, 0)),
                ],
            ),
            peer(
                PeerKind::Grove,
                vec![phase(rumqttc, (300.0, 10, 20, 30, 10.0, 0)), fast_client],
            ),
        ]);
        let rows: Vec<(Client, String, String)> = r
            .comparisons
            .iter()
            .map(|c| {
                (
                    c.scenario.client,
                    ratio(c.throughput),
                    ratio(c.client_cpu_per_delivery),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                (Client::Rumqttc, "3.00".to_owned(), "1.00".to_owned()),
                (Client::Libmosquitto, "2.00".to_owned(), "0.25".to_owned()),
            ]
        );
        let markdown = r.to_markdown();
        assert!(
            markdown.contains("| max   | libmosquitto | 0   | 64        | 2.00   |"),
            "{markdown}"
        );
    }

    #[test]
    fn no_comparison_without_both_peers() {
        let sc = scenario(Mode::Rate, 1, 1024);
        let r = report(vec![peer(
            PeerKind::Mosquitto,
            vec![phase(sc, (10.0, 1, 2, 3, 1.0, 0))],
        )]);
        assert!(r.comparisons.is_empty());
        assert!(!r.to_markdown().contains("grove / mosquitto"));
    }

    #[test]
    fn qos1_losses_are_named_and_qos0_losses_are_not() {
        let r = report(vec![peer(
            PeerKind::Grove,
            vec![
                phase(scenario(Mode::Max, 0, 64), (10.0, 1, 2, 3, 1.0, 7)),
                phase(scenario(Mode::Max, 1, 1024), (10.0, 1, 2, 3, 1.0, 5)),
                phase(scenario(Mode::Rate, 1, 64), (10.0, 1, 2, 3, 1.0, 0)),
            ],
        )]);
        let line =
            "QoS 1 LOSS: grove lost 5 of 2000 deliveries (max phase, 1024 B payload, rumqttc)";
        assert_eq!(r.qos1_losses, [line]);
        assert!(r.to_markdown().contains(&format!("**{line}**")));
    }

    #[test]
    fn markdown_tables() {
        let sc = scenario(Mode::Max, 1, 64);
        let r = report(vec![
            peer(
                PeerKind::Mosquitto,
                vec![phase(sc, (1000.0, 100, 200, 300, 50.0, 0))],
            ),
            peer(
                PeerKind::Grove,
                vec![phase(sc, (1500.0, 80, 200, 600, 40.0, 0))],
            ),
        ]);
        let markdown = r.to_markdown();
        let expected = [
            "- Machine: 2 CPUs (nproc), Test CPU; load average 0.50 at start, 1.25 at end",
            "- Command: `grove-bench broker --messages 1000`",
            "- Load clients: rumqttc (async tasks in grove-bench's tokio runtime; client CPU = the grove-bench process); libmosquitto (bench/c/mqtt_load.c, a process of its own, one thread polling every socket; client CPU = its getrusage).",
            "| peer      | client  | phase | QoS | payload B | sent | delivered | msgs/s | p50 | p99 | p99.9 | max | lost | dup | reordered | CPU ms | CPU µs/msg | client CPU ms | client CPU µs/msg |",
            "| mosquitto | rumqttc | max   | 1   | 64        | 1000 | 2000      | 1000   | 100 | 200 | 300   | 300 | 0    | 0   | 0         | 50     | 25.00      | 100           | 50.00             |",
            "| grove     | rumqttc | max   | 1   | 64        | 1000 | 2000      | 1500   | 80  | 200 | 600   | 600 | 0    | 0   | 0         | 40     | 20.00      | 80            | 40.00             |",
            "| phase | client  | QoS | payload B | msgs/s | p50  | p99  | p99.9 | CPU/msg | client CPU/msg | lost: grove / mosquitto |",
            "| max   | rumqttc | 1   | 64        | 1.50   | 0.80 | 1.00 | 2.00  | 0.80    | 0.80           | 0 / 0                   |",
            "| grove     | grove 1.0     | 4.0 (of 3)                        | 8000         | 0.5        | 8200                         | 20480             | 8100                    | 9000               | 12000        |",
        ];
        for line in expected {
            assert!(
                markdown.lines().any(|l| l == line),
                "missing line:\n{line}\nin:\n{markdown}"
            );
        }
    }
}
