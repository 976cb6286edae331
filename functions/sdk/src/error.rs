//! The host's negative return codes as a typed error.

use std::fmt;

/// Why a host call failed: ABI v1's negative return codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// -1: the manifest grants no such call (publish topic, shadow, kv). The host logs the denial too.
    #[error("denied: the function's grants do not allow this call")]
    Denied,
    /// -2: a bad argument: invalid UTF-8, an invalid topic (wildcards, empty levels), a bad name.
    #[error("invalid argument (bad UTF-8, topic or name)")]
    Invalid,
    /// -3: too large (payload, value, response body) or too many calls in one invocation.
    #[error("limit exceeded (too large or too many calls)")]
    Limit,
    /// -4: no such shadow, key or config entry. The SDK turns it into `None` where absence is normal.
    #[error("not found")]
    NotFound,
    /// -5: the host could not serve the call now (timeout, store error), or there is no host at all
    /// (the SDK built for a target other than wasm32).
    #[error("unavailable (timeout or store error)")]
    Unavailable,
    /// -6: the shadow service rejected an update; `document` is AWS's rejection document,
    /// e.g. `{"code":409,"message":"Version conflict"}`.
    #[error("rejected by the shadow service: {}", Lossy(.document))]
    Rejected {
        /// The `update/rejected` document.
        document: Vec<u8>,
    },
    /// A negative code this SDK does not know (a newer host); kept so that nothing is lost.
    #[error("unknown host error code {0}")]
    Unknown(i32),
}

impl HostError {
    /// The error for a negative return code. A rejection's document is fetched by the caller, so
    /// `Rejected` comes back with an empty one here.
    pub(crate) fn from_code(code: i32) -> Self {
        match code {
            -1 => Self::Denied,
            -2 => Self::Invalid,
            -3 => Self::Limit,
            -4 => Self::NotFound,
            -5 => Self::Unavailable,
            -6 => Self::Rejected {
                document: Vec::new(),
            },
            other => Self::Unknown(other),
        }
    }

    /// The ABI's return code for this error.
    pub fn code(&self) -> i32 {
        match self {
            Self::Denied => -1,
            Self::Invalid => -2,
            Self::Limit => -3,
            Self::NotFound => -4,
            Self::Unavailable => -5,
            Self::Rejected { .. } => -6,
            Self::Unknown(code) => *code,
        }
    }
}

/// Checks a host call's return code: >= 0 is a length or a count, < 0 an error.
pub(crate) fn check(code: i32) -> Result<usize, HostError> {
    usize::try_from(code).map_err(|_| HostError::from_code(code))
}

/// Shows bytes as text, replacing invalid UTF-8, without allocating when they are valid.
struct Lossy<'a>(&'a [u8]);

impl fmt::Display for Lossy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_read_well() {
        let cases: &[(i32, &str)] = &[
            (-1, "denied: the function's grants do not allow this call"),
            (-2, "invalid argument (bad UTF-8, topic or name)"),
            (-3, "limit exceeded (too large or too many calls)"),
            (-4, "not found"),
            (-5, "unavailable (timeout or store error)"),
            (-6, "rejected by the shadow service: "),
            (-42, "unknown host error code -42"),
        ];
        for &(code, text) in cases {
            let error = HostError::from_code(code);
            assert_eq!(error.code(), code, "{error:?}");
            assert_eq!(error.to_string(), text, "code {code}");
        }
    }

    #[test]
    fn check_passes_lengths_and_maps_errors() {
        assert_eq!(check(0), Ok(0));
        assert_eq!(check(17), Ok(17));
        assert_eq!(check(-4), Err(HostError::NotFound));
    }

    #[test]
    fn rejection_shows_its_document() {
        let error = HostError::Rejected {
            document: br#"{"code":409,"message":"Version conflict"}"#.to_vec(),
        };
        assert_eq!(
            error.to_string(),
            r#"rejected by the shadow service: {"code":409,"message":"Version conflict"}"#
        );
    }
}
