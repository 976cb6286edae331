//! The functions component's async path: events the durable tap recorded are queued per function,
//! run with retries, sent to the dead-letter topic when they fail, and deleted from the store when
//! done (the triggers are the tap's routes).

use super::*;

impl Functions {
    /// Queues a recorded async event. A full queue sends it to the dead-letter topic.
    pub(super) fn enqueue(&self, name: &str, event: Event) {
        let queue = self.lock().get(name).map(|f| f.queue.clone());
        let Some(queue) = queue else {
            self.dead_letter_unknown(name, &event);
            self.forget(event.id);
            return;
        };
        if let Err(e) = queue.try_send(event) {
            let event = match e {
                mpsc::error::TrySendError::Full(ev) | mpsc::error::TrySendError::Closed(ev) => ev,
            };
            let failure = json!({"kind": "queue_full", "message": "the function's queue is full"});
            self.dead_letter(name, &event, None, failure, 0);
            self.forget(event.id);
        }
    }

    /// Marks an event done: [`forgetter`] deletes it from the store with the others finished
    /// meanwhile. Nothing waits for that commit (a crash before it only means the event runs
    /// again: at least once), so a function's next event never waits for the disk.
    pub(super) fn forget(&self, id: u64) {
        let _ = self.inner.finished.send(id);
    }

    /// The durable tap's owner: turns the messages its routes took into events of the functions
    /// they trigger, commits them, lets the publishers go on, then queues them.
    pub(super) async fn take_offers(self, mut offers: mpsc::Receiver<Offer>) {
        let mut shutdown = self.inner.shutdown.clone();
        let mut waiting = Vec::new();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                offer = offers.recv() => match offer {
                    Some(o) => waiting.push(o),
                    None => return,
                },
            }
            while let Ok(o) = offers.try_recv() {
                waiting.push(o);
            }
            let mut events: Vec<(String, Event)> = Vec::new();
            for offer in &mut waiting {
                for t in offer.messages.drain(..) {
                    for (name, qualifier) in self.targets(&t.topic) {
                        let id = self
                            .inner
                            .next_event
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let event = Event {
                            id,
                            topic: t.topic.clone(),
                            payload: t.payload.clone(),
                            hops: t.hops,
                            qualifier,
                        };
                        events.push((name, event));
                    }
                }
            }
            let stored = events
                .iter()
                .map(|(name, e)| StoredEvent {
                    id: e.id,
                    name: name.clone(),
                    qualifier: e.qualifier.text(),
                    topic: e.topic.clone(),
                    payload: e.payload.clone(),
                    hops: e.hops,
                })
                .collect();
            if let Err(e) = self.inner.store.events_write(stored, Vec::new()).await {
                // They still run now; only a crash before they finish would lose them.
                warn!(error = %e, events = events.len(), "cannot record function events");
            }
            for offer in waiting.drain(..) {
                let _ = offer.done.send(());
            }
            for (name, event) in events {
                self.enqueue(&name, event);
            }
        }
    }

    /// The functions (and qualifiers) a message on `topic` is an event of: the target of
    /// `$grove/functions/{name}[:{qualifier}]/event`, or every function whose `$LATEST` manifest
    /// has a trigger matching the topic.
    fn targets(&self, topic: &str) -> Vec<(String, Qualifier)> {
        if topic.starts_with("$grove/functions/") {
            return match parse_target(topic, "/event") {
                Ok(target) => vec![target],
                Err(e) => {
                    if let Some(suppressed) = self.may_log_stray() {
                        let e = crate::logs::cut(e.as_bytes(), MAX_LOGGED);
                        warn!(suppressed, "an async event was dropped: {e}");
                    }
                    Vec::new()
                }
            };
        }
        self.lock()
            .iter()
            .filter_map(|(name, f)| {
                let m = f.latest_manifest()?;
                m.triggers
                    .iter()
                    .any(|t| grove_rules::topic_matches(t, topic))
                    .then(|| {
                        (
                            name.clone(),
                            Qualifier::parse(&m.trigger_qualifier).unwrap_or(Qualifier::Latest),
                        )
                    })
            })
            .collect()
    }

    /// Makes the tap's routes the functions' triggers (plus the async event topic).
    pub(super) fn update_routes(&self) {
        let filters: std::collections::BTreeSet<String> = self
            .lock()
            .values()
            .filter_map(|f| f.latest_manifest())
            .flat_map(|m| m.triggers.iter().cloned())
            .chain(std::iter::once(EVENT_FILTER.to_owned()))
            .collect();
        self.inner.tap.set_routes(
            filters
                .into_iter()
                .map(|filter| Route {
                    filter,
                    strip: String::new(),
                    prefix: String::new(),
                })
                .collect(),
        );
    }

    /// Runs a function's async events, at most `max_concurrency` at once.
    pub(super) async fn dispatch(self, name: String, mut rx: mpsc::Receiver<Event>) {
        let mut running = tokio::task::JoinSet::new();
        loop {
            let limit = self
                .lock()
                .get(&name)
                .and_then(|f| f.latest_manifest().map(|m| m.max_concurrency as usize))
                .unwrap_or(1);
            while running.len() >= limit {
                running.join_next().await;
            }
            let Some(event) = rx.recv().await else { break };
            running.spawn(self.clone().attempts(name.clone(), event));
        }
        while running.join_next().await.is_some() {}
    }

    /// At-least-once: three attempts with backoff, then the dead-letter topic.
    async fn attempts(self, name: String, event: Event) {
        let mut last = None;
        for attempt in 0..=BACKOFF.len() {
            if attempt > 0 {
                self.inner.metrics.count(&self.inner.metrics.retries, &name);
                tokio::time::sleep(BACKOFF[attempt - 1]).await;
            }
            match self
                .invoke(
                    &name,
                    &event.qualifier,
                    event.topic.clone(),
                    event.payload.clone(),
                    event.hops,
                )
                .await
            {
                Ok(Invoked {
                    outcome: Outcome { result: Ok(_), .. },
                    ..
                }) => {
                    self.forget(event.id);
                    return;
                }
                Ok(Invoked {
                    version,
                    outcome:
                        Outcome {
                            result: Err(failure),
                            ..
                        },
                    ..
                }) => last = Some((Some(version), failure_json(&failure))),
                // Shutting down: the event stays stored and runs after the restart.
                Err(FunctionError::Closed) => return,
                // Removed while the event waited: no retry can succeed.
                Err(FunctionError::NotFound(_)) => {
                    self.dead_letter(&name, &event, None, not_found(&name), attempt + 1);
                    self.forget(event.id);
                    return;
                }
                // Neither can one of a version that failed to load.
                Err(e @ FunctionError::LoadFailed { version, .. }) => {
                    let error = json!({"kind": "load_failed", "message": e.to_string()});
                    self.dead_letter(&name, &event, Some(version), error, attempt + 1);
                    self.forget(event.id);
                    return;
                }
                Err(e) => last = Some((None, json!({"kind": "routing", "message": e.to_string()}))),
            }
        }
        if let Some((version, failure)) = last {
            self.dead_letter(&name, &event, version, failure, BACKOFF.len() + 1);
        }
        self.forget(event.id);
    }

    /// Publishes a failed event and its error on the function's dead-letter topic (also for a
    /// function that does not exist, or no longer: an accepted event is never dropped silently).
    fn dead_letter(
        &self,
        name: &str,
        event: &Event,
        version: Option<u64>,
        error: Value,
        attempts: usize,
    ) {
        self.inner.metrics.count(&self.inner.metrics.dlq, name);
        self.send_dead_letter(name, event, version, error, attempts);
    }

    /// [`Functions::dead_letter`] for an event whose function was never deployed (or is gone):
    /// counted under [`UNKNOWN_FUNCTION`], since a device chooses such names.
    fn dead_letter_unknown(&self, name: &str, event: &Event) {
        self.inner
            .metrics
            .count(&self.inner.metrics.dlq, UNKNOWN_FUNCTION);
        self.send_dead_letter(name, event, None, not_found(name), 0);
    }

    fn send_dead_letter(
        &self,
        name: &str,
        event: &Event,
        version: Option<u64>,
        error: Value,
        attempts: usize,
    ) {
        if let Some(suppressed) = self.may_log(name) {
            // The topic is a device's, the error's message may be a guest's `output`.
            let topic = crate::logs::cut(event.topic.as_bytes(), MAX_LOGGED);
            let error = crate::logs::cut(error.to_string().as_bytes(), MAX_LOGGED).into_owned();
            warn!(function = %crate::logs::cut(name.as_bytes(), MAX_LOGGED), %topic, error, suppressed, "event sent to the dead-letter topic");
        }
        let doc = json!({
            "function": name,
            "version": version,
            "attempts": attempts,
            "error": error,
            "event": event_json(&event.topic, &event.payload),
        });
        let msg = Outgoing {
            topic: dlq_topic(name),
            payload: Bytes::from(doc.to_string()),
            qos: 1,
            retain: false,
            hops: event.hops + 1,
        };
        if self.inner.publish.try_send(vec![(msg, None)]).is_err() {
            warn!(
                function = name,
                "the output queue is full; a dead letter was lost"
            );
        }
    }
}

/// Deletes finished events from the store: every id waiting goes in one commit, so under load
/// one commit serves many events.
pub(super) async fn forgetter(store: Store, mut finished: mpsc::UnboundedReceiver<u64>) {
    while let Some(id) = finished.recv().await {
        let mut ids = vec![id];
        while let Ok(id) = finished.try_recv() {
            ids.push(id);
        }
        if let Err(e) = store.events_write(Vec::new(), ids).await {
            warn!(error = %e, "cannot delete finished function events; they may run again after a restart");
        }
    }
}
