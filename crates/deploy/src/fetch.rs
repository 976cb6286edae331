//! Fetching an artifact's bytes and checking them against the document's SHA-256 (blocking: the
//! shell runs it on the blocking pool).

use std::io::Read;

use grove_functions_host::runtime::MAX_MODULE_BYTES;

use crate::document::{Artifact, Source};

/// The artifact's bytes, checked against its hash; `Err`: why not, for the deployment's status.
pub fn fetch(artifact: &Artifact) -> Result<Vec<u8>, String> {
    let bytes = match &artifact.source {
        Source::Inline(bytes) => bytes.clone(),
        Source::File(path) => {
            let file = std::fs::File::open(path).map_err(|e| format!("cannot read {path}: {e}"))?;
            // One byte more than the limit tells a module that is too large from one that fits.
            let mut bytes = Vec::new();
            file.take(MAX_MODULE_BYTES as u64 + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| format!("cannot read {path}: {e}"))?;
            if bytes.len() > MAX_MODULE_BYTES {
                return Err(format!(
                    "{path} is larger than a module may be ({MAX_MODULE_BYTES} bytes)"
                ));
            }
            bytes
        }
        Source::Url(url) => {
            return Err(format!(
                "{url}: fetching artifacts over HTTPS is not built yet (phase 2 of deployments); \
                 use `file` or `inline`"
            ))
        }
    };
    artifact
        .verify(&bytes)
        .map_err(|e| format!("{}: {e}", artifact.source))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    fn file(bytes: &[u8], hash_of: &[u8]) -> (tempfile::NamedTempFile, Artifact) {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), bytes).unwrap();
        let artifact = Artifact {
            sha256: Sha256::digest(hash_of).into(),
            source: Source::File(f.path().to_str().unwrap().to_owned()),
        };
        (f, artifact)
    }

    #[test]
    fn a_file_is_read_and_checked_by_hash() {
        let (_f, artifact) = file(b"module", b"module");
        assert_eq!(fetch(&artifact).unwrap(), b"module");
        let (_f, artifact) = file(b"module", b"other");
        assert!(fetch(&artifact)
            .unwrap_err()
            .contains("artifact hash mismatch"));
    }

    #[test]
    fn a_file_larger_than_a_module_may_be_is_refused_without_reading_it_all() {
        // One byte over the limit; and an endless stream, which is refused after the limit too
        // (reading stops one byte past it), not read until memory runs out.
        let big = vec![0u8; MAX_MODULE_BYTES + 1];
        let (_f, artifact) = file(&big, &big);
        assert!(fetch(&artifact)
            .unwrap_err()
            .contains("larger than a module may be"));
        let zero = Artifact {
            sha256: [0; 32],
            source: Source::File("/dev/zero".into()),
        };
        assert!(fetch(&zero)
            .unwrap_err()
            .contains("larger than a module may be"));
    }

    #[test]
    fn a_missing_file_and_a_url_say_why() {
        let missing = Artifact {
            sha256: [0; 32],
            source: Source::File("/nonexistent/m.wasm".into()),
        };
        assert!(fetch(&missing)
            .unwrap_err()
            .starts_with("cannot read /nonexistent/m.wasm"));
        let url = Artifact {
            sha256: [0; 32],
            source: Source::Url("https://127.0.0.1/m.wasm".into()),
        };
        assert!(fetch(&url).unwrap_err().contains("not built yet"));
    }
}
