//! The raw host calls of ABI v1, one function per import, taking slices and returning the raw codes.
//!
//! [`crate::host`] turns the codes into typed results; this module only chooses the implementation:
//! - on wasm32, the imports of module `"grove"` (the only unsafe code of the SDK, in `wasm.rs`);
//! - in the SDK's own unit tests on the build machine, an in-memory fake (`fake.rs`) that records
//!   calls, so the SDK's logic (error mapping, pending results, output, panic reports) can be tested;
//! - in any other native build, no host at all (`absent.rs`): every call fails with UNAVAILABLE, so
//!   function crates compile natively for their own pure tests and never pretend to talk to a gateway.

#[cfg(all(not(target_arch = "wasm32"), not(test)))]
mod absent;
#[cfg(all(not(target_arch = "wasm32"), test))]
pub(crate) mod fake;
#[cfg(target_arch = "wasm32")]
mod wasm;

#[cfg(all(not(target_arch = "wasm32"), not(test)))]
pub(crate) use absent::*;
#[cfg(all(not(target_arch = "wasm32"), test))]
pub(crate) use fake::*;
#[cfg(target_arch = "wasm32")]
pub(crate) use wasm::*;
