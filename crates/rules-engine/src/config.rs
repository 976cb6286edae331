//! The `[[rules]]` section: each rule compiled and checked when the configuration is loaded, its
//! actions, and the hop and fan-out bounds every rule output obeys.

use std::fmt;

use grove_broker::bus::MAX_HOPS;
use grove_rules::{CompileError, Rule, Template};
use serde::Deserialize;

/// The most messages one message can cause through the rules, all hops together: twice the
/// leaves of a binary tree [`MAX_HOPS`](grove_broker::bus::MAX_HOPS) deep (see [`fan_out`]).
pub const MAX_CAUSED: u64 = 2 << MAX_HOPS;

/// The hop count of the messages one step of the rules makes from one message, and how many of
/// that step's outputs may be acted on; the hop limit bounds depth, this bounds breadth.
///
/// `hops` is the message's hop count, and `children[i]` how many messages output `i`'s actions
/// can make (its actions, plus one for its error action). A step making `n` messages advances
/// them by `max(1, ceil(log2(n)))` hops instead of 1, and keeps only the outputs that fit
/// within [`MAX_HOPS`](grove_broker::bus::MAX_HOPS). Seen as a budget of `2^(MAX_HOPS - hops)` leaves per message, a step
/// hands its children together at most its own budget, and each child at most half of it, so all
/// the messages one message causes number fewer than twice its budget: [`MAX_CAUSED`] for a
/// device's message. A chain (one output, one action) advances 1 hop as before. (The rules see
/// each message once, on one bus link, however many of their filters match it: the router sends
/// one copy per session.)
pub fn fan_out(hops: u32, children: &[usize]) -> (u32, usize) {
    let Some(room) = MAX_HOPS.checked_sub(hops).filter(|r| *r > 0) else {
        return (hops.saturating_add(1), 0);
    };
    let budget = 1u64 << room;
    let mut made = 0u64;
    let mut kept = 0;
    for &n in children {
        if made + n as u64 > budget {
            break;
        }
        made += n as u64;
        kept += 1;
    }
    let spread = made.max(1).next_power_of_two().trailing_zeros();
    (hops + spread.max(1), kept)
}

/// AWS's name of the shadow action, in error payloads.
pub(crate) const SHADOW_ACTION: &str = "IotShadowAction";

/// A `[[rules]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// The rule's name (metrics, logs, error payloads).
    pub name: String,
    /// The AWS IoT SQL statement.
    pub sql: String,
    /// Whether the rule runs.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// What to do with each output.
    #[serde(default)]
    pub actions: Vec<RawAction>,
    /// Where failures of the actions go.
    pub error_action: Option<RawAction>,
}

fn yes() -> bool {
    true
}

/// An action as written: exactly one of the keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum RawAction {
    /// Publish the output on a topic.
    Republish {
        /// Topic template.
        topic: String,
        /// QoS 0 or 1.
        #[serde(default)]
        qos: u8,
        /// Retain the message.
        #[serde(default)]
        retain: bool,
    },
    /// Update a device shadow with the output.
    Shadow {
        /// Thing name template.
        thing: String,
        /// Named shadow (template); the classic shadow when absent.
        name: Option<String>,
    },
    /// Send the output to the cloud through the outbox.
    Cloud {
        /// Cloud topic template.
        topic: String,
    },
    /// Invoke a local function asynchronously with the output: `name` or `name:qualifier`.
    Function(String),
}

/// A compiled action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// See [`RawAction::Republish`].
    Republish {
        /// The compiled topic template.
        topic: Template,
        /// QoS.
        qos: u8,
        /// Retain flag.
        retain: bool,
    },
    /// See [`RawAction::Shadow`].
    Shadow {
        /// The compiled thing-name template.
        thing: Template,
        /// The compiled shadow-name template.
        name: Option<Template>,
    },
    /// See [`RawAction::Cloud`].
    Cloud {
        /// The compiled cloud topic template.
        topic: Template,
    },
    /// See [`RawAction::Function`].
    Function {
        /// `name` or `name:qualifier`, checked.
        target: String,
    },
}

impl Action {
    /// AWS's name of the action kind, for error payloads.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Republish { .. } => "RepublishAction",
            Action::Shadow { .. } => SHADOW_ACTION,
            Action::Cloud { .. } => "CloudAction",
            Action::Function { .. } => "LambdaAction",
        }
    }
}

/// A compiled, checked rule; equal to another when everything it says is (the rule compares by
/// its SQL text, templates by theirs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleConfig {
    /// The rule's name.
    pub name: String,
    /// Whether it runs.
    pub enabled: bool,
    /// The compiled statement.
    pub rule: Rule,
    /// Its actions.
    pub actions: Vec<Action>,
    /// Its error action.
    pub error_action: Option<Action>,
}

/// Why a rule cannot run.
#[derive(Debug)]
pub enum RuleError {
    /// The SQL does not compile.
    Sql(CompileError),
    /// An action's template does not compile.
    Template {
        /// Which template (`actions[0].topic`, ...).
        field: String,
        /// The error.
        error: CompileError,
    },
    /// Something else about an action.
    Action(String),
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleError::Sql(e) => write!(f, "the SQL does not compile:\n{e}"),
            RuleError::Template { field, error } => write!(f, "{field} does not compile:\n{error}"),
            RuleError::Action(m) => f.write_str(m),
        }
    }
}

impl RuleConfig {
    /// Whether any action (or the error action) sends to the cloud.
    pub fn uses_cloud(&self) -> bool {
        self.uses(|a| matches!(a, Action::Cloud { .. }))
    }

    /// Whether any action (or the error action) updates a shadow.
    pub fn uses_shadow(&self) -> bool {
        self.uses(|a| matches!(a, Action::Shadow { .. }))
    }

    /// Whether any action (or the error action) invokes a function.
    pub fn uses_functions(&self) -> bool {
        self.uses(|a| matches!(a, Action::Function { .. }))
    }

    fn uses(&self, kind: impl Fn(&Action) -> bool) -> bool {
        self.actions.iter().chain(&self.error_action).any(kind)
    }
}

impl RawRule {
    /// Compiles and checks the rule.
    pub fn compile(&self) -> Result<RuleConfig, RuleError> {
        let rule = Rule::compile(&self.sql).map_err(RuleError::Sql)?;
        let actions = self
            .actions
            .iter()
            .enumerate()
            .map(|(i, a)| compile_action(a, &format!("actions[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        if actions.is_empty() {
            return Err(RuleError::Action(
                "a rule needs at least one action".to_owned(),
            ));
        }
        let error_action = self
            .error_action
            .as_ref()
            .map(|a| compile_action(a, "error_action"))
            .transpose()?;
        Ok(RuleConfig {
            name: self.name.clone(),
            enabled: self.enabled,
            rule,
            actions,
            error_action,
        })
    }
}

fn compile_action(action: &RawAction, field: &str) -> Result<Action, RuleError> {
    let template = |text: &str, part: &str| {
        Template::parse(text).map_err(|error| RuleError::Template {
            field: format!("{field}.{part}"),
            error,
        })
    };
    Ok(match action {
        RawAction::Republish { topic, qos, retain } => {
            if *qos > 1 {
                return Err(RuleError::Action(format!(
                    "{field}.qos must be 0 or 1, not {qos}"
                )));
            }
            if topic.contains(['+', '#']) {
                return Err(RuleError::Action(format!(
                    "{field}.topic {topic:?} contains a wildcard; a topic name cannot"
                )));
            }
            Action::Republish {
                topic: template(topic, "topic")?,
                qos: *qos,
                retain: *retain,
            }
        }
        RawAction::Cloud { topic } => {
            if topic.contains(['+', '#']) {
                return Err(RuleError::Action(format!(
                    "{field}.topic {topic:?} contains a wildcard; a topic name cannot"
                )));
            }
            Action::Cloud {
                topic: template(topic, "topic")?,
            }
        }
        RawAction::Shadow { thing, name } => Action::Shadow {
            thing: template(thing, "thing")?,
            name: name.as_deref().map(|n| template(n, "name")).transpose()?,
        },
        RawAction::Function(target) => {
            let (name, qualifier) = match target.split_once(':') {
                Some((n, q)) => (n, Some(q)),
                None => (target.as_str(), None),
            };
            if !grove_functions_host::manifest::valid_name(name) {
                return Err(RuleError::Action(format!(
                    "{field}.function: {name:?} is not a function name (A-Z a-z 0-9 _ -)"
                )));
            }
            if let Some(Err(e)) = qualifier.map(grove_functions_host::routing::Qualifier::parse) {
                return Err(RuleError::Action(format!("{field}.function: {e}")));
            }
            Action::Function {
                target: target.clone(),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fan_out_keeps_chains_and_spends_breadth_as_depth() {
        // (hops, children) -> (children's hops, outputs kept)
        for (hops, children, expected) in [
            (0, vec![1], (1, 1)),
            (7, vec![1], (8, 1)),
            (8, vec![1], (9, 0)),
            (0, vec![2], (1, 1)),
            (0, vec![3], (2, 1)),
            (0, vec![4], (2, 1)),
            (0, vec![1, 1, 1], (2, 3)),
            (6, vec![4], (8, 1)),
            (7, vec![4], (8, 0)),
            (7, vec![2, 2], (8, 1)),
            (0, vec![256], (8, 1)),
            (0, vec![257], (1, 0)),
            (0, vec![200, 100], (8, 1)),
        ] {
            assert_eq!(fan_out(hops, &children), expected, "{hops} {children:?}");
        }
    }

    /// Whatever the shape, one message causes fewer than `MAX_CAUSED` messages: a rule making
    /// `n` copies of every message into its own FROM, for every `n`, counted exactly.
    #[test]
    fn no_fan_out_causes_more_than_the_bound() {
        fn caused(hops: u32, n: usize) -> u64 {
            let (next, kept) = fan_out(hops, &[n]);
            let made = (kept * n) as u64;
            made + made * if kept > 0 { caused(next, n) } else { 0 }
        }
        for n in 1..=300 {
            let total = caused(0, n);
            assert!(total < MAX_CAUSED, "{n}: {total}");
        }
        // The issue's case: 4 republishes into the rule's own FROM made 87,381 messages.
        assert_eq!(caused(0, 4), 4 + 16 + 64 + 256);
    }

    fn raw(sql: &str, actions: Vec<RawAction>) -> RawRule {
        RawRule {
            name: "r".into(),
            sql: sql.into(),
            enabled: true,
            actions,
            error_action: None,
        }
    }

    fn republish(topic: &str, qos: u8) -> RawAction {
        RawAction::Republish {
            topic: topic.into(),
            qos,
            retain: false,
        }
    }

    #[test]
    fn compile_errors_say_what_is_wrong() {
        let cases: Vec<(RawRule, &str)> = vec![
            (
                raw("SELECT FROM 't'", vec![republish("x", 0)]),
                "the SQL does not compile",
            ),
            (raw("SELECT * FROM 't'", vec![]), "at least one action"),
            (
                raw("SELECT * FROM 't'", vec![republish("x/${", 0)]),
                "actions[0].topic does not compile",
            ),
            (
                raw("SELECT * FROM 't'", vec![republish("x/#", 0)]),
                "contains a wildcard",
            ),
            (
                raw("SELECT * FROM 't'", vec![republish("x", 2)]),
                "qos must be 0 or 1",
            ),
            (
                raw(
                    "SELECT * FROM 't'",
                    vec![RawAction::Cloud {
                        topic: "up/+".into(),
                    }],
                ),
                "actions[0].topic \"up/+\" contains a wildcard",
            ),
            (
                raw(
                    "SELECT * FROM 't'",
                    vec![RawAction::Function("bad name".into())],
                ),
                "actions[0].function: \"bad name\" is not a function name",
            ),
            (
                raw("SELECT * FROM 't'", vec![RawAction::Function("f:0".into())]),
                "actions[0].function: \"0\" is not a qualifier",
            ),
            (
                raw(
                    "SELECT aws_lambda('arn', *) FROM 't'",
                    vec![republish("x", 0)],
                ),
                "aws_lambda",
            ),
        ];
        for (rule, want) in cases {
            let err = rule.compile().unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }
}
