//! The host calls' effects for one invocation (publish, shadows, key-value state, logs), and the
//! publisher that sends what functions publish on the component's output link.

use super::*;
use crate::effects::{self, Commit, Effects};

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

/// The host calls' effects for one invocation: the pure [`Effects`] decide, this performs
/// (the shadow service, the store, the output link) and counts and logs the refusals.
pub(super) struct ServiceHost {
    pub(super) inner: Arc<Inner>,
    pub(super) name: String,
    pub(super) version: u64,
    pub(super) logs: Logs,
    pub(super) effects: Effects,
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
        let hops = match self.effects.shadow_request(thing, name) {
            Ok(hops) => hops,
            Err(None) => return Err(HostError::Invalid),
            Err(Some(limit)) => {
                self.inner.metrics.deny(&self.name, limit);
                return Err(HostError::Limit);
            }
        };
        let answer = self.inner.handle.block_on(self.inner.shadow.request(
            thing,
            name,
            op,
            body,
            hops,
            deadline.into(),
        ));
        answer.map_err(|_| HostError::Unavailable)
    }
}

impl Host for ServiceHost {
    fn publish(&mut self, topic: &str, payload: &[u8], qos: u8) -> Result<(), HostError> {
        let Err(limit) = self.effects.publish(topic, payload, qos) else {
            return Ok(());
        };
        self.inner.metrics.deny(&self.name, limit);
        self.logs.push(
            self.version,
            "warn",
            format!(
                "publish to {topic} dropped: the message has been republished {} times (hop limit)",
                self.effects.hops()
            ),
        );
        Err(HostError::Limit)
    }

    fn shadow_get(
        &mut self,
        thing: &str,
        name: Option<&str>,
        deadline: Instant,
    ) -> Result<Vec<u8>, HostError> {
        let a = self.shadow(thing, name, Operation::Get, json!({}), deadline)?;
        effects::shadow_get_result(a.accepted, &a.doc)
    }

    fn shadow_update(
        &mut self,
        thing: &str,
        name: Option<&str>,
        doc: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, HostError> {
        let body = effects::shadow_update_body(doc)?;
        let a = self.shadow(thing, name, Operation::Update, body, deadline)?;
        effects::shadow_update_result(a.accepted, &a.doc)
    }

    fn kv_get(&mut self, key: &str) -> Result<Option<Vec<u8>>, HostError> {
        if let Some(v) = self.effects.kv_written(key) {
            return Ok(v);
        }
        self.inner
            .handle
            .block_on(self.inner.store.kv_get(self.name.clone(), key.to_owned()))
            .map_err(|_| HostError::Unavailable)
    }

    fn kv_put(&mut self, key: &str, value: Option<&[u8]>) -> Result<(), HostError> {
        self.effects.kv_put(key, value);
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
        let ServiceHost {
            inner,
            name,
            effects,
            ..
        } = *self;
        let Some(Commit { kv, publishes }) = effects.commit(ok) else {
            return Ok(());
        };
        if !kv.is_empty() {
            inner
                .handle
                .block_on(inner.store.kv_write(name, kv))
                .map_err(|e| format!("the key-value writes were not committed: {e}"))?;
        }
        if !publishes.is_empty() {
            let batch = publishes.into_iter().map(|o| (o, None)).collect();
            inner
                .handle
                .block_on(inner.publish.send(batch))
                .map_err(|_| "the gateway is shutting down".to_owned())?;
        }
        Ok(())
    }
}
