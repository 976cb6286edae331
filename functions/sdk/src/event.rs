//! The event a handler receives: the MQTT topic it arrived on and its payload.

use serde::Deserialize;

/// One event: a message that matched the function's triggers, a rule's action, or a sync/CLI invocation.
///
/// It borrows the memory the host wrote the event into; that memory is freed when the handler returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    topic: &'a str,
    payload: &'a [u8],
}

impl<'a> Event<'a> {
    /// An event with this topic and payload. The SDK builds events from the host's memory; this
    /// constructor lets a function's own tests call its handler logic natively.
    pub fn new(topic: &'a str, payload: &'a [u8]) -> Self {
        Self { topic, payload }
    }

    /// The MQTT topic, e.g. `sensors/kitchen-1/telemetry`.
    pub fn topic(&self) -> &'a str {
        self.topic
    }

    /// The payload bytes, exactly as published.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// The topic's level at `index` (0-based), e.g. level 1 of `sensors/kitchen-1/telemetry` is
    /// `kitchen-1`: the `+` of a trigger like `sensors/+/telemetry`.
    ///
    /// ```
    /// let event = grove_fn_sdk::Event::new("sensors/kitchen-1/telemetry", b"{}");
    /// assert_eq!(event.topic_level(1), Some("kitchen-1"));
    /// assert_eq!(event.topic_level(3), None);
    /// ```
    pub fn topic_level(&self, index: usize) -> Option<&'a str> {
        self.topic.split('/').nth(index)
    }

    /// The payload parsed as JSON into `T` (borrowing from the payload where `T` allows it).
    ///
    /// ```
    /// #[derive(serde::Deserialize)]
    /// struct Reading {
    ///     temperature: f64,
    /// }
    ///
    /// let event = grove_fn_sdk::Event::new("sensors/a/telemetry", br#"{"temperature": 31.2}"#);
    /// let reading: Reading = event.json().unwrap();
    /// assert_eq!(reading.temperature, 31.2);
    /// ```
    pub fn json<T: Deserialize<'a>>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(self.payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_levels() {
        let cases: &[(&str, usize, Option<&str>)] = &[
            ("sensors/a/telemetry", 0, Some("sensors")),
            ("sensors/a/telemetry", 2, Some("telemetry")),
            ("sensors/a/telemetry", 3, None),
            ("a//b", 1, Some("")),
            ("single", 0, Some("single")),
        ];
        for &(topic, index, expected) in cases {
            assert_eq!(
                Event::new(topic, b"").topic_level(index),
                expected,
                "{topic} [{index}]"
            );
        }
    }

    #[test]
    fn json_reports_bad_payloads() {
        let event = Event::new("t", b"{\"temperature\": ");
        let error = event.json::<serde_json::Value>().unwrap_err();
        assert!(error.is_eof(), "{error}");
    }
}
