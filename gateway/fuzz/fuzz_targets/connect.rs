//! Fuzzes the connection layer's CONNECT phase (`crates/broker/src/connect.rs` and the codec it
//! uses, compiled in directly like the policy target, so the fuzz build needs rumqttd but not the
//! gateway): the bytes of an unauthenticated peer, delivered in reads of fuzzer-chosen sizes as
//! the connection layer reads them, through `read_connect`; then, for a CONNECT let through, the
//! first packets behind it through the session's codec, as the relay decodes them.
//!
//! Checked for every input: nothing panics; an unfinished CONNECT is never read past the limit
//! (the connection layer reads at most the room `read_connect` gives); a refusing CONNACK always
//! encodes in the version it is for; a CONNECT let through on a password listener carries a login
//! whose username is the client id (what the password check relies on), a valid will topic, and
//! no empty client id without a clean session on MQTT 3.1.1 (MQTT 5 allows it, 3.1.3.1), and no
//! client id of the gateway's own components.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rumqttd::protocol::{ConnAck, Packet};

#[allow(dead_code, missing_docs)]
#[path = "../../../crates/broker/src/codec.rs"]
mod codec;
#[allow(dead_code, missing_docs)]
#[path = "../../../crates/broker/src/connect.rs"]
mod connect;
#[allow(dead_code, missing_docs)]
#[path = "../../../crates/broker/src/namespace.rs"]
mod namespace;

use codec::Codec;
use connect::{check_topic_name, read_connect, ConnectRules, LoginRule, Step, MAX_FIXED_HEADER};

/// What the relay allows a packet after authentication (the default payload limit and the
/// connection layer's header allowance).
const AFTER_AUTH_MAX: usize = 1024 * 1024 + 128 * 1024;

fuzz_target!(|data: &[u8]| {
    let [setup, size, stream @ ..] = data else {
        return;
    };
    let rules = ConnectRules {
        max_size: 64 + usize::from(*size) * 32,
        login: if setup & 1 == 0 {
            LoginRule::Ignored
        } else {
            LoginRule::UsernameIsClientId
        },
    };
    // Reads of 1 to 64 bytes, or whatever the room allows.
    let read_size = match setup >> 1 {
        0 => usize::MAX,
        n => usize::from(n % 64) + 1,
    };
    let mut input = stream;
    let mut buf = BytesMut::new();
    let hello = loop {
        match read_connect(&mut buf, &rules) {
            Step::NeedMore { room } => {
                assert!(room >= 1, "asked for no bytes");
                let n = room.min(read_size).min(input.len());
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&input[..n]);
                input = &input[n..];
                assert!(
                    buf.len() <= rules.max_size + MAX_FIXED_HEADER,
                    "{} bytes held of an unfinished CONNECT, limit {}",
                    buf.len(),
                    rules.max_size
                );
            }
            Step::Refuse(refusal) => {
                if let Some(answer) = refusal.answer {
                    let ack = ConnAck {
                        session_present: false,
                        code: answer.code,
                    };
                    let mut out = BytesMut::new();
                    Codec::new(answer.version)
                        .write(Packet::ConnAck(ack, None), &mut out)
                        .unwrap_or_else(|e| panic!("{answer:?} does not encode: {e}"));
                }
                return;
            }
            Step::Connect(hello) => break hello,
        }
    };
    let id = &hello.connect.client_id;
    assert!(!id.is_empty() || hello.connect.clean_session || hello.version == codec::Version::V5);
    assert!(!id.starts_with(connect::COMPONENT_ID_PREFIX));
    if rules.login == LoginRule::UsernameIsClientId {
        let login = hello.login.as_ref().expect("a password listener needs a login");
        assert_eq!(&login.username, id);
    }
    if let Some(will) = &hello.will {
        assert!(check_topic_name(&will.topic, false).is_ok());
    }
    // After authentication: the first packets, decoded as the relay does.
    buf.extend_from_slice(input);
    let mut codec = Codec::new(hello.version);
    while codec.read(&mut buf, AFTER_AUTH_MAX).is_ok() {}
});
