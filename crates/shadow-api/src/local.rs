//! Shadow requests from inside the gateway: how Grove's own components (the functions' shadow host
//! calls, cloud sync's edge side) use the shadow service.
//!
//! They go through the same MQTT API a device uses, over the component's bus link, so the service
//! has one way in and a component's request is validated, ordered, versioned and committed like a
//! device's. A request carries a random client token and its answer is the `accepted`/`rejected`
//! message on that request's topic with that token: random, so that a device publishing on an
//! answer topic cannot pass for the service by guessing it.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::names::{request_topic, Operation};
use crate::token::client_token_of;
use grove_broker::bus::{Bus, Outgoing};

/// The answer topics of every shadow operation: only these, not `$aws/things/+/shadow/#`, which
/// would bring every delta and documents message of every thing to this link too.
const ANSWER_FILTERS: [&str; 4] = [
    "$aws/things/+/shadow/+/accepted",
    "$aws/things/+/shadow/+/rejected",
    "$aws/things/+/shadow/name/+/+/accepted",
    "$aws/things/+/shadow/name/+/+/rejected",
];

/// Requests waiting to be sent by the serving task.
const QUEUE: usize = 256;

/// The shadow service's answer to one request.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Whether it came on `accepted` (else `rejected`).
    pub accepted: bool,
    /// The answer document as published.
    pub doc: Bytes,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The deadline passed first.
    #[error("the shadow service did not answer in time")]
    Timeout,
    /// The bus link is closed: the gateway is shutting down.
    #[error("the bus is closed")]
    Closed,
}

struct Request {
    message: Outgoing,
    token: String,
    answer: oneshot::Sender<Answer>,
}

/// A component's handle for shadow requests; cheap to clone.
#[derive(Clone)]
pub struct LocalShadows {
    requests: mpsc::Sender<Request>,
}

impl LocalShadows {
    /// Serves requests over `bus` until shutdown. The bus is the component's own, so that its
    /// requests pass (or bypass) the durable taps as the component's other publishes do. It is
    /// subscribed to the answer topics before the first request is sent, not before: until a
    /// component makes a shadow request (a function may never), the shadow service's answers to
    /// devices are not routed to it too.
    pub fn start(bus: Bus, shutdown: watch::Receiver<bool>) -> LocalShadows {
        let (requests, rx) = mpsc::channel(QUEUE);
        tokio::spawn(serve(bus, rx, shutdown));
        LocalShadows { requests }
    }

    /// Sends `op` with `body` (a JSON object; its client token is replaced) for a thing's classic
    /// (`name` `None`) or named shadow, `hops` rule hops deep, and waits for the answer until
    /// `deadline`.
    pub async fn request(
        &self,
        thing: &str,
        name: Option<&str>,
        op: Operation,
        mut body: Value,
        hops: u32,
        deadline: Instant,
    ) -> Result<Answer, LocalError> {
        let token = format!("grove-{}", uuid::Uuid::new_v4());
        body["clientToken"] = token.clone().into();
        let mut message = Outgoing::new(
            request_topic(thing, name, op),
            Bytes::from(body.to_string()),
        );
        message.hops = hops;
        let (answer, rx) = oneshot::channel();
        let request = Request {
            message,
            token,
            answer,
        };
        match tokio::time::timeout_at(deadline, async {
            self.requests.send(request).await.ok()?;
            rx.await.ok()
        })
        .await
        {
            Err(_) => Err(LocalError::Timeout),
            Ok(None) => Err(LocalError::Closed),
            Ok(Some(answer)) => Ok(answer),
        }
    }
}

/// A sent request: its topic (its answer comes on `{topic}/accepted|rejected`) and its waiter.
type Waiting = (String, oneshot::Sender<Answer>);

async fn serve(
    mut bus: Bus,
    mut requests: mpsc::Receiver<Request>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut waiting: HashMap<String, Waiting> = HashMap::new();
    // Waiters that gave up (their deadline passed) are swept out whenever the map has doubled
    // since the last sweep, so it stays about as small as the requests in flight at O(1) a request.
    let mut sweep_at = 64;
    let mut batch = Vec::new();
    let mut subscribed = false;
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            request = requests.recv() => {
                let Some(r) = request else { break };
                if !subscribed {
                    let filters: Vec<String> = ANSWER_FILTERS.map(String::from).to_vec();
                    if bus.subscribe_confirmed(&filters).await.is_err() {
                        break;
                    }
                    subscribed = true;
                }
                if waiting.len() >= sweep_at {
                    waiting.retain(|_, (_, w)| !w.is_closed());
                    sweep_at = (2 * waiting.len()).max(64);
                }
                waiting.insert(r.token, (r.message.topic.clone(), r.answer));
                if bus.publish(vec![r.message]).await.is_err() {
                    break;
                }
            }
            received = bus.recv_batch(&mut batch) => {
                if received.is_err() {
                    break;
                }
                for m in batch.drain(..) {
                    // Answers to devices come here too; with nothing waiting, none is read.
                    if waiting.is_empty() {
                        continue;
                    }
                    let Some(token) = client_token_of(&m.payload) else {
                        continue;
                    };
                    let Some((topic, _)) = waiting.get(&token) else { continue };
                    let accepted = match m.topic.strip_prefix(topic.as_str()) {
                        Some("/accepted") => true,
                        Some("/rejected") => false,
                        _ => continue,
                    };
                    if let Some((_, w)) = waiting.remove(&token) {
                        let _ = w.send(Answer { accepted, doc: m.payload });
                    }
                }
            }
        }
    }
    bus.close().await;
}
