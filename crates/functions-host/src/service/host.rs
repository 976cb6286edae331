//! The host calls' effects for one invocation (publish, shadows, key-value state, logs), and the
//! publisher that sends what functions publish on the component's output link.

use super::*;

/// Publishes what functions send, in batches, on the component's output link.
pub(super) async fn publisher(
    mut bus: grove_broker::bus::Bus,
    mut rx: mpsc::Receiver<Batch>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let mut batch = tokio::select! {
            _ = shutdown.changed() => return,
            b = rx.recv() => match b { Some(b) => b, None => return },
        };
        while let Ok(more) = rx.try_recv() {
            batch.extend(more);
        }
        match bus.publish_correlated(batch).await {
            Ok(()) => {}
            Err(Closed::Link) => return,
            Err(e @ Closed::Store(_)) => warn!(error = %e, "a retained function publish was lost"),
        }
    }
}

/// A batch for the output link: messages with optional MQTT 5 correlation data.
pub(super) type Batch = Vec<(Outgoing, Option<Bytes>)>;

/// The host calls' effects for one invocation.
pub(super) struct ServiceHost {
    pub(super) inner: Arc<Inner>,
    pub(super) name: String,
    pub(super) version: u64,
    pub(super) hops: u32,
    pub(super) logs: Logs,
    /// Held until the handler succeeds.
    pub(super) publishes: Batch,
    /// Key-value writes held until the handler succeeds; reads see them.
    pub(super) kv: BTreeMap<String, Option<Vec<u8>>>,
}

impl ServiceHost {
    fn shadow(
        &mut self,
        thing: &str,
        name: Option<&str>,
        op: Operation,
        body: Value,
        deadline: Instant,
    ) -> Result<Answer, HostError> {
        if grove_shadow_api::names::validate_thing_name(thing).is_err()
            || name.is_some_and(|n| grove_shadow_api::names::validate_shadow_name(n).is_err())
        {
            return Err(HostError::Invalid);
        }
        if self.hops >= MAX_HOPS {
            self.inner.metrics.deny(&self.name, "shadow_hop_limit");
            return Err(HostError::Limit);
        }
        let answer = self.inner.handle.block_on(self.inner.shadow.request(
            thing,
            name,
            op,
            body,
            self.hops + 1,
            deadline.into(),
        ));
        answer.map_err(|_| HostError::Unavailable)
    }
}

impl Host for ServiceHost {
    fn publish(&mut self, topic: &str, payload: &[u8], qos: u8) -> Result<(), HostError> {
        if self.hops >= MAX_HOPS {
            self.inner.metrics.deny(&self.name, "publish_hop_limit");
            self.logs.push(
                self.version,
                "warn",
                format!("publish to {topic} dropped: the message has been republished {} times (hop limit)", self.hops),
            );
            return Err(HostError::Limit);
        }
        self.publishes.push((
            Outgoing {
                topic: topic.to_owned(),
                payload: Bytes::copy_from_slice(payload),
                qos,
                retain: false,
                hops: self.hops + 1,
            },
            None,
        ));
        Ok(())
    }

    fn shadow_get(
        &mut self,
        thing: &str,
        name: Option<&str>,
        deadline: Instant,
    ) -> Result<Vec<u8>, HostError> {
        match self.shadow(thing, name, Operation::Get, json!({}), deadline)? {
            Answer {
                accepted: true,
                doc,
            } => Ok(doc.to_vec()),
            Answer { doc, .. } => {
                let code = serde_json::from_slice::<Value>(&doc)
                    .ok()
                    .and_then(|v| v["code"].as_u64());
                if code == Some(404) {
                    Err(HostError::NotFound)
                } else {
                    Err(HostError::Rejected(doc.to_vec()))
                }
            }
        }
    }

    fn shadow_update(
        &mut self,
        thing: &str,
        name: Option<&str>,
        doc: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, HostError> {
        let body: Value = serde_json::from_slice(doc).map_err(|_| HostError::Invalid)?;
        if !body.is_object() {
            return Err(HostError::Invalid);
        }
        match self.shadow(thing, name, Operation::Update, body, deadline)? {
            Answer {
                accepted: true,
                doc,
            } => Ok(doc.to_vec()),
            Answer { doc, .. } => Err(HostError::Rejected(doc.to_vec())),
        }
    }

    fn kv_get(&mut self, key: &str) -> Result<Option<Vec<u8>>, HostError> {
        if let Some(v) = self.kv.get(key) {
            return Ok(v.clone());
        }
        self.inner
            .handle
            .block_on(self.inner.store.kv_get(self.name.clone(), key.to_owned()))
            .map_err(|_| HostError::Unavailable)
    }

    fn kv_put(&mut self, key: &str, value: Option<&[u8]>) -> Result<(), HostError> {
        self.kv.insert(key.to_owned(), value.map(<[u8]>::to_vec));
        Ok(())
    }

    fn log(&mut self, level: Level, message: &[u8]) {
        self.logs.push(self.version, level.as_str(), message);
    }

    fn denied(&mut self, call: &'static str, detail: &str) {
        self.inner.metrics.deny(&self.name, call);
        // The detail (a topic, a thing name, a key) is the guest's, of any length, and a guest
        // can be refused in a loop: the line is cut and its rate bounded.
        let detail = crate::logs::cut(detail.as_bytes(), MAX_LOGGED);
        if let Some(suppressed) = self.logs.gateway() {
            warn!(
                function = self.name,
                call,
                %detail,
                suppressed,
                "host call denied: no grant"
            );
        }
        self.logs.push(
            self.version,
            "warn",
            format!("{call}({detail}) denied: no grant"),
        );
    }

    fn finish(self: Box<Self>, ok: bool) -> Result<(), String> {
        if !ok {
            return Ok(());
        }
        let this = *self;
        if !this.kv.is_empty() {
            let writes = this.kv.into_iter().collect();
            this.inner
                .handle
                .block_on(this.inner.store.kv_write(this.name.clone(), writes))
                .map_err(|e| format!("the key-value writes were not committed: {e}"))?;
        }
        if !this.publishes.is_empty() {
            this.inner
                .handle
                .block_on(this.inner.publish.send(this.publishes))
                .map_err(|_| "the gateway is shutting down".to_owned())?;
        }
        Ok(())
    }
}
