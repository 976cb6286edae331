//! The functions component's sync invocations: requests on `$grove/functions/{name}/invoke`, their
//! reply topic checked (`grove_broker::reply`), answered on the bus.

use super::*;

impl Functions {
    /// Serves sync invocations published on `$grove/functions/{name}[:{qualifier}]/invoke`.
    pub(super) async fn serve_invoke(self, mut bus: grove_broker::bus::Bus) {
        let mut shutdown = self.inner.shutdown.clone();
        let mut batch = Vec::new();
        while bus.recv_until(&mut batch, &mut shutdown).await {
            for m in batch.drain(..) {
                let this = self.clone();
                tokio::spawn(async move { this.answer_request(m).await });
            }
        }
    }

    async fn answer_request(&self, m: Message) {
        let request = match SyncRequest::parse(&m) {
            Ok(r) => r,
            Err(e) => {
                // Debug only, and rate-limited: what reaches here came through the bus (a device's
                // request with a bad reply topic was refused by the connection layer), so a log
                // line per request would let a rule fed by devices flood the log.
                if let Some(suppressed) = self.may_log_stray() {
                    let topic = crate::logs::cut(m.topic.as_bytes(), MAX_LOGGED);
                    debug!(%topic, suppressed, "an invoke request refused (not invoked, not answered): {e}");
                }
                return;
            }
        };
        let body = match request.target {
            Err(e) => json!({"status": "error", "error": {"kind": "bad_request", "message": e}}),
            Ok((ref name, ref qualifier)) => {
                match self
                    .invoke(
                        name,
                        qualifier,
                        m.topic.clone(),
                        request.payload.clone(),
                        m.hops,
                    )
                    .await
                {
                    Ok(invoked) => answer(&invoked),
                    Err(e) => error_answer(&e),
                }
            }
        };
        let mut body = body;
        if let Some(id) = request.correlation_id {
            body["correlationId"] = id;
        }
        let msg = Outgoing {
            topic: request.reply_to,
            payload: Bytes::from(body.to_string()),
            qos: 1,
            retain: false,
            hops: m.hops + 1,
        };
        let _ = self
            .inner
            .publish
            .send(vec![(msg, m.correlation_data)])
            .await;
    }
}

/// A parsed sync request: where to answer, and what to invoke with which payload.
struct SyncRequest {
    target: Result<(String, Qualifier), String>,
    reply_to: String,
    correlation_id: Option<Value>,
    payload: Bytes,
}

impl SyncRequest {
    /// Refuses a request without a valid reply topic (see [`grove_broker::reply`]): it is not invoked,
    /// and nothing is published.
    fn parse(m: &Message) -> Result<SyncRequest, ReplyError> {
        let target = parse_target(&m.topic, "/invoke");
        let reply_to = reply::reply_topic(m.response_topic.as_deref(), &m.payload)?;
        if m.response_topic.is_some() {
            return Ok(SyncRequest {
                target,
                reply_to,
                correlation_id: None,
                payload: m.payload.clone(),
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
            payload,
        })
    }
}

/// The function and qualifier of `$grove/functions/{name}[:{qualifier}]{suffix}`.
pub(super) fn parse_target(topic: &str, suffix: &str) -> Result<(String, Qualifier), String> {
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
