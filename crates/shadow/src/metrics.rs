//! The shadow service's counters (`grove_shadow_*`), registered by [`ShadowMetrics::register`]
//! into the registry the binary exports.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of a shadow request outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowLabels {
    /// `get`, `update` or `delete`.
    pub op: &'static str,
    /// The answer's code: 200 for accepted, else AWS's error code.
    pub code: &'static str,
}

/// The shadow service's counters.
#[derive(Clone, Debug)]
pub struct ShadowMetrics {
    /// Requests answered, by operation and code.
    pub requests: Family<ShadowLabels, Counter>,
    /// Requests on topics whose thing or shadow name is invalid.
    pub invalid_names: Counter,
    /// Group commits of shadow writes.
    pub commits: Counter,
    /// Time one group commit took.
    pub commit_seconds: Histogram,
    /// Shadows held in memory.
    pub cached: Gauge,
}

impl Default for ShadowMetrics {
    fn default() -> Self {
        ShadowMetrics {
            requests: Family::default(),
            invalid_names: Counter::default(),
            commits: Counter::default(),
            // 100 us to ~0.8 s, doubling.
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 14)),
            cached: Gauge::default(),
        }
    }
}

impl ShadowMetrics {
    /// Registers the counters under `shadow_` in `registry` (the binary's, prefixed `grove`).
    pub fn register(&self, registry: &mut Registry) {
        let sh = registry.sub_registry_with_prefix("shadow");
        sh.register(
            "requests",
            "Shadow requests answered, by operation and code (200 = accepted)",
            self.requests.clone(),
        );
        sh.register(
            "invalid_names",
            "Shadow requests on topics with an invalid thing or shadow name",
            self.invalid_names.clone(),
        );
        sh.register(
            "commits",
            "Group commits of shadow writes",
            self.commits.clone(),
        );
        sh.register(
            "commit_seconds",
            "Time one group commit of shadow writes took",
            self.commit_seconds.clone(),
        );
        sh.register("cached", "Shadows held in memory", self.cached.clone());
    }

    /// Counts an answered request.
    pub fn count(&self, op: grove_shadow_api::names::Operation, code: u16) {
        let code = match code {
            200 => "200",
            400 => "400",
            404 => "404",
            409 => "409",
            413 => "413",
            415 => "415",
            429 => "429",
            _ => "500",
        };
        self.requests
            .get_or_create(&ShadowLabels {
                op: op.as_str(),
                code,
            })
            .inc();
    }
}
