//! Authorization policies in the style of AWS IoT policies: allow and deny lists of MQTT topic
//! filters for the three actions a device takes, with policy variables.
//!
//! - `publish`: a PUBLISH is allowed when its topic matches an allowed filter and no denied one.
//! - `subscribe`: a SUBSCRIBE filter is allowed when every topic it could match is covered by one
//!   allowed filter, and it could match no topic of a denied filter.
//! - `receive`: a message is delivered when its topic matches an allowed filter and no denied one
//!   (checked on every delivery, so a broad subscription still yields only what the policy allows).
//!
//! Deny wins over allow, and what no allow covers is denied, as in AWS IoT ("Policy evaluation":
//! an explicit deny overrides an allow; by default everything is denied). Variables `${client_id}`
//! and `${thing}` are substituted when a device connects ([`Policy::resolve`]); a value containing
//! an MQTT wildcard or `/` can never widen a filter, because such client ids are refused before
//! resolution ([`safe_variable`]).
//!
//! This module is pure: strings in, decisions out. It is property-tested against a naive reference
//! and fuzzed (`gateway/fuzz`).

use serde::Deserialize;

/// A policy as configured: templates with `${client_id}` and `${thing}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The name listeners and devices refer to.
    pub name: String,
    /// Topic filters a device may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Topic filters a device may subscribe to.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Topic filters a device may receive messages on.
    #[serde(default)]
    pub receive: Vec<String>,
    /// Topic filters a device may never publish to.
    #[serde(default)]
    pub deny_publish: Vec<String>,
    /// Topic filters a device may never subscribe to.
    #[serde(default)]
    pub deny_subscribe: Vec<String>,
    /// Topic filters a device may never receive on.
    #[serde(default)]
    pub deny_receive: Vec<String>,
}

/// The built-in policy for devices: their own shadows (classic and named), their own jobs (the
/// AWS IoT Jobs device topics `$aws/things/{thing}/jobs/...`, requests, answers and
/// notifications), their own `devices/{client_id}/...` space and their telemetry topic, nothing
/// else; and publishing their presence on `$grove/things/{thing}/status` (Grove's firmware's will,
/// `offline`, and its `online`: without it a firmware device is refused at CONNECT, since a will
/// needs publish rights on its topic). Named `device`. As AWS IoT's example policies for jobs do,
/// a device's jobs are its thing's: it can neither read nor drive another thing's executions.
pub fn device_policy() -> Policy {
    let own = vec![
        "$aws/things/${thing}/shadow/#".to_owned(),
        "$aws/things/${thing}/jobs/#".to_owned(),
        "devices/${client_id}/#".to_owned(),
        "dt/${thing}/#".to_owned(),
    ];
    let mut publish = own.clone();
    publish.push("$grove/things/${thing}/status".to_owned());
    Policy {
        name: "device".to_owned(),
        publish,
        subscribe: own.clone(),
        receive: own,
        deny_publish: Vec::new(),
        deny_subscribe: Vec::new(),
        deny_receive: Vec::new(),
    }
}

/// The built-in policy that allows everything, for trusted (e.g. loopback) listeners. Named
/// `allow-all`.
pub fn allow_all_policy() -> Policy {
    let all = vec!["#".to_owned(), "$aws/#".to_owned(), "$grove/#".to_owned()];
    Policy {
        name: "allow-all".to_owned(),
        publish: all.clone(),
        subscribe: all.clone(),
        receive: all,
        deny_publish: Vec::new(),
        deny_subscribe: Vec::new(),
        deny_receive: Vec::new(),
    }
}

/// Why a policy cannot be enforced as written; startup refuses it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A filter is not a valid MQTT topic filter.
    #[error("policy `{policy}`: {filter:?} is not a valid topic filter")]
    BadFilter {
        /// The policy.
        policy: String,
        /// The filter.
        filter: String,
    },
    /// A `${...}` variable other than `${client_id}` and `${thing}`.
    #[error("policy `{policy}`: unknown variable in {filter:?} (only ${{client_id}} and ${{thing}} exist)")]
    UnknownVariable {
        /// The policy.
        policy: String,
        /// The filter.
        filter: String,
    },
    /// A variable that is not a whole topic level, which could not be enforced safely.
    #[error("policy `{policy}`: a variable must be a whole topic level, as in a/${{client_id}}/b, not {filter:?}")]
    PartialLevelVariable {
        /// The policy.
        policy: String,
        /// The filter.
        filter: String,
    },
}

impl Policy {
    /// Checks every template, so that a policy that cannot be enforced stops startup.
    pub fn validate(&self) -> Result<(), PolicyError> {
        for filter in self.all_filters() {
            for level in filter.split('/') {
                let variable = level == "${client_id}" || level == "${thing}";
                if level.contains("${") && !variable {
                    let partial = level.contains("${client_id}") || level.contains("${thing}");
                    let (policy, filter) = (self.name.clone(), filter.clone());
                    return Err(if partial {
                        PolicyError::PartialLevelVariable { policy, filter }
                    } else {
                        PolicyError::UnknownVariable { policy, filter }
                    });
                }
            }
            let sample = substitute(filter, "x", "x");
            if !valid_filter(&sample) {
                return Err(PolicyError::BadFilter {
                    policy: self.name.clone(),
                    filter: filter.clone(),
                });
            }
        }
        Ok(())
    }

    fn all_filters(&self) -> impl Iterator<Item = &String> {
        self.publish
            .iter()
            .chain(&self.subscribe)
            .chain(&self.receive)
            .chain(&self.deny_publish)
            .chain(&self.deny_subscribe)
            .chain(&self.deny_receive)
    }

    /// The policy for one connected device. Both values must pass [`safe_variable`].
    pub fn resolve(&self, client_id: &str, thing: &str) -> Resolved {
        let r = |list: &[String]| -> Vec<String> {
            list.iter()
                .map(|f| substitute(f, client_id, thing))
                .collect()
        };
        Resolved {
            publish: r(&self.publish),
            subscribe: r(&self.subscribe),
            receive: r(&self.receive),
            deny_publish: r(&self.deny_publish),
            deny_subscribe: r(&self.deny_subscribe),
            deny_receive: r(&self.deny_receive),
        }
    }
}

/// Whether a client id or thing name may be substituted into a policy: non-empty, and free of
/// the characters that would change a filter's meaning (`/ + # \0`) or its variables (`$ {`).
pub fn safe_variable(value: &str) -> bool {
    !value.is_empty() && !value.contains(['/', '+', '#', '\0', '$', '{', '}'])
}

fn substitute(filter: &str, client_id: &str, thing: &str) -> String {
    filter
        .replace("${client_id}", client_id)
        .replace("${thing}", thing)
}

/// A policy resolved for one connection: plain topic filters, checked per packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    publish: Vec<String>,
    subscribe: Vec<String>,
    receive: Vec<String>,
    deny_publish: Vec<String>,
    deny_subscribe: Vec<String>,
    deny_receive: Vec<String>,
}

impl Resolved {
    /// May the device publish on `topic`?
    pub fn may_publish(&self, topic: &str) -> bool {
        any_matches(&self.publish, topic) && !any_matches(&self.deny_publish, topic)
    }

    /// May the device subscribe to `filter`?
    pub fn may_subscribe(&self, filter: &str) -> bool {
        valid_filter(filter)
            && self.subscribe.iter().any(|allowed| covers(allowed, filter))
            && !self
                .deny_subscribe
                .iter()
                .any(|denied| overlaps(denied, filter))
    }

    /// May the device receive a message on `topic`?
    pub fn may_receive(&self, topic: &str) -> bool {
        any_matches(&self.receive, topic) && !any_matches(&self.deny_receive, topic)
    }
}

fn any_matches(filters: &[String], topic: &str) -> bool {
    filters.iter().any(|f| matches(f, topic))
}

/// Whether a topic filter is valid (MQTT 3.1.1 §4.7.1); the rules engine's check, shared.
pub fn valid_filter(filter: &str) -> bool {
    grove_rules::validate_filter(filter).is_ok()
}

/// MQTT topic matching (MQTT 3.1.1 §4.7), including the rule that a filter starting with a
/// wildcard does not match a topic starting with `$`: the rules engine's reference matcher, shared.
pub use grove_rules::topic_matches as matches;

/// Whether every topic matched by `inner` is matched by `outer`.
pub fn covers(outer: &str, inner: &str) -> bool {
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    let mut first = true;
    loop {
        match (o.next(), i.next()) {
            // A leading wildcard of `outer` cannot stand for a literal `$` level of `inner`.
            (Some("#" | "+"), Some(x)) if first && x.starts_with('$') => return false,
            (Some("#"), _) => return true,
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(_), Some("+")) => return false,
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
        first = false;
    }
}

/// Whether some topic is matched by both filters.
pub fn overlaps(a: &str, b: &str) -> bool {
    let mut x = a.split('/');
    let mut y = b.split('/');
    let mut first = true;
    loop {
        match (x.next(), y.next()) {
            (Some("#"), Some(other)) | (Some(other), Some("#")) => {
                // A leading wildcard cannot stand for a `$` level.
                return !(first && other.starts_with('$'));
            }
            (Some("#"), None) | (None, Some("#")) => return true,
            (Some("+"), Some(other)) | (Some(other), Some("+")) => {
                if first && other.starts_with('$') {
                    return false;
                }
            }
            (Some(p), Some(q)) if p == q => {}
            (None, None) => return true,
            _ => return false,
        }
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn matching_cases() {
        let cases = [
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("#", "$aws/x", false),
            ("+/x", "$aws/x", false),
            ("$aws/#", "$aws/things/t/shadow/get", true),
            ("a/b", "a/b/c", false),
            ("a//b", "a//b", true),
            ("+", "", true),
        ];
        for (filter, topic, want) in cases {
            assert_eq!(matches(filter, topic), want, "{filter} vs {topic}");
        }
    }

    #[test]
    fn covering_and_overlapping_cases() {
        let covers_cases = [
            ("devices/d1/#", "devices/d1/x", true),
            ("devices/d1/#", "devices/d1/+/y", true),
            ("devices/d1/#", "devices/+/x", false),
            ("devices/d1/#", "#", false),
            ("devices/+/x", "devices/d1/x", true),
            ("#", "$aws/x", false),
            (
                "$aws/things/t/shadow/#",
                "$aws/things/t/shadow/update/delta",
                true,
            ),
            ("$aws/things/t/shadow/#", "$aws/things/+/shadow/#", false),
        ];
        for (outer, inner, want) in covers_cases {
            assert_eq!(covers(outer, inner), want, "{outer} covers {inner}");
        }
        let overlap_cases = [
            ("a/#", "#", true),
            ("a/+", "+/b", true),
            ("a/b", "a/c", false),
            ("#", "$aws/x", false),
            ("+/x", "$aws/x", false),
            ("$aws/+", "$aws/#", true),
            ("a/b/c", "a/#", true),
        ];
        for (a, b, want) in overlap_cases {
            assert_eq!(overlaps(a, b), want, "{a} overlaps {b}");
            assert_eq!(overlaps(b, a), want, "{b} overlaps {a}");
        }
    }

    #[test]
    fn the_device_policy_confines_a_device_to_its_own_topics() {
        let p = device_policy().resolve("dev-a", "thing-a");
        assert!(p.may_publish("$aws/things/thing-a/shadow/update"));
        assert!(p.may_publish("devices/dev-a/telemetry"));
        assert!(!p.may_publish("$aws/things/thing-b/shadow/update"));
        assert!(!p.may_publish("devices/dev-b/telemetry"));
        assert!(p.may_subscribe("$aws/things/thing-a/shadow/update/delta"));
        assert!(p.may_subscribe("devices/dev-a/#"));
        assert!(!p.may_subscribe("#"));
        assert!(!p.may_subscribe("$aws/things/+/shadow/#"));
        assert!(!p.may_subscribe("devices/+/telemetry"));
        assert!(p.may_receive("devices/dev-a/cmd"));
        assert!(!p.may_receive("devices/dev-b/cmd"));
        // Its presence (Grove's firmware's will and `online`): published, never read back.
        assert!(p.may_publish("$grove/things/thing-a/status"));
        assert!(!p.may_publish("$grove/things/thing-b/status"));
        assert!(!p.may_publish("$grove/things/thing-a/other"));
        assert!(!p.may_subscribe("$grove/things/thing-a/status"));
        assert!(!p.may_receive("$grove/things/thing-b/status"));
        // Jobs: the thing's own requests, answers and notifications, no other thing's.
        assert!(p.may_publish("$aws/things/thing-a/jobs/start-next"));
        assert!(p.may_publish("$aws/things/thing-a/jobs/fw-1/update"));
        assert!(p.may_subscribe("$aws/things/thing-a/jobs/notify-next"));
        assert!(p.may_subscribe("$aws/things/thing-a/jobs/+/update/accepted"));
        assert!(p.may_receive("$aws/things/thing-a/jobs/$next/get/accepted"));
        assert!(!p.may_publish("$aws/things/thing-b/jobs/fw-1/update"));
        assert!(!p.may_subscribe("$aws/things/thing-b/jobs/notify-next"));
        assert!(!p.may_subscribe("$aws/things/+/jobs/notify-next"));
        assert!(!p.may_receive("$aws/things/thing-b/jobs/get/accepted"));
    }

    #[test]
    fn deny_wins() {
        let mut policy = allow_all_policy();
        policy.deny_publish = vec!["secrets/#".into()];
        policy.deny_subscribe = vec!["secrets/#".into()];
        policy.deny_receive = vec!["secrets/#".into()];
        let p = policy.resolve("c", "t");
        assert!(p.may_publish("a/b"));
        assert!(!p.may_publish("secrets/x"));
        assert!(!p.may_subscribe("#"), "# overlaps the denied secrets/#");
        assert!(!p.may_subscribe("secrets/+"));
        assert!(p.may_subscribe("a/#"));
        assert!(!p.may_receive("secrets/x"));
    }

    #[test]
    fn unenforceable_policies_are_refused() {
        let bad = |publish: &str| Policy {
            publish: vec![publish.to_owned()],
            ..device_policy()
        };
        assert!(matches!(
            bad("a/#/b").validate(),
            Err(PolicyError::BadFilter { .. })
        ));
        assert!(matches!(
            bad("a/${who}").validate(),
            Err(PolicyError::UnknownVariable { .. })
        ));
        assert!(matches!(
            bad("a/x${client_id}").validate(),
            Err(PolicyError::PartialLevelVariable { .. })
        ));
        assert_eq!(device_policy().validate(), Ok(()));
        assert_eq!(allow_all_policy().validate(), Ok(()));
    }

    #[test]
    fn unsafe_variable_values_are_refused() {
        for bad in ["", "a/b", "+", "#", "x\0", "$sys", "${thing}"] {
            assert!(!safe_variable(bad), "{bad:?}");
        }
        assert!(safe_variable("sensor-1:kitchen"));
    }

    /// Topics and filters over a tiny alphabet, so that random ones often relate.
    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just("$s".to_owned()),
            Just(String::new())
        ]
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..4).prop_map(|l| l.join("/"))
    }

    fn filter() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop_oneof![level(), Just("+".to_owned())], 0..4),
            any::<bool>(),
        )
            .prop_map(|(mut l, hash)| {
                if hash || l.is_empty() {
                    l.push("#".to_owned());
                }
                l.join("/")
            })
    }

    /// Every topic over the alphabet with up to four levels, for brute-force references.
    fn universe() -> Vec<String> {
        let levels = ["a", "b", "$s", ""];
        let mut all = Vec::new();
        let mut frontier: Vec<String> = levels.iter().map(|l| l.to_string()).collect();
        for _ in 0..4 {
            all.extend(frontier.iter().cloned());
            frontier = frontier
                .iter()
                .flat_map(|t| levels.iter().map(move |l| format!("{t}/{l}")))
                .collect();
        }
        all
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// `covers` and `overlaps` agree with brute force over every short topic.
        #[test]
        fn covers_and_overlaps_agree_with_brute_force(a in filter(), b in filter()) {
            let all = universe();
            let depth_ok = |f: &str| f.split('/').count() <= 3;
            prop_assume!(depth_ok(&a) && depth_ok(&b));
            let brute_overlap = all.iter().any(|t| matches(&a, t) && matches(&b, t));
            prop_assert_eq!(overlaps(&a, &b), brute_overlap, "overlaps({}, {})", a, b);
            let brute_cover = all.iter().all(|t| !matches(&b, t) || matches(&a, t));
            // covers() may be stricter than brute force only where the universe is too shallow
            // to show the difference; it must never allow more.
            if covers(&a, &b) {
                prop_assert!(brute_cover, "covers({}, {}) but a topic escapes", a, b);
            }
        }

        /// A resolved device policy never lets one device publish or receive on another's space.
        #[test]
        fn devices_stay_in_their_own_space(me in "[a-z0-9-]{1,8}", other in "[a-z0-9-]{1,8}", rest in topic()) {
            prop_assume!(me != other);
            let p = device_policy().resolve(&me, &me);
            for t in [
                format!("devices/{other}/{rest}"),
                format!("$aws/things/{other}/shadow/{rest}"),
                format!("$aws/things/{other}/jobs/{rest}"),
                format!("$grove/things/{other}/status"),
            ] {
                prop_assert!(!p.may_publish(&t));
                prop_assert!(!p.may_receive(&t));
            }
        }

        /// A filter a policy allows to subscribe never delivers a topic the policy would not let
        /// the device receive (for the built-in device policy).
        #[test]
        fn allowed_subscriptions_stay_inside_receive(f in filter()) {
            let p = device_policy().resolve("a", "a");
            let g = format!("devices/a/{f}");
            if p.may_subscribe(&g) {
                for t in universe() {
                    let t = format!("devices/a/{t}");
                    if matches(&g, &t) {
                        prop_assert!(p.may_receive(&t));
                    }
                }
            }
        }
    }
}
