//! What goes out: ready connections, their packets (window, aliases, Maximum Packet Size), the
//! storage writes and their commits, and the encoded size of a PUBLISH.

use super::*;

impl Router {
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

    pub(super) fn transmit(&mut self, now: Instant, client: &Arc<str>) -> Option<Outbound> {
        let s = self.sessions.get_mut(client)?;
        let v5 = s.version == Version::V5;
        let c = s.conn.as_mut()?;
        if let Some(p) = c.control.pop_front() {
            if c.control.is_empty() {
                // Drained: its room goes back. Every connection gets a CONNACK and most then
                // stay idle, each keeping 4 x 64 B otherwise.
                c.control = VecDeque::new();
            }
            return Some(p);
        }
        let committed = self.store.committed;
        // PUBRELs whose PUBREC is now durable (4.3.3); they hold their window place already.
        if s.rel_gated > 0 {
            let ready = |f: &&mut Inflight| f.state == Flight::RelGated && f.gate <= committed;
            if let Some(f) = s.inflight.iter_mut().find(ready) {
                f.state = Flight::RelSent;
                s.rel_gated -= 1;
                return Some(Outbound::PubRel(Ack {
                    pkid: f.pkid,
                    reason: 0,
                }));
            }
        }
        // Entries that wait for a commit (`Inflight::gate`); deliveries queue up behind them, so
        // the order of PUBLISH packets is kept (4.6).
        let mut waiting = 0usize;
        // Resends after reconnect [MQTT-4.4.0-1] and first sends that waited for a commit, in
        // order, within the window. Entries outside the window are the unsent ones, so the scan
        // happens only when there is one, and the window bounds it.
        while s.inflight.len() > usize::from(s.window) && s.window < c.receive_max {
            let unsent = |f: &Inflight| matches!(f.state, Flight::Unsent | Flight::RelUnsent);
            let Some(i) = s.inflight.iter().position(unsent) else {
                break;
            };
            if s.inflight[i].gate > committed {
                // Every unsent entry is at `i` or after it.
                waiting = s.inflight.len() - usize::from(s.window);
                break;
            }
            let f = &mut s.inflight[i];
            if f.state == Flight::RelUnsent {
                f.state = Flight::RelSent;
                s.window += 1;
                return Some(Outbound::PubRel(Ack {
                    pkid: f.pkid,
                    reason: 0,
                }));
            }
            if let Some(d) = build(now, v5, c, &f.q, f.pkid, f.dup) {
                if !f.dup {
                    self.stats.delivered += 1;
                }
                f.state = Flight::Sent;
                f.dup = true;
                s.window += 1;
                return Some(Outbound::Publish(d));
            }
            // Too large for this connection's maximum: discarded as if sent [MQTT-3.1.2-25].
            self.stats.dropped_too_large += 1;
            if let Some(f) = s.inflight.remove(i) {
                s.queue_bytes -= f.q.bytes();
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
            let room = usize::from(s.window) + waiting < usize::from(c.receive_max);
            if (front.qos == QoS::AtMostOnce && waiting > 0)
                || (front.qos != QoS::AtMostOnce && !room)
            {
                return None;
            }
            // Its bytes stay counted while it is in flight (`Session::queue_bytes`).
            let q = s.queue.pop_front()?;
            if s.queue.is_empty() && s.drops > 0 {
                tracing::info!(client = %client, dropped = s.drops, "session queue drained");
                s.drops = 0;
            }
            let done = |store: &mut Store, bytes: &mut usize, q: &Queued| {
                *bytes -= q.bytes();
                if q.stored {
                    store.write(StorageWrite::Dequeued {
                        client_id: client.clone(),
                        message_id: q.msg.id,
                    });
                }
            };
            if q.msg.expires_at.is_some_and(|e| e <= now) {
                self.stats.expired += 1;
                done(&mut self.store, &mut s.queue_bytes, &q);
                continue;
            }
            let pkid = if q.qos == QoS::AtMostOnce {
                0
            } else {
                alloc_pkid(&mut s.next_pkid, &s.inflight)
            };
            let mut gate = 0;
            if q.stored {
                let seq = self.store.write(StorageWrite::PacketId {
                    client_id: client.clone(),
                    message_id: q.msg.id,
                    pkid,
                });
                // A QoS 2 PUBLISH goes out only once its packet id is durable: sent and then
                // forgotten in a crash, it would be sent again as a new message, which the
                // client would deliver twice (4.3.3). QoS 1 does not wait: a duplicate is
                // allowed (4.3.2).
                if q.qos == QoS::ExactlyOnce {
                    gate = seq;
                    self.gated.push_back((seq, client.clone()));
                }
            }
            if gate > 0 || waiting > 0 {
                s.inflight.push_back(Inflight {
                    q,
                    pkid,
                    state: Flight::Unsent,
                    gate,
                    dup: false,
                });
                waiting += 1;
                continue;
            }
            let Some(d) = build(now, v5, c, &q, pkid, false) else {
                self.stats.dropped_too_large += 1;
                let topic = &q.msg.topic;
                tracing::debug!(client = %client, %topic, "over Maximum Packet Size: discarded");
                done(&mut self.store, &mut s.queue_bytes, &q);
                continue;
            };
            self.stats.delivered += 1;
            if q.qos != QoS::AtMostOnce {
                s.inflight.push_back(Inflight {
                    q,
                    pkid,
                    state: Flight::Sent,
                    gate: 0,
                    dup: true,
                });
                s.window += 1;
            } else {
                s.queue_bytes -= q.bytes();
            }
            return Some(Outbound::Publish(d));
        }
    }

    /// The next storage write, numbered. The shell commits a batch of them in one transaction
    /// (group commit) and then calls [`Router::storage_committed`] with the highest number.
    pub fn poll_storage(&mut self) -> Option<(u64, StorageWrite)> {
        self.store.pending.pop_front()
    }

    /// Every write numbered up to `upto` is durable: the publisher acks waiting for them go out,
    /// and so do the deliveries and PUBRELs that waited for them.
    pub fn storage_committed(&mut self, upto: u64) {
        self.store.committed = self.store.committed.max(upto);
        while self.gated.front().is_some_and(|(seq, _)| *seq <= upto) {
            let Some((_, client)) = self.gated.pop_front() else {
                break;
            };
            if let Some(c) = self.sessions.get_mut(&client).and_then(|s| s.conn.as_mut()) {
                mark_ready(&mut self.ready, c);
            }
        }
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
}

/// Builds an outbound PUBLISH for a connection: remaining expiry [MQTT-3.3.2-6], topic alias
/// (3.3.2.3.4, only while the client's Topic Alias Maximum has room: aliases are never
/// re-mapped), subscription ids (v5). `None` when the packet would exceed the client's Maximum
/// Packet Size [MQTT-3.1.2-25] (the alias is then not taken).
pub(super) fn build(
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
    let outbound = c.aliases.as_ref().map(|a| &a.outbound);
    let used = outbound.map_or(0, HashMap::len);
    let (alias, elided, new) = match outbound.and_then(|o| o.get(&m.topic)) {
        Some(a) => (Some(*a), true, false),
        None if usize::from(c.alias_max) > used => (Some(used as u16 + 1), false, true),
        None => (None, false, false),
    };
    let sub_ids: Vec<u32> = if v5 { q.sub_ids.clone() } else { Vec::new() };
    let size = publish_len(v5, m, q.qos, expiry, alias.is_some(), elided, &sub_ids);
    if size > c.max_packet as usize {
        return None;
    }
    if new {
        if let Some(a) = alias {
            let aliases = c.aliases.get_or_insert_default();
            aliases.outbound.insert(m.topic.clone(), a);
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
