//! Safe, typed wrappers over the host calls. Each checks the raw code and fetches pending results.

use crate::error::{check, HostError};
use crate::ffi;

/// Copies the pending result of the call that just returned `len`.
fn take_result(len: usize) -> Result<Vec<u8>, HostError> {
    let mut buffer = Vec::new();
    buffer
        .try_reserve_exact(len)
        .map_err(|_| HostError::Limit)?;
    buffer.resize(len, 0);
    let copied = check(ffi::result(&mut buffer))?;
    buffer.truncate(copied);
    Ok(buffer)
}

/// Runs a data-returning call: the data on success, `None` when the host says NOT_FOUND.
fn fetch(code: i32) -> Result<Option<Vec<u8>>, HostError> {
    match check(code) {
        Ok(len) => take_result(len).map(Some),
        Err(HostError::NotFound) => Ok(None),
        Err(error) => Err(error),
    }
}

/// MQTT quality of service for [`publish`]. AWS IoT Core has no QoS 2, so neither has this SDK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Qos {
    /// Delivered at most once (fire and forget).
    AtMostOnce = 0,
    /// Delivered at least once (acknowledged, possibly repeated).
    AtLeastOnce = 1,
}

/// Publishes `payload` on `topic` (no wildcards) through the gateway's bus. Needs a `publish` grant
/// covering `topic`.
///
/// Ok means queued, not yet delivered: the gateway sends an invocation's messages when its handler
/// succeeds (after committing its kv writes), and drops them when it fails, so a retried event does not
/// repeat the messages of a failed attempt. A redelivered event that already succeeded once does
/// publish again unless the handler checks its state first (see the idempotency note in the README).
///
/// ```no_run
/// grove_fn_sdk::publish("alerts/kitchen-1", br#"{"state":"alarm"}"#, grove_fn_sdk::Qos::AtLeastOnce)?;
/// # Ok::<(), grove_fn_sdk::HostError>(())
/// ```
pub fn publish(topic: &str, payload: &[u8], qos: Qos) -> Result<(), HostError> {
    check(ffi::publish(topic.as_bytes(), payload, qos as i32)).map(drop)
}

/// The gateway's wall clock in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    ffi::now_ms()
}

/// Device shadows (AWS IoT Device Shadow documents, unchanged).
pub mod shadow {
    use super::{check, ffi, take_result, HostError};

    /// The `get/accepted` document of `thing`'s shadow (`name` `None` = the classic, unnamed shadow).
    /// Needs a `shadow_read` grant for the thing. [`HostError::NotFound`] when there is no shadow.
    ///
    /// ```no_run
    /// let doc = grove_fn_sdk::shadow::get("actuator-1", None)?;
    /// let doc: serde_json::Value = serde_json::from_slice(&doc)?;
    /// let setpoint = doc["state"]["desired"]["setpoint"].as_f64();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get(thing: &str, name: Option<&str>) -> Result<Vec<u8>, HostError> {
        let len = check(ffi::shadow_get(
            thing.as_bytes(),
            name.unwrap_or("").as_bytes(),
        ))?;
        take_result(len)
    }

    /// Sends an AWS update request document (`{"state":{"desired":{..}},"version":7}`) to `thing`'s
    /// shadow and returns the `update/accepted` document. Needs a `shadow_update` grant for the thing.
    /// A rejection (for instance a version conflict) is [`HostError::Rejected`] with AWS's document.
    pub fn update(thing: &str, name: Option<&str>, document: &[u8]) -> Result<Vec<u8>, HostError> {
        let code = ffi::shadow_update(thing.as_bytes(), name.unwrap_or("").as_bytes(), document);
        match check(code) {
            Ok(len) => take_result(len),
            Err(HostError::Rejected { .. }) => {
                // The rejection document is the pending result; its length is unknown, and AWS's
                // rejection documents are short, so one generous read gets it whole.
                let mut document = vec![0; 4096];
                let copied = check(ffi::result(&mut document)).unwrap_or(0);
                document.truncate(copied);
                Err(HostError::Rejected { document })
            }
            Err(error) => Err(error),
        }
    }
}

/// The function's own durable key-value state (needs the `kv` grant), kept by the gateway across
/// invocations, instance recycling and restarts.
///
/// Writes become durable when the invocation succeeds: if it fails, its writes are dropped and a retry
/// sees the state from before. Reads see the invocation's own earlier writes.
pub mod kv {
    use super::{check, fetch, ffi, HostError};

    /// The value of `key`, `None` if absent.
    pub fn get(key: &str) -> Result<Option<Vec<u8>>, HostError> {
        fetch(ffi::kv_get(key.as_bytes()))
    }

    /// Sets `key` to `value`.
    pub fn put(key: &str, value: &[u8]) -> Result<(), HostError> {
        check(ffi::kv_put(key.as_bytes(), value)).map(drop)
    }

    /// Removes `key`; removing an absent key is not an error.
    pub fn delete(key: &str) -> Result<(), HostError> {
        check(ffi::kv_delete(key.as_bytes())).map(drop)
    }
}

/// The manifest's `[config]` map.
pub mod config {
    use super::{fetch, ffi, HostError};

    /// The value of `key`, `None` if the manifest does not set it.
    ///
    /// ```no_run
    /// let limit: f64 = grove_fn_sdk::config::get("limit")?.as_deref().unwrap_or("30").parse()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get(key: &str) -> Result<Option<String>, HostError> {
        match fetch(ffi::config_get(key.as_bytes()))? {
            Some(value) => String::from_utf8(value)
                .map(Some)
                .map_err(|_| HostError::Invalid),
            None => Ok(None),
        }
    }
}

/// The function's log, shown by `grove fn logs`.
pub mod log {
    use super::ffi;

    /// Logs at level error (0).
    pub fn error(message: &str) {
        ffi::log(0, message.as_bytes());
    }

    /// Logs at level warn (1).
    pub fn warn(message: &str) {
        ffi::log(1, message.as_bytes());
    }

    /// Logs at level info (2).
    pub fn info(message: &str) {
        ffi::log(2, message.as_bytes());
    }

    /// Logs at level debug (3).
    pub fn debug(message: &str) {
        ffi::log(3, message.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::fake;

    #[test]
    fn kv_round_trip_and_absence() {
        kv::put("state/a", b"alarmed").unwrap();
        assert_eq!(kv::get("state/a").unwrap(), Some(b"alarmed".to_vec()));
        assert_eq!(kv::get("state/b").unwrap(), None);
        kv::delete("state/a").unwrap();
        kv::delete("state/a").unwrap();
        assert_eq!(kv::get("state/a").unwrap(), None);
    }

    #[test]
    fn config_values_and_absence() {
        fake::with(|host| {
            host.config.insert(b"limit".to_vec(), b"30".to_vec());
            host.config.insert(b"bad".to_vec(), vec![0xff]);
        });
        let cases: &[(&str, Result<Option<&str>, HostError>)] = &[
            ("limit", Ok(Some("30"))),
            ("absent", Ok(None)),
            ("bad", Err(HostError::Invalid)),
        ];
        for (key, expected) in cases {
            let got = config::get(key);
            assert_eq!(
                got.as_ref().map(|v| v.as_deref()),
                expected.as_ref().map(|v| *v),
                "{key}"
            );
        }
    }

    #[test]
    fn shadow_get_copies_the_document_and_reports_absence() {
        let doc = br#"{"state":{"desired":{"setpoint":21}},"version":3}"#;
        fake::with(|host| {
            host.shadows
                .insert((b"t1".to_vec(), b"".to_vec()), doc.to_vec());
            host.shadows
                .insert((b"t1".to_vec(), b"cfg".to_vec()), b"{}".to_vec());
        });
        assert_eq!(shadow::get("t1", None).unwrap(), doc);
        assert_eq!(shadow::get("t1", Some("cfg")).unwrap(), b"{}");
        assert_eq!(shadow::get("t2", None), Err(HostError::NotFound));
    }

    #[test]
    fn shadow_update_returns_accepted_or_the_rejection_document() {
        type Case<'a> = (i32, &'a [u8], Result<&'a [u8], HostError>);
        let cases: &[Case<'_>] = &[
            (0, b"{\"version\":4}", Ok(b"{\"version\":4}")),
            (
                -6,
                b"{\"code\":409}",
                Err(HostError::Rejected {
                    document: b"{\"code\":409}".to_vec(),
                }),
            ),
            (-1, b"", Err(HostError::Denied)),
        ];
        for (code, reply, expected) in cases {
            fake::with(|host| host.update_reply = Some((*code, reply.to_vec())));
            let got = shadow::update("t1", None, b"{\"state\":{}}");
            assert_eq!(got.as_deref(), expected.as_deref(), "code {code}");
        }
    }

    #[test]
    fn publish_passes_topic_payload_and_qos() {
        publish("alerts/a", b"{}", Qos::AtLeastOnce).unwrap();
        publish("alerts/b", b"x", Qos::AtMostOnce).unwrap();
        let published = fake::with(|host| std::mem::take(&mut host.published));
        assert_eq!(
            published,
            vec![
                ("alerts/a".to_string(), b"{}".to_vec(), 1),
                ("alerts/b".to_string(), b"x".to_vec(), 0)
            ]
        );
    }

    #[test]
    fn log_levels_follow_the_abi() {
        log::error("e");
        log::warn("w");
        log::info("i");
        log::debug("d");
        let logs = fake::with(|host| std::mem::take(&mut host.logs));
        let expected: Vec<(i32, String)> = [(0, "e"), (1, "w"), (2, "i"), (3, "d")]
            .into_iter()
            .map(|(level, m)| (level, m.to_string()))
            .collect();
        assert_eq!(logs, expected);
    }
}
