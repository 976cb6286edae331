//! A small Device Shadow service for the cloud side of the cloud benchmarks, on the cloud
//! mosquitto: it answers the classic shadows' `get`, `update` and `delete` requests as AWS IoT's
//! Device Shadow service documents them ("Device Shadow service documents" and "Device Shadow
//! MQTT topics", <https://docs.aws.amazon.com/iot/latest/developerguide/device-shadow-mqtt.html>):
//! `/accepted` with the state, `version` and `clientToken`; `/rejected` with `code` 404 for a
//! missing shadow and 409 for a stale `version`; `update/documents` with `previous` and
//! `current` after each accepted update. It counts the requests, which is what a reconnect's cost
//! is measured in. Named shadows, metadata, `delta` and the size limits are left out: the gateway
//! under test only needs its requests answered (the end-to-end tests check the semantics against
//! a fuller stand-in, `tests/src/aws_shadow`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use rumqttc::{Event, Packet, QoS};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::flow;

/// The requests answered so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Requests {
    /// `get` requests.
    pub get: u64,
    /// `update` requests.
    pub update: u64,
    /// `delete` requests.
    pub delete: u64,
}

impl Requests {
    /// Every request.
    pub fn total(&self) -> u64 {
        self.get + self.update + self.delete
    }

    /// What was answered between `earlier` and this.
    pub fn since(&self, earlier: &Requests) -> Requests {
        Requests {
            get: self.get - earlier.get,
            update: self.update - earlier.update,
            delete: self.delete - earlier.delete,
        }
    }
}

#[derive(Default)]
struct Shared {
    shadows: Mutex<HashMap<String, (Value, u64)>>,
    get: AtomicU64,
    update: AtomicU64,
    delete: AtomicU64,
}

/// The running service; stops when dropped.
pub struct ShadowCloud {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl ShadowCloud {
    /// Connects to the cloud broker on `port` and answers requests once subscribed.
    pub async fn start(port: u16) -> anyhow::Result<ShadowCloud> {
        let (client, mut events) = flow::event_loop(flow::options("shadow-cloud", port));
        for op in ["get", "update", "delete"] {
            client
                .subscribe(format!("$aws/things/+/shadow/{op}"), QoS::AtLeastOnce)
                .await?;
        }
        // Answers only after the SUBACKs: a request published later is one the service sees.
        let mut subacks = 0;
        while subacks < 3 {
            match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
                Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => subacks += 1,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e).context("the shadow service's connection"),
                Err(_) => anyhow::bail!("no SUBACK from the cloud broker within 10 s"),
            }
        }
        let shared = Arc::new(Shared::default());
        let state = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok(event) = events.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = event {
                    for (topic, payload) in state.answer(&p.topic, &p.payload) {
                        let _ = client.try_publish(topic, QoS::AtMostOnce, false, payload);
                    }
                }
            }
        });
        Ok(ShadowCloud { shared, task })
    }

    /// The requests answered so far.
    pub fn requests(&self) -> Requests {
        Requests {
            get: self.shared.get.load(Ordering::Relaxed),
            update: self.shared.update.load(Ordering::Relaxed),
            delete: self.shared.delete.load(Ordering::Relaxed),
        }
    }

    /// How many shadows exist.
    pub fn shadows(&self) -> usize {
        self.shared.lock().len()
    }
}

impl Drop for ShadowCloud {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Value, u64)>> {
        self.shadows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The messages answering a request on `topic`.
    fn answer(&self, topic: &str, payload: &[u8]) -> Vec<(String, String)> {
        let Some((thing, op)) = topic
            .strip_prefix("$aws/things/")
            .and_then(|rest| rest.split_once("/shadow/"))
        else {
            return Vec::new();
        };
        let request: Value = serde_json::from_slice(payload).unwrap_or_else(|_| json!({}));
        let token = request.get("clientToken").cloned();
        let prefix = format!("$aws/things/{thing}/shadow/{op}");
        let with_token = |mut doc: Value| {
            if let Some(t) = &token {
                doc["clientToken"] = t.clone();
            }
            doc.to_string()
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut shadows = self.lock();
        let missing =
            || json!({"code": 404, "message": format!("No shadow exists with name: '{thing}'")});
        match op {
            "get" => {
                self.get.fetch_add(1, Ordering::Relaxed);
                match shadows.get(thing) {
                    Some((state, version)) => vec![(
                        format!("{prefix}/accepted"),
                        with_token(json!({"state": state, "version": version, "timestamp": now})),
                    )],
                    None => vec![(format!("{prefix}/rejected"), with_token(missing()))],
                }
            }
            "delete" => {
                self.delete.fetch_add(1, Ordering::Relaxed);
                match shadows.remove(thing) {
                    Some((_, version)) => vec![(
                        format!("{prefix}/accepted"),
                        with_token(json!({"version": version, "timestamp": now})),
                    )],
                    None => vec![(format!("{prefix}/rejected"), with_token(missing()))],
                }
            }
            "update" => {
                self.update.fetch_add(1, Ordering::Relaxed);
                let (state, version) = shadows
                    .entry(thing.to_owned())
                    .or_insert_with(|| (json!({}), 0));
                if let Some(expected) = request["version"].as_u64() {
                    if expected != *version {
                        let conflict = json!({"code": 409, "message": "Version conflict"});
                        return vec![(format!("{prefix}/rejected"), with_token(conflict))];
                    }
                }
                let previous = json!({"state": state.clone(), "version": *version});
                merge(state, &request["state"]);
                *version += 1;
                let current = json!({"state": state.clone(), "version": *version});
                vec![
                    (
                        format!("{prefix}/accepted"),
                        with_token(
                            json!({"state": request["state"], "version": *version, "timestamp": now}),
                        ),
                    ),
                    (
                        format!("{prefix}/documents"),
                        with_token(
                            json!({"previous": previous, "current": current, "timestamp": now}),
                        ),
                    ),
                ]
            }
            _ => Vec::new(),
        }
    }
}

/// Applies an update's state to a shadow's: objects merge, `null` deletes ("Device Shadow
/// service documents", deleting properties).
fn merge(into: &mut Value, update: &Value) {
    let (Some(into), Some(update)) = (into.as_object_mut(), update.as_object()) else {
        return;
    };
    for (k, v) in update {
        match v {
            Value::Null => {
                into.remove(k);
            }
            Value::Object(_) => {
                let slot = into.entry(k.clone()).or_insert_with(|| json!({}));
                if !slot.is_object() {
                    *slot = json!({});
                }
                merge(slot, v);
            }
            other => {
                into.insert(k.clone(), other.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_follow_the_documented_codes() {
        let s = Shared::default();
        let get = s.answer("$aws/things/a/shadow/get", br#"{"clientToken":"t1"}"#);
        assert_eq!(get[0].0, "$aws/things/a/shadow/get/rejected");
        assert!(get[0].1.contains("404") && get[0].1.contains("t1"));
        let up = s.answer(
            "$aws/things/a/shadow/update",
            br#"{"state":{"reported":{"x":1,"y":{"z":2}}}}"#,
        );
        assert_eq!(up.len(), 2, "accepted and documents");
        let doc: Value = serde_json::from_str(&up[1].1).unwrap();
        assert_eq!(doc["current"]["version"], 1);
        let stale = s.answer(
            "$aws/things/a/shadow/update",
            br#"{"state":{"reported":{"x":2}},"version":7}"#,
        );
        assert!(stale[0].0.ends_with("/rejected") && stale[0].1.contains("409"));
        s.answer(
            "$aws/things/a/shadow/update",
            br#"{"state":{"reported":{"x":null,"y":{"w":3}}},"version":1}"#,
        );
        let got = s.answer("$aws/things/a/shadow/get", b"");
        let got: Value = serde_json::from_str(&got[0].1).unwrap();
        assert_eq!(
            (got["state"].clone(), got["version"].clone()),
            (json!({"reported": {"y": {"z": 2, "w": 3}}}), json!(2))
        );
        let del = s.answer("$aws/things/a/shadow/delete", b"");
        assert!(del[0].0.ends_with("delete/accepted"));
        assert_eq!(
            (
                s.get.load(Ordering::Relaxed),
                s.update.load(Ordering::Relaxed)
            ),
            (2, 3)
        );
    }
}
