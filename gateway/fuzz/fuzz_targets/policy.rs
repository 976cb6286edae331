//! Fuzzes the policy matcher (`crates/auth/src/policy.rs`, compiled in directly so the fuzz build
//! stays small): no input panics, and the matcher's laws hold for every pair of valid filters and
//! every topic.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, missing_docs)]
#[path = "../../../crates/auth/src/policy.rs"]
mod policy;

use policy::{covers, matches, overlaps, valid_filter};

fuzz_target!(|input: (&str, &str, &str, &str)| {
    let (a, b, topic, id) = input;
    let _ = matches(a, topic);
    let _ = valid_filter(a);
    if valid_filter(a) && valid_filter(b) && !topic.contains(['+', '#']) {
        assert_eq!(overlaps(a, b), overlaps(b, a), "overlaps is symmetric: {a:?} {b:?}");
        if matches(a, topic) && matches(b, topic) {
            assert!(overlaps(a, b), "{a:?} and {b:?} both match {topic:?}");
        }
        if covers(a, b) && matches(b, topic) {
            assert!(matches(a, topic), "{a:?} covers {b:?} but misses {topic:?}");
        }
    }
    if policy::safe_variable(id) {
        let p = policy::device_policy().resolve(id, id);
        let other = format!("devices/{id}x/{topic}");
        assert!(!p.may_publish(&other), "{id:?} may publish to {other:?}");
        let _ = p.may_subscribe(a);
        let _ = p.may_receive(topic);
    }
});
