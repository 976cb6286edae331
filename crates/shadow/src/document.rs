//! The pure AWS IoT Device Shadow document model: request validation, merge, metadata, delta and the exact
//! JSON documents the service publishes.
//!
//! This module does no IO and never reads the clock: every function that stamps a document takes `now`
//! (epoch seconds) from its caller, and every function that needs the stored shadow is handed it. The shell
//! around it (SQLite, MQTT) decides what to persist and publish; it publishes an `accepted` document only after
//! the returned [`Shadow`] is durable.
//!
//! The behaviour follows the AWS IoT Developer Guide to the letter; each rule cites its section:
//! - "Device Shadow service documents" (`device-shadow-document.md`): document properties, versioning, the
//!   64-byte client token, empty sections, arrays replaced whole, arrays can't hold `null`.
//! - "Shadow document syntax" (`device-shadow-document-syntax.md`): request, response and error documents.
//! - "Device Shadow MQTT topics" (`device-shadow-mqtt.md`): what `/update/delta` contains and when it is sent,
//!   what `/update/documents` and `/delete/accepted` carry.
//! - "Interacting with shadows" (`device-shadow-data-flow.md`): optimistic locking (409), deleting properties
//!   with `null`, deleting a shadow keeps its version for 48 hours.
//! - "Device Shadow error messages" (`device-shadow-error-messages.md`): codes and message texts.
//! - "Simulating Device Shadow service communications" (anchor `using-device-shadows`): metadata of arrays
//!   (one timestamp object per element) and the shape of `/update/documents`.
//! - "Diagnosing problems with shadows" (`diagnosing-shadows.html`): the 8 KB state limit and that content
//!   outside `desired` and `reported` is ignored.
//! - "AWS IoT Core endpoints and quotas", Device Shadow limits (`general/latest/gr/iot-core.html`, formerly
//!   the developer guide's "AWS IoT Limits"): the nesting depth of `desired` and `reported`.
//!
//! Where AWS's own documentation is silent, the module follows AWS IoT Greengrass's Shadow manager
//! (`aws-greengrass/aws-greengrass-shadow-manager`), AWS's own re-implementation of the service for the edge;
//! each such choice says so.

use std::io;

use grove_shadow_api::token::token_field;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A JSON object: the type of the `desired` and `reported` sections and of their metadata.
pub type Object = Map<String, Value>;

/// Default limit on the stored state, 8 KiB. "Diagnosing problems with shadows": "The device's shadow
/// supports 8 KB of data only ... Only the data for desired and reported state inside the state document ...
/// counts toward the limit"; metadata does not ("Device Shadow service documents", `metadata`).
pub const DEFAULT_MAX_STATE_BYTES: usize = 8 * 1024;

/// Default nesting limit, 6, counted per section. AWS IoT's Device Shadow limits ("AWS IoT Core endpoints
/// and quotas", Device Shadow limits, "Maximum depth of JSON device state documents") say: "The maximum
/// number of levels in the desired or reported section of the JSON device state document is 5. For
/// example: `"desired": {"one": {"two": {"three": {"four": {"five": {}}}}}}`", and the 400 message for a
/// deeper one is "JSON contains too many levels of nesting; maximum is 6" ("Device Shadow error messages").
/// The two agree when the `desired` (or `reported`) object itself is level 1 and every object or array
/// inside it adds one: AWS's example, whose deepest level is an empty object, is then exactly 6 deep and
/// accepted, and one more level is 7 and rejected. So the limit is checked on each section, not on
/// `state`, empty objects count, and the number in the message is this one. Arrays count as levels too,
/// as in AWS Greengrass's Shadow manager (AWS's text shows only objects).
pub const DEFAULT_MAX_DEPTH: usize = 6;

/// Default limit on a whole request payload before it is parsed, AWS IoT Core's 128 KB MQTT message size.
/// The state limit is what AWS documents for shadows; this one only keeps a huge payload from being parsed.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 128 * 1024;

/// How long a deleted shadow's version is remembered. "Interacting with shadows", DELETE: "If you create a
/// device shadow document that has the same name as one that was deleted within the past 48 hours, the
/// version number of the new device shadow document will follow that of the deleted one. If a device shadow
/// document has been deleted for more than 48 hours, the version number of a new device shadow document with
/// the same name will be 0."
pub const VERSION_RETENTION_SECS: u64 = 48 * 60 * 60;

/// The configurable limits of request validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest stored state (compact JSON of `desired` plus `reported`) an update may produce; 413 above.
    pub max_state_bytes: usize,
    /// Deepest nesting a request's `desired` or `reported` section may have, counting the section's object
    /// itself as level 1 (see [`DEFAULT_MAX_DEPTH`]); 400 above.
    pub max_depth: usize,
    /// Largest request payload that is parsed at all; 413 above.
    pub max_payload_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_state_bytes: DEFAULT_MAX_STATE_BYTES,
            max_depth: DEFAULT_MAX_DEPTH,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }
}

/// Why a request was rejected: AWS's error code and exact message ("Device Shadow error messages").
///
/// Decoding a request is on the hot path, so this is a plain enum: only the two variants that quote a name
/// carry a `String`, and they are built only when a request fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// 415: the payload is not UTF-8. (The text is AWS's, including "documented".)
    #[error("Unsupported documented encoding; supported encoding is UTF-8")]
    UnsupportedEncoding,
    /// 400: the payload is not a JSON object (or holds a `null` inside an array, which "Device Shadow service
    /// documents", Arrays, says "is not valid and will be rejected"; AWS does not document that message).
    #[error("Invalid JSON")]
    InvalidJson,
    /// 400: an update without `state`.
    #[error("Missing required node: state")]
    MissingState,
    /// 400: `state` is neither an object nor `null`.
    #[error("State node must be an object")]
    StateNotObject,
    /// 400: `state.desired` is neither an object nor `null`.
    #[error("Desired node must be an object")]
    DesiredNotObject,
    /// 400: `state.reported` is neither an object nor `null`.
    #[error("Reported node must be an object")]
    ReportedNotObject,
    /// 400: `state` holds a key other than `desired` and `reported`. AWS quotes the key, as in
    /// "State contains an invalid node: 'delta'" (reported by AWS IoT Core to Greengrass, shadow-manager #178).
    #[error("State contains an invalid node: '{0}'")]
    InvalidStateNode(String),
    /// 400: `version` is not a non-negative integer.
    #[error("Invalid version")]
    InvalidVersion,
    /// 400: `clientToken` is not a string of at most 64 bytes.
    #[error("Invalid clientToken")]
    InvalidClientToken,
    /// 400: `desired` or `reported` is nested deeper than the limit.
    #[error("JSON contains too many levels of nesting; maximum is {0}")]
    TooDeep(usize),
    /// 400: the thing or shadow name in the request topic is not one AWS accepts. AWS IoT Core refuses
    /// such a publish outright and documents no answer; Grove answers on `/rejected` so a device learns
    /// why (Grove's own text).
    #[error("Invalid {0}")]
    InvalidName(String),
    /// 404: get or delete of a shadow that does not exist; quotes the shadow name, or the thing name for
    /// a classic shadow.
    #[error("No shadow exists with name: '{0}'")]
    NoShadow(String),
    /// 409: the request's `version` is not the shadow's current version.
    #[error("Version conflict")]
    VersionConflict,
    /// 413: the payload or the resulting state is over its limit.
    #[error("The payload exceeds the maximum size allowed")]
    TooLarge,
    /// 429: more requests in flight on one connection than allowed; decided by the shell. AWS documents the
    /// condition but not the text, so the text is the HTTP reason phrase of 429.
    #[error("Too Many Requests")]
    TooManyRequests,
    /// 500: the shell failed (for example, the store did not commit).
    #[error("Internal service failure")]
    Internal,
}

impl Rejection {
    /// The HTTP-style code AWS puts in the error document.
    pub fn code(&self) -> u16 {
        match self {
            Rejection::UnsupportedEncoding => 415,
            Rejection::InvalidJson
            | Rejection::MissingState
            | Rejection::StateNotObject
            | Rejection::DesiredNotObject
            | Rejection::ReportedNotObject
            | Rejection::InvalidStateNode(_)
            | Rejection::InvalidVersion
            | Rejection::InvalidClientToken
            | Rejection::TooDeep(_)
            | Rejection::InvalidName(_) => 400,
            Rejection::NoShadow(_) => 404,
            Rejection::VersionConflict => 409,
            Rejection::TooLarge => 413,
            Rejection::TooManyRequests => 429,
            Rejection::Internal => 500,
        }
    }
}

/// A rejected request: the reason and the client token to echo, if the request carried a valid one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Rejected {
    /// Code and message.
    pub reason: Rejection,
    /// "Present only if a client token was used when publishing valid JSON" ("Shadow document syntax",
    /// Error response documents).
    pub client_token: Option<String>,
}

impl Rejected {
    /// A rejection echoing `client_token`.
    pub fn new(reason: Rejection, client_token: Option<String>) -> Self {
        Rejected {
            reason,
            client_token,
        }
    }

    /// The error code.
    pub fn code(&self) -> u16 {
        self.reason.code()
    }

    /// The `/rejected` document: `{"code", "message", "timestamp", "clientToken"}` ("Shadow document syntax",
    /// Error response documents).
    pub fn document(&self, now: u64) -> Value {
        let mut doc = Object::new();
        doc.insert("code".into(), self.code().into());
        doc.insert("message".into(), self.reason.to_string().into());
        doc.insert("timestamp".into(), now.into());
        with_token(doc, self.client_token.as_deref())
    }
}

/// Why a stored shadow could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum StoredShadowError {
    /// The stored JSON is not a shadow written by [`Shadow::to_document`].
    #[error("stored shadow is malformed: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// The `desired` and `reported` sections of a state, or of its metadata.
///
/// "Device Shadow service documents", Empty sections: a section is present only when it has content, so an
/// empty section is stored as `None`.
///
/// Documents are written straight from these types with serde (`Serialize`, borrowing), never through a
/// `Value` copy of the shadow: an update publishes the shadow twice (`/update/documents`' `previous` and
/// `current`) and stores it once, and copying it into `Value`s for each was most of an update's cost.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Sections {
    /// The desired section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<Object>,
    /// The reported section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<Object>,
}

impl Sections {
    fn to_json(&self) -> Value {
        let mut out = Object::new();
        if let Some(desired) = &self.desired {
            out.insert("desired".into(), Value::Object(desired.clone()));
        }
        if let Some(reported) = &self.reported {
            out.insert("reported".into(), Value::Object(reported.clone()));
        }
        Value::Object(out)
    }

    fn section_mut(&mut self, name: Section) -> &mut Option<Object> {
        match name {
            Section::Desired => &mut self.desired,
            Section::Reported => &mut self.reported,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Section {
    Desired,
    Reported,
}

/// One stored shadow: its state, the metadata mirroring it, its version, and whether it was deleted.
///
/// A deleted shadow is kept as a tombstone (empty state, `deleted_at` set) so that a shadow re-created within
/// [`VERSION_RETENTION_SECS`] continues from the deleted version, as AWS does.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Shadow {
    state: Sections,
    metadata: Sections,
    version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deleted_at: Option<u64>,
}

/// `{"state", "metadata", "version"}` of a shadow, the form of `previous` and `current` in `/update/documents`.
#[derive(Serialize)]
struct Snapshot<'a> {
    state: &'a Sections,
    metadata: &'a Sections,
    version: u64,
}

/// The `/update/accepted` document.
#[derive(Serialize)]
struct AcceptedDocument<'a> {
    state: &'a Value,
    metadata: Value,
    version: u64,
    timestamp: u64,
    #[serde(rename = "clientToken", skip_serializing_if = "Option::is_none")]
    client_token: Option<&'a str>,
}

/// The `/update/documents` document.
#[derive(Serialize)]
struct Documents<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    previous: Option<Snapshot<'a>>,
    current: Snapshot<'a>,
    timestamp: u64,
    #[serde(rename = "clientToken", skip_serializing_if = "Option::is_none")]
    client_token: Option<&'a str>,
}

/// The `/update/delta` document.
#[derive(Serialize)]
struct DeltaDocument<'a> {
    state: Object,
    metadata: Object,
    version: u64,
    timestamp: u64,
    #[serde(rename = "clientToken", skip_serializing_if = "Option::is_none")]
    client_token: Option<&'a str>,
}

/// A document as JSON text. Serialising maps of JSON values and plain fields cannot fail (serde_json
/// fails only on non-string map keys and on a failing writer, and a `String` does not fail).
fn to_text(document: &impl Serialize) -> String {
    serde_json::to_string(document).unwrap_or_default()
}

impl Shadow {
    /// The current version: the number of accepted updates, continued across deletions within 48 hours.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether the shadow exists (false for a tombstone left by a delete).
    pub fn exists(&self) -> bool {
        self.deleted_at.is_none()
    }

    /// When the shadow was deleted, for a tombstone.
    pub fn deleted_at(&self) -> Option<u64> {
        self.deleted_at
    }

    /// Whether this is a tombstone whose version AWS would no longer continue, so the store may drop it
    /// (the store drops those deleted before [`tombstone_cutoff`]).
    pub fn is_expired_tombstone(&self, now: u64) -> bool {
        self.deleted_at
            .is_some_and(|at| now.saturating_sub(at) > VERSION_RETENTION_SECS)
    }

    /// The state sections.
    pub fn state(&self) -> &Sections {
        &self.state
    }

    /// The metadata sections, mirroring [`Shadow::state`] with a `{"timestamp": T}` per leaf.
    pub fn metadata(&self) -> &Sections {
        &self.metadata
    }

    /// The JSON text the store persists: `{"state", "metadata", "version", "deletedAt"?}`.
    pub fn to_document(&self) -> String {
        to_text(self)
    }

    /// Reads back what [`Shadow::to_document`] wrote.
    pub fn from_document(text: &str) -> Result<Shadow, StoredShadowError> {
        Ok(serde_json::from_str(text)?)
    }

    fn snapshot(&self) -> Snapshot<'_> {
        Snapshot {
            state: &self.state,
            metadata: &self.metadata,
            version: self.version,
        }
    }

    /// An empty shadow at `version`: a tombstone when `deleted_at` is set, else the starting point of a new
    /// shadow.
    fn blank(version: u64, deleted_at: Option<u64>) -> Shadow {
        Shadow {
            state: Sections::default(),
            metadata: Sections::default(),
            version,
            deleted_at,
        }
    }

    /// The live shadow, if `stored` is one (not absent, not a tombstone).
    fn live(stored: Option<&Shadow>) -> Option<&Shadow> {
        stored.filter(|s| s.exists())
    }

    /// The version a request's `version` must match and the next update builds on: the live version, a
    /// tombstone's version within the retention window, else 0.
    fn base_version(stored: Option<&Shadow>, now: u64) -> u64 {
        match stored {
            Some(s) if !s.is_expired_tombstone(now) => s.version,
            _ => 0,
        }
    }
}

/// The store may forget tombstones deleted before this time (epoch seconds): exactly those for which
/// [`Shadow::is_expired_tombstone`] holds at `now`, so a re-created shadow starts at version 0 whether its
/// tombstone was dropped or not, and a tombstone that still continues a version is never dropped.
pub fn tombstone_cutoff(now: u64) -> u64 {
    now.saturating_sub(VERSION_RETENTION_SECS)
}

/// A validated update request ("Shadow document syntax", Request state documents).
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateRequest {
    /// The request's `state` as received: an object with `desired` and/or `reported`, or `null`.
    state: Value,
    client_token: Option<String>,
    version: Option<u64>,
}

impl UpdateRequest {
    /// The request's `state` as received (an object or `null`), for forwarding the same update upstream.
    pub fn state(&self) -> &Value {
        &self.state
    }

    /// The client token to echo.
    pub fn client_token(&self) -> Option<&str> {
        self.client_token.as_deref()
    }

    /// The version the request is conditional on, if any.
    pub fn version(&self) -> Option<u64> {
        self.version
    }
}

/// The outcome of an accepted update: the shadow to persist and the documents (JSON text) to publish after it
/// is durable.
#[derive(Debug, Clone, PartialEq)]
pub struct Updated {
    /// The new shadow.
    pub shadow: Shadow,
    /// The `/update/accepted` document.
    pub accepted: String,
    /// The `/update/documents` document.
    pub documents: String,
    /// The `/update/delta` document, when the new shadow's desired state differs from its reported state.
    pub delta: Option<String>,
}

/// The outcome of an accepted delete.
#[derive(Debug, Clone, PartialEq)]
pub struct Deleted {
    /// The tombstone to persist in place of the shadow (it keeps the version).
    pub shadow: Shadow,
    /// The `/delete/accepted` document.
    pub accepted: Value,
}

/// Validates an `/update` payload. Checks run in this order, so the first failure decides the answer:
/// size (413), UTF-8 (415), JSON object (400), `clientToken`, `version`, `state` and its sections, `null`
/// in arrays, nesting depth. Keys outside `state`, `clientToken` and `version` are ignored ("Diagnosing
/// problems with shadows": "JSON content (even if formally correct) outside of those sections is ignored").
pub fn decode_update(payload: &[u8], limits: &Limits) -> Result<UpdateRequest, Rejected> {
    if payload.len() > limits.max_payload_bytes {
        return Err(Rejected::new(Rejection::TooLarge, None));
    }
    let mut doc = parse_object(payload)?;
    let client_token = client_token(&doc)?;
    let fail = |reason| Rejected::new(reason, client_token.clone());
    let version = match doc.get("version") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| fail(Rejection::InvalidVersion))?),
    };
    let state = doc
        .remove("state")
        .ok_or_else(|| fail(Rejection::MissingState))?;
    match &state {
        // "Interacting with shadows", Deleting a shadow: "Setting the device's shadow state to null does not
        // delete the shadow", so `"state": null` is a valid update that empties both sections.
        Value::Null => {}
        Value::Object(sections) => {
            for (key, value) in sections {
                let reason = match key.as_str() {
                    "desired" => Rejection::DesiredNotObject,
                    "reported" => Rejection::ReportedNotObject,
                    other => return Err(fail(Rejection::InvalidStateNode(other.to_owned()))),
                };
                if !(value.is_object() || value.is_null()) {
                    return Err(fail(reason));
                }
            }
        }
        _ => return Err(fail(Rejection::StateNotObject)),
    }
    if has_null_in_array(&state) {
        return Err(fail(Rejection::InvalidJson));
    }
    // Per section, the section's object being level 1 (see `DEFAULT_MAX_DEPTH`); `state` itself and
    // a `null` section add nothing.
    let deepest = state.as_object().map_or(0, |sections| {
        sections.values().map(depth).max().unwrap_or(0)
    });
    if deepest > limits.max_depth {
        return Err(fail(Rejection::TooDeep(limits.max_depth)));
    }
    Ok(UpdateRequest {
        state,
        client_token,
        version,
    })
}

/// Reads the optional `{"clientToken": "..."}` of a `/get` or `/delete` request (or of any request the shell
/// rejects before decoding it, such as a 429). "Device Shadow MQTT topics", /get: "Publish an empty message
/// to this topic"; AWS's SDKs send a client token, which is echoed.
pub fn decode_client_token(payload: &[u8]) -> Result<Option<String>, Rejected> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let doc = parse_object(payload)?;
    client_token(&doc)
}

/// Applies a validated update to the stored shadow (`None` if it never existed).
///
/// "Interacting with shadows", Optimistic locking: a request `version` must equal the current version, else
/// 409. Every accepted update increments the version by one ("Device Shadow service documents", Versioning).
pub fn apply_update(
    stored: Option<&Shadow>,
    request: &UpdateRequest,
    limits: &Limits,
    now: u64,
) -> Result<Updated, Rejected> {
    let token = request.client_token.as_deref();
    let fail = |reason| Rejected::new(reason, request.client_token.clone());
    let base = Shadow::base_version(stored, now);
    if request.version.is_some_and(|v| v != base) {
        return Err(fail(Rejection::VersionConflict));
    }
    let previous = Shadow::live(stored);
    let mut next = previous.cloned().unwrap_or_else(|| Shadow::blank(0, None));
    next.deleted_at = None;
    next.version = base
        .checked_add(1)
        .ok_or_else(|| fail(Rejection::Internal))?;
    match &request.state {
        Value::Object(sections) => {
            for (key, patch) in sections {
                let section = match key.as_str() {
                    "desired" => Section::Desired,
                    _ => Section::Reported,
                };
                apply_section(&mut next, section, patch, now);
            }
        }
        _ => {
            next.state = Sections::default();
            next.metadata = Sections::default();
        }
    }
    if state_size(&next.state) > limits.max_state_bytes {
        return Err(fail(Rejection::TooLarge));
    }

    // "Shadow document syntax", /accepted response: the request's state, the metadata of the fields it
    // updated (a `null` that deleted a field is stamped too, as AWS Greengrass's Shadow manager does).
    let accepted = to_text(&AcceptedDocument {
        state: &request.state,
        metadata: metadata_of(&request.state, now),
        version: next.version,
        timestamp: now,
        client_token: token,
    });

    // "Device Shadow MQTT topics", /update/documents: published "whenever an update to the shadow is
    // successfully performed" with `previous` and `current`. A shadow that did not exist before has no
    // `previous` (AWS Greengrass's Shadow manager omits it).
    let documents = to_text(&Documents {
        previous: previous.map(Shadow::snapshot),
        current: next.snapshot(),
        timestamp: now,
        client_token: token,
    });

    // "Device Shadow MQTT topics", /update/delta: published "when it accepts a change for the device's shadow,
    // and the request state document contains different values for desired and reported states", with all
    // differing desired attributes "regardless of whether these attributes were contained in the current
    // update message or were already stored". So the test is on the shadow after the update, whichever
    // section the request touched (AWS Greengrass's Shadow manager decides the same way).
    let delta = delta_with_metadata(&next).map(|(state, metadata)| {
        to_text(&DeltaDocument {
            state,
            metadata,
            version: next.version,
            timestamp: now,
            client_token: token,
        })
    });

    Ok(Updated {
        shadow: next,
        accepted,
        documents,
        delta,
    })
}

/// Decodes and applies an `/update` payload in one step.
pub fn update(
    stored: Option<&Shadow>,
    payload: &[u8],
    limits: &Limits,
    now: u64,
) -> Result<Updated, Rejected> {
    let request = decode_update(payload, limits)?;
    apply_update(stored, &request, limits, now)
}

/// Answers a `/get` payload: the full document with `delta` ("Shadow document syntax", Response state
/// documents), or 404 "No shadow exists with name: '{not_found_name}'".
pub fn get(
    stored: Option<&Shadow>,
    payload: &[u8],
    not_found_name: &str,
    now: u64,
) -> Result<Value, Rejected> {
    let token = decode_client_token(payload)?;
    let Some(shadow) = Shadow::live(stored) else {
        return Err(Rejected::new(
            Rejection::NoShadow(not_found_name.to_owned()),
            token,
        ));
    };
    let mut state = match shadow.state.to_json() {
        Value::Object(state) => state,
        _ => Object::new(),
    };
    if let Some((delta, _)) = delta_with_metadata(shadow) {
        state.insert("delta".into(), Value::Object(delta));
    }
    let mut doc = Object::new();
    doc.insert("state".into(), Value::Object(state));
    doc.insert("metadata".into(), shadow.metadata.to_json());
    doc.insert("version".into(), shadow.version.into());
    doc.insert("timestamp".into(), now.into());
    Ok(with_token(doc, token.as_deref()))
}

/// Answers a `/delete` payload: a tombstone keeping the version and `{"version", "timestamp"}`
/// ("Interacting with shadows", Deleting a shadow), or 404.
///
/// "Device Shadow MQTT topics", /delete: "The content of the message is ignored", so a malformed payload does
/// not fail the delete; a valid client token in it is still echoed, because AWS's SDKs correlate on it.
pub fn delete(
    stored: Option<&Shadow>,
    payload: &[u8],
    not_found_name: &str,
    now: u64,
) -> Result<Deleted, Rejected> {
    let token = decode_client_token(payload).ok().flatten();
    let Some(shadow) = Shadow::live(stored) else {
        return Err(Rejected::new(
            Rejection::NoShadow(not_found_name.to_owned()),
            token,
        ));
    };
    let mut accepted = Object::new();
    accepted.insert("version".into(), shadow.version.into());
    accepted.insert("timestamp".into(), now.into());
    Ok(Deleted {
        shadow: Shadow::blank(shadow.version, Some(now)),
        accepted: with_token(accepted, token.as_deref()),
    })
}

fn parse_object(payload: &[u8]) -> Result<Object, Rejected> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| Rejected::new(Rejection::UnsupportedEncoding, None))?;
    // serde_json stops at 128 levels of nesting, so a hostile payload cannot exhaust the stack here; the
    // recursive helpers below then only ever see at most that depth.
    match serde_json::from_str(text) {
        Ok(Value::Object(doc)) => Ok(doc),
        _ => Err(Rejected::new(Rejection::InvalidJson, None)),
    }
}

fn client_token(doc: &Object) -> Result<Option<String>, Rejected> {
    token_field(doc)
        .map(|token| token.map(String::from))
        .map_err(|_| Rejected::new(Rejection::InvalidClientToken, None))
}

/// `doc` with `"clientToken"` added when there is one: AWS puts the key in an answer only when the request
/// carried a token, never as `null`. Also used by the shell for Grove's own answers.
pub fn with_token(mut doc: Object, token: Option<&str>) -> Value {
    if let Some(token) = token {
        doc.insert("clientToken".into(), token.into());
    }
    Value::Object(doc)
}

/// Nesting depth counting every object and array, the value itself included.
fn depth(value: &Value) -> usize {
    match value {
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn has_null_in_array(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.values().any(has_null_in_array),
        Value::Array(items) => items.iter().any(|v| v.is_null() || has_null_in_array(v)),
        _ => false,
    }
}

/// Compact JSON size of `desired` plus `reported`, measured without building the text.
fn state_size(state: &Sections) -> usize {
    struct Count(usize);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    for section in [&state.desired, &state.reported].into_iter().flatten() {
        // Writing a map of JSON values to a counter cannot fail; if it ever did, the count would only be low.
        let _ = serde_json::to_writer(&mut count, section);
    }
    count.0
}

/// Merges one request section into the shadow. "Device Shadow service documents", Empty sections: a `null`
/// section is removed, and a section left empty is removed too.
fn apply_section(shadow: &mut Shadow, section: Section, patch: &Value, now: u64) {
    let state = shadow.state.section_mut(section);
    let metadata = shadow.metadata.section_mut(section);
    match patch {
        Value::Object(patch) => {
            let state_map = state.get_or_insert_with(Object::new);
            let metadata_map = metadata.get_or_insert_with(Object::new);
            merge(state_map, metadata_map, patch, now);
            if state_map.is_empty() {
                *state = None;
                *metadata = None;
            }
        }
        _ => {
            *state = None;
            *metadata = None;
        }
    }
}

/// Merges `patch` into `state` and keeps `metadata` mirroring it ("Interacting with shadows", Updating a
/// shadow: "Updates affect only the fields specified in the request"):
/// - `null` deletes the key ("Deleting a property from a shadow document");
/// - an object merges recursively into an existing object;
/// - anything else (scalar, array, or an object replacing a non-object) replaces the value whole
///   ("Device Shadow service documents", Arrays: "an update to an array replaces the whole array").
///
/// Every value written gets fresh metadata stamped `now`; untouched keys keep theirs.
fn merge(state: &mut Object, metadata: &mut Object, patch: &Object, now: u64) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                state.remove(key);
                metadata.remove(key);
            }
            Value::Object(inner) => {
                if let Some(Value::Object(existing)) = state.get_mut(key) {
                    let meta = metadata
                        .entry(key.clone())
                        .or_insert_with(|| Value::Object(Object::new()));
                    if !meta.is_object() {
                        *meta = Value::Object(Object::new());
                    }
                    if let Value::Object(meta) = meta {
                        merge(existing, meta, inner, now);
                    }
                } else {
                    let fresh = without_nulls(inner);
                    metadata.insert(key.clone(), metadata_of(&fresh, now));
                    state.insert(key.clone(), fresh);
                }
            }
            _ => {
                state.insert(key.clone(), value.clone());
                metadata.insert(key.clone(), metadata_of(value, now));
            }
        }
    }
}

/// A patch object written where nothing mergeable existed: its `null`s delete nothing, so they are dropped.
fn without_nulls(object: &Object) -> Value {
    Value::Object(
        object
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| match v {
                Value::Object(inner) => (k.clone(), without_nulls(inner)),
                _ => (k.clone(), v.clone()),
            })
            .collect(),
    )
}

/// Metadata mirroring `value`: `{"timestamp": now}` per leaf ("Device Shadow service documents", metadata),
/// an object per object, and an array with one entry per element ("Simulating Device Shadow service
/// communications" shows `"ColorRGB": [{"timestamp": T}, {"timestamp": T}, {"timestamp": T}]`).
fn metadata_of(value: &Value, now: u64) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), metadata_of(v, now)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| metadata_of(v, now)).collect()),
        _ => {
            let mut leaf = Object::new();
            leaf.insert("timestamp".into(), now.into());
            Value::Object(leaf)
        }
    }
}

/// The delta of a shadow and its metadata, or `None` when desired and reported agree.
fn delta_with_metadata(shadow: &Shadow) -> Option<(Object, Object)> {
    let desired = shadow.state.desired.as_ref()?;
    let delta = delta(desired, shadow.state.reported.as_ref());
    if delta.is_empty() {
        return None;
    }
    let metadata = match &shadow.metadata.desired {
        Some(meta) => project(meta, &delta),
        None => Object::new(),
    };
    Some((delta, metadata))
}

/// The desired attributes that differ from reported, compared recursively ("Device Shadow MQTT topics",
/// /update/delta, Message body details):
/// - attributes that are equal in both sections are not included;
/// - an attribute only in `reported` is not included;
/// - an attribute only in `desired` (never reported, or deleted from reported) is included.
fn delta(desired: &Object, reported: Option<&Object>) -> Object {
    let mut out = Object::new();
    for (key, wanted) in desired {
        match (wanted, reported.and_then(|r| r.get(key))) {
            (Value::Object(wanted), Some(Value::Object(actual))) => {
                let inner = delta(wanted, Some(actual));
                if !inner.is_empty() {
                    out.insert(key.clone(), Value::Object(inner));
                }
            }
            (_, Some(actual)) if json_eq(wanted, actual) => {}
            _ => {
                out.insert(key.clone(), wanted.clone());
            }
        }
    }
    out
}

/// The part of the desired metadata that mirrors `delta`.
fn project(metadata: &Object, delta: &Object) -> Object {
    let mut out = Object::new();
    for (key, value) in delta {
        let Some(meta) = metadata.get(key) else {
            continue;
        };
        let projected = match (value, meta) {
            (Value::Object(inner), Value::Object(meta)) => Value::Object(project(meta, inner)),
            _ => meta.clone(),
        };
        out.insert(key.clone(), projected);
    }
    out
}

/// JSON equality with numbers compared by value, so a reported `1.0` satisfies a desired `1`.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                x == y
            } else if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                x == y
            } else {
                x.as_f64() == y.as_f64()
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::RngSeed;
    use serde_json::json;

    const NOW: u64 = 2000;
    const NAME: &str = "lamp";
    /// Two days after [`GONE`] was deleted, to the second: still within the retention window.
    const LAST_RETAINED: u64 = 1000 + VERSION_RETENTION_SECS;

    const NONE: &str = "";
    /// A live shadow whose desired and reported states differ in `color` and `dim.mode`.
    const LAMP: &str = r#"{"state":{"desired":{"color":"red","dim":{"level":5,"mode":"auto"}},"reported":{"color":"green","dim":{"level":5,"mode":"manual"},"temp":21}},"metadata":{"desired":{"color":{"timestamp":1000},"dim":{"level":{"timestamp":1000},"mode":{"timestamp":1000}}},"reported":{"color":{"timestamp":1000},"dim":{"level":{"timestamp":1000},"mode":{"timestamp":1000}},"temp":{"timestamp":1000}}},"version":7}"#;
    /// A tombstone: version 4, deleted at 1000.
    const GONE: &str = r#"{"state":{},"metadata":{},"version":4,"deletedAt":1000}"#;
    const COLORS: &str = r#"{"state":{"desired":{"colors":["RED","GREEN","BLUE"]}},"metadata":{"desired":{"colors":[{"timestamp":1000},{"timestamp":1000},{"timestamp":1000}]}},"version":1}"#;
    const ONLY_A: &str = r#"{"state":{"reported":{"a":1}},"metadata":{"reported":{"a":{"timestamp":1000}}},"version":1}"#;
    const MODE: &str = r#"{"state":{"reported":{"mode":"auto"}},"metadata":{"reported":{"mode":{"timestamp":1000}}},"version":1}"#;
    const T_ONE: &str = r#"{"state":{"desired":{"t":1},"reported":{"t":0}},"metadata":{"desired":{"t":{"timestamp":1000}},"reported":{"t":{"timestamp":1000}}},"version":1}"#;
    const EMPTY: &str = r#"{"state":{},"metadata":{},"version":8}"#;

    fn stored(text: &str) -> Option<Shadow> {
        if text.is_empty() {
            return None;
        }
        Some(Shadow::from_document(text).expect("stored fixture is a shadow"))
    }

    /// Runs one operation and renders its outcome as JSON: `{"accepted", "documents", "delta", "shadow"}`
    /// for an accepted update (the delta is `null` when none is published), `{"accepted"}` for a get,
    /// `{"accepted", "shadow"}` for a delete, `{"rejected"}` (the error document) otherwise.
    fn run(limits: &Limits, now: u64, op: &str, stored: Option<&Shadow>, payload: &[u8]) -> Value {
        let outcome = match op {
            "update" => update(stored, payload, limits, now).map(|u| {
                json!({"accepted": parse(&u.accepted), "documents": parse(&u.documents), "delta": u.delta.as_deref().map(parse), "shadow": to_value(&u.shadow)})
            }),
            "get" => get(stored, payload, NAME, now).map(|doc| json!({ "accepted": doc })),
            "delete" => delete(stored, payload, NAME, now)
                .map(|d| json!({"accepted": d.accepted, "shadow": to_value(&d.shadow)})),
            other => panic!("unknown operation {other}"),
        };
        outcome.unwrap_or_else(|rejected| json!({ "rejected": rejected.document(now) }))
    }

    /// A published document as JSON.
    fn parse(text: &str) -> Value {
        serde_json::from_str(text).expect("a published document is JSON")
    }

    /// A shadow as the store holds it, as JSON.
    fn to_value(shadow: &Shadow) -> Value {
        parse(&shadow.to_document())
    }

    /// The one data-driven helper: every key of `expected` must equal the same key of the outcome.
    #[track_caller]
    fn check_with(
        limits: &Limits,
        now: u64,
        op: &str,
        stored_text: &str,
        payload: &[u8],
        expected: &str,
    ) {
        let expected: Value = serde_json::from_str(expected).expect("expectation is JSON");
        let expected = expected.as_object().expect("expectation is an object");
        assert!(!expected.is_empty(), "a case must expect something");
        let actual = run(limits, now, op, stored(stored_text).as_ref(), payload);
        for (key, want) in expected {
            assert_eq!(
                actual.get(key),
                Some(want),
                "{op} {:?} on {stored_text:?}: `{key}` differs; whole outcome:\n{actual:#}",
                String::from_utf8_lossy(payload),
            );
        }
    }

    #[track_caller]
    fn check(op: &str, stored_text: &str, payload: &[u8], expected: &str) {
        check_with(&Limits::default(), NOW, op, stored_text, payload, expected);
    }

    #[test]
    fn update_creates_merges_and_publishes() {
        // Creating a shadow: version 1, no `previous`, delta only when desired is set.
        check(
            "update",
            NONE,
            br#"{"state":{"reported":{"color":"green"}},"clientToken":"t1"}"#,
            r#"{
            "accepted":{"state":{"reported":{"color":"green"}},"metadata":{"reported":{"color":{"timestamp":2000}}},"version":1,"timestamp":2000,"clientToken":"t1"},
            "documents":{"current":{"state":{"reported":{"color":"green"}},"metadata":{"reported":{"color":{"timestamp":2000}}},"version":1},"timestamp":2000,"clientToken":"t1"},
            "delta":null,
            "shadow":{"state":{"reported":{"color":"green"}},"metadata":{"reported":{"color":{"timestamp":2000}}},"version":1}}"#,
        );
        check(
            "update",
            NONE,
            br#"{"state":{"desired":{"color":"red"}}}"#,
            r#"{
            "accepted":{"state":{"desired":{"color":"red"}},"metadata":{"desired":{"color":{"timestamp":2000}}},"version":1,"timestamp":2000},
            "delta":{"state":{"color":"red"},"metadata":{"color":{"timestamp":2000}},"version":1,"timestamp":2000}}"#,
        );
        // The delta holds every differing desired attribute, stored or new, recursively, with its metadata.
        check(
            "update",
            LAMP,
            br#"{"state":{"desired":{"color":"green"}},"clientToken":"c"}"#,
            r#"{
            "delta":{"state":{"dim":{"mode":"auto"}},"metadata":{"dim":{"mode":{"timestamp":1000}}},"version":8,"timestamp":2000,"clientToken":"c"}}"#,
        );
        check(
            "update",
            LAMP,
            br#"{"state":{"desired":{"fan":true}}}"#,
            r#"{
            "delta":{"state":{"color":"red","dim":{"mode":"auto"},"fan":true},"metadata":{"color":{"timestamp":1000},"dim":{"mode":{"timestamp":1000}},"fan":{"timestamp":2000}},"version":8,"timestamp":2000}}"#,
        );
        // A report is merged recursively; a report that leaves a difference still yields a delta.
        check(
            "update",
            LAMP,
            br#"{"state":{"reported":{"dim":{"mode":"auto"}}}}"#,
            r#"{
            "accepted":{"state":{"reported":{"dim":{"mode":"auto"}}},"metadata":{"reported":{"dim":{"mode":{"timestamp":2000}}}},"version":8,"timestamp":2000},
            "delta":{"state":{"color":"red"},"metadata":{"color":{"timestamp":1000}},"version":8,"timestamp":2000},
            "shadow":{"state":{"desired":{"color":"red","dim":{"level":5,"mode":"auto"}},"reported":{"color":"green","dim":{"level":5,"mode":"auto"},"temp":21}},"metadata":{"desired":{"color":{"timestamp":1000},"dim":{"level":{"timestamp":1000},"mode":{"timestamp":1000}}},"reported":{"color":{"timestamp":1000},"dim":{"level":{"timestamp":1000},"mode":{"timestamp":2000}},"temp":{"timestamp":1000}}},"version":8}}"#,
        );
        // A report that reaches the desired state publishes no delta.
        check(
            "update",
            LAMP,
            br#"{"state":{"reported":{"color":"red","dim":{"mode":"auto"}}}}"#,
            r#"{"delta":null}"#,
        );
        // Numbers compare by value: a reported 1.0 satisfies a desired 1.
        check(
            "update",
            T_ONE,
            br#"{"state":{"reported":{"t":1.0}}}"#,
            r#"{"delta":null}"#,
        );
        check(
            "update",
            T_ONE,
            br#"{"state":{"reported":{"t":1.5}}}"#,
            r#"{
            "delta":{"state":{"t":1},"metadata":{"t":{"timestamp":1000}},"version":2,"timestamp":2000}}"#,
        );
        // An attribute deleted from reported but still desired is in the delta.
        check(
            "update",
            T_ONE,
            br#"{"state":{"reported":{"t":null}}}"#,
            r#"{
            "delta":{"state":{"t":1},"metadata":{"t":{"timestamp":1000}},"version":2,"timestamp":2000},
            "shadow":{"state":{"desired":{"t":1}},"metadata":{"desired":{"t":{"timestamp":1000}}},"version":2}}"#,
        );
        // `/update/documents` carries the previous and the current shadow.
        check(
            "update",
            ONLY_A,
            br#"{"state":{"reported":{"b":[1,2]}},"clientToken":"d"}"#,
            r#"{
            "documents":{"previous":{"state":{"reported":{"a":1}},"metadata":{"reported":{"a":{"timestamp":1000}}},"version":1},
                         "current":{"state":{"reported":{"a":1,"b":[1,2]}},"metadata":{"reported":{"a":{"timestamp":1000},"b":[{"timestamp":2000},{"timestamp":2000}]}},"version":2},
                         "timestamp":2000,"clientToken":"d"}}"#,
        );
        // Keys outside state, clientToken and version are ignored.
        check(
            "update",
            NONE,
            br#"{"state":{"reported":{"a":1}},"metadata":{"x":1},"timestamp":5,"foo":"bar"}"#,
            r#"{
            "shadow":{"state":{"reported":{"a":1}},"metadata":{"reported":{"a":{"timestamp":2000}}},"version":1}}"#,
        );
        // An empty update is accepted and still counts as a version.
        check(
            "update",
            LAMP,
            br#"{"state":{}}"#,
            r#"{
            "accepted":{"state":{},"metadata":{},"version":8,"timestamp":2000}}"#,
        );
    }

    #[test]
    fn update_deletes_with_null_and_replaces_arrays_and_types() {
        // `null` deletes a property, and its metadata; the accepted document stamps the deletion.
        check(
            "update",
            LAMP,
            br#"{"state":{"reported":{"temp":null}}}"#,
            r#"{
            "accepted":{"state":{"reported":{"temp":null}},"metadata":{"reported":{"temp":{"timestamp":2000}}},"version":8,"timestamp":2000},
            "shadow":{"state":{"desired":{"color":"red","dim":{"level":5,"mode":"auto"}},"reported":{"color":"green","dim":{"level":5,"mode":"manual"}}},"metadata":{"desired":{"color":{"timestamp":1000},"dim":{"level":{"timestamp":1000},"mode":{"timestamp":1000}}},"reported":{"color":{"timestamp":1000},"dim":{"level":{"timestamp":1000},"mode":{"timestamp":1000}}}},"version":8}}"#,
        );
        // Deleting a property that does not exist changes nothing but the version.
        check(
            "update",
            ONLY_A,
            br#"{"state":{"reported":{"zz":null}}}"#,
            r#"{
            "shadow":{"state":{"reported":{"a":1}},"metadata":{"reported":{"a":{"timestamp":1000}}},"version":2}}"#,
        );
        // `"desired": null` removes the section, and with it the delta.
        check(
            "update",
            LAMP,
            br#"{"state":{"desired":null}}"#,
            r#"{
            "accepted":{"state":{"desired":null},"metadata":{"desired":{"timestamp":2000}},"version":8,"timestamp":2000},
            "delta":null,
            "shadow":{"state":{"reported":{"color":"green","dim":{"level":5,"mode":"manual"},"temp":21}},"metadata":{"reported":{"color":{"timestamp":1000},"dim":{"level":{"timestamp":1000},"mode":{"timestamp":1000}},"temp":{"timestamp":1000}}},"version":8}}"#,
        );
        // `"state": null` empties the shadow without deleting it.
        check(
            "update",
            LAMP,
            br#"{"state":null}"#,
            r#"{
            "accepted":{"state":null,"metadata":{"timestamp":2000},"version":8,"timestamp":2000},
            "delta":null, "shadow":{"state":{},"metadata":{},"version":8}}"#,
        );
        // A section left empty is removed.
        check(
            "update",
            ONLY_A,
            br#"{"state":{"reported":{"a":null}}}"#,
            r#"{
            "shadow":{"state":{},"metadata":{},"version":2}}"#,
        );
        // Arrays are replaced whole, with one metadata entry per element.
        check(
            "update",
            COLORS,
            br#"{"state":{"desired":{"colors":["RED"]}}}"#,
            r#"{
            "shadow":{"state":{"desired":{"colors":["RED"]}},"metadata":{"desired":{"colors":[{"timestamp":2000}]}},"version":2},
            "delta":{"state":{"colors":["RED"]},"metadata":{"colors":[{"timestamp":2000}]},"version":2,"timestamp":2000}}"#,
        );
        check(
            "update",
            NONE,
            br#"{"state":{"reported":{"leds":[{"on":true},{"on":false}],"grid":[[1],[]]}}}"#,
            r#"{
            "shadow":{"state":{"reported":{"grid":[[1],[]],"leds":[{"on":true},{"on":false}]}},"metadata":{"reported":{"grid":[[{"timestamp":2000}],[]],"leds":[{"on":{"timestamp":2000}},{"on":{"timestamp":2000}}]}},"version":1}}"#,
        );
        // An object replaces a scalar (its nulls delete nothing and are dropped)...
        check(
            "update",
            MODE,
            br#"{"state":{"reported":{"mode":{"a":1,"b":null,"c":{"d":null}}}}}"#,
            r#"{
            "shadow":{"state":{"reported":{"mode":{"a":1,"c":{}}}},"metadata":{"reported":{"mode":{"a":{"timestamp":2000},"c":{}}}},"version":2}}"#,
        );
        // ... and a scalar replaces an object, putting the whole desired object back into the delta.
        check(
            "update",
            LAMP,
            br#"{"state":{"reported":{"dim":3}}}"#,
            r#"{
            "delta":{"state":{"color":"red","dim":{"level":5,"mode":"auto"}},"metadata":{"color":{"timestamp":1000},"dim":{"level":{"timestamp":1000},"mode":{"timestamp":1000}}},"version":8,"timestamp":2000}}"#,
        );
    }

    #[test]
    fn update_checks_versions() {
        check(
            "update",
            LAMP,
            br#"{"state":{"desired":{"x":1}},"version":7}"#,
            r#"{"accepted":{"state":{"desired":{"x":1}},"metadata":{"desired":{"x":{"timestamp":2000}}},"version":8,"timestamp":2000}}"#,
        );
        check(
            "update",
            LAMP,
            br#"{"state":{"desired":{"x":1}},"version":6,"clientToken":"c"}"#,
            r#"{"rejected":{"code":409,"message":"Version conflict","timestamp":2000,"clientToken":"c"}}"#,
        );
        check(
            "update",
            LAMP,
            br#"{"state":{"desired":{"x":1}},"version":8}"#,
            r#"{"rejected":{"code":409,"message":"Version conflict","timestamp":2000}}"#,
        );
        check(
            "update",
            NONE,
            br#"{"state":{"desired":{"x":1}},"version":0}"#,
            r#"{"shadow":{"state":{"desired":{"x":1}},"metadata":{"desired":{"x":{"timestamp":2000}}},"version":1}}"#,
        );
        check(
            "update",
            NONE,
            br#"{"state":{"desired":{"x":1}},"version":1}"#,
            r#"{"rejected":{"code":409,"message":"Version conflict","timestamp":2000}}"#,
        );
        // A shadow re-created within 48 hours of its deletion continues from the deleted version...
        check(
            "update",
            GONE,
            br#"{"state":{"reported":{"a":1}}}"#,
            r#"{
            "documents":{"current":{"state":{"reported":{"a":1}},"metadata":{"reported":{"a":{"timestamp":2000}}},"version":5},"timestamp":2000},
            "shadow":{"state":{"reported":{"a":1}},"metadata":{"reported":{"a":{"timestamp":2000}}},"version":5}}"#,
        );
        check(
            "update",
            GONE,
            br#"{"state":{"reported":{"a":1}},"version":4}"#,
            r#"{"accepted":{"state":{"reported":{"a":1}},"metadata":{"reported":{"a":{"timestamp":2000}}},"version":5,"timestamp":2000}}"#,
        );
        check(
            "update",
            GONE,
            br#"{"state":{"reported":{"a":1}},"version":0}"#,
            r#"{"rejected":{"code":409,"message":"Version conflict","timestamp":2000}}"#,
        );
        let limits = Limits::default();
        check_with(
            &limits,
            LAST_RETAINED,
            "update",
            GONE,
            br#"{"state":{}}"#,
            r#"{"shadow":{"state":{},"metadata":{},"version":5}}"#,
        );
        // ... and one re-created later starts again from 0.
        check_with(
            &limits,
            LAST_RETAINED + 1,
            "update",
            GONE,
            br#"{"state":{}}"#,
            r#"{"shadow":{"state":{},"metadata":{},"version":1}}"#,
        );
        check_with(
            &limits,
            LAST_RETAINED + 1,
            "update",
            GONE,
            br#"{"state":{},"version":4}"#,
            &format!(
                r#"{{"rejected":{{"code":409,"message":"Version conflict","timestamp":{}}}}}"#,
                LAST_RETAINED + 1
            ),
        );
    }

    #[test]
    fn update_rejects_malformed_requests_with_awss_messages() {
        let bad = |payload: &[u8], code: u16, message: &str, token: Option<&str>| {
            let mut doc = json!({"code": code, "message": message, "timestamp": NOW});
            if let Some(token) = token {
                doc["clientToken"] = token.into();
            }
            check(
                "update",
                LAMP,
                payload,
                &json!({ "rejected": doc }).to_string(),
            );
        };
        let token_64 = "t".repeat(64);
        let token_65 = "t".repeat(65);
        bad(
            b"\xff\xfe{}",
            415,
            "Unsupported documented encoding; supported encoding is UTF-8",
            None,
        );
        bad(
            b"{\"state\":{\"reported\":{\"a\":\"\xc3\x28\"}}}",
            415,
            "Unsupported documented encoding; supported encoding is UTF-8",
            None,
        );
        bad(b"", 400, "Invalid JSON", None);
        bad(b"{", 400, "Invalid JSON", None);
        bad(b"{\"state\":{}}}", 400, "Invalid JSON", None);
        bad(b"[1]", 400, "Invalid JSON", None);
        bad(b"null", 400, "Invalid JSON", None);
        bad(b"\"state\"", 400, "Invalid JSON", None);
        bad(&[b'['; 200], 400, "Invalid JSON", None);
        bad(
            br#"{"clientToken":"c"}"#,
            400,
            "Missing required node: state",
            Some("c"),
        );
        bad(
            br#"{"state":5,"clientToken":"c"}"#,
            400,
            "State node must be an object",
            Some("c"),
        );
        bad(
            br#"{"state":[]}"#,
            400,
            "State node must be an object",
            None,
        );
        bad(
            br#"{"state":"on"}"#,
            400,
            "State node must be an object",
            None,
        );
        bad(
            br#"{"state":{"desired":5}}"#,
            400,
            "Desired node must be an object",
            None,
        );
        bad(
            br#"{"state":{"desired":[1]},"clientToken":"c"}"#,
            400,
            "Desired node must be an object",
            Some("c"),
        );
        bad(
            br#"{"state":{"reported":"on"}}"#,
            400,
            "Reported node must be an object",
            None,
        );
        bad(
            br#"{"state":{"reported":true}}"#,
            400,
            "Reported node must be an object",
            None,
        );
        bad(
            br#"{"state":{"delta":{"a":1}}}"#,
            400,
            "State contains an invalid node: 'delta'",
            None,
        );
        bad(
            br#"{"state":{"desired":{},"metadata":{}},"clientToken":"c"}"#,
            400,
            "State contains an invalid node: 'metadata'",
            Some("c"),
        );
        bad(
            br#"{"state":{},"version":-1}"#,
            400,
            "Invalid version",
            None,
        );
        bad(
            br#"{"state":{},"version":"7"}"#,
            400,
            "Invalid version",
            None,
        );
        bad(
            br#"{"state":{},"version":7.5,"clientToken":"c"}"#,
            400,
            "Invalid version",
            Some("c"),
        );
        bad(
            br#"{"state":{},"version":null}"#,
            400,
            "Invalid version",
            None,
        );
        bad(
            br#"{"state":{},"clientToken":5}"#,
            400,
            "Invalid clientToken",
            None,
        );
        bad(
            br#"{"state":{},"clientToken":null}"#,
            400,
            "Invalid clientToken",
            None,
        );
        bad(
            format!(r#"{{"state":{{}},"clientToken":"{token_65}"}}"#).as_bytes(),
            400,
            "Invalid clientToken",
            None,
        );
        bad(
            br#"{"state":{"desired":{"colors":[null,"RED"]}},"clientToken":"c"}"#,
            400,
            "Invalid JSON",
            Some("c"),
        );
        bad(
            br#"{"state":{"reported":{"m":[[1,null]]}}}"#,
            400,
            "Invalid JSON",
            None,
        );
        // Six levels per section, the section's object being level 1: AWS's own example from its Device
        // Shadow limits (deepest level an empty object) is exactly at the limit, in either section, and
        // accepted; one more level, object or array, is not.
        check(
            "update",
            NONE,
            br#"{"state":{"desired":{"one":{"two":{"three":{"four":{"five":{}}}}}}}}"#,
            r#"{"shadow":{"state":{"desired":{"one":{"two":{"three":{"four":{"five":{}}}}}}},"metadata":{"desired":{"one":{"two":{"three":{"four":{"five":{}}}}}}},"version":1}}"#,
        );
        check(
            "update",
            NONE,
            br#"{"state":{"reported":{"a":{"b":{"c":{"d":{"e":1}}}}},"desired":{"a":{"b":{"c":{"d":{"e":{"f":1}}}}}}}}"#,
            r#"{"shadow":{"state":{"desired":{"a":{"b":{"c":{"d":{"e":{"f":1}}}}}},"reported":{"a":{"b":{"c":{"d":{"e":1}}}}}},"metadata":{"desired":{"a":{"b":{"c":{"d":{"e":{"f":{"timestamp":2000}}}}}}},"reported":{"a":{"b":{"c":{"d":{"e":{"timestamp":2000}}}}}}},"version":1}}"#,
        );
        check(
            "update",
            NONE,
            br#"{"state":{"desired":{"a":{"b":{"c":{"d":[[1]]}}}}}}"#,
            r#"{"delta":{"state":{"a":{"b":{"c":{"d":[[1]]}}}},"metadata":{"a":{"b":{"c":{"d":[[{"timestamp":2000}]]}}}},"version":1,"timestamp":2000}}"#,
        );
        bad(
            br#"{"state":{"desired":{"one":{"two":{"three":{"four":{"five":{"six":{}}}}}}}}}"#,
            400,
            "JSON contains too many levels of nesting; maximum is 6",
            None,
        );
        bad(
            br#"{"state":{"reported":{"a":{"b":{"c":{"d":[[[1]]]}}}}},"clientToken":"c"}"#,
            400,
            "JSON contains too many levels of nesting; maximum is 6",
            Some("c"),
        );
        // A 64-byte client token is fine and echoed everywhere.
        check("update", LAMP, format!(r#"{{"state":{{}},"clientToken":"{token_64}"}}"#).as_bytes(), &json!({
            "accepted": {"state": {}, "metadata": {}, "version": 8, "timestamp": NOW, "clientToken": token_64},
            "delta": {"state": {"color": "red", "dim": {"mode": "auto"}}, "metadata": {"color": {"timestamp": 1000}, "dim": {"mode": {"timestamp": 1000}}}, "version": 8, "timestamp": NOW, "clientToken": token_64},
        }).to_string());
    }

    #[test]
    fn update_enforces_size_limits() {
        let limits = Limits {
            max_state_bytes: 20,
            max_payload_bytes: 60,
            ..Limits::default()
        };
        let too_large = r#"{"rejected":{"code":413,"message":"The payload exceeds the maximum size allowed","timestamp":2000}}"#;
        // `{"a":"012345678901"}` is exactly 20 bytes.
        check_with(
            &limits,
            NOW,
            "update",
            NONE,
            br#"{"state":{"reported":{"a":"012345678901"}}}"#,
            r#"{"shadow":{"state":{"reported":{"a":"012345678901"}},"metadata":{"reported":{"a":{"timestamp":2000}}},"version":1}}"#,
        );
        check_with(
            &limits,
            NOW,
            "update",
            NONE,
            br#"{"state":{"reported":{"a":"0123456789012"}}}"#,
            too_large,
        );
        // The limit is on desired and reported together, after the merge, and metadata does not count.
        // `{"a":1}` (7 bytes) plus `{"b":"01234"}` (13 bytes) is exactly 20.
        check_with(
            &limits,
            NOW,
            "update",
            ONLY_A,
            br#"{"state":{"desired":{"b":"012345"}}}"#,
            too_large,
        );
        check_with(
            &limits,
            NOW,
            "update",
            ONLY_A,
            br#"{"state":{"desired":{"b":"01234"}},"clientToken":"c"}"#,
            r#"{"accepted":{"state":{"desired":{"b":"01234"}},"metadata":{"desired":{"b":{"timestamp":2000}}},"version":2,"timestamp":2000,"clientToken":"c"}}"#,
        );
        check_with(
            &limits,
            NOW,
            "update",
            ONLY_A,
            br#"{"state":{"desired":{"b":"012345"}},"clientToken":"c"}"#,
            r#"{"rejected":{"code":413,"message":"The payload exceeds the maximum size allowed","timestamp":2000,"clientToken":"c"}}"#,
        );
        // An update that shrinks an over-limit shadow is accepted.
        check_with(
            &limits,
            NOW,
            "update",
            LAMP,
            br#"{"state":{"desired":null,"reported":null}}"#,
            r#"{"shadow":{"state":{},"metadata":{},"version":8}}"#,
        );
        // The raw payload limit applies before anything is parsed.
        let long = format!(
            r#"{{"state":{{}},"clientToken":"c","pad":"{}"}}"#,
            "x".repeat(22)
        );
        assert_eq!(long.len(), 61);
        check_with(&limits, NOW, "update", NONE, long.as_bytes(), too_large);
        check_with(
            &limits,
            NOW,
            "update",
            NONE,
            &long.as_bytes()[..60],
            r#"{"rejected":{"code":400,"message":"Invalid JSON","timestamp":2000}}"#,
        );
    }

    #[test]
    fn get_returns_the_document_with_delta_or_404() {
        check(
            "get",
            LAMP,
            b"",
            r#"{"accepted":{
            "state":{"desired":{"color":"red","dim":{"level":5,"mode":"auto"}},"reported":{"color":"green","dim":{"level":5,"mode":"manual"},"temp":21},"delta":{"color":"red","dim":{"mode":"auto"}}},
            "metadata":{"desired":{"color":{"timestamp":1000},"dim":{"level":{"timestamp":1000},"mode":{"timestamp":1000}}},"reported":{"color":{"timestamp":1000},"dim":{"level":{"timestamp":1000},"mode":{"timestamp":1000}},"temp":{"timestamp":1000}}},
            "version":7,"timestamp":2000}}"#,
        );
        check(
            "get",
            ONLY_A,
            br#"{"clientToken":"g"}"#,
            r#"{"accepted":{"state":{"reported":{"a":1}},"metadata":{"reported":{"a":{"timestamp":1000}}},"version":1,"timestamp":2000,"clientToken":"g"}}"#,
        );
        check(
            "get",
            ONLY_A,
            b" \r\n",
            r#"{"accepted":{"state":{"reported":{"a":1}},"metadata":{"reported":{"a":{"timestamp":1000}}},"version":1,"timestamp":2000}}"#,
        );
        check(
            "get",
            EMPTY,
            b"{}",
            r#"{"accepted":{"state":{},"metadata":{},"version":8,"timestamp":2000}}"#,
        );
        check(
            "get",
            NONE,
            b"",
            r#"{"rejected":{"code":404,"message":"No shadow exists with name: 'lamp'","timestamp":2000}}"#,
        );
        check(
            "get",
            NONE,
            br#"{"clientToken":"g"}"#,
            r#"{"rejected":{"code":404,"message":"No shadow exists with name: 'lamp'","timestamp":2000,"clientToken":"g"}}"#,
        );
        check(
            "get",
            GONE,
            b"",
            r#"{"rejected":{"code":404,"message":"No shadow exists with name: 'lamp'","timestamp":2000}}"#,
        );
        check(
            "get",
            LAMP,
            b"\xff",
            r#"{"rejected":{"code":415,"message":"Unsupported documented encoding; supported encoding is UTF-8","timestamp":2000}}"#,
        );
        check(
            "get",
            LAMP,
            b"{",
            r#"{"rejected":{"code":400,"message":"Invalid JSON","timestamp":2000}}"#,
        );
        check(
            "get",
            LAMP,
            br#"{"clientToken":7}"#,
            r#"{"rejected":{"code":400,"message":"Invalid clientToken","timestamp":2000}}"#,
        );
    }

    #[test]
    fn delete_keeps_the_version_in_a_tombstone() {
        check(
            "delete",
            LAMP,
            b"",
            r#"{"accepted":{"version":7,"timestamp":2000},"shadow":{"state":{},"metadata":{},"version":7,"deletedAt":2000}}"#,
        );
        check(
            "delete",
            LAMP,
            br#"{"clientToken":"d"}"#,
            r#"{"accepted":{"version":7,"timestamp":2000,"clientToken":"d"}}"#,
        );
        // The content of a delete request is ignored, so garbage does not fail it.
        check(
            "delete",
            LAMP,
            b"\xff",
            r#"{"accepted":{"version":7,"timestamp":2000}}"#,
        );
        check(
            "delete",
            LAMP,
            br#"{"clientToken":7}"#,
            r#"{"accepted":{"version":7,"timestamp":2000}}"#,
        );
        check(
            "delete",
            NONE,
            b"",
            r#"{"rejected":{"code":404,"message":"No shadow exists with name: 'lamp'","timestamp":2000}}"#,
        );
        check(
            "delete",
            GONE,
            br#"{"clientToken":"d"}"#,
            r#"{"rejected":{"code":404,"message":"No shadow exists with name: 'lamp'","timestamp":2000,"clientToken":"d"}}"#,
        );
    }

    #[test]
    fn decoded_requests_expose_what_the_shell_needs() {
        let limits = Limits::default();
        type Decoded<'a> = (&'a [u8], Value, Option<&'a str>, Option<u64>);
        let cases: [Decoded; 3] = [
            (
                br#"{"state":{"desired":{"a":null}},"clientToken":"x","version":3}"#,
                json!({"desired": {"a": null}}),
                Some("x"),
                Some(3),
            ),
            (br#"{"state":null}"#, Value::Null, None, None),
            (br#"{"version":0,"state":{}}"#, json!({}), None, Some(0)),
        ];
        for (payload, state, token, version) in cases {
            let request = decode_update(payload, &limits).expect("valid request");
            assert_eq!(
                (request.state(), request.client_token(), request.version()),
                (&state, token, version)
            );
        }
        type Token<'a> = (&'a [u8], Result<Option<&'a str>, u16>);
        let cases: [Token; 5] = [
            (b"", Ok(None)),
            (b"{}", Ok(None)),
            (br#"{"clientToken":"g","other":1}"#, Ok(Some("g"))),
            (br#"{"clientToken":["g"]}"#, Err(400)),
            (b"\xc0", Err(415)),
        ];
        for (payload, expected) in cases {
            let got = decode_client_token(payload);
            assert_eq!(
                got.as_ref().map(|t| t.as_deref()).map_err(Rejected::code),
                expected
            );
        }
    }

    #[test]
    fn a_deleted_shadow_comes_back_with_the_next_version() {
        let limits = Limits::default();
        let created =
            update(None, br#"{"state":{"reported":{"a":1}}}"#, &limits, 10).expect("create");
        let updated = update(
            Some(&created.shadow),
            br#"{"state":{"reported":{"a":2}}}"#,
            &limits,
            11,
        )
        .expect("update");
        let deleted = delete(Some(&updated.shadow), b"", NAME, 12).expect("delete");
        assert_eq!(deleted.accepted, json!({"version": 2, "timestamp": 12}));
        let gone =
            get(Some(&deleted.shadow), b"", NAME, 13).expect_err("deleted shadows are not found");
        assert_eq!(gone.code(), 404);
        let again = update(
            Some(&deleted.shadow),
            br#"{"state":{"desired":{"b":1}}}"#,
            &limits,
            14,
        )
        .expect("re-create");
        assert_eq!(again.shadow.version(), 3);
        assert!(again.shadow.exists());
        assert_eq!(parse(&again.documents).get("previous"), None);
        assert_eq!(
            get(Some(&again.shadow), b"", NAME, 15).expect("found")["state"],
            json!({"desired": {"b": 1}, "delta": {"b": 1}})
        );
    }

    #[test]
    fn every_rejection_has_awss_code_and_message() {
        let cases = [
            (
                Rejection::UnsupportedEncoding,
                415,
                "Unsupported documented encoding; supported encoding is UTF-8",
            ),
            (Rejection::InvalidJson, 400, "Invalid JSON"),
            (Rejection::MissingState, 400, "Missing required node: state"),
            (
                Rejection::StateNotObject,
                400,
                "State node must be an object",
            ),
            (
                Rejection::DesiredNotObject,
                400,
                "Desired node must be an object",
            ),
            (
                Rejection::ReportedNotObject,
                400,
                "Reported node must be an object",
            ),
            (
                Rejection::InvalidStateNode("x".into()),
                400,
                "State contains an invalid node: 'x'",
            ),
            (Rejection::InvalidVersion, 400, "Invalid version"),
            (Rejection::InvalidClientToken, 400, "Invalid clientToken"),
            (
                Rejection::TooDeep(6),
                400,
                "JSON contains too many levels of nesting; maximum is 6",
            ),
            (
                Rejection::NoShadow("cfg".into()),
                404,
                "No shadow exists with name: 'cfg'",
            ),
            (Rejection::VersionConflict, 409, "Version conflict"),
            (
                Rejection::TooLarge,
                413,
                "The payload exceeds the maximum size allowed",
            ),
            (Rejection::TooManyRequests, 429, "Too Many Requests"),
            (Rejection::Internal, 500, "Internal service failure"),
        ];
        for (reason, code, message) in cases {
            let with_token = Rejected::new(reason.clone(), Some("tok".into()));
            assert_eq!(
                with_token.document(9),
                json!({"code": code, "message": message, "timestamp": 9, "clientToken": "tok"})
            );
            let without = Rejected::new(reason, None);
            assert_eq!(
                without.document(9),
                json!({"code": code, "message": message, "timestamp": 9})
            );
            assert_eq!(without.to_string(), message);
        }
    }

    #[test]
    fn stored_shadows_round_trip_and_bad_ones_are_errors() {
        for text in [LAMP, GONE, COLORS, EMPTY] {
            let shadow = stored(text).expect("fixture");
            assert_eq!(
                to_value(&shadow),
                serde_json::from_str::<Value>(text).expect("fixture JSON")
            );
            assert_eq!(
                Shadow::from_document(&shadow.to_document()).expect("round trip"),
                shadow
            );
        }
        let gone = stored(GONE).expect("fixture");
        assert_eq!(
            (gone.exists(), gone.deleted_at(), gone.version()),
            (false, Some(1000), 4)
        );
        assert!(!gone.is_expired_tombstone(LAST_RETAINED));
        assert!(gone.is_expired_tombstone(LAST_RETAINED + 1));
        // The store's cut-off drops exactly the expired tombstones: deleted before the cut-off.
        for now in [
            0,
            999,
            LAST_RETAINED - 1,
            LAST_RETAINED,
            LAST_RETAINED + 1,
            u64::MAX,
        ] {
            assert_eq!(
                gone.deleted_at() < Some(tombstone_cutoff(now)),
                gone.is_expired_tombstone(now),
                "now = {now}"
            );
        }
        assert!(!stored(LAMP)
            .expect("fixture")
            .is_expired_tombstone(u64::MAX));
        for bad in [
            json!({"state": {}, "metadata": {}}),
            json!({"state": {}, "metadata": {}, "version": -1}),
            json!({"state": {"delta": {}}, "metadata": {}, "version": 1}),
            json!([]),
        ] {
            assert!(
                Shadow::from_document(&bad.to_string()).is_err(),
                "{bad} must not load"
            );
        }
        assert!(Shadow::from_document("{broken").is_err());
    }

    // Property tests: generated states and patches over a small key alphabet, so keys collide often.

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 256,
            rng_seed: RngSeed::Fixed(0x5eed_cafe),
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// Limits that never reject the generated documents, so the properties see only accepted updates.
    fn roomy() -> Limits {
        Limits {
            max_state_bytes: usize::MAX,
            max_depth: 64,
            max_payload_bytes: usize::MAX,
        }
    }

    fn key() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["k", "l", "m", "n"]).prop_map(String::from)
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<bool>().prop_map(Value::from),
            (-2i64..3).prop_map(Value::from),
            prop::sample::select(vec!["a", "b", ""]).prop_map(Value::from),
        ]
    }

    /// A state value: anything JSON allows except `null`.
    fn value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(3, 24, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map(key(), inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A patch value: like a state value, but object members may be `null` (arrays still may not).
    fn patch_value() -> impl Strategy<Value = Value> {
        prop_oneof![1 => Just(Value::Null), 3 => leaf()].prop_recursive(3, 24, 3, |inner| {
            prop_oneof![
                prop::collection::vec(value(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map(key(), inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn section() -> impl Strategy<Value = Object> {
        prop::collection::btree_map(key(), value(), 0..4).prop_map(|m| m.into_iter().collect())
    }

    fn patch_section() -> impl Strategy<Value = Value> {
        prop_oneof![
            1 => Just(Value::Null),
            6 => prop::collection::btree_map(key(), patch_value(), 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    }

    /// A request `state`: either section, both, or neither.
    fn patch_state() -> impl Strategy<Value = Value> {
        (
            prop::option::of(patch_section()),
            prop::option::of(patch_section()),
        )
            .prop_map(|(d, r)| {
                let mut state = Object::new();
                if let Some(d) = d {
                    state.insert("desired".into(), d);
                }
                if let Some(r) = r {
                    state.insert("reported".into(), r);
                }
                Value::Object(state)
            })
    }

    fn request(state: &Value) -> Vec<u8> {
        json!({ "state": state }).to_string().into_bytes()
    }

    fn accept(stored: Option<&Shadow>, state: &Value, now: u64) -> Updated {
        update(stored, &request(state), &roomy(), now).expect("generated updates are valid")
    }

    fn shadow_of(desired: &Object, reported: &Object) -> Shadow {
        accept(None, &json!({"desired": desired, "reported": reported}), 1).shadow
    }

    /// Whether `metadata` has exactly the shape of `state`, with a `{"timestamp": T}` per leaf.
    fn mirrors(state: &Value, metadata: &Value) -> bool {
        match (state, metadata) {
            (Value::Object(s), Value::Object(m)) => {
                s.len() == m.len()
                    && s.iter()
                        .all(|(k, v)| m.get(k).is_some_and(|mv| mirrors(v, mv)))
            }
            (Value::Array(s), Value::Array(m)) => {
                s.len() == m.len() && s.iter().zip(m).all(|(v, mv)| mirrors(v, mv))
            }
            (Value::Object(_) | Value::Array(_), _) => false,
            (_, Value::Object(m)) => m.len() == 1 && m.get("timestamp").is_some_and(Value::is_u64),
            _ => false,
        }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn merge_is_idempotent(desired in section(), reported in section(), patch in patch_state()) {
            let start = shadow_of(&desired, &reported);
            let once = accept(Some(&start), &patch, 5);
            let twice = accept(Some(&once.shadow), &patch, 5);
            prop_assert_eq!(twice.shadow.state(), once.shadow.state());
            prop_assert_eq!(twice.shadow.metadata(), once.shadow.metadata());
            prop_assert_eq!(twice.shadow.version(), once.shadow.version() + 1);
        }

        #[test]
        fn no_delta_when_desired_equals_reported(state in section()) {
            let updated = accept(None, &json!({"desired": state, "reported": state}), 1);
            prop_assert_eq!(updated.delta, None);
            let doc = get(Some(&updated.shadow), b"", NAME, 2).expect("exists");
            prop_assert_eq!(doc["state"].get("delta"), None);
        }

        #[test]
        fn reporting_the_delta_empties_it(desired in section(), reported in section()) {
            let start = shadow_of(&desired, &reported);
            let doc = get(Some(&start), b"", NAME, 2).expect("exists");
            if let Some(delta) = doc["state"].get("delta") {
                prop_assert!(delta.as_object().is_some_and(|d| !d.is_empty()));
                let caught_up = accept(Some(&start), &json!({"reported": delta}), 3);
                prop_assert_eq!(caught_up.delta, None);
                let doc = get(Some(&caught_up.shadow), b"", NAME, 4).expect("exists");
                prop_assert_eq!(doc["state"].get("delta"), None);
            }
        }

        #[test]
        fn delta_lists_exactly_the_unsatisfied_desired_keys(desired in section(), reported in section()) {
            let start = shadow_of(&desired, &reported);
            let doc = get(Some(&start), b"", NAME, 2).expect("exists");
            let delta = doc["state"].get("delta").and_then(Value::as_object).cloned().unwrap_or_default();
            // The rules of "Device Shadow MQTT topics", /update/delta, restated: a desired attribute is
            // satisfied by an equal reported one, and a desired object by a reported object that satisfies
            // each of its attributes (extra reported attributes do not matter).
            fn satisfied(wanted: &Value, actual: Option<&Value>) -> bool {
                match (wanted, actual) {
                    (Value::Object(w), Some(Value::Object(a))) => w.iter().all(|(k, v)| satisfied(v, a.get(k))),
                    (w, Some(a)) => json_eq(w, a),
                    (_, None) => false,
                }
            }
            for (key, wanted) in &desired {
                let satisfied = satisfied(wanted, reported.get(key));
                prop_assert_eq!(delta.contains_key(key), !satisfied, "key {}", key);
            }
            prop_assert!(delta.keys().all(|k| desired.contains_key(k)));
        }

        #[test]
        fn null_deletes_the_key_and_its_metadata(desired in section(), reported in section(), pick in any::<prop::sample::Index>()) {
            prop_assume!(!desired.is_empty());
            let start = shadow_of(&desired, &reported);
            let key = desired.keys().nth(pick.index(desired.len())).expect("in range").clone();
            let after = accept(Some(&start), &json!({"desired": {key.as_str(): null}}), 3).shadow;
            prop_assert!(!after.state().desired.as_ref().is_some_and(|d| d.contains_key(&key)));
            prop_assert!(!after.metadata().desired.as_ref().is_some_and(|d| d.contains_key(&key)));
            prop_assert_eq!(after.state().reported.as_ref(), start.state().reported.as_ref());
        }

        #[test]
        fn metadata_mirrors_state_and_versions_count_updates(patches in prop::collection::vec(patch_state(), 1..5)) {
            let mut shadow: Option<Shadow> = None;
            for (i, patch) in (0u64..).zip(&patches) {
                let next = accept(shadow.as_ref(), patch, 100 + i).shadow;
                prop_assert_eq!(next.version(), i + 1);
                let state = next.state();
                let metadata = next.metadata();
                for (s, m) in [(&state.desired, &metadata.desired), (&state.reported, &metadata.reported)] {
                    prop_assert_eq!(s.is_some(), m.is_some());
                    prop_assert!(s.as_ref().is_none_or(|s| !s.is_empty()), "empty sections are removed");
                    if let (Some(s), Some(m)) = (s, m) {
                        prop_assert!(mirrors(&Value::Object(s.clone()), &Value::Object(m.clone())), "{:?} vs {:?}", s, m);
                    }
                }
                prop_assert_eq!(&Shadow::from_document(&next.to_document()).expect("round trip"), &next);
                shadow = Some(next);
            }
        }

        #[test]
        fn arbitrary_bytes_get_an_answer_never_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..96)) {
            let start = stored(LAMP);
            match update(start.as_ref(), &bytes, &Limits::default(), NOW) {
                Ok(updated) => prop_assert_eq!(updated.shadow.version(), 8),
                Err(rejected) => prop_assert!(matches!(rejected.code(), 400 | 413 | 415)),
            }
        }

        #[test]
        fn arbitrary_json_requests_get_an_answer(state in prop_oneof![patch_state(), value(), Just(Value::Null)], version in prop::option::of(0u64..10)) {
            let mut doc = json!({"state": state});
            if let Some(version) = version {
                doc["version"] = version.into();
            }
            let start = stored(LAMP);
            match update(start.as_ref(), doc.to_string().as_bytes(), &Limits::default(), NOW) {
                Ok(updated) => {
                    prop_assert_eq!(version.unwrap_or(7), 7);
                    prop_assert_eq!(updated.shadow.version(), 8);
                }
                Err(rejected) => prop_assert!(matches!(rejected.code(), 400 | 409 | 413)),
            }
        }
    }
}
