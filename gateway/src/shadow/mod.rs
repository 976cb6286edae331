//! Device shadows: the AWS IoT Device Shadow service, over MQTT, persisted in SQLite.
//!
//! A device built for AWS IoT talks to Grove unchanged: the same `$aws/things/{thing}/shadow/...`
//! topics (classic and named shadows), the same JSON documents, the same error codes and messages.
//!
//! - [`names`]: thing and shadow names and the shadow topics (pure).
//! - [`document`]: validation, merge, metadata, delta and every response document (pure: no IO,
//!   no clock; `now` is passed in).
//! - [`service`]: the shell that serves requests from the bus, writes shadows to the store in group
//!   commits, and publishes answers only after they are durable.
//! - [`local`]: requests from the gateway's own components (functions, cloud sync), through the
//!   same MQTT API on their bus links, answers matched by client token.
//! - [`client`]: the operator's side, `grove shadow ...`, which talks to a running gateway over
//!   its MQTT API like any device would.

pub mod client;
pub mod document;
pub mod local;
pub mod names;
pub mod queries;
pub mod service;
