//! Fuzzes the router core with packet sequences: arbitrary bytes decode (via `arbitrary`) into
//! operations on a few clients — connects with any Receive Maximum, Maximum Packet Size and topic
//! alias settings, publishes with any topic, QoS, alias and expiry, acks with any packet id,
//! subscribes with any filter and options, disconnects, losses, time, storage commits, restarts
//! after some downtime from what was committed (inflight packet ids, pending wills and disconnect
//! times included) — and after each one the router's invariants must hold: no panic,
//! inflight never above the client's Receive Maximum, queue, retained and read-pressure byte
//! counts consistent, statistics never decreasing, and every delivery well formed (QoS <=
//! published QoS, packet id set iff QoS > 0).
#![no_main]

use arbitrary::Arbitrary;
use grove_router::*;
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

const TOPICS: [&str; 6] = ["a", "a/b", "b", "$sys/x", "a/b/c", ""];
const FILTERS: [&str; 9] = [
    "#",
    "a/+",
    "a/#",
    "+/b",
    "$share/g/a/#",
    "$share/h/#",
    "b",
    "$sys/#",
    "a/#/x",
];

#[derive(Arbitrary, Debug)]
enum Name {
    Fixed(u8),
    Any(String),
}

impl Name {
    fn get<'a>(&'a self, list: &[&'a str]) -> &'a str {
        match self {
            Name::Fixed(i) => list[usize::from(*i) % list.len()],
            Name::Any(s) => s,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Connect {
        c: u8,
        v5: bool,
        clean: bool,
        expiry: u8,
        receive_max: Option<u8>,
        max_packet: Option<u8>,
        alias_max: u8,
        will: Option<(u8, u8, bool)>,
    },
    Publish {
        c: u8,
        topic: Name,
        qos: u8,
        retain: bool,
        dup: bool,
        pkid: u8,
        alias: Option<u8>,
        expiry: Option<u8>,
        len: u8,
    },
    PubAck {
        c: u8,
        pkid: u8,
        reason: u8,
    },
    PubRec {
        c: u8,
        pkid: u8,
        reason: u8,
    },
    PubRel {
        c: u8,
        pkid: u8,
    },
    PubComp {
        c: u8,
        pkid: u8,
    },
    Subscribe {
        c: u8,
        filter: Name,
        qos: u8,
        no_local: bool,
        rap: bool,
        rh: u8,
        id: Option<u8>,
    },
    Unsubscribe {
        c: u8,
        filter: Name,
    },
    Disconnect {
        c: u8,
        reason: u8,
        expiry: Option<u8>,
    },
    Lost {
        c: u8,
    },
    Advance {
        secs: u8,
    },
    Commit,
    /// kill -9, `down` seconds without a gateway, and restart from what was committed.
    Restart {
        down: u8,
    },
    Drain {
        c: u8,
        n: u8,
        ack: bool,
    },
}

fn qos(q: u8) -> QoS {
    match q % 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn client(c: u8) -> String {
    format!("c{}", c % 4)
}

fuzz_target!(|ops: Vec<Op>| {
    let config = Config {
        queue_max_messages: 8,
        queue_max_bytes: 200,
        receive_maximum: 4,
        topic_alias_maximum: 3,
        retained_max_messages: 4,
        max_subscriptions_per_client: 4,
        maximum_session_expiry: 100,
        // Small enough that sequences reach them: the in-flight bound and backpressure.
        max_inflight_out: 3,
        backpressure_messages: 3,
        backpressure_bytes: 100,
        backpressure_max_hold_ms: 1_500,
        ..Config::default()
    };
    let mut r = Router::new(config.clone());
    let mut store = MemoryStore::default();
    let mut now = Instant(0);
    let mut conns: HashMap<u8, ConnId> = HashMap::new();
    let mut next = 0u64;
    let mut last = r.stats().clone();
    for op in ops.iter().take(200) {
        match op {
            Op::Connect {
                c,
                v5,
                clean,
                expiry,
                receive_max,
                max_packet,
                alias_max,
                will,
            } => {
                next += 1;
                let conn = ConnId(next);
                let connect = Connect {
                    client_id: client(*c).into(),
                    version: if *v5 { Version::V5 } else { Version::V311 },
                    clean_start: *clean,
                    session_expiry_interval: u32::from(*expiry),
                    receive_maximum: receive_max.map(u16::from),
                    maximum_packet_size: max_packet.map(|m| u32::from(m) * 2),
                    topic_alias_maximum: u16::from(*alias_max % 4),
                    will: will.map(|(t, delay, retain)| Will {
                        topic: TOPICS[usize::from(t) % 5].into(),
                        payload: "w".into(),
                        qos: qos(t),
                        retain,
                        delay_interval: u32::from(delay),
                        properties: MessageProperties::default(),
                    }),
                    max_subscriptions: None,
                };
                if r.connect(now, conn, connect).is_ok() {
                    conns.insert(c % 4, conn);
                }
            }
            Op::Publish {
                c,
                topic,
                qos: q,
                retain,
                dup,
                pkid,
                alias,
                expiry,
                len,
            } => {
                if let Some(conn) = conns.get(&(c % 4)) {
                    let mut properties = MessageProperties::default();
                    properties.message_expiry_interval = expiry.map(u32::from);
                    let p = Publish {
                        topic: topic.get(&TOPICS).into(),
                        payload: bytes::Bytes::from(vec![b'x'; usize::from(*len)]),
                        qos: qos(*q),
                        retain: *retain,
                        dup: *dup,
                        pkid: u16::from(*pkid),
                        topic_alias: alias.map(u16::from),
                        properties,
                    };
                    r.handle(now, *conn, Inbound::Publish(p));
                }
            }
            Op::PubAck { c, pkid, reason } | Op::PubRec { c, pkid, reason } => {
                if let Some(conn) = conns.get(&(c % 4)) {
                    let a = Ack {
                        pkid: u16::from(*pkid),
                        reason: *reason,
                    };
                    let p = if matches!(op, Op::PubAck { .. }) {
                        Inbound::PubAck(a)
                    } else {
                        Inbound::PubRec(a)
                    };
                    r.handle(now, *conn, p);
                }
            }
            Op::PubRel { c, pkid } | Op::PubComp { c, pkid } => {
                if let Some(conn) = conns.get(&(c % 4)) {
                    let a = Ack {
                        pkid: u16::from(*pkid),
                        reason: 0,
                    };
                    let p = if matches!(op, Op::PubRel { .. }) {
                        Inbound::PubRel(a)
                    } else {
                        Inbound::PubComp(a)
                    };
                    r.handle(now, *conn, p);
                }
            }
            Op::Subscribe {
                c,
                filter,
                qos: q,
                no_local,
                rap,
                rh,
                id,
            } => {
                if let Some(conn) = conns.get(&(c % 4)) {
                    let options = SubOptions {
                        qos: qos(*q),
                        no_local: *no_local,
                        retain_as_published: *rap,
                        retain_handling: match rh % 3 {
                            0 => RetainHandling::SendAtSubscribe,
                            1 => RetainHandling::SendIfNew,
                            _ => RetainHandling::DoNotSend,
                        },
                    };
                    let s = Subscribe {
                        pkid: 1,
                        filters: vec![(filter.get(&FILTERS).into(), options)],
                        subscription_id: id.map(u32::from),
                    };
                    r.handle(now, *conn, Inbound::Subscribe(s));
                }
            }
            Op::Unsubscribe { c, filter } => {
                if let Some(conn) = conns.get(&(c % 4)) {
                    let u = Unsubscribe {
                        pkid: 1,
                        filters: vec![filter.get(&FILTERS).into()],
                    };
                    r.handle(now, *conn, Inbound::Unsubscribe(u));
                }
            }
            Op::Disconnect { c, reason, expiry } => {
                if let Some(conn) = conns.remove(&(c % 4)) {
                    let d = Disconnect {
                        reason: *reason,
                        session_expiry_interval: expiry.map(u32::from),
                    };
                    r.handle(now, conn, Inbound::Disconnect(d));
                }
            }
            Op::Lost { c } => {
                if let Some(conn) = conns.remove(&(c % 4)) {
                    r.connection_lost(now, conn);
                }
            }
            Op::Advance { secs } => {
                now = now.plus_secs(u32::from(*secs));
                if r.poll_timeout().is_some_and(|t| t <= now) {
                    r.handle_timeout(now);
                }
            }
            Op::Commit => {
                let mut last_seq = None;
                while let Some((seq, w)) = r.poll_storage() {
                    store.apply(w);
                    last_seq = Some(seq);
                }
                if let Some(seq) = last_seq {
                    r.storage_committed(seq);
                }
            }
            Op::Restart { down } => {
                now = now.plus_secs(u32::from(*down));
                r = Router::new(config.clone());
                r.restore(now, store.sessions.clone(), store.retained.clone());
                conns.clear();
                last = r.stats().clone();
            }
            Op::Drain { c, n, ack } => {
                let Some(conn) = conns.get(&(c % 4)).copied() else {
                    continue;
                };
                for _ in 0..*n {
                    let Some(p) = r.poll_transmit(now, conn) else {
                        break;
                    };
                    match p {
                        Outbound::Publish(d) => {
                            assert!(d.qos <= d.message.qos, "delivery QoS above published");
                            assert_eq!(
                                d.pkid == 0,
                                d.qos == QoS::AtMostOnce,
                                "packet id iff QoS > 0"
                            );
                            assert!(!d.message.topic.is_empty());
                            if *ack && d.qos == QoS::AtLeastOnce {
                                r.handle(
                                    now,
                                    conn,
                                    Inbound::PubAck(Ack {
                                        pkid: d.pkid,
                                        reason: 0,
                                    }),
                                );
                            } else if *ack && d.qos == QoS::ExactlyOnce {
                                r.handle(
                                    now,
                                    conn,
                                    Inbound::PubRec(Ack {
                                        pkid: d.pkid,
                                        reason: 0,
                                    }),
                                );
                            }
                        }
                        Outbound::PubRel(a) if *ack => r.handle(now, conn, Inbound::PubComp(a)),
                        Outbound::Disconnect { .. } => {
                            conns.remove(&(c % 4));
                            break;
                        }
                        _ => {}
                    }
                }
            }
        }
        // Connections the router closed: the shell takes their last packet.
        conns.retain(|_, conn| r.is_connected(*conn));
        while let Some(conn) = r.poll_ready() {
            if !conns.values().any(|c| *c == conn) {
                while r.poll_transmit(now, conn).is_some() {}
            }
        }
        r.check_invariants();
        let s = r.stats().clone();
        assert!(
            s.published >= last.published
                && s.delivered >= last.delivered
                && s.dropped_queue_full >= last.dropped_queue_full
        );
        assert!(
            s.expired >= last.expired
                && s.protocol_errors >= last.protocol_errors
                && s.wills_published >= last.wills_published
        );
        last = s;
    }
});
