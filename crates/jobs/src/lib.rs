//! `grove-jobs`: AWS IoT Jobs for the gateway's own devices, served locally.
//!
//! A device built for AWS IoT Jobs works unchanged against the gateway: the same
//! `$aws/things/{thing}/jobs/...` topics, documents and error codes (AWS IoT Developer Guide, "Jobs
//! device MQTT API operations",
//! <https://docs.aws.amazon.com/iot/latest/developerguide/jobs-mqtt-api.html>), and jobs run while
//! the site is offline, because the gateway holds them. The operator creates them with
//! `grove jobs create` (a document, a target list or a thing-name pattern, a rollout rate, an abort
//! threshold, a timeout) and follows them with `grove jobs list|describe|cancel`.
//!
//! The pure core (no IO, no clock: `now` is passed in):
//! - [`machine`]: jobs and executions, every transition and refusal, timers, rollout and abort.
//! - [`document`]: the requests read and the answers and notifications written.
//! - [`names`]: job ids and the request and notification topics.
//!
//! The shell:
//! - [`service`]: the component on the bus: a batch of requests answered against the core, its
//!   changes committed to the store in one transaction, and only then the answers and the
//!   notifications published; timers on tokio's clock; [`service::JobsHandle`] for the operator.
//! - [`queries`]: the `jobs` and `job_executions` tables.
//! - [`admin`], [`cli`]: `grove jobs` and the loopback ops routes it talks to; [`metrics`]:
//!   `grove_jobs_*`.
//!
//! Which device may use which thing's topics is the broker's policy: the built-in `device` policy
//! allows `$aws/things/${thing}/jobs/#` as it allows the shadow topics, so a device reads and
//! drives only its own thing's executions (see `grove_auth::policy::device_policy`).
//!
//! Architecture invariant: the core (`machine`, `document`, `names`) never reads the clock and does
//! no IO; the service answers only on the jobs topics of the request it serves and notifies only
//! the things whose executions changed.

pub mod admin;
pub mod cli;
pub mod document;
pub mod machine;
pub mod metrics;
pub mod names;
pub mod queries;
pub mod service;
