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
//!
//! AWS's 429 ("Device Shadow error messages": "more than 10 in-flight requests on a single
//! connection. An in-flight request is an in-progress request that has been started but not yet
//! completed") is counted per publishing client in [`InFlight`]: a request is counted from the
//! moment the service takes it until its answer has been published, whichever batch it came in.
//! Because a batch is answered only after its commit, everything a client published while the
//! previous commit was running arrives together in the next batch and counts at once; a client that
//! waits for each answer before sending the next request never has more than one in flight.

use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{debug, error, warn};

use crate::config::ShadowConfig;
use crate::document::{self, Limits, Rejected, Rejection, Shadow};
use crate::metrics::ShadowMetrics;
use crate::queries::ShadowQueries;
use grove_broker::bus::{Bus, Closed, Message, Outgoing};
use grove_shadow_api::names::{Operation, RequestTopic, Response, TopicError, REQUEST_FILTERS};
use grove_shadow_api::token::client_token_of;
use grove_store::{ShadowKey, Store, StoredShadow};

/// Grove's own request topic for listing shadows (AWS's MQTT API has no list operation); the
/// answer comes on `…/accepted`. Used by `grove shadow list`.
pub const LIST_TOPIC: &str = "$grove/shadows/list";

/// The running service.
pub struct ShadowService {
    bus: Bus,
    store: Store,
    limits: Limits,
    inflight: InFlight,
    metrics: ShadowMetrics,
    /// Shadows read from or written to the store; `None` marks one known not to be stored.
    cache: HashMap<ShadowKey, Option<Shadow>>,
}

/// Requests each client has handed the service and not yet seen answered: AWS's per-connection
/// in-flight count, behind the 429 answer.
///
/// The shadow service sees clients by client id (recorded by the connection layer as the message's
/// origin), and a client id has at most one connection at a time, so per client id is per
/// connection. Requests without an origin (the gateway's own components) are not limited.
#[derive(Debug)]
struct InFlight {
    /// Most requests one client may have in flight; the next one gets 429.
    limit: usize,
    /// Count per client id; a client with nothing in flight has no entry.
    by_origin: HashMap<String, usize>,
}

impl InFlight {
    fn new(limit: usize) -> Self {
        InFlight {
            limit,
            by_origin: HashMap::new(),
        }
    }

    /// Counts a request of `origin` as in flight, or returns false (answer 429, not counted) when
    /// that client already has `limit` requests in flight.
    fn admit(&mut self, origin: &str) -> bool {
        if self.by_origin.get(origin).is_some_and(|n| *n >= self.limit) {
            return false;
        }
        *self.by_origin.entry(origin.to_owned()).or_default() += 1;
        true
    }

    /// A request of `origin` was answered (its answer published): one fewer in flight.
    fn answered(&mut self, origin: &str) {
        if let Some(n) = self.by_origin.get_mut(origin) {
            *n -= 1;
            if *n == 0 {
                self.by_origin.remove(origin);
            }
        }
    }
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
    /// The client whose in-flight count this request holds until its answer is published.
    counted: Option<String>,
}

/// A batch's answers, ready to publish, and the clients whose in-flight counts to release once
/// they are published.
struct Answers {
    publish: Vec<Outgoing>,
    counted: Vec<String>,
}

impl ShadowService {
    /// Subscribes the service's filters on `bus` and returns once the router has confirmed them.
    /// Call before the broker opens its listeners, so no request can arrive before the service
    /// listens.
    pub async fn new(
        mut bus: Bus,
        store: Store,
        config: &ShadowConfig,
        metrics: ShadowMetrics,
    ) -> Result<Self, Closed> {
        let filters: Vec<String> = REQUEST_FILTERS
            .iter()
            .copied()
            .chain([LIST_TOPIC])
            .map(String::from)
            .collect();
        bus.subscribe_confirmed(&filters).await?;
        Ok(ShadowService {
            bus,
            store,
            limits: Limits {
                max_state_bytes: config.max_state_bytes,
                max_depth: config.max_depth,
                ..Limits::default()
            },
            inflight: InFlight::new(config.max_inflight_per_client),
            metrics,
            cache: HashMap::new(),
        })
    }

    /// Serves until shutdown.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        self.drop_expired_tombstones(now()).await;
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
            if self.bus.publish(answers.publish).await.is_err() {
                return;
            }
            for origin in &answers.counted {
                self.inflight.answered(origin);
            }
        }
    }

    /// Lets the store forget tombstones whose version AWS would no longer continue (see
    /// [`document::tombstone_cutoff`]); a failure only leaves them for the next try.
    async fn drop_expired_tombstones(&self, now: u64) {
        if let Err(e) = self
            .store
            .drop_tombstones(document::tombstone_cutoff(now))
            .await
        {
            warn!(error = %e, "cannot drop expired shadow tombstones");
        }
    }

    /// Answers a batch of requests, committing its writes before returning what to publish.
    async fn answer(&mut self, batch: &mut Vec<Message>) -> Answers {
        let now = now();
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
            let counted = message.origin.clone();
            if let Some(origin) = &counted {
                if !self.inflight.admit(origin) {
                    let rejected = Rejected::new(
                        Rejection::TooManyRequests,
                        client_token_of(&message.payload),
                    );
                    answers.push(self.rejection(&topic, rejected, &message, now, false));
                    continue;
                }
            }
            let first = answers.len();
            let key = ShadowKey {
                thing: topic.thing.to_owned(),
                name: topic.shadow.map(str::to_owned),
            };
            let stored = match self.load(&key).await {
                Ok(s) => s,
                Err(()) => {
                    let rejected =
                        Rejected::new(Rejection::Internal, client_token_of(&message.payload));
                    let mut answer =
                        self.rejection(&topic, rejected, &message, now, !writes.is_empty());
                    answer.counted = counted;
                    answers.push(answer);
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
                                counted: None,
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
                    counted: None,
                });
            }
            // Exactly one answer was pushed for this request; it holds the client's count.
            if let Some(answer) = answers.get_mut(first) {
                answer.counted = counted;
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
        let counted = answers
            .iter_mut()
            .filter_map(|a| a.counted.take())
            .collect();
        let publish = answers
            .into_iter()
            .flat_map(|a| {
                let hops = a.hops;
                a.publish.into_iter().map(move |mut o| {
                    o.hops = hops;
                    o
                })
            })
            .collect();
        Answers { publish, counted }
    }

    /// Writes the batch's shadows in one transaction; false if that failed.
    async fn commit(&mut self, writes: BTreeMap<ShadowKey, Shadow>) -> bool {
        let rows = writes
            .into_iter()
            .map(|(key, shadow)| StoredShadow {
                version: shadow.version(),
                deleted_at: shadow.deleted_at(),
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
            counted: None,
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
            counted: None,
        }
    }

    /// Answers `$grove/shadows/list` on `…/accepted` with every live shadow's thing, name and
    /// version (deleted shadows' tombstones left out, and expired ones dropped first), or on
    /// `…/rejected` with a 500 error document if the store fails. As in AWS's answers, the client
    /// token is echoed only when the request carried one.
    async fn list(&self, message: Message, now: u64) -> Answer {
        let token = client_token_of(&message.payload);
        self.drop_expired_tombstones(now).await;
        let (topic, doc) = match self.store.list_shadows().await {
            Ok(list) => {
                let shadows: Vec<Value> = list
                    .into_iter()
                    .map(|(key, version)| json!({"thing": key.thing, "shadow": key.name, "version": version}))
                    .collect();
                let mut doc = document::Object::new();
                doc.insert("shadows".into(), shadows.into());
                doc.insert("timestamp".into(), now.into());
                (
                    format!("{LIST_TOPIC}/accepted"),
                    document::with_token(doc, token.as_deref()),
                )
            }
            Err(e) => {
                error!(error = %e, "cannot list shadows");
                (
                    format!("{LIST_TOPIC}/rejected"),
                    Rejected::new(Rejection::Internal, token).document(now),
                )
            }
        };
        Answer {
            publish: vec![outgoing(topic, &doc)],
            durable: false,
            rejected_topic: format!("{LIST_TOPIC}/rejected"),
            payload: message.payload,
            hops: 0,
            counted: None,
        }
    }
}

/// The wall clock in epoch seconds, the `now` the pure document module is handed.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn outgoing(topic: String, doc: &Value) -> Outgoing {
    Outgoing::new(topic, Bytes::from(doc.to_string()))
}

#[cfg(test)]
mod tests {
    use super::InFlight;

    /// Each step: `+c` admits a request of client `c` (the expected outcome after `=`), `-c` marks
    /// one of its requests answered.
    #[test]
    fn in_flight_counts_per_client_until_answered() {
        let mut inflight = InFlight::new(2);
        for (step, admitted) in [
            ("+a", true),
            ("+a", true),
            ("+a", false), // a third at once is refused and not counted
            ("+b", true),  // another client has its own count
            ("-a", true),
            ("+a", true), // one answered, so one more fits, whichever batch it comes in
            ("+a", false),
            ("-a", true),
            ("-a", true),
            ("-a", true), // more answers than counted (never happens) leave nothing behind
            ("+a", true),
            ("+a", true),
        ] {
            let (op, client) = step.split_at(1);
            match op {
                "+" => assert_eq!(inflight.admit(client), admitted, "{step}"),
                _ => inflight.answered(client),
            }
        }
        assert_eq!(inflight.by_origin.get("a"), Some(&2));
        assert_eq!(inflight.by_origin.get("b"), Some(&1));
    }
}
