//! `grove-broker`: the embedded MQTT broker: the shell around Grove's router core
//! (`grove_router`), with Grove's own listeners, connection layer and codecs.
//!
//! One tokio task owns the core (`router_task`): connection tasks hand it events over a bounded
//! channel (an authenticated CONNECT, every later packet translated by `translate`, a lost
//! connection); it moves each client's packets into that client's bounded writer while the writer
//! has room, commits the core's storage writes in group commits (`persist`, the one storage seam)
//! before the core releases publishers' acknowledgements, and fires the core's timers (will delay,
//! session expiry). Each connection runs on the tokio runtime: `connection` up to CONNACK (CONNECT
//! checks in `connect`, authentication, `max_connections`, the pre-authentication budget of
//! `admission`), then `relay` (payload limit, topic and filter checks, the policy, durable taps,
//! PINGREQ, read holds while the core's read pressure is high); keep-alive is one sweep a second
//! over the registry of connections (`clients`), which wakes a silent client's relay. Both MQTT versions
//! share every port (`codec`: rumqttd's v4 and v5 codecs, unpatched, from crates.io).
//!
//! What the broker supports, and what CONNACK says about it: MQTT 3.1.1 and 5, QoS 0/1/2 both
//! ways at min(published, granted) QoS, clean start, session expiry and takeover, retained
//! messages (stored in SQLite), subscription options (No Local, Retain As Published, Retain
//! Handling), subscription identifiers, shared subscriptions, topic aliases, message expiry,
//! wills with delay, the client's Receive Maximum and Maximum Packet Size, the server's Receive
//! Maximum (100), Maximum Packet Size (`max_payload_size` + 128 KiB), Topic Alias Maximum (64) and,
//! when configured, Server Keep Alive. Persistent sessions are kept across reconnects and
//! restarts (`sessions`: SQLite, committed before the acknowledgements that depend on them).
//!
//! Components inside the gateway are router clients too, through [`Broker::bus`] ([`bus`]), never
//! through a loopback socket. Also here: [`tap`] (durable taps), [`reply`] (where a sync
//! invocation's answer may go: checked by the connection layer and by the functions component),
//! [`namespace`] (Grove's name rules), [`clients`] (the registry of connections: the clients
//! connected now, for operators, and the keep-alive sweep), the `[broker]` section ([`config`]),
//! the broker's counters ([`metrics`]) and [`sessions`]: the core's persistent sessions and retained messages in SQLite.
//!
//! Architecture invariant: this crate depends on `grove-router`, `grove-store`, `grove-auth`,
//! `grove-config` and `grove-rules` (the pure SQL crate's topic matcher) and nothing else of
//! Grove's; no component crate (shadow, functions, rules, cloud) and never the binary. rumqttd
//! types stay inside this crate (its public face is Grove's own types: [`Broker`], [`bus::Bus`],
//! [`bus::Message`], ...), and neither rumqttd nor the core is re-exported. No queue in it is
//! unbounded: each one's budget is documented where it is declared (`router_task`).

mod admission;
pub mod bus;
pub mod clients;
mod codec;
pub mod config;
mod connect;
mod connection;
pub mod metrics;
pub mod namespace;
mod persist;
mod relay;
pub mod reply;
mod router_task;
mod server;
pub mod sessions;
pub mod tap;
mod translate;

pub use server::*;
