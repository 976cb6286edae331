//! The broker itself: the router thread, the listeners, retained persistence and restore, wills
//! (with MQTT 5 will delay), devices-file revocations, and the [`Bus`] factory for components.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{
    Disconnect, DisconnectReasonCode, LastWill, LastWillProperties, Packet, Publish,
    PublishProperties, QoS,
};
use rumqttd::{Notification, Router, RouterConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

use super::admission::PreAuth;
use super::connect::{ConnectRules, LoginRule};
use super::queries::RetainedQueries;
use super::{connection, namespace};
use crate::bus::Bus;
use crate::config::{AuthMode, BrokerConfig};
use crate::metrics::BrokerMetrics;
use crate::tap::{Tap, TapClosed};
use grove_auth::identity::{Device, Identities};
use grove_auth::tls;
use grove_config::ConfigError;
use grove_store::{RetainedMessage, Store, StoreError};

/// Router client ids of the gateway's own links start with `%g`, which the percent-encoding of
/// device ids ([`namespace::client_id_to_router`]) never produces, so no device can take them over.
///
/// Links the gateway itself holds open to the router (system link, restore, components); reserved
/// on top of `max_connections` so devices cannot starve the gateway of links.
pub(super) const INTERNAL_LINKS: usize = 64;

/// The MQTT 5 user property in which the connection layer records, inside the router, which client
/// published a message on `$aws/things/...`: the shadow service needs it (AWS's per-connection
/// in-flight limit), and rumqttd's router does not say who published what. It is removed from
/// every message before it leaves for a client, and a client cannot set it.
pub(crate) const ORIGIN_PROPERTY: &str = "$grove-origin";

/// The MQTT 5 user property counting rule republishes, so that a rule feeding itself is cut off.
pub(crate) const HOPS_PROPERTY: &str = "$grove-hops";

/// Prefix of every user property that is Grove's own: removed from what devices send and receive.
pub(crate) const GROVE_PROPERTY_PREFIX: &str = "$grove-";

/// The publishing client recorded by the connection layer, if any.
pub(crate) fn origin_client_id(properties: Option<&PublishProperties>) -> Option<String> {
    properties?
        .user_properties
        .iter()
        .find(|(k, _)| k == ORIGIN_PROPERTY)
        .map(|(_, v)| v.clone())
}

/// Polls a link once without waiting: `None` when nothing is ready. Lets a reader take every
/// notification already queued in one go and write them out together.
pub(crate) fn poll_now(rx: &mut LinkRx) -> Option<Result<Option<Notification>, LinkError>> {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let mut next = std::pin::pin!(rx.next());
    match next.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => Some(r),
        Poll::Pending => None,
    }
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A listener could not bind; the message names the configuration key.
    #[error(transparent)]
    Listen(#[from] ConfigError),
    /// The store refused to give back the retained messages.
    #[error("cannot restore retained messages: {0}")]
    Restore(#[from] StoreError),
    /// The router refused a link.
    #[error("the MQTT router refused a link: {0}")]
    Link(String),
}

/// A started broker; dropping it does not stop it, [`Broker::shutdown`] does.
pub struct Broker {
    pub(super) shared: Arc<Shared>,
    pub(super) shutdown: watch::Sender<bool>,
    pub(super) tasks: JoinSet<()>,
}

/// A listener as its connections see it.
pub(crate) struct Listener {
    /// Its configured name, for logs.
    pub(crate) name: String,
    /// How its devices authenticate.
    pub(crate) auth: AuthMode,
    /// The policy its devices get unless their identity names another.
    pub(crate) policy: String,
    /// What its CONNECTs must be like before authentication.
    pub(crate) connect_rules: ConnectRules,
    /// Its connections that have not authenticated yet.
    pub(super) pre_auth: Arc<PreAuth>,
}

/// State shared by every connection task.
pub(crate) struct Shared {
    pub(super) config: BrokerConfig,
    pub(super) router: RouterHandle,
    pub(super) store: Store,
    pub(super) metrics: BrokerMetrics,
    /// Authenticated connections now (see `connection::ConnectionSlot`), at most
    /// `max_connections`.
    pub(super) connected: AtomicUsize,
    pub(super) shutdown: watch::Receiver<bool>,
    /// The gateway's own link, used to publish delayed wills after their client is gone.
    pub(super) system: tokio::sync::Mutex<LinkTx>,
    /// Registered device identities (passwords, certificates).
    pub(super) identities: Identities,
    /// Whether the connection layer records every publisher's client id (rules need it for
    /// `clientid()`); otherwise only on `$aws/things/...`.
    pub(crate) record_origin: std::sync::atomic::AtomicBool,
    /// Set by the router (Grove's patch 4 of rumqttd) while a live subscriber (a device or one of
    /// the gateway's components) lags far enough behind to be overrun soon: publishing
    /// connections stop reading until it clears (flow control, as mosquitto paces its
    /// publishers). A subscriber that stopped reading altogether (2 s without progress) no longer
    /// counts, so it cannot stop everyone else.
    pub(crate) pressure: Arc<std::sync::atomic::AtomicBool>,
    /// The durable taps (cloud outbox, functions' events): see `crate::tap`.
    pub(super) taps: std::sync::RwLock<Vec<Arc<Tap>>>,
    /// Client ids whose delayed will is pending, with the ticket its timer holds; a reconnect
    /// removes the entry, which cancels the will.
    pub(super) pending_wills: Mutex<HashMap<String, u64>>,
    /// The connections of proved devices, so that a revocation can wait for their end.
    pub(crate) live_devices: LiveDevices,
}

/// The connections of proved (registered) devices now open, by connection number.
#[derive(Default)]
pub(crate) struct LiveDevices {
    pub(super) open: Mutex<HashMap<u64, Device>>,
    /// Bumped whenever one of them has ended.
    pub(super) ended: watch::Sender<u64>,
}

impl LiveDevices {
    pub(crate) fn register(&self, connection: u64, device: Device) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(connection, device);
    }

    pub(crate) fn remove(&self, connection: u64) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&connection);
        self.ended.send_modify(|n| *n += 1);
    }

    /// How many open connections are of devices no longer registered as they connected.
    pub(super) fn revoked(&self, identities: &Identities) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.values()
            .filter(|d| identities.device(&d.id).as_ref() != Some(*d))
            .count()
    }
}

/// Applies a change of the devices file at once, for `grove device remove` (through the ops
/// endpoint), instead of at the next poll.
#[derive(Clone)]
pub struct Revocations {
    pub(super) shared: Arc<Shared>,
}

impl Revocations {
    /// Re-reads the devices file and waits until no connection of a device it no longer lists
    /// as it was is left: from then on nothing of those devices is accepted, and their wills
    /// are not published. Returns how many connections ended, or how many are still open after
    /// `timeout`.
    pub async fn apply(&self, timeout: Duration) -> Result<usize, usize> {
        let live = &self.shared.live_devices;
        let mut ended = live.ended.subscribe();
        self.shared.identities.refresh();
        let revoked = live.revoked(&self.shared.identities);
        let wait = async {
            while live.revoked(&self.shared.identities) > 0 {
                if ended.changed().await.is_err() {
                    break;
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(()) => Ok(revoked),
            Err(_) => Err(live.revoked(&self.shared.identities)),
        }
    }
}

/// How often the devices file is checked for changes, so that a removed device's live
/// connections end within about this long (a CONNECT checks it at once anyway).
pub(super) const IDENTITY_POLL: Duration = Duration::from_secs(1);

/// Re-reads the devices file when it changes until shutdown; connections of devices that were
/// removed then end (see the connection layer).
pub(super) async fn watch_identities(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut tick = tokio::time::interval(IDENTITY_POLL);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => shared.identities.refresh(),
        }
    }
}

/// The router's entry point, with rumqttd's channel type kept out of sight: it is not nameable
/// outside rumqttd, so the sender lives inside this closure.
pub(super) type LinkFn =
    dyn Fn(&str, bool, u16) -> Result<(LinkTx, LinkRx, Notification), String> + Send + Sync;

/// Creates links to the router.
#[derive(Clone)]
pub(crate) struct RouterHandle {
    pub(super) link: Arc<LinkFn>,
}

impl RouterHandle {
    /// Registers a new connection with the router. rumqttd's `LinkBuilder::build` blocks until the
    /// router answers, so it runs on the blocking pool.
    pub(crate) async fn link(
        &self,
        client_id: String,
        clean_session: bool,
        topic_alias_max: u16,
    ) -> Result<(LinkTx, LinkRx, Notification), String> {
        let link = self.link.clone();
        tokio::task::spawn_blocking(move || link(&client_id, clean_session, topic_alias_max))
            .await
            .map_err(|e| e.to_string())?
    }

    /// Hands a batch of packets to the router and wakes it once.
    ///
    /// rumqttd's `LinkTx::send` is `async` in name only: it pushes and then does a blocking send of
    /// one wake-up on the router's bounded channel (1,000 slots). It blocks only when the router is
    /// 1,000 events behind, which is the backpressure we want; the router never waits on a
    /// connection, so this cannot deadlock.
    pub(crate) async fn relay(
        &self,
        tx: &mut LinkTx,
        mut batch: Vec<Packet>,
    ) -> Result<(), LinkError> {
        let Some(last) = batch.pop() else {
            return Ok(());
        };
        tx.buffer().extend(batch);
        tx.send(last).await.map(|_| ())
    }
}

impl Broker {
    /// Starts the router and restores retained messages from the store. Devices are accepted only
    /// once [`Broker::listen`] is called, so a subscriber never sees the broker without them.
    pub async fn start(
        config: BrokerConfig,
        store: Store,
        identities: Identities,
        metrics: BrokerMetrics,
    ) -> Result<Broker, BrokerError> {
        let router = Router::new(
            0,
            RouterConfig {
                max_connections: config.max_connections + INTERNAL_LINKS,
                max_outgoing_packet_count: config.max_outgoing_batch,
                max_segment_size: config.segment_size,
                max_segment_count: config.segment_count,
                ..RouterConfig::default()
            },
        );
        let pressure = router.pressure();
        let router_tx = router.spawn();
        let router = RouterHandle {
            link: Arc::new(move |client_id, clean, alias_max| {
                LinkBuilder::new(client_id, router_tx.clone())
                    .clean_session(clean)
                    .topic_alias_max(alias_max)
                    .build()
                    // rumqttd's error is large and only ever reported, so it travels as text.
                    .map_err(|e| e.to_string())
            }),
        };
        let (system_tx, system_rx, _) = router
            .link("%grove-system".to_owned(), true, 0)
            .await
            .map_err(BrokerError::Link)?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            config,
            router,
            store,
            metrics,
            connected: AtomicUsize::new(0),
            shutdown: shutdown_rx,
            system: tokio::sync::Mutex::new(system_tx),
            pending_wills: Mutex::new(HashMap::new()),
            live_devices: LiveDevices::default(),
            identities,
            record_origin: std::sync::atomic::AtomicBool::new(false),
            pressure,
            taps: std::sync::RwLock::new(Vec::new()),
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(drain(system_rx, shared.shutdown.clone()));
        tasks.spawn(watch_identities(shared.clone()));
        shared.restore_retained().await?;
        Ok(Broker {
            shared,
            shutdown,
            tasks,
        })
    }

    /// Binds every listener and starts accepting devices. Components take their [`Broker::bus`]
    /// links before this, so no device message can arrive before they listen.
    pub async fn listen(&mut self) -> Result<(), BrokerError> {
        let mut listeners = Vec::new();
        for l in &self.shared.config.listeners {
            let tls = match &l.tls {
                None => None,
                Some(files) => {
                    let t = &files.value;
                    let config = tls::server_config(&t.cert, &t.key, t.client_ca.as_deref())
                        .map_err(|e| ConfigError::Invalid {
                            origin: files.origin.clone(),
                            message: e.to_string(),
                        })?;
                    Some(TlsAcceptor::from(config))
                }
            };
            let listener =
                TcpListener::bind(l.bind.value)
                    .await
                    .map_err(|e| ConfigError::Invalid {
                        origin: l.bind.origin.clone(),
                        message: format!("cannot listen on {}: {e}", l.bind.value),
                    })?;
            let addr = listener.local_addr().unwrap_or(l.bind.value);
            if l.auth == AuthMode::Anonymous && !addr.ip().is_loopback() {
                warn!(listener = l.name, %addr, "anonymous access from the network, as configured");
            }
            if l.auth == AuthMode::Password && tls.is_none() && !addr.ip().is_loopback() {
                warn!(
                    listener = l.name,
                    %addr,
                    "passwords from the network without TLS cross it in the clear; give this listener `tls`"
                );
            }
            info!(
                listener = l.name,
                %addr,
                tls = tls.is_some(),
                auth = ?l.auth,
                policy = l.policy,
                "MQTT listener ready (MQTT 3.1.1 and 5)"
            );
            let config = &self.shared.config;
            let ctx = Arc::new(Listener {
                name: l.name.clone(),
                auth: l.auth,
                policy: l.policy.clone(),
                connect_rules: ConnectRules {
                    max_size: config.max_connect_size,
                    login: match l.auth {
                        AuthMode::Password => LoginRule::UsernameIsClientId,
                        AuthMode::Anonymous | AuthMode::Certificate => LoginRule::Ignored,
                    },
                },
                pre_auth: Arc::new(PreAuth::new(
                    config.max_pending_connections,
                    config.max_pending_per_address,
                    self.shared.metrics.pending_connections.clone(),
                )),
            });
            listeners.push((ctx, listener, tls));
        }
        for (ctx, listener, tls) in listeners {
            self.tasks
                .spawn(accept_loop(ctx, listener, tls, self.shared.clone()));
        }
        Ok(())
    }

    /// An in-process client of the broker for one of the gateway's components.
    pub async fn bus(&self, component: &str) -> Result<Bus, BrokerError> {
        self.bus_maker().bus(component).await
    }

    /// A handle that creates bus links later (for components that re-create theirs on reload).
    pub fn bus_maker(&self) -> BusMaker {
        BusMaker {
            shared: self.shared.clone(),
        }
    }

    /// The handle `grove device remove` reaches through the ops endpoint.
    pub fn revocations(&self) -> Revocations {
        Revocations {
            shared: self.shared.clone(),
        }
    }

    /// A receiver that turns true when the broker shuts down, for components to stop with it.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shared.shutdown.clone()
    }

    /// Stops accepting, closes every connection and waits for the connection tasks.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        // Connection tasks are detached from the accept loops; give them a moment to say goodbye.
        let wait = async {
            while self.tasks.join_next().await.is_some() {}
            while self.shared.connected.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        if tokio::time::timeout(Duration::from_millis(500), wait)
            .await
            .is_err()
        {
            warn!("some connections did not close within 500 ms");
        }
    }
}

/// Creates bus links; cheap to clone.
#[derive(Clone)]
pub struct BusMaker {
    pub(super) shared: Arc<Shared>,
}

impl BusMaker {
    /// A new link named after `component`; what it publishes passes the durable taps.
    pub async fn bus(&self, component: &str) -> Result<Bus, BrokerError> {
        self.make_bus(component, None).await
    }

    /// A link whose publishes bypass `tap` (and only that one): for a tap's owner, whose own
    /// messages must not come back to it (what came down from the cloud never goes back up).
    pub async fn bus_outside(&self, component: &str, tap: &Arc<Tap>) -> Result<Bus, BrokerError> {
        self.make_bus(component, Some(tap.clone())).await
    }

    pub(super) async fn make_bus(
        &self,
        component: &str,
        skip: Option<Arc<Tap>>,
    ) -> Result<Bus, BrokerError> {
        let (tx, rx, _) = self
            .shared
            .router
            .link(format!("%g{component}"), true, 0)
            .await
            .map_err(BrokerError::Link)?;
        Ok(Bus::new(
            tx,
            rx,
            self.shared.router.clone(),
            self.shared.clone(),
            skip,
        ))
    }

    /// Makes the connection layer record every publisher's client id, for rules' `clientid()`.
    pub fn record_origins(&self, on: bool) {
        self.shared.record_origin.store(on, Ordering::Relaxed);
    }

    /// Installs a durable tap (before the listeners open): from now on every publish whose
    /// topic it takes is committed by its owner before the router sees it.
    pub fn add_tap(&self, tap: Arc<Tap>) {
        self.shared
            .taps
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(tap);
    }
}

pub(super) async fn accept_loop(
    listener: Arc<Listener>,
    socket: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        // A listener holding `max_pending_connections` unauthenticated connections accepts no
        // more until one is done: new peers wait in the kernel's backlog.
        let place = tokio::select! {
            _ = shutdown.changed() => return,
            place = listener.pre_auth.place() => place,
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            accepted = socket.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Before the TLS handshake, which costs as much as anything after it; an
                    // address over its share is closed at once (there is no CONNACK before a
                    // CONNECT).
                    let Ok(ticket) = listener.pre_auth.admit(place, peer.ip()) else {
                        shared.metrics.refuse("pending_limit");
                        debug!(%peer, listener = listener.name, "broker.max_pending_per_address reached; closed");
                        continue;
                    };
                    // Small packets must not wait for Nagle's algorithm: latency is the point.
                    let _ = stream.set_nodelay(true);
                    let (listener, shared) = (listener.clone(), shared.clone());
                    match &tls {
                        None => {
                            tokio::spawn(connection::serve(stream, peer, None, listener, shared, ticket));
                        }
                        Some(acceptor) => {
                            let acceptor = acceptor.clone();
                            tokio::spawn(async move {
                                let timeout = Duration::from_millis(shared.config.connect_timeout_ms);
                                match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                                    Ok(Ok(tls)) => {
                                        let cert = tls
                                            .get_ref()
                                            .1
                                            .peer_certificates()
                                            .and_then(|c| c.first())
                                            .map(|c| c.to_vec());
                                        connection::serve(tls, peer, cert, listener, shared, ticket).await;
                                    }
                                    Ok(Err(e)) => {
                                        shared.metrics.refuse("tls_handshake");
                                        warn!(%peer, listener = listener.name, error = %e, "TLS handshake failed");
                                    }
                                    Err(_) => {
                                        shared.metrics.refuse("tls_handshake");
                                        debug!(%peer, "TLS handshake timed out");
                                    }
                                }
                            });
                        }
                    }
                }
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    error!(listener = listener.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Reads and discards what the router sends a publish-only link (PUBACKs of its QoS 1 messages),
/// so its buffer never fills.
pub(super) async fn drain(mut rx: LinkRx, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            n = rx.next() => match n {
                Ok(Some(Notification::Unschedule)) => { let _ = rx.wake().await; }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }
}

impl Shared {
    /// Writes a retained message (or its deletion) to the store before the router sees it.
    ///
    /// rumqttd drops a topic's retained message on *any* empty payload, retain flag or not
    /// (`append_to_commitlog`); the store mirrors that so that a restart restores exactly what the
    /// router held.
    pub(crate) async fn persist_retained(&self, publish: &Publish) -> Result<(), StoreError> {
        if !publish.retain && !publish.payload.is_empty() {
            return Ok(());
        }
        let Ok(topic) = std::str::from_utf8(&publish.topic) else {
            return Ok(());
        };
        if topic.is_empty() {
            // An MQTT 5 topic alias: the router resolves it; Grove does not track aliases, so such
            // a retained message lives only in memory. Documented in ARCHITECTURE.md.
            return Ok(());
        }
        self.store
            .retain(RetainedMessage {
                topic: topic.to_owned(),
                payload: publish.payload.clone(),
                qos: publish_qos(publish),
            })
            .await
    }

    /// Publishes every stored retained message into the router, before any listener opens.
    pub(super) async fn restore_retained(&self) -> Result<(), BrokerError> {
        let retained = self.store.load_retained().await?;
        if retained.is_empty() {
            return Ok(());
        }
        let (mut tx, _rx, _) = self
            .router
            .link("%grove-restore".to_owned(), true, 0)
            .await
            .map_err(BrokerError::Link)?;
        let count = retained.len();
        let mut batch: Vec<Packet> = retained
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                // Packet ids only need to be unique among this link's unacknowledged messages.
                let pkid = (i % usize::from(u16::MAX)) as u16 + 1;
                let mut publish = make_publish(&m.topic, m.payload, m.qos, true, pkid);
                publish.topic = namespace::topic_to_router(&publish.topic);
                Packet::Publish(publish, None)
            })
            .collect();
        // The router handles a link's packets in order, so the DISCONNECT that frees this
        // short-lived link comes after every message has been retained.
        batch.push(Packet::Disconnect(
            Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
            },
            None,
        ));
        self.router
            .relay(&mut tx, batch)
            .await
            .map_err(|e| BrokerError::Link(e.to_string()))?;
        self.metrics.retained_restored.inc_by(count as u64);
        info!(count, "retained messages restored");
        Ok(())
    }

    /// The PUBLISH for a will, stored first if it is retained.
    pub(crate) async fn will_publish(
        &self,
        will: &LastWill,
        properties: Option<LastWillProperties>,
    ) -> Result<Packet, StoreError> {
        let publish = make_publish(
            std::str::from_utf8(&will.topic).unwrap_or_default(),
            will.message.clone(),
            will.qos as u8,
            will.retain,
            1,
        );
        self.persist_retained(&publish).await?;
        self.offer_to_tap(&publish).await;
        let mut publish = publish;
        publish.topic = namespace::topic_to_router(&publish.topic);
        let properties = properties.map(|p| PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties: p.user_properties,
            content_type: p.content_type,
            ..PublishProperties::default()
        });
        Ok(Packet::Publish(publish, properties))
    }

    /// Hands a will to the durable tap, if its topic is tapped. A will is published when its client
    /// is gone, so there is nobody to refuse: if the tap's owner has stopped, the will still goes
    /// to local subscribers and the miss is logged.
    pub(super) async fn offer_to_tap(&self, publish: &Publish) {
        let topic = String::from_utf8_lossy(&publish.topic);
        if self
            .offer_to_taps([(&*topic, &publish.payload, 0)], None)
            .await
            .is_err()
        {
            warn!(%topic, "a durable tap's owner has stopped: a will was not queued with it");
        }
    }

    /// Whether a durable tap takes `topic` (the connection layer keeps only those publishes for
    /// the taps, so the others cost no copy).
    pub(crate) fn tapped(&self, topic: &str) -> bool {
        self.taps
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|t| t.takes(topic))
    }

    /// Offers `messages` (`(topic, payload, hops)`) to every durable tap except `skip`, and waits
    /// until each owner has committed what it took.
    pub(crate) async fn offer_to_taps<'a>(
        &self,
        messages: impl IntoIterator<Item = (&'a str, &'a Bytes, u32)> + Clone,
        skip: Option<&Arc<Tap>>,
    ) -> Result<(), TapClosed> {
        let taps: Vec<Arc<Tap>> = self
            .taps
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|t| skip.is_none_or(|s| !Arc::ptr_eq(s, t)))
            .cloned()
            .collect();
        for tap in taps {
            tap.offer(messages.clone()).await?;
        }
        Ok(())
    }

    /// Publishes a will after its delay, unless the client connects again first.
    pub(crate) fn delay_will(
        self: Arc<Self>,
        client_id: String,
        will: LastWill,
        properties: Option<LastWillProperties>,
        delay: Duration,
    ) {
        static TICKETS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let ticket = TICKETS.fetch_add(1, Ordering::Relaxed);
        self.pending_wills
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(client_id.clone(), ticket);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let due = {
                let mut pending = self.pending_wills.lock().unwrap_or_else(|p| p.into_inner());
                let due = pending.get(&client_id) == Some(&ticket);
                if due {
                    pending.remove(&client_id);
                }
                due
            };
            if !due {
                return;
            }
            match self.will_publish(&will, properties).await {
                Ok(packet) => {
                    let mut system = self.system.lock().await;
                    if let Err(e) = self.router.relay(&mut system, vec![packet]).await {
                        warn!(client_id, error = %e, "cannot publish the delayed will");
                    }
                }
                Err(e) => warn!(client_id, error = %e, "cannot store the delayed retained will"),
            }
        });
    }

    /// A client connected again: its delayed will, if any, is not published.
    pub(crate) fn cancel_delayed_will(&self, client_id: &str) {
        // The pending timer finds its ticket gone and gives up.
        self.pending_wills
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(client_id);
    }
}

/// The QoS and packet id of a decoded PUBLISH.
///
/// rumqttd keeps `Publish::qos` and `pkid` crate-private; its public serialisation starts with the
/// fixed header byte (QoS in bits 1-2) and the packet id. This copies the packet, so it is only
/// used on rare paths: retained messages, wills, and messages a policy refuses.
pub(crate) fn publish_qos_pkid(publish: &Publish) -> (u8, u16) {
    let bytes = publish.serialize();
    (
        (bytes[0] >> 1) & 0b11,
        u16::from_be_bytes([bytes[1], bytes[2]]),
    )
}

pub(super) fn publish_qos(publish: &Publish) -> u8 {
    publish_qos_pkid(publish).0
}

/// Builds a PUBLISH with a QoS, which rumqttd's public constructor cannot (it makes QoS 0 only):
/// its public deserialiser reads the same layout `Publish::serialize` writes.
pub(crate) fn make_publish(
    topic: &str,
    payload: Bytes,
    qos: u8,
    retain: bool,
    pkid: u16,
) -> Publish {
    let qos = if qos > QoS::AtLeastOnce as u8 {
        QoS::AtLeastOnce as u8
    } else {
        qos
    };
    let mut b = BytesMut::with_capacity(7 + topic.len() + payload.len());
    b.put_u8(0b0011_0000 | u8::from(retain) | (qos << 1));
    b.put_u16(if qos == 0 { 0 } else { pkid });
    b.put_u16(topic.len() as u16);
    b.extend_from_slice(topic.as_bytes());
    b.extend_from_slice(&payload);
    Publish::deserialize(b.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_publishes_carry_their_qos_and_retain_flag() {
        for (qos, retain) in [(0, false), (0, true), (1, false), (1, true)] {
            let p = make_publish("a/b", Bytes::from_static(b"xyz"), qos, retain, 7);
            assert_eq!(publish_qos(&p), qos);
            assert_eq!(p.retain, retain);
            assert_eq!(&p.topic[..], b"a/b");
            assert_eq!(&p.payload[..], b"xyz");
        }
        // QoS 2 is not offered by Grove's own publishes; it is lowered to 1.
        assert_eq!(
            publish_qos(&make_publish("t", Bytes::new(), 2, false, 1)),
            1
        );
    }
}
