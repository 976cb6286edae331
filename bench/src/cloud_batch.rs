//! `grove-bench cloud-batch`: what batching a forward route saves (issue 16), against a mosquitto
//! playing the cloud, through the byte-counting proxy ([`crate::byte_proxy`]).
//!
//! One gateway forwards two routes to the same cloud: `plain/#` as it is, `batched/#` in batches
//! (`batch = { topic = "site/batch", max_messages = N }`, the other bounds at their defaults). The
//! same load runs through each in turn, so both meet the same machine:
//! - online: 4 devices publish JSON readings (~80 B) at QoS 1, 1,000 msg/s in all, for the
//!   measured seconds; the cloud subscriber unpacks the arrays. Reported per route: publishes at
//!   the cloud and messages per publish, topic + payload bytes, AWS IoT Core billing units (each
//!   publish metered in 5 KB steps), the bytes on the link (the MQTT bytes both ways, PUBACKs
//!   included) and the latency from the device's publish to the cloud subscriber (batching adds
//!   up to `max_delay_ms`);
//! - drain under `profile = "aws-iot-core"` (100 publishes per second): the cloud stops, the
//!   devices publish `--messages` per route, the cloud comes back; messages per second from its
//!   restart to the last message at the subscriber (a persistent session, so nothing depends on
//!   who reconnects first).

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use rumqttc::QoS;

use crate::byte_proxy::{ByteProxy, Traffic};
use crate::cloud::{per_second, persistent_cloud, through_outage};
use crate::flow::{self, Encoding, FlowOutcome, Publishers, Subscriber};
use crate::load::{Pace, Stop};
use crate::peer::RunningPeer;

/// Devices (publishers) per phase.
const DEVICES: u32 = 4;

/// Messages per second in the online phase, over all devices.
const RATE: u32 = 1_000;

/// The cloud topic of the batched route's arrays.
const BATCH_TOPIC: &str = "site/batch";

/// One route through one phase.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Phase {
    /// `online` or `drain (aws-iot-core)`.
    pub phase: String,
    /// `unbatched` or `batched (max_messages = N)`.
    pub route: String,
    /// What the cloud subscriber saw.
    pub outcome: FlowOutcome,
    /// The link between gateway and cloud meanwhile.
    pub link: Traffic,
    /// Drain only: restart of the cloud to the last message, in seconds.
    pub drain_seconds: Option<f64>,
}

/// Everything `grove-bench cloud-batch` measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BatchResults {
    /// `max_messages` of the batched route.
    pub max_messages: usize,
    /// The phases, unbatched then batched for each.
    pub phases: Vec<Phase>,
}

/// The gateway's `[cloud]` section: both routes, through the proxy on `port`.
fn cloud_config(port: u16, profile: &str, max_messages: usize, messages: u64) -> String {
    format!(
        "[cloud]\nhost = \"127.0.0.1\"\nport = {port}\nplain_tcp = true\nthing = \"bench-gw\"\n\
         max_backoff_ms = 500\n{profile}\
         forward = [{{ filter = \"plain/#\", prefix = \"site/\" }}, \
         {{ filter = \"batched/#\", prefix = \"site/\", batch = {{ topic = \"{BATCH_TOPIC}\", max_messages = {max_messages} }} }}]\n\
         [cloud.outbox]\nmax_messages = {}\n",
        (2 * messages).max(100_000)
    )
}

/// The routes, as (label, local topic prefix).
fn routes(max_messages: usize) -> [(String, &'static str); 2] {
    [
        ("unbatched".to_owned(), "plain"),
        (
            format!("batched (max_messages = {max_messages})"),
            "batched",
        ),
    ]
}

fn subscriber(cloud: &RunningPeer) -> Subscriber {
    Subscriber {
        port: cloud.port(),
        filters: vec!["site/#".to_owned()],
        dead_letters: None,
        encoding: Encoding::Json,
        batch_topic: Some(BATCH_TOPIC.to_owned()),
    }
}

/// Runs the online and drain phases.
pub async fn run(
    grove: &Path,
    mosquitto: &Path,
    seconds: u64,
    messages: u64,
    max_messages: usize,
    extra: &[&str],
) -> anyhow::Result<BatchResults> {
    let mut cloud = persistent_cloud(mosquitto)?;
    let proxy = ByteProxy::start(cloud.port())
        .await
        .context("starting the byte-counting proxy")?;
    let mut phases = Vec::new();

    let section = cloud_config(proxy.port(), "", max_messages, messages);
    let gateway = start(grove, &section, extra)?;
    for (route, local) in routes(max_messages) {
        let before = proxy.traffic();
        let publishers = Publishers {
            port: gateway.port(),
            topics: (0..DEVICES).map(|d| format!("{local}/d{d}")).collect(),
            qos: QoS::AtLeastOnce,
            pace: Pace::PerSecond(RATE / DEVICES),
            stop: Stop::Duration(Duration::from_secs(seconds + 1)),
            encoding: Encoding::Json,
            id: format!("batch-bench-{local}"),
        };
        let outcome = flow::run(&publishers, &subscriber(&cloud), seconds).await?;
        eprintln!(
            "cloud-batch: online, {route}: {} outputs in {} publishes",
            outcome.received, outcome.publishes
        );
        phases.push(Phase {
            phase: "online, 1,000 msg/s".to_owned(),
            route,
            outcome,
            link: proxy.traffic().since(&before),
            drain_seconds: None,
        });
    }
    gateway.stop()?;

    let profile = "profile = \"aws-iot-core\"\n";
    let section = cloud_config(proxy.port(), profile, max_messages, messages);
    let gateway = start(grove, &section, extra)?;
    for (route, local) in routes(max_messages) {
        let before = proxy.traffic();
        let (outcome, seconds) = drain(&gateway, &mut cloud, local, messages).await?;
        eprintln!("cloud-batch: drain, {route}: {seconds:.2} s");
        phases.push(Phase {
            phase: "drain, aws-iot-core".to_owned(),
            route,
            outcome,
            link: proxy.traffic().since(&before),
            drain_seconds: Some(seconds),
        });
    }
    gateway.stop()?;
    cloud.stop()?;
    Ok(BatchResults {
        max_messages,
        phases,
    })
}

fn start(grove: &Path, section: &str, extra: &[&str]) -> anyhow::Result<RunningPeer> {
    let config: Vec<&str> = std::iter::once(section)
        .chain(extra.iter().copied())
        .collect();
    crate::gateway::start(grove, &config)
}

/// One route's drain: the cloud stops, `messages` go into the outbox, the cloud comes back.
async fn drain(
    gateway: &RunningPeer,
    cloud: &mut RunningPeer,
    local: &str,
    messages: u64,
) -> anyhow::Result<(FlowOutcome, f64)> {
    let publishers = Publishers {
        port: gateway.port(),
        topics: (0..DEVICES).map(|d| format!("{local}/d{d}")).collect(),
        qos: QoS::AtLeastOnce,
        pace: Pace::FlatOut,
        stop: Stop::Messages(messages.div_ceil(u64::from(DEVICES))),
        encoding: Encoding::Json,
        id: format!("batch-bench-drain-{local}-pub"),
    };
    let sub = subscriber(cloud);
    let id = format!("batch-bench-drain-{local}");
    let probe = ("plain/probe", "site/plain/probe");
    let run = through_outage(cloud, &sub, &id, probe, &publishers).await?;
    let (published, received) = (&run.published, &run.received);
    let seconds = received
        .last
        .map_or(0.0, |at| (at - run.restarted).as_secs_f64());
    let outcome = received.outcome(
        per_second(received.total, seconds),
        per_second(published.acked, published.elapsed.as_secs_f64()),
        received.total,
        &published.sent,
    );
    Ok((outcome, seconds))
}

/// The Markdown section: one row per route and phase, then what batching saved.
pub fn markdown(r: &BatchResults) -> String {
    let mut out = String::from(
        "| phase | route | messages at the cloud | publishes | messages / publish | topic + payload | AWS billing units (5 KB) | link bytes (MQTT, both ways) | link segments | on the wire with TLS, TCP/IP (est.) | msgs/s | latency p50 / p99 / max | missing / dup / reordered |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for p in &r.phases {
        let (o, l) = (&p.outcome, &p.outcome.latency);
        // A drain's messages waited for the cloud: their latency is the outage.
        let latency = if l.samples == 0 {
            "-".to_owned()
        } else {
            format!(
                "{} / {} / {}",
                flow::ms(l.p50_us),
                flow::ms(l.p99_us),
                flow::ms(l.max_us)
            )
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {} B | {} | {} B | {} | {} B | {:.0} | {latency} | {} / {} / {} |\n",
            p.phase,
            p.route,
            o.received,
            o.publishes,
            o.received as f64 / o.publishes.max(1) as f64,
            o.bytes,
            o.billed,
            p.link.bytes(),
            p.link.reads(),
            p.link.wire_estimate(),
            o.per_second,
            o.tally.lost,
            o.tally.duplicates,
            o.tally.out_of_order,
        ));
    }
    out.push_str("\nBatched against unbatched, same phase (below 1: saved):\n\n| phase | publishes | billing units | link bytes (MQTT) | link segments | on the wire (est.) | msgs/s |\n|---|---:|---:|---:|---:|---:|---:|\n");
    for pair in r.phases.chunks(2) {
        if let [plain, batched] = pair {
            let (p, b) = (&plain.outcome, &batched.outcome);
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                plain.phase,
                flow::ratio(b.publishes as f64, p.publishes as f64),
                flow::ratio(b.billed as f64, p.billed as f64),
                flow::ratio(batched.link.bytes() as f64, plain.link.bytes() as f64),
                flow::ratio(batched.link.reads() as f64, plain.link.reads() as f64),
                flow::ratio(
                    batched.link.wire_estimate() as f64,
                    plain.link.wire_estimate() as f64
                ),
                flow::ratio(b.per_second, p.per_second),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cloud_section_is_what_the_gateway_reads() {
        let text = cloud_config(18833, "profile = \"aws-iot-core\"\n", 50, 10);
        let value: toml::Value = toml::from_str(&text).expect("valid TOML");
        let cloud = &value["cloud"];
        assert_eq!(cloud["profile"].as_str(), Some("aws-iot-core"));
        assert_eq!(cloud["forward"][0]["filter"].as_str(), Some("plain/#"));
        assert!(cloud["forward"][0].get("batch").is_none());
        let batch = &cloud["forward"][1]["batch"];
        assert_eq!(batch["topic"].as_str(), Some(BATCH_TOPIC));
        assert_eq!(batch["max_messages"].as_integer(), Some(50));
    }
}
