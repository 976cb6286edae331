//! The payload AWS IoT sends to a rule's error action when one of its actions fails, so that Grove's
//! error actions are readable by the same consumers. Shape from
//! <https://docs.aws.amazon.com/iot/latest/developerguide/rule-error-handling.html>; AWS's
//! `cloudwatchTraceId` has no Grove counterpart and is left out.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::eval::Message;

/// One failed action in an [`ErrorActionPayload`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// The kind of action that failed, e.g. `RepublishAction`.
    pub failed_action: String,
    /// What it acted on, e.g. the republish topic or the thing name.
    pub failed_resource: String,
    /// Why it failed.
    pub error_message: String,
}

/// The error action's message: one per rule and message, listing every failed action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorActionPayload {
    /// The rule whose actions failed.
    pub rule_name: String,
    /// The topic of the original message.
    pub topic: String,
    /// The client id of the original message's publisher.
    pub client_id: String,
    /// The original payload, base64-encoded.
    pub base64_original_payload: String,
    /// The failed actions.
    pub failures: Vec<Failure>,
}

impl ErrorActionPayload {
    /// The payload for `rule_name`'s failures on `msg`.
    pub fn new(rule_name: impl Into<String>, msg: &Message, failures: Vec<Failure>) -> Self {
        ErrorActionPayload {
            rule_name: rule_name.into(),
            topic: msg.topic().to_string(),
            client_id: msg.client_id().to_string(),
            base64_original_payload: base64::engine::general_purpose::STANDARD
                .encode(msg.payload()),
            failures,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_with_aws_field_names() {
        let msg = Message::new("a/b", "dev-1", b"{\"x\":1}".to_vec());
        let payload = ErrorActionPayload::new(
            "r1",
            &msg,
            vec![Failure {
                failed_action: "RepublishAction".into(),
                failed_resource: "out/x".into(),
                error_message: "broker unavailable".into(),
            }],
        );
        assert_eq!(
            serde_json::to_value(&payload).expect("serialises"),
            serde_json::json!({
                "ruleName": "r1",
                "topic": "a/b",
                "clientId": "dev-1",
                "base64OriginalPayload": "eyJ4IjoxfQ==",
                "failures": [{
                    "failedAction": "RepublishAction",
                    "failedResource": "out/x",
                    "errorMessage": "broker unavailable"
                }]
            })
        );
    }
}
