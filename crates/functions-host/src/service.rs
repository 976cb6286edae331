//! The functions component: registry, triggers, queues, sync invocation and host effects.
//!
//! - Registry: every deployed version (manifest + module file in `{data_dir}/functions/`, row in
//!   the store) is loaded at startup from the precompiled cache, so a restart does not recompile.
//!   The manifests are read before the broker listens (so the triggers are in place), the modules
//!   are loaded in the background, each bounded (compile size, a 1 s check); the startup waits
//!   for them at most [`STARTUP_WAIT`], so a slow or failing module never keeps the gateway from
//!   starting. An invocation waits until its version is loaded; a version that failed to load is
//!   listed with why (`grove fn list`), counted, logged, and its events are dead-lettered.
//!   Deploys are serialised; each makes version `latest + 1`, immutable.
//! - Triggers: the routes of the component's durable tap ([`grove_broker::tap`]) are the trigger filters
//!   of each function's `$LATEST` manifest (invoking its `trigger_qualifier`) and
//!   `$grove/functions/+/event` (rules' `function` action, direct async events). A message a route
//!   takes becomes an event of each function whose trigger it matches, and the events are
//!   committed to the store (`function_events`) **before** the router sees the message, so before
//!   the device's PUBACK: an event survives a crash or a power cut and runs after the restart. A
//!   redeploy swaps the routes at once, and the queue belongs to the function, not the version, so
//!   a redeploy under load loses no event.
//! - Async events: a bounded queue per function, at most `max_concurrency` running,
//!   at-least-once with retries and a dead-letter topic (`crate::delivery` decides). A full
//!   queue sends the event to the DLQ at once, and so does an event whose function is not
//!   deployed (removed while the event waited): an accepted event is never dropped silently. An
//!   event leaves the store when it is done (success or dead letter); one running when the
//!   gateway stops runs again after the restart.
//! - Sync invocation: a publish to `$grove/functions/{name}/invoke`, answered on its reply topic
//!   ([`crate::protocol`]: the request, the reply topic, the answer envelopes).
//! - Effects are transactional per invocation (`crate::effects`): publishes and kv writes are
//!   applied only when the handler returns 0 (kv writes in one store commit, before the answer),
//!   so a failed attempt that is retried leaves nothing behind. Shadow calls go through the
//!   running shadow service as a trusted bus client (request with a client token, wait for
//!   accepted/rejected).
//!
//! Invocations run on tokio's blocking pool, at most `[functions] workers` at once.
//!
//! What a function or a device can make the gateway log is bounded (`crate::logs`): the guest's
//! lines per function in lines, bytes and rate, and the gateway's own lines about a function (or
//! about names that are no function) in rate; every line refused is counted.
//!
//! This file holds the component's state, its start and invocation; its parts are
//! `service/registry.rs` (deploy, aliases, remove, list, startup loading), `service/events.rs`
//! (the async path: the tap's offers, queues, the attempts `crate::delivery` decides, dead
//! letters), `service/sync.rs` (sync invocation requests) and `service/host.rs` (performing the
//! host calls' effects that `crate::effects` holds, and the output publisher). Which functions a
//! message triggers is `crate::triggers`. The four `crate::` modules named are pure, with unit
//! tests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, info, warn};

use crate::config::FunctionsConfig;
use crate::logs::{Pushed, Ring, Window, GATEWAY_LINES, GATEWAY_PERIOD};
use crate::manifest::Manifest;
use crate::metrics::{FunctionLabels, FunctionMetrics};
use crate::queries::FunctionQueries;
use crate::routing::{Alias, Qualifier, Routes, RoutingError};
use crate::runtime::{
    write_atomically, DeployError, Host, HostError, Level, Outcome, Prepared, Runtime,
    RuntimeConfig,
};
use grove_broker::bus::{Closed, Message, Outgoing};
use grove_broker::tap::{Offer, Route, Tap};
use grove_broker::BusMaker;
use grove_shadow_api::local::{Answer, LocalShadows};
use grove_shadow_api::names::Operation;
use grove_store::{Store, StoreError, StoredAlias, StoredEvent, StoredFunctionVersion};

mod events;
mod host;
mod registry;
mod sync;

use crate::effects::Effects;
use crate::protocol::{answer, error_answer, event_topic, parse_target, INVOKE_FILTER};
use events::{forgetter, Finished};
use host::{publisher, Batch, ServiceHost};

/// Offers from publishers waiting for their events to be recorded; each publisher waits for its
/// own, so this only bounds how many are queued at once.
const TAP_QUEUE: usize = 256;

/// The metric label of what is about a name that is no deployed function (a device chooses such
/// names: one series each would grow the registry without bound).
const UNKNOWN_FUNCTION: &str = "(unknown)";

/// Longest device-chosen text (a topic) in one of the gateway's log lines.
const MAX_LOGGED: usize = 256;

/// How long the startup waits for the deployed modules to load before the gateway goes on (and
/// opens its port) without them.
const STARTUP_WAIT: Duration = Duration::from_secs(5);

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
    /// The version exists but could not be loaded at startup.
    #[error("version {version} of function {name:?} failed to load: {reason}")]
    LoadFailed {
        /// The function.
        name: String,
        /// The version.
        version: u64,
        /// Why.
        reason: String,
    },
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
    versions: BTreeMap<u64, Version>,
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
        self.versions.get(&v)?.manifest.as_ref()
    }
}

/// A deployed version: its manifest (read before the broker listens, so triggers work at once)
/// and its module, once loaded.
struct Version {
    /// `None` if the stored manifest is no longer valid (then the version failed to load).
    manifest: Option<Arc<Manifest>>,
    state: Load,
}

/// Where a version's module is.
enum Load {
    /// Being loaded at startup: invocations wait.
    Loading,
    Ready(Arc<Prepared>),
    /// Could not be loaded (why): invocations fail, events are dead-lettered.
    Failed(String),
}

/// A version ready to run, with what its invocation needs of its function.
struct Runnable {
    version: u64,
    prepared: Arc<Prepared>,
    logs: Logs,
    /// The function's `max_concurrency` permits.
    running: Arc<Semaphore>,
}

/// A function's log (`crate::logs`): the ring `grove fn logs` shows and the rate of the
/// gateway's own lines about the function, with the counters of the lines they refused.
#[derive(Clone)]
struct Logs {
    name: Arc<str>,
    state: Arc<Mutex<(Ring, Window)>>,
    dropped: prometheus_client::metrics::counter::Counter,
    suppressed: prometheus_client::metrics::counter::Counter,
}

impl Logs {
    fn new(name: &str, metrics: &FunctionMetrics) -> Logs {
        let labels = FunctionLabels {
            function: name.to_owned(),
        };
        Logs {
            name: name.into(),
            state: Arc::new(Mutex::new((
                Ring::default(),
                Window::new(GATEWAY_LINES, GATEWAY_PERIOD),
            ))),
            dropped: metrics.log_dropped.get_or_create(&labels).clone(),
            suppressed: metrics.log_suppressed.get_or_create(&labels).clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Ring, Window)> {
        // Each update is one call on the ring or the window: a panic cannot leave them torn.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a line for `grove fn logs`; a line kept also goes to the gateway's debug log.
    fn push(&self, version: u64, level: &str, line: impl AsRef<[u8]>) {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let head = format!("{ts} v{version} {level:<5}");
        let pushed = self.lock().0.push(Instant::now(), &head, line.as_ref());
        match pushed {
            Pushed::Kept(text) => debug!(function = %self.name, "{text}"),
            Pushed::Dropped => {
                self.dropped.inc();
            }
        }
    }

    /// Whether the gateway may write one more line about this function now: `Some(n)` with the
    /// number suppressed before it (to say so in the line), or `None` (counted).
    fn gateway(&self) -> Option<u64> {
        let admitted = self.lock().1.admit(Instant::now());
        if admitted.is_none() {
            self.suppressed.inc();
        }
        admitted
    }

    fn lines(&self) -> Vec<String> {
        self.lock().0.lines()
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
    /// Versions that cannot be invoked: `"loading"` (startup) or why they failed to load.
    pub unavailable: BTreeMap<u64, String>,
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
    /// Deploys, alias changes and removals one at a time (versions are numbered in order); the
    /// startup's module loading holds it too.
    admin: Arc<tokio::sync::Mutex<()>>,
    /// True once the startup's module loading is over.
    loaded: watch::Sender<bool>,
    /// The rate of the gateway's log lines about names that are no deployed function.
    stray_log: Mutex<Window>,
    workers: Arc<Semaphore>,
    publish: mpsc::Sender<Batch>,
    shadow: LocalShadows,
    /// The durable tap whose routes are the triggers.
    tap: Arc<Tap>,
    /// Finished events, deleted with the next commit of new events or by [`forgetter`].
    finished: Arc<Finished>,
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
        });
        let bus_err = |e: grove_broker::BrokerError| FunctionError::Io(e.to_string());
        let out = buses.bus("functions-out").await.map_err(bus_err)?;
        let (publish, publish_rx) = mpsc::channel(1024);
        tokio::spawn(publisher(out, publish_rx, shutdown.clone()));
        let shadow_bus = buses.bus("functions-shadow").await.map_err(bus_err)?;
        let shadow = LocalShadows::start(shadow_bus, shutdown.clone());
        let (offers_tx, offers) = mpsc::channel(TAP_QUEUE);
        let tap = Arc::new(Tap::new(Vec::new(), offers_tx));
        let finished = Arc::new(Finished::default());
        tokio::spawn(forgetter(store.clone(), finished.clone(), shutdown.clone()));
        let functions = Functions {
            inner: Arc::new(Inner {
                runtime,
                store,
                dir,
                max_memory_mb: config.max_memory_mb,
                queue_bound: config.queue_bound,
                metrics,
                registry: Mutex::new(BTreeMap::new()),
                admin: Arc::new(tokio::sync::Mutex::new(())),
                loaded: watch::Sender::new(false),
                stray_log: Mutex::new(Window::new(GATEWAY_LINES, GATEWAY_PERIOD)),
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
        let todo = functions.register().await?;
        // Taken now, so no deploy or removal comes between the registration and the loading.
        let admin = functions.inner.admin.clone().lock_owned().await;
        tokio::spawn(functions.clone().load(todo, admin));
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
        // Usually every module is loaded (from the cache) well within this, and the gateway
        // opens its port with all functions ready; a slow one (a recompile after an upgrade)
        // keeps loading while the gateway runs.
        if tokio::time::timeout(STARTUP_WAIT, functions.loaded())
            .await
            .is_err()
        {
            info!("function modules are still loading; their invocations wait for them");
        }
        Ok(functions)
    }

    /// Waits until the startup's module loading is over.
    async fn loaded(&self) {
        let mut loaded = self.inner.loaded.subscribe();
        let _ = loaded.wait_for(|done| *done).await;
    }

    /// Whether the gateway may write one more line about `name` now (its function's rate, or the
    /// shared rate of lines about names that are no function): `Some(n)` with the number
    /// suppressed before it, or `None` (counted).
    fn may_log(&self, name: &str) -> Option<u64> {
        let logs = self.lock().get(name).map(|f| f.logs.clone());
        match logs {
            Some(logs) => logs.gateway(),
            None => self.may_log_stray(),
        }
    }

    /// [`Functions::may_log`] for a line about no function in particular (a topic that is no
    /// function's, a request that cannot be answered).
    fn may_log_stray(&self) -> Option<u64> {
        let admitted = self
            .inner
            .stray_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(Instant::now());
        if admitted.is_none() {
            self.inner
                .metrics
                .count(&self.inner.metrics.log_suppressed, UNKNOWN_FUNCTION);
        }
        admitted
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Function>> {
        // A panic while holding the lock cannot leave the map half-updated (each update is a
        // single insert or remove), so a poisoned lock is still usable.
        self.inner
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// An operator's invocation (`grove fn invoke` through the admin route, the web console):
    /// `payload` as an event on the function's own invoke topic, caused by no other message.
    pub async fn invoke_by_operator(
        &self,
        name: &str,
        qualifier: &Qualifier,
        payload: Bytes,
    ) -> Result<Invoked, FunctionError> {
        let topic = crate::protocol::invoke_topic(name);
        self.invoke(name, qualifier, topic, payload, 0).await
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
        let mut outcomes = self
            .invoke_batch(name, vec![(qualifier, topic, payload, hops)])
            .await;
        outcomes.pop().unwrap_or(Err(FunctionError::Closed))
    }

    /// Runs invocations of `name` (qualifier, topic, payload, hops) one after the other on one
    /// thread of the blocking pool, a single hand-off for them all, holding one of the function's
    /// `max_concurrency` slots and one worker meanwhile; each is routed by its own qualifier (a
    /// weighted alias draws for each). Returns their outcomes in order.
    pub(crate) async fn invoke_batch(
        &self,
        name: &str,
        calls: Vec<(&Qualifier, String, Bytes, u32)>,
    ) -> Vec<Result<Invoked, FunctionError>> {
        let mut outcomes: Vec<Option<Result<Invoked, FunctionError>>> = Vec::new();
        let mut runs = Vec::new();
        for (i, (qualifier, topic, payload, hops)) in calls.into_iter().enumerate() {
            let found = loop {
                match self.lookup(name, qualifier) {
                    Ok(Some(found)) => break Ok(found),
                    Ok(None) => self.loaded().await,
                    Err(e) => break Err(e),
                }
            };
            match found {
                Ok(runnable) => {
                    outcomes.push(None);
                    runs.push((i, runnable, topic, payload, hops));
                }
                Err(e) => outcomes.push(Some(Err(e))),
            }
        }
        if let Some((_, first, ..)) = runs.first() {
            for (i, version, logs, outcome) in
                self.run_blocking(name, first.running.clone(), runs).await
            {
                let result = match &outcome.result {
                    Ok(_) => "ok",
                    Err(f) => f.kind.as_str(),
                };
                self.inner
                    .metrics
                    .invoked(name, result, outcome.duration.as_secs_f64());
                if let Err(f) = &outcome.result {
                    // The ring cuts the message (a handler's error is its `output`, up to 1 MiB)
                    // and writes it to the gateway's debug log if it keeps it.
                    logs.push(
                        version,
                        "error",
                        format!("invocation failed: {}: {}", f.kind.as_str(), f.message),
                    );
                }
                outcomes[i] = Some(Ok(Invoked {
                    name: name.to_owned(),
                    version,
                    outcome,
                }));
            }
        }
        // An invocation without an outcome did not run: the component is shutting down.
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Err(FunctionError::Closed)))
            .collect()
    }

    /// Runs routed invocations on one thread of the blocking pool, under one of the function's
    /// slots (`running`) and one worker; (index, version, log, outcome) of each that ran.
    async fn run_blocking(
        &self,
        name: &str,
        running: Arc<Semaphore>,
        runs: Vec<(usize, Runnable, String, Bytes, u32)>,
    ) -> Vec<(usize, u64, Logs, Outcome)> {
        let Ok(slot) = running.acquire_owned().await else {
            return Vec::new();
        };
        let Ok(permit) = self.inner.workers.clone().acquire_owned().await else {
            return Vec::new();
        };
        let inner = self.inner.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || {
            let _permits = (slot, permit);
            runs.into_iter()
                .map(|(i, runnable, topic, payload, hops)| {
                    let host = ServiceHost {
                        inner: inner.clone(),
                        name: name.clone(),
                        version: runnable.version,
                        logs: runnable.logs.clone(),
                        effects: Effects::new(hops),
                    };
                    let outcome =
                        inner
                            .runtime
                            .invoke(&runnable.prepared, &topic, &payload, Box::new(host));
                    (i, runnable.version, runnable.logs, outcome)
                })
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    /// The version `qualifier` routes to now, ready to run; `None` while the startup is still
    /// loading it (once the loading is over, every version is ready or failed).
    fn lookup(&self, name: &str, qualifier: &Qualifier) -> Result<Option<Runnable>, FunctionError> {
        let registry = self.lock();
        let f = registry
            .get(name)
            .ok_or_else(|| FunctionError::NotFound(name.to_owned()))?;
        let draw = self.inner.rng.lock().map(|mut r| r.f64()).unwrap_or(0.0);
        let version = f.routes.resolve(qualifier, draw)?;
        match &f
            .versions
            .get(&version)
            .ok_or(RoutingError::NoSuchVersion(version))?
            .state
        {
            Load::Ready(p) => Ok(Some(Runnable {
                version,
                prepared: p.clone(),
                logs: f.logs.clone(),
                running: f.running.clone(),
            })),
            Load::Loading if !*self.inner.loaded.borrow() => Ok(None),
            Load::Loading => Err(FunctionError::LoadFailed {
                name: name.to_owned(),
                version,
                reason: "the startup's loading ended without it".into(),
            }),
            Load::Failed(reason) => Err(FunctionError::LoadFailed {
                name: name.to_owned(),
                version,
                reason: reason.clone(),
            }),
        }
    }
}
