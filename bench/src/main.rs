//! grove-bench: the benchmark harness of Grove.
//!
//! `grove-bench broker` runs the very same MQTT load (N publishers, M subscribers, rumqttc on loopback)
//! against the grove gateway and against mosquitto, in one run, and reports delivered msgs/s, end-to-end
//! latency percentiles, losses and duplicates, the ratio grove/mosquitto, each broker's start time (spawn
//! to first CONNACK) and its resident memory. The output is Markdown for BENCHMARKS.md; `--json` writes the
//! same results for tools. Exit status: 0 on success, 1 on error, 3 if a QoS 1 message was lost.
//!
//! The gateway's own paths have their own subcommands, with the same Markdown and `--json` output:
//! `shadow` and `rules` ([`gateway`]), `functions` ([`functions`]: MQTT event -> WASM function ->
//! publish) and `cloud` ([`cloud`]: the outbox against a mosquitto as the cloud), all measured
//! through one shared flow of publishers and a subscriber ([`flow`]); `cloud-batch`
//! ([`cloud_batch`]) what batching a forward route saves and `cloud-idle` ([`cloud_idle`]) what an
//! idle link and a reconnect cost, both through a byte-counting proxy ([`byte_proxy`]); `topics` ([`topics`]) reads
//! broker memory, against mosquitto, while a device publishes on ever new topics; `auth-storm`
//! ([`auth`]) a storm of wrong-password CONNECTs, against mosquitto with a password file: memory,
//! threads, refusals and a legitimate device's login latency meanwhile; `console` ([`console`])
//! the web console's page loads, its memory per tab and what tabs watching a busy topic cost the
//! broker's other clients, in Chromium; `hostile`
//! ([`hostile`]) measures what the attacks of hostile functions and devices cost the gateway.

mod auth;
mod byte_proxy;
mod cloud;
mod cloud_batch;
mod cloud_idle;
mod console;
mod flow;
mod functions;
mod gateway;
mod half_connect;
mod hostile;
mod libmosq;
mod load;
mod payload;
mod peer;
mod report;
mod runner;
mod shadow_cloud;
mod stats;
mod topics;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::load::Stop;
use crate::peer::{PeerKind, PeerSpec};
use crate::report::{Client, Mode, Scenario, Settings};
use crate::runner::Plan;

/// Messages per publisher in a `max` phase unless --messages or --duration says otherwise.
const DEFAULT_MAX_MESSAGES: u64 = 20_000;

/// Messages per publisher in a `rate` phase unless --rate-messages or --duration says otherwise.
const DEFAULT_RATE_MESSAGES: u64 = 5_000;

/// Largest payload accepted: large enough for any realistic IoT message, small enough to stay bounded.
const MAX_PAYLOAD: usize = 1024 * 1024;

#[derive(Debug, Parser)]
#[command(name = "grove-bench", version, about = "Benchmarks for Grove")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the same MQTT load against grove and mosquitto and compare them.
    ///
    /// For each broker: N publishers publish to `bench/<phase>/<publisher>`, M subscribers each subscribe
    /// to `bench/<phase>/#`, so every message is delivered M times. Each combination of --mode, --qos
    /// and --payload is one phase; phases alternate between the brokers. By default each combination runs
    /// twice: `max` (publishers flat out: maximum throughput) and `rate` (each publisher at --rate msg/s:
    /// latency without queueing). Everything runs on 127.0.0.1 and stops by itself.
    Broker(Box<BrokerArgs>),
    /// Acknowledged durable shadow updates per second and their latency (publish to
    /// `update/accepted`): one hot thing, 1,000 things, one client, and a fixed 1,000 updates/s.
    Shadow(GatewayArgs),
    /// Device publish -> rule -> republished message: messages/s and latency at 10,000 msg/s,
    /// against plain pub/sub in the same gateway.
    Rules(GatewayArgs),
    /// The gateway started on N rules (default 0, 1, 1,000 and 10,000; a WHERE and a republish
    /// each, one topic each): spawn to first CONNACK and resident memory, per rule against the
    /// first count. `--seconds` is unused.
    RulesStartup(RulesStartupArgs),
    /// MQTT event -> WASM function -> publish: latency at 1,000 events/s and throughput flat out
    /// for the example functions `echo` and `enricher`, against a `[[rules]]` republish.
    Functions(FunctionsArgs),
    /// The cloud outbox against a mosquitto as the cloud: online latency at 1,000 msg/s (and
    /// straight to mosquitto, for the ratio), then append and drain rates across a cloud outage.
    Cloud(CloudArgs),
    /// What batching a forward route saves, against a mosquitto as the cloud through a
    /// byte-counting proxy: publishes, AWS billing units and link bytes of the same load sent
    /// unbatched and batched (online at 1,000 msg/s for `--seconds`), and the drain rate of
    /// `--messages` under `profile = "aws-iot-core"`.
    CloudBatch(CloudBatchArgs),
    /// What the cloud link costs idle: bytes on the wire per day with `--shadows` synced shadows
    /// (measured over `--seconds` through a byte-counting proxy), and the shadow requests and
    /// bytes of a reconnect when nothing changed.
    CloudIdle(CloudIdleArgs),
    /// The web console in a real browser (Chromium through chromedriver): each page's load to
    /// interactive and its bytes, the gateway's memory with 5 tabs each watching a topic, and the
    /// p99 of a 1,000 msg/s flow without and with those tabs watching it (both client libraries).
    Console(ConsoleArgs),
    /// Broker memory while one device publishes QoS 0 on a new topic every message (nobody
    /// subscribed), round after round, against mosquitto in the same run: does the broker keep
    /// something per distinct topic forever? `--seconds` is the pause before each memory reading.
    Topics(TopicsArgs),
    /// What hostile functions and devices cost the gateway (issue 15): memory before, right after
    /// and `--seconds` after a flood of 1 MB messages through a rule, a deploy of a module near
    /// the compile limits, a function logging 210 lines of 8 MiB and one refused a host call
    /// 20,000 times; each attack's duration and the gateway's log growth.
    Hostile(GatewayArgs),
    /// A storm of wrong-password CONNECTs on a password listener (issue 15, hardening item 1),
    /// against mosquitto with a password file in the same run: idle, peak and settled memory,
    /// threads, how the attempts were refused, and a legitimate device's login latency during
    /// the storm. `--seconds` is the pause after the storm before the last memory reading. With
    /// `--max-connections 50 --attackers 60` it is issue 15 item 5 (do looping wrong-password
    /// clients keep a valid device out of the connection slots?).
    AuthStorm(AuthStormArgs),
    /// Many connections each sending the first ~1 MiB of a CONNECT announced as 1.1 MiB, held
    /// open (issue 15, hardening item 6), against mosquitto in the same run: idle, peak and
    /// settled memory, how the broker answered, a legitimate login meanwhile. `--seconds` is the
    /// pause after the connections are closed before the last memory reading.
    HalfConnect(HalfConnectArgs),
}

/// The peer of the password benchmarks: mosquitto with a password file.
#[derive(Debug, Args)]
struct PasswordPeerArgs {
    /// The mosquitto binary (a bare name is looked up on PATH).
    #[arg(long, value_name = "PATH", default_value = "mosquitto")]
    mosquitto: PathBuf,
    /// The mosquitto_passwd binary that writes mosquitto's password file.
    #[arg(long, value_name = "PATH", default_value = "mosquitto_passwd")]
    mosquitto_passwd: PathBuf,
    /// Measure grove alone.
    #[arg(long)]
    no_mosquitto: bool,
}

impl PasswordPeerArgs {
    /// mosquitto and mosquitto_passwd, unless grove is measured alone.
    fn peer(self) -> Option<(PathBuf, PathBuf)> {
        (!self.no_mosquitto).then_some((self.mosquitto, self.mosquitto_passwd))
    }
}

#[derive(Debug, Args)]
struct HalfConnectArgs {
    #[command(flatten)]
    gateway: GatewayArgs,
    #[command(flatten)]
    peer: PasswordPeerArgs,
    /// Connections opened at once.
    #[arg(long, value_name = "N", default_value_t = 300,
          value_parser = clap::value_parser!(u32).range(1..=5000))]
    connections: u32,
    /// Loopback source addresses they spread over (127.0.0.2 and up).
    #[arg(long, value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u8).range(1..=250))]
    sources: u8,
    /// The CONNECT's remaining length as its fixed header announces it (default 1.1 MiB).
    #[arg(long, value_name = "BYTES", default_value_t = 1_153_434,
          value_parser = clap::value_parser!(u64).range(16..=200_000_000))]
    announced: u64,
    /// Bytes of it each connection sends, as far as the broker reads them (default 1 MiB).
    #[arg(long, value_name = "BYTES", default_value_t = 1_048_576,
          value_parser = clap::value_parser!(u64).range(1..=200_000_000))]
    send: u64,
    /// Seconds the connections are held open (grove's connect_timeout is 5 s).
    #[arg(long, value_name = "S", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    hold: u64,
}

#[derive(Debug, Args)]
struct AuthStormArgs {
    #[command(flatten)]
    gateway: GatewayArgs,
    #[command(flatten)]
    peer: PasswordPeerArgs,
    /// Wrong-password CONNECTs in all.
    #[arg(long, value_name = "N", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    attempts: u64,
    /// Concurrent attacking clients (each makes one attempt after the other).
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=5000))]
    attackers: u32,
    /// Loopback source addresses the attackers spread over (127.0.0.2 and up).
    #[arg(long, value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u8).range(1..=250))]
    sources: u8,
    /// Registered devices (dev-0 reconnects; the others' first logins happen during the storm).
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(2..=10_000))]
    devices: u32,
    /// Milliseconds between the legitimate device's reconnects during the storm.
    #[arg(long, value_name = "MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    login_interval_ms: u64,
    /// max_connections on both brokers (grove: authenticated sessions; mosquitto: the
    /// listener's connections); default: grove 10,000, mosquitto unlimited.
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections: Option<u32>,
}

#[derive(Debug, Args)]
struct ConsoleArgs {
    #[command(flatten)]
    gateway: GatewayArgs,
    /// chromedriver (Debian's chromium-driver).
    #[arg(long, value_name = "PATH", default_value = "/usr/bin/chromedriver")]
    chromedriver: PathBuf,
    /// The Chromium it drives.
    #[arg(long, value_name = "PATH", default_value = "/usr/bin/chromium")]
    chromium: PathBuf,
}

#[derive(Debug, Args)]
struct TopicsArgs {
    #[command(flatten)]
    gateway: GatewayArgs,
    /// The mosquitto binary (a bare name is looked up on PATH).
    #[arg(long, value_name = "PATH", default_value = "mosquitto")]
    mosquitto: PathBuf,
    /// Rounds; memory is read after each.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Messages (distinct topics) per round.
    #[arg(long, value_name = "N", default_value_t = 200_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    per_round: u64,
}

#[derive(Debug, Args)]
struct FunctionsArgs {
    #[command(flatten)]
    gateway: GatewayArgs,
    /// Where `functions/build.sh` wrote echo.wasm, echo.toml, enricher.wasm and enricher.toml
    /// [default: <repo>/target/functions].
    #[arg(long, value_name = "DIR")]
    functions_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct CloudArgs {
    #[command(flatten)]
    gateway: GatewayArgs,
    /// The mosquitto binary that plays the cloud (a bare name is looked up on PATH).
    #[arg(long, value_name = "PATH", default_value = "mosquitto")]
    mosquitto: PathBuf,
    /// Messages published while the cloud is down, then drained.
    #[arg(long, value_name = "N", default_value_t = 50_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    messages: u64,
}

#[derive(Debug, Args)]
struct CloudBatchArgs {
    #[command(flatten)]
    cloud: CloudArgs,
    /// `max_messages` of the batched route.
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    max_messages: u64,
}

#[derive(Debug, Args)]
struct CloudIdleArgs {
    #[command(flatten)]
    gateway: GatewayArgs,
    /// The mosquitto binary that plays the cloud (a bare name is looked up on PATH).
    #[arg(long, value_name = "PATH", default_value = "mosquitto")]
    mosquitto: PathBuf,
    /// Shadows synced (`things = ["*"]`).
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    shadows: u64,
    /// The gateway's `keep_alive_secs` (default: the gateway's own default).
    #[arg(long, value_name = "SECONDS")]
    keep_alive_secs: Option<u64>,
}

#[derive(Debug, Args)]
struct GatewayArgs {
    /// The grove binary to benchmark.
    #[arg(long, value_name = "PATH")]
    grove: PathBuf,
    /// Seconds measured per scenario (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Also write the results as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// TOML merged into grove's generated config, e.g. `broker.queue_max_messages = 100000`
    /// (repeatable).
    #[arg(long = "grove-conf", value_name = "TOML", value_parser = parse_toml_snippet)]
    grove_conf: Vec<String>,
}

#[derive(Debug, Args)]
struct RulesStartupArgs {
    #[command(flatten)]
    gateway: GatewayArgs,
    /// The numbers of rules, comma-separated; the first is the baseline of the memory per rule.
    #[arg(long, value_delimiter = ',', default_values_t = [0, 1, 1_000, 10_000])]
    rules: Vec<usize>,
    /// Starts per number of rules (the table gives the median).
    #[arg(long, default_value_t = 3)]
    runs: u32,
}

#[derive(Debug, Args)]
struct BrokerArgs {
    /// The grove binary to benchmark; without it only mosquitto is measured.
    #[arg(long, value_name = "PATH")]
    grove: Option<PathBuf>,

    /// The mosquitto binary (a bare name is looked up on PATH).
    #[arg(long, value_name = "PATH", default_value = "mosquitto")]
    mosquitto: PathBuf,

    /// A line appended to the generated mosquitto config (repeatable), e.g. "set_tcp_nodelay true".
    #[arg(long, value_name = "LINE")]
    mosquitto_conf: Vec<String>,

    /// A TOML snippet merged into the generated grove config (repeatable), e.g.
    /// "broker.queue_max_messages = 100000".
    #[arg(long, value_name = "TOML", value_parser = parse_toml_snippet)]
    grove_conf: Vec<String>,

    /// Skip mosquitto (only with --grove).
    #[arg(long, requires = "grove")]
    no_mosquitto: bool,

    /// Publishers per phase.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    publishers: u32,

    /// Subscribers per phase; each receives every message.
    #[arg(long, value_name = "M", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    subscribers: u32,

    /// QoS levels to run, comma separated (0 and/or 1).
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "0,1",
          value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: Vec<u8>,

    /// Payload sizes in bytes, comma separated (at least 24, the benchmark header).
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "64,1024",
          value_parser = parse_payload)]
    payload: Vec<usize>,

    /// Phases to run, comma separated: `max` (flat out) and/or `rate` (--rate per publisher).
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "max,rate"
    )]
    mode: Vec<Mode>,

    /// The load clients' MQTT library: `rumqttc` (async tasks in this process), `libmosquitto` (a
    /// C client in a process of its own, built from bench/c/mqtt_load.c) or `both` (each scenario
    /// runs with one, then the other).
    #[arg(long, value_name = "LIB", default_value = "rumqttc")]
    client: ClientChoice,

    /// Messages per publisher in each `max` phase [default: 20000].
    #[arg(long, value_name = "K", conflicts_with = "duration",
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    messages: Option<u64>,

    /// Messages per publisher in each `rate` phase [default: 5000, i.e. 5 s at the default rate].
    #[arg(long, value_name = "K", conflicts_with = "duration",
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    rate_messages: Option<u64>,

    /// Seconds of publishing per phase (both kinds), instead of message counts.
    #[arg(long, value_name = "S", value_parser = parse_duration)]
    duration: Option<Duration>,

    /// Messages per second per publisher in `rate` phases.
    #[arg(long, value_name = "R", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    rate: u32,

    /// Spawns of each broker timed for the start-to-first-CONNACK median.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
    startup_runs: u32,

    /// Idle clients held connected for the second RSS reading (the per-connection cost), then
    /// disconnected before the third (is the memory given back?). More than about 9,900 need
    /// `--grove-conf 'broker.max_connections = N'` and an open-files limit (`ulimit -n`) above N in the
    /// harness, which the brokers inherit.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=20000))]
    idle_clients: u32,

    /// Hard limit on each phase's publishing, in seconds, whatever --messages says.
    #[arg(long, value_name = "S", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=600))]
    phase_timeout: u64,

    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// `--client`: which load client libraries run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ClientChoice {
    /// rumqttc only.
    Rumqttc,
    /// libmosquitto only.
    Libmosquitto,
    /// rumqttc, then libmosquitto, for every scenario.
    Both,
}

impl ClientChoice {
    fn clients(self) -> Vec<Client> {
        match self {
            ClientChoice::Rumqttc => vec![Client::Rumqttc],
            ClientChoice::Libmosquitto => vec![Client::Libmosquitto],
            ClientChoice::Both => vec![Client::Rumqttc, Client::Libmosquitto],
        }
    }
}

fn parse_payload(text: &str) -> Result<usize, String> {
    let size: usize = text
        .parse()
        .map_err(|_| format!("`{text}` is not a size in bytes"))?;
    if !(payload::HEADER_LEN..=MAX_PAYLOAD).contains(&size) {
        return Err(format!(
            "payload must be {}..={MAX_PAYLOAD} bytes (the benchmark header takes {})",
            payload::HEADER_LEN,
            payload::HEADER_LEN
        ));
    }
    Ok(size)
}

fn parse_toml_snippet(text: &str) -> Result<String, String> {
    // Validate here, so a typo fails before any broker starts; the peer merges the text later.
    peer::grove_config(std::path::Path::new("/"), 1, &[text.to_owned()])
        .map(|_| text.to_owned())
        .map_err(|e| format!("not a TOML snippet: {e}"))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 600.0) {
        return Err("duration must be more than 0 and at most 600 seconds".to_owned());
    }
    Ok(Duration::from_secs_f64(secs))
}

impl BrokerArgs {
    /// Resolves the arguments into a plan; lists keep their order, repeats are dropped.
    fn plan(&self, command: String) -> Plan {
        let mut peers = Vec::new();
        if !self.no_mosquitto {
            peers.push(PeerSpec {
                kind: PeerKind::Mosquitto,
                binary: resolve(&self.mosquitto),
                extra_config: self.mosquitto_conf.clone(),
            });
        }
        if let Some(grove) = &self.grove {
            peers.push(PeerSpec {
                kind: PeerKind::Grove,
                binary: resolve(grove),
                extra_config: self.grove_conf.clone(),
            });
        }
        let clients = self.client.clients();
        let mut scenarios = Vec::new();
        for &mode in &self.mode {
            for &qos in &self.qos {
                for &payload in &self.payload {
                    // The libraries back to back, so a slow spell of the machine hits both alike.
                    for &client in &clients {
                        let scenario = Scenario {
                            client,
                            mode,
                            qos,
                            payload,
                        };
                        if !scenarios.contains(&scenario) {
                            scenarios.push(scenario);
                        }
                    }
                }
            }
        }
        let stop = |messages: Option<u64>, default| match self.duration {
            Some(duration) => Stop::Duration(duration),
            None => Stop::Messages(messages.unwrap_or(default)),
        };
        Plan {
            peers,
            scenarios,
            settings: Settings {
                publishers: self.publishers,
                subscribers: self.subscribers,
                max_stop: stop(self.messages, DEFAULT_MAX_MESSAGES),
                rate_stop: stop(self.rate_messages, DEFAULT_RATE_MESSAGES),
                rate_per_publisher: self.rate,
                clients,
                startup_runs: self.startup_runs,
                idle_clients: self.idle_clients,
                publish_limit_s: self.phase_timeout,
            },
            command,
        }
    }
}

/// A broker binary given as a relative path, made absolute: the broker is spawned in its temp dir,
/// where a relative path would not be found. A bare name stays as it is (looked up on PATH).
fn resolve(binary: &std::path::Path) -> PathBuf {
    if binary.components().count() > 1 {
        std::path::absolute(binary).unwrap_or_else(|_| binary.to_owned())
    } else {
        binary.to_owned()
    }
}

/// The command line as typed, shell-quoted so it can be pasted back.
fn command_line() -> String {
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    shlex::try_join(args.iter().map(String::as_str)).unwrap_or_else(|_| args.join(" "))
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

async fn broker(args: BrokerArgs) -> anyhow::Result<ExitCode> {
    let plan = args.plan(command_line());
    // Dropping the run future on a signal drops the running brokers, which kills them.
    let report = tokio::select! {
        report = runner::run(&plan) => report?,
        signal = shutdown_signal() => {
            signal?;
            anyhow::bail!("interrupted; the brokers under test were stopped");
        }
    };
    println!("{}", report.to_markdown());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).context("serialising the report")?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    if report.qos1_losses.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        for line in &report.qos1_losses {
            eprintln!("!!! {line}");
        }
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        Ok(ExitCode::from(3))
    }
}

/// Which gateway benchmark to run, with its own arguments.
enum GatewayBench {
    Shadow,
    Rules,
    RulesStartup {
        counts: Vec<usize>,
        runs: u32,
    },
    Functions(Option<PathBuf>),
    Hostile,
    Cloud {
        mosquitto: PathBuf,
        messages: u64,
    },
    CloudBatch {
        mosquitto: PathBuf,
        messages: u64,
        max_messages: usize,
    },
    CloudIdle {
        mosquitto: PathBuf,
        shadows: usize,
        keep_alive_secs: Option<u64>,
    },
    Topics {
        mosquitto: PathBuf,
        rounds: u32,
        per_round: u64,
    },
    Console {
        chromedriver: PathBuf,
        chromium: PathBuf,
    },
    AuthStorm {
        /// mosquitto and mosquitto_passwd, unless --no-mosquitto.
        mosquitto: Option<(PathBuf, PathBuf)>,
        settings: auth::Settings,
    },
    HalfConnect {
        /// mosquitto and mosquitto_passwd, unless --no-mosquitto.
        mosquitto: Option<(PathBuf, PathBuf)>,
        settings: half_connect::HalfSettings,
    },
}

async fn gateway_bench(mut args: GatewayArgs, which: GatewayBench) -> anyhow::Result<ExitCode> {
    use procfs::Current as _;
    // The gateway runs in its temp dir, so a relative path would be looked up from there.
    if args.grove.components().count() > 1 {
        args.grove = std::path::absolute(&args.grove)
            .with_context(|| format!("resolving {}", args.grove.display()))?;
    }
    let extra: Vec<&str> = args.grove_conf.iter().map(String::as_str).collect();
    let (name, markdown, json) = match which {
        GatewayBench::Shadow => {
            let r = gateway::shadow(&args.grove, args.seconds, &extra).await?;
            ("shadow", gateway::markdown(&r), serde_json::to_value(&r)?)
        }
        GatewayBench::Rules => {
            let r = gateway::rules(&args.grove, args.seconds, &extra).await?;
            (
                "rules",
                gateway::rules_markdown(&r),
                serde_json::to_value(&r)?,
            )
        }
        GatewayBench::RulesStartup { counts, runs } => {
            let r = gateway::rules_startup(&args.grove, &counts, runs, &extra)?;
            (
                "rules-startup",
                gateway::startup_markdown(&r),
                serde_json::to_value(&r)?,
            )
        }
        GatewayBench::Functions(dir) => {
            let dir = dir.unwrap_or_else(functions::default_dir);
            let r = functions::run(&args.grove, &dir, args.seconds, &extra).await?;
            (
                "functions",
                functions::markdown(&r),
                serde_json::to_value(&r)?,
            )
        }
        GatewayBench::Hostile => {
            let settle = std::time::Duration::from_secs(args.seconds);
            let r = hostile::run(&args.grove, settle, &extra).await?;
            (
                "hostile",
                hostile::markdown(&r, settle),
                serde_json::to_value(&r)?,
            )
        }
        GatewayBench::Cloud {
            mosquitto,
            messages,
        } => {
            let r = cloud::run(&args.grove, &mosquitto, args.seconds, messages, &extra).await?;
            ("cloud", cloud::markdown(&r), serde_json::to_value(&r)?)
        }
        GatewayBench::CloudBatch {
            mosquitto,
            messages,
            max_messages,
        } => {
            let r = cloud_batch::run(
                &args.grove,
                &mosquitto,
                args.seconds,
                messages,
                max_messages,
                &extra,
            )
            .await?;
            (
                "cloud-batch",
                cloud_batch::markdown(&r),
                serde_json::to_value(&r)?,
            )
        }
        GatewayBench::CloudIdle {
            mosquitto,
            shadows,
            keep_alive_secs,
        } => {
            let window = std::time::Duration::from_secs(args.seconds);
            let r = cloud_idle::run(
                &args.grove,
                &mosquitto,
                shadows,
                window,
                keep_alive_secs,
                &extra,
            )
            .await?;
            (
                "cloud-idle",
                cloud_idle::markdown(&r),
                serde_json::to_value(&r)?,
            )
        }
        GatewayBench::Topics {
            mosquitto,
            rounds,
            per_round,
        } => {
            let pause = std::time::Duration::from_secs(args.seconds);
            let r = topics::run(&args.grove, &mosquitto, rounds, per_round, pause, &extra).await?;
            (
                "topics",
                topics::markdown(&r, per_round),
                serde_json::to_value(&r)?,
            )
        }
        GatewayBench::Console {
            chromedriver,
            chromium,
        } => {
            let r =
                console::run(&args.grove, &chromedriver, &chromium, args.seconds, &extra).await?;
            ("console", console::markdown(&r), serde_json::to_value(&r)?)
        }
        GatewayBench::AuthStorm {
            mosquitto,
            mut settings,
        } => {
            settings.settle = std::time::Duration::from_secs(args.seconds);
            let mosquitto = mosquitto.as_ref().map(|(m, p)| (m.as_path(), p.as_path()));
            let r = auth::run(&args.grove, mosquitto, &settings, &extra).await?;
            (
                "auth-storm",
                auth::markdown(&r, &settings),
                serde_json::json!({ "settings": settings, "results": r }),
            )
        }
        GatewayBench::HalfConnect {
            mosquitto,
            mut settings,
        } => {
            settings.settle = std::time::Duration::from_secs(args.seconds);
            let mosquitto = mosquitto.as_ref().map(|(m, p)| (m.as_path(), p.as_path()));
            let r = half_connect::run_half(&args.grove, mosquitto, &settings, &extra).await?;
            (
                "half-connect",
                half_connect::half_markdown(&r, &settings),
                serde_json::json!({ "settings": settings, "results": r }),
            )
        }
    };
    let cpu = procfs::CpuInfo::current()
        .ok()
        .and_then(|c| c.model_name(0).map(str::to_owned))
        .unwrap_or_default();
    let load = procfs::LoadAverage::current().map(|l| l.one).unwrap_or(0.0);
    println!(
        "grove-bench {name}: {cpu}, {} CPUs, load {load:.1} at the end, {}\ncommand: {}\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        command_line()
    );
    println!("{markdown}");
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Broker(args) => broker(*args).await,
        Command::Shadow(args) => gateway_bench(args, GatewayBench::Shadow).await,
        Command::Rules(args) => gateway_bench(args, GatewayBench::Rules).await,
        Command::RulesStartup(args) => {
            let which = GatewayBench::RulesStartup {
                counts: args.rules,
                runs: args.runs,
            };
            gateway_bench(args.gateway, which).await
        }
        Command::Functions(args) => {
            gateway_bench(args.gateway, GatewayBench::Functions(args.functions_dir)).await
        }
        Command::Hostile(args) => gateway_bench(args, GatewayBench::Hostile).await,
        Command::Cloud(args) => {
            let which = GatewayBench::Cloud {
                mosquitto: args.mosquitto,
                messages: args.messages,
            };
            gateway_bench(args.gateway, which).await
        }
        Command::CloudBatch(args) => {
            let which = GatewayBench::CloudBatch {
                mosquitto: args.cloud.mosquitto,
                messages: args.cloud.messages,
                max_messages: usize::try_from(args.max_messages).unwrap_or(usize::MAX),
            };
            gateway_bench(args.cloud.gateway, which).await
        }
        Command::CloudIdle(args) => {
            let which = GatewayBench::CloudIdle {
                mosquitto: args.mosquitto,
                shadows: usize::try_from(args.shadows).unwrap_or(usize::MAX),
                keep_alive_secs: args.keep_alive_secs,
            };
            gateway_bench(args.gateway, which).await
        }
        Command::Topics(args) => {
            let which = GatewayBench::Topics {
                mosquitto: args.mosquitto,
                rounds: args.rounds,
                per_round: args.per_round,
            };
            gateway_bench(args.gateway, which).await
        }
        Command::Console(args) => {
            let which = GatewayBench::Console {
                chromedriver: args.chromedriver,
                chromium: args.chromium,
            };
            gateway_bench(args.gateway, which).await
        }
        Command::AuthStorm(args) => {
            let which = GatewayBench::AuthStorm {
                mosquitto: args.peer.peer(),
                settings: auth::Settings {
                    attempts: args.attempts,
                    attackers: args.attackers,
                    sources: args.sources,
                    devices: args.devices,
                    login_interval: Duration::from_millis(args.login_interval_ms),
                    settle: Duration::ZERO,
                    max_connections: args.max_connections,
                },
            };
            gateway_bench(args.gateway, which).await
        }
        Command::HalfConnect(args) => {
            let which = GatewayBench::HalfConnect {
                mosquitto: args.peer.peer(),
                settings: half_connect::HalfSettings {
                    connections: args.connections,
                    sources: args.sources,
                    announced: usize::try_from(args.announced).unwrap_or(usize::MAX),
                    send: usize::try_from(args.send).unwrap_or(usize::MAX),
                    hold: Duration::from_secs(args.hold),
                    settle: Duration::ZERO,
                },
            };
            gateway_bench(args.gateway, which).await
        }
    };
    result.unwrap_or_else(|error| {
        // `{:#}` prints the whole context chain on one line, without a backtrace.
        eprintln!("grove-bench: error: {error:#}");
        ExitCode::FAILURE
    })
}
