//! The deployments' metrics (`grove_deploy_*`), registered by [`DeployMetrics::register`] into the
//! registry the binary exports.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::machine::{Phase, Status};

/// Labels naming a deployment.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeploymentLabels {
    /// Its id.
    pub deployment: String,
}

/// Labels naming a deployment and its step or result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    /// Its id.
    pub deployment: String,
    /// Its step (`fetching`, ..., `soaking`) or result (`committed`, `rolled_back`, ...).
    pub phase: &'static str,
}

/// Labels of a result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `committed`, `rolled_back`, `failed` or `superseded`.
    pub result: &'static str,
}

/// Labels of a job status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// `IN_PROGRESS`, `SUCCEEDED`, `FAILED` or `REJECTED`.
    pub status: &'static str,
}

/// The deployments' metrics.
#[derive(Clone, Debug, Default)]
pub struct DeployMetrics {
    /// 1 for the committed deployment (what the gateway runs); none before the first.
    pub committed: Family<DeploymentLabels, Gauge>,
    /// 1 for the deployment being applied, labelled with its step.
    pub applying: Family<StepLabels, Gauge>,
    /// 1 for the last deployment that ended, labelled with its result.
    pub last: Family<StepLabels, Gauge>,
    /// Deployments ended, by result.
    pub results: Family<ResultLabels, Counter>,
    /// AWS IoT job statuses the cloud accepted, by status.
    pub job_reports: Family<JobLabels, Counter>,
    committed_id: Arc<Mutex<Option<String>>>,
}

impl DeployMetrics {
    /// Registers the metrics under `deploy_` in `registry` (the binary's, prefixed `grove`).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("deploy");
        r.register(
            "committed",
            "The committed deployment (1), what the gateway runs",
            self.committed.clone(),
        );
        r.register(
            "applying",
            "The deployment being applied (1), by step",
            self.applying.clone(),
        );
        r.register(
            "last",
            "The last deployment that ended (1), by result",
            self.last.clone(),
        );
        r.register(
            "results",
            "Deployments ended, by result",
            self.results.clone(),
        );
        r.register(
            "job_reports",
            "AWS IoT job statuses the cloud accepted, by status",
            self.job_reports.clone(),
        );
    }

    /// Counts a job status the cloud accepted.
    pub(crate) fn job_reported(&self, status: &'static str) {
        self.job_reports.get_or_create(&JobLabels { status }).inc();
    }

    /// Shows a deployment's new step.
    pub(crate) fn step(&self, status: &Status) {
        let labels = StepLabels {
            deployment: status.id.clone(),
            phase: status.phase.as_str(),
        };
        match status.phase {
            // A waiting deployment is not the one being applied.
            Phase::Received => {}
            Phase::Superseded => {
                self.results
                    .get_or_create(&ResultLabels {
                        result: labels.phase,
                    })
                    .inc();
            }
            phase if phase.is_final() => {
                self.applying.clear();
                self.results
                    .get_or_create(&ResultLabels {
                        result: labels.phase,
                    })
                    .inc();
                self.last.clear();
                self.last.get_or_create(&labels).set(1);
            }
            _ => {
                self.applying.clear();
                self.applying.get_or_create(&labels).set(1);
            }
        }
    }

    /// Shows the committed deployment.
    pub(crate) fn committed(&self, id: Option<&str>) {
        self.committed.clear();
        if let Some(id) = id {
            self.committed
                .get_or_create(&DeploymentLabels {
                    deployment: id.to_owned(),
                })
                .set(1);
        }
        *self.committed_id.lock().unwrap_or_else(|e| e.into_inner()) = id.map(String::from);
    }

    /// The committed deployment shown.
    pub(crate) fn committed_id(&self) -> Option<String> {
        self.committed_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
