//! Shadow sync: keeps the gateway's shadows of the configured things and the cloud's in step.
//!
//! A *round* for one shadow reads both sides (a local `get` through the shadow service, as a
//! trusted bus client; a cloud `get` over the link), merges them against the last agreed state
//! ([`super::merge`]), sends each side only the fields it lacks as an update carrying the version
//! it was read at, and records the merged state with both sides' new versions (the sync state, in
//! the store). A round runs when a side reports a change (`update/documents` with a version newer
//! than the recorded one; on the cloud side any version but the recorded one, see
//! `ShadowSync::on_cloud`), and again later for a round that failed. When the link comes up, what
//! costs cloud messages depends on what the cloud kept (issue 16: a reconnect must cost
//! O(changed shadows), not a read of every shadow):
//! - the first connection after the gateway starts, or a session the cloud did not keep (CONNACK
//!   without session present: `session_expiry_secs = 0`, or away longer than it): a round for
//!   every known shadow, from the recorded base (so sync resumes after any outage, however long).
//!   The start is included because a gateway stopped (or killed) between taking a cloud
//!   notification and finishing its round would otherwise never learn of that change, and
//!   because a whole shadow deleted through AWS's API publishes nothing;
//! - a resumed session on a link that dropped: rounds only for the shadows changed meanwhile.
//!   Local changes were seen on the bus (and local versions are compared with the recorded ones
//!   too, which costs nothing on the wire); the cloud's arrive as the `update/documents` messages
//!   it queued for the session's QoS 1 subscriptions while the link was down.
//!
//! A shadow deleted whole on one side (`delete/accepted`, or missing at a round) is deleted on the
//! other when the merge leaves nothing there, that is when nothing changed on that side since the
//! recorded base; the base is then empty and both versions 0.
//!
//! A version conflict (409: the other side changed between read and write) is settled by a fresh
//! read and merge, at most [`MAX_ATTEMPTS`] times per round; then the round gives up, is counted,
//! and is retried after [`RETRY_AFTER`], never in a tight loop. Cloud-bound updates are capped at
//! the configured rate (a token bucket).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::config::ShadowSync as SyncConfig;
use super::link::Session;
use super::merge::{diff_state, target};
use super::queries::CloudQueries;
use super::quota::TokenBucket;
use super::SyncInput;
use crate::metrics::CloudMetrics;
use grove_broker::bus::{Bus, Closed, Message};
use grove_shadow::queries::ShadowQueries;
use grove_shadow_api::local::{LocalError, LocalShadows};
use grove_shadow_api::names::{request_topic, Operation};
use grove_store::{ShadowKey, Store, SyncState};

/// Reads and merges per round before giving up on conflicts.
pub const MAX_ATTEMPTS: usize = 3;

/// When a failed round is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(10);

/// How long to wait for either side's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The cloud subscriptions shadow sync needs for `config`'s things (one wildcard set for `"*"`,
/// since overlapping subscriptions could deliver a message twice).
pub fn cloud_filters(config: &SyncConfig) -> Vec<String> {
    let things = if config.all() {
        vec!["+".to_owned()]
    } else {
        config.things.clone()
    };
    things
        .iter()
        .flat_map(|t| {
            [
                format!("$aws/things/{t}/shadow/get/+"),
                format!("$aws/things/{t}/shadow/update/+"),
                format!("$aws/things/{t}/shadow/delete/+"),
                format!("$aws/things/{t}/shadow/name/+/get/+"),
                format!("$aws/things/{t}/shadow/name/+/update/+"),
                format!("$aws/things/{t}/shadow/name/+/delete/+"),
            ]
        })
        .collect()
}

/// The local subscriptions: the shadow service's change notifications and deletions (its answers
/// to sync's own requests reach [`LocalShadows`]).
const LOCAL_FILTERS: [&str; 4] = [
    "$aws/things/+/shadow/update/documents",
    "$aws/things/+/shadow/name/+/update/documents",
    "$aws/things/+/shadow/delete/accepted",
    "$aws/things/+/shadow/name/+/delete/accepted",
];

/// A shadow as read from one side: its state (`desired` and `reported` only) and version.
#[derive(Debug, Clone)]
struct Side {
    state: Value,
    /// `None` when the shadow does not exist there.
    version: Option<u64>,
}

/// How an update request ended.
enum Written {
    Accepted(u64),
    Conflict,
}

/// Why a round stopped.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error("the cloud link is down")]
    Offline,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("rejected: {0}")]
    Rejected(String),
    #[error("version conflicts {0} times in a row")]
    Conflicts(usize),
    #[error("the bus is closed")]
    Bus,
    #[error("cannot record the sync state: {0}")]
    Store(String),
}

/// The running component.
pub struct ShadowSync {
    bus: Bus,
    store: Store,
    config: SyncConfig,
    metrics: CloudMetrics,
    states: HashMap<ShadowKey, SyncState>,
    session: Option<Session>,
    dirty: BTreeSet<ShadowKey>,
    failed: BTreeSet<ShadowKey>,
    /// Requests to the gateway's shadow service.
    local: LocalShadows,
    /// Cloud messages that arrived while a round waited for an answer.
    pending_cloud: VecDeque<(String, Bytes)>,
    rate: TokenBucket,
    started: Instant,
    tokens: u64,
    /// Whether a link came up since the gateway started (the first one reads every shadow).
    connected_before: bool,
}

impl ShadowSync {
    /// Subscribes on `bus` and loads the recorded sync states.
    pub async fn start(
        mut bus: Bus,
        local: LocalShadows,
        store: Store,
        config: SyncConfig,
        metrics: CloudMetrics,
    ) -> Result<ShadowSync, Closed> {
        let filters: Vec<String> = LOCAL_FILTERS.iter().map(|f| (*f).to_owned()).collect();
        bus.subscribe_confirmed(&filters).await?;
        let states = store
            .load_sync_states()
            .await
            .map_err(|e| Closed::Store(e.to_string()))?
            .into_iter()
            .map(|s| (s.key.clone(), s))
            .collect();
        Ok(ShadowSync {
            bus,
            store,
            rate: TokenBucket::new(config.max_updates_per_sec, 1.0),
            config,
            metrics,
            states,
            session: None,
            dirty: BTreeSet::new(),
            failed: BTreeSet::new(),
            local,
            pending_cloud: VecDeque::new(),
            started: Instant::now(),
            tokens: 0,
            connected_before: false,
        })
    }

    /// Syncs until shutdown.
    pub async fn run(
        mut self,
        mut inputs: mpsc::UnboundedReceiver<SyncInput>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut batch = Vec::new();
        let mut retry = tokio::time::interval(RETRY_AFTER);
        loop {
            while let Some((topic, payload)) = self.pending_cloud.pop_front() {
                self.on_cloud(&topic, &payload);
            }
            if self.session.is_some() {
                if let Some(key) = self.dirty.pop_first() {
                    tokio::select! {
                        _ = shutdown.changed() => break,
                        r = self.round(&key, &mut inputs) => {
                            if let Err(e) = r {
                                if matches!(e, RoundError::Bus) {
                                    break;
                                }
                                self.metrics.sync_failures.inc();
                                warn!(thing = key.thing, shadow = ?key.name, error = %e, "shadow sync round failed; retrying later");
                                self.failed.insert(key);
                            }
                        }
                    }
                    continue;
                }
            }
            tokio::select! {
                _ = shutdown.changed() => break,
                r = self.bus.recv_batch(&mut batch) => {
                    if r.is_err() {
                        break;
                    }
                    for m in batch.drain(..) {
                        self.on_local(&m);
                    }
                }
                input = inputs.recv() => match input {
                    None => break,
                    Some(i) => self.on_input(i).await,
                },
                _ = retry.tick() => {
                    let failed = std::mem::take(&mut self.failed);
                    self.dirty.extend(failed);
                }
            }
        }
        self.bus.close().await;
    }

    async fn on_input(&mut self, input: SyncInput) {
        match input {
            SyncInput::Up { session, resumed } => {
                self.session = Some(session);
                let everything = !resumed || !self.connected_before;
                self.connected_before = true;
                let failed = std::mem::take(&mut self.failed);
                self.dirty.extend(failed);
                let local = self.store.list_shadows().await.unwrap_or_default();
                if everything {
                    // Every known shadow of the configured things gets a round.
                    for t in self.config.things.iter().filter(|t| *t != "*") {
                        self.dirty.insert(ShadowKey {
                            thing: t.clone(),
                            name: None,
                        });
                    }
                    self.dirty.extend(self.states.keys().cloned());
                    self.dirty.extend(
                        local
                            .into_iter()
                            .map(|(k, _)| k)
                            .filter(|k| self.config.covers(&k.thing)),
                    );
                } else {
                    // Only what changed here since the agreed state; the cloud's changes are
                    // on their way from the resumed session.
                    let changed: Vec<ShadowKey> = local
                        .into_iter()
                        .filter(|(k, version)| {
                            self.config.covers(&k.thing)
                                && self
                                    .states
                                    .get(k)
                                    .is_none_or(|s| s.local_version != *version)
                        })
                        .map(|(k, _)| k)
                        .collect();
                    self.dirty.extend(changed);
                }
                info!(
                    shadows = self.dirty.len(),
                    resumed, everything, "shadow sync resuming"
                );
            }
            SyncInput::Down => self.session = None,
            SyncInput::Cloud { topic, payload } => self.on_cloud(&topic, &payload),
        }
    }

    /// A local `update/documents` newer than what was agreed marks the shadow for a round.
    fn on_local(&mut self, m: &Message) {
        if let Some(key) = self.deleted(&m.topic) {
            self.dirty.insert(key);
        }
        if let Some((key, version)) = self.changed(&m.topic, &m.payload) {
            if self
                .states
                .get(&key)
                .is_none_or(|s| version > s.local_version)
            {
                self.dirty.insert(key);
            }
        }
    }

    /// A cloud `update/documents` at another version than agreed marks the shadow for a round:
    /// a newer one is a change; an older one is either a late message (the round then finds
    /// nothing to do) or a shadow AWS re-created at version 1, which it does 48 hours after a
    /// deletion ("Device Shadow service documents", versioning), and whose change must come down.
    /// Only the echo of the gateway's own write (the agreed version) is skipped.
    fn on_cloud(&mut self, topic: &str, payload: &[u8]) {
        if let Some(key) = self.deleted(topic) {
            self.dirty.insert(key);
        }
        if let Some((key, version)) = self.changed(topic, payload) {
            if self
                .states
                .get(&key)
                .is_none_or(|s| version != s.cloud_version)
            {
                self.dirty.insert(key);
            }
        }
    }

    /// The shadow and new version of an `update/documents` message for a configured thing.
    fn changed(&self, topic: &str, payload: &[u8]) -> Option<(ShadowKey, u64)> {
        let (key, suffix) = parse_topic(topic)?;
        if suffix != "update/documents" || !self.config.covers(&key.thing) {
            return None;
        }
        let doc: Value = serde_json::from_slice(payload).ok()?;
        Some((key, doc["current"]["version"].as_u64()?))
    }

    /// The shadow of a `delete/accepted` message for a configured thing.
    fn deleted(&self, topic: &str) -> Option<ShadowKey> {
        let (key, suffix) = parse_topic(topic)?;
        (suffix == "delete/accepted" && self.config.covers(&key.thing)).then_some(key)
    }

    /// Deletes the side(s) that still have the shadow after the other side deleted it, and
    /// records that nothing is agreed any more.
    async fn delete_round(
        &mut self,
        key: &ShadowKey,
        local: &Side,
        cloud: &Side,
        inputs: &mut mpsc::UnboundedReceiver<SyncInput>,
    ) -> Result<(), RoundError> {
        if cloud.version.is_some() {
            let wait = self.rate.reserve(self.started.elapsed());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let (accepted, doc) = self
                .cloud_request(key, Operation::Delete, json!({}), inputs)
                .await?;
            gone(accepted, &doc)?;
            self.metrics.synced("to_cloud");
        }
        if local.version.is_some() {
            let (accepted, doc) = self
                .local_request(key, Operation::Delete, json!({}))
                .await?;
            gone(accepted, &doc)?;
            self.metrics.synced("to_edge");
        }
        // Versions 0: whatever version either side's shadow has when it is created again is
        // news.
        let state = SyncState {
            key: key.clone(),
            base: json!({}).to_string(),
            local_version: 0,
            cloud_version: 0,
        };
        self.store
            .write_sync_state(state.clone())
            .await
            .map_err(|e| RoundError::Store(e.to_string()))?;
        info!(thing = key.thing, shadow = ?key.name, "shadow deleted on both sides");
        self.states.insert(key.clone(), state);
        Ok(())
    }

    /// One sync round for `key`.
    async fn round(
        &mut self,
        key: &ShadowKey,
        inputs: &mut mpsc::UnboundedReceiver<SyncInput>,
    ) -> Result<(), RoundError> {
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                self.metrics.sync_conflicts.inc();
            }
            let local = self.local_get(key).await?;
            let cloud = self.cloud_get(key, inputs).await?;
            let base = self
                .states
                .get(key)
                .and_then(|s| serde_json::from_str(&s.base).ok())
                .unwrap_or_else(|| json!({}));
            let merged = target(self.config.direction, &base, &local.state, &cloud.state);
            // A whole shadow deleted on one side, and nothing left on the other that changed
            // since the agreed state (a change there would have been merged back in): the
            // deletion, not an emptied shadow, goes to the other side.
            if no_state(&merged)
                && !no_state(&base)
                && (local.version.is_none() || cloud.version.is_none())
            {
                return self.delete_round(key, &local, &cloud, inputs).await;
            }
            let mut cloud_version = cloud.version.unwrap_or(0);
            let mut local_version = local.version.unwrap_or(0);
            if let Some(patch) = diff_state(&cloud.state, &merged) {
                let wait = self.rate.reserve(self.started.elapsed());
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                match self.cloud_update(key, patch, cloud.version, inputs).await? {
                    Written::Accepted(v) => {
                        self.metrics.synced("to_cloud");
                        cloud_version = v;
                    }
                    Written::Conflict => continue,
                }
            }
            if let Some(patch) = diff_state(&local.state, &merged) {
                match self.local_update(key, patch, local.version).await? {
                    Written::Accepted(v) => {
                        self.metrics.synced("to_edge");
                        local_version = v;
                    }
                    Written::Conflict => continue,
                }
            }
            let state = SyncState {
                key: key.clone(),
                base: merged.to_string(),
                local_version,
                cloud_version,
            };
            self.store
                .write_sync_state(state.clone())
                .await
                .map_err(|e| RoundError::Store(e.to_string()))?;
            debug!(thing = key.thing, shadow = ?key.name, local_version, cloud_version, "shadow in sync");
            self.states.insert(key.clone(), state);
            return Ok(());
        }
        Err(RoundError::Conflicts(MAX_ATTEMPTS))
    }

    async fn local_get(&mut self, key: &ShadowKey) -> Result<Side, RoundError> {
        let (accepted, doc) = self.local_request(key, Operation::Get, json!({})).await?;
        side(accepted, &doc)
    }

    async fn local_update(
        &mut self,
        key: &ShadowKey,
        patch: Value,
        version: Option<u64>,
    ) -> Result<Written, RoundError> {
        let body = update_body(patch, version);
        let (accepted, doc) = self.local_request(key, Operation::Update, body).await?;
        written(accepted, &doc)
    }

    async fn local_request(
        &mut self,
        key: &ShadowKey,
        op: Operation,
        body: Value,
    ) -> Result<(bool, Value), RoundError> {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let answer = self
            .local
            .request(&key.thing, key.name.as_deref(), op, body, 0, deadline)
            .await
            .map_err(|e| match e {
                LocalError::Timeout => RoundError::Timeout(ANSWER_TIMEOUT),
                LocalError::Closed => RoundError::Bus,
            })?;
        let doc = serde_json::from_slice(&answer.doc)
            .map_err(|e| RoundError::Rejected(format!("unreadable answer: {e}")))?;
        Ok((answer.accepted, doc))
    }

    async fn cloud_get(
        &mut self,
        key: &ShadowKey,
        inputs: &mut mpsc::UnboundedReceiver<SyncInput>,
    ) -> Result<Side, RoundError> {
        let (accepted, doc) = self
            .cloud_request(key, Operation::Get, json!({}), inputs)
            .await?;
        side(accepted, &doc)
    }

    async fn cloud_update(
        &mut self,
        key: &ShadowKey,
        patch: Value,
        version: Option<u64>,
        inputs: &mut mpsc::UnboundedReceiver<SyncInput>,
    ) -> Result<Written, RoundError> {
        let body = update_body(patch, version);
        let (accepted, doc) = self
            .cloud_request(key, Operation::Update, body, inputs)
            .await?;
        written(accepted, &doc)
    }

    /// Publishes a request to the cloud's shadow service and waits for its answer (matched by a
    /// client token of sync's own).
    async fn cloud_request(
        &mut self,
        key: &ShadowKey,
        op: Operation,
        mut body: Value,
        inputs: &mut mpsc::UnboundedReceiver<SyncInput>,
    ) -> Result<(bool, Value), RoundError> {
        let topic = request_topic(&key.thing, key.name.as_deref(), op);
        self.tokens += 1;
        let token = format!("grove-sync-{}", self.tokens);
        body["clientToken"] = token.clone().into();
        let session = self.session.clone().ok_or(RoundError::Offline)?;
        if !session.publish_qos0(&topic, Bytes::from(body.to_string())) {
            return Err(RoundError::Offline);
        }
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            let input = match tokio::time::timeout_at(deadline, inputs.recv()).await {
                Err(_) => return Err(RoundError::Timeout(ANSWER_TIMEOUT)),
                Ok(None) => return Err(RoundError::Bus),
                Ok(Some(i)) => i,
            };
            match input {
                SyncInput::Cloud { topic: t, payload } => {
                    if let Some(a) = answer_to(&topic, &token, &t, &payload) {
                        return Ok(a);
                    }
                    self.pending_cloud.push_back((t, payload));
                }
                SyncInput::Down => {
                    self.session = None;
                    return Err(RoundError::Offline);
                }
                SyncInput::Up { session, .. } => self.session = Some(session),
            }
        }
    }
}

/// Whether a message answers the request on `request_topic` with `token`: (accepted, document).
fn answer_to(
    request_topic: &str,
    token: &str,
    topic: &str,
    payload: &[u8],
) -> Option<(bool, Value)> {
    let suffix = topic.strip_prefix(request_topic)?;
    let accepted = match suffix {
        "/accepted" => true,
        "/rejected" => false,
        _ => return None,
    };
    let doc: Value = serde_json::from_slice(payload).ok()?;
    (doc["clientToken"] == token).then_some((accepted, doc))
}

/// A `get` answer as a [`Side`]: a 404 is an empty shadow.
fn side(accepted: bool, doc: &Value) -> Result<Side, RoundError> {
    if accepted {
        let mut state = serde_json::Map::new();
        for section in ["desired", "reported"] {
            if let Some(v) = doc["state"].get(section).filter(|v| !v.is_null()) {
                state.insert(section.to_owned(), v.clone());
            }
        }
        return Ok(Side {
            state: Value::Object(state),
            version: doc["version"].as_u64(),
        });
    }
    match doc["code"].as_u64() {
        Some(404) => Ok(Side {
            state: json!({}),
            version: None,
        }),
        _ => Err(RoundError::Rejected(doc.to_string())),
    }
}

/// Whether a state holds nothing in `desired` and `reported`.
fn no_state(state: &Value) -> bool {
    ["desired", "reported"]
        .iter()
        .all(|section| match state.get(section) {
            None | Some(Value::Null) => true,
            Some(Value::Object(o)) => o.is_empty(),
            Some(_) => false,
        })
}

/// A delete's answer: done, or the shadow was already gone (404).
fn gone(accepted: bool, doc: &Value) -> Result<(), RoundError> {
    if accepted || doc["code"].as_u64() == Some(404) {
        Ok(())
    } else {
        Err(RoundError::Rejected(doc.to_string()))
    }
}

fn written(accepted: bool, doc: &Value) -> Result<Written, RoundError> {
    if accepted {
        return doc["version"]
            .as_u64()
            .map(Written::Accepted)
            .ok_or_else(|| RoundError::Rejected(format!("no version in {doc}")));
    }
    match doc["code"].as_u64() {
        Some(409) => Ok(Written::Conflict),
        _ => Err(RoundError::Rejected(doc.to_string())),
    }
}

fn update_body(patch: Value, version: Option<u64>) -> Value {
    let mut body = json!({"state": patch});
    if let Some(v) = version {
        body["version"] = v.into();
    }
    body
}

/// Whether a cloud topic is a shadow's (`$aws/things/{thing}/shadow/...`): sync takes those;
/// other `$aws/things/` topics (jobs, ...) are not its.
pub fn is_shadow_topic(topic: &str) -> bool {
    parse_topic(topic).is_some()
}

/// Splits `$aws/things/{thing}/shadow/[name/{name}/]{rest}` into the shadow and `rest`.
fn parse_topic(topic: &str) -> Option<(ShadowKey, &str)> {
    let rest = topic.strip_prefix("$aws/things/")?;
    let (thing, rest) = rest.split_once("/shadow/")?;
    let (name, rest) = match rest.strip_prefix("name/") {
        Some(named) => {
            let (n, r) = named.split_once('/')?;
            (Some(n.to_owned()), r)
        }
        None => (None, rest),
    };
    Some((
        ShadowKey {
            thing: thing.to_owned(),
            name,
        },
        rest,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::Direction;

    #[test]
    fn cloud_filters_use_one_wildcard_for_every_thing() {
        let config = |things: &[&str]| SyncConfig {
            things: things.iter().map(|t| (*t).to_owned()).collect(),
            direction: Direction::Both,
            max_updates_per_sec: 1,
        };
        assert_eq!(cloud_filters(&config(&["a", "b"])).len(), 12);
        let all = cloud_filters(&config(&["a", "*"]));
        assert_eq!(all.len(), 6);
        assert_eq!(all[0], "$aws/things/+/shadow/get/+");
        assert!(config(&["*"]).covers("anything") && !config(&["a"]).covers("b"));
    }

    #[test]
    fn shadow_topics_are_parsed() {
        let cases = [
            (
                "$aws/things/t1/shadow/update/documents",
                Some(("t1", None, "update/documents")),
            ),
            (
                "$aws/things/t1/shadow/name/n/get/accepted",
                Some(("t1", Some("n"), "get/accepted")),
            ),
            ("$aws/things/t1/other", None),
            ("$aws/things/t1/jobs/notify", None),
            ("sensors/t1", None),
        ];
        for (topic, want) in cases {
            assert_eq!(is_shadow_topic(topic), want.is_some(), "{topic}");
            let got = parse_topic(topic);
            let got = got
                .as_ref()
                .map(|(k, r)| (k.thing.as_str(), k.name.as_deref(), *r));
            assert_eq!(got, want, "{topic}");
        }
    }

    #[test]
    fn answers_match_by_topic_and_token() {
        let req = "$aws/things/t/shadow/get";
        let ok = br#"{"clientToken":"k","version":3,"state":{"reported":{"a":1},"delta":{"x":1}}}"#;
        assert_eq!(
            answer_to(req, "k", "$aws/things/t/shadow/get/accepted", ok).map(|a| a.0),
            Some(true)
        );
        assert_eq!(
            answer_to(req, "other", "$aws/things/t/shadow/get/accepted", ok),
            None
        );
        assert_eq!(
            answer_to(req, "k", "$aws/things/t/shadow/update/accepted", ok),
            None
        );
        let (accepted, doc) = answer_to(req, "k", "$aws/things/t/shadow/get/accepted", ok).unwrap();
        let s = side(accepted, &doc).unwrap();
        assert_eq!(
            (s.state, s.version),
            (json!({"reported": {"a": 1}}), Some(3))
        );
        let missing = json!({"code": 404, "message": "No shadow exists with name: 't'"});
        assert_eq!(side(false, &missing).unwrap().version, None);
        assert!(matches!(
            written(false, &json!({"code": 409})),
            Ok(Written::Conflict)
        ));
        assert!(written(false, &json!({"code": 400})).is_err());
    }
}
