//! The simulator's own MQTT clients (the observer and the controller), on rumqttc. rumqttc's types stay
//! in this module: the rest of the crate sees [`MqttClient`] and a handler called with each message.
//!
//! These clients are the simulator's instruments, not devices; devices speak MQTT through the
//! firmware's own codec (see [`crate::device`]).

use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeFilter};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long connecting and subscribing may take.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Why an instrument client failed.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The gateway refused or dropped the connection before the subscriptions were acknowledged.
    #[error("MQTT client {id} could not connect to {target}: {reason}")]
    Connect {
        /// The client id.
        id: String,
        /// The gateway address.
        target: SocketAddr,
        /// What rumqttc reported.
        reason: String,
    },
    /// A publish could not be queued (the client's event loop has ended).
    #[error("MQTT client {id} could not publish: {reason}")]
    Publish {
        /// The client id.
        id: String,
        /// What rumqttc reported.
        reason: String,
    },
}

/// A connected client whose event loop runs in its own task, handing every received message to the
/// handler given at connect.
pub struct MqttClient {
    id: String,
    client: AsyncClient,
    task: JoinHandle<()>,
}

impl MqttClient {
    /// Connects with a clean session, subscribes (QoS 1) to `filters` and waits for the SUBACK. After
    /// a lost connection rumqttc reconnects and the filters are subscribed again.
    pub async fn connect<H>(
        id: &str,
        target: SocketAddr,
        filters: &[&str],
        mut handler: H,
    ) -> Result<Self, MqttError>
    where
        H: FnMut(&str, &[u8]) + Send + 'static,
    {
        let mut options = MqttOptions::new(id, target.ip().to_string(), target.port());
        options.set_keep_alive(Duration::from_secs(30));
        options.set_clean_session(true);
        options.set_max_packet_size(1 << 20, 1 << 20);
        // The controller queues many requests at once; the event loop drains them.
        options.set_request_channel_capacity(10_000);
        let (client, mut eventloop) = AsyncClient::new(options, 10_000);
        let filters: Vec<String> = filters.iter().map(|f| (*f).to_owned()).collect();
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(), String>>();
        let subscriber = client.clone();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        // A clean session has no subscriptions: (re)subscribe after every CONNACK.
                        // `try_` because awaiting here would wait on this very loop.
                        let many = filters
                            .iter()
                            .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                        if let Err(e) = subscriber.try_subscribe_many(many) {
                            if let Some(r) = ready.take() {
                                let _ = r.send(Err(e.to_string()));
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(Ok(()));
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        handler(&publish.topic, &publish.payload);
                    }
                    Ok(_) => {}
                    Err(e) => match ready.take() {
                        Some(r) => {
                            let _ = r.send(Err(e.to_string()));
                            return;
                        }
                        // After a loss, rumqttc reconnects on the next poll; pace the attempts.
                        None => tokio::time::sleep(Duration::from_millis(200)).await,
                    },
                }
            }
        });
        let fail = |reason: String| MqttError::Connect {
            id: id.to_owned(),
            target,
            reason,
        };
        match tokio::time::timeout(READY_TIMEOUT, ready_rx).await {
            Ok(Ok(Ok(()))) => Ok(Self {
                id: id.to_owned(),
                client,
                task,
            }),
            Ok(Ok(Err(reason))) => {
                task.abort();
                Err(fail(reason))
            }
            _ => {
                task.abort();
                Err(fail(format!("no SUBACK within {READY_TIMEOUT:?}")))
            }
        }
    }

    /// The client id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Publishes at QoS 1.
    pub async fn publish(&self, topic: String, payload: Vec<u8>) -> Result<(), MqttError> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| MqttError::Publish {
                id: self.id.clone(),
                reason: e.to_string(),
            })
    }

    /// Sends DISCONNECT and stops the event loop.
    pub async fn close(self) {
        let _ = self.client.disconnect().await;
        // A moment for the loop to send it; then the loop is stopped, or rumqttc would reconnect.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.task.abort();
    }
}
