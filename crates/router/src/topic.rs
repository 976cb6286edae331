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

/// Retained messages by topic in a tree that a new subscription's filter walks (4.7), so a
/// SUBSCRIBE finds its retained messages without scanning the whole store.
#[derive(Debug)]
pub struct RetainedTree<T> {
    root: RNode<T>,
    len: usize,
}

#[derive(Debug)]
struct RNode<T> {
    children: HashMap<Box<str>, RNode<T>>,
    value: Option<T>,
}

impl<T> Default for RNode<T> {
    fn default() -> Self {
        RNode {
            children: HashMap::new(),
            value: None,
        }
    }
}

impl<T> Default for RetainedTree<T> {
    fn default() -> Self {
        RetainedTree {
            root: RNode::default(),
            len: 0,
        }
    }
}

impl<T> RetainedTree<T> {
    /// Number of topics holding a value.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no topic holds a value.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value on exactly `topic`.
    pub fn get(&self, topic: &str) -> Option<&T> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.value.as_ref()
    }

    /// Sets the value on `topic`; returns the one it replaced.
    pub fn insert(&mut self, topic: &str, value: T) -> Option<T> {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let old = node.value.replace(value);
        self.len += usize::from(old.is_none());
        old
    }

    /// Removes the value on `topic`, pruning emptied nodes.
    pub fn remove(&mut self, topic: &str) -> Option<T> {
        fn walk<T>(node: &mut RNode<T>, levels: &[&str]) -> Option<T> {
            let Some((level, rest)) = levels.split_first() else {
                return node.value.take();
            };
            let child = node.children.get_mut(*level)?;
            let old = walk(child, rest);
            if child.value.is_none() && child.children.is_empty() {
                node.children.remove(*level);
            }
            old
        }
        let levels: Vec<&str> = topic.split('/').collect();
        let old = walk(&mut self.root, &levels);
        self.len -= usize::from(old.is_some());
        old
    }

    /// Values whose topic `filter` matches: `+` one level, `#` this level and all below
    /// [MQTT-4.7.1-2], no leading wildcard into `$` topics [MQTT-4.7.2-1].
    pub fn matching<'a>(&'a self, filter: &str, out: &mut Vec<&'a T>) {
        fn all<'a, T>(node: &'a RNode<T>, first: bool, out: &mut Vec<&'a T>) {
            out.extend(node.value.as_ref());
            for (key, child) in &node.children {
                if !(first && key.starts_with('$')) {
                    all(child, false, out);
                }
            }
        }
        fn walk<'a, T>(node: &'a RNode<T>, levels: &[&str], first: bool, out: &mut Vec<&'a T>) {
            match levels.split_first() {
                None => out.extend(node.value.as_ref()),
                Some((&"#", _)) => all(node, first, out),
                Some((&"+", rest)) => {
                    for (key, child) in &node.children {
                        if !(first && key.starts_with('$')) {
                            walk(child, rest, false, out);
                        }
                    }
                }
                Some((level, rest)) => {
                    if let Some(child) = node.children.get(*level) {
                        walk(child, rest, false, out);
                    }
                }
            }
        }
        let levels: Vec<&str> = filter.split('/').collect();
        walk(&self.root, &levels, true, out);
    }

    /// Every value (any order).
    pub fn for_each(&self, mut f: impl FnMut(&T)) {
        fn walk<T>(node: &RNode<T>, f: &mut impl FnMut(&T)) {
            if let Some(v) = &node.value {
                f(v);
            }
            for child in node.children.values() {
                walk(child, f);
            }
        }
        walk(&self.root, &mut f);
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

    /// The retained tree answers a filter like the trie answers a topic (4.7.1, [MQTT-4.7.2-1]).
    #[test]
    fn retained_tree_walks_filters() {
        let mut t = RetainedTree::default();
        for topic in [
            "sport",
            "sport/tennis",
            "sport/tennis/p1",
            "$SYS/x",
            "other",
        ] {
            t.insert(topic, topic.to_string());
        }
        let find = |f: &str| {
            let mut out = Vec::new();
            t.matching(f, &mut out);
            let mut v: Vec<String> = out.into_iter().cloned().collect();
            v.sort();
            v
        };
        assert_eq!(
            find("sport/#"),
            ["sport", "sport/tennis", "sport/tennis/p1"]
        );
        assert_eq!(find("+"), ["other", "sport"]);
        assert_eq!(find("#").len(), 4);
        assert_eq!(find("$SYS/+"), ["$SYS/x"]);
        assert_eq!(find("+/tennis"), ["sport/tennis"]);
        assert_eq!(t.remove("sport/tennis"), Some("sport/tennis".into()));
        assert_eq!((t.len(), t.get("sport/tennis/p1").is_some()), (4, true));
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
