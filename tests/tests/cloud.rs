//! End-to-end tests of cloud sync: the real `grove` binary, with a real, separate mosquitto as the
//! cloud broker, for store-and-forward and for shadow sync.
//!
//! For shadows the cloud side is mosquitto plus [`AwsShadows`], a Device Shadow service written in
//! the harness from AWS's documentation (versions, 409 on a stale version, `documents`, `delta`,
//! 404 on a missing shadow, metadata), not Grove's own shadow code: a misreading of AWS's semantics
//! shared by both sides could not pass (issue 16). The uplink between the edge gateway and that
//! cloud goes through a small TCP proxy in the test, so "offline" is a cut network while the
//! gateway, the cloud (and the device) stay up.

use std::path::Path;
use std::time::{Duration, Instant};

use grove_tests::{
    blocking, eventually, free_port, grove, mosquitto_client, mosquitto_pub, options, AwsShadows,
    Client, Gateway, Mosquitto, TlsFront, WAIT,
};
use rumqttc::QoS;
use serde_json::{json, Value};

/// The `[cloud]` section for a plain TCP cloud on `port`, plus `more`.
fn cloud_toml(port: u16, more: &str) -> String {
    format!(
        "[cloud]\nhost = \"127.0.0.1\"\nport = {port}\nplain_tcp = true\nclient_id = \"edge-1\"\nthing = \"edge-1\"\nmax_backoff_ms = 1000\n{more}\n"
    )
}

/// `grove cloud status --json` against a running gateway.
fn cloud_status(g: &Gateway) -> Value {
    let addr = g.mqtt_addr().to_string();
    let (code, out) = grove(
        &["cloud", "status", "--json", "--mqtt", &addr],
        g.dir.path(),
    );
    assert_eq!(code, 0, "{out}");
    serde_json::from_str(out.lines().last().unwrap_or_default()).expect("status JSON")
}

/// A persistent-session observer on the cloud broker (it keeps receiving across a broker
/// restart by reconnecting with the same id).
async fn observer(port: u16, filter: &str) -> Client {
    let mut o = options("observer", port);
    o.set_clean_session(false);
    let mut c = Client::connect_with(o).await;
    c.subscribe(filter, QoS::AtLeastOnce).await;
    c
}

async fn reconnect_observer(port: u16) -> Client {
    let mut o = options("observer", port);
    o.set_clean_session(false);
    Client::connect_with(o).await
}

/// The messages a publish at the cloud carries, as (topic, payload): itself, or, on a batch topic
/// (`batch`), the elements of its JSON array (`{"topic", "ts", "payload" | "payload_base64"}`).
fn unbatch(p: &rumqttc::Publish, batch: Option<&str>) -> Vec<(String, Vec<u8>)> {
    use base64::Engine as _;
    if batch != Some(p.topic.as_str()) {
        return vec![(p.topic.clone(), p.payload.to_vec())];
    }
    let array: Vec<Value> = serde_json::from_slice(&p.payload)
        .unwrap_or_else(|e| panic!("a batch is a JSON array ({e}): {:?}", p.payload));
    array
        .iter()
        .map(|e| {
            let payload = match (&e["payload"], e["payload_base64"].as_str()) {
                (Value::Null, Some(b64)) => base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .expect("base64"),
                (json, None) => json.to_string().into_bytes(),
                _ => panic!("an element has payload or payload_base64: {e}"),
            };
            assert!(e["ts"].as_u64().is_some(), "an element has its time: {e}");
            (e["topic"].as_str().expect("topic").to_owned(), payload)
        })
        .collect()
}

/// Receives until every one of `expected` distinct payloads has arrived; returns the payloads of
/// each topic in arrival order (duplicates included).
async fn collect(
    c: &mut Client,
    expected: usize,
) -> std::collections::BTreeMap<String, Vec<String>> {
    collect_batched(c, expected, None).await
}

/// [`collect`], where publishes on `batch` are batches whose elements count one by one.
async fn collect_batched(
    c: &mut Client,
    expected: usize,
    batch: Option<&str>,
) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut by_topic: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut distinct = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while distinct.len() < expected {
        let p = tokio::time::timeout_at(deadline, c.recv(Duration::from_secs(90)))
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                panic!(
                    "received {} of {expected} distinct messages",
                    distinct.len()
                )
            });
        for (topic, payload) in unbatch(&p, batch) {
            let payload = String::from_utf8_lossy(&payload).into_owned();
            distinct.insert(payload.clone());
            by_topic.entry(topic).or_default().push(payload);
        }
    }
    by_topic
}

/// Checks that the first arrival of each message is in publish order per topic; returns the
/// number of duplicates.
fn check_order(by_topic: &std::collections::BTreeMap<String, Vec<String>>) -> usize {
    let mut duplicates = 0;
    for (topic, payloads) in by_topic {
        let mut seen = std::collections::HashSet::new();
        let mut last = None;
        for p in payloads {
            if !seen.insert(p.clone()) {
                duplicates += 1;
                continue;
            }
            let n: u64 = p
                .rsplit(':')
                .next()
                .and_then(|n| n.parse().ok())
                .expect("seq");
            assert!(
                last.is_none_or(|l| n > l),
                "{topic}: {n} arrived after {last:?}"
            );
            last = Some(n);
        }
    }
    duplicates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_the_rules_cloud_action_downlink_and_status_while_online() {
    for protocol in ["3.1.1", "5"] {
        forwarding_case(protocol).await;
    }
}

/// One run of the online test with the link on MQTT `protocol`.
async fn forwarding_case(protocol: &str) {
    let m = Mosquitto::start();
    let mut toml = cloud_toml(
        m.port,
        &format!(
            "protocol = \"{protocol}\"\n\
         forward = [{{ filter = \"sensors/#\", prefix = \"site-1/\" }}]\n\
         downlink = [{{ filter = \"site-1/cmd/#\", strip_prefix = \"site-1/\" }}]"
        ),
    );
    toml.push_str(
        "[[rules]]\nname = \"hot\"\nsql = \"SELECT temp FROM 'sensors/+/t' WHERE temp > 30\"\n\
         actions = [{ cloud = { topic = \"site-1/alerts/${topic(2)}\" } }]\n",
    );
    let g = Gateway::start(&toml);
    g.wait_metric("grove_cloud_link_up", |v| v == 1.0);
    let mut cloud = Client::connect("cloud-app", m.port).await;
    cloud.subscribe("site-1/#", QoS::AtLeastOnce).await;
    let mut device = Client::connect("d1", g.mqtt_port).await;
    device.subscribe("cmd/#", QoS::AtLeastOnce).await;

    let started = Instant::now();
    device
        .publish("sensors/d1/t", QoS::AtLeastOnce, false, r#"{"temp":21}"#)
        .await;
    let got = cloud.recv(WAIT).await.expect("forwarded message");
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("site-1/sensors/d1/t", &br#"{"temp":21}"#[..])
    );
    eprintln!(
        "online end-to-end latency (first message): {:?}",
        started.elapsed()
    );
    // Online latency, one message at a time: device -> gateway -> outbox -> mosquitto -> app.
    let mut latencies = Vec::new();
    for i in 0..50 {
        let started = Instant::now();
        device
            .publish("sensors/d1/lat", QoS::AtLeastOnce, false, format!("{i}"))
            .await;
        let got = cloud.recv(WAIT).await.expect("forwarded message");
        latencies.push(started.elapsed());
        assert_eq!(got.payload, format!("{i}").as_bytes());
    }
    latencies.sort();
    eprintln!(
        "MQTT {protocol}: online end-to-end latency over 50 messages: p50 {:?}, max {:?}; append to PUBACK mean {:.2} ms",
        latencies[25],
        latencies[49],
        1000.0 * g.metric("grove_cloud_delivery_seconds_sum")
            / g.metric("grove_cloud_delivery_seconds_count")
    );
    // A hot reading is forwarded and, through the rule's cloud action, alerted; other topics stay.
    device
        .publish("sensors/d1/t", QoS::AtLeastOnce, false, r#"{"temp":35}"#)
        .await;
    device
        .publish("other/d1", QoS::AtLeastOnce, false, "not forwarded")
        .await;
    let mut got: Vec<(String, String)> = cloud
        .recv_n(2, WAIT)
        .await
        .into_iter()
        .map(|p| {
            (
                p.topic.clone(),
                String::from_utf8_lossy(&p.payload).into_owned(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("site-1/alerts/d1".to_owned(), r#"{"temp":35}"#.to_owned()),
            (
                "site-1/sensors/d1/t".to_owned(),
                r#"{"temp":35}"#.to_owned()
            ),
        ]
    );
    assert!(
        cloud.recv(Duration::from_millis(300)).await.is_none(),
        "only forward filters and cloud actions go up"
    );

    cloud
        .publish("site-1/cmd/d1", QoS::AtLeastOnce, false, "reboot")
        .await;
    let cmd = device.recv(WAIT).await.expect("downlinked command");
    assert_eq!(
        (cmd.topic.as_str(), &cmd.payload[..]),
        ("cmd/d1", &b"reboot"[..])
    );

    g.wait_metric("grove_cloud_acked_total", |v| v == 53.0);
    let status = cloud_status(&g);
    assert_eq!(status["state"], "connected", "{status}");
    assert_eq!(status["queue_depth"], 0, "{status}");
    let addr = g.mqtt_addr().to_string();
    let (code, text) = grove(&["cloud", "status", "--mqtt", &addr], g.dir.path());
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("link:          connected"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_without_a_cloud_section_says_disabled() {
    let g = Gateway::start("");
    assert_eq!(cloud_status(&g)["state"], "disabled");
    let addr = g.mqtt_addr().to_string();
    let (code, text) = grove(&["cloud", "status", "--mqtt", &addr], g.dir.path());
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("no [cloud] section"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_published_offline_arrive_in_order_after_the_broker_returns() {
    let mut m = Mosquitto::start();
    let g = Gateway::start(&cloud_toml(m.port, "forward = [{ filter = \"t/#\" }]"));
    g.wait_metric("grove_cloud_link_up", |v| v == 1.0);
    let obs = observer(m.port, "t/#").await;
    obs.disconnect().await;
    m.stop();
    g.wait_metric("grove_cloud_link_up", |v| v == 0.0);

    let device = Client::connect("d1", g.mqtt_port).await;
    for i in 0..10_000u32 {
        let topic = format!("t/{}", i % 4);
        device
            .publish(&topic, QoS::AtLeastOnce, false, format!("{topic}:{i}"))
            .await;
    }
    g.wait_metric("grove_cloud_outbox_messages", |v| v == 10_000.0);
    let status = cloud_status(&g);
    assert_eq!(status["state"], "disconnected", "{status}");
    assert_eq!(status["queue_depth"], 10_000, "{status}");
    assert!(status["oldest_age_ms"].as_u64().is_some(), "{status}");
    assert!(status["last_error"].is_string(), "{status}");

    m.spawn();
    let started = Instant::now();
    g.wait_metric("grove_cloud_acked_total", |v| v == 10_000.0);
    eprintln!(
        "drain of 10,000 messages after reconnect: {:?} (with the reconnect); gateway: {}",
        started.elapsed(),
        g.log()
            .lines()
            .find(|l| l.contains("cloud outbox drained"))
            .unwrap_or("-")
    );
    let mut obs = reconnect_observer(m.port).await;
    let by_topic = collect(&mut obs, 10_000).await;
    let duplicates = check_order(&by_topic);
    let resent = g.metric("grove_cloud_resent_total");
    assert!(
        duplicates as f64 <= resent,
        "{duplicates} duplicates, {resent} resent"
    );
    assert!(
        resent <= 256.0,
        "duplicates are bounded by the window: {resent}"
    );
    assert_eq!(g.metric("grove_cloud_outbox_messages"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_survives_sigkill_while_offline() {
    let mut m = Mosquitto::start();
    let mut g = Gateway::start(&cloud_toml(
        m.port,
        "forward = [{ filter = \"t/#\" }]\n[cloud.outbox]\nmax_messages = 1000\nwhen_full = \"refuse-newest\"",
    ));
    g.wait_metric("grove_cloud_link_up", |v| v == 1.0);
    observer(m.port, "t/#").await.disconnect().await;
    m.stop();
    g.wait_metric("grove_cloud_link_up", |v| v == 0.0);
    let device = Client::connect("d1", g.mqtt_port).await;
    for i in 0..1000u32 {
        device
            .publish("t/a", QoS::AtLeastOnce, false, format!("t/a:{i}"))
            .await;
    }
    g.wait_metric("grove_cloud_outbox_messages", |v| v == 1000.0);
    device.disconnect().await;

    g.kill_and_restart();
    assert_eq!(
        cloud_status(&g)["queue_depth"],
        1000,
        "the outbox is restored after SIGKILL"
    );
    m.spawn();
    g.wait_metric("grove_cloud_acked_total", |v| v == 1000.0);
    let mut obs = reconnect_observer(m.port).await;
    let by_topic = collect(&mut obs, 1000).await;
    check_order(&by_topic);
    assert_eq!(
        g.metric("grove_cloud_dropped_total{reason=\"full_refuse_newest\"}"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puback_means_the_message_is_in_the_outbox_even_if_the_gateway_dies_at_once() {
    let mut m = Mosquitto::start();
    let mut g = Gateway::start(&cloud_toml(m.port, "forward = [{ filter = \"t/#\" }]"));
    g.wait_metric("grove_cloud_link_up", |v| v == 1.0);
    observer(m.port, "t/#").await.disconnect().await;
    m.stop();
    g.wait_metric("grove_cloud_link_up", |v| v == 0.0);
    // mosquitto_pub -q 1 exits only after its PUBACK; the gateway is killed right after the last
    // one, without waiting for anything else.
    for i in 0..5 {
        mosquitto_pub(
            g.mqtt_port,
            &["-q", "1", "-t", "t/k", "-m", &format!("t/k:{i}")],
        );
    }
    g.kill_and_restart();
    m.spawn();
    let mut obs = reconnect_observer(m.port).await;
    let by_topic = collect(&mut obs, 5).await;
    check_order(&by_topic);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_follows_its_policy_and_says_so() {
    // (policy, metric reason, log text, the payloads that reach the cloud)
    let cases = [
        (
            "drop-oldest",
            "full_drop_oldest",
            "cloud outbox full: dropped the oldest",
            50..150,
        ),
        (
            "refuse-newest",
            "full_refuse_newest",
            "cloud outbox full: refused new messages",
            0..100,
        ),
    ];
    for (policy, reason, log, kept) in cases {
        let mut m = Mosquitto::start();
        let g = Gateway::start(&cloud_toml(
            m.port,
            &format!("forward = [{{ filter = \"t/#\" }}]\n[cloud.outbox]\nmax_messages = 100\nwhen_full = \"{policy}\""),
        ));
        g.wait_metric("grove_cloud_link_up", |v| v == 1.0);
        observer(m.port, "t/#").await.disconnect().await;
        m.stop();
        g.wait_metric("grove_cloud_link_up", |v| v == 0.0);
        let device = Client::connect("d1", g.mqtt_port).await;
        for i in 0..150u32 {
            device
                .publish("t/a", QoS::AtLeastOnce, false, format!("t/a:{i}"))
                .await;
        }
        let series = format!("grove_cloud_dropped_total{{reason=\"{reason}\"}}");
        g.wait_metric(&series, |v| v == 50.0);
        assert_eq!(g.metric("grove_cloud_outbox_messages"), 100.0, "{policy}");
        assert!(
            g.log().contains(log),
            "{policy}: the log says so:\n{}",
            g.log()
        );

        m.spawn();
        g.wait_metric("grove_cloud_acked_total", |v| v == 100.0);
        let mut obs = reconnect_observer(m.port).await;
        let by_topic = collect(&mut obs, 100).await;
        let mut got: Vec<u32> = by_topic["t/a"]
            .iter()
            .map(|p| {
                p.rsplit(':')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("seq")
            })
            .collect();
        got.dedup();
        assert_eq!(got, kept.collect::<Vec<_>>(), "{policy}");
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`.
fn make_pki(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "test cloud CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issue = |names: Vec<String>, cn: &str, file: &str, client: bool| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        if client {
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        }
        let cert = p.signed_by(&key, &ca_cert, &ca_key).unwrap();
        std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
    };
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    issue(vec!["127.0.0.1".into()], "cloud", "server", false);
    issue(vec![], "edge-1", "client", true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_mutual_authentication_to_mosquitto() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let p = pki.path().to_owned();
    // The TLS listener is mosquitto's second one; the first (plain) serves the test's observer.
    let tls_port = free_port();
    let m = Mosquitto::start_with(|_, _| {
        format!(
            "listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\nrequire_certificate true\nuse_identity_as_username true\n",
            ca = p.join("ca.pem").display(),
            cert = p.join("server.pem").display(),
            key = p.join("server.key").display(),
        )
    });
    let tls = |client: bool| {
        let files = if client {
            format!(
                ", cert = {:?}, key = {:?}",
                p.join("client.pem"),
                p.join("client.key")
            )
        } else {
            String::new()
        };
        format!(
            "[cloud]\nhost = \"127.0.0.1\"\nport = {tls_port}\nclient_id = \"edge-1\"\nmax_backoff_ms = 500\n\
             tls = {{ ca = {:?}{files} }}\nforward = [{{ filter = \"t/#\" }}]\n",
            p.join("ca.pem")
        )
    };
    let mut cloud = Client::connect("cloud-app", m.port).await;
    cloud.subscribe("t/#", QoS::AtLeastOnce).await;

    let g = Gateway::start(&tls(true));
    g.wait_metric("grove_cloud_link_up", |v| v == 1.0);
    let device = Client::connect("d1", g.mqtt_port).await;
    device
        .publish("t/x", QoS::AtLeastOnce, false, "over TLS")
        .await;
    let got = cloud.recv(WAIT).await.expect("message over mutual TLS");
    assert_eq!(&got.payload[..], b"over TLS");

    // Without a client certificate mosquitto refuses the handshake: the link stays down and the
    // status says why; the message waits in the outbox.
    let g2 = Gateway::start(&tls(false));
    let device = Client::connect("d2", g2.mqtt_port).await;
    device
        .publish("t/y", QoS::AtLeastOnce, false, "must wait")
        .await;
    g2.wait_metric("grove_cloud_outbox_messages", |v| v == 1.0);
    // The status names the failed handshake once the first attempt has failed.
    let status = eventually(WAIT, || {
        let s = cloud_status(&g2);
        if s["last_error"].as_str().is_some_and(|e| !e.is_empty()) {
            Ok(s)
        } else {
            Err(format!("no failed attempt in the status: {s}"))
        }
    });
    assert_eq!(status["state"], "disconnected", "{status}");
    assert_eq!(g2.metric("grove_cloud_connects_total"), 0.0);

    // An unusable TLS file stops startup as a configuration error naming the section's line.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("grove.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[ops]\nenabled = false\n[[broker.listeners]]\nbind = \"127.0.0.1:{}\"\n\n\
             [cloud]\nhost = \"127.0.0.1\"\ntls = {{ ca = \"missing-ca.pem\" }}\n",
            dir.path().join("data"),
            free_port()
        ),
    )
    .unwrap();
    let (code, out) = grove(&["run", "--config", &config.to_string_lossy()], dir.path());
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("grove.toml:7: `cloud`: cloud TLS CA"), "{out}");
}

/// A TCP proxy between the edge gateway and the cloud: `cut` drops every connection and refuses
/// new ones, `restore` accepts again on the same port.
struct Proxy {
    port: u16,
    target: u16,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    async fn start(target: u16) -> Proxy {
        let mut p = Proxy {
            port: free_port(),
            target,
            task: None,
        };
        p.restore().await;
        p
    }

    async fn restore(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("proxy bind");
        let target = self.target;
        self.task = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                connections.spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    async fn cut(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

/// `grove shadow update` on the edge gateway (as a local application would).
fn update_shadow(g: &Gateway, thing: &str, doc: Value) {
    let addr = g.mqtt_addr().to_string();
    let (code, out) = grove(
        &[
            "shadow",
            "update",
            thing,
            "--json",
            &doc.to_string(),
            "--mqtt",
            &addr,
        ],
        g.dir.path(),
    );
    assert_eq!(code, 0, "{out}");
}

/// Waits until the edge gateway's shadow's `state` (without delta) is `want`.
fn wait_edge_state(g: &Gateway, thing: &str, want: &Value) {
    g.wait_shadow(thing, |doc| {
        let mut state = doc["state"].clone();
        if let Some(s) = state.as_object_mut() {
            s.remove("delta");
        }
        &state == want
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_changes_made_offline_on_either_side_converge_by_the_merge_rule() {
    // The cloud: mosquitto and the Device Shadow service written from AWS's documentation.
    let m = Mosquitto::start();
    let cloud = AwsShadows::start(m.port).await;
    let mut proxy = Proxy::start(m.port).await;
    let mut edge = Gateway::start(&cloud_toml(
        proxy.port,
        "[cloud.shadows]\nthings = [\"lamp\"]",
    ));
    edge.wait_metric("grove_cloud_link_up", |v| v == 1.0);

    // The device reports on the edge; sync brings it to the cloud.
    let mut device = Client::connect("lamp", edge.mqtt_port).await;
    device
        .subscribe("$aws/things/lamp/shadow/update/delta", QoS::AtLeastOnce)
        .await;
    let report = |state: Value| json!({"state": {"reported": state}}).to_string();
    device
        .publish(
            "$aws/things/lamp/shadow/update",
            QoS::AtLeastOnce,
            false,
            report(json!({"color": "off", "temp": 20})),
        )
        .await;
    let agreed = json!({"reported": {"color": "off", "temp": 20}});
    cloud.wait_state("lamp", &agreed);

    // Offline: the uplink is cut. Both sides change, some fields on both; the cloud's change is
    // an application's UpdateThingShadow call.
    proxy.cut().await;
    edge.wait_metric("grove_cloud_link_up", |v| v == 0.0);
    let accepted = cloud
        .update(
            "lamp",
            None,
            json!({"state": {"desired": {"color": "red", "mode": "boost"}, "reported": {"temp": 99}}}),
        )
        .await
        .expect("the cloud application's update");
    let offline_version = accepted["version"].as_u64().expect("version");
    device
        .publish(
            "$aws/things/lamp/shadow/update",
            QoS::AtLeastOnce,
            false,
            report(json!({"temp": 25})),
        )
        .await;
    update_shadow(
        &edge,
        "lamp",
        json!({"state": {"desired": {"mode": "eco"}}}),
    );
    // The device sees its local delta for the edge-side desired change first.
    let first = device.recv(WAIT).await.expect("local delta");
    assert_eq!(
        serde_json::from_slice::<Value>(&first.payload).unwrap()["state"],
        json!({"mode": "eco"})
    );

    proxy.restore().await;
    // The cloud's desired change reaches the device as a delta after the reconnect; `mode` was
    // changed on both sides, and the cloud wins in desired.
    let delta = device.recv(WAIT).await.expect("delta after reconnect");
    let delta: Value = serde_json::from_slice(&delta.payload).unwrap();
    assert_eq!(
        delta["state"],
        json!({"color": "red", "mode": "boost"}),
        "{delta}"
    );
    // temp was reported on both sides: the edge (the device) wins in reported.
    let want = json!({"desired": {"color": "red", "mode": "boost"}, "reported": {"color": "off", "temp": 25}});
    cloud.wait_state("lamp", &want);
    wait_edge_state(&edge, "lamp", &want);
    assert!(edge.metric("grove_cloud_sync_updates_total{direction=\"to_edge\"}") >= 1.0);
    assert!(edge.metric("grove_cloud_sync_updates_total{direction=\"to_cloud\"}") >= 1.0);
    // Every update the gateway sent was one AWS accepts: none was rejected (a stale version would
    // be a 409, a malformed document a 400), and the cloud moved on from the offline change.
    let counts = cloud.counts();
    assert_eq!(counts.update_rejected, 0, "{}", cloud.report());
    assert!(counts.update_accepted >= 2, "{}", cloud.report());
    assert!(
        cloud.version("lamp", None) > Some(offline_version),
        "{}",
        cloud.report()
    );

    // The sync state is durable: after a restart nothing is sent again, and a later cloud change
    // (a deletion) still comes down.
    device.disconnect().await;
    // Each round ends with "shadow in sync" (logged at debug, as the tests run the gateway): the
    // restarted gateway's round for the lamp is over once one more such line is logged.
    let (status, _) = edge.stop_with("TERM");
    assert!(status.success(), "{status}");
    let rounds = edge.log_count(&["shadow in sync", "lamp"]);
    let before_restart = cloud.counts();
    edge.restart_stopped();
    edge.wait_metric("grove_cloud_link_up", |v| v == 1.0);
    edge.wait_log(&["shadow in sync", "lamp"], rounds + 1);
    assert_eq!(
        edge.metric("grove_cloud_sync_updates_total{direction=\"to_cloud\"}"),
        0.0
    );
    assert_eq!(
        edge.metric("grove_cloud_sync_updates_total{direction=\"to_edge\"}"),
        0.0
    );
    let after_restart = cloud.counts();
    assert_eq!(
        after_restart.update_accepted + after_restart.update_rejected,
        before_restart.update_accepted + before_restart.update_rejected,
        "the restarted gateway sent the cloud no update: {}",
        cloud.report()
    );
    assert!(
        after_restart.get_accepted > before_restart.get_accepted,
        "the restarted gateway read the cloud's shadow: {}",
        cloud.report()
    );
    cloud
        .update("lamp", None, json!({"state": {"desired": {"mode": null}}}))
        .await
        .expect("the cloud application's deletion");
    let want = json!({"desired": {"color": "red"}, "reported": {"color": "off", "temp": 25}});
    wait_edge_state(&edge, "lamp", &want);
    assert_eq!(cloud.state("lamp", None), Some(want));
    assert_eq!(cloud.counts().update_rejected, 0, "{}", cloud.report());
}

/// The cloud (mosquitto and the AWS shadow service), an edge gateway with shadow sync for the
/// thing `lamp` whose link to it is up, and the device `lamp` connected to the edge.
async fn lamp_site() -> (Mosquitto, AwsShadows, Gateway, Client) {
    let m = Mosquitto::start();
    let cloud = AwsShadows::start(m.port).await;
    let edge = Gateway::start(&cloud_toml(m.port, "[cloud.shadows]\nthings = [\"lamp\"]"));
    edge.wait_metric("grove_cloud_link_up", |v| v == 1.0);
    let device = Client::connect("lamp", edge.mqtt_port).await;
    (m, cloud, edge, device)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_change_between_the_gateways_read_and_write_meets_409_and_is_merged_not_lost() {
    let (_m, cloud, edge, mut device) = lamp_site().await;
    device
        .subscribe("$aws/things/lamp/shadow/update/delta", QoS::AtLeastOnce)
        .await;
    let report = |temp: u32| json!({"state": {"reported": {"temp": temp}}}).to_string();
    let topic = "$aws/things/lamp/shadow/update";
    device
        .publish(topic, QoS::AtLeastOnce, false, report(20))
        .await;
    cloud.wait_state("lamp", &json!({"reported": {"temp": 20}}));

    // A cloud application's desired change lands between the gateway's next read of the cloud
    // shadow and its write, which carries the version it read: AWS refuses that write with 409.
    cloud.interpose(
        "lamp",
        None,
        json!({"state": {"desired": {"color": "blue"}}}),
    );
    device
        .publish(topic, QoS::AtLeastOnce, false, report(21))
        .await;
    // Neither change is lost: the gateway read again, merged, and wrote both ways.
    let want = json!({"desired": {"color": "blue"}, "reported": {"temp": 21}});
    cloud.wait_state("lamp", &want);
    wait_edge_state(&edge, "lamp", &want);
    let delta = device
        .recv(WAIT)
        .await
        .expect("the cloud's change as a delta");
    let delta: Value = serde_json::from_slice(&delta.payload).unwrap();
    assert_eq!(delta["state"], json!({"color": "blue"}), "{delta}");
    let refused: Vec<_> = cloud
        .rejections()
        .into_iter()
        .filter(|(topic, _)| topic.ends_with("/update/rejected"))
        .map(|(_, doc)| doc["code"].clone())
        .collect();
    assert_eq!(refused, [json!(409)], "{}", cloud.report());
    edge.wait_metric("grove_cloud_sync_conflicts_total", |v| v == 1.0);
    assert_eq!(edge.metric("grove_cloud_sync_failures_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_shadow_syncs_both_ways_on_its_own_topics_and_leaves_the_classic_shadow_alone() {
    let (_m, cloud, edge, mut device) = lamp_site().await;
    let named = "$aws/things/lamp/shadow/name/cfg";
    device
        .subscribe(&format!("{named}/update/delta"), QoS::AtLeastOnce)
        .await;
    device
        .publish(
            &format!("{named}/update"),
            QoS::AtLeastOnce,
            false,
            json!({"state": {"reported": {"interval": 5}}}).to_string(),
        )
        .await;
    cloud.wait_shadow_state("lamp", Some("cfg"), &json!({"reported": {"interval": 5}}));

    cloud
        .update(
            "lamp",
            Some("cfg"),
            json!({"state": {"desired": {"interval": 60}}}),
        )
        .await
        .expect("the cloud application's update");
    let delta = device
        .recv(WAIT)
        .await
        .expect("the cloud's change as a delta");
    assert_eq!(delta.topic, format!("{named}/update/delta"));
    let delta: Value = serde_json::from_slice(&delta.payload).unwrap();
    assert_eq!(delta["state"], json!({"interval": 60}), "{delta}");
    assert_eq!(
        cloud.state("lamp", None),
        None,
        "the classic shadow was never created: {}",
        cloud.report()
    );
    assert_eq!(cloud.counts().update_rejected, 0, "{}", cloud.report());
    assert!(
        edge.shadow("lamp").is_none(),
        "no classic shadow at the edge either"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_shadow_created_again_48_hours_after_its_deletion_still_reaches_the_edge() {
    let (_m, cloud, edge, device) = lamp_site().await;
    device
        .publish(
            "$aws/things/lamp/shadow/update",
            QoS::AtLeastOnce,
            false,
            json!({"state": {"reported": {"temp": 20}}}).to_string(),
        )
        .await;
    cloud.wait_state("lamp", &json!({"reported": {"temp": 20}}));
    let desired_color = |doc: &Value| doc["state"]["desired"]["color"].clone();
    for color in ["red", "green"] {
        cloud
            .update(
                "lamp",
                None,
                json!({"state": {"desired": {"color": color}}}),
            )
            .await
            .expect("the cloud application's update");
        edge.wait_shadow("lamp", |doc| desired_color(doc) == color);
    }
    // The cloud application deletes the shadow and, more than 48 hours later, creates it anew:
    // AWS starts such a shadow's versions again ("Interacting with shadows", DELETE), so its
    // `update/documents` says version 1, lower than any the gateway has seen for the name.
    cloud
        .delete("lamp", None)
        .expect("the cloud application's deletion");
    cloud.expire_deleted("lamp", None);
    let created = cloud
        .update(
            "lamp",
            None,
            json!({"state": {"desired": {"color": "blue"}}}),
        )
        .await
        .expect("the cloud application's update");
    assert_eq!(created["version"], 1);
    let seen = eventually(WAIT, || match edge.shadow("lamp") {
        Some(doc) if desired_color(&doc) == "blue" => Ok(doc),
        other => Err(format!(
            "the edge's shadow is {other:?}; {}\n{}",
            cloud.report(),
            edge.log()
        )),
    });
    assert_eq!(desired_color(&seen), "blue");
}

/// A gateway forwarding `t/#` with `inflight` (and `batch`, the route's batching, if not empty),
/// and its cloud (mosquitto, with a persistent observer session on `#`), which then goes away
/// while a device publishes `total` QoS 1 messages `t/{i % 3}`: `t/N:i`. Returns once all of
/// them are in the outbox, the cloud down.
async fn backlog_while_the_cloud_is_down(
    inflight: u32,
    total: u32,
    batch: &str,
) -> (Mosquitto, Gateway) {
    let mut m = Mosquitto::start();
    let batch = if batch.is_empty() {
        String::new()
    } else {
        format!(", batch = {{ {batch} }}")
    };
    let g = Gateway::start(&cloud_toml(
        m.port,
        &format!("inflight = {inflight}\nforward = [{{ filter = \"t/#\"{batch} }}]"),
    ));
    g.wait_metric("grove_cloud_link_up", |v| v == 1.0);
    observer(m.port, "#").await.disconnect().await;
    m.stop();
    g.wait_metric("grove_cloud_link_up", |v| v == 0.0);
    let device = Client::connect("d1", g.mqtt_port).await;
    for i in 0..total {
        let topic = format!("t/{}", i % 3);
        device
            .publish(&topic, QoS::AtLeastOnce, false, format!("{topic}:{i}"))
            .await;
    }
    g.wait_metric("grove_cloud_outbox_messages", |v| v == f64::from(total));
    (m, g)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_lost_mid_drain_costs_only_bounded_duplicates() {
    let total = 20_000u32;
    let (mut m, g) = backlog_while_the_cloud_is_down(16, total, "").await;

    // The broker comes back, and goes away again while the backlog drains.
    m.spawn();
    g.wait_metric("grove_cloud_acked_total", |v| v >= 1.0);
    m.stop();
    g.wait_metric("grove_cloud_link_up", |v| v == 0.0);
    let acked_at_cut = g.metric("grove_cloud_acked_total");
    m.spawn();
    g.wait_metric("grove_cloud_acked_total", |v| v == f64::from(total));
    let mut obs = reconnect_observer(m.port).await;
    let by_topic = collect(&mut obs, total as usize).await;
    let duplicates = check_order(&by_topic);
    let resent = g.metric("grove_cloud_resent_total");
    eprintln!(
        "cut after {acked_at_cut} acknowledged: {resent} resent, {duplicates} duplicates seen"
    );
    assert!(acked_at_cut < f64::from(total), "the cut came mid-drain");
    assert!(
        duplicates as f64 <= resent && resent <= 16.0,
        "duplicates ({duplicates}) are at most the resent in-flight window ({resent})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_drain_sends_at_most_inflight_messages_twice() {
    // Issue 16: deletes of acknowledged messages were committed every 1,024 PUBACKs during a
    // steady drain, so a SIGKILL sent up to that many again. Acknowledged-but-undeleted messages
    // now share the `inflight` window with the ones in flight.
    let inflight = 16;
    let total = 20_000u32;
    let (mut m, mut g) = backlog_while_the_cloud_is_down(inflight, total, "").await;

    m.spawn();
    g.wait_metric("grove_cloud_acked_total", |v| v >= 1000.0);
    g.kill_and_restart();
    // What the restarted gateway found in its outbox ("cloud outbox restored messages=N").
    let restored: u32 = g
        .log()
        .rsplit("cloud outbox restored")
        .next()
        .and_then(|rest| rest.split("messages=").nth(1))
        .and_then(|n| n.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .expect("the restarted gateway restored its outbox: the kill came mid-drain");
    g.wait_metric("grove_cloud_acked_total", |v| v == f64::from(restored));
    let mut obs = reconnect_observer(m.port).await;
    let by_topic = collect(&mut obs, total as usize).await;
    let duplicates = check_order(&by_topic);
    eprintln!("killed with {restored} left: {duplicates} duplicates");
    assert!(
        duplicates <= inflight as usize,
        "{duplicates} duplicates after SIGKILL, more than inflight = {inflight}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_cloud_refuses_is_counted_not_resent_forever() {
    // mosquitto's ACL lets anonymous clients publish only under ok/: with MQTT 5 it answers the
    // others with a "not authorized" PUBACK, and (with this file's `max_queued_messages 0`) closes
    // the connection right after it, as a strict cloud may. The refusal often arrives in the same
    // read as the end of the connection; it must still be counted, and the message not sent again
    // (it once was, on every reconnect, and the allowed message behind it never got through).
    let m = Mosquitto::start_with(|_, dir| {
        let acl = dir.join("acl");
        std::fs::write(&acl, "topic read #\ntopic write ok/#\n").expect("acl");
        format!("acl_file {}\n", acl.display())
    });
    let g = Gateway::start(&cloud_toml(
        m.port,
        "protocol = \"5\"\nforward = [{ filter = \"ok/#\" }, { filter = \"no/#\" }]",
    ));
    g.wait_metric("grove_cloud_link_up", |v| v == 1.0);
    let mut cloud = Client::connect("cloud-app", m.port).await;
    cloud.subscribe("#", QoS::AtLeastOnce).await;
    let device = Client::connect("d1", g.mqtt_port).await;
    device
        .publish("no/1", QoS::AtLeastOnce, false, "refused")
        .await;
    device
        .publish("ok/1", QoS::AtLeastOnce, false, "taken")
        .await;
    let got = cloud
        .recv(WAIT)
        .await
        .unwrap_or_else(|| panic!("the allowed message never reached the cloud:\n{}", g.log()));
    assert_eq!(got.topic, "ok/1");
    g.wait_metric(
        "grove_cloud_dropped_total{reason=\"refused_by_cloud\"}",
        |v| v == 1.0,
    );
    g.wait_metric("grove_cloud_outbox_messages", |v| v == 0.0);
    assert!(
        g.log().contains("the cloud refused a publish"),
        "{}",
        g.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_broker_refuses_a_wrong_password_with_backoff_and_takes_the_right_one_from_a_file_or_the_environment(
) {
    // The cloud: mosquitto with a password file (made by mosquitto_passwd), no anonymous clients,
    // and an ACL that lets a client publish only under site/<its client id>/, as AWS IoT policies
    // tie a thing to its client id. The link leaves client_id unset: it must be the thing name.
    let m = Mosquitto::start_with(|_, dir| {
        let passwords = dir.join("passwords");
        for (i, (user, password)) in [("edge-7", "right-pw"), ("app", "app-pw")]
            .into_iter()
            .enumerate()
        {
            let create: &[&str] = if i == 0 { &["-c", "-b"] } else { &["-b"] };
            let out = blocking(|| {
                std::process::Command::new("mosquitto_passwd")
                    .args(create)
                    .arg(&passwords)
                    .args([user, password])
                    .output()
                    .expect("mosquitto_passwd is installed with mosquitto")
            });
            assert!(out.status.success(), "mosquitto_passwd: {out:?}");
        }
        let acl = dir.join("acl");
        std::fs::write(&acl, "user app\ntopic read #\npattern write site/%c/#\n").expect("acl");
        format!(
            "allow_anonymous false\npassword_file {}\nacl_file {}\n",
            passwords.display(),
            acl.display()
        )
    });
    let mut app = options("cloud-app", m.port);
    app.set_credentials("app", "app-pw");
    let mut cloud = Client::connect_with(app).await;
    cloud.subscribe("site/#", QoS::AtLeastOnce).await;
    let toml = |password: &str| {
        format!(
            "[cloud]\nhost = \"127.0.0.1\"\nport = {}\nplain_tcp = true\nthing = \"edge-7\"\n\
             max_backoff_ms = 1000\nusername = \"edge-7\"\n{password}\n\
             forward = [{{ filter = \"t/#\", prefix = \"site/edge-7/\" }}]\n",
            m.port
        )
    };
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("cloud-password");
    std::fs::write(&file, "wrong-pw\n").unwrap();
    let mut g = Gateway::start(&toml(&format!("password_file = {file:?}")));

    // A wrong password: refused at every attempt, the status says why and what to check, and
    // the attempts back off (1 s doubling, half of it random, capped at max_backoff_ms).
    m.wait_log("disconnected, not authorised", 5);
    let status = cloud_status(&g);
    assert_eq!(status["state"], "disconnected", "{status}");
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("refused the connection: NotAuthorized") && error.contains("cloud.username"),
        "{status}"
    );
    let retry = status["retry_in_ms"].as_u64().expect("retry_in_ms");
    assert!(
        (500..=1000).contains(&retry),
        "capped at 1 s, each wait is 500..=1000 ms (half fixed, half random): {status}"
    );
    assert_eq!(g.metric("grove_cloud_connects_total"), 0.0);
    let mut device = Client::connect("d1", g.mqtt_port).await;
    device
        .publish("t/1", QoS::AtLeastOnce, false, "kept while refused")
        .await;
    // Its PUBACK: the message is in the outbox (`publish` only queues it in the client, and a
    // client dropped at once may never send it).
    device.acked(1).await;
    drop(device);

    // The right password in the file (with the line break `echo` leaves): connected, and the
    // message waiting in the outbox goes up under the client id the ACL wants.
    std::fs::write(&file, "right-pw\n").unwrap();
    g.restart();
    g.wait_metric("grove_cloud_link_up", |v| v == 1.0);
    let got = cloud.recv(WAIT).await.unwrap_or_else(|| {
        panic!(
            "the waiting message never came:\n{}\ncloud:\n{}",
            g.log(),
            m.log()
        )
    });
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("site/edge-7/t/1", &b"kept while refused"[..])
    );
    g.stop_with("TERM");

    // The same from the environment.
    let env = Gateway::start_with_env(
        &toml("password_env = \"GROVE_TEST_CLOUD_PASSWORD\""),
        &[("GROVE_TEST_CLOUD_PASSWORD", "right-pw")],
    );
    env.wait_metric("grove_cloud_link_up", |v| v == 1.0);
    let device = Client::connect("d1", env.mqtt_port).await;
    device
        .publish("t/2", QoS::AtLeastOnce, false, "from env")
        .await;
    let got = cloud.recv(WAIT).await.expect("forwarded");
    assert_eq!(got.topic, "site/edge-7/t/2");

    // Neither password was ever logged (the gateways log at debug level).
    for log in [g.log(), env.log()] {
        assert!(
            !log.contains("right-pw") && !log.contains("wrong-pw"),
            "a password in the log:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_requiring_awss_alpn_takes_the_link_only_when_it_offers_it() {
    // AWS IoT Core's port 443 with client certificates wants ALPN `x-amzn-mqtt-ca`; the front
    // checks it (and the certificate) as AWS documents, then hands the MQTT bytes to mosquitto.
    // The test cannot bind 443: the port-443 default is a unit test of the configuration, here
    // the name is written out.
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let p = pki.path().to_owned();
    let m = Mosquitto::start();
    let front = TlsFront::start(
        &p.join("ca.pem"),
        &p.join("server.pem"),
        &p.join("server.key"),
        "x-amzn-mqtt-ca",
        m.port,
    )
    .await;
    let mut cloud = Client::connect("cloud-app", m.port).await;
    cloud.subscribe("t/#", QoS::AtLeastOnce).await;
    let toml = |alpn: &str| {
        format!(
            "[cloud]\nhost = \"127.0.0.1\"\nport = {}\nthing = \"edge-1\"\nmax_backoff_ms = 500\n\
             tls = {{ ca = {:?}, cert = {:?}, key = {:?}{alpn} }}\nforward = [{{ filter = \"t/#\" }}]\n",
            front.port,
            p.join("ca.pem"),
            p.join("client.pem"),
            p.join("client.key"),
        )
    };

    // Off port 443 no ALPN is offered by default: the endpoint ends the handshake.
    let g = Gateway::start(&toml(""));
    let status = eventually(WAIT, || {
        let s = cloud_status(&g);
        if s["last_error"].as_str().is_some_and(|e| !e.is_empty()) {
            Ok(s)
        } else {
            Err(format!("no failed attempt in the status: {s}"))
        }
    });
    assert_eq!(status["state"], "disconnected", "{status}");
    assert_eq!(
        front.offered().first(),
        Some(&Vec::new()),
        "no ALPN offered"
    );
    drop(g);

    let g = Gateway::start(&toml(", alpn = [\"x-amzn-mqtt-ca\"]"));
    g.wait_metric("grove_cloud_link_up", |v| v == 1.0);
    let device = Client::connect("d1", g.mqtt_port).await;
    device
        .publish("t/x", QoS::AtLeastOnce, false, "through the ALPN front")
        .await;
    let got = cloud
        .recv(WAIT)
        .await
        .expect("the message through the front");
    assert_eq!(&got.payload[..], b"through the ALPN front");
    assert_eq!(
        front.offered().last(),
        Some(&vec!["x-amzn-mqtt-ca".to_owned()]),
        "{:?}",
        front.offered()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_published_while_the_gateway_is_stopped_arrive_when_it_is_back() {
    for protocol in ["3.1.1", "5"] {
        persistent_downlink_case(protocol).await;
    }
}

/// One run of the persistent-session test with the link on MQTT `protocol`: the cloud keeps the
/// link's session (MQTT 3.1.1: clean session 0; MQTT 5: a session expiry interval) and queues
/// the QoS 1 messages published for it while the gateway is stopped.
async fn persistent_downlink_case(protocol: &str) {
    // `log_type all`: mosquitto logs each SUBACK it sends, the fact that a subscription is in
    // the session.
    let m = Mosquitto::start_with(|_, _| "log_type all\n".to_owned());
    let mut proxy = Proxy::start(m.port).await;
    let mut g = Gateway::start(&cloud_toml(
        proxy.port,
        &format!(
            "protocol = \"{protocol}\"\n\
             downlink = [{{ filter = \"site-1/cmd/#\", strip_prefix = \"site-1/\" }}]"
        ),
    ));
    let subacks = "Sending SUBACK to edge-1";
    m.wait_log(subacks, 1);
    let (status, _) = g.stop_with("TERM");
    assert!(status.success(), "{}", g.log());

    // The cloud sends commands while the gateway is stopped (mosquitto_pub -q 1 returns after
    // its PUBACK: the cloud has each one). The network stays cut while the gateway starts
    // again, so that the device is subscribed on the edge before the link can deliver them.
    proxy.cut().await;
    for i in 1..=5 {
        mosquitto_pub(
            m.port,
            &["-t", "site-1/cmd/d1", "-q", "1", "-m", &format!("cmd-{i}")],
        );
    }
    g.restart_stopped();
    let mut device = Client::connect("d1", g.mqtt_port).await;
    device.subscribe("cmd/#", QoS::AtLeastOnce).await;
    proxy.restore().await;
    let got: Vec<String> = device
        .recv_n(5, WAIT)
        .await
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    assert_eq!(
        got,
        ["cmd-1", "cmd-2", "cmd-3", "cmd-4", "cmd-5"],
        "MQTT {protocol}:\n{}",
        g.log()
    );
    // They are acknowledged once handed to the edge broker: the cloud has the five PUBACKs, and
    // after another restart the next message from the cloud is a new one, not one of them again
    // (the cloud would resend unacknowledged ones first).
    m.wait_log("Received PUBACK from edge-1", 5);
    proxy.cut().await;
    g.restart();
    let mut device = Client::connect("d1", g.mqtt_port).await;
    device.subscribe("cmd/#", QoS::AtLeastOnce).await;
    proxy.restore().await;
    m.wait_log(subacks, 3);
    mosquitto_pub(m.port, &["-t", "site-1/cmd/d1", "-q", "1", "-m", "cmd-6"]);
    let next = device.recv(WAIT).await.expect("the new command");
    assert_eq!(
        String::from_utf8_lossy(&next.payload),
        "cmd-6",
        "MQTT {protocol}; the cloud's log:\n{}",
        m.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_profile_paces_the_drain_and_sends_an_oversized_message_to_the_dead_letters() {
    // AWS IoT Core allows 100 publishes per second per connection and 128 KB per payload
    // (https://docs.aws.amazon.com/general/latest/gr/iot-core.html#message-broker-limits). The
    // cloud here is mosquitto, whose log stamps each PUBLISH it receives with the second: the
    // drain of a backlog must stay near 100 in every second, and the oversized message must
    // neither reach the cloud nor hold up the ones behind it.
    let mut m = Mosquitto::start_with(|_, _| "log_type all\n".to_owned());
    let g = Gateway::start(&cloud_toml(
        m.port,
        "profile = \"aws-iot-core\"\nforward = [{ filter = \"t/#\" }]",
    ));
    g.wait_metric("grove_cloud_link_up", |v| v == 1.0);
    observer(m.port, "t/#").await.disconnect().await;
    m.stop();
    g.wait_metric("grove_cloud_link_up", |v| v == 0.0);
    let mut dlq = Client::connect("dlq-reader", g.mqtt_port).await;
    dlq.subscribe("$grove/cloud/dlq", QoS::AtLeastOnce).await;
    let device = Client::connect("d1", g.mqtt_port).await;
    device
        .publish("t/big", QoS::AtLeastOnce, false, vec![b'x'; 128 * 1024 + 1])
        .await;
    let total = 300u32;
    for i in 0..total {
        device
            .publish("t/a", QoS::AtLeastOnce, false, format!("t/a:{i}"))
            .await;
    }
    g.wait_metric("grove_cloud_outbox_messages", |v| v == f64::from(total));
    let letter = dlq.recv(WAIT).await.expect("the dead letter");
    let letter: Value = serde_json::from_slice(&letter.payload).expect("JSON");
    assert_eq!(
        (&letter["topic"], &letter["reason"], &letter["limit"]),
        (&json!("t/big"), &json!("payload_too_large"), &json!(131072)),
        "{letter}"
    );
    let status = cloud_status(&g);
    assert_eq!(status["dead_letters"], 1, "{status}");
    assert_eq!(status["last_dead_letter"]["reason"], "payload_too_large");

    m.spawn();
    g.wait_metric("grove_cloud_acked_total", |v| v == f64::from(total));
    let mut obs = reconnect_observer(m.port).await;
    let by_topic = collect(&mut obs, total as usize).await;
    check_order(&by_topic);
    assert_eq!(
        by_topic.keys().collect::<Vec<_>>(),
        ["t/a"],
        "t/big never went up"
    );
    let mut per_second = std::collections::BTreeMap::<String, usize>::new();
    for line in m.log().lines() {
        if line.contains("Received PUBLISH from edge-1") {
            let second = line.split(':').next().unwrap_or_default().to_owned();
            *per_second.entry(second).or_default() += 1;
        }
    }
    eprintln!("publishes per second at the cloud under the AWS profile: {per_second:?}");
    // 100 a second, and at most a tenth of a second's worth at once.
    assert!(
        per_second.len() >= 3 && per_second.values().all(|n| *n <= 110),
        "publishes per second at the cloud: {per_second:?}"
    );
    assert_eq!(
        g.metric("grove_cloud_connects_total"),
        2.0,
        "never disconnected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_thing_name_the_client_id_comes_from_the_machine_id() {
    // Two gateways left on defaults must not share a client id (the cloud would disconnect one
    // for the other): the default thing, and so the client id, is derived from /etc/machine-id.
    let machine_id = std::fs::read_to_string("/etc/machine-id").expect("the test machine's id");
    let want = format!("grove-{}", &machine_id.trim()[..12]);
    let m = Mosquitto::start_with(|_, _| "log_type all\n".to_owned());
    let g = Gateway::start(&format!(
        "[cloud]\nhost = \"127.0.0.1\"\nport = {}\nplain_tcp = true\n",
        m.port
    ));
    g.wait_metric("grove_cloud_link_up", |v| v == 1.0);
    m.wait_log(&format!(" as {want} "), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_shadow_deleted_on_either_side_is_deleted_on_the_other() {
    let (_m, cloud, mut edge, _device) = lamp_site().await;
    let gone_from_cloud = |cloud: &AwsShadows| {
        eventually(WAIT, || match cloud.version("lamp", None) {
            None => Ok(()),
            Some(v) => Err(format!(
                "the cloud shadow is at version {v}: {}",
                cloud.report()
            )),
        })
    };

    // Edge to cloud: `grove shadow delete` on the gateway deletes the cloud's shadow too (it
    // used to be emptied field by field and left in place).
    update_shadow(&edge, "lamp", json!({"state": {"reported": {"on": true}}}));
    cloud.wait_state("lamp", &json!({"reported": {"on": true}}));
    let addr = edge.mqtt_addr().to_string();
    let (code, out) = grove(
        &["shadow", "delete", "lamp", "--mqtt", &addr],
        edge.dir.path(),
    );
    assert_eq!(code, 0, "{out}");
    gone_from_cloud(&cloud);
    assert!(
        edge.shadow("lamp").is_none(),
        "not created again at the edge"
    );

    // Cloud to edge: created again and synced, then deleted through AWS's API (which publishes
    // nothing); the next round, when the link comes up after a restart, deletes it at the edge.
    update_shadow(&edge, "lamp", json!({"state": {"reported": {"on": false}}}));
    cloud.wait_state("lamp", &json!({"reported": {"on": false}}));
    cloud
        .delete("lamp", None)
        .expect("the cloud application's delete");
    edge.restart();
    edge.wait_metric("grove_cloud_link_up", |v| v == 1.0);
    eventually(WAIT, || match edge.shadow("lamp") {
        None => Ok(()),
        Some(s) => Err(format!("the edge still has {s}\n{}", edge.log())),
    });
    gone_from_cloud(&cloud);
    // Both deletions were sync's doing (the edge's `get` above cannot tell a missing shadow from
    // a failed request).
    edge.wait_log(&["shadow deleted on both sides"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batching_route_sends_complete_ordered_arrays_within_their_bounds() {
    // Issue 16: several small messages of a route go up as one publish, a JSON array of
    // `{"topic", "ts", "payload"}` elements on the route's batch topic. A message whose element
    // alone is over `max_bytes` goes up as itself, after the batch before it; so does a
    // retained one. Everything arrives once, in the route's order, and no array passes its
    // bounds.
    let m = Mosquitto::start();
    let (max_messages, max_bytes) = (10, 600);
    let g = Gateway::start(&cloud_toml(
        m.port,
        &format!(
            "forward = [{{ filter = \"t/#\", prefix = \"site/\", batch = {{ topic = \"site/batch\", \
             max_messages = {max_messages}, max_bytes = {max_bytes}, max_delay_ms = 200 }} }}]"
        ),
    ));
    g.wait_metric("grove_cloud_link_up", |v| v == 1.0);
    let mut cloud = Client::connect("cloud-app", m.port).await;
    cloud.subscribe("site/#", QoS::AtLeastOnce).await;
    let device = Client::connect("d1", g.mqtt_port).await;
    let mut published: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..95u32 {
        let (topic, payload, retain) = match i {
            40 => ("t/big".to_owned(), vec![b'x'; 700], false),
            70 => ("t/cfg".to_owned(), b"on".to_vec(), true),
            _ => (
                format!("t/{}", i % 5),
                json!({"i": i}).to_string().into_bytes(),
                false,
            ),
        };
        device
            .publish(&topic, QoS::AtLeastOnce, retain, payload.clone())
            .await;
        published.push((format!("site/{topic}"), payload));
    }
    g.wait_metric("grove_cloud_acked_total", |v| v == 95.0);

    let mut arrived: Vec<(String, Vec<u8>)> = Vec::new();
    let mut arrays = 0u32;
    while arrived.len() < published.len() {
        let p = cloud
            .recv(WAIT)
            .await
            .unwrap_or_else(|| panic!("{} of 95 arrived:\n{}", arrived.len(), g.log()));
        if p.topic == "site/batch" {
            arrays += 1;
            let elements = unbatch(&p, Some("site/batch"));
            assert!(
                elements.len() <= max_messages && p.payload.len() <= max_bytes,
                "a batch of {} messages, {} bytes",
                elements.len(),
                p.payload.len()
            );
            arrived.extend(elements);
        } else {
            arrived.push((p.topic.clone(), p.payload.to_vec()));
        }
    }
    // JSON payloads stay JSON in the elements (re-serialized by the check, compact as sent).
    assert_eq!(arrived, published, "everything once, in the route's order");
    assert!(arrays as usize >= 93 / max_messages, "{arrays} arrays");
    assert_eq!(g.metric("grove_cloud_batches_total"), f64::from(arrays));
    assert_eq!(g.metric("grove_cloud_batched_total"), 93.0);
    assert_eq!(g.metric("grove_cloud_sent_total"), f64::from(arrays + 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_drain_resends_at_most_inflight_batches() {
    // With batches, the window counts publishes: a crash sends at most `inflight` publishes
    // again, so at most `inflight × max_messages` messages.
    let (inflight, max_messages) = (4, 50);
    let total = 20_000u32;
    let (mut m, mut g) = backlog_while_the_cloud_is_down(
        inflight,
        total,
        &format!("topic = \"b/t\", max_messages = {max_messages}, max_delay_ms = 0"),
    )
    .await;
    m.spawn();
    g.wait_metric("grove_cloud_acked_total", |v| v >= 2000.0);
    g.kill_and_restart();
    g.wait_metric("grove_cloud_outbox_messages", |v| v == 0.0);
    let mut obs = reconnect_observer(m.port).await;
    let by_topic = collect_batched(&mut obs, total as usize, Some("b/t")).await;
    let duplicates = check_order(&by_topic);
    eprintln!("killed mid-drain with batches of {max_messages}: {duplicates} duplicates");
    assert!(
        duplicates <= (inflight * max_messages) as usize,
        "{duplicates} duplicates after SIGKILL, more than inflight × max_messages"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_message_goes_up_retained_with_its_user_properties_on_mqtt_5() {
    for protocol in ["3.1.1", "5"] {
        retain_case(protocol).await;
    }
}

/// One run of the retain test: published to the gateway while the cloud is down, kept in the
/// outbox across a SIGKILL (the flag and the properties are stored with the message), then seen
/// by a subscriber that comes to the cloud after it arrived: mosquitto's own client, printing
/// the retain flag, topic, payload and MQTT 5 user properties.
async fn retain_case(protocol: &str) {
    let mut m = Mosquitto::start();
    let mut g = Gateway::start(&cloud_toml(
        m.port,
        &format!(
            "protocol = \"{protocol}\"\nforward = [{{ filter = \"cfg/#\", prefix = \"site-1/\" }}]"
        ),
    ));
    g.wait_metric("grove_cloud_link_up", |v| v == 1.0);
    m.stop();
    g.wait_metric("grove_cloud_link_up", |v| v == 0.0);
    let device_args = [
        "-V",
        "5",
        "-q",
        "1",
        "-t",
        "cfg/led",
        "-m",
        "on",
        "-r",
        "-D",
        "publish",
        "user-property",
        "origin",
        "panel",
    ];
    mosquitto_pub(g.mqtt_port, &device_args);
    g.kill_and_restart();
    m.spawn();
    g.wait_metric("grove_cloud_acked_total", |v| v == 1.0);
    let out = mosquitto_client(
        "mosquitto_sub",
        m.port,
        &[
            "-V",
            "5",
            "-t",
            "site-1/#",
            "-C",
            "1",
            "-W",
            "10",
            "-F",
            "%r %t %p %P",
        ],
    );
    let line = String::from_utf8_lossy(&out.stdout);
    // MQTT 3.1.1 has no properties: the message goes up without them.
    let want = match protocol {
        "5" => "1 site-1/cfg/led on origin:panel",
        _ => "1 site-1/cfg/led on",
    };
    assert_eq!(line.trim_end(), want, "MQTT {protocol}: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_aws_profile_subscriptions_go_in_subscribe_packets_of_at_most_8() {
    // AWS IoT Core takes at most 8 topic filters per SUBSCRIBE packet (its Device SDK's
    // AwsIotCoreDefaults) and 50 per connection: 10 downlink filters and shadow sync's 6 go in
    // two packets, every filter granted. mosquitto logs each SUBSCRIBE with its filters.
    let m = Mosquitto::start_with(|_, _| "log_type all\n".to_owned());
    let downlink: Vec<String> = (0..10)
        .map(|i| format!("{{ filter = \"site-1/cmd/{i}/#\", strip_prefix = \"site-1/\" }}"))
        .collect();
    let g = Gateway::start(&cloud_toml(
        m.port,
        &format!(
            "profile = \"aws-iot-core\"\ndownlink = [{}]\n[cloud.shadows]\nthings = [\"*\"]",
            downlink.join(", ")
        ),
    ));
    g.wait_metric("grove_cloud_link_up", |v| v == 1.0);
    m.wait_log("Sending SUBACK to edge-1", 2);
    let log = m.log();
    let mut packets: Vec<usize> = Vec::new();
    for line in log.lines() {
        if line.contains("Received SUBSCRIBE from edge-1") {
            packets.push(0);
        } else if let (Some(n), true) = (packets.last_mut(), line.contains(": \t")) {
            *n += 1;
        }
    }
    assert_eq!(packets, [8, 8], "filters per SUBSCRIBE:\n{log}");

    // 51 subscriptions would pass AWS's 50 per connection: refused at startup, naming the fix.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("grove.toml");
    let downlink: Vec<String> = (0..45)
        .map(|i| format!("{{ filter = \"c/{i}/#\", strip_prefix = \"c/\" }}"))
        .collect();
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[ops]\nenabled = false\n[[broker.listeners]]\nbind = \"127.0.0.1:{}\"\n\n{}",
            dir.path().join("data"),
            free_port(),
            cloud_toml(
                m.port,
                &format!(
                    "profile = \"aws-iot-core\"\ndownlink = [{}]\n[cloud.shadows]\nthings = [\"*\"]",
                    downlink.join(", ")
                )
            )
        ),
    )
    .unwrap();
    let (code, out) = grove(&["run", "--config", &config.to_string_lossy()], dir.path());
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("51 subscriptions") && out.contains("things = [\"*\"]"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_reads_only_the_shadows_changed_while_the_link_was_down() {
    // Issue 16: a link that comes back to a session the cloud kept costs rounds only for the
    // shadows that changed meanwhile, not a read of every shadow. Four synced shadows; the link
    // drops twice: with nothing changed, then with one changed on each side.
    let m = Mosquitto::start();
    let cloud = AwsShadows::start(m.port).await;
    let mut proxy = Proxy::start(m.port).await;
    let things = ["a", "b", "c", "d"];
    let edge = Gateway::start(&cloud_toml(
        proxy.port,
        "[cloud.shadows]\nthings = [\"a\", \"b\", \"c\", \"d\"]",
    ));
    edge.wait_metric("grove_cloud_link_up", |v| v == 1.0);
    for t in things {
        update_shadow(&edge, t, json!({"state": {"reported": {"n": 1}}}));
        cloud.wait_shadow_state(t, None, &json!({"reported": {"n": 1}}));
    }
    let resumed = |n: usize| {
        edge.wait_log(
            &["shadow sync resuming", "resumed=true", "everything=false"],
            n,
        );
    };

    // Nothing changed: the link comes back, and sync asks the cloud for nothing.
    let before = cloud.counts();
    proxy.cut().await;
    edge.wait_metric("grove_cloud_link_up", |v| v == 0.0);
    proxy.restore().await;
    edge.wait_metric("grove_cloud_connects_total", |v| v == 2.0);
    resumed(1);
    assert_eq!(
        edge.log_count(&["shadow sync resuming", "shadows=0", "resumed=true"]),
        1,
        "{}",
        edge.log()
    );

    // One shadow changed in the cloud (an application's UpdateThingShadow call), one at the
    // edge: two rounds, two reads of the cloud.
    proxy.cut().await;
    edge.wait_metric("grove_cloud_link_up", |v| v == 0.0);
    cloud
        .update("b", None, json!({"state": {"desired": {"n": 2}}}))
        .await
        .expect("the cloud application's update");
    update_shadow(&edge, "c", json!({"state": {"reported": {"n": 3}}}));
    proxy.restore().await;
    resumed(2);
    cloud.wait_shadow_state("c", None, &json!({"reported": {"n": 3}}));
    wait_edge_state(
        &edge,
        "b",
        &json!({"desired": {"n": 2}, "reported": {"n": 1}}),
    );
    let after = cloud.counts();
    assert_eq!(
        after.get_accepted - before.get_accepted,
        2,
        "one read of the cloud per changed shadow: {}",
        cloud.report()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_keep_the_clouds_byte_rate() {
    // AWS IoT Core allows 512 KB/s per connection (its Device SDK's AwsIotCoreDefaults), which
    // batches of up to 128 KB at 100 publishes a second would pass: the link paces bytes too.
    // Here the rate is 4,000 bytes a second and a batch at most 2,000 bytes, and mosquitto's log
    // stamps each PUBLISH it receives with the second and its payload size.
    let mut m = Mosquitto::start_with(|_, _| "log_type all\n".to_owned());
    let g = Gateway::start(&cloud_toml(
        m.port,
        "forward = [{ filter = \"t/#\", batch = { topic = \"b/t\", max_bytes = 2000 } }]\n\
         [cloud.quotas]\nbytes_per_sec = 4000",
    ));
    g.wait_metric("grove_cloud_link_up", |v| v == 1.0);
    observer(m.port, "#").await.disconnect().await;
    m.stop();
    g.wait_metric("grove_cloud_link_up", |v| v == 0.0);
    let device = Client::connect("d1", g.mqtt_port).await;
    let total = 200u32;
    for i in 0..total {
        let reading = json!({"i": i, "temperature": 21.5, "humidity": 40}).to_string();
        device
            .publish("t/a", QoS::AtLeastOnce, false, reading)
            .await;
    }
    g.wait_metric("grove_cloud_outbox_messages", |v| v == f64::from(total));
    m.spawn();
    g.wait_metric("grove_cloud_acked_total", |v| v == f64::from(total));
    let mut per_second = std::collections::BTreeMap::<String, usize>::new();
    for line in m.log().lines() {
        if !line.contains("Received PUBLISH from edge-1") {
            continue;
        }
        let second = line.split(':').next().unwrap_or_default().to_owned();
        let bytes: usize = line
            .rsplit('(')
            .next()
            .and_then(|b| b.split(' ').next())
            .and_then(|b| b.parse().ok())
            .unwrap_or_else(|| panic!("a size in {line:?}"));
        *per_second.entry(second).or_default() += bytes + "b/t".len();
    }
    eprintln!("bytes per second at the cloud: {per_second:?}");
    // 4,000 a second, plus a tenth of a second's burst and one batch in advance at most.
    assert!(
        per_second.len() >= 3 && per_second.values().all(|b| *b <= 4000 + 400 + 2000),
        "bytes per second at the cloud: {per_second:?}"
    );
}
