//! An HTTPS artifact server on loopback, standing in for S3 behind presigned URLs: hyper's HTTP/1.1
//! server over rustls, with a certificate from its own test CA (the gateway trusts it through
//! `[deploy] artifact_ca`, as an operator would a private server's CA).
//!
//! It serves byte ranges (`Range: bytes=N-`, answered 206 with `Content-Range`, RFC 9110 §14), so
//! a resumed download can be proved, and records every request (path, query, range start). An
//! artifact can be made to stop after some bytes on its first request ([`Artifacts::put_paused`])
//! until the test says to go on ([`Artifacts::resume`]) or to drop the connection
//! ([`Artifacts::cut`]): a stalled or broken download at a known byte, without timing.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::free_port;

/// What to do with a paused request.
enum Go {
    Resume,
    Cut,
}

/// An artifact and how its first request goes.
struct Served {
    bytes: Bytes,
    /// Stop the first request after this many bytes (until the test says).
    pause_after: Option<usize>,
    /// The paused request waits for the test's word on this.
    paused: Option<oneshot::Sender<Go>>,
}

/// A request the server got.
#[derive(Debug, Clone)]
pub struct Fetch {
    /// The path, without the query.
    pub path: String,
    /// The query (a presigned URL's signature), if any.
    pub query: Option<String>,
    /// The first byte asked for (`Range: bytes=N-`), if a range was asked for.
    pub from: Option<u64>,
    /// When it arrived.
    pub at: std::time::Instant,
}

#[derive(Default)]
struct Shared {
    served: HashMap<String, Served>,
    fetches: Vec<Fetch>,
}

/// The running server; its task ends when it is dropped.
pub struct Artifacts {
    /// The HTTPS port.
    pub port: u16,
    dir: tempfile::TempDir,
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
}

impl Artifacts {
    /// Makes a CA and a certificate for 127.0.0.1 signed by it, and listens on a free loopback
    /// port.
    pub async fn start() -> Artifacts {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "test artifacts CA");
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "artifacts");
        let cert = params
            .signed_by(&key, &ca_cert, &ca_key)
            .expect("server certificate");
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).expect("write the CA");
        let chain = vec![CertificateDer::from_pem_slice(cert.pem().as_bytes()).expect("PEM")];
        let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the artifact server");
        let shared = Arc::new(Mutex::new(Shared::default()));
        let state = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, state) = (acceptor.clone(), state.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |r| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, r)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Artifacts {
            port,
            dir,
            shared,
            task,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().expect("the server's state")
    }

    /// The CA certificate (PEM) the gateway must trust.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Serves `bytes` at `/{name}`; returns its URL.
    pub fn put(&self, name: &str, bytes: Vec<u8>) -> String {
        self.put_with(name, bytes, None)
    }

    /// Like [`Artifacts::put`], the first request stopping after `after` bytes until
    /// [`Artifacts::resume`] or [`Artifacts::cut`].
    pub fn put_paused(&self, name: &str, bytes: Vec<u8>, after: usize) -> String {
        self.put_with(name, bytes, Some(after))
    }

    fn put_with(&self, name: &str, bytes: Vec<u8>, pause_after: Option<usize>) -> String {
        let served = Served {
            bytes: Bytes::from(bytes),
            pause_after,
            paused: None,
        };
        self.lock().served.insert(format!("/{name}"), served);
        format!("https://127.0.0.1:{}/{name}", self.port)
    }

    /// The paused request goes on to the end.
    pub fn resume(&self, name: &str) {
        self.go(name, Go::Resume);
    }

    /// The paused request's connection is dropped mid-body.
    pub fn cut(&self, name: &str) {
        self.go(name, Go::Cut);
    }

    fn go(&self, name: &str, go: Go) {
        let paused = self
            .lock()
            .served
            .get_mut(&format!("/{name}"))
            .and_then(|s| s.paused.take());
        let paused = paused.unwrap_or_else(|| panic!("no paused request of {name}"));
        // A request whose client has gone already has nothing to go on with.
        let _ = paused.send(go);
    }

    /// Every request so far, in order.
    pub fn fetches(&self) -> Vec<Fetch> {
        self.lock().fetches.clone()
    }
}

impl Drop for Artifacts {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

/// The answer to one request: 404, the whole artifact (200), or from the range's start (206);
/// a paused first request streams its first bytes and waits.
fn answer(state: &Mutex<Shared>, request: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let from = request
        .headers()
        .get(hyper::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse::<u64>().ok());
    let mut shared = state.lock().expect("the server's state");
    shared.fetches.push(Fetch {
        path: path.clone(),
        query: request.uri().query().map(String::from),
        from,
        at: std::time::Instant::now(),
    });
    let Some(served) = shared.served.get_mut(&path) else {
        return status(StatusCode::NOT_FOUND);
    };
    let total = served.bytes.len() as u64;
    let start = from.unwrap_or(0);
    if start >= total {
        return status(StatusCode::RANGE_NOT_SATISFIABLE);
    }
    let body = served.bytes.slice(start as usize..);
    let mut response = Response::builder()
        .header(hyper::header::CONTENT_LENGTH, body.len())
        .header(hyper::header::ACCEPT_RANGES, "bytes");
    if from.is_some() {
        response = response.status(StatusCode::PARTIAL_CONTENT).header(
            hyper::header::CONTENT_RANGE,
            format!("bytes {start}-{}/{total}", total - 1),
        );
    }
    let body: Body = match served.pause_after.take() {
        None => Full::new(body).map_err(|never| match never {}).boxed(),
        Some(after) => {
            let (go_tx, go) = oneshot::channel();
            served.paused = Some(go_tx);
            let (mut tx, channel) = http_body_util::channel::Channel::new(2);
            let (first, rest) = (body.slice(..after), body.slice(after..));
            tokio::spawn(async move {
                if tx.send_data(first).await.is_err() {
                    return;
                }
                match go.await {
                    Ok(Go::Resume) => {
                        let _ = tx.send_data(rest).await;
                    }
                    // Aborting the body makes hyper close the connection mid-body.
                    _ => tx.abort(std::io::Error::other("cut by the test")),
                }
            });
            channel.boxed()
        }
    };
    response.body(body).expect("a valid response")
}

fn status(code: StatusCode) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = code;
    response
}
