//! Python paho-mqtt against the gateway: the scripts in `tests/paho/` (one per behaviour, each a
//! short program on the Eclipse paho-mqtt client, a client Grove did not write) run as child
//! processes, and each returns the facts it saw as one JSON object, on which the Rust test
//! asserts. The scripts wait on facts (callbacks, arrivals) within 20 s each; `tests/paho/pahotest.py`
//! says how. The test command installs paho-mqtt (`scripts/test.sh`).

use std::path::Path;
use std::process::Command;

use crate::blocking;

/// The MQTT version a script speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mqtt {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.
    V5,
}

impl Mqtt {
    fn arg(self) -> &'static str {
        match self {
            Mqtt::V311 => "311",
            Mqtt::V5 => "5",
        }
    }
}

/// Runs `tests/paho/{script}` against the gateway's MQTT port `port` with `version` and `args`,
/// to completion; returns the JSON object it printed last. Fails the test with the script's
/// output when it exits unsuccessfully (a fact it waited for did not come) or prints no JSON.
pub fn paho(script: &str, port: u16, version: Mqtt, args: &[&str]) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("paho")
        .join(script);
    let out = blocking(|| {
        Command::new("python3")
            .arg(&path)
            .arg(port.to_string())
            .arg(version.arg())
            .args(args)
            // No __pycache__ in the source tree.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .expect("python3 (the test command installs paho-mqtt for it)")
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} {version:?} {args:?} failed ({}):\n{stdout}{stderr}",
        out.status
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("{script} printed no JSON facts ({e}):\n{stdout}{stderr}"))
}
