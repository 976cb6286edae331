//! A cloud endpoint that checks TLS the way AWS IoT Core's port 443 does, in front of a mosquitto:
//! mosquitto can check client certificates but not the ALPN a client offers, so this front does
//! both and passes the MQTT bytes through to mosquitto's plain listener.
//!
//! From AWS's documentation ("Protocols, port mappings, and authentication",
//! <https://docs.aws.amazon.com/iot/latest/developerguide/protocols.html>): on port 443 a client
//! authenticating with an X.509 certificate must send the ALPN extension with the protocol name
//! `x-amzn-mqtt-ca` in its ClientHello. The front requires a client certificate signed by the
//! test CA and that protocol name among the offered ones; anything else ends the connection
//! during the handshake. It records what every ClientHello offered.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};

use crate::free_port;

/// The running front; its task ends when it is dropped.
pub struct TlsFront {
    /// The TLS port the gateway connects to.
    pub port: u16,
    offered: Arc<Mutex<Vec<Vec<String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsFront {
    /// Listens on a free loopback port with the server certificate `cert`/`key`, taking client
    /// certificates signed by `ca` (PEM files), requiring the ALPN protocol `alpn`, and passing
    /// accepted connections to `target` on 127.0.0.1.
    pub async fn start(ca: &Path, cert: &Path, key: &Path, alpn: &str, target: u16) -> TlsFront {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).expect("CA file") {
            roots.add(c.expect("CA certificate")).expect("CA");
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.into(),
            provider.clone(),
        )
        .build()
        .expect("client verifier");
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .expect("certificate file")
            .map(|c| c.expect("certificate"))
            .collect();
        let key = PrivateKeyDer::from_pem_file(key).expect("key");
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .expect("server certificate");
        config.alpn_protocols = vec![alpn.as_bytes().to_vec()];
        let config = Arc::new(config);
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("front bind");
        let offered = Arc::new(Mutex::new(Vec::new()));
        let record = offered.clone();
        let required = alpn.to_owned();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let (config, record, required) = (config.clone(), record.clone(), required.clone());
                connections.spawn(async move {
                    let acceptor = rustls::server::Acceptor::default();
                    let Ok(start) = tokio_rustls::LazyConfigAcceptor::new(acceptor, tcp).await
                    else {
                        return;
                    };
                    let names: Vec<String> = start
                        .client_hello()
                        .alpn()
                        .map(|names| {
                            names
                                .map(|n| String::from_utf8_lossy(n).into_owned())
                                .collect()
                        })
                        .unwrap_or_default();
                    let acceptable = names.contains(&required);
                    record.lock().expect("record").push(names);
                    if !acceptable {
                        // As AWS does: no handshake without the protocol name.
                        return;
                    }
                    let Ok(mut tls) = start.into_stream(config).await else {
                        return;
                    };
                    if let Ok(mut plain) = TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    }
                });
            }
        });
        TlsFront {
            port,
            offered,
            task,
        }
    }

    /// The ALPN protocol names of every ClientHello so far, in order (an empty list: none
    /// offered).
    pub fn offered(&self) -> Vec<Vec<String>> {
        self.offered.lock().expect("record").clone()
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}
