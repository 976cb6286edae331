//! `grove-gateway`: the Grove edge gateway, built into the `grove` binary.
//!
//! One process holds an embedded MQTT broker (`grove-broker`: Grove's own router core, `grove-router`,
//! behind Grove's own connection layer), the durable store (`grove-store`, SQLite), and the operations endpoint; the
//! device shadow service (`grove-shadow`), the rules engine (`grove-rules-engine`), WebAssembly
//! functions (`grove-functions-host`) and cloud sync (`grove-cloud`) plug into the broker through
//! in-process links. Each component is its own crate, below this one; this crate starts and stops
//! them and aggregates what the operator sees whole. See `ARCHITECTURE.md` at the repository root
//! for the crate graph and its invariants.
//!
//! Modules:
//! - [`config`]: `grove.toml`, parsed then resolved, each section by its crate; errors name key,
//!   file and line.
//! - [`metrics`] and [`ops`]: the registry of every component's counters and the `/healthz` +
//!   `/metrics` endpoint.
//! - [`console`]: what the web console (`grove-console`, mounted on the ops endpoint) reads from
//!   and asks of this gateway; [`rule_file`]: its rule editor's change to `grove.toml`.
//! - [`run`]: startup and shutdown order; [`logging`]: the tracing subscriber; [`memory`]: freed
//!   memory given back to the system after bursts.
//! - [`mqtt_request`]: the operator's one-request MQTT client, for the CLI commands that talk to a
//!   running gateway.
//!
//! Architecture invariant: no crate depends on this one; it depends on every component crate.

pub mod config;
pub mod console;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod mqtt_request;
pub mod ops;
pub mod rule_file;
pub mod run;
