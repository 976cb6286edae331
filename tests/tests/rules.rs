//! End-to-end tests of the rules engine in the real `grove` binary: devices publish, rules
//! republish, update shadows, report failures to their error action (also the shadow service's
//! rejections), window, never loop (windowed rules included), and reload without dropping
//! messages.

use std::time::Duration;

use grove_tests::{grove, Client, Gateway};
use rumqttc::QoS;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

const RULES: &str = r#"
[[rules]]
name = "hot"
sql = "SELECT temp, topic(2) AS id, clientid() AS sender FROM 'sensors/+/t' WHERE temp > 30"
actions = [{ republish = { topic = "alerts/${topic(2)}", qos = 1 } }]

[[rules]]
name = "to-shadow"
sql = "SELECT {'reported': {'temp': temp}} AS state FROM 'sensors/+/t'"
actions = [{ shadow = { thing = "${topic(2)}" } }]
error_action = { republish = { topic = "errors/rules" } }

[[rules]]
name = "loop"
sql = "SELECT * FROM 'loop/#'"
actions = [{ republish = { topic = "loop/again" } }]

[[rules]]
name = "avg3"
sql = "SELECT avg(temp) AS mean, count(*) AS n FROM 'sensors/+/t' GROUP BY COUNTWINDOW(3)"
actions = [{ republish = { topic = "summary" } }]

[[rules]]
name = "off"
enabled = false
sql = "SELECT * FROM 'sensors/+/t'"
actions = [{ republish = { topic = "never" } }]
"#;

fn json_of(p: &rumqttc::Publish) -> Value {
    serde_json::from_slice(&p.payload).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_republish_update_shadows_report_errors_window_and_stop_loops() {
    let g = Gateway::start(RULES);
    let mut watch = Client::connect("watch", g.mqtt_port).await;
    for f in ["alerts/#", "errors/#", "summary", "never", "loop/#"] {
        watch.subscribe(f, QoS::AtLeastOnce).await;
    }
    let device = Client::connect("sensor-d1", g.mqtt_port).await;
    for temp in [31, 20, 35] {
        device
            .publish(
                "sensors/d1/t",
                QoS::AtLeastOnce,
                false,
                json!({"temp": temp}).to_string(),
            )
            .await;
    }
    // Alerts for the two hot readings, with clientid(); a window summary of all three.
    let mut got: Vec<(String, Value)> = watch
        .recv_n(3, WAIT)
        .await
        .iter()
        .map(|p| (p.topic.clone(), json_of(p)))
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.to_string().cmp(&b.1.to_string())));
    assert_eq!(
        got,
        [
            (
                "alerts/d1".into(),
                json!({"temp": 31, "id": "d1", "sender": "sensor-d1"})
            ),
            (
                "alerts/d1".into(),
                json!({"temp": 35, "id": "d1", "sender": "sensor-d1"})
            ),
            (
                "summary".into(),
                json!({"mean": 28.666666666666668, "n": 3})
            ),
        ]
    );
    // The shadow action updated d1's shadow, in the order of the readings. The updates go
    // through the shadow service's own answers, not the republishes' batch, so wait for the third.
    let shadow = g.wait_shadow("d1", |s| s["version"] == 3);
    assert_eq!(shadow["state"]["reported"]["temp"], 35);

    // A thing name AWS would refuse makes the shadow action fail: the error action gets AWS's payload.
    device
        .publish(
            "sensors/bad.name/t",
            QoS::AtLeastOnce,
            false,
            r#"{"temp": 1}"#,
        )
        .await;
    let err = watch.recv(WAIT).await.expect("error action");
    assert_eq!(err.topic, "errors/rules");
    let err = json_of(&err);
    assert_eq!(err["ruleName"], "to-shadow");
    assert_eq!(err["topic"], "sensors/bad.name/t");
    assert_eq!(err["clientId"], "sensor-d1");
    assert_eq!(err["base64OriginalPayload"], "eyJ0ZW1wIjogMX0=");
    assert_eq!(err["failures"][0]["failedAction"], "IotShadowAction");
    assert_eq!(err["failures"][0]["failedResource"], "bad.name");

    // A rule that matches its own output stops at the hop limit: the original plus 8 republishes.
    device
        .publish("loop/start", QoS::AtLeastOnce, false, "x")
        .await;
    let seen = watch.recv_n(9, WAIT).await;
    assert_eq!(seen.iter().filter(|p| p.topic == "loop/again").count(), 8);
    assert!(
        watch.recv(Duration::from_millis(500)).await.is_none(),
        "the loop was cut"
    );
    assert_eq!(g.metric("grove_rule_hop_dropped_total{rule=\"loop\"}"), 1.0);
    assert_eq!(
        g.metric("grove_rule_outputs_total{rule=\"loop\"}"),
        8.0,
        "the output dropped at the hop limit is not counted as handed to the actions"
    );
    assert_eq!(g.metric("grove_rule_matched_total{rule=\"hot\"}"), 4.0);
    assert_eq!(g.metric("grove_rule_outputs_total{rule=\"hot\"}"), 2.0);
    assert_eq!(
        g.metric("grove_rule_action_failures_total{rule=\"to-shadow\"}"),
        1.0
    );
    assert_eq!(
        g.metric("grove_rule_matched_total{rule=\"off\"}"),
        0.0,
        "disabled rules do not run"
    );
}

const LATE: &str = r#"
[shadow]
max_state_bytes = 64

[[rules]]
name = "apply"
sql = "SELECT state, version FROM 'apply/+'"
actions = [{ shadow = { thing = "${topic(2)}" } }]
error_action = { republish = { topic = "errors/${topic(2)}" } }

[[rules]]
name = "wloop"
sql = "SELECT count(*) AS n FROM 'wloop/#' GROUP BY COUNTWINDOW(1)"
actions = [{ republish = { topic = "wloop/again" } }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_rejections_reach_the_error_action_and_windows_keep_the_hop_count() {
    let g = Gateway::start(LATE);
    let mut watch = Client::connect("watch", g.mqtt_port).await;
    watch.subscribe("errors/#", QoS::AtLeastOnce).await;
    let device = Client::connect("dev-7", g.mqtt_port).await;
    // One case per line: the thing, the device's message on `apply/{thing}` with its base64, and
    // the code and message of the shadow service's rejection of the rule's update (`None`:
    // accepted, so no error action). `[shadow] max_state_bytes = 64` makes the 413 small.
    let cases: &[(&str, &str, &str, Option<&str>)] = &[
        ("t1", r#"{"state":{"reported":{"a":1}}}"#, "", None),
        (
            "t1",
            r#"{"state":{"reported":{"a":2}},"version":7}"#,
            "eyJzdGF0ZSI6eyJyZXBvcnRlZCI6eyJhIjoyfX0sInZlcnNpb24iOjd9",
            Some("409 Version conflict"),
        ),
        ("t1", r#"{"state":{"reported":{"a":3}},"version":1}"#, "", None),
        (
            "t2",
            r#"{"state":{"delta":{"a":1}}}"#,
            "eyJzdGF0ZSI6eyJkZWx0YSI6eyJhIjoxfX19",
            Some("400 State contains an invalid node: 'delta'"),
        ),
        (
            "t3",
            r#"{"state":{"reported":{"big":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}}"#,
            "eyJzdGF0ZSI6eyJyZXBvcnRlZCI6eyJiaWciOiJ4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4In19fQ==",
            Some("413 The payload exceeds the maximum size allowed"),
        ),
    ];
    for (thing, payload, base64, want) in cases {
        device
            .publish(&format!("apply/{thing}"), QoS::AtLeastOnce, false, *payload)
            .await;
        let Some(want) = want else {
            assert!(
                watch.recv(Duration::from_millis(300)).await.is_none(),
                "{thing} {payload}: accepted, so no error action"
            );
            continue;
        };
        let err = watch.recv(WAIT).await.expect("error action");
        assert_eq!(err.topic, format!("errors/{thing}"));
        assert_eq!(
            json_of(&err),
            json!({
                "ruleName": "apply",
                "topic": format!("apply/{thing}"),
                "clientId": "dev-7",
                "base64OriginalPayload": base64,
                "failures": [{
                    "failedAction": "IotShadowAction",
                    "failedResource": thing,
                    "errorMessage": format!("the shadow service rejected the update: {want}"),
                }]
            }),
            "{thing} {payload}"
        );
    }
    assert_eq!(
        g.metric("grove_rule_action_failures_total{rule=\"apply\"}"),
        3.0
    );

    // A windowed rule republishing into its own FROM: each row is as deep in hops as the
    // messages that fed its window, so the loop stops at the limit as a plain rule's does.
    watch.subscribe("wloop/#", QoS::AtLeastOnce).await;
    device
        .publish("wloop/start", QoS::AtLeastOnce, false, "{}")
        .await;
    let seen = watch.recv_n(9, WAIT).await;
    assert_eq!(seen.iter().filter(|p| p.topic == "wloop/again").count(), 8);
    assert!(
        watch.recv(Duration::from_millis(500)).await.is_none(),
        "the windowed loop was cut"
    );
    assert_eq!(
        g.metric("grove_rule_hop_dropped_total{rule=\"wloop\"}"),
        1.0
    );
    assert_eq!(g.metric("grove_rule_outputs_total{rule=\"wloop\"}"), 8.0);
}

/// Which versions of the rule (their output topics) republished each message, by sequence number.
type Versions = std::collections::BTreeMap<u32, std::collections::BTreeSet<String>>;

/// Receives the next republished message of the reload test and records which version of the
/// rule (its topic) took it; returns that topic.
async fn next(watch: &mut Client, versions: &mut Versions) -> String {
    let p = watch
        .recv(WAIT)
        .await
        .unwrap_or_else(|| panic!("nothing more after {} messages", versions.len()));
    let i = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
    assert!(
        versions.entry(i).or_default().insert(p.topic.clone()),
        "message {i} twice from {}",
        p.topic
    );
    p.topic
}

/// Receives (and records) until a message republished on `topic` arrives.
async fn next_until(watch: &mut Client, versions: &mut Versions, topic: &str) {
    while next(watch, versions).await != topic {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_rules_without_dropping_messages() {
    let v1 = "[[rules]]\nname = \"fwd\"\nsql = \"SELECT * FROM 'in/#'\"\nactions = [{ republish = { topic = \"out/v1\" } }]\n";
    let mut g = Gateway::start(v1);
    let mut watch = Client::connect("watch", g.mqtt_port).await;
    watch.subscribe("out/#", QoS::AtLeastOnce).await;
    let publisher = Client::connect("pub", g.mqtt_port).await;
    let addr = format!("127.0.0.1:{}", g.mqtt_port);
    let config = g.config_path();
    // A steady flow (one message a millisecond) that runs until the test has seen all three
    // versions of the rule at work: every swap happens while messages flow.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sender = publisher.client.clone();
    let send = tokio::spawn(async move {
        let mut pace = tokio::time::interval(Duration::from_millis(1));
        let mut sent = 0u32;
        while !*stopped.borrow() {
            pace.tick().await;
            sender
                .publish("in/x", QoS::AtLeastOnce, false, sent.to_be_bytes().to_vec())
                .await
                .unwrap();
            sent += 1;
        }
        sent
    });
    let mut version_of = Versions::new();
    next_until(&mut watch, &mut version_of, "out/v1").await;
    // Swap to v2 over MQTT, then to v3 with SIGHUP.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("out/v1", "out/v2");
    std::fs::write(&config, &text).unwrap();
    let (code, out) = grove(&["rules", "reload", "--mqtt", &addr], g.dir.path());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("[\"fwd\"]"), "{out}");
    next_until(&mut watch, &mut version_of, "out/v2").await;
    std::fs::write(&config, text.replace("out/v2", "out/v3")).unwrap();
    g.signal("HUP");
    next_until(&mut watch, &mut version_of, "out/v3").await;
    stop.send(true).unwrap();
    let total = send.await.unwrap();
    // Both reloads have returned once the replaced sets have drained and left. Then a last
    // message through v3: v3 handles messages in order, so once its copy is here, every copy of
    // every earlier message is too.
    g.wait_log(&["rules reloaded"], 2);
    publisher
        .publish(
            "in/x",
            QoS::AtLeastOnce,
            false,
            total.to_be_bytes().to_vec(),
        )
        .await;
    while version_of.get(&total).is_none_or(|v| !v.contains("out/v3")) {
        next(&mut watch, &mut version_of).await;
    }
    let missing: Vec<u32> = (0..total).filter(|i| !version_of.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "messages lost across reloads: {missing:?}"
    );
    // A swap is a swap: once a message went through a newer version, every later one does too.
    // (A message published while the old set drains may also go through the old one: at least
    // once, never twice through the same version; see the rules engine's module doc.)
    let newest: Vec<&String> = version_of.values().filter_map(|v| v.last()).collect();
    assert!(
        newest.is_sorted(),
        "versions out of order: {:?}",
        newest.windows(2).find(|w| w[0] > w[1])
    );

    // A broken rule is refused: the running rules stay, and the error says where.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("SELECT *", "SELEC *"),
    )
    .unwrap();
    let (code, out) = grove(&["rules", "reload", "--mqtt", &addr], g.dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("rule `fwd`") && out.contains('^'), "{out}");
    publisher
        .publish("in/x", QoS::AtLeastOnce, false, vec![0, 0, 0, 0])
        .await;
    let p = watch.recv(WAIT).await.expect("the old rules still run");
    assert_eq!(p.topic, "out/v3");
    // With the broken file in place, a restart refuses to start, naming the rule and the position.
    let (status, _) = g.stop_with("TERM");
    assert!(status.success());
    let (code, out) = grove(&["run", "--config", config.to_str().unwrap()], g.dir.path());
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("`rules[0]`: rule `fwd`: the SQL does not compile"),
        "{out}"
    );
    assert!(
        out.contains("SELEC *") && out.contains('^'),
        "the error shows the SQL with a caret: {out}"
    );
}

#[test]
fn rules_test_evaluates_offline() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = grove(
        &[
            "rules",
            "test",
            "--sql",
            "SELECT temp * 2 AS t2, topic(2) AS id FROM 'a/+/b' WHERE temp > 1",
            "--topic",
            "a/x/b",
            "--payload",
            r#"{"temp": 5}"#,
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        serde_json::from_str::<Value>(out.trim()).unwrap(),
        json!({"t2": 10, "id": "x"})
    );
    let (code, out) = grove(
        &[
            "rules",
            "test",
            "--sql",
            "SELECT * FROM 'a' WHERE x > 1",
            "--topic",
            "a",
        ],
        dir.path(),
    );
    assert_eq!(code, 0);
    assert!(out.contains("no output"), "{out}");
    let (code, out) = grove(
        &[
            "rules",
            "test",
            "--sql",
            "SELECT aws_lambda('x', *) FROM 'a'",
            "--topic",
            "a",
        ],
        dir.path(),
    );
    assert_eq!(code, 1);
    assert!(out.contains("aws_lambda") && out.contains('^'), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_with_overlapping_from_filters_each_act_once_per_message() {
    // The rules share one bus link subscribed to both filters; the router sends a session one
    // copy of a message however many of its filters match (MQTT 3.1.1 [MQTT-3.3.5-1], allowed by
    // MQTT 5 §3.3.4), and every rule that matches acts on it once. The rules' outputs leave
    // in the order of the messages, so when the second message's output has arrived, every
    // output of the first has too: a duplicate would be among the first three.
    let g = Gateway::start(
        r#"
[[rules]]
name = "all"
sql = "SELECT n FROM 'ov/#'"
actions = [{ republish = { topic = "out/all", qos = 1 } }]

[[rules]]
name = "one-level"
sql = "SELECT n FROM 'ov/+'"
actions = [{ republish = { topic = "out/one", qos = 1 } }]
"#,
    );
    let mut watch = Client::connect("watch", g.mqtt_port).await;
    watch.subscribe("out/#", QoS::AtLeastOnce).await;
    let device = Client::connect("ov-device", g.mqtt_port).await;
    device
        .publish("ov/a", QoS::AtLeastOnce, false, r#"{"n":1}"#)
        .await;
    // Matches `ov/#` only.
    device
        .publish("ov/a/b", QoS::AtLeastOnce, false, r#"{"n":2}"#)
        .await;
    let got: Vec<(String, Value)> = watch
        .recv_n(3, WAIT)
        .await
        .iter()
        .map(|p| (p.topic.clone(), json_of(p)))
        .collect();
    let first = got[..2].to_vec();
    assert!(
        first.contains(&("out/all".into(), json!({"n": 1})))
            && first.contains(&("out/one".into(), json!({"n": 1}))),
        "{got:?}"
    );
    assert_eq!(got[2], ("out/all".into(), json!({"n": 2})), "{got:?}");
}
