//! The module's entry points: the `grove_abi_version` and `grove_alloc` exports, and the code every
//! handler export runs (event decoding, response body or error message, panic report).

use std::fmt::Display;
use std::sync::Once;

use crate::buffers::EVENT_BUFFERS;
use crate::event::Event;
use crate::ffi;

/// The handler's return code on success; anything else is a handler error.
const SUCCESS: i32 = 0;
/// The handler's return code on error (the error message is the output).
const FAILURE: i32 = 1;
/// The longest error message the SDK retries with when the host refuses a longer one (LIMIT).
const SHORT_MESSAGE: usize = 1024;

/// Export: the ABI version this module speaks; the gateway rejects a module at deploy otherwise.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)] // `no_mangle` counts as unsafe code for the lint; there is no unsafe block.
#[unsafe(no_mangle)]
extern "C" fn grove_abi_version() -> i32 {
    crate::ABI_VERSION
}

/// Export: `size` writable bytes for the event, or 0 when memory is exhausted (or `size` < 0).
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)] // `no_mangle` counts as unsafe code for the lint; there is no unsafe block.
#[unsafe(no_mangle)]
extern "C" fn grove_alloc(size: i32) -> i32 {
    let Ok(size) = usize::try_from(size) else {
        return 0;
    };
    EVENT_BUFFERS
        .with(|buffers| buffers.borrow_mut().alloc(size))
        // A wasm32 address is 32 bits; the ABI passes it as an i32 bit pattern.
        .map_or(0, |address| address as u32 as i32)
}

/// What a handler export does: finds the event in the buffers `grove_alloc` handed out, runs the
/// handler, and frees the buffers so that a reused instance does not grow per event.
pub fn invoke<B, E, F>(
    topic_ptr: i32,
    topic_len: i32,
    payload_ptr: i32,
    payload_len: i32,
    handler: F,
) -> i32
where
    F: FnOnce(Event<'_>) -> Result<B, E>,
    B: AsRef<[u8]>,
    E: Display,
{
    install_panic_hook();
    // Taking the list (rather than borrowing it) frees, when it drops at the end, also the buffers of
    // an earlier invocation that trapped before it could free its own.
    let buffers = EVENT_BUFFERS.with(|buffers| buffers.take());
    // The ABI's i32 arguments are wasm32 addresses and lengths: reinterpret them as unsigned.
    let range = |ptr: i32, len: i32| buffers.get(ptr as u32 as usize, len as u32 as usize);
    match (range(topic_ptr, topic_len), range(payload_ptr, payload_len)) {
        (Some(topic), Some(payload)) => run(topic, payload, handler),
        _ => fail("the event's topic or payload lies outside the memory grove_alloc returned"),
    }
}

/// Runs `handler` on the event and reports its result to the host; returns the handler's code.
pub(crate) fn run<B, E, F>(topic: &[u8], payload: &[u8], handler: F) -> i32
where
    F: FnOnce(Event<'_>) -> Result<B, E>,
    B: AsRef<[u8]>,
    E: Display,
{
    let Ok(topic) = std::str::from_utf8(topic) else {
        return fail("the event's topic is not UTF-8");
    };
    match handler(Event::new(topic, payload)) {
        Ok(body) => match ffi::output(body.as_ref()) {
            SUCCESS => SUCCESS,
            code => fail(&format!(
                "the response body ({} bytes) was refused: {}",
                body.as_ref().len(),
                crate::HostError::from_code(code)
            )),
        },
        Err(error) => fail(&error.to_string()),
    }
}

/// Sets `message` as the error output and returns the failure code.
fn fail(message: &str) -> i32 {
    set_error_output(message);
    FAILURE
}

/// Sets `message` as the output; if the host finds it too long, sets its first part instead.
fn set_error_output(message: &str) {
    if ffi::output(message.as_bytes()) != SUCCESS {
        let mut end = SHORT_MESSAGE.min(message.len());
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        ffi::output(&message.as_bytes()[..end]);
    }
}

/// Installs, once per instance, a panic hook that reports the panic before the module traps: it logs
/// the message at level error and makes it the invocation's output, so the caller (sync invoke, the
/// DLQ entry) sees why the function failed. Release builds abort on panic; the hook still runs first.
fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // Native unit tests keep the test harness's hook so that failing tests still print; on wasm32
        // the default hook would only write to a stderr that does not exist.
        #[cfg(test)]
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // PanicHookInfo shows "panicked at FILE:LINE:COL:\nMESSAGE"; one line reads better in logs.
            let message = info.to_string().replace('\n', " ");
            ffi::log(0, message.as_bytes());
            set_error_output(&message);
            #[cfg(test)]
            previous(info);
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::fake;

    /// Runs `handler` on an event and returns its code and the output it left.
    fn check<B, E>(
        topic: &[u8],
        handler: impl FnOnce(Event<'_>) -> Result<B, E>,
    ) -> (i32, Option<String>)
    where
        B: AsRef<[u8]>,
        E: Display,
    {
        fake::with(|host| host.output = None);
        let code = run(topic, b"{\"v\":1}", handler);
        let output = fake::with(|host| host.output.take());
        (code, output.map(|o| String::from_utf8(o).unwrap()))
    }

    #[test]
    fn results_become_codes_and_output() {
        let ok = |e: Event<'_>| Ok::<_, String>(format!("{}:{}", e.topic(), e.payload().len()));
        assert_eq!(check(b"a/b", ok), (0, Some("a/b:7".into())));
        let empty = |_: Event<'_>| Ok::<_, String>(Vec::new());
        assert_eq!(check(b"a/b", empty), (0, Some(String::new())));
        let err = |_: Event<'_>| Err::<Vec<u8>, _>(crate::HostError::Denied);
        let denied = crate::HostError::Denied.to_string();
        assert_eq!(check(b"a/b", err), (1, Some(denied)));
        let never = |_: Event<'_>| -> Result<Vec<u8>, String> { unreachable!("not called") };
        assert_eq!(
            check(b"\xff", never),
            (1, Some("the event's topic is not UTF-8".into()))
        );
    }

    #[test]
    fn refused_body_becomes_an_error_and_long_errors_are_shortened() {
        fake::with(|host| host.output_limit = Some(SHORT_MESSAGE));
        let big = |_: Event<'_>| Ok::<_, String>(vec![b'x'; 5000]);
        let refused = "the response body (5000 bytes) was refused: \
                       limit exceeded (too large or too many calls)";
        assert_eq!(check(b"t", big), (1, Some(refused.into())));
        // 'é' is two bytes, so byte SHORT_MESSAGE falls inside a character: the cut moves before it.
        let long = |_: Event<'_>| Err::<Vec<u8>, _>("é".repeat(SHORT_MESSAGE));
        let (code, output) = check(b"t", long);
        fake::with(|host| host.output_limit = None);
        assert_eq!((code, output), (1, Some("é".repeat(SHORT_MESSAGE / 2))));
    }

    #[test]
    fn panic_is_logged_and_becomes_the_output() {
        fake::with(|host| host.output = None);
        let outcome = std::panic::catch_unwind(|| {
            run(b"t", b"", |_: Event<'_>| -> Result<Vec<u8>, String> {
                install_panic_hook();
                panic!("sensor exploded")
            })
        });
        assert!(
            outcome.is_err(),
            "the panic propagates (on wasm32 it aborts the module)"
        );
        let (output, logs) =
            fake::with(|host| (host.output.take(), std::mem::take(&mut host.logs)));
        let output = String::from_utf8(output.unwrap()).unwrap();
        assert!(output.starts_with("panicked at"), "{output}");
        assert!(output.ends_with(" sensor exploded"), "{output}");
        assert_eq!(logs, vec![(0, output)]);
    }
}
