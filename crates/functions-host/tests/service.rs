//! The functions component in process (`grove-testkit`: a real store, a real broker bus and
//! wasmtime, no binary), on tokio's paused clock: the async path's retries wait their backoff in
//! virtual time, so these tests take no wall-clock time for it and cannot be late on a loaded
//! machine.

use grove_functions_host::config::FunctionsConfig;
use grove_functions_host::metrics::{FunctionMetrics, InvocationLabels};
use grove_functions_host::service::Functions;
use grove_testkit::{when, Harness, Peer};
use serde_json::Value;
use tokio::time::Duration;

/// A handler that always fails: it returns 7 (a `handler_error`) after writing why as its output.
const FAILS: &str = r#"(module
  (import "grove" "output" (func $output (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "sensor offline")
  (func (export "grove_abi_version") (result i32) (i32.const 1))
  (func (export "grove_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "grove_handle") (param i32 i32 i32 i32) (result i32)
    (drop (call $output (i32.const 16) (i32.const 14))) (i32.const 7)))"#;

/// The component on `h`, as `grove run` starts it with the built-in `[functions]` defaults.
async fn start(h: &Harness, metrics: &FunctionMetrics) -> Functions {
    let config = FunctionsConfig {
        max_memory_mb: 64,
        workers: 2,
        queue_bound: 1000,
        pool_size: 10,
    };
    Functions::start(
        &config,
        h.dir().to_owned(),
        h.store(),
        h.buses(),
        metrics.clone(),
        h.shutdown_signal(),
    )
    .await
    .expect("the functions component starts")
}

async fn next_json(peer: &mut Peer) -> (String, Value) {
    let m = peer.next().await;
    let doc = serde_json::from_slice(&m.payload).expect("a JSON message");
    (m.topic, doc)
}

/// Failed attempts of `function` so far.
fn failures(metrics: &FunctionMetrics, function: &str) -> u64 {
    metrics
        .invocations
        .get_or_create(&InvocationLabels {
            function: function.to_owned(),
            result: "handler_error",
        })
        .get()
}

fn count(metrics: &FunctionMetrics, family: &str, function: &str) -> u64 {
    let f = match family {
        "retries" => &metrics.retries,
        "dlq" => &metrics.dlq,
        _ => unreachable!("a family of the tests"),
    };
    f.get_or_create(&grove_functions_host::metrics::FunctionLabels {
        function: function.to_owned(),
    })
    .get()
}

/// ABI.md "Delivery": a failed attempt is retried twice, after 100 ms and 500 ms, then the event
/// and the last error go to the dead-letter topic.
#[tokio::test(start_paused = true)]
async fn a_failing_event_is_retried_after_its_backoff_then_dead_lettered_with_its_last_error() {
    let h = Harness::start().await;
    let metrics = FunctionMetrics::default();
    let functions = start(&h, &metrics).await;
    let wasm = wat::parse_str(FAILS).expect("WAT");
    functions
        .deploy(
            "name = \"flaky\"\ntriggers = [\"sensors/+/temp\"]",
            wasm,
            None,
        )
        .await
        .expect("deployed");
    let mut dlq = h.peer("test-dlq", &["$grove/functions/flaky/dlq"]).await;
    let mut device = h.peer("test-device", &[]).await;

    device.publish("sensors/s1/temp", "{\"t\": 21}").await;
    let first = when(|| failures(&metrics, "flaky") >= 1).await;
    let second = when(|| failures(&metrics, "flaky") >= 2).await;
    let third = when(|| failures(&metrics, "flaky") >= 3).await;
    let (topic, letter) = next_json(&mut dlq).await;

    assert_eq!(topic, "$grove/functions/flaky/dlq");
    assert_eq!(letter["function"], "flaky");
    assert_eq!(letter["version"], 1);
    assert_eq!(letter["attempts"], 3);
    assert_eq!(letter["error"]["kind"], "handler_error");
    assert_eq!(letter["error"]["message"], "sensor offline");
    assert_eq!(letter["event"]["topic"], "sensors/s1/temp");
    assert_eq!(letter["event"]["payload"], "{\"t\": 21}");
    assert_eq!(count(&metrics, "retries", "flaky"), 2);
    assert_eq!(count(&metrics, "dlq", "flaky"), 1);
    // Each retry came no sooner than its backoff after the failure before it (`first` is seen
    // at most 1 ms late). Virtual time: a lower bound is what it can show, never an upper one.
    assert!(
        second - first >= Duration::from_millis(99),
        "{:?}",
        second - first
    );
    assert!(
        third - second >= Duration::from_millis(499),
        "{:?}",
        third - second
    );
    h.stop().await;
}

/// An event for a name that is no deployed function is not dropped silently: it goes to that
/// name's dead-letter topic at once, with no attempt, counted under `(unknown)`.
#[tokio::test(start_paused = true)]
async fn an_event_for_no_deployed_function_is_dead_lettered_at_once_as_not_found() {
    let h = Harness::start().await;
    let metrics = FunctionMetrics::default();
    let _functions = start(&h, &metrics).await;
    let mut dlq = h.peer("test-dlq", &["$grove/functions/+/dlq"]).await;
    let mut rule = h.peer("test-rule", &[]).await;

    rule.publish("$grove/functions/ghost/event", "x").await;
    let (topic, letter) = next_json(&mut dlq).await;

    assert_eq!(topic, "$grove/functions/ghost/dlq");
    assert_eq!(letter["attempts"], 0);
    assert_eq!(letter["version"], Value::Null);
    assert_eq!(letter["error"]["kind"], "not_found");
    assert_eq!(count(&metrics, "dlq", "(unknown)"), 1);
    assert_eq!(count(&metrics, "dlq", "ghost"), 0);
    h.stop().await;
}

/// Returns its payload as its output.
const ECHO: &str = r#"(module
  (import "grove" "output" (func $output (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "grove_abi_version") (result i32) (i32.const 1))
  (func (export "grove_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "grove_handle") (param i32 i32 i32 i32) (result i32)
    (drop (call $output (local.get 2) (local.get 3))) (i32.const 0)))"#;

/// ABI.md "Sync invocation": an MQTT 3.1.1 request is a JSON envelope; the answer goes to its
/// `replyTo` with its `correlationId`, and a name that is no function is answered too.
#[tokio::test(start_paused = true)]
async fn a_sync_request_is_answered_on_its_reply_topic_with_its_correlation_id() {
    let h = Harness::start().await;
    let metrics = FunctionMetrics::default();
    let functions = start(&h, &metrics).await;
    let wasm = wat::parse_str(ECHO).expect("WAT");
    functions
        .deploy("name = \"echo\"", wasm, None)
        .await
        .expect("deployed");
    let mut answers = h.peer("test-answers", &["me/answers"]).await;
    let mut caller = h.peer("test-caller", &[]).await;

    let request = r#"{"replyTo": "me/answers", "correlationId": 7, "payload": {"t": 21}}"#;
    caller
        .publish("$grove/functions/echo/invoke", request)
        .await;
    let (topic, answer) = next_json(&mut answers).await;
    assert_eq!(topic, "me/answers");
    assert_eq!(answer["status"], "ok");
    assert_eq!(answer["function"], "echo");
    assert_eq!(answer["version"], 1);
    assert_eq!(answer["result"], serde_json::json!({"t": 21}));
    assert_eq!(answer["correlationId"], 7);

    let request = r#"{"replyTo": "me/answers", "correlationId": "b"}"#;
    caller
        .publish("$grove/functions/nobody/invoke", request)
        .await;
    let (_, answer) = next_json(&mut answers).await;
    assert_eq!(answer["status"], "error");
    assert_eq!(answer["error"]["kind"], "not_found");
    assert_eq!(answer["correlationId"], "b");
    h.stop().await;
}
