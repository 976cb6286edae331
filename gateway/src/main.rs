//! The `grove` command: run the gateway, or write its default configuration.
//!
//! This file only parses arguments and maps errors to exit codes (2 for configuration errors, 1
//! for the rest); the work is in the `grove_gateway` library and in the component crates (each
//! command's `cli.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use grove_auth::cli::DeviceAction;
use grove_deploy::cli::DeployAction;
use grove_functions_host::cli::FnAction;
use grove_gateway::config::{Config, DEFAULT_TEMPLATE};
use grove_gateway::mqtt_request::{self, ClientError};
use grove_jobs::cli::JobsAction;
use grove_rules_engine::engine::RELOAD_TOPIC;
use grove_shadow::cli::{self, Request};

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
    /// Read or change device shadows on a running gateway, over its MQTT API.
    ///
    /// The gateway is found through --config (its first MQTT listener) or --mqtt.
    Shadow {
        #[command(subcommand)]
        action: ShadowAction,
        /// The gateway's configuration file, to find its MQTT listener.
        #[arg(short, long, value_name = "FILE", global = true)]
        config: Option<PathBuf>,
        /// The gateway's MQTT address (overrides --config).
        #[arg(long, value_name = "HOST:PORT", global = true)]
        mqtt: Option<SocketAddr>,
    },
    /// Rules: try a rule offline, or reload a running gateway's rules from its configuration.
    Rules {
        #[command(subcommand)]
        action: RulesAction,
    },
    /// The cloud link of a running gateway.
    Cloud {
        #[command(subcommand)]
        action: CloudAction,
    },
    /// Manage device identities: a local CA, device certificates, passwords.
    ///
    /// Identities live in {data_dir}/devices.toml, certificates in {data_dir}/pki/. A running
    /// gateway is asked to apply a change at once through its loopback ops endpoint: `remove`
    /// returns only when the device's connections are closed (without their wills).
    Device {
        #[command(subcommand)]
        action: DeviceAction,
        /// The gateway's configuration file, to find its data directory.
        #[arg(short, long, value_name = "FILE", global = true)]
        config: Option<PathBuf>,
    },
    /// Local functions (WebAssembly) on a running gateway: deploy, list, invoke, alias, remove,
    /// logs.
    ///
    /// The gateway is reached through its ops endpoint (--config's `[ops] bind`, or --ops), which
    /// serves these admin routes on loopback addresses only.
    Fn {
        #[command(subcommand)]
        action: FnAction,
        /// The gateway's configuration file, to find its ops endpoint.
        #[arg(short, long, value_name = "FILE", global = true)]
        config: Option<PathBuf>,
        /// The gateway's ops endpoint (overrides --config).
        #[arg(long, value_name = "HOST:PORT", global = true)]
        ops: Option<SocketAddr>,
    },
    /// Deployments: apply a document of functions and rules to a running gateway (it commits
    /// after a healthy soak, or rolls back), see the status and history, roll back.
    ///
    /// The gateway is reached through its ops endpoint on loopback, as `grove fn` does; nothing
    /// needs the cloud.
    Deploy {
        #[command(subcommand)]
        action: DeployAction,
        /// The gateway's configuration file, to find its ops endpoint.
        #[arg(short, long, value_name = "FILE", global = true)]
        config: Option<PathBuf>,
        /// The gateway's ops endpoint (overrides --config).
        #[arg(long, value_name = "HOST:PORT", global = true)]
        ops: Option<SocketAddr>,
    },
    /// Local jobs for devices (the AWS IoT Jobs device API, served by the gateway): create, list,
    /// describe, cancel.
    ///
    /// The gateway is reached through its ops endpoint on loopback, as `grove deploy` does; jobs
    /// run while the site is offline.
    Jobs {
        #[command(subcommand)]
        action: JobsAction,
        /// The gateway's configuration file, to find its ops endpoint.
        #[arg(short, long, value_name = "FILE", global = true)]
        config: Option<PathBuf>,
        /// The gateway's ops endpoint (overrides --config).
        #[arg(long, value_name = "HOST:PORT", global = true)]
        ops: Option<SocketAddr>,
    },
    /// The clients connected to a running gateway: disconnect one (as the web console's devices
    /// page does).
    ///
    /// The gateway is reached through its ops endpoint on loopback, as `grove fn` does.
    Clients {
        #[command(subcommand)]
        action: ClientsAction,
        /// The gateway's configuration file, to find its ops endpoint.
        #[arg(short, long, value_name = "FILE", global = true)]
        config: Option<PathBuf>,
        /// The gateway's ops endpoint (overrides --config).
        #[arg(long, value_name = "HOST:PORT", global = true)]
        ops: Option<SocketAddr>,
    },
    /// The web console (http://127.0.0.1:9464/console by default): its operator password.
    Console {
        #[command(subcommand)]
        action: ConsoleAction,
        /// The gateway's configuration file, to find its data directory.
        #[arg(short, long, value_name = "FILE", global = true)]
        config: Option<PathBuf>,
    },
    /// Write a fully commented default configuration file, and set a random operator password
    /// for the web console (printed once) unless its data directory has one already.
    Init {
        /// Where to write it.
        #[arg(default_value = "grove.toml", value_name = "FILE")]
        file: PathBuf,
        /// Overwrite the file if it exists.
        #[arg(long)]
        force: bool,
        /// Set no console password (set one later with `grove console passwd`).
        #[arg(long)]
        no_console_password: bool,
    },
}

#[derive(Subcommand)]
enum ClientsAction {
    /// End the connections of a client id now (MQTT 5 clients are told "administrative action";
    /// wills are published) and wait until they have ended.
    Disconnect {
        /// The client id.
        client_id: String,
    },
}

#[derive(Subcommand)]
enum ConsoleAction {
    /// Set the operator password, read from standard input (one line; at least 8 characters).
    ///
    /// Stored as an argon2id hash in {data_dir}/console.passwd (mode 0600); a running gateway
    /// uses it from the next sign-in. Sessions already open stay open until they expire or sign
    /// out.
    Passwd,
}

#[derive(Subcommand)]
enum ShadowAction {
    /// List every shadow with its version.
    List {
        /// Print the raw JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Show a shadow's desired, reported and delta state.
    Get {
        /// The thing name.
        thing: String,
        /// A named shadow (default: the classic shadow).
        #[arg(long)]
        name: Option<String>,
        /// Print the raw `get/accepted` document.
        #[arg(long)]
        json: bool,
    },
    /// Update a shadow with an AWS update document, e.g. '{"state":{"desired":{"on":true}}}'.
    Update {
        /// The thing name.
        thing: String,
        /// A named shadow (default: the classic shadow).
        #[arg(long)]
        name: Option<String>,
        /// The update document.
        #[arg(long, value_name = "DOC")]
        json: String,
    },
    /// Delete a shadow.
    Delete {
        /// The thing name.
        thing: String,
        /// A named shadow (default: the classic shadow).
        #[arg(long)]
        name: Option<String>,
        /// Print the raw `delete/accepted` document.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RulesAction {
    /// Evaluate a rule on one message, without a gateway, and print the output (or the error).
    Test {
        /// The AWS IoT SQL statement.
        #[arg(long)]
        sql: String,
        /// The message's topic.
        #[arg(long)]
        topic: String,
        /// The message's payload.
        #[arg(long, default_value = "{}")]
        payload: String,
        /// The publishing client's id, for clientid().
        #[arg(long, default_value = "")]
        client_id: String,
    },
    /// Make a running gateway re-read the [[rules]] of its configuration file (as SIGHUP does);
    /// if any rule is wrong, nothing changes and the error is printed.
    Reload {
        /// The gateway's configuration file, to find its MQTT listener.
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The gateway's MQTT address (overrides --config).
        #[arg(long, value_name = "HOST:PORT")]
        mqtt: Option<SocketAddr>,
    },
}

#[derive(Subcommand)]
enum CloudAction {
    /// Show the link state, the outbox's depth and oldest message, and the last error.
    Status {
        /// The gateway's configuration file, to find its MQTT listener.
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The gateway's MQTT address (overrides --config).
        #[arg(long, value_name = "HOST:PORT")]
        mqtt: Option<SocketAddr>,
        /// Print the raw JSON answer.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(config),
        Command::Shadow {
            action,
            config,
            mqtt,
        } => shadow(action, config, mqtt),
        Command::Rules { action } => rules(action),
        Command::Cloud {
            action: CloudAction::Status { config, mqtt, json },
        } => cloud_status(config, mqtt, json),
        Command::Fn {
            action,
            config,
            ops,
        } => admin("grove fn", config, ops, |addr| {
            grove_functions_host::cli::run(action, addr)
        }),
        Command::Deploy {
            action,
            config,
            ops,
        } => admin("grove deploy", config, ops, |addr| {
            grove_deploy::cli::run(action, addr)
        }),
        Command::Jobs {
            action,
            config,
            ops,
        } => admin("grove jobs", config, ops, |addr| {
            grove_jobs::cli::run(action, addr)
        }),
        Command::Device { action, config } => match device(action, config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("grove device: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Clients {
            action: ClientsAction::Disconnect { client_id },
            config,
            ops,
        } => admin("grove clients", config, ops, |addr| {
            grove_gateway::ops::request_disconnect(addr, &client_id).map_err(|e| (1, e))
        }),
        Command::Console { action, config } => match console(action, config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("grove console: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Init {
            file,
            force,
            no_console_password,
        } => match init(&file, force, !no_console_password) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("grove init: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}

fn run(config_path: Option<PathBuf>) -> ExitCode {
    let config = match &config_path {
        Some(path) => Config::load(path),
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
    let result = runtime.block_on(grove_gateway::run::run(config, config_path));
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

fn shadow(action: ShadowAction, config: Option<PathBuf>, mqtt: Option<SocketAddr>) -> ExitCode {
    let addr = match gateway_for(mqtt, config) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let (thing, name, request, raw) = match action {
        ShadowAction::List { json } => (String::new(), None, Request::List, json),
        ShadowAction::Get { thing, name, json } => (thing, name, Request::Get, json),
        ShadowAction::Update { thing, name, json } => (thing, name, Request::Update(json), true),
        ShadowAction::Delete { thing, name, json } => (thing, name, Request::Delete, json),
    };
    let Some(runtime) = client_runtime() else {
        return ExitCode::FAILURE;
    };
    let exchange = async {
        let (topic, body) = cli::call(&thing, name.as_deref(), request.clone())
            .map_err(ClientError::BadDocument)?;
        mqtt_request::request(addr, &topic, body).await
    };
    match runtime.block_on(exchange) {
        Ok(doc) if raw && !matches!(request, Request::Update(_)) => {
            println!("{doc}");
            ExitCode::SUCCESS
        }
        Ok(doc) => {
            print!("{}", cli::render(&request, &thing, &doc));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("grove shadow: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where a client on this machine reaches the gateway: its first listener, with an unspecified
/// address (0.0.0.0, ::) replaced by loopback.
fn gateway_address(config: &Config) -> SocketAddr {
    loopback(config.broker.listeners[0].bind.value)
}

fn rules(action: RulesAction) -> ExitCode {
    match action {
        RulesAction::Test {
            sql,
            topic,
            payload,
            client_id,
        } => match grove_rules_engine::cli::test(&sql, &topic, payload, &client_id) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("grove rules test: {e}");
                ExitCode::FAILURE
            }
        },
        RulesAction::Reload { config, mqtt } => {
            let addr = match gateway_for(mqtt, config) {
                Ok(a) => a,
                Err(code) => return code,
            };
            let Some(runtime) = client_runtime() else {
                return ExitCode::FAILURE;
            };
            let request =
                grove_gateway::mqtt_request::request(addr, RELOAD_TOPIC, serde_json::json!({}));
            match runtime.block_on(request) {
                Ok(doc) => {
                    println!("rules reloaded: {}", doc["rules"]);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("grove rules reload: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn cloud_status(config: Option<PathBuf>, mqtt: Option<SocketAddr>, json: bool) -> ExitCode {
    let addr = match gateway_for(mqtt, config) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let Some(runtime) = client_runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(mqtt_request::request(
        addr,
        grove_cloud::STATUS_TOPIC,
        serde_json::json!({}),
    )) {
        Ok(doc) if json => {
            println!("{doc}");
            ExitCode::SUCCESS
        }
        Ok(doc) => {
            print!("{}", grove_cloud::cli::render(&doc));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("grove cloud status: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The single-threaded runtime of an operator command (one MQTT request); `None` after saying why
/// it could not be built.
fn client_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("grove: cannot start the runtime: {e}");
            None
        }
    }
}

/// The gateway's MQTT address from --mqtt, or from the configuration's first listener.
fn gateway_for(mqtt: Option<SocketAddr>, config: Option<PathBuf>) -> Result<SocketAddr, ExitCode> {
    if let Some(addr) = mqtt {
        return Ok(addr);
    }
    let config = match config {
        Some(path) => Config::load(&path),
        None => Ok(Config::defaults()),
    };
    match config {
        Ok(c) => Ok(gateway_address(&c)),
        Err(e) => {
            eprintln!("grove: configuration error: {e}");
            Err(ExitCode::from(2))
        }
    }
}

/// Runs an admin command (`grove fn`, `grove deploy`, `grove jobs`) against the ops endpoint of `--ops`, or of
/// the configuration file.
fn admin(
    command: &str,
    config: Option<PathBuf>,
    ops: Option<SocketAddr>,
    run: impl FnOnce(SocketAddr) -> Result<String, (u8, String)>,
) -> ExitCode {
    let addr = match ops {
        Some(a) => a,
        None => {
            let config = match config {
                Some(path) => Config::load(&path),
                None => Ok(Config::defaults()),
            };
            match config {
                Ok(Config {
                    ops: Some(bind), ..
                }) => loopback(bind.value),
                Ok(_) => {
                    eprintln!(
                        "{command}: the gateway's ops endpoint is disabled ([ops] enabled = false)"
                    );
                    return ExitCode::from(2);
                }
                Err(e) => {
                    eprintln!("grove: configuration error: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    match run(addr) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err((code, message)) => {
            eprintln!("{message}");
            ExitCode::from(code)
        }
    }
}

/// An address to reach a listener at from this machine: unspecified (0.0.0.0, ::) becomes
/// loopback.
fn loopback(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    addr
}

fn device(action: DeviceAction, config: Option<PathBuf>) -> anyhow::Result<()> {
    let config = match config {
        Some(path) => Config::load(&path)?,
        None => Config::defaults(),
    };
    let policies = &config.broker.policies;
    if grove_auth::cli::device(action, &config.data_dir.value, |p| policies.contains_key(p))? {
        apply_now(config.ops.map(|o| o.value))?;
    }
    Ok(())
}

fn console(action: ConsoleAction, config: Option<PathBuf>) -> anyhow::Result<()> {
    let config = match config {
        Some(path) => Config::load(&path)?,
        None => Config::defaults(),
    };
    match action {
        ConsoleAction::Passwd => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("cannot read the password from standard input")?;
            let password = line.trim_end_matches(['\r', '\n']);
            let data_dir = &config.data_dir.value;
            grove_console::password::set(data_dir, password)?;
            println!(
                "the console password is set ({})",
                grove_console::password::path(data_dir).display()
            );
        }
    }
    Ok(())
}

/// Has a running gateway apply a change of the devices file before the command returns (so that
/// nothing more of a removed device is accepted once it has), through its loopback ops endpoint.
fn apply_now(ops: Option<SocketAddr>) -> anyhow::Result<()> {
    use grove_gateway::ops::{confirm_revocation, Confirmation};
    match ops.map(loopback) {
        Some(addr) if addr.ip().is_loopback() => match confirm_revocation(addr) {
            Ok(Confirmation::Applied(n)) => {
                println!("the gateway applied it ({n} connection(s) of revoked devices closed)")
            }
            Ok(Confirmation::NotRunning) => {
                println!("no gateway is running at {addr}: it applies the change when it starts")
            }
            Err(e) => anyhow::bail!("{e}"),
        },
        _ => println!(
            "the gateway's ops endpoint is not on this machine: a running gateway applies the \
             change within a second"
        ),
    }
    Ok(())
}

/// Writes the default configuration to `file`; with `console_password`, also sets a random
/// console password in its data directory (the template's, as `grove run --config FILE` will use)
/// unless one is set there, and prints it: the one time it is shown.
fn init(file: &PathBuf, force: bool, console_password: bool) -> anyhow::Result<()> {
    if file.exists() && !force {
        anyhow::bail!("{} exists; use --force to overwrite it", file.display());
    }
    std::fs::write(file, DEFAULT_TEMPLATE)
        .with_context(|| format!("cannot write {}", file.display()))?;
    eprintln!("wrote {}", file.display());
    if !console_password {
        return Ok(());
    }
    let data_dir = Config::load(file)?.data_dir.value;
    let stored = grove_console::password::path(&data_dir);
    if stored.exists() {
        eprintln!(
            "the console password already set is kept ({}; change it with `grove console passwd`)",
            stored.display()
        );
        return Ok(());
    }
    let password = grove_console::password::generate()?;
    grove_console::password::set(&data_dir, &password)?;
    eprintln!(
        "the web console's operator password (shown this once; stored hashed in {}; change it \
         with `grove console passwd`):",
        stored.display()
    );
    // On stdout alone, so that a script can capture it.
    println!("{password}");
    Ok(())
}
