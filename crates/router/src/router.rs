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
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

mod publish;
mod session;
mod subscribe;
mod transmit;

#[cfg(test)]
pub(crate) use transmit::publish_len;

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
    /// Publisher connections whose acks wait for congested subscribers (backpressure).
    pub publishers_held: usize,
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
    /// PUBREC received on a stored delivery; the PUBREL waits for the commit of that fact
    /// (`Inflight::gate`), so a restart never resends the PUBLISH the client already holds.
    /// Counts in the window.
    RelGated,
    /// PUBREL sent, waiting for PUBCOMP.
    RelSent,
}

#[derive(Debug)]
struct Inflight {
    q: Queued,
    pkid: u16,
    state: Flight,
    /// Storage write that must be committed before this entry's next packet may go (0: none):
    /// the `PacketId` of a stored QoS 2 message's first PUBLISH, the `PubRecReceived` of a
    /// PUBREL.
    gate: u64,
    /// The PUBLISH was sent before (or may have been, after a restart): resent with DUP.
    dup: bool,
}

/// A connection's topic aliases (3.3.2.3.4).
#[derive(Debug, Default)]
struct Aliases {
    /// Ours, to the client: topic -> alias.
    outbound: HashMap<Arc<str>, u16>,
    /// The client's: alias -> topic.
    inbound: HashMap<u16, Arc<str>>,
}

/// Per-connection state (dropped when the connection goes; the session stays).
#[derive(Debug)]
struct Conn {
    id: ConnId,
    receive_max: u16,
    max_packet: u32,
    alias_max: u16,
    /// Topic aliases both ways, allocated when the first one is used (most clients use none).
    aliases: Option<Box<Aliases>>,
    /// Acks, SUBACKs and other control packets, sent before deliveries.
    control: VecDeque<Outbound>,
    /// In the router's ready list.
    ready: bool,
    /// QoS 1 PUBLISH whose PUBACK is held for storage (counts against Receive Maximum).
    held_qos1: u16,
    /// Acks of any kind held for this connection (later ones queue behind them).
    held: u32,
    /// The session's queue is over its backpressure mark (`Router::congestion` has its entry).
    /// Only a connected session holds publishers back.
    congested: bool,
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
    /// Bytes of `queue` and of `inflight` (what [`Config::queue_max_bytes`] bounds).
    queue_bytes: usize,
    /// A lower bound, in whole seconds of the router's clock, on the earliest Message Expiry of
    /// the messages in `queue` (`u32::MAX`: none of them expires). A full queue looks for expired
    /// messages to make room only once `now` has reached it: without it, every delivery to a full
    /// queue scanned all of it (up to `queue_max_messages`, 10,000 by default), ~10 µs each, and a
    /// subscriber that fell behind a QoS 0 flood made the router slow for everyone (BENCHMARKS,
    /// issue 14). 4 bytes, in what was padding: a session is what an idle client costs.
    expiry_floor: u32,
    /// Deliveries with a packet id: in the window, or waiting for room in it (after a
    /// reconnection, or for a commit); the rest of `inflight` is `inflight.len() - window`
    /// entries in state `Unsent` or `RelUnsent`, so a packet looks for one only when there is one.
    inflight: VecDeque<Inflight>,
    /// Sent and unacknowledged entries of `inflight` (bounded by the Receive Maximum).
    window: u16,
    /// Entries of `inflight` in state `RelGated`.
    rel_gated: u16,
    next_pkid: u16,
    /// QoS 2 packet ids received and not yet released (4.3.3); at most the server's Receive
    /// Maximum of them. A tree (24 B) rather than a hash set (48 B): a session is what an idle
    /// client costs.
    incoming_qos2: BTreeSet<u16>,
    conn: Option<Conn>,
    /// Boxed: most sessions have none, and a session is what an idle client costs.
    will: Option<Box<Will>>,
    will_at: Option<Instant>,
    expires_at: Option<Instant>,
    /// Messages dropped since the queue last drained (for the drop log).
    drops: u64,
    /// This session's part of the router's read pressure (see `Router::reading_paused`).
    counted: usize,
    /// Most subscriptions it may hold (`Connect::max_subscriptions`, else the configuration's).
    max_subs: usize,
}

impl Session {
    fn new(version: Version, expiry: u32, max_subs: usize) -> Session {
        Session {
            version,
            expiry,
            stored: false,
            subs: HashMap::new(),
            queue: VecDeque::new(),
            queue_bytes: 0,
            expiry_floor: u32::MAX,
            inflight: VecDeque::new(),
            window: 0,
            rel_gated: 0,
            next_pkid: 0,
            incoming_qos2: BTreeSet::new(),
            conn: None,
            will: None,
            will_at: None,
            expires_at: None,
            drops: 0,
            counted: 0,
            max_subs,
        }
    }

    fn persistent(&self) -> bool {
        self.expiry > 0
    }

    /// Bytes of the queue and the in-flight deliveries, counted (`queue_bytes` keeps it).
    fn held_bytes(&self) -> usize {
        let queued: usize = self.queue.iter().map(Queued::bytes).sum();
        queued + self.inflight.iter().map(|f| f.q.bytes()).sum::<usize>()
    }

    /// Entries of `inflight` waiting to be (re)sent (`Unsent`, `RelUnsent`).
    fn unsent(&self) -> usize {
        self.inflight.len() - usize::from(self.window)
    }

    /// Appends a delivery to the queue, keeping `queue_bytes` and `expiry_floor`.
    fn push_queued(&mut self, q: Queued) {
        self.queue_bytes += q.bytes();
        if let Some(e) = q.msg.expires_at {
            self.expiry_floor = self.expiry_floor.min(whole_secs(e));
        }
        self.queue.push_back(q);
    }

    /// Removes the queued messages that have expired at `now`, if any may have (see
    /// `expiry_floor`), passing each to `gone`; returns how many.
    fn drop_expired(&mut self, now: Instant, mut gone: impl FnMut(&Queued)) -> usize {
        if self.expiry_floor > whole_secs(now) {
            return 0;
        }
        let before = self.queue.len();
        let mut floor = u32::MAX;
        self.queue.retain(|q| match q.msg.expires_at {
            Some(e) if e <= now => {
                gone(q);
                false
            }
            Some(e) => {
                floor = floor.min(whole_secs(e));
                true
            }
            None => true,
        });
        self.expiry_floor = floor;
        let removed = before - self.queue.len();
        if removed > 0 {
            self.queue_bytes = self.held_bytes();
        }
        removed
    }
}

/// `at` in whole seconds, rounded down (a lower bound), below the `u32::MAX` that means never.
fn whole_secs(at: Instant) -> u32 {
    u32::try_from(at.0 / 1000).map_or(u32::MAX - 1, |s| s.min(u32::MAX - 1))
}

/// The size of a session's state, its connection's included (the idle-cost test).
#[cfg(test)]
pub(crate) fn session_size() -> usize {
    std::mem::size_of::<Session>()
}

/// The next free outbound packet id (2.2.1): non-zero, not in use by an inflight delivery.
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

/// A congested session (its queue over the backpressure mark, see `Config`).
#[derive(Debug, Default)]
struct Congestion {
    /// Publisher connections whose acks wait for this session (some may have gone since).
    waiters: Vec<ConnId>,
    /// Still congested when a publisher's hold ran out: holds nobody back until it drains.
    stalled: bool,
}

/// A publisher connection whose acks are held for congested sessions (its client is
/// `Router::conns`'s: a connection that goes takes its hold with it, `forget_flow`).
#[derive(Debug)]
struct Parked {
    /// Its acks, in order, each with the storage write it also waits for.
    acks: VecDeque<(Outbound, Option<u64>)>,
    /// The congested sessions it waits for.
    waiting_on: Vec<Arc<str>>,
    /// When the hold runs out (`Config::backpressure_max_hold_ms` after it began).
    deadline: Instant,
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
    /// Boxed: the map's table grows to about 1.6 entries per session and keeps its size when
    /// sessions go, so it holds pointers, not ~400-byte sessions (what an idle client costs).
    sessions: HashMap<Arc<str>, Box<Session>>,
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
    /// Sessions with an inflight entry gated on a write (`Inflight::gate`), to wake at its
    /// commit: (write number, client), in write order.
    gated: VecDeque<(u64, Arc<str>)>,
    next_msg_id: u64,
    next_client_id: u64,
    filter: Option<DeliveryFilter>,
    /// Bytes queued that only wait for the shell to write them (sum of `Session::counted`).
    pressure: usize,
    /// Congested sessions (backpressure, `publish.rs`).
    congestion: HashMap<Arc<str>, Congestion>,
    /// Publisher connections whose acks are held for congested sessions.
    parked: HashMap<ConnId, Parked>,
    /// `(deadline, connection)` of the holds, in the order they began (so deadlines ascend).
    park_deadlines: VecDeque<(Instant, ConnId)>,
    /// The congested sessions the message being routed reached (scratch of `on_publish`).
    blockers: Vec<Arc<str>>,
    /// Holds begun and ended, for the shell ([`Router::poll_hold`]).
    hold_changes: VecDeque<(ConnId, bool)>,
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
            gated: VecDeque::new(),
            next_msg_id: 1,
            next_client_id: 1,
            filter: None,
            pressure: 0,
            congestion: HashMap::new(),
            parked: HashMap::new(),
            park_deadlines: VecDeque::new(),
            blockers: Vec::new(),
            hold_changes: VecDeque::new(),
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
            publishers_held: self.parked.len(),
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
            c.client_id.clone()
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
            .or_insert_with(|| Box::new(Session::new(c.version, expiry, 0)));
        session.version = c.version;
        session.expiry = expiry;
        session.max_subs = c
            .max_subscriptions
            .unwrap_or(self.config.max_subscriptions_per_client);
        session.will = c.will.map(Box::new);
        session.will_at = None;
        session.expires_at = None;
        // Written at every connection of a persistent session: the record says it is connected
        // (no disconnect time, no pending will: a reconnection cancels it [MQTT-3.1.3-9]).
        if session.persistent() {
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
                Flight::RelSent | Flight::RelUnsent | Flight::RelGated => Flight::RelUnsent,
            };
        }
        session.window = 0;
        session.rel_gated = 0;
        let mut conn_state = Conn {
            id: conn,
            receive_max: if v5 {
                c.receive_maximum.unwrap_or(u16::MAX)
            } else {
                u16::MAX
            }
            .min(self.config.max_inflight_out.max(1)),
            max_packet: if v5 {
                c.maximum_packet_size.unwrap_or(u32::MAX)
            } else {
                u32::MAX
            },
            alias_max: if v5 { c.topic_alias_maximum } else { 0 },
            aliases: None,
            control: VecDeque::new(),
            ready: false,
            held_qos1: 0,
            held: 0,
            congested: false,
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

    /// Checks internal invariants (for tests and fuzzing); panics with a description if one is
    /// broken.
    pub fn check_invariants(&self) {
        for (client, s) in &self.sessions {
            assert_eq!(s.held_bytes(), s.queue_bytes, "queue bytes of {client}");
            let sent = s
                .inflight
                .iter()
                .filter(|f| matches!(f.state, Flight::Sent | Flight::RelSent | Flight::RelGated))
                .count();
            assert_eq!(sent, usize::from(s.window), "window of {client}");
            let gated = s.inflight.iter().filter(|f| f.state == Flight::RelGated);
            assert_eq!(gated.count(), usize::from(s.rel_gated), "PUBRELs gated");
            let unsent = |f: &&Inflight| matches!(f.state, Flight::Unsent | Flight::RelUnsent);
            assert_eq!(s.inflight.iter().filter(unsent).count(), s.unsent());
            let congested = s.conn.as_ref().is_some_and(|c| c.congested);
            assert_eq!(
                congested,
                self.congestion.contains_key(client),
                "congestion of {client} recorded"
            );
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
            assert!(s.subs.len() <= s.max_subs);
        }
        for (conn, p) in &self.parked {
            assert!(self.conns.contains_key(conn), "held publisher {conn:?}");
            assert!(
                !p.waiting_on.is_empty(),
                "a held publisher waits for someone"
            );
            for b in &p.waiting_on {
                let c = self.congestion.get(b);
                assert!(c.is_some_and(|c| !c.stalled && c.waiters.contains(conn)));
            }
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
