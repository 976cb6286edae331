//! One device connection up to CONNACK: Grove's MQTT connection layer in front of the router task.
//!
//! Grove terminates MQTT itself so that it can serve MQTT 3.1.1 and 5 on one port, authenticate
//! and authorize every client and packet, count what flows for `/metrics`, and enforce the payload
//! limit with a clear refusal. After CONNACK, `relay.rs` carries the connection; the router core
//! (`grove_router`, driven by `router_task.rs`) owns sessions, subscriptions, QoS flows, retained
//! messages and wills.
//!
//! Lifecycle: read and check CONNECT (`connect.rs` decides on the bytes; at most
//! `max_connect_size` of them are read), authenticate, take one of `max_connections`, hand the
//! CONNECT to the router and write the CONNACK it answers, all within `connect_timeout_ms` and
//! while holding a place in the listener's pre-authentication budget (`admission.rs`); then relay
//! both ways until DISCONNECT, an error, a keep-alive timeout or shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use grove_router::{self as core, Outbound};
use rumqttd::protocol::{ConnAck, ConnectReturnCode, Login, Packet};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn};

use super::admission::Ticket;
use super::codec::{Codec, Version};
use super::connect::{read_connect, Hello, Refusal, Step};
use super::relay::{Relay, Session};
use super::router_task::{Event, Nudge};
use super::{translate, Listener, Shared};
use crate::clients::{Listed, Listing};
use crate::config::AuthMode;
use grove_auth::identity::{Device, PasswordCheck};
use grove_auth::policy::{allow_all_policy, safe_variable, Resolved};
use grove_auth::tls::common_name;

/// Counts connections for generated client ids.
static ASSIGNED_IDS: AtomicU64 = AtomicU64::new(0);

/// Serves one accepted connection to its end: `establish` (see [`establish`]; a TLS handshake
/// first, on a TLS listener), then the relay until the connection ends, then the goodbye.
///
/// Memory: tokio allocates a task with room for its future's largest state, for the task's whole
/// life. Establishing a connection (CONNECT decoding, authentication, the router's answer, a TLS
/// handshake) takes ~2 KiB of state that an established connection no longer needs, and the
/// goodbye takes the relay by value; inline, both would size the task of every connection, idle
/// ones included. So both run boxed, and what an idle connection's task holds is its relay and the
/// relay's wait (BENCHMARKS.md, "Broker: the idle connection's cost after the keep-alive
/// sweep": 1,868-1,899 B per idle connection, of which this task is 640 B).
pub(super) fn serve<S>(
    establish: impl Future<Output = Option<Relay<S>>> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let establish = Box::pin(establish);
    async move {
        let Some(mut relay) = establish.await else {
            return;
        };
        let end = relay.run().await;
        Box::pin(relay.finish(end)).await;
    }
}

/// Establishes one accepted connection: reads and checks CONNECT, authenticates the client, takes
/// one of `max_connections` and answers CONNACK, all within `connect_timeout_ms`. `ticket` is its
/// place in the listener's pre-authentication budget, given back once the handshake is over
/// either way. `None`: refused or timed out (counted and logged).
pub(super) async fn establish<S>(
    mut stream: S,
    peer: SocketAddr,
    peer_cert: Option<Vec<u8>>,
    listener: Arc<Listener>,
    shared: Arc<Shared>,
    ticket: Ticket,
) -> Option<Relay<S>>
where
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
    let (session, slot) = match outcome {
        Ok(Ok(accepted)) => accepted,
        // Counted and logged by `handshake`.
        Ok(Err(())) => return None,
        Err(_) => {
            shared.metrics.refuse("connect_timeout");
            debug!(%peer, "no CONNECT within connect_timeout_ms");
            return None;
        }
    };
    shared.metrics.connections.inc();
    info!(%peer, client_id = &*session.client_id, version = ?session.codec.version(), "client connected");
    // Registered before the relay first checks its identity, and dropped with the relay (after
    // `finish`), so a revocation either waits for this connection's end or is seen by its first
    // check.
    let live = (session.device.as_deref())
        .map(|device| LiveDevice::register(&shared, device.clone(), session.outlet.nudge()));
    let protocol = match session.codec.version() {
        Version::V311 => 4,
        Version::V5 => 5,
    };
    let listing = Listing {
        client_id: session.client_id.clone(),
        peer,
        protocol,
        since: SystemTime::now(),
        silence_limit_ms: session.silence_limit_ms,
    };
    let listed = Listed::register(slot, listing, session.outlet.nudge());
    Some(Relay {
        shared,
        stream,
        read: buf,
        // Allocated by the first packet encoded: an idle connection holds none.
        write: BytesMut::new(),
        session,
        published: false,
        rare: None,
        hold_timer: None,
        live,
        _listed: listed,
    })
}

/// A proved device's connection, listed in `Shared::live_devices` until it has ended (its last
/// packet relayed, its will published or not), so that a revocation can wait for that. Boxed in
/// its relay: anonymous connections have none.
pub(crate) struct LiveDevice {
    shared: Arc<Shared>,
    id: u64,
    /// Changes when the devices file was re-read: the device then checks that it is still
    /// registered as it was, before anything more of it is relayed (see `Relay::revoked`).
    pub(crate) changes: tokio::sync::watch::Receiver<u64>,
}

impl LiveDevice {
    fn register(shared: &Arc<Shared>, device: Device, nudge: Nudge) -> Box<LiveDevice> {
        static IDS: AtomicU64 = AtomicU64::new(0);
        let id = IDS.fetch_add(1, Ordering::Relaxed);
        shared.live_devices.register(id, device, nudge);
        Box::new(LiveDevice {
            shared: shared.clone(),
            id,
            changes: shared.identities.changes(),
        })
    }
}

impl Drop for LiveDevice {
    fn drop(&mut self) {
        self.shared.live_devices.remove(self.id);
    }
}

/// Runs the handshake; a refusal is counted and logged, then answered with its CONNACK, if any
/// (counted first, so that a client that has read its refusal finds it in `/metrics`).
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    shared: &Arc<Shared>,
    listener: &Listener,
    peer: SocketAddr,
    peer_cert: Option<&[u8]>,
) -> Result<(Session, ConnectionSlot), ()> {
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
async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    shared: &Arc<Shared>,
    listener: &Listener,
    peer: SocketAddr,
    peer_cert: Option<&[u8]>,
) -> Result<(Session, ConnectionSlot), Refusal> {
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
    // Shared with the router task's delivery filter, and small in the relay: an idle
    // connection's task carries a pointer, not the policy's lists.
    let (policy, device) = (policy.map(Arc::new), device.map(Box::new));
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
    // MQTT 5 lets the server impose its keep alive (3.2.2.3.14); 3.1.1 has no such thing.
    let keep_alive = match (version, shared.config.server_keep_alive) {
        (Version::V5, Some(server)) => server,
        _ => connect.keep_alive,
    };
    // One allocation of the id for the relay and the router's session.
    let client_id: Arc<str> = client_id.into();
    let mut c = core::Connect::new(client_id.clone(), translate::version(version));
    c.clean_start = connect.clean_session;
    if let Some(p) = &props {
        c.session_expiry_interval = p.session_expiry_interval.unwrap_or(0);
        c.receive_maximum = p.receive_maximum;
        c.maximum_packet_size = p.max_packet_size;
        c.topic_alias_maximum = p.topic_alias_max.unwrap_or(0);
    }
    c.will = will.map(|w| translate::will_in(w, will_props));
    let (link, mut outlet) = shared.router.open();
    let event = Event::Connect {
        conn: outlet.conn(),
        connect: Box::new(c),
        policy: policy.clone(),
        link,
    };
    let gone = || Refusal::new("router", "the router has stopped");
    shared.router.send(event).await.map_err(|_| gone())?;
    // The router answers with CONNACK first, maybe followed by resent deliveries.
    let mut early = Vec::new();
    if !outlet.recv(&mut early).await {
        return Err(gone());
    }
    let Some(Outbound::ConnAck(mut ack)) = (!early.is_empty()).then(|| early.remove(0)) else {
        return Err(Refusal::new("router", "the router did not answer CONNACK"));
    };
    if ack.reason != core::reason::SUCCESS {
        // The router's own refusal (3.2.2.2): sent as is, nothing else follows.
        let reason = ack.reason;
        let mut out = BytesMut::new();
        if let Some(p) = translate::control_out(Outbound::ConnAck(ack), version) {
            let _ = codec.write(p, &mut out);
            let _ = stream.write_all(&out).await;
        }
        return Err(Refusal::new(
            "protocol",
            format!("the router refused the CONNECT (reason {reason:#04x})"),
        ));
    }
    if let Some(id) = assigned {
        ack.properties.assigned_client_identifier = Some(id.into());
    }
    let mut out = BytesMut::new();
    if let Some(connack) = translate::control_out(Outbound::ConnAck(ack), version) {
        codec
            .write(connack, &mut out)
            .map_err(|e| Refusal::new("protocol", format!("cannot encode CONNACK: {e}")))?;
    }
    stream
        .write_all(&out)
        .await
        .map_err(|e| Refusal::new("io", e.to_string()))?;
    let session = Session {
        client_id,
        codec,
        policy,
        // 3.1.2.10: one and a half keep-alive periods; 0: none.
        silence_limit_ms: u64::from(keep_alive) * 1_500,
        device,
        outlet,
        early,
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
pub(crate) struct ConnectionSlot(Arc<Shared>);

impl ConnectionSlot {
    /// One of `max_connections`, or `None` when all are taken.
    fn reserve(shared: &Arc<Shared>) -> Option<Self> {
        shared
            .connected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < shared.config.max_connections).then_some(n + 1)
            })
            .ok()?;
        shared.metrics.connected_clients.inc();
        Some(ConnectionSlot(shared.clone()))
    }

    /// The broker the slot is of.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.0
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.connected_clients.dec();
    }
}
