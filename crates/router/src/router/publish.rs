//! Publishing: a PUBLISH and its acknowledgements (QoS 1 and 2 both ways), routing to the
//! matching sessions (shared groups, No Local, QoS = min), retained messages, and the bounded
//! session queues with their drop policy and read pressure.

use super::*;

impl Router {
    pub(super) fn on_publish(&mut self, now: Instant, client: &Arc<str>, p: Publish) {
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
            Some(a) if p.topic.is_empty() => {
                match c.aliases.as_ref().and_then(|x| x.inbound.get(&a)) {
                    Some(t) => t.clone(),
                    None => return self.close(now, client, reason::PROTOCOL_ERROR),
                }
            }
            Some(a) => {
                let aliases = c.aliases.get_or_insert_default();
                aliases.inbound.insert(a, p.topic.clone());
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
        self.blockers.clear();
        let seq = self.route(now, client, msg);
        let blockers = std::mem::take(&mut self.blockers);
        if !blockers.is_empty() {
            self.park(now, client, &blockers);
        }
        self.blockers = blockers;
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
    /// While the connection is held for congested subscribers (backpressure), its acks wait
    /// behind the hold instead.
    pub(super) fn ack_publisher(&mut self, client: &Arc<str>, packet: Outbound, seq: Option<u64>) {
        let Some(c) = self.sessions.get_mut(client).and_then(|s| s.conn.as_mut()) else {
            return;
        };
        if let Some(p) = self.parked.get_mut(&c.id) {
            self.stats.acks_backpressured += 1;
            if matches!(packet, Outbound::PubAck(_)) {
                c.held_qos1 += 1;
            }
            p.acks.push_back((packet, seq));
            // A publisher that does not wait for its acks (MQTT 3.1.1 has no Receive Maximum)
            // is not slowed by holding them: its hold ends at once, so what is held stays
            // bounded, and the sessions it waited for count as stalled.
            if p.acks.len() > usize::from(self.config.receive_maximum) {
                let conn = c.id;
                self.stall_for(conn);
            }
            return;
        }
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
    pub(super) fn on_ack(&mut self, client: &Arc<str>, a: Ack, qos: QoS) {
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
    pub(super) fn complete(&mut self, client: &Arc<str>, i: usize) {
        let Some(s) = self.sessions.get_mut(client) else {
            return;
        };
        if let Some(f) = s.inflight.remove(i) {
            s.window -= 1;
            s.queue_bytes -= f.q.bytes();
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

    pub(super) fn on_pubrec(&mut self, client: &Arc<str>, a: Ack) {
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
            // A stored delivery: the PUBREL waits until the PUBREC is durable, so that a restart
            // continues with PUBREL rather than sending the PUBLISH again (4.3.3).
            Some(i) if s.inflight[i].q.stored => {
                let f = &mut s.inflight[i];
                let seq = self.store.write(StorageWrite::PubRecReceived {
                    client_id: client.clone(),
                    message_id: f.q.msg.id,
                    pkid: a.pkid,
                });
                f.state = Flight::RelGated;
                f.gate = seq;
                s.rel_gated += 1;
                self.gated.push_back((seq, client.clone()));
            }
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

    pub(super) fn on_pubrel(&mut self, client: &Arc<str>, a: Ack) {
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

    /// Picks a member of a shared group, round robin, preferring connected members with an empty
    /// queue and room in their window (a stuck member is passed over), then connected ones, then
    /// any (4.8.2).
    pub(super) fn choose(
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
    pub(super) fn route(
        &mut self,
        now: Instant,
        publisher: &Arc<str>,
        msg: Arc<Message>,
    ) -> Option<u64> {
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

    pub(super) fn retain(&mut self, msg: &Arc<Message>) -> Option<u64> {
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

    pub(super) fn drop_retained(&mut self, topic: &str) -> bool {
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
    pub(super) fn enqueue(&mut self, now: Instant, client: &Arc<str>, q: Queued) -> Option<u64> {
        let seq = self.enqueue_inner(now, client, q);
        self.recount(client);
        seq
    }

    /// Updates a session's part of the read pressure: its queued bytes, up to
    /// [`Config::pressure_share_bytes`], while it is connected and its window has room (a stuck
    /// subscriber's queue waits for its acks, not for the shell, and must not pause others).
    /// A congested (or stalled) session whose queue is down to half its backpressure marks is no
    /// longer congested: its publishers are released (`unblock`).
    pub(super) fn recount(&mut self, client: &Arc<str>) {
        let cfg = &self.config;
        let Some(s) = self.sessions.get_mut(client) else {
            return;
        };
        let new = match &s.conn {
            Some(c) if s.window < c.receive_max => s.queue_bytes.min(cfg.pressure_share_bytes),
            _ => 0,
        };
        self.pressure = self.pressure - s.counted + new;
        s.counted = new;
        let caught_up = s.conn.as_ref().is_some_and(|c| c.congested)
            && s.queue.len() <= cfg.backpressure_messages / 2
            && s.queue_bytes <= cfg.backpressure_bytes / 2;
        if caught_up {
            self.unblock(client, false);
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

    pub(super) fn enqueue_inner(
        &mut self,
        now: Instant,
        client: &Arc<str>,
        mut q: Queued,
    ) -> Option<u64> {
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
            let store = &mut self.store;
            self.stats.expired += s.drop_expired(now, |q| {
                if q.stored {
                    store.write(StorageWrite::Dequeued {
                        client_id: client.clone(),
                        message_id: q.msg.id,
                    });
                }
            }) as u64;
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
        s.push_queued(q);
        if let Some(c) = s.conn.as_mut() {
            mark_ready(&mut self.ready, c);
            // Backpressure: the publisher will wait for this session (`park`).
            if s.queue.len() >= cfg.backpressure_messages || s.queue_bytes >= cfg.backpressure_bytes
            {
                if !c.congested {
                    c.congested = true;
                    self.congestion
                        .insert(client.clone(), Congestion::default());
                }
                if self.congestion.get(client).is_some_and(|g| !g.stalled) {
                    self.blockers.push(client.clone());
                }
            }
        }
        seq
    }

    /// Holds `client`'s connection until the congested sessions `blockers` drain to half their
    /// mark, or for [`Config::backpressure_max_hold_ms`] at most (`handle_timeout`): its acks
    /// wait (the current one and every later one, in order: [MQTT-4.6.0-2], [MQTT-4.6.0-3]), and
    /// the shell stops reading it ([`Router::poll_hold`]), which is what slows a QoS 0 publisher.
    fn park(&mut self, now: Instant, client: &Arc<str>, blockers: &[Arc<str>]) {
        let Some(conn) = self.sessions.get(client).and_then(|s| s.conn.as_ref()) else {
            return;
        };
        let conn = conn.id;
        let deadlines = &mut self.park_deadlines;
        let hold = self.config.backpressure_max_hold_ms;
        let changes = &mut self.hold_changes;
        let p = self.parked.entry(conn).or_insert_with(|| {
            let deadline = now.plus_millis(hold);
            deadlines.push_back((deadline, conn));
            changes.push_back((conn, true));
            Parked {
                acks: VecDeque::new(),
                waiting_on: Vec::new(),
                deadline,
            }
        });
        for b in blockers {
            if !p.waiting_on.contains(b) {
                if let Some(g) = self.congestion.get_mut(b) {
                    g.waiters.push(conn);
                    p.waiting_on.push(b.clone());
                }
            }
        }
        if p.waiting_on.is_empty() {
            self.release(conn);
        }
    }

    /// The next change of a connection's hold (`true`: held, stop reading it; `false`: read it
    /// again), in order. A connection that goes while held has no `false`: it is gone.
    pub fn poll_hold(&mut self) -> Option<(ConnId, bool)> {
        self.hold_changes.pop_front()
    }

    /// A congested session drained (`stalled` false: it no longer is congested) or is found
    /// stalled (it holds nobody back until it drains): the publishers that waited only for it
    /// get their acks.
    pub(super) fn unblock(&mut self, session: &Arc<str>, stalled: bool) {
        let waiters = match self.congestion.get_mut(session) {
            None => return,
            Some(g) if stalled => {
                if !g.stalled {
                    g.stalled = true;
                    self.stats.backpressure_stalls += 1;
                    tracing::info!(client = %session, "subscriber stalled: it no longer slows \
                        its publishers (its queue fills to its bounds instead)");
                }
                std::mem::take(&mut g.waiters)
            }
            Some(_) => {
                let g = self.congestion.remove(session).unwrap_or_default();
                let conn = self.sessions.get_mut(session).and_then(|s| s.conn.as_mut());
                if let Some(c) = conn {
                    c.congested = false;
                }
                g.waiters
            }
        };
        for conn in waiters {
            let Some(p) = self.parked.get_mut(&conn) else {
                continue;
            };
            p.waiting_on.retain(|b| b != session);
            if p.waiting_on.is_empty() {
                self.release(conn);
            }
        }
    }

    /// A held publisher's hold ends: the sessions it waits for are stalled.
    pub(super) fn stall_for(&mut self, conn: ConnId) {
        let waiting = self.parked.get(&conn).map(|p| p.waiting_on.clone());
        for b in waiting.unwrap_or_default() {
            self.unblock(&b, true);
        }
    }

    /// Sends a held publisher's acks, in order (each still waits for its storage write).
    fn release(&mut self, conn: ConnId) {
        let Some(p) = self.parked.remove(&conn) else {
            return;
        };
        self.hold_changes.push_back((conn, false));
        let Some(client) = self.conns.get(&conn).cloned() else {
            return;
        };
        for (packet, seq) in p.acks {
            if matches!(packet, Outbound::PubAck(_)) {
                let c = self.sessions.get_mut(&client).and_then(|s| s.conn.as_mut());
                if let Some(c) = c {
                    c.held_qos1 = c.held_qos1.saturating_sub(1);
                }
            }
            self.ack_publisher(&client, packet, seq);
        }
    }

    /// `client`'s connection goes: its held acks go with it, and its session, offline, holds
    /// nobody back.
    pub(super) fn forget_flow(&mut self, client: &Arc<str>) {
        let conn = self.sessions.get(client).and_then(|s| s.conn.as_ref());
        if let Some(id) = conn.map(|c| c.id) {
            self.parked.remove(&id);
            self.unblock(client, false);
        }
    }
}
