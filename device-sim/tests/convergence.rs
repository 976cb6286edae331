//! When a shadow counts as converged: every desired field reported with the same value, recursively
//! (one case per line).

use grove_device_sim::observer::reported_holds_desired;
use serde_json::json;

#[test]
fn reported_holds_desired_cases() {
    let cases = [
        (json!({}), true),
        (json!({"reported": {"relay": false}}), true),
        (json!({"desired": {"relay": true}}), false),
        (
            json!({"desired": {"relay": true}, "reported": {"relay": true}}),
            true,
        ),
        (
            json!({"desired": {"relay": true}, "reported": {"relay": false}}),
            false,
        ),
        (
            json!({"desired": {"relay": true}, "reported": {"relay": true, "interval_s": 10}}),
            true,
        ),
        (
            json!({"desired": {"relay": true, "interval_s": 5}, "reported": {"relay": true, "interval_s": 10}}),
            false,
        ),
        (
            json!({"desired": {"a": {"b": 1}}, "reported": {"a": {"b": 1, "c": 2}}}),
            true,
        ),
        (
            json!({"desired": {"a": {"b": 1}}, "reported": {"a": {"b": 2}}}),
            false,
        ),
        (
            json!({"desired": {"relay": 1}, "reported": {"relay": true}}),
            false,
        ),
    ];
    for (state, expected) in cases {
        assert_eq!(reported_holds_desired(&state), expected, "{state}");
    }
}
