//! The functions component's async path: events the durable tap recorded are queued per function,
//! run with retries, sent to the dead-letter topic when they fail, and deleted from the store when
//! done (the triggers are the tap's routes).

use super::*;
use crate::delivery::{Attempt, Attempts, DeadLetter, Next, Refusal};
use crate::{protocol, triggers};

impl Functions {
    /// Queues a recorded async event. A full queue sends it to the dead-letter topic.
    pub(super) fn enqueue(&self, name: &str, event: Event) {
        let queue = self.lock().get(name).map(|f| f.queue.clone());
        let Some(queue) = queue else {
            self.refuse(name, &event, Refusal::NotDeployed);
            return;
        };
        if let Err(e) = queue.try_send(event) {
            let event = match e {
                mpsc::error::TrySendError::Full(ev) | mpsc::error::TrySendError::Closed(ev) => ev,
            };
            self.refuse(name, &event, Refusal::QueueFull);
        }
    }

    /// Marks an event done: it is deleted from the store with the others finished meanwhile, by
    /// the next commit of new events or by [`forgetter`]. Nothing waits for that commit (a crash
    /// before it only means the event runs again: at least once), so a function's next event
    /// never waits for the disk.
    pub(super) fn forget(&self, id: u64) {
        self.inner.finished.add(id);
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
            // The events finished meanwhile are deleted in the same commit: at a steady rate each
            // new event would otherwise cost a second commit (and `fsync`) for its deletion.
            let forgotten = self.inner.finished.take();
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
            if let Err(e) = self.inner.store.events_write(stored, forgotten).await {
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

    /// The functions (and qualifiers) a message on `topic` is an event of (see
    /// [`triggers::targets`]); a functions topic that names no target is logged (rate-limited).
    fn targets(&self, topic: &str) -> Vec<(String, Qualifier)> {
        let found = {
            let registry = self.lock();
            let latest = registry
                .iter()
                .filter_map(|(name, f)| Some((name.as_str(), &**f.latest_manifest()?)));
            triggers::targets(topic, latest)
        };
        found.unwrap_or_else(|e| {
            if let Some(suppressed) = self.may_log_stray() {
                let e = crate::logs::cut(e.as_bytes(), MAX_LOGGED);
                warn!(suppressed, "an async event was dropped: {e}");
            }
            Vec::new()
        })
    }

    /// Makes the tap's routes the functions' triggers (plus the async event topic).
    pub(super) fn update_routes(&self) {
        let filters = {
            let registry = self.lock();
            triggers::filters(
                registry
                    .values()
                    .filter_map(|f| f.latest_manifest().map(|m| &**m)),
            )
        };
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
            let Some(first) = rx.recv().await else { break };
            // Events already waiting go with it to a worker thread, one hand-off for many (a
            // thread hand-off costs more than a trivial handler's run), shared out over the free
            // slots so that `max_concurrency` instances still run.
            let free = limit.saturating_sub(running.len()).max(1);
            let take = (rx.len() / free).min(BATCH - 1);
            let mut batch = vec![first];
            while batch.len() <= take {
                match rx.try_recv() {
                    Ok(event) => batch.push(event),
                    Err(_) => break,
                }
            }
            running.spawn(self.clone().run_batch(name.clone(), batch));
        }
        while running.join_next().await.is_some() {}
    }

    /// Runs the first attempt of each event of a batch, then the further attempts of those that
    /// failed, one event after the other.
    async fn run_batch(self, name: String, events: Vec<Event>) {
        let calls: Vec<(&Qualifier, String, Bytes, u32)> = events
            .iter()
            .map(|e| (&e.qualifier, e.topic.clone(), e.payload.clone(), e.hops))
            .collect();
        let firsts = self.invoke_batch(&name, calls).await;
        for (event, first) in events.into_iter().zip(firsts) {
            self.attempts(&name, event, Some(attempt_of(first))).await;
        }
    }

    /// Runs an event's attempts as [`Attempts`] decides (the first one's outcome given if it
    /// ran already): retries after its backoff, then the dead-letter topic.
    async fn attempts(&self, name: &str, event: Event, mut ran: Option<Attempt>) {
        let mut attempts = Attempts::default();
        loop {
            let attempt = match ran.take() {
                Some(attempt) => attempt,
                None => attempt_of(
                    self.invoke(
                        name,
                        &event.qualifier,
                        event.topic.clone(),
                        event.payload.clone(),
                        event.hops,
                    )
                    .await,
                ),
            };
            match attempts.after(attempt) {
                Next::Done => break,
                // Shutting down: the event stays stored and runs after the restart.
                Next::Keep => return,
                Next::Retry(wait) => {
                    self.inner.metrics.count(&self.inner.metrics.retries, name);
                    tokio::time::sleep(wait).await;
                }
                Next::DeadLetter(letter) => {
                    self.inner.metrics.count(&self.inner.metrics.dlq, name);
                    self.send_dead_letter(name, &event, letter);
                    break;
                }
            }
        }
        self.forget(event.id);
    }

    /// Dead-letters an event refused before any attempt, and forgets it. One for a name that is
    /// no deployed function is counted under [`UNKNOWN_FUNCTION`], since a device chooses such
    /// names.
    fn refuse(&self, name: &str, event: &Event, refusal: Refusal) {
        let label = match refusal {
            Refusal::NotDeployed => UNKNOWN_FUNCTION,
            Refusal::QueueFull => name,
        };
        self.inner.metrics.count(&self.inner.metrics.dlq, label);
        let not_found = FunctionError::NotFound(name.to_owned()).to_string();
        self.send_dead_letter(name, event, refusal.dead_letter(&not_found));
        self.forget(event.id);
    }

    /// Publishes a failed event and its error on the function's dead-letter topic (also for a
    /// function that does not exist, or no longer: an accepted event is never dropped silently).
    fn send_dead_letter(&self, name: &str, event: &Event, letter: DeadLetter) {
        if let Some(suppressed) = self.may_log(name) {
            // The topic is a device's, the error's message may be a guest's `output`.
            let topic = crate::logs::cut(event.topic.as_bytes(), MAX_LOGGED);
            let error =
                crate::logs::cut(letter.error.to_string().as_bytes(), MAX_LOGGED).into_owned();
            warn!(function = %crate::logs::cut(name.as_bytes(), MAX_LOGGED), %topic, error, suppressed, "event sent to the dead-letter topic");
        }
        let doc = protocol::dead_letter(
            name,
            letter.version,
            letter.attempts,
            &letter.error,
            (&event.topic, &event.payload),
        );
        let msg = Outgoing {
            topic: protocol::dlq_topic(name),
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

/// Most events of one function handed to a worker thread at once (each runs to its own timeout,
/// so this bounds how long a batch holds a worker).
const BATCH: usize = 16;

/// How an invocation ended, for [`Attempts`].
fn attempt_of(invoked: Result<Invoked, FunctionError>) -> Attempt {
    match invoked {
        Ok(Invoked {
            outcome: Outcome { result: Ok(_), .. },
            ..
        }) => Attempt::Succeeded,
        Ok(Invoked {
            version,
            outcome:
                Outcome {
                    result: Err(failure),
                    ..
                },
            ..
        }) => Attempt::Failed { version, failure },
        Err(FunctionError::Closed) => Attempt::Closed,
        Err(e @ FunctionError::NotFound(_)) => Attempt::NotFound {
            message: e.to_string(),
        },
        Err(e @ FunctionError::LoadFailed { version, .. }) => Attempt::LoadFailed {
            version,
            message: e.to_string(),
        },
        Err(e) => Attempt::Unroutable {
            message: e.to_string(),
        },
    }
}

/// Events done and not yet deleted from the store.
#[derive(Default)]
pub(super) struct Finished {
    ids: Mutex<Vec<u64>>,
    /// Woken when the first id of a batch arrives.
    wake: tokio::sync::Notify,
}

impl Finished {
    fn add(&self, id: u64) {
        let first = {
            let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
            ids.push(id);
            ids.len() == 1
        };
        if first {
            self.wake.notify_one();
        }
    }

    fn take(&self) -> Vec<u64> {
        std::mem::take(&mut *self.ids.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// How long a finished event may wait to be deleted with others (or with the next new events'
/// commit) before it is deleted on its own; a crash or a stop in between only re-runs it.
const FORGET_WITHIN: Duration = Duration::from_millis(50);

/// Deletes finished events that no commit of new events took within [`FORGET_WITHIN`]: every id
/// waiting goes in one commit, and what is waiting at shutdown is deleted then.
pub(super) async fn forgetter(
    store: Store,
    finished: Arc<Finished>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stopping = tokio::select! {
            _ = shutdown.changed() => true,
            _ = finished.wake.notified() => tokio::select! {
                _ = shutdown.changed() => true,
                _ = tokio::time::sleep(FORGET_WITHIN) => false,
            },
        };
        let ids = finished.take();
        if !ids.is_empty() {
            if let Err(e) = store.events_write(Vec::new(), ids).await {
                warn!(error = %e, "cannot delete finished function events; they may run again after a restart");
            }
        }
        if stopping {
            return;
        }
    }
}
