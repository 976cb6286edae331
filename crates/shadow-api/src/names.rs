//! Thing names, shadow names and the reserved `$aws/things/...` shadow topics.
//!
//! A device written for AWS IoT must reach Grove on exactly the topics it uses against AWS IoT Core, so this
//! module follows the AWS IoT Developer Guide, "Device Shadow MQTT topics" (`device-shadow-mqtt.md`):
//!
//! | ShadowTopicPrefix                               | shadow type              |
//! |-------------------------------------------------|--------------------------|
//! | `$aws/things/{thingName}/shadow`                | unnamed (classic) shadow |
//! | `$aws/things/{thingName}/shadow/name/{shadowName}` | named shadow          |
//!
//! A request is the prefix followed by `/get`, `/update` or `/delete`; the service answers on
//! `{op}/accepted` and `{op}/rejected`, and publishes `update/delta` and `update/documents` after an accepted
//! update. Names are validated as the Device Shadow REST API validates them (`API_GetThingShadow`,
//! `API_UpdateThingShadow`): thing names 1 to 128 characters and shadow names 1 to 64 characters, both matching
//! `[a-zA-Z0-9:_-]+`.
//!
//! Everything here is pure: parsing borrows from the topic string and never allocates; only building a
//! response topic allocates the returned `String`.

use std::fmt;

/// Longest thing name AWS accepts ("Length: 1 - 128", `API_GetThingShadow` request parameters).
pub const MAX_THING_NAME_LEN: usize = 128;

/// Longest shadow name AWS accepts ("Length: 1 - 64", `API_GetThingShadow` request parameters).
pub const MAX_SHADOW_NAME_LEN: usize = 64;

/// Topic filters that match every shadow request (and nothing the gateway itself publishes), for subscribing
/// the shadow service on the broker. The single-level wildcard in the last position keeps the responses
/// (`.../get/accepted` and so on, one level deeper) out of the subscription.
pub const REQUEST_FILTERS: [&str; 2] = ["$aws/things/+/shadow/+", "$aws/things/+/shadow/name/+/+"];

const THINGS_PREFIX: &str = "$aws/things/";

/// Why a thing or shadow name is not one AWS would accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty; AWS requires at least one character.
    #[error("name is empty")]
    Empty,
    /// The name is longer than AWS allows for this kind of name.
    #[error("name is {len} characters long; the maximum is {max}")]
    TooLong {
        /// Length of the rejected name in bytes (all allowed characters are one byte).
        len: usize,
        /// The limit for this kind of name.
        max: usize,
    },
    /// The name contains a character outside `[a-zA-Z0-9:_-]`.
    #[error("name contains {found:?}; only a-z, A-Z, 0-9, ':', '_' and '-' are allowed")]
    InvalidCharacter {
        /// The first offending character.
        found: char,
    },
}

/// Why a topic is not a shadow request the service should answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The topic is not of the form `$aws/things/{thing}/shadow/...{op}` at all.
    #[error("not a shadow request topic")]
    NotShadowTopic,
    /// The topic has the shadow form but ends in something other than `get`, `update` or `delete`
    /// (for example a client publishing on a response topic).
    #[error("unknown shadow operation")]
    UnknownOperation,
    /// The thing name segment is not a valid AWS thing name.
    #[error("invalid thing name: {0}")]
    InvalidThingName(NameError),
    /// The shadow name segment is not a valid AWS shadow name.
    #[error("invalid shadow name: {0}")]
    InvalidShadowName(NameError),
}

/// Checks a thing name against AWS's rule: 1 to 128 characters of `[a-zA-Z0-9:_-]`.
pub fn validate_thing_name(name: &str) -> Result<(), NameError> {
    validate(name, MAX_THING_NAME_LEN)
}

/// Checks a shadow name against AWS's rule: 1 to 64 characters of `[a-zA-Z0-9:_-]`.
pub fn validate_shadow_name(name: &str) -> Result<(), NameError> {
    validate(name, MAX_SHADOW_NAME_LEN)
}

// The pattern is four ASCII classes, so a byte check is clearer and cheaper than pulling in the regex crate
// for one fixed expression on the hot path of every shadow request.
fn validate(name: &str, max: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if let Some(found) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-')))
    {
        return Err(NameError::InvalidCharacter { found });
    }
    if name.len() > max {
        return Err(NameError::TooLong {
            len: name.len(),
            max,
        });
    }
    Ok(())
}

/// The three shadow request operations ("Device Shadow MQTT topics": `/get`, `/update`, `/delete`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `ShadowTopicPrefix/get`: return the shadow document.
    Get,
    /// `ShadowTopicPrefix/update`: create or update the shadow.
    Update,
    /// `ShadowTopicPrefix/delete`: delete the shadow.
    Delete,
}

impl Operation {
    /// The topic segment of this operation.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Get => "get",
            Operation::Update => "update",
            Operation::Delete => "delete",
        }
    }

    /// The response published when this operation succeeds.
    pub fn accepted(self) -> Response {
        match self {
            Operation::Get => Response::GetAccepted,
            Operation::Update => Response::UpdateAccepted,
            Operation::Delete => Response::DeleteAccepted,
        }
    }

    /// The response published when this operation fails.
    pub fn rejected(self) -> Response {
        match self {
            Operation::Get => Response::GetRejected,
            Operation::Update => Response::UpdateRejected,
            Operation::Delete => Response::DeleteRejected,
        }
    }

    fn parse(segment: &str) -> Option<Operation> {
        match segment {
            "get" => Some(Operation::Get),
            "update" => Some(Operation::Update),
            "delete" => Some(Operation::Delete),
            _ => None,
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every topic the shadow service publishes on, relative to the shadow's topic prefix
/// ("Device Shadow MQTT topics").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Response {
    /// `/get/accepted`: the shadow document.
    GetAccepted,
    /// `/get/rejected`: an error document.
    GetRejected,
    /// `/update/accepted`: the accepted request state with its metadata.
    UpdateAccepted,
    /// `/update/rejected`: an error document.
    UpdateRejected,
    /// `/update/delta`: the desired fields that differ from reported.
    UpdateDelta,
    /// `/update/documents`: the previous and current shadow after every accepted update.
    UpdateDocuments,
    /// `/delete/accepted`: version and timestamp of the deleted shadow.
    DeleteAccepted,
    /// `/delete/rejected`: an error document.
    DeleteRejected,
}

impl Response {
    /// The topic stub appended to the shadow topic prefix.
    pub fn suffix(self) -> &'static str {
        match self {
            Response::GetAccepted => "get/accepted",
            Response::GetRejected => "get/rejected",
            Response::UpdateAccepted => "update/accepted",
            Response::UpdateRejected => "update/rejected",
            Response::UpdateDelta => "update/delta",
            Response::UpdateDocuments => "update/documents",
            Response::DeleteAccepted => "delete/accepted",
            Response::DeleteRejected => "delete/rejected",
        }
    }
}

/// A parsed shadow request topic, borrowing its names from the topic string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestTopic<'a> {
    /// The thing the shadow belongs to.
    pub thing: &'a str,
    /// The shadow's name, or `None` for the classic (unnamed) shadow.
    pub shadow: Option<&'a str>,
    /// The requested operation.
    pub op: Operation,
}

impl<'a> RequestTopic<'a> {
    /// Parses `$aws/things/{thing}/shadow/{op}` or `$aws/things/{thing}/shadow/name/{shadow}/{op}`,
    /// validating both names as AWS does.
    pub fn parse(topic: &'a str) -> Result<Self, TopicError> {
        let rest = topic
            .strip_prefix(THINGS_PREFIX)
            .ok_or(TopicError::NotShadowTopic)?;
        // Thing and shadow names cannot contain '/', so splitting on it is unambiguous.
        let mut segments = rest.split('/');
        let (thing, shadow_kw) = match (segments.next(), segments.next()) {
            (Some(thing), Some(kw)) => (thing, kw),
            _ => return Err(TopicError::NotShadowTopic),
        };
        if shadow_kw != "shadow" {
            return Err(TopicError::NotShadowTopic);
        }
        let first = segments.next().ok_or(TopicError::NotShadowTopic)?;
        let (shadow, op) = if first == "name" {
            match (segments.next(), segments.next()) {
                (Some(shadow), Some(op)) => (Some(shadow), op),
                _ => return Err(TopicError::NotShadowTopic),
            }
        } else {
            (None, first)
        };
        if segments.next().is_some() {
            // `.../get/accepted` and friends: a response topic, not a request.
            return Err(TopicError::UnknownOperation);
        }
        let op = Operation::parse(op).ok_or(TopicError::UnknownOperation)?;
        validate_thing_name(thing).map_err(TopicError::InvalidThingName)?;
        if let Some(shadow) = shadow {
            validate_shadow_name(shadow).map_err(TopicError::InvalidShadowName)?;
        }
        Ok(RequestTopic { thing, shadow, op })
    }

    /// The name AWS quotes in its 404 message, "No shadow exists with name: '...'": the shadow name for a
    /// named shadow, the thing name for the classic shadow (both wordings appear in the AWS IoT Developer
    /// Guide: "Simulating Device Shadow service communications" shows `'simShadow1'` for a named shadow, and
    /// the AWS SDKs' tests show the thing name for the classic one).
    pub fn not_found_name(&self) -> &'a str {
        self.shadow.unwrap_or(self.thing)
    }

    /// The topic of one of this shadow's responses.
    pub fn response(&self, response: Response) -> String {
        response_topic(self.thing, self.shadow, response)
    }

    /// The topic this request's operation is acknowledged on.
    pub fn accepted(&self) -> String {
        self.response(self.op.accepted())
    }

    /// The topic this request's operation is rejected on.
    pub fn rejected(&self) -> String {
        self.response(self.op.rejected())
    }
}

/// Builds `ShadowTopicPrefix/{response}` for a classic (`shadow: None`) or named shadow.
///
/// The names are taken as given: callers pass names that came out of [`RequestTopic::parse`] or were
/// checked with [`validate_thing_name`] / [`validate_shadow_name`].
pub fn response_topic(thing: &str, shadow: Option<&str>, response: Response) -> String {
    let suffix = response.suffix();
    match shadow {
        None => format!("{THINGS_PREFIX}{thing}/shadow/{suffix}"),
        Some(name) => format!("{THINGS_PREFIX}{thing}/shadow/name/{name}/{suffix}"),
    }
}

/// Builds the request topic `ShadowTopicPrefix/{op}`, as a device would publish it.
pub fn request_topic(thing: &str, shadow: Option<&str>, op: Operation) -> String {
    let op = op.as_str();
    match shadow {
        None => format!("{THINGS_PREFIX}{thing}/shadow/{op}"),
        Some(name) => format!("{THINGS_PREFIX}{thing}/shadow/name/{name}/{op}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One helper for every topic case: `expected` is `Ok((thing, shadow, op))` or the error.
    #[track_caller]
    fn check_parse(topic: &str, expected: Result<(&str, Option<&str>, Operation), TopicError>) {
        let got = RequestTopic::parse(topic).map(|t| (t.thing, t.shadow, t.op));
        assert_eq!(got, expected, "topic {topic:?}");
    }

    #[test]
    fn parses_request_topics() {
        use Operation::*;
        use TopicError::*;
        check_parse("$aws/things/lamp/shadow/get", Ok(("lamp", None, Get)));
        check_parse("$aws/things/lamp/shadow/update", Ok(("lamp", None, Update)));
        check_parse("$aws/things/lamp/shadow/delete", Ok(("lamp", None, Delete)));
        check_parse(
            "$aws/things/lamp/shadow/name/cfg/get",
            Ok(("lamp", Some("cfg"), Get)),
        );
        check_parse(
            "$aws/things/lamp/shadow/name/cfg/update",
            Ok(("lamp", Some("cfg"), Update)),
        );
        check_parse(
            "$aws/things/lamp/shadow/name/cfg/delete",
            Ok(("lamp", Some("cfg"), Delete)),
        );
        check_parse(
            "$aws/things/a:b_c-D9/shadow/name/x:y_z-0/get",
            Ok(("a:b_c-D9", Some("x:y_z-0"), Get)),
        );
        // A shadow may itself be called "name" or "shadow"; the position decides.
        check_parse(
            "$aws/things/name/shadow/name/shadow/update",
            Ok(("name", Some("shadow"), Update)),
        );
        // Response topics and unknown operations are not requests.
        check_parse(
            "$aws/things/lamp/shadow/get/accepted",
            Err(UnknownOperation),
        );
        check_parse(
            "$aws/things/lamp/shadow/update/delta",
            Err(UnknownOperation),
        );
        check_parse(
            "$aws/things/lamp/shadow/name/cfg/update/documents",
            Err(UnknownOperation),
        );
        check_parse("$aws/things/lamp/shadow/list", Err(UnknownOperation));
        check_parse("$aws/things/lamp/shadow/GET", Err(UnknownOperation));
        check_parse(
            "$aws/things/lamp/shadow/name/cfg/patch",
            Err(UnknownOperation),
        );
        // Not the shadow topic family at all.
        check_parse("$aws/things/lamp/jobs/get", Err(NotShadowTopic));
        check_parse("$aws/things/lamp/shadow", Err(NotShadowTopic));
        check_parse("$aws/things/lamp", Err(NotShadowTopic));
        check_parse("$aws/things/", Err(NotShadowTopic));
        check_parse("aws/things/lamp/shadow/get", Err(NotShadowTopic));
        check_parse("things/lamp/shadow/get", Err(NotShadowTopic));
        check_parse("", Err(NotShadowTopic));
        check_parse("$aws/things/lamp/shadow/name/cfg", Err(NotShadowTopic));
        check_parse(
            "$aws/things/lamp/shadow/other/cfg/get",
            Err(UnknownOperation),
        );
        check_parse("$aws/things/lamp/shadow/name", Err(NotShadowTopic));
        // Names are validated as AWS validates them.
        check_parse(
            "$aws/things//shadow/get",
            Err(InvalidThingName(NameError::Empty)),
        );
        check_parse(
            "$aws/things/la mp/shadow/get",
            Err(InvalidThingName(NameError::InvalidCharacter { found: ' ' })),
        );
        check_parse(
            "$aws/things/+/shadow/get",
            Err(InvalidThingName(NameError::InvalidCharacter { found: '+' })),
        );
        check_parse(
            "$aws/things/lamp/shadow/name//get",
            Err(InvalidShadowName(NameError::Empty)),
        );
        check_parse(
            "$aws/things/lamp/shadow/name/c.fg/get",
            Err(InvalidShadowName(NameError::InvalidCharacter {
                found: '.',
            })),
        );
        check_parse(
            "$aws/things/lamp/shadow/name/$cfg/get",
            Err(InvalidShadowName(NameError::InvalidCharacter {
                found: '$',
            })),
        );
    }

    #[test]
    fn name_limits_are_awss() {
        let thing_max = "t".repeat(MAX_THING_NAME_LEN);
        let thing_over = "t".repeat(MAX_THING_NAME_LEN + 1);
        let shadow_max = "s".repeat(MAX_SHADOW_NAME_LEN);
        let shadow_over = "s".repeat(MAX_SHADOW_NAME_LEN + 1);
        type Validate = fn(&str) -> Result<(), NameError>;
        let cases: [(&str, Validate, Result<(), NameError>); 10] = [
            (&thing_max, validate_thing_name, Ok(())),
            (
                &thing_over,
                validate_thing_name,
                Err(NameError::TooLong { len: 129, max: 128 }),
            ),
            (&shadow_max, validate_shadow_name, Ok(())),
            (
                &shadow_over,
                validate_shadow_name,
                Err(NameError::TooLong { len: 65, max: 64 }),
            ),
            (&shadow_over, validate_thing_name, Ok(())),
            ("", validate_thing_name, Err(NameError::Empty)),
            ("", validate_shadow_name, Err(NameError::Empty)),
            ("Az09:_-", validate_shadow_name, Ok(())),
            (
                "é",
                validate_thing_name,
                Err(NameError::InvalidCharacter { found: 'é' }),
            ),
            (
                "a/b",
                validate_shadow_name,
                Err(NameError::InvalidCharacter { found: '/' }),
            ),
        ];
        for (name, validate, expected) in cases {
            assert_eq!(validate(name), expected, "name {name:?}");
        }
        let topic = format!("$aws/things/{thing_max}/shadow/name/{shadow_max}/get");
        assert!(RequestTopic::parse(&topic).is_ok());
        let topic = format!("$aws/things/{thing_over}/shadow/get");
        assert_eq!(
            RequestTopic::parse(&topic),
            Err(TopicError::InvalidThingName(NameError::TooLong {
                len: 129,
                max: 128
            }))
        );
    }

    #[test]
    fn builds_response_topics() {
        use Response::*;
        let cases = [
            (None, GetAccepted, "$aws/things/lamp/shadow/get/accepted"),
            (None, GetRejected, "$aws/things/lamp/shadow/get/rejected"),
            (
                None,
                UpdateAccepted,
                "$aws/things/lamp/shadow/update/accepted",
            ),
            (
                None,
                UpdateRejected,
                "$aws/things/lamp/shadow/update/rejected",
            ),
            (None, UpdateDelta, "$aws/things/lamp/shadow/update/delta"),
            (
                None,
                UpdateDocuments,
                "$aws/things/lamp/shadow/update/documents",
            ),
            (
                None,
                DeleteAccepted,
                "$aws/things/lamp/shadow/delete/accepted",
            ),
            (
                None,
                DeleteRejected,
                "$aws/things/lamp/shadow/delete/rejected",
            ),
            (
                Some("cfg"),
                GetAccepted,
                "$aws/things/lamp/shadow/name/cfg/get/accepted",
            ),
            (
                Some("cfg"),
                UpdateDelta,
                "$aws/things/lamp/shadow/name/cfg/update/delta",
            ),
            (
                Some("cfg"),
                UpdateDocuments,
                "$aws/things/lamp/shadow/name/cfg/update/documents",
            ),
            (
                Some("cfg"),
                DeleteRejected,
                "$aws/things/lamp/shadow/name/cfg/delete/rejected",
            ),
        ];
        for (shadow, response, expected) in cases {
            assert_eq!(response_topic("lamp", shadow, response), expected);
        }
    }

    #[test]
    fn request_topic_round_trips_and_routes_replies() {
        for shadow in [None, Some("cfg")] {
            for op in [Operation::Get, Operation::Update, Operation::Delete] {
                let topic = request_topic("lamp", shadow, op);
                let parsed = RequestTopic::parse(&topic).expect("a built request topic parses");
                assert_eq!(
                    (parsed.thing, parsed.shadow, parsed.op),
                    ("lamp", shadow, op)
                );
                assert_eq!(parsed.accepted(), format!("{topic}/accepted"));
                assert_eq!(parsed.rejected(), format!("{topic}/rejected"));
                assert_eq!(parsed.not_found_name(), shadow.unwrap_or("lamp"));
            }
        }
    }

    /// The subscription filters must match every request topic and none of the gateway's own responses,
    /// so the service never consumes what it publishes.
    #[test]
    fn request_filters_match_requests_only() {
        fn matches(filter: &str, topic: &str) -> bool {
            let f: Vec<&str> = filter.split('/').collect();
            let t: Vec<&str> = topic.split('/').collect();
            f.len() == t.len() && f.iter().zip(&t).all(|(f, t)| *f == "+" || f == t)
        }
        let matched = |topic: &str| REQUEST_FILTERS.iter().any(|f| matches(f, topic));
        for shadow in [None, Some("cfg")] {
            for op in [Operation::Get, Operation::Update, Operation::Delete] {
                assert!(matched(&request_topic("lamp", shadow, op)));
                assert!(!matched(&response_topic("lamp", shadow, op.accepted())));
                assert!(!matched(&response_topic("lamp", shadow, op.rejected())));
            }
            assert!(!matched(&response_topic(
                "lamp",
                shadow,
                Response::UpdateDelta
            )));
            assert!(!matched(&response_topic(
                "lamp",
                shadow,
                Response::UpdateDocuments
            )));
        }
    }
}
