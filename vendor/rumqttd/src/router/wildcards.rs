//! Grove patch 6 (see `GROVE-PATCHES.md`): the router's wildcard filters as a trie of topic levels,
//! so that a new topic finds its wildcard filters by walking its own levels instead of matching
//! every filter in turn. It gives exactly what `protocol::matches(topic, filter)` says for each
//! filter (tested against it in `logs.rs`); filters are only ever added, as in the router.

use std::collections::HashMap;

use crate::router::FilterIdx;

#[derive(Debug, Default)]
pub(crate) struct Wildcards {
    root: Node,
}

#[derive(Debug, Default)]
struct Node {
    /// The next level, spelled out.
    children: HashMap<String, Node>,
    /// The next level is `+`.
    plus: Option<Box<Node>>,
    /// Filters that end at this node.
    here: Vec<FilterIdx>,
    /// Filters whose next level is `#`: they match whatever follows, nothing included.
    hash: Vec<FilterIdx>,
}

impl Wildcards {
    pub(crate) fn insert(&mut self, filter: &str, idx: FilterIdx) {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = match level {
                // Whatever comes after a `#` is never looked at, as in `matches`.
                "#" => return node.hash.push(idx),
                "+" => node.plus.get_or_insert_with(Box::default),
                _ => node.children.entry(level.to_owned()).or_default(),
            };
        }
        node.here.push(idx);
    }

    /// Appends the filters that match `topic` to `out`. Like `matches`, a topic starting with `$`
    /// matches nothing, and a topic level `#` ends the walk.
    pub(crate) fn matches(&self, topic: &str, out: &mut Vec<FilterIdx>) {
        if topic.starts_with('$') {
            return;
        }
        let levels: Vec<&str> = topic.split('/').collect();
        self.root.walk(&levels, out);
    }
}

impl Node {
    fn walk(&self, levels: &[&str], out: &mut Vec<FilterIdx>) {
        out.extend_from_slice(&self.hash);
        match levels.split_first() {
            None => out.extend_from_slice(&self.here),
            Some((&"#", _)) => {}
            Some((level, rest)) => {
                if let Some(child) = self.children.get(*level) {
                    child.walk(rest, out);
                }
                if let Some(plus) = &self.plus {
                    plus.walk(rest, out);
                }
            }
        }
    }
}
