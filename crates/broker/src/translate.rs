//! Translation between rumqttd's decoded packets (its MQTT 3.1.1 and 5 codecs) and the router
//! core's own types (`grove_router::{Inbound, Outbound, ...}`), both ways.
//!
//! Only field-by-field copies and the per-version mappings the core leaves to its shell live
//! here: reason codes to 3.1.1 return codes (3.2.2.3, 3.9.3), no server DISCONNECT on 3.1.1, and
//! the MQTT 5 properties. rumqttd keeps a PUBLISH's QoS, DUP flag and packet id crate-private; its
//! public `serialize`/`deserialize` carry them in a fixed layout, used here on a copy without topic
//! and payload, so no payload is ever copied.

use bytes::{BufMut, Bytes, BytesMut};
use grove_router as core;
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode, Filter,
    LastWill, LastWillProperties, Packet, PubAck, PubAckReason, PubComp, PubCompReason, PubRec,
    PubRecReason, PubRel, PubRelReason, Publish, PublishProperties, QoS, RetainForwardRule, SubAck,
    SubscribeReasonCode, UnsubAck, UnsubAckReason,
};

use crate::codec::Version;
use crate::GROVE_PROPERTY_PREFIX;

/// The core's name for a connection's protocol version.
pub(crate) fn version(v: Version) -> core::Version {
    match v {
        Version::V311 => core::Version::V311,
        Version::V5 => core::Version::V5,
    }
}

fn qos_in(q: QoS) -> core::QoS {
    match q {
        QoS::AtMostOnce => core::QoS::AtMostOnce,
        QoS::AtLeastOnce => core::QoS::AtLeastOnce,
        QoS::ExactlyOnce => core::QoS::ExactlyOnce,
    }
}

/// QoS (bits 1-2 of the fixed header), DUP flag and packet id of a decoded PUBLISH.
pub(crate) fn publish_header(publish: &Publish) -> (u8, bool, u16) {
    let mut probe = publish.clone();
    probe.topic = Bytes::new();
    probe.payload = Bytes::new();
    let bytes = probe.serialize();
    (
        (bytes[0] >> 1) & 0b11,
        bytes[0] & 0b1000 != 0,
        u16::from_be_bytes([bytes[1], bytes[2]]),
    )
}

/// A PUBLISH with the given header fields, topic and payload (shared, not copied).
fn make_publish(
    qos: u8,
    dup: bool,
    retain: bool,
    pkid: u16,
    topic: Bytes,
    payload: Bytes,
) -> Publish {
    let mut b = BytesMut::with_capacity(5);
    b.put_u8(0b0011_0000 | u8::from(retain) | (qos << 1) | (u8::from(dup) << 3));
    b.put_u16(if qos == 0 { 0 } else { pkid });
    b.put_u16(0);
    let mut publish = Publish::deserialize(b.freeze());
    publish.topic = topic;
    publish.payload = payload;
    publish
}

fn core_qos(bits: u8) -> core::QoS {
    match bits {
        0 => core::QoS::AtMostOnce,
        1 => core::QoS::AtLeastOnce,
        _ => core::QoS::ExactlyOnce,
    }
}

/// Message properties a client sent, without Grove's own `$grove-` user properties (a client may
/// not forge them).
fn message_properties(props: Option<PublishProperties>) -> (core::MessageProperties, Option<u16>) {
    let Some(p) = props else {
        return (core::MessageProperties::default(), None);
    };
    let mut user_properties = p.user_properties;
    user_properties.retain(|(k, _)| !k.starts_with(GROVE_PROPERTY_PREFIX));
    (
        core::MessageProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            content_type: p.content_type,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties,
        },
        p.topic_alias,
    )
}

/// A client's PUBLISH for the core. The topic must have passed `connect::check_topic_name`.
pub(crate) fn publish_in(publish: Publish, props: Option<PublishProperties>) -> core::Publish {
    let (qos, dup, pkid) = publish_header(&publish);
    let (properties, topic_alias) = message_properties(props);
    core::Publish {
        topic: String::from_utf8_lossy(&publish.topic).into(),
        payload: publish.payload,
        qos: core_qos(qos),
        retain: publish.retain,
        dup,
        pkid,
        topic_alias,
        properties,
    }
}

/// A CONNECT's will for the core.
pub(crate) fn will_in(will: LastWill, props: Option<LastWillProperties>) -> core::Will {
    let props = props.unwrap_or(LastWillProperties {
        delay_interval: None,
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    });
    let mut user_properties = props.user_properties;
    user_properties.retain(|(k, _)| !k.starts_with(GROVE_PROPERTY_PREFIX));
    core::Will {
        topic: String::from_utf8_lossy(&will.topic).into(),
        payload: will.message,
        qos: qos_in(will.qos),
        retain: will.retain,
        delay_interval: props.delay_interval.unwrap_or(0),
        properties: core::MessageProperties {
            payload_format_indicator: props.payload_format_indicator,
            message_expiry_interval: props.message_expiry_interval,
            content_type: props.content_type,
            response_topic: props.response_topic,
            correlation_data: props.correlation_data,
            user_properties,
        },
    }
}

/// A SUBSCRIBE filter's options for the core (3.8.3.1).
pub(crate) fn sub_options(f: &Filter) -> core::SubOptions {
    core::SubOptions {
        qos: qos_in(f.qos),
        no_local: f.nolocal,
        retain_as_published: f.preserve_retain,
        retain_handling: match f.retain_forward_rule {
            RetainForwardRule::OnEverySubscribe => core::RetainHandling::SendAtSubscribe,
            RetainForwardRule::OnNewSubscribe => core::RetainHandling::SendIfNew,
            RetainForwardRule::Never => core::RetainHandling::DoNotSend,
        },
    }
}

/// A PUBACK, PUBREC, PUBREL or PUBCOMP for the core; `None` for any other packet.
pub(crate) fn ack_in(packet: &Packet) -> Option<core::Inbound> {
    let ack = |pkid| core::Ack { pkid, reason: 0 };
    Some(match packet {
        Packet::PubAck(a, _) => core::Inbound::PubAck(ack(a.pkid)),
        Packet::PubRec(a, _) => core::Inbound::PubRec(ack(a.pkid)),
        Packet::PubRel(a, _) => core::Inbound::PubRel(ack(a.pkid)),
        Packet::PubComp(a, _) => core::Inbound::PubComp(ack(a.pkid)),
        _ => return None,
    })
}

/// The MQTT 5 reason code of a DISCONNECT (2.4, 3.14.2.1).
pub(crate) fn disconnect_code(code: DisconnectReasonCode) -> u8 {
    use DisconnectReasonCode as D;
    match code {
        D::NormalDisconnection => 0x00,
        D::DisconnectWithWillMessage => 0x04,
        D::UnspecifiedError => 0x80,
        D::MalformedPacket => 0x81,
        D::ProtocolError => 0x82,
        D::ImplementationSpecificError => 0x83,
        D::NotAuthorized => 0x87,
        D::ServerBusy => 0x89,
        D::ServerShuttingDown => 0x8B,
        D::KeepAliveTimeout => 0x8D,
        D::SessionTakenOver => 0x8E,
        D::TopicFilterInvalid => 0x8F,
        D::TopicNameInvalid => 0x90,
        D::ReceiveMaximumExceeded => 0x93,
        D::TopicAliasInvalid => 0x94,
        D::PacketTooLarge => 0x95,
        D::MessageRateTooHigh => 0x96,
        D::QuotaExceeded => 0x97,
        D::AdministrativeAction => 0x98,
        D::PayloadFormatInvalid => 0x99,
        D::RetainNotSupported => 0x9A,
        D::QoSNotSupported => 0x9B,
        D::UseAnotherServer => 0x9C,
        D::ServerMoved => 0x9D,
        D::SharedSubscriptionNotSupported => 0x9E,
        D::ConnectionRateExceeded => 0x9F,
        D::MaximumConnectTime => 0xA0,
        D::SubscriptionIdentifiersNotSupported => 0xA1,
        D::WildcardSubscriptionsNotSupported => 0xA2,
    }
}

fn disconnect_reason(code: u8) -> DisconnectReasonCode {
    use DisconnectReasonCode as D;
    match code {
        0x00 => D::NormalDisconnection,
        0x81 => D::MalformedPacket,
        0x82 => D::ProtocolError,
        0x87 => D::NotAuthorized,
        0x89 => D::ServerBusy,
        0x8B => D::ServerShuttingDown,
        0x8D => D::KeepAliveTimeout,
        0x8E => D::SessionTakenOver,
        0x8F => D::TopicFilterInvalid,
        0x90 => D::TopicNameInvalid,
        0x93 => D::ReceiveMaximumExceeded,
        0x94 => D::TopicAliasInvalid,
        0x95 => D::PacketTooLarge,
        0x97 => D::QuotaExceeded,
        0x9A => D::RetainNotSupported,
        0x9B => D::QoSNotSupported,
        0x9E => D::SharedSubscriptionNotSupported,
        0xA1 => D::SubscriptionIdentifiersNotSupported,
        0xA2 => D::WildcardSubscriptionsNotSupported,
        _ => D::UnspecifiedError,
    }
}

/// An MQTT 5 CONNACK reason code as rumqttd's enum; `None` when 3.1.1 has no return code for
/// it (3.2.2.3: the server then closes without CONNACK).
fn connack_code(code: u8, v: Version) -> Option<ConnectReturnCode> {
    use ConnectReturnCode as C;
    if v == Version::V311 {
        return match code {
            0x00 => Some(C::Success),
            0x85 => Some(C::ClientIdentifierNotValid),
            0x86 => Some(C::BadUserNamePassword),
            0x87 => Some(C::NotAuthorized),
            0x88 | 0x89 => Some(C::ServiceUnavailable),
            _ => None,
        };
    }
    Some(match code {
        0x00 => C::Success,
        0x81 => C::MalformedPacket,
        0x82 => C::ProtocolError,
        0x85 => C::ClientIdentifierNotValid,
        0x86 => C::BadUserNamePassword,
        0x87 => C::NotAuthorized,
        0x89 => C::ServerBusy,
        0x90 => C::TopicNameInvalid,
        0x95 => C::PacketTooLarge,
        0x97 => C::QuotaExceeded,
        0x9A => C::RetainNotSupported,
        0x9B => C::QoSNotSupported,
        _ => C::UnspecifiedError,
    })
}

fn connack_properties(p: core::ConnAckProperties) -> ConnAckProperties {
    let flag = |b: bool| Some(u8::from(b));
    ConnAckProperties {
        session_expiry_interval: p.session_expiry_interval,
        receive_max: Some(p.receive_maximum),
        // Absent means 2; only 0 or 1 may be sent (3.2.2.3.4).
        max_qos: (p.maximum_qos < 2).then_some(p.maximum_qos),
        retain_available: flag(p.retain_available),
        max_packet_size: p.maximum_packet_size,
        assigned_client_identifier: p.assigned_client_identifier.map(|id| id.to_string()),
        topic_alias_max: Some(p.topic_alias_maximum),
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: flag(p.wildcard_subscription_available),
        subscription_identifiers_available: flag(p.subscription_identifiers_available),
        shared_subscription_available: flag(p.shared_subscription_available),
        server_keep_alive: p.server_keep_alive,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
}

fn suback_code(code: u8, v: Version) -> SubscribeReasonCode {
    use SubscribeReasonCode as S;
    match (code, v) {
        (0, _) => S::Success(QoS::AtMostOnce),
        (1, _) => S::Success(QoS::AtLeastOnce),
        (2, _) => S::Success(QoS::ExactlyOnce),
        // 3.1.1 has one failure code (3.9.3).
        (_, Version::V311) => S::Failure,
        (0x83, _) => S::ImplementationSpecific,
        (0x87, _) => S::NotAuthorized,
        (0x8F, _) => S::TopicFilterInvalid,
        (0x91, _) => S::PkidInUse,
        (0x97, _) => S::QuotaExceeded,
        (0x9E, _) => S::SharedSubscriptionsNotSupported,
        (0xA1, _) => S::SubscriptionIdNotSupported,
        (0xA2, _) => S::WildcardSubscriptionsNotSupported,
        _ => S::Unspecified,
    }
}

fn unsuback_reason(code: u8) -> UnsubAckReason {
    match code {
        0x00 => UnsubAckReason::Success,
        0x11 => UnsubAckReason::NoSubscriptionExisted,
        0x87 => UnsubAckReason::NotAuthorized,
        0x8F => UnsubAckReason::TopicFilterInvalid,
        0x91 => UnsubAckReason::PacketIdentifierInUse,
        _ => UnsubAckReason::UnspecifiedError,
    }
}

/// The PUBLISH for a delivery; `strip` removes Grove's `$grove-` user properties (for devices).
pub(crate) fn delivery_out(d: core::Delivery, strip: bool) -> Packet {
    let m = &d.message;
    let topic = if d.topic_elided {
        Bytes::new()
    } else {
        Bytes::copy_from_slice(m.topic.as_bytes())
    };
    let publish = make_publish(
        d.qos as u8,
        d.dup,
        d.retain,
        d.pkid,
        topic,
        m.payload.clone(),
    );
    let p = &m.properties;
    let mut user_properties = p.user_properties.clone();
    if strip {
        user_properties.retain(|(k, _)| !k.starts_with(GROVE_PROPERTY_PREFIX));
    }
    let props = PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: d.message_expiry_interval,
        topic_alias: d.topic_alias,
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.clone(),
        user_properties,
        subscription_identifiers: d.subscription_ids.iter().map(|&i| i as usize).collect(),
        content_type: p.content_type.clone(),
    };
    let props = (props != PublishProperties::default()).then_some(props);
    Packet::Publish(publish, props)
}

/// The packet to send for a control packet of the core (anything but a delivery), in the codec
/// of `v`; `None` when 3.1.1 has no such packet (a server DISCONNECT, a CONNACK code without a
/// 3.1.1 return code): the connection is then closed without one.
pub(crate) fn control_out(out: core::Outbound, v: Version) -> Option<Packet> {
    Some(match out {
        core::Outbound::ConnAck(a) => Packet::ConnAck(
            ConnAck {
                session_present: a.session_present,
                code: connack_code(a.reason, v)?,
            },
            (v == Version::V5).then(|| connack_properties(a.properties)),
        ),
        core::Outbound::Publish(d) => delivery_out(d, true),
        core::Outbound::PubAck(a) => Packet::PubAck(
            PubAck {
                pkid: a.pkid,
                reason: match a.reason {
                    0x00 => PubAckReason::Success,
                    0x10 => PubAckReason::NoMatchingSubscribers,
                    0x87 => PubAckReason::NotAuthorized,
                    0x90 => PubAckReason::TopicNameInvalid,
                    0x91 => PubAckReason::PacketIdentifierInUse,
                    0x97 => PubAckReason::QuotaExceeded,
                    _ => PubAckReason::UnspecifiedError,
                },
            },
            None,
        ),
        core::Outbound::PubRec(a) => Packet::PubRec(
            PubRec {
                pkid: a.pkid,
                reason: match a.reason {
                    0x00 => PubRecReason::Success,
                    0x10 => PubRecReason::NoMatchingSubscribers,
                    0x87 => PubRecReason::NotAuthorized,
                    0x90 => PubRecReason::TopicNameInvalid,
                    0x91 => PubRecReason::PacketIdentifierInUse,
                    0x97 => PubRecReason::QuotaExceeded,
                    _ => PubRecReason::UnspecifiedError,
                },
            },
            None,
        ),
        core::Outbound::PubRel(a) => Packet::PubRel(
            PubRel {
                pkid: a.pkid,
                reason: match a.reason {
                    0x00 => PubRelReason::Success,
                    _ => PubRelReason::PacketIdentifierNotFound,
                },
            },
            None,
        ),
        core::Outbound::PubComp(a) => Packet::PubComp(
            PubComp {
                pkid: a.pkid,
                reason: match a.reason {
                    0x00 => PubCompReason::Success,
                    _ => PubCompReason::PacketIdentifierNotFound,
                },
            },
            None,
        ),
        core::Outbound::SubAck { pkid, reasons } => Packet::SubAck(
            SubAck {
                pkid,
                return_codes: reasons.into_iter().map(|c| suback_code(c, v)).collect(),
            },
            None,
        ),
        core::Outbound::UnsubAck { pkid, reasons } => Packet::UnsubAck(
            UnsubAck {
                pkid,
                reasons: reasons.into_iter().map(unsuback_reason).collect(),
            },
            None,
        ),
        core::Outbound::Disconnect { reason } => {
            if v == Version::V311 {
                return None;
            }
            Packet::Disconnect(
                Disconnect {
                    reason_code: disconnect_reason(reason),
                },
                None,
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_header_fields_survive_both_ways() {
        for (qos, dup, retain, pkid) in [
            (0, false, false, 0),
            (1, true, true, 7),
            (2, false, true, 65535),
        ] {
            let p = make_publish(
                qos,
                dup,
                retain,
                pkid,
                Bytes::from_static(b"a/b"),
                Bytes::from_static(b"xyz"),
            );
            assert_eq!(publish_header(&p), (qos, dup, pkid));
            assert_eq!(p.retain, retain);
            assert_eq!(&p.topic[..], b"a/b");
            assert_eq!(&p.payload[..], b"xyz");
            let core = publish_in(p, None);
            assert_eq!(core.qos as u8, qos);
            assert_eq!((core.dup, core.pkid, core.retain), (dup, pkid, retain));
        }
    }

    #[test]
    fn three_one_one_has_no_server_disconnect_and_one_suback_failure_code() {
        assert_eq!(
            control_out(core::Outbound::Disconnect { reason: 0x8E }, Version::V311),
            None
        );
        let Some(Packet::SubAck(ack, _)) = control_out(
            core::Outbound::SubAck {
                pkid: 1,
                reasons: vec![1, 0x87],
            },
            Version::V311,
        ) else {
            panic!("a SUBACK")
        };
        assert_eq!(
            ack.return_codes,
            vec![
                SubscribeReasonCode::Success(QoS::AtLeastOnce),
                SubscribeReasonCode::Failure
            ]
        );
    }
}
