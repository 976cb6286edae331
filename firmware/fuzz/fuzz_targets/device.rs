//! Fuzzes the device core with arbitrary broker bytes after a successful connect and subscribe: the
//! core must never panic, and whatever it sends must stay valid MQTT.
#![no_main]

use grove_firmware::actuator::Actuator;
use grove_firmware::mqtt::{decode, ConnectReturnCode, Packet};
use grove_firmware::{Config, Device, Instant};
use libfuzzer_sys::fuzz_target;

struct Flag;

impl Actuator for Flag {
    type Error = ();

    fn set(&mut self, _on: bool) -> Result<(), ()> {
        Ok(())
    }
}

fn packet(packet: Packet<'_>) -> Vec<u8> {
    let mut buf = [0u8; 16];
    let len = packet.encode(&mut buf).expect("small packet");
    buf[..len].to_vec()
}

fuzz_target!(|data: &[u8]| {
    let config = Config::new("fuzz").expect("valid thing name");
    let mut device = Device::new(config, Flag, Instant::from_millis(0));
    let now = Instant::from_millis(0);
    device.handle_timeout(now);
    device.transport_opened(now);
    device.handle_input(&packet(Packet::Connack { session_present: false, code: ConnectReturnCode::Accepted }), now);
    device.handle_input(&packet(Packet::Suback { pkid: 1, codes: &[1, 1, 1, 1] }), now);
    // The first byte of each chunk advances the clock, so timers fire between inputs.
    let mut clock = 0u64;
    for chunk in data.chunks(64) {
        clock += u64::from(chunk[0]) * 100;
        device.handle_input(&chunk[1..], Instant::from_millis(clock));
        device.handle_timeout(Instant::from_millis(clock));
    }
    let mut sent = Vec::new();
    let mut buf = [0u8; 256];
    while let Some(n) = device.poll_transmit(&mut buf) {
        sent.extend_from_slice(&buf[..n]);
    }
    let mut rest = &sent[..];
    while !rest.is_empty() {
        let (_, used) = decode(rest).expect("device output is valid MQTT").expect("device output is whole packets");
        rest = &rest[used..];
    }
    while device.poll_event().is_some() {}
});
