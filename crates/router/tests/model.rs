//! Property test: random operation sequences (connect, disconnect, connection loss, subscribe
//! with No Local and retained messages, unsubscribe, publish (retained, and empty retained),
//! time, restart from storage after some downtime) run through the router and through a small
//! reference model written independently of it (brute-force filter matching over a list, plain
//! `VecDeque` queues). After every operation the deliveries each client has received must be the
//! model's (which messages, which QoS, in order), and after a restart (kill -9: only committed
//! storage writes survive) every QoS 1/2 message acknowledged to its publisher for a persistent
//! session, and every retained message, must still be there (nothing acknowledged is lost), and
//! sessions expire their interval after their disconnect, downtime included (3.1.2.11.2).
//!
//! Clients behave as MQTT clients do: a QoS 2 receiver keeps each packet id from PUBLISH to PUBREL
//! and hands a PUBLISH to its application only if it does not hold that id (4.3.3, method B), and
//! forgets them when it gets no session back. One client (`SLOW`) answers PUBLISH with PUBREC at
//! once but holds its PUBACKs and PUBCOMPs until an `Ack` operation, so restarts and reconnects
//! find QoS 1 deliveries unacknowledged and QoS 2 ones between PUBREC and PUBCOMP: they must be
//! resent with their packet ids and DUP, and continued with PUBREL [MQTT-4.4.0-1], so that no QoS 2
//! message reaches an application twice (checked on every delivery) and a resent QoS 1 message
//! (DUP) is the only duplicate (left out of the comparison).
//!
//! The router's windows and queues are unbounded here: the model checks routing and sessions;
//! windows, drops and the rest have unit tests.

use grove_router::*;
use proptest::prelude::*;
use std::collections::{HashMap, VecDeque};

const CLIENTS: [&str; 4] = ["c0", "c1", "c2", "c3"];
const TOPICS: [&str; 6] = ["a", "a/b", "a/c", "b", "b/b", "$s/a"];
const FILTERS: [&str; 9] = ["a", "a/+", "a/#", "#", "+", "+/b", "b/b", "$s/#", "+/+"];

#[derive(Clone, Debug)]
enum Op {
    /// Client, Clean Start, persistent (Session Expiry > 0; 3.1.1: ignored).
    Connect(usize, bool, bool),
    Disconnect {
        c: usize,
    },
    Lost {
        c: usize,
    },
    /// No Local (`nl`) applies to 5.0 clients only.
    Subscribe {
        c: usize,
        f: usize,
        qos: u8,
        nl: bool,
    },
    Unsubscribe {
        c: usize,
        f: usize,
    },
    /// `retain`: 0 plain, 1 retained, 2 an empty retained message (deletes the retained one).
    Publish {
        c: usize,
        t: usize,
        qos: u8,
        retain: u8,
    },
    Advance {
        secs: u8,
    },
    /// kill -9, `down` seconds without a gateway, restart from what was committed.
    Restart {
        down: u8,
    },
    /// The slow client sends the acknowledgements it held.
    Ack,
}

fn op() -> impl Strategy<Value = Op> {
    let c = 0..CLIENTS.len();
    prop_oneof![
        // The slow client always resumes its persistent session, so that restarts find its
        // deliveries inflight.
        3 => (c.clone(), any::<bool>(), any::<bool>())
            .prop_map(|(c, clean, persistent)| Op::Connect(c, clean && c != SLOW, persistent || c == SLOW)),
        1 => c.clone().prop_map(|c| Op::Disconnect { c }),
        1 => c.clone().prop_map(|c| Op::Lost { c }),
        3 => (c.clone(), 0..FILTERS.len(), 0..3u8, any::<bool>()).prop_map(|(c, f, qos, nl)| Op::Subscribe { c, f, qos, nl: nl && version(c) == Version::V5 }),
        1 => (c.clone(), 0..FILTERS.len()).prop_map(|(c, f)| Op::Unsubscribe { c, f }),
        6 => (c, 0..TOPICS.len(), 0..3u8, prop_oneof![4 => Just(0u8), 1 => Just(1), 1 => Just(2)])
            .prop_map(|(c, t, qos, retain)| Op::Publish { c, t, qos, retain }),
        1 => (0..60u8).prop_map(|secs| Op::Advance { secs }),
        1 => prop_oneof![Just(0u8), 0..80u8].prop_map(|down| Op::Restart { down }),
        1 => Just(Op::Ack),
    ]
}

const EXPIRY: u32 = 50;

/// The client that holds its PUBACKs and PUBCOMPs until `Op::Ack`.
const SLOW: usize = 3;

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Client c2 speaks 3.1.1, the others 5.0.
fn version(c: usize) -> Version {
    if c == 2 {
        Version::V311
    } else {
        Version::V5
    }
}

// ---------------------------------------------------------------- the reference model

/// Brute force, written from 4.7 without looking at the router's trie.
fn model_matches(filter: &str, topic: &str) -> bool {
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    if topic.starts_with('$') && (f[0] == "#" || f[0] == "+") {
        return false;
    }
    for i in 0..f.len() {
        if f[i] == "#" {
            return true;
        }
        if i >= t.len() {
            return false;
        }
        if f[i] != "+" && f[i] != t[i] {
            return false;
        }
    }
    f.len() == t.len()
}

#[derive(Debug, Default)]
struct MSession {
    subs: Vec<(String, u8, bool)>,
    queue: VecDeque<(String, u8)>,
    online: bool,
    persistent: bool,
    expires_at: Option<u64>,
}

#[derive(Debug, Default)]
struct Model {
    now: u64,
    sessions: HashMap<usize, MSession>,
    delivered: HashMap<usize, Vec<(String, u8)>>,
    /// Topic index -> (payload, QoS, publisher).
    retained: HashMap<usize, (String, u8, usize)>,
}

impl Model {
    fn end_connection(&mut self, c: usize) {
        let now = self.now;
        let Some(s) = self.sessions.get_mut(&c) else {
            return;
        };
        if !s.online {
            return;
        }
        s.online = false;
        if !s.persistent {
            self.sessions.remove(&c);
        } else if version(c) == Version::V5 {
            s.expires_at = Some(now + u64::from(EXPIRY) * 1000);
        }
    }
    fn apply(&mut self, op: &Op, payload: &str) {
        match *op {
            Op::Connect(c, clean, persistent) => {
                self.end_connection(c);
                let expired = self
                    .sessions
                    .get(&c)
                    .is_some_and(|s| s.expires_at.is_some_and(|e| e <= self.now));
                if clean || expired {
                    self.sessions.remove(&c);
                }
                let s = self.sessions.entry(c).or_default();
                s.online = true;
                s.persistent = if version(c) == Version::V311 {
                    !clean
                } else {
                    persistent
                };
                s.expires_at = None;
                let out = self.delivered.entry(c).or_default();
                out.extend(s.queue.drain(..));
            }
            Op::Disconnect { c } | Op::Lost { c } => self.end_connection(c),
            Op::Subscribe { c, f, qos, nl } => {
                if let Some(s) = self.sessions.get_mut(&c).filter(|s| s.online) {
                    s.subs.retain(|(x, _, _)| x != FILTERS[f]);
                    s.subs.push((FILTERS[f].to_string(), qos, nl));
                    // Retain Handling 0 (and 3.1.1): every matching retained message, at once.
                    let out = self.delivered.entry(c).or_default();
                    for (t, (payload, q, publisher)) in &self.retained {
                        if model_matches(FILTERS[f], TOPICS[*t]) && !(nl && *publisher == c) {
                            out.push((payload.clone(), (*q).min(qos)));
                        }
                    }
                }
            }
            Op::Unsubscribe { c, f } => {
                if let Some(s) = self.sessions.get_mut(&c).filter(|s| s.online) {
                    s.subs.retain(|(x, _, _)| x != FILTERS[f]);
                }
            }
            Op::Publish { c, t, qos, retain } => {
                if !self.sessions.get(&c).is_some_and(|s| s.online) {
                    return;
                }
                let payload = if retain == 2 { "" } else { payload };
                match retain {
                    1 => {
                        self.retained.insert(t, (payload.to_string(), qos, c));
                    }
                    2 => {
                        self.retained.remove(&t);
                    }
                    _ => {}
                }
                for (&sc, s) in self.sessions.iter_mut() {
                    let best = s
                        .subs
                        .iter()
                        .filter(|(f, _, nl)| model_matches(f, TOPICS[t]) && !(*nl && sc == c))
                        .map(|(_, q, _)| (*q).min(qos))
                        .max();
                    let Some(q) = best else { continue };
                    if s.online {
                        self.delivered
                            .entry(sc)
                            .or_default()
                            .push((payload.to_string(), q));
                    } else if q > 0 {
                        s.queue.push_back((payload.to_string(), q));
                    }
                }
            }
            Op::Advance { secs } => {
                self.now += u64::from(secs) * 1000;
                let now = self.now;
                self.sessions
                    .retain(|_, s| s.online || s.expires_at.is_none_or(|e| e > now));
            }
            Op::Restart { down } => {
                // A session connected at the crash lost its connection with the gateway, and
                // counts its expiry from the restart; the others from their disconnect.
                self.now += u64::from(down) * 1000;
                let now = self.now;
                self.sessions.retain(|_, s| s.persistent);
                for (c, s) in self.sessions.iter_mut() {
                    if s.online && version(*c) == Version::V5 {
                        s.expires_at = Some(now + u64::from(EXPIRY) * 1000);
                    }
                    s.online = false;
                }
                self.sessions
                    .retain(|_, s| s.expires_at.is_none_or(|e| e > now));
            }
            Op::Ack => {}
        }
    }
}

// ---------------------------------------------------------------- the system under test

struct Sut {
    r: Router,
    now: Instant,
    conns: HashMap<usize, ConnId>,
    next_conn: u64,
    next_pkid: u16,
    store: MemoryStore,
    /// What each client's application got: (payload, QoS).
    delivered: HashMap<usize, Vec<(String, u8)>>,
    /// Each client's QoS 2 packet ids between PUBLISH and PUBREL (4.3.3, method B).
    qos2_held: HashMap<usize, std::collections::HashSet<u16>>,
    /// Payloads of the live QoS 2 messages each client's application got.
    qos2_got: HashMap<usize, std::collections::HashSet<String>>,
    /// The slow client's held PUBACKs and PUBCOMPs.
    withheld: Vec<Inbound>,
}

fn config() -> Config {
    Config {
        queue_max_messages: usize::MAX,
        queue_max_bytes: usize::MAX,
        maximum_session_expiry: EXPIRY,
        ..Config::default()
    }
}

impl Sut {
    fn new() -> Sut {
        Sut {
            r: Router::new(config()),
            now: Instant(0),
            conns: HashMap::new(),
            next_conn: 0,
            next_pkid: 0,
            store: MemoryStore::default(),
            delivered: HashMap::new(),
            qos2_held: HashMap::new(),
            qos2_got: HashMap::new(),
            withheld: Vec::new(),
        }
    }

    /// A PUBACK or PUBCOMP from client `c`: at once, or held by the slow client.
    fn ack(&mut self, c: usize, conn: ConnId, packet: Inbound) {
        if c == SLOW {
            self.withheld.push(packet);
        } else {
            self.r.handle(self.now, conn, packet);
        }
    }

    /// A PUBLISH reaches client `c`: its application gets it unless it is a QoS 2 packet id the
    /// client holds, or a resent QoS 1 message (DUP) it already has.
    fn receive(&mut self, c: usize, d: &Delivery) {
        let payload: String = String::from_utf8_lossy(&d.message.payload).into();
        let got = self.delivered.entry(c).or_default();
        let new = match d.qos {
            QoS::AtMostOnce => true,
            QoS::AtLeastOnce => !(d.dup && got.iter().any(|(p, _)| *p == payload)),
            QoS::ExactlyOnce => self.qos2_held.entry(c).or_default().insert(d.pkid),
        };
        if !new {
            return;
        }
        // Every publish carries its own payload (`m{i}`) except the empty one that deletes a
        // retained message: several of those are different messages with equal payloads.
        if d.qos == QoS::ExactlyOnce && !d.retain && !payload.is_empty() {
            assert!(
                self.qos2_got.entry(c).or_default().insert(payload.clone()),
                "QoS 2 message {payload} delivered twice to {}",
                CLIENTS[c]
            );
        }
        got.push((payload, d.qos as u8));
    }

    fn client_of(&self, conn: ConnId) -> Option<usize> {
        self.conns
            .iter()
            .find(|(_, c)| **c == conn)
            .map(|(k, _)| *k)
    }

    /// Drains every connection, acking deliveries, until nothing moves; commits storage each
    /// round (the shell's group commit).
    fn settle(&mut self) {
        loop {
            let mut moved = false;
            while let Some((seq, w)) = self.r.poll_storage() {
                self.store.apply(w);
                self.r.storage_committed(seq);
                moved = true;
            }
            while let Some(conn) = self.r.poll_ready() {
                while let Some(p) = self.r.poll_transmit(self.now, conn) {
                    moved = true;
                    let Some(c) = self.client_of(conn) else {
                        continue;
                    };
                    match p {
                        Outbound::ConnAck(a) if !a.session_present => {
                            // No session: the client discards its own session state too.
                            self.qos2_held.remove(&c);
                        }
                        Outbound::Publish(d) => {
                            let a = Ack {
                                pkid: d.pkid,
                                reason: 0,
                            };
                            self.receive(c, &d);
                            match d.qos {
                                QoS::AtMostOnce => {}
                                QoS::AtLeastOnce => self.ack(c, conn, Inbound::PubAck(a)),
                                QoS::ExactlyOnce => {
                                    self.r.handle(self.now, conn, Inbound::PubRec(a))
                                }
                            }
                        }
                        Outbound::PubRel(a) => {
                            self.qos2_held.entry(c).or_default().remove(&a.pkid);
                            self.ack(c, conn, Inbound::PubComp(a));
                        }
                        Outbound::PubRec(a) => self.r.handle(self.now, conn, Inbound::PubRel(a)),
                        Outbound::Disconnect { .. } => {
                            self.conns.remove(&c);
                        }
                        _ => {}
                    }
                }
            }
            self.r.check_invariants();
            if !moved {
                return;
            }
        }
    }

    fn apply(&mut self, op: &Op, payload: &str) {
        // Held acks go with the slow client's connection.
        if matches!(
            op,
            Op::Connect(SLOW, ..)
                | Op::Disconnect { c: SLOW }
                | Op::Lost { c: SLOW }
                | Op::Restart { .. }
        ) {
            self.withheld.clear();
        }
        match *op {
            Op::Connect(c, clean, persistent) => {
                self.next_conn += 1;
                let conn = ConnId(self.next_conn);
                let connect = Connect {
                    client_id: CLIENTS[c].into(),
                    version: version(c),
                    clean_start: clean,
                    session_expiry_interval: if persistent { EXPIRY } else { 0 },
                    receive_maximum: None,
                    maximum_packet_size: None,
                    topic_alias_maximum: 2,
                    will: None,
                    max_subscriptions: None,
                };
                self.r.connect(self.now, conn, connect).expect("accepted");
                self.conns.insert(c, conn);
            }
            Op::Disconnect { c } => {
                if let Some(conn) = self.conns.remove(&c) {
                    let d = Disconnect {
                        reason: 0,
                        session_expiry_interval: None,
                    };
                    self.r.handle(self.now, conn, Inbound::Disconnect(d));
                }
            }
            Op::Lost { c } => {
                if let Some(conn) = self.conns.remove(&c) {
                    self.r.connection_lost(self.now, conn);
                }
            }
            Op::Subscribe { c, f, qos: q, nl } => {
                if let Some(conn) = self.conns.get(&c) {
                    let options = SubOptions {
                        no_local: nl,
                        ..SubOptions::qos(qos(q))
                    };
                    let s = Subscribe {
                        pkid: 1,
                        filters: vec![(FILTERS[f].into(), options)],
                        subscription_id: None,
                    };
                    self.r.handle(self.now, *conn, Inbound::Subscribe(s));
                }
            }
            Op::Unsubscribe { c, f } => {
                if let Some(conn) = self.conns.get(&c) {
                    let u = Unsubscribe {
                        pkid: 1,
                        filters: vec![FILTERS[f].into()],
                    };
                    self.r.handle(self.now, *conn, Inbound::Unsubscribe(u));
                }
            }
            Op::Publish {
                c,
                t,
                qos: q,
                retain,
            } => {
                if let Some(conn) = self.conns.get(&c) {
                    self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
                    let payload = if retain == 2 { "" } else { payload };
                    let p = Publish {
                        topic: TOPICS[t].into(),
                        payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
                        qos: qos(q),
                        retain: retain != 0,
                        dup: false,
                        pkid: if q == 0 { 0 } else { self.next_pkid },
                        topic_alias: None,
                        properties: MessageProperties::default(),
                    };
                    self.r.handle(self.now, *conn, Inbound::Publish(p));
                }
            }
            Op::Advance { secs } => {
                // One call fires every timer due by then (the model needs no finer steps).
                self.now = self.now.plus_secs(u32::from(secs));
                self.r.handle_timeout(self.now);
            }
            Op::Restart { down } => {
                // kill -9: only what was committed survives (settle committed everything that
                // was written; the acks it released were sent only after that).
                self.r = Router::new(config());
                self.conns.clear();
                self.now = self.now.plus_secs(u32::from(down));
                self.r.restore(
                    self.now,
                    self.store.sessions.clone(),
                    self.store.retained.clone(),
                );
            }
            Op::Ack => {
                if let Some(conn) = self.conns.get(&SLOW).copied() {
                    for p in std::mem::take(&mut self.withheld) {
                        self.r.handle(self.now, conn, p);
                    }
                }
            }
        }
        self.settle();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn router_matches_reference_model(ops in proptest::collection::vec(op(), 1..80)) {
        let mut model = Model::default();
        let mut sut = Sut::new();
        for (i, op) in ops.iter().enumerate() {
            let payload = format!("m{i}");
            let before = match *op {
                Op::Subscribe { c, .. } => Some((
                    c,
                    model.delivered.get(&c).map_or(0, Vec::len),
                    sut.delivered.get(&c).map_or(0, Vec::len),
                )),
                _ => None,
            };
            model.apply(op, &payload);
            sut.apply(op, &payload);
            // Retained messages sent at one SUBSCRIBE come in no particular order.
            if let Some((c, m, s)) = before {
                if let Some(v) = model.delivered.get_mut(&c) {
                    v[m..].sort();
                }
                if let Some(v) = sut.delivered.get_mut(&c) {
                    v[s..].sort();
                }
            }
            for (c, name) in CLIENTS.iter().enumerate() {
                let want = model.delivered.get(&c).cloned().unwrap_or_default();
                let got = sut.delivered.get(&c).cloned().unwrap_or_default();
                prop_assert_eq!(&got, &want, "client {} after op {} {:?}", name, i, op);
            }
        }
    }
}
