//! End-to-end tests of the device shadow service: the real `grove` binary, real MQTT clients, on
//! AWS's `$aws/things/...` topics and documents.

use std::collections::HashMap;
use std::time::Duration;

use grove_tests::{grove, mosquitto_pub, options, Client, Gateway, MosquittoSub, RawClient};
use rumqttc::QoS;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

/// A device talking to its shadow as an AWS IoT SDK does: subscribed to every response topic of
/// the shadow, correlating answers by client token.
struct Device {
    client: Client,
    prefix: String,
    /// Client tokens are `{id}-{n}`, unique across devices watching the same shadow.
    id: String,
    next: u64,
    /// Answers that arrived for other tokens (or without one), kept in order.
    others: Vec<(String, Value)>,
}

impl Device {
    async fn connect(g: &Gateway, client_id: &str, thing: &str, shadow: Option<&str>) -> Device {
        let prefix = match shadow {
            None => format!("$aws/things/{thing}/shadow"),
            Some(s) => format!("$aws/things/{thing}/shadow/name/{s}"),
        };
        let mut client = Client::connect(client_id, g.mqtt_port).await;
        for filter in ["get/+", "update/+", "delete/+"] {
            client
                .subscribe(&format!("{prefix}/{filter}"), QoS::AtLeastOnce)
                .await;
        }
        Device {
            client,
            prefix,
            id: client_id.to_owned(),
            next: 0,
            others: Vec::new(),
        }
    }

    /// Publishes `body` (with a fresh client token) to `{prefix}/{op}` and returns the answer:
    /// (`accepted` or `rejected`, document).
    async fn call(&mut self, op: &str, mut body: Value) -> (String, Value) {
        self.next += 1;
        let token = format!("{}-{}", self.id, self.next);
        body["clientToken"] = token.clone().into();
        self.publish_raw(op, body.to_string().into_bytes()).await;
        self.answer(op, &token).await
    }

    async fn publish_raw(&self, op: &str, payload: Vec<u8>) {
        self.client
            .publish(
                &format!("{}/{op}", self.prefix),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await;
    }

    /// Waits for `{op}/accepted|rejected` carrying `token`.
    async fn answer(&mut self, op: &str, token: &str) -> (String, Value) {
        loop {
            let p = self
                .client
                .recv(WAIT)
                .await
                .unwrap_or_else(|| panic!("no answer to {op} {token}"));
            let doc: Value = serde_json::from_slice(&p.payload).expect("JSON answer");
            let suffix = p
                .topic
                .strip_prefix(&format!("{}/", self.prefix))
                .unwrap()
                .to_owned();
            if doc["clientToken"] == token
                && (suffix == format!("{op}/accepted") || suffix == format!("{op}/rejected"))
            {
                return (suffix.rsplit('/').next().unwrap().to_owned(), doc);
            }
            self.others.push((suffix, doc));
        }
    }

    /// The next message on `{prefix}/{suffix}`, from what arrived already or what arrives next.
    async fn next_on(&mut self, suffix: &str) -> Value {
        if let Some(i) = self.others.iter().position(|(s, _)| s == suffix) {
            return self.others.remove(i).1;
        }
        loop {
            let p = self
                .client
                .recv(WAIT)
                .await
                .unwrap_or_else(|| panic!("nothing on {suffix}"));
            let got = p
                .topic
                .strip_prefix(&format!("{}/", self.prefix))
                .unwrap()
                .to_owned();
            let doc: Value = serde_json::from_slice(&p.payload).unwrap();
            if got == suffix {
                return doc;
            }
            self.others.push((got, doc));
        }
    }
}

/// Waits until every token in `tokens` has its `update/accepted` or `update/rejected` on
/// `watcher`'s shadow; returns (kind, document) per token.
async fn answers_to(watcher: &mut Device, tokens: &[String]) -> HashMap<String, (String, Value)> {
    let mut got = HashMap::new();
    while got.len() < tokens.len() {
        let p = watcher
            .client
            .recv(WAIT)
            .await
            .unwrap_or_else(|| panic!("answered {} of {}: {got:?}", got.len(), tokens.len()));
        let doc: Value = serde_json::from_slice(&p.payload).expect("JSON answer");
        let kind = match p.topic.rsplit_once("/update/") {
            Some((_, kind @ ("accepted" | "rejected"))) => kind.to_owned(),
            _ => continue,
        };
        if let Some(token) = doc["clientToken"]
            .as_str()
            .filter(|t| tokens.iter().any(|x| x == t))
        {
            assert!(
                got.insert(token.to_owned(), (kind, doc.clone())).is_none(),
                "one answer per request: {doc}"
            );
        }
    }
    got
}

/// A burst of `n` updates of `thing` from `raw`, tokens `{tag}{i}`, each setting `reported.i`.
/// Keep names short and `n` small: the whole burst must stay under 1 KiB (see [`RawClient`]).
async fn burst_of_updates(raw: &mut RawClient, thing: &str, tag: &str, n: usize) -> Vec<String> {
    let tokens: Vec<String> = (0..n).map(|i| format!("{tag}{i}")).collect();
    let requests: Vec<(String, String)> = tokens
        .iter()
        .enumerate()
        .map(|(i, token)| {
            (
                format!("$aws/things/{thing}/shadow/update"),
                json!({"state": {"reported": {"i": i}}, "clientToken": token}).to_string(),
            )
        })
        .collect();
    let bytes: usize = requests
        .iter()
        .map(|(topic, body)| 8 + topic.len() + body.len())
        .sum();
    assert!(
        bytes < 900,
        "a burst of {bytes} bytes may be read in two parts"
    );
    raw.burst(&requests).await;
    tokens
}

/// How many of `tokens` were accepted; every other one must be AWS's 429, token echoed.
fn accepted_else_429(answers: &HashMap<String, (String, Value)>) -> usize {
    let mut accepted = 0;
    for (token, (kind, doc)) in answers {
        if kind == "accepted" {
            accepted += 1;
        } else {
            rejected(&(kind.clone(), doc.clone()), 429, "Too Many Requests");
            assert_eq!(doc["clientToken"], token.as_str(), "{doc}");
        }
    }
    accepted
}

fn rejected(answer: &(String, Value), code: u64, message: &str) {
    assert_eq!(answer.0, "rejected", "{answer:?}");
    assert_eq!(answer.1["code"], code, "{answer:?}");
    assert_eq!(answer.1["message"], message, "{answer:?}");
    assert!(answer.1["timestamp"].is_u64(), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_and_named_shadow_lifecycle_with_delta_to_the_device() {
    let mut g = Gateway::start("");
    for shadow in [None, Some("config")] {
        let mut app = Device::connect(&g, &format!("app-{shadow:?}"), "lamp-1", shadow).await;
        let mut device = Client::connect(&format!("lamp-{shadow:?}"), g.mqtt_port).await;
        let prefix = app.prefix.clone();
        device
            .subscribe(&format!("{prefix}/update/delta"), QoS::AtLeastOnce)
            .await;

        let not_found = app.call("get", json!({})).await;
        let name = shadow.unwrap_or("lamp-1");
        rejected(
            &not_found,
            404,
            &format!("No shadow exists with name: '{name}'"),
        );

        let (kind, doc) = app
            .call(
                "update",
                json!({"state": {"desired": {"on": true, "rgb": [1, 2, 3]}}}),
            )
            .await;
        assert_eq!(kind, "accepted", "{doc}");
        assert_eq!(doc["version"], 1);
        assert_eq!(
            doc["state"],
            json!({"desired": {"on": true, "rgb": [1, 2, 3]}})
        );
        assert!(doc["metadata"]["desired"]["on"]["timestamp"].is_u64());
        assert_eq!(
            doc["metadata"]["desired"]["rgb"].as_array().unwrap().len(),
            3,
            "a timestamp per element"
        );

        let documents = app.next_on("update/documents").await;
        assert_eq!(documents["current"]["version"], 1);
        assert!(documents.get("previous").is_none() || documents["previous"].is_null());

        // The device gets its delta, as a device of AWS IoT would.
        let delta = device.recv(WAIT).await.expect("delta reaches the device");
        let delta: Value = serde_json::from_slice(&delta.payload).unwrap();
        assert_eq!(delta["state"], json!({"on": true, "rgb": [1, 2, 3]}));
        assert_eq!(delta["version"], 1);
        assert_eq!(delta["clientToken"], format!("app-{shadow:?}-2"));

        // The device reports; desired and reported agree, so no new delta.
        let mut dev = Device::connect(&g, &format!("dev-{shadow:?}"), "lamp-1", shadow).await;
        let (kind, doc) = dev
            .call(
                "update",
                json!({"state": {"reported": {"on": true, "rgb": [1, 2, 3]}}}),
            )
            .await;
        assert_eq!((kind.as_str(), &doc["version"]), ("accepted", &json!(2)));
        // `update/documents` of an update to an existing shadow: the state before and after.
        let documents = dev.next_on("update/documents").await;
        assert_eq!(
            documents["previous"]["state"],
            json!({"desired": {"on": true, "rgb": [1, 2, 3]}}),
            "{documents}"
        );
        assert_eq!(documents["previous"]["version"], 1, "{documents}");
        assert!(
            documents["previous"]["metadata"]["desired"]["on"]["timestamp"].is_u64(),
            "{documents}"
        );
        assert_eq!(
            documents["current"]["state"],
            json!({"desired": {"on": true, "rgb": [1, 2, 3]}, "reported": {"on": true, "rgb": [1, 2, 3]}}),
            "{documents}"
        );
        assert_eq!(documents["current"]["version"], 2, "{documents}");
        assert!(
            documents["current"]["metadata"]["reported"]["on"]["timestamp"].is_u64(),
            "{documents}"
        );
        assert_eq!(documents["clientToken"], format!("dev-{shadow:?}-1"));
        assert!(documents["timestamp"].is_u64(), "{documents}");
        assert!(
            device.recv(Duration::from_millis(300)).await.is_none(),
            "no delta when in sync"
        );

        // A null deletes a key; the merge is recursive.
        let (_, doc) = app
            .call(
                "update",
                json!({"state": {"desired": {"rgb": null, "mode": {"a": 1}}}}),
            )
            .await;
        assert_eq!(doc["version"], 3);
        let (kind, doc) = app.call("get", json!({})).await;
        assert_eq!(kind, "accepted");
        assert_eq!(
            doc["state"]["desired"],
            json!({"on": true, "mode": {"a": 1}})
        );
        assert_eq!(doc["state"]["delta"], json!({"mode": {"a": 1}}));
        assert_eq!(doc["version"], 3);

        // Persistence across a restart.
        g.restart();
        let mut app = Device::connect(&g, &format!("app2-{shadow:?}"), "lamp-1", shadow).await;
        let (_, doc) = app.call("get", json!({})).await;
        assert_eq!(doc["version"], 3);
        assert_eq!(
            doc["state"]["reported"],
            json!({"on": true, "rgb": [1, 2, 3]})
        );

        let (kind, doc) = app.call("delete", json!({})).await;
        assert_eq!(kind, "accepted");
        assert_eq!(doc["version"], 3);
        rejected(
            &app.call("get", json!({})).await,
            404,
            &format!("No shadow exists with name: '{name}'"),
        );
        rejected(
            &app.call("delete", json!({})).await,
            404,
            &format!("No shadow exists with name: '{name}'"),
        );
        // Re-created, it continues from the deleted version.
        let (_, doc) = app
            .call("update", json!({"state": {"reported": {"on": false}}}))
            .await;
        assert_eq!(doc["version"], 4, "deleting does not reset the version");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_code_with_aws_messages_and_nothing_stored_on_error() {
    let g = Gateway::start("[shadow]\nmax_state_bytes = 1024\n");
    let mut d = Device::connect(&g, "errors", "err-thing", None).await;
    let (_, doc) = d
        .call("update", json!({"state": {"reported": {"ok": 1}}}))
        .await;
    assert_eq!(doc["version"], 1);

    // AWS's limit is 6 levels in `desired` or `reported`, the section's object being the first:
    // AWS's own example (deepest level empty) is accepted, one level more is not.
    let at_limit =
        json!({"state": {"desired": {"one": {"two": {"three": {"four": {"five": {}}}}}}}});
    let (kind, doc) = d.call("update", at_limit).await;
    assert_eq!(
        (kind.as_str(), &doc["version"]),
        ("accepted", &json!(2)),
        "{doc}"
    );
    let deep = json!({"state": {"reported": {"one": {"two": {"three": {"four": {"five": {"six": {}}}}}}}}});
    let cases: Vec<(Value, u64, &str)> = vec![
        (json!({"nostate": 1}), 400, "Missing required node: state"),
        (json!({"state": 5}), 400, "State node must be an object"),
        (
            json!({"state": {"desired": [1]}}),
            400,
            "Desired node must be an object",
        ),
        (
            json!({"state": {"reported": "x"}}),
            400,
            "Reported node must be an object",
        ),
        (
            json!({"state": {"delta": {}}}),
            400,
            "State contains an invalid node: 'delta'",
        ),
        (
            json!({"state": {"reported": {}}, "version": "one"}),
            400,
            "Invalid version",
        ),
        (
            json!({"state": {"reported": {}}, "version": -1}),
            400,
            "Invalid version",
        ),
        (
            deep,
            400,
            "JSON contains too many levels of nesting; maximum is 6",
        ),
        (
            json!({"state": {"reported": {"ok": 2}}, "version": 1}),
            409,
            "Version conflict",
        ),
        (
            json!({"state": {"reported": {"big": "x".repeat(1100)}}}),
            413,
            "The payload exceeds the maximum size allowed",
        ),
    ];
    for (body, code, message) in cases {
        let answer = d.call("update", body.clone()).await;
        rejected(&answer, code, message);
        assert!(
            answer.1["clientToken"].is_string(),
            "token echoed for {body}"
        );
    }

    // Payloads that are not JSON, or not UTF-8, or with a bad token.
    let raw: Vec<(Vec<u8>, u64, &str)> = vec![
        (b"{not json".to_vec(), 400, "Invalid JSON"),
        (b"[1,2]".to_vec(), 400, "Invalid JSON"),
        (
            vec![0xff, 0xfe, b'{'],
            415,
            "Unsupported documented encoding; supported encoding is UTF-8",
        ),
        (
            json!({"state": {}, "clientToken": "x".repeat(65)})
                .to_string()
                .into_bytes(),
            400,
            "Invalid clientToken",
        ),
    ];
    for (payload, code, message) in raw {
        d.publish_raw("update", payload).await;
        let doc = d.next_on("update/rejected").await;
        assert_eq!(
            (
                doc["code"].as_u64().unwrap(),
                doc["message"].as_str().unwrap()
            ),
            (code, message)
        );
    }

    // A topic with a name AWS would not accept gets a 400 on its rejected topic.
    let mut watcher = Client::connect("bad-name-watcher", g.mqtt_port).await;
    watcher
        .subscribe(
            "$aws/things/bad.name/shadow/update/rejected",
            QoS::AtLeastOnce,
        )
        .await;
    watcher
        .publish(
            "$aws/things/bad.name/shadow/update",
            QoS::AtLeastOnce,
            false,
            r#"{"state":{},"clientToken":"bad-1"}"#,
        )
        .await;
    let doc: Value =
        serde_json::from_slice(&watcher.recv(WAIT).await.expect("400").payload).unwrap();
    rejected(
        &("rejected".into(), doc.clone()),
        400,
        "Invalid thing name: name contains '.'; only a-z, A-Z, 0-9, ':', '_' and '-' are allowed",
    );
    assert_eq!(doc["clientToken"], "bad-1", "{doc}");

    // Nothing of the failed requests was stored.
    let (_, doc) = d.call("get", json!({})).await;
    assert_eq!(doc["version"], 2);
    assert_eq!(doc["state"]["reported"], json!({"ok": 1}));
    assert_eq!(
        g.metric("grove_shadow_requests_total{op=\"update\",code=\"400\"}"),
        11.0
    );
    assert_eq!(
        g.metric("grove_shadow_requests_total{op=\"update\",code=\"413\"}"),
        1.0
    );
    assert_eq!(
        g.metric("grove_shadow_requests_total{op=\"update\",code=\"200\"}"),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_in_flight_requests_from_one_connection_get_429() {
    // AWS's limit is 10 in flight per connection (the default); 4 keeps the bursts small.
    let g = Gateway::start("[shadow]\nmax_inflight_per_client = 4\n");
    let mut watcher = Device::connect(&g, "flood-watcher", "f", None).await;
    let mut flood = RawClient::connect(g.mqtt_addr(), "flood").await;
    // 9 requests written at once. How many are in flight together depends on how the gateway
    // happens to read and batch them (on a loaded machine the first may be answered before the
    // last is read), so the counts are checked against what the answers say, not fixed: the first
    // four are always served, every other request is served or gets 429, and a burst is sent
    // again until one has met the limit.
    let (mut accepted, mut refused) = (0, 0);
    for round in 0..20 {
        let tokens = burst_of_updates(&mut flood, "f", &format!("a{round}-"), 9).await;
        let answers = answers_to(&mut watcher, &tokens).await;
        let served = accepted_else_429(&answers);
        assert!(served >= 4, "{answers:?}");
        for i in 0..4 {
            assert_eq!(
                answers[&format!("a{round}-{i}")].0,
                "accepted",
                "the first four"
            );
        }
        accepted += served;
        refused += 9 - served;
        if served < 9 {
            break;
        }
    }
    assert!(refused > 0, "no burst of 9 ever had more than 4 in flight");
    // Once answered, they are no longer in flight: a burst of 4 is served in full (however the
    // connection happens to read it).
    let tokens = burst_of_updates(&mut flood, "f", "b", 4).await;
    let answers = answers_to(&mut watcher, &tokens).await;
    assert_eq!(accepted_else_429(&answers), 4, "{answers:?}");
    let (_, doc) = watcher.call("get", json!({})).await;
    assert_eq!(
        doc["version"],
        accepted + 4,
        "exactly the accepted updates were applied"
    );
    assert_eq!(
        g.metric("grove_shadow_requests_total{op=\"update\",code=\"429\"}"),
        refused as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_waits_for_each_answer_is_never_limited() {
    // The tightest limit: one request in flight per client.
    let g = Gateway::start("[shadow]\nmax_inflight_per_client = 1\n");
    let mut patient = Device::connect(&g, "patient", "calm-thing", None).await;
    let mut watcher = Device::connect(&g, "burst-watcher", "busy", None).await;
    let mut refused = 0;
    for round in 1..=10u64 {
        // Another client's burst on the side is limited (how much depends on how the gateway
        // happens to read it: at least its first request is served)...
        let mut flood = RawClient::connect(g.mqtt_addr(), &format!("burst-{round}")).await;
        let tokens = burst_of_updates(&mut flood, "busy", &format!("r{round}-"), 4).await;
        // ...while the client that waits for each answer never is.
        for op in ["update", "get"] {
            let body = match op {
                "update" => json!({"state": {"reported": {"round": round}}}),
                _ => json!({}),
            };
            let (kind, doc) = patient.call(op, body).await;
            assert_eq!(kind, "accepted", "{op} in round {round}: {doc}");
            assert_eq!(doc["version"], round, "{doc}");
        }
        let answers = answers_to(&mut watcher, &tokens).await;
        let served = accepted_else_429(&answers);
        assert!(served >= 1, "{answers:?}");
        refused += 4 - served;
    }
    assert!(
        refused > 0,
        "the bursts never met the limit: nothing was tested"
    );
    assert_eq!(
        g.metric("grove_shadow_requests_total{op=\"update\",code=\"429\"}"),
        refused as f64,
        "only the bursts' extra requests were refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_versioned_updates_exactly_one_wins() {
    let g = Gateway::start("");
    let mut a = Device::connect(&g, "writer-a", "contested", None).await;
    let mut b = Device::connect(&g, "writer-b", "contested", None).await;
    a.call("update", json!({"state": {"desired": {"owner": "nobody"}}}))
        .await;
    for round in 1..=20u64 {
        let body = |who: &str| json!({"state": {"desired": {"owner": who}}, "version": round});
        let (ra, rb) = tokio::join!(a.call("update", body("a")), b.call("update", body("b")));
        let wins = [&ra, &rb].iter().filter(|r| r.0 == "accepted").count();
        assert_eq!(wins, 1, "round {round}: {ra:?} {rb:?}");
        let loser = if ra.0 == "accepted" { &rb } else { &ra };
        rejected(loser, 409, "Version conflict");
    }
    let (_, doc) = a.call("get", json!({})).await;
    assert_eq!(doc["version"], 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_updates_survive_kill_9() {
    // A limit no burst reaches, so every update is accepted and version n holds `n`.
    let mut g = Gateway::start("[shadow]\nmax_inflight_per_client = 100000\n");
    let d = Device::connect(&g, "hammer", "durable", None).await;
    // Fire updates as fast as possible, each with a counter.
    let sender = d.client.client.clone();
    let topic = format!("{}/update", d.prefix);
    let fire = tokio::spawn(async move {
        for i in 1..=100_000u64 {
            let body = json!({"state": {"reported": {"n": i}}, "clientToken": format!("k{i}")});
            if sender
                .publish(&topic, QoS::AtLeastOnce, false, body.to_string())
                .await
                .is_err()
            {
                break;
            }
        }
    });
    // Read every acknowledgement until the connection is dead, recording the highest; the kill
    // happens while this runs, so nothing acknowledged before it is missed.
    let (progress, mut acknowledged) = tokio::sync::watch::channel(0u64);
    let mut client = d.client;
    let reader = tokio::spawn(async move {
        let mut highest = (0u64, 0u64); // (version, n)
        while let Some(p) = client.recv(Duration::from_secs(30)).await {
            if !p.topic.ends_with("update/accepted") {
                continue;
            }
            let doc: Value = serde_json::from_slice(&p.payload).unwrap();
            let v = (
                doc["version"].as_u64().unwrap(),
                doc["state"]["reported"]["n"].as_u64().unwrap(),
            );
            assert!(
                v.0 > highest.0,
                "versions increase: {v:?} after {highest:?}"
            );
            assert_eq!(v.0, v.1, "update n is version n");
            highest = v;
            progress.send_replace(v.0);
        }
        highest
    });
    tokio::time::timeout(WAIT, acknowledged.wait_for(|v| *v >= 300))
        .await
        .expect("the stream got going")
        .expect("reader alive");
    assert!(
        !fire.is_finished(),
        "updates are still streaming at the kill"
    );
    // SIGKILL mid-stream: no chance to flush anything.
    tokio::task::block_in_place(|| g.stop_with("KILL"));
    let highest = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the reader ends when the connection dies")
        .expect("reader");
    fire.abort();
    tokio::task::block_in_place(|| g.restart_stopped());
    let mut d = Device::connect(&g, "after", "durable", None).await;
    let (_, doc) = d.call("get", json!({})).await;
    let stored = (
        doc["version"].as_u64().unwrap(),
        doc["state"]["reported"]["n"].as_u64().unwrap(),
    );
    assert!(
        stored.0 >= highest.0,
        "acknowledged {highest:?} but stored {stored:?}"
    );
    // Version and value move together: the stored version holds the values of its update, so the
    // last acknowledged update's values are there too (or a later update's, acknowledged or not).
    assert_eq!(
        stored.0, stored.1,
        "version {} holds n = {}",
        stored.0, stored.1
    );
}

#[test]
fn mosquitto_clients_use_shadows_too() {
    let g = Gateway::start("");
    let port = g.mqtt_port.to_string();
    let sub = MosquittoSub::start(&[
        "-p",
        &port,
        "-t",
        "$aws/things/mq/shadow/update/delta",
        "-C",
        "1",
        "-W",
        "20",
        "-q",
        "1",
    ]);
    mosquitto_pub(
        g.mqtt_port,
        &[
            "-t",
            "$aws/things/mq/shadow/update",
            "-q",
            "1",
            "-m",
            r#"{"state":{"desired":{"fan":"high"}}}"#,
        ],
    );
    let (messages, ok) = sub.finish();
    assert!(ok, "mosquitto_sub timed out: {messages:?}");
    let delta: Value = serde_json::from_str(&messages.concat()).expect("a delta document");
    assert_eq!(delta["state"], json!({"fan": "high"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grove_shadow_command_drives_a_running_gateway() {
    let g = Gateway::start("");
    let addr = format!("127.0.0.1:{}", g.mqtt_port);
    let dir = g.dir.path();
    let (code, out) = grove(
        &[
            "shadow",
            "--mqtt",
            &addr,
            "update",
            "pump",
            "--json",
            r#"{"state":{"desired":{"rpm":900}}}"#,
        ],
        dir,
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("pump: updated to version 1"), "{out}");
    let (code, out) = grove(
        &[
            "shadow",
            "--mqtt",
            &addr,
            "update",
            "pump",
            "--name",
            "limits",
            "--json",
            r#"{"state":{"reported":{"max":5}}}"#,
        ],
        dir,
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = grove(&["shadow", "--mqtt", &addr, "get", "pump"], dir);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("pump: version 1") && out.contains("delta:") && out.contains("900"),
        "{out}"
    );
    let (code, out) = grove(&["shadow", "--mqtt", &addr, "get", "pump", "--json"], dir);
    assert_eq!(code, 0, "{out}");
    let raw: Value = serde_json::from_str(out.trim()).expect("--json prints the raw document");
    assert_eq!(raw["state"]["desired"]["rpm"], 900);
    // --config finds the listener too.
    let cfg = g.config_path();
    let (code, out) = grove(
        &[
            "shadow",
            "--config",
            cfg.to_str().unwrap(),
            "list",
            "--json",
        ],
        dir,
    );
    assert_eq!(code, 0, "{out}");
    let list: Value = serde_json::from_str(out.trim()).unwrap();
    let names: Vec<_> = list["shadows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["thing"].as_str().unwrap().to_owned(),
                s["shadow"].as_str().map(str::to_owned),
                s["version"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("pump".into(), None, 1),
            ("pump".into(), Some("limits".into()), 1)
        ]
    );
    // The readable listing: a header, then a row per shadow.
    let (code, out) = grove(&["shadow", "--mqtt", &addr, "list"], dir);
    assert_eq!(code, 0, "{out}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["THING", "SHADOW", "VERSION"],
            vec!["pump", "(classic)", "1"],
            vec!["pump", "limits", "1"]
        ],
        "{out}"
    );
    let (code, out) = grove(&["shadow", "--mqtt", &addr, "delete", "pump"], dir);
    assert_eq!(code, 0, "{out}");
    // A deleted shadow is no longer listed (its tombstone only keeps the version); the named one is.
    let (code, out) = grove(&["shadow", "--mqtt", &addr, "list", "--json"], dir);
    assert_eq!(code, 0, "{out}");
    let list: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        list["shadows"],
        json!([{"thing": "pump", "shadow": "limits", "version": 1}]),
        "{out}"
    );
    assert!(
        list.get("clientToken").is_some_and(Value::is_string),
        "{out}"
    );
    // A list request without a client token gets an answer without one (not `"clientToken": null`).
    let mut lister = Client::connect("lister", g.mqtt_port).await;
    lister
        .subscribe("$grove/shadows/list/+", QoS::AtLeastOnce)
        .await;
    lister
        .publish("$grove/shadows/list", QoS::AtLeastOnce, false, "{}")
        .await;
    let answer = lister.recv(WAIT).await.expect("a list answer");
    assert_eq!(answer.topic, "$grove/shadows/list/accepted");
    let doc: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(doc["shadows"].as_array().map(Vec::len), Some(1), "{doc}");
    assert!(doc.get("clientToken").is_none(), "{doc}");
    let (code, out) = grove(&["shadow", "--mqtt", &addr, "get", "pump"], dir);
    assert_eq!(code, 1);
    assert!(
        out.contains("404 No shadow exists with name: 'pump'"),
        "{out}"
    );
    let (code, out) = grove(
        &[
            "shadow", "--mqtt", &addr, "update", "pump", "--json", "{oops",
        ],
        dir,
    );
    assert_eq!(code, 1);
    assert!(out.contains("--json is not valid JSON"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_devices_updating_many_shadows_all_converge() {
    let g = Gateway::start("");
    let mut tasks = Vec::new();
    for dev in 0..20 {
        let port = g.mqtt_port;
        tasks.push(tokio::spawn(async move {
            let client = Client::connect_with(options(&format!("fleet-{dev}"), port)).await;
            let mut d = Device {
                client,
                prefix: format!("$aws/things/fleet-{dev}/shadow"),
                id: format!("fleet-{dev}"),
                next: 0,
                others: Vec::new(),
            };
            for filter in ["get/+", "update/+"] {
                d.client
                    .subscribe(&format!("{}/{filter}", d.prefix), QoS::AtLeastOnce)
                    .await;
            }
            for i in 0..25u64 {
                let (kind, doc) = d
                    .call("update", json!({"state": {"reported": {"i": i}}}))
                    .await;
                assert_eq!(
                    (kind.as_str(), doc["version"].as_u64()),
                    ("accepted", Some(i + 1))
                );
            }
            let (_, doc) = d.call("get", json!({})).await;
            assert_eq!(doc["version"], 25);
            assert_eq!(doc["state"]["reported"]["i"], 24);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // 500 accepted updates (and 20 gets, which write nothing): at least one commit, and never
    // more than one per update (group commit may take several in one).
    let commits = g.metric("grove_shadow_commits_total");
    assert!((1.0..=500.0).contains(&commits), "{commits} commits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_stored_shadow_answers_500_and_others_keep_working() {
    let mut g = Gateway::start("");
    let mut d = Device::connect(&g, "pre", "broken", None).await;
    d.call("update", json!({"state": {"reported": {"x": 1}}}))
        .await;
    let mut ok = Device::connect(&g, "pre-ok", "fine", None).await;
    ok.call("update", json!({"state": {"reported": {"y": 1}}}))
        .await;
    // Damage one stored document while the gateway is stopped.
    g.stop_with("TERM");
    let db = rusqlite::Connection::open(g.data_dir().join("grove.db")).unwrap();
    db.execute(
        "UPDATE shadows SET document = '{broken' WHERE thing = 'broken'",
        [],
    )
    .unwrap();
    drop(db);
    g.restart_stopped();
    let mut d = Device::connect(&g, "post", "broken", None).await;
    rejected(
        &d.call("get", json!({})).await,
        500,
        "Internal service failure",
    );
    rejected(
        &d.call("update", json!({"state": {"reported": {"x": 2}}}))
            .await,
        500,
        "Internal service failure",
    );
    let mut ok = Device::connect(&g, "post-ok", "fine", None).await;
    let (kind, doc) = ok.call("get", json!({})).await;
    assert_eq!((kind.as_str(), &doc["version"]), ("accepted", &json!(1)));
    assert!(g.log().contains("a stored shadow is unreadable"), "logged");
}

/// A gateway whose database refuses any write of the thing `doomed` (a trigger that aborts it,
/// added while the gateway was stopped): a fault injected into the shadow service's commits.
fn gateway_that_cannot_store_doomed() -> Gateway {
    let mut g = Gateway::start("");
    g.stop_with("TERM");
    let db = rusqlite::Connection::open(g.data_dir().join("grove.db")).unwrap();
    db.execute_batch(
        "CREATE TRIGGER doomed BEFORE INSERT ON shadows WHEN NEW.thing = 'doomed'
         BEGIN SELECT RAISE(ABORT, 'injected fault'); END;",
    )
    .unwrap();
    drop(db);
    g.restart_stopped();
    g
}

/// The shadow service's commit-failure path. A fault injected into the database (a trigger that
/// aborts any write of the thing `doomed`) makes the commit of a batch fail: every request of the
/// batch that wrote gets 500, also the one that was fine on its own (it shared the commit), and
/// nothing of the batch stays in the service's cache: the next read sees what is durable.
///
/// The two updates are written at once, but whether the service takes them as one batch depends
/// on how the gateway happens to read them (on a loaded machine it may take the first alone), so
/// the burst is sent again, with a new thing beside `doomed`, until they shared a commit; every
/// answer is checked against what is stored either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_answers_500_to_its_whole_batch_and_keeps_none_of_it() {
    let g = gateway_that_cannot_store_doomed();
    let mut doomed = Device::connect(&g, "w-doomed", "doomed", None).await;
    let mut raw = RawClient::connect(g.mqtt_addr(), "burst").await;
    let update = |thing: &str, token: &str| {
        (
            format!("$aws/things/{thing}/shadow/update"),
            json!({"state": {"reported": {"on": true}}, "clientToken": token}).to_string(),
        )
    };
    let mut shared = false;
    for attempt in 0..20 {
        let thing = format!("fine-{attempt}");
        let mut fine = Device::connect(&g, &format!("w-{thing}"), &thing, None).await;
        raw.burst(&[update("doomed", "d"), update(&thing, "f")])
            .await;
        let d = answers_to(&mut doomed, &["d".to_owned()])
            .await
            .remove("d")
            .unwrap();
        rejected(&d, 500, "Internal service failure");
        let f = answers_to(&mut fine, &["f".to_owned()])
            .await
            .remove("f")
            .unwrap();
        if f.0 == "accepted" {
            // In a commit of its own: it is stored, as its answer said.
            let (kind, doc) = fine.call("get", json!({})).await;
            assert_eq!((kind.as_str(), &doc["version"]), ("accepted", &json!(1)));
            continue;
        }
        rejected(&f, 500, "Internal service failure");
        // Nothing of the failed batch is believed: the thing does not exist, and its first
        // accepted update is version 1.
        rejected(
            &fine.call("get", json!({})).await,
            404,
            &format!("No shadow exists with name: '{thing}'"),
        );
        let (kind, doc) = fine
            .call("update", json!({"state": {"reported": {"on": true}}}))
            .await;
        assert_eq!((kind.as_str(), &doc["version"]), ("accepted", &json!(1)));
        shared = true;
        break;
    }
    assert!(shared, "the two updates never shared a commit in 20 bursts");
    g.wait_log(&["shadow commit failed", "injected fault"], 1);
}

/// The shadow service answers the next batches while an earlier one commits; when that commit
/// fails, what was answered on top of it must not survive it. Updates of `x` follow, without
/// waiting, a batch whose commit fails (it also wrote `doomed`): whichever of them were answered
/// before the failure was known fail with it (500), the others start again from what is durable.
/// So however the requests fell into batches, the accepted versions are exactly 1..=k, and the
/// shadow read afterwards is at version k, with the value of the last accepted update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_built_on_a_failed_commit_are_never_accepted_beyond_what_is_stored() {
    let g = gateway_that_cannot_store_doomed();
    let mut x = Device::connect(&g, "w-x", "x", None).await;
    let mut raw = RawClient::connect(g.mqtt_addr(), "burst").await;
    let update = |thing: &str, token: String| {
        (
            format!("$aws/things/{thing}/shadow/update"),
            json!({"state": {"reported": {"t": token}}, "clientToken": token}).to_string(),
        )
    };
    raw.burst(&[update("doomed", "d".into()), update("x", "x0".into())])
        .await;
    let tokens: Vec<String> = (0..8).map(|i| format!("x{i}")).collect();
    for token in &tokens[1..] {
        raw.burst(&[update("x", token.clone())]).await;
    }
    let answers = answers_to(&mut x, &tokens).await;
    rejected(&answers["x0"], 500, "Internal service failure");
    let mut accepted: Vec<(u64, &str)> = Vec::new();
    for token in &tokens {
        match &answers[token] {
            (kind, doc) if kind == "accepted" => {
                accepted.push((doc["version"].as_u64().unwrap(), token));
            }
            answer => rejected(answer, 500, "Internal service failure"),
        }
    }
    accepted.sort();
    let versions: Vec<u64> = accepted.iter().map(|(v, _)| *v).collect();
    assert_eq!(versions, (1..=accepted.len() as u64).collect::<Vec<_>>());
    let got = x.call("get", json!({})).await;
    match accepted.last() {
        None => rejected(&got, 404, "No shadow exists with name: 'x'"),
        Some((version, token)) => {
            assert_eq!(got.0, "accepted", "{got:?}");
            assert_eq!(got.1["version"], *version, "{got:?}");
            assert_eq!(got.1["state"]["reported"]["t"], *token, "{got:?}");
        }
    }
}
