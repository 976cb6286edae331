//! The three-way merge of shadow state, and the update that turns one state into another (pure).
//!
//! A shadow's state is `{"desired": {...}, "reported": {...}}`. Sync keeps, per shadow, the last
//! state both sides agreed on (the *base*). Given the base, the edge's state and the cloud's state,
//! [`merge_state`] decides every field, recursively through nested objects:
//!
//! 1. changed on neither side, or changed to the same value on both: that value;
//! 2. changed on one side only: that side's value (a deletion is a change, so a field deleted on
//!    one side and untouched on the other is deleted on both);
//! 3. changed on both sides to different values: if both are objects, merge them field by field
//!    with these same rules; otherwise the edge wins in `reported` (the device is the authority on
//!    what it reports) and the cloud wins in `desired` (the operator is the authority on what is
//!    wanted). A deletion on the winning side deletes.
//!
//! Arrays are values (replaced whole, as AWS's shadow does). [`diff`] gives the AWS update
//! fragment that turns one state into another (`null` deletes), so each side receives only what
//! it lacks.

use serde_json::{Map, Value};

use super::config::Direction;

/// Which side wins a field both sides changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Winner {
    /// The gateway's shadow.
    Edge,
    /// The cloud's shadow.
    Cloud,
}

/// The state sections and who wins a true conflict in each.
pub const SECTIONS: [(&str, Winner); 2] = [("desired", Winner::Cloud), ("reported", Winner::Edge)];

/// Merges one value (`None` = absent) against its base.
pub fn merge3(
    base: Option<&Value>,
    edge: Option<&Value>,
    cloud: Option<&Value>,
    winner: Winner,
) -> Option<Value> {
    if edge == cloud {
        return edge.cloned();
    }
    if edge == base {
        return cloud.cloned();
    }
    if cloud == base {
        return edge.cloned();
    }
    if let (Some(Value::Object(e)), Some(Value::Object(c))) = (edge, cloud) {
        let b = match base {
            Some(Value::Object(b)) => Some(b),
            _ => None,
        };
        let mut out = Map::new();
        let keys = e.keys().chain(c.keys().filter(|k| !e.contains_key(*k)));
        for k in keys {
            let merged = merge3(b.and_then(|b| b.get(k)), e.get(k), c.get(k), winner);
            if let Some(v) = merged {
                out.insert(k.clone(), v);
            }
        }
        return Some(Value::Object(out));
    }
    match winner {
        Winner::Edge => edge.cloned(),
        Winner::Cloud => cloud.cloned(),
    }
}

/// Merges whole states (`{"desired", "reported"}`) section by section.
pub fn merge_state(base: &Value, edge: &Value, cloud: &Value) -> Value {
    let mut out = Map::new();
    for (section, winner) in SECTIONS {
        if let Some(v) = merge3(
            base.get(section),
            edge.get(section),
            cloud.get(section),
            winner,
        ) {
            out.insert(section.to_owned(), v);
        }
    }
    Value::Object(out)
}

/// The state both sides should hold after a sync round in `direction`: the three-way merge for
/// `both`; one side's state, mirrored, for the one-way directions.
pub fn target(direction: Direction, base: &Value, edge: &Value, cloud: &Value) -> Value {
    match direction {
        Direction::Both => merge_state(base, edge, cloud),
        Direction::EdgeToCloud => edge.clone(),
        Direction::CloudToEdge => cloud.clone(),
    }
}

/// The update fragment that turns `from` into `to` under AWS's update semantics (objects merge
/// recursively, `null` deletes, anything else replaces); `None` when they are equal.
pub fn diff(from: Option<&Value>, to: Option<&Value>) -> Option<Value> {
    if from == to {
        return None;
    }
    match (from, to) {
        (_, None) => Some(Value::Null),
        (Some(Value::Object(f)), Some(Value::Object(t))) => {
            let mut patch = Map::new();
            for (k, v) in t {
                if let Some(d) = diff(f.get(k), Some(v)) {
                    patch.insert(k.clone(), d);
                }
            }
            for k in f.keys().filter(|k| !t.contains_key(*k)) {
                patch.insert(k.clone(), Value::Null);
            }
            Some(Value::Object(patch))
        }
        (_, Some(t)) => Some(t.clone()),
    }
}

/// The `state` of an update that turns state `from` into state `to`; `None` when nothing differs.
pub fn diff_state(from: &Value, to: &Value) -> Option<Value> {
    let mut patch = Map::new();
    for (section, _) in SECTIONS {
        if let Some(d) = diff(from.get(section), to.get(section)) {
            patch.insert(section.to_owned(), d);
        }
    }
    (!patch.is_empty()).then_some(Value::Object(patch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// Applies an update fragment as AWS's shadow does (for checking [`diff`]).
    fn apply(target: Option<&Value>, patch: &Value) -> Option<Value> {
        match patch {
            Value::Null => None,
            Value::Object(p) => {
                let mut out = match target {
                    Some(Value::Object(t)) => t.clone(),
                    _ => Map::new(),
                };
                for (k, v) in p {
                    match apply(out.get(k), v) {
                        Some(n) => out.insert(k.clone(), n),
                        None => out.remove(k),
                    };
                }
                Some(Value::Object(out))
            }
            other => Some(other.clone()),
        }
    }

    /// One case per line: base, edge, cloud, merged (all whole states).
    #[test]
    fn the_merge_rule_case_by_case() {
        let cases = [
            // Nothing changed.
            (
                json!({"reported": {"t": 1}}),
                json!({"reported": {"t": 1}}),
                json!({"reported": {"t": 1}}),
                json!({"reported": {"t": 1}}),
            ),
            // One side changed: it wins, whichever side.
            (
                json!({"reported": {"t": 1}}),
                json!({"reported": {"t": 2}}),
                json!({"reported": {"t": 1}}),
                json!({"reported": {"t": 2}}),
            ),
            (
                json!({"desired": {"on": false}}),
                json!({"desired": {"on": false}}),
                json!({"desired": {"on": true}}),
                json!({"desired": {"on": true}}),
            ),
            // Different fields changed on each side: both kept.
            (
                json!({"reported": {"a": 1, "b": 1}}),
                json!({"reported": {"a": 2, "b": 1}}),
                json!({"reported": {"a": 1, "b": 3}}),
                json!({"reported": {"a": 2, "b": 3}}),
            ),
            // Both changed one field: edge wins in reported, cloud in desired.
            (
                json!({"reported": {"t": 1}}),
                json!({"reported": {"t": 2}}),
                json!({"reported": {"t": 3}}),
                json!({"reported": {"t": 2}}),
            ),
            (
                json!({"desired": {"t": 1}}),
                json!({"desired": {"t": 2}}),
                json!({"desired": {"t": 3}}),
                json!({"desired": {"t": 3}}),
            ),
            // A delete on one side, no change on the other: deleted on both.
            (
                json!({"desired": {"a": 1, "b": 2}}),
                json!({"desired": {"b": 2}}),
                json!({"desired": {"a": 1, "b": 2}}),
                json!({"desired": {"b": 2}}),
            ),
            (
                json!({"reported": {"a": 1}}),
                json!({"reported": {"a": 1}}),
                json!({}),
                json!({}),
            ),
            // Delete on one side, change on the other: the section's winner decides.
            (
                json!({"desired": {"a": 1}}),
                json!({"desired": {"a": 5}}),
                json!({"desired": {}}),
                json!({"desired": {}}),
            ),
            (
                json!({"reported": {"a": 1}}),
                json!({"reported": {"a": 5}}),
                json!({"reported": {}}),
                json!({"reported": {"a": 5}}),
            ),
            // Nested objects merge field by field.
            (
                json!({"desired": {"l": {"r": 1, "g": 1}}}),
                json!({"desired": {"l": {"r": 2, "g": 1}}}),
                json!({"desired": {"l": {"r": 1, "g": 3}}}),
                json!({"desired": {"l": {"r": 2, "g": 3}}}),
            ),
            // No base yet (first sync): every difference is a conflict, settled by the winners.
            (
                json!({}),
                json!({"desired": {"a": 1}, "reported": {"x": 1}}),
                json!({"desired": {"a": 2}, "reported": {"x": 2}}),
                json!({"desired": {"a": 2}, "reported": {"x": 1}}),
            ),
            (
                json!({}),
                json!({"reported": {"x": 1}}),
                json!({"desired": {"a": 2}}),
                json!({"desired": {"a": 2}, "reported": {"x": 1}}),
            ),
            // Arrays are values.
            (
                json!({"reported": {"l": [1]}}),
                json!({"reported": {"l": [1, 2]}}),
                json!({"reported": {"l": [0]}}),
                json!({"reported": {"l": [1, 2]}}),
            ),
        ];
        for (i, (base, edge, cloud, want)) in cases.iter().enumerate() {
            assert_eq!(&merge_state(base, edge, cloud), want, "case {i}");
        }
    }

    #[test]
    fn one_way_directions_mirror_one_side() {
        let base = json!({"desired": {"a": 1}});
        let edge = json!({"desired": {"a": 2}, "reported": {"x": 1}});
        let cloud = json!({"desired": {"a": 3}});
        let cases = [
            (
                Direction::Both,
                json!({"desired": {"a": 3}, "reported": {"x": 1}}),
            ),
            (Direction::EdgeToCloud, edge.clone()),
            (Direction::CloudToEdge, cloud.clone()),
        ];
        for (direction, want) in cases {
            let t = target(direction, &base, &edge, &cloud);
            assert_eq!(t, want, "{direction:?}");
            // The side that is mirrored receives nothing.
            match direction {
                Direction::EdgeToCloud => assert_eq!(diff_state(&edge, &t), None),
                Direction::CloudToEdge => assert_eq!(diff_state(&cloud, &t), None),
                Direction::Both => {}
            }
        }
    }

    #[test]
    fn diff_produces_the_aws_update_fragment() {
        let cases = [
            (json!({"a": 1}), json!({"a": 1}), None),
            (json!({"a": 1}), json!({"a": 2}), Some(json!({"a": 2}))),
            (
                json!({"a": 1, "b": 1}),
                json!({"b": 1}),
                Some(json!({"a": null})),
            ),
            (
                json!({"o": {"x": 1, "y": 1}}),
                json!({"o": {"x": 1, "y": 2}}),
                Some(json!({"o": {"y": 2}})),
            ),
            (
                json!({"o": {"x": 1}}),
                json!({"o": 3}),
                Some(json!({"o": 3})),
            ),
        ];
        for (from, to, want) in cases {
            assert_eq!(diff(Some(&from), Some(&to)), want, "{from} -> {to}");
        }
        assert_eq!(
            diff_state(
                &json!({"desired": {"a": 1}}),
                &json!({"reported": {"b": 1}})
            ),
            Some(json!({"desired": null, "reported": {"b": 1}}))
        );
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            (0..4i64).prop_map(Value::from),
            Just(json!("s")),
            Just(json!([1, 2]))
        ]
    }

    /// Objects over a small key set (so sides collide often), never empty, never null inside.
    fn object() -> impl Strategy<Value = Value> {
        let value = leaf().prop_recursive(2, 12, 3, |inner| {
            prop::collection::btree_map(prop::sample::select(vec!["a", "b", "c"]), inner, 1..3)
                .prop_map(|m| {
                    Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                })
        });
        prop::collection::btree_map(prop::sample::select(vec!["a", "b", "c"]), value, 0..3)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
    }

    proptest! {
        #[test]
        fn merge_laws(b in object(), e in object(), c in object()) {
            for w in [Winner::Edge, Winner::Cloud] {
                // A side that did not change takes the other's state.
                prop_assert_eq!(merge3(Some(&b), Some(&b), Some(&c), w), Some(c.clone()));
                prop_assert_eq!(merge3(Some(&b), Some(&e), Some(&b), w), Some(e.clone()));
                // Agreement is kept.
                prop_assert_eq!(merge3(Some(&b), Some(&e), Some(&e), w), Some(e.clone()));
                // Merging is stable: merging the result again with itself as base changes nothing.
                let m = merge3(Some(&b), Some(&e), Some(&c), w);
                prop_assert_eq!(merge3(m.as_ref(), m.as_ref(), m.as_ref(), w), m.clone());
            }
        }

        #[test]
        fn applying_the_diff_reaches_the_target(from in object(), to in object()) {
            let got = match diff(Some(&from), Some(&to)) {
                None => Some(from.clone()),
                Some(p) => apply(Some(&from), &p),
            };
            prop_assert_eq!(got, Some(to));
        }
    }
}
