//! What an operator sees of the rules beside their counters (the console's rules page): the rule
//! set as last applied, each rule described in a line per action, and each rule's last action
//! failure. The engine writes it when it applies a rule set and when an action fails; readers
//! take a copy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use grove_rules::Failure;

use crate::config::{Action, RuleConfig};

/// The rules as last applied and their last failures; cloned handles share it.
#[derive(Clone, Debug, Default)]
pub struct RuleStatus(Arc<Mutex<Shared>>);

#[derive(Debug, Default)]
struct Shared {
    rules: Vec<RuleSummary>,
    /// By rule name; a rule's entry stays across reloads (its counters do too).
    last_failures: HashMap<String, LastFailure>,
}

/// One rule as it was applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSummary {
    /// Its name.
    pub name: String,
    /// Whether it runs.
    pub enabled: bool,
    /// Its SQL statement.
    pub sql: String,
    /// Its actions, one line each (`republish to alerts/${topic(2)} (QoS 1)`).
    pub actions: Vec<String>,
    /// Its error action, if any, in the same form.
    pub error_action: Option<String>,
    /// Its last action failure, if any since the gateway started.
    pub last_failure: Option<LastFailure>,
}

/// A rule's last failed action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastFailure {
    /// When it failed.
    pub at: SystemTime,
    /// AWS's name of the action kind (`RepublishAction`, ...).
    pub action: String,
    /// What it acted on (a topic, a thing name, a function).
    pub resource: String,
    /// Why it failed.
    pub message: String,
}

impl RuleStatus {
    fn shared(&self) -> MutexGuard<'_, Shared> {
        // Nothing panics while holding it; a poisoned lock still holds consistent data.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The rule set now running (disabled rules included, as configured).
    pub(crate) fn applied(&self, rules: &[RuleConfig]) {
        self.shared().rules = rules
            .iter()
            .map(|r| RuleSummary {
                name: r.name.clone(),
                enabled: r.enabled,
                sql: r.rule.sql().to_owned(),
                actions: r.actions.iter().map(describe).collect(),
                error_action: r.error_action.as_ref().map(describe),
                last_failure: None,
            })
            .collect();
    }

    /// `rule`'s action failed, `failure` the last of its failures on one message.
    pub(crate) fn failed(&self, rule: &str, failure: &Failure) {
        let last = LastFailure {
            at: SystemTime::now(),
            action: failure.failed_action.clone(),
            resource: failure.failed_resource.clone(),
            message: failure.error_message.clone(),
        };
        self.shared().last_failures.insert(rule.to_owned(), last);
    }

    /// The rules now, in their configured order, each with its last failure.
    pub fn rules(&self) -> Vec<RuleSummary> {
        let shared = self.shared();
        (shared.rules.iter())
            .map(|r| RuleSummary {
                last_failure: shared.last_failures.get(&r.name).cloned(),
                ..r.clone()
            })
            .collect()
    }
}

/// One line for an action, its templates as written.
fn describe(action: &Action) -> String {
    match action {
        Action::Republish { topic, qos, retain } => format!(
            "republish to {} (QoS {qos}{})",
            topic.text(),
            if *retain { ", retained" } else { "" }
        ),
        Action::Shadow { thing, name } => match name {
            Some(name) => format!("update shadow {} of {}", name.text(), thing.text()),
            None => format!("update the classic shadow of {}", thing.text()),
        },
        Action::Cloud { topic } => format!("send to the cloud on {}", topic.text()),
        Action::Function { target } => format!("invoke function {target}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RawAction, RawRule};

    fn rule() -> RuleConfig {
        let raw = RawRule {
            name: "hot".into(),
            enabled: true,
            sql: "SELECT * FROM 'site/+/temp' WHERE temp > 30".into(),
            actions: vec![
                RawAction::Republish {
                    topic: "alerts/${topic(2)}".into(),
                    qos: 1,
                    retain: false,
                },
                RawAction::Shadow {
                    thing: "${topic(2)}".into(),
                    name: Some("env".into()),
                },
            ],
            error_action: Some(RawAction::Cloud {
                topic: "errors".into(),
            }),
        };
        raw.compile().expect("it compiles")
    }

    #[test]
    fn a_rule_is_described_as_written_and_keeps_its_last_failure_across_a_reload() {
        let status = RuleStatus::default();
        let r = rule();
        status.applied(std::slice::from_ref(&r));
        let listed = status.rules();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].sql, "SELECT * FROM 'site/+/temp' WHERE temp > 30");
        assert_eq!(
            listed[0].actions,
            [
                "republish to alerts/${topic(2)} (QoS 1)",
                "update shadow env of ${topic(2)}"
            ]
        );
        assert_eq!(
            listed[0].error_action.as_deref(),
            Some("send to the cloud on errors")
        );
        assert_eq!(listed[0].last_failure, None);

        let failure = |message: &str| Failure {
            failed_action: "IotShadowAction".into(),
            failed_resource: "t2".into(),
            error_message: message.into(),
        };
        status.failed("hot", &failure("400 first"));
        status.failed("hot", &failure("409 second"));
        status.applied(&[r]);
        let last = status.rules()[0].last_failure.clone().expect("kept");
        assert_eq!(
            (
                last.action.as_str(),
                last.resource.as_str(),
                last.message.as_str()
            ),
            ("IotShadowAction", "t2", "409 second")
        );
    }
}
