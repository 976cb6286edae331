//! MQTT 3.1.1 and MQTT 5 conformance of Grove's broker (issue 14), proven with Python paho-mqtt, a
//! stock client Grove did not write, against the real `grove` binary: each test runs one script
//! of `tests/paho/` and asserts on the facts it reports (what arrived, reason codes, CONNACK
//! properties), citing the specification. `tests/mqtt_spec.rs` checks several of these with
//! rumqttc and mosquitto's clients; these are the same promises kept to another client.
//!
//! Every test starts its own gateway: the scripts use fixed client ids and topics, and some
//! tests read the gateway's counters.

use grove_tests::Mqtt::{V311, V5};
use grove_tests::{paho, Gateway, Mqtt};
use serde_json::{json, Value};

/// Runs a script against `g`.
fn run(g: &Gateway, script: &str, version: Mqtt, args: &[&str]) -> Value {
    paho(script, g.mqtt_port, version, args)
}

#[test]
fn connack_declares_what_the_server_does_mqtt5_3_2_2_3() {
    // MQTT 5 §3.2.2.3: Receive Maximum, Maximum Packet Size (Grove: the payload limit + 128 KiB
    // for the rest of the packet), Topic Alias Maximum, Retain / Wildcard / Subscription
    // Identifier / Shared Subscription Available, Server Keep Alive when configured; no Maximum
    // QoS, since QoS 2 is supported (§3.2.2.3.4: absent means 2). Exactly these.
    let g = Gateway::start("[broker]\nserver_keep_alive = 20\nmax_payload_size = 65536\n");
    let facts = run(&g, "connack.py", V5, &[]);
    assert_eq!(facts["reason"], 0);
    assert_eq!(facts["session_present"], false);
    assert_eq!(
        facts["props"],
        json!({
            "ReceiveMaximum": 100,
            "MaximumPacketSize": 65536 + 128 * 1024,
            "TopicAliasMaximum": 64,
            "RetainAvailable": 1,
            "WildcardSubscriptionAvailable": 1,
            "SubscriptionIdentifierAvailable": 1,
            "SharedSubscriptionAvailable": 1,
            "ServerKeepAlive": 20,
        })
    );
    // MQTT 3.1.1 §3.2.2.3: return code 0, a clean session has no session present.
    let facts = run(&g, "connack.py", V311, &[]);
    assert_eq!(
        (&facts["reason"], &facts["session_present"]),
        (&json!(0), &json!(false))
    );
}

/// The deliveries of `qos.py`: each [subscription QoS, published QoS, delivered QoS].
fn qos_deliveries(version: Mqtt) {
    let g = Gateway::start("");
    let facts = run(&g, "qos.py", version, &[]);
    assert_eq!(facts["granted"], json!([0, 1, 2]));
    let mut seen = Vec::new();
    for d in facts["deliveries"].as_array().expect("deliveries") {
        let qos = |i: usize| d[i].as_u64().expect("a QoS");
        let (sub, publ, got) = (qos(0), qos(1), qos(2));
        assert_eq!(
            got,
            sub.min(publ),
            "subscribed at {sub}, published at {publ}"
        );
        seen.push((sub, publ));
    }
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 9, "each of the 9 once: {seen:?}");
}

#[test]
fn delivery_qos_is_the_minimum_of_published_and_granted_mqtt3_1_1_3_8_4_6() {
    // MQTT 3.1.1 [MQTT-3.8.4-6]: the QoS of a delivery is the lower of the published QoS and the
    // maximum QoS granted.
    qos_deliveries(V311);
}

#[test]
fn delivery_qos_is_the_minimum_of_published_and_granted_mqtt5_3_8_4_8() {
    // MQTT 5 [MQTT-3.8.4-8], the same rule.
    qos_deliveries(V5);
}

/// `session.py` away, then `publish.py` QoS 1 "one" and QoS 2 "two", "end", then `session.py`
/// back: the second connection's facts.
fn away_and_back(
    g: &Gateway,
    version: Mqtt,
    id: &str,
    expiry: &str,
    between: impl FnOnce(),
) -> Value {
    let topic = format!("se/{id}");
    let away = run(g, "session.py", version, &[id, "away", expiry, &topic]);
    assert_eq!(away["session_present"], false, "a new session");
    run(g, "publish.py", version, &[&topic, "1", "one"]);
    run(g, "publish.py", version, &[&topic, "2", "two", "end"]);
    between();
    run(g, "session.py", version, &[id, "back", expiry, "end"])
}

/// The received messages' [payload, QoS].
fn payloads_and_qos(messages: &Value) -> Value {
    let pairs: Vec<Value> = messages
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| json!([m["payload"], m["qos"]]))
        .collect();
    Value::Array(pairs)
}

/// A persistent session (`expiry` for MQTT 5; Clean Session 0 on 3.1.1) is found again and gets
/// the messages published while its client was away, at their QoS, in order.
fn gets_what_was_queued(version: Mqtt, expiry: &str) {
    let g = Gateway::start("");
    let back = away_and_back(&g, version, "keep", expiry, || {});
    assert_eq!(back["session_present"], true);
    assert_eq!(
        payloads_and_qos(&back["messages"]),
        json!([["one", 1], ["two", 2], ["end", 2]])
    );
}

#[test]
fn session_expiry_300_keeps_the_session_and_what_was_queued_mqtt5_3_1_2_11_2() {
    // MQTT 5 §3.1.2.11.2 and §3.1.2.4: a session with Clean Start 1 and Session Expiry Interval
    // 300 outlives its connection; reconnecting with Clean Start 0 finds it (Session Present,
    // §3.2.2.1.1) and gets the QoS 1 and 2 messages published meanwhile, at their QoS, in order.
    gets_what_was_queued(V5, "300");
}

#[test]
fn a_3_1_1_persistent_session_gets_what_was_queued_while_offline_3_1_2_4() {
    // MQTT 3.1.1 §3.1.2.4: with Clean Session 0 the server keeps the session after the
    // connection ends, stores the QoS 1 and 2 messages matching its subscriptions
    // ([MQTT-3.1.2-5]) and sends them when the client returns, with Session Present 1
    // ([MQTT-3.2.2-2]).
    gets_what_was_queued(V311, "0");
}

#[test]
fn session_expiry_0_ends_the_session_with_the_connection_mqtt5_3_1_2_11_2() {
    // MQTT 5 §3.1.2.11.2: an absent or 0 Session Expiry Interval ends the session when the
    // network connection closes; the next connection finds none (Session Present 0).
    let g = Gateway::start("");
    let back = away_and_back(&g, V5, "drop", "0", || {});
    assert_eq!(back["session_present"], false);
    assert_eq!(back["messages"], json!([]));
}

#[test]
fn session_expiry_2_ends_the_session_2_seconds_after_the_client_left_mqtt5_3_1_2_11_2() {
    // MQTT 5 §3.1.2.11.2: the server ends the session Session Expiry Interval seconds after the
    // connection closed. The gateway counts it (`sessions_expired`, which a session ended at
    // its disconnect, expiry 0, does not raise): the test waits for that count, then the client
    // comes back to no session.
    let g = Gateway::start("");
    let expired = "grove_broker_sessions_expired_total";
    let back = away_and_back(&g, V5, "short", "2", || {
        g.wait_metric(expired, |v| v == 1.0);
    });
    assert_eq!(back["session_present"], false);
    assert_eq!(back["messages"], json!([]));
}

#[test]
fn no_local_keeps_a_clients_own_messages_from_it_mqtt5_3_8_3_1() {
    // MQTT 5 §3.8.3.1 [MQTT-3.8.3-3]: with No Local, the server does not forward a message to
    // the connection that published it; another subscriber still gets it.
    let g = Gateway::start("");
    let facts = run(&g, "no_local.py", V5, &[]);
    assert_eq!(facts["other"], json!(["mine"]), "routed to others");
    assert_eq!(facts["me"], json!(["theirs"]), "not back to its publisher");
}

#[test]
fn retain_handling_and_retain_as_published_mqtt5_3_8_3_1() {
    // MQTT 5 §3.8.3.1: Retain Handling 0 sends retained messages at every subscribe, 1 only when
    // the subscription is new, 2 never; Retain As Published keeps the RETAIN flag of a live
    // delivery ([MQTT-3.3.1-12]), without it the flag is 0 ([MQTT-3.3.1-13]); a retained message
    // sent because of a subscription has the flag set ([MQTT-3.3.1-9]).
    let g = Gateway::start("");
    let f = run(&g, "retain.py", V5, &[]);
    let stored = json!(["stored", true]);
    assert_eq!(f["rh0_first"], json!([stored, ["rh0 first", false]]));
    assert_eq!(f["rh0_again"], json!([stored, ["rh0 again", false]]));
    assert_eq!(f["rh1_first"], json!([stored, ["rh1 first", false]]));
    assert_eq!(
        f["rh1_again"],
        json!([["rh1 again", false]]),
        "not for an existing subscription"
    );
    assert_eq!(f["rh2"], json!([["rh2", false]]), "never");
    assert_eq!(f["rap"], json!([["flagged", true]]));
    assert_eq!(f["plain"], json!([["flagged", false]]));
}

#[test]
fn a_3_1_1_resubscribe_sends_the_retained_messages_again_3_8_4_3() {
    // MQTT 3.1.1 [MQTT-3.8.4-3]: a SUBSCRIBE with the filter of an existing subscription
    // replaces it, and the retained messages matching the filter are re-sent.
    let g = Gateway::start("");
    let f = run(&g, "resubscribe.py", V311, &[]);
    assert_eq!(f["first"], json!([["kept", true], ["first", false]]));
    assert_eq!(f["again"], json!([["kept", true], ["again", false]]));
}

#[test]
fn the_clients_receive_maximum_bounds_unacknowledged_deliveries_mqtt5_3_3_4() {
    // MQTT 5 §3.3.4 [MQTT-3.3.4-9]: no more unacknowledged QoS 1/2 PUBLISH packets than the
    // client's Receive Maximum (2 here); each PUBACK lets the next one go, in order.
    let g = Gateway::start("");
    let f = run(&g, "receive_maximum.py", V5, &[]);
    assert_eq!(f["granted"], 1);
    assert_eq!(f["max_unacked"], 2, "the window was used, never exceeded");
    assert_eq!(f["payloads"], json!(["0", "1", "2", "3", "4", "5"]));
}

#[test]
fn a_delivery_over_the_clients_maximum_packet_size_is_not_sent_mqtt5_3_1_2_11_4() {
    // MQTT 5 §3.1.2.11.4 [MQTT-3.1.2-25]: the server does not send a packet over the client's
    // Maximum Packet Size; it discards the message as if sent (the publisher's PUBACK is 0x00).
    // Grove counts it.
    let g = Gateway::start("");
    let f = run(&g, "max_packet_size.py", V5, &[]);
    assert_eq!(f["reasons"], json!([0, 0]));
    assert_eq!(f["first"], "small", "the 500-byte one was not sent");
    g.wait_metric("grove_broker_dropped_total{reason=\"too_large\"}", |v| {
        v == 1.0
    });
}

#[test]
fn unsubscribe_of_an_unknown_filter_gets_its_unsuback_mqtt3_1_1_3_10_4_5() {
    // MQTT 3.1.1 [MQTT-3.10.4-5]: the server answers every UNSUBSCRIBE with UNSUBACK, even when
    // it deleted nothing (that paho's callback ran is the fact: the 3.1.1 UNSUBACK has no codes).
    let g = Gateway::start("");
    let f = run(&g, "unsubscribe.py", V311, &[]);
    assert_eq!((&f["unknown"], &f["known"]), (&json!([]), &json!([])));
}

#[test]
fn unsubscribe_of_an_unknown_filter_gets_0x11_mqtt5_3_11_3() {
    // MQTT 5 §3.11.3: UNSUBACK reason 0x11 No subscription existed; 0x00 for one that did.
    let g = Gateway::start("");
    let f = run(&g, "unsubscribe.py", V5, &[]);
    assert_eq!(f["unknown"], json!([0x11]));
    assert_eq!(f["known"], json!([0x00]));
}

#[test]
fn a_shared_subscription_gives_each_message_to_one_member_mqtt5_4_8_2() {
    // MQTT 5 §4.8.2: a message matching a shared subscription ($share/{group}/{filter}) goes to
    // exactly one member of the group; an ordinary subscription to the filter gets every one.
    let g = Gateway::start("");
    let f = run(&g, "shared.py", V5, &[]);
    let n = f["n"].as_u64().expect("n");
    let all: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    assert_eq!(f["all"], json!(all));
    let mut shared: Vec<String> = ["a", "b"]
        .iter()
        .flat_map(|m| f[*m].as_array().expect("member's payloads").clone())
        .map(|p| p.as_str().expect("payload").to_owned())
        .collect();
    shared.sort_by_key(|p| p.parse::<u64>().expect("a number"));
    assert_eq!(shared, all, "each once, to one member: {f}");
    for member in ["a", "b"] {
        assert!(
            !f[member].as_array().expect("payloads").is_empty(),
            "both members take a share: {f}"
        );
    }
}

#[test]
fn deliveries_carry_the_matching_subscription_identifiers_mqtt5_3_3_4() {
    // MQTT 5 §3.8.2.1.2 and [MQTT-3.3.4-4]: a delivery carries the Subscription Identifiers of
    // the matching subscriptions (Grove: one copy with all of them, [MQTT-3.3.4-2]); a
    // subscription without one adds none.
    let g = Gateway::start("");
    let f = run(&g, "subscription_ids.py", V5, &[]);
    let mut both: Vec<u64> = f["both"]
        .as_array()
        .expect("identifiers on si/both")
        .iter()
        .map(|v| v.as_u64().expect("an identifier"))
        .collect();
    both.sort_unstable();
    assert_eq!(both, [7, 9]);
    assert_eq!(f["one"], json!([7]));
    assert_eq!(f["plain"], Value::Null, "no identifier: {f}");
}

#[test]
fn topic_aliases_from_the_client_mqtt5_3_3_2_3_4() {
    // MQTT 5 §3.3.2.3.4: a PUBLISH with a topic and a Topic Alias sets the alias, one with an
    // empty topic uses it ([MQTT-3.3.2-12]), a new topic re-maps it; subscribers get the topics.
    let g = Gateway::start("");
    let f = run(&g, "topic_alias.py", V5, &[]);
    assert_eq!(f["maximum"], 64);
    assert_eq!(
        f["received"],
        json!([
            ["ta/first", "set"],
            ["ta/first", "by alias"],
            ["ta/second", "re-mapped"],
            ["ta/second", "by alias again"],
        ])
    );
}

#[test]
fn a_will_waits_for_its_delay_and_a_reconnection_cancels_it_mqtt5_3_1_3_2_2() {
    // MQTT 5 §3.1.3.2.2: the will is published when the Will Delay Interval has passed, not when
    // the connection is lost, and not at all when the client reconnects to its session within
    // the delay ([MQTT-3.1.3-9]). "c_after" is measured from before the connection's loss, so it
    // is at least the delay if the gateway waited; the 50 ms allow for the gateway's
    // millisecond clock.
    let g = Gateway::start("");
    let f = run(&g, "will_delay.py", V5, &[]);
    assert_eq!(f["a_session_present"], true);
    assert_eq!(f["received"], json!(["c", "end"]), "a's will cancelled");
    let (after, delay) = (f["c_after"].as_f64(), f["c_delay"].as_f64());
    assert!(
        after.zip(delay).is_some_and(|(a, d)| a > d - 0.05),
        "the will came {after:?} s after the loss, before its delay of {delay:?} s"
    );
    g.wait_metric("grove_broker_wills_published_total", |v| v == 1.0);
}

#[test]
fn an_expired_message_is_not_delivered_and_a_valid_one_has_its_interval_reduced_mqtt5_3_3_2_3_3() {
    // MQTT 5 §3.3.2.3.3: a message whose Message Expiry Interval passed while it waited for an
    // offline session is not delivered ([MQTT-3.3.2-5]); one still valid arrives with the
    // interval less the time it waited ([MQTT-3.3.2-6]). Grove counts the expired one.
    let g = Gateway::start("");
    let f = run(&g, "message_expiry.py", V5, &[]);
    assert_eq!(f["session_present"], true);
    assert_eq!(f["received"], json!(["long"]), "\"short\" expired: {f}");
    let left = f["long_expiry"]
        .as_u64()
        .expect("Message Expiry Interval on \"long\"");
    assert!(
        (1..300).contains(&left),
        "300 s less the second or more it waited: {left}"
    );
    g.wait_metric("grove_broker_dropped_total{reason=\"expired\"}", |v| {
        v >= 1.0
    });
}

/// `qos2.py`: every message once across a lost connection, at QoS 2.
fn qos2_exactly_once(version: Mqtt) {
    let g = Gateway::start("");
    let f = run(&g, "qos2.py", version, &[]);
    let first: Vec<Value> = (0..10).map(|i| json!([i.to_string(), 2])).collect();
    assert_eq!(f["first"], json!(first));
    assert_eq!(f["session_present"], true);
    assert_eq!(
        f["second"],
        json!([["end", 2]]),
        "the exchanges were finished with PUBREL, nothing sent again"
    );
}

#[test]
fn qos_2_is_delivered_exactly_once_across_a_lost_connection_mqtt3_1_1_4_3_3() {
    // MQTT 3.1.1 §4.3.3 and [MQTT-4.4.0-1]: a QoS 2 message is delivered once; after a lost
    // connection the server resends its PUBREL for exchanges the client had PUBREC'd, not the
    // PUBLISH.
    qos2_exactly_once(V311);
}

#[test]
fn qos_2_is_delivered_exactly_once_across_a_lost_connection_mqtt5_4_3_3() {
    // MQTT 5 §4.3.3 and §4.4 [MQTT-4.4.0-1], the same.
    qos2_exactly_once(V5);
}
