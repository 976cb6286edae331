//! `grove-functions-host`: local functions (issue #5): WebAssembly handlers on wasmtime, with Lambda's semantics.
//!
//! - [`manifest`]: the deployed TOML manifest, parsed and validated (pure).
//! - [`routing`]: versions, `$LATEST`, aliases and weighted canaries (pure).
//! - `logs`: the bounds on what a function can make the gateway log or keep (pure).
//! - [`runtime`]: the wasmtime shell (pooling allocator, copy-on-write images, compile cache,
//!   `InstancePre`, epoch timeouts, memory limiter, the ABI's host calls and grant checks).
//! - [`service`]: the component's shell: registry, the tap's triggers, async queues, sync
//!   invocation over MQTT, and performing the host calls' effects on the bus and the store.
//!   Its decisions are pure modules with unit tests (no tokio, no wasmtime, no sockets):
//!   - `triggers`: the tap's routes, and which functions a message is an event of;
//!   - `delivery`: an async event's attempts, backoff and dead letters, and the refusals of a
//!     full queue or an unknown function;
//!   - [`protocol`]: the invoke and event topics, the sync request (reply topic, correlation),
//!     the answer envelopes and the dead-letter message;
//!   - `effects`: an invocation's publishes and kv writes held until success, the hop limit,
//!     the shadow answers as host results, the effect budget.
//! - `grove_broker::reply`: where a sync invocation's answer goes, and the checks on it (pure; the
//!   connection layer uses it too, which is why it lives in the broker).
//! - [`admin`]: the admin routes the ops endpoint serves to `grove fn` ([`cli`]).
//! - [`config`], [`metrics`], `queries`: the `[functions]` section, the `grove_function_*`
//!   counters, the functions' tables.
//!
//! The guest ABI (exports, host calls, limits, manifest, delivery) is `functions/ABI.md`.
//!
//! Architecture invariant: this crate depends on `grove-broker`, `grove-shadow-api`, `grove-store`,
//! `grove-auth`, `grove-config` and `grove-rules` (the topic matcher), never on the rules engine,
//! cloud sync or the binary. wasmtime types stay inside `runtime.rs`; wasmtime, axum and ureq are
//! not re-exported.

pub mod admin;
pub mod cli;
pub mod config;
mod delivery;
mod effects;
mod logs;
pub mod manifest;
pub mod metrics;
pub mod protocol;
mod queries;
pub mod routing;
pub mod runtime;
pub mod service;
mod triggers;
