//! Windowed aggregation, driven by a virtual clock through the public API.
//!
//! Each scenario is one SQL statement and a list of steps, one per line: at time `now` (ms) either a
//! message arrives (`topic`, `payload`) or the host polls, and the rows the window emits at that step
//! are compared with the expected JSON array. Everything goes through one helper, [`check_window`].

use grove_rules::{Context, EvalError, Message, Output, Rule};
use serde_json::{json, Value};

/// A step: at `now`, `Some((topic, payload))` is a message, `None` a poll; then the rows expected.
type Step<'a> = (i64, Option<(&'a str, &'a str)>, Value);

fn check_window(sql: &str, steps: &[Step<'_>]) {
    let rule = Rule::compile(sql).unwrap_or_else(|e| panic!("{sql}\n{e}"));
    let mut window = rule.window().expect("windowed rule");
    let uuids = || "u".to_string();
    for (i, (now, message, expected)) in steps.iter().enumerate() {
        let ctx = Context::new(*now, &uuids);
        let rows = match message {
            Some((topic, payload)) => window.on_message(
                &Message::new(*topic, "c", payload.as_bytes().to_vec()),
                &ctx,
            ),
            None => window.poll(&ctx),
        };
        let rows: Vec<Value> = rows
            .into_iter()
            .map(|o| match o {
                Output::Json(v) => v,
                Output::Binary(b) => panic!("binary row {b:?}"),
            })
            .collect();
        assert_eq!(
            Value::Array(rows),
            *expected,
            "\n  sql: {sql}\n  step {i} at {now}"
        );
    }
}

#[test]
fn tumbling_window_per_device_as_in_the_issue() {
    check_window(
        "SELECT avg(temp) AS t, max(temp) AS tmax, count(*) AS n, topic(2) AS device \
         FROM 'sensors/+/telemetry' GROUP BY TUMBLINGWINDOW(ss, 60), topic(2)",
        &[
            (
                0,
                Some(("sensors/d1/telemetry", r#"{"temp": 20}"#)),
                json!([]),
            ),
            (
                10_000,
                Some(("sensors/d2/telemetry", r#"{"temp": 30}"#)),
                json!([]),
            ),
            (
                20_000,
                Some(("sensors/d1/telemetry", r#"{"temp": 22}"#)),
                json!([]),
            ),
            (
                59_999,
                Some(("sensors/d1/telemetry", r#"{"temp": 24}"#)),
                json!([]),
            ),
            (59_999, None, json!([])),
            (
                60_000,
                None,
                json!([
                    {"t": 22.0, "tmax": 24, "n": 3, "device": "d1"},
                    {"t": 30.0, "tmax": 30, "n": 1, "device": "d2"}
                ]),
            ),
            (60_001, None, json!([])),
            (
                119_000,
                Some(("sensors/d2/telemetry", r#"{"temp": 10.5}"#)),
                json!([]),
            ),
            (
                500_000,
                None,
                json!([{"t": 10.5, "tmax": 10.5, "n": 1, "device": "d2"}]),
            ),
        ],
    );
}

#[test]
fn a_message_at_the_end_closes_the_window_and_opens_the_next() {
    check_window(
        "SELECT sum(v) AS s, window_start() AS ws, window_end() AS we FROM 'a' GROUP BY TUMBLINGWINDOW(ms, 100)",
        &[
            (50, Some(("a", r#"{"v": 1}"#)), json!([])),
            (100, Some(("a", r#"{"v": 2}"#)), json!([{"s": 1, "ws": 0, "we": 100}])),
            (150, Some(("a", r#"{"v": 3}"#)), json!([])),
            (450, Some(("a", r#"{"v": 4}"#)), json!([{"s": 5, "ws": 100, "we": 200}])),
            (500, None, json!([{"s": 4, "ws": 400, "we": 500}])),
        ],
    );
}

#[test]
fn hopping_window_counts_a_message_in_every_window_covering_it() {
    check_window(
        "SELECT sum(v) AS s, count(*) AS n, window_start() AS ws FROM 'a' GROUP BY HOPPINGWINDOW(ss, 10, 5)",
        &[
            (1_000, Some(("a", r#"{"v": 1}"#)), json!([])),
            (5_000, None, json!([{"s": 1, "n": 1, "ws": -5000}])),
            (6_000, Some(("a", r#"{"v": 2}"#)), json!([])),
            (10_000, None, json!([{"s": 3, "n": 2, "ws": 0}])),
            (11_000, Some(("a", r#"{"v": 3}"#)), json!([])),
            (15_000, None, json!([{"s": 5, "n": 2, "ws": 5000}])),
            (20_000, None, json!([{"s": 3, "n": 1, "ws": 10000}])),
            (100_000, None, json!([])),
        ],
    );
}

#[test]
fn count_window_closes_on_the_nth_message() {
    check_window(
        "SELECT sum(v) AS s, count(*) AS n, window_start() AS ws, window_end() AS we FROM 'a' GROUP BY COUNTWINDOW(3)",
        &[
            (1, Some(("a", r#"{"v": 1}"#)), json!([])),
            (2, Some(("a", r#"{"v": 2}"#)), json!([])),
            (1_000_000, None, json!([])),
            (1_000_001, Some(("a", r#"{"v": 3}"#)), json!([{"s": 6, "n": 3, "ws": 1, "we": 1000001}])),
            (1_000_002, Some(("a", r#"{"v": 4}"#)), json!([])),
            (1_000_003, Some(("a", r#"{"v": 5}"#)), json!([])),
            (1_000_004, Some(("a", r#"{"v": 6}"#)), json!([{"s": 15, "n": 3, "ws": 1000002, "we": 1000004}])),
        ],
    );
}

#[test]
fn count_window_with_groups_counts_over_all_groups() {
    check_window(
        "SELECT topic(1) AS k, count(*) AS n FROM '+' GROUP BY COUNTWINDOW(3), topic(1)",
        &[
            (1, Some(("x", "{}")), json!([])),
            (2, Some(("y", "{}")), json!([])),
            (
                3,
                Some(("x", "{}")),
                json!([{"k": "x", "n": 2}, {"k": "y", "n": 1}]),
            ),
        ],
    );
}

#[test]
fn where_filters_before_the_window_and_having_after() {
    check_window(
        "SELECT topic(2) AS d, count(*) AS n FROM 's/+' WHERE temp > 0 \
         GROUP BY TUMBLINGWINDOW(ss, 1), topic(2) HAVING count(*) >= 2",
        &[
            (0, Some(("s/a", r#"{"temp": 1}"#)), json!([])),
            (1, Some(("s/a", r#"{"temp": 2}"#)), json!([])),
            (2, Some(("s/b", r#"{"temp": 3}"#)), json!([])),
            (3, Some(("s/b", r#"{"temp": -3}"#)), json!([])),
            (4, Some(("s/b", r#"{"nothing": 1}"#)), json!([])),
            (1_000, None, json!([{"d": "a", "n": 2}])),
        ],
    );
}

#[test]
fn aggregates_ignore_undefined_and_non_numbers() {
    check_window(
        "SELECT sum(v) AS s, avg(v) AS a, min(v) AS lo, max(v) AS hi, count(v) AS cv, count(*) AS n \
         FROM 'a' GROUP BY COUNTWINDOW(6)",
        &[
            (0, Some(("a", r#"{"v": 4}"#)), json!([])),
            (0, Some(("a", r#"{"v": "2"}"#)), json!([])),
            (0, Some(("a", r#"{"v": "x"}"#)), json!([])),
            (0, Some(("a", r#"{"v": null}"#)), json!([])),
            (0, Some(("a", r#"{}"#)), json!([])),
            (0, Some(("a", r#"{"v": -1.5}"#)), json!([{"s": 4.5, "a": 1.5, "lo": -1.5, "hi": 4, "cv": 4, "n": 6}])),
        ],
    );
}

#[test]
fn integer_sums_stay_integers_and_empty_aggregates_are_left_out() {
    check_window(
        "SELECT sum(v) AS s, avg(v) AS a, min(v) AS lo, count(v) AS c FROM 'a' GROUP BY COUNTWINDOW(2)",
        &[
            (0, Some(("a", r#"{"v": 2}"#)), json!([])),
            (0, Some(("a", r#"{"v": 3}"#)), json!([{"s": 5, "a": 2.5, "lo": 2, "c": 2}])),
            (0, Some(("a", r#"{}"#)), json!([])),
            (0, Some(("a", r#"{"w": 1}"#)), json!([{"c": 0}])),
        ],
    );
}

#[test]
fn non_aggregated_items_come_from_the_last_message_of_the_group() {
    check_window(
        "SELECT status, max(v) AS m, {'n': count(*), 'st': status} AS o FROM 'a' GROUP BY COUNTWINDOW(2)",
        &[
            (0, Some(("a", r#"{"v": 1, "status": "ok"}"#)), json!([])),
            (0, Some(("a", r#"{"v": 0, "status": "warn"}"#)), json!([{"status": "warn", "m": 1, "o": {"n": 2, "st": "warn"}}])),
        ],
    );
}

#[test]
fn set_variables_work_in_aggregates_and_rows() {
    check_window(
        "SET @t = temp * 2 SELECT max(@t) AS m, @t AS last FROM 'a' GROUP BY COUNTWINDOW(2)",
        &[
            (0, Some(("a", r#"{"temp": 3}"#)), json!([])),
            (
                0,
                Some(("a", r#"{"temp": 1}"#)),
                json!([{"m": 6, "last": 2}]),
            ),
        ],
    );
}

#[test]
fn time_never_runs_backwards() {
    check_window(
        "SELECT count(*) AS n FROM 'a' GROUP BY TUMBLINGWINDOW(ms, 10)",
        &[
            (25, Some(("a", "{}")), json!([])),
            // An earlier clock reading counts as the latest one seen (25), not as time 5.
            (5, Some(("a", "{}")), json!([])),
            (30, None, json!([{"n": 2}])),
        ],
    );
}

#[test]
fn select_value_rows() {
    check_window(
        "SELECT VALUE max(v) FROM 'a' GROUP BY COUNTWINDOW(2)",
        &[
            (0, Some(("a", r#"{"v": 1}"#)), json!([])),
            (0, Some(("a", r#"{"v": 7}"#)), json!([7])),
            (0, Some(("a", r#"{}"#)), json!([])),
            (0, Some(("a", r#"{}"#)), json!([])),
        ],
    );
}

#[test]
fn deadlines_and_misuse() {
    let rule = Rule::compile("SELECT count(*) AS n FROM 'a' GROUP BY HOPPINGWINDOW(ms, 100, 50)")
        .expect("compiles");
    let uuids = || String::new();
    let mut window = rule.window().expect("windowed");
    assert_eq!(window.next_deadline(), None);
    window.on_message(
        &Message::new("a", "c", b"{}".to_vec()),
        &Context::new(120, &uuids),
    );
    // The message at 120 is in the windows starting at 50 and 100; the first closes at 150.
    assert_eq!(window.next_deadline(), Some(150));
    assert_eq!(
        rule.evaluate(
            &Message::new("a", "c", b"{}".to_vec()),
            &Context::new(0, &uuids)
        ),
        Err(EvalError::Windowed)
    );
    let counted =
        Rule::compile("SELECT count(*) AS n FROM 'a' GROUP BY COUNTWINDOW(2)").expect("compiles");
    assert_eq!(counted.window().expect("windowed").next_deadline(), None);
}

/// A step of [`check_hops`]: at `now`, a message on `topic` with its hop count (or a poll), then
/// the rows expected as `(row, hops)`.
type HopStep<'a> = (i64, Option<(&'a str, u32)>, Vec<(Value, u32)>);

/// Feeds messages with hop counts and checks that each row carries the largest hop count of the
/// messages of its group and window.
fn check_hops(sql: &str, steps: &[HopStep<'_>]) {
    let rule = Rule::compile(sql).unwrap_or_else(|e| panic!("{sql}\n{e}"));
    let mut window = rule.window().expect("windowed rule");
    let uuids = || "u".to_string();
    for (i, (now, message, expected)) in steps.iter().enumerate() {
        let ctx = Context::new(*now, &uuids);
        let rows = match message {
            Some((topic, hops)) => {
                window.on_message_with_hops(&Message::new(*topic, "c", b"{}".to_vec()), *hops, &ctx)
            }
            None => window.poll_with_hops(&ctx),
        };
        let rows: Vec<(Value, u32)> = rows
            .into_iter()
            .map(|r| match r.output {
                Output::Json(v) => (v, r.hops),
                Output::Binary(b) => panic!("binary row {b:?}"),
            })
            .collect();
        assert_eq!(rows, *expected, "\n  sql: {sql}\n  step {i} at {now}");
    }
}

#[test]
fn rows_carry_the_largest_hop_count_of_their_messages() {
    // Per group: d1's row saw hops 3 and 5, d2's only 1.
    check_hops(
        "SELECT count(*) AS n, topic(2) AS d FROM 's/+' GROUP BY TUMBLINGWINDOW(ms, 100), topic(2)",
        &[
            (0, Some(("s/d1", 3)), vec![]),
            (10, Some(("s/d2", 1)), vec![]),
            (20, Some(("s/d1", 5)), vec![]),
            (30, Some(("s/d1", 2)), vec![]),
            (
                100,
                None,
                vec![
                    (json!({"n": 3, "d": "d1"}), 5),
                    (json!({"n": 1, "d": "d2"}), 1),
                ],
            ),
            // A new window starts from its own messages, not from the last window's.
            (110, Some(("s/d1", 0)), vec![]),
            (200, None, vec![(json!({"n": 1, "d": "d1"}), 0)]),
        ],
    );
    // A hopping window: the message at 60 (hops 4) is in the windows starting at 0 and 50.
    check_hops(
        "SELECT count(*) AS n FROM 'a' GROUP BY HOPPINGWINDOW(ms, 100, 50)",
        &[
            (10, Some(("a", 1)), vec![]),
            // The window starting at -50 (the message at 10 only) closes at 50.
            (60, Some(("a", 4)), vec![(json!({"n": 1}), 1)]),
            (100, None, vec![(json!({"n": 2}), 4)]),
            (150, None, vec![(json!({"n": 1}), 4)]),
        ],
    );
    // A count window closes on the message that fills it, which counts too.
    check_hops(
        "SELECT count(*) AS n FROM 'a' GROUP BY COUNTWINDOW(2)",
        &[
            (0, Some(("a", 7)), vec![]),
            (0, Some(("a", 2)), vec![(json!({"n": 2}), 7)]),
            (0, Some(("a", 1)), vec![]),
            (0, Some(("a", 1)), vec![(json!({"n": 2}), 1)]),
        ],
    );
}
