//! The functions component's counters (`grove_function_*`), registered by
//! [`FunctionMetrics::register`] into the registry the binary exports.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of a function counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabels {
    /// The function's name.
    pub function: String,
}

/// Labels of a function invocation's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InvocationLabels {
    /// The function's name.
    pub function: String,
    /// `ok`, `handler_error`, `timeout`, `memory_limit`, `trap`, `capacity`, `abi` or `host`.
    pub result: &'static str,
}

/// Labels of a denied host call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeniedCallLabels {
    /// The function's name.
    pub function: String,
    /// The host call (`publish`, `shadow_get`, ..., or `publish_hop_limit`).
    pub call: &'static str,
}

/// Labels of a loaded module.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModuleSourceLabels {
    /// `cache` (mapped from the precompiled cache) or `compiled`.
    pub source: &'static str,
}

/// The functions component's counters.
#[derive(Clone, Debug)]
pub struct FunctionMetrics {
    /// Invocations (each attempt), by function and result.
    pub invocations: Family<InvocationLabels, Counter>,
    /// Async attempts retried after a failure.
    pub retries: Family<FunctionLabels, Counter>,
    /// Async events sent to the dead-letter topic (those for names never deployed counted under
    /// `(unknown)`: a device chooses such names).
    pub dlq: Family<FunctionLabels, Counter>,
    /// Host calls refused (no grant, or the hop limit).
    pub denied: Family<DeniedCallLabels, Counter>,
    /// Time one invocation took inside the host.
    pub duration_seconds: Histogram,
    /// Modules loaded at deploy or startup, by source.
    pub modules_loaded: Family<ModuleSourceLabels, Counter>,
    /// Deployed versions that failed to load at startup (listed as failed by `grove fn list`).
    pub load_failures: Family<FunctionLabels, Counter>,
    /// Guest log lines dropped over the per-function rate.
    pub log_dropped: Family<FunctionLabels, Counter>,
    /// The gateway's own log lines about a function suppressed over their rate.
    pub log_suppressed: Family<FunctionLabels, Counter>,
}

impl Default for FunctionMetrics {
    fn default() -> Self {
        FunctionMetrics {
            invocations: Family::default(),
            retries: Family::default(),
            dlq: Family::default(),
            denied: Family::default(),
            // 1 us to ~16 s, quadrupling.
            duration_seconds: Histogram::new(exponential_buckets(0.000_001, 4.0, 13)),
            modules_loaded: Family::default(),
            load_failures: Family::default(),
            log_dropped: Family::default(),
            log_suppressed: Family::default(),
        }
    }
}

impl FunctionMetrics {
    /// Registers the counters under `function_` in `registry` (the binary's, prefixed `grove`).
    pub fn register(&self, registry: &mut Registry) {
        let f = registry.sub_registry_with_prefix("function");
        f.register(
            "invocations",
            "Function invocations (each attempt), by function and result",
            self.invocations.clone(),
        );
        f.register(
            "retries",
            "Async function events retried after a failed attempt",
            self.retries.clone(),
        );
        f.register(
            "dlq",
            "Async function events sent to the dead-letter topic",
            self.dlq.clone(),
        );
        f.register(
            "denied_calls",
            "Host calls refused for lack of a grant or at the hop limit",
            self.denied.clone(),
        );
        f.register(
            "duration_seconds",
            "Time one function invocation took inside the host",
            self.duration_seconds.clone(),
        );
        f.register(
            "modules_loaded",
            "Function modules loaded, from the precompiled cache or compiled",
            self.modules_loaded.clone(),
        );
        f.register(
            "load_failures",
            "Deployed function versions that failed to load at startup",
            self.load_failures.clone(),
        );
        f.register(
            "log_lines_dropped",
            "Function log lines dropped over the per-function rate",
            self.log_dropped.clone(),
        );
        f.register(
            "log_suppressed",
            "Gateway log lines about a function suppressed over their rate",
            self.log_suppressed.clone(),
        );
    }

    /// Counts an invocation's result.
    pub fn invoked(&self, function: &str, result: &'static str, seconds: f64) {
        self.invocations
            .get_or_create(&InvocationLabels {
                function: function.to_owned(),
                result,
            })
            .inc();
        self.duration_seconds.observe(seconds);
    }

    /// Counts a per-function event in `family`.
    pub fn count(&self, family: &Family<FunctionLabels, Counter>, function: &str) {
        family
            .get_or_create(&FunctionLabels {
                function: function.to_owned(),
            })
            .inc();
    }

    /// A function's failed invocations so far, every kind together (read by deployments' soak).
    pub fn errors(&self, function: &str) -> u64 {
        crate::runtime::FailureKind::ALL
            .iter()
            .map(|kind| {
                self.invocations
                    .get_or_create(&InvocationLabels {
                        function: function.to_owned(),
                        result: kind.as_str(),
                    })
                    .get()
            })
            .sum()
    }

    /// A function's dead letters so far (read by deployments' soak).
    pub fn dead_letters(&self, function: &str) -> u64 {
        self.dlq
            .get_or_create(&FunctionLabels {
                function: function.to_owned(),
            })
            .get()
    }

    /// Counts a denied host call.
    pub fn deny(&self, function: &str, call: &'static str) {
        self.denied
            .get_or_create(&DeniedCallLabels {
                function: function.to_owned(),
                call,
            })
            .inc();
    }
}
