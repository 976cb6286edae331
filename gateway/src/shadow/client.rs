//! `grove shadow list|get|update|delete`: the operator's client for a running gateway.
//!
//! It speaks the same MQTT API a device uses (subscribe to the response topics, publish the request
//! with a client token, wait for the answer carrying that token), so it never opens the database
//! behind the gateway's back and works against any Grove (or AWS IoT Core-compatible) endpoint.
//! `list`, which AWS's MQTT API lacks, uses Grove's `$grove/shadows/list` topic.

use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

use super::names::{request_topic, Operation};
use super::service::LIST_TOPIC;

/// How long to wait for the gateway's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a shadow command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The gateway could not be reached or the connection failed.
    #[error("cannot talk to the gateway at {addr}: {message}")]
    Connection {
        /// Where.
        addr: SocketAddr,
        /// What happened.
        message: String,
    },
    /// No answer in time.
    #[error("no answer from the gateway within {0:?}")]
    Timeout(Duration),
    /// The gateway rejected the request (the AWS error document's code and message).
    #[error("rejected: {code} {message}")]
    Rejected {
        /// AWS's error code.
        code: u64,
        /// AWS's message.
        message: String,
    },
    /// The document given with `--json` is not JSON.
    #[error("--json is not valid JSON: {0}")]
    BadDocument(serde_json::Error),
}

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

/// Sends one request to the gateway at `addr` and returns the accepted document.
pub async fn call(
    addr: SocketAddr,
    thing: &str,
    shadow: Option<&str>,
    request: Request,
) -> Result<Value, ClientError> {
    let token = format!("grove-cli-{}", std::process::id());
    let (topic, mut body) = match &request {
        Request::List => (LIST_TOPIC.to_owned(), json!({})),
        Request::Get => (request_topic(thing, shadow, Operation::Get), json!({})),
        Request::Delete => (request_topic(thing, shadow, Operation::Delete), json!({})),
        Request::Update(doc) => (
            request_topic(thing, shadow, Operation::Update),
            serde_json::from_str(doc).map_err(ClientError::BadDocument)?,
        ),
    };
    if let Value::Object(map) = &mut body {
        map.insert("clientToken".into(), token.clone().into());
    }
    let connection = |message: String| ClientError::Connection { addr, message };
    let mut options = MqttOptions::new(token.clone(), addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(options, 10);
    let accepted = format!("{topic}/accepted");
    let rejected = format!("{topic}/rejected");
    client
        .subscribe(format!("{topic}/+"), QoS::AtLeastOnce)
        .await
        .map_err(|e| connection(e.to_string()))?;
    let answer = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    client
                        .publish(&topic, QoS::AtLeastOnce, false, body.to_string())
                        .await
                        .map_err(|e| connection(e.to_string()))?;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let Ok(doc) = serde_json::from_slice::<Value>(&p.payload) else {
                        continue;
                    };
                    if doc["clientToken"] != token.as_str() {
                        continue;
                    }
                    if p.topic == rejected || (p.topic == accepted && doc.get("code").is_some()) {
                        return Err(ClientError::Rejected {
                            code: doc["code"].as_u64().unwrap_or(0),
                            message: doc["message"].as_str().unwrap_or_default().to_owned(),
                        });
                    }
                    if p.topic == accepted {
                        return Ok(doc);
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(connection(e.to_string())),
            }
        }
    };
    let result = tokio::time::timeout(ANSWER_TIMEOUT, answer)
        .await
        .unwrap_or(Err(ClientError::Timeout(ANSWER_TIMEOUT)));
    let _ = client.disconnect().await;
    result
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
