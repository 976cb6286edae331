//! What becomes of an async event, pure: its attempts, the backoff between them, and when and
//! with what it goes to the dead-letter topic. No clock, no tokio: the shell (`service/events.rs`)
//! runs the attempts, sleeps the [`Next::Retry`] delays and publishes the dead letters.
//!
//! At-least-once, as Lambda's asynchronous invocation: a failed attempt is retried twice, after
//! [`BACKOFF`] (100 ms, then 500 ms), then the event and the last error go to
//! `$grove/functions/{name}/dlq`. An event that cannot run at all goes there at once, counted as
//! no attempt (a full queue, a function that is not deployed) or after the attempt that found out
//! (removed while the event waited, a version that failed to load): no retry could succeed, and
//! an accepted event is never dropped silently. Only the gateway's shutdown leaves an event
//! undecided; it stays stored and runs after the restart.

use std::time::Duration;

use serde_json::{json, Value};

use crate::runtime::Failure;

/// Waits before the second and third attempt of an async event.
pub const BACKOFF: [Duration; 2] = [Duration::from_millis(100), Duration::from_millis(500)];

/// How one attempt ended.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// The handler returned success.
    Succeeded,
    /// The version ran and failed.
    Failed {
        /// The version that ran.
        version: u64,
        /// How.
        failure: Failure,
    },
    /// The function is not deployed (removed while the event waited).
    NotFound {
        /// The error's message.
        message: String,
    },
    /// The version the qualifier routes to failed to load.
    LoadFailed {
        /// The version.
        version: u64,
        /// The error's message.
        message: String,
    },
    /// The qualifier routes nowhere now (an alias or version that is gone); an alias may be
    /// moved back before the next attempt.
    Unroutable {
        /// The error's message.
        message: String,
    },
    /// The gateway is shutting down.
    Closed,
}

/// Why an event was refused before any attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The function's queue (`[functions] queue_bound`) is full.
    QueueFull,
    /// No function of that name is deployed; the dead letter is counted under `(unknown)`, as a
    /// device chooses such names.
    NotDeployed,
}

/// A dead letter to publish: the version that last failed the event (if one ran), the attempts
/// made, and the error (`{"kind", "message"}`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeadLetter {
    pub(crate) version: Option<u64>,
    pub(crate) attempts: usize,
    pub(crate) error: Value,
}

/// What to do after an attempt.
#[derive(Debug, PartialEq)]
pub(crate) enum Next {
    /// The event is done: forget it.
    Done,
    /// Attempt again after this long (count a retry).
    Retry(Duration),
    /// Send it to the dead-letter topic, then forget it.
    DeadLetter(DeadLetter),
    /// Leave it stored: it runs again after the restart.
    Keep,
}

/// The error of an event whose function is not deployed.
pub(crate) fn not_found(message: &str) -> Value {
    json!({"kind": "not_found", "message": message})
}

impl Refusal {
    /// The dead letter of a refused event (no attempt made); `message` is the not-found error's.
    pub(crate) fn dead_letter(self, not_found_message: &str) -> DeadLetter {
        let error = match self {
            Refusal::QueueFull => {
                json!({"kind": "queue_full", "message": "the function's queue is full"})
            }
            Refusal::NotDeployed => not_found(not_found_message),
        };
        DeadLetter {
            version: None,
            attempts: 0,
            error,
        }
    }
}

/// One event's attempts so far.
#[derive(Debug, Default)]
pub(crate) struct Attempts {
    /// Attempts made.
    made: usize,
}

impl Attempts {
    /// What to do after the next attempt ended as `attempt`.
    pub(crate) fn after(&mut self, attempt: Attempt) -> Next {
        self.made += 1;
        let (version, error) = match attempt {
            Attempt::Succeeded => return Next::Done,
            Attempt::Closed => return Next::Keep,
            // No retry can succeed.
            Attempt::NotFound { message } => {
                return Next::DeadLetter(DeadLetter {
                    version: None,
                    attempts: self.made,
                    error: not_found(&message),
                })
            }
            Attempt::LoadFailed { version, message } => {
                return Next::DeadLetter(DeadLetter {
                    version: Some(version),
                    attempts: self.made,
                    error: json!({"kind": "load_failed", "message": message}),
                })
            }
            Attempt::Failed { version, failure } => {
                (Some(version), crate::protocol::failure_json(&failure))
            }
            Attempt::Unroutable { message } => {
                (None, json!({"kind": "routing", "message": message}))
            }
        };
        match BACKOFF.get(self.made - 1) {
            Some(wait) => Next::Retry(*wait),
            None => Next::DeadLetter(DeadLetter {
                version,
                attempts: self.made,
                error,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::FailureKind;

    fn failed(version: u64) -> Attempt {
        Attempt::Failed {
            version,
            failure: Failure {
                kind: FailureKind::Handler,
                message: "no".into(),
            },
        }
    }

    #[test]
    fn a_failing_event_is_tried_three_times_with_backoff_then_dead_lettered_with_its_last_error() {
        let mut a = Attempts::default();
        assert_eq!(a.after(failed(1)), Next::Retry(Duration::from_millis(100)));
        assert_eq!(a.after(failed(1)), Next::Retry(Duration::from_millis(500)));
        assert_eq!(
            a.after(failed(2)),
            Next::DeadLetter(DeadLetter {
                version: Some(2),
                attempts: 3,
                error: json!({"kind": "handler_error", "message": "no"}),
            })
        );
    }

    #[test]
    fn success_after_a_retry_is_done_and_shutdown_keeps_the_event() {
        let mut a = Attempts::default();
        assert!(matches!(a.after(failed(1)), Next::Retry(_)));
        assert_eq!(a.after(Attempt::Succeeded), Next::Done);
        let mut b = Attempts::default();
        assert!(matches!(b.after(failed(1)), Next::Retry(_)));
        assert_eq!(b.after(Attempt::Closed), Next::Keep);
    }

    #[test]
    fn what_no_retry_can_mend_is_dead_lettered_at_once_and_routing_errors_are_retried() {
        let mut a = Attempts::default();
        assert!(matches!(a.after(failed(1)), Next::Retry(_)));
        assert_eq!(
            a.after(Attempt::NotFound {
                message: "gone".into()
            }),
            Next::DeadLetter(DeadLetter {
                version: None,
                attempts: 2,
                error: json!({"kind": "not_found", "message": "gone"}),
            })
        );
        let mut b = Attempts::default();
        assert_eq!(
            b.after(Attempt::LoadFailed {
                version: 4,
                message: "bad".into()
            }),
            Next::DeadLetter(DeadLetter {
                version: Some(4),
                attempts: 1,
                error: json!({"kind": "load_failed", "message": "bad"}),
            })
        );
        let mut c = Attempts::default();
        let unroutable = || Attempt::Unroutable {
            message: "alias \"live\" does not exist".into(),
        };
        assert!(matches!(c.after(unroutable()), Next::Retry(_)));
        assert!(matches!(c.after(unroutable()), Next::Retry(_)));
        let Next::DeadLetter(last) = c.after(unroutable()) else {
            panic!("the third failure is dead-lettered");
        };
        assert_eq!((last.version, last.attempts), (None, 3));
        assert_eq!(last.error["kind"], "routing");
    }

    #[test]
    fn refused_events_are_dead_lettered_with_no_attempt() {
        let full = Refusal::QueueFull.dead_letter("unused");
        assert_eq!((full.version, full.attempts), (None, 0));
        assert_eq!(full.error["kind"], "queue_full");
        let unknown = Refusal::NotDeployed.dead_letter("no function named \"x\"");
        assert_eq!(
            unknown.error,
            json!({"kind": "not_found", "message": "no function named \"x\""})
        );
    }
}
