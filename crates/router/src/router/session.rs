//! A session's life beyond one packet: DISCONNECT, detaching from a connection, takeover and
//! expiry, wills with delay, moving a shared member's deliveries, timers, and restore at startup.

use super::*;

impl Router {
    pub(super) fn on_disconnect(&mut self, now: Instant, client: &Arc<str>, d: Disconnect) {
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
    pub(super) fn detach(
        &mut self,
        now: Instant,
        client: &Arc<str>,
        will: bool,
        last: Option<Outbound>,
    ) {
        self.forget_flow(client);
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
            Some(w) if will && (w.delay_interval == 0 || s.expiry == 0) => publish_will = Some(*w),
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
        if expiry != 0 && s.stored {
            let will = s
                .will
                .as_deref()
                .cloned()
                .zip(s.will_at)
                .map(|(w, at)| (at, w));
            self.store.write(StorageWrite::Disconnected {
                client_id: client.clone(),
                at: now,
                will,
            });
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
    pub(super) fn end_session(&mut self, now: Instant, client: &Arc<str>) {
        self.forget_flow(client);
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
            self.publish_will(now, client, *w);
        }
        // Last: a crash before this commits keeps the session, so the deliveries handed to other
        // members and the will's are stored before the session that held them is forgotten.
        if s.stored {
            self.store.write(StorageWrite::SessionDeleted {
                client_id: client.clone(),
            });
        }
    }

    pub(super) fn publish_will(&mut self, now: Instant, client: &Arc<str>, w: Will) {
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
    pub(super) fn reroute(&mut self, now: Instant, from: &Arc<str>, moved: Vec<Queued>) {
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

    /// When [`Router::handle_timeout`] is next due (will delay, session expiry, the end of a
    /// publisher's backpressure hold). Call it again after every call that changes state.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let mut next = None;
        while let Some(Reverse((at, client))) = self.timers.peek() {
            let live = self.sessions.get(client).is_some_and(|s| {
                s.will_at == Some(*at) || (s.conn.is_none() && s.expires_at == Some(*at))
            });
            if live {
                next = Some(*at);
                break;
            }
            self.timers.pop();
        }
        while let Some(&(at, conn)) = self.park_deadlines.front() {
            if self.parked.get(&conn).is_some_and(|p| p.deadline == at) {
                return Some(next.map_or(at, |n: Instant| n.min(at)));
            }
            self.park_deadlines.pop_front();
        }
        next
    }

    /// Fires due timers: delayed wills (3.1.3.2.2), session expiry (3.1.2.11.2) and the end of
    /// backpressure holds (the sessions a publisher still waits for are stalled). Message expiry
    /// is applied when a message reaches the head of a queue or a subscriber of a retained topic
    /// (3.3.2.3.3), so it needs no timer.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, conn)) = self.park_deadlines.front() {
            if at > now {
                break;
            }
            self.park_deadlines.pop_front();
            if self.parked.get(&conn).is_some_and(|p| p.deadline == at) {
                self.stall_for(conn);
            }
        }
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
                let stored = s.stored;
                if let Some(w) = s.will.take() {
                    self.publish_will(now, &client, *w);
                    // After the will's deliveries: a crash in between publishes it again (a
                    // duplicate will rather than none).
                    if stored {
                        self.store.write(StorageWrite::WillDone {
                            client_id: client.clone(),
                        });
                    }
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

    /// Loads the stored state at startup (before any connection), `now` being the shell's clock
    /// (wall-clock Unix milliseconds, as when the state was written).
    ///
    /// * A session expires its Session Expiry Interval after its connection ended
    ///   (3.1.2.11.2): `disconnected_at`, or `now` for a session that was connected when the
    ///   gateway stopped (its connection ended with the gateway; a `Disconnected` write records
    ///   that). A session whose expiry passed while the gateway was down is ended here, as
    ///   [`Router::handle_timeout`] would have ended it: its pending will is published and a
    ///   `SessionDeleted` written.
    /// * A pending will is published at its due time (3.1.3.2.2: the earlier of the delay and the
    ///   session's end); one that fell due while the gateway was down is published here, once
    ///   every session is restored so that its subscribers get it. A client that reconnects
    ///   before the due time cancels it [MQTT-3.1.3-9]. Wills of clients that were connected when
    ///   the gateway stopped are not stored, so not published.
    /// * Inflight deliveries (a stored packet id) are resent with that packet id and DUP on
    ///   reconnect, QoS 2 ones whose PUBREC was stored with PUBREL [MQTT-4.4.0-1].
    ///
    /// The shell then drains [`Router::poll_storage`] as usual (the writes above, and the
    /// deliveries of wills).
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
            let mut s = Session::new(
                r.version,
                r.expiry_interval,
                self.config.max_subscriptions_per_client,
            );
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
                // A packet id in use twice cannot come from the router's writes; the second
                // entry is then sent as a new delivery.
                match m.pkid {
                    Some(pkid) if pkid != 0 && !s.inflight.iter().any(|f| f.pkid == pkid) => {
                        let state = if m.released && q.qos == QoS::ExactlyOnce {
                            Flight::RelUnsent
                        } else {
                            Flight::Unsent
                        };
                        s.queue_bytes += q.bytes();
                        s.inflight.push_back(Inflight {
                            q,
                            pkid,
                            state,
                            gate: 0,
                            dup: true,
                        });
                    }
                    _ => s.push_queued(q),
                }
            }
            let lost = r.disconnected_at.unwrap_or(now);
            if r.disconnected_at.is_none() {
                self.store.write(StorageWrite::Disconnected {
                    client_id: client.clone(),
                    at: now,
                    will: None,
                });
            }
            if r.expiry_interval != u32::MAX {
                let at = lost.plus_secs(r.expiry_interval);
                s.expires_at = Some(at);
                self.timers.push(Reverse((at, client.clone())));
            }
            if let Some((at, w)) = r.will {
                s.will = Some(Box::new(w));
                s.will_at = Some(at);
                self.timers.push(Reverse((at, client.clone())));
            }
            for (filter, options, id) in &r.subscriptions {
                s.subs.insert(filter.clone(), (*options, *id));
            }
            let subs = r.subscriptions;
            self.sessions.insert(client.clone(), Box::new(s));
            for (filter, options, id) in subs {
                self.add_to_index(&client, &filter, options, id);
            }
        }
        // What fell due while the gateway was down, in the order it fell due.
        self.handle_timeout(now);
    }
}
