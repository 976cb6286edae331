//! The second load client: `bench/c/mqtt_load.c` on libmosquitto, so the grove/mosquitto ratio
//! does not rest on rumqttc alone. build.rs compiles it into an executable of its own; each phase
//! runs it as a child process, so its CPU time is its own (it reports `getrusage(RUSAGE_SELF)`),
//! apart from the broker's and from grove-bench's.
//!
//! The protocol is line-based text (the C file's head comment is the reference): grove-bench
//! writes one `phase key=value ...` line; the client connects its subscribers (SUBACK) and then its
//! publishers (CONNACK) and answers `ready`; grove-bench writes `start`; after the phase (publishing,
//! PUBACKs, the drain, DISCONNECTs) the client writes its CPU time, one line per publisher and per
//! subscriber, one `d SUB PUB SEQ LATENCY_NS` line per benchmark delivery and `done`. The deliveries
//! go through the same accounting as rumqttc's ([`SubscriberReport::account`], [`load::outcome`]).
//! `error MESSAGE` at any point ends the phase with that message.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use rumqttc::QoS;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

use crate::load::{self, LoadSpec, Pace, PhaseOutcome, PublisherTotals, Stop, SubscriberReport};
use crate::payload::Stamp;

/// The client executable, built by build.rs from `c/mqtt_load.c`.
pub const EXECUTABLE: &str = env!("GROVE_BENCH_MQTT_LOAD");

/// Beyond the client's own limits (setup, publishing, PUBACKs, drain), how long grove-bench waits
/// for its answers before it gives up on it.
const MARGIN: Duration = Duration::from_secs(15);

/// A phase run by the libmosquitto client.
#[derive(Debug, Clone)]
pub struct ClientPhase {
    /// Its figures, accounted like the rumqttc client's.
    pub outcome: PhaseOutcome,
    /// CPU time (user + system) of the client process, up to the end of the phase.
    pub cpu: Duration,
    /// Deliveries received inside [`Routing::window`] (all of them without one).
    pub in_window: u64,
    /// Shadow mode: updates answered on `update/rejected`.
    pub rejected: u64,
    /// Messages on [`Routing::dead`], all subscribers.
    pub dead: u64,
}

/// Where a phase's messages go and what they carry, for the gateway benchmarks; the default is
/// the broker benchmark's load (`bench/{id}/{p}` to `bench/{id}/#`, the binary header).
#[derive(Debug, Clone, Default)]
pub struct Routing {
    /// Publisher `p`'s topic, `{p}` and `{id}` (the phase id) replaced.
    pub topic: Option<String>,
    /// The subscribers' filters (`{id}` replaced).
    pub filters: Vec<String>,
    /// A filter subscribed besides, whose messages are counted apart (dead letters).
    pub dead: Option<String>,
    /// QoS of the subscriptions, when not the publishes'.
    pub sub_qos: Option<QoS>,
    /// Send grove-bench's JSON reading ([`crate::payload::encode_json`]'s fields) instead of the
    /// binary header.
    pub json: bool,
    /// Shadow mode: each publisher is a Device Shadow client of this many things of its own (0:
    /// one shared thing); see the C file's head comment.
    pub shadow_things: Option<u32>,
    /// Most messages per publisher unanswered (default [`load::REQUEST_CAPACITY`]).
    pub window: Option<usize>,
    /// The measured part of the phase, after the start signal: latencies are recorded for
    /// messages sent inside it, and deliveries received inside it counted in
    /// [`ClientPhase::in_window`]; `None`: the whole phase.
    pub window_after_start: Option<std::ops::Range<Duration>>,
}

impl Routing {
    /// The `key=value` words the broker benchmark's default leaves out.
    fn words(&self) -> String {
        let mut out = String::new();
        let mut add = |key: &str, value: &str| out.push_str(&format!(" {key}={value}"));
        if let Some(topic) = &self.topic {
            add("topic", topic);
        }
        if !self.filters.is_empty() {
            add("filter", &self.filters.join(","));
        }
        if let Some(dead) = &self.dead {
            add("dead", dead);
        }
        if let Some(qos) = self.sub_qos {
            add("sub_qos", if qos == QoS::AtMostOnce { "0" } else { "1" });
        }
        if self.json {
            add("encoding", "json");
        }
        if let Some(things) = self.shadow_things {
            add("mode", "shadow");
            add("things", &things.to_string());
        }
        out
    }
}

/// The `phase` line that tells the client what to run.
pub fn phase_line(port: u16, phase_id: &str, spec: &LoadSpec, routing: &Routing) -> String {
    let (messages, duration_ms) = match spec.stop {
        Stop::Messages(count) => (count, 0),
        // The client takes whole milliseconds; at least 1, since 0 means "by message count".
        Stop::Duration(duration) => (0, millis(duration).max(1)),
    };
    let rate = match spec.pace {
        Pace::FlatOut => 0,
        Pace::PerSecond(rate) => rate.max(1),
    };
    let qos = u8::from(spec.qos != QoS::AtMostOnce);
    format!(
        "phase host=127.0.0.1 port={port} id={phase_id} publishers={} subscribers={} qos={qos} \
         payload={} rate={rate} messages={messages} duration_ms={duration_ms} limit_ms={} \
         window={} protocol=4 quiet_ms={} drain_ms={} setup_ms={}{}\n",
        spec.publishers,
        spec.subscribers,
        spec.payload,
        millis(spec.publish_limit),
        routing.window.unwrap_or(load::REQUEST_CAPACITY),
        millis(load::QUIET_PERIOD),
        millis(load::DRAIN_LIMIT),
        millis(load::SETUP_TIMEOUT),
        routing.words(),
    )
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Runs one phase with the libmosquitto client against the broker on 127.0.0.1:`port`.
pub async fn run_phase(
    port: u16,
    phase_id: &str,
    spec: &LoadSpec,
    routing: &Routing,
) -> anyhow::Result<ClientPhase> {
    run_phase_with(port, phase_id, spec, routing, || {}).await
}

/// [`run_phase`], calling `started` right after the start signal is sent (the origin of the
/// client's times and of [`Routing::window_after_start`]).
pub async fn run_phase_with(
    port: u16,
    phase_id: &str,
    spec: &LoadSpec,
    routing: &Routing,
    started: impl FnOnce(),
) -> anyhow::Result<ClientPhase> {
    let mut child = Command::new(EXECUTABLE)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!("cannot run the libmosquitto load client `{EXECUTABLE}` (rebuild grove-bench)")
        })?;
    let (Some(mut stdin), Some(stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        bail!("the libmosquitto load client's stdio is not piped");
    };
    // Its stderr is read all along (a full pipe would block it) and shown with any failure.
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut lines = BufReader::new(stdout).lines();

    let result = async {
        stdin
            .write_all(phase_line(port, phase_id, spec, routing).as_bytes())
            .await
            .context("writing the phase to the libmosquitto client")?;
        match next_line(&mut lines, load::SETUP_TIMEOUT + MARGIN)
            .await?
            .as_deref()
        {
            Some("ready") => {}
            Some(other) => bail!("{}", unexpected(other, "ready")),
            None => bail!("the libmosquitto client ended before it was ready"),
        }
        stdin
            .write_all(b"start\n")
            .await
            .context("sending the start signal to the libmosquitto client")?;
        started();
        let limit = spec.publish_limit + 2 * load::DRAIN_LIMIT + MARGIN;
        let receivers = match routing.shadow_things {
            Some(_) => spec.publishers,
            None => spec.subscribers,
        };
        let mut results = Results::new(spec.publishers, receivers);
        results.window = routing.window_after_start.clone();
        while !results.is_done() {
            match next_line(&mut lines, limit).await? {
                Some(line) if line.starts_with("error ") => bail!("{}", unexpected(&line, "")),
                Some(line) => results.line(&line)?,
                None => bail!("the libmosquitto client ended before its results were complete"),
            }
        }
        results.finish()
    }
    .await;
    drop(stdin);
    let status = match result {
        Ok(_) => timeout(MARGIN, child.wait()).await.ok().transpose()?,
        Err(_) => stop(&mut child).await,
    };
    let stderr = timeout(Duration::from_secs(2), stderr)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let with_stderr = |error: anyhow::Error| {
        let status = status.map_or_else(|| "still running".to_owned(), |s| s.to_string());
        let stderr = stderr.trim();
        // The client's own error message is on both its stdout and stderr: show it once.
        if stderr.is_empty() || stderr == format!("mqtt_load: {error}") {
            error.context(format!("libmosquitto client ({status})"))
        } else {
            error.context(format!(
                "libmosquitto client ({status}), its stderr:\n{stderr}"
            ))
        }
    };
    let phase = result.map_err(with_stderr)?;
    match status {
        Some(status) if status.success() => Ok(phase),
        _ => Err(with_stderr(anyhow!("the client did not exit cleanly"))),
    }
}

/// Reaps the client after a failure: it exits by itself after an `error` line; otherwise, or if
/// it does not within a second, it is killed.
async fn stop(child: &mut Child) -> Option<std::process::ExitStatus> {
    if let Ok(Ok(status)) = timeout(Duration::from_secs(1), child.wait()).await {
        return Some(status);
    }
    let _ = child.start_kill();
    timeout(MARGIN, child.wait()).await.ok()?.ok()
}

async fn next_line(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    limit: Duration,
) -> anyhow::Result<Option<String>> {
    timeout(limit, lines.next_line())
        .await
        .map_err(|_| anyhow!("the libmosquitto client did not answer within {limit:?}"))?
        .context("reading the libmosquitto client's output")
}

/// The message for a line that is not the one expected: the client's own error, or the line.
fn unexpected(line: &str, expected: &str) -> String {
    match line.strip_prefix("error ") {
        Some(message) => message.to_owned(),
        None => format!("expected `{expected}` from the libmosquitto client, got `{line}`"),
    }
}

/// The client's results, line by line.
#[derive(Debug)]
pub struct Results {
    cpu: Option<Duration>,
    /// (sent, acked, finished) per publisher, in ns after the start.
    publishers: Vec<Option<(u64, u64, u64)>>,
    subscribers: Vec<SubscriberReport>,
    /// Whether each subscriber's line came.
    seen_subscribers: Vec<bool>,
    /// `done`'s drain_timed_out, once it came.
    done: Option<bool>,
    /// See [`Routing::window_after_start`].
    pub window: Option<std::ops::Range<Duration>>,
    in_window: u64,
    rejected: u64,
    dead: u64,
}

impl Results {
    /// Expects the results of `publishers` publishers and `subscribers` subscribers.
    pub fn new(publishers: u32, subscribers: u32) -> Self {
        Self {
            cpu: None,
            publishers: vec![None; publishers as usize],
            subscribers: (0..subscribers)
                .map(|_| SubscriberReport::new(publishers as usize))
                .collect(),
            seen_subscribers: vec![false; subscribers as usize],
            done: None,
            window: None,
            in_window: 0,
            rejected: 0,
            dead: 0,
        }
    }

    /// Whether the `done` line came.
    pub fn is_done(&self) -> bool {
        self.done.is_some()
    }

    /// Takes one line of results.
    pub fn line(&mut self, line: &str) -> anyhow::Result<()> {
        let bad = || anyhow!("malformed line from the libmosquitto client: `{line}`");
        let mut words = line.split(' ');
        match words.next() {
            Some("d") => {
                let mut number = || -> anyhow::Result<u64> {
                    words.next().and_then(|w| w.parse().ok()).ok_or_else(bad)
                };
                let (sub, publisher, seq, latency) = (number()?, number()?, number()?, number()?);
                // The send time after the start (the client's lines have it; a missing one
                // counts as inside any window).
                let sent = words
                    .next()
                    .map(str::parse::<u64>)
                    .transpose()
                    .map_err(|_| bad())?;
                let (sent, latency) = (
                    sent.map(Duration::from_nanos),
                    Duration::from_nanos(latency),
                );
                let window = self.window.clone();
                let measured = match (&window, sent) {
                    (Some(w), Some(sent)) => w.contains(&sent),
                    _ => true,
                };
                if window.is_none_or(|w| sent.is_none_or(|s| w.contains(&(s + latency)))) {
                    self.in_window += 1;
                }
                let report = self.subscriber(sub).ok_or_else(bad)?;
                let publisher = u32::try_from(publisher).map_err(|_| bad())?;
                let stamp = Stamp {
                    publisher,
                    seq,
                    sent_ns: 0,
                };
                report.account(&stamp, measured.then_some(latency));
            }
            Some("cpu") => {
                let fields = fields(words).ok_or_else(bad)?;
                let us = |key| field(&fields, key).ok_or_else(bad);
                self.cpu = Some(Duration::from_micros(us("user_us")? + us("sys_us")?));
            }
            Some("pub") => {
                let index = words.next().and_then(|w| w.parse::<usize>().ok());
                let fields = fields(words).ok_or_else(bad)?;
                let value = |key| field(&fields, key).ok_or_else(bad);
                let entry = (value("sent")?, value("acked")?, value("finished_ns")?);
                self.rejected += field(&fields, "rejected").unwrap_or(0);
                let slot = index
                    .and_then(|i| self.publishers.get_mut(i))
                    .ok_or_else(bad)?;
                *slot = Some(entry);
            }
            Some("sub") => {
                let index = words.next().and_then(|w| w.parse::<u64>().ok());
                let fields = fields(words).ok_or_else(bad)?;
                let value = |key| field(&fields, key).ok_or_else(bad);
                let (received, foreign) = (value("received")?, value("foreign")?);
                self.dead += field(&fields, "dead").unwrap_or(0);
                let last = match fields.get("last_ns") {
                    Some(&"none") => None,
                    Some(_) => Some(Duration::from_nanos(value("last_ns")?)),
                    None => return Err(bad()),
                };
                let index = index.ok_or_else(bad)?;
                let report = self.subscriber(index).ok_or_else(bad)?;
                report.received = received;
                // Stamps of unknown publishers, if any came first, stay counted as foreign.
                report.foreign += foreign;
                report.last_delivery = last;
                if let Some(seen) = usize::try_from(index)
                    .ok()
                    .and_then(|i| self.seen_subscribers.get_mut(i))
                {
                    *seen = true;
                }
            }
            Some("done") => {
                let fields = fields(words).ok_or_else(bad)?;
                self.done = Some(field(&fields, "drain_timed_out").ok_or_else(bad)? != 0);
            }
            _ => return Err(bad()),
        }
        Ok(())
    }

    fn subscriber(&mut self, index: u64) -> Option<&mut SubscriberReport> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.subscribers.get_mut(i))
    }

    /// The phase's outcome and the client's CPU time, once every line came.
    pub fn finish(self) -> anyhow::Result<ClientPhase> {
        let missing = |what: &str| anyhow!("the libmosquitto client's results lack {what}");
        let cpu = self.cpu.ok_or_else(|| missing("its CPU time"))?;
        if let Some(index) = self.seen_subscribers.iter().position(|seen| !seen) {
            return Err(missing(&format!("subscriber {index}")));
        }
        let mut totals = PublisherTotals {
            sent: Vec::new(),
            acked: 0,
            publishing: Duration::ZERO,
        };
        for (index, publisher) in self.publishers.iter().enumerate() {
            let (sent, acked, finished) =
                publisher.ok_or_else(|| missing(&format!("publisher {index}")))?;
            totals.sent.push(sent);
            totals.acked += acked;
            totals.publishing = totals.publishing.max(Duration::from_nanos(finished));
        }
        let drain_timed_out = self.done.ok_or_else(|| missing("`done`"))?;
        // The client's times are measured from the start signal.
        let outcome = load::outcome(&totals, &self.subscribers, Duration::ZERO, drain_timed_out);
        Ok(ClientPhase {
            outcome,
            cpu,
            in_window: self.in_window,
            rejected: self.rejected,
            dead: self.dead,
        })
    }
}

/// `key=value` words; None if one is not.
fn fields<'a>(words: impl Iterator<Item = &'a str>) -> Option<HashMap<&'a str, &'a str>> {
    words.map(|word| word.split_once('=')).collect()
}

fn field(fields: &HashMap<&str, &str>, key: &str) -> Option<u64> {
    fields.get(key)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(pace: Pace, stop: Stop, qos: QoS) -> LoadSpec {
        LoadSpec {
            publishers: 2,
            subscribers: 3,
            qos,
            payload: 64,
            pace,
            stop,
            publish_limit: Duration::from_secs(60),
        }
    }

    #[test]
    fn phase_lines() {
        assert_eq!(
            phase_line(
                1883,
                "m-0-max-q1-64",
                &spec(Pace::FlatOut, Stop::Messages(40), QoS::AtLeastOnce),
                &Routing::default(),
            ),
            "phase host=127.0.0.1 port=1883 id=m-0-max-q1-64 publishers=2 subscribers=3 qos=1 \
             payload=64 rate=0 messages=40 duration_ms=0 limit_ms=60000 window=100 protocol=4 \
             quiet_ms=2000 drain_ms=30000 setup_ms=10000\n"
        );
        let line = phase_line(
            9,
            "x",
            &spec(
                Pace::PerSecond(250),
                Stop::Duration(Duration::from_micros(1500)),
                QoS::AtMostOnce,
            ),
            &Routing::default(),
        );
        assert!(
            line.contains(" qos=0 ") && line.contains(" rate=250 messages=0 duration_ms=1 "),
            "{line}"
        );
        // Less than a millisecond still means "by duration".
        let line = phase_line(
            9,
            "x",
            &spec(
                Pace::FlatOut,
                Stop::Duration(Duration::from_micros(10)),
                QoS::AtMostOnce,
            ),
            &Routing::default(),
        );
        assert!(line.contains(" messages=0 duration_ms=1 "), "{line}");
        // A gateway benchmark's routing: the shadow mode, JSON readings, other topics.
        let routing = Routing {
            topic: Some("sensors/d{p}/t".into()),
            filters: vec!["alerts/#".into(), "x/{id}".into()],
            dead: Some("$grove/functions/+/dlq".into()),
            sub_qos: Some(QoS::AtLeastOnce),
            json: true,
            shadow_things: Some(20),
            window: Some(10),
            window_after_start: None,
        };
        let line = phase_line(
            9,
            "x",
            &spec(Pace::FlatOut, Stop::Messages(1), QoS::AtMostOnce),
            &routing,
        );
        assert!(
            line.ends_with(
                " window=10 protocol=4 quiet_ms=2000 drain_ms=30000 setup_ms=10000 \
                 topic=sensors/d{p}/t filter=alerts/#,x/{id} dead=$grove/functions/+/dlq \
                 sub_qos=1 encoding=json mode=shadow things=20\n"
            ),
            "{line}"
        );
    }

    /// Feeds lines to the results of 2 publishers and 2 subscribers.
    fn feed(lines: &[&str]) -> anyhow::Result<ClientPhase> {
        let mut results = Results::new(2, 2);
        for line in lines {
            results.line(line)?;
        }
        assert!(results.is_done() || !lines.iter().any(|l| l.starts_with("done")));
        results.finish()
    }

    #[test]
    fn results_merge_into_one_outcome() {
        let phase = feed(&[
            "cpu user_us=1500 sys_us=2500",
            "pub 0 sent=2 acked=2 finished_ns=500000000",
            "pub 1 sent=2 acked=1 finished_ns=1000000000",
            // Subscriber 0 also received one payload without the benchmark header.
            "sub 0 received=6 foreign=1 last_ns=2000000000",
            "sub 1 received=4 foreign=0 last_ns=1000000000",
            // Subscriber 0: publisher 0 twice (one duplicate), publisher 1 out of order.
            "d 0 0 0 100000",
            "d 0 0 1 200000",
            "d 0 0 1 300000",
            "d 0 1 1 400000",
            "d 0 1 0 500000",
            // Subscriber 1: lost publisher 0's seq 1; a stamp of an unknown publisher is foreign.
            "d 1 0 0 1000000",
            "d 1 1 0 2000000",
            "d 1 1 1 3000000",
            "d 1 7 0 3000000",
            "done drain_timed_out=0",
        ])
        .expect("complete results");
        assert_eq!(phase.cpu, Duration::from_millis(4));
        let o = &phase.outcome;
        assert_eq!((o.sent, o.acked, o.delivered, o.foreign), (4, 3, 10, 2));
        // 4 messages per second of publishing (the slower publisher took 1 s).
        assert_eq!(o.publish_rate, 4.0);
        // 10 deliveries, the last one 2 s after the start.
        assert_eq!((o.elapsed_s, o.throughput), (2.0, 5.0));
        assert_eq!((o.tally.expected, o.tally.unique, o.tally.lost), (8, 7, 1));
        assert_eq!((o.tally.duplicates, o.tally.out_of_order), (1, 1));
        assert_eq!(o.latency.samples, 8);
        assert_eq!((o.latency.p50_us, o.latency.max_us), (400, 3001));
        assert!(!o.drain_timed_out);
    }

    #[test]
    fn a_window_times_only_what_was_sent_in_it_and_counts_what_arrived_in_it() {
        let mut results = Results::new(1, 1);
        results.window = Some(Duration::from_secs(1)..Duration::from_secs(2));
        for line in [
            "cpu user_us=1 sys_us=1",
            "pub 0 sent=4 acked=3 rejected=1 finished_ns=2500000000",
            "sub 0 received=6 foreign=0 dead=2 last_ns=2600000000",
            // Sent in the warm-up, received in the window: counted, not timed.
            "d 0 0 0 700000000 500000000",
            // Sent and received in the window: both.
            "d 0 0 1 5000000 1200000000",
            // Sent in the window, received after it: timed, not counted.
            "d 0 0 2 900000000 1900000000",
            // After the window.
            "d 0 0 3 1000000 2100000000",
            "done drain_timed_out=0",
        ] {
            results.line(line).expect(line);
        }
        let phase = results.finish().expect("complete results");
        assert_eq!((phase.in_window, phase.rejected, phase.dead), (2, 1, 2));
        let o = &phase.outcome;
        assert_eq!(o.tally.unique, 4);
        assert_eq!(o.latency.samples, 2);
        // The histogram keeps three significant digits.
        assert!(
            (899_000..=901_000).contains(&o.latency.max_us),
            "{:?}",
            o.latency
        );
    }

    #[test]
    fn results_without_deliveries() {
        let phase = feed(&[
            "cpu user_us=0 sys_us=10",
            "pub 0 sent=0 acked=0 finished_ns=0",
            "pub 1 sent=0 acked=0 finished_ns=0",
            "sub 0 received=0 foreign=0 last_ns=none",
            "sub 1 received=0 foreign=0 last_ns=none",
            "done drain_timed_out=1",
        ])
        .expect("complete results");
        let o = &phase.outcome;
        assert_eq!((o.delivered, o.throughput, o.elapsed_s), (0, 0.0, 0.0));
        assert!(o.drain_timed_out);
    }

    /// Feeds lines and expects an error containing `message`.
    fn check_refused(lines: &[&str], message: &str) {
        let error = feed(lines).expect_err("refused").to_string();
        assert!(error.contains(message), "{lines:?}: {error}");
    }

    #[test]
    fn bad_results_are_refused() {
        let complete = [
            "cpu user_us=1 sys_us=1",
            "pub 0 sent=0 acked=0 finished_ns=0",
            "pub 1 sent=0 acked=0 finished_ns=0",
            "sub 0 received=0 foreign=0 last_ns=none",
            "sub 1 received=0 foreign=0 last_ns=none",
            "done drain_timed_out=0",
        ];
        check_refused(&complete[1..], "lack its CPU time");
        check_refused(
            &[&complete[..2], &complete[3..]].concat(),
            "lack publisher 1",
        );
        check_refused(
            &[&complete[..4], &complete[5..]].concat(),
            "lack subscriber 1",
        );
        check_refused(&complete[..5], "lack `done`");
        for line in [
            "d 2 0 0 1",
            "d 0 0 0",
            "d 0 0 x 1",
            "pub 2 sent=0 acked=0 finished_ns=0",
            "pub 0 sent=0 acked=0",
            "sub 0 received=0 foreign=0",
            "sub 0 received=0 foreign=0 last_ns=soon",
            "cpu user_us=1",
            "cpu 5",
            "ready",
            "",
        ] {
            check_refused(
                &[line],
                &format!("malformed line from the libmosquitto client: `{line}`"),
            );
        }
    }

    #[test]
    fn client_errors_are_passed_on() {
        assert_eq!(
            unexpected("error client gb-x-s0 cannot connect", "ready"),
            "client gb-x-s0 cannot connect"
        );
        assert_eq!(
            unexpected("hello", "ready"),
            "expected `ready` from the libmosquitto client, got `hello`"
        );
    }
}
