//! The functions component: registry, triggers, queues, sync invocation and host effects.
//!
//! - Registry: every deployed version (manifest + module file in `{data_dir}/functions/`, row in
//!   the store) is loaded at startup from the precompiled cache, so a restart does not recompile.
//!   Deploys are serialised; each makes version `latest + 1`, immutable.
//! - Triggers: the routes of the component's durable tap ([`crate::tap`]) are the trigger filters
//!   of each function's `$LATEST` manifest (invoking its `trigger_qualifier`) and
//!   `$grove/functions/+/event` (rules' `function` action, direct async events). A message a route
//!   takes becomes an event of each function whose trigger it matches, and the events are
//!   committed to the store (`function_events`) **before** the router sees the message, so before
//!   the device's PUBACK: an event survives a crash or a power cut and runs after the restart. A
//!   redeploy swaps the routes at once, and the queue belongs to the function, not the version, so
//!   a redeploy under load loses no event.
//! - Async events: a bounded queue per function, at most `max_concurrency` running,
//!   at-least-once: a failed attempt is retried twice, after 100 ms and 500 ms, then the event and
//!   the last error go to `$grove/functions/{name}/dlq`. Handlers must therefore be idempotent. A
//!   full queue sends the event to the DLQ at once, and so does an event whose function is not
//!   deployed (removed while the event waited): an accepted event is never dropped silently. An
//!   event leaves the store when it is done (success or dead letter); one running when the
//!   gateway stops runs again after the restart.
//! - Sync invocation: a publish to `$grove/functions/{name}/invoke` (or `{name}:{qualifier}`),
//!   answered on the request's MQTT 5 response topic with its correlation data, or, for MQTT
//!   3.1.1, on the `replyTo` topic of a JSON envelope `{"replyTo": ..., "correlationId": ...,
//!   "payload": ...}`. Answers are JSON envelopes (see [`answer`]); errors are answered too.
//! - Effects are transactional per invocation: publishes and kv writes are applied only when the
//!   handler returns 0 (kv writes in one store commit, before the answer), so a failed attempt
//!   that is retried leaves nothing behind. Shadow calls go through the running shadow service
//!   as a trusted bus client (request with a client token, wait for accepted/rejected).
//!
//! Invocations run on tokio's blocking pool, at most `[functions] workers` at once.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, info, warn};

use super::manifest::Manifest;
use super::reply::{self, ReplyError};
use super::routing::{Alias, Qualifier, Routes, RoutingError};
use super::runtime::{
    write_atomically, DeployError, Failure, Host, HostError, Level, Outcome, Prepared, Runtime,
    RuntimeConfig,
};
use crate::broker::BusMaker;
use crate::bus::{Closed, Message, Outgoing};
use crate::config::FunctionsConfig;
use crate::metrics::FunctionMetrics;
use crate::rules::MAX_HOPS;
use crate::shadow::local::{Answer, LocalShadows};
use crate::shadow::names::Operation;
use crate::store::{Store, StoreError, StoredAlias, StoredEvent, StoredFunctionVersion};
use crate::tap::{Offer, Route, Tap};

/// Offers from publishers waiting for their events to be recorded; each publisher waits for its
/// own, so this only bounds how many are queued at once.
const TAP_QUEUE: usize = 256;

/// The sync invocation filter.
pub const INVOKE_FILTER: &str = "$grove/functions/+/invoke";

/// The async invocation filter (the rules' `function` action publishes there; devices may too).
pub const EVENT_FILTER: &str = "$grove/functions/+/event";

/// The topic of an async event for `name` (optionally `name:qualifier`).
pub fn event_topic(target: &str) -> String {
    format!("$grove/functions/{target}/event")
}

/// Log lines kept per function for `grove fn logs`.
const LOG_LINES: usize = 200;

/// Waits before the second and third attempt of an async event.
const BACKOFF: [Duration; 2] = [Duration::from_millis(100), Duration::from_millis(500)];

/// The dead-letter topic of a function.
pub fn dlq_topic(name: &str) -> String {
    format!("$grove/functions/{name}/dlq")
}

/// The dead-letter error of an event whose function is not deployed (removed after the event was
/// taken, or never deployed).
fn not_found(name: &str) -> Value {
    json!({"kind": "not_found", "message": FunctionError::NotFound(name.to_owned()).to_string()})
}

/// Why an admin request or invocation failed.
#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    /// No such function.
    #[error("no function named {0:?}")]
    NotFound(String),
    /// The manifest is wrong.
    #[error(transparent)]
    Manifest(#[from] super::manifest::ManifestError),
    /// The module is wrong.
    #[error(transparent)]
    Deploy(#[from] DeployError),
    /// The qualifier or alias is wrong.
    #[error(transparent)]
    Routing(#[from] RoutingError),
    /// A bad request (names, qualifiers).
    #[error("{0}")]
    BadRequest(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file of the data directory could not be written or read.
    #[error("{0}")]
    Io(String),
    /// The component is shutting down.
    #[error("the functions component is shutting down")]
    Closed,
}

/// An async event waiting for its function.
#[derive(Debug, Clone)]
struct Event {
    /// Its row in the store's `function_events`.
    id: u64,
    topic: String,
    payload: Bytes,
    hops: u32,
    qualifier: Qualifier,
}

/// One function: its versions, aliases, queue and log.
struct Function {
    routes: Routes,
    versions: BTreeMap<u64, Arc<Prepared>>,
    created_ms: BTreeMap<u64, i64>,
    queue: mpsc::Sender<Event>,
    logs: Logs,
    /// `max_concurrency` of the `$LATEST` manifest: instances of this function running at once,
    /// sync and async invocations together (further ones wait). Replaced when a deploy changes it.
    running: Arc<Semaphore>,
    /// The permits `running` was made with.
    limit: usize,
}

impl Function {
    fn latest_manifest(&self) -> Option<&Arc<Manifest>> {
        let v = self.routes.latest()?;
        self.versions.get(&v).map(|p| p.manifest())
    }
}

/// A bounded ring of log lines.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<VecDeque<String>>>);

impl Logs {
    fn push(&self, version: u64, level: &str, line: &str) {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        if let Ok(mut ring) = self.0.lock() {
            if ring.len() == LOG_LINES {
                ring.pop_front();
            }
            ring.push_back(format!("{ts} v{version} {level:<5} {line}"));
        }
    }

    fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// A function as listed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FunctionInfo {
    /// Its name.
    pub name: String,
    /// Its versions.
    pub versions: Vec<u64>,
    /// `$LATEST`.
    pub latest: u64,
    /// Aliases: name -> (version, optional (other version, percent)).
    pub aliases: BTreeMap<String, (u64, Option<(u64, u8)>)>,
    /// `$LATEST`'s triggers.
    pub triggers: Vec<String>,
}

/// A deployed version.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Deployed {
    /// The function.
    pub name: String,
    /// The new version.
    pub version: u64,
    /// Whether the module came from the precompiled cache.
    pub from_cache: bool,
}

/// A finished invocation and the version that ran.
#[derive(Debug, Clone)]
pub struct Invoked {
    /// The function.
    pub name: String,
    /// The version that ran.
    pub version: u64,
    /// What happened.
    pub outcome: Outcome,
}

/// The handle the ops endpoint and the rules engine use; cheap to clone.
#[derive(Clone)]
pub struct Functions {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Runtime,
    store: Store,
    dir: PathBuf,
    max_memory_mb: u32,
    queue_bound: usize,
    metrics: FunctionMetrics,
    registry: Mutex<BTreeMap<String, Function>>,
    /// Deploys, alias changes and removals one at a time (versions are numbered in order).
    admin: tokio::sync::Mutex<()>,
    workers: Arc<Semaphore>,
    publish: mpsc::Sender<Batch>,
    shadow: LocalShadows,
    /// The durable tap whose routes are the triggers.
    tap: Arc<Tap>,
    /// Ids of finished events, for [`forgetter`] to delete.
    finished: mpsc::UnboundedSender<u64>,
    /// The next event's id (one more than the largest ever stored).
    next_event: std::sync::atomic::AtomicU64,
    handle: tokio::runtime::Handle,
    rng: Mutex<fastrand::Rng>,
    shutdown: watch::Receiver<bool>,
}

impl Functions {
    /// Starts the component: the engine, the bus links (output, shadow answers, sync invoke),
    /// the deployed functions from the store and their triggers.
    pub async fn start(
        config: &FunctionsConfig,
        data_dir: PathBuf,
        store: Store,
        buses: BusMaker,
        metrics: FunctionMetrics,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Functions, FunctionError> {
        let dir = data_dir.join("functions");
        let runtime = Runtime::new(&RuntimeConfig {
            max_memory_mb: config.max_memory_mb,
            pool_size: config.pool_size,
            cache_dir: dir.join("cache"),
        })
        .map_err(FunctionError::Io)?;
        let bus_err = |e: crate::broker::BrokerError| FunctionError::Io(e.to_string());
        let out = buses.bus("functions-out").await.map_err(bus_err)?;
        let (publish, publish_rx) = mpsc::channel(1024);
        tokio::spawn(publisher(out, publish_rx, shutdown.clone()));
        let shadow_bus = buses.bus("functions-shadow").await.map_err(bus_err)?;
        let shadow = LocalShadows::start(shadow_bus, shutdown.clone())
            .await
            .map_err(|_| FunctionError::Closed)?;
        let (offers_tx, offers) = mpsc::channel(TAP_QUEUE);
        let tap = Arc::new(Tap::new(Vec::new(), offers_tx));
        let (finished, finished_rx) = mpsc::unbounded_channel();
        tokio::spawn(forgetter(store.clone(), finished_rx));
        let functions = Functions {
            inner: Arc::new(Inner {
                runtime,
                store,
                dir,
                max_memory_mb: config.max_memory_mb,
                queue_bound: config.queue_bound,
                metrics,
                registry: Mutex::new(BTreeMap::new()),
                admin: tokio::sync::Mutex::new(()),
                workers: Arc::new(Semaphore::new(config.workers)),
                publish,
                shadow,
                tap: tap.clone(),
                finished,
                next_event: std::sync::atomic::AtomicU64::new(1),
                handle: tokio::runtime::Handle::current(),
                rng: Mutex::new(fastrand::Rng::new()),
                shutdown: shutdown.clone(),
            }),
        };
        functions.load().await?;
        let mut invoke_bus = buses.bus("functions-invoke").await.map_err(bus_err)?;
        invoke_bus
            .subscribe_confirmed(&[INVOKE_FILTER.to_owned()])
            .await
            .map_err(|_| FunctionError::Closed)?;
        tokio::spawn(functions.clone().serve_invoke(invoke_bus));
        // Events left from the last run (queued or running when it stopped) run first.
        let pending = functions.inner.store.load_events().await?;
        if let Some(last) = pending.last() {
            functions
                .inner
                .next_event
                .store(last.id + 1, std::sync::atomic::Ordering::Relaxed);
            info!(events = pending.len(), "function events restored");
        }
        for stored in pending {
            let Ok(qualifier) = Qualifier::parse(&stored.qualifier) else {
                functions.forget(stored.id);
                continue;
            };
            let event = Event {
                id: stored.id,
                topic: stored.topic,
                payload: stored.payload,
                hops: stored.hops,
                qualifier,
            };
            functions.enqueue(&stored.name, event);
        }
        functions.update_routes();
        buses.add_tap(tap);
        tokio::spawn(functions.clone().take_offers(offers));
        Ok(functions)
    }

    /// Loads every stored version (from the compile cache) and alias.
    async fn load(&self) -> Result<(), FunctionError> {
        let (versions, aliases) = self.inner.store.load_functions().await?;
        for v in versions {
            let wasm = match std::fs::read(self.inner.dir.join(&v.module)) {
                Ok(w) => w,
                Err(e) => {
                    warn!(function = v.name, version = v.version, error = %e, "cannot read a deployed module; that version is unavailable");
                    continue;
                }
            };
            let manifest = match Manifest::parse(&v.manifest, self.inner.max_memory_mb) {
                Ok(m) => Arc::new(m),
                Err(e) => {
                    warn!(function = v.name, version = v.version, error = %e, "a deployed manifest is no longer valid (was [functions] max_memory_mb lowered?); that version is unavailable");
                    continue;
                }
            };
            match self.prepare(wasm, manifest).await {
                Ok(p) => self.insert_version(&v.name, v.version, v.created_ms, Arc::new(p)),
                Err(e) => {
                    warn!(function = v.name, version = v.version, error = %e, "cannot load a deployed version")
                }
            }
        }
        let mut registry = self.lock();
        for a in aliases {
            if let Some(f) = registry.get_mut(&a.name) {
                f.routes.aliases.insert(
                    a.alias,
                    Alias {
                        version: a.version,
                        weight: a.weight,
                    },
                );
            }
        }
        info!(functions = registry.len(), "functions loaded");
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Function>> {
        // A panic while holding the lock cannot leave the map half-updated (each update is a
        // single insert or remove), so a poisoned lock is still usable.
        self.inner
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Compiles (or maps from the cache) on the blocking pool: compiling is CPU-heavy.
    async fn prepare(
        &self,
        wasm: Vec<u8>,
        manifest: Arc<Manifest>,
    ) -> Result<Prepared, DeployError> {
        let inner = self.inner.clone();
        let prepared = tokio::task::spawn_blocking(move || inner.runtime.prepare(&wasm, manifest))
            .await
            .map_err(|e| DeployError::Abi(format!("the compiler task failed: {e}")))??;
        let source = if prepared.from_cache {
            "cache"
        } else {
            "compiled"
        };
        self.inner
            .metrics
            .modules_loaded
            .get_or_create(&crate::metrics::ModuleSourceLabels { source })
            .inc();
        Ok(prepared)
    }

    fn insert_version(&self, name: &str, version: u64, created_ms: i64, prepared: Arc<Prepared>) {
        let mut registry = self.lock();
        if !registry.contains_key(name) {
            let (queue, rx) = mpsc::channel(self.inner.queue_bound);
            tokio::spawn(self.clone().dispatch(name.to_owned(), rx));
            registry.insert(
                name.to_owned(),
                Function {
                    routes: Routes::default(),
                    versions: BTreeMap::new(),
                    created_ms: BTreeMap::new(),
                    queue,
                    logs: Logs::default(),
                    running: Arc::new(Semaphore::new(1)),
                    limit: 1,
                },
            );
        }
        if let Some(f) = registry.get_mut(name) {
            // Idle instances hold pool slots: only the newest version keeps them.
            f.versions.values().for_each(|p| p.release_idle());
            f.routes.versions.push(version);
            f.versions.insert(version, prepared);
            f.created_ms.insert(version, created_ms);
            let limit = f
                .latest_manifest()
                .map_or(1, |m| m.max_concurrency as usize);
            if limit != f.limit {
                f.running = Arc::new(Semaphore::new(limit));
                f.limit = limit;
            }
        }
    }

    /// Deploys a new version; with `alias`, points that alias at it.
    pub async fn deploy(
        &self,
        manifest_text: &str,
        wasm: Vec<u8>,
        alias: Option<String>,
    ) -> Result<Deployed, FunctionError> {
        let manifest = Arc::new(Manifest::parse(manifest_text, self.inner.max_memory_mb)?);
        if let Some(a) = &alias {
            if !matches!(Qualifier::parse(a), Ok(Qualifier::Alias(_))) {
                return Err(FunctionError::BadRequest(format!(
                    "{a:?} is not an alias name (A-Z a-z 0-9 _ -, not only digits)"
                )));
            }
        }
        let _admin = self.inner.admin.lock().await;
        let name = manifest.name.clone();
        let version = self
            .lock()
            .get(&name)
            .map_or(1, |f| f.routes.next_version());
        let prepared = self.prepare(wasm.clone(), manifest).await?;
        let from_cache = prepared.from_cache;
        let module = format!("{name}/{version}.wasm");
        write_atomically(&self.inner.dir.join(&module), &wasm)
            .map_err(|e| FunctionError::Io(format!("cannot write the module: {e}")))?;
        let created_ms = now_ms();
        self.inner
            .store
            .save_function_version(StoredFunctionVersion {
                name: name.clone(),
                version,
                manifest: manifest_text.to_owned(),
                module,
                created_ms,
            })
            .await?;
        self.insert_version(&name, version, created_ms, Arc::new(prepared));
        if let Some(alias) = alias {
            self.set_alias_locked(&name, &alias, version, None).await?;
        }
        info!(function = name, version, "function deployed");
        self.update_routes();
        Ok(Deployed {
            name,
            version,
            from_cache,
        })
    }

    /// Creates or moves an alias.
    pub async fn set_alias(
        &self,
        name: &str,
        alias: &str,
        version: u64,
        weight: Option<(u64, u8)>,
    ) -> Result<(), FunctionError> {
        let _admin = self.inner.admin.lock().await;
        self.set_alias_locked(name, alias, version, weight).await?;
        // Triggers may name the alias: nothing to resubscribe, the queue resolves it per event.
        Ok(())
    }

    async fn set_alias_locked(
        &self,
        name: &str,
        alias: &str,
        version: u64,
        weight: Option<(u64, u8)>,
    ) -> Result<(), FunctionError> {
        if !matches!(Qualifier::parse(alias), Ok(Qualifier::Alias(_))) {
            return Err(FunctionError::BadRequest(format!(
                "{alias:?} is not an alias name (A-Z a-z 0-9 _ -, not only digits)"
            )));
        }
        let a = Alias::new(version, weight)?;
        self.lock()
            .get(name)
            .ok_or_else(|| FunctionError::NotFound(name.to_owned()))?
            .routes
            .check_alias(&a)?;
        self.inner
            .store
            .set_function_alias(StoredAlias {
                name: name.to_owned(),
                alias: alias.to_owned(),
                version,
                weight,
            })
            .await?;
        if let Some(f) = self.lock().get_mut(name) {
            f.routes.aliases.insert(alias.to_owned(), a);
        }
        Ok(())
    }

    /// Removes a function: versions, aliases, key-value state, module files.
    pub async fn remove(&self, name: &str) -> Result<(), FunctionError> {
        let _admin = self.inner.admin.lock().await;
        if !self.lock().contains_key(name) {
            return Err(FunctionError::NotFound(name.to_owned()));
        }
        self.inner.store.remove_function(name.to_owned()).await?;
        // Dropping the entry drops the queue's sender: its dispatcher finishes what is queued.
        self.lock().remove(name);
        let _ = std::fs::remove_dir_all(self.inner.dir.join(name));
        info!(function = name, "function removed");
        self.update_routes();
        Ok(())
    }

    /// Every function.
    pub fn list(&self) -> Vec<FunctionInfo> {
        self.lock()
            .iter()
            .map(|(name, f)| FunctionInfo {
                name: name.clone(),
                versions: f.routes.versions.clone(),
                latest: f.routes.latest().unwrap_or(0),
                aliases: f
                    .routes
                    .aliases
                    .iter()
                    .map(|(k, a)| (k.clone(), (a.version, a.weight)))
                    .collect(),
                triggers: f
                    .latest_manifest()
                    .map(|m| m.triggers.clone())
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// A function's recent log lines.
    pub fn logs(&self, name: &str) -> Result<Vec<String>, FunctionError> {
        self.lock()
            .get(name)
            .map(|f| f.logs.lines())
            .ok_or_else(|| FunctionError::NotFound(name.to_owned()))
    }

    /// Queues a recorded async event. A full queue sends it to the dead-letter topic.
    fn enqueue(&self, name: &str, event: Event) {
        let queue = self.lock().get(name).map(|f| f.queue.clone());
        let Some(queue) = queue else {
            self.dead_letter(name, &event, None, not_found(name), 0);
            self.forget(event.id);
            return;
        };
        if let Err(e) = queue.try_send(event) {
            let event = match e {
                mpsc::error::TrySendError::Full(ev) | mpsc::error::TrySendError::Closed(ev) => ev,
            };
            let failure = json!({"kind": "queue_full", "message": "the function's queue is full"});
            self.dead_letter(name, &event, None, failure, 0);
            self.forget(event.id);
        }
    }

    /// Marks an event done: [`forgetter`] deletes it from the store with the others finished
    /// meanwhile. Nothing waits for that commit (a crash before it only means the event runs
    /// again: at least once), so a function's next event never waits for the disk.
    fn forget(&self, id: u64) {
        let _ = self.inner.finished.send(id);
    }

    /// The durable tap's owner: turns the messages its routes took into events of the functions
    /// they trigger, commits them, lets the publishers go on, then queues them.
    async fn take_offers(self, mut offers: mpsc::Receiver<Offer>) {
        let mut shutdown = self.inner.shutdown.clone();
        let mut waiting = Vec::new();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                offer = offers.recv() => match offer {
                    Some(o) => waiting.push(o),
                    None => return,
                },
            }
            while let Ok(o) = offers.try_recv() {
                waiting.push(o);
            }
            let mut events: Vec<(String, Event)> = Vec::new();
            for offer in &mut waiting {
                for t in offer.messages.drain(..) {
                    for (name, qualifier) in self.targets(&t.topic) {
                        let id = self
                            .inner
                            .next_event
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let event = Event {
                            id,
                            topic: t.topic.clone(),
                            payload: t.payload.clone(),
                            hops: t.hops,
                            qualifier,
                        };
                        events.push((name, event));
                    }
                }
            }
            let stored = events
                .iter()
                .map(|(name, e)| StoredEvent {
                    id: e.id,
                    name: name.clone(),
                    qualifier: e.qualifier.text(),
                    topic: e.topic.clone(),
                    payload: e.payload.clone(),
                    hops: e.hops,
                })
                .collect();
            if let Err(e) = self.inner.store.events_write(stored, Vec::new()).await {
                // They still run now; only a crash before they finish would lose them.
                warn!(error = %e, events = events.len(), "cannot record function events");
            }
            for offer in waiting.drain(..) {
                let _ = offer.done.send(());
            }
            for (name, event) in events {
                self.enqueue(&name, event);
            }
        }
    }

    /// The functions (and qualifiers) a message on `topic` is an event of: the target of
    /// `$grove/functions/{name}[:{qualifier}]/event`, or every function whose `$LATEST` manifest
    /// has a trigger matching the topic.
    fn targets(&self, topic: &str) -> Vec<(String, Qualifier)> {
        if topic.starts_with("$grove/functions/") {
            return match parse_target(topic, "/event") {
                Ok(target) => vec![target],
                Err(e) => {
                    warn!(topic, "an async event was dropped: {e}");
                    Vec::new()
                }
            };
        }
        self.lock()
            .iter()
            .filter_map(|(name, f)| {
                let m = f.latest_manifest()?;
                m.triggers
                    .iter()
                    .any(|t| grove_rules::topic_matches(t, topic))
                    .then(|| {
                        (
                            name.clone(),
                            Qualifier::parse(&m.trigger_qualifier).unwrap_or(Qualifier::Latest),
                        )
                    })
            })
            .collect()
    }

    /// Makes the tap's routes the functions' triggers (plus the async event topic).
    fn update_routes(&self) {
        let filters: std::collections::BTreeSet<String> = self
            .lock()
            .values()
            .filter_map(|f| f.latest_manifest())
            .flat_map(|m| m.triggers.iter().cloned())
            .chain(std::iter::once(EVENT_FILTER.to_owned()))
            .collect();
        self.inner.tap.set_routes(
            filters
                .into_iter()
                .map(|filter| Route {
                    filter,
                    strip: String::new(),
                    prefix: String::new(),
                })
                .collect(),
        );
    }

    /// Whether an async event for `target` (`name` or `name:qualifier`) reaches a deployed
    /// version now: the check a rule's `function` action makes, so that invoking a function that
    /// does not exist fails into the rule's error action, as an AWS IoT rule's Lambda action does.
    pub fn check_target(&self, target: &str) -> Result<(), FunctionError> {
        let (name, qualifier) =
            parse_target(&event_topic(target), "/event").map_err(FunctionError::BadRequest)?;
        let registry = self.lock();
        let f = registry
            .get(&name)
            .ok_or_else(|| FunctionError::NotFound(name.clone()))?;
        // The draw picks between an alias's weighted versions; 0.0 checks its main one.
        let version = f.routes.resolve(&qualifier, 0.0)?;
        if f.versions.contains_key(&version) {
            Ok(())
        } else {
            Err(RoutingError::NoSuchVersion(version).into())
        }
    }

    /// Runs one invocation on the blocking pool.
    pub async fn invoke(
        &self,
        name: &str,
        qualifier: &Qualifier,
        topic: String,
        payload: Bytes,
        hops: u32,
    ) -> Result<Invoked, FunctionError> {
        let (version, prepared, logs, running) = {
            let registry = self.lock();
            let f = registry
                .get(name)
                .ok_or_else(|| FunctionError::NotFound(name.to_owned()))?;
            let draw = self.inner.rng.lock().map(|mut r| r.f64()).unwrap_or(0.0);
            let version = f.routes.resolve(qualifier, draw)?;
            let prepared = f
                .versions
                .get(&version)
                .cloned()
                .ok_or(RoutingError::NoSuchVersion(version))?;
            (version, prepared, f.logs.clone(), f.running.clone())
        };
        let slot = running
            .acquire_owned()
            .await
            .map_err(|_| FunctionError::Closed)?;
        let permit = self
            .inner
            .workers
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| FunctionError::Closed)?;
        let host = ServiceHost {
            inner: self.inner.clone(),
            name: name.to_owned(),
            version,
            hops,
            logs: logs.clone(),
            publishes: Vec::new(),
            kv: BTreeMap::new(),
        };
        let inner = self.inner.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let _permits = (slot, permit);
            inner
                .runtime
                .invoke(&prepared, &topic, &payload, Box::new(host))
        })
        .await
        .map_err(|_| FunctionError::Closed)?;
        let result = match &outcome.result {
            Ok(_) => "ok",
            Err(f) => f.kind.as_str(),
        };
        self.inner
            .metrics
            .invoked(name, result, outcome.duration.as_secs_f64());
        if let Err(f) = &outcome.result {
            logs.push(
                version,
                "error",
                &format!("{}: {}", f.kind.as_str(), f.message),
            );
            debug!(
                function = name,
                version,
                kind = f.kind.as_str(),
                "invocation failed: {}",
                f.message
            );
        }
        Ok(Invoked {
            name: name.to_owned(),
            version,
            outcome,
        })
    }

    /// Runs a function's async events, at most `max_concurrency` at once.
    async fn dispatch(self, name: String, mut rx: mpsc::Receiver<Event>) {
        let mut running = tokio::task::JoinSet::new();
        loop {
            let limit = self
                .lock()
                .get(&name)
                .and_then(|f| f.latest_manifest().map(|m| m.max_concurrency as usize))
                .unwrap_or(1);
            while running.len() >= limit {
                running.join_next().await;
            }
            let Some(event) = rx.recv().await else { break };
            running.spawn(self.clone().attempts(name.clone(), event));
        }
        while running.join_next().await.is_some() {}
    }

    /// At-least-once: three attempts with backoff, then the dead-letter topic.
    async fn attempts(self, name: String, event: Event) {
        let mut last = None;
        for attempt in 0..=BACKOFF.len() {
            if attempt > 0 {
                self.inner.metrics.count(&self.inner.metrics.retries, &name);
                tokio::time::sleep(BACKOFF[attempt - 1]).await;
            }
            match self
                .invoke(
                    &name,
                    &event.qualifier,
                    event.topic.clone(),
                    event.payload.clone(),
                    event.hops,
                )
                .await
            {
                Ok(Invoked {
                    outcome: Outcome { result: Ok(_), .. },
                    ..
                }) => {
                    self.forget(event.id);
                    return;
                }
                Ok(Invoked {
                    version,
                    outcome:
                        Outcome {
                            result: Err(failure),
                            ..
                        },
                    ..
                }) => last = Some((Some(version), failure_json(&failure))),
                // Shutting down: the event stays stored and runs after the restart.
                Err(FunctionError::Closed) => return,
                // Removed while the event waited: no retry can succeed.
                Err(FunctionError::NotFound(_)) => {
                    self.dead_letter(&name, &event, None, not_found(&name), attempt + 1);
                    self.forget(event.id);
                    return;
                }
                Err(e) => last = Some((None, json!({"kind": "routing", "message": e.to_string()}))),
            }
        }
        if let Some((version, failure)) = last {
            self.dead_letter(&name, &event, version, failure, BACKOFF.len() + 1);
        }
        self.forget(event.id);
    }

    /// Publishes a failed event and its error on the function's dead-letter topic (also for a
    /// function that does not exist, or no longer: an accepted event is never dropped silently).
    fn dead_letter(
        &self,
        name: &str,
        event: &Event,
        version: Option<u64>,
        error: Value,
        attempts: usize,
    ) {
        self.inner.metrics.count(&self.inner.metrics.dlq, name);
        warn!(function = name, topic = event.topic, %error, "event sent to the dead-letter topic");
        let doc = json!({
            "function": name,
            "version": version,
            "attempts": attempts,
            "error": error,
            "event": event_json(&event.topic, &event.payload),
        });
        let msg = Outgoing {
            topic: dlq_topic(name),
            payload: Bytes::from(doc.to_string()),
            qos: 1,
            retain: false,
            hops: event.hops + 1,
        };
        if self.inner.publish.try_send(vec![(msg, None)]).is_err() {
            warn!(
                function = name,
                "the output queue is full; a dead letter was lost"
            );
        }
    }

    /// Serves sync invocations published on `$grove/functions/{name}[:{qualifier}]/invoke`.
    async fn serve_invoke(self, mut bus: crate::bus::Bus) {
        let mut shutdown = self.inner.shutdown.clone();
        let mut batch = Vec::new();
        while bus.recv_until(&mut batch, &mut shutdown).await {
            for m in batch.drain(..) {
                let this = self.clone();
                tokio::spawn(async move { this.answer_request(m).await });
            }
        }
    }

    async fn answer_request(&self, m: Message) {
        let request = match SyncRequest::parse(&m) {
            Ok(r) => r,
            Err(e) => {
                // Debug only: what reaches here came through the bus (a device's request with a
                // bad reply topic was refused by the connection layer), so a log line per request
                // would let a rule fed by devices flood the log.
                debug!(
                    topic = m.topic,
                    "an invoke request refused (not invoked, not answered): {e}"
                );
                return;
            }
        };
        let body = match request.target {
            Err(e) => json!({"status": "error", "error": {"kind": "bad_request", "message": e}}),
            Ok((ref name, ref qualifier)) => {
                match self
                    .invoke(
                        name,
                        qualifier,
                        m.topic.clone(),
                        request.payload.clone(),
                        m.hops,
                    )
                    .await
                {
                    Ok(invoked) => answer(&invoked),
                    Err(e) => error_answer(&e),
                }
            }
        };
        let mut body = body;
        if let Some(id) = request.correlation_id {
            body["correlationId"] = id;
        }
        let msg = Outgoing {
            topic: request.reply_to,
            payload: Bytes::from(body.to_string()),
            qos: 1,
            retain: false,
            hops: m.hops + 1,
        };
        let _ = self
            .inner
            .publish
            .send(vec![(msg, m.correlation_data)])
            .await;
    }
}

/// Deletes finished events from the store: every id waiting goes in one commit, so under load
/// one commit serves many events.
async fn forgetter(store: Store, mut finished: mpsc::UnboundedReceiver<u64>) {
    while let Some(id) = finished.recv().await {
        let mut ids = vec![id];
        while let Ok(id) = finished.try_recv() {
            ids.push(id);
        }
        if let Err(e) = store.events_write(Vec::new(), ids).await {
            warn!(error = %e, "cannot delete finished function events; they may run again after a restart");
        }
    }
}

/// A parsed sync request: where to answer, and what to invoke with which payload.
struct SyncRequest {
    target: Result<(String, Qualifier), String>,
    reply_to: String,
    correlation_id: Option<Value>,
    payload: Bytes,
}

impl SyncRequest {
    /// Refuses a request without a valid reply topic (see [`super::reply`]): it is not invoked,
    /// and nothing is published.
    fn parse(m: &Message) -> Result<SyncRequest, ReplyError> {
        let target = parse_target(&m.topic, "/invoke");
        let reply_to = reply::reply_topic(m.response_topic.as_deref(), &m.payload)?;
        if m.response_topic.is_some() {
            return Ok(SyncRequest {
                target,
                reply_to,
                correlation_id: None,
                payload: m.payload.clone(),
            });
        }
        // `reply_topic` found a `replyTo` in it, so it is a JSON envelope.
        let envelope: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
        let payload = match &envelope["payload"] {
            Value::String(s) => Bytes::from(s.clone()),
            Value::Null => Bytes::new(),
            other => Bytes::from(other.to_string()),
        };
        Ok(SyncRequest {
            target,
            reply_to,
            correlation_id: envelope.get("correlationId").cloned(),
            payload,
        })
    }
}

/// The function and qualifier of `$grove/functions/{name}[:{qualifier}]{suffix}`.
fn parse_target(topic: &str, suffix: &str) -> Result<(String, Qualifier), String> {
    let target = topic
        .strip_prefix("$grove/functions/")
        .and_then(|t| t.strip_suffix(suffix))
        .ok_or_else(|| format!("{topic:?} is not a functions topic"))?;
    match target.split_once(':') {
        None => Ok((target.to_owned(), Qualifier::Latest)),
        Some((name, q)) => Qualifier::parse(q)
            .map(|q| (name.to_owned(), q))
            .map_err(|e| e.to_string()),
    }
}

/// The answer envelope of an invocation: `{"status": "ok", "function", "version", "result",
/// "durationUs"}` or `{"status": "error", ..., "error": {"kind", "message"}}`. `result` is the
/// handler's body, as JSON when it is JSON, else as a string.
pub fn answer(invoked: &Invoked) -> Value {
    let mut doc = json!({
        "function": invoked.name,
        "version": invoked.version,
        "durationUs": invoked.outcome.duration.as_micros() as u64,
    });
    match &invoked.outcome.result {
        Ok(body) => {
            doc["status"] = "ok".into();
            doc["result"] = serde_json::from_slice(body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()));
        }
        Err(f) => {
            doc["status"] = "error".into();
            doc["error"] = failure_json(f);
        }
    }
    doc
}

/// The answer envelope of an invocation that could not run.
pub fn error_answer(e: &FunctionError) -> Value {
    let kind = match e {
        FunctionError::NotFound(_) => "not_found",
        FunctionError::Routing(_) => "routing",
        _ => "unavailable",
    };
    json!({"status": "error", "error": {"kind": kind, "message": e.to_string()}})
}

fn failure_json(f: &Failure) -> Value {
    json!({"kind": f.kind.as_str(), "message": f.message})
}

/// An event as the DLQ carries it: the payload as a string when it is UTF-8, else base64.
fn event_json(topic: &str, payload: &[u8]) -> Value {
    use base64::Engine as _;
    match std::str::from_utf8(payload) {
        Ok(s) => json!({"topic": topic, "payload": s}),
        Err(_) => json!({
            "topic": topic,
            "payloadBase64": base64::engine::general_purpose::STANDARD.encode(payload),
        }),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Publishes what functions send, in batches, on the component's output link.
async fn publisher(
    mut bus: crate::bus::Bus,
    mut rx: mpsc::Receiver<Batch>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let mut batch = tokio::select! {
            _ = shutdown.changed() => return,
            b = rx.recv() => match b { Some(b) => b, None => return },
        };
        while let Ok(more) = rx.try_recv() {
            batch.extend(more);
        }
        match bus.publish_correlated(batch).await {
            Ok(()) => {}
            Err(Closed::Link) => return,
            Err(e @ Closed::Store(_)) => warn!(error = %e, "a retained function publish was lost"),
        }
    }
}

/// A batch for the output link: messages with optional MQTT 5 correlation data.
type Batch = Vec<(Outgoing, Option<Bytes>)>;

/// The host calls' effects for one invocation.
struct ServiceHost {
    inner: Arc<Inner>,
    name: String,
    version: u64,
    hops: u32,
    logs: Logs,
    /// Held until the handler succeeds.
    publishes: Batch,
    /// Key-value writes held until the handler succeeds; reads see them.
    kv: BTreeMap<String, Option<Vec<u8>>>,
}

impl ServiceHost {
    fn shadow(
        &mut self,
        thing: &str,
        name: Option<&str>,
        op: Operation,
        body: Value,
        deadline: Instant,
    ) -> Result<Answer, HostError> {
        if crate::shadow::names::validate_thing_name(thing).is_err()
            || name.is_some_and(|n| crate::shadow::names::validate_shadow_name(n).is_err())
        {
            return Err(HostError::Invalid);
        }
        if self.hops >= MAX_HOPS {
            self.inner.metrics.deny(&self.name, "shadow_hop_limit");
            return Err(HostError::Limit);
        }
        let answer = self.inner.handle.block_on(self.inner.shadow.request(
            thing,
            name,
            op,
            body,
            self.hops + 1,
            deadline.into(),
        ));
        answer.map_err(|_| HostError::Unavailable)
    }
}

impl Host for ServiceHost {
    fn publish(&mut self, topic: &str, payload: &[u8], qos: u8) -> Result<(), HostError> {
        if self.hops >= MAX_HOPS {
            self.inner.metrics.deny(&self.name, "publish_hop_limit");
            self.logs.push(
                self.version,
                "warn",
                &format!("publish to {topic} dropped: the message has been republished {} times (hop limit)", self.hops),
            );
            return Err(HostError::Limit);
        }
        self.publishes.push((
            Outgoing {
                topic: topic.to_owned(),
                payload: Bytes::copy_from_slice(payload),
                qos,
                retain: false,
                hops: self.hops + 1,
            },
            None,
        ));
        Ok(())
    }

    fn shadow_get(
        &mut self,
        thing: &str,
        name: Option<&str>,
        deadline: Instant,
    ) -> Result<Vec<u8>, HostError> {
        match self.shadow(thing, name, Operation::Get, json!({}), deadline)? {
            Answer {
                accepted: true,
                doc,
            } => Ok(doc.to_vec()),
            Answer { doc, .. } => {
                let code = serde_json::from_slice::<Value>(&doc)
                    .ok()
                    .and_then(|v| v["code"].as_u64());
                if code == Some(404) {
                    Err(HostError::NotFound)
                } else {
                    Err(HostError::Rejected(doc.to_vec()))
                }
            }
        }
    }

    fn shadow_update(
        &mut self,
        thing: &str,
        name: Option<&str>,
        doc: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, HostError> {
        let body: Value = serde_json::from_slice(doc).map_err(|_| HostError::Invalid)?;
        if !body.is_object() {
            return Err(HostError::Invalid);
        }
        match self.shadow(thing, name, Operation::Update, body, deadline)? {
            Answer {
                accepted: true,
                doc,
            } => Ok(doc.to_vec()),
            Answer { doc, .. } => Err(HostError::Rejected(doc.to_vec())),
        }
    }

    fn kv_get(&mut self, key: &str) -> Result<Option<Vec<u8>>, HostError> {
        if let Some(v) = self.kv.get(key) {
            return Ok(v.clone());
        }
        self.inner
            .handle
            .block_on(self.inner.store.kv_get(self.name.clone(), key.to_owned()))
            .map_err(|_| HostError::Unavailable)
    }

    fn kv_put(&mut self, key: &str, value: Option<&[u8]>) -> Result<(), HostError> {
        self.kv.insert(key.to_owned(), value.map(<[u8]>::to_vec));
        Ok(())
    }

    fn log(&mut self, level: Level, message: &str) {
        debug!(
            function = self.name,
            version = self.version,
            level = level.as_str(),
            "{message}"
        );
        self.logs.push(self.version, level.as_str(), message);
    }

    fn denied(&mut self, call: &'static str, detail: &str) {
        self.inner.metrics.deny(&self.name, call);
        warn!(
            function = self.name,
            call, detail, "host call denied: no grant"
        );
        self.logs.push(
            self.version,
            "warn",
            &format!("{call}({detail}) denied: no grant"),
        );
    }

    fn finish(self: Box<Self>, ok: bool) -> Result<(), String> {
        if !ok {
            return Ok(());
        }
        let this = *self;
        if !this.kv.is_empty() {
            let writes = this.kv.into_iter().collect();
            this.inner
                .handle
                .block_on(this.inner.store.kv_write(this.name.clone(), writes))
                .map_err(|e| format!("the key-value writes were not committed: {e}"))?;
        }
        if !this.publishes.is_empty() {
            this.inner
                .handle
                .block_on(this.inner.publish.send(this.publishes))
                .map_err(|_| "the gateway is shutting down".to_owned())?;
        }
        Ok(())
    }
}
