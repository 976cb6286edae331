//! A stand-in for AWS IoT's Device Shadow service on a test's cloud broker (a [`crate::Mosquitto`]),
//! written from AWS's documentation and not from Grove's shadow code, so that a misreading of
//! AWS's semantics that Grove's own shadow service shares cannot pass a sync test (issue 16).
//!
//! [`AwsShadows`] is a rumqttc client on the broker that answers the request topics of classic and
//! named shadows (`$aws/things/+/shadow/{get,update,delete}` and
//! `$aws/things/+/shadow/name/+/{get,update,delete}`), holds the shadows in memory, and publishes
//! what AWS publishes: `/accepted` or `/rejected` answers, `update/delta` and `update/documents`.
//! The rules are pure functions in [`service`], each citing its source. The sources, AWS IoT Core
//! Developer Guide unless said otherwise:
//!
//! - "Device Shadow MQTT topics": the topic prefixes, what each topic carries and when, the
//!   `update/delta` body rules. <https://docs.aws.amazon.com/iot/latest/developerguide/device-shadow-mqtt.html>
//! - "Device Shadow service documents": request, `/accepted`, `/delta`, `/documents` and error
//!   documents, delta state, versioning, client tokens, empty sections, arrays.
//!   <https://docs.aws.amazon.com/iot/latest/developerguide/device-shadow-document.html>
//! - "Interacting with shadows": update, get, delete, optimistic locking (409), deleting
//!   properties with null, versions across a deletion.
//!   <https://docs.aws.amazon.com/iot/latest/developerguide/device-shadow-data-flow.html>
//! - "Using Shadows" (the older edition of that page): the examples of deleting data, of
//!   `"state": null` and of a get with a delta.
//!   <https://docs.aws.amazon.com/iot/latest/developerguide/using-device-shadows.html>
//! - "Device Shadow error messages": the codes and messages (400, 404, 409, 413, 415).
//!   <https://docs.aws.amazon.com/iot/latest/developerguide/device-shadow-error-messages.html>
//! - "Diagnosing problems with shadows": 8 KB of `desired` and `reported`, metadata not counted.
//!   <https://docs.aws.amazon.com/iot/latest/developerguide/diagnosing-shadows.html>
//! - AWS General Reference, "AWS IoT Core endpoints and quotas", Device Shadow: the 8 KB document
//!   and the nesting depth. <https://docs.aws.amazon.com/general/latest/gr/iot-core.html>
//!
//! Deliberately not modelled: authorization (401, 403: every client may do everything), things
//! that do not exist ("Thing not found": every thing exists), the 10 in-flight requests per
//! connection (429: requests are answered one at a time), 500, the REST API (but for the calls
//! that [`AwsShadows::update`] and [`AwsShadows::delete`] stand for) and the named-shadow list,
//! the passing of time (the 48 hours after which a deleted shadow's version restarts at 0 pass
//! when a test calls [`AwsShadows::expire_deleted`]), the MQTT message size and request rate
//! quotas, and reconnecting (the responder stops at its connection's first error, and
//! [`AwsShadows::report`] says why). AWS promises no order among the messages of one update
//! ("Using Shadows", Message Order); the responder publishes the answer, then `update/delta`,
//! then `update/documents`.

pub mod service;

use std::collections::HashMap;
use std::sync::MutexGuard;
use std::time::{SystemTime, UNIX_EPOCH};

use rumqttc::QoS;
use serde_json::Value;

use crate::responder::{Answers, Responder, Service};
use crate::{eventually, WAIT};
use service::{handle, parse_request, Operation, Reply, ShadowId, Slot};

/// How many requests the responder answered over MQTT, by answer topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// `get/accepted`
    pub get_accepted: usize,
    /// `get/rejected`
    pub get_rejected: usize,
    /// `update/accepted`
    pub update_accepted: usize,
    /// `update/rejected`
    pub update_rejected: usize,
    /// `delete/accepted`
    pub delete_accepted: usize,
    /// `delete/rejected`
    pub delete_rejected: usize,
}

impl Counts {
    fn count(&mut self, suffix: &str) {
        let n = match suffix {
            "get/accepted" => &mut self.get_accepted,
            "get/rejected" => &mut self.get_rejected,
            "update/accepted" => &mut self.update_accepted,
            "update/rejected" => &mut self.update_rejected,
            "delete/accepted" => &mut self.delete_accepted,
            "delete/rejected" => &mut self.delete_rejected,
            _ => return,
        };
        *n += 1;
    }
}

/// What the responder's task and the test share.
#[derive(Default)]
struct Shared {
    slots: HashMap<ShadowId, Slot>,
    counts: Counts,
    /// Every rejection sent over MQTT: topic and error document.
    rejections: Vec<(String, Value)>,
    /// Why the responder stopped, if it did.
    stopped: Option<String>,
    /// A cloud application's update to apply just before the next update request for a shadow
    /// ([`AwsShadows::interpose`]).
    interposed: Option<(ShadowId, Value)>,
}

/// The Device Shadow service stand-in (module doc); stops when dropped.
pub struct AwsShadows {
    responder: Responder<Shared>,
}

/// The request topics, classic and named.
const FILTERS: [&str; 6] = [
    "$aws/things/+/shadow/get",
    "$aws/things/+/shadow/update",
    "$aws/things/+/shadow/delete",
    "$aws/things/+/shadow/name/+/get",
    "$aws/things/+/shadow/name/+/update",
    "$aws/things/+/shadow/name/+/delete",
];

impl AwsShadows {
    /// Connects to the broker on the loopback `port`, subscribes to the request topics, and
    /// returns once the broker has granted them (SUBACK), so a request published afterwards is
    /// answered.
    pub async fn start(port: u16) -> AwsShadows {
        AwsShadows {
            responder: Responder::start("aws-shadow-service", port, &FILTERS).await,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.responder.lock()
    }

    /// The shadow's `state` (`desired` and `reported`, each present only once set; no delta), or
    /// `None` when the shadow does not exist.
    pub fn state(&self, thing: &str, name: Option<&str>) -> Option<Value> {
        let shared = self.lock();
        let slot = shared.slots.get(&ShadowId::new(thing, name))?;
        slot.shadow.as_ref().map(|s| Value::Object(s.state.clone()))
    }

    /// The shadow's version, or `None` when the shadow does not exist.
    pub fn version(&self, thing: &str, name: Option<&str>) -> Option<u64> {
        let shared = self.lock();
        let slot = shared.slots.get(&ShadowId::new(thing, name))?;
        slot.shadow.as_ref().map(|s| s.version)
    }

    /// Changes a shadow as a cloud application does through the UpdateThingShadow API
    /// ("Interacting with shadows", Updating a shadow, "by using the API"): the request state
    /// document `request` is applied, the `/accepted` document is returned (the API's response,
    /// so nothing is published on `update/accepted`), and `update/delta` and `update/documents`
    /// are published as for any update. `Err` holds the error document of a rejected request.
    pub async fn update(
        &self,
        thing: &str,
        name: Option<&str>,
        request: Value,
    ) -> Result<Value, Value> {
        let id = ShadowId::new(thing, name);
        let (answer, notices) = {
            let mut shared = self.lock();
            let slot = shared.slots.entry(id.clone()).or_default();
            api_update(slot, &id, &request)
        };
        for (topic, payload) in notices {
            self.responder
                .client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .expect("publish");
        }
        answer
    }

    /// Deletes a shadow as a cloud application does through the DeleteThingShadow API
    /// ("Interacting with shadows", Deleting a shadow, "by using the REST API"): the API's
    /// response is returned, nothing is published. `Err` holds the error document (404).
    pub fn delete(&self, thing: &str, name: Option<&str>) -> Result<Value, Value> {
        let id = ShadowId::new(thing, name);
        let mut shared = self.lock();
        let slot = shared.slots.entry(id.clone()).or_default();
        let mut replies = handle(slot, &id, Operation::Delete, b"", now());
        let answer = replies.remove(0);
        match answer.suffix {
            "delete/accepted" => Ok(answer.payload),
            _ => Err(answer.payload),
        }
    }

    /// Lets the 48 hours pass after which a deleted shadow's name starts again at version 0
    /// ([`service::Slot::expire`]).
    pub fn expire_deleted(&self, thing: &str, name: Option<&str>) {
        let id = ShadowId::new(thing, name);
        self.lock().slots.entry(id).or_default().expire();
    }

    /// Makes a cloud application's update (`request`, as in [`AwsShadows::update`]) land just
    /// before the next update request that arrives over MQTT for the shadow, that is between the
    /// requester's read and its write: a request carrying the version it read then meets 409
    /// "Version conflict" ("Interacting with shadows", Optimistic locking).
    pub fn interpose(&self, thing: &str, name: Option<&str>, request: Value) {
        self.lock().interposed = Some((ShadowId::new(thing, name), request));
    }

    /// Waits until the classic shadow of `thing` has the state `want` (as [`AwsShadows::state`]
    /// gives it), and returns it.
    pub fn wait_state(&self, thing: &str, want: &Value) -> Value {
        self.wait_shadow_state(thing, None, want)
    }

    /// Like [`AwsShadows::wait_state`], for a named or classic shadow.
    pub fn wait_shadow_state(&self, thing: &str, name: Option<&str>, want: &Value) -> Value {
        eventually(WAIT, || match self.state(thing, name) {
            Some(s) if &s == want => Ok(s),
            other => Err(format!(
                "the cloud's {thing} {name:?} shadow is {other:?}, not {want}; {}",
                self.report()
            )),
        })
    }

    /// The requests answered over MQTT so far.
    pub fn counts(&self) -> Counts {
        self.lock().counts
    }

    /// Every rejection sent over MQTT so far: the topic and the error document.
    pub fn rejections(&self) -> Vec<(String, Value)> {
        self.lock().rejections.clone()
    }

    /// The counts, the rejections sent, and why the responder stopped if it did: for failure
    /// messages.
    pub fn report(&self) -> String {
        let shared = self.lock();
        format!(
            "responder: {:?}, rejections {:?}, stopped: {:?}",
            shared.counts, shared.rejections, shared.stopped
        )
    }
}

/// An update through the API rather than MQTT: the answer (the API's response, `Err` for the
/// error document) and the notifications to publish (`update/delta`, `update/documents`), as
/// (topic, payload).
fn api_update(
    slot: &mut Slot,
    id: &ShadowId,
    request: &Value,
) -> (Result<Value, Value>, Vec<(String, String)>) {
    let replies = handle(
        slot,
        id,
        Operation::Update,
        request.to_string().as_bytes(),
        now(),
    );
    let mut answer = Err(Value::Null);
    let mut notices = Vec::new();
    for r in replies {
        match r.suffix {
            "update/accepted" => answer = Ok(r.payload),
            "update/rejected" => answer = Err(r.payload),
            _ => notices.push((topic(id, &r), r.payload.to_string())),
        }
    }
    (answer, notices)
}

fn topic(id: &ShadowId, reply: &Reply) -> String {
    format!("{}/{}", id.prefix(), reply.suffix)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

impl Service for Shared {
    fn stopped(&mut self, why: String) {
        self.stopped = Some(why);
    }

    fn answer(&mut self, topic: &str, payload: &[u8]) -> Answers {
        let Some((id, op)) = parse_request(topic) else {
            return Ok(Vec::new());
        };
        let state = self;
        let slot = state.slots.entry(id.clone()).or_default();
        let mut out = Vec::new();
        let interposed = match op {
            Operation::Update => state.interposed.take_if(|(i, _)| *i == id),
            _ => None,
        };
        if let Some((_, request)) = interposed {
            let (answer, notices) = api_update(slot, &id, &request);
            if let Err(e) = answer {
                return Err(format!("the interposed update was rejected: {e}"));
            }
            out.extend(notices);
        }
        for r in handle(slot, &id, op, payload, now()) {
            let topic = self::topic(&id, &r);
            if r.answers() {
                state.counts.count(r.suffix);
                if r.suffix.ends_with("/rejected") {
                    state.rejections.push((topic.clone(), r.payload.clone()));
                }
            }
            out.push((topic, r.payload.to_string()));
        }
        Ok(out)
    }
}
