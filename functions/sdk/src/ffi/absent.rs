//! No host: the SDK built natively outside its own tests. Every call fails with UNAVAILABLE (-5).
//!
//! Function crates compile natively so that `cargo test` can run their pure logic; they must not
//! mistake this for a gateway, so nothing here succeeds or records anything.

const UNAVAILABLE: i32 = -5;

pub(crate) fn output(_data: &[u8]) -> i32 {
    UNAVAILABLE
}

pub(crate) fn publish(_topic: &[u8], _payload: &[u8], _qos: i32) -> i32 {
    UNAVAILABLE
}

pub(crate) fn shadow_get(_thing: &[u8], _name: &[u8]) -> i32 {
    UNAVAILABLE
}

pub(crate) fn shadow_update(_thing: &[u8], _name: &[u8], _doc: &[u8]) -> i32 {
    UNAVAILABLE
}

pub(crate) fn kv_get(_key: &[u8]) -> i32 {
    UNAVAILABLE
}

pub(crate) fn kv_put(_key: &[u8], _value: &[u8]) -> i32 {
    UNAVAILABLE
}

pub(crate) fn kv_delete(_key: &[u8]) -> i32 {
    UNAVAILABLE
}

pub(crate) fn config_get(_key: &[u8]) -> i32 {
    UNAVAILABLE
}

pub(crate) fn log(_level: i32, _message: &[u8]) {}

pub(crate) fn now_ms() -> i64 {
    0
}

pub(crate) fn result(_buffer: &mut [u8]) -> i32 {
    -4
}
