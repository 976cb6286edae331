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
//!
//! Deliberately not modelled: authorization, DescribeJobExecution and GetPendingJobExecutions
//! (Grove does not use them), the `notify` list, step and in-progress timeouts (`TIMED_OUT`),
//! rollout rates and abort thresholds (the fleet scenario), execution numbers beyond 1, and
//! reconnecting (the responder stops at its connection's first error; [`AwsJobs::report`] says
//! why).

pub mod service;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS, SubscribeFilter};
use serde_json::Value;

use crate::{eventually, options, WAIT};
use service::{presign, Execution, Reply, Thing};

/// What the responder's task and the test share.
#[derive(Default)]
struct Shared {
    things: BTreeMap<String, Thing>,
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
    client: AsyncClient,
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
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
        let (client, eventloop) = AsyncClient::new(options("aws-jobs-service", port), 1000);
        let filters = FILTERS
            .iter()
            .map(|f| SubscribeFilter::new((*f).to_owned(), QoS::AtLeastOnce));
        client
            .try_subscribe_many(filters)
            .expect("queue the SUBSCRIBE");
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (subscribed, granted) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(serve(eventloop, client.clone(), shared.clone(), subscribed));
        let codes = tokio::time::timeout(WAIT, granted)
            .await
            .unwrap_or_else(|_| panic!("no SUBACK for the jobs responder within {WAIT:?}"))
            .expect("the responder's task")
            .unwrap_or_else(|e| panic!("the jobs responder could not subscribe: {e}"));
        assert!(
            codes
                .iter()
                .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_))),
            "the broker refused the request topics: {codes:?}"
        );
        AwsJobs {
            client,
            shared,
            task,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().expect("the responder's state")
    }

    /// Creates a job for `things` with `document` (as `aws iot create-job --targets ...
    /// --document file://...`): each thing gets a `QUEUED` execution, and `notify-next` where it
    /// is the thing's next one.
    pub async fn create_job(&self, job_id: &str, things: &[&str], document: Value) {
        let notices: Vec<(String, Reply)> = {
            let mut shared = self.lock();
            let shared = &mut *shared;
            things
                .iter()
                .flat_map(|thing| {
                    let t = shared.things.entry((*thing).to_owned()).or_default();
                    t.queue(job_id, document.clone(), now())
                        .into_iter()
                        .map(|r| ((*thing).to_owned(), r))
                })
                .map(|(thing, mut r)| {
                    sign(&mut shared.signatures, &mut r);
                    (thing, r)
                })
                .collect()
        };
        self.publish(notices).await;
    }

    /// Cancels `thing`'s execution of `job_id` (as `aws iot cancel-job-execution --force`).
    pub async fn cancel(&self, job_id: &str, thing: &str) {
        let notices: Vec<(String, Reply)> = {
            let mut shared = self.lock();
            let shared = &mut *shared;
            let t = shared.things.entry(thing.to_owned()).or_default();
            t.cancel(job_id, now())
                .into_iter()
                .map(|mut r| {
                    sign(&mut shared.signatures, &mut r);
                    (thing.to_owned(), r)
                })
                .collect()
        };
        self.publish(notices).await;
    }

    async fn publish(&self, replies: Vec<(String, Reply)>) {
        for (thing, r) in replies {
            self.client
                .publish(
                    topic(&thing, &r),
                    QoS::AtLeastOnce,
                    false,
                    r.payload.to_string(),
                )
                .await
                .expect("publish");
        }
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
        self.task.abort();
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

type Granted = Result<Vec<rumqttc::SubscribeReasonCode>, String>;

/// The responder's task: answers each request as it arrives, until the connection fails.
async fn serve(
    mut eventloop: EventLoop,
    client: AsyncClient,
    shared: Arc<Mutex<Shared>>,
    subscribed: tokio::sync::oneshot::Sender<Granted>,
) {
    let mut subscribed = Some(subscribed);
    loop {
        let publish = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if let Some(s) = subscribed.take() {
                    let _ = s.send(Ok(ack.return_codes));
                }
                continue;
            }
            Ok(Event::Incoming(Packet::Publish(p))) => p,
            Ok(_) => continue,
            Err(e) => {
                let why = e.to_string();
                if let Some(s) = subscribed.take() {
                    let _ = s.send(Err(why.clone()));
                }
                shared.lock().expect("the responder's state").stopped = Some(why);
                return;
            }
        };
        let Some((thing, suffix)) = publish
            .topic
            .strip_prefix("$aws/things/")
            .and_then(|rest| rest.split_once("/jobs/"))
        else {
            continue;
        };
        let mut guard = shared.lock().expect("the responder's state");
        let state = &mut *guard;
        let t = state.things.entry(thing.to_owned()).or_default();
        let Some(replies) = t.request(thing, suffix, &publish.payload, now()) else {
            continue;
        };
        state
            .requests
            .push((thing.to_owned(), suffix.to_owned(), Instant::now()));
        // The client's request queue is drained by this same task's next poll, so it is never
        // awaited here.
        for mut r in replies {
            sign(&mut state.signatures, &mut r);
            if let Err(e) = client.try_publish(
                topic(thing, &r),
                QoS::AtLeastOnce,
                false,
                r.payload.to_string(),
            ) {
                state.stopped = Some(format!("cannot publish an answer: {e}"));
                return;
            }
        }
    }
}
