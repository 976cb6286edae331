//! The rules engine's counters (`grove_rule_*`); the binary's metrics registry exports them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Labels of a per-rule counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    /// The rule's name.
    pub rule: String,
}

/// The rules engine's counters, per rule.
#[derive(Clone, Debug, Default)]
pub struct RulesMetrics {
    /// Messages whose topic matched the rule's FROM filter.
    pub matched: Family<RuleLabels, Counter>,
    /// Outputs the rule handed to its actions (rows passing WHERE, window rows); outputs dropped
    /// at the hop limit are counted in `hop_dropped` instead.
    pub outputs: Family<RuleLabels, Counter>,
    /// Failed actions (each also reported to the error action, if any).
    pub action_failures: Family<RuleLabels, Counter>,
    /// Outputs dropped because the message had already been republished `MAX_HOPS` times.
    pub hop_dropped: Family<RuleLabels, Counter>,
    /// Outputs dropped because acting on them would have exceeded the number of messages one
    /// message may cause (`rules::fan_out`).
    pub fanout_dropped: Family<RuleLabels, Counter>,
}

impl RulesMetrics {
    /// The counter of `rule` in `family`, to keep and increment without a lookup per message.
    pub fn counter(&self, family: &Family<RuleLabels, Counter>, rule: &str) -> Counter {
        family
            .get_or_create(&RuleLabels {
                rule: rule.to_owned(),
            })
            .clone()
    }
}
