//! The cloud component: owns the outbox, feeds the link, bridges the downlink, and publishes
//! `$grove/cloud/status` (the crate doc of [`crate`] says how).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::batch::{self, Batcher, Publish, Shape};
use super::config::{CloudConfig, Downlink};
use super::link::{Ack, Backoff, Extras, LinkEvent, Session, Subscriptions};
use super::outbox::{Entry, PacketIds, Queue};
use super::queries::CloudQueries;
use super::quota::{Quotas, TokenBucket};
use super::{link, sync};
use crate::metrics::CloudMetrics;
use grove_broker::bus::{Bus, Message, Outgoing};
use grove_broker::namespace::UP_PREFIX;
use grove_broker::tap::{Offer, Route, Tap, Tapped};
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

/// Acknowledged messages are deleted in one transaction per half window (the messages of
/// `inflight / 2` publishes), or with the next append, or at the latest this long after the first
/// of them was acknowledged: one commit (and fsync) per PUBACK would cost more than the sending.
/// A crash before the delete commits means those messages are sent again, so the publishes whose
/// deletes are not committed count against the `inflight` window: after a crash at most
/// `inflight` publishes go up twice (a batch is one publish), as after a link drop.
const DELETE_LINGER: Duration = Duration::from_millis(50);

/// Offers from publishers waiting for the outbox; each publisher waits for its own, so this only
/// bounds how many are queued at once.
const TAP_QUEUE: usize = 256;

/// The smallest reconnect delay (the first attempt comes after half to all of it). A second:
/// AWS IoT Core takes at most one CONNECT per second per client id ("Connect requests per second
/// per client ID", <https://docs.aws.amazon.com/general/latest/gr/iot-core.html#message-broker-limits>),
/// and issue 16 asks for a backoff from about a second up to about 30 s (`max_backoff_ms`).
const BACKOFF_BASE: Duration = Duration::from_secs(1);

/// Most bytes (topics plus payloads) read from the outbox in one page: with batches, a page holds
/// more messages than the window has publishes, and what it holds waits in memory.
const PAGE_BYTES: u64 = 1 << 20;

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
    /// The link's subscriptions are over the cloud's limits (`[cloud.quotas]`, the profile).
    #[error("{0}")]
    Subscriptions(String),
}

/// Whether the link is up, for the status answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    Connecting,
    Connected,
    Disconnected,
}

/// Another component riding on the cloud link (the binary wires them: the deployments' AWS IoT
/// Jobs client is one), so that this crate knows none of them: the cloud topics it takes, where
/// the link's events for it go, and the lines it adds to `grove cloud status`.
#[derive(Debug)]
pub struct Rider {
    /// Its name: the key of its lines in the status answer.
    pub name: String,
    /// Cloud topic filters subscribed on every connection, like the downlink's; a cloud message
    /// they match goes to this rider only (before the downlink and shadow sync see it), and is
    /// acknowledged to the cloud once handed over.
    pub filters: Vec<String>,
    /// Its events.
    pub events: mpsc::UnboundedSender<RiderEvent>,
    /// Its status lines (label, text), kept current by the rider.
    pub status: watch::Receiver<Vec<(String, String)>>,
}

/// What the link tells a [`Rider`].
#[derive(Debug)]
pub enum RiderEvent {
    /// A session is up: publish through it (QoS 0: a request whose answer is the acknowledgement,
    /// as shadow sync's; QoS 1 packet ids belong to the outbox).
    Up(Session),
    /// The session ended.
    Down,
    /// A cloud message on one of its filters.
    Message {
        /// The cloud topic.
        topic: String,
        /// The payload.
        payload: Bytes,
    },
}

/// Starts cloud sync: the outbox owner, the link and, if configured, shadow sync, with `riders` on
/// the link. Call before the broker opens its listeners, so no forwarded message is missed.
pub async fn start(
    config: &CloudConfig,
    buses: &BusMaker,
    store: Store,
    metrics: CloudMetrics,
    riders: Vec<Rider>,
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
    // Route i is forward route i; the rules' `cloud` action's route comes last.
    let mut routes: Vec<Route> = config
        .forward
        .iter()
        .map(|f| Route {
            filter: f.filter.clone(),
            strip: String::new(),
            prefix: f.prefix.clone(),
        })
        .collect();
    let route_batches: Vec<Option<String>> = config
        .forward
        .iter()
        .map(|f| f.batch.as_ref().map(|b| b.topic.clone()))
        .collect();
    let (lane_topics, lane_limits): (Vec<String>, Vec<batch::Limits>) = config
        .forward
        .iter()
        .filter_map(|f| f.batch.as_ref())
        .map(|b| (b.topic.clone(), b.limits))
        .unzip();
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

    // One list that every component adds its filters to; the link makes them all at each
    // connect, within the cloud's limits.
    let mut subscriptions = Subscriptions {
        filters: config.downlink.iter().map(|d| d.filter.clone()).collect(),
        per_packet: config.quotas.filters_per_subscribe,
    };
    subscriptions
        .filters
        .extend(riders.iter().flat_map(|r| r.filters.iter().cloned()));
    if let Some(shadows) = &config.shadows {
        subscriptions.filters.extend(sync::cloud_filters(shadows));
    }
    config
        .quotas
        .check_subscriptions(&subscriptions.filters)
        .map_err(CloudError::Subscriptions)?;
    let mut tasks = Vec::new();
    let sync_tx = match &config.shadows {
        None => None,
        Some(shadows) => {
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
        carries_properties: config.protocol == super::config::Protocol::V5,
        route_batches,
        lane_topics,
        batcher: Batcher::new(&lane_limits),
        loaded: HashMap::new(),
        batch_due: None,
        riders,
        metrics,
        state: LinkState::Connecting,
        last_error: None,
        retry_in: None,
        deletes: Vec::new(),
        deleted_publishes: 0,
        deletes_since: None,
        backlog: None,
        sync: sync_tx,
        quotas: config.quotas,
        pacer: config
            .quotas
            .publishes_per_sec
            .map(|rate| TokenBucket::new(rate, 0.1)),
        byte_pacer: config
            .quotas
            .bytes_per_sec
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
    /// A session is up: cloud requests go through it. `resumed`: the cloud kept the session
    /// (see [`LinkEvent::Up`]).
    Up {
        /// The session's publishing handle.
        session: Session,
        /// Whether the cloud resumed the session it kept.
        resumed: bool,
    },
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
    /// Whether the link carries MQTT 5 user properties (a message with some goes up alone).
    carries_properties: bool,
    /// Per tap route (forward routes, then the rules' `cloud` action): its batch topic, if it
    /// batches.
    route_batches: Vec<Option<String>>,
    /// Per batching lane: its batch topic (a stored message names its lane by it).
    lane_topics: Vec<String>,
    batcher: Batcher,
    /// Claimed messages not yet handed to the link, by sequence number, with their batch
    /// element when they go in one.
    loaded: HashMap<u64, Loaded>,
    /// When the next open batch is due (ms since the epoch).
    batch_due: Option<u64>,
    /// The components that ride on the link (deployments' AWS IoT Jobs client).
    riders: Vec<Rider>,
    metrics: CloudMetrics,
    state: LinkState,
    last_error: Option<String>,
    /// The wait before the next connection attempt, after a failure.
    retry_in: Option<Duration>,
    /// Acknowledged sequence numbers whose delete is not yet committed.
    deletes: Vec<u64>,
    /// The publishes that carried them (what counts against the window).
    deleted_publishes: usize,
    /// When the first of `deletes` was acknowledged.
    deletes_since: Option<tokio::time::Instant>,
    /// When the current session started with a backlog, and how big it was (for the drain log).
    backlog: Option<(Instant, usize)>,
    sync: Option<mpsc::UnboundedSender<SyncInput>>,
    /// The cloud's limits.
    quotas: Quotas,
    /// The publish rate limit, on the clock `clock` started.
    pacer: Option<TokenBucket>,
    /// The byte rate limit (topics plus payloads), on the same clock. A publish goes when a
    /// token is left and spends its size, into debt if it is bigger than the bucket: the rate
    /// holds on average, and a batch larger than a tenth of a second's bytes still goes.
    byte_pacer: Option<TokenBucket>,
    clock: tokio::time::Instant,
    /// When the pacer allows the next publish, while messages wait for it.
    paced_until: Option<tokio::time::Instant>,
    /// Messages sent to [`DEAD_LETTER_TOPIC`], and the last one's topic and reason.
    dead_letters: u64,
    last_dead_letter: Option<(String, &'static str)>,
}

/// A message read from the outbox for sending.
struct Loaded {
    message: OutboxMessage,
    /// Its element of its lane's array, when it goes in one.
    element: Option<Vec<u8>>,
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
            if self.deleted_publishes >= (self.window / 2).max(1) {
                self.flush_deletes().await;
            }
            self.feed().await;
            // A deadline from the first pending delete, not a timer restarted by every event: a
            // steady drain must not hold its deletes back.
            let linger = self.deletes_since;
            let paced = self.paced_until;
            // The next batch's deadline, on the wall clock its messages' append times are on.
            let batch_due = self.batch_due.map(|due| {
                tokio::time::Instant::now() + Duration::from_millis(due.saturating_sub(now_ms()))
            });
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep_until(paced.unwrap_or_else(tokio::time::Instant::now)), if paced.is_some() => {
                    self.paced_until = None;
                }
                _ = tokio::time::sleep_until(batch_due.unwrap_or_else(tokio::time::Instant::now)), if batch_due.is_some() => {
                    self.batch_due = None;
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

    /// Publishes what may go (within the window and the pace), reading more of the outbox while
    /// there is room: each route's messages in sequence order, a batching route's in arrays.
    async fn feed(&mut self) {
        loop {
            let Some(session) = self.session.clone() else {
                return;
            };
            while self.room() > 0 {
                if !self.pace() {
                    return;
                }
                let more_to_read = self.queue.has_unclaimed();
                let Some(publish) = self.batcher.poll_publish(now_ms(), more_to_read) else {
                    break;
                };
                if !self.publish(&session, publish) {
                    // The session is ending; its Down event resets the queue for the next one.
                    self.session = None;
                    return;
                }
            }
            // Wake up when the next open batch is due. One already due waits for what holds it
            // back (a full window, the pace, a failed read), each with a wake-up of its own: a
            // timer in the past would spin.
            self.batch_due = self.batcher.poll_timeout().filter(|due| *due > now_ms());
            if self.room() == 0 {
                return;
            }
            // Nothing ready and room in the window: read the next page. A batch takes up to
            // `max_messages` messages for one place in the window, so a page may hold more
            // messages than places; its bytes bound what waits in memory.
            let most = self.room().saturating_mul(self.batcher.max_messages());
            let Some((after, count)) = self.queue.next_load(most, PAGE_BYTES) else {
                return;
            };
            let page = match self.store.outbox_load(after, count).await {
                Ok(p) => p,
                Err(e) => {
                    error!(error = %e, "cannot read the cloud outbox");
                    return;
                }
            };
            if page.is_empty() {
                return;
            }
            for message in page {
                if self.queue.claim(message.seq) {
                    self.take(message);
                }
            }
        }
    }

    /// Whether the cloud's publish and byte rates allow a publish now; if not, when they will.
    fn pace(&mut self) -> bool {
        let now = self.clock.elapsed();
        let wait = [&mut self.pacer, &mut self.byte_pacer]
            .into_iter()
            .flatten()
            .filter_map(|bucket| (bucket.available(now) == 0).then(|| bucket.wait()))
            .max();
        match wait {
            None => true,
            Some(wait) => {
                self.paced_until = Some(tokio::time::Instant::now() + wait);
                false
            }
        }
    }

    /// Places left in the window. Acknowledged publishes whose delete is not committed yet
    /// would be sent again after a crash, like the ones in flight: both take places.
    fn room(&self) -> usize {
        self.window
            .saturating_sub(self.ids.in_flight() + self.deleted_publishes)
    }

    /// A claimed message joins its lane's batch, or waits to go as itself.
    fn take(&mut self, message: OutboxMessage) {
        let lane = message
            .batch
            .as_ref()
            .and_then(|topic| self.lane_topics.iter().position(|t| t == topic));
        let alone =
            message.retain || (self.carries_properties && !message.user_properties.is_empty());
        let element = (lane.is_some() && !alone)
            .then(|| batch::element(&message.topic, &message.payload, message.enqueued_ms));
        let shape = match &element {
            Some(e) => Shape::Element(e.len()),
            None => Shape::Alone,
        };
        self.batcher
            .push(lane, message.seq, shape, message.enqueued_ms);
        self.loaded.insert(message.seq, Loaded { message, element });
    }

    /// Hands one publish to the session; false if the session is gone. Messages that left the
    /// outbox since they were claimed (the full policy) are left out; nothing left, nothing sent.
    fn publish(&mut self, session: &Session, publish: Publish) -> bool {
        let (lane, seqs) = match publish {
            Publish::Single(seq) => (None, vec![seq]),
            Publish::Batch { lane, seqs } => (Some(lane), seqs),
        };
        let taken: Vec<Loaded> = seqs
            .iter()
            .filter_map(|seq| self.loaded.remove(seq))
            .filter(|l| self.queue.sent(l.message.seq))
            .collect();
        let Some(first) = taken.first() else {
            return true;
        };
        let (handed, size) = match lane {
            None => {
                let m = &first.message;
                let extras = Extras {
                    retain: m.retain,
                    user_properties: &m.user_properties,
                };
                let size = m.topic.len() + m.payload.len();
                (
                    session.publish_qos1(&m.topic, m.payload.clone(), extras),
                    size,
                )
            }
            Some(lane) => {
                let array = batch::array(taken.iter().filter_map(|l| l.element.as_deref()));
                self.metrics.batches.inc();
                self.metrics.batched.inc_by(taken.len() as u64);
                let topic = &self.lane_topics[lane];
                let size = topic.len() + array.len();
                let handed = session.publish_qos1(topic, Bytes::from(array), Extras::default());
                (handed, size)
            }
        };
        if !handed {
            return false;
        }
        if let Some(bytes) = &mut self.byte_pacer {
            bytes.spend(size);
        }
        self.ids
            .handed(taken.iter().map(|l| l.message.seq).collect());
        self.metrics.sent.inc();
        if let Some(pacer) = &mut self.pacer {
            pacer.spend(1);
        }
        true
    }

    async fn flush_deletes(&mut self) {
        self.deletes_since = None;
        if self.deletes.is_empty() {
            return;
        }
        let deletes = std::mem::take(&mut self.deletes);
        self.deleted_publishes = 0;
        // A failed delete only means the message may be sent again after a restart.
        if let Err(e) = self.store.outbox_write(Vec::new(), deletes).await {
            warn!(error = %e, "cannot delete acknowledged messages from the cloud outbox");
        }
    }

    fn on_link(&mut self, event: LinkEvent, local: &mut Vec<Outgoing>, acks: &mut Vec<Ack>) {
        match event {
            LinkEvent::Up { session, resumed } => {
                self.metrics.connects.inc();
                self.metrics.link_up.set(1);
                self.state = LinkState::Connected;
                self.session = Some(session.clone());
                if self.queue.depth() > 0 {
                    self.backlog = Some((Instant::now(), self.queue.depth()));
                }
                for rider in &self.riders {
                    let _ = rider.events.send(RiderEvent::Up(session.clone()));
                }
                if let Some(sync) = &self.sync {
                    let _ = sync.send(SyncInput::Up { session, resumed });
                }
            }
            LinkEvent::Written(pkid) => self.ids.written(pkid),
            LinkEvent::Refused(pkid, reason) => {
                // The cloud will not take it, now or on a resend: it leaves the outbox, counted.
                let refused = self.settle(pkid).len() as u64;
                if refused > 0 {
                    warn!(
                        reason,
                        messages = refused,
                        "the cloud refused a publish (MQTT 5 PUBACK reason): dropped"
                    );
                    self.metrics.drop("refused_by_cloud", refused);
                }
            }
            LinkEvent::PubAck(pkid) => {
                let now = now_ms();
                for entry in self.settle(pkid) {
                    self.metrics.acked.inc();
                    let waited = now.saturating_sub(entry.enqueued_ms);
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
                if let Some(rider) = self.riders.iter().find(|r| {
                    r.filters
                        .iter()
                        .any(|f| grove_rules::topic_matches(f, &topic))
                }) {
                    let _ = rider.events.send(RiderEvent::Message { topic, payload });
                    return;
                }
                if let Some(sync) = self.sync.as_ref().filter(|_| sync::is_shadow_topic(&topic)) {
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
                    for rider in &self.riders {
                        let _ = rider.events.send(RiderEvent::Down);
                    }
                }
                self.metrics.link_up.set(0);
                self.state = LinkState::Disconnected;
                self.last_error = Some(reason);
                self.retry_in = Some(retry_in);
                self.session = None;
                self.ids.clear();
                self.batcher.clear();
                self.loaded.clear();
                self.batch_due = None;
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
        let incoming: Vec<Tapped> = waiting
            .iter_mut()
            .flat_map(|o| std::mem::take(&mut o.messages))
            .collect();
        self.append(incoming, now_ms()).await;
        for offer in waiting.drain(..) {
            let _ = offer.done.send(());
        }
    }

    async fn append(&mut self, mut incoming: Vec<Tapped>, now: u64) {
        self.dead_letters(&mut incoming).await;
        let sizes: Vec<u64> = incoming
            .iter()
            .map(|t| (t.topic.len() + t.payload.len()) as u64)
            .collect();
        let admission = self.queue.admit(&sizes, now);
        let mut incoming: Vec<Option<Tapped>> = incoming.into_iter().map(Some).collect();
        let append: Vec<OutboxMessage> = admission
            .accepted
            .iter()
            .filter_map(|&(i, seq)| {
                let t = incoming[i].take()?;
                Some(OutboxMessage {
                    seq,
                    batch: self.route_batches.get(t.route).cloned().flatten(),
                    topic: t.topic,
                    payload: t.payload,
                    enqueued_ms: now,
                    retain: t.retain,
                    user_properties: t.user_properties,
                })
            })
            .collect();
        let n = append.len() as u64;
        // Pending deletes of acknowledged messages share this commit.
        let mut delete = std::mem::take(&mut self.deletes);
        self.deleted_publishes = 0;
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
    async fn dead_letters(&mut self, incoming: &mut Vec<Tapped>) {
        use base64::Engine;
        let mut letters = Vec::new();
        incoming.retain(|Tapped { topic, payload, .. }| {
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

    /// The cloud answered the publish with this packet id (acknowledged or refused): its
    /// messages leave the outbox. Returns those that were still there (none for a duplicate
    /// answer; messages dropped while in flight are not among them).
    fn settle(&mut self, pkid: u16) -> Vec<Entry> {
        let Some(seqs) = self.ids.acked(pkid) else {
            return Vec::new();
        };
        let entries: Vec<Entry> = seqs.iter().filter_map(|s| self.queue.acked(*s)).collect();
        if !entries.is_empty() {
            self.deletes.extend(entries.iter().map(|e| e.seq));
            self.deleted_publishes += 1;
        }
        self.deletes_since
            .get_or_insert_with(tokio::time::Instant::now);
        self.gauges();
        if self.queue.depth() == 0 {
            self.drained();
        }
        entries
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
            "riders": self
                .riders
                .iter()
                .map(|r| (r.name.clone(), json!(*r.status.borrow())))
                .collect::<serde_json::Map<_, _>>(),
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
