//! Client tokens: how a shadow request and its answer are paired.
//!
//! "Device Shadow service documents", Client token: a request may carry a `clientToken`, which the
//! service echoes in its answer; "The client token can be no longer than 64 bytes". The shadow
//! service validates it (a bad one is a 400); the gateway's own components use it to find the
//! answer to each of their requests.

use serde_json::{Map, Value};

/// "The client token can be no longer than 64 bytes" ("Device Shadow service documents", Client token).
pub const MAX_CLIENT_TOKEN_BYTES: usize = 64;

/// A `clientToken` that is not a string of at most [`MAX_CLIENT_TOKEN_BYTES`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("clientToken must be a string of at most {MAX_CLIENT_TOKEN_BYTES} bytes")]
pub struct InvalidClientToken;

/// The `clientToken` field of a request or answer document: `None` when it has none.
pub fn token_field(doc: &Map<String, Value>) -> Result<Option<&str>, InvalidClientToken> {
    match doc.get("clientToken") {
        None => Ok(None),
        Some(Value::String(token)) if token.len() <= MAX_CLIENT_TOKEN_BYTES => Ok(Some(token)),
        Some(_) => Err(InvalidClientToken),
    }
}

/// A payload's valid client token, if it is a JSON object that has one: to echo in an answer, and
/// to match answers to requests.
pub fn client_token_of(payload: &[u8]) -> Option<String> {
    match serde_json::from_slice(payload) {
        Ok(Value::Object(doc)) => token_field(&doc).ok().flatten().map(String::from),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_found_only_when_valid() {
        assert_eq!(
            client_token_of(br#"{"clientToken":"abc","state":{}}"#).as_deref(),
            Some("abc")
        );
        assert_eq!(client_token_of(br#"{"state":{}}"#), None);
        assert_eq!(client_token_of(br#"{"clientToken":7}"#), None);
        let long = format!(
            r#"{{"clientToken":"{}"}}"#,
            "x".repeat(MAX_CLIENT_TOKEN_BYTES + 1)
        );
        assert_eq!(client_token_of(long.as_bytes()), None);
        let max = "x".repeat(MAX_CLIENT_TOKEN_BYTES);
        let doc = format!(r#"{{"clientToken":"{max}"}}"#);
        assert_eq!(client_token_of(doc.as_bytes()), Some(max));
        assert_eq!(client_token_of(b"  "), None);
        assert_eq!(client_token_of(b"[1]"), None);
        assert_eq!(client_token_of(b"\xff"), None);
    }
}
