//! The MQTT side of the cloud services' stand-ins ([`crate::AwsShadows`], [`crate::AwsJobs`]):
//! one rumqttc client that subscribes to a service's request topics, waits for the broker's
//! grant, and hands each request to the service's rules; the answers are published by the same
//! task, in order.

use std::sync::{Arc, Mutex, MutexGuard};

use rumqttc::{AsyncClient, Event, Packet, QoS, SubscribeFilter};

use crate::{options, WAIT};

/// What a service makes of a request: the messages to publish (topic, payload), or why it stops.
pub(crate) type Answers = Result<Vec<(String, String)>, String>;

/// A service's state and rules, shared by its task and the test.
pub(crate) trait Service: Default + Send + 'static {
    /// The answers to a request (topic, payload); nothing for a topic that is not one.
    fn answer(&mut self, topic: &str, payload: &[u8]) -> Answers;
    /// The stand-in stopped (its connection failed, or a request made it give up): why.
    fn stopped(&mut self, why: String);
}

/// A running stand-in: its client and its service's state; its task stops when it is dropped.
pub(crate) struct Responder<S> {
    /// For what the test makes the service publish by itself (a notification).
    pub(crate) client: AsyncClient,
    shared: Arc<Mutex<S>>,
    task: tokio::task::JoinHandle<()>,
}

impl<S: Service> Responder<S> {
    /// The service's state.
    pub(crate) fn lock(&self) -> MutexGuard<'_, S> {
        self.shared.lock().expect("the responder's state")
    }

    /// The service's state, for a task of the stand-in's own (a rollout's timer).
    pub(crate) fn shared(&self) -> Arc<Mutex<S>> {
        self.shared.clone()
    }

    /// Connects as `id` to the broker on the loopback `port`, subscribes to `filters` and returns
    /// once the broker has granted them (SUBACK), so a request published afterwards is answered
    /// by a fresh `S`. When the connection fails or the service gives up, the stand-in stops (it
    /// does not reconnect) and [`Service::stopped`] is told why.
    pub(crate) async fn start(id: &str, port: u16, filters: &[&str]) -> Responder<S> {
        let shared = Arc::new(Mutex::new(S::default()));
        let state = shared.clone();
        let (client, mut eventloop) = AsyncClient::new(options(id, port), 1000);
        let subscriptions = filters
            .iter()
            .map(|f| SubscribeFilter::new((*f).to_owned(), QoS::AtLeastOnce));
        client
            .try_subscribe_many(subscriptions)
            .expect("queue the SUBSCRIBE");
        let (subscribed, granted) = tokio::sync::oneshot::channel();
        let publisher = client.clone();
        let task = tokio::spawn(async move {
            let mut subscribed = Some(subscribed);
            let why = loop {
                let publish = match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        if let Some(s) = subscribed.take() {
                            let _ = s.send(Ok(ack.return_codes));
                        }
                        continue;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => p,
                    Ok(_) => continue,
                    Err(e) => break e.to_string(),
                };
                let answer = state
                    .lock()
                    .expect("the responder's state")
                    .answer(&publish.topic, &publish.payload);
                let out = match answer {
                    Ok(out) => out,
                    Err(why) => break why,
                };
                // The client's request queue is drained by this same task's next poll, so it is
                // never awaited here; a full queue (1000 messages) would be the test's flood, and
                // is said.
                if let Some(e) = out.into_iter().find_map(|(topic, payload)| {
                    publisher
                        .try_publish(topic, QoS::AtLeastOnce, false, payload)
                        .err()
                }) {
                    break format!("cannot publish an answer: {e}");
                }
            };
            if let Some(s) = subscribed.take() {
                let _ = s.send(Err(why.clone()));
            }
            state.lock().expect("the responder's state").stopped(why);
        });
        let codes: Result<Vec<rumqttc::SubscribeReasonCode>, String> =
            tokio::time::timeout(WAIT, granted)
                .await
                .unwrap_or_else(|_| panic!("no SUBACK for {id} within {WAIT:?}"))
                .expect("the responder's task");
        let codes = codes.unwrap_or_else(|e| panic!("{id} could not subscribe: {e}"));
        assert!(
            codes
                .iter()
                .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_))),
            "the broker refused {id}'s request topics: {codes:?}"
        );
        Responder {
            client,
            shared,
            task,
        }
    }
}

impl<S> Drop for Responder<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}
