//! The function manifest: the TOML file deployed beside a `.wasm` module (pure: parse + validate).
//!
//! The format is ABI v1's (`functions/ABI.md`): name, handler, triggers, `trigger_qualifier`
//! (which version or alias trigger events go to), limits, a `[config]` string map and `[grants]`.
//! Parsing is strict (`deny_unknown_fields`) so that a misspelt grant is an error at deploy, never
//! a silently missing permission.

use std::collections::BTreeMap;

use serde::Deserialize;

use grove_auth::policy::{matches, valid_filter};

/// Default memory limit of one instance, in MiB.
pub const DEFAULT_MEMORY_MB: u32 = 16;
/// Default invocation timeout.
pub const DEFAULT_TIMEOUT_MS: u64 = 3000;
/// Longest timeout a manifest may ask for (a sync caller waits that long).
pub const MAX_TIMEOUT_MS: u64 = 900_000;
/// Default handler export.
pub const DEFAULT_HANDLER: &str = "grove_handle";

/// Whether an instance serves several events or only one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InstanceMode {
    /// Keep the instance after a successful invocation and hand it the next event, like a Lambda
    /// execution context: globals and memory survive between events (a trap discards it).
    #[default]
    Reuse,
    /// A fresh instance per event (copy-on-write memory image: no state leaks between events).
    Fresh,
}

/// A validated manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The function's name, `[A-Za-z0-9_-]{1,64}`.
    pub name: String,
    /// The export called for each event.
    pub handler: String,
    /// MQTT filters whose local messages become async events.
    pub triggers: Vec<String>,
    /// Which version or alias trigger events invoke (`$LATEST` unless the manifest says).
    pub trigger_qualifier: String,
    /// Memory limit of one instance, in MiB.
    pub memory_limit_mb: u32,
    /// Time limit of one invocation.
    pub timeout_ms: u64,
    /// Invocations of this function running at once.
    pub max_concurrency: u32,
    /// Instance reuse.
    pub instance: InstanceMode,
    /// What `config_get` reads.
    pub config: BTreeMap<String, String>,
    /// What the function may do.
    pub grants: Grants,
}

/// The capabilities a function has; everything absent is denied.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// MQTT filters covering the topics it may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Thing names (or `+` for any) whose shadows it may read.
    #[serde(default)]
    pub shadow_read: Vec<String>,
    /// Thing names (or `+` for any) whose shadows it may update.
    #[serde(default)]
    pub shadow_update: Vec<String>,
    /// Whether it has a key-value namespace.
    #[serde(default)]
    pub kv: bool,
}

impl Grants {
    /// Whether publishing to `topic` is granted.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|f| matches(f, topic))
    }

    /// Whether reading `thing`'s shadows is granted.
    pub fn may_read_shadow(&self, thing: &str) -> bool {
        thing_granted(&self.shadow_read, thing)
    }

    /// Whether updating `thing`'s shadows is granted.
    pub fn may_update_shadow(&self, thing: &str) -> bool {
        thing_granted(&self.shadow_update, thing)
    }
}

fn thing_granted(patterns: &[String], thing: &str) -> bool {
    patterns.iter().any(|p| p == "+" || p == thing)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    handler: Option<String>,
    #[serde(default)]
    triggers: Vec<String>,
    trigger_qualifier: Option<String>,
    memory_limit_mb: Option<u32>,
    timeout_ms: Option<u64>,
    max_concurrency: Option<u32>,
    #[serde(default)]
    instance: InstanceMode,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    grants: Grants,
}

/// Why a manifest is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not TOML, an unknown key or a wrong type.
    #[error("the manifest is not valid: {0}")]
    Syntax(String),
    /// A value is out of range or malformed.
    #[error("manifest `{key}`: {message}")]
    Invalid {
        /// The key at fault.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Whether `name` is a valid function (or alias) name: `[A-Za-z0-9_-]{1,64}`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Manifest {
    /// Parses and validates a manifest; `max_memory_mb` is the gateway's cap.
    pub fn parse(text: &str, max_memory_mb: u32) -> Result<Manifest, ManifestError> {
        let raw: RawManifest =
            toml::from_str(text).map_err(|e| ManifestError::Syntax(e.to_string()))?;
        let invalid = |key: &'static str, message: String| ManifestError::Invalid { key, message };
        if !valid_name(&raw.name) {
            return Err(invalid(
                "name",
                format!("{:?} must be 1 to 64 of A-Z a-z 0-9 _ -", raw.name),
            ));
        }
        let handler = raw.handler.unwrap_or_else(|| DEFAULT_HANDLER.to_owned());
        if handler.is_empty() {
            return Err(invalid("handler", "must not be empty".into()));
        }
        // Triggers may overlap: a message is one event of a function however many of its
        // triggers match it (`triggers::targets`).
        for t in &raw.triggers {
            if !valid_filter(t) {
                return Err(invalid(
                    "triggers",
                    format!("{t:?} is not a valid MQTT filter"),
                ));
            }
            if t.starts_with("$grove/functions/") {
                return Err(invalid(
                    "triggers",
                    format!("{t:?}: functions' own topics cannot trigger functions"),
                ));
            }
        }
        let memory_limit_mb = raw.memory_limit_mb.unwrap_or(DEFAULT_MEMORY_MB);
        if memory_limit_mb == 0 || memory_limit_mb > max_memory_mb {
            return Err(invalid(
                "memory_limit_mb",
                format!(
                    "{memory_limit_mb} is out of range: the gateway allows 1 to {max_memory_mb}"
                ),
            ));
        }
        let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(invalid(
                "timeout_ms",
                format!("{timeout_ms} is out of range: 1 to {MAX_TIMEOUT_MS}"),
            ));
        }
        let max_concurrency = raw.max_concurrency.unwrap_or(1);
        if !(1..=64).contains(&max_concurrency) {
            return Err(invalid(
                "max_concurrency",
                format!("{max_concurrency} is out of range: 1 to 64"),
            ));
        }
        for f in &raw.grants.publish {
            if !valid_filter(f) {
                return Err(invalid(
                    "grants.publish",
                    format!("{f:?} is not a valid MQTT filter"),
                ));
            }
        }
        for (key, list) in [
            ("grants.shadow_read", &raw.grants.shadow_read),
            ("grants.shadow_update", &raw.grants.shadow_update),
        ] {
            if let Some(bad) = list.iter().find(|p| {
                p.as_str() != "+" && grove_shadow_api::names::validate_thing_name(p).is_err()
            }) {
                return Err(invalid(
                    key,
                    format!("{bad:?} is neither a thing name nor \"+\""),
                ));
            }
        }
        let trigger_qualifier = raw
            .trigger_qualifier
            .unwrap_or_else(|| super::routing::LATEST.to_owned());
        if super::routing::Qualifier::parse(&trigger_qualifier).is_err() {
            return Err(invalid(
                "trigger_qualifier",
                format!("{trigger_qualifier:?} is not $LATEST, a version number or an alias name"),
            ));
        }
        Ok(Manifest {
            name: raw.name,
            handler,
            triggers: raw.triggers,
            trigger_qualifier,
            memory_limit_mb,
            timeout_ms,
            max_concurrency,
            instance: raw.instance,
            config: raw.config,
            grants: raw.grants,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_manifest_parses() {
        let m = Manifest::parse(
            r#"
name = "threshold-alert"
handler = "on_event"
triggers = ["sensors/+/telemetry"]
memory_limit_mb = 8
timeout_ms = 1000
max_concurrency = 2
instance = "fresh"
[config]
limit = "30"
[grants]
publish = ["alerts/#"]
shadow_read = ["+"]
shadow_update = ["actuator-1"]
kv = true
"#,
            64,
        )
        .unwrap();
        assert_eq!(m.handler, "on_event");
        assert_eq!(m.instance, InstanceMode::Fresh);
        assert_eq!(m.config["limit"], "30");
        assert!(m.grants.may_publish("alerts/x/y"));
        assert!(!m.grants.may_publish("other"));
        assert!(m.grants.may_read_shadow("anything"));
        assert!(m.grants.may_update_shadow("actuator-1"));
        assert!(!m.grants.may_update_shadow("actuator-2"));
    }

    #[test]
    fn defaults_deny_everything() {
        let m = Manifest::parse("name = \"f\"", 64).unwrap();
        assert_eq!(
            (
                m.handler.as_str(),
                m.memory_limit_mb,
                m.timeout_ms,
                m.max_concurrency
            ),
            ("grove_handle", 16, 3000, 1)
        );
        assert_eq!(m.instance, InstanceMode::Reuse);
        assert_eq!(m.trigger_qualifier, "$LATEST");
        assert!(!m.grants.may_publish("a"));
        assert!(!m.grants.may_read_shadow("a"));
        assert!(!m.grants.kv);
    }

    /// One case per line: the manifest and a fragment of the error.
    #[test]
    fn bad_manifests_say_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("", "missing field `name`"),
            ("name = \"a b\"", "manifest `name`"),
            ("name = \"f\"\ncolour = 1", "unknown field `colour`"),
            (
                "name = \"f\"\ntriggers = [\"a/#/b\"]",
                "not a valid MQTT filter",
            ),
            (
                "name = \"f\"\ntriggers = [\"$grove/functions/g/invoke\"]",
                "cannot trigger",
            ),
            (
                "name = \"f\"\nmemory_limit_mb = 65",
                "the gateway allows 1 to 64",
            ),
            ("name = \"f\"\nmemory_limit_mb = 0", "memory_limit_mb"),
            ("name = \"f\"\ntimeout_ms = 0", "timeout_ms"),
            ("name = \"f\"\nmax_concurrency = 0", "max_concurrency"),
            (
                "name = \"f\"\ninstance = \"shared\"",
                "unknown variant `shared`",
            ),
            (
                "name = \"f\"\n[grants]\npublsh = []",
                "unknown field `publsh`",
            ),
            (
                "name = \"f\"\n[grants]\npublish = [\"a/#/b\"]",
                "grants.publish",
            ),
            (
                "name = \"f\"\n[grants]\nshadow_read = [\"a/b\"]",
                "grants.shadow_read",
            ),
            (
                "name = \"f\"\ntrigger_qualifier = \"x:y\"",
                "trigger_qualifier",
            ),
        ];
        for (text, want) in cases {
            let err = Manifest::parse(text, 64).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
