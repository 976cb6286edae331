//! `grove-cloud`: cloud sync: durable store-and-forward to a cloud MQTT broker, a downlink bridge, and two-way
//! shadow sync.
//!
//! - [`config`]: the `[cloud]` section.
//! - [`outbox`]: the outbox's admission policy, ordering and packet-id bookkeeping (pure).
//! - [`batch`]: a forward route's messages as one JSON array per publish, bounded by count, size
//!   and delay (pure).
//! - [`quota`]: the cloud's limits (payload, topic, publish rate; AWS IoT Core's profile), kept
//!   before sending (pure).
//! - `link`: rumqttc, TLS, reconnect with backoff and jitter.
//! - `merge`: the three-way merge of shadow state (pure); `sync`: the shadow sync component.
//! - [`cli`]: `grove cloud status` (rendering the answer; the binary asks).
//! - [`Rider`]: another component on the link (its cloud topics, its status lines), wired by
//!   the binary, so this crate depends on none of them (the deployments' AWS IoT Jobs client).
//! - [`metrics`], [`queries`]: the `grove_cloud_*` counters, the outbox's and sync states' tables.
//! - `forwarder.rs`: the component (below).
//!
//! The component in `forwarder.rs` owns the outbox. It installs the broker's durable tap
//! ([`grove_broker::tap`]) for the `forward` filters and the rules' `cloud` action, so every such message
//! is appended to the outbox (one transaction for all the offers waiting) **before** the router
//! sees it: a device's QoS 1 PUBACK means the message is on disk for the cloud. Then it considers
//! them for sending; it feeds the link from the outbox in sequence
//! order (a batching route's messages as JSON arrays, [`batch`]), at most `inflight` publishes
//! unacknowledged at once and within the cloud's rates ([`quota`]), deletes a publish's messages
//! when its PUBACK arrives, and after a reconnect starts again at the oldest unacknowledged
//! message. Messages from the cloud
//! on the `downlink` filters are published on local topics; shadow traffic goes to `sync`.
//!
//! Architecture invariant: a message bound for the cloud is in the outbox (committed) before it is
//! handed to the link, and leaves the outbox only on its PUBACK or by the full policy, which counts
//! and logs every drop.
//!
//! Architecture invariant: this crate depends on `grove-broker`, `grove-shadow` (its stored
//! shadows), `grove-shadow-api`, `grove-store`,
//! `grove-auth` and `grove-rules` (the topic matcher), never on functions, the rules engine or the
//! binary. rumqttc and rustls types stay inside `link.rs`; neither is re-exported.

pub mod batch;
pub mod cli;
pub mod config;
mod forwarder;
mod link;
mod merge;
pub mod metrics;
pub mod outbox;
pub mod queries;
pub mod quota;
mod sync;

pub use forwarder::*;
pub use link::Session;
