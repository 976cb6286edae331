//! The device side of AWS IoT Jobs' MQTT API, so that AWS IoT Jobs (its rollout rates, abort
//! thresholds and timeouts) steers a fleet of gateways (pure: messages and `now` in, requests
//! out; the shell, [`crate::cloud`], rides on the cloud link).
//!
//! From AWS's documentation (AWS IoT Core Developer Guide):
//! - "Jobs device MQTT API operations" (<https://docs.aws.amazon.com/iot/latest/developerguide/jobs-mqtt-api.html>):
//!   `StartNextPendingJobExecution` on `$aws/things/{thing}/jobs/start-next` (an `IN_PROGRESS`
//!   execution first, else the oldest `QUEUED`, which becomes `IN_PROGRESS`; no `execution` when
//!   none is pending), `UpdateJobExecution` on `.../jobs/{jobId}/update` (`status` one of
//!   `IN_PROGRESS`, `FAILED`, `SUCCEEDED`, `REJECTED`; `statusDetails`; `expectedVersion`,
//!   rejected with `VersionMismatch` and the current `executionState` when it is not the
//!   execution's version; `includeJobExecutionState` for the new version in the answer), answers
//!   on `.../accepted` and `.../rejected`, `clientToken` reflected in them.
//! - "AWS IoT jobs APIs", ErrorResponse (<https://docs.aws.amazon.com/iot/latest/developerguide/jobs-api.html>):
//!   the error codes, and `executionState` with `VersionMismatch` and `InvalidStateTransition`.
//! - "Jobs notifications" (<https://docs.aws.amazon.com/iot/latest/developerguide/jobs-comm-notifications.html>):
//!   `notify-next` carries the next pending execution whenever it changes (nothing when the queue
//!   is empty), with its job document as JSON.
//! - API reference, `StartNextPendingJobExecution`: a `statusDetails` value is 1 to 1,024
//!   characters without control characters, a key `[a-zA-Z0-9:_-]+`.
//!
//! How Grove uses it:
//! - The job document is a deployment document ([`crate::document`], `format: 1`) as it is, so
//!   the file given to `grove deploy apply` is the one given to `aws iot create-job --document`.
//! - `start-next` on every connection (a job queued while the gateway was offline is taken then)
//!   and on a `notify-next` naming a job other than the one in hand. The job's deployment goes to
//!   the deployments' machine ([`Output::Apply`]), the same as one from `grove deploy`; its steps
//!   are reported as `IN_PROGRESS` with `statusDetails` `{deployment, step}`, its end as
//!   `SUCCEEDED` (committed) or `FAILED` (rolled back, failed, superseded) with the `reason`; a
//!   document that is refused outright (not a deployment, an id already in the history) is
//!   `REJECTED` with the reason.
//! - Every update carries `expectedVersion`. A `VersionMismatch` whose execution state already
//!   has the terminal status sent was a resend that had arrived; one with another terminal status is a job the
//!   cloud ended (cancelled, timed out, removed): it is let go and the next one asked for; else
//!   the update is sent again at the new version.
//! - Requests go at QoS 0 (the answer is the acknowledgement: the cloud outbox owns the link's
//!   QoS 1 packet ids) and are sent again, with the same client token, when unanswered after
//!   [`REQUEST_TIMEOUT`] or after a throttled answer, and on every new connection. One update is
//!   in flight at a time; a newer one waiting replaces an older one, so a slow link reports the
//!   latest step. Client tokens carry the shell's tag (its start time), so an answer to a request
//!   of an earlier run, queued in the persistent session, is not mistaken for one of this run.
//! - After a restart the job is simply taken again: `start-next` returns the `IN_PROGRESS`
//!   execution with its document, the deployments' history knows the deployment by that job
//!   (resumed, rolled back, or finished by the machine's own recovery) and its step is reported.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::machine::Phase;

/// A request unanswered this long is sent again.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The wait before sending again a request the cloud refused as throttled or failed internally.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Longest `statusDetails` value AWS takes.
const MAX_DETAIL: usize = 1024;

/// A job execution's status, as the API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecStatus {
    /// Being executed.
    InProgress,
    /// Done: the deployment is committed.
    Succeeded,
    /// Done: the deployment did not commit (why in `statusDetails.reason`).
    Failed,
    /// Refused without trying (why in `statusDetails.reason`).
    Rejected,
}

impl ExecStatus {
    /// The API's name.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecStatus::InProgress => "IN_PROGRESS",
            ExecStatus::Succeeded => "SUCCEEDED",
            ExecStatus::Failed => "FAILED",
            ExecStatus::Rejected => "REJECTED",
        }
    }

    fn is_terminal(self) -> bool {
        self != ExecStatus::InProgress
    }
}

/// Whether a status named by the cloud is terminal ("Jobs notifications": `FAILED`,
/// `SUCCEEDED`, `CANCELED`, `TIMED_OUT`, `REJECTED`, `REMOVED`).
fn terminal_name(status: &str) -> bool {
    matches!(
        status,
        "FAILED" | "SUCCEEDED" | "CANCELED" | "TIMED_OUT" | "REJECTED" | "REMOVED"
    )
}

/// What the shell does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Publish a request on the cloud link (QoS 0).
    Publish {
        /// The topic.
        topic: String,
        /// The JSON request.
        payload: Vec<u8>,
    },
    /// Take the job's document as a deployment; answer with [`Jobs::taken`].
    Apply {
        /// The job.
        job: String,
        /// Its document.
        document: Vec<u8>,
    },
    /// The cloud accepted this status of the job.
    Reported {
        /// The job.
        job: String,
        /// The status.
        status: ExecStatus,
    },
    /// Something for the log: a refused request, a job the cloud ended.
    Warn(String),
}

/// What the shell shows of the jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// The job in hand: its id, its deployment once taken, and the last status the cloud accepted
    /// with its step.
    pub current: Option<(String, Option<String>, String)>,
    /// The last job that ended: its id, its status and why.
    pub last: Option<(String, String, Option<String>)>,
}

/// An update: a status and its details.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Report {
    status: ExecStatus,
    details: BTreeMap<String, String>,
}

/// A request sent and not answered yet.
#[derive(Debug, Clone)]
struct Pending {
    token: String,
    deadline: Instant,
}

/// The job in hand.
#[derive(Debug)]
struct Job {
    id: String,
    /// The execution's `versionNumber` as last known.
    version: u64,
    /// Its deployment, once the machine took it.
    deployment: Option<String>,
    /// Waiting for [`Jobs::taken`].
    applying: bool,
    /// The last report the cloud accepted.
    reported: Option<Report>,
    /// The next report to send.
    want: Option<Report>,
    /// The report sent and not answered.
    inflight: Option<(Pending, Report)>,
}

/// The Jobs client of one thing.
#[derive(Debug)]
pub struct Jobs {
    /// `$aws/things/{thing}/jobs/`.
    prefix: String,
    /// This run's part of the client tokens.
    tag: String,
    tokens: u64,
    online: bool,
    start_next: Option<Pending>,
    job: Option<Job>,
    last: Option<(String, String, Option<String>)>,
    out: VecDeque<Output>,
}

impl Jobs {
    /// The client of `thing`; `tag` (a few characters, different on every run) starts its client
    /// tokens.
    pub fn new(thing: &str, tag: &str) -> Jobs {
        Jobs {
            prefix: format!("$aws/things/{thing}/jobs/"),
            tag: tag.to_owned(),
            tokens: 0,
            online: false,
            start_next: None,
            job: None,
            last: None,
            out: VecDeque::new(),
        }
    }

    /// The cloud topic filters `thing`'s client subscribes to (AWS publishes the answers even
    /// without them; a broker standing in for AWS needs them).
    pub fn filters(thing: &str) -> Vec<String> {
        [
            "notify-next",
            "start-next/accepted",
            "start-next/rejected",
            "+/update/accepted",
            "+/update/rejected",
        ]
        .iter()
        .map(|t| format!("$aws/things/{thing}/jobs/{t}"))
        .collect()
    }

    /// What to show.
    pub fn view(&self) -> View {
        View {
            current: self.job.as_ref().map(|j| {
                let step = j.reported.as_ref().map_or_else(
                    || "taken".to_owned(),
                    |r| {
                        let step = r.details.get("step").map_or("", String::as_str);
                        format!("{} {step}", r.status.as_str())
                            .trim_end()
                            .to_owned()
                    },
                );
                (j.id.clone(), j.deployment.clone(), step)
            }),
            last: self.last.clone(),
        }
    }

    /// The deployment of the job in hand, if it was taken.
    pub fn deployment(&self) -> Option<&str> {
        self.job.as_ref().and_then(|j| j.deployment.as_deref())
    }

    /// The link is up: ask for the next job, send again what waits for an answer.
    pub fn connected(&mut self, now: Instant) {
        self.online = true;
        self.request_start_next(now);
        if let Some(job) = &mut self.job {
            // Unanswered when the link went down: sent again (a newer report waiting goes
            // instead). If the cloud had taken it, the resend meets a `VersionMismatch` showing
            // that status, which counts as its acknowledgement.
            if let Some((_, report)) = job.inflight.take() {
                job.want = Some(job.want.take().unwrap_or(report));
            }
        }
        self.pump(now);
    }

    /// The link is down: nothing is sent until it is up again.
    pub fn disconnected(&mut self) {
        self.online = false;
    }

    /// A message from the cloud on one of [`Jobs::filters`].
    pub fn message(&mut self, topic: &str, payload: &[u8], now: Instant) {
        let Some(rest) = topic.strip_prefix(&self.prefix) else {
            return;
        };
        let Ok(doc) = serde_json::from_slice::<Value>(payload) else {
            self.warn(format!("a message on {topic} is not JSON: ignored"));
            return;
        };
        match rest {
            "notify-next" => self.on_notify_next(&doc, now),
            "start-next/accepted" => self.on_start_next(&doc, now),
            "start-next/rejected" => self.on_start_next_rejected(&doc, now),
            _ => match rest.split_once('/') {
                Some((job, "update/accepted")) => self.on_update_accepted(job, &doc, now),
                Some((job, "update/rejected")) => self.on_update_rejected(job, &doc, now),
                _ => {}
            },
        }
    }

    /// The deployments' answer to [`Output::Apply`]: the deployment's id, or why its document was
    /// refused.
    pub fn taken(&mut self, job: &str, result: Result<String, String>, now: Instant) {
        let Some(j) = self.job.as_mut().filter(|j| j.id == job && j.applying) else {
            return;
        };
        j.applying = false;
        match result {
            Ok(deployment) => j.deployment = Some(deployment),
            Err(reason) => {
                j.want = Some(report(
                    ExecStatus::Rejected,
                    None,
                    "rejected",
                    Some(&reason),
                ));
            }
        }
        self.pump(now);
    }

    /// A deployment's step (from the machine's records): reported if it is the job's.
    pub fn progress(&mut self, deployment: &str, phase: Phase, reason: Option<&str>, now: Instant) {
        let Some(j) = self
            .job
            .as_mut()
            .filter(|j| j.deployment.as_deref() == Some(deployment))
        else {
            return;
        };
        let status = match phase {
            Phase::Committed => ExecStatus::Succeeded,
            Phase::RolledBack | Phase::Failed | Phase::Superseded => ExecStatus::Failed,
            _ => ExecStatus::InProgress,
        };
        // Once an end is on its way, nothing after it changes the job.
        let ended = [&j.want, &j.reported]
            .into_iter()
            .chain(std::iter::once(
                &j.inflight.as_ref().map(|(_, r)| r.clone()),
            ))
            .flatten()
            .any(|r| r.status.is_terminal());
        if ended {
            return;
        }
        let next = report(status, Some(deployment), phase.as_str(), reason);
        let latest = j
            .want
            .as_ref()
            .or(j.inflight.as_ref().map(|(_, r)| r))
            .or(j.reported.as_ref());
        if latest != Some(&next) {
            j.want = Some(next);
        }
        self.pump(now);
    }

    /// When [`Jobs::handle_timeout`] is next due (never while offline).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.online {
            return None;
        }
        let update = self
            .job
            .as_ref()
            .and_then(|j| j.inflight.as_ref())
            .map(|(p, _)| p.deadline);
        let start = self.start_next.as_ref().map(|p| p.deadline);
        update.into_iter().chain(start).min()
    }

    /// Sends again what is unanswered past its deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.online {
            return;
        }
        if let Some(p) = self.start_next.as_mut().filter(|p| p.deadline <= now) {
            p.deadline = now + REQUEST_TIMEOUT;
            let token = p.token.clone();
            self.send_start_next(token);
        }
        let resend = self.job.as_mut().and_then(|j| {
            let (p, r) = j.inflight.as_mut().filter(|(p, _)| p.deadline <= now)?;
            p.deadline = now + REQUEST_TIMEOUT;
            Some((j.id.clone(), j.version, p.token.clone(), r.clone()))
        });
        if let Some((id, version, token, report)) = resend {
            self.send_update(&id, version, &token, &report);
        }
    }

    /// The next thing for the shell to do.
    pub fn poll(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn warn(&mut self, message: String) {
        self.out.push_back(Output::Warn(message));
    }

    fn token(&mut self) -> String {
        self.tokens += 1;
        format!("{}-{}", self.tag, self.tokens)
    }

    fn request_start_next(&mut self, now: Instant) {
        let token = match &self.start_next {
            Some(p) => p.token.clone(),
            None => self.token(),
        };
        self.start_next = Some(Pending {
            token: token.clone(),
            deadline: now + REQUEST_TIMEOUT,
        });
        if self.online {
            self.send_start_next(token);
        }
    }

    fn send_start_next(&mut self, token: String) {
        let topic = format!("{}start-next", self.prefix);
        let payload = json!({ "clientToken": token }).to_string().into_bytes();
        self.out.push_back(Output::Publish { topic, payload });
    }

    fn send_update(&mut self, job: &str, version: u64, token: &str, report: &Report) {
        let topic = format!("{}{job}/update", self.prefix);
        let payload = json!({
            "status": report.status.as_str(),
            "statusDetails": report.details,
            "expectedVersion": version,
            "includeJobExecutionState": true,
            "clientToken": token,
        })
        .to_string()
        .into_bytes();
        self.out.push_back(Output::Publish { topic, payload });
    }

    /// Sends the waiting update if none is in flight.
    fn pump(&mut self, now: Instant) {
        let ready = self
            .job
            .as_ref()
            .is_some_and(|j| j.inflight.is_none() && j.want.is_some());
        if !self.online || !ready {
            return;
        }
        let token = self.token();
        let Some(j) = self.job.as_mut() else { return };
        let Some(report) = j.want.take() else { return };
        let (id, version) = (j.id.clone(), j.version);
        let pending = Pending {
            token: token.clone(),
            deadline: now + REQUEST_TIMEOUT,
        };
        j.inflight = Some((pending, report.clone()));
        self.send_update(&id, version, &token, &report);
    }

    fn on_notify_next(&mut self, doc: &Value, now: Instant) {
        let Some(next) = doc["execution"]["jobId"].as_str() else {
            return;
        };
        if self.job.as_ref().is_some_and(|j| j.id == next) || self.start_next.is_some() {
            return;
        }
        self.request_start_next(now);
    }

    fn on_start_next(&mut self, doc: &Value, now: Instant) {
        if !self.answers(&self.start_next, doc) {
            return;
        }
        self.start_next = None;
        let execution = &doc["execution"];
        let Some(id) = execution["jobId"].as_str() else {
            // Nothing pending in the cloud: the end sent for the job in hand got there, or the
            // job was ended there.
            let end = self.job.as_ref().and_then(|j| {
                let (_, r) = j.inflight.as_ref()?;
                r.status.is_terminal().then(|| r.clone())
            });
            match (end, self.job.take()) {
                (Some(report), Some(j)) => {
                    self.job = Some(j);
                    self.accepted(report, now);
                }
                (_, Some(j)) => self.let_go(j, "the cloud has no pending job"),
                _ => {}
            }
            return;
        };
        if !valid_job_id(id) {
            self.warn(format!(
                "start-next named a job id that is not a valid AWS IoT job id: {id:?}"
            ));
            return;
        }
        let version = execution["versionNumber"].as_u64().unwrap_or(0);
        if let Some(j) = self.job.as_mut().filter(|j| j.id == id) {
            j.version = j.version.max(version);
            self.pump(now);
            return;
        }
        if let Some(j) = self.job.take() {
            // The cloud hands out an `IN_PROGRESS` execution first: one it no longer has pending
            // was ended there.
            self.let_go(j, &format!("the cloud moved on to job {id}"));
        }
        let mut job = Job {
            id: id.to_owned(),
            version,
            deployment: None,
            applying: false,
            reported: None,
            want: None,
            inflight: None,
        };
        match &execution["jobDocument"] {
            document @ Value::Object(_) => {
                job.applying = true;
                self.out.push_back(Output::Apply {
                    job: id.to_owned(),
                    document: document.to_string().into_bytes(),
                });
            }
            _ => {
                job.want = Some(report(
                    ExecStatus::Rejected,
                    None,
                    "rejected",
                    Some("the job document is not a Grove deployment document (a JSON object)"),
                ));
            }
        }
        self.job = Some(job);
        self.pump(now);
    }

    fn on_start_next_rejected(&mut self, doc: &Value, now: Instant) {
        if !self.answers(&self.start_next, doc) {
            return;
        }
        let code = doc["code"].as_str().unwrap_or("unknown").to_owned();
        self.warn(format!(
            "the cloud refused start-next: {code}: {}",
            doc["message"].as_str().unwrap_or("")
        ));
        match code.as_str() {
            "RequestThrottled" | "InternalError" => {
                if let Some(p) = &mut self.start_next {
                    p.deadline = now + RETRY_AFTER;
                }
            }
            // Asking again would be refused again: the next notification or connection asks.
            _ => self.start_next = None,
        }
    }

    /// The update of `job` in flight that `doc` answers, taken out of flight.
    fn answered(&mut self, job: &str, doc: &Value) -> Option<(Pending, Report)> {
        let j = self.job.as_mut().filter(|j| j.id == job)?;
        let (pending, _) = j.inflight.as_ref()?;
        if doc["clientToken"].as_str() != Some(&pending.token) {
            return None;
        }
        j.inflight.take()
    }

    fn on_update_accepted(&mut self, job: &str, doc: &Value, now: Instant) {
        let Some((_, report)) = self.answered(job, doc) else {
            return;
        };
        if let Some(j) = &mut self.job {
            j.version = doc["executionState"]["versionNumber"]
                .as_u64()
                .unwrap_or(j.version + 1);
        }
        self.accepted(report, now);
    }

    /// The cloud has the job's status `report`.
    fn accepted(&mut self, report: Report, now: Instant) {
        let Some(j) = self.job.as_mut() else { return };
        let id = j.id.clone();
        self.out.push_back(Output::Reported {
            job: id.clone(),
            status: report.status,
        });
        if report.status.is_terminal() {
            self.last = Some((
                id,
                report.status.as_str().to_owned(),
                report.details.get("reason").cloned(),
            ));
            self.job = None;
            self.request_start_next(now);
            return;
        }
        j.reported = Some(report);
        self.pump(now);
    }

    fn on_update_rejected(&mut self, job: &str, doc: &Value, now: Instant) {
        let Some((pending, report)) = self.answered(job, doc) else {
            return;
        };
        let Some(j) = self.job.as_mut() else { return };
        let code = doc["code"].as_str().unwrap_or("unknown");
        let state = &doc["executionState"];
        let status = state["status"].as_str().unwrap_or("");
        match code {
            "VersionMismatch" | "InvalidStateTransition" => {
                if let Some(v) = state["versionNumber"].as_u64() {
                    j.version = v;
                }
                if report.status.is_terminal() && status == report.status.as_str() {
                    // An earlier send of this very end got there. (`IN_PROGRESS` says nothing
                    // of which step got there: that update goes again, harmlessly.)
                    self.accepted(report, now);
                } else if terminal_name(status) {
                    self.drop_job(&format!("the cloud ended it as {status}"), now);
                } else {
                    j.want = Some(j.want.take().unwrap_or(report));
                    self.pump(now);
                }
            }
            "RequestThrottled" | "InternalError" => {
                j.inflight = Some((
                    Pending {
                        deadline: now + RETRY_AFTER,
                        ..pending
                    },
                    report,
                ));
            }
            _ => {
                // The job is gone (ResourceNotFound) or the request can never be taken: nothing
                // more can be said about it.
                let why = format!(
                    "the cloud refused its {} update: {code}: {}",
                    report.status.as_str(),
                    doc["message"].as_str().unwrap_or("")
                );
                self.drop_job(&why, now);
            }
        }
    }

    /// Stops following a job (its deployment goes on by itself).
    fn let_go(&mut self, job: Job, why: &str) {
        self.warn(format!("job {}: no longer followed: {why}", job.id));
        self.last = Some((job.id, "not followed".to_owned(), Some(why.to_owned())));
    }

    /// Lets the job in hand go and asks for the next one.
    fn drop_job(&mut self, why: &str, now: Instant) {
        if let Some(j) = self.job.take() {
            self.let_go(j, why);
        }
        self.request_start_next(now);
    }

    /// Whether `doc` answers the request `pending`.
    fn answers(&self, pending: &Option<Pending>, doc: &Value) -> bool {
        pending
            .as_ref()
            .is_some_and(|p| doc["clientToken"].as_str() == Some(p.token.as_str()))
    }
}

/// "CreateJob": a job id is 1 to 64 of `[a-zA-Z0-9_-]` (so it is one topic level).
fn valid_job_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A report with `statusDetails` `{deployment, step, reason}`, each value as AWS takes it.
fn report(
    status: ExecStatus,
    deployment: Option<&str>,
    step: &str,
    reason: Option<&str>,
) -> Report {
    let details = [
        ("deployment", deployment),
        ("step", Some(step)),
        ("reason", reason),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k.to_owned(), detail(v?)?)))
    .collect();
    Report { status, details }
}

/// A `statusDetails` value: control characters (line breaks of a compiler's message) become
/// spaces, at most [`MAX_DETAIL`] characters; `None` when nothing is left.
fn detail(text: &str) -> Option<String> {
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_DETAIL)
        .collect();
    let cleaned = cleaned.trim().to_owned();
    (!cleaned.is_empty()).then_some(cleaned)
}

#[cfg(test)]
mod tests;
