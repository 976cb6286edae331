//! A stand-in for the AWS IoT Jobs service on a test's cloud broker (a [`crate::Mosquitto`]),
//! written from AWS's documentation and not from Grove's Jobs client, so that a misreading of the
//! API that Grove shares cannot pass a deployment test (issue 19).
//!
//! [`AwsJobs`] is a rumqttc client on the broker that answers the device requests
//! (`$aws/things/+/jobs/start-next`, `$aws/things/+/jobs/+/update`), holds every thing's job
//! executions in memory, and publishes what AWS publishes: the `/accepted` or `/rejected` answer
//! and `notify-next` when a thing's next pending execution changes. A test creates jobs
//! ([`AwsJobs::create_job`], standing for `aws iot create-job`), cancels them, and reads their
//! status and the updates the device made. The rules are pure functions in [`service`], each
//! citing its source. The sources, AWS IoT Core Developer Guide:
//!
//! - "Jobs device MQTT API operations": StartNextPendingJobExecution, UpdateJobExecution, their
//!   topics, request and answer documents.
//!   <https://docs.aws.amazon.com/iot/latest/developerguide/jobs-mqtt-api.html>
//! - "AWS IoT jobs APIs": ErrorResponse and its codes, NextJobExecutionChanged.
//!   <https://docs.aws.amazon.com/iot/latest/developerguide/jobs-api.html>
//! - "Jobs notifications": when `notify-next` is published and what it carries.
//!   <https://docs.aws.amazon.com/iot/latest/developerguide/jobs-comm-notifications.html>
//! - "Managing jobs", Presigned URLs: the `${aws:iot:s3-presigned-url:...}` placeholder replaced
//!   when the device gets the document.
//!   <https://docs.aws.amazon.com/iot/latest/developerguide/create-manage-jobs.html>
//! - "How job configurations work": a constant rollout rate (things notified per minute) and the
//!   abort criteria (cancel the `QUEUED` executions once a percentage of failures is reached
//!   among at least so many notified things), with the API reference's `AbortCriteria`.
//!   <https://docs.aws.amazon.com/iot/latest/developerguide/jobs-configurations-details.html>
//!
//! Deliberately not modelled: authorization, DescribeJobExecution and GetPendingJobExecutions
//! (Grove does not use them), the `notify` list, step and in-progress timeouts (`TIMED_OUT`),
//! exponential rollout rates, retries, abort criteria other than `FAILED` with `CANCEL`,
//! execution numbers beyond 1, and reconnecting (the responder stops at its connection's first
//! error; [`AwsJobs::report`] says why).

pub mod service;

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::QoS;
use serde_json::Value;

use crate::responder::{Answers, Responder, Service};
use crate::{eventually, WAIT};
use service::{presign, Execution, JobRollout, Reply, Status, Thing};
pub use service::{Abort, Rollout};

/// What the responder's task and the test share.
#[derive(Default)]
struct Shared {
    things: BTreeMap<String, Thing>,
    /// Each job across its targets (rollout, abort).
    jobs: BTreeMap<String, JobRollout>,
    /// Presigned URLs handed out so far (each gets its own "signature").
    signatures: u64,
    /// Every request answered: the thing, the topic after `jobs/` (`start-next`,
    /// `{jobId}/update`) and when it arrived.
    requests: Vec<(String, String, Instant)>,
    /// Why the responder stopped, if it did.
    stopped: Option<String>,
}

/// The AWS IoT Jobs stand-in (module doc); stops when dropped.
pub struct AwsJobs {
    responder: Responder<Shared>,
    /// The timers of rollouts at a rate.
    rollouts: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// The request topics.
const FILTERS: [&str; 2] = [
    "$aws/things/+/jobs/start-next",
    "$aws/things/+/jobs/+/update",
];

impl AwsJobs {
    /// Connects to the broker on the loopback `port`, subscribes to the request topics, and
    /// returns once the broker has granted them (SUBACK).
    pub async fn start(port: u16) -> AwsJobs {
        AwsJobs {
            responder: Responder::start("aws-jobs-service", port, &FILTERS).await,
            rollouts: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.responder.lock()
    }

    /// Creates a job for `things` with `document` (as `aws iot create-job --targets ...
    /// --document file://...`): each thing gets a `QUEUED` execution, and `notify-next` where it
    /// is the thing's next one.
    pub async fn create_job(&self, job_id: &str, things: &[&str], document: Value) {
        self.create_job_with(job_id, things, document, Rollout::default())
            .await;
    }

    /// [`AwsJobs::create_job`] with a rollout rate and abort criteria
    /// (`--job-executions-rollout-config`, `--abort-config`): at a rate, the things are notified
    /// by a timer of the stand-in's, one every minute / `maximumPerMinute`.
    pub async fn create_job_with(
        &self,
        job_id: &str,
        things: &[&str],
        document: Value,
        rollout: Rollout,
    ) {
        let job = JobRollout::new(document, things, rollout);
        self.lock().jobs.insert(job_id.to_owned(), job);
        let Some(per_minute) = rollout.per_minute else {
            let out = self.lock().notify_all(job_id);
            return self.publish(out).await;
        };
        let every = Duration::from_secs(60) / per_minute.max(1);
        let (shared, client, job) = (
            self.responder.shared(),
            self.responder.client.clone(),
            job_id.to_owned(),
        );
        let timer = tokio::spawn(async move {
            loop {
                let out = {
                    let mut s = shared.lock().expect("the responder's state");
                    let Some(thing) = s.jobs.get_mut(&job).and_then(JobRollout::next_target) else {
                        return;
                    };
                    s.notify(&job, &thing)
                };
                for (topic, payload) in out {
                    if client
                        .publish(topic, QoS::AtLeastOnce, false, payload)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                // The pause is the behaviour modelled, not a wait for a fact: AWS IoT Jobs
                // notifies a rollout's things at `maximumPerMinute`, by its own clock.
                tokio::time::sleep(every).await;
            }
        });
        self.rollouts.lock().expect("the rollouts").push(timer);
    }

    /// Cancels `thing`'s execution of `job_id` (as `aws iot cancel-job-execution --force`).
    pub async fn cancel(&self, job_id: &str, thing: &str) {
        let out = {
            let mut shared = self.lock();
            let replies = shared
                .things
                .entry(thing.to_owned())
                .or_default()
                .cancel(job_id, now());
            shared.signed(thing, replies)
        };
        self.publish(out).await;
    }

    async fn publish(&self, out: Vec<(String, String)>) {
        for (topic, payload) in out {
            self.responder
                .client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .expect("publish");
        }
    }

    /// Whether the job was cancelled by its abort criteria.
    pub fn aborted(&self, job_id: &str) -> bool {
        self.lock().jobs.get(job_id).is_some_and(|j| j.canceled)
    }

    /// How many of the job's targets have been notified.
    pub fn notified(&self, job_id: &str) -> usize {
        self.lock().jobs.get(job_id).map_or(0, |j| j.notified.len())
    }

    /// How many executions of the job have the status `status` (`FAILED`, ...).
    pub fn count(&self, job_id: &str, status: &str) -> usize {
        self.lock()
            .things
            .values()
            .flat_map(|t| &t.executions)
            .filter(|e| e.job_id == job_id && e.status.name() == status)
            .count()
    }

    /// `thing`'s execution of `job_id`, if there is one.
    pub fn execution(&self, job_id: &str, thing: &str) -> Option<Execution> {
        let shared = self.lock();
        shared
            .things
            .get(thing)?
            .executions
            .iter()
            .find(|e| e.job_id == job_id)
            .cloned()
    }

    /// Waits until `thing`'s execution of `job_id` has the status `status` (`SUCCEEDED`, ...),
    /// and returns it.
    pub fn wait_status(&self, job_id: &str, thing: &str, status: &str) -> Execution {
        eventually(WAIT, || match self.execution(job_id, thing) {
            Some(e) if e.status.name() == status => Ok(e),
            other => Err(format!(
                "{thing}'s execution of {job_id} is {:?}, not {status}; {}",
                other.map(|e| (e.status, e.status_details, e.history)),
                self.report()
            )),
        })
    }

    /// Waits until `thing` has made `n` requests on `jobs/{suffix}` (its first `start-next`
    /// proves its link is up and subscribed: the link subscribes before it publishes).
    pub fn wait_requests(&self, thing: &str, suffix: &str, n: usize) {
        eventually(WAIT, || {
            let seen = self.requests(thing, suffix).len();
            (seen >= n).then_some(()).ok_or_else(|| {
                format!(
                    "{seen} of {n} {suffix} requests from {thing}; {}",
                    self.report()
                )
            })
        });
    }

    /// When `thing`'s requests on `jobs/{suffix}` arrived, in order.
    pub fn requests(&self, thing: &str, suffix: &str) -> Vec<Instant> {
        self.lock()
            .requests
            .iter()
            .filter(|(t, s, _)| t == thing && s == suffix)
            .map(|r| r.2)
            .collect()
    }

    /// Why the responder stopped, if it did, and every thing's executions: for failure
    /// messages.
    pub fn report(&self) -> String {
        let shared = self.lock();
        let executions: Vec<_> = shared
            .things
            .iter()
            .flat_map(|(thing, t)| {
                t.executions
                    .iter()
                    .map(move |e| (thing.clone(), e.job_id.clone(), e.status, e.history.len()))
            })
            .collect();
        format!(
            "jobs responder: executions {executions:?}, stopped: {:?}",
            shared.stopped
        )
    }
}

impl Drop for AwsJobs {
    fn drop(&mut self) {
        for timer in self.rollouts.lock().expect("the rollouts").drain(..) {
            timer.abort();
        }
    }
}

/// Replaces presigned-URL placeholders in the execution a reply hands over.
fn sign(signatures: &mut u64, r: &mut Reply) {
    if let Some(document) = r.payload.pointer_mut("/execution/jobDocument") {
        *signatures += 1;
        presign(document, &format!("{signatures:08x}"));
    }
}

fn topic(thing: &str, r: &Reply) -> String {
    format!("$aws/things/{thing}/jobs/{}", r.suffix)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

impl Shared {
    /// `replies` for `thing`, presigned, as (topic, payload).
    fn signed(&mut self, thing: &str, replies: Vec<Reply>) -> Vec<(String, String)> {
        replies
            .into_iter()
            .map(|mut r| {
                sign(&mut self.signatures, &mut r);
                (topic(thing, &r), r.payload.to_string())
            })
            .collect()
    }

    /// Queues `thing`'s execution of `job_id`: what is published about it.
    fn notify(&mut self, job_id: &str, thing: &str) -> Vec<(String, String)> {
        let Some(document) = self.jobs.get(job_id).map(|j| j.document.clone()) else {
            return Vec::new();
        };
        let replies =
            self.things
                .entry(thing.to_owned())
                .or_default()
                .queue(job_id, document, now());
        self.signed(thing, replies)
    }

    /// Notifies every target of `job_id` at once.
    fn notify_all(&mut self, job_id: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        while let Some(thing) = self.jobs.get_mut(job_id).and_then(JobRollout::next_target) {
            out.extend(self.notify(job_id, &thing));
        }
        out
    }

    /// After an update of `job_id`: if its failures meet its abort criteria, its `QUEUED`
    /// executions are cancelled; what is published about them.
    fn abort_if_due(&mut self, job_id: &str) -> Vec<(String, String)> {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return Vec::new();
        };
        let things = &self.things;
        let failed = job
            .notified
            .iter()
            .filter_map(|t| things.get(t))
            .flat_map(|t| &t.executions)
            .filter(|e| e.job_id == job_id && e.status == Status::Failed)
            .count();
        if !job.abort_if_due(failed) {
            return Vec::new();
        }
        let notified = job.notified.clone();
        let mut out = Vec::new();
        for thing in notified {
            let replies = self
                .things
                .entry(thing.clone())
                .or_default()
                .cancel_queued(job_id, now());
            out.extend(self.signed(&thing, replies));
        }
        out
    }
}

impl Service for Shared {
    fn stopped(&mut self, why: String) {
        self.stopped = Some(why);
    }

    fn answer(&mut self, topic: &str, payload: &[u8]) -> Answers {
        let Some((thing, suffix)) = topic
            .strip_prefix("$aws/things/")
            .and_then(|rest| rest.split_once("/jobs/"))
        else {
            return Ok(Vec::new());
        };
        let state = self;
        let t = state.things.entry(thing.to_owned()).or_default();
        let Some(replies) = t.request(thing, suffix, payload, now()) else {
            return Ok(Vec::new());
        };
        state
            .requests
            .push((thing.to_owned(), suffix.to_owned(), Instant::now()));
        let mut out = state.signed(thing, replies);
        if let Some((job, "update")) = suffix.split_once('/') {
            out.extend(state.abort_if_due(job));
        }
        Ok(out)
    }
}
