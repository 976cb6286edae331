//! Example Grove function: a shadow-driven thermostat that switches a relay.
//!
//! Triggered by telemetry such as `{"temperature": 19.2}` on `sensors/{id}/telemetry`, it reads the
//! shadow of thing `{id}`, takes the setpoint from `state.desired.setpoint` (set by a person or an app,
//! like any desired value), decides whether the relay should be on, and, only when that differs from
//! the relay's current `state.desired.relay`, sends the update `{"state":{"desired":{"relay":..}}}`.
//!
//! Why `desired` and not `reported`: in AWS IoT's shadow model, `reported` is what the device says it
//! is, and only the device writes it; anyone who wants the device to change (an app, a rule, this
//! controller) writes `desired`. The device receives the difference on `update/delta`, switches the
//! relay and reports `relay` back (the Grove firmware does exactly that), so the shadow shows both the
//! controller's intent and the device's confirmation.
//!
//! The decision is a thermostat with a dead band: in `heat` mode (default) the relay turns on below
//! `setpoint - deadband` and off above `setpoint + deadband`; `cool` mode is the reverse. Inside the
//! band the relay keeps its state, so it does not chatter.
//!
//! Config: `mode` (`heat` or `cool`), `deadband` (default 0.5), `field` (default `temperature`),
//! `shadow` (a named shadow; default the classic shadow).
//!
//! Idempotency: events arrive at least once. The decision is made against the shadow, so a redelivered
//! reading finds the relay already as it should be and sends nothing. The update carries the version
//! it was decided on: if the shadow changed in between (a new setpoint), the shadow service rejects the
//! update, the invocation fails, and the retry decides again on the fresh shadow.

use std::error::Error;

use example_common::device;
use grove_fn_sdk::{config, shadow, Event, HostError};
use serde_json::{json, Value};

/// Which way the relay drives the temperature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The relay switches a heater.
    Heat,
    /// The relay switches a cooler.
    Cool,
}

/// Whether the relay should be on for `value`, given the setpoint, the dead band and its current
/// state (`None`: unknown, then inside the band it is switched off, the safe state).
pub fn decide(mode: Mode, value: f64, setpoint: f64, deadband: f64, current: Option<bool>) -> bool {
    let (low, high) = (value < setpoint - deadband, value > setpoint + deadband);
    match mode {
        Mode::Heat if low => true,
        Mode::Heat if high => false,
        Mode::Cool if high => true,
        Mode::Cool if low => false,
        _ => current.unwrap_or(false),
    }
}

/// What the function does for one reading, decided from the shadow's `get/accepted` document.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// The shadow has no numeric `state.desired.setpoint`: nothing to control.
    NoSetpoint,
    /// The relay is already as it should be.
    Keep(bool),
    /// Send this update request document.
    Update(Value),
}

/// The action for `value` given the shadow document.
pub fn plan(document: &Value, mode: Mode, deadband: f64, value: f64) -> Action {
    let desired = &document["state"]["desired"];
    let Some(setpoint) = desired["setpoint"].as_f64() else {
        return Action::NoSetpoint;
    };
    let current = desired["relay"].as_bool();
    let relay = decide(mode, value, setpoint, deadband, current);
    if current == Some(relay) {
        return Action::Keep(relay);
    }
    let mut update = json!({ "state": { "desired": { "relay": relay } } });
    if let Some(version) = document["version"].as_u64() {
        update["version"] = version.into();
    }
    Action::Update(update)
}

fn handle(event: Event<'_>) -> Result<String, Box<dyn Error>> {
    let reading: Value = event
        .json()
        .map_err(|e| format!("payload is not JSON: {e}"))?;
    let thing = device(event.topic(), &reading)?;
    let mode = match config::get("mode")?.as_deref() {
        None | Some("heat") => Mode::Heat,
        Some("cool") => Mode::Cool,
        Some(other) => return Err(format!("config `mode` = {other:?}: use heat or cool").into()),
    };
    let deadband = match config::get("deadband")? {
        None => 0.5,
        Some(text) => text
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|d| d.is_finite() && *d >= 0.0)
            .ok_or_else(|| format!("config `deadband` = {text:?} is not a number >= 0"))?,
    };
    let field = config::get("field")?.unwrap_or_else(|| "temperature".into());
    let shadow_name = config::get("shadow")?;

    let value = reading[field.as_str()]
        .as_f64()
        .ok_or_else(|| format!("payload has no numeric field `{field}`"))?;
    let document = match shadow::get(thing, shadow_name.as_deref()) {
        Ok(document) => serde_json::from_slice(&document)?,
        Err(HostError::NotFound) => return Ok(format!("{thing}: no shadow, nothing to control")),
        Err(error) => return Err(error.into()),
    };
    match plan(&document, mode, deadband, value) {
        Action::NoSetpoint => Ok(format!("{thing}: no desired setpoint, nothing to control")),
        Action::Keep(relay) => Ok(format!("{thing}: relay stays {}", on_off(relay))),
        Action::Update(update) => {
            shadow::update(thing, shadow_name.as_deref(), &serde_json::to_vec(&update)?)?;
            let relay = update["state"]["desired"]["relay"].as_bool() == Some(true);
            Ok(format!("{thing}: relay {} at {value}", on_off(relay)))
        }
    }
}

fn on_off(relay: bool) -> &'static str {
    if relay {
        "on"
    } else {
        "off"
    }
}

grove_fn_sdk::handler!(handle);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thermostat_decisions() {
        // (mode, reading, current relay, expected relay) with setpoint 20 and dead band 0.5.
        let cases: &[(Mode, f64, Option<bool>, bool)] = &[
            (Mode::Heat, 19.0, Some(false), true),
            (Mode::Heat, 19.5, Some(false), false), // at the band's edge: keep
            (Mode::Heat, 20.0, Some(true), true),   // inside the band: keep
            (Mode::Heat, 20.6, Some(true), false),
            (Mode::Heat, 20.0, None, false), // unknown inside the band: off
            (Mode::Cool, 21.0, Some(false), true),
            (Mode::Cool, 20.2, Some(true), true),
            (Mode::Cool, 19.0, Some(true), false),
        ];
        for &(mode, value, current, expected) in cases {
            assert_eq!(
                decide(mode, value, 20.0, 0.5, current),
                expected,
                "{mode:?} {value} {current:?}"
            );
        }
    }

    #[test]
    fn plans_from_shadow_documents() {
        let cases: &[(&str, f64, Action)] = &[
            (
                r#"{"state":{"desired":{"setpoint":20,"relay":false}},"version":7}"#,
                18.0,
                Action::Update(json!({"state":{"desired":{"relay":true}},"version":7})),
            ),
            (
                r#"{"state":{"desired":{"setpoint":20,"relay":true}},"version":8}"#,
                18.0,
                Action::Keep(true),
            ),
            (
                r#"{"state":{"desired":{"setpoint":20}}}"#,
                22.0,
                Action::Update(json!({"state":{"desired":{"relay":false}}})),
            ),
            (
                r#"{"state":{"reported":{"relay":true}},"version":2}"#,
                18.0,
                Action::NoSetpoint,
            ),
            (
                r#"{"state":{"desired":{"setpoint":"20"}},"version":2}"#,
                18.0,
                Action::NoSetpoint,
            ),
        ];
        for (document, value, expected) in cases {
            let document: Value = serde_json::from_str(document).unwrap();
            assert_eq!(
                plan(&document, Mode::Heat, 0.5, *value),
                *expected,
                "{document} {value}"
            );
        }
    }
}
