//! `grove-auth`: device security: who may connect ([`identity`], [`tls`], `ca`) and what they
//! may do ([`policy`]); [`cli`]: `grove device ...`, the operator's administration of identities.
//!
//! Each listener has an authentication mode (anonymous, password, or client certificate over
//! mutual TLS) and a policy. The connection layer authenticates at CONNECT, resolves the policy's
//! variables for that client, and checks every PUBLISH, every SUBSCRIBE filter and every message
//! delivered (`broker/connection.rs`). A policy that cannot be enforced is a startup error.
//!
//! Architecture invariant: `grove-auth` depends on nothing of Grove's but `grove-rules` (the topic
//! matcher policies share with the rules' SQL); it never depends on the broker or a component.
//! rustls, rcgen and argon2 are not re-exported: [`tls`] hands out rustls's server config, which
//! only the broker and the cloud link (depending on rustls themselves) take.

mod ca;
pub mod cli;
pub mod fair_queue;
pub mod identity;
pub mod policy;
pub mod tls;
