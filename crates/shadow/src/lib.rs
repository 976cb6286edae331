//! `grove-shadow`: device shadows: the AWS IoT Device Shadow service, over MQTT, persisted in SQLite.
//!
//! A device built for AWS IoT talks to Grove unchanged: the same `$aws/things/{thing}/shadow/...`
//! topics (classic and named shadows), the same JSON documents, the same error codes and messages.
//!
//! - [`document`]: validation, merge, metadata, delta and every response document (pure: no IO,
//!   no clock; `now` is passed in).
//! - [`service`]: the shell that serves requests from the bus, writes shadows to the store in group
//!   commits, and publishes answers only after they are durable.
//! - [`cli`]: the operator's side, `grove shadow ...`, which talks to a running gateway over
//!   its MQTT API like any device would (what to ask and how to show the answer; the binary sends it).
//! - [`config`], [`metrics`], [`queries`]: the `[shadow]` section, the `grove_shadow_*` counters,
//!   the `shadows` table's queries.
//!
//! Names, topics, client tokens and the components' request handle are `grove-shadow-api`, which
//! the other components use instead of this crate (on the bus, like any client).
//!
//! Architecture invariant: this crate depends on `grove-shadow-api`, `grove-broker` (the bus),
//! `grove-store` and `grove-config` and nothing else of Grove's: never on functions, rules, cloud
//! or the binary.

pub mod cli;
pub mod config;
pub mod document;
pub mod metrics;
pub mod queries;
pub mod service;
