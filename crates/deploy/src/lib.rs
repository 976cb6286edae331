//! Deployments (issue 19): the gateway's desired functions and rules as one versioned document,
//! applied by a state machine that ends committed or rolled back, never in between.
//!
//! The pure core (no IO, no clock: the shell passes `now` in):
//!
//! - [`document`]: the deployment document (JSON, `format: 1`), parsed and checked with errors
//!   that name the field at fault, and the SHA-256 check of an artifact's bytes.
//! - [`machine`]: the apply state machine (received, fetching, staging, switching, soaking, then
//!   committed, or rolling back then rolled back, or failed), each step under a timeout, a newer
//!   deployment superseding a queued one, and the decision taken on start after a power cut at
//!   each step.
//! - [`health`]: the soak check, error counters compared with their thresholds.
//! - [`jobs`]: the device side of AWS IoT Jobs' MQTT API (start-next, notify-next, updates with
//!   their expected version), so a deployment can come from the cloud.
//!
//! The shell drives it: it performs the machine's [`machine::Action`]s in order, and the first
//! action of every transition is [`machine::Action::Record`], written before anything else is
//! done, so that what is on disk is always the step in progress (write-ahead).
//!
//! - [`service`]: the task owning the machine: steps through the functions component and the
//!   rules engine, the snapshot and the rollback; [`service::Deployer`], its handle.
//! - [`fetch`]: an artifact's bytes (file, inline, HTTPS URL: resumable, bounded by the declared
//!   size), checked by hash.
//! - [`cloud`]: the Jobs client's shell on the cloud link and the lines of `grove cloud status`;
//!   the binary wires it to `grove-cloud`, which this crate does not depend on.
//! - [`queries`]: the `deployments` table; [`config`]: `[deploy]`.
//! - [`admin`], [`cli`]: `grove deploy` and the routes it talks to; [`metrics`]: `grove_deploy_*`.
//!
//! Architecture invariant: the core (`document`, `health`, `machine`, `jobs`) uses nothing of
//! Grove's and never reads the clock.

pub mod admin;
pub mod cli;
pub mod cloud;
pub mod config;
pub mod document;
pub mod fetch;
pub mod health;
pub mod jobs;
pub mod machine;
pub mod metrics;
pub mod queries;
pub mod service;
