//! Device identities: the devices file, and checking a device's password or certificate.
//!
//! The file is `{data_dir}/devices.toml`, written by `grove device add|remove` (atomically: a
//! temporary file renamed over the old one, mode 0600) and read by the gateway, which notices a
//! change on the next CONNECT (it compares the file's modification time), so adding or removing
//! a device needs no restart. It holds, per device: its id (= MQTT client id), the thing it is
//! (for `${thing}` in policies; the id by default), an optional policy name, and how it proves
//! itself: an argon2id password hash (PHC string, never the password) and/or the SHA-256
//! fingerprint of its client certificate. Removing a device revokes both.
//!
//! Password checks cost argon2's deliberate ~10-50 ms and 19 MiB each, and anyone who can reach a
//! password listener can ask for one, so what they may cost is bounded three ways:
//!
//! - **A pool of its own, fed fairly.** [`PARALLEL_CHECKS`] worker threads run them, fed by a
//!   queue of at most [`QUEUED_CHECKS`] served round-robin over the peers' addresses
//!   ([`super::fair_queue`]): a device's login waits for at most one check of every other address
//!   with checks queued, however many each of them queued. When the queue is full, the address
//!   holding the most places gives up its newest for a newcomer; a check that finds no place is
//!   refused at once ([`PasswordCheck::Busy`], which the broker answers with CONNACK "server
//!   unavailable" and counts). A flood from a few addresses therefore answers mostly "server
//!   unavailable" to itself, while another address's first login still gets a place and is
//!   checked within a round. argon2 runs only on the workers, so it never holds more than
//!   `PARALLEL_CHECKS` x 19 MiB, on threads whose allocator arenas are reused rather than
//!   multiplied; a queued check holds only its password. A check whose waiter is gone (the
//!   connect timeout dropped it) is skipped, and dropped first when room is needed: an abandoned
//!   waiter never costs an argon2 run (the blocking pool this replaced ran one 19 MiB argon2 per
//!   abandoned waiter: 150 wrong-password CONNECTs took 1.8 GB).
//! - **A short memory of verified logins.** A password that verified is remembered for
//!   [`VERIFIED_FOR`] as an HMAC under a key drawn at startup (never the password, and useless
//!   outside the process), with the device's hash at the time; a reconnect with the same password
//!   against the same hash skips argon2 and the queue, so legitimate devices get in at once while
//!   strangers queue. Removing a device or changing its password changes the hash and forgets it.
//! - **Per-peer limits** are the broker's: each peer address may hold only a few connections
//!   before authentication (`broker.max_pending_per_address`), hence only a few places in this
//!   queue.
//!
//! Cancelling argon2 midway is not possible (it is one blocking call), which is why the bound is
//! on the work, not on the waiters. Fairness is per address, so an attacker with many addresses
//! gets as many turns: a site facing such a network should also set
//! `broker.max_pending_per_address` and keep password listeners off it (certificates cost no
//! queue).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, PasswordHash, PasswordHasher, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use ring::hmac;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::fair_queue::{FairQueue, Pushed};

/// The devices file inside the data directory.
pub const DEVICES_FILE: &str = "devices.toml";

/// Password checks running at once, each on a worker thread of its own.
pub const PARALLEL_CHECKS: usize = 2;

/// Password checks that may wait for a worker; beyond it the address holding the most places
/// gives one up, or the check is refused. Each holds only its password (at most
/// `broker.max_connect_size`).
pub const QUEUED_CHECKS: usize = 32;

/// How long a verified password is remembered.
pub const VERIFIED_FOR: Duration = Duration::from_secs(10 * 60);

/// Most verified logins remembered (one per device; only registered devices get one).
const MAX_VERIFIED: usize = 10_000;

/// The answer to a password login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordCheck {
    /// The device is registered with this password.
    Accepted {
        /// Its identity.
        device: Device,
        /// It was remembered from a recent login; argon2 did not run.
        remembered: bool,
    },
    /// Unknown id, no password registered, or the wrong password.
    Refused,
    /// Too many checks are running or waiting: try again later.
    Busy,
}

/// One device's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// The device id, which is its MQTT client id.
    pub id: String,
    /// The thing name for `${thing}` in policies; the id when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thing: Option<String>,
    /// A policy name overriding the listener's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// argon2id PHC string of the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// Lower-case hex SHA-256 of the client certificate (DER).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_sha256: Option<String>,
}

impl Device {
    /// The thing name policies see.
    pub fn thing(&self) -> &str {
        self.thing.as_deref().unwrap_or(&self.id)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default, rename = "device")]
    devices: Vec<Device>,
}

/// Why the devices file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing it failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not a valid devices file.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Hashing a password failed.
    #[error("cannot hash the password: {0}")]
    Hash(String),
    /// The system's random number generator failed.
    #[error("no random numbers from the system")]
    Random,
}

/// Reads the devices file; a missing file is an empty one.
pub fn load(path: &Path) -> Result<BTreeMap<String, Device>, IdentityError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => {
            return Err(IdentityError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    let file: File = toml::from_str(&text).map_err(|e| IdentityError::Invalid {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let mut out = BTreeMap::new();
    for d in file.devices {
        if let Some(old) = out.insert(d.id.clone(), d) {
            return Err(IdentityError::Invalid {
                path: path.to_owned(),
                message: format!("device `{}` is listed twice", old.id),
            });
        }
    }
    Ok(out)
}

/// Writes the devices file atomically with mode 0600.
pub fn save(path: &Path, devices: &BTreeMap<String, Device>) -> Result<(), IdentityError> {
    let file = File {
        devices: devices.values().cloned().collect(),
    };
    let text = format!(
        "# Grove device identities, managed by `grove device add|remove`.\n# The gateway re-reads this file when it changes.\n\n{}",
        toml::to_string(&file).map_err(|e| IdentityError::Hash(e.to_string()))?
    );
    write_private(path, &text)
}

/// Writes a file of secrets (password hashes) atomically with mode 0600: a temporary file beside
/// it, synced, then renamed over it.
pub fn write_private(path: &Path, text: &str) -> Result<(), IdentityError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// An argon2id PHC hash of `password` with a random salt.
pub fn hash_password(password: &str) -> Result<String, IdentityError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| IdentityError::Hash(e.to_string()))
}

/// Whether `password` matches the argon2 PHC string `phc` (a malformed hash matches nothing).
/// Blocking, ~10-50 ms: for callers with a budget of their own (the console's sign-in), not for
/// device logins, which go through [`Identities::check_password`]'s bounded workers.
pub fn password_matches(phc: &str, password: &str) -> bool {
    verify(phc, password.as_bytes(), &mut Vec::new()).unwrap_or(false)
}

/// Lower-case hex SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The devices as last read, with the file's modification time then.
type Snapshot = (Option<Stamp>, Arc<BTreeMap<String, Device>>);

/// The gateway's view of the devices file, reloaded when it changes.
pub struct Identities {
    path: PathBuf,
    cache: Mutex<Snapshot>,
    /// Runs argon2, off the async runtime, within its bounds.
    verifier: Verifier,
    /// Logins verified recently.
    verified: Mutex<Verified>,
    /// Bumped at every reload, so that connected devices re-check their identity.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Identities {
    /// Opens the devices file (which may not exist yet) and starts the password workers (which
    /// end when this is dropped).
    pub fn open(path: PathBuf) -> Result<Identities, IdentityError> {
        let modified = stamp(&path);
        let devices = load(&path)?;
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
            .map_err(|_| IdentityError::Random)?;
        Ok(Identities {
            path,
            cache: Mutex::new((modified, Arc::new(devices))),
            verifier: Verifier::start(),
            verified: Mutex::new(Verified::new(key)),
            changes: tokio::sync::watch::Sender::new(0),
        })
    }

    /// The current devices, re-read if the file changed. A file that became unreadable keeps the
    /// last good contents (and is logged), so a half-edited file cannot lock every device out.
    fn current(&self) -> Arc<BTreeMap<String, Device>> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let now = stamp(&self.path);
        if now != cache.0 {
            match load(&self.path) {
                Ok(devices) => {
                    *cache = (now, Arc::new(devices));
                    self.changes.send_modify(|n| *n += 1);
                }
                Err(e) => tracing::error!(error = %e, "keeping the previous device identities"),
            }
        }
        cache.1.clone()
    }

    /// Re-reads the devices file if it changed (the broker calls this every second, so that a
    /// removal or a new credential reaches connected devices without waiting for a CONNECT).
    pub fn refresh(&self) {
        self.current();
    }

    /// A receiver that changes whenever the devices file was reloaded.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The device with this id, if registered.
    pub fn device(&self, id: &str) -> Option<Device> {
        self.current().get(id).cloned()
    }

    /// Checks a password login from `peer` (the CONNECT rules have made sure the username is the
    /// client id); the check queues behind other peers' fairly (see the module's doc).
    pub async fn check_password(
        &self,
        client_id: &str,
        password: &str,
        peer: IpAddr,
    ) -> PasswordCheck {
        let device = self.device(client_id).filter(|d| d.password_hash.is_some());
        let hash = device.as_ref().and_then(|d| d.password_hash.clone());
        if let (Some(device), Some(hash)) = (&device, &hash) {
            let verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if verified.remembers(client_id, hash, password, Instant::now()) {
                return PasswordCheck::Accepted {
                    device: device.clone(),
                    remembered: true,
                };
            }
        }
        let (answer, verdict) = oneshot::channel();
        // An unknown id (or a device without a password) is checked against a stand-in hash, so
        // that the answer takes as long as for a known device and does not tell which ids exist.
        if !self.verifier.submit(peer, hash.clone(), password, answer) {
            return PasswordCheck::Busy;
        }
        match (verdict.await, device, hash) {
            (Ok(Verdict::Busy), ..) => PasswordCheck::Busy,
            (Ok(Verdict::Matches), Some(device), Some(hash)) => {
                self.verified
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remember(client_id, &hash, password, Instant::now());
                PasswordCheck::Accepted {
                    device,
                    remembered: false,
                }
            }
            _ => PasswordCheck::Refused,
        }
    }

    /// Checks a certificate login: the device registered with exactly this certificate.
    pub fn check_certificate(&self, client_id: &str, der: &[u8]) -> Option<Device> {
        let device = self.device(client_id)?;
        (device.certificate_sha256.as_deref() == Some(fingerprint(der).as_str())).then_some(device)
    }
}

/// A password check for a worker.
struct Job {
    /// The device's hash; `None` for the stand-in.
    hash: Option<String>,
    password: String,
    answer: oneshot::Sender<Verdict>,
}

/// A worker's answer to a check.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Matches,
    Differs,
    /// Its place in the queue went to another address's check (see [`FairQueue::push`]).
    Busy,
}

/// The queue the workers take checks from.
struct Queue {
    checks: FairQueue<IpAddr, Job>,
    /// Set when the [`Verifier`] is dropped: the workers end.
    closed: bool,
}

/// The password workers and their fair, bounded queue.
///
/// Written by hand on std threads rather than with `spawn_blocking`: tokio's blocking pool grows
/// to 512 threads and would run every queued argon2 at once.
struct Verifier {
    queue: Arc<(Mutex<Queue>, Condvar)>,
}

impl Verifier {
    fn start() -> Verifier {
        let queue = Arc::new((
            Mutex::new(Queue {
                checks: FairQueue::new(QUEUED_CHECKS),
                closed: false,
            }),
            Condvar::new(),
        ));
        for n in 0..PARALLEL_CHECKS {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("grove-argon2-{n}"))
                .spawn(move || work(&queue));
            if let Err(e) = spawned {
                // Fewer workers only make checks slower; with none they all wait to time out.
                tracing::error!(error = %e, "cannot start a password-check worker");
            }
        }
        Verifier { queue }
    }

    /// Queues a check from `peer` of `password` against `hash` (`None`: the stand-in), unless
    /// there is no place for it; the verdict goes to `answer`.
    fn submit(
        &self,
        peer: IpAddr,
        hash: Option<String>,
        password: &str,
        answer: oneshot::Sender<Verdict>,
    ) -> bool {
        let job = Job {
            hash,
            password: password.to_owned(),
            answer,
        };
        let (queue, ready) = &*self.queue;
        let mut queue = queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.checks.len() >= QUEUED_CHECKS {
            // Checks whose waiters have given up make room first.
            queue.checks.retain(|job| !job.answer.is_closed());
        }
        match queue.checks.push(peer, job) {
            Pushed::Queued => {}
            Pushed::Displaced(other) => {
                let _ = other.answer.send(Verdict::Busy);
            }
            Pushed::Refused(_) => return false,
        }
        ready.notify_one();
        true
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        let (queue, ready) = &*self.queue;
        queue.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        ready.notify_all();
    }
}

/// A worker: runs queued checks until the verifier is dropped.
fn work(queue: &(Mutex<Queue>, Condvar)) {
    // argon2's memory, allocated at the first check and kept: see `verify`.
    let mut memory = Vec::new();
    let (queue, ready) = queue;
    loop {
        let job = {
            let mut queue = queue.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if queue.closed {
                    return;
                }
                match queue.checks.pop() {
                    Some(job) => break job,
                    None => queue = ready.wait(queue).unwrap_or_else(|p| p.into_inner()),
                }
            }
        };
        if job.answer.is_closed() {
            // Its connection has already given up (connect timeout): nobody waits for the answer.
            continue;
        }
        let hash = job.hash.as_deref().unwrap_or_else(|| stand_in_hash());
        let matches = verify(hash, job.password.as_bytes(), &mut memory).unwrap_or(false);
        let _ = job.answer.send(if matches {
            Verdict::Matches
        } else {
            Verdict::Differs
        });
    }
}

/// Whether `password` matches the argon2 PHC string `phc`, computed in `memory` (grown to the
/// hash's memory cost and kept by the caller for the next check).
///
/// By hand rather than with `PasswordVerifier::verify_password`, which allocates its 19 MiB
/// afresh at every call: once glibc's mmap threshold has adapted to that size, the blocks stay in
/// per-thread arenas, and under a storm two workers grew RSS by 75 MiB instead of 38 (measured).
/// The steps are `verify_password`'s (password-hash 0.5): the hash's own algorithm, version,
/// parameters and salt, and the constant-time comparison of `password_hash::Output`'s `==`.
fn verify(
    phc: &str,
    password: &[u8],
    memory: &mut Vec<Block>,
) -> Result<bool, argon2::password_hash::Error> {
    let hash = PasswordHash::new(phc)?;
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
        return Ok(false);
    };
    let version = hash
        .version
        .map(Version::try_from)
        .transpose()?
        .unwrap_or_default();
    let argon2 = Argon2::new(
        Algorithm::try_from(hash.algorithm)?,
        version,
        Params::try_from(&hash)?,
    );
    let blocks = argon2.params().block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let mut salt_bytes = [0u8; Salt::MAX_LENGTH];
    let salt = salt.decode_b64(&mut salt_bytes)?;
    let mut out = [0u8; Output::MAX_LENGTH];
    let out = out
        .get_mut(..expected.len())
        .ok_or(argon2::password_hash::Error::OutputSize {
            provided: std::cmp::Ordering::Greater,
            expected: Output::MAX_LENGTH,
        })?;
    argon2.hash_password_into_with_memory(password, salt, out, &mut memory[..blocks])?;
    Ok(Output::new(out)? == expected)
}

/// Logins verified recently: per device, an HMAC of the password that verified and the hash it
/// verified against.
///
/// An HMAC under a key drawn at startup, not a plain digest: a fast hash of a password would be a
/// cheap target for guessing if memory leaked, which is what argon2 is there to prevent.
struct Verified {
    key: hmac::Key,
    logins: HashMap<String, Login>,
}

struct Login {
    /// The device's argon2 hash the password verified against.
    hash: String,
    tag: hmac::Tag,
    at: Instant,
}

impl Verified {
    fn new(key: hmac::Key) -> Verified {
        Verified {
            key,
            logins: HashMap::new(),
        }
    }

    /// Whether `password` verified against `hash` for `id` less than [`VERIFIED_FOR`] before `now`.
    fn remembers(&self, id: &str, hash: &str, password: &str, now: Instant) -> bool {
        self.logins.get(id).is_some_and(|l| {
            l.hash == hash
                && now.saturating_duration_since(l.at) < VERIFIED_FOR
                // Constant-time comparison.
                && hmac::verify(&self.key, password.as_bytes(), l.tag.as_ref()).is_ok()
        })
    }

    /// Remembers that `password` verified against `hash` for `id` at `now`.
    fn remember(&mut self, id: &str, hash: &str, password: &str, now: Instant) {
        if self.logins.len() >= MAX_VERIFIED && !self.logins.contains_key(id) {
            self.logins
                .retain(|_, l| now.saturating_duration_since(l.at) < VERIFIED_FOR);
            if self.logins.len() >= MAX_VERIFIED {
                // Full of recent logins: this one is simply checked with argon2 next time.
                return;
            }
        }
        let login = Login {
            hash: hash.to_owned(),
            tag: hmac::sign(&self.key, password.as_bytes()),
            at: now,
        };
        self.logins.insert(id.to_owned(), login);
    }
}

/// An argon2 hash of a random password nobody knows, made once with the same parameters as
/// every device's.
fn stand_in_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password(&uuid::Uuid::new_v4().to_string()).unwrap_or_default())
}

/// What tells one version of the devices file from another: its modification time, inode and
/// size. [`save`] renames a new file over the old one, so a change gets a new inode even when two
/// changes fall in the same tick of a coarse file-system clock.
type Stamp = (SystemTime, u64, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.ino(), m.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn passwords_are_hashed_checked_and_revoked_by_removal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DEVICES_FILE);
        let mut devices = BTreeMap::new();
        devices.insert(
            "d1".to_owned(),
            Device {
                id: "d1".into(),
                thing: Some("kitchen".into()),
                policy: None,
                password_hash: Some(hash_password("s3cret").unwrap()),
                certificate_sha256: None,
            },
        );
        save(&path, &devices).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("s3cret") && text.contains("$argon2id$"),
            "{text}"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let ids = Identities::open(path.clone()).unwrap();
        let accepted = |c: PasswordCheck| match c {
            PasswordCheck::Accepted { device, remembered } => {
                Some((device.thing().to_owned(), remembered))
            }
            _ => None,
        };
        assert_eq!(
            accepted(ids.check_password("d1", "s3cret", LOCAL).await),
            Some(("kitchen".into(), false))
        );
        assert_eq!(
            accepted(ids.check_password("d1", "s3cret", LOCAL).await),
            Some(("kitchen".into(), true)),
            "a reconnect is remembered"
        );
        assert_eq!(
            ids.check_password("d1", "wrong", LOCAL).await,
            PasswordCheck::Refused
        );
        assert_eq!(
            ids.check_password("d2", "s3cret", LOCAL).await,
            PasswordCheck::Refused
        );

        // Removal is seen at once, without a restart, even within one tick of the file clock,
        // and the remembered login does not outlive it.
        save(&path, &BTreeMap::new()).unwrap();
        assert_eq!(
            ids.check_password("d1", "s3cret", LOCAL).await,
            PasswordCheck::Refused
        );
    }

    #[test]
    fn a_verified_login_is_remembered_for_its_password_and_hash_only_and_not_for_long() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"test key");
        let mut v = Verified::new(key);
        let t0 = Instant::now();
        v.remember("d1", "$hash1", "pw", t0);
        let soon = t0 + Duration::from_secs(1);
        assert!(v.remembers("d1", "$hash1", "pw", soon));
        assert!(!v.remembers("d1", "$hash1", "pW", soon), "another password");
        assert!(
            !v.remembers("d1", "$hash2", "pw", soon),
            "the device's hash changed"
        );
        assert!(!v.remembers("d2", "$hash1", "pw", soon), "another device");
        assert!(
            !v.remembers("d1", "$hash1", "pw", t0 + VERIFIED_FOR),
            "forgotten after VERIFIED_FOR"
        );
        // Full of recent logins, a new one is not remembered; expired ones make room.
        for n in 1..MAX_VERIFIED {
            v.remember(&format!("x{n}"), "$h", "pw", t0);
        }
        v.remember("late", "$h", "pw", soon);
        assert!(!v.remembers("late", "$h", "pw", soon));
        let later = t0 + VERIFIED_FOR;
        v.remember("late", "$h", "pw", later);
        assert!(v.remembers("late", "$h", "pw", later));
        assert_eq!(v.logins.len(), 1);
    }

    #[test]
    fn a_broken_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DEVICES_FILE);
        std::fs::write(&path, "[[device]]\nid = \"a\"\n[[device]]\nid = \"a\"\n").unwrap();
        assert!(load(&path)
            .unwrap_err()
            .to_string()
            .contains("listed twice"));
        std::fs::write(&path, "[[device]]\nname = \"a\"\n").unwrap();
        assert!(load(&path)
            .unwrap_err()
            .to_string()
            .contains("unknown field"));
    }
}
