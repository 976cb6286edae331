//! One established connection after CONNACK: decodes what the client sends, checks it (payload
//! limit, topic names and filters, policy, durable taps) and hands it to the router task as the
//! core's packets; encodes what the router hands back. PINGREQ is answered here; a client silent
//! beyond its keep-alive is ended here once the registry's sweep wakes it (`crate::clients`).
//!
//! Flow control: the router hands this connection at most `router_task::WRITER_SLOTS` packets
//! at a time, and more only after they were taken; the task writes them to the socket before it
//! takes more, so a slow socket holds back only its own session. While the router says reading
//! is paused (its read pressure, see `grove_router::Router::reading_paused`), or holds this
//! publisher for a congested subscriber of its messages (`grove_router::Router::poll_hold`), a
//! connection that has just published stops reading for at most [`MAX_HOLD`] at a time, so TCP
//! slows the publisher.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use grove_auth::identity::Device;
use grove_auth::policy::Resolved;
use grove_router::{self as core, reason, Outbound};
use rumqttd::protocol::{
    self, Disconnect, DisconnectReasonCode, Packet, PingResp, PubAck, PubAckReason, PubRec,
    PubRecReason, Publish, PublishProperties,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};
use tracing::{debug, info, warn};

use crate::clients::{silent_too_long, Listed};
use crate::codec::{Codec, Version};
use crate::connect::check_topic_name;
use crate::connection::LiveDevice;
use crate::router_task::{Event, Outlet};
use crate::tap::Offered;
use crate::{namespace, reply, translate, Shared};

/// Extra room, beyond the payload limit, for the rest of a PUBLISH (topic up to 64 KiB, packet id,
/// MQTT 5 properties). The exact payload limit is checked after decoding.
pub(crate) const HEADER_ALLOWANCE: usize = 128 * 1024;

/// The read buffer a connection that sends gets (it grows beyond for larger packets). A connection
/// that has sent nothing since its CONNECT holds none: most devices are idle most of the time.
const READ_BUFFER: usize = 1024;

/// Flow control: the longest a publisher goes unread in one hold; then one batch is read and the
/// hold starts again if reading is still paused.
const MAX_HOLD: Duration = Duration::from_secs(1);

/// Flow control: how often a held connection looks at the router's pause again.
const HOLD_POLL: Duration = Duration::from_millis(1);

/// SUBACK reason code of a filter the policy denies (MQTT 5 0x87; 3.1.1 gets its one failure
/// code, 0x80).
const NOT_AUTHORIZED: u8 = 0x87;

/// Why a connection ended.
#[derive(Debug)]
pub(crate) enum End {
    /// The client sent DISCONNECT (the router decides about its will).
    Disconnected,
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
    /// The router closed the connection (session taken over, a protocol error it found).
    RouterClosed(u8),
    /// The device's registration was removed or changed: it ends at once, without its will (a
    /// revoked device can leave nothing behind).
    Revoked(String),
    /// An operator disconnected it (`Clients::disconnect`).
    Kicked,
    /// The gateway is shutting down.
    Shutdown,
}

/// A publish a durable tap takes, kept from the batch it came in until the taps have it.
struct TapCopy {
    topic: String,
    payload: Bytes,
    retain: bool,
    user_properties: Vec<(String, String)>,
}

/// What the handshake produced.
pub(crate) struct Session {
    pub(crate) client_id: Arc<str>,
    pub(crate) codec: Codec,
    /// The policy resolved for this client; `None` on an allow-all listener (nothing to check).
    pub(crate) policy: Option<Arc<Resolved>>,
    /// One and a half keep-alive periods in ms (3.1.2.10); 0: no keep-alive.
    pub(crate) silence_limit_ms: u64,
    /// The registered identity the client proved, re-checked whenever the devices file changes:
    /// a device removed (or given new credentials) is disconnected at once.
    pub(crate) device: Option<Box<Device>>,
    /// Where the router's packets for this connection arrive.
    pub(crate) outlet: Outlet,
    /// Packets the router sent along with the CONNACK (resent deliveries), not yet written.
    pub(crate) early: Vec<Outbound>,
}

/// What only some connections need, boxed out of [`Relay`] (what every connection's task holds).
#[derive(Default)]
pub(crate) struct Rare {
    /// SUBSCRIBEs of which the router sees only the allowed filters, by packet id: the codes of
    /// the denied ones, by position, merged into the router's SUBACK.
    partial_subacks: Vec<(u16, Vec<Option<u8>>)>,
    /// The client's topic aliases (3.3.2.3.4), resolved here too so that the policy checks the
    /// real topic; at most the server's Topic Alias Maximum of them (larger aliases are the
    /// router's to refuse).
    aliases: Vec<(u16, Bytes)>,
}

/// Relays packets between the socket and the router for one established session.
///
/// It is what an idle connection's task holds (with the wait in [`Relay::run`]), so whatever
/// only some connections use is boxed or kept in vectors that allocate when first used.
pub(crate) struct Relay<S> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) stream: S,
    pub(crate) read: BytesMut,
    pub(crate) write: BytesMut,
    pub(crate) session: Session,
    /// Whether the last batch read from the client had a PUBLISH (flow control holds only
    /// publishers).
    pub(crate) published: bool,
    /// What few connections need (partly denied SUBSCRIBEs, topic aliases), made by the first
    /// that does.
    pub(crate) rare: Option<Box<Rare>>,
    /// The timer of flow control's hold, made by the first hold: only publishers are held, and a
    /// timer is 112 B that every idle connection's task would hold (keep-alive is the registry's
    /// sweep: `crate::clients`).
    pub(crate) hold_timer: Option<Pin<Box<Sleep>>>,
    /// Its entry in the registry of connections (`crate::clients`) and its one of
    /// `max_connections`, both given back when the relay is dropped (after `finish`). Declared
    /// (so dropped) before `live`: a revocation's wait ends when `live` is dropped, and by then
    /// the connection is no longer listed either.
    pub(crate) _listed: Listed,
    /// A proved device's entry in the live list (with its view of the devices file's changes),
    /// removed when the relay is dropped.
    pub(crate) live: Option<Box<LiveDevice>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Relay<S> {
    pub(crate) async fn run(&mut self) -> End {
        // A revocation made while this client was authenticating: its change may predate
        // its `LiveDevice::changes`, so it is checked once now.
        if let Some(end) = self.revoked(true) {
            return end;
        }
        let early = std::mem::take(&mut self.session.early);
        if let Some(end) = self.deliver(early).await {
            return end;
        }
        // CONNECT may have arrived together with the first packets.
        if !self.read.is_empty() {
            if let Some(end) = Box::pin(self.ingest()).await {
                return end;
            }
        }
        // Nothing more waiting: give the handshake's buffer back until the client sends again.
        if self.read.is_empty() {
            self.read = BytesMut::new();
        }
        let mut held_since: Option<Instant> = None;
        let mut out = Vec::new();
        loop {
            let held = self.published
                && (self.shared.router.reading_paused() || self.session.outlet.held())
                && held_since.is_none_or(|t| t.elapsed() < MAX_HOLD);
            match (held, held_since) {
                (true, None) => {
                    held_since = Some(Instant::now());
                    self.shared.metrics.holds.inc();
                }
                (false, Some(_)) => held_since = None,
                _ => {}
            }
            // Without a buffer the next read allocates only what BytesMut reserves for an empty
            // buffer (64 B); then the buffer is made a full one, so a publisher is not read 64
            // bytes at a time.
            let unbuffered = self.read.capacity() == 0;
            // What an idle connection's task holds is mostly these futures, so they are few: the
            // router stopping (shutdown), a change of the device's registration, an operator's
            // disconnect and the keep-alive sweep come through the writer (`Outlet::recv`)
            // rather than futures of their own, and the hold's timer is boxed.
            tokio::select! {
                _ = hold(&mut self.hold_timer, held) => {
                    // The client is not late with its keep-alive while Grove is not reading.
                    self.heard();
                }
                read = self.stream.read_buf(&mut self.read), if !held => {
                    match read {
                        Ok(0) => return End::Lost("closed by the client".into()),
                        Err(e) => return End::Lost(e.to_string()),
                        Ok(_) => {}
                    }
                    if unbuffered {
                        let mut full = BytesMut::with_capacity(READ_BUFFER);
                        full.extend_from_slice(&self.read);
                        self.read = full;
                    }
                    self.heard();
                    if let Some(end) = Box::pin(self.ingest()).await {
                        return end;
                    }
                }
                open = self.session.outlet.recv(&mut out) => {
                    if !open {
                        // The router stops only for a shutdown, unless it failed.
                        return if *self.shared.shutdown.borrow() {
                            End::Shutdown
                        } else {
                            End::RouterClosed(reason::UNSPECIFIED_ERROR)
                        };
                    }
                    // Woken with packets, or nudged: because the devices file changed
                    // (`LiveDevices`; a device no longer registered as it connected ends here),
                    // by an operator's disconnect, or by the keep-alive sweep.
                    if let Some(end) = self.revoked(false) {
                        return end;
                    }
                    if self.session.outlet.presence().kicked.load(Ordering::Relaxed) {
                        return End::Kicked;
                    }
                    // The sweep's reading may predate a packet read since: decided again here.
                    let heard = self.session.outlet.presence().heard_ms.load(Ordering::Relaxed);
                    let now = self.shared.clients.clock_ms();
                    if silent_too_long(now, heard, self.session.silence_limit_ms) {
                        return End::KeepAliveTimeout;
                    }
                    if !out.is_empty() {
                        if let Some(end) = self.deliver(std::mem::take(&mut out)).await {
                            return end;
                        }
                    }
                }
            }
        }
    }

    /// Notes that the client was heard from now (or is not being read), for the keep-alive sweep.
    fn heard(&self) {
        let now = self.shared.clients.clock_ms();
        (self.session.outlet.presence().heard_ms).store(now, Ordering::Relaxed);
    }

    /// Whether a proved device is no longer registered as it was when it connected (removed, or
    /// given other credentials): then its connection ends without its will. `always` checks even
    /// when the devices file was not re-read since the last check.
    fn revoked(&mut self, always: bool) -> Option<End> {
        // Anonymous clients have no registration to lose.
        let live = self.live.as_mut()?;
        let changed = live.changes.has_changed().unwrap_or(false);
        if !always && !changed {
            return None;
        }
        live.changes.borrow_and_update();
        let id = &self.session.client_id;
        (self.shared.identities.device(id).as_ref() != self.session.device.as_deref()).then(|| {
            End::Revoked(format!(
                "device {id:?} was removed or its credentials changed"
            ))
        })
    }

    /// Decodes every whole packet in the read buffer and hands them to the router in order.
    ///
    /// Its future (decoding, the taps' and the router's channel waits: ~1 KiB) is boxed by the
    /// callers: inline, it would size the task of every connection, idle ones included (tokio
    /// allocates a task with room for its future's largest state).
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
        let mut tapped: Vec<TapCopy> = Vec::new();
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
            let result = match packet {
                Packet::Publish(publish, props) => self.take_publish(publish, props, &mut tapped),
                Packet::Subscribe(subscribe, props) => self.take_subscribe(subscribe, props),
                Packet::Unsubscribe(u, _) => {
                    Ok(Some(core::Inbound::Unsubscribe(core::Unsubscribe {
                        pkid: u.pkid,
                        filters: u.filters,
                    })))
                }
                Packet::Disconnect(d, props) => {
                    batch.push(core::Inbound::Disconnect(core::Disconnect {
                        reason: translate::disconnect_code(d.reason_code),
                        session_expiry_interval: props.and_then(|p| p.session_expiry_interval),
                    }));
                    end = Some(End::Disconnected);
                    break;
                }
                Packet::PingReq(_) => {
                    self.encode(Packet::PingResp(PingResp));
                    Ok(None)
                }
                other => match translate::ack_in(&other) {
                    Some(ack) => Ok(Some(ack)),
                    None => Err(End::Refused {
                        reason: "protocol",
                        detail: format!("unexpected packet from a client: {}", packet_name(&other)),
                        code: DisconnectReasonCode::ProtocolError,
                    }),
                },
            };
            match result {
                Ok(Some(inbound)) => batch.push(inbound),
                Ok(None) => {}
                Err(e) => {
                    end = Some(e);
                    break;
                }
            }
        }
        // The router sees (and acknowledges) only what the tap's owner has committed. If the
        // owner has stopped, the gateway is shutting down: the batch is not handed on, so the
        // device gets no PUBACK and sends its QoS 1 messages again to the next gateway run.
        if !tapped.is_empty()
            && self
                .shared
                .offer_to_taps(
                    tapped.iter().map(|t| Offered {
                        retain: t.retain,
                        user_properties: &t.user_properties,
                        ..Offered::plain(&t.topic, &t.payload, 0)
                    }),
                    None,
                )
                .await
                .is_err()
        {
            return Some(End::Shutdown);
        }
        let conn = self.session.outlet.conn();
        for inbound in batch {
            if self
                .shared
                .router
                .send(Event::Packet(conn, inbound))
                .await
                .is_err()
            {
                return Some(End::Shutdown);
            }
        }
        // Answers Grove gives itself (PINGRESP, refused PUBLISHes and SUBSCRIBEs).
        if let Err(e) = self.flush().await {
            return Some(End::Lost(e.to_string()));
        }
        end
    }

    /// Checks a PUBLISH; `Ok(None)` when it was refused without ending the connection.
    fn take_publish(
        &mut self,
        publish: Publish,
        props: Option<PublishProperties>,
        tapped: &mut Vec<TapCopy>,
    ) -> Result<Option<core::Inbound>, End> {
        self.published = true;
        if publish.payload.len() > self.shared.config.max_payload_size {
            return Err(self.too_large(publish.payload.len()));
        }
        let alias = props.as_ref().and_then(|p| p.topic_alias);
        check_topic_name(&publish.topic, alias.is_some()).map_err(|detail| End::Refused {
            reason: "malformed",
            detail,
            code: DisconnectReasonCode::TopicNameInvalid,
        })?;
        let mut publish = publish;
        if let Some(a) = alias {
            if publish.topic.is_empty() {
                // An unknown alias is the router's protocol error; it sees the empty topic.
                let known = self
                    .rare
                    .as_ref()
                    .and_then(|r| r.aliases.iter().find(|(n, _)| *n == a));
                if let Some((_, topic)) = known {
                    publish.topic = topic.clone();
                }
            } else if a <= self.shared.router_config.topic_alias_maximum {
                let aliases = &mut self.rare.get_or_insert_default().aliases;
                match aliases.iter_mut().find(|(n, _)| *n == a) {
                    Some((_, topic)) => *topic = publish.topic.clone(),
                    None => aliases.push((a, publish.topic.clone())),
                }
            }
        }
        if !publish.topic.is_empty() {
            if let Err(refused) = self.check_publish(&publish, props.as_ref()) {
                return self.refuse_publish(&publish, refused).map_or(Ok(None), Err);
            }
        }
        self.shared.metrics.messages_received.inc();
        let counts = self.session.outlet.presence();
        counts.received.fetch_add(1, Ordering::Relaxed);
        self.shared
            .metrics
            .bytes_received
            .inc_by(publish.payload.len() as u64);
        let topic = String::from_utf8_lossy(&publish.topic).into_owned();
        let publish = translate::publish_in(publish, props);
        if self.shared.tapped(&topic) {
            tapped.push(TapCopy {
                topic,
                payload: publish.payload.clone(),
                retain: publish.retain,
                // Without Grove's own `$grove-` properties (`publish_in` drops them).
                user_properties: publish.properties.user_properties.clone(),
            });
        }
        Ok(Some(core::Inbound::Publish(publish)))
    }

    /// Checks a SUBSCRIBE's filters and the policy; the router sees only the allowed filters.
    fn take_subscribe(
        &mut self,
        subscribe: protocol::Subscribe,
        props: Option<protocol::SubscribeProperties>,
    ) -> Result<Option<core::Inbound>, End> {
        if let Some(detail) = subscribe
            .filters
            .iter()
            .find_map(|f| namespace::check_filter(&f.path).err())
        {
            return Err(End::Refused {
                reason: "malformed",
                detail,
                code: DisconnectReasonCode::TopicFilterInvalid,
            });
        }
        let denied: Vec<bool> = subscribe
            .filters
            .iter()
            .map(|f| {
                self.session
                    .policy
                    .as_ref()
                    .is_some_and(|p| !p.may_subscribe(&f.path))
            })
            .collect();
        if denied.iter().any(|d| *d) {
            for (f, _) in subscribe.filters.iter().zip(&denied).filter(|(_, d)| **d) {
                self.shared.metrics.deny("subscribe");
                warn!(
                    client_id = &*self.session.client_id,
                    filter = f.path,
                    "subscribe denied by policy"
                );
            }
            let codes: Vec<Option<u8>> =
                denied.iter().map(|d| d.then_some(NOT_AUTHORIZED)).collect();
            if denied.iter().all(|d| *d) {
                // Nothing for the router: answer the SUBACK here.
                let ack = Outbound::SubAck {
                    pkid: subscribe.pkid,
                    reasons: codes.into_iter().flatten().collect(),
                };
                self.encode_out(ack);
                return Ok(None);
            }
            let partial = &mut self.rare.get_or_insert_default().partial_subacks;
            partial.retain(|(pkid, _)| *pkid != subscribe.pkid);
            partial.push((subscribe.pkid, codes));
        }
        let filters = subscribe
            .filters
            .iter()
            .zip(&denied)
            .filter(|(_, d)| !**d)
            .map(|(f, _)| (f.path.clone(), translate::sub_options(f)))
            .collect();
        Ok(Some(core::Inbound::Subscribe(core::Subscribe {
            pkid: subscribe.pkid,
            filters,
            subscription_id: props.and_then(|p| p.id).map(|id| id as u32),
        })))
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
        let client_id = &*self.session.client_id;
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
        match translate::publish_header(publish) {
            (0, _, _) => {}
            (1, _, pkid) => self.encode(Packet::PubAck(
                PubAck {
                    pkid,
                    reason: refused.reason,
                },
                None,
            )),
            (_, _, pkid) => self.encode(Packet::PubRec(
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

    /// Encodes the router's packets and writes them in one socket write.
    async fn deliver(&mut self, packets: Vec<Outbound>) -> Option<End> {
        let mut end = None;
        for packet in packets {
            match packet {
                Outbound::Publish(d) => {
                    self.shared.metrics.messages_sent.inc();
                    self.session
                        .outlet
                        .presence()
                        .sent
                        .fetch_add(1, Ordering::Relaxed);
                    self.shared
                        .metrics
                        .bytes_sent
                        .inc_by(d.message.payload.len() as u64);
                    self.encode(translate::delivery_out(d, true));
                }
                Outbound::SubAck { pkid, reasons } => {
                    let reasons = self.merge_suback(pkid, reasons);
                    self.encode_out(Outbound::SubAck { pkid, reasons });
                }
                Outbound::Disconnect { reason } => {
                    self.encode_out(Outbound::Disconnect { reason });
                    end = Some(End::RouterClosed(reason));
                    break;
                }
                other => self.encode_out(other),
            }
        }
        if let Err(e) = self.flush().await {
            return Some(End::Lost(e.to_string()));
        }
        end
    }

    /// Puts the codes of filters the policy denied back into the router's SUBACK, in order.
    fn merge_suback(&mut self, pkid: u16, granted: Vec<u8>) -> Vec<u8> {
        let partial = self.rare.as_mut().map(|r| &mut r.partial_subacks);
        let waiting =
            partial.and_then(|p| Some(p.swap_remove(p.iter().position(|(id, _)| *id == pkid)?).1));
        match waiting {
            None => granted,
            Some(codes) => {
                let mut granted = granted.into_iter();
                codes
                    .into_iter()
                    .filter_map(|c| c.or_else(|| granted.next()))
                    .collect()
            }
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.write.is_empty() {
            self.stream.write_all(&self.write).await?;
            self.write.clear();
        }
        Ok(())
    }

    fn encode_out(&mut self, packet: Outbound) {
        if let Some(p) = translate::control_out(packet, self.session.codec.version()) {
            self.encode(p);
        }
    }

    fn encode(&mut self, packet: Packet) {
        if let Err(e) = self.session.codec.write(packet, &mut self.write) {
            warn!(client_id = &*self.session.client_id, error = %e, "cannot encode a packet; dropped");
        }
    }

    /// Says goodbye as the reason requires and tells the router the connection is gone (which
    /// publishes the will when due, 3.1.2.5).
    pub(crate) async fn finish(mut self, end: End) {
        // Every relay is listed before it is made (`connection::establish`).
        let peer =
            (self.session.outlet.listing()).map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |l| l.peer);
        let client_id = self.session.client_id.clone();
        let client_id = &*client_id;
        match &end {
            End::Disconnected => info!(%peer, client_id, "client disconnected"),
            End::Lost(why) => info!(%peer, client_id, why, "connection lost"),
            End::KeepAliveTimeout => info!(%peer, client_id, "keep-alive timeout"),
            End::Refused { reason, detail, .. } => {
                self.shared.metrics.refuse(reason);
                warn!(%peer, client_id, reason, detail, "closing the connection");
            }
            End::RouterClosed(code) => {
                info!(%peer, client_id, code, "connection closed by the router")
            }
            End::Revoked(detail) => {
                self.shared.metrics.refuse("revoked");
                warn!(%peer, client_id, detail, "closing the connection of a revoked device");
            }
            End::Kicked => warn!(%peer, client_id, "disconnected by an operator"),
            End::Shutdown => debug!(%peer, client_id, "closing for shutdown"),
        }
        if self.session.codec.version() == Version::V5 {
            let code = match &end {
                End::Refused { code, .. } => Some(*code),
                End::Revoked(_) => Some(DisconnectReasonCode::NotAuthorized),
                End::KeepAliveTimeout => Some(DisconnectReasonCode::KeepAliveTimeout),
                End::Kicked => Some(DisconnectReasonCode::AdministrativeAction),
                End::Shutdown => Some(DisconnectReasonCode::ServerShuttingDown),
                _ => None,
            };
            if let Some(reason_code) = code {
                self.encode(Packet::Disconnect(Disconnect { reason_code }, None));
                let _ = self.flush().await;
            }
        }
        let conn = self.session.outlet.conn();
        let event = match end {
            // The router has seen the DISCONNECT, or closed the connection itself.
            End::Disconnected | End::RouterClosed(_) => return,
            // Gone without its will: as a normal DISCONNECT would (3.14.4).
            End::Revoked(_) | End::Shutdown => Event::Packet(
                conn,
                core::Inbound::Disconnect(core::Disconnect {
                    reason: reason::SUCCESS,
                    session_expiry_interval: None,
                }),
            ),
            // Closed by the server: the will is due (3.1.2.5).
            End::Lost(_) | End::KeepAliveTimeout | End::Refused { .. } | End::Kicked => {
                Event::Lost(conn)
            }
        };
        let _ = self.shared.router.send(event).await;
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

/// Flow control's hold: ends [`HOLD_POLL`] from now while `held`, and never otherwise. The timer
/// is made by the first hold and reused.
async fn hold(timer: &mut Option<Pin<Box<Sleep>>>, held: bool) {
    if !held {
        return std::future::pending().await;
    }
    let deadline = Instant::now() + HOLD_POLL;
    let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    timer.as_mut().reset(deadline);
    timer.await;
}
