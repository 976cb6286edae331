//! `grove device ...`: device identities on the data directory (the local CA, device
//! certificates, passwords), as the operator's command runs them, and the provisioning record a
//! device built from Grove's firmware reads its identity from. The binary parses the arguments
//! and, when this says so, has a running gateway apply the change through its ops endpoint.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use grove_firmware::provision::{self, Login, Record, TlsIdentity};
use p256::pkcs8::DecodePrivateKey;

use crate::{ca, identity, policy, tls};

pub use crate::ca::Issued;

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
    /// Write a registered device's provisioning record for Grove's firmware (its thing name, a
    /// password, the local CA, its certificate and key): the file to flash at the record's offset
    /// (firmware/README.md, "Credentials and provisioning").
    Provision {
        /// The device id, which the firmware also uses as its thing name.
        id: String,
        /// Where to write the record (mode 0600: it holds the device's secrets).
        #[arg(long)]
        out: PathBuf,
        /// Put the password from the first line of stdin in the record.
        #[arg(long)]
        password_stdin: bool,
        /// Use TLS, checking the gateway's certificate against the local CA for this DNS name
        /// (one of `init-ca --server-name`); the device's certificate and key go in too when it
        /// has one.
        #[arg(long = "server-name", value_name = "NAME")]
        server_name: Option<String>,
    },
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
            let password = password_stdin.then(read_password).transpose()?;
            let new = NewDevice {
                id: id.clone(),
                thing,
                policy,
                password,
                cert,
            };
            if let Some(issued) = add(data_dir, new, has_policy)? {
                println!(
                    "certificate: {} (key beside it)",
                    issued.certificate.display()
                );
            }
            println!("device {id} registered in {}", file.display());
            // New credentials revoke the old ones.
            true
        }
        DeviceAction::Remove { id } => {
            remove(data_dir, &id)?;
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
        DeviceAction::Provision {
            id,
            out,
            password_stdin,
            server_name,
        } => {
            let record =
                provision_record(&file, &pki, &id, password_stdin, server_name.as_deref())?;
            ca::write(&out, &record, 0o600)?;
            println!(
                "wrote the provisioning record of {id} ({} bytes) to {}",
                record.len(),
                out.display()
            );
            false
        }
    };
    Ok(apply)
}

/// A device to register (or update), as `grove device add` and the console's devices page give
/// it.
pub struct NewDevice {
    /// The device id, which is its MQTT client id.
    pub id: String,
    /// The thing name its policy sees as `${thing}` (`None`: the id, or as it was).
    pub thing: Option<String>,
    /// A policy overriding the listener's (`None`: as it was).
    pub policy: Option<String>,
    /// A password to sign in with (hashed with argon2id; `None`: as it was).
    pub password: Option<String>,
    /// Whether to issue it a client certificate from the local CA.
    pub cert: bool,
}

/// Registers `new` in the devices file of `data_dir` (`has_policy`: whether the configuration
/// defines a policy of that name): its new certificate, if one was issued. The caller has a running gateway apply the change (new
/// credentials revoke the old ones). Slow: hashing a password is argon2's work.
pub fn add(
    data_dir: &Path,
    new: NewDevice,
    has_policy: impl Fn(&str) -> bool,
) -> anyhow::Result<Option<Issued>> {
    let NewDevice {
        id,
        thing,
        policy,
        password,
        cert,
    } = new;
    anyhow::ensure!(
        password.is_some() || cert,
        "say how the device proves itself: a password and/or a certificate"
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
    let file = data_dir.join(identity::DEVICES_FILE);
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
    if let Some(password) = password {
        entry.password_hash = Some(identity::hash_password(&password)?);
    }
    let mut issued = None;
    if cert {
        let (files, der) = ca::issue_device(&ca::pki_dir(data_dir), &id)?;
        entry.certificate_sha256 = Some(identity::fingerprint(&der));
        issued = Some(files);
    }
    identity::save(&file, &devices)?;
    Ok(issued)
}

/// Removes device `id` from the devices file of `data_dir` (its password and certificate stop
/// working once a running gateway applies it).
pub fn remove(data_dir: &Path, id: &str) -> anyhow::Result<()> {
    let file = data_dir.join(identity::DEVICES_FILE);
    let mut devices = identity::load(&file)?;
    anyhow::ensure!(devices.remove(id).is_some(), "no device {id}");
    identity::save(&file, &devices)?;
    Ok(())
}

/// `grove device provision`: the record of device `id` (firmware's `provision` layout).
fn provision_record(
    devices_file: &Path,
    pki: &Path,
    id: &str,
    password_stdin: bool,
    server_name: Option<&str>,
) -> anyhow::Result<Vec<u8>> {
    let devices = identity::load(devices_file)?;
    let device = devices
        .get(id)
        .with_context(|| format!("no device {id}: `grove device add` it first"))?;
    anyhow::ensure!(
        device.thing() == id,
        "device {id} has the thing name {}: Grove's firmware uses its thing name as its client id, \
         so only a device registered without another --thing can be provisioned",
        device.thing()
    );
    let password = if password_stdin {
        Some(read_password()?)
    } else {
        None
    };
    let first_der = |path: PathBuf, what| -> anyhow::Result<Vec<u8>> {
        let certs = tls::certificates(&path, what)?;
        Ok(certs[0].to_vec())
    };
    let ca = match server_name {
        Some(_) => Some(first_der(pki.join("ca.pem"), "CA certificate")?),
        None => None,
    };
    let client = match (server_name, &device.certificate_sha256) {
        (Some(_), Some(_)) => {
            let dir = pki.join("devices");
            let key_path = dir.join(format!("{id}.key"));
            let pem = std::fs::read_to_string(&key_path)
                .with_context(|| format!("cannot read {}", key_path.display()))?;
            let key = p256::SecretKey::from_pkcs8_pem(&pem)
                .map_err(|e| anyhow::anyhow!("{}: not a P-256 key: {e}", key_path.display()))?;
            let cert = first_der(dir.join(format!("{id}.pem")), "device certificate")?;
            Some((cert, key.to_bytes().to_vec()))
        }
        _ => None,
    };
    let record = Record {
        thing: id,
        login: password.as_deref().map(|p| Login {
            username: id,
            password: p.as_bytes(),
        }),
        tls: server_name.map(|server_name| TlsIdentity {
            server_name,
            ca: ca.as_deref().unwrap_or_default(),
            client: client.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
        }),
    };
    let mut buf = vec![0u8; provision::MAX_RECORD];
    let len = provision::encode(&record, &mut buf).map_err(|e| anyhow::anyhow!("{e}"))?;
    buf.truncate(len);
    Ok(buf)
}

/// The first line of stdin, without its line break; refused if empty.
fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let password = line.trim_end_matches(['\n', '\r']);
    anyhow::ensure!(!password.is_empty(), "the password on stdin is empty");
    Ok(password.to_owned())
}
