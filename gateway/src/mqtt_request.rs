//! The operator's MQTT client: one request to a running gateway, one answer.
//!
//! `grove shadow ...`, `grove rules reload` and `grove cloud status` talk to the gateway the way a
//! device does: subscribe to `{topic}/accepted` and `{topic}/rejected`, publish the request with a
//! client token, and wait for the answer that carries that token. Nothing opens the gateway's
//! database behind its back. The component crates' `cli.rs` say what to ask and how to show the
//! answer; this module is the exchange, so they need no MQTT client.

use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

/// How long to wait for the gateway's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an operator command failed.
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
    /// The gateway rejected the request (the error document's code and message).
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

/// Publishes `body` (with a client token added) on `topic` and returns the `accepted` answer.
pub async fn request(addr: SocketAddr, topic: &str, mut body: Value) -> Result<Value, ClientError> {
    let token = format!("grove-cli-{}", std::process::id());
    if let Value::Object(map) = &mut body {
        map.insert("clientToken".into(), token.clone().into());
    }
    let topic = topic.to_owned();
    let connection = |message: String| ClientError::Connection { addr, message };
    let mut options = MqttOptions::new(token.clone(), addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(options, 10);
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
                    if let Some(answer) = answer_to(&topic, &token, &p.topic, &p.payload) {
                        return answer;
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

/// Whether a message received on `received` (with `payload`) answers the request made on `topic`
/// with client token `token`: its `accepted` document or its rejection; `None` for anything
/// else (another client's answer, a message that is not JSON).
pub fn answer_to(
    topic: &str,
    token: &str,
    received: &str,
    payload: &[u8],
) -> Option<Result<Value, ClientError>> {
    let doc = serde_json::from_slice::<Value>(payload).ok()?;
    if doc["clientToken"] != token {
        return None;
    }
    let op = received.strip_prefix(topic)?;
    if op == "/rejected" || (op == "/accepted" && doc.get("code").is_some()) {
        return Some(Err(ClientError::Rejected {
            code: doc["code"].as_u64().unwrap_or(0),
            message: doc["message"].as_str().unwrap_or_default().to_owned(),
        }));
    }
    (op == "/accepted").then_some(Ok(doc))
}
