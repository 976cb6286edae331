//! MQTT framing for one connection: which protocol version it speaks, and packets to and from bytes.
//!
//! rumqttd ships one codec per MQTT version and, in its own server, one port per version. Grove
//! serves both versions on one port, as mosquitto does and as stock clients expect: [`sniff`] reads
//! the protocol level from the first bytes of CONNECT and the connection then keeps that codec.
//! The decoding itself is rumqttd's (`rumqttd::protocol::{v4, v5}`); this module only chooses and
//! adapts (MQTT 3.1.1 has no properties, so they are dropped on the way out to a 3.1.1 client).

use bytes::BytesMut;
use rumqttd::protocol::{self, v4::V4, v5::V5, Packet, Protocol};

/// The MQTT version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5 (protocol level 5).
    V5,
}

/// What the first bytes of a connection say.
#[derive(Debug, PartialEq, Eq)]
pub enum Sniff {
    /// Not enough bytes yet; at least this many more are needed.
    NeedMore(usize),
    /// A CONNECT for a supported version.
    Version(Version),
    /// A CONNECT for a protocol level Grove does not speak (e.g. 3 for MQTT 3.1); a 3.1.1 CONNACK
    /// with "unacceptable protocol version" is the right answer.
    UnsupportedLevel(u8),
    /// Not an MQTT CONNECT at all.
    NotMqtt,
    /// A malformed CONNECT, refused as soon as its first bytes show it (MQTT 5 §4.13, 3.1.1
    /// §4.8): `version` when the protocol level was read (an MQTT 5 client then gets CONNACK
    /// 0x81 Malformed Packet before the close).
    Malformed {
        /// The version the CONNECT asked for, if it got that far.
        version: Option<Version>,
        /// What is wrong with it.
        detail: &'static str,
    },
}

/// The shortest remaining length of a CONNECT after its protocol name: level, connect flags,
/// keep alive, and the length of the client id (MQTT 3.1.1 §3.1.2, 5.0 §3.1.2).
const CONNECT_MIN_AFTER_NAME: usize = 1 + 1 + 2 + 2;

/// Reads the protocol level from the start of a CONNECT packet.
///
/// Layout (MQTT 3.1.1 §3.1, MQTT 5 §3.1): fixed header byte 0x10, remaining length (1 to 4 bytes),
/// protocol name as a length-prefixed string ("MQTT"; "MQIsdp" for 3.1), the level byte, then the
/// connect flags.
///
/// A CONNECT whose remaining length cannot hold that much (an empty CONNECT, `10 00`) is
/// malformed at once rather than held until `connect_timeout_ms` for bytes that could not make
/// it valid; a CONNECT with the reserved connect flag set is malformed (3.1.1 [MQTT-3.1.2-3],
/// 5.0 §3.1.2.3). rumqttd's readers check neither.
pub fn sniff(bytes: &[u8]) -> Sniff {
    let Some(&first) = bytes.first() else {
        return Sniff::NeedMore(1);
    };
    if first != 0x10 {
        return Sniff::NotMqtt;
    }
    // The variable-length remaining-length field (§2.2.3).
    let mut i = 1;
    let mut remaining = 0usize;
    loop {
        match bytes.get(i) {
            None => return Sniff::NeedMore(1),
            Some(b) => {
                remaining |= usize::from(b & 0x7f) << (7 * (i - 1));
                if b & 0x80 == 0 {
                    break;
                }
                if i == 4 {
                    return Sniff::NotMqtt;
                }
                i += 1;
            }
        }
    }
    let name_at = i + 1;
    let too_short = |version| Sniff::Malformed {
        version,
        detail: "a CONNECT too short to be one",
    };
    if remaining < 2 {
        return too_short(None);
    }
    let Some(len) = bytes.get(name_at..name_at + 2) else {
        return Sniff::NeedMore(name_at + 2 - bytes.len());
    };
    let name_len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    let level_at = name_at + 2 + name_len;
    if name_len > 6 {
        return Sniff::NotMqtt;
    }
    let Some(&level) = bytes.get(level_at) else {
        return Sniff::NeedMore(level_at + 1 - bytes.len());
    };
    let version = match (&bytes[name_at + 2..level_at], level) {
        (b"MQTT", 4) => Version::V311,
        (b"MQTT", 5) => Version::V5,
        (b"MQTT" | b"MQIsdp", level) => return Sniff::UnsupportedLevel(level),
        _ => return Sniff::NotMqtt,
    };
    if remaining < 2 + name_len + CONNECT_MIN_AFTER_NAME {
        return too_short(Some(version));
    }
    match bytes.get(level_at + 1) {
        Some(flags) if flags & 1 != 0 => Sniff::Malformed {
            version: Some(version),
            detail: "the reserved connect flag is set",
        },
        _ => Sniff::Version(version),
    }
}

/// Whether the flags of a fixed header (its first byte's low four bits) are what MQTT fixes for
/// its packet type (3.1.1 §2.2.2 Table 2.2, 5.0 §2.1.3 Table 2-2): 0b0010 for PUBREL, SUBSCRIBE
/// and UNSUBSCRIBE, 0 for the other packets without flags of their own. Anything else is a
/// malformed packet: the connection is closed (3.1.1 [MQTT-2.2.2-2]; 5.0 [MQTT-2.1.3-1] and
/// §4.13, DISCONNECT 0x81). PUBLISH has flags of its own (its QoS 3 is rumqttd's to refuse).
/// rumqttd's readers do not look at these flags.
fn fixed_flags_valid(first: u8) -> bool {
    match (first >> 4, first & 0x0f) {
        (3, _) => true,
        (6 | 8 | 10, flags) => flags == 0b0010,
        (_, flags) => flags == 0,
    }
}

/// rumqttd's codec for the version a connection speaks.
#[derive(Debug, Clone)]
pub enum Codec {
    /// MQTT 3.1.1.
    V311(V4),
    /// MQTT 5.
    V5(V5),
}

impl Codec {
    /// The codec for `version`.
    pub fn new(version: Version) -> Codec {
        match version {
            Version::V311 => Codec::V311(V4),
            Version::V5 => Codec::V5(V5),
        }
    }

    /// The version this codec speaks.
    pub fn version(&self) -> Version {
        match self {
            Codec::V311(_) => Version::V311,
            Codec::V5(_) => Version::V5,
        }
    }

    /// Takes one whole packet off the front of `buf`; `InsufficientBytes` when it is not all there.
    /// A packet whose remaining length exceeds `max_len` is refused before it is read.
    /// A packet whose fixed-header flags are not the ones MQTT fixes for its type is
    /// `MalformedPacket` ([`fixed_flags_valid`]).
    pub fn read(&mut self, buf: &mut BytesMut, max_len: usize) -> Result<Packet, protocol::Error> {
        if buf.first().is_some_and(|&b| !fixed_flags_valid(b)) {
            return Err(protocol::Error::MalformedPacket);
        }
        match self {
            Codec::V311(p) => p.read_mut(buf, max_len),
            Codec::V5(p) => match v5_unreadable(buf) {
                Some(kind) => Err(protocol::Error::InvalidPacketType(kind)),
                None => p.read_mut(buf, max_len),
            },
        }
    }

    /// Appends one packet to `out`.
    pub fn write(&self, packet: Packet, out: &mut BytesMut) -> Result<usize, protocol::Error> {
        match self {
            Codec::V311(p) => p.write(strip_properties(packet), out),
            Codec::V5(p) => p.write(v5_disconnect_fix(packet), out),
        }
    }
}

/// The packet type at the front of `buf` if rumqttd's MQTT 5 reader cannot read it: it has no arm
/// for CONNACK, UNSUBACK, or a PINGREQ / PINGRESP with a body, and panics (`unreachable!`, found
/// by the `connect` fuzz target), which would end the connection's task without its cleanup. No
/// client may send those, so they are refused before the reader sees them (a zero remaining length
/// must be the single byte 0: MQTT 5 §1.5.5 asks for the shortest encoding).
fn v5_unreadable(buf: &[u8]) -> Option<u8> {
    let kind = buf.first()? >> 4;
    match (kind, buf.get(1)) {
        (2 | 11, _) => Some(kind),
        (12 | 13, Some(&len)) if len != 0 => Some(kind),
        _ => None,
    }
}

/// rumqttd's MQTT 5 DISCONNECT writer cannot write a reason code other than 0 without
/// properties: with none it writes a remaining length of 1 and then the reason code and a
/// properties length byte, one byte past the packet (a client reads it as the start of a packet
/// of the reserved type 0, and rumqttc's reader, which wants the properties length inside the
/// packet, drops the DISCONNECT); with empty ones it writes `E0 00`, a normal disconnection. So a
/// DISCONNECT with a reason carries a Reason String (MQTT 5 §3.14.2.2.3), the reason's name,
/// which the writer counts right.
fn v5_disconnect_fix(packet: Packet) -> Packet {
    match packet {
        Packet::Disconnect(d, None)
            if d.reason_code != protocol::DisconnectReasonCode::NormalDisconnection =>
        {
            let properties = protocol::DisconnectProperties {
                session_expiry_interval: None,
                reason_string: Some(format!("{:?}", d.reason_code)),
                user_properties: Vec::new(),
                server_reference: None,
            };
            Packet::Disconnect(d, Some(properties))
        }
        other => other,
    }
}

/// MQTT 3.1.1 has no properties; rumqttd's 3.1.1 writer refuses packets that carry them (for
/// instance a message published by an MQTT 5 client), so they are dropped here.
fn strip_properties(packet: Packet) -> Packet {
    match packet {
        Packet::Publish(p, _) => Packet::Publish(p, None),
        Packet::ConnAck(a, _) => Packet::ConnAck(a, None),
        Packet::PubAck(a, _) => Packet::PubAck(a, None),
        Packet::SubAck(a, _) => Packet::SubAck(a, None),
        Packet::UnsubAck(a, _) => Packet::UnsubAck(a, None),
        Packet::PubRec(a, _) => Packet::PubRec(a, None),
        Packet::PubRel(a, _) => Packet::PubRel(a, None),
        Packet::PubComp(a, _) => Packet::PubComp(a, None),
        Packet::Disconnect(d, _) => Packet::Disconnect(d, None),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CONNECT prefix with the given protocol name and level.
    fn connect(name: &[u8], level: u8) -> Vec<u8> {
        let mut v = vec![0x10, 0x20, 0x00, name.len() as u8];
        v.extend_from_slice(name);
        v.push(level);
        v
    }

    #[test]
    fn sniff_cases() {
        let long_len = {
            let mut v = vec![0x10, 0x80, 0x80, 0x01, 0x00, 0x04];
            v.extend_from_slice(b"MQTT\x05");
            v
        };
        let cases: Vec<(Vec<u8>, Sniff)> = vec![
            (vec![], Sniff::NeedMore(1)),
            (vec![0x30], Sniff::NotMqtt),
            (b"GET / HTTP/1.1".to_vec(), Sniff::NotMqtt),
            (vec![0x10], Sniff::NeedMore(1)),
            (vec![0x10, 0x20], Sniff::NeedMore(2)),
            (vec![0x10, 0x20, 0x00, 0x04, b'M'], Sniff::NeedMore(4)),
            (connect(b"MQTT", 4), Sniff::Version(Version::V311)),
            (connect(b"MQTT", 5), Sniff::Version(Version::V5)),
            (connect(b"MQIsdp", 3), Sniff::UnsupportedLevel(3)),
            (connect(b"MQTT", 9), Sniff::UnsupportedLevel(9)),
            (connect(b"XXXX", 4), Sniff::NotMqtt),
            (long_len, Sniff::Version(Version::V5)),
            (vec![0x10, 0x80, 0x80, 0x80, 0x80, 0x01], Sniff::NotMqtt),
            (vec![0x10, 0x20, 0x00, 0x40], Sniff::NotMqtt),
            (
                vec![0x10, 0x00],
                Sniff::Malformed {
                    version: None,
                    detail: "a CONNECT too short to be one",
                },
            ),
            (
                {
                    let mut v = connect(b"MQTT", 5);
                    v.push(0x03);
                    v
                },
                Sniff::Malformed {
                    version: Some(Version::V5),
                    detail: "the reserved connect flag is set",
                },
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(sniff(&bytes), want, "for {bytes:02x?}");
        }
    }

    #[test]
    fn fixed_header_flags_other_than_the_specs_are_malformed() {
        // SUBSCRIBE, UNSUBSCRIBE, PUBREL: flags 0b0010 ([MQTT-3.8.1-1], [MQTT-3.10.1-1],
        // [MQTT-3.6.1-1]); PUBACK and PINGREQ: 0.
        let cases: [(&[u8], bool); 8] = [
            (&[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00], true),
            (&[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00], false),
            (&[0xA2, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'], true),
            (&[0xA0, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'], false),
            (&[0x62, 0x02, 0x00, 0x01], true),
            (&[0x60, 0x02, 0x00, 0x01], false),
            (&[0x41, 0x02, 0x00, 0x01], false),
            (&[0xC8, 0x00], false),
        ];
        for version in [Version::V311, Version::V5] {
            for (bytes, valid) in cases {
                let read = Codec::new(version).read(&mut BytesMut::from(bytes), 1024);
                assert_eq!(
                    !matches!(read, Err(protocol::Error::MalformedPacket)),
                    valid,
                    "{version:?} {bytes:02x?}: {read:?}"
                );
            }
        }
    }

    #[test]
    fn an_mqtt5_disconnect_with_a_reason_is_well_formed() {
        let mut out = BytesMut::new();
        let d = protocol::Disconnect {
            reason_code: protocol::DisconnectReasonCode::MalformedPacket,
        };
        Codec::new(Version::V5)
            .write(Packet::Disconnect(d, None), &mut out)
            .unwrap();
        // Remaining length 20: the reason, the properties' length (18), a Reason String (0x1F).
        assert_eq!(&out[..5], [0xE0, 20, 0x81, 18, 0x1F]);
        assert_eq!(&out[5..], b"\x00\x0fMalformedPacket");
    }

    #[test]
    fn packets_rumqttd_cannot_read_in_mqtt5_are_refused_not_panicked_on() {
        // CONNACK, UNSUBACK, PINGREQ and PINGRESP with a body: each panicked rumqttd's reader.
        for bytes in [
            &[0x20, 0x03, 0x00, 0x00, 0x00][..],
            &[0xB0, 0x03, 0x00, 0x01, 0x00],
            &[0xC0, 0x01, 0x00],
            &[0xD0, 0x01, 0x00],
        ] {
            let mut buf = BytesMut::from(bytes);
            assert!(
                matches!(
                    Codec::new(Version::V5).read(&mut buf, 1024),
                    Err(protocol::Error::InvalidPacketType(_))
                ),
                "{bytes:02x?}"
            );
        }
        let mut ping = BytesMut::from(&[0xC0, 0x00][..]);
        assert!(matches!(
            Codec::new(Version::V5).read(&mut ping, 1024),
            Ok(Packet::PingReq(_))
        ));
    }
}
