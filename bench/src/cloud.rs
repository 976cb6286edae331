//! `grove-bench cloud`: the cloud outbox against a real mosquitto playing the cloud.
//!
//! The cloud is a second mosquitto on its own free loopback port (anonymous, persistence on so a
//! session survives its restart); the gateway forwards `up/#` to it over plain TCP. Scenarios:
//! - online: devices publish QoS 1 to the gateway at a fixed rate; latency to a subscriber on the
//!   cloud (device -> grove -> outbox -> mosquitto -> subscriber);
//! - the same load published straight to the cloud mosquitto, for the ratio;
//! - drain: the cloud stops; devices publish N messages QoS 1 to the gateway (each PUBACK means the
//!   message is in the outbox: the append rate); the cloud starts again on the same port, and the
//!   time from its start until its subscriber has all N gives the drain rate, with losses,
//!   duplicates and order per topic.
//!
//! The drain subscriber keeps a persistent session (`clean_session = false`, QoS 1) made before the
//! cloud stops, so the restarted mosquitto queues for it whatever arrives before it reconnects, and
//! no message depends on who wins the race to connect first.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rumqttc::{Event, Packet, QoS};

use crate::flow::{self, Encoding, FlowRow, Publishers, Subscriber, Window};
use crate::load::{Pace, Stop};
use crate::peer::{PeerKind, PeerSpec, RunningPeer};
use crate::stats::DeliveryTally;

/// Devices (publishers) per scenario.
const PUBLISHERS: u32 = 4;

/// Messages per second in the latency scenarios, over all publishers.
const RATE: u32 = 1_000;

/// Payload size of every message (the broker benchmark's binary stamp, padded).
const PAYLOAD: usize = 64;

/// How long the cloud may take to deliver everything after it restarts: generous, for drains
/// paced at AWS IoT Core's 100 publishes per second (`grove-bench cloud-batch`); a drain that
/// works ends long before.
const DRAIN_LIMIT: Duration = Duration::from_secs(600);

/// Client id of the drain subscriber's persistent session.
const DRAIN_SUBSCRIBER: &str = "cloud-bench-drain-sub";

/// The drain phase's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Drain {
    /// Messages published to the gateway while the cloud was down.
    pub messages: u64,
    /// Of these, acknowledged by the gateway (in the outbox).
    pub acked: u64,
    /// Acknowledged messages per second: first publish to last PUBACK.
    pub append_per_second: f64,
    /// Cloud restart: spawn to first CONNACK, in ms.
    pub cloud_start_ms: f64,
    /// From the cloud's spawn to the first message at its subscriber, in ms (the gateway's
    /// reconnect backoff is most of it).
    pub first_message_ms: f64,
    /// From the cloud's spawn to the last message at its subscriber, in seconds.
    pub drain_seconds: f64,
    /// Messages delivered per second over `drain_seconds`.
    pub drain_per_second: f64,
    /// Messages delivered per second from the first to the last one (the link already back).
    pub link_up_per_second: f64,
    /// Losses, duplicates and reordering per topic.
    pub tally: DeliveryTally,
}

/// Everything `grove-bench cloud` measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CloudResults {
    /// Online latency through the gateway and straight to mosquitto.
    pub online: Vec<FlowRow>,
    /// The outbox drain.
    pub drain: Drain,
}

/// The gateway's `[cloud]` section for a cloud on `port`. The reconnect backoff is capped at 500 ms
/// so the restart is noticed quickly; the outbox is sized for the drain.
fn cloud_config(port: u16, messages: u64) -> String {
    format!(
        "[cloud]\nhost = \"127.0.0.1\"\nport = {port}\nplain_tcp = true\nmax_backoff_ms = 500\n\
         forward = [{{ filter = \"up/#\" }}]\n[cloud.outbox]\nmax_messages = {}\n",
        messages.max(100_000)
    )
}

/// Runs the online, direct and drain scenarios.
pub async fn run(
    grove: &Path,
    mosquitto: &Path,
    seconds: u64,
    messages: u64,
    extra: &[&str],
) -> anyhow::Result<CloudResults> {
    let mut cloud = persistent_cloud(mosquitto)?;
    let section = cloud_config(cloud.port(), messages);
    let config: Vec<&str> = std::iter::once(section.as_str())
        .chain(extra.iter().copied())
        .collect();
    let gateway = crate::gateway::start(grove, &config)?;

    let per_publisher = RATE / PUBLISHERS;
    let scenario = format!("{RATE} msg/s ({PUBLISHERS} x {per_publisher}/s), QoS 1, {PAYLOAD} B");
    let mut online = Vec::new();
    for (label, port, prefix) in [
        ("device -> grove -> cloud", gateway.port(), "up/online"),
        (
            "device -> cloud mosquitto (baseline)",
            cloud.port(),
            "up/direct",
        ),
    ] {
        let publishers = Publishers {
            port,
            topics: (0..PUBLISHERS).map(|p| format!("{prefix}/d{p}")).collect(),
            qos: QoS::AtLeastOnce,
            pace: Pace::PerSecond(per_publisher),
            stop: Stop::Duration(Duration::from_secs(seconds + 1)),
            encoding: Encoding::Binary(PAYLOAD),
            id: format!("cloud-bench-{}", prefix.replace('/', "-")),
        };
        let subscriber = Subscriber {
            port: cloud.port(),
            filters: vec![format!("{prefix}/#")],
            dead_letters: None,
            encoding: Encoding::Binary(PAYLOAD),
            batch_topic: None,
        };
        let outcome = flow::run(&publishers, &subscriber, seconds).await?;
        eprintln!("cloud: {label}: p50 {}", flow::ms(outcome.latency.p50_us));
        online.push(FlowRow {
            scenario: scenario.clone(),
            path: label.to_owned(),
            client: crate::report::Client::Rumqttc,
            cost: flow::Cost::default(),
            outcome,
            rss_kib: gateway.memory().ok().map(|m| m.rss_kb),
        });
    }
    let drain = drain(&gateway, &mut cloud, messages).await?;
    gateway.stop()?;
    cloud.stop()?;
    Ok(CloudResults { online, drain })
}

/// The cloud: a mosquitto whose sessions survive its restart, so a drain subscriber's session
/// does.
pub fn persistent_cloud(mosquitto: &Path) -> anyhow::Result<RunningPeer> {
    PeerSpec {
        kind: PeerKind::Mosquitto,
        binary: mosquitto.to_owned(),
        // Persistence keeps the drain subscriber's session across the restart; mosquitto writes
        // its database in its working directory (the peer's private temp dir), which it can only
        // do as the user that made it: started as root, mosquitto would otherwise switch to the
        // `mosquitto` user (`user root` has no effect for anyone else).
        extra_config: vec!["persistence true".to_owned(), "user root".to_owned()],
    }
    .start()
    .context("starting the cloud mosquitto")
}

/// The drain scenario (see the module doc).
async fn drain(
    gateway: &RunningPeer,
    cloud: &mut RunningPeer,
    messages: u64,
) -> anyhow::Result<Drain> {
    let subscriber = Subscriber {
        port: cloud.port(),
        filters: vec!["up/drain/#".to_owned()],
        dead_letters: None,
        encoding: Encoding::Binary(PAYLOAD),
        batch_topic: None,
    };
    let publishers = Publishers {
        port: gateway.port(),
        topics: (0..PUBLISHERS).map(|p| format!("up/drain/d{p}")).collect(),
        qos: QoS::AtLeastOnce,
        pace: Pace::FlatOut,
        stop: Stop::Messages(messages.div_ceil(u64::from(PUBLISHERS))),
        encoding: Encoding::Binary(PAYLOAD),
        id: "cloud-bench-drain".to_owned(),
    };
    let probe = ("up/drain/probe", "up/drain/probe");
    let run = through_outage(cloud, &subscriber, DRAIN_SUBSCRIBER, probe, &publishers).await?;
    let (published, received) = (&run.published, &run.received);
    let since = |at: Option<Instant>| at.map_or(0.0, |at| (at - run.restarted).as_secs_f64());
    let drain_seconds = since(received.last);
    Ok(Drain {
        messages: published.sent.iter().sum(),
        acked: published.acked,
        append_per_second: per_second(published.acked, published.elapsed.as_secs_f64()),
        cloud_start_ms: run.cloud_start.as_secs_f64() * 1e3,
        first_message_ms: since(received.first) * 1e3,
        drain_seconds,
        drain_per_second: per_second(received.total, drain_seconds),
        link_up_per_second: per_second(received.total, drain_seconds - since(received.first)),
        tally: received.tracker.tally(&published.sent),
    })
}

/// What [`through_outage`] saw.
pub struct OutageRun {
    /// The publishers' figures (their PUBACKs came from the gateway: the messages were in its
    /// outbox).
    pub published: flow::Published,
    /// The cloud subscriber's.
    pub received: flow::Received,
    /// When the cloud was started again.
    pub restarted: Instant,
    /// Its spawn to first CONNACK.
    pub cloud_start: Duration,
}

/// A backlog across a cloud outage: the subscriber's persistent session (`subscriber_id`) is
/// made, the link proven up by a probe (`probe`: the local topic published to the gateway, and
/// the cloud topic it arrives on), the cloud stops, `publishers` publish to the gateway, the
/// cloud starts again, and the subscriber receives until it has every message.
pub async fn through_outage(
    cloud: &mut RunningPeer,
    subscriber: &Subscriber,
    subscriber_id: &str,
    probe: (&str, &str),
    publishers: &Publishers,
) -> anyhow::Result<OutageRun> {
    let (client, mut events) = flow::subscribe(subscriber, subscriber_id, true).await?;
    wait_for_link(publishers.port, &mut events, probe.0, probe.1).await?;
    client.disconnect().await?;
    // Polling sends the DISCONNECT; the loop ends when the connection closes.
    while events.poll().await.is_ok() {}
    cloud.halt().context("stopping the cloud mosquitto")?;

    let window = Window::after_warmup(0);
    let published = flow::publish(publishers, window).await?;
    let sent: u64 = published.sent.iter().sum();
    eprintln!(
        "cloud: {} of {sent} messages in the outbox in {:.2} s",
        published.acked,
        published.elapsed.as_secs_f64()
    );

    let restarted = Instant::now();
    let cloud_start = cloud.restart().context("restarting the cloud mosquitto")?;
    let (client, mut events) = flow::subscribe(subscriber, subscriber_id, true).await?;
    let received = flow::receive(
        subscriber,
        &mut events,
        publishers.topics.len(),
        window,
        Some(sent),
        restarted + DRAIN_LIMIT,
    )
    .await?;
    let _ = client.disconnect().await;
    Ok(OutageRun {
        published,
        received,
        restarted,
        cloud_start,
    })
}

/// `count` per second over `seconds` (0 for no time).
pub fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// Publishes probes to the gateway on `local` until one reaches the cloud subscriber on `cloud`
/// (the forward route's rewrite of it): the link is up.
async fn wait_for_link(
    gateway_port: u16,
    events: &mut rumqttc::EventLoop,
    local: &str,
    cloud: &str,
) -> anyhow::Result<()> {
    let (probe, mut probe_events) =
        flow::event_loop(flow::options("cloud-bench-probe", gateway_port));
    let poll = tokio::spawn(async move { while probe_events.poll().await.is_ok() {} });
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut next_probe = Instant::now();
    let result = loop {
        if Instant::now() >= deadline {
            break Err(anyhow::anyhow!(
                "the gateway did not forward a probe to the cloud within 15 s (is its [cloud] link up?)"
            ));
        }
        if Instant::now() >= next_probe {
            probe
                .publish(local, QoS::AtLeastOnce, false, "probe")
                .await?;
            next_probe = Instant::now() + Duration::from_millis(500);
        }
        match tokio::time::timeout_at(next_probe.into(), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) if p.topic == cloud => break Ok(()),
            Ok(Err(e)) => break Err(e.into()),
            _ => {}
        }
    };
    let _ = probe.disconnect().await;
    poll.abort();
    result
}

/// The Markdown section: the online table, the ratio, the drain.
pub fn markdown(r: &CloudResults) -> String {
    let mut out = flow::markdown(&r.online);
    if let [grove, direct] = &r.online[..] {
        let (g, d) = (&grove.outcome.latency, &direct.outcome.latency);
        out.push_str(&format!(
            "\nOnline latency, through grove vs straight to mosquitto: p50 x{}, p99 x{}, p999 x{}\n",
            flow::ratio(g.p50_us as f64, d.p50_us as f64),
            flow::ratio(g.p99_us as f64, d.p99_us as f64),
            flow::ratio(g.p999_us as f64, d.p999_us as f64),
        ));
    }
    let d = &r.drain;
    out.push_str(&format!(
        "\n| drain ({} messages, {PUBLISHERS} devices, QoS 1, {PAYLOAD} B) | figure | target (issue) |\n|---|---:|---|\n\
         | append to the outbox (cloud down), PUBACKed | {:.0} msgs/s ({} of {} acked) | > 100,000 msgs/s batched |\n\
         | cloud restart: spawn to CONNACK | {:.1} ms | |\n\
         | cloud restart to first message at the cloud subscriber | {:.0} ms | |\n\
         | cloud restart to all messages at the cloud subscriber | {:.2} s | |\n\
         | drain (restart to last message) | {:.0} msgs/s | > 20,000 msgs/s |\n\
         | drain once the link is back (first to last message) | {:.0} msgs/s | |\n\
         | missing / duplicates / reordered per topic | {} / {} / {} | 0 / - / 0 |\n",
        d.messages,
        d.append_per_second,
        d.acked,
        d.messages,
        d.cloud_start_ms,
        d.first_message_ms,
        d.drain_seconds,
        d.drain_per_second,
        d.link_up_per_second,
        d.tally.lost,
        d.tally.duplicates,
        d.tally.out_of_order,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_section_is_what_the_gateway_reads() {
        let text = cloud_config(18833, 50_000);
        let value: toml::Value = toml::from_str(&text).expect("valid TOML");
        let cloud = &value["cloud"];
        assert_eq!(cloud["host"].as_str(), Some("127.0.0.1"));
        assert_eq!(cloud["port"].as_integer(), Some(18833));
        assert_eq!(cloud["plain_tcp"].as_bool(), Some(true));
        assert_eq!(cloud["forward"][0]["filter"].as_str(), Some("up/#"));
        assert_eq!(cloud["outbox"]["max_messages"].as_integer(), Some(100_000));
        let bigger = cloud_config(1, 250_000);
        assert!(bigger.contains("max_messages = 250000"), "{bigger}");
    }
}
