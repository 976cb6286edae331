//! The machine on a virtual clock: every transition, every timeout, every crash point.

use super::*;

const SOAK: Duration = Duration::from_secs(10);

fn deployment(id: &str) -> Deployment {
    Deployment {
        id: id.into(),
        functions: Vec::new(),
        rules: None,
        health: health(),
    }
}

fn health() -> Health {
    Health {
        soak: SOAK,
        max_function_errors: 0,
        max_rule_errors: 1,
        max_dead_letters: 0,
    }
}

/// The machine, its virtual clock, and the actions it emitted so far.
struct Test {
    m: Machine,
    t0: Instant,
    now: Instant,
}

impl Test {
    fn new(last_good: Option<&str>) -> Test {
        let t0 = Instant::now();
        Test {
            m: Machine::new(Timeouts::default(), last_good.map(String::from)),
            t0,
            now: t0,
        }
    }

    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.m.poll_action()).collect()
    }

    /// Advances the clock to `at` after the start, running timeouts on the way.
    fn at(&mut self, at: Duration) {
        self.now = self.t0 + at;
        while let Some(due) = self.m.poll_timeout() {
            if due > self.now {
                break;
            }
            self.m.handle_timeout(self.now);
            if self.m.poll_timeout() == Some(due) {
                break;
            }
        }
    }

    fn submit(&mut self, id: &str) {
        self.m.submit(&deployment(id), self.now).unwrap();
    }

    fn done(&mut self, id: &str, step: Phase) {
        self.m.step_done(id, step, Ok(()), self.now);
    }

    fn failed(&mut self, id: &str, step: Phase, why: &str) {
        self.m.step_done(id, step, Err(why.into()), self.now);
    }

    fn sample(&mut self, function_errors: u64) {
        self.m.sampled(
            Counters {
                function_errors,
                ..Counters::default()
            },
            self.now,
        );
    }

    fn phase(&self) -> Option<Phase> {
        self.m.current().map(|s| s.phase)
    }

    /// Runs `id` from submission into the soak, checking each step's record and action.
    fn run_into_soak(&mut self, id: &str) {
        self.submit(id);
        assert_eq!(
            self.actions(),
            [record(id, Phase::Fetching), Action::Fetch(id.into())]
        );
        self.done(id, Phase::Fetching);
        assert_eq!(
            self.actions(),
            [record(id, Phase::Staging), Action::Stage(id.into())]
        );
        self.done(id, Phase::Staging);
        assert_eq!(
            self.actions(),
            [record(id, Phase::Switching), Action::Switch(id.into())]
        );
        self.done(id, Phase::Switching);
        assert_eq!(self.actions(), [record(id, Phase::Soaking), Action::Sample]);
        self.sample(5);
    }
}

fn record(id: &str, phase: Phase) -> Action {
    Action::Record(Status {
        id: id.into(),
        phase,
        attempt: 1,
        reason: None,
    })
}

fn record_why(id: &str, phase: Phase, attempt: u32, why: &str) -> Action {
    Action::Record(Status {
        id: id.into(),
        phase,
        attempt,
        reason: Some(why.into()),
    })
}

fn roll_back(id: &str, to: Option<&str>) -> Action {
    Action::RollBack {
        id: id.into(),
        to: to.map(String::from),
    }
}

#[test]
fn a_healthy_deployment_is_committed_after_its_soak() {
    let mut t = Test::new(Some("d0"));
    t.run_into_soak("d1");
    // Readings every second, each within the thresholds (errors stay at the baseline of 5).
    for s in 1..10 {
        t.at(Duration::from_secs(s));
        assert_eq!(t.actions(), [Action::Sample], "at {s} s");
        t.sample(5);
    }
    assert_eq!(t.m.last_good(), Some("d0"));
    t.at(SOAK);
    assert_eq!(t.actions(), [Action::Sample]);
    t.sample(5);
    assert_eq!(t.actions(), [record("d1", Phase::Committed)]);
    assert_eq!(t.m.last_good(), Some("d1"));
    assert_eq!(t.m.current(), None);
    assert_eq!(t.m.poll_timeout(), None);
}

#[test]
fn errors_over_a_threshold_during_the_soak_roll_back_with_the_reason() {
    let mut t = Test::new(Some("d0"));
    t.run_into_soak("d1");
    t.at(Duration::from_secs(1));
    t.actions();
    t.sample(6);
    let why = "function errors rose by 1 during the soak (at most 0 allowed)";
    assert_eq!(
        t.actions(),
        [
            record_why("d1", Phase::RollingBack, 1, why),
            roll_back("d1", Some("d0"))
        ]
    );
    t.done("d1", Phase::RollingBack);
    assert_eq!(t.actions(), [record_why("d1", Phase::RolledBack, 1, why)]);
    assert_eq!(t.m.last_good(), Some("d0"));
    assert_eq!(t.m.current(), None);
}

#[test]
fn a_failed_fetch_fails_without_a_rollback() {
    let mut t = Test::new(None);
    t.submit("d1");
    t.actions();
    t.failed("d1", Phase::Fetching, "artifact hash mismatch");
    assert_eq!(
        t.actions(),
        [record_why("d1", Phase::Failed, 1, "artifact hash mismatch")]
    );
    assert_eq!(t.m.current(), None);
}

#[test]
fn a_failed_staging_rolls_back_what_it_registered() {
    let mut t = Test::new(Some("d0"));
    t.submit("d1");
    t.done("d1", Phase::Fetching);
    t.actions();
    t.failed("d1", Phase::Staging, "rule r: syntax error");
    assert_eq!(
        t.actions(),
        [
            record_why(
                "d1",
                Phase::RollingBack,
                1,
                "staging failed: rule r: syntax error"
            ),
            roll_back("d1", Some("d0"))
        ]
    );
}

#[test]
fn a_failed_switch_rolls_back_to_what_ran_before() {
    let mut t = Test::new(None);
    t.submit("d1");
    t.done("d1", Phase::Fetching);
    t.done("d1", Phase::Staging);
    t.actions();
    t.failed("d1", Phase::Switching, "alias live: no such function");
    assert_eq!(
        t.actions(),
        [
            record_why(
                "d1",
                Phase::RollingBack,
                1,
                "the switch failed: alias live: no such function"
            ),
            roll_back("d1", None)
        ]
    );
}

#[test]
fn every_step_has_a_timeout() {
    let limits = Timeouts::default();
    // (steps done first, the step left hanging, its limit, the phase it ends in)
    let cases = [
        (
            0,
            limits.fetch,
            Phase::Failed,
            "fetching did not finish within 300 s",
        ),
        (
            1,
            limits.stage,
            Phase::RollingBack,
            "staging did not finish within 60 s",
        ),
        (
            2,
            limits.switch,
            Phase::RollingBack,
            "the switch did not finish within 30 s",
        ),
        (
            3,
            limits.sample,
            Phase::RollingBack,
            "reading the counters did not finish within 10 s",
        ),
    ];
    for (done, limit, ends, why) in cases {
        let mut t = Test::new(None);
        t.submit("d1");
        for step in [Phase::Fetching, Phase::Staging, Phase::Switching]
            .iter()
            .take(done)
        {
            t.done("d1", *step);
        }
        t.actions();
        t.at(limit - Duration::from_millis(1));
        assert_eq!(t.actions(), [], "{why}: early");
        t.at(limit);
        let first = t.actions().into_iter().next();
        assert_eq!(first, Some(record_why("d1", ends, 1, why)));
    }
}

#[test]
fn a_soak_reading_that_never_comes_rolls_back() {
    let mut t = Test::new(None);
    t.run_into_soak("d1");
    t.at(Duration::from_secs(1));
    assert_eq!(t.actions(), [Action::Sample]);
    t.at(Duration::from_secs(11));
    assert_eq!(
        t.actions()[0],
        record_why(
            "d1",
            Phase::RollingBack,
            1,
            "reading the counters did not finish within 10 s"
        )
    );
}

#[test]
fn a_rollback_that_fails_or_hangs_is_retried_never_abandoned() {
    let mut t = Test::new(Some("d0"));
    t.run_into_soak("d1");
    t.m.abort("operator", t.now);
    assert_eq!(t.actions().len(), 2);
    // Fails: the next attempt after the retry wait.
    t.failed("d1", Phase::RollingBack, "disk full");
    assert_eq!(t.actions(), []);
    t.at(Duration::from_secs(5));
    assert_eq!(
        t.actions(),
        [
            record_why("d1", Phase::RollingBack, 2, "operator"),
            roll_back("d1", Some("d0"))
        ]
    );
    // Hangs: the next attempt at its timeout.
    t.at(Duration::from_secs(35));
    assert_eq!(
        t.actions(),
        [
            record_why("d1", Phase::RollingBack, 3, "operator"),
            roll_back("d1", Some("d0"))
        ]
    );
    t.done("d1", Phase::RollingBack);
    assert_eq!(
        t.actions(),
        [record_why("d1", Phase::RolledBack, 3, "operator")]
    );
}

#[test]
fn a_late_answer_for_a_timed_out_step_is_ignored() {
    let mut t = Test::new(None);
    t.submit("d1");
    t.at(Timeouts::default().fetch);
    t.actions();
    t.submit("d2");
    t.actions();
    // d1's fetch answers after its deadline; d2 is the one fetching.
    t.done("d1", Phase::Fetching);
    t.done("d2", Phase::Staging);
    assert_eq!(t.actions(), []);
    assert_eq!(t.phase(), Some(Phase::Fetching));
}

#[test]
fn a_newer_deployment_supersedes_a_waiting_one_not_the_applying_one() {
    let mut t = Test::new(None);
    t.submit("d1");
    t.actions();
    t.submit("d2");
    assert_eq!(t.actions(), [record("d2", Phase::Received)]);
    t.submit("d3");
    assert_eq!(
        t.actions(),
        [
            record_why(
                "d2",
                Phase::Superseded,
                1,
                "superseded by `d3` before it started"
            ),
            record("d3", Phase::Received)
        ]
    );
    assert_eq!(t.m.queued(), Some("d3"));
    assert_eq!(
        t.m.submit(&deployment("d3"), t.now),
        Err(SubmitError::Duplicate("d3".into()))
    );
    assert_eq!(
        t.m.submit(&deployment("d1"), t.now),
        Err(SubmitError::Duplicate("d1".into()))
    );
    // d1 ends; d3 starts at once.
    t.failed("d1", Phase::Fetching, "no such file");
    assert_eq!(
        t.actions(),
        [
            record_why("d1", Phase::Failed, 1, "no such file"),
            record("d3", Phase::Fetching),
            Action::Fetch("d3".into())
        ]
    );
    assert_eq!(t.m.queued(), None);
}

#[test]
fn the_deployment_after_a_commit_rolls_back_to_it() {
    let mut t = Test::new(None);
    t.run_into_soak("d1");
    t.submit("d2");
    t.actions();
    t.at(SOAK);
    t.actions();
    t.sample(5);
    assert_eq!(
        t.actions(),
        [
            record("d1", Phase::Committed),
            record("d2", Phase::Fetching),
            Action::Fetch("d2".into())
        ]
    );
    t.done("d2", Phase::Fetching);
    t.done("d2", Phase::Staging);
    t.failed("d2", Phase::Switching, "x");
    assert_eq!(t.actions().last(), Some(&roll_back("d2", Some("d1"))));
}

#[test]
fn abort_fails_a_fetch_and_rolls_back_from_staging_on() {
    let mut t = Test::new(None);
    assert!(!t.m.abort("operator", t.now));
    t.submit("d1");
    t.actions();
    assert!(t.m.abort("operator", t.now));
    assert_eq!(
        t.actions(),
        [record_why("d1", Phase::Failed, 1, "operator")]
    );
    t.run_into_soak("d2");
    assert!(t.m.abort("operator", t.now));
    assert_eq!(t.phase(), Some(Phase::RollingBack));
    assert!(!t.m.abort("operator", t.now));
}

/// A restart finding `phase` stored for d1 (the last good being d0).
fn restart(phase: Phase, attempt: u32, reason: Option<&str>) -> Test {
    let mut t = Test::new(Some("d0"));
    t.m.recover(
        Status {
            id: "d1".into(),
            phase,
            attempt,
            reason: reason.map(String::from),
        },
        health(),
        t.now,
    );
    t
}

#[test]
fn a_restart_before_staging_resumes_from_fetching() {
    for phase in [Phase::Received, Phase::Fetching] {
        let mut t = restart(phase, 1, None);
        let attempt = if phase == Phase::Received { 1 } else { 2 };
        assert_eq!(
            t.actions(),
            [
                Action::Record(Status {
                    id: "d1".into(),
                    phase: Phase::Fetching,
                    attempt,
                    reason: None
                }),
                Action::Fetch("d1".into())
            ],
            "{phase}"
        );
    }
}

#[test]
fn restarts_while_fetching_fail_the_deployment_after_max_attempts() {
    let mut t = restart(Phase::Fetching, MAX_ATTEMPTS, None);
    assert_eq!(
        t.actions(),
        [record_why(
            "d1",
            Phase::Failed,
            MAX_ATTEMPTS,
            "the gateway restarted 3 times while fetching"
        )]
    );
    assert_eq!(t.m.current(), None);
}

#[test]
fn a_restart_during_staging_the_switch_or_the_soak_rolls_back() {
    for phase in [Phase::Staging, Phase::Switching, Phase::Soaking] {
        let mut t = restart(phase, 1, None);
        let why = format!(
            "the gateway restarted during the {phase} step: a deployment is committed only after \
             a full soak"
        );
        assert_eq!(
            t.actions(),
            [
                record_why("d1", Phase::RollingBack, 1, &why),
                roll_back("d1", Some("d0"))
            ],
            "{phase}"
        );
        t.done("d1", Phase::RollingBack);
        assert_eq!(t.actions(), [record_why("d1", Phase::RolledBack, 1, &why)]);
        assert_eq!(t.m.last_good(), Some("d0"));
    }
}

#[test]
fn a_restart_during_a_rollback_resumes_it() {
    let mut t = restart(Phase::RollingBack, 1, Some("errors"));
    assert_eq!(
        t.actions(),
        [
            record_why("d1", Phase::RollingBack, 2, "errors"),
            roll_back("d1", Some("d0"))
        ]
    );
}

#[test]
fn a_restart_after_an_end_does_nothing() {
    for phase in [
        Phase::Committed,
        Phase::RolledBack,
        Phase::Failed,
        Phase::Superseded,
    ] {
        let mut t = restart(phase, 1, None);
        assert_eq!(t.actions(), [], "{phase}");
        assert_eq!(t.m.current(), None);
    }
}

#[test]
fn a_restart_takes_up_the_waiting_deployment_after_the_applying_one() {
    let mut t = restart(Phase::Soaking, 1, None);
    t.m.recover(
        Status {
            id: "d2".into(),
            phase: Phase::Received,
            attempt: 1,
            reason: None,
        },
        health(),
        t.now,
    );
    t.actions();
    assert_eq!(t.m.queued(), Some("d2"));
    t.done("d1", Phase::RollingBack);
    assert_eq!(t.actions().last(), Some(&Action::Fetch("d2".into())));
}

#[test]
fn phases_round_trip_through_their_stored_names() {
    for phase in Phase::ALL {
        assert_eq!(Phase::parse(phase.as_str()), Some(phase));
    }
    assert_eq!(Phase::parse("stuck"), None);
}

#[test]
fn reverting_the_committed_deployment_rolls_it_back_to_the_one_before() {
    let mut t = Test::new(Some("d1"));
    assert!(t
        .m
        .revert("d1", health(), Some("d0".into()), "operator", t.now));
    assert_eq!(
        t.actions(),
        [
            record_why("d1", Phase::RollingBack, 1, "operator"),
            roll_back("d1", Some("d0"))
        ]
    );
    assert_eq!(t.m.last_good(), Some("d0"));
    assert!(!t.m.revert("d1", health(), None, "operator", t.now));
    t.done("d1", Phase::RollingBack);
    assert_eq!(
        t.actions(),
        [record_why("d1", Phase::RolledBack, 1, "operator")]
    );
}
