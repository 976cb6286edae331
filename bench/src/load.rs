//! The load: N publishers and M subscribers (rumqttc, async) on one broker port. Publisher `p` publishes
//! to `bench/{phase}/{p}` and every subscriber subscribes to `bench/{phase}/#`, so each message is
//! delivered M times (fan-out). The phase id keeps a late message of an earlier phase out of the count.
//!
//! A phase: subscribers connect and get their SUBACK, publishers connect and get their CONNACK, then all
//! publishers start together and send either flat out or at a fixed rate, until their message count or
//! duration is reached. The phase then waits for the deliveries still in flight (until all expected ones
//! arrived, or none arrived for a quiet period) and stops every client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout};

use crate::payload::{self, Stamp};
use crate::stats::{DeliveryTally, DeliveryTracker, LatencyRecorder, LatencySummary};

/// How long clients may take to connect and subscribe before the phase fails.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the idle clients may take to connect, all of them (10,000 on a loaded 2-CPU box take
/// seconds, with the broker and the clients sharing the CPUs).
const IDLE_SETUP_TIMEOUT: Duration = Duration::from_secs(120);

/// Idle clients connecting at the same time: more would overflow the listen backlog (SYNs dropped and
/// retried after a second), which measures TCP's retry timer, not the broker.
const CONNECTS_IN_FLIGHT: usize = 256;

/// After the publishers are done, the phase ends once no delivery arrived for this long.
pub const QUIET_PERIOD: Duration = Duration::from_secs(2);

/// Longest wait for deliveries after the publishers are done, however steadily they trickle in.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Requests a client may queue before `publish` waits; keeps the client-side queue short. (rumqttc's
/// in-flight window for QoS 1 is 100 too; the libmosquitto client uses this as its window.)
pub const REQUEST_CAPACITY: usize = 100;

/// How publishers pace themselves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// As fast as the client and broker take them: measures maximum throughput.
    FlatOut,
    /// A fixed number of messages per second per publisher: measures latency without queueing.
    PerSecond(u32),
}

/// When publishers stop.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// After this many messages each.
    Messages(u64),
    /// After this long (seconds in JSON).
    Duration(#[serde(serialize_with = "seconds")] Duration),
}

fn seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

/// One phase's load.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Publisher count (N).
    pub publishers: u32,
    /// Subscriber count (M); each receives every message.
    pub subscribers: u32,
    /// QoS of publishes and subscriptions.
    pub qos: QoS,
    /// Payload size in bytes.
    pub payload: usize,
    /// Pacing of publishers.
    pub pace: Pace,
    /// When publishers stop.
    pub stop: Stop,
    /// Hard limit on the publishing part, whatever `stop` says.
    pub publish_limit: Duration,
}

/// Why a phase failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A client lost or could not open its connection.
    #[error("client {client} failed: {source}")]
    Connection {
        /// Client id.
        client: String,
        /// The rumqttc error.
        source: rumqttc::ConnectionError,
    },
    /// A client could not queue a request (its event loop is gone).
    #[error("client {client} could not queue a request: {source}")]
    Client {
        /// Client id.
        client: String,
        /// The rumqttc error.
        source: rumqttc::ClientError,
    },
    /// Clients did not connect or subscribe in time, or a client ended before it did.
    #[error("{what} did not happen (limit {SETUP_TIMEOUT:?})")]
    Setup {
        /// What was waited for.
        what: &'static str,
    },
    /// A benchmark task panicked or was cancelled.
    #[error("a benchmark task ended abnormally: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The result of one phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseOutcome {
    /// Messages handed to the broker, all publishers together.
    pub sent: u64,
    /// QoS 1 only: messages the broker acknowledged (PUBACK) to the publishers.
    pub acked: u64,
    /// Publish rate achieved, messages per second (all publishers).
    pub publish_rate: f64,
    /// Deliveries received by all subscribers (duplicates included).
    pub delivered: u64,
    /// Delivered messages per second, from the start of publishing to the last delivery.
    pub throughput: f64,
    /// Seconds from the start of publishing to the last delivery.
    pub elapsed_s: f64,
    /// End-to-end latency (publish call to receipt by a subscriber).
    pub latency: LatencySummary,
    /// Losses, duplicates and reordering, over all subscribers.
    pub tally: DeliveryTally,
    /// Messages on the phase's topics that were not benchmark payloads of this phase.
    pub foreign: u64,
    /// Whether the drain ended on its time limit with deliveries still missing.
    pub drain_timed_out: bool,
}

/// Runs one phase against the broker on 127.0.0.1:`port`. `phase_id` must be unique within the run.
pub async fn run_phase(
    port: u16,
    phase_id: &str,
    spec: &LoadSpec,
) -> Result<PhaseOutcome, LoadError> {
    // Send and receipt times are CLOCK_MONOTONIC (payload::monotonic_ns), the clock the libmosquitto
    // client stamps with too.
    let (stop_tx, stop_rx) = watch::channel(false);
    let delivered = Arc::new(AtomicU64::new(0));

    let mut subscribers = Vec::new();
    let mut subscribed = Vec::new();
    for index in 0..spec.subscribers {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let client_id = format!("gb-{phase_id}-s{index}");
        let options = options(&client_id, port, spec.payload);
        let task = Subscriber {
            client_id,
            filter: format!("bench/{phase_id}/#"),
            qos: spec.qos,
            publishers: spec.publishers as usize,
            delivered: Arc::clone(&delivered),
        };
        subscribers.push(tokio::spawn(task.run(options, ready_tx, stop_rx.clone())));
        subscribed.push(ready_rx);
    }
    if let Err(error) = wait_all(subscribed, "SUBACK for every subscriber").await {
        let _ = stop_tx.send(true);
        return Err(first_failure(subscribers).await.unwrap_or(error));
    }

    let (start_tx, start_rx) = watch::channel(None::<Instant>);
    let mut publishers = Vec::new();
    let mut connected = Vec::new();
    for index in 0..spec.publishers {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let client_id = format!("gb-{phase_id}-p{index}");
        let options = options(&client_id, port, spec.payload);
        let task = Publisher {
            client_id,
            index,
            topic: format!("bench/{phase_id}/{index}"),
            spec: spec.clone(),
        };
        publishers.push(tokio::spawn(task.run(
            options,
            ready_tx,
            start_rx.clone(),
            stop_rx.clone(),
        )));
        connected.push(ready_rx);
    }
    if let Err(error) = wait_all(connected, "CONNACK for every publisher").await {
        // Healthy clients end on these signals; the failed one reports why.
        let _ = stop_tx.send(true);
        drop(start_tx);
        return Err(first_failure(publishers).await.unwrap_or(error));
    }

    let start = Instant::now();
    let start_ns = payload::monotonic_ns();
    // Receivers exist until the publishers end, so the send cannot fail while they wait for it.
    let _ = start_tx.send(Some(start));

    let mut sent: Vec<u64> = Vec::new();
    let mut acked = 0;
    let mut publish_end = start;
    for handle in publishers {
        let report = handle.await??;
        sent.push(report.sent);
        acked += report.acked;
        publish_end = publish_end.max(report.finished);
    }
    let total_sent: u64 = sent.iter().sum();
    let expected = total_sent * u64::from(spec.subscribers);

    // Drain: wait for the deliveries still in flight.
    let drain_start = Instant::now();
    let mut last_count = delivered.load(Ordering::Relaxed);
    let mut last_progress = Instant::now();
    let mut drain_timed_out = false;
    loop {
        let count = delivered.load(Ordering::Relaxed);
        if count >= expected {
            break;
        }
        if count != last_count {
            last_count = count;
            last_progress = Instant::now();
        }
        if last_progress.elapsed() >= QUIET_PERIOD {
            break;
        }
        if drain_start.elapsed() >= DRAIN_LIMIT {
            drain_timed_out = true;
            break;
        }
        sleep(Duration::from_millis(5)).await;
    }
    let _ = stop_tx.send(true);

    let mut reports = Vec::new();
    for handle in subscribers {
        reports.push(handle.await??);
    }
    Ok(outcome(
        &PublisherTotals {
            sent,
            acked,
            publishing: publish_end.saturating_duration_since(start),
        },
        &reports,
        Duration::from_nanos(start_ns),
        drain_timed_out,
    ))
}

/// What the publishers of a phase did, whichever client implementation they were.
#[derive(Debug, Clone, PartialEq)]
pub struct PublisherTotals {
    /// Messages each publisher handed to the broker, by publisher index.
    pub sent: Vec<u64>,
    /// QoS 1: PUBACKs received, all publishers.
    pub acked: u64,
    /// From the start signal to the last publish call of the last publisher.
    pub publishing: Duration,
}

/// The outcome of a phase from what its publishers and subscribers report: the one accounting of
/// both client implementations (rumqttc here, libmosquitto in [`crate::libmosq`]). Subscriber
/// times are on one clock (any origin); `start` is the start signal on that clock.
pub fn outcome(
    publishers: &PublisherTotals,
    subscribers: &[SubscriberReport],
    start: Duration,
    drain_timed_out: bool,
) -> PhaseOutcome {
    let mut latency = LatencyRecorder::new();
    let mut tally = DeliveryTally::default();
    let mut foreign = 0;
    let mut received = 0;
    let mut last_delivery = start;
    for report in subscribers {
        latency.merge(&report.latency);
        tally += report.tracker.tally(&publishers.sent);
        foreign += report.foreign;
        received += report.received;
        if let Some(at) = report.last_delivery {
            last_delivery = last_delivery.max(at);
        }
    }
    let elapsed = last_delivery.saturating_sub(start);
    let total_sent = publishers.sent.iter().sum();
    PhaseOutcome {
        sent: total_sent,
        acked: publishers.acked,
        publish_rate: rate(total_sent, publishers.publishing),
        delivered: received,
        throughput: rate(received, elapsed),
        elapsed_s: elapsed.as_secs_f64(),
        latency: latency.summary(),
        tally,
        foreign,
        drain_timed_out,
    }
}

/// Connects `count` idle clients (clean session, nothing subscribed), at most [`CONNECTS_IN_FLIGHT`]
/// of them connecting at once; once every one has its CONNACK, awaits `held` while they all stay
/// connected (they send nothing meanwhile), then disconnects them all and waits for every DISCONNECT to
/// be written. Returns what `held` returned: the caller reads the broker's memory there.
pub async fn hold_idle_clients<T>(
    port: u16,
    count: u32,
    held: impl std::future::Future<Output = T>,
) -> Result<T, LoadError> {
    // The clients and this task: the first barrier is "all connected", the second "disconnect now".
    let connected = Arc::new(tokio::sync::Barrier::new(count as usize + 1));
    let release = Arc::new(tokio::sync::Barrier::new(count as usize + 1));
    let connecting = Arc::new(tokio::sync::Semaphore::new(CONNECTS_IN_FLIGHT));
    let mut tasks = Vec::new();
    for index in 0..count {
        let client_id = format!("gb-idle-{index}");
        let (connected, release, connecting) = (
            Arc::clone(&connected),
            Arc::clone(&release),
            Arc::clone(&connecting),
        );
        tasks.push(tokio::spawn(async move {
            let mut permit = Some(connecting.acquire_owned().await);
            let (client, mut eventloop) = AsyncClient::new(options(&client_id, port, 64), 10);
            let mut disconnecting = false;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) if !disconnecting => {
                        disconnecting = true;
                        permit.take();
                        connected.wait().await;
                        release.wait().await;
                        client
                            .disconnect()
                            .await
                            .map_err(|source| LoadError::Client {
                                client: client_id.clone(),
                                source,
                            })?;
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(()),
                    Ok(_) => {}
                    Err(source) => {
                        return Err(LoadError::Connection {
                            client: client_id,
                            source,
                        })
                    }
                }
            }
        }));
    }
    timeout(IDLE_SETUP_TIMEOUT, connected.wait())
        .await
        .map_err(|_| LoadError::Setup {
            what: "connecting every idle client",
        })?;
    let value = held.await;
    release.wait().await;
    for task in tasks {
        timeout(SETUP_TIMEOUT, task)
            .await
            .map_err(|_| LoadError::Setup {
                what: "disconnecting the idle clients",
            })???;
    }
    Ok(value)
}

/// Client options shared by every benchmark client.
fn options(client_id: &str, port: u16, payload: usize) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_clean_session(true);
    options.set_keep_alive(Duration::from_secs(30));
    // rumqttc refuses packets over 10 KiB by default; leave room for the topic and header.
    options.set_max_packet_size(payload + 1024, payload + 1024);
    options
}

/// A client's event loop with Nagle's algorithm off: the clients are the same for every broker, and
/// without this a fixed-rate phase would measure TCP's delayed ACK instead of the broker.
fn event_loop(options: MqttOptions) -> (AsyncClient, EventLoop) {
    let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
    let mut network = eventloop.network_options();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    (client, eventloop)
}

/// Waits for every readiness signal, failing the phase after the setup timeout.
async fn wait_all(
    signals: Vec<tokio::sync::oneshot::Receiver<()>>,
    what: &'static str,
) -> Result<(), LoadError> {
    let all = async {
        for signal in signals {
            // A dropped sender means the client task ended; its error surfaces when it is joined.
            signal.await.map_err(|_| LoadError::Setup { what })?;
        }
        Ok(())
    };
    timeout(SETUP_TIMEOUT, all)
        .await
        .map_err(|_| LoadError::Setup { what })?
}

/// The error of the first client task that failed, if any: the cause behind a failed setup. The tasks
/// must have been told to stop; each gets a moment to end.
async fn first_failure<T>(tasks: Vec<JoinHandle<Result<T, LoadError>>>) -> Option<LoadError> {
    for task in tasks {
        match timeout(Duration::from_secs(2), task).await {
            Ok(Ok(Err(error))) => return Some(error),
            Ok(Err(join)) => return Some(LoadError::Task(join)),
            Ok(Ok(Ok(_))) | Err(_) => {}
        }
    }
    None
}

/// Messages per second; 0 when no time passed.
fn rate(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

/// Nanoseconds since `origin`.
pub fn nanos_since(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// One subscriber client.
struct Subscriber {
    client_id: String,
    filter: String,
    qos: QoS,
    publishers: usize,
    /// Deliveries of all subscribers together, for the drain loop.
    delivered: Arc<AtomicU64>,
}

/// What a subscriber saw, whichever client implementation it was.
#[derive(Debug, Clone)]
pub struct SubscriberReport {
    /// Latency of every benchmark delivery.
    latency: LatencyRecorder,
    /// Sequence numbers seen per publisher.
    tracker: DeliveryTracker,
    /// Messages received, foreign ones included.
    pub received: u64,
    /// Messages that were not benchmark payloads of this phase.
    pub foreign: u64,
    /// Time of the last delivery, on the phase's clock (see [`outcome`]).
    pub last_delivery: Option<Duration>,
}

impl SubscriberReport {
    /// Nothing seen yet, in a phase of `publishers` publishers.
    pub fn new(publishers: usize) -> Self {
        Self {
            latency: LatencyRecorder::new(),
            tracker: DeliveryTracker::new(publishers),
            received: 0,
            foreign: 0,
            last_delivery: None,
        }
    }

    /// Accounts the stamp of a benchmark payload received `latency` after it was sent (`received`
    /// is counted apart, foreign payloads included); `None`: a delivery outside the measured
    /// window, counted but not timed. A stamp of no publisher of the phase is foreign.
    pub fn account(&mut self, stamp: &Stamp, latency: Option<Duration>) {
        if self.tracker.observe(stamp).is_err() {
            self.foreign += 1;
        } else if let Some(latency) = latency {
            self.latency.record(latency);
        }
    }
}

impl Subscriber {
    async fn run(
        self,
        options: MqttOptions,
        ready: tokio::sync::oneshot::Sender<()>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<SubscriberReport, LoadError> {
        let (client, mut eventloop) = event_loop(options);
        client
            .subscribe(self.filter.as_str(), self.qos)
            .await
            .map_err(|source| LoadError::Client {
                client: self.client_id.clone(),
                source,
            })?;
        let mut ready = Some(ready);
        let mut report = SubscriberReport::new(self.publishers);
        loop {
            let event = tokio::select! {
                event = eventloop.poll() => event,
                // A closed channel means the phase is over too.
                _ = stop.wait_for(|stop| *stop) => break,
            };
            match event {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let now = payload::monotonic_ns();
                    report.received += 1;
                    report.last_delivery = Some(Duration::from_nanos(now));
                    self.delivered.fetch_add(1, Ordering::Relaxed);
                    match payload::decode(&publish.payload) {
                        Ok(stamp) => report.account(
                            &stamp,
                            Some(Duration::from_nanos(now.saturating_sub(stamp.sent_ns))),
                        ),
                        Err(_) => report.foreign += 1,
                    }
                }
                Ok(_) => {}
                Err(source) => {
                    return Err(LoadError::Connection {
                        client: self.client_id,
                        source,
                    })
                }
            }
        }
        // The phase is over; a failed DISCONNECT does not change its figures.
        let _ = client.try_disconnect();
        let _ = timeout(Duration::from_secs(1), async {
            while let Ok(event) = eventloop.poll().await {
                if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
        Ok(report)
    }
}

/// One publisher client.
struct Publisher {
    client_id: String,
    index: u32,
    topic: String,
    spec: LoadSpec,
}

/// What a publisher did.
struct PublisherReport {
    sent: u64,
    acked: u64,
    finished: Instant,
}

impl Publisher {
    async fn run(
        self,
        options: MqttOptions,
        ready: tokio::sync::oneshot::Sender<()>,
        mut start: watch::Receiver<Option<Instant>>,
        stop: watch::Receiver<bool>,
    ) -> Result<PublisherReport, LoadError> {
        let (client, eventloop) = event_loop(options);
        let acked = Arc::new(AtomicU64::new(0));
        // The event loop runs in its own task so that `publish` (which waits for queue space) and the
        // socket IO proceed concurrently.
        let mut io = tokio::spawn(drive_publisher(
            eventloop,
            self.client_id.clone(),
            ready,
            Arc::clone(&acked),
            stop,
        ));
        let client_error = |source| LoadError::Client {
            client: self.client_id.clone(),
            source,
        };

        let started = tokio::select! {
            at = start.wait_for(Option::is_some) => at.ok().map(|at| at.unwrap_or_else(Instant::now)),
            joined = &mut io => {
                joined??;
                return Err(LoadError::Setup {
                    what: "a publisher's connection staying open until the start",
                });
            }
        };
        let Some(started) = started else {
            // The phase was abandoned before it started, perhaps because this client's own
            // connection failed: the stop signal went out first, so the event loop ends now, with
            // its error if it had one. (Both branches above can be ready at once; the error must
            // not depend on which one is polled first.)
            io.await??;
            return Ok(self.report(0, &acked, Instant::now()));
        };
        let limit = started + self.spec.publish_limit;
        let mut seq = 0u64;
        loop {
            let now = Instant::now();
            let done = match self.spec.stop {
                Stop::Messages(count) => seq >= count,
                Stop::Duration(duration) => now >= started + duration,
            };
            if done || now >= limit || io.is_finished() {
                break;
            }
            if let Pace::PerSecond(rate) = self.spec.pace {
                // Message `seq` is due at start + seq/rate: a late publisher catches up instead of drifting.
                let due = started + Duration::from_secs_f64(seq as f64 / f64::from(rate.max(1)));
                sleep_until(due.into()).await;
            }
            let stamp = Stamp {
                publisher: self.index,
                seq,
                sent_ns: payload::monotonic_ns(),
            };
            // The size was validated against the header length when the arguments were read.
            let bytes = payload::encode(stamp, self.spec.payload).unwrap_or_default();
            if let Err(source) = client
                .publish_bytes(self.topic.as_str(), self.spec.qos, false, bytes)
                .await
            {
                return Err(io_error_or(io, client_error(source)).await);
            }
            seq += 1;
        }
        let finished = Instant::now();

        if self.spec.qos != QoS::AtMostOnce {
            // Wait (bounded) for the broker to acknowledge everything sent.
            let _ = timeout(DRAIN_LIMIT, async {
                while acked.load(Ordering::Relaxed) < seq && !io.is_finished() {
                    sleep(Duration::from_millis(2)).await;
                }
            })
            .await;
        }
        if io.is_finished() {
            let closed = LoadError::Setup {
                what: "a publisher's connection staying open until its last message",
            };
            return Err(io_error_or(io, closed).await);
        }
        // DISCONNECT is queued behind the publishes, so QoS 0 messages are written before it.
        if let Err(source) = client.disconnect().await {
            return Err(io_error_or(io, client_error(source)).await);
        }
        match timeout(Duration::from_secs(5), io).await {
            Ok(joined) => joined??,
            Err(_) => {
                return Err(LoadError::Setup {
                    what: "a publisher's DISCONNECT",
                })
            }
        }
        Ok(self.report(seq, &acked, finished))
    }

    fn report(&self, sent: u64, acked: &AtomicU64, finished: Instant) -> PublisherReport {
        PublisherReport {
            sent,
            acked: acked.load(Ordering::Relaxed),
            finished,
        }
    }
}

/// The error that ended a publisher's event loop task, or `fallback` if it ended cleanly.
async fn io_error_or(io: JoinHandle<Result<(), LoadError>>, fallback: LoadError) -> LoadError {
    match io.await {
        Ok(Err(error)) => error,
        Err(join) => LoadError::Task(join),
        Ok(Ok(())) => fallback,
    }
}

/// Polls a publisher's event loop: reports the CONNACK, counts PUBACKs, ends after DISCONNECT is written
/// or when the phase is stopped.
async fn drive_publisher(
    mut eventloop: EventLoop,
    client_id: String,
    ready: tokio::sync::oneshot::Sender<()>,
    acked: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), LoadError> {
    let mut ready = Some(ready);
    loop {
        let event = tokio::select! {
            event = eventloop.poll() => event,
            _ = stop.wait_for(|stop| *stop) => return Ok(()),
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(()),
            Ok(_) => {}
            Err(source) => {
                return Err(LoadError::Connection {
                    client: client_id,
                    source,
                })
            }
        }
    }
}
