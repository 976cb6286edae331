//! The rules engine's counters (`grove_rule_*`), registered by [`RulesMetrics::register`] into
//! the registry the binary exports, and beside them the rules' [`RuleStatus`] (what the console
//! shows of each rule besides numbers).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::status::RuleStatus;

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
    /// The rule set as last applied and each rule's last failure (not exported as metrics).
    pub status: RuleStatus,
}

impl RulesMetrics {
    /// Registers the counters under `rule_` in `registry` (the binary's, prefixed `grove`).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("rule");
        r.register(
            "matched",
            "Messages that matched the rule's FROM filter",
            self.matched.clone(),
        );
        r.register(
            "outputs",
            "Outputs the rule handed to its actions",
            self.outputs.clone(),
        );
        r.register(
            "action_failures",
            "Failed rule actions",
            self.action_failures.clone(),
        );
        r.register(
            "hop_dropped",
            "Rule outputs dropped at the republish hop limit",
            self.hop_dropped.clone(),
        );
        r.register(
            "fanout_dropped",
            "Rule outputs dropped at the fan-out bound (messages one message may cause)",
            self.fanout_dropped.clone(),
        );
    }

    /// The counter of `rule` in `family`, to keep and increment without a lookup per message.
    pub fn counter(&self, family: &Family<RuleLabels, Counter>, rule: &str) -> Counter {
        family
            .get_or_create(&RuleLabels {
                rule: rule.to_owned(),
            })
            .clone()
    }
}
