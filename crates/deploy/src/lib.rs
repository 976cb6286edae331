//! Deployments (issue 19): the gateway's desired functions and rules as one versioned document,
//! applied by a state machine that ends committed or rolled back, never in between.
//!
//! This crate is, for now, the pure core (no IO, no clock: the shell passes `now` in):
//!
//! - [`document`]: the deployment document (JSON, `format: 1`), parsed and checked with errors
//!   that name the field at fault, and the SHA-256 check of an artifact's bytes.
//! - [`machine`]: the apply state machine (received, fetching, staging, switching, soaking, then
//!   committed, or rolling back then rolled back, or failed), each step under a timeout, a newer
//!   deployment superseding a queued one, and the decision taken on start after a power cut at
//!   each step.
//! - [`health`]: the soak check, error counters compared with their thresholds.
//!
//! The shell (SQLite state, fetching, the switch through the functions and rules components,
//! `grove deploy`) drives it; it performs the machine's [`machine::Action`]s in order, and the
//! first action of every transition is [`machine::Action::Record`], written before anything else
//! is done, so that what is on disk is always the step in progress (write-ahead).
//!
//! Architecture invariant: this crate's core depends on nothing of Grove's and never reads the
//! clock.

pub mod document;
pub mod health;
pub mod machine;
