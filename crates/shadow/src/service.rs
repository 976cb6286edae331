//! The shadow service: the IO shell around [`super::document`].
//!
//! It serves the AWS Device Shadow MQTT API on the bus: it takes every request waiting (a batch),
//! answers each against its in-memory copy of the shadows, queues every changed shadow of the batch
//! to the store as one unit of work, and only after that unit's commit publishes the batch's
//! answers. So `update/accepted` is never seen for an update that a power cut could lose, and
//! however many updates arrive during a commit, they share the next one (group commit).
//!
//! The service does not wait for a batch's commit before it answers the next batch: up to
//! [`PIPELINE`] batches are answered and queued to the store while the oldest one commits, so the
//! service's work overlaps the disk's (`fsync`) instead of taking turns with it. Answers are still
//! published batch by batch in order, each only after its own commit (and so after every earlier
//! one: the store runs units in the order they were queued). A later batch may build on a shadow
//! an earlier batch changed before that change is durable; each write therefore names the state it
//! replaces ([`Replaces`]), and if the earlier commit failed the later write finds the old state and
//! fails too. A failed batch's answers, and every answer of a later batch about a shadow the failed
//! batch wrote, become 500 and nothing of them is kept: those shadows are dropped from the cache and
//! read again from the store when next used.
//!
//! Requests on one shadow are answered in the order the broker delivered them, which for one client
//! is the order it published them (versions and 409s stay exact). Shadows are read from the store
//! on first use (all of a batch's in one read) and then kept in memory.
//!
//! AWS's 429 ("Device Shadow error messages": "more than 10 in-flight requests on a single
//! connection. An in-flight request is an in-progress request that has been started but not yet
//! completed") is counted per publishing client in [`InFlight`]: a request is counted from the
//! moment the service takes it until its answer has been published, whichever batch it came in.
//! Because a batch is answered only after its commit, everything a client published while the
//! previous commit was running arrives together in the next batch and counts at once; a client that
//! waits for each answer before sending the next request never has more than one in flight.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{debug, error, warn};

use crate::config::ShadowConfig;
use crate::document::{self, Limits, Rejected, Rejection, Shadow};
use crate::metrics::ShadowMetrics;
use crate::queries::{Replaces, ShadowQueries, ShadowWrite};
use grove_broker::bus::{Bus, Closed, Message, Outgoing};
use grove_shadow_api::names::{Operation, RequestTopic, Response, TopicError, REQUEST_FILTERS};
use grove_shadow_api::token::client_token_of;
use grove_store::{Queued, ShadowKey, Store, StoreError, StoredShadow};

/// Grove's own request topic for listing shadows (AWS's MQTT API has no list operation); the
/// answer comes on `…/accepted`. Used by `grove shadow list`.
pub const LIST_TOPIC: &str = "$grove/shadows/list";

/// Most batches answered and waiting for their commits at once. Beyond it the service waits for
/// the oldest commit before it takes more requests, which bounds what a burst of requests from
/// the gateway's own components (not bound by the per-client in-flight limit) holds in memory.
pub const PIPELINE: usize = 8;

/// The running service.
pub struct ShadowService {
    bus: Bus,
    store: Store,
    limits: Limits,
    inflight: InFlight,
    metrics: ShadowMetrics,
    /// Shadows as the answers given so far left them: the store's state plus the writes of the
    /// batches still committing; `None` marks one known not to be stored.
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

/// One answered request, held until its batch's commit.
struct Answer {
    /// The documents to publish once the batch is durable.
    publish: Vec<Outgoing>,
    /// The shadow whose state the answer reflects: if a commit that wrote it fails, the answer
    /// becomes a 500. `None` for answers that depend on no shadow (429, an invalid name, a list).
    key: Option<ShadowKey>,
    /// Where to send that 500.
    rejected_topic: String,
    /// The request payload, to echo its client token in that 500.
    payload: Bytes,
    /// Rule republish hops of the request, carried on to the answers so that a rule loop through
    /// a shadow is cut like any other (see `rules`).
    hops: u32,
    /// The client whose in-flight count this request holds until its answer is published.
    counted: Option<String>,
}

/// A batch answered and waiting for its commit.
struct Pending {
    answers: Vec<Answer>,
    /// The shadows its commit writes, all or none.
    written: HashSet<ShadowKey>,
    /// The commit, if the batch wrote anything, and when it was queued.
    commit: Option<(Queued<()>, Instant)>,
}

impl Pending {
    /// Waits for the commit (at once for a batch that wrote nothing).
    async fn committed(&mut self) -> Result<(), StoreError> {
        match &mut self.commit {
            Some((commit, _)) => commit.await,
            None => Ok(()),
        }
    }
}

/// The oldest pending batch's commit; never completes when nothing is pending.
async fn oldest_committed(pending: &mut VecDeque<Pending>) -> Result<(), StoreError> {
    match pending.front_mut() {
        Some(p) => p.committed().await,
        None => std::future::pending().await,
    }
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
        let mut pending: VecDeque<Pending> = VecDeque::new();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                outcome = oldest_committed(&mut pending) => {
                    let Some(done) = pending.pop_front() else { continue };
                    if self.finish(done, outcome, &mut pending).await.is_err() {
                        return;
                    }
                }
                received = self.bus.recv_batch(&mut batch), if pending.len() < PIPELINE => {
                    if received.is_err() {
                        return;
                    }
                    // The store has shut down (so has the gateway): nothing more is answered.
                    let Ok(answered) = self.answer(&mut batch).await else {
                        return;
                    };
                    pending.push_back(answered);
                }
            }
        }
    }

    /// Publishes a batch's answers once its commit is done: as they are, or, if the commit
    /// failed, with 500 for every answer about a shadow it wrote, which are then read again from
    /// the store; later batches' answers about those shadows become 500 as well (their writes,
    /// built on the failed ones, fail in the store too).
    async fn finish(
        &mut self,
        done: Pending,
        outcome: Result<(), StoreError>,
        later: &mut VecDeque<Pending>,
    ) -> Result<(), Closed> {
        let Pending {
            mut answers,
            written,
            commit,
        } = done;
        if let Some((_, queued)) = commit {
            match outcome {
                Ok(()) => {
                    self.metrics.commits.inc();
                    self.metrics
                        .commit_seconds
                        .observe(queued.elapsed().as_secs_f64());
                    debug!(shadows = written.len(), "shadow batch committed");
                }
                Err(e) => {
                    error!(error = %e, shadows = written.len(), "shadow commit failed; answering 500");
                    let now = now();
                    for key in &written {
                        self.cache.remove(key);
                    }
                    for answer in answers
                        .iter_mut()
                        .chain(later.iter_mut().flat_map(|p| p.answers.iter_mut()))
                        .filter(|a| a.key.as_ref().is_some_and(|k| written.contains(k)))
                    {
                        let token = client_token_of(&answer.payload);
                        let doc = Rejected::new(Rejection::Internal, token).document(now);
                        answer.publish = vec![outgoing(answer.rejected_topic.clone(), &doc)];
                    }
                }
            }
        }
        let mut publish = Vec::new();
        let mut counted = Vec::new();
        for answer in answers {
            counted.extend(answer.counted);
            let hops = answer.hops;
            publish.extend(answer.publish.into_iter().map(|mut o| {
                o.hops = hops;
                o
            }));
        }
        self.bus.publish(publish).await?;
        for origin in &counted {
            self.inflight.answered(origin);
        }
        Ok(())
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

    /// Answers a batch of requests and queues its writes to the store (an error: the store has
    /// shut down).
    async fn answer(&mut self, batch: &mut Vec<Message>) -> Result<Pending, StoreError> {
        let now = now();
        let unreadable = self.load_missing(batch).await;
        // What each shadow written in this batch replaces: its state before the batch.
        let mut writes: BTreeMap<ShadowKey, Replaces> = BTreeMap::new();
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
                    answers.push(self.rejection(&topic, rejected, &message, None, now));
                    continue;
                }
            }
            let key = key_of(&topic);
            let mut answer = match self.cache.get(&key) {
                Some(stored) if !unreadable.contains(&key) => {
                    let (answer, changed) =
                        self.apply(&topic, &key, stored.as_ref(), &message, now);
                    if let Some(shadow) = changed {
                        writes
                            .entry(key.clone())
                            .or_insert_with(|| replaces(stored.as_ref()));
                        self.cache.insert(key, Some(shadow));
                    }
                    answer
                }
                // Not readable from the store: 500, and nothing cached, so the next request
                // tries again.
                _ => {
                    let rejected =
                        Rejected::new(Rejection::Internal, client_token_of(&message.payload));
                    self.rejection(&topic, rejected, &message, Some(key), now)
                }
            };
            answer.counted = counted;
            answers.push(answer);
        }
        self.metrics.cached.set(self.cache.len() as i64);
        let written: HashSet<ShadowKey> = writes.keys().cloned().collect();
        let commit = if writes.is_empty() {
            None
        } else {
            let rows = writes
                .into_iter()
                .filter_map(|(key, replaces)| {
                    let shadow = self.cache.get(&key)?.as_ref()?;
                    Some(ShadowWrite {
                        row: StoredShadow {
                            version: shadow.version(),
                            deleted_at: shadow.deleted_at(),
                            document: shadow.to_document(),
                            key,
                        },
                        replaces,
                    })
                })
                .collect();
            let queued = Instant::now();
            Some((self.store.write_shadows(rows).await?, queued))
        };
        Ok(Pending {
            answers,
            written,
            commit,
        })
    }

    /// Answers one request on a readable shadow: the answer, and the changed shadow if the
    /// request changed it.
    fn apply(
        &self,
        topic: &RequestTopic<'_>,
        key: &ShadowKey,
        stored: Option<&Shadow>,
        message: &Message,
        now: u64,
    ) -> (Answer, Option<Shadow>) {
        let reject = |rejected| self.rejection(topic, rejected, message, Some(key.clone()), now);
        let (publish, changed) = match topic.op {
            Operation::Update => {
                match document::update(stored, &message.payload, &self.limits, now) {
                    Ok(updated) => {
                        let mut publish = vec![
                            Outgoing::new(
                                topic.response(Response::UpdateAccepted),
                                Bytes::from(updated.accepted),
                            ),
                            Outgoing::new(
                                topic.response(Response::UpdateDocuments),
                                Bytes::from(updated.documents),
                            ),
                        ];
                        if let Some(delta) = updated.delta {
                            publish.push(Outgoing::new(
                                topic.response(Response::UpdateDelta),
                                Bytes::from(delta),
                            ));
                        }
                        (publish, Some(updated.shadow))
                    }
                    Err(rejected) => return (reject(rejected), None),
                }
            }
            Operation::Delete => {
                match document::delete(stored, &message.payload, topic.not_found_name(), now) {
                    Ok(deleted) => (
                        vec![outgoing(topic.accepted(), &deleted.accepted)],
                        Some(deleted.shadow),
                    ),
                    Err(rejected) => return (reject(rejected), None),
                }
            }
            Operation::Get => {
                match document::get(stored, &message.payload, topic.not_found_name(), now) {
                    Ok(doc) => (vec![outgoing(topic.accepted(), &doc)], None),
                    Err(rejected) => return (reject(rejected), None),
                }
            }
        };
        self.metrics.count(topic.op, 200);
        let answer = Answer {
            publish,
            key: Some(key.clone()),
            rejected_topic: topic.rejected(),
            payload: message.payload.clone(),
            hops: message.hops,
            counted: None,
        };
        (answer, changed)
    }

    /// Reads every shadow the batch's requests name that is not cached, in one unit of work;
    /// returns those that could not be read (the store failed, or the document is unreadable).
    async fn load_missing(&mut self, batch: &[Message]) -> HashSet<ShadowKey> {
        let mut missing: Vec<ShadowKey> = Vec::new();
        for message in batch {
            if let Ok(topic) = RequestTopic::parse(&message.topic) {
                let key = key_of(&topic);
                if !self.cache.contains_key(&key) && !missing.contains(&key) {
                    missing.push(key);
                }
            }
        }
        if missing.is_empty() {
            return HashSet::new();
        }
        let rows = match self.store.load_shadows(missing.clone()).await {
            Ok(rows) => rows,
            Err(e) => {
                error!(error = %e, shadows = missing.len(), "cannot read shadows");
                return missing.into_iter().collect();
            }
        };
        let mut unreadable = HashSet::new();
        for (key, row) in missing.into_iter().zip(rows) {
            let shadow = match row.map(|r| Shadow::from_document(&r.document)).transpose() {
                Ok(shadow) => shadow,
                Err(e) => {
                    error!(error = %e, thing = key.thing, "a stored shadow is unreadable");
                    unreadable.insert(key);
                    continue;
                }
            };
            self.cache.insert(key, shadow);
        }
        unreadable
    }

    fn rejection(
        &self,
        topic: &RequestTopic<'_>,
        rejected: Rejected,
        message: &Message,
        key: Option<ShadowKey>,
        now: u64,
    ) -> Answer {
        self.metrics.count(topic.op, rejected.code());
        Answer {
            publish: vec![outgoing(topic.rejected(), &rejected.document(now))],
            key,
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
            key: None,
            rejected_topic,
            payload: message.payload.clone(),
            hops: message.hops,
            counted: None,
        }
    }

    /// Answers `$grove/shadows/list` on `…/accepted` with every live shadow's thing, name and
    /// version (deleted shadows' tombstones left out, and expired ones dropped first), or on
    /// `…/rejected` with a 500 error document if the store fails. As in AWS's answers, the client
    /// token is echoed only when the request carried one. The list is what is committed: the
    /// writes of batches still committing are not in it.
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
            key: None,
            rejected_topic: format!("{LIST_TOPIC}/rejected"),
            payload: message.payload,
            hops: 0,
            counted: None,
        }
    }
}

/// The shadow a request topic names.
fn key_of(topic: &RequestTopic<'_>) -> ShadowKey {
    ShadowKey {
        thing: topic.thing.to_owned(),
        name: topic.shadow.map(str::to_owned),
    }
}

/// What a write of a shadow whose committed state is `stored` replaces.
fn replaces(stored: Option<&Shadow>) -> Replaces {
    match stored {
        None => Replaces::Nothing,
        Some(s) if s.exists() => Replaces::Live(s.version()),
        Some(s) => Replaces::Tombstone(s.version()),
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
