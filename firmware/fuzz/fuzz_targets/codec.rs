//! Fuzzes the MQTT codec: arbitrary bytes must decode to packets or errors without panicking, and
//! every packet that decodes must re-encode to exactly the bytes it came from.
#![no_main]

use grove_firmware::mqtt::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut out = vec![0u8; data.len() + 8];
    while let Ok(Some((packet, used))) = decode(rest) {
        let len = packet.encode(&mut out).expect("a decoded packet re-encodes");
        assert_eq!(&out[..len], &rest[..used], "re-encoding differs for {packet:?}");
        rest = &rest[used..];
    }
});
