//! Grove's metrics, exported in Prometheus text format by the ops endpoint.
//!
//! One [`Metrics`] value is created at startup and shared (its counters are atomics behind `Arc`s,
//! so cloning is cheap and counting costs one atomic add). Each component crate defines its own
//! counters (its `metrics.rs`) and names and registers them (`register`, under its own prefix) into
//! this registry, whose prefix is `grove`; this module only aggregates and exports.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use grove_broker::metrics::BrokerMetrics;
use grove_cloud::metrics::CloudMetrics;
use grove_deploy::metrics::DeployMetrics;
use grove_functions_host::metrics::FunctionMetrics;
use grove_jobs::metrics::JobsMetrics;
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
    /// The local jobs' metrics.
    pub jobs: JobsMetrics,
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
        broker.register(&mut registry);
        let shadow = ShadowMetrics::default();
        shadow.register(&mut registry);
        let rules = RulesMetrics::default();
        rules.register(&mut registry);
        let functions = FunctionMetrics::default();
        functions.register(&mut registry);
        let deploy = DeployMetrics::default();
        deploy.register(&mut registry);
        let cloud = CloudMetrics::default();
        cloud.register(&mut registry);
        let jobs = JobsMetrics::default();
        jobs.register(&mut registry);
        Metrics {
            registry,
            broker,
            shadow,
            rules,
            deploy,
            functions,
            cloud,
            jobs,
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
        m.jobs.timed_out.inc();
        let text = m.render();
        for line in [
            "grove_broker_messages_received_total 3",
            "grove_broker_connected_clients 2",
            "grove_broker_refused_total{reason=\"payload_too_large\"} 1",
            "grove_build_info{version=\"0.1.0\"} 1",
            "grove_shadow_cached 4",
            "grove_rule_matched_total{rule=\"hot\"} 1",
            "grove_function_retries_total{function=\"f\"} 1",
            "grove_jobs_timed_out_total 1",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
