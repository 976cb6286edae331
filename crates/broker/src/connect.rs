//! The CONNECT phase's decisions, as a pure function of the bytes an unauthenticated peer sent.
//!
//! Everything the gateway decides before it spends anything on a peer (an argon2 check, a
//! certificate lookup, a router link) is here, with no socket, no clock and no shared state:
//! which MQTT version the peer speaks ([`sniff`]), whether its CONNECT fits the pre-authentication
//! size limit, whether it decodes, and whether it is acceptable before anyone knows who sent it
//! (client id, the shape of its login, its will topic). The connection layer (`connection.rs`)
//! only reads bytes and acts on the [`Step`] this returns; the fuzz target
//! `gateway/fuzz/fuzz_targets/connect.rs` feeds it arbitrary bytes.
//!
//! Memory: [`read_connect`] never asks for more bytes than the limit allows ([`Step::NeedMore`]
//! carries the room left), so an unfinished CONNECT costs at most `max_size` plus a fixed header,
//! however large the length it announces.

use bytes::BytesMut;
use rumqttd::protocol::{
    self, Connect, ConnectProperties, ConnectReturnCode, LastWill, LastWillProperties, Login,
    Packet,
};

use super::codec::{sniff, Codec, Sniff, Version};
use super::namespace;

/// Client ids of the gateway's components (its buses) start with this; a device may not use it
/// (its CONNECT is refused), so no device can take over a component's session.
pub const COMPONENT_ID_PREFIX: &str = "$grove/";

/// The longest MQTT fixed header: one type byte and a remaining length of up to four bytes.
pub const MAX_FIXED_HEADER: usize = 5;

/// What a listener requires of a CONNECT before authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectRules {
    /// Largest remaining length (the CONNECT after its fixed header, will payload included).
    pub max_size: usize,
    /// What the login must look like.
    pub login: LoginRule,
}

/// What the login of a CONNECT must look like before it is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginRule {
    /// Whatever is there is ignored (anonymous and certificate listeners).
    Ignored,
    /// A username and password, the username being the client id (password listeners): anything
    /// else is refused without costing a password check.
    UsernameIsClientId,
}

/// What to do next with a connection in its CONNECT phase.
#[derive(Debug)]
pub enum Step {
    /// The CONNECT is not all there: read at most `room` more bytes (at least one) and call again.
    NeedMore {
        /// The most that may be read before the limit is reached.
        room: usize,
    },
    /// A CONNECT that may go on to authentication; it has been taken off the buffer.
    Connect(Box<Hello>),
    /// The connection is refused.
    Refuse(Refusal),
}

/// An acceptable CONNECT, decoded.
#[derive(Debug)]
pub struct Hello {
    /// The protocol version, which the connection keeps.
    pub version: Version,
    /// Keep-alive, client id (empty: the gateway assigns one) and clean-session flag.
    pub connect: Connect,
    /// MQTT 5 properties.
    pub properties: Option<ConnectProperties>,
    /// The will, whose topic is a valid topic name.
    pub will: Option<LastWill>,
    /// MQTT 5 will properties.
    pub will_properties: Option<LastWillProperties>,
    /// Username and password; present, with the username being the client id, on a password
    /// listener.
    pub login: Option<Login>,
}

/// A refused connection: what to count, what to log, and what to answer.
#[derive(Debug)]
pub struct Refusal {
    /// The label of `grove_broker_refused_total`.
    pub reason: &'static str,
    /// What to log.
    pub detail: String,
    /// An authentication or authorization failure: logged as a warning.
    pub security: bool,
    /// The CONNACK to send before closing, if the protocol has one for this case.
    pub answer: Option<Answer>,
}

/// A refusing CONNACK: its return code, in the codec of `version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The version to encode the CONNACK in.
    pub version: Version,
    /// The return (MQTT 3.1.1) or reason (MQTT 5) code.
    pub code: ConnectReturnCode,
}

impl Refusal {
    /// A refusal without a CONNACK.
    pub fn new(reason: &'static str, detail: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            detail: detail.into(),
            security: false,
            answer: None,
        }
    }

    /// An authentication or authorization failure (logged as a warning).
    pub fn security(reason: &'static str, detail: impl Into<String>) -> Refusal {
        Refusal {
            security: true,
            ..Refusal::new(reason, detail)
        }
    }

    /// Answers with a CONNACK carrying `v311` to an MQTT 3.1.1 client, `v5` to an MQTT 5 one.
    pub fn answer(
        self,
        version: Version,
        v311: ConnectReturnCode,
        v5: ConnectReturnCode,
    ) -> Refusal {
        let code = match version {
            Version::V311 => v311,
            Version::V5 => v5,
        };
        Refusal {
            answer: Some(Answer { version, code }),
            ..self
        }
    }
}

/// Decides on the bytes received so far from a new connection; on [`Step::Connect`] the CONNECT
/// has been taken off `buf`, and what follows it (the first packets, if the client did not wait
/// for CONNACK) stays there.
pub fn read_connect(buf: &mut BytesMut, rules: &ConnectRules) -> Step {
    let need_more = |buf: &BytesMut| Step::NeedMore {
        // Never zero: when the buffer holds the largest allowed frame, the frame is complete.
        room: (rules.max_size + MAX_FIXED_HEADER)
            .saturating_sub(buf.len())
            .max(1),
    };
    let version = match sniff(buf) {
        Sniff::Version(v) => v,
        Sniff::NeedMore(_) => return need_more(buf),
        Sniff::NotMqtt => return Step::Refuse(Refusal::new("protocol", "not an MQTT CONNECT")),
        Sniff::Malformed { version, detail } => return Step::Refuse(malformed(version, detail)),
        Sniff::UnsupportedLevel(level) => {
            // Whatever the level asked for, the answer is in 3.1.1, the oldest Grove speaks.
            return Step::Refuse(
                Refusal::new("protocol", format!("unsupported protocol level {level}")).answer(
                    Version::V311,
                    ConnectReturnCode::RefusedProtocolVersion,
                    ConnectReturnCode::RefusedProtocolVersion,
                ),
            );
        }
    };
    let packet = match Codec::new(version).read(buf, rules.max_size) {
        Ok(p) => p,
        Err(protocol::Error::InsufficientBytes(_)) => return need_more(buf),
        Err(protocol::Error::PayloadSizeLimitExceeded(len)) => {
            // MQTT 3.1.1 has no code for it: the connection is just closed.
            let refusal = Refusal::new(
                "connect_too_large",
                format!(
                    "a {len}-byte CONNECT exceeds broker.max_connect_size = {}",
                    rules.max_size
                ),
            );
            return Step::Refuse(match version {
                Version::V311 => refusal,
                Version::V5 => refusal.answer(
                    version,
                    ConnectReturnCode::PacketTooLarge,
                    ConnectReturnCode::PacketTooLarge,
                ),
            });
        }
        Err(e) => return Step::Refuse(malformed(Some(version), format!("bad CONNECT: {e}"))),
    };
    let Packet::Connect(connect, properties, will, will_properties, login) = packet else {
        return Step::Refuse(Refusal::new("protocol", "first packet is not CONNECT"));
    };
    // 3.1.1 [MQTT-3.1.3-8]: an empty client id needs a clean session (MQTT 5 allows it: the
    // server assigns an id, 3.1.3.1). Ids of the gateway's own components are not for devices.
    let refused_id =
        if connect.client_id.is_empty() && !connect.clean_session && version == Version::V311 {
            Some("an empty client id needs a clean session".to_owned())
        } else if connect.client_id.starts_with(COMPONENT_ID_PREFIX) {
            Some(format!(
                "client ids starting with {} are the gateway's own",
                COMPONENT_ID_PREFIX
            ))
        } else if connect.client_id.contains('\0') {
            Some("a client id with a NUL character".to_owned())
        } else {
            None
        };
    if let Some(detail) = refused_id {
        return Step::Refuse(Refusal::new("identifier_rejected", detail).answer(
            version,
            ConnectReturnCode::ClientIdentifierNotValid,
            ConnectReturnCode::ClientIdentifierNotValid,
        ));
    }
    if rules.login == LoginRule::UsernameIsClientId {
        let detail = match &login {
            None => Some(format!(
                "client {:?} sent no username and password",
                connect.client_id
            )),
            Some(l) if l.username != connect.client_id => Some(format!(
                "client {:?} logged in as {:?}: the username must be the client id",
                connect.client_id, l.username
            )),
            Some(_) => None,
        };
        if let Some(detail) = detail {
            return Step::Refuse(Refusal::security("bad_credentials", detail).answer(
                version,
                ConnectReturnCode::BadUserNamePassword,
                ConnectReturnCode::BadUserNamePassword,
            ));
        }
    }
    if let Some(will) = &will {
        // The will is a publish made on the client's behalf later: its topic must be a valid
        // topic name (whether the client may publish there is the policy's, after
        // authentication).
        match check_topic_name(&will.topic, false) {
            Err(detail) => {
                // MQTT 3.1.1 has no CONNACK code for it: the connection is just closed.
                let refusal = Refusal::new("malformed", format!("will: {detail}"));
                return Step::Refuse(match version {
                    Version::V311 => refusal,
                    Version::V5 => refusal.answer(
                        version,
                        ConnectReturnCode::TopicNameInvalid,
                        ConnectReturnCode::TopicNameInvalid,
                    ),
                });
            }
            // It would be published as a retained message on a reserved topic, which the
            // PUBLISH path refuses (`namespace::may_retain`). MQTT 3.1.1 has no closer code than
            // "not authorized" (and rumqttd's encoder knows only its five).
            Ok(topic) if will.retain && !namespace::may_retain(topic) => {
                return Step::Refuse(
                    Refusal::new(
                        "retain_reserved",
                        format!("a retained will on the reserved topic {topic}"),
                    )
                    .answer(
                        version,
                        ConnectReturnCode::NotAuthorized,
                        ConnectReturnCode::RetainNotSupported,
                    ),
                );
            }
            Ok(_) => {}
        }
    }
    Step::Connect(Box::new(Hello {
        version,
        connect,
        properties,
        will,
        will_properties,
        login,
    }))
}

/// A malformed CONNECT: MQTT 3.1.1 has no CONNACK code for it, the connection is just closed
/// (§4.8); an MQTT 5 client gets CONNACK 0x81 Malformed Packet first (§4.13, [MQTT-4.13.1-1]).
fn malformed(version: Option<Version>, detail: impl Into<String>) -> Refusal {
    let refusal = Refusal::new("malformed", detail);
    match version {
        Some(Version::V5) => refusal.answer(
            Version::V5,
            ConnectReturnCode::MalformedPacket,
            ConnectReturnCode::MalformedPacket,
        ),
        _ => refusal,
    }
}

/// MQTT §4.7.3: a topic name is at least one character long (MQTT 5 allows it empty when a topic
/// alias stands for it), valid UTF-8, and has no wildcard.
pub fn check_topic_name(topic: &[u8], uses_alias: bool) -> Result<&str, String> {
    let topic = std::str::from_utf8(topic).map_err(|_| "topic is not UTF-8".to_owned())?;
    if topic.is_empty() && !uses_alias {
        return Err("empty topic name".into());
    }
    if topic.contains(['+', '#', '\0']) {
        return Err(format!("topic name {topic:?} contains a wildcard or NUL"));
    }
    Ok(topic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    const RULES: ConnectRules = ConnectRules {
        max_size: 256,
        login: LoginRule::UsernameIsClientId,
    };

    /// An MQTT 3.1.1 CONNECT (clean session), with an optional login and will topic.
    fn connect(id: &str, login: Option<(&str, &str)>, will: Option<(&str, usize)>) -> Vec<u8> {
        let string = |b: &mut Vec<u8>, s: &[u8]| {
            b.put_u16(s.len() as u16);
            b.extend_from_slice(s);
        };
        let mut flags = 0x02;
        let mut body = Vec::new();
        string(&mut body, b"MQTT");
        body.push(4);
        if login.is_some() {
            flags |= 0xC0;
        }
        if will.is_some() {
            flags |= 0x04;
        }
        body.push(flags);
        body.put_u16(30);
        string(&mut body, id.as_bytes());
        if let Some((topic, len)) = will {
            string(&mut body, topic.as_bytes());
            string(&mut body, &vec![b'x'; len]);
        }
        if let Some((user, pass)) = login {
            string(&mut body, user.as_bytes());
            string(&mut body, pass.as_bytes());
        }
        let mut out = vec![0x10];
        let mut len = body.len();
        loop {
            let byte = (len % 128) as u8;
            len /= 128;
            out.push(if len > 0 { byte | 0x80 } else { byte });
            if len == 0 {
                break;
            }
        }
        out.extend_from_slice(&body);
        out
    }

    /// The outcome, as a short label: `connect`, `more`, or the refusal's reason and CONNACK code.
    fn outcome(bytes: &[u8]) -> String {
        match read_connect(&mut BytesMut::from(bytes), &RULES) {
            Step::Connect(_) => "connect".into(),
            Step::NeedMore { .. } => "more".into(),
            Step::Refuse(r) => format!("{} {:?}", r.reason, r.answer.map(|a| a.code)),
        }
    }

    #[test]
    fn connect_phase_cases() {
        let ok = connect("d1", Some(("d1", "pw")), None);
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("a good login", ok.clone(), "connect"),
            ("half of it", ok[..ok.len() / 2].to_vec(), "more"),
            ("nothing yet", vec![], "more"),
            ("not MQTT", b"GET / HTTP/1.1\r\n".to_vec(), "protocol None"),
            (
                "MQTT 3.1",
                vec![0x10, 0x20, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3],
                "protocol Some(RefusedProtocolVersion)",
            ),
            (
                "no login",
                connect("d1", None, None),
                "bad_credentials Some(BadUserNamePassword)",
            ),
            (
                "someone else's username",
                connect("d1", Some(("d2", "pw")), None),
                "bad_credentials Some(BadUserNamePassword)",
            ),
            (
                "a wildcard will topic",
                connect("d1", Some(("d1", "pw")), Some(("a/#", 1))),
                "malformed None",
            ),
            (
                "a will that fits",
                connect("d1", Some(("d1", "pw")), Some(("a/b", 100))),
                "connect",
            ),
            (
                "a retained will on a reserved topic",
                {
                    let mut b = connect(
                        "d1",
                        Some(("d1", "pw")),
                        Some(("$aws/things/d1/shadow/update", 10)),
                    );
                    b[9] |= 0x20; // will retain
                    b
                },
                "retain_reserved Some(NotAuthorized)",
            ),
            (
                "a retained will on the presence topic",
                {
                    let mut b = connect(
                        "d1",
                        Some(("d1", "pw")),
                        Some(("$grove/things/d1/status", 7)),
                    );
                    b[9] |= 0x20;
                    b
                },
                "connect",
            ),
            (
                "a will that does not",
                connect("d1", Some(("d1", "pw")), Some(("a/b", 300))),
                "connect_too_large None",
            ),
            (
                "a component's client id",
                connect("$grove/shadow/0", Some(("$grove/shadow/0", "pw")), None),
                "identifier_rejected Some(ClientIdentifierNotValid)",
            ),
            (
                "a NUL in the client id",
                connect("d\u{0}1", Some(("d\u{0}1", "pw")), None),
                "identifier_rejected Some(ClientIdentifierNotValid)",
            ),
            (
                // [MQTT-3.1.2-3]: 3.1.1 closes without a CONNACK.
                "the reserved connect flag",
                {
                    let mut b = connect("d1", Some(("d1", "pw")), None);
                    b[9] |= 0x01;
                    b
                },
                "malformed None",
            ),
            ("an empty CONNECT", vec![0x10, 0x00], "malformed None"),
            (
                "a CONNECT too short for its client id",
                vec![0x10, 0x08, 0x00, 0x04, b'M', b'Q', b'T', b'T', 5, 0x02],
                "malformed Some(MalformedPacket)",
            ),
            (
                // Refused from its first five bytes: the rest need never be read.
                "a 1 MiB CONNECT announced",
                vec![
                    0x10, 0x80, 0x80, 0x40, 0x00, 0x04, b'M', b'Q', b'T', b'T', 4,
                ],
                "connect_too_large None",
            ),
        ];
        for (what, bytes, want) in cases {
            assert_eq!(outcome(&bytes), want, "{what}");
        }
    }

    #[test]
    fn an_unfinished_connect_is_never_read_past_the_limit() {
        let big = connect("d1", Some(("d1", "pw")), Some(("a/b", 200)));
        assert!(big.len() <= RULES.max_size + MAX_FIXED_HEADER);
        let mut buf = BytesMut::new();
        // One byte at a time, as a slow peer sends: the room offered never passes the limit.
        for b in &big {
            match read_connect(&mut buf, &RULES) {
                Step::NeedMore { room } => {
                    assert!(room >= 1 && buf.len() + room <= RULES.max_size + MAX_FIXED_HEADER);
                }
                other => panic!("{other:?} after {} bytes", buf.len()),
            }
            buf.put_u8(*b);
        }
        assert!(matches!(read_connect(&mut buf, &RULES), Step::Connect(_)));
        assert!(buf.is_empty(), "the CONNECT is taken off the buffer");
    }

    #[test]
    fn other_listeners_ignore_the_login() {
        let rules = ConnectRules {
            login: LoginRule::Ignored,
            ..RULES
        };
        let mut buf = BytesMut::from(&connect("d1", None, None)[..]);
        assert!(matches!(read_connect(&mut buf, &rules), Step::Connect(_)));
    }
}
