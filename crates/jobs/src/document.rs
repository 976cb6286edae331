//! The Jobs device API's JSON documents: requests read, answers and notifications written (pure).
//!
//! Shapes from the AWS IoT Developer Guide, "Jobs device MQTT API operations"
//! (<https://docs.aws.amazon.com/iot/latest/developerguide/jobs-mqtt-api.html>) and "Jobs device
//! MQTT and HTTPS APIs and data types"
//! (<https://docs.aws.amazon.com/iot/latest/developerguide/jobs-mqtt-https-api.html>):
//! `JobExecution` (`jobId`, `thingName`, `jobDocument`, `status`, `statusDetails`, `queuedAt`,
//! `startedAt`, `lastUpdatedAt`, `versionNumber`, `executionNumber`), `JobExecutionState`
//! (`status`, `statusDetails`, `versionNumber`), `JobExecutionSummary` (`jobId`, `queuedAt`,
//! `startedAt`, `lastUpdatedAt`, `versionNumber`, `executionNumber`) and `ErrorResponse` (`code`,
//! `message`, `clientToken`, `timestamp`, `executionState`). Every answer carries `timestamp` and
//! echoes the request's `clientToken`.
//!
//! Choices where the pages are loose:
//! - Times are Unix **seconds** ("`timestamp`: The time in seconds since the epoch"); the pages'
//!   examples print millisecond-looking numbers, but the devices' SDKs read these fields as
//!   seconds.
//! - `jobDocument` is the document as a JSON object (the AWS IoT Device SDKs' models type it as an
//!   object, and that is what devices parse), not a string.
//! - `notify`'s `jobs` maps a status to its summaries (`{"QUEUED": [...], "IN_PROGRESS": [...]}`,
//!   the SDKs' `JobExecutionsChangedEvent`), empty groups left out.
//! - `statusDetails` follows the data-plane API's constraints
//!   (<https://docs.aws.amazon.com/iot/latest/apireference/API_iot-jobs-data_UpdateJobExecution.html>):
//!   keys 1 to 128 characters of `[a-zA-Z0-9:_-]`, values 1 to 1,024 characters without control
//!   characters; Grove also bounds the number of pairs ([`MAX_DETAILS`]), so what one device can
//!   make the gateway keep per execution is bounded.
//! - An empty payload is an empty request (`mosquitto_pub -n`), not invalid JSON.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::machine::{
    ErrorCode, Execution, ExecutionView, Rejection, StartNext, Status, Update, EXECUTION_NUMBER,
    MAX_TIMEOUT_MINUTES,
};
use grove_shadow_api::token::token_field;

/// Most `statusDetails` pairs an execution keeps (Grove's bound; see the module doc).
pub const MAX_DETAILS: usize = 32;
/// Longest `statusDetails` key (AWS's).
pub const MAX_DETAIL_KEY: usize = 128;
/// Longest `statusDetails` value (AWS's).
pub const MAX_DETAIL_VALUE: usize = 1024;

/// A request's body and its client token.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The JSON object (empty for an empty payload).
    pub body: Map<String, Value>,
    /// Its `clientToken`, echoed in the answer.
    pub token: Option<String>,
}

/// Reads a request payload: `InvalidJson` if it is not a JSON object, `InvalidRequest` for a bad
/// `clientToken`.
pub fn request(payload: &[u8]) -> Result<Request, Rejection> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(Request {
            body: Map::new(),
            token: None,
        });
    }
    let body = match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(body)) => body,
        _ => {
            return Err(Rejection::new(
                ErrorCode::InvalidJson,
                "the request is not a UTF-8 encoded JSON object",
            ));
        }
    };
    match token_field(&body) {
        Ok(token) => {
            let token = token.map(str::to_owned);
            Ok(Request { body, token })
        }
        Err(e) => Err(Rejection::new(ErrorCode::InvalidRequest, e.to_string())),
    }
}

fn invalid(message: String) -> Rejection {
    Rejection::new(ErrorCode::InvalidRequest, message)
}

fn boolean(body: &Map<String, Value>, key: &str, default: bool) -> Result<bool, Rejection> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(invalid(format!("{key} must be true or false, not {v}"))),
    }
}

/// A non-negative integer field; `expectedVersion` is written as a string in AWS's own request
/// syntax (`"expectedVersion": "number"`), so digits in a string are taken too.
fn number(body: &Map<String, Value>, key: &str) -> Result<Option<u64>, Rejection> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
        Some(Value::String(s)) if s.parse::<u64>().is_ok() => Ok(s.parse().ok()),
        Some(v) => Err(invalid(format!("{key} must be a whole number, not {v}"))),
    }
}

fn step_timeout(body: &Map<String, Value>) -> Result<Option<u32>, Rejection> {
    match number(body, "stepTimeoutInMinutes")? {
        None => Ok(None),
        Some(m) if (1..=u64::from(MAX_TIMEOUT_MINUTES)).contains(&m) => Ok(Some(m as u32)),
        Some(m) => Err(invalid(format!(
            "stepTimeoutInMinutes {m}: from 1 to {MAX_TIMEOUT_MINUTES}"
        ))),
    }
}

fn details(body: &Map<String, Value>) -> Result<Option<BTreeMap<String, String>>, Rejection> {
    let map = match body.get("statusDetails") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(map)) => map,
        Some(v) => return Err(invalid(format!("statusDetails must be an object, not {v}"))),
    };
    if map.len() > MAX_DETAILS {
        return Err(invalid(format!(
            "statusDetails has {} pairs; the most is {MAX_DETAILS}",
            map.len()
        )));
    }
    let mut out = BTreeMap::new();
    for (key, value) in map {
        let key_ok = (1..=MAX_DETAIL_KEY).contains(&key.len())
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-'));
        if !key_ok {
            return Err(invalid(format!(
                "statusDetails key {key:?}: 1 to {MAX_DETAIL_KEY} characters of a-z, A-Z, 0-9, ':', '_', '-'"
            )));
        }
        let Value::String(value) = value else {
            return Err(invalid(format!("statusDetails.{key} must be a string")));
        };
        let chars = value.chars().count();
        if !(1..=MAX_DETAIL_VALUE).contains(&chars) || value.chars().any(char::is_control) {
            return Err(invalid(format!(
                "statusDetails.{key}: 1 to {MAX_DETAIL_VALUE} characters, no control characters"
            )));
        }
        out.insert(key.clone(), value.clone());
    }
    Ok(Some(out))
}

/// StartNextPendingJobExecution's request.
pub fn start_next(body: &Map<String, Value>) -> Result<StartNext, Rejection> {
    Ok(StartNext {
        details: details(body)?,
        step_timeout_minutes: step_timeout(body)?,
    })
}

/// DescribeJobExecution's request: the execution number, and whether to include the job
/// document ("Unless set to `false`, the response contains the job document").
pub fn describe(body: &Map<String, Value>) -> Result<(Option<u64>, bool), Rejection> {
    Ok((
        number(body, "executionNumber")?,
        boolean(body, "includeJobDocument", true)?,
    ))
}

/// What an update's answer includes: `executionState` and `jobDocument` (both false by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Include {
    /// `includeJobExecutionState`.
    pub state: bool,
    /// `includeJobDocument`.
    pub document: bool,
}

/// UpdateJobExecution's request ("`status` ... This must be specified on every update").
pub fn update(body: &Map<String, Value>) -> Result<(Update, Include), Rejection> {
    let status = match body.get("status") {
        Some(Value::String(s)) => Status::parse(s)
            .ok_or_else(|| invalid(format!("status {s:?} is not a job execution status")))?,
        _ => {
            return Err(invalid(
                "status is required (IN_PROGRESS, SUCCEEDED, FAILED or REJECTED)".into(),
            ))
        }
    };
    let update = Update {
        status,
        details: details(body)?,
        expected_version: number(body, "expectedVersion")?,
        execution_number: number(body, "executionNumber")?,
        step_timeout_minutes: step_timeout(body)?,
    };
    let include = Include {
        state: boolean(body, "includeJobExecutionState", false)?,
        document: boolean(body, "includeJobDocument", false)?,
    };
    Ok((update, include))
}

fn secs(ms: u64) -> u64 {
    ms / 1000
}

/// Adds `timestamp` (now) and the client token to an answer.
pub fn answer(mut doc: Map<String, Value>, token: Option<&str>, now: u64) -> Value {
    doc.insert("timestamp".into(), secs(now).into());
    if let Some(token) = token {
        doc.insert("clientToken".into(), token.into());
    }
    Value::Object(doc)
}

/// A `JobExecutionSummary`.
pub fn summary(e: &Execution) -> Value {
    let mut doc = Map::new();
    doc.insert("jobId".into(), e.job.clone().into());
    if let Some(at) = e.queued_at {
        doc.insert("queuedAt".into(), secs(at).into());
    }
    if let Some(at) = e.started_at {
        doc.insert("startedAt".into(), secs(at).into());
    }
    doc.insert("lastUpdatedAt".into(), secs(e.updated_at).into());
    doc.insert("versionNumber".into(), e.version.into());
    doc.insert("executionNumber".into(), EXECUTION_NUMBER.into());
    Value::Object(doc)
}

fn status_details(e: &Execution, doc: &mut Map<String, Value>) {
    if !e.details.is_empty() {
        doc.insert("statusDetails".into(), json!(e.details));
    }
}

/// A `JobExecutionState`.
pub fn state(e: &Execution) -> Value {
    let mut doc = Map::new();
    doc.insert(
        "status".into(),
        e.status.unwrap_or(Status::Queued).as_str().into(),
    );
    status_details(e, &mut doc);
    doc.insert("versionNumber".into(), e.version.into());
    Value::Object(doc)
}

/// A `JobExecution`, with its job's document unless left out.
pub fn execution(view: &ExecutionView, include_document: bool) -> Value {
    let e = &view.execution;
    let Value::Object(mut doc) = summary(e) else {
        unreachable!("a summary is an object")
    };
    doc.insert("thingName".into(), e.thing.clone().into());
    doc.insert(
        "status".into(),
        e.status.unwrap_or(Status::Queued).as_str().into(),
    );
    status_details(e, &mut doc);
    if include_document {
        doc.insert("jobDocument".into(), view.document.clone());
    }
    if let Some(ms) = view.ms_before_timeout {
        doc.insert("approximateSecondsBeforeTimedOut".into(), secs(ms).into());
    }
    Value::Object(doc)
}

/// GetPendingJobExecutions' answer.
pub fn pending(in_progress: &[Execution], queued: &[Execution]) -> Map<String, Value> {
    let mut doc = Map::new();
    doc.insert(
        "inProgressJobs".into(),
        in_progress.iter().map(summary).collect(),
    );
    doc.insert("queuedJobs".into(), queued.iter().map(summary).collect());
    doc
}

/// StartNextPendingJobExecution's and DescribeJobExecution's answer: `execution`, absent when
/// nothing is pending ("If no job executions are pending, the response does not include the
/// `execution` field").
pub fn execution_answer(
    view: Option<&ExecutionView>,
    include_document: bool,
) -> Map<String, Value> {
    let mut doc = Map::new();
    if let Some(view) = view {
        doc.insert("execution".into(), execution(view, include_document));
    }
    doc
}

/// UpdateJobExecution's answer.
pub fn update_answer(view: &ExecutionView, include: Include) -> Map<String, Value> {
    let mut doc = Map::new();
    if include.state {
        doc.insert("executionState".into(), state(&view.execution));
    }
    if include.document {
        doc.insert("jobDocument".into(), view.document.clone());
    }
    doc
}

/// An `ErrorResponse`.
pub fn rejected(r: &Rejection, token: Option<&str>, now: u64) -> Value {
    let mut doc = Map::new();
    doc.insert("code".into(), r.code.as_str().into());
    doc.insert("message".into(), r.message.clone().into());
    if let Some(e) = &r.state {
        doc.insert("executionState".into(), state(e));
    }
    answer(doc, token, now)
}

/// JobExecutionsChanged (`jobs/notify`): the thing's pending executions by status.
pub fn notify(pending: &[Execution], now: u64) -> Value {
    let mut jobs = Map::new();
    for status in [Status::InProgress, Status::Queued] {
        let group: Vec<Value> = pending
            .iter()
            .filter(|e| e.status == Some(status))
            .map(summary)
            .collect();
        if !group.is_empty() {
            jobs.insert(status.as_str().into(), group.into());
        }
    }
    let mut doc = Map::new();
    doc.insert("jobs".into(), Value::Object(jobs));
    answer(doc, None, now)
}

/// NextJobExecutionChanged (`jobs/notify-next`): the new next execution, or none.
pub fn notify_next(next: Option<&ExecutionView>, now: u64) -> Value {
    answer(execution_answer(next, true), None, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(text: &str) -> Map<String, Value> {
        request(text.as_bytes()).expect("a request").body
    }

    #[test]
    fn requests_are_read_with_aws_defaults_and_bounds() {
        assert_eq!(request(b"").unwrap().body, Map::new());
        let r = request(br#"{"clientToken":"c-1"}"#).unwrap();
        assert_eq!(r.token.as_deref(), Some("c-1"));
        for bad in [&b"not json"[..], b"[1]", b"\xff"] {
            let r = request(bad).unwrap_err();
            assert_eq!(r.code, ErrorCode::InvalidJson, "{bad:?}");
        }
        let r = request(br#"{"clientToken":7}"#).unwrap_err();
        assert_eq!(r.code, ErrorCode::InvalidRequest);

        assert_eq!(describe(&body("{}")).unwrap(), (None, true));
        assert_eq!(
            describe(&body(r#"{"executionNumber":1,"includeJobDocument":false}"#)).unwrap(),
            (Some(1), false)
        );
        let (u, inc) = update(&body(
            r#"{"status":"IN_PROGRESS","expectedVersion":"2","stepTimeoutInMinutes":5,"statusDetails":{"step":"download"},"includeJobExecutionState":true}"#,
        ))
        .unwrap();
        assert_eq!(u.status, Status::InProgress);
        assert_eq!(u.expected_version, Some(2));
        assert_eq!(u.step_timeout_minutes, Some(5));
        assert_eq!(u.details.unwrap()["step"], "download");
        assert_eq!(
            inc,
            Include {
                state: true,
                document: false
            }
        );

        // One case per line: an update body and a fragment of the InvalidRequest message.
        let long_key = format!(
            r#"{{"status":"FAILED","statusDetails":{{"{}":"v"}}}}"#,
            "k".repeat(129)
        );
        let long_value = format!(
            r#"{{"status":"FAILED","statusDetails":{{"k":"{}"}}}}"#,
            "v".repeat(1025)
        );
        let many: Vec<String> = (0..=MAX_DETAILS)
            .map(|i| format!(r#""k{i}":"v""#))
            .collect();
        let many = format!(
            r#"{{"status":"FAILED","statusDetails":{{{}}}}}"#,
            many.join(",")
        );
        for (text, want) in [
            ("{}", "status is required"),
            (r#"{"status":"DONE"}"#, "not a job execution status"),
            (
                r#"{"status":"FAILED","expectedVersion":-1}"#,
                "expectedVersion must be a whole number",
            ),
            (
                r#"{"status":"FAILED","stepTimeoutInMinutes":0}"#,
                "stepTimeoutInMinutes 0",
            ),
            (
                r#"{"status":"FAILED","stepTimeoutInMinutes":10081}"#,
                "stepTimeoutInMinutes 10081",
            ),
            (
                r#"{"status":"FAILED","statusDetails":"x"}"#,
                "must be an object",
            ),
            (
                r#"{"status":"FAILED","statusDetails":{"a b":"v"}}"#,
                "statusDetails key",
            ),
            (
                r#"{"status":"FAILED","statusDetails":{"k":""}}"#,
                "statusDetails.k",
            ),
            (
                r#"{"status":"FAILED","statusDetails":{"k":"a\nb"}}"#,
                "no control characters",
            ),
            (
                r#"{"status":"FAILED","statusDetails":{"k":1}}"#,
                "must be a string",
            ),
            (
                r#"{"status":"FAILED","includeJobDocument":"yes"}"#,
                "true or false",
            ),
            (&long_key, "statusDetails key"),
            (&long_value, "statusDetails.k"),
            (&many, "the most is 32"),
        ] {
            let r = update(&body(text)).expect_err(text);
            assert_eq!(r.code, ErrorCode::InvalidRequest, "{text}");
            assert!(r.message.contains(want), "{text}: {}", r.message);
        }
    }
}
