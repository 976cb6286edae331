//! An in-memory stand-in for the host, compiled only for the SDK's own unit tests.
//!
//! It is not a Grove host (no grants, no bus, no shadow semantics): kv and config are maps, publishes
//! and logs are recorded, and shadow calls answer with whatever the test put in `shadows` or
//! `update_reply`. It follows the ABI's pending-result rule, which is the SDK logic under test.

use std::cell::RefCell;
use std::collections::HashMap;

const NOT_FOUND: i32 = -4;

/// The fake host's state; tests set it up and inspect it through [`with`].
#[derive(Debug, Default)]
pub(crate) struct Fake {
    /// The last `output`.
    pub(crate) output: Option<Vec<u8>>,
    /// The largest `output` accepted; `None` = any size.
    pub(crate) output_limit: Option<usize>,
    /// Every `publish`: topic, payload, qos.
    pub(crate) published: Vec<(String, Vec<u8>, i32)>,
    /// Every `log`: level, message.
    pub(crate) logs: Vec<(i32, String)>,
    pub(crate) kv: HashMap<Vec<u8>, Vec<u8>>,
    pub(crate) config: HashMap<Vec<u8>, Vec<u8>>,
    /// `shadow_get` answers: (thing, name) -> document.
    pub(crate) shadows: HashMap<(Vec<u8>, Vec<u8>), Vec<u8>>,
    /// The next `shadow_update`'s outcome and document: 0 accepted (the call returns the document's
    /// length), or a negative code such as -6 rejected.
    pub(crate) update_reply: Option<(i32, Vec<u8>)>,
    pub(crate) now_ms: i64,
    pending: Option<Vec<u8>>,
}

thread_local! {
    static FAKE: RefCell<Fake> = RefCell::new(Fake::default());
}

/// Runs `f` on this thread's fake host.
pub(crate) fn with<R>(f: impl FnOnce(&mut Fake) -> R) -> R {
    FAKE.with(|fake| f(&mut fake.borrow_mut()))
}

/// Makes `data` the pending result and returns its length, as data-returning calls do.
fn pend(fake: &mut Fake, data: Option<Vec<u8>>) -> i32 {
    match data {
        Some(data) => {
            let len = i32::try_from(data.len()).expect("test data fits in i32");
            fake.pending = Some(data);
            len
        }
        None => {
            fake.pending = None;
            NOT_FOUND
        }
    }
}

pub(crate) fn output(data: &[u8]) -> i32 {
    with(|fake| match fake.output_limit {
        Some(limit) if data.len() > limit => -3,
        _ => {
            fake.output = Some(data.to_vec());
            0
        }
    })
}

pub(crate) fn publish(topic: &[u8], payload: &[u8], qos: i32) -> i32 {
    let topic = String::from_utf8(topic.to_vec()).expect("the SDK passes UTF-8 topics");
    with(|fake| fake.published.push((topic, payload.to_vec(), qos)));
    0
}

pub(crate) fn shadow_get(thing: &[u8], name: &[u8]) -> i32 {
    with(|fake| {
        let document = fake.shadows.get(&(thing.to_vec(), name.to_vec())).cloned();
        pend(fake, document)
    })
}

pub(crate) fn shadow_update(_thing: &[u8], _name: &[u8], _doc: &[u8]) -> i32 {
    with(|fake| {
        let (code, document) = fake.update_reply.take().expect("the test set update_reply");
        let len = pend(fake, Some(document));
        if code >= 0 {
            len
        } else {
            code
        }
    })
}

pub(crate) fn kv_get(key: &[u8]) -> i32 {
    with(|fake| {
        let value = fake.kv.get(key).cloned();
        pend(fake, value)
    })
}

pub(crate) fn kv_put(key: &[u8], value: &[u8]) -> i32 {
    with(|fake| fake.kv.insert(key.to_vec(), value.to_vec()));
    0
}

pub(crate) fn kv_delete(key: &[u8]) -> i32 {
    with(|fake| fake.kv.remove(key));
    0
}

pub(crate) fn config_get(key: &[u8]) -> i32 {
    with(|fake| {
        let value = fake.config.get(key).cloned();
        pend(fake, value)
    })
}

pub(crate) fn log(level: i32, message: &[u8]) {
    let message = String::from_utf8_lossy(message).into_owned();
    with(|fake| fake.logs.push((level, message)));
}

pub(crate) fn now_ms() -> i64 {
    with(|fake| fake.now_ms)
}

pub(crate) fn result(buffer: &mut [u8]) -> i32 {
    with(|fake| match &fake.pending {
        Some(data) => {
            let n = data.len().min(buffer.len());
            buffer[..n].copy_from_slice(&data[..n]);
            i32::try_from(n).expect("test data fits in i32")
        }
        None => NOT_FOUND,
    })
}
