//! The apply state machine: one deployment at a time from received to committed or rolled back,
//! each step under a timeout, sans-IO in the quinn-proto manner.
//!
//! ```text
//!  received -> fetching -> staging -> switching -> soaking -> committed
//!                 |           |           |           |
//!                 v           v           v           v
//!               failed      rolling back ----------------> rolled back
//! ```
//!
//! - fetching: every artifact fetched and checked against its SHA-256; staging: the modules
//!   loaded and the rules compiled beside the running ones (the first half of the health check);
//!   switching: the functions' aliases and the rules moved to the new deployment; soaking: the
//!   error counters read periodically against the thresholds ([`crate::health`]).
//! - A failure or timeout while fetching ends `failed`: nothing on the gateway has changed. From
//!   staging on, it rolls back to what ran before (the last good deployment, or the gateway's own
//!   configuration before any): staging registers new function versions, and a function whose
//!   triggers go to `$LATEST` serves its new version from then on. A rollback that fails or times out is retried (it
//!   restores a local state that ran before) and the status counts the attempts: the machine never
//!   waits for anything without a deadline.
//! - One deployment is applied at a time; one more may wait (`received`), and a newer one
//!   supersedes it (`superseded`). An applying deployment is not interrupted by a newer one: it is
//!   a few seconds from an end, and an end is what makes the next one's rollback target known.
//! - Write-ahead: every transition's first action is [`Action::Record`] of the new step, which the
//!   shell writes to SQLite before it performs the actions after it. So after a power cut the
//!   stored step is the one that was in progress, and [`Machine::recover`] decides: a received or
//!   fetching deployment resumes (fetching again is idempotent, artifacts are checked by hash;
//!   after [`MAX_ATTEMPTS`] interrupted attempts it fails, so it cannot loop); from staging on it
//!   rolls back (a deployment is committed only after a full soak without a restart, and staging
//!   or the switch may have been cut half way); a rollback resumes. Committing is the one write
//!   of `committed`, so it is done or not done.
//!
//! The shell answers each step with [`Machine::step_done`], naming the deployment and the step, so
//! that a late answer for a step that already timed out is ignored.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::document::Deployment;
use crate::health::{Counters, Health};

/// Attempts of fetching, restarts included, before a deployment fails.
pub const MAX_ATTEMPTS: u32 = 3;

/// A deployment's step, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the one being applied.
    Received,
    /// Fetching and verifying the artifacts.
    Fetching,
    /// Loading the modules and compiling the rules, beside what runs.
    Staging,
    /// Moving aliases and rules to the new deployment.
    Switching,
    /// On trial: the error counters are watched.
    Soaking,
    /// Restoring what ran before the switch.
    RollingBack,
    /// Done: the gateway runs it (final).
    Committed,
    /// Undone: the gateway runs what it ran before (final).
    RolledBack,
    /// Refused or failed while fetching: nothing changed (final).
    Failed,
    /// Never applied: a newer deployment came while it waited (final).
    Superseded,
}

impl Phase {
    const ALL: [Phase; 10] = [
        Phase::Received,
        Phase::Fetching,
        Phase::Staging,
        Phase::Switching,
        Phase::Soaking,
        Phase::RollingBack,
        Phase::Committed,
        Phase::RolledBack,
        Phase::Failed,
        Phase::Superseded,
    ];

    /// Its stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Received => "received",
            Phase::Fetching => "fetching",
            Phase::Staging => "staging",
            Phase::Switching => "switching",
            Phase::Soaking => "soaking",
            Phase::RollingBack => "rolling_back",
            Phase::Committed => "committed",
            Phase::RolledBack => "rolled_back",
            Phase::Failed => "failed",
            Phase::Superseded => "superseded",
        }
    }

    /// The phase a stored name names.
    pub fn parse(name: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// Whether the deployment has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Phase::Committed | Phase::RolledBack | Phase::Failed | Phase::Superseded
        )
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is stored of a deployment's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The deployment.
    pub id: String,
    /// Its step.
    pub phase: Phase,
    /// Attempts of fetching (a restart while fetching starts the next), or, rolling back, of
    /// the rollback; 1 for the first.
    pub attempt: u32,
    /// Why it failed or is rolling back.
    pub reason: Option<String>,
}

/// What the shell does, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Store this status (durably) before doing the actions after it.
    Record(Status),
    /// Fetch and verify the deployment's artifacts; answer with `step_done(id, Fetching, ..)`.
    Fetch(String),
    /// Stage it; answer with `step_done(id, Staging, ..)`.
    Stage(String),
    /// Switch to it, keeping what to restore; answer with `step_done(id, Switching, ..)`.
    Switch(String),
    /// Read the error counters; answer with [`Machine::sampled`].
    Sample,
    /// Restore what ran before this deployment's switch (`to`: the last good deployment, if any,
    /// for the record); answer with `step_done(id, RollingBack, ..)`.
    RollBack {
        /// The deployment being undone.
        id: String,
        /// The deployment that ran before it.
        to: Option<String>,
    },
}

/// Each step's time limit, and the soak's reading period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Fetching and verifying every artifact.
    pub fetch: Duration,
    /// Loading the modules and compiling the rules.
    pub stage: Duration,
    /// The switch.
    pub switch: Duration,
    /// A rollback attempt.
    pub rollback: Duration,
    /// Waiting after a failed rollback attempt before the next one.
    pub rollback_retry: Duration,
    /// Reading the counters.
    pub sample: Duration,
    /// Between two readings during the soak.
    pub sample_every: Duration,
}

impl Default for Timeouts {
    /// Generous for a board on a slow link (a 10 MiB module at 1 Mbit/s is 80 s), short enough
    /// that a stuck step is noticed within minutes, not never.
    fn default() -> Timeouts {
        Timeouts {
            fetch: Duration::from_secs(300),
            stage: Duration::from_secs(60),
            switch: Duration::from_secs(30),
            rollback: Duration::from_secs(30),
            rollback_retry: Duration::from_secs(5),
            sample: Duration::from_secs(10),
            sample_every: Duration::from_secs(1),
        }
    }
}

/// Why a deployment is not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// Its id is the one being applied or waiting.
    #[error("deployment `{0}` is already being applied or waiting")]
    Duplicate(String),
}

/// The deployment being applied.
#[derive(Debug)]
struct Active {
    id: String,
    health: Health,
    phase: Phase,
    attempt: u32,
    reason: Option<String>,
    /// When the step in progress times out, or (soaking, rolling back after a failure) when the
    /// next reading or attempt is due.
    deadline: Instant,
    /// Soaking: the first reading, when the soak ends, and whether a reading is awaited.
    baseline: Option<Counters>,
    soak_until: Option<Instant>,
    awaiting: bool,
}

/// The state machine.
#[derive(Debug)]
pub struct Machine {
    timeouts: Timeouts,
    active: Option<Active>,
    queued: Option<(String, Health)>,
    last_good: Option<String>,
    actions: VecDeque<Action>,
}

impl Machine {
    /// A machine with no deployment in progress; `last_good` is the last committed deployment.
    pub fn new(timeouts: Timeouts, last_good: Option<String>) -> Machine {
        Machine {
            timeouts,
            active: None,
            queued: None,
            last_good,
            actions: VecDeque::new(),
        }
    }

    /// The last committed deployment.
    pub fn last_good(&self) -> Option<&str> {
        self.last_good.as_deref()
    }

    /// The deployment being applied, if any.
    pub fn current(&self) -> Option<Status> {
        self.active.as_ref().map(Active::status)
    }

    /// The deployment waiting, if any.
    pub fn queued(&self) -> Option<&str> {
        self.queued.as_ref().map(|(id, _)| id.as_str())
    }

    /// Takes a new deployment: applied now, or waiting for the one being applied (superseding
    /// the one that waited).
    pub fn submit(&mut self, deployment: &Deployment, now: Instant) -> Result<(), SubmitError> {
        let id = &deployment.id;
        if self.active.as_ref().is_some_and(|a| &a.id == id)
            || self.queued.as_ref().is_some_and(|(q, _)| q == id)
        {
            return Err(SubmitError::Duplicate(id.clone()));
        }
        self.enqueue(id.clone(), deployment.health, now);
        Ok(())
    }

    /// Takes up a deployment found unfinished in the store on start, in the order: the one that
    /// was being applied, then the one that waited. `health` comes from its stored document.
    pub fn recover(&mut self, status: Status, health: Health, now: Instant) {
        match status.phase {
            Phase::Received => self.enqueue(status.id, health, now),
            Phase::Fetching => {
                let attempt = status.attempt + 1;
                if attempt > MAX_ATTEMPTS {
                    let reason = format!(
                        "the gateway restarted {} times while fetching",
                        status.attempt
                    );
                    self.activate(status.id, health, now);
                    if let Some(a) = &mut self.active {
                        a.attempt = status.attempt;
                    }
                    self.fail(Some(reason), now);
                } else {
                    self.activate(status.id, health, now);
                    if let Some(a) = &mut self.active {
                        a.attempt = attempt;
                    }
                    self.enter(Phase::Fetching, now);
                }
            }
            Phase::Staging | Phase::Switching | Phase::Soaking => {
                let reason = format!(
                    "the gateway restarted during the {} step: a deployment is committed only \
                     after a full soak",
                    status.phase
                );
                self.activate(status.id, health, now);
                self.roll_back(reason, now);
            }
            Phase::RollingBack => {
                self.activate(status.id, health, now);
                if let Some(a) = &mut self.active {
                    a.attempt = status.attempt + 1;
                    a.reason = status.reason;
                }
                self.enter(Phase::RollingBack, now);
            }
            Phase::Committed | Phase::RolledBack | Phase::Failed | Phase::Superseded => {}
        }
    }

    /// The shell's answer to a step: `Ok` when it finished, `Err(why)` when it failed. An answer
    /// for another deployment or step (late, after a timeout) is ignored.
    pub fn step_done(&mut self, id: &str, step: Phase, result: Result<(), String>, now: Instant) {
        let Some(a) = &self.active else { return };
        if a.id != id || a.phase != step || (step == Phase::RollingBack && !a.awaiting) {
            return;
        }
        match (step, result) {
            (Phase::Fetching, Ok(())) => self.enter(Phase::Staging, now),
            (Phase::Staging, Ok(())) => self.enter(Phase::Switching, now),
            (Phase::Switching, Ok(())) => self.enter(Phase::Soaking, now),
            (Phase::RollingBack, Ok(())) => self.finish(Phase::RolledBack, now),
            (Phase::Fetching, Err(why)) => self.fail(Some(why), now),
            (Phase::Staging, Err(why)) => self.roll_back(format!("staging failed: {why}"), now),
            (Phase::Switching, Err(why)) => {
                self.roll_back(format!("the switch failed: {why}"), now)
            }
            (Phase::RollingBack, Err(_)) => {
                let retry = now + self.timeouts.rollback_retry;
                if let Some(a) = &mut self.active {
                    a.awaiting = false;
                    a.deadline = retry;
                }
            }
            _ => {}
        }
    }

    /// The counters read for [`Action::Sample`].
    pub fn sampled(&mut self, counters: Counters, now: Instant) {
        let every = self.timeouts.sample_every;
        let Some(a) = &mut self.active else { return };
        if a.phase != Phase::Soaking || !a.awaiting {
            return;
        }
        a.awaiting = false;
        let Some(baseline) = a.baseline else {
            a.baseline = Some(counters);
            let until = now + a.health.soak;
            a.soak_until = Some(until);
            a.deadline = (now + every).min(until);
            return;
        };
        if let Err(why) = a.health.check(baseline, counters) {
            self.roll_back(why, now);
        } else if a.soak_until.is_some_and(|until| now >= until) {
            self.last_good = Some(a.id.clone());
            self.finish(Phase::Committed, now);
        } else {
            a.deadline = (now + every).min(a.soak_until.unwrap_or(now));
        }
    }

    /// The operator stops the deployment being applied: while fetching it fails, from staging on
    /// it rolls back. False when there is none (or it is already rolling back).
    pub fn abort(&mut self, reason: &str, now: Instant) -> bool {
        let Some(a) = &self.active else { return false };
        match a.phase {
            Phase::Fetching => self.fail(Some(reason.to_owned()), now),
            Phase::Staging | Phase::Switching | Phase::Soaking => {
                self.roll_back(reason.to_owned(), now)
            }
            _ => return false,
        }
        true
    }

    /// The operator reverts the committed deployment `id` to what ran before it: a rollback
    /// like a failed deployment's, after which `previous` (the committed deployment before it)
    /// is the last good one. False when a deployment is being applied (abort that instead).
    pub fn revert(
        &mut self,
        id: &str,
        health: Health,
        previous: Option<String>,
        reason: &str,
        now: Instant,
    ) -> bool {
        if self.active.is_some() {
            return false;
        }
        self.last_good = previous;
        self.activate(id.to_owned(), health, now);
        self.roll_back(reason.to_owned(), now);
        true
    }

    /// When [`Machine::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.active.as_ref().map(|a| a.deadline)
    }

    /// Advances the clock: a step past its deadline fails, a soak reading or a rollback retry
    /// falls due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(a) = &mut self.active else { return };
        if now < a.deadline {
            return;
        }
        let late = |what: &str, limit: Duration| {
            format!("{what} did not finish within {} s", limit.as_secs_f64())
        };
        match a.phase {
            Phase::Fetching => self.fail(Some(late("fetching", self.timeouts.fetch)), now),
            Phase::Staging => self.roll_back(late("staging", self.timeouts.stage), now),
            Phase::Switching => self.roll_back(late("the switch", self.timeouts.switch), now),
            Phase::Soaking if a.awaiting => {
                self.roll_back(late("reading the counters", self.timeouts.sample), now)
            }
            Phase::Soaking => {
                a.awaiting = true;
                a.deadline = now + self.timeouts.sample;
                self.actions.push_back(Action::Sample);
            }
            Phase::RollingBack => {
                // Timed out, or the wait after a failed attempt is over: the next attempt.
                a.attempt += 1;
                self.enter(Phase::RollingBack, now);
            }
            _ => {}
        }
    }

    /// The next thing for the shell to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn enqueue(&mut self, id: String, health: Health, now: Instant) {
        if self.active.is_none() {
            self.activate(id, health, now);
            self.enter(Phase::Fetching, now);
            return;
        }
        if let Some((old, _)) = self.queued.take() {
            self.actions.push_back(Action::Record(Status {
                id: old,
                phase: Phase::Superseded,
                attempt: 1,
                reason: Some(format!("superseded by `{id}` before it started")),
            }));
        }
        self.actions.push_back(Action::Record(Status {
            id: id.clone(),
            phase: Phase::Received,
            attempt: 1,
            reason: None,
        }));
        self.queued = Some((id, health));
    }

    fn activate(&mut self, id: String, health: Health, now: Instant) {
        self.active = Some(Active {
            id,
            health,
            phase: Phase::Received,
            attempt: 1,
            reason: None,
            deadline: now,
            baseline: None,
            soak_until: None,
            awaiting: false,
        });
    }

    /// Moves the active deployment to `phase` and emits its record and action.
    fn enter(&mut self, phase: Phase, now: Instant) {
        let t = self.timeouts;
        let last_good = self.last_good.clone();
        let Some(a) = &mut self.active else { return };
        a.phase = phase;
        a.awaiting = true;
        let (limit, action) = match phase {
            Phase::Fetching => (t.fetch, Action::Fetch(a.id.clone())),
            Phase::Staging => (t.stage, Action::Stage(a.id.clone())),
            Phase::Switching => (t.switch, Action::Switch(a.id.clone())),
            Phase::Soaking => (t.sample, Action::Sample),
            Phase::RollingBack => (
                t.rollback,
                Action::RollBack {
                    id: a.id.clone(),
                    to: last_good,
                },
            ),
            _ => return,
        };
        a.deadline = now + limit;
        self.actions.push_back(Action::Record(a.status()));
        self.actions.push_back(action);
    }

    fn fail(&mut self, reason: Option<String>, now: Instant) {
        if let Some(a) = &mut self.active {
            a.reason = reason;
        }
        self.finish(Phase::Failed, now);
    }

    fn roll_back(&mut self, reason: String, now: Instant) {
        if let Some(a) = &mut self.active {
            a.reason = Some(reason);
            a.attempt = 1;
            a.phase = Phase::RollingBack;
        }
        self.enter(Phase::RollingBack, now);
    }

    /// Ends the active deployment in `phase` and starts the waiting one.
    fn finish(&mut self, phase: Phase, now: Instant) {
        let Some(mut a) = self.active.take() else {
            return;
        };
        a.phase = phase;
        self.actions.push_back(Action::Record(a.status()));
        if let Some((id, health)) = self.queued.take() {
            self.activate(id, health, now);
            self.enter(Phase::Fetching, now);
        }
    }
}

impl Active {
    fn status(&self) -> Status {
        Status {
            id: self.id.clone(),
            phase: self.phase,
            attempt: self.attempt,
            reason: self.reason.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
