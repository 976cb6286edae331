//! The shadow service: the IO shell around [`super::document`].
//!
//! It serves the AWS Device Shadow MQTT API on the bus: it takes every request waiting (a batch),
//! answers each against its in-memory copy of the shadows, writes every changed shadow to the store
//! in one transaction, and only after that commit publishes the answers. So `update/accepted` is
//! never seen for an update that a power cut could lose, and however many updates arrive during a
//! commit, they share the next one (group commit).
//!
//! Requests on one shadow are answered in the order the broker delivered them, which for one client
//! is the order it published them (versions and 409s stay exact). Shadows are read from the store
//! on first use and then kept in memory; the cache is the store's mirror, rolled back if a commit
//! fails (the affected requests then get 500 and nothing of them is kept).

use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{debug, error, warn};

use super::document::{self, client_token_of, Limits, Rejected, Rejection, Shadow};
use super::names::{Operation, RequestTopic, Response, TopicError, REQUEST_FILTERS};
use crate::bus::{Bus, Closed, Message, Outgoing};
use crate::config::ShadowConfig;
use crate::metrics::ShadowMetrics;
use crate::store::{ShadowKey, Store, StoredShadow};

/// Grove's own request topic for listing shadows (AWS's MQTT API has no list operation); the
/// answer comes on `…/accepted`. Used by `grove shadow list`.
pub const LIST_TOPIC: &str = "$grove/shadows/list";

/// The running service.
pub struct ShadowService {
    bus: Bus,
    store: Store,
    limits: Limits,
    max_inflight: usize,
    metrics: ShadowMetrics,
    /// Shadows read from or written to the store; `None` marks one known not to be stored.
    cache: HashMap<ShadowKey, Option<Shadow>>,
}

/// One answered request, held until the batch's commit.
struct Answer {
    /// The documents to publish once the batch is durable.
    publish: Vec<Outgoing>,
    /// Whether the answer depends on this batch's commit (anything after a write in the batch).
    durable: bool,
    /// Where to send a 500 if the commit fails.
    rejected_topic: String,
    /// The request payload, to echo its client token in that 500.
    payload: Bytes,
    /// Rule republish hops of the request, carried on to the answers so that a rule loop through
    /// a shadow is cut like any other (see `rules`).
    hops: u32,
}

impl ShadowService {
    /// Subscribes the service's filters on `bus`. Call before the broker opens its listeners, so no
    /// request can arrive before the service listens.
    pub fn new(
        mut bus: Bus,
        store: Store,
        config: &ShadowConfig,
        metrics: ShadowMetrics,
    ) -> Result<Self, Closed> {
        for filter in REQUEST_FILTERS.iter().copied().chain([LIST_TOPIC]) {
            bus.subscribe(filter)?;
        }
        Ok(ShadowService {
            bus,
            store,
            limits: Limits {
                max_state_bytes: config.max_state_bytes,
                max_depth: config.max_depth,
                ..Limits::default()
            },
            max_inflight: config.max_inflight_per_client,
            metrics,
            cache: HashMap::new(),
        })
    }

    /// Serves until shutdown.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                received = self.bus.recv_batch(&mut batch) => {
                    if received.is_err() {
                        return;
                    }
                }
            }
            let answers = self.answer(&mut batch).await;
            if self.bus.publish(answers).await.is_err() {
                return;
            }
        }
    }

    /// Answers a batch of requests, committing its writes before returning what to publish.
    async fn answer(&mut self, batch: &mut Vec<Message>) -> Vec<Outgoing> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut inflight: HashMap<String, usize> = HashMap::new();
        let mut writes: BTreeMap<ShadowKey, Shadow> = BTreeMap::new();
        let mut before: HashMap<ShadowKey, Option<Shadow>> = HashMap::new();
        let mut answers = Vec::with_capacity(batch.len());
        for message in batch.drain(..) {
            if message.topic == LIST_TOPIC {
                answers.push(self.list(message, now).await);
                continue;
            }
            let topic = match RequestTopic::parse(&message.topic) {
                Ok(t) => t,
                Err(TopicError::InvalidThingName(e)) => {
                    answers.push(self.bad_name(&message, format!("thing name: {e}"), now));
                    continue;
                }
                Err(TopicError::InvalidShadowName(e)) => {
                    answers.push(self.bad_name(&message, format!("shadow name: {e}"), now));
                    continue;
                }
                // Responses and other topics under the filters are not requests.
                Err(TopicError::NotShadowTopic | TopicError::UnknownOperation) => continue,
            };
            if let Some(origin) = &message.origin {
                let n = inflight.entry(origin.clone()).or_default();
                *n += 1;
                if *n > self.max_inflight {
                    let rejected = Rejected::new(
                        Rejection::TooManyRequests,
                        client_token_of(&message.payload),
                    );
                    answers.push(self.rejection(
                        &topic,
                        rejected,
                        &message,
                        now,
                        !writes.is_empty(),
                    ));
                    continue;
                }
            }
            let key = ShadowKey {
                thing: topic.thing.to_owned(),
                name: topic.shadow.map(str::to_owned),
            };
            let stored = match self.load(&key).await {
                Ok(s) => s,
                Err(()) => {
                    let rejected =
                        Rejected::new(Rejection::Internal, client_token_of(&message.payload));
                    answers.push(self.rejection(
                        &topic,
                        rejected,
                        &message,
                        now,
                        !writes.is_empty(),
                    ));
                    continue;
                }
            };
            let changed = match topic.op {
                Operation::Update => {
                    match document::update(stored.as_ref(), &message.payload, &self.limits, now) {
                        Ok(updated) => {
                            let mut publish = vec![
                                outgoing(
                                    topic.response(Response::UpdateAccepted),
                                    &updated.accepted,
                                ),
                                outgoing(
                                    topic.response(Response::UpdateDocuments),
                                    &updated.documents,
                                ),
                            ];
                            if let Some(delta) = &updated.delta {
                                publish
                                    .push(outgoing(topic.response(Response::UpdateDelta), delta));
                            }
                            Some((updated.shadow, publish))
                        }
                        Err(rejected) => {
                            answers.push(self.rejection(
                                &topic,
                                rejected,
                                &message,
                                now,
                                !writes.is_empty(),
                            ));
                            None
                        }
                    }
                }
                Operation::Delete => match document::delete(
                    stored.as_ref(),
                    &message.payload,
                    topic.not_found_name(),
                    now,
                ) {
                    Ok(deleted) => Some((
                        deleted.shadow,
                        vec![outgoing(topic.accepted(), &deleted.accepted)],
                    )),
                    Err(rejected) => {
                        answers.push(self.rejection(
                            &topic,
                            rejected,
                            &message,
                            now,
                            !writes.is_empty(),
                        ));
                        None
                    }
                },
                Operation::Get => {
                    match document::get(
                        stored.as_ref(),
                        &message.payload,
                        topic.not_found_name(),
                        now,
                    ) {
                        Ok(doc) => {
                            self.metrics.count(Operation::Get, 200);
                            answers.push(Answer {
                                publish: vec![outgoing(topic.accepted(), &doc)],
                                durable: !writes.is_empty(),
                                rejected_topic: topic.rejected(),
                                payload: message.payload.clone(),
                                hops: message.hops,
                            });
                        }
                        Err(rejected) => {
                            answers.push(self.rejection(
                                &topic,
                                rejected,
                                &message,
                                now,
                                !writes.is_empty(),
                            ));
                        }
                    }
                    None
                }
            };
            if let Some((shadow, publish)) = changed {
                self.metrics.count(topic.op, 200);
                before.entry(key.clone()).or_insert(stored);
                self.cache.insert(key.clone(), Some(shadow.clone()));
                writes.insert(key, shadow);
                answers.push(Answer {
                    publish,
                    durable: true,
                    rejected_topic: topic.rejected(),
                    payload: message.payload,
                    hops: message.hops,
                });
            }
        }
        if !writes.is_empty() && !self.commit(writes).await {
            // Nothing of this batch was kept: forget its changes and answer what depended on them
            // with 500, so no device believes in a write that is not there.
            for (key, shadow) in before {
                self.cache.insert(key, shadow);
            }
            for answer in answers.iter_mut().filter(|a| a.durable) {
                let token = client_token_of(&answer.payload);
                let doc = Rejected::new(Rejection::Internal, token).document(now);
                answer.publish = vec![outgoing(answer.rejected_topic.clone(), &doc)];
            }
        }
        answers
            .into_iter()
            .flat_map(|a| {
                let hops = a.hops;
                a.publish.into_iter().map(move |mut o| {
                    o.hops = hops;
                    o
                })
            })
            .collect()
    }

    /// Writes the batch's shadows in one transaction; false if that failed.
    async fn commit(&mut self, writes: BTreeMap<ShadowKey, Shadow>) -> bool {
        let rows = writes
            .into_iter()
            .map(|(key, shadow)| StoredShadow {
                version: shadow.version(),
                document: shadow.to_json().to_string(),
                key,
            })
            .collect::<Vec<_>>();
        let count = rows.len();
        let started = std::time::Instant::now();
        match self.store.write_shadows(rows).await {
            Ok(()) => {
                self.metrics.commits.inc();
                self.metrics
                    .commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                debug!(shadows = count, "shadow batch committed");
                true
            }
            Err(e) => {
                error!(error = %e, shadows = count, "shadow commit failed; answering 500");
                false
            }
        }
    }

    /// The stored shadow of `key`, from the cache or the store.
    async fn load(&mut self, key: &ShadowKey) -> Result<Option<Shadow>, ()> {
        if let Some(cached) = self.cache.get(key) {
            return Ok(cached.clone());
        }
        let stored = self.store.load_shadow(key.clone()).await.map_err(|e| {
            error!(error = %e, thing = key.thing, "cannot read a shadow");
        })?;
        let shadow = match stored {
            None => None,
            Some(row) => match serde_json::from_str::<Value>(&row.document)
                .map_err(|e| e.to_string())
                .and_then(|v| Shadow::from_json(v).map_err(|e| e.to_string()))
            {
                Ok(s) => Some(s),
                Err(e) => {
                    error!(error = %e, thing = key.thing, "a stored shadow is unreadable");
                    return Err(());
                }
            },
        };
        self.cache.insert(key.clone(), shadow.clone());
        self.metrics.cached.set(self.cache.len() as i64);
        Ok(shadow)
    }

    fn rejection(
        &self,
        topic: &RequestTopic<'_>,
        rejected: Rejected,
        message: &Message,
        now: u64,
        durable: bool,
    ) -> Answer {
        self.metrics.count(topic.op, rejected.code());
        Answer {
            publish: vec![outgoing(topic.rejected(), &rejected.document(now))],
            // A rejection reflects the state as of this batch, so it waits for the batch's commit.
            durable,
            rejected_topic: topic.rejected(),
            payload: message.payload.clone(),
            hops: message.hops,
        }
    }

    /// A request on a topic whose thing or shadow name AWS would not accept: 400 on the request
    /// topic's `/rejected`.
    fn bad_name(&self, message: &Message, what: String, now: u64) -> Answer {
        warn!(
            topic = message.topic,
            "shadow request with an invalid name: {what}"
        );
        let token = client_token_of(&message.payload);
        let rejected_topic = format!("{}/rejected", message.topic);
        let doc = Rejected::new(Rejection::InvalidName(what), token).document(now);
        self.metrics.invalid_names.inc();
        Answer {
            publish: vec![outgoing(rejected_topic.clone(), &doc)],
            durable: false,
            rejected_topic,
            payload: message.payload.clone(),
            hops: message.hops,
        }
    }

    /// Answers `$grove/shadows/list` with every stored shadow's thing, name and version.
    async fn list(&self, message: Message, now: u64) -> Answer {
        let token = client_token_of(&message.payload);
        let doc = match self.store.list_shadows().await {
            Ok(list) => {
                let shadows: Vec<Value> = list
                    .into_iter()
                    .map(|(key, version)| json!({"thing": key.thing, "shadow": key.name, "version": version}))
                    .collect();
                json!({"shadows": shadows, "timestamp": now, "clientToken": token})
            }
            Err(e) => {
                json!({"code": 500, "message": e.to_string(), "timestamp": now, "clientToken": token})
            }
        };
        Answer {
            publish: vec![outgoing(format!("{LIST_TOPIC}/accepted"), &doc)],
            durable: false,
            rejected_topic: format!("{LIST_TOPIC}/rejected"),
            payload: message.payload,
            hops: 0,
        }
    }
}

fn outgoing(topic: String, doc: &Value) -> Outgoing {
    Outgoing::new(topic, Bytes::from(doc.to_string()))
}
