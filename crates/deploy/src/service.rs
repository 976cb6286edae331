//! The deployments' shell: one task owning the [`Machine`], performing its actions through the
//! store, the functions component and the rules engine, and [`Deployer`], the handle the admin
//! routes use.
//!
//! - Every [`Action::Record`] is written to the `deployments` table before the actions after it
//!   run (write-ahead), so that a restart finds the step that was in progress.
//! - Steps run as tasks of their own, so a step that hangs does not stop the clock: the machine
//!   times it out, and the task is aborted when the machine has moved on.
//! - Staging writes the snapshot (what the deployment's functions were: whether each existed, its
//!   `$LATEST`, its aliases) before it registers anything; the rollback restores it: a function
//!   the deployment created is removed, `$LATEST` is put back by deploying the old version again
//!   (versions are immutable), aliases are moved back, and the rules become those of the newest
//!   other committed deployment with rules, or `grove.toml`'s.
//! - The gateway serves devices throughout: deploying a version, moving an alias and reloading
//!   the rules are the components' own live operations.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use grove_functions_host::manifest::Manifest;
use grove_functions_host::metrics::FunctionMetrics;
use grove_functions_host::service::Functions;
use grove_rules_engine::engine::Reload;
use grove_rules_engine::metrics::RulesMetrics;
use grove_rules_engine::{RawRule, RuleConfig};
use grove_store::{Store, StoreError};

use crate::document::{Deployment, DocumentError};
use crate::fetch::Fetcher;
use crate::health::Counters;
use crate::machine::{Action, Machine, Phase, Status, SubmitError, Timeouts};
use crate::metrics::DeployMetrics;
use crate::queries::{DeployQueries, DeploymentRow};

/// The rules a deployment set, shared with the binary's rule loader: while a committed (or
/// applying) deployment has rules, a reload (SIGHUP, `grove rules reload`) runs them instead of
/// `grove.toml`'s.
#[derive(Clone)]
pub struct DeployedRules {
    slot: Arc<Mutex<Option<Vec<RuleConfig>>>>,
    reloads: mpsc::Sender<Reload>,
}

impl DeployedRules {
    /// The rules of the newest committed deployment with rules, compiled: what the gateway runs
    /// at startup instead of `grove.toml`'s (`None`: `grove.toml`'s).
    pub async fn committed(store: &Store) -> Result<Option<Vec<RuleConfig>>, String> {
        rules_after(store, None).await
    }

    /// The shared slot, starting with `rules`; `reloads` reaches the rules engine.
    pub fn new(rules: Option<Vec<RuleConfig>>, reloads: mpsc::Sender<Reload>) -> DeployedRules {
        DeployedRules {
            slot: Arc::new(Mutex::new(rules)),
            reloads,
        }
    }

    /// The deployed rules now, if a deployment set them.
    pub fn current(&self) -> Option<Vec<RuleConfig>> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs `rules` (`None`: `grove.toml`'s) and waits for the engine's answer.
    async fn switch(&self, rules: Option<Vec<RuleConfig>>) -> Result<(), String> {
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = rules;
        let (done, answer) = oneshot::channel();
        self.reloads
            .send(Reload { done })
            .await
            .map_err(|_| "the rules engine has stopped".to_owned())?;
        answer
            .await
            .map_err(|_| "the rules engine has stopped".to_owned())?
            .map(drop)
    }
}

/// The rules of the newest committed deployment with rules other than `except`, compiled.
async fn rules_after(
    store: &Store,
    except: Option<String>,
) -> Result<Option<Vec<RuleConfig>>, String> {
    let Some(row) = store
        .deployment_last_committed(true, except)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let doc = Deployment::parse(row.document.as_bytes()).map_err(|e| e.to_string())?;
    doc.rules.as_deref().map(compile_rules).transpose()
}

/// Compiles a document's rules as the rules engine does `grove.toml`'s.
fn compile_rules(
    rules: &[serde_json::Map<String, serde_json::Value>],
) -> Result<Vec<RuleConfig>, String> {
    rules
        .iter()
        .map(|r| {
            let name = r.get("name").and_then(|n| n.as_str()).unwrap_or_default();
            let raw: RawRule = serde_json::from_value(serde_json::Value::Object(r.clone()))
                .map_err(|e| format!("rule `{name}`: {e}"))?;
            raw.compile().map_err(|e| format!("rule `{name}`: {e}"))
        })
        .collect()
}

/// What the shell needs of the gateway.
pub struct DeployParts {
    /// The store (the `deployments` table).
    pub store: Store,
    /// The functions component, when it runs.
    pub functions: Option<Functions>,
    /// Whether cloud sync runs (a rule's `cloud` action needs it, as at startup).
    pub cloud: bool,
    /// Its counters (function errors, dead letters: the soak).
    pub function_metrics: FunctionMetrics,
    /// The rules engine's counters (rule errors: the soak).
    pub rules_metrics: RulesMetrics,
    /// The deployed rules' slot.
    pub rules: DeployedRules,
    /// The deployments' own metrics.
    pub metrics: DeployMetrics,
    /// Each step's time limit.
    pub timeouts: Timeouts,
    /// Fetches the artifacts (keeping partial downloads in the staging directory).
    pub fetcher: Fetcher,
    /// Test-only (`GROVE_DEPLOY_TEST_HOLD=ID:STEP`, read by the binary): the deployment and
    /// step that stop before the step ends, so that an end-to-end test can kill the gateway in
    /// it deterministically. `staging` stops once the new versions are registered, `switching`
    /// once the aliases have moved and before the rules do (a switch cut half way); the step then
    /// times out like a hung one. The fetch and the soak need no such help (a slow artifact
    /// server, a long soak).
    pub hold: Option<(String, Phase)>,
}

/// Why a deployment was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The document is refused.
    #[error(transparent)]
    Document(#[from] DocumentError),
    /// Its id was applied before (ids are unique in the history).
    #[error("deployment `{0}` is already in the history: give the new one a new id")]
    Duplicate(String),
    /// Its id came before from another job or from `grove deploy`.
    #[error("deployment `{0}` is already in the history, from {1}: give the new one a new id")]
    DuplicateFrom(String, String),
    /// The store failed.
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
    /// The deployments' task has stopped (shutdown).
    #[error("the gateway is stopping")]
    Closed,
}

/// What `grove deploy rollback` did.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackStarted {
    /// The deployment being undone.
    pub id: String,
    /// `aborting` (it was being applied) or `reverting` (it was the committed one).
    pub action: &'static str,
}

/// A deployment as the admin routes show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Summary {
    /// Its id.
    pub id: String,
    /// Its step (`committed`, `rolled_back`, ...).
    pub phase: String,
    /// Attempts of the step.
    pub attempt: u32,
    /// Why it failed or rolled back.
    pub reason: Option<String>,
    /// When it was received (Unix ms).
    pub received_ms: i64,
    /// When its step last changed (Unix ms).
    pub updated_ms: i64,
    /// The AWS IoT job it came from (`None`: `grove deploy`).
    #[serde(default)]
    pub job: Option<String>,
}

impl From<&DeploymentRow> for Summary {
    fn from(row: &DeploymentRow) -> Summary {
        Summary {
            id: row.id.clone(),
            phase: row.phase.as_str().to_owned(),
            attempt: row.attempt,
            reason: row.reason.clone(),
            received_ms: row.received_ms,
            updated_ms: row.updated_ms,
            job: row.job.clone(),
        }
    }
}

/// `grove deploy status`: what runs and what is being applied.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Overview {
    /// The newest committed deployment (what the gateway runs), if any.
    pub committed: Option<Summary>,
    /// The deployments not finished (the one applying, then the one waiting).
    pub applying: Vec<Summary>,
    /// The newest finished deployment, if any (its outcome and reason).
    pub last: Option<Summary>,
}

/// The handle of the deployments' task.
#[derive(Clone)]
pub struct Deployer {
    commands: mpsc::Sender<Command>,
    store: Store,
    /// Every step recorded, after it is written.
    steps: broadcast::Sender<Status>,
}

/// Steps a slow listener may fall behind by before it must read the store instead.
const STEPS_BACKLOG: usize = 64;

enum Command {
    Submit(Box<Deployment>, oneshot::Sender<Result<(), SubmitError>>),
    Rollback(oneshot::Sender<Result<RollbackStarted, String>>),
}

impl Deployer {
    /// Takes a deployment document: checked, stored as received, then applied (or waiting).
    pub async fn apply(&self, document: &[u8]) -> Result<String, ApplyError> {
        self.submit(document, None).await
    }

    /// Takes the document of the AWS IoT job `job`, as [`Deployer::apply`] does, and also when
    /// the job is taken again (after a restart, a reconnection): then its deployment is the one
    /// in the history, which the machine resumed or finished; its id is returned as is.
    pub async fn apply_job(&self, job: &str, document: &[u8]) -> Result<String, ApplyError> {
        self.submit(document, Some(job)).await
    }

    /// Every step recorded from now on (a listener that falls behind gets `Lagged` and reads the
    /// store).
    pub fn steps(&self) -> broadcast::Receiver<Status> {
        self.steps.subscribe()
    }

    async fn submit(&self, document: &[u8], job: Option<&str>) -> Result<String, ApplyError> {
        let doc = Deployment::parse(document)?;
        let text = String::from_utf8_lossy(document).into_owned();
        let inserted = self
            .store
            .deployment_insert(doc.id.clone(), text, job.map(String::from), now_ms())
            .await?;
        if !inserted {
            let before = self.store.deployment(doc.id.clone()).await?;
            let from = before.and_then(|row| row.job);
            return match (job, from) {
                (Some(job), Some(from)) if from == job => Ok(doc.id),
                (_, Some(from)) => Err(ApplyError::DuplicateFrom(doc.id, format!("job {from}"))),
                (Some(_), None) => Err(ApplyError::DuplicateFrom(doc.id, "grove deploy".into())),
                (None, None) => Err(ApplyError::Duplicate(doc.id)),
            };
        }
        let id = doc.id.clone();
        let (done, answer) = oneshot::channel();
        self.commands
            .send(Command::Submit(Box::new(doc), done))
            .await
            .map_err(|_| ApplyError::Closed)?;
        match answer.await.map_err(|_| ApplyError::Closed)? {
            Ok(()) => Ok(id),
            Err(SubmitError::Duplicate(id)) => Err(ApplyError::Duplicate(id)),
        }
    }

    /// Rolls back the deployment being applied, or else reverts the committed one to what ran
    /// before it.
    pub async fn rollback(&self) -> Result<RollbackStarted, String> {
        let (done, answer) = oneshot::channel();
        self.commands
            .send(Command::Rollback(done))
            .await
            .map_err(|_| "the gateway is stopping".to_owned())?;
        answer
            .await
            .map_err(|_| "the gateway is stopping".to_owned())?
    }

    /// What runs and what is being applied.
    pub async fn overview(&self) -> Result<Overview, StoreError> {
        let committed = self.store.deployment_last_committed(false, None).await?;
        let applying = self.store.deployments_unfinished().await?;
        let last = self
            .store
            .deployments_history(crate::queries::HISTORY)
            .await?
            .into_iter()
            .find(|r| r.phase.is_final());
        Ok(Overview {
            committed: committed.as_ref().map(Summary::from),
            applying: applying.iter().map(Summary::from).collect(),
            last: last.as_ref().map(Summary::from),
        })
    }

    /// The newest deployments, newest first.
    pub async fn history(&self) -> Result<Vec<Summary>, StoreError> {
        Ok(self
            .store
            .deployments_history(crate::queries::HISTORY)
            .await?
            .iter()
            .map(Summary::from)
            .collect())
    }

    /// One deployment.
    pub async fn get(&self, id: &str) -> Result<Option<Summary>, StoreError> {
        Ok(self
            .store
            .deployment(id.to_owned())
            .await?
            .as_ref()
            .map(Summary::from))
    }
}

/// What a deployment's switch replaced, stored before staging registers anything.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Snapshot {
    functions: Vec<FunctionBefore>,
}

/// A function as it was before the deployment.
#[derive(Debug, Serialize, Deserialize)]
struct FunctionBefore {
    name: String,
    /// Its `$LATEST`, if it existed.
    latest: Option<u64>,
    /// Its aliases: version and weighted second version.
    aliases: BTreeMap<String, (u64, Option<(u64, u8)>)>,
}

/// What staging made ready for the switch.
struct Staged {
    id: String,
    versions: BTreeMap<String, u64>,
    rules: Option<Vec<RuleConfig>>,
}

/// A finished step, sent back to the task.
enum Finished {
    Fetched(String, Result<Vec<Vec<u8>>, String>),
    Staged(String, Result<Staged, String>),
    Step(String, Phase, Result<(), String>),
}

/// Starts the deployments' task: takes up what a restart interrupted, then serves until
/// `shutdown`.
pub async fn start(
    parts: DeployParts,
    shutdown: watch::Receiver<bool>,
) -> Result<(Deployer, JoinHandle<()>), StoreError> {
    let now = Instant::now();
    let last_good = parts
        .store
        .deployment_last_committed(false, None)
        .await?
        .map(|r| r.id);
    parts.metrics.committed(last_good.as_deref());
    let mut machine = Machine::new(parts.timeouts, last_good);
    for row in parts.store.deployments_unfinished().await? {
        match Deployment::parse(row.document.as_bytes()) {
            Ok(doc) => {
                info!(deployment = row.id, phase = %row.phase, "deployment interrupted by a restart: taking it up");
                machine.recover(row.status(), doc.health, now);
            }
            Err(e) => {
                // Stored only after it parsed: a newer Grove's document, or a damaged row.
                let status = Status {
                    phase: Phase::Failed,
                    reason: Some(format!("its stored document no longer parses: {e}")),
                    ..row.status()
                };
                parts.store.deployment_record(status, now_ms()).await?;
            }
        }
    }
    let (commands, rx) = mpsc::channel(8);
    let (steps, _) = broadcast::channel(STEPS_BACKLOG);
    let deployer = Deployer {
        commands,
        store: parts.store.clone(),
        steps: steps.clone(),
    };
    let (finished_tx, finished_rx) = mpsc::channel(8);
    let shell = Shell {
        parts: Arc::new(parts),
        steps,
        machine,
        finished: finished_tx,
        running: None,
        fetched: None,
        staged: None,
        doc: None,
    };
    let task = tokio::spawn(shell.run(rx, finished_rx, shutdown));
    Ok((deployer, task))
}

struct Shell {
    parts: Arc<DeployParts>,
    steps: broadcast::Sender<Status>,
    machine: Machine,
    finished: mpsc::Sender<Finished>,
    /// The step running, aborted when the machine moves on without its answer.
    running: Option<JoinHandle<()>>,
    fetched: Option<(String, Vec<Vec<u8>>)>,
    staged: Option<Staged>,
    /// The document of the deployment being applied.
    doc: Option<Arc<Deployment>>,
}

impl Shell {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut finished: mpsc::Receiver<Finished>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        self.perform().await;
        loop {
            let timer = until(self.machine.poll_timeout());
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(command) = commands.recv() => self.command(command).await,
                Some(done) = finished.recv() => self.finished(done),
                () = timer => self.machine.handle_timeout(Instant::now()),
            }
            self.perform().await;
        }
        if let Some(step) = self.running.take() {
            step.abort();
        }
    }

    async fn command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Submit(doc, done) => {
                let _ = done.send(self.machine.submit(&doc, now));
            }
            Command::Rollback(done) => {
                let _ = done.send(self.rollback(now).await);
            }
        }
    }

    async fn rollback(&mut self, now: Instant) -> Result<RollbackStarted, String> {
        if let Some(current) = self.machine.current() {
            return if self.machine.abort("rolled back by the operator", now) {
                Ok(RollbackStarted {
                    id: current.id,
                    action: "aborting",
                })
            } else {
                Err(format!(
                    "deployment `{}` is already {}",
                    current.id, current.phase
                ))
            };
        }
        let store = &self.parts.store;
        let committed = store
            .deployment_last_committed(false, None)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no deployment has been committed: nothing to roll back")?;
        let previous = store
            .deployment_last_committed(false, Some(committed.id.clone()))
            .await
            .map_err(|e| e.to_string())?
            .map(|r| r.id);
        let doc = Deployment::parse(committed.document.as_bytes()).map_err(|e| e.to_string())?;
        self.machine.revert(
            &committed.id,
            doc.health,
            previous,
            "reverted by the operator",
            now,
        );
        Ok(RollbackStarted {
            id: committed.id,
            action: "reverting",
        })
    }

    fn finished(&mut self, done: Finished) {
        let now = Instant::now();
        self.running = None;
        match done {
            Finished::Fetched(id, result) => {
                let result = result.map(|modules| self.fetched = Some((id.clone(), modules)));
                self.machine.step_done(&id, Phase::Fetching, result, now);
            }
            Finished::Staged(id, result) => {
                let result = result.map(|staged| self.staged = Some(staged));
                self.machine.step_done(&id, Phase::Staging, result, now);
            }
            Finished::Step(id, step, result) => self.machine.step_done(&id, step, result, now),
        }
    }

    /// Performs the machine's actions in order.
    async fn perform(&mut self) {
        while let Some(action) = self.machine.poll_action() {
            match action {
                Action::Record(status) => self.record(status).await,
                Action::Sample => {
                    let counters = self.counters();
                    self.machine.sampled(counters, Instant::now());
                }
                step => {
                    if let Some(previous) = self.running.take() {
                        previous.abort();
                    }
                    self.running = self.step(step).await;
                }
            }
        }
    }

    /// Writes a step ahead of doing it, and says so in the log and the metrics.
    async fn record(&mut self, status: Status) {
        let phase = status.phase;
        match &status.reason {
            Some(reason) if phase.is_final() || phase == Phase::RollingBack => {
                warn!(deployment = status.id, phase = %phase, attempt = status.attempt, reason, "deployment step")
            }
            _ => {
                info!(deployment = status.id, phase = %phase, attempt = status.attempt, "deployment step")
            }
        }
        self.parts.metrics.step(&status);
        if phase.is_final() {
            if let Some(doc) = self.doc.take_if(|d| d.id == status.id) {
                for f in &doc.functions {
                    self.parts.fetcher.discard(&f.module);
                }
                self.fetched = None;
                self.staged = None;
            }
            if self.machine.last_good() != self.parts.metrics.committed_id().as_deref() {
                self.parts.metrics.committed(self.machine.last_good());
            }
        }
        if let Err(e) = self
            .parts
            .store
            .deployment_record(status.clone(), now_ms())
            .await
        {
            warn!(error = %e, "cannot record a deployment's step");
        }
        // Nobody listening (no jobs) is fine.
        let _ = self.steps.send(status);
    }

    /// The document of `id`, from the store on its first step.
    async fn doc(&mut self, id: &str) -> Result<Arc<Deployment>, String> {
        if let Some(doc) = self.doc.as_ref().filter(|d| d.id == id) {
            return Ok(doc.clone());
        }
        let row = self
            .parts
            .store
            .deployment(id.to_owned())
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("deployment `{id}` is not in the store"))?;
        let doc = Arc::new(Deployment::parse(row.document.as_bytes()).map_err(|e| e.to_string())?);
        self.doc = Some(doc.clone());
        Ok(doc)
    }

    /// Starts a step's task; it answers on `finished`.
    async fn step(&mut self, action: Action) -> Option<JoinHandle<()>> {
        let tx = self.finished.clone();
        let parts = self.parts.clone();
        let (id, phase) = match &action {
            Action::Fetch(id) => (id.clone(), Phase::Fetching),
            Action::Stage(id) => (id.clone(), Phase::Staging),
            Action::Switch(id) => (id.clone(), Phase::Switching),
            Action::RollBack { id, .. } => (id.clone(), Phase::RollingBack),
            Action::Record(_) | Action::Sample => return None,
        };
        let doc = match self.doc(&id).await {
            Ok(doc) => doc,
            Err(e) => {
                let _ = tx.send(Finished::Step(id, phase, Err(e))).await;
                return None;
            }
        };
        Some(match action {
            Action::Fetch(_) => tokio::task::spawn(async move {
                let fetching = doc.clone();
                let deadline = Instant::now() + parts.timeouts.fetch;
                let result = tokio::task::spawn_blocking(move || {
                    fetching
                        .functions
                        .iter()
                        .map(|f| {
                            parts
                                .fetcher
                                .fetch(&f.module, deadline)
                                .map_err(|e| format!("function `{}`: {e}", f.name))
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .await
                .unwrap_or_else(|e| Err(format!("the fetching task failed: {e}")));
                let _ = tx.send(Finished::Fetched(id, result)).await;
            }),
            Action::Stage(_) => {
                let modules = match self.fetched.take() {
                    Some((fetched, modules)) if fetched == id => modules,
                    _ => Vec::new(),
                };
                tokio::spawn(async move {
                    let result = stage(&parts, &doc, modules).await;
                    hold(&parts, &doc, Phase::Staging).await;
                    let _ = tx.send(Finished::Staged(id, result)).await;
                })
            }
            Action::Switch(_) => {
                let staged = self.staged.take().filter(|s| s.id == id);
                tokio::spawn(async move {
                    let result = match staged {
                        Some(staged) => switch(&parts, &doc, staged).await,
                        None => Err("nothing is staged (the gateway restarted?)".to_owned()),
                    };
                    let _ = tx.send(Finished::Step(id, phase, result)).await;
                })
            }
            _ => tokio::spawn(async move {
                let result = roll_back(&parts, &doc).await;
                let _ = tx.send(Finished::Step(id, phase, result)).await;
            }),
        })
    }

    /// The soak's counters: errors of the deployment's own functions and rules.
    fn counters(&self) -> Counters {
        let Some(doc) = &self.doc else {
            return Counters::default();
        };
        let p = &self.parts;
        let rules = doc
            .rules
            .iter()
            .flatten()
            .filter_map(|r| r["name"].as_str());
        Counters {
            function_errors: doc
                .functions
                .iter()
                .map(|f| p.function_metrics.errors(&f.name))
                .sum(),
            dead_letters: doc
                .functions
                .iter()
                .map(|f| p.function_metrics.dead_letters(&f.name))
                .sum(),
            rule_errors: rules
                .map(|r| {
                    p.rules_metrics
                        .counter(&p.rules_metrics.action_failures, r)
                        .get()
                })
                .sum(),
        }
    }
}

fn functions<'a>(parts: &'a DeployParts, doc: &Deployment) -> Result<&'a Functions, String> {
    parts.functions.as_ref().ok_or_else(|| {
        format!(
            "deployment `{}` has functions, and the functions component is not enabled \
             ([functions] in grove.toml)",
            doc.id
        )
    })
}

/// Staging: the snapshot first, then the rules compiled and the modules registered as new
/// versions (the functions component compiles them: the functions load).
async fn stage(
    parts: &DeployParts,
    doc: &Deployment,
    modules: Vec<Vec<u8>>,
) -> Result<Staged, String> {
    let rules = doc.rules.as_deref().map(compile_rules).transpose()?;
    // What the binary checks of grove.toml's rules across sections, checked of these.
    for r in rules.iter().flatten() {
        if r.uses_cloud() && !parts.cloud {
            return Err(format!(
                "rule `{}` has a cloud action, but [cloud] is not configured (or not enabled)",
                r.name
            ));
        }
        if r.uses_functions() && parts.functions.is_none() {
            return Err(format!(
                "rule `{}` has a function action, but [functions] is not enabled",
                r.name
            ));
        }
    }
    let mut snapshot = Snapshot::default();
    if !doc.functions.is_empty() {
        let functions = functions(parts, doc)?;
        if modules.len() != doc.functions.len() {
            return Err("the fetched modules are gone (the gateway restarted?)".into());
        }
        for f in &doc.functions {
            // The manifest names the function it deploys: it must be the one the document says,
            // or the snapshot would describe another function than the one registered.
            let named = Manifest::parse(&f.manifest, u32::MAX)
                .map_err(|e| format!("function `{}`: {e}", f.name))?
                .name;
            if named != f.name {
                return Err(format!(
                    "function `{}`: its manifest names `{named}`",
                    f.name
                ));
            }
        }
        let now = functions.list();
        for f in &doc.functions {
            let before = now.iter().find(|i| i.name == f.name);
            snapshot.functions.push(FunctionBefore {
                name: f.name.clone(),
                latest: before.map(|i| i.latest),
                aliases: before.map(|i| i.aliases.clone()).unwrap_or_default(),
            });
        }
    }
    let text = serde_json::to_string(&snapshot).map_err(|e| e.to_string())?;
    parts
        .store
        .deployment_snapshot(doc.id.clone(), text)
        .await
        .map_err(|e| e.to_string())?;
    let mut versions = BTreeMap::new();
    for (f, wasm) in doc.functions.iter().zip(modules) {
        let deployed = functions(parts, doc)?
            .deploy(&f.manifest, wasm, None)
            .await
            .map_err(|e| format!("function `{}`: {e}", f.name))?;
        versions.insert(f.name.clone(), deployed.version);
    }
    Ok(Staged {
        id: doc.id.clone(),
        versions,
        rules,
    })
}

/// The switch: the aliases moved (weighted ones split between what they served and the new
/// version), then the rules.
async fn switch(parts: &DeployParts, doc: &Deployment, staged: Staged) -> Result<(), String> {
    let snapshot = snapshot(parts, doc).await?;
    for f in &doc.functions {
        let new = staged.versions[&f.name];
        let before = snapshot.functions.iter().find(|b| b.name == f.name);
        for (alias, percent) in &f.aliases {
            let (version, weight) = if *percent == 100 {
                (new, None)
            } else {
                let base = before
                    .and_then(|b| b.aliases.get(alias).map(|a| a.0).or(b.latest))
                    .ok_or_else(|| {
                        format!(
                            "alias `{alias}` of `{}` gives the new version {percent}%: nothing \
                             ran before it to give the rest to",
                            f.name
                        )
                    })?;
                (base, Some((new, *percent)))
            };
            functions(parts, doc)?
                .set_alias(&f.name, alias, version, weight)
                .await
                .map_err(|e| format!("alias `{alias}` of `{}`: {e}", f.name))?;
        }
    }
    hold(parts, doc, Phase::Switching).await;
    if let Some(rules) = staged.rules {
        parts.rules.switch(Some(rules)).await?;
    }
    Ok(())
}

/// Waits forever at `step` of `doc` when the test-only hold names them ([`DeployParts::hold`]).
async fn hold(parts: &DeployParts, doc: &Deployment, step: Phase) {
    if parts
        .hold
        .as_ref()
        .is_some_and(|(id, at)| *id == doc.id && *at == step)
    {
        info!(deployment = doc.id, step = %step, "deployment held for a test (GROVE_DEPLOY_TEST_HOLD)");
        std::future::pending::<()>().await;
    }
}

async fn snapshot(parts: &DeployParts, doc: &Deployment) -> Result<Snapshot, String> {
    let row = parts
        .store
        .deployment(doc.id.clone())
        .await
        .map_err(|e| e.to_string())?;
    match row.and_then(|r| r.snapshot) {
        Some(text) => serde_json::from_str(&text).map_err(|e| e.to_string()),
        None => Ok(Snapshot::default()),
    }
}

/// The rollback: the functions put back as the snapshot says, the rules set back. Idempotent:
/// a resumed rollback does the same again.
async fn roll_back(parts: &DeployParts, doc: &Deployment) -> Result<(), String> {
    let snapshot = snapshot(parts, doc).await?;
    if !snapshot.functions.is_empty() {
        let functions = functions(parts, doc)?;
        let now = functions.list();
        for before in &snapshot.functions {
            let current = now.iter().find(|i| i.name == before.name);
            let Some(latest) = before.latest else {
                if current.is_some() {
                    functions
                        .remove(&before.name)
                        .await
                        .map_err(|e| format!("removing `{}`: {e}", before.name))?;
                }
                continue;
            };
            if current.map(|c| c.latest) != Some(latest) {
                functions
                    .restore(&before.name, latest)
                    .await
                    .map_err(|e| format!("restoring `{}` version {latest}: {e}", before.name))?;
            }
            let added = doc
                .functions
                .iter()
                .filter(|f| f.name == before.name)
                .flat_map(|f| f.aliases.keys())
                .filter(|a| !before.aliases.contains_key(*a))
                .map(|a| (a.clone(), (latest, None)));
            // An alias the deployment created cannot be deleted (the functions component has no
            // such operation): it is pointed at the code that ran before.
            for (alias, (version, weight)) in before.aliases.clone().into_iter().chain(added) {
                functions
                    .set_alias(&before.name, &alias, version, weight)
                    .await
                    .map_err(|e| format!("alias `{alias}` of `{}`: {e}", before.name))?;
            }
        }
    }
    if doc.rules.is_some() {
        let rules = rules_after(&parts.store, Some(doc.id.clone())).await?;
        parts.rules.switch(rules).await?;
    }
    Ok(())
}

/// Sleeps until `deadline`; never returns without one (a `select!` arm for a core's
/// `poll_timeout`).
pub(crate) async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
