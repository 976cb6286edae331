//! SUBSCRIBE and UNSUBSCRIBE: subscription options, Retain Handling, shared groups and the trie.

use super::*;

impl Router {
    pub(super) fn on_subscribe(&mut self, now: Instant, client: &Arc<str>, sub: Subscribe) {
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
    pub(super) fn subscribe_one(
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
        let Some(s) = self.sessions.get_mut(client) else {
            return Ok(reason::UNSPECIFIED_ERROR);
        };
        let existed = s.subs.contains_key(filter);
        if !existed && s.subs.len() >= s.max_subs {
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

    pub(super) fn add_to_index(
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

    pub(super) fn remove_from_index(&mut self, client: &Arc<str>, full: &Arc<str>) {
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

    pub(super) fn on_unsubscribe(&mut self, client: &Arc<str>, u: Unsubscribe) {
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
}
