//! The embedded MQTT broker: rumqttd's router, driven by Grove's own listeners and connections.
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
//! Architecture invariant: rumqttd types stay inside `broker` and `bus`; other modules see Grove's
//! types.

mod admission;
pub mod codec;
pub mod connect;
mod connection;
pub mod namespace;
mod queries;
mod server;

pub use server::*;
