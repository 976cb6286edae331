//! The link to the cloud broker: rumqttc over TCP or TLS (rustls, ring provider), reconnecting
//! with capped exponential backoff and jitter.
//!
//! Each connection attempt gets a fresh rumqttc client and event loop, dropped when the connection
//! ends. rumqttc 0.25 would otherwise carry requests that were queued in its channel into the next
//! session (ahead of the outbox's resend of older messages, breaking order) and, on a clean
//! session, silently clear the publishes it had in flight. With a fresh event loop per session the
//! outbox alone decides what is sent, in order, and a publish on a dead session fails at once
//! instead of blocking. rumqttc's types stay in this file; the rest of the cloud module sees
//! [`LinkEvent`] and [`Session`].
//!
//! MQTT 3.1.1 and 5 are rumqttc's two separate clients; [`Driver`] puts them behind one small
//! interface (connect, step, subscribe, publish) so the reconnect loop exists once. With MQTT 5 a
//! PUBACK can carry a failure reason (AWS IoT Core: not authorized, quota exceeded, ...): such a
//! message was refused, not delivered, and is reported as [`LinkEvent::Refused`].
//!
//! The session is persistent unless `session_expiry_secs = 0`: the cloud keeps the link's
//! subscriptions and queues its QoS 1 messages while the gateway is away; [`LinkEvent::Up`] says
//! whether the cloud still had the session (CONNACK's session present flag), so shadow sync knows
//! whether what changed in the cloud meanwhile is on its way or must be read.
//!
//! The subscriptions ([`Subscriptions`]: every component's filters, one list) are made again at
//! every connect, split into SUBSCRIBE packets of at most the cloud's filters per packet (AWS IoT
//! Core: 8). On MQTT 5 they ask for retained messages only when the subscription is new (retain
//! handling 1), so a resumed session does not get the cloud's retained messages again. Messages from the cloud
//! are acknowledged by hand ([`Ack`]), only once the cloud component has handed them on, so a
//! gateway that stops between the two gets the message again instead of losing it.
//!
//! The password is read from its file or environment variable when the options are built and
//! lives only in rumqttc's options, which are never printed (their `Debug` shows it).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5;
use rumqttc::{
    AsyncClient, Event, Incoming, MqttOptions, NetworkOptions, Outgoing, QoS, TlsConfiguration,
    Transport,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::config::{CloudConfig, Credentials, Protocol, SecretSource, Transport as LinkTransport};

/// Why the link cannot be set up at all (a configuration problem, reported at startup).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A TLS file is missing or unusable.
    #[error("cloud TLS {what} {path}: {message}")]
    File {
        /// "CA", "certificate" or "private key".
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// rustls refused the combination.
    #[error("cloud TLS: {0}")]
    Tls(String),
    /// The password cannot be read (its content is never part of the message).
    #[error("cloud password: {0}")]
    Password(String),
}

/// The cloud subscriptions the link makes at every connect.
#[derive(Debug, Clone, Default)]
pub struct Subscriptions {
    /// The filters, every component's (downlink, shadow sync, ...), in the order they are made.
    pub filters: Vec<String>,
    /// Most filters in one SUBSCRIBE packet; `None`: all in one.
    pub per_packet: Option<usize>,
}

impl Subscriptions {
    /// The SUBSCRIBE packets to send: the filters in order, in chunks of `per_packet`.
    fn packets(&self) -> impl Iterator<Item = &[String]> {
        self.filters
            .chunks(self.per_packet.unwrap_or(usize::MAX).max(1))
    }
}

/// What the link reports to the cloud component, in the order it happened.
#[derive(Debug)]
pub enum LinkEvent {
    /// Connected (CONNACK received, subscriptions requested): publish through this session.
    Up {
        /// The session's publishing handle.
        session: Session,
        /// Whether the cloud resumed the session it kept (CONNACK's session present flag): its
        /// subscriptions held, and the QoS 1 messages published for the gateway meanwhile
        /// follow.
        resumed: bool,
    },
    /// rumqttc wrote a QoS 1 PUBLISH with this packet id.
    Written(u16),
    /// The cloud acknowledged the QoS 1 PUBLISH with this packet id.
    PubAck(u16),
    /// The cloud answered the QoS 1 PUBLISH with this packet id with a failure reason (MQTT 5).
    Refused(u16, String),
    /// A message from the cloud.
    Message {
        /// The cloud topic.
        topic: String,
        /// The payload.
        payload: Bytes,
        /// Its acknowledgement, to send once it has been handed on.
        ack: Ack,
    },
    /// The session ended (or the connection attempt failed).
    Down {
        /// Why.
        reason: String,
        /// How long the link waits before the next attempt.
        retry_in: Duration,
    },
}

/// The PUBACK owed to the cloud for one of its QoS 1 messages, on the session it came in.
#[derive(Debug)]
pub struct Ack(Box<AckOn>);

#[derive(Debug)]
enum AckOn {
    V4(AsyncClient, rumqttc::Publish),
    V5(v5::AsyncClient, v5::mqttbytes::v5::Publish),
}

impl Ack {
    /// Sends the acknowledgement (nothing for QoS 0). If its session has ended meanwhile, the
    /// cloud sends the message again on the next one (a persistent session) or has forgotten it.
    pub fn send(self) {
        let sent = match &*self.0 {
            AckOn::V4(c, p) => c.try_ack(p).is_ok(),
            AckOn::V5(c, p) => c.try_ack(p).is_ok(),
        };
        if !sent {
            debug!("a cloud message's PUBACK could not be queued; the cloud will send it again");
        }
    }
}

/// One connected session: publishes go through it until it ends.
#[derive(Debug, Clone)]
pub struct Session {
    client: Client,
}

/// rumqttc's client handle of either protocol version.
#[derive(Debug, Clone)]
enum Client {
    V4(AsyncClient),
    V5(v5::AsyncClient),
}

/// What a publish carries besides topic and payload.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extras<'a> {
    /// The retain flag.
    pub retain: bool,
    /// MQTT 5 user properties; an MQTT 3.1.1 link cannot carry them and sends the message
    /// without.
    pub user_properties: &'a [(String, String)],
}

impl Session {
    /// Hands a QoS 1 publish to the session without waiting; false if the session is gone or its
    /// queue is full (the caller keeps the message and sends it in a later session).
    pub fn publish_qos1(&self, topic: &str, payload: Bytes, extras: Extras<'_>) -> bool {
        self.publish(topic, QoS::AtLeastOnce, payload, extras)
    }

    /// Hands a QoS 0 publish (shadow requests: their answer is the acknowledgement).
    pub fn publish_qos0(&self, topic: &str, payload: Bytes) -> bool {
        self.publish(topic, QoS::AtMostOnce, payload, Extras::default())
    }

    fn publish(&self, topic: &str, qos: QoS, payload: Bytes, extras: Extras<'_>) -> bool {
        match &self.client {
            Client::V4(c) => c.try_publish(topic, qos, extras.retain, payload).is_ok(),
            Client::V5(c) if extras.user_properties.is_empty() => c
                .try_publish(topic, v5_qos(qos), extras.retain, payload)
                .is_ok(),
            Client::V5(c) => {
                let properties = v5::mqttbytes::v5::PublishProperties {
                    user_properties: extras.user_properties.to_vec(),
                    ..Default::default()
                };
                c.try_publish_with_properties(
                    topic,
                    v5_qos(qos),
                    extras.retain,
                    payload,
                    properties,
                )
                .is_ok()
            }
        }
    }
}

fn v5_qos(qos: QoS) -> v5::mqttbytes::QoS {
    match qos {
        QoS::AtMostOnce => v5::mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => v5::mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => v5::mqttbytes::QoS::ExactlyOnce,
    }
}

/// The configured client options, for either protocol version. Not `Debug`: rumqttc's options
/// print the password.
#[derive(Clone)]
pub enum Options {
    /// MQTT 3.1.1.
    V4(Box<MqttOptions>),
    /// MQTT 5.
    V5(Box<v5::MqttOptions>),
}

impl Options {
    fn host(&self) -> String {
        match self {
            Options::V4(o) => o.broker_address().0,
            Options::V5(o) => o.broker_address().0,
        }
    }
}

/// What one event-loop step meant, in either protocol version.
enum Step {
    /// CONNACK: whether the session was resumed, or the refusal reason.
    ConnAck(Result<bool, String>),
    /// Something to report as it is.
    Report(LinkEvent),
    Other,
}

/// One connection attempt's client and event loop.
enum Driver {
    V4(AsyncClient, Box<rumqttc::EventLoop>),
    V5(v5::AsyncClient, Box<v5::EventLoop>),
}

impl Driver {
    fn new(options: &Options, capacity: usize) -> Driver {
        match options {
            Options::V4(o) => {
                let (client, mut eventloop) = AsyncClient::new((**o).clone(), capacity);
                eventloop.set_network_options(network());
                Driver::V4(client, Box::new(eventloop))
            }
            Options::V5(o) => {
                let (client, eventloop) = v5::AsyncClient::new((**o).clone(), capacity);
                Driver::V5(client, Box::new(eventloop))
            }
        }
    }

    async fn step(&mut self) -> Result<Step, String> {
        match self {
            Driver::V4(client, eventloop) => match eventloop.poll().await {
                Ok(event) => Ok(v4_step(client, event)),
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                    Err(refused(&format!("{code:?}")))
                }
                Err(e) => Err(e.to_string()),
            },
            Driver::V5(client, eventloop) => match eventloop.poll().await {
                Ok(event) => Ok(v5_step(client, event)),
                Err(v5::ConnectionError::ConnectionRefused(code)) => {
                    Err(refused(&format!("{code:?}")))
                }
                Err(e) => Err(e.to_string()),
            },
        }
    }

    /// What the event loop had already taken in when its connection failed, to report before the
    /// session ends. rumqttc reads every packet that has arrived in one go and queues their events;
    /// when the connection's end is among them (a broker that closes right after a PUBACK, as
    /// mosquitto does after refusing a publish), `poll` returns the error and the acknowledgements
    /// and messages read before it stay queued in the event loop, which is dropped with the
    /// session. Lost, they would mean a refused message resent on every reconnect (and the
    /// connection closed each time, so nothing behind it ever got through), an acknowledged
    /// message sent again, and a downlink message rumqttc had already acknowledged never
    /// delivered.
    fn leftovers(&mut self) -> Vec<LinkEvent> {
        let steps: Vec<Step> = match self {
            Driver::V4(client, eventloop) => eventloop
                .state
                .events
                .drain(..)
                .map(|e| v4_step(client, e))
                .collect(),
            Driver::V5(client, eventloop) => eventloop
                .state
                .events
                .drain(..)
                .map(|e| v5_step(client, e))
                .collect(),
        };
        steps
            .into_iter()
            .filter_map(|step| match step {
                Step::Report(event) => Some(event),
                Step::ConnAck(_) | Step::Other => None,
            })
            .collect()
    }

    /// Queues one SUBSCRIBE packet with `filters`, each at QoS 1.
    fn subscribe(&self, filters: &[String]) -> bool {
        match self {
            Driver::V4(c, _) => c
                .try_subscribe_many(
                    filters
                        .iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)),
                )
                .is_ok(),
            Driver::V5(c, _) => c
                .try_subscribe_many(filters.iter().map(|f| v5::mqttbytes::v5::Filter {
                    retain_forward_rule: v5::mqttbytes::v5::RetainForwardRule::OnNewSubscribe,
                    ..v5::mqttbytes::v5::Filter::new(f.clone(), v5::mqttbytes::QoS::AtLeastOnce)
                }))
                .is_ok(),
        }
    }

    fn session(&self) -> Session {
        Session {
            client: match self {
                Driver::V4(c, _) => Client::V4(c.clone()),
                Driver::V5(c, _) => Client::V5(c.clone()),
            },
        }
    }

    fn disconnect(&self) {
        // A session that is already gone needs no DISCONNECT.
        let _ = match self {
            Driver::V4(c, _) => c.try_disconnect().is_ok(),
            Driver::V5(c, _) => c.try_disconnect().is_ok(),
        };
    }
}

/// Why the cloud refused the connection (its CONNACK code), and what to check.
fn refused(code: &str) -> String {
    let hint = match code {
        "BadUserNamePassword" | "NotAuthorized" => {
            ": check cloud.username and the password (and the client certificate, with TLS)"
        }
        "BadClientId" | "ClientIdentifierNotValid" => ": check cloud.client_id",
        _ => "",
    };
    format!("the cloud refused the connection: {code}{hint}")
}

/// What an MQTT 3.1.1 event loop event means for the link.
fn v4_step(client: &AsyncClient, event: Event) -> Step {
    match event {
        Event::Incoming(Incoming::ConnAck(ack)) => {
            Step::ConnAck(if ack.code == rumqttc::ConnectReturnCode::Success {
                Ok(ack.session_present)
            } else {
                Err(refused(&format!("{:?}", ack.code)))
            })
        }
        Event::Outgoing(Outgoing::Publish(pkid)) if pkid != 0 => {
            Step::Report(LinkEvent::Written(pkid))
        }
        Event::Incoming(Incoming::PubAck(ack)) => Step::Report(LinkEvent::PubAck(ack.pkid)),
        Event::Incoming(Incoming::Publish(p)) => Step::Report(LinkEvent::Message {
            topic: p.topic.clone(),
            payload: p.payload.clone(),
            ack: Ack(Box::new(AckOn::V4(client.clone(), p))),
        }),
        _ => Step::Other,
    }
}

/// What an MQTT 5 event loop event means for the link.
fn v5_step(client: &v5::AsyncClient, event: v5::Event) -> Step {
    use v5::mqttbytes::v5::{ConnectReturnCode, Packet, PubAckReason};
    match event {
        v5::Event::Incoming(Packet::ConnAck(ack)) => {
            Step::ConnAck(if ack.code == ConnectReturnCode::Success {
                Ok(ack.session_present)
            } else {
                Err(refused(&format!("{:?}", ack.code)))
            })
        }
        v5::Event::Outgoing(Outgoing::Publish(pkid)) if pkid != 0 => {
            Step::Report(LinkEvent::Written(pkid))
        }
        v5::Event::Incoming(Packet::PubAck(ack)) => match ack.reason {
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers => {
                Step::Report(LinkEvent::PubAck(ack.pkid))
            }
            reason => Step::Report(LinkEvent::Refused(ack.pkid, format!("{reason:?}"))),
        },
        v5::Event::Incoming(Packet::Publish(p)) => Step::Report(LinkEvent::Message {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload.clone(),
            ack: Ack(Box::new(AckOn::V5(client.clone(), p))),
        }),
        _ => Step::Other,
    }
}

/// Small publishes must not wait for Nagle's algorithm: latency to the cloud matters more than
/// packet count, and batches fill segments anyway.
fn network() -> NetworkOptions {
    let mut n = NetworkOptions::new();
    n.set_tcp_nodelay(true);
    n
}

/// Reconnect delays: exponential from `base`, capped at `cap`, with "equal jitter" (a random half
/// on top of a fixed half), so a fleet that lost the same cloud does not reconnect in step, and no
/// attempt comes sooner than half the nominal delay. Pure: the random fraction is passed in.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff that starts at `base` and never exceeds `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The delay before the next attempt, given `random` in [0, 1).
    pub fn next_delay(&mut self, random: f64) -> Duration {
        let nominal = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        nominal / 2 + nominal.mul_f64(random.clamp(0.0, 1.0) / 2.0)
    }

    /// A connection succeeded: start again from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The rumqttc options for the configured cloud.
pub fn options(config: &CloudConfig) -> Result<Options, LinkError> {
    let transport = match &config.transport {
        LinkTransport::PlainTcp => None,
        LinkTransport::Tls { ca, client, alpn } => Some(Transport::tls_with_config(
            TlsConfiguration::Rustls(tls_config(ca, client.as_ref(), alpn)?),
        )),
    };
    let login = config
        .credentials
        .as_ref()
        .map(|c| Ok::<_, LinkError>((c.username.clone(), password(c)?)))
        .transpose()?;
    let persistent = config.session_expiry_secs > 0;
    // The outbox's window plus room for shadow requests.
    let inflight = u16::try_from(config.inflight + 16).unwrap_or(u16::MAX);
    Ok(match config.protocol {
        Protocol::V311 => {
            let mut o =
                MqttOptions::new(config.client_id.clone(), config.host.clone(), config.port);
            o.set_keep_alive(config.keep_alive);
            o.set_clean_session(!persistent);
            o.set_manual_acks(true);
            if let Some((user, password)) = login {
                o.set_credentials(user, password);
            }
            o.set_max_packet_size(1 << 20, 1 << 20);
            o.set_inflight(inflight);
            if let Some(t) = transport {
                o.set_transport(t);
            }
            Options::V4(Box::new(o))
        }
        Protocol::V5 => {
            let mut o =
                v5::MqttOptions::new(config.client_id.clone(), config.host.clone(), config.port);
            o.set_keep_alive(config.keep_alive);
            o.set_clean_start(!persistent);
            o.set_session_expiry_interval(persistent.then_some(config.session_expiry_secs));
            o.set_manual_acks(true);
            if let Some((user, password)) = login {
                o.set_credentials(user, password);
            }
            o.set_max_packet_size(Some(1 << 20));
            o.set_outgoing_inflight_upper_limit(inflight);
            o.set_network_options(network());
            if let Some(t) = transport {
                o.set_transport(t);
            }
            Options::V5(Box::new(o))
        }
    })
}

/// Reads the password from its file or environment variable. Neither the password nor any part
/// of it is ever in an error or a log line.
fn password(credentials: &Credentials) -> Result<String, LinkError> {
    let Some(source) = &credentials.password else {
        return Ok(String::new());
    };
    let secret = match source {
        SecretSource::Env(name) => std::env::var(name)
            .map_err(|e| LinkError::Password(format!("the environment variable {name}: {e}")))?,
        SecretSource::File(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| LinkError::Password(format!("{}: {e}", path.display())))?;
            warn_if_readable_by_others(path);
            // `echo secret > file` ends it with a line break that is not part of the password.
            let text = text.strip_suffix('\n').unwrap_or(&text);
            text.strip_suffix('\r').unwrap_or(text).to_owned()
        }
    };
    if secret.is_empty() {
        let place = match source {
            SecretSource::Env(name) => format!("the environment variable {name}"),
            SecretSource::File(path) => path.display().to_string(),
        };
        return Err(LinkError::Password(format!("{place} is empty")));
    }
    Ok(secret)
}

/// A password file others can read is worth a warning, not a refusal (the operator may have
/// reasons, e.g. a group of services sharing it).
fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                warn!(
                    file = %path.display(),
                    "the cloud password file can be read by other users (chmod 600 it)"
                );
            }
        }
    }
}

fn tls_config(
    ca: &Path,
    client: Option<&(std::path::PathBuf, std::path::PathBuf)>,
    alpn: &[String],
) -> Result<Arc<rustls::ClientConfig>, LinkError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(ca, "CA")? {
        roots.add(cert).map_err(|e| LinkError::File {
            what: "CA",
            path: ca.display().to_string(),
            message: e.to_string(),
        })?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LinkError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = certificates(cert, "certificate")?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| LinkError::File {
                what: "private key",
                path: key.display().to_string(),
                message: e.to_string(),
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| LinkError::Tls(format!("the key does not fit the certificate: {e}")))?
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}

/// [`grove_auth::tls::certificates`], its error in the cloud link's terms.
fn certificates(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, LinkError> {
    grove_auth::tls::certificates(path, what).map_err(|e| match e {
        grove_auth::tls::TlsError::File { message, .. } => LinkError::File {
            what,
            path: path.display().to_string(),
            message,
        },
        other => LinkError::Tls(other.to_string()),
    })
}

/// Drives the link until shutdown: connect, report, reconnect after a backoff.
pub async fn run(
    options: Options,
    subscriptions: Subscriptions,
    window: usize,
    mut backoff: Backoff,
    events: mpsc::UnboundedSender<LinkEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    let host = options.host();
    let mut last_failure: Option<String> = None;
    loop {
        let mut driver = Driver::new(&options, window + 64);
        let mut up = false;
        let reason = loop {
            let step = tokio::select! {
                _ = shutdown.changed() => {
                    driver.disconnect();
                    return;
                }
                s = driver.step() => s,
            };
            let event = match step {
                Err(e) => break e,
                Ok(Step::ConnAck(Err(refused))) => break refused,
                Ok(Step::ConnAck(Ok(resumed))) => {
                    backoff.reset();
                    up = true;
                    for filters in subscriptions.packets() {
                        if !driver.subscribe(filters) {
                            warn!(?filters, "cannot queue a cloud subscription");
                        }
                    }
                    info!(host, resumed, "cloud link up");
                    LinkEvent::Up {
                        session: driver.session(),
                        resumed,
                    }
                }
                Ok(Step::Report(event)) => event,
                Ok(Step::Other) => continue,
            };
            if events.send(event).is_err() {
                return;
            }
        };
        for event in driver.leftovers() {
            if events.send(event).is_err() {
                return;
            }
        }
        drop(driver);
        let delay = backoff.next_delay(fastrand::f64());
        let retry_in_ms = delay.as_millis() as u64;
        if up {
            warn!(error = reason, retry_in_ms, "cloud link down");
        } else if last_failure.as_ref() != Some(&reason) {
            // A new reason is worth a warning (a wrong password, a refused certificate); the
            // same one again, every attempt while the cloud is away, is not.
            warn!(
                error = reason,
                retry_in_ms, "cloud connection attempt failed"
            );
        } else {
            debug!(
                error = reason,
                retry_in_ms, "cloud connection attempt failed"
            );
        }
        last_failure = (!up).then(|| reason.clone());
        let down = LinkEvent::Down {
            reason,
            retry_in: delay,
        };
        if events.send(down).is_err() {
            return;
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_file_loses_one_line_break_and_an_empty_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        let creds = |source| Credentials {
            username: "u".into(),
            password: Some(source),
        };
        for (written, want) in [
            ("s3cret\n", "s3cret"),
            ("s3cret\r\n", "s3cret"),
            ("a b\n\n", "a b\n"),
        ] {
            std::fs::write(&file, written).unwrap();
            assert_eq!(
                password(&creds(SecretSource::File(file.clone()))).unwrap(),
                want
            );
        }
        std::fs::write(&file, "\n").unwrap();
        let e = password(&creds(SecretSource::File(file.clone()))).unwrap_err();
        assert!(e.to_string().ends_with("is empty"), "{e}");
        let e = password(&creds(SecretSource::File(dir.path().join("missing")))).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        let e = password(&creds(SecretSource::Env(
            "GROVE_TEST_UNSET_VARIABLE".into(),
        )))
        .unwrap_err();
        assert!(e.to_string().contains("GROVE_TEST_UNSET_VARIABLE"), "{e}");
    }

    #[test]
    fn subscriptions_go_in_packets_of_at_most_the_cloud_s_limit() {
        let subs = |n: usize, per_packet| Subscriptions {
            filters: (0..n).map(|i| format!("f/{i}")).collect(),
            per_packet,
        };
        let sizes = |s: &Subscriptions| s.packets().map(<[String]>::len).collect::<Vec<_>>();
        assert_eq!(sizes(&subs(20, Some(8))), [8, 8, 4]);
        assert_eq!(sizes(&subs(8, Some(8))), [8]);
        assert_eq!(sizes(&subs(20, None)), [20]);
        assert_eq!(sizes(&subs(0, Some(8))), Vec::<usize>::new());
        let s = subs(9, Some(8));
        let order: Vec<&String> = s.packets().flatten().collect();
        assert_eq!(order, s.filters.iter().collect::<Vec<_>>(), "in order");
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(1000));
        // (random, expected delay): half fixed, half random.
        let cases = [
            (0.0, 50),
            (1.0, 200),
            (0.5, 300),
            (0.0, 400),
            (0.0, 500),
            (0.999_999, 999),
        ];
        for (random, want) in cases {
            let got = b.next_delay(random).as_millis();
            assert!(
                got.abs_diff(want) <= 1,
                "random {random}: {got} ms, want {want}"
            );
        }
        b.reset();
        assert_eq!(b.next_delay(0.0), ms(50));
    }

    /// A broker's last words: the peer answers the CONNECT with `connack`, waits for the client's
    /// PUBLISH if `after_publish`, then writes `last` and closes the connection at once, so the
    /// client reads the packet and the end of the connection together (as when mosquitto refuses
    /// a publish and disconnects). No real broker does this on demand, so the peer is scripted:
    /// raw MQTT bytes, the client under test is rumqttc as the gateway runs it.
    async fn last_words(
        options: impl FnOnce(u16) -> Options,
        connack: &'static [u8],
        after_publish: bool,
        last: &'static [u8],
    ) -> Vec<LinkEvent> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let peer = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 256];
            assert!(socket.read(&mut buf).await.unwrap() > 0, "CONNECT");
            socket.write_all(connack).await.unwrap();
            if after_publish {
                let n = socket.read(&mut buf).await.unwrap();
                assert_eq!(buf[0] & 0xf0, 0x30, "a PUBLISH: {:?}", &buf[..n]);
            }
            socket.write_all(last).await.unwrap();
        });
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (stop, shutdown) = watch::channel(false);
        let never = Duration::from_secs(3600);
        let link = tokio::spawn(run(
            options(port),
            Subscriptions::default(),
            16,
            Backoff::new(never, never),
            tx,
            shutdown,
        ));
        let mut seen = Vec::new();
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("the link reports within 10 s")
                .expect("the link runs");
            match event {
                LinkEvent::Up { session, .. } if after_publish => {
                    let payload = Bytes::from_static(b"x");
                    assert!(session.publish_qos1("no/1", payload, Extras::default()));
                }
                LinkEvent::Down { .. } => break,
                other => seen.push(other),
            }
        }
        peer.await.unwrap();
        stop.send(true).unwrap();
        link.await.unwrap();
        seen
    }

    fn v4(port: u16) -> Options {
        Options::V4(Box::new(MqttOptions::new("edge", "127.0.0.1", port)))
    }

    fn v5(port: u16) -> Options {
        Options::V5(Box::new(v5::MqttOptions::new("edge", "127.0.0.1", port)))
    }

    const CONNACK_V4: &[u8] = &[0x20, 0x02, 0x00, 0x00];
    const CONNACK_V5: &[u8] = &[0x20, 0x03, 0x00, 0x00, 0x00];

    #[tokio::test]
    async fn a_refusal_read_with_the_end_of_the_connection_is_reported() {
        // PUBACK, packet id 1, reason 0x87 "not authorized".
        let seen = last_words(v5, CONNACK_V5, true, &[0x40, 0x03, 0x00, 0x01, 0x87]).await;
        assert!(
            seen.iter()
                .any(|e| matches!(e, LinkEvent::Refused(1, r) if r == "NotAuthorized")),
            "{seen:?}"
        );
    }

    #[tokio::test]
    async fn an_acknowledgement_read_with_the_end_of_the_connection_is_reported() {
        let seen = last_words(v4, CONNACK_V4, true, &[0x40, 0x02, 0x00, 0x01]).await;
        assert!(
            seen.iter().any(|e| matches!(e, LinkEvent::PubAck(1))),
            "{seen:?}"
        );
    }

    #[tokio::test]
    async fn a_cloud_message_read_with_the_end_of_the_connection_is_delivered() {
        // PUBLISH QoS 1 "c/1", packet id 7, payload "x": rumqttc acknowledges it as it reads it.
        let publish = &[0x32, 0x08, 0x00, 0x03, b'c', b'/', b'1', 0x00, 0x07, b'x'];
        let seen = last_words(v4, CONNACK_V4, false, publish).await;
        assert!(
            seen.iter()
                .any(|e| matches!(e, LinkEvent::Message { topic, payload, .. }
                if topic == "c/1" && payload.as_ref() == b"x")),
            "{seen:?}"
        );
    }
}
