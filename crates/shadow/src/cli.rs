//! `grove shadow list|get|update|delete`: the operator's client for a running gateway.
//!
//! It speaks the same MQTT API a device uses (subscribe to the response topics, publish the request
//! with a client token, wait for the answer carrying that token), so it never opens the database
//! behind the gateway's back and works against any Grove (or AWS IoT Core-compatible) endpoint.
//! `list`, which AWS's MQTT API lacks, uses Grove's `$grove/shadows/list` topic. This module says
//! what to ask ([`call`]: the request's topic and body) and how to show the answer ([`render`]);
//! the MQTT exchange itself is the binary's one-request client (`grove-gateway`'s
//! `mqtt_request.rs`), so that this crate needs no MQTT client.

use serde_json::{json, Value};

use crate::service::LIST_TOPIC;
use grove_shadow_api::names::{request_topic, Operation};

/// What to ask.
#[derive(Debug, Clone)]
pub enum Request {
    /// Every shadow's thing, name and version.
    List,
    /// One shadow's document.
    Get,
    /// Apply an update document (`{"state": {...}}`).
    Update(String),
    /// Delete a shadow.
    Delete,
}

/// The topic and body of one shadow request to the gateway (an update's document, not JSON: the
/// parser's error).
pub fn call(
    thing: &str,
    shadow: Option<&str>,
    request: Request,
) -> Result<(String, Value), serde_json::Error> {
    let (topic, body) = match &request {
        Request::List => (LIST_TOPIC.to_owned(), json!({})),
        Request::Get => (request_topic(thing, shadow, Operation::Get), json!({})),
        Request::Delete => (request_topic(thing, shadow, Operation::Delete), json!({})),
        Request::Update(doc) => (
            request_topic(thing, shadow, Operation::Update),
            serde_json::from_str(doc)?,
        ),
    };
    Ok((topic, body))
}

/// A readable rendering of an accepted document, for people; `--json` prints the raw one instead.
pub fn render(request: &Request, thing: &str, doc: &Value) -> String {
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    match request {
        Request::List => {
            let mut out = format!("{:<40} {:<24} {:>8}\n", "THING", "SHADOW", "VERSION");
            for s in doc["shadows"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "{:<40} {:<24} {:>8}\n",
                    s["thing"].as_str().unwrap_or(""),
                    s["shadow"].as_str().unwrap_or("(classic)"),
                    s["version"]
                ));
            }
            out
        }
        Request::Get => {
            let mut out = format!("{thing}: version {}\n", doc["version"]);
            for section in ["desired", "reported", "delta"] {
                if let Some(v) = doc["state"].get(section) {
                    out.push_str(&format!("{section}: {}\n", pretty(v)));
                }
            }
            out
        }
        Request::Update(_) => format!(
            "{thing}: updated to version {}\n{}\n",
            doc["version"],
            pretty(&doc["state"])
        ),
        Request::Delete => format!("{thing}: deleted at version {}\n", doc["version"]),
    }
}
