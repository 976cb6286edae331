//! Property test: the topic-filter index returns exactly the filters that the reference matcher
//! (`topic_matches`, a direct reading of MQTT's rules) accepts, for random filters and topics over a
//! small alphabet that makes collisions, wildcards, empty levels and `$` topics frequent.

use grove_rules::{topic_matches, RuleIndex};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

fn filter() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(vec!["a", "b", "$s", "", "+"]), 1..4),
        any::<bool>(),
    )
        .prop_map(|(levels, hash)| {
            let mut f = levels.join("/");
            if hash {
                f.push_str("/#");
            }
            if f == "/#" {
                f = "#".to_string();
            }
            f
        })
        .prop_filter("MQTT filters are not empty", |f| !f.is_empty())
}

fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "$s", ""]), 1..5)
        .prop_map(|levels| levels.join("/"))
}

proptest! {
    // A fixed seed keeps the suite deterministic; no regression files are written into the source tree.
    #![proptest_config(ProptestConfig {
        cases: 1024,
        rng_seed: RngSeed::Fixed(0x6772_6f76_6500_0001),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn index_agrees_with_the_reference_matcher(
        filters in prop::collection::vec(filter(), 0..40),
        topics in prop::collection::vec(topic(), 1..10),
        removed in prop::collection::vec(any::<prop::sample::Index>(), 0..5),
    ) {
        let mut index = RuleIndex::new();
        let mut live: Vec<(String, usize)> = Vec::new();
        for (id, f) in filters.iter().enumerate() {
            index.insert(f, id).expect("generated filters are valid");
            live.push((f.clone(), id));
        }
        for r in removed {
            if live.is_empty() {
                break;
            }
            let (f, id) = live.remove(r.index(live.len()));
            prop_assert!(index.remove(&f, &id));
        }
        prop_assert_eq!(index.len(), live.len());
        for t in &topics {
            let mut got = index.matches(t);
            got.sort_unstable();
            let mut want: Vec<usize> =
                live.iter().filter(|(f, _)| topic_matches(f, t)).map(|(_, id)| *id).collect();
            want.sort_unstable();
            prop_assert_eq!(got, want, "topic {:?}", t);
        }
    }
}
