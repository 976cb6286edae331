//! The `[broker]` section (listeners, limits, the router's memory) and `[[policies]]`, in their raw
//! (as written) and resolved forms; the binary's `config.rs` reads the file and resolves them here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use grove_auth::policy::{self, Policy};
use grove_config::{ConfigError, Located, Resolver};
use serde::Deserialize;
use toml::Spanned;

/// The largest payload MQTT can carry: the remaining length is at most 268,435,455 bytes.
const MQTT_MAX_PACKET: usize = 268_435_455;

/// The `[broker]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBroker {
    listeners: Option<Spanned<Vec<RawListener>>>,
    max_connections: Option<Spanned<usize>>,
    max_payload_size: Option<Spanned<usize>>,
    connect_timeout_ms: Option<Spanned<u64>>,
    max_connect_size: Option<Spanned<usize>>,
    max_pending_connections: Option<Spanned<usize>>,
    max_pending_per_address: Option<Spanned<usize>>,
    queue_max_messages: Option<Spanned<usize>>,
    queue_max_bytes: Option<Spanned<usize>>,
    max_inflight_messages: Option<Spanned<u16>>,
    backpressure_hold_ms: Option<Spanned<u64>>,
    server_keep_alive: Option<Spanned<u16>>,
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
    /// Messages one session may queue behind its in-flight window (the router core's
    /// `queue_max_messages`); more are dropped, counted in `grove_broker_dropped_total`.
    pub queue_max_messages: usize,
    /// Bytes (topic + payload) one session may queue behind its in-flight window.
    pub queue_max_bytes: usize,
    /// Deliveries in flight (sent, unacknowledged) to one client at most, whatever its Receive
    /// Maximum (MQTT 3.1.1 declares none).
    pub max_inflight_messages: u16,
    /// The longest a publisher is held (acks waiting, not read) for a congested subscriber;
    /// still congested then, it is stuck, and holds nobody back until it has caught up.
    pub backpressure_hold_ms: u64,
    /// Keep alive the server imposes on MQTT 5 clients (declared in CONNACK, 3.2.2.3.14);
    /// `None` (0 in the file): the client's own.
    pub server_keep_alive: Option<u16>,
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

/// Resolves `[[policies]]`: the built-in `device` and `allow-all`, then the file's, each checked.
pub fn resolve_policies(
    r: &Resolver<'_>,
    raw: Vec<Spanned<Policy>>,
) -> Result<BTreeMap<String, Policy>, ConfigError> {
    let mut out = BTreeMap::new();
    for builtin in [policy::device_policy(), policy::allow_all_policy()] {
        out.insert(builtin.name.clone(), builtin);
    }
    let mut seen = std::collections::HashSet::new();
    for (i, p) in raw.into_iter().enumerate() {
        let origin = r.origin(&format!("policies[{i}]"), Some(p.span()));
        let p = p.into_inner();
        let located = Located { value: (), origin };
        if !seen.insert(p.name.clone()) {
            return Err(r.invalid(&located, format!("policy `{}` is defined twice", p.name)));
        }
        // Redefining a built-in would silently change every listener and device that names it
        // (`device` is the default off loopback).
        if out.contains_key(&p.name) {
            return Err(r.invalid(
                &located,
                format!(
                    "policy `{}` is built in and cannot be redefined; give yours another name",
                    p.name
                ),
            ));
        }
        p.validate()
            .map_err(|e| r.invalid(&located, e.to_string()))?;
        out.insert(p.name.clone(), p);
    }
    Ok(out)
}

/// Resolves `[broker]` against the resolved policies ([`resolve_policies`]).
pub fn resolve(
    r: &Resolver<'_>,
    raw: RawBroker,
    policies: &BTreeMap<String, Policy>,
) -> Result<BrokerConfig, ConfigError> {
    let listeners = match raw.listeners {
        None => vec![ListenerConfig {
            name: "mqtt".to_owned(),
            bind: r.located(
                "broker.listeners[0].bind",
                None,
                SocketAddr::from(([127, 0, 0, 1], 1883)),
            ),
            auth: AuthMode::Anonymous,
            policy: "allow-all".to_owned(),
            tls: None,
        }],
        Some(list) => {
            let list_origin = r.origin("broker.listeners", Some(list.span()));
            let list = list.into_inner();
            let mut out: Vec<ListenerConfig> = Vec::with_capacity(list.len());
            for (i, l) in list.into_iter().enumerate() {
                let listener = resolve_listener(r, i, l, policies)?;
                if let Some(other) = out.iter().find(|o| o.name == listener.name) {
                    return Err(r.invalid(
                        &listener.bind,
                        format!(
                            "listener name `{}` is used twice ({})",
                            listener.name, other.bind.origin.key
                        ),
                    ));
                }
                if listener.bind.value.port() != 0 {
                    if let Some(other) = out.iter().find(|o| o.bind.value == listener.bind.value) {
                        return Err(r.invalid(
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
    let max_payload_size = r.ranged(
        "broker.max_payload_size",
        raw.max_payload_size,
        1024 * 1024,
        16..=MQTT_MAX_PACKET,
    )?;
    let queue_max_bytes = r.located("broker.queue_max_bytes", raw.queue_max_bytes, 16 << 20);
    // A queue that cannot hold one maximum-size message would drop every such message.
    if queue_max_bytes.value < max_payload_size {
        return Err(r.invalid(
            &queue_max_bytes,
            format!(
                "{} bytes is too small: a session queue must hold one maximum-size payload \
                 (broker.max_payload_size = {max_payload_size})",
                queue_max_bytes.value
            ),
        ));
    }
    Ok(BrokerConfig {
        listeners,
        max_connections: r.ranged(
            "broker.max_connections",
            raw.max_connections,
            1000,
            1..=100_000,
        )?,
        max_payload_size,
        connect_timeout_ms: r.ranged(
            "broker.connect_timeout_ms",
            raw.connect_timeout_ms,
            5000,
            100..=600_000,
        )?,
        max_connect_size: r.ranged(
            "broker.max_connect_size",
            raw.max_connect_size,
            8 * 1024,
            64..=MQTT_MAX_PACKET,
        )?,
        max_pending_connections: r.ranged(
            "broker.max_pending_connections",
            raw.max_pending_connections,
            128,
            1..=100_000,
        )?,
        max_pending_per_address: Some(r.ranged(
            "broker.max_pending_per_address",
            raw.max_pending_per_address,
            0,
            0..=100_000,
        )?)
        .filter(|&n| n > 0),
        queue_max_messages: r.ranged(
            "broker.queue_max_messages",
            raw.queue_max_messages,
            10_000,
            1..=10_000_000,
        )?,
        queue_max_bytes: queue_max_bytes.value,
        max_inflight_messages: r.ranged(
            "broker.max_inflight_messages",
            raw.max_inflight_messages,
            100,
            1..=u16::MAX,
        )?,
        backpressure_hold_ms: r.ranged(
            "broker.backpressure_hold_ms",
            raw.backpressure_hold_ms,
            1_000,
            1..=3_600_000,
        )?,
        server_keep_alive: Some(r.ranged(
            "broker.server_keep_alive",
            raw.server_keep_alive,
            0,
            0..=u16::MAX,
        )?)
        .filter(|&s| s > 0),
        policies: policies.clone(),
    })
}

fn resolve_listener(
    r: &Resolver<'_>,
    i: usize,
    l: RawListener,
    policies: &BTreeMap<String, Policy>,
) -> Result<ListenerConfig, ConfigError> {
    let key = |k: &str| format!("broker.listeners[{i}].{k}");
    let bind = r.located(
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
    let auth = r.located(&key("auth"), l.auth, default_auth);
    let tls = l.tls.map(|t| {
        let span = t.span();
        let t = t.into_inner();
        Located {
            value: TlsFiles {
                cert: r.relative(t.cert),
                key: r.relative(t.key),
                client_ca: t.client_ca.map(|p| r.relative(p)),
            },
            origin: r.origin(&key("tls"), Some(span)),
        }
    });
    let has_client_ca = tls.as_ref().is_some_and(|t| t.value.client_ca.is_some());
    if auth.value == AuthMode::Certificate && !has_client_ca {
        return Err(r.invalid(
            &auth,
            "auth = \"certificate\" needs tls.client_ca (the CA that signs device certificates)",
        ));
    }
    if auth.value != AuthMode::Certificate && has_client_ca {
        return Err(r.invalid(
            &auth,
            "tls.client_ca is set, so auth must be \"certificate\"",
        ));
    }
    let default_policy = if auth.value == AuthMode::Anonymous && loopback {
        "allow-all"
    } else {
        "device"
    };
    let policy = r.located(&key("policy"), l.policy, default_policy.to_owned());
    if !policies.contains_key(&policy.value) {
        let known: Vec<&str> = policies.keys().map(String::as_str).collect();
        return Err(r.invalid(
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
