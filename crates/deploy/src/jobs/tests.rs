//! The Jobs client on a virtual clock: the cloud's answers are written here as AWS's documentation
//! shows them (the module doc of [`super`] cites the pages), one case per behaviour.

use super::*;

const PREFIX: &str = "$aws/things/gw-1/jobs/";

/// The client, its virtual clock, and what it published.
struct Test {
    jobs: Jobs,
    now: Instant,
}

/// A request the client published: its topic (after the thing's prefix) and JSON.
#[derive(Debug)]
struct Sent {
    topic: String,
    doc: Value,
}

impl Sent {
    fn token(&self) -> &str {
        self.doc["clientToken"].as_str().expect("a client token")
    }
}

impl Test {
    fn new() -> Test {
        Test {
            jobs: Jobs::new("gw-1", "t1"),
            now: Instant::now(),
        }
    }

    /// Connected, with the first start-next taken out.
    fn online() -> (Test, Sent) {
        let mut t = Test::new();
        t.jobs.connected(t.now);
        let sent = t.one();
        assert_eq!(sent.topic, "start-next");
        (t, sent)
    }

    fn outputs(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.jobs.poll()).collect()
    }

    /// The requests published since the last look (other outputs dropped).
    fn sent(&mut self) -> Vec<Sent> {
        self.outputs()
            .into_iter()
            .filter_map(|o| match o {
                Output::Publish { topic, payload } => Some(Sent {
                    topic: topic
                        .strip_prefix(PREFIX)
                        .expect("the thing's topic")
                        .to_owned(),
                    doc: serde_json::from_slice(&payload).expect("JSON"),
                }),
                _ => None,
            })
            .collect()
    }

    /// The one request published since the last look.
    fn one(&mut self) -> Sent {
        let mut sent = self.sent();
        assert_eq!(sent.len(), 1, "{sent:?}");
        sent.remove(0)
    }

    fn cloud(&mut self, topic: &str, doc: Value) {
        let topic = format!("{PREFIX}{topic}");
        self.jobs
            .message(&topic, doc.to_string().as_bytes(), self.now);
    }

    /// `start-next/accepted` for `request` with job `job` at `version`.
    fn start_next_accepted(&mut self, request: &Sent, job: &str, version: u64) {
        let doc = json!({
            "clientToken": request.token(),
            "timestamp": 1489088524284u64,
            "execution": {
                "jobId": job, "thingName": "gw-1", "status": "IN_PROGRESS",
                "queuedAt": 1489096123309u64, "lastUpdatedAt": 1489096123309u64,
                "versionNumber": version, "executionNumber": 1,
                "jobDocument": {"format": 1, "id": format!("d-{job}")},
            },
        });
        self.cloud("start-next/accepted", doc);
    }

    /// `{job}/update/accepted` for `request`, the execution now at `version`.
    fn update_accepted(&mut self, job: &str, request: &Sent, version: u64) {
        let status = request.doc["status"].clone();
        let doc = json!({
            "clientToken": request.token(),
            "timestamp": 1,
            "executionState": {"status": status, "versionNumber": version},
        });
        self.cloud(&format!("{job}/update/accepted"), doc);
    }

    fn update_rejected(
        &mut self,
        job: &str,
        request: &Sent,
        code: &str,
        state: Option<(&str, u64)>,
    ) {
        let mut doc = json!({
            "clientToken": request.token(), "timestamp": 1, "code": code, "message": "m",
        });
        if let Some((status, version)) = state {
            doc["executionState"] = json!({"status": status, "versionNumber": version});
        }
        self.cloud(&format!("{job}/update/rejected"), doc);
    }

    /// Takes job `job` (start-next answered, the Apply checked, the deployment taken as
    /// `d-{job}`); the execution is at `version`.
    fn take(&mut self, start: &Sent, job: &str, version: u64) {
        self.start_next_accepted(start, job, version);
        let outputs = self.outputs();
        assert!(
            matches!(&outputs[..], [Output::Apply { job: j, document }]
                if j == job && serde_json::from_slice::<Value>(document).unwrap()["id"] == format!("d-{job}")),
            "{outputs:?}"
        );
        self.jobs.taken(job, Ok(format!("d-{job}")), self.now);
        assert!(self.sent().is_empty(), "nothing is reported before a step");
    }

    fn progress(&mut self, job: &str, phase: Phase, reason: Option<&str>) {
        self.jobs
            .progress(&format!("d-{job}"), phase, reason, self.now);
    }

    fn later(&mut self, by: Duration) {
        self.now += by;
        if self.jobs.poll_timeout().is_some_and(|t| t <= self.now) {
            self.jobs.handle_timeout(self.now);
        }
    }
}

/// An update request's status, step and expected version.
fn update(sent: &Sent) -> (&str, &str, u64) {
    (
        sent.doc["status"].as_str().unwrap(),
        sent.doc["statusDetails"]["step"].as_str().unwrap(),
        sent.doc["expectedVersion"].as_u64().unwrap(),
    )
}

#[test]
fn a_job_is_started_reported_step_by_step_with_its_version_and_then_the_next_is_asked_for() {
    let (mut t, start) = Test::online();
    assert_eq!(Jobs::filters("gw-1")[0], format!("{PREFIX}notify-next"));
    t.take(&start, "j1", 2);
    t.progress("j1", Phase::Fetching, None);
    let fetching = t.one();
    assert_eq!(fetching.topic, "j1/update");
    assert_eq!(update(&fetching), ("IN_PROGRESS", "fetching", 2));
    assert_eq!(fetching.doc["statusDetails"]["deployment"], "d-j1");
    assert_eq!(fetching.doc["includeJobExecutionState"], true);
    t.update_accepted("j1", &fetching, 3);
    assert!(t.outputs().contains(&Output::Reported {
        job: "j1".into(),
        status: ExecStatus::InProgress
    }));
    t.progress("j1", Phase::Committed, None);
    let done = t.one();
    assert_eq!(update(&done), ("SUCCEEDED", "committed", 3));
    t.update_accepted("j1", &done, 4);
    let outputs = t.outputs();
    assert!(outputs.contains(&Output::Reported {
        job: "j1".into(),
        status: ExecStatus::Succeeded
    }));
    assert!(
        outputs
            .iter()
            .any(|o| matches!(o, Output::Publish { topic, .. } if topic.ends_with("/start-next"))),
        "the next job is asked for: {outputs:?}"
    );
    assert_eq!(
        t.jobs.view().last,
        Some(("j1".into(), "SUCCEEDED".into(), None))
    );
    assert_eq!(t.jobs.view().current, None);
}

#[test]
fn a_failed_deployment_is_failed_with_its_reason_and_a_refused_document_is_rejected() {
    let (mut t, start) = Test::online();
    t.take(&start, "j1", 1);
    t.progress(
        "j1",
        Phase::RolledBack,
        Some("function errors rose by 1\nduring the soak"),
    );
    let failed = t.one();
    assert_eq!(update(&failed), ("FAILED", "rolled_back", 1));
    assert_eq!(
        failed.doc["statusDetails"]["reason"],
        "function errors rose by 1 during the soak"
    );
    t.update_accepted("j1", &failed, 2);
    let start = t.one();
    t.start_next_accepted(&start, "j2", 1);
    t.outputs();
    t.jobs.taken(
        "j2",
        Err("deployment `d-j2` is already in the history".into()),
        t.now,
    );
    let rejected = t.one();
    assert_eq!(update(&rejected), ("REJECTED", "rejected", 1));
    assert_eq!(
        rejected.doc["statusDetails"]["reason"],
        "deployment `d-j2` is already in the history"
    );
    assert!(rejected.doc["statusDetails"].get("deployment").is_none());
}

#[test]
fn a_job_document_that_is_not_an_object_is_rejected_without_applying() {
    let (mut t, start) = Test::online();
    let doc = json!({"clientToken": start.token(), "execution": {
        "jobId": "j1", "status": "IN_PROGRESS", "versionNumber": 1, "jobDocument": "a string"}});
    t.cloud("start-next/accepted", doc);
    let outputs = t.outputs();
    let [Output::Publish { topic, payload }] = &outputs[..] else {
        panic!("one update and nothing applied: {outputs:?}");
    };
    let rejected = Sent {
        topic: topic.clone(),
        doc: serde_json::from_slice(payload).unwrap(),
    };
    assert_eq!(update(&rejected), ("REJECTED", "rejected", 1));
}

#[test]
fn steps_reported_while_an_update_is_in_flight_are_coalesced_to_the_latest() {
    let (mut t, start) = Test::online();
    t.take(&start, "j1", 1);
    t.progress("j1", Phase::Fetching, None);
    let first = t.one();
    for phase in [Phase::Staging, Phase::Switching, Phase::Soaking] {
        t.progress("j1", phase, None);
    }
    assert!(t.sent().is_empty(), "one update in flight at a time");
    t.update_accepted("j1", &first, 2);
    let next = t.one();
    assert_eq!(update(&next), ("IN_PROGRESS", "soaking", 2));
    // The same step again is not sent again.
    t.update_accepted("j1", &next, 3);
    t.outputs();
    t.progress("j1", Phase::Soaking, None);
    assert!(t.sent().is_empty());
}

#[test]
fn an_end_is_final_and_later_steps_change_nothing() {
    let (mut t, start) = Test::online();
    t.take(&start, "j1", 1);
    t.progress("j1", Phase::Failed, Some("hash mismatch"));
    let failed = t.one();
    t.progress("j1", Phase::Committed, None);
    t.update_accepted("j1", &failed, 2);
    let after: Vec<_> = t.sent().into_iter().map(|s| s.topic).collect();
    assert_eq!(after, ["start-next"]);
}

#[test]
fn a_version_mismatch_is_resolved_by_the_execution_state_it_carries() {
    // 1. The state shows the status sent: an earlier send got there.
    let (mut t, start) = Test::online();
    t.take(&start, "j1", 1);
    t.progress("j1", Phase::Committed, None);
    let done = t.one();
    t.update_rejected("j1", &done, "VersionMismatch", Some(("SUCCEEDED", 2)));
    assert!(t.outputs().contains(&Output::Reported {
        job: "j1".into(),
        status: ExecStatus::Succeeded
    }));
    // 2. A newer version of a job still in progress: sent again at that version.
    let (mut t, start) = Test::online();
    t.take(&start, "j1", 1);
    t.progress("j1", Phase::Fetching, None);
    let fetching = t.one();
    t.update_rejected("j1", &fetching, "VersionMismatch", Some(("IN_PROGRESS", 5)));
    let again = t.one();
    assert_eq!(update(&again), ("IN_PROGRESS", "fetching", 5));
    // 3. The cloud ended the job (cancelled): let go, the next one asked for.
    t.update_rejected(
        "j1",
        &again,
        "InvalidStateTransition",
        Some(("CANCELED", 6)),
    );
    let outputs = t.outputs();
    assert!(
        outputs
            .iter()
            .any(|o| matches!(o, Output::Warn(w) if w.contains("ended it as CANCELED"))),
        "{outputs:?}"
    );
    assert!(outputs
        .iter()
        .any(|o| matches!(o, Output::Publish { topic, .. } if topic.ends_with("start-next"))));
    assert_eq!(t.jobs.view().current, None);
    assert_eq!(t.jobs.deployment(), None);
}

#[test]
fn a_job_that_is_gone_is_let_go_and_throttling_is_retried_later() {
    let (mut t, start) = Test::online();
    t.take(&start, "j1", 1);
    t.progress("j1", Phase::Fetching, None);
    let fetching = t.one();
    t.update_rejected("j1", &fetching, "RequestThrottled", None);
    assert!(t.sent().is_empty());
    t.later(RETRY_AFTER - Duration::from_millis(1));
    assert!(t.sent().is_empty(), "not before the pause");
    t.later(Duration::from_millis(1));
    let again = t.one();
    assert_eq!(
        again.token(),
        fetching.token(),
        "the same request, the same token"
    );
    t.update_rejected("j1", &again, "ResourceNotFound", None);
    assert_eq!(
        t.sent().into_iter().map(|s| s.topic).collect::<Vec<_>>(),
        ["start-next"]
    );
    assert_eq!(t.jobs.view().last.unwrap().1, "not followed");
}

#[test]
fn unanswered_requests_go_again_after_the_timeout_and_on_reconnect_but_not_offline() {
    let (mut t, start) = Test::online();
    t.later(REQUEST_TIMEOUT);
    let again = t.one();
    assert_eq!(
        (again.topic.as_str(), again.token()),
        ("start-next", start.token())
    );
    t.take(&again, "j1", 1);
    t.progress("j1", Phase::Fetching, None);
    let fetching = t.one();
    t.jobs.disconnected();
    assert_eq!(t.jobs.poll_timeout(), None);
    t.later(REQUEST_TIMEOUT * 3);
    t.progress("j1", Phase::Staging, None);
    assert!(t.sent().is_empty(), "nothing is sent offline");
    t.jobs.connected(t.now);
    let sent = t.sent();
    let topics: Vec<_> = sent.iter().map(|s| s.topic.as_str()).collect();
    assert_eq!(topics, ["start-next", "j1/update"]);
    assert_eq!(
        update(&sent[1]),
        ("IN_PROGRESS", "staging", 1),
        "the newest step"
    );
    // The answer to the request sent before the link dropped no longer counts.
    t.update_accepted("j1", &fetching, 2);
    assert!(t.outputs().is_empty());
    // start-next answers with the job in hand: nothing is applied twice.
    t.start_next_accepted(&sent[0], "j1", 1);
    assert!(t.outputs().is_empty());
}

#[test]
fn notify_next_asks_for_a_new_job_only() {
    let (mut t, start) = Test::online();
    t.take(&start, "j1", 1);
    t.cloud(
        "notify-next",
        json!({"timestamp": 1, "execution": {"jobId": "j1", "status": "IN_PROGRESS"}}),
    );
    t.cloud("notify-next", json!({"timestamp": 1}));
    assert!(t.sent().is_empty());
    t.cloud(
        "notify-next",
        json!({"timestamp": 2, "execution": {"jobId": "j2", "status": "QUEUED"}}),
    );
    let start = t.one();
    assert_eq!(start.topic, "start-next");
    // The cloud moved on: j1 is no longer pending there, j2 is taken.
    t.start_next_accepted(&start, "j2", 1);
    let outputs = t.outputs();
    assert!(outputs
        .iter()
        .any(|o| matches!(o, Output::Warn(w) if w.contains("job j1: no longer followed"))));
    assert!(outputs
        .iter()
        .any(|o| matches!(o, Output::Apply { job, .. } if job == "j2")));
}

#[test]
fn answers_to_other_requests_other_things_and_bad_ids_are_ignored() {
    let (mut t, start) = Test::online();
    // Another run's token (an answer queued in the persistent session across a restart).
    t.cloud(
        "start-next/accepted",
        json!({"clientToken": "t0-1", "execution": {"jobId": "old", "versionNumber": 1, "jobDocument": {}}}),
    );
    t.jobs.message(
        "$aws/things/other/jobs/start-next/accepted",
        json!({"clientToken": start.token(), "execution": {"jobId": "x", "jobDocument": {}}})
            .to_string()
            .as_bytes(),
        t.now,
    );
    t.jobs
        .message(&format!("{PREFIX}notify-next"), b"not json", t.now);
    let outputs = t.outputs();
    assert!(
        matches!(&outputs[..], [Output::Warn(w)] if w.contains("not JSON")),
        "{outputs:?}"
    );
    t.cloud(
        "start-next/accepted",
        json!({"clientToken": start.token(), "execution": {"jobId": "a/b", "versionNumber": 1, "jobDocument": {}}}),
    );
    let outputs = t.outputs();
    assert!(
        matches!(&outputs[..], [Output::Warn(w)] if w.contains("not a valid AWS IoT job id")),
        "{outputs:?}"
    );
}

#[test]
fn after_a_restart_the_job_in_progress_is_taken_again_and_its_end_reported() {
    // The new run knows nothing; start-next returns the IN_PROGRESS execution, the deployments'
    // history knows its deployment, which the machine finished during the restart.
    let mut t = Test {
        jobs: Jobs::new("gw-1", "t2"),
        now: Instant::now(),
    };
    t.jobs.connected(t.now);
    let start = t.one();
    assert!(start.token().starts_with("t2-"));
    t.take(&start, "j1", 3);
    t.progress(
        "j1",
        Phase::RolledBack,
        Some("the gateway restarted during the soaking step"),
    );
    let failed = t.one();
    assert_eq!(update(&failed), ("FAILED", "rolled_back", 3));
}

#[test]
fn status_details_are_cut_to_what_aws_takes() {
    let long = "é".repeat(MAX_DETAIL + 10);
    assert_eq!(detail(&long).unwrap().chars().count(), MAX_DETAIL);
    assert_eq!(detail("a\nb\tc").unwrap(), "a b c");
    assert_eq!(detail(" \n "), None);
    let r = report(ExecStatus::Failed, Some("d"), "failed", Some(""));
    assert_eq!(r.details.keys().collect::<Vec<_>>(), ["deployment", "step"]);
}
