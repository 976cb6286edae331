//! Unit tests on a virtual clock, one behaviour each, named after the spec rule they check.

use crate::*;
use std::collections::HashMap;

mod flow;

/// A test driver: a router, a virtual clock and an inbox per connection.
pub(crate) struct H {
    pub r: Router,
    pub now: Instant,
    next_conn: u64,
    next_pkid: u16,
    inbox: HashMap<ConnId, Vec<Outbound>>,
}

pub(crate) fn c5(id: &str) -> Connect {
    Connect::new(id, Version::V5)
}

fn c3(id: &str, clean: bool) -> Connect {
    Connect {
        version: Version::V311,
        clean_start: clean,
        ..c5(id)
    }
}

fn persistent(id: &str, expiry: u32) -> Connect {
    Connect {
        clean_start: false,
        session_expiry_interval: expiry,
        ..c5(id)
    }
}

fn will(topic: &str, delay: u32) -> Will {
    Will {
        topic: topic.into(),
        payload: "gone".into(),
        qos: QoS::AtLeastOnce,
        retain: false,
        delay_interval: delay,
        properties: MessageProperties::default(),
    }
}

fn opts(qos: QoS) -> SubOptions {
    SubOptions::qos(qos)
}

fn publish(topic: &str, payload: &str, qos: QoS, retain: bool) -> Publish {
    Publish {
        topic: topic.into(),
        payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
        qos,
        retain,
        dup: false,
        pkid: 0,
        topic_alias: None,
        properties: MessageProperties::default(),
    }
}

const Q0: QoS = QoS::AtMostOnce;
const Q1: QoS = QoS::AtLeastOnce;
const Q2: QoS = QoS::ExactlyOnce;

impl H {
    pub fn new() -> H {
        H::with(Config::default())
    }
    pub fn with(config: Config) -> H {
        H {
            r: Router::new(config),
            now: Instant(1_000_000),
            next_conn: 0,
            next_pkid: 0,
            inbox: HashMap::new(),
        }
    }
    /// Connects; returns the connection and its CONNACK.
    pub fn connect(&mut self, c: Connect) -> (ConnId, ConnAck) {
        self.next_conn += 1;
        let conn = ConnId(self.next_conn);
        self.r.connect(self.now, conn, c).expect("accepted");
        self.drain();
        let inbox = self.inbox.entry(conn).or_default();
        let i = inbox
            .iter()
            .position(|p| matches!(p, Outbound::ConnAck(_)))
            .expect("connack");
        match inbox.remove(i) {
            Outbound::ConnAck(a) => (conn, a),
            _ => unreachable!(),
        }
    }
    fn drain(&mut self) {
        while let Some(conn) = self.r.poll_ready() {
            while let Some(p) = self.r.poll_transmit(self.now, conn) {
                self.inbox.entry(conn).or_default().push(p);
            }
        }
        self.r.check_invariants();
    }
    /// Everything sent to `conn` so far and not taken.
    pub fn take(&mut self, conn: ConnId) -> Vec<Outbound> {
        self.drain();
        self.inbox.remove(&conn).unwrap_or_default()
    }
    pub fn deliveries(&mut self, conn: ConnId) -> Vec<Delivery> {
        self.take(conn)
            .into_iter()
            .filter_map(|p| match p {
                Outbound::Publish(d) => Some(d),
                _ => None,
            })
            .collect()
    }
    pub fn sub(&mut self, conn: ConnId, filter: &str, o: SubOptions, id: Option<u32>) -> Vec<u8> {
        self.next_pkid += 1;
        let pkid = self.next_pkid;
        let s = Subscribe {
            pkid,
            filters: vec![(filter.into(), o)],
            subscription_id: id,
        };
        self.r.handle(self.now, conn, Inbound::Subscribe(s));
        self.drain();
        let inbox = self.inbox.entry(conn).or_default();
        let i = inbox
            .iter()
            .position(|p| matches!(p, Outbound::SubAck { pkid: k, .. } if *k == pkid))
            .expect("suback");
        match inbox.remove(i) {
            Outbound::SubAck { reasons, .. } => reasons,
            _ => unreachable!(),
        }
    }
    /// Publishes (a fresh packet id for QoS > 0) and returns the packet id.
    pub fn publish(&mut self, conn: ConnId, mut p: Publish) -> u16 {
        if p.qos != Q0 && p.pkid == 0 {
            self.next_pkid += 1;
            p.pkid = self.next_pkid;
        }
        let pkid = p.pkid;
        self.r.handle(self.now, conn, Inbound::Publish(p));
        pkid
    }
    pub fn pub_(&mut self, conn: ConnId, topic: &str, payload: &str, qos: QoS) -> u16 {
        self.publish(conn, publish(topic, payload, qos, false))
    }
    pub fn ack(&mut self, conn: ConnId, d: &Delivery) {
        let a = Ack {
            pkid: d.pkid,
            reason: 0,
        };
        match d.qos {
            Q0 => {}
            Q1 => self.r.handle(self.now, conn, Inbound::PubAck(a)),
            Q2 => {
                self.r.handle(self.now, conn, Inbound::PubRec(a));
                self.r.handle(self.now, conn, Inbound::PubComp(a));
            }
        }
    }
    /// Connects `c` subscribed to "t" at `qos`, and a publisher "p".
    pub fn subscriber_and_publisher(&mut self, c: Connect, qos: QoS) -> (ConnId, ConnId) {
        let (s, _) = self.connect(c);
        self.sub(s, "t", opts(qos), None);
        let (p, _) = self.connect(c5("p"));
        (s, p)
    }
    pub fn commit_all(&mut self) -> Vec<StorageWrite> {
        let mut out = Vec::new();
        let mut last = 0;
        while let Some((seq, w)) = self.r.poll_storage() {
            last = seq;
            out.push(w);
        }
        self.r.storage_committed(last);
        out
    }
    pub fn advance(&mut self, secs: u64) {
        let end = self.now.plus_millis(secs * 1000);
        while let Some(t) = self.r.poll_timeout() {
            if t > end {
                break;
            }
            self.now = self.now.max(t);
            self.r.handle_timeout(self.now);
        }
        self.now = end;
        self.r.handle_timeout(self.now);
    }
    pub fn disconnect(&mut self, conn: ConnId, reason: u8, expiry: Option<u32>) {
        let d = Disconnect {
            reason,
            session_expiry_interval: expiry,
        };
        self.r.handle(self.now, conn, Inbound::Disconnect(d));
    }
}

fn payloads(ds: &[Delivery]) -> Vec<String> {
    ds.iter()
        .map(|d| String::from_utf8_lossy(&d.message.payload).into_owned())
        .collect()
}

/// 3.1.1 [MQTT-3.8.4-6], 5.0 [MQTT-3.8.4-8]: delivered QoS is the minimum of published and
/// granted.
#[test]
fn qos_is_min_of_published_and_granted() {
    let mut h = H::new();
    let (s1, _) = h.connect(c5("s1"));
    let (s2, _) = h.connect(c5("s2"));
    assert_eq!(h.sub(s1, "t", opts(Q2), None), [2]);
    assert_eq!(h.sub(s2, "t", opts(Q0), None), [0]);
    let (p, _) = h.connect(c5("p"));
    h.pub_(p, "t", "a", Q1);
    assert_eq!(
        h.deliveries(s1).iter().map(|d| d.qos).collect::<Vec<_>>(),
        [Q1]
    );
    assert_eq!(
        h.deliveries(s2).iter().map(|d| d.qos).collect::<Vec<_>>(),
        [Q0]
    );
}

/// [MQTT-3.3.4-2], [MQTT-3.3.4-4] (5.0) and [MQTT-3.3.5-1] (3.1.1): overlapping subscriptions
/// give one delivery at the highest matching QoS, with every matching subscription identifier.
#[test]
fn overlapping_subscriptions_one_delivery_at_max_qos() {
    let mut h = H::new();
    let (s, _) = h.connect(c5("s"));
    h.sub(s, "a/+", opts(Q0), Some(1));
    h.sub(s, "a/#", opts(Q2), Some(2));
    h.sub(s, "a/b", opts(Q1), None);
    let (v3, _) = h.connect(c3("v3", true));
    h.sub(v3, "a/+", opts(Q0), None);
    h.sub(v3, "#", opts(Q1), None);
    let (p, _) = h.connect(c5("p"));
    h.pub_(p, "a/b", "x", Q2);
    let d = h.deliveries(s);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].qos, Q2);
    let mut ids = d[0].subscription_ids.clone();
    ids.sort();
    assert_eq!(ids, [1, 2]);
    let d = h.deliveries(v3);
    assert_eq!((d.len(), d[0].qos), (1, Q1));
}

/// 4.8.2: shared subscriptions deliver to one member per message, round robin; a member's
/// unsent deliveries move to another member when its connection goes.
#[test]
fn shared_subscription_round_robin_and_requeue() {
    let mut h = H::new();
    let (a, _) = h.connect(c5("a"));
    let (b, _) = h.connect(c5("b"));
    h.sub(a, "$share/g/t/#", opts(Q1), None);
    h.sub(b, "$share/g/t/#", opts(Q1), None);
    let (p, _) = h.connect(c5("p"));
    for i in 0..4 {
        h.pub_(p, "t/x", &i.to_string(), Q1);
        h.drain();
    }
    let (da, db) = (h.deliveries(a), h.deliveries(b));
    assert_eq!((da.len(), db.len()), (2, 2), "round robin");
    // a is stuck (window 1, one unacked): what a has not been sent moves to b when a goes.
    let (c, _) = h.connect(Connect {
        receive_maximum: Some(1),
        ..c5("c")
    });
    h.sub(c, "$share/g2/u", opts(Q1), None);
    let (d, _) = h.connect(c5("d"));
    h.sub(d, "$share/g2/u", opts(Q1), None);
    h.deliveries(c);
    h.deliveries(d);
    h.pub_(p, "u", "1", Q1); // c or d
    h.pub_(p, "u", "2", Q1);
    h.pub_(p, "u", "3", Q1);
    h.r.connection_lost(h.now, c);
    let got_d = payloads(&h.deliveries(d));
    let got_c = payloads(&h.deliveries(c));
    assert!(got_c.len() <= 1, "c's window is 1: {got_c:?}");
    assert_eq!(got_c.len() + got_d.len(), 3, "c {got_c:?} d {got_d:?}");
}

/// [MQTT-3.8.3-3]: No Local; [MQTT-3.8.3-4]: No Local on a shared subscription is a protocol error.
#[test]
fn no_local() {
    let mut h = H::new();
    let (s, _) = h.connect(c5("s"));
    h.sub(
        s,
        "t",
        SubOptions {
            no_local: true,
            ..opts(Q1)
        },
        None,
    );
    h.pub_(s, "t", "own", Q1);
    let (p, _) = h.connect(c5("p"));
    h.pub_(p, "t", "other", Q1);
    assert_eq!(payloads(&h.deliveries(s)), ["other"]);
    let s2 = Subscribe {
        pkid: 9,
        filters: vec![(
            "$share/g/t".into(),
            SubOptions {
                no_local: true,
                ..opts(Q1)
            },
        )],
        subscription_id: None,
    };
    h.r.handle(h.now, s, Inbound::Subscribe(s2));
    assert!(h.take(s).contains(&Outbound::Disconnect {
        reason: reason::PROTOCOL_ERROR
    }));
}

/// [MQTT-3.3.1-12], [MQTT-3.3.1-13]: Retain As Published; [MQTT-3.3.1-9] (3.1.1): 0 on live
/// deliveries.
#[test]
fn retain_as_published() {
    let mut h = H::new();
    let (rap, _) = h.connect(c5("rap"));
    let (plain, _) = h.connect(c5("plain"));
    let (v3, _) = h.connect(c3("v3", true));
    h.sub(
        rap,
        "t",
        SubOptions {
            retain_as_published: true,
            ..opts(Q0)
        },
        None,
    );
    h.sub(plain, "t", opts(Q0), None);
    h.sub(v3, "t", opts(Q0), None);
    let (p, _) = h.connect(c5("p"));
    h.publish(p, publish("t", "r", Q0, true));
    assert!(h.deliveries(rap)[0].retain);
    assert!(!h.deliveries(plain)[0].retain);
    assert!(!h.deliveries(v3)[0].retain);
}

/// 3.8.3.1 Retain Handling 0/1/2 [MQTT-3.3.1-9..11] (3.3.1.3: retained sent at subscribe carry
/// RETAIN 1); [MQTT-3.8.4-3] (3.1.1): re-subscribing resends retained messages.
#[test]
fn retain_handling_and_resubscribe() {
    let mut h = H::new();
    let (p, _) = h.connect(c5("p"));
    h.publish(p, publish("t/1", "r", Q1, true));
    let (s, _) = h.connect(c5("s"));
    let rh = |r| SubOptions {
        retain_handling: r,
        ..opts(Q1)
    };
    h.sub(s, "t/+", rh(RetainHandling::SendAtSubscribe), None);
    let d = h.deliveries(s);
    assert_eq!((d.len(), d[0].retain), (1, true));
    h.sub(s, "t/+", rh(RetainHandling::SendAtSubscribe), None);
    assert_eq!(h.deliveries(s).len(), 1, "0: sent at every subscribe");
    h.sub(s, "t/+", rh(RetainHandling::SendIfNew), None);
    assert_eq!(
        h.deliveries(s).len(),
        0,
        "1: not for an existing subscription"
    );
    h.sub(s, "t/#", rh(RetainHandling::SendIfNew), None);
    assert_eq!(h.deliveries(s).len(), 1, "1: sent for a new subscription");
    h.sub(s, "+/1", rh(RetainHandling::DoNotSend), None);
    assert_eq!(h.deliveries(s).len(), 0, "2: never");
    let (v3, _) = h.connect(c3("v3", true));
    h.sub(v3, "t/1", opts(Q1), None);
    h.sub(v3, "t/1", opts(Q1), None);
    assert_eq!(h.deliveries(v3).len(), 2, "3.1.1 re-subscribe resends");
    // Shared subscriptions get no retained messages (4.8.2).
    h.sub(s, "$share/g/t/1", opts(Q1), None);
    assert_eq!(h.deliveries(s).len(), 0);
}

/// 3.1.1 [MQTT-3.3.1-10/11], 5.0 [MQTT-3.3.1-6/7]: an empty retained payload deletes the
/// retained message (and is delivered live to current subscribers).
#[test]
fn retained_delete_with_empty_payload() {
    let mut h = H::new();
    let (p, _) = h.connect(c5("p"));
    h.publish(p, publish("t", "r", Q0, true));
    h.publish(p, publish("t", "", Q0, true));
    let (s, _) = h.connect(c5("s"));
    h.sub(s, "t", opts(Q0), None);
    assert!(h.deliveries(s).is_empty());
}

/// 3.3.2.3.3 [MQTT-3.3.2-5], [MQTT-3.3.2-6]: expired messages are not delivered (queued or
/// retained); deliveries carry the remaining interval.
#[test]
fn message_expiry_queued_and_retained() {
    let mut h = H::new();
    let (s, _) = h.connect(persistent("s", 3600));
    h.sub(s, "t", opts(Q1), None);
    h.disconnect(s, 0, None);
    let (p, _) = h.connect(c5("p"));
    let mut m = publish("t", "short", Q1, true);
    m.properties.message_expiry_interval = Some(10);
    h.publish(p, m);
    let mut m = publish("t", "long", Q1, false);
    m.properties.message_expiry_interval = Some(100);
    h.publish(p, m);
    h.advance(30);
    let (s, ack) = h.connect(persistent("s", 3600));
    assert!(ack.session_present);
    let d = h.deliveries(s);
    assert_eq!(payloads(&d), ["long"]);
    assert_eq!(d[0].message_expiry_interval, Some(70));
    let (s2, _) = h.connect(c5("s2"));
    h.sub(s2, "t", opts(Q1), None);
    assert!(h.deliveries(s2).is_empty(), "expired retained not sent");
    assert_eq!(h.r.stats().expired, 2);
}

/// 3.1.3.2.2: the will goes at the earlier of Will Delay and session end; [MQTT-3.1.2-10]: not on
/// DISCONNECT 0x00; 3.14.2.1: yes on 0x04; [MQTT-3.1.3-9]: not if the client returns in time.
#[test]
fn will_delay_versus_session_expiry() {
    let mut h = H::new();
    let (w, _) = h.connect(c5("watch"));
    h.sub(w, "will/#", opts(Q1), None);
    // Delay 60, session expiry 10: at 10 s.
    let (a, _) = h.connect(Connect {
        will: Some(will("will/a", 60)),
        ..persistent("a", 10)
    });
    h.r.connection_lost(h.now, a);
    h.advance(9);
    assert!(h.deliveries(w).is_empty());
    h.advance(1);
    assert_eq!(h.deliveries(w).len(), 1, "sent at session end");
    // Delay 5, expiry 100: at 5 s.
    let (b, _) = h.connect(Connect {
        will: Some(will("will/b", 5)),
        ..persistent("b", 100)
    });
    h.r.connection_lost(h.now, b);
    h.advance(5);
    assert_eq!(h.deliveries(w).len(), 1, "sent at the delay");
    // Normal disconnect: none. 0x04: sent.
    let (c, _) = h.connect(Connect {
        will: Some(will("will/c", 0)),
        ..c5("c")
    });
    h.disconnect(c, reason::SUCCESS, None);
    assert!(h.deliveries(w).is_empty());
    let (c, _) = h.connect(Connect {
        will: Some(will("will/c", 0)),
        ..c5("c")
    });
    h.disconnect(c, reason::DISCONNECT_WITH_WILL, None);
    assert_eq!(h.deliveries(w).len(), 1);
    // Returns within the delay: no will.
    let (d, _) = h.connect(Connect {
        will: Some(will("will/d", 30)),
        ..persistent("d", 100)
    });
    h.r.connection_lost(h.now, d);
    h.advance(10);
    h.connect(persistent("d", 100));
    h.advance(60);
    assert!(h.deliveries(w).is_empty());
}

/// [MQTT-3.1.4-3], 4.13: takeover closes the old connection with 0x8E; the session (queue and
/// subscriptions) carries over when Clean Start is 0.
#[test]
fn session_takeover() {
    let mut h = H::new();
    let (old, _) = h.connect(Connect {
        receive_maximum: Some(1),
        ..persistent("s", 100)
    });
    h.sub(old, "t", opts(Q1), None);
    let (p, _) = h.connect(c5("p"));
    h.pub_(p, "t", "1", Q1);
    h.pub_(p, "t", "2", Q1);
    assert_eq!(payloads(&h.deliveries(old)), ["1"]);
    let (new, ack) = h.connect(persistent("s", 100));
    assert!(ack.session_present);
    assert!(h.take(old).contains(&Outbound::Disconnect {
        reason: reason::SESSION_TAKEN_OVER
    }));
    let d = h.deliveries(new);
    assert_eq!(payloads(&d), ["1", "2"]);
    assert!(
        d[0].dup && !d[1].dup,
        "unacked resent with DUP [MQTT-4.4.0-1]"
    );
    assert_eq!(h.r.stats().sessions_taken_over, 1);
}

/// 3.1.2.4 Clean Start, 3.1.2.11.2 Session Expiry, 3.2.2.1.1 Session Present.
#[test]
fn clean_start_and_session_expiry() {
    let mut h = H::new();
    let (s, ack) = h.connect(persistent("s", 10));
    assert!(!ack.session_present);
    h.disconnect(s, 0, None);
    let (s, ack) = h.connect(persistent("s", 10));
    assert!(ack.session_present, "resumed");
    h.disconnect(s, 0, None);
    h.advance(11);
    let (s, ack) = h.connect(persistent("s", 10));
    assert!(!ack.session_present, "expired");
    h.disconnect(s, 0, Some(0));
    let (s, ack) = h.connect(persistent("s", 10));
    assert!(!ack.session_present, "DISCONNECT set expiry 0");
    h.disconnect(s, 0, None);
    let (_, ack) = h.connect(Connect {
        clean_start: true,
        ..persistent("s", 10)
    });
    assert!(!ack.session_present, "clean start");
    let (v3, _) = h.connect(c3("v3", false));
    h.r.connection_lost(h.now, v3);
    h.advance(1_000_000);
    let (_, ack) = h.connect(c3("v3", false));
    assert!(ack.session_present, "3.1.1 clean session 0 never expires");
    // 3.14.2.2.2: expiry 0 at CONNECT cannot become non-zero at DISCONNECT
    let (z, _) = h.connect(c5("z"));
    h.disconnect(z, 0, Some(5));
    assert!(h.take(z).contains(&Outbound::Disconnect {
        reason: reason::PROTOCOL_ERROR
    }));
}

/// 3.3.4: no more than the client's Receive Maximum QoS 1/2 deliveries unacknowledged.
#[test]
fn receive_maximum_window() {
    let mut h = H::new();
    let (s, p) = h.subscriber_and_publisher(
        Connect {
            receive_maximum: Some(3),
            ..c5("s")
        },
        Q2,
    );
    for i in 0..10 {
        h.pub_(p, "t", &i.to_string(), if i % 2 == 0 { Q1 } else { Q2 });
    }
    let d = h.deliveries(s);
    assert_eq!(d.len(), 3);
    h.ack(s, &d[0]);
    let more = h.deliveries(s);
    assert_eq!(payloads(&more), ["3"]);
    for x in d[1..].iter().chain(&more) {
        h.ack(s, x);
    }
    assert_eq!(h.deliveries(s).len(), 3);
}

/// Issue 14: a slow subscriber's queue is bounded by config and every drop is counted (the
/// measured defect: 201 of 2,000 without a count).
#[test]
fn bounded_queue_drops_are_counted() {
    let cfg = Config {
        queue_max_messages: 100,
        ..Config::default()
    };
    let mut h = H::with(cfg.clone());
    let (s, p) = h.subscriber_and_publisher(
        Connect {
            receive_maximum: Some(10),
            ..c5("s")
        },
        Q1,
    );
    for i in 0..2000 {
        h.pub_(p, "t", &i.to_string(), Q1);
        h.drain(); // the shell writes as the socket allows: the window fills first
    }
    h.drain();
    let first = h.deliveries(s);
    assert_eq!(first.len(), 10);
    assert_eq!(h.r.stats().dropped_queue_full, 2000 - 10 - 100);
    let mut got = first.len();
    let mut last = first;
    while !last.is_empty() {
        for d in &last {
            h.ack(s, d);
        }
        last = h.deliveries(s);
        got += last.len();
    }
    assert_eq!(got as u64 + h.r.stats().dropped_queue_full, 2000);
    // Bytes bound, drop oldest.
    let cfg = Config {
        queue_max_bytes: 10,
        drop_policy: DropPolicy::DropOldest,
        ..Config::default()
    };
    let mut h = H::with(cfg);
    let (s, p) = h.subscriber_and_publisher(
        Connect {
            receive_maximum: Some(1),
            ..c5("s")
        },
        Q1,
    );
    for i in 0..6 {
        h.pub_(p, "t", &format!("{i}{i}{i}"), Q1); // 4 bytes each
        h.drain();
    }
    let d = h.deliveries(s);
    assert_eq!(payloads(&d), ["000"]);
    // The bound counts the delivery in flight: 4 of the 10 bytes are "000"'s, so the queue
    // kept one more message, the newest.
    assert_eq!(h.r.stats().dropped_queue_full, 4);
    h.ack(s, &d[0]);
    let d = h.deliveries(s);
    assert_eq!(payloads(&d), ["555"]);
    h.ack(s, &d[0]);
    assert!(h.deliveries(s).is_empty());
}

/// [MQTT-3.1.2-25] (3.1.2.11.4): a delivery above the client's Maximum Packet Size is discarded
/// as if sent, and counted.
#[test]
fn maximum_packet_size_discards() {
    let mut h = H::new();
    let (s, p) = h.subscriber_and_publisher(
        Connect {
            maximum_packet_size: Some(30),
            ..c5("s")
        },
        Q1,
    );
    h.pub_(p, "t", &"x".repeat(40), Q1);
    h.pub_(p, "t", "small", Q1);
    let d = h.deliveries(s);
    assert_eq!(payloads(&d), ["small"]);
    assert_eq!(h.r.stats().dropped_too_large, 1);
}

/// 4.3.3: QoS 2 inbound is routed once even when resent before PUBREL; PUBREL gets PUBCOMP;
/// outbound QoS 2 runs PUBLISH/PUBREC/PUBREL/PUBCOMP and holds the window until PUBCOMP.
#[test]
fn qos2_exactly_once_both_ways() {
    let mut h = H::new();
    let (s, p) = h.subscriber_and_publisher(
        Connect {
            receive_maximum: Some(1),
            ..c5("s")
        },
        Q2,
    );
    let mut m = publish("t", "once", Q2, false);
    m.pkid = 42;
    h.publish(p, m.clone());
    m.dup = true;
    h.publish(p, m.clone());
    let acks = h.take(p);
    assert_eq!(
        acks.iter()
            .filter(|x| matches!(x, Outbound::PubRec(a) if a.pkid == 42))
            .count(),
        2
    );
    h.r.handle(
        h.now,
        p,
        Inbound::PubRel(Ack {
            pkid: 42,
            reason: 0,
        }),
    );
    assert!(h.take(p).contains(&Outbound::PubComp(Ack {
        pkid: 42,
        reason: 0
    })));
    // After PUBREL the same id is a new message.
    h.publish(
        p,
        Publish {
            dup: false,
            payload: "twice".into(),
            ..m
        },
    );
    let d = h.deliveries(s);
    assert_eq!(payloads(&d), ["once"], "window 1");
    assert_eq!(h.r.stats().qos2_duplicates, 1);
    let a = Ack {
        pkid: d[0].pkid,
        reason: 0,
    };
    h.r.handle(h.now, s, Inbound::PubRec(a));
    assert_eq!(
        h.take(s),
        [Outbound::PubRel(a)],
        "window held until PUBCOMP"
    );
    h.r.handle(h.now, s, Inbound::PubComp(a));
    assert_eq!(payloads(&h.deliveries(s)), ["twice"]);
    h.r.handle(h.now, p, Inbound::PubRel(Ack { pkid: 7, reason: 0 }));
    assert!(h.take(p).contains(&Outbound::PubComp(Ack {
        pkid: 7,
        reason: reason::PACKET_ID_NOT_FOUND
    })));
}

/// Issue 14 durability: the publisher's PUBACK waits for the commit of the writes its message
/// caused for a persistent session; a message to non-persistent sessions only is acked at once.
#[test]
fn publisher_ack_held_until_commit() {
    let mut h = H::new();
    let (s, _) = h.connect(persistent("s", 100));
    h.sub(s, "durable", opts(Q1), None);
    h.commit_all();
    let (v, _) = h.connect(c5("v"));
    h.sub(v, "volatile", opts(Q1), None);
    let (p, _) = h.connect(c5("p"));
    let k = h.pub_(p, "volatile", "x", Q1);
    assert!(h
        .take(p)
        .contains(&Outbound::PubAck(Ack { pkid: k, reason: 0 })));
    let k = h.pub_(p, "durable", "x", Q1);
    assert!(h.take(p).is_empty(), "held");
    let writes = h.commit_all();
    assert!(writes
        .iter()
        .any(|w| matches!(w, StorageWrite::Enqueued { client_id, .. } if &**client_id == "s")));
    assert!(h
        .take(p)
        .contains(&Outbound::PubAck(Ack { pkid: k, reason: 0 })));
    assert_eq!(h.r.stats().acks_held, 1);
}

/// [MQTT-4.6.0-2]: PUBACKs go in the order of the PUBLISH packets, so an ack behind a held one
/// waits too.
#[test]
fn acks_keep_publish_order_behind_a_held_one() {
    let mut h = H::new();
    let (s, _) = h.connect(persistent("s", 100));
    h.sub(s, "durable", opts(Q1), None);
    h.commit_all();
    let (p, _) = h.connect(c5("p"));
    let k1 = h.pub_(p, "durable", "x", Q1);
    let k2 = h.pub_(p, "nobody", "y", Q1);
    assert!(h.take(p).is_empty(), "second ack waits behind the first");
    h.commit_all();
    let acks: Vec<u16> = h
        .take(p)
        .into_iter()
        .filter_map(|o| match o {
            Outbound::PubAck(a) => Some(a.pkid),
            _ => None,
        })
        .collect();
    assert_eq!(acks, [k1, k2]);
}

/// Issue 14: persistent sessions survive a restart: what the storage writes describe, restored,
/// gives the same subscriptions and queued QoS 1/2 messages.
#[test]
fn restore_after_restart() {
    let mut h = H::new();
    let (s, _) = h.connect(persistent("s", 1000));
    h.sub(s, "t/#", opts(Q2), Some(5));
    h.r.connection_lost(h.now, s);
    let (p, _) = h.connect(c5("p"));
    h.pub_(p, "t/1", "a", Q1);
    h.pub_(p, "t/2", "b", Q2);
    h.pub_(p, "t/3", "qos0 not kept", Q0);
    h.publish(p, publish("r", "retained", Q0, true));
    let mut store = MemoryStore::default();
    for w in h.commit_all() {
        store.apply(w);
    }
    assert_eq!(store.sessions.len(), 1);
    assert_eq!(store.sessions[0].messages.len(), 2, "QoS 0 is not stored");
    let mut h2 = H::new();
    h2.now = h.now;
    h2.r.restore(h2.now, store.sessions, store.retained);
    let (s, ack) = h2.connect(persistent("s", 1000));
    assert!(ack.session_present);
    h2.commit_all();
    let d = h2.deliveries(s);
    assert_eq!(payloads(&d), ["a", "b"]);
    assert_eq!(d[1].subscription_ids, [5]);
    let (p, _) = h2.connect(c5("p"));
    h2.pub_(p, "t/4", "after", Q1);
    assert_eq!(
        payloads(&h2.deliveries(s)),
        ["after"],
        "subscription restored"
    );
    let (x, _) = h2.connect(c5("x"));
    h2.sub(x, "r", opts(Q0), None);
    assert_eq!(payloads(&h2.deliveries(x)), ["retained"]);
}

/// [MQTT-3.10.4-5], 3.11.2.2: UNSUBSCRIBE of an unknown filter still gets UNSUBACK, 0x11 in v5.
#[test]
fn unsubscribe_unknown_filter_gets_unsuback() {
    let mut h = H::new();
    let (s, _) = h.connect(c5("s"));
    h.sub(s, "a", opts(Q0), None);
    let u = Unsubscribe {
        pkid: 3,
        filters: vec!["a".into(), "b".into()],
    };
    h.r.handle(h.now, s, Inbound::Unsubscribe(u));
    assert_eq!(
        h.take(s),
        [Outbound::UnsubAck {
            pkid: 3,
            reasons: vec![0, reason::NO_SUBSCRIPTION_EXISTED]
        }]
    );
}

/// [MQTT-3.3.4-3]: deliveries carry the subscription identifier; 3.1.1 connections get none.
#[test]
fn subscription_identifiers_on_deliveries() {
    let mut h = H::new();
    let (s, _) = h.connect(c5("s"));
    h.sub(s, "a/#", opts(Q0), Some(77));
    h.sub(s, "b", opts(Q0), None);
    let (p, _) = h.connect(c5("p"));
    h.pub_(p, "a/x", "1", Q0);
    h.pub_(p, "b", "2", Q0);
    let d = h.deliveries(s);
    assert_eq!(d[0].subscription_ids, [77]);
    assert!(d[1].subscription_ids.is_empty());
}

/// 3.3.2.3.4: inbound aliases resolve; alias 0 or above the maximum is DISCONNECT 0x94; outbound
/// aliases are used up to the client's Topic Alias Maximum.
#[test]
fn topic_aliases_both_ways() {
    let mut h = H::new();
    let (s, _) = h.connect(Connect {
        topic_alias_maximum: 1,
        ..c5("s")
    });
    h.sub(s, "#", opts(Q0), None);
    let (p, _) = h.connect(c5("p"));
    h.publish(
        p,
        Publish {
            topic_alias: Some(3),
            ..publish("a/b", "1", Q0, false)
        },
    );
    h.publish(
        p,
        Publish {
            topic_alias: Some(3),
            ..publish("", "2", Q0, false)
        },
    );
    h.publish(p, publish("c", "3", Q0, false));
    let d = h.deliveries(s);
    assert_eq!(payloads(&d), ["1", "2", "3"]);
    assert_eq!((d[0].topic_alias, d[0].topic_elided), (Some(1), false));
    assert_eq!(
        (d[1].topic_alias, d[1].topic_elided, &*d[1].message.topic),
        (Some(1), true, "a/b")
    );
    assert_eq!(d[2].topic_alias, None, "client maximum 1 reached");
    h.publish(
        p,
        Publish {
            topic_alias: Some(0),
            ..publish("a", "x", Q0, false)
        },
    );
    assert!(h.take(p).contains(&Outbound::Disconnect {
        reason: reason::TOPIC_ALIAS_INVALID
    }));
    let (p, _) = h.connect(c5("p2"));
    h.publish(
        p,
        Publish {
            topic_alias: Some(9),
            ..publish("", "x", Q0, false)
        },
    );
    assert!(h.take(p).contains(&Outbound::Disconnect {
        reason: reason::PROTOCOL_ERROR
    }));
}

/// 3.3.4: a v5 publisher exceeding the server's Receive Maximum gets DISCONNECT 0x93.
#[test]
fn server_receive_maximum_exceeded() {
    let mut h = H::with(Config {
        receive_maximum: 2,
        ..Config::default()
    });
    let (p, _) = h.connect(c5("p"));
    for _ in 0..3 {
        h.pub_(p, "t", "x", Q2);
    }
    assert!(h.take(p).contains(&Outbound::Disconnect {
        reason: reason::RECEIVE_MAXIMUM_EXCEEDED
    }));
    assert_eq!(h.r.stats().protocol_errors, 1);
}

/// 3.2.2.3: CONNACK declares what the server does; 3.1.3.1: an empty v5 client id is assigned;
/// [MQTT-3.1.3-8]: an empty 3.1.1 id with Clean Session 0 is refused.
#[test]
fn connack_declares_server_capabilities() {
    let cfg = Config {
        maximum_qos: Q1,
        server_keep_alive: Some(30),
        maximum_session_expiry: 60,
        ..Config::default()
    };
    let mut h = H::with(cfg);
    let (_, ack) = h.connect(Connect {
        client_id: "".into(),
        ..persistent("", 100)
    });
    let p = &ack.properties;
    assert_eq!(p.maximum_qos, 1);
    assert_eq!(p.server_keep_alive, Some(30));
    assert_eq!(p.session_expiry_interval, Some(60));
    assert!(p.assigned_client_identifier.is_some());
    assert!(
        p.retain_available && p.shared_subscription_available && p.wildcard_subscription_available
    );
    let refused = h.r.connect(
        h.now,
        ConnId(99),
        Connect {
            client_id: "".into(),
            ..c3("", false)
        },
    );
    assert_eq!(refused.unwrap_err().reason, reason::CLIENT_ID_NOT_VALID);
    let (s, _) = h.connect(c5("s"));
    assert_eq!(
        h.sub(s, "t", opts(Q2), None),
        [1],
        "granted QoS capped at Maximum QoS"
    );
    assert_eq!(
        h.sub(s, "a/#/b", opts(Q0), None),
        [reason::TOPIC_FILTER_INVALID]
    );
}

/// Budgets: subscriptions per client (0x97) and retained store size, counted.
#[test]
fn budgets_are_counted() {
    let cfg = Config {
        max_subscriptions_per_client: 1,
        retained_max_messages: 1,
        ..Config::default()
    };
    let mut h = H::with(cfg);
    let (s, _) = h.connect(c5("s"));
    assert_eq!(h.sub(s, "a", opts(Q0), None), [0]);
    assert_eq!(h.sub(s, "b", opts(Q0), None), [reason::QUOTA_EXCEEDED]);
    assert_eq!(
        h.sub(s, "a", opts(Q1), None),
        [1],
        "replacing is not a new one"
    );
    h.publish(s, publish("r1", "x", Q0, true));
    h.publish(s, publish("r2", "x", Q0, true));
    assert_eq!(h.r.stats().subscriptions_rejected, 1);
    assert_eq!(h.r.stats().retained_rejected, 1);
    // A session whose CONNECT lifts the budget (the shell does it for the gateway's own
    // components) holds more than the configuration's per-client limit.
    let (component, _) = h.connect(Connect {
        max_subscriptions: Some(usize::MAX),
        ..c5("component")
    });
    for f in ["x/1", "x/2", "x/3"] {
        assert_eq!(h.sub(component, f, opts(Q0), None), [0], "{f}");
    }
    assert_eq!(h.r.stats().subscriptions_rejected, 1);
}

/// The shell's delivery filter refuses per (client, topic) before any queue place is taken.
#[test]
fn delivery_filter_applies_and_counts() {
    let mut h = H::new();
    h.r.set_delivery_filter(Box::new(|client, topic| {
        !(client == "s" && topic == "secret")
    }));
    let (s, _) = h.connect(c5("s"));
    h.sub(s, "#", opts(Q0), None);
    let (p, _) = h.connect(c5("p"));
    h.pub_(p, "secret", "x", Q0);
    h.pub_(p, "open", "y", Q0);
    assert_eq!(payloads(&h.deliveries(s)), ["y"]);
    assert_eq!(h.r.stats().filtered, 1);
}

/// Issue 14 flow control: reads pause when bytes wait for the shell's writes to several
/// subscribers, resume when written; a stuck subscriber (window full) or one slow subscriber
/// (capped share) cannot pause the others' publishers.
#[test]
fn reading_pauses_on_write_backlog_not_on_one_stuck_subscriber() {
    let cfg = Config {
        pause_reading_above_bytes: 100,
        pressure_share_bytes: 60,
        ..Config::default()
    };
    let mut h = H::with(cfg);
    let (stuck, _) = h.connect(Connect {
        receive_maximum: Some(1),
        ..c5("stuck")
    });
    h.sub(stuck, "t", opts(Q1), None);
    let (slow, _) = h.connect(c5("slow"));
    h.sub(slow, "t", opts(Q0), None);
    let (other, _) = h.connect(c5("other"));
    h.sub(other, "u", opts(Q0), None);
    let (p, _) = h.connect(c5("p"));
    h.pub_(p, "t", "first", Q1);
    h.drain(); // stuck gets one delivery and never acks
               // From here the shell writes nothing (no drain()).
    let x = "x".repeat(20);
    for _ in 0..20 {
        h.r.handle(h.now, p, Inbound::Publish(publish("t", &x, Q0, false)));
    }
    assert!(
        !h.r.reading_paused(),
        "one slow and one stuck subscriber do not pause reads"
    );
    for _ in 0..5 {
        h.r.handle(h.now, p, Inbound::Publish(publish("u", &x, Q0, false)));
    }
    assert!(
        h.r.reading_paused(),
        "two subscribers behind on writes pause reads"
    );
    h.drain();
    assert!(!h.r.reading_paused(), "writing drains the pressure");
}

/// 1.5.5 and 3.3: the encoded PUBLISH size used for Maximum Packet Size.
#[test]
fn publish_length_is_the_encoded_size() {
    let m = Message {
        id: 1,
        topic: "t".into(),
        payload: bytes::Bytes::from(vec![0; 200]),
        qos: Q1,
        retain: false,
        properties: MessageProperties::default(),
        expires_at: None,
        publisher: "p".into(),
    };
    // 3.1.1 QoS 1: header 1 + varint(2+1+2+200=205 -> 2 bytes) + 205.
    assert_eq!(
        crate::router::publish_len(false, &m, Q1, None, false, false, &[]),
        208
    );
    // 5.0 with an alias (3) and one subscription id (2): properties 5 + 1 length byte.
    assert_eq!(
        crate::router::publish_len(true, &m, Q1, None, true, true, &[7]),
        1 + 2 + 204 + 6
    );
}

/// Issue 14 budget: <= 2 KB per idle connection, for the whole gateway. The router's part is a
/// session (boxed, its connection's state inline; the maps and queues of an idle one are empty
/// and allocate nothing, the drained control queue included).
#[test]
fn idle_connection_state_is_small() {
    let session = crate::router::session_size();
    println!("session {session} B");
    assert!(session <= 320, "session {session} B");
    let mut h = H::new();
    let (s, _) = h.connect(c5("s"));
    h.take(s);
    assert_eq!(h.r.gauges().connections, 1);
}

/// [MQTT-4.4.0-1]: on reconnect, an outbound QoS 2 message past PUBREC gets its PUBREL again
/// (same packet id), and one not yet acknowledged is resent with DUP and its original id. To a
/// persistent session the first PUBLISH waits for its stored packet id and the PUBREL for the
/// stored PUBREC (issue 14: so that kill -9 cannot turn either into a second delivery).
#[test]
fn qos2_outbound_resumes_after_reconnect() {
    let mut h = H::new();
    let (s, p) = h.subscriber_and_publisher(persistent("s", 100), Q2);
    h.pub_(p, "t", "a", Q2);
    h.pub_(p, "t", "b", Q2);
    assert!(h.deliveries(s).is_empty(), "packet ids not durable yet");
    h.commit_all();
    let d = h.deliveries(s);
    assert_eq!(d.len(), 2);
    assert!(d.iter().all(|d| !d.dup), "first attempts [MQTT-3.3.1-1]");
    let a = Ack {
        pkid: d[0].pkid,
        reason: 0,
    };
    h.r.handle(h.now, s, Inbound::PubRec(a));
    assert!(h.take(s).is_empty(), "PUBREL waits for the stored PUBREC");
    h.commit_all();
    assert_eq!(h.take(s), [Outbound::PubRel(a)]);
    h.r.connection_lost(h.now, s);
    let (s, ack) = h.connect(persistent("s", 100));
    assert!(ack.session_present);
    let out = h.take(s);
    assert_eq!(out[0], Outbound::PubRel(a));
    match &out[1] {
        Outbound::Publish(x) => assert!(x.dup && x.pkid == d[1].pkid && x.qos == Q2),
        other => panic!("expected the resent PUBLISH, got {other:?}"),
    }
    h.r.handle(h.now, s, Inbound::PubComp(a));
    assert_eq!(h.r.session_backlog("s"), Some((0, 1)));
}

/// 4.8.2: a shared delivery sent to a member that goes away unacknowledged goes to another member
/// when the first member's session ends (here at once: Session Expiry 0), and a stuck member (full
/// window) is passed over while another member is idle.
#[test]
fn shared_inflight_requeued_when_member_session_ends() {
    let mut h = H::new();
    let (a, _) = h.connect(Connect {
        receive_maximum: Some(1),
        ..c5("a")
    });
    let (b, _) = h.connect(c5("b"));
    h.sub(a, "$share/g/t", opts(Q1), None);
    h.sub(b, "$share/g/t", opts(Q1), None);
    let (p, _) = h.connect(c5("p"));
    h.pub_(p, "t", "1", Q1);
    let got_a = payloads(&h.deliveries(a));
    let got_b = payloads(&h.deliveries(b));
    assert_eq!(
        (got_a.as_slice(), got_b.len()),
        (["1".to_string()].as_slice(), 0)
    );
    h.r.connection_lost(h.now, a);
    assert_eq!(
        payloads(&h.deliveries(b)),
        ["1"],
        "unacked delivery moved to b"
    );
    assert!(!h.r.has_session("a"));
}

/// A router whose sessions queue at most 2 messages, with a persistent session "s" subscribed to
/// `t` at QoS 1 and offline, and a connected publisher (returned).
fn offline_subscriber_queueing_two() -> (H, ConnId) {
    let mut h = H::with(Config {
        queue_max_messages: 2,
        ..Config::default()
    });
    let (s, _) = h.connect(persistent("s", 1000));
    h.sub(s, "t", opts(Q1), None);
    h.r.connection_lost(h.now, s);
    let (p, _) = h.connect(c5("p"));
    (h, p)
}

/// `p` publishes `payload` on `t` at QoS 1 with a Message Expiry Interval of `secs`.
fn publish_expiring(h: &mut H, p: ConnId, payload: &str, secs: u32) {
    let mut x = publish("t", payload, Q1, false);
    x.properties.message_expiry_interval = Some(secs);
    h.publish(p, x);
}

/// 3.3.2.3.3 with the queue bound: expired messages make room in a full queue before anything
/// is dropped.
#[test]
fn expired_messages_make_room_before_drops() {
    let (mut h, p) = offline_subscriber_queueing_two();
    for m in ["old1", "old2"] {
        publish_expiring(&mut h, p, m, 5);
    }
    h.advance(10);
    h.pub_(p, "t", "new", Q1);
    assert_eq!(h.r.stats().dropped_queue_full, 0);
    assert_eq!(h.r.stats().expired, 2);
    let (s, _) = h.connect(persistent("s", 1000));
    assert_eq!(payloads(&h.deliveries(s)), ["new"]);
}

/// The same with messages of different lifetimes, arriving at a full queue over time: each
/// expired message makes room once it has expired, and a message that has not expired yet is
/// never taken for one (the router only looks for expired messages from the earliest expiry on).
#[test]
fn a_full_queue_makes_room_as_each_message_expires() {
    let (mut h, p) = offline_subscriber_queueing_two();
    publish_expiring(&mut h, p, "short", 5);
    publish_expiring(&mut h, p, "long", 20);
    // (seconds later, what is published, (expired, dropped) so far, why)
    for (secs, m, counts, why) in [
        (10, "a", (1, 0), "short made room for a"),
        (1, "b", (1, 1), "long has 9 s left: b is dropped"),
        (10, "c", (2, 1), "long made room for c"),
    ] {
        h.advance(secs);
        h.pub_(p, "t", m, Q1);
        let stats = h.r.stats();
        assert_eq!((stats.expired, stats.dropped_queue_full), counts, "{why}");
    }
    let (s, _) = h.connect(persistent("s", 1000));
    assert_eq!(payloads(&h.deliveries(s)), ["a", "c"]);
}

/// 4.3.3 across kill -9: a persistent publisher's unreleased QoS 2 packet id is stored before
/// PUBREC, so the PUBLISH it resends after a restart is not routed again; the release is stored
/// before PUBCOMP.
#[test]
fn qos2_inbound_exactly_once_survives_restart() {
    let mut h = H::new();
    let (p, _) = h.connect(persistent("p", 100));
    let mut store = MemoryStore::default();
    for w in h.commit_all() {
        store.apply(w);
    }
    let mut m = publish("t", "once", Q2, false);
    m.pkid = 5;
    h.publish(p, m.clone());
    assert!(
        h.take(p).is_empty(),
        "PUBREC waits for the stored packet id"
    );
    for w in h.commit_all() {
        store.apply(w);
    }
    assert_eq!(h.take(p), [Outbound::PubRec(Ack { pkid: 5, reason: 0 })]);
    // kill -9, restart, the publisher resends.
    let mut h = H::new();
    h.r.restore(h.now, store.sessions.clone(), store.retained.clone());
    let (s, _) = h.connect(c5("s"));
    h.sub(s, "t", opts(Q2), None);
    let (p, ack) = h.connect(persistent("p", 100));
    assert!(ack.session_present);
    h.publish(p, Publish { dup: true, ..m });
    assert!(h.deliveries(s).is_empty(), "not routed twice");
    h.commit_all();
    assert_eq!(h.take(p), [Outbound::PubRec(Ack { pkid: 5, reason: 0 })]);
    h.r.handle(h.now, p, Inbound::PubRel(Ack { pkid: 5, reason: 0 }));
    assert!(h.take(p).is_empty(), "PUBCOMP waits for the stored release");
    for w in h.commit_all() {
        store.apply(w);
    }
    assert_eq!(h.take(p), [Outbound::PubComp(Ack { pkid: 5, reason: 0 })]);
    assert!(store.sessions[0].incoming_qos2.is_empty());
}

/// The shell may move the router between threads (behind a mutex or into one task).
#[test]
fn router_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Router>();
}

/// The shell's group commit into `store`.
fn commit_to(h: &mut H, store: &mut MemoryStore) {
    for w in h.commit_all() {
        store.apply(w);
    }
}

/// kill -9 and restart: everything committed so far (the shell's group commit of every write)
/// is what the new router gets; `down` seconds pass while the gateway is down.
fn restart(h: &mut H, store: &mut MemoryStore, down: u64) -> H {
    commit_to(h, store);
    let mut h2 = H::new();
    h2.now = h.now.plus_millis(down * 1000);
    h2.r.restore(h2.now, store.sessions.clone(), store.retained.clone());
    commit_to(&mut h2, store);
    h2
}

/// [MQTT-4.4.0-1] and 4.3.3 across kill -9: a QoS 2 delivery the client PUBREC'd is continued
/// with PUBREL under its packet id, never sent again as PUBLISH; one not yet acknowledged is
/// resent with its original packet id and DUP; a QoS 1 one likewise. So a client keeping packet
/// ids until PUBREL (method B) delivers each once.
#[test]
fn outbound_inflight_state_survives_restart() {
    let mut h = H::new();
    let mut store = MemoryStore::default();
    let (s, p) = h.subscriber_and_publisher(persistent("s", 100), Q2);
    h.pub_(p, "t", "released", Q2);
    h.pub_(p, "t", "unacked", Q2);
    h.pub_(p, "t", "qos1", Q1);
    assert!(
        h.deliveries(s).is_empty(),
        "behind the QoS 2 packet ids being stored"
    );
    commit_to(&mut h, &mut store);
    let d = h.deliveries(s);
    assert_eq!(payloads(&d), ["released", "unacked", "qos1"]);
    let rec = Ack {
        pkid: d[0].pkid,
        reason: 0,
    };
    h.r.handle(h.now, s, Inbound::PubRec(rec));
    commit_to(&mut h, &mut store);
    assert_eq!(h.take(s), [Outbound::PubRel(rec)]);
    let mut h = restart(&mut h, &mut store, 5);
    let (s, ack) = h.connect(persistent("s", 100));
    assert!(ack.session_present);
    let out = h.take(s);
    assert_eq!(out[0], Outbound::PubRel(rec), "PUBREL, not PUBLISH");
    for (packet, want) in out[1..].iter().zip(&d[1..]) {
        match packet {
            Outbound::Publish(x) => assert!(
                x.dup && x.pkid == want.pkid && x.message.payload == want.message.payload,
                "resent with its packet id and DUP: {x:?}"
            ),
            other => panic!("expected a resent PUBLISH, got {other:?}"),
        }
    }
    assert_eq!(out.len(), 3);
    h.r.handle(h.now, s, Inbound::PubComp(rec));
    let unacked = Ack {
        pkid: d[1].pkid,
        reason: 0,
    };
    h.r.handle(h.now, s, Inbound::PubRec(unacked));
    h.ack(s, &d[2]);
    h.commit_all();
    assert_eq!(h.take(s), [Outbound::PubRel(unacked)]);
    h.r.handle(h.now, s, Inbound::PubComp(unacked));
    h.commit_all();
    assert_eq!(h.r.session_backlog("s"), Some((0, 0)));
}

/// 4.3.3 across kill -9 before the packet id of a QoS 2 delivery is committed: it was not sent
/// (the PUBLISH waits for the commit), so after the restart it goes out as a first attempt.
#[test]
fn qos2_publish_waits_for_its_packet_id_across_a_crash() {
    let mut h = H::new();
    let mut store = MemoryStore::default();
    let (s, p) = h.subscriber_and_publisher(persistent("s", 100), Q2);
    h.pub_(p, "t", "m", Q2);
    // The message is committed (the publisher's PUBREC), its packet id is written...
    while let Some((seq, w)) = h.r.poll_storage() {
        store.apply(w);
        h.r.storage_committed(seq);
    }
    assert!(h.deliveries(s).is_empty());
    // ...and lost: kill -9 before the next commit.
    let _lost: Vec<_> = std::iter::from_fn(|| h.r.poll_storage()).collect();
    let mut h2 = H::new();
    h2.now = h.now;
    h2.r.restore(h2.now, store.sessions.clone(), store.retained.clone());
    let (s, _) = h2.connect(persistent("s", 100));
    h2.commit_all();
    let d = h2.deliveries(s);
    assert_eq!(payloads(&d), ["m"]);
    assert!(!d[0].dup, "never sent before");
}

/// 3.1.2.11.2 across a restart: a session expires its interval after its connection ended, not
/// after the restart: one that expired while the gateway was down is gone, one that has time
/// left expires on time, one whose client was connected at the crash gets its full interval
/// from the restart.
#[test]
fn session_expiry_counts_from_the_disconnect_across_restart() {
    let mut h = H::new();
    let mut store = MemoryStore::default();
    for (id, expiry) in [("short", 10), ("long", 100), ("online", 10)] {
        let (c, _) = h.connect(persistent(id, expiry));
        h.sub(c, "t", opts(Q1), None);
        if id != "online" {
            h.r.connection_lost(h.now, c);
        }
    }
    let mut h = restart(&mut h, &mut store, 30);
    assert!(!h.r.has_session("short"), "expired while down");
    assert!(store.sessions.iter().all(|s| &*s.client_id != "short"));
    assert_eq!(h.r.stats().sessions_expired, 1);
    h.advance(60);
    assert!(h.r.has_session("long"));
    assert!(!h.r.has_session("online"), "10 s after the restart");
    h.advance(11);
    assert!(!h.r.has_session("long"), "100 s after its disconnect");
}

/// 3.1.3.2.2 and [MQTT-3.1.3-9] across a restart: a will waiting for its delay is published at
/// its time after a restart (at the restore when that time passed while the gateway was down),
/// and not if the client reconnects first.
#[test]
fn pending_wills_survive_restart() {
    let mut h = H::new();
    let mut store = MemoryStore::default();
    let (w, _) = h.connect(c5("watcher"));
    h.sub(w, "will/+", opts(Q1), None);
    for (id, delay) in [("due-while-down", 5), ("due-later", 60), ("returns", 60)] {
        let (c, _) = h.connect(Connect {
            will: Some(will(&format!("will/{id}"), delay)),
            ..persistent(id, 1000)
        });
        h.r.connection_lost(h.now, c);
    }
    let mut h = restart(&mut h, &mut store, 10);
    let (w, _) = h.connect(c5("watcher"));
    h.sub(w, "will/+", opts(Q1), None);
    // The restore published the will that fell due while down, before any client was back.
    assert_eq!(h.r.stats().wills_published, 1);
    h.connect(persistent("returns", 1000));
    h.advance(60);
    assert_eq!(payloads(&h.deliveries(w)), ["gone"]);
    assert_eq!(h.r.stats().wills_published, 2);
    let h = restart(&mut h, &mut store, 100);
    assert_eq!(
        h.r.stats().wills_published,
        0,
        "published wills are not stored"
    );
}

/// Unexpected acknowledgements never end a connection: an unknown PUBACK (or PUBCOMP) is ignored
/// (5.0 §4.3.2 asks nothing of it), a PUBREL for an unknown id is answered PUBCOMP, 0x92 Packet
/// Identifier not found in MQTT 5 (§3.7.2.1, §4.3.3), success in 3.1.1 ([MQTT-4.3.3-2] has no
/// code for it and the 3.1.1 PUBCOMP none at all).
#[test]
fn unexpected_acks_are_answered_or_ignored_never_fatal() {
    let mut h = H::new();
    let (v5, _) = h.connect(c5("v5"));
    let (v3, _) = h.connect(c3("v3", true));
    for conn in [v5, v3] {
        let a = Ack { pkid: 9, reason: 0 };
        h.r.handle(h.now, conn, Inbound::PubAck(a));
        h.r.handle(h.now, conn, Inbound::PubComp(a));
        assert_eq!(
            h.take(conn),
            [],
            "nothing answers an unknown PUBACK / PUBCOMP"
        );
        h.r.handle(h.now, conn, Inbound::PubRel(a));
        let code = if conn == v5 {
            reason::PACKET_ID_NOT_FOUND
        } else {
            reason::SUCCESS
        };
        assert_eq!(
            h.take(conn),
            [Outbound::PubComp(Ack {
                pkid: 9,
                reason: code
            })]
        );
        assert!(h.r.is_connected(conn), "still connected");
    }
}
