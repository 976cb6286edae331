//! `grove device ...`: device identities on the data directory (the local CA, device
//! certificates, passwords), as the operator's command runs them. The binary parses the arguments
//! and, when this says so, has a running gateway apply the change through its ops endpoint.

use std::path::Path;

use anyhow::Context;
use clap::Subcommand;

use crate::{ca, identity, policy};

/// `grove device ...`: the subcommands.
#[derive(Debug, Subcommand)]
pub enum DeviceAction {
    /// Create the local CA and a server certificate for TLS listeners.
    InitCa {
        /// DNS names or IP addresses the gateway is reached at (repeatable).
        #[arg(long = "server-name", value_name = "NAME", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        server_names: Vec<String>,
    },
    /// Register a device (or update one): a password read from stdin, and/or a client
    /// certificate issued by the local CA.
    Add {
        /// The device id, which is its MQTT client id.
        id: String,
        /// The thing name its policy sees as ${thing} (default: the id).
        #[arg(long)]
        thing: Option<String>,
        /// A policy overriding the listener's.
        #[arg(long)]
        policy: Option<String>,
        /// Read the device's password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
        /// Issue a client certificate (written to {data_dir}/pki/devices/ID.pem and .key).
        #[arg(long)]
        cert: bool,
    },
    /// Remove a device: its password and certificate stop working.
    Remove {
        /// The device id.
        id: String,
    },
    /// List registered devices.
    List,
}

/// Runs `grove device ...` on the data directory `data_dir`; `has_policy` says whether the
/// configuration defines a policy. Returns whether a running gateway has to apply the change now
/// (new credentials revoke the old ones; a removed device's connections are closed).
pub fn device(
    action: DeviceAction,
    data_dir: &Path,
    has_policy: impl Fn(&str) -> bool,
) -> anyhow::Result<bool> {
    let pki = ca::pki_dir(data_dir);
    let file = data_dir.join(identity::DEVICES_FILE);
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let apply = match action {
        DeviceAction::InitCa { server_names } => {
            ca::init(&pki, &server_names)?;
            println!(
                "created the local CA in {dir}\n  ca.pem      the CA: set `client_ca` of a TLS listener to it, give it to devices\n  server.pem  server.key: the gateway's certificate for {names}",
                dir = pki.display(),
                names = server_names.join(", ")
            );
            false
        }
        DeviceAction::Add {
            id,
            thing,
            policy,
            password_stdin,
            cert,
        } => {
            anyhow::ensure!(
                password_stdin || cert,
                "say how the device proves itself: --password-stdin and/or --cert"
            );
            anyhow::ensure!(
                policy::safe_variable(&id),
                "a device id must be non-empty and free of / + # $ {{ }} (it is substituted into policies)"
            );
            if let Some(t) = &thing {
                anyhow::ensure!(
                    policy::safe_variable(t),
                    "a thing name must be non-empty and free of / + # $ {{ }} (it is substituted into policies)"
                );
            }
            if let Some(p) = &policy {
                anyhow::ensure!(has_policy(p), "no policy named `{p}` in the configuration");
            }
            let mut devices = identity::load(&file)?;
            let entry = devices
                .entry(id.clone())
                .or_insert_with(|| identity::Device {
                    id: id.clone(),
                    thing: None,
                    policy: None,
                    password_hash: None,
                    certificate_sha256: None,
                });
            if thing.is_some() {
                entry.thing = thing;
            }
            if policy.is_some() {
                entry.policy = policy;
            }
            if password_stdin {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                let password = line.trim_end_matches(['\n', '\r']);
                anyhow::ensure!(!password.is_empty(), "the password on stdin is empty");
                entry.password_hash = Some(identity::hash_password(password)?);
            }
            if cert {
                let (path, der) = ca::issue_device(&pki, &id)?;
                entry.certificate_sha256 = Some(identity::fingerprint(&der));
                println!("certificate: {} (key beside it)", path.display());
            }
            identity::save(&file, &devices)?;
            println!("device {id} registered in {}", file.display());
            // New credentials revoke the old ones.
            true
        }
        DeviceAction::Remove { id } => {
            let mut devices = identity::load(&file)?;
            anyhow::ensure!(devices.remove(&id).is_some(), "no device {id}");
            identity::save(&file, &devices)?;
            println!("device {id} removed");
            true
        }
        DeviceAction::List => {
            let devices = identity::load(&file)?;
            println!(
                "{:<32} {:<24} {:<12} {:<9} {:<11}",
                "DEVICE", "THING", "POLICY", "PASSWORD", "CERTIFICATE"
            );
            for d in devices.values() {
                println!(
                    "{:<32} {:<24} {:<12} {:<9} {:<11}",
                    d.id,
                    d.thing(),
                    d.policy.as_deref().unwrap_or("(listener)"),
                    if d.password_hash.is_some() {
                        "yes"
                    } else {
                        "no"
                    },
                    d.certificate_sha256
                        .as_deref()
                        .map_or("no".to_owned(), |f| format!("{}…", &f[..10])),
                );
            }
            false
        }
    };
    Ok(apply)
}
