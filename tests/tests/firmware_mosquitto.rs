//! The device core over real TCP (`transport::StdTcp`) against a real MQTT broker (mosquitto, which the
//! workspace's end-to-end tests also use), with a second client, written with the crate's own codec,
//! playing the shadow service: the device connects with its will, subscribes, reports on boot, asks
//! for its document, applies a delta, reports back, and its will fires when its connection drops.
//!
//! This is wire compatibility with a broker other than the scripted one and Grove's own; the shadow
//! round trip through a real Grove gateway and its shadow service is `tests/tests/firmware.rs`.
//! (It lived in the firmware crate, which had to start mosquitto its own way; here it uses the
//! harness's one way.)

use std::io::{Read, Write};
use std::net::TcpStream;

use grove_firmware::mqtt::{decode, Connect, Filter, Packet, Publish, QoS, SubscribeFilters};
use grove_firmware::shadow::State;
use grove_firmware::{Config, Event};
use grove_tests::device::Shell;
use grove_tests::{Mosquitto, WAIT};

const THING: &str = "e2e-1";

/// A connection to the broker, as the device and the stand-in service use it.
fn connect(broker: &Mosquitto) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", broker.port)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// A blocking MQTT client built on the crate's codec, standing in for the shadow service.
struct Service {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Service {
    fn connect(broker: &Mosquitto, topics: &[&str]) -> Self {
        let mut service = Self {
            stream: connect(broker),
            buf: Vec::new(),
        };
        service.stream.set_read_timeout(Some(WAIT)).unwrap();
        let connect = Connect {
            client_id: "shadow-service",
            keep_alive: 60,
            clean_session: true,
            will: None,
            username: None,
            password: None,
        };
        service.send(Packet::Connect(connect));
        assert!(matches!(service.next(), (0x20, _)), "CONNACK");
        let filters: Vec<Filter<'_>> = topics
            .iter()
            .map(|topic| Filter {
                topic,
                qos: QoS::AtMostOnce,
            })
            .collect();
        service.send(Packet::Subscribe {
            pkid: 1,
            filters: SubscribeFilters::new(&filters),
        });
        assert!(matches!(service.next(), (0x90, _)), "SUBACK");
        service
    }

    fn send(&mut self, packet: Packet<'_>) {
        let mut buf = vec![0u8; 512];
        let len = packet.encode(&mut buf).unwrap();
        self.stream.write_all(&buf[..len]).unwrap();
    }

    /// The next packet's first byte and, for a PUBLISH, its topic and payload.
    fn next(&mut self) -> (u8, Option<(String, String)>) {
        loop {
            if let Some((packet, used)) = decode(&self.buf).unwrap() {
                let first = self.buf[0] & 0xf0;
                let message = match packet {
                    Packet::Publish(p) => Some((
                        p.topic.to_string(),
                        String::from_utf8_lossy(p.payload).into_owned(),
                    )),
                    _ => None,
                };
                self.buf.drain(..used);
                return (first, message);
            }
            let mut chunk = [0u8; 512];
            let n = self
                .stream
                .read(&mut chunk)
                .expect("broker answers in time");
            assert!(n > 0, "broker closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn next_message(&mut self) -> (String, String) {
        loop {
            if let (_, Some(message)) = self.next() {
                return message;
            }
        }
    }
}

fn topic(suffix: &str) -> String {
    format!("$aws/things/{THING}/shadow/{suffix}")
}

#[test]
fn shadow_round_trip_through_mosquitto() {
    let broker = Mosquitto::start();
    let status = format!("$grove/things/{THING}/status");
    let mut service = Service::connect(&broker, &[&topic("update"), &topic("get"), &status]);

    let mut shell = Shell::new(Config::new(THING).unwrap(), true, broker.port);
    shell.run_until(|e| *e == Event::Connected);

    assert_eq!(service.next_message(), (status.clone(), "online".into()));
    let boot_report = r#"{"state":{"reported":{"relay":false,"interval_s":10}}}"#;
    assert_eq!(
        service.next_message(),
        (topic("update"), boot_report.into())
    );
    assert_eq!(service.next_message(), (topic("get"), "{}".into()));

    let delta = r#"{"version":1,"timestamp":1700000000,"state":{"relay":true},"metadata":{}}"#;
    let delta_topic = topic("update/delta");
    let publish = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: &delta_topic,
        pkid: 0,
        payload: delta.as_bytes(),
    };
    service.send(Packet::Publish(publish));
    let events = shell.run_until(|e| matches!(e, Event::Applied(_)));
    assert_eq!(
        events.last(),
        Some(&Event::Applied(State {
            relay: true,
            interval_s: 10
        }))
    );
    assert!(shell.device.actuator().0, "relay switched on");
    let report = r#"{"state":{"reported":{"relay":true,"interval_s":10}}}"#;
    assert_eq!(service.next_message(), (topic("update"), report.into()));

    // The device vanishes without DISCONNECT: the broker publishes its will.
    shell.vanish();
    assert_eq!(service.next_message(), (status, "offline".into()));
}
