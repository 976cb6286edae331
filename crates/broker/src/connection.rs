//! One device connection: Grove's MQTT connection layer on top of rumqttd's router.
//!
//! rumqttd's own server hides its connection handling; Grove terminates MQTT itself so that it can
//! serve MQTT 3.1.1 and 5 on one port, persist retained messages before they are acknowledged,
//! count what flows for `/metrics`, enforce the payload limit with a clear refusal, and (later)
//! authorize every packet. Everything after CONNECT is relayed to the router through a local link,
//! the same interface rumqttd's server uses internally; subscriptions, QoS 1 flow, persistent
//! sessions and retained delivery remain the router's.
//!
//! Lifecycle: read and check CONNECT (`connect.rs` decides on the bytes; at most
//! `max_connect_size` of them are read), authenticate, take one of `max_connections`, register a
//! link with the router (which answers CONNACK), all within `connect_timeout_ms` and while holding
//! a place in the listener's pre-authentication budget (`admission.rs`); then relay both ways
//! until DISCONNECT, an error, a keep-alive timeout or shutdown. A connection that ends without DISCONNECT has its will published (after the
//! MQTT 5 will delay, if any) and is removed from the router.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{
    self, ConnAck, ConnectReturnCode, Disconnect, DisconnectReasonCode, LastWill,
    LastWillProperties, Login, Packet, PubAck, PubAckReason, PubRec, PubRecReason, Publish,
    PublishProperties, SubAck, SubscribeReasonCode,
};
use rumqttd::Notification;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::admission::Ticket;
use super::codec::{Codec, Version};
use super::connect::{check_topic_name, read_connect, Hello, Refusal, Step};
use super::{
    namespace, poll_now, publish_qos_pkid, Listener, Shared, GROVE_PROPERTY_PREFIX, ORIGIN_PROPERTY,
};
use crate::config::AuthMode;
use crate::reply;
use grove_auth::identity::{Device, PasswordCheck};
use grove_auth::policy::{allow_all_policy, safe_variable, Resolved};
use grove_auth::tls::common_name;

/// Extra room, beyond the payload limit, for the rest of a PUBLISH (topic up to 64 KiB, packet id,
/// MQTT 5 properties). The exact payload limit is checked after decoding.
const HEADER_ALLOWANCE: usize = 128 * 1024;

/// Flow control: the longest a publisher goes unread in one hold; then one batch is read and the
/// hold starts again if the pressure is still there. Bounded so that a reader the router has not
/// yet judged stuck cannot stop a publisher for good.
const MAX_HOLD: Duration = Duration::from_secs(1);

/// Flow control: how often a held connection looks at the pressure again.
const HOLD_POLL: Duration = Duration::from_millis(1);

/// Why a connection ended.
#[derive(Debug)]
enum End {
    /// The client sent DISCONNECT (its will is cleared unless it asked for it, MQTT 5 0x04).
    Disconnected {
        /// MQTT 5 "disconnect with will message".
        with_will: bool,
    },
    /// The client closed the socket, or it failed, without DISCONNECT.
    Lost(String),
    /// Nothing arrived within 1.5 keep-alive periods.
    KeepAliveTimeout,
    /// Grove refused a packet and closes the connection.
    Refused {
        reason: &'static str,
        detail: String,
        code: DisconnectReasonCode,
    },
    /// The router dropped the link (e.g. the same client id connected again: session takeover).
    RouterClosed,
    /// The device's registration was removed or changed: it ends at once, without its will (a
    /// revoked device can leave nothing behind).
    Revoked(String),
    /// The gateway is shutting down.
    Shutdown,
}

/// What the handshake produced.
struct Session {
    client_id: String,
    codec: Codec,
    /// The policy resolved for this client; `None` on an allow-all listener (nothing to check).
    policy: Option<Resolved>,
    /// SUBSCRIBEs of which the router answers only the allowed filters: the codes of the denied
    /// ones, by position, merged into the router's SUBACK.
    partial_subacks: HashMap<u16, Vec<Option<SubscribeReasonCode>>>,
    keep_alive: Option<Duration>,
    will: Option<Will>,
    /// A policed client's QoS 1 deliveries not yet acknowledged to the router, in order: `false`
    /// for one the device must acknowledge, `true` for one the policy dropped, which Grove
    /// acknowledges for it. rumqttd accepts acknowledgements only in delivery order (and
    /// disconnects otherwise), so a dropped delivery behind one the device still owes is
    /// acknowledged only after the device's. Empty, or headed by a `false`.
    owed: VecDeque<(u16, bool)>,
    /// The registered identity the client proved, re-checked whenever the devices file changes:
    /// a device removed (or given new credentials) is disconnected at once.
    device: Option<Device>,
    tx: LinkTx,
    rx: LinkRx,
}

/// A will message and when to publish it.
struct Will {
    will: LastWill,
    properties: Option<LastWillProperties>,
    delay: Duration,
}

/// Counts connections for generated client ids.
static ASSIGNED_IDS: AtomicU64 = AtomicU64::new(0);

/// Serves one accepted TCP connection to its end. `ticket` is its place in the listener's
/// pre-authentication budget, given back once the handshake is over either way.
pub(super) async fn serve<S>(
    mut stream: S,
    peer: SocketAddr,
    peer_cert: Option<Vec<u8>>,
    listener: Arc<Listener>,
    shared: Arc<Shared>,
    ticket: Ticket,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024);
    let timeout = Duration::from_millis(shared.config.connect_timeout_ms);
    let handshake = handshake(
        &mut stream,
        &mut buf,
        &shared,
        &listener,
        peer,
        peer_cert.as_deref(),
    );
    let outcome = tokio::time::timeout(timeout, handshake).await;
    drop(ticket);
    let (session, _slot) = match outcome {
        Ok(Ok(accepted)) => accepted,
        // Counted and logged by `handshake`.
        Ok(Err(())) => return,
        Err(_) => {
            shared.metrics.refuse("connect_timeout");
            debug!(%peer, "no CONNECT within connect_timeout_ms");
            return;
        }
    };
    let client_id = session.client_id.clone();
    shared.metrics.connections.inc();
    info!(%peer, client_id, version = ?session.codec.version(), "client connected");
    // Registered before the relay first checks its identity, and dropped only after `finish`,
    // so a revocation either waits for this connection's end or is seen by its first check.
    let _live = session
        .device
        .clone()
        .map(|device| LiveDevice::register(&shared, device));
    let mut relay = Relay {
        shared: shared.clone(),
        stream,
        read: buf,
        write: BytesMut::with_capacity(1024),
        identity_changes: shared.identities.changes(),
        session,
        published: false,
    };
    let end = relay.run().await;
    relay.finish(end, peer).await;
}

/// A proved device's connection, listed in `Shared::live_devices` until it has ended (its last
/// packet relayed, its will published or not), so that a revocation can wait for that.
struct LiveDevice<'a> {
    shared: &'a Shared,
    id: u64,
}

impl<'a> LiveDevice<'a> {
    fn register(shared: &'a Shared, device: Device) -> LiveDevice<'a> {
        static IDS: AtomicU64 = AtomicU64::new(0);
        let id = IDS.fetch_add(1, Ordering::Relaxed);
        shared.live_devices.register(id, device);
        LiveDevice { shared, id }
    }
}

impl Drop for LiveDevice<'_> {
    fn drop(&mut self) {
        self.shared.live_devices.remove(self.id);
    }
}

/// Runs the handshake; a refusal is counted and logged, then answered with its CONNACK, if any
/// (counted first, so that a client that has read its refusal finds it in `/metrics`).
async fn handshake<'a, S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    shared: &'a Shared,
    listener: &Listener,
    peer: SocketAddr,
    peer_cert: Option<&[u8]>,
) -> Result<(Session, ConnectionSlot<'a>), ()> {
    let refusal = match negotiate(stream, buf, shared, listener, peer, peer_cert).await {
        Ok(accepted) => return Ok(accepted),
        Err(refusal) => refusal,
    };
    shared.metrics.refuse(refusal.reason);
    if refusal.security {
        warn!(%peer, listener = listener.name, reason = refusal.reason, detail = %refusal.detail, "connection refused");
    } else {
        debug!(%peer, reason = refusal.reason, detail = %refusal.detail, "connection refused");
    }
    if let Some(answer) = refusal.answer {
        let ack = ConnAck {
            session_present: false,
            code: answer.code,
        };
        write_packet(
            stream,
            &Codec::new(answer.version),
            Packet::ConnAck(ack, None),
        )
        .await;
    }
    Err(())
}

/// Reads CONNECT and checks it (`connect.rs`), authenticates the client, takes one of
/// `max_connections`, registers the link with the router and answers CONNACK.
async fn negotiate<'a, S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    shared: &'a Shared,
    listener: &Listener,
    peer: SocketAddr,
    peer_cert: Option<&[u8]>,
) -> Result<(Session, ConnectionSlot<'a>), Refusal> {
    let hello = loop {
        match read_connect(buf, &listener.connect_rules) {
            Step::Connect(hello) => break *hello,
            Step::NeedMore { room } => read_more(stream, buf, room).await?,
            Step::Refuse(refusal) => return Err(refusal),
        }
    };
    let Hello {
        version,
        connect,
        properties: props,
        will,
        will_properties: will_props,
        login,
    } = hello;
    let codec = Codec::new(version);
    let mut assigned = None;
    let client_id = if connect.client_id.is_empty() {
        let id = format!(
            "grove-{}-{}",
            std::process::id(),
            ASSIGNED_IDS.fetch_add(1, Ordering::Relaxed)
        );
        assigned = Some(id.clone());
        id
    } else {
        connect.client_id.clone()
    };

    let (policy, device) = authenticate(
        shared,
        listener,
        &client_id,
        version,
        login.as_ref(),
        peer,
        peer_cert,
    )
    .await?;
    if let Some(will) = &will {
        // A will may only go where the client may publish (AWS IoT asks for iot:Publish on the
        // will topic at connect), or a device could leave a will in another device's space. Its
        // topic is a valid topic name: `read_connect` checked.
        let topic = String::from_utf8_lossy(&will.topic);
        if policy.as_ref().is_some_and(|p| !p.may_publish(&topic)) {
            shared.metrics.deny("publish");
            warn!(client_id, %topic, "will topic denied by policy");
            return Err(
                Refusal::security("not_authorized", format!("will topic {topic} denied")).answer(
                    version,
                    ConnectReturnCode::NotAuthorized,
                    ConnectReturnCode::NotAuthorized,
                ),
            );
        }
    }
    // Taken once the client has authenticated (peers that never do cannot take the slots of
    // devices that do), before the CONNACK, and checked and taken in one step: a client
    // connecting right after another's CONNACK, or at the same time, can never exceed the limit.
    let Some(slot) = ConnectionSlot::reserve(shared) else {
        return Err(
            Refusal::new("max_connections", "broker.max_connections reached").answer(
                version,
                ConnectReturnCode::ServiceUnavailable,
                ConnectReturnCode::ServerBusy,
            ),
        );
    };
    let session_expiry = props
        .as_ref()
        .and_then(|p| p.session_expiry_interval)
        .unwrap_or(0);
    let will = will.map(|will| {
        let delay = will_props
            .as_ref()
            .and_then(|p| p.delay_interval)
            .unwrap_or(0);
        Will {
            will,
            properties: will_props,
            // MQTT 5 §3.1.3.2.2: the will waits for the will delay or the session's end,
            // whichever is first.
            delay: Duration::from_secs(u64::from(delay.min(session_expiry))),
        }
    });
    // A topic alias would hide the topic from the policy check, so policed clients get none.
    let topic_alias_max = match policy {
        Some(_) => 0,
        None => props.as_ref().and_then(|p| p.topic_alias_max).unwrap_or(0),
    };
    let (tx, rx, ack) = shared
        .router
        .link(
            namespace::client_id_to_router(&client_id),
            connect.clean_session,
            topic_alias_max,
        )
        .await
        .map_err(|e| Refusal::new("router", format!("the router refused the link: {e}")))?;
    let Notification::DeviceAck(ack) = ack else {
        return Err(Refusal::new("router", "the router did not answer CONNACK"));
    };
    let mut connack: Packet = ack.into();
    if let (Packet::ConnAck(_, props), Some(id)) = (&mut connack, assigned) {
        props
            .get_or_insert_with(Default::default)
            .assigned_client_identifier = Some(id);
    }
    let mut out = BytesMut::new();
    codec
        .write(connack, &mut out)
        .map_err(|e| Refusal::new("protocol", format!("cannot encode CONNACK: {e}")))?;
    stream
        .write_all(&out)
        .await
        .map_err(|e| Refusal::new("io", e.to_string()))?;
    shared.cancel_delayed_will(&client_id);
    let session = Session {
        client_id,
        codec,
        policy,
        partial_subacks: HashMap::new(),
        keep_alive: (connect.keep_alive > 0)
            .then(|| Duration::from_secs(u64::from(connect.keep_alive))),
        will,
        owed: VecDeque::new(),
        device,
        tx,
        rx,
    };
    Ok((session, slot))
}

/// Authenticates a client as its listener requires and resolves its policy (`None`: allow all);
/// also returns the registered identity it proved, if any.
async fn authenticate(
    shared: &Shared,
    listener: &Listener,
    client_id: &str,
    version: Version,
    login: Option<&Login>,
    peer: SocketAddr,
    peer_cert: Option<&[u8]>,
) -> Result<(Option<Resolved>, Option<Device>), Refusal> {
    let bad_login = |detail: String| {
        Refusal::security("bad_credentials", detail).answer(
            version,
            ConnectReturnCode::BadUserNamePassword,
            ConnectReturnCode::BadUserNamePassword,
        )
    };
    let not_authorized = |reason: &'static str, detail: String| {
        Refusal::security(reason, detail).answer(
            version,
            ConnectReturnCode::NotAuthorized,
            ConnectReturnCode::NotAuthorized,
        )
    };
    let device = match listener.auth {
        AuthMode::Anonymous => None,
        AuthMode::Password => {
            // `read_connect` refuses a password listener's CONNECT without a login.
            let password = login.map_or("", |l| l.password.as_str());
            let checked = shared
                .identities
                .check_password(client_id, password, peer.ip())
                .await;
            let outcome = match &checked {
                PasswordCheck::Accepted {
                    remembered: true, ..
                } => "remembered",
                PasswordCheck::Accepted { .. } => "verified",
                PasswordCheck::Refused => "rejected",
                PasswordCheck::Busy => "busy",
            };
            shared.metrics.password_check(outcome);
            match checked {
                PasswordCheck::Accepted { device, .. } => Some(device),
                PasswordCheck::Refused => {
                    return Err(bad_login(format!(
                        "wrong password for client {client_id:?}"
                    )))
                }
                PasswordCheck::Busy => {
                    return Err(Refusal::new(
                        "auth_busy",
                        format!("too many password checks queued; client {client_id:?} refused"),
                    )
                    .answer(
                        version,
                        ConnectReturnCode::ServiceUnavailable,
                        ConnectReturnCode::ServerBusy,
                    ))
                }
            }
        }
        AuthMode::Certificate => {
            let Some(der) = peer_cert else {
                return Err(not_authorized(
                    "identity_mismatch",
                    "no client certificate".into(),
                ));
            };
            let cn = common_name(der).unwrap_or_default();
            if cn != client_id {
                return Err(not_authorized(
                    "identity_mismatch",
                    format!("client id {client_id:?} does not match its certificate's common name {cn:?}"),
                ));
            }
            match shared.identities.check_certificate(client_id, der) {
                Some(d) => Some(d),
                None => {
                    return Err(not_authorized(
                        "unknown_certificate",
                        format!(
                        "the certificate of {client_id:?} is not registered (a removed device?)"
                    ),
                    ))
                }
            }
        }
    };
    let policy_name = device
        .as_ref()
        .and_then(|d| d.policy.as_deref())
        .unwrap_or(&listener.policy);
    let Some(policy) = shared.config.policies.get(policy_name) else {
        return Err(not_authorized(
            "not_authorized",
            format!("device {client_id:?} names the unknown policy `{policy_name}`"),
        ));
    };
    if *policy == allow_all_policy() {
        return Ok((None, device));
    }
    let thing = device.as_ref().map_or(client_id, |d| d.thing());
    if !safe_variable(client_id) || !safe_variable(thing) {
        return Err(not_authorized(
            "not_authorized",
            format!(
                "client id {client_id:?} or thing {thing:?} contains one of / + # $ {{ }} \
                 and cannot be used with policy `{policy_name}`"
            ),
        ));
    }
    let resolved = policy.resolve(client_id, thing);
    Ok((Some(resolved), device))
}

/// Reads at most `room` more bytes of the CONNECT: what an unauthenticated peer sends is held
/// only up to the CONNECT limit, whatever length it announces.
async fn read_more<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    room: usize,
) -> Result<(), Refusal> {
    let room = u64::try_from(room).unwrap_or(u64::MAX);
    match (&mut *stream).take(room).read_buf(buf).await {
        Ok(0) => Err(Refusal::new("io", "closed before CONNECT")),
        Ok(_) => Ok(()),
        Err(e) => Err(Refusal::new("io", e.to_string())),
    }
}

/// Best-effort write of a refusal before closing; the connection is being dropped either way.
async fn write_packet<S: AsyncWrite + Unpin>(stream: &mut S, codec: &Codec, packet: Packet) {
    let mut out = BytesMut::new();
    if codec.write(packet, &mut out).is_ok() {
        let _ = stream.write_all(&out).await;
    }
}

/// Holds one of `max_connections` and the connected-clients gauge from authentication until the
/// client is gone.
struct ConnectionSlot<'a>(&'a Shared);

impl<'a> ConnectionSlot<'a> {
    /// One of `max_connections`, or `None` when all are taken.
    fn reserve(shared: &'a Shared) -> Option<Self> {
        shared
            .connected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < shared.config.max_connections).then_some(n + 1)
            })
            .ok()?;
        shared.metrics.connected_clients.inc();
        Some(ConnectionSlot(shared))
    }
}

impl Drop for ConnectionSlot<'_> {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.connected_clients.dec();
    }
}

/// Relays packets between the socket and the router for one established session.
struct Relay<S> {
    shared: Arc<Shared>,
    stream: S,
    read: BytesMut,
    write: BytesMut,
    session: Session,
    /// Whether the last batch read from the client had a PUBLISH (flow control holds only
    /// publishers).
    published: bool,
    /// Changes when the devices file was re-read: a proved device then checks that it is still
    /// registered as it was, before anything more of it is relayed (see `Relay::revoked`).
    identity_changes: tokio::sync::watch::Receiver<u64>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Relay<S> {
    async fn run(&mut self) -> End {
        let mut shutdown = self.shared.shutdown.clone();
        let keep_alive = self.session.keep_alive.map(|k| k + k / 2);
        let far = Duration::from_secs(86_400 * 365);
        let mut deadline = Instant::now() + keep_alive.unwrap_or(far);
        // A revocation made while this client was authenticating: its change may predate
        // `identity_changes`, so it is checked once now.
        if let Some(end) = self.revoked(true) {
            return end;
        }
        // CONNECT may have arrived together with the first packets.
        if !self.read.is_empty() {
            if let Some(end) = self.ingest().await {
                return end;
            }
        }
        // Flow control: while the router says a subscriber is about to be overrun, a connection
        // that has just published stops reading (TCP then slows the client), for at most
        // MAX_HOLD at a time; it keeps delivering, so its own subscriptions drain.
        let mut held_since: Option<Instant> = None;
        let mut proved = self.session.device.is_some();
        loop {
            let held = self.published
                && self.shared.pressure.load(Ordering::Relaxed)
                && held_since.is_none_or(|t| t.elapsed() < MAX_HOLD);
            match (held, held_since) {
                (true, None) => {
                    held_since = Some(Instant::now());
                    self.shared.metrics.holds.inc();
                }
                (false, Some(_)) => held_since = None,
                _ => {}
            }
            tokio::select! {
                _ = shutdown.changed() => return End::Shutdown,
                // The client is not late with its keep-alive while Grove is not reading.
                _ = tokio::time::sleep(HOLD_POLL), if held => {
                    deadline = Instant::now() + keep_alive.unwrap_or(far);
                }
                read = self.stream.read_buf(&mut self.read), if !held => {
                    match read {
                        Ok(0) => return End::Lost("closed by the client".into()),
                        Err(e) => return End::Lost(e.to_string()),
                        Ok(_) => {}
                    }
                    deadline = Instant::now() + keep_alive.unwrap_or(far);
                    if let Some(end) = self.ingest().await {
                        return end;
                    }
                }
                notification = self.session.rx.next() => {
                    match notification {
                        Ok(first) => {
                            if let Some(end) = self.deliver(first).await {
                                return end;
                            }
                        }
                        Err(_) => return End::RouterClosed,
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return End::KeepAliveTimeout,
                changed = self.identity_changes.changed(), if proved => {
                    if changed.is_err() {
                        proved = false;
                        continue;
                    }
                    if let Some(end) = self.revoked(true) {
                        return end;
                    }
                }
            }
        }
    }

    /// Whether a proved device is no longer registered as it was when it connected (removed, or
    /// given other credentials): then its connection ends without its will. `always` checks even
    /// when the devices file was not re-read since the last check.
    fn revoked(&mut self, always: bool) -> Option<End> {
        // Anonymous clients have no registration to lose.
        self.session.device.as_ref()?;
        let changed = self.identity_changes.has_changed().unwrap_or(false);
        if !always && !changed {
            return None;
        }
        self.identity_changes.borrow_and_update();
        let id = &self.session.client_id;
        (self.shared.identities.device(id) != self.session.device).then(|| {
            End::Revoked(format!(
                "device {id:?} was removed or its credentials changed"
            ))
        })
    }

    /// Decodes every whole packet in the read buffer and relays them to the router in one batch.
    async fn ingest(&mut self) -> Option<End> {
        // Nothing of a revoked device is taken (stored, acknowledged or routed) once the devices
        // file that removed it has been read: checked before each batch, at the cost of one
        // atomic load while nothing changed.
        if let Some(revoked) = self.revoked(false) {
            return Some(revoked);
        }
        let max_len = self.shared.config.max_payload_size + HEADER_ALLOWANCE;
        let mut batch = Vec::new();
        // Publishes a durable tap takes, by wire topic (see `crate::tap`).
        self.published = false;
        let mut tapped: Vec<(String, Bytes)> = Vec::new();
        let mut end = None;
        loop {
            let packet = match self.session.codec.read(&mut self.read, max_len) {
                Ok(p) => p,
                Err(protocol::Error::InsufficientBytes(_)) => break,
                Err(protocol::Error::PayloadSizeLimitExceeded(len)) => {
                    end = Some(self.too_large(len));
                    break;
                }
                Err(e) => {
                    end = Some(End::Refused {
                        reason: "malformed",
                        detail: e.to_string(),
                        code: DisconnectReasonCode::MalformedPacket,
                    });
                    break;
                }
            };
            match packet {
                Packet::Publish(publish, props) => {
                    self.published = true;
                    if publish.payload.len() > self.shared.config.max_payload_size {
                        end = Some(self.too_large(publish.payload.len()));
                        break;
                    }
                    if let Err(detail) = check_topic_name(
                        &publish.topic,
                        props.as_ref().is_some_and(|p| p.topic_alias.is_some()),
                    ) {
                        end = Some(End::Refused {
                            reason: "malformed",
                            detail,
                            code: DisconnectReasonCode::TopicNameInvalid,
                        });
                        break;
                    }
                    if let Err(refused) = self.check_publish(&publish, props.as_ref()) {
                        match self.refuse_publish(&publish, refused) {
                            Some(e) => {
                                end = Some(e);
                                break;
                            }
                            None => continue,
                        }
                    }
                    self.shared.metrics.messages_received.inc();
                    self.shared
                        .metrics
                        .bytes_received
                        .inc_by(publish.payload.len() as u64);
                    if let Err(e) = self.shared.persist_retained(&publish).await {
                        end = Some(End::Refused {
                            reason: "store_failed",
                            detail: format!("cannot store the retained message: {e}"),
                            code: DisconnectReasonCode::UnspecifiedError,
                        });
                        break;
                    }
                    let topic = String::from_utf8_lossy(&publish.topic);
                    if self.shared.tapped(&topic) {
                        tapped.push((topic.into_owned(), publish.payload.clone()));
                    }
                    let mut publish = publish;
                    let mut props = props;
                    // `$grove-` properties are Grove's to set: a device may not forge them.
                    if let Some(p) = &mut props {
                        p.user_properties
                            .retain(|(k, _)| !k.starts_with(GROVE_PROPERTY_PREFIX));
                    }
                    if publish.topic.starts_with(b"$aws/things/")
                        || self.shared.record_origin.load(Ordering::Relaxed)
                    {
                        props
                            .get_or_insert_with(Default::default)
                            .user_properties
                            .push((ORIGIN_PROPERTY.to_owned(), self.session.client_id.clone()));
                    }
                    publish.topic = namespace::topic_to_router(&publish.topic);
                    batch.push(Packet::Publish(publish, props));
                }
                Packet::Subscribe(mut subscribe, props) => {
                    if let Some(detail) = subscribe
                        .filters
                        .iter()
                        .find_map(|f| namespace::check_filter(&f.path).err())
                    {
                        end = Some(End::Refused {
                            reason: "malformed",
                            detail,
                            code: DisconnectReasonCode::TopicFilterInvalid,
                        });
                        break;
                    }
                    if let Some(policy) = &self.session.policy {
                        let denied: Vec<bool> = subscribe
                            .filters
                            .iter()
                            .map(|f| !policy.may_subscribe(&f.path))
                            .collect();
                        if denied.iter().any(|d| *d) {
                            let code = match self.session.codec.version() {
                                Version::V311 => SubscribeReasonCode::Failure,
                                Version::V5 => SubscribeReasonCode::NotAuthorized,
                            };
                            for (f, _) in subscribe.filters.iter().zip(&denied).filter(|(_, d)| **d)
                            {
                                self.shared.metrics.deny("subscribe");
                                warn!(
                                    client_id = self.session.client_id,
                                    filter = f.path,
                                    "subscribe denied by policy"
                                );
                            }
                            let codes: Vec<_> = denied.iter().map(|d| d.then_some(code)).collect();
                            let mut filters = std::mem::take(&mut subscribe.filters).into_iter();
                            subscribe.filters = denied
                                .iter()
                                .filter_map(|d| {
                                    let f = filters.next();
                                    if *d {
                                        None
                                    } else {
                                        f
                                    }
                                })
                                .collect();
                            if subscribe.filters.is_empty() {
                                // Nothing for the router: answer the SUBACK here.
                                let ack = SubAck {
                                    pkid: subscribe.pkid,
                                    return_codes: codes.into_iter().flatten().collect(),
                                };
                                self.encode(Packet::SubAck(ack, None));
                                continue;
                            }
                            self.session.partial_subacks.insert(subscribe.pkid, codes);
                        }
                    }
                    for f in &mut subscribe.filters {
                        f.path = namespace::filter_to_router(&f.path);
                    }
                    batch.push(Packet::Subscribe(subscribe, props));
                }
                Packet::Unsubscribe(mut unsubscribe, props) => {
                    for f in &mut unsubscribe.filters {
                        *f = namespace::filter_to_router(f);
                    }
                    batch.push(Packet::Unsubscribe(unsubscribe, props));
                }
                Packet::Disconnect(d, props) => {
                    let with_will =
                        d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage;
                    batch.push(Packet::Disconnect(d, props));
                    end = Some(End::Disconnected { with_will });
                    break;
                }
                Packet::PubAck(ack, props) => {
                    let pkid = ack.pkid;
                    batch.push(Packet::PubAck(ack, props));
                    if self.session.owed.front() == Some(&(pkid, false)) {
                        self.session.owed.pop_front();
                        while let Some(&(dropped, true)) = self.session.owed.front() {
                            self.session.owed.pop_front();
                            batch.push(router_ack(dropped));
                        }
                    }
                }
                p @ (Packet::PingReq(_)
                | Packet::PubRec(..)
                | Packet::PubRel(..)
                | Packet::PubComp(..)) => batch.push(p),
                other => {
                    end = Some(End::Refused {
                        reason: "protocol",
                        detail: format!("unexpected packet from a client: {}", packet_name(&other)),
                        code: DisconnectReasonCode::ProtocolError,
                    });
                    break;
                }
            }
        }
        // The router acknowledges (and delivers) only what the tap's owner has committed. If the
        // owner has stopped, the gateway is shutting down: the batch is not relayed, so the
        // device gets no PUBACK and sends its QoS 1 messages again to the next gateway run.
        if !tapped.is_empty()
            && self
                .shared
                .offer_to_taps(tapped.iter().map(|(t, p)| (t.as_str(), p, 0)), None)
                .await
                .is_err()
        {
            return Some(End::RouterClosed);
        }
        if !batch.is_empty()
            && self
                .shared
                .router
                .relay(&mut self.session.tx, batch)
                .await
                .is_err()
        {
            return Some(End::RouterClosed);
        }
        // Answers Grove gives itself (refused PUBLISHes and SUBSCRIBEs).
        if !self.write.is_empty() {
            if let Err(e) = self.stream.write_all(&self.write).await {
                return Some(End::Lost(e.to_string()));
            }
            self.write.clear();
        }
        end
    }

    /// What the connection layer refuses in a PUBLISH whose topic name is valid: a topic the
    /// policy denies; a retained message on a reserved (`$`) topic; a sync invocation whose
    /// reply topic is invalid, reserved, or one the caller may not publish to.
    fn check_publish(
        &self,
        publish: &Publish,
        props: Option<&PublishProperties>,
    ) -> Result<(), RefusedPublish> {
        let topic = String::from_utf8_lossy(&publish.topic);
        let policy = self.session.policy.as_ref();
        if policy.is_some_and(|p| !p.may_publish(&topic)) {
            return Err(RefusedPublish::denied(format!("publish to {topic} denied")));
        }
        if publish.retain && !namespace::may_retain(&topic) {
            return Err(RefusedPublish {
                reason: PubAckReason::ImplementationSpecificError,
                label: "retain_reserved",
                detail: format!("a retained message on the reserved topic {topic}"),
            });
        }
        // The functions component publishes the answer on the bus, where no policy applies: the
        // caller's own publish rights are checked here, where its policy is known.
        if reply::is_invoke_topic(&topic) {
            let response_topic = props.and_then(|p| p.response_topic.as_deref());
            match reply::reply_topic(response_topic, &publish.payload) {
                // Nothing to answer: the component drops it, as it always did.
                Err(reply::ReplyError::Missing) => {}
                Err(e) => {
                    return Err(RefusedPublish {
                        reason: PubAckReason::TopicNameInvalid,
                        label: "invalid_reply_topic",
                        detail: e.to_string(),
                    })
                }
                Ok(reply_to) if policy.is_some_and(|p| !p.may_publish(&reply_to)) => {
                    return Err(RefusedPublish::denied(format!(
                        "an invocation answered on {reply_to}, where the caller may not publish"
                    )));
                }
                Ok(_) => {}
            }
        }
        Ok(())
    }

    /// Refuses a PUBLISH: counts and logs it; MQTT 5 answers a QoS 1 one with PUBACK and the
    /// reason, a QoS 2 one with PUBREC (which ends its flow, §4.3.3), and drops a QoS 0 one;
    /// MQTT 3.1.1 has no way to refuse a PUBLISH, so the connection ends (as AWS IoT does).
    fn refuse_publish(&mut self, publish: &Publish, refused: RefusedPublish) -> Option<End> {
        let client_id = &self.session.client_id;
        if refused.reason == PubAckReason::NotAuthorized {
            self.shared.metrics.deny("publish");
            warn!(
                client_id,
                detail = refused.detail,
                "publish denied by policy"
            );
        } else {
            warn!(client_id, detail = refused.detail, "publish refused");
        }
        if self.session.codec.version() == Version::V311 {
            // Counted as a refusal when the connection ends.
            return Some(End::Refused {
                reason: refused.label,
                detail: refused.detail,
                code: match refused.reason {
                    PubAckReason::NotAuthorized => DisconnectReasonCode::NotAuthorized,
                    PubAckReason::TopicNameInvalid => DisconnectReasonCode::TopicNameInvalid,
                    _ => DisconnectReasonCode::ImplementationSpecificError,
                },
            });
        }
        if refused.reason != PubAckReason::NotAuthorized {
            self.shared.metrics.refuse(refused.label);
        }
        match publish_qos_pkid(publish) {
            (0, _) => {}
            (1, pkid) => self.encode(Packet::PubAck(
                PubAck {
                    pkid,
                    reason: refused.reason,
                },
                None,
            )),
            (_, pkid) => self.encode(Packet::PubRec(
                PubRec {
                    pkid,
                    reason: match refused.reason {
                        PubAckReason::NotAuthorized => PubRecReason::NotAuthorized,
                        PubAckReason::TopicNameInvalid => PubRecReason::TopicNameInvalid,
                        _ => PubRecReason::ImplementationSpecificError,
                    },
                },
                None,
            )),
        }
        None
    }

    fn too_large(&self, len: usize) -> End {
        End::Refused {
            reason: "payload_too_large",
            detail: format!(
                "a {len}-byte packet exceeds broker.max_payload_size = {}",
                self.shared.config.max_payload_size
            ),
            code: DisconnectReasonCode::PacketTooLarge,
        }
    }

    /// Writes `first` and every notification already waiting, in one socket write.
    async fn deliver(&mut self, first: Option<Notification>) -> Option<End> {
        let mut router_acks = Vec::new();
        let mut next = first;
        let mut unscheduled = false;
        let mut end = None;
        loop {
            if let Some(notification) = next.take() {
                match notification {
                    Notification::Forward(mut f) => {
                        f.publish.topic = namespace::topic_from_router(f.publish.topic);
                        if let Some(policy) = &self.session.policy {
                            let topic = String::from_utf8_lossy(&f.publish.topic);
                            if !policy.may_receive(&topic) {
                                self.shared.metrics.deny("receive");
                                debug!(client_id = self.session.client_id, %topic, "delivery denied by policy");
                                // The router waits for a PUBACK of a QoS 1 delivery: give it one,
                                // in order (see `Session::owed`).
                                let (qos, pkid) = publish_qos_pkid(&f.publish);
                                if qos > 0 {
                                    if self.session.owed.is_empty() {
                                        router_acks.push(router_ack(pkid));
                                    } else {
                                        self.session.owed.push_back((pkid, true));
                                    }
                                }
                                continue;
                            }
                            let (qos, pkid) = publish_qos_pkid(&f.publish);
                            if qos > 0 {
                                self.session.owed.push_back((pkid, false));
                            }
                        }
                        self.shared.metrics.messages_sent.inc();
                        self.shared
                            .metrics
                            .bytes_sent
                            .inc_by(f.publish.payload.len() as u64);
                        if let Some(p) = &mut f.properties {
                            p.user_properties
                                .retain(|(k, _)| !k.starts_with(GROVE_PROPERTY_PREFIX));
                        }
                        self.encode(Packet::Publish(f.publish, f.properties));
                    }
                    Notification::DeviceAck(ack) => {
                        let packet = match ack.into() {
                            Packet::SubAck(ack, props) => {
                                Packet::SubAck(self.merge_suback(ack), props)
                            }
                            other => other,
                        };
                        self.encode(packet);
                    }
                    Notification::Unschedule => unscheduled = true,
                    Notification::Disconnect(d, props) => {
                        self.encode(Packet::Disconnect(d, props));
                        end = Some(End::RouterClosed);
                        break;
                    }
                    other => debug!(?other, "ignoring a router notification"),
                }
            }
            match poll_now(&mut self.session.rx) {
                Some(Ok(Some(n))) => next = Some(n),
                Some(Ok(None)) => {}
                Some(Err(_)) => {
                    end = Some(End::RouterClosed);
                    break;
                }
                None => break,
            }
        }
        if !self.write.is_empty() {
            if let Err(e) = self.stream.write_all(&self.write).await {
                return Some(End::Lost(e.to_string()));
            }
            self.write.clear();
        }
        if !router_acks.is_empty()
            && self
                .shared
                .router
                .relay(&mut self.session.tx, router_acks)
                .await
                .is_err()
        {
            return Some(End::RouterClosed);
        }
        // The router stops scheduling a connection whose outgoing buffer is full (Unschedule); it
        // must be told once that buffer has been written out.
        if unscheduled && self.session.rx.wake().await.is_err() {
            return Some(End::RouterClosed);
        }
        end
    }

    /// Puts the codes of filters the policy denied back into the router's SUBACK, in order.
    fn merge_suback(&mut self, mut ack: SubAck) -> SubAck {
        if let Some(codes) = self.session.partial_subacks.remove(&ack.pkid) {
            let mut granted = std::mem::take(&mut ack.return_codes).into_iter();
            ack.return_codes = codes
                .into_iter()
                .filter_map(|c| c.or_else(|| granted.next()))
                .collect();
        }
        ack
    }

    fn encode(&mut self, packet: Packet) {
        if let Err(e) = self.session.codec.write(packet, &mut self.write) {
            warn!(client_id = self.session.client_id, error = %e, "cannot encode a packet; dropped");
        }
    }

    /// Says goodbye as the reason requires, publishes the will when due, and removes the
    /// connection from the router.
    async fn finish(mut self, end: End, peer: SocketAddr) {
        let client_id = self.session.client_id.clone();
        let fire_will = match &end {
            End::Disconnected { with_will } => *with_will,
            End::Lost(_) | End::KeepAliveTimeout | End::Refused { .. } => true,
            // The router closes a link when the same client id connects again; MQTT says the will
            // is then published, unless a persistent session continues (MQTT 5 §3.1.2.5 ties that
            // to the will delay, handled below).
            End::RouterClosed => true,
            End::Shutdown | End::Revoked(_) => false,
        };
        match &end {
            End::Disconnected { .. } => info!(%peer, client_id, "client disconnected"),
            End::Lost(why) => info!(%peer, client_id, why, "connection lost"),
            End::KeepAliveTimeout => info!(%peer, client_id, "keep-alive timeout"),
            End::Refused { reason, detail, .. } => {
                self.shared.metrics.refuse(reason);
                warn!(%peer, client_id, reason, detail, "closing the connection");
            }
            End::RouterClosed => info!(%peer, client_id, "session closed by the router"),
            End::Revoked(detail) => {
                self.shared.metrics.refuse("revoked");
                warn!(%peer, client_id, detail, "closing the connection of a revoked device");
            }
            End::Shutdown => debug!(%peer, client_id, "closing for shutdown"),
        }
        if self.session.codec.version() == Version::V5 {
            let code = match &end {
                End::Refused { code, .. } => Some(*code),
                End::Revoked(_) => Some(DisconnectReasonCode::NotAuthorized),
                End::KeepAliveTimeout => Some(DisconnectReasonCode::KeepAliveTimeout),
                End::Shutdown => Some(DisconnectReasonCode::ServerShuttingDown),
                _ => None,
            };
            if let Some(reason_code) = code {
                self.encode(Packet::Disconnect(Disconnect { reason_code }, None));
                let _ = self.stream.write_all(&self.write).await;
            }
        }
        let mut batch = Vec::new();
        if let Some(will) = self.session.will.take().filter(|_| fire_will) {
            if will.delay.is_zero() {
                match self.shared.will_publish(&will.will, will.properties).await {
                    Ok(packet) => batch.push(packet),
                    Err(e) => {
                        warn!(client_id, error = %e, "cannot store the retained will; not published")
                    }
                }
            } else {
                self.shared.clone().delay_will(
                    client_id.clone(),
                    will.will,
                    will.properties,
                    will.delay,
                );
            }
        }
        if !matches!(end, End::Disconnected { .. } | End::RouterClosed) {
            // Tell the router the client is gone, so it frees the connection (or keeps the
            // persistent session); a DISCONNECT it received from the client did that already.
            batch.push(Packet::Disconnect(
                Disconnect {
                    reason_code: DisconnectReasonCode::NormalDisconnection,
                },
                None,
            ));
        }
        if !batch.is_empty() {
            let _ = self.shared.router.relay(&mut self.session.tx, batch).await;
        }
    }
}

/// A PUBLISH the connection layer refuses (see `Relay::check_publish`).
struct RefusedPublish {
    /// The MQTT 5 PUBACK reason; `NotAuthorized` is a policy denial.
    reason: PubAckReason,
    /// The refusal's metric label (`grove_broker_refused_total{reason}`).
    label: &'static str,
    /// What to log.
    detail: String,
}

impl RefusedPublish {
    fn denied(detail: String) -> RefusedPublish {
        RefusedPublish {
            reason: PubAckReason::NotAuthorized,
            label: "not_authorized",
            detail,
        }
    }
}

/// The PUBACK Grove gives the router for a QoS 1 delivery the policy dropped.
fn router_ack(pkid: u16) -> Packet {
    Packet::PubAck(
        PubAck {
            pkid,
            reason: PubAckReason::Success,
        },
        None,
    )
}

fn packet_name(packet: &Packet) -> &'static str {
    match packet {
        Packet::Connect(..) => "CONNECT",
        Packet::ConnAck(..) => "CONNACK",
        Packet::SubAck(..) => "SUBACK",
        Packet::UnsubAck(..) => "UNSUBACK",
        Packet::PingResp(_) => "PINGRESP",
        _ => "packet",
    }
}
