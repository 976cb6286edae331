//! `grove-sim`: runs a scenario's fleet of simulated devices against a Grove gateway.
//!
//! ```sh
//! grove-sim run device-sim/scenarios/smoke.toml --target 127.0.0.1:1883 --json smoke.json
//! grove-sim check device-sim/scenarios/fleet.toml      # validate only
//! ```
//!
//! Exit codes: 0 every expectation held; 1 an expectation failed; 2 bad command line or scenario;
//! 3 the run could not be carried out (gateway unreachable, `/proc` unreadable).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use grove_device_sim::{Overrides, Progress, RunOptions, Scenario};

#[derive(Parser)]
#[command(
    name = "grove-sim",
    version,
    about = "Simulated device fleet for a Grove gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario and check its expectations.
    Run {
        /// The scenario file (TOML).
        scenario: PathBuf,
        /// The gateway's MQTT address, replacing the scenario's `target`.
        #[arg(long)]
        target: Option<SocketAddr>,
        /// Number of devices, replacing `fleet.devices`.
        #[arg(long)]
        devices: Option<usize>,
        /// Seconds of measured traffic, replacing `duration_s`.
        #[arg(long)]
        duration: Option<f64>,
        /// Random seed, replacing `seed`.
        #[arg(long)]
        seed: Option<u64>,
        /// Seconds over which devices start, replacing `fleet.ramp_s`.
        #[arg(long)]
        ramp: Option<f64>,
        /// Also write the summary as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// The gateway's process id, to report its RSS and CPU (it must run on this machine).
        #[arg(long)]
        gateway_pid: Option<i32>,
        /// No progress line.
        #[arg(long)]
        quiet: bool,
    },
    /// Validate a scenario and print it resolved.
    Check {
        /// The scenario file (TOML).
        scenario: PathBuf,
    },
}

const EXIT_FAILED_EXPECTATION: u8 = 1;
const EXIT_BAD_INPUT: u8 = 2;
const EXIT_RUN_ERROR: u8 = 3;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_BAD_INPUT)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Check { scenario } => match Scenario::load(&scenario, &Overrides::default()) {
            Ok(scenario) => {
                let text = toml::to_string_pretty(&scenario.file).unwrap_or_default();
                // A closed pipe (`| head`) is not an error worth a panic.
                let _ = write!(
                    std::io::stdout().lock(),
                    "{}: {} devices ({} .. {}), {} s measured\n{text}",
                    scenario.file.name,
                    scenario.things.len(),
                    scenario.things.first().map_or("", String::as_str),
                    scenario.things.last().map_or("", String::as_str),
                    scenario.file.duration_s
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("grove-sim: {e}");
                ExitCode::from(EXIT_BAD_INPUT)
            }
        },
        Command::Run {
            scenario,
            target,
            devices,
            duration,
            seed,
            ramp,
            json,
            gateway_pid,
            quiet,
        } => {
            let overrides = Overrides {
                target,
                devices,
                duration_s: duration,
                seed,
                ramp_s: ramp,
            };
            let scenario = match Scenario::load(&scenario, &overrides) {
                Ok(scenario) => scenario,
                Err(e) => {
                    eprintln!("grove-sim: {e}");
                    return ExitCode::from(EXIT_BAD_INPUT);
                }
            };
            let options = RunOptions {
                gateway_pid,
                progress: if quiet {
                    Progress::Quiet
                } else {
                    Progress::Line
                },
            };
            match run(&scenario, &options, json) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(EXIT_FAILED_EXPECTATION),
                Err(e) => {
                    eprintln!("grove-sim: {e:#}");
                    ExitCode::from(EXIT_RUN_ERROR)
                }
            }
        }
    }
}

/// Runs the scenario, prints the summary and writes the JSON; returns whether it passed.
fn run(scenario: &Scenario, options: &RunOptions, json: Option<PathBuf>) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let summary = runtime.block_on(grove_device_sim::run(scenario, options))?;
    println!("{summary}");
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&summary).context("cannot encode the summary")?;
        std::fs::write(&path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(summary.passed)
}
