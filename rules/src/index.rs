//! The topic-filter index: which rules' `FROM` filters match a topic, without scanning every rule.
//!
//! Filters without wildcards are kept by their whole text, so a topic finds them with one lookup. The
//! others are in a trie over topic levels: matching walks the topic's levels once and, at each level,
//! follows the exact child, the `+` child and collects the `#` entries, so its cost grows with the
//! topic's depth and the number of matching filters, not with the number of rules. (Exact filters are
//! kept apart because a trie node per level of each is costly: with 10,000 rules on topics of their
//! own, `sensors/{n}/t`, the trie's nodes took ~740 bytes a rule, the map takes about a sixth.) MQTT's rules apply (MQTT 3.1.1
//! §4.7): `#` also matches the parent level (`a/#` matches `a`), and filters starting with a wildcard do
//! not match topics starting with `$` (so `#` does not see `$aws/...`).

use std::collections::HashMap;

use crate::error::TopicFilterError;

/// Checks that `filter` is a valid MQTT topic filter.
pub fn validate_filter(filter: &str) -> Result<(), TopicFilterError> {
    if filter.is_empty() {
        return Err(TopicFilterError::Empty);
    }
    if filter.contains('\0') {
        return Err(TopicFilterError::Nul(filter.to_string()));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(TopicFilterError::MisplacedHash(filter.to_string()));
        }
        if level.contains('+') && *level != "+" {
            return Err(TopicFilterError::MisplacedPlus(filter.to_string()));
        }
    }
    Ok(())
}

/// Whether `filter` matches `topic`, by MQTT's rules; the reference the index is tested against.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
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

#[derive(Debug)]
struct Node<Id> {
    children: HashMap<String, Node<Id>>,
    plus: Option<Box<Node<Id>>>,
    /// Ids whose filter ends with `#` at this level.
    hash: Vec<Id>,
    /// Ids whose filter ends exactly here.
    here: Vec<Id>,
}

impl<Id> Default for Node<Id> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            plus: None,
            hash: Vec::new(),
            here: Vec::new(),
        }
    }
}

impl<Id> Node<Id> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_empty()
            && self.here.is_empty()
    }
}

/// An index from topic filters to ids (rule ids, names, indexes: anything `Clone + PartialEq`).
#[derive(Debug)]
pub struct RuleIndex<Id> {
    /// Filters without a wildcard, by their text.
    exact: HashMap<String, Vec<Id>>,
    /// Filters with a wildcard.
    root: Node<Id>,
    len: usize,
}

impl<Id> Default for RuleIndex<Id> {
    fn default() -> Self {
        RuleIndex {
            exact: HashMap::new(),
            root: Node::default(),
            len: 0,
        }
    }
}

/// Whether `filter` has a wildcard level.
fn has_wildcard(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

impl<Id: Clone + PartialEq> RuleIndex<Id> {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many (filter, id) entries the index holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the index holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `id` under `filter`. The same id may be added under several filters.
    pub fn insert(&mut self, filter: &str, id: Id) -> Result<(), TopicFilterError> {
        validate_filter(filter)?;
        if !has_wildcard(filter) {
            self.exact.entry(filter.to_owned()).or_default().push(id);
            self.len += 1;
            return Ok(());
        }
        let mut node = &mut self.root;
        for level in filter.split('/') {
            match level {
                "#" => {
                    node.hash.push(id);
                    self.len += 1;
                    return Ok(());
                }
                "+" => node = node.plus.get_or_insert_with(Box::default),
                exact => node = node.children.entry(exact.to_string()).or_default(),
            }
        }
        node.here.push(id);
        self.len += 1;
        Ok(())
    }

    /// Removes `id` from under `filter`; returns whether it was there.
    pub fn remove(&mut self, filter: &str, id: &Id) -> bool {
        let removed = if has_wildcard(filter) {
            let levels: Vec<&str> = filter.split('/').collect();
            Self::remove_in(&mut self.root, &levels, id)
        } else {
            let Some(ids) = self.exact.get_mut(filter) else {
                return false;
            };
            let removed = take(ids, id);
            if ids.is_empty() {
                self.exact.remove(filter);
            }
            removed
        };
        if removed {
            self.len -= 1;
        }
        removed
    }

    fn remove_in(node: &mut Node<Id>, levels: &[&str], id: &Id) -> bool {
        match levels {
            [] => take(&mut node.here, id),
            ["#", ..] => take(&mut node.hash, id),
            ["+", rest @ ..] => {
                let Some(child) = node.plus.as_deref_mut() else {
                    return false;
                };
                let removed = Self::remove_in(child, rest, id);
                if child.is_empty() {
                    node.plus = None;
                }
                removed
            }
            [exact, rest @ ..] => {
                let Some(child) = node.children.get_mut(*exact) else {
                    return false;
                };
                let removed = Self::remove_in(child, rest, id);
                if child.is_empty() {
                    node.children.remove(*exact);
                }
                removed
            }
        }
    }

    /// The ids of every filter matching `topic` (an id appears once per matching filter).
    pub fn matches(&self, topic: &str) -> Vec<Id> {
        let mut out = Vec::new();
        self.for_each_match(topic, |id| out.push(id.clone()));
        out
    }

    /// Calls `f` with the id of every filter matching `topic`, without allocating: the exact
    /// filters' first, then the wildcard filters'.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&Id)) {
        if let Some(ids) = self.exact.get(topic) {
            ids.iter().for_each(&mut f);
        }
        // MQTT: wildcards in the first level never match a topic that starts with `$`.
        let dollar = topic.starts_with('$');
        Self::walk(&self.root, topic.split('/'), !dollar, &mut f);
    }

    /// Walks the trie along the remaining `levels` (a cheap-to-clone iterator, so branching into the
    /// exact and the `+` child costs no allocation).
    fn walk(
        node: &Node<Id>,
        mut levels: std::str::Split<'_, char>,
        wildcards: bool,
        f: &mut impl FnMut(&Id),
    ) {
        if wildcards {
            // `#` matches this level and everything below, including nothing (`a/#` matches `a`).
            node.hash.iter().for_each(&mut *f);
        }
        let Some(level) = levels.next() else {
            node.here.iter().for_each(f);
            return;
        };
        if let Some(child) = node.children.get(level) {
            Self::walk(child, levels.clone(), true, f);
        }
        if wildcards {
            if let Some(plus) = &node.plus {
                Self::walk(plus, levels, true, f);
            }
        }
    }
}

/// Removes one `id` from `list`; whether it was there.
fn take<Id: PartialEq>(list: &mut Vec<Id>, id: &Id) -> bool {
    match list.iter().position(|x| x == id) {
        Some(i) => {
            list.remove(i);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (filter, topic, matches) per line, checked against both the index and the reference matcher.
    #[test]
    fn mqtt_matching() {
        let cases = [
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/+", "a", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("#", "$aws/things/x", false),
            ("+/things/x", "$aws/things/x", false),
            (
                "$aws/things/+/shadow/#",
                "$aws/things/t1/shadow/update",
                true,
            ),
            ("$aws/#", "$aws/x", true),
            ("+", "", true),
            ("a//b", "a//b", true),
            ("a/+/b", "a//b", true),
            ("/a", "/a", true),
            ("+/a", "/a", true),
            ("a/b/", "a/b", false),
            ("sensors/+/telemetry", "sensors/d1/telemetry", true),
        ];
        for (filter, topic, expected) in cases {
            assert_eq!(
                topic_matches(filter, topic),
                expected,
                "{filter} vs {topic}"
            );
            let mut index = RuleIndex::new();
            index.insert(filter, 1).expect("valid filter");
            assert_eq!(
                !index.matches(topic).is_empty(),
                expected,
                "index: {filter} vs {topic}"
            );
        }
    }

    #[test]
    fn invalid_filters() {
        for (filter, ok) in [
            ("", false),
            ("a/#/b", false),
            ("a#", false),
            ("a/b+", false),
            ("a/+/#", true),
            ("#", true),
        ] {
            assert_eq!(validate_filter(filter).is_ok(), ok, "{filter:?}");
        }
    }

    #[test]
    fn remove_prunes() {
        let mut index = RuleIndex::new();
        index.insert("a/+/c", 1).expect("valid");
        index.insert("a/#", 2).expect("valid");
        assert_eq!(index.matches("a/b/c"), vec![2, 1]);
        assert!(index.remove("a/+/c", &1));
        assert!(!index.remove("a/+/c", &1));
        assert_eq!(index.matches("a/b/c"), vec![2]);
        assert!(index.remove("a/#", &2));
        assert!(index.is_empty());
        assert!(index.root.is_empty());
        // Exact filters too, and each id under its own filter only.
        index.insert("a/b/c", 3).expect("valid");
        index.insert("a/b/c", 4).expect("valid");
        index.insert("a/+/c", 5).expect("valid");
        assert_eq!(index.matches("a/b/c"), vec![3, 4, 5]);
        assert!(!index.remove("a/+/c", &3));
        assert!(index.remove("a/b/c", &3));
        assert!(index.remove("a/b/c", &4));
        assert!(!index.remove("a/b/c", &4));
        assert!(index.exact.is_empty());
        assert_eq!(index.matches("a/b/c"), vec![5]);
    }
}
