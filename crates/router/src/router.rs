//! The router state machine: sessions, subscriptions, retained messages, timers and the storage
//! boundary. See the crate documentation for the model; every method is synchronous and pure in
//! the quinn-proto sense (no I/O, no clock).

use crate::config::{Config, DropPolicy, Stats};
use crate::packet::{
    reason, Ack, ConnAck, ConnAckProperties, ConnId, Connect, Delivery, Disconnect, Inbound,
    Instant, Message, MessageProperties, Outbound, Publish, QoS, RetainHandling, SubOptions,
    Subscribe, Unsubscribe, Version, Will,
};
use crate::storage::{RestoredSession, StorageWrite};
use crate::topic::{self, Entry, Parsed, RetainedTree, Trie};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

/// The shell's per-delivery authorisation: `(client id, topic) -> may receive`. Called before a
/// delivery takes a queue place, a packet id or a topic alias; a refusal is counted in
/// [`Stats::filtered`].
pub type DeliveryFilter = Box<dyn FnMut(&str, &str) -> bool + Send>;

/// Current sizes, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Sessions (connected or not).
    pub sessions: usize,
    /// Connected sessions.
    pub connections: usize,
    /// Retained messages.
    pub retained_messages: usize,
    /// Retained bytes (topic + payload).
    pub retained_bytes: usize,
    /// Messages queued behind inflight windows, all sessions (O(sessions) to compute).
    pub queued_messages: usize,
    /// Read pressure (see [`Router::reading_paused`]).
    pub read_pressure_bytes: usize,
    /// Publisher acks waiting for a storage commit.
    pub acks_held: usize,
}

/// A message waiting for (or in) a session's inflight window.
#[derive(Clone, Debug)]
struct Queued {
    msg: Arc<Message>,
    qos: QoS,
    retain: bool,
    sub_ids: Vec<u32>,
    /// The `$share/...` filter it was delivered through, for requeueing to another member.
    share: Option<Arc<str>>,
    /// Written to storage (a `Dequeued` is due when it is done).
    stored: bool,
}

impl Queued {
    fn bytes(&self) -> usize {
        self.msg.topic.len() + self.msg.payload.len()
    }
}

/// State of an outbound QoS 1/2 delivery (4.3.2, 4.3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flight {
    /// Has a packet id; to be (re)sent with DUP when the window allows.
    Unsent,
    /// PUBLISH sent, waiting for PUBACK/PUBREC.
    Sent,
    /// PUBREC received, PUBREL to be (re)sent.
    RelUnsent,
    /// PUBREL sent, waiting for PUBCOMP.
    RelSent,
}

#[derive(Debug)]
struct Inflight {
    q: Queued,
    pkid: u16,
    state: Flight,
}

/// Per-connection state (dropped when the connection goes; the session stays).
#[derive(Debug)]
struct Conn {
    id: ConnId,
    receive_max: u16,
    max_packet: u32,
    alias_max: u16,
    aliases_out: HashMap<Arc<str>, u16>,
    aliases_in: HashMap<u16, Arc<str>>,
    /// Acks, SUBACKs and other control packets, sent before deliveries.
    control: VecDeque<Outbound>,
    /// In the router's ready list.
    ready: bool,
    /// QoS 1 PUBLISH whose PUBACK is held for storage (counts against Receive Maximum).
    held_qos1: u16,
    /// Acks of any kind held for this connection (later ones queue behind them).
    held: u32,
}

#[derive(Debug)]
struct Session {
    version: Version,
    /// Session Expiry Interval; `u32::MAX` never; 0 ends with the connection.
    expiry: u32,
    /// Has a `Session` record in storage.
    stored: bool,
    subs: HashMap<Arc<str>, (SubOptions, Option<u32>)>,
    queue: VecDeque<Queued>,
    queue_bytes: usize,
    inflight: VecDeque<Inflight>,
    /// Sent and unacknowledged entries of `inflight` (bounded by the Receive Maximum).
    window: u16,
    next_pkid: u16,
    /// QoS 2 packet ids received and not yet released (4.3.3).
    incoming_qos2: HashSet<u16>,
    conn: Option<Conn>,
    will: Option<Will>,
    will_at: Option<Instant>,
    expires_at: Option<Instant>,
    /// Messages dropped since the queue last drained (for the drop log).
    drops: u64,
    /// This session's part of the router's read pressure (see `Router::reading_paused`).
    counted: usize,
}

impl Session {
    fn new(version: Version, expiry: u32) -> Session {
        Session {
            version,
            expiry,
            stored: false,
            subs: HashMap::new(),
            queue: VecDeque::new(),
            queue_bytes: 0,
            inflight: VecDeque::new(),
            window: 0,
            next_pkid: 0,
            incoming_qos2: HashSet::new(),
            conn: None,
            will: None,
            will_at: None,
            expires_at: None,
            drops: 0,
            counted: 0,
        }
    }

    fn persistent(&self) -> bool {
        self.expiry > 0
    }
}

/// The next free outbound packet id (2.2.1): non-zero, not in use by an inflight delivery.
#[cfg(test)]
pub(crate) fn state_sizes() -> (usize, usize) {
    (std::mem::size_of::<Session>(), std::mem::size_of::<Conn>())
}

fn alloc_pkid(next: &mut u16, inflight: &VecDeque<Inflight>) -> u16 {
    loop {
        *next = next.wrapping_add(1);
        let id = *next;
        if id != 0 && !inflight.iter().any(|f| f.pkid == id) {
            return id;
        }
    }
}

/// A shared subscription group (4.8.2): members in subscription order, round-robin cursor.
#[derive(Debug, Default)]
struct Group {
    members: Vec<(Arc<str>, SubOptions, Option<u32>)>,
    next: usize,
}

/// Numbered storage writes not yet taken by the shell.
#[derive(Debug, Default)]
struct Store {
    seq: u64,
    committed: u64,
    pending: VecDeque<(u64, StorageWrite)>,
}

impl Store {
    fn write(&mut self, w: StorageWrite) -> u64 {
        self.seq += 1;
        self.pending.push_back((self.seq, w));
        self.seq
    }
}

fn mark_ready(ready: &mut VecDeque<ConnId>, c: &mut Conn) {
    if !c.ready {
        c.ready = true;
        ready.push_back(c.id);
    }
}

/// The MQTT router core. See the crate documentation.
pub struct Router {
    config: Config,
    stats: Stats,
    sessions: HashMap<Arc<str>, Session>,
    conns: HashMap<ConnId, Arc<str>>,
    trie: Trie,
    groups: HashMap<Arc<str>, Group>,
    retained: RetainedTree<Arc<Message>>,
    retained_bytes: usize,
    timers: BinaryHeap<Reverse<(Instant, Arc<str>)>>,
    ready: VecDeque<ConnId>,
    /// Last packets of connections the router closed (DISCONNECT 0x8E, 0x82, ...).
    finals: HashMap<ConnId, Outbound>,
    store: Store,
    /// Publisher acks waiting for a storage commit: (write number, connection, ack).
    held: VecDeque<(u64, ConnId, Outbound)>,
    next_msg_id: u64,
    next_client_id: u64,
    filter: Option<DeliveryFilter>,
    /// Bytes queued that only wait for the shell to write them (sum of `Session::counted`).
    pressure: usize,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("sessions", &self.sessions.len())
            .field("connections", &self.conns.len())
            .field("retained", &self.retained.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Router {
    /// A router with no sessions (call [`Router::restore`] before the first connection).
    pub fn new(config: Config) -> Router {
        Router {
            config,
            stats: Stats::default(),
            sessions: HashMap::new(),
            conns: HashMap::new(),
            trie: Trie::default(),
            groups: HashMap::new(),
            retained: RetainedTree::default(),
            retained_bytes: 0,
            timers: BinaryHeap::new(),
            ready: VecDeque::new(),
            finals: HashMap::new(),
            store: Store::default(),
            held: VecDeque::new(),
            next_msg_id: 1,
            next_client_id: 1,
            filter: None,
            pressure: 0,
        }
    }

    /// Installs the shell's per-delivery authorisation check.
    pub fn set_delivery_filter(&mut self, filter: DeliveryFilter) {
        self.filter = Some(filter);
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether a session exists for `client_id` (connected or not).
    pub fn has_session(&self, client_id: &str) -> bool {
        self.sessions.contains_key(client_id)
    }

    /// Current sizes for the shell's metrics (the counters are in [`Router::stats`]).
    pub fn gauges(&self) -> Gauges {
        Gauges {
            sessions: self.sessions.len(),
            connections: self.conns.len(),
            retained_messages: self.retained.len(),
            retained_bytes: self.retained_bytes,
            queued_messages: self.sessions.values().map(|s| s.queue.len()).sum(),
            read_pressure_bytes: self.pressure,
            acks_held: self.held.len(),
        }
    }

    /// Whether `conn` is a live connection of a session (false once the router closed it or it
    /// was reported lost).
    pub fn is_connected(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    /// Messages queued behind the window of `client_id`'s session, and its inflight count.
    pub fn session_backlog(&self, client_id: &str) -> Option<(usize, usize)> {
        self.sessions
            .get(client_id)
            .map(|s| (s.queue.len(), s.inflight.len()))
    }

    fn connack_properties(&self) -> ConnAckProperties {
        let c = &self.config;
        ConnAckProperties {
            session_expiry_interval: None,
            receive_maximum: c.receive_maximum,
            maximum_qos: c.maximum_qos as u8,
            retain_available: c.retain_available,
            maximum_packet_size: c.maximum_packet_size,
            assigned_client_identifier: None,
            topic_alias_maximum: c.topic_alias_maximum,
            wildcard_subscription_available: c.wildcard_subscription_available,
            subscription_identifiers_available: c.subscription_identifiers_available,
            shared_subscription_available: c.shared_subscription_available,
            server_keep_alive: c.server_keep_alive,
        }
    }

    fn refuse(&self, reason: u8) -> ConnAck {
        ConnAck {
            session_present: false,
            reason,
            properties: self.connack_properties(),
        }
    }

    /// A client connected (after the shell authenticated it). `Err` is a refusing CONNACK for
    /// the shell to send before closing; on `Ok` the CONNACK and any resent deliveries come from
    /// [`Router::poll_transmit`] for `conn`.
    ///
    /// Rules: 3.1.2.4 Clean Start, 3.1.2.11.2 Session Expiry, [MQTT-3.1.3-8] (3.1.1 empty id with
    /// clean session 0 refused), 3.1.3.1 assigned client id (v5), [MQTT-3.1.4-3] takeover,
    /// [MQTT-4.4.0-1] resend of unacknowledged PUBLISH and PUBREL.
    pub fn connect(&mut self, now: Instant, conn: ConnId, c: Connect) -> Result<(), ConnAck> {
        let v5 = c.version == Version::V5;
        if c.receive_maximum == Some(0) || c.maximum_packet_size == Some(0) {
            return Err(self.refuse(reason::PROTOCOL_ERROR));
        }
        if c.client_id.is_empty() && !v5 && !c.clean_start {
            return Err(self.refuse(reason::CLIENT_ID_NOT_VALID));
        }
        if let Some(w) = &c.will {
            if !topic::valid_topic(
                &w.topic,
                self.config.max_topic_length,
                self.config.max_topic_levels,
            ) {
                self.stats.topics_rejected += 1;
                return Err(self.refuse(reason::TOPIC_NAME_INVALID));
            }
            if w.qos > self.config.maximum_qos {
                return Err(self.refuse(reason::QOS_NOT_SUPPORTED));
            }
            if w.retain && !self.config.retain_available {
                return Err(self.refuse(reason::RETAIN_NOT_SUPPORTED));
            }
        }
        let mut props = self.connack_properties();
        let client: Arc<str> = if c.client_id.is_empty() {
            let id: Arc<str> = format!("grove-auto-{}", self.next_client_id).into();
            self.next_client_id += 1;
            props.assigned_client_identifier = Some(id.clone());
            id
        } else {
            c.client_id.as_str().into()
        };
        let expiry = match c.version {
            Version::V311 if c.clean_start => 0,
            Version::V311 => u32::MAX,
            Version::V5 => c
                .session_expiry_interval
                .min(self.config.maximum_session_expiry),
        };
        if v5 && expiry != c.session_expiry_interval {
            props.session_expiry_interval = Some(expiry);
        }

        // Takeover [MQTT-3.1.4-3]: the old connection is closed (0x8E on v5), its will handled
        // as for any closed connection (3.1.2.5).
        if self.sessions.get(&client).is_some_and(|s| s.conn.is_some()) {
            self.stats.sessions_taken_over += 1;
            self.detach(
                now,
                &client,
                true,
                Some(Outbound::Disconnect {
                    reason: reason::SESSION_TAKEN_OVER,
                }),
            );
        }
        if let Some(s) = self.sessions.get(&client) {
            if s.expires_at.is_some_and(|t| t <= now) {
                self.stats.sessions_expired += 1;
                self.end_session(now, &client);
            } else if c.clean_start {
                self.end_session(now, &client);
            }
        }
        let present = self.sessions.contains_key(&client);
        let session = self
            .sessions
            .entry(client.clone())
            .or_insert_with(|| Session::new(c.version, expiry));
        session.version = c.version;
        let changed = session.expiry != expiry;
        session.expiry = expiry;
        session.will = c.will;
        session.will_at = None;
        session.expires_at = None;
        if session.persistent() && (!session.stored || changed) {
            session.stored = true;
            self.store.write(StorageWrite::Session {
                client_id: client.clone(),
                version: c.version,
                expiry_interval: expiry,
            });
        } else if !session.persistent() && session.stored {
            session.stored = false;
            self.store.write(StorageWrite::SessionDeleted {
                client_id: client.clone(),
            });
            for q in session.queue.iter_mut() {
                q.stored = false;
            }
            for f in session.inflight.iter_mut() {
                f.q.stored = false;
            }
        }
        for f in session.inflight.iter_mut() {
            f.state = match f.state {
                Flight::Sent | Flight::Unsent => Flight::Unsent,
                Flight::RelSent | Flight::RelUnsent => Flight::RelUnsent,
            };
        }
        session.window = 0;
        let mut conn_state = Conn {
            id: conn,
            receive_max: if v5 {
                c.receive_maximum.unwrap_or(u16::MAX)
            } else {
                u16::MAX
            },
            max_packet: if v5 {
                c.maximum_packet_size.unwrap_or(u32::MAX)
            } else {
                u32::MAX
            },
            alias_max: if v5 { c.topic_alias_maximum } else { 0 },
            aliases_out: HashMap::new(),
            aliases_in: HashMap::new(),
            control: VecDeque::new(),
            ready: false,
            held_qos1: 0,
            held: 0,
        };
        conn_state.control.push_back(Outbound::ConnAck(ConnAck {
            session_present: present,
            reason: reason::SUCCESS,
            properties: props,
        }));
        mark_ready(&mut self.ready, &mut conn_state);
        session.conn = Some(conn_state);
        self.conns.insert(conn, client.clone());
        self.recount(&client);
        Ok(())
    }

    /// The shell's connection closed without DISCONNECT (I/O error, keep-alive timeout, ...):
    /// the will is handled (3.1.2.5) and the session kept or ended per its expiry.
    pub fn connection_lost(&mut self, now: Instant, conn: ConnId) {
        if let Some(client) = self.conns.get(&conn).cloned() {
            self.detach(now, &client, true, None);
        }
    }

    /// A packet from a connected client.
    pub fn handle(&mut self, now: Instant, conn: ConnId, packet: Inbound) {
        let Some(client) = self.conns.get(&conn).cloned() else {
            return;
        };
        match packet {
            Inbound::Publish(p) => self.on_publish(now, &client, p),
            Inbound::PubAck(a) => self.on_ack(&client, a, QoS::AtLeastOnce),
            Inbound::PubRec(a) => self.on_pubrec(&client, a),
            Inbound::PubComp(a) => self.on_ack(&client, a, QoS::ExactlyOnce),
            Inbound::PubRel(a) => self.on_pubrel(&client, a),
            Inbound::Subscribe(s) => self.on_subscribe(now, &client, s),
            Inbound::Unsubscribe(u) => self.on_unsubscribe(&client, u),
            Inbound::Disconnect(d) => self.on_disconnect(now, &client, d),
        }
    }

    /// Closes a connection for a protocol violation: DISCONNECT `code`, will published
    /// [MQTT-3.1.2-8].
    fn close(&mut self, now: Instant, client: &Arc<str>, code: u8) {
        self.stats.protocol_errors += 1;
        tracing::debug!(client = %client, code, "router closes connection");
        self.detach(
            now,
            client,
            true,
            Some(Outbound::Disconnect { reason: code }),
        );
    }

    fn push_control(&mut self, client: &str, packet: Outbound) {
        if let Some(c) = self.sessions.get_mut(client).and_then(|s| s.conn.as_mut()) {
            c.control.push_back(packet);
            mark_ready(&mut self.ready, c);
        }
    }

    fn on_publish(&mut self, now: Instant, client: &Arc<str>, p: Publish) {
        let cfg = &self.config;
        let (max_len, max_levels) = (cfg.max_topic_length, cfg.max_topic_levels);
        if p.qos > cfg.maximum_qos {
            return self.close(now, client, reason::QOS_NOT_SUPPORTED);
        }
        if p.retain && !cfg.retain_available {
            return self.close(now, client, reason::RETAIN_NOT_SUPPORTED);
        }
        if p.qos != QoS::AtMostOnce && p.pkid == 0 {
            return self.close(now, client, reason::PROTOCOL_ERROR);
        }
        let alias_max = cfg.topic_alias_maximum;
        let receive_max = cfg.receive_maximum;
        let Some(s) = self.sessions.get_mut(client) else {
            return;
        };
        let v5 = s.version == Version::V5;
        let Some(c) = s.conn.as_mut() else { return };
        // Topic alias (3.3.2.3.4): 0 or above our maximum is 0x94; an unknown alias with an empty
        // topic is a protocol error (3.3.2.3.4).
        let topic = match p.topic_alias {
            Some(a) if a == 0 || a > alias_max || !v5 => {
                return self.close(now, client, reason::TOPIC_ALIAS_INVALID)
            }
            Some(a) if p.topic.is_empty() => match c.aliases_in.get(&a) {
                Some(t) => t.clone(),
                None => return self.close(now, client, reason::PROTOCOL_ERROR),
            },
            Some(a) => {
                c.aliases_in.insert(a, p.topic.clone());
                p.topic.clone()
            }
            None => p.topic.clone(),
        };
        if !topic::valid_topic(&topic, max_len, max_levels) {
            self.stats.topics_rejected += 1;
            let code = if topic.is_empty() {
                reason::PROTOCOL_ERROR
            } else {
                reason::TOPIC_NAME_INVALID
            };
            return self.close(now, client, code);
        }
        if p.qos == QoS::ExactlyOnce && s.incoming_qos2.contains(&p.pkid) {
            // Resent before PUBREL: not routed again (4.3.3, method B); PUBREC again, once
            // everything written so far is committed (the first one may still be held, maybe on
            // an earlier connection).
            self.stats.qos2_duplicates += 1;
            let uncommitted = (self.store.committed < self.store.seq).then_some(self.store.seq);
            let ack = Ack {
                pkid: p.pkid,
                reason: reason::SUCCESS,
            };
            self.ack_publisher(client, Outbound::PubRec(ack), uncommitted);
            return;
        }
        if v5 && p.qos != QoS::AtMostOnce {
            let pending = usize::from(c.held_qos1) + s.incoming_qos2.len();
            if pending >= usize::from(receive_max) {
                return self.close(now, client, reason::RECEIVE_MAXIMUM_EXCEEDED);
            }
        }
        let expires_at = p
            .properties
            .message_expiry_interval
            .map(|e| now.plus_secs(e));
        let msg = Arc::new(Message {
            id: self.next_msg_id,
            topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties: p.properties,
            expires_at,
            publisher: client.clone(),
        });
        self.next_msg_id += 1;
        let seq = self.route(now, client, msg);
        let ack = Ack {
            pkid: p.pkid,
            reason: reason::SUCCESS,
        };
        let packet = match p.qos {
            QoS::AtMostOnce => return,
            QoS::AtLeastOnce => Outbound::PubAck(ack),
            QoS::ExactlyOnce => Outbound::PubRec(ack),
        };
        let Some(s) = self.sessions.get_mut(client) else {
            return;
        };
        let mut seq = seq;
        if p.qos == QoS::ExactlyOnce {
            s.incoming_qos2.insert(p.pkid);
            // A persistent publisher's pending QoS 2 ids survive a restart, so a PUBLISH resent
            // after it is still recognised (4.3.3).
            if s.stored {
                let w = StorageWrite::Qos2Received {
                    client_id: client.clone(),
                    pkid: p.pkid,
                };
                seq = Some(self.store.write(w));
            }
        }
        self.ack_publisher(client, packet, seq);
    }

    /// Sends a publisher's PUBACK/PUBREC, or holds it until storage write `seq` is committed.
    /// Acks go out in the order of their PUBLISH packets [MQTT-4.6.0-2, MQTT-4.6.0-3]: behind a
    /// held one, the next is held too.
    fn ack_publisher(&mut self, client: &Arc<str>, packet: Outbound, seq: Option<u64>) {
        let Some(c) = self.sessions.get_mut(client).and_then(|s| s.conn.as_mut()) else {
            return;
        };
        let last_held = self.held.back().map_or(0, |h| h.0);
        let hold = match seq {
            Some(seq) if seq > self.store.committed => Some(seq.max(last_held)),
            _ if c.held > 0 => Some(last_held),
            _ => None,
        };
        match hold {
            Some(seq) => {
                self.stats.acks_held += 1;
                if matches!(packet, Outbound::PubAck(_)) {
                    c.held_qos1 += 1;
                }
                c.held += 1;
                self.held.push_back((seq, c.id, packet));
            }
            None => {
                c.control.push_back(packet);
                mark_ready(&mut self.ready, c);
            }
        }
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2): the delivery is done.
    fn on_ack(&mut self, client: &Arc<str>, a: Ack, qos: QoS) {
        let Some(s) = self.sessions.get_mut(client) else {
            return;
        };
        let want = if qos == QoS::AtLeastOnce {
            Flight::Sent
        } else {
            Flight::RelSent
        };
        let Some(i) = s
            .inflight
            .iter()
            .position(|f| f.pkid == a.pkid && f.q.qos == qos && f.state == want)
        else {
            return;
        };
        self.complete(client, i);
    }

    /// Outbound delivery `i` of `client` is done (acknowledged, or refused by PUBREC): its window
    /// place frees and its stored copy goes.
    fn complete(&mut self, client: &Arc<str>, i: usize) {
        let Some(s) = self.sessions.get_mut(client) else {
            return;
        };
        if let Some(f) = s.inflight.remove(i) {
            s.window -= 1;
            if f.q.stored {
                self.store.write(StorageWrite::Dequeued {
                    client_id: client.clone(),
                    message_id: f.q.msg.id,
                });
            }
        }
        if let Some(c) = s.conn.as_mut() {
            mark_ready(&mut self.ready, c);
        }
        self.recount(client);
    }

    fn on_pubrec(&mut self, client: &Arc<str>, a: Ack) {
        let Some(s) = self.sessions.get_mut(client) else {
            return;
        };
        let found = s.inflight.iter().position(|f| {
            f.pkid == a.pkid && f.q.qos == QoS::ExactlyOnce && f.state == Flight::Sent
        });
        let v5 = s.version == Version::V5;
        match found {
            // A PUBREC with an error code ends the exchange (4.3.3).
            Some(i) if a.reason >= 0x80 => self.complete(client, i),
            Some(i) => {
                s.inflight[i].state = Flight::RelSent;
                self.push_control(
                    client,
                    Outbound::PubRel(Ack {
                        pkid: a.pkid,
                        reason: 0,
                    }),
                );
            }
            None => {
                let code = if v5 {
                    reason::PACKET_ID_NOT_FOUND
                } else {
                    reason::SUCCESS
                };
                self.push_control(
                    client,
                    Outbound::PubRel(Ack {
                        pkid: a.pkid,
                        reason: code,
                    }),
                );
            }
        }
    }

    fn on_pubrel(&mut self, client: &Arc<str>, a: Ack) {
        let Some(s) = self.sessions.get_mut(client) else {
            return;
        };
        let known = s.incoming_qos2.remove(&a.pkid);
        let code = if known || s.version == Version::V311 {
            reason::SUCCESS
        } else {
            reason::PACKET_ID_NOT_FOUND
        };
        // The release is committed before PUBCOMP: lost, a restart would take the client's next
        // PUBLISH with this id for a resend and drop it.
        let seq = (known && s.stored).then(|| {
            let w = StorageWrite::Qos2Released {
                client_id: client.clone(),
                pkid: a.pkid,
            };
            self.store.write(w)
        });
        self.ack_publisher(
            client,
            Outbound::PubComp(Ack {
                pkid: a.pkid,
                reason: code,
            }),
            seq,
        );
    }

    fn on_subscribe(&mut self, now: Instant, client: &Arc<str>, sub: Subscribe) {
        if sub.subscription_id.is_some() && !self.config.subscription_identifiers_available {
            return self.close(now, client, reason::SUBSCRIPTION_IDS_NOT_SUPPORTED);
        }
        if sub.subscription_id == Some(0) {
            return self.close(now, client, reason::PROTOCOL_ERROR);
        }
        let mut reasons = Vec::with_capacity(sub.filters.len());
        let mut retained = Vec::new();
        for (filter, options) in &sub.filters {
            match self.subscribe_one(
                now,
                client,
                filter,
                *options,
                sub.subscription_id,
                &mut retained,
            ) {
                Ok(code) => reasons.push(code),
                Err(code) => return self.close(now, client, code),
            }
        }
        self.push_control(
            client,
            Outbound::SubAck {
                pkid: sub.pkid,
                reasons,
            },
        );
        for q in retained {
            self.enqueue(now, client, q);
        }
    }

    /// One filter of a SUBSCRIBE; `Ok(reason)` for the SUBACK, `Err(reason)` to disconnect.
    fn subscribe_one(
        &mut self,
        now: Instant,
        client: &Arc<str>,
        filter: &str,
        mut options: SubOptions,
        id: Option<u32>,
        retained: &mut Vec<Queued>,
    ) -> Result<u8, u8> {
        let cfg = &self.config;
        if !topic::valid_filter(filter, cfg.max_topic_length, cfg.max_topic_levels) {
            self.stats.topics_rejected += 1;
            return Ok(reason::TOPIC_FILTER_INVALID);
        }
        let Some(parsed) = topic::parse(filter) else {
            self.stats.topics_rejected += 1;
            return Ok(reason::TOPIC_FILTER_INVALID);
        };
        let plain = match parsed {
            Parsed::Plain(f) => f,
            Parsed::Shared(..) if !cfg.shared_subscription_available => {
                return Ok(reason::SHARED_NOT_SUPPORTED)
            }
            // No Local on a shared subscription is a protocol error [MQTT-3.8.3-4].
            Parsed::Shared(..) if options.no_local => return Err(reason::PROTOCOL_ERROR),
            Parsed::Shared(_, f) => f,
        };
        if !cfg.wildcard_subscription_available && plain.contains(['+', '#']) {
            return Ok(reason::WILDCARDS_NOT_SUPPORTED);
        }
        options.qos = options.qos.min(cfg.maximum_qos);
        let max_subs = cfg.max_subscriptions_per_client;
        let Some(s) = self.sessions.get_mut(client) else {
            return Ok(reason::UNSPECIFIED_ERROR);
        };
        let existed = s.subs.contains_key(filter);
        if !existed && s.subs.len() >= max_subs {
            self.stats.subscriptions_rejected += 1;
            return Ok(reason::QUOTA_EXCEEDED);
        }
        let full: Arc<str> = filter.into();
        s.subs.insert(full.clone(), (options, id));
        if s.stored {
            self.store.write(StorageWrite::Subscribed {
                client_id: client.clone(),
                filter: full.clone(),
                options,
                id,
            });
        }
        let shared = matches!(parsed, Parsed::Shared(..));
        self.add_to_index(client, &full, options, id);
        // Retained messages on subscribe (3.3.1.3, 3.8.3.1 Retain Handling); never for shared
        // subscriptions (4.8.2).
        let send = match options.retain_handling {
            RetainHandling::SendAtSubscribe => true,
            RetainHandling::SendIfNew => !existed,
            RetainHandling::DoNotSend => false,
        };
        if send && !shared {
            let mut expired = Vec::new();
            let mut found = Vec::new();
            self.retained.matching(plain, &mut found);
            for m in found {
                if m.expires_at.is_some_and(|e| e <= now) {
                    expired.push(m.topic.clone());
                    continue;
                }
                if options.no_local && m.publisher == *client {
                    continue;
                }
                retained.push(Queued {
                    msg: m.clone(),
                    qos: m.qos.min(options.qos),
                    retain: true,
                    sub_ids: id.into_iter().collect(),
                    share: None,
                    stored: false,
                });
            }
            for t in expired {
                self.stats.expired += 1;
                self.drop_retained(&t);
                self.store.write(StorageWrite::RetainedDeleted { topic: t });
            }
        }
        Ok(options.qos as u8)
    }

    fn add_to_index(
        &mut self,
        client: &Arc<str>,
        full: &Arc<str>,
        options: SubOptions,
        id: Option<u32>,
    ) {
        match topic::parse(full) {
            Some(Parsed::Plain(f)) => {
                self.trie.subscribe(
                    f,
                    Entry::Client {
                        client: client.clone(),
                        options,
                        id,
                    },
                );
            }
            Some(Parsed::Shared(_, f)) => {
                let group = self.groups.entry(full.clone()).or_default();
                if group.members.is_empty() {
                    self.trie.subscribe(f, Entry::Group(full.clone()));
                }
                match group.members.iter_mut().find(|m| m.0 == *client) {
                    Some(m) => *m = (client.clone(), options, id),
                    None => group.members.push((client.clone(), options, id)),
                }
            }
            None => {}
        }
    }

    fn remove_from_index(&mut self, client: &Arc<str>, full: &Arc<str>) {
        match topic::parse(full) {
            Some(Parsed::Plain(f)) => {
                let e = Entry::Client {
                    client: client.clone(),
                    options: SubOptions::qos(QoS::AtMostOnce),
                    id: None,
                };
                self.trie.unsubscribe(f, &e);
            }
            Some(Parsed::Shared(_, f)) => {
                if let Some(g) = self.groups.get_mut(full) {
                    g.members.retain(|m| m.0 != *client);
                    if g.members.is_empty() {
                        self.groups.remove(full);
                        self.trie.unsubscribe(f, &Entry::Group(full.clone()));
                    }
                }
            }
            None => {}
        }
    }

    fn on_unsubscribe(&mut self, client: &Arc<str>, u: Unsubscribe) {
        let mut reasons = Vec::with_capacity(u.filters.len());
        for f in &u.filters {
            let Some(s) = self.sessions.get_mut(client) else {
                return;
            };
            match s.subs.remove_entry(f.as_str()) {
                Some((full, _)) => {
                    if s.stored {
                        self.store.write(StorageWrite::Unsubscribed {
                            client_id: client.clone(),
                            filter: full.clone(),
                        });
                    }
                    self.remove_from_index(client, &full);
                    reasons.push(reason::SUCCESS);
                }
                // [MQTT-3.10.4-5]: UNSUBACK even when nothing matched; v5 says so (0x11).
                None => reasons.push(reason::NO_SUBSCRIPTION_EXISTED),
            }
        }
        self.push_control(
            client,
            Outbound::UnsubAck {
                pkid: u.pkid,
                reasons,
            },
        );
    }

    fn on_disconnect(&mut self, now: Instant, client: &Arc<str>, d: Disconnect) {
        let max = self.config.maximum_session_expiry;
        let Some(s) = self.sessions.get_mut(client) else {
            return;
        };
        if let Some(e) = d.session_expiry_interval {
            // 3.14.2.2.2: 0 at CONNECT cannot become non-zero at DISCONNECT.
            if s.expiry == 0 && e > 0 && s.version == Version::V5 {
                return self.close(now, client, reason::PROTOCOL_ERROR);
            }
            let e = e.min(max);
            if e != s.expiry {
                s.expiry = e;
                if s.persistent() {
                    s.stored = true;
                    self.store.write(StorageWrite::Session {
                        client_id: client.clone(),
                        version: s.version,
                        expiry_interval: e,
                    });
                }
            }
        }
        // Normal disconnection discards the will [MQTT-3.1.2-10]; 0x04 and error codes keep it
        // (3.14.2.1). 3.1.1 DISCONNECT always discards it [MQTT-3.1.2-10 in 3.1.1].
        let will = s.version == Version::V5 && d.reason != reason::SUCCESS;
        self.detach(now, client, will, None);
    }

    /// The session loses its connection: will scheduled, shared deliveries not yet sent handed
    /// to other members, the session ended or its expiry timer started.
    fn detach(&mut self, now: Instant, client: &Arc<str>, will: bool, last: Option<Outbound>) {
        let Some(s) = self.sessions.get_mut(client) else {
            return;
        };
        let Some(c) = s.conn.take() else { return };
        self.conns.remove(&c.id);
        self.pressure -= std::mem::take(&mut s.counted);
        if let Some(p) = last {
            self.finals.insert(c.id, p);
            self.ready.push_back(c.id);
        }
        let mut publish_will = None;
        match s.will.take() {
            // Will at the earlier of the delay and the session's end (3.1.3.2.2).
            Some(w) if will && (w.delay_interval == 0 || s.expiry == 0) => publish_will = Some(w),
            Some(w) if will => {
                let at = now.plus_secs(w.delay_interval.min(s.expiry));
                s.will = Some(w);
                s.will_at = Some(at);
                self.timers.push(Reverse((at, client.clone())));
            }
            _ => {}
        }
        // Shared deliveries not yet sent go to another member (4.8.2); sent ones wait for this
        // client's return while its session lives (4.8.2: MAY) and move when it ends.
        let mut moved = Vec::new();
        s.queue.retain(|q| {
            if q.share.is_some() {
                moved.push(q.clone());
                false
            } else {
                true
            }
        });
        for q in &moved {
            s.queue_bytes -= q.bytes();
        }
        let expiry = s.expiry;
        if expiry != 0 && expiry != u32::MAX {
            let at = now.plus_secs(expiry);
            s.expires_at = Some(at);
            self.timers.push(Reverse((at, client.clone())));
        }
        self.reroute(now, client, moved);
        if let Some(w) = publish_will {
            self.publish_will(now, client, w);
        }
        if expiry == 0 {
            self.end_session(now, client);
        }
    }

    /// Removes a session: subscriptions, stored state; a pending will is published; shared
    /// deliveries go to other members.
    fn end_session(&mut self, now: Instant, client: &Arc<str>) {
        let Some(mut s) = self.sessions.remove(client) else {
            return;
        };
        self.pressure -= s.counted;
        if let Some(c) = s.conn.take() {
            self.conns.remove(&c.id);
        }
        for full in s.subs.keys() {
            self.remove_from_index(client, full);
        }
        if s.stored {
            self.store.write(StorageWrite::SessionDeleted {
                client_id: client.clone(),
            });
        }
        let mut moved: Vec<Queued> = s.queue.drain(..).filter(|q| q.share.is_some()).collect();
        moved.extend(
            s.inflight
                .drain(..)
                .filter(|f| matches!(f.state, Flight::Unsent | Flight::Sent) && f.q.share.is_some())
                .map(|f| f.q),
        );
        for q in moved.iter_mut() {
            q.stored = false;
        }
        self.reroute(now, client, moved);
        if let (Some(w), Some(_)) = (s.will.take(), s.will_at) {
            self.publish_will(now, client, w);
        }
    }

    fn publish_will(&mut self, now: Instant, client: &Arc<str>, w: Will) {
        self.stats.wills_published += 1;
        let expires_at = w
            .properties
            .message_expiry_interval
            .map(|e| now.plus_secs(e));
        let msg = Arc::new(Message {
            id: self.next_msg_id,
            topic: w.topic,
            payload: w.payload,
            qos: w.qos,
            retain: w.retain,
            properties: w.properties,
            expires_at,
            publisher: client.clone(),
        });
        self.next_msg_id += 1;
        self.route(now, client, msg);
    }

    /// Hands shared deliveries of `from` to other members of their groups.
    fn reroute(&mut self, now: Instant, from: &Arc<str>, moved: Vec<Queued>) {
        for mut q in moved {
            let Some(key) = q.share.clone() else { continue };
            if q.stored {
                self.store.write(StorageWrite::Dequeued {
                    client_id: from.clone(),
                    message_id: q.msg.id,
                });
                q.stored = false;
            }
            match self.choose(&key, Some(from)) {
                Some((member, options, id)) => {
                    q.qos = q.msg.qos.min(options.qos);
                    q.sub_ids = id.into_iter().collect();
                    self.enqueue(now, &member, q);
                }
                None => {
                    self.stats.dropped_queue_full += 1;
                    tracing::warn!(group = %key, "shared delivery dropped: no other member");
                }
            }
        }
    }

    /// Picks a member of a shared group, round robin, preferring connected members with an empty
    /// queue and room in their window (a stuck member is passed over), then connected ones, then
    /// any (4.8.2).
    fn choose(
        &mut self,
        key: &str,
        exclude: Option<&Arc<str>>,
    ) -> Option<(Arc<str>, SubOptions, Option<u32>)> {
        let g = self.groups.get_mut(key)?;
        let n = g.members.len();
        for pass in 0..3 {
            for i in 0..n {
                let idx = (g.next + i) % n;
                let m = &g.members[idx];
                if exclude.is_some_and(|e| *e == m.0) {
                    continue;
                }
                let s = self.sessions.get(&m.0);
                let online = s.is_some_and(|s| s.conn.is_some());
                let ok = match pass {
                    0 => s.is_some_and(|s| {
                        s.queue.is_empty()
                            && s.conn.as_ref().is_some_and(|c| s.window < c.receive_max)
                    }),
                    1 => online,
                    _ => s.is_some(),
                };
                if ok {
                    g.next = idx + 1;
                    return Some(m.clone());
                }
            }
        }
        None
    }

    /// Routes a message: retained store, then one delivery per matching client at the highest
    /// granted QoS of its matching subscriptions with all their identifiers (3.3.4 / 3.3.5 in
    /// 3.1.1), then one delivery per matching shared group. Returns the last storage write it
    /// caused (the publisher's ack waits for it).
    fn route(&mut self, now: Instant, publisher: &Arc<str>, msg: Arc<Message>) -> Option<u64> {
        let _ = now;
        self.stats.published += 1;
        let mut seq = None;
        if msg.retain && self.config.retain_available {
            seq = self.retain(&msg);
        }
        let mut entries = Vec::new();
        self.trie.matches(&msg.topic, &mut entries);
        let mut targets: Vec<(Arc<str>, QoS, bool, Vec<u32>)> = Vec::with_capacity(entries.len());
        let many = entries.len() > 8;
        let mut index: HashMap<Arc<str>, usize> = HashMap::new();
        let mut groups: Vec<Arc<str>> = Vec::new();
        for e in entries {
            match e {
                Entry::Client {
                    client,
                    options,
                    id,
                } => {
                    // No Local [MQTT-3.8.3-3].
                    if options.no_local && client == publisher {
                        continue;
                    }
                    let qos = msg.qos.min(options.qos);
                    // Few matches (the common case): a scan, no map allocated.
                    let found = if many {
                        index.get(client).copied()
                    } else {
                        targets.iter().position(|t| t.0 == *client)
                    };
                    let i = found.unwrap_or_else(|| {
                        targets.push((client.clone(), QoS::AtMostOnce, false, Vec::new()));
                        if many {
                            index.insert(client.clone(), targets.len() - 1);
                        }
                        targets.len() - 1
                    });
                    let t = &mut targets[i];
                    t.1 = t.1.max(qos);
                    t.2 |= options.retain_as_published;
                    t.3.extend(*id);
                }
                Entry::Group(g) => groups.push(g.clone()),
            }
        }
        for (client, qos, rap, sub_ids) in targets {
            // Retain As Published [MQTT-3.3.1-12, MQTT-3.3.1-13]; 3.1.1: 0 [MQTT-3.3.1-9].
            let q = Queued {
                msg: msg.clone(),
                qos,
                retain: msg.retain && rap,
                sub_ids,
                share: None,
                stored: false,
            };
            seq = self.enqueue(now, &client, q).max(seq);
        }
        for key in groups {
            if let Some((member, options, id)) = self.choose(&key, None) {
                let q = Queued {
                    msg: msg.clone(),
                    qos: msg.qos.min(options.qos),
                    retain: msg.retain && options.retain_as_published,
                    sub_ids: id.into_iter().collect(),
                    share: Some(key),
                    stored: false,
                };
                seq = self.enqueue(now, &member, q).max(seq);
            }
        }
        seq
    }

    fn retain(&mut self, msg: &Arc<Message>) -> Option<u64> {
        if msg.payload.is_empty() {
            // Empty payload deletes the retained message (3.1.1 [MQTT-3.3.1-10/11], 5.0
            // [MQTT-3.3.1-6/7]).
            return if self.drop_retained(&msg.topic) {
                Some(self.store.write(StorageWrite::RetainedDeleted {
                    topic: msg.topic.clone(),
                }))
            } else {
                None
            };
        }
        let size = msg.topic.len() + msg.payload.len();
        let old = self
            .retained
            .get(&msg.topic)
            .map_or(0, |m| m.topic.len() + m.payload.len());
        let count = self.retained.len() + usize::from(old == 0);
        if count > self.config.retained_max_messages
            || self.retained_bytes - old + size > self.config.retained_max_bytes
        {
            self.stats.retained_rejected += 1;
            tracing::warn!(topic = %msg.topic, "retained store full: message not retained");
            return None;
        }
        self.retained_bytes = self.retained_bytes - old + size;
        self.retained.insert(&msg.topic, msg.clone());
        Some(self.store.write(StorageWrite::Retained {
            message: msg.clone(),
        }))
    }

    fn drop_retained(&mut self, topic: &str) -> bool {
        match self.retained.remove(topic) {
            Some(m) => {
                self.retained_bytes -= m.topic.len() + m.payload.len();
                true
            }
            None => false,
        }
    }

    /// Puts a delivery in a session's queue, applying the shell's filter and the queue bounds.
    /// Returns the storage write number when the message was stored for a persistent session.
    fn enqueue(&mut self, now: Instant, client: &Arc<str>, q: Queued) -> Option<u64> {
        let seq = self.enqueue_inner(now, client, q);
        self.recount(client);
        seq
    }

    /// Updates a session's part of the read pressure: its queued bytes, up to
    /// [`Config::pressure_share_bytes`], while it is connected and its window has room (a stuck
    /// subscriber's queue waits for its acks, not for the shell, and must not pause others).
    fn recount(&mut self, client: &str) {
        let share = self.config.pressure_share_bytes;
        if let Some(s) = self.sessions.get_mut(client) {
            let new = match &s.conn {
                Some(c) if s.window < c.receive_max => s.queue_bytes.min(share),
                _ => 0,
            };
            self.pressure = self.pressure - s.counted + new;
            s.counted = new;
        }
    }

    /// Whether the shell should stop reading from its connections for now: the bytes queued for
    /// connected subscribers that only wait for the shell's writes are above
    /// [`Config::pause_reading_above_bytes`]. Each session counts at most
    /// [`Config::pressure_share_bytes`] and a session whose window is full counts nothing, so one
    /// slow or stuck subscriber cannot pause the others' publishers; writing drains the pressure,
    /// so pausing reads cannot deadlock. This is how QoS 0 publishers are slowed at the source;
    /// QoS 1/2 publishers are slowed by the server's Receive Maximum and held acks as well.
    pub fn reading_paused(&self) -> bool {
        self.pressure > self.config.pause_reading_above_bytes
    }

    fn enqueue_inner(&mut self, now: Instant, client: &Arc<str>, mut q: Queued) -> Option<u64> {
        if let Some(f) = self.filter.as_mut() {
            if !f(client, &q.msg.topic) {
                self.stats.filtered += 1;
                return None;
            }
        }
        let cfg = &self.config;
        let s = self.sessions.get_mut(client)?;
        if s.conn.is_none() && q.qos == QoS::AtMostOnce && !cfg.queue_qos0_offline {
            self.stats.qos0_offline_skipped += 1;
            return None;
        }
        let size = q.bytes();
        let full = |s: &Session| {
            s.queue.len() >= cfg.queue_max_messages || s.queue_bytes + size > cfg.queue_max_bytes
        };
        if full(s) {
            // Expired messages make room before anything is dropped (3.3.2.3.3).
            let (before, store) = (s.queue.len(), &mut self.store);
            s.queue.retain(|q| {
                let expired = q.msg.expires_at.is_some_and(|e| e <= now);
                if expired && q.stored {
                    store.write(StorageWrite::Dequeued {
                        client_id: client.clone(),
                        message_id: q.msg.id,
                    });
                }
                !expired
            });
            if s.queue.len() != before {
                self.stats.expired += (before - s.queue.len()) as u64;
                s.queue_bytes = s.queue.iter().map(Queued::bytes).sum();
            }
        }
        if full(s) {
            let mut dropped = 0u64;
            if cfg.drop_policy == DropPolicy::DropOldest
                && size <= cfg.queue_max_bytes
                && cfg.queue_max_messages > 0
            {
                while full(s) {
                    let Some(old) = s.queue.pop_front() else {
                        break;
                    };
                    s.queue_bytes -= old.bytes();
                    dropped += 1;
                    if old.stored {
                        self.store.write(StorageWrite::Dequeued {
                            client_id: client.clone(),
                            message_id: old.msg.id,
                        });
                    }
                }
            }
            let keep_new = !full(s);
            if !keep_new {
                dropped += 1;
            }
            self.stats.dropped_queue_full += dropped;
            if s.drops == 0 {
                tracing::warn!(client = %client, queued = s.queue.len(), bytes = s.queue_bytes,
                    "session queue full: dropping messages ({:?})", cfg.drop_policy);
            }
            s.drops += dropped;
            if !keep_new {
                return None;
            }
        }
        let mut seq = None;
        if s.persistent() && s.stored && q.qos != QoS::AtMostOnce {
            q.stored = true;
            seq = Some(self.store.write(StorageWrite::Enqueued {
                client_id: client.clone(),
                message: q.msg.clone(),
                qos: q.qos,
                retain: q.retain,
                subscription_ids: q.sub_ids.clone(),
            }));
        }
        s.queue_bytes += size;
        s.queue.push_back(q);
        if let Some(c) = s.conn.as_mut() {
            mark_ready(&mut self.ready, c);
        }
        seq
    }

    /// The next connection with something to send. The shell then calls
    /// [`Router::poll_transmit`] for it until `None`, or until its socket is full (then again
    /// when the socket is writable).
    pub fn poll_ready(&mut self) -> Option<ConnId> {
        while let Some(id) = self.ready.pop_front() {
            if self.finals.contains_key(&id) {
                return Some(id);
            }
            if let Some(c) = self
                .conns
                .get(&id)
                .and_then(|client| self.sessions.get_mut(client))
                .and_then(|s| s.conn.as_mut())
            {
                c.ready = false;
                return Some(id);
            }
        }
        None
    }

    /// The next packet for `conn`: control packets first, then resends and deliveries while the
    /// client's Receive Maximum allows (3.3.4). Messages stay in the session's bounded queue until
    /// the shell asks, so a slow socket holds back only its own session.
    pub fn poll_transmit(&mut self, now: Instant, conn: ConnId) -> Option<Outbound> {
        if let Some(p) = self.finals.remove(&conn) {
            return Some(p);
        }
        let client = self.conns.get(&conn)?.clone();
        let out = self.transmit(now, &client);
        self.recount(&client);
        out
    }

    fn transmit(&mut self, now: Instant, client: &Arc<str>) -> Option<Outbound> {
        let s = self.sessions.get_mut(client)?;
        let v5 = s.version == Version::V5;
        let c = s.conn.as_mut()?;
        if let Some(p) = c.control.pop_front() {
            return Some(p);
        }
        // Resends after reconnect [MQTT-4.4.0-1], in order, within the window.
        while s.window < c.receive_max {
            let Some(i) = s
                .inflight
                .iter()
                .position(|f| matches!(f.state, Flight::Unsent | Flight::RelUnsent))
            else {
                break;
            };
            let f = &mut s.inflight[i];
            if f.state == Flight::RelUnsent {
                f.state = Flight::RelSent;
                s.window += 1;
                return Some(Outbound::PubRel(Ack {
                    pkid: f.pkid,
                    reason: 0,
                }));
            }
            if let Some(d) = build(now, v5, c, &f.q, f.pkid, true) {
                f.state = Flight::Sent;
                s.window += 1;
                return Some(Outbound::Publish(d));
            }
            // Too large for this connection's maximum: discarded as if sent [MQTT-3.1.2-25].
            self.stats.dropped_too_large += 1;
            if let Some(f) = s.inflight.remove(i) {
                if f.q.stored {
                    self.store.write(StorageWrite::Dequeued {
                        client_id: client.clone(),
                        message_id: f.q.msg.id,
                    });
                }
            }
        }
        loop {
            let front = s.queue.front()?;
            if front.qos != QoS::AtMostOnce && s.window >= c.receive_max {
                return None;
            }
            let q = s.queue.pop_front()?;
            s.queue_bytes -= q.bytes();
            if s.queue.is_empty() && s.drops > 0 {
                tracing::info!(client = %client, dropped = s.drops, "session queue drained");
                s.drops = 0;
            }
            let done = |store: &mut Store, q: &Queued| {
                if q.stored {
                    store.write(StorageWrite::Dequeued {
                        client_id: client.clone(),
                        message_id: q.msg.id,
                    });
                }
            };
            if q.msg.expires_at.is_some_and(|e| e <= now) {
                self.stats.expired += 1;
                done(&mut self.store, &q);
                continue;
            }
            let pkid = if q.qos == QoS::AtMostOnce {
                0
            } else {
                alloc_pkid(&mut s.next_pkid, &s.inflight)
            };
            let Some(d) = build(now, v5, c, &q, pkid, false) else {
                self.stats.dropped_too_large += 1;
                let topic = &q.msg.topic;
                tracing::debug!(client = %client, %topic, "over Maximum Packet Size: discarded");
                done(&mut self.store, &q);
                continue;
            };
            self.stats.delivered += 1;
            if q.qos != QoS::AtMostOnce {
                s.inflight.push_back(Inflight {
                    q,
                    pkid,
                    state: Flight::Sent,
                });
                s.window += 1;
            }
            return Some(Outbound::Publish(d));
        }
    }

    /// The next storage write, numbered. The shell commits a batch of them in one transaction
    /// (group commit) and then calls [`Router::storage_committed`] with the highest number.
    pub fn poll_storage(&mut self) -> Option<(u64, StorageWrite)> {
        self.store.pending.pop_front()
    }

    /// Every write numbered up to `upto` is durable: the publisher acks waiting for them go out.
    pub fn storage_committed(&mut self, upto: u64) {
        self.store.committed = self.store.committed.max(upto);
        while self.held.front().is_some_and(|(seq, _, _)| *seq <= upto) {
            let Some((_, conn, packet)) = self.held.pop_front() else {
                break;
            };
            let Some(client) = self.conns.get(&conn) else {
                continue;
            };
            if let Some(c) = self.sessions.get_mut(client).and_then(|s| s.conn.as_mut()) {
                if matches!(packet, Outbound::PubAck(_)) {
                    c.held_qos1 = c.held_qos1.saturating_sub(1);
                }
                c.held = c.held.saturating_sub(1);
                c.control.push_back(packet);
                mark_ready(&mut self.ready, c);
            }
        }
    }

    /// When [`Router::handle_timeout`] is next due (will delay, session expiry).
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, client))) = self.timers.peek() {
            let live = self.sessions.get(client).is_some_and(|s| {
                s.will_at == Some(*at) || (s.conn.is_none() && s.expires_at == Some(*at))
            });
            if live {
                return Some(*at);
            }
            self.timers.pop();
        }
        None
    }

    /// Fires due timers: delayed wills (3.1.3.2.2) and session expiry (3.1.2.11.2). Message
    /// expiry is applied when a message reaches the head of a queue or a subscriber of a retained
    /// topic (3.3.2.3.3), so it needs no timer.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, client))) = self.timers.pop() else {
                break;
            };
            let Some(s) = self.sessions.get_mut(&client) else {
                continue;
            };
            if s.will_at.is_some_and(|w| w <= now) {
                s.will_at = None;
                if let Some(w) = s.will.take() {
                    self.publish_will(now, &client, w);
                }
            }
            let Some(s) = self.sessions.get(&client) else {
                continue;
            };
            if s.conn.is_none() && s.expires_at.is_some_and(|e| e <= now) {
                self.stats.sessions_expired += 1;
                self.end_session(now, &client);
            }
        }
    }

    /// Loads the stored state at startup (before any connection). Sessions expire their full
    /// interval after `now` unless their clients return.
    pub fn restore(
        &mut self,
        now: Instant,
        sessions: Vec<RestoredSession>,
        retained: Vec<Arc<Message>>,
    ) {
        for m in retained {
            self.next_msg_id = self.next_msg_id.max(m.id + 1);
            self.retained_bytes += m.topic.len() + m.payload.len();
            if let Some(old) = self.retained.insert(&m.topic.clone(), m) {
                self.retained_bytes -= old.topic.len() + old.payload.len();
            }
        }
        for r in sessions {
            let client = r.client_id.clone();
            let mut s = Session::new(r.version, r.expiry_interval);
            s.stored = true;
            s.incoming_qos2 = r.incoming_qos2.iter().copied().collect();
            for m in r.messages {
                self.next_msg_id = self.next_msg_id.max(m.message.id + 1);
                let q = Queued {
                    msg: m.message,
                    qos: m.qos,
                    retain: m.retain,
                    sub_ids: m.subscription_ids,
                    share: None,
                    stored: true,
                };
                s.queue_bytes += q.bytes();
                s.queue.push_back(q);
            }
            if r.expiry_interval != u32::MAX {
                let at = now.plus_secs(r.expiry_interval);
                s.expires_at = Some(at);
                self.timers.push(Reverse((at, client.clone())));
            }
            for (filter, options, id) in &r.subscriptions {
                s.subs.insert(filter.clone(), (*options, *id));
            }
            let subs = r.subscriptions;
            self.sessions.insert(client.clone(), s);
            for (filter, options, id) in subs {
                self.add_to_index(&client, &filter, options, id);
            }
        }
    }

    /// Checks internal invariants (for tests and fuzzing); panics with a description if one is
    /// broken.
    pub fn check_invariants(&self) {
        for (client, s) in &self.sessions {
            let bytes: usize = s.queue.iter().map(Queued::bytes).sum();
            assert_eq!(bytes, s.queue_bytes, "queue bytes of {client}");
            let sent = s
                .inflight
                .iter()
                .filter(|f| matches!(f.state, Flight::Sent | Flight::RelSent))
                .count();
            assert_eq!(sent, usize::from(s.window), "window of {client}");
            if let Some(c) = &s.conn {
                assert!(
                    s.window <= c.receive_max,
                    "inflight of {client} above its Receive Maximum"
                );
                assert_eq!(
                    self.conns.get(&c.id),
                    Some(client),
                    "connection map of {client}"
                );
            } else {
                assert!(s.persistent(), "offline session {client} with expiry 0");
            }
            let mut ids: Vec<u16> = s.inflight.iter().map(|f| f.pkid).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), s.inflight.len(), "packet ids of {client} unique");
            assert!(s.subs.len() <= self.config.max_subscriptions_per_client);
        }
        let counted: usize = self.sessions.values().map(|s| s.counted).sum();
        assert_eq!(
            counted, self.pressure,
            "read pressure is the sum of the sessions' parts"
        );
        for s in self.sessions.values() {
            let want = match &s.conn {
                Some(c) if s.window < c.receive_max => {
                    s.queue_bytes.min(self.config.pressure_share_bytes)
                }
                _ => 0,
            };
            assert_eq!(s.counted, want, "a session's part of the read pressure");
        }
        assert_eq!(
            self.conns.len(),
            self.sessions.values().filter(|s| s.conn.is_some()).count()
        );
        let mut rb = 0;
        self.retained
            .for_each(|m| rb += m.topic.len() + m.payload.len());
        assert_eq!(rb, self.retained_bytes, "retained bytes");
    }
}

/// Builds an outbound PUBLISH for a connection: remaining expiry [MQTT-3.3.2-6], topic alias
/// (3.3.2.3.4, only while the client's Topic Alias Maximum has room: aliases are never
/// re-mapped), subscription ids (v5). `None` when the packet would exceed the client's Maximum
/// Packet Size [MQTT-3.1.2-25] (the alias is then not taken).
fn build(
    now: Instant,
    v5: bool,
    c: &mut Conn,
    q: &Queued,
    pkid: u16,
    dup: bool,
) -> Option<Delivery> {
    let m = &q.msg;
    let expiry = m
        .expires_at
        .filter(|_| v5)
        .map(|e| u32::try_from(e.0.saturating_sub(now.0).div_ceil(1000)).unwrap_or(u32::MAX));
    let (alias, elided, new) = match c.aliases_out.get(&m.topic) {
        Some(a) => (Some(*a), true, false),
        None if usize::from(c.alias_max) > c.aliases_out.len() => {
            (Some(c.aliases_out.len() as u16 + 1), false, true)
        }
        None => (None, false, false),
    };
    let sub_ids: Vec<u32> = if v5 { q.sub_ids.clone() } else { Vec::new() };
    let size = publish_len(v5, m, q.qos, expiry, alias.is_some(), elided, &sub_ids);
    if size > c.max_packet as usize {
        return None;
    }
    if new {
        if let Some(a) = alias {
            c.aliases_out.insert(m.topic.clone(), a);
        }
    }
    Some(Delivery {
        message: m.clone(),
        qos: q.qos,
        retain: q.retain,
        dup,
        pkid,
        topic_alias: alias,
        topic_elided: elided,
        subscription_ids: sub_ids,
        message_expiry_interval: expiry,
    })
}

/// Bytes of a Variable Byte Integer (1.5.5): 7 bits a byte.
fn varint_len(n: usize) -> usize {
    1 + (1..4).take_while(|i| n >> (7 * i) > 0).count()
}

/// Encoded size of a PUBLISH (2.1, 3.3): fixed header, topic, packet id, properties, payload.
pub(crate) fn publish_len(
    v5: bool,
    m: &Message,
    qos: QoS,
    expiry: Option<u32>,
    alias: bool,
    elided: bool,
    sub_ids: &[u32],
) -> usize {
    let topic = if elided { 0 } else { m.topic.len() };
    let mut rest = 2 + topic + if qos == QoS::AtMostOnce { 0 } else { 2 } + m.payload.len();
    if v5 {
        let p: &MessageProperties = &m.properties;
        let mut n = 0;
        n += p.payload_format_indicator.map_or(0, |_| 2);
        n += expiry.map_or(0, |_| 5);
        n += p.content_type.as_ref().map_or(0, |s| 3 + s.len());
        n += p.response_topic.as_ref().map_or(0, |s| 3 + s.len());
        n += p.correlation_data.as_ref().map_or(0, |s| 3 + s.len());
        n += p
            .user_properties
            .iter()
            .map(|(k, v)| 5 + k.len() + v.len())
            .sum::<usize>();
        n += if alias { 3 } else { 0 };
        n += sub_ids
            .iter()
            .map(|id| 1 + varint_len(*id as usize))
            .sum::<usize>();
        rest += varint_len(n) + n;
    }
    1 + varint_len(rest) + rest
}
