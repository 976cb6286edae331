//! A site: a gateway whose devices were registered by `grove device` before it started (a local
//! CA, device certificates, passwords), with a mutual-TLS and a password listener besides the
//! harness's anonymous loopback one, and the rumqttc options its devices connect with. One setup
//! for every test of device security.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{free_port, grove_device, options, Gateway};

/// The DNS name in the site's server certificate besides 127.0.0.1, for clients that check only
/// DNS names (the firmware's TLS: embedded-tls reads no IP address names).
pub const SERVER_NAME: &str = "localhost";

/// A gateway's directory before it starts, whose data directory gets its device identities from
/// `grove device` (the configuration that command reads is `pre.toml` there).
pub struct Devices {
    dir: tempfile::TempDir,
}

impl Devices {
    /// A fresh directory; `config` (e.g. the `[[policies]]` that `--policy` names) goes into the
    /// configuration `grove device` reads, after its `data_dir`.
    pub fn new(config: &str) -> Devices {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::write(
            dir.path().join("pre.toml"),
            format!("data_dir = {data:?}\n{config}"),
        )
        .expect("write pre.toml");
        Devices { dir }
    }

    /// Like [`Devices::new`], with a local CA for the server names 127.0.0.1 and
    /// [`SERVER_NAME`] (`grove device init-ca`), ready for device certificates and
    /// [`Devices::start_site`].
    pub fn with_ca(config: &str) -> Devices {
        let devices = Devices::new(config);
        let out = devices.run(
            &[
                "init-ca",
                "--server-name",
                "127.0.0.1",
                "--server-name",
                SERVER_NAME,
            ],
            None,
        );
        assert!(out.contains("created the local CA"), "{out}");
        devices
    }

    /// The local CA's directory (after [`Devices::with_ca`]).
    pub fn pki(&self) -> PathBuf {
        self.dir.path().join("data").join("pki")
    }

    /// `grove device ARGS` (stdin: a password line) on this directory; checks that it succeeded
    /// and returns its output.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> String {
        grove_device(&self.dir.path().join("pre.toml"), args, stdin)
    }

    /// Starts the gateway; `extra` as in [`Gateway::start`].
    pub fn start(self, extra: &str) -> Gateway {
        Gateway::start_in(self.dir, extra)
    }

    /// Starts the gateway (after [`Devices::with_ca`]) with two more listeners: `mtls`
    /// (certificates from the local CA) and `pw` (passwords); `extra` as in [`Gateway::start`].
    pub fn start_site(self, extra: &str) -> Site {
        let config = self.dir.path().join("pre.toml");
        let pki = self.pki();
        let (mtls_port, password_port) = (free_port(), free_port());
        let listeners = format!(
            "{extra}\n[[broker.listeners]]\nname = \"mtls\"\nbind = \"127.0.0.1:{mtls_port}\"\nauth = \"certificate\"\n\
             tls = {{ cert = {cert:?}, key = {key:?}, client_ca = {ca:?} }}\n\
             [[broker.listeners]]\nname = \"pw\"\nbind = \"127.0.0.1:{password_port}\"\nauth = \"password\"\n",
            cert = pki.join("server.pem"),
            key = pki.join("server.key"),
            ca = pki.join("ca.pem"),
        );
        Site {
            gateway: self.start(&listeners),
            mtls_port,
            password_port,
            pki,
            config,
        }
    }
}

/// A running gateway started by [`Devices::start_site`].
pub struct Site {
    /// The gateway; its own listener (`mqtt_port`) is the harness's anonymous loopback one.
    pub gateway: Gateway,
    /// The mutual-TLS listener.
    pub mtls_port: u16,
    /// The password listener.
    pub password_port: u16,
    /// The local CA's directory (`ca.pem`, `ca.key`, `server.pem`, `devices/ID.pem`, ...).
    pub pki: PathBuf,
    config: PathBuf,
}

impl Site {
    /// `grove device ARGS` on the site's data directory, the gateway running (see
    /// [`Devices::run`]).
    pub fn device(&self, args: &[&str], stdin: Option<&str>) -> String {
        grove_device(&self.config, args, stdin)
    }

    /// The certificate and key `grove device add ID --cert` made.
    pub fn device_cert(&self, id: &str) -> (PathBuf, PathBuf) {
        let d = self.pki.join("devices");
        (d.join(format!("{id}.pem")), d.join(format!("{id}.key")))
    }

    /// Options for the mutual-TLS listener: the site's CA as the only root, and `cert` (a
    /// certificate and its key) as the client's, or none.
    pub fn tls_options(&self, client_id: &str, cert: Option<(&Path, &Path)>) -> MqttOptions {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.pki.join("ca.pem")).expect("ca.pem") {
            roots.add(c.expect("CA certificate")).expect("a root");
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
        let config = match cert {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .expect("certificate file")
                    .map(|c| c.expect("certificate"))
                    .collect();
                let key = PrivateKeyDer::from_pem_file(key).expect("key");
                builder
                    .with_client_auth_cert(chain, key)
                    .expect("client certificate")
            }
            None => builder.with_no_client_auth(),
        };
        let mut o = MqttOptions::new(client_id, "127.0.0.1", self.mtls_port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(config),
        )));
        o
    }

    /// Options for device `id` with its own certificate on the mutual-TLS listener.
    pub fn device_options(&self, id: &str) -> MqttOptions {
        let (cert, key) = self.device_cert(id);
        self.tls_options(id, Some((&cert, &key)))
    }

    /// Options for device `id` logging in as itself with `password` on the password listener.
    pub fn password_options(&self, id: &str, password: &str) -> MqttOptions {
        let mut o = options(id, self.password_port);
        o.set_credentials(id, password);
        o
    }
}

/// `grove device provision` on a site's data directory, for [`Devices`] (before the gateway
/// starts) and [`Site`] (while it runs).
pub trait Provision {
    /// The configuration `grove device` reads.
    fn grove_config(&self) -> PathBuf;

    /// Device `id`'s provisioning record, the one Grove's firmware reads its identity from, with
    /// `password` (given on stdin) and, for TLS, `server_name` (the device's certificate goes in
    /// when it has one). The file is written beside the configuration.
    fn provision(&self, id: &str, password: Option<&str>, server_name: Option<&str>) -> Vec<u8> {
        let config = self.grove_config();
        let out = config.with_file_name(format!("{id}.record"));
        let out_arg = out.to_str().expect("a UTF-8 path");
        let mut args = vec!["provision", id, "--out", out_arg];
        if let Some(name) = server_name {
            args.extend(["--server-name", name]);
        }
        let stdin = password.map(|p| format!("{p}\n"));
        if stdin.is_some() {
            args.push("--password-stdin");
        }
        let said = grove_device(&config, &args, stdin.as_deref());
        assert!(said.contains("wrote the provisioning record"), "{said}");
        std::fs::read(&out).expect("the record")
    }
}

impl Provision for Devices {
    fn grove_config(&self) -> PathBuf {
        self.dir.path().join("pre.toml")
    }
}

impl Provision for Site {
    fn grove_config(&self) -> PathBuf {
        self.config.clone()
    }
}
