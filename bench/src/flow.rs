//! One measured flow through the gateway, shared by the gateway benchmarks (`rules`, `functions`,
//! `cloud`): publishers send stamped messages to one broker, a subscriber (on the same broker or on
//! another one) receives what comes out, and the flow reports outputs per second, latency from the
//! publish to the output, the publishers' acknowledged messages (at QoS 1, a PUBACK of the gateway
//! means the message is durable) and the delivery accounting (losses, duplicates, reordering).
//!
//! Publishers and subscriber live in one process and share one `Instant` origin, so the send time
//! carried in a payload compares directly with the receive time (see [`crate::payload`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};

use crate::libmosq::{self, Routing};
use crate::load::{nanos_since, LoadSpec, Pace, Stop};
use crate::payload::{self, Stamp};
use crate::peer::RunningPeer;
use crate::report::Client;
use crate::stats::{DeliveryTally, DeliveryTracker, LatencyRecorder, LatencySummary};

/// How long publishers wait for their last PUBACKs before the flow counts the rest as unacknowledged.
const ACK_LIMIT: Duration = Duration::from_secs(30);

/// How long the subscriber keeps listening after the publishers stopped, for outputs still on the way.
const TAIL: Duration = Duration::from_secs(2);

/// A client with Nagle's algorithm off, as in the broker benchmark, so that latencies measure the
/// gateway and not TCP's delayed ACK; a deep request queue, so a fast sender is never throttled by
/// the client library itself.
pub fn event_loop(options: MqttOptions) -> (AsyncClient, EventLoop) {
    let (client, mut eventloop) = AsyncClient::new(options, 10_000);
    let mut network = eventloop.network_options();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    (client, eventloop)
}

/// Options of every gateway-benchmark client: 1 MiB packets, 100 QoS 1 messages in flight.
pub fn options(id: &str, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_inflight(100);
    o
}

/// How a stamp travels in a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The broker benchmark's binary header, padded to this many bytes (for byte-for-byte paths).
    Binary(usize),
    /// A JSON reading (`{"temperature": 31.5, "publisher": .., "seq": .., "sent_ns": ..}`), for
    /// paths that parse the payload (rules, functions).
    Json,
}

impl Encoding {
    fn encode(self, stamp: Stamp) -> anyhow::Result<Bytes> {
        Ok(match self {
            Encoding::Binary(size) => payload::encode(stamp, size)?,
            Encoding::Json => Bytes::from(payload::encode_json(stamp)),
        })
    }

    fn decode(self, bytes: &[u8]) -> Option<Stamp> {
        match self {
            Encoding::Binary(_) => payload::decode(bytes).ok(),
            Encoding::Json => payload::decode_json(bytes).ok(),
        }
    }
}

/// The publishing side of a flow: one client per topic.
#[derive(Debug, Clone)]
pub struct Publishers {
    /// Broker port (127.0.0.1) the publishers connect to.
    pub port: u16,
    /// Publisher `p` publishes to `topics[p]`.
    pub topics: Vec<String>,
    /// QoS of every publish.
    pub qos: QoS,
    /// Fixed rate per publisher, or flat out.
    pub pace: Pace,
    /// When each publisher stops: after a count, or a duration from the window's origin (so one
    /// second of warm-up plus the measured seconds covers the window).
    pub stop: Stop,
    /// Payload format.
    pub encoding: Encoding,
    /// Client id prefix, so two flows at once do not take over each other's sessions.
    pub id: String,
}

/// What the publishers did.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// Messages each publisher handed to its client (numbered `0..sent[p]`).
    pub sent: Vec<u64>,
    /// PUBACKs received (QoS 1), all publishers.
    pub acked: u64,
    /// PUBACKs received whose publish was sent inside the measured window.
    pub acked_in_window: u64,
    /// From the first publish to the last PUBACK (or the last publish at QoS 0).
    pub elapsed: Duration,
}

/// The subscribing side of a flow.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// Broker port (127.0.0.1) the subscriber connects to.
    pub port: u16,
    /// Filters of the outputs, subscribed at QoS 1.
    pub filters: Vec<String>,
    /// A filter whose messages are counted apart (a dead-letter topic), or none.
    pub dead_letters: Option<String>,
    /// Payload format of the outputs.
    pub encoding: Encoding,
    /// A topic whose publishes are the gateway's cloud batches: JSON arrays of
    /// `{"topic", "ts", "payload"}` elements, each payload an output.
    pub batch_topic: Option<String>,
}

/// What the subscriber saw.
#[derive(Debug, Clone)]
pub struct Received {
    /// Latency of outputs whose input was sent inside the window.
    pub latency: LatencyRecorder,
    /// Loss, duplicate and order accounting per publisher.
    pub tracker: DeliveryTracker,
    /// Outputs received inside the window (the rate's numerator).
    pub in_window: u64,
    /// Outputs received in all.
    pub total: u64,
    /// Messages on the dead-letter filter.
    pub dead_letters: u64,
    /// Messages on the output filters without a readable stamp.
    pub foreign: u64,
    /// Publishes received (a batch is one).
    pub publishes: u64,
    /// Their topic and payload bytes.
    pub bytes: u64,
    /// Their size in AWS IoT Core's billing units: each publish is metered in 5 KB steps of its
    /// topic plus payload (<https://aws.amazon.com/iot-core/pricing/additional-details/>).
    pub billed: u64,
    /// When the first and last stamped output arrived.
    pub first: Option<Instant>,
    /// See `first`.
    pub last: Option<Instant>,
}

/// The clock shared by one flow's clients.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Origin of the stamps' send times.
    pub origin: Instant,
    /// Start of the measured window (after the warm-up).
    pub start: Instant,
    /// End of the measured window.
    pub end: Instant,
}

impl Window {
    /// A window of `seconds` after one second of warm-up, starting now.
    pub fn after_warmup(seconds: u64) -> Window {
        let origin = Instant::now();
        let start = origin + Duration::from_secs(1);
        Window {
            origin,
            start,
            end: start + Duration::from_secs(seconds),
        }
    }

    fn contains(&self, at: Instant) -> bool {
        at >= self.start && at < self.end
    }
}

/// One flow's figures, as printed by the gateway benchmarks.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FlowOutcome {
    /// Outputs received per second inside the window.
    pub per_second: f64,
    /// Inputs acknowledged (PUBACK) per second inside the window; 0 at QoS 0.
    pub acked_per_second: f64,
    /// Outputs received inside the window.
    pub completed: u64,
    /// Outputs received in all, the tail after the window included: flat out, a path that falls
    /// behind delivers much of its output after the publishers stopped.
    pub received: u64,
    /// Messages on the dead-letter topic.
    pub dead_letters: u64,
    /// Publishes that carried the outputs (fewer than the outputs when they come in batches).
    pub publishes: u64,
    /// Their topic and payload bytes.
    pub bytes: u64,
    /// Their AWS IoT Core billing units (5 KB steps per publish).
    pub billed: u64,
    /// Latency from publish to output.
    pub latency: LatencySummary,
    /// Delivery accounting against what was sent.
    pub tally: DeliveryTally,
}

/// Connects a subscriber and waits for its SUBACKs; `session` keeps a persistent session under a
/// fixed client id (`clean_session = false`), so a broker with persistence queues for it while it
/// is away.
pub async fn subscribe(
    sub: &Subscriber,
    id: &str,
    session: bool,
) -> anyhow::Result<(AsyncClient, EventLoop)> {
    let mut opts = options(id, sub.port);
    opts.set_clean_session(!session);
    let (client, mut events) = event_loop(opts);
    let filters: Vec<&String> = sub.filters.iter().chain(&sub.dead_letters).collect();
    for f in &filters {
        client.subscribe(f.as_str(), QoS::AtLeastOnce).await?;
    }
    let mut subacks = 0;
    let setup = async {
        while subacks < filters.len() {
            if let Event::Incoming(Packet::SubAck(_)) = events.poll().await? {
                subacks += 1;
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), setup)
        .await
        .context("no SUBACK within 10 s")??;
    Ok((client, events))
}

/// Receives outputs until `expect` stamped outputs arrived or `until` passed.
pub async fn receive(
    sub: &Subscriber,
    events: &mut EventLoop,
    publishers: usize,
    window: Window,
    expect: Option<u64>,
    until: Instant,
) -> anyhow::Result<Received> {
    let mut r = Received {
        latency: LatencyRecorder::new(),
        tracker: DeliveryTracker::new(publishers),
        in_window: 0,
        total: 0,
        dead_letters: 0,
        foreign: 0,
        publishes: 0,
        bytes: 0,
        billed: 0,
        first: None,
        last: None,
    };
    let dead_prefix = sub
        .dead_letters
        .as_deref()
        .map(|f| f.split('+').next().unwrap_or(f));
    while expect.is_none_or(|n| r.total < n) {
        let Ok(event) = tokio::time::timeout_at(until.into(), events.poll()).await else {
            break;
        };
        let Event::Incoming(Packet::Publish(p)) = event? else {
            continue;
        };
        let now = Instant::now();
        if dead_prefix.is_some_and(|d| p.topic.starts_with(d)) {
            r.dead_letters += 1;
            continue;
        }
        let size = (p.topic.len() + p.payload.len()) as u64;
        r.publishes += 1;
        r.bytes += size;
        r.billed += size.div_ceil(5 * 1024).max(1);
        if sub.batch_topic.as_deref() == Some(p.topic.as_str()) {
            let elements: Vec<serde_json::Value> =
                serde_json::from_slice(&p.payload).unwrap_or_default();
            for e in elements {
                r.output(
                    sub.encoding,
                    e["payload"].to_string().as_bytes(),
                    now,
                    window,
                );
            }
        } else {
            r.output(sub.encoding, &p.payload, now, window);
        }
    }
    Ok(r)
}

impl Received {
    /// The flow's figures: `per_second` outputs and `acked_per_second` inputs acknowledged a
    /// second, `completed` outputs counted in the rate, the accounting against `sent`.
    pub fn outcome(
        &self,
        per_second: f64,
        acked_per_second: f64,
        completed: u64,
        sent: &[u64],
    ) -> FlowOutcome {
        FlowOutcome {
            per_second,
            acked_per_second,
            completed,
            received: self.total,
            dead_letters: self.dead_letters,
            publishes: self.publishes,
            bytes: self.bytes,
            billed: self.billed,
            latency: self.latency.summary(),
            tally: self.tracker.tally(sent),
        }
    }

    /// One output that arrived at `now`.
    fn output(&mut self, encoding: Encoding, payload: &[u8], now: Instant, window: Window) {
        let Some(stamp) = encoding.decode(payload) else {
            self.foreign += 1;
            return;
        };
        if self.tracker.observe(&stamp).is_err() {
            self.foreign += 1;
            return;
        }
        self.total += 1;
        self.first.get_or_insert(now);
        self.last = Some(now);
        if window.contains(now) {
            self.in_window += 1;
        }
        let sent = window.origin + Duration::from_nanos(stamp.sent_ns);
        if window.contains(sent) {
            self.latency.record(now.saturating_duration_since(sent));
        }
    }
}

/// Runs the publishers to their stop, then waits for their PUBACKs.
pub async fn publish(p: &Publishers, window: Window) -> anyhow::Result<Published> {
    let mut tasks = Vec::new();
    for (index, topic) in p.topics.iter().enumerate() {
        let (p, topic) = (p.clone(), topic.clone());
        tasks.push(tokio::spawn(async move {
            one_publisher(&p, index, topic, window).await
        }));
    }
    let mut out = Published::default();
    for t in tasks {
        let one = t.await??;
        out.sent.extend(one.sent);
        out.acked += one.acked;
        out.acked_in_window += one.acked_in_window;
        out.elapsed = out.elapsed.max(one.elapsed);
    }
    Ok(out)
}

/// One publisher client: publishes `topic` to its stop, then waits for its PUBACKs.
async fn one_publisher(
    p: &Publishers,
    index: usize,
    topic: String,
    window: Window,
) -> anyhow::Result<Published> {
    let (client, mut events) = event_loop(options(&format!("{}-pub-{index}", p.id), p.port));
    let acked = Arc::new(AtomicU64::new(0));
    let acked_in_window = Arc::new(AtomicU64::new(0));
    // Send time of each publish in flight, in order. MQTT does not require PUBACKs in order, but
    // rumqttd and mosquitto acknowledge one connection's publishes in order, so the oldest one is the
    // one a PUBACK answers; were it not so, only the window's edge would be off by a message or two.
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let poll = {
        let (acked, acked_in_window) = (acked.clone(), acked_in_window.clone());
        tokio::spawn(async move {
            let mut last_ack = None;
            while let Ok(event) = events.poll().await {
                if let Event::Incoming(Packet::PubAck(_)) = event {
                    acked.fetch_add(1, Ordering::Relaxed);
                    last_ack = Some(Instant::now());
                    if sent_rx.recv().await.is_some_and(|at| window.contains(at)) {
                        acked_in_window.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            last_ack
        })
    };
    let started = Instant::now();
    let mut n = 0u64;
    loop {
        // The event loop ends only when the connection fails; publishing on would fill the
        // request queue and then wait forever.
        anyhow::ensure!(
            !poll.is_finished(),
            "publisher {index} lost its connection to 127.0.0.1:{}",
            p.port
        );
        match p.stop {
            Stop::Messages(count) if n >= count => break,
            Stop::Duration(d) if Instant::now() >= window.origin + d => break,
            _ => {}
        }
        if let Pace::PerSecond(rate) = p.pace {
            let due = window.origin + Duration::from_secs_f64(n as f64 / f64::from(rate));
            tokio::time::sleep_until(due.into()).await;
        }
        let stamp = Stamp {
            publisher: u32::try_from(index).unwrap_or(u32::MAX),
            seq: n,
            sent_ns: nanos_since(window.origin),
        };
        let body = p.encoding.encode(stamp)?;
        let at = Instant::now();
        client
            .publish_bytes(topic.as_str(), p.qos, false, body)
            .await?;
        if p.qos != QoS::AtMostOnce {
            // The receiver lives as long as the poll task; once it is gone no ack is counted anyway.
            let _ = sent_tx.send(at);
        }
        n += 1;
    }
    let mut elapsed = started.elapsed();
    if p.qos != QoS::AtMostOnce {
        let deadline = Instant::now() + ACK_LIMIT;
        while acked.load(Ordering::Relaxed) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let _ = client.disconnect().await;
    // The poll task ends when the connection closes; give it a moment, then stop it anyway.
    let last_ack = match tokio::time::timeout(Duration::from_secs(1), poll).await {
        Ok(Ok(last)) => last,
        _ => None,
    };
    if let Some(last) = last_ack {
        elapsed = last.saturating_duration_since(started);
    }
    Ok(Published {
        sent: vec![n],
        acked: acked.load(Ordering::Relaxed),
        acked_in_window: acked_in_window.load(Ordering::Relaxed),
        elapsed,
    })
}

/// Runs a whole flow: subscribe, publish for the window (after one second of warm-up), listen for
/// the tail, and tally.
pub async fn run(pubs: &Publishers, sub: &Subscriber, seconds: u64) -> anyhow::Result<FlowOutcome> {
    run_timed(pubs, sub, seconds, |_| {}).await
}

/// [`run`], telling `started` the window once the subscriber is ready.
async fn run_timed(
    pubs: &Publishers,
    sub: &Subscriber,
    seconds: u64,
    started: impl FnOnce(Window),
) -> anyhow::Result<FlowOutcome> {
    let (client, mut events) = subscribe(sub, &format!("{}-sub", pubs.id), false).await?;
    let window = Window::after_warmup(seconds);
    started(window);
    let publishing = {
        let pubs = pubs.clone();
        tokio::spawn(async move { publish(&pubs, window).await })
    };
    let received = receive(
        sub,
        &mut events,
        pubs.topics.len(),
        window,
        None,
        window.end + TAIL,
    )
    .await?;
    let published = publishing.await??;
    let _ = client.disconnect().await;
    let secs = seconds.max(1) as f64;
    Ok(received.outcome(
        received.in_window as f64 / secs,
        published.acked_in_window as f64 / secs,
        received.in_window,
        &published.sent,
    ))
}

/// The gateway's CPU time between `start` and `end` (read from /proc at both instants), in a task
/// of its own so the load goes on meanwhile; `None` if /proc could not be read.
pub fn cpu_between(
    gateway: &RunningPeer,
    start: Instant,
    end: Instant,
) -> tokio::task::JoinHandle<Option<Duration>> {
    let pid = gateway.pid();
    tokio::spawn(async move {
        // Linux pids fit in i32 (pid_max is at most 2^22).
        let process = procfs::process::Process::new(pid as i32).ok()?;
        tokio::time::sleep_until(start.into()).await;
        let before = crate::peer::cpu_time(&process).ok()?;
        tokio::time::sleep_until(end.into()).await;
        Some(crate::peer::cpu_time(&process).ok()?.saturating_sub(before))
    })
}

/// grove-bench's own CPU time so far: the rumqttc clients' (and the harness's bookkeeping).
pub fn own_cpu() -> Option<Duration> {
    procfs::process::Process::myself()
        .and_then(|me| crate::peer::cpu_time(&me))
        .ok()
}

/// What a flow cost: the gateway's CPU per output inside the window, and the load clients' CPU
/// per output over the whole flow (µs).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Cost {
    /// Gateway CPU time in the window / outputs received in the window.
    pub gateway_us: Option<f64>,
    /// Load clients' CPU time over the flow (setup, warm-up, window, tail) / outputs received in
    /// all: rumqttc: grove-bench's own process; libmosquitto: the client process's getrusage.
    pub client_us: Option<f64>,
}

impl Cost {
    fn per(cpu: Option<Duration>, count: u64) -> Option<f64> {
        let cpu = cpu?;
        (count > 0).then(|| cpu.as_secs_f64() * 1e6 / count as f64)
    }

    /// From the gateway's CPU over `in_window` outputs and the clients' over `total`.
    pub fn new(
        gateway: Option<Duration>,
        in_window: u64,
        client: Option<Duration>,
        total: u64,
    ) -> Self {
        Cost {
            gateway_us: Self::per(gateway, in_window),
            client_us: Self::per(client, total),
        }
    }
}

/// Runs a flow through `gateway` with one client library, its window's gateway CPU measured
/// (see [`Cost`]). The libmosquitto client ([`crate::libmosq`]) runs the same load: the same
/// topics, pace, QoS and payload format, one second of warm-up before the window, its deliveries
/// accounted by the same code.
pub async fn measure(
    gateway: &RunningPeer,
    pubs: &Publishers,
    sub: &Subscriber,
    seconds: u64,
    client: Client,
) -> anyhow::Result<(FlowOutcome, Cost)> {
    let mut gateway_cpu = None;
    match client {
        Client::Rumqttc => {
            let before = own_cpu();
            let outcome = run_timed(pubs, sub, seconds, |w| {
                gateway_cpu = Some(cpu_between(gateway, w.start, w.end));
            })
            .await?;
            let clients = own_cpu().zip(before).map(|(after, before)| after - before);
            let gateway = match gateway_cpu {
                Some(task) => task.await?,
                None => None,
            };
            let cost = Cost::new(gateway, outcome.completed, clients, outcome.received);
            Ok((outcome, cost))
        }
        Client::Libmosquitto => {
            let warmup = Duration::from_secs(1);
            let measured = Duration::from_secs(seconds);
            let (payload, json) = match sub.encoding {
                Encoding::Binary(size) => (size, false),
                Encoding::Json => (payload::HEADER_LEN, true),
            };
            let spec = LoadSpec {
                publishers: u32::try_from(pubs.topics.len())?,
                subscribers: 1,
                qos: pubs.qos,
                payload,
                pace: pubs.pace,
                stop: pubs.stop,
                publish_limit: warmup + measured + Duration::from_secs(60),
            };
            let routing = Routing {
                topic: Some(pubs.topics.join(",")),
                filters: sub.filters.clone(),
                dead: sub.dead_letters.clone(),
                sub_qos: Some(QoS::AtLeastOnce),
                json,
                window_after_start: Some(warmup..warmup + measured),
                ..Routing::default()
            };
            let phase = libmosq::run_phase_with(gateway.port(), &pubs.id, &spec, &routing, || {
                let start = Instant::now() + warmup;
                gateway_cpu = Some(cpu_between(gateway, start, start + measured));
            })
            .await?;
            let gateway = match gateway_cpu {
                Some(task) => task.await?,
                None => None,
            };
            let o = &phase.outcome;
            let received = o.delivered.saturating_sub(phase.dead + o.foreign);
            let secs = seconds.max(1) as f64;
            let outcome = FlowOutcome {
                per_second: phase.in_window as f64 / secs,
                // The client counts PUBACKs over the whole publishing time, not per window.
                acked_per_second: if o.sent > 0 {
                    o.acked as f64 * o.publish_rate / o.sent as f64
                } else {
                    0.0
                },
                completed: phase.in_window,
                received,
                dead_letters: phase.dead,
                // One output per publish (this client reads no batches); its bytes and billing
                // are not counted: only the cloud-batch tables show them, and those are measured
                // with the rumqttc subscriber.
                publishes: received,
                bytes: 0,
                billed: 0,
                latency: o.latency,
                tally: o.tally,
            };
            let cost = Cost::new(gateway, phase.in_window, Some(phase.cpu), received);
            Ok((outcome, cost))
        }
    }
}

/// One row of a flow table: a scenario through one path of the gateway.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FlowRow {
    /// The load, e.g. "1,000 events/s (4 x 250/s)".
    pub scenario: String,
    /// The path through the gateway, e.g. "function echo" or "rule republish (baseline)".
    pub path: String,
    /// The load clients' library.
    pub client: Client,
    /// The figures.
    pub outcome: FlowOutcome,
    /// CPU per output, when measured.
    pub cost: Cost,
    /// Gateway resident memory after the scenario (KiB).
    pub rss_kib: Option<u64>,
}

/// A Markdown table of flow rows.
pub fn markdown(rows: &[FlowRow]) -> String {
    let mut out = String::from(
        "| scenario | path | client | outputs/s | inputs acked/s | outputs (all) | p50 | p99 | p999 | max | missing | dup | reordered | dead letters | gateway CPU µs/output | clients' CPU µs/output | gateway RSS |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let (o, l) = (&r.outcome, &r.outcome.latency);
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.scenario,
            r.path,
            r.client.name(),
            o.per_second,
            o.acked_per_second,
            o.received,
            ms(l.p50_us),
            ms(l.p99_us),
            ms(l.p999_us),
            ms(l.max_us),
            o.tally.lost,
            o.tally.duplicates,
            o.tally.out_of_order,
            o.dead_letters,
            micros(r.cost.gateway_us),
            micros(r.cost.client_us),
            mib(r.rss_kib),
        ));
    }
    out
}

/// Microseconds as milliseconds with two decimals.
pub fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

/// Microseconds with one decimal, or `-` when unknown.
pub fn micros(us: Option<f64>) -> String {
    us.map_or("-".to_owned(), |us| format!("{us:.1}"))
}

/// KiB as MiB with one decimal, or `-` when unknown.
pub fn mib(kib: Option<u64>) -> String {
    kib.map_or("-".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

/// `a / b` with two decimals, or `-` when `b` is zero.
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes a stamp, decodes it with `read` and expects `same` to say whether it came back.
    fn check_encoding(write: Encoding, read: Encoding, same: bool) {
        let stamp = Stamp {
            publisher: 2,
            seq: 9,
            sent_ns: 123_456,
        };
        let bytes = write.encode(stamp).expect("encodable");
        let back = read.decode(&bytes);
        assert_eq!(back == Some(stamp), same, "{write:?} read as {read:?}");
    }

    #[test]
    fn encodings_round_trip_and_do_not_mix() {
        check_encoding(Encoding::Binary(64), Encoding::Binary(64), true);
        check_encoding(Encoding::Json, Encoding::Json, true);
        check_encoding(Encoding::Json, Encoding::Binary(64), false);
        check_encoding(Encoding::Binary(64), Encoding::Json, false);
    }

    #[test]
    fn window_is_half_open() {
        let w = Window::after_warmup(2);
        let cases = [
            (w.origin, false),
            (w.start - Duration::from_nanos(1), false),
            (w.start, true),
            (w.end - Duration::from_nanos(1), true),
            (w.end, false),
        ];
        for (at, inside) in cases {
            assert_eq!(w.contains(at), inside, "{:?} after origin", at - w.origin);
        }
    }

    #[test]
    fn formatting() {
        assert_eq!(ratio(3.0, 2.0), "1.50");
        assert_eq!(ratio(1.0, 0.0), "-");
        assert_eq!(ms(1_234), "1.23 ms");
        assert_eq!(mib(Some(2_048)), "2.0 MiB");
        assert_eq!(mib(None), "-");
    }
}
