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
//! Password checks cost argon2's deliberate ~10-50 ms and 19 MiB each, so they run on the
//! blocking pool, at most [`PARALLEL_CHECKS`] at once: a reconnect storm of a thousand devices
//! queues instead of exhausting a Pi's memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

/// The devices file inside the data directory.
pub const DEVICES_FILE: &str = "devices.toml";

/// Password checks running at once.
pub const PARALLEL_CHECKS: usize = 2;

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
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File {
        devices: devices.values().cloned().collect(),
    };
    let text = format!(
        "# Grove device identities, managed by `grove device add|remove`.\n# The gateway re-reads this file when it changes.\n\n{}",
        toml::to_string(&file).map_err(|e| IdentityError::Hash(e.to_string()))?
    );
    let tmp = path.with_extension("toml.tmp");
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
    checks: Semaphore,
    /// Bumped at every reload, so that connected devices re-check their identity.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Identities {
    /// Opens the devices file (which may not exist yet).
    pub fn open(path: PathBuf) -> Result<Identities, IdentityError> {
        let modified = stamp(&path);
        let devices = load(&path)?;
        Ok(Identities {
            path,
            cache: Mutex::new((modified, Arc::new(devices))),
            checks: Semaphore::new(PARALLEL_CHECKS),
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

    /// Checks a password login: the username must be the client id, the device registered with a
    /// password, and the password right.
    pub async fn check_password(
        &self,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> Option<Device> {
        let device = self
            .device(client_id)
            .filter(|d| username == client_id && d.password_hash.is_some());
        // An unknown id (or a device without a password) is checked against a stand-in hash, so
        // that the answer takes as long as for a known device and does not tell which ids exist.
        let hash = device.as_ref().and_then(|d| d.password_hash.clone());
        let _permit = self.checks.acquire().await.ok()?;
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || {
            let hash = hash.unwrap_or_else(|| stand_in_hash().to_owned());
            PasswordHash::new(&hash)
                .map(|h| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &h)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        device.filter(|_| ok)
    }

    /// Checks a certificate login: the device registered with exactly this certificate.
    pub fn check_certificate(&self, client_id: &str, der: &[u8]) -> Option<Device> {
        let device = self.device(client_id)?;
        (device.certificate_sha256.as_deref() == Some(fingerprint(der).as_str())).then_some(device)
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
        assert_eq!(
            ids.check_password("d1", "d1", "s3cret")
                .await
                .unwrap()
                .thing(),
            "kitchen"
        );
        assert!(ids.check_password("d1", "d1", "wrong").await.is_none());
        assert!(
            ids.check_password("d1", "other", "s3cret").await.is_none(),
            "username must be the id"
        );
        assert!(ids.check_password("d2", "d2", "s3cret").await.is_none());

        // Removal is seen at once, without a restart, even within one tick of the file clock.
        save(&path, &BTreeMap::new()).unwrap();
        assert!(ids.check_password("d1", "d1", "s3cret").await.is_none());
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
