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
