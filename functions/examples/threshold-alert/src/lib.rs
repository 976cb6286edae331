//! Example Grove function: a threshold alert with hysteresis, its state kept in kv.
//!
//! Triggered by telemetry such as `{"temperature": 31.2}` on `sensors/{id}/telemetry`. When a reading
//! rises above `limit`, it publishes an alarm on `alerts/{id}`; once a reading falls below
//! `limit - hysteresis`, it publishes `cleared`. In between it stays quiet, so a value hovering around
//! the limit does not flood the alert topic. Each device's state (armed or alarmed, and how many
//! transitions it has made) lives in the function's kv store under `state/{id}`: it survives instance
//! recycling, new versions and gateway restarts, which an in-memory variable would not.
//!
//! Config (`[config]` in the manifest): `limit` (required), `hysteresis` (default 0), `field` (the
//! reading's JSON field, default `temperature`) and `scale` (a factor applied to the field, default 1;
//! 0.001 reads the Grove firmware's `temp_mc`).
//!
//! Idempotency: events arrive at least once, so the same reading may be handled twice. The alert and
//! the state change take effect together, because the gateway applies an invocation's kv writes and
//! publishes only when the handler succeeds: a redelivered reading finds the state its first delivery
//! stored and publishes nothing new. Each alert also carries the device's transition count `seq`, so a
//! consumer can recognise a repeat from any other source: `(device, seq)` names one transition.

use std::error::Error;

use example_common::device;
use grove_fn_sdk::{config, kv, Event, HostError, Qos};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The hysteresis band: alarm above `limit`, clear below `limit - hysteresis`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Readings above this raise the alarm.
    pub limit: f64,
    /// How far below `limit` a reading must fall to clear the alarm; >= 0.
    pub hysteresis: f64,
}

/// The function's settings, resolved from the manifest's config.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The band.
    pub limits: Limits,
    /// The JSON field holding the reading.
    pub field: String,
    /// The factor applied to the field's value.
    pub scale: f64,
}

impl Settings {
    /// Resolves the settings from `lookup` (the config map), checking every value.
    pub fn from_config(
        lookup: impl Fn(&str) -> Result<Option<String>, HostError>,
    ) -> Result<Self, Box<dyn Error>> {
        let number = |key: &str, default: Option<f64>| -> Result<f64, Box<dyn Error>> {
            match (lookup(key)?, default) {
                (Some(text), _) => match text.trim().parse::<f64>() {
                    Ok(value) if value.is_finite() => Ok(value),
                    _ => Err(format!("config `{key}` = {text:?} is not a finite number").into()),
                },
                (None, Some(default)) => Ok(default),
                (None, None) => Err(format!("config `{key}` is required").into()),
            }
        };
        let limits = Limits {
            limit: number("limit", None)?,
            hysteresis: number("hysteresis", Some(0.0))?,
        };
        if limits.hysteresis < 0.0 {
            return Err(format!("config `hysteresis` = {} is negative", limits.hysteresis).into());
        }
        Ok(Self {
            limits,
            field: lookup("field")?.unwrap_or_else(|| "temperature".to_string()),
            scale: number("scale", Some(1.0))?,
        })
    }
}

/// One device's state, as stored in kv.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Whether the alarm is raised.
    pub alarmed: bool,
    /// How many transitions (alarm or cleared) the device has made; the alert carries it.
    pub seq: u64,
}

/// A change of state worth a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transition {
    /// The reading rose above the limit.
    Alarm,
    /// The reading fell below limit - hysteresis.
    Cleared,
}

/// The state after `value`, and the transition it made, if any.
pub fn step(state: State, value: f64, limits: Limits) -> Option<(State, Transition)> {
    let (alarmed, transition) = if !state.alarmed && value > limits.limit {
        (true, Transition::Alarm)
    } else if state.alarmed && value < limits.limit - limits.hysteresis {
        (false, Transition::Cleared)
    } else {
        return None;
    };
    let next = State {
        alarmed,
        seq: state.seq + 1,
    };
    Some((next, transition))
}

/// The reading's numeric `field`.
pub fn field_value(reading: &Value, field: &str) -> Result<f64, String> {
    let value = reading
        .get(field)
        .ok_or_else(|| format!("payload has no field `{field}`"))?;
    value
        .as_f64()
        .ok_or_else(|| format!("payload field `{field}` is not a number: {value}"))
}

/// The message published on `alerts/{device}`.
#[derive(Debug, Serialize)]
struct Alert<'a> {
    device: &'a str,
    state: Transition,
    value: f64,
    limit: f64,
    hysteresis: f64,
    seq: u64,
    ts_ms: i64,
}

fn handle(event: Event<'_>) -> Result<String, Box<dyn Error>> {
    let reading: Value = event
        .json()
        .map_err(|e| format!("payload is not JSON: {e}"))?;
    let device = device(event.topic(), &reading)?;
    let settings = Settings::from_config(config::get)?;
    let value = field_value(&reading, &settings.field)? * settings.scale;

    let key = format!("state/{device}");
    let state = match kv::get(&key)? {
        Some(stored) => serde_json::from_slice(&stored)?,
        None => State::default(),
    };
    let Some((next, transition)) = step(state, value, settings.limits) else {
        let label = if state.alarmed { "alarmed" } else { "armed" };
        return Ok(format!("{device}: {value} leaves it {label}"));
    };
    let alert = Alert {
        device,
        state: transition,
        value,
        limit: settings.limits.limit,
        hysteresis: settings.limits.hysteresis,
        seq: next.seq,
        ts_ms: grove_fn_sdk::now_ms(),
    };
    let topic = format!("alerts/{device}");
    grove_fn_sdk::publish(&topic, &serde_json::to_vec(&alert)?, Qos::AtLeastOnce)?;
    kv::put(&key, &serde_json::to_vec(&next)?)?;
    Ok(format!(
        "{device}: {transition:?} at {value}, published on {topic}"
    ))
}

grove_fn_sdk::handler!(handle);

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        limit: 30.0,
        hysteresis: 2.0,
    };

    #[test]
    fn a_series_of_readings_alarms_and_clears_once_each() {
        // (reading, expected transition): one line per event, state carried from line to line.
        let cases: &[(f64, Option<Transition>)] = &[
            (25.0, None),
            (30.0, None), // at the limit is not above it
            (30.5, Some(Transition::Alarm)),
            (31.0, None), // already alarmed
            (29.0, None), // inside the band
            (28.0, None), // at limit - hysteresis is not below it
            (27.9, Some(Transition::Cleared)),
            (29.9, None),
            (35.0, Some(Transition::Alarm)),
            (35.0, None), // a redelivered reading changes nothing
        ];
        let mut state = State::default();
        for (index, &(value, expected)) in cases.iter().enumerate() {
            let outcome = step(state, value, LIMITS);
            assert_eq!(outcome.map(|(_, t)| t), expected, "line {index}: {value}");
            if let Some((next, _)) = outcome {
                assert_eq!(next.seq, state.seq + 1, "line {index}");
                state = next;
            }
        }
        assert_eq!(
            state,
            State {
                alarmed: true,
                seq: 3
            }
        );
    }

    #[test]
    fn values_from_readings() {
        let cases: &[(&str, &str, Result<f64, &str>)] = &[
            (r#"{"temperature": 31.2}"#, "temperature", Ok(31.2)),
            (r#"{"temp_mc": 21500}"#, "temp_mc", Ok(21500.0)),
            (
                r#"{"humidity": 40}"#,
                "temperature",
                Err("payload has no field `temperature`"),
            ),
            (
                r#"{"temperature": "hot"}"#,
                "temperature",
                Err("payload field `temperature` is not a number: \"hot\""),
            ),
            (
                "31.2",
                "temperature",
                Err("payload has no field `temperature`"),
            ),
        ];
        for (reading, field, expected) in cases {
            let reading: Value = serde_json::from_str(reading).unwrap();
            let expected = expected.map_err(str::to_string);
            assert_eq!(field_value(&reading, field), expected, "{reading}");
        }
    }

    #[test]
    fn settings_from_config() {
        let resolve = |pairs: &[(&str, &str)]| {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Settings::from_config(|key| {
                Ok(pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()))
            })
            .map_err(|e| e.to_string())
        };
        let full = resolve(&[
            ("limit", "30"),
            ("hysteresis", "2"),
            ("field", "temp_mc"),
            ("scale", "0.001"),
        ]);
        assert_eq!(
            full,
            Ok(Settings {
                limits: LIMITS,
                field: "temp_mc".into(),
                scale: 0.001
            })
        );
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "config `limit` is required"),
            (
                &[("limit", "warm")],
                "config `limit` = \"warm\" is not a finite number",
            ),
            (
                &[("limit", "NaN")],
                "config `limit` = \"NaN\" is not a finite number",
            ),
            (
                &[("limit", "30"), ("hysteresis", "-1")],
                "config `hysteresis` = -1 is negative",
            ),
        ];
        for &(pairs, expected) in cases {
            assert_eq!(resolve(pairs), Err(expected.to_string()), "{pairs:?}");
        }
        let defaults = resolve(&[("limit", " 30 ")]).unwrap();
        assert_eq!(
            (
                defaults.limits.hysteresis,
                defaults.field.as_str(),
                defaults.scale
            ),
            (0.0, "temperature", 1.0)
        );
    }
}
