//! Configuration: `grove.toml`, in two layers.
//!
//! The first layer ([`RawConfig`] and friends) mirrors the file: serde structs with
//! `deny_unknown_fields`, so a typo is an error and not a silently ignored key. The second layer
//! ([`Config`]) is what the gateway runs on: every value resolved, defaulted and validated, each
//! component receiving only its own section. Values that the file can get wrong carry their
//! [`Origin`](grove_config::Origin) (key and line), so that an error found later, at startup (a
//! port already in use, a data directory that cannot be written), still names the key, the file
//! and the line.
//!
//! Each component's section (raw and resolved forms, defaults, bounds) is its crate's
//! `config.rs`; this module reads the file, hands each section to its crate with one
//! `grove_config::Resolver`, and checks what crosses sections (the ops port against the
//! listeners, rules' `cloud` and `function` actions against those sections).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use grove_auth::policy::Policy;
use grove_broker::config::BrokerConfig;
use grove_config::{line_col, ConfigError, Located, Resolver};
use serde::Deserialize;
use toml::Spanned;

use grove_cloud::config::{CloudConfig, RawCloud};
use grove_rules_engine::{RawRule, RuleConfig};

/// The default configuration file written by `grove init`, fully commented.
///
/// A unit test checks that it parses to exactly the built-in defaults, so the comments cannot drift
/// from the code.
pub const DEFAULT_TEMPLATE: &str = include_str!("default-grove.toml");

/// The file as written. Every section and key is optional; missing ones take the defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    data_dir: Option<Spanned<PathBuf>>,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    broker: grove_broker::config::RawBroker,
    #[serde(default)]
    ops: RawOps,
    #[serde(default)]
    shadow: grove_shadow::config::RawShadow,
    #[serde(default)]
    policies: Vec<Spanned<Policy>>,
    #[serde(default)]
    rules: Vec<Spanned<RawRule>>,
    cloud: Option<Spanned<RawCloud>>,
    #[serde(default)]
    functions: grove_functions_host::config::RawFunctions,
    #[serde(default)]
    deploy: grove_deploy::config::RawDeploy,
    #[serde(default)]
    console: grove_console::config::RawConsole,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    filter: Option<Spanned<String>>,
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
    pub shadow: grove_shadow::config::ShadowConfig,
    /// The rules, compiled (disabled ones included, marked).
    pub rules: Vec<RuleConfig>,
    /// Cloud sync, when `[cloud]` is configured and enabled; the origin is the section, where
    /// startup errors (unusable TLS files) point.
    pub cloud: Option<Located<CloudConfig>>,
    /// Local functions, or `None` when disabled.
    pub functions: Option<grove_functions_host::config::FunctionsConfig>,
    /// Deployments: from AWS IoT Jobs too, and what artifact downloads trust.
    pub deploy: grove_deploy::config::DeployConfig,
    /// The web console on the ops endpoint, or `None` when it is not served (disabled, the ops
    /// endpoint off, or not on loopback without the allowance).
    pub console: Option<grove_console::config::ConsoleConfig>,
}

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
        resolve(&Resolver::new(text, file), raw)
    }
}

fn resolve(r: &Resolver<'_>, raw: RawConfig) -> Result<Config, ConfigError> {
    let data_dir = r.located("data_dir", raw.data_dir, PathBuf::from("./grove-data"));
    if data_dir.value.as_os_str().is_empty() {
        return Err(r.invalid(&data_dir, "the data directory must not be empty"));
    }
    let policies = grove_broker::config::resolve_policies(r, raw.policies)?;
    let broker = grove_broker::config::resolve(r, raw.broker, &policies)?;
    let ops = match raw.ops.enabled.unwrap_or(true) {
        false => None,
        true => Some(r.located(
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
            return Err(r.invalid(
                ops,
                format!(
                    "{} is also the address of the MQTT listener `{}`",
                    ops.value, clash.name
                ),
            ));
        }
    }
    let log_filter = r.located("log.filter", raw.log.filter, "info,rumqttd=warn".to_owned());
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&log_filter.value) {
        return Err(r.invalid(&log_filter, format!("not a valid log filter: {e}")));
    }
    let shadow = grove_shadow::config::resolve(r, raw.shadow, broker.max_payload_size)?;
    let mut rules: Vec<RuleConfig> = Vec::with_capacity(raw.rules.len());
    let mut rule_origins = Vec::with_capacity(raw.rules.len());
    // The names seen so far: a set, as a scan of the rules before each would be quadratic.
    let mut names = HashSet::with_capacity(raw.rules.len());
    for (i, raw_rule) in raw.rules.into_iter().enumerate() {
        let origin = r.origin(&format!("rules[{i}]"), Some(raw_rule.span()));
        rule_origins.push(origin.clone());
        let raw_rule = raw_rule.into_inner();
        let located = Located { value: (), origin };
        if !names.insert(raw_rule.name.clone()) {
            return Err(r.invalid(
                &located,
                format!("rule `{}` is defined twice", raw_rule.name),
            ));
        }
        let compiled = raw_rule
            .compile()
            .map_err(|e| r.invalid(&located, format!("rule `{}`: {e}", raw_rule.name)))?;
        rules.push(compiled);
    }
    let cloud = match raw.cloud {
        None => None,
        Some(c) => {
            let section = c.span();
            c.into_inner()
                .resolve(|p| r.relative(p))
                .map_err(|e| ConfigError::Invalid {
                    origin: r.origin(&e.key, Some(e.span.unwrap_or(section.clone()))),
                    message: e.message,
                })?
                .map(|value| Located {
                    value,
                    origin: r.origin("cloud", Some(section)),
                })
        }
    };
    if let Some((i, r)) = rules.iter().enumerate().find(|(_, r)| r.uses_cloud()) {
        if cloud.is_none() {
            return Err(ConfigError::Invalid {
                origin: rule_origins[i].clone(),
                message: format!(
                    "rule `{}` has a cloud action, but [cloud] is not configured (or not enabled)",
                    r.name
                ),
            });
        }
    }
    let functions = grove_functions_host::config::resolve(r, raw.functions)?;
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
    let deploy = grove_deploy::config::resolve(r, raw.deploy)?;
    if deploy.jobs.value && cloud.is_none() {
        return Err(r.invalid(
            &deploy.jobs,
            "AWS IoT Jobs come over the cloud link: [cloud] is not configured (or not enabled)",
        ));
    }
    let console = grove_console::config::resolve(r, raw.console, ops.as_ref())?;
    Ok(Config {
        data_dir,
        log_filter: log_filter.value,
        broker,
        ops,
        shadow,
        rules,
        cloud,
        functions,
        deploy,
        console,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use grove_broker::config::AuthMode;

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
                "[broker]\nmax_payload_size = 20000000\n",
                "grove.toml: `broker.queue_max_bytes` (default): 16777216 bytes is too small",
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
                "[[rules]]\nname = \"r\"\nsql = \"SELECT * FROM 't'\"\nactions = [{ republish = { topic = \"a\" } }]\n\
                 [[rules]]\nname = \"s\"\nsql = \"SELECT * FROM 't'\"\nactions = [{ republish = { topic = \"a\" } }]\n\
                 [[rules]]\nname = \"r\"\nsql = \"SELECT * FROM 'u'\"\nactions = [{ republish = { topic = \"b\" } }]\n",
                "9: `rules[2]`: rule `r` is defined twice",
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
            (
                "[deploy]\njobs = true\n",
                "2: `deploy.jobs`: AWS IoT Jobs come over the cloud link: [cloud] is not configured",
            ),
            ("[deploy]\nartifact_ca = \"no-such-ca.pem\"\n", "2: `deploy.artifact_ca`: "),
            ("[deploy]\njob = true\n", "2:1: unknown field `job`"),
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
}
