//! The functions' topics and envelopes, pure: the invoke and event topics and their targets, a
//! sync invocation's request (where to answer, with which correlation, what payload) and its
//! answer, and the dead-letter message of an async event.
//!
//! Sync invocation: a publish to `$grove/functions/{name}/invoke` (or `{name}:{qualifier}`),
//! answered on the request's MQTT 5 response topic with its correlation data, or, for MQTT 3.1.1,
//! on the `replyTo` topic of a JSON envelope `{"replyTo": ..., "correlationId": ...,
//! "payload": ...}`. Answers are JSON envelopes ([`answer`], [`error_answer`]); errors are
//! answered too. A request without a valid reply topic (`grove_broker::reply`) is not invoked and
//! not answered.

use bytes::Bytes;
use serde_json::{json, Value};

use crate::routing::Qualifier;
use crate::runtime::Failure;
use crate::service::{FunctionError, Invoked};
use grove_broker::bus::{Message, Outgoing};
use grove_broker::reply::{self, ReplyError};

/// The sync invocation filter.
pub const INVOKE_FILTER: &str = "$grove/functions/+/invoke";

/// The async invocation filter (the rules' `function` action publishes there; devices may too).
pub const EVENT_FILTER: &str = "$grove/functions/+/event";

/// The topic of a sync invocation of `target` (`name`, optionally `name:qualifier`).
pub fn invoke_topic(target: &str) -> String {
    format!("$grove/functions/{target}/invoke")
}

/// The topic of an async event for `name` (optionally `name:qualifier`).
pub fn event_topic(target: &str) -> String {
    format!("$grove/functions/{target}/event")
}

/// The dead-letter topic of a function.
pub fn dlq_topic(name: &str) -> String {
    format!("$grove/functions/{name}/dlq")
}

/// The function and qualifier of `$grove/functions/{name}[:{qualifier}]{suffix}`.
pub fn parse_target(topic: &str, suffix: &str) -> Result<(String, Qualifier), String> {
    let target = topic
        .strip_prefix("$grove/functions/")
        .and_then(|t| t.strip_suffix(suffix))
        .ok_or_else(|| format!("{topic:?} is not a functions topic"))?;
    match target.split_once(':') {
        None => Ok((target.to_owned(), Qualifier::Latest)),
        Some((name, q)) => Qualifier::parse(q)
            .map(|q| (name.to_owned(), q))
            .map_err(|e| e.to_string()),
    }
}

/// A parsed sync request: where to answer, and what to invoke with which payload.
#[derive(Debug)]
pub(crate) struct SyncRequest {
    /// The function and qualifier, or why the topic names none (answered as a bad request).
    pub(crate) target: Result<(String, Qualifier), String>,
    reply_to: String,
    correlation_id: Option<Value>,
    correlation_data: Option<Bytes>,
    /// The payload the handler gets (an envelope's `payload`).
    pub(crate) payload: Bytes,
    hops: u32,
}

impl SyncRequest {
    /// Refuses a request without a valid reply topic (see [`grove_broker::reply`]): it is not
    /// invoked, and nothing is published.
    pub(crate) fn parse(m: &Message) -> Result<SyncRequest, ReplyError> {
        let target = parse_target(&m.topic, "/invoke");
        let reply_to = reply::reply_topic(m.response_topic.as_deref(), &m.payload)?;
        if m.response_topic.is_some() {
            return Ok(SyncRequest {
                target,
                reply_to,
                correlation_id: None,
                correlation_data: m.correlation_data.clone(),
                payload: m.payload.clone(),
                hops: m.hops,
            });
        }
        // `reply_topic` found a `replyTo` in it, so it is a JSON envelope.
        let envelope: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
        let payload = match &envelope["payload"] {
            Value::String(s) => Bytes::from(s.clone()),
            Value::Null => Bytes::new(),
            other => Bytes::from(other.to_string()),
        };
        Ok(SyncRequest {
            target,
            reply_to,
            correlation_id: envelope.get("correlationId").cloned(),
            correlation_data: m.correlation_data.clone(),
            payload,
            hops: m.hops,
        })
    }

    /// The answer to publish (with its MQTT 5 correlation data): `body` (see [`answer`]) with the
    /// envelope's `correlationId`, on the reply topic, one hop deeper than the request.
    pub(crate) fn reply(self, mut body: Value) -> (Outgoing, Option<Bytes>) {
        if let Some(id) = self.correlation_id {
            body["correlationId"] = id;
        }
        let msg = Outgoing {
            topic: self.reply_to,
            payload: Bytes::from(body.to_string()),
            qos: 1,
            retain: false,
            hops: self.hops + 1,
        };
        (msg, self.correlation_data)
    }
}

/// The answer to a request whose topic names no function.
pub(crate) fn bad_request(message: &str) -> Value {
    json!({"status": "error", "error": {"kind": "bad_request", "message": message}})
}

/// The answer envelope of an invocation: `{"status": "ok", "function", "version", "result",
/// "durationUs"}` or `{"status": "error", ..., "error": {"kind", "message"}}`. `result` is the
/// handler's body, as JSON when it is JSON, else as a string.
pub fn answer(invoked: &Invoked) -> Value {
    let mut doc = json!({
        "function": invoked.name,
        "version": invoked.version,
        "durationUs": invoked.outcome.duration.as_micros() as u64,
    });
    match &invoked.outcome.result {
        Ok(body) => {
            doc["status"] = "ok".into();
            doc["result"] = serde_json::from_slice(body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()));
        }
        Err(f) => {
            doc["status"] = "error".into();
            doc["error"] = failure_json(f);
        }
    }
    doc
}

/// The answer envelope of an invocation that could not run.
pub fn error_answer(e: &FunctionError) -> Value {
    let kind = match e {
        FunctionError::NotFound(_) => "not_found",
        FunctionError::Routing(_) => "routing",
        FunctionError::LoadFailed { .. } => "load_failed",
        _ => "unavailable",
    };
    json!({"status": "error", "error": {"kind": kind, "message": e.to_string()}})
}

/// A failed invocation as answers and dead letters carry it.
pub(crate) fn failure_json(f: &Failure) -> Value {
    json!({"kind": f.kind.as_str(), "message": f.message})
}

/// The dead-letter message of an event of `name` on `topic`: the function, the version that last
/// failed it (if one ran), the attempts made, the error, and the event (its payload as a string
/// when it is UTF-8, else base64).
pub(crate) fn dead_letter(
    name: &str,
    version: Option<u64>,
    attempts: usize,
    error: &Value,
    (topic, payload): (&str, &[u8]),
) -> Value {
    use base64::Engine as _;
    let event = match std::str::from_utf8(payload) {
        Ok(s) => json!({"topic": topic, "payload": s}),
        Err(_) => json!({
            "topic": topic,
            "payloadBase64": base64::engine::general_purpose::STANDARD.encode(payload),
        }),
    };
    json!({
        "function": name,
        "version": version,
        "attempts": attempts,
        "error": error,
        "event": event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{FailureKind, Outcome};
    use std::time::Duration;

    fn request(topic: &str, response_topic: Option<&str>, payload: &str) -> Message {
        Message {
            topic: topic.to_owned(),
            payload: Bytes::from(payload.to_owned()),
            origin: None,
            hops: 2,
            response_topic: response_topic.map(str::to_owned),
            correlation_data: response_topic.map(|_| Bytes::from_static(b"cd")),
        }
    }

    #[test]
    fn targets_name_a_function_and_an_optional_qualifier() {
        for (topic, expected) in [
            (
                "$grove/functions/echo/invoke",
                Ok(("echo", Qualifier::Latest)),
            ),
            (
                "$grove/functions/echo:3/invoke",
                Ok(("echo", Qualifier::Version(3))),
            ),
            (
                "$grove/functions/echo:live/invoke",
                Ok(("echo", Qualifier::Alias("live".into()))),
            ),
            ("$grove/functions/echo:0/invoke", Err(())),
            ("$grove/functions/echo/event", Err(())),
            ("other/echo/invoke", Err(())),
        ] {
            let parsed = parse_target(topic, "/invoke");
            match expected {
                Ok((name, q)) => assert_eq!(parsed, Ok((name.to_owned(), q)), "{topic}"),
                Err(()) => assert!(parsed.is_err(), "{topic}: {parsed:?}"),
            }
        }
    }

    #[test]
    fn an_mqtt5_request_is_answered_on_its_response_topic_with_its_correlation_data() {
        let m = request(
            "$grove/functions/echo/invoke",
            Some("me/answers"),
            "{\"a\":1}",
        );
        let r = SyncRequest::parse(&m).expect("a request");
        assert_eq!(r.target, Ok(("echo".to_owned(), Qualifier::Latest)));
        assert_eq!(r.payload, Bytes::from_static(b"{\"a\":1}"));
        let (out, correlation) = r.reply(json!({"status": "ok"}));
        assert_eq!(out.topic, "me/answers");
        assert_eq!(out.hops, 3);
        assert_eq!(out.qos, 1);
        assert_eq!(correlation, Some(Bytes::from_static(b"cd")));
        let body: Value = serde_json::from_slice(&out.payload).expect("JSON");
        assert_eq!(body, json!({"status": "ok"}));
    }

    #[test]
    fn an_mqtt311_envelope_gives_reply_topic_correlation_id_and_payload() {
        for (payload, handler_gets) in [
            (json!("text"), &b"text"[..]),
            (json!({"t": 21}), &b"{\"t\":21}"[..]),
            (Value::Null, &b""[..]),
        ] {
            let envelope = json!({"replyTo": "me/a", "correlationId": 7, "payload": payload});
            let m = request("$grove/functions/f:2/invoke", None, &envelope.to_string());
            let r = SyncRequest::parse(&m).expect("a request");
            assert_eq!(r.target, Ok(("f".to_owned(), Qualifier::Version(2))));
            assert_eq!(&r.payload[..], handler_gets);
            let (out, correlation) = r.reply(bad_request("x"));
            assert_eq!(out.topic, "me/a");
            assert_eq!(correlation, None);
            let body: Value = serde_json::from_slice(&out.payload).expect("JSON");
            assert_eq!(body["correlationId"], 7);
            assert_eq!(body["error"]["kind"], "bad_request");
        }
    }

    #[test]
    fn a_request_without_a_usable_reply_topic_is_refused() {
        for m in [
            request("$grove/functions/f/invoke", None, "{\"payload\": 1}"),
            request("$grove/functions/f/invoke", None, "not json"),
            request("$grove/functions/f/invoke", Some("$aws/x"), ""),
            request("$grove/functions/f/invoke", Some("a/#"), ""),
        ] {
            assert!(SyncRequest::parse(&m).is_err(), "{m:?}");
        }
        // A bad target is still answered (as a bad request), since the reply topic is good.
        let m = request("$grove/functions/f:0/invoke", Some("me/a"), "");
        assert!(SyncRequest::parse(&m).expect("answerable").target.is_err());
    }

    #[test]
    fn answers_carry_the_body_as_json_or_text_and_failures_by_kind() {
        let invoked = |result| Invoked {
            name: "f".into(),
            version: 2,
            outcome: Outcome {
                result,
                duration: Duration::from_micros(1500),
                denied: 0,
            },
        };
        let ok = answer(&invoked(Ok(b"{\"x\":1}".to_vec())));
        assert_eq!(
            ok,
            json!({"status": "ok", "function": "f", "version": 2, "durationUs": 1500, "result": {"x": 1}})
        );
        assert_eq!(answer(&invoked(Ok(b"plain".to_vec())))["result"], "plain");
        let failed = answer(&invoked(Err(Failure {
            kind: FailureKind::Timeout,
            message: "too slow".into(),
        })));
        assert_eq!(failed["status"], "error");
        assert_eq!(
            failed["error"],
            json!({"kind": "timeout", "message": "too slow"})
        );
        let e = error_answer(&FunctionError::NotFound("g".into()));
        assert_eq!(e["error"]["kind"], "not_found");
        assert_eq!(
            error_answer(&FunctionError::Closed)["error"]["kind"],
            "unavailable"
        );
    }

    #[test]
    fn dead_letters_carry_text_payloads_as_text_and_binary_ones_as_base64() {
        let error = json!({"kind": "queue_full"});
        let text = dead_letter("f", Some(3), 3, &error, ("t/1", b"hi"));
        assert_eq!(
            text,
            json!({"function": "f", "version": 3, "attempts": 3, "error": {"kind": "queue_full"},
                   "event": {"topic": "t/1", "payload": "hi"}})
        );
        let binary = dead_letter("f", None, 0, &error, ("t/1", &[0xff, 0x00]));
        assert_eq!(binary["version"], Value::Null);
        assert_eq!(binary["event"]["payloadBase64"], "/wA=");
    }
}
