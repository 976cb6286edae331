//! Topic names and filters (4.7) and the subscription trie.
//!
//! The trie is owned rather than taken from a topic-matching crate: the router needs per-node
//! entries it mutates in place (options replaced on re-subscribe, shared groups by reference),
//! the `$`-topic rule [MQTT-4.7.2-1] and no allocation per match beyond the result vector; the
//! crates on crates.io either match one filter against one topic (no index) or keep values the
//! router would have to duplicate. No match cache: one is added only if measured to help.

use crate::packet::SubOptions;
use std::collections::HashMap;
use std::sync::Arc;

/// Whether `topic` is a valid topic name for PUBLISH: non-empty, no wildcards, no NUL
/// [MQTT-4.7.3-1, MQTT-3.3.2-2, MQTT-4.7.3-2], within the configured length and level budgets.
pub fn valid_topic(topic: &str, max_len: usize, max_levels: usize) -> bool {
    !topic.is_empty()
        && topic.len() <= max_len.min(65_535)
        && !topic.contains(['+', '#', '\0'])
        && topic.split('/').count() <= max_levels
}

/// Whether `filter` is a valid topic filter (4.7.1): `#` only alone as the last level
/// [MQTT-4.7.1-2], `+` only alone in its level [MQTT-4.7.1-3], non-empty, no NUL.
pub fn valid_filter(filter: &str, max_len: usize, max_levels: usize) -> bool {
    if filter.is_empty() || filter.len() > max_len.min(65_535) || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    if levels.len() > max_levels {
        return false;
    }
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return false;
        }
        if level.contains('+') && *level != "+" {
            return false;
        }
    }
    true
}

/// Whether `filter` matches `topic` (4.7), one pair at a time: for the retained store, where the
/// filter is the new one and the topics are the stored ones.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A parsed subscription filter: plain, or shared `$share/{group}/{filter}` (4.8.2).
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// Not shared.
    Plain(&'a str),
    /// Shared: group name and the filter proper.
    Shared(&'a str, &'a str),
}

/// Splits `$share/{group}/{filter}`; `None` for a malformed share (empty group, wildcard in the
/// group, or no filter) [MQTT-4.8.2-1, MQTT-4.8.2-2].
pub fn parse(filter: &str) -> Option<Parsed<'_>> {
    match filter.strip_prefix("$share/") {
        None if filter == "$share" => None,
        None => Some(Parsed::Plain(filter)),
        Some(rest) => {
            let (group, f) = rest.split_once('/')?;
            if group.is_empty() || group.contains(['+', '#']) || f.is_empty() {
                return None;
            }
            Some(Parsed::Shared(group, f))
        }
    }
}

/// One entry in a trie node.
#[derive(Clone, Debug)]
pub enum Entry {
    /// A client's own subscription.
    Client {
        /// Client id.
        client: Arc<str>,
        /// Options.
        options: SubOptions,
        /// Subscription identifier.
        id: Option<u32>,
    },
    /// A shared group, by its full `$share/...` filter (the router's groups map holds members).
    Group(Arc<str>),
}

#[derive(Default, Debug)]
struct Node {
    children: HashMap<Box<str>, Node>,
    entries: Vec<Entry>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.entries.is_empty()
    }
}

/// The subscription trie: one node per filter level, `+` and `#` as ordinary child keys.
#[derive(Default, Debug)]
pub struct Trie {
    root: Node,
}

impl Trie {
    fn node_mut(&mut self, filter: &str) -> &mut Node {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        node
    }

    /// Adds or replaces `client`'s subscription to `filter`; true when it replaced one.
    pub fn subscribe(&mut self, filter: &str, entry: Entry) -> bool {
        let node = self.node_mut(filter);
        let pos = node.entries.iter().position(|e| same(e, &entry));
        match pos {
            Some(i) => {
                node.entries[i] = entry;
                true
            }
            None => {
                node.entries.push(entry);
                false
            }
        }
    }

    /// Removes an entry like `entry` (same client, or same group) under `filter`; true if found.
    pub fn unsubscribe(&mut self, filter: &str, entry: &Entry) -> bool {
        fn walk(node: &mut Node, levels: &[&str], entry: &Entry) -> bool {
            match levels.split_first() {
                None => {
                    let before = node.entries.len();
                    node.entries.retain(|e| !same(e, entry));
                    before != node.entries.len()
                }
                Some((level, rest)) => {
                    let Some(child) = node.children.get_mut(*level) else {
                        return false;
                    };
                    let found = walk(child, rest, entry);
                    if child.is_empty() {
                        node.children.remove(*level);
                    }
                    found
                }
            }
        }
        let levels: Vec<&str> = filter.split('/').collect();
        walk(&mut self.root, &levels, entry)
    }

    /// Every entry whose filter matches `topic` (4.7.1): `+` one level, `#` the parent and any
    /// levels below [MQTT-4.7.1-2]; wildcards at the first level do not match topics starting
    /// with `$` [MQTT-4.7.2-1].
    pub fn matches<'a>(&'a self, topic: &str, out: &mut Vec<&'a Entry>) {
        fn walk<'a>(node: &'a Node, levels: &[&str], first: bool, out: &mut Vec<&'a Entry>) {
            let dollar = first && levels.first().is_some_and(|l| l.starts_with('$'));
            if !dollar {
                if let Some(hash) = node.children.get("#") {
                    out.extend(hash.entries.iter());
                }
            }
            match levels.split_first() {
                None => out.extend(node.entries.iter()),
                Some((level, rest)) => {
                    if let Some(child) = node.children.get(*level) {
                        walk(child, rest, false, out);
                    }
                    if !dollar {
                        if let Some(plus) = node.children.get("+") {
                            walk(plus, rest, false, out);
                        }
                    }
                }
            }
        }
        let levels: Vec<&str> = topic.split('/').collect();
        walk(&self.root, &levels, true, out);
    }
}

fn same(a: &Entry, b: &Entry) -> bool {
    match (a, b) {
        (Entry::Client { client: x, .. }, Entry::Client { client: y, .. }) => x == y,
        (Entry::Group(x), Entry::Group(y)) => x == y,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::QoS;

    fn entry(c: &str) -> Entry {
        Entry::Client {
            client: c.into(),
            options: SubOptions::qos(QoS::AtMostOnce),
            id: None,
        }
    }

    fn clients(t: &Trie, topic: &str) -> Vec<String> {
        let mut out = Vec::new();
        t.matches(topic, &mut out);
        let mut v: Vec<String> = out
            .iter()
            .map(|e| match e {
                Entry::Client { client, .. } => client.to_string(),
                Entry::Group(g) => g.to_string(),
            })
            .collect();
        v.sort();
        v
    }

    /// 4.7.1.2, 4.7.1.3, [MQTT-4.7.2-1]: wildcard semantics and `$` topics.
    #[test]
    fn wildcards_match_per_spec() {
        let mut t = Trie::default();
        t.subscribe("sport/#", entry("a"));
        t.subscribe("sport/+", entry("b"));
        t.subscribe("#", entry("c"));
        t.subscribe("+/monitor/Clients", entry("d"));
        t.subscribe("$SYS/monitor/+", entry("e"));
        assert_eq!(clients(&t, "sport"), ["a", "c"]);
        assert_eq!(clients(&t, "sport/"), ["a", "b", "c"]);
        assert_eq!(clients(&t, "sport/tennis/player1"), ["a", "c"]);
        assert_eq!(clients(&t, "$SYS/monitor/Clients"), ["e"]);
        assert!(t.unsubscribe("sport/#", &entry("a")));
        assert!(!t.unsubscribe("sport/#", &entry("a")));
        assert_eq!(clients(&t, "sport"), ["c"]);
    }

    #[test]
    fn filter_and_share_validation() {
        assert!(valid_filter("a/+/#", 100, 10));
        assert!(!valid_filter("a/#/b", 100, 10));
        assert!(!valid_filter("a/b+", 100, 10));
        assert!(!valid_filter("a/b/c", 100, 2));
        assert!(!valid_topic("a/+", 100, 10));
        assert_eq!(parse("$share/g/a/#"), Some(Parsed::Shared("g", "a/#")));
        assert_eq!(parse("$share/g"), None);
        assert_eq!(parse("$share//a"), None);
        assert_eq!(parse("a/b"), Some(Parsed::Plain("a/b")));
    }
}
