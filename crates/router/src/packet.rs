//! The core's own packet types: what the shell decodes into (inbound) and encodes from (outbound).
//!
//! They carry only what routing needs; the shell translates from and to its codecs (rumqttd's v4
//! and v5 today). Reason codes are MQTT 5 codes (2.4, table 2-6); for 3.1.1 connections the shell
//! maps them: a SUBACK code >= 0x80 is 0x80 (3.9.3), CONNACK codes map to 3.1.1 return codes
//! (3.2.2.3) and a server DISCONNECT is a plain close (3.1.1 has no server DISCONNECT).
//!
//! Payloads are `bytes::Bytes` and topics `Arc<str>`: a delivery to many subscribers shares both.

use bytes::Bytes;
use std::sync::Arc;

/// A point on the shell's clock, in milliseconds. The core never reads a clock: every call that
/// depends on time takes one of these. For persistent sessions the shell must use wall-clock
/// Unix milliseconds: the storage writes carry these instants as they are (a disconnect time, a
/// will's due time, a message's expiry), so they keep their meaning after a restart. (A monotonic
/// clock would not survive the restart; the one cost of the wall clock is that a clock step moves
/// those deadlines with it.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(pub u64);

impl Instant {
    /// This instant plus `secs` seconds (saturating).
    pub fn plus_secs(self, secs: u32) -> Instant {
        Instant(self.0.saturating_add(u64::from(secs) * 1000))
    }
    /// This instant plus `ms` milliseconds (saturating).
    pub fn plus_millis(self, ms: u64) -> Instant {
        Instant(self.0.saturating_add(ms))
    }
}

/// The shell's identifier of one network connection (never reused by the shell).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// Protocol version of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

/// Quality of service (4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    /// 0: at most once (4.3.1).
    AtMostOnce = 0,
    /// 1: at least once (4.3.2).
    AtLeastOnce = 1,
    /// 2: exactly once (4.3.3).
    ExactlyOnce = 2,
}

/// MQTT 5 reason codes used by the core (2.4).
pub mod reason {
    /// Success / normal disconnection / granted QoS 0.
    pub const SUCCESS: u8 = 0x00;
    /// DISCONNECT with Will Message (3.14.2.1).
    pub const DISCONNECT_WITH_WILL: u8 = 0x04;
    /// UNSUBACK: no subscription existed (3.11.2.2).
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    /// Unspecified error.
    pub const UNSPECIFIED_ERROR: u8 = 0x80;
    /// Malformed packet.
    pub const MALFORMED_PACKET: u8 = 0x81;
    /// Protocol error.
    pub const PROTOCOL_ERROR: u8 = 0x82;
    /// CONNACK: client identifier not valid (3.1.1 return code 2).
    pub const CLIENT_ID_NOT_VALID: u8 = 0x85;
    /// Server busy.
    pub const SERVER_BUSY: u8 = 0x89;
    /// Session taken over (3.1.4-3, 4.13).
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    /// Topic filter invalid.
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    /// Topic name invalid.
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    /// Packet identifier not found (PUBREL/PUBREC/PUBCOMP).
    pub const PACKET_ID_NOT_FOUND: u8 = 0x92;
    /// Receive Maximum exceeded (3.3.4).
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    /// Topic alias invalid (3.3.2.3.4).
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    /// Packet too large.
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    /// Quota exceeded.
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    /// Retain not supported (3.2.2.3.5).
    pub const RETAIN_NOT_SUPPORTED: u8 = 0x9A;
    /// QoS not supported (3.2.2.3.4).
    pub const QOS_NOT_SUPPORTED: u8 = 0x9B;
    /// Shared subscriptions not supported.
    pub const SHARED_NOT_SUPPORTED: u8 = 0x9E;
    /// Subscription identifiers not supported.
    pub const SUBSCRIPTION_IDS_NOT_SUPPORTED: u8 = 0xA1;
    /// Wildcard subscriptions not supported.
    pub const WILDCARDS_NOT_SUPPORTED: u8 = 0xA2;
}

/// Properties of an application message that travel with it to subscribers (3.3.2.3).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageProperties {
    /// Payload Format Indicator (3.3.2.3.2).
    pub payload_format_indicator: Option<u8>,
    /// Message Expiry Interval in seconds as received (3.3.2.3.3).
    pub message_expiry_interval: Option<u32>,
    /// Content Type (3.3.2.3.9).
    pub content_type: Option<String>,
    /// Response Topic (3.3.2.3.5).
    pub response_topic: Option<String>,
    /// Correlation Data (3.3.2.3.6).
    pub correlation_data: Option<Bytes>,
    /// User Properties, order kept (3.3.2.3.7).
    pub user_properties: Vec<(String, String)>,
}

/// An inbound PUBLISH.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    /// Topic name; empty when a topic alias stands for it (3.3.2.3.4).
    pub topic: Arc<str>,
    /// Payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// DUP flag.
    pub dup: bool,
    /// Packet identifier (0 for QoS 0).
    pub pkid: u16,
    /// Topic Alias (3.3.2.3.4).
    pub topic_alias: Option<u16>,
    /// Message properties.
    pub properties: MessageProperties,
}

/// Will message of a CONNECT (3.1.2.5, 3.1.3.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    /// Will topic.
    pub topic: Arc<str>,
    /// Will payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will retain.
    pub retain: bool,
    /// Will Delay Interval in seconds (3.1.3.2.2).
    pub delay_interval: u32,
    /// Will properties that travel with the message.
    pub properties: MessageProperties,
}

/// An inbound CONNECT, already authenticated by the shell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    /// Client identifier; empty asks the server to assign one (3.1.3.1).
    pub client_id: Arc<str>,
    /// Protocol version.
    pub version: Version,
    /// Clean Start (5) / Clean Session (3.1.1) (3.1.2.4).
    pub clean_start: bool,
    /// Session Expiry Interval in seconds (3.1.2.11.2); ignored for 3.1.1, where Clean Session
    /// decides (0 with clean session, never otherwise).
    pub session_expiry_interval: u32,
    /// Client's Receive Maximum (3.1.2.11.3); `None` is 65,535.
    pub receive_maximum: Option<u16>,
    /// Client's Maximum Packet Size (3.1.2.11.4); `None` is no limit.
    pub maximum_packet_size: Option<u32>,
    /// Client's Topic Alias Maximum (3.1.2.11.5); 0 is none.
    pub topic_alias_maximum: u16,
    /// Will message.
    pub will: Option<Will>,
    /// Most subscriptions the session may hold; `None`: [`crate::Config::max_subscriptions_per_client`].
    /// Not from the wire: the shell lifts the budget for the gateway's own components, whose
    /// filters come from its configuration (10,000 rules are 10,000 filters), not from a peer.
    pub max_subscriptions: Option<usize>,
}

impl Connect {
    /// A Clean Start connection of `client_id` without session expiry, will or topic aliases,
    /// and with the client's Receive Maximum and Maximum Packet Size at the protocol's defaults;
    /// set the fields that differ.
    pub fn new(client_id: impl Into<Arc<str>>, version: Version) -> Connect {
        Connect {
            client_id: client_id.into(),
            version,
            clean_start: true,
            session_expiry_interval: 0,
            receive_maximum: None,
            maximum_packet_size: None,
            topic_alias_maximum: 0,
            will: None,
            max_subscriptions: None,
        }
    }
}

/// A PUBACK, PUBREC, PUBREL or PUBCOMP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// Packet identifier.
    pub pkid: u16,
    /// Reason code (0 = success).
    pub reason: u8,
}

/// Retain Handling subscription option (3.8.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetainHandling {
    /// 0: send retained messages at the time of the subscribe.
    SendAtSubscribe,
    /// 1: send retained messages only if the subscription did not exist.
    SendIfNew,
    /// 2: do not send retained messages.
    DoNotSend,
}

/// Subscription options (3.8.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SubOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// No Local.
    pub no_local: bool,
    /// Retain As Published.
    pub retain_as_published: bool,
    /// Retain Handling.
    pub retain_handling: RetainHandling,
}

impl SubOptions {
    /// Options of a 3.1.1 subscription: only the QoS; retained sent at every SUBSCRIBE
    /// [MQTT-3.8.4-3].
    pub fn qos(qos: QoS) -> SubOptions {
        SubOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
        }
    }
}

/// An inbound SUBSCRIBE whose filters the shell has authorised (a filter it refused is not passed
/// in; the shell answers it with 0x87 in its place in the SUBACK).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier.
    pub pkid: u16,
    /// Topic filters with options.
    pub filters: Vec<(String, SubOptions)>,
    /// Subscription Identifier (3.8.2.1.2).
    pub subscription_id: Option<u32>,
}

/// An inbound UNSUBSCRIBE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier.
    pub pkid: u16,
    /// Topic filters.
    pub filters: Vec<String>,
}

/// An inbound DISCONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disconnect {
    /// Reason code (0x00 normal: will discarded; 0x04: will published) (3.14.2.1).
    pub reason: u8,
    /// New Session Expiry Interval (3.14.2.2.2).
    pub session_expiry_interval: Option<u32>,
}

/// A packet from a connected client (CONNECT goes through [`crate::Router::connect`]; PINGREQ is
/// the shell's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK.
    PubAck(Ack),
    /// PUBREC.
    PubRec(Ack),
    /// PUBREL.
    PubRel(Ack),
    /// PUBCOMP.
    PubComp(Ack),
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe),
    /// DISCONNECT.
    Disconnect(Disconnect),
}

/// An application message inside the router: shared (`Arc`) by every delivery and queue entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Router-unique id (the key of the message in storage).
    pub id: u64,
    /// Topic name (never empty: aliases are resolved).
    pub topic: Arc<str>,
    /// Payload.
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: QoS,
    /// RETAIN flag it was published with.
    pub retain: bool,
    /// Properties (the expiry interval as received; deliveries carry the remaining one).
    pub properties: MessageProperties,
    /// When it expires (3.3.2.3.3), on the shell's clock.
    pub expires_at: Option<Instant>,
    /// Client id of the publisher (for No Local and for the shell's logs).
    pub publisher: Arc<str>,
}

/// An outbound PUBLISH. The message is shared; the per-delivery fields are here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The message (its topic is always the full topic, for the shell's checks and logs).
    pub message: Arc<Message>,
    /// QoS of this delivery: min(published, granted) [MQTT-3.8.4-6] (5.0: -8).
    pub qos: QoS,
    /// RETAIN flag to send.
    pub retain: bool,
    /// DUP flag.
    pub dup: bool,
    /// Packet identifier (0 for QoS 0).
    pub pkid: u16,
    /// Topic Alias to send (3.3.2.3.4).
    pub topic_alias: Option<u16>,
    /// True when the alias is already known to the client: encode an empty topic name.
    pub topic_elided: bool,
    /// Subscription Identifiers of the matching subscriptions [MQTT-3.3.4-4].
    pub subscription_ids: Vec<u32>,
    /// Remaining Message Expiry Interval in seconds [MQTT-3.3.2-6].
    pub message_expiry_interval: Option<u32>,
}

/// What the server declares in CONNACK (3.2.2.3).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnAckProperties {
    /// Session Expiry Interval when the server uses another than the client asked (3.2.2.3.2).
    pub session_expiry_interval: Option<u32>,
    /// Receive Maximum (3.2.2.3.3).
    pub receive_maximum: u16,
    /// Maximum QoS (3.2.2.3.4).
    pub maximum_qos: u8,
    /// Retain Available (3.2.2.3.5).
    pub retain_available: bool,
    /// Maximum Packet Size (3.2.2.3.6).
    pub maximum_packet_size: Option<u32>,
    /// Assigned Client Identifier (3.2.2.3.7).
    pub assigned_client_identifier: Option<Arc<str>>,
    /// Topic Alias Maximum (3.2.2.3.8).
    pub topic_alias_maximum: u16,
    /// Wildcard Subscription Available (3.2.2.3.11).
    pub wildcard_subscription_available: bool,
    /// Subscription Identifiers Available (3.2.2.3.12).
    pub subscription_identifiers_available: bool,
    /// Shared Subscription Available (3.2.2.3.13).
    pub shared_subscription_available: bool,
    /// Server Keep Alive (3.2.2.3.14).
    pub server_keep_alive: Option<u16>,
}

/// CONNACK (3.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present (3.2.2.1.1).
    pub session_present: bool,
    /// Reason code (3.2.2.2); not 0: the shell closes after sending.
    pub reason: u8,
    /// Properties (v5).
    pub properties: ConnAckProperties,
}

/// A packet for the shell to send on a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outbound {
    /// CONNACK.
    ConnAck(ConnAck),
    /// PUBLISH.
    Publish(Delivery),
    /// PUBACK.
    PubAck(Ack),
    /// PUBREC.
    PubRec(Ack),
    /// PUBREL.
    PubRel(Ack),
    /// PUBCOMP.
    PubComp(Ack),
    /// SUBACK with one reason code per filter (granted QoS or error) (3.9.3).
    SubAck {
        /// Packet identifier.
        pkid: u16,
        /// Reason codes.
        reasons: Vec<u8>,
    },
    /// UNSUBACK with one reason code per filter (3.11.3; 3.1.1 sends none).
    UnsubAck {
        /// Packet identifier.
        pkid: u16,
        /// Reason codes.
        reasons: Vec<u8>,
    },
    /// Server DISCONNECT (v5) or plain close (3.1.1); the shell closes after sending it. The
    /// router has already treated the connection as gone.
    Disconnect {
        /// Reason code.
        reason: u8,
    },
}
