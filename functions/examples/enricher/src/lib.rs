//! Example Grove function: a unit converter and enricher that republishes.
//!
//! Triggered by telemetry such as `{"temperature": 31.2}` on `sensors/{id}/telemetry`, it republishes
//! the reading on `enriched/{id}` with, added:
//! - for each Celsius field present, its Fahrenheit value as `{field}_f`, rounded to hundredths;
//! - `device`: the `{id}` level of the topic;
//! - `gateway_ms`: the gateway's clock when the function ran (ms since the Unix epoch).
//!
//! `{"temperature": 31.2}` on `sensors/kitchen-1/telemetry` becomes
//! `{"temperature": 31.2, "temperature_f": 88.16, "device": "kitchen-1", "gateway_ms": 1764147600000}`.
//!
//! Config: `celsius_fields`, a comma-separated list of fields in degrees Celsius (default
//! `temperature`).
//!
//! Idempotency: events arrive at least once, and the function keeps no state; a redelivered reading
//! is republished again, identical but for `gateway_ms`. Consumers that must not count a reading twice
//! deduplicate on the device's own fields (a sequence number or timestamp in the reading).

use std::error::Error;

use example_common::device;
use grove_fn_sdk::{config, Event, Qos};
use serde_json::{Map, Value};

/// The fields converted when the manifest does not say.
const DEFAULT_FIELDS: &str = "temperature";

/// Degrees Celsius to Fahrenheit, rounded to hundredths so that `31.2` gives `88.16` and not
/// `88.16000000000001`.
pub fn fahrenheit(celsius: f64) -> f64 {
    ((celsius * 9.0 / 5.0 + 32.0) * 100.0).round() / 100.0
}

/// The enriched reading: `reading` (a JSON object) plus `{field}_f`, `device` and `gateway_ms`.
pub fn enrich(
    reading: Value,
    device: &str,
    gateway_ms: i64,
    celsius_fields: &str,
) -> Result<Map<String, Value>, String> {
    let Value::Object(mut object) = reading else {
        return Err(format!("payload is not a JSON object: {reading}"));
    };
    for field in celsius_fields
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
    {
        let Some(value) = object.get(field) else {
            continue;
        };
        let celsius = value
            .as_f64()
            .ok_or_else(|| format!("payload field `{field}` is not a number: {value}"))?;
        object.insert(format!("{field}_f"), fahrenheit(celsius).into());
    }
    object.insert("device".into(), device.into());
    object.insert("gateway_ms".into(), gateway_ms.into());
    Ok(object)
}

fn handle(event: Event<'_>) -> Result<String, Box<dyn Error>> {
    let reading: Value = event
        .json()
        .map_err(|e| format!("payload is not JSON: {e}"))?;
    let device = device(event.topic(), &reading)?.to_string();
    let fields = config::get("celsius_fields")?;
    let enriched = enrich(
        reading,
        &device,
        grove_fn_sdk::now_ms(),
        fields.as_deref().unwrap_or(DEFAULT_FIELDS),
    )?;
    let topic = format!("enriched/{device}");
    grove_fn_sdk::publish(&topic, &serde_json::to_vec(&enriched)?, Qos::AtLeastOnce)?;
    Ok(topic)
}

grove_fn_sdk::handler!(handle);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        let cases: &[(f64, f64)] = &[
            (0.0, 32.0),
            (100.0, 212.0),
            (-40.0, -40.0),
            (31.2, 88.16),
            (21.5, 70.7),
            (-17.7778, 0.0),
        ];
        for &(celsius, expected) in cases {
            assert_eq!(fahrenheit(celsius), expected, "{celsius} C");
        }
    }

    #[test]
    fn enrichment() {
        let cases: &[(&str, &str, Result<&str, &str>)] = &[
            (
                r#"{"temperature":31.2}"#,
                "temperature",
                Ok(r#"{"device":"d1","gateway_ms":1000,"temperature":31.2,"temperature_f":88.16}"#),
            ),
            (
                r#"{"temperature":20,"ambient":-40,"rh":40}"#,
                " temperature, ambient ,",
                Ok(
                    r#"{"ambient":-40,"ambient_f":-40.0,"device":"d1","gateway_ms":1000,"rh":40,"temperature":20,"temperature_f":68.0}"#,
                ),
            ),
            (
                r#"{"rh":40}"#,
                "temperature",
                Ok(r#"{"device":"d1","gateway_ms":1000,"rh":40}"#),
            ),
            (
                r#"{"temperature":"warm"}"#,
                "temperature",
                Err("payload field `temperature` is not a number: \"warm\""),
            ),
            (
                "[1,2]",
                "temperature",
                Err("payload is not a JSON object: [1,2]"),
            ),
        ];
        for &(reading, fields, expected) in cases {
            let reading: Value = serde_json::from_str(reading).unwrap();
            let got =
                enrich(reading, "d1", 1000, fields).map(|object| Value::Object(object).to_string());
            assert_eq!(
                got,
                expected.map(str::to_string).map_err(str::to_string),
                "{fields}"
            );
        }
    }
}
