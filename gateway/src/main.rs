//! The `grove` command: run the gateway, or write its default configuration.
//!
//! This file only parses arguments and maps errors to exit codes (2 for configuration errors, 1
//! for the rest); the work is in the `grove_gateway` library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use grove_gateway::config::{Config, DEFAULT_TEMPLATE};

/// Grove: an edge IoT gateway runtime. An MQTT broker for your devices, AWS IoT-compatible
/// device shadows, rules, WebAssembly functions and cloud sync, in one small binary.
#[derive(Parser)]
#[command(name = "grove", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway until SIGINT or SIGTERM.
    ///
    /// Without --config it runs on the built-in defaults: MQTT on 127.0.0.1:1883, the ops endpoint
    /// on 127.0.0.1:9464, data in ./grove-data. Logs go to stderr; GROVE_LOG or RUST_LOG set the
    /// filter (e.g. GROVE_LOG=debug). Exit code 2 means the configuration is wrong.
    Run {
        /// The configuration file (TOML); see `grove init`.
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Write a fully commented default configuration file.
    Init {
        /// Where to write it.
        #[arg(default_value = "grove.toml", value_name = "FILE")]
        file: PathBuf,
        /// Overwrite the file if it exists.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(config),
        Command::Init { file, force } => match init(&file, force) {
            Ok(()) => {
                eprintln!("wrote {}", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("grove init: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}

fn run(config_path: Option<PathBuf>) -> ExitCode {
    let config = match config_path {
        Some(path) => Config::load(&path),
        None => Ok(Config::defaults()),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("grove: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    grove_gateway::logging::init(&config.log_filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("grove: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(grove_gateway::run::run(config));
    // Connection tasks that are still winding down must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e.exit_code();
            if code == 2 {
                eprintln!("grove: configuration error: {e}");
            } else {
                eprintln!("grove: {e}");
            }
            tracing::error!("{e}");
            ExitCode::from(code as u8)
        }
    }
}

fn init(file: &PathBuf, force: bool) -> anyhow::Result<()> {
    if file.exists() && !force {
        anyhow::bail!("{} exists; use --force to overwrite it", file.display());
    }
    std::fs::write(file, DEFAULT_TEMPLATE)
        .with_context(|| format!("cannot write {}", file.display()))
}
