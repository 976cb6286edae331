//! MQTT 3.1.1 packet codec: zero-copy decoding from a byte slice and encoding into a caller's buffer.
//!
//! Only the packets a QoS 0/1 client exchanges are supported (CONNECT, CONNACK, PUBLISH, PUBACK,
//! SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT). Both directions of each are implemented so the
//! scripted-broker tests, the fuzz target and the property tests can round-trip every packet.
//!
//! Decoding never allocates and never panics on untrusted input: it either returns `Ok(None)` (not a
//! whole packet yet), a packet that borrows from the input together with the number of bytes it used,
//! or a [`DecodeError`] that says which rule of the specification was broken.

use core::fmt;

/// The protocol name carried in CONNECT (MQTT 3.1.1, section 3.1.2.1).
const PROTOCOL_NAME: &str = "MQTT";
/// The protocol level of MQTT 3.1.1 (section 3.1.2.2).
const PROTOCOL_LEVEL: u8 = 4;
/// The largest value the remaining-length varint can carry (section 2.2.3).
const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Quality of service of a message. QoS 2 is not supported by this client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QoS {
    /// Fire and forget.
    AtMostOnce,
    /// Acknowledged by PUBACK, retransmitted until then.
    AtLeastOnce,
}

impl QoS {
    fn bits(self) -> u8 {
        match self {
            QoS::AtMostOnce => 0,
            QoS::AtLeastOnce => 1,
        }
    }

    fn from_bits(bits: u8) -> Result<Self, DecodeError> {
        match bits {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Err(DecodeError::UnsupportedQos),
            _ => Err(DecodeError::InvalidQos),
        }
    }
}

/// Why bytes could not be decoded as an MQTT 3.1.1 packet. Cheap to copy, as decoders on the hot path
/// should return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The remaining-length varint is longer than four bytes or not minimally encoded.
    #[error("malformed remaining length")]
    InvalidRemainingLength,
    /// The control packet type is reserved or one this client does not handle (QoS 2 flow, UNSUBSCRIBE).
    #[error("unsupported packet type {0}")]
    UnsupportedPacketType(u8),
    /// The fixed-header flags are not the ones the specification mandates for this packet type.
    #[error("invalid fixed-header flags {flags:#x} for packet type {packet_type}")]
    InvalidFlags {
        /// The packet type nibble.
        packet_type: u8,
        /// The flags nibble that was received.
        flags: u8,
    },
    /// The packet body ended before a field it declares.
    #[error("packet body is truncated")]
    Truncated,
    /// The packet body is longer than its fields.
    #[error("packet body has trailing bytes")]
    TrailingBytes,
    /// A string is not UTF-8 or contains U+0000 (section 1.5.3).
    #[error("string is not valid MQTT UTF-8")]
    InvalidString,
    /// CONNECT names another protocol or protocol level.
    #[error("not an MQTT 3.1.1 CONNECT")]
    InvalidProtocol,
    /// CONNECT flags break a rule of section 3.1.2.
    #[error("invalid CONNECT flags")]
    InvalidConnectFlags,
    /// A QoS field holds 3.
    #[error("invalid QoS")]
    InvalidQos,
    /// A QoS 2 publication or subscription, which this client does not implement.
    #[error("QoS 2 is not supported")]
    UnsupportedQos,
    /// A packet identifier of zero (section 2.3.1).
    #[error("packet identifier is zero")]
    ZeroPacketId,
    /// A CONNACK or SUBACK return code outside the specification.
    #[error("invalid return code {0:#x}")]
    InvalidReturnCode(u8),
    /// A SUBSCRIBE or SUBACK without any entries (sections 3.8.3, 3.9.3).
    #[error("empty subscription list")]
    EmptySubscription,
    /// A PUBLISH topic name that is empty or contains wildcards (section 3.3.2.1).
    #[error("invalid topic name")]
    InvalidTopic,
}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The output buffer is smaller than the encoded packet.
    #[error("output buffer too small: {needed} bytes needed")]
    BufferTooSmall {
        /// The size of the whole encoded packet.
        needed: usize,
    },
    /// A string or binary field is longer than 65535 bytes.
    #[error("field longer than 65535 bytes")]
    FieldTooLong,
    /// A packet identifier of zero, or a QoS 0 PUBLISH flagged as duplicate.
    #[error("invalid packet identifier or duplicate flag")]
    InvalidPacketId,
    /// A SUBSCRIBE or SUBACK without entries, or a SUBACK code outside the specification.
    #[error("invalid subscription list")]
    InvalidSubscription,
    /// A CONNECT with a password but no user name, which MQTT 3.1.1 forbids.
    #[error("password without user name")]
    PasswordWithoutUser,
    /// A PUBLISH topic name that is empty or contains wildcards.
    #[error("invalid topic name")]
    InvalidTopic,
    /// The packet is larger than MQTT's maximum of 256 MiB.
    #[error("packet too large")]
    PacketTooLarge,
}

/// The last-will message the broker publishes when this client vanishes without DISCONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Will<'a> {
    /// The topic the will is published on.
    pub topic: &'a str,
    /// The will payload.
    pub payload: &'a [u8],
    /// The will's QoS.
    pub qos: QoS,
    /// Whether the broker retains the will.
    pub retain: bool,
}

/// The CONNECT packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connect<'a> {
    /// The client identifier; the AWS convention is the thing name.
    pub client_id: &'a str,
    /// Keep-alive interval in seconds; zero disables it.
    pub keep_alive: u16,
    /// Whether the broker discards any previous session.
    pub clean_session: bool,
    /// The optional last will.
    pub will: Option<Will<'a>>,
    /// The optional user name.
    pub username: Option<&'a str>,
    /// The optional password (requires a user name in 3.1.1).
    pub password: Option<&'a [u8]>,
}

/// The CONNACK return codes of section 3.2.2.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectReturnCode {
    /// Connection accepted.
    Accepted,
    /// The broker does not speak this protocol level.
    UnacceptableProtocolVersion,
    /// The client identifier is refused.
    IdentifierRejected,
    /// The broker is unavailable.
    ServerUnavailable,
    /// The user name or password is malformed.
    BadUserNameOrPassword,
    /// The client is not authorized.
    NotAuthorized,
}

impl ConnectReturnCode {
    fn from_byte(byte: u8) -> Result<Self, DecodeError> {
        Ok(match byte {
            0 => Self::Accepted,
            1 => Self::UnacceptableProtocolVersion,
            2 => Self::IdentifierRejected,
            3 => Self::ServerUnavailable,
            4 => Self::BadUserNameOrPassword,
            5 => Self::NotAuthorized,
            other => return Err(DecodeError::InvalidReturnCode(other)),
        })
    }

    fn byte(self) -> u8 {
        match self {
            Self::Accepted => 0,
            Self::UnacceptableProtocolVersion => 1,
            Self::IdentifierRejected => 2,
            Self::ServerUnavailable => 3,
            Self::BadUserNameOrPassword => 4,
            Self::NotAuthorized => 5,
        }
    }
}

/// The PUBLISH packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish<'a> {
    /// Set when this is a retransmission of a QoS 1 message.
    pub dup: bool,
    /// The delivery guarantee; QoS 1 carries a packet identifier.
    pub qos: QoS,
    /// Whether the broker retains the message.
    pub retain: bool,
    /// The topic name (no wildcards).
    pub topic: &'a str,
    /// The packet identifier; zero for QoS 0 and nonzero for QoS 1.
    pub pkid: u16,
    /// The application payload.
    pub payload: &'a [u8],
}

/// One entry of a SUBSCRIBE packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filter<'a> {
    /// The topic filter, possibly with wildcards.
    pub topic: &'a str,
    /// The maximum QoS requested.
    pub qos: QoS,
}

/// The topic filters of a SUBSCRIBE: a caller's list when encoding, validated wire bytes when decoded.
/// Either way they are read through [`SubscribeFilters::iter`].
#[derive(Clone, Copy)]
pub struct SubscribeFilters<'a>(FiltersRepr<'a>);

#[derive(Clone, Copy)]
enum FiltersRepr<'a> {
    List(&'a [Filter<'a>]),
    Wire(&'a [u8]),
}

impl<'a> SubscribeFilters<'a> {
    /// Wraps a list of filters for encoding.
    pub fn new(list: &'a [Filter<'a>]) -> Self {
        Self(FiltersRepr::List(list))
    }

    /// Iterates over the filters in order.
    pub fn iter(&self) -> impl Iterator<Item = Filter<'a>> + 'a {
        let (list, wire) = match self.0 {
            FiltersRepr::List(list) => (list, &[][..]),
            FiltersRepr::Wire(wire) => (&[][..], wire),
        };
        let mut reader = Reader::new(wire);
        list.iter().copied().chain(core::iter::from_fn(move || {
            // The wire form was validated when it was decoded, so a failure here only means the end.
            if reader.is_empty() {
                return None;
            }
            let topic = reader.string().ok()?;
            let qos = QoS::from_bits(reader.u8().ok()?).ok()?;
            Some(Filter { topic, qos })
        }))
    }
}

impl PartialEq for SubscribeFilters<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for SubscribeFilters<'_> {}

impl fmt::Debug for SubscribeFilters<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A SUBACK return code (section 3.9.3).
pub const SUBACK_FAILURE: u8 = 0x80;

/// An MQTT 3.1.1 control packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Client to broker: open a session.
    Connect(Connect<'a>),
    /// Broker to client: session accepted or refused.
    Connack {
        /// Whether the broker resumed a stored session.
        session_present: bool,
        /// The broker's verdict.
        code: ConnectReturnCode,
    },
    /// Either direction: an application message.
    Publish(Publish<'a>),
    /// Either direction: acknowledges a QoS 1 PUBLISH.
    Puback(u16),
    /// Client to broker: subscribe to filters.
    Subscribe {
        /// The packet identifier the SUBACK echoes.
        pkid: u16,
        /// The requested filters.
        filters: SubscribeFilters<'a>,
    },
    /// Broker to client: per-filter granted QoS or [`SUBACK_FAILURE`].
    Suback {
        /// The SUBSCRIBE's packet identifier.
        pkid: u16,
        /// One return code per filter.
        codes: &'a [u8],
    },
    /// Client to broker: keep-alive probe.
    Pingreq,
    /// Broker to client: keep-alive answer.
    Pingresp,
    /// Client to broker: orderly close (the will is discarded).
    Disconnect,
}

/// Decodes one packet from the start of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole packet, or the packet and the number of bytes
/// it occupied.
pub fn decode(buf: &[u8]) -> Result<Option<(Packet<'_>, usize)>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut remaining = 0usize;
    let mut header_len = 1;
    loop {
        let Some(&byte) = buf.get(header_len) else {
            // A varint that is already too long is an error even before more bytes arrive.
            return if header_len > 4 {
                Err(DecodeError::InvalidRemainingLength)
            } else {
                Ok(None)
            };
        };
        // More than four bytes, or a zero after a continuation byte (a non-minimal encoding, which
        // would make two byte strings mean the same packet), are both malformed.
        if header_len > 4 || (header_len > 1 && byte == 0) {
            return Err(DecodeError::InvalidRemainingLength);
        }
        remaining |= usize::from(byte & 0x7f) << (7 * (header_len - 1));
        header_len += 1;
        if byte & 0x80 == 0 {
            break;
        }
    }
    let total = header_len + remaining;
    let Some(body) = buf.get(header_len..total) else {
        return Ok(None);
    };
    let packet = decode_body(first >> 4, first & 0x0f, body)?;
    Ok(Some((packet, total)))
}

fn decode_body(packet_type: u8, flags: u8, body: &[u8]) -> Result<Packet<'_>, DecodeError> {
    let mut r = Reader::new(body);
    let expect_flags = |expected: u8| {
        if flags == expected {
            Ok(())
        } else {
            Err(DecodeError::InvalidFlags { packet_type, flags })
        }
    };
    let packet = match packet_type {
        1 => {
            expect_flags(0)?;
            Packet::Connect(decode_connect(&mut r)?)
        }
        2 => {
            expect_flags(0)?;
            let ack_flags = r.u8()?;
            if ack_flags & 0xfe != 0 {
                return Err(DecodeError::InvalidFlags {
                    packet_type,
                    flags: ack_flags,
                });
            }
            Packet::Connack {
                session_present: ack_flags & 1 == 1,
                code: ConnectReturnCode::from_byte(r.u8()?)?,
            }
        }
        3 => {
            let qos = QoS::from_bits((flags >> 1) & 0b11)?;
            let dup = flags & 0b1000 != 0;
            let topic = r.string()?;
            if topic.is_empty() || topic.contains(['+', '#']) {
                return Err(DecodeError::InvalidTopic);
            }
            let pkid = match qos {
                QoS::AtMostOnce if dup => {
                    return Err(DecodeError::InvalidFlags { packet_type, flags })
                }
                QoS::AtMostOnce => 0,
                QoS::AtLeastOnce => r.pkid()?,
            };
            Packet::Publish(Publish {
                dup,
                qos,
                retain: flags & 1 == 1,
                topic,
                pkid,
                payload: r.rest(),
            })
        }
        4 => {
            expect_flags(0)?;
            Packet::Puback(r.pkid()?)
        }
        8 => {
            expect_flags(0b0010)?;
            let pkid = r.pkid()?;
            let wire = r.rest();
            let mut check = Reader::new(wire);
            if check.is_empty() {
                return Err(DecodeError::EmptySubscription);
            }
            while !check.is_empty() {
                check.string()?;
                let options = check.u8()?;
                if options & 0xfc != 0 {
                    return Err(DecodeError::InvalidQos);
                }
                QoS::from_bits(options)?;
            }
            Packet::Subscribe {
                pkid,
                filters: SubscribeFilters(FiltersRepr::Wire(wire)),
            }
        }
        9 => {
            expect_flags(0)?;
            let pkid = r.pkid()?;
            let codes = r.rest();
            if codes.is_empty() {
                return Err(DecodeError::EmptySubscription);
            }
            if let Some(&bad) = codes.iter().find(|&&c| !valid_suback_code(c)) {
                return Err(DecodeError::InvalidReturnCode(bad));
            }
            Packet::Suback { pkid, codes }
        }
        12 => {
            expect_flags(0)?;
            Packet::Pingreq
        }
        13 => {
            expect_flags(0)?;
            Packet::Pingresp
        }
        14 => {
            expect_flags(0)?;
            Packet::Disconnect
        }
        other => return Err(DecodeError::UnsupportedPacketType(other)),
    };
    if r.is_empty() {
        Ok(packet)
    } else {
        Err(DecodeError::TrailingBytes)
    }
}

fn decode_connect<'a>(r: &mut Reader<'a>) -> Result<Connect<'a>, DecodeError> {
    if r.string()? != PROTOCOL_NAME || r.u8()? != PROTOCOL_LEVEL {
        return Err(DecodeError::InvalidProtocol);
    }
    let flags = r.u8()?;
    let has_will = flags & 0b0000_0100 != 0;
    let will_bits = flags & 0b0011_1000;
    let has_user = flags & 0b1000_0000 != 0;
    let has_password = flags & 0b0100_0000 != 0;
    // Reserved bit set, will QoS/retain without a will, or a password without a user name are all
    // protocol violations (sections 3.1.2.3 to 3.1.2.9).
    if flags & 1 != 0 || (!has_will && will_bits != 0) || (has_password && !has_user) {
        return Err(DecodeError::InvalidConnectFlags);
    }
    let keep_alive = r.u16()?;
    let client_id = r.string()?;
    let will = if has_will {
        let topic = r.string()?;
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: QoS::from_bits((flags >> 3) & 0b11)?,
            retain: flags & 0b0010_0000 != 0,
        })
    } else {
        None
    };
    let username = if has_user { Some(r.string()?) } else { None };
    let password = if has_password {
        Some(r.binary()?)
    } else {
        None
    };
    Ok(Connect {
        client_id,
        keep_alive,
        clean_session: flags & 0b10 != 0,
        will,
        username,
        password,
    })
}

fn valid_suback_code(code: u8) -> bool {
    matches!(code, 0 | 1 | 2 | SUBACK_FAILURE)
}

impl Packet<'_> {
    /// Encodes the packet into `buf` and returns the number of bytes written.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let body_len = self.body_len()?;
        if body_len > MAX_REMAINING_LENGTH {
            return Err(EncodeError::PacketTooLarge);
        }
        let needed = 1 + varint_len(body_len) + body_len;
        if buf.len() < needed {
            return Err(EncodeError::BufferTooSmall { needed });
        }
        let mut w = Writer { buf, pos: 0 };
        w.u8(self.first_byte());
        let mut value = body_len;
        loop {
            let mut byte = (value % 128) as u8;
            value /= 128;
            if value > 0 {
                byte |= 0x80;
            }
            w.u8(byte);
            if value == 0 {
                break;
            }
        }
        self.write_body(&mut w);
        debug_assert_eq!(w.pos, needed);
        Ok(w.pos)
    }

    fn first_byte(&self) -> u8 {
        match self {
            Packet::Connect(_) => 0x10,
            Packet::Connack { .. } => 0x20,
            Packet::Publish(p) => {
                0x30 | (u8::from(p.dup) << 3) | (p.qos.bits() << 1) | u8::from(p.retain)
            }
            Packet::Puback(_) => 0x40,
            Packet::Subscribe { .. } => 0x82,
            Packet::Suback { .. } => 0x90,
            Packet::Pingreq => 0xc0,
            Packet::Pingresp => 0xd0,
            Packet::Disconnect => 0xe0,
        }
    }

    /// Computes the remaining length while checking every field against the encoding rules, so that
    /// writing afterwards cannot fail half way.
    fn body_len(&self) -> Result<usize, EncodeError> {
        Ok(match self {
            Packet::Connect(c) => {
                let mut len = field(PROTOCOL_NAME.len())? + 1 + 1 + 2 + field(c.client_id.len())?;
                if let Some(will) = &c.will {
                    len += field(will.topic.len())? + field(will.payload.len())?;
                }
                if let Some(user) = c.username {
                    len += field(user.len())?;
                }
                match c.password {
                    Some(_) if c.username.is_none() => {
                        return Err(EncodeError::PasswordWithoutUser)
                    }
                    Some(password) => len += field(password.len())?,
                    None => {}
                }
                len
            }
            Packet::Connack { .. } => 2,
            Packet::Publish(p) => {
                let id_len = match p.qos {
                    QoS::AtMostOnce if p.dup || p.pkid != 0 => {
                        return Err(EncodeError::InvalidPacketId)
                    }
                    QoS::AtMostOnce => 0,
                    QoS::AtLeastOnce if p.pkid == 0 => return Err(EncodeError::InvalidPacketId),
                    QoS::AtLeastOnce => 2,
                };
                if p.topic.is_empty() || p.topic.contains(['+', '#']) {
                    return Err(EncodeError::InvalidTopic);
                }
                field(p.topic.len())? + id_len + p.payload.len()
            }
            Packet::Puback(pkid) => {
                nonzero(*pkid)?;
                2
            }
            Packet::Subscribe { pkid, filters } => {
                nonzero(*pkid)?;
                let mut len = 2;
                let mut count = 0;
                for filter in filters.iter() {
                    len += field(filter.topic.len())? + 1;
                    count += 1;
                }
                if count == 0 {
                    return Err(EncodeError::InvalidSubscription);
                }
                len
            }
            Packet::Suback { pkid, codes } => {
                nonzero(*pkid)?;
                if codes.is_empty() || !codes.iter().all(|&c| valid_suback_code(c)) {
                    return Err(EncodeError::InvalidSubscription);
                }
                2 + codes.len()
            }
            Packet::Pingreq | Packet::Pingresp | Packet::Disconnect => 0,
        })
    }

    fn write_body(&self, w: &mut Writer<'_>) {
        match self {
            Packet::Connect(c) => {
                w.string(PROTOCOL_NAME);
                w.u8(PROTOCOL_LEVEL);
                let mut flags = u8::from(c.clean_session) << 1;
                if let Some(will) = &c.will {
                    flags |= 0b100 | (will.qos.bits() << 3) | (u8::from(will.retain) << 5);
                }
                flags |= u8::from(c.password.is_some()) << 6 | u8::from(c.username.is_some()) << 7;
                w.u8(flags);
                w.u16(c.keep_alive);
                w.string(c.client_id);
                if let Some(will) = &c.will {
                    w.string(will.topic);
                    w.binary(will.payload);
                }
                if let Some(user) = c.username {
                    w.string(user);
                }
                if let Some(password) = c.password {
                    w.binary(password);
                }
            }
            Packet::Connack {
                session_present,
                code,
            } => {
                w.u8(u8::from(*session_present));
                w.u8(code.byte());
            }
            Packet::Publish(p) => {
                w.string(p.topic);
                if p.qos == QoS::AtLeastOnce {
                    w.u16(p.pkid);
                }
                w.bytes(p.payload);
            }
            Packet::Puback(pkid) => w.u16(*pkid),
            Packet::Subscribe { pkid, filters } => {
                w.u16(*pkid);
                for filter in filters.iter() {
                    w.string(filter.topic);
                    w.u8(filter.qos.bits());
                }
            }
            Packet::Suback { pkid, codes } => {
                w.u16(*pkid);
                w.bytes(codes);
            }
            Packet::Pingreq | Packet::Pingresp | Packet::Disconnect => {}
        }
    }
}

/// The encoded size of a length-prefixed field, or an error past 65535 bytes.
fn field(len: usize) -> Result<usize, EncodeError> {
    if len > usize::from(u16::MAX) {
        Err(EncodeError::FieldTooLong)
    } else {
        Ok(2 + len)
    }
}

fn nonzero(pkid: u16) -> Result<(), EncodeError> {
    if pkid == 0 {
        Err(EncodeError::InvalidPacketId)
    } else {
        Ok(())
    }
}

fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// A cursor over a packet body; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn pkid(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(DecodeError::ZeroPacketId),
            pkid => Ok(pkid),
        }
    }

    fn binary(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    fn string(&mut self) -> Result<&'a str, DecodeError> {
        let bytes = self.binary()?;
        match core::str::from_utf8(bytes) {
            Ok(s) if !s.contains('\0') => Ok(s),
            _ => Err(DecodeError::InvalidString),
        }
    }

    fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.buf)
    }
}

/// A cursor over an output buffer whose size was checked up front by [`Packet::encode`].
struct Writer<'b> {
    buf: &'b mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, bytes: &[u8]) {
        self.buf[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
    }

    fn u8(&mut self, byte: u8) {
        self.bytes(&[byte]);
    }

    fn u16(&mut self, value: u16) {
        self.bytes(&value.to_be_bytes());
    }

    fn binary(&mut self, bytes: &[u8]) {
        // `body_len` already rejected fields longer than u16::MAX.
        self.u16(bytes.len() as u16);
        self.bytes(bytes);
    }

    fn string(&mut self, s: &str) {
        self.binary(s.as_bytes());
    }
}
