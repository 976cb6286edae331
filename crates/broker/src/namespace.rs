//! How MQTT names on the wire map to names inside rumqttd's router, and back.
//!
//! rumqttd 0.20 has two rules that would break a gateway for AWS IoT devices (measured, see
//! ARCHITECTURE.md): its router disconnects a client that subscribes to any filter starting with
//! `$` (other than `$share/...`), and its matcher never matches a topic starting with `$`, so the
//! AWS topics `$aws/things/...` cannot be routed at all; and it refuses client ids containing any
//! of `+ $ # /` (MQTT allows them). Grove therefore translates at its connection layer:
//!
//! - Topics and filters get a one-level prefix inside the router: `n/` for ordinary names and `s/`
//!   for names that start with `$`. So `$aws/things/t/shadow/get` routes as
//!   `s/$aws/things/t/shadow/get`, and a device's `#` becomes `n/#`, which keeps MQTT's rule that
//!   a leading wildcard never matches a `$` topic (MQTT 3.1.1 §4.7.2). Shared subscriptions keep
//!   their `$share/{group}/` head and translate the rest.
//! - Client ids are percent-encoded for `% + $ # /`, which is injective, so two devices can never
//!   share a router session.
//!
//! Every translation is undone before anything reaches a client or a component. An empty topic
//! (an MQTT 5 topic alias) is passed through unchanged: the router resolves it to the prefixed
//! topic that set the alias.

use bytes::{BufMut, Bytes, BytesMut};

/// Local topics under this prefix go to the cloud with the prefix removed: the rules' `cloud`
/// action publishes here (and a trusted local client may too); cloud sync's durable tap takes them.
pub const UP_PREFIX: &str = "$grove/cloud/up/";

/// Router prefix for ordinary topics and filters.
const ORDINARY: &[u8] = b"n/";
/// Router prefix for `$` topics and filters.
const SYSTEM: &[u8] = b"s/";
/// MQTT 5 shared-subscription head.
const SHARE: &str = "$share/";

/// The router's name for a wire topic.
pub fn topic_to_router(topic: &Bytes) -> Bytes {
    if topic.is_empty() {
        return topic.clone();
    }
    let prefix = if topic[0] == b'$' { SYSTEM } else { ORDINARY };
    let mut out = BytesMut::with_capacity(prefix.len() + topic.len());
    out.put_slice(prefix);
    out.put_slice(topic);
    out.freeze()
}

/// The wire name of a router topic (no copy: a slice of the same buffer).
pub fn topic_from_router(topic: Bytes) -> Bytes {
    if topic.starts_with(ORDINARY) || topic.starts_with(SYSTEM) {
        topic.slice(ORDINARY.len()..)
    } else {
        topic
    }
}

/// The router's name for a wire topic filter.
pub fn filter_to_router(filter: &str) -> String {
    if let Some(rest) = filter.strip_prefix(SHARE) {
        if let Some((group, path)) = rest.split_once('/') {
            return format!("{SHARE}{group}/{}", prefixed(path));
        }
    }
    prefixed(filter)
}

fn prefixed(name: &str) -> String {
    let prefix = if name.starts_with('$') {
        SYSTEM
    } else {
        ORDINARY
    };
    let mut out = String::with_capacity(prefix.len() + name.len());
    out.push_str(std::str::from_utf8(prefix).unwrap_or_default());
    out.push_str(name);
    out
}

/// The router's name for a client id.
pub fn client_id_to_router(client_id: &str) -> String {
    let mut out = String::with_capacity(client_id.len());
    for c in client_id.chars() {
        match c {
            '%' => out.push_str("%25"),
            '+' => out.push_str("%2B"),
            '$' => out.push_str("%24"),
            '#' => out.push_str("%23"),
            '/' => out.push_str("%2F"),
            c => out.push(c),
        }
    }
    out
}

/// Whether a message on `topic` may be retained.
///
/// AWS IoT: "You can't publish to a reserved topic with the RETAIN flag set" (developer guide,
/// MQTT retained messages). Its reserved topics are the `$` ones, and so are Grove's: a retained
/// shadow request or function invocation would be replayed to its service at every restart and to
/// every late subscriber. The one exception is the presence topic `$grove/things/{thing}/status`,
/// which Grove's firmware keeps retained on purpose (its will says `offline`, its announcement
/// `online`), so that whoever subscribes later learns whether the device is there: a status, not a
/// request.
pub fn may_retain(topic: &str) -> bool {
    if !topic.starts_with('$') {
        return true;
    }
    let mut levels = topic.split('/');
    matches!(
        (levels.next(), levels.next(), levels.next(), levels.next(), levels.next()),
        (Some("$grove"), Some("things"), Some(thing), Some("status"), None)
            if !thing.is_empty()
    )
}

/// Checks a topic filter (MQTT 3.1.1 §4.7.1, with the rules engine's check): not empty, no NUL,
/// `#` only as the whole last level, `+` only as a whole level; and a `$share/{group}/{filter}`
/// shared subscription names a group and a filter.
pub fn check_filter(filter: &str) -> Result<(), String> {
    grove_rules::validate_filter(filter).map_err(|e| e.to_string())?;
    if let Some(rest) = filter.strip_prefix(SHARE) {
        match rest.split_once('/') {
            Some((group, path))
                if !group.is_empty() && !group.contains(['+', '#']) && !path.is_empty() => {}
            _ => return Err(format!("invalid shared subscription {filter:?}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn only_ordinary_topics_and_device_presence_may_be_retained() {
        for (topic, may) in [
            ("config/led", true),
            ("a", true),
            ("$grove/things/lamp/status", true),
            ("$aws/things/lamp/shadow/update", false),
            ("$grove/functions/f/invoke", false),
            ("$grove/things//status", false),
            ("$grove/things/lamp/status/x", false),
            ("$grove/things/lamp", false),
            ("$SYS/broker/uptime", false),
        ] {
            assert_eq!(may_retain(topic), may, "{topic}");
        }
    }

    #[test]
    fn topics_and_filters_translate_as_documented() {
        let topics = [
            ("a/b", "n/a/b"),
            ("$aws/things/t/shadow/get", "s/$aws/things/t/shadow/get"),
            ("/leading", "n//leading"),
            ("", ""),
        ];
        for (wire, router) in topics {
            let r = topic_to_router(&Bytes::from(wire));
            assert_eq!(r, router.as_bytes(), "{wire}");
            assert_eq!(topic_from_router(r), wire.as_bytes());
        }
        let filters = [
            ("#", "n/#"),
            ("+/x", "n/+/x"),
            ("$aws/things/+/shadow/#", "s/$aws/things/+/shadow/#"),
            ("$share/g/a/#", "$share/g/n/a/#"),
            ("$share/g/$aws/x", "$share/g/s/$aws/x"),
        ];
        for (wire, router) in filters {
            assert_eq!(filter_to_router(wire), router, "{wire}");
        }
    }

    #[test]
    fn wildcard_first_filters_never_reach_dollar_topics_in_the_router() {
        // rumqttd's own matcher, on the translated names.
        use rumqttd::protocol::matches;
        let hit = |topic: &str, filter: &str| {
            let t = topic_to_router(&Bytes::copy_from_slice(topic.as_bytes()));
            matches(std::str::from_utf8(&t).unwrap(), &filter_to_router(filter))
        };
        assert!(hit("$aws/things/t/shadow/get", "$aws/things/t/shadow/get"));
        assert!(hit("$aws/things/t/shadow/get", "$aws/things/+/shadow/#"));
        assert!(!hit("$aws/things/t/shadow/get", "#"));
        assert!(!hit("$aws/things/t/shadow/get", "+/things/t/shadow/get"));
        assert!(hit("a/b", "#"));
        assert!(hit("a/b", "+/b"));
        assert!(!hit("a/b", "$aws/#"));
    }

    #[test]
    fn filter_checks() {
        for ok in [
            "a",
            "#",
            "+",
            "a/+/b",
            "a/#",
            "/",
            "$share/g/a/#",
            "$aws/things/+/shadow/#",
        ] {
            assert_eq!(check_filter(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "a/#/b",
            "a#",
            "a/b+",
            "a\0",
            "$share/g",
            "$share//a",
            "$share/g+/a",
        ] {
            assert!(check_filter(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn client_id_encoding_is_injective_and_router_safe(a in "[a-z%+$#/]{0,8}", b in "[a-z%+$#/]{0,8}") {
            let (ea, eb) = (client_id_to_router(&a), client_id_to_router(&b));
            prop_assert!(!ea.contains(['+', '$', '#', '/']));
            prop_assert_eq!(a == b, ea == eb);
        }

        #[test]
        fn topics_round_trip(t in "[$a-z/]{1,16}") {
            let wire = Bytes::from(t);
            prop_assert_eq!(topic_from_router(topic_to_router(&wire)), wire);
        }
    }
}
