//! Grove's metrics, exported in Prometheus text format by the ops endpoint.
//!
//! One [`Metrics`] value is created at startup and shared (its counters are atomics behind `Arc`s,
//! so cloning is cheap and counting costs one atomic add). Each component registers its own family
//! of counters here as it arrives; the names all start with `grove_`.

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use grove_broker::metrics::BrokerMetrics;
use grove_functions_host::metrics::FunctionMetrics;
use grove_rules_engine::metrics::RulesMetrics;
use grove_shadow::metrics::ShadowMetrics;

/// Why the outbox dropped a message.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// `full_drop_oldest`, `full_refuse_newest`, `too_large`, `store_failed` or
    /// `refused_by_cloud` (an MQTT 5 PUBACK with a failure reason).
    pub reason: &'static str,
}

/// Which way a shadow sync update went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    /// `to_cloud` or `to_edge`.
    pub direction: &'static str,
}

/// The cloud link's, the outbox's and shadow sync's counters.
#[derive(Clone, Debug)]
pub struct CloudMetrics {
    /// Time from the append to the outbox to the cloud's PUBACK (the gateway's share of the
    /// end-to-end latency, including any time offline).
    pub delivery_seconds: Histogram,
    /// 1 while the link to the cloud broker is up.
    pub link_up: Gauge,
    /// Successful connections to the cloud broker.
    pub connects: Counter,
    /// Messages in the outbox now.
    pub outbox_messages: Gauge,
    /// Bytes (topic plus payload) in the outbox now.
    pub outbox_bytes: Gauge,
    /// Messages appended to the outbox.
    pub appended: Counter,
    /// Publishes handed to the link (first sends and resends).
    pub sent: Counter,
    /// Messages acknowledged by the cloud and removed from the outbox.
    pub acked: Counter,
    /// Messages dropped, by reason.
    pub dropped: Family<DropLabels, Counter>,
    /// Messages sent again after a reconnect because their PUBACK had not arrived (the cloud may
    /// see them twice).
    pub resent: Counter,
    /// Messages brought down from the cloud onto local topics.
    pub downlinked: Counter,
    /// Shadow updates made by sync, by direction.
    pub sync_updates: Family<SyncLabels, Counter>,
    /// Version conflicts met by sync (each resolved by a fresh read and merge).
    pub sync_conflicts: Counter,
    /// Sync rounds that gave up (after bounded retries or a timeout) until the next trigger.
    pub sync_failures: Counter,
}

impl Default for CloudMetrics {
    fn default() -> Self {
        CloudMetrics {
            // 1 ms to ~9 hours, quadrupling: online delivery and days offline on one scale.
            delivery_seconds: Histogram::new(exponential_buckets(0.001, 4.0, 13)),
            link_up: Gauge::default(),
            connects: Counter::default(),
            outbox_messages: Gauge::default(),
            outbox_bytes: Gauge::default(),
            appended: Counter::default(),
            sent: Counter::default(),
            acked: Counter::default(),
            dropped: Family::default(),
            resent: Counter::default(),
            downlinked: Counter::default(),
            sync_updates: Family::default(),
            sync_conflicts: Counter::default(),
            sync_failures: Counter::default(),
        }
    }
}

impl CloudMetrics {
    /// Counts `n` dropped messages.
    pub fn drop(&self, reason: &'static str, n: u64) {
        if n > 0 {
            self.dropped.get_or_create(&DropLabels { reason }).inc_by(n);
        }
    }

    /// Counts a sync update.
    pub fn synced(&self, direction: &'static str) {
        self.sync_updates
            .get_or_create(&SyncLabels { direction })
            .inc();
    }
}

/// All of Grove's metrics and the registry that exports them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The embedded broker's counters.
    pub broker: BrokerMetrics,
    /// The shadow service's counters.
    pub shadow: ShadowMetrics,
    /// The rules engine's counters.
    pub rules: RulesMetrics,
    /// The functions component's counters.
    pub functions: FunctionMetrics,
    /// Cloud sync's counters.
    pub cloud: CloudMetrics,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("grove");
        registry.register(
            "build",
            "Grove's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let broker = BrokerMetrics::default();
        let b = registry.sub_registry_with_prefix("broker");
        b.register(
            "connected_clients",
            "MQTT clients connected now",
            broker.connected_clients.clone(),
        );
        b.register(
            "connections",
            "MQTT connections accepted since start",
            broker.connections.clone(),
        );
        b.register(
            "messages_received",
            "PUBLISH packets received from clients",
            broker.messages_received.clone(),
        );
        b.register(
            "messages_sent",
            "PUBLISH packets sent to clients",
            broker.messages_sent.clone(),
        );
        b.register(
            "bytes_received",
            "Payload bytes received in PUBLISH packets",
            broker.bytes_received.clone(),
        );
        b.register(
            "bytes_sent",
            "Payload bytes sent in PUBLISH packets",
            broker.bytes_sent.clone(),
        );
        b.register(
            "refused",
            "Packets and connections refused by the broker, by reason",
            broker.refused.clone(),
        );
        b.register(
            "denied",
            "Publishes, subscriptions and deliveries refused by a policy",
            broker.denied.clone(),
        );
        b.register(
            "publisher_holds",
            "Times a publishing connection stopped reading because a subscriber was about to be overrun (flow control)",
            broker.holds.clone(),
        );
        b.register(
            "subscriber_overruns",
            "Times a subscriber fell further behind than the router's in-memory log holds and lost its oldest messages (raise broker.segment_count)",
            crate::logging::subscriber_overruns(),
        );
        b.register(
            "retained_restored",
            "Retained messages restored from the store at startup",
            broker.retained_restored.clone(),
        );
        b.register(
            "pending_connections",
            "Connections accepted that have not authenticated yet, on all listeners",
            broker.pending_connections.clone(),
        );
        b.register(
            "password_checks",
            "Password logins checked, by outcome (remembered: a recent login, no argon2; busy: refused, the queue was full)",
            broker.password_checks.clone(),
        );
        let shadow = ShadowMetrics::default();
        let sh = registry.sub_registry_with_prefix("shadow");
        sh.register(
            "requests",
            "Shadow requests answered, by operation and code (200 = accepted)",
            shadow.requests.clone(),
        );
        sh.register(
            "invalid_names",
            "Shadow requests on topics with an invalid thing or shadow name",
            shadow.invalid_names.clone(),
        );
        sh.register(
            "commits",
            "Group commits of shadow writes",
            shadow.commits.clone(),
        );
        sh.register(
            "commit_seconds",
            "Time one group commit of shadow writes took",
            shadow.commit_seconds.clone(),
        );
        sh.register("cached", "Shadows held in memory", shadow.cached.clone());
        let rules = RulesMetrics::default();
        let r = registry.sub_registry_with_prefix("rule");
        r.register(
            "matched",
            "Messages that matched the rule's FROM filter",
            rules.matched.clone(),
        );
        r.register(
            "outputs",
            "Outputs the rule handed to its actions",
            rules.outputs.clone(),
        );
        r.register(
            "action_failures",
            "Failed rule actions",
            rules.action_failures.clone(),
        );
        r.register(
            "hop_dropped",
            "Rule outputs dropped at the republish hop limit",
            rules.hop_dropped.clone(),
        );
        r.register(
            "fanout_dropped",
            "Rule outputs dropped at the fan-out bound (messages one message may cause)",
            rules.fanout_dropped.clone(),
        );
        let functions = FunctionMetrics::default();
        let f = registry.sub_registry_with_prefix("function");
        f.register(
            "invocations",
            "Function invocations (each attempt), by function and result",
            functions.invocations.clone(),
        );
        f.register(
            "retries",
            "Async function events retried after a failed attempt",
            functions.retries.clone(),
        );
        f.register(
            "dlq",
            "Async function events sent to the dead-letter topic",
            functions.dlq.clone(),
        );
        f.register(
            "denied_calls",
            "Host calls refused for lack of a grant or at the hop limit",
            functions.denied.clone(),
        );
        f.register(
            "duration_seconds",
            "Time one function invocation took inside the host",
            functions.duration_seconds.clone(),
        );
        f.register(
            "modules_loaded",
            "Function modules loaded, from the precompiled cache or compiled",
            functions.modules_loaded.clone(),
        );
        f.register(
            "load_failures",
            "Deployed function versions that failed to load at startup",
            functions.load_failures.clone(),
        );
        f.register(
            "log_lines_dropped",
            "Function log lines dropped over the per-function rate",
            functions.log_dropped.clone(),
        );
        f.register(
            "log_suppressed",
            "Gateway log lines about a function suppressed over their rate",
            functions.log_suppressed.clone(),
        );
        let cloud = CloudMetrics::default();
        let c = registry.sub_registry_with_prefix("cloud");
        c.register(
            "link_up",
            "1 while the link to the cloud broker is up",
            cloud.link_up.clone(),
        );
        c.register(
            "connects",
            "Successful connections to the cloud broker",
            cloud.connects.clone(),
        );
        c.register(
            "outbox_messages",
            "Messages in the cloud outbox",
            cloud.outbox_messages.clone(),
        );
        c.register(
            "outbox_bytes",
            "Bytes (topic + payload) in the cloud outbox",
            cloud.outbox_bytes.clone(),
        );
        c.register(
            "appended",
            "Messages appended to the cloud outbox",
            cloud.appended.clone(),
        );
        c.register(
            "sent",
            "Publishes handed to the cloud link (sends and resends)",
            cloud.sent.clone(),
        );
        c.register(
            "acked",
            "Messages acknowledged by the cloud (PUBACK) and removed from the outbox",
            cloud.acked.clone(),
        );
        c.register(
            "dropped",
            "Messages the outbox dropped, by reason",
            cloud.dropped.clone(),
        );
        c.register(
            "delivery_seconds",
            "Time from the append to the cloud outbox to the cloud's PUBACK",
            cloud.delivery_seconds.clone(),
        );
        c.register("resent", "Messages resent after a reconnect because their PUBACK was missing (possible duplicates)", cloud.resent.clone());
        c.register(
            "downlinked",
            "Messages brought down from the cloud onto local topics",
            cloud.downlinked.clone(),
        );
        c.register(
            "sync_updates",
            "Shadow updates made by sync, by direction",
            cloud.sync_updates.clone(),
        );
        c.register(
            "sync_conflicts",
            "Shadow version conflicts met by sync, each resolved by a fresh read and merge",
            cloud.sync_conflicts.clone(),
        );
        c.register(
            "sync_failures",
            "Shadow sync rounds that gave up until the next trigger",
            cloud.sync_failures.clone(),
        );
        Metrics {
            registry,
            broker,
            shadow,
            rules,
            functions,
            cloud,
        }
    }

    /// The current values in Prometheus/OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        encode(&mut out, &self.registry).expect("encoding metrics into a String");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_text_has_each_family_with_its_value() {
        let m = Metrics::new();
        m.broker.messages_received.inc_by(3);
        m.broker.connected_clients.set(2);
        m.broker.refuse("payload_too_large");
        let text = m.render();
        for line in [
            "grove_broker_messages_received_total 3",
            "grove_broker_connected_clients 2",
            "grove_broker_refused_total{reason=\"payload_too_large\"} 1",
            "grove_build_info{version=\"0.1.0\"} 1",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
