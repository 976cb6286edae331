//! The jobs' metrics (`grove_jobs_*`), registered by [`JobsMetrics::register`] into the registry
//! the binary exports.

use std::collections::BTreeMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::machine::{JobStatus, Status};
use crate::queries::WAITING;

/// Labels of an answered request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `get`, `start_next`, `describe` or `update`.
    pub op: &'static str,
    /// `accepted`, or AWS's error code.
    pub code: &'static str,
}

/// Labels naming a status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// AWS's name of the status (`WAITING`: an execution the rollout holds).
    pub status: &'static str,
}

/// Labels naming a notification topic.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `notify` or `notify_next`.
    pub kind: &'static str,
}

/// The jobs' metrics.
#[derive(Clone, Debug, Default)]
pub struct JobsMetrics {
    /// Device requests answered, by operation and code.
    pub requests: Family<RequestLabels, Counter>,
    /// Executions by status, across jobs.
    pub executions: Family<StatusLabels, Gauge>,
    /// Jobs by status.
    pub jobs: Family<StatusLabels, Gauge>,
    /// Executions that timed out.
    pub timed_out: Counter,
    /// Jobs canceled by their abort threshold.
    pub aborted: Counter,
    /// Notifications published, by topic.
    pub notifications: Family<KindLabels, Counter>,
    /// Group commits of job changes.
    pub commits: Counter,
}

impl JobsMetrics {
    /// Registers the metrics under `jobs_` in `registry` (the binary's, prefixed `grove`).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("jobs");
        r.register(
            "requests",
            "Jobs device requests answered, by operation and code (accepted or AWS's error code)",
            self.requests.clone(),
        );
        r.register(
            "executions",
            "Job executions by status (WAITING: held by the rollout)",
            self.executions.clone(),
        );
        r.register("jobs", "Jobs by status", self.jobs.clone());
        r.register(
            "timed_out",
            "Job executions that timed out",
            self.timed_out.clone(),
        );
        r.register(
            "aborted",
            "Jobs canceled by their abort threshold",
            self.aborted.clone(),
        );
        r.register(
            "notifications",
            "Jobs notifications published (notify, notify_next)",
            self.notifications.clone(),
        );
        r.register(
            "commits",
            "Group commits of job changes",
            self.commits.clone(),
        );
    }

    /// Counts an answered request.
    pub(crate) fn answered(&self, op: &'static str, code: &'static str) {
        self.requests
            .get_or_create(&RequestLabels { op, code })
            .inc();
    }

    /// Sets the gauges from the core's counts.
    pub(crate) fn counts(
        &self,
        executions: &BTreeMap<Option<Status>, u64>,
        jobs: &BTreeMap<JobStatus, u64>,
    ) {
        for status in std::iter::once(None).chain(Status::ALL.map(Some)) {
            let name = status.map_or(WAITING, Status::as_str);
            let n = executions.get(&status).copied().unwrap_or(0);
            self.executions
                .get_or_create(&StatusLabels { status: name })
                .set(n as i64);
        }
        for status in [
            JobStatus::InProgress,
            JobStatus::Canceled,
            JobStatus::Completed,
        ] {
            let n = jobs.get(&status).copied().unwrap_or(0);
            self.jobs
                .get_or_create(&StatusLabels {
                    status: status.as_str(),
                })
                .set(n as i64);
        }
    }
}
