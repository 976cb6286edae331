//! The soak check: how far the error counters may rise while a new deployment is on trial.
//!
//! The first half of the health check (the functions load, the rules compile) is the staging
//! step's own success; this is the second half, the counters the gateway already keeps (function
//! errors, rule errors, dead letters) read at the start of the soak and then periodically, each
//! rise compared with its threshold.

use std::time::Duration;

/// A deployment's soak period and thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// How long the new deployment runs on trial before it is committed.
    pub soak: Duration,
    /// Most function errors (traps, timeouts, errors returned) during the soak.
    pub max_function_errors: u64,
    /// Most rule errors (evaluation or action failures) during the soak.
    pub max_rule_errors: u64,
    /// Most dead letters (events dropped after their retries) during the soak.
    pub max_dead_letters: u64,
}

impl Default for Health {
    /// 30 s and no error at all: a deployment that adds errors is not a good one, unless its
    /// document says how many it may add.
    fn default() -> Health {
        Health {
            soak: Duration::from_secs(30),
            max_function_errors: 0,
            max_rule_errors: 0,
            max_dead_letters: 0,
        }
    }
}

/// The monotonic error counters the soak watches, read from the components' metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Function errors so far.
    pub function_errors: u64,
    /// Rule errors so far.
    pub rule_errors: u64,
    /// Dead letters so far.
    pub dead_letters: u64,
}

impl Health {
    /// Why the counters' rise from `baseline` to `now` fails the soak, if it does.
    pub fn check(&self, baseline: Counters, now: Counters) -> Result<(), String> {
        let checks = [
            (
                "function errors",
                now.function_errors.saturating_sub(baseline.function_errors),
                self.max_function_errors,
            ),
            (
                "rule errors",
                now.rule_errors.saturating_sub(baseline.rule_errors),
                self.max_rule_errors,
            ),
            (
                "dead letters",
                now.dead_letters.saturating_sub(baseline.dead_letters),
                self.max_dead_letters,
            ),
        ];
        for (what, rise, max) in checks {
            if rise > max {
                return Err(format!(
                    "{what} rose by {rise} during the soak (at most {max} allowed)"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_counter_is_held_to_its_threshold() {
        let health = Health {
            max_function_errors: 1,
            max_rule_errors: 2,
            max_dead_letters: 0,
            ..Health::default()
        };
        let base = Counters {
            function_errors: 10,
            rule_errors: 10,
            dead_letters: 10,
        };
        let at = |f: u64, r: u64, d: u64| Counters {
            function_errors: 10 + f,
            rule_errors: 10 + r,
            dead_letters: 10 + d,
        };
        assert_eq!(health.check(base, at(1, 2, 0)), Ok(()));
        assert_eq!(
            health.check(base, at(2, 0, 0)),
            Err("function errors rose by 2 during the soak (at most 1 allowed)".into())
        );
        assert!(health
            .check(base, at(0, 3, 0))
            .unwrap_err()
            .starts_with("rule errors"));
        assert!(health
            .check(base, at(0, 0, 1))
            .unwrap_err()
            .starts_with("dead letters"));
    }
}
