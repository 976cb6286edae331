//! The broker itself: the router task, the listeners, restore at startup, devices-file
//! revocations, and the [`Bus`] factory for components.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

use super::admission::PreAuth;
use super::connect::{ConnectRules, LoginRule};
use super::connection;
use super::router_task::{self, Nudge, RouterHandle};
use crate::bus::Bus;
use crate::config::{AuthMode, BrokerConfig};
use crate::metrics::BrokerMetrics;
use crate::persist;
use crate::relay::HEADER_ALLOWANCE;
use crate::tap::{Offered, Tap, TapClosed};
use grove_auth::identity::{Device, Identities};
use grove_auth::tls;
use grove_config::ConfigError;
use grove_store::{Store, StoreError};

/// Router sessions the gateway's own components may hold (buses), on top of `max_connections`,
/// so devices cannot starve the gateway of links.
pub(super) const INTERNAL_LINKS: usize = 64;

/// The MQTT 5 user property counting rule republishes, so that a rule feeding itself is cut off.
pub(crate) const HOPS_PROPERTY: &str = "$grove-hops";

/// Prefix of every user property that is Grove's own: removed from what devices send and receive.
pub(crate) const GROVE_PROPERTY_PREFIX: &str = "$grove-";

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A listener could not bind; the message names the configuration key.
    #[error(transparent)]
    Listen(#[from] ConfigError),
    /// The store refused to give back the retained messages or sessions.
    #[error("cannot restore the router's state: {0}")]
    Restore(#[from] StoreError),
    /// A link to the router failed (the router has stopped: the gateway is shutting down).
    #[error("the MQTT router link failed: {0}")]
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
    /// What the router core was configured with (its Topic Alias Maximum, ...).
    pub(crate) router_config: grove_router::Config,
    pub(crate) router: RouterHandle,
    pub(super) metrics: BrokerMetrics,
    /// Authenticated connections now (see `connection::ConnectionSlot`), at most
    /// `max_connections`.
    pub(super) connected: AtomicUsize,
    pub(super) shutdown: watch::Receiver<bool>,
    /// Registered device identities (passwords, certificates).
    pub(super) identities: Identities,
    /// Whether buses are told every device publisher's client id (rules need it for
    /// `clientid()`); otherwise only on `$aws/things/...`.
    pub(crate) record_origin: std::sync::atomic::AtomicBool,
    /// The durable taps (cloud outbox, functions' events): see `crate::tap`.
    pub(super) taps: std::sync::RwLock<Vec<Arc<Tap>>>,
    /// The connections of proved devices, so that a revocation can wait for their end.
    pub(crate) live_devices: LiveDevices,
    /// Every authenticated connection, for operators and the keep-alive sweep
    /// (`crate::clients`).
    pub(crate) clients: crate::clients::Table,
}

/// The connections of proved (registered) devices now open, by connection number, with the
/// device each proved and a handle that wakes it.
#[derive(Default)]
pub(crate) struct LiveDevices {
    pub(super) open: Mutex<HashMap<u64, (Device, Nudge)>>,
    /// Bumped whenever one of them has ended.
    pub(super) ended: watch::Sender<u64>,
}

impl LiveDevices {
    pub(crate) fn register(&self, connection: u64, device: Device, nudge: Nudge) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(connection, (device, nudge));
    }

    pub(crate) fn remove(&self, connection: u64) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&connection);
        self.ended.send_modify(|n| *n += 1);
    }

    /// How many open connections are of devices no longer registered as they connected; each of
    /// them is woken, so that it looks and ends.
    pub(super) fn revoked(&self, identities: &Identities) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut revoked = 0;
        for (device, nudge) in open.values() {
            if identities.device(&device.id).as_ref() != Some(device) {
                nudge.nudge();
                revoked += 1;
            }
        }
        revoked
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
/// removed then end: whenever the devices file was re-read (here, at a CONNECT, or for
/// `grove device remove`), the connections of devices no longer registered as they connected are
/// woken, and each ends (see the connection layer).
pub(super) async fn watch_identities(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut changes = shared.identities.changes();
    let mut tick = tokio::time::interval(IDENTITY_POLL);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => shared.identities.refresh(),
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                shared.live_devices.revoked(&shared.identities);
            }
        }
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
        let (shutdown, shutdown_rx) = watch::channel(false);
        let router_config = router_config(&config);
        let mut router = grove_router::Router::new(router_config.clone());
        let (sessions, retained) = persist::load(&store).await?;
        let (count, restored) = (retained.len(), sessions.len());
        router.restore(router_task::now(), sessions, retained);
        metrics.retained_restored.inc_by(count as u64);
        if count + restored > 0 {
            info!(
                retained = count,
                sessions = restored,
                "router state restored"
            );
        }
        let (router, router_task) = router_task::spawn(
            router,
            store,
            metrics.clone(),
            config.max_connections + INTERNAL_LINKS,
            shutdown_rx.clone(),
        );
        let shared = Arc::new(Shared {
            config,
            router_config,
            router,
            metrics,
            connected: AtomicUsize::new(0),
            shutdown: shutdown_rx,
            live_devices: LiveDevices::default(),
            clients: crate::clients::Table::default(),
            identities,
            record_origin: std::sync::atomic::AtomicBool::new(false),
            taps: std::sync::RwLock::new(Vec::new()),
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            if let Err(e) = router_task.await {
                error!(error = %e, "the router task failed");
            }
        });
        tasks.spawn(watch_identities(shared.clone()));
        tasks.spawn(crate::clients::sweep_keep_alives(shared.clone()));
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

    /// The clients connected now, and an operator's disconnect (the console's devices page).
    pub fn clients(&self) -> crate::clients::Clients {
        crate::clients::Clients {
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
        Bus::connect(self.shared.clone(), component, skip)
            .await
            .map_err(|_| BrokerError::Link("the router has stopped".into()))
    }

    /// Makes buses see every device publisher's client id, for rules' `clientid()`.
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
                            tokio::spawn(connection::serve(connection::establish(
                                stream, peer, None, listener, shared, ticket,
                            )));
                        }
                        Some(acceptor) => {
                            let acceptor = acceptor.clone();
                            // The TLS handshake is part of establishing: boxed with it (see
                            // `connection::serve`).
                            tokio::spawn(connection::serve(async move {
                                let timeout = Duration::from_millis(shared.config.connect_timeout_ms);
                                match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                                    Ok(Ok(tls)) => {
                                        let cert = tls
                                            .get_ref()
                                            .1
                                            .peer_certificates()
                                            .and_then(|c| c.first())
                                            .map(|c| c.to_vec());
                                        connection::establish(tls, peer, cert, listener, shared, ticket).await
                                    }
                                    Ok(Err(e)) => {
                                        shared.metrics.refuse("tls_handshake");
                                        warn!(%peer, listener = listener.name, error = %e, "TLS handshake failed");
                                        None
                                    }
                                    Err(_) => {
                                        shared.metrics.refuse("tls_handshake");
                                        debug!(%peer, "TLS handshake timed out");
                                        None
                                    }
                                }
                            }));
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

impl Shared {
    /// Whether a durable tap takes `topic` (the connection layer keeps only those publishes for
    /// the taps, so the others cost no copy).
    pub(crate) fn tapped(&self, topic: &str) -> bool {
        self.taps
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|t| t.takes(topic))
    }

    /// Offers `messages` to every durable tap except `skip`, and waits until each owner has
    /// committed what it took.
    pub(crate) async fn offer_to_taps<'a>(
        &self,
        messages: impl IntoIterator<Item = Offered<'a>> + Clone,
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
}

/// The router core's configuration from `[broker]`: what CONNACK declares and the budgets.
fn router_config(config: &BrokerConfig) -> grove_router::Config {
    grove_router::Config {
        maximum_packet_size: u32::try_from(config.max_payload_size + HEADER_ALLOWANCE).ok(),
        queue_max_messages: config.queue_max_messages,
        queue_max_bytes: config.queue_max_bytes,
        max_inflight_out: config.max_inflight_messages,
        // Publishers of a subscriber with a tenth of its message bound (a quarter of its bytes)
        // queued wait for it (`grove_router::Config::backpressure_messages`): far enough below
        // the bounds that the publishers' own in-flight messages still fit when they stop.
        backpressure_messages: (config.queue_max_messages / 10).max(1),
        backpressure_bytes: config.queue_max_bytes / 4,
        backpressure_max_hold_ms: config.backpressure_hold_ms,
        server_keep_alive: config.server_keep_alive,
        // Topics as long and deep as MQTT allows (a topic is a 16-bit-length string, 1.5.4): the
        // payload limit bounds what a client can make the router hold, and a component's
        // publish must never be refused for its topic's shape (functions' topics carry names).
        max_topic_length: usize::from(u16::MAX),
        max_topic_levels: usize::from(u16::MAX),
        ..grove_router::Config::default()
    }
}
