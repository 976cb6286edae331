//! Grove's metrics, exported in Prometheus text format by the ops endpoint.
//!
//! One [`Metrics`] value is created at startup and shared (its counters are atomics behind `Arc`s,
//! so cloning is cheap and counting costs one atomic add). Each component crate defines its own
//! counters (its `metrics.rs`); the shadow service, the rules engine, the functions component and deployments
//! also name and register theirs (`register`, under their own prefix) into this registry, whose
//! prefix is `grove`. The broker's and cloud sync's are still named here (their crates are being
//! reworked by other issues); this module only aggregates and exports.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use grove_broker::metrics::BrokerMetrics;
use grove_cloud::metrics::CloudMetrics;
use grove_deploy::metrics::DeployMetrics;
use grove_functions_host::metrics::FunctionMetrics;
use grove_rules_engine::metrics::RulesMetrics;
use grove_shadow::metrics::ShadowMetrics;

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
    /// The deployments' metrics.
    pub deploy: DeployMetrics,
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
            "Times a publishing connection stopped reading because the router's queued bytes for subscribers were over its limit (flow control)",
            broker.holds.clone(),
        );
        b.register(
            "dropped",
            "Messages the router dropped for a subscriber, by reason (queue_full: the session's queue limits; too_large: over the client's Maximum Packet Size; expired; offline_qos0)",
            broker.dropped.clone(),
        );
        b.register(
            "sessions_taken_over",
            "Sessions taken over by a reconnecting client with the same client id",
            broker.sessions_taken_over.clone(),
        );
        b.register(
            "wills_published",
            "Will messages published",
            broker.wills_published.clone(),
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
        shadow.register(&mut registry);
        let rules = RulesMetrics::default();
        rules.register(&mut registry);
        let functions = FunctionMetrics::default();
        functions.register(&mut registry);
        let deploy = DeployMetrics::default();
        deploy.register(&mut registry);
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
            deploy,
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
        // The components' own registrations land under the same names as before.
        m.shadow.cached.set(4);
        m.rules.counter(&m.rules.matched, "hot").inc();
        m.functions.count(&m.functions.retries, "f");
        let text = m.render();
        for line in [
            "grove_broker_messages_received_total 3",
            "grove_broker_connected_clients 2",
            "grove_broker_refused_total{reason=\"payload_too_large\"} 1",
            "grove_build_info{version=\"0.1.0\"} 1",
            "grove_shadow_cached 4",
            "grove_rule_matched_total{rule=\"hot\"} 1",
            "grove_function_retries_total{function=\"f\"} 1",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
