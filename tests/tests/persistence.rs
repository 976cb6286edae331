//! Persistent sessions across kill -9 (issue 14): "nothing acknowledged is lost, nothing QoS 2 is
//! delivered twice". The publisher is mosquitto_pub (a stock client, which exits only after its
//! PUBACK or PUBCOMP) and rumqttc; the subscriber is a raw MQTT 3.1.1 session (rumqttc's codec)
//! so that the test chooses when each acknowledgement is sent, and the gateway is killed between
//! them.

use std::collections::HashMap;

use grove_tests::{blocking, mosquitto_pub, Client, Gateway, RawClient};
use rumqttc::{Packet, PubComp, PubRec, QoS};

const Q1: usize = 100;
const Q2: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_keeps_acknowledged_messages_and_qos_2_state_across_kill_9() {
    let mut g = Gateway::start("");

    // A persistent session (MQTT 3.1.1 §3.1.2.4, Clean Session 0) with a QoS 2 and a QoS 1
    // subscription, then away.
    let (mut sub, present) = RawClient::connect_persistent(g.mqtt_addr(), "keeper").await;
    assert!(!present, "a new session");
    sub.subscribe("k/q2", QoS::ExactlyOnce).await;
    sub.subscribe("k/q1", QoS::AtLeastOnce).await;
    sub.disconnect().await;

    // Published while it is away, each acknowledged to its publisher: QoS 2 by mosquitto_pub
    // (which exits after PUBCOMP), then QoS 1 by rumqttc (PUBACKs counted).
    let port = g.mqtt_port;
    blocking(move || {
        for i in 0..Q2 {
            mosquitto_pub(port, &["-q", "2", "-t", "k/q2", "-m", &format!("two-{i}")]);
        }
    });
    let mut publisher = Client::connect("pub", port).await;
    for i in 0..Q1 {
        publisher
            .publish("k/q1", QoS::AtLeastOnce, false, format!("one-{i}"))
            .await;
    }
    publisher.acked(Q1).await;
    publisher.disconnect().await;

    // Back: the first QoS 2 message is taken with PUBREC, and the gateway's PUBREL (sent only
    // after that PUBREC is committed) arrives; PUBCOMP is not sent. The second QoS 2 message is
    // held without PUBREC. Then kill -9.
    let (mut sub, present) = RawClient::connect_persistent(g.mqtt_addr(), "keeper").await;
    assert!(present, "the session was kept while the client was away");
    let first = next_publish(&mut sub).await;
    assert_eq!(
        (first.qos, &first.payload[..]),
        (QoS::ExactlyOnce, &b"two-0"[..])
    );
    sub.send_packet(Packet::PubRec(PubRec::new(first.pkid)))
        .await;
    let mut later = Vec::new(); // deliveries after the first, left unacknowledged
    loop {
        match sub.next().await {
            Packet::PubRel(r) if r.pkid == first.pkid => break,
            Packet::Publish(p) => later.push(p),
            other => panic!("PUBREL for {}, got {other:?}", first.pkid),
        }
    }
    let held = match later.into_iter().next() {
        Some(p) => p,
        None => next_publish(&mut sub).await,
    };
    assert_eq!(
        (held.qos, &held.payload[..]),
        (QoS::ExactlyOnce, &b"two-1"[..])
    );
    g.kill_and_restart();

    // After the restart the session is there; the first QoS 2 message continues with PUBREL (not
    // a new PUBLISH), the held one comes again with its packet id and DUP set (MQTT 3.1.1 §4.4,
    // [MQTT-4.4.0-1]), and every message acknowledged to its publisher arrives.
    let (mut sub, present) = RawClient::connect_persistent(g.mqtt_addr(), "keeper").await;
    assert!(present, "the session survived kill -9");
    let mut released = false;
    let mut twos: HashMap<String, usize> = HashMap::new();
    let mut ones: Vec<String> = Vec::new();
    while !(released && twos.len() == Q2 - 1 && ones.len() == Q1) {
        match sub.next().await {
            Packet::PubRel(r) => {
                if r.pkid == first.pkid {
                    released = true;
                }
                sub.send_packet(Packet::PubComp(PubComp::new(r.pkid))).await;
            }
            Packet::Publish(p) if p.qos == QoS::ExactlyOnce => {
                let payload = String::from_utf8(p.payload.to_vec()).unwrap();
                if payload == "two-1" {
                    assert_eq!((p.pkid, p.dup), (held.pkid, true), "the held one, resent");
                }
                *twos.entry(payload).or_default() += 1;
                sub.send_packet(Packet::PubRec(PubRec::new(p.pkid))).await;
            }
            Packet::Publish(p) => {
                assert_eq!(p.qos, QoS::AtLeastOnce);
                ones.push(String::from_utf8(p.payload.to_vec()).unwrap());
                sub.send_packet(Packet::PubAck(rumqttc::PubAck::new(p.pkid)))
                    .await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        !twos.contains_key("two-0"),
        "the QoS 2 message PUBREC'd before the crash was sent again as a new PUBLISH"
    );
    for i in 1..Q2 {
        assert_eq!(twos.get(&format!("two-{i}")), Some(&1), "two-{i}: {twos:?}");
    }
    let expected: Vec<String> = (0..Q1).map(|i| format!("one-{i}")).collect();
    assert_eq!(ones, expected, "every QoS 1 message, in order");
}

async fn next_publish(c: &mut RawClient) -> rumqttc::Publish {
    loop {
        if let Packet::Publish(p) = c.next().await {
            return p;
        }
    }
}
