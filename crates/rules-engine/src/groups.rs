//! Rule groups: rules whose `FROM` filters can match a common topic go on different bus links.
//!
//! rumqttd delivers a message once per matching subscription of a link, so two overlapping `FROM`
//! filters on one link would evaluate a message twice. The engine therefore puts filters that can
//! match a common topic on different links ("groups"): within a group each message matches exactly
//! one filter, which the group's [`RuleIndex`](grove_rules::RuleIndex) finds without scanning the
//! rules. Most rule sets need one or two groups.
//!
//! This exists only for rumqttd's router; Grove's own router (issue 14) delivers a message once
//! per link, and then one group holds every rule and this module goes. Pure: no IO.

use std::sync::Arc;

use crate::RuleConfig;
use grove_auth::policy::{matches, overlaps};

/// One group: its distinct filters and its rules.
pub type Group = (Vec<String>, Vec<Arc<RuleConfig>>);

/// Splits `rules` into groups, in order: a rule joins the group that has its filter already, or
/// else the first group none of whose filters overlaps it, or else a new group.
pub fn group(rules: Vec<Arc<RuleConfig>>) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for rule in rules {
        let filter = rule.rule.topic_filter().to_owned();
        let slot = groups
            .iter()
            .position(|(filters, _)| filters.contains(&filter))
            .or_else(|| {
                groups
                    .iter()
                    .position(|(filters, _)| filters.iter().all(|f| !overlaps(f, &filter)))
            });
        match slot {
            Some(i) => {
                if !groups[i].0.contains(&filter) {
                    groups[i].0.push(filter);
                }
                groups[i].1.push(rule);
            }
            None => groups.push((vec![filter], vec![rule])),
        }
    }
    groups
}

/// How many of the groups (their filters: `all_filters`) take a message on `topic`: each acts on
/// it on its own, which the fan-out budget counts.
pub fn consumers(all_filters: &[Vec<String>], topic: &str) -> usize {
    all_filters
        .iter()
        .filter(|filters| filters.iter().any(|f| matches(f, topic)))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RawAction, RawRule};

    fn rule(name: &str, from: &str) -> Arc<RuleConfig> {
        let raw = RawRule {
            name: name.to_owned(),
            sql: format!("SELECT * FROM '{from}'"),
            enabled: true,
            actions: vec![RawAction::Republish {
                topic: "out".to_owned(),
                qos: 0,
                retain: false,
            }],
            error_action: None,
        };
        Arc::new(raw.compile().expect("it compiles"))
    }

    /// (rules as name:filter) -> groups as their rule names.
    #[test]
    fn overlapping_filters_go_to_separate_groups_and_equal_ones_share() {
        for (rules, expected) in [
            (vec!["a:x/1"], vec![vec!["a"]]),
            (vec!["a:x/1", "b:x/2"], vec![vec!["a", "b"]]),
            (vec!["a:x/1", "b:x/1"], vec![vec!["a", "b"]]),
            (vec!["a:x/#", "b:x/1"], vec![vec!["a"], vec!["b"]]),
            (
                vec!["a:x/#", "b:x/+", "c:y/1"],
                vec![vec!["a", "c"], vec!["b"]],
            ),
            (
                vec!["a:x/#", "b:x/1", "c:x/#"],
                vec![vec!["a", "c"], vec!["b"]],
            ),
        ] {
            let rules = rules
                .iter()
                .map(|r| {
                    let (name, from) = r.split_once(':').expect("name:filter");
                    rule(name, from)
                })
                .collect();
            let groups = group(rules);
            let names: Vec<Vec<&str>> = groups
                .iter()
                .map(|(_, rules)| rules.iter().map(|r| r.name.as_str()).collect())
                .collect();
            assert_eq!(names, expected);
        }
    }

    #[test]
    fn consumers_count_the_groups_whose_filters_take_the_topic() {
        let all = vec![
            vec!["x/#".to_owned(), "y/1".to_owned()],
            vec!["x/+".to_owned()],
            vec!["z".to_owned()],
        ];
        assert_eq!(consumers(&all, "x/1"), 2);
        assert_eq!(consumers(&all, "x/1/2"), 1);
        assert_eq!(consumers(&all, "y/1"), 1);
        assert_eq!(consumers(&all, "w"), 0);
    }
}
