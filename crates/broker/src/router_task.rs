//! The router task: the one owner of Grove's router core (`grove_router::Router`), driven by
//! events from the connection tasks and the components' buses.
//!
//! # Why one tokio task
//!
//! The core is a synchronous state machine that must see every event in one order; a task that
//! owns it needs no lock, and every other part of the broker already lives on the tokio runtime
//! (sockets, timers, the store's async API), so a task can wait on its event channel, its next
//! timer and the storage commit in one `select!`. The core's work per event is small (a trie walk,
//! queue pushes); encoding, TLS and policy checks stay in the connection tasks, which run in
//! parallel. A dedicated thread would need a second wake-up path for timers and commits for no
//! gain on the gateway's two to four cores.
//!
//! # The loop
//!
//! Receive events ([`Event`]: CONNECT after authentication, packets, a lost connection, "this
//! writer has room again") and hand them to the core; then drain `poll_ready`/`poll_transmit` into
//! each connection's bounded writer ([`Link`]) only while it has room (the core's flow control:
//! a slow subscriber's packets stay in its own bounded session queue, and nobody else waits);
//! start a group commit of whatever `poll_storage` gave when none is running and call
//! `storage_committed` after it (publisher acks wait for it, inside the core); publish
//! `reading_paused` for the connection tasks; sleep until `poll_timeout`.
//!
//! # Budgets (every queue is bounded)
//!
//! * events: [`EVENT_SLOTS`]; a full channel makes senders wait (a publisher's connection task
//!   stops reading its socket, so TCP slows the client);
//! * each writer: [`WRITER_SLOTS`] packets; when it is full the core keeps the rest in the session
//!   (bounded by `Config::queue_max_messages`/`queue_max_bytes`, drops counted);
//! * wake-ups: one per connection at most (a writer sends one only after the router marked it
//!   blocked, and clears the mark as it sends), so a channel sized for every link never fills;
//! * storage: at most [`MAX_COMMIT_BATCH`] writes per commit, one commit at a time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use grove_auth::policy::Resolved;
use grove_router::{self as core, ConnId, Outbound, Router, StorageWrite};
use grove_store::Store;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, warn};

use crate::metrics::BrokerMetrics;
use crate::persist;

/// Events the router task's channel holds before senders wait.
pub(crate) const EVENT_SLOTS: usize = 4096;

/// Packets one connection's writer holds (the connection task encodes and writes them).
pub(crate) const WRITER_SLOTS: usize = 128;

/// Storage writes committed in one transaction at most.
const MAX_COMMIT_BATCH: usize = 10_000;

/// Events handled before the router flushes writers and storage (amortises the flush).
const EVENT_BATCH: usize = 256;

/// How long a failed commit waits before it is tried again (acks stay held meanwhile).
const COMMIT_RETRY: Duration = Duration::from_secs(1);

/// What happened, for the router.
pub(crate) enum Event {
    /// An authenticated CONNECT; `link` is where the connection's packets go.
    Connect {
        conn: ConnId,
        connect: Box<core::Connect>,
        /// The client's resolved policy, checked for every delivery; `None`: allow all.
        policy: Option<Resolved>,
        link: Link,
    },
    /// Any packet after CONNECT (PINGREQ is answered by the connection).
    Packet(ConnId, core::Inbound),
    /// The connection ended without DISCONNECT (or the client is gone for good).
    Lost(ConnId),
}

/// The router's end of a connection's writer.
///
/// A flume channel rather than tokio's: tokio's bounded channel allocates its first block of 32
/// slots (32 x 64 B = 2 KiB) when it is made, for every connection, while flume's queue is a
/// `VecDeque` that allocates only as packets wait, so an idle connection's writer costs almost
/// nothing (BENCHMARKS.md, "Memory per idle connection").
pub(crate) struct Link {
    tx: flume::Sender<Outbound>,
    /// Set by the router when the writer was full: the connection then sends a wake-up once it
    /// has taken packets out.
    blocked: Arc<AtomicBool>,
}

/// The connection's end of its writer.
pub(crate) struct Outlet {
    conn: ConnId,
    rx: flume::Receiver<Outbound>,
    blocked: Arc<AtomicBool>,
    wake: mpsc::Sender<ConnId>,
    events: mpsc::Sender<Event>,
}

/// However a connection ends (an aborted handshake included), the router hears that it is gone;
/// when it already knows (DISCONNECT, its own close), the extra `Lost` is ignored, since
/// connection ids are never reused.
impl Drop for Outlet {
    fn drop(&mut self) {
        let (events, conn) = (self.events.clone(), self.conn);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = events.send(Event::Lost(conn)).await;
            });
        }
    }
}

impl Outlet {
    /// The connection this outlet belongs to.
    pub(crate) fn conn(&self) -> ConnId {
        self.conn
    }

    /// Waits for the router's next packets and appends them to `out` (at least one, and every
    /// one already waiting). False once the router has closed this connection and everything it
    /// sent was taken. Cancel-safe.
    pub(crate) async fn recv(&mut self, out: &mut Vec<Outbound>) -> bool {
        // Cancel-safe: flume's receive future only waits to be woken; a packet stays in the
        // queue until it is taken.
        let Ok(first) = self.rx.recv_async().await else {
            return false;
        };
        out.push(first);
        self.try_recv(out);
        true
    }

    /// Appends whatever is already waiting, without waiting.
    pub(crate) fn try_recv(&mut self, out: &mut Vec<Outbound>) {
        while let Ok(p) = self.rx.try_recv() {
            out.push(p);
        }
        if self.blocked.swap(false, Ordering::AcqRel) && self.wake.try_send(self.conn).is_err() {
            // Cannot happen within the channel's budget (one per link); the router's next
            // flush of this connection still sends what it can.
            warn!(conn = self.conn.0, "router wake-up channel full");
        }
    }
}

/// How connection tasks and buses reach the router task; cheap to clone.
#[derive(Clone)]
pub(crate) struct RouterHandle {
    events: mpsc::Sender<Event>,
    wake: mpsc::Sender<ConnId>,
    next_conn: Arc<AtomicU64>,
    /// The core's `reading_paused`, as of the router's last flush.
    paused: Arc<AtomicBool>,
}

/// The router task has stopped (the gateway is shutting down).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RouterGone;

impl RouterHandle {
    /// A new connection id and its writer (the router's end goes in [`Event::Connect`]).
    pub(crate) fn open(&self) -> (Link, Outlet) {
        let conn = ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = flume::bounded(WRITER_SLOTS);
        let blocked = Arc::new(AtomicBool::new(false));
        (
            Link {
                tx,
                blocked: blocked.clone(),
            },
            Outlet {
                conn,
                rx,
                blocked,
                wake: self.wake.clone(),
                events: self.events.clone(),
            },
        )
    }

    /// Hands an event to the router, waiting while its channel is full.
    pub(crate) async fn send(&self, event: Event) -> Result<(), RouterGone> {
        self.events.send(event).await.map_err(|_| RouterGone)
    }

    /// Whether connections should stop reading publishers for now (the core's flow control).
    pub(crate) fn reading_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }
}

/// The router's clock: Unix milliseconds at start plus the monotonic time since, so that message
/// expiry deadlines written to storage stay meaningful after a restart (as the core asks) and
/// the clock never goes back while the gateway runs.
struct Clock {
    start: tokio::time::Instant,
    base_ms: u64,
}

impl Clock {
    fn new() -> Clock {
        let base_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Clock {
            start: tokio::time::Instant::now(),
            base_ms,
        }
    }

    fn now(&self) -> core::Instant {
        core::Instant(self.base_ms + self.start.elapsed().as_millis() as u64)
    }

    fn deadline(&self, at: core::Instant) -> tokio::time::Instant {
        self.start + Duration::from_millis(at.0.saturating_sub(self.base_ms))
    }
}

/// The router's clock now (for `Router::restore` before the task starts).
pub(crate) fn now() -> core::Instant {
    Clock::new().now()
}

/// Starts the router task with `router` (already restored) and returns its handle.
///
/// `max_links` sizes the wake-up channel (every connection and bus at most once).
pub(crate) fn spawn(
    mut router: Router,
    store: Store,
    metrics: BrokerMetrics,
    max_links: usize,
    shutdown: watch::Receiver<bool>,
) -> (RouterHandle, JoinHandle<()>) {
    let (events_tx, events) = mpsc::channel(EVENT_SLOTS);
    let (wake_tx, wake) = mpsc::channel(max_links.max(1));
    let paused = Arc::new(AtomicBool::new(false));
    let policies: Arc<Mutex<HashMap<Arc<str>, Resolved>>> = Arc::default();
    {
        let (policies, metrics) = (policies.clone(), metrics.clone());

        router.set_delivery_filter(Box::new(move |client, topic| {
            let policies = policies.lock().unwrap_or_else(|p| p.into_inner());
            let allowed = policies.get(client).is_none_or(|p| p.may_receive(topic));
            if !allowed {
                metrics.deny("receive");
            }
            allowed
        }));
    }
    let task = Task {
        router,
        links: HashMap::new(),
        clients: HashMap::new(),
        policies,
        store,
        clock: Clock::new(),
        paused: paused.clone(),
        commit: None,
        metrics,
        counted: core::Stats::default(),
    };
    let handle = RouterHandle {
        events: events_tx,
        wake: wake_tx,
        next_conn: Arc::new(AtomicU64::new(1)),
        paused,
    };
    let join = tokio::spawn(task.run(events, wake, shutdown));
    (handle, join)
}

struct Task {
    router: Router,
    links: HashMap<ConnId, Link>,
    /// Client id of each connection with a policy (to forget the policy with the session).
    clients: HashMap<ConnId, Arc<str>>,
    policies: Arc<Mutex<HashMap<Arc<str>, Resolved>>>,
    store: Store,
    clock: Clock,
    paused: Arc<AtomicBool>,
    /// The running group commit: it resolves to the highest write number it committed.
    commit: Option<JoinHandle<u64>>,
    metrics: BrokerMetrics,
    /// The core's counters as last added to `metrics`.
    counted: core::Stats,
}

impl Task {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        mut wake: mpsc::Receiver<ConnId>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            self.flush();
            let timer = self.router.poll_timeout().map(|at| self.clock.deadline(at));
            tokio::select! {
                _ = shutdown.changed() => break,
                event = events.recv() => {
                    let Some(event) = event else { break };
                    self.handle(event);
                    for _ in 0..EVENT_BATCH {
                        match events.try_recv() {
                            Ok(event) => self.handle(event),
                            Err(_) => break,
                        }
                    }
                }
                Some(conn) = wake.recv() => {
                    let now = self.clock.now();
                    self.transmit(now, conn);
                }
                done = async { self.commit.as_mut().expect("guarded").await }, if self.commit.is_some() => {
                    self.commit = None;
                    match done {
                        Ok(upto) => self.router.storage_committed(upto),
                        Err(e) => error!(error = %e, "the router's storage commit task failed"),
                    }
                }
                _ = tokio::time::sleep_until(timer.unwrap_or_else(tokio::time::Instant::now)), if timer.is_some() => {
                    self.router.handle_timeout(self.clock.now());
                }
            }
        }
        // Whatever was acknowledged is committed already; a commit still running finishes (its
        // publishers are waiting for it, or gone).
        if let Some(commit) = self.commit.take() {
            let _ = commit.await;
        }
    }

    fn handle(&mut self, event: Event) {
        let now = self.clock.now();
        match event {
            Event::Connect {
                conn,
                connect,
                policy,
                link,
            } => {
                let client: Arc<str> = connect.client_id.as_str().into();
                {
                    let mut policies = self.policies.lock().unwrap_or_else(|p| p.into_inner());
                    match policy {
                        Some(p) => {
                            policies.insert(client.clone(), p);
                            self.clients.insert(conn, client);
                        }
                        None => {
                            policies.remove(&client);
                        }
                    }
                }
                self.links.insert(conn, link);
                if let Err(refusal) = self.router.connect(now, conn, *connect) {
                    if let Some(link) = self.links.remove(&conn) {
                        // A fresh writer has room for its one packet.
                        let _ = link.tx.try_send(Outbound::ConnAck(refusal));
                    }
                    self.forget(conn);
                }
            }
            Event::Packet(conn, packet) => self.router.handle(now, conn, packet),
            Event::Lost(conn) => {
                self.router.connection_lost(now, conn);
                self.links.remove(&conn);
                self.forget(conn);
            }
        }
    }

    /// Forgets the policy of a connection's client once its session is gone.
    fn forget(&mut self, conn: ConnId) {
        if let Some(client) = self.clients.remove(&conn) {
            if !self.router.has_session(&client) {
                self.policies
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&client);
            }
        }
    }

    /// Hands out everything the core has for ready connections and storage.
    fn flush(&mut self) {
        let now = self.clock.now();
        while let Some(conn) = self.router.poll_ready() {
            self.transmit(now, conn);
        }
        if self.commit.is_none() {
            let mut batch: Vec<(u64, StorageWrite)> = Vec::new();
            while batch.len() < MAX_COMMIT_BATCH {
                match self.router.poll_storage() {
                    Some(w) => batch.push(w),
                    None => break,
                }
            }
            if !batch.is_empty() {
                let store = self.store.clone();
                self.commit = Some(tokio::spawn(async move {
                    loop {
                        match persist::commit(&store, batch.clone()).await {
                            Ok(upto) => return upto,
                            Err(e) => {
                                error!(error = %e, "cannot commit the router's storage writes; retrying (publisher acks wait)");
                                tokio::time::sleep(COMMIT_RETRY).await;
                            }
                        }
                    }
                }));
            }
        }
        self.paused
            .store(self.router.reading_paused(), Ordering::Relaxed);
        self.metrics
            .router_stats(&mut self.counted, self.router.stats());
    }

    /// Moves `conn`'s packets into its writer while it has room.
    fn transmit(&mut self, now: core::Instant, conn: ConnId) {
        let Some(link) = self.links.get(&conn) else {
            // The connection task is gone (its `Lost` is on the way): nothing to send to.
            while self.router.poll_transmit(now, conn).is_some() {}
            return;
        };
        loop {
            if link.tx.is_full() {
                link.blocked.store(true, Ordering::Release);
                // The connection may have emptied the writer just before the mark: look again.
                if link.tx.is_full() {
                    return;
                }
            }
            let Some(packet) = self.router.poll_transmit(now, conn) else {
                return;
            };
            let last = matches!(packet, Outbound::Disconnect { .. });
            if link.tx.try_send(packet).is_err() || last {
                // Closed by the router (DISCONNECT sent), or the connection task has gone.
                self.links.remove(&conn);
                self.forget(conn);
                return;
            }
        }
    }
}
