//! The firmware's device core (`grove-firmware`, host build over std TCP) against the real `grove`
//! gateway and its shadow service: boot report, a desired change delivered as a delta, applied to
//! the actuator and reported back; then a change made while the device is offline, caught up by
//! the `get` the device sends after it reconnects.

use grove_firmware::shadow::State;
use grove_firmware::{Config, Event};
use grove_tests::device::Shell;
use grove_tests::{grove, Gateway};
use serde_json::{json, Value};

const THING: &str = "fw-device-1";

fn set_desired(g: &Gateway, desired: Value) {
    let addr = format!("127.0.0.1:{}", g.mqtt_port);
    let doc = json!({"state": {"desired": desired}}).to_string();
    let (code, out) = grove(
        &["shadow", "--mqtt", &addr, "update", THING, "--json", &doc],
        g.dir.path(),
    );
    assert_eq!(code, 0, "{out}");
}

#[test]
fn the_firmware_device_core_completes_shadow_round_trips_with_a_real_gateway() {
    let g = Gateway::start("");
    let config = Config::new(THING).unwrap().with_backoff(100, 400);
    let mut shell = Shell::new(config, false, g.mqtt_port);
    shell.run_until(|e| *e == Event::Connected);

    // The boot report reached the gateway's shadow.
    let doc = g.wait_shadow(THING, |d| d["state"]["reported"]["relay"] == false);
    assert_eq!(
        doc["state"]["reported"],
        json!({"relay": false, "interval_s": 10})
    );

    // An operator wants the relay on: the gateway sends the delta, the device applies and reports.
    set_desired(&g, json!({"relay": true}));
    let events = shell.run_until(|e| matches!(e, Event::Applied(_)));
    assert_eq!(
        events.last(),
        Some(&Event::Applied(State {
            relay: true,
            interval_s: 10
        }))
    );
    assert!(shell.device.actuator().0, "the relay is on");
    let doc = g.wait_shadow(THING, |d| d["state"]["reported"]["relay"] == true);
    assert!(
        doc["state"].get("delta").is_none(),
        "in sync, no delta: {doc}"
    );

    // The device drops off; the operator changes desired state meanwhile.
    shell.vanish();
    set_desired(&g, json!({"relay": false, "interval_s": 30}));
    // It reconnects, sends `get`, and catches up from get/accepted's delta.
    let events = shell.run_until(|e| {
        matches!(
            e,
            Event::Applied(State {
                relay: false,
                interval_s: 30
            })
        )
    });
    assert!(
        events.contains(&Event::Connected),
        "reconnected: {events:?}"
    );
    assert!(!shell.device.actuator().0, "the relay is off again");
    let doc = g.wait_shadow(THING, |d| d["state"]["reported"]["interval_s"] == 30);
    assert_eq!(
        doc["state"]["reported"],
        json!({"relay": false, "interval_s": 30})
    );
    assert!(doc["state"].get("delta").is_none(), "converged: {doc}");
}
