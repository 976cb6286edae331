//! Fetching an artifact's bytes and checking them against the document's SHA-256 (blocking: the
//! shell runs it on the blocking pool): a file on the gateway, the document's inline bytes, or an
//! HTTPS URL.
//!
//! HTTPS is ureq on rustls (ring, as the cloud link): no runtime of its own, one request at a
//! time, and already in the binary for the CLI's loopback calls. The trusted roots are the
//! system's (read by rustls-native-certs, which the cloud link's rumqttc already brings, at the
//! first HTTPS fetch: not at start, where reading and parsing the ~150 files of a Debian CA store
//! cost startup time and resident memory that a gateway which never fetches over HTTPS should not
//! pay, issue 18) plus an optional CA file (`[deploy] artifact_ca`, e.g. a private artifact
//! server's, read and checked at start, so that a bad one is a configuration error there).
//! Redirects may not leave HTTPS.
//!
//! A download is resumable. Its bytes go to `{staging}/{sha256}.part` as they arrive, so an
//! interrupted one (the connection dropped or stalled, the gateway killed or powered off) goes on
//! from the file's length with `Range: bytes=N-` (RFC 9110 §14.2), in the same fetch or in the
//! next attempt after a restart; a server that answers 200 instead of 206 sends it whole, and the
//! file starts again. At most the document's `size` bytes are read: a longer body is refused
//! without being read further. The finished file is checked by hash; a mismatch after a resumed
//! download (the kept part may be torn by a power cut) downloads once more from the start, a
//! mismatch on a whole download fails. Part files are removed when their deployment ends
//! ([`Fetcher::discard`]).
//!
//! URLs are presigned (AWS's convention: the signature is the query string), so an error names
//! the URL without its query ([`crate::document::Source`]'s `Display`).
//!
//! Architecture invariant: ureq and rustls types stay in this file.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::document::{hex, Artifact, Source};
use grove_functions_host::runtime::MAX_MODULE_BYTES;

/// Longest a connection may stay silent (no byte of the answer) before the attempt is cut and
/// resumed: a stalled server does not hold the fetch step until its own timeout.
const READ_IDLE: Duration = Duration::from_secs(30);
/// Connecting (DNS and TCP and TLS) to the artifact server.
const CONNECT: Duration = Duration::from_secs(15);
/// Attempts in a row that bring no new byte before the fetch gives up (one that brings some
/// resets the count: a flaky link that makes progress is followed to the end).
const STALLED_ATTEMPTS: u32 = 3;
/// The wait after an attempt that brought nothing, times the attempts so far.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Why the fetcher cannot be set up (a configuration problem, reported at startup).
#[derive(Debug, thiserror::Error)]
pub enum FetcherError {
    /// The configured CA file is missing or holds no certificate.
    #[error("the artifact CA file {path}: {message}")]
    Ca {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The staging directory cannot be made.
    #[error("the deployments' staging directory {path}: {message}")]
    Staging {
        /// The directory.
        path: String,
        /// Why.
        message: String,
    },
}

/// Fetches artifacts; cheap to clone (the HTTPS agent is shared).
#[derive(Clone)]
pub struct Fetcher {
    /// Made at the first HTTPS fetch (see the module doc).
    agent: Arc<OnceLock<ureq::Agent>>,
    /// The certificates of `[deploy] artifact_ca`, trusted beside the system's roots.
    extra_roots: Arc<Vec<ureq::tls::Certificate<'static>>>,
    staging: Arc<PathBuf>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("staging", &self.staging)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A fetcher keeping partial downloads in `staging` (made if missing), trusting the system's
    /// roots and the certificates of `extra_ca` (PEM).
    pub fn new(staging: PathBuf, extra_ca: Option<&Path>) -> Result<Fetcher, FetcherError> {
        std::fs::create_dir_all(&staging).map_err(|e| FetcherError::Staging {
            path: staging.display().to_string(),
            message: e.to_string(),
        })?;
        let mut extra_roots = Vec::new();
        if let Some(path) = extra_ca {
            let ca = |message: String| FetcherError::Ca {
                path: path.display().to_string(),
                message,
            };
            let pem = std::fs::read(path).map_err(|e| ca(e.to_string()))?;
            for item in ureq::tls::parse_pem(&pem) {
                if let ureq::tls::PemItem::Certificate(c) = item.map_err(|e| ca(e.to_string()))? {
                    extra_roots.push(c);
                }
            }
            if extra_roots.is_empty() {
                return Err(ca("no certificate in it".to_owned()));
            }
        }
        Ok(Fetcher {
            agent: Arc::new(OnceLock::new()),
            extra_roots: Arc::new(extra_roots),
            staging: Arc::new(staging),
        })
    }

    /// The HTTPS agent, made on first use: it trusts the system's roots and `extra_roots`.
    fn agent(&self) -> &ureq::Agent {
        self.agent.get_or_init(|| {
            // A system without a CA bundle (a minimal image) still fetches from a server the
            // configured CA vouches for; the errors are the unreadable files, not worth failing
            // a fetch for.
            let native = rustls_native_certs::load_native_certs();
            for e in &native.errors {
                tracing::debug!(error = %e, "a system CA certificate could not be read");
            }
            let roots: Vec<ureq::tls::Certificate<'static>> = native
                .certs
                .iter()
                .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
                .chain(self.extra_roots.iter().cloned())
                .collect();
            let tls = ureq::tls::TlsConfig::builder()
                .provider(ureq::tls::TlsProvider::Rustls)
                .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
                .unversioned_rustls_crypto_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .build();
            ureq::Agent::config_builder()
                .tls_config(tls)
                .https_only(true)
                // 206, 200 and 416 are read; other statuses become errors naming the status.
                .http_status_as_error(false)
                .timeout_connect(Some(CONNECT))
                .timeout_per_read(Some(READ_IDLE))
                .build()
                .into()
        })
    }

    /// The artifact's bytes, checked against its hash, fetched before `deadline` (the fetch
    /// step's end: the blocking thread must not outlive the step that waits for it); `Err`: why
    /// not, for the deployment's status.
    pub fn fetch(&self, artifact: &Artifact, deadline: Instant) -> Result<Vec<u8>, String> {
        let limit = artifact.size.unwrap_or(MAX_MODULE_BYTES as u64);
        if limit > MAX_MODULE_BYTES as u64 {
            return Err(format!(
                "{}: {limit} bytes is larger than a module may be ({MAX_MODULE_BYTES} bytes)",
                artifact.source
            ));
        }
        let bytes = match &artifact.source {
            Source::Inline(bytes) => bytes.clone(),
            Source::File(path) => {
                let what = match artifact.size {
                    Some(_) => "the document declares",
                    None => "a module may be",
                };
                read_file(path, limit, what)?
            }
            Source::Url(url) => self.download(artifact, url, limit, deadline)?,
        };
        if let Some(size) = artifact.size.filter(|s| *s != bytes.len() as u64) {
            return Err(format!(
                "{}: {} bytes, the document says {size}",
                artifact.source,
                bytes.len()
            ));
        }
        artifact
            .verify(&bytes)
            .map_err(|e| format!("{}: {e}", artifact.source))?;
        Ok(bytes)
    }

    /// Removes what is kept of the artifact's download.
    pub fn discard(&self, artifact: &Artifact) {
        if matches!(artifact.source, Source::Url(_)) {
            let _ = std::fs::remove_file(self.part(artifact));
        }
    }

    fn part(&self, artifact: &Artifact) -> PathBuf {
        self.staging.join(format!("{}.part", hex(&artifact.sha256)))
    }

    /// Downloads into the part file, resuming, until it holds `size` bytes; returns them.
    fn download(
        &self,
        artifact: &Artifact,
        url: &str,
        size: u64,
        deadline: Instant,
    ) -> Result<Vec<u8>, String> {
        let part = self.part(artifact);
        let at = |e: &dyn std::fmt::Display| format!("{}: {e}", artifact.source);
        let mut stalled = 0;
        // Whether the part file holds bytes of an earlier request (this fetch's or a run's
        // before a restart).
        let mut resumed = false;
        loop {
            let have = std::fs::metadata(&part).map_or(0, |m| m.len());
            if have > size {
                let _ = std::fs::remove_file(&part);
                continue;
            }
            if have == size {
                let bytes = std::fs::read(&part).map_err(|e| at(&e))?;
                if resumed && artifact.verify(&bytes).is_err() {
                    // Resumed bytes that do not add up (a part torn by a power cut, an artifact
                    // changed on the server): once more from the start.
                    let _ = std::fs::remove_file(&part);
                    resumed = false;
                    continue;
                }
                // The hash check in `fetch` has the last word.
                return Ok(bytes);
            }
            resumed |= have > 0;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(at(&format!("not fetched in time ({have} of {size} bytes)")));
            }
            match self.attempt(url, &part, have, size, left) {
                Ok(()) => stalled = 0,
                Err(Attempt::Refused(why)) => {
                    let _ = std::fs::remove_file(&part);
                    return Err(at(&why));
                }
                Err(Attempt::Interrupted(why)) => {
                    let now = std::fs::metadata(&part).map_or(0, |m| m.len());
                    if now > have {
                        stalled = 0;
                        tracing::info!(url = %artifact.source, bytes = now, of = size, error = why, "artifact download interrupted: resuming");
                        continue;
                    }
                    stalled += 1;
                    if stalled >= STALLED_ATTEMPTS {
                        return Err(at(&format!(
                            "{why} ({have} of {size} bytes, {stalled} attempts)"
                        )));
                    }
                    tracing::warn!(url = %artifact.source, error = why, attempt = stalled, "artifact download failed: retrying");
                    let pause = RETRY_PAUSE * stalled;
                    std::thread::sleep(
                        pause.min(deadline.saturating_duration_since(Instant::now())),
                    );
                }
            }
        }
    }

    /// One request from byte `have`, appending what comes to `part`.
    fn attempt(
        &self,
        url: &str,
        part: &Path,
        have: u64,
        size: u64,
        left: Duration,
    ) -> Result<(), Attempt> {
        let interrupted = |e: &dyn std::fmt::Display| Attempt::Interrupted(e.to_string());
        let mut request = self.agent().get(url);
        if have > 0 {
            request = request.header("Range", format!("bytes={have}-"));
        }
        let response = request
            .config()
            .timeout_global(Some(left))
            .build()
            .call()
            .map_err(|e| interrupted(&e))?;
        let (from, mut file) = match response.status().as_u16() {
            206 => {
                // Content-Range: bytes FIRST-LAST/TOTAL; the server must continue where the file
                // ends, or the bytes would not fit.
                let first = response
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if first != Some(have) {
                    return Err(Attempt::Refused(format!(
                        "the server answered bytes from {first:?} to a request from {have}"
                    )));
                }
                let file = OpenOptions::new()
                    .append(true)
                    .open(part)
                    .map_err(|e| interrupted(&e))?;
                (have, file)
            }
            200 => (0, File::create(part).map_err(|e| interrupted(&e))?),
            // Nothing left to send from there: the kept part is wrong; start again.
            416 => {
                let _ = std::fs::remove_file(part);
                return Err(Attempt::Interrupted(
                    "the server has no bytes after the kept part".to_owned(),
                ));
            }
            status => return Err(Attempt::Refused(format!("the server answered {status}"))),
        };
        // ureq reads one byte past the limit to tell a longer body from one that fits, and
        // refuses it.
        let mut body = response
            .into_body()
            .into_with_config()
            .limit(size - from)
            .reader();
        let mut written = from;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    file.write_all(&buf[..n]).map_err(|e| interrupted(&e))?;
                    written += n as u64;
                }
                Err(e) => {
                    return Err(match ureq::Error::from(e) {
                        ureq::Error::BodyExceedsLimit(_) => {
                            let _ = std::fs::remove_file(part);
                            Attempt::Refused(format!(
                                "the server sent more than the {size} bytes the document declares"
                            ))
                        }
                        e => interrupted(&e),
                    })
                }
            }
        }
        if written < size {
            return Err(Attempt::Interrupted(format!(
                "the answer ended after {written} of {size} bytes"
            )));
        }
        Ok(())
    }
}

/// How one request ended short of the whole artifact.
enum Attempt {
    /// Worth another request (from where the part file ends).
    Interrupted(String),
    /// Not worth another one (the server's answer will not change): the fetch fails.
    Refused(String),
}

/// A file's bytes, at most `limit` of them, which is what `what` allows (an endless stream,
/// `/dev/zero`, is refused after the limit, not read until memory runs out).
fn read_file(path: &str, limit: u64, what: &str) -> Result<Vec<u8>, String> {
    let file = File::open(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {path}: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(format!("{path} is larger than {what} ({limit} bytes)"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    fn sha256(bytes: &[u8]) -> [u8; 32] {
        Sha256::digest(bytes).into()
    }

    fn fetcher() -> (tempfile::TempDir, Fetcher) {
        let dir = tempfile::tempdir().unwrap();
        let f = Fetcher::new(dir.path().join("staging"), None).unwrap();
        (dir, f)
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    fn file(bytes: &[u8], hash_of: &[u8]) -> (tempfile::NamedTempFile, Artifact) {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), bytes).unwrap();
        let artifact = Artifact {
            sha256: sha256(hash_of),
            size: None,
            source: Source::File(f.path().to_str().unwrap().to_owned()),
        };
        (f, artifact)
    }

    #[test]
    fn a_file_is_read_and_checked_by_hash_and_size() {
        let (_d, fetcher) = fetcher();
        let (_f, artifact) = file(b"module", b"module");
        assert_eq!(fetcher.fetch(&artifact, soon()).unwrap(), b"module");
        let (_f, artifact) = file(b"module", b"other");
        assert!(fetcher
            .fetch(&artifact, soon())
            .unwrap_err()
            .contains("artifact hash mismatch"));
        let (_f, mut artifact) = file(b"module", b"module");
        artifact.size = Some(5);
        assert!(fetcher
            .fetch(&artifact, soon())
            .unwrap_err()
            .contains("larger than the document declares (5 bytes)"));
        artifact.size = Some(7);
        assert!(fetcher
            .fetch(&artifact, soon())
            .unwrap_err()
            .contains("6 bytes, the document says 7"));
    }

    #[test]
    fn a_file_larger_than_a_module_may_be_is_refused_without_reading_it_all() {
        let (_d, fetcher) = fetcher();
        // One byte over the limit; and an endless stream, which is refused after the limit too
        // (reading stops one byte past it), not read until memory runs out.
        let big = vec![0u8; MAX_MODULE_BYTES + 1];
        let (_f, artifact) = file(&big, &big);
        assert!(fetcher
            .fetch(&artifact, soon())
            .unwrap_err()
            .contains("larger than a module may be"));
        let zero = Artifact {
            sha256: [0; 32],
            size: None,
            source: Source::File("/dev/zero".into()),
        };
        assert!(fetcher
            .fetch(&zero, soon())
            .unwrap_err()
            .contains("larger than a module may be"));
        let declared = Artifact {
            size: Some(MAX_MODULE_BYTES as u64 + 1),
            ..zero
        };
        assert!(fetcher
            .fetch(&declared, soon())
            .unwrap_err()
            .contains("is larger than a module may be"));
    }

    #[test]
    fn a_missing_file_and_an_unreachable_url_say_why_and_a_query_is_not_shown() {
        let (_d, fetcher) = fetcher();
        let missing = Artifact {
            sha256: [0; 32],
            size: None,
            source: Source::File("/nonexistent/m.wasm".into()),
        };
        assert!(fetcher
            .fetch(&missing, soon())
            .unwrap_err()
            .starts_with("cannot read /nonexistent/m.wasm"));
        // A port nothing listens on: refused at once, three times, then the fetch gives up.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = Artifact {
            sha256: [0; 32],
            size: Some(10),
            source: Source::Url(format!(
                "https://127.0.0.1:{port}/m.wasm?X-Amz-Signature=secret"
            )),
        };
        let e = fetcher.fetch(&url, soon()).unwrap_err();
        assert!(
            e.contains(&format!("https://127.0.0.1:{port}/m.wasm")),
            "{e}"
        );
        assert!(e.contains("3 attempts"), "{e}");
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn a_bad_ca_file_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let e = Fetcher::new(dir.path().join("s"), Some(&ca)).unwrap_err();
        assert!(e.to_string().contains("no certificate in it"), "{e}");
        let e = Fetcher::new(dir.path().join("s"), Some(&dir.path().join("missing"))).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
