//! The bus: how the gateway's own components (shadows, and rules, functions and cloud sync as they
//! land) talk MQTT with the devices, through an in-process link to the router, never a socket.
//!
//! A component gets a [`Bus`] from [`crate::broker::Broker::bus`], subscribes to exactly the filters
//! it serves, takes received messages in batches (whatever is waiting, so a busy component handles
//! many per wake-up and can group its durable writes), and publishes its answers in batches.
//! Topics and filters are the wire names (`$aws/things/...`); the translation to the router's names
//! happens here, as it does in the connection layer.

use bytes::Bytes;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish};
use rumqttd::Notification;

use crate::broker::{namespace, origin_client_id, poll_now, RouterHandle};

/// A message received by a component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The wire topic.
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
    /// The client id of the device that published it, when the connection layer recorded it (it
    /// does for the topics components serve: `$aws/things/...`).
    pub origin: Option<String>,
}

/// A message a component publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The wire topic.
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
}

/// The router has gone away: the gateway is shutting down.
#[derive(Debug, thiserror::Error)]
#[error("the MQTT router link is closed")]
pub struct Closed;

/// A component's link to the broker.
pub struct Bus {
    tx: LinkTx,
    rx: LinkRx,
    router: RouterHandle,
}

impl Bus {
    pub(crate) fn new(tx: LinkTx, rx: LinkRx, router: RouterHandle) -> Bus {
        Bus { tx, rx, router }
    }

    /// Subscribes (QoS 0; the router's in-memory log is what buffers for a busy component).
    pub fn subscribe(&mut self, filter: &str) -> Result<(), Closed> {
        self.tx
            .subscribe(namespace::filter_to_router(filter))
            .map(|_| ())
            .map_err(|_| Closed)
    }

    /// Waits for at least one message, then appends every message already waiting to `out`.
    pub async fn recv_batch(&mut self, out: &mut Vec<Message>) -> Result<(), Closed> {
        let start = out.len();
        while out.len() == start {
            let first = self.rx.next().await.map_err(|_| Closed)?;
            let mut next = first;
            let mut unscheduled = false;
            loop {
                match next.take() {
                    Some(Notification::Forward(f)) => out.push(Message {
                        origin: origin_client_id(f.properties.as_ref()),
                        topic: String::from_utf8_lossy(&namespace::topic_from_router(
                            f.publish.topic,
                        ))
                        .into_owned(),
                        payload: f.publish.payload,
                    }),
                    Some(Notification::Unschedule) => unscheduled = true,
                    // SUBACKs and the like need no answer from a QoS 0 subscriber.
                    Some(_) | None => {}
                }
                match poll_now(&mut self.rx) {
                    Some(Ok(n)) => next = n,
                    Some(Err(_)) => return Err(Closed),
                    None => break,
                }
            }
            if unscheduled {
                self.rx.wake().await.map_err(|_| Closed)?;
            }
        }
        Ok(())
    }

    /// Publishes messages (QoS 0 from the gateway; subscribers receive them at their own QoS).
    pub async fn publish(&mut self, messages: Vec<Outgoing>) -> Result<(), Closed> {
        let batch = messages
            .into_iter()
            .map(|m| {
                let topic = namespace::topic_to_router(&Bytes::from(m.topic));
                Packet::Publish(Publish::new(topic, m.payload, false), None)
            })
            .collect();
        self.router
            .relay(&mut self.tx, batch)
            .await
            .map_err(|_| Closed)
    }
}
