//! Where the answer to a sync invocation goes, and whether it may go there (pure).
//!
//! A request on `$grove/functions/{name}/invoke` names its reply topic: the MQTT 5 response topic,
//! or else the `replyTo` of a JSON envelope (MQTT 3.1.1 has no response topic). The functions
//! component publishes the answer there on the bus, which no policy checks, so the reply topic
//! would otherwise let a caller publish wherever it likes: another thing's shadow, another
//! device's command topic, or a wildcard "topic".
//!
//! Two checks, in two places, because a request reaches the component by two roads:
//! - the connection layer, which alone knows the caller's policy, refuses a device's request whose
//!   reply topic the device could not publish to itself, or that [`check`] refuses (before the
//!   router sees it, like any denied publish);
//! - the functions component refuses, whatever road the request took (a rule's republish, another
//!   component), a reply topic that [`check`] refuses: such an answer is never published.
//!
//! Both find the reply topic with [`reply_topic`], so they cannot disagree on which one counts.

use serde::Deserialize;

/// The sync invocation filter, `$grove/functions/+/invoke`, as its two fixed ends.
const INVOKE_PREFIX: &str = "$grove/functions/";
const INVOKE_SUFFIX: &str = "/invoke";

/// Why a request has no usable reply topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// Neither an MQTT 5 response topic nor a JSON envelope with a string `replyTo`.
    #[error("no MQTT 5 response topic and no replyTo in a JSON envelope")]
    Missing,
    /// Not a valid MQTT topic name (MQTT §4.7.3): empty, a wildcard, or NUL.
    #[error("reply topic {0:?} is not a valid topic name")]
    Invalid(String),
    /// A `$` topic: reserved for the gateway's own services (shadows, functions, rules), which an
    /// answer must never pose as a request to.
    #[error("reply topic {0:?} is reserved (it starts with `$`)")]
    Reserved(String),
}

/// Whether `topic` is a sync invocation request (`$grove/functions/{target}/invoke`).
pub fn is_invoke_topic(topic: &str) -> bool {
    topic
        .strip_prefix(INVOKE_PREFIX)
        .and_then(|t| t.strip_suffix(INVOKE_SUFFIX))
        .is_some_and(|target| !target.is_empty() && !target.contains('/'))
}

/// The only field of the envelope this module reads; serde skips the rest without building it.
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "replyTo")]
    reply_to: Option<String>,
}

/// The reply topic of a request: its MQTT 5 response topic if it has one, else the `replyTo` of
/// its JSON envelope; checked with [`check`].
pub fn reply_topic(response_topic: Option<&str>, payload: &[u8]) -> Result<String, ReplyError> {
    let topic = match response_topic {
        Some(t) => t.to_owned(),
        None => serde_json::from_slice::<Envelope>(payload)
            .ok()
            .and_then(|e| e.reply_to)
            .ok_or(ReplyError::Missing)?,
    };
    check(&topic)?;
    Ok(topic)
}

/// A reply topic must be a valid topic name and not a reserved (`$`) one.
pub fn check(topic: &str) -> Result<(), ReplyError> {
    if topic.is_empty() || topic.contains(['+', '#', '\0']) || topic.len() > usize::from(u16::MAX) {
        return Err(ReplyError::Invalid(topic.to_owned()));
    }
    if topic.starts_with('$') {
        return Err(ReplyError::Reserved(topic.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoke_topics_are_one_level_targets() {
        for (topic, is) in [
            ("$grove/functions/echo/invoke", true),
            ("$grove/functions/echo:2/invoke", true),
            ("$grove/functions//invoke", false),
            ("$grove/functions/a/b/invoke", false),
            ("$grove/functions/echo/event", false),
            ("grove/functions/echo/invoke", false),
        ] {
            assert_eq!(is_invoke_topic(topic), is, "{topic}");
        }
    }

    #[test]
    fn the_response_topic_wins_and_every_reply_topic_is_checked() {
        let envelope = br#"{"replyTo": "answers/a", "payload": 1}"#;
        for (response, payload, expected) in [
            (Some("answers/5"), &envelope[..], Ok("answers/5")),
            (None, &envelope[..], Ok("answers/a")),
            (None, &b"not json"[..], Err(ReplyError::Missing)),
            (None, &br#"{"payload": 1}"#[..], Err(ReplyError::Missing)),
            (None, &br#"{"replyTo": 7}"#[..], Err(ReplyError::Missing)),
            (
                Some("a/#"),
                &envelope[..],
                Err(ReplyError::Invalid("a/#".into())),
            ),
            (Some("+"), &b""[..], Err(ReplyError::Invalid("+".into()))),
            (
                None,
                &br#"{"replyTo": ""}"#[..],
                Err(ReplyError::Invalid(String::new())),
            ),
            (
                None,
                &br#"{"replyTo": "a\u0000b"}"#[..],
                Err(ReplyError::Invalid("a\0b".into())),
            ),
            (
                None,
                &br#"{"replyTo": "$aws/things/B/shadow/delete"}"#[..],
                Err(ReplyError::Reserved("$aws/things/B/shadow/delete".into())),
            ),
        ] {
            assert_eq!(
                reply_topic(response, payload),
                expected.map(str::to_owned),
                "{response:?} {}",
                String::from_utf8_lossy(payload)
            );
        }
    }
}
