//! End-to-end tests of policy holes and amplification (issue 15): sync invocations answered where
//! the caller may not publish, retained requests on reserved topics, a rule feeding itself, and
//! the window between `grove device remove` and the end of the device's connection. Each test
//! makes the attack against the real `grove` binary and asserts its bound.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use grove_tests::{
    eventually, free_port, grove_device, mosquitto_client, Client, Devices, Gateway,
};
use rumqttc::QoS;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

/// A device allowed to invoke one function and to use its own space, nothing else.
const FN_POLICY: &str = "[[policies]]\nname = \"caller\"\n\
    publish = [\"$grove/functions/ok/invoke\", \"devices/${client_id}/#\"]\n\
    subscribe = [\"devices/${client_id}/#\"]\nreceive = [\"devices/${client_id}/#\"]\n";

/// A gateway with the harness's anonymous loopback listener (the observer's) and a password
/// listener; `devices` are registered (before it starts) with the password "pw" and the policy
/// `caller`.
fn password_site(devices: &[&str], extra: &str) -> (Gateway, u16) {
    let registry = Devices::new(FN_POLICY);
    for id in devices {
        registry.run(
            &["add", id, "--password-stdin", "--policy", "caller"],
            Some("pw\n"),
        );
    }
    let port = free_port();
    let listener = format!(
        "{FN_POLICY}{extra}\n[[broker.listeners]]\nname = \"pw\"\nbind = \"127.0.0.1:{port}\"\n\
         auth = \"password\"\npolicy = \"caller\"\n"
    );
    (registry.start(&listener), port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_invoke_answers_only_where_the_caller_may_publish() {
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let (g, port) = password_site(&["dev-a", "dev-b"], "");
    let mut observer = Client::connect("observer", g.mqtt_port).await;
    observer
        .subscribe_many(&["#", "$aws/#"], QoS::AtLeastOnce)
        .await;

    let mut o = MqttOptions::new("dev-a", "127.0.0.1", port);
    o.set_credentials("dev-a", "pw");
    let (client, mut events) = AsyncClient::new(o, 100);
    client
        .subscribe("devices/dev-a/#", Q5::AtLeastOnce)
        .await
        .unwrap();
    // The attacks, each with its expected refusal, then the legitimate request last.
    let requests = [
        ("devices/dev-b/cmd", PubAckReason::NotAuthorized),
        ("a/#", PubAckReason::TopicNameInvalid),
        ("+", PubAckReason::TopicNameInvalid),
        (
            "$aws/things/dev-b/shadow/delete",
            PubAckReason::TopicNameInvalid,
        ),
        ("devices/dev-a/answers", PubAckReason::Success),
    ];
    for (reply, _) in &requests {
        let props = PublishProperties {
            response_topic: Some((*reply).to_owned()),
            ..Default::default()
        };
        client
            .publish_with_properties(
                "$grove/functions/ok/invoke",
                Q5::AtLeastOnce,
                false,
                "{}",
                props,
            )
            .await
            .unwrap();
    }
    let (mut reasons, mut answer) = (Vec::new(), None);
    while reasons.len() < requests.len() || answer.is_none() {
        match tokio::time::timeout(WAIT, events.poll())
            .await
            .expect("answers")
            .expect("the connection stays up")
        {
            Event::Incoming(P5::PubAck(ack)) => reasons.push(ack.reason),
            Event::Incoming(P5::Publish(p)) => answer = Some(p),
            _ => {}
        }
    }
    let expected: Vec<_> = requests.iter().map(|(_, r)| *r).collect();
    assert_eq!(reasons, expected);
    let answer = answer.unwrap();
    assert_eq!(&answer.topic[..], b"devices/dev-a/answers");
    let doc: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(
        doc["status"], "error",
        "no function `ok` is deployed: {doc}"
    );

    // MQTT 3.1.1, the replyTo envelope: another device's command topic closes the connection.
    let pub_311 = mosquitto_client(
        "mosquitto_pub",
        port,
        &[
            "-V",
            "mqttv311",
            "-i",
            "dev-b",
            "-u",
            "dev-b",
            "-P",
            "pw",
            "-q",
            "1",
            "-t",
            "$grove/functions/ok/invoke",
            "-m",
            r#"{"replyTo": "devices/dev-a/cmd", "payload": 1}"#,
        ],
    );
    assert!(
        !pub_311.status.success(),
        "mosquitto_pub got its PUBACK: {pub_311:?}"
    );
    g.wait_metric("grove_broker_denied_total{action=\"publish\"}", |v| {
        v >= 2.0
    });
    g.wait_metric(
        "grove_broker_refused_total{reason=\"invalid_reply_topic\"}",
        |v| v >= 3.0,
    );

    // The observer sees the answer of the legitimate request, and nothing else from the
    // gateway: no answer on another device's topic, on a wildcard "topic", or on a shadow.
    let mut seen = Vec::new();
    while let Some(p) = observer.recv(Duration::from_millis(500)).await {
        seen.push(p.topic);
    }
    assert_eq!(seen, ["devices/dev-a/answers"], "{}", g.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_requests_on_reserved_topics_are_refused_and_never_replayed() {
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason};
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let mut g = Gateway::start("");
    let mut device = Client::connect("lamp", g.mqtt_port).await;
    device
        .subscribe_many(
            &[
                "$aws/things/lamp/shadow/update/accepted",
                "$aws/things/lamp/shadow/get/accepted",
            ],
            QoS::AtLeastOnce,
        )
        .await;
    let update = r#"{"state": {"desired": {"on": true}}}"#;
    device
        .publish(
            "$aws/things/lamp/shadow/update",
            QoS::AtLeastOnce,
            false,
            update,
        )
        .await;
    let accepted = device.recv(WAIT).await.expect("update accepted");
    assert_eq!(
        serde_json::from_slice::<Value>(&accepted.payload).unwrap()["version"],
        1
    );

    // MQTT 5: the retained request gets PUBACK 0x83 and the connection stays.
    let (client, mut events) =
        AsyncClient::new(MqttOptions::new("lamp5", "127.0.0.1", g.mqtt_port), 10);
    let stale = r#"{"state": {"desired": {"on": false}}}"#;
    client
        .publish(
            "$aws/things/lamp/shadow/update",
            Q5::AtLeastOnce,
            true,
            stale,
        )
        .await
        .unwrap();
    let reason = loop {
        match tokio::time::timeout(WAIT, events.poll())
            .await
            .expect("PUBACK")
            .expect("the connection stays up")
        {
            Event::Incoming(P5::PubAck(ack)) => break ack.reason,
            _ => continue,
        }
    };
    assert_eq!(reason, PubAckReason::ImplementationSpecificError);
    // MQTT 3.1.1 (a stock client): the connection is closed, no PUBACK.
    let out = mosquitto_client(
        "mosquitto_pub",
        g.mqtt_port,
        &[
            "-V",
            "mqttv311",
            "-i",
            "lamp311",
            "-q",
            "1",
            "-r",
            "-t",
            "$aws/things/lamp/shadow/update",
            "-m",
            stale,
        ],
    );
    assert!(
        !out.status.success(),
        "mosquitto_pub got its PUBACK: {out:?}"
    );
    g.wait_metric(
        "grove_broker_refused_total{reason=\"retain_reserved\"}",
        |v| v >= 2.0,
    );
    // A retained will on a reserved topic is refused at CONNECT.
    let will = mosquitto_client(
        "mosquitto_sub",
        g.mqtt_port,
        &[
            "-V",
            "mqttv311",
            "-i",
            "lampwill",
            "-t",
            "x",
            "-C",
            "1",
            "-W",
            "2",
            "--will-topic",
            "$aws/things/lamp/shadow/update",
            "--will-retain",
            "--will-payload",
            stale,
        ],
    );
    let refused = g.wait_metric(
        "grove_broker_refused_total{reason=\"retain_reserved\"}",
        |v| v >= 3.0,
    );
    assert_eq!(refused, 3.0, "the retained will was refused: {will:?}");
    drop(device);

    // Three restarts replay nothing: the shadow stays at version 1, desired.on true, and a late
    // subscriber gets no retained request.
    for _ in 0..3 {
        g.restart();
    }
    let mut late = Client::connect("late", g.mqtt_port).await;
    late.subscribe_many(
        &[
            "$aws/things/lamp/shadow/update",
            "$aws/things/lamp/shadow/get/accepted",
        ],
        QoS::AtLeastOnce,
    )
    .await;
    late.publish("$aws/things/lamp/shadow/get", QoS::AtLeastOnce, false, "")
        .await;
    let got = late.recv(WAIT).await.expect("get accepted");
    assert_eq!(
        &got.topic[..],
        "$aws/things/lamp/shadow/get/accepted",
        "a retained request was replayed"
    );
    let doc: Value = serde_json::from_slice(&got.payload).unwrap();
    assert_eq!(doc["version"], 1, "{doc}");
    assert_eq!(doc["state"]["desired"]["on"], true, "{doc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_republishing_four_times_into_its_own_from_stays_within_the_bound() {
    let rules = "[[rules]]\nname = \"amp\"\nsql = \"SELECT * FROM 'amp/#'\"\nactions = [\
        { republish = { topic = \"amp/x\" } }, { republish = { topic = \"amp/x\" } }, \
        { republish = { topic = \"amp/x\" } }, { republish = { topic = \"amp/x\" } }]\n";
    let g = Gateway::start(rules);
    let mut watch = Client::connect("watch", g.mqtt_port).await;
    watch.subscribe("amp/#", QoS::AtMostOnce).await;
    let device = Client::connect("d", g.mqtt_port).await;
    device
        .publish("amp/start", QoS::AtLeastOnce, false, "x")
        .await;
    // Each step makes 4 messages and advances them 2 hops: 4 + 16 + 64 + 256 = 340 messages
    // (87,381 before the bound); the 256 at the hop limit make none.
    let cut = g.wait_metric("grove_rule_hop_dropped_total{rule=\"amp\"}", |v| v >= 256.0);
    assert_eq!(cut, 256.0);
    assert_eq!(g.metric("grove_rule_outputs_total{rule=\"amp\"}"), 85.0);
    let seen = watch.recv_n(1 + 340, WAIT).await;
    assert_eq!(seen.iter().filter(|p| p.topic == "amp/x").count(), 340);
    // 256 cuts, one WARN line (the others are counted in the next one, 10 s later).
    assert_eq!(
        g.log()
            .matches("republish loop cut at the hop limit")
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_of_a_removed_device_is_accepted_once_grove_device_remove_returns() {
    use rumqttc::{AsyncClient, Event, LastWill, Outgoing, Packet};
    let (g, port) = password_site(&["dev-a"], "");
    let mut observer = Client::connect("observer", g.mqtt_port).await;
    observer
        .subscribe_many(&["devices/#", "gone/#"], QoS::AtLeastOnce)
        .await;
    let mut o = grove_tests::options("dev-a", port);
    o.set_credentials("dev-a", "pw");
    o.set_last_will(LastWill::new(
        "devices/dev-a/will",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let (client, mut events) = AsyncClient::new(o, 100);
    let (sent, acked) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (s, a) = (sent.clone(), acked.clone());
    let driver = tokio::spawn(async move {
        while let Ok(ev) = events.poll().await {
            match ev {
                Event::Outgoing(Outgoing::Publish(_)) => {
                    s.fetch_add(1, Ordering::SeqCst);
                }
                Event::Incoming(Packet::PubAck(_)) => {
                    a.fetch_add(1, Ordering::SeqCst);
                }
                _ => {}
            }
        }
    });
    // Flat out: each payload is its sequence number, from 1.
    let publisher = tokio::spawn(async move {
        for seq in 1u64.. {
            if client
                .publish("devices/dev-a/t", QoS::AtLeastOnce, false, seq.to_string())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    eventually(WAIT, || {
        let n = acked.load(Ordering::SeqCst);
        (n >= 200).then_some(()).ok_or(format!("{n} PUBACKs"))
    });
    let out = grove_device(&g.config_path(), &["remove", "dev-a"], None);
    let (sent_then, acked_then) = (sent.load(Ordering::SeqCst), acked.load(Ordering::SeqCst));
    assert!(
        out.contains("1 connection(s) of revoked devices closed"),
        "{out}"
    );
    // The connection is already closed: the client's event loop ends.
    tokio::time::timeout(WAIT, driver)
        .await
        .expect("the connection ended")
        .unwrap();
    publisher.abort();
    let acked_total = acked.load(Ordering::SeqCst);
    // No PUBACK written after the command returned: whatever arrived later was in flight, and
    // covers at most what had been sent by then.
    assert!(
        acked_total <= sent_then,
        "{acked_total} PUBACKs for {sent_then} sent ({acked_then} by the return)"
    );
    // The subscriber got only messages sent before the return, and no will.
    let mut max_seq = 0u64;
    let mut routed = 0u64;
    while let Some(p) = observer.recv(Duration::from_millis(500)).await {
        assert_ne!(
            p.topic, "devices/dev-a/will",
            "the revoked device's will was published"
        );
        max_seq = max_seq.max(String::from_utf8_lossy(&p.payload).parse().unwrap());
        routed += 1;
    }
    assert!(routed >= 200, "{routed} messages routed");
    assert!(
        max_seq <= sent_then,
        "message {max_seq} routed, {sent_then} sent by the return"
    );
    assert_eq!(
        g.metric("grove_broker_refused_total{reason=\"revoked\"}"),
        1.0
    );
}
