//! The deployment document: what a gateway should run, as one JSON document (pure: parse + check).
//!
//! JSON rather than TOML because the same document is an AWS IoT Jobs job document (phase 2 of
//! issue 19), and those are JSON. Format 1:
//!
//! ```json
//! {
//!   "format": 1,
//!   "id": "2026-12-07.1",
//!   "functions": [{
//!     "name": "threshold",
//!     "manifest": "name = \"threshold\"\ntriggers = [\"sensors/+/telemetry\"]\n",
//!     "module": { "sha256": "9f86…", "size": 48213, "url": "https://bucket.s3.amazonaws.com/t.wasm?X-Amz-…" },
//!     "aliases": { "live": 100, "canary": 10 }
//!   }],
//!   "rules": [{ "name": "hot", "sql": "SELECT * FROM 'sensors/+/telemetry' WHERE t > 30",
//!               "actions": [{ "republish": { "topic": "alerts/hot" } }] }],
//!   "health": { "soak_s": 30, "max_function_errors": 0, "max_rule_errors": 0, "max_dead_letters": 0 }
//! }
//! ```
//!
//! - A function's module is named by its SHA-256 and fetched from exactly one place: `file` (an
//!   absolute path on the gateway), `url` (`https://` only, e.g. an S3 presigned URL: AWS IoT Jobs
//!   puts one in place of `${aws:iot:s3-presigned-url:...}` when it hands the document over) or
//!   `inline` (base64, at most [`MAX_INLINE`] bytes once decoded, so that a job document stays
//!   within AWS IoT Jobs' 32 KB). The bytes are always checked against the hash, inline ones
//!   included. `size` (bytes) is required with `url`: the download stops there, so a server cannot
//!   make the gateway fetch more than the document declared; with `file` and `inline` it is
//!   optional and checked when given.
//! - `aliases` maps an alias to the percent of its traffic the deployed version gets: 100 moves the
//!   alias; less keeps the rest on the version the alias served before (a weighted alias, the
//!   functions component's canary). Deployed versions are numbered by the gateway, so a document
//!   cannot name a version number.
//! - `rules` are `[[rules]]` tables of `grove.toml` written as JSON; they replace the running
//!   rules as a whole (`[]`: no rules), and from the first committed deployment with `rules` on,
//!   they are the gateway's rules instead of `grove.toml`'s. A document without `rules` leaves the
//!   rules as they are. This core only checks that each is an object with a unique `name`; the
//!   shell compiles them with the rules component at the staging step (part of the health check).
//! - Functions the document does not name are left as they are (removing one is `grove fn
//!   remove`'s, not a deployment's, for now).
//! - `health` overrides the soak period and the thresholds ([`Health`] has the defaults).
//!
//! Configuration sections changeable by a deployment: for now none beyond functions and rules,
//! and an unknown key (a `config` section included) is refused rather than ignored. The plan
//! (decided, not built): `[cloud]` forward filters and `[[policies]]` can change at runtime (the
//! forwarder and the per-packet policy check read them per message); listeners, TLS material, the
//! data directory, the cloud endpoint and identity, and the broker's and functions' sizing limits
//! (queue capacities, the wasmtime pooling allocator) are fixed when the gateway starts (sockets
//! bound, pools allocated), so they need a restart and stay in `grove.toml`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::health::Health;

/// The one format this gateway reads.
pub const FORMAT: u32 = 1;
/// Largest inline module, decoded (AWS IoT Jobs documents are at most 32 KB, base64 included).
pub const MAX_INLINE: usize = 24 * 1024;
/// Largest document accepted at all.
pub const MAX_DOCUMENT: usize = 1024 * 1024;
/// Longest soak a document may ask for (a day: longer is a forgotten deployment, not a soak).
pub const MAX_SOAK: Duration = Duration::from_secs(24 * 3600);

/// A checked deployment document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    /// Its identifier, `[A-Za-z0-9._-]{1,64}`: unique in the gateway's history.
    pub id: String,
    /// The desired functions, by name.
    pub functions: Vec<Function>,
    /// The desired rules (each a JSON object with a `name`), in order; `None` when the document
    /// leaves the rules alone (no `rules` key), `Some(vec![])` when it wants none.
    pub rules: Option<Vec<serde_json::Map<String, serde_json::Value>>>,
    /// The health check's soak and thresholds.
    pub health: Health,
}

/// A desired function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// The function's name (its manifest must say the same; checked at staging).
    pub name: String,
    /// The manifest's TOML text, parsed by the functions component at staging.
    pub manifest: String,
    /// The module.
    pub module: Artifact,
    /// Alias name to the percent (1..=100) of its traffic the deployed version gets.
    pub aliases: BTreeMap<String, u8>,
}

/// A module: its hash, its size and where its bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// The SHA-256 of the bytes.
    pub sha256: [u8; 32],
    /// The size the document declares (required with a URL): more is refused.
    pub size: Option<u64>,
    /// Where to get them.
    pub source: Source,
}

/// Where an artifact's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An absolute path on the gateway.
    File(String),
    /// An `https://` URL.
    Url(String),
    /// The bytes themselves (decoded from the document's base64).
    Inline(Vec<u8>),
}

/// Why a document is refused: the field at fault (`functions[1].module.sha256`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    /// Not JSON, an unknown key or a wrong type.
    #[error("the deployment document is not valid: {0}")]
    Syntax(String),
    /// Larger than [`MAX_DOCUMENT`].
    #[error("the deployment document is {0} bytes, more than {MAX_DOCUMENT}")]
    TooLarge(usize),
    /// A value is out of range or malformed.
    #[error("deployment `{field}`: {message}")]
    Invalid {
        /// The field at fault.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// An artifact's bytes do not have the hash the document names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("artifact hash mismatch: the document names {expected}, the bytes hash to {actual}")]
pub struct HashMismatch {
    /// The document's hash (hex).
    pub expected: String,
    /// The bytes' hash (hex).
    pub actual: String,
}

impl Artifact {
    /// Checks `bytes` against the artifact's hash.
    pub fn verify(&self, bytes: &[u8]) -> Result<(), HashMismatch> {
        let actual: [u8; 32] = Sha256::digest(bytes).into();
        if actual == self.sha256 {
            Ok(())
        } else {
            Err(HashMismatch {
                expected: hex(&self.sha256),
                actual: hex(&actual),
            })
        }
    }
}

/// Lower-case hex of a hash.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(path) => write!(f, "file {path}"),
            // A presigned URL's query is its signature: it is not for logs or statuses.
            Source::Url(url) => write!(
                f,
                "url {}",
                url.split_once('?').map_or(url.as_str(), |(u, _)| u)
            ),
            Source::Inline(bytes) => write!(f, "inline ({} bytes)", bytes.len()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocument {
    format: u32,
    id: String,
    #[serde(default)]
    functions: Vec<RawFunction>,
    rules: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    health: RawHealth,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFunction {
    name: String,
    manifest: String,
    module: RawArtifact,
    #[serde(default)]
    aliases: BTreeMap<String, u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArtifact {
    sha256: String,
    size: Option<u64>,
    file: Option<String>,
    url: Option<String>,
    inline: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    soak_s: Option<u64>,
    max_function_errors: Option<u64>,
    max_rule_errors: Option<u64>,
    max_dead_letters: Option<u64>,
}

/// Whether `id` is a valid deployment (or function, or alias) identifier.
fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> DocumentError {
    DocumentError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

impl Deployment {
    /// Parses and checks a document.
    pub fn parse(text: &[u8]) -> Result<Deployment, DocumentError> {
        if text.len() > MAX_DOCUMENT {
            return Err(DocumentError::TooLarge(text.len()));
        }
        let raw: RawDocument =
            serde_json::from_slice(text).map_err(|e| DocumentError::Syntax(e.to_string()))?;
        if raw.format != FORMAT {
            return Err(invalid(
                "format",
                format!(
                    "format {} is not known (this gateway reads {FORMAT})",
                    raw.format
                ),
            ));
        }
        if !valid_id(&raw.id) {
            return Err(invalid("id", "must be 1 to 64 of [A-Za-z0-9._-]"));
        }
        let mut names = BTreeSet::new();
        let mut functions = Vec::with_capacity(raw.functions.len());
        for (i, f) in raw.functions.into_iter().enumerate() {
            let at = |field: &str| format!("functions[{i}].{field}");
            if !valid_id(&f.name) || f.name.contains('.') {
                return Err(invalid(at("name"), "must be 1 to 64 of [A-Za-z0-9_-]"));
            }
            if !names.insert(f.name.clone()) {
                return Err(invalid(at("name"), format!("`{}` appears twice", f.name)));
            }
            for (alias, percent) in &f.aliases {
                if !valid_id(alias) || alias.contains('.') || alias == "$LATEST" {
                    return Err(invalid(
                        at(&format!("aliases.{alias}")),
                        "an alias name is 1 to 64 of [A-Za-z0-9_-]",
                    ));
                }
                if !(1..=100).contains(percent) {
                    return Err(invalid(
                        at(&format!("aliases.{alias}")),
                        format!("{percent} is not a percent from 1 to 100"),
                    ));
                }
            }
            let module = artifact(f.module, &at("module"))?;
            functions.push(Function {
                name: f.name,
                manifest: f.manifest,
                module,
                aliases: f.aliases,
            });
        }
        let mut rule_names = BTreeSet::new();
        let mut rules = raw.rules.as_ref().map(|r| Vec::with_capacity(r.len()));
        for (i, rule) in raw.rules.into_iter().flatten().enumerate() {
            let serde_json::Value::Object(rule) = rule else {
                return Err(invalid(format!("rules[{i}]"), "a rule is an object"));
            };
            let Some(name) = rule.get("name").and_then(|n| n.as_str()) else {
                return Err(invalid(
                    format!("rules[{i}].name"),
                    "a rule has a string `name`",
                ));
            };
            if !rule_names.insert(name.to_owned()) {
                return Err(invalid(
                    format!("rules[{i}].name"),
                    format!("`{name}` appears twice"),
                ));
            }
            if let Some(rules) = &mut rules {
                rules.push(rule);
            }
        }
        let defaults = Health::default();
        let soak = raw.health.soak_s.map_or(defaults.soak, Duration::from_secs);
        if soak > MAX_SOAK {
            return Err(invalid("health.soak_s", "at most 86400 (a day)"));
        }
        Ok(Deployment {
            id: raw.id,
            functions,
            rules,
            health: Health {
                soak,
                max_function_errors: raw
                    .health
                    .max_function_errors
                    .unwrap_or(defaults.max_function_errors),
                max_rule_errors: raw
                    .health
                    .max_rule_errors
                    .unwrap_or(defaults.max_rule_errors),
                max_dead_letters: raw
                    .health
                    .max_dead_letters
                    .unwrap_or(defaults.max_dead_letters),
            },
        })
    }
}

fn artifact(raw: RawArtifact, at: &str) -> Result<Artifact, DocumentError> {
    let hash = raw.sha256.to_ascii_lowercase();
    let mut sha256 = [0u8; 32];
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(format!("{at}.sha256"), "must be 64 hex digits"));
    }
    for (i, byte) in sha256.iter_mut().enumerate() {
        // Checked above: two hex digits.
        *byte = u8::from_str_radix(&hash[2 * i..2 * i + 2], 16).unwrap_or_default();
    }
    let source = match (raw.file, raw.url, raw.inline) {
        (Some(path), None, None) => {
            if !path.starts_with('/') {
                return Err(invalid(format!("{at}.file"), "must be an absolute path"));
            }
            Source::File(path)
        }
        (None, Some(url), None) => {
            if !url.starts_with("https://") || url.len() <= "https://".len() {
                return Err(invalid(format!("{at}.url"), "must be an https:// URL"));
            }
            if raw.size.is_none() {
                return Err(invalid(
                    format!("{at}.size"),
                    "a module fetched by URL needs its size in bytes (the download stops there)",
                ));
            }
            Source::Url(url)
        }
        (None, None, Some(b64)) => {
            // A base64 text longer than this cannot decode to MAX_INLINE bytes or fewer: refuse
            // it before decoding, so a huge inline field costs no allocation.
            if b64.len() > MAX_INLINE.div_ceil(3) * 4 + 4 {
                return Err(invalid(
                    format!("{at}.inline"),
                    format!("inline modules are at most {MAX_INLINE} bytes: use `url` or `file`"),
                ));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| invalid(format!("{at}.inline"), format!("not base64: {e}")))?;
            if bytes.len() > MAX_INLINE {
                return Err(invalid(
                    format!("{at}.inline"),
                    format!("inline modules are at most {MAX_INLINE} bytes: use `url` or `file`"),
                ));
            }
            Source::Inline(bytes)
        }
        _ => {
            return Err(invalid(
                at,
                "exactly one of `file`, `url` and `inline` says where the module is",
            ))
        }
    };
    if raw.size == Some(0) {
        return Err(invalid(format!("{at}.size"), "a module is not empty"));
    }
    Ok(Artifact {
        sha256,
        size: raw.size,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH_ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn doc(functions: &str) -> String {
        format!(r#"{{"format": 1, "id": "d1", "functions": [{functions}]}}"#)
    }

    fn function(module: &str) -> String {
        format!(r#"{{"name": "f", "manifest": "name = \"f\"", "module": {module}}}"#)
    }

    fn error(text: &str) -> String {
        Deployment::parse(text.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn a_full_document_parses() {
        let text = format!(
            r#"{{"format": 1, "id": "2026-12-07.1",
                "functions": [{{"name": "f", "manifest": "name = \"f\"",
                  "module": {{"sha256": "{HASH_ABC}", "size": 3, "url": "https://127.0.0.1/f.wasm"}},
                  "aliases": {{"live": 100, "canary": 10}}}}],
                "rules": [{{"name": "r", "sql": "SELECT * FROM 'a'"}}],
                "health": {{"soak_s": 5, "max_function_errors": 2}}}}"#
        );
        let d = Deployment::parse(text.as_bytes()).unwrap();
        assert_eq!(d.id, "2026-12-07.1");
        assert_eq!(d.functions[0].aliases["canary"], 10);
        assert_eq!(
            d.functions[0].module.source,
            Source::Url("https://127.0.0.1/f.wasm".into())
        );
        assert_eq!(d.functions[0].module.size, Some(3));
        assert_eq!(d.rules.as_ref().unwrap()[0]["name"], "r");
        assert_eq!(d.health.soak, Duration::from_secs(5));
        assert_eq!(d.health.max_function_errors, 2);
        assert_eq!(d.health.max_rule_errors, Health::default().max_rule_errors);
    }

    #[test]
    fn rules_absent_are_left_alone_and_an_empty_list_means_none() {
        let absent = Deployment::parse(br#"{"format": 1, "id": "d"}"#).unwrap();
        assert_eq!(absent.rules, None);
        let empty = Deployment::parse(br#"{"format": 1, "id": "d", "rules": []}"#).unwrap();
        assert_eq!(empty.rules, Some(Vec::new()));
    }

    #[test]
    fn an_inline_module_is_verified_by_its_hash() {
        let text = doc(&function(&format!(
            r#"{{"sha256": "{}", "inline": "YWJj"}}"#,
            HASH_ABC.to_uppercase()
        )));
        let d = Deployment::parse(text.as_bytes()).unwrap();
        let module = &d.functions[0].module;
        assert_eq!(module.source, Source::Inline(b"abc".to_vec()));
        assert_eq!(module.verify(b"abc"), Ok(()));
        let wrong = module.verify(b"abd").unwrap_err();
        assert_eq!(wrong.expected, HASH_ABC);
        assert_ne!(wrong.actual, HASH_ABC);
    }

    #[test]
    fn bad_documents_are_refused_naming_the_field() {
        let file =
            |path: &str| function(&format!(r#"{{"sha256": "{HASH_ABC}", "file": "{path}"}}"#));
        let cases: &[(String, &str)] = &[
            ("not json".into(), "not valid"),
            (
                r#"{"format": 2, "id": "d"}"#.into(),
                "`format`: format 2 is not known",
            ),
            (r#"{"format": 1, "id": "a b"}"#.into(), "`id`"),
            (
                r#"{"format": 1, "id": "d", "config": {}}"#.into(),
                "unknown field `config`",
            ),
            (
                doc(&function(r#"{"sha256": "12", "file": "/a"}"#)),
                "functions[0].module.sha256",
            ),
            (
                doc(&file("relative.wasm")),
                "functions[0].module.file`: must be an absolute path",
            ),
            (
                doc(&function(&format!(
                    r#"{{"sha256": "{HASH_ABC}", "url": "http://a/b"}}"#
                ))),
                "must be an https:// URL",
            ),
            (
                doc(&function(&format!(
                    r#"{{"sha256": "{HASH_ABC}", "file": "/a", "url": "https://a/b"}}"#
                ))),
                "exactly one of",
            ),
            (
                doc(&function(&format!(
                    r#"{{"sha256": "{HASH_ABC}", "url": "https://a/b"}}"#
                ))),
                "functions[0].module.size`: a module fetched by URL needs its size",
            ),
            (
                doc(&function(&format!(
                    r#"{{"sha256": "{HASH_ABC}", "size": 0, "file": "/a"}}"#
                ))),
                "functions[0].module.size`: a module is not empty",
            ),
            (
                doc(&function(&format!(
                    r#"{{"sha256": "{HASH_ABC}", "inline": "!!"}}"#
                ))),
                "not base64",
            ),
            (
                doc(&format!("{},{}", file("/a"), file("/b"))),
                "functions[1].name`: `f` appears twice",
            ),
            (
                doc(&format!(
                    r#"{{"name": "f", "manifest": "", "aliases": {{"live": 0}},
                        "module": {{"sha256": "{HASH_ABC}", "file": "/a"}}}}"#
                )),
                "functions[0].aliases.live`: 0 is not a percent",
            ),
            (
                r#"{"format": 1, "id": "d", "rules": [{"name": "r"}, {"name": "r"}]}"#.into(),
                "rules[1].name`: `r` appears twice",
            ),
            (
                r#"{"format": 1, "id": "d", "rules": [3]}"#.into(),
                "rules[0]`: a rule is an object",
            ),
            (
                r#"{"format": 1, "id": "d", "health": {"soak_s": 100000}}"#.into(),
                "health.soak_s",
            ),
        ];
        for (text, expected) in cases {
            let message = error(text);
            assert!(message.contains(expected), "{text}: {message}");
        }
    }

    #[test]
    fn an_oversized_inline_module_is_refused_before_decoding() {
        let b64 = "A".repeat(MAX_INLINE * 2);
        let text = doc(&function(&format!(
            r#"{{"sha256": "{HASH_ABC}", "inline": "{b64}"}}"#
        )));
        assert!(error(&text).contains("inline modules are at most"));
    }

    #[test]
    fn an_oversized_document_is_refused() {
        let text = " ".repeat(MAX_DOCUMENT + 1);
        assert_eq!(
            Deployment::parse(text.as_bytes()),
            Err(DocumentError::TooLarge(MAX_DOCUMENT + 1))
        );
    }
}
