//! `grove-broker`: the embedded MQTT broker: rumqttd's router, driven by Grove's own listeners and connections.
//!
//! rumqttd's router (subscriptions, in-memory per-filter logs, QoS 1 flow, persistent sessions,
//! retained delivery) runs on its own thread. Grove binds the listeners itself and runs each
//! connection on its tokio runtime ([`connection`]), relaying packets to the router through local
//! links. Components inside the gateway reach the broker the same way, through [`Broker::bus`],
//! never through a loopback socket.
//!
//! What rumqttd does not give, Grove adds here: retained messages survive restarts (they are
//! written to the store before the router sees them, and restored before the listeners open),
//! both MQTT versions on one port, refusal of oversized payloads with a reason, will messages for
//! connections that end without DISCONNECT, counters for `/metrics`, and a budget for peers that
//! have not authenticated yet ([`admission`]: per listener and per peer address, apart from
//! `max_connections`, which counts authenticated sessions).
//!
//! Also here: [`bus`] (the components' in-process links to the router), [`tap`] (durable taps),
//! [`reply`] (where a sync invocation's answer may go: checked by the connection layer and by the
//! functions component), the `[broker]` section ([`config`]), the broker's counters ([`metrics`])
//! its table of retained messages (`queries`), and [`sessions`]: the persistent sessions of Grove's
//! own router core (`grove-router`) in SQLite, ready for the connection layer that will drive it.
//!
//! Architecture invariant: this crate depends on `grove-store`, `grove-auth`, `grove-config`,
//! `grove-rules` (the pure SQL crate's topic matcher) and `grove-router` (the MQTT router core)
//! and nothing else of Grove's; no component crate (shadow, functions, rules, cloud) and never the
//! binary. rumqttd types stay inside this crate (its public face is Grove's own types: [`Broker`],
//! [`bus::Bus`], [`bus::Message`], ...), and rumqttd is not re-exported.

mod admission;
pub mod bus;
mod codec;
pub mod config;
mod connect;
mod connection;
pub mod metrics;
pub mod namespace;
mod queries;
pub mod reply;
mod server;
pub mod sessions;
pub mod tap;

pub use server::*;
