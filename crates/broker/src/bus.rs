//! The bus: how the gateway's own components (shadows, rules, and functions and cloud sync as they
//! land) talk MQTT with the devices, through an in-process link to the router, never a socket.
//!
//! A component gets a [`Bus`] from [`crate::Broker::bus`], subscribes to exactly the filters
//! it serves, takes received messages in batches (whatever is waiting, so a busy component handles
//! many per wake-up and can group its durable writes), and publishes its answers in batches.
//! Topics and filters are the wire names (`$aws/things/...`); the translation to the router's names
//! happens here, as it does in the connection layer. Gateway metadata travels in `$grove-` user
//! properties that the connection layer strips from everything a device sends or receives.

use std::sync::Arc;

use bytes::Bytes;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet, Publish, PublishProperties};
use rumqttd::Notification;
use tokio::sync::watch;

use crate::tap::Tap;
use crate::{
    make_publish, namespace, origin_client_id, poll_now, RouterHandle, Shared, HOPS_PROPERTY,
};

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
    /// QoS 0 or 1 (subscribers receive it at their subscription's QoS either way; see
    /// ARCHITECTURE.md).
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

/// The router has gone away, or the store refused a retained message.
#[derive(Debug, thiserror::Error)]
pub enum Closed {
    /// The router link is closed: the gateway is shutting down.
    #[error("the MQTT router link is closed")]
    Link,
    /// A retained message could not be stored, so it was not published.
    #[error("cannot store a retained message: {0}")]
    Store(String),
}

/// A component's link to the broker.
pub struct Bus {
    tx: LinkTx,
    rx: LinkRx,
    router: RouterHandle,
    shared: Arc<Shared>,
    /// Messages that arrived while waiting for a SUBACK, handed out by the next receive.
    pending: Vec<Message>,
    /// Packet ids for QoS 1 publishes (the router acknowledges them; nothing waits for that).
    next_pkid: u16,
    /// The durable tap this link's publishes bypass (its owner's own), if any.
    skip: Option<Arc<Tap>>,
}

impl Bus {
    pub(crate) fn new(
        tx: LinkTx,
        rx: LinkRx,
        router: RouterHandle,
        shared: Arc<Shared>,
        skip: Option<Arc<Tap>>,
    ) -> Bus {
        Bus {
            tx,
            rx,
            router,
            shared,
            pending: Vec::new(),
            next_pkid: 0,
            skip,
        }
    }

    /// Subscribes (QoS 0; the router's in-memory log is what buffers for a busy component).
    pub fn subscribe(&mut self, filter: &str) -> Result<(), Closed> {
        self.tx
            .subscribe(namespace::filter_to_router(filter))
            .map(|_| ())
            .map_err(|_| Closed::Link)
    }

    /// Subscribes to every filter and returns once the router has confirmed all of them, so that
    /// every message published after this returns reaches this link.
    pub async fn subscribe_confirmed(&mut self, filters: &[String]) -> Result<(), Closed> {
        for f in filters {
            self.subscribe(f)?;
        }
        let mut acks = 0;
        while acks < filters.len() {
            let n = self.rx.next().await.map_err(|_| Closed::Link)?;
            match n {
                Some(Notification::DeviceAck(ack)) => {
                    if matches!(ack.into(), Packet::SubAck(..)) {
                        acks += 1;
                    }
                }
                Some(Notification::Forward(f)) => self.pending.push(received(f)),
                Some(Notification::Unschedule) => self.rx.wake().await.map_err(|_| Closed::Link)?,
                Some(_) | None => {}
            }
        }
        Ok(())
    }

    /// Waits for at least one message, then appends every message already waiting to `out`.
    pub async fn recv_batch(&mut self, out: &mut Vec<Message>) -> Result<(), Closed> {
        let start = out.len();
        out.append(&mut self.pending);
        loop {
            let mut unscheduled = false;
            while let Some(n) = poll_now(&mut self.rx) {
                take(n.map_err(|_| Closed::Link)?, out, &mut unscheduled);
            }
            // The router stops scheduling a link whose buffer filled up until it is told that
            // the buffer was drained.
            if unscheduled {
                self.rx.wake().await.map_err(|_| Closed::Link)?;
            }
            if out.len() > start {
                return Ok(());
            }
            let n = self.rx.next().await.map_err(|_| Closed::Link)?;
            take(n, out, &mut unscheduled);
            if unscheduled {
                self.rx.wake().await.map_err(|_| Closed::Link)?;
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

    /// Leaves the broker: the router frees the link (it would otherwise keep it forever).
    pub async fn close(mut self) {
        let bye = Packet::Disconnect(
            Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
            },
            None,
        );
        let _ = self.router.relay(&mut self.tx, vec![bye]).await;
    }

    /// Publishes messages. Retained ones are stored first, like a device's, and tapped ones are
    /// committed by the durable tap's owner first (see `crate::tap`).
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
                messages
                    .iter()
                    .map(|(m, _)| (m.topic.as_str(), &m.payload, m.hops)),
                self.skip.as_ref(),
            )
            .await
            .map_err(|_| Closed::Link)?;
        let mut batch = Vec::with_capacity(messages.len());
        for (m, correlation_data) in messages {
            let publish = if m.qos == 0 && !m.retain {
                Publish::new(Bytes::from(m.topic), m.payload, false)
            } else {
                self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
                make_publish(&m.topic, m.payload, m.qos, m.retain, self.next_pkid)
            };
            if m.retain {
                self.shared
                    .persist_retained(&publish)
                    .await
                    .map_err(|e| Closed::Store(e.to_string()))?;
            }
            let mut publish = publish;
            publish.topic = namespace::topic_to_router(&publish.topic);
            let props = (m.hops > 0 || correlation_data.is_some()).then(|| PublishProperties {
                user_properties: (m.hops > 0)
                    .then(|| (HOPS_PROPERTY.to_owned(), m.hops.to_string()))
                    .into_iter()
                    .collect(),
                correlation_data,
                ..PublishProperties::default()
            });
            batch.push(Packet::Publish(publish, props));
        }
        self.router
            .relay(&mut self.tx, batch)
            .await
            .map_err(|_| Closed::Link)
    }
}

/// Keeps what a notification carries for a component: messages; SUBACKs and PUBACKs need no answer.
fn take(n: Option<Notification>, out: &mut Vec<Message>, unscheduled: &mut bool) {
    match n {
        Some(Notification::Forward(f)) => out.push(received(f)),
        Some(Notification::Unschedule) => *unscheduled = true,
        Some(_) | None => {}
    }
}

fn received(f: rumqttd::Forward) -> Message {
    let hops = f
        .properties
        .as_ref()
        .and_then(|p| p.user_properties.iter().find(|(k, _)| k == HOPS_PROPERTY))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let (response_topic, correlation_data) = f
        .properties
        .as_ref()
        .map(|p| (p.response_topic.clone(), p.correlation_data.clone()))
        .unwrap_or_default();
    Message {
        response_topic,
        correlation_data,
        origin: origin_client_id(f.properties.as_ref()),
        topic: String::from_utf8_lossy(&namespace::topic_from_router(f.publish.topic)).into_owned(),
        payload: f.publish.payload,
        hops,
    }
}
