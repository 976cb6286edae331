//! Configuration: `grove.toml`, in two layers.
//!
//! The first layer ([`RawConfig`] and friends) mirrors the file: serde structs with
//! `deny_unknown_fields`, so a typo is an error and not a silently ignored key. The second layer
//! ([`Config`]) is what the gateway runs on: every value resolved, defaulted and validated, each
//! component receiving only its own section. Values that the file can get wrong carry their
//! [`Origin`] (key and line), so that an error found later, at startup (a port already in use, a data
//! directory that cannot be written), still names the key, the file and the line.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::cloud::config::{CloudConfig, RawCloud};
use crate::rules::{RawRule, RuleConfig};
use grove_auth::policy::{self, Policy};

/// The default configuration file written by `grove init`, fully commented.
///
/// A unit test checks that it parses to exactly the built-in defaults, so the comments cannot drift
/// from the code.
pub const DEFAULT_TEMPLATE: &str = include_str!("default-grove.toml");

/// The largest payload MQTT can carry: the remaining length is at most 268,435,455 bytes.
const MQTT_MAX_PACKET: usize = 268_435_455;

/// Where a configured value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file the value was read from; `None` for built-in defaults.
    pub file: Option<PathBuf>,
    /// The dotted key, e.g. `broker.listeners[0].bind`.
    pub key: String,
    /// The 1-based line of the value in the file, when it came from the file.
    pub line: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{}:{}: `{}`", file.display(), line, self.key),
            (Some(file), None) => write!(f, "{}: `{}` (default)", file.display(), self.key),
            (None, _) => write!(f, "`{}` (default)", self.key),
        }
    }
}

/// Everything that can be wrong with a configuration, found while loading it or while starting on it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("{}:{line}:{column}: {message}", file.display())]
    Parse {
        /// The file.
        file: PathBuf,
        /// 1-based line of the offending text.
        line: usize,
        /// 1-based column of the offending text.
        column: usize,
        /// The parser's message, which names the key.
        message: String,
    },
    /// A value is well-typed but impossible (out of range, conflicting, or refused by the machine).
    #[error("{origin}: {message}")]
    Invalid {
        /// The key at fault.
        origin: Origin,
        /// What is wrong with it.
        message: String,
    },
}

/// The file as written. Every section and key is optional; missing ones take the defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    data_dir: Option<Spanned<PathBuf>>,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    broker: RawBroker,
    #[serde(default)]
    ops: RawOps,
    #[serde(default)]
    shadow: RawShadow,
    #[serde(default)]
    policies: Vec<Spanned<Policy>>,
    #[serde(default)]
    rules: Vec<Spanned<RawRule>>,
    cloud: Option<Spanned<RawCloud>>,
    #[serde(default)]
    functions: RawFunctions,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFunctions {
    enabled: Option<bool>,
    max_memory_mb: Option<Spanned<u32>>,
    workers: Option<Spanned<usize>>,
    queue_bound: Option<Spanned<usize>>,
    pool_size: Option<Spanned<u32>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShadow {
    max_state_bytes: Option<Spanned<usize>>,
    max_depth: Option<Spanned<usize>>,
    max_inflight_per_client: Option<Spanned<usize>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    filter: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBroker {
    listeners: Option<Spanned<Vec<RawListener>>>,
    max_connections: Option<Spanned<usize>>,
    max_payload_size: Option<Spanned<usize>>,
    connect_timeout_ms: Option<Spanned<u64>>,
    max_connect_size: Option<Spanned<usize>>,
    max_pending_connections: Option<Spanned<usize>>,
    max_pending_per_address: Option<Spanned<usize>>,
    segment_size: Option<Spanned<usize>>,
    segment_count: Option<Spanned<usize>>,
    max_outgoing_batch: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Option<String>,
    bind: Spanned<SocketAddr>,
    auth: Option<Spanned<AuthMode>>,
    policy: Option<Spanned<String>>,
    tls: Option<Spanned<RawTls>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

/// How devices on a listener prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone may connect (the default on loopback listeners only).
    Anonymous,
    /// Username (= client id) and password, checked against the devices file's argon2 hashes
    /// (the default on other listeners).
    Password,
    /// A client certificate from `tls.client_ca` whose common name is the client id and which is
    /// registered in the devices file.
    Certificate,
}

/// TLS files of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server certificate chain (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// The CA that signs client certificates (PEM), for mutual TLS.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOps {
    enabled: Option<bool>,
    bind: Option<Spanned<SocketAddr>>,
}

/// The resolved configuration the gateway runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The data directory, holding the database.
    pub data_dir: Located<PathBuf>,
    /// The log filter from the file; `GROVE_LOG` and `RUST_LOG` override it.
    pub log_filter: String,
    /// The embedded MQTT broker.
    pub broker: BrokerConfig,
    /// The operations HTTP endpoint, or `None` when disabled.
    pub ops: Option<Located<SocketAddr>>,
    /// The device shadow service.
    pub shadow: ShadowConfig,
    /// The rules, compiled (disabled ones included, marked).
    pub rules: Vec<RuleConfig>,
    /// Cloud sync, when `[cloud]` is configured and enabled; the origin is the section, where
    /// startup errors (unusable TLS files) point.
    pub cloud: Option<Located<CloudConfig>>,
    /// Local functions, or `None` when disabled.
    pub functions: Option<FunctionsConfig>,
}

/// The local functions' section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionsConfig {
    /// The most memory any function instance may have, in MiB (manifests ask for less).
    pub max_memory_mb: u32,
    /// Invocations running at once across all functions (threads of the blocking pool).
    pub workers: usize,
    /// Async events one function may have queued; further events go to its dead-letter topic.
    pub queue_bound: usize,
    /// Function instances that may exist at once (the pooling allocator's slots).
    pub pool_size: u32,
}

/// The device shadow service's section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowConfig {
    /// Largest state (desired plus reported, compact JSON) a shadow may hold; AWS's is 8 KiB.
    pub max_state_bytes: usize,
    /// Deepest nesting of a request's `desired` or `reported` section, the section's object being
    /// level 1 (AWS's Device Shadow limits; see `shadow::document::DEFAULT_MAX_DEPTH`); AWS's is 6.
    pub max_depth: usize,
    /// Requests one client may have unanswered at once (taken by the shadow service and not yet
    /// answered, across batches) before the next one gets 429; AWS's is 10.
    pub max_inflight_per_client: usize,
}

/// A value with the place it was configured, so startup errors can point at it.
///
/// Two `Located` values are equal when their values are: where a value was written is not part of
/// the configuration's meaning.
#[derive(Debug, Clone)]
pub struct Located<T> {
    /// The value.
    pub value: T,
    /// Where it was set.
    pub origin: Origin,
}

/// The embedded broker's section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    /// TCP listeners; each accepts MQTT 3.1.1 and MQTT 5 on the same port.
    pub listeners: Vec<ListenerConfig>,
    /// Most authenticated device connections at once; more are refused at CONNECT.
    pub max_connections: usize,
    /// Largest accepted PUBLISH payload, in bytes; a larger one closes that client's connection.
    pub max_payload_size: usize,
    /// How long a new TCP connection may take to send CONNECT and authenticate.
    pub connect_timeout_ms: u64,
    /// Largest CONNECT (after its fixed header, will included) read from a peer that has not
    /// authenticated yet.
    pub max_connect_size: usize,
    /// Most connections per listener that have not authenticated yet; then the listener stops
    /// accepting until one is done.
    pub max_pending_connections: usize,
    /// Most connections per listener and peer address that have not authenticated yet; more are
    /// closed at accept. `None` (0 in the file): no per-address share.
    pub max_pending_per_address: Option<usize>,
    /// Size of one in-memory log segment per subscription filter (rumqttd's router).
    pub segment_size: usize,
    /// Segments kept per filter; a subscriber that falls further behind loses the oldest.
    pub segment_count: usize,
    /// Most packets the router hands one connection per scheduling round.
    pub max_outgoing_batch: u64,
    /// Every policy by name: the built-in `device` and `allow-all`, and `[[policies]]`.
    pub policies: BTreeMap<String, Policy>,
}

/// One MQTT listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// A name for logs and metrics.
    pub name: String,
    /// Where it listens.
    pub bind: Located<SocketAddr>,
    /// How devices authenticate.
    pub auth: AuthMode,
    /// The policy devices on this listener get (unless their identity names another).
    pub policy: String,
    /// TLS, when configured; its origin is where startup errors about the files point.
    pub tls: Option<Located<TlsFiles>>,
}

impl<T: PartialEq> PartialEq for Located<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<T: Eq> Eq for Located<T> {}

impl Config {
    /// Loads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, Some(path))
    }

    /// The built-in defaults, used when `grove run` is given no file.
    pub fn defaults() -> Config {
        // The empty document is a valid configuration by construction; see the tests.
        Config::parse("", None).expect("the empty configuration is valid")
    }

    /// Parses and validates configuration text; `file` is only used in messages.
    pub fn parse(text: &str, file: Option<&Path>) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|span| line_col(text, span.start))
                .unwrap_or((1, 1));
            ConfigError::Parse {
                file: file
                    .map(Path::to_owned)
                    .unwrap_or_else(|| "<config>".into()),
                line,
                column,
                message: e.message().to_owned(),
            }
        })?;
        Resolver { text, file }.resolve(raw)
    }
}

/// Turns raw sections into resolved ones, remembering where each value came from.
struct Resolver<'a> {
    text: &'a str,
    file: Option<&'a Path>,
}

impl Resolver<'_> {
    fn origin(&self, key: &str, span: Option<Range<usize>>) -> Origin {
        Origin {
            file: self.file.map(Path::to_owned),
            key: key.to_owned(),
            line: span.map(|s| line_col(self.text, s.start).0),
        }
    }

    fn located<T>(&self, key: &str, value: Option<Spanned<T>>, default: T) -> Located<T> {
        match value {
            Some(v) => {
                let span = v.span();
                Located {
                    value: v.into_inner(),
                    origin: self.origin(key, Some(span)),
                }
            }
            None => Located {
                value: default,
                origin: self.origin(key, None),
            },
        }
    }

    fn invalid<T>(&self, located: &Located<T>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: located.origin.clone(),
            message: message.into(),
        }
    }

    /// Checks that a value lies in `range`, naming the key when it does not.
    fn ranged<T: PartialOrd + fmt::Display + Copy>(
        &self,
        key: &str,
        value: Option<Spanned<T>>,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, ConfigError> {
        let v = self.located(key, value, default);
        if !range.contains(&v.value) {
            return Err(self.invalid(
                &v,
                format!(
                    "{} is out of range: it must be between {} and {}",
                    v.value,
                    range.start(),
                    range.end()
                ),
            ));
        }
        Ok(v.value)
    }

    fn resolve(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let data_dir = self.located("data_dir", raw.data_dir, PathBuf::from("./grove-data"));
        if data_dir.value.as_os_str().is_empty() {
            return Err(self.invalid(&data_dir, "the data directory must not be empty"));
        }
        let policies = self.resolve_policies(raw.policies)?;
        let broker = self.resolve_broker(raw.broker, &policies)?;
        let ops = match raw.ops.enabled.unwrap_or(true) {
            false => None,
            true => Some(self.located(
                "ops.bind",
                raw.ops.bind,
                SocketAddr::from(([127, 0, 0, 1], 9464)),
            )),
        };
        if let Some(ops) = &ops {
            if let Some(clash) = broker
                .listeners
                .iter()
                .find(|l| l.bind.value == ops.value && ops.value.port() != 0)
            {
                return Err(self.invalid(
                    ops,
                    format!(
                        "{} is also the address of the MQTT listener `{}`",
                        ops.value, clash.name
                    ),
                ));
            }
        }
        let log_filter = self.located("log.filter", raw.log.filter, "info,rumqttd=warn".to_owned());
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&log_filter.value) {
            return Err(self.invalid(&log_filter, format!("not a valid log filter: {e}")));
        }
        let shadow = ShadowConfig {
            max_state_bytes: self.ranged(
                "shadow.max_state_bytes",
                raw.shadow.max_state_bytes,
                // AWS's 8 KiB, unless the broker's payload limit is smaller.
                (8 * 1024).min(broker.max_payload_size),
                16..=broker.max_payload_size,
            )?,
            max_depth: self.ranged("shadow.max_depth", raw.shadow.max_depth, 6, 1..=64)?,
            max_inflight_per_client: self.ranged(
                "shadow.max_inflight_per_client",
                raw.shadow.max_inflight_per_client,
                10,
                1..=100_000,
            )?,
        };
        let mut rules: Vec<RuleConfig> = Vec::with_capacity(raw.rules.len());
        let mut rule_origins = Vec::with_capacity(raw.rules.len());
        for (i, raw_rule) in raw.rules.into_iter().enumerate() {
            let origin = self.origin(&format!("rules[{i}]"), Some(raw_rule.span()));
            rule_origins.push(origin.clone());
            let raw_rule = raw_rule.into_inner();
            let located = Located { value: (), origin };
            if rules.iter().any(|r| r.name == raw_rule.name) {
                return Err(self.invalid(
                    &located,
                    format!("rule `{}` is defined twice", raw_rule.name),
                ));
            }
            let compiled = raw_rule
                .compile()
                .map_err(|e| self.invalid(&located, format!("rule `{}`: {e}", raw_rule.name)))?;
            rules.push(compiled);
        }
        let cloud = match raw.cloud {
            None => None,
            Some(c) => {
                let section = c.span();
                c.into_inner()
                    .resolve(|p| self.relative(p))
                    .map_err(|e| ConfigError::Invalid {
                        origin: self.origin(&e.key, Some(e.span.unwrap_or(section.clone()))),
                        message: e.message,
                    })?
                    .map(|value| Located {
                        value,
                        origin: self.origin("cloud", Some(section)),
                    })
            }
        };
        if let Some((i, r)) = rules.iter().enumerate().find(|(_, r)| r.uses_cloud()) {
            if cloud.is_none() {
                return Err(ConfigError::Invalid {
                    origin: rule_origins[i].clone(),
                    message: format!("rule `{}` has a cloud action, but [cloud] is not configured (or not enabled)", r.name),
                });
            }
        }
        let functions = match raw.functions.enabled.unwrap_or(true) {
            false => None,
            true => {
                let f = raw.functions;
                Some(FunctionsConfig {
                    max_memory_mb: self.ranged(
                        "functions.max_memory_mb",
                        f.max_memory_mb,
                        64,
                        1..=4096,
                    )?,
                    workers: self.ranged("functions.workers", f.workers, 2, 1..=256)?,
                    queue_bound: self.ranged(
                        "functions.queue_bound",
                        f.queue_bound,
                        1000,
                        1..=1_000_000,
                    )?,
                    pool_size: self.ranged("functions.pool_size", f.pool_size, 100, 2..=10_000)?,
                })
            }
        };
        if let Some((i, r)) = rules.iter().enumerate().find(|(_, r)| r.uses_functions()) {
            if functions.is_none() {
                return Err(ConfigError::Invalid {
                    origin: rule_origins[i].clone(),
                    message: format!(
                        "rule `{}` has a function action, but [functions] is not enabled",
                        r.name
                    ),
                });
            }
        }
        Ok(Config {
            data_dir,
            log_filter: log_filter.value,
            broker,
            ops,
            shadow,
            rules,
            cloud,
            functions,
        })
    }

    fn resolve_listener(
        &self,
        i: usize,
        l: RawListener,
        policies: &BTreeMap<String, Policy>,
    ) -> Result<ListenerConfig, ConfigError> {
        let key = |k: &str| format!("broker.listeners[{i}].{k}");
        let bind = self.located(
            &key("bind"),
            Some(l.bind),
            SocketAddr::from(([0, 0, 0, 0], 0)),
        );
        let loopback = bind.value.ip().is_loopback();
        // Anonymous access only where configured: by default only loopback listeners are open.
        let default_auth = if loopback {
            AuthMode::Anonymous
        } else {
            AuthMode::Password
        };
        let auth = self.located(&key("auth"), l.auth, default_auth);
        let tls = l.tls.map(|t| {
            let span = t.span();
            let t = t.into_inner();
            Located {
                value: TlsFiles {
                    cert: self.relative(t.cert),
                    key: self.relative(t.key),
                    client_ca: t.client_ca.map(|p| self.relative(p)),
                },
                origin: self.origin(&key("tls"), Some(span)),
            }
        });
        let has_client_ca = tls.as_ref().is_some_and(|t| t.value.client_ca.is_some());
        if auth.value == AuthMode::Certificate && !has_client_ca {
            return Err(self.invalid(&auth, "auth = \"certificate\" needs tls.client_ca (the CA that signs device certificates)"));
        }
        if auth.value != AuthMode::Certificate && has_client_ca {
            return Err(self.invalid(
                &auth,
                "tls.client_ca is set, so auth must be \"certificate\"",
            ));
        }
        let default_policy = if auth.value == AuthMode::Anonymous && loopback {
            "allow-all"
        } else {
            "device"
        };
        let policy = self.located(&key("policy"), l.policy, default_policy.to_owned());
        if !policies.contains_key(&policy.value) {
            let known: Vec<&str> = policies.keys().map(String::as_str).collect();
            return Err(self.invalid(
                &policy,
                format!(
                    "no policy named `{}` (known: {})",
                    policy.value,
                    known.join(", ")
                ),
            ));
        }
        Ok(ListenerConfig {
            name: l.name.unwrap_or_else(|| format!("mqtt{i}")),
            bind,
            auth: auth.value,
            policy: policy.value,
            tls,
        })
    }

    /// A path from the file, relative to the file's directory.
    fn relative(&self, path: PathBuf) -> PathBuf {
        match self.file.and_then(Path::parent) {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path,
        }
    }

    fn resolve_policies(
        &self,
        raw: Vec<Spanned<Policy>>,
    ) -> Result<BTreeMap<String, Policy>, ConfigError> {
        let mut out = BTreeMap::new();
        for builtin in [policy::device_policy(), policy::allow_all_policy()] {
            out.insert(builtin.name.clone(), builtin);
        }
        let mut seen = std::collections::HashSet::new();
        for (i, p) in raw.into_iter().enumerate() {
            let origin = self.origin(&format!("policies[{i}]"), Some(p.span()));
            let p = p.into_inner();
            let located = Located { value: (), origin };
            if !seen.insert(p.name.clone()) {
                return Err(self.invalid(&located, format!("policy `{}` is defined twice", p.name)));
            }
            // Redefining a built-in would silently change every listener and device that names it
            // (`device` is the default off loopback).
            if out.contains_key(&p.name) {
                return Err(self.invalid(
                    &located,
                    format!(
                        "policy `{}` is built in and cannot be redefined; give yours another name",
                        p.name
                    ),
                ));
            }
            p.validate()
                .map_err(|e| self.invalid(&located, e.to_string()))?;
            out.insert(p.name.clone(), p);
        }
        Ok(out)
    }

    fn resolve_broker(
        &self,
        raw: RawBroker,
        policies: &BTreeMap<String, Policy>,
    ) -> Result<BrokerConfig, ConfigError> {
        let listeners = match raw.listeners {
            None => vec![ListenerConfig {
                name: "mqtt".to_owned(),
                bind: self.located(
                    "broker.listeners[0].bind",
                    None,
                    SocketAddr::from(([127, 0, 0, 1], 1883)),
                ),
                auth: AuthMode::Anonymous,
                policy: "allow-all".to_owned(),
                tls: None,
            }],
            Some(list) => {
                let list_origin = self.origin("broker.listeners", Some(list.span()));
                let list = list.into_inner();
                let mut out: Vec<ListenerConfig> = Vec::with_capacity(list.len());
                for (i, l) in list.into_iter().enumerate() {
                    let listener = self.resolve_listener(i, l, policies)?;
                    if let Some(other) = out.iter().find(|o| o.name == listener.name) {
                        return Err(self.invalid(
                            &listener.bind,
                            format!(
                                "listener name `{}` is used twice ({})",
                                listener.name, other.bind.origin.key
                            ),
                        ));
                    }
                    if listener.bind.value.port() != 0 {
                        if let Some(other) =
                            out.iter().find(|o| o.bind.value == listener.bind.value)
                        {
                            return Err(self.invalid(
                                &listener.bind,
                                format!(
                                    "{} is already the address of listener `{}`",
                                    listener.bind.value, other.name
                                ),
                            ));
                        }
                    }
                    out.push(listener);
                }
                if out.is_empty() {
                    return Err(ConfigError::Invalid {
                        origin: list_origin,
                        message: "at least one MQTT listener is needed".to_owned(),
                    });
                }
                out
            }
        };
        let max_payload_size = self.ranged(
            "broker.max_payload_size",
            raw.max_payload_size,
            1024 * 1024,
            16..=MQTT_MAX_PACKET,
        )?;
        let segment_size = self.located("broker.segment_size", raw.segment_size, 1024 * 1024);
        // rumqttd panics on segments under 1 KiB; a segment smaller than one message would hold
        // less than one message, so the floor is the payload limit.
        if segment_size.value < 1024 || segment_size.value < max_payload_size {
            return Err(self.invalid(
                &segment_size,
                format!(
                    "{} bytes is too small: a segment must hold at least 1024 bytes and one \
                     maximum-size payload (broker.max_payload_size = {max_payload_size})",
                    segment_size.value
                ),
            ));
        }
        Ok(BrokerConfig {
            listeners,
            max_connections: self.ranged(
                "broker.max_connections",
                raw.max_connections,
                1000,
                1..=100_000,
            )?,
            max_payload_size,
            connect_timeout_ms: self.ranged(
                "broker.connect_timeout_ms",
                raw.connect_timeout_ms,
                5000,
                100..=600_000,
            )?,
            max_connect_size: self.ranged(
                "broker.max_connect_size",
                raw.max_connect_size,
                8 * 1024,
                64..=MQTT_MAX_PACKET,
            )?,
            max_pending_connections: self.ranged(
                "broker.max_pending_connections",
                raw.max_pending_connections,
                128,
                1..=100_000,
            )?,
            max_pending_per_address: Some(self.ranged(
                "broker.max_pending_per_address",
                raw.max_pending_per_address,
                0,
                0..=100_000,
            )?)
            .filter(|&n| n > 0),
            segment_size: segment_size.value,
            segment_count: self.ranged("broker.segment_count", raw.segment_count, 4, 1..=1000)?,
            policies: policies.clone(),
            max_outgoing_batch: self.ranged(
                "broker.max_outgoing_batch",
                raw.max_outgoing_batch,
                200,
                1..=100_000,
            )?,
        })
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_is_exactly_the_defaults() {
        let from_template = Config::parse(DEFAULT_TEMPLATE, None).expect("template parses");
        assert_eq!(from_template, Config::defaults());
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let c = Config::defaults();
        assert_eq!(c.data_dir.value, PathBuf::from("./grove-data"));
        assert_eq!(c.broker.listeners.len(), 1);
        assert_eq!(
            c.broker.listeners[0].bind.value,
            "127.0.0.1:1883".parse().unwrap()
        );
        assert_eq!(c.ops.unwrap().value, "127.0.0.1:9464".parse().unwrap());
        assert_eq!(c.log_filter, "info,rumqttd=warn");
    }

    /// One case per line: the config text and a fragment the error message must contain.
    #[test]
    fn errors_name_the_key_and_line() {
        let cases: &[(&str, &str)] = &[
            ("colour = 1\n", "1:1: unknown field `colour`"),
            ("[broker]\nmax_conections = 5\n", "2:1: unknown field `max_conections`"),
            ("[broker]\nmax_connections = \"many\"\n", "2:19: invalid type: string \"many\""),
            ("[broker]\nmax_connections = 0\n", "2: `broker.max_connections`: 0 is out of range"),
            ("[broker]\nmax_payload_size = 4\n", "2: `broker.max_payload_size`: 4 is out of range"),
            (
                "[broker]\nmax_payload_size = 2000000\n",
                "grove.toml: `broker.segment_size` (default): 1048576 bytes is too small",
            ),
            ("[[broker.listeners]]\nbind = \"nowhere\"\n", "2:8: invalid socket address syntax"),
            (
                "[[broker.listeners]]\nbind = \"127.0.0.1:1\"\n[[broker.listeners]]\nbind = \"127.0.0.1:1\"\n",
                "4: `broker.listeners[1].bind`: 127.0.0.1:1 is already the address of listener `mqtt0`",
            ),
            ("[broker]\nlisteners = []\n", "grove.toml:2: `broker.listeners`: at least one"),
            ("[ops]\nbind = \"127.0.0.1:1883\"\n", "2: `ops.bind`: 127.0.0.1:1883 is also the address"),
            ("data_dir = \"\"\n", "1: `data_dir`: the data directory must not be empty"),
            ("[ops\n", "1:5:"),
            ("[log]\nfilter = \"info,x=loud\"\n", "2: `log.filter`: not a valid log filter"),
            ("[shadow]\nmax_depth = 0\n", "2: `shadow.max_depth`: 0 is out of range"),
            (
                "[[broker.listeners]]\nbind = \"0.0.0.0:1\"\nauth = \"certificate\"\n",
                "3: `broker.listeners[0].auth`: auth = \"certificate\" needs tls.client_ca",
            ),
            ("[[broker.listeners]]\nbind = \"0.0.0.0:1\"\nauth = \"magic\"\n", "3:8: unknown variant `magic`"),
            (
                "[[broker.listeners]]\nbind = \"0.0.0.0:1\"\npolicy = \"nope\"\n",
                "3: `broker.listeners[0].policy`: no policy named `nope` (known: allow-all, device)",
            ),
            (
                "[[policies]]\nname = \"p\"\npublish = [\"a/${who}\"]\n",
                "1: `policies[0]`: policy `p`: unknown variable",
            ),
            ("[[policies]]\nname = \"p\"\npublish = [\"a/#/b\"]\n", "is not a valid topic filter"),
            ("[[policies]]\nname = \"p\"\npublsh = []\n", "unknown field `publsh`"),
            (
                "[[policies]]\nname = \"device\"\npublish = [\"#\"]\n",
                "1: `policies[0]`: policy `device` is built in and cannot be redefined",
            ),
            (
                "[cloud]\nhost = \"h\"\nplain_tcp = true\ndownlink = [{ filter = \"+/cmd/#\", strip_prefix = \"site/\" }]\n",
                "4: `cloud.downlink[0]`: \"+/cmd/#\" must start with strip_prefix \"site/\"",
            ),
            (
                "[[rules]]\nname = \"r\"\nsql = \"SELECT x FROM\"\nactions = [{ republish = { topic = \"a\" } }]\n",
                "1: `rules[0]`: rule `r`: the SQL does not compile",
            ),
            (
                "[[rules]]\nname = \"r\"\nsql = \"SELECT * FROM 't'\"\nactions = [{ lambda = {} }]\n",
                "unknown variant `lambda`, expected one of `republish`, `shadow`, `cloud`, `function`",
            ),
            (
                "[[rules]]\nname = \"r\"\nsql = \"SELECT * FROM 't'\"\nactions = [{ cloud = { topic = \"up\" } }]\n",
                "1: `rules[0]`: rule `r` has a cloud action, but [cloud] is not configured",
            ),
            (
                "[functions]\nenabled = false\n[[rules]]\nname = \"r\"\nsql = \"SELECT * FROM 't'\"\nactions = [{ function = \"f\" }]\n",
                "3: `rules[0]`: rule `r` has a function action, but [functions] is not enabled",
            ),
            (
                "[functions]\nenabled = false\n[[rules]]\nname = \"r\"\nsql = \"SELECT * FROM 't'\"\nactions = [{ republish = { topic = \"a\" } }]\nerror_action = { function = \"on-error:live\" }\n",
                "3: `rules[0]`: rule `r` has a function action, but [functions] is not enabled",
            ),
            ("[shadow]\nmax_sate_bytes = 9\n", "2:1: unknown field `max_sate_bytes`"),
            ("[cloud]\nhost = \"h\"\n", "2: `cloud.tls`: the cloud link needs `tls"),
            ("[cloud]\nhost = \"\"\nplain_tcp = true\n", "2: `cloud.host`: the cloud host must not be empty"),
            (
                "[cloud]\nhost = \"h\"\nplain_tcp = true\nforward = [{ filter = \"a/#\" },\n { filter = \"a/b\" }]\n",
                "5: `cloud.forward[1]`: \"a/b\" overlaps the forward filter \"a/#\"",
            ),
            (
                "[cloud]\nhost = \"h\"\nplain_tcp = true\nforward = [{ filter = \"cmd/#\" }]\ndownlink = [{ filter = \"site/cmd/#\", strip_prefix = \"site/\" }]\n",
                "5: `cloud.downlink[0]`: its local topics (\"cmd/#\") overlap the forward filter",
            ),
            ("[cloud]\nhost = \"h\"\nplain_tcp = true\nkeep_alive_secs = 1\n", "4: `cloud.keep_alive_secs`: 1 is out of range"),
            ("[cloud]\nhost = \"h\"\nplain_tcp = true\n[cloud.outbox]\nwhen_full = \"panic\"\n", "5:13: unknown variant `panic`"),
            ("[cloud]\nhost = \"h\"\nplain_tcp = true\n[cloud.outbox]\nmax_messages = 0\n", "5: `cloud.outbox.max_messages`: 0 is out of range"),
            ("[cloud]\nhost = \"h\"\ntls = { ca = \"ca.pem\", cert = \"c.pem\" }\n", "3: `cloud.tls`: a client certificate needs both"),
            ("[functions]\nworkers = 0\n", "2: `functions.workers`: 0 is out of range"),
            ("[functions]\nmax_memory_mb = 5000\n", "2: `functions.max_memory_mb`: 5000 is out of range"),
            ("[functions]\npool = 1\n", "2:1: unknown field `pool`"),
        ];
        for (text, want) in cases {
            let err = Config::parse(text, Some(Path::new("grove.toml")))
                .expect_err(&format!("{text:?} must be refused"))
                .to_string();
            assert!(
                err.contains(want),
                "for {text:?}\n  got:  {err}\n  want: {want}"
            );
            assert!(err.starts_with("grove.toml"), "{err}");
        }
    }

    #[test]
    fn function_actions_load_when_functions_are_enabled() {
        // `[functions]` is enabled unless it says otherwise.
        for functions in ["", "[functions]\nenabled = true\n"] {
            let text = format!(
                "{functions}[[rules]]\nname = \"r\"\nsql = \"SELECT * FROM 't'\"\nactions = [{{ function = \"f:live\" }}]\n"
            );
            let c = Config::parse(&text, None).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert!(c.rules[0].uses_functions(), "{text:?}");
        }
    }

    #[test]
    fn listeners_default_to_anonymous_only_on_loopback() {
        let c = Config::parse(
            "[[broker.listeners]]\nbind = \"127.0.0.1:1\"\n[[broker.listeners]]\nbind = \"0.0.0.0:2\"\n",
            None,
        )
        .unwrap();
        let l = &c.broker.listeners;
        assert_eq!(
            (l[0].auth, l[0].policy.as_str()),
            (AuthMode::Anonymous, "allow-all")
        );
        assert_eq!(
            (l[1].auth, l[1].policy.as_str()),
            (AuthMode::Password, "device")
        );
        let c = Config::parse(
            "[[broker.listeners]]\nbind = \"0.0.0.0:2\"\nauth = \"anonymous\"\n",
            None,
        )
        .unwrap();
        assert_eq!(
            (
                c.broker.listeners[0].auth,
                c.broker.listeners[0].policy.as_str()
            ),
            (AuthMode::Anonymous, "device"),
            "anonymous off loopback only when configured, and confined by the device policy"
        );
    }

    #[test]
    fn ops_can_be_disabled() {
        let c = Config::parse("[ops]\nenabled = false\n", None).unwrap();
        assert_eq!(c.ops, None);
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
