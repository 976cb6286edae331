//! Which functions a message triggers, pure: the routes of the component's durable tap (every
//! trigger filter of each function's `$LATEST` manifest, and the async event topic) and, for a
//! message one of them took, the functions (and qualifiers) it is an event of.

use std::collections::BTreeSet;

use crate::manifest::Manifest;
use crate::protocol::{parse_target, EVENT_FILTER};
use crate::routing::Qualifier;

/// The tap's filters: the triggers of the `$LATEST` manifests, and [`EVENT_FILTER`].
pub(crate) fn filters<'a>(latest: impl Iterator<Item = &'a Manifest>) -> BTreeSet<String> {
    latest
        .flat_map(|m| m.triggers.iter().cloned())
        .chain(std::iter::once(EVENT_FILTER.to_owned()))
        .collect()
}

/// The functions (and qualifiers) a message on `topic` is an event of: the target of
/// `$grove/functions/{name}[:{qualifier}]/event`, or every function whose `$LATEST` manifest
/// (`latest`: name and manifest) has a trigger matching the topic, invoking its
/// `trigger_qualifier`. `Err`: a functions topic that names no target (the event is dropped).
pub(crate) fn targets<'a>(
    topic: &str,
    latest: impl Iterator<Item = (&'a str, &'a Manifest)>,
) -> Result<Vec<(String, Qualifier)>, String> {
    if topic.starts_with("$grove/functions/") {
        return parse_target(topic, "/event").map(|target| vec![target]);
    }
    Ok(latest
        .filter(|(_, m)| {
            m.triggers
                .iter()
                .any(|t| grove_rules::topic_matches(t, topic))
        })
        .map(|(name, m)| {
            let qualifier = Qualifier::parse(&m.trigger_qualifier).unwrap_or(Qualifier::Latest);
            (name.to_owned(), qualifier)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(name: &str, triggers: &[&str], qualifier: Option<&str>) -> Manifest {
        let mut text = format!("name = {name:?}\ntriggers = {triggers:?}\n");
        if let Some(q) = qualifier {
            text.push_str(&format!("trigger_qualifier = {q:?}\n"));
        }
        Manifest::parse(&text, 64).expect("a valid manifest")
    }

    #[test]
    fn a_message_is_an_event_of_every_function_whose_trigger_matches() {
        let a = manifest("a", &["sensors/+/temp"], None);
        let b = manifest("b", &["sensors/#"], Some("live"));
        let c = manifest("c", &["other"], None);
        let latest = || [("a", &a), ("b", &b), ("c", &c)].into_iter();
        assert_eq!(
            targets("sensors/1/temp", latest()),
            Ok(vec![
                ("a".to_owned(), Qualifier::Latest),
                ("b".to_owned(), Qualifier::Alias("live".into())),
            ])
        );
        assert_eq!(
            targets("sensors/1/hum", latest()),
            Ok(vec![("b".to_owned(), Qualifier::Alias("live".into()))])
        );
        assert_eq!(targets("nothing", latest()), Ok(vec![]));
        // The event topic names its target, whatever the triggers say.
        assert_eq!(
            targets("$grove/functions/c:2/event", latest()),
            Ok(vec![("c".to_owned(), Qualifier::Version(2))])
        );
        assert!(targets("$grove/functions/c:0/event", latest()).is_err());
        assert_eq!(
            filters([&a, &b, &c].into_iter()),
            [
                "$grove/functions/+/event",
                "other",
                "sensors/#",
                "sensors/+/temp"
            ]
            .map(str::to_owned)
            .into_iter()
            .collect()
        );
    }
}
