//! Guest SDK for Grove local functions, written in Rust and built for `wasm32-unknown-unknown`.
//!
//! A Grove function is a plain core WebAssembly module that the gateway runs on events (see `ABI.md`
//! next to this crate for the language-neutral contract). This crate implements that contract for Rust:
//!
//! - it exports `grove_abi_version` and `grove_alloc`, and [`handler!`] exports the handler;
//! - it turns the event into an [`Event`] and the handler's `Result` into the response body or the error
//!   message;
//! - it reports a panic through the host's log and as the error message before the module traps;
//! - it wraps every host call in a safe function returning `Result<_, HostError>`: [`publish`],
//!   [`shadow`], [`kv`], [`config`], [`log`] and [`now_ms`].
//!
//! ```no_run
//! use grove_fn_sdk::{Event, Qos};
//!
//! fn handle(event: Event<'_>) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
//!     let device = event.topic_level(1).unwrap_or("unknown");
//!     grove_fn_sdk::publish(&format!("seen/{device}"), event.payload(), Qos::AtLeastOnce)?;
//!     Ok(b"ok".to_vec())
//! }
//!
//! grove_fn_sdk::handler!(handle);
//! ```
//!
//! Asynchronous invocations are delivered at least once: a handler may see the same event again after
//! a failure or a gateway restart, so it must be idempotent (see the examples in `functions/examples`).
//!
//! Off wasm32 there is no Grove host: every host call fails with [`HostError::Unavailable`]. That lets
//! a function crate compile natively and unit-test its pure logic with `cargo test`.

mod buffers;
mod entry;
mod error;
mod event;
mod ffi;
mod host;

pub use error::HostError;
pub use event::Event;
pub use host::{config, kv, log, now_ms, publish, shadow, Qos};

/// The version of the Grove function ABI this SDK implements; `grove_abi_version` returns it.
pub const ABI_VERSION: i32 = 1;

/// Items the [`handler!`] macro expands to; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::entry::invoke;
}

/// Exports a handler function under the name the host calls.
///
/// `handler!(handle)` exports `handle` as `grove_handle`, the manifest's default `handler`;
/// `handler!(handle, export = "other")` exports it as `other` (then name it in the manifest). A module may
/// export several handlers and deploy each under its own manifest.
///
/// The handler is any `fn(Event<'_>) -> Result<B, E>` where `B: AsRef<[u8]>` is the response body
/// (`Vec<u8>`, `String`, `&'static str`, ...) and `E: Display` is the error message
/// (`String`, `Box<dyn std::error::Error>`, [`HostError`], ...). `Ok` returns 0 to the host with the
/// body as output; `Err` returns 1 with the error's text as output.
///
/// The macro names an existing function rather than wrapping its definition so that `rustfmt` and the
/// IDE still see an ordinary function.
///
/// ```no_run
/// fn shout(event: grove_fn_sdk::Event<'_>) -> Result<String, String> {
///     let text = std::str::from_utf8(event.payload()).map_err(|e| e.to_string())?;
///     Ok(text.to_uppercase())
/// }
///
/// grove_fn_sdk::handler!(shout, export = "shout");
/// ```
#[macro_export]
macro_rules! handler {
    ($handler:path) => {
        $crate::handler!($handler, export = "grove_handle");
    };
    ($handler:path, export = $export:literal) => {
        // The anonymous constant scopes the wrapper's name, so a module can export several handlers.
        const _: () = {
            // `export_name` counts as unsafe code for the lint: it is how the host finds the handler.
            #[allow(unsafe_code)]
            #[unsafe(export_name = $export)]
            extern "C" fn grove_exported_handler(
                topic_ptr: i32,
                topic_len: i32,
                payload_ptr: i32,
                payload_len: i32,
            ) -> i32 {
                $crate::__private::invoke(topic_ptr, topic_len, payload_ptr, payload_len, $handler)
            }
        };
    };
}
