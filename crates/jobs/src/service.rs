//! The jobs service: the IO shell around [`crate::machine`].
//!
//! One task owns the core. It takes every request waiting on the bus (a batch) and every operator
//! command, answers each against the core, writes every job and execution the batch changed to the
//! store in one transaction, and only after that commit publishes the answers and the
//! notifications (`notify`, `notify-next`) and answers the operator. So no device is told of a
//! start, an update or a job that a power cut could take back; if the commit fails the core takes
//! the batch back and every request of it is answered `InternalError`.
//!
//! Time: the core's `now` is the wall clock at startup advanced by tokio's clock since, so that
//! timers and the rollout run on tokio's timer (paused in component tests, where minutes pass in
//! no time) while documents carry wall-clock times. Timers that ran out while the gateway was
//! stopped fire at startup: the core keeps deadlines as wall-clock times.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::document::{self, Request};
use crate::machine::{
    Abort, CancelError, CreateError, ErrorCode, Execution, Job, JobSpec, Jobs, Limits, Rejection,
    Status, Targets,
};
use crate::metrics::{JobsMetrics, KindLabels};
use crate::names::REQUEST_FILTERS;
use crate::names::{notify_next_topic, notify_topic, JobRef, Operation, RequestTopic, TopicError};
use crate::queries::{JobQueries, WAITING};
use grove_broker::bus::{Bus, Closed, Message, Outgoing};
use grove_store::{Store, StoreError};

/// The things the gateway knows (the registered devices' things), which a pattern job targets as
/// soon as it is created; asked at each creation.
pub type KnownThings = Box<dyn Fn() -> Vec<String> + Send + Sync>;

/// Operator commands waiting at most; more wait for room (the admin routes are loopback only).
const COMMANDS: usize = 16;

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The job cannot be created.
    #[error(transparent)]
    Create(#[from] CreateError),
    /// The job cannot be canceled.
    #[error(transparent)]
    Cancel(#[from] CancelError),
    /// The change could not be written; nothing of it was kept.
    #[error("cannot store the change: {0}")]
    Store(String),
    /// The service has stopped (the gateway is shutting down).
    #[error("the jobs service has stopped")]
    Stopped,
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The bus link closed.
    #[error(transparent)]
    Bus(#[from] Closed),
    /// The jobs could not be read.
    #[error("cannot read the jobs: {0}")]
    Store(#[from] StoreError),
}

/// One execution, as `grove jobs describe` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionInfo {
    /// The thing.
    pub thing: String,
    /// AWS's status, or `WAITING` while the rollout holds it.
    pub status: String,
    /// Its `versionNumber`.
    pub version: u64,
    /// The device's `statusDetails`.
    pub status_details: BTreeMap<String, String>,
    /// When it was rolled out (Unix ms).
    pub queued_ms: Option<u64>,
    /// When it started (Unix ms).
    pub started_ms: Option<u64>,
    /// When it last changed (Unix ms).
    pub updated_ms: u64,
}

/// A job, as `grove jobs list` (without executions) and `describe` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    /// Its id.
    pub id: String,
    /// `IN_PROGRESS`, `CANCELED` or `COMPLETED`.
    pub status: String,
    /// Why it was canceled.
    pub reason: Option<String>,
    /// Who runs it.
    pub targets: Targets,
    /// Its rollout rate.
    pub rollout_per_minute: Option<u32>,
    /// Its abort threshold.
    pub abort: Option<Abort>,
    /// Its in-progress timeout.
    pub timeout_minutes: Option<u32>,
    /// When it was created (Unix ms).
    pub created_ms: u64,
    /// Executions by status (`WAITING` included).
    pub counts: BTreeMap<String, u64>,
    /// The job document (describe only).
    pub document: Option<Value>,
    /// Its executions in creation order (describe only).
    pub executions: Option<Vec<ExecutionInfo>>,
}

enum Command {
    Create(JobSpec, oneshot::Sender<Result<JobInfo, AdminError>>),
    Cancel(String, bool, oneshot::Sender<Result<JobInfo, AdminError>>),
    List(oneshot::Sender<Vec<JobInfo>>),
    Describe(String, oneshot::Sender<Option<JobInfo>>),
}

/// The operator's handle on the service (the admin routes use it); clone it freely.
#[derive(Clone)]
pub struct JobsHandle {
    tx: mpsc::Sender<Command>,
}

impl JobsHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, AdminError> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send(make(done))
            .await
            .map_err(|_| AdminError::Stopped)?;
        answer.await.map_err(|_| AdminError::Stopped)
    }

    /// Creates a job; answers once it is stored (and its first executions rolled out).
    pub async fn create(&self, spec: JobSpec) -> Result<JobInfo, AdminError> {
        self.ask(|done| Command::Create(spec, done)).await?
    }

    /// Cancels a job (with `force`, its executions in progress too).
    pub async fn cancel(&self, id: &str, force: bool) -> Result<JobInfo, AdminError> {
        self.ask(|done| Command::Cancel(id.to_owned(), force, done))
            .await?
    }

    /// Every job, oldest first, with its execution counts.
    pub async fn list(&self) -> Result<Vec<JobInfo>, AdminError> {
        self.ask(Command::List).await
    }

    /// One job with its document and executions.
    pub async fn describe(&self, id: &str) -> Result<Option<JobInfo>, AdminError> {
        self.ask(|done| Command::Describe(id.to_owned(), done))
            .await
    }
}

/// The wall clock at startup advanced by tokio's clock (see the module doc).
struct Clock {
    wall_ms: u64,
    start: Instant,
}

impl Clock {
    fn new() -> Clock {
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Clock {
            wall_ms,
            start: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        self.wall_ms + self.start.elapsed().as_millis() as u64
    }

    fn instant(&self, at_ms: u64) -> Instant {
        self.start + Duration::from_millis(at_ms.saturating_sub(self.wall_ms))
    }
}

/// A device request's answer, held until the batch's commit.
struct Answer {
    op: &'static str,
    /// Where an accepted answer goes, and where a rejection goes.
    accepted: String,
    rejected: String,
    outcome: Result<serde_json::Map<String, Value>, Rejection>,
    token: Option<String>,
    hops: u32,
}

/// An operator command's answer, made once the batch is committed (or taken back).
enum Reply {
    Change(
        String,
        Result<(), AdminError>,
        oneshot::Sender<Result<JobInfo, AdminError>>,
    ),
    List(oneshot::Sender<Vec<JobInfo>>),
    Describe(String, oneshot::Sender<Option<JobInfo>>),
}

/// The running service.
pub struct JobsService {
    bus: Bus,
    store: Store,
    core: Jobs,
    metrics: JobsMetrics,
    known: KnownThings,
    commands: mpsc::Receiver<Command>,
    clock: Clock,
}

impl JobsService {
    /// Subscribes the request filters on `bus` (confirmed: call before the listeners open),
    /// loads the jobs from the store, and returns the service and the operator's handle.
    pub async fn new(
        mut bus: Bus,
        store: Store,
        metrics: JobsMetrics,
        known: KnownThings,
    ) -> Result<(JobsService, JobsHandle), StartError> {
        let filters: Vec<String> = REQUEST_FILTERS.iter().map(|f| (*f).to_owned()).collect();
        bus.subscribe_confirmed(&filters).await?;
        let (jobs, executions) = store.jobs_load().await?;
        info!(
            jobs = jobs.len(),
            executions = executions.len(),
            "jobs loaded"
        );
        let core = Jobs::restore(Limits::default(), jobs, executions);
        let (tx, commands) = mpsc::channel(COMMANDS);
        let service = JobsService {
            bus,
            store,
            core,
            metrics,
            known,
            commands,
            clock: Clock::new(),
        };
        Ok((service, JobsHandle { tx }))
    }

    /// Serves until shutdown.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        // Timers that ran out and rollouts that came due while the gateway was stopped.
        if !self.tick(Vec::new(), Vec::new()).await {
            return;
        }
        loop {
            let wake = self.core.poll_timeout().map(|at| self.clock.instant(at));
            let timer = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let mut batch = Vec::new();
            let mut commands = Vec::new();
            tokio::select! {
                _ = shutdown.changed() => return,
                received = self.bus.recv_batch(&mut batch) => {
                    if received.is_err() {
                        return;
                    }
                }
                Some(command) = self.commands.recv() => {
                    commands.push(command);
                    while let Ok(more) = self.commands.try_recv() {
                        commands.push(more);
                    }
                }
                _ = timer => {}
            }
            if !self.tick(batch, commands).await {
                return;
            }
        }
    }

    /// One batch: timers, requests, commands; the commit; then the answers. False once the bus
    /// link has closed.
    async fn tick(&mut self, batch: Vec<Message>, commands: Vec<Command>) -> bool {
        let now = self.clock.now();
        self.core.handle_timeout(now);
        let answers: Vec<Answer> = batch
            .into_iter()
            .filter_map(|m| self.request(m, now))
            .collect();
        let replies: Vec<Reply> = commands.into_iter().map(|c| self.command(c, now)).collect();
        let effects = self.core.take_effects(now);
        let committed = !effects.writes() || self.commit(&effects).await;
        let mut publish = Vec::with_capacity(answers.len());
        for a in answers {
            let outcome = match a.outcome {
                Ok(_) | Err(_) if !committed => Err(Rejection::new(
                    ErrorCode::InternalError,
                    "the gateway could not store the change; nothing of it was kept",
                )),
                outcome => outcome,
            };
            let token = a.token.as_deref();
            let (topic, doc, label) = match outcome {
                Ok(doc) => (a.accepted, document::answer(doc, token, now), "accepted"),
                Err(r) => (
                    a.rejected,
                    document::rejected(&r, token, now),
                    r.code.as_str(),
                ),
            };
            self.metrics.answered(a.op, label);
            let mut out = Outgoing::new(topic, Bytes::from(doc.to_string()));
            out.hops = a.hops;
            publish.push(out);
        }
        if committed {
            self.core.settle();
            self.metrics.timed_out.inc_by(effects.timed_out);
            self.metrics.aborted.inc_by(effects.aborted.len() as u64);
            for job in &effects.aborted {
                warn!(job, "job aborted by its abort threshold");
            }
            for (thing, pending) in &effects.notify {
                publish.push(notification(
                    notify_topic(thing),
                    document::notify(pending, now),
                ));
                self.count_notification("notify");
            }
            for (thing, next) in &effects.notify_next {
                let doc = document::notify_next(next.as_ref(), now);
                publish.push(notification(notify_next_topic(thing), doc));
                self.count_notification("notify_next");
            }
        } else {
            self.core.rollback();
        }
        for reply in replies {
            self.reply(reply, committed);
        }
        let (executions, jobs) = self.core.counts();
        self.metrics.counts(&executions, &jobs);
        publish.is_empty() || self.bus.publish(publish).await.is_ok()
    }

    fn count_notification(&self, kind: &'static str) {
        self.metrics
            .notifications
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    async fn commit(&self, effects: &crate::machine::Effects) -> bool {
        let result = self
            .store
            .jobs_write(effects.jobs.clone(), effects.executions.clone())
            .await;
        match result {
            Ok(()) => {
                self.metrics.commits.inc();
                true
            }
            Err(e) => {
                error!(error = %e, "jobs commit failed; the batch is taken back");
                false
            }
        }
    }

    /// Answers one device request against the core (published after the commit); `None` for a
    /// topic that is no request.
    fn request(&mut self, m: Message, now: u64) -> Option<Answer> {
        let topic = match RequestTopic::parse(&m.topic) {
            Ok(t) => t,
            Err(TopicError::NotJobsTopic) => return None,
            Err(e) => {
                warn!(topic = m.topic, "jobs request on an invalid topic: {e}");
                return Some(Answer {
                    op: "invalid",
                    accepted: String::new(),
                    rejected: format!("{}/rejected", m.topic),
                    outcome: Err(Rejection::new(ErrorCode::InvalidTopic, e.to_string())),
                    token: None,
                    hops: m.hops,
                });
            }
        };
        let (outcome, token) = match document::request(&m.payload) {
            Ok(req) => (self.serve(&topic, &req, now), req.token),
            Err(r) => (Err(r), None),
        };
        Some(Answer {
            op: topic.op.label(),
            accepted: topic.accepted(),
            rejected: topic.rejected(),
            outcome,
            token,
            hops: m.hops,
        })
    }

    fn serve(
        &mut self,
        topic: &RequestTopic,
        req: &Request,
        now: u64,
    ) -> Result<serde_json::Map<String, Value>, Rejection> {
        let thing = topic.thing.as_str();
        match &topic.op {
            Operation::GetPending => {
                let (in_progress, queued) = self.core.get_pending(thing, now);
                Ok(document::pending(&in_progress, &queued))
            }
            Operation::StartNext => {
                let start = document::start_next(&req.body)?;
                let view = self.core.start_next(thing, start, now);
                Ok(document::execution_answer(view.as_ref(), true))
            }
            Operation::Describe(job) => {
                let (number, include) = document::describe(&req.body)?;
                let job = match job {
                    JobRef::Next => None,
                    JobRef::Id(id) => Some(id.as_str()),
                };
                let view = self.core.describe(thing, job, number, now)?;
                Ok(document::execution_answer(view.as_ref(), include))
            }
            Operation::Update(job) => {
                let (update, include) = document::update(&req.body)?;
                let view = self.core.update(thing, job, update, now)?;
                Ok(document::update_answer(&view, include))
            }
        }
    }

    fn command(&mut self, command: Command, now: u64) -> Reply {
        match command {
            Command::Create(spec, done) => {
                let id = spec.id.clone();
                let known = (self.known)();
                let result = self
                    .core
                    .create(spec, &known, now)
                    .map_err(AdminError::from);
                if result.is_ok() {
                    info!(job = id, "job created");
                }
                Reply::Change(id, result, done)
            }
            Command::Cancel(id, force, done) => {
                let result = self.core.cancel(&id, force, now).map_err(AdminError::from);
                if result.is_ok() {
                    info!(job = id, force, "job canceled");
                }
                Reply::Change(id, result, done)
            }
            Command::List(done) => Reply::List(done),
            Command::Describe(id, done) => Reply::Describe(id, done),
        }
    }

    fn reply(&self, reply: Reply, committed: bool) {
        // Nothing is shown before it is committed: the answers are made after the commit.
        match reply {
            Reply::Change(id, result, done) => {
                let result = match result {
                    Ok(()) if !committed => Err(AdminError::Store(
                        "the commit failed; see the gateway's log".into(),
                    )),
                    Ok(()) => self
                        .info(&id, false)
                        .ok_or_else(|| AdminError::Store(format!("job {id} is gone"))),
                    Err(e) => Err(e),
                };
                let _ = done.send(result);
            }
            Reply::List(done) => {
                let jobs = self
                    .core
                    .jobs()
                    .into_iter()
                    .filter_map(|j| self.info(&j.spec.id, false))
                    .collect();
                let _ = done.send(jobs);
            }
            Reply::Describe(id, done) => {
                let _ = done.send(self.info(&id, true));
            }
        }
    }

    fn info(&self, id: &str, detailed: bool) -> Option<JobInfo> {
        let job: &Job = self.core.job(id)?;
        let executions = self.core.executions_of(id);
        let mut counts = BTreeMap::new();
        for e in &executions {
            *counts.entry(status_name(e).to_owned()).or_default() += 1;
        }
        let spec = &job.spec;
        Some(JobInfo {
            id: spec.id.clone(),
            status: job.status.as_str().to_owned(),
            reason: job.reason.clone(),
            targets: spec.targets.clone(),
            rollout_per_minute: spec.rollout_per_minute,
            abort: spec.abort.clone(),
            timeout_minutes: spec.timeout_minutes,
            created_ms: job.created_at,
            counts,
            document: detailed.then(|| spec.document.clone()),
            executions: detailed.then(|| executions.iter().map(|e| execution_info(e)).collect()),
        })
    }
}

fn status_name(e: &Execution) -> &'static str {
    e.status.map_or(WAITING, Status::as_str)
}

fn execution_info(e: &Execution) -> ExecutionInfo {
    ExecutionInfo {
        thing: e.thing.clone(),
        status: status_name(e).to_owned(),
        version: e.version,
        status_details: e.details.clone(),
        queued_ms: e.queued_at,
        started_ms: e.started_at,
        updated_ms: e.updated_at,
    }
}

/// Notifications go at QoS 1, so a device whose session persists gets them after a reconnect.
fn notification(topic: String, doc: Value) -> Outgoing {
    let mut out = Outgoing::new(topic, Bytes::from(doc.to_string()));
    out.qos = 1;
    out
}
