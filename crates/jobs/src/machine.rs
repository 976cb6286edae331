//! The jobs' pure core: jobs and their executions, every transition AWS IoT Jobs allows, timeouts,
//! rollout and abort, on a clock the caller passes in (`now`, Unix milliseconds). No IO, no tokio.
//!
//! The rules come from the AWS IoT Developer Guide:
//! - "Jobs and job execution states"
//!   (<https://docs.aws.amazon.com/iot/latest/developerguide/iot-jobs-lifecycle.html>): an
//!   execution is `QUEUED` when it is rolled out to its thing, `IN_PROGRESS` once the device says
//!   so (start-next or an update), and ends `SUCCEEDED`, `FAILED` or `REJECTED` (the device's
//!   report), `TIMED_OUT` (its timer), `CANCELED` (the job was canceled or aborted) or `REMOVED`;
//!   a job is `IN_PROGRESS`, then `COMPLETED` when every execution of a snapshot job has ended, or
//!   `CANCELED`.
//! - "Jobs device MQTT API operations"
//!   (<https://docs.aws.amazon.com/iot/latest/developerguide/jobs-mqtt-api.html>): which execution
//!   is next ("Any job executions with status `IN_PROGRESS` are returned first. Job executions are
//!   returned in the order in which they were created"), what start-next changes, the update's
//!   `expectedVersion`, `executionNumber` and `stepTimeoutInMinutes`.
//! - "ErrorResponse" in "AWS IoT jobs APIs"
//!   (<https://docs.aws.amazon.com/iot/latest/developerguide/jobs-api.html>): the error codes.
//! - "How job configurations work"
//!   (<https://docs.aws.amazon.com/iot/latest/developerguide/jobs-configurations-details.html>):
//!   in-progress and step timers, the constant rollout rate and the abort configuration.
//!
//! Where the pages leave a choice, Grove's is:
//! - **Rollout** (`rollout_per_minute`, AWS's constant `maximumPerMinute`, "the maximum number of
//!   job targets to inform per minute"): at most N of a job's executions are *rolled out* (become
//!   `QUEUED`: visible to get, start-next and describe, announced on `notify` and `notify-next`) in
//!   any 60 s window, in target order. An execution not rolled out yet is held by the gateway
//!   ([`Execution::status`] `None`, shown as `WAITING` by `grove jobs describe`); its device sees
//!   nothing of it, as AWS creates executions only as it rolls them out. The exponential rate is
//!   not offered.
//! - **Abort** (AWS's `AbortCriteria` with failure type `ALL`): once at least `min_executed` of the
//!   job's executions have *ended by the device or its timer* (`SUCCEEDED`, `FAILED`, `REJECTED`,
//!   `TIMED_OUT`), the job is canceled when `FAILED + REJECTED + TIMED_OUT >= threshold % of them`.
//!   As AWS does ("only `QUEUED` job executions are canceled ... `IN_PROGRESS` will not be"), the
//!   executions queued or waiting for the rollout are canceled and those in progress go on.
//! - **Targets**: a list of thing names (a snapshot job: `COMPLETED` when all have ended), or a
//!   thing-name pattern (a glob, `sensor-*`; like AWS's continuous job it never completes): things
//!   the gateway knows at creation that match get an execution, and so does any other matching
//!   thing the first time it makes a jobs request (this is how a device the gateway has never seen
//!   gets the job), up to [`Limits::max_executions_per_job`].
//! - **Versions** (`versionNumber`): 1 when an execution is rolled out, +1 on every change of it
//!   (the device's and the service's: a timeout or a cancel moves it too, so an update prepared
//!   against an older state is refused with `VersionMismatch`). `executionNumber` is always 1:
//!   Grove does not retry executions, and AWS numbers an execution's retries.
//! - **Errors**: an update of an ended execution is `InvalidStateTransition` (AWS's own example,
//!   "an attempt to change a request in state SUCCEEDED to state IN_PROGRESS"); a describe of an
//!   ended execution by its job id is `TerminalStateReached` ("Occurs when a command to describe a
//!   job is performed on a job that is in a terminal state"); an execution of another number, or
//!   one not rolled out, is `ResourceNotFound`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::names::validate_job_id;
use grove_shadow_api::names::validate_thing_name;

/// The rollout window: `rollout_per_minute` executions at most in any window this long.
pub const ROLLOUT_WINDOW_MS: u64 = 60_000;

/// Every execution's `executionNumber` (Grove does not retry executions; see the module doc).
pub const EXECUTION_NUMBER: u64 = 1;

/// Longest in-progress or step timer AWS accepts: "between 1 minute and 7 days".
pub const MAX_TIMEOUT_MINUTES: u32 = 10_080;

/// Highest constant rollout rate AWS accepts (`maximumPerMinute`: 1 to 1000).
pub const MAX_ROLLOUT_PER_MINUTE: u32 = 1_000;

/// A job execution's status (`JobExecutionStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// Rolled out, not started.
    Queued,
    /// The device is working on it.
    InProgress,
    /// The device reported success (terminal).
    Succeeded,
    /// The device reported failure (terminal).
    Failed,
    /// A timer ran out while it was in progress (terminal).
    TimedOut,
    /// The device refused it (terminal).
    Rejected,
    /// Its thing is no longer a target (terminal; AWS sets it when a thing leaves a dynamic
    /// group, which Grove's targets cannot express, so Grove never sets it).
    Removed,
    /// Its job was canceled or aborted (terminal).
    Canceled,
}

impl Status {
    /// Every status, in AWS's order.
    pub const ALL: [Status; 8] = [
        Status::Queued,
        Status::InProgress,
        Status::Succeeded,
        Status::Failed,
        Status::TimedOut,
        Status::Rejected,
        Status::Removed,
        Status::Canceled,
    ];

    /// AWS's name of the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "QUEUED",
            Status::InProgress => "IN_PROGRESS",
            Status::Succeeded => "SUCCEEDED",
            Status::Failed => "FAILED",
            Status::TimedOut => "TIMED_OUT",
            Status::Rejected => "REJECTED",
            Status::Removed => "REMOVED",
            Status::Canceled => "CANCELED",
        }
    }

    /// The status AWS names so.
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the execution has ended.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Queued | Status::InProgress)
    }

    /// Whether it counts as a failure for the abort threshold (AWS's failure type `ALL`).
    fn is_failure(self) -> bool {
        matches!(self, Status::Failed | Status::Rejected | Status::TimedOut)
    }

    /// Whether it counts as executed for the abort threshold: ended by the device or its timer.
    fn is_executed(self) -> bool {
        self.is_failure() || self == Status::Succeeded
    }
}

/// A job's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobStatus {
    /// Rolling out, or waiting for its executions to end.
    InProgress,
    /// Canceled by the operator or aborted by its abort threshold.
    Canceled,
    /// Every execution of a snapshot job has ended.
    Completed,
}

impl JobStatus {
    /// AWS's name of the status.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::InProgress => "IN_PROGRESS",
            JobStatus::Canceled => "CANCELED",
            JobStatus::Completed => "COMPLETED",
        }
    }

    /// The status AWS names so.
    pub fn parse(s: &str) -> Option<JobStatus> {
        [
            JobStatus::InProgress,
            JobStatus::Canceled,
            JobStatus::Completed,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// Which things a job is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Targets {
    /// These things (a snapshot job).
    Things(Vec<String>),
    /// Every thing whose name matches this glob (a continuous job).
    Pattern(String),
}

/// When a job is aborted (see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Abort {
    /// Percentage (0 to 100, exclusive of 0) of ended executions that failed.
    pub threshold_percent: f64,
    /// Executions that must have ended before the threshold is looked at (at least 1).
    pub min_executed: u32,
}

/// A job as the operator creates it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Its id (AWS's `jobId` rule).
    pub id: String,
    /// The job document: a JSON object, handed to the devices as it is.
    pub document: Value,
    /// Who runs it.
    pub targets: Targets,
    /// Executions rolled out per minute at most; `None`: all at once.
    pub rollout_per_minute: Option<u32>,
    /// When to abort it.
    pub abort: Option<Abort>,
    /// AWS's `inProgressTimeoutInMinutes`: an execution in progress longer is `TIMED_OUT`.
    pub timeout_minutes: Option<u32>,
}

/// A job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// What the operator asked for.
    pub spec: JobSpec,
    /// Creation order.
    pub seq: u64,
    /// Its status.
    pub status: JobStatus,
    /// Why it was canceled (the operator, or the abort threshold with its figures).
    pub reason: Option<String>,
    /// When it was created (Unix ms).
    pub created_at: u64,
    /// When it last changed (Unix ms).
    pub updated_at: u64,
}

/// One job's execution on one thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution {
    /// The job's id.
    pub job: String,
    /// The thing.
    pub thing: String,
    /// Creation order across all jobs: which pending execution is next.
    pub seq: u64,
    /// Its status; `None` while it waits for the rollout (invisible to the device).
    pub status: Option<Status>,
    /// The device's `statusDetails`.
    pub details: BTreeMap<String, String>,
    /// AWS's `versionNumber` (0 before the rollout).
    pub version: u64,
    /// When it was rolled out (Unix ms).
    pub queued_at: Option<u64>,
    /// When it went `IN_PROGRESS` (Unix ms).
    pub started_at: Option<u64>,
    /// When it last changed (Unix ms).
    pub updated_at: u64,
    /// When its step timer runs out (Unix ms), if the device set one.
    pub step_deadline: Option<u64>,
}

impl Execution {
    fn pending(&self) -> bool {
        matches!(self.status, Some(Status::Queued | Status::InProgress))
    }

    fn bump(&mut self, now: u64) {
        self.version += 1;
        self.updated_at = now;
    }
}

/// An execution and its job's document, as the device-facing answers show it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionView {
    /// The execution.
    pub execution: Execution,
    /// Its job's document.
    pub document: Value,
    /// Milliseconds left before a timer times it out, while one runs.
    pub ms_before_timeout: Option<u64>,
}

/// The error codes of AWS's `ErrorResponse` that the service answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The topic is in the jobs namespace but names no valid thing or job.
    InvalidTopic,
    /// The payload is not UTF-8 JSON.
    InvalidJson,
    /// The request's contents are invalid.
    InvalidRequest,
    /// The update is not allowed from the execution's status.
    InvalidStateTransition,
    /// No such execution (for this thing, of this number, rolled out).
    ResourceNotFound,
    /// `expectedVersion` is not the execution's version.
    VersionMismatch,
    /// The store failed; nothing of the request was kept.
    InternalError,
    /// A describe of an ended execution.
    TerminalStateReached,
}

impl ErrorCode {
    /// AWS's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidTopic => "InvalidTopic",
            ErrorCode::InvalidJson => "InvalidJson",
            ErrorCode::InvalidRequest => "InvalidRequest",
            ErrorCode::InvalidStateTransition => "InvalidStateTransition",
            ErrorCode::ResourceNotFound => "ResourceNotFound",
            ErrorCode::VersionMismatch => "VersionMismatch",
            ErrorCode::InternalError => "InternalError",
            ErrorCode::TerminalStateReached => "TerminalStateReached",
        }
    }
}

/// A refused request: its code, a message, and (for `VersionMismatch` and
/// `InvalidStateTransition`) the execution's state as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The error code.
    pub code: ErrorCode,
    /// What was wrong.
    pub message: String,
    /// The execution as it is, for the codes AWS sends it with.
    pub state: Option<Box<Execution>>,
}

impl Rejection {
    /// A rejection without an execution state.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Rejection {
        Rejection {
            code,
            message: message.into(),
            state: None,
        }
    }

    fn with_state(code: ErrorCode, message: impl Into<String>, state: &Execution) -> Rejection {
        Rejection {
            code,
            message: message.into(),
            state: Some(Box::new(state.clone())),
        }
    }
}

/// What StartNextPendingJobExecution asks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartNext {
    /// Status details to set on a queued execution it starts.
    pub details: Option<BTreeMap<String, String>>,
    /// A step timer, in minutes.
    pub step_timeout_minutes: Option<u32>,
}

/// What UpdateJobExecution asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The new status: `IN_PROGRESS`, `SUCCEEDED`, `FAILED` or `REJECTED`.
    pub status: Status,
    /// New status details (replacing the old ones), or `None` to keep them.
    pub details: Option<BTreeMap<String, String>>,
    /// The version the device believes the execution has.
    pub expected_version: Option<u64>,
    /// The execution number the device names.
    pub execution_number: Option<u64>,
    /// A new step timer, in minutes (with `IN_PROGRESS`).
    pub step_timeout_minutes: Option<u32>,
}

/// Why a job cannot be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    /// Something in the spec is not acceptable; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// A job with this id exists (ended ones included: ids are never reused, as in AWS).
    #[error("a job `{0}` exists already")]
    Exists(String),
    /// [`Limits::max_active_jobs`] jobs are in progress.
    #[error("{0} jobs are in progress, the most the gateway runs at once; cancel one or wait")]
    TooMany(usize),
}

/// Why a job cannot be canceled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CancelError {
    /// No job with this id.
    #[error("no job `{0}`")]
    NotFound(String),
    /// It has already ended.
    #[error("job `{0}` is {1} already")]
    Ended(String, &'static str),
}

/// The budgets of the core: what an operator's job or a device's requests can make it hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Jobs in progress at once.
    pub max_active_jobs: usize,
    /// Executions one job may have: its target list, or the things its pattern adopts. A device
    /// on a listener where any thing name may be used cannot grow a pattern job past it.
    pub max_executions_per_job: usize,
    /// Largest job document (compact JSON): AWS's 32 KB.
    pub max_document_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_active_jobs: 100,
            max_executions_per_job: 10_000,
            max_document_bytes: 32 * 1024,
        }
    }
}

/// What a batch changed, to persist before any answer is published, and the notifications it
/// causes.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Effects {
    /// Jobs created or changed.
    pub jobs: Vec<Job>,
    /// Executions created or changed.
    pub executions: Vec<Execution>,
    /// JobExecutionsChanged: things whose set of pending executions changed, with that set
    /// (in progress and queued, in order).
    pub notify: Vec<(String, Vec<Execution>)>,
    /// NextJobExecutionChanged: things whose next pending execution changed, with the new one.
    pub notify_next: Vec<(String, Option<ExecutionView>)>,
    /// Executions that timed out in this batch.
    pub timed_out: u64,
    /// Jobs the abort threshold canceled in this batch.
    pub aborted: Vec<String>,
}

impl Effects {
    /// Whether anything must be written.
    pub fn writes(&self) -> bool {
        !self.jobs.is_empty() || !self.executions.is_empty()
    }
}

type Key = (String, String);

/// A thing's pending executions at a moment: the set, and which one is next.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    set: BTreeSet<String>,
    next: Option<String>,
}

/// Every job and execution, and what the current batch changed.
#[derive(Debug, Default)]
pub struct Jobs {
    limits: Limits,
    jobs: BTreeMap<String, Job>,
    /// Keyed by (thing, job): a thing's executions are one range.
    execs: BTreeMap<Key, Execution>,
    /// Executions per job (for the budget).
    per_job: BTreeMap<String, usize>,
    /// Compiled patterns of the pattern jobs.
    patterns: BTreeMap<String, glob::Pattern>,
    next_seq: u64,
    undo_jobs: BTreeMap<String, Option<Job>>,
    undo_execs: BTreeMap<Key, Option<Execution>>,
    before: BTreeMap<String, Pending>,
    timed_out: u64,
    aborted: Vec<String>,
}

impl Jobs {
    /// The core with what the store holds.
    pub fn restore(limits: Limits, jobs: Vec<Job>, executions: Vec<Execution>) -> Jobs {
        let mut core = Jobs {
            limits,
            ..Jobs::default()
        };
        for job in jobs {
            core.next_seq = core.next_seq.max(job.seq + 1);
            if let Targets::Pattern(p) = &job.spec.targets {
                if let Ok(pattern) = glob::Pattern::new(p) {
                    core.patterns.insert(job.spec.id.clone(), pattern);
                }
            }
            core.jobs.insert(job.spec.id.clone(), job);
        }
        for e in executions {
            core.next_seq = core.next_seq.max(e.seq + 1);
            *core.per_job.entry(e.job.clone()).or_default() += 1;
            core.execs.insert((e.thing.clone(), e.job.clone()), e);
        }
        core
    }

    /// Every job, oldest first.
    pub fn jobs(&self) -> Vec<&Job> {
        let mut jobs: Vec<&Job> = self.jobs.values().collect();
        jobs.sort_by_key(|j| j.seq);
        jobs
    }

    /// One job.
    pub fn job(&self, id: &str) -> Option<&Job> {
        self.jobs.get(id)
    }

    /// A job's executions, in creation order.
    pub fn executions_of(&self, job: &str) -> Vec<&Execution> {
        let mut execs: Vec<&Execution> = self.execs.values().filter(|e| e.job == job).collect();
        execs.sort_by_key(|e| e.seq);
        execs
    }

    /// Executions by status (`None`: waiting for the rollout), across jobs, and jobs by status:
    /// the gauges.
    pub fn counts(&self) -> (BTreeMap<Option<Status>, u64>, BTreeMap<JobStatus, u64>) {
        let mut execs = BTreeMap::new();
        for e in self.execs.values() {
            *execs.entry(e.status).or_default() += 1;
        }
        let mut jobs = BTreeMap::new();
        for j in self.jobs.values() {
            *jobs.entry(j.status).or_default() += 1;
        }
        (execs, jobs)
    }

    // ---- the operator ----

    /// Creates a job; `known` are things the gateway knows, which a pattern job targets at once
    /// when they match (besides the things that have executions already).
    pub fn create(&mut self, spec: JobSpec, known: &[String], now: u64) -> Result<(), CreateError> {
        self.check_spec(&spec)?;
        let id = spec.id.clone();
        let things: Vec<String> = match &spec.targets {
            Targets::Things(list) => {
                let mut seen = BTreeSet::new();
                list.iter().filter(|t| seen.insert(*t)).cloned().collect()
            }
            Targets::Pattern(p) => {
                let pattern = glob::Pattern::new(p)
                    .map_err(|e| CreateError::Invalid(format!("thing pattern {p:?}: {e}")))?;
                let mut things: BTreeSet<String> =
                    self.execs.keys().map(|(thing, _)| thing.clone()).collect();
                things.extend(known.iter().cloned());
                self.patterns.insert(id.clone(), pattern.clone());
                things
                    .into_iter()
                    .filter(|t| pattern.matches(t) && validate_thing_name(t).is_ok())
                    .take(self.limits.max_executions_per_job)
                    .collect()
            }
        };
        let job = Job {
            spec,
            seq: self.seq(),
            status: JobStatus::InProgress,
            reason: None,
            created_at: now,
            updated_at: now,
        };
        self.undo_jobs.entry(id.clone()).or_insert(None);
        self.jobs.insert(id.clone(), job);
        for thing in things {
            self.add_execution(&id, thing, now);
        }
        self.release(&id, now);
        Ok(())
    }

    fn check_spec(&self, spec: &JobSpec) -> Result<(), CreateError> {
        let invalid = |m: String| Err(CreateError::Invalid(m));
        if let Err(e) = validate_job_id(&spec.id) {
            return invalid(format!("job id {:?}: {e}", spec.id));
        }
        if self.jobs.contains_key(&spec.id) {
            return Err(CreateError::Exists(spec.id.clone()));
        }
        let active = self
            .jobs
            .values()
            .filter(|j| j.status == JobStatus::InProgress)
            .count();
        if active >= self.limits.max_active_jobs {
            return Err(CreateError::TooMany(active));
        }
        if !spec.document.is_object() {
            return invalid("the job document must be a JSON object".into());
        }
        let size = spec.document.to_string().len();
        if size > self.limits.max_document_bytes {
            return invalid(format!(
                "the job document is {size} bytes; the most is {}",
                self.limits.max_document_bytes
            ));
        }
        match &spec.targets {
            Targets::Things(list) => {
                if list.is_empty() {
                    return invalid("no targets".into());
                }
                if list.len() > self.limits.max_executions_per_job {
                    return invalid(format!(
                        "{} targets; a job has at most {}",
                        list.len(),
                        self.limits.max_executions_per_job
                    ));
                }
                if let Some((t, e)) = list
                    .iter()
                    .find_map(|t| validate_thing_name(t).err().map(|e| (t, e)))
                {
                    return invalid(format!("target {t:?}: {e}"));
                }
            }
            Targets::Pattern(p) => {
                if let Err(e) = glob::Pattern::new(p) {
                    return invalid(format!("thing pattern {p:?}: {e}"));
                }
            }
        }
        if let Some(n) = spec.rollout_per_minute {
            if !(1..=MAX_ROLLOUT_PER_MINUTE).contains(&n) {
                return invalid(format!(
                    "rollout per minute {n}: from 1 to {MAX_ROLLOUT_PER_MINUTE}"
                ));
            }
        }
        if let Some(a) = &spec.abort {
            if !(a.threshold_percent > 0.0 && a.threshold_percent <= 100.0) {
                return invalid(format!(
                    "abort threshold {}%: above 0 and at most 100",
                    a.threshold_percent
                ));
            }
            if a.min_executed == 0 {
                return invalid("abort minimum: at least 1 execution".into());
            }
        }
        if let Some(m) = spec.timeout_minutes {
            if !(1..=MAX_TIMEOUT_MINUTES).contains(&m) {
                return invalid(format!(
                    "timeout {m} minutes: from 1 to {MAX_TIMEOUT_MINUTES}"
                ));
            }
        }
        Ok(())
    }

    /// Cancels a job: its executions not rolled out or queued are canceled, and with `force`
    /// those in progress too (AWS's `CancelJob` and its `force`).
    pub fn cancel(&mut self, id: &str, force: bool, now: u64) -> Result<(), CancelError> {
        let job = self
            .jobs
            .get(id)
            .ok_or_else(|| CancelError::NotFound(id.to_owned()))?;
        if job.status != JobStatus::InProgress {
            return Err(CancelError::Ended(id.to_owned(), job.status.as_str()));
        }
        let reason = if force {
            "canceled by the operator (forced)"
        } else {
            "canceled by the operator"
        };
        self.end_job(id, force, reason.to_owned(), now);
        Ok(())
    }

    // ---- the devices ----

    /// GetPendingJobExecutions: the thing's executions in progress and queued, each in order.
    pub fn get_pending(&mut self, thing: &str, now: u64) -> (Vec<Execution>, Vec<Execution>) {
        self.adopt(thing, now);
        let pending = self.pending_of(thing);
        pending
            .into_iter()
            .cloned()
            .partition(|e| e.status == Some(Status::InProgress))
    }

    /// StartNextPendingJobExecution: the next pending execution, started if it was queued;
    /// `None` when nothing is pending.
    pub fn start_next(&mut self, thing: &str, req: StartNext, now: u64) -> Option<ExecutionView> {
        self.adopt(thing, now);
        let key = self.next_of(thing)?;
        let e = self.exec_mut(&key);
        if e.status == Some(Status::Queued) {
            e.status = Some(Status::InProgress);
            e.started_at = Some(now);
            if let Some(details) = req.details {
                e.details = details;
            }
            e.step_deadline = req
                .step_timeout_minutes
                .map(|m| now + u64::from(m) * 60_000);
            e.bump(now);
        }
        self.view(&key, now)
    }

    /// DescribeJobExecution.
    pub fn describe(
        &mut self,
        thing: &str,
        job: Option<&str>,
        execution_number: Option<u64>,
        now: u64,
    ) -> Result<Option<ExecutionView>, Rejection> {
        self.adopt(thing, now);
        let Some(job) = job else {
            return Ok(self.next_of(thing).and_then(|k| self.view(&k, now)));
        };
        let key = self.found(thing, job, execution_number)?;
        let e = &self.execs[&key];
        if let Some(status) = e.status.filter(|s| s.is_terminal()) {
            return Err(Rejection::new(
                ErrorCode::TerminalStateReached,
                format!(
                    "the execution of job {job} on {thing} has ended: {}",
                    status.as_str()
                ),
            ));
        }
        Ok(self.view(&key, now))
    }

    /// UpdateJobExecution: the execution as updated, and its job's document.
    pub fn update(
        &mut self,
        thing: &str,
        job: &str,
        req: Update,
        now: u64,
    ) -> Result<ExecutionView, Rejection> {
        self.adopt(thing, now);
        if !matches!(
            req.status,
            Status::InProgress | Status::Succeeded | Status::Failed | Status::Rejected
        ) {
            return Err(Rejection::new(
                ErrorCode::InvalidRequest,
                format!(
                    "status {}: a device sets IN_PROGRESS, SUCCEEDED, FAILED or REJECTED",
                    req.status.as_str()
                ),
            ));
        }
        let key = self.found(thing, job, req.execution_number)?;
        let e = &self.execs[&key];
        if let Some(expected) = req.expected_version {
            if expected != e.version {
                return Err(Rejection::with_state(
                    ErrorCode::VersionMismatch,
                    format!(
                        "expected version {expected}, the execution is at {}",
                        e.version
                    ),
                    e,
                ));
            }
        }
        let from = e.status.unwrap_or(Status::Queued);
        if from.is_terminal() {
            return Err(Rejection::with_state(
                ErrorCode::InvalidStateTransition,
                format!(
                    "the execution is {}: it cannot become {}",
                    from.as_str(),
                    req.status.as_str()
                ),
                e,
            ));
        }
        let e = self.exec_mut(&key);
        e.status = Some(req.status);
        if req.status == Status::InProgress {
            e.started_at.get_or_insert(now);
            if let Some(m) = req.step_timeout_minutes {
                e.step_deadline = Some(now + u64::from(m) * 60_000);
            }
        } else {
            e.step_deadline = None;
        }
        if let Some(details) = req.details {
            e.details = details;
        }
        e.bump(now);
        if req.status.is_terminal() {
            self.ended(job, now);
        }
        Ok(self.view(&key, now).expect("the execution exists"))
    }

    // ---- time ----

    /// When [`Jobs::handle_timeout`] has something to do: the earliest timer of an execution in
    /// progress, or the next rollout slot of a job with executions waiting.
    pub fn poll_timeout(&self) -> Option<u64> {
        let timers = self.execs.values().filter_map(|e| self.deadline(e));
        let rollouts = self
            .jobs
            .values()
            .filter(|j| j.status == JobStatus::InProgress)
            .filter_map(|j| self.next_release(&j.spec.id));
        timers.chain(rollouts).min()
    }

    /// Times out the executions whose timer ran out and rolls out what the rollout rate allows.
    pub fn handle_timeout(&mut self, now: u64) {
        let expired: Vec<Key> = self
            .execs
            .iter()
            .filter(|(_, e)| self.deadline(e).is_some_and(|d| d <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            let e = self.exec_mut(&key);
            e.status = Some(Status::TimedOut);
            e.step_deadline = None;
            e.bump(now);
            self.timed_out += 1;
            self.ended(&key.1, now);
        }
        let rolling: Vec<String> = self
            .jobs
            .values()
            .filter(|j| j.status == JobStatus::InProgress)
            .map(|j| j.spec.id.clone())
            .collect();
        for id in rolling {
            self.release(&id, now);
        }
    }

    // ---- the batch ----

    /// What the batch changed and the notifications it causes. Call [`Jobs::settle`] once the
    /// changes are durable, or [`Jobs::rollback`] if they could not be written.
    pub fn take_effects(&mut self, now: u64) -> Effects {
        let jobs = changed(&self.undo_jobs, &self.jobs);
        let executions = changed(&self.undo_execs, &self.execs);
        let mut notify = Vec::new();
        let mut notify_next = Vec::new();
        for (thing, before) in &self.before {
            let after = self.pending_view(thing);
            if after.set != before.set {
                notify.push((
                    thing.clone(),
                    self.pending_of(thing).into_iter().cloned().collect(),
                ));
            }
            if after.next != before.next {
                let next = after
                    .next
                    .and_then(|job| self.view(&(thing.clone(), job), now));
                notify_next.push((thing.clone(), next));
            }
        }
        Effects {
            jobs,
            executions,
            notify,
            notify_next,
            timed_out: self.timed_out,
            aborted: self.aborted.clone(),
        }
    }

    /// The batch's changes are durable: forget how to undo them.
    pub fn settle(&mut self) {
        self.undo_jobs.clear();
        self.undo_execs.clear();
        self.before.clear();
        self.timed_out = 0;
        self.aborted.clear();
    }

    /// The batch's changes could not be written: take them all back.
    pub fn rollback(&mut self) {
        for (id, old) in std::mem::take(&mut self.undo_jobs) {
            match old {
                Some(job) => self.jobs.insert(id, job),
                None => {
                    self.patterns.remove(&id);
                    self.jobs.remove(&id)
                }
            };
        }
        for (key, old) in std::mem::take(&mut self.undo_execs) {
            match old {
                Some(e) => self.execs.insert(key, e),
                None => self.execs.remove(&key),
            };
        }
        self.per_job.clear();
        for e in self.execs.values() {
            *self.per_job.entry(e.job.clone()).or_default() += 1;
        }
        self.settle();
    }

    // ---- inside ----

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq - 1
    }

    /// A thing's pending executions, in progress first, each group in creation order.
    fn pending_of(&self, thing: &str) -> Vec<&Execution> {
        let mut pending: Vec<&Execution> = self
            .execs
            .range((thing.to_owned(), String::new())..)
            .take_while(|((t, _), _)| t == thing)
            .map(|(_, e)| e)
            .filter(|e| e.pending())
            .collect();
        pending.sort_by_key(|e| (e.status != Some(Status::InProgress), e.seq));
        pending
    }

    fn pending_view(&self, thing: &str) -> Pending {
        let pending = self.pending_of(thing);
        Pending {
            next: pending.first().map(|e| e.job.clone()),
            set: pending.into_iter().map(|e| e.job.clone()).collect(),
        }
    }

    fn next_of(&self, thing: &str) -> Option<Key> {
        self.pending_of(thing)
            .first()
            .map(|e| (e.thing.clone(), e.job.clone()))
    }

    /// The rolled-out execution a request names, or `ResourceNotFound`.
    fn found(&self, thing: &str, job: &str, number: Option<u64>) -> Result<Key, Rejection> {
        let key = (thing.to_owned(), job.to_owned());
        match self.execs.get(&key) {
            Some(e) if e.status.is_some() && number.is_none_or(|n| n == EXECUTION_NUMBER) => {
                Ok(key)
            }
            Some(e) if e.status.is_some() => Err(Rejection::new(
                ErrorCode::ResourceNotFound,
                format!(
                    "job {job} has no execution number {} on {thing}",
                    number.unwrap_or_default()
                ),
            )),
            _ => Err(Rejection::new(
                ErrorCode::ResourceNotFound,
                format!("no execution of job {job} on {thing}"),
            )),
        }
    }

    fn view(&self, key: &Key, now: u64) -> Option<ExecutionView> {
        let e = self.execs.get(key)?;
        let job = self.jobs.get(&e.job)?;
        Some(ExecutionView {
            execution: e.clone(),
            document: job.spec.document.clone(),
            ms_before_timeout: self.deadline(e).map(|d| d.saturating_sub(now)),
        })
    }

    /// When an execution in progress times out: the earlier of its in-progress timer (from
    /// `startedAt`) and its step timer ("The step timer can't exceed the in-progress timer's
    /// absolute bound").
    fn deadline(&self, e: &Execution) -> Option<u64> {
        if e.status != Some(Status::InProgress) {
            return None;
        }
        let job = self.jobs.get(&e.job)?;
        let in_progress = job
            .spec
            .timeout_minutes
            .zip(e.started_at)
            .map(|(m, started)| started + u64::from(m) * 60_000);
        match (in_progress, e.step_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn touch(&mut self, thing: &str) {
        if !self.before.contains_key(thing) {
            let view = self.pending_view(thing);
            self.before.insert(thing.to_owned(), view);
        }
    }

    fn exec_mut(&mut self, key: &Key) -> &mut Execution {
        self.touch(&key.0);
        let old = self.execs.get(key).cloned();
        self.undo_execs.entry(key.clone()).or_insert(old);
        self.execs.get_mut(key).expect("an existing execution")
    }

    fn job_mut(&mut self, id: &str) -> &mut Job {
        let old = self.jobs.get(id).cloned();
        self.undo_jobs.entry(id.to_owned()).or_insert(old);
        self.jobs.get_mut(id).expect("an existing job")
    }

    fn add_execution(&mut self, job: &str, thing: String, now: u64) {
        let key = (thing.clone(), job.to_owned());
        self.touch(&thing);
        self.undo_execs.entry(key.clone()).or_insert(None);
        let seq = self.seq();
        self.execs.insert(
            key,
            Execution {
                job: job.to_owned(),
                thing,
                seq,
                status: None,
                details: BTreeMap::new(),
                version: 0,
                queued_at: None,
                started_at: None,
                updated_at: now,
                step_deadline: None,
            },
        );
        *self.per_job.entry(job.to_owned()).or_default() += 1;
    }

    /// Gives `thing` an execution of every pattern job in progress that matches it and has
    /// none for it yet (within the job's budget), and rolls them out as the rate allows.
    fn adopt(&mut self, thing: &str, now: u64) {
        let adopting: Vec<String> = self
            .patterns
            .iter()
            .filter(|(id, pattern)| {
                self.jobs
                    .get(*id)
                    .is_some_and(|j| j.status == JobStatus::InProgress)
                    && pattern.matches(thing)
                    && !self.execs.contains_key(&(thing.to_owned(), (*id).clone()))
                    && self.per_job.get(*id).copied().unwrap_or(0)
                        < self.limits.max_executions_per_job
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in adopting {
            self.add_execution(&id, thing.to_owned(), now);
            self.release(&id, now);
        }
    }

    /// When each of a job's executions was rolled out.
    fn rollout_times(&self, job: &str) -> impl Iterator<Item = u64> + '_ {
        let job = job.to_owned();
        self.execs
            .values()
            .filter(move |e| e.job == job)
            .filter_map(|e| e.queued_at)
    }

    fn waiting(&self, job: &str) -> Vec<Key> {
        let mut waiting: Vec<&Execution> = self
            .execs
            .values()
            .filter(|e| e.job == job && e.status.is_none())
            .collect();
        waiting.sort_by_key(|e| e.seq);
        waiting
            .into_iter()
            .map(|e| (e.thing.clone(), e.job.clone()))
            .collect()
    }

    /// Rolls out as many of the job's waiting executions as its rate allows now.
    fn release(&mut self, job: &str, now: u64) {
        let Some(j) = self.jobs.get(job) else { return };
        if j.status != JobStatus::InProgress {
            return;
        }
        let allowed = match j.spec.rollout_per_minute {
            None => usize::MAX,
            Some(n) => {
                let recent = self
                    .rollout_times(job)
                    .filter(|&at| at + ROLLOUT_WINDOW_MS > now)
                    .count();
                (n as usize).saturating_sub(recent)
            }
        };
        for key in self.waiting(job).into_iter().take(allowed) {
            let e = self.exec_mut(&key);
            e.status = Some(Status::Queued);
            e.queued_at = Some(now);
            e.version = 1;
            e.updated_at = now;
        }
    }

    /// When the job's rate next allows a rollout, if executions wait for one.
    fn next_release(&self, job: &str) -> Option<u64> {
        if self.waiting(job).is_empty() {
            return None;
        }
        let n = self.jobs.get(job)?.spec.rollout_per_minute? as usize;
        // A slot frees when the n-th most recent rollout leaves the window; with fewer than n
        // rollouts so far (only after a restart, before the first timeout) one is free now.
        let mut times: Vec<u64> = self.rollout_times(job).collect();
        times.sort_unstable_by(|a, b| b.cmp(a));
        Some(times.get(n - 1).map_or(0, |t| t + ROLLOUT_WINDOW_MS))
    }

    /// One of the job's executions ended: the abort threshold and the job's completion.
    fn ended(&mut self, job: &str, now: u64) {
        let Some(j) = self.jobs.get(job) else { return };
        if j.status != JobStatus::InProgress {
            return;
        }
        let statuses: Vec<Option<Status>> = self
            .execs
            .values()
            .filter(|e| e.job == job)
            .map(|e| e.status)
            .collect();
        if let Some(abort) = &j.spec.abort {
            let executed = statuses
                .iter()
                .flatten()
                .filter(|s| s.is_executed())
                .count();
            let failed = statuses.iter().flatten().filter(|s| s.is_failure()).count();
            if executed >= abort.min_executed as usize
                && failed as f64 * 100.0 >= abort.threshold_percent * executed as f64
            {
                let reason = format!(
                    "aborted: {failed} of {executed} ended executions failed (threshold {}%)",
                    abort.threshold_percent
                );
                self.aborted.push(job.to_owned());
                self.end_job(job, false, reason, now);
                return;
            }
        }
        let snapshot = matches!(j.spec.targets, Targets::Things(_));
        if snapshot && statuses.iter().all(|s| s.is_some_and(Status::is_terminal)) {
            let j = self.job_mut(job);
            j.status = JobStatus::Completed;
            j.updated_at = now;
        }
    }

    /// Cancels a job and its executions not started (and, with `force`, those in progress).
    fn end_job(&mut self, job: &str, force: bool, reason: String, now: u64) {
        let j = self.job_mut(job);
        j.status = JobStatus::Canceled;
        j.reason = Some(reason);
        j.updated_at = now;
        let canceled: Vec<Key> = self
            .execs
            .iter()
            .filter(|(_, e)| {
                e.job == job
                    && match e.status {
                        None | Some(Status::Queued) => true,
                        Some(Status::InProgress) => force,
                        Some(_) => false,
                    }
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in canceled {
            let e = self.exec_mut(&key);
            let rolled_out = e.status.is_some();
            e.status = Some(Status::Canceled);
            e.step_deadline = None;
            if rolled_out {
                e.bump(now);
            } else {
                e.updated_at = now;
            }
        }
    }
}

/// The values of `now` whose keys `undo` holds and that differ from what `undo` kept: what a batch
/// created or changed.
fn changed<K: Ord, V: Clone + PartialEq>(
    undo: &BTreeMap<K, Option<V>>,
    now: &BTreeMap<K, V>,
) -> Vec<V> {
    undo.iter()
        .filter_map(|(k, old)| now.get(k).filter(|v| Some(*v) != old.as_ref()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests;
