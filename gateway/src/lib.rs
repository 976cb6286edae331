//! `grove-gateway`: the Grove edge gateway, built into the `grove` binary.
//!
//! One process holds an embedded MQTT broker (rumqttd's router behind Grove's own connection
//! layer), the durable store (SQLite), and the operations endpoint; the device shadow service,
//! rules, WebAssembly functions and cloud sync plug into the broker through in-process links as
//! they land. See `ARCHITECTURE.md` at the repository root for the map and its invariants.
//!
//! Modules:
//! - [`config`]: `grove.toml`, parsed then resolved; errors name key, file and line.
//! - [`broker`]: the embedded broker and its connection layer; [`bus`]: components' links to it.
//! - [`shadow`]: the AWS IoT Device Shadow service; [`rules`]: the rules engine's component.
//! - [`functions`]: local WebAssembly functions on wasmtime.
//! - [`auth`]: TLS, device identities and policies.
//! - [`cloud`]: the cloud link, the durable outbox, the downlink bridge and shadow sync.
//! - [`tap`]: durable taps, through which the cloud outbox and functions' events commit the
//!   messages they take before those are acknowledged.
//! - [`store`]: the SQLite database and its single owner thread with group commit.
//! - [`metrics`] and [`ops`]: counters and the `/healthz` + `/metrics` endpoint.
//! - [`run`]: startup and shutdown order; [`logging`]: the tracing subscriber; [`memory`]: freed
//!   memory given back to the system after bursts.

pub mod config;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod mqtt_request;
pub mod ops;
pub mod run;
