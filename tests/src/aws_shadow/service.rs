//! The Device Shadow service's rules, as pure functions: a request (operation, payload) and the
//! shadow's current slot in, the messages the service publishes out. No MQTT and no clock here
//! (the time comes in as `now`, epoch seconds), so every rule is unit-tested on AWS's own examples.
//!
//! Written from AWS IoT's documentation only (the module doc of [`super`] lists the pages); each
//! rule names the section it comes from. Where the documentation leaves a case open, the choice is
//! marked "Not documented".

use serde_json::{json, Map, Value};

/// "Device Shadow service documents", Shadow document examples and "Diagnosing problems with
/// shadows": a shadow holds 8 KB of data; only `desired` and `reported` count, metadata does not.
pub const MAX_STATE_BYTES: usize = 8 * 1024;

/// "AWS IoT Core endpoints and quotas", Device Shadow: "Maximum depth of JSON device state
/// documents": 8 levels in `desired` and in `reported` (the section's own keys are level 1; the
/// older edition of that table said 5, with `"one"` to `"five"` as its example). The error text
/// ("Device Shadow error messages", 400) still says "maximum is 6". The quota is taken, being
/// the larger number: a stricter responder would reject what AWS accepts. (The 8 is the figure
/// that page is cited with; its table itself was not at hand when this was written.)
pub const MAX_DEPTH: usize = 8;

/// "Device Shadow service documents", Client tokens in shadow documents: at most 64 bytes.
pub const MAX_CLIENT_TOKEN_BYTES: usize = 64;

/// The three request topics ("Device Shadow MQTT topics": `/get`, `/update`, `/delete`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `ShadowTopicPrefix/get`
    Get,
    /// `ShadowTopicPrefix/update`
    Update,
    /// `ShadowTopicPrefix/delete`
    Delete,
}

/// A shadow: a thing's classic (unnamed) shadow, or one of its named shadows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShadowId {
    /// The thing name.
    pub thing: String,
    /// The shadow name; `None` for the classic shadow.
    pub name: Option<String>,
}

impl ShadowId {
    /// A shadow of `thing`, named or classic.
    pub fn new(thing: &str, name: Option<&str>) -> ShadowId {
        ShadowId {
            thing: thing.to_owned(),
            name: name.map(str::to_owned),
        }
    }

    /// "Device Shadow MQTT topics": the *ShadowTopicPrefix*, `$aws/things/thingName/shadow` for
    /// the classic shadow and `$aws/things/thingName/shadow/name/shadowName` for a named one.
    pub fn prefix(&self) -> String {
        match &self.name {
            None => format!("$aws/things/{}/shadow", self.thing),
            Some(n) => format!("$aws/things/{}/shadow/name/{n}", self.thing),
        }
    }
}

/// The shadow and operation of a request topic; `None` for any other topic (the service's own
/// answers included).
pub fn parse_request(topic: &str) -> Option<(ShadowId, Operation)> {
    let rest = topic.strip_prefix("$aws/things/")?;
    let (thing, rest) = rest.split_once("/shadow/")?;
    let (name, op) = match rest.strip_prefix("name/") {
        Some(named) => {
            let (n, op) = named.split_once('/')?;
            (Some(n), op)
        }
        None => (None, rest),
    };
    let op = match op {
        "get" => Operation::Get,
        "update" => Operation::Update,
        "delete" => Operation::Delete,
        _ => return None,
    };
    let valid = |s: &str| !s.is_empty() && !s.contains(['/', '+', '#']);
    (valid(thing) && name.is_none_or(valid)).then(|| (ShadowId::new(thing, name), op))
}

/// A stored shadow document.
#[derive(Debug, Clone, PartialEq)]
pub struct Shadow {
    /// `desired` and `reported`, each present only once set ("Empty shadow document properties").
    pub state: Map<String, Value>,
    /// The same tree as `state`, with `{"timestamp": t}` at each leaf ("Document properties",
    /// `metadata`; arrays are leaves, as in the "Shadow document examples" document).
    pub metadata: Map<String, Value>,
    /// "Versioning shadow documents".
    pub version: u64,
}

/// What the service keeps for one shadow name: the shadow, if it exists, and the last version it
/// gave, which a deletion keeps ("Device Shadow MQTT topics", /delete: "deleting a shadow does not
/// reset its version number to 0"; "Interacting with shadows": a shadow created again "will
/// follow" the deleted one's version; after 48 hours it starts again: [`Slot::expire`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Slot {
    /// The shadow; `None` before its first update and after a deletion.
    pub shadow: Option<Shadow>,
    /// The last version given to this shadow name.
    pub version: u64,
}

impl Slot {
    /// 48 hours pass ("Interacting with shadows", DELETE): "If a device shadow document has been
    /// deleted for more than 48 hours, the version number of a new device shadow document with the
    /// same name will be 0", so the next update creates it at version 1 as for a shadow that never
    /// existed. Nothing changes while the shadow exists.
    pub fn expire(&mut self) {
        if self.shadow.is_none() {
            self.version = 0;
        }
    }
}

/// A message the service publishes: its topic after the shadow's prefix (`update/accepted`, ...)
/// and its JSON payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// `get/accepted`, `get/rejected`, `update/accepted`, `update/rejected`, `update/delta`,
    /// `update/documents`, `delete/accepted` or `delete/rejected`.
    pub suffix: &'static str,
    /// The response document.
    pub payload: Value,
}

impl Reply {
    /// Whether this answers the request (an `/accepted` or `/rejected` topic), as opposed to a
    /// notification (`update/delta`, `update/documents`).
    pub fn answers(&self) -> bool {
        self.suffix.ends_with("/accepted") || self.suffix.ends_with("/rejected")
    }
}

/// A rejection: "Device Shadow error messages" (HTTP code, message).
type Rejection = (u16, String);

/// Handles one request for shadow `id`, whose slot is `slot`, at time `now` (epoch seconds); returns what the service
/// publishes, the answer (`/accepted` or `/rejected`) first.
pub fn handle(
    slot: &mut Slot,
    id: &ShadowId,
    op: Operation,
    payload: &[u8],
    now: u64,
) -> Vec<Reply> {
    let name = id.name.as_deref().unwrap_or(&id.thing);
    let (token, request) = match read_request(op, payload) {
        Ok(r) => r,
        Err((token, rejection)) => return vec![rejected(op, rejection, token.as_ref(), now)],
    };
    let outcome = match op {
        Operation::Get => get(slot, name, now, token.as_ref()),
        Operation::Update => update(slot, &request, now, token.as_ref()),
        Operation::Delete => delete(slot, name, now, token.as_ref()),
    };
    outcome.unwrap_or_else(|r| vec![rejected(op, r, token.as_ref(), now)])
}

fn suffix(op: Operation, accepted: bool) -> &'static str {
    match (op, accepted) {
        (Operation::Get, true) => "get/accepted",
        (Operation::Get, false) => "get/rejected",
        (Operation::Update, true) => "update/accepted",
        (Operation::Update, false) => "update/rejected",
        (Operation::Delete, true) => "delete/accepted",
        (Operation::Delete, false) => "delete/rejected",
    }
}

/// "Device Shadow service documents", Error response document: `code`, `message`, `timestamp`,
/// and `clientToken` "only if a client token was used in the published message".
fn rejected(op: Operation, (code, message): Rejection, token: Option<&Value>, now: u64) -> Reply {
    let body = json!({"code": code, "message": message});
    reply(suffix(op, false), body, token, now)
}

/// A message with `body`, the response's `timestamp` and, if the request had one, its
/// `clientToken` (every response document of "Device Shadow service documents" has both).
fn reply(suffix: &'static str, mut payload: Value, token: Option<&Value>, now: u64) -> Reply {
    payload["timestamp"] = now.into();
    if let Some(t) = token {
        payload["clientToken"] = t.clone();
    }
    Reply { suffix, payload }
}

fn bad_request(message: &str) -> Rejection {
    (400, message.to_owned())
}

/// Reads the payload: the client token and, for an update, the request state document.
///
/// "Device Shadow error messages": 415 for a payload that is not UTF-8, 400 "Invalid JSON",
/// 400 "Invalid clientToken" (over 64 bytes: "Client tokens in shadow documents"). `/get` and
/// `/delete` take an empty message ("Device Shadow MQTT topics": "The content of the message is
/// ignored") or one with a client token, which is then echoed (Not documented for /delete beyond
/// the error document's `clientToken`; an empty or non-JSON message is taken as no token).
fn read_request(
    op: Operation,
    payload: &[u8],
) -> Result<(Option<Value>, Value), (Option<Value>, Rejection)> {
    let Ok(text) = std::str::from_utf8(payload) else {
        let r = (
            415,
            "Unsupported documented encoding; supported encoding is UTF-8".to_owned(),
        );
        return Err((None, r));
    };
    let parsed: Option<Value> = serde_json::from_str(text).ok();
    let request = match (op, parsed) {
        (Operation::Update, None) => return Err((None, bad_request("Invalid JSON"))),
        (Operation::Update, Some(v)) if !v.is_object() => {
            return Err((None, bad_request("Invalid JSON")))
        }
        (_, Some(v)) => v,
        (_, None) => json!({}),
    };
    let token = request.get("clientToken").cloned();
    match &token {
        Some(Value::String(t)) if t.len() <= MAX_CLIENT_TOKEN_BYTES => Ok((token, request)),
        None => Ok((None, request)),
        Some(_) => Err((None, bad_request("Invalid clientToken"))),
    }
}

/// "Interacting with shadows", Retrieving a shadow document: the complete document, with the
/// delta; 404 "No shadow exists with name: shadowName" ("Device Shadow error messages") when there
/// is none. The answer's form: "Device Shadow service documents", /accepted response state document
/// and Delta state (the delta's metadata "equal to the metadata in the desired field").
fn get(slot: &Slot, name: &str, now: u64, token: Option<&Value>) -> Result<Vec<Reply>, Rejection> {
    let shadow = slot.shadow.as_ref().ok_or_else(|| no_shadow(name))?;
    let mut state = shadow.state.clone();
    let mut metadata = shadow.metadata.clone();
    if let Some((delta, delta_meta)) = delta_of(shadow) {
        state.insert("delta".into(), Value::Object(delta));
        metadata.insert("delta".into(), Value::Object(delta_meta));
    }
    let body = json!({"state": state, "metadata": metadata, "version": shadow.version});
    Ok(vec![reply("get/accepted", body, token, now)])
}

fn no_shadow(name: &str) -> Rejection {
    (404, format!("No shadow exists with name: {name}"))
}

/// "Device Shadow MQTT topics", /delete/accepted and "Interacting with shadows", Deleting a shadow:
/// the shadow goes, the answer is the abbreviated `{"version": 4, "timestamp": ...}`; 404 when
/// there is no shadow. The version stays with the slot.
fn delete(
    slot: &mut Slot,
    name: &str,
    now: u64,
    token: Option<&Value>,
) -> Result<Vec<Reply>, Rejection> {
    slot.shadow.take().ok_or_else(|| no_shadow(name))?;
    let body = json!({"version": slot.version});
    Ok(vec![reply("delete/accepted", body, token, now)])
}

/// An update ("Interacting with shadows", Updating a shadow; "Device Shadow service documents";
/// "Device Shadow MQTT topics", /update, /update/accepted, /update/delta, /update/documents).
fn update(
    slot: &mut Slot,
    request: &Value,
    now: u64,
    token: Option<&Value>,
) -> Result<Vec<Reply>, Rejection> {
    let state = check_update(request)?;
    // "Interacting with shadows", Optimistic locking: with a version, the update is processed
    // only if it matches the current one, else 409 "Version conflict". Not documented: a version
    // for a shadow that does not exist; it matches nothing, so 409 too.
    if let Some(v) = request.get("version") {
        let current = slot.shadow.as_ref().map(|s| s.version);
        if v.as_u64() != current {
            return Err((409, "Version conflict".to_owned()));
        }
    }
    let previous = slot.shadow.clone();
    let mut next = previous.clone().unwrap_or(Shadow {
        state: Map::new(),
        metadata: Map::new(),
        version: 0,
    });
    apply(&mut next, state, now);
    // "Diagnosing problems with shadows": only `desired` and `reported` count toward the 8 KB,
    // and it is the stored document (after the merge) that must fit; 413 "The payload exceeds the
    // maximum size allowed" ("Device Shadow error messages").
    if Value::Object(next.state.clone()).to_string().len() > MAX_STATE_BYTES {
        return Err((
            413,
            "The payload exceeds the maximum size allowed".to_owned(),
        ));
    }
    // "Versioning shadow documents": every update increments the version by one (the response
    // state document's `version`: "increased by one over the previous version"), whether or not
    // a value changed; a shadow created again follows the deleted one's version.
    slot.version += 1;
    next.version = slot.version;

    // /update/accepted: the request's fields only, with their metadata ("Response state document
    // properties": `desired`/`reported` "contains only fields that were in the request").
    let metadata = state
        .as_object()
        .map_or_else(Map::new, |s| leaf_metadata(s, now));
    let body = json!({"state": state, "metadata": metadata, "version": next.version});
    let mut replies = vec![reply("update/accepted", body, token, now)];
    // /update/delta: published when an accepted update leaves `desired` and `reported` different;
    // it holds every differing desired attribute, "regardless of whether these attributes were
    // contained in the current update message" ("Device Shadow MQTT topics", Message body
    // details). Not documented beyond that sentence: whether a report alone (no `desired` in the
    // request) publishes it; this responder reads the rule as written and publishes it too.
    if let Some((delta, delta_meta)) = delta_of(&next) {
        let body = json!({"state": delta, "metadata": delta_meta, "version": next.version});
        replies.push(reply("update/delta", body, token, now));
    }
    // /update/documents: after every successful update, `previous` and `current` (state without
    // the delta, metadata, version) ("Device Shadow service documents", /documents response state
    // document). Not documented: `previous` of a shadow that did not exist; left out.
    let snapshot =
        |s: &Shadow| json!({"state": s.state, "metadata": s.metadata, "version": s.version});
    let mut body = json!({"current": snapshot(&next)});
    if let Some(p) = &previous {
        body["previous"] = snapshot(p);
    }
    replies.push(reply("update/documents", body, token, now));
    slot.shadow = Some(next);
    Ok(replies)
}

/// Validates an update request and returns its `state` ("Device Shadow error messages", 400).
fn check_update(request: &Value) -> Result<&Value, Rejection> {
    if request.get("version").is_some_and(|v| v.as_u64().is_none()) {
        return Err(bad_request("Invalid version"));
    }
    let state = request
        .get("state")
        .ok_or_else(|| bad_request("Missing required node: state"))?;
    // "Deleting Data" (AWS IoT Developer Guide, Using Shadows): `"state": null` deletes all of the
    // state data; the shadow remains.
    if state.is_null() {
        return Ok(state);
    }
    let sections = state
        .as_object()
        .ok_or_else(|| bad_request("State node must be an object"))?;
    for (key, section) in sections {
        let what = match key.as_str() {
            "desired" => "Desired",
            "reported" => "Reported",
            // The message names the node, as AWS's answer to a `delta` in an update does.
            other => {
                return Err(bad_request(&format!(
                    "State contains an invalid node: '{other}'"
                )))
            }
        };
        if section.is_null() {
            continue;
        }
        if !section.is_object() {
            return Err(bad_request(&format!("{what} node must be an object")));
        }
        if depth(section) > MAX_DEPTH {
            return Err(bad_request(
                "JSON contains too many levels of nesting; maximum is 6",
            ));
        }
        // "Array values in shadow documents": "Arrays can't have null values ... will be
        // rejected" (the message text is not documented).
        if has_null_in_array(section, false) {
            return Err(bad_request("Arrays can't have null values"));
        }
    }
    Ok(state)
}

/// Levels of keys: `{"a": 1}` is 1, `{"one": {"two": {}}}` is 2 (the quota's example counts
/// `"one"` to `"five"` as 5 levels); arrays are values and add no level.
fn depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => m.values().map(|c| 1 + depth(c)).max().unwrap_or(0),
        Value::Array(a) => a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn has_null_in_array(v: &Value, in_array: bool) -> bool {
    match v {
        Value::Null => in_array,
        Value::Object(m) => m.values().any(|c| has_null_in_array(c, false)),
        Value::Array(a) => a.iter().any(|c| has_null_in_array(c, true)),
        _ => false,
    }
}

/// Applies a valid request state to `shadow` ("Interacting with shadows", Updating a shadow:
/// "Updates affect only the fields specified"; Deleting shadow data: "Fields with a value of
/// null are removed"; "Empty shadow document properties": a section set to null is removed;
/// "Array values in shadow documents": an array is replaced whole).
fn apply(shadow: &mut Shadow, state: &Value, now: u64) {
    let Some(sections) = state.as_object() else {
        // `"state": null`
        shadow.state.clear();
        shadow.metadata.clear();
        return;
    };
    for (key, section) in sections {
        match section.as_object() {
            None => {
                shadow.state.remove(key);
                shadow.metadata.remove(key);
            }
            Some(fields) => {
                let target = object_at(&mut shadow.state, key);
                let meta = object_at(&mut shadow.metadata, key);
                merge(target, meta, fields, now);
            }
        }
    }
}

/// The object at `key` in `map`, made an (empty) object if it is missing or not one.
fn object_at<'m>(map: &'m mut Map<String, Value>, key: &str) -> &'m mut Map<String, Value> {
    let slot = map
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut().expect("made an object above")
}

/// Merges `patch` into `target`, keeping `meta` (the same tree, timestamps at the leaves) in step.
fn merge(
    target: &mut Map<String, Value>,
    meta: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    now: u64,
) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(key);
                meta.remove(key);
            }
            Value::Object(fields) => {
                let t = object_at(target, key);
                let m = object_at(meta, key);
                merge(t, m, fields, now);
            }
            leaf => {
                target.insert(key.clone(), leaf.clone());
                meta.insert(key.clone(), json!({"timestamp": now}));
            }
        }
    }
}

/// The metadata of a request's fields: the same tree, `{"timestamp": now}` at each leaf (a null,
/// which deletes, is a leaf too).
fn leaf_metadata(fields: &Map<String, Value>, now: u64) -> Map<String, Value> {
    fields
        .iter()
        .map(|(k, v)| {
            let m = match v {
                Value::Object(inner) => Value::Object(leaf_metadata(inner, now)),
                _ => json!({"timestamp": now}),
            };
            (k.clone(), m)
        })
        .collect()
}

/// The shadow's delta and its metadata, or `None` when it is empty.
fn delta_of(shadow: &Shadow) -> Option<(Map<String, Value>, Map<String, Value>)> {
    let empty = Map::new();
    let object = |m: &Map<String, Value>, k: &str| m.get(k).and_then(Value::as_object).cloned();
    let desired = object(&shadow.state, "desired")?;
    let reported = object(&shadow.state, "reported").unwrap_or_default();
    let d = delta(&desired, &reported);
    if d.is_empty() {
        return None;
    }
    let meta = object(&shadow.metadata, "desired").unwrap_or(empty);
    let m = delta_metadata(&d, &meta);
    Some((d, m))
}

/// "Device Shadow service documents", Delta state: every field of `desired` compared with
/// `reported`; a field missing from `reported` is in the delta, a field only in `reported` is not;
/// nested objects are compared field by field and the delta "contains the path all the way to the
/// root"; arrays are values, copied whole when they differ.
pub fn delta(desired: &Map<String, Value>, reported: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, want) in desired {
        match (want, reported.get(key)) {
            (Value::Object(w), Some(Value::Object(have))) => {
                let inner = delta(w, have);
                if !inner.is_empty() {
                    out.insert(key.clone(), Value::Object(inner));
                }
            }
            (_, Some(have)) if have == want => {}
            _ => {
                out.insert(key.clone(), want.clone());
            }
        }
    }
    out
}

/// The delta's metadata: "equal to the metadata in the desired field", for the delta's fields.
fn delta_metadata(
    delta: &Map<String, Value>,
    desired_meta: &Map<String, Value>,
) -> Map<String, Value> {
    delta
        .iter()
        .filter_map(|(k, v)| {
            let m = desired_meta.get(k)?;
            let m = match (v, m) {
                (Value::Object(inner), Value::Object(inner_meta)) if !is_leaf_meta(inner_meta) => {
                    Value::Object(delta_metadata(inner, inner_meta))
                }
                _ => m.clone(),
            };
            Some((k.clone(), m))
        })
        .collect()
}

/// A leaf's metadata, `{"timestamp": t}`, as opposed to an object's (keyed by its fields; a field
/// named `timestamp` whose own metadata is an object is told apart by that).
fn is_leaf_meta(m: &Map<String, Value>) -> bool {
    m.len() == 1 && m.get("timestamp").is_some_and(Value::is_number)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_591_057_529;

    fn lamp() -> ShadowId {
        ShadowId::new("lamp", None)
    }

    /// A slot holding a shadow with `state` at `version`, set at time 1.
    fn slot_with(state: Value, version: u64) -> Slot {
        let mut shadow = Shadow {
            state: Map::new(),
            metadata: Map::new(),
            version,
        };
        apply(&mut shadow, &state, 1);
        Slot {
            shadow: Some(shadow),
            version,
        }
    }

    fn request(slot: &mut Slot, op: Operation, payload: Value) -> Vec<Reply> {
        let bytes = if payload.is_null() {
            Vec::new()
        } else {
            payload.to_string().into_bytes()
        };
        handle(slot, &lamp(), op, &bytes, T)
    }

    fn suffixes(replies: &[Reply]) -> Vec<&str> {
        replies.iter().map(|r| r.suffix).collect()
    }

    fn state_of(slot: &Slot) -> Value {
        Value::Object(slot.shadow.as_ref().expect("a shadow").state.clone())
    }

    #[test]
    fn request_topics_of_classic_and_named_shadows_are_parsed_and_answers_are_not() {
        // "Device Shadow MQTT topics": the two ShadowTopicPrefix forms.
        let cases = [
            (
                "$aws/things/lamp/shadow/update",
                Some(("lamp", None, Operation::Update)),
            ),
            (
                "$aws/things/lamp/shadow/get",
                Some(("lamp", None, Operation::Get)),
            ),
            (
                "$aws/things/lamp/shadow/delete",
                Some(("lamp", None, Operation::Delete)),
            ),
            (
                "$aws/things/lamp/shadow/name/cfg/update",
                Some(("lamp", Some("cfg"), Operation::Update)),
            ),
            ("$aws/things/lamp/shadow/update/accepted", None),
            ("$aws/things/lamp/shadow/name/cfg/get/accepted", None),
            ("$aws/things/lamp/shadow/name//get", None),
            ("sensors/lamp", None),
        ];
        for (topic, want) in cases {
            let got = parse_request(topic);
            let got = got
                .as_ref()
                .map(|(id, op)| (id.thing.as_str(), id.name.as_deref(), *op));
            assert_eq!(got, want, "{topic}");
        }
        assert_eq!(
            ShadowId::new("lamp", Some("cfg")).prefix(),
            "$aws/things/lamp/shadow/name/cfg"
        );
    }

    #[test]
    fn the_delta_examples_of_the_documents_page() {
        // "Device Shadow service documents", Delta state, first example.
        let desired = json!({"color": "RED", "state": "STOP"});
        let reported = json!({"color": "GREEN", "engine": "ON"});
        let d = delta(desired.as_object().unwrap(), reported.as_object().unwrap());
        assert_eq!(Value::Object(d), json!({"color": "RED", "state": "STOP"}));
        // The same section: "When nested objects differ, the delta contains the path all the way
        // to the root."
        let desired = json!({"lights": {"color": {"r": 255, "g": 255, "b": 255}}});
        let reported = json!({"lights": {"color": {"r": 255, "g": 0, "b": 255}}});
        let d = delta(desired.as_object().unwrap(), reported.as_object().unwrap());
        assert_eq!(Value::Object(d), json!({"lights": {"color": {"g": 255}}}));
        // "Arrays are treated like values": the whole desired array when they differ.
        let desired = json!({"colors": ["RED"], "same": [1, 2]});
        let reported = json!({"colors": ["RED", "GREEN", "BLUE"], "same": [1, 2]});
        let d = delta(desired.as_object().unwrap(), reported.as_object().unwrap());
        assert_eq!(Value::Object(d), json!({"colors": ["RED"]}));
    }

    #[test]
    fn a_get_returns_the_document_with_its_delta_as_in_the_retrieving_example() {
        // "Using Shadows", Retrieving a Shadow Document: the example document and its response.
        let mut slot = slot_with(
            json!({
                "desired": {"lights": {"color": "RED"}, "engine": "ON"},
                "reported": {"lights": {"color": "GREEN"}, "engine": "ON"}
            }),
            10,
        );
        let replies = request(&mut slot, Operation::Get, json!({"clientToken": "t1"}));
        assert_eq!(suffixes(&replies), ["get/accepted"]);
        let doc = &replies[0].payload;
        assert_eq!(doc["state"]["delta"], json!({"lights": {"color": "RED"}}));
        assert_eq!(doc["state"]["desired"]["engine"], "ON");
        assert_eq!(
            doc["metadata"]["delta"],
            json!({"lights": {"color": {"timestamp": 1}}}),
            "the delta's metadata is the desired field's"
        );
        assert_eq!(
            doc["metadata"]["reported"]["engine"],
            json!({"timestamp": 1})
        );
        assert_eq!(
            (doc["version"].as_u64(), doc["timestamp"].as_u64()),
            (Some(10), Some(T))
        );
        assert_eq!(doc["clientToken"], "t1");
        // An empty message is a get too ("Device Shadow MQTT topics", /get), without a token.
        let replies = request(&mut slot, Operation::Get, Value::Null);
        assert_eq!(replies[0].payload.get("clientToken"), None);
        // No delta when desired and reported agree.
        let mut agreed = slot_with(
            json!({"desired": {"a": 1}, "reported": {"a": 1, "b": 2}}),
            3,
        );
        let replies = request(&mut agreed, Operation::Get, Value::Null);
        assert_eq!(replies[0].payload["state"].get("delta"), None);
    }

    #[test]
    fn a_get_of_a_missing_shadow_is_rejected_with_404() {
        // "Device Shadow error messages": 404 "No shadow exists with name: shadowName"; the error
        // document echoes the client token ("Device Shadow service documents").
        let mut slot = Slot::default();
        let replies = request(&mut slot, Operation::Get, json!({"clientToken": "t2"}));
        assert_eq!(suffixes(&replies), ["get/rejected"]);
        let doc = &replies[0].payload;
        assert_eq!(doc["code"], 404);
        assert_eq!(doc["message"], "No shadow exists with name: lamp");
        assert_eq!(doc["clientToken"], "t2");
        assert_eq!(slot, Slot::default(), "a get creates nothing");
    }

    #[test]
    fn an_update_merges_only_the_fields_given_and_publishes_accepted_delta_and_documents() {
        // "Using Shadows", Updating a Shadow: initial reported color {r:255,g:255,b:0}; an app
        // sends desired {color: {r: 10}, engine: ON}; the device gets that on /update/delta;
        // then the device reports {color: {r: 10}, engine: ON} and the final reported color is
        // {r: 10, g: 255, b: 0}.
        let mut slot = Slot::default();
        let first = request(
            &mut slot,
            Operation::Update,
            json!({"state": {"reported": {"color": {"r": 255, "g": 255, "b": 0}}}}),
        );
        assert_eq!(
            suffixes(&first),
            ["update/accepted", "update/documents"],
            "no delta without desired"
        );
        assert_eq!(
            first[0].payload["version"], 1,
            "a new shadow starts at version 1"
        );
        let docs = &first[1].payload;
        assert_eq!(docs.get("previous"), None, "no previous for a new shadow");
        assert_eq!(docs["current"]["version"], 1);

        let app = request(
            &mut slot,
            Operation::Update,
            json!({"state": {"desired": {"color": {"r": 10}, "engine": "ON"}}, "clientToken": "app"}),
        );
        assert_eq!(
            suffixes(&app),
            ["update/accepted", "update/delta", "update/documents"]
        );
        // /update/accepted: only the request's fields, their metadata, the token.
        let accepted = &app[0].payload;
        assert_eq!(
            accepted["state"],
            json!({"desired": {"color": {"r": 10}, "engine": "ON"}})
        );
        assert_eq!(
            accepted["metadata"],
            json!({"desired": {"color": {"r": {"timestamp": T}}, "engine": {"timestamp": T}}})
        );
        assert_eq!(
            (
                accepted["version"].as_u64(),
                accepted["clientToken"].as_str()
            ),
            (Some(2), Some("app"))
        );
        // /update/delta: the differing desired fields, with the desired metadata.
        let d = &app[1].payload;
        assert_eq!(d["state"], json!({"color": {"r": 10}, "engine": "ON"}));
        assert_eq!(
            d["metadata"],
            json!({"color": {"r": {"timestamp": T}}, "engine": {"timestamp": T}})
        );
        assert_eq!(d["version"], 2);
        // /update/documents: previous and current, state without delta, versions n-1 and n.
        let docs = &app[2].payload;
        assert_eq!(docs["previous"]["version"], 1);
        assert_eq!(
            docs["previous"]["state"],
            json!({"reported": {"color": {"r": 255, "g": 255, "b": 0}}})
        );
        assert_eq!(docs["current"]["version"], 2);
        assert_eq!(
            docs["current"]["state"]["desired"],
            json!({"color": {"r": 10}, "engine": "ON"})
        );
        assert_eq!(docs["current"]["state"].get("delta"), None);
        assert_eq!(docs["clientToken"], "app");

        let device = request(
            &mut slot,
            Operation::Update,
            json!({"state": {"reported": {"color": {"r": 10}, "engine": "ON"}}}),
        );
        assert_eq!(
            state_of(&slot)["reported"],
            json!({"color": {"r": 10, "g": 255, "b": 0}, "engine": "ON"})
        );
        assert_eq!(
            suffixes(&device),
            ["update/accepted", "update/documents"],
            "no delta once reported matches desired"
        );
        assert_eq!(slot.shadow.as_ref().unwrap().version, 3);
    }

    #[test]
    fn a_report_that_leaves_desired_unmet_publishes_the_whole_delta() {
        // "Device Shadow MQTT topics", /update/delta, Message body details: every differing
        // desired attribute, "regardless of whether these attributes were contained in the
        // current update message"; an attribute deleted from reported but still desired is in it.
        let mut slot = slot_with(
            json!({"desired": {"a": 1, "b": 2}, "reported": {"a": 1, "b": 2, "c": 3}}),
            4,
        );
        let replies = request(
            &mut slot,
            Operation::Update,
            json!({"state": {"reported": {"a": 0, "b": null, "c": 4}}}),
        );
        assert_eq!(
            suffixes(&replies),
            ["update/accepted", "update/delta", "update/documents"]
        );
        assert_eq!(replies[1].payload["state"], json!({"a": 1, "b": 2}));
    }

    #[test]
    fn optimistic_locking_rejects_a_stale_version_with_409_as_in_the_example() {
        // "Interacting with shadows", Optimistic locking: the example, word for word.
        let mut slot = slot_with(json!({"desired": {"colors": ["RED", "GREEN", "BLUE"]}}), 10);
        let stale = request(
            &mut slot,
            Operation::Update,
            json!({"state": {"desired": {"colors": ["BLUE"]}}, "version": 9,
                   "clientToken": "426bfd96-e720-46d3-95cd-014e3ef12bb6"}),
        );
        assert_eq!(suffixes(&stale), ["update/rejected"]);
        let err = &stale[0].payload;
        assert_eq!(
            (err["code"].as_u64(), err["message"].as_str()),
            (Some(409), Some("Version conflict"))
        );
        assert_eq!(err["clientToken"], "426bfd96-e720-46d3-95cd-014e3ef12bb6");
        assert_eq!(slot.shadow.as_ref().unwrap().version, 10, "nothing changed");

        let current = request(
            &mut slot,
            Operation::Update,
            json!({"state": {"desired": {"colors": ["BLUE"]}}, "version": 10}),
        );
        assert_eq!(current[0].suffix, "update/accepted");
        assert_eq!(state_of(&slot), json!({"desired": {"colors": ["BLUE"]}}));
        assert_eq!(slot.shadow.as_ref().unwrap().version, 11);
        // Without a version there is no check ("Versioning shadow documents").
        let unversioned = request(
            &mut slot,
            Operation::Update,
            json!({"state": {"desired": {"x": 1}}}),
        );
        assert_eq!(unversioned[0].payload["version"], 12);
        // A version for a shadow that does not exist matches nothing.
        let mut missing = Slot::default();
        let r = request(
            &mut missing,
            Operation::Update,
            json!({"state": {"desired": {"x": 1}}, "version": 0}),
        );
        assert_eq!(r[0].payload["code"], 409);
    }

    #[test]
    fn nulls_delete_fields_and_sections_as_in_the_deleting_data_example() {
        // "Using Shadows", Deleting Data: the example's initial state, update and final state.
        let mut slot = slot_with(
            json!({
                "desired": {"lights": {"color": "RED"}, "engine": "ON"},
                "reported": {"lights": {"color": "GREEN"}, "engine": "OFF"}
            }),
            5,
        );
        let replies = request(
            &mut slot,
            Operation::Update,
            json!({"state": {"desired": null, "reported": {"engine": null}}}),
        );
        assert_eq!(replies[0].suffix, "update/accepted");
        assert_eq!(
            state_of(&slot),
            json!({"reported": {"lights": {"color": "GREEN"}}})
        );
        assert_eq!(
            Value::Object(slot.shadow.as_ref().unwrap().metadata.clone()),
            json!({"reported": {"lights": {"color": {"timestamp": 1}}}}),
            "deleted fields lose their metadata; the others keep theirs"
        );
        // "Interacting with shadows", Deleting a property: {"desired": {"engine": null}}.
        let mut slot = slot_with(json!({"desired": {"engine": "ON", "color": "RED"}}), 1);
        request(
            &mut slot,
            Operation::Update,
            json!({"state": {"desired": {"engine": null}}}),
        );
        assert_eq!(state_of(&slot), json!({"desired": {"color": "RED"}}));
        // "Using Shadows": `"state": null` deletes all state data; the shadow remains and the
        // version goes on.
        let replies = request(&mut slot, Operation::Update, json!({"state": null}));
        assert_eq!(replies[0].suffix, "update/accepted");
        assert_eq!(state_of(&slot), json!({}));
        let get = request(&mut slot, Operation::Get, Value::Null);
        assert_eq!(
            (get[0].suffix, get[0].payload["version"].as_u64()),
            ("get/accepted", Some(3))
        );
    }

    #[test]
    fn metadata_has_a_timestamp_per_field_and_arrays_are_one_value() {
        // "Device Shadow service documents", the example document: `sequence`, an array, has one
        // timestamp, like `color`.
        let mut slot = Slot::default();
        request(
            &mut slot,
            Operation::Update,
            json!({"state": {"desired": {"color": "RED", "sequence": ["RED", "GREEN", "BLUE"]},
                             "reported": {"color": "GREEN"}}}),
        );
        let get = request(&mut slot, Operation::Get, Value::Null);
        assert_eq!(
            get[0].payload["metadata"],
            json!({
                "desired": {"color": {"timestamp": T}, "sequence": {"timestamp": T}},
                "reported": {"color": {"timestamp": T}},
                "delta": {"color": {"timestamp": T}, "sequence": {"timestamp": T}}
            })
        );
        // "Array values in shadow documents": an update replaces the whole array.
        request(
            &mut slot,
            Operation::Update,
            json!({"state": {"desired": {"sequence": ["RED"]}}}),
        );
        assert_eq!(state_of(&slot)["desired"]["sequence"], json!(["RED"]));
    }

    #[test]
    fn a_deleted_shadow_is_gone_but_its_version_goes_on() {
        // "Interacting with shadows", Deleting a shadow: the abbreviated accepted document; a get
        // afterwards is 404; "deleting a shadow does not reset its version number to 0", and a
        // shadow created again follows the deleted one's version.
        let mut slot = slot_with(json!({"reported": {"a": 1}}), 4);
        let replies = request(&mut slot, Operation::Delete, Value::Null);
        assert_eq!(suffixes(&replies), ["delete/accepted"]);
        assert_eq!(replies[0].payload, json!({"version": 4, "timestamp": T}));
        let get = request(&mut slot, Operation::Get, Value::Null);
        assert_eq!(get[0].payload["code"], 404);
        let again = request(&mut slot, Operation::Delete, json!({"clientToken": "d"}));
        assert_eq!(
            (again[0].suffix, again[0].payload["code"].as_u64()),
            ("delete/rejected", Some(404))
        );
        assert_eq!(again[0].payload["clientToken"], "d");
        let mut later = slot.clone();
        let created = request(
            &mut slot,
            Operation::Update,
            json!({"state": {"reported": {"b": 2}}}),
        );
        assert_eq!(created[0].payload["version"], 5);
        // More than 48 hours after the deletion, the version starts again.
        later.expire();
        let anew = request(&mut later, Operation::Update, json!({"state": {}}));
        assert_eq!(anew[0].payload["version"], 1);
        let mut existing = slot.clone();
        existing.expire();
        assert_eq!(existing, slot, "an existing shadow does not expire");
        assert_eq!(created[1].payload.get("previous"), None);
        assert_eq!(state_of(&slot), json!({"reported": {"b": 2}}));
    }

    #[test]
    fn malformed_updates_are_rejected_with_the_documented_errors() {
        // "Device Shadow error messages", 400, 413, 415; limits from "Client tokens in shadow
        // documents", "Array values in shadow documents" and the quotas (module constants).
        let deep = (0..MAX_DEPTH).fold(json!(1), |v, i| json!({ format!("l{i}"): v }));
        let too_deep = json!({ "l": deep.clone() });
        let big = "x".repeat(MAX_STATE_BYTES);
        let cases: Vec<(&[u8], u16, &str)> = vec![
            (b"{not json", 400, "Invalid JSON"),
            (b"[1]", 400, "Invalid JSON"),
            (
                b"{\"clientToken\":\"t\"}",
                400,
                "Missing required node: state",
            ),
            (b"{\"state\": 1}", 400, "State node must be an object"),
            (
                b"{\"state\": {\"desired\": 1}}",
                400,
                "Desired node must be an object",
            ),
            (
                b"{\"state\": {\"reported\": \"x\"}}",
                400,
                "Reported node must be an object",
            ),
            (
                b"{\"state\": {\"delta\": {\"a\": 1}}}",
                400,
                "State contains an invalid node: 'delta'",
            ),
            (
                b"{\"state\": {}, \"version\": \"7\"}",
                400,
                "Invalid version",
            ),
            (b"{\"state\": {}, \"version\": -1}", 400, "Invalid version"),
            (
                b"{\"state\": {\"desired\": {\"c\": [null, \"RED\"]}}}",
                400,
                "Arrays can't have null values",
            ),
            (
                b"\xff\xfe",
                415,
                "Unsupported documented encoding; supported encoding is UTF-8",
            ),
        ];
        let long_token =
            json!({"state": {}, "clientToken": "t".repeat(MAX_CLIENT_TOKEN_BYTES + 1)}).to_string();
        let nested = json!({"state": {"desired": too_deep}}).to_string();
        let oversized = json!({"state": {"reported": {"blob": big}}}).to_string();
        let built: Vec<(Vec<u8>, u16, &str)> = vec![
            (long_token.into_bytes(), 400, "Invalid clientToken"),
            (
                nested.into_bytes(),
                400,
                "JSON contains too many levels of nesting; maximum is 6",
            ),
            (
                oversized.into_bytes(),
                413,
                "The payload exceeds the maximum size allowed",
            ),
        ];
        let all = cases
            .into_iter()
            .map(|(p, c, m)| (p.to_vec(), c, m))
            .chain(built);
        for (payload, code, message) in all {
            let mut slot = slot_with(json!({"reported": {"a": 1}}), 2);
            let before = slot.clone();
            let replies = handle(&mut slot, &lamp(), Operation::Update, &payload, T);
            let text = String::from_utf8_lossy(&payload);
            assert_eq!(suffixes(&replies), ["update/rejected"], "{text}");
            assert_eq!(replies[0].payload["code"], code, "{text}");
            assert_eq!(replies[0].payload["message"], message, "{text}");
            assert_eq!(slot, before, "a rejected update changes nothing: {text}");
        }
        // At the limits: 8 levels, a 64-byte token, and an empty state are accepted.
        let mut slot = Slot::default();
        let ok =
            json!({"state": {"desired": deep}, "clientToken": "t".repeat(MAX_CLIENT_TOKEN_BYTES)});
        assert_eq!(
            request(&mut slot, Operation::Update, ok)[0].suffix,
            "update/accepted"
        );
        assert_eq!(
            request(&mut slot, Operation::Update, json!({"state": {}}))[0].suffix,
            "update/accepted"
        );
    }

    #[test]
    fn the_size_limit_counts_the_stored_state_after_the_merge() {
        // "Diagnosing problems with shadows": only desired and reported count, and the merged
        // document is what must fit (two halves that fit alone do not fit together).
        let half = "x".repeat(MAX_STATE_BYTES / 2);
        let mut slot = Slot::default();
        let first = request(
            &mut slot,
            Operation::Update,
            json!({"state": {"desired": {"a": half}}}),
        );
        assert_eq!(first[0].suffix, "update/accepted");
        let second = request(
            &mut slot,
            Operation::Update,
            json!({"state": {"reported": {"b": half}}}),
        );
        assert_eq!(second[0].payload["code"], 413);
        assert_eq!(slot.shadow.as_ref().unwrap().version, 1);
    }

    #[test]
    fn named_shadows_get_their_own_name_in_errors() {
        let mut slot = Slot::default();
        let id = ShadowId::new("lamp", Some("cfg"));
        let replies = handle(&mut slot, &id, Operation::Get, b"", T);
        assert_eq!(
            replies[0].payload["message"],
            "No shadow exists with name: cfg"
        );
    }
}
