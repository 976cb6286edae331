//! `grove-shadow-api`: what the gateway's other components need of device shadows, without the
//! shadow service itself.
//!
//! Functions (their shadow host calls), the rules engine (its shadow actions) and cloud sync use
//! shadows the way a device does: through the AWS IoT Device Shadow MQTT API on their bus links.
//! What that takes is here:
//!
//! - [`names`]: thing and shadow names and the `$aws/things/...` shadow topics (pure);
//! - [`token`]: the client token of a shadow request or answer (pure);
//! - [`local`]: [`local::LocalShadows`], a component's handle that sends requests on its bus link
//!   and matches the answers by client token.
//!
//! The service (documents, the store, the `[shadow]` section, metrics, CLI) is `grove-shadow`, which
//! builds on this crate. Keeping the two apart is what lets the components depend on the shadows'
//! *API* rather than their implementation: a change inside the service rebuilds `grove-shadow`,
//! cloud sync (which reads stored shadows) and the binary, not functions or rules.
//!
//! Architecture invariant: this crate depends on `grove-broker` (the bus) and nothing else of
//! Grove's.

pub mod local;
pub mod names;
pub mod token;
