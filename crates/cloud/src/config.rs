//! The `[cloud]` section of `grove.toml`: the raw serde layer and its resolution into
//! [`CloudConfig`], the typed configuration the cloud component runs on.
//!
//! `config.rs` owns the file as a whole; it hands this module the section and turns a
//! [`SectionError`] (key and byte span) into its usual "file:line: `key`: message" error.

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::batch::Limits as BatchLimits;
use super::outbox::{FullPolicy, Limits};
use super::quota::{self, Quotas};
use grove_auth::policy::{overlaps, valid_filter};
use grove_shadow_api::names::validate_thing_name;

/// `[cloud]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCloud {
    enabled: Option<bool>,
    host: Spanned<String>,
    port: Option<Spanned<u16>>,
    client_id: Option<Spanned<String>>,
    thing: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    /// Refused with a pointer to `password_file` / `password_env` (a secret does not belong in
    /// the configuration file).
    password: Option<Spanned<String>>,
    password_file: Option<Spanned<PathBuf>>,
    password_env: Option<Spanned<String>>,
    keep_alive_secs: Option<Spanned<u64>>,
    session_expiry_secs: Option<Spanned<u32>>,
    #[serde(default)]
    protocol: Protocol,
    tls: Option<Spanned<RawCloudTls>>,
    plain_tcp: Option<Spanned<bool>>,
    inflight: Option<Spanned<usize>>,
    profile: Option<Spanned<Profile>>,
    quotas: Option<RawQuotas>,
    max_backoff_ms: Option<Spanned<u64>>,
    #[serde(default)]
    forward: Vec<Spanned<RawForward>>,
    #[serde(default)]
    downlink: Vec<Spanned<RawDownlink>>,
    #[serde(default)]
    outbox: RawOutbox,
    shadows: Option<Spanned<RawShadowSync>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCloudTls {
    ca: PathBuf,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    alpn: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForward {
    filter: String,
    #[serde(default)]
    prefix: String,
    batch: Option<RawBatch>,
}

/// `batch = { topic, max_messages, max_bytes, max_delay_ms }` of a forward route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch {
    topic: String,
    max_messages: Option<usize>,
    max_bytes: Option<usize>,
    max_delay_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDownlink {
    filter: String,
    #[serde(default)]
    strip_prefix: String,
}

/// `[cloud.quotas]`: each overrides the profile's value; 0 is no limit.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuotas {
    payload_bytes: Option<usize>,
    topic_bytes: Option<usize>,
    topic_slashes: Option<usize>,
    publishes_per_sec: Option<u32>,
    bytes_per_sec: Option<u32>,
    subscriptions: Option<usize>,
    filters_per_subscribe: Option<usize>,
}

/// Which cloud's limits the link keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Any broker: no limits but the ones written in `[cloud.quotas]`.
    #[default]
    Plain,
    /// AWS IoT Core's per-connection quotas ([`quota::AWS_IOT_CORE`]), `inflight` at most 100,
    /// client ids of at most 128 bytes.
    AwsIotCore,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutbox {
    max_messages: Option<Spanned<usize>>,
    max_bytes: Option<Spanned<u64>>,
    when_full: Option<Spanned<FullPolicy>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShadowSync {
    things: Vec<String>,
    #[serde(default)]
    direction: Direction,
    max_updates_per_sec: Option<u32>,
}

/// Which way shadow state flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// Three-way merge; changes flow both ways.
    #[default]
    Both,
    /// The cloud shadow mirrors the edge's; cloud-side changes are overwritten.
    EdgeToCloud,
    /// The edge shadow mirrors the cloud's; edge-side changes are overwritten.
    CloudToEdge,
}

/// The MQTT version of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Protocol {
    /// MQTT 3.1.1 (`protocol = "3.1.1"`, the default).
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5 (`protocol = "5"`): PUBACKs carry reason codes, so a refused message is known.
    #[serde(rename = "5")]
    V5,
}

/// How the link reaches the cloud broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP: only when `plain_tcp = true` is written.
    PlainTcp,
    /// TLS with the CA that signs the cloud's certificate, and for mutual TLS (AWS IoT Core) the
    /// gateway's certificate and key.
    Tls {
        /// The CA file (PEM).
        ca: PathBuf,
        /// The client certificate chain and key (PEM), when the cloud wants one.
        client: Option<(PathBuf, PathBuf)>,
        /// The ALPN protocol names offered in the TLS handshake (AWS IoT Core on port 443 with
        /// a client certificate: `x-amzn-mqtt-ca`); none when empty.
        alpn: Vec<String>,
    },
}

/// The ALPN protocol AWS IoT Core expects on port 443 from a client authenticating with an X.509
/// certificate ("Protocols, port mappings, and authentication",
/// <https://docs.aws.amazon.com/iot/latest/developerguide/protocols.html>); on 8883 it needs none.
pub const AWS_MQTT_ALPN: &str = "x-amzn-mqtt-ca";

/// The MQTT user name and where the password is (never the password itself, so that this
/// configuration can be printed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// Where the password is read from when the link is set up; `None`: a user name alone.
    pub password: Option<SecretSource>,
}

/// Where a secret is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file holding the secret (one trailing line break is not part of it).
    File(PathBuf),
    /// An environment variable of the gateway's process.
    Env(String),
}

/// One forwarding rule: local topics matching `filter` go up as `prefix` + topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The local topic filter.
    pub filter: String,
    /// Prepended to the local topic to form the cloud topic.
    pub prefix: String,
    /// When set, the route's messages go up in batches ([`crate::batch`]).
    pub batch: Option<Batch>,
}

/// A forward route's batching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The cloud topic the arrays go up on.
    pub topic: String,
    /// The bounds of one batch.
    pub limits: BatchLimits,
}

/// The default `max_messages` of a batch.
pub const DEFAULT_BATCH_MESSAGES: usize = 100;

/// The default `max_delay_ms` of a batch: a second, the time scale of telemetry dashboards.
pub const DEFAULT_BATCH_DELAY_MS: u64 = 1000;

/// The largest `max_bytes` of a batch without a payload quota: AWS IoT Core's 128 KB, a size
/// most brokers take (mosquitto's default has no limit, EMQX's is 1 MB).
pub const DEFAULT_BATCH_BYTES: usize = 128 * 1024;

/// One downlink: cloud topics matching `filter` are published locally without `strip_prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downlink {
    /// The cloud topic filter the gateway subscribes to.
    pub filter: String,
    /// Removed from the front of the cloud topic to form the local topic.
    pub strip_prefix: String,
}

/// Shadow sync settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowSync {
    /// The things whose shadows (classic and named) are synced; `"*"` stands for every thing.
    pub things: Vec<String>,
    /// Which way state flows.
    pub direction: Direction,
    /// Cloud-bound shadow updates per second at most (AWS's account limit is shared).
    pub max_updates_per_sec: u32,
}

impl ShadowSync {
    /// Whether `thing`'s shadows are synced.
    pub fn covers(&self, thing: &str) -> bool {
        self.things.iter().any(|t| t == "*" || t == thing)
    }

    /// Whether every thing is synced.
    pub fn all(&self) -> bool {
        self.things.iter().any(|t| t == "*")
    }
}

/// systemd's machine id, from which the default thing name is derived.
const MACHINE_ID: &str = "/etc/machine-id";

/// The thing name (and client id) when neither is written: `grove-` and the first 12 hex digits
/// of the machine id, so that two gateways left on defaults do not take each other's place on the
/// cloud (a broker disconnects the older of two clients with one id). `None` without a usable id.
pub fn thing_from_machine_id(machine_id: Option<&str>) -> Option<String> {
    let hex: String = machine_id?
        .trim()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(12)
        .collect();
    (hex.len() == 12).then(|| format!("grove-{}", hex.to_ascii_lowercase()))
}

/// The default of `keep_alive_secs`. Idle, the link's only traffic is its keep-alive exchange,
/// about 200 bytes on the wire with TLS and TCP/IP (BENCHMARKS.md, "Idle cost"): every 30 s that
/// is 0.6 MB a day, over half of issue 16's 1 MB budget; every 60 s, 0.3 MB. A minute still
/// keeps a NAT mapping alive on cellular networks that drop idle TCP after a few minutes, and a
/// dead link is noticed within two periods (rumqttc gives up when a PINGRESP has not come by the
/// next ping); AWS IoT Core takes 30 to 1200 s and bills no ping.
pub const DEFAULT_KEEP_ALIVE_SECS: u64 = 60;

/// The default of `session_expiry_secs`: an hour, AWS IoT Core's default for persistent
/// sessions.
pub const DEFAULT_SESSION_EXPIRY_SECS: u32 = 3600;

/// The resolved `[cloud]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudConfig {
    /// The cloud broker's host name (also the TLS server name).
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The MQTT client id (AWS IoT Core: usually the thing name).
    pub client_id: String,
    /// The gateway's own thing name.
    pub thing: String,
    /// The MQTT user name and password, for brokers that check one.
    pub credentials: Option<Credentials>,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// How long the cloud keeps the link's session (subscriptions and the QoS 1 messages for it)
    /// while the gateway is away, in seconds; 0: a clean session at every connect. MQTT 3.1.1
    /// has no expiry on the wire: any value above 0 asks for a persistent session
    /// (clean session 0) and the broker's own limit applies.
    pub session_expiry_secs: u32,
    /// MQTT 3.1.1 or 5.
    pub protocol: Protocol,
    /// TCP or TLS.
    pub transport: Transport,
    /// Most QoS 1 publishes awaiting PUBACK at once.
    pub inflight: usize,
    /// The cloud's limits, kept before sending.
    pub quotas: Quotas,
    /// The longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// What goes up.
    pub forward: Vec<Forward>,
    /// What comes down.
    pub downlink: Vec<Downlink>,
    /// The outbox's bounds.
    pub limits: Limits,
    /// What happens when the outbox is full.
    pub when_full: FullPolicy,
    /// Shadow sync, when configured.
    pub shadows: Option<ShadowSync>,
}

/// A problem in the section: the dotted key, where it is in the file, and what is wrong.
#[derive(Debug)]
pub struct SectionError {
    /// The dotted key, e.g. `cloud.forward[1].filter`.
    pub key: String,
    /// The byte span of the value, when it came from the file.
    pub span: Option<Range<usize>>,
    /// What is wrong.
    pub message: String,
}

fn err(
    key: impl Into<String>,
    span: Option<Range<usize>>,
    message: impl Into<String>,
) -> SectionError {
    SectionError {
        key: key.into(),
        span,
        message: message.into(),
    }
}

impl RawCloud {
    /// Resolves the section; `None` when `enabled = false`. `relative` resolves file paths
    /// against the configuration file's directory.
    pub fn resolve(
        self,
        relative: impl Fn(PathBuf) -> PathBuf,
    ) -> Result<Option<CloudConfig>, SectionError> {
        if self.enabled == Some(false) {
            return Ok(None);
        }
        let host_span = self.host.span();
        let host = self.host.into_inner();
        if host.is_empty() {
            return Err(err(
                "cloud.host",
                Some(host_span),
                "the cloud host must not be empty",
            ));
        }
        let mut alpn = None;
        let mut transport = match (self.tls, self.plain_tcp.as_ref().map(|p| *p.get_ref())) {
            (Some(tls), Some(true)) => {
                return Err(err(
                    "cloud.plain_tcp",
                    Some(tls.span()),
                    "both tls and plain_tcp = true are set; choose one",
                ))
            }
            (Some(tls), _) => {
                let span = tls.span();
                let tls = tls.into_inner();
                let client = match (tls.cert, tls.key) {
                    (Some(c), Some(k)) => Some((relative(c), relative(k))),
                    (None, None) => None,
                    _ => {
                        return Err(err(
                            "cloud.tls",
                            Some(span),
                            "a client certificate needs both `cert` and `key`",
                        ))
                    }
                };
                if let Some(bad) = tls
                    .alpn
                    .iter()
                    .flatten()
                    .find(|p| !(1..=255).contains(&p.len()))
                {
                    return Err(err(
                        "cloud.tls.alpn",
                        Some(span),
                        format!("{bad:?} is not an ALPN protocol name (1 to 255 bytes)"),
                    ));
                }
                alpn = tls.alpn;
                Transport::Tls {
                    ca: relative(tls.ca),
                    client,
                    alpn: Vec::new(),
                }
            }
            (None, Some(true)) => Transport::PlainTcp,
            (None, _) => {
                return Err(err(
                    "cloud.tls",
                    Some(host_span),
                    "the cloud link needs `tls = { ca = ..., cert = ..., key = ... }`; \
                     plain TCP only with `plain_tcp = true`",
                ))
            }
        };
        let default_port = match transport {
            Transport::PlainTcp => 1883,
            Transport::Tls { .. } => 8883,
        };
        let port = self.port.map_or(default_port, Spanned::into_inner);
        if let Transport::Tls {
            client,
            alpn: offered,
            ..
        } = &mut transport
        {
            // AWS IoT Core takes X.509 client certificates on port 443 only with its ALPN name;
            // any other broker on 443 that ignores ALPN is not bothered by the offer.
            *offered = alpn.unwrap_or_else(|| {
                if port == 443 && client.is_some() {
                    vec![AWS_MQTT_ALPN.to_owned()]
                } else {
                    Vec::new()
                }
            });
        }
        let thing = match self.thing {
            Some(t) => {
                let span = t.span();
                let t = t.into_inner();
                validate_thing_name(&t).map_err(|e| {
                    err("cloud.thing", Some(span), format!("not a thing name: {e}"))
                })?;
                t
            }
            None => match &self.client_id {
                // Only the client id is written: the thing name follows it where it can.
                Some(id) if validate_thing_name(id.get_ref()).is_ok() => id.get_ref().clone(),
                _ => {
                    let machine_id = std::fs::read_to_string(MACHINE_ID).ok();
                    thing_from_machine_id(machine_id.as_deref()).ok_or_else(|| {
                        err(
                            "cloud.thing",
                            Some(host_span.clone()),
                            format!(
                                "no `thing` is set and {MACHINE_ID} cannot be read to derive one: \
                                 set the gateway's thing name (also its MQTT client id)"
                            ),
                        )
                    })?
                }
            },
        };
        let client_id = self
            .client_id
            .map_or_else(|| thing.clone(), Spanned::into_inner);
        if let Some(p) = self.password {
            return Err(err(
                "cloud.password",
                Some(p.span()),
                "a password is not written in grove.toml: put it in a file (`password_file = \"...\"`) \
                 or in the gateway's environment (`password_env = \"VARIABLE\"`)",
            ));
        }
        let password = match (self.password_file, self.password_env) {
            (Some(_), Some(e)) => {
                return Err(err(
                    "cloud.password_env",
                    Some(e.span()),
                    "both password_file and password_env are set; choose one",
                ))
            }
            (Some(f), None) => Some((f.span(), SecretSource::File(relative(f.into_inner())))),
            (None, Some(e)) if e.get_ref().is_empty() || e.get_ref().contains(['=', '\0']) => {
                return Err(err(
                    "cloud.password_env",
                    Some(e.span()),
                    format!("{:?} is not an environment variable name", e.get_ref()),
                ))
            }
            (None, Some(e)) => Some((e.span(), SecretSource::Env(e.into_inner()))),
            (None, None) => None,
        };
        let credentials = match (self.username, password) {
            (Some(u), password) => Some(Credentials {
                username: u.into_inner(),
                password: password.map(|(_, p)| p),
            }),
            (None, Some((span, _))) => {
                return Err(err(
                    "cloud.username",
                    Some(span),
                    "a password needs a `username`",
                ))
            }
            (None, None) => None,
        };
        let keep_alive = match self.keep_alive_secs {
            Some(k) if !(5..=1200).contains(k.get_ref()) => {
                return Err(err(
                    "cloud.keep_alive_secs",
                    Some(k.span()),
                    format!(
                        "{} is out of range: it must be between 5 and 1200",
                        k.get_ref()
                    ),
                ))
            }
            Some(k) => Duration::from_secs(k.into_inner()),
            None => Duration::from_secs(DEFAULT_KEEP_ALIVE_SECS),
        };
        // AWS IoT Core keeps a persistent session an hour by default
        // (https://docs.aws.amazon.com/iot/latest/developerguide/mqtt.html#mqtt-persistent-sessions).
        let session_expiry_secs = self
            .session_expiry_secs
            .map_or(DEFAULT_SESSION_EXPIRY_SECS, Spanned::into_inner);
        let profile = self
            .profile
            .as_ref()
            .map_or(Profile::Plain, |p| *p.get_ref());
        let most_inflight = match profile {
            Profile::Plain => 1000,
            Profile::AwsIotCore => quota::AWS_IOT_CORE_INFLIGHT,
        };
        let inflight = match self.inflight {
            Some(i) if !(1..=most_inflight).contains(i.get_ref()) => {
                return Err(err(
                    "cloud.inflight",
                    Some(i.span()),
                    format!(
                        "{} is out of range: it must be between 1 and {most_inflight}{}",
                        i.get_ref(),
                        if profile == Profile::AwsIotCore {
                            " (AWS IoT Core's limit of unacknowledged QoS 1 publishes per connection)"
                        } else {
                            ""
                        }
                    ),
                ))
            }
            Some(i) => i.into_inner(),
            None => most_inflight.min(256),
        };
        if profile == Profile::AwsIotCore && client_id.len() > quota::AWS_IOT_CORE_CLIENT_ID_BYTES {
            return Err(err(
                "cloud.client_id",
                self.profile.map(|p| p.span()),
                format!(
                    "{client_id:?} is longer than AWS IoT Core's {} bytes",
                    quota::AWS_IOT_CORE_CLIENT_ID_BYTES
                ),
            ));
        }
        let base = match profile {
            Profile::Plain => Quotas::default(),
            Profile::AwsIotCore => quota::AWS_IOT_CORE,
        };
        let written = self.quotas.unwrap_or_default();
        let quotas = Quotas {
            payload_bytes: pick(written.payload_bytes, base.payload_bytes),
            topic_bytes: pick(written.topic_bytes, base.topic_bytes),
            topic_slashes: pick(written.topic_slashes, base.topic_slashes),
            publishes_per_sec: pick(written.publishes_per_sec, base.publishes_per_sec),
            bytes_per_sec: pick(written.bytes_per_sec, base.bytes_per_sec),
            subscriptions: pick(written.subscriptions, base.subscriptions),
            filters_per_subscribe: pick(written.filters_per_subscribe, base.filters_per_subscribe),
        };
        let max_backoff = match self.max_backoff_ms {
            Some(m) if !(100..=3_600_000).contains(m.get_ref()) => {
                return Err(err(
                    "cloud.max_backoff_ms",
                    Some(m.span()),
                    format!(
                        "{} is out of range: it must be between 100 and 3600000",
                        m.get_ref()
                    ),
                ))
            }
            Some(m) => Duration::from_millis(m.into_inner()),
            // 30 s: a minute was too long to notice that the cloud is back (issue 16).
            None => Duration::from_secs(30),
        };
        let mut forward: Vec<Forward> = Vec::new();
        for (i, f) in self.forward.into_iter().enumerate() {
            let span = f.span();
            let f = f.into_inner();
            let key = format!("cloud.forward[{i}]");
            if !valid_filter(&f.filter) {
                return Err(err(
                    key,
                    Some(span),
                    format!("{:?} is not a valid topic filter", f.filter),
                ));
            }
            if f.prefix.contains(['+', '#']) {
                return Err(err(
                    key,
                    Some(span),
                    "the prefix must not contain wildcards",
                ));
            }
            // A message goes up once, under the prefix of the first forward filter that takes
            // it (the forwarder's durable tap): with overlapping filters, which prefix a message
            // gets would depend on their order in the file, so they are refused as ambiguous.
            if let Some(other) = forward.iter().find(|o| overlaps(&o.filter, &f.filter)) {
                return Err(err(
                    key,
                    Some(span),
                    format!(
                        "{:?} overlaps the forward filter {:?}",
                        f.filter, other.filter
                    ),
                ));
            }
            let batch = f
                .batch
                .map(|b| resolve_batch(b, &quotas))
                .transpose()
                .map_err(|message| err(format!("{key}.batch"), Some(span.clone()), message))?;
            forward.push(Forward {
                filter: f.filter,
                prefix: f.prefix,
                batch,
            });
        }
        let mut downlink = Vec::new();
        for (i, d) in self.downlink.into_iter().enumerate() {
            let span = d.span();
            let d = d.into_inner();
            let key = format!("cloud.downlink[{i}]");
            if !valid_filter(&d.filter) {
                return Err(err(
                    key,
                    Some(span),
                    format!("{:?} is not a valid topic filter", d.filter),
                ));
            }
            // The filter must spell the prefix out, so that every local topic is known here
            // (checked against the forward filters below) and a wildcard cannot hide the prefix.
            let local = d.filter.strip_prefix(&d.strip_prefix).unwrap_or("");
            if local.is_empty() || !valid_filter(local) {
                return Err(err(
                    key,
                    Some(span),
                    format!(
                        "{:?} must start with strip_prefix {:?} and leave a topic filter after it",
                        d.filter, d.strip_prefix
                    ),
                ));
            }
            // A message brought down and then forwarded up again would loop between the two.
            if let Some(f) = forward.iter().find(|f| overlaps(&f.filter, local)) {
                return Err(err(
                    key,
                    Some(span),
                    format!(
                        "its local topics ({local:?}) overlap the forward filter {:?}: messages would loop",
                        f.filter
                    ),
                ));
            }
            downlink.push(Downlink {
                filter: d.filter,
                strip_prefix: d.strip_prefix,
            });
        }
        let max_messages = self.outbox.max_messages.map_or(Ok(100_000), |m| {
            if (1..=100_000_000).contains(m.get_ref()) {
                Ok(m.into_inner())
            } else {
                Err(err(
                    "cloud.outbox.max_messages",
                    Some(m.span()),
                    format!(
                        "{} is out of range: it must be between 1 and 100000000",
                        m.get_ref()
                    ),
                ))
            }
        })?;
        let max_bytes = self.outbox.max_bytes.map_or(Ok(256 << 20), |m| {
            if *m.get_ref() >= 1024 {
                Ok(m.into_inner())
            } else {
                Err(err(
                    "cloud.outbox.max_bytes",
                    Some(m.span()),
                    format!("{} is too small: at least 1024 bytes", m.get_ref()),
                ))
            }
        })?;
        let when_full = self
            .outbox
            .when_full
            .map_or(FullPolicy::DropOldest, Spanned::into_inner);
        let shadows = match self.shadows {
            None => None,
            Some(s) => {
                let span = s.span();
                let s = s.into_inner();
                for t in s.things.iter().filter(|t| *t != "*") {
                    validate_thing_name(t).map_err(|e| {
                        err(
                            "cloud.shadows.things",
                            Some(span.clone()),
                            format!("{t:?} is not a thing name: {e}"),
                        )
                    })?;
                }
                let rate = s.max_updates_per_sec.unwrap_or(100);
                if rate == 0 {
                    return Err(err(
                        "cloud.shadows.max_updates_per_sec",
                        Some(span),
                        "must be at least 1",
                    ));
                }
                Some(ShadowSync {
                    things: s.things,
                    direction: s.direction,
                    max_updates_per_sec: rate,
                })
            }
        };
        Ok(Some(CloudConfig {
            host,
            port,
            client_id,
            thing,
            credentials,
            keep_alive,
            session_expiry_secs,
            protocol: self.protocol,
            transport,
            inflight,
            quotas,
            max_backoff,
            forward,
            downlink,
            limits: Limits {
                max_messages,
                max_bytes,
            },
            when_full,
            shadows,
        }))
    }
}

/// A quota written in `[cloud.quotas]` over the profile's: 0 is none.
fn pick<T: Default + PartialEq>(written: Option<T>, base: Option<T>) -> Option<T> {
    match written {
        Some(n) if n == T::default() => None,
        Some(n) => Some(n),
        None => base,
    }
}

/// A forward route's `batch`, checked against the cloud's quotas: the array must fit the payload
/// limit, its topic the topic limits.
fn resolve_batch(b: RawBatch, quotas: &Quotas) -> Result<Batch, String> {
    if b.topic.is_empty() || b.topic.contains(['+', '#', '\0']) {
        return Err(format!(
            "{:?} is not a topic to publish on (no wildcards)",
            b.topic
        ));
    }
    if let Some(r) = quotas.refusal(&b.topic, 0) {
        return Err(format!(
            "the batch topic {:?} is over the cloud's limit ({}: {} > {})",
            b.topic, r.reason, r.actual, r.limit
        ));
    }
    let most_bytes = quotas.payload_bytes.unwrap_or(DEFAULT_BATCH_BYTES);
    let max_bytes = b.max_bytes.unwrap_or(most_bytes);
    if !(64..=most_bytes).contains(&max_bytes) {
        return Err(format!(
            "max_bytes {max_bytes} is out of range: it must be between 64 and {most_bytes}{}",
            if quotas.payload_bytes.is_some() {
                " (the cloud's payload limit)"
            } else {
                ""
            }
        ));
    }
    let max_messages = b.max_messages.unwrap_or(DEFAULT_BATCH_MESSAGES);
    if !(1..=10_000).contains(&max_messages) {
        return Err(format!(
            "max_messages {max_messages} is out of range: it must be between 1 and 10000"
        ));
    }
    let max_delay_ms = b.max_delay_ms.unwrap_or(DEFAULT_BATCH_DELAY_MS);
    if max_delay_ms > 3_600_000 {
        return Err(format!(
            "max_delay_ms {max_delay_ms} is out of range: at most 3600000 (an hour)"
        ));
    }
    Ok(Batch {
        topic: b.topic,
        limits: BatchLimits {
            max_messages,
            max_bytes,
            max_delay_ms,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str) -> CloudConfig {
        let raw: RawCloud = toml::from_str(text).expect("parses");
        raw.resolve(|p| PathBuf::from("/etc/grove").join(p))
            .expect("valid")
            .expect("enabled")
    }

    #[test]
    fn defaults_follow_the_transport_and_the_thing() {
        let c = resolve("host = \"h\"\nthing = \"gw\"\ntls = { ca = \"ca.pem\", cert = \"c.pem\", key = \"k.pem\" }\n");
        assert_eq!((c.port, c.client_id.as_str()), (8883, "gw"));
        assert_eq!(
            c.transport,
            Transport::Tls {
                ca: "/etc/grove/ca.pem".into(),
                client: Some(("/etc/grove/c.pem".into(), "/etc/grove/k.pem".into())),
                alpn: Vec::new(),
            }
        );
        assert_eq!((c.credentials, c.session_expiry_secs), (None, 3600));
        assert_eq!(
            (c.limits.max_messages, c.when_full),
            (100_000, FullPolicy::DropOldest)
        );
        assert_eq!(c.keep_alive, Duration::from_secs(60));
        let c = resolve("host = \"h\"\nplain_tcp = true\n[shadows]\nthings = [\"a\"]\n");
        let machine = std::fs::read_to_string(MACHINE_ID).ok();
        let derived = thing_from_machine_id(machine.as_deref()).expect("this machine has an id");
        assert_eq!(
            (c.port, c.transport, c.client_id.as_str(), c.thing.as_str()),
            (
                1883,
                Transport::PlainTcp,
                derived.as_str(),
                derived.as_str()
            )
        );
        let s = c.shadows.expect("shadows");
        assert_eq!((s.direction, s.max_updates_per_sec), (Direction::Both, 100));
        let c = resolve("host = \"h\"\nplain_tcp = true\nclient_id = \"gw-9\"\n");
        assert_eq!(c.thing, "gw-9");
    }

    fn refusal(text: &str) -> SectionError {
        let raw: RawCloud = toml::from_str(text).expect("parses");
        raw.resolve(PathBuf::from).expect_err("invalid")
    }

    #[test]
    fn the_password_comes_from_a_file_or_the_environment_never_the_file_itself() {
        let tcp = "host = \"h\"\nplain_tcp = true\nusername = \"u\"\n";
        let c = resolve(&format!("{tcp}password_file = \"secret\"\n"));
        assert_eq!(
            c.credentials,
            Some(Credentials {
                username: "u".into(),
                password: Some(SecretSource::File("/etc/grove/secret".into())),
            })
        );
        let c = resolve(&format!("{tcp}password_env = \"CLOUD_PW\"\n"));
        assert_eq!(
            c.credentials.and_then(|c| c.password),
            Some(SecretSource::Env("CLOUD_PW".into()))
        );
        let e = refusal(&format!("{tcp}password = \"hunter2\"\n"));
        assert_eq!(e.key, "cloud.password");
        assert!(e.message.contains("password_file"), "{}", e.message);
        let e = refusal(&format!(
            "{tcp}password_file = \"f\"\npassword_env = \"V\"\n"
        ));
        assert!(e.message.contains("choose one"), "{}", e.message);
        let e = refusal("host = \"h\"\nplain_tcp = true\npassword_env = \"V\"\n");
        assert_eq!(e.key, "cloud.username");
        let e = refusal(&format!("{tcp}password_env = \"A=B\"\n"));
        assert_eq!(e.key, "cloud.password_env");
    }

    #[test]
    fn alpn_defaults_to_aws_on_443_with_a_client_certificate_and_can_be_set() {
        let alpn = |more: &str| match resolve(&format!("host = \"h\"\n{more}")).transport {
            Transport::Tls { alpn, .. } => alpn,
            Transport::PlainTcp => panic!("TLS"),
        };
        let mutual = "tls = { ca = \"ca\", cert = \"c\", key = \"k\" }\n";
        assert_eq!(alpn(&format!("port = 443\n{mutual}")), [AWS_MQTT_ALPN]);
        assert!(alpn(mutual).is_empty(), "8883 needs no ALPN");
        assert!(alpn("port = 443\ntls = { ca = \"ca\" }\n").is_empty());
        assert!(
            alpn("port = 443\ntls = { ca = \"ca\", cert = \"c\", key = \"k\", alpn = [] }\n")
                .is_empty()
        );
        assert_eq!(alpn("tls = { ca = \"ca\", alpn = [\"mqtt\"] }\n"), ["mqtt"]);
        let e = refusal("host = \"h\"\ntls = { ca = \"ca\", alpn = [\"\"] }\n");
        assert_eq!(e.key, "cloud.tls.alpn");
    }

    #[test]
    fn the_aws_profile_keeps_aws_quotas_and_each_can_be_overridden() {
        let c = resolve("host = \"h\"\nplain_tcp = true\nprofile = \"aws-iot-core\"\n");
        assert_eq!((c.quotas, c.inflight), (quota::AWS_IOT_CORE, 100));
        assert_eq!(
            (c.quotas.subscriptions, c.quotas.filters_per_subscribe),
            (Some(50), Some(8))
        );
        let c = resolve(
            "host = \"h\"\nplain_tcp = true\nprofile = \"aws-iot-core\"\n\
             [quotas]\npublishes_per_sec = 0\npayload_bytes = 1000\nfilters_per_subscribe = 0\n\
             bytes_per_sec = 2048\n",
        );
        assert_eq!(
            (
                c.quotas.publishes_per_sec,
                c.quotas.payload_bytes,
                c.quotas.topic_slashes
            ),
            (None, Some(1000), Some(7))
        );
        assert_eq!(c.quotas.filters_per_subscribe, None, "0 is no limit");
        assert_eq!(c.quotas.bytes_per_sec, Some(2048));
        let c = resolve("host = \"h\"\nplain_tcp = true\n");
        assert_eq!((c.quotas, c.inflight), (Quotas::default(), 256));
        let e =
            refusal("host = \"h\"\nplain_tcp = true\nprofile = \"aws-iot-core\"\ninflight = 101\n");
        assert!(e.message.contains("AWS IoT Core"), "{}", e.message);
        let long = "x".repeat(129);
        let e = refusal(&format!(
            "host = \"h\"\nplain_tcp = true\nprofile = \"aws-iot-core\"\nclient_id = \"{long}\"\n"
        ));
        assert_eq!(e.key, "cloud.client_id");
    }

    #[test]
    fn a_batch_fits_the_cloud_s_payload_and_topic_limits() {
        let forward = |profile: &str, batch: &str| {
            format!(
                "host = \"h\"\nplain_tcp = true\n{profile}\
                 forward = [{{ filter = \"s/#\", batch = {{ {batch} }} }}]\n"
            )
        };
        let aws = "profile = \"aws-iot-core\"\n";
        let c = resolve(&forward(aws, "topic = \"site/batch\""));
        let b = c.forward[0].batch.clone().expect("a batch");
        assert_eq!(
            (b.topic.as_str(), b.limits),
            (
                "site/batch",
                BatchLimits {
                    max_messages: DEFAULT_BATCH_MESSAGES,
                    max_bytes: 128 * 1024,
                    max_delay_ms: DEFAULT_BATCH_DELAY_MS,
                }
            )
        );
        let c = resolve(&forward(
            "",
            "topic = \"b\", max_messages = 5, max_bytes = 4096, max_delay_ms = 0",
        ));
        assert_eq!(
            c.forward[0].batch.as_ref().map(|b| b.limits),
            Some(BatchLimits {
                max_messages: 5,
                max_bytes: 4096,
                max_delay_ms: 0
            })
        );
        for (profile, batch, says) in [
            (
                aws,
                "topic = \"b\", max_bytes = 131073",
                "the cloud's payload limit",
            ),
            (aws, "topic = \"1/2/3/4/5/6/7/8/9\"", "topic_too_deep"),
            ("", "topic = \"b/+\"", "no wildcards"),
            ("", "topic = \"b\", max_messages = 0", "max_messages"),
            ("", "topic = \"b\", max_bytes = 10", "max_bytes"),
        ] {
            let e = refusal(&forward(profile, batch));
            assert_eq!(e.key, "cloud.forward[0].batch", "{batch}");
            assert!(e.message.contains(says), "{batch}: {}", e.message);
        }
    }

    #[test]
    fn the_default_thing_comes_from_the_machine_id() {
        assert_eq!(
            thing_from_machine_id(Some("3D1219C7C4C5404AAA1F6D2A48ADFDA4\n")).as_deref(),
            Some("grove-3d1219c7c4c5")
        );
        assert_eq!(thing_from_machine_id(Some("\n")), None);
        assert_eq!(thing_from_machine_id(Some("uninitialized\n")), None);
        assert_eq!(thing_from_machine_id(None), None);
    }

    #[test]
    fn a_disabled_section_is_none() {
        let raw: RawCloud = toml::from_str("enabled = false\nhost = \"h\"\n").expect("parses");
        assert!(raw.resolve(|p| p).expect("valid").is_none());
    }
}
