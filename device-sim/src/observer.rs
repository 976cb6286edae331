//! The observer: one MQTT client subscribed to every device's telemetry (`dt/+/telemetry`) and to
//! every shadow's `update/documents`, feeding [`Fleet`]'s delivery, latency and convergence records
//! (how they are measured is described in [`crate::fleet`]).
//!
//! Messages for things outside the scenario's fleet are ignored, so the simulator can share a gateway
//! with other clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::controller::TOKEN_PREFIX;
use crate::fleet::Fleet;
use crate::mqtt::{MqttClient, MqttError};

/// The telemetry filter.
pub const TELEMETRY_FILTER: &str = "dt/+/telemetry";
/// The shadow documents filter.
pub const DOCUMENTS_FILTER: &str = "$aws/things/+/shadow/update/documents";

/// The fields of the firmware's telemetry message that identify a sample.
#[derive(Deserialize)]
struct Telemetry {
    seq: u32,
    temp_mc: i32,
    rh_mpct: i32,
}

/// Connects the observer; it runs until closed.
pub async fn connect(
    target: SocketAddr,
    client_id: &str,
    fleet: Arc<Fleet>,
) -> Result<MqttClient, MqttError> {
    MqttClient::connect(
        client_id,
        target,
        &[TELEMETRY_FILTER, DOCUMENTS_FILTER],
        move |topic, payload| observe(&fleet, topic, payload),
    )
    .await
}

fn observe(fleet: &Fleet, topic: &str, payload: &[u8]) {
    if let Some(thing) = topic
        .strip_prefix("dt/")
        .and_then(|t| t.strip_suffix("/telemetry"))
    {
        let (Some(device), Ok(sample)) = (
            fleet.device(thing),
            serde_json::from_slice::<Telemetry>(payload),
        ) else {
            return;
        };
        fleet.sample_seen(device, sample.seq, sample.temp_mc, sample.rh_mpct);
    } else if let Some(thing) = topic
        .strip_prefix("$aws/things/")
        .and_then(|t| t.strip_suffix("/shadow/update/documents"))
    {
        let (Some(device), Ok(documents)) = (
            fleet.device(thing),
            serde_json::from_slice::<Value>(payload),
        ) else {
            return;
        };
        if let Some(sent_at) = documents
            .get("clientToken")
            .and_then(Value::as_str)
            .and_then(|token| token_sent_at(token, fleet))
        {
            fleet.change_opened(device, sent_at);
        }
        let holds = reported_holds_desired(&documents["current"]["state"]);
        fleet.set_shadow_holds(device, holds);
        if holds {
            fleet.changes_applied(device);
        }
    }
}

/// The send time a controller token carries (`ctl-{client}-{n}-{micros since the run's origin}`).
fn token_sent_at(token: &str, fleet: &Fleet) -> Option<std::time::Instant> {
    let micros: u64 = token
        .strip_prefix(TOKEN_PREFIX)?
        .rsplit('-')
        .next()?
        .parse()
        .ok()?;
    fleet.origin.checked_add(Duration::from_micros(micros))
}

/// Whether a shadow `state` (`{"desired":..,"reported":..}`) has every desired field reported with the
/// same value, recursively; a shadow with nothing desired holds trivially.
pub fn reported_holds_desired(state: &Value) -> bool {
    holds(&state["desired"], &state["reported"])
}

fn holds(desired: &Value, reported: &Value) -> bool {
    match desired {
        Value::Null => true,
        Value::Object(fields) => fields
            .iter()
            .all(|(key, value)| holds(value, &reported[key.as_str()])),
        value => value == reported,
    }
}
