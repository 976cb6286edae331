//! The operator's password: an argon2id hash (grove-auth's, as for devices) in
//! `console.passwd` in the data directory, mode 0600, written by `grove console passwd` (and, with
//! a random password it prints once, by `grove init`).
//!
//! The gateway reads the file at each sign-in, so a new password takes effect at once, and a
//! removed file means no one can sign in.

use std::path::{Path, PathBuf};

use crate::ConsoleError;

/// The file's name in the data directory.
pub const PASSWORD_FILE: &str = "console.passwd";

/// The shortest password accepted.
pub const MIN_LENGTH: usize = 8;

/// Where the operator's password hash is kept for the data directory `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(PASSWORD_FILE)
}

/// A new random password for `grove init`: 24 hex digits, 96 bits from the system's random
/// source.
pub fn generate() -> Result<String, ConsoleError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 12];
    (ring::rand::SystemRandom::new().fill(&mut bytes))
        .map_err(|_| ConsoleError::Password("the system's random source failed".into()))?;
    Ok(hex::encode(bytes))
}

/// Sets the operator's password (`grove console passwd`): hashes it and replaces the file.
pub fn set(data_dir: &Path, password: &str) -> Result<(), ConsoleError> {
    if password.chars().count() < MIN_LENGTH {
        return Err(ConsoleError::WeakPassword(MIN_LENGTH));
    }
    let hash = grove_auth::identity::hash_password(password)
        .map_err(|e| ConsoleError::Password(e.to_string()))?;
    std::fs::create_dir_all(data_dir).map_err(|e| ConsoleError::Password(e.to_string()))?;
    grove_auth::identity::write_private(&path(data_dir), &format!("{hash}\n"))
        .map_err(|e| ConsoleError::Password(e.to_string()))
}

/// The stored hash, or `None` when no password was set (or the file cannot be read).
pub(crate) fn load(file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let hash = text.trim();
    (!hash.is_empty()).then(|| hash.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_password_is_stored_hashed_and_private_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        set(dir.path(), "correct horse").unwrap();
        let file = path(dir.path());
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let hash = load(&file).unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains("correct horse"));
        assert!(grove_auth::identity::password_matches(
            &hash,
            "correct horse"
        ));
        assert!(!grove_auth::identity::password_matches(
            &hash,
            "wrong horse"
        ));
    }

    #[test]
    fn a_short_password_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            set(dir.path(), "short"),
            Err(ConsoleError::WeakPassword(8))
        ));
        assert_eq!(load(&path(dir.path())), None);
    }
}
