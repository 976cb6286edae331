//! The host imports (module `"grove"`) behind safe wrappers. This is the SDK's only unsafe code.
//!
//! Each import reads or writes exactly the `(pointer, length)` ranges it is given, inside this module's
//! exported memory, and only during the call. On wasm32, pointers and `usize` are 32 bits, which is the
//! ABI's `i32`. Every wrapper passes ranges borrowed from slices that live for the whole call, which is
//! all the imports need to be sound.
#![allow(unsafe_code)]

#[link(wasm_import_module = "grove")]
unsafe extern "C" {
    #[link_name = "output"]
    fn grove_output(ptr: *const u8, len: usize) -> i32;
    #[link_name = "publish"]
    fn grove_publish(
        topic_ptr: *const u8,
        topic_len: usize,
        payload_ptr: *const u8,
        payload_len: usize,
        qos: i32,
    ) -> i32;
    #[link_name = "shadow_get"]
    fn grove_shadow_get(
        thing_ptr: *const u8,
        thing_len: usize,
        name_ptr: *const u8,
        name_len: usize,
    ) -> i32;
    #[link_name = "shadow_update"]
    fn grove_shadow_update(
        thing_ptr: *const u8,
        thing_len: usize,
        name_ptr: *const u8,
        name_len: usize,
        doc_ptr: *const u8,
        doc_len: usize,
    ) -> i32;
    #[link_name = "kv_get"]
    fn grove_kv_get(key_ptr: *const u8, key_len: usize) -> i32;
    #[link_name = "kv_put"]
    fn grove_kv_put(key_ptr: *const u8, key_len: usize, val_ptr: *const u8, val_len: usize) -> i32;
    #[link_name = "kv_delete"]
    fn grove_kv_delete(key_ptr: *const u8, key_len: usize) -> i32;
    #[link_name = "config_get"]
    fn grove_config_get(key_ptr: *const u8, key_len: usize) -> i32;
    #[link_name = "log"]
    fn grove_log(level: i32, ptr: *const u8, len: usize);
    #[link_name = "now_ms"]
    fn grove_now_ms() -> i64;
    #[link_name = "result"]
    fn grove_result(ptr: *mut u8, len: usize) -> i32;
}

pub(crate) fn output(data: &[u8]) -> i32 {
    // SAFETY: the host reads `data`, which is borrowed for the call.
    unsafe { grove_output(data.as_ptr(), data.len()) }
}

pub(crate) fn publish(topic: &[u8], payload: &[u8], qos: i32) -> i32 {
    // SAFETY: the host reads `topic` and `payload`, both borrowed for the call.
    unsafe {
        grove_publish(
            topic.as_ptr(),
            topic.len(),
            payload.as_ptr(),
            payload.len(),
            qos,
        )
    }
}

pub(crate) fn shadow_get(thing: &[u8], name: &[u8]) -> i32 {
    // SAFETY: the host reads `thing` and `name`, both borrowed for the call.
    unsafe { grove_shadow_get(thing.as_ptr(), thing.len(), name.as_ptr(), name.len()) }
}

pub(crate) fn shadow_update(thing: &[u8], name: &[u8], doc: &[u8]) -> i32 {
    // SAFETY: the host reads `thing`, `name` and `doc`, all borrowed for the call.
    unsafe {
        grove_shadow_update(
            thing.as_ptr(),
            thing.len(),
            name.as_ptr(),
            name.len(),
            doc.as_ptr(),
            doc.len(),
        )
    }
}

pub(crate) fn kv_get(key: &[u8]) -> i32 {
    // SAFETY: the host reads `key`, borrowed for the call.
    unsafe { grove_kv_get(key.as_ptr(), key.len()) }
}

pub(crate) fn kv_put(key: &[u8], value: &[u8]) -> i32 {
    // SAFETY: the host reads `key` and `value`, both borrowed for the call.
    unsafe { grove_kv_put(key.as_ptr(), key.len(), value.as_ptr(), value.len()) }
}

pub(crate) fn kv_delete(key: &[u8]) -> i32 {
    // SAFETY: the host reads `key`, borrowed for the call.
    unsafe { grove_kv_delete(key.as_ptr(), key.len()) }
}

pub(crate) fn config_get(key: &[u8]) -> i32 {
    // SAFETY: the host reads `key`, borrowed for the call.
    unsafe { grove_config_get(key.as_ptr(), key.len()) }
}

pub(crate) fn log(level: i32, message: &[u8]) {
    // SAFETY: the host reads `message`, borrowed for the call.
    unsafe { grove_log(level, message.as_ptr(), message.len()) }
}

pub(crate) fn now_ms() -> i64 {
    // SAFETY: no memory is passed.
    unsafe { grove_now_ms() }
}

pub(crate) fn result(buffer: &mut [u8]) -> i32 {
    // SAFETY: the host writes at most `buffer.len()` bytes into `buffer`, mutably borrowed for the call.
    unsafe { grove_result(buffer.as_mut_ptr(), buffer.len()) }
}
