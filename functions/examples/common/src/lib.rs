//! What Grove's example functions share: the convention of the telemetry topics they are
//! triggered by (`sensors/{id}/telemetry`, the device id in the second level) and, for a direct
//! invocation (`grove fn invoke`, a sync request on `$grove/functions/...`), the reading's `device`
//! field instead. Pure, so it is tested natively.

use serde_json::Value;

/// The device a reading is about: the `{id}` of `sensors/{id}/telemetry`, or, when the function is
/// invoked directly (a `$grove/...` topic: `grove fn invoke`, a sync request), the reading's `device`
/// field. It becomes a topic level, so it must be one: not empty, no `/`, `+` or `#`.
pub fn device<'a>(topic: &'a str, reading: &'a Value) -> Result<&'a str, String> {
    let id = if topic.starts_with('$') {
        reading["device"].as_str()
    } else {
        topic.split('/').nth(1)
    };
    id.filter(|id| !id.is_empty() && !id.contains(['/', '+', '#']))
        .ok_or_else(|| {
            format!(
                "no device id in topic {topic} (sensors/{{id}}/telemetry) or, for a direct \
                 invocation, in the payload's `device` field"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids() {
        let cases: &[(&str, &str, Result<&str, ()>)] = &[
            ("sensors/k1/telemetry", "{}", Ok("k1")),
            ("sensors/k1/telemetry", r#"{"device":"other"}"#, Ok("k1")),
            ("$grove/functions/f/invoke", r#"{"device":"k2"}"#, Ok("k2")),
            ("$grove/functions/f/invoke", "{}", Err(())),
            ("$grove/functions/f/invoke", r#"{"device":"a/b"}"#, Err(())),
            ("sensors//telemetry", "{}", Err(())),
            ("sensors", "{}", Err(())),
        ];
        for &(topic, reading, expected) in cases {
            let reading: Value = serde_json::from_str(reading).unwrap();
            assert_eq!(
                device(topic, &reading).map_err(drop),
                expected,
                "{topic} {reading}"
            );
        }
    }
}
