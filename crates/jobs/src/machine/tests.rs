//! The core on a virtual clock: every transition and refusal with AWS's error codes, timers,
//! rollout, abort, cancel, pattern targets and the batch's effects.

use super::*;
use serde_json::json;

const T0: u64 = 1_800_000_000_000;
const MIN: u64 = 60_000;

fn spec(id: &str, things: &[&str]) -> JobSpec {
    JobSpec {
        id: id.into(),
        document: json!({"operation": "update", "version": "2.0"}),
        targets: Targets::Things(things.iter().map(|t| (*t).to_owned()).collect()),
        rollout_per_minute: None,
        abort: None,
        timeout_minutes: None,
    }
}

fn core_with(specs: Vec<JobSpec>) -> Jobs {
    let mut core = Jobs::restore(Limits::default(), Vec::new(), Vec::new());
    for s in specs {
        core.create(s, &[], T0).expect("created");
    }
    core.take_effects(T0);
    core.settle();
    core
}

fn status(core: &Jobs, thing: &str, job: &str) -> Option<Status> {
    core.execs[&(thing.to_owned(), job.to_owned())].status
}

fn update(status: Status) -> Update {
    Update {
        status,
        details: None,
        expected_version: None,
        execution_number: None,
        step_timeout_minutes: None,
    }
}

fn ids(execs: &[Execution]) -> Vec<&str> {
    execs.iter().map(|e| e.job.as_str()).collect()
}

/// One case per line: a spec change and a fragment of the refusal.
#[test]
fn a_job_is_refused_with_the_field_at_fault() {
    let mut core = core_with(vec![spec("fw-1", &["a"])]);
    let limits = Limits::default();
    let many: Vec<String> = (0..=limits.max_executions_per_job)
        .map(|i| format!("t{i}"))
        .collect();
    type Change = Box<dyn Fn(&mut JobSpec)>;
    let cases: Vec<(Change, &str)> = vec![
        (Box::new(|s| s.id = "fw-1".into()), "exists already"),
        (Box::new(|s| s.id = "a b".into()), "job id \"a b\""),
        (Box::new(|s| s.id = String::new()), "must not be empty"),
        (
            Box::new(|s| s.document = json!([1])),
            "must be a JSON object",
        ),
        (
            Box::new(|s| s.document = json!({"blob": "x".repeat(33 * 1024)})),
            "the most is 32768",
        ),
        (
            Box::new(|s| s.targets = Targets::Things(vec![])),
            "no targets",
        ),
        (
            Box::new(move |s| s.targets = Targets::Things(many.clone())),
            "a job has at most 10000",
        ),
        (
            Box::new(|s| s.targets = Targets::Things(vec!["ok".into(), "no/slash".into()])),
            "target \"no/slash\"",
        ),
        (
            Box::new(|s| s.targets = Targets::Pattern("sensor-[".into())),
            "thing pattern",
        ),
        (
            Box::new(|s| s.rollout_per_minute = Some(0)),
            "rollout per minute 0",
        ),
        (
            Box::new(|s| s.rollout_per_minute = Some(1001)),
            "rollout per minute 1001",
        ),
        (
            Box::new(|s| {
                s.abort = Some(Abort {
                    threshold_percent: 0.0,
                    min_executed: 1,
                })
            }),
            "abort threshold 0%",
        ),
        (
            Box::new(|s| {
                s.abort = Some(Abort {
                    threshold_percent: 100.5,
                    min_executed: 1,
                })
            }),
            "abort threshold 100.5%",
        ),
        (
            Box::new(|s| {
                s.abort = Some(Abort {
                    threshold_percent: 10.0,
                    min_executed: 0,
                })
            }),
            "abort minimum",
        ),
        (
            Box::new(|s| s.timeout_minutes = Some(0)),
            "timeout 0 minutes",
        ),
        (
            Box::new(|s| s.timeout_minutes = Some(10_081)),
            "timeout 10081 minutes",
        ),
    ];
    for (change, want) in cases {
        let mut s = spec("new", &["a"]);
        change(&mut s);
        let err = core.create(s, &[], T0).expect_err(want).to_string();
        assert!(err.contains(want), "{err} should contain {want}");
    }
    assert_eq!(core.jobs().len(), 1, "nothing was created");
}

#[test]
fn active_jobs_are_bounded() {
    let limits = Limits {
        max_active_jobs: 2,
        ..Limits::default()
    };
    let mut core = Jobs::restore(limits, Vec::new(), Vec::new());
    core.create(spec("a", &["t"]), &[], T0).unwrap();
    core.create(spec("b", &["t"]), &[], T0).unwrap();
    assert_eq!(
        core.create(spec("c", &["t"]), &[], T0),
        Err(CreateError::TooMany(2))
    );
    core.cancel("a", false, T0).unwrap();
    core.create(spec("c", &["t"]), &[], T0).unwrap();
}

#[test]
fn pending_executions_come_in_progress_first_then_in_creation_order() {
    let mut core = core_with(vec![
        spec("j1", &["t"]),
        spec("j2", &["t"]),
        spec("j3", &["t"]),
    ]);
    let (in_progress, queued) = core.get_pending("t", T0);
    assert_eq!(
        (ids(&in_progress), ids(&queued)),
        (vec![], vec!["j1", "j2", "j3"])
    );
    // J2 started while J1 stays queued: J2 is next ("Any job executions with status IN_PROGRESS
    // are returned first").
    core.update("t", "j2", update(Status::InProgress), T0 + 1)
        .unwrap();
    let (in_progress, queued) = core.get_pending("t", T0 + 2);
    assert_eq!(
        (ids(&in_progress), ids(&queued)),
        (vec!["j2"], vec!["j1", "j3"])
    );
    let next = core.describe("t", None, None, T0 + 2).unwrap().unwrap();
    assert_eq!(next.execution.job, "j2");
    assert_eq!(core.get_pending("other", T0), (vec![], vec![]));
}

#[test]
fn start_next_starts_the_next_queued_execution_once() {
    let mut core = core_with(vec![spec("j1", &["t"])]);
    let details: BTreeMap<String, String> = [("step".to_owned(), "download".to_owned())].into();
    let started = core
        .start_next(
            "t",
            StartNext {
                details: Some(details.clone()),
                step_timeout_minutes: Some(5),
            },
            T0 + 1000,
        )
        .unwrap();
    let e = &started.execution;
    assert_eq!(
        (e.status, e.version, e.started_at, &e.details),
        (Some(Status::InProgress), 2, Some(T0 + 1000), &details)
    );
    assert_eq!(started.ms_before_timeout, Some(5 * MIN));
    assert_eq!(
        started.document,
        json!({"operation": "update", "version": "2.0"})
    );
    // Already in progress: returned as it is ("its status details are not changed").
    let again = core
        .start_next("t", StartNext::default(), T0 + 2000)
        .unwrap();
    assert_eq!(again.execution, started.execution);
    core.update("t", "j1", update(Status::Succeeded), T0 + 3000)
        .unwrap();
    assert_eq!(core.start_next("t", StartNext::default(), T0 + 4000), None);
}

#[test]
fn describe_finds_rolled_out_executions_by_id_or_next() {
    let mut s = spec("slow", &["a", "b"]);
    s.rollout_per_minute = Some(1);
    let mut core = core_with(vec![spec("j1", &["t"]), s]);
    let found = core
        .describe("t", Some("j1"), Some(1), T0)
        .unwrap()
        .unwrap();
    assert_eq!(found.execution.status, Some(Status::Queued));
    let not_found = |core: &mut Jobs, thing: &str, job: &str, n: Option<u64>| {
        let r = core.describe(thing, Some(job), n, T0).unwrap_err();
        assert_eq!(r.code, ErrorCode::ResourceNotFound, "{thing} {job} {n:?}");
    };
    not_found(&mut core, "t", "nope", None);
    not_found(&mut core, "other", "j1", None);
    not_found(&mut core, "t", "j1", Some(2));
    // `b` waits for the rollout: the device sees nothing of it.
    not_found(&mut core, "b", "slow", None);
    assert_eq!(core.describe("b", None, None, T0).unwrap(), None);
    core.update("t", "j1", update(Status::Succeeded), T0)
        .unwrap();
    let r = core.describe("t", Some("j1"), None, T0).unwrap_err();
    assert_eq!(r.code, ErrorCode::TerminalStateReached);
    assert!(r.message.contains("SUCCEEDED"), "{}", r.message);
}

/// Every (from, to) pair of an update: accepted, or refused with AWS's code.
#[test]
fn every_update_transition_is_accepted_or_refused_with_its_code() {
    use ErrorCode::*;
    use Status::*;
    let device_sets = [InProgress, Succeeded, Failed, Rejected];
    for from in Status::ALL {
        for to in Status::ALL {
            let mut core = core_with(vec![spec("j", &["t"])]);
            // Put the execution in `from` as the store would hand it back.
            let key = ("t".to_owned(), "j".to_owned());
            core.execs.get_mut(&key).unwrap().status = Some(from);
            let outcome = core.update("t", "j", update(to), T0 + 1);
            let expected = if !device_sets.contains(&to) {
                Err(InvalidRequest)
            } else if from.is_terminal() {
                Err(InvalidStateTransition)
            } else {
                Ok(to)
            };
            match (&outcome, expected) {
                (Ok(view), Ok(to)) => {
                    assert_eq!(view.execution.status, Some(to), "{from:?} -> {to:?}");
                    assert_eq!(view.execution.version, 2, "{from:?} -> {to:?}");
                }
                (Err(r), Err(code)) => {
                    assert_eq!(r.code, code, "{from:?} -> {to:?}: {}", r.message);
                    // AWS sends the state with InvalidStateTransition.
                    assert_eq!(
                        r.state.as_ref().map(|s| s.status),
                        (code == InvalidStateTransition).then_some(Some(from)),
                        "{from:?} -> {to:?}"
                    );
                    assert_eq!(status(&core, "t", "j"), Some(from), "unchanged");
                }
                _ => panic!("{from:?} -> {to:?}: got {outcome:?}, expected {expected:?}"),
            }
        }
    }
}

#[test]
fn updates_check_the_execution_number_and_the_expected_version() {
    let mut core = core_with(vec![spec("j", &["t"])]);
    let mut u = update(Status::InProgress);
    u.expected_version = Some(1);
    let v = core.update("t", "j", u.clone(), T0).unwrap();
    assert_eq!(v.execution.version, 2);
    // The same update again: the version moved on.
    let r = core.update("t", "j", u, T0).unwrap_err();
    assert_eq!(r.code, ErrorCode::VersionMismatch);
    let state = r.state.expect("the state comes with VersionMismatch");
    assert_eq!((state.status, state.version), (Some(Status::InProgress), 2));
    let mut u = update(Status::Succeeded);
    u.execution_number = Some(7);
    assert_eq!(
        core.update("t", "j", u, T0).unwrap_err().code,
        ErrorCode::ResourceNotFound
    );
    assert_eq!(
        core.update("t", "nope", update(Status::Succeeded), T0)
            .unwrap_err()
            .code,
        ErrorCode::ResourceNotFound
    );
    let mut u = update(Status::Succeeded);
    u.expected_version = Some(2);
    u.execution_number = Some(1);
    u.details = Some([("result".to_owned(), "ok".to_owned())].into());
    let done = core.update("t", "j", u, T0 + 5).unwrap();
    assert_eq!(done.execution.details["result"], "ok");
    assert_eq!(done.execution.version, 3);
}

#[test]
fn an_execution_in_progress_times_out_at_its_in_progress_timer() {
    let mut s = spec("j", &["t"]);
    s.timeout_minutes = Some(10);
    let mut core = core_with(vec![s]);
    assert_eq!(core.poll_timeout(), None, "queued: no timer runs");
    core.start_next("t", StartNext::default(), T0 + MIN)
        .unwrap();
    assert_eq!(core.poll_timeout(), Some(T0 + 11 * MIN));
    // Progress reports do not move the in-progress timer.
    core.update("t", "j", update(Status::InProgress), T0 + 5 * MIN)
        .unwrap();
    core.handle_timeout(T0 + 11 * MIN - 1);
    assert_eq!(status(&core, "t", "j"), Some(Status::InProgress));
    core.take_effects(T0);
    core.settle();
    core.handle_timeout(T0 + 11 * MIN);
    assert_eq!(status(&core, "t", "j"), Some(Status::TimedOut));
    let effects = core.take_effects(T0 + 11 * MIN);
    assert_eq!(effects.timed_out, 1);
    assert_eq!(core.job("j").unwrap().status, JobStatus::Completed);
    assert_eq!(core.poll_timeout(), None);
    let r = core
        .update("t", "j", update(Status::Succeeded), T0 + 12 * MIN)
        .unwrap_err();
    assert_eq!(r.code, ErrorCode::InvalidStateTransition);
}

#[test]
fn a_step_timer_is_reset_by_each_update_and_bounded_by_the_in_progress_timer() {
    // The AWS guide's example: a 20 minute in-progress timer from 12:00; steps of 7 (at 12:05),
    // 5 (at 12:10) and 9 minutes (at 12:13) time out at 12:12, 12:15, then 12:20.
    let mut s = spec("j", &["t"]);
    s.timeout_minutes = Some(20);
    let mut core = core_with(vec![s]);
    core.start_next("t", StartNext::default(), T0).unwrap();
    assert_eq!(core.poll_timeout(), Some(T0 + 20 * MIN));
    for (at, step, deadline) in [(5, 7, 12), (10, 5, 15), (13, 9, 20)] {
        let mut u = update(Status::InProgress);
        u.step_timeout_minutes = Some(step);
        core.update("t", "j", u, T0 + at * MIN).unwrap();
        assert_eq!(
            core.poll_timeout(),
            Some(T0 + deadline * MIN),
            "at 12:{at:02}"
        );
    }
    // Without an in-progress timer, the step timer alone.
    let mut core = core_with(vec![spec("k", &["t"])]);
    core.start_next(
        "t",
        StartNext {
            details: None,
            step_timeout_minutes: Some(3),
        },
        T0,
    )
    .unwrap();
    core.handle_timeout(T0 + 3 * MIN);
    assert_eq!(status(&core, "t", "k"), Some(Status::TimedOut));
}

#[test]
fn the_rollout_rate_bounds_executions_rolled_out_per_minute() {
    let mut s = spec("fw", &["t1", "t2", "t3", "t4", "t5"]);
    s.rollout_per_minute = Some(2);
    let mut core = Jobs::restore(Limits::default(), Vec::new(), Vec::new());
    core.create(s, &[], T0).unwrap();
    let rolled_out = |core: &Jobs| -> Vec<String> {
        core.executions_of("fw")
            .into_iter()
            .filter(|e| e.status.is_some())
            .map(|e| e.thing.clone())
            .collect()
    };
    assert_eq!(rolled_out(&core), ["t1", "t2"]);
    let effects = core.take_effects(T0);
    let notified: Vec<&str> = effects.notify.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(notified, ["t1", "t2"], "only rolled-out things are told");
    assert_eq!(effects.executions.len(), 5, "all five are stored");
    core.settle();
    assert_eq!(core.poll_timeout(), Some(T0 + MIN));
    core.handle_timeout(T0 + MIN - 1);
    assert_eq!(rolled_out(&core).len(), 2, "not before the minute is over");
    core.handle_timeout(T0 + MIN);
    assert_eq!(rolled_out(&core), ["t1", "t2", "t3", "t4"]);
    assert_eq!(core.poll_timeout(), Some(T0 + 2 * MIN));
    core.handle_timeout(T0 + 2 * MIN);
    assert_eq!(rolled_out(&core).len(), 5);
    assert_eq!(core.poll_timeout(), None);
    let queued_at: Vec<u64> = core
        .executions_of("fw")
        .iter()
        .map(|e| e.queued_at.unwrap() - T0)
        .collect();
    assert_eq!(queued_at, [0, 0, MIN, MIN, 2 * MIN]);
}

#[test]
fn the_abort_threshold_cancels_what_is_not_started_once_enough_have_ended() {
    let mut s = spec("fw", &["a", "b", "c", "d", "e"]);
    s.abort = Some(Abort {
        threshold_percent: 50.0,
        min_executed: 2,
    });
    let mut core = core_with(vec![s]);
    core.start_next("e", StartNext::default(), T0).unwrap();
    core.update("a", "fw", update(Status::Failed), T0 + 1)
        .unwrap();
    // 1 of 1 failed, but fewer than 2 have ended.
    assert_eq!(core.job("fw").unwrap().status, JobStatus::InProgress);
    core.update("b", "fw", update(Status::Succeeded), T0 + 2)
        .unwrap();
    // 1 of 2 failed: 50 % reached.
    let job = core.job("fw").unwrap();
    assert_eq!(job.status, JobStatus::Canceled);
    assert!(
        job.reason
            .as_deref()
            .unwrap()
            .contains("1 of 2 ended executions failed"),
        "{:?}",
        job.reason
    );
    assert_eq!(status(&core, "c", "fw"), Some(Status::Canceled));
    assert_eq!(status(&core, "d", "fw"), Some(Status::Canceled));
    assert_eq!(
        status(&core, "e", "fw"),
        Some(Status::InProgress),
        "executions in progress go on"
    );
    assert_eq!(core.take_effects(T0 + 2).aborted, ["fw"]);
    // The one in progress may still end.
    core.update("e", "fw", update(Status::Succeeded), T0 + 3)
        .unwrap();
    assert_eq!(core.job("fw").unwrap().status, JobStatus::Canceled);
}

#[test]
fn a_timeout_counts_as_a_failure_for_the_abort_threshold() {
    let mut s = spec("fw", &["a", "b"]);
    s.timeout_minutes = Some(1);
    s.abort = Some(Abort {
        threshold_percent: 100.0,
        min_executed: 1,
    });
    let mut core = core_with(vec![s]);
    core.start_next("a", StartNext::default(), T0).unwrap();
    core.handle_timeout(T0 + MIN);
    assert_eq!(core.job("fw").unwrap().status, JobStatus::Canceled);
    assert_eq!(status(&core, "b", "fw"), Some(Status::Canceled));
}

#[test]
fn cancel_ends_what_is_not_started_and_with_force_what_is_in_progress() {
    for force in [false, true] {
        let mut s = spec("fw", &["a", "b", "c"]);
        s.rollout_per_minute = Some(2);
        let mut core = core_with(vec![s]);
        core.start_next("a", StartNext::default(), T0).unwrap();
        core.cancel("fw", force, T0 + 1).unwrap();
        let expect_a = if force {
            Status::Canceled
        } else {
            Status::InProgress
        };
        assert_eq!(status(&core, "a", "fw"), Some(expect_a), "force {force}");
        assert_eq!(status(&core, "b", "fw"), Some(Status::Canceled));
        assert_eq!(
            status(&core, "c", "fw"),
            Some(Status::Canceled),
            "never rolled out"
        );
        assert_eq!(core.poll_timeout(), None, "no rollout waits any more");
        assert_eq!(
            core.cancel("fw", force, T0 + 2),
            Err(CancelError::Ended("fw".into(), "CANCELED"))
        );
    }
    let mut core = core_with(vec![]);
    assert_eq!(
        core.cancel("nope", false, T0),
        Err(CancelError::NotFound("nope".into()))
    );
}

#[test]
fn a_target_list_completes_when_every_execution_has_ended() {
    let mut core = core_with(vec![spec("fw", &["a", "b", "a"])]);
    assert_eq!(
        core.executions_of("fw").len(),
        2,
        "duplicates are one target"
    );
    core.update("a", "fw", update(Status::Rejected), T0)
        .unwrap();
    assert_eq!(core.job("fw").unwrap().status, JobStatus::InProgress);
    core.update("b", "fw", update(Status::Succeeded), T0)
        .unwrap();
    assert_eq!(core.job("fw").unwrap().status, JobStatus::Completed);
    assert!(core.cancel("fw", false, T0).is_err());
}

#[test]
fn a_pattern_job_targets_known_things_and_adopts_others_when_they_ask() {
    let mut core = core_with(vec![spec("old", &["sensor-1", "pump-1"])]);
    let mut s = spec("fw", &[]);
    s.targets = Targets::Pattern("sensor-*".into());
    core.create(s, &["sensor-2".into(), "valve-1".into()], T0)
        .unwrap();
    let things = |core: &Jobs| -> Vec<String> {
        core.executions_of("fw")
            .iter()
            .map(|e| e.thing.clone())
            .collect()
    };
    assert_eq!(things(&core), ["sensor-1", "sensor-2"]);
    core.take_effects(T0);
    core.settle();
    // A thing never seen: its first request adopts it.
    let (_, queued) = core.get_pending("sensor-9", T0 + 1);
    assert_eq!(ids(&queued), ["fw"]);
    let (_, queued) = core.get_pending("pump-2", T0 + 1);
    assert!(queued.is_empty());
    // Every execution ends; a pattern job stays in progress (a continuous job).
    for t in ["sensor-1", "sensor-2", "sensor-9"] {
        core.update(t, "fw", update(Status::Succeeded), T0 + 2)
            .unwrap();
    }
    assert_eq!(core.job("fw").unwrap().status, JobStatus::InProgress);
    // Canceled, it adopts nobody.
    core.cancel("fw", false, T0 + 3).unwrap();
    assert!(core.get_pending("sensor-10", T0 + 4).1.is_empty());
}

/// The attack: on a listener where any thing name may be used, a client asks with thing after
/// thing; a pattern job adopts only up to its budget.
#[test]
fn a_flood_of_thing_names_cannot_grow_a_pattern_job_past_its_budget() {
    let limits = Limits {
        max_executions_per_job: 5,
        ..Limits::default()
    };
    let mut core = Jobs::restore(limits, Vec::new(), Vec::new());
    let mut s = spec("fw", &[]);
    s.targets = Targets::Pattern("*".into());
    core.create(s, &[], T0).unwrap();
    for i in 0..1000 {
        core.get_pending(&format!("t{i}"), T0);
    }
    assert_eq!(core.executions_of("fw").len(), 5);
    assert!(core.get_pending("t999", T0).1.is_empty());
}

#[test]
fn notifications_follow_the_pending_set_and_the_next_execution() {
    let mut core = core_with(vec![spec("j1", &["t"]), spec("j2", &["t"])]);
    // J2 starting while J1 is queued changes which one is next, not the set.
    core.update("t", "j2", update(Status::InProgress), T0)
        .unwrap();
    let e = core.take_effects(T0);
    core.settle();
    assert!(e.notify.is_empty());
    assert_eq!(e.notify_next.len(), 1);
    assert_eq!(e.notify_next[0].1.as_ref().unwrap().execution.job, "j2");
    // A progress report changes neither.
    core.update("t", "j2", update(Status::InProgress), T0)
        .unwrap();
    let e = core.take_effects(T0);
    core.settle();
    assert!(e.notify.is_empty() && e.notify_next.is_empty());
    assert_eq!(e.executions.len(), 1, "but it is written");
    // J2 ends: the set shrinks and J1 is next.
    core.update("t", "j2", update(Status::Succeeded), T0)
        .unwrap();
    let e = core.take_effects(T0);
    core.settle();
    assert_eq!(ids(&e.notify[0].1), ["j1"]);
    assert_eq!(e.notify_next[0].1.as_ref().unwrap().execution.job, "j1");
    // J1 ends: nothing is next.
    core.update("t", "j1", update(Status::Failed), T0).unwrap();
    let e = core.take_effects(T0);
    assert!(e.notify[0].1.is_empty());
    assert_eq!(e.notify_next, vec![("t".to_owned(), None)]);
}

#[test]
fn a_batch_that_could_not_be_written_is_taken_back_whole() {
    let mut core = core_with(vec![spec("j1", &["t"])]);
    let before = (
        core.jobs().into_iter().cloned().collect::<Vec<_>>(),
        core.execs.clone(),
    );
    core.start_next("t", StartNext::default(), T0).unwrap();
    let mut s = spec("fw", &[]);
    s.targets = Targets::Pattern("*".into());
    core.create(s, &[], T0).unwrap();
    core.get_pending("newcomer", T0);
    assert!(core.take_effects(T0).writes());
    core.rollback();
    let after = (
        core.jobs().into_iter().cloned().collect::<Vec<_>>(),
        core.execs.clone(),
    );
    assert_eq!(before, after);
    // The pattern job is gone with its pattern: nobody is adopted.
    assert!(core.get_pending("another", T0).1.is_empty());
    assert!(!core.take_effects(T0).writes());
}

#[test]
fn a_restored_core_continues_where_the_store_left_it() {
    let mut s = spec("fw", &["a", "b", "c"]);
    s.rollout_per_minute = Some(1);
    let mut core = Jobs::restore(Limits::default(), Vec::new(), Vec::new());
    core.create(s, &[], T0).unwrap();
    core.start_next("a", StartNext::default(), T0 + 1).unwrap();
    let effects = core.take_effects(T0 + 1);
    let restored = Jobs::restore(Limits::default(), effects.jobs, effects.executions);
    assert_eq!(restored.poll_timeout(), Some(T0 + MIN));
    let mut restored = restored;
    restored.handle_timeout(T0 + MIN);
    assert_eq!(status(&restored, "b", "fw"), Some(Status::Queued));
    // New executions continue the order.
    restored
        .create(spec("next", &["a"]), &[], T0 + MIN)
        .unwrap();
    let (in_progress, queued) = restored.get_pending("a", T0 + MIN);
    assert_eq!(
        (ids(&in_progress), ids(&queued)),
        (vec!["fw"], vec!["next"])
    );
}
