//! The device core against a scripted broker, on a virtual clock: every packet the device sends is
//! decoded and compared, line by line, with the transcript a correct MQTT 3.1.1 shadow client produces.
//!
//! The relay is the crate's real `Relay` driver on an embedded-hal-mock pin, so each test also checks
//! the exact pin writes the shadow caused.

use embedded_hal_mock::eh1::digital::{Mock as PinMock, State as Level, Transaction as Pin};
use grove_firmware::actuator::{Polarity, Relay};
use grove_firmware::device::{DisconnectReason, PublishError, Refusal};
use grove_firmware::mqtt::{decode, ConnectReturnCode, DecodeError, Packet, Publish, QoS};
use grove_firmware::shadow::{State, Topic};
use grove_firmware::sht4x::Measurement;
use grove_firmware::transport::{self, TransportError};
use grove_firmware::{Config, Credentials, Device, Event, Instant};

const DELTA: &str = "$aws/things/t1/shadow/update/delta";
const GET_ACCEPTED: &str = "$aws/things/t1/shadow/get/accepted";
const GET_REJECTED: &str = "$aws/things/t1/shadow/get/rejected";
const CONNECT: &str = "CONNECT t1 ka=30 clean will=$grove/things/t1/status:offline q1 retain";
const SUBSCRIBE: &str =
    "SUBSCRIBE q1 $aws/things/t1/shadow/update/delta $aws/things/t1/shadow/update/rejected \
                         $aws/things/t1/shadow/get/accepted $aws/things/t1/shadow/get/rejected";
const ONLINE: &str = "PUBLISH q0 retain $grove/things/t1/status online";

/// The reported-state document for `relay` and `interval_s`.
fn report(relay: bool, interval_s: u32) -> String {
    format!(r#"{{"state":{{"reported":{{"relay":{relay},"interval_s":{interval_s}}}}}}}"#)
}

/// Renders a packet the device sent as one transcript line.
fn render(packet: &Packet<'_>) -> String {
    match packet {
        Packet::Connect(c) => {
            let will = c.will.map(|w| {
                let payload = String::from_utf8_lossy(w.payload);
                format!(
                    " will={}:{payload} q{} {}",
                    w.topic,
                    w.qos as u8,
                    if w.retain { "retain" } else { "" }
                )
            });
            let clean = if c.clean_session { " clean" } else { "" };
            let user = c.username.map(|u| format!(" user={u}"));
            let password = c
                .password
                .map(|p| format!(" password={}", String::from_utf8_lossy(p)));
            format!(
                "CONNECT {} ka={}{clean}{}{}{}",
                c.client_id,
                c.keep_alive,
                will.unwrap_or_default(),
                user.unwrap_or_default(),
                password.unwrap_or_default()
            )
        }
        Packet::Publish(p) => {
            let mut line = format!("PUBLISH q{}", p.qos as u8);
            if p.dup {
                line += " dup";
            }
            if p.qos == QoS::AtLeastOnce {
                line += &format!(" id={}", p.pkid);
            }
            if p.retain {
                line += " retain";
            }
            format!("{line} {} {}", p.topic, String::from_utf8_lossy(p.payload))
        }
        Packet::Subscribe { filters, .. } => {
            let mut line = String::from("SUBSCRIBE q1");
            for filter in filters.iter() {
                assert_eq!(filter.qos, QoS::AtLeastOnce);
                line += &format!(" {}", filter.topic);
            }
            line
        }
        Packet::Puback(pkid) => format!("PUBACK {pkid}"),
        Packet::Pingreq => "PINGREQ".into(),
        other => format!("{other:?}"),
    }
}

/// A device with a virtual clock and a scripted broker.
struct Harness {
    device: Device<Relay<PinMock>>,
    now: u64,
    /// Broker bytes are fed in chunks of this size, to prove packets may arrive split anywhere.
    chunk: usize,
    /// The packet identifier of the last SUBSCRIBE the device sent, for the SUBACK.
    subscribe_id: u16,
}

impl Harness {
    /// A device for thing `t1` whose relay pin expects exactly `pin` (the boot-time "off" included).
    fn new(pin: &[Pin], chunk: usize) -> Self {
        Self::with_config(pin, chunk, config())
    }

    /// As [`Harness::new`], with the device configured by `config`.
    fn with_config(pin: &[Pin], chunk: usize, config: Config) -> Self {
        let relay = Relay::new(PinMock::new(pin), Polarity::ActiveHigh);
        Self {
            device: Device::new(config, relay, Instant::from_millis(0)),
            now: 0,
            chunk,
            subscribe_id: 0,
        }
    }

    /// Advances the virtual clock by `ms`, running every timer that expires on the way, in order.
    fn advance(&mut self, ms: u64) {
        let target = self.now + ms;
        while self.device.poll_timeout().as_millis() <= target {
            self.now = self.now.max(self.device.poll_timeout().as_millis());
            self.device.handle_timeout(Instant::from_millis(self.now));
        }
        self.now = target;
    }

    fn open(&mut self) {
        self.device.transport_opened(Instant::from_millis(self.now));
    }

    /// Sends `packet` from the broker.
    fn broker(&mut self, packet: Packet<'_>) {
        let mut buf = vec![0u8; 4096];
        let len = packet.encode(&mut buf).unwrap();
        self.raw(&buf[..len]);
    }

    fn raw(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(self.chunk) {
            self.device
                .handle_input(chunk, Instant::from_millis(self.now));
        }
    }

    /// A QoS 1 PUBLISH from the broker.
    fn deliver(&mut self, topic: &str, pkid: u16, payload: &str) {
        let publish = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic,
            pkid,
            payload: payload.as_bytes(),
        };
        self.broker(Packet::Publish(publish));
    }

    /// Asserts what the device sent since the last call, drained in small pieces like a UART would.
    fn expect_sent(&mut self, expected: &[&str]) {
        let mut bytes = Vec::new();
        let mut piece = [0u8; 7];
        while let Some(n) = self.device.poll_transmit(&mut piece) {
            bytes.extend_from_slice(&piece[..n]);
        }
        let mut lines = Vec::new();
        let mut rest = &bytes[..];
        while let Some((packet, used)) = decode(rest).expect("device sends valid MQTT") {
            if let Packet::Subscribe { pkid, .. } = packet {
                self.subscribe_id = pkid;
            }
            lines.push(render(&packet));
            rest = &rest[used..];
        }
        assert!(rest.is_empty(), "partial packet left: {rest:02x?}");
        assert_eq!(lines, expected, "at t={} ms", self.now);
    }

    fn expect_events(&mut self, expected: &[Event]) {
        let events: Vec<Event> = std::iter::from_fn(|| self.device.poll_event()).collect();
        assert_eq!(events, expected, "at t={} ms", self.now);
    }

    /// Connects and subscribes, answering like a broker, and checks the boot report and `get`.
    fn connect(&mut self, resent: &[String], report: Option<(u16, String)>, get_id: u16) {
        self.advance(0);
        self.expect_events(&[Event::OpenTransport]);
        self.open();
        self.expect_sent(&[CONNECT]);
        self.broker(Packet::Connack {
            session_present: false,
            code: ConnectReturnCode::Accepted,
        });
        self.expect_sent(&[SUBSCRIBE]);
        self.broker(Packet::Suback {
            pkid: self.subscribe_id,
            codes: &[1, 1, 1, 1],
        });
        let mut expected = vec![ONLINE.to_string()];
        expected.extend(resent.iter().cloned());
        if let Some((id, doc)) = report {
            expected.push(format!(
                "PUBLISH q1 id={id} $aws/things/t1/shadow/update {doc}"
            ));
        }
        expected.push(format!(
            "PUBLISH q1 id={get_id} $aws/things/t1/shadow/get {{}}"
        ));
        self.expect_sent(&expected.iter().map(String::as_str).collect::<Vec<_>>());
        self.expect_events(&[Event::Connected]);
    }

    /// Ends the test: the relay pin saw exactly its expected writes.
    fn finish(self) {
        self.device.into_actuator().release().done();
    }
}

/// The harness's configuration: thing `t1`, keep-alive 30 s, ack timeout 5 s, backoff 1 s to 8 s.
fn config() -> Config {
    Config::new("t1")
        .unwrap()
        .with_timing(30, 5_000)
        .unwrap()
        .with_backoff(1_000, 8_000)
}

fn set(level: Level) -> Pin {
    Pin::set(level)
}

#[test]
fn boot_connects_subscribes_reports_and_catches_up() {
    for chunk in [usize::MAX, 1, 3] {
        let mut h = Harness::new(&[set(Level::Low), set(Level::High)], chunk);
        h.connect(&[], Some((2, report(false, 10))), 3);
        h.broker(Packet::Puback(2));
        h.broker(Packet::Puback(3));
        h.expect_sent(&[]);
        // The desired state was changed while the device was off: `get/accepted` carries the delta.
        h.deliver(
            GET_ACCEPTED,
            10,
            r#"{"state":{"desired":{"relay":true},"reported":{"relay":false,"interval_s":10},
               "delta":{"relay":true}},"metadata":{"desired":{"relay":{"timestamp":1700000000}}},
               "version":3,"timestamp":1700000001}"#,
        );
        let update = format!(
            "PUBLISH q1 id=4 $aws/things/t1/shadow/update {}",
            report(true, 10)
        );
        h.expect_sent(&["PUBACK 10", &update]);
        h.expect_events(&[Event::Applied(State {
            relay: true,
            interval_s: 10,
        })]);
        h.finish();
    }
}

#[test]
fn deltas_are_applied_in_version_order_and_reported_back() {
    let mut h = Harness::new(&[set(Level::Low), set(Level::High)], usize::MAX);
    h.connect(&[], Some((2, report(false, 10))), 3);
    h.broker(Packet::Puback(2));
    h.broker(Packet::Puback(3));
    #[rustfmt::skip]
    let steps: &[(u16, &str, &[&str], &[Event])] = &[
        (20, r#"{"version":5,"timestamp":1,"state":{"relay":true,"interval_s":60},"metadata":{}}"#,
            &["PUBACK 20", "PUBLISH q1 id=4 $aws/things/t1/shadow/update {\"state\":{\"reported\":{\"relay\":true,\"interval_s\":60}}}"],
            &[Event::Applied(State { relay: true, interval_s: 60 })]),
        // Older than what was applied: acknowledged, otherwise ignored.
        (21, r#"{"version":4,"state":{"relay":false}}"#, &["PUBACK 21"], &[]),
        (22, r#"{"version":6,"state":{"interval_s":0}}"#,
            &["PUBACK 22", "PUBLISH q1 id=5 $aws/things/t1/shadow/update {\"state\":{\"reported\":{\"relay\":true,\"interval_s\":60}}}"],
            &[Event::Refused(Refusal::IntervalOutOfRange(0))]),
        // Both in-flight slots are taken (ids 4 and 5): the next report waits for a PUBACK.
        (23, r#"{"version":7,"state":{"interval_s":30}}"#, &["PUBACK 23"],
            &[Event::Applied(State { relay: true, interval_s: 30 })]),
        (24, r#"{"version":8,"state":{"relay":"yes"}}"#, &["PUBACK 24"],
            &[Event::Refused(Refusal::Malformed(grove_firmware::shadow::ShadowError::Malformed(Topic::UpdateDelta)))]),
    ];
    for &(pkid, doc, sent, events) in steps {
        h.deliver(DELTA, pkid, doc);
        h.expect_sent(sent);
        h.expect_events(events);
    }
    h.broker(Packet::Puback(4));
    h.expect_sent(&[&format!(
        "PUBLISH q1 id=6 $aws/things/t1/shadow/update {}",
        report(true, 30)
    )]);
    h.deliver(
        GET_REJECTED,
        25,
        r#"{"code":404,"message":"No shadow exists with name: 't1'"}"#,
    );
    h.expect_sent(&["PUBACK 25"]);
    h.expect_events(&[Event::ShadowRejected {
        topic: Topic::GetRejected,
        code: 404,
    }]);
    h.finish();
}

#[test]
fn late_get_accepted_does_not_reapply_an_older_version() {
    let mut h = Harness::new(
        &[set(Level::Low), set(Level::High), set(Level::Low)],
        usize::MAX,
    );
    h.connect(&[], Some((2, report(false, 10))), 3);
    h.broker(Packet::Puback(2));
    h.broker(Packet::Puback(3));
    let update = |id: u16, relay: bool| {
        format!(
            "PUBLISH q1 id={id} $aws/things/t1/shadow/update {}",
            report(relay, 10)
        )
    };
    let applied = |relay: bool| {
        vec![Event::Applied(State {
            relay,
            interval_s: 10,
        })]
    };
    /// A shadow message from the broker (topic, packet id, document) and what the device must answer.
    type Step<'a> = (&'a str, u16, &'a str, Vec<String>, Vec<Event>);
    #[rustfmt::skip]
    let steps: Vec<Step> = vec![
        (DELTA, 40, r#"{"version":5,"state":{"relay":true}}"#,
            vec!["PUBACK 40".into(), update(4, true)], applied(true)),
        // The answer to the boot `get`, overtaken by the delta above: its delta is older.
        (GET_ACCEPTED, 41, r#"{"state":{"delta":{"relay":false}},"version":4}"#,
            vec!["PUBACK 41".into()], vec![]),
        // The same version again (a duplicate delivery): already applied.
        (GET_ACCEPTED, 42, r#"{"state":{"delta":{"relay":false}},"version":5}"#,
            vec!["PUBACK 42".into()], vec![]),
        // A newer document is applied.
        (GET_ACCEPTED, 43, r#"{"state":{"delta":{"relay":false}},"version":6}"#,
            vec!["PUBACK 43".into(), update(5, false)], applied(false)),
        // And a delta older than that document is not.
        (DELTA, 44, r#"{"version":6,"state":{"relay":true}}"#, vec!["PUBACK 44".into()], vec![]),
    ];
    for (topic, pkid, doc, sent, events) in steps {
        h.deliver(topic, pkid, doc);
        h.expect_sent(&sent.iter().map(String::as_str).collect::<Vec<_>>());
        h.expect_events(&events);
    }
    h.finish();
}

#[test]
fn qos1_telemetry_is_retransmitted_and_holds_one_slot_of_its_own() {
    let config = config().with_telemetry_qos(QoS::AtLeastOnce);
    let mut h = Harness::with_config(&[set(Level::Low), set(Level::High)], usize::MAX, config);
    let telemetry = |dup: &str, id: u16, seq: u32| {
        format!(
            r#"PUBLISH q1{dup} id={id} dt/t1/telemetry {{"seq":{seq},"temp_mc":21500,"rh_mpct":40250,"relay":false}}"#
        )
    };
    h.connect(&[], Some((2, report(false, 10))), 3);
    h.broker(Packet::Puback(2));
    h.broker(Packet::Puback(3));
    assert_eq!(h.device.seq(), 0);
    h.advance(10_000);
    h.expect_events(&[Event::SampleDue]);
    let now = Instant::from_millis(h.now);
    h.device.publish_sample(SAMPLE, now).unwrap();
    assert_eq!(h.device.seq(), 1);
    h.expect_sent(&[&telemetry("", 4, 1)]);
    // The next sample waits for the PUBACK; it is not numbered.
    assert_eq!(
        h.device.publish_sample(SAMPLE, now),
        Err(PublishError::InflightFull)
    );
    assert_eq!(h.device.seq(), 1);
    // Shadow traffic keeps its own slots meanwhile.
    h.deliver(DELTA, 50, r#"{"version":2,"state":{"relay":true}}"#);
    let update = format!(
        "PUBLISH q1 id=5 $aws/things/t1/shadow/update {}",
        report(true, 10)
    );
    h.expect_sent(&["PUBACK 50", &update]);
    h.expect_events(&[Event::Applied(State {
        relay: true,
        interval_s: 10,
    })]);
    h.broker(Packet::Puback(5));
    // No PUBACK for the sample: it is sent again with DUP after the ack timeout.
    h.advance(5_000);
    h.expect_sent(&[&telemetry(" dup", 4, 1)]);
    h.broker(Packet::Puback(4));
    h.advance(5_000);
    h.expect_events(&[Event::SampleDue]);
    h.device
        .publish_sample(SAMPLE, Instant::from_millis(h.now))
        .unwrap();
    assert_eq!(h.device.seq(), 2);
    h.expect_sent(&[&telemetry("", 6, 2).replace("false}", "true}")]);
    h.finish();
}

#[test]
fn unacknowledged_publish_is_retransmitted_with_dup_until_puback() {
    let mut h = Harness::new(&[set(Level::Low)], usize::MAX);
    h.connect(&[], Some((2, report(false, 10))), 3);
    h.broker(Packet::Puback(3));
    let dup = format!(
        "PUBLISH q1 dup id=2 $aws/things/t1/shadow/update {}",
        report(false, 10)
    );
    h.advance(4_999);
    h.expect_sent(&[]);
    h.advance(1);
    h.expect_sent(&[&dup]);
    h.advance(5_000);
    h.expect_sent(&[&dup]);
    h.broker(Packet::Puback(2));
    // Acknowledged: nothing more until the keep-alive, 30 s after the last transmission.
    h.advance(29_999);
    h.expect_sent(&[]);
    h.advance(1);
    h.expect_sent(&["PINGREQ"]);
    h.broker(Packet::Pingresp);
    h.advance(29_999);
    h.expect_sent(&[]);
    h.expect_events(&[Event::SampleDue; 6]);
    h.finish();
}

#[test]
fn reconnect_resends_in_flight_and_resyncs_with_get() {
    let mut h = Harness::new(
        &[set(Level::Low), set(Level::High), set(Level::Low)],
        usize::MAX,
    );
    h.connect(&[], Some((2, report(false, 10))), 3);
    h.broker(Packet::Puback(2));
    h.broker(Packet::Puback(3));
    h.deliver(DELTA, 11, r#"{"version":2,"state":{"relay":true}}"#);
    let lost = format!(
        "PUBLISH q1 id=4 $aws/things/t1/shadow/update {}",
        report(true, 10)
    );
    h.expect_sent(&["PUBACK 11", &lost]);
    h.expect_events(&[Event::Applied(State {
        relay: true,
        interval_s: 10,
    })]);
    // The link drops before the PUBACK; the device reconnects after the first backoff step (1 s).
    h.device.transport_closed(Instant::from_millis(h.now));
    h.expect_events(&[Event::Disconnected(DisconnectReason::TransportClosed)]);
    h.advance(999);
    h.expect_events(&[]);
    h.advance(1);
    h.expect_events(&[Event::OpenTransport]);
    h.open();
    h.expect_sent(&[CONNECT]);
    h.broker(Packet::Connack {
        session_present: false,
        code: ConnectReturnCode::Accepted,
    });
    h.expect_sent(&[SUBSCRIBE]);
    h.broker(Packet::Suback {
        pkid: h.subscribe_id,
        codes: &[1, 1, 1, 1],
    });
    let resent = lost.replace("q1 id=4", "q1 dup id=4");
    h.expect_sent(&[
        ONLINE,
        &resent,
        "PUBLISH q1 id=6 $aws/things/t1/shadow/get {}",
    ]);
    h.expect_events(&[Event::Connected]);
    // Someone switched the relay off while the device was away; the report waits for a free slot.
    h.deliver(
        GET_ACCEPTED,
        12,
        r#"{"state":{"delta":{"relay":false}},"version":4}"#,
    );
    h.expect_sent(&["PUBACK 12"]);
    h.expect_events(&[Event::Applied(State {
        relay: false,
        interval_s: 10,
    })]);
    h.broker(Packet::Puback(4));
    h.expect_sent(&[&format!(
        "PUBLISH q1 id=7 $aws/things/t1/shadow/update {}",
        report(false, 10)
    )]);
    h.finish();
}

#[test]
fn silent_broker_times_out_with_growing_backoff() {
    let mut h = Harness::new(&[set(Level::Low)], usize::MAX);
    h.connect(&[], Some((2, report(false, 10))), 3);
    h.broker(Packet::Puback(2));
    h.broker(Packet::Puback(3));
    h.advance(30_000);
    h.expect_sent(&["PINGREQ"]);
    h.advance(5_000);
    h.expect_events(&[
        Event::SampleDue,
        Event::SampleDue,
        Event::SampleDue,
        Event::Disconnected(DisconnectReason::PingTimeout),
    ]);
    // Backoff 1 s, then the broker never answers CONNECT: 5 s later the attempt fails, next wait 2 s.
    h.advance(1_000);
    h.expect_events(&[Event::OpenTransport]);
    h.open();
    h.expect_sent(&[CONNECT]);
    h.advance(5_000);
    h.expect_events(&[
        Event::SampleDue,
        Event::Disconnected(DisconnectReason::ConnackTimeout),
    ]);
    h.advance(1_999);
    h.expect_events(&[]);
    h.advance(1);
    h.expect_events(&[Event::OpenTransport]);
    h.expect_sent(&[]);
    h.finish();
}

#[test]
fn broker_faults_end_the_session() {
    let connack = |code| Packet::Connack {
        session_present: false,
        code,
    };
    let mut oversized = vec![0x30, 0x80, 0x10];
    oversized.resize(1100, b'x');
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<Vec<u8>>, DisconnectReason)> = vec![
        ("refused", vec![enc(connack(ConnectReturnCode::NotAuthorized))],
            DisconnectReason::Refused(ConnectReturnCode::NotAuthorized)),
        ("garbage", vec![vec![0x00, 0x00]], DisconnectReason::Protocol(DecodeError::UnsupportedPacketType(0))),
        ("SUBACK before CONNACK", vec![enc(Packet::Suback { pkid: 1, codes: &[1] })],
            DisconnectReason::UnexpectedPacket),
        ("subscription refused", vec![enc(connack(ConnectReturnCode::Accepted)),
            enc(Packet::Suback { pkid: 1, codes: &[1, 0x80, 1, 1] })], DisconnectReason::SubscribeRefused),
        ("packet larger than the receive buffer", vec![oversized], DisconnectReason::PacketTooLarge),
    ];
    for (name, inputs, reason) in cases {
        let mut h = Harness::new(&[set(Level::Low)], usize::MAX);
        h.advance(0);
        h.open();
        for input in &inputs {
            h.raw(input);
        }
        let events: Vec<Event> = std::iter::from_fn(|| h.device.poll_event()).collect();
        assert_eq!(events.last(), Some(&Event::Disconnected(reason)), "{name}");
        assert!(!h.device.is_connected(), "{name}");
        h.finish();
    }
}

#[test]
fn credentials_go_in_every_connect_and_a_refused_login_ends_the_session() {
    let credentials = Credentials::new("t1", b"s3cret").unwrap();
    assert_eq!(
        format!("{credentials:?}"),
        r#"Credentials { username: "t1", .. }"#,
        "the password is never printed"
    );
    let config = config().with_credentials(credentials);
    let mut h = Harness::with_config(&[set(Level::Low)], usize::MAX, config);
    let connect = format!("{CONNECT} user=t1 password=s3cret");
    for (attempt, at) in [(1, 0), (2, 1_000)] {
        h.advance(at - h.now);
        h.expect_events(&[Event::OpenTransport]);
        h.open();
        assert!(h.device.uses_transport(), "attempt {attempt}");
        h.expect_sent(&[&connect]);
        h.broker(Packet::Connack {
            session_present: false,
            code: ConnectReturnCode::BadUserNameOrPassword,
        });
        h.expect_events(&[Event::Disconnected(DisconnectReason::Refused(
            ConnectReturnCode::BadUserNameOrPassword,
        ))]);
        assert!(!h.device.uses_transport(), "attempt {attempt}");
        h.expect_sent(&[]);
    }
    h.finish();
}

/// The reading the telemetry tests publish.
const SAMPLE: Measurement = Measurement {
    temperature_milli_c: 21_500,
    humidity_milli_pct: 40_250,
};

fn enc(packet: Packet<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 256];
    let len = packet.encode(&mut buf).unwrap();
    buf.truncate(len);
    buf
}

#[test]
fn handle_events_publishes_due_samples_and_skips_failed_readings() {
    let mut h = Harness::new(&[set(Level::Low)], usize::MAX);
    h.connect(&[], Some((2, report(false, 10))), 3);
    h.broker(Packet::Puback(2));
    h.broker(Packet::Puback(3));
    // A failed reading skips that sample; the next one is due an interval later.
    h.advance(10_000);
    h.device
        .handle_events(Instant::from_millis(h.now), || Err::<Measurement, ()>(()));
    h.expect_sent(&[]);
    h.advance(10_000);
    h.device
        .handle_events(Instant::from_millis(h.now), || Ok::<_, ()>(SAMPLE));
    h.expect_sent(&[
        r#"PUBLISH q0 dt/t1/telemetry {"seq":1,"temp_mc":21500,"rh_mpct":40250,"relay":false}"#,
    ]);
    h.finish();
}

#[test]
fn telemetry_follows_the_shadow_interval() {
    let mut h = Harness::new(&[set(Level::Low)], usize::MAX);
    assert_eq!(
        h.device.publish_sample(SAMPLE, Instant::from_millis(0)),
        Err(PublishError::NotConnected)
    );
    h.connect(&[], Some((2, report(false, 10))), 3);
    h.broker(Packet::Puback(2));
    h.broker(Packet::Puback(3));
    h.advance(10_000);
    h.expect_events(&[Event::SampleDue]);
    h.device
        .publish_sample(SAMPLE, Instant::from_millis(h.now))
        .unwrap();
    h.expect_sent(&[
        r#"PUBLISH q0 dt/t1/telemetry {"seq":1,"temp_mc":21500,"rh_mpct":40250,"relay":false}"#,
    ]);
    h.deliver(DELTA, 30, r#"{"version":9,"state":{"interval_s":2}}"#);
    h.expect_sent(&[
        "PUBACK 30",
        &format!(
            "PUBLISH q1 id=4 $aws/things/t1/shadow/update {}",
            report(false, 2)
        ),
    ]);
    h.expect_events(&[Event::Applied(State {
        relay: false,
        interval_s: 2,
    })]);
    // The sample already scheduled (t = 20 s) stands; after it, samples come every 2 s.
    h.advance(10_000);
    h.expect_events(&[Event::SampleDue]);
    h.advance(2_000);
    h.expect_events(&[Event::SampleDue]);
    h.finish();
}

/// An in-memory transport: the broker's bytes are queued up front; what the device writes is kept.
struct ScriptedIo {
    input: std::collections::VecDeque<u8>,
    output: Vec<u8>,
    closed: bool,
}

impl embedded_io::ErrorType for ScriptedIo {
    type Error = embedded_io::ErrorKind;
}

impl embedded_io::ReadReady for ScriptedIo {
    fn read_ready(&mut self) -> Result<bool, Self::Error> {
        Ok(!self.input.is_empty() || self.closed)
    }
}

impl ScriptedIo {
    /// Moves what the script holds (at most `buf.len()` bytes) into `buf`.
    fn take(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.input.len());
        for (slot, byte) in buf.iter_mut().zip(self.input.drain(..n)) {
            *slot = byte;
        }
        n
    }
}

impl embedded_io::Read for ScriptedIo {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        Ok(self.take(buf))
    }
}

impl embedded_io::Write for ScriptedIo {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

#[test]
fn blocking_shell_moves_bytes_and_reports_a_closed_peer() {
    let mut h = Harness::new(&[set(Level::Low)], usize::MAX);
    let mut io = ScriptedIo {
        input: Default::default(),
        output: Vec::new(),
        closed: false,
    };
    let mut scratch = [0u8; 64];
    let now = Instant::from_millis(0);
    transport::poll(&mut h.device, &mut io, now, &mut scratch).unwrap();
    h.expect_events(&[Event::OpenTransport]);
    h.open();
    io.input.extend(enc(Packet::Connack {
        session_present: false,
        code: ConnectReturnCode::Accepted,
    }));
    io.input.extend(enc(Packet::Suback {
        pkid: 1,
        codes: &[1, 1, 1, 1],
    }));
    for _ in 0..3 {
        transport::poll(&mut h.device, &mut io, now, &mut scratch).unwrap();
    }
    assert_eq!(packet_kinds(&io.output), BOOT_PACKETS);
    io.closed = true;
    let result = transport::poll(&mut h.device, &mut io, now, &mut scratch);
    assert!(matches!(result, Err(TransportError::Closed)));
    assert!(!h.device.is_connected());
    h.expect_events(&[
        Event::Connected,
        Event::Disconnected(DisconnectReason::TransportClosed),
    ]);
    h.finish();
}

/// What a device sends on boot, by the first three words of each packet's rendering.
const BOOT_PACKETS: [&str; 5] = [
    "CONNECT t1 ka=30",
    "SUBSCRIBE q1 $aws/things/t1/shadow/update/delta",
    "PUBLISH q0 retain",
    "PUBLISH q1 id=2",
    "PUBLISH q1 id=3",
];

/// The first three words of the rendering of each packet in `wire`.
fn packet_kinds(mut wire: &[u8]) -> Vec<String> {
    let mut kinds = Vec::new();
    while let Some((packet, used)) = decode(wire).unwrap() {
        kinds.push(
            render(&packet)
                .split(' ')
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        );
        wire = &wire[used..];
    }
    kinds
}

impl embedded_io_async::ErrorType for ScriptedIo {
    type Error = embedded_io_07::ErrorKind;
}

impl embedded_io_async::Read for ScriptedIo {
    /// Hands out what the script holds; with nothing left it never completes (a quiet broker), unless
    /// the peer closed.
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        if self.input.is_empty() && !self.closed {
            std::future::pending::<()>().await;
        }
        Ok(self.take(buf))
    }
}

impl embedded_io_async::Write for ScriptedIo {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

#[test]
fn async_shell_moves_bytes_runs_timers_and_reports_a_closed_peer() {
    use grove_firmware::transport::asynch;
    use std::cell::Cell;

    let mut h = Harness::new(&[set(Level::Low)], usize::MAX);
    let mut io = ScriptedIo {
        input: Default::default(),
        output: Vec::new(),
        closed: false,
    };
    let mut scratch = [0u8; 64];
    // A virtual clock: the executor's "sleep", once polled, jumps it to the deadline and completes.
    let clock = Cell::new(0u64);
    let sleep_until = |at: Instant| {
        let clock = &clock;
        async move { clock.set(clock.get().max(at.as_millis())) }
    };
    let now = || Instant::from_millis(clock.get());
    embassy_futures::block_on(async {
        // No transport yet: only the timer (the first connection attempt, due at once) runs.
        asynch::wait(
            &mut h.device,
            None::<&mut ScriptedIo>,
            &mut scratch,
            sleep_until,
            now,
        )
        .await
        .unwrap();
        assert_eq!(h.device.poll_event(), Some(Event::OpenTransport));
        h.device.transport_opened(now());
        asynch::transmit(&mut h.device, &mut io, now(), &mut scratch)
            .await
            .unwrap();
        io.input.extend(enc(Packet::Connack {
            session_present: false,
            code: ConnectReturnCode::Accepted,
        }));
        io.input.extend(enc(Packet::Suback {
            pkid: 1,
            codes: &[1, 1, 1, 1],
        }));
        // Two reads (64-byte scratch, CONNACK and SUBACK are 9 bytes): both are consumed in the first.
        asynch::wait(&mut h.device, Some(&mut io), &mut scratch, sleep_until, now)
            .await
            .unwrap();
        asynch::transmit(&mut h.device, &mut io, now(), &mut scratch)
            .await
            .unwrap();
        assert!(h.device.is_connected());
        // Nothing to read: the wait ends at the device's next timer, the first sample at 10 s.
        asynch::wait(&mut h.device, Some(&mut io), &mut scratch, sleep_until, now)
            .await
            .unwrap();
        assert_eq!(
            clock.get(),
            5_000,
            "the unacknowledged report's ack timeout"
        );
        io.closed = true;
        let result =
            asynch::wait(&mut h.device, Some(&mut io), &mut scratch, sleep_until, now).await;
        assert!(matches!(result, Err(TransportError::Closed)));
    });
    assert_eq!(packet_kinds(&io.output), BOOT_PACKETS);
    assert!(!h.device.is_connected());
    h.expect_events(&[
        Event::Connected,
        Event::Disconnected(DisconnectReason::TransportClosed),
    ]);
    h.finish();
}

#[test]
fn actuator_fault_keeps_the_reported_state() {
    let fault = embedded_hal_mock::eh1::MockError::Io(std::io::ErrorKind::BrokenPipe);
    let mut h = Harness::new(
        &[set(Level::Low), set(Level::High).with_error(fault)],
        usize::MAX,
    );
    h.connect(&[], Some((2, report(false, 10))), 3);
    h.broker(Packet::Puback(2));
    h.broker(Packet::Puback(3));
    h.deliver(DELTA, 40, r#"{"version":3,"state":{"relay":true}}"#);
    // The report still goes out, with the relay as it really is, so the delta stays visible upstream.
    h.expect_sent(&[
        "PUBACK 40",
        &format!(
            "PUBLISH q1 id=4 $aws/things/t1/shadow/update {}",
            report(false, 10)
        ),
    ]);
    h.expect_events(&[Event::Refused(Refusal::ActuatorFault)]);
    h.finish();
}

#[test]
fn configuration_is_validated() {
    use grove_firmware::device::ConfigError::{self, *};
    /// The outcome of building a configuration, without the configuration.
    type Checked = Result<(), ConfigError>;
    let thing = |name: &str| Config::new(name).map(|_| ());
    let base = || Config::new("t").unwrap();
    let too_long = "x".repeat(65);
    #[rustfmt::skip]
    let cases: Vec<(&str, Checked, Checked)> = vec![
        ("thing name",                   thing("sensor-1:a_b"),                         Ok(())),
        ("empty thing name",             thing(""),                                     Err(InvalidThingName)),
        ("thing name with a slash",      thing("a/b"),                                  Err(InvalidThingName)),
        ("thing name with a wildcard",   thing("a+"),                                   Err(InvalidThingName)),
        ("65-character thing name",      thing(&too_long),                              Err(InvalidThingName)),
        ("keep-alive 0",                 base().with_timing(0, 1).map(|_| ()),
            Err(InvalidTiming { keep_alive_s: 0, ack_timeout_ms: 1 })),
        ("ack timeout beyond keep-alive", base().with_timing(5, 5_000).map(|_| ()),
            Err(InvalidTiming { keep_alive_s: 5, ack_timeout_ms: 5_000 })),
        ("interval 0",                   base().with_interval(0).map(|_| ()),           Err(InvalidInterval(0))),
        ("interval 1 day",               base().with_interval(86_400).map(|_| ()),      Ok(())),
        ("interval over 1 day",          base().with_interval(86_401).map(|_| ()),      Err(InvalidInterval(86_401))),
        ("user name and binary password", Credentials::new("t", &[0, 255]).map(|_| ()),  Ok(())),
        ("64-byte user name and password", Credentials::new(&too_long[1..], &too_long.as_bytes()[1..]).map(|_| ()), Ok(())),
        ("empty user name",              Credentials::new("", b"p").map(|_| ()),        Err(InvalidCredentials)),
        ("65-byte user name",            Credentials::new(&too_long, b"p").map(|_| ()), Err(InvalidCredentials)),
        ("65-byte password",             Credentials::new("t", too_long.as_bytes()).map(|_| ()), Err(InvalidCredentials)),
    ];
    for (name, got, expected) in cases {
        assert_eq!(got, expected, "{name}");
    }
}
