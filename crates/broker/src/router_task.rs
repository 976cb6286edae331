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
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use grove_auth::policy::Resolved;
use grove_router::{self as core, ConnId, Outbound, Router, StorageWrite};
use grove_store::Store;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tracing::{error, warn};

use crate::clients::{Listing, Presence};
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
        policy: Option<Arc<Resolved>>,
        link: Link,
    },
    /// Any packet after CONNECT (PINGREQ is answered by the connection).
    Packet(ConnId, core::Inbound),
    /// The connection ended without DISCONNECT (or the client is gone for good).
    Lost(ConnId),
}

/// One connection's writer: the router's packets for it, at most [`WRITER_SLOTS`] waiting.
///
/// Written here rather than taken from a channel crate for what an idle connection holds, most of
/// a gateway's connections being idle: tokio's bounded channel allocates a block of 32 slots when
/// it is made (2 KiB of `Outbound`s), and flume allocates a waker hook each time the connection
/// waits and keeps its queue's room once drained (about 600 B per idle connection, measured with
/// heaptrack while this was written; BENCHMARKS.md has the whole connection's figure, "Broker,
/// issue 14 figures re-measured"). Here the connection takes the waiting packets in
/// one swap (their room goes with them) and waits on a `Notify`, which allocates nothing.
struct Writer {
    state: Mutex<Waiting>,
    /// Packets arrived, the router closed the link, or a [`Nudge`].
    ready: Notify,
    /// What the connection is, for operators and the keep-alive sweep (`crate::clients`): set
    /// at its CONNACK (never, for a component's bus). Here rather than in an allocation of its
    /// own: every connection already has its writer.
    listing: OnceLock<Listing>,
    /// Its counts, when it last heard its client, an operator's disconnect (`crate::clients`).
    presence: Presence,
    /// The core holds this publisher for a congested subscriber (`Router::poll_hold`): the
    /// connection stops reading it. Outside the lock: a publishing connection looks at it on
    /// every turn of its loop.
    held: AtomicBool,
}

/// What a writer holds between the router and its connection.
#[derive(Default)]
struct Waiting {
    packets: Vec<Outbound>,
    /// The router found the writer full: the connection sends a wake-up once it took packets.
    blocked: bool,
    /// The router's end is gone (it closed the connection, or forgot it): nothing more comes.
    closed: bool,
    /// The connection's end is gone: nothing more is taken.
    abandoned: bool,
    /// Something outside the router asks the connection to look (see [`Nudge`]).
    nudged: bool,
}

impl Writer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The router's end of a connection's writer.
pub(crate) struct Link(Arc<Writer>);

/// Wakes a connection that waits for the router's packets, to have it look at something else:
/// a device whose registration changed (`server::LiveDevices`), an operator's disconnect or its
/// client's silence (`crate::clients`). One wait for all, instead of a future per connection for
/// each thing it may have to look at (an idle connection's task holds every future it waits on).
pub(crate) struct Nudge(Arc<Writer>);

impl Nudge {
    /// What the connection is, once it is listed (`crate::clients::Listed::register`).
    pub(crate) fn listing(&self) -> Option<&Listing> {
        self.0.listing.get()
    }

    pub(crate) fn listing_cell(&self) -> &OnceLock<Listing> {
        &self.0.listing
    }

    pub(crate) fn presence(&self) -> &Presence {
        &self.0.presence
    }

    pub(crate) fn nudge(&self) {
        self.0.lock().nudged = true;
        self.0.ready.notify_one();
    }
}

/// What [`Link::fill`] did.
enum Fill {
    /// Everything the router had went in.
    Drained,
    /// The writer is full; the connection sends a wake-up once it has taken packets.
    Full,
    /// The connection is gone, or the router's last packet (DISCONNECT) went in: the link is done.
    Done,
}

impl Link {
    /// Moves packets from `next` into the writer while it has room.
    fn fill(&self, mut next: impl FnMut() -> Option<Outbound>) -> Fill {
        let mut w = self.0.lock();
        if w.abandoned {
            return Fill::Done;
        }
        let was_empty = w.packets.is_empty();
        let fill = loop {
            if w.packets.len() >= WRITER_SLOTS {
                w.blocked = true;
                break Fill::Full;
            }
            let Some(packet) = next() else {
                break Fill::Drained;
            };
            let last = matches!(packet, Outbound::Disconnect { .. });
            w.packets.push(packet);
            if last {
                w.closed = true;
                break Fill::Done;
            }
        };
        if was_empty && !w.packets.is_empty() {
            self.0.ready.notify_one();
        }
        fill
    }
}

/// The router has forgotten the connection: its connection task reads what is left, then ends.
impl Drop for Link {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.ready.notify_one();
    }
}

/// The connection's end of its writer.
pub(crate) struct Outlet {
    conn: ConnId,
    writer: Arc<Writer>,
    wake: mpsc::Sender<ConnId>,
    events: mpsc::Sender<Event>,
}

/// However a connection ends (an aborted handshake included), the router hears that it is gone;
/// when it already knows (DISCONNECT, its own close), the extra `Lost` is ignored, since
/// connection ids are never reused.
impl Drop for Outlet {
    fn drop(&mut self) {
        self.writer.lock().abandoned = true;
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

    /// What the connection is, once it is listed.
    pub(crate) fn listing(&self) -> Option<&Listing> {
        self.writer.listing.get()
    }

    /// Its counts, when it last heard its client, an operator's disconnect.
    pub(crate) fn presence(&self) -> &Presence {
        &self.writer.presence
    }

    /// Whether the router holds this publisher for a congested subscriber (backpressure).
    pub(crate) fn held(&self) -> bool {
        self.writer.held.load(Ordering::Relaxed)
    }

    /// A handle that wakes this outlet's [`Outlet::recv`].
    pub(crate) fn nudge(&self) -> Nudge {
        Nudge(self.writer.clone())
    }

    /// Waits for the router's next packets and appends them to `out` (every one waiting), or for
    /// a [`Nudge`] (then maybe none). False once the router has closed this connection (or
    /// stopped) and everything it sent was taken. Cancel-safe: packets stay in the writer until
    /// they are taken, and each call looks before it waits.
    pub(crate) async fn recv(&mut self, out: &mut Vec<Outbound>) -> bool {
        loop {
            let (closed, nudged) = {
                let mut w = self.writer.lock();
                (
                    w.packets.is_empty() && w.closed,
                    std::mem::take(&mut w.nudged),
                )
            };
            if closed {
                return false;
            }
            if self.try_recv(out) || nudged {
                return true;
            }
            // A packet that arrives between the look and this wait leaves a permit (`notify_one`
            // with nobody waiting), so the wait ends at once.
            self.writer.ready.notified().await;
        }
    }

    /// Appends whatever is already waiting, without waiting; whether there was anything.
    pub(crate) fn try_recv(&mut self, out: &mut Vec<Outbound>) -> bool {
        let (packets, wake) = {
            let mut w = self.writer.lock();
            (
                std::mem::take(&mut w.packets),
                std::mem::take(&mut w.blocked),
            )
        };
        if packets.is_empty() {
            return false;
        }
        if out.is_empty() {
            *out = packets;
        } else {
            out.extend(packets);
        }
        if wake && self.wake.try_send(self.conn).is_err() {
            // Cannot happen within the channel's budget (one per link); the router's next
            // flush of this connection still sends what it can.
            warn!(conn = self.conn.0, "router wake-up channel full");
        }
        true
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
        let writer = Arc::new(Writer {
            state: Mutex::default(),
            ready: Notify::new(),
            listing: OnceLock::new(),
            presence: Presence::default(),
            held: AtomicBool::new(false),
        });
        (
            Link(writer.clone()),
            Outlet {
                conn,
                writer,
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
    let policies: Arc<Mutex<HashMap<Arc<str>, Arc<Resolved>>>> = Arc::default();
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
    policies: Arc<Mutex<HashMap<Arc<str>, Arc<Resolved>>>>,
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
        // Every connection and bus learns at once that the router has stopped (their writers
        // close); a connection then says goodbye as for a shutdown.
        self.links.clear();
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
                let client = connect.client_id.clone();
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
                        let mut refusal = Some(Outbound::ConnAck(refusal));
                        link.fill(|| refusal.take());
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
        while let Some((conn, held)) = self.router.poll_hold() {
            if let Some(link) = self.links.get(&conn) {
                link.0.held.store(held, Ordering::Relaxed);
            }
        }
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
        let router = &mut self.router;
        match link.fill(|| router.poll_transmit(now, conn)) {
            Fill::Drained | Fill::Full => {}
            // Closed by the router (DISCONNECT sent), or the connection task has gone.
            Fill::Done => {
                self.links.remove(&conn);
                self.forget(conn);
            }
        }
    }
}
