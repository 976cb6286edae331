//! The device's side of the AWS IoT Device Shadow protocol: topic names and JSON documents.
//!
//! The shadow of this device has two fields, mirrored between `desired` (set by people and rules) and
//! `reported` (set by the device): `relay` (the actuator) and `interval_s` (the telemetry period).
//! Documents are parsed with serde-json-core straight from the receive buffer and written into fixed
//! buffers; unknown fields (`metadata`, `timestamp`, other devices' additions) are ignored.

use heapless::String;
use serde::{Deserialize, Serialize};

/// The longest thing name accepted; AWS allows 128, but a microcontroller's topic buffers are sized
/// for this.
pub const MAX_THING_NAME: usize = 64;

/// The longest topic this device builds: `$aws/things/` + name + `/shadow/update/rejected`.
pub const MAX_TOPIC: usize = 12 + MAX_THING_NAME + 23;

/// The telemetry period's allowed range in seconds; a desired value outside it is refused.
pub const INTERVAL_RANGE_S: core::ops::RangeInclusive<u32> = 1..=86_400;

/// The shadow topics this device publishes to or subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// `update`: the device publishes its reported state here.
    Update,
    /// `update/delta`: the service sends the difference between desired and reported.
    UpdateDelta,
    /// `update/rejected`: the service refused an update.
    UpdateRejected,
    /// `get`: the device asks for the whole document.
    Get,
    /// `get/accepted`: the whole document.
    GetAccepted,
    /// `get/rejected`: the document could not be read (404 before the first report).
    GetRejected,
}

impl Topic {
    const ALL: [Topic; 6] = [
        Topic::Update,
        Topic::UpdateDelta,
        Topic::UpdateRejected,
        Topic::Get,
        Topic::GetAccepted,
        Topic::GetRejected,
    ];

    /// The topic's suffix after `$aws/things/{thing}/shadow/`.
    pub fn suffix(self) -> &'static str {
        match self {
            Topic::Update => "update",
            Topic::UpdateDelta => "update/delta",
            Topic::UpdateRejected => "update/rejected",
            Topic::Get => "get",
            Topic::GetAccepted => "get/accepted",
            Topic::GetRejected => "get/rejected",
        }
    }

    /// The full topic name for `thing`.
    pub fn for_thing(self, thing: &str) -> String<MAX_TOPIC> {
        join(&["$aws/things/", thing, "/shadow/", self.suffix()])
    }

    /// Recognises a shadow topic of `thing`.
    pub fn parse(topic: &str, thing: &str) -> Option<Topic> {
        let suffix = topic
            .strip_prefix("$aws/things/")?
            .strip_prefix(thing)?
            .strip_prefix("/shadow/")?;
        Topic::ALL.into_iter().find(|t| t.suffix() == suffix)
    }
}

/// The state this device reports: what its actuator and telemetry really are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Whether the relay is on.
    pub relay: bool,
    /// The telemetry period in seconds.
    pub interval_s: u32,
}

/// A desired-state change: the fields of a delta, each optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Patch {
    /// A new relay state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<bool>,
    /// A new telemetry period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_s: Option<u32>,
}

/// Every document the device receives, in one shape so that one serde-json-core deserializer serves
/// all three topics (each extra derived deserializer costs flash):
/// - `update/delta`: `{"version":..,"state":{"relay":..,"interval_s":..},"metadata":..}`;
/// - `get/accepted`: `{"version":..,"state":{"desired":..,"reported":..,"delta":{..}},..}`;
/// - `get/rejected`, `update/rejected`: `{"code":404,"message":".."}`.
#[derive(Deserialize)]
struct InboundDoc {
    #[serde(default)]
    version: Option<u64>,
    #[serde(default)]
    state: Option<InboundState>,
    #[serde(default)]
    code: Option<u16>,
}

#[derive(Deserialize)]
struct InboundState {
    #[serde(default)]
    relay: Option<bool>,
    #[serde(default)]
    interval_s: Option<u32>,
    #[serde(default)]
    delta: Option<Patch>,
}

/// A shadow message addressed to this device, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// Desired differs from reported: apply `patch`. `version` is the document version, if given.
    Delta {
        /// The document version the delta belongs to.
        version: Option<u64>,
        /// The fields to change.
        patch: Patch,
    },
    /// The whole document: apply its delta, if any.
    Document {
        /// The document version.
        version: Option<u64>,
        /// The difference between desired and reported, if any.
        delta: Option<Patch>,
    },
    /// The service refused a `get` or `update` with this HTTP-like code.
    Rejected {
        /// Which request was refused.
        topic: Topic,
        /// The error code, e.g. 404 or 400.
        code: u16,
    },
}

/// Why a shadow payload could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShadowError {
    /// The payload is not the JSON document the topic promises.
    #[error("malformed shadow document on {0:?}")]
    Malformed(Topic),
    /// A message on a topic the device only publishes to.
    #[error("unexpected shadow message on {0:?}")]
    UnexpectedTopic(Topic),
    /// A document did not fit the output buffer.
    #[error("shadow document does not fit the buffer")]
    BufferTooSmall,
}

/// Parses a message received on shadow topic `topic`.
pub fn parse(topic: Topic, payload: &[u8]) -> Result<Inbound, ShadowError> {
    let malformed = ShadowError::Malformed(topic);
    let (doc, _) = serde_json_core::from_slice::<InboundDoc>(payload).map_err(|_| malformed)?;
    match (topic, doc.state, doc.code) {
        (Topic::UpdateDelta, Some(state), _) => Ok(Inbound::Delta {
            version: doc.version,
            patch: Patch {
                relay: state.relay,
                interval_s: state.interval_s,
            },
        }),
        (Topic::GetAccepted, Some(state), _) => Ok(Inbound::Document {
            version: doc.version,
            delta: state.delta,
        }),
        (Topic::GetRejected | Topic::UpdateRejected, _, Some(code)) => {
            Ok(Inbound::Rejected { topic, code })
        }
        (Topic::Update | Topic::Get, _, _) => Err(ShadowError::UnexpectedTopic(topic)),
        _ => Err(malformed),
    }
}

/// Concatenates topic parts. The callers' parts are bounded (thing names by [`MAX_THING_NAME`], the
/// rest are constants) so that they always fit [`MAX_TOPIC`]. Built by hand rather than with `write!`
/// because `core::fmt` would cost over a kilobyte of flash for this alone.
pub(crate) fn join(parts: &[&str]) -> String<MAX_TOPIC> {
    let mut topic = String::new();
    for part in parts {
        let _ = topic.push_str(part);
    }
    topic
}

#[derive(Serialize)]
struct ReportDoc {
    state: ReportedWrapper,
}

#[derive(Serialize)]
struct ReportedWrapper {
    reported: State,
}

/// Writes the `update` document `{"state":{"reported":{..}}}` into `buf`; returns its length.
pub fn encode_report(state: State, buf: &mut [u8]) -> Result<usize, ShadowError> {
    serde_json_core::to_slice(
        &ReportDoc {
            state: ReportedWrapper { reported: state },
        },
        buf,
    )
    .map_err(|_| ShadowError::BufferTooSmall)
}
