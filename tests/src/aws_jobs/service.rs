//! The AWS IoT Jobs service's rules for one thing's job executions, as pure functions: a device's
//! request (topic suffix, payload) and the thing's executions in, the messages the service
//! publishes out. No MQTT and no clock (`now` comes in, epoch seconds), so each rule is
//! unit-tested on AWS's own examples.
//!
//! Written from AWS IoT's documentation only (the module doc of [`super`] lists the pages); each
//! rule names the section it comes from. Where the documentation leaves a case open, the choice
//! is marked "Not documented".

use serde_json::{json, Map, Value};

/// A job execution's status ("Jobs notifications": "Possible job execution status values are
/// QUEUED, IN_PROGRESS, FAILED, SUCCEEDED, CANCELED, TIMED_OUT, REJECTED, and REMOVED").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Waiting for the device.
    Queued,
    /// The device started it.
    InProgress,
    /// Ended well.
    Succeeded,
    /// Ended badly.
    Failed,
    /// The device refused it.
    Rejected,
    /// Cancelled by the operator.
    Canceled,
}

impl Status {
    /// The API's name.
    pub fn name(self) -> &'static str {
        match self {
            Status::Queued => "QUEUED",
            Status::InProgress => "IN_PROGRESS",
            Status::Succeeded => "SUCCEEDED",
            Status::Failed => "FAILED",
            Status::Rejected => "REJECTED",
            Status::Canceled => "CANCELED",
        }
    }

    /// "Jobs notifications": FAILED, SUCCEEDED, CANCELED, TIMED_OUT, REJECTED and REMOVED are
    /// terminal.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Queued | Status::InProgress)
    }

    /// "Jobs device MQTT API operations", UpdateJobExecution: a device sets `IN_PROGRESS`,
    /// `FAILED`, `SUCCEEDED` or `REJECTED`.
    fn from_device(name: &str) -> Option<Status> {
        match name {
            "IN_PROGRESS" => Some(Status::InProgress),
            "SUCCEEDED" => Some(Status::Succeeded),
            "FAILED" => Some(Status::Failed),
            "REJECTED" => Some(Status::Rejected),
            _ => None,
        }
    }
}

/// One thing's execution of one job.
#[derive(Debug, Clone)]
pub struct Execution {
    /// The job.
    pub job_id: String,
    /// The job document (JSON), as handed to the device.
    pub document: Value,
    /// Its status.
    pub status: Status,
    /// The details the device set last.
    pub status_details: Map<String, Value>,
    /// Incremented by every change ("UpdateJobExecution", `expectedVersion`: "Each time you
    /// update the job execution, its version is incremented").
    pub version: u64,
    /// When it was queued, started, last changed (epoch seconds).
    pub queued_at: u64,
    /// When the device started it.
    pub started_at: Option<u64>,
    /// When it last changed.
    pub last_updated_at: u64,
    /// Every update the service accepted, in order: (status, details).
    pub history: Vec<(Status, Map<String, Value>)>,
}

/// A message the service publishes: the topic after `$aws/things/{thing}/jobs/`, and the
/// payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// `start-next/accepted`, `{jobId}/update/rejected`, `notify-next`, ...
    pub suffix: String,
    /// The JSON payload.
    pub payload: Value,
}

/// One thing's executions, in the order they were queued.
#[derive(Debug, Default)]
pub struct Thing {
    /// The executions, oldest first.
    pub executions: Vec<Execution>,
}

impl Thing {
    /// Queues an execution of `job_id` ("CreateJob" targets the thing), and says what is
    /// published about it.
    pub fn queue(&mut self, job_id: &str, document: Value, now: u64) -> Vec<Reply> {
        let before = self.next();
        self.executions.push(Execution {
            job_id: job_id.to_owned(),
            document,
            status: Status::Queued,
            status_details: Map::new(),
            // "Jobs notifications", the first example: a new job's execution has versionNumber 1.
            version: 1,
            queued_at: now,
            started_at: None,
            last_updated_at: now,
            history: Vec::new(),
        });
        self.notify_next_if_changed(before, now)
    }

    /// Cancels the execution of `job_id` ("CancelJobExecution" with `force`: an `IN_PROGRESS`
    /// execution is cancelled too).
    pub fn cancel(&mut self, job_id: &str, now: u64) -> Vec<Reply> {
        let before = self.next();
        if let Some(e) = self.find(job_id).filter(|e| !e.status.is_terminal()) {
            e.status = Status::Canceled;
            e.version += 1;
            e.last_updated_at = now;
        }
        self.notify_next_if_changed(before, now)
    }

    /// Cancels the execution of `job_id` if it is still `QUEUED` (a job's abort).
    pub fn cancel_queued(&mut self, job_id: &str, now: u64) -> Vec<Reply> {
        match self.executions.iter().find(|e| e.job_id == job_id) {
            Some(e) if e.status == Status::Queued => self.cancel(job_id, now),
            _ => Vec::new(),
        }
    }

    /// Answers a device's request on `$aws/things/{thing}/jobs/{suffix}`; `None` for a topic that
    /// is not a request (the service's own answers).
    pub fn request(
        &mut self,
        thing: &str,
        suffix: &str,
        payload: &[u8],
        now: u64,
    ) -> Option<Vec<Reply>> {
        let (op, job) = match suffix {
            "start-next" => ("start-next", None),
            _ => match suffix.split_once('/') {
                Some((job, "update")) => ("update", Some(job)),
                _ => return None,
            },
        };
        let answer = |outcome: &str| match job {
            Some(job) => format!("{job}/{op}/{outcome}"),
            None => format!("{op}/{outcome}"),
        };
        // "AWS IoT jobs APIs", ErrorResponse: InvalidJson, "the contents of the request could not
        // be interpreted as valid UTF-8-encoded JSON".
        let Ok(request) = serde_json::from_slice::<Value>(payload) else {
            let doc = error(
                "InvalidJson",
                "the request is not JSON",
                &Value::Null,
                now,
                None,
            );
            return Some(vec![reply(answer("rejected"), doc)]);
        };
        let token = request.get("clientToken").cloned().unwrap_or(Value::Null);
        let before = self.next();
        let mut out = match job {
            None => vec![self.start_next(thing, &request, &token, now)],
            Some(job) => vec![self.update(job, &request, &token, now)],
        };
        out.extend(self.notify_next_if_changed(before, now));
        Some(out)
    }

    /// "Jobs device MQTT API operations", StartNextPendingJobExecution: "Any job executions with
    /// status IN_PROGRESS are returned first"; "Job executions are returned in the order in which
    /// they were created"; "If the next pending job execution is QUEUED, its state changes to
    /// IN_PROGRESS and the job execution's status details are set as specified"; "If the next
    /// pending job execution is already IN_PROGRESS, its status details are not changed"; "If no
    /// job executions are pending, the response does not include the execution field".
    fn start_next(&mut self, thing: &str, request: &Value, token: &Value, now: u64) -> Reply {
        let mut doc = json!({ "timestamp": now, "clientToken": token });
        if let Some(i) = self.next_index() {
            let e = &mut self.executions[i];
            if e.status == Status::Queued {
                e.status = Status::InProgress;
                e.version += 1;
                e.started_at = Some(now);
                e.last_updated_at = now;
                if let Some(details) = request["statusDetails"].as_object() {
                    e.status_details = details.clone();
                }
            }
            doc["execution"] = execution(thing, e);
        }
        reply("start-next/accepted".into(), doc)
    }

    /// "Jobs device MQTT API operations", UpdateJobExecution, and "AWS IoT jobs APIs",
    /// ErrorResponse: an unknown job is `ResourceNotFound`; a wrong `expectedVersion` is
    /// `VersionMismatch` with the current `executionState`; a change out of a terminal status is
    /// `InvalidStateTransition` with `executionState`; a status a device may not set is
    /// `InvalidRequest`. An accepted update increments the version; its answer carries
    /// `executionState` only with `includeJobExecutionState` and `jobDocument` only with
    /// `includeJobDocument`.
    fn update(&mut self, job: &str, request: &Value, token: &Value, now: u64) -> Reply {
        let rejected = |doc| reply(format!("{job}/update/rejected"), doc);
        let Some(e) = self.find(job) else {
            return rejected(error(
                "ResourceNotFound",
                "no such job execution",
                token,
                now,
                None,
            ));
        };
        let Some(status) = request["status"].as_str().and_then(Status::from_device) else {
            return rejected(error(
                "InvalidRequest",
                "status must be IN_PROGRESS, FAILED, SUCCEEDED or REJECTED",
                token,
                now,
                None,
            ));
        };
        if let Some(expected) = request.get("expectedVersion") {
            // Not documented: the page's syntax shows `"expectedVersion": "number"`; a JSON
            // number and a string of digits are both taken.
            let expected = expected
                .as_u64()
                .or_else(|| expected.as_str().and_then(|s| s.parse().ok()));
            if expected != Some(e.version) {
                let state = state(e);
                return rejected(error(
                    "VersionMismatch",
                    "the expected version does not match",
                    token,
                    now,
                    Some(state),
                ));
            }
        }
        if e.status.is_terminal() {
            let state = state(e);
            return rejected(error(
                "InvalidStateTransition",
                "the job execution is in a terminal state",
                token,
                now,
                Some(state),
            ));
        }
        e.status = status;
        if let Some(details) = request["statusDetails"].as_object() {
            // "If not specified, the statusDetails are unchanged."
            e.status_details = details.clone();
        }
        e.version += 1;
        e.last_updated_at = now;
        if e.started_at.is_none() {
            e.started_at = Some(now);
        }
        e.history.push((status, e.status_details.clone()));
        let mut doc = json!({ "timestamp": now, "clientToken": token });
        if request["includeJobExecutionState"] == true {
            doc["executionState"] = state(e);
        }
        if request["includeJobDocument"] == true {
            doc["jobDocument"] = e.document.clone();
        }
        reply(format!("{job}/update/accepted"), doc)
    }

    fn find(&mut self, job: &str) -> Option<&mut Execution> {
        self.executions.iter_mut().find(|e| e.job_id == job)
    }

    /// The next pending execution ("DescribeJobExecution" with `$next`): the oldest
    /// `IN_PROGRESS`, else the oldest `QUEUED`.
    fn next_index(&self) -> Option<usize> {
        let oldest = |status| self.executions.iter().position(|e| e.status == status);
        oldest(Status::InProgress).or_else(|| oldest(Status::Queued))
    }

    fn next(&self) -> Option<String> {
        self.next_index().map(|i| self.executions[i].job_id.clone())
    }

    /// "Jobs notifications", NextNotification: published "whenever the first job execution in
    /// the list changes"; with an empty queue it carries only the timestamp (the last example).
    /// The thing's name is filled in by the caller's topic.
    fn notify_next_if_changed(&self, before: Option<String>, now: u64) -> Vec<Reply> {
        if self.next() == before {
            return Vec::new();
        }
        let mut doc = json!({ "timestamp": now });
        if let Some(i) = self.next_index() {
            doc["execution"] = execution_no_thing(&self.executions[i]);
        }
        vec![reply("notify-next".into(), doc)]
    }
}

/// "Managing jobs", Presigned URLs: a job document holds a placeholder
/// `${aws:iot:s3-presigned-url:https://s3.region.amazonaws.com/<bucket>/<code file>}`, and "when
/// a device requests the job document, AWS IoT generates the presigned URL and replaces the
/// placeholder URL with the presigned URL". The stand-in's "signature" is `signature` in the
/// query, as an S3 presigned URL carries its `X-Amz-*` parameters; the placeholder's URL is the
/// test's artifact server instead of S3.
pub fn presign(value: &mut Value, signature: &str) {
    match value {
        Value::String(s) => {
            if let Some(url) = s
                .strip_prefix("${aws:iot:s3-presigned-url:")
                .and_then(|rest| rest.strip_suffix('}'))
            {
                *s = format!(
                    "{url}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=3600&X-Amz-Signature={signature}"
                );
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| presign(v, signature)),
        Value::Object(fields) => fields.values_mut().for_each(|v| presign(v, signature)),
        _ => {}
    }
}

/// A job's rollout and abort configuration ("How job configurations work", Job rollout and abort
/// configurations; API reference, `JobExecutionsRolloutConfig` and `AbortCriteria`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Rollout {
    /// `maximumPerMinute`: "the maximum number of things that will be notified of a pending job,
    /// per minute" (a constant rate; the exponential rate is not modelled). `None`: all at once.
    pub per_minute: Option<u32>,
    /// `abortConfig.criteriaList[0]` with `failureType` `FAILED` and `action` `CANCEL`.
    pub abort: Option<Abort>,
}

/// One abort criterion, for `FAILED` executions.
#[derive(Debug, Clone, Copy)]
pub struct Abort {
    /// `thresholdPercentage`: "the minimum percentage of job execution failures that must occur
    /// to initiate the job abort". Not documented: the percentage of what; taken of the things
    /// notified so far.
    pub threshold_percentage: f64,
    /// `minNumberOfExecutedThings`: "the minimum number of things which must receive job
    /// execution notifications before the job can be aborted".
    pub min_executed_things: usize,
}

/// A job across its targets: who is still to be notified, who was, and whether it was
/// cancelled.
#[derive(Debug, Clone)]
pub struct JobRollout {
    /// Its document.
    pub document: Value,
    /// The configuration.
    pub rollout: Rollout,
    /// Targets not notified yet, in order.
    pub waiting: std::collections::VecDeque<String>,
    /// Targets notified (an execution queued for them).
    pub notified: Vec<String>,
    /// The abort criteria were met: "only QUEUED job executions are canceled ... current job
    /// executions that have an IN_PROGRESS status will not be canceled", and nobody else is
    /// notified.
    pub canceled: bool,
}

impl JobRollout {
    /// A job for `targets`.
    pub fn new(document: Value, targets: &[&str], rollout: Rollout) -> JobRollout {
        JobRollout {
            document,
            rollout,
            waiting: targets.iter().map(|t| (*t).to_owned()).collect(),
            notified: Vec::new(),
            canceled: false,
        }
    }

    /// The next target to notify, if the job goes on.
    pub fn next_target(&mut self) -> Option<String> {
        if self.canceled {
            return None;
        }
        let next = self.waiting.pop_front()?;
        self.notified.push(next.clone());
        Some(next)
    }

    /// Whether `failed` of the things notified so far failing meets the abort criteria; if so,
    /// the job is cancelled (the caller cancels the queued executions).
    pub fn abort_if_due(&mut self, failed: usize) -> bool {
        let Some(abort) = self.rollout.abort.filter(|_| !self.canceled) else {
            return false;
        };
        let notified = self.notified.len();
        if notified < abort.min_executed_things || notified == 0 {
            return false;
        }
        let percentage = failed as f64 * 100.0 / notified as f64;
        if percentage < abort.threshold_percentage {
            return false;
        }
        self.canceled = true;
        self.waiting.clear();
        true
    }
}

fn reply(suffix: String, payload: Value) -> Reply {
    Reply { suffix, payload }
}

/// "AWS IoT jobs APIs", ErrorResponse: `code`, `message`, `clientToken`, `timestamp`, and
/// `executionState` for `VersionMismatch` and `InvalidStateTransition`.
fn error(code: &str, message: &str, token: &Value, now: u64, state: Option<Value>) -> Value {
    let mut doc =
        json!({ "code": code, "message": message, "clientToken": token, "timestamp": now });
    if let Some(state) = state {
        doc["executionState"] = state;
    }
    doc
}

/// JobExecutionState: `status`, `statusDetails`, `versionNumber`.
fn state(e: &Execution) -> Value {
    json!({ "status": e.status.name(), "statusDetails": e.status_details, "versionNumber": e.version })
}

/// JobExecution ("Jobs device MQTT API operations", the start-next example): `jobId`,
/// `thingName`, `jobDocument`, `status`, `queuedAt`, `startedAt`, `lastUpdatedAt`,
/// `versionNumber`, `executionNumber`; the document is JSON, as in the notify-next examples.
fn execution(thing: &str, e: &Execution) -> Value {
    let mut doc = execution_no_thing(e);
    doc["thingName"] = json!(thing);
    doc
}

fn execution_no_thing(e: &Execution) -> Value {
    let mut doc = json!({
        "jobId": e.job_id,
        "status": e.status.name(),
        "queuedAt": e.queued_at,
        "lastUpdatedAt": e.last_updated_at,
        "versionNumber": e.version,
        "executionNumber": 1,
        "jobDocument": e.document,
    });
    if let Some(at) = e.started_at {
        doc["startedAt"] = json!(at);
    }
    if !e.status_details.is_empty() {
        doc["statusDetails"] = Value::Object(e.status_details.clone());
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(t: &mut Thing, suffix: &str, payload: Value) -> Vec<Reply> {
        t.request("gw", suffix, payload.to_string().as_bytes(), 100)
            .expect("a request topic")
    }

    #[test]
    fn the_notifications_example_job1_then_job2() {
        // "Jobs notifications": job1 is created (notify-next names it), job2 is created (no
        // notify-next: the next job has not changed), job1 starts (nothing), job1 succeeds
        // (notify-next names job2).
        let mut t = Thing::default();
        let first = t.queue("job1", json!({"operation": "test"}), 1);
        assert_eq!(first[0].suffix, "notify-next");
        assert_eq!(first[0].payload["execution"]["jobId"], "job1");
        assert_eq!(first[0].payload["execution"]["status"], "QUEUED");
        assert_eq!(
            first[0].payload["execution"]["jobDocument"]["operation"],
            "test"
        );
        assert!(t.queue("job2", json!({}), 2).is_empty());
        let started = request(&mut t, "start-next", json!({"clientToken": "c1"}));
        assert_eq!(started.len(), 1, "{started:?}");
        let e = &started[0].payload["execution"];
        assert_eq!(
            (e["jobId"].as_str(), e["status"].as_str()),
            (Some("job1"), Some("IN_PROGRESS"))
        );
        assert_eq!(e["versionNumber"], 2);
        assert_eq!(e["thingName"], "gw");
        assert_eq!(started[0].payload["clientToken"], "c1");
        let done = request(
            &mut t,
            "job1/update",
            json!({"status": "SUCCEEDED", "expectedVersion": 2, "clientToken": "c2", "includeJobExecutionState": true}),
        );
        assert_eq!(done[0].suffix, "job1/update/accepted");
        assert_eq!(done[0].payload["executionState"]["versionNumber"], 3);
        assert_eq!(done[1].suffix, "notify-next");
        assert_eq!(done[1].payload["execution"]["jobId"], "job2");
    }

    #[test]
    fn version_mismatch_terminal_states_and_unknown_jobs_are_rejected_with_the_state() {
        let mut t = Thing::default();
        t.queue("j", json!({}), 1);
        request(&mut t, "start-next", json!({}));
        let stale = request(
            &mut t,
            "j/update",
            json!({"status": "IN_PROGRESS", "expectedVersion": 1}),
        );
        assert_eq!(stale[0].suffix, "j/update/rejected");
        assert_eq!(stale[0].payload["code"], "VersionMismatch");
        assert_eq!(stale[0].payload["executionState"]["versionNumber"], 2);
        request(&mut t, "j/update", json!({"status": "FAILED"}));
        let late = request(&mut t, "j/update", json!({"status": "IN_PROGRESS"}));
        assert_eq!(late[0].payload["code"], "InvalidStateTransition");
        assert_eq!(late[0].payload["executionState"]["status"], "FAILED");
        let unknown = request(&mut t, "x/update", json!({"status": "SUCCEEDED"}));
        assert_eq!(unknown[0].payload["code"], "ResourceNotFound");
        let bad = request(&mut t, "j/update", json!({"status": "CANCELED"}));
        assert_eq!(bad[0].payload["code"], "InvalidRequest");
    }

    #[test]
    fn a_rollout_notifies_in_order_and_an_abort_stops_it_once_enough_failed() {
        let abort = Abort {
            threshold_percentage: 50.0,
            min_executed_things: 4,
        };
        let rollout = Rollout {
            per_minute: Some(60),
            abort: Some(abort),
        };
        let mut job = JobRollout::new(json!({}), &["a", "b", "c", "d", "e", "f"], rollout);
        let first: Vec<_> = std::iter::from_fn(|| job.next_target()).take(3).collect();
        assert_eq!(first, ["a", "b", "c"]);
        assert!(!job.abort_if_due(3), "fewer notified than the minimum");
        job.next_target();
        assert!(!job.abort_if_due(1), "25% failed");
        assert!(job.abort_if_due(2), "50% failed");
        assert!(job.canceled);
        assert_eq!(job.next_target(), None, "nobody else is notified");
        // Only a QUEUED execution is cancelled.
        let mut t = Thing::default();
        t.queue("j", json!({}), 1);
        request(&mut t, "start-next", json!({}));
        assert!(t.cancel_queued("j", 2).is_empty());
        assert_eq!(t.executions[0].status, Status::InProgress);
    }

    #[test]
    fn a_placeholder_becomes_a_presigned_url_anywhere_in_the_document() {
        let mut doc = json!({"functions": [{"module": {
            "url": "${aws:iot:s3-presigned-url:https://127.0.0.1:1/f.wasm}"}}], "id": "${x}"});
        presign(&mut doc, "abc");
        assert_eq!(
            doc["functions"][0]["module"]["url"],
            "https://127.0.0.1:1/f.wasm?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=3600&X-Amz-Signature=abc"
        );
        assert_eq!(doc["id"], "${x}");
    }

    #[test]
    fn an_empty_queue_gives_no_execution_and_the_last_end_an_empty_notify_next() {
        let mut t = Thing::default();
        let none = request(&mut t, "start-next", json!({"clientToken": "c"}));
        assert!(none[0].payload.get("execution").is_none());
        t.queue("j", json!({}), 1);
        request(&mut t, "start-next", json!({}));
        let end = request(&mut t, "j/update", json!({"status": "REJECTED"}));
        assert_eq!(end[1].suffix, "notify-next");
        assert!(end[1].payload.get("execution").is_none());
        assert_eq!(end[1].payload["timestamp"], 100);
    }
}
