//! MQTT 5 and 3.1.1 behaviours of Grove's own router (issue 14) that the rumqttd-based broker got
//! wrong, each checked with a stock client (rumqttc, MQTT 5 and 3.1.1) against the real `grove`
//! binary, citing the specification's section.

use std::time::Duration;

use grove_tests::{connect5, Gateway, Malformed, Packet5, RawClient, WAIT};
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnectProperties, Filter, Packet as P5, Publish, RetainForwardRule, UnsubAckReason,
};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};

/// How long a test waits for something that must not arrive.
const QUIET: Duration = Duration::from_millis(300);

/// An MQTT 5 client (rumqttc) and its event loop, polled by the test.
struct V5 {
    client: AsyncClient,
    events: EventLoop,
}

impl V5 {
    /// Connects and returns the CONNACK.
    async fn connect(o: MqttOptions) -> (V5, ConnAck) {
        let (client, events) = AsyncClient::new(o, 100);
        let mut c = V5 { client, events };
        let ack = c
            .until(|p| match p {
                P5::ConnAck(a) => Some(a),
                _ => None,
            })
            .await;
        (c, ack)
    }

    /// Polls until `f` picks an incoming packet.
    async fn until<T>(&mut self, mut f: impl FnMut(P5) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ev = tokio::time::timeout_at(deadline, self.events.poll())
                .await
                .expect("timed out")
                .expect("connection");
            if let Event::Incoming(p) = ev {
                if let Some(t) = f(p) {
                    return t;
                }
            }
        }
    }

    async fn suback(&mut self) {
        self.until(|p| matches!(p, P5::SubAck(_)).then_some(()))
            .await;
    }

    async fn publish_in(&mut self) -> Publish {
        self.until(|p| match p {
            P5::Publish(p) => Some(p),
            _ => None,
        })
        .await
    }

    /// The next PUBLISH if one arrives within `QUIET`.
    async fn maybe_publish(&mut self) -> Option<Publish> {
        tokio::time::timeout(QUIET, self.publish_in()).await.ok()
    }

    async fn subscribe(&mut self, filter: Filter) {
        self.client.subscribe_many([filter]).await.unwrap();
        self.suback().await;
    }

    /// Takes the next `n` PUBLISHes, acknowledging each (manual acks); their payloads.
    async fn ack_all(&mut self, n: usize) -> Vec<String> {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            let p = self.publish_in().await;
            self.client.ack(&p).await.unwrap();
            got.push(String::from_utf8(p.payload.to_vec()).unwrap());
        }
        got
    }

    /// Publishes at QoS 1 and waits for the PUBACK.
    async fn publish_acked(&mut self, topic: &str, retain: bool, payload: &str) {
        self.client
            .publish(topic, Q5::AtLeastOnce, retain, payload.to_owned())
            .await
            .unwrap();
        self.until(|p| matches!(p, P5::PubAck(_)).then_some(()))
            .await;
    }
}

fn v5(id: &str, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connack_declares_what_the_server_does() {
    // MQTT 5 §3.2.2.3: Receive Maximum, Maximum Packet Size, Topic Alias Maximum, Retain /
    // Wildcard / Subscription Identifier / Shared Subscription Available; no Maximum QoS
    // property, since QoS 2 is supported (3.2.2.3.4: absent means 2).
    let g = Gateway::start("[broker]\nserver_keep_alive = 20\n");
    let (_c, ack) = V5::connect(v5("props", g.mqtt_port)).await;
    let p = ack.properties.expect("CONNACK properties");
    assert_eq!(p.receive_max, Some(100));
    assert_eq!(p.max_qos, None);
    assert_eq!(p.max_packet_size, Some(1024 * 1024 + 128 * 1024));
    assert_eq!(p.topic_alias_max, Some(64));
    assert_eq!(p.retain_available, Some(1));
    assert_eq!(p.wildcard_subscription_available, Some(1));
    assert_eq!(p.subscription_identifiers_available, Some(1));
    assert_eq!(p.shared_subscription_available, Some(1));
    assert_eq!(p.server_keep_alive, Some(20), "broker.server_keep_alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_local_keeps_a_clients_own_messages_from_it() {
    // MQTT 5 §3.8.3.1, [MQTT-3.8.3-3]: with No Local, messages are not forwarded to the
    // connection that published them.
    let g = Gateway::start("");
    let (mut me, _) = V5::connect(v5("nl-me", g.mqtt_port)).await;
    let (mut other, _) = V5::connect(v5("nl-other", g.mqtt_port)).await;
    let mut f = Filter::new("nl/t", Q5::AtLeastOnce);
    f.nolocal = true;
    me.subscribe(f).await;
    me.publish_acked("nl/t", false, "mine").await;
    other.publish_acked("nl/t", false, "theirs").await;
    let got = me.publish_in().await;
    assert_eq!(
        &got.payload[..],
        b"theirs",
        "its own message was not sent back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_as_published_and_retain_handling() {
    let g = Gateway::start("");
    let (mut publisher, _) = V5::connect(v5("rap-pub", g.mqtt_port)).await;
    publisher.publish_acked("rh/t", true, "stored").await;

    // Retain Handling 2 (§3.8.3.1): no retained message at subscribe.
    let (mut never, _) = V5::connect(v5("rh-2", g.mqtt_port)).await;
    let mut f = Filter::new("rh/t", Q5::AtLeastOnce);
    f.retain_forward_rule = RetainForwardRule::Never;
    never.subscribe(f).await;
    // Retain As Published (§3.8.3.1, [MQTT-3.3.1-12]): a live delivery keeps the RETAIN flag;
    // without it the flag is cleared ([MQTT-3.3.1-13]).
    let (mut rap, _) = V5::connect(v5("rap", g.mqtt_port)).await;
    let mut f = Filter::new("rap/t", Q5::AtLeastOnce);
    f.preserve_retain = true;
    rap.subscribe(f).await;
    let (mut plain, _) = V5::connect(v5("rap-plain", g.mqtt_port)).await;
    plain.subscribe(Filter::new("rap/t", Q5::AtLeastOnce)).await;

    publisher.publish_acked("rh/t", false, "live").await;
    publisher.publish_acked("rap/t", true, "flagged").await;
    let first = never.publish_in().await;
    assert_eq!(&first.payload[..], b"live", "the retained one was not sent");
    let got = rap.publish_in().await;
    assert!(got.retain, "Retain As Published keeps the flag");
    let got = plain.publish_in().await;
    assert!(
        !got.retain,
        "cleared on a live delivery without Retain As Published"
    );

    // Retain Handling 1: sent only for a new subscription.
    let (mut once, _) = V5::connect(v5("rh-1", g.mqtt_port)).await;
    let mut f = Filter::new("rh/t", Q5::AtLeastOnce);
    f.retain_forward_rule = RetainForwardRule::OnNewSubscribe;
    once.subscribe(f.clone()).await;
    assert_eq!(&once.publish_in().await.payload[..], b"stored");
    once.subscribe(f).await;
    assert!(
        once.maybe_publish().await.is_none(),
        "not again for an existing subscription"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_of_an_unknown_filter_gets_its_unsuback() {
    // MQTT 5 §3.11.3 (reason 0x11 No subscription existed); 3.1.1 [MQTT-3.10.4-5]: the server
    // answers every UNSUBSCRIBE with UNSUBACK, even when nothing was deleted.
    let g = Gateway::start("");
    let (mut c, _) = V5::connect(v5("unsub5", g.mqtt_port)).await;
    c.client.unsubscribe("never/subscribed").await.unwrap();
    let reasons = c
        .until(|p| match p {
            P5::UnsubAck(a) => Some(a.reasons),
            _ => None,
        })
        .await;
    assert_eq!(reasons, vec![UnsubAckReason::NoSubscriptionExisted]);

    let (client, mut events) =
        rumqttc::AsyncClient::new(grove_tests::options("unsub311", g.mqtt_port), 10);
    client.unsubscribe("never/subscribed").await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::UnsubAck(_)))) => break,
            Ok(Ok(_)) => {}
            other => panic!("3.1.1 UNSUBACK expected, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_3_1_1_resubscribe_sends_the_retained_message_again() {
    // MQTT 3.1.1 [MQTT-3.8.4-3]: a SUBSCRIBE that replaces a subscription re-sends the retained
    // messages matching its filter.
    let g = Gateway::start("");
    let mut publisher = grove_tests::Client::connect("rs-pub", g.mqtt_port).await;
    publisher
        .publish("rs/t", rumqttc::QoS::AtLeastOnce, true, "kept")
        .await;
    publisher.acked(1).await;
    let mut sub = grove_tests::Client::connect("rs-sub", g.mqtt_port).await;
    for round in ["first", "again"] {
        sub.subscribe("rs/t", rumqttc::QoS::AtLeastOnce).await;
        let got = sub.recv_n(1, WAIT).await;
        assert!(got[0].retain, "{round}: retained");
        assert_eq!(&got[0].payload[..], b"kept", "{round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_keeps_or_ends_a_session_as_the_client_asked() {
    // MQTT 5 §3.1.2.11.2 and §3.1.2.4: a session with an expiry interval outlives its connection
    // and gets what was published meanwhile; Clean Start discards it (Session Present 0).
    let g = Gateway::start("");
    let persistent = |id: &str, clean: bool| {
        let mut o = v5(id, g.mqtt_port);
        o.set_clean_start(clean);
        let mut p = ConnectProperties::new();
        p.session_expiry_interval = Some(300);
        o.set_connect_properties(p);
        o
    };
    let (mut away, ack) = V5::connect(persistent("se", true)).await;
    assert!(!ack.session_present);
    away.subscribe(Filter::new("se/t", Q5::AtLeastOnce)).await;
    away.client.disconnect().await.unwrap();
    let (mut publisher, _) = V5::connect(v5("se-pub", g.mqtt_port)).await;
    publisher.publish_acked("se/t", false, "while away").await;

    let (mut back, ack) = V5::connect(persistent("se", false)).await;
    assert!(ack.session_present, "the session was kept");
    let got = back.publish_in().await;
    assert_eq!(&got.payload[..], b"while away");
    assert_eq!(got.qos, Q5::AtLeastOnce);
    back.client.disconnect().await.unwrap();

    let (_fresh, ack) = V5::connect(persistent("se", true)).await;
    assert!(!ack.session_present, "Clean Start ends the old session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_receive_maximum_bounds_unacknowledged_deliveries() {
    // MQTT 5 §3.3.4 ([MQTT-3.3.4-9]): the server sends no more QoS 1/2 PUBLISHes than the client's
    // Receive Maximum before they are acknowledged.
    let g = Gateway::start("");
    let mut o = v5("rm", g.mqtt_port);
    o.set_manual_acks(true);
    let mut p = ConnectProperties::new();
    p.receive_maximum = Some(2);
    o.set_connect_properties(p);
    let (mut sub, _) = V5::connect(o).await;
    sub.subscribe(Filter::new("rm/t", Q5::AtLeastOnce)).await;
    let (mut publisher, _) = V5::connect(v5("rm-pub", g.mqtt_port)).await;
    for i in 0..4 {
        publisher.publish_acked("rm/t", false, &i.to_string()).await;
    }
    let first = sub.publish_in().await;
    let second = sub.publish_in().await;
    assert!(
        sub.maybe_publish().await.is_none(),
        "a third before any PUBACK"
    );
    sub.client.ack(&first).await.unwrap();
    let third = sub.publish_in().await;
    sub.client.ack(&second).await.unwrap();
    let fourth = sub.publish_in().await;
    let order: Vec<_> = [first, second, third, fourth]
        .iter()
        .map(|p| String::from_utf8(p.payload.to_vec()).unwrap())
        .collect();
    assert_eq!(order, ["0", "1", "2", "3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_client_takes_its_session_over() {
    // MQTT 5 §3.1.4 [MQTT-3.1.4-3]: the existing connection of the same client id is closed,
    // with DISCONNECT 0x8E Session taken over (§4.13).
    let g = Gateway::start("");
    // The old connection: mosquitto's own client, which prints the DISCONNECT it receives.
    let old = grove_tests::MosquittoSub::connect_v5(g.mqtt_port, "twin", "tw/t");
    let (_new, ack) = V5::connect(v5("twin", g.mqtt_port)).await;
    assert!(
        !ack.session_present,
        "a clean start takes over and discards"
    );
    let (lines, _) = old.finish();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Received DISCONNECT (142)")),
        "0x8E = 142 to the old connection: {lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_2_is_delivered_exactly_once_at_qos_2() {
    // MQTT 5 §4.3.3: PUBLISH, PUBREC, PUBREL, PUBCOMP both ways; delivered at min(2, 2) = 2.
    let g = Gateway::start("");
    let (mut sub, _) = V5::connect(v5("q2-sub", g.mqtt_port)).await;
    sub.subscribe(Filter::new("q2/t", Q5::ExactlyOnce)).await;
    let (mut publisher, _) = V5::connect(v5("q2-pub", g.mqtt_port)).await;
    publisher
        .client
        .publish("q2/t", Q5::ExactlyOnce, false, "once")
        .await
        .unwrap();
    publisher
        .until(|p| matches!(p, P5::PubComp(_)).then_some(()))
        .await;
    let got = sub.publish_in().await;
    assert_eq!((got.qos, &got.payload[..]), (Q5::ExactlyOnce, &b"once"[..]));
    assert!(sub.maybe_publish().await.is_none(), "exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stopped_acknowledging_gets_every_message_once_it_acks_again() {
    // Issue 14's measurement: an MQTT 5 subscriber (Receive Maximum 10, session expiry 300) that
    // stops acknowledging while 2,000 QoS 1 messages are published, then acknowledges everything,
    // receives all 2,000, in order (MQTT 5 §4.6: ordered delivery per topic at QoS 1; §3.3.4:
    // Receive Maximum only delays them).
    let g = Gateway::start("");
    let mut o = v5("laggard", g.mqtt_port);
    o.set_manual_acks(true);
    let mut p = ConnectProperties::new();
    p.receive_maximum = Some(10);
    p.session_expiry_interval = Some(300);
    o.set_connect_properties(p);
    let (mut sub, _) = V5::connect(o).await;
    sub.subscribe(Filter::new("lag/t", Q5::AtLeastOnce)).await;
    let n = 2_000;
    // Every message is accepted while the subscriber acknowledges nothing.
    publish_all(g.mqtt_port, "lag-pub", "lag/t", n)
        .await
        .unwrap();
    assert_eq!(sub.ack_all(n).await, numbered(n));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_declares_no_receive_maximum_gets_max_inflight_messages_at_most() {
    // MQTT 5 §3.1.2.11.3: no Receive Maximum means 65,535, and a server may send fewer.
    // `broker.max_inflight_messages` bounds what the gateway holds in flight for one client
    // (MQTT 3.1.1 clients declare nothing either): the rest waits in its bounded queue.
    let g = Gateway::start("[broker]\nmax_inflight_messages = 3\n");
    let mut o = v5("unbounded", g.mqtt_port);
    o.set_manual_acks(true);
    let (mut sub, _) = V5::connect(o).await;
    sub.subscribe(Filter::new("mi/t", Q5::AtLeastOnce)).await;
    let (mut publisher, _) = V5::connect(v5("mi-pub", g.mqtt_port)).await;
    for i in 0..5 {
        publisher.publish_acked("mi/t", false, &i.to_string()).await;
    }
    let mut first = Vec::new();
    for _ in 0..3 {
        first.push(sub.publish_in().await);
    }
    assert!(
        sub.maybe_publish().await.is_none(),
        "a fourth before any PUBACK"
    );
    sub.client.ack(&first[0]).await.unwrap();
    let fourth = sub.publish_in().await;
    assert_eq!(&fourth.payload[..], b"3");
}

/// "0", "1", ... "n - 1": the payloads `publish_all` sends.
fn numbered(n: usize) -> Vec<String> {
    (0..n).map(|i| i.to_string()).collect()
}

/// A subscriber to `filter` at QoS 1 that acknowledges only when the test does (manual acks),
/// with 10 deliveries in flight at most (Receive Maximum 10).
async fn lagging_subscriber(port: u16, id: &str, filter: &str) -> V5 {
    let mut o = v5(id, port);
    o.set_manual_acks(true);
    let mut p = ConnectProperties::new();
    p.receive_maximum = Some(10);
    o.set_connect_properties(p);
    let (mut sub, _) = V5::connect(o).await;
    sub.subscribe(Filter::new(filter, Q5::AtLeastOnce)).await;
    sub
}

/// Publishes `n` QoS 1 messages ("0", "1", ...) on `topic` from an MQTT 5 rumqttc client (at most
/// 100 in flight: its default, and the gateway's Receive Maximum), and returns when all `n` are
/// acknowledged.
fn publish_all(port: u16, id: &str, topic: &'static str, n: usize) -> tokio::task::JoinHandle<()> {
    let o = v5(id, port);
    tokio::spawn(async move {
        let (mut publisher, _) = V5::connect(o).await;
        let client = publisher.client.clone();
        tokio::spawn(async move {
            for i in 0..n {
                client
                    .publish(topic, Q5::AtLeastOnce, false, i.to_string())
                    .await
                    .unwrap();
            }
        });
        for _ in 0..n {
            publisher
                .until(|p| matches!(p, P5::PubAck(_)).then_some(()))
                .await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_holds_its_qos_1_publisher_instead_of_losing_messages() {
    // Issue 14: flow control slows publishers at the source. A subscriber with a tenth of its
    // queue bound queued holds the PUBACKs of its QoS 1 publisher until it has caught up to half
    // of that, so the publisher waits instead of filling the queue: all 1,000 messages arrive,
    // five times the queue's bound of 200. (Without it, all 1,000 were acknowledged at once and
    // those beyond the bound dropped.) The hold is long here so that how fast this machine runs
    // the test cannot turn the slow subscriber into a stuck one.
    let g = Gateway::start("[broker]\nqueue_max_messages = 200\nbackpressure_hold_ms = 600000\n");
    let mut sub = lagging_subscriber(g.mqtt_port, "slow", "bp/t").await;
    let n = 1_000;
    let publishing = publish_all(g.mqtt_port, "bp-pub", "bp/t", n);
    // The subscriber acknowledges nothing until the publisher is held.
    grove_tests::blocking(|| g.wait_metric("grove_broker_acks_backpressured_total", |v| v >= 1.0));
    assert_eq!(sub.ack_all(n).await, numbered(n));
    publishing.await.unwrap();
    assert_eq!(
        g.metric("grove_broker_dropped_total{reason=\"queue_full\"}"),
        0.0
    );
    assert_eq!(g.metric("grove_broker_backpressure_stalls_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_subscriber_delays_its_publisher_once_and_then_fills_only_its_own_queue() {
    // Issue 14: one stuck subscriber must not stall the others. A subscriber that never
    // acknowledges holds its publisher for `broker.backpressure_hold_ms` once; then it counts as
    // stalled, the publisher gets every PUBACK, and the subscriber's queue fills to its bound
    // (10 in flight + 50 queued), the rest dropped and counted.
    let g = Gateway::start("[broker]\nqueue_max_messages = 50\nbackpressure_hold_ms = 200\n");
    let mut sub = lagging_subscriber(g.mqtt_port, "stuck", "st/t").await;
    let n = 500;
    let publishing = publish_all(g.mqtt_port, "st-pub", "st/t", n);
    // The subscriber's event loop is polled (it reads), but it never acknowledges.
    let reading = tokio::spawn(async move {
        loop {
            sub.publish_in().await;
        }
    });
    publishing.await.unwrap();
    g.wait_metric("grove_broker_backpressure_stalls_total", |v| v == 1.0);
    g.wait_metric("grove_broker_dropped_total{reason=\"queue_full\"}", |v| {
        v == (n - 10 - 50) as f64
    });
    reading.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_over_the_clients_maximum_packet_size_is_not_sent_and_is_counted() {
    // MQTT 5 §3.1.2.11.4 [MQTT-3.1.2-25]: the server must not send a packet larger than the
    // client's Maximum Packet Size; it discards the message as if sent. Grove counts it.
    let g = Gateway::start("");
    let mut o = v5("small", g.mqtt_port);
    o.set_max_packet_size(Some(200));
    let (mut sub, _) = V5::connect(o).await;
    sub.subscribe(Filter::new("mps/t", Q5::AtLeastOnce)).await;
    let (mut publisher, _) = V5::connect(v5("mps-pub", g.mqtt_port)).await;
    publisher
        .publish_acked("mps/t", false, &"x".repeat(500))
        .await;
    publisher.publish_acked("mps/t", false, "small").await;
    let got = sub.publish_in().await;
    assert_eq!(&got.payload[..], b"small", "the large one was not sent");
    // Counted by the router task as it hands the next packets out: waited for, not raced.
    g.wait_metric("grove_broker_dropped_total{reason=\"too_large\"}", |v| {
        v == 1.0
    });
}

/// The refusals counted as malformed so far.
fn malformed_count(g: &Gateway) -> f64 {
    g.metric("grove_broker_refused_total{reason=\"malformed\"}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_connects_are_refused_at_once() {
    // MQTT 3.1.1 [MQTT-3.1.2-3] and 5.0 §3.1.2.3: the reserved connect flag must be 0, else the
    // CONNECT is malformed; 3.1.1 closes the connection (§4.8), 5.0 may send CONNACK 0x81 first
    // and closes (§4.13, [MQTT-4.13.1-1]). An empty CONNECT (remaining length 0) can never become
    // a valid one: it is malformed at once, not held until the CONNECT timeout. The timeout here
    // is longer than the test's wait, so every close seen is a refusal, and each is counted as
    // one (`refused{reason="malformed"}`), never as a timeout.
    let g = Gateway::start("[broker]\nconnect_timeout_ms = 60000\n");
    let mut c = RawClient::open(g.mqtt_addr()).await;
    c.send_malformed(Malformed::ConnectReservedFlag { v5: false })
        .await;
    c.expect_closed().await;
    g.wait_metric("grove_broker_refused_total{reason=\"malformed\"}", |v| {
        v == 1.0
    });

    let mut c = RawClient::open(g.mqtt_addr()).await;
    c.send_malformed(Malformed::ConnectReservedFlag { v5: true })
        .await;
    match c.next5().await {
        Packet5::ConnAck(a) => assert_eq!(
            a.code,
            rumqttc::v5::mqttbytes::v5::ConnectReturnCode::MalformedPacket
        ),
        other => panic!("CONNACK 0x81, got {other:?}"),
    }
    c.expect_closed().await;

    let mut c = RawClient::open(g.mqtt_addr()).await;
    c.send_malformed(Malformed::EmptyConnect).await;
    c.expect_closed().await;
    g.wait_metric("grove_broker_refused_total{reason=\"malformed\"}", |v| {
        v == 3.0
    });
    assert_eq!(
        g.metric("grove_broker_refused_total{reason=\"connect_timeout\"}"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_fixed_header_flags_close_the_connection() {
    // MQTT 3.1.1 [MQTT-2.2.2-2]: flags other than Table 2.2's are malformed and the connection is
    // closed; SUBSCRIBE [MQTT-3.8.1-1], UNSUBSCRIBE [MQTT-3.10.1-1] and PUBREL [MQTT-3.6.1-1]
    // carry 0b0010. MQTT 5 [MQTT-2.1.3-1], §4.13: DISCONNECT 0x81 Malformed Packet, then close.
    let g = Gateway::start("");
    for (i, packet) in [
        Malformed::SubscribeFlags { v5: false },
        Malformed::UnsubscribeFlags,
        Malformed::PubRelFlags,
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = RawClient::connect(g.mqtt_addr(), &format!("flags-{i}")).await;
        c.send_malformed(packet).await;
        c.expect_closed().await;
        g.wait_metric("grove_broker_refused_total{reason=\"malformed\"}", |v| {
            v == (i + 1) as f64
        });
    }
    let mut c = RawClient::open(g.mqtt_addr()).await;
    let ack = c.login5(connect5("flags-v5", true)).await.unwrap();
    assert_eq!(
        ack.code,
        rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success
    );
    c.send_malformed(Malformed::SubscribeFlags { v5: true })
        .await;
    match c.next5().await {
        Packet5::Disconnect(d) => assert_eq!(
            d.reason_code,
            rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::MalformedPacket
        ),
        other => panic!("DISCONNECT 0x81, got {other:?}"),
    }
    c.expect_closed().await;
    assert_eq!(malformed_count(&g), 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unexpected_acknowledgements_do_not_close_the_connection() {
    // MQTT 5 §4.3.3 and §3.7.2.1: a PUBREL for an unknown packet id gets PUBCOMP 0x92 Packet
    // Identifier not found; a PUBACK for nothing is ignored. 3.1.1 ([MQTT-4.3.3-2]): PUBCOMP for
    // the PUBREL. Either way the connection stays up: a SUBSCRIBE afterwards is answered.
    use rumqttc::v5::mqttbytes::v5::{PubAck as PubAck5, PubCompReason, PubRel as PubRel5};
    let g = Gateway::start("");
    let mut c = RawClient::connect(g.mqtt_addr(), "acks-311").await;
    c.send_packet(rumqttc::Packet::PubAck(rumqttc::PubAck::new(9)))
        .await;
    c.send_packet(rumqttc::Packet::PubRel(rumqttc::PubRel::new(9)))
        .await;
    match c.next().await {
        rumqttc::Packet::PubComp(p) => assert_eq!(p.pkid, 9),
        other => panic!("PUBCOMP, got {other:?}"),
    }
    c.subscribe("still/up", rumqttc::QoS::AtLeastOnce).await;

    let mut c = RawClient::open(g.mqtt_addr()).await;
    c.login5(connect5("acks-5", true)).await.unwrap();
    c.send5(Packet5::PubAck(PubAck5::new(9, None))).await;
    c.send5(Packet5::PubRel(PubRel5::new(9, None))).await;
    match c.next5().await {
        Packet5::PubComp(p) => {
            assert_eq!(p.pkid, 9);
            assert_eq!(p.reason, PubCompReason::PacketIdentifierNotFound);
        }
        other => panic!("PUBCOMP 0x92, got {other:?}"),
    }
    c.send5(Packet5::PingReq(rumqttc::v5::mqttbytes::v5::PingReq))
        .await;
    assert!(matches!(c.next5().await, Packet5::PingResp(_)));
    assert_eq!(malformed_count(&g), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ids_empty_or_with_nul() {
    // MQTT 5 §3.1.3.1: an empty client id is allowed whatever Clean Start says; the server
    // assigns one and returns it in Assigned Client Identifier ([MQTT-3.1.3-7], §3.2.2.3.7).
    // MQTT 3.1.1 [MQTT-3.1.3-8]: an empty id with CleanSession=0 is refused, 0x02. A NUL is not
    // allowed in a UTF-8 string (§1.5.3, [MQTT-1.5.3-2]): the client id is refused.
    let g = Gateway::start("");
    let mut c = RawClient::open(g.mqtt_addr()).await;
    let ack = c.login5(connect5("", false)).await.unwrap();
    assert_eq!(
        ack.code,
        rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success
    );
    let assigned = ack
        .properties
        .and_then(|p| p.assigned_client_identifier)
        .expect("Assigned Client Identifier");
    assert!(!assigned.is_empty());

    let mut c = RawClient::open(g.mqtt_addr()).await;
    let mut empty = rumqttc::Connect::new("");
    empty.clean_session = false;
    assert_eq!(
        c.login(&empty).await,
        Ok(rumqttc::ConnectReturnCode::BadClientId)
    );

    let mut c = RawClient::open(g.mqtt_addr()).await;
    assert_eq!(
        c.login(&rumqttc::Connect::new("nul\0id")).await,
        Ok(rumqttc::ConnectReturnCode::BadClientId)
    );
    let mut c = RawClient::open(g.mqtt_addr()).await;
    let ack = c.login5(connect5("nul\0id", true)).await.unwrap();
    assert_eq!(
        ack.code,
        rumqttc::v5::mqttbytes::v5::ConnectReturnCode::ClientIdentifierNotValid
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_silent_for_one_and_a_half_keep_alive_periods_is_closed_and_its_will_published() {
    // MQTT 3.1.1 §3.1.2.10 [MQTT-3.1.2-24] and MQTT 5 §3.1.2.11: a server that hears nothing from
    // a client within one and a half keep-alive periods closes its connection (MQTT 5: with
    // DISCONNECT 0x8D Keep Alive timeout, §3.14.2.1), and the will is published (§3.1.2.5). A
    // client that pings in time stays.
    use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, LastWill};
    let g = Gateway::start("");
    let (mut watcher, _) = V5::connect(v5("ka-watcher", g.mqtt_port)).await;
    watcher
        .subscribe(Filter::new("ka/#", Q5::AtLeastOnce))
        .await;

    // rumqttc (3.1.1: its MQTT 5 client allows no keep-alive under 5 s) with keep-alive 1 s,
    // its event loop polled all along: it pings on its own; the harness does not reconnect it.
    let mut o = grove_tests::options("ka-pinging", g.mqtt_port);
    o.set_keep_alive(Duration::from_secs(1));
    let mut pinging = grove_tests::Client::connect_with(o).await;

    // MQTT 5, keep-alive 1 s, with a will, then silent.
    let started = tokio::time::Instant::now();
    let mut silent = RawClient::open(g.mqtt_addr()).await;
    let mut connect = grove_tests::connect5("ka-silent-5", true);
    connect.keep_alive = 1;
    let will = LastWill::new("ka/silent-5", "gone", Q5::AtMostOnce, false, None);
    silent
        .send5(Packet5::Connect(connect, Some(will), None))
        .await;
    assert!(matches!(silent.next5().await, Packet5::ConnAck(_)));
    match silent.next5().await {
        Packet5::Disconnect(d) => {
            assert_eq!(d.reason_code, DisconnectReasonCode::KeepAliveTimeout)
        }
        other => panic!("DISCONNECT 0x8D, got {other:?}"),
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1_500),
        "closed before 1.5 keep-alive periods: {:?}",
        started.elapsed()
    );
    silent.expect_closed().await;
    assert_eq!(&watcher.publish_in().await.payload[..], b"gone");

    // MQTT 3.1.1, keep-alive 1 s, then silent: the connection is closed (3.1.1 has no
    // DISCONNECT from the server) and its will published.
    let mut connect = rumqttc::Connect::new("ka-silent-311");
    connect.keep_alive = 1;
    connect.last_will = Some(rumqttc::LastWill::new(
        "ka/silent-311",
        "gone too",
        rumqttc::QoS::AtMostOnce,
        false,
    ));
    let mut silent = RawClient::connect_with(g.mqtt_addr(), connect).await;
    silent.expect_closed().await;
    assert_eq!(&watcher.publish_in().await.payload[..], b"gone too");

    // The pinging client was connected all along (its one connection, which would have ended
    // the harness's event loop had it been closed): a message from it is acknowledged and
    // arrives.
    (pinging)
        .publish("ka/pinging", rumqttc::QoS::AtLeastOnce, false, "here")
        .await;
    pinging.acked(1).await;
    assert_eq!(&watcher.publish_in().await.payload[..], b"here");
}
