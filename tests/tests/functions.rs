//! End-to-end tests of local functions: the real `grove` binary, `grove fn` over the ops
//! endpoint, and real MQTT clients (3.1.1 and 5) for sync invocation, triggers and the DLQ.
//!
//! Guests are written in WAT (converted by the `wat` crate) against ABI v1
//! (`functions/ABI.md`), so each test shows exactly what its function does.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use grove_tests::functions::{guest, guest_version, path, Fixture, ECHO};
use grove_tests::{mosquitto_pub, Client, Gateway};
use rumqttc::QoS;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

/// Fails with the payload as the error message.
const FAIL: &str = "(drop (call $output (local.get $pp) (local.get $pl))) (i32.const 1)";
/// Loops forever.
const SPIN: &str = "(loop $l (br $l)) (i32.const 0)";
/// Traps (what a Rust panic compiles to).
const TRAP: &str = "unreachable";
/// Grows memory until refused, then traps.
const BOMB: &str =
    "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) unreachable";
/// Publishes the payload to the topic at 96 (length given by `forward`), answers "ok", "denied"
/// or "error".
fn forward(topic: &str) -> String {
    format!(
        "(local.set $rc (call $publish (i32.const 96) (i32.const {len}) (local.get $pp) (local.get $pl) (i32.const 1)))
         (if (i32.eqz (local.get $rc)) (then (drop (call $output (i32.const 16) (i32.const 2))) (return (i32.const 0))))
         (if (i32.eq (local.get $rc) (i32.const -1)) (then (drop (call $output (i32.const 32) (i32.const 6))) (return (i32.const 0))))
         (drop (call $output (i32.const 48) (i32.const 5)))
         (i32.const 0)",
        len = topic.len()
    )
}
/// Counts its invocations in a global (survives only in a reused instance), answers the count as
/// a digit.
const COUNT: &str = "(global.set $count (i32.add (global.get $count) (i32.const 1)))
    (i32.store8 (i32.const 80) (i32.add (global.get $count) (i32.const 48)))
    (drop (call $output (i32.const 80) (i32.const 1))) (i32.const 0)";
/// Counts its invocations in kv key "n", answers the count as a character ('1', '2', ...).
const KV_COUNT: &str = "(i32.store8 (i32.const 80) (i32.const 48))
    (if (i32.eq (call $kv_get (i32.const 64) (i32.const 1)) (i32.const 1))
      (then (drop (call $result (i32.const 80) (i32.const 1)))))
    (i32.store8 (i32.const 80) (i32.add (i32.load8_u (i32.const 80)) (i32.const 1)))
    (local.set $rc (call $kv_put (i32.const 64) (i32.const 1) (i32.const 80) (i32.const 1)))
    (if (i32.lt_s (local.get $rc) (i32.const 0)) (then (drop (call $output (i32.const 32) (i32.const 6))) (return (i32.const 1))))
    (drop (call $output (i32.const 80) (i32.const 1))) (i32.const 0)";

/// An MQTT 3.1.1 client invoking functions synchronously through the `replyTo` envelope.
struct Invoker {
    client: Client,
    reply_to: String,
    next: u64,
}

impl Invoker {
    async fn connect(g: &Gateway, id: &str) -> Invoker {
        let mut client = Client::connect(id, g.mqtt_port).await;
        let reply_to = format!("replies/{id}");
        client.subscribe(&reply_to, QoS::AtLeastOnce).await;
        Invoker {
            client,
            reply_to,
            next: 0,
        }
    }

    /// Sends a request to `target` (`name` or `name:qualifier`); returns its correlation id.
    async fn send(&mut self, target: &str, payload: Value) -> u64 {
        self.next += 1;
        let envelope =
            json!({"replyTo": self.reply_to, "correlationId": self.next, "payload": payload});
        self.client
            .publish(
                &format!("$grove/functions/{target}/invoke"),
                QoS::AtLeastOnce,
                false,
                envelope.to_string(),
            )
            .await;
        self.next
    }

    /// The next answer.
    async fn answer(&mut self) -> Value {
        let p = self
            .client
            .recv(WAIT)
            .await
            .expect("no answer to an invocation");
        serde_json::from_slice(&p.payload).expect("JSON answer")
    }

    async fn call(&mut self, target: &str, payload: Value) -> Value {
        let id = self.send(target, payload).await;
        let answer = self.answer().await;
        assert_eq!(answer["correlationId"], id, "{answer}");
        answer
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_list_invoke_by_cli_and_over_mqtt_3_and_5() {
    let f = Fixture::start("");
    f.deployed("echo", &guest(ECHO, ""), "");
    let (code, out) = f.cli(&["list"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("echo") && l.contains(" 1 ")),
        "{out}"
    );

    let (code, out) = f.cli(&["invoke", "echo", "--payload", "{\"t\":21}"]);
    assert_eq!((code, out.trim()), (0, "{\"t\":21}"));

    // MQTT 3.1.1: the replyTo envelope.
    let mut inv = Invoker::connect(&f.g, "inv311").await;
    let a = inv.call("echo", json!({"hello": "world"})).await;
    assert_eq!(a["status"], "ok", "{a}");
    assert_eq!(a["result"], json!({"hello": "world"}));
    assert_eq!(a["version"], 1);
    // Errors are answered, not silent.
    let a = inv.call("nobody", json!({})).await;
    assert_eq!(a["error"]["kind"], "not_found", "{a}");
    let a = inv.call("echo:7", json!({})).await;
    assert_eq!(a["error"]["kind"], "routing", "{a}");

    // A redeploy is version 2; version 1 stays invocable.
    let (code, out) = f.deploy("echo", &guest(FAIL, ""), "", None);
    assert!(code == 0 && out.contains("version 2"), "{out}");
    let a = inv.call("echo", json!("boom")).await;
    assert_eq!(
        (a["status"].as_str(), a["version"].as_u64()),
        (Some("error"), Some(2)),
        "{a}"
    );
    assert_eq!(a["error"]["kind"], "handler_error");
    assert_eq!(a["error"]["message"], "boom");
    let a = inv.call("echo:1", json!("fine")).await;
    assert_eq!(
        (a["status"].as_str(), a["result"].as_str()),
        (Some("ok"), Some("fine")),
        "{a}"
    );
    let (code, out) = f.cli(&["invoke", "echo", "--payload", "x"]);
    assert!(code == 1 && out.contains("handler_error"), "{out}");

    // MQTT 5: response topic and correlation data.
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let mut o = MqttOptions::new("inv5", "127.0.0.1", f.g.mqtt_port);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(o, 100);
    client
        .subscribe("answers/5", Q5::AtLeastOnce)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let answer = loop {
        let ev = tokio::time::timeout_at(deadline, events.poll())
            .await
            .expect("v5 client timed out")
            .expect("v5 connection");
        match ev {
            Event::Incoming(P5::SubAck(_)) => {
                let props = PublishProperties {
                    response_topic: Some("answers/5".into()),
                    correlation_data: Some(bytes::Bytes::from_static(b"corr-42")),
                    ..Default::default()
                };
                client
                    .publish_with_properties(
                        "$grove/functions/echo:1/invoke",
                        Q5::AtLeastOnce,
                        false,
                        "raw text",
                        props,
                    )
                    .await
                    .unwrap();
            }
            Event::Incoming(P5::Publish(p)) => break p,
            _ => {}
        }
    };
    let corr = answer
        .properties
        .as_ref()
        .and_then(|p| p.correlation_data.clone());
    assert_eq!(corr.as_deref(), Some(&b"corr-42"[..]));
    let doc: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(
        (doc["status"].as_str(), doc["result"].as_str()),
        (Some("ok"), Some("raw text")),
        "{doc}"
    );

    let (code, out) = f.cli(&["remove", "echo"]);
    assert_eq!(code, 0, "{out}");
    let a = inv.call("echo", json!({})).await;
    assert_eq!(a["error"]["kind"], "not_found", "{a}");
    let (code, out) = f.cli(&["invoke", "echo"]);
    assert!(code == 1 && out.contains("no function named"), "{out}");
}

/// One case per line: the module, the manifest, and what the refusal must say.
#[test]
fn malformed_modules_wrong_abis_and_bad_manifests_are_refused_at_deploy() {
    let f = Fixture::start("");
    let missing_alloc = wat::parse_str(
        r#"(module (memory (export "memory") 1)
             (func (export "grove_abi_version") (result i32) (i32.const 1))
             (func (export "grove_handle") (param i32 i32 i32 i32) (result i32) (i32.const 0)))"#,
    )
    .unwrap();
    let unknown_import = wat::parse_str(
        r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
             (memory (export "memory") 1)
             (func (export "grove_abi_version") (result i32) (i32.const 1))
             (func (export "grove_alloc") (param i32) (result i32) (i32.const 0))
             (func (export "grove_handle") (param i32 i32 i32 i32) (result i32) (i32.const 0)))"#,
    )
    .unwrap();
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (
            b"definitely not wasm".to_vec(),
            "",
            "not a valid WebAssembly module",
        ),
        (
            b"\0asm\x01\0\0\0\x05garbage".to_vec(),
            "",
            "not a valid WebAssembly module",
        ),
        (missing_alloc, "", "does not export `grove_alloc`"),
        (
            guest_version(ECHO, "", 2),
            "",
            "grove_abi_version returned 2",
        ),
        (unknown_import, "", "wasi_snapshot_preview1"),
        (
            guest(ECHO, ""),
            "handler = \"other\"",
            "does not export `other`",
        ),
        (
            guest(ECHO, ""),
            "memory_limit_mb = 100000",
            "memory_limit_mb",
        ),
        (
            guest(ECHO, ""),
            "[grants]\npublsh = [\"a\"]",
            "unknown field `publsh`",
        ),
    ];
    for (wasm, manifest, want) in cases {
        let (code, out) = f.deploy("bad", &wasm, manifest, None);
        assert_eq!(code, 1, "must be refused: {want}\n{out}");
        assert!(out.contains(want), "want {want:?} in:\n{out}");
    }
    let (_, out) = f.cli(&["list"]);
    assert!(!out.contains("bad"), "nothing was deployed: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_memory_bombs_and_traps_are_contained_while_others_keep_serving() {
    let f = Fixture::start("");
    f.deployed("spin", &guest(SPIN, ""), "timeout_ms = 300");
    f.deployed("bomb", &guest(BOMB, ""), "memory_limit_mb = 2");
    f.deployed("trap", &guest(TRAP, ""), "");
    f.deployed("echo", &guest(ECHO, ""), "");
    let mut inv = Invoker::connect(&f.g, "iso").await;

    let spin_id = inv.send("spin", json!({})).await;
    // While the loop runs, another function answers.
    let mut echoes = 0;
    let spin = loop {
        if echoes < 5 {
            inv.send("echo", json!(echoes)).await;
        }
        let a = inv.answer().await;
        if a["correlationId"] == spin_id {
            break a;
        }
        assert_eq!(a["status"], "ok", "{a}");
        echoes += 1;
    };
    assert!(echoes >= 1, "echo answered during the loop");
    assert_eq!(spin["error"]["kind"], "timeout", "{spin}");
    // The gateway's own measure of the run. Not before the timeout; and stopped at it, give or
    // take the epoch ticker's period and a loaded machine's scheduling (the overshoot itself is
    // a figure for a benchmark, not a test).
    let in_host = spin["durationUs"].as_u64().unwrap();
    assert!(
        (300_000..800_000).contains(&in_host),
        "stopped {in_host} us after start: at the 300 ms timeout"
    );

    let a = inv.call("bomb", json!({})).await;
    assert_eq!(a["error"]["kind"], "memory_limit", "{a}");
    let a = inv.call("trap", json!({})).await;
    assert_eq!(a["error"]["kind"], "trap", "{a}");
    assert!(
        a["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{a}"
    );
    // Each is counted, logged, and the gateway still serves.
    for (function, result) in [
        ("spin", "timeout"),
        ("bomb", "memory_limit"),
        ("trap", "trap"),
    ] {
        let series = format!(
            "grove_function_invocations_total{{function=\"{function}\",result=\"{result}\"}}"
        );
        assert_eq!(f.metric(&series), 1.0, "{series}");
        let (_, logs) = f.cli(&["logs", function]);
        assert!(logs.contains(result), "{function} logs: {logs}");
    }
    let a = inv.call("echo", json!("still here")).await;
    assert_eq!(a["result"], "still here");
    let a = inv.call("spin", json!({})).await;
    assert_eq!(
        a["error"]["kind"], "timeout",
        "a timed-out function still answers: {a}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_triggers_retry_then_dead_letter_and_succeed_after_retries() {
    let f = Fixture::start("");
    f.deployed("always-fails", &guest(FAIL, ""), "triggers = [\"in/fail\"]");
    // Fails twice (its reused instance counts attempts), publishes on the third attempt.
    let flaky = format!(
        "(global.set $count (i32.add (global.get $count) (i32.const 1)))
         (if (i32.lt_u (global.get $count) (i32.const 3)) (then (return (i32.const 1))))
         {}",
        forward("out/flaky")
    );
    f.deployed(
        "flaky",
        &guest(&flaky, "out/flaky"),
        "triggers = [\"in/flaky\"]\n[grants]\npublish = [\"out/#\"]",
    );
    let mut watcher = Client::connect("watcher", f.g.mqtt_port).await;
    watcher
        .subscribe("$grove/functions/+/dlq", QoS::AtLeastOnce)
        .await;
    watcher.subscribe("out/#", QoS::AtLeastOnce).await;
    let device = Client::connect("device", f.g.mqtt_port).await;
    device
        .publish("in/fail", QoS::AtLeastOnce, false, "{\"n\":1}")
        .await;
    device
        .publish("in/flaky", QoS::AtLeastOnce, false, "{\"n\":2}")
        .await;

    let got = watcher.recv_n(2, WAIT).await;
    let dlq = got
        .iter()
        .find(|p| p.topic.ends_with("/dlq"))
        .expect("a dead letter");
    let out = got
        .iter()
        .find(|p| p.topic == "out/flaky")
        .expect("the flaky function's output");
    assert_eq!(&out.payload[..], b"{\"n\":2}");
    assert_eq!(dlq.topic, "$grove/functions/always-fails/dlq");
    let doc: Value = serde_json::from_slice(&dlq.payload).unwrap();
    assert_eq!(doc["attempts"], 3, "{doc}");
    assert_eq!(doc["error"]["kind"], "handler_error");
    assert_eq!(doc["error"]["message"], "{\"n\":1}");
    assert_eq!(
        doc["event"],
        json!({"topic": "in/fail", "payload": "{\"n\":1}"})
    );
    assert!(
        watcher.recv(Duration::from_millis(700)).await.is_none(),
        "exactly one output, one dead letter"
    );
    for (series, want) in [
        (
            "grove_function_retries_total{function=\"always-fails\"}",
            2.0,
        ),
        ("grove_function_retries_total{function=\"flaky\"}", 2.0),
        ("grove_function_dlq_total{function=\"always-fails\"}", 1.0),
        (
            "grove_function_invocations_total{function=\"flaky\",result=\"ok\"}",
            1.0,
        ),
        (
            "grove_function_invocations_total{function=\"always-fails\",result=\"handler_error\"}",
            3.0,
        ),
    ] {
        assert_eq!(f.metric(series), want, "{series}");
    }
}

/// An accepted event is never dropped silently: one for a function that was never deployed, and
/// those still waiting when their function is removed, go to the function's dead-letter topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_missing_or_removed_function_are_dead_lettered() {
    let f = Fixture::start("");
    f.deployed(
        "slow",
        &guest(SPIN, ""),
        "triggers = [\"in/slow\"]\ntimeout_ms = 300\nmax_concurrency = 1",
    );
    let mut watcher = Client::connect("dlqwatch", f.g.mqtt_port).await;
    watcher
        .subscribe("$grove/functions/+/dlq", QoS::AtLeastOnce)
        .await;
    let mut device = Client::connect("device", f.g.mqtt_port).await;
    device
        .publish(
            "$grove/functions/ghost/event",
            QoS::AtLeastOnce,
            false,
            "{\"n\":0}",
        )
        .await;
    let ghost = watcher
        .recv(WAIT)
        .await
        .unwrap_or_else(|| panic!("no dead letter:\n{}", f.g.log()));
    assert_eq!(ghost.topic, "$grove/functions/ghost/dlq");
    let doc: Value = serde_json::from_slice(&ghost.payload).unwrap();
    assert_eq!(doc["error"]["kind"], "not_found", "{doc}");
    assert_eq!(doc["error"]["message"], "no function named \"ghost\"");
    assert_eq!(doc["attempts"], 0, "{doc}");
    assert_eq!(
        doc["event"],
        json!({"topic": "$grove/functions/ghost/event", "payload": "{\"n\":0}"})
    );

    // Three events are accepted (each PUBACK says it is committed); at most one runs (and spins
    // until its timeout) while the others wait behind it; then the function goes. Every one of
    // them, running or waiting, ends in the dead-letter topic.
    for n in 1..=3 {
        device
            .publish("in/slow", QoS::AtLeastOnce, false, format!("{{\"n\":{n}}}"))
            .await;
    }
    device.acked(4).await;
    let (code, out) = f.cli(&["remove", "slow"]);
    assert_eq!(code, 0, "{out}");
    let mut payloads: Vec<String> = Vec::new();
    for p in watcher.recv_n(3, WAIT).await {
        assert_eq!(p.topic, "$grove/functions/slow/dlq");
        let doc: Value = serde_json::from_slice(&p.payload).unwrap();
        assert_eq!(doc["error"]["kind"], "not_found", "{doc}");
        assert_eq!(doc["event"]["topic"], "in/slow", "{doc}");
        payloads.push(doc["event"]["payload"].as_str().unwrap().to_owned());
    }
    payloads.sort();
    assert_eq!(payloads, ["{\"n\":1}", "{\"n\":2}", "{\"n\":3}"]);
    assert!(
        watcher.recv(Duration::from_millis(700)).await.is_none(),
        "one dead letter per event"
    );
    assert_eq!(f.metric("grove_function_dlq_total{function=\"slow\"}"), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_are_enforced_and_a_function_triggered_by_its_own_output_stops_at_the_hop_limit() {
    let f = Fixture::start("");
    f.deployed(
        "pub",
        &guest(&forward("secret/x"), "secret/x"),
        "[grants]\npublish = [\"public/#\"]",
    );
    let mut inv = Invoker::connect(&f.g, "grants").await;
    let a = inv.call("pub", json!({})).await;
    assert_eq!(a["result"], "denied", "{a}");
    assert_eq!(
        f.metric("grove_function_denied_calls_total{function=\"pub\",call=\"publish\"}"),
        1.0
    );
    let (_, logs) = f.cli(&["logs", "pub"]);
    assert!(logs.contains("publish(secret/x) denied"), "{logs}");
    // A guest's log lines show in `grove fn logs`.
    let log = "(call $log (i32.const 2) (local.get $pp) (local.get $pl)) (i32.const 0)";
    f.deployed("logger", &guest(log, ""), "");
    inv.call("logger", json!("hello from wasm")).await;
    let (_, logs) = f.cli(&["logs", "logger"]);
    assert!(logs.contains("v1 info  hello from wasm"), "{logs}");
    // Without the kv grant, kv is denied too (and the handler reports it).
    f.deployed("nokv", &guest(KV_COUNT, ""), "");
    let a = inv.call("nokv", json!({})).await;
    assert_eq!(
        (a["error"]["kind"].as_str(), a["error"]["message"].as_str()),
        (Some("handler_error"), Some("denied")),
        "{a}"
    );

    // Triggered by loop/x, publishing to loop/x: cut after the rules' hop limit (8).
    f.deployed(
        "looper",
        &guest(&forward("loop/x"), "loop/x"),
        "triggers = [\"loop/x\"]\n[grants]\npublish = [\"loop/#\"]",
    );
    let mut watcher = Client::connect("loopwatch", f.g.mqtt_port).await;
    watcher.subscribe("loop/x", QoS::AtLeastOnce).await;
    watcher
        .client
        .publish("loop/x", QoS::AtLeastOnce, false, "go")
        .await
        .unwrap();
    let mut seen = 0;
    while watcher.recv(Duration::from_millis(1500)).await.is_some() {
        seen += 1;
        assert!(seen < 50, "the loop is not cut");
    }
    assert_eq!(seen, 1 + 8, "the device's message and 8 republishes");
    assert_eq!(
        f.metric(
            "grove_function_denied_calls_total{function=\"looper\",call=\"publish_hop_limit\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_aliases_weights_kv_and_shadows_survive_a_restart_without_recompiling() {
    let mut f = Fixture::start("");
    // Version 1 answers "ok", version 2 "error" (constant bodies tell versions apart).
    let v1 = guest(
        "(drop (call $output (i32.const 16) (i32.const 2))) (i32.const 0)",
        "",
    );
    let v2 = guest(
        "(drop (call $output (i32.const 48) (i32.const 5))) (i32.const 0)",
        "",
    );
    f.deployed("canary", &v1, "");
    let (code, out) = f.deploy("canary", &v2, "", Some("next"));
    assert_eq!(code, 0, "{out}");
    let (code, out) = f.cli(&["alias", "canary", "live", "1", "--weight", "2=30"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = f.cli(&["alias", "canary", "bad", "9"]);
    assert!(
        code == 1 && out.contains("version 9 does not exist"),
        "{out}"
    );

    let mut inv = Invoker::connect(&f.g, "weights").await;
    let n = 400;
    let mut to_v2 = 0;
    for _ in 0..n {
        inv.send("canary:live", json!({})).await;
    }
    for _ in 0..n {
        let a = inv.answer().await;
        assert_eq!(a["status"], "ok", "{a}");
        if a["version"] == 2 {
            assert_eq!(a["result"], "error");
            to_v2 += 1;
        }
    }
    // 30 % of 400 = 120; the standard deviation is ~9.2: 4.5 of them either way.
    assert!(
        (79..=161).contains(&to_v2),
        "{to_v2} of {n} went to version 2"
    );
    assert_eq!(inv.call("canary:next", json!({})).await["version"], 2);

    f.deployed("kv", &guest(KV_COUNT, ""), "[grants]\nkv = true");
    for want in [1, 2] {
        assert_eq!(inv.call("kv", json!({})).await["result"], want);
    }
    // Shadows: through the shadow service, as a device would see them.
    let shadow = "(local.set $rc (call $shadow_update (i32.const 160) (i32.const 4) (i32.const 0) (i32.const 0) (i32.const 192) (i32.const 33)))
        (if (i32.lt_s (local.get $rc) (i32.const 0)) (then (drop (call $output (i32.const 48) (i32.const 5))) (return (i32.const 1))))
        (local.set $rc (call $shadow_get (i32.const 160) (i32.const 4) (i32.const 0) (i32.const 0)))
        (if (i32.lt_s (local.get $rc) (i32.const 0)) (then (drop (call $output (i32.const 32) (i32.const 6))) (return (i32.const 1))))
        (drop (call $result (i32.const 8192) (local.get $rc)))
        (drop (call $output (i32.const 8192) (local.get $rc))) (i32.const 0)";
    f.deployed(
        "shadowy",
        &guest(shadow, ""),
        "[grants]\nshadow_update = [\"lamp\"]\nshadow_read = [\"+\"]",
    );
    let a = inv.call("shadowy", json!({})).await;
    assert_eq!(a["result"]["state"]["desired"]["on"], true, "{a}");
    f.deployed(
        "noshadow",
        &guest(shadow, ""),
        "[grants]\nshadow_update = [\"lamp\"]",
    );
    let a = inv.call("noshadow", json!({})).await;
    assert_eq!(
        a["error"]["message"], "denied",
        "shadow_get without shadow_read: {a}"
    );
    inv.client.disconnect().await;

    let compiled = f.metric("grove_function_modules_loaded_total{source=\"compiled\"}");
    assert!(compiled >= 4.0, "{compiled}");
    f.g.restart();
    assert_eq!(
        f.metric("grove_function_modules_loaded_total{source=\"compiled\"}"),
        0.0
    );
    assert_eq!(
        f.metric("grove_function_modules_loaded_total{source=\"cache\"}"),
        5.0
    );
    let (_, out) = f.cli(&["list"]);
    assert!(
        out.contains("live->1+2@30%") && out.contains("next->2"),
        "{out}"
    );
    let mut inv = Invoker::connect(&f.g, "after").await;
    assert_eq!(inv.call("canary:1", json!({})).await["result"], "ok");
    // The shadow the function wrote is the shadow service's, durable like any other.
    let lamp =
        f.g.shadow("lamp")
            .expect("the lamp's shadow after the restart");
    assert_eq!(lamp["state"]["desired"]["on"], true, "{lamp}");
    assert_eq!(inv.call("canary", json!({})).await["version"], 2);
    assert_eq!(
        inv.call("kv", json!({})).await["result"],
        3,
        "kv is durable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_function_action_invokes_the_function_and_a_missing_one_fails_into_the_error_action()
{
    let f = Fixture::start(
        "[[rules]]\nname = \"to-fn\"\nsql = \"SELECT t, topic(2) AS device FROM 'sensors/+'\"\nactions = [{ function = \"fwd:live\" }]\n\
         error_action = { republish = { topic = \"errors/to-fn\" } }\n",
    );
    let mut errors = Client::connect("errwatch", f.g.mqtt_port).await;
    errors.subscribe("errors/to-fn", QoS::AtLeastOnce).await;
    // Before the function (then its alias) exists, the action fails into the error action, as
    // an AWS IoT rule's Lambda action does for a missing function.
    errors
        .client
        .publish("sensors/s0", QoS::AtLeastOnce, false, "{\"t\":1}")
        .await
        .unwrap();
    let p = errors.recv(WAIT).await.expect("the error action's message");
    let doc: Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(doc["ruleName"], "to-fn");
    assert_eq!(doc["failures"][0]["failedAction"], "LambdaAction");
    assert_eq!(doc["failures"][0]["failedResource"], "fwd:live");
    assert_eq!(
        doc["failures"][0]["errorMessage"],
        "no function named \"fwd\""
    );
    let (code, out) = f.deploy(
        "fwd",
        &guest(&forward("out/fwd"), "out/fwd"),
        "[grants]\npublish = [\"out/#\"]",
        Some("live"),
    );
    assert_eq!(code, 0, "{out}");
    let mut watcher = Client::connect("rulewatch", f.g.mqtt_port).await;
    watcher.subscribe("out/fwd", QoS::AtLeastOnce).await;
    watcher
        .client
        .publish("sensors/s1", QoS::AtLeastOnce, false, "{\"t\":30}")
        .await
        .unwrap();
    let p = watcher.recv(WAIT).await.expect("the function's output");
    let doc: Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(doc, json!({"t": 30, "device": "s1"}));
    assert!(
        errors.recv(Duration::from_millis(300)).await.is_none(),
        "no error once the target exists"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeploy_under_load_loses_no_event() {
    let f = Fixture::start("");
    let manifest =
        "triggers = [\"load/in\"]\nmax_concurrency = 2\n[grants]\npublish = [\"load/out\"]";
    let wasm = guest(&forward("load/out"), "load/out");
    f.deployed("relay", &wasm, manifest);
    let mut watcher = Client::connect("loadwatch", f.g.mqtt_port).await;
    watcher.subscribe("load/out", QoS::AtLeastOnce).await;
    let device = Client::connect("loader", f.g.mqtt_port).await;
    // A steady flow of events (one a millisecond) until the three redeploys are done, so each
    // redeploy happens while events arrive and run.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let publishing = tokio::spawn(async move {
        let mut pace = tokio::time::interval(Duration::from_millis(1));
        let mut sent = 0usize;
        while !*stopped.borrow() {
            pace.tick().await;
            device
                .publish("load/in", QoS::AtLeastOnce, false, sent.to_string())
                .await;
            sent += 1;
        }
        sent
    });
    let mut seen = BTreeSet::new();
    // Records the next output; false if none came within the wait.
    let receive = async |watcher: &mut Client, seen: &mut BTreeSet<usize>| {
        let Some(p) = watcher.recv(WAIT).await else {
            return false;
        };
        seen.insert(
            String::from_utf8_lossy(&p.payload)
                .parse::<usize>()
                .unwrap(),
        );
        true
    };
    for _ in 0..3 {
        // Outputs are flowing (from the previous version, then from each new one).
        assert!(receive(&mut watcher, &mut seen).await, "the relay's output");
        let (code, out) = f.deploy("relay", &wasm, manifest, None);
        assert_eq!(code, 0, "{out}");
    }
    assert!(receive(&mut watcher, &mut seen).await, "the relay's output");
    stop.send(true).unwrap();
    let n = publishing.await.unwrap();
    while seen.len() < n && receive(&mut watcher, &mut seen).await {}
    let missing: Vec<usize> = (0..n).filter(|i| !seen.contains(i)).collect();
    assert!(missing.is_empty(), "lost events: {missing:?}");
    let (_, out) = f.cli(&["list"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("relay") && l.contains(" 4 ")),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_instances_keep_state_and_fresh_ones_do_not() {
    let f = Fixture::start("");
    f.deployed("warm", &guest(COUNT, ""), "instance = \"reuse\"");
    f.deployed("cold", &guest(COUNT, ""), "instance = \"fresh\"");
    let mut inv = Invoker::connect(&f.g, "modes").await;
    // The body is one digit, which is JSON: the answer carries it as a number.
    for want in [1, 2, 3] {
        assert_eq!(inv.call("warm", json!({})).await["result"], want);
    }
    for _ in 0..3 {
        assert_eq!(inv.call("cold", json!({})).await["result"], 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn superseded_versions_give_their_idle_instances_back_to_the_pool() {
    // Four slots: each deploy's ABI check and each invocation needs one, and every version's
    // idle instance would keep one if superseded versions did not release them.
    let f = Fixture::start("[functions]\npool_size = 4\n");
    let mut inv = Invoker::connect(&f.g, "pool").await;
    for version in 1..=6 {
        f.deployed("warm", &guest(COUNT, ""), "max_concurrency = 2");
        let a = inv.call("warm", json!({})).await;
        assert_eq!(
            (a["version"].as_u64(), &a["result"]),
            (Some(version), &json!(1)),
            "{a}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_events_go_to_the_version_the_latest_manifest_names() {
    let f = Fixture::start("");
    let grants = "triggers = [\"in/pinned\"]\n[grants]\npublish = [\"out/#\"]";
    let (code, out) = f.deploy(
        "pinned",
        &guest(&forward("out/v1"), "out/v1"),
        grants,
        Some("stable"),
    );
    assert_eq!(code, 0, "{out}");
    f.deployed(
        "pinned",
        &guest(&forward("out/v2"), "out/v2"),
        &format!("trigger_qualifier = \"stable\"\n{grants}"),
    );
    let mut watcher = Client::connect("pinwatch", f.g.mqtt_port).await;
    watcher.subscribe("out/#", QoS::AtLeastOnce).await;
    watcher
        .client
        .publish("in/pinned", QoS::AtLeastOnce, false, "e")
        .await
        .unwrap();
    let p = watcher.recv(WAIT).await.expect("an output");
    assert_eq!(
        p.topic, "out/v1",
        "the alias `stable`, not $LATEST (version 2)"
    );
}

/// The shipped example functions (`functions/examples/`, built by `functions/build.sh` into
/// `target/functions/`, which the test command runs first), deployed with their own manifests.
fn shipped_example(f: &Fixture, name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/functions");
    let (module, manifest) = (
        dir.join(format!("{name}.wasm")),
        dir.join(format!("{name}.toml")),
    );
    assert!(
        module.exists() && manifest.exists(),
        "{} is missing: run functions/build.sh first (scripts/test.sh does)",
        module.display()
    );
    let (m, t) = (path(&module), path(&manifest));
    let (code, out) = f.cli(&["deploy", m.as_str(), "--manifest", t.as_str()]);
    assert_eq!(code, 0, "deploy {name}: {out}\n{}", f.g.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_examples_alert_enrich_drive_a_relay_and_echo() {
    let f = Fixture::start("");
    for name in ["threshold-alert", "enricher", "actuator", "echo"] {
        shipped_example(&f, name);
    }
    let mut device = Client::connect("kitchen-1", f.g.mqtt_port).await;
    device
        .subscribe(
            "$aws/things/kitchen-1/shadow/update/accepted",
            QoS::AtLeastOnce,
        )
        .await;
    device
        .publish(
            "$aws/things/kitchen-1/shadow/update",
            QoS::AtLeastOnce,
            false,
            r#"{"state":{"desired":{"setpoint":21}}}"#,
        )
        .await;
    device.recv(WAIT).await.expect("the setpoint is accepted");

    let mut watcher = Client::connect("watcher", f.g.mqtt_port).await;
    watcher.subscribe("alerts/+", QoS::AtLeastOnce).await;
    watcher.subscribe("enriched/+", QoS::AtLeastOnce).await;
    // limit 30, hysteresis 2 (threshold-alert's manifest); setpoint 21 in heat mode (actuator).
    for t in [20.0, 31.5, 32.0, 29.0, 27.5] {
        device
            .publish(
                "sensors/kitchen-1/telemetry",
                QoS::AtLeastOnce,
                false,
                json!({ "temperature": t }).to_string(),
            )
            .await;
    }
    let got = watcher.recv_n(7, WAIT).await;
    let on = |topic: &str| -> Vec<Value> {
        got.iter()
            .filter(|p| p.topic == topic)
            .map(|p| serde_json::from_slice(&p.payload).expect("JSON"))
            .collect()
    };
    // The alert fires once above the limit and clears once below limit - hysteresis: 29.0 is in
    // the band and says nothing.
    let alerts: Vec<(Value, Value, Value)> = on("alerts/kitchen-1")
        .into_iter()
        .map(|a| (a["state"].clone(), a["value"].clone(), a["seq"].clone()))
        .collect();
    assert_eq!(
        alerts,
        [
            (json!("alarm"), json!(31.5), json!(1)),
            (json!("cleared"), json!(27.5), json!(2))
        ]
    );
    // The enricher may run two readings at once (max_concurrency = 2), so order is not asserted.
    let enriched = on("enriched/kitchen-1");
    let mut fahrenheit: Vec<f64> = enriched
        .iter()
        .map(|e| e["temperature_f"].as_f64().expect("temperature_f"))
        .collect();
    fahrenheit.sort_by(f64::total_cmp);
    assert_eq!(fahrenheit, [68.0, 81.5, 84.2, 88.7, 89.6], "{enriched:?}");
    assert!(enriched.iter().all(
        |e| e["device"] == "kitchen-1" && e["gateway_ms"].as_u64().unwrap() > 1_700_000_000_000
    ));

    // The actuator switched the relay on at 20 (below the setpoint) and off at 31.5, and wrote
    // nothing when its decision did not change: setpoint (v1), relay on (v2), relay off (v3).
    let shadow = f.g.wait_shadow("kitchen-1", |s| s["version"] == 3);
    assert_eq!(shadow["state"]["desired"]["relay"], false, "{shadow}");
    assert_eq!(shadow["version"], 3, "{shadow}");

    // The WAT example answers a sync request and publishes the event on its configured topic.
    let mut out = Client::connect("echo-watch", f.g.mqtt_port).await;
    out.subscribe("echo/out", QoS::AtLeastOnce).await;
    let mut inv = Invoker::connect(&f.g, "echo-caller").await;
    let a = inv.call("echo", json!({"ping": 1})).await;
    assert_eq!(
        (a["status"].clone(), a["result"].clone()),
        (json!("ok"), json!({"ping": 1})),
        "{a}"
    );
    let p = out.recv(WAIT).await.expect("echo/out");
    assert_eq!(
        serde_json::from_slice::<Value>(&p.payload).unwrap(),
        json!({"ping": 1})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_a_kill_9_and_run_after_the_restart() {
    let mut f = Fixture::start("");
    // Takes 1.5 s per event (by the clock, so on any machine), then forwards it to out/slow.
    let slow = format!(
        "(local $t i64)
         (local.set $t (i64.add (call $now_ms) (i64.const 1500)))
         (loop $l (br_if $l (i64.lt_u (call $now_ms) (local.get $t))))
         {}",
        forward("out/slow")
    );
    f.deployed(
        "slow",
        &guest(&slow, "out/slow"),
        "triggers = [\"work/+\"]\nmax_concurrency = 1\ntimeout_ms = 5000\n[grants]\npublish = [\"out/#\"]",
    );
    // mosquitto_pub -q 1 exits only after its PUBACK: each event is acknowledged to the device.
    for i in 1..=4 {
        mosquitto_pub(
            f.g.mqtt_port,
            &["-q", "1", "-t", &format!("work/{i}"), "-m", &i.to_string()],
        );
    }
    // The first event is running, the others are queued: none is done when the power goes.
    f.g.kill_and_restart();
    let mut watcher = Client::connect("slow-watch", f.g.mqtt_port).await;
    watcher.subscribe("out/slow", QoS::AtLeastOnce).await;
    let got: BTreeSet<String> = watcher
        .recv_n(4, Duration::from_secs(20))
        .await
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    assert_eq!(got, BTreeSet::from(["1", "2", "3", "4"].map(String::from)));
    assert!(
        f.g.log().contains("function events restored events=4"),
        "{}",
        f.g.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_caps_sync_invocations_too() {
    let f = Fixture::start("");
    // Busy for 400 ms by the clock, then answers the time it started (ms, as read through the
    // host's clock), written out in decimal at 1024..1044.
    let wait = "(local $start i64) (local $t i64) (local $p i32)
         (local.set $start (call $now_ms))
         (local.set $t (i64.add (local.get $start) (i64.const 400)))
         (loop $l (br_if $l (i64.lt_u (call $now_ms) (local.get $t))))
         (local.set $p (i32.const 1044))
         (loop $d
           (local.set $p (i32.sub (local.get $p) (i32.const 1)))
           (i32.store8 (local.get $p)
             (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $start) (i64.const 10)))))
           (local.set $start (i64.div_u (local.get $start) (i64.const 10)))
           (br_if $d (i64.ne (local.get $start) (i64.const 0))))
         (drop (call $output (local.get $p) (i32.sub (i32.const 1044) (local.get $p))))
         (i32.const 0)";
    for (name, limit) in [("one", 1), ("two", 2)] {
        f.deployed(
            name,
            &guest(wait, ""),
            &format!("max_concurrency = {limit}"),
        );
    }
    let mut inv = Invoker::connect(&f.g, "concurrency").await;
    // Two requests at once; how far apart they started, by the functions' own clock readings.
    let mut apart = Vec::new();
    for name in ["one", "two"] {
        inv.send(name, json!({})).await;
        inv.send(name, json!({})).await;
        let mut started = Vec::new();
        for _ in 0..2 {
            let a = inv.answer().await;
            assert_eq!(a["status"], "ok", "{a}");
            started.push(a["result"].as_u64().expect("a start time"));
        }
        apart.push(started[0].abs_diff(started[1]));
    }
    // With max_concurrency = 1 the second waits for the first to finish; with 2 it runs beside
    // the first (the gateway has 2 workers), starting before the first is done.
    assert!(apart[0] >= 400, "one at a time, yet {apart:?} ms apart");
    assert!(apart[1] < 400, "side by side, yet {apart:?} ms apart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_matching_two_triggers_of_a_function_is_one_event() {
    // Overlapping triggers are allowed: the functions' tap takes a message once, and it is one
    // event of each function any of whose triggers match. The function counts its invocations in
    // kv: after one message matching both triggers and one matching only `ovl/#` it has run
    // twice (a third event of the first message would run before the second's: one at a time,
    // in order), so the synchronous call that follows is its third invocation.
    let f = Fixture::start("");
    f.deployed(
        "twice",
        &guest(KV_COUNT, ""),
        "triggers = [\"ovl/#\", \"ovl/+\"]\n[grants]\nkv = true",
    );
    let mut inv = Invoker::connect(&f.g, "ovl").await;
    for topic in ["ovl/a", "ovl/a/b"] {
        inv.client
            .publish(topic, QoS::AtLeastOnce, false, "e")
            .await;
    }
    f.g.wait_metric(
        "grove_function_invocations_total{function=\"twice\",result=\"ok\"}",
        |v| v >= 2.0,
    );
    assert_eq!(inv.call("twice", json!({})).await["result"], 3);
}
