//! Property tests of the parser and printer (crate-internal, because the syntax tree is).
//!
//! Law 1: printing is a fixpoint: `print(parse(print(parse(s)))) == print(parse(s))` for generated
//! expressions `s`. Law 2: the printed form means the same thing: it evaluates to the same output as
//! the original text on a fixed message. Together they check that the printer's parentheses and quoting
//! preserve the tree the parser built.

use proptest::prelude::*;
use proptest::test_runner::RngSeed;

use crate::parser::parse_expr;
use crate::{Context, Message, Rule};

/// Generated expression text, covering every syntactic form.
fn expr_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        (0i64..100_000).prop_map(|i| i.to_string()),
        prop::sample::select(vec!["0.5", "2.25", "1e-3", "3.0", "1E2"]).prop_map(str::to_string),
        "[a-z' ]{0,4}".prop_map(|s| format!("'{}'", s.replace('\'', "''"))),
        prop::sample::select(vec![
            "temp",
            "s",
            "arr",
            "n",
            "obj",
            "missing",
            "`select`",
            "`a b`",
            "NULL",
            "true",
            "FALSE",
            "topic(2)",
            "timestamp()",
            "*",
        ])
        .prop_map(|s| if s == "*" {
            "encode(*, 'base64')".to_string()
        } else {
            s.to_string()
        }),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            (
                inner.clone(),
                prop::sample::select(vec![
                    "+", "-", "*", "/", "%", "=", "<>", "!=", "<", "<=", ">", ">=", "AND", "OR",
                ]),
                inner.clone()
            )
                .prop_map(|(l, op, r)| format!("{l} {op} {r}")),
            inner.clone().prop_map(|e| format!("- {e}")),
            inner.clone().prop_map(|e| format!("(NOT {e})")),
            inner.clone().prop_map(|e| format!("({e})")),
            inner.clone().prop_map(|e| format!("({e}).k")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a})[{b}]")),
            (
                prop::sample::select(vec!["upper", "abs", "round", "length", "isUndefined"]),
                inner.clone()
            )
                .prop_map(|(f, a)| format!("{f}({a})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("concat({a}, {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("get({a}, {b})")),
            (
                inner.clone(),
                prop::sample::select(vec!["Int", "Decimal", "String", "Boolean"])
            )
                .prop_map(|(a, t)| format!("cast({a} AS {t})")),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(v, w, t)| format!("CASE {v} WHEN {w} THEN {t} ELSE 0 END")),
            (inner.clone(), inner.clone()).prop_map(|(c, t)| format!("CASE WHEN {c} THEN {t} END")),
            prop::collection::vec(inner.clone(), 0..3).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec(inner, 0..3).prop_map(|v| {
                let pairs: Vec<String> = v
                    .iter()
                    .enumerate()
                    .map(|(i, e)| format!("'k{i}': {e}"))
                    .collect();
                format!("{{{}}}", pairs.join(", "))
            }),
        ]
    })
}

fn evaluate(expr: &str) -> Option<crate::Output> {
    let rule =
        Rule::compile(&format!("SELECT VALUE {expr} FROM 'a/b'")).expect("generated rule compiles");
    let msg = Message::new(
        "a/b",
        "c",
        br#"{"temp": 21.5, "s": "x", "arr": [1, "2", {"k": 3}], "n": null, "obj": {"k": [1]}, "select": 1, "a b": "sp", "k": "top"}"#
            .to_vec(),
    );
    let uuids = || "u".to_string();
    rule.evaluate(&msg, &Context::new(1_000, &uuids))
        .expect("not windowed")
}

proptest! {
    // A fixed seed keeps the suite deterministic; no regression files are written into the source tree.
    #![proptest_config(ProptestConfig {
        cases: 512,
        rng_seed: RngSeed::Fixed(0x6772_6f76_6500_0001),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn printing_is_a_fixpoint_and_preserves_meaning(src in expr_text()) {
        let first = parse_expr(&src).expect("generated text parses");
        let printed = first.to_string();
        let second = parse_expr(&printed).expect("printed text parses");
        prop_assert_eq!(second.to_string(), printed.clone());
        prop_assert_eq!(evaluate(&src), evaluate(&printed));
    }
}
