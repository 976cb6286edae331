//! Grove's own rules about names on the wire: which topics may be retained, what a valid topic
//! filter is, and the local prefix whose topics go to the cloud.
//!
//! There are no router names any more: Grove's router core routes wire topics, filters and client
//! ids as MQTT defines them (`$` topics included), so nothing is translated on the way in or out.

/// Local topics under this prefix go to the cloud with the prefix removed: the rules' `cloud`
/// action publishes here (and a trusted local client may too); cloud sync's durable tap takes them.
pub const UP_PREFIX: &str = "$grove/cloud/up/";

/// MQTT 5 shared-subscription head.
const SHARE: &str = "$share/";

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
}
