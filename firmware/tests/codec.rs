//! The MQTT 3.1.1 codec: decoding known wire bytes (from the specification's layouts), rejecting
//! malformed input with the right error, and property tests that every packet round-trips and that
//! every strict prefix of a packet is reported as incomplete rather than as an error.

use grove_firmware::mqtt::{
    decode, Connect, ConnectReturnCode, DecodeError, EncodeError, Filter, Packet, Publish, QoS,
    SubscribeFilters, Will,
};
use proptest::prelude::*;

/// Decodes `bytes` and compares with `expected` (a packet that used all bytes, or an error).
fn check(bytes: &[u8], expected: Result<Packet<'_>, DecodeError>) {
    let got = decode(bytes);
    match expected {
        Ok(packet) => assert_eq!(got, Ok(Some((packet, bytes.len()))), "{bytes:02x?}"),
        Err(error) => assert_eq!(got, Err(error), "{bytes:02x?}"),
    }
}

#[test]
fn decodes_wire_bytes() {
    let filters = [
        Filter {
            topic: "a/+",
            qos: QoS::AtLeastOnce,
        },
        Filter {
            topic: "#",
            qos: QoS::AtMostOnce,
        },
    ];
    #[rustfmt::skip]
    let cases: &[(&[u8], Result<Packet<'_>, DecodeError>)] = &[
        (&[0x20, 2, 0, 0], Ok(Packet::Connack { session_present: false, code: ConnectReturnCode::Accepted })),
        (&[0x20, 2, 1, 5], Ok(Packet::Connack { session_present: true, code: ConnectReturnCode::NotAuthorized })),
        (&[0x30, 5, 0, 1, b'a', b'h', b'i'], Ok(Packet::Publish(Publish {
            dup: false, qos: QoS::AtMostOnce, retain: false, topic: "a", pkid: 0, payload: b"hi" }))),
        (&[0x3b, 5, 0, 1, b'a', 0x12, 0x34], Ok(Packet::Publish(Publish {
            dup: true, qos: QoS::AtLeastOnce, retain: true, topic: "a", pkid: 0x1234, payload: b"" }))),
        (&[0x40, 2, 0, 7], Ok(Packet::Puback(7))),
        (&[0x82, 12, 0, 9, 0, 3, b'a', b'/', b'+', 1, 0, 1, b'#', 0],
            Ok(Packet::Subscribe { pkid: 9, filters: SubscribeFilters::new(&filters) })),
        (&[0x90, 4, 0, 9, 1, 0x80], Ok(Packet::Suback { pkid: 9, codes: &[1, 0x80] })),
        (&[0xc0, 0], Ok(Packet::Pingreq)),
        (&[0xd0, 0], Ok(Packet::Pingresp)),
        (&[0xe0, 0], Ok(Packet::Disconnect)),
        (&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0], Ok(Packet::Connect(Connect {
            client_id: "", keep_alive: 60, clean_session: true, will: None, username: None, password: None }))),
        // Malformed input, one rule each.
        (&[0xd0, 0x80, 0x80, 0x80, 0x80, 0x01], Err(DecodeError::InvalidRemainingLength)),
        (&[0xd0, 0x80, 0x00], Err(DecodeError::InvalidRemainingLength)),
        (&[0x50, 2, 0, 1], Err(DecodeError::UnsupportedPacketType(5))),
        (&[0x00, 0], Err(DecodeError::UnsupportedPacketType(0))),
        (&[0x41, 2, 0, 1], Err(DecodeError::InvalidFlags { packet_type: 4, flags: 1 })),
        (&[0x80, 6, 0, 1, 0, 1, b'a', 0], Err(DecodeError::InvalidFlags { packet_type: 8, flags: 0 })),
        (&[0x38, 3, 0, 1, b'a'], Err(DecodeError::InvalidFlags { packet_type: 3, flags: 8 })),
        (&[0x36, 5, 0, 1, b'a', 0, 1], Err(DecodeError::InvalidQos)),
        (&[0x34, 5, 0, 1, b'a', 0, 1], Err(DecodeError::UnsupportedQos)),
        (&[0x32, 5, 0, 1, b'a', 0, 0], Err(DecodeError::ZeroPacketId)),
        (&[0x30, 3, 0, 1, b'+'], Err(DecodeError::InvalidTopic)),
        (&[0x30, 2, 0, 0], Err(DecodeError::InvalidTopic)),
        (&[0x30, 4, 0, 2, 0xff, 0xfe], Err(DecodeError::InvalidString)),
        (&[0x30, 3, 0, 1, 0], Err(DecodeError::InvalidString)),
        (&[0x30, 3, 0, 5, b'a'], Err(DecodeError::Truncated)),
        (&[0x40, 3, 0, 1, 9], Err(DecodeError::TrailingBytes)),
        (&[0x20, 2, 0, 6], Err(DecodeError::InvalidReturnCode(6))),
        (&[0x20, 2, 2, 0], Err(DecodeError::InvalidFlags { packet_type: 2, flags: 2 })),
        (&[0x90, 3, 0, 9, 3], Err(DecodeError::InvalidReturnCode(3))),
        (&[0x90, 2, 0, 9], Err(DecodeError::EmptySubscription)),
        (&[0x82, 2, 0, 9], Err(DecodeError::EmptySubscription)),
        (&[0x82, 6, 0, 9, 0, 1, b'a', 4], Err(DecodeError::InvalidQos)),
        (&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'S', 4, 2, 0, 60, 0, 0], Err(DecodeError::InvalidProtocol)),
        (&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 0, 0], Err(DecodeError::InvalidProtocol)),
        (&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 3, 0, 60, 0, 0], Err(DecodeError::InvalidConnectFlags)),
        (&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x42, 0, 60, 0, 0], Err(DecodeError::InvalidConnectFlags)),
        (&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x12, 0, 60, 0, 0], Err(DecodeError::InvalidConnectFlags)),
    ];
    for (bytes, expected) in cases {
        check(bytes, *expected);
    }
}

/// A CONNECT with a will, a user name and a password, byte by byte as MQTT 3.1.1 lays it out: the
/// flags (§3.1.2.3) with User Name Flag 0x80 (§3.1.2.8) and Password Flag 0x40 (§3.1.2.9) set, and
/// the payload in its order (§3.1.3): client id, will topic, will message, user name (§3.1.3.4, a
/// UTF-8 string), password (§3.1.3.5, binary data: two length bytes, then any bytes).
#[test]
fn connect_with_credentials_has_the_specified_layout() {
    let connect = Packet::Connect(Connect {
        client_id: "d1",
        keep_alive: 30,
        clean_session: true,
        will: Some(Will {
            topic: "s",
            payload: b"off",
            qos: QoS::AtLeastOnce,
            retain: true,
        }),
        username: Some("d1"),
        password: Some(&[0x00, 0xff, b'p']),
    });
    #[rustfmt::skip]
    let wire: &[u8] = &[
        0x10, 31,                                   // CONNECT, remaining length
        0, 4, b'M', b'Q', b'T', b'T', 4,            // protocol name and level
        0b1110_1110,                                // user, password, will retain, will QoS 1, will, clean
        0, 30,                                      // keep-alive
        0, 2, b'd', b'1',                           // client id
        0, 1, b's',                                 // will topic
        0, 3, b'o', b'f', b'f',                     // will message
        0, 2, b'd', b'1',                           // user name
        0, 3, 0x00, 0xff, b'p',                     // password: not UTF-8, and need not be
    ];
    let mut buf = [0u8; 64];
    let len = connect.encode(&mut buf).unwrap();
    assert_eq!(&buf[..len], wire);
    check(wire, Ok(connect));

    // A user name alone sets only its flag and ends the payload.
    let user_only = Packet::Connect(Connect {
        client_id: "d1",
        keep_alive: 30,
        clean_session: true,
        will: None,
        username: Some("u"),
        password: None,
    });
    let len = user_only.encode(&mut buf).unwrap();
    assert_eq!(buf[9], 0b1000_0010, "flags");
    assert_eq!(&buf[len - 3..len], &[0, 1, b'u'], "user name last");
    check(&buf[..len], Ok(user_only));
}

#[test]
fn incomplete_input_asks_for_more() {
    for bytes in [&[][..], &[0x30], &[0x30, 0x80], &[0x30, 5, 0, 1, b'a']] {
        assert_eq!(decode(bytes), Ok(None), "{bytes:02x?}");
    }
}

#[test]
fn encoding_refuses_invalid_packets() {
    let publish = |qos, pkid, dup, topic| {
        Packet::Publish(Publish {
            dup,
            qos,
            retain: false,
            topic,
            pkid,
            payload: b"",
        })
    };
    let long = "x".repeat(70_000);
    let connect = Connect {
        client_id: "c",
        keep_alive: 0,
        clean_session: true,
        will: None,
        username: None,
        password: Some(b"pw"),
    };
    let cases: Vec<(Packet<'_>, usize, EncodeError)> = vec![
        (
            publish(QoS::AtLeastOnce, 0, false, "a"),
            64,
            EncodeError::InvalidPacketId,
        ),
        (
            publish(QoS::AtMostOnce, 3, false, "a"),
            64,
            EncodeError::InvalidPacketId,
        ),
        (
            publish(QoS::AtMostOnce, 0, true, "a"),
            64,
            EncodeError::InvalidPacketId,
        ),
        (
            publish(QoS::AtMostOnce, 0, false, "a/#"),
            64,
            EncodeError::InvalidTopic,
        ),
        (
            publish(QoS::AtMostOnce, 0, false, &long),
            80_000,
            EncodeError::FieldTooLong,
        ),
        (
            publish(QoS::AtMostOnce, 0, false, "abc"),
            6,
            EncodeError::BufferTooSmall { needed: 7 },
        ),
        (Packet::Puback(0), 64, EncodeError::InvalidPacketId),
        (
            Packet::Subscribe {
                pkid: 1,
                filters: SubscribeFilters::new(&[]),
            },
            64,
            EncodeError::InvalidSubscription,
        ),
        (
            Packet::Suback {
                pkid: 1,
                codes: &[3],
            },
            64,
            EncodeError::InvalidSubscription,
        ),
        (
            Packet::Connect(connect),
            64,
            EncodeError::PasswordWithoutUser,
        ),
    ];
    for (packet, size, expected) in cases {
        let mut buf = vec![0u8; size];
        assert_eq!(packet.encode(&mut buf), Err(expected), "{packet:?}");
    }
}

/// Strings MQTT accepts: no U+0000 (the decoder rejects it by the specification).
fn mqtt_string(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>().prop_filter("no NUL", |c| *c != '\0'), 0..max)
        .prop_map(|chars| chars.into_iter().collect())
}

fn topic_name() -> impl Strategy<Value = String> {
    mqtt_string(40).prop_filter("valid topic name", |t| {
        !t.is_empty() && !t.contains(['+', '#'])
    })
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce)]
}

/// Encodes `packet`, checks that decoding gives it back using all bytes, and that every strict prefix
/// is incomplete.
fn round_trip(packet: Packet<'_>) {
    let mut buf = vec![0u8; 200_000];
    let len = packet.encode(&mut buf).expect("valid packet encodes");
    assert_eq!(decode(&buf[..len]), Ok(Some((packet, len))));
    for cut in 0..len {
        assert_eq!(decode(&buf[..cut]), Ok(None), "prefix of {cut} bytes");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, rng_seed: proptest::test_runner::RngSeed::Fixed(7), ..ProptestConfig::default() })]

    #[test]
    fn publish_round_trips(
        topic in topic_name(), payload in proptest::collection::vec(any::<u8>(), 0..300),
        qos in qos(), pkid in 1u16.., dup: bool, retain: bool,
    ) {
        let (pkid, dup) = if qos == QoS::AtMostOnce { (0, false) } else { (pkid, dup) };
        round_trip(Packet::Publish(Publish { dup, qos, retain, topic: &topic, pkid, payload: &payload }));
    }

    #[test]
    fn connect_round_trips(
        client_id in mqtt_string(30), keep_alive: u16, clean_session: bool,
        will in proptest::option::of((topic_name(), proptest::collection::vec(any::<u8>(), 0..50), qos(), any::<bool>())),
        username in proptest::option::of(mqtt_string(20)),
        password in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
    ) {
        let will = will.as_ref().map(|(topic, payload, qos, retain)| Will { topic, payload, qos: *qos, retain: *retain });
        let password = password.as_deref().filter(|_| username.is_some());
        round_trip(Packet::Connect(Connect {
            client_id: &client_id, keep_alive, clean_session, will, username: username.as_deref(), password,
        }));
    }

    #[test]
    fn subscribe_round_trips(pkid in 1u16.., entries in proptest::collection::vec((mqtt_string(30), qos()), 1..8)) {
        let filters: Vec<Filter<'_>> = entries.iter().map(|(topic, qos)| Filter { topic, qos: *qos }).collect();
        round_trip(Packet::Subscribe { pkid, filters: SubscribeFilters::new(&filters) });
    }

    #[test]
    fn acks_round_trip(
        pkid in 1u16.., session_present: bool,
        code in proptest::sample::select(vec![
            ConnectReturnCode::Accepted, ConnectReturnCode::UnacceptableProtocolVersion,
            ConnectReturnCode::IdentifierRejected, ConnectReturnCode::ServerUnavailable,
            ConnectReturnCode::BadUserNameOrPassword, ConnectReturnCode::NotAuthorized,
        ]),
        codes in proptest::collection::vec(prop_oneof![Just(0u8), Just(1), Just(2), Just(0x80)], 1..8),
    ) {
        round_trip(Packet::Connack { session_present, code });
        round_trip(Packet::Puback(pkid));
        round_trip(Packet::Suback { pkid, codes: &codes });
        round_trip(Packet::Pingreq);
        round_trip(Packet::Pingresp);
        round_trip(Packet::Disconnect);
    }

    /// Arbitrary bytes never panic the decoder, and whatever decodes re-encodes to the same bytes.
    #[test]
    fn arbitrary_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(Some((packet, used))) = decode(&bytes) {
            let mut buf = [0u8; 128];
            let len = packet.encode(&mut buf).expect("decoded packet re-encodes");
            prop_assert_eq!(&buf[..len], &bytes[..used]);
        }
    }
}
