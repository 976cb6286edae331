//! The bus: how the gateway's own components (shadows, rules, and functions and cloud sync as they
//! land) talk MQTT with the devices, through an in-process link to the router, never a socket.
//!
//! A component gets a [`Bus`] from [`crate::Broker::bus`], subscribes to exactly the filters
//! it serves, takes received messages in batches (whatever is waiting, so a busy component handles
//! many per wake-up and can group its durable writes), and publishes its answers in batches.
//! Topics and filters are the wire names (`$aws/things/...`); the translation to the router's names
//! happens here, as it does in the connection layer. Gateway metadata travels in `$grove-` user
//! properties that the connection layer strips from everything a device sends or receives.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use grove_router::{self as core, Outbound};
use tokio::sync::watch;

use crate::connect::COMPONENT_ID_PREFIX;
use crate::router_task::{Event, Outlet, RouterGone};
use crate::tap::{Offered, Tap};
use crate::{Shared, HOPS_PROPERTY};

/// Most times a message may be republished by rules (or a function's publish) before the next
/// republish is dropped (and counted): a rule that matches its own output stops there instead of
/// looping forever. The hop count travels with each message on the bus (`$grove-hops`).
pub const MAX_HOPS: u32 = 8;

/// A message received by a component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The wire topic.
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
    /// The client id of the device that published it, when the connection layer recorded it (it
    /// does for `$aws/things/...`, and for every topic while rules are configured).
    pub origin: Option<String>,
    /// How many rule republishes led to this message (0 for a device's own message).
    pub hops: u32,
    /// MQTT 5 response topic of a request (functions answer sync invocations there).
    pub response_topic: Option<String>,
    /// MQTT 5 correlation data of a request, echoed in the answer.
    pub correlation_data: Option<Bytes>,
}

/// A message a component publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The wire topic.
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
    /// QoS 0 or 1 (subscribers receive it at the lower of this and their subscription's QoS).
    pub qos: u8,
    /// Whether the broker retains it (and the store persists it, before it is published).
    pub retain: bool,
    /// Rule republish hops, carried so that loops can be cut.
    pub hops: u32,
}

impl Outgoing {
    /// A plain QoS 0, non-retained message.
    pub fn new(topic: String, payload: Bytes) -> Outgoing {
        Outgoing {
            topic,
            payload,
            qos: 0,
            retain: false,
            hops: 0,
        }
    }
}

/// The router has gone away, or a durable write failed.
#[derive(Debug, thiserror::Error)]
pub enum Closed {
    /// The router link is closed: the gateway is shutting down.
    #[error("the MQTT router link is closed")]
    Link,
    /// A message could not be stored, so it was not published.
    #[error("cannot store a message: {0}")]
    Store(String),
}

/// A component's link to the broker: a client of the router core like any device, under a client
/// id no device may use (`$grove/{component}/{n}`), speaking MQTT 3.1.1 inside the router (3.1.1
/// has no server Receive Maximum, so a component's QoS 1 publishes are never cut off while their
/// acknowledgements wait for a storage commit; the acknowledgements are read and dropped).
/// Subscriptions are QoS 0: a component's session queue (the router's bounded per-session
/// queue) is what buffers for a busy component.
pub struct Bus {
    shared: Arc<Shared>,
    outlet: Outlet,
    /// Messages that arrived while waiting for a SUBACK or taking acknowledgements, handed out by
    /// the next receive (at most what the router sent meanwhile: its writer is bounded).
    pending: Vec<Message>,
    /// Filters of [`Bus::subscribe`] not yet handed to the router (sent by the next call that
    /// may wait).
    /// Packet ids for SUBSCRIBE and QoS 1 publishes (nothing waits for their acknowledgements).
    next_pkid: u16,
    /// The durable tap this link's publishes bypass (its owner's own), if any.
    skip: Option<Arc<Tap>>,
}

impl Bus {
    /// Connects a new bus session for `component`.
    pub(crate) async fn connect(
        shared: Arc<Shared>,
        component: &str,
        skip: Option<Arc<Tap>>,
    ) -> Result<Bus, RouterGone> {
        static LINKS: AtomicU64 = AtomicU64::new(0);
        let n = LINKS.fetch_add(1, Ordering::Relaxed);
        let client_id = format!("{COMPONENT_ID_PREFIX}{component}/{n}");
        let (link, mut outlet) = shared.router.open();
        let mut connect = core::Connect::new(client_id, core::Version::V311);
        // A component's filters are the gateway's configuration (one per distinct rule `FROM`,
        // function trigger, forward filter), not a peer's: no per-client subscription budget.
        connect.max_subscriptions = Some(usize::MAX);
        shared
            .router
            .send(Event::Connect {
                conn: outlet.conn(),
                connect: Box::new(connect),
                policy: None,
                link,
            })
            .await?;
        // The CONNACK (a clean session of a fresh id is never refused).
        let mut connack = Vec::new();
        if !outlet.recv(&mut connack).await {
            return Err(RouterGone);
        }
        Ok(Bus {
            shared,
            outlet,
            pending: Vec::new(),
            next_pkid: 0,
            skip,
        })
    }

    fn pkid(&mut self) -> u16 {
        self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        self.next_pkid
    }

    async fn send(&self, packet: core::Inbound) -> Result<(), Closed> {
        self.shared
            .router
            .send(Event::Packet(self.outlet.conn(), packet))
            .await
            .map_err(|_| Closed::Link)
    }

    fn subscribe_packet(&mut self, filters: &[String]) -> core::Inbound {
        core::Inbound::Subscribe(core::Subscribe {
            pkid: self.pkid(),
            filters: filters
                .iter()
                .map(|f| (f.clone(), core::SubOptions::qos(core::QoS::AtMostOnce)))
                .collect(),
            subscription_id: None,
        })
    }

    /// Subscribes to every filter and returns once the router has confirmed all of them, so that
    /// every message published after this returns reaches this link.
    pub async fn subscribe_confirmed(&mut self, filters: &[String]) -> Result<(), Closed> {
        let packet = self.subscribe_packet(filters);
        let core::Inbound::Subscribe(core::Subscribe { pkid, .. }) = &packet else {
            unreachable!("a SUBSCRIBE")
        };
        let pkid = *pkid;
        self.send(packet).await?;
        let mut packets = Vec::new();
        loop {
            if !self.outlet.recv(&mut packets).await {
                return Err(Closed::Link);
            }
            let mut acked = false;
            for p in packets.drain(..) {
                match p {
                    Outbound::SubAck { pkid: p, reasons } if p == pkid => {
                        acked = true;
                        // A component's filters are the gateway's own, so a refusal (over the
                        // router's per-client subscription limit, an invalid filter) is a bug to
                        // see in the log, not a peer to punish.
                        for (filter, code) in filters.iter().zip(&reasons) {
                            if *code >= 0x80 {
                                tracing::warn!(
                                    filter,
                                    code,
                                    "the router refused a component's subscription"
                                );
                            }
                        }
                    }
                    Outbound::Publish(d) => {
                        let m = self.received(d);
                        self.pending.push(m);
                    }
                    _ => {}
                }
            }
            if acked {
                return Ok(());
            }
        }
    }

    /// Waits for at least one message, then appends every message already waiting to `out`.
    pub async fn recv_batch(&mut self, out: &mut Vec<Message>) -> Result<(), Closed> {
        let start = out.len();
        out.append(&mut self.pending);
        let mut packets = Vec::new();
        loop {
            if out.len() > start {
                self.outlet.try_recv(&mut packets);
            } else if !self.outlet.recv(&mut packets).await {
                return Err(Closed::Link);
            }
            for p in packets.drain(..) {
                if let Outbound::Publish(d) = p {
                    out.push(self.received(d));
                }
            }
            if out.len() > start {
                return Ok(());
            }
        }
    }

    /// Like [`Bus::recv_batch`], for a component's main loop: false once `shutdown` fires or the
    /// link closes, and the loop should end.
    pub async fn recv_until(
        &mut self,
        out: &mut Vec<Message>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        tokio::select! {
            _ = shutdown.changed() => false,
            r = self.recv_batch(out) => r.is_ok(),
        }
    }

    /// Leaves the broker: the router ends the session.
    pub async fn close(self) {
        let bye = core::Inbound::Disconnect(core::Disconnect {
            reason: core::reason::SUCCESS,
            session_expiry_interval: None,
        });
        let _ = self.send(bye).await;
    }

    /// Publishes messages. Tapped ones are committed by the durable tap's owner first (see
    /// `crate::tap`); retained ones are stored by the router before its acknowledgement, like a
    /// device's.
    pub async fn publish(&mut self, messages: Vec<Outgoing>) -> Result<(), Closed> {
        self.publish_correlated(messages.into_iter().map(|m| (m, None)).collect())
            .await
    }

    /// Publishes messages, each with optional MQTT 5 correlation data (answers to requests that
    /// named a response topic).
    pub async fn publish_correlated(
        &mut self,
        messages: Vec<(Outgoing, Option<Bytes>)>,
    ) -> Result<(), Closed> {
        self.shared
            .offer_to_taps(
                messages.iter().map(|(m, _)| Offered {
                    retain: m.retain,
                    ..Offered::plain(&m.topic, &m.payload, m.hops)
                }),
                self.skip.as_ref(),
            )
            .await
            .map_err(|_| Closed::Link)?;
        for (m, correlation_data) in messages {
            let qos = if m.qos == 0 {
                core::QoS::AtMostOnce
            } else {
                core::QoS::AtLeastOnce
            };
            let pkid = if m.qos == 0 { 0 } else { self.pkid() };
            let publish = core::Publish {
                topic: m.topic.into(),
                payload: m.payload,
                qos,
                retain: m.retain,
                dup: false,
                pkid,
                topic_alias: None,
                properties: core::MessageProperties {
                    user_properties: (m.hops > 0)
                        .then(|| (HOPS_PROPERTY.to_owned(), m.hops.to_string()))
                        .into_iter()
                        .collect(),
                    correlation_data,
                    ..core::MessageProperties::default()
                },
            };
            self.send(core::Inbound::Publish(publish)).await?;
        }
        // Take the acknowledgements (and keep any message) so the router's writer never fills
        // with them.
        let mut packets = Vec::new();
        self.outlet.try_recv(&mut packets);
        for p in packets {
            if let Outbound::Publish(d) = p {
                let m = self.received(d);
                self.pending.push(m);
            }
        }
        Ok(())
    }

    fn received(&self, d: core::Delivery) -> Message {
        let m = &d.message;
        let p = &m.properties;
        let hops = p
            .user_properties
            .iter()
            .find(|(k, _)| k == HOPS_PROPERTY)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let device = !m.publisher.is_empty() && !m.publisher.starts_with(COMPONENT_ID_PREFIX);
        let origin = (device
            && (m.topic.starts_with("$aws/things/")
                || self.shared.record_origin.load(Ordering::Relaxed)))
        .then(|| m.publisher.to_string());
        Message {
            topic: m.topic.to_string(),
            payload: m.payload.clone(),
            origin,
            hops,
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
        }
    }
}
