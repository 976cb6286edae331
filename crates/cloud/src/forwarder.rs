//! The cloud component: owns the outbox, feeds the link, bridges the downlink, and publishes
//! `$grove/cloud/status` (the crate doc of [`crate`] says how).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::config::{CloudConfig, Downlink};
use super::link::{Ack, Backoff, LinkEvent, Session};
use super::outbox::{Entry, PacketIds, Queue};
use super::queries::CloudQueries;
use super::quota::{Quotas, TokenBucket};
use super::{link, sync};
use crate::metrics::CloudMetrics;
use grove_broker::bus::{Bus, Message, Outgoing};
use grove_broker::namespace::UP_PREFIX;
use grove_broker::tap::{Offer, Route, Tap};
use grove_broker::BusMaker;
use grove_shadow_api::local::LocalShadows;
use grove_shadow_api::token::client_token_of;
use grove_store::{OutboxMessage, Store};

/// Grove's request topic for the cloud link's status (`grove cloud status`); answered on
/// `…/accepted`.
pub const STATUS_TOPIC: &str = "$grove/cloud/status";

/// Where a message the cloud can never accept (over its payload or topic limits) goes instead of
/// the outbox: `{"topic", "reason", "limit", "actual", "payload_base64"}`, QoS 1.
pub const DEAD_LETTER_TOPIC: &str = "$grove/cloud/dlq";

/// Acknowledged messages are deleted in one transaction per half window (`inflight / 2`), or with
/// the next append, or at the latest this long after the first of them was acknowledged: one
/// commit (and fsync) per PUBACK would cost more than the sending. A crash before the delete
/// commits means those messages are sent again, so acknowledged-but-undeleted messages count
/// against the `inflight` window: after a crash at most `inflight` messages go up twice, as after
/// a link drop.
const DELETE_LINGER: Duration = Duration::from_millis(50);

/// Offers from publishers waiting for the outbox; each publisher waits for its own, so this only
/// bounds how many are queued at once.
const TAP_QUEUE: usize = 256;

/// The smallest reconnect delay.
const BACKOFF_BASE: Duration = Duration::from_millis(200);

/// Why the cloud component could not start.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// The link cannot be configured (TLS files).
    #[error(transparent)]
    Link(#[from] link::LinkError),
    /// The outbox could not be read.
    #[error("cannot read the cloud outbox: {0}")]
    Store(#[from] grove_store::StoreError),
    /// The broker refused the component's bus link.
    #[error("cannot attach the cloud component to the broker: {0}")]
    Bus(String),
}

/// Whether the link is up, for the status answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    Connecting,
    Connected,
    Disconnected,
}

/// Starts cloud sync: the outbox owner, the link and, if configured, shadow sync. Call before the
/// broker opens its listeners, so no forwarded message is missed.
pub async fn start(
    config: &CloudConfig,
    buses: &BusMaker,
    store: Store,
    metrics: CloudMetrics,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>, CloudError> {
    let options = link::options(config)?;
    let stored = store.outbox_index().await?;
    let queue = Queue::new(config.limits, config.when_full, stored);
    if queue.depth() > 0 {
        info!(
            messages = queue.depth(),
            bytes = queue.bytes(),
            "cloud outbox restored"
        );
    }
    let (offers_tx, offers) = mpsc::channel(TAP_QUEUE);
    let mut routes: Vec<Route> = config
        .forward
        .iter()
        .map(|f| Route {
            filter: f.filter.clone(),
            strip: String::new(),
            prefix: f.prefix.clone(),
        })
        .collect();
    routes.push(Route {
        filter: format!("{UP_PREFIX}#"),
        strip: UP_PREFIX.to_owned(),
        prefix: String::new(),
    });
    let tap = Arc::new(Tap::new(routes, offers_tx));
    // This component's own publishes came from the cloud: they must not pass its tap (they do
    // pass the others: a command brought down may trigger a local function).
    let mut bus = buses
        .bus_outside("cloud", &tap)
        .await
        .map_err(|e| CloudError::Bus(e.to_string()))?;
    bus.subscribe_confirmed(&[STATUS_TOPIC.to_owned()])
        .await
        .map_err(|e| CloudError::Bus(e.to_string()))?;
    buses.add_tap(tap.clone());

    let mut subscriptions: Vec<String> = config.downlink.iter().map(|d| d.filter.clone()).collect();
    let mut tasks = Vec::new();
    let sync_tx = match &config.shadows {
        None => None,
        Some(shadows) => {
            subscriptions.extend(sync::cloud_filters(shadows));
            let (tx, rx) = mpsc::unbounded_channel();
            let sync_bus = buses
                .bus_outside("cloud-sync", &tap)
                .await
                .map_err(|e| CloudError::Bus(e.to_string()))?;
            // Sync's requests to the local shadow service bypass the cloud's tap like the rest
            // of its publishes: what sync writes locally came from the cloud.
            let requests_bus = buses
                .bus_outside("cloud-sync-requests", &tap)
                .await
                .map_err(|e| CloudError::Bus(e.to_string()))?;
            let local = LocalShadows::start(requests_bus, shutdown.clone());
            let component = sync::ShadowSync::start(
                sync_bus,
                local,
                store.clone(),
                shadows.clone(),
                metrics.clone(),
            )
            .await
            .map_err(|e| CloudError::Bus(e.to_string()))?;
            tasks.push(tokio::spawn(component.run(rx, shutdown.clone())));
            Some(tx)
        }
    };
    let (events_tx, events) = mpsc::unbounded_channel();
    tasks.push(tokio::spawn(link::run(
        options,
        subscriptions,
        config.inflight,
        Backoff::new(BACKOFF_BASE, config.max_backoff),
        events_tx,
        shutdown.clone(),
    )));
    metrics.outbox_messages.set(queue.depth() as i64);
    metrics.outbox_bytes.set(queue.bytes() as i64);
    let owner = Owner {
        bus,
        store,
        queue,
        ids: PacketIds::default(),
        session: None,
        window: config.inflight,
        downlink: config.downlink.clone(),
        metrics,
        state: LinkState::Connecting,
        last_error: None,
        retry_in: None,
        deletes: Vec::new(),
        deletes_since: None,
        backlog: None,
        sync: sync_tx,
        quotas: config.quotas,
        pacer: config
            .quotas
            .publishes_per_sec
            .map(|rate| TokenBucket::new(rate, 0.1)),
        clock: tokio::time::Instant::now(),
        paced_until: None,
        dead_letters: 0,
        last_dead_letter: None,
    };
    tasks.push(tokio::spawn(owner.run(events, offers, shutdown)));
    Ok(tasks)
}

/// Answers `grove cloud status` when `[cloud]` is not configured, so the operator learns that
/// instead of waiting for a timeout.
pub async fn serve_disabled(
    buses: &BusMaker,
    mut shutdown: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    let mut bus = buses.bus("cloud-status").await.ok()?;
    bus.subscribe_confirmed(&[STATUS_TOPIC.to_owned()])
        .await
        .ok()?;
    Some(tokio::spawn(async move {
        let mut batch = Vec::new();
        while bus.recv_until(&mut batch, &mut shutdown).await {
            let answers = batch
                .drain(..)
                .map(|m| {
                    let doc =
                        json!({"state": "disabled", "clientToken": client_token_of(&m.payload)});
                    Outgoing::new(
                        format!("{STATUS_TOPIC}/accepted"),
                        Bytes::from(doc.to_string()),
                    )
                })
                .collect();
            if bus.publish(answers).await.is_err() {
                return;
            }
        }
    }))
}

/// What the shadow sync component hears from the link.
#[derive(Debug)]
pub enum SyncInput {
    /// A session is up: cloud requests go through it.
    Up(Session),
    /// The session ended.
    Down,
    /// A shadow message from the cloud.
    Cloud {
        /// The cloud topic.
        topic: String,
        /// The payload.
        payload: Bytes,
    },
}

/// The outbox owner.
struct Owner {
    bus: Bus,
    store: Store,
    queue: Queue,
    ids: PacketIds,
    session: Option<Session>,
    window: usize,
    downlink: Vec<Downlink>,
    metrics: CloudMetrics,
    state: LinkState,
    last_error: Option<String>,
    /// The wait before the next connection attempt, after a failure.
    retry_in: Option<Duration>,
    /// Acknowledged sequence numbers whose delete is not yet committed.
    deletes: Vec<u64>,
    /// When the first of `deletes` was acknowledged.
    deletes_since: Option<tokio::time::Instant>,
    /// When the current session started with a backlog, and how big it was (for the drain log).
    backlog: Option<(Instant, usize)>,
    sync: Option<mpsc::UnboundedSender<SyncInput>>,
    /// The cloud's limits.
    quotas: Quotas,
    /// The publish rate limit, on the clock `clock` started.
    pacer: Option<TokenBucket>,
    clock: tokio::time::Instant,
    /// When the pacer allows the next publish, while messages wait for it.
    paced_until: Option<tokio::time::Instant>,
    /// Messages sent to [`DEAD_LETTER_TOPIC`], and the last one's topic and reason.
    dead_letters: u64,
    last_dead_letter: Option<(String, &'static str)>,
}

impl Owner {
    async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<LinkEvent>,
        mut offers: mpsc::Receiver<Offer>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut batch = Vec::new();
        let mut waiting = Vec::new();
        loop {
            if self.deletes.len() >= (self.window / 2).max(1) {
                self.flush_deletes().await;
            }
            self.feed().await;
            // A deadline from the first pending delete, not a timer restarted by every event: a
            // steady drain must not hold its deletes back.
            let linger = self.deletes_since;
            let paced = self.paced_until;
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep_until(paced.unwrap_or_else(tokio::time::Instant::now)), if paced.is_some() => {
                    self.paced_until = None;
                }
                _ = tokio::time::sleep_until(linger.unwrap_or_else(tokio::time::Instant::now) + DELETE_LINGER), if linger.is_some() => {
                    self.flush_deletes().await
                }
                r = self.bus.recv_batch(&mut batch) => {
                    if r.is_err() {
                        break;
                    }
                    self.on_status(&mut batch).await;
                }
                Some(offer) = offers.recv() => {
                    // Every offer already waiting shares one transaction; each publisher is
                    // answered after its commit.
                    waiting.push(offer);
                    while let Ok(offer) = offers.try_recv() {
                        waiting.push(offer);
                    }
                    self.on_offers(&mut waiting).await;
                }
                Some(ev) = events.recv() => {
                    let mut local = Vec::new();
                    let mut acks = Vec::new();
                    self.on_link(ev, &mut local, &mut acks);
                    while let Ok(ev) = events.try_recv() {
                        self.on_link(ev, &mut local, &mut acks);
                    }
                    // The cloud's messages are acknowledged once the broker has them: a gateway
                    // stopped before that gets them again from its persistent session.
                    if !local.is_empty() && self.bus.publish(local).await.is_err() {
                        break;
                    }
                    acks.into_iter().for_each(Ack::send);
                }
            }
        }
        self.flush_deletes().await;
        self.bus.close().await;
    }

    /// Hands the link what the window allows, in sequence order.
    async fn feed(&mut self) {
        let Some(session) = self.session.clone() else {
            return;
        };
        // Acknowledged messages whose delete is not committed yet would be sent again after a
        // crash, like the ones in flight: both share the window.
        while let Some((after, room)) = self
            .queue
            .next_batch(self.window.saturating_sub(self.deletes.len()))
        {
            let now = self.clock.elapsed();
            let room = match &mut self.pacer {
                None => room,
                Some(pacer) => match pacer.available(now) {
                    0 => {
                        // Over the cloud's publish rate: wake up when the next one may go.
                        self.paced_until = Some(tokio::time::Instant::now() + pacer.wait());
                        return;
                    }
                    tokens => room.min(tokens),
                },
            };
            let page = match self.store.outbox_load(after, room).await {
                Ok(p) => p,
                Err(e) => {
                    error!(error = %e, "cannot read the cloud outbox");
                    return;
                }
            };
            if page.is_empty() {
                return;
            }
            for m in page {
                if !self.queue.mark_sent(m.seq) {
                    continue;
                }
                if !session.publish_qos1(&m.topic, m.payload) {
                    // The session is ending; its Down event resets the queue for the next one.
                    self.session = None;
                    return;
                }
                self.ids.handed(m.seq);
                self.metrics.sent.inc();
                if let Some(pacer) = &mut self.pacer {
                    pacer.spend(1);
                }
            }
        }
    }

    async fn flush_deletes(&mut self) {
        self.deletes_since = None;
        if self.deletes.is_empty() {
            return;
        }
        let deletes = std::mem::take(&mut self.deletes);
        // A failed delete only means the message may be sent again after a restart.
        if let Err(e) = self.store.outbox_write(Vec::new(), deletes).await {
            warn!(error = %e, "cannot delete acknowledged messages from the cloud outbox");
        }
    }

    fn on_link(&mut self, event: LinkEvent, local: &mut Vec<Outgoing>, acks: &mut Vec<Ack>) {
        match event {
            LinkEvent::Up(session) => {
                self.metrics.connects.inc();
                self.metrics.link_up.set(1);
                self.state = LinkState::Connected;
                self.session = Some(session.clone());
                if self.queue.depth() > 0 {
                    self.backlog = Some((Instant::now(), self.queue.depth()));
                }
                if let Some(sync) = &self.sync {
                    let _ = sync.send(SyncInput::Up(session));
                }
            }
            LinkEvent::Written(pkid) => self.ids.written(pkid),
            LinkEvent::Refused(pkid, reason) => {
                // The cloud will not take it, now or on a resend: it leaves the outbox, counted.
                if self.settle(pkid).is_some() {
                    warn!(
                        reason,
                        "the cloud refused a message (MQTT 5 PUBACK reason): dropped"
                    );
                    self.metrics.drop("refused_by_cloud", 1);
                }
            }
            LinkEvent::PubAck(pkid) => {
                if let Some(entry) = self.settle(pkid) {
                    self.metrics.acked.inc();
                    let waited = now_ms().saturating_sub(entry.enqueued_ms);
                    self.metrics
                        .delivery_seconds
                        .observe(waited as f64 / 1000.0);
                }
            }
            LinkEvent::Message {
                topic,
                payload,
                ack,
            } => {
                // Every message is acknowledged after this batch's local publish, also the ones
                // dropped here (nothing more will come of them).
                acks.push(ack);
                if let Some(sync) = self
                    .sync
                    .as_ref()
                    .filter(|_| topic.starts_with("$aws/things/"))
                {
                    let _ = sync.send(SyncInput::Cloud { topic, payload });
                    return;
                }
                let Some(d) = self
                    .downlink
                    .iter()
                    .find(|d| grove_rules::topic_matches(&d.filter, &topic))
                else {
                    return;
                };
                let local_topic = topic.strip_prefix(&d.strip_prefix).unwrap_or(&topic);
                if local_topic.is_empty() {
                    warn!(
                        topic,
                        "a cloud message with nothing after the downlink prefix is dropped"
                    );
                    return;
                }
                self.metrics.downlinked.inc();
                local.push(Outgoing {
                    qos: 1,
                    ..Outgoing::new(local_topic.to_owned(), payload)
                });
            }
            LinkEvent::Down { reason, retry_in } => {
                if self.state == LinkState::Connected {
                    if let Some(sync) = &self.sync {
                        let _ = sync.send(SyncInput::Down);
                    }
                }
                self.metrics.link_up.set(0);
                self.state = LinkState::Disconnected;
                self.last_error = Some(reason);
                self.retry_in = Some(retry_in);
                self.session = None;
                self.ids.clear();
                let resent = self.queue.reset_session();
                self.metrics.resent.inc_by(resent as u64);
            }
        }
    }

    /// Answers status requests.
    async fn on_status(&mut self, batch: &mut Vec<Message>) {
        let now = now_ms();
        let answers: Vec<Outgoing> = batch
            .drain(..)
            .filter(|m| m.topic == STATUS_TOPIC)
            .map(|m| self.status(&m.payload, now))
            .collect();
        if !answers.is_empty() {
            let _ = self.bus.publish(answers).await;
        }
    }

    /// Appends what the tap took (one transaction for every waiting offer), then lets the
    /// publishers go on.
    async fn on_offers(&mut self, waiting: &mut Vec<Offer>) {
        let incoming: Vec<(String, Bytes)> = waiting
            .iter_mut()
            .flat_map(|o| std::mem::take(&mut o.messages))
            .map(|t| (t.topic, t.payload))
            .collect();
        self.append(incoming, now_ms()).await;
        for offer in waiting.drain(..) {
            let _ = offer.done.send(());
        }
    }

    async fn append(&mut self, mut incoming: Vec<(String, Bytes)>, now: u64) {
        self.dead_letters(&mut incoming).await;
        let sizes: Vec<u64> = incoming
            .iter()
            .map(|(t, p)| (t.len() + p.len()) as u64)
            .collect();
        let admission = self.queue.admit(&sizes, now);
        let mut incoming: Vec<Option<(String, Bytes)>> = incoming.into_iter().map(Some).collect();
        let append: Vec<OutboxMessage> = admission
            .accepted
            .iter()
            .filter_map(|&(i, seq)| {
                let (topic, payload) = incoming[i].take()?;
                Some(OutboxMessage {
                    seq,
                    topic,
                    payload,
                    enqueued_ms: now,
                })
            })
            .collect();
        let n = append.len() as u64;
        // Pending deletes of acknowledged messages share this commit.
        let mut delete = std::mem::take(&mut self.deletes);
        self.deletes_since = None;
        delete.extend_from_slice(&admission.dropped_oldest);
        match self.store.outbox_write(append, delete).await {
            Ok(()) => {
                self.metrics.appended.inc_by(n);
            }
            Err(e) => {
                error!(error = %e, messages = n, "cannot append to the cloud outbox: messages dropped");
                let seqs: Vec<u64> = admission.accepted.iter().map(|a| a.1).collect();
                self.queue.forget(&seqs);
                self.metrics.drop("store_failed", n);
            }
        }
        let oldest = (admission.dropped_oldest.len() + admission.dropped_unstored) as u64;
        if oldest > 0 {
            warn!(
                dropped = oldest,
                depth = self.queue.depth(),
                "cloud outbox full: dropped the oldest messages (when_full = \"drop-oldest\")"
            );
            self.metrics.drop("full_drop_oldest", oldest);
        }
        if admission.refused > 0 {
            warn!(
                refused = admission.refused,
                depth = self.queue.depth(),
                "cloud outbox full: refused new messages (when_full = \"refuse-newest\")"
            );
            self.metrics
                .drop("full_refuse_newest", admission.refused as u64);
        }
        if admission.too_large > 0 {
            warn!(
                dropped = admission.too_large,
                "messages larger than cloud.outbox.max_bytes dropped"
            );
            self.metrics.drop("too_large", admission.too_large as u64);
        }
        self.gauges();
    }

    /// Takes out of `incoming` what the cloud would refuse whatever the time (over its payload or
    /// topic limits) and publishes it on [`DEAD_LETTER_TOPIC`], counted and logged, so that it
    /// never blocks the queue behind it.
    async fn dead_letters(&mut self, incoming: &mut Vec<(String, Bytes)>) {
        use base64::Engine;
        let mut letters = Vec::new();
        incoming.retain(|(topic, payload)| {
            let Some(refusal) = self.quotas.refusal(topic, payload.len()) else {
                return true;
            };
            self.metrics.drop(refusal.reason, 1);
            self.dead_letters += 1;
            // A device sending nothing but oversized messages must not flood the log: the 1st,
            // 2nd, 4th, 8th, ... are logged, with the running count.
            if self.dead_letters.is_power_of_two() {
                warn!(
                    topic = %topic.chars().take(256).collect::<String>(),
                    reason = refusal.reason,
                    limit = refusal.limit,
                    actual = refusal.actual,
                    dead_letters = self.dead_letters,
                    "a message over the cloud's limits goes to {DEAD_LETTER_TOPIC}, not to the cloud"
                );
            }
            self.last_dead_letter = Some((topic.clone(), refusal.reason));
            let doc = json!({
                "topic": topic,
                "reason": refusal.reason,
                "limit": refusal.limit,
                "actual": refusal.actual,
                "payload_base64": base64::engine::general_purpose::STANDARD.encode(payload),
            });
            letters.push(Outgoing {
                qos: 1,
                ..Outgoing::new(DEAD_LETTER_TOPIC.to_owned(), Bytes::from(doc.to_string()))
            });
            false
        });
        if !letters.is_empty() && self.bus.publish(letters).await.is_err() {
            warn!("cannot publish the cloud's dead letters");
        }
    }

    /// The cloud answered the publish with this packet id (acknowledged or refused): its message
    /// leaves the outbox. `None` if it had already left (dropped while in flight, or a duplicate
    /// answer).
    fn settle(&mut self, pkid: u16) -> Option<Entry> {
        let seq = self.ids.acked(pkid)?;
        let entry = self.queue.acked(seq)?;
        self.deletes.push(seq);
        self.deletes_since
            .get_or_insert_with(tokio::time::Instant::now);
        self.gauges();
        if self.queue.depth() == 0 {
            self.drained();
        }
        Some(entry)
    }

    /// Logs how fast a backlog drained after a reconnect.
    fn drained(&mut self) {
        if let Some((since, messages)) = self.backlog.take() {
            let secs = since.elapsed().as_secs_f64();
            info!(
                messages,
                seconds = secs,
                per_second = (messages as f64 / secs.max(1e-6)).round(),
                "cloud outbox drained"
            );
        }
    }

    fn gauges(&self) {
        self.metrics.outbox_messages.set(self.queue.depth() as i64);
        self.metrics.outbox_bytes.set(self.queue.bytes() as i64);
    }

    fn status(&self, request: &[u8], now: u64) -> Outgoing {
        let state = match self.state {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Disconnected => "disconnected",
        };
        let doc = json!({
            "state": state,
            "queue_depth": self.queue.depth(),
            "queue_bytes": self.queue.bytes(),
            "in_flight": self.queue.inflight(),
            "oldest_age_ms": self.queue.oldest_ms().map(|t| now.saturating_sub(t)),
            "last_error": self.last_error,
            "dead_letters": self.dead_letters,
            "last_dead_letter": self.last_dead_letter.as_ref().map(|(topic, reason)| json!({"topic": topic, "reason": reason})),
            "retry_in_ms": self.retry_in.filter(|_| self.state != LinkState::Connected).map(|d| d.as_millis() as u64),
            "connects": self.metrics.connects.get(),
            "acked": self.metrics.acked.get(),
            "clientToken": client_token_of(request),
        });
        Outgoing::new(
            format!("{STATUS_TOPIC}/accepted"),
            Bytes::from(doc.to_string()),
        )
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
